"""Gather kernel: rows of a (outer, dim, inner) view picked by an index list, with run-time bounds checks.

Arrays move as raw bits (unsigned-integer views of the same item size, see
:func:`edgedl.kernels.cpu.layout.bits_view`), so one compiled kernel per item size serves every dtype.
Indices are int32 or int64, may be negative (they wrap once: ``-dim <= i < dim``), and are checked before
anything is read: a bad index makes the kernel return its position instead of reading out of bounds.
"""
from __future__ import annotations

from numba import njit, prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads


@njit(**NJIT)
def check_indices(idx, dim):
    # idx is (n,) int32/int64; returns the position of the first index outside [-dim, dim), or -1
    for k in range(idx.shape[0]):
        j = idx[k]
        if j < -dim or j >= dim:
            return k
    return -1


@njit(**NJIT)
def _gather_range(data, idx, out, dim, inner, start, stop):
    # data is (outer, dim, inner) flat, idx (n,), out (outer, n, inner) flat; work item w = (o, k)
    n = idx.shape[0]
    for w in range(start, stop):
        o = w // n
        k = w - o * n
        j = idx[k]
        if j < 0:
            j += dim
        s = (o * dim + j) * inner
        d = w * inner
        src = data[s:s + inner]
        dst = out[d:d + inner]
        for i in range(inner):  # non-negative indices into views: no wraparound checks, a memcpy
            dst[i] = src[i]


@njit(**NJIT_PARALLEL)
def _gather_par(data, idx, out, dim, inner, nwork, nchunks):
    for c in prange(nchunks):
        _gather_range(data, idx, out, dim, inner, c * nwork // nchunks, (c + 1) * nwork // nchunks)


def gather(data, idx, out, outer, dim, inner) -> int:
    """out[o, k, :] = data[o, idx[k], :]. ``data``/``out`` are flat bit views, ``idx`` a flat int array.

    Returns -1, or the position of the first out-of-range index (then nothing was written).
    """
    bad = check_indices(idx, dim)
    if bad >= 0:
        return bad
    nwork = outer * idx.shape[0]
    if nwork == 0 or inner == 0:
        return -1
    if out.shape[0] >= _config.PARALLEL_MIN_WORK and nwork > 1:
        _gather_par(data, idx, out, dim, inner, nwork, min(nwork, 8 * num_threads()))
    else:
        _gather_range(data, idx, out, dim, inner, 0, nwork)
    return -1


__all__ = ["check_indices", "gather"]
