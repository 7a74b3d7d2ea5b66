"""fp32 elementwise kernels: broadcasting binary ops and flat unary ops.

Binary ops run on a *broadcast plan* computed once at build time (:func:`broadcast_plan`): the output
shape is collapsed to at most 4 dims by merging neighbours that broadcast the same way, and every input
gets element strides on those dims (0 where it broadcasts). Padded to rank 4, the common patterns become:

=====================================  =========================  =====================
pattern                                collapsed dims             innermost strides
=====================================  =========================  =====================
same shape                             (1, 1, 1, N)               a: 1, b: 1
scalar operand                         (1, 1, 1, N)               a: 1, b: 0
per-channel x[N,C,H,W] op b[C,1,1]     (1, N, C, H*W)             a: 1, b: 0
last axis x[..., C] op b[C]            (1, 1, M, C)               a: 1, b: 1
=====================================  =========================  =====================

The kernel walks a flat range of output elements (so parallel chunks get equal work whatever the
shape), a run of whole innermost rows at a time; every row is a contiguous loop over the output in one
of four shapes (vector-vector, vector-scalar, scalar-vector, scalar-scalar).

Unary ops (including the activations) are one flat loop over the contiguous buffer with two float
parameters (alpha, beta).

Every op has its own compiled kernels (:func:`binary_kernels`, :func:`unary_kernels`: a serial one and a
``prange`` one, made on first use and cached on disk): the op code is a compile-time constant, so each
loop holds one operation and vectorizes. (A run-time op code branch inside the loop is not unswitched
by LLVM once the loop body is large, and putting every op's loop in one function made that function
take ~50 s to compile.) Loops run over slices from index 0: an index that Numba cannot prove
non-negative gets a wraparound check that stops vectorization.

exp, tanh and sigmoid use branch-free float32 versions (:func:`exp_f32`, ...) that vectorize, instead
of scalar libm calls; so do the activations built on them: Gelu (the erf form through the normal CDF
:func:`ndtr_tail_f32`, the tanh form as x * sigmoid(2u)), Swish / QuickGelu, Softplus (:func:`softplus_f32`),
Mish, Selu, Celu, Softsign, ThresholdedRelu, Shrink, and Sin / Cos (quadrant reduction and Taylor
polynomials; libm above |x| = 8192). The binary codes B_BIAS_GELU / B_BIAS_GELU_TANH apply Gelu to a + b
(a bias broadcast on the last axis) in one pass.

Every kernel here is compiled with ``error_model="numpy"``: float division by zero gives inf/nan
instead of a Python exception check in the loop (which would also stop vectorization).
"""
from __future__ import annotations

import functools

import llvmlite.ir as ir
import numba
import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from . import config as _config
from .config import FASTMATH, num_threads
from .sigmoid_ir import sigmoid_f32, swish_f32  # noqa: F401  (re-exported: act, recurrent, swiglu, act_grad)

_NJIT = dict(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")
_NJIT_PAR = dict(_NJIT, parallel=True)

# --- binary op codes ---------------------------------------------------------------------------------
B_ADD = 0
B_SUB = 1
B_MUL = 2
B_DIV = 3
B_MAX = 4
B_MIN = 5
B_PRELU = 6  # a = x, b = slope: x if x >= 0 else slope * x
B_BIAS_GELU = 7       # gelu(a + b), the exact (erf) form: com.microsoft BiasGelu
B_BIAS_GELU_TANH = 8  # gelu_tanh(a + b): com.microsoft FastGelu with a bias

# --- unary op codes ----------------------------------------------------------------------------------
U_COPY = 0
U_NEG = 1
U_ABS = 2
U_SQRT = 3
U_EXP = 4
U_LOG = 5
U_RECIPROCAL = 6
U_RELU = 7
U_LEAKY_RELU = 8     # alpha
U_ELU = 9            # alpha
U_CLIP = 10          # alpha = min, beta = max
U_SIGMOID = 11
U_TANH = 12
U_HARD_SIGMOID = 13  # alpha, beta
U_HARD_SWISH = 14
U_GELU = 15              # x * Phi(x), Phi the standard normal CDF (the erf form)
U_GELU_TANH = 16         # x * sigmoid(2 * sqrt(2 / pi) * (x + 0.044715 * x**3)) (= the tanh form)
U_SWISH = 17             # alpha: x * sigmoid(alpha * x) (Swish, QuickGelu)
U_SOFTPLUS = 18          # log(1 + exp(x))
U_MISH = 19              # x * tanh(softplus(x))
U_SELU = 20              # alpha, beta = gamma: gamma * (x if x > 0 else alpha * (exp(x) - 1))
U_CELU = 21              # alpha: x if x > 0 else alpha * (exp(x / alpha) - 1)
U_SOFTSIGN = 22          # x / (1 + |x|)
U_THRESHOLDED_RELU = 23  # alpha: x if x > alpha else 0 (NaN -> 0, as onnxruntime)
U_SHRINK = 24            # alpha = lambd, beta = bias: x + bias below -lambd, x - bias above lambd, else 0
U_SIN = 25
U_COS = 26

#: the rank every broadcast plan is padded to
BCAST_RANK = 4


# --- vectorizable float32 math ------------------------------------------------------------------------
# libm's expf/tanhf are scalar calls that stop loops from vectorizing. These are branch-free (selects
# only) Cephes-style versions that LLVM vectorizes; accuracy about 1-2 ulp.
@intrinsic
def _ldexp(typingctx, p, n):
    """p * 2**n for float32 p (normal, positive) and an integral float32 n, by adding n to the exponent
    bits (integer ops: no float rounding, and fast-math cannot reassociate it into an overflow)."""
    if p != types.float32 or n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        e = builder.shl(builder.fptosi(args[1], i32), ir.Constant(i32, 23))
        return builder.bitcast(builder.add(bits, e), ir.FloatType())

    return types.float32(types.float32, types.float32), codegen


if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1 (coverage runs): intrinsics cannot run as Python
    def _ldexp(p, n):
        if not np.isfinite(n):  # the compiled kernels select such lanes away
            return np.float32(np.nan)
        with np.errstate(over="ignore", under="ignore"):
            return np.float32(np.ldexp(np.float32(p), int(n)))


@numba.njit(**_NJIT)
def exp_f32(x):
    """exp(x) for float32 x: inf above 88.72, NaN for NaN, 0 below -86.6 (results under 2.5e-38 are
    flushed to zero instead of going denormal)."""
    hi = np.float32(88.72283905206835)
    lo = np.float32(-86.6)
    xc = hi if x > hi else x
    xc = lo if xc < lo else xc
    fx = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - fx * np.float32(0.693359375) - fx * np.float32(-2.12194440e-4)
    z = r * r
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * z + r + np.float32(1.0)  # e**r, r in [-ln2/2, ln2/2]
    y = _ldexp(p, fx)  # fx in [-125, 128]; p < 1 where fx = 128
    y = np.float32(np.inf) if x > hi else y
    y = np.float32(0.0) if x < lo else y
    return x if x != x else y


@numba.njit(**_NJIT)
def expm1_f32(x):
    """exp(x) - 1 without cancellation near 0 (Taylor polynomial for |x| < 0.35)."""
    p = np.float32(1.0 / 5040.0)
    p = p * x + np.float32(1.0 / 720.0)
    p = p * x + np.float32(1.0 / 120.0)
    p = p * x + np.float32(1.0 / 24.0)
    p = p * x + np.float32(1.0 / 6.0)
    p = p * x + np.float32(0.5)
    small = x + x * x * p
    big = exp_f32(x) - np.float32(1.0)
    return small if np.abs(x) < np.float32(0.35) else big


@numba.njit(**_NJIT)
def tanh_f32(x):
    """tanh(x) for float32 x (odd polynomial for |x| <= 0.625, 1 - 2 / (exp(2|x|) + 1) above)."""
    z = np.abs(x)
    s = x * x
    p = np.float32(-5.70498872745e-3)
    p = p * s + np.float32(2.06390887954e-2)
    p = p * s - np.float32(5.37397155531e-2)
    p = p * s + np.float32(1.33314422036e-1)
    p = p * s - np.float32(3.33332819422e-1)
    small = p * s * x + x
    big = np.float32(1.0) - np.float32(2.0) / (exp_f32(z + z) + np.float32(1.0))
    big = -big if x < np.float32(0.0) else big
    return big if z > np.float32(0.625) else small


# Phi(-t) * exp(t * t / 2) / u with u = 1 / (1 + t / 4), t >= 0: a degree-9 polynomial in u in (0, 1] (weighted
# least squares on Chebyshev nodes against mpmath's erfc, relative error 3e-8 in float64, 2e-7 evaluated in float32).
# The substitution maps [0, inf) onto (0, 1] and the scaled tail Phi(-t) * exp(t * t / 2) ~ 1 / (t sqrt(2 pi))
# onto a smooth bounded function, so one branch-free formula holds everywhere with *relative* accuracy in the
# tail (no 1 + erf cancellation for negative x).
_NDTR_C = (0.0997355654835701, 0.09973642975091934, 0.09346635639667511, 0.08160310983657837, 0.058975137770175934,
           0.06369917094707489, -0.031717654317617416, 0.09559724479913712, -0.0808774083852768,
           0.019782032817602158)
#: 1 / sqrt(2 pi)
INV_SQRT_2PI = 0.3989422804014327


@numba.njit(**_NJIT)
def _ndtr_poly(u):
    p = np.float32(_NDTR_C[9])
    p = p * u + np.float32(_NDTR_C[8])
    p = p * u + np.float32(_NDTR_C[7])
    p = p * u + np.float32(_NDTR_C[6])
    p = p * u + np.float32(_NDTR_C[5])
    p = p * u + np.float32(_NDTR_C[4])
    p = p * u + np.float32(_NDTR_C[3])
    p = p * u + np.float32(_NDTR_C[2])
    p = p * u + np.float32(_NDTR_C[1])
    return p * u + np.float32(_NDTR_C[0])


@numba.njit(**_NJIT)
def _exp_hl(hi, lo):
    """exp(hi + lo) for hi <= 0 a multiple of 1/512 (hi - fx * ln2_hi is then exact) and |lo| < 1: exp_f32's
    reduction with lo added after the exact step; 0 below -87."""
    x = hi + lo
    fx = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = (hi - fx * np.float32(0.693359375)) + (lo - fx * np.float32(-2.12194440e-4))
    z = r * r
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * z + r + np.float32(1.0)
    fx = np.float32(-126.0) if fx < np.float32(-126.0) else fx  # those lanes are selected away below
    y = _ldexp(p, fx)
    return np.float32(0.0) if x < np.float32(-87.0) else y


@numba.njit(**_NJIT)
def half_sq_exp_f32(t):
    """exp(-t * t / 2) for float32 t in [0, 14] (or NaN), with t * t split exactly: t = th + r, th a multiple of
    1/16 (th * th / 2 exact in float32), the rest r * (t + th) / 2 small (a plain t * t would lose |t * t| ulp)."""
    th = np.floor(t * np.float32(16.0)) * np.float32(0.0625)
    hi = th * th * np.float32(-0.5)
    lo = (t - th) * (t + th) * np.float32(-0.5)
    return _exp_hl(hi, lo)


@numba.njit(**_NJIT)
def ndtr_tail_f32(t):
    """Phi(-t) for float32 t >= 0 (or NaN), Phi the standard normal CDF: relative error below 5e-7 down to
    Phi(-t) ~ 1e-38 (t ~ 13), 0 beyond."""
    tc = np.float32(14.0) if t > np.float32(14.0) else t  # NaN stays NaN
    u = np.float32(1.0) / (np.float32(1.0) + np.float32(0.25) * tc)
    return half_sq_exp_f32(tc) * u * _ndtr_poly(u)


@numba.njit(**_NJIT)
def gelu_f32(x):
    """x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))), from Phi(-|x|) (:func:`ndtr_tail_f32`)."""
    q = ndtr_tail_f32(np.abs(x))
    cdf = q if x < np.float32(0.0) else np.float32(1.0) - q
    return x * cdf


#: 2 * sqrt(2 / pi) and 0.044715, the constants of the tanh form of Gelu
GELU_K2 = 1.5957691216057308
GELU_C = 0.044715


@numba.njit(**_NJIT)
def gelu_tanh_f32(x):
    """x / 2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) as x * sigmoid(2 * sqrt(2/pi) * (...)), the same
    function without the 1 + tanh cancellation for negative x."""
    z = np.float32(GELU_K2) * x * (np.float32(1.0) + np.float32(GELU_C) * x * x)
    return x * sigmoid_f32(z)


@numba.njit(**_NJIT)
def log1p_01_f32(e):
    """log(1 + e) for float32 e in [0, 1] (or NaN): 2 * atanh(s) with s = e / (2 + e) in [0, 1/3], its odd series
    to s**17 (truncation below 2e-10); relative accuracy for tiny e (no 1 + e rounding)."""
    s = e / (np.float32(2.0) + e)
    q = s * s
    p = np.float32(2.0 / 17.0)
    p = p * q + np.float32(2.0 / 15.0)
    p = p * q + np.float32(2.0 / 13.0)
    p = p * q + np.float32(2.0 / 11.0)
    p = p * q + np.float32(2.0 / 9.0)
    p = p * q + np.float32(2.0 / 7.0)
    p = p * q + np.float32(2.0 / 5.0)
    p = p * q + np.float32(2.0 / 3.0)
    p = p * q + np.float32(2.0)
    return s * p


@numba.njit(**_NJIT)
def softplus_f32(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow, relative accuracy for negative x."""
    m = x if x > np.float32(0.0) else np.float32(0.0)
    return m + log1p_01_f32(exp_f32(-np.abs(x)))


@numba.njit(**_NJIT)
def mish_f32(x):
    """x * tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2); x itself above 20 (tanh(softplus) is 1
    in float32 from x ~ 9 on)."""
    xc = np.float32(20.0) if x > np.float32(20.0) else x
    e = exp_f32(xc)
    n = e * (e + np.float32(2.0))
    y = x * (n / (n + np.float32(2.0)))  # fast-math may form x * n first: select x itself above 20
    return x if x > np.float32(20.0) else y


#: |x| up to which sin_f32 / cos_f32 reduce by the 3-part pi/2 below: |j| < 2**13, so j * P1 and j * P2 (11
#: significant bits each) are exact even without FMA; larger |x| go to libm (see _unary_run)
SINCOS_FAST_MAX = 8192.0
# the quadrant reduction is compiled without reassociation (which could fold the three steps into one)
_NJIT_RED = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz", "arcp"})


@numba.njit(**_NJIT_RED)
def _quadrant(x):
    """(j, r): x = j * pi/2 + r, j = round(x * 2/pi), |r| <= pi/4 (pi/2 as P1 + P2 + P3: 11, 11, 24 bits)."""
    j = np.floor(x * np.float32(0.6366197723675814) + np.float32(0.5))
    r = x - j * np.float32(1.5703125)
    r = r - j * np.float32(0.0004837512969970703)
    r = r - j * np.float32(7.549790126404332e-08)
    return j, r


@numba.njit(**_NJIT)
def _sin_poly(r):
    """sin(r), |r| <= pi/4: Taylor to r**9 (truncation below 2e-9)."""
    q = r * r
    p = np.float32(1.0 / 362880.0)
    p = p * q - np.float32(1.0 / 5040.0)
    p = p * q + np.float32(1.0 / 120.0)
    p = p * q - np.float32(1.0 / 6.0)
    return r + r * q * p


@numba.njit(**_NJIT)
def _cos_poly(r):
    """cos(r), |r| <= pi/4: Taylor to r**10 (truncation below 1e-10)."""
    q = r * r
    p = np.float32(-1.0 / 3628800.0)
    p = p * q + np.float32(1.0 / 40320.0)
    p = p * q - np.float32(1.0 / 720.0)
    p = p * q + np.float32(1.0 / 24.0)
    return np.float32(1.0) - np.float32(0.5) * q + q * q * p


@numba.njit(**_NJIT)
def sin_f32(x):
    """sin(x) for float32 |x| <= SINCOS_FAST_MAX (about 1 ulp); NaN for NaN and +-inf."""
    j, r = _quadrant(x)
    s = _sin_poly(r)
    c = _cos_poly(r)
    k = np.int32(j) & 3
    v = c if (k & 1) == 1 else s
    return -v if (k & 2) == 2 else v


@numba.njit(**_NJIT)
def cos_f32(x):
    """cos(x) for float32 |x| <= SINCOS_FAST_MAX (about 1 ulp); NaN for NaN and +-inf."""
    j, r = _quadrant(x)
    s = _sin_poly(r)
    c = _cos_poly(r)
    k = np.int32(j) & 3
    v = s if (k & 1) == 1 else c
    return -v if ((k + 1) & 2) == 2 else v


@numba.njit(**_NJIT)
def _bin(op, x, y):
    # NaN-propagating max/min (like numpy.maximum): a NaN in x or y gives NaN.
    if op == B_ADD:
        return x + y
    elif op == B_SUB:
        return x - y
    elif op == B_MUL:
        return x * y
    elif op == B_DIV:
        return x / y
    elif op == B_MAX:
        return x if (x >= y or x != x) else y
    elif op == B_MIN:
        return x if (x <= y or x != x) else y
    elif op == B_BIAS_GELU:
        return gelu_f32(x + y)
    elif op == B_BIAS_GELU_TANH:
        return gelu_tanh_f32(x + y)
    else:  # B_PRELU
        return x if x >= np.float32(0.0) else y * x


@numba.njit(**_NJIT)
def _un(op, v, alpha, beta):
    zero = np.float32(0.0)
    one = np.float32(1.0)
    if op == U_COPY:
        return v
    elif op == U_NEG:
        return -v
    elif op == U_ABS:
        return np.abs(v)
    elif op == U_SQRT:
        return np.sqrt(v)
    elif op == U_EXP:
        return exp_f32(v)
    elif op == U_LOG:
        return np.log(v)
    elif op == U_RECIPROCAL:
        return one / v
    elif op == U_RELU:
        return zero if v < zero else v
    elif op == U_LEAKY_RELU:
        return alpha * v if v < zero else v
    elif op == U_ELU:
        return alpha * expm1_f32(v) if v < zero else v
    elif op == U_CLIP:
        r = alpha if v < alpha else v
        return beta if r > beta else r
    elif op == U_SIGMOID:
        return sigmoid_f32(v)
    elif op == U_TANH:
        return tanh_f32(v)
    elif op == U_HARD_SIGMOID:
        t = alpha * v + beta
        t = zero if t < zero else t
        return one if t > one else t
    elif op == U_HARD_SWISH:
        t = v * np.float32(1.0 / 6.0) + np.float32(0.5)
        t = zero if t < zero else t
        t = one if t > one else t
        return v * t
    elif op == U_GELU:
        return gelu_f32(v)
    elif op == U_GELU_TANH:
        return gelu_tanh_f32(v)
    elif op == U_SWISH:
        return swish_f32(v, np.float32(alpha))
    elif op == U_SOFTPLUS:
        return softplus_f32(v)
    elif op == U_MISH:
        return mish_f32(v)
    elif op == U_SELU:
        return beta * v if v > zero else beta * (alpha * expm1_f32(v))
    elif op == U_CELU:
        return v if v > zero else alpha * expm1_f32(v / alpha)
    elif op == U_SOFTSIGN:
        return v / (one + np.abs(v))
    elif op == U_THRESHOLDED_RELU:
        return v if v > alpha else zero
    elif op == U_SHRINK:
        if v < -alpha:
            return v + beta
        return v - beta if v > alpha else zero
    elif op == U_SIN:
        return sin_f32(v)
    else:  # U_COS
        return cos_f32(v)


@numba.njit(inline="always", **_NJIT)
def _rows_op(op, a, ao, a2, a3, b, bo, b2, b3, out, oo, rows, n):
    """``rows`` runs of ``n`` outputs each (out[oo + r*n + k]); run r reads a from ao + r*a2 and b from
    bo + r*b2, with innermost strides a3, b3 in {0, 1} (1: contiguous, 0: broadcast).

    Called with a constant ``op`` so ``_bin`` folds to one operation; the stride case is chosen once
    outside the row loop. The loops run over slices from index 0: an index Numba cannot prove
    non-negative gets a wraparound check that stops vectorization."""
    if a3 == 1 and b3 == 1:
        for r in range(rows):
            o = out[oo + r * n:oo + r * n + n]
            x = a[ao + r * a2:ao + r * a2 + n]
            y = b[bo + r * b2:bo + r * b2 + n]
            for k in range(n):
                o[k] = _bin(op, x[k], y[k])
    elif a3 == 1:
        for r in range(rows):
            o = out[oo + r * n:oo + r * n + n]
            x = a[ao + r * a2:ao + r * a2 + n]
            yv = b[bo + r * b2]
            for k in range(n):
                o[k] = _bin(op, x[k], yv)
    elif b3 == 1:
        for r in range(rows):
            o = out[oo + r * n:oo + r * n + n]
            xv = a[ao + r * a2]
            y = b[bo + r * b2:bo + r * b2 + n]
            for k in range(n):
                o[k] = _bin(op, xv, y[k])
    else:
        for r in range(rows):
            o = out[oo + r * n:oo + r * n + n]
            v = _bin(op, a[ao + r * a2], b[bo + r * b2])
            for k in range(n):
                o[k] = v


@numba.njit(inline="always", **_NJIT)
def _walk(op, a, b, out, dims, sa, sb, start, stop):
    """Flat output elements [start, stop) of ``out = a op b`` (see :func:`binary_range`)."""
    d1 = dims[1]
    d2 = dims[2]
    d3 = dims[3]
    r = start // d3
    j = start - r * d3
    i2 = r % d2
    t = r // d2
    i1 = t % d1
    i0 = t // d1
    a0, a1, a2, a3 = sa[0], sa[1], sa[2], sa[3]
    b0, b1, b2, b3 = sb[0], sb[1], sb[2], sb[3]
    pos = start
    while pos < stop:
        ao = i0 * a0 + i1 * a1 + i2 * a2 + j * a3
        bo = i0 * b0 + i1 * b1 + i2 * b2 + j * b3
        if j == 0 and stop - pos >= d3:
            # whole runs: as many as fit in this (i0, i1) block and in [pos, stop)
            rows = min(d2 - i2, (stop - pos) // d3)
            _rows_op(op, a, ao, a2, a3, b, bo, b2, b3, out, pos, rows, d3)
            pos += rows * d3
            i2 += rows
        else:
            # a partial run (chunk boundaries only)
            n = min(d3 - j, stop - pos)
            _rows_op(op, a, ao, a2, a3, b, bo, b2, b3, out, pos, 1, n)
            pos += n
            j += n
            if j < d3:
                continue
            j = 0
            i2 += 1
        if i2 == d2:
            i2 = 0
            i1 += 1
            if i1 == d1:
                i1 = 0
                i0 += 1


def _make_binary(op):
    @numba.njit(**_NJIT)
    def binary_range(a, b, out, dims, sa, sb, start, stop):
        _walk(op, a, b, out, dims, sa, sb, start, stop)

    @numba.njit(**_NJIT_PAR)
    def binary_parallel(a, b, out, dims, sa, sb, nchunks):
        total = out.size
        for c in prange(nchunks):
            _walk(op, a, b, out, dims, sa, sb, total * c // nchunks, total * (c + 1) // nchunks)

    return binary_range, binary_parallel


@numba.njit(inline="always", **_NJIT)
def _unary_run(op, xs, o, a, b):
    """o[i] = f_op(xs[i]) over one contiguous run (o may be xs itself). Sin and Cos go by blocks of 1024: a block
    with an |x| above SINCOS_FAST_MAX goes element by element, libm for those (their reduction needs more bits)."""
    if op == U_SIN or op == U_COS:
        n = xs.size
        for b0 in range(0, n, 1024):
            xb = xs[b0:min(n, b0 + 1024)]
            ob = o[b0:min(n, b0 + 1024)]
            big = False
            for i in range(xb.size):
                big |= np.abs(xb[i]) > np.float32(SINCOS_FAST_MAX)
            if big:
                for i in range(xb.size):
                    v = xb[i]
                    if np.abs(v) > np.float32(SINCOS_FAST_MAX):
                        ob[i] = np.sin(v) if op == U_SIN else np.cos(v)
                    else:
                        ob[i] = _un(op, v, a, b)
            else:
                for i in range(xb.size):
                    ob[i] = _un(op, xb[i], a, b)
        return
    for i in range(xs.size):
        o[i] = _un(op, xs[i], a, b)


def _make_unary(op):
    @numba.njit(**_NJIT)
    def unary_range(x, out, alpha, beta, start, stop):
        _unary_run(op, x[start:stop], out[start:stop], np.float32(alpha), np.float32(beta))

    @numba.njit(**_NJIT_PAR)
    def unary_parallel(x, out, alpha, beta, nchunks):
        a = np.float32(alpha)
        b = np.float32(beta)
        total = out.size
        for c in prange(nchunks):
            _unary_run(op, x[total * c // nchunks:total * (c + 1) // nchunks],
                       out[total * c // nchunks:total * (c + 1) // nchunks], a, b)

    return unary_range, unary_parallel


_BINARY: dict = {}
_UNARY: dict = {}


def binary_kernels(op: int):
    """(serial, parallel) kernels of binary op ``op``:

    ``serial(a, b, out, dims, sa, sb, start, stop)`` computes flat output elements [start, stop) of
    ``out = a op b`` under a rank-4 broadcast plan (a, b, out: flat float32; dims: int64[4] collapsed
    output dims; sa, sb: int64[4] element strides of a and b on them, 0 where broadcast, innermost 0 or
    1); ``parallel(a, b, out, dims, sa, sb, nchunks)`` does all of out in ``nchunks`` equal ranges."""
    if op not in _BINARY:
        _BINARY[op] = _make_binary(op)
    return _BINARY[op]


def unary_kernels(op: int):
    """(serial, parallel) kernels of unary op ``op``: ``serial(x, out, alpha, beta, start, stop)``
    computes out[i] = f(x[i]) for i in [start, stop); ``parallel(x, out, alpha, beta, nchunks)`` all."""
    if op not in _UNARY:
        _UNARY[op] = _make_unary(op)
    return _UNARY[op]


def binary_range(op, a, b, out, dims, sa, sb, start, stop):
    """Python-level convenience: the serial kernel of ``op`` on [start, stop)."""
    binary_kernels(op)[0](a, b, out, dims, sa, sb, start, stop)


# --- Python-side drivers (build-time planning, run-time dispatch) --------------------------------------
def num_chunks(work: int, threads: int | None = None) -> int:
    """How many parallel chunks ``work`` element operations are worth (1: run the serial kernel)."""
    if work < _config.PARALLEL_MIN_WORK:
        return 1
    return max(1, min(num_threads() if threads is None else threads, work // (_config.PARALLEL_MIN_WORK // 4)))


def broadcast_plan(out_shape, *in_shapes):
    """Collapse a broadcast of ``in_shapes`` to ``out_shape``.

    Returns ``(dims, strides)``: the collapsed output dims (at least one, outermost first) and per input a
    list of element strides on them (0 where that input broadcasts). Dims of size 1 are dropped and
    neighbouring dims where every input either broadcasts or not alike are merged, so the innermost
    stride of every input is 0 or 1.
    """
    rank = len(out_shape)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in in_shapes]
    groups: list[list] = []  # [size, pattern]
    for k in range(rank):
        d = out_shape[k]
        if d == 1:
            continue
        pattern = tuple(p[k] != 1 for p in padded)
        if groups and groups[-1][1] == pattern:
            groups[-1][0] *= d
        else:
            groups.append([d, pattern])
    if not groups:
        groups = [[1, tuple(False for _ in in_shapes)]]
    dims = [g[0] for g in groups]
    strides = []
    for i in range(len(in_shapes)):
        st = [0] * len(groups)
        acc = 1
        for g in range(len(groups) - 1, -1, -1):
            if groups[g][1][i]:
                st[g] = acc
                acc *= groups[g][0]
        strides.append(st)
    return dims, strides


class BinaryKernel:
    """A prepared fp32 ``out = a op b`` for fixed shapes; ``__call__(a, b, out)`` takes flat arrays.

    Collapsed ranks above :data:`BCAST_RANK` (unusual interleavings of broadcast dims) loop over the
    extra leading dims in Python, one rank-4 kernel call each.
    """

    def __init__(self, op: int, a_shape, b_shape, out_shape):
        self.op = op
        self.serial, self.parallel = binary_kernels(op)
        self.size = int(np.prod(out_shape, dtype=np.int64))
        dims, (sa, sb) = broadcast_plan(tuple(out_shape), tuple(a_shape), tuple(b_shape))
        extra = max(0, len(dims) - BCAST_RANK)
        pad = max(0, BCAST_RANK - len(dims))
        self.lead = [(d, x, y) for d, x, y in zip(dims[:extra], sa[:extra], sb[:extra])]
        self.dims = np.array([1] * pad + dims[extra:], np.int64)
        self.sa = np.array([0] * pad + sa[extra:], np.int64)
        self.sb = np.array([0] * pad + sb[extra:], np.int64)
        self.block = int(np.prod(self.dims))
        self.collapsed = len(dims)

    def __call__(self, a, b, out):
        if self.size == 0:
            return
        if not self.lead:
            self._one(a, b, out)
            return
        import itertools

        for idx in itertools.product(*(range(d) for d, _, _ in self.lead)):
            ao = sum(i * s for i, (_, s, _) in zip(idx, self.lead))
            bo = sum(i * s for i, (_, _, s) in zip(idx, self.lead))
            oo = 0
            for i, (d, _, _) in zip(idx, self.lead):
                oo = oo * d + i
            oo *= self.block
            self._one(a[ao:], b[bo:], out[oo:oo + self.block])

    def _one(self, a, b, out):
        fn, *args = self._call_args(a, b, out, None)
        fn(*args)

    def _call_args(self, a, b, out, threads):
        n = num_chunks(out.size, threads)
        if n == 1:
            return (self.serial, a, b, out, self.dims, self.sa, self.sb, 0, out.size)
        return (self.parallel, a, b, out, self.dims, self.sa, self.sb, n)

    def bind(self, a, b, out, threads: int):
        """A no-argument callable computing ``self(a, b, out)`` on these very arrays, or None when the
        shapes need the Python loop over leading dims."""
        if self.size == 0:
            return lambda: None
        if self.lead:
            return None
        return functools.partial(*self._call_args(a, b, out, threads))


def unary_bind(op: int, x, out, alpha: float, beta: float, threads: int):
    """A no-argument callable computing ``unary(op, x, out, alpha, beta)`` on these very (flat) arrays, with the
    serial or parallel kernel chosen once for ``threads``."""
    serial, parallel = unary_kernels(op)
    n = num_chunks(out.size, threads)
    if n == 1:
        return functools.partial(serial, x, out, float(alpha), float(beta), 0, out.size)
    return functools.partial(parallel, x, out, float(alpha), float(beta), n)


def unary(op: int, x, out, alpha: float = 0.0, beta: float = 0.0) -> None:
    """out = f_op(x) on flat float32 arrays of one size (serial or parallel by size)."""
    serial, parallel = unary_kernels(op)
    n = num_chunks(out.size)
    if n == 1:
        serial(x, out, float(alpha), float(beta), 0, out.size)
    else:
        parallel(x, out, float(alpha), float(beta), n)
