"""numpy transcription of TFLite's reference integer arithmetic (``../shared/INT8.md``): what the int8
kernels must match bit for bit. Vectorized over numpy int64 arrays and written independently of
:mod:`.fixed_point` (which the kernels use), so the tests compare two implementations of the spec.

C semantics throughout: division truncates toward zero, ``>>`` is arithmetic, int8 stores saturate only
where the spec clamps (clamping happens before every narrowing here).
"""
from __future__ import annotations

import numpy as np

_I32_MIN = np.int64(-(2**31))
_I32_MAX = np.int64(2**31 - 1)


def srdhm(a, b) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul on int32 values (as int64 arrays)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(2**30), np.int64(1 - 2**30))
    num = ab + nudge
    # C's truncating division by 2^31
    q = np.where(num >= 0, num // np.int64(2**31), -((-num) // np.int64(2**31)))
    return np.where((a == _I32_MIN) & (b == _I32_MIN), _I32_MAX, q)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """RoundingDivideByPOT: x / 2^exponent, to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def _to_int32(x) -> np.ndarray:
    """Two's complement wrap to int32 (what a C int32 multiply does on the machine)."""
    return np.asarray(x, dtype=np.int64).astype(np.uint64).astype(np.uint32).astype(np.int32).astype(np.int64)


def mbqm(x, m0, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier, double rounding (TFLite's default)."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(srdhm(_to_int32(np.asarray(x, dtype=np.int64) * (np.int64(1) << left)), m0), right)


def mbqm_single(x, m0, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING."""
    t = np.int64(31) - np.asarray(shift, dtype=np.int64)
    return (np.asarray(x, dtype=np.int64) * np.asarray(m0, dtype=np.int64) + (np.int64(1) << (t - 1))) >> t


def quantize_tflite(x, scale, zero_point, qmin=-128, qmax=127) -> np.ndarray:
    """float -> int8 as TFLite: round half away from zero, add the zero point, saturate."""
    v = np.asarray(x, dtype=np.float64) / scale
    r = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(r + zero_point, qmin, qmax).astype(np.int64)


def quantize_onnx(x, scale, zero_point, qmin=-128, qmax=127) -> np.ndarray:
    """float -> int8/uint8 as ONNX QuantizeLinear: round half to even, add the zero point, saturate."""
    r = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale))
    return np.clip(r + zero_point, qmin, qmax).astype(np.int64)


def fully_connected(x, x_zp, w, bias, m0, shift, y_zp, act_min=-128, act_max=127, single_rounding=False):
    """TFLite's reference int8 FullyConnected: x (B, K) int8 with zero point x_zp; w (N, K) int8, symmetric;
    bias (N,) int32 or None; (m0, shift) per output channel (arrays of N) or per tensor (scalars).
    Returns int8 values as int64: clamp(MBQM(sum_k w * (x - x_zp) + bias) + y_zp, act_min, act_max)."""
    acc = (np.asarray(x, np.int64) - x_zp) @ np.asarray(w, np.int64).T
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)
    scaled = (mbqm_single if single_rounding else mbqm)(acc, m0, shift)
    return np.clip(scaled + y_zp, act_min, act_max)
