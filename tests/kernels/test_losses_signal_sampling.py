"""Loss, signal and sampling operators: NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss, DFT, STFT, the
windows, MelWeightMatrix, GridSample, AffineGrid and DeformConv.

Kernels against their numpy references and independent formulas (numpy.fft, per-element loops), every
attribute / opset path, hostile inputs (bad shapes, out-of-range labels, NaN coordinates), and small models
end to end against onnxruntime.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import edgedl
from edgedl import testing
from edgedl.errors import ConstantRequired, EdgeDLError
from edgedl.ir import Node
from edgedl.kernels.cpu import config as kconfig
from edgedl.registry import lookup

ort = pytest.importorskip("onnxruntime")


def make_op(op_type, n_in, attrs=None, opset=20, n_out=1):
    node = Node(op_type, "n", [f"i{k}" for k in range(n_in)], [f"o{k}" for k in range(n_out)], dict(attrs or {}))
    return lookup(op_type)(node, opset)


def run(op_type, inputs, attrs=None, *, opset, const=(), n_out=1):
    return testing.run_op(op_type, inputs, attrs, opset=opset, const=const, n_out=n_out)


def onnx_model(nodes, inputs, outputs, opset, inits=()):
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def vi(name, dtype, shape):
    return oh.make_tensor_value_info(name, dtype, shape)


def run_both(model: onnx.ModelProto, feeds: dict) -> tuple[dict, dict]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = dict(zip(names, sess.run(names, feeds)))
    got = edgedl.load(model.SerializeToString()).run(feeds)
    return got, want


def rel_err(got, want):
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(1.0, np.abs(want).max()))


# =============================================================================================================
# Losses
def loop_nll(logp, t, weight, ii, reduction):
    """Independent per-element NLL (the spec's loops)."""
    n, c = logp.shape[:2]
    lp = logp.reshape(n, c, -1).astype(np.float64)
    tt = t.reshape(n, -1)
    per = np.zeros(tt.shape)
    wsum = 0.0
    for i in range(n):
        for d in range(tt.shape[1]):
            k = int(tt[i, d])
            if ii is not None and k == ii:
                continue
            wk = 1.0 if weight is None else float(weight[k])
            per[i, d] = -wk * lp[i, k, d]
            wsum += wk
    if reduction == "none":
        return per.reshape(t.shape)
    if reduction == "sum":
        return per.sum()
    return per.sum() / wsum


LOSS_CASES = [
    ((5, 4), None, "mean", False), ((5, 4), None, "sum", True), ((5, 4), None, "none", False),
    ((3, 5, 2), 1, "mean", True), ((3, 5, 2), -1, "none", True), ((2, 3, 4, 2), 2, "sum", False),
    ((2, 3, 1, 2, 2, 3), None, "mean", True), ((4, 3, 3), 7, "mean", True), ((4, 3, 3), -5, "sum", False),
]


@pytest.mark.parametrize("shape,ii,reduction,weighted", LOSS_CASES)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
def test_nll_and_sce_against_loops(shape, ii, reduction, weighted, label_dtype):
    rng = np.random.default_rng(len(shape) * 7 + (ii or 0))
    n, c = shape[:2]
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, c, (n,) + shape[2:]).astype(label_dtype)
    if ii is not None:
        t.reshape(-1)[::3] = ii
    w = (rng.random(c) + 0.2).astype(np.float32) if weighted else None
    attrs = {"reduction": reduction} | ({} if ii is None else {"ignore_index": ii})
    inputs = [x, t] + ([w] if weighted else [])
    (y,), (r,), _ = run("NegativeLogLikelihoodLoss", inputs, attrs, opset=13)
    want = loop_nll(x, t, w, ii, reduction)
    assert y.shape == np.shape(want) and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r, y, rtol=0, atol=0)
    # SCE: the NLL of log_softmax, and log_prob as the second output
    z = x.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    (y, lp), _, _ = run("SoftmaxCrossEntropyLoss", inputs, attrs, opset=13, n_out=2)
    np.testing.assert_allclose(y, loop_nll(logp, t, w, ii, reduction), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lp, logp, rtol=1e-5, atol=1e-6)
    (y1,), _, _ = run("SoftmaxCrossEntropyLoss", inputs, attrs, opset=12)
    np.testing.assert_allclose(y1, y, rtol=0, atol=0)


def test_losses_other_dtypes_and_edge_cases():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3)).astype(np.float64)
    t = np.array([0, 2, 1, 2])
    (y,), _, _ = run("SoftmaxCrossEntropyLoss", [x, t], {}, opset=13)
    assert y.dtype == np.float64
    (y16,), _, _ = run("NegativeLogLikelihoodLoss", [x.astype(np.float16), t], {"reduction": "none"}, opset=13)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, -x[np.arange(4), t], rtol=2e-3)
    # every element ignored: mean is 0 / 0
    (y,), _, _ = run("NegativeLogLikelihoodLoss", [x, np.full(4, 5)], {"ignore_index": 5}, opset=13)
    assert np.isnan(y)
    # a class weight of 0 with sum reduction
    (y,), _, _ = run("NegativeLogLikelihoodLoss", [x, t, np.array([0.0, 1.0, 0.0])], {"reduction": "sum"},
                     opset=22)
    np.testing.assert_allclose(y, -x[2, 1])


@pytest.mark.parametrize("op_type", ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"])
def test_losses_reject_bad_labels_and_shapes(op_type):
    x = np.zeros((2, 3, 4), np.float32)
    t = np.zeros((2, 4), np.int64)
    for bad in (3, -1, 1 << 40):
        tb = t.copy()
        tb[1, 2] = bad
        with pytest.raises(EdgeDLError, match=f"value {bad} at position \\(1, 2\\)"):
            run(op_type, [x, tb], {}, opset=13)
    tb = t.copy()
    tb[0, 0] = -100
    run(op_type, [x, tb], {"ignore_index": -100}, opset=13)  # the ignored label may be anything
    for inputs, msg in [([x, np.zeros((2, 3), np.int64)], "labels have shape"),
                        ([x, t.astype(np.float32)], "int32 or int64"),
                        ([x, t, np.ones(4, np.float32)], "weights have shape"),
                        ([x, t, np.ones(3, np.float64)], "weights dtype"),
                        ([np.zeros(3, np.float32), np.zeros(3, np.int64)], "input must be")]:
        with pytest.raises(EdgeDLError, match=msg):
            run(op_type, inputs, {}, opset=13)
    with pytest.raises(EdgeDLError, match="reduction"):
        make_op(op_type, 2, {"reduction": "average"}, opset=13)


def test_shared_math_is_the_training_loss():
    from edgedl.ops.loss_ops import softmax_cross_entropy, softmax_cross_entropy_grad
    from edgedl.train.losses import SoftmaxCrossEntropy

    rng = np.random.default_rng(0)
    for eps in (0.0, 0.1):
        for cw in (None, rng.random(5) + 0.1):
            z = rng.standard_normal((7, 5)).astype(np.float32)
            t = rng.integers(0, 5, 7)
            loss, grad = SoftmaxCrossEntropy(eps, cw)(z, t)
            terms, logp = softmax_cross_entropy(z, t, cw, None, "mean", eps)
            assert float(terms.loss) == pytest.approx(loss, rel=1e-12)
            np.testing.assert_allclose(softmax_cross_entropy_grad(terms, logp, 1.0), grad, rtol=1e-6, atol=1e-7)


def test_losses_end_to_end_against_onnxruntime():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    t = rng.integers(0, 4, (3, 5)).astype(np.int64)
    t[0, 0] = -1
    w = (rng.random(4) + 0.5).astype(np.float32)
    nodes = [oh.make_node("SoftmaxCrossEntropyLoss", ["x", "t", "w"], ["sce", "logp"], ignore_index=-1),
             oh.make_node("NegativeLogLikelihoodLoss", ["logp", "t"], ["nll"], reduction="none", ignore_index=-1)]
    model = onnx_model(nodes, [vi("x", TensorProto.FLOAT, x.shape), vi("t", TensorProto.INT64, t.shape)],
                       [vi("sce", TensorProto.FLOAT, None), vi("logp", TensorProto.FLOAT, None),
                        vi("nll", TensorProto.FLOAT, None)], 13, [nh.from_array(w, "w")])
    got, want = run_both(model, {"x": x, "t": t})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


# =============================================================================================================
# DFT / STFT
def np_dft(x, axis, n, inverse, onesided):
    sig = x[..., 0].astype(np.float64) + (1j * x[..., 1] if x.shape[-1] == 2 else 0)
    if inverse and onesided:
        return np.fft.irfft(sig, n=n, axis=axis)[..., None]
    y = np.fft.ifft(sig, n=n, axis=axis) if inverse else np.fft.fft(sig, n=n, axis=axis)
    if onesided:
        y = np.take(y, np.arange(n // 2 + 1), axis=axis)
    return np.stack([y.real, y.imag], axis=-1)


DFT_LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 16, 22, 25, 30, 49, 64, 97, 100, 128, 194, 243, 400]


@pytest.mark.parametrize("n", DFT_LENGTHS)
def test_dft_against_numpy(n):
    rng = np.random.default_rng(n)
    for c in (1, 2):
        for inverse in (0, 1):
            for onesided in (0, 1):
                if onesided and not inverse and c == 2 or inverse and onesided and n < 2:
                    continue
                attrs = dict(inverse=inverse, onesided=onesided)
                # opset 20, the innermost signal axis (the GEMM path for large prime factors), and an outer axis
                x = rng.standard_normal((3, n, c)).astype(np.float32)
                (y,), _, kern = run("DFT", [x], attrs, opset=20)
                assert kern.impl == "numba"
                assert rel_err(y, np_dft(x, 1, 2 * (n - 1) if inverse and onesided else n, inverse, onesided)) < 1e-5
                x = rng.standard_normal((2, n, 3, c)).astype(np.float32)
                (y,), _, _ = run("DFT", [x], dict(attrs, axis=1), opset=17)
                nn = 2 * (n - 1) if inverse and onesided else n
                assert rel_err(y, np_dft(x, 1, nn, inverse, onesided)) < 1e-5
                # dft_length crops or pads; the axis as an input
                for length in (max(1, n - 2), n + 3):
                    x = rng.standard_normal((2, 3, n, c)).astype(np.float32)
                    (y,), (r,), _ = run("DFT", [x, np.array(length), np.array(-2)], attrs, opset=20, const=(1, 2))
                    want = np_dft(x, 2, length, inverse, onesided)
                    assert y.shape == want.shape
                    assert rel_err(y, want) < 1e-5 and rel_err(r, want) < 1e-6


def test_dft_paths_dtypes_and_threads(monkeypatch):
    rng = np.random.default_rng(1)
    from edgedl.ops import signal as sig

    assert sig._use_gemm(2 * 97, 1, 194, 196, np.float32) and not sig._use_gemm(400, 1, 400, 402, np.float32)
    assert not sig._use_gemm(2 * 97, 1, 194, 196, np.float64)
    x = rng.standard_normal((4, 50, 6, 2))
    (y,), (r,), kern = run("DFT", [x], {"axis": 1}, opset=17)
    assert kern.impl == "numba" and y.dtype == np.float64
    np.testing.assert_allclose(y, np_dft(x, 1, 50, 0, 0), rtol=1e-12, atol=1e-10)
    (y,), _, kern = run("DFT", [x.astype(np.float16)], {"axis": 1}, opset=17)
    assert kern.impl == "numpy" and y.dtype == np.float16
    # a large prime length: numpy's FFT, not an O(n^2) pass (nor a DFT matrix off the innermost axis)
    x = rng.standard_normal((1, 10007, 2, 1)).astype(np.float32)
    (y,), _, kern = run("DFT", [x], {"axis": 1}, opset=17)
    assert kern.impl == "numpy" and rel_err(y, np_dft(x, 1, 10007, 0, 0)) < 1e-6
    # the parallel kernel gives the serial bits
    x = rng.standard_normal((64, 256, 1)).astype(np.float32)
    monkeypatch.setattr(kconfig, "PARALLEL_MIN_WORK", 1 << 40)
    (serial,), _, _ = run("DFT", [x], {}, opset=20)
    monkeypatch.setattr(kconfig, "PARALLEL_MIN_WORK", 1)
    (par,), _, _ = run("DFT", [x], {}, opset=20)
    np.testing.assert_array_equal(serial, par)


def test_dft_keeps_exact_zeros_small():
    # what numpy's float64 FFT makes zero stays below 1e-7 (the node tests' absolute tolerance)
    x = np.arange(100, dtype=np.float32).reshape(1, 10, 10, 1)
    (y,), _, _ = run("DFT", [x], {"onesided": 1, "axis": 1}, opset=19)
    want = np_dft(x, 1, 10, 0, 1)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    spec = np.fft.rfft(np.arange(100).reshape(10, 10), axis=0)
    xi = np.stack([spec.real, spec.imag], -1).astype(np.float32)[None]
    (y,), _, _ = run("DFT", [xi], {"onesided": 1, "inverse": 1, "axis": 1}, opset=19)
    np.testing.assert_allclose(y[0, ..., 0], np.arange(100).reshape(10, 10), rtol=1e-6, atol=1e-7)


def test_dft_rejects_bad_inputs():
    x = np.zeros((2, 8, 1), np.float32)
    cases = [([x], dict(axis=2), 17, "out of range"), ([x], dict(axis=-1), 17, "out of range"),
             ([x], dict(axis=-4), 17, "out of range"),
             ([np.zeros((2, 8, 2), np.float32)], dict(onesided=1), 20, "real input"),
             ([np.zeros((2, 8, 3), np.float32)], {}, 20, "last dimension"),
             ([np.zeros((8, 1), np.float32)], {}, 17, "input must be"),
             ([x, np.array(0)], {}, 20, "dft_length must be positive"),
             ([x, np.array([4, 4])], {}, 20, "scalar"),
             ([np.zeros((2, 1, 2), np.float32)], dict(onesided=1, inverse=1), 20, "IRFFT"),
             ([x.astype(np.int32)], {}, 20, "dtype"),
             ([x], dict(inverse=2), 20, "0 or 1")]
    for inputs, attrs, opset, msg in cases:
        with pytest.raises(EdgeDLError, match=msg):
            run("DFT", inputs, attrs, opset=opset, const=(1, 2))
    with pytest.raises(EdgeDLError, match="attribute"):
        make_op("DFT", 1, {"axis": 1}, opset=20)
    with pytest.raises(ConstantRequired):
        run("DFT", [x, np.array(8)], {}, opset=20)  # dft_length not a constant


def np_stft(x, step, window, fl, onesided):
    sig = x[..., 0].astype(np.float64) + (1j * x[..., 1] if x.shape[-1] == 2 else 0)
    frames = (x.shape[1] - fl) // step + 1
    fr = np.stack([sig[:, f * step:f * step + fl] for f in range(frames)], axis=1)
    if window is not None:
        fr = fr * window
    y = np.fft.fft(fr, axis=-1)[..., :fl // 2 + 1 if onesided else fl]
    return np.stack([y.real, y.imag], -1)


@pytest.mark.parametrize("fl,step,windowed,onesided,c", [
    (16, 8, False, 1, 1), (16, 8, True, 1, 1), (15, 4, True, 1, 1), (400, 160, True, 1, 1), (194, 60, True, 1, 1),
    (194, 60, False, 0, 1), (12, 5, True, 0, 2), (97, 30, True, 0, 2), (33, 33, False, 1, 1)])
def test_stft_against_numpy(fl, step, windowed, onesided, c):
    rng = np.random.default_rng(fl + step)
    x = rng.standard_normal((2, 3 * fl + 7, c)).astype(np.float32)
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fl) / fl)).astype(np.float32) if windowed else None
    want = np_stft(x, step, win, fl, onesided)
    for const in ((1, 2, 3), (1, 3)):  # the window a constant (folded into a DFT matrix) or not
        inputs = [x, np.array(step), win, np.array(fl)]
        (y,), (r,), kern = run("STFT", inputs, {"onesided": onesided}, opset=17, const=const)
        # a run-time window and the prime 97: numpy's FFT; everything else the FFT or DFT-matrix kernels
        assert kern.impl == ("numpy" if fl % 97 == 0 and windowed and len(const) == 2 else "numba")
        assert y.shape == want.shape
        assert rel_err(y, want) < 1e-5 and rel_err(r, want) < 1e-6
    if windowed:  # frame_length from the window
        (y,), _, _ = run("STFT", [x, np.array(step), win], {"onesided": onesided}, opset=17, const=(1,))
        assert rel_err(y, want) < 1e-5
    # no window, no frame_length: one frame of the whole signal
    (y,), _, _ = run("STFT", [x, np.array(step)], {"onesided": onesided}, opset=17, const=(1,))
    assert rel_err(y, np_stft(x, step, None, x.shape[1], onesided)) < 1e-5


def test_stft_rejects_bad_inputs():
    x = np.zeros((1, 32, 1), np.float32)
    cases = [([x, np.array(0), None, np.array(8)], {}, "frame_step must be positive"),
             ([x, np.array(4), None, np.array(33)], {}, "longer than the signal"),
             ([x, np.array(4), np.ones(7, np.float32), np.array(8)], {}, "window has length 7"),
             ([x, np.array(4), np.ones((2, 4), np.float32)], {}, "1-D"),
             ([np.zeros((1, 32, 2), np.float32), np.array(4), None, np.array(8)], {}, "real signal"),
             ([np.zeros(32, np.float32), np.array(4), None, np.array(8)], {}, "signal must be"),
             ([np.zeros((1, 32, 3), np.float32), np.array(4), None, np.array(8)], {}, "signal must be")]
    for inputs, attrs, msg in cases:
        with pytest.raises(EdgeDLError, match=msg):
            run("STFT", inputs, attrs, opset=17, const=(1, 3))
    with pytest.raises(ConstantRequired):
        run("STFT", [x, np.array(4), None, np.array(8)], {}, opset=17, const=(3,))


def test_signal_end_to_end_against_onnxruntime():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 1000, 1)).astype(np.float32)
    inits = [nh.from_array(np.array(160, np.int64), "step"), nh.from_array(np.array(400, np.int64), "fl"),
             nh.from_array(np.array(1, np.int64), "axis")]
    nodes = [oh.make_node("HannWindow", ["fl"], ["win"]),
             oh.make_node("STFT", ["x", "step", "win"], ["spec"]),
             oh.make_node("DFT", ["spec", "", "axis"], ["dft"], inverse=1)]
    model = onnx_model(nodes, [vi("x", TensorProto.FLOAT, x.shape)],
                       [vi("spec", TensorProto.FLOAT, None), vi("dft", TensorProto.FLOAT, None)], 20, inits)
    got, want = run_both(model, {"x": x})
    for k in want:  # onnxruntime's 400-point transform is float32 (~3e-5 relative error)
        assert got[k].shape == want[k].shape
        assert rel_err(got[k], want[k]) < 1e-4, k
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    spec = np_stft(x, 160, win, 400, 1)
    assert rel_err(got["spec"], spec) < 1e-6
    assert rel_err(got["dft"], np_dft(spec, 1, 4, 1, 0)) < 1e-6


# --- windows and the mel matrix ------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["HannWindow", "HammingWindow", "BlackmanWindow"])
def test_windows(op_type):
    a = {"HannWindow": (0.5, 0.5, 0.0), "HammingWindow": (25 / 46, 21 / 46, 0.0),
         "BlackmanWindow": (0.42, 0.5, 0.08)}[op_type]
    for size in (0, 1, 2, 5, 10, 64):
        for periodic in (0, 1):
            m = size if periodic else size - 1
            k = np.arange(size)
            want = (a[0] - a[1] * np.cos(2 * np.pi * k / m) + a[2] * np.cos(4 * np.pi * k / m)) if m > 0 \
                else np.ones(size)
            (y,), (r,), _ = run(op_type, [np.array(size, np.int32)], {"periodic": periodic}, opset=17, const=(0,))
            assert y.dtype == np.float32 and y.shape == (size,)
            np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    if op_type == "HannWindow":
        np.testing.assert_allclose(run(op_type, [np.array(9)], {"periodic": 0}, opset=17, const=(0,))[0][0],
                                   np.hanning(9), atol=1e-7)
    (y,), _, _ = run(op_type, [np.array(6)], {"output_datatype": TensorProto.DOUBLE}, opset=17, const=(0,))
    assert y.dtype == np.float64
    with pytest.raises(EdgeDLError, match="negative"):
        run(op_type, [np.array(-3)], {}, opset=17, const=(0,))
    with pytest.raises(ConstantRequired):
        run(op_type, [np.array(3)], {}, opset=17)
    with pytest.raises(EdgeDLError, match="scalar"):
        run(op_type, [np.array([3, 4])], {}, opset=17, const=(0,))


def loop_mel(mels, dft, rate, low, high):
    """The spec's loops (onnx's reference test), independent of the vectorized op."""
    nbins = dft // 2 + 1
    pts = np.arange(0, mels + 2)
    lm = 2595 * np.log1p(low / 700) / np.log(10)
    hm = 2595 * np.log1p(high / 700) / np.log(10)
    fb = 700 * np.expm1((pts * ((hm - lm) / pts.shape[0]) + lm) / 2595 * np.log(10))
    fb = (((dft + 1) * fb) // rate).astype(int)
    out = np.zeros((nbins, mels))
    for i in range(mels):
        lo, ce, hi = fb[i], fb[i + 1], fb[i + 2]
        if ce == lo:
            out[ce, i] = 1
        else:
            for j in range(lo, ce + 1):
                out[j, i] = (j - lo) / (ce - lo)
        for j in range(ce, hi):
            out[j, i] = (hi - j) / (hi - ce)
    return out


@pytest.mark.parametrize("mels,dft,rate,low,high", [(8, 16, 8192, 0.0, 4096.0), (40, 512, 16000, 20.0, 7600.0),
                                                     (80, 400, 16000, 0.0, 8000.0), (10, 64, 8000, 300.0, 300.0)])
def test_mel_weight_matrix(mels, dft, rate, low, high):
    ins = [np.asarray(a) for a in (np.int32(mels), np.int32(dft), np.int32(rate), np.float32(low), np.float32(high))]
    (y,), _, _ = run("MelWeightMatrix", ins, {}, opset=17, const=(0, 1, 2, 3, 4))
    want = loop_mel(*ins)
    assert y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, want, atol=1e-7)
    if mels > 10:
        model = onnx_model([oh.make_node("MelWeightMatrix", ["m", "d", "r", "l", "h"], ["y"])], [],
                           [vi("y", TensorProto.FLOAT, None)], 17,
                           [nh.from_array(a, k) for a, k in zip(ins, "mdrlh")])
        got, want_ort = run_both(model, {})
        np.testing.assert_allclose(got["y"], want_ort["y"], atol=1e-6)


def test_mel_weight_matrix_rejects_edges_outside_the_spectrum():
    ins = [np.asarray(a) for a in (np.int64(8), np.int64(16), np.int64(8000), np.float32(0), np.float32(6000))]
    with pytest.raises(EdgeDLError, match="outside"):
        run("MelWeightMatrix", ins, {}, opset=17, const=(0, 1, 2, 3, 4))
    ins[2] = np.asarray(np.int64(0))
    with pytest.raises(EdgeDLError, match="sample_rate"):
        run("MelWeightMatrix", ins, {}, opset=17, const=(0, 1, 2, 3, 4))
    with pytest.raises(EdgeDLError, match="share one int type"):
        run("MelWeightMatrix", ins[:2] + [np.asarray(np.int32(8000))] + ins[3:], {}, opset=17, const=(0, 1, 2))
    with pytest.raises(ConstantRequired):
        run("MelWeightMatrix", ins, {}, opset=17, const=(1,))


# =============================================================================================================
# GridSample
GS_CASES = [(m, p, a) for m in ("linear", "nearest", "cubic") for p in ("zeros", "border", "reflection")
            for a in (0, 1)]


def gs_model(x, g, opset, **attrs):
    node = oh.make_node("GridSample", ["x", "g"], ["y"], **attrs)
    return onnx_model([node], [vi("x", TensorProto.FLOAT, x.shape), vi("g", TensorProto.FLOAT, g.shape)],
                      [vi("y", TensorProto.FLOAT, None)], opset)


def gs_grid(rng, shape):
    g = (rng.standard_normal(shape) * 1.3).astype(np.float32)
    g.reshape(-1)[:9] = [-1, 1, 0, 0.5, -0.5, 3.0, -2.75, 1.0 / 7, -1.0 / 3]
    return g


@pytest.mark.parametrize("mode,pad,align", GS_CASES)
def test_gridsample_2d_kernel_reference_and_onnxruntime(mode, pad, align):
    rng = np.random.default_rng(len(mode) * 10 + len(pad) + align)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    g = gs_grid(rng, (2, 4, 6, 2))
    attrs = dict(mode=mode, padding_mode=pad, align_corners=align)
    (y,), (r,), kern = run("GridSample", [x, g], attrs, opset=20)
    assert kern.impl == "numba" and y.shape == (2, 3, 4, 6)
    np.testing.assert_allclose(y, r, rtol=1e-5, atol=2e-6)
    got, want = run_both(gs_model(x, g, 20, **attrs), {"x": x, "g": g})
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=2e-6)
    if mode == "cubic" and pad == "border":
        return  # onnx's reference clamps the coordinate before the taps here; PyTorch / onnxruntime do not
    from onnx.reference import ReferenceEvaluator

    onnx_ref = ReferenceEvaluator(gs_model(x, g, 20, **attrs)).run(None, {"x": x, "g": g})[0]
    np.testing.assert_allclose(r, onnx_ref, rtol=1e-5, atol=2e-6)


def test_gridsample_opset16_names_parallel_and_large(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 17, 19)).astype(np.float32)
    g = gs_grid(rng, (2, 33, 35, 2))
    for old, new in (("bilinear", "linear"), ("bicubic", "cubic"), ("nearest", "nearest")):
        (y16,), _, _ = run("GridSample", [x, g], {"mode": old}, opset=16)
        monkeypatch.setattr(kconfig, "PARALLEL_MIN_WORK", 1)
        (y20,), (r,), _ = run("GridSample", [x, g], {"mode": new}, opset=20)
        monkeypatch.setattr(kconfig, "PARALLEL_MIN_WORK", 1 << 40)
        np.testing.assert_array_equal(y16, y20)
        np.testing.assert_allclose(y20, r, rtol=1e-5, atol=2e-6)
    (y,), _, _ = run("GridSample", [x, g], {}, opset=16)  # default: bilinear, zeros, align_corners=0
    np.testing.assert_array_equal(y, run("GridSample", [x, g], {"mode": "linear"}, opset=20)[0][0])


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("pad", ["zeros", "border", "reflection"])
def test_gridsample_3d_against_onnxruntime(mode, pad):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 4, 5, 3)).astype(np.float32)
    g = gs_grid(rng, (2, 3, 4, 2, 3))
    for align in (0, 1):
        attrs = dict(mode=mode, padding_mode=pad, align_corners=align)
        got, want = run_both(gs_model(x, g, 20, **attrs), {"x": x, "g": g})
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=2e-6)


def test_gridsample_hostile_and_odd_inputs():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    g = np.array([np.nan, 0.2, np.inf, -np.inf, 1e30, -1e30, 0.0, np.nan], np.float32).reshape(1, 1, 4, 2)
    for mode in ("linear", "nearest", "cubic"):
        for pad in ("zeros", "border", "reflection"):
            (y,), (r,), _ = run("GridSample", [x, g], dict(mode=mode, padding_mode=pad), opset=20)
            np.testing.assert_allclose(y, r, rtol=1e-6, atol=1e-6, err_msg=f"{mode} {pad}")
            if pad == "zeros" and mode != "cubic":
                assert y[0, 0, 0, 0] == 0.0  # a NaN coordinate reads nothing
    # a tap outside the image reads nothing: an inf inside the image does not leak into it as 0 * inf
    xinf = np.ones((1, 1, 3, 4), np.float32)
    xinf[0, 0, 0, 0] = np.inf
    gout = np.array([5.0, 5.0, 0.9, 0.0, -3.0, 0.0], np.float32).reshape(1, 1, 3, 2)
    for mode in ("linear", "nearest", "cubic"):
        (y,), (r,), _ = run("GridSample", [xinf, gout], dict(mode=mode), opset=20)
        assert np.isfinite(y).all() and np.isfinite(r).all() and y[0, 0, 0, 0] == 0 and r[0, 0, 0, 0] == 0, mode
    # nearest rounds halfway points to even; any X dtype
    xi = np.arange(4, dtype=np.int32).reshape(1, 1, 1, 4)
    gx = np.array([-1, -0.5, 0.0, 0.5], np.float32)  # pixel coordinates -0.5, 0.5, 1.5, 2.5 (align 0, w = 4)
    gi = np.stack([gx, np.zeros(4, np.float32)], -1).reshape(1, 1, 4, 2)
    (y,), _, _ = run("GridSample", [xi, gi], {"mode": "nearest"}, opset=20)
    assert y.dtype == np.int32 and y.ravel().tolist() == [0, 0, 2, 2]
    (y,), _, _ = run("GridSample", [xi.astype(bool), gi], {"mode": "nearest"}, opset=20)
    assert y.dtype == bool
    # empty input image reads zeros; a size-1 axis with align_corners
    (y,), _, _ = run("GridSample", [np.zeros((1, 2, 0, 3), np.float32), g], {}, opset=20)
    assert y.shape == (1, 2, 1, 4) and not y.any()
    (y,), (r,), _ = run("GridSample", [np.ones((1, 1, 1, 1), np.float32), g[:, :, :3]],
                        dict(padding_mode="reflection", align_corners=1), opset=20)
    np.testing.assert_array_equal(y, r)


def test_gridsample_rejects_bad_inputs():
    x = np.zeros((1, 2, 3, 4), np.float32)
    cases = [([x, np.zeros((1, 2, 2, 3), np.float32)], {}, 20, "grid has shape"),
             ([x, np.zeros((2, 2, 2, 2), np.float32)], {}, 20, "grid has shape"),
             ([np.zeros((1, 2, 3, 4, 5), np.float32), np.zeros((1, 2, 2, 2, 3), np.float32)], {}, 16, "4-D"),
             ([x.astype(np.int32), np.zeros((1, 2, 2, 2), np.float32)], {}, 20, "dtype"),
             ([x, np.zeros((1, 2, 2, 2), np.int32)], {}, 20, "grid dtype")]
    for inputs, attrs, opset, msg in cases:
        with pytest.raises(EdgeDLError, match=msg):
            run("GridSample", inputs, attrs, opset=opset)
    for attrs, msg in [({"mode": "area"}, "mode"), ({"padding_mode": "wrap"}, "padding_mode"),
                       ({"align_corners": 2}, "align_corners")]:
        with pytest.raises(EdgeDLError, match=msg):
            make_op("GridSample", 2, attrs)


# --- AffineGrid ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(2, 3, 5, 6), (1, 1, 1, 7), (2, 1, 3, 4, 5), (1, 2, 2, 1, 3)])
@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid(size, align):
    rng = np.random.default_rng(sum(size) + align)
    r = len(size) - 2
    theta = rng.standard_normal((size[0], r, r + 1)).astype(np.float32)
    (y,), _, _ = run("AffineGrid", [theta, np.array(size)], {"align_corners": align}, opset=20, const=(1,))
    assert y.shape == (size[0],) + size[2:] + (r,) and y.dtype == np.float32
    # independent: every point (innermost axis first) in homogeneous form
    axes = []
    for d in size[2:]:
        axes.append(np.zeros(1) if d == 1 else (np.linspace(-1, 1, d) if align else (2 * np.arange(d) + 1) / d - 1))
    for idx in np.ndindex(*size[2:]):
        pt = np.array([axes[a][idx[a]] for a in reversed(range(r))] + [1.0])
        np.testing.assert_allclose(y[(slice(None),) + idx], theta.astype(np.float64) @ pt, rtol=1e-6, atol=1e-6)
    if 1 not in size[2:]:  # onnxruntime gives 1 for a size-1 axis with align_corners=1; PyTorch (and edgedl) 0
        node = oh.make_node("AffineGrid", ["t", "s"], ["y"], align_corners=align)
        model = onnx_model([node], [vi("t", TensorProto.FLOAT, theta.shape)], [vi("y", TensorProto.FLOAT, None)],
                           20, [nh.from_array(np.array(size, np.int64), "s")])
        got, want = run_both(model, {"t": theta})
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)


def test_affine_grid_rejects_bad_inputs():
    th = np.zeros((2, 2, 3), np.float32)
    for size, t, msg in [((2, 3, 4), th, "4 values"), ((2, 1, 3, 4, 5), th, "theta must have shape"),
                         ((3, 1, 4, 4), th, "batch"), ((2, 1, -4, 4), th, "negative")]:
        with pytest.raises(EdgeDLError, match=msg):
            run("AffineGrid", [t, np.array(size)], {}, opset=20, const=(1,))
    with pytest.raises(ConstantRequired):
        run("AffineGrid", [th, np.array((2, 1, 4, 4))], {}, opset=20)


# --- DeformConv ----------------------------------------------------------------------------------------------
DC_CASES = [  # n, c, h, w, oc, k, group, offset_group, stride, dilation, pad, mask, bias
    (1, 4, 6, 7, 6, 3, 2, 2, 1, 1, 1, True, True), (2, 6, 9, 8, 4, 3, 2, 3, 2, 1, 0, False, True),
    (1, 2, 5, 5, 3, 2, 1, 1, 1, 2, 2, True, False), (2, 8, 12, 11, 16, 3, 4, 2, 1, 1, 1, True, True),
    (1, 3, 4, 4, 2, 1, 1, 3, 1, 1, 0, False, False)]


def dc_inputs(rng, n, c, h, w, oc, k, g, og, s, d, p, use_mask, use_b):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((oc, c // g, k, k)).astype(np.float32)
    oh_, ow_ = (h + 2 * p - (k - 1) * d - 1) // s + 1, (w + 2 * p - (k - 1) * d - 1) // s + 1
    off = (rng.standard_normal((n, og * k * k * 2, oh_, ow_)) * 2).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32) if use_b else None
    mask = rng.random((n, og * k * k, oh_, ow_)).astype(np.float32) if use_mask else None
    attrs = dict(group=g, offset_group=og, strides=[s, s], dilations=[d, d], pads=[p] * 4, kernel_shape=[k, k])
    return [x, wt, off, b, mask], attrs


def loop_deform_conv(x, wt, off, b, mask, attrs):
    """Per output element, per tap: the spec's sum (independent of the vectorized reference)."""
    n, c, h, w = x.shape
    oc, cpg, kh, kw = wt.shape
    g, og = attrs["group"], attrs["offset_group"]
    (sh, sw), (dh, dw), (ph, pw) = attrs["strides"], attrs["dilations"], attrs["pads"][:2]
    oh_, ow_ = off.shape[2:]
    y = np.zeros((n, oc, oh_, ow_))

    def px(i, ci, yy, xx):
        return float(x[i, ci, yy, xx]) if 0 <= yy < h and 0 <= xx < w else 0.0

    for i in range(n):
        for m in range(oc):
            grp = m // (oc // g)
            for ci in range(grp * cpg, (grp + 1) * cpg):
                o = ci // (c // og)
                for ki in range(kh):
                    for kj in range(kw):
                        t = (o * kh + ki) * kw + kj
                        for a in range(oh_):
                            for bb in range(ow_):
                                sy = a * sh - ph + ki * dh + off[i, 2 * t, a, bb]
                                sx = bb * sw - pw + kj * dw + off[i, 2 * t + 1, a, bb]
                                y0, x0 = int(np.floor(sy)), int(np.floor(sx))
                                fy, fx = sy - y0, sx - x0
                                v = ((1 - fy) * (1 - fx) * px(i, ci, y0, x0) + (1 - fy) * fx * px(i, ci, y0, x0 + 1)
                                     + fy * (1 - fx) * px(i, ci, y0 + 1, x0) + fy * fx * px(i, ci, y0 + 1, x0 + 1))
                                mk = 1.0 if mask is None else mask[i, t, a, bb]
                                y[i, m, a, bb] += wt[m, ci - grp * cpg, ki, kj] * v * mk
            if b is not None:
                y[i, m] += b[m]
    return y


@pytest.mark.parametrize("case", DC_CASES)
def test_deform_conv(case):
    rng = np.random.default_rng(sum(case[:8]))
    inputs, attrs = dc_inputs(rng, *case)
    outs = []
    for const in ((), (1, 3)):  # weights at run time (gemm) or packed once
        (y,), (r,), kern = run("DeformConv", inputs, attrs, opset=19, const=const)
        assert kern.impl == "numba"
        np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5)
        outs.append(y)
    np.testing.assert_array_equal(outs[0], outs[1])
    if case[0] * case[4] * case[1] < 100:
        np.testing.assert_allclose(r, loop_deform_conv(*inputs, attrs), rtol=1e-5, atol=1e-5)
    names = ["x", "w", "o", "b" if inputs[3] is not None else "", "m" if inputs[4] is not None else ""]
    while not names[-1]:
        names.pop()
    node = oh.make_node("DeformConv", names, ["y"], **attrs)
    feeds = {k: v for k, v in zip(names, inputs) if k}
    model = onnx_model([node], [vi(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
                       [vi("y", TensorProto.FLOAT, None)], 19)
    got, want = run_both(model, feeds)
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-5)
    # float64 runs the reference
    (y64,), _, kern = run("DeformConv", [None if a is None else a.astype(np.float64) for a in inputs], attrs,
                          opset=19)
    assert kern.impl == "numpy" and y64.dtype == np.float64
    np.testing.assert_allclose(y64, r, rtol=1e-5, atol=1e-5)


def test_deform_conv_hostile_offsets_and_shapes():
    rng = np.random.default_rng(0)
    inputs, attrs = dc_inputs(rng, 1, 2, 5, 5, 2, 3, 1, 1, 1, 1, 1, True, True)
    off = inputs[2]
    off.reshape(-1)[::5] = np.nan
    off.reshape(-1)[1::7] = 1e30
    off.reshape(-1)[2::11] = -np.inf
    (y,), (r,), _ = run("DeformConv", inputs, attrs, opset=19)
    np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5)
    # sampling points far outside the image read nothing, even where the image holds an inf
    x, w, off, b, mask = inputs
    xi = x.copy()
    xi[0, :, 0, 0] = np.inf
    far = np.full_like(off, 50.0)
    (y,), (r,), _ = run("DeformConv", [xi, w, far, b, mask], attrs, opset=19)
    np.testing.assert_allclose(y, np.broadcast_to(b[None, :, None, None], y.shape), rtol=1e-6)
    np.testing.assert_allclose(r, y, rtol=1e-6)
    cases = [([x, w, off[:, :4]], attrs, "offset has shape"), ([x, w, off, b[:1]], attrs, "B has shape"),
             ([x, w, off, b, mask[:, :3]], attrs, "mask has shape"),
             ([x, w, off], dict(attrs, group=2), "group"), ([x, w, off], dict(attrs, offset_group=3), "offset_group"),
             ([x, w, off], dict(attrs, kernel_shape=[2, 2]), "kernel_shape"),
             ([x[:, :, 0], w[:, :, 0], off], {}, "2-D"), ([x, w.astype(np.float64), off], attrs, "dtype")]
    for ins, at, msg in cases:
        with pytest.raises(EdgeDLError, match=msg):
            run("DeformConv", ins, at, opset=19)


# --- STFT on a 2-D real signal [batch, length] (onnxruntime accepts it; onnx-asr's preprocessors rely on it) ---
@pytest.mark.parametrize("fl,step,const_win", [(400, 160, True), (400, 160, False), (16, 8, True), (97, 30, True)])
def test_stft_2d_real_signal(fl, step, const_win):
    rng = np.random.default_rng(fl)
    x3 = rng.standard_normal((2, 3 * fl + 5, 1)).astype(np.float32)
    x2 = x3[..., 0].copy()
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fl) / fl)).astype(np.float32)
    const = (1, 2, 3) if const_win else (1, 3)
    (y3,), (r3,), _ = run("STFT", [x3, np.array(step), win, np.array(fl)], {}, opset=17, const=const)
    (y2,), (r2,), kern = run("STFT", [x2, np.array(step), win, np.array(fl)], {}, opset=17, const=const)
    assert kern.impl == "numba"
    # the same numbers as the [batch, length, 1] signal, on the kernel and the reference
    np.testing.assert_array_equal(y2, y3)
    np.testing.assert_array_equal(r2, r3)
    assert rel_err(y2, np_stft(x3, step, win, fl, 1)) < 1e-5
    # and as onnxruntime (float32 transform: ~3e-5 relative)
    inits = [nh.from_array(np.array(step, np.int64), "step"), nh.from_array(win, "win")]
    model = onnx_model([oh.make_node("STFT", ["x", "step", "win"], ["y"], onesided=1)],
                       [vi("x", TensorProto.FLOAT, ["B", "N"])], [vi("y", TensorProto.FLOAT, None)], 17, inits)
    got, want = run_both(model, {"x": x2})
    assert got["y"].shape == want["y"].shape == (2, (x2.shape[1] - fl) // step + 1, fl // 2 + 1, 2)
    assert rel_err(got["y"], want["y"]) < 1e-4
    # a 2-D signal is real: onesided=0 gives the full spectrum
    (y2f,), _, _ = run("STFT", [x2, np.array(step), win, np.array(fl)], {"onesided": 0}, opset=17, const=const)
    assert rel_err(y2f, np_stft(x3, step, win, fl, 0)) < 1e-5
