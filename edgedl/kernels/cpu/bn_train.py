"""BatchNormalization for training, float32: the batch-statistics forward and both backwards.

Tensors are viewed as (N, C, S) planes (S: the product of the spatial dims). Every kernel runs one channel per
``prange`` iteration (serially below ``config.PARALLEL_MIN_WORK`` elements) and accumulates its sums in float64 in a
fixed order (n, then s), so results are the same bits for any thread count. Nothing larger than a per-channel
vector is allocated.

* :func:`bn_train_forward`: mean and population variance of each channel over (N, S) (two passes: the sum,
  then the squared deviations), y = (x - mean) / sqrt(var + eps) * scale + bias, and the running statistics
  ``running * momentum + batch * (1 - momentum)`` (ONNX's update).
* :func:`bn_train_backward`: the gradient through the batch statistics,
  dx = scale * inv / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)), with dscale = sum(dy * xhat) and
  dbias = sum(dy) (M = N * S, inv = 1 / sqrt(var + eps), xhat = (x - mean) * inv).
* :func:`bn_frozen_backward`: the running-statistics (inference) form, a per-channel affine map:
  dx = dy * scale * inv, dscale = sum(dy * xhat), dbias = sum(dy).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads

__all__ = ["bn_train_forward", "bn_train_backward", "bn_frozen_backward"]


@numba.njit(**NJIT)
def _moments(x, c):
    # x: (N, C, S) float32 -> (mean, population variance) of channel c, float64, two passes
    n_n, n_s = x.shape[0], x.shape[2]
    total = 0.0
    for n in range(n_n):
        row = x[n, c]
        for i in range(n_s):
            total += row[i]
    mean = total / (n_n * n_s)
    dev = 0.0
    for n in range(n_n):
        row = x[n, c]
        for i in range(n_s):
            d = row[i] - mean
            dev += d * d
    return mean, dev / (n_n * n_s)


@numba.njit(**NJIT)
def _forward_channel(c, x, scale, bias, run_mean, run_var, eps, momentum, y, new_mean, new_var):
    # channel c of x, y: (N, C, S) float32; scale, bias, run_*, new_*: (C,) float32
    n_n, n_s = x.shape[0], x.shape[2]
    mean, var = _moments(x, c)
    inv = 1.0 / math.sqrt(var + eps)
    a = np.float32(scale[c] * inv)
    b = np.float32(bias[c] - mean * scale[c] * inv)
    for n in range(n_n):
        xr = x[n, c]
        yr = y[n, c]
        for i in range(n_s):
            yr[i] = xr[i] * a + b
    new_mean[c] = np.float32(run_mean[c] * momentum + mean * (1.0 - momentum))
    new_var[c] = np.float32(run_var[c] * momentum + var * (1.0 - momentum))


@numba.njit(**NJIT)
def _backward_channel(c, x, dy, scale, eps, dx, dscale, dbias, want_dx):
    # channel c of x, dy, dx: (N, C, S) float32; scale, dscale, dbias: (C,) float32
    n_n, n_s = x.shape[0], x.shape[2]
    m = n_n * n_s
    mean, var = _moments(x, c)
    inv = 1.0 / math.sqrt(var + eps)
    sum_dy = 0.0
    sum_dy_xc = 0.0  # sum(dy * (x - mean))
    for n in range(n_n):
        xr = x[n, c]
        gr = dy[n, c]
        for i in range(n_s):
            sum_dy += gr[i]
            sum_dy_xc += gr[i] * (xr[i] - mean)
    dscale[c] = np.float32(sum_dy_xc * inv)
    dbias[c] = np.float32(sum_dy)
    if want_dx:
        # dx = k * dy - slope * x - off with k = scale * inv, slope = k * inv^2 * sum_dy_xc / M,
        # off = k * sum_dy / M - mean * slope
        k = scale[c] * inv
        slope = k * inv * inv * sum_dy_xc / m
        off = k * sum_dy / m - mean * slope
        for n in range(n_n):
            xr = x[n, c]
            gr = dy[n, c]
            dr = dx[n, c]
            for i in range(n_s):
                dr[i] = np.float32(k * gr[i] - slope * xr[i] - off)


@numba.njit(**NJIT)
def _frozen_channel(c, x, dy, scale, mean_in, var_in, eps, dx, dscale, dbias, want_dx):
    # channel c of the running-statistics form: x, dy, dx (N, C, S); scale, mean_in, var_in, dscale, dbias (C,)
    n_n, n_s = x.shape[0], x.shape[2]
    inv = 1.0 / math.sqrt(np.float64(var_in[c]) + eps)
    mean = np.float64(mean_in[c])
    sum_dy = 0.0
    sum_dy_xc = 0.0
    for n in range(n_n):
        xr = x[n, c]
        gr = dy[n, c]
        for i in range(n_s):
            sum_dy += gr[i]
            sum_dy_xc += gr[i] * (xr[i] - mean)
    dscale[c] = np.float32(sum_dy_xc * inv)
    dbias[c] = np.float32(sum_dy)
    if want_dx:
        k = np.float32(scale[c] * inv)
        for n in range(n_n):
            gr = dy[n, c]
            dr = dx[n, c]
            for i in range(n_s):
                dr[i] = gr[i] * k


@numba.njit(**NJIT)
def _forward_serial(x, scale, bias, run_mean, run_var, eps, momentum, y, new_mean, new_var):
    for c in range(x.shape[1]):
        _forward_channel(c, x, scale, bias, run_mean, run_var, eps, momentum, y, new_mean, new_var)


@numba.njit(**NJIT_PARALLEL)
def _forward_parallel(x, scale, bias, run_mean, run_var, eps, momentum, y, new_mean, new_var):
    for c in prange(x.shape[1]):
        _forward_channel(c, x, scale, bias, run_mean, run_var, eps, momentum, y, new_mean, new_var)


@numba.njit(**NJIT)
def _backward_serial(x, dy, scale, eps, dx, dscale, dbias, want_dx):
    for c in range(x.shape[1]):
        _backward_channel(c, x, dy, scale, eps, dx, dscale, dbias, want_dx)


@numba.njit(**NJIT_PARALLEL)
def _backward_parallel(x, dy, scale, eps, dx, dscale, dbias, want_dx):
    for c in prange(x.shape[1]):
        _backward_channel(c, x, dy, scale, eps, dx, dscale, dbias, want_dx)


@numba.njit(**NJIT)
def _frozen_serial(x, dy, scale, mean_in, var_in, eps, dx, dscale, dbias, want_dx):
    for c in range(x.shape[1]):
        _frozen_channel(c, x, dy, scale, mean_in, var_in, eps, dx, dscale, dbias, want_dx)


@numba.njit(**NJIT_PARALLEL)
def _frozen_parallel(x, dy, scale, mean_in, var_in, eps, dx, dscale, dbias, want_dx):
    for c in prange(x.shape[1]):
        _frozen_channel(c, x, dy, scale, mean_in, var_in, eps, dx, dscale, dbias, want_dx)


def _parallel(x: np.ndarray) -> bool:
    return x.size >= _config.PARALLEL_MIN_WORK and x.shape[1] > 1 and num_threads() > 1


def _planes(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], a.shape[1], -1)


def bn_train_forward(x, scale, bias, run_mean, run_var, eps: float, momentum: float, y, new_mean, new_var) -> None:
    """Batch-statistics forward of contiguous float32 ``x`` (N, C, ...) into ``y``; the updated running
    statistics into ``new_mean`` / ``new_var`` (C,)."""
    fn = _forward_parallel if _parallel(x) else _forward_serial
    fn(_planes(x), scale, bias, run_mean, run_var, float(eps), float(momentum), _planes(y), new_mean, new_var)


def bn_train_backward(x, dy, scale, eps: float, want_dx: bool):
    """(dx or None, dscale, dbias) through the batch statistics of ``x``."""
    c = x.shape[1]
    dx = np.empty(x.shape, np.float32) if want_dx else np.empty((1, c, 1), np.float32)
    dscale, dbias = np.empty(c, np.float32), np.empty(c, np.float32)
    fn = _backward_parallel if _parallel(x) else _backward_serial
    fn(_planes(x), _planes(dy), scale, float(eps), _planes(dx), dscale, dbias, want_dx)
    return (dx if want_dx else None), dscale, dbias


def bn_frozen_backward(x, dy, scale, mean, var, eps: float, want_dx: bool):
    """(dx or None, dscale, dbias) of the running-statistics (inference) form."""
    c = x.shape[1]
    dx = np.empty(x.shape, np.float32) if want_dx else np.empty((1, c, 1), np.float32)
    dscale, dbias = np.empty(c, np.float32), np.empty(c, np.float32)
    fn = _frozen_parallel if _parallel(x) else _frozen_serial
    fn(_planes(x), _planes(dy), scale, mean, var, float(eps), _planes(dx), dscale, dbias, want_dx)
    return (dx if want_dx else None), dscale, dbias
