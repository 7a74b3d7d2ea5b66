"""SwiGLU kernels, float32, on flat arrays of one size.

Forward: ``y = a * sigmoid(alpha * a) * b`` (the Swish gate times the value input).
Backward: with ``s = sigmoid(alpha * a)``::

    db = g * a * s
    da = g * b * (s + alpha * a * s * (1 - s))

The sigmoid is :func:`edgedl.kernels.cpu.sigmoid_ir.sigmoid_f32` and the forward Swish gate
:func:`~edgedl.kernels.cpu.sigmoid_ir.swish_f32`, the ones the Swish kernels use. Large arrays split into
contiguous chunks run in parallel (see ``elementwise.num_chunks``).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from .config import NJIT, NJIT_PARALLEL
from .elementwise import num_chunks, sigmoid_f32
from .sigmoid_ir import swish_f32


@numba.njit(**NJIT)
def swiglu_range(a, b, y, alpha, start, stop):
    # a, b, y (n,) f32: y[i] = a[i] * sigmoid(alpha * a[i]) * b[i] for i in [start, stop)
    al = np.float32(alpha)
    for i in range(start, stop):
        v = a[i]
        y[i] = swish_f32(v, al) * b[i]


@numba.njit(**NJIT_PARALLEL)
def swiglu_parallel(a, b, y, alpha, nchunks):
    n = y.shape[0]
    for k in prange(nchunks):
        swiglu_range(a, b, y, alpha, k * n // nchunks, (k + 1) * n // nchunks)


#: the backward without ``reassoc``: with it LLVM re-associated ``s + alpha * a * s * (1 - s)`` around the
#: sigmoid differently in the vectorized loop body and in its scalar remainder, so the bits depended on where
#: a thread's chunk started (1 and 2 threads differed in the last bit)
_NJIT_GRAD = dict(NJIT, fastmath={"contract", "arcp", "nsz"})


@numba.njit(**_NJIT_GRAD)
def swiglu_grad_range(a, b, g, da, db, alpha, want_a, want_b, start, stop):
    # a, b, g, da, db (n,) f32 (da / db unused when not wanted): the gradients for i in [start, stop)
    al = np.float32(alpha)
    one = np.float32(1.0)
    for i in range(start, stop):
        v = a[i]
        s = sigmoid_f32(al * v)
        gi = g[i]
        if want_b:
            db[i] = gi * (v * s)
        if want_a:
            da[i] = gi * b[i] * (s + al * v * s * (one - s))


@numba.njit(**dict(_NJIT_GRAD, parallel=True))
def swiglu_grad_parallel(a, b, g, da, db, alpha, want_a, want_b, nchunks):
    n = g.shape[0]
    for k in prange(nchunks):
        swiglu_grad_range(a, b, g, da, db, alpha, want_a, want_b, k * n // nchunks, (k + 1) * n // nchunks)


def swiglu(a, b, y, alpha: float, threads: int | None = None) -> None:
    """y = swish_alpha(a) * b on flat float32 arrays (serial or parallel by size)."""
    n = num_chunks(y.size, threads)
    if n == 1:
        swiglu_range(a, b, y, float(alpha), 0, y.size)
    else:
        swiglu_parallel(a, b, y, float(alpha), n)


def swiglu_bind(a, b, y, alpha: float, threads: int):
    """A no-argument callable doing :func:`swiglu` on these very arrays (kernel chosen once)."""
    n = num_chunks(y.size, threads)
    if n == 1:
        return functools.partial(swiglu_range, a, b, y, float(alpha), 0, y.size)
    return functools.partial(swiglu_parallel, a, b, y, float(alpha), n)


def swiglu_grad(a, b, g, da, db, alpha: float, want_a: bool, want_b: bool, threads: int | None = None) -> None:
    """da, db of SwiGLU on flat float32 arrays (an unwanted one may be any float32 array of the size)."""
    n = num_chunks(g.size, threads)
    if n == 1:
        swiglu_grad_range(a, b, g, da, db, float(alpha), bool(want_a), bool(want_b), 0, g.size)
    else:
        swiglu_grad_parallel(a, b, g, da, db, float(alpha), bool(want_a), bool(want_b), n)
