"""Resize on CUDA over the last two axes, from the Resize op's own tap tables (any mode: nearest, linear,
cubic, antialiased; any coordinate transformation): output (nc, oy, ox) = sum over the row taps ky and column
taps kx of wy[oy, ky] * wx[ox, kx] * x[nc, iy[oy, ky], ix[ox, kx]]."""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .common import blocks, flat, unravel_nchw


@cuda.jit(cache=True)
def _resize2d(x, y, total, h, wd, oh, ow, iy, wy, ky, ix, wx, kx):
    # x: [NC, H, W], y: [NC, OH, OW]; iy / wy: [OH, ky], ix / wx: [OW, kx] (flat)
    i = cuda.grid(1)
    if i >= total:
        return
    nc, _, oy, ox = unravel_nchw(i, 1, oh, ow)
    acc = float32(0)
    for a in range(ky):
        r = iy[oy * ky + a]
        row = (nc * h + r) * wd
        wr = wy[oy * ky + a]
        for b in range(kx):
            acc += wr * wx[ox * kx + b] * float32(x[row + ix[ox * kx + b]])
    y[i] = acc


class Resize2d:
    """``tables``: {axis: (idx (out, K), weights (out, K))} for the resized axes among the last two of an
    input of rank 3 or 4; other axes are copied."""

    def __init__(self, in_shape, out_shape, tables):
        rank = len(in_shape)
        self.h, self.w = (1, int(in_shape[-1])) if rank == 3 else (int(in_shape[-2]), int(in_shape[-1]))
        self.oh, self.ow = (1, int(out_shape[-1])) if rank == 3 else (int(out_shape[-2]), int(out_shape[-1]))
        planes = int(np.prod(in_shape[:-2 if rank == 4 else -1], dtype=np.int64))
        self.total = planes * self.oh * self.ow

        def table(axis, n_in, n_out):
            if axis in tables:
                idx, w = tables[axis]
            else:
                idx, w = np.arange(n_out).reshape(-1, 1), np.ones((n_out, 1))
            return (cuda.to_device(np.ascontiguousarray(idx, np.int64).reshape(-1)),
                    cuda.to_device(np.ascontiguousarray(w, np.float32).reshape(-1)), int(idx.shape[1]))

        self.iy, self.wy, self.ky = table(rank - 2 if rank == 4 else -1, self.h, self.oh)
        self.ix, self.wx, self.kx = table(rank - 1, self.w, self.ow)

    def __call__(self, x, y, stream=0):
        if self.total:
            _resize2d[blocks(self.total), 128, stream](flat(x), flat(y), self.total, self.h, self.w, self.oh,
                                                       self.ow, self.iy, self.wy, self.ky, self.ix, self.wx, self.kx)
