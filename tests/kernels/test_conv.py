"""fp32 Conv2d / ConvTranspose2d kernels (edgedl.kernels.cpu.conv) against float64 numpy references."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from edgedl.kernels.cpu import act as A
from edgedl.kernels.cpu.conv import Conv2d, ConvTranspose2d, conv2d_ref, conv_transpose2d_ref

RTOL, ATOL = 1e-4, 1e-4
ALPHA_BETA = {A.ACT_CLIP: (-0.5, 0.7), A.ACT_LEAKY_RELU: (0.1, 0.0), A.ACT_HARD_SIGMOID: (0.2, 0.5),
              A.ACT_ELU: (0.9, 0.0), A.ACT_SWISH: (1.0, 0.0)}


def rnd(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def run_conv(x, w, b, strides, pads, dil, group, act=0, alpha=0.0, beta=0.0, scratch=True, strategy=None):
    conv = Conv2d(w, b, x.shape, strides, pads, dil, group, act, alpha, beta, strategy=strategy)
    out = np.full(conv.out_shape, np.nan, np.float32)
    conv(x, out, np.empty(conv.scratch_bytes, np.uint8) if scratch else None)
    return conv, out


def check(out, ref):
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=RTOL, atol=ATOL)


# (N, C, H, W), C_out, (kH, kW), strides, pads (top, left, bottom, right), dilations, group
CONV_CASES = [
    ((1, 3, 9, 11), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # odd sizes, same padding
    ((2, 4, 7, 7), 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),           # 1x1 as a plain GEMM, batch 2
    ((1, 4, 7, 7), 6, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),           # strided 1x1
    ((1, 5, 8, 8), 7, (2, 2), (3, 3), (0, 0, 1, 1), (1, 1), 1),           # stride larger than kernel
    ((1, 6, 10, 9), 6, (3, 3), (2, 1), (0, 1, 2, 0), (2, 1), 3),          # asymmetric pads, dilation, groups
    ((2, 4, 13, 11), 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2),         # grouped, batch 2
    ((1, 3, 1, 37), 4, (1, 5), (1, 3), (0, 2, 0, 1), (1, 2), 1),          # H = 1 (Conv1D)
    ((1, 3, 30, 40), 17, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),        # first layer, s2 (vector copies)
    ((1, 8, 6, 70), 13, (1, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),         # wide rows, K = 24
    ((1, 40, 5, 5), 9, (3, 3), (1, 1), (2, 0, 0, 2), (1, 1), 1),          # C*k*k = 360 > KC: K blocks
    ((1, 2, 4, 4), 3, (4, 4), (1, 1), (0, 0, 0, 0), (1, 1), 1),           # kernel = input: 1x1 output
    ((1, 2, 3, 3), 3, (3, 3), (1, 1), (4, 4, 4, 4), (1, 1), 1),           # pads larger than the kernel
    ((1, 40, 6, 7), 160, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),        # M > MC and K > KC
    ((1, 16, 1, 98), 24, (1, 1), (1, 2), (0, 0, 0, 0), (1, 1), 1),        # H = 1, strided 1x1 (not a plain B)
    ((1, 16, 1, 98), 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),        # H = 1 1x1: B read in place
    # one input channel into several outputs (STFT-as-convolution, audio first layers): im2col GEMM, not the
    # generic per-tap depthwise loops
    ((1, 1, 1, 2000), 33, (1, 64), (1, 20), (0, 0, 0, 0), (1, 1), 1),     # 1-D, long kernel, stride < kernel
    ((2, 1, 1, 977), 10, (1, 95), (1, 88), (0, 3, 0, 5), (1, 1), 1),      # resampler-like, batch 2, pads
    ((1, 1, 30, 41), 7, (7, 7), (1, 3), (3, 2, 3, 2), (1, 1), 1),         # 7x7, column stride 3
    ((1, 1, 12, 40), 5, (2, 3), (2, 1), (1, 0, 0, 1), (1, 2), 1),         # odd kernel, dilation
    ((1, 1, 9, 9), 4, (3, 3), (3, 3), (1, 1, 1, 1), (1, 1), 1),           # 3x3 with column stride 3
]

DW_CASES = [
    # (N, C, H, W), multiplier, (kH, kW), strides, pads, dilations
    ((1, 8, 12, 12), 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 5, 13, 9), 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((1, 4, 11, 10), 2, (3, 3), (1, 1), (0, 2, 1, 0), (2, 2)),            # multiplier 2, dilation
    ((1, 3, 9, 9), 3, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),              # 5x5, multiplier 3
    ((1, 6, 10, 8), 1, (5, 5), (2, 1), (2, 1, 2, 3), (1, 1)),             # 5x5 strided rows
    # rows of 13 to 28 outputs: the last, partial vector of a row is the whole vector ending there
    ((1, 16, 9, 20), 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 16, 14, 29), 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((1, 8, 12, 13), 1, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    ((1, 8, 28, 28), 1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 4, 1, 30), 1, (1, 3), (1, 2), (0, 1, 0, 1), (1, 1)),             # H = 1 depthwise
    ((1, 4, 7, 7), 1, (3, 3), (3, 3), (0, 0, 0, 0), (1, 1)),              # stride = kernel
    ((1, 5, 6, 6), 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),              # 1x1 depthwise (scale)
    ((1, 1, 9, 9), 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),              # one input channel, 4 outputs
]


@pytest.mark.parametrize("strategy", [None, "gemm", "flat", "pixels", "direct"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_conv_gemm_strategy(case, strategy):
    """Every case by the strategy Conv2d picks, and by each strategy forced (flat, pixels and direct for
    group 1 only, direct for column stride 1 or 2)."""
    shape, cout, (kh, kw), s, p, d, g = case
    if strategy in ("flat", "pixels", "direct") and g != 1:
        pytest.skip("the flat, pixels and direct strategies are for group-1 convolutions")
    if strategy == "direct" and s[1] not in (1, 2):
        pytest.skip("the direct strategy takes column stride 1 or 2")
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = rnd(rng, *shape), rnd(rng, cout, shape[1] // g, kh, kw), rnd(rng, cout)
    conv, out = run_conv(x, w, b, s, p, d, g, A.ACT_RELU, strategy=strategy)
    assert conv.strategy in ((strategy,) if strategy else ("gemm", "flat", "pixels", "gemv", "direct"))
    check(out, conv2d_ref(x, w, b, s, p, d, g, A.ACT_RELU))
    _, out = run_conv(x, w, None, s, p, d, g, scratch=False, strategy=strategy)
    check(out, conv2d_ref(x, w, None, s, p, d, g))


@pytest.mark.parametrize("case", DW_CASES, ids=[str(i) for i in range(len(DW_CASES))])
def test_conv_depthwise(case):
    shape, mult, (kh, kw), s, p, d = case
    c = shape[1]
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = rnd(rng, *shape), rnd(rng, c * mult, 1, kh, kw), rnd(rng, c * mult)
    conv, out = run_conv(x, w, b, s, p, d, c, A.ACT_CLIP, 0.0, 6.0)
    assert conv.strategy == "depthwise"
    check(out, conv2d_ref(x, w, b, s, p, d, c, A.ACT_CLIP, 0.0, 6.0))
    _, out = run_conv(x, w, None, s, p, d, c)
    check(out, conv2d_ref(x, w, None, s, p, d, c))


def test_conv_single_input_channel_routing():
    """One input channel, group 1, several outputs: GEMM unless the 3x3/5x5 depthwise row kernels cover it;
    real depthwise convolutions (C_in > 1, or one output) keep the depthwise strategy."""
    w = np.zeros((257, 1, 1, 512), np.float32)
    assert Conv2d(w, None, (1, 1, 1, 16000), (1, 160)).strategy == "gemm"
    assert Conv2d(np.zeros((32, 1, 7, 7), np.float32), None, (1, 1, 40, 60), (1, 3)).strategy == "gemm"
    assert Conv2d(np.zeros((8, 1, 3, 3), np.float32), None, (1, 1, 20, 20)).strategy == "depthwise"
    assert Conv2d(np.zeros((8, 1, 5, 5), np.float32), None, (1, 1, 20, 20), (2, 2)).strategy == "depthwise"
    assert Conv2d(np.zeros((1, 1, 1, 9), np.float32), None, (1, 1, 1, 50)).strategy == "depthwise"
    assert Conv2d(np.zeros((8, 1, 1, 9), np.float32), None, (1, 4, 1, 50), group=4).strategy == "depthwise"
    assert Conv2d(np.zeros((8, 1, 7, 7), np.float32), None, (1, 8, 20, 20), group=8).strategy == "depthwise"


def test_conv1d_single_channel_stft_against_onnxruntime():
    """The STFT-as-Conv1d of audio front ends, loaded as an ONNX model, against onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    import edgedl

    rng = np.random.default_rng(3)
    w, b = rnd(rng, 66, 1, 100), rnd(rng, 66)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[100], strides=[40], pads=[50, 50])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 4000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rnd(rng, 2, 1, 4000)
    got = edgedl.load(model.SerializeToString()).run({"x": x})
    got = got["y"] if isinstance(got, dict) else got[0]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("code", range(A.NUM_ACTS))
def test_conv_every_activation(code):
    rng = np.random.default_rng(100 + code)
    alpha, beta = ALPHA_BETA.get(code, (0.0, 0.0))
    for shape, cout, k, g in [((1, 3, 10, 9), 7, 3, 1), ((1, 6, 8, 8), 6, 3, 6)]:
        x, w, b = rnd(rng, *shape), rnd(rng, cout, shape[1] // g, k, k), rnd(rng, cout)
        _, out = run_conv(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), g, code, alpha, beta)
        check(out, conv2d_ref(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), g, code, alpha, beta))


def test_conv_random_shapes():
    rng = np.random.default_rng(7)
    for _ in range(12):
        g = int(rng.choice([1, 1, 2, 3]))
        cin = g * int(rng.integers(1, 5))
        cout = g * int(rng.integers(1, 6))
        kh, kw = (int(v) for v in rng.integers(1, 4, 2))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        h = int(rng.integers((kh - 1) * dh + 1, 16))
        w_ = int(rng.integers((kw - 1) * dw + 1, 16))
        n = int(rng.integers(1, 3))
        x, wt, b = rnd(rng, n, cin, h, w_), rnd(rng, cout, cin // g, kh, kw), rnd(rng, cout)
        code = int(rng.integers(0, A.NUM_ACTS))
        alpha, beta = ALPHA_BETA.get(code, (0.0, 0.0))
        _, out = run_conv(x, wt, b, (sh, sw), pads, (dh, dw), g, code, alpha, beta)
        check(out, conv2d_ref(x, wt, b, (sh, sw), pads, (dh, dw), g, code, alpha, beta))


def test_conv_shape_errors():
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError):
        Conv2d(w, None, (1, 4, 8, 8))  # C_in mismatch
    with pytest.raises(ValueError):
        Conv2d(w, None, (1, 3, 2, 2))  # empty output
    conv = Conv2d(w, None, (1, 3, 8, 8))
    with pytest.raises(ValueError):
        conv(np.zeros((1, 3, 8, 9), np.float32), np.zeros(conv.out_shape, np.float32))


# (N, C_in, H, W), C_out, (kH, kW), strides, pads, dilations, output_padding, group
CONVT_CASES = [
    ((1, 3, 5, 6), 4, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (1, 1), 1),
    ((2, 4, 4, 4), 6, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (0, 0), 2),
    ((1, 2, 3, 5), 3, (3, 2), (1, 3), (0, 1, 2, 0), (2, 1), (0, 2), 1),
    ((1, 6, 7, 7), 6, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1), (0, 0), 6),
    ((1, 5, 1, 9), 3, (1, 4), (1, 2), (0, 1, 0, 1), (1, 1), (0, 1), 1),   # H = 1
    ((1, 3, 4, 4), 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (0, 0), 1),   # 1x1
    ((1, 2, 3, 3), 2, (2, 2), (4, 4), (0, 0, 0, 0), (1, 1), (3, 3), 1),   # stride > kernel: gaps
]


@pytest.mark.parametrize("case", CONVT_CASES, ids=[str(i) for i in range(len(CONVT_CASES))])
def test_conv_transpose(case):
    shape, cout, (kh, kw), s, p, d, op, g = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = rnd(rng, *shape), rnd(rng, shape[1], cout // g, kh, kw), rnd(rng, cout)
    for code in (A.ACT_NONE, A.ACT_LEAKY_RELU, A.ACT_SIGMOID):
        alpha, beta = ALPHA_BETA.get(code, (0.0, 0.0))
        ct = ConvTranspose2d(w, b, shape, s, p, d, op, g, code, alpha, beta)
        out = np.full(ct.out_shape, np.nan, np.float32)
        ct(x, out, np.empty(ct.scratch_bytes, np.uint8))
        check(out, conv_transpose2d_ref(x, w, b, s, p, d, op, g, code, alpha, beta))
    ct = ConvTranspose2d(w, None, shape, s, p, d, op, g)
    out = np.empty(ct.out_shape, np.float32)
    ct(x, out)  # no scratch: allocates its own
    check(out, conv_transpose2d_ref(x, w, None, s, p, d, op, g))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_conv_one_vs_two_threads_identical():
    rng = np.random.default_rng(9)
    before = numba.get_num_threads()
    cases = [((1, 16, 20, 20), 24, 3, 1), ((2, 32, 16, 16), 32, 3, 32), ((1, 8, 40, 40), 16, 1, 1),
             ((2, 16, 12, 12), 24, 3, 2)]
    try:
        for shape, cout, k, g in cases:
            x, w, b = rnd(rng, *shape), rnd(rng, cout, shape[1] // g, k, k), rnd(rng, cout)
            conv = Conv2d(w, b, shape, (1, 1), (k // 2,) * 4, (1, 1), g, A.ACT_RELU)
            assert conv.strategy == ("depthwise" if g == shape[1] else "flat" if g == 1 and k > 1 else "gemm")
            res = []
            for th in (1, 2):
                numba.set_num_threads(th)
                out = np.empty(conv.out_shape, np.float32)
                conv(x, out)
                res.append(out)
            np.testing.assert_array_equal(res[0], res[1])
            check(res[0], conv2d_ref(x, w, b, (1, 1), (k // 2,) * 4, (1, 1), g, A.ACT_RELU))
        x, w = rnd(rng, 1, 16, 12, 12), rnd(rng, 16, 8, 3, 3)
        ct = ConvTranspose2d(w, None, x.shape, (2, 2), (1, 1, 1, 1), (1, 1), (1, 1))
        res = []
        for th in (1, 2):
            numba.set_num_threads(th)
            out = np.empty(ct.out_shape, np.float32)
            ct(x, out)
            res.append(out)
        np.testing.assert_array_equal(res[0], res[1])
    finally:
        numba.set_num_threads(before)


# (N, C, H, W), (kH, kW), strides, pads, dilations: depthwise cases run through both kernels
DW_BOTH_CASES = [
    ((1, 48, 4, 4), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),               # whole channel blocks, 4x4 planes
    ((1, 13, 7, 7), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),               # partial last block
    ((2, 5, 9, 6), (3, 3), (1, 1), (0, 2, 1, 0), (2, 2)),                # C < VW, dilation, batch 2
    ((1, 19, 10, 8), (5, 5), (2, 1), (2, 1, 2, 3), (1, 1)),              # 5x5, asymmetric pads
    ((1, 16, 8, 8), (3, 3), (3, 3), (0, 0, 0, 0), (1, 1)),               # stride skips the last rows
    ((1, 24, 40, 37), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),             # wide rows (vector chunks + tail)
    ((1, 8, 1, 30), (1, 3), (1, 2), (0, 1, 0, 1), (1, 1)),               # H = 1
    ((1, 9, 6, 6), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),                # 1x1 depthwise
    ((1, 17, 11, 37), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),             # rows by 4, 4, 2, then 1
    ((1, 10, 9, 20), (3, 3), (1, 2), (1, 1, 1, 1), (1, 1)),              # column stride 2: rows by 2
    ((1, 6, 8, 21), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),               # 5x5 rows by 2
    ((1, 6, 7, 22), (5, 5), (1, 2), (2, 2, 2, 2), (1, 1)),               # 5x5, column stride 2, odd rows
    ((1, 4, 9, 18), (3, 3), (1, 1), (2, 1, 2, 1), (2, 1)),               # row dilation: one row per call
]


@pytest.mark.parametrize("case", DW_BOTH_CASES, ids=[str(i) for i in range(len(DW_BOTH_CASES))])
def test_depthwise_kernels_agree(case, monkeypatch):
    """The row kernels and the channel-interleaved kernel give the same floats (same sums in the same
    order), and both match the reference, with and without a fused activation."""
    from edgedl.kernels.cpu import conv as conv_mod

    shape, (kh, kw), s, p, d = case
    c = shape[1]
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = rnd(rng, *shape), rnd(rng, c, 1, kh, kw), rnd(rng, c)
    for code in (A.ACT_NONE, A.ACT_HARD_SWISH, A.ACT_SIGMOID):
        outs = {}
        for interleaved in (False, True):
            monkeypatch.setattr(conv_mod, "prefer_interleaved", lambda oh, ow, sw, v=interleaved: v)
            conv, out = run_conv(x, w, b, s, p, d, c, code)
            assert conv.depthwise_kernel == ("interleaved" if interleaved else "rows")
            outs[interleaved] = out
        np.testing.assert_array_equal(outs[True], outs[False])
        check(outs[True], conv2d_ref(x, w, b, s, p, d, c, code))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_depthwise_interleaved_threads_identical():
    rng = np.random.default_rng(11)
    x, w, b = rnd(rng, 2, 200, 14, 14), rnd(rng, 200, 1, 3, 3), rnd(rng, 200)
    conv = Conv2d(w, b, x.shape, (1, 1), (1, 1, 1, 1), (1, 1), 200, A.ACT_RELU)
    assert conv.depthwise_kernel == "interleaved"
    before = numba.get_num_threads()
    res = []
    try:
        for th in (1, 2):
            numba.set_num_threads(th)
            out = np.empty(conv.out_shape, np.float32)
            conv(x, out, np.empty(conv.scratch_bytes, np.uint8))
            res.append(out)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(res[0], res[1])
    check(res[0], conv2d_ref(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 200, A.ACT_RELU))


DIRECT_CASES = [
    ((1, 3, 40, 44), 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),    # an RGB first layer
    ((2, 1, 37, 41), 10, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),    # grey, batch 2, a partial channel block
    ((1, 3, 30, 38), 16, (3, 3), (2, 1), (0, 1, 1, 0), (2, 2)),    # row stride 2, dilation, asymmetric pads
    ((1, 4, 35, 40), 9, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),     # 7x7 stem
    ((1, 2, 19, 70), 5, (5, 5), (1, 2), (2, 2, 2, 2), (1, 1)),
]


@pytest.mark.parametrize("case", DIRECT_CASES, ids=[str(i) for i in range(len(DIRECT_CASES))])
def test_direct_first_layers_are_the_gemms_floats(case):
    """The direct strategy (few input channels) is picked for these (several channels only where
    conv_direct.MULTI_CHANNEL_DIRECT says so; forced elsewhere), and gives the GEMM's floats bit for bit (the same
    sums in the same order) for every in-register activation and thread count; repack follows."""
    from edgedl.kernels.cpu.conv_direct import MULTI_CHANNEL_DIRECT

    shape, cout, (kh, kw), s, p, d = case
    picked = shape[1] == 1 or MULTI_CHANNEL_DIRECT
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = rnd(rng, *shape), rnd(rng, cout, shape[1], kh, kw), rnd(rng, cout)
    for code, alpha, beta in ((A.ACT_NONE, 0.0, 0.0), (A.ACT_RELU, 0.0, 0.0), (A.ACT_HARD_SWISH, 0.0, 0.0),
                              (A.ACT_SWISH, 1.0, 0.0), (A.ACT_CLIP, -0.5, 0.7)):
        direct = Conv2d(w, b, x.shape, s, p, d, 1, code, alpha, beta)
        assert (direct.strategy == "direct") == picked
        if not picked:
            direct = Conv2d(w, b, x.shape, s, p, d, 1, code, alpha, beta, strategy="direct")
        gemm = Conv2d(w, b, x.shape, s, p, d, 1, code, alpha, beta, strategy="gemm")
        want = np.empty(gemm.out_shape, np.float32)
        gemm(x, want, np.empty(gemm.scratch_bytes, np.uint8), 1)
        for threads in (1, 2, 3):
            got = np.full(direct.out_shape, np.nan, np.float32)
            scratch = np.full(direct.scratch_bytes, 0xFF, np.uint8)  # NaN garbage: the padding must be written
            direct.bind(x, got, scratch, threads)()
            np.testing.assert_array_equal(got, want)
    check(want, conv2d_ref(x, w, b, s, p, d, 1, code, alpha, beta))
    w2, b2 = rnd(rng, *w.shape), rnd(rng, cout)
    assert direct.repack(w2, b2)
    got = np.empty(direct.out_shape, np.float32)
    direct(x, got)
    check(got, conv2d_ref(x, w2, b2, s, p, d, 1, code, alpha, beta))
