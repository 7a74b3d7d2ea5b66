"""Pooling on CUDA: max and average 2-D pooling (1-D as height 1) with pads, strides and dilations, and global
average pooling; one thread per output element."""
from __future__ import annotations

import math

from numba import cuda, float32

from .common import blocks, flat


@cuda.jit(cache=True)
def _pool2d(x, y, total, h, wd, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_pad):
    # x: [N*C, H, W], y: [N*C, OH, OW], flat
    i = cuda.grid(1)
    if i >= total:
        return
    ox = i % ow
    t = i // ow
    oy = t % oh
    nc = t // oh
    base = nc * h
    best = -math.inf
    acc = float32(0)
    count = 0
    for ky in range(kh):
        iy = oy * sh - ph + ky * dh
        for kx in range(kw):
            ix = ox * sw - pw + kx * dw
            if iy >= 0 and iy < h and ix >= 0 and ix < wd:
                v = float32(x[(base + iy) * wd + ix])
                best = max(best, v)
                acc += v
                count += 1
    if is_max:
        y[i] = best
    elif count_pad:  # every window lies inside the padded input (no ceil_mode): its full size
        y[i] = acc / float32(kh * kw)
    else:
        y[i] = acc / float32(max(count, 1))


@cuda.jit(cache=True)
def _global_average(x, y, rows, size):
    # x: [rows, size], y: [rows]
    r = cuda.grid(1)
    if r >= rows:
        return
    acc = float32(0)
    for j in range(size):
        acc += float32(x[r * size + j])
    y[r] = acc / float32(size)


class Pool2d:
    def __init__(self, x_shape, y_shape, kernel, strides, pads, dilations, is_max, count_include_pad):
        one_d = len(x_shape) == 3
        self.h, self.w = (1, int(x_shape[2])) if one_d else (int(x_shape[2]), int(x_shape[3]))
        self.oh, self.ow = (1, int(y_shape[2])) if one_d else (int(y_shape[2]), int(y_shape[3]))
        pick = (lambda v: (1, int(v[0]))) if one_d else (lambda v: (int(v[0]), int(v[1])))
        (self.kh, self.kw), (self.sh, self.sw), (self.dh, self.dw) = pick(kernel), pick(strides), pick(dilations)
        self.ph, self.pw = (0, int(pads[0])) if one_d else (int(pads[0]), int(pads[1]))
        self.total = int(x_shape[0]) * int(x_shape[1]) * self.oh * self.ow
        self.is_max, self.count_pad = bool(is_max), bool(count_include_pad)

    def __call__(self, x, y, stream=0):
        _pool2d[blocks(self.total), 128, stream](flat(x), flat(y), self.total, self.h, self.w, self.oh, self.ow,
                                                 self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh,
                                                 self.dw, self.is_max, self.count_pad)


class GlobalAverage:
    def __init__(self, x_shape):
        self.rows = int(x_shape[0]) * int(x_shape[1])
        self.size = 1
        for d in x_shape[2:]:
            self.size *= int(d)

    def __call__(self, x, y, stream=0):
        _global_average[blocks(self.rows), 128, stream](flat(x), flat(y), self.rows, self.size)
