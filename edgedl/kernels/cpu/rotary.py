"""float32 rotary position embedding (ONNX RotaryEmbedding, opset 23).

For every row x (head_size floats) of token (b, s), head h, with c = cos_cache[row], s = sin_cache[row]
(``rows[b * S + s]`` picks the cache row: position_ids, or the token's own row of a 3-D cache) and
``half = rotary_embedding_dim / 2``::

    non-interleaved:  y[i] = c[i] x[i] - s[i] x[i + half],  y[i + half] = s[i] x[i] + c[i] x[i + half]
    interleaved:      y[2i] = c[i] x[2i] - s[i] x[2i + 1],  y[2i + 1] = s[i] x[2i] + c[i] x[2i + 1]
    y[rd:] = x[rd:]   (partial rotation)

x and y are flat with element strides (batch, head, seq); the head dim is contiguous. Parallel over the
(b, s) tokens when the tensor is large.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads


@numba.njit(inline="always", **NJIT)
def _rotate_token(x, y, xs, ys, cos, sin, rows, u, nseq, nh, hd, half, interleaved):
    # token u = b * nseq + s: every head of it
    b = u // nseq
    s = u - b * nseq
    cb = rows[u] * half
    for h in range(nh):
        xo = b * xs[0] + h * xs[1] + s * xs[2]
        yo = b * ys[0] + h * ys[1] + s * ys[2]
        if interleaved:
            for i in range(half):
                c = cos[cb + i]
                sn = sin[cb + i]
                a0 = x[xo + 2 * i]
                a1 = x[xo + 2 * i + 1]
                y[yo + 2 * i] = c * a0 - sn * a1
                y[yo + 2 * i + 1] = sn * a0 + c * a1
        else:
            for i in range(half):
                c = cos[cb + i]
                sn = sin[cb + i]
                a0 = x[xo + i]
                a1 = x[xo + half + i]
                y[yo + i] = c * a0 - sn * a1
                y[yo + half + i] = sn * a0 + c * a1
        for i in range(2 * half, hd):
            y[yo + i] = x[xo + i]


@numba.njit(**NJIT)
def _rotary_serial(x, y, xs, ys, cos, sin, rows, nb, nseq, nh, hd, half, interleaved):
    # x, y: flat float32 (strides xs / ys: batch, head, seq); cos, sin: flat (rows x half); rows: (nb*nseq,)
    for u in range(nb * nseq):
        _rotate_token(x, y, xs, ys, cos, sin, rows, u, nseq, nh, hd, half, interleaved)


@numba.njit(**NJIT_PARALLEL)
def _rotary_parallel(x, y, xs, ys, cos, sin, rows, nb, nseq, nh, hd, half, interleaved):
    # as _rotary_serial, one task per token
    for u in prange(nb * nseq):
        _rotate_token(x, y, xs, ys, cos, sin, rows, u, nseq, nh, hd, half, interleaved)


def rotary(x, y, xs, ys, cos, sin, rows, nb, nseq, nh, hd, half, interleaved, threads=None) -> None:
    """y = the rotary embedding of x (see the module docstring); ``rows`` (int64, nb*nseq) must hold valid
    cache rows (the caller checks position_ids)."""
    if threads is None:
        threads = num_threads()
    args = (x, y, np.asarray(xs, np.int64), np.asarray(ys, np.int64), cos, sin, rows, nb, nseq, nh, hd, half,
            bool(interleaved))
    if threads > 1 and nb * nseq > 1 and nb * nseq * nh * hd * 4 >= _config.PARALLEL_MIN_WORK:
        _rotary_parallel(*args)
    else:
        _rotary_serial(*args)
