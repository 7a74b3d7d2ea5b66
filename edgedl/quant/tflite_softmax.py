"""TFLite's reference int8 / uint8 softmax (``reference_ops::Softmax``, what the interpreter's reference kernels
run), in integer numpy: a fixed-point exp of the scaled differences to the row maximum, their sum, a fixed-point
reciprocal, and the products rounded to the output (scale 1/256, the type's minimum as zero point).

The fixed-point pieces follow gemmlowp's definitions (``FixedPoint<int32, IntegerBits>`` raw values): rounding
doubling high multiplies, rounding shifts by powers of two, a polynomial exp on [-1/4, 0) with a barrel shifter
for the whole quarters, and a Newton-Raphson reciprocal of 1 + x on [0, 1). Written from those definitions here;
checked against the interpreter (``tests/tflite``).
"""
from __future__ import annotations

import math

import numpy as np

from .fixed_point import quantize_multiplier
from .reference import rounding_divide_by_pot, srdhm

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
#: integer bits of the scaled difference (Q5.26) and of the sum of exponentials (Q12.19)
SCALED_DIFF_BITS, ACCUMULATION_BITS = 5, 12


def _mul_pot(x, exponent: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingMultiplyByPOT: x * 2^exponent, saturating up, rounding down."""
    x = np.asarray(x, np.int64)
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    if exponent == 0:
        return x
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold - 1, INT32_MIN, x << exponent))


def _exp_quarter(a) -> np.ndarray:
    """exp(a) for Q0.31 ``a`` in [-1/4, 0): a Taylor polynomial around -1/8, Q0.31 result."""
    exp_minus_eighth = 1895147668
    one_third = 715827883
    x = a + (1 << 28)  # + 1/8
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = _mul_pot(x4, -2)
    poly = _mul_pot(srdhm(x4_over_4 + x3, one_third) + x2, -1)
    return exp_minus_eighth + srdhm(exp_minus_eighth, x + poly)


def exp_on_negative_values(a, integer_bits: int = SCALED_DIFF_BITS) -> np.ndarray:
    """exp(a) for ``a`` <= 0 with ``integer_bits`` integer bits (Q5.26 for softmax), as Q0.31."""
    a = np.asarray(a, np.int64)
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    mod_minus_quarter = (a & (quarter - 1)) - quarter
    result = _exp_quarter(_mul_pot(mod_minus_quarter, integer_bits))
    remainder = mod_minus_quarter - a
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                                 (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:
            bit = 1 << (frac + exponent)
            result = np.where(remainder & bit, srdhm(result, multiplier), result)
    return np.where(a == 0, INT32_MAX, result)


def _one_over_one_plus_x(a) -> np.ndarray:
    """1 / (1 + a) for Q0.31 ``a`` in [0, 1), as Q0.31 (three Newton-Raphson steps in Q2.29)."""
    a = np.asarray(a, np.int64)
    s = a + INT32_MAX  # RoundingHalfSum(a, One): (a + b + sign) / 2, C division
    half_denominator = np.where(s >= 0, (s + 1) // 2, -((-s + 1) // 2))
    x = 1515870810 + srdhm(half_denominator, -1010580540)  # 48/17 - 32/17 * d (Q2.29)
    one_q2 = 1 << 29
    for _ in range(3):
        one_minus = one_q2 - srdhm(half_denominator, x)
        x = x + _mul_pot(srdhm(x, one_minus), 2)
    return _mul_pot(x, 1)  # Rescale<0>(ExactMulByPot<-1>(x)): the Q2.29 raw read as Q1.30, to Q0.31


def _reciprocal(sums) -> tuple[np.ndarray, np.ndarray]:
    """gemmlowp's GetReciprocal of Q12.19 sums: (Q0.31 scale, bits over unit) per sum (each > 0)."""
    sums = np.asarray(sums, np.int64)
    headroom = np.array([32 - int(v).bit_length() for v in sums.reshape(-1)], np.int64).reshape(sums.shape)
    over = ACCUMULATION_BITS - headroom
    shifted = ((sums << headroom) & 0xFFFFFFFF) - (1 << 31)
    return _one_over_one_plus_x(shifted), over


def softmax_params(input_scale: float, beta: float = 1.0) -> tuple[int, int, int]:
    """(input multiplier, left shift, diff_min) of TFLite's quantized softmax preparation."""
    real = min(float(beta) * float(np.float32(input_scale)) * (1 << (31 - SCALED_DIFF_BITS)), float((1 << 31) - 1))
    m0, shift = quantize_multiplier(real)
    if shift < 0:
        raise ValueError(f"softmax input multiplier {real} < 1")
    radius = math.floor(((1 << SCALED_DIFF_BITS) - 1) * float(1 << (31 - SCALED_DIFF_BITS)) / float(1 << shift))
    return m0, shift, -radius


def softmax_int8(x: np.ndarray, input_scale: float, beta: float = 1.0, out_dtype=np.int8) -> np.ndarray:
    """TFLite's quantized softmax along the last axis of int8 / uint8 ``x`` (output scale 1/256, zero point the
    output type's minimum)."""
    m0, shift, diff_min = softmax_params(input_scale, beta)
    x = np.asarray(x)
    rows = x.reshape(-1, x.shape[-1]).astype(np.int64) if x.size else x.reshape(0, 1).astype(np.int64)
    diff = rows - rows.max(axis=1, keepdims=True)
    keep = diff >= diff_min
    scaled = srdhm(diff * (1 << shift), m0)  # MultiplyByQuantizedMultiplierGreaterThanOne
    exps = np.where(keep, exp_on_negative_values(np.where(keep, scaled, 0)), 0)
    sums = _mul_pot(exps, -ACCUMULATION_BITS).sum(axis=1)
    scale, over = _reciprocal(sums)
    info = np.iinfo(out_dtype)
    exponent = over + 31 - 8 * np.dtype(out_dtype).itemsize
    out = np.empty_like(exps)
    for r in range(rows.shape[0]):
        out[r] = rounding_divide_by_pot(srdhm(scale[r], exps[r]), int(exponent[r])) + info.min
    out = np.where(keep, np.clip(out, info.min, info.max), info.min)
    return out.astype(out_dtype).reshape(x.shape)


#: integer bits of the logistic's scaled input (Q4.27)
LOGISTIC_INPUT_BITS = 4


def logistic_int8(x: np.ndarray, input_scale: float, input_zp: int, out_dtype=np.int8) -> np.ndarray:
    """TFLite's reference int8 logistic (``reference_integer_ops::Logistic``): the input scaled to Q4.27,
    1 / (1 + exp(-|x|)) in fixed point (mirrored for negative inputs), rounded to the output (scale 1/256, zero
    point the type's minimum); inputs beyond the radius saturate."""
    from .reference import mbqm

    m0, shift = quantize_multiplier(float(np.float32(input_scale)) * (1 << (31 - LOGISTIC_INPUT_BITS)))
    radius = math.floor(((1 << LOGISTIC_INPUT_BITS) - 1) * float(1 << (31 - LOGISTIC_INPUT_BITS))
                        / float(1 << max(shift, 0)))
    info = np.iinfo(out_dtype)
    v = np.asarray(x).astype(np.int64) - int(input_zp)
    q4 = mbqm(v, m0, shift)
    positive = q4 > 0
    absolute = np.where(positive, q4, -q4)
    on_positive = _one_over_one_plus_x(exp_on_negative_values(-absolute, LOGISTIC_INPUT_BITS))
    value = np.where(q4 == 0, 1 << 30, np.where(positive, on_positive, INT32_MAX - on_positive))
    out = np.clip(rounding_divide_by_pot(value, 31 - 8) + info.min, info.min, info.max)
    out = np.where(v <= -radius, info.min, np.where(v >= radius, info.max, out))
    return out.astype(out_dtype)
