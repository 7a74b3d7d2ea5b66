"""8-bit GEMM and convolution (kernels/cpu/gemm_i8.py, conv_i8.py) bit-exact against the numpy
transcription of TFLite's integer FullyConnected / Conv, and against int64 accumulation plus the reference
requantization for every mode, uint8 operands, weight zero points, the rows (MatMul) layout, raw int32
outputs, ragged tiles, odd K, saturation, and the parallel split."""
from __future__ import annotations

import numpy as np
import pytest

from edgedl.kernels.cpu.conv_i8 import QConv2d
from edgedl.kernels.cpu.gemm_i8 import QGemm
from edgedl.quant import reference as ref
from edgedl.quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE, Requant, requantize_reference


def _req(rng, m, k, mode, zp=0, lo=-128, hi=127):
    return Requant.for_scales(0.02, rng.uniform(0.001, 0.02, m).astype(np.float32), 0.05 * np.sqrt(k), m, zp, lo, hi,
                              mode)


@pytest.mark.parametrize("m,k,n", [(4, 2, 16), (7, 33, 19), (64, 576, 49), (10, 1, 3), (33, 250, 100)])
@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE])
def test_qgemm_matches_tflite_fully_connected(m, k, n, mode):
    rng = np.random.default_rng(m * 31 + k)
    w = rng.integers(-127, 128, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-20000, 20000, m).astype(np.int32)
    x_zp, y_zp = int(rng.integers(-20, 20)), int(rng.integers(-20, 20))
    req = _req(rng, m, k, mode, y_zp, -100, 120)
    out = np.empty((m, n), np.int8)
    QGemm(w, bias, req, x_zp)(x, out)
    want = ref.fully_connected(x.T, x_zp, w, bias, req.m0, req.shift, y_zp, -100, 120,
                               single_rounding=mode == MODE_SINGLE).T
    np.testing.assert_array_equal(out.astype(np.int64), want)


@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT])
@pytest.mark.parametrize("xt,wt", [(np.int8, np.int8), (np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)])
@pytest.mark.parametrize("layout", ["cols", "rows"])
def test_qgemm_every_mode_type_and_layout(mode, xt, wt, layout):
    rng = np.random.default_rng(hash((mode, xt().dtype.str, wt().dtype.str, layout)) % 2**32)
    m, k, n = 21, 37, 45
    ii = np.iinfo(xt)
    wi = np.iinfo(wt)
    w = rng.integers(wi.min, wi.max + 1, (m, k)).astype(wt)
    x = rng.integers(ii.min, ii.max + 1, (k, n)).astype(xt)
    w_zp = rng.integers(wi.min, wi.max + 1, m) if wt == np.uint8 else 0
    x_zp = int(rng.integers(ii.min, ii.max + 1))
    yt = xt
    yi = np.iinfo(yt)
    bias = rng.integers(-50000, 50000, m).astype(np.int32)
    req = _req(rng, m, k, mode, int(rng.integers(yi.min, yi.max + 1)), yi.min, yi.max)
    acc = (w.astype(np.int64) - np.asarray(w_zp).reshape(-1, 1)) @ (x.astype(np.int64) - x_zp) + bias[:, None]
    want = requantize_reference(acc, req, channel_axis=0)
    q = QGemm(w, bias, req, x_zp, w_zp)
    if layout == "cols":
        out = np.empty((m, n), yt)
        q(x, out)
    else:
        out = np.empty((n, m), yt)
        q.rows(np.ascontiguousarray(x.T), out)
        out = out.T
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qgemm_raw_int32_output():
    rng = np.random.default_rng(5)
    w = rng.integers(0, 256, (9, 70)).astype(np.uint8)
    a = rng.integers(0, 256, (30, 70)).astype(np.uint8)
    out = np.empty((30, 9), np.int32)
    QGemm(w, None, None, 17, w_zp=128).rows(a, out)
    np.testing.assert_array_equal(out, (a.astype(np.int64) - 17) @ (w.astype(np.int64) - 128).T)


@pytest.mark.parametrize("threads", [1, 2])
def test_qgemm_parallel_split_gives_the_same_bits(threads):
    import numba

    rng = np.random.default_rng(11)
    m, k, n = 64, 300, 1000  # enough work for the parallel path
    w = rng.integers(-127, 128, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (k, n)).astype(np.int8)
    req = _req(rng, m, k, MODE_DOUBLE, 3)
    q = QGemm(w, None, req, -5)
    out = np.empty((m, n), np.int8)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        q(x, out)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    want = ref.fully_connected(x.T, -5, w, None, req.m0, req.shift, 3).T
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qgemm_saturates_at_the_activation_bounds():
    rng = np.random.default_rng(9)
    w = rng.integers(-127, 128, (12, 64)).astype(np.int8)
    x = rng.integers(-128, 128, (64, 40)).astype(np.int8)
    req = Requant.from_multipliers(np.full(12, 0.01), np.full(12, 0.01), -3, -100, 120, MODE_DOUBLE)
    out = np.empty((12, 40), np.int8)
    QGemm(w, None, req, 5)(x, out)
    want = ref.fully_connected(x.T, 5, w, None, req.m0, req.shift, -3, -100, 120).T
    np.testing.assert_array_equal(out.astype(np.int64), want)
    assert (out == -100).any() and (out == 120).any()


def test_qgemm_extreme_values_do_not_overflow():
    # every product at its extreme: 127 * (-128 - 127) summed over K = 4096 stays inside int32
    k = 4096
    w = np.full((8, k), -127, np.int8)
    x = np.full((k, 16), -128, np.int8)
    req = Requant.from_multipliers(np.full(8, 1e-4), np.full(8, 1e-4), 0, -128, 127, MODE_DOUBLE)
    out = np.empty((8, 16), np.int8)
    QGemm(w, None, req, 127)(x, out)
    want = ref.fully_connected(x.T, 127, w, None, req.m0, req.shift, 0).T
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qgemm_rejects_bad_shapes():
    req = Requant.from_multipliers(np.full(4, 0.01), np.full(4, 0.01), 0, -128, 127, MODE_DOUBLE)
    q = QGemm(np.zeros((4, 8), np.int8), None, req, 0)
    with pytest.raises(ValueError):
        q(np.zeros((7, 3), np.int8), np.empty((4, 3), np.int8))
    with pytest.raises(ValueError):
        q(np.zeros((8, 3), np.int8), np.empty((4, 3), np.int32))
    with pytest.raises(ValueError):
        q.rows(np.zeros((3, 8), np.float32), np.empty((3, 4), np.int8))


@pytest.mark.parametrize("shape,m,k,s,p,d,g", [
    ((1, 3, 12, 11), 8, 3, 1, (1, 1, 1, 1), 1, 1),      # first layer, same padding
    ((2, 8, 9, 9), 16, 3, 2, (1, 0, 2, 1), 1, 1),       # strided, asymmetric pads, batch 2
    ((1, 6, 10, 8), 6, 3, 1, (2, 2, 2, 2), 2, 6),       # depthwise, dilated
    ((1, 8, 7, 7), 12, 1, 1, (0, 0, 0, 0), 1, 2),       # grouped 1x1
    ((1, 16, 9, 13), 24, 1, 1, (0, 0, 0, 0), 1, 1),     # 1x1 as a matrix
    ((1, 5, 30, 40), 7, 5, 3, (2, 1, 0, 2), 1, 1),      # wide rows, several segments per panel
])
@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_FLOAT])
def test_qconv_bit_exact(shape, m, k, s, p, d, g, mode):
    rng = np.random.default_rng(sum(shape) + m)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    w = rng.integers(-127, 128, (m, shape[1] // g, k, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, m).astype(np.int32)
    req = Requant.from_multipliers(rng.uniform(0.0005, 0.01, m), rng.uniform(0.0005, 0.01, m).astype(np.float32),
                                   -2, -128, 127, mode)
    conv = QConv2d(w, bias, req, shape, 7, (s, s), p, (d, d), g)
    out = np.empty(conv.out_shape, np.int8)
    conv(x, out)
    if mode == MODE_DOUBLE:
        want = ref.conv2d(x, 7, w, bias, req.m0, req.shift, -2, (s, s), p, (d, d), g)
    else:
        acc = ref.conv2d_accumulate(x, 7, w, 0, bias, (s, s), p, (d, d), g)
        want = requantize_reference(acc, req, channel_axis=1)
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qconv_uint8_with_weight_zero_point_and_raw_output():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 4, 6, 7)).astype(np.uint8)
    w = rng.integers(0, 256, (5, 4, 3, 3)).astype(np.uint8)
    conv = QConv2d(w, None, None, x.shape, 100, (1, 1), (1, 1, 1, 1), (1, 1), 1, w_zp=131)
    out = np.empty(conv.out_shape, np.int32)
    conv(x, out)
    np.testing.assert_array_equal(out, ref.conv2d_accumulate(x, 100, w, 131, None, (1, 1), (1, 1, 1, 1), (1, 1), 1))
