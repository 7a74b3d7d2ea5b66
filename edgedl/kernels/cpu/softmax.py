"""fp32 Softmax / LogSoftmax kernels over an (outer, n, inner) view of a contiguous tensor.

The softmax runs along the middle dim ``n``. Numerically stable: the maximum along the axis is subtracted
before ``exp``; row sums (axis last) accumulate in float64, the column sums of the strided case in
float32 (one add per row of the axis, so the error stays ~n * 6e-8 relative).

* ``inner == 1`` (the axis is last, or opset < 13 coerced to 2-D): every row is contiguous; the parallel
  split is over rows.
* ``inner > 1``: work items are (outer index, block of up to :data:`BLOCK` inner positions), so every
  loop runs contiguously over the inner positions of a block. Each parallel chunk keeps the running max
  and sum of its block in its own slice of the scratch workspace (``scratch_bytes``).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import FASTMATH, num_threads
from .elementwise import exp_f32

_NJIT = dict(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")
_NJIT_PAR = dict(_NJIT, parallel=True)

#: inner positions per work item when the axis is not last
BLOCK = 256


@numba.njit(**_NJIT)
def softmax_rows(x, out, n, r0, r1, log):
    """Rows [r0, r1) of x viewed as (rows, n), contiguous; out likewise. log: LogSoftmax."""
    for r in range(r0, r1):
        xr = x[r * n:r * n + n]  # slices: loops from 0 vectorize
        orow = out[r * n:r * n + n]
        m = xr[0]
        for k in range(1, n):
            v = xr[k]
            m = v if v > m else m
        s = np.float64(0.0)  # float64 accumulator
        if log:
            for k in range(n):
                s += np.float64(exp_f32(xr[k] - m))
            shift = m + np.float32(np.log(s))
            for k in range(n):
                orow[k] = xr[k] - shift
        else:
            for k in range(n):
                e = exp_f32(xr[k] - m)
                orow[k] = e
                s += np.float64(e)
            inv = np.float32(1.0 / s)
            for k in range(n):
                orow[k] *= inv


@numba.njit(**_NJIT_PAR)
def softmax_rows_parallel(x, out, n, rows, nchunks, log):
    for c in prange(nchunks):
        softmax_rows(x, out, n, rows * c // nchunks, rows * (c + 1) // nchunks, log)


@numba.njit(**_NJIT)
def softmax_strided(x, out, n, inner, t0, t1, ws, log):
    """Work items [t0, t1) of x viewed as (outer, n, inner): item t is outer index t // nb and inner
    block t % nb (nb = ceil(inner / BLOCK)). ws: float32 workspace of 2 * BLOCK (max, then sum)."""
    nb = (inner + BLOCK - 1) // BLOCK
    m = ws[:BLOCK]
    s = ws[BLOCK:2 * BLOCK]
    for t in range(t0, t1):
        o = t // nb
        j0 = (t - o * nb) * BLOCK
        w = min(BLOCK, inner - j0)
        base = o * n * inner + j0
        xr = x[base:base + w]
        for jj in range(w):
            m[jj] = xr[jj]
        for k in range(1, n):
            xr = x[base + k * inner:base + k * inner + w]
            for jj in range(w):
                v = xr[jj]
                m[jj] = v if v > m[jj] else m[jj]
        for jj in range(w):
            s[jj] = 0.0
        for k in range(n):
            xr = x[base + k * inner:base + k * inner + w]
            orow = out[base + k * inner:base + k * inner + w]
            if log:
                for jj in range(w):
                    s[jj] += exp_f32(xr[jj] - m[jj])
            else:
                for jj in range(w):
                    e = exp_f32(xr[jj] - m[jj])
                    orow[jj] = e
                    s[jj] += e
        if log:
            for jj in range(w):
                s[jj] = m[jj] + np.log(s[jj])
            for k in range(n):
                xr = x[base + k * inner:base + k * inner + w]
                orow = out[base + k * inner:base + k * inner + w]
                for jj in range(w):
                    orow[jj] = xr[jj] - s[jj]
        else:
            for jj in range(w):
                s[jj] = np.float32(1.0) / s[jj]
            for k in range(n):
                orow = out[base + k * inner:base + k * inner + w]
                for jj in range(w):
                    orow[jj] *= s[jj]


@numba.njit(**_NJIT_PAR)
def softmax_strided_parallel(x, out, n, inner, items, nchunks, ws, log):
    """ws: float32[nchunks * 2 * BLOCK]; chunk c owns ws[c*2*BLOCK : (c+1)*2*BLOCK]."""
    for c in prange(nchunks):
        softmax_strided(x, out, n, inner, items * c // nchunks, items * (c + 1) // nchunks,
                        ws[c * 2 * BLOCK:(c + 1) * 2 * BLOCK], log)


class SoftmaxKernel:
    """Prepared (Log)Softmax over (outer, n, inner); ``__call__(x, out, scratch)`` on flat float32 arrays.

    ``scratch_bytes`` is the workspace the strided case needs (float32 max and sum per parallel chunk)."""

    def __init__(self, outer: int, n: int, inner: int, log: bool):
        self.outer, self.n, self.inner, self.log = outer, n, inner, bool(log)
        self.size = outer * n * inner
        self.max_chunks = max(1, numba.config.NUMBA_NUM_THREADS)
        if inner == 1:
            self.items = outer
            self.scratch_bytes = 0
        else:
            self.items = outer * ((inner + BLOCK - 1) // BLOCK)
            self.scratch_bytes = self.max_chunks * 2 * BLOCK * 4

    def chunks(self, threads: int | None = None) -> int:
        work = 4 * self.size  # exp dominates: several flops per element
        if work < _config.PARALLEL_MIN_WORK or self.items < 2:
            return 1
        return max(1, min(num_threads() if threads is None else threads, self.max_chunks, self.items))

    def call_args(self, x, out, scratch, threads: int | None = None) -> tuple:
        """(kernel, *arguments) of one call (size > 0)."""
        c = self.chunks(threads)
        if self.inner == 1:
            if c == 1:
                return (softmax_rows, x, out, self.n, 0, self.outer, self.log)
            return (softmax_rows_parallel, x, out, self.n, self.outer, c, self.log)
        ws = scratch[:self.scratch_bytes].view(np.float32)
        if c == 1:
            return (softmax_strided, x, out, self.n, self.inner, 0, self.items, ws[:2 * BLOCK], self.log)
        return (softmax_strided_parallel, x, out, self.n, self.inner, self.items, c, ws, self.log)

    def __call__(self, x, out, scratch):
        if self.size == 0:
            return
        fn, *args = self.call_args(x, out, scratch)
        fn(*args)
