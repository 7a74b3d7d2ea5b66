"""Batched float32 GEMM for Einsum (and any contraction planned as ``(G, M, K) @ (G, K, N)``).

:class:`BatchedGemm` is prepared once per shape: ``run(a, b, out)`` computes ``out[g] = a[g] @ b[g]`` for
``g < G`` on the project's GEMM driver (:class:`edgedl.kernels.cpu.gemm.GemmCall`, one call for the whole
batch, parallel over GEMMs x column blocks):

* A ``(G, M, K)`` (any strides: a transposed or permuted view of an operand is read in place) is packed for
  every GEMM into one buffer of G packed A blocks (layout of :func:`edgedl.kernels.cpu.gemm.pack_a`, panels
  of MR rows: ``ap[g*PA + p*K*MR + k*MR + r] = A[g, p*MR + r, k]``), by :func:`pack_a_batched` (parallel over
  GEMMs x row panels when large);
* B ``(G, K, N)`` is read by the driver through a matrix geometry: in place when its K and N strides are
  plain (``B[g, k, n] = flat[g*gs + k*rs + n]``), else from a C-contiguous copy;
* C ``(G, M, N)`` C-contiguous.

G == 1 goes to :func:`edgedl.kernels.cpu.gemm.gemm` (which has the GEMV / few-row paths).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads
from .gemm import MR, GemmCall, gemm, matrix_geometry, matrix_ktab, packed_a_size


@numba.njit(inline="always", **NJIT)
def _pack_panel(a, ap, g, p, psize):
    # a: (G, M, K) float32, any strides; ap: (G * psize,) packed row panels [K][MR] per GEMM. Each k step
    # writes MR consecutive floats from MR row views (loops from 0 over slices: no wraparound checks)
    m = a.shape[1]
    k = a.shape[2]
    dst = ap[g * psize + p * k * MR:g * psize + (p + 1) * k * MR]
    r0 = p * MR
    rows = min(MR, m - r0)
    if rows == MR and MR == 6:
        s0 = a[g, r0]
        s1 = a[g, r0 + 1]
        s2 = a[g, r0 + 2]
        s3 = a[g, r0 + 3]
        s4 = a[g, r0 + 4]
        s5 = a[g, r0 + 5]
        for kk in range(k):
            o = kk * MR
            dst[o] = s0[kk]
            dst[o + 1] = s1[kk]
            dst[o + 2] = s2[kk]
            dst[o + 3] = s3[kk]
            dst[o + 4] = s4[kk]
            dst[o + 5] = s5[kk]
        return
    if rows == MR and MR == 4:
        s0 = a[g, r0]
        s1 = a[g, r0 + 1]
        s2 = a[g, r0 + 2]
        s3 = a[g, r0 + 3]
        for kk in range(k):
            o = kk * MR
            dst[o] = s0[kk]
            dst[o + 1] = s1[kk]
            dst[o + 2] = s2[kk]
            dst[o + 3] = s3[kk]
        return
    for r in range(rows):
        src = a[g, r0 + r]
        for kk in range(k):
            dst[kk * MR + r] = src[kk]
    for r in range(rows, MR):
        for kk in range(k):
            dst[kk * MR + r] = np.float32(0.0)


@numba.njit(**NJIT)
def _pack_serial(a, ap, psize):
    # a: (G, M, K) float32 -> ap (G * psize,)
    npan = (a.shape[1] + MR - 1) // MR
    for g in range(a.shape[0]):
        for p in range(npan):
            _pack_panel(a, ap, g, p, psize)


@numba.njit(**NJIT_PARALLEL)
def _pack_parallel(a, ap, psize):
    # a: (G, M, K) float32 -> ap (G * psize,), one task per (GEMM, row panel)
    npan = (a.shape[1] + MR - 1) // MR
    for t in prange(a.shape[0] * npan):
        _pack_panel(a, ap, t // npan, t % npan, psize)


def pack_a_batched(a: np.ndarray, ap: np.ndarray, threads: int | None = None) -> None:
    """Pack every A[g] (a: (G, M, K) float32, any strides) into ``ap`` (G * packed_a_size(M, K) floats)."""
    psize = packed_a_size(a.shape[1], a.shape[2])
    if threads is None:
        threads = num_threads()
    if threads > 1 and a.size >= _config.PARALLEL_MIN_WORK // 2 and a.shape[0] * -(-a.shape[1] // MR) > 1:
        _pack_parallel(a, ap, psize)
    else:
        _pack_serial(a, ap, psize)


def _plain_b(b: np.ndarray):
    """(flat source, group stride, row stride) when B (G, K, N) can be read in place (unit column stride,
    non-negative strides, a C-contiguous base array), else None."""
    if b.strides[2] != 4 and b.shape[2] > 1:
        return None
    base = b
    while isinstance(base.base, np.ndarray):
        base = base.base
    if not base.flags.c_contiguous or base.dtype != np.float32:
        return None
    gs, rs = b.strides[0], b.strides[1]
    if gs < 0 or rs < 0 or gs % 4 or rs % 4:
        return None
    off = b.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if off < 0 or off % 4:
        return None
    return base.reshape(-1)[off // 4:], gs // 4 if b.shape[0] > 1 else 0, rs // 4 if b.shape[1] > 1 else b.shape[2]


class BatchedGemm:
    """``out[g] = a[g] @ b[g]`` for float32 a (G, M, K), b (G, K, N), out (G, M, N) C-contiguous, prepared
    for one (G, M, K, N). See the module docstring."""

    def __init__(self, g: int, m: int, k: int, n: int):
        self.g, self.m, self.k, self.n = g, m, k, n
        self.psize = packed_a_size(m, k)
        self._calls: dict = {}

    def _call(self, gs: int, rs: int) -> GemmCall:
        key = (gs, rs)
        call = self._calls.get(key)
        if call is None:
            if len(self._calls) > 8:
                self._calls.clear()
            call = GemmCall(np.zeros(1, np.float32), self.m, self.n, self.k, self.n,
                            geo=matrix_geometry(self.k, self.n, rs), ktab=matrix_ktab(self.k, rs),
                            ngroups=self.g, a_gstride=self.psize, b_gstride=gs, c_gstride=self.m * self.n)
            self._calls[key] = call
        return call

    def run(self, a: np.ndarray, b: np.ndarray, out: np.ndarray, threads: int | None = None) -> np.ndarray:
        g, k, n = self.g, self.k, self.n
        if out.size == 0:
            return out
        if k == 0:
            out[...] = 0.0
            return out
        if g == 1:
            gemm(a[0], b[0], out[0], threads=threads)
            return out
        ap = np.empty(g * self.psize, np.float32)
        pack_a_batched(a, ap, threads)
        plain = _plain_b(b)
        if plain is None:
            b = np.ascontiguousarray(b)
            plain = (b.reshape(-1), k * n, n)
        src, gs, rs = plain
        self._call(gs, rs).with_a(ap).run(out.reshape(-1), src, threads)
        return out


def batched_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
                   threads: int | None = None) -> np.ndarray:
    """One-off :class:`BatchedGemm`: out (G, M, N) = a (G, M, K) @ b (G, K, N), float32."""
    g, m, k = a.shape
    n = b.shape[2]
    if out is None:
        out = np.empty((g, m, n), np.float32)
    return BatchedGemm(g, m, k, n).run(a, b, out, threads)
