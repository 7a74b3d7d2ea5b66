"""float32 convolution on CUDA (2-D; 1-D as height 1) with grouped and depthwise channels, strides, dilations,
padding, and the fused bias, residual and activation epilogue of the CPU kernels.

Two kernels: an implicit GEMM (per group, output channels x output pixels, the reduction over input channels x
kernel taps in 16-wide steps; each block stages a 16x16 tile of weights and a 16x16 tile of the im2col matrix,
gathered on the fly, in shared memory), and a direct kernel (one thread per output) for depthwise and other
small reductions, where a tile would be mostly padding. :class:`Conv2d` picks between them.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .common import activate, blocks, flat, im2col_index, plane_geometry, unravel_nchw

TILE = 16


@cuda.jit(cache=True)
def _conv2d_gemm(x, w, bias, res, y, n_img, c, h, wd, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups,
                 has_bias, has_res, code, act_a, act_b):
    # per group g (blockIdx.z): y[g*opg + row, pixel] = sum_k w[g*opg + row, k] * im2col[k, pixel]
    sa = cuda.shared.array((TILE, TILE), float32)
    sb = cuda.shared.array((TILE, TILE), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    g = cuda.blockIdx.z
    cpg = c // groups
    opg = co // groups
    taps = kh * kw
    k_len = cpg * taps
    pixels = n_img * oh * ow
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    nb, _, oy, ox = unravel_nchw(col, 1, oh, ow)  # the pixel this thread gathers for the im2col tile
    acc = float32(0)
    for step in range((k_len + TILE - 1) // TILE):
        ka = step * TILE + tx
        if row < opg and ka < k_len:
            sa[ty, tx] = float32(w[(g * opg + row) * k_len + ka])
        else:
            sa[ty, tx] = float32(0)
        kb = step * TILE + ty
        v = float32(0)
        if kb < k_len and col < pixels:
            at = im2col_index(kb, nb, oy, ox, g, cpg, c, h, wd, taps, kw, sh, sw, ph, pw, dh, dw)
            if at >= 0:
                v = float32(x[at])
        sb[ty, tx] = v
        cuda.syncthreads()
        for j in range(TILE):
            acc += sa[ty, j] * sb[j, tx]
        cuda.syncthreads()
    if row < opg and col < pixels:
        o = g * opg + row
        i = ((nb * co + o) * oh + oy) * ow + ox
        if has_bias:
            acc += float32(bias[o])
        if has_res:
            acc += float32(res[i])
        y[i] = activate(acc, code, act_a, act_b)


@cuda.jit(cache=True)
def _conv2d(x, w, bias, res, y, total, c, h, wd, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups, has_bias,
            has_res, code, act_a, act_b):
    # x: [N, C, H, W], w: [CO, C / groups, KH, KW], y: [N, CO, OH, OW], all flat; res like y
    i = cuda.grid(1)
    if i >= total:
        return
    nb, o, oy, ox = unravel_nchw(i, co, oh, ow)
    cpg = c // groups
    g = o // (co // groups)
    acc = float32(0)
    for ci in range(cpg):
        ch = g * cpg + ci
        xbase = (nb * c + ch) * h
        wbase = (o * cpg + ci) * kh
        for ky in range(kh):
            iy = oy * sh - ph + ky * dh
            if iy < 0 or iy >= h:
                continue
            for kx in range(kw):
                ix = ox * sw - pw + kx * dw
                if ix >= 0 and ix < wd:
                    acc += float32(x[(xbase + iy) * wd + ix]) * float32(w[(wbase + ky) * kw + kx])
    if has_bias:
        acc += float32(bias[o])
    if has_res:
        acc += float32(res[i])
    y[i] = activate(acc, code, act_a, act_b)


class Conv2d:
    """A convolution of fixed geometry: x [N, C, H, W] (or [N, C, L]) by w [CO, C / groups, KH, KW]."""

    def __init__(self, x_shape, w_shape, y_shape, strides, pads, dilations, groups, act=(0, 0.0, 0.0),
                 tiled: bool | None = None):
        self.n, self.c, self.co = int(x_shape[0]), int(x_shape[1]), int(w_shape[0])
        ((self.h, self.w), (self.oh, self.ow), (self.kh, self.kw), (self.sh, self.sw), (self.ph, self.pw),
         (self.dh, self.dw)) = plane_geometry(x_shape, y_shape, w_shape[2:], strides, pads, dilations)
        self.groups = int(groups)
        self.total = self.n * self.co * self.oh * self.ow
        self.act = (act[0], np.float32(act[1]), np.float32(act[2]))
        reduction, per_group = (self.c // self.groups) * self.kh * self.kw, self.co // self.groups
        #: the implicit GEMM when a 16x16 tile of both (output channels of a group, reduction) is mostly used;
        #: the simulator runs a block's 256 threads as Python threads meeting at every barrier, so there the
        #: direct kernel (no barriers) is the default (tests ask for the tiled one explicitly)
        if tiled is None:
            from . import simulated

            tiled = reduction >= 8 and per_group >= 8 and not simulated()
        self.tiled = bool(tiled)
        pixels = self.n * self.oh * self.ow
        self.grid = ((pixels + TILE - 1) // TILE, (per_group + TILE - 1) // TILE, self.groups)

    def __call__(self, x, w, bias, res, y, stream=0):
        yf = flat(y)
        if self.tiled:
            _conv2d_gemm[self.grid, (TILE, TILE), stream](
                flat(x), flat(w), flat(bias) if bias is not None else yf, flat(res) if res is not None else yf, yf,
                self.n, self.c, self.h, self.w, self.co, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw,
                self.ph, self.pw, self.dh, self.dw, self.groups, bias is not None, res is not None, *self.act)
            return
        _conv2d[blocks(self.total), 128, stream](
            flat(x), flat(w), flat(bias) if bias is not None else yf, flat(res) if res is not None else yf, yf,
            self.total, self.c, self.h, self.w, self.co, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw,
            self.ph, self.pw, self.dh, self.dw, self.groups, bias is not None, res is not None, *self.act)


@cuda.jit(cache=True)
def _conv_transpose2d(x, w, bias, y, total, c, h, wd, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups,
                      has_bias, code, act_a, act_b):
    # x: [N, C, H, W], w: [C, CO / groups, KH, KW], y: [N, CO, OH, OW]; y[o] gathers x[i] with o = i*s - p + k*d
    i = cuda.grid(1)
    if i >= total:
        return
    nb, o, oy, ox = unravel_nchw(i, co, oh, ow)
    opg = co // groups
    cpg = c // groups
    g = o // opg
    oc = o - g * opg
    acc = float32(0)
    for ci in range(cpg):
        ch = g * cpg + ci
        for ky in range(kh):
            ty = oy + ph - ky * dh
            if ty < 0 or ty % sh != 0:
                continue
            iy = ty // sh
            if iy >= h:
                continue
            for kx in range(kw):
                tx = ox + pw - kx * dw
                if tx < 0 or tx % sw != 0:
                    continue
                ix = tx // sw
                if ix < wd:
                    xv = float32(x[((nb * c + ch) * h + iy) * wd + ix])
                    acc += xv * float32(w[((ch * opg + oc) * kh + ky) * kw + kx])
    if has_bias:
        acc += float32(bias[o])
    y[i] = activate(acc, code, act_a, act_b)


class ConvTranspose2d:
    """A transposed convolution of fixed geometry: x [N, C, H, W] (or [N, C, L]) by w [C, CO / groups, KH, KW]."""

    def __init__(self, x_shape, w_shape, y_shape, strides, pads, dilations, groups, act=(0, 0.0, 0.0)):
        self.c, self.co = int(x_shape[1]), int(y_shape[1])
        ((self.h, self.w), (self.oh, self.ow), (self.kh, self.kw), (self.sh, self.sw), (self.ph, self.pw),
         (self.dh, self.dw)) = plane_geometry(x_shape, y_shape, w_shape[2:], strides, pads, dilations)
        self.groups = int(groups)
        self.total = int(x_shape[0]) * self.co * self.oh * self.ow
        self.act = (act[0], np.float32(act[1]), np.float32(act[2]))

    def __call__(self, x, w, bias, y, stream=0):
        yf = flat(y)
        _conv_transpose2d[blocks(self.total), 128, stream](
            flat(x), flat(w), flat(bias) if bias is not None else yf, yf, self.total, self.c, self.h, self.w,
            self.co, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw,
            self.groups, bias is not None, *self.act)
