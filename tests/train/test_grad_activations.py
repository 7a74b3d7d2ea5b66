"""Backward of the activations (Relu ... HardSwish, PRelu, Clip, Softmax, LogSoftmax).

Small random shapes against float64 central differences (:func:`gradcheck.check_backward`, which also checks
1 thread against N threads), inputs kept at least 1e-3 away from every kink; the derivative at a kink against
PyTorch's convention; and one test per kernel above ``PARALLEL_MIN_WORK`` against a numpy formula, serial
kernel against parallel kernel bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_backward, make_op

from edgedl.kernels.cpu import act_grad as G
from edgedl.kernels.cpu.config import PARALLEL_MIN_WORK
from edgedl.kernels.cpu.elementwise import broadcast_plan

GAP = 1e-3


def away(rng, x, kinks, scale):
    """x with every element within GAP of a kink redrawn (x is modified and returned)."""
    for _ in range(100):
        bad = np.zeros(x.shape, bool)
        for k in kinks:
            bad |= np.abs(x - np.float32(k)) < GAP
        if not bad.any():
            return x
        x[bad] = (rng.standard_normal(int(bad.sum())) * scale).astype(np.float32)
    raise AssertionError("could not move the inputs away from the kinks")


def rand_shape(rng, max_rank=4, max_size=48):
    while True:
        shape = tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(1, max_rank + 1))))
        if np.prod(shape) <= max_size:
            return shape


def rand_x(rng, shape, kinks=(), scale=2.0):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    return away(rng, x, kinks, scale)


# --- elementwise activations: finite differences --------------------------------------------------------------
def _hard_sigmoid_kinks(a):
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    return (-beta / alpha, (1 - beta) / alpha)


UNARY = [
    ("Relu", {}, lambda a: (0.0,), 2.0),
    ("LeakyRelu", {}, lambda a: (0.0,), 2.0),
    ("LeakyRelu", {"alpha": 0.3}, lambda a: (0.0,), 2.0),
    ("LeakyRelu", {"alpha": -0.5}, lambda a: (0.0,), 2.0),
    ("LeakyRelu", {"alpha": 1.7}, lambda a: (0.0,), 2.0),
    ("Elu", {}, lambda a: (0.0,), 2.0),
    ("Elu", {"alpha": 0.5}, lambda a: (0.0,), 2.0),
    ("Elu", {"alpha": 2.5}, lambda a: (0.0,), 3.0),
    ("Sigmoid", {}, lambda a: (), 4.0),
    ("Tanh", {}, lambda a: (), 2.0),
    ("HardSigmoid", {}, _hard_sigmoid_kinks, 4.0),
    ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, _hard_sigmoid_kinks, 4.0),
    ("HardSigmoid", {"alpha": 0.7, "beta": 0.1}, _hard_sigmoid_kinks, 2.0),
    ("HardSigmoid", {"alpha": -0.3, "beta": 0.4}, _hard_sigmoid_kinks, 3.0),
    ("HardSwish", {}, lambda a: (-3.0, 3.0), 4.0),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("op_type,attrs,kinks,scale", UNARY,
                         ids=[f"{o}-{'-'.join(f'{k}{v:.3g}' for k, v in a.items())}" for o, a, _, _ in UNARY])
def test_unary_fd(op_type, attrs, kinks, scale, seed):
    rng = np.random.default_rng(seed)
    x = rand_x(rng, rand_shape(rng), kinks(attrs), scale)
    check_backward(op_type, [x], attrs, seed=seed)


def test_unary_saves_the_documented_value():
    for op_type, attrs, want_in, want_out in [
            ("Relu", {}, (), (0,)), ("Sigmoid", {}, (), (0,)), ("Tanh", {}, (), (0,)),
            ("LeakyRelu", {}, (), (0,)), ("LeakyRelu", {"alpha": -0.5}, (0,), ()),  # a negative slope hides x's sign
            ("Elu", {}, (), (0,)), ("Elu", {"alpha": -1.0}, (0,), ()), ("HardSigmoid", {}, (0,), ()),
            ("HardSwish", {}, (0,), ()), ("Softmax", {}, (), (0,)), ("LogSoftmax", {}, (), (0,))]:
        op, _, _ = make_op(op_type, [np.zeros((2, 3), np.float32)], attrs)
        assert (op.grad_inputs, op.grad_outputs) == (want_in, want_out), (op_type, attrs)
        assert op.has_backward()
    # Clip with constant bounds reads its output (the bounds are constants: free to keep)
    op, _, _ = make_op("Clip", [np.zeros((2, 3), np.float32), np.float32(0), np.float32(6)], consts=(1, 2), opset=13)
    assert (op.grad_inputs, op.grad_outputs) == ((1, 2), (0,))


def test_clip_from_its_output_passes_strictly_inside_the_bounds():
    x = np.array([-1.0, 0.0, 0.5, 6.0, 7.0], np.float32)
    lo, hi = np.float32(0), np.float32(6)
    op, _, _ = make_op("Clip", [x, lo, hi], opset=13)
    y = op.ref(x, lo, hi)[0]
    (dx, *_) = op.backward([np.full(5, 2.0, np.float32)], [None, lo, hi], [y], [True, False, False])
    np.testing.assert_array_equal(dx, [0, 0, 2, 0, 0])  # PyTorch's ReLU6 (hardtanh) rule


def test_none_gradient_and_integer_input():
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    for op_type in ("Relu", "Sigmoid", "HardSwish", "Softmax"):
        op, _, _ = make_op(op_type, [x])
        (dx,) = op.backward([None], [x], [x], [True])
        assert dx.dtype == np.float32 and dx.shape == x.shape and not dx.any()
    xi = np.arange(-3, 3, dtype=np.int32)
    op, _, _ = make_op("Relu", [xi])
    assert op.backward([np.ones(6, np.float32)], [None], [xi], [True]) == [None]


# --- the derivative at a kink: PyTorch's convention ------------------------------------------------------------
def _grad_at(op_type, x, attrs=None, opset=18, extra=()):
    x = np.asarray(x, np.float32)
    ins = [x, *extra]
    op, _, _ = make_op(op_type, ins, attrs, opset=opset)
    y = op.ref(*ins)[0]
    g = np.full(x.shape, 2.0, np.float32)
    return op.backward([g], ins, [y], [True] * len(ins))


def test_kink_conventions():
    (d,) = _grad_at("Relu", [0.0, -0.0, 1.0])
    np.testing.assert_array_equal(d, [0, 0, 2])
    (d,) = _grad_at("LeakyRelu", [0.0, 1.0, -1.0], {"alpha": 0.25})
    np.testing.assert_array_equal(d, [0.5, 2, 0.5])
    (d,) = _grad_at("Elu", [0.0], {"alpha": 1.5})
    np.testing.assert_allclose(d, [3.0])
    # HardSigmoid: exclusive at both ends (alpha x + beta = 0 at x = -2.5, = 1 at x = 2.5)
    (d,) = _grad_at("HardSigmoid", [-2.5, 2.5, 0.0, -3.0, 3.0], {"alpha": 0.2, "beta": 0.5})
    np.testing.assert_allclose(d, [0, 0, 0.4, 0, 0], atol=1e-7)
    # HardSwish: x / 3 + 1/2 on [-3, 3] inclusive, 0 below, 1 above
    (d,) = _grad_at("HardSwish", [-3.0, 3.0, -3.5, 3.5, 0.0])
    np.testing.assert_allclose(d, [-1.0, 3.0, 0.0, 2.0, 1.0])
    # Clip: inclusive at both bounds; hi wins where lo > hi, so no gradient anywhere
    lo, hi = np.float32(-1), np.float32(1)
    d = _grad_at("Clip", [-1.0, 1.0, -1.5, 1.5, 0.0], extra=(lo, hi))
    np.testing.assert_array_equal(d[0], [2, 2, 0, 0, 2])
    assert (d[1], d[2]) == (2.0, 2.0)  # the bounds: only x strictly beyond them
    d = _grad_at("Clip", [-1.0, 0.0, 1.0, 2.0], extra=(np.float32(1.5), np.float32(0.5)))
    np.testing.assert_array_equal(d[0], [0, 0, 0, 0])
    assert (d[1], d[2]) == (0.0, 8.0)  # lo > hi: the output is hi everywhere
    # PRelu at 0: dx = slope * g, no slope gradient
    slope = np.array([0.25], np.float32)
    dx, ds = _grad_at("PRelu", [0.0, 0.0, -1.0], extra=(slope,))
    np.testing.assert_array_equal(dx, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(ds, [-2.0])


# --- Clip ----------------------------------------------------------------------------------------------------
CLIP_ATTRS = [{}, {"min": -0.5}, {"max": 0.7}, {"min": -1.2, "max": 0.4}, {"min": 0.5, "max": -0.5}]


@pytest.mark.parametrize("attrs", CLIP_ATTRS, ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()) or "none")
def test_clip_attrs_fd(attrs):
    rng = np.random.default_rng(3)
    x = rand_x(rng, rand_shape(rng), list(attrs.values()))
    check_backward("Clip", [x], attrs, opset=6)


@pytest.mark.parametrize("bounds", [(-0.5, 0.8), (-0.5, None), (None, 0.3), (None, None), (1.0, -1.0)],
                         ids=["both", "min", "max", "none", "crossed"])
def test_clip_inputs_fd(bounds):
    rng = np.random.default_rng(4)
    x = rand_x(rng, rand_shape(rng), [b for b in bounds if b is not None])
    ins = [x] + [None if b is None else np.float32(b) for b in bounds]
    while ins and ins[-1] is None and len(ins) > 1:
        ins.pop()
    check_backward("Clip", ins, opset=13)  # the bounds' gradients too
    op, _, _ = make_op("Clip", ins, opset=13)
    g = np.ones(x.shape, np.float32)
    got = op.backward([g], ins, [None], [True] + [False] * (len(ins) - 1))
    assert all(d is None for d in got[1:])  # not asked for


# --- PRelu ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("slope_kind", ["scalar", "channel", "full", "last", "channel_w"])
@pytest.mark.parametrize("seed", [0, 1])
def test_prelu_fd(slope_kind, seed):
    rng = np.random.default_rng(10 + seed)
    n, c, h, w = (int(v) for v in rng.integers(1, 4, size=4))
    c = max(c, 2)
    s_shape = {"scalar": (1,), "channel": (c, 1, 1), "full": (n, c, h, w), "last": (w,),
               "channel_w": (c, 1, w)}[slope_kind]
    x = rand_x(rng, (n, c, h, w), (0.0,))
    slope = (rng.standard_normal(s_shape) * 0.5).astype(np.float32)
    check_backward("PRelu", [x, slope], seed=seed)


def test_prelu_legacy_per_channel_slope_fd():
    rng = np.random.default_rng(12)
    x = rand_x(rng, (2, 3, 2, 2), (0.0,))
    slope = np.array([0.1, -0.4, 0.7], np.float32)  # opset 6: a 1-D slope is per channel (axis 1)
    check_backward("PRelu", [x, slope], opset=6)


def test_prelu_interleaved_broadcast_fd():
    # slope (A, 1, B, 1, C) against rank 6: five collapsed dims, more than the kernel plan's four
    rng = np.random.default_rng(13)
    x = rand_x(rng, (2, 2, 2, 2, 2, 2), (0.0,))
    slope = (rng.standard_normal((2, 1, 2, 1, 2)) * 0.5).astype(np.float32)
    check_backward("PRelu", [x, slope])


def test_prelu_only_slope_needed():
    rng = np.random.default_rng(14)
    x = rand_x(rng, (2, 3, 4), (0.0,))
    slope = rng.standard_normal((3, 1)).astype(np.float32)
    op, _, _ = make_op("PRelu", [x, slope])
    g = rng.standard_normal(x.shape).astype(np.float32)
    dx, ds = op.backward([g], [x, slope], [None], [False, True])
    assert dx is None
    np.testing.assert_allclose(ds, np.where(x > 0, 0, x * g).sum(axis=(0, 2)).reshape(3, 1), rtol=1e-5)


# --- Softmax / LogSoftmax ------------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_fd(op_type, opset, axis):
    rng = np.random.default_rng(20 + axis + opset)
    for shape in [(3, 4), (2, 3, 4)]:
        x = rand_x(rng, shape, scale=2.0)
        check_backward(op_type, [x], {"axis": axis}, opset=opset, seed=opset)


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_default_axis_fd(op_type):
    rng = np.random.default_rng(30)
    x = rand_x(rng, (2, 3, 2))
    for opset in (11, 13):  # default axis: 1 (coerced to 2-D) before opset 13, -1 from it
        check_backward(op_type, [x], opset=opset)


# --- kernels above PARALLEL_MIN_WORK: serial == parallel, against numpy --------------------------------------
BIG = PARALLEL_MIN_WORK + 4099


def _both(call):
    """call(threads) with the serial kernel (1) and the parallel one (3 chunks); asserts equal bits."""
    one = call(1)
    par = call(3)
    for a, b in zip(one, par):
        np.testing.assert_array_equal(a, b)
    return one


def _np_act(code, v, g, alpha, beta):
    v = v.astype(np.float64)
    g = g.astype(np.float64)
    if code == G.G_RELU:
        return np.where(v > 0, g, 0)
    if code == G.G_LEAKY_RELU:
        return np.where(v > 0, g, alpha * g)
    if code == G.G_ELU:
        return np.where(v > 0, g, alpha * np.exp(v) * g)
    if code == G.G_CLIP:
        return np.where((v >= alpha) & (v <= beta), g, 0)
    if code == G.G_SIGMOID:
        return g * v * (1 - v)
    if code == G.G_TANH:
        return g * (1 - v * v)
    if code == G.G_HARD_SIGMOID:
        t = alpha * v + beta
        return np.where((t > 0) & (t < 1), alpha * g, 0)
    return np.where(v < -3, 0, np.where(v <= 3, g * (v / 3 + 0.5), g))


@pytest.mark.parametrize("code,alpha,beta", [
    (G.G_RELU, 0, 0), (G.G_LEAKY_RELU, 0.1, 0), (G.G_ELU, 1.3, 0), (G.G_CLIP, -0.5, 1.5),
    (G.G_SIGMOID, 0, 0), (G.G_TANH, 0, 0), (G.G_HARD_SIGMOID, 0.2, 0.5), (G.G_HARD_SWISH, 0, 0)],
    ids=["relu", "leaky", "elu", "clip", "sigmoid", "tanh", "hsigmoid", "hswish"])
def test_act_kernel_parallel(code, alpha, beta):
    rng = np.random.default_rng(code)
    v = (rng.standard_normal(BIG) * 4).astype(np.float32)
    if code in (G.G_SIGMOID, G.G_TANH):
        v = np.tanh(v).astype(np.float32)  # a saved output
    v[:7] = [-3, 3, 0, -0.5, 1.5, -2.5, 2.5]  # kinks, inside the first chunk
    g = rng.standard_normal(BIG).astype(np.float32)

    def call(threads):
        dx = np.empty_like(v)
        G.act_grad(code, v, g, dx, alpha, beta, threads=threads)
        return (dx,)

    (dx,) = _both(call)
    np.testing.assert_allclose(dx, _np_act(code, v, g, np.float32(alpha), np.float32(beta)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("s_kind", ["scalar", "channel", "full", "last"])
def test_prelu_kernel_parallel(s_kind):
    rng = np.random.default_rng(40)
    shape = (-(-PARALLEL_MIN_WORK // (7 * 61 * 61)) + 1, 7, 61, 61)
    s_shape = {"scalar": (1,), "channel": (7, 1, 1), "full": shape, "last": (61,)}[s_kind]
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[:3] = 0.0
    slope = rng.standard_normal(s_shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    op, _, _ = make_op("PRelu", [x, slope])
    dx, ds = op.backward([g], [x, slope], [None], [True, True])
    np.testing.assert_array_equal(dx, np.where(x > 0, g, slope * g))
    t = np.where(x > 0, 0, x.astype(np.float64) * g)
    if s_kind == "scalar":
        want = t.sum()
    elif s_kind == "last":
        want = t.reshape(-1, 61).sum(axis=0)
    elif s_kind == "channel":
        want = t.sum(axis=(0, 2, 3)).reshape(s_shape)
    elif s_kind == "full":
        want = t
    np.testing.assert_allclose(ds, np.reshape(want, s_shape), rtol=1e-5, atol=1e-5)

    # the kernel under a forced 3-chunk split (also on a one-core machine) against the serial kernel
    dims, (_, ss) = broadcast_plan(shape, shape, s_shape)
    dims = np.array([1] * (4 - len(dims)) + dims, np.int64)
    ss = np.array([0] * (4 - len(ss)) + ss, np.int64)

    def call(threads):
        dx2, t2 = np.empty(x.size, np.float32), np.empty(x.size, np.float32)
        G.prelu_grad(x.reshape(-1), slope.reshape(-1), g.reshape(-1), dx2, t2, dims, ss, threads=threads)
        return dx2, t2

    dx2, t2 = _both(call)
    np.testing.assert_array_equal(dx2, dx.reshape(-1))
    np.testing.assert_array_equal(t2, t.astype(np.float32).reshape(-1))


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "logsoftmax"])
@pytest.mark.parametrize("layout", ["rows", "strided"])
def test_softmax_kernel_parallel(log, layout):
    rng = np.random.default_rng(50)
    if layout == "rows":
        outer, n, inner = BIG // 97 + 1, 97, 1
    else:
        outer, n, inner = 5, 9, BIG // 45 + 300  # several BLOCKs per outer index, a partial last one
    x = rng.standard_normal((outer, n, inner)) * 3
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    y = (np.log(p) if log else p).astype(np.float32)
    g = rng.standard_normal((outer, n, inner)).astype(np.float32)

    def call(threads):
        dx = np.empty(y.size, np.float32)
        G.softmax_grad(y.reshape(-1), g.reshape(-1), dx, outer, n, inner, log, threads=threads)
        return (dx,)

    (dx,) = _both(call)
    y64, g64 = y.astype(np.float64), g.astype(np.float64)
    if log:
        want = g64 - np.exp(y64) * g64.sum(axis=1, keepdims=True)
    else:
        want = y64 * (g64 - (g64 * y64).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(dx.reshape(outer, n, inner), want, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("bounds", [(-0.5, 0.8), (0.0, 6.0), (None, 0.3), (1.0, -1.0)],
                         ids=["both", "relu6", "max", "crossed"])
def test_clip_with_constant_bounds_fd_from_the_output(bounds):
    rng = np.random.default_rng(6)
    x = rand_x(rng, rand_shape(rng), [b for b in bounds if b is not None], 4.0)
    ins = [x] + [None if b is None else np.float32(b) for b in bounds]
    consts = tuple(k for k in (1, 2) if ins[k] is not None)
    op, _, _ = make_op("Clip", ins, consts=consts, opset=13)
    assert op.grad_outputs == (0,) and 0 not in op.grad_inputs
    check_backward("Clip", ins, consts=consts, wrt=[0], opset=13)


@pytest.mark.parametrize("op_type,attrs", [("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.7}),
                                           ("Elu", {"alpha": 0.0})])
def test_activations_from_their_output_fd(op_type, attrs):
    rng = np.random.default_rng(7)
    x = rand_x(rng, rand_shape(rng), [0.0], 3.0)
    op, _, _ = make_op(op_type, [x], attrs)
    assert op.grad_inputs == () and op.grad_outputs == (0,)
    check_backward(op_type, [x], attrs)
