"""Gather kernels with run-time bounds checks: Gather (rows of an (outer, dim, inner) view picked by an index
list), its backward (a scatter-add of rows), GatherElements (one element per index along an axis) and GatherND
(index tuples picking slices).

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


@njit(**NJIT)
def gather_add(grad, idx, out, outer, dim, inner):
    # grad is (outer, n, inner) flat float32, idx (n,) checked, out (outer, dim, inner) flat float32, zeroed:
    # out[o, idx[k], :] += grad[o, k, :], in the order of k (serial: duplicates add in one fixed order)
    n = idx.shape[0]
    for o in range(outer):
        for k in range(n):
            j = idx[k]
            if j < 0:
                j += dim
            s = k * inner + o * n * inner
            d = (o * dim + j) * inner
            src = grad[s:s + inner]
            dst = out[d:d + inner]
            for i in range(inner):
                dst[i] += src[i]


# --- GatherElements ---------------------------------------------------------------------------------------
# Indices have the data's rank and are split around the axis into (outer, ka, inner) (the indices' shape);
# ``base[o * inner + i]`` is the flat data offset of element (o, 0, i), precomputed once per shape, and
# ``stride`` the data's stride along the axis, so out[o, a, i] = data[base[o * inner + i] + idx[o, a, i] * stride].
@njit(**NJIT)
def _gather_elements_range(data, idx, base, out, ka, inner, dim, stride, start, stop):
    # data flat, idx / out (outer * ka * inner,) flat, base (outer * inner,) int64; rows r = (o, a) in [start, stop)
    for r in range(start, stop):
        o = r // ka
        p0 = r * inner
        b = base[o * inner:(o + 1) * inner]
        ix = idx[p0:p0 + inner]
        dst = out[p0:p0 + inner]
        for i in range(inner):
            j = ix[i]
            if j < 0:
                j += dim
            dst[i] = data[b[i] + j * stride]


@njit(**NJIT_PARALLEL)
def _gather_elements_par(data, idx, base, out, ka, inner, dim, stride, rows, nchunks):
    for c in prange(nchunks):
        _gather_elements_range(data, idx, base, out, ka, inner, dim, stride, c * rows // nchunks,
                               (c + 1) * rows // nchunks)


def gather_elements(data, idx, base, out, ka, inner, dim, stride) -> int:
    """GatherElements on flat arrays (see above). Returns -1, or the position of the first index outside
    ``[-dim, dim)`` (then nothing was written)."""
    bad = check_indices(idx, dim)
    if bad >= 0:
        return bad
    if inner == 0 or ka == 0:
        return -1
    rows = idx.shape[0] // inner
    if idx.shape[0] >= _config.PARALLEL_MIN_WORK and rows > 1:
        _gather_elements_par(data, idx, base, out, ka, inner, dim, stride, rows, min(rows, 8 * num_threads()))
    else:
        _gather_elements_range(data, idx, base, out, ka, inner, dim, stride, 0, rows)
    return -1


# --- GatherND ---------------------------------------------------------------------------------------------
@njit(**NJIT)
def check_nd_indices(idx, dims):
    # idx is (m, q) int, dims (q,) int64: position (flat) of the first idx[r, t] outside [-dims[t], dims[t]), or -1
    q = dims.shape[0]
    for r in range(idx.shape[0]):
        for t in range(q):
            v = idx[r, t]
            if v < -dims[t] or v >= dims[t]:
                return r * q + t
    return -1


@njit(**NJIT)
def nd_offsets(idx, dims, strides, offsets):
    # idx (m, q) checked, dims / strides (q,) int64, offsets (m,) int64: flat element offset of each index tuple
    for r in range(idx.shape[0]):
        off = 0
        for t in range(dims.shape[0]):
            v = idx[r, t]
            if v < 0:
                v += dims[t]
            off += v * strides[t]
        offsets[r] = off


@njit(**NJIT)
def gather_nd_copy(data, offsets, out, per_batch, batch_stride, slice_size):
    # data flat; offsets (batches * per_batch,) int64 (within one batch); out (batches * per_batch, slice_size)
    # flat: out[r, :] = data[(r // per_batch) * batch_stride + offsets[r] + (0 .. slice_size)]
    for r in range(offsets.shape[0]):
        s = (r // per_batch) * batch_stride + offsets[r]
        src = data[s:s + slice_size]
        dst = out[r * slice_size:(r + 1) * slice_size]
        for i in range(slice_size):
            dst[i] = src[i]


__all__ = ["check_indices", "check_nd_indices", "gather", "gather_add", "gather_elements", "gather_nd_copy",
           "nd_offsets"]
