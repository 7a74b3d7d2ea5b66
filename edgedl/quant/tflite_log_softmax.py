"""TFLite's reference int8 LOG_SOFTMAX (``reference_integer_ops::LogSoftmax``, what the interpreter's
reference kernels run), in integer numpy, vectorized over rows.

What the kernel computes, row by row along the last axis:

* ``diff = x - max(row)`` (int8 codes; the input zero point cancels). Differences below ``diff_min`` (minus
  the input radius: the largest |diff| whose scaled value still fits Q5.26) are left out of the sum.
* each kept ``diff`` is scaled to Q5.26 by the Prepare-time multiplier (``input_scale * 2^26`` split into a
  Q31 multiplier and a left shift, double rounding), its gemmlowp ``exp_on_negative_values`` (Q0.31) is
  rescaled to Q12.19 and summed in plain int32 (so at most 4095 elements at the maximum fit; TFLite says
  "safe from overflowing in 2^12 steps").
* ``log(sum)`` in fixed point (gemmlowp-style ``log_x_for_x_greater_than_or_equal_to_1``: the power of two
  from the count of leading zeros, a rational approximation of the remainder with a Newton-Raphson
  reciprocal), as Q5.26.
* an element whose ``diff_q5 - log_sum`` would fall below the Q5.26 range (tested on the unscaled ``diff``
  through a reverse multiplier, ``1 / input multiplier``, computed at Prepare time) is -128; any other
  becomes ``round((diff_q5 - log_sum) / 2^22) + 127`` clamped to int8, i.e. the log-probability in the fixed
  output quantization (scale 16/256, zero point 127).

Prepare-time arithmetic follows TFLite exactly: the input scale is the tensor's float32 widened to double,
the real multiplier ``beta * scale * 2^26`` is formed in double and capped at ``2^31 - 1``, the reverse
divisor is ``2^(31 - shift) / multiplier`` in double, and the radius is ``floor(31 * 2^26 / 2^shift)``.
TFLite's LOG_SOFTMAX has no beta (the kernel uses 1.0); ``beta`` here only generalizes the same formulas.

The shared gemmlowp pieces (exp, rounding multiplies, power-of-two shifts) come from
:mod:`.tflite_softmax` and :mod:`.reference`; the logarithm and its reciprocal are written here from
gemmlowp's / TFLite's definitions. Checked bit for bit against the interpreter in
``tests/tflite/test_tflite_int8_log_softmax.py``.
"""
from __future__ import annotations

import numpy as np

from .fixed_point import quantize_multiplier
from .reference import mbqm, rounding_divide_by_pot, srdhm
from .tflite_softmax import (
    ACCUMULATION_BITS,
    INT32_MAX,
    INT32_MIN,
    SCALED_DIFF_BITS,
    _mul_pot,
    exp_on_negative_values,
    softmax_params,
)

#: the fixed output quantization TFLite requires of int8 LOG_SOFTMAX
OUTPUT_SCALE, OUTPUT_ZERO_POINT = 16.0 / 256.0, 127
#: integer bits of the output before the final shift (Q4.27 in the kernel's naming)
OUTPUT_INTEGER_BITS = 4
#: the most elements of a row that can sit at the row maximum without the Q12.19 sum overflowing int32
MAX_SAFE_DEPTH = (1 << ACCUMULATION_BITS) - 1  # 4095: each exp(0) is 2^19 in Q12.19


def _wrap32(x) -> np.ndarray:
    """Two's complement wrap of int64 values to int32 (as int64): what a C int32 add does."""
    x = np.asarray(x, np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _sat32(x) -> np.ndarray:
    """Saturate int64 values to the int32 range (TFLite's SaturatingAddNonGemmlowp / SaturatingSub)."""
    return np.clip(np.asarray(x, np.int64), INT32_MIN, INT32_MAX)


def _clz32(x) -> np.ndarray:
    """Count of leading zeros of non-negative int32 values (32 for 0)."""
    x = np.asarray(x, np.int64)
    # frexp's exponent is the bit length for 0 < x < 2^53 (0 for 0): exact for int32 values
    return 32 - np.frexp(x.astype(np.float64))[1].astype(np.int64)


def _mul_pot_param(x, exponent) -> np.ndarray:
    """TFLite's SaturatingRoundingMultiplyByPOTParam for exponents >= 0 (per element): x * 2^exponent,
    saturating to the int32 range."""
    x = np.asarray(x, np.int64)
    e = np.asarray(exponent, np.int64)
    threshold = (np.int64(1) << (31 - e)) - 1
    shifted = x << e
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, shifted))


def _one_over_one_plus_x(a) -> np.ndarray:
    """gemmlowp's one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a) for Q0.31 ``a``, Q0.31 result (Newton-Raphson
    in Q2.29, three steps; the last step reinterprets Q2.29 as Q1.30 and rescales to Q0.31)."""
    a = np.asarray(a, np.int64)
    s = a + INT32_MAX  # RoundingHalfSum(a, One): (a + b + sign) / 2 with C's truncating division
    half_denominator = np.where(s >= 0, (s + 1) // 2, -((-s + 1) // 2))
    x = _wrap32(1515870810 + srdhm(half_denominator, -1010580540))  # 48/17 - 32/17 * d, Q2.29
    one_q2 = 1 << 29
    for _ in range(3):
        one_minus = _wrap32(one_q2 - srdhm(half_denominator, x))
        x = _wrap32(x + _mul_pot(srdhm(x, one_minus), 2))  # Rescale<2> of a Q4 product
    return _mul_pot(x, 1)  # ExactMulByPot<-1> (Q1.30, same raw), then Rescale<0>: a saturating doubling


def log_sum_q5(sums) -> np.ndarray:
    """TFLite's ``log_x_for_x_greater_than_or_equal_to_1<5>`` of Q12.19 ``sums`` (each >= 1.0, < 2^12):
    log as Q5.26 raw values, same shape."""
    input_bits, accum_bits, output_bits = ACCUMULATION_BITS, SCALED_DIFF_BITS + 1, SCALED_DIFF_BITS
    log_2, sqrt_sqrt_half, sqrt_half = 1488522236, 1805811301, 1518500250
    alpha_n, alpha_d, alpha_i, alpha_f = 117049297, 127690142, 1057819769, 638450708
    z_a = np.asarray(sums, np.int64)  # raw Q12.19, read as Q0.31 from here on
    shifted_quarter = rounding_divide_by_pot(np.int64(1 << 29), accum_bits)  # 1/4 in Q6.25

    # candidate a: normalize z_a to [1/2, 1), times sqrt(1/2) doubled; exponent + 1/4
    h1 = _clz32(z_a)  # headroom plus one
    r_a_tmp = _mul_pot_param(z_a, h1 - 1)
    r_a = _mul_pot_param(srdhm(r_a_tmp, sqrt_half), 1)
    z_a_pow_2_adj = _sat32(_mul_pot_param(input_bits - h1, 31 - accum_bits) + shifted_quarter)
    # candidate b: z_a * sqrt(1/2) normalized; exponent - 1/4
    z_b = srdhm(z_a, sqrt_half)
    z_b_headroom = _clz32(z_b) - 1
    r_b = _mul_pot_param(z_a, z_b_headroom)
    z_b_pow_2_adj = _sat32(_mul_pot_param(input_bits - z_b_headroom, 31 - accum_bits) - shifted_quarter)

    r = np.minimum(r_a, r_b)  # Q0.31 mantissa near 1
    z_pow_2_adj = np.maximum(z_a_pow_2_adj, z_b_pow_2_adj)  # Q6.25 exponent (with the quarter)

    s = r + sqrt_sqrt_half
    p = np.where(s >= 0, (s + 1) // 2, -((-s + 1) // 2))  # RoundingHalfSum
    q = _wrap32(r - sqrt_sqrt_half)
    q = _wrap32(q + q)
    common_sq = srdhm(q, q)
    num = _wrap32(srdhm(q, r) + srdhm(srdhm(q, common_sq), alpha_n))
    denom_minus_one = _wrap32(srdhm(p, _wrap32(alpha_i + q + srdhm(alpha_d, common_sq))) + srdhm(alpha_f, q))
    recip_denom = _one_over_one_plus_x(denom_minus_one)
    num_scaled = rounding_divide_by_pot(num, accum_bits)  # Rescale<6>
    total = _wrap32(srdhm(z_pow_2_adj, log_2) + srdhm(num_scaled, recip_denom))  # Q6.25
    return _mul_pot(total, accum_bits - output_bits)  # Rescale<5>


def log_softmax_params(input_scale: float, beta: float = 1.0) -> tuple[int, int, int, int, int]:
    """TFLite's int8 LOG_SOFTMAX Prepare (reference kernel): (input multiplier, input left shift, reverse
    multiplier, reverse shift as MultiplyByQuantizedMultiplier takes it (<= 0), diff_min).

    ``input_scale`` is rounded to float32 first (the tensor's scale), then everything is in double."""
    m0, shift, diff_min = softmax_params(input_scale, beta)  # PreprocessSoftmaxScaling + CalculateInputRadius
    real_reverse = float(1 << (31 - shift)) / float(m0)
    if not 0.0 < real_reverse < 1.0:  # QuantizeMultiplierSmallerThanOneExp's checks
        raise ValueError(f"LOG_SOFTMAX reverse scaling divisor {real_reverse} not in (0, 1) (input scale "
                         f"{input_scale}, beta {beta})")
    rev_m0, rev_shift = quantize_multiplier(real_reverse)
    return m0, shift, rev_m0, rev_shift, diff_min


def log_softmax_int8(x: np.ndarray, input_scale: float, input_zero_point: int, beta: float = 1.0) -> np.ndarray:
    """TFLite's reference int8 LOG_SOFTMAX along the last axis of ``x``, bit for bit.

    ``x``: int8 codes, any rank (the last axis is the softmax axis); ``input_scale``: the input tensor's scale
    (used as float32, like the tensor's); ``input_zero_point``: the input's zero point (it cancels in
    ``x - max``, so it does not change the result; accepted for a uniform signature); ``beta``: TFLite's
    LOG_SOFTMAX has none (1.0), other values scale the input multiplier the way softmax's beta does.

    Returns int8 codes of ``x``'s shape in the output quantization TFLite requires: scale 16/256, zero point
    127 (the representable log-probabilities are [-255/16, 0]).

    Raises ``ValueError`` where TFLite's Prepare would fail (an input scale too small for a multiplier above
    one) and where a row's Q12.19 sum of exponentials overflows int32 (4096 or more elements at the row
    maximum; TFLite's int32 arithmetic is then undefined)."""
    if not -128 <= int(input_zero_point) <= 127:
        raise ValueError(f"int8 zero point {input_zero_point} out of range")
    m0, shift, rev_m0, rev_shift, diff_min = log_softmax_params(input_scale, beta)
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("LOG_SOFTMAX needs at least one axis")
    if x.size == 0:
        return np.zeros(x.shape, np.int8)
    rows = x.reshape(-1, x.shape[-1]).astype(np.int64)  # (R, D)
    diff = rows - rows.max(axis=1, keepdims=True)  # (R, D), <= 0
    keep = diff >= diff_min  # (R, D): inside the input radius
    # |diff| <= radius keeps diff * 2^shift inside int32, so mbqm's int32 wrap never triggers for kept values
    diff_q5 = mbqm(np.where(keep, diff, 0), m0, shift)  # (R, D) Q5.26, <= 0
    exps = exp_on_negative_values(diff_q5, SCALED_DIFF_BITS)  # (R, D) Q0.31
    sums = np.where(keep, _mul_pot(exps, -ACCUMULATION_BITS), 0).sum(axis=1)  # (R,) Q12.19, exact in int64
    if (sums > INT32_MAX).any():
        raise ValueError(f"LOG_SOFTMAX: a row's sum of exponentials overflows int32 in TFLite (depth "
                         f"{x.shape[-1]}, too many elements at the maximum); the result is undefined there")
    log_q5 = log_sum_q5(sums)  # (R,) Q5.26, >= 0
    # smallest diff whose output stays in range: the Q5.26 floor plus the log, mapped back to input codes
    reverse = mbqm(log_q5 + INT32_MIN, rev_m0, rev_shift)  # (R,)
    adjusted_diff_min = np.maximum(diff_min - 1, reverse)[:, None]  # (R, 1)
    shifted = _wrap32(diff_q5 - log_q5[:, None])  # (R, D) Q5.26 log-probabilities
    out = rounding_divide_by_pot(shifted, 31 - SCALED_DIFF_BITS - OUTPUT_INTEGER_BITS) + OUTPUT_ZERO_POINT
    out = np.where(diff > adjusted_diff_min, np.clip(out, -128, 127), -128)  # (R, D)
    return out.astype(np.int8).reshape(x.shape)


__all__ = ["log_softmax_int8", "log_softmax_params", "log_sum_q5", "OUTPUT_SCALE", "OUTPUT_ZERO_POINT",
           "MAX_SAFE_DEPTH"]
