"""Special functions (Erf) as Numba kernels."""
import math

from numba import njit

from .config import NJIT


@njit(**NJIT)
def erf_inplace(x):
    # x is (n,) float32, overwritten with erf(x)
    for i in range(x.shape[0]):
        x[i] = math.erf(x[i])
