"""Special functions as Numba kernels: Erf (float32, libm), and Gelu in float64 (the float16 / float64 path of
the Gelu ops; float32 Gelu runs the vectorizable kernels of :mod:`edgedl.kernels.cpu.elementwise`).

Gelu: x * Phi(x) with Phi(x) = erfc(-x / sqrt(2)) / 2 (erfc keeps the negative tail accurate), or the tanh form
x / 2 * (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) * (x + 0.044715 x^3).
"""
import math

from numba import njit

from .config import NJIT


@njit(**NJIT)
def erf_inplace(x):
    # x is (n,) float32, overwritten with erf(x)
    for i in range(x.shape[0]):
        x[i] = math.erf(x[i])


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
