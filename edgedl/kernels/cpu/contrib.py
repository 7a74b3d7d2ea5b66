"""float32 kernels of onnxruntime's contrib ops (:mod:`edgedl.ops.contrib`, :mod:`edgedl.ops.contrib_quant`).

* EmbedLayerNormalization: per token ``t``, ``e = word[ids[t]] + pos[p[t]] (+ seg[segs[t]])`` and
  ``y = (e - mean(e)) / sqrt(var(e) + eps) * gamma + beta`` (mean and biased variance over the hidden
  size, accumulated in float64). The indices are validated by the caller before the kernel runs.
* BiasAdd: ``y = x + bias[c] + skip`` over (rows, C).
* The float epilogue of the integer MatMuls (MatMulIntegerToFloat, DynamicQuantizeMatMul):
  ``y[r, n] = float32(acc[r, n] - corr[n]) * scale[n] (+ bias[n])``, where ``acc`` is the int32 GEMM of
  the raw A with ``B - b_zp`` and ``corr[n] = a_zp * sum_k (B[k, n] - b_zp[n])`` removes A's zero point.

Each kernel has a serial form over a range of rows and a parallel form over chunks of rows, used when the
work reaches ``config.PARALLEL_MIN_WORK``.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads


def nchunks(work: int, rows: int) -> int:
    """Parallel chunks for ``work`` element operations over ``rows`` rows (0: run serially)."""
    if work < _config.PARALLEL_MIN_WORK or rows < 2:
        return 0
    nt = num_threads()
    return min(rows, 4 * nt) if nt > 1 else 0


# --- EmbedLayerNormalization -----------------------------------------------------------------------------
@numba.njit(**NJIT)
def _embed_ln_rows(ids, segs, pos, we, pe, se, gamma, beta, eps, out, esum, t0, t1):
    # ids, segs, pos (T,) int32/int64 row indices; we (V, H), pe (P, H), se (G, H) (G == 0: no segments);
    # gamma, beta (H,); out, esum (T, H) (esum with 0 rows: not wanted). Tokens [t0, t1).
    h = out.shape[1]
    has_seg = se.shape[0] > 0
    want_sum = esum.shape[0] > 0
    inv_h = 1.0 / h
    for t in range(t0, t1):
        w = we[ids[t]]
        p = pe[pos[t]]
        y = out[t]
        if has_seg:
            s = se[segs[t]]
            for i in range(h):
                y[i] = w[i] + p[i] + s[i]
        else:
            for i in range(h):
                y[i] = w[i] + p[i]
        if want_sum:
            es = esum[t]
            for i in range(h):
                es[i] = y[i]
        acc = 0.0
        for i in range(h):
            acc += np.float64(y[i])
        mean = acc * inv_h
        var = 0.0
        for i in range(h):
            d = np.float64(y[i]) - mean
            var += d * d
        inv = 1.0 / math.sqrt(var * inv_h + eps)
        m32 = np.float32(mean)
        i32 = np.float32(inv)
        for i in range(h):
            y[i] = (y[i] - m32) * i32 * gamma[i] + beta[i]


@numba.njit(**NJIT_PARALLEL)
def _embed_ln_par(ids, segs, pos, we, pe, se, gamma, beta, eps, out, esum, nch):
    n = out.shape[0]
    for c in prange(nch):
        _embed_ln_rows(ids, segs, pos, we, pe, se, gamma, beta, eps, out, esum, c * n // nch, (c + 1) * n // nch)


def embed_layer_norm(ids, segs, pos, we, pe, se, gamma, beta, eps: float, out, esum) -> None:
    """out (T, H) [and esum (T, H), or a (0, H) array] for T tokens; see the module docstring. ``se`` with 0
    rows: no segment embedding (``segs`` is then ignored)."""
    t, h = out.shape
    nch = nchunks(t * h * 4, t)
    if nch:
        _embed_ln_par(ids, segs, pos, we, pe, se, gamma, beta, eps, out, esum, nch)
    else:
        _embed_ln_rows(ids, segs, pos, we, pe, se, gamma, beta, eps, out, esum, 0, t)


# --- BiasAdd -------------------------------------------------------------------------------------------------
@numba.njit(**NJIT)
def _bias_add_rows(x, bias, skip, out, r0, r1):
    # x, skip, out (R, C); bias (C,): out = x + bias + skip for rows [r0, r1)
    c = x.shape[1]
    for r in range(r0, r1):
        xr = x[r]
        sr = skip[r]
        orow = out[r]
        for i in range(c):
            orow[i] = xr[i] + bias[i] + sr[i]


@numba.njit(**NJIT_PARALLEL)
def _bias_add_par(x, bias, skip, out, nch):
    n = x.shape[0]
    for k in prange(nch):
        _bias_add_rows(x, bias, skip, out, k * n // nch, (k + 1) * n // nch)


def bias_add(x, bias, skip, out) -> None:
    """out (R, C) = x (R, C) + bias (C,) + skip (R, C), contiguous float32."""
    r, c = x.shape
    nch = nchunks(r * c, r)
    if nch:
        _bias_add_par(x, bias, skip, out, nch)
    else:
        _bias_add_rows(x, bias, skip, out, 0, r)


# --- integer MatMul -> float ---------------------------------------------------------------------------
@numba.njit(**NJIT)
def _int_to_float_rows(acc, corr, scale, bias, has_bias, out, r0, r1):
    # acc (R, N) int32; corr (N,) int64; scale, bias (N,) float32; out (R, N) float32; rows [r0, r1)
    n = acc.shape[1]
    for r in range(r0, r1):
        a = acc[r]
        o = out[r]
        if has_bias:
            for j in range(n):
                o[j] = np.float32(np.int64(a[j]) - corr[j]) * scale[j] + bias[j]
        else:
            for j in range(n):
                o[j] = np.float32(np.int64(a[j]) - corr[j]) * scale[j]


@numba.njit(**NJIT_PARALLEL)
def _int_to_float_par(acc, corr, scale, bias, has_bias, out, nch):
    n = acc.shape[0]
    for k in prange(nch):
        _int_to_float_rows(acc, corr, scale, bias, has_bias, out, k * n // nch, (k + 1) * n // nch)


def int_to_float(acc, corr, scale, bias, out) -> None:
    """out (R, N) = float32(acc - corr) * scale (+ bias); ``bias`` None: no bias."""
    r, n = acc.shape
    has_bias = bias is not None
    b = bias if has_bias else scale
    nch = nchunks(r * n, r)
    if nch:
        _int_to_float_par(acc, corr, scale, b, has_bias, out, nch)
    else:
        _int_to_float_rows(acc, corr, scale, b, has_bias, out, 0, r)
