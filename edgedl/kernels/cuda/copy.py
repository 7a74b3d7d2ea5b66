"""Data movement on CUDA: one strided-copy kernel (Transpose, Concat, Expand, Slice... are all "read x through
some strides, write y through others") and a fill.

``StridedCopy(shape, src_strides, dst_strides, src_offset, dst_offset)`` walks the index space ``shape`` (one
thread per element) and copies ``src[src_offset + sum(i_d * src_strides[d])]`` to
``dst[dst_offset + sum(i_d * dst_strides[d])]``; strides are in elements and may be 0 (broadcast) or negative.
Any dtype: the kernel compiles per element type.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .common import blocks, broadcast_offsets, flat, upload

MAX_RANK = 8


@cuda.jit(cache=True)
def _strided_copy(src, dst, n, shape, s_src, s_dst, rank, off_src, off_dst):
    # n elements of the index space `shape`; src / dst flat
    i = cuda.grid(1)
    if i >= n:
        return
    a, b = broadcast_offsets(i, shape, s_src, s_dst, rank)
    dst[off_dst + b] = src[off_src + a]


@cuda.jit(cache=True)
def _fill(dst, n, value):
    i = cuda.grid(1)
    if i < n:
        dst[i] = value


def contiguous_strides(shape) -> list[int]:
    """Element strides of a C-contiguous array."""
    strides, step = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d] = step
        step *= int(shape[d])
    return strides


class StridedCopy:
    """See the module docstring."""

    def __init__(self, shape, src_strides, dst_strides, src_offset: int = 0, dst_offset: int = 0):
        shape = tuple(int(d) for d in shape) or (1,)
        if len(shape) > MAX_RANK:
            raise ValueError(f"rank {len(shape)} > {MAX_RANK}")
        self.n = int(np.prod(shape, dtype=np.int64))
        self.rank = len(shape)
        self.shape = upload(shape)
        self.s_src = upload(list(src_strides) or [0])
        self.s_dst = upload(list(dst_strides) or [0])
        self.off_src, self.off_dst = int(src_offset), int(dst_offset)

    def __call__(self, src, dst, stream=0):
        if self.n:
            _strided_copy[blocks(self.n), 128, stream](flat(src), flat(dst), self.n, self.shape, self.s_src,
                                                       self.s_dst, self.rank, self.off_src, self.off_dst)


class Fill:
    def __init__(self, n: int, value):
        self.n, self.value = int(n), value

    def __call__(self, dst, stream=0):
        if self.n:
            v = np.asarray(self.value, dtype=dst.dtype).reshape(()).item()
            _fill[blocks(self.n), 128, stream](flat(dst), self.n, v)
