"""Normalization kernels (BatchNormalization inference, LRN), float32.

Tensors are viewed as planes: ``x`` (N, C, S) with S the product of the spatial dims.

* BatchNormalization in inference mode is a per-channel affine map ``y = x * a[c] + b[c]`` with
  ``a = scale / sqrt(var + eps)`` and ``b = B - mean * a``, precomputed in float64 when the parameters are
  constants (:func:`bn_affine`), or computed per run by :func:`_bn_affine_kernel` into the workspace.
* LRN sums squares over a window of channels, then ``y = x * (bias + alpha / size * sumsq) ** -beta``; the
  power has fast paths for beta = 0.75, 0.5 and 1.

Each parallel chunk owns a contiguous range of (n, c) planes (or of batch rows when S == 1).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads


def _nchunks(work: int, units: int) -> int:
    if work < _config.PARALLEL_MIN_WORK or units < 2:
        return 0
    nt = num_threads()
    return min(units, 4 * nt) if nt > 1 else 0


# --- BatchNormalization (inference): per-channel affine ----------------------------------------------
def bn_affine(scale, bias, mean, var, eps: float):
    """(a, b) float32 per channel from the BatchNormalization parameters, computed in float64."""
    s = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    t = bias.astype(np.float64) - mean.astype(np.float64) * s
    return np.ascontiguousarray(s, np.float32), np.ascontiguousarray(t, np.float32)


@numba.njit(**NJIT)
def _bn_affine_kernel(scale, bias, mean, var, eps, a, b):
    # runtime parameters (C,) -> a, b (C,), in float64
    for c in range(a.shape[0]):
        s = np.float64(scale[c]) / math.sqrt(np.float64(var[c]) + eps)
        a[c] = np.float32(s)
        b[c] = np.float32(np.float64(bias[c]) - np.float64(mean[c]) * s)


@numba.njit(**NJIT)
def _affine_planes(x, y, a, b, p0, p1):
    # x, y are (N * C, S): y[p] = x[p] * a[p % C] + b[p % C]
    n_c = a.shape[0]
    n_s = x.shape[1]
    for p in range(p0, p1):
        c = p % n_c
        ac = a[c]
        bc = b[c]
        xr = x[p]
        yr = y[p]
        for i in range(n_s):
            yr[i] = xr[i] * ac + bc


@numba.njit(**NJIT_PARALLEL)
def _affine_planes_par(x, y, a, b, nchunks):
    n_p = x.shape[0]
    for k in prange(nchunks):
        _affine_planes(x, y, a, b, k * n_p // nchunks, (k + 1) * n_p // nchunks)


@numba.njit(**NJIT)
def _affine_rows(x, y, a, b, r0, r1):
    # x, y are (N, C) (no spatial dims): y[n] = x[n] * a + b
    n_c = a.shape[0]
    for r in range(r0, r1):
        xr = x[r]
        yr = y[r]
        for c in range(n_c):
            yr[c] = xr[c] * a[c] + b[c]


@numba.njit(**NJIT_PARALLEL)
def _affine_rows_par(x, y, a, b, nchunks):
    n_r = x.shape[0]
    for k in prange(nchunks):
        _affine_rows(x, y, a, b, k * n_r // nchunks, (k + 1) * n_r // nchunks)


def channel_affine(x, y, a, b, n: int, c: int, s: int) -> None:
    """y = x * a[c] + b[c] over x, y of shape (n, c, s) (any contiguous arrays of that size)."""
    work = n * c * s
    if s == 1:
        x2, y2 = x.reshape(n, c), y.reshape(n, c)
        nch = _nchunks(work, n)
        if nch:
            _affine_rows_par(x2, y2, a, b, nch)
        else:
            _affine_rows(x2, y2, a, b, 0, n)
        return
    x2, y2 = x.reshape(n * c, s), y.reshape(n * c, s)
    nch = _nchunks(work, n * c)
    if nch:
        _affine_planes_par(x2, y2, a, b, nch)
    else:
        _affine_planes(x2, y2, a, b, 0, n * c)


def bn_runtime_affine(scale, bias, mean, var, eps: float, a, b) -> None:
    """Fill a, b (float32 (C,)) from runtime BatchNormalization parameters (float32 arrays)."""
    _bn_affine_kernel(scale, bias, mean, var, np.float64(eps), a, b)


# --- LRN -----------------------------------------------------------------------------------------------
@numba.njit(**NJIT)
def _lrn_planes(x, y, p0, p1, c1, c2, k, bias, beta, beta_code):
    # x, y are (N, C, S); planes p = n * C + c for p0 <= p < p1:
    # y[n, c] = x[n, c] * (bias + k * sum_{i=c-c1}^{c+c2} x[n, i]^2) ** -beta   (k = alpha / size)
    n_c = x.shape[1]
    n_s = x.shape[2]
    nb = np.float32(-beta)
    for p in range(p0, p1):
        n = p // n_c
        c = p - n * n_c
        lo = max(0, c - c1)
        hi = min(n_c - 1, c + c2)
        yr = y[n, c]
        xr = x[n, c]
        for i in range(n_s):
            yr[i] = np.float32(0.0)
        for ch in range(lo, hi + 1):
            xc = x[n, ch]
            for i in range(n_s):
                v = xc[i]
                yr[i] += v * v
        if beta_code == 1:  # beta = 0.75: t ** -0.75 = 1 / (sqrt(t) * sqrt(sqrt(t)))
            for i in range(n_s):
                t = bias + k * yr[i]
                r = np.float32(math.sqrt(t))
                yr[i] = xr[i] / (r * np.float32(math.sqrt(r)))
        elif beta_code == 2:  # beta = 0.5
            for i in range(n_s):
                yr[i] = xr[i] / np.float32(math.sqrt(bias + k * yr[i]))
        elif beta_code == 3:  # beta = 1
            for i in range(n_s):
                yr[i] = xr[i] / (bias + k * yr[i])
        else:
            for i in range(n_s):
                yr[i] = xr[i] * np.float32(math.pow(bias + k * yr[i], nb))


@numba.njit(**NJIT_PARALLEL)
def _lrn_planes_par(x, y, c1, c2, k, bias, beta, beta_code, nchunks):
    n_p = x.shape[0] * x.shape[1]
    for q in prange(nchunks):
        _lrn_planes(x, y, q * n_p // nchunks, (q + 1) * n_p // nchunks, c1, c2, k, bias, beta, beta_code)


def lrn_runner(n: int, c: int, s: int, size: int, alpha: float, beta: float, bias: float):
    """``run(x, y)`` for LRN over (n, c, s) views."""
    c1 = (size - 1) // 2
    c2 = -(-(size - 1) // 2)
    k = np.float32(alpha / size)
    bias32 = np.float32(bias)
    beta32 = np.float32(beta)
    beta_code = {0.75: 1, 0.5: 2, 1.0: 3}.get(float(beta), 0)
    work = n * c * s * (c1 + c2 + 2)
    units = n * c

    def run(x, y):
        x3, y3 = x.reshape(n, c, s), y.reshape(n, c, s)
        nch = _nchunks(work, units)
        if nch:
            _lrn_planes_par(x3, y3, c1, c2, k, bias32, beta32, beta_code, nch)
        else:
            _lrn_planes(x3, y3, 0, units, c1, c2, k, bias32, beta32, beta_code)
    return run
