"""TFLite's reference 8-bit softmax (:func:`edgedl.quant.tflite_softmax.softmax_int8`) as a Numba kernel.

A row's outputs depend on each element only through its difference to the row maximum (0..255), so the
fixed-point exponential of every difference (and its share of the Q12.19 sum) is a 256-entry table computed once
with the numpy transcription; the kernel sums table entries per row, takes gemmlowp's Newton-Raphson reciprocal
of the sum (one scalar per row) and rounds each product to the output. Same integers as the numpy reference,
without its per-call array overhead (a 2-class classifier head went from 0.6 ms to microseconds).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ...quant.fixed_point import rounding_divide_by_pot, saturating_rounding_doubling_high_mul
from ...quant.reference import srdhm
from ...quant.tflite_softmax import ACCUMULATION_BITS, _mul_pot, exp_on_negative_values, softmax_params
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL

__all__ = ["softmax_tables", "TFLiteSoftmax"]

_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def softmax_tables(input_scale: float, beta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(256,) int64 each: the Q0.31 exponential of the difference -d to the row maximum (0 where TFLite leaves
    the element out, below diff_min), and its Q12.19 term of the row sum."""
    m0, shift, diff_min = softmax_params(input_scale, beta)
    diff = -np.arange(256, dtype=np.int64)
    keep = diff >= diff_min
    scaled = srdhm(diff * (1 << shift), m0)
    exps = np.where(keep, exp_on_negative_values(np.where(keep, scaled, 0)), 0).astype(np.int64)
    return exps, np.asarray(_mul_pot(exps, -ACCUMULATION_BITS), np.int64)


@numba.njit(inline="always", **NJIT_EXACT)
def _mul_pot_1(x, exponent):
    # gemmlowp's SaturatingRoundingMultiplyByPOT for exponent >= 1 (saturating left shift)
    threshold = (np.int64(1) << (31 - exponent)) - 1
    if x > threshold:
        return np.int64(_I32_MAX)
    if x < -threshold - 1:
        return np.int64(_I32_MIN)
    return x << exponent


@numba.njit(inline="always", **NJIT_EXACT)
def _reciprocal(a):
    # 1 / (1 + a) for Q0.31 a in [0, 1), Q0.31 (gemmlowp's one_over_one_plus_x_for_x_in_0_1)
    s = a + _I32_MAX
    half = (s + 1) // 2 if s >= 0 else -((-s + 1) // 2)
    x = np.int64(1515870810) + saturating_rounding_doubling_high_mul(half, -1010580540)
    for _ in range(3):
        one_minus = np.int64(1 << 29) - saturating_rounding_doubling_high_mul(half, x)
        x = x + _mul_pot_1(saturating_rounding_doubling_high_mul(x, one_minus), 2)
    return _mul_pot_1(x, 1)


@numba.njit(inline="always", **NJIT_EXACT)
def _row(x, out, r, exps, terms, lo, hi, bits):
    # x: (R, D) int64-convertible codes; out: (R, D); one row r
    d = x.shape[1]
    mx = np.int64(x[r, 0])
    for j in range(1, d):
        if np.int64(x[r, j]) > mx:
            mx = np.int64(x[r, j])
    total = np.int64(0)
    for j in range(d):
        total += terms[mx - np.int64(x[r, j])]
    length = 0
    v = total
    while v > 0:
        length += 1
        v >>= 1
    headroom = 32 - length
    over = ACCUMULATION_BITS - headroom
    shifted = ((total << headroom) & np.int64(0xFFFFFFFF)) - np.int64(1 << 31)
    scale = _reciprocal(shifted)
    exponent = over + 31 - bits
    for j in range(d):
        e = exps[mx - np.int64(x[r, j])]
        if e == 0:
            out[r, j] = lo
            continue
        v = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(scale, e), exponent) + lo
        out[r, j] = lo if v < lo else (hi if v > hi else v)


@numba.njit(**NJIT_EXACT)
def _softmax(x, out, exps, terms, lo, hi, bits):
    for r in range(x.shape[0]):
        _row(x, out, r, exps, terms, lo, hi, bits)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _softmax_parallel(x, out, exps, terms, lo, hi, bits):
    for r in prange(x.shape[0]):
        _row(x, out, r, exps, terms, lo, hi, bits)


class TFLiteSoftmax:
    """Prepared TFLite 8-bit softmax along the last axis: ``k(x, out)`` for int8 / uint8 ``x`` and ``out`` of
    one shape (output scale 1/256, zero point the output type's minimum)."""

    def __init__(self, input_scale: float, beta: float = 1.0):
        self.exps, self.terms = softmax_tables(input_scale, beta)

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if x.shape != out.shape or x.ndim < 1 or x.dtype not in (np.int8, np.uint8) or \
                out.dtype not in (np.int8, np.uint8):
            raise ValueError(f"softmax of {x.dtype}{x.shape} into {out.dtype}{out.shape}")
        if x.size == 0:
            return out
        rows = x.reshape(-1, x.shape[-1])
        res = out.reshape(-1, out.shape[-1])
        info = np.iinfo(out.dtype)
        fn = _softmax_parallel if rows.shape[0] >= 64 else _softmax
        fn(rows, res, self.exps, self.terms, int(info.min), int(info.max), 8 * out.dtype.itemsize)
        if not np.shares_memory(res, out):
            out[...] = res.reshape(out.shape)
        return out
