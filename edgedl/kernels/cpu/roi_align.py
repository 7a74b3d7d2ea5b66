"""RoiAlign kernels, float32.

Shapes: ``x`` (N * C, H * W) feature planes, ``rois`` (R, 4) as (x1, y1, x2, y2) in input coordinates,
``batch`` (R,) int64 image index per roi, ``y`` (R, C, OH, OW).

Three steps:

* :func:`roi_setup` (serial, O(R)): per roi, the start corner and bin size in feature-map coordinates and the
  sampling grid, computed in float32 exactly as onnxruntime (and onnx's reference) do::

      start = roi[:2] * spatial_scale - offset          (offset 0.5 with half_pixel, else 0)
      size  = (roi[2:] - roi[:2]) * spatial_scale       (at least 1 without half_pixel)
      bin   = size / (OH, OW)
      grid  = sampling_ratio if > 0 else ceil(bin)      (samples per bin along each axis)

  It validates the data the later steps trust: the batch index in [0, N), finite coordinates, and a bounded
  number of samples per roi (in all, and along each axis); it returns the first offending roi with a code
  instead of raising.
* :func:`roi_tables` (serial, O(R * (OH * grid_h + OW * grid_w))): the separable sample tables of every roi, one
  entry per row sample and one per column sample: a sample at ``start + p * bin + (i + 0.5) * bin / grid``
  outside [-1, size] contributes 0 (zero weights on neighbour 0, so the pooling loops need no branch; as in
  onnxruntime, an Inf / NaN at that neighbour would still propagate); inside it is clamped to [0, size - 1]
  and gets its two neighbours and their linear weights. Rows and columns combine into the bilinear weights
  ``hy * hx, hy * lx, ly * hx, ly * lx``.
* :func:`roi_pool_units` / :func:`roi_pool_parallel`: per (roi, channel) unit, every bin of the output. ``avg``:
  the sum of the bin's samples / (grid_h * grid_w) (each run of grid_w column samples summed in float32, the
  runs in float64); ``max``: the maximum over the samples of the largest of the four *weighted* neighbour
  terms, which is what onnxruntime and onnx's reference compute (and the onnx test data expects), not the
  maximum of the interpolated values. Row samples are the outer loop, so a row pair of the plane serves every
  column sample of the bin row.

The geometry (:func:`roi_setup`, :func:`roi_tables`) is compiled without fast-math and is only ever called from
Python: float32 operations in the written order, as numpy and onnxruntime evaluate them, so sample positions and
counts match theirs exactly (a multiply-add contracted into an FMA moves a position by an ulp, which on a
200-pixel map changes interpolated values at the 1e-4 level). A callee compiled inside a fast-math kernel takes
the caller's flags, hence the separate table pass.

Each parallel chunk owns a contiguous range of (roi, channel) units of about equal work.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from .config import NJIT, NJIT_EXACT, NJIT_PARALLEL

#: roi_setup status codes (status = roi * 4 + code; -1: every roi is fine)
BAD_BATCH = 1
BAD_COORD = 2
TOO_MANY_SAMPLES = 3


@numba.njit(**NJIT_EXACT)
def roi_setup(rois, batch, n_batch, oh, ow, scale, offset, clamp_size, sampling_ratio, max_samples, max_axis, geo,
              grid):
    # rois (R, 4) f32, batch (R,) i64 -> geo (R, 4) f32 (start_h, start_w, bin_h, bin_w), grid (R, 2) i64
    # returns -1, or roi * 4 + code for the first bad roi
    one = np.float32(1.0)
    for r in range(rois.shape[0]):
        b = batch[r]
        if b < 0 or b >= n_batch:
            return r * 4 + BAD_BATCH
        x1 = rois[r, 0]
        y1 = rois[r, 1]
        x2 = rois[r, 2]
        y2 = rois[r, 3]
        if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
            return r * 4 + BAD_COORD
        sw = x1 * scale - offset
        sh = y1 * scale - offset
        ew = x2 * scale - offset
        eh = y2 * scale - offset
        rw = ew - sw
        rh = eh - sh
        if clamp_size:
            rw = rw if rw > one else one
            rh = rh if rh > one else one
        bh = rh / np.float32(oh)
        bw = rw / np.float32(ow)
        if not (math.isfinite(bh) and math.isfinite(bw)):
            return r * 4 + BAD_COORD
        if sampling_ratio > 0:
            gh = sampling_ratio
            gw = sampling_ratio
        else:
            qh = rh / np.float32(oh)
            qw = rw / np.float32(ow)
            if qh > max_samples or qw > max_samples:  # compared as floats: ceil of a huge value overflows
                return r * 4 + TOO_MANY_SAMPLES
            gh = int(math.ceil(qh)) if qh > 0 else 0
            gw = int(math.ceil(qw)) if qw > 0 else 0
        if gh * oh > max_axis or gw * ow > max_axis or gh * gw * oh * ow > max_samples:
            return r * 4 + TOO_MANY_SAMPLES
        geo[r, 0] = sh
        geo[r, 1] = sw
        geo[r, 2] = bh
        geo[r, 3] = bw
        grid[r, 0] = gh
        grid[r, 1] = gw
    return -1


@numba.njit(**NJIT_EXACT)
def roi_tables(geo, grid, h, w, oh, ow, yoff, xoff, ylo, yhi, yl, yh, yok, xlo, xhi, xl, xh, xok):
    # per roi r: rows yoff[r]:yoff[r + 1] (OH * grid_h samples) and columns xoff[r]:xoff[r + 1] (OW * grid_w) of
    # the sample tables: lo / hi neighbour index, the weights of hi (yl / xl) and of lo (yh / xh), ok (0: the
    # sample lies outside [-1, size] and contributes 0). Called from Python only, so it is always compiled
    # without fast-math (a callee compiled inside a fast-math kernel would be contracted).
    one = np.float32(1.0)
    for r in range(geo.shape[0]):
        for axis in range(2):
            if axis == 0:
                start, step, n_bins, g, limit, k = geo[r, 0], geo[r, 2], oh, grid[r, 0], h, yoff[r]
                lo, hi, wl, wh, ok = ylo, yhi, yl, yh, yok
            else:
                start, step, n_bins, g, limit, k = geo[r, 1], geo[r, 3], ow, grid[r, 1], w, xoff[r]
                lo, hi, wl, wh, ok = xlo, xhi, xl, xh, xok
            for p in range(n_bins):
                for i in range(g):
                    v = start + np.float32(p) * step + np.float32(i + 0.5) * step / np.float32(g)
                    if not (v >= np.float32(-1.0) and v <= np.float32(limit)):  # NaN-safe
                        ok[k] = 0
                        lo[k] = 0
                        hi[k] = 0
                        wl[k] = 0.0
                        wh[k] = 0.0
                        k += 1
                        continue
                    if v < np.float32(0.0):
                        v = np.float32(0.0)
                    low = int(v)
                    if low >= limit - 1:
                        low = limit - 1
                        high = limit - 1
                        v = np.float32(low)
                    else:
                        high = low + 1
                    frac = v - np.float32(low)
                    ok[k] = 1
                    lo[k] = low
                    hi[k] = high
                    wl[k] = frac
                    wh[k] = one - frac
                    k += 1


@numba.njit(**NJIT)
def _pool_avg(plane, w, oh, ow, gh, gw, ylo, yhi, yl, yh, yok, xlo, xhi, xl, xh, out, acc):
    # plane (H * W,) f32 of one (image, channel); out (OH, OW) f32; acc (OW,) f64 workspace.
    # Row samples outer: one row pair serves every column sample of the bin row. A column sample outside the
    # map has zero weights (index 0), so no branch in the inner loop; indices are unsigned (no wraparound
    # checks). Each run of gw column samples sums in float32, the runs in float64.
    inv = 1.0 / max(gh * gw, 1)
    for ph in range(oh):
        for pw in range(ow):
            acc[pw] = 0.0
        for iy in range(gh):
            ky = ph * gh + iy
            if yok[ky] == 0:
                continue
            r0 = plane[ylo[ky] * w:(ylo[ky] + 1) * w]
            r1 = plane[yhi[ky] * w:(yhi[ky] + 1) * w]
            hy = yh[ky]
            ly = yl[ky]
            for pw in range(ow):
                run = np.float32(0.0)
                for ix in range(gw):
                    kx = pw * gw + ix
                    c0 = np.uint64(xlo[kx])
                    c1 = np.uint64(xhi[kx])
                    hx = xh[kx]
                    lx = xl[kx]
                    run += ((hy * hx) * r0[c0] + (hy * lx) * r0[c1]) + ((ly * hx) * r1[c0] + (ly * lx) * r1[c1])
                acc[pw] += run
        for pw in range(ow):
            out[ph, pw] = np.float32(acc[pw] * inv)


@numba.njit(**NJIT)
def _pool_max(plane, w, oh, ow, gh, gw, ylo, yhi, yl, yh, xlo, xhi, xl, xh, out, best):
    # as _pool_avg; best (OW,) f32: the running maximum per bin of the largest weighted neighbour term of each
    # sample (a sample outside the map has zero weights: it counts as 0); an empty grid gives 0
    zero = np.float32(0.0)
    for ph in range(oh):
        for pw in range(ow):
            best[pw] = zero
        for iy in range(gh):
            ky = ph * gh + iy
            r0 = plane[ylo[ky] * w:(ylo[ky] + 1) * w]
            r1 = plane[yhi[ky] * w:(yhi[ky] + 1) * w]
            hy = yh[ky]
            ly = yl[ky]
            for pw in range(ow):
                m = best[pw]
                for ix in range(gw):
                    kx = pw * gw + ix
                    c0 = np.uint64(xlo[kx])
                    c1 = np.uint64(xhi[kx])
                    v = (hy * xh[kx]) * r0[c0]
                    t = (hy * xl[kx]) * r0[c1]
                    if t > v:
                        v = t
                    t = (ly * xh[kx]) * r1[c0]
                    if t > v:
                        v = t
                    t = (ly * xl[kx]) * r1[c1]
                    if t > v:
                        v = t
                    if (iy == 0 and ix == 0) or v > m:
                        m = v
                best[pw] = m
        for pw in range(ow):
            out[ph, pw] = best[pw]


@numba.njit(**NJIT)
def roi_pool_units(x, n_c, w, batch, grid, tabs, yoff, xoff, y, is_max, u0, u1):
    # x (N * C, H * W) f32, y (R, C, OH, OW) f32: units u = roi * C + c in [u0, u1); tabs: the roi_tables arrays
    ylo, yhi, yl, yh, yok, xlo, xhi, xl, xh, _xok = tabs
    oh = y.shape[2]
    ow = y.shape[3]
    acc = np.empty(ow, np.float64)
    best = np.empty(ow, np.float32)
    for u in range(u0, u1):
        r = u // n_c
        c = u - r * n_c
        gh = grid[r, 0]
        gw = grid[r, 1]
        a0, a1 = yoff[r], yoff[r + 1]
        b0, b1 = xoff[r], xoff[r + 1]
        plane = x[batch[r] * n_c + c]
        if is_max:
            _pool_max(plane, w, oh, ow, gh, gw, ylo[a0:a1], yhi[a0:a1], yl[a0:a1], yh[a0:a1],
                      xlo[b0:b1], xhi[b0:b1], xl[b0:b1], xh[b0:b1], y[r, c], best)
        else:
            _pool_avg(plane, w, oh, ow, gh, gw, ylo[a0:a1], yhi[a0:a1], yl[a0:a1], yh[a0:a1], yok[a0:a1],
                      xlo[b0:b1], xhi[b0:b1], xl[b0:b1], xh[b0:b1], y[r, c], acc)


@numba.njit(**NJIT_PARALLEL)
def roi_pool_parallel(x, n_c, w, batch, grid, tabs, yoff, xoff, y, is_max, bounds):
    # bounds (nchunks + 1,) i64: chunk k runs units [bounds[k], bounds[k + 1])
    for k in prange(bounds.shape[0] - 1):
        roi_pool_units(x, n_c, w, batch, grid, tabs, yoff, xoff, y, is_max, bounds[k], bounds[k + 1])


def make_tables(geo, grid, h: int, w: int, oh: int, ow: int):
    """(tables tuple, yoff, xoff) of :func:`roi_tables` for validated geo / grid (see roi_setup)."""
    yoff = np.zeros(len(grid) + 1, np.int64)
    xoff = np.zeros(len(grid) + 1, np.int64)
    np.cumsum(grid[:, 0] * oh, out=yoff[1:])
    np.cumsum(grid[:, 1] * ow, out=xoff[1:])
    ny, nx = int(yoff[-1]), int(xoff[-1])
    tabs = (np.empty(ny, np.int64), np.empty(ny, np.int64), np.empty(ny, np.float32), np.empty(ny, np.float32),
            np.empty(ny, np.uint8), np.empty(nx, np.int64), np.empty(nx, np.int64), np.empty(nx, np.float32),
            np.empty(nx, np.float32), np.empty(nx, np.uint8))
    roi_tables(geo, grid, h, w, oh, ow, yoff, xoff, *tabs)
    return tabs, yoff, xoff
