"""Activations fused into kernel epilogues (Conv, ConvTranspose, Gemm, MatMul).

An activation travels as an integer code plus two float parameters ``alpha`` and ``beta``:

====================  ==  ==================================================
ACT_NONE               0  x
ACT_RELU               1  max(x, 0)
ACT_CLIP               2  min(max(x, alpha), beta)
ACT_LEAKY_RELU         3  x if x >= 0 else alpha * x
ACT_HARD_SWISH         4  x * max(0, min(1, x / 6 + 1 / 2))
ACT_SIGMOID            5  1 / (1 + exp(-x))
ACT_HARD_SIGMOID       6  max(0, min(1, alpha * x + beta))
ACT_TANH               7  tanh(x)
ACT_ELU                8  x if x >= 0 else alpha * (exp(x) - 1)
ACT_SWISH              9  x * sigmoid(alpha * x)   (SiLU with alpha 1)
====================  ==  ==================================================

NaN propagates through every activation (comparisons are written so that a NaN input gives a NaN
output, like onnxruntime). :func:`apply_act` is the scalar Numba version, inlined into kernels;
:func:`act_inplace` applies one to a contiguous run of a flat float32 array with the branch on the code
hoisted out of the loop (kernels call :func:`.act_vec.act_run`, which runs the in-register ones as the GEMM
epilogue's vector code and the rest here); :func:`act_ref` is the numpy reference. The exp-based ones (Sigmoid, Tanh, Elu,
Swish) use the branch-free float32 polynomials of :mod:`.elementwise`, which vectorize: libm's ``expf`` is a
scalar call (measured 3 ns per element against 0.4 ns, which made a fused Sigmoid slower than a separate one).
"""
from __future__ import annotations

import numba
import numpy as np

from .config import FASTMATH
from .elementwise import expm1_f32, sigmoid_f32, tanh_f32
from .sigmoid_ir import swish_f32

ACT_NONE = 0
ACT_RELU = 1
ACT_CLIP = 2
ACT_LEAKY_RELU = 3
ACT_HARD_SWISH = 4
ACT_SIGMOID = 5
ACT_HARD_SIGMOID = 6
ACT_TANH = 7
ACT_ELU = 8
ACT_SWISH = 9
NUM_ACTS = 10

#: ONNX op type -> activation code (the kinds recorded by the fusion pass in ``attrs["_activation"]``)
ACT_BY_NAME = {
    "Relu": ACT_RELU,
    "Clip": ACT_CLIP,
    "LeakyRelu": ACT_LEAKY_RELU,
    "HardSwish": ACT_HARD_SWISH,
    "Sigmoid": ACT_SIGMOID,
    "HardSigmoid": ACT_HARD_SIGMOID,
    "Tanh": ACT_TANH,
    "Elu": ACT_ELU,
    "Swish": ACT_SWISH,
}

#: the codes that the GEMM microkernel evaluates itself, in vector registers, before it stores a tile (Sigmoid
#: and Swish with the same exp polynomial as :func:`~.elementwise.sigmoid_f32`); the others (Tanh, Elu) run over
#: the stored output afterwards
SIMPLE_ACTS = (ACT_NONE, ACT_RELU, ACT_CLIP, ACT_LEAKY_RELU, ACT_HARD_SWISH, ACT_SIGMOID, ACT_HARD_SIGMOID,
               ACT_SWISH)


def act_code(kind: str | int | None) -> int:
    """Activation code for an ONNX op type name (None or "" -> ACT_NONE); ints pass through."""
    if kind is None or kind == "":
        return ACT_NONE
    if isinstance(kind, (int, np.integer)):
        if not 0 <= int(kind) < NUM_ACTS:
            raise ValueError(f"unknown activation code {kind}")
        return int(kind)
    try:
        return ACT_BY_NAME[kind]
    except KeyError:
        raise ValueError(f"activation {kind!r} cannot be fused; known: {sorted(ACT_BY_NAME)}") from None


_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F6INV = np.float32(1.0 / 6.0)
_FHALF = np.float32(0.5)


@numba.njit(inline="always", cache=True, fastmath=FASTMATH)
def apply_act(v, code, alpha, beta):
    """``v`` (float32) through activation ``code`` with parameters ``alpha``, ``beta``; returns float32."""
    # NB: written as compare-and-select on purpose, not min()/max(): ``x < 0 ? 0 : x`` keeps a NaN x,
    # and so does every clamp below (the microkernel's vector versions in vec.py use the same forms)
    v = np.float32(v)
    a = np.float32(alpha)
    b = np.float32(beta)
    if code == ACT_NONE:
        r = v
    elif code == ACT_RELU:
        r = _F0 if v < _F0 else v
    elif code == ACT_CLIP:
        r = a if v < a else v
        r = b if r > b else r
    elif code == ACT_LEAKY_RELU:
        r = a * v if v < _F0 else v
    elif code == ACT_HARD_SWISH:
        t = v * _F6INV + _FHALF
        t = _F0 if t < _F0 else t
        t = _F1 if t > _F1 else t
        r = v * t
    elif code == ACT_SIGMOID:
        r = sigmoid_f32(v)
    elif code == ACT_HARD_SIGMOID:
        t = a * v + b
        t = _F0 if t < _F0 else t
        r = _F1 if t > _F1 else t
    elif code == ACT_TANH:
        r = tanh_f32(v)
    elif code == ACT_ELU:
        r = a * expm1_f32(v) if v < _F0 else v
    elif code == ACT_SWISH:
        r = swish_f32(v, a)
    else:
        r = v
    return np.float32(r)


@numba.njit(cache=True, fastmath=FASTMATH)
def act_inplace(x, start, stop, code, alpha, beta):
    """Apply activation ``code`` to ``x[start:stop]`` (x: flat float32 array), in place.

    The branch on ``code`` is taken once, outside the loop, so every loop vectorizes on its own."""
    if code == ACT_NONE or stop <= start:
        return
    a = np.float32(alpha)
    b = np.float32(beta)
    # NOTE: loop over a slice from 0: with an index of unknown sign Numba emits a negative-index
    # wraparound per element, which stops LLVM from vectorizing (measured ~8x slower for HardSwish).
    x = x[start:stop]
    start = 0
    stop = x.shape[0]
    if code == ACT_RELU:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_RELU, a, b)
    elif code == ACT_CLIP:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_CLIP, a, b)
    elif code == ACT_LEAKY_RELU:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_LEAKY_RELU, a, b)
    elif code == ACT_HARD_SWISH:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_HARD_SWISH, a, b)
    elif code == ACT_SIGMOID:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_SIGMOID, a, b)
    elif code == ACT_HARD_SIGMOID:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_HARD_SIGMOID, a, b)
    elif code == ACT_TANH:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_TANH, a, b)
    elif code == ACT_ELU:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_ELU, a, b)
    elif code == ACT_SWISH:
        for i in range(start, stop):
            x[i] = apply_act(x[i], ACT_SWISH, a, b)


def act_ref(x, code: int, alpha: float = 0.0, beta: float = 0.0):
    """numpy reference of activation ``code`` (computed in ``x``'s dtype; use float64 for references)."""
    x = np.asarray(x)
    code = act_code(code)
    with np.errstate(over="ignore", invalid="ignore"):
        if code == ACT_NONE:
            return x.copy()
        if code == ACT_RELU:
            return np.where(x < 0, 0, x).astype(x.dtype)
        if code == ACT_CLIP:
            return np.where(x < alpha, alpha, np.where(x > beta, beta, x)).astype(x.dtype)
        if code == ACT_LEAKY_RELU:
            return np.where(x < 0, alpha * x, x).astype(x.dtype)
        if code == ACT_HARD_SWISH:
            return (x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)).astype(x.dtype)
        if code == ACT_SIGMOID:
            return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)
        if code == ACT_HARD_SIGMOID:
            return np.clip(alpha * x + beta, 0.0, 1.0).astype(x.dtype)
        if code == ACT_TANH:
            return np.tanh(x)
        if code == ACT_ELU:
            return np.where(x < 0, alpha * np.expm1(x), x).astype(x.dtype)
        if code == ACT_SWISH:
            return (x / (1.0 + np.exp(-alpha * x))).astype(x.dtype)
    raise ValueError(f"unknown activation code {code}")
