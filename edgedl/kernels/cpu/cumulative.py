"""Cumulative sum and product kernels (CumSum, CumProd) and the Trilu mask copy.

A scan along one axis views the tensor as (outer, n, inner):

    inclusive: out[o, k, :] = x[o, 0, :] (+) ... (+) x[o, k, :]
    exclusive: out[o, k, :] = x[o, 0, :] (+) ... (+) x[o, k-1, :]      (out[o, 0, :] = identity)

and ``reverse`` runs k from n-1 down. Every element is accumulated in order in the tensor's own dtype,
``out[k] = out[k-1] (+) x[k]``, which is what numpy's ``cumsum`` / ``cumprod`` and onnxruntime compute (float32
sums are not re-associated). With inner > 1 a step is a row operation over ``inner`` contiguous elements
(vectorized); with inner == 1 a scalar loop per outer row. Large scans run in parallel over outer rows, or
over chunks of the inner axis when there are few outer rows.

Trilu keeps, in each (rows, cols) matrix, the elements with ``j - i >= k`` (upper) or ``j - i <= k``
(lower) and zeroes the rest: per row one copied and one zeroed run (raw bits, any dtype).
"""
from __future__ import annotations

from numba import njit, prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads


@njit(**NJIT)
def _scan(x, out, ident, n, inner, exclusive, reverse, prod, o0, o1, i0, i1):
    # x, out: flat (outer, n, inner); scan outer rows [o0, o1), inner columns [i0, i1); ident: (1,) identity
    e = ident[0]
    for o in range(o0, o1):
        base = o * n * inner
        if inner == 1:
            acc = e
            for t in range(n):
                k = n - 1 - t if reverse else t
                if exclusive:
                    out[base + k] = acc
                    acc = acc * x[base + k] if prod else acc + x[base + k]
                else:
                    acc = acc * x[base + k] if prod else acc + x[base + k]
                    out[base + k] = acc
            continue
        first = base + (n - 1) * inner if reverse else base
        step = -inner if reverse else inner
        if n == 0:
            continue
        dst = out[first + i0:first + i1]
        if exclusive:
            for i in range(i1 - i0):
                dst[i] = e
        else:
            src = x[first + i0:first + i1]
            for i in range(i1 - i0):
                dst[i] = src[i]
        for t in range(1, n):
            cur = first + t * step
            prev = cur - step
            dst = out[cur + i0:cur + i1]
            acc = out[prev + i0:prev + i1]
            src = x[prev + i0:prev + i1] if exclusive else x[cur + i0:cur + i1]
            if prod:
                for i in range(i1 - i0):
                    dst[i] = acc[i] * src[i]
            else:
                for i in range(i1 - i0):
                    dst[i] = acc[i] + src[i]


@njit(**NJIT_PARALLEL)
def _scan_outer_par(x, out, ident, outer, n, inner, exclusive, reverse, prod, nchunks):
    for c in prange(nchunks):
        _scan(x, out, ident, n, inner, exclusive, reverse, prod, c * outer // nchunks, (c + 1) * outer // nchunks,
              0, inner)


@njit(**NJIT_PARALLEL)
def _scan_inner_par(x, out, ident, outer, n, inner, exclusive, reverse, prod, nchunks):
    for c in prange(nchunks):
        _scan(x, out, ident, n, inner, exclusive, reverse, prod, 0, outer, c * inner // nchunks,
              (c + 1) * inner // nchunks)


def scan(x, out, ident, outer: int, n: int, inner: int, exclusive: bool, reverse: bool, prod: bool) -> None:
    """Cumulative sum (``prod`` False) or product of flat ``x`` viewed as (outer, n, inner) into flat ``out``;
    ``ident``: a (1,) array holding 0 or 1 in the dtype."""
    total = outer * n * inner
    if total == 0:
        return
    nt = num_threads()
    if total >= _config.PARALLEL_MIN_WORK and nt > 1:
        if outer >= 2 * nt or (inner < 64 and outer > 1):
            _scan_outer_par(x, out, ident, outer, n, inner, exclusive, reverse, prod, min(outer, 4 * nt))
            return
        if inner >= 64:
            _scan_inner_par(x, out, ident, outer, n, inner, exclusive, reverse, prod, min(inner // 16, 4 * nt))
            return
    _scan(x, out, ident, n, inner, exclusive, reverse, prod, 0, outer, 0, inner)


# --- Trilu ---------------------------------------------------------------------------------------------------
@njit(**NJIT)
def _trilu(x, out, rows, cols, k, upper, r0, r1):
    # x, out: flat (batch * rows, cols) bits; global rows [r0, r1) (row i = r % rows of its matrix); k already
    # clipped to [-rows - 1, cols + 1]
    # Loops run from 0 over sliced views (a loop starting at a run-time offset does not vectorize).
    for r in range(r0, r1):
        i = r % rows
        base = r * cols
        cut = min(max(i + k, 0), cols) if upper else min(max(i + k + 1, 0), cols)
        left = out[base:base + cut]
        right = out[base + cut:base + cols]
        if upper:  # zero [0, cut), keep [cut, cols)
            src = x[base + cut:base + cols]
            for j in range(cols - cut):
                right[j] = src[j]
            for j in range(cut):
                left[j] = 0
        else:  # keep [0, cut), zero [cut, cols)
            src = x[base:base + cut]
            for j in range(cut):
                left[j] = src[j]
            for j in range(cols - cut):
                right[j] = 0


@njit(**NJIT_PARALLEL)
def _trilu_par(x, out, nrows, rows, cols, k, upper, nchunks):
    for c in prange(nchunks):
        _trilu(x, out, rows, cols, k, upper, c * nrows // nchunks, (c + 1) * nrows // nchunks)


def trilu(x, out, batch: int, rows: int, cols: int, k: int, upper: bool) -> None:
    """Trilu of flat bit views ``x`` -> ``out`` holding ``batch`` (rows, cols) matrices."""
    if batch * rows * cols == 0:
        return
    k = min(max(int(k), -rows - 1), cols + 1)
    nrows = batch * rows
    nt = num_threads()
    if nrows * cols >= _config.PARALLEL_MIN_WORK and nrows > 1 and nt > 1:
        _trilu_par(x, out, nrows, rows, cols, k, upper, min(nrows, 4 * nt))
    else:
        _trilu(x, out, rows, cols, k, upper, 0, nrows)


__all__ = ["scan", "trilu"]
