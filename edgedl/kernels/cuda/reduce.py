"""Reductions on CUDA over one contiguous block of axes: the input viewed as [outer, r, inner], one thread per
(outer, inner) output element looping over r."""
from __future__ import annotations

import math

from numba import cuda, float32

from .common import blocks, flat

#: reduction kinds
SUM, MEAN, MAX, MIN, SUM_SQUARE, L1, L2 = range(7)
KINDS = {"ReduceSum": SUM, "ReduceMean": MEAN, "ReduceMax": MAX, "ReduceMin": MIN, "ReduceSumSquare": SUM_SQUARE,
         "ReduceL1": L1, "ReduceL2": L2}


@cuda.jit(cache=True)
def _reduce(x, y, n, r, inner, kind):
    # x: [outer, r, inner], y: [outer, inner]
    i = cuda.grid(1)
    if i >= n:
        return
    o = i // inner
    j = i % inner
    base = o * r * inner + j
    if kind == 2:
        acc = -math.inf
    elif kind == 3:
        acc = math.inf
    else:
        acc = float32(0)
    for t in range(r):
        v = float32(x[base + t * inner])
        if kind == 2:
            acc = max(acc, v)
        elif kind == 3:
            acc = min(acc, v)
        elif kind == 4 or kind == 6:
            acc += v * v
        elif kind == 5:
            acc += abs(v)
        else:
            acc += v
    if kind == 1:
        acc = acc / float32(r)
    elif kind == 6:
        acc = math.sqrt(acc)
    y[i] = acc


class Reduce:
    """Reduce axes ``[first, last]`` (contiguous) of ``shape`` with ``kind``."""

    def __init__(self, shape, first: int, last: int, kind: int):
        self.outer, self.r, self.inner = 1, 1, 1
        for k, d in enumerate(shape):
            if k < first:
                self.outer *= int(d)
            elif k <= last:
                self.r *= int(d)
            else:
                self.inner *= int(d)
        self.n, self.kind = self.outer * self.inner, int(kind)

    def __call__(self, x, y, stream=0):
        if self.n:
            _reduce[blocks(self.n), 128, stream](flat(x), flat(y), self.n, self.r, self.inner, self.kind)
