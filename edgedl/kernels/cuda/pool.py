"""Pooling on CUDA: max and average 2-D pooling (1-D as height 1) with pads, strides and dilations, and global
average pooling; one thread per output element."""
from __future__ import annotations

import math

from numba import cuda, float32

from .common import blocks, flat, plane_geometry, unravel_nchw


@cuda.jit(cache=True)
def _pool2d(x, y, total, h, wd, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_pad):
    # x: [N*C, H, W], y: [N*C, OH, OW], flat
    i = cuda.grid(1)
    if i >= total:
        return
    nc, _, oy, ox = unravel_nchw(i, 1, oh, ow)
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
        ((self.h, self.w), (self.oh, self.ow), (self.kh, self.kw), (self.sh, self.sw), (self.ph, self.pw),
         (self.dh, self.dw)) = plane_geometry(x_shape, y_shape, kernel, strides, pads, dilations)
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
