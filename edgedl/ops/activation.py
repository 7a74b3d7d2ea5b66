"""Activations: Relu, LeakyRelu, PRelu, Elu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish.

All but PRelu are :class:`~edgedl.ops.elementwise.Unary` ops (one flat fp32 Numba loop with an op code
and two parameters); PRelu is a broadcasting binary kernel (slope broadcast to x). Clip takes its bounds
from attributes (opset < 11) or from optional scalar inputs (opset >= 11), constant or computed at run time.
NaN propagates through every activation, as in onnxruntime.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernels.cpu import elementwise as K
from ..registry import Kernel, Op, ref_kernel, register
from .common import require_dtype, same_dtype
from .elementwise import NUMERIC_DTYPES, SIGNED_DTYPES, Unary, _flat, const_operands, operand


@register
class Relu(Unary):
    op_type = "Relu"
    code = K.U_RELU
    dtypes = SIGNED_DTYPES

    def compute(self, x):
        return np.where(x < 0, np.zeros((), x.dtype), x)


@register
class LeakyRelu(Unary):
    op_type = "LeakyRelu"
    code = K.U_LEAKY_RELU

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 0.01))

    def params(self):
        return self.alpha, 0.0

    def compute(self, x):
        return np.where(x < 0, x * x.dtype.type(self.alpha), x)


@register
class Elu(Unary):
    op_type = "Elu"
    code = K.U_ELU

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.0))

    def params(self):
        return self.alpha, 0.0

    def compute(self, x):
        return np.where(x < 0, self.alpha * np.expm1(x), x)


@register
class Sigmoid(Unary):
    op_type = "Sigmoid"
    code = K.U_SIGMOID

    def compute(self, x):
        e = np.exp(-np.abs(x))  # never overflows
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@register
class Tanh(Unary):
    op_type = "Tanh"
    code = K.U_TANH

    def compute(self, x):
        return np.tanh(x)


@register
class HardSigmoid(Unary):
    op_type = "HardSigmoid"
    code = K.U_HARD_SIGMOID

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 0.2))
        self.beta = float(self.attr("beta", 0.5))

    def params(self):
        return self.alpha, self.beta

    def compute(self, x):
        return np.clip(self.alpha * x + self.beta, 0, 1)


@register
class HardSwish(Unary):
    op_type = "HardSwish"
    code = K.U_HARD_SWISH

    def compute(self, x):
        return x * np.clip(x / 6 + 0.5, 0, 1)


@register
class PRelu(Op):
    """y = x if x >= 0 else slope * x; slope broadcasts to x (unidirectionally)."""

    op_type = "PRelu"
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 2)

    def infer(self, ins, consts):
        dt = same_dtype(self, ins)
        require_dtype(self, ins[0], NUMERIC_DTYPES)
        x, s = tuple(ins[0].shape), tuple(ins[1].shape)
        if self.opset < 7 and len(s) == 1 and len(x) >= 2 and s[0] == x[1] and s[0] != 1 and x[-1] != s[0]:
            s = s + (1,) * (len(x) - 2)  # opset 6: a 1-D slope is per channel
        if len(s) > len(x) or any(ds not in (1, dx) for ds, dx in zip(s[::-1], x[::-1])):
            raise self.error(f"slope of shape {s} does not broadcast to the input shape {x}")
        return [TensorType(x, dt)]

    def _slope(self, x_shape, s):
        if (self.opset < 7 and s.ndim == 1 and len(x_shape) >= 2 and s.shape[0] == x_shape[1]
                and s.shape[0] != 1 and x_shape[-1] != s.shape[0]):
            return s.reshape(s.shape + (1,) * (len(x_shape) - 2))
        return s

    def ref(self, x, slope):
        slope = self._slope(x.shape, slope)
        return [np.where(x < 0, x * slope, x).astype(x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        s_shape = self._slope(ins[0].shape, np.empty(ins[1].shape, np.uint8)).shape
        k = K.BinaryKernel(K.B_PRELU, ins[0].shape, s_shape, outs[0].shape)
        fixed = const_operands(consts)

        def run(inputs, outputs, scratch):
            k(operand(inputs, fixed, 0), operand(inputs, fixed, 1), _flat(outputs[0]))

        return Kernel(run)


@register
class Clip(Op):
    """min(max(x, lo), hi) (hi wins where lo > hi). Bounds: attributes ``min``/``max`` (opset < 11) or
    optional scalar inputs 1 and 2 (opset >= 11), constant or computed at run time."""

    op_type = "Clip"
    kernels = {"cpu": ("float32",)}
    num_inputs = (1, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 11:
            self.attr_min = float(self.attr("min", -3.4028234663852886e38))
            self.attr_max = float(self.attr("max", 3.4028234663852886e38))
            if len([i for i in node.inputs if i]) > 1:
                raise self.error(f"opset {opset} takes min/max as attributes, not inputs")

    def infer(self, ins, consts):
        require_dtype(self, ins[0], NUMERIC_DTYPES)
        for k, what in ((1, "min"), (2, "max")):
            if k < len(ins) and ins[k] is not None:
                t = ins[k]
                if np.dtype(t.dtype) != np.dtype(ins[0].dtype):
                    raise self.error(f"{what} has dtype {np.dtype(t.dtype).name}, input has "
                                     f"{np.dtype(ins[0].dtype).name}")
                if t.size != 1 or len(t.shape) > 1:
                    raise self.error(f"{what} must be a scalar, got shape {tuple(t.shape)}")
        return [TensorType(ins[0].shape, ins[0].dtype)]

    def _bounds(self, dtype, lo, hi):
        if self.opset < 11:
            return self.attr_min, self.attr_max
        return (None if lo is None else lo.reshape(()).item(), None if hi is None else hi.reshape(()).item())

    def ref(self, x, lo=None, hi=None):
        a, b = self._bounds(x.dtype, lo, hi)
        y = x
        if a is not None:
            y = np.where(y < a, np.asarray(a).astype(x.dtype), y)
        if b is not None:
            y = np.where(y > b, np.asarray(b).astype(x.dtype), y)
        return [np.array(y, dtype=x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        if self.opset < 11:
            fixed = (self.attr_min, self.attr_max)
        else:
            runtime = [k for k in (1, 2) if k < len(ins) and ins[k] is not None and consts[k] is None]
            if not runtime:
                lo, hi = self._bounds(np.float32, *(consts[k] if k < len(consts) else None for k in (1, 2)))
                fixed = (-np.inf if lo is None else lo, np.inf if hi is None else hi)
            else:
                fixed = None

        if fixed is not None:
            lo_f, hi_f = float(fixed[0]), float(fixed[1])

            def run(inputs, outputs, scratch):
                K.unary(K.U_CLIP, _flat(inputs[0]), _flat(outputs[0]), lo_f, hi_f)

            return Kernel(run)

        def run_dyn(inputs, outputs, scratch):
            lo = inputs[1] if len(inputs) > 1 else None
            hi = inputs[2] if len(inputs) > 2 else None
            lo_f = -np.inf if lo is None else float(lo.reshape(-1)[0])
            hi_f = np.inf if hi is None else float(hi.reshape(-1)[0])
            K.unary(K.U_CLIP, _flat(inputs[0]), _flat(outputs[0]), lo_f, hi_f)

        return Kernel(run_dyn)


__all__ = ["Relu", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "PRelu", "Clip"]
