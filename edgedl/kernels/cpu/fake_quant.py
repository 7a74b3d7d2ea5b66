"""Fake quantization for quantization-aware training: quantize then dequantize in one pass, keeping the
straight-through mask for the backward.

Per tensor: y = (clip(round_half_even(x / s) + z, lo, hi) - z) * s, the same float32 arithmetic as
:mod:`edgedl.kernels.cpu.quantize` (QuantizeLinear followed by DequantizeLinear), so a model trained with fake
quantization computes what its exported QDQ form computes. ``mask`` is 1 where the rounded value was inside
[lo, hi] before clipping (the gradient passes) and 0 where it was clipped (PyTorch's fake-quantize rule).
"""
from __future__ import annotations

import numba
import numpy as np

from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL

__all__ = ["fake_quantize", "fake_quantize_grad"]

#: NOTE: no fast-math: x / s must be the IEEE float32 division QuantizeLinear does (see kernels.cpu.quantize)
_EXACT = NJIT_EXACT
_EXACT_PAR = NJIT_EXACT_PARALLEL
#: elements per parallel chunk (chunks are independent: no shared writes)
_CHUNK = 16384


@numba.njit(**_EXACT)
def _fq_span(x, y, mask, start, stop, s, z, flo, fhi):
    # x, y: (n,) float32; mask: (n,) uint8; one contiguous span [start, stop)
    for i in range(start, stop):
        v = np.rint(x[i] / s) + z
        inside = v >= flo and v <= fhi
        mask[i] = 1 if inside else 0
        v = flo if v < flo else v
        v = fhi if v > fhi else v
        y[i] = (v - z) * s


@numba.njit(**_EXACT)
def _fq_serial(x, y, mask, s, z, lo, hi):
    _fq_span(x, y, mask, 0, x.size, s, z, np.float32(lo), np.float32(hi))


@numba.njit(**_EXACT_PAR)
def _fq_parallel(x, y, mask, s, z, lo, hi):
    n = x.size
    chunks = (n + _CHUNK - 1) // _CHUNK
    for c in numba.prange(chunks):
        _fq_span(x, y, mask, c * _CHUNK, min(n, (c + 1) * _CHUNK), s, z, np.float32(lo), np.float32(hi))


@numba.njit(**_EXACT_PAR)
def _fq_grad(dy, mask, dx):
    # dy, dx: (n,) float32; mask: (n,) uint8 -> dx = dy where the forward did not clip, else 0
    n = dy.size
    chunks = (n + _CHUNK - 1) // _CHUNK
    for c in numba.prange(chunks):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            dx[i] = dy[i] if mask[i] else np.float32(0.0)


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, lo: int, hi: int, y: np.ndarray,
                  mask: np.ndarray) -> None:
    """Per-tensor fake quantization of contiguous float32 ``x`` into ``y`` (float32) and ``mask`` (uint8),
    all of one size; integer range [lo, hi]."""
    s = np.float32(scale)
    z = np.float32(zero_point)
    xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    if xf.size > 2 * _CHUNK:
        _fq_parallel(xf, yf, mf, s, z, lo, hi)
    else:
        _fq_serial(xf, yf, mf, s, z, lo, hi)


def fake_quantize_grad(dy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The straight-through gradient: ``dy`` where the forward's ``mask`` is 1, else 0."""
    dy = np.ascontiguousarray(dy, np.float32)
    dx = np.empty_like(dy)
    _fq_grad(dy.reshape(-1), np.ascontiguousarray(mask).reshape(-1), dx.reshape(-1))
    return dx
