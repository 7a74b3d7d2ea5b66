"""Element-wise CUDA kernels: activations (the epilogue codes), unary math, per-channel affine maps and
broadcasting binary arithmetic.

Binary operands are flat arrays read through per-axis element strides of the output's shape (stride 0 on a
broadcast axis), so one kernel serves every broadcast pattern up to :data:`MAX_RANK` axes.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from .common import activate, blocks, broadcast_offsets, flat, upload

#: binary operation codes
ADD, SUB, MUL, DIV, MAX, MIN, POW = range(7)
BINARY_CODES = {"Add": ADD, "Sub": SUB, "Mul": MUL, "Div": DIV, "Max": MAX, "Min": MIN, "Sum": ADD, "Pow": POW}
#: unary math codes (``POW_SCALAR`` raises to a constant power, its parameter)
UNARY_CODES = {"Neg": 1, "Abs": 2, "Sqrt": 3, "Exp": 4, "Log": 5, "Reciprocal": 6, "Sin": 7, "Cos": 8, "Erf": 9}
POW_SCALAR = 10
MAX_RANK = 8


@cuda.jit(cache=True)
def _activation(x, y, n, code, alpha, beta):
    # x, y: [n] float32
    i = cuda.grid(1)
    if i < n:
        y[i] = activate(float32(x[i]), code, alpha, beta)


@cuda.jit(cache=True)
def _binary(a, b, out, n, code, shape, sa, sb, rank, act, alpha, beta):
    # out: [n] float32 over `shape` (rank axes); a[ia], b[ib] with ia = sum(index_d * sa[d])
    i = cuda.grid(1)
    if i >= n:
        return
    ia, ib = broadcast_offsets(i, shape, sa, sb, rank)
    x = float32(a[ia])
    y = float32(b[ib])
    if code == 0:
        v = x + y
    elif code == 1:
        v = x - y
    elif code == 2:
        v = x * y
    elif code == 3:
        v = x / y
    elif code == 4:
        v = max(x, y)
    elif code == 5:
        v = min(x, y)
    else:
        v = math.pow(x, y)
    out[i] = activate(v, act, alpha, beta)


@cuda.jit(cache=True)
def _unary(x, y, n, code, p):
    # x, y: [n] float32
    i = cuda.grid(1)
    if i >= n:
        return
    v = float32(x[i])
    if code == 1:
        r = -v
    elif code == 2:
        r = abs(v)
    elif code == 3:
        r = math.sqrt(v)
    elif code == 4:
        r = math.exp(v)
    elif code == 5:
        r = math.log(v)
    elif code == 6:
        r = float32(1) / v
    elif code == 7:
        r = math.sin(v)
    elif code == 8:
        r = math.cos(v)
    elif code == 9:
        r = math.erf(v)
    elif p == float32(2):
        r = v * v
    else:
        r = math.pow(v, p)
    y[i] = r


@cuda.jit(cache=True)
def _channel_affine(x, y, n, channels, inner, scale, shift):
    # x, y: [outer, channels, inner] flat; y = x * scale[c] + shift[c]
    i = cuda.grid(1)
    if i < n:
        c = (i // inner) % channels
        y[i] = float32(x[i]) * scale[c] + shift[c]


def broadcast_strides(shape, out_shape) -> list[int]:
    """Element strides of a C-contiguous array of ``shape`` read at the indices of ``out_shape`` (numpy
    broadcasting: 0 on axes of size 1 or missing)."""
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides, step = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d] = step if shape[d] != 1 else 0
        step *= shape[d]
    return strides


class Activation:
    """y = act(x) over a whole tensor."""

    def __init__(self, code: int, alpha: float = 0.0, beta: float = 0.0):
        self.code, self.alpha, self.beta = code, np.float32(alpha), np.float32(beta)

    def __call__(self, x, y, stream=0):
        n = y.size
        _activation[blocks(n), 128, stream](flat(x), flat(y), n, self.code, self.alpha, self.beta)


class UnaryMath:
    """y = f(x) for the :data:`UNARY_CODES` (and ``POW_SCALAR`` with its exponent ``p``)."""

    def __init__(self, code: int, p: float = 0.0):
        self.code, self.p = code, np.float32(p)

    def __call__(self, x, y, stream=0):
        n = y.size
        _unary[blocks(n), 128, stream](flat(x), flat(y), n, self.code, self.p)


class ChannelAffine:
    """y = x * scale[c] + shift[c] over [N, C, ...] (BatchNormalization with its statistics folded)."""

    def __init__(self, shape, scale: np.ndarray, shift: np.ndarray):
        self.n = int(np.prod(shape, dtype=np.int64))
        self.channels = int(shape[1])
        self.inner = int(np.prod(shape[2:], dtype=np.int64))
        self.scale = cuda.to_device(np.ascontiguousarray(scale, np.float32))
        self.shift = cuda.to_device(np.ascontiguousarray(shift, np.float32))

    def __call__(self, x, y, stream=0):
        _channel_affine[blocks(self.n), 128, stream](flat(x), flat(y), self.n, self.channels, self.inner,
                                                     self.scale, self.shift)


class Binary:
    """out = act(a <op> b) with numpy broadcasting of a and b to ``out_shape``."""

    def __init__(self, code: int, a_shape, b_shape, out_shape, act=(0, 0.0, 0.0)):
        out_shape = tuple(out_shape) or (1,)
        if len(out_shape) > MAX_RANK:
            raise ValueError(f"rank {len(out_shape)} > {MAX_RANK}")
        self.code, self.n = code, int(np.prod(out_shape))
        self.rank = len(out_shape)
        self.shape = upload(out_shape)
        self.sa = upload(broadcast_strides(a_shape, out_shape))
        self.sb = upload(broadcast_strides(b_shape, out_shape))
        self.act = (act[0], np.float32(act[1]), np.float32(act[2]))

    def __call__(self, a, b, out, stream=0):
        _binary[blocks(self.n), 128, stream](flat(a), flat(b), flat(out), self.n, self.code, self.shape, self.sa,
                                             self.sb, self.rank, *self.act)


__all__ = ["Activation", "Binary", "BINARY_CODES", "ChannelAffine", "POW_SCALAR", "UNARY_CODES", "UnaryMath",
           "broadcast_strides", "float32"]
