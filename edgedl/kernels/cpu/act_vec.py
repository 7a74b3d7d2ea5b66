"""Activations applied in place to a run of a flat float32 array, on the GEMM epilogue's vector code.

:func:`act_run` is what the convolution and dense kernels call after they have written an output run (a
depthwise plane, a first layer's rows, a matrix-vector product's outputs): the piecewise-linear activations
(Relu, Clip, LeakyRelu, HardSwish, HardSigmoid) run as :func:`~edgedl.kernels.cpu.vec.act_floats`, the others
(Sigmoid, Swish, Tanh, Elu, ...) as the element loops of :func:`~edgedl.kernels.cpu.act.act_inplace`. Its own
module because :mod:`.vec` imports :mod:`.act`.

Measured on Zen 3 (51,200 floats in place, ns per float, the element loops -> act_floats): Relu 0.48 -> 0.09 and
LeakyRelu 0.50 -> 0.10 (LLVM had made their loops masked stores), Clip, HardSwish, HardSigmoid 0.07-0.12 either
way, all with the same bits (and the bits of the GEMM's fused epilogue). Sigmoid and Swish stay on the loops:
act_floats ran them at 0.92 and 1.01 against the loops' 0.64 and 0.79 with the exp the epilogue had then (no
fused multiply-adds); both now emit :mod:`.sigmoid_ir`'s code, the same bits either way, and were not
measured again.
"""
from __future__ import annotations

import numba
import numpy as np

from .act import ACT_CLIP, ACT_HARD_SIGMOID, ACT_HARD_SWISH, ACT_LEAKY_RELU, ACT_RELU, NUM_ACTS, act_inplace
from .config import NJIT
from .vec import act_floats

#: codes act_floats evaluates: the piecewise-linear in-register activations
VECTOR_ACTS = (ACT_RELU, ACT_CLIP, ACT_LEAKY_RELU, ACT_HARD_SWISH, ACT_HARD_SIGMOID)
_VECTOR = np.array([code in VECTOR_ACTS for code in range(NUM_ACTS)], dtype=np.bool_)


@numba.njit(**NJIT)
def act_run(x, start, stop, code, alpha, beta):
    """Apply activation ``code`` (parameters ``alpha``, ``beta``) to ``x[start:stop]`` in place (x: flat,
    contiguous float32)."""
    if stop <= start:
        return
    if 0 <= code < _VECTOR.size and _VECTOR[code]:
        act_floats(x, start, stop - start, code, np.float32(alpha), np.float32(beta))
    else:
        act_inplace(x, start, stop, code, alpha, beta)
