"""Gradients of the 2-D transposed convolution (NCHW float32; 1-D runs as 2-D with a unit height).

A transposed convolution ``y = conv_transpose(x, w)`` with x (N, C, H, W), w (C, M/g, kH, kW), y (N, M, OH, OW)
and geometry (strides, pads (top, left), dilations, group g) is the adjoint of the ordinary convolution that
maps an (N, M, OH, OW) image to (N, C, H, W) with the same weight and geometry. So, with Cg = C/g, Mg = M/g and
``col_g = im2col(dy)_g`` (Mg*kH*kW x N*H*W, the "output" size of that convolution being x's H x W):

* ``dx_g (Cg x N*H*W) = w_g (Cg x Mg*kH*kW) @ col_g``: the ordinary convolution of dy with w;
* ``dw_g (Cg x Mg*kH*kW) = x_g (Cg x N*H*W) @ col_g^T``;
* ``db`` = the sum of dy over the batch and the spatial axes (:func:`.conv_grad.bias_grad`).

One :func:`.conv_grad.im2col` per group serves both GEMMs (:func:`.gemm.gemm`). A transposed convolution
with one input channel per group (g = C, any Mg) would run g tiny GEMMs; it takes direct kernels instead,
parallel over (image, channel) planes of dx and over the M channels of dw.

Every output element is computed by one thread in a fixed order, so results are bitwise the same for any
thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL
from .conv_grad import im2col

__all__ = ["conv_transpose2d_grads"]


@numba.njit(inline="always", **NJIT)
def _dx_cw_plane(t, dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    # plane t = (image b, channel c) of dx (N, C, H, W), one input channel per group:
    # dx[b, c, h, x] = sum_mm,i,j w[c, mm, i, j] * dy[b, c*mult + mm, h*sh + i*dh - pt, x*sw + j*dwl - pl]
    # w (C, mult, kH, kW), dy (N, C*mult, OH, OW); dx starts at zero
    c_in = dx.shape[1]
    b = t // c_in
    c = t - b * c_in
    h, wd = dx.shape[2], dx.shape[3]
    oh, ow = dy.shape[2], dy.shape[3]
    plane = dx[b, c]
    for mm in range(mult):
        src = dy[b, c * mult + mm]
        for i in range(kh):
            for j in range(kw):
                wv = w[c, mm, i, j]
                for yy in range(h):
                    sy = yy * sh + i * dh - pt
                    if sy < 0 or sy >= oh:
                        continue
                    srow = src[sy]
                    row = plane[yy]
                    for xx in range(wd):
                        sx = xx * sw + j * dwl - pl
                        if 0 <= sx < ow:
                            row[xx] += wv * srow[sx]


@numba.njit(**NJIT_PARALLEL)
def _dx_cw_parallel(dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    for t in prange(dx.shape[0] * dx.shape[1]):
        _dx_cw_plane(t, dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl)


@numba.njit(**NJIT)
def _dx_cw_serial(dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    for t in range(dx.shape[0] * dx.shape[1]):
        _dx_cw_plane(t, dy, w, dx, mult, kh, kw, sh, sw, dh, dwl, pt, pl)


@numba.njit(inline="always", **NJIT)
def _dw_cw_channel(m, x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    # output channel m = c*mult + mm of dw (C, mult, kH, kW), one input channel per group:
    # dw[c, mm, i, j] = sum_b,h,x x[b, c, h, x] * dy[b, m, h*sh + i*dh - pt, x*sw + j*dwl - pl]
    # x (N, C, H, W), dy (N, C*mult, OH, OW)
    n, _, h, wd = x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    c = m // mult
    mm = m - c * mult
    for i in range(kh):
        for j in range(kw):
            acc = 0.0  # float64: a long reduction
            for b in range(n):
                for yy in range(h):
                    sy = yy * sh + i * dh - pt
                    if sy < 0 or sy >= oh:
                        continue
                    for xx in range(wd):
                        sx = xx * sw + j * dwl - pl
                        if 0 <= sx < ow:
                            acc += np.float64(x[b, c, yy, xx]) * np.float64(dy[b, m, sy, sx])
            dw[c, mm, i, j] = np.float32(acc)


@numba.njit(**NJIT_PARALLEL)
def _dw_cw_parallel(x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    for m in prange(dy.shape[1]):
        _dw_cw_channel(m, x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl)


@numba.njit(**NJIT)
def _dw_cw_serial(x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl):
    for m in range(dy.shape[1]):
        _dw_cw_channel(m, x, dy, dw, mult, kh, kw, sh, sw, dh, dwl, pt, pl)


def _check(name: str, a: np.ndarray | None, shape) -> None:
    if a is None or a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != tuple(shape):
        got = None if a is None else f"{a.dtype}{a.shape}"
        raise ValueError(f"{name} must be a C-contiguous float32 array of shape {tuple(shape)}, got {got}")


def conv_transpose2d_grads(dy: np.ndarray, x: np.ndarray | None, w: np.ndarray | None, x_shape, w_shape, strides,
                           pads, dilations, group: int, need_dx: bool, need_dw: bool):
    """(dx, dw) of a grouped 2-D transposed convolution (None where not needed).

    dy (N, M, OH, OW); x (N, C, H, W), read only for dw; w (C, M/group, kH, kW), read only for dx; pads
    (top, left), both >= 0 (the bottom / right pads and the output padding show in OH, OW)."""
    from .gemm import gemm

    n, c, h, wd = x_shape
    c_w, mg, kh, kw = w_shape
    m = mg * group
    if c_w != c or c % group or dy.shape[:2] != (n, m) or dy.ndim != 4 or min(pads) < 0:
        raise ValueError(f"dy {dy.shape}, x {tuple(x_shape)}, w {tuple(w_shape)}, group {group}, pads {pads} "
                         "do not fit a transposed convolution")
    _check("dy", dy, dy.shape)
    if need_dx:
        _check("w", w, w_shape)
    if need_dw:
        _check("x", x, x_shape)
    oh, ow = dy.shape[2:]
    sh, sw = strides
    dh, dwl = dilations
    pt, pl = pads
    dx = dw = None
    cg = c // group
    if group > 1 and cg == 1:  # one input channel per group (depthwise-like): direct kernels
        if need_dx:
            dx = np.zeros(x_shape, np.float32)
            fn = _dx_cw_parallel if dx.size * mg * kh * kw >= _config.PARALLEL_MIN_WORK else _dx_cw_serial
            fn(dy, w, dx, mg, kh, kw, sh, sw, dh, dwl, pt, pl)
        if need_dw:
            dw = np.empty(w_shape, np.float32)
            fn = _dw_cw_parallel if x.size * m * kh * kw >= _config.PARALLEL_MIN_WORK else _dw_cw_serial
            fn(x, dy, dw, mg, kh, kw, sh, sw, dh, dwl, pt, pl)
        return dx, dw
    npix = h * wd
    kk = mg * kh * kw
    col = np.empty((kk, n * npix), np.float32)
    if need_dx:
        dxt = np.empty((c, n * npix), np.float32)  # dx as (C, N*H*W): one GEMM per group covers the batch
        w2 = w.reshape(c, kk)
    if need_dw:
        dw2 = np.empty((c, kk), np.float32)
        xt = np.ascontiguousarray(x.reshape(n, c, npix).transpose(1, 0, 2)).reshape(c, n * npix)
    for g in range(group):
        # NOTE: im2col of dy with x's size as the "output" size: the rows past OH / OW that output_padding
        # adds never reach a pixel of x, and im2col bounds-checks every tap
        im2col(dy, g * mg, mg, (kh, kw), strides, dilations, pads, (h, wd), col)
        if need_dx:
            gemm(w2[g * cg:(g + 1) * cg], col, dxt[g * cg:(g + 1) * cg])
        if need_dw:
            gemm(xt[g * cg:(g + 1) * cg], col.T, dw2[g * cg:(g + 1) * cg])  # the transposed im2col as a view
    if need_dx:
        dx = np.ascontiguousarray(dxt.reshape(c, n, npix).transpose(1, 0, 2)).reshape(x_shape)
    if need_dw:
        dw = dw2.reshape(w_shape)
    return dx, dw
