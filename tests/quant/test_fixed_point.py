"""Fixed-point requantization (edgedl.quant.fixed_point, Numba) against the independent numpy transcription
of TFLite's arithmetic (edgedl.quant.reference), bit for bit, including ties, saturation and every shift."""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from edgedl.quant import fixed_point as fp
from edgedl.quant import reference as ref


@numba.njit(cache=False)
def _apply(xs, m0s, shifts, single):
    out = np.empty(xs.size, np.int64)
    for i in range(xs.size):
        if single:
            out[i] = fp.multiply_by_quantized_multiplier_single(xs[i], m0s[i], shifts[i])
        else:
            out[i] = fp.multiply_by_quantized_multiplier(xs[i], m0s[i], shifts[i])
    return out


@numba.njit(cache=False)
def _parts(a, b, x, e):
    n = a.size
    s = np.empty(n, np.int64)
    r = np.empty(n, np.int64)
    for i in range(n):
        s[i] = fp.saturating_rounding_doubling_high_mul(a[i], b[i])
        r[i] = fp.rounding_divide_by_pot(x[i], e[i])
    return s, r


def test_quantize_multiplier_splits_and_rounds():
    for m in [1.0, 0.5, 0.75, 2.0, 3.3, 1e-3, 0.0078125, 123.456, 2.0**-30, 0.999999999999]:
        m0, shift = fp.quantize_multiplier(m)
        assert 2**30 <= m0 < 2**31
        assert math.isclose(m0 * 2.0 ** (shift - 31), m, rel_tol=2**-30)
    # q * 2^31 rounding up to 2^31 halves M0 and bumps the shift
    m0, shift = fp.quantize_multiplier(1.0 - 2.0**-40)
    assert (m0, shift) == (2**30, 1)
    # ties of q * 2^31 round away from zero (std::round): q = 0.5 + 2^-32 -> 2^30 + 0.5 -> 2^30 + 1
    assert fp.quantize_multiplier(0.5 + 2.0**-32) == (2**30 + 1, 0)
    assert fp.quantize_multiplier(0.0) == (0, 0)
    assert fp.quantize_multiplier(2.0**-40) == (0, 0)  # shift below -31: flushed to zero
    with pytest.raises(ValueError):
        fp.quantize_multiplier(-1.0)
    m0s, shifts = fp.quantize_multipliers([0.25, 0.5, 3.0])
    assert m0s.dtype == np.int32 and shifts.tolist() == [-1, 0, 2]


def test_srdhm_and_rounding_shift_edges():
    i32min, i32max = -(2**31), 2**31 - 1
    a = np.array([i32min, i32min, i32max, 1, -1, 3, -3, 2**30, -(2**30), 12345, -12345, 0], np.int64)
    b = np.array([i32min, i32max, i32max, 2**30, 2**30, 2**30, 2**30, 2**30, 2**30, 2**31 - 1, 2**31 - 1, 7],
                 np.int64)
    # rounding shifts: exact halves (ties) both signs, all exponents 0..31
    x = np.array([5, -5, 6, -6, 7, -7, 2**31 - 1, -(2**31), 3, -3, 1, -1], np.int64)
    e = np.array([1, 1, 2, 2, 1, 1, 31, 31, 0, 0, 1, 1], np.int64)
    s, r = _parts(a, b, x, e)
    np.testing.assert_array_equal(s, ref.srdhm(a, b))
    np.testing.assert_array_equal(r, ref.rounding_divide_by_pot(x, e))
    assert s[0] == i32max  # the one saturating case
    assert r.tolist()[:6] == [3, -3, 2, -2, 4, -4]  # ties away from zero


@pytest.mark.parametrize("single", [False, True])
def test_multiply_by_quantized_multiplier_random(single):
    rng = np.random.default_rng(0)
    n = 20000
    ms = np.exp(rng.uniform(np.log(1e-6), np.log(4.0), n))
    pairs = [fp.quantize_multiplier(m) for m in ms]
    m0 = np.array([p[0] for p in pairs], np.int64)
    shift = np.array([p[1] for p in pairs], np.int64)
    x = rng.integers(-(2**31), 2**31, n, dtype=np.int64)
    # the contract of both (TFLite DCHECKs it): x * 2^max(shift, 0) and the result stay inside int32
    x = np.where(shift > 0, x >> np.maximum(shift, 0), x)
    # and exact ties of the rounding: x a multiple of 2^(right shift + 1) times an odd half
    ties = (np.int64(1) << np.clip(-shift[:2000], 0, 30)) * rng.integers(-1000, 1000, 2000) + (
        np.int64(1) << np.clip(-shift[:2000] - 1, 0, 30))
    x[:2000] = np.where(shift[:2000] < -1, ties, x[:2000])
    got = _apply(x, m0, shift, single)
    want = (ref.mbqm_single if single else ref.mbqm)(x, m0, shift)
    np.testing.assert_array_equal(got, want)
    assert np.all((want >= -(2**31)) & (want <= 2**31 - 1))


def test_double_and_single_rounding_differ_at_negative_ties():
    # M = 0.25 (M0 = 2^30, shift = -1): the final rounding shift of double rounding takes ties away from
    # zero (-2.5 -> -3, -1.5 -> -2); single rounding takes them toward +inf (-2.5 -> -2, -1.5 -> -1)
    m0, shift = fp.quantize_multiplier(0.25)
    assert (m0, shift) == (2**30, -1)
    x = np.array([10, -10, 6, -6, 9, -9], np.int64)
    d = _apply(x, np.full(6, m0, np.int64), np.full(6, shift, np.int64), False)
    s = _apply(x, np.full(6, m0, np.int64), np.full(6, shift, np.int64), True)
    # 9 * 0.25 = 2.25: double rounding gives 3 (4.5 -> 5 in the high multiply, then 2.5 -> 3): the known
    # double-rounding error that TFLite's single-rounding build avoids
    assert d.tolist() == [3, -3, 2, -2, 3, -2]
    assert s.tolist() == [3, -2, 2, -1, 2, -2]


def test_fully_connected_reference_matches_float_closely():
    rng = np.random.default_rng(1)
    b, k, n = 4, 37, 11
    x = rng.integers(-128, 128, (b, k))
    w = rng.integers(-127, 128, (n, k))
    bias = rng.integers(-5000, 5000, n)
    s_in, s_out, s_w = 0.02, 0.05, rng.uniform(0.001, 0.01, n)
    m0, shift = fp.quantize_multipliers(s_in * s_w / s_out)
    y = ref.fully_connected(x, 3, w, bias, m0.astype(np.int64), shift.astype(np.int64), -7)
    real = ((x - 3) @ w.T + bias) * (s_in * s_w) / s_out - 7
    assert np.all(np.abs(y - np.clip(np.round(real), -128, 127)) <= 1)


def test_quantize_roundings():
    assert ref.quantize_tflite([0.5, -0.5, 1.5, -1.5, 1000.0], 1.0, 0).tolist() == [1, -1, 2, -2, 127]
    assert ref.quantize_onnx([0.5, -0.5, 1.5, -1.5, -1000.0], 1.0, 0).tolist() == [0, 0, 2, -2, -128]
    assert ref.quantize_onnx([0.5, 2.5], 1.0, 128, 0, 255).tolist() == [128, 130]


@pytest.mark.parametrize("shape,m,k,s,p,d,g", [((1, 4, 9, 8), 6, 3, 1, 1, 1, 1), ((2, 6, 7, 7), 6, 3, 2, 1, 1, 6),
                                              ((1, 4, 10, 9), 8, 3, 1, 2, 2, 2)])
def test_conv_reference_matches_float_closely(shape, m, k, s, p, d, g):
    """The integer reference convolution (padding taps contribute nothing) agrees with the float
    computation it quantizes to within one step (the requantization rounds once or twice)."""
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, shape)
    w = rng.integers(-127, 128, (m, shape[1] // g, k, k))
    bias = rng.integers(-3000, 3000, m)
    s_in, s_out, s_w = 0.03, 0.2, rng.uniform(0.002, 0.02, m)
    m0, shift = fp.quantize_multipliers(s_in * s_w / s_out)
    y = ref.conv2d(x, 5, w, bias, m0, shift, -3, (s, s), (p,) * 4, (d, d), g)
    xf = np.pad(x - 5, ((0, 0), (0, 0), (p, p), (p, p))).astype(np.float64)
    from edgedl.kernels.cpu.conv import conv2d_ref

    real = conv2d_ref(xf.astype(np.float32), w.astype(np.float32), bias.astype(np.float32), (s, s), (0, 0, 0, 0),
                      (d, d), g).astype(np.float64)
    real = real * (s_in * s_w / s_out).reshape(1, m, 1, 1) - 3
    assert y.shape == real.shape
    assert np.all(np.abs(y - np.clip(np.round(real), -128, 127)) <= 1)


def test_add_reference_matches_float_closely():
    rng = np.random.default_rng(4)
    a, b = rng.integers(-128, 128, (3, 50)), rng.integers(-128, 128, (1, 50))
    s1, s2, so = 0.05, 0.11, 0.13
    params = ref.add_params(s1, s2, so)
    y = ref.add(a, 4, b, -9, params, 2)
    real = (a - 4) * s1 / so + (b + 9) * s2 / so + 2
    assert np.all(np.abs(y - np.clip(np.round(real), -128, 127)) <= 1)
