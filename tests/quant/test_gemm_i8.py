"""int8 GEMM (kernels/cpu/gemm_i8.py) bit-exact against the numpy transcription of TFLite's integer
FullyConnected, on random shapes and scales, with ragged tiles, odd K, saturation and both roundings."""
from __future__ import annotations

import numpy as np
import pytest

from edgedl.kernels.cpu.gemm_i8 import QGemm
from edgedl.quant import fixed_point as fp
from edgedl.quant import reference as ref


@pytest.mark.parametrize("m,k,n", [(4, 2, 16), (7, 33, 19), (64, 576, 49), (10, 1, 3), (33, 250, 100)])
@pytest.mark.parametrize("single", [False, True])
def test_qgemm_bit_exact(m, k, n, single):
    rng = np.random.default_rng(m * 31 + k)
    w = rng.integers(-127, 128, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-20000, 20000, m).astype(np.int32)
    x_zp, y_zp = int(rng.integers(-20, 20)), int(rng.integers(-20, 20))
    s_in, s_out = 0.02, 0.05 * np.sqrt(k)
    s_w = rng.uniform(0.001, 0.02, m)
    m0, shift = fp.quantize_multipliers(s_in * s_w / s_out)
    q = QGemm(w, bias, m0, shift, x_zp, y_zp, -100, 120, single_rounding=single)
    out = np.empty((m, n), np.int8)
    q(x, out)
    want = ref.fully_connected(x.T, x_zp, w, bias, m0.astype(np.int64), shift.astype(np.int64), y_zp, -100, 120,
                               single_rounding=single).T
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qgemm_saturates_at_the_activation_bounds():
    rng = np.random.default_rng(9)
    w = rng.integers(-127, 128, (12, 64)).astype(np.int8)
    x = rng.integers(-128, 128, (64, 40)).astype(np.int8)
    m0, shift = fp.quantize_multipliers(np.full(12, 0.01))  # large outputs: both bounds are hit
    out = np.empty((12, 40), np.int8)
    QGemm(w, None, m0, shift, 5, -3, -100, 120)(x, out)
    want = ref.fully_connected(x.T, 5, w, None, m0.astype(np.int64), shift.astype(np.int64), -3, -100, 120).T
    np.testing.assert_array_equal(out.astype(np.int64), want)
    assert (out == -100).any() and (out == 120).any()


def test_qgemm_extreme_values_do_not_overflow():
    # every product at its extreme: 127 * (-128 - 127) summed over K = 4096 stays inside int32
    k = 4096
    w = np.full((8, k), -127, np.int8)
    x = np.full((k, 16), -128, np.int8)
    m0, shift = fp.quantize_multipliers(np.full(8, 1e-4))
    q = QGemm(w, None, m0, shift, 127, 0)
    out = np.empty((8, 16), np.int8)
    q(x, out)
    want = ref.fully_connected(x.T, 127, w, None, m0.astype(np.int64), shift.astype(np.int64), 0).T
    np.testing.assert_array_equal(out.astype(np.int64), want)


@pytest.mark.parametrize("shape,m,k,s,p,d,g", [
    ((1, 3, 12, 11), 8, 3, 1, (1, 1, 1, 1), 1, 1),      # first layer, same padding
    ((2, 8, 9, 9), 16, 3, 2, (1, 0, 2, 1), 1, 1),       # strided, asymmetric pads, batch 2
    ((1, 6, 10, 8), 6, 3, 1, (2, 2, 2, 2), 2, 6),       # depthwise, dilated
    ((1, 8, 7, 7), 12, 1, 1, (0, 0, 0, 0), 1, 2),       # grouped 1x1
])
def test_qconv_bit_exact(shape, m, k, s, p, d, g):
    from edgedl.kernels.cpu.conv_i8 import QConv2d

    rng = np.random.default_rng(sum(shape) + m)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    w = rng.integers(-127, 128, (m, shape[1] // g, k, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, m).astype(np.int32)
    m0, shift = fp.quantize_multipliers(rng.uniform(0.0005, 0.01, m))
    conv = QConv2d(w, bias, m0, shift, shape, 7, -2, (s, s), p, (d, d), g)
    out = np.empty(conv.out_shape, np.int8)
    conv(x, out)
    want = ref.conv2d(x, 7, w, bias, m0.astype(np.int64), shift.astype(np.int64), -2, (s, s), p, (d, d), g)
    np.testing.assert_array_equal(out.astype(np.int64), want)
