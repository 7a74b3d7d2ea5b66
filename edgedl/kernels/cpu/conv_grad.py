"""Gradients of the 2-D convolution (NCHW float32; 1-D convolutions run as 2-D with a unit height).

For ``y = conv(x, w) + b`` with geometry (strides, pads (top, left, bottom, right), dilations, group):

* ``dx`` (:func:`conv2d_input_grad`): per group, one GEMM ``col (C/g*kH*kW x N*OH*OW) = W_g^T @ dy_g`` over
  the whole batch, then :func:`col2im` adds each column entry back into its input pixel, parallel over
  (image, channel) planes (each plane is written by one thread); depthwise convolutions scatter straight
  from dy (:func:`_dx_depthwise`);
* ``dw[g] = dy_g (M/g x N*OH*OW) @ im2col(x)_g^T (N*OH*OW x C/g*kH*kW)``: :func:`im2col` of the whole batch
  then one fp32 GEMM (:func:`.gemm.gemm`) per group; depthwise convolutions (one input channel per group)
  take :func:`depthwise_weight_grad` instead, parallel over channels;
* ``db = sum over n, oy, ox of dy`` (float64 accumulation).

Every output element is computed by one thread in a fixed order, so results are bitwise the same for any
thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .config import NJIT, NJIT_PARALLEL, PARALLEL_MIN_WORK

__all__ = ["im2col", "col2im", "conv2d_input_grad", "conv2d_weight_grad", "depthwise_weight_grad", "bias_grad"]


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
    fn = _im2col_parallel if col.size >= PARALLEL_MIN_WORK else _im2col_serial
    fn(x, col, c0, kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1], oh, ow)
    return col


def conv2d_weight_grad(x: np.ndarray, dy: np.ndarray, w_shape, strides, pads, dilations, group: int) -> np.ndarray:
    """dW (M, C/group, kH, kW) of a grouped 2-D convolution: x (N, C, H, W), dy (N, M, OH, OW); per group one
    GEMM over the whole batch: dy_g (M/g x N*OH*OW) @ im2col(x)_g^T."""
    from .gemm import gemm

    m, cg, kh, kw = w_shape
    n = x.shape[0]
    oh, ow = dy.shape[2:]
    mg = m // group
    npix = oh * ow
    dw = np.empty((m, cg * kh * kw), np.float32)
    dyt = np.ascontiguousarray(dy.reshape(n, m, npix).transpose(1, 0, 2)).reshape(m, n * npix)
    col = np.empty((cg * kh * kw, n * npix), np.float32)
    for g in range(group):
        im2col(x, g * cg, cg, (kh, kw), strides, dilations, pads, (oh, ow), col)
        gemm(dyt[g * mg:(g + 1) * mg], col.T, dw[g * mg:(g + 1) * mg])  # the transposed im2col as a strided view
    return dw.reshape(w_shape)


@numba.njit(inline="always", **NJIT)
def _dw_channel(c, x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    # dw[c, i, j] = sum_n,oy,ox dy[n, c, oy, ox] * x[n, c // mult, oy*sh + i*dh - pt, ox*sw + j*dwl - pl]
    n, _, h, w = x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    ci = c // mult
    for i in range(kh):
        for j in range(kw):
            acc = 0.0  # float64: a long reduction
            for b in range(n):
                for oy in range(oh):
                    y = oy * sh + i * dh - pt
                    if y < 0 or y >= h:
                        continue
                    for ox in range(ow):
                        xx = ox * sw + j * dwl - pl
                        if 0 <= xx < w:
                            acc += np.float64(dy[b, c, oy, ox]) * np.float64(x[b, ci, y, xx])
            dw[c, i, j] = np.float32(acc)


@numba.njit(**NJIT_PARALLEL)
def _dw_parallel(x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    for c in prange(dy.shape[1]):
        _dw_channel(c, x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl)


@numba.njit(**NJIT)
def _dw_serial(x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    for c in range(dy.shape[1]):
        _dw_channel(c, x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl)


def depthwise_weight_grad(x: np.ndarray, dy: np.ndarray, w_shape, strides, pads, dilations) -> np.ndarray:
    """dW (M, 1, kH, kW) of a depthwise convolution (group = C, M = C * multiplier)."""
    m, _, kh, kw = w_shape
    c = x.shape[1]
    dw = np.empty((m, kh, kw), np.float32)
    work = dy.size * kh * kw
    fn = _dw_parallel if work >= PARALLEL_MIN_WORK else _dw_serial
    fn(x, dy, dw, m // c, kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1])
    return dw.reshape(w_shape)


def bias_grad(dy: np.ndarray) -> np.ndarray:
    """db (M,) = sum of dy (N, M, ...) over every axis but 1, accumulated in float64."""
    axes = (0,) + tuple(range(2, dy.ndim))
    return dy.sum(axis=axes, dtype=np.float64).astype(np.float32)


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
    fn = _col2im_parallel if col.size >= PARALLEL_MIN_WORK else _col2im_serial
    fn(col, dx, c0, cg, kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1], oh, ow)


@numba.njit(inline="always", **NJIT)
def _dx_dw_plane(t, dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    # plane t = (image b, channel c) of dx += sum over its mult output channels of w (*) dy, scattered
    c_in = dx.shape[1]
    b = t // c_in
    c = t - b * c_in
    h, wd = dx.shape[2], dx.shape[3]
    oh, ow = dy.shape[2], dy.shape[3]
    plane = dx[b, c]
    for mm in range(mult):
        m = c * mult + mm
        for i in range(kh):
            for j in range(kw):
                wv = w[m, i, j]
                for oy in range(oh):
                    y = oy * sh + i * dh - pt
                    if y < 0 or y >= h:
                        continue
                    src = dy[b, m, oy]
                    row = plane[y]
                    for ox in range(ow):
                        xx = ox * sw + j * dwl - pl
                        if 0 <= xx < wd:
                            row[xx] += wv * src[ox]


@numba.njit(**NJIT_PARALLEL)
def _dx_dw_parallel(dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    for t in prange(dx.shape[0] * dx.shape[1]):
        _dx_dw_plane(t, dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl)


@numba.njit(**NJIT)
def _dx_dw_serial(dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    for t in range(dx.shape[0] * dx.shape[1]):
        _dx_dw_plane(t, dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl)


def conv2d_input_grad(dy: np.ndarray, w: np.ndarray, x_shape, strides, pads, dilations, group: int) -> np.ndarray:
    """dx (N, C, H, W) of a grouped 2-D convolution: dy (N, M, OH, OW), w (M, C/group, kH, kW); pads
    (top, left)."""
    from .gemm import gemm

    n, c, h, wd = x_shape
    m, cg, kh, kw = w.shape
    oh, ow = dy.shape[2:]
    dx = np.zeros(x_shape, np.float32)
    if group == c and cg == 1:
        fn = _dx_dw_parallel if dy.size * kh * kw >= PARALLEL_MIN_WORK else _dx_dw_serial
        fn(dy, np.ascontiguousarray(w.reshape(m, kh, kw)), dx, m // c, kh, kw, strides[0], strides[1], dilations[0],
           dilations[1], pads[0], pads[1])
        return dx
    mg = m // group
    npix = oh * ow
    # dy as (M, N*OH*OW): one GEMM per group covers the whole batch
    dyt = np.ascontiguousarray(dy.reshape(n, m, npix).transpose(1, 0, 2)).reshape(m, n * npix)
    col = np.empty((cg * kh * kw, n * npix), np.float32)
    for g in range(group):
        wg = w[g * mg:(g + 1) * mg].reshape(mg, cg * kh * kw)
        gemm(wg.T, dyt[g * mg:(g + 1) * mg], col)
        col2im(col, dx, g * cg, cg, (kh, kw), strides, dilations, pads, (oh, ow))
    return dx
