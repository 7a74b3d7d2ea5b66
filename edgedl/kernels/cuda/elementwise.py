"""Element-wise CUDA kernels: activations (the epilogue codes) and broadcasting binary arithmetic.

Binary operands are flat arrays read through per-axis element strides of the output's shape (stride 0 on a
broadcast axis), so one kernel serves every broadcast pattern up to :data:`MAX_RANK` axes.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .common import activate, blocks, flat, upload

#: binary operation codes
ADD, SUB, MUL, DIV, MAX, MIN = range(6)
BINARY_CODES = {"Add": ADD, "Sub": SUB, "Mul": MUL, "Div": DIV, "Max": MAX, "Min": MIN}
MAX_RANK = 8


@cuda.jit(cache=True)
def _activation(x, y, n, code, alpha, beta):
    # x, y: [n] float32
    i = cuda.grid(1)
    if i < n:
        y[i] = activate(x[i], code, alpha, beta)


@cuda.jit(cache=True)
def _binary(a, b, out, n, code, shape, sa, sb, rank, act, alpha, beta):
    # out: [n] float32 over `shape` (rank axes); a[ia], b[ib] with ia = sum(index_d * sa[d])
    i = cuda.grid(1)
    if i >= n:
        return
    rem = i
    ia = 0
    ib = 0
    for d in range(rank - 1, -1, -1):
        k = rem % shape[d]
        rem //= shape[d]
        ia += k * sa[d]
        ib += k * sb[d]
    x = a[ia]
    y = b[ib]
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
    else:
        v = min(x, y)
    out[i] = activate(v, act, alpha, beta)


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


__all__ = ["Activation", "Binary", "BINARY_CODES", "broadcast_strides", "float32"]
