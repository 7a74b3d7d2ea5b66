"""fp32 reductions (sum, mean, max, min, sum of squares, L1 and L2 norms, log-sum, log-sum-exp, product)
over any set of axes of a contiguous tensor.

:class:`ReducePlan` (built once per shape) drops size-1 dims and merges neighbouring dims that are both
reduced or both kept. Most reductions then fit an (outer, n, inner) view, reducing the middle dim:

* ``inner == 1`` (trailing axes: global pooling, row sums): each output is one contiguous row of ``n``.
  Rows are split across threads; when there are fewer rows than threads (reduce-all), each row is cut
  into pieces whose partial results go to the workspace and are combined afterwards.
* ``inner > 1`` (leading or middle axes): work items are (outer index, block of :data:`BLOCK` inner
  positions); the loops run contiguously over a block, accumulating in a per-chunk workspace.

Other patterns (reduced dims interleaved with kept ones, e.g. axes (0, 2) of a 3-D tensor) first copy
the input transposed, kept dims first, into the workspace (numpy, no allocation), then reduce rows.

Sums (and products) accumulate in float64, so long reductions keep float32 accuracy; max and min work in
float32. Each kind keeps a float64 *partial* per output (or per piece of a row), combined with
:func:`_combine` and turned into the output by :func:`_finish`:

* sum, mean, sum of squares, L1 (sum of |x|): the sum, times ``scale`` (1, or 1/n for the mean);
* L2: the sum of squares, then its square root; log-sum: the sum, then its log; product: the product;
* log-sum-exp: the partial is itself a log-sum-exp, ``m + log(sum(exp(x - m)))`` with m the largest
  finite element (0 when there is none, so that all -inf gives -inf and any +inf gives +inf); partials
  combine with ``logaddexp``. The strided case finds m per position first (a pass over the block), then
  sums ``exp`` in float64.
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

R_SUM = 0    # sum * scale (scale = 1 for ReduceSum, 1/n for ReduceMean)
R_MAX = 1
R_MIN = 2
R_SUMSQ = 3  # sum of squares * scale
R_L1 = 4     # sum of |x|
R_L2 = 5     # sqrt(sum of squares)
R_LOGSUM = 6  # log(sum)
R_LSE = 7    # log(sum(exp))
R_PROD = 8   # product

#: inner positions per work item in the strided kernel
BLOCK = 256
_ALIGN = 64
_NO_WS = np.zeros(0, np.float64)


@numba.njit(**_NJIT)
def _row(x, start, stop, kind):
    """The float64 partial of x[start:stop] (see the module docstring): sum, sum of squares, sum of |x|,
    product, log-sum-exp, max or min (-inf / inf for an empty max / min)."""
    xs = x[start:stop]  # a slice: loops from 0 vectorize (no negative-index wraparound check)
    if kind == R_MAX:
        m = np.float32(-np.inf)
        for k in range(xs.size):
            v = xs[k]
            m = v if v > m else m
        return np.float64(m)
    if kind == R_MIN:
        m = np.float32(np.inf)
        for k in range(xs.size):
            v = xs[k]
            m = v if v < m else m
        return np.float64(m)
    if kind == R_PROD:
        p = np.float64(1.0)
        for k in range(xs.size):
            p *= np.float64(xs[k])
        return p
    if kind == R_LSE:
        m = np.float32(-np.inf)
        big = np.float32(np.inf)
        for k in range(xs.size):
            v = xs[k]
            m = v if (v > m and v < big) else m
        if m == np.float32(-np.inf):
            m = np.float32(0.0)
        s = np.float64(0.0)
        for k in range(xs.size):
            s += np.float64(exp_f32(xs[k] - m))
        return np.float64(m) + np.log(s)
    s = np.float64(0.0)
    if kind == R_SUMSQ or kind == R_L2:
        for k in range(xs.size):
            v = np.float64(xs[k])
            s += v * v
    elif kind == R_L1:
        for k in range(xs.size):
            s += np.float64(abs(xs[k]))
    else:
        for k in range(xs.size):
            s += np.float64(xs[k])
    return s


@numba.njit(**_NJIT)
def _combine(acc, v, kind):
    """Two partials of the same output combined."""
    if kind == R_MAX:
        return v if v > acc else acc
    if kind == R_MIN:
        return v if v < acc else acc
    if kind == R_PROD:
        return acc * v
    if kind == R_LSE:
        hi = acc if acc > v else v
        lo = v if acc > v else acc
        if lo == -np.inf or hi == np.inf:
            return hi
        return hi + np.log1p(np.exp(lo - hi))
    return acc + v


@numba.njit(**_NJIT)
def _finish(v, kind, scale):
    """The float32 output from a float64 partial."""
    if kind == R_L2:
        return np.float32(np.sqrt(v))
    if kind == R_LOGSUM:
        return np.float32(np.log(v))
    if kind == R_SUM or kind == R_SUMSQ or kind == R_L1:
        return np.float32(v * scale)
    return np.float32(v)


@numba.njit(**_NJIT)
def reduce_rows(x, out, n, r0, r1, kind, scale):
    """x viewed as (rows, n), contiguous: out[r] = reduce(x[r, :]) for r in [r0, r1)."""
    for r in range(r0, r1):
        out[r] = _finish(_row(x, r * n, r * n + n, kind), kind, scale)


@numba.njit(**_NJIT_PAR)
def reduce_rows_parallel(x, out, n, rows, nchunks, kind, scale):
    for c in prange(nchunks):
        reduce_rows(x, out, n, rows * c // nchunks, rows * (c + 1) // nchunks, kind, scale)


@numba.njit(**_NJIT_PAR)
def reduce_rows_split(x, out, n, rows, pieces, partial, kind, scale):
    """Few long rows: item t = (row t // pieces, piece t % pieces) reduces one piece of a row into
    partial[t] (float64) in parallel; the pieces of each row are then combined serially."""
    for t in prange(rows * pieces):
        r = t // pieces
        p = t - r * pieces
        partial[t] = _row(x, r * n + n * p // pieces, r * n + n * (p + 1) // pieces, kind)
    for r in range(rows):
        acc = partial[r * pieces]
        for p in range(1, pieces):
            acc = _combine(acc, partial[r * pieces + p], kind)
        out[r] = _finish(acc, kind, scale)


@numba.njit(**_NJIT)
def reduce_strided(x, out, n, inner, t0, t1, ws, kind, scale):
    """x viewed as (outer, n, inner), out as (outer, inner): work items [t0, t1), item t = (outer index
    t // nb, inner block t % nb), nb = ceil(inner / BLOCK). ws: float64[BLOCK] accumulators."""
    nb = (inner + BLOCK - 1) // BLOCK
    for t in range(t0, t1):
        o = t // nb
        j0 = (t - o * nb) * BLOCK
        w = min(BLOCK, inner - j0)
        base = o * n * inner + j0
        ob = out[o * inner + j0:o * inner + j0 + w]
        if kind == R_MAX:
            for jj in range(w):
                ob[jj] = np.float32(-np.inf)
            for k in range(n):
                xr = x[base + k * inner:base + k * inner + w]
                for jj in range(w):
                    v = xr[jj]
                    ob[jj] = v if v > ob[jj] else ob[jj]
        elif kind == R_MIN:
            for jj in range(w):
                ob[jj] = np.float32(np.inf)
            for k in range(n):
                xr = x[base + k * inner:base + k * inner + w]
                for jj in range(w):
                    v = xr[jj]
                    ob[jj] = v if v < ob[jj] else ob[jj]
        elif kind == R_LSE:
            # ob holds the largest finite value per position (0 where there is none), acc the exp sums
            acc = ws[:w]
            big = np.float32(np.inf)
            for jj in range(w):
                ob[jj] = np.float32(-np.inf)
                acc[jj] = 0.0
            for k in range(n):
                xr = x[base + k * inner:base + k * inner + w]
                for jj in range(w):
                    v = xr[jj]
                    ob[jj] = v if (v > ob[jj] and v < big) else ob[jj]
            for jj in range(w):
                if ob[jj] == np.float32(-np.inf):
                    ob[jj] = np.float32(0.0)
            for k in range(n):
                xr = x[base + k * inner:base + k * inner + w]
                for jj in range(w):
                    acc[jj] += np.float64(exp_f32(xr[jj] - ob[jj]))
            for jj in range(w):
                ob[jj] = np.float32(np.float64(ob[jj]) + np.log(acc[jj]))
        else:
            acc = ws[:w]
            init = 1.0 if kind == R_PROD else 0.0
            for jj in range(w):
                acc[jj] = init
            if kind == R_SUMSQ or kind == R_L2:
                for k in range(n):
                    xr = x[base + k * inner:base + k * inner + w]
                    for jj in range(w):
                        v = np.float64(xr[jj])
                        acc[jj] += v * v
            elif kind == R_L1:
                for k in range(n):
                    xr = x[base + k * inner:base + k * inner + w]
                    for jj in range(w):
                        acc[jj] += np.float64(abs(xr[jj]))
            elif kind == R_PROD:
                for k in range(n):
                    xr = x[base + k * inner:base + k * inner + w]
                    for jj in range(w):
                        acc[jj] *= np.float64(xr[jj])
            else:
                for k in range(n):
                    xr = x[base + k * inner:base + k * inner + w]
                    for jj in range(w):
                        acc[jj] += xr[jj]
            for jj in range(w):
                ob[jj] = _finish(acc[jj], kind, scale)


@numba.njit(**_NJIT_PAR)
def reduce_strided_parallel(x, out, n, inner, items, nchunks, ws, kind, scale):
    """ws: float64[nchunks * BLOCK]; chunk c owns ws[c*BLOCK : (c+1)*BLOCK]."""
    for c in prange(nchunks):
        reduce_strided(x, out, n, inner, items * c // nchunks, items * (c + 1) // nchunks,
                       ws[c * BLOCK:(c + 1) * BLOCK], kind, scale)


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class ReducePlan:
    """A prepared fp32 reduction of ``shape`` over ``axes`` (normalized, non-empty input).

    ``__call__(x, out, scratch)`` takes flat float32 arrays; ``scratch_bytes`` is the workspace it needs.
    """

    def __init__(self, shape, axes, kind: int, mean: bool = False):
        shape = tuple(int(d) for d in shape)
        axes = set(axes)
        self.kind = kind
        count = int(np.prod([shape[a] for a in axes], dtype=np.int64)) if axes else 1
        self.scale = (1.0 / count if count else float("nan")) if mean else 1.0
        self.size = int(np.prod(shape, dtype=np.int64))
        groups: list[list] = []  # [size, reduced]
        for k, d in enumerate(shape):
            if d == 1:
                continue
            red = k in axes
            if groups and groups[-1][1] == red:
                groups[-1][0] *= d
            else:
                groups.append([d, red])
        flags = [g[1] for g in groups]
        self.transpose = None  # (group dims, permutation, transposed shape) when a copy is needed
        if flags.count(True) <= 1:  # [kept][reduced][kept]
            outer = inner = n = 1
            seen_r = False
            for d, red in groups:
                if red:
                    n, seen_r = d, True
                elif seen_r:
                    inner *= d
                else:
                    outer *= d
        else:
            kept = [i for i, g in enumerate(groups) if not g[1]]
            red = [i for i, g in enumerate(groups) if g[1]]
            gd = tuple(g[0] for g in groups)
            perm = tuple(kept + red)
            outer = int(np.prod([gd[i] for i in kept], dtype=np.int64))
            n = int(np.prod([gd[i] for i in red], dtype=np.int64))
            inner = 1
            self.transpose = (gd, perm, tuple(gd[i] for i in perm))
        self.outer, self.n, self.inner = outer, n, inner
        self.max_chunks = max(1, numba.config.NUMBA_NUM_THREADS)
        self.copy_bytes = _aligned(self.size * 4) if self.transpose else 0
        if inner > 1:
            self.items = outer * ((inner + BLOCK - 1) // BLOCK)
            ws = self.max_chunks * BLOCK
        else:
            self.items = outer
            self.pieces = -(-self.max_chunks // outer) if outer < self.max_chunks else 1
            ws = outer * self.pieces if self.pieces > 1 else 0
        self.scratch_bytes = self.copy_bytes + 8 * ws

    def _chunks(self) -> int:
        if self.size < _config.PARALLEL_MIN_WORK:
            return 1
        return max(1, min(num_threads(), self.max_chunks))

    def __call__(self, x, out, scratch):
        if self.transpose is not None:
            gd, perm, tshape = self.transpose
            buf = scratch[:self.size * 4].view(np.float32)
            np.copyto(buf.reshape(tshape), x.reshape(gd).transpose(perm))
            x = buf
        ws = _NO_WS if scratch is None else scratch[self.copy_bytes:self.scratch_bytes].view(np.float64)
        c = self._chunks()
        n, kind, scale = self.n, self.kind, self.scale
        if self.inner == 1:
            if c == 1:
                reduce_rows(x, out, n, 0, self.outer, kind, scale)
            elif self.outer >= c:
                reduce_rows_parallel(x, out, n, self.outer, min(c, self.outer), kind, scale)
            else:
                pieces = -(-c // self.outer)
                pieces = min(pieces, self.pieces)
                reduce_rows_split(x, out, n, self.outer, pieces, ws, kind, scale)
        else:
            if c == 1 or self.items < 2:
                reduce_strided(x, out, n, self.inner, 0, self.items, ws[:BLOCK], kind, scale)
            else:
                c = min(c, self.items)
                reduce_strided_parallel(x, out, n, self.inner, self.items, c, ws, kind, scale)
