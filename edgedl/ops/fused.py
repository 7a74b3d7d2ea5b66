"""Fused activations: the ``_activation`` attribute that the fuse pass puts on Conv/ConvTranspose/Gemm.

This module maps activation names to the epilogue codes of ``edgedl.kernels.cpu.act`` and gives the
numpy reference of each, so ops with a fused activation stay checkable against their reference.
"""
from __future__ import annotations

import numpy as np

from ..registry import Op

#: activation name -> epilogue code (must match edgedl.kernels.cpu.act)
ACT_CODES = {None: 0, "Relu": 1, "Clip": 2, "LeakyRelu": 3, "HardSwish": 4, "Sigmoid": 5, "HardSigmoid": 6,
             "Tanh": 7, "Elu": 8, "Swish": 9}


def fused_activation(op: Op) -> tuple[int, float, float]:
    """(code, alpha, beta) of the node's fused activation; (0, 0, 0) when there is none."""
    act = op.attr("_activation")
    if act is None:
        return 0, 0.0, 0.0
    kind, alpha, beta = act
    return ACT_CODES[kind], float(alpha), float(beta)


def activation_ref(y: np.ndarray, code: int, alpha: float, beta: float) -> np.ndarray:
    """numpy reference of an epilogue activation (computed in y's dtype)."""
    if code == 0:
        return y
    if code == 1:
        return np.maximum(y, 0)
    if code == 2:
        return np.clip(y, alpha, beta).astype(y.dtype)
    if code == 3:
        return np.where(y >= 0, y, y * alpha).astype(y.dtype)
    if code == 4:
        return (y * np.clip(y / 6 + 0.5, 0, 1)).astype(y.dtype)
    if code == 5:
        return (1 / (1 + np.exp(-y.astype(np.float64)))).astype(y.dtype)
    if code == 6:
        return np.clip(alpha * y + beta, 0, 1).astype(y.dtype)
    if code == 7:
        return np.tanh(y)
    if code == 8:
        return np.where(y > 0, y, alpha * np.expm1(np.minimum(y, 0))).astype(y.dtype)
    if code == 9:
        y64 = y.astype(np.float64)
        with np.errstate(over="ignore"):
            return (y64 / (1 + np.exp(-alpha * y64))).astype(y.dtype)
    raise ValueError(f"unknown activation code {code}")
