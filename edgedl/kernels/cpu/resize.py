"""Resize kernels (float32). Index and weight tables are computed once, in the op's prepare step.

* :func:`resize_nearest_2d` and :func:`resize_linear_2d`: NCHW inputs resized over H and W in one pass
  (the CNN upsampling case), rows of the output as work items.
* :func:`resize_axis`: one separable pass over one axis of an (outer, din, inner) view with K taps per
  output coordinate, ``out[o, j, i] = sum_k w[j, k] * x[o, idx[j, k], i]``. Chained axis by axis it does
  any rank, any mode (nearest, linear, cubic, antialiased filters with wider footprints).

All arrays are flat C-contiguous float32; weights float32; index tables (already clamped into range) are
int64 where they enter offset arithmetic and uint64 where they only index a row view (column tables): Numba
then emits no negative-index wraparound check, and inner loops over views stay vectorizable.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads


def _chunks(nwork: int) -> int:
    return min(nwork, 8 * num_threads())


# --- nearest, 2-D -------------------------------------------------------------------------------------
@njit(**NJIT)
def _nearest2d_range(x, out, hidx, widx, h, w, oh, ow, start, stop):
    # x is (NC, H, W), out (NC, OH, OW); work item r = (nc, i) is output row i of plane nc
    for r in range(start, stop):
        nc = r // oh
        i = r - nc * oh
        dst = r * ow
        orow = out[dst:dst + ow]
        if r > start and i > 0 and hidx[i] == hidx[i - 1]:
            prev = out[dst - ow:dst]  # same source row as the previous output row: a contiguous copy
            for j in range(ow):
                orow[j] = prev[j]
            continue
        src = (nc * h + hidx[i]) * w
        xrow = x[src:src + w]
        for j in range(ow):
            orow[j] = xrow[widx[j]]  # widx is unsigned: no wraparound check


@njit(**NJIT_PARALLEL)
def _nearest2d_par(x, out, hidx, widx, h, w, oh, ow, nwork, nchunks):
    for c in prange(nchunks):
        _nearest2d_range(x, out, hidx, widx, h, w, oh, ow, c * nwork // nchunks, (c + 1) * nwork // nchunks)


def resize_nearest_2d(x, out, hidx, widx, nc, h, w, oh, ow):
    """out[p, i, j] = x[p, hidx[i], widx[j]] for the NC planes p of (NC, H, W) -> (NC, OH, OW)."""
    nwork = nc * oh
    if nwork == 0 or ow == 0:
        return
    if out.shape[0] >= _config.PARALLEL_MIN_WORK and nwork > 1:
        _nearest2d_par(x, out, hidx, widx, h, w, oh, ow, nwork, _chunks(nwork))
    else:
        _nearest2d_range(x, out, hidx, widx, h, w, oh, ow, 0, nwork)


# --- bilinear, 2-D ------------------------------------------------------------------------------------
@njit(**NJIT)
def _hrow(xrow, dst, w0, w1, ww0, ww1, ow):
    # xrow (W,) -> dst (OW,): one input row resized along W (two taps)
    for j in range(ow):
        dst[j] = ww0[j] * xrow[w0[j]] + ww1[j] * xrow[w1[j]]  # unsigned column indices: no wraparound checks


@njit(**NJIT)
def _linear2d_range(x, out, h0, h1, hw0, hw1, w0, w1, ww0, ww1, h, w, oh, ow, start, stop):
    # x is (NC, H, W), out (NC, OH, OW); output row r = (nc, i) blends input rows h0[i] and h1[i], each first
    # resized along W. The two W-resized rows are cached (ra holds source row ka, rb row kb): consecutive
    # output rows mostly share their source rows, so each input row is resized along W about once, and the
    # per-output work is the contiguous blend a0 * top + a1 * bottom (the same arithmetic, in the same order,
    # as blending the four taps per output pixel)
    ra = np.empty(ow, np.float32)
    rb = np.empty(ow, np.float32)
    ka = -1
    kb = -1
    for r in range(start, stop):
        nc = r // oh
        i = r - nc * oh
        s0 = nc * h + h0[i]
        s1 = nc * h + h1[i]
        if ka != s0:
            if kb == s0:
                ra, rb = rb, ra
                ka, kb = kb, ka
            else:
                _hrow(x[s0 * w:(s0 + 1) * w], ra, w0, w1, ww0, ww1, ow)
                ka = s0
        if kb != s1:
            _hrow(x[s1 * w:(s1 + 1) * w], rb, w0, w1, ww0, ww1, ow)
            kb = s1
        orow = out[r * ow:(r + 1) * ow]
        a0 = hw0[i]
        a1 = hw1[i]
        for j in range(ow):
            orow[j] = a0 * ra[j] + a1 * rb[j]


@njit(**NJIT_PARALLEL)
def _linear2d_par(x, out, h0, h1, hw0, hw1, w0, w1, ww0, ww1, h, w, oh, ow, nwork, nchunks):
    for c in prange(nchunks):
        _linear2d_range(x, out, h0, h1, hw0, hw1, w0, w1, ww0, ww1, h, w, oh, ow,
                        c * nwork // nchunks, (c + 1) * nwork // nchunks)


def resize_linear_2d(x, out, h0, h1, hw0, hw1, w0, w1, ww0, ww1, nc, h, w, oh, ow):
    """Bilinear (NC, H, W) -> (NC, OH, OW) with two taps per axis (indices h0/h1, w0/w1; weights hw*, ww*)."""
    nwork = nc * oh
    if nwork == 0 or ow == 0:
        return
    if out.shape[0] * 4 >= _config.PARALLEL_MIN_WORK and nwork > 1:
        _linear2d_par(x, out, h0, h1, hw0, hw1, w0, w1, ww0, ww1, h, w, oh, ow, nwork, _chunks(nwork))
    else:
        _linear2d_range(x, out, h0, h1, hw0, hw1, w0, w1, ww0, ww1, h, w, oh, ow, 0, nwork)


# --- one separable pass -------------------------------------------------------------------------------
@njit(**NJIT)
def _axis_range(x, out, idx, wts, din, dout, inner, start, stop):
    # x is (outer, din, inner), out (outer, dout, inner), idx/wts (dout, K); work item r = (o, j)
    ntap = idx.shape[1]
    for r in range(start, stop):
        o = r // dout
        j = r - o * dout
        dst = r * inner
        orow = out[dst:dst + inner]
        base = o * din * inner
        src = base + idx[j, 0] * inner
        xrow = x[src:src + inner]
        c = wts[j, 0]
        for i in range(inner):
            orow[i] = c * xrow[i]
        for k in range(1, ntap):
            src = base + idx[j, k] * inner
            xrow = x[src:src + inner]
            c = wts[j, k]
            for i in range(inner):
                orow[i] += c * xrow[i]


@njit(**NJIT)
def _axis_last_range(x, out, uidx, wts, din, dout, start, stop):
    # resize of the last axis (inner == 1): x is (outer, din), out (outer, dout); work item = one row o;
    # uidx is the unsigned (uint64) copy of the index table
    ntap = uidx.shape[1]
    for o in range(start, stop):
        xrow = x[o * din:(o + 1) * din]
        orow = out[o * dout:(o + 1) * dout]
        for j in range(dout):
            acc = numba.float32(0.0)
            for k in range(ntap):
                acc += wts[j, k] * xrow[uidx[j, k]]
            orow[j] = acc


@njit(**NJIT_PARALLEL)
def _axis_par(x, out, idx, wts, din, dout, inner, nwork, nchunks):
    for c in prange(nchunks):
        _axis_range(x, out, idx, wts, din, dout, inner, c * nwork // nchunks, (c + 1) * nwork // nchunks)


@njit(**NJIT_PARALLEL)
def _axis_last_par(x, out, uidx, wts, din, dout, nwork, nchunks):
    for c in prange(nchunks):
        _axis_last_range(x, out, uidx, wts, din, dout, c * nwork // nchunks, (c + 1) * nwork // nchunks)


def resize_axis(x, out, idx, wts, outer, din, dout, inner):
    """One separable pass: (outer, din, inner) -> (outer, dout, inner) with the (dout, K) tap tables.

    ``idx`` is int64 for inner > 1 and uint64 for inner == 1 (then it only indexes row views)."""
    if outer == 0 or dout == 0 or inner == 0:
        return
    par = out.shape[0] * idx.shape[1] >= _config.PARALLEL_MIN_WORK
    if inner == 1:
        if par and outer > 1:
            _axis_last_par(x, out, idx, wts, din, dout, outer, _chunks(outer))
        else:
            _axis_last_range(x, out, idx, wts, din, dout, 0, outer)
        return
    nwork = outer * dout
    if par and nwork > 1:
        _axis_par(x, out, idx, wts, din, dout, inner, nwork, _chunks(nwork))
    else:
        _axis_range(x, out, idx, wts, din, dout, inner, 0, nwork)


__all__ = ["resize_axis", "resize_linear_2d", "resize_nearest_2d"]
