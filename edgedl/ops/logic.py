"""Comparisons, logical ops, Where (with its backward), CastLike, Pow and Erf.

These appear in exported models (masks, function-expanded activations) but rarely on the hot path, so
they run as numpy (vectorized C) writing into the preallocated outputs; ``edgedl ops`` lists them as such.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, register
from .common import broadcast_shapes, unbroadcast
from .gather import cast_array, cast_attributes, cast_kernel


def _numpy_kernel(fn) -> Kernel:
    def run(inputs, outputs, scratch):
        np.copyto(outputs[0], fn(*inputs), casting="unsafe")

    return Kernel(run, impl="numpy")


class _Binary(Op):
    num_inputs = (2, 2)
    func = staticmethod(np.add)
    bool_out = False
    bool_in = False

    def infer(self, ins, consts):
        a, b = ins
        if a.dtype != b.dtype:
            raise self.error(f"inputs must share a dtype, got {a.dtype.name} and {b.dtype.name}")
        if self.bool_in and a.dtype != np.bool_:
            raise self.error(f"inputs must be bool, got {a.dtype.name}")
        shape = broadcast_shapes(self, a.shape, b.shape)
        return [TensorType(shape, np.dtype(np.bool_) if self.bool_out else a.dtype)]

    def ref(self, a, b):
        return [np.asarray(self.func(a, b))]

    def build(self, ins, outs, consts):
        return _numpy_kernel(self.func)


def _binary(name: str, func, bool_out=True, bool_in=False):
    cls = type(name, (_Binary,), {"op_type": name, "func": staticmethod(func), "bool_out": bool_out,
                                  "bool_in": bool_in})
    return register(cls)


Equal = _binary("Equal", np.equal)
Less = _binary("Less", np.less)
LessOrEqual = _binary("LessOrEqual", np.less_equal)
Greater = _binary("Greater", np.greater)
GreaterOrEqual = _binary("GreaterOrEqual", np.greater_equal)
And = _binary("And", np.logical_and, bool_in=True)
Or = _binary("Or", np.logical_or, bool_in=True)
Xor = _binary("Xor", np.logical_xor, bool_in=True)


@register
class Not(Op):
    op_type = "Not"

    def infer(self, ins, consts):
        if ins[0].dtype != np.bool_:
            raise self.error(f"input must be bool, got {ins[0].dtype.name}")
        return [ins[0]]

    def ref(self, x):
        return [np.logical_not(x)]

    def build(self, ins, outs, consts):
        return _numpy_kernel(np.logical_not)


@register
class Where(Op):
    op_type = "Where"
    num_inputs = (3, 3)

    def infer(self, ins, consts):
        cond, a, b = ins
        if cond.dtype != np.bool_:
            raise self.error(f"condition must be bool, got {cond.dtype.name}")
        if a.dtype != b.dtype:
            raise self.error(f"X and Y must share a dtype, got {a.dtype.name} and {b.dtype.name}")
        return [TensorType(broadcast_shapes(self, cond.shape, a.shape, b.shape), a.dtype)]

    def ref(self, cond, a, b):
        return [np.where(cond, a, b)]

    def build(self, ins, outs, consts):
        return _numpy_kernel(np.where)

    grad_inputs = (0,)

    def backward(self, grads, ins, outs, needs):
        """dX = where(cond, g, 0), dY = where(cond, 0, g), each summed over the axes it was broadcast along;
        the condition takes no gradient."""
        cond = ins[0]
        g = grads[0]
        res = [None, None, None]
        for i, pick in ((1, True), (2, False)):
            if not needs[i]:
                continue
            shape = tuple(self.in_types[i].shape)
            if g is None:
                res[i] = np.zeros(shape, np.float32)
                continue
            zero = np.zeros((), g.dtype)
            part = np.where(cond, g, zero) if pick else np.where(cond, zero, g)
            res[i] = unbroadcast(np.broadcast_to(part, g.shape), shape)
        return res


@register
class CastLike(Op):
    op_type = "CastLike"
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.saturate, self.round_mode = cast_attributes(self)  # opset 19 / 24, as Cast's

    def infer(self, ins, consts):
        return [TensorType(ins[0].shape, ins[1].dtype)]

    def ref(self, x, like):
        return [cast_array(x, like.dtype, self.saturate, self.round_mode)]

    def build(self, ins, outs, consts):
        return cast_kernel(self, ins[0].dtype, ins[1].dtype)


@register
class Pow(Op):
    """X ** Y with numpy broadcasting; the result has X's dtype (Y may differ, as the spec allows)."""

    op_type = "Pow"
    kernels = {"cuda": ("float32",)}
    num_inputs = (2, 2)

    def infer(self, ins, consts):
        return [TensorType(broadcast_shapes(self, ins[0].shape, ins[1].shape), ins[0].dtype)]

    def ref(self, x, y):
        with np.errstate(all="ignore"):
            if x.dtype.kind in "iu" and y.dtype.kind in "iu":
                return [np.power(x, y.astype(x.dtype))]
            return [np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)]

    def build(self, ins, outs, consts):
        p = consts[1]
        if (np.dtype(ins[0].dtype).kind == "f" and p is not None and p.size == 1 and float(p.reshape(-1)[0]) == 2.0
                and tuple(outs[0].shape) == tuple(ins[0].shape)):
            # the square (variances, power spectra): one rounding of the exact product, the reference's bits,
            # without the float64 round trip (8 us on a 387-element tensor, 1 us this way)
            def square(inputs, outputs, scratch):
                np.multiply(inputs[0], inputs[0], out=outputs[0])

            def bind(inputs, outputs, scratch, threads):
                x = inputs[0]
                return lambda: np.multiply(x, x, out=outputs[0])

            return Kernel(square, impl="numpy", bind=bind)

        def run(inputs, outputs, scratch):
            outputs[0][...] = self.ref(*inputs)[0]

        return Kernel(run, impl="numpy")

    def build_cuda(self, ins, outs, consts):
        """float32 base: a constant scalar exponent (x * x for 2), else elementwise pow with broadcasting."""
        if np.dtype(ins[0].dtype) != np.float32 or np.dtype(ins[1].dtype).kind not in "fiu":
            return None
        from ..kernels.cuda import elementwise as E

        p = consts[1]
        if p is not None and p.size == 1 and tuple(outs[0].shape) == tuple(ins[0].shape):
            k = E.UnaryMath(E.POW_SCALAR, float(p.reshape(-1)[0]))
            return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")
        if np.dtype(ins[1].dtype) != np.float32:
            return None
        b = E.Binary(E.POW, ins[0].shape, ins[1].shape, outs[0].shape)
        return Kernel(lambda inputs, outputs, stream: b(inputs[0], inputs[1], outputs[0], stream), impl="cuda")


_erf = np.frompyfunc(math.erf, 1, 1)


@register
class Erf(Op):
    op_type = "Erf"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}

    def build_cuda(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return None
        from ..kernels.cuda.elementwise import UNARY_CODES, UnaryMath

        k = UnaryMath(UNARY_CODES["Erf"])
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def infer(self, ins, consts):
        if ins[0].dtype.kind != "f":
            raise self.unsupported(f"Erf of {ins[0].dtype.name} is not supported")
        return [ins[0]]

    def ref(self, x):
        return [_erf(x.astype(np.float64)).astype(x.dtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.special import erf_inplace

        def run(inputs, outputs, scratch):
            np.copyto(outputs[0], inputs[0])
            erf_inplace(outputs[0].reshape(-1))

        return Kernel(run) if ins[0].dtype == np.float32 else _numpy_kernel(lambda x: self.ref(x)[0])
