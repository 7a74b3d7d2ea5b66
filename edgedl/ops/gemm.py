"""Gemm and MatMul."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .common import broadcast_shapes
from .fused import activation_ref, fused_activation


@register
class Gemm(Op):
    """Y = alpha * A' @ B' + beta * C, with A' = A.T if transA, B' = B.T if transB, C broadcast to Y."""

    op_type = "Gemm"
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.0))
        self.beta = float(self.attr("beta", 1.0))
        self.trans_a = int(self.attr("transA", 0))
        self.trans_b = int(self.attr("transB", 0))
        self.act = fused_activation(self)

    def infer(self, ins, consts):
        a, b = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise self.error(f"A and B must be 2-D, got shapes {a.shape} and {b.shape}")
        if a.dtype != b.dtype or (c is not None and c.dtype != a.dtype):
            raise self.error(f"A, B and C must share a dtype, got {[t.dtype.name for t in ins if t]}")
        m, k = a.shape[::-1] if self.trans_a else a.shape
        k2, n = b.shape[::-1] if self.trans_b else b.shape
        if k != k2:
            raise self.error(f"inner dimensions differ: A{'ᵀ' if self.trans_a else ''} is ({m}, {k}) and "
                             f"B{'ᵀ' if self.trans_b else ''} is ({k2}, {n})")
        if c is not None:
            if len(c.shape) > 2 or broadcast_shapes(self, c.shape, (m, n)) != (m, n):
                raise self.error(f"C with shape {c.shape} does not broadcast to the output ({m}, {n})")
        return [TensorType((m, n), a.dtype)]

    def ref(self, a, b, c=None):
        a64 = a.astype(np.float64).T if self.trans_a else a.astype(np.float64)
        b64 = b.astype(np.float64).T if self.trans_b else b.astype(np.float64)
        y = self.alpha * (a64 @ b64)
        if c is not None:
            y = y + self.beta * c.astype(np.float64)
        return [activation_ref(y.astype(a.dtype), *self.act)]

    def build(self, ins, outs, consts):
        if ins[0].dtype != np.float32:
            return ref_kernel(self)
        return _build_gemm_kernel(self, ins, outs, consts)


@register
class MatMul(Op):
    """numpy.matmul semantics: 1-D operands are promoted, batch dimensions broadcast."""

    op_type = "MatMul"
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 2)

    def infer(self, ins, consts):
        a, b = ins
        if a.dtype != b.dtype:
            raise self.error(f"A and B must share a dtype, got {a.dtype} and {b.dtype}")
        if len(a.shape) == 0 or len(b.shape) == 0:
            raise self.error("MatMul operands must have rank >= 1")
        sa = (1,) + a.shape if len(a.shape) == 1 else a.shape
        sb = b.shape + (1,) if len(b.shape) == 1 else b.shape
        if sa[-1] != sb[-2]:
            raise self.error(f"inner dimensions differ: A is {a.shape}, B is {b.shape}")
        batch = broadcast_shapes(self, sa[:-2], sb[:-2])
        out = batch + (sa[-2], sb[-1])
        if len(a.shape) == 1:
            out = out[:-2] + out[-1:]
        if len(b.shape) == 1:
            out = out[:-1]
        return [TensorType(out, a.dtype)]

    def ref(self, a, b):
        if a.dtype.kind == "f":
            return [np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)]
        return [np.matmul(a, b)]

    def build(self, ins, outs, consts):
        if ins[0].dtype != np.float32:
            return ref_kernel(self)
        return _build_matmul_kernel(self, ins, outs, consts)


def _build_gemm_kernel(op: Gemm, ins, outs, consts) -> Kernel:
    return ref_kernel(op)


def _build_matmul_kernel(op: MatMul, ins, outs, consts) -> Kernel:
    return ref_kernel(op)
