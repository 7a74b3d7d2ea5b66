"""Activations applied in place to a run of a flat float32 array, on the GEMM epilogue's vector code.

:func:`act_run` is what the convolution and dense kernels call after they have written an output run (a
depthwise plane, a first layer's rows, a matrix-vector product's outputs): the in-register activations
(:data:`~edgedl.kernels.cpu.act.SIMPLE_ACTS`: Relu, Clip, LeakyRelu, HardSwish, HardSigmoid, Sigmoid, Swish) run
as :func:`~edgedl.kernels.cpu.vec.act_floats`, the others (Tanh, Elu, ...) as the element loops of
:func:`~edgedl.kernels.cpu.act.act_inplace`. Its own module because :mod:`.vec` imports :mod:`.act`.

Measured on Zen 3 (51,200 floats in place, ns per float, the element loops -> act_floats): Relu 0.48 -> 0.09 and
LeakyRelu 0.50 -> 0.10 (LLVM had made their loops masked stores), Clip, HardSwish, HardSigmoid 0.07-0.12 either
way, Sigmoid 0.64 -> 0.70 and Swish 0.79 -> 0.81. Relu, Clip, LeakyRelu, HardSwish and HardSigmoid give the same
bits as the loops; every in-register activation gives the bits of the GEMM's fused epilogue (tests/kernels/
test_act_run.py). act_inplace's Sigmoid and Swish loops differ from it in the last bit of some values (LLVM
contracts and reorders their arithmetic by its own rules).
"""
from __future__ import annotations

import numba
import numpy as np

from .act import ACT_NONE, NUM_ACTS, SIMPLE_ACTS, act_inplace
from .config import NJIT
from .vec import act_floats

#: codes act_floats evaluates (every in-register activation but the identity)
_VECTOR = np.array([code in SIMPLE_ACTS and code != ACT_NONE for code in range(NUM_ACTS)], dtype=np.bool_)


@numba.njit(**NJIT)
def act_run(x, start, stop, code, alpha, beta):
    """Apply activation ``code`` (parameters ``alpha``, ``beta``) to ``x[start:stop]`` in place (x: flat,
    contiguous float32)."""
    if stop <= start or code == ACT_NONE:
        return
    if 0 <= code < _VECTOR.size and _VECTOR[code]:
        act_floats(x, start, stop - start, code, np.float32(alpha), np.float32(beta))
    else:
        act_inplace(x, start, stop, code, alpha, beta)
