"""What the CUDA kernels share: the fused-activation device function (codes of :mod:`edgedl.ops.fused`), launch
sizes, and flat views of device arrays (every kernel indexes 1-D arrays with its own arithmetic)."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

#: threads per block of the one-dimensional kernels
BLOCK = 128


@cuda.jit(device=True)
def activate(v, code, alpha, beta):
    """The epilogue activation ``code`` (0 none, 1 Relu, 2 Clip, 3 LeakyRelu, 4 HardSwish, 5 Sigmoid,
    6 HardSigmoid, 7 Tanh, 8 Elu, 9 Swish) of one float32 value."""
    if code == 0:
        return v
    if code == 1:
        return v if v > float32(0) else float32(0)
    if code == 2:
        return min(max(v, float32(alpha)), float32(beta))
    if code == 3:
        return v if v >= float32(0) else v * float32(alpha)
    if code == 4:
        return v * min(max(v / float32(6) + float32(0.5), float32(0)), float32(1))
    if code == 5:
        if v >= float32(0):
            return float32(1) / (float32(1) + math.exp(-v))
        e = math.exp(v)
        return e / (float32(1) + e)
    if code == 6:
        return min(max(float32(alpha) * v + float32(beta), float32(0)), float32(1))
    if code == 7:
        return math.tanh(v)
    if code == 8:
        return v if v > float32(0) else float32(alpha) * (math.exp(v) - float32(1))
    if code == 9:
        return v / (float32(1) + math.exp(-float32(alpha) * v))
    return v


def blocks(n: int, block: int = BLOCK) -> int:
    return max(1, (n + block - 1) // block)


def flat(a):
    """A 1-D view of a C-contiguous device (or host) array."""
    return a.reshape(a.size) if a.ndim != 1 else a


def upload(values, dtype=np.int64):
    """A small constant array on the device (shapes, strides)."""
    return cuda.to_device(np.ascontiguousarray(np.asarray(values, dtype=dtype).reshape(-1)))


@cuda.jit(device=True)
def broadcast_offsets(i, shape, sa, sb, rank):
    """Offsets into two flat operands at the flat index ``i`` of ``shape`` (``rank`` axes), each read through its
    own element strides (0 on a broadcast axis, negative for reversed steps)."""
    rem = i
    a = 0
    b = 0
    for d in range(rank - 1, -1, -1):
        k = rem % shape[d]
        rem //= shape[d]
        a += k * sa[d]
        b += k * sb[d]
    return a, b


@cuda.jit(device=True)
def unravel_nchw(i, c, h, w):
    """(n, channel, y, x) of the flat index ``i`` of a C-contiguous [N, C, H, W] tensor (c = 1: the plane
    index n*C + channel comes back as n)."""
    x = i % w
    t = i // w
    y = t % h
    t //= h
    return t // c, t % c, y, x


@cuda.jit(device=True)
def im2col_index(k, nb, oy, ox, g, cpg, c, h, wd, taps, kw, sh, sw, ph, pw, dh, dw):
    """The flat index into x [N, C, H, W] of row ``k`` (input channel of group ``g`` x kernel tap) of the im2col
    matrix at output pixel (nb, oy, ox), or -1 where that tap falls in the padding."""
    ci = k // taps
    r = k - ci * taps
    ky = r // kw
    kx = r - ky * kw
    iy = oy * sh - ph + ky * dh
    ix = ox * sw - pw + kx * dw
    if iy >= 0 and iy < h and ix >= 0 and ix < wd:
        return ((nb * c + g * cpg + ci) * h + iy) * wd + ix
    return -1


def plane_geometry(x_shape, y_shape, kernel, strides, pads, dilations):
    """A 1-D or 2-D window geometry as 2-D (1-D as height 1): ((h, w), (oh, ow), (kh, kw), (sh, sw), (ph, pw),
    (dh, dw)) from an input and output of rank 3 or 4 and per-axis kernel / strides / begin pads / dilations."""
    if len(x_shape) == 3:
        return ((1, int(x_shape[2])), (1, int(y_shape[2])), (1, int(kernel[0])), (1, int(strides[0])),
                (0, int(pads[0])), (1, int(dilations[0])))
    pair = (lambda v: (int(v[0]), int(v[1])))
    return pair(x_shape[2:]), pair(y_shape[2:]), pair(kernel), pair(strides), pair(pads), pair(dilations)
