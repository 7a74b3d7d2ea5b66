"""fp32 backward kernels of the activations: elementwise derivatives, PRelu, Softmax / LogSoftmax.

Every array is flat, C-contiguous float32; the Python drivers at the bottom pick the serial kernel or its
``prange`` variant (from :data:`~edgedl.kernels.cpu.config.PARALLEL_MIN_WORK` element operations on) and
the ops (:mod:`edgedl.ops.activation`, :mod:`edgedl.ops.softmax`) validate shapes before calling them.

* Elementwise (:func:`act_grad`): ``dx[i] = f'(v[i]) * g[i]`` where ``v`` is the saved forward input or
  output (op codes ``G_*``; Gelu, Swish / QuickGelu, Softplus, Mish, Selu, Celu and Softsign included, with
  the vectorizable float32 math of :mod:`~edgedl.kernels.cpu.elementwise`). As there, every op code gets its
  own compiled pair of kernels, so each loop holds one derivative and vectorizes.
* PRelu (:func:`prelu_grad`): ``dx`` with the slope broadcast through a collapsed rank-4 plan, and the
  per-element slope contributions ``t = x * g`` (0 where x > 0) that the op reduces over the broadcast dims.
* Softmax (:func:`softmax_grad`) over an (outer, n, inner) view, as the forward: ``dx = y * (g - sum(g * y))``
  and for LogSoftmax ``dx = g - exp(y) * sum(g)``, sums along ``n`` in float64.

Derivatives at kinks follow PyTorch (see each op code). No kernel accumulates across parallel chunks: every
chunk owns its output slice, so results are the same bits for any thread count.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL, num_threads
from .elementwise import GELU_C, GELU_K2, INV_SQRT_2PI, _ndtr_poly, exp_f32, expm1_f32, half_sq_exp_f32, sigmoid_f32

# NOTE: these kernels are compiled without fast-math (NJIT_EXACT): with ``reassoc`` LLVM may associate the
# same expression differently in the serial and the prange kernel (seen here: a cached prange kernel
# computed g * (y * (1 - y)) where the serial one computed (g * y) * (1 - y)), and the backward must give
# the same bits for any thread count. Elementwise loops still vectorize; row sums (_sum64, _dot64) keep 8
# float64 partial sums in a fixed order: scalar adds (LLVM does not pack them), 8 chains hide the latency.
# error_model="numpy" as in elementwise.py: no ZeroDivisionError checks inside the loops (they stop
# vectorization), float division by zero gives inf / nan.
_NJIT = dict(NJIT_EXACT, error_model="numpy")
_NJIT_PAR = dict(NJIT_EXACT_PARALLEL, error_model="numpy")

# --- elementwise derivative op codes (v: the saved value; alpha, beta: the op's parameters) --------------
G_RELU = 0          # v = y: g where y > 0, else 0 (Relu'(0) = 0)
G_LEAKY_RELU = 1    # v = x, alpha: g where x > 0, else alpha * g (a negative alpha hides the sign in y)
G_ELU = 2           # v = x, alpha: g where x > 0, else alpha * exp(x) * g
G_CLIP = 3          # v = x, alpha = min, beta = max: g where min <= x <= max, else 0
G_SIGMOID = 4       # v = y: g * y * (1 - y)
G_TANH = 5          # v = y: g * (1 - y * y)
G_HARD_SIGMOID = 6  # v = x, alpha, beta: alpha * g where 0 < alpha * x + beta < 1, else 0
G_HARD_SWISH = 7    # v = x: 0 below -3, g * (x / 3 + 1/2) on [-3, 3], g above 3
G_ELU_OUT = 8       # v = y, alpha >= 0: g where y > 0, else (y + alpha) * g (= alpha * exp(x) * g)
G_CLIP_OUT = 9      # v = y, alpha = min, beta = max: g where min < y < max, else 0
G_GELU = 10         # v = x: g * (Phi(x) + x * phi(x)), Phi / phi the standard normal CDF / density
G_GELU_TANH = 11    # v = x: g * (s + x * s * (1 - s) * 2k * (1 + 3c x^2)), s = sigmoid(2k * x * (1 + c x^2))
G_SWISH = 12        # v = x, alpha: g * (s + alpha * x * s * (1 - s)), s = sigmoid(alpha * x)
G_SOFTPLUS_OUT = 13  # v = y: g * sigmoid(x) = g * (1 - exp(-y)), as -expm1(-y) (exact for small y)
G_MISH = 14         # v = x: g * (tanh(sp) + x * sech(sp)^2 * sigmoid(x)), sp = softplus(x)
G_SELU = 15         # v = x, alpha, beta = gamma: g * gamma where x > 0, else g * gamma * alpha * exp(x)
G_SELU_OUT = 16     # v = y, alpha >= 0, gamma > 0: g * gamma where y > 0, else g * (y + gamma * alpha)
G_CELU_OUT = 17     # v = y, alpha != 0: g where y > 0, else g * (y / alpha + 1) (= g * exp(x / alpha))
G_SOFTSIGN = 18     # v = x: g / (1 + |x|)^2

#: inner positions per work item of the strided softmax (axis not last)
BLOCK = 256


@numba.njit(**_NJIT)
def _dact(op, v, g, alpha, beta):
    zero = np.float32(0.0)
    one = np.float32(1.0)
    if op == G_RELU:
        # NOTE: `<=` rather than `> 0 ? g : 0`: a NaN output passes g on, as PyTorch's threshold_backward
        return zero if v <= zero else g
    elif op == G_LEAKY_RELU:
        return g if v > zero else alpha * g
    elif op == G_ELU:
        return g if v > zero else alpha * exp_f32(v) * g
    elif op == G_CLIP:
        return g if (v >= alpha and v <= beta) else zero
    elif op == G_SIGMOID:
        return g * v * (one - v)
    elif op == G_TANH:
        return g * (one - v * v)
    elif op == G_ELU_OUT:
        return g if v > zero else (v + alpha) * g
    elif op == G_CLIP_OUT:
        return g if (v > alpha and v < beta) else zero
    elif op == G_HARD_SIGMOID:
        t = alpha * v + beta
        return alpha * g if (t > zero and t < one) else zero
    elif op == G_HARD_SWISH:
        if v < np.float32(-3.0):
            return zero
        return g * (v * np.float32(1.0 / 3.0) + np.float32(0.5)) if v <= np.float32(3.0) else g
    elif op == G_GELU:
        t = np.abs(v)
        tc = np.float32(14.0) if t > np.float32(14.0) else t
        u = one / (one + np.float32(0.25) * tc)
        e = half_sq_exp_f32(tc)  # exp(-x^2 / 2)
        q = e * u * _ndtr_poly(u)  # Phi(-|x|)
        cdf = q if v < zero else one - q
        return g * (cdf + v * (e * np.float32(INV_SQRT_2PI)))
    elif op == G_GELU_TANH:
        x2 = v * v
        z = np.float32(GELU_K2) * v * (one + np.float32(GELU_C) * x2)
        s = sigmoid_f32(z)
        d = s + v * (s * (one - s)) * (np.float32(GELU_K2) * (one + np.float32(3.0 * GELU_C) * x2))
        # beyond |x| = 12 s * (1 - s) < 1e-37 and x^3 heads for overflow (inf * 0): the derivative is s there
        return g * (d if np.abs(v) < np.float32(12.0) else s)
    elif op == G_SWISH:
        s = sigmoid_f32(alpha * v)
        return g * (s + alpha * v * (s * (one - s)))
    elif op == G_SOFTPLUS_OUT:
        return g * -expm1_f32(-v)
    elif op == G_MISH:
        xc = np.float32(20.0) if v > np.float32(20.0) else v
        e = exp_f32(xc)
        n = e * (e + np.float32(2.0))
        d = n + np.float32(2.0)
        r = n / d + v * (np.float32(4.0) * (n + one) / (d * d)) * (e / (one + e))
        return g * (one if v > np.float32(20.0) else r)
    elif op == G_SELU:
        return g * beta if v > zero else g * (beta * alpha * exp_f32(v))
    elif op == G_SELU_OUT:
        return g * beta if v > zero else g * (v + beta * alpha)
    elif op == G_CELU_OUT:
        return g if v > zero else g * (v / alpha + one)
    else:  # G_SOFTSIGN
        d = one + np.abs(v)
        return g / (d * d)


def _make_act(op):
    @numba.njit(**_NJIT)
    def act_range(v, g, dx, alpha, beta, start, stop):
        # v, g, dx: (size,); elements [start, stop)
        vs = v[start:stop]
        gs = g[start:stop]
        o = dx[start:stop]
        a = np.float32(alpha)
        b = np.float32(beta)
        for i in range(o.size):
            o[i] = _dact(op, vs[i], gs[i], a, b)

    @numba.njit(**_NJIT_PAR)
    def act_parallel(v, g, dx, alpha, beta, nchunks):
        # chunk c owns dx[total*c//nchunks : total*(c+1)//nchunks]
        a = np.float32(alpha)
        b = np.float32(beta)
        total = dx.size
        for c in prange(nchunks):
            lo = total * c // nchunks
            hi = total * (c + 1) // nchunks
            vs = v[lo:hi]
            gs = g[lo:hi]
            o = dx[lo:hi]
            for i in range(o.size):
                o[i] = _dact(op, vs[i], gs[i], a, b)

    return act_range, act_parallel


_ACT: dict = {}


def act_kernels(op: int):
    """(serial, parallel) kernels of derivative ``op``: ``serial(v, g, dx, alpha, beta, start, stop)`` writes
    dx[i] = f'(v[i]) * g[i] for i in [start, stop); ``parallel(v, g, dx, alpha, beta, nchunks)`` all of dx."""
    if op not in _ACT:
        _ACT[op] = _make_act(op)
    return _ACT[op]


# --- PRelu ---------------------------------------------------------------------------------------------
@numba.njit(**_NJIT)
def prelu_grad_range(x, s, g, dx, t, dims, ss, start, stop, want_dx, want_t):
    """Elements [start, stop) of x (flat, shape ``dims``: int64[4] collapsed dims); s: the slope read at
    element strides ``ss`` (int64[4], innermost 0 or 1). Writes dx = g where x > 0 else s * g (want_dx) and
    t = 0 where x > 0 else x * g (want_t, the slope's gradient before the reduction); x, g, dx, t: (size,)."""
    zero = np.float32(0.0)
    d1 = dims[1]
    d2 = dims[2]
    d3 = dims[3]
    s0, s1, s2, s3 = ss[0], ss[1], ss[2], ss[3]
    pos = start
    while pos < stop:
        r = pos // d3  # a run of the innermost dim: r = (i0 * d1 + i1) * d2 + i2
        j = pos - r * d3
        n = min(d3 - j, stop - pos)
        i2 = r % d2
        q = r // d2
        i1 = q % d1
        i0 = q // d1
        so = i0 * s0 + i1 * s1 + i2 * s2 + j * s3
        xs = x[pos:pos + n]
        gs = g[pos:pos + n]
        if want_dx:
            o = dx[pos:pos + n]
            if s3 == 1:
                sv = s[so:so + n]
                for k in range(n):
                    o[k] = gs[k] if xs[k] > zero else sv[k] * gs[k]
            else:
                c = s[so]
                for k in range(n):
                    o[k] = gs[k] if xs[k] > zero else c * gs[k]
        if want_t:
            tt = t[pos:pos + n]
            for k in range(n):
                tt[k] = zero if xs[k] > zero else xs[k] * gs[k]
        pos += n


@numba.njit(**_NJIT_PAR)
def prelu_grad_parallel(x, s, g, dx, t, dims, ss, nchunks, want_dx, want_t):
    """All of :func:`prelu_grad_range` in ``nchunks`` equal element ranges (each owns its dx / t slice)."""
    total = x.size
    for c in prange(nchunks):
        prelu_grad_range(x, s, g, dx, t, dims, ss, total * c // nchunks, total * (c + 1) // nchunks,
                         want_dx, want_t)


# --- Softmax / LogSoftmax --------------------------------------------------------------------------------
@numba.njit(inline="always", **_NJIT)
def _dot64(a, b, n):
    """sum(a[:n] * b[:n]) in float64, as 8 partial sums combined pairwise (a fixed order). a, b: contiguous,
    viewed as (n // 8, 8) so every index is a non-negative constant (no wraparound checks)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float64(0.0)
    m = n // 8
    a2 = a[:m * 8].reshape((m, 8))
    b2 = b[:m * 8].reshape((m, 8))
    for q in range(m):
        x = a2[q]
        y = b2[q]
        s0 += np.float64(x[0]) * np.float64(y[0])
        s1 += np.float64(x[1]) * np.float64(y[1])
        s2 += np.float64(x[2]) * np.float64(y[2])
        s3 += np.float64(x[3]) * np.float64(y[3])
        s4 += np.float64(x[4]) * np.float64(y[4])
        s5 += np.float64(x[5]) * np.float64(y[5])
        s6 += np.float64(x[6]) * np.float64(y[6])
        s7 += np.float64(x[7]) * np.float64(y[7])
    x = a[m * 8:n]
    y = b[m * 8:n]
    for k in range(x.size):
        s0 += np.float64(x[k]) * np.float64(y[k])
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(inline="always", **_NJIT)
def _sum64(a, n):
    """sum(a[:n]) in float64, as 8 partial sums combined pairwise (a fixed order); see _dot64."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float64(0.0)
    m = n // 8
    a2 = a[:m * 8].reshape((m, 8))
    for q in range(m):
        x = a2[q]
        s0 += np.float64(x[0])
        s1 += np.float64(x[1])
        s2 += np.float64(x[2])
        s3 += np.float64(x[3])
        s4 += np.float64(x[4])
        s5 += np.float64(x[5])
        s6 += np.float64(x[6])
        s7 += np.float64(x[7])
    x = a[m * 8:n]
    for k in range(x.size):
        s0 += np.float64(x[k])
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(**_NJIT)
def softmax_grad_rows(y, g, dx, n, r0, r1, log):
    """Rows [r0, r1) of y, g, dx viewed as (rows, n), contiguous. y: the forward output (log-probabilities
    for ``log``)."""
    for r in range(r0, r1):
        yr = y[r * n:r * n + n]  # slices: loops from 0 vectorize
        gr = g[r * n:r * n + n]
        o = dx[r * n:r * n + n]
        if log:
            s32 = np.float32(_sum64(gr, n))
            for k in range(n):
                o[k] = gr[k] - exp_f32(yr[k]) * s32
        else:
            s32 = np.float32(_dot64(gr, yr, n))
            for k in range(n):
                o[k] = yr[k] * (gr[k] - s32)


@numba.njit(**_NJIT_PAR)
def softmax_grad_rows_parallel(y, g, dx, n, rows, nchunks, log):
    for c in prange(nchunks):
        softmax_grad_rows(y, g, dx, n, rows * c // nchunks, rows * (c + 1) // nchunks, log)


@numba.njit(**_NJIT)
def softmax_grad_strided(y, g, dx, n, inner, t0, t1, ws, log):
    """Work items [t0, t1) of arrays viewed as (outer, n, inner): item t is outer index t // nb and inner
    block t % nb (nb = ceil(inner / BLOCK)). ws: float64 workspace of BLOCK (the sums along n)."""
    nb = (inner + BLOCK - 1) // BLOCK
    for t in range(t0, t1):
        o = t // nb
        j0 = (t - o * nb) * BLOCK
        w = min(BLOCK, inner - j0)
        base = o * n * inner + j0
        s = ws[:w]
        for jj in range(w):
            s[jj] = 0.0
        for k in range(n):
            gr = g[base + k * inner:base + k * inner + w]
            if log:
                for jj in range(w):
                    s[jj] += np.float64(gr[jj])
            else:
                yr = y[base + k * inner:base + k * inner + w]
                for jj in range(w):
                    s[jj] += np.float64(gr[jj]) * np.float64(yr[jj])
        for k in range(n):
            gr = g[base + k * inner:base + k * inner + w]
            yr = y[base + k * inner:base + k * inner + w]
            orow = dx[base + k * inner:base + k * inner + w]
            if log:
                for jj in range(w):
                    orow[jj] = gr[jj] - exp_f32(yr[jj]) * np.float32(s[jj])
            else:
                for jj in range(w):
                    orow[jj] = yr[jj] * (gr[jj] - np.float32(s[jj]))


@numba.njit(**_NJIT_PAR)
def softmax_grad_strided_parallel(y, g, dx, n, inner, items, nchunks, ws, log):
    """ws: float64[nchunks * BLOCK]; chunk c owns ws[c*BLOCK : (c+1)*BLOCK]."""
    for c in prange(nchunks):
        softmax_grad_strided(y, g, dx, n, inner, items * c // nchunks, items * (c + 1) // nchunks,
                             ws[c * BLOCK:(c + 1) * BLOCK], log)


# --- Python-side drivers -----------------------------------------------------------------------------------
def _chunks(work: int, items: int, threads: int | None) -> int:
    """Parallel chunks worth ``work`` element operations split over ``items`` independent work items."""
    if work < _config.PARALLEL_MIN_WORK or items < 2:
        return 1
    t = num_threads() if threads is None else threads
    return max(1, min(t, items, work // (_config.PARALLEL_MIN_WORK // 4)))


def act_grad(op: int, v: np.ndarray, g: np.ndarray, dx: np.ndarray, alpha: float = 0.0, beta: float = 0.0,
             threads: int | None = None) -> None:
    """dx = f'_op(v) * g on flat float32 arrays of one size. ``threads``: override the thread count
    (tests use it to force the parallel kernel)."""
    serial, parallel = act_kernels(op)
    c = _chunks(dx.size, dx.size, threads)
    if c == 1:
        serial(v, g, dx, float(alpha), float(beta), 0, dx.size)
    else:
        parallel(v, g, dx, float(alpha), float(beta), c)


def prelu_grad(x: np.ndarray, s: np.ndarray, g: np.ndarray, dx: np.ndarray | None, t: np.ndarray | None,
               dims: np.ndarray, ss: np.ndarray, threads: int | None = None) -> None:
    """PRelu's dx and slope contributions t (either may be None: not computed) on flat float32 arrays;
    ``dims`` / ``ss``: the rank-4 collapsed plan of the slope's broadcast (see :func:`prelu_grad_range`)."""
    want_dx, want_t = dx is not None, t is not None
    if not (want_dx or want_t) or x.size == 0:
        return
    dummy = np.empty(0, np.float32)
    dx = dummy if dx is None else dx
    t = dummy if t is None else t
    c = _chunks(x.size, x.size, threads)
    if c == 1:
        prelu_grad_range(x, s, g, dx, t, dims, ss, 0, x.size, want_dx, want_t)
    else:
        prelu_grad_parallel(x, s, g, dx, t, dims, ss, c, want_dx, want_t)


def softmax_grad(y: np.ndarray, g: np.ndarray, dx: np.ndarray, outer: int, n: int, inner: int, log: bool,
                 threads: int | None = None) -> None:
    """(Log)Softmax backward over the (outer, n, inner) view of flat float32 y, g, dx."""
    size = outer * n * inner
    if size == 0:
        return
    log = bool(log)
    if inner == 1:
        c = _chunks(3 * size, outer, threads)
        if c == 1:
            softmax_grad_rows(y, g, dx, n, 0, outer, log)
        else:
            softmax_grad_rows_parallel(y, g, dx, n, outer, c, log)
        return
    items = outer * ((inner + BLOCK - 1) // BLOCK)
    c = _chunks(3 * size, items, threads)
    ws = np.empty(c * BLOCK, np.float64)
    if c == 1:
        softmax_grad_strided(y, g, dx, n, inner, 0, items, ws, log)
    else:
        softmax_grad_strided_parallel(y, g, dx, n, inner, items, c, ws, log)
