"""Selection kernels (float32): ArgMax / ArgMin along an axis, TopK by a bounded heap per row, Hardmax's
one-hot fill.

Every op views its input as (outer, n, inner) and selects along the middle dim.

* ArgMax / ArgMin: the first (or, with ``last``, the last) position of the maximum / minimum. A NaN wins over
  every number (numpy's and PyTorch's convention): the first (last) NaN of a row that has one.
  ``inner == 1`` without ``last`` calls numpy's argmax / argmin, whose SIMD loops beat a compiled scan ~10x
  on contiguous rows (same NaN rule, written into the preallocated output). With ``last``, a row of at least
  :data:`LONG_ROW` takes three vectorized passes (count NaNs; the extreme through integer keys of the float
  bits, an integer reduction that vectorizes where a float max without no-NaN fast-math does not; its last
  position, checked a block at a time), a shorter row one scalar scan. ``inner > 1`` keeps the running best
  of a block of :data:`BLOCK` contiguous positions, so the loops stay contiguous. Rows (or (outer, block)
  items) are split across threads when the work is large.
* TopK: the k best of a row by a binary heap of size k whose root is the worst kept element (a new element
  is compared with the root only: O(n log k), no full sort for small k), then the heap is sorted best
  first. Order: larger (``largest``) or smaller values first, NaN above +inf, equal values by lower index
  (as the spec says). ``inner > 1`` rows are copied to a contiguous buffer first.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads

#: inner positions per work item of the strided ArgMax kernel
BLOCK = 256


@njit(inline="always")
def _arg_better(v, best, is_min, last):
    # whether v replaces the current best: NaN beats numbers; ties (and later NaNs) replace only with ``last``
    if v != v:
        return last or best == best
    if is_min:
        return v < best or (last and v == best)
    return v > best or (last and v == best)


#: rows at least this long take the vectorized three-pass ArgMax with ``last`` (shorter ones one scalar scan)
LONG_ROW = 64
#: elements per step of the vectorized search for the winning position
_SCAN = 256


@njit(**NJIT)
def _nan_count(row):
    # number of NaNs in row (a vectorized count)
    c = 0
    for j in range(row.shape[0]):
        c += row[j] != row[j]
    return c


@njit(**NJIT)
def _key_extreme(bits, is_min):
    # bits: a float32 row as int32. key(b) = b ^ ((b >> 31) & 0x7fffffff) orders float32 bit patterns as
    # the floats they hold (NaNs excluded), and its max / min is an integer reduction, which vectorizes.
    # Returns the extreme key; the key map is its own inverse.
    b = bits[0]
    m = b ^ ((b >> 31) & 0x7FFFFFFF)
    if is_min:
        for j in range(1, bits.shape[0]):
            b = bits[j]
            k = b ^ ((b >> 31) & 0x7FFFFFFF)
            m = k if k < m else m
    else:
        for j in range(1, bits.shape[0]):
            b = bits[j]
            k = b ^ ((b >> 31) & 0x7FFFFFFF)
            m = k if k > m else m
    return m


@njit(inline="always")
def _hit(v, m, nan):
    return (v != v) if nan else (v == m)


@njit(**NJIT)
def _block_hits(blk, m, nan):
    # how many elements of blk match (an integer count over a run-time length: the loop vectorizes)
    c = 0
    if nan:
        for q in range(blk.shape[0]):
            c += blk[q] != blk[q]
    else:
        for q in range(blk.shape[0]):
            c += blk[q] == m
    return c


@njit(**NJIT)
def _find_last(row, m, nan):
    # last j with row[j] == m (with nan: row[j] is NaN), checked _SCAN elements at a time from the end
    n = row.shape[0]
    nblocks = n // _SCAN
    for j in range(n - 1, nblocks * _SCAN - 1, -1):
        if _hit(row[j], m, nan):
            return j
    for c in range(nblocks - 1, -1, -1):
        blk = row[c * _SCAN:(c + 1) * _SCAN]
        if _block_hits(blk, m, nan):
            for q in range(_SCAN - 1, -1, -1):
                if _hit(blk[q], m, nan):
                    return c * _SCAN + q
    return 0


@njit(**NJIT)
def _arg_rows(x, bits, out, n, is_min, last, start, stop):
    # x (rows, n) flat float32 and the same memory as int32 (bits), out (rows,) int64: inner == 1.
    # With ``last``, long rows: count NaNs, take the extreme by integer keys, then find its last position
    # (three vectorized passes); otherwise one scalar scan.
    one = np.empty(1, np.int32)
    onef = one.view(np.float32)
    for r in range(start, stop):
        row = x[r * n:(r + 1) * n]
        if last and n >= LONG_ROW:
            if _nan_count(row) > 0:
                out[r] = _find_last(row, row[0], True)
            else:
                k = _key_extreme(bits[r * n:(r + 1) * n], is_min)
                one[0] = k ^ ((k >> 31) & 0x7FFFFFFF)
                out[r] = _find_last(row, onef[0], False)
            continue
        best = row[0]
        bi = 0
        for j in range(1, n):
            v = row[j]
            if _arg_better(v, best, is_min, last):
                best = v
                bi = j
        out[r] = bi


@njit(**NJIT)
def _arg_blocks(x, out, n, inner, nblocks, is_min, last, start, stop):
    # x (outer, n, inner) flat, out (outer, inner) int64; items w = (o, block of BLOCK inner positions)
    best = np.empty(BLOCK, x.dtype)
    for w in range(start, stop):
        o = w // nblocks
        i0 = (w - o * nblocks) * BLOCK
        m = min(BLOCK, inner - i0)
        base = o * n * inner + i0
        dst = out[o * inner + i0:o * inner + i0 + m]
        first = x[base:base + m]
        for i in range(m):
            best[i] = first[i]
            dst[i] = 0
        for j in range(1, n):
            row = x[base + j * inner:base + j * inner + m]
            for i in range(m):
                v = row[i]
                if _arg_better(v, best[i], is_min, last):
                    best[i] = v
                    dst[i] = j


@njit(**NJIT_PARALLEL)
def _arg_rows_par(x, bits, out, n, is_min, last, rows, nchunks):
    for c in prange(nchunks):
        _arg_rows(x, bits, out, n, is_min, last, c * rows // nchunks, (c + 1) * rows // nchunks)


@njit(**NJIT_PARALLEL)
def _arg_blocks_par(x, out, n, inner, nblocks, is_min, last, items, nchunks):
    for c in prange(nchunks):
        _arg_blocks(x, out, n, inner, nblocks, is_min, last, c * items // nchunks, (c + 1) * items // nchunks)


def arg_select(x, out, outer, n, inner, is_min: bool, last: bool) -> None:
    """out[o, i] = argmax (argmin) over j of x[o, j, i]; ``x`` and ``out`` flat, n >= 1."""
    work = outer * n * inner
    if work == 0:
        return
    if inner == 1 and not last:  # numpy's SIMD argmax / argmin (same NaN rule), into ``out``
        (np.argmin if is_min else np.argmax)(x.reshape(outer, n), axis=1, out=out)
        return
    par = work >= _config.PARALLEL_MIN_WORK
    if inner == 1:
        bits = x.view(np.int32)
        if par and outer > 1:
            _arg_rows_par(x, bits, out, n, is_min, last, outer, min(outer, 8 * num_threads()))
        else:
            _arg_rows(x, bits, out, n, is_min, last, 0, outer)
        return
    nblocks = -(-inner // BLOCK)
    items = outer * nblocks
    if par and items > 1:
        _arg_blocks_par(x, out, n, inner, nblocks, is_min, last, items, min(items, 8 * num_threads()))
    else:
        _arg_blocks(x, out, n, inner, nblocks, is_min, last, 0, items)


@njit(**NJIT)
def onehot_fill(out, idx, n, inner):
    # out (outer, n, inner) flat, idx (outer, inner) int64 in [0, n): out = 1 at (o, idx[o, i], i), else 0
    out[:] = 0
    outer = idx.shape[0] // inner if inner > 0 else 0
    for o in range(outer):
        for i in range(inner):
            out[(o * n + idx[o * inner + i]) * inner + i] = 1


# --- TopK -------------------------------------------------------------------------------------------------
@njit(inline="always")
def _gt(a, b):
    # a > b with NaN above every number (two NaNs are equal)
    if a != a:
        return b == b
    if b != b:
        return False
    return a > b


@njit(inline="always")
def _before(va, ia, vb, ib, largest):
    # whether (va, ia) ranks before (vb, ib): the better value first, equal values by lower index
    if largest:
        if _gt(va, vb):
            return True
        if _gt(vb, va):
            return False
    else:
        if _gt(vb, va):
            return True
        if _gt(va, vb):
            return False
    return ia < ib


@njit(inline="always")
def _sift_down(hv, hi, p, size, largest):
    # restore the heap below p: every parent ranks after (is worse than) its children
    while True:
        c = 2 * p + 1
        if c >= size:
            return
        if c + 1 < size and _before(hv[c], hi[c], hv[c + 1], hi[c + 1], largest):
            c += 1  # the worse child
        if _before(hv[p], hi[p], hv[c], hi[c], largest):
            tv = hv[p]
            hv[p] = hv[c]
            hv[c] = tv
            ti = hi[p]
            hi[p] = hi[c]
            hi[c] = ti
            p = c
        else:
            return


@njit(inline="always")
def _topk_row(row, n, k, largest, hv, hi, vals, idxs, ostride):
    # row (n,) contiguous; hv / hi (k,) heap scratch; writes vals[r * ostride], idxs[r * ostride] for r < k, best first
    for j in range(k):  # the first k, sifted up one by one
        hv[j] = row[j]
        hi[j] = j
        c = j
        while c > 0:
            p = (c - 1) // 2
            if _before(hv[p], hi[p], hv[c], hi[c], largest):
                tv = hv[p]
                hv[p] = hv[c]
                hv[c] = tv
                ti = hi[p]
                hi[p] = hi[c]
                hi[c] = ti
                c = p
            else:
                break
    for j in range(k, n):
        v = row[j]
        if _before(v, j, hv[0], hi[0], largest):
            hv[0] = v
            hi[0] = j
            _sift_down(hv, hi, 0, k, largest)
    for s in range(k - 1, -1, -1):  # pop the worst into the last free place
        vals[s * ostride] = hv[0]
        idxs[s * ostride] = hi[0]
        hv[0] = hv[s]
        hi[0] = hi[s]
        _sift_down(hv, hi, 0, s, largest)


@njit(**NJIT)
def _topk_range(x, vals, idxs, n, inner, k, largest, start, stop):
    # x (outer, n, inner) flat; vals / idxs (outer, k, inner) flat; rows r = (o, i) in [start, stop)
    hv = np.empty(k, x.dtype)
    hi = np.empty(k, np.int64)
    buf = np.empty(n if inner > 1 else 0, x.dtype)
    for r in range(start, stop):
        o = r // inner
        i = r - o * inner
        if inner == 1:
            row = x[o * n:(o + 1) * n]
        else:
            base = o * n * inner + i
            for j in range(n):
                buf[j] = x[base + j * inner]
            row = buf
        d = o * k * inner + i
        _topk_row(row, n, k, largest, hv, hi, vals[d:], idxs[d:], inner)


@njit(**NJIT_PARALLEL)
def _topk_par(x, vals, idxs, n, inner, k, largest, rows, nchunks):
    for c in prange(nchunks):
        _topk_range(x, vals, idxs, n, inner, k, largest, c * rows // nchunks, (c + 1) * rows // nchunks)


def topk(x, vals, idxs, outer, n, inner, k, largest: bool) -> None:
    """The k best of every (o, :, i) row of ``x`` into ``vals`` / ``idxs`` (flat, (outer, k, inner)), best first."""
    rows = outer * inner
    if rows == 0 or k == 0:
        return
    if rows * n >= _config.PARALLEL_MIN_WORK and rows > 1:
        _topk_par(x, vals, idxs, n, inner, k, largest, rows, min(rows, 8 * num_threads()))
    else:
        _topk_range(x, vals, idxs, n, inner, k, largest, 0, rows)


__all__ = ["arg_select", "onehot_fill", "topk"]
