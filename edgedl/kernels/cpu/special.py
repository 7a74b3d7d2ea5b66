"""Special functions as Numba kernels: Erf (float32, a branch-free polynomial form that vectorizes), and Gelu in
float64 (the float16 / float64 path of the Gelu ops; float32 Gelu runs the vectorizable kernels of
:mod:`edgedl.kernels.cpu.elementwise`).

Erf (float32): for |x| < 1.5, erf(x) = x * P(x^2), P a degree-8 fit of erf(sqrt s) / sqrt s on s in [0, 2.25]
(weighted least squares on Chebyshev nodes against mpmath, relative error 8e-10), evaluated in float64 and rounded
once; for |x| >= 1.5, erf(x) = sign(x) * (1 - erfc(|x|)) with erfc(t) = 2 Phi(-t sqrt 2) from the vectorizable
normal tail :func:`~edgedl.kernels.cpu.elementwise.ndtr_tail_f32` (relative error < 5e-7 on erfc <= 0.034, so
< 2e-8 on erf). Against math.erf: within 1 ulp (relative error < 1e-7) everywhere.
NaN stays NaN, erf(+-inf) = +-1.

Gelu: x * Phi(x) with Phi(x) = erfc(-x / sqrt(2)) / 2 (erfc keeps the negative tail accurate), or the tanh form
x / 2 * (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) * (x + 0.044715 x^3).
"""
import math

import numpy as np
from numba import njit

from .config import NJIT
from .elementwise import ndtr_tail_f32

# erf(sqrt s) / sqrt s ~ sum _ERF_P[k] s^k on s in [0, 2.25]
_ERF_P = (1.128379166176161, -0.37612632573696253, 0.11283718723005758, -0.02686288883551898, 0.0052164810916655166,
          -0.0008450575253370722, 0.00011288832521052146, -1.1272870261345917e-05, 6.144592719148554e-07)


@njit(inline="always", **NJIT)
def erf_f32(x):
    """erf(x) for float32 x, branch-free (selects only), so loops over it vectorize."""
    ax = np.abs(x)
    xd = np.float64(x)  # the polynomial in float64 (still vectorized): erf rounded once, <= 0.5 ulp + 1e-9
    s = xd * xd
    p = _ERF_P[8]
    p = p * s + _ERF_P[7]
    p = p * s + _ERF_P[6]
    p = p * s + _ERF_P[5]
    p = p * s + _ERF_P[4]
    p = p * s + _ERF_P[3]
    p = p * s + _ERF_P[2]
    p = p * s + _ERF_P[1]
    p = p * s + _ERF_P[0]
    small = np.float32(xd * p)
    q = ndtr_tail_f32(ax * np.float32(1.4142135623730951))  # erfc(|x|) / 2
    big = np.float32(1.0) - (q + q)
    big = -big if x < np.float32(0.0) else big
    return small if ax < np.float32(1.5) else big


@njit(**NJIT)
def erf_inplace(x):
    # x: (n,) float32, overwritten with erf(x)
    for i in range(x.shape[0]):
        x[i] = erf_f32(x[i])


@njit(**NJIT)
def erf_into(x, out):
    # x, out: (n,) float32; out[i] = erf(x[i]) (out may be x)
    for i in range(x.shape[0]):
        out[i] = erf_f32(x[i])


@njit(**NJIT)
def gelu_f64(x, out, tanh_form):
    # x, out: (n,) float64; out may be x
    for i in range(x.shape[0]):
        v = x[i]
        if tanh_form:
            z = 1.5957691216057308 * v * (1.0 + 0.044715 * v * v)
            if z >= 0.0:
                out[i] = v / (1.0 + math.exp(-z))
            else:
                e = math.exp(z)
                out[i] = v * (e / (1.0 + e))
        else:
            out[i] = 0.5 * v * math.erfc(-v * 0.7071067811865476)
