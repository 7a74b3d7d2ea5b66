"""TFLite's int8 element-wise operators as lookup tables, bit for bit with its reference kernels.

With per-tensor quantization, an int8 element-wise operator of one input is a function of the input's 256
codes, and one of two inputs a function of 65536 code pairs. So each TFLite int8 operator below becomes a table
computed here, once, at import, with TFLite's own arithmetic (the Prepare-time multipliers included, float32
where TFLite computes in float32), and runs on edgedl's lookup kernels (:mod:`edgedl.kernels.cpu.lut`, the pair
gather of :mod:`edgedl.kernels.cpu.qelementwise`).

Tables are indexed by the input *byte* (``table[x.view(np.uint8)]``; pairs by ``a byte << 8 | b byte``), as
:mod:`edgedl.kernels.cpu.lut` documents. What each operator computes:

* Float-defined tables (TFLite fills a table through ``LUTPopulate``): TANH, LOGISTIC, ELU, GELU, EXP, LOG.
  ``dequantized = float32(x_scale) * float32(code - x_zp)``, the function in float32, then
  ``round_half_away(f * float32(1 / y_scale)) + y_zp`` saturated (:func:`lut_float`).
* Integer requantizations: RELU / RELU6 / RELU_N1_TO_1 (``ReluX``: one multiplier, then the activation's
  range), LEAKY_RELU (an identity and an alpha multiplier), ABS, QUANTIZE of an int8 tensor (Requantize), NEG
  (the code negated, wrapping), HARD_SWISH (TFLite's int16 fixed point), SQRT (float, truncated), RSQRT
  (fixed-point inverse square root by Newton-Raphson).
* Pairs: SUB and SQUARED_DIFFERENCE (inputs rescaled to twice the larger scale, left shift 20 / 7), DIV
  (a fixed-point reciprocal of the divisor),
  MAXIMUM / MINIMUM (on the raw codes, as TFLite compares them), PRELU (alpha is the second input).

All multipliers use TFLite's default double rounding (``MultiplyByQuantizedMultiplier``).
"""
from __future__ import annotations

import math

import numpy as np

from ..kernels.cpu.lut import build_table, byte_values, requant_table
from .fixed_point import quantize_multiplier
from .reference import mbqm, round_half_away, rounding_divide_by_pot, srdhm
from .requant import MODE_DOUBLE
from .tflite_softmax import _one_over_one_plus_x

__all__ = ["UNARY", "PAIRS", "unary_table", "pair_table", "lut_float", "div_is_defined"]

_F32 = np.float32
_I8 = np.iinfo(np.int8)


def _codes() -> np.ndarray:
    """(256,) int64: the int8 value of each byte 0..255."""
    return byte_values(np.int8)


def _saturate(v) -> np.ndarray:
    return np.clip(np.asarray(v, np.int64), _I8.min, _I8.max).astype(np.int8)


def lut_float(fn, xs, xz, ys, yz) -> np.ndarray:
    """TFLite's ``LUTPopulate`` for int8: ``fn`` (float32 array -> float32 array) on each dequantized code (an
    infinite result saturates, as C's undefined conversion does not promise)."""
    return build_table(fn, xs, xz, ys, yz, np.int8, np.int8, "away", "tflite")


def _erf32(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(float(v)) for v in x], np.float64).astype(_F32)


def _gelu(approximate: bool):
    """reference_ops::GeluTransform / GeluTransformApproximate in float32."""
    def exact(x):
        return _F32(0.5) * x * (_F32(1) + _erf32((x * _F32(math.sqrt(0.5))).astype(_F32)))

    def approx(x):
        inner = _F32(math.sqrt(2.0 / math.pi)) * (x + _F32(0.044715) * x * x * x)
        return _F32(0.5) * x * (_F32(1) + np.tanh(inner.astype(_F32)))

    return approx if approximate else exact


def _log_table(xs, xz, ys, yz):
    floor = _F32(_F32(_I8.min - int(yz)) * _F32(ys))  # log of a value <= 0: the output's lowest value

    def fn(x):
        with np.errstate(all="ignore"):
            return np.where(x <= 0, floor, np.log(np.where(x > 0, x, _F32(1)))).astype(_F32)

    return lut_float(fn, xs, xz, ys, yz)


def _relu_x(xs, xz, ys, yz, act_min, act_max):
    """ReluX: ``clamp(MBQM(code - x_zp) + y_zp)`` to the activation's quantized range (QuantizedReluX)."""
    m0, shift = quantize_multiplier(float(_F32(_F32(xs) / _F32(ys))))
    lo = max(_I8.min, int(yz) + int(round_half_away(_F32(act_min) / _F32(ys))))
    hi = _I8.max if act_max is None else min(_I8.max, int(yz) + int(round_half_away(_F32(act_max) / _F32(ys))))
    return _saturate(np.clip(mbqm(_codes() - int(xz), m0, shift) + int(yz), lo, hi))


def _leaky_relu(xs, xz, ys, yz, alpha):
    m_alpha = _F32(_F32(_F32(xs) * _F32(alpha)) / _F32(ys))
    m_id = quantize_multiplier(float(_F32(_F32(xs) / _F32(ys))))
    ma = quantize_multiplier(abs(float(m_alpha)))
    v = _codes() - int(xz)
    neg = mbqm(v, *ma) * (-1 if m_alpha < 0 else 1)
    return _saturate(int(yz) + np.where(v >= 0, mbqm(v, *m_id), neg))


def _abs(xs, xz, ys, yz):
    v = np.abs(_codes() - int(xz))
    if _F32(xs) == _F32(ys):
        return _saturate(v + int(yz))
    m0, shift = quantize_multiplier(float(_F32(_F32(xs) / _F32(ys))))
    return _saturate(mbqm(v, m0, shift) + int(yz))


def _requantize(xs, xz, ys, yz):
    return requant_table(xs, xz, ys, yz, np.int8, np.int8, MODE_DOUBLE)  # TFLite's Requantize


def _neg(xs, xz, ys, yz):
    return (-_codes()).astype(np.int64).astype(np.uint8).view(np.int8)  # int8 negation wraps: -(-128) = -128


def _sqrt(xs, xz, ys, yz):
    """SqrtEvalQuantized: float32 sqrt, truncated (not rounded) at the output scale. TFLite fails at run time
    on a negative input; the table gives sqrt(0) there."""
    x = np.maximum(_F32(xs) * (_codes() - int(xz)).astype(_F32), _F32(0))
    q = np.trunc(np.sqrt(x) / _F32(ys))
    return _saturate(np.clip(q, -1e9, 1e9).astype(np.int64) + int(yz))


def _inv_sqrt_multiplier(value: int) -> tuple[int, int]:
    """GetInvSqrtQuantizedMultiplierExp(value, reverse_shift=-1): 1/sqrt(value) as (multiplier, left shift)."""
    if value <= 1:
        return (1 << 31) - 1, 0
    shift = 11
    while value >= 1 << 29:
        value //= 4
        shift += 1
    pairs = ((32 - value.bit_length()) - 1) // 2 - 1  # (CountLeadingZeros - 1) / 2 - 1
    shift -= pairs
    value <<= 2 * pairs
    # Newton-Raphson on gemmlowp fixed point numbers with 3 integer bits (raw int32, one = 1 << 28): a product
    # of F3 and F3 is an F6 (raw SRDHM), rescaled to F3 by a saturating left shift of 3
    def sat(v):
        return max(-(1 << 31), min((1 << 31) - 1, v))

    def wrap(v):
        return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)

    half_input = int(rounding_divide_by_pot(value >> 1, 1))
    three_halves = (1 << 28) + (1 << 27)
    x = 1 << 28
    for _ in range(5):
        x3 = sat(int(srdhm(int(srdhm(x, x)), x)) * (1 << 6))  # F9 -> F3
        x = sat(wrap(int(srdhm(three_halves, x)) - int(srdhm(half_input, x3))) * (1 << 3))  # F6 -> F3
    x = int(srdhm(x, 1518500250))  # F3 * F0 -> F3
    if shift < 0:
        x <<= -shift
        shift = 0
    return x, -shift


def _rsqrt(xs, xz, ys, yz):
    """RsqrtEvalQuantizedInt8. TFLite fails at run time on an input below the zero point; the table gives the
    largest output there, as for the zero point itself."""
    m0, shift = quantize_multiplier(1.0 / float(_F32(np.sqrt(_F32(xs)) * _F32(ys))))  # sqrtf, float product
    out = np.empty(256, np.int64)
    for i, v in enumerate(_codes() - int(xz)):
        if v <= 0:
            out[i] = _I8.max
            continue
        inv, inv_shift = _inv_sqrt_multiplier(int(v))
        data = int(mbqm(1, inv, inv_shift + 20))
        out[i] = int(mbqm(data, m0, shift - 20)) + int(yz)
    return _saturate(out)


def _i16(v):
    return ((np.asarray(v, np.int64) + (1 << 15)) % (1 << 16)) - (1 << 15)


def _srdhm16(a, b):
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    num = ab + nudge
    q = np.where(num >= 0, num // (1 << 15), -((-num) // (1 << 15)))
    return np.where((a == b) & (a == -(1 << 15)), (1 << 15) - 1, _i16(q))


def _sdhm16(a, b):  # rounds toward zero (SQDMULH)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    q = np.where(ab >= 0, ab // (1 << 15), -((-ab) // (1 << 15)))
    return np.where((a == b) & (a == -(1 << 15)), (1 << 15) - 1, _i16(q))


def _sat_shift16(v, amount):
    return np.clip(np.asarray(v, np.int64) * (1 << amount), -(1 << 15), (1 << 15) - 1)


def _int16_multiplier(m: float) -> tuple[int, int]:
    """QuantizeMultiplier then DownScaleInt32ToInt16Multiplier."""
    m0, exponent = quantize_multiplier(m)
    m16 = (1 << 15) - 1 if m0 >= (1 << 31) - 1 - (1 << 15) else (m0 + (1 << 15)) >> 16
    return m16, exponent


def _hard_swish(xs, xz, ys, yz):
    """reference_ops::HardSwish on int8 (int16 fixed point; HardSwishPrepare's float32 scales)."""
    hires = _F32(_F32(1.0 / 128.0) * _F32(xs))
    out_m, out_e = _int16_multiplier(float(_F32(hires / _F32(ys))))
    relu_m, relu_e = _int16_multiplier(float(_F32(hires / _F32(3.0 / 32768.0))))
    if out_e > 0:
        raise ValueError("HARD_SWISH needs an output scale at least the input scale / 128 (TFLite's check)")
    v = _i16(_codes() - int(xz))
    hi_in = _i16(v * (1 << 7))
    pre_out = _srdhm16(hi_in, out_m)
    r = hi_in
    if relu_e > 0:
        r = _sat_shift16(r, relu_e - 1)
    r = _srdhm16(r, relu_m)
    if relu_e > 0:
        r = _sat_shift16(r, 1)
    if relu_e < 0:
        r = rounding_divide_by_pot(r, -relu_e)
    r = _i16((r + (1 << 15)) >> 1)
    pre = _sdhm16(r, pre_out)
    out = _i16(rounding_divide_by_pot(pre, -out_e) + int(yz))
    return _saturate(out)


def _elu(x):
    with np.errstate(all="ignore"):
        return np.where(x < 0, np.expm1(x), x).astype(_F32)


def _logistic(x):
    with np.errstate(all="ignore"):
        return (_F32(1) / (_F32(1) + np.exp(-x))).astype(_F32)


#: TFLite operator -> table builder (x_scale, x_zp, y_scale, y_zp, **options) -> (256,) int8
UNARY = {
    "TANH": lambda xs, xz, ys, yz: lut_float(np.tanh, xs, xz, ys, yz),
    "LOGISTIC": lambda xs, xz, ys, yz: lut_float(_logistic, xs, xz, ys, yz),
    "ELU": lambda xs, xz, ys, yz: lut_float(_elu, xs, xz, ys, yz),
    "GELU": lambda xs, xz, ys, yz, approximate=False: lut_float(_gelu(bool(approximate)), xs, xz, ys, yz),
    "EXP": lambda xs, xz, ys, yz: lut_float(np.exp, xs, xz, ys, yz),
    "LOG": _log_table,
    "RELU": lambda xs, xz, ys, yz: _relu_x(xs, xz, ys, yz, 0.0, None),
    "RELU6": lambda xs, xz, ys, yz: _relu_x(xs, xz, ys, yz, 0.0, 6.0),
    "RELU_N1_TO_1": lambda xs, xz, ys, yz: _relu_x(xs, xz, ys, yz, -1.0, 1.0),
    "LEAKY_RELU": _leaky_relu,
    "HARD_SWISH": _hard_swish,
    "ABS": _abs,
    "NEG": _neg,
    "SQRT": _sqrt,
    "RSQRT": _rsqrt,
    "QUANTIZE": _requantize,
}


def unary_table(op: str, xs, xz, ys, yz, **options) -> np.ndarray:
    """(256,) int8 table of TFLite's int8 ``op`` (a key of :data:`UNARY`) for these quantization parameters."""
    if op not in UNARY:
        raise ValueError(f"no int8 table for TFLite's {op} (have {sorted(UNARY)})")
    return UNARY[op](float(_F32(xs)), int(xz), float(_F32(ys)), int(yz), **options)


# --- two inputs ---------------------------------------------------------------------------------------
def _pair_grid():
    """(65536,) a and b values of every (a byte << 8 | b byte)."""
    c = _codes()
    return np.repeat(c, 256), np.tile(c, 256)


def _rescaled(a, b, az, bz, as_, bs, left_shift):
    """Both inputs at twice the larger scale after a left shift (add.cc / sub.cc / squared_difference.cc)."""
    twice_max = 2.0 * float(max(_F32(as_), _F32(bs)))
    ma = quantize_multiplier(float(_F32(as_)) / twice_max)
    mb = quantize_multiplier(float(_F32(bs)) / twice_max)
    return mbqm((a - az) * (1 << left_shift), *ma), mbqm((b - bz) * (1 << left_shift), *mb), twice_max


def _sub(a, b, as_, az, bs, bz, ys, yz):
    sa, sb, twice_max = _rescaled(a, b, az, bz, as_, bs, 20)
    mo = quantize_multiplier(twice_max / ((1 << 20) * float(_F32(ys))))
    return mbqm(sa - sb, *mo) + yz


def _squared_difference(a, b, as_, az, bs, bz, ys, yz):
    sa, sb, twice_max = _rescaled(a, b, az, bz, as_, bs, 7)
    mo = quantize_multiplier(twice_max * twice_max / float(_F32(_F32(1 << 14) * _F32(ys))))
    d = sa - sb
    return mbqm(d * d, *mo) + yz


def _prelu(a, b, as_, az, bs, bz, ys, yz):
    m1 = quantize_multiplier(float(_F32(_F32(as_) / _F32(ys))))
    m2 = quantize_multiplier(float(_F32(_F32(_F32(as_) * _F32(bs)) / _F32(ys))))
    v = a - az
    return np.where(v >= 0, mbqm(v, *m1), mbqm(v * (b - bz), *m2)) + yz


def _leading_sign_bits(v: np.ndarray) -> np.ndarray:
    """CountLeadingSignBits of int32 values (31 for 0 and -1)."""
    v = np.asarray(v, np.int64)
    mag = np.where(v >= 0, v, -v - 1)
    bits = np.zeros(v.shape, np.int64) if mag.ndim else np.int64(0)
    m = mag.copy()
    for _ in range(32):  # bit_length, vectorized
        nz = m > 0
        bits = bits + nz
        m = m >> 1
    return 31 - bits


def _div_parts(a, b, as_, az, bs, bz, ys):
    m0, shift = quantize_multiplier(float(_F32(_F32(as_) / _F32(_F32(bs) * _F32(ys)))))
    x, d = a - az, b - bz
    x = np.where(d < 0, -x, x)
    d = np.abs(d)
    safe = np.where(d == 0, 1, d)
    clz = 32 - np.array([int(v).bit_length() for v in safe.reshape(-1)], np.int64).reshape(safe.shape)
    recip_shift = 31 - clz
    shifted = ((safe << clz) & 0xFFFFFFFF) - (1 << 31)
    inv = _one_over_one_plus_x(shifted)
    headroom = _leading_sign_bits(x)
    quotient = srdhm(x << headroom, inv)
    return x, d, quotient, m0, shift - recip_shift - headroom


def _div(a, b, as_, az, bs, bz, ys, yz):
    """DivElementwise: the divisor's fixed-point reciprocal (GetReciprocal with 31 integer digits), the dividend
    moved up by its headroom, then one requantization by ``a_scale / (b_scale * y_scale)`` (float32). A zero
    divisor (TFLite fails at run time) saturates to the dividend's sign (0 / 0 gives the zero point). Where the
    final right shift passes 31 bits (quotients well under one output step) TFLite shifts by undefined amounts and
    gives saturated values on x86; here the shift is carried out (the quotient rounds to the zero point):
    :func:`div_is_defined` tells those pairs."""
    x, d, quotient, m0, total = _div_parts(a, b, as_, az, bs, bz, ys)
    v = rounding_divide_by_pot(srdhm(quotient, m0), np.minimum(-total, 62)) + yz
    return np.where(d == 0, np.where(x > 0, 127, np.where(x < 0, -128, yz)), v)


def div_is_defined(a_scale, a_zp, b_scale, b_zp, y_scale) -> np.ndarray:
    """(65536,) bool: the code pairs (``a byte << 8 | b byte``) on which TFLite's int8 DIV is defined behaviour (a
    non-zero divisor and a final shift of at most 31 bits)."""
    a, b = _pair_grid()
    x, d, _, _, total = _div_parts(a, b, float(_F32(a_scale)), int(a_zp), float(_F32(b_scale)), int(b_zp),
                                   float(_F32(y_scale)))
    return (d != 0) & (-total <= 31)


#: TFLite operator -> pair builder (a values, b values, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp) -> values
PAIRS = {
    "SUB": _sub,
    "DIV": _div,
    "SQUARED_DIFFERENCE": _squared_difference,
    "PRELU": _prelu,
    "MAXIMUM": lambda a, b, *params: np.maximum(a, b),
    "MINIMUM": lambda a, b, *params: np.minimum(a, b),
}


def pair_table(op: str, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, lo: int = -128, hi: int = 127) -> np.ndarray:
    """(65536,) int8 table of TFLite's int8 binary ``op`` (a key of :data:`PAIRS`), indexed by
    ``a byte << 8 | b byte``, the output clamped to [lo, hi] (a fused activation's range)."""
    if op not in PAIRS:
        raise ValueError(f"no int8 pair table for TFLite's {op} (have {sorted(PAIRS)})")
    a, b = _pair_grid()
    v = PAIRS[op](a, b, float(_F32(a_scale)), int(a_zp), float(_F32(b_scale)), int(b_zp), float(_F32(y_scale)),
                  int(y_zp))
    return _saturate(np.clip(v, lo, hi))
