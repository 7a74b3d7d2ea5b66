"""Direct float32 convolution on CUDA (2-D; 1-D as height 1): one thread per output element, with grouped and
depthwise channels, strides, dilations, padding, and the fused bias, residual and activation epilogue of the
CPU kernels. Correct first; a tiled implicit-GEMM kernel is the fast path to come."""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .common import activate, blocks, flat


@cuda.jit(cache=True)
def _conv2d(x, w, bias, res, y, total, c, h, wd, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups, has_bias,
            has_res, code, act_a, act_b):
    # x: [N, C, H, W], w: [CO, C / groups, KH, KW], y: [N, CO, OH, OW], all flat; res like y
    i = cuda.grid(1)
    if i >= total:
        return
    ox = i % ow
    t = i // ow
    oy = t % oh
    t //= oh
    o = t % co
    nb = t // co
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

    def __init__(self, x_shape, w_shape, y_shape, strides, pads, dilations, groups, act=(0, 0.0, 0.0)):
        one_d = len(x_shape) == 3
        self.n, self.c = int(x_shape[0]), int(x_shape[1])
        self.h, self.w = (1, int(x_shape[2])) if one_d else (int(x_shape[2]), int(x_shape[3]))
        self.co = int(w_shape[0])
        self.kh, self.kw = (1, int(w_shape[2])) if one_d else (int(w_shape[2]), int(w_shape[3]))
        self.oh, self.ow = (1, int(y_shape[2])) if one_d else (int(y_shape[2]), int(y_shape[3]))
        self.sh, self.sw = (1, int(strides[0])) if one_d else (int(strides[0]), int(strides[1]))
        self.dh, self.dw = (1, int(dilations[0])) if one_d else (int(dilations[0]), int(dilations[1]))
        self.ph, self.pw = (0, int(pads[0])) if one_d else (int(pads[0]), int(pads[1]))
        self.groups = int(groups)
        self.total = self.n * self.co * self.oh * self.ow
        self.act = (act[0], np.float32(act[1]), np.float32(act[2]))

    def __call__(self, x, w, bias, res, y, stream=0):
        yf = flat(y)
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
    ox = i % ow
    t = i // ow
    oy = t % oh
    t //= oh
    o = t % co
    nb = t // co
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
        one_d = len(x_shape) == 3
        self.c = int(x_shape[1])
        self.h, self.w = (1, int(x_shape[2])) if one_d else (int(x_shape[2]), int(x_shape[3]))
        self.co = int(y_shape[1])
        self.kh, self.kw = (1, int(w_shape[2])) if one_d else (int(w_shape[2]), int(w_shape[3]))
        self.oh, self.ow = (1, int(y_shape[2])) if one_d else (int(y_shape[2]), int(y_shape[3]))
        self.sh, self.sw = (1, int(strides[0])) if one_d else (int(strides[0]), int(strides[1]))
        self.dh, self.dw = (1, int(dilations[0])) if one_d else (int(dilations[0]), int(dilations[1]))
        self.ph, self.pw = (0, int(pads[0])) if one_d else (int(pads[0]), int(pads[1]))
        self.groups = int(groups)
        self.total = int(x_shape[0]) * self.co * self.oh * self.ow
        self.act = (act[0], np.float32(act[1]), np.float32(act[2]))

    def __call__(self, x, w, bias, y, stream=0):
        yf = flat(y)
        _conv_transpose2d[blocks(self.total), 128, stream](
            flat(x), flat(w), flat(bias) if bias is not None else yf, yf, self.total, self.c, self.h, self.w,
            self.co, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw,
            self.groups, bias is not None, *self.act)
