"""RNN, GRU and LSTM: the Numba kernels against the numpy reference, both against a naive per-row loop written
from the ONNX equations, every attribute and opset path, hostile inputs, streaming, and end to end against
onnxruntime (a bidirectional LSTM tagger and a GRU keyword spotter built with onnx.helper)."""
from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest

import edgedl
from edgedl import testing
from edgedl.errors import EdgeDLError, ShapeError, UnsupportedOpError
from edgedl.ir import Node
from edgedl.kernels.cpu import config as kconfig
from edgedl.registry import lookup

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
OUTS = {"RNN": ["y", "yh"], "GRU": ["y", "yh"], "LSTM": ["y", "yh", "yc"]}


# --- a naive implementation, one batch row and one step at a time (layout 0) -------------------------------------
def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


NAIVE_ACTS = {
    "Sigmoid": lambda x, a, b: _sig(x),
    "Tanh": lambda x, a, b: np.tanh(x),
    "Relu": lambda x, a, b: np.maximum(x, 0.0),
    "HardSigmoid": lambda x, a, b: np.clip(a * x + b, 0.0, 1.0),
    "LeakyRelu": lambda x, a, b: np.where(x >= 0, x, a * x),
    "ThresholdedRelu": lambda x, a, b: np.where(x > a, x, 0.0),
    "ScaledTanh": lambda x, a, b: a * np.tanh(b * x),
    "Affine": lambda x, a, b: a * x + b,
    "Elu": lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1.0)),
    "Softsign": lambda x, a, b: x / (1.0 + np.abs(x)),
    "Softplus": lambda x, a, b: np.logaddexp(0.0, x),
}


def naive(op_type, x, w, r, b=None, lens=None, h0=None, c0=None, p=None, *, direction="forward", acts=None,
          clip=None, lbr=0, input_forget=0):
    """acts: per direction a list of (name, alpha, beta)."""
    t_len, bsz, _ = x.shape
    d_n, hsz = w.shape[0], r.shape[2]
    g = GATES[op_type]
    y = np.zeros((t_len, d_n, bsz, hsz))
    yh = np.zeros((d_n, bsz, hsz))
    yc = np.zeros((d_n, bsz, hsz))
    cl = (lambda v: v) if clip is None else (lambda v: np.clip(v, -clip, clip))
    for d in range(d_n):
        (fn, fa, fb), *rest = acts[d]
        f = lambda v: NAIVE_ACTS[fn](v, fa, fb)  # noqa: E731
        if rest:
            gn, ga, gb = rest[0]
            gact = lambda v: NAIVE_ACTS[gn](v, ga, gb)  # noqa: E731
        if len(rest) > 1:
            hn_, ha, hb = rest[1]
            hact = lambda v: NAIVE_ACTS[hn_](v, ha, hb)  # noqa: E731
        W, R = w[d].astype(np.float64), r[d].astype(np.float64)
        Wb = np.zeros(g * hsz) if b is None else b[d, :g * hsz].astype(np.float64)
        Rb = np.zeros(g * hsz) if b is None else b[d, g * hsz:].astype(np.float64)
        P = np.zeros(3 * hsz) if p is None else p[d].astype(np.float64)
        reverse = direction == "reverse" or d == 1
        for bi in range(bsz):
            n = t_len if lens is None else int(lens[bi])
            H = np.zeros(hsz) if h0 is None else h0[d, bi].astype(np.float64)
            C = np.zeros(hsz) if c0 is None else c0[d, bi].astype(np.float64)
            order = range(n - 1, -1, -1) if reverse else range(n)
            for t in order:
                xt = x[t, bi].astype(np.float64)
                if op_type == "RNN":
                    H = f(cl(xt @ W.T + H @ R.T + Wb + Rb))
                elif op_type == "GRU":
                    def part(k, M=None):
                        return slice(k * hsz, (k + 1) * hsz)
                    z = f(cl(xt @ W[part(0)].T + H @ R[part(0)].T + Wb[part(0)] + Rb[part(0)]))
                    rr = f(cl(xt @ W[part(1)].T + H @ R[part(1)].T + Wb[part(1)] + Rb[part(1)]))
                    if lbr:
                        hh = gact(cl(xt @ W[part(2)].T + rr * (H @ R[part(2)].T + Rb[part(2)]) + Wb[part(2)]))
                    else:
                        hh = gact(cl(xt @ W[part(2)].T + (rr * H) @ R[part(2)].T + Rb[part(2)] + Wb[part(2)]))
                    H = (1 - z) * hh + z * H
                else:
                    gates = xt @ W.T + H @ R.T + Wb + Rb
                    gi, go, gf, gc = np.split(gates, 4)
                    pi, po, pf = np.split(P, 3)
                    i = f(cl(gi + pi * C))
                    ff = 1 - i if input_forget else f(cl(gf + pf * C))
                    C = ff * C + i * gact(cl(gc))
                    o = f(cl(go + po * C))
                    H = o * hact(C)
                y[t, d, bi] = H
            if n > 0:
                yh[d, bi], yc[d, bi] = H, C
    return [y, yh, yc][:len(OUTS[op_type])]


# --- helpers ------------------------------------------------------------------------------------------------------
def make_op(op_type, attrs, inputs, outputs, opset=14):
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    return lookup(op_type)(Node(op_type, f"test_{op_type}", names, outputs, dict(attrs)), opset)


def case(op_type, rng, *, t=5, b=3, i=4, h=6, direction="forward", layout=0, lens=None, init=True, peep=True,
         bias=True):
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op_type]
    x = rng.standard_normal((b, t, i) if layout else (t, b, i)).astype(np.float32)
    w = (rng.standard_normal((d, g * h, i)) * 0.6).astype(np.float32)
    r = (rng.standard_normal((d, g * h, h)) * 0.6).astype(np.float32)
    bb = (rng.standard_normal((d, 2 * g * h)) * 0.5).astype(np.float32) if bias else None
    state = (b, d, h) if layout else (d, b, h)
    h0 = rng.standard_normal(state).astype(np.float32) if init else None
    inputs = [x, w, r, bb, None if lens is None else np.asarray(lens, np.int32), h0]
    if op_type == "LSTM":
        inputs += [rng.standard_normal(state).astype(np.float32) if init else None,
                   rng.standard_normal((d, 3 * h)).astype(np.float32) if peep else None]
    return inputs


def to_layout0(inputs, layout):
    """The inputs in layout 0 (for the naive loop)."""
    out = list(inputs) + [None] * (8 - len(inputs))
    if layout:
        out[0] = out[0].swapaxes(0, 1)
        out[5] = None if out[5] is None else out[5].swapaxes(0, 1)
        out[6] = None if out[6] is None else out[6].swapaxes(0, 1)
    return out


def from_layout0(outs, layout):
    if not layout:
        return outs
    return [outs[0].transpose(2, 0, 1, 3)] + [o.swapaxes(0, 1) for o in outs[1:]]


def check(op_type, attrs, inputs, *, opset=14, acts=None, const_weights=True, rtol=1e-5, atol=2e-5):
    """Kernel vs reference vs naive loop; returns the kernel's outputs and the kernel."""
    direction = attrs.get("direction", "forward")
    d = 2 if direction == "bidirectional" else 1
    layout = attrs.get("layout", 0) if opset >= 14 else 0
    op = make_op(op_type, attrs, inputs, OUTS[op_type], opset)
    consts = [a if (const_weights and k in (1, 2, 3, 7)) else None for k, a in enumerate(inputs)]
    got, kern = testing.run_kernel(op, inputs, consts)
    ref = op.ref(*inputs)
    acts = acts or [[(n, 0.0, 0.0) for n in DEFAULTS[op_type]]] * d
    l0 = to_layout0(inputs, layout)
    want = from_layout0(naive(op_type, *l0[:3], l0[3], l0[4], l0[5], l0[6], l0[7], direction=direction, acts=acts,
                              clip=attrs.get("clip"), lbr=attrs.get("linear_before_reset", 0),
                              input_forget=attrs.get("input_forget", 0)), layout)
    for k, (g_, r_, w_) in enumerate(zip(got, ref, want)):
        assert g_.shape == w_.shape and r_.shape == w_.shape, (k, g_.shape, w_.shape)
        np.testing.assert_allclose(r_, w_, rtol=1e-5, atol=1e-6, err_msg=f"reference, output {k}")
        np.testing.assert_allclose(g_, w_, rtol=rtol, atol=atol, err_msg=f"kernel, output {k}")
    return got, kern


# --- the kernels against the reference and the naive loop ------------------------------------------------------
@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_directions_layouts_lengths_states(op_type, direction, layout):
    rng = np.random.default_rng(hash((op_type, direction, layout)) % 2**32)
    for lens, init in [(None, True), ([5, 0, 3], True), ([2, 5, 1], False), (None, False)]:
        inputs = case(op_type, rng, direction=direction, layout=layout, lens=lens, init=init)
        attrs = dict(direction=direction, layout=layout, hidden_size=6)
        got, kern = check(op_type, attrs, inputs)
        assert kern.impl == "numba"
        check(op_type, attrs, inputs, const_weights=False)
        if lens is not None:  # rows past their length are zero, Y_h / Y_c of an empty row are zero
            y = got[0] if layout == 0 else got[0].transpose(1, 2, 0, 3)
            for b, n in enumerate(lens):
                assert not y[n:, :, b].any()
                if n == 0:
                    assert not (got[1][:, b] if layout == 0 else got[1][b]).any()


#: (op, activations of one direction, other attributes); run forward and bidirectional (the second direction
#: with the list reversed)
ACT_CASES = [
    ("RNN", ["Relu"], {}),
    ("RNN", ["LeakyRelu"], dict(activation_alpha=[0.2, 0.3])),
    ("RNN", ["ThresholdedRelu"], dict(activation_alpha=[0.1, -0.2])),
    ("RNN", ["Softplus"], dict(clip=1.5)),
    ("RNN", ["Softsign"], {}),
    ("GRU", ["HardSigmoid", "Softsign"], dict(activation_alpha=[0.3], activation_beta=[0.4], clip=2.0)),
    ("GRU", ["Sigmoid", "Tanh"], dict(linear_before_reset=1)),
    ("GRU", ["Sigmoid", "Tanh"], dict(linear_before_reset=1, clip=0.5)),
    ("GRU", ["Sigmoid", "Tanh"], dict(clip=0.5)),
    ("GRU", ["ScaledTanh", "Elu"], dict(activation_alpha=[0.9, 1.3], activation_beta=[0.7], linear_before_reset=1)),
    ("GRU", ["Affine", "LeakyRelu"], dict(activation_alpha=[0.1, 0.5], activation_beta=[0.5], clip=1.0)),
    ("LSTM", ["Sigmoid", "Tanh", "Tanh"], dict(input_forget=1)),
    ("LSTM", ["Sigmoid", "Tanh", "Tanh"], dict(clip=0.7)),
    ("LSTM", ["HardSigmoid", "Elu", "Softplus"], dict(activation_alpha=[0.25, 0.8], activation_beta=[0.45])),
    ("LSTM", ["Affine", "Relu", "ScaledTanh"], dict(activation_alpha=[0.5, 1.5], activation_beta=[0.1, 0.6],
                                                    input_forget=1, clip=3.0)),
    ("LSTM", ["Sigmoid", "ThresholdedRelu", "Softsign"], dict(activation_alpha=[0.05])),
]


def _acts_for(names, attrs, d):
    """Expected (name, alpha, beta) per direction: alphas / betas consumed in order by the functions using them,
    the ONNX ops' defaults once they run out."""
    uses = {"HardSigmoid": (1, 1, 0.2, 0.5), "LeakyRelu": (1, 0, 0.01, 0), "ThresholdedRelu": (1, 0, 1.0, 0),
            "ScaledTanh": (1, 1, 1.0, 1.0), "Affine": (1, 1, 1.0, 0.0), "Elu": (1, 0, 1.0, 0)}
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    out = []
    for n in names:
        ua, ub, da, db = uses.get(n, (0, 0, 0.0, 0.0))
        out.append((n, alphas.pop(0) if ua and alphas else da, betas.pop(0) if ub and betas else db))
    per = len(names) // d
    return [out[k * per:(k + 1) * per] for k in range(d)]


@pytest.mark.parametrize("op_type,names,extra", ACT_CASES,
                         ids=[f"{o}-{'-'.join(n)}-{'-'.join(sorted(e))}" for o, n, e in ACT_CASES])
def test_activations_clip_and_variants(op_type, names, extra):
    rng = np.random.default_rng(len(names) + len(extra))
    for direction in ("forward", "bidirectional"):
        d = 2 if direction == "bidirectional" else 1
        all_names = names + names[::-1] if d == 2 else names
        inputs = case(op_type, rng, direction=direction, lens=[4, 5, 0])
        attrs = dict(direction=direction, activations=all_names, **extra)
        got, kern = check(op_type, attrs, inputs, acts=_acts_for(all_names, attrs, d))
        assert kern.impl == "numba"


def test_activation_names_are_case_insensitive_and_defaults_apply():
    rng = np.random.default_rng(3)
    inputs = case("GRU", rng)
    a = make_op("GRU", dict(activations=["sigmoid", "TANH"]), inputs, ["y"])
    b = make_op("GRU", {}, inputs, ["y"])
    np.testing.assert_array_equal(testing.run_kernel(a, inputs, [None] * 6)[0][0],
                                  testing.run_kernel(b, inputs, [None] * 6)[0][0])
    op = make_op("LSTM", dict(activations=["LeakyRelu", "HardSigmoid", "Elu"]), case("LSTM", rng), ["y"])
    assert [(c, round(al, 6), round(be, 6)) for c, al, be in op.acts[0]] == [(4, 0.01, 0.0), (3, 0.2, 0.5),
                                                                             (8, 1.0, 0.0)]
    # a forward RNN given opset 7's two-entry default list takes the first (as onnxruntime)
    assert make_op("RNN", dict(activations=["Relu", "Tanh"]), case("RNN", rng), ["y"]).acts == [[(2, 0.0, 0.0)]]


def test_optional_outputs_in_any_combination():
    rng = np.random.default_rng(4)
    inputs = case("LSTM", rng, lens=[3, 5, 1], direction="bidirectional")
    attrs = dict(direction="bidirectional")
    full = make_op("LSTM", attrs, inputs, ["y", "yh", "yc"]).ref(*inputs)
    for mask in itertools.product([0, 1], repeat=3):
        if not any(mask):
            continue
        outs = [n if m else "" for n, m in zip(["y", "yh", "yc"], mask)]
        while not outs[-1]:
            outs.pop()
        op = make_op("LSTM", attrs, inputs, outs)
        got, _ = testing.run_kernel(op, inputs, [None, *inputs[1:4], None, None, None, inputs[7]])
        want = [f for f, m in zip(full, mask) if m]
        assert len(got) == len(want)
        for g_, w_ in zip(got, want):
            np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=2e-5)
    for op_type in ("GRU", "RNN"):
        inputs = case(op_type, rng, lens=[2, 0, 5])
        full = make_op(op_type, {}, inputs, ["y", "yh"]).ref(*inputs)
        got, _ = testing.run_kernel(make_op(op_type, {}, inputs, ["", "yh"]), inputs, [None] * 6)
        np.testing.assert_allclose(got[0], full[1], rtol=1e-5, atol=2e-5)


def test_without_bias_or_peepholes_and_empty_shapes():
    rng = np.random.default_rng(5)
    for op_type in ("RNN", "GRU", "LSTM"):
        check(op_type, {}, case(op_type, rng, bias=False, peep=False, init=False))
        for t, b in ((0, 2), (3, 0)):  # an empty sequence, an empty batch
            inputs = case(op_type, rng, t=t, b=b)
            op = make_op(op_type, {}, inputs, OUTS[op_type])
            got, _ = testing.run_kernel(op, inputs, [None, *inputs[1:4]] + [None] * (len(inputs) - 4))
            for g_, w_ in zip(got, op.ref(*inputs)):
                assert g_.shape == w_.shape
                assert not g_.any() and not w_.any()


@pytest.mark.parametrize("opset", [1, 3, 7, 14, 22])
def test_opsets(opset):
    rng = np.random.default_rng(opset)
    for op_type in ("RNN", "GRU", "LSTM"):
        inputs = case(op_type, rng, lens=[5, 2, 4])
        attrs = dict(direction="reverse")
        if opset < 7:
            attrs["output_sequence"] = 1
        if op_type == "GRU":
            attrs["linear_before_reset"] = 1
        got, _ = check(op_type, attrs if (op_type != "GRU" or opset >= 3) else {**attrs, "linear_before_reset": 0},
                       inputs, opset=opset)
    # layout is an opset-14 attribute: an older model ignores it
    op = make_op("GRU", dict(layout=1), case("GRU", rng), ["y"], opset=7)
    assert op.layout == 0
    # GRU-1 knows no linear_before_reset
    assert make_op("GRU", dict(linear_before_reset=1), case("GRU", rng), ["y"], opset=1).flag == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_use_the_reference(dtype):
    for op_type in ("GRU", "LSTM"):
        base = case(op_type, np.random.default_rng(0), direction="bidirectional", lens=[5, 1, 3])
        cast = [a.astype(dtype) if a is not None and a.dtype == np.float32 else a for a in base]
        attrs = dict(direction="bidirectional")
        got, kern = testing.run_kernel(make_op(op_type, attrs, cast, OUTS[op_type]), cast, [None] * len(cast))
        assert kern.impl == "numpy" and all(g_.dtype == dtype for g_ in got)
        want, _ = testing.run_kernel(make_op(op_type, attrs, base, OUTS[op_type]), base, [None] * len(base))
        tol = 1e-5 if dtype == np.float64 else 2e-2
        for g_, w_ in zip(got, want):
            np.testing.assert_allclose(g_.astype(np.float32), w_, rtol=tol, atol=tol)


def test_parallel_kernels_match_serial(monkeypatch):
    """(direction, batch chunk) units under prange give the very bits of the serial kernel."""
    rng = np.random.default_rng(7)
    monkeypatch.setattr(kconfig, "PARALLEL_MIN_WORK", 1)
    old = numba.get_num_threads()
    many = min(2, numba.config.NUMBA_NUM_THREADS)
    if many < 2:
        pytest.skip("one thread only")
    try:
        for op_type in ("RNN", "GRU", "LSTM"):
            for direction, lens in (("bidirectional", [5, 0, 2, 4]), ("forward", None)):
                inputs = case(op_type, rng, b=4, direction=direction, lens=lens)
                res = []
                for nt in (1, many):
                    numba.set_num_threads(nt)
                    op = make_op(op_type, dict(direction=direction), inputs, OUTS[op_type])
                    res.append(testing.run_kernel(op, inputs, [None, *inputs[1:4]] + [None] * (len(inputs) - 4))[0])
                for a, b in zip(*res):
                    np.testing.assert_array_equal(a, b)
                from edgedl.kernels.cpu import recurrent as K

                ip = np.zeros(K.IP_SIZE, np.int64)
                ip[[K.IP_T, K.IP_B, K.IP_H, K.IP_D]] = 5, 4, 6, 2 if direction == "bidirectional" else 1
                assert K.chunks(ip, GATES[op_type], many) > 0
    finally:
        numba.set_num_threads(old)


# --- hostile inputs ----------------------------------------------------------------------------------------------
def _types(inputs):
    from edgedl.ir import TensorType

    return [None if a is None else TensorType(a.shape, a.dtype) for a in inputs]


@pytest.mark.parametrize("change,match", [
    (lambda ins: ins.__setitem__(0, ins[0][0]), "X must be 3-D"),
    (lambda ins: ins.__setitem__(1, ins[1][:, :5]), "W must have shape"),
    (lambda ins: ins.__setitem__(2, ins[2][:, :, :5]), "R must have shape"),
    (lambda ins: ins.__setitem__(3, ins[3][:, :7]), "B must have shape"),
    (lambda ins: ins.__setitem__(4, np.array([1, 2], np.int32)), "sequence_lens must have shape"),
    (lambda ins: ins.__setitem__(4, np.array([1.0, 2.0, 3.0], np.float32)), "sequence_lens must be int32"),
    (lambda ins: ins.__setitem__(5, ins[5][:, :2]), "initial_h must have shape"),
    (lambda ins: ins.__setitem__(6, ins[6][:1, :, :1]), "initial_c must have shape"),
    (lambda ins: ins.__setitem__(7, ins[7][:, :4]), "P must have shape"),
    (lambda ins: ins.__setitem__(1, ins[1].astype(np.float64)), "share one dtype"),
])
def test_shape_errors(change, match):
    inputs = case("LSTM", np.random.default_rng(8), lens=[1, 2, 3])
    change(inputs)
    op = make_op("LSTM", dict(hidden_size=6), inputs, ["y"])
    with pytest.raises(ShapeError, match=match):
        op.infer(_types(inputs), [None] * 8)


@pytest.mark.parametrize("attrs,match", [
    (dict(direction="sideways"), "direction"),
    (dict(hidden_size=0), "hidden_size must be positive"),
    (dict(clip=0.0), "clip must be positive"),
    (dict(clip=-1.0), "clip must be positive"),
    (dict(layout=2), "layout must be 0 or 1"),
    (dict(activations=["Sigmoid", "Tanh"]), "activations must list 3"),
    (dict(activations=["Sigmoid", "Tanh", "Gelu"]), "Gelu"),
])
def test_attribute_errors(attrs, match):
    inputs = case("LSTM", np.random.default_rng(9))
    with pytest.raises(EdgeDLError, match=match):
        make_op("LSTM", attrs, inputs, ["y"])


def test_more_errors():
    rng = np.random.default_rng(10)
    inputs = case("GRU", rng)
    op = make_op("GRU", dict(hidden_size=5), inputs, ["y"])
    with pytest.raises(ShapeError, match="hidden_size is 5"):
        op.infer(_types(inputs), [None] * 6)
    with pytest.raises(ShapeError, match="at most 2"):
        make_op("GRU", {}, inputs, ["y", "yh", "yc"])
    bad = list(inputs)
    bad[0] = bad[0].astype(np.int32)
    bad[1], bad[2], bad[3], bad[5] = (a.astype(np.int32) for a in (bad[1], bad[2], bad[3], bad[5]))
    with pytest.raises(UnsupportedOpError, match="dtype int32"):
        make_op("GRU", {}, bad, ["y"]).infer(_types(bad), [None] * 6)


def test_sequence_lengths_out_of_range_are_errors():
    rng = np.random.default_rng(11)
    for op_type in ("RNN", "GRU", "LSTM"):
        for bad in ([1, 6, 2], [1, -1, 2]):  # T = 5
            inputs = case(op_type, rng, lens=bad)
            op = make_op(op_type, {}, inputs, ["y"])
            with pytest.raises(EdgeDLError, match=r"sequence_lens\[1\]"):  # run time: the kernel's check
                testing.run_kernel(op, inputs, [None] * len(inputs))
            with pytest.raises(EdgeDLError, match=r"sequence_lens\[1\]"):  # constant: at plan time
                op.infer(_types(inputs), [a if k == 4 else None for k, a in enumerate(inputs)])
            with pytest.raises(EdgeDLError, match=r"sequence_lens\[1\]"):
                op.ref(*inputs)


# --- models: streaming, end to end ---------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _model(nodes, inputs, outputs, inits, opset=14):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def test_streaming_one_frame_per_call_matches_the_whole_sequence():
    rng = np.random.default_rng(12)
    for op_type in ("GRU", "LSTM"):
        g, isz, hsz, t_len = GATES[op_type], 10, 16, 12
        inits = {"W": (rng.standard_normal((1, g * hsz, isz)) * 0.3).astype(np.float32),
                 "R": (rng.standard_normal((1, g * hsz, hsz)) * 0.3).astype(np.float32),
                 "B": (rng.standard_normal((1, 2 * g * hsz)) * 0.3).astype(np.float32)}
        lstm = op_type == "LSTM"
        ins = [_vi("x", [1, 1, isz]), _vi("h", [1, 1, hsz])] + ([_vi("c", [1, 1, hsz])] if lstm else [])
        outs = [_vi("hn", [1, 1, hsz])] + ([_vi("cn", [1, 1, hsz])] if lstm else [])
        node = helper.make_node(op_type, ["x", "W", "R", "B", "", "h"] + (["c"] if lstm else []),
                                ["", "hn"] + (["cn"] if lstm else []), hidden_size=hsz)
        stream = edgedl.load(_model([node], ins, outs, inits))
        whole = helper.make_node(op_type, ["x", "W", "R", "B"], ["y"], hidden_size=hsz)
        full = edgedl.load(_model([whole], [_vi("x", [t_len, 1, isz])], [_vi("y", None)], inits))
        x = rng.standard_normal((t_len, 1, 1, isz)).astype(np.float32)
        want = full.run({"x": x.reshape(t_len, 1, isz)})["y"]
        state = {"h": np.zeros((1, 1, hsz), np.float32)}
        if lstm:
            state["c"] = np.zeros((1, 1, hsz), np.float32)
        for t in range(t_len):
            out = stream.run({"x": x[t], **state})
            np.testing.assert_allclose(out["hn"][0, 0], want[t, 0, 0], rtol=1e-5, atol=1e-5)
            state = {"h": out["hn"], **({"c": out["cn"]} if lstm else {})}
        plan = stream.plan()
        assert plan.steps[0].bound is not None  # the per-frame call is prepared once


def test_bidirectional_lstm_tagger_matches_onnxruntime():
    """Frames (T, B, F) -> BiLSTM with sequence_lens and initial states -> per-frame logits -> softmax."""
    rng = np.random.default_rng(13)
    t_len, bsz, feat, hsz, tags = 9, 3, 12, 16, 5
    inits = {"W": (rng.standard_normal((2, 4 * hsz, feat)) * 0.3).astype(np.float32),
             "R": (rng.standard_normal((2, 4 * hsz, hsz)) * 0.3).astype(np.float32),
             "B": (rng.standard_normal((2, 8 * hsz)) * 0.2).astype(np.float32),
             "P": (rng.standard_normal((2, 3 * hsz)) * 0.2).astype(np.float32),
             "perm_shape": np.array([t_len, bsz, 2 * hsz], np.int64),
             "Wo": (rng.standard_normal((2 * hsz, tags)) * 0.3).astype(np.float32),
             "Bo": (rng.standard_normal(tags) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "lens", "h0", "c0", "P"], ["y", "yh", "yc"],
                              hidden_size=hsz, direction="bidirectional"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),  # (T, B, 2, H)
             helper.make_node("Reshape", ["yt", "perm_shape"], ["feat"]),
             helper.make_node("MatMul", ["feat", "Wo"], ["logit0"]),
             helper.make_node("Add", ["logit0", "Bo"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    ins = [_vi("x", [t_len, bsz, feat]), _vi("lens", [bsz], TensorProto.INT32), _vi("h0", [2, bsz, hsz]),
           _vi("c0", [2, bsz, hsz])]
    model = _model(nodes, ins, [_vi("probs", None), _vi("yh", None), _vi("yc", None)], inits)
    feeds = {"x": rng.standard_normal((t_len, bsz, feat)).astype(np.float32),
             "lens": np.array([9, 4, 1], np.int32),
             "h0": rng.standard_normal((2, bsz, hsz)).astype(np.float32),
             "c0": rng.standard_normal((2, bsz, hsz)).astype(np.float32)}
    got = edgedl.load(model).run(feeds)
    want = _ort(model, feeds)
    for name in ("probs", "yh", "yc"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_gru_keyword_spotter_matches_onnxruntime():
    """Frames -> GRU (linear_before_reset, sequence_lens, initial_h) -> last state -> Gemm -> softmax."""
    rng = np.random.default_rng(14)
    t_len, bsz, feat, hsz, words = 20, 4, 10, 24, 6
    inits = {"W": (rng.standard_normal((1, 3 * hsz, feat)) * 0.3).astype(np.float32),
             "R": (rng.standard_normal((1, 3 * hsz, hsz)) * 0.3).astype(np.float32),
             "B": (rng.standard_normal((1, 6 * hsz)) * 0.2).astype(np.float32),
             "axes": np.array([0], np.int64),
             "Wc": (rng.standard_normal((words, hsz)) * 0.3).astype(np.float32),
             "Bc": (rng.standard_normal(words) * 0.1).astype(np.float32)}
    for lbr in (0, 1):
        nodes = [helper.make_node("GRU", ["x", "W", "R", "B", "lens", "h0"], ["", "yh"], hidden_size=hsz,
                                  linear_before_reset=lbr),
                 helper.make_node("Squeeze", ["yh", "axes"], ["last"]),
                 helper.make_node("Gemm", ["last", "Wc", "Bc"], ["logits"], transB=1),
                 helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
        ins = [_vi("x", [t_len, bsz, feat]), _vi("lens", [bsz], TensorProto.INT32), _vi("h0", [1, bsz, hsz])]
        model = _model(nodes, ins, [_vi("probs", None)], inits)
        feeds = {"x": rng.standard_normal((t_len, bsz, feat)).astype(np.float32),
                 "lens": np.array([20, 7, 13, 1], np.int32),
                 "h0": rng.standard_normal((1, bsz, hsz)).astype(np.float32) * 0.1}
        got = edgedl.load(model).run(feeds)["probs"]
        np.testing.assert_allclose(got, _ort(model, feeds)["probs"], rtol=1e-4, atol=1e-6)
        bad = dict(feeds, lens=np.array([20, 21, 3, 1], np.int32))
        with pytest.raises(EdgeDLError, match="sequence_lens"):
            edgedl.load(model).run(bad)


def test_rnn_layers_match_onnxruntime_with_attributes():
    """Each op with the attributes onnxruntime supports: activations with alpha / beta, clip, lengths."""
    rng = np.random.default_rng(15)
    t_len, bsz, isz, hsz = 6, 4, 5, 7
    variants = [("RNN", dict(activations=["Relu", "ThresholdedRelu"], activation_alpha=[0.1], clip=2.5)),
                ("GRU", dict(activations=["HardSigmoid", "Softsign"] * 2, activation_alpha=[0.3, 0.2],
                             activation_beta=[0.4, 0.6], clip=2.0)),
                ("LSTM", dict(activations=["Sigmoid", "ScaledTanh", "Affine"] * 2,
                              activation_alpha=[0.9, 0.5, 1.2, 0.7], activation_beta=[0.6, 0.3, 0.2, 0.1],
                              input_forget=1))]
    for op_type, attrs in variants:
        g = GATES[op_type]
        inits = {"W": (rng.standard_normal((2, g * hsz, isz)) * 0.5).astype(np.float32),
                 "R": (rng.standard_normal((2, g * hsz, hsz)) * 0.5).astype(np.float32),
                 "B": (rng.standard_normal((2, 2 * g * hsz)) * 0.5).astype(np.float32)}
        node = helper.make_node(op_type, ["x", "W", "R", "B", "lens", "h0"], ["y", "yh"], hidden_size=hsz,
                                direction="bidirectional", **attrs)
        ins = [_vi("x", [t_len, bsz, isz]), _vi("lens", [bsz], TensorProto.INT32), _vi("h0", [2, bsz, hsz])]
        model = _model([node], ins, [_vi("y", None), _vi("yh", None)], inits)
        feeds = {"x": rng.standard_normal((t_len, bsz, isz)).astype(np.float32),
                 "lens": np.array([6, 0, 3, 1], np.int32),
                 "h0": rng.standard_normal((2, bsz, hsz)).astype(np.float32)}
        got = edgedl.load(model).run(feeds)
        want = _ort(model, feeds)
        for name in ("y", "yh"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{op_type} {name}")
