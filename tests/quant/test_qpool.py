"""8-bit pooling (edgedl.kernels.cpu.qpool) against the numpy references (edgedl.quant.reference_ops) bit for
bit in every mode: padding, strides, dilations, ceil-mode output sizes, count_include_pad, ties, extreme zero
points, different in/out parameters and types; and against onnxruntime (MaxPool on int8/uint8,
com.microsoft QLinearAveragePool and QLinearGlobalAveragePool)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper, numpy_helper

from edgedl.kernels.cpu.qpool import QAvgPool2d, QGlobalAvgPool, QMaxPool2d
from edgedl.quant import reference_ops as R
from edgedl.quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE

I8, U8 = np.int8, np.uint8
MODES = [MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT]


def _out_size(n, k, s, p0, p1, d=1, ceil=False):
    v = (n + p0 + p1 - d * (k - 1) - 1) / s
    return int(math.ceil(v) if ceil else math.floor(v)) + 1


def _config(rng, dilated=False):
    """A random pooling geometry: x shape, kernel, pads (t, l, b, r), strides, dilations, output size."""
    n, c, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(2, 11)), int(rng.integers(2, 11))
    kh, kw = int(rng.integers(1, min(h, 4) + 1)), int(rng.integers(1, min(w, 4) + 1))
    pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
    strides = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dil = tuple(int(rng.integers(1, 3)) if dilated and 2 * (k - 1) < n else 1 for k, n in ((kh, h), (kw, w)))
    ceil = bool(rng.integers(0, 2))
    oh = _out_size(h, kh, strides[0], pads[0], pads[2], dil[0], ceil)
    ow = _out_size(w, kw, strides[1], pads[1], pads[3], dil[1], ceil)
    return (n, c, h, w), (kh, kw), pads, strides, dil, (max(oh, 1), max(ow, 1))


def _rand(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def _zp(rng, dtype):
    info = np.iinfo(dtype)
    return int(rng.choice([info.min, info.max, int(rng.integers(info.min, info.max + 1))]))


@pytest.mark.parametrize("dtype", [I8, U8])
def test_maxpool_matches_reference(dtype):
    rng = np.random.default_rng(1)
    for _ in range(40):
        shape, kernel, pads, strides, dil, out_hw = _config(rng, dilated=True)
        x = _rand(rng, shape, dtype)
        out = np.empty(shape[:2] + out_hw, dtype)
        QMaxPool2d(shape, kernel, pads, strides, dil, out_hw)(x, out)
        np.testing.assert_array_equal(out, R.qmaxpool2d(x, kernel, pads, strides, dil, out_hw),
                                      err_msg=f"{shape} {kernel} {pads} {strides} {dil} {out_hw}")
    # windows entirely in the padding (an output size past the input) give the type's minimum
    x = _rand(rng, (1, 2, 3, 3), dtype)
    out = np.empty((1, 2, 4, 4), dtype)
    QMaxPool2d(x.shape, (1, 1), (0, 0, 0, 0), (2, 2), (1, 1), (4, 4))(x, out)
    assert (out[:, :, 2:, :] == np.iinfo(dtype).min).all()
    np.testing.assert_array_equal(out, R.qmaxpool2d(x, (1, 1), (0, 0, 0, 0), (2, 2), (1, 1), (4, 4)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dts", [(I8, I8), (U8, U8), (I8, U8)])
def test_avgpool_matches_reference(mode, dts):
    in_dt, out_dt = dts
    rng = np.random.default_rng(10 + mode)
    lo_o, hi_o = np.iinfo(out_dt).min, np.iinfo(out_dt).max
    for k in range(30):
        shape, kernel, pads, strides, _, out_hw = _config(rng)
        if k % 10 == 0:  # a kernel covering the image (onnxruntime's global fallback in MODE_FLOAT)
            kernel, pads, strides, out_hw = shape[2:], (0, 0, 0, 0), (1, 1), (1, 1)
        x = _rand(rng, shape, in_dt)
        xs, xz = np.float32(np.exp(rng.uniform(-5, 0))), _zp(rng, in_dt)
        if k % 3 == 0 and in_dt == out_dt:  # same parameters: TFLite's own case
            ys, yz = xs, xz
        elif k % 3 == 1:  # power-of-two scales: exact .5 averages (ties)
            xs, ys, yz = np.float32(2.0 ** -3), np.float32(2.0 ** -3), _zp(rng, out_dt)
        else:
            ys, yz = np.float32(np.exp(rng.uniform(-5, 0))), _zp(rng, out_dt)
        lo, hi = (yz, hi_o) if k % 4 == 3 else (lo_o, hi_o)
        incl = bool(k % 2)
        out = np.empty(shape[:2] + tuple(out_hw), out_dt)
        QAvgPool2d(shape, kernel, pads, strides, out_hw, incl, xs, xz, ys, yz, lo, hi, mode)(x, out)
        if mode == MODE_FLOAT:
            want = R.qavgpool2d_onnx(x, kernel, pads, strides, out_hw, incl, xs, xz, ys, yz, lo, hi)
        else:
            want = R.qavgpool2d_tflite(x, kernel, pads, strides, out_hw, incl, xs, xz, ys, yz, lo, hi, out_dt,
                                       single=mode == MODE_SINGLE)
        np.testing.assert_array_equal(out, want, err_msg=f"case {k}: {shape} {kernel} {pads} {strides} {out_hw}")


def test_tflite_avgpool_rounding_and_padding():
    # TFLite rounds the average half away from zero: (1 + 2) / 2 -> 2, (-1 - 2) / 2 -> -2
    x = np.array([1, 2, -1, -2], I8).reshape(1, 2, 1, 2)
    out = np.empty((1, 2, 1, 1), I8)
    QAvgPool2d(x.shape, (1, 2), (0, 0, 0, 0), (1, 1), (1, 1), False, 0.1, 0, 0.1, 0, -128, 127, MODE_DOUBLE)(x, out)
    assert out.ravel().tolist() == [2, -2]
    # count_include_pad: a padding tap holds the zero point (a real 0), counted in the divisor
    x = np.full((1, 1, 1, 1), 13, I8)
    out = np.empty((1, 1, 1, 2), I8)
    pool = QAvgPool2d(x.shape, (1, 2), (0, 1, 0, 0), (1, 1), (1, 2), True, 0.1, 5, 0.1, 5, -128, 127, MODE_DOUBLE)
    pool(x, out)
    assert out.ravel().tolist() == [9, 13]  # (5 + 13) / 2; a window hanging past the padded input counts 1 tap


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dts", [(I8, I8), (U8, U8), (U8, I8)])
def test_global_avgpool_matches_reference(mode, dts):
    in_dt, out_dt = dts
    rng = np.random.default_rng(30 + mode)
    info = np.iinfo(out_dt)
    for k, hw in enumerate([(1, 1), (1, 2), (2, 2), (7, 7), (3, 5), (13, 11), (2, 64)]):
        n, c = 2, 3
        x = _rand(rng, (n, c) + hw, in_dt)
        if k < 3:  # ties: averages of 2 or 4 values at equal power-of-two scales
            xs = ys = np.float32(0.25)
        else:
            xs, ys = (np.float32(np.exp(rng.uniform(-5, 0))) for _ in range(2))
        xz, yz = _zp(rng, in_dt), _zp(rng, out_dt)
        lo = yz if k % 2 else info.min
        out = np.empty((n, c, 1, 1), out_dt)
        QGlobalAvgPool(n, c, hw[0] * hw[1], xs, xz, ys, yz, lo, info.max, mode)(x, out)
        if mode == MODE_FLOAT:
            want = R.qglobal_avgpool_onnx(x, xs, xz, ys, yz, lo, info.max)
        else:
            want = R.qglobal_avgpool_tflite(x, xs, xz, ys, yz, lo, info.max, single=mode == MODE_SINGLE)
        np.testing.assert_array_equal(out, want, err_msg=f"{hw}")
        real = np.round(((x.astype(np.float64) - xz) * xs).mean(axis=(2, 3), keepdims=True) / ys) + yz
        assert np.abs(out.astype(np.int64) - np.clip(real, lo, info.max)).max() <= 1


def test_parallel_variants_agree():
    rng = np.random.default_rng(4)
    x = _rand(rng, (2, 64, 48, 48), I8)  # > PARALLEL_MIN_WORK taps
    mp = QMaxPool2d(x.shape, (3, 3), (1, 1, 1, 1), (2, 2), (1, 1), (24, 24))
    ap = QAvgPool2d(x.shape, (3, 3), (1, 1, 1, 1), (2, 2), (24, 24), False, 0.05, -3, 0.04, 2, -128, 127, MODE_FLOAT)
    gp = QGlobalAvgPool(2, 64, 48 * 48, 0.05, -3, 0.04, 2, -128, 127, MODE_DOUBLE)
    for op, shape in ((mp, (2, 64, 24, 24)), (ap, (2, 64, 24, 24)), (gp, (2, 64, 1, 1))):
        a, b = np.empty(shape, I8), np.empty(shape, I8)
        op(x, a, parallel=True)
        op(x, b, parallel=False)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(op(x, np.empty(shape, I8)), a)


def test_pool_errors():
    x = np.zeros((1, 2, 5, 5), I8)
    mp = QMaxPool2d(x.shape, (2, 2), (0, 0, 0, 0), (1, 1), (1, 1), (4, 4))
    with pytest.raises(ValueError, match="shape"):
        mp(np.zeros((1, 2, 5, 4), I8), np.empty((1, 2, 4, 4), I8))
    with pytest.raises(ValueError, match="shape"):
        mp(x, np.empty((1, 2, 4, 3), I8))
    with pytest.raises(ValueError, match="keeps the type"):
        mp(x, np.empty((1, 2, 4, 4), U8))
    with pytest.raises(ValueError, match="int8 or uint8"):
        mp(x.astype(np.int16), np.empty((1, 2, 4, 4), np.int16))
    with pytest.raises(ValueError, match="pads"):
        QMaxPool2d(x.shape, (2, 2), (0, 0, 0), (1, 1), (1, 1), (4, 4))
    with pytest.raises(ValueError, match="kernel"):
        QMaxPool2d(x.shape, (0, 2), (0, 0, 0, 0), (1, 1), (1, 1), (4, 4))
    with pytest.raises(ValueError, match="N, C, H, W"):
        QMaxPool2d((2, 5, 5), (2, 2), (0, 0, 0, 0), (1, 1), (1, 1), (4, 4))
    ap = QAvgPool2d(x.shape, (2, 2), (0, 0, 0, 0), (1, 1), (4, 4), False, 0.1, 0, 0.1, 0, 0, 255, MODE_DOUBLE)
    with pytest.raises(ValueError, match="outside int8"):
        ap(x, np.empty((1, 2, 4, 4), I8))
    with pytest.raises(ValueError, match="mode"):
        QAvgPool2d(x.shape, (2, 2), (0, 0, 0, 0), (1, 1), (4, 4), False, 0.1, 0, 0.1, 0, -128, 127, 9)
    with pytest.raises(ValueError, match="1x1"):
        QAvgPool2d(x.shape, (5, 5), (0, 0, 0, 0), (1, 1), (2, 2), False, 0.1, 0, 0.1, 0, -128, 127, MODE_FLOAT)
    gp = QGlobalAvgPool(1, 2, 25, 0.1, 0, 0.1, 0, -128, 127, MODE_FLOAT)
    with pytest.raises(ValueError, match="planes"):
        gp(x, np.empty((1, 3, 1, 1), I8))
    with pytest.raises(ValueError, match="zero point"):
        QGlobalAvgPool(1, 2, 25, 0.1, -1, 0.1, 0, 0, 255, MODE_FLOAT)(x.view(U8), np.empty((1, 2, 1, 1), U8))


def _ort_session(node, x_info, inits, opset_ms=True):
    ort = pytest.importorskip("onnxruntime")
    g = helper.make_graph([node], "g", [x_info], [helper.make_tensor_value_info("y", x_info.type.tensor_type.elem_type,
                                                                                  None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if opset_ms else [])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(helper.make_model(g, opset_imports=opsets).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dtype", [I8, U8])
def test_onnxruntime_pools(dtype):
    """MaxPool (ONNX, int8/uint8), com.microsoft QLinearAveragePool (ceil_mode, count_include_pad, the global
    fallback) and QLinearGlobalAveragePool against MODE_FLOAT: bit-exact (measured: 0 differences)."""
    rng = np.random.default_rng(40)
    info = np.iinfo(dtype)
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for k in range(16):
        shape, kernel, pads, strides, dil, _ = _config(rng, dilated=True)
        ceil, incl = k % 2, (k // 2) % 2
        if k % 8 == 7:
            kernel, pads = shape[2:], (0, 0, 0, 0)
        x = _rand(rng, shape, dtype)
        x_info = helper.make_tensor_value_info("x", tt, list(shape))
        ons_pads = [pads[0], pads[1], pads[2], pads[3]]
        # MaxPool: onnxruntime resolves ceil_mode; the kernel takes the output size it gives
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(kernel), pads=ons_pads,
                                strides=list(strides), dilations=list(dil), ceil_mode=ceil)
        want = _ort_session(node, x_info, {}, opset_ms=False).run(None, {"x": x})[0]
        out = np.empty(want.shape, dtype)
        QMaxPool2d(shape, kernel, pads, strides, dil, want.shape[2:])(x, out)
        np.testing.assert_array_equal(out, want)
        if k < 3:  # exact .5 ties at equal power-of-two scales
            xs = ys = np.float32(0.125)
        else:
            xs, ys = (np.float32(np.exp(rng.uniform(-5, 0))) for _ in range(2))
        xz, yz = (int(rng.integers(info.min, info.max + 1)) for _ in range(2))
        inits = dict(xs=np.array(xs), xz=np.array(xz, dtype), ys=np.array(ys), yz=np.array(yz, dtype))
        node = helper.make_node("QLinearAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft",
                                kernel_shape=list(kernel), pads=ons_pads, strides=list(strides),
                                count_include_pad=incl, ceil_mode=ceil)
        want = _ort_session(node, x_info, inits).run(None, {"x": x})[0]
        out = np.empty(want.shape, dtype)
        QAvgPool2d(shape, kernel, pads, strides, want.shape[2:], incl, xs, xz, ys, yz, info.min, info.max,
                   MODE_FLOAT)(x, out)
        np.testing.assert_array_equal(out, want, err_msg=f"{shape} {kernel} {pads} {strides} {ceil} {incl}")
        node = helper.make_node("QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"],
                                domain="com.microsoft", channels_last=0)
        want = _ort_session(node, x_info, inits).run(None, {"x": x})[0]
        out = np.empty(want.shape, dtype)
        QGlobalAvgPool(shape[0], shape[1], shape[2] * shape[3], xs, xz, ys, yz, info.min, info.max,
                       MODE_FLOAT)(x, out)
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("shape,kernel,pads,out_hw", [
    ((2, 3, 8, 10), (2, 2), (0, 0, 0, 0), (4, 5)),     # 2x2 stride 2: the written-out kernel
    ((1, 2, 9, 11), (2, 2), (0, 0, 0, 0), (4, 5)),     # odd sizes: the last row / column is dropped
    ((2, 3, 9, 12), (3, 3), (1, 1, 1, 1), (5, 6)),     # ResNet's 3x3 stride 2 pad 1
    ((1, 2, 7, 7), (3, 3), (0, 0, 0, 0), (3, 3)),
    ((1, 2, 8, 8), (3, 3), (1, 0, 2, 1), (5, 4)),      # asymmetric pads, ceil-mode sized output
])
def test_maxpool_dedicated_stride2_kernels_match_the_reference(dtype, shape, kernel, pads, out_hw):
    info = np.iinfo(dtype)
    x = np.random.default_rng(sum(shape)).integers(info.min, info.max + 1, shape).astype(dtype)
    out = np.empty(shape[:2] + out_hw, dtype)
    QMaxPool2d(shape, kernel, pads, (2, 2), (1, 1), out_hw)(x, out)
    np.testing.assert_array_equal(out, R.qmaxpool2d(x, kernel, pads, (2, 2), (1, 1), out_hw))


# --- the polyphase AveragePool, the table GlobalAveragePool and binding ---------------------------------
def _avg_want(mode, x, kernel, pads, strides, out_hw, incl, xs, xz, ys, yz, lo, hi, out_dt):
    if mode == MODE_FLOAT:
        return R.qavgpool2d_onnx(x, kernel, pads, strides, out_hw, incl, xs, xz, ys, yz, lo, hi)
    return R.qavgpool2d_tflite(x, kernel, pads, strides, out_hw, incl, xs, xz, ys, yz, lo, hi, out_dt,
                               single=mode == MODE_SINGLE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dts", [(I8, I8), (U8, U8), (U8, I8)])
@pytest.mark.parametrize("geom", [
    # x shape, kernel, pads (t, l, b, r), strides, output size
    ((1, 5, 16, 16), (3, 3), (1, 1, 1, 1), (2, 2), (8, 8)),     # stride 2, even W: the uint16 row loop
    ((2, 3, 15, 13), (3, 3), (1, 1, 1, 1), (2, 2), (8, 7)),     # stride 2, odd W: the generic row loop
    ((1, 4, 9, 12), (2, 3), (0, 2, 1, 0), (2, 2), (5, 6)),      # even pl / odd pr, asymmetric
    ((1, 3, 7, 10), (3, 2), (2, 1, 2, 1), (1, 1), (9, 11)),     # stride 1: one phase, big pads
    ((2, 2, 11, 14), (4, 5), (1, 2, 3, 2), (3, 3), (4, 5)),     # stride 3, windows past the padded input
    ((1, 3, 10, 9), (5, 4), (2, 3, 2, 3), (2, 3), (6, 4)),      # kernel rows of neither 2 nor 3 taps
    ((1, 2, 6, 8), (1, 1), (0, 0, 0, 0), (2, 2), (3, 4)),       # 1x1 windows
    ((1, 2, 4, 4), (2, 2), (0, 0, 0, 0), (1, 1), (5, 5)),       # outputs whose window holds no input
    ((1, 3, 14, 13), (12, 11), (1, 0, 1, 1), (2, 1), (2, 4)),   # 132 taps: int32 sums in the fixed modes
])
def test_avgpool_polyphase_paths(mode, dts, geom):
    """Every row-loop variant of the phase-buffer fill (stride 1, stride 2 with even / odd W, other strides),
    every tap-row pass (2, 3, other taps) and border counts (count_include_pad 0 and 1), bit for bit."""
    in_dt, out_dt = dts
    shape, kernel, pads, strides, out_hw = geom
    rng = np.random.default_rng(sum(shape) + mode)
    lo_o, hi_o = np.iinfo(out_dt).min, np.iinfo(out_dt).max
    for k in range(5):
        x = _rand(rng, shape, in_dt)
        if k == 0:  # exact .5 averages at power-of-two scales
            xs, ys, xz, yz = np.float32(0.25), np.float32(0.25), _zp(rng, in_dt), _zp(rng, out_dt)
        elif k == 4:  # the output parameters are the input's (TFLite's case): no requantization table
            xs, xz = np.float32(np.exp(rng.uniform(-5, 0))), _zp(rng, in_dt)
            ys, yz = xs, xz if in_dt == out_dt else _zp(rng, out_dt)
        else:
            xs, ys = (np.float32(np.exp(rng.uniform(-5, 0))) for _ in range(2))
            xz, yz = _zp(rng, in_dt), _zp(rng, out_dt)
        lo, hi = (yz, hi_o) if k == 3 else (lo_o, hi_o)
        for incl in (False, True):
            pool = QAvgPool2d(shape, kernel, pads, strides, out_hw, incl, xs, xz, ys, yz, lo, hi, mode)
            assert pool.global_pool is None
            want = _avg_want(mode, x, kernel, pads, strides, out_hw, incl, xs, xz, ys, yz, lo, hi, out_dt)
            out = np.empty(shape[:2] + out_hw, out_dt)
            pool(x, out)
            np.testing.assert_array_equal(out, want, err_msg=f"{geom} k={k} incl={incl}")
            out2 = np.empty_like(out)
            pool(x, out2, parallel=True)
            np.testing.assert_array_equal(out2, want)


@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE])
def test_avgpool_huge_window_counts(mode):
    """Windows of 2^16 taps and more: sums beyond int16 and a divisor past float32's exact range (float64)."""
    rng = np.random.default_rng(8)
    shape, kernel, pads, strides, out_hw = (1, 1, 257, 258), (256, 256), (0, 0, 0, 1), (1, 3), (2, 2)
    for dtype, incl in ((U8, False), (I8, True)):
        x = _rand(rng, shape, dtype)
        x[..., :128, :] = np.iinfo(dtype).max
        zp = int(np.iinfo(dtype).max)
        pool = QAvgPool2d(shape, kernel, pads, strides, out_hw, incl, 0.5, zp, 0.5, zp, np.iinfo(dtype).min,
                          np.iinfo(dtype).max, mode)
        out = np.empty(shape[:2] + out_hw, dtype)
        pool(x, out)
        want = _avg_want(mode, x, kernel, pads, strides, out_hw, incl, np.float32(0.5), zp, np.float32(0.5), zp,
                         np.iinfo(dtype).min, np.iinfo(dtype).max, dtype)
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("mode", MODES)
def test_avgpool_chunks_of_planes(mode, monkeypatch):
    """A workspace for fewer planes than the input has: chunks of planes one after the other (the last one
    partial, over blocks left from the previous chunk), serial and over several workers."""
    monkeypatch.setattr(QAvgPool2d, "WORKSPACE", 1500)
    rng = np.random.default_rng(7)
    shape, kernel, pads, strides, out_hw = (3, 5, 12, 10), (3, 3), (1, 1, 1, 1), (2, 2), (6, 5)
    pool = QAvgPool2d(shape, kernel, pads, strides, out_hw, False, 0.05, 4, 0.07, -3, -128, 127, mode)
    assert 1 < int(pool.a_g[13]) < 15 and 15 % int(pool.a_g[13])  # several chunks, the last one partial
    x = _rand(rng, shape, I8)
    want = _avg_want(mode, x, kernel, pads, strides, out_hw, False, np.float32(0.05), 4, np.float32(0.07), -3,
                     -128, 127, I8)
    for parallel in (False, True):
        out = np.empty(shape[:2] + out_hw, I8)
        pool(x, out, parallel=parallel)
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dts", [(I8, I8), (U8, U8), (U8, I8), (I8, U8)])
def test_global_avgpool_table_and_large_planes(mode, dts):
    """Planes of up to GAP_TABLE_MAX_HW values go through the table of every sum, larger ones requantize each
    sum: both bit for bit, at the size limit and either side of it."""
    from edgedl.kernels.cpu.qpool import GAP_TABLE_MAX_HW

    in_dt, out_dt = dts
    rng = np.random.default_rng(50 + mode)
    info = np.iinfo(out_dt)
    for hw in (1, 3, 13, 49, GAP_TABLE_MAX_HW, GAP_TABLE_MAX_HW + 1, 300, 3136):
        n, c = 1, 5
        for extreme in (False, True):
            x = _rand(rng, (n, c, hw), in_dt)
            if extreme:  # every value the type's minimum / maximum: sums at both ends of the table
                x[:, :2] = np.iinfo(in_dt).min
                x[:, 2:4] = np.iinfo(in_dt).max
            xs, ys = (np.float32(np.exp(rng.uniform(-5, 0))) for _ in range(2))
            xz, yz = _zp(rng, in_dt), _zp(rng, out_dt)
            out = np.empty((n, c, 1), out_dt)
            QGlobalAvgPool(n, c, hw, xs, xz, ys, yz, info.min, info.max, mode)(x, out)
            if mode == MODE_FLOAT:
                want = R.qglobal_avgpool_onnx(x, xs, xz, ys, yz, info.min, info.max)
            else:
                want = R.qglobal_avgpool_tflite(x, xs, xz, ys, yz, info.min, info.max, single=mode == MODE_SINGLE)
            np.testing.assert_array_equal(out.reshape(-1), want.reshape(-1), err_msg=f"hw={hw}")


@pytest.mark.parametrize("dtype", [I8, U8])
def test_global_avgpool_plane_sum_beyond_int32(dtype):
    """A plane whose sum of 8-bit values passes 2^31 (over 2^23 values): summed in int32 blocks, added in int64."""
    hw = (1 << 23) + 5
    x = np.full((1, 1, hw), np.iinfo(dtype).max, dtype)
    x[0, 0, :3] = np.iinfo(dtype).min
    out = np.empty((1, 1, 1), dtype)
    for mode in (MODE_DOUBLE, MODE_FLOAT):
        QGlobalAvgPool(1, 1, hw, 0.5, 0, 0.5, 0, int(np.iinfo(dtype).min), int(np.iinfo(dtype).max), mode)(x, out)
        if mode == MODE_FLOAT:
            want = R.qglobal_avgpool_onnx(x, 0.5, 0, 0.5, 0, np.iinfo(dtype).min, np.iinfo(dtype).max)
        else:
            want = R.qglobal_avgpool_tflite(x, 0.5, 0, 0.5, 0, np.iinfo(dtype).min, np.iinfo(dtype).max)
        assert int(out.reshape(())) == int(np.asarray(want).reshape(())) == np.iinfo(dtype).max


def _pool_cases(dtype):
    rng = np.random.default_rng(60)
    x = _rand(rng, (2, 6, 12, 12), dtype)
    q = dict(x_scale=0.05, x_zp=3 if dtype == I8 else 131, y_scale=0.04, y_zp=-2 if dtype == I8 else 125)
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    qp = (q["x_scale"], q["x_zp"], q["y_scale"], q["y_zp"], lo, hi)
    return x, [
        (QMaxPool2d(x.shape, (2, 2), (0, 0, 0, 0), (2, 2), (1, 1), (6, 6)), (2, 6, 6, 6)),
        (QMaxPool2d(x.shape, (3, 3), (1, 1, 1, 1), (2, 2), (1, 1), (6, 6)), (2, 6, 6, 6)),
        (QMaxPool2d(x.shape, (3, 2), (1, 0, 1, 0), (1, 2), (2, 1), (12, 6)), (2, 6, 12, 6)),
        (QAvgPool2d(x.shape, (3, 3), (1, 1, 1, 1), (2, 2), (6, 6), False, *qp, MODE_FLOAT), (2, 6, 6, 6)),
        (QAvgPool2d(x.shape, (3, 3), (1, 1, 1, 1), (2, 2), (6, 6), True, *qp, MODE_DOUBLE), (2, 6, 6, 6)),
        (QAvgPool2d(x.shape, (12, 12), (0, 0, 0, 0), (1, 1), (1, 1), False, *qp, MODE_FLOAT), (2, 6, 1, 1)),
        (QGlobalAvgPool(2, 6, 144, *qp, MODE_SINGLE), (2, 6, 1, 1)),
    ]


@pytest.mark.parametrize("dtype", [I8, U8])
def test_bound_pools_follow_their_arrays(dtype):
    """``bind`` prepares the call once for fixed arrays: it reads the input's current contents at every run
    (serial and parallel), and a non-contiguous input is copied at each run, not once at bind time."""
    x, cases = _pool_cases(dtype)
    for pool, oshape in cases:
        for parallel, threads in ((None, 1), (True, 2), (False, None)):
            xb = x.copy()
            out = np.empty(oshape, dtype)
            run = pool.bind(xb, out, parallel=parallel, threads=threads)
            for k in range(3):
                xb[...] = np.roll(x, k, axis=3)
                run()
                np.testing.assert_array_equal(out, pool(xb.copy(), np.empty(oshape, dtype)))
        xt = np.ascontiguousarray(np.swapaxes(x, 2, 3))
        view = np.swapaxes(xt, 2, 3)  # x's values, not C-contiguous
        out = np.empty(oshape, dtype)
        run = pool.bind(view, out)
        xt[0, 0, 0, 0] ^= 0x55
        run()
        np.testing.assert_array_equal(out, pool(np.ascontiguousarray(view), np.empty(oshape, dtype)))
    with pytest.raises(ValueError, match="shape"):
        cases[0][0].bind(x[:, :, :4], np.empty((2, 6, 6, 6), dtype))


@pytest.mark.parametrize("mode", ["float", "double", "single"])
@pytest.mark.parametrize("dtype", [I8, U8])
def test_qlinear_pool_ops_bind(mode, dtype):
    """com.microsoft QLinearAveragePool / QLinearGlobalAveragePool and MaxPool on 8-bit types: the bound
    kernel the planner runs gives the op's reference."""
    from edgedl.ir import Node, TensorType
    from edgedl.registry import lookup

    rng = np.random.default_rng(70)
    x = _rand(rng, (1, 7, 10, 9), dtype)
    zp = np.array(5 if dtype == I8 else 130, dtype)
    qin = [x, np.array(0.05, np.float32), zp, np.array(0.03, np.float32), zp]
    cases = [
        ("QLinearAveragePool", MS, qin, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                             count_include_pad=1, ceil_mode=1, _requant=mode)),
        ("QLinearAveragePool", MS, qin, dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0],
                                             _requant=mode)),
        ("QLinearGlobalAveragePool", MS, qin, dict(channels_last=0, _requant=mode)),
        ("MaxPool", "", [x], dict(kernel_shape=[2, 2], strides=[2, 2])),
        ("MaxPool", "", [x], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ]
    for op_type, domain, inputs, attrs in cases:
        node = Node(op_type, "n", [f"i{k}" for k in range(len(inputs))], ["y"], dict(attrs))
        op = lookup(op_type, domain)(node, 17)
        consts = [None] + list(inputs[1:])
        ins = [TensorType(a.shape, a.dtype) for a in inputs]
        t = op.infer(ins, consts)[0]
        kernel = op.build(ins, [t], consts)
        want = op.ref(*inputs)[0]
        for threads in (1, 2):
            out = np.empty(t.shape, t.dtype)
            kernel.bind(list(inputs), [out], np.empty(kernel.scratch_bytes, np.uint8), threads)()
            np.testing.assert_array_equal(out, want, err_msg=f"{op_type} {attrs}")
        out = np.empty(t.shape, t.dtype)
        kernel.fn(list(inputs), [out], np.empty(kernel.scratch_bytes, np.uint8))
        np.testing.assert_array_equal(out, want)


MS = "com.microsoft"
