"""int8 GEMM with TFLite requantization: out = clamp(MBQM(W @ (X - x_zp) + bias) + y_zp, lo, hi).

``W`` (M x K) int8 symmetric weights, packed once (:class:`QGemm`); ``X`` (K x N) int8 activations with zero
point ``x_zp``, packed per call as int16 ``X - x_zp`` (in [-255, 255]: no zero-point correction term is
needed); int32 accumulation on the LLVM-IR tile of :mod:`.vec_i8`; then per output row (channel) the
fixed-point requantization of :mod:`edgedl.quant.fixed_point` (double rounding by default, single rounding
as an option), the output zero point and the activation clamp. Bit-exact with
:func:`edgedl.quant.reference.fully_connected` (tested).
"""
from __future__ import annotations

import numba
import numpy as np

from ...quant.fixed_point import multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_single
from .config import NJIT
from .vec_i8 import MR_I8, NR_I8, microkernel_i8

__all__ = ["QGemm", "pack_weights_i8", "pack_activations_i8"]


@numba.njit(**NJIT)
def pack_weights_i8(w, ap):
    """Pack W (M, K) int8 into row panels of MR_I8 rows of int16 k-pairs (zero padded)."""
    m, k = w.shape
    kp = (k + 1) // 2
    for p in range((m + MR_I8 - 1) // MR_I8):
        base = p * kp * 2 * MR_I8
        for q in range(kp):
            for r in range(MR_I8):
                row = p * MR_I8 + r
                for t in range(2):
                    kk = 2 * q + t
                    v = np.int16(0)
                    if row < m and kk < k:
                        v = np.int16(w[row, kk])
                    ap[base + q * 2 * MR_I8 + 2 * r + t] = v


@numba.njit(**NJIT)
def pack_activations_i8(x, zp, bp):
    """Pack X (K, N) int8 minus its zero point into column panels of NR_I8 columns of int16 k-pairs (zero
    padded: a padded row or column contributes nothing)."""
    k, n = x.shape
    kp = (k + 1) // 2
    z = np.int16(zp)
    for j in range((n + NR_I8 - 1) // NR_I8):
        base = j * kp * 2 * NR_I8
        col0 = j * NR_I8
        full = col0 + NR_I8 <= n
        for q in range(kp):
            dst = bp[base + q * 2 * NR_I8:base + (q + 1) * 2 * NR_I8]
            if full and 2 * q + 1 < k:
                # the common case, without checks: two rows of NR_I8 bytes widened and interleaved
                r0 = x[2 * q, col0:col0 + NR_I8]
                r1 = x[2 * q + 1, col0:col0 + NR_I8]
                for c in range(NR_I8):
                    dst[2 * c] = np.int16(r0[c]) - z
                    dst[2 * c + 1] = np.int16(r1[c]) - z
                continue
            for c in range(NR_I8):
                col = col0 + c
                for t in range(2):
                    kk = 2 * q + t
                    v = np.int16(0)
                    if col < n and kk < k:
                        v = np.int16(x[kk, col]) - z
                    dst[2 * c + t] = v


@numba.njit(**NJIT)
def _gemm_i8(ap, bp, acc, mt, nt, kp, ldc):
    # acc: (mt*MR_I8, nt*NR_I8) int32 flat, row stride ldc
    for j in range(nt):
        for i in range(mt):
            microkernel_i8(kp, ap, i * kp * 2 * MR_I8, bp, j * kp * 2 * NR_I8, acc, i * MR_I8 * ldc + j * NR_I8,
                           ldc, False)


@numba.njit(**NJIT)
def _requantize(acc, ldc, bias, m0, shift, y_zp, lo, hi, out, single):
    # acc: flat int32 (>= M rows of ldc); out: (M, N) int8; per-row bias / m0 / shift
    m, n = out.shape
    for i in range(m):
        b = np.int64(bias[i])
        mm = m0[i]
        sh = shift[i]
        a_row = acc[i * ldc:i * ldc + n]
        o_row = out[i]
        for j in range(n):
            a = np.int64(a_row[j]) + b
            if single:
                v = multiply_by_quantized_multiplier_single(a, mm, sh) + y_zp
            else:
                v = multiply_by_quantized_multiplier(a, mm, sh) + y_zp
            v = lo if v < lo else v
            v = hi if v > hi else v
            o_row[j] = v


class QGemm:
    """A prepared int8 GEMM: ``QGemm(w, bias, m0, shift, x_zp, y_zp, act_min=-128, act_max=127,
    single_rounding=False)`` with w (M, K) int8, bias (M,) int32 or None, (m0, shift) per row (or scalars);
    ``__call__(x, out)``: x (K, N) int8, out (M, N) int8."""

    def __init__(self, w, bias, m0, shift, x_zp: int, y_zp: int, act_min: int = -128, act_max: int = 127,
                 single_rounding: bool = False):
        w = np.asarray(w)
        if w.dtype != np.int8 or w.ndim != 2:
            raise ValueError(f"weights must be a 2-D int8 array, got {w.dtype}{w.shape}")
        self.m, self.k = w.shape
        self.kp = (self.k + 1) // 2
        self.mt = -(-self.m // MR_I8)
        self.ap = np.zeros(self.mt * self.kp * 2 * MR_I8, np.int16)
        pack_weights_i8(w, self.ap)
        self.bias = np.zeros(self.m, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(-1)
        self.m0 = np.broadcast_to(np.asarray(m0, np.int64), (self.m,)).copy()
        self.shift = np.broadcast_to(np.asarray(shift, np.int64), (self.m,)).copy()
        self.x_zp, self.y_zp = int(x_zp), int(y_zp)
        self.act_min, self.act_max = int(act_min), int(act_max)
        self.single = bool(single_rounding)

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        k, n = x.shape
        if k != self.k or out.shape != (self.m, n):
            raise ValueError(f"shapes: weights {self.m}x{self.k}, input {x.shape}, output {out.shape}")
        nt = -(-n // NR_I8)
        bp = np.empty(nt * self.kp * 2 * NR_I8, np.int16)
        pack_activations_i8(x, self.x_zp, bp)
        ldc = nt * NR_I8
        acc = np.empty(self.mt * MR_I8 * ldc, np.int32)
        _gemm_i8(self.ap, bp, acc, self.mt, nt, self.kp, ldc)
        _requantize(acc, ldc, self.bias, self.m0, self.shift, self.y_zp, self.act_min, self.act_max, out,
                    self.single)
        return out
