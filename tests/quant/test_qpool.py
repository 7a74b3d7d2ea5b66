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
