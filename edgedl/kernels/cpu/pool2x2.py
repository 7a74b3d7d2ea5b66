"""2x2 windows with stride 2 and no padding (the pooling of VGG, YOLO and most small CNNs): one pass per
output row, each vector of outputs from two vector loads per input row, a vertical reduce and an even/odd
shuffle (:data:`~edgedl.kernels.cpu.vec.pool2x2_max_row`). Same results as the generic kernel of
:mod:`.pool` (same order of operations: rows first, then columns; max skips NaN)."""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads
from .vec import VW, pool2x2_avg_row, pool2x2_max_row

__all__ = ["pool2x2_runner"]


@numba.njit(inline="always", **NJIT)
def _planes(x, y, p0, p1, h, w, oh, ow, is_max):
    # x: flat (P*H*W,) input, y: flat (P*OH*OW,) output; planes p0 <= p < p1
    whole = ow // VW * VW
    for p in range(p0, p1):
        for r in range(oh):
            a = (p * h + 2 * r) * w
            b = a + w
            o = (p * oh + r) * ow
            if is_max:
                pool2x2_max_row(ow, y, o, x, a, b)
            else:
                pool2x2_avg_row(ow, y, o, x, a, b)
            for i in range(whole, ow):
                v0 = x[a + 2 * i]
                v1 = x[a + 2 * i + 1]
                v2 = x[b + 2 * i]
                v3 = x[b + 2 * i + 1]
                if is_max:
                    m = np.float32(-np.inf)
                    m = v0 if v0 > m else m
                    m = v2 if v2 > m else m
                    m1 = np.float32(-np.inf)
                    m1 = v1 if v1 > m1 else m1
                    m1 = v3 if v3 > m1 else m1
                    y[o + i] = m1 if m1 > m else m
                else:
                    y[o + i] = ((v0 + v2) + (v1 + v3)) * np.float32(0.25)


@numba.njit(**NJIT)
def _pool_serial(x, y, planes, h, w, oh, ow, is_max):
    _planes(x, y, 0, planes, h, w, oh, ow, is_max)


@numba.njit(**NJIT_PARALLEL)
def _pool_parallel(x, y, planes, h, w, oh, ow, is_max, nchunks):
    for c in prange(nchunks):
        _planes(x, y, c * planes // nchunks, (c + 1) * planes // nchunks, h, w, oh, ow, is_max)


def pool2x2_runner(kind: str, planes: int, h: int, w: int):
    """``run(x, y, scratch)`` for 2x2 stride-2 unpadded pooling of ``planes`` planes of h x w (x and y
    C-contiguous float32; output (h // 2) x (w // 2)); ``run.bind(x, y, scratch, threads)`` prepares the
    call for arrays that stay the same. kind: "max" or "avg"."""
    oh, ow = h // 2, w // 2
    is_max = kind == "max"
    work = planes * h * w

    def call_args(x, y, threads):
        xf, yf = x.reshape(-1), y.reshape(-1)
        nt = num_threads() if threads is None else threads
        if nt > 1 and work >= _config.PARALLEL_MIN_WORK and planes > 1:
            return (_pool_parallel, xf, yf, planes, h, w, oh, ow, is_max, min(planes, nt))
        return (_pool_serial, xf, yf, planes, h, w, oh, ow, is_max)

    def run(x, y, scratch):
        fn, *a = call_args(x, y, None)
        fn(*a)

    run.bind = lambda x, y, scratch, threads: functools.partial(*call_args(x, y, threads))
    return run
