"""Transpose kernels (and helpers shared by the data-movement ops).

A transpose is first simplified on the host (:func:`collapse_transpose`): size-1 axes are dropped and input
axes that stay adjacent and in order in the permutation are merged. What is left is one of

* a copy (the permutation collapses to the identity);
* a *row* transpose: the last axis stays last, so every output row is one contiguous input run
  (``(0, 2, 1, 3)``-style permutations): :func:`transpose_rows`;
* a *tiled* transpose: the output's last axis ``m`` is not the input's last axis. The input's last axis is
  output axis ``q``; for every position of the remaining ("batch") axes the (q, m) plane is a 2-D
  transpose, done in 32 x 32 tiles so both the strided reads and the contiguous writes stay in L1
  (NCHW -> NHWC collapses to ``(N, C, HW) -> (N, HW, C)``, NHWC -> NCHW to ``(N, HW, C) -> (N, C, HW)``):
  :func:`transpose_tiles`; with 2 to 4 channels of 8-, 16- or 32-bit items (an RGB image), vector shuffles
  instead (:func:`make_transpose` kind "channels").

Kernels move raw bits: any dtype runs through an unsigned-integer view of the same item size
(:func:`bits_view`), so one compiled kernel per item size (1, 2, 4, 8 bytes) serves every dtype.
All arrays are flat (1-D) C-contiguous; shapes and strides come as int64 arrays, in elements.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads
from .vec import JOIN_CHANNELS, SPLIT_CHANNELS, VW

#: side of the square tiles of the tiled transpose
TILE = 32

_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits_view(a: np.ndarray) -> np.ndarray | None:
    """A flat view of ``a`` as unsigned integers of the same item size (None for other item sizes)."""
    u = _BITS.get(a.dtype.itemsize)
    if u is None or not a.flags.c_contiguous:
        return None
    return a.reshape(-1).view(u)


def collapse_transpose(shape, perm) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Simplify (input shape, perm) to an equivalent transpose with the fewest axes.

    Drops size-1 axes and merges input axes ``a, a+1`` that appear consecutively in ``perm``. Returns the
    collapsed input shape and permutation (output axis k reads collapsed input axis perm[k]).
    """
    keep = [a for a in range(len(shape)) if shape[a] != 1]
    perm1 = [a for a in perm if shape[a] != 1]
    renum = {a: i for i, a in enumerate(keep)}
    shape1 = [shape[a] for a in keep]
    perm1 = [renum[a] for a in perm1]
    # groups of input axes that stay adjacent and in order in the output
    groups: list[list[int]] = []
    for a in perm1:
        if groups and groups[-1][-1] + 1 == a:
            groups[-1].append(a)
        else:
            groups.append([a])
    order = sorted(range(len(groups)), key=lambda g: groups[g][0])  # groups in input order
    new_index = {g: i for i, g in enumerate(order)}
    cshape = tuple(int(np.prod([shape1[a] for a in groups[g]], dtype=np.int64)) for g in order)
    cperm = tuple(new_index[g] for g in range(len(groups)))
    return cshape, cperm


def _strides(shape) -> list[int]:
    st = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        st[k] = st[k + 1] * shape[k + 1]
    return st


@njit(**NJIT)
def _rows_range(x, out, bshape, bstride, length, start, stop):
    # out is (rows, length) flat; row r's multi-index over bshape (the output's leading axes) gives the
    # input offset through bstride (input strides of those axes). Rows are walked along the last batch
    # axis, so the div/mod decomposition runs once per run of bshape[-1] rows, not per row.
    nb = bshape.shape[0]
    dl = bshape[nb - 1]
    sl = bstride[nb - 1]
    r = start
    while r < stop:
        g = r // dl
        t = r - g * dl
        rem = g
        base = 0
        for k in range(nb - 2, -1, -1):
            d = bshape[k]
            idx = rem % d
            rem //= d
            base += idx * bstride[k]
        n = min(dl - t, stop - r)
        for u in range(n):
            ioff = base + (t + u) * sl
            ooff = (r + u) * length
            dst = out[ooff:ooff + length]
            src = x[ioff:ioff + length]
            for i in range(length):  # non-negative indices into views: no wraparound checks, a memcpy
                dst[i] = src[i]
        r += n


@njit(**NJIT_PARALLEL)
def _rows_par(x, out, bshape, bstride, length, nrows, nchunks):
    for c in prange(nchunks):
        _rows_range(x, out, bshape, bstride, length, c * nrows // nchunks, (c + 1) * nrows // nchunks)


def transpose_rows(x, out, bshape, bstride, length):
    """out[r, :] = x[off(r) : off(r) + length]; off from r's index over ``bshape`` and ``bstride``."""
    nrows = out.shape[0] // length if length else 0
    if nrows == 0:
        return
    if out.shape[0] >= _config.PARALLEL_MIN_WORK and nrows > 1:
        _rows_par(x, out, bshape, bstride, length, nrows, min(nrows, 8 * num_threads()))
    else:
        _rows_range(x, out, bshape, bstride, length, 0, nrows)


@njit(**NJIT)
def _tiles_range(x, out, bshape, bistride, bostride, dq, dm, q_ostride, m_istride, jb_width, start, stop):
    # work item w = (batch b, tile row tq). For batch b (multi-index over bshape: input offset via
    # bistride, output offset via bostride), the (q, m) plane is transposed:
    #   out[ooff + i * q_ostride + j] = x[ioff + i + j * m_istride],  i < dq, j < dm
    # Inner loops index contiguous (output row) and strided (input column) views with non-negative loop
    # indices, so Numba emits no wraparound checks. Tiles are TILE x TILE, processed in column blocks of
    # jb_width: 8 when the input column stride is a multiple of 4 KiB (its lines would all fall into the
    # same cache set), else TILE.
    nb = bshape.shape[0]
    ntq = (dq + TILE - 1) // TILE
    for w in range(start, stop):
        b = w // ntq
        tq = w - b * ntq
        rem = b
        ioff = 0
        ooff = 0
        for k in range(nb - 1, -1, -1):
            d = bshape[k]
            idx = rem % d
            rem //= d
            ioff += idx * bistride[k]
            ooff += idx * bostride[k]
        i0 = tq * TILE
        i1 = min(i0 + TILE, dq)
        for j0 in range(0, dm, TILE):
            j1 = min(j0 + TILE, dm)
            for jb in range(j0, j1, jb_width):
                je = min(jb + jb_width, j1)
                n = je - jb
                for i in range(i0, i1):
                    o = ooff + i * q_ostride + jb
                    s = ioff + i + jb * m_istride
                    orow = out[o:o + n]
                    xcol = x[s:s + (n - 1) * m_istride + 1:m_istride]
                    for j in range(n):
                        orow[j] = xcol[j]


@njit(**NJIT_PARALLEL)
def _tiles_par(x, out, bshape, bistride, bostride, dq, dm, q_ostride, m_istride, jb_width, nwork, nchunks):
    for c in prange(nchunks):
        _tiles_range(x, out, bshape, bistride, bostride, dq, dm, q_ostride, m_istride, jb_width,
                     c * nwork // nchunks, (c + 1) * nwork // nchunks)


def transpose_tiles(x, out, bshape, bistride, bostride, dq, dm, q_ostride, m_istride):
    nbatch = int(np.prod(bshape)) if len(bshape) else 1
    nwork = nbatch * ((dq + TILE - 1) // TILE)
    if nwork == 0 or dm == 0:
        return
    jb_width = 8 if (m_istride * x.itemsize) % 4096 == 0 else TILE
    if out.shape[0] >= _config.PARALLEL_MIN_WORK and nwork > 1:
        _tiles_par(x, out, bshape, bistride, bostride, dq, dm, q_ostride, m_istride, jb_width, nwork,
                   min(nwork, 8 * num_threads()))
    else:
        _tiles_range(x, out, bshape, bistride, bostride, dq, dm, q_ostride, m_istride, jb_width, 0, nwork)


_S2, _S3, _S4 = SPLIT_CHANNELS[2], SPLIT_CHANNELS[3], SPLIT_CHANNELS[4]
_J2, _J3, _J4 = JOIN_CHANNELS[2], JOIN_CHANNELS[3], JOIN_CHANNELS[4]


@njit(**NJIT)
def _channels(x, out, nb, npix, nch, split):
    # x, out: flat 32-bit (nb, npix, nch) <-> (nb, nch, npix); split: pixels-major -> planes
    plane = npix
    whole = npix // VW * VW
    for b in range(nb):
        base = b * npix * nch
        if split:
            if nch == 2:
                _S2(npix, out, base, x, base, plane)
            elif nch == 3:
                _S3(npix, out, base, x, base, plane)
            else:
                _S4(npix, out, base, x, base, plane)
            for p in range(whole, npix):
                for c in range(nch):
                    out[base + c * plane + p] = x[base + p * nch + c]
        else:
            if nch == 2:
                _J2(npix, out, base, x, base, plane)
            elif nch == 3:
                _J3(npix, out, base, x, base, plane)
            else:
                _J4(npix, out, base, x, base, plane)
            for p in range(whole, npix):
                for c in range(nch):
                    out[base + p * nch + c] = x[base + c * plane + p]


@njit(**NJIT)
def _split_narrow(x, out, nb, npix, nch):
    # _channels for 8- and 16-bit items, pixels-major -> planes: plain loops, one per channel count, written out
    # channel by channel; LLVM vectorizes them as interleaved groups (~15x faster than the tiled transpose on
    # (4096, 3) bytes)
    for b in range(nb):
        base = b * npix * nch
        src = x[base:base + npix * nch]
        o0 = out[base:base + npix]
        o1 = out[base + npix:base + 2 * npix]
        if nch == 2:
            for p in range(npix):
                o0[p] = src[2 * p]
                o1[p] = src[2 * p + 1]
        elif nch == 3:
            o2 = out[base + 2 * npix:base + 3 * npix]
            for p in range(npix):
                o0[p] = src[3 * p]
                o1[p] = src[3 * p + 1]
                o2[p] = src[3 * p + 2]
        else:
            o2 = out[base + 2 * npix:base + 3 * npix]
            o3 = out[base + 3 * npix:base + 4 * npix]
            for p in range(npix):
                o0[p] = src[4 * p]
                o1[p] = src[4 * p + 1]
                o2[p] = src[4 * p + 2]
                o3[p] = src[4 * p + 3]


@njit(**NJIT)
def _join_narrow(x, out, nb, npix, nch):
    # the inverse of _split_narrow: planes -> pixels-major
    for b in range(nb):
        base = b * npix * nch
        dst = out[base:base + npix * nch]
        i0 = x[base:base + npix]
        i1 = x[base + npix:base + 2 * npix]
        if nch == 2:
            for p in range(npix):
                dst[2 * p] = i0[p]
                dst[2 * p + 1] = i1[p]
        elif nch == 3:
            i2 = x[base + 2 * npix:base + 3 * npix]
            for p in range(npix):
                dst[3 * p] = i0[p]
                dst[3 * p + 1] = i1[p]
                dst[3 * p + 2] = i2[p]
        else:
            i2 = x[base + 2 * npix:base + 3 * npix]
            i3 = x[base + 3 * npix:base + 4 * npix]
            for p in range(npix):
                dst[4 * p] = i0[p]
                dst[4 * p + 1] = i1[p]
                dst[4 * p + 2] = i2[p]
                dst[4 * p + 3] = i3[p]


def _few_channels(cshape, cperm, itemsize: int):
    """(nb, npix, nch, split) when the transpose moves 2 to 4 interleaved channels of 8-, 16- or 32-bit items
    to planes (NHWC -> NCHW of an image) or back; else None."""
    if itemsize not in (1, 2, 4) or cperm not in ((1, 0), (0, 2, 1)):
        return None
    nb = cshape[0] if len(cshape) == 3 else 1
    a, b = cshape[-2], cshape[-1]
    if b in (2, 3, 4) and a >= VW:
        return nb, a, b, True
    if a in (2, 3, 4) and b >= VW:
        return nb, b, a, False
    return None


def make_transpose(shape, perm, itemsize: int = 0):
    """Prepare a transpose of a C-contiguous array of ``shape`` by ``perm``.

    Returns ``(fn, kind)``: ``fn(x, out)`` takes flat bit views (see :func:`bits_view`) of the input and the
    preallocated output; ``kind`` is "copy", "rows", "tiles" or, with ``itemsize`` 1, 2 or 4, "channels" (2 to 4
    interleaved channels to planes or back: vector shuffles, :data:`~edgedl.kernels.cpu.vec.SPLIT_CHANNELS` for
    32-bit items, loops LLVM vectorizes for narrower ones).
    """
    cshape, cperm = collapse_transpose(tuple(shape), tuple(perm))
    n = len(cshape)
    if n <= 1 or cperm == tuple(range(n)):
        def copy(x, out):
            np.copyto(out, x)
        return copy, "copy"
    few = _few_channels(cshape, cperm, itemsize)
    if few is not None:
        nb, npix, nch, split = few
        if itemsize == 4:
            def channels(x, out):
                _channels(x, out, nb, npix, nch, split)
        else:
            narrow = _split_narrow if split else _join_narrow

            def channels(x, out):
                narrow(x, out, nb, npix, nch)
        return channels, "channels"
    istr = _strides(cshape)
    oshape = [cshape[a] for a in cperm]
    ostr = _strides(oshape)
    if cperm[-1] == n - 1:
        length = cshape[n - 1]
        bshape = np.array(oshape[:-1], np.int64)
        bstride = np.array([istr[a] for a in cperm[:-1]], np.int64)

        def rows(x, out):
            transpose_rows(x, out, bshape, bstride, length)
        return rows, "rows"
    m = n - 1                      # output's last axis
    q = cperm.index(n - 1)         # output axis reading the input's last axis (stride 1)
    batch = [k for k in range(n) if k not in (q, m)]
    bshape = np.array([oshape[k] for k in batch], np.int64)
    bistride = np.array([istr[cperm[k]] for k in batch], np.int64)
    bostride = np.array([ostr[k] for k in batch], np.int64)
    dq, dm = oshape[q], oshape[m]
    q_ostride, m_istride = ostr[q], istr[cperm[m]]

    def tiles(x, out):
        transpose_tiles(x, out, bshape, bistride, bostride, dq, dm, q_ostride, m_istride)
    return tiles, "tiles"


__all__ = ["TILE", "bits_view", "collapse_transpose", "make_transpose", "transpose_rows", "transpose_tiles"]
