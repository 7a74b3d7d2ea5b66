"""Softmax and LogSoftmax over the last axis on CUDA: one thread per row (max, sum of exponentials, write)."""
from __future__ import annotations

import math

from numba import cuda, float32

from .common import blocks, flat


@cuda.jit(device=True)
def row_max_and_sum(x, base, size):
    """(max, sum of exp(x - max)) of the row x[base : base + size] (float32)."""
    top = -math.inf
    for j in range(size):
        top = max(top, float32(x[base + j]))
    total = float32(0)
    for j in range(size):
        total += math.exp(float32(x[base + j]) - top)
    return top, total


@cuda.jit(cache=True)
def _softmax(x, y, rows, size, log):
    # x, y: [rows, size]
    r = cuda.grid(1)
    if r >= rows:
        return
    base = r * size
    top, total = row_max_and_sum(x, base, size)
    if log:
        shift = top + math.log(total)
        for j in range(size):
            y[base + j] = float32(x[base + j]) - shift
    else:
        for j in range(size):
            y[base + j] = math.exp(float32(x[base + j]) - top) / total


class Softmax:
    def __init__(self, rows: int, size: int, log: bool = False):
        self.rows, self.size, self.log = int(rows), int(size), bool(log)

    def __call__(self, x, y, stream=0):
        _softmax[blocks(self.rows), 128, stream](flat(x), flat(y), self.rows, self.size, self.log)
