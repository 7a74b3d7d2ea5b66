"""Broadcast copy kernels (Expand, Tile).

An Expand writes ``out[o] = x[in(o)]`` over a C-contiguous output, where ``in`` drops the index of every
broadcast axis (input size 1). A Tile is the same copy: ``x`` of shape (d0, d1, ...) viewed as
(1, d0, 1, d1, ...) and broadcast to (r0, d0, r1, d1, ...), whose memory layout is that of the tiled output
(r0 * d0, r1 * d1, ...).

The copy is first simplified on the host (:func:`broadcast_plan`): output axes of size 1 are dropped and
adjacent axes of the same kind (both broadcast, or both copied) are merged, so the collapsed axes alternate
between *copied* axes (input stride > 0) and *broadcast* axes (input stride 0). The kernel then

1. scatters the input into the output at index 0 of every broadcast axis: whole input rows when the last
   axis is copied (a memcpy per row), single elements when it is broadcast;
2. replicates, from the innermost broadcast axis k outwards, the block of axes > k (contiguous in the
   output, ``ostride[k]`` elements) ``shape[k] - 1`` times: a memcpy from data already in cache.

Every output element is written once and reads are contiguous. Large copies run in parallel: over the
first collapsed axis when it is copied, else the block at index 0 is filled and then replicated in chunks.

Kernels move raw bits: every dtype runs through an unsigned-integer view of the same item size
(:func:`edgedl.kernels.cpu.layout.bits_view`). All arrays are flat (1-D); shapes and strides are int64
arrays, in elements.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads


def broadcast_plan(in_shape, out_shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapsed (shape, input strides, output strides) of the broadcast of ``in_shape`` to ``out_shape``.

    ``in_shape`` is right-aligned with ``out_shape`` (numpy broadcasting); every input dim must be 1 or the
    output dim. Broadcast axes get input stride 0. Returns int64 arrays (possibly empty: a single element)."""
    in_shape = (1,) * (len(out_shape) - len(in_shape)) + tuple(int(d) for d in in_shape)
    istr_full = [1] * len(in_shape)
    for k in range(len(in_shape) - 2, -1, -1):
        istr_full[k] = istr_full[k + 1] * in_shape[k + 1]
    shape: list[int] = []
    istr: list[int] = []
    for d_in, d_out, s in zip(in_shape, out_shape, istr_full):
        d_out = int(d_out)
        if d_out == 1:
            continue
        if d_in not in (1, d_out):
            raise ValueError(f"cannot broadcast {in_shape} to {tuple(out_shape)}")
        stride = 0 if d_in == 1 else s
        if shape and (istr[-1] == 0) == (stride == 0):
            shape[-1] *= d_out          # merge with the previous axis of the same kind
            istr[-1] = stride           # copied axes: the inner stride; broadcast axes: 0
        else:
            shape.append(d_out)
            istr.append(stride)
    ostr = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        ostr[k] = ostr[k + 1] * shape[k + 1]
    return np.array(shape, np.int64), np.array(istr, np.int64), np.array(ostr, np.int64)


@njit(**NJIT)
def _offsets(t, shape, istr, ostr, k_end, a0):
    # the t-th multi-index over axes 0 .. k_end-1 in which broadcast axes (istr == 0) stay at 0 and axis 0
    # starts at a0 -> (input offset, output offset)
    io = 0
    oo = 0
    for k in range(k_end - 1, 0, -1):
        if istr[k] != 0:
            d = shape[k]
            q = t // d
            r = t - q * d
            t = q
            io += r * istr[k]
            oo += r * ostr[k]
    r0 = a0 + t
    return io + r0 * istr[0], oo + r0 * ostr[0]


@njit(**NJIT)
def _count(shape, istr, k_end, a0, a1):
    # how many multi-indices _offsets enumerates over axes 0 .. k_end-1
    c = a1 - a0
    for k in range(1, k_end):
        if istr[k] != 0:
            c *= shape[k]
    return c


@njit(**NJIT)
def _fill(x, out, shape, istr, ostr, a0, a1):
    # x: flat input; out: flat (shape) output, collapsed axes n >= 2; writes the output for axis-0 indices
    # [a0, a1) (a copied axis 0) or index 0 only (a broadcast axis 0: a0 = 0, a1 = 1; the caller replicates)
    n = shape.shape[0]
    last = n - 1
    length = shape[last]
    # 1. scatter: input rows (copied last axis) or elements (broadcast last axis) at broadcast index 0
    rows = _count(shape, istr, last, a0, a1)
    for t in range(rows):
        io, oo = _offsets(t, shape, istr, ostr, last, a0)
        if istr[last] != 0:
            dst = out[oo:oo + length]
            src = x[io:io + length]
            for i in range(length):
                dst[i] = src[i]
        else:
            out[oo] = x[io]
    # 2. replicate the block of every broadcast axis k >= 1, innermost first
    for k in range(last, 0, -1):
        if istr[k] != 0 or shape[k] < 2:
            continue
        blk = ostr[k]
        reps = shape[k]
        nblocks = _count(shape, istr, k, a0, a1)
        for t in range(nblocks):
            _, oo = _offsets(t, shape, istr, ostr, k, a0)
            if blk == 1:
                v = out[oo]
                dst = out[oo + 1:oo + reps]
                for i in range(reps - 1):
                    dst[i] = v
            else:
                src = out[oo:oo + blk]
                for j in range(1, reps):
                    dst = out[oo + j * blk:oo + (j + 1) * blk]
                    for i in range(blk):
                        dst[i] = src[i]


@njit(**NJIT)
def _replicate(out, blk, start, stop):
    # out[blk + q] = out[q % blk] for q in [start, stop): copies of the first block (a broadcast axis 0)
    q = start
    while q < stop:
        s = q % blk
        m = min(blk - s, stop - q)
        dst = out[blk + q:blk + q + m]
        src = out[s:s + m]
        for i in range(m):
            dst[i] = src[i]
        q += m


@njit(**NJIT_PARALLEL)
def _fill_par(x, out, shape, istr, ostr, nchunks):
    # parallel over chunks of a copied axis 0
    d0 = shape[0]
    for c in prange(nchunks):
        _fill(x, out, shape, istr, ostr, c * d0 // nchunks, (c + 1) * d0 // nchunks)


@njit(**NJIT_PARALLEL)
def _replicate_par(out, blk, total, nchunks):
    for c in prange(nchunks):
        _replicate(out, blk, c * total // nchunks, (c + 1) * total // nchunks)


def broadcast_copy(x, out, shape, istr, ostr) -> None:
    """``out`` (flat, C-contiguous) = ``x`` (flat) broadcast along the collapsed plan of :func:`broadcast_plan`."""
    n = shape.shape[0]
    total = out.shape[0]
    if total == 0:
        return
    if n == 0:
        out[0] = x[0]
        return
    if n == 1:
        if istr[0] != 0:
            np.copyto(out, x)
        else:
            out.fill(x[0])
        return
    par = total >= _config.PARALLEL_MIN_WORK and num_threads() > 1
    if istr[0] != 0:
        if par and shape[0] > 1:
            _fill_par(x, out, shape, istr, ostr, min(int(shape[0]), 4 * num_threads()))
        else:
            _fill(x, out, shape, istr, ostr, 0, shape[0])
        return
    _fill(x, out, shape, istr, ostr, 0, 1)
    blk = int(ostr[0])
    rest = total - blk
    if rest <= 0:
        return
    if par:
        _replicate_par(out, blk, rest, min(max(1, rest // 4096), 4 * num_threads()))
    else:
        _replicate(out, blk, 0, rest)


def make_broadcast(in_shape, out_shape):
    """``fn(x, out)`` copying flat bit views of ``x`` (``in_shape``) broadcast to ``out_shape`` into ``out``."""
    shape, istr, ostr = broadcast_plan(in_shape, out_shape)

    def fn(x, out):
        broadcast_copy(x, out, shape, istr, ostr)

    return fn


def tile_shapes(in_shape, repeats) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input view, broadcast output) shapes that make a Tile by ``repeats`` an Expand:
    (1, d0, 1, d1, ...) -> (r0, d0, r1, d1, ...)."""
    view = []
    full = []
    for d, r in zip(in_shape, repeats):
        view += [1, int(d)]
        full += [int(r), int(d)]
    return tuple(view), tuple(full)


__all__ = ["broadcast_copy", "broadcast_plan", "make_broadcast", "tile_shapes"]
