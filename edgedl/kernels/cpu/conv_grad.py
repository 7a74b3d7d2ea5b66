"""Gradients of the 2-D convolution (NCHW float32; 1-D convolutions run as 2-D with a unit height).

For ``y = conv(x, w) + b`` with geometry (strides, pads (top, left, bottom, right), dilations, group), no
gradient path copies or transposes a whole activation:

* depthwise convolutions (one input channel per group, any multiplier): dx and dW together in one pass
  per channel over phase planes, parallel over channels (:mod:`.depthwise_grad`);
* ``dW[g] = sum_n dy[n]_g (M/g x OH*OW) @ im2col(x[n])_g^T`` (:func:`conv2d_weight_grad`) by a dot-product
  ("NT") kernel: 4 x 4 tiles of dW, 16 float32 dot products along the pixels in one pass, vectorized
  along the pixels. Both operands are read in place where their rows are contiguous (dy whenever a block
  is one image; x for a 1x1 stride-1 unpadded convolution); otherwise a block of images is copied into a
  per-thread buffer (dy rows side by side, or im2col rows of x built on the fly). The K blocks (whole
  images) add into dW in a fixed order. Parallel over blocks of dW rows (each dW element is written by one
  thread);
* ``dx``: a 1x1 stride-1 unpadded convolution is one batched GEMM ``dx[n]_g = W_g^T @ dy[n]_g`` on the
  NCHW planes (:class:`.gemm.GemmCall`, W^T packed once per call, dy read in place); any other
  convolution runs, per chunk of images (a column buffer of at most ``DX_COL_FLOATS``), the same GEMM into
  the chunk's columns, then a col2im that writes each input plane from the column entries im2col took from
  it, parallel over (image, channel) planes. Small planes with many dy channels (``FLAT_NPIX``) run one
  GEMM over the chunk, its images side by side, instead of one narrow GEMM per image;
* ``db = sum over n, oy, ox of dy`` (float64 accumulation).

Every output element is computed by one thread with the same operations in the same order for any
thread count, so results are bitwise the same for 1 or N threads.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads
from .depthwise_grad import DepthwiseGradGeometry, copy_s2, depthwise_grads
from .gemm import GemmCall, matrix_geometry, matrix_ktab, pack_a, packed_a_size
from .vec import copy_floats

__all__ = ["im2col", "col2im", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_grads", "depthwise_weight_grad",
           "bias_grad"]

#: floats of one K block of the weight gradient (whole images: max(1, WG_BLOCK // (OH*OW)) per block)
WG_BLOCK = 1024
#: floats of the per-thread copy of dy rows (A) and of im2col rows (B) for one K block
WG_A_FLOATS = 1 << 16
WG_B_FLOATS = 1 << 16
#: floats of the column buffer of one chunk of images of the general input gradient
DX_COL_FLOATS = 1 << 18
#: output planes smaller than this (a GEMM panel, 16 columns), with more dy channels than column rows per
#: group, run the input gradient's GEMM over the whole chunk of images at once (images side by side in
#: the GEMM's columns) instead of one narrow GEMM per image (measured: 1280 -> 112 channels on 3x3
#: planes 0.89 -> 0.54 ms; with fewer dy channels the extra col2im pass costs more than it saves)
FLAT_NPIX = 16
#: output rows narrower than this build im2col rows through a (tap, output) -> pixel table, not row by row
NARROW_OW = 8
_NO_TAPS = np.full((1, 1), -1, np.int64)
_NO_TAPS.setflags(write=False)  # (the same Numba type as the cached, read-only tables)


@numba.njit(inline="always", **NJIT)
def _im2col_row(r, x, col, c0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    # row r = (ci, i, j) of the im2col matrix col (K, N*OH*OW) of images x (N, C, H, W), channels from c0,
    # images side by side
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    ci = r // (kh * kw)
    i = (r // kw) % kh
    j = r % kw
    npix = oh * ow
    for b in range(n):
        plane = x[b, c0 + ci]
        dst = col[r, b * npix:(b + 1) * npix]
        for oy in range(oh):
            y = oy * sh + i * dh - pt
            base = oy * ow
            if y < 0 or y >= h:
                for ox in range(ow):
                    dst[base + ox] = 0.0
                continue
            for ox in range(ow):
                xx = ox * sw + j * dw - pl
                dst[base + ox] = plane[y, xx] if 0 <= xx < w else np.float32(0.0)


@numba.njit(**NJIT)
def _im2col_serial(x, col, c0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    for r in range(col.shape[0]):
        _im2col_row(r, x, col, c0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)


@numba.njit(**NJIT_PARALLEL)
def _im2col_parallel(x, col, c0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    for r in prange(col.shape[0]):
        _im2col_row(r, x, col, c0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)


def im2col(x: np.ndarray, c0: int, cg: int, kernel, strides, dilations, pads, out_hw, col: np.ndarray | None = None):
    """(cg*kH*kW, N*OH*OW) float32 im2col matrix of channels c0..c0+cg of the images ``x`` (N, C, H, W), the
    images' columns side by side."""
    kh, kw = kernel
    oh, ow = out_hw
    if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous or c0 < 0 or c0 + cg > x.shape[1]:
        raise ValueError(f"im2col needs contiguous float32 (N, C, H, W) images with channels {c0}..{c0 + cg}")
    want = (cg * kh * kw, x.shape[0] * oh * ow)
    if col is None:
        col = np.empty(want, np.float32)
    if col.shape != want or not col.flags.c_contiguous:
        raise ValueError(f"col must be a contiguous {want} array")
    fn = _im2col_parallel if col.size >= _config.PARALLEL_MIN_WORK else _im2col_serial
    fn(x, col, c0, kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1], oh, ow)
    return col


# ---------------------------------------------------------------------------------------------------
# weight gradient: dW = sum over K blocks of A (dy rows) @ B (im2col rows)^T
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT)
def _store4(out, o, ldo, rows_left, cols_left, s0, s1, s2, s3, r):
    # out[o + r*ldo + j] += s_j for j < cols_left, if row r is inside (r < rows_left)
    if r < rows_left:
        p = o + r * ldo
        out[p] += s0
        if cols_left > 1:
            out[p + 1] += s1
        if cols_left > 2:
            out[p + 2] += s2
        if cols_left > 3:
            out[p + 3] += s3


@numba.njit(**NJIT)
def _nt_tiles(a, a_off, lda, rows, b, b_off, ldb, cols, k, out, o_off, ldo):
    """out[o_off + r*ldo + j] += sum_{q<k} a[a_off + r*lda + q] * b[b_off + j*ldb + q] (r < rows, j < cols).

    a, b, out: flat float32. 4 x 4 tiles: 16 float32 dot products in one pass over q (LLVM vectorizes it
    along q with vector partial sums); an edge tile repeats its last row / column and stores only the
    valid ones. Each element's sum is the same whatever the tiling around it."""
    for i in range(0, rows, 4):
        a0 = a[a_off + i * lda:]
        a1 = a[a_off + min(i + 1, rows - 1) * lda:]
        a2 = a[a_off + min(i + 2, rows - 1) * lda:]
        a3 = a[a_off + min(i + 3, rows - 1) * lda:]
        for j in range(0, cols, 4):
            b0 = b[b_off + j * ldb:]
            b1 = b[b_off + min(j + 1, cols - 1) * ldb:]
            b2 = b[b_off + min(j + 2, cols - 1) * ldb:]
            b3 = b[b_off + min(j + 3, cols - 1) * ldb:]
            s00 = s01 = s02 = s03 = np.float32(0.0)
            s10 = s11 = s12 = s13 = np.float32(0.0)
            s20 = s21 = s22 = s23 = np.float32(0.0)
            s30 = s31 = s32 = s33 = np.float32(0.0)
            for q in range(k):
                x0 = a0[q]
                x1 = a1[q]
                x2 = a2[q]
                x3 = a3[q]
                y0 = b0[q]
                y1 = b1[q]
                y2 = b2[q]
                y3 = b3[q]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            o = o_off + i * ldo + j
            rl = rows - i
            cl = cols - j
            _store4(out, o, ldo, rl, cl, s00, s01, s02, s03, 0)
            _store4(out, o, ldo, rl, cl, s10, s11, s12, s13, 1)
            _store4(out, o, ldo, rl, cl, s20, s21, s22, s23, 2)
            _store4(out, o, ldo, rl, cl, s30, s31, s32, s33, 3)


@numba.njit(**NJIT)
def _fill_dy_rows(dyf, n0, nbc, row0, rows, mtot, npix, abuf):
    # abuf[r*kk + t*npix + p] = dy[n0 + t, row0 + r, p] (kk = nbc*npix): a block of images side by side;
    # dyf: dy (N, M, OH*OW) flat
    kk = nbc * npix
    for r in range(rows):
        for t in range(nbc):
            copy_floats(abuf, r * kk + t * npix, dyf, ((n0 + t) * mtot + row0 + r) * npix, npix)


@numba.njit(**NJIT)
def _fill_im2col_rows(x, n0, nbc, c0, j0, jn, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, taps, bbuf):
    # bbuf[(r - j0)*kk + t*npix + oy*ow + ox] = x[n0 + t, c0 + ci, oy*sh + i*dh - pt, ox*sw + j*dw - pl]
    # (0 outside the image) for im2col rows r = (ci*kh + i)*kw + j in [j0, j0 + jn); x (N, C, H, W).
    # taps (kh*kw, OH*OW) int64: the flat pixel in the plane of every (tap, output), -1 outside (used for
    # output rows narrower than NARROW_OW, where a loop per row costs more than a table)
    h, w = x.shape[2], x.shape[3]
    npix = oh * ow
    kk = nbc * npix
    if kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and oh == h and ow == w:
        # 1x1, stride 1, no padding: the rows are the planes
        xf = x.reshape(x.size)
        for rr in range(jn):
            for t in range(nbc):
                copy_floats(bbuf, rr * kk + t * npix, xf, ((n0 + t) * x.shape[1] + c0 + j0 + rr) * npix, npix)
        return
    if ow < NARROW_OW:
        for rr in range(jn):
            r = j0 + rr
            ci = r // (kh * kw)
            tab = taps[r - ci * kh * kw]
            for t in range(nbc):
                plane = x[n0 + t, c0 + ci].reshape(h * w)
                d = bbuf[rr * kk + t * npix:]
                for p in range(npix):
                    k = tab[p]
                    d[p] = plane[k] if k >= 0 else np.float32(0.0)
        return
    # NOTE: one function per column stride: with the three row loops in one function LLVM vectorized none
    # of them (0.75 -> 0.22 ms measured for a 3x3 stride-2 im2col of 16 x 3 x 96 x 96)
    for rr in range(jn):
        r = j0 + rr
        ci = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        off = j * dw - pl
        # the outputs ox whose column ox*sw + off lies inside [0, w): [lo, hi)
        lo = min(ow, 0 if off >= 0 else (-off + sw - 1) // sw)
        hi = max(lo, min(ow, (w - 1 - off) // sw + 1) if w - 1 - off >= 0 else 0)
        for t in range(nbc):
            plane = x[n0 + t, c0 + ci]
            base = rr * kk + t * npix
            if sw == 1:
                _im2col_plane_s1(plane, bbuf, base, i * dh - pt, sh, oh, ow, lo, hi, off)
            elif sw == 2:
                _im2col_plane_s2(plane, bbuf, base, i * dh - pt, sh, oh, ow, lo, hi, off)
            else:
                _im2col_plane_any(plane, bbuf, base, i * dh - pt, sh, sw, oh, ow, lo, hi, off)


@numba.njit(**NJIT)
def _im2col_plane_s1(plane, bbuf, base, y0, sh, oh, ow, lo, hi, off):
    # bbuf[base + oy*ow + ox] = plane[oy*sh + y0, ox + off] for lo <= ox < hi, 0 elsewhere and outside
    h = plane.shape[0]
    for oy in range(oh):
        d = bbuf[base + oy * ow:base + (oy + 1) * ow]
        y = oy * sh + y0
        if y < 0 or y >= h:
            d[:] = 0.0
            continue
        d[:lo] = 0.0
        copy_floats(d, lo, plane[y], lo + off, hi - lo)
        d[hi:] = 0.0


@numba.njit(**NJIT)
def _im2col_plane_s2(plane, bbuf, base, y0, sh, oh, ow, lo, hi, off):
    # the same with column stride 2: plane[oy*sh + y0, 2*ox + off]
    h, w = plane.shape
    flat = plane.reshape(h * w)
    for oy in range(oh):
        d = bbuf[base + oy * ow:base + (oy + 1) * ow]
        y = oy * sh + y0
        if y < 0 or y >= h:
            d[:] = 0.0
            continue
        d[:lo] = 0.0
        copy_s2(bbuf, base + oy * ow + lo, flat, y * w + 2 * lo + off, hi - lo)
        d[hi:] = 0.0


@numba.njit(**NJIT)
def _im2col_plane_any(plane, bbuf, base, y0, sh, sw, oh, ow, lo, hi, off):
    h = plane.shape[0]
    for oy in range(oh):
        d = bbuf[base + oy * ow:base + (oy + 1) * ow]
        y = oy * sh + y0
        if y < 0 or y >= h:
            d[:] = 0.0
            continue
        d[:lo] = 0.0
        src = plane[y, lo * sw + off:]
        d2 = d[lo:]
        for t in range(hi - lo):
            d2[t] = src[t * sw]
        d[hi:] = 0.0


@functools.lru_cache(maxsize=64)
def _tap_table(h: int, w: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, pt: int, pl: int, oh: int,
               ow: int) -> np.ndarray:
    """(kh*kw, OH*OW) int64: flat input pixel y*W + x read by tap (i, j) for output (oy, ox), -1 in the padding."""
    oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    i, j = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    y = oy.reshape(1, -1) * sh + i.reshape(-1, 1) * dh - pt
    x = ox.reshape(1, -1) * sw + j.reshape(-1, 1) * dw - pl
    tab = np.where((y >= 0) & (y < h) & (x >= 0) & (x < w), y * w + x, -1).astype(np.int64)
    tab.setflags(write=False)
    return tab


@numba.njit(**NJIT)
def _wgrad_task(x, xf, dyf, dwf, g, r0, r1, mtot, mg, cg, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, nb, nbr, mbr,
                direct_b, taps):
    """dW rows [r0, r1) of group g: dwf (M, cg*kH*kW) flat = sum over K blocks (nb images) of dy rows @
    im2col rows^T. x (N, C, H, W) and xf, dyf its / dy's flat views. nbr: im2col rows per B block; mbr: dy
    rows per A block (copied only when a block holds several images); direct_b: x's planes are the im2col
    rows (1x1, stride 1, no padding, one image per block); taps: see _fill_im2col_rows."""
    n_img = x.shape[0]
    ctot = x.shape[1]
    npix = oh * ow
    kr = cg * kh * kw
    dwf[(g * mg + r0) * kr:(g * mg + r1) * kr] = 0.0
    abuf = np.empty(mbr * nb * npix if nb > 1 else 1, np.float32)
    bbuf = np.empty(1 if direct_b else nbr * nb * npix, np.float32)
    one_a = r1 - r0 <= mbr  # the task's dy rows fit one A block: copied once per K block
    for n0 in range(0, n_img, nb):
        nbc = min(nb, n_img - n0)
        kk = nbc * npix
        if nb > 1 and one_a:
            _fill_dy_rows(dyf, n0, nbc, g * mg + r0, r1 - r0, mtot, npix, abuf)
        for j0 in range(0, kr, nbr):
            jn = min(nbr, kr - j0)
            if direct_b:
                b = xf
                b_off = (n0 * ctot + g * cg + j0) * npix
            else:
                _fill_im2col_rows(x, n0, nbc, g * cg, j0, jn, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, taps, bbuf)
                b = bbuf
                b_off = 0
            for i0 in range(r0, r1, mbr):
                inn = min(mbr, r1 - i0)
                if nb > 1:
                    if not one_a:
                        _fill_dy_rows(dyf, n0, nbc, g * mg + i0, inn, mtot, npix, abuf)
                    a = abuf
                    a_off = 0
                else:
                    a = dyf
                    a_off = (n0 * mtot + g * mg + i0) * npix
                _nt_tiles(a, a_off, kk, inn, b, b_off, kk, jn, kk, dwf, (g * mg + i0) * kr + j0, kr)


@numba.njit(**NJIT)
def _wgrad_serial(tasks, x, xf, dyf, dwf, mtot, mg, cg, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, nb, nbr, mbr,
                  direct_b, taps):
    # tasks (T, 3) int64: (group, first row, end row) of dW
    for t in range(tasks.shape[0]):
        _wgrad_task(x, xf, dyf, dwf, tasks[t, 0], tasks[t, 1], tasks[t, 2], mtot, mg, cg, kh, kw, sh, sw, dh, dw,
                    pt, pl, oh, ow, nb, nbr, mbr, direct_b, taps)


@numba.njit(**NJIT_PARALLEL)
def _wgrad_parallel(tasks, x, xf, dyf, dwf, mtot, mg, cg, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, nb, nbr, mbr,
                    direct_b, taps):
    # one task per iteration: it alone writes its dW rows
    for t in prange(tasks.shape[0]):
        _wgrad_task(x, xf, dyf, dwf, tasks[t, 0], tasks[t, 1], tasks[t, 2], mtot, mg, cg, kh, kw, sh, sw, dh, dw,
                    pt, pl, oh, ow, nb, nbr, mbr, direct_b, taps)


def _round4(v: int) -> int:
    return max(4, v // 4 * 4)


def _wgrad_tasks(group: int, mg: int, threads: int) -> np.ndarray:
    """(group, r0, r1) tasks: the groups, each split into up to ``threads`` row ranges of multiples of 4."""
    per = 1 if group >= threads else min(-(-threads // group), max(1, mg // 4))
    rows = [(g, mg * s // per // 4 * 4 if s else 0, mg if s == per - 1 else mg * (s + 1) // per // 4 * 4)
            for g in range(group) for s in range(per)]
    return np.array([t for t in rows if t[2] > t[1]], dtype=np.int64).reshape(-1, 3)


def conv2d_weight_grad(x: np.ndarray, dy: np.ndarray, w_shape, strides, pads, dilations, group: int,
                       threads: int | None = None) -> np.ndarray:
    """dW (M, C/group, kH, kW) of a grouped 2-D convolution: x (N, C, H, W), dy (N, M, OH, OW) C-contiguous
    float32; pads (top, left). Depthwise convolutions take the depthwise kernel."""
    m, cg, kh, kw = (int(v) for v in w_shape)
    n, c, h, wd = x.shape
    if group == c and cg == 1:
        return conv2d_grads(x, dy, None, tuple(x.shape), w_shape, strides, pads, dilations, group, False, True,
                            threads)[1]
    _check(x, (n, c, h, wd), "x")
    oh, ow = dy.shape[2:]
    _check(dy, (n, m, oh, ow), "dy")
    if c != cg * group or m % group:
        raise ValueError(f"weight {tuple(w_shape)} does not fit {c} input channels in {group} groups")
    mg = m // group
    npix = oh * ow
    dw = np.empty((m, cg * kh * kw), np.float32)
    if n == 0 or npix == 0:
        dw[:] = 0.0
        return dw.reshape(w_shape)
    kr = cg * kh * kw
    nb = max(1, min(n, WG_BLOCK // npix))
    kk = nb * npix
    nbr = min(kr, _round4(WG_B_FLOATS // kk))
    mbr = min(mg, _round4(WG_A_FLOATS // kk)) if nb > 1 else mg
    direct_b = nb == 1 and kh == kw == 1 and tuple(strides) == (1, 1) and tuple(pads[:2]) == (0, 0) \
        and oh == h and ow == wd
    taps = _tap_table(h, wd, kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1], oh, ow) \
        if ow < NARROW_OW else _NO_TAPS
    threads = num_threads() if threads is None else threads
    work = m * kr * n * npix
    threads = threads if work >= _config.PARALLEL_MIN_WORK else 1
    tasks = _wgrad_tasks(group, mg, threads)
    fn = _wgrad_parallel if threads > 1 and len(tasks) > 1 else _wgrad_serial
    fn(tasks, x, x.reshape(-1), dy.reshape(-1), dw.reshape(-1), m, mg, cg, kh, kw, strides[0], strides[1],
       dilations[0], dilations[1], pads[0], pads[1], oh, ow, nb, nbr, mbr, direct_b, taps)
    return dw.reshape(w_shape)


def _check(a: np.ndarray, shape, what: str) -> None:
    if tuple(a.shape) != tuple(shape) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous float32 {tuple(shape)} array, got {a.dtype}{a.shape}")


# ---------------------------------------------------------------------------------------------------
# input gradient
# ---------------------------------------------------------------------------------------------------
# NOTE: the cached GemmCall is re-pointed at each call's packed W^T (with_a) right before it runs: fine for
# the one Python thread that runs a backward; concurrent backward calls from several Python threads would
# need a call each
@functools.lru_cache(maxsize=128)
def _dx_gemm(group: int, cgk: int, mg: int, npix: int, nbatch: int, m: int, ldc_img: int, flat: bool) -> GemmCall:
    """col_g = W_g^T (cgk x mg) @ dy_g for the images b < nbatch and groups g < group, dy read in place (W^T
    packed per call and handed over by ``with_a``):

    * ``flat=False``: one GEMM per image, col[b]_g (cgk x npix) rows npix apart, images ``ldc_img`` floats
      apart (straight into dx for a 1x1 convolution);
    * ``flat=True``: one GEMM for the whole batch, dy_g read as a (mg x nbatch*npix) matrix through a B
      geometry whose "image rows" are the images (row stride M*npix): col (group*cgk, nbatch*npix), the
      images side by side (small planes: long GEMM rows)."""
    asz = packed_a_size(cgk, mg)
    ap = np.zeros(group * asz, np.float32)
    if flat:
        n = nbatch * npix
        geo = np.array([npix, m * npix, 1, nbatch, npix, 1, 1, 1, 1, 1, 1, 0, 0, npix], dtype=np.int64)
        return GemmCall(ap, cgk, n, mg, n, geo=geo, ktab=matrix_ktab(mg, npix), ngroups=group, a_gstride=asz,
                        b_gstride=mg * npix, c_gstride=cgk * n)
    return GemmCall(ap, cgk, npix, mg, npix, geo=matrix_geometry(mg, npix, npix), ktab=matrix_ktab(mg, npix),
                    nbatch=nbatch, ngroups=group, a_gstride=asz, b_nstride=m * npix, b_gstride=mg * npix,
                    c_nstride=ldc_img, c_gstride=cgk * npix)


def _packed_wt(w2: np.ndarray, group: int) -> np.ndarray:
    """W_g^T (C/g*kH*kW x M/g) of every group, packed as GEMM A operands one after the other."""
    m, k = w2.shape
    mg = m // group
    asz = packed_a_size(k, mg)
    ap = np.zeros(group * asz, np.float32)
    for g in range(group):
        pack_a(w2[g * mg:(g + 1) * mg].T, ap[g * asz:(g + 1) * asz])
    return ap


@numba.njit(inline="always", **NJIT)
def _col2im_chunk_plane(t, col, img_stride, row_stride, dx, n0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    # plane t = (image b of the chunk, channel ch) of dx (N, C, H, W) = the entries of column row
    # r = (ch*kH + i)*kW + j, col[b*img_stride + r*row_stride:][:OH*OW] (flat), scattered back where
    # im2col took them
    c_in = dx.shape[1]
    b = t // c_in
    ch = t - b * c_in
    h, w = dx.shape[2], dx.shape[3]
    plane = dx[n0 + b, ch]
    plane[:, :] = 0.0
    for i in range(kh):
        for j in range(kw):
            src = col[b * img_stride + ((ch * kh + i) * kw + j) * row_stride:]
            off = j * dw - pl
            lo = 0 if off >= 0 else (-off + sw - 1) // sw
            hi = min(ow, (w - 1 - off) // sw + 1) if w - 1 - off >= 0 else 0
            for oy in range(oh):
                y = oy * sh + i * dh - pt
                if y < 0 or y >= h:
                    continue
                row = plane[y]
                s = src[oy * ow:]
                if sw == 1:
                    r = row[lo + off:]
                    s = s[lo:]
                    for t2 in range(hi - lo):
                        r[t2] += s[t2]
                else:
                    for ox in range(lo, hi):
                        row[ox * sw + off] += s[ox]


@numba.njit(**NJIT_PARALLEL)
def _col2im_chunk_parallel(nbc, col, img_stride, row_stride, dx, n0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    for t in prange(nbc * dx.shape[1]):
        _col2im_chunk_plane(t, col, img_stride, row_stride, dx, n0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)


@numba.njit(**NJIT)
def _col2im_chunk_serial(nbc, col, img_stride, row_stride, dx, n0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    for t in range(nbc * dx.shape[1]):
        _col2im_chunk_plane(t, col, img_stride, row_stride, dx, n0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)


def conv2d_input_grad(dy: np.ndarray, w: np.ndarray, x_shape, strides, pads, dilations, group: int,
                      threads: int | None = None) -> np.ndarray:
    """dx (N, C, H, W) of a grouped 2-D convolution: dy (N, M, OH, OW), w (M, C/group, kH, kW) C-contiguous
    float32; pads (top, left)."""
    n, c, h, wd = (int(v) for v in x_shape)
    m, cg, kh, kw = w.shape
    if group == c and cg == 1:
        return conv2d_grads(None, dy, w, x_shape, w.shape, strides, pads, dilations, group, True, False,
                            threads)[0]
    oh, ow = dy.shape[2:]
    _check(dy, (n, m, oh, ow), "dy")
    _check(w, (m, cg, kh, kw), "w")
    if c != cg * group or m % group:
        raise ValueError(f"weight {w.shape} does not fit {c} input channels in {group} groups")
    mg = m // group
    npix = oh * ow
    if n == 0 or c == 0 or m == 0 or npix == 0:
        return np.zeros(x_shape, np.float32)
    ap = _packed_wt(w.reshape(m, cg * kh * kw), group)
    dyf = dy.reshape(-1)
    dx = np.empty(x_shape, np.float32)
    pointwise = kh == kw == 1 and tuple(strides) == (1, 1) and tuple(pads[:2]) == (0, 0) and (oh, ow) == (h, wd)
    flat = npix < FLAT_NPIX and mg > cg * kh * kw
    if pointwise and not flat:
        # dx[n]_g = W_g^T @ dy[n]_g, straight into dx's planes
        _dx_gemm(group, cg, mg, npix, n, m, c * npix, False).with_a(ap).run(dx.reshape(-1), dyf, threads)
        return dx
    # per chunk of images: the columns by the GEMM, then col2im into dx
    kcol = c * kh * kw * npix
    nb = max(1, min(n, DX_COL_FLOATS // kcol))
    col = np.empty(nb * kcol, np.float32)
    for n0 in range(0, n, nb):
        nbc = min(nb, n - n0)
        call = _dx_gemm(group, cg * kh * kw, mg, npix, nbc, m, kcol, flat).with_a(ap)
        call.run(col, dyf[n0 * m * npix:(n0 + nbc) * m * npix], threads)
        img_stride, row_stride = (npix, nbc * npix) if flat else (kcol, npix)
        fn = _col2im_chunk_parallel if nbc * kcol >= _config.PARALLEL_MIN_WORK else _col2im_chunk_serial
        fn(nbc, col, img_stride, row_stride, dx, n0, kh, kw, strides[0], strides[1], dilations[0], dilations[1],
           pads[0], pads[1], oh, ow)
    return dx


# ---------------------------------------------------------------------------------------------------
# depthwise, both gradients
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=128)
def _dw_geometry(x_shape, w_shape, out_hw, strides, pads, dilations) -> DepthwiseGradGeometry:
    return DepthwiseGradGeometry(x_shape, w_shape, out_hw, strides, pads, dilations)


def conv2d_grads(x: np.ndarray | None, dy: np.ndarray, w: np.ndarray | None, x_shape, w_shape, strides, pads,
                 dilations, group: int, need_dx: bool, need_dw: bool, threads: int | None = None):
    """(dx or None, dW or None) of a grouped 2-D convolution; a depthwise one computes both in one pass.

    x (N, C, H, W) is needed for dW, w (M, C/group, kH, kW) for dx, dy (N, M, OH, OW) always; all C-contiguous
    float32; pads (top, left)."""
    x_shape = tuple(int(v) for v in x_shape)
    w_shape = tuple(int(v) for v in w_shape)
    if group == x_shape[1] and w_shape[1] == 1 and (need_dx or need_dw):
        geom = _dw_geometry(x_shape, w_shape, tuple(int(v) for v in dy.shape[2:]),
                            tuple(int(v) for v in strides), tuple(int(v) for v in pads[:2]),
                            tuple(int(v) for v in dilations))
        threads = num_threads() if threads is None else threads
        if dy.size * w_shape[2] * w_shape[3] < _config.PARALLEL_MIN_WORK:
            threads = 1
        return depthwise_grads(geom, x, dy, w, need_dx, need_dw, threads)
    dx = conv2d_input_grad(dy, w, x_shape, strides, pads, dilations, group, threads) if need_dx else None
    dw = conv2d_weight_grad(x, dy, w_shape, strides, pads, dilations, group, threads) if need_dw else None
    return dx, dw


def depthwise_weight_grad(x: np.ndarray, dy: np.ndarray, w_shape, strides, pads, dilations) -> np.ndarray:
    """dW (M, 1, kH, kW) of a depthwise convolution (group = C, M = C * multiplier)."""
    return conv2d_grads(x, dy, None, x.shape, w_shape, strides, pads, dilations, x.shape[1], False, True)[1]


# col2im of a whole batch (a column layout (C/g*kH*kW, N*OH*OW) as im2col lays it out)
@numba.njit(inline="always", **NJIT)
def _col2im_plane(t, col, dx, c0, cg, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    # plane t = (image b, channel ci) of dx (N, C, H, W) += the entries of col (cg*kH*kW, N*OH*OW) that
    # im2col took from it
    b = t // cg
    ci = t - b * cg
    h, w = dx.shape[2], dx.shape[3]
    plane = dx[b, c0 + ci]
    npix = oh * ow
    for i in range(kh):
        for j in range(kw):
            src = col[(ci * kh + i) * kw + j, b * npix:(b + 1) * npix]
            for oy in range(oh):
                y = oy * sh + i * dh - pt
                if y < 0 or y >= h:
                    continue
                row = plane[y]
                for ox in range(ow):
                    xx = ox * sw + j * dw - pl
                    if 0 <= xx < w:
                        row[xx] += src[oy * ow + ox]


@numba.njit(**NJIT_PARALLEL)
def _col2im_parallel(col, dx, c0, cg, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    for t in prange(dx.shape[0] * cg):
        _col2im_plane(t, col, dx, c0, cg, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)


@numba.njit(**NJIT)
def _col2im_serial(col, dx, c0, cg, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    for t in range(dx.shape[0] * cg):
        _col2im_plane(t, col, dx, c0, cg, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)


def col2im(col: np.ndarray, dx: np.ndarray, c0: int, cg: int, kernel, strides, dilations, pads, out_hw) -> None:
    """dx (N, C, H, W) += col2im(col) for channels c0..c0+cg; col (cg*kH*kW, N*OH*OW), as :func:`im2col` lays
    out one image, images side by side."""
    kh, kw = kernel
    oh, ow = out_hw
    n = dx.shape[0]
    if col.shape != (cg * kh * kw, n * oh * ow) or not (col.flags.c_contiguous and dx.flags.c_contiguous) \
            or c0 + cg > dx.shape[1]:
        raise ValueError(f"col {col.shape} does not fit dx {dx.shape} with channels {c0}..{c0 + cg}")
    fn = _col2im_parallel if col.size >= _config.PARALLEL_MIN_WORK else _col2im_serial
    fn(col, dx, c0, cg, kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1], oh, ow)


def bias_grad(dy: np.ndarray) -> np.ndarray:
    """db (M,) = sum of dy (N, M, ...) over every axis but 1, accumulated in float64."""
    axes = (0,) + tuple(range(2, dy.ndim))
    return dy.sum(axis=axes, dtype=np.float64).astype(np.float32)


