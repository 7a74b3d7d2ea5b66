"""Row normalization kernels, float32: LayerNormalization, RMSNormalization, the onnxruntime fused
SkipLayerNormalization / SkipSimplifiedLayerNormalization, GroupNormalization and InstanceNormalization,
and the backward passes of all of them.

Every op here normalizes contiguous *rows* of a C-contiguous tensor viewed as (rows, n):

* LayerNormalization / RMSNormalization (axis a): rows = prod(shape[:a]), n = prod(shape[a:]); the
  scale ``g`` and bias ``b`` are vectors of n (one value per column).
* GroupNormalization: rows = N * G (one per sample and group), n = (C / G) * S with S the spatial size;
  a row is ``cpg = C / G`` channel segments of S elements, each with its own scale and bias.
  InstanceNormalization is the case G = C.

Statistics (one pass over the row, float64 accumulation of the sum and the sum of squares, which is exact
enough for float32 data: x * x has at most 48 significant bits)::

    mean = sum(x) / n          var = max(sum(x * x) / n - mean**2, 0)        inv = 1 / sqrt(var + eps)
    LayerNorm:  y = (x - mean) * inv * g + b
    RMSNorm:    y = x * inv * g,  with inv = 1 / sqrt(sum(x * x) / n + eps)   (mean reported as 0)

The skip variants first form ``s = x + skip (+ bias)`` in the same pass that accumulates the statistics
(written to the optional ``input_skip_bias_sum`` output, else straight into y) and normalize s. ``skip``
may have fewer rows than x (shape (S, H) or (1, S, H) against (B, S, H)): row r reads skip row
``r % skip_rows``.

Backward (per row, xhat = (x - mean) * inv, dxhat = dy * g)::

    dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))     (RMS: without the mean(dxhat) term)
    dg = sum over rows of dy * xhat,  db = sum over rows of dy

dx runs in parallel over rows; dg / db in parallel over blocks of columns (or over channels for the group
form), each summing its rows in a fixed order, so the results are the same bits for any thread count.
Parallel variants run only when the work is at least ``config.PARALLEL_MIN_WORK``.
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads

# numpy error model: no zero-division checks on the per-row divisions (n > 0 is checked before any call)
_NJIT = dict(NJIT, error_model="numpy")
_NJIT_PAR = dict(NJIT_PARALLEL, error_model="numpy")

#: columns per work item of the parameter-gradient kernels
COL_BLOCK = 256
#: the stand-in for an absent array
EMPTY = np.zeros(0, np.float32)


# --- forward: LayerNorm / RMSNorm / SkipLayerNorm --------------------------------------------------------
@numba.njit(**_NJIT)
def _row_sums(src, n):
    # src: (n,) float32 -> (sum, sum of squares), float64
    s = 0.0
    q = 0.0
    for k in range(n):
        v = np.float64(src[k])
        s += v
        q += v * v
    return s, q


@numba.njit(**_NJIT)
def _skip_sums(xr, sr, bias, dst, n, has_bias):
    # dst = xr + sr (+ bias), all (n,) float32 -> (sum, sum of squares) of dst, float64
    s = 0.0
    q = 0.0
    if has_bias:
        for k in range(n):
            v = xr[k] + sr[k] + bias[k]
            dst[k] = v
            w = np.float64(v)
            s += w
            q += w * w
    else:
        for k in range(n):
            v = xr[k] + sr[k]
            dst[k] = v
            w = np.float64(v)
            s += w
            q += w * w
    return s, q


@numba.njit(**_NJIT)
def _stats(s, q, n, eps, simplified):
    # (mean, inv) from the float64 sum and sum of squares of n values
    if simplified:
        return 0.0, 1.0 / math.sqrt(q / n + eps)
    mean = s / n
    var = q / n - mean * mean
    return mean, 1.0 / math.sqrt((var if var > 0.0 else 0.0) + eps)


@numba.njit(**_NJIT)
def _skip_rows(x, skip, bias, g, b, y, ssum, mean_out, inv_out, n, skip_rows, r0, r1, eps, simplified):
    # the skip form of ln_rows: s = x + skip (+ bias) goes to ssum (or straight to y), then y = norm(s)
    has_bias = bias.size > 0
    has_beta = b.size > 0
    for r in range(r0, r1):
        yr = y[r * n:r * n + n]
        k0 = (r % skip_rows) * n
        dst = ssum[r * n:r * n + n] if ssum.size > 0 else yr
        s, q = _skip_sums(x[r * n:r * n + n], skip[k0:k0 + n], bias, dst, n, has_bias)
        mean, inv = _stats(s, q, n, eps, simplified)
        m32 = np.float32(mean)
        i32 = np.float32(inv)
        if simplified:
            for k in range(n):
                yr[k] = dst[k] * i32 * g[k]
        elif has_beta:
            for k in range(n):
                yr[k] = (dst[k] - m32) * i32 * g[k] + b[k]
        else:
            for k in range(n):
                yr[k] = (dst[k] - m32) * i32 * g[k]
        if mean_out.size > 0:
            mean_out[r] = np.float32(mean)
        if inv_out.size > 0:
            inv_out[r] = i32


@numba.njit(**_NJIT)
def ln_rows(x, skip, bias, g, b, y, ssum, mean_out, inv_out, n, skip_rows, r0, r1, eps, simplified):
    """Rows [r0, r1) of x, y viewed as (rows, n) (flat float32).

    skip: (skip_rows * n,) or empty (no skip); bias: (n,) or empty; g: (n,); b: (n,) or empty (no shift);
    ssum: (rows * n,) or empty: where x + skip + bias goes; mean_out, inv_out: (rows,) or empty.
    simplified: RMS normalization (no mean subtraction, no b)."""
    if skip.size > 0:
        _skip_rows(x, skip, bias, g, b, y, ssum, mean_out, inv_out, n, skip_rows, r0, r1, eps, simplified)
        return
    has_beta = b.size > 0
    # the normalization loops stay in this function: moved into a helper they run ~20 % slower (measured)
    for r in range(r0, r1):
        xr = x[r * n:r * n + n]
        yr = y[r * n:r * n + n]
        s, q = _row_sums(xr, n)
        mean, inv = _stats(s, q, n, eps, simplified)
        m32 = np.float32(mean)
        i32 = np.float32(inv)
        if simplified:
            for k in range(n):
                yr[k] = xr[k] * i32 * g[k]
        elif has_beta:
            for k in range(n):
                yr[k] = (xr[k] - m32) * i32 * g[k] + b[k]
        else:
            for k in range(n):
                yr[k] = (xr[k] - m32) * i32 * g[k]
        if mean_out.size > 0:
            mean_out[r] = np.float32(mean)
        if inv_out.size > 0:
            inv_out[r] = i32


@numba.njit(**_NJIT_PAR)
def ln_rows_par(x, skip, bias, g, b, y, ssum, mean_out, inv_out, n, skip_rows, rows, eps, simplified, nchunks):
    for c in prange(nchunks):
        ln_rows(x, skip, bias, g, b, y, ssum, mean_out, inv_out, n, skip_rows, rows * c // nchunks,
                rows * (c + 1) // nchunks, eps, simplified)


def _nchunks(work: int, units: int, threads: int | None = None) -> int:
    """Parallel chunks for ``units`` independent rows (0: run serially)."""
    if work < _config.PARALLEL_MIN_WORK or units < 2:
        return 0
    nt = num_threads() if threads is None else threads
    return min(units, nt) if nt > 1 else 0


class RowNorm:
    """A prepared LayerNorm / RMSNorm / SkipLayerNorm over (rows, n) float32 rows.

    ``run_flat(x, skip, bias, g, b, y, ssum, mean, inv)`` takes flat C-contiguous float32 arrays, ``EMPTY``
    for an absent one (skip, bias, b, ssum, mean, inv); ``g`` and ``b`` are (n,) vectors. ``__call__`` takes
    the arrays in any shape (None when absent); ``bind`` prepares the call once."""

    def __init__(self, rows: int, n: int, eps: float, simplified: bool, skip_rows: int = 0):
        self.rows, self.n = int(rows), int(n)
        self.eps = float(eps)
        self.simplified = bool(simplified)
        self.skip_rows = max(int(skip_rows), 1)
        self.work = 4 * self.rows * self.n

    def run_flat(self, x, skip, bias, g, b, y, ssum, mean, inv):
        nch = _nchunks(self.work, self.rows)
        if nch:
            ln_rows_par(x, skip, bias, g, b, y, ssum, mean, inv, self.n, self.skip_rows, self.rows, self.eps,
                        self.simplified, nch)
        else:
            ln_rows(x, skip, bias, g, b, y, ssum, mean, inv, self.n, self.skip_rows, 0, self.rows, self.eps,
                    self.simplified)

    def call_args(self, x, g, b, y, skip=None, bias=None, ssum=None, mean=None, inv=None, threads=None) -> tuple:
        flat = _flat
        args = (flat(x), flat(skip), flat(bias), flat(g), flat(b), flat(y), flat(ssum), flat(mean), flat(inv),
                self.n, self.skip_rows)
        nch = _nchunks(self.work, self.rows, threads)
        if nch:
            return (ln_rows_par, *args, self.rows, self.eps, self.simplified, nch)
        return (ln_rows, *args, 0, self.rows, self.eps, self.simplified)

    def __call__(self, *arrays, **kw):
        fn, *a = self.call_args(*arrays, **kw)
        fn(*a)

    def bind(self, *arrays, threads=None, **kw):
        return functools.partial(*self.call_args(*arrays, threads=threads, **kw))


def _flat(a):
    return EMPTY if a is None else a.reshape(-1)


# --- forward: GroupNormalization / InstanceNormalization ------------------------------------------------
@numba.njit(**_NJIT)
def gn_rows(x, scale, bias, y, groups, cpg, s_len, pdiv, r0, r1, eps):
    """x, y: (N * G, cpg * S) rows, flat float32; rows [r0, r1). scale, bias: per channel (pdiv = 1) or per
    group (pdiv = cpg): channel c = g * cpg + j reads scale[c // pdiv]."""
    n = cpg * s_len
    for r in range(r0, r1):
        xr = x[r * n:r * n + n]
        yr = y[r * n:r * n + n]
        s, q = _row_sums(xr, n)
        mean, inv = _stats(s, q, n, eps, False)
        m32 = np.float32(mean)
        g = r % groups
        for j in range(cpg):
            c = (g * cpg + j) // pdiv
            a = np.float32(scale[c] * inv)
            bb = bias[c]
            xs = xr[j * s_len:j * s_len + s_len]
            ys = yr[j * s_len:j * s_len + s_len]
            for k in range(s_len):
                ys[k] = (xs[k] - m32) * a + bb


@numba.njit(**_NJIT_PAR)
def gn_rows_par(x, scale, bias, y, groups, cpg, s_len, pdiv, rows, eps, nchunks):
    for c in prange(nchunks):
        gn_rows(x, scale, bias, y, groups, cpg, s_len, pdiv, rows * c // nchunks, rows * (c + 1) // nchunks, eps)


class GroupNormKernel:
    """A prepared Group/InstanceNormalization of an (N, C, S) float32 tensor with G groups."""

    def __init__(self, n: int, c: int, s: int, groups: int, eps: float, per_group_params: bool):
        self.rows = int(n) * int(groups)
        self.groups, self.cpg, self.s = int(groups), int(c) // int(groups), int(s)
        self.pdiv = self.cpg if per_group_params else 1
        self.eps = float(eps)
        self.work = 4 * self.rows * self.cpg * self.s

    def call_args(self, x, scale, bias, y, threads=None) -> tuple:
        args = (x.reshape(-1), scale.reshape(-1), bias.reshape(-1), y.reshape(-1), self.groups, self.cpg, self.s,
                self.pdiv)
        nch = _nchunks(self.work, self.rows, threads)
        if nch:
            return (gn_rows_par, *args, self.rows, self.eps, nch)
        return (gn_rows, *args, 0, self.rows, self.eps)

    def __call__(self, x, scale, bias, y):
        fn, *a = self.call_args(x, scale, bias, y)
        fn(*a)

    def bind(self, x, scale, bias, y, threads=None):
        return functools.partial(*self.call_args(x, scale, bias, y, threads))


# --- backward: LayerNorm / RMSNorm ------------------------------------------------------------------------
@numba.njit(**_NJIT)
def _ln_bwd_rows(x, dy, g, dx, mean_o, inv_o, n, r0, r1, eps, simplified, want_dx):
    # rows [r0, r1) of x, dy, dx: (rows, n) flat float32; g: (n,). Stores each row's mean and inv (float64)
    # in mean_o, inv_o; writes dx when want_dx
    for r in range(r0, r1):
        xr = x[r * n:r * n + n]
        s, q = _row_sums(xr, n)
        mean, inv = _stats(s, q, n, eps, simplified)
        mean_o[r] = mean
        inv_o[r] = inv
        if not want_dx:
            continue
        gr = dy[r * n:r * n + n]
        sd = 0.0   # sum(dxhat)
        sdx = 0.0  # sum(dxhat * xhat)
        for k in range(n):
            d = np.float64(gr[k]) * g[k]
            sd += d
            sdx += d * ((xr[k] - mean) * inv)
        c1 = 0.0 if simplified else sd / n
        c2 = sdx / n
        dr = dx[r * n:r * n + n]
        for k in range(n):
            xh = (xr[k] - mean) * inv
            dr[k] = np.float32(inv * (np.float64(gr[k]) * g[k] - c1 - xh * c2))


@numba.njit(**_NJIT_PAR)
def _ln_bwd_rows_par(x, dy, g, dx, mean_o, inv_o, n, rows, eps, simplified, want_dx, nchunks):
    for c in prange(nchunks):
        _ln_bwd_rows(x, dy, g, dx, mean_o, inv_o, n, rows * c // nchunks, rows * (c + 1) // nchunks, eps,
                     simplified, want_dx)


@numba.njit(**_NJIT)
def _ln_bwd_params(x, dy, mean_o, inv_o, dg, db, n, rows, b0, b1):
    # column blocks [b0, b1) of COL_BLOCK columns: dg[k] = sum_r dy[r, k] * xhat[r, k], db[k] = sum_r dy[r, k]
    acc_g = np.zeros(COL_BLOCK, np.float64)
    acc_b = np.zeros(COL_BLOCK, np.float64)
    for blk in range(b0, b1):
        k0 = blk * COL_BLOCK
        w = min(COL_BLOCK, n - k0)
        for k in range(w):
            acc_g[k] = 0.0
            acc_b[k] = 0.0
        for r in range(rows):
            xr = x[r * n + k0:r * n + k0 + w]
            gr = dy[r * n + k0:r * n + k0 + w]
            mean = mean_o[r]
            inv = inv_o[r]
            for k in range(w):
                d = np.float64(gr[k])
                acc_g[k] += d * ((xr[k] - mean) * inv)
                acc_b[k] += d
        for k in range(w):
            dg[k0 + k] = np.float32(acc_g[k])
            db[k0 + k] = np.float32(acc_b[k])


@numba.njit(**_NJIT_PAR)
def _ln_bwd_params_par(x, dy, mean_o, inv_o, dg, db, n, rows, nblocks, nchunks):
    for c in prange(nchunks):
        _ln_bwd_params(x, dy, mean_o, inv_o, dg, db, n, rows, nblocks * c // nchunks, nblocks * (c + 1) // nchunks)


def ln_backward(x, dy, g, eps: float, simplified: bool, want_dx: bool, want_params: bool):
    """LayerNorm (or RMSNorm) backward over (rows, n) float32 arrays; g: (n,) float32.
    Returns (dx or None, dg or None, db or None) with dg, db of shape (n,)."""
    rows, n = x.shape
    xf, gf = x.reshape(-1), dy.reshape(-1)
    dx = np.empty(rows * n, np.float32) if want_dx else EMPTY
    mean_o = np.empty(rows, np.float64)
    inv_o = np.empty(rows, np.float64)
    nch = _nchunks(6 * rows * n, rows)
    if nch:
        _ln_bwd_rows_par(xf, gf, g, dx, mean_o, inv_o, n, rows, eps, simplified, want_dx, nch)
    else:
        _ln_bwd_rows(xf, gf, g, dx, mean_o, inv_o, n, 0, rows, eps, simplified, want_dx)
    dg = db = None
    if want_params:
        dg = np.empty(n, np.float32)
        db = np.empty(n, np.float32)
        nblocks = (n + COL_BLOCK - 1) // COL_BLOCK
        nch = _nchunks(3 * rows * n, nblocks)
        if nch:
            _ln_bwd_params_par(xf, gf, mean_o, inv_o, dg, db, n, rows, nblocks, nch)
        else:
            _ln_bwd_params(xf, gf, mean_o, inv_o, dg, db, n, rows, 0, nblocks)
    return (dx.reshape(rows, n) if want_dx else None), dg, db


# --- backward: GroupNorm / InstanceNorm --------------------------------------------------------------------
@numba.njit(**_NJIT)
def _gn_bwd_rows(x, dy, scale, dx, mean_o, inv_o, groups, cpg, s_len, pdiv, r0, r1, eps, want_dx):
    # rows (n, g) of (N * G, cpg * S); stores mean / inv (float64) per row; dx when want_dx
    n = cpg * s_len
    for r in range(r0, r1):
        xr = x[r * n:r * n + n]
        s, q = _row_sums(xr, n)
        mean, inv = _stats(s, q, n, eps, False)
        mean_o[r] = mean
        inv_o[r] = inv
        if not want_dx:
            continue
        gr = dy[r * n:r * n + n]
        g = r % groups
        sd = 0.0
        sdx = 0.0
        for j in range(cpg):
            sc = np.float64(scale[(g * cpg + j) // pdiv])
            for k in range(j * s_len, j * s_len + s_len):
                d = np.float64(gr[k]) * sc
                sd += d
                sdx += d * ((xr[k] - mean) * inv)
        c1 = sd / n
        c2 = sdx / n
        dr = dx[r * n:r * n + n]
        for j in range(cpg):
            sc = np.float64(scale[(g * cpg + j) // pdiv])
            for k in range(j * s_len, j * s_len + s_len):
                xh = (xr[k] - mean) * inv
                dr[k] = np.float32(inv * (np.float64(gr[k]) * sc - c1 - xh * c2))


@numba.njit(**_NJIT_PAR)
def _gn_bwd_rows_par(x, dy, scale, dx, mean_o, inv_o, groups, cpg, s_len, pdiv, rows, eps, want_dx, nchunks):
    for c in prange(nchunks):
        _gn_bwd_rows(x, dy, scale, dx, mean_o, inv_o, groups, cpg, s_len, pdiv, rows * c // nchunks,
                     rows * (c + 1) // nchunks, eps, want_dx)


@numba.njit(**_NJIT)
def _gn_bwd_channels(x, dy, mean_o, inv_o, dsc, dbi, n_n, n_c, groups, cpg, s_len, c0, c1):
    # channels [c0, c1): dsc[c] = sum over (n, s) of dy * xhat, dbi[c] = sum of dy (float64 sums, n then s)
    for c in range(c0, c1):
        g = c // cpg
        acc_g = 0.0
        acc_b = 0.0
        for i in range(n_n):
            r = i * groups + g
            base = (i * n_c + c) * s_len
            xs = x[base:base + s_len]
            gs = dy[base:base + s_len]
            mean = mean_o[r]
            inv = inv_o[r]
            for k in range(s_len):
                d = np.float64(gs[k])
                acc_g += d * ((xs[k] - mean) * inv)
                acc_b += d
        dsc[c] = acc_g
        dbi[c] = acc_b


@numba.njit(**_NJIT_PAR)
def _gn_bwd_channels_par(x, dy, mean_o, inv_o, dsc, dbi, n_n, n_c, groups, cpg, s_len, nchunks):
    for t in prange(nchunks):
        _gn_bwd_channels(x, dy, mean_o, inv_o, dsc, dbi, n_n, n_c, groups, cpg, s_len, n_c * t // nchunks,
                         n_c * (t + 1) // nchunks)


def gn_backward(x, dy, scale, groups: int, eps: float, per_group_params: bool, want_dx: bool, want_params: bool):
    """Group/InstanceNorm backward over (N, C, S) float32 arrays; scale: per channel or per group (float32).
    Returns (dx or None, dscale or None, dbias or None); the parameter gradients are per channel, float64
    (the caller sums them per group for per-group parameters)."""
    n_n, n_c, s_len = x.shape
    cpg = n_c // groups
    pdiv = cpg if per_group_params else 1
    rows = n_n * groups
    xf, gf = x.reshape(-1), dy.reshape(-1)
    dx = np.empty(x.size, np.float32) if want_dx else EMPTY
    mean_o = np.empty(rows, np.float64)
    inv_o = np.empty(rows, np.float64)
    nch = _nchunks(6 * x.size, rows)
    if nch:
        _gn_bwd_rows_par(xf, gf, scale, dx, mean_o, inv_o, groups, cpg, s_len, pdiv, rows, eps, want_dx, nch)
    else:
        _gn_bwd_rows(xf, gf, scale, dx, mean_o, inv_o, groups, cpg, s_len, pdiv, 0, rows, eps, want_dx)
    dsc = dbi = None
    if want_params:
        dsc = np.empty(n_c, np.float64)
        dbi = np.empty(n_c, np.float64)
        nch = _nchunks(3 * x.size, n_c)
        if nch:
            _gn_bwd_channels_par(xf, gf, mean_o, inv_o, dsc, dbi, n_n, n_c, groups, cpg, s_len, nch)
        else:
            _gn_bwd_channels(xf, gf, mean_o, inv_o, dsc, dbi, n_n, n_c, groups, cpg, s_len, 0, n_c)
    return (dx.reshape(x.shape) if want_dx else None), dsc, dbi
