"""Fixed-point requantization as TFLite's integer kernels do it (``../shared/INT8.md``).

An int32 accumulator ``acc`` is scaled by a real multiplier ``M = s_in * s_w / s_out`` without floating
point: ``M = M0 * 2^(shift - 31)`` with ``M0`` an int32 in [2^30, 2^31) (Q31) and ``shift`` an int.

* :func:`quantize_multiplier` splits ``M`` (host side, at prepare time).
* :func:`multiply_by_quantized_multiplier` (the default, "double rounding"): a saturating rounding doubling
  high multiply by ``M0`` (rounds once, ties away from zero), then a rounding right shift (rounds again,
  ties away from zero).
* :func:`multiply_by_quantized_multiplier_single` ("single rounding", TFLite's TFLITE_SINGLE_ROUNDING
  build): one 64-bit product, one rounding shift (ties toward +inf).

The scalar functions are Numba-compiled (``inline="always"``: kernels call them in their inner loops) and
work on Python ints and numpy integers alike, so the numpy reference of :mod:`.reference` and the
kernels share no code path but the definitions here are checked against an independent transcription in
the tests. Arithmetic follows C: ``/`` truncates toward zero, ``>>`` on negative numbers is arithmetic.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..kernels.cpu.config import NJIT

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def _round_half_away(x: float) -> int:
    """``std::round``: to nearest, ties away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_multiplier(m: float) -> tuple[int, int]:
    """(M0, shift) with ``m ~= M0 * 2^(shift - 31)``, M0 in [2^30, 2^31) (TFLite's QuantizeMultiplier).

    ``m`` must be finite and non-negative. 0 gives (0, 0); multipliers below ~2^-32 flush to (0, 0) (a
    shift below -31 would shift every bit out)."""
    m = float(m)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"a requantization multiplier must be finite and >= 0, got {m}")
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)  # m = q * 2^shift, q in [0.5, 1)
    m0 = _round_half_away(q * (1 << 31))
    if m0 == 1 << 31:
        m0 //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(m0), int(shift)


def tflite_mean_multiplier(x_scale, y_scale, count: int) -> tuple[int, int]:
    """(M0, shift) of TFLite's int8 MEAN (reference_ops::QuantizedMeanOrSum): ``x_scale / y_scale`` quantized
    (in double from the float32 scales), then the division by the element count folded in with integers,
    ``M0 * 2^s // count`` and ``shift - s`` for ``s = min(floor(log2(count)), 32, 31 + shift)``. Applied to the sum
    of ``x - x_zp`` over the reduced elements."""
    m0, shift = quantize_multiplier(float(np.float64(np.float32(x_scale)) / np.float64(np.float32(y_scale))))
    count = int(count)
    if count < 1:
        raise ValueError(f"a mean over {count} elements")
    s = min(count.bit_length() - 1, 32, 31 + shift)
    return int((m0 << s) // count), shift - s


def quantize_multipliers(ms) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` per element (per output channel): (int32 M0, int32 shift) arrays."""
    ms = np.asarray(ms, dtype=np.float64).reshape(-1)
    pairs = [quantize_multiplier(m) for m in ms]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))


@numba.njit(inline="always", **NJIT)
def _trunc_div(a, d):
    # C division of int64 a by a positive d: toward zero
    q = a // d
    if a < 0 and q * d != a:
        q += 1
    return q


@numba.njit(inline="always", **NJIT)
def saturating_rounding_doubling_high_mul(a, b):
    """High 32 bits of 2*a*b, rounded to nearest (ties away from zero); a == b == INT32_MIN saturates."""
    a = np.int64(a)
    b = np.int64(b)
    if a == INT32_MIN and b == INT32_MIN:
        return np.int64(INT32_MAX)
    ab = a * b
    nudge = np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30))
    return _trunc_div(ab + nudge, np.int64(1 << 31))


@numba.njit(inline="always", **NJIT)
def rounding_divide_by_pot(x, exponent):
    """x / 2^exponent rounded to nearest, ties away from zero (0 <= exponent <= 31)."""
    x = np.int64(x)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


@numba.njit(inline="always", **NJIT)
def _wrap32(x):
    # two's complement int32 wrap (C's int32 arithmetic on the machine; the kernels keep products in range)
    x = np.int64(x) & np.int64(0xFFFFFFFF)
    return x - np.int64(1 << 32) if x >= np.int64(1 << 31) else x


@numba.njit(inline="always", **NJIT)
def multiply_by_quantized_multiplier(x, m0, shift):
    """Double rounding (TFLite's default): RoundingDivideByPOT(SRDHM(x * 2^left, m0), right) with
    left = max(shift, 0), right = max(-shift, 0). Returns an int64 holding an int32 value."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(_wrap32(np.int64(x) << left), m0), right)


@numba.njit(inline="always", **NJIT)
def multiply_by_quantized_multiplier_single(x, m0, shift):
    """Single rounding (TFLITE_SINGLE_ROUNDING): (x * m0 + 2^(t-1)) >> t with t = 31 - shift
    (-31 <= shift <= 30). Returns an int64 holding an int32 value."""
    t = np.int64(31 - shift)
    return (np.int64(x) * np.int64(m0) + (np.int64(1) << (t - 1))) >> t
