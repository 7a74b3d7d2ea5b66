"""Softmax and LogSoftmax, in both ONNX semantics.

* opset < 13: the input is coerced to 2-D at ``axis`` (default 1), ``[prod(shape[:axis]),
  prod(shape[axis:])]``, and the softmax runs over each row of that matrix.
* opset >= 13: the softmax runs along the single dim ``axis`` (default -1).

Both map onto an (outer, n, inner) view of the contiguous input (:mod:`edgedl.kernels.cpu.softmax`).
The backward uses the same view and reads only the output y (:mod:`edgedl.kernels.cpu.act_grad`):
``dx = y * (g - sum(g * y))`` for Softmax and ``dx = g - exp(y) * sum(g)`` for LogSoftmax, sums along n.
"""
from __future__ import annotations

import functools

import numpy as np

from ..ir import TensorType
from ..kernels.cpu import act_grad as G
from ..kernels.cpu.softmax import SoftmaxKernel
from ..registry import Kernel, Op, ref_kernel, register
from .activation import grad_operand
from .common import normalize_axis, require_dtype
from .elementwise import FLOAT_DTYPES


class _SoftmaxBase(Op):
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    num_inputs = (1, 1)
    log = False

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.coerce_2d = opset < 13
        self.axis = int(self.attr("axis", 1 if self.coerce_2d else -1))

    def _layout(self, shape) -> tuple[int, int, int]:
        rank = len(shape)
        if self.coerce_2d:
            # Softmax-1/11 accept axis in [-r, r-1]; axis == r (all dims outer) is accepted too, as
            # onnxruntime does for the old default axis=1 on 1-D inputs.
            if not -rank <= self.axis <= rank:
                raise self.error(f"axis {self.axis} is out of range for rank {rank}")
            axis = self.axis + rank if self.axis < 0 else self.axis
            outer = int(np.prod(shape[:axis], dtype=np.int64))
            n = int(np.prod(shape[axis:], dtype=np.int64))
            return outer, n, 1
        if rank == 0:
            raise self.error("input must have rank >= 1")
        axis = normalize_axis(self, self.axis, rank)
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        return outer, int(shape[axis]), inner

    def infer(self, ins, consts):
        require_dtype(self, ins[0], FLOAT_DTYPES)
        self._layout(ins[0].shape)
        return [TensorType(ins[0].shape, ins[0].dtype)]

    def ref(self, x):
        outer, n, inner = self._layout(x.shape)
        if x.size == 0:
            return [x.copy()]
        v = x.astype(np.float64).reshape(outer, n, inner)
        v = v - v.max(axis=1, keepdims=True)
        with np.errstate(all="ignore"):
            if self.log:
                y = v - np.log(np.exp(v).sum(axis=1, keepdims=True))
            else:
                e = np.exp(v)
                y = e / e.sum(axis=1, keepdims=True)
        return [y.reshape(x.shape).astype(x.dtype)]

    def build_cuda(self, ins, outs, consts):
        outer, n, inner = self._layout(ins[0].shape)
        if np.dtype(ins[0].dtype) != np.float32 or inner != 1:
            return None
        from ..kernels.cuda.softmax import Softmax as CudaSoftmax

        k = CudaSoftmax(outer, n, self.log)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        k = SoftmaxKernel(*self._layout(ins[0].shape), log=self.log)

        def run(inputs, outputs, scratch):
            k(inputs[0].reshape(-1), outputs[0].reshape(-1), scratch)

        def bind(inputs, outputs, scratch, threads):
            if k.size == 0:
                return None
            return functools.partial(*k.call_args(inputs[0].reshape(-1), outputs[0].reshape(-1), scratch, threads))

        return Kernel(run, scratch_bytes=k.scratch_bytes, bind=bind)

    grad_inputs = ()
    grad_outputs = (0,)

    def backward(self, grads, ins, outs, needs):
        shape = tuple(self.in_types[0].shape)
        g = grads[0]
        if g is None:
            return [np.zeros(shape, np.float32)]
        outer, n, inner = self._layout(shape)
        g = grad_operand(self, g, shape, "output gradient")
        y = grad_operand(self, outs[0], shape, "output")
        dx = np.empty(shape, np.float32)
        G.softmax_grad(y.reshape(-1), g.reshape(-1), dx.reshape(-1), outer, n, inner, self.log)
        return [dx]

    def backward_cuda(self, grads, ins, outs, needs, stream):
        shape = tuple(self.in_types[0].shape)
        if np.dtype(self.in_types[0].dtype) != np.float32:
            return None
        from ..kernels.cuda import grad as CG

        if grads[0] is None:
            return [CG.zeros(shape, stream)]
        dx = CG.empty(shape, stream)
        CG.SoftmaxGrad(*self._layout(shape), self.log)(outs[0], grads[0], dx, stream)
        return [dx]


@register
class Softmax(_SoftmaxBase):
    op_type = "Softmax"


@register
class LogSoftmax(_SoftmaxBase):
    op_type = "LogSoftmax"
    log = True
