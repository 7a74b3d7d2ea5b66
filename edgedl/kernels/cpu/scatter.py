"""Scatter kernels: ScatterElements (one element per index along an axis) and ScatterND (index tuples picking
slices), with the reductions none / add / mul / max / min.

The output starts as a copy of the data; the kernel then applies ``out[q] = f(out[q], update)`` for every
update, in the row-major order of the indices (so with reduction "none" the last of duplicate indices wins,
as in onnx's reference). Indices are checked before anything is written (callers use
:func:`edgedl.kernels.cpu.gather.check_indices` / ``check_nd_indices``). ``max`` / ``min`` follow
``np.maximum`` / ``np.minimum``: a NaN on either side gives NaN.

ScatterElements runs in parallel over the dims before the axis (disjoint parts of the output, each in the
serial order) when the work is large; ScatterND runs serially (any two index tuples may hit the same slice).
"""
from __future__ import annotations

from numba import njit, prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads

RED_NONE = 0
RED_ADD = 1
RED_MUL = 2
RED_MAX = 3
RED_MIN = 4
REDUCTIONS = {"none": RED_NONE, "add": RED_ADD, "mul": RED_MUL, "max": RED_MAX, "min": RED_MIN}


@njit(inline="always")
def _apply(out, q, u, red):
    if red == RED_NONE:
        out[q] = u
    elif red == RED_ADD:
        out[q] += u
    elif red == RED_MUL:
        out[q] *= u
    elif red == RED_MAX:
        v = out[q]
        if u > v or u != u:
            out[q] = u
    else:
        v = out[q]
        if u < v or u != u:
            out[q] = u


@njit(**NJIT)
def _scatter_elements_range(out, idx, upd, base, ka, inner, dim, stride, red, start, stop):
    # out flat (the data's shape), idx / upd (outer, ka, inner) flat, base (outer * inner,) int64: the flat
    # offset of out[o, 0, i]; out[base[o * inner + i] + idx[o, a, i] * stride] op= upd[o, a, i] for o in [start, stop)
    for o in range(start, stop):
        b = base[o * inner:(o + 1) * inner]
        for a in range(ka):
            p0 = (o * ka + a) * inner
            ix = idx[p0:p0 + inner]
            up = upd[p0:p0 + inner]
            for i in range(inner):
                j = ix[i]
                if j < 0:
                    j += dim
                _apply(out, b[i] + j * stride, up[i], red)


@njit(**NJIT_PARALLEL)
def _scatter_elements_par(out, idx, upd, base, ka, inner, dim, stride, red, outer, nchunks):
    for c in prange(nchunks):
        _scatter_elements_range(out, idx, upd, base, ka, inner, dim, stride, red, c * outer // nchunks,
                                (c + 1) * outer // nchunks)


def scatter_elements(out, idx, upd, base, ka, inner, dim, stride, red) -> None:
    """ScatterElements into ``out`` (already a copy of the data; indices already checked)."""
    if ka == 0 or inner == 0:
        return
    outer = idx.shape[0] // (ka * inner)
    if idx.shape[0] >= _config.PARALLEL_MIN_WORK and outer > 1:
        _scatter_elements_par(out, idx, upd, base, ka, inner, dim, stride, red, outer,
                              min(outer, 8 * num_threads()))
    else:
        _scatter_elements_range(out, idx, upd, base, ka, inner, dim, stride, red, 0, outer)


@njit(**NJIT)
def scatter_nd(out, offsets, upd, slice_size, red):
    # out flat (the data's shape); offsets (m,) int64 flat offsets of the m index tuples (checked); upd
    # (m, slice_size) flat: out[offsets[r] + s] op= upd[r, s], r in order
    for r in range(offsets.shape[0]):
        d = offsets[r]
        up = upd[r * slice_size:(r + 1) * slice_size]
        if red == RED_NONE:
            dst = out[d:d + slice_size]
            for s in range(slice_size):
                dst[s] = up[s]
        else:
            for s in range(slice_size):
                _apply(out, d + s, up[s], red)


__all__ = ["REDUCTIONS", "RED_ADD", "RED_MAX", "RED_MIN", "RED_MUL", "RED_NONE", "scatter_elements", "scatter_nd"]
