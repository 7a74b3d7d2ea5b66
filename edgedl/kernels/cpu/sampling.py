"""Sampling kernels (float32): 2-D GridSample and the deformable im2col of DeformConv.

GridSample (X (N, C, H, W), grid (N, Ho, Wo, 2) holding (x, y) in [-1, 1]) maps each grid value to a pixel
coordinate, per axis of size d::

    align_corners=1:  v = (g + 1) / 2 * (d - 1)        bounds [0, d - 1]
    align_corners=0:  v = ((g + 1) * d - 1) / 2        bounds [-0.5, d - 0.5]

(float32, no contraction: the bits of onnx's reference). ``nearest`` rounds v half to even first. A v outside
the bounds is clamped into [0, d - 1] (``border``; not in cubic mode, where only the taps are clamped, as in
PyTorch and onnxruntime: onnx's reference clamps v too) or reflected at the bounds until inside
(``reflection``).
Taps: nearest 1 (``int(v)``), linear 2 (``floor(v)`` + 0, 1; weights ``1 - t, t`` with ``t = v - floor(v)``),
cubic 4 (``floor(v)`` - 1 .. + 2, Keys' coefficients with A = -0.75). A tap index outside [0, d) reads 0
(``zeros``), the nearest border pixel (``border``) or its reflection (``reflection``). The output is
``sum over taps of wy * wx * X[n, c, iy, ix]``. Coordinates that are NaN or beyond +-1e9 are clamped to
-+1e9 first (so an index never overflows). Work items are blocks of output pixels of one image: their taps
(int32 indices into the plane, -1 for none, and weights) are computed once, then applied channel by channel.

DeformConv (:func:`deform_sample` + :func:`deform_columns`): for image n, offset group g, kernel tap
k = (i, j) and output pixel p = (oy, ox) the sampling point is
``(oy * sh - ph + i * dh + off[n, 2 (g K + k), p], ox * sw - pw + j * dw + off[n, 2 (g K + k) + 1, p])``,
read bilinearly with zeros outside the image and scaled by ``mask[n, g K + k, p]``; the columns
``cols[c K + k, p]`` (channel c in offset group g) then meet the weights in one GEMM per group (the op).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_EXACT, NJIT_EXACT_PARALLEL, NJIT_PARALLEL, num_threads

NEAREST, LINEAR, CUBIC = 0, 1, 2
ZEROS, BORDER, REFLECTION = 0, 1, 2
#: coordinates are clamped to +-BIG (NaN to -BIG) before any integer conversion
BIG = 1e9
_BLOCK = 512


# --- GridSample ----------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT_EXACT)
def _reflect(v, lo, hi):
    # reflect v at lo and hi until inside [lo, hi] (float32); lo when the range is empty
    rng = hi - lo
    if rng <= 0:
        return lo
    if v < lo:
        dx = lo - v
        k = int(dx / rng)
        r = dx - np.float32(k) * rng
        return lo + r if k % 2 == 0 else hi - r
    if v > hi:
        dx = v - hi
        k = int(dx / rng)
        r = dx - np.float32(k) * rng
        return hi - r if k % 2 == 0 else lo + r
    return v


@numba.njit(inline="always", **NJIT_EXACT)
def _rint(v):
    # round half to even (numpy.rint)
    f = math.floor(v)
    d = v - f
    if d > 0.5 or (d == 0.5 and f % 2 != 0):
        f += 1.0
    return np.float32(f)


@numba.njit(inline="always", **NJIT_EXACT)
def _fetch(i, d, pad, lo, hi):
    # (index, valid) of tap i on an axis of size d
    if i >= 0 and i < d:
        return i, True
    if pad == ZEROS:
        return -1, False
    if pad == BORDER:
        return (0 if i < 0 else d - 1), True
    j = int(_reflect(np.float32(i), lo, hi))
    return min(max(j, 0), d - 1), True


@numba.njit(inline="always", **NJIT_EXACT)
def _cubic(x, c):
    # Keys' cubic convolution coefficients (A = -0.75) for a fraction x in [0, 1), float32
    a = np.float32(-0.75)
    one = np.float32(1.0)
    two = np.float32(2.0)
    x1 = x + one
    c[0] = ((a * x1 - np.float32(5.0) * a) * x1 + np.float32(8.0) * a) * x1 - np.float32(4.0) * a
    c[1] = ((a + two) * x - (a + np.float32(3.0))) * x * x + one
    y = one - x
    c[2] = ((a + two) * y - (a + np.float32(3.0))) * y * y + one
    z = two - x
    c[3] = ((a * z - np.float32(5.0) * a) * z + np.float32(8.0) * a) * z - np.float32(4.0) * a


@numba.njit(**NJIT_EXACT)
def _axis_taps(g, d, mode, pad, align, idx, wt, coef):
    # the taps of normalized coordinate g on an axis of size d: idx (int64; -1 for a tap outside the axis with
    # zeros padding), wt (float32); returns the tap count
    df = np.float32(d)
    one = np.float32(1.0)
    if align:
        v = (g + one) / np.float32(2.0) * (df - one)
        lo = np.float32(0.0)
        hi = df - one
    else:
        v = ((g + one) * df - one) / np.float32(2.0)
        lo = np.float32(-0.5)
        hi = df - np.float32(0.5)
    if not v >= -BIG:
        v = np.float32(-BIG)
    elif v > BIG:
        v = np.float32(BIG)
    if mode == NEAREST:
        v = _rint(v)
    if v < lo or v > hi:
        if pad == BORDER and mode != CUBIC:
            v = min(max(v, np.float32(0.0)), df - one)
        elif pad == REFLECTION:
            v = _reflect(v, lo, hi)
    if mode == NEAREST:
        i, ok = _fetch(int(v), d, pad, lo, hi)
        idx[0] = i
        wt[0] = one
        return 1
    f = math.floor(v)
    i0 = int(f)
    t = v - np.float32(f)
    if mode == LINEAR:
        coef[0] = one - t
        coef[1] = t
        ntap = 2
        first = i0
    else:
        _cubic(t, coef)
        ntap = 4
        first = i0 - 1
    for k in range(ntap):
        i, ok = _fetch(first + k, d, pad, lo, hi)
        idx[k] = i
        wt[k] = coef[k]
    return ntap


@numba.njit(**NJIT_EXACT)
def _gs2d_items(x, h, w, grid, y, mode, pad, align, nblocks, q0, q1):
    # x (N, C, H * W), grid (N, P, 2), y (N, C, P) float32; work item q = (n, block of _BLOCK pixels)
    nc = x.shape[1]
    npix = grid.shape[1]
    ntap = 1 if mode == NEAREST else (2 if mode == LINEAR else 4)
    kk = ntap * ntap
    tidx = np.empty((_BLOCK, kk), np.int32)
    twt = np.empty((_BLOCK, kk), np.float32)
    yi = np.empty(4, np.int64)
    yw = np.empty(4, np.float32)
    xi = np.empty(4, np.int64)
    xw = np.empty(4, np.float32)
    coef = np.empty(4, np.float32)
    for q in range(q0, q1):
        n = q // nblocks
        p0 = (q - n * nblocks) * _BLOCK
        p1 = min(p0 + _BLOCK, npix)
        for p in range(p0, p1):
            _axis_taps(grid[n, p, 1], h, mode, pad, align, yi, yw, coef)
            _axis_taps(grid[n, p, 0], w, mode, pad, align, xi, xw, coef)
            t = 0
            for a in range(ntap):
                for b in range(ntap):
                    # a tap outside the image (zeros padding) reads nothing: index -1
                    tidx[p - p0, t] = yi[a] * w + xi[b] if yi[a] >= 0 and xi[b] >= 0 else -1
                    twt[p - p0, t] = yw[a] * xw[b]
                    t += 1
        cnt = p1 - p0
        for c in range(nc):
            plane = x[n, c]
            out = y[n, c, p0:p1]
            if kk == 1:  # nearest: the pixel itself
                for q2 in range(cnt):
                    i = tidx[q2, 0]
                    out[q2] = plane[i] if i >= 0 else np.float32(0.0)
            elif kk == 4:
                for q2 in range(cnt):
                    i0 = tidx[q2, 0]
                    i1 = tidx[q2, 1]
                    i2 = tidx[q2, 2]
                    i3 = tidx[q2, 3]
                    if (i0 | i1 | i2 | i3) >= 0:  # every tap inside: no branch per tap
                        out[q2] = (twt[q2, 0] * plane[i0] + twt[q2, 1] * plane[i1]) + (
                            twt[q2, 2] * plane[i2] + twt[q2, 3] * plane[i3])
                        continue
                    acc = np.float32(0.0)
                    i = tidx[q2, 0]
                    if i >= 0:
                        acc += twt[q2, 0] * plane[i]
                    i = tidx[q2, 1]
                    if i >= 0:
                        acc += twt[q2, 1] * plane[i]
                    i = tidx[q2, 2]
                    if i >= 0:
                        acc += twt[q2, 2] * plane[i]
                    i = tidx[q2, 3]
                    if i >= 0:
                        acc += twt[q2, 3] * plane[i]
                    out[q2] = acc
            else:
                for q2 in range(cnt):
                    acc = np.float32(0.0)
                    for t in range(kk):
                        i = tidx[q2, t]
                        if i >= 0:
                            acc += twt[q2, t] * plane[i]
                    out[q2] = acc


@numba.njit(**NJIT_EXACT_PARALLEL)
def _gs2d_par(x, h, w, grid, y, mode, pad, align, nblocks, nitems, nchunks):
    for c in prange(nchunks):
        _gs2d_items(x, h, w, grid, y, mode, pad, align, nblocks, c * nitems // nchunks, (c + 1) * nitems // nchunks)


def grid_sample_2d(x: np.ndarray, grid: np.ndarray, y: np.ndarray, mode: int, pad: int, align: bool) -> None:
    """y (N, C, Ho, Wo) = GridSample of x (N, C, H, W) at grid (N, Ho, Wo, 2), all float32 C-contiguous."""
    n, c, h, w = x.shape
    npix = grid.shape[1] * grid.shape[2]
    if n == 0 or npix == 0 or c == 0:
        return
    if h == 0 or w == 0:  # nothing to read: every tap is out of range
        y[...] = 0.0
        return
    g = grid.reshape(n, npix, 2)
    x3 = x.reshape(n, c, h * w)
    y3 = y.reshape(n, c, npix)
    nblocks = -(-npix // _BLOCK)
    nitems = n * nblocks
    ntap = 1 if mode == NEAREST else (2 if mode == LINEAR else 4)
    work = n * c * npix * ntap * ntap
    nt = num_threads()
    if work >= _config.PARALLEL_MIN_WORK and nitems > 1 and nt > 1:
        _gs2d_par(x3, h, w, g, y3, mode, pad, align, nblocks, nitems, min(nitems, 4 * nt))
    else:
        _gs2d_items(x3, h, w, g, y3, mode, pad, align, nblocks, 0, nitems)


# --- DeformConv ---------------------------------------------------------------------------------------------
@numba.njit(**NJIT)
def _deform_sample_range(off, mask, has_mask, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ow, idx, wts, r0, r1):
    # off (2 * G * K, P), mask (G * K, P) of one image; rows r = g * K + k; idx (G * K, P, 4) int64 flat pixel
    # indices (-1 for taps outside the image), wts (G * K, P, 4) float32 bilinear weights times the mask
    npix = off.shape[1]
    kk = kh * kw
    hf = np.float32(h)
    wf = np.float32(w)
    for r in range(r0, r1):
        k = r % kk
        ki = k // kw
        kj = k - ki * kw
        for p in range(npix):
            oy = p // ow
            ox = p - oy * ow
            sy = np.float32(oy * sh - ph + ki * dh) + off[2 * r, p]
            sx = np.float32(ox * sw - pw + kj * dw) + off[2 * r + 1, p]
            m = mask[r, p] if has_mask else np.float32(1.0)
            for t in range(4):
                idx[r, p, t] = -1  # a tap outside the image reads nothing
                wts[r, p, t] = np.float32(0.0)
            if not (sy > np.float32(-1.0) and sy < hf and sx > np.float32(-1.0) and sx < wf):
                continue  # every tap outside (NaN included)
            fy = math.floor(sy)
            fx = math.floor(sx)
            y0 = int(fy)
            x0 = int(fx)
            ty = sy - np.float32(fy)
            tx = sx - np.float32(fx)
            for a in range(2):
                yy = y0 + a
                if yy < 0 or yy >= h:
                    continue
                wy = ty if a == 1 else np.float32(1.0) - ty
                for b in range(2):
                    xx = x0 + b
                    if xx < 0 or xx >= w:
                        continue
                    wx = tx if b == 1 else np.float32(1.0) - tx
                    idx[r, p, 2 * a + b] = yy * w + xx
                    wts[r, p, 2 * a + b] = wy * wx * m


@numba.njit(**NJIT_PARALLEL)
def _deform_sample_par(off, mask, has_mask, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ow, idx, wts, nchunks):
    nrows = off.shape[0] // 2
    for c in prange(nchunks):
        _deform_sample_range(off, mask, has_mask, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ow, idx, wts,
                             c * nrows // nchunks, (c + 1) * nrows // nchunks)


@numba.njit(**NJIT)
def _deform_cols_range(x, idx, wts, cols, cpg, kk, r0, r1):
    # x (C, H * W) of one image; cols (C * K, P): row r = c * K + k reads taps idx / wts[(c // cpg) * K + k]
    npix = cols.shape[1]
    for r in range(r0, r1):
        c = r // kk
        k = r - c * kk
        src = (c // cpg) * kk + k
        plane = x[c]
        row = cols[r]
        ti = idx[src]
        tw = wts[src]
        for p in range(npix):
            acc = np.float32(0.0)
            for t in range(4):
                i = ti[p, t]
                if i >= 0:
                    acc += tw[p, t] * plane[i]
            row[p] = acc


@numba.njit(**NJIT_PARALLEL)
def _deform_cols_par(x, idx, wts, cols, cpg, kk, nchunks):
    nrows = cols.shape[0]
    for c in prange(nchunks):
        _deform_cols_range(x, idx, wts, cols, cpg, kk, c * nrows // nchunks, (c + 1) * nrows // nchunks)


def _chunks(work: int, units: int) -> int:
    nt = num_threads()
    if work < _config.PARALLEL_MIN_WORK or units < 2 or nt < 2:
        return 0
    return min(units, 4 * nt)


def deform_sample(off: np.ndarray, mask: np.ndarray | None, h: int, w: int, kernel, strides, pads, dilations, ow: int,
                  idx: np.ndarray, wts: np.ndarray) -> None:
    """Bilinear taps of one image's sampling points: ``off`` (2 G K, P), ``mask`` (G K, P) or None ->
    ``idx`` (G K, P, 4) int64 and ``wts`` (G K, P, 4) float32."""
    kh, kw = kernel
    has_mask = mask is not None
    m = mask if has_mask else off[:1]
    args = (off, m, has_mask, h, w, kh, kw, strides[0], strides[1], pads[0], pads[1], dilations[0], dilations[1], ow,
            idx, wts)
    nrows = off.shape[0] // 2
    nch = _chunks(nrows * off.shape[1] * 8, nrows)
    if nch:
        _deform_sample_par(*args, nch)
    else:
        _deform_sample_range(*args, 0, nrows)


def deform_columns(x: np.ndarray, idx: np.ndarray, wts: np.ndarray, cols: np.ndarray, channels_per_group: int,
                   taps: int) -> None:
    """cols (C K, P) from one image x (C, H W) and its taps (:func:`deform_sample`)."""
    nrows = cols.shape[0]
    nch = _chunks(nrows * cols.shape[1] * 4, nrows)
    if nch:
        _deform_cols_par(x, idx, wts, cols, channels_per_group, taps, nch)
    else:
        _deform_cols_range(x, idx, wts, cols, channels_per_group, taps, 0, nrows)
