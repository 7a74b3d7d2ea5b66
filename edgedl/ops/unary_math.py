"""Unary math: trigonometric and hyperbolic functions (Sin, Cos, Tan, Asin, Acos, Atan, Sinh, Cosh, Asinh, Acosh,
Atanh), Sign, and the float tests IsInf and IsNaN.

Sin and Cos on float32 run the vectorizable Numba kernels of :mod:`edgedl.kernels.cpu.elementwise` (a quadrant
reduction by pi/2 in three parts, Taylor polynomials on [-pi/4, pi/4], about 1 ulp; libm above |x| = 8192;
rotary position embeddings compute them). Everything else runs numpy's ufuncs straight into the preallocated
output (vectorized C loops): the inverse and hyperbolic functions, every float16 / float64 input, Sign of every
numeric dtype (-1, 0, 1; NaN stays NaN), IsInf (``detect_negative`` / ``detect_positive``, both 1 by default)
and IsNaN (bool outputs). Out-of-domain inputs (Asin(2), Acosh(0), Atanh(1)) give NaN or inf as in numpy.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..ir import TensorType
from ..kernels.cpu import elementwise as K
from ..registry import Kernel, Op, register
from .common import require_dtype
from .elementwise import FLOAT_DTYPES, NUMERIC_DTYPES, Unary


class _Ufunc(Unary):
    """A unary op computed by one numpy ufunc into the output, for every dtype (no Numba kernel)."""

    kernels = {"cpu": ()}
    ufunc: ClassVar[np.ufunc]

    def compute(self, x):
        return self.ufunc(x)

    def build(self, ins, outs, consts):
        fn = self.ufunc

        def run(inputs, outputs, scratch):
            with np.errstate(all="ignore"):
                fn(inputs[0], out=outputs[0])

        return Kernel(run, impl="numpy")


class _Trig(Unary):
    """Sin / Cos: a Numba kernel for float32 (reference in float64), numpy's ufunc for float16 / float64."""

    ufunc: ClassVar[np.ufunc]

    def compute(self, x):
        return self.ufunc(np.asarray(x, np.float64))

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) == np.float32:
            return super().build(ins, outs, consts)
        fn = self.ufunc

        def run(inputs, outputs, scratch):
            with np.errstate(all="ignore"):
                fn(inputs[0], out=outputs[0])

        return Kernel(run, impl="numpy")


@register
class Sin(_Trig):
    op_type = "Sin"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.U_SIN
    ufunc = np.sin


@register
class Cos(_Trig):
    op_type = "Cos"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.U_COS
    ufunc = np.cos


def _ufunc_op(name: str, ufunc: np.ufunc, dtypes: tuple = FLOAT_DTYPES) -> type[Op]:
    cls = type(name, (_Ufunc,), {"op_type": name, "ufunc": ufunc, "dtypes": dtypes,
                                 "__doc__": f"{name}: numpy.{ufunc.__name__} into the output."})
    cls.__module__ = __name__
    return register(cls)


Tan = _ufunc_op("Tan", np.tan)
Asin = _ufunc_op("Asin", np.arcsin)
Acos = _ufunc_op("Acos", np.arccos)
Atan = _ufunc_op("Atan", np.arctan)
Sinh = _ufunc_op("Sinh", np.sinh)
Cosh = _ufunc_op("Cosh", np.cosh)
Asinh = _ufunc_op("Asinh", np.arcsinh)
Acosh = _ufunc_op("Acosh", np.arccosh)
Atanh = _ufunc_op("Atanh", np.arctanh)
Sign = _ufunc_op("Sign", np.sign, NUMERIC_DTYPES)


class _FloatTest(Op):
    """A float input, a bool output of the same shape."""

    kernels = {"cpu": ()}

    def infer(self, ins, consts):
        require_dtype(self, ins[0], FLOAT_DTYPES)
        return [TensorType(ins[0].shape, np.dtype(bool))]

    def build(self, ins, outs, consts):
        test = self._test

        def run(inputs, outputs, scratch):
            test(inputs[0], outputs[0])

        return Kernel(run, impl="numpy")

    def ref(self, x):
        out = np.empty(x.shape, bool)
        self._test(x, out)
        return [out]

    def _test(self, x: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError


@register
class IsNaN(_FloatTest):
    op_type = "IsNaN"

    def _test(self, x, out):
        np.isnan(x, out=out)


@register
class IsInf(_FloatTest):
    """True at +inf (``detect_positive``, default 1) and at -inf (``detect_negative``, default 1)."""

    op_type = "IsInf"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.negative = bool(int(self.attr("detect_negative", 1)))
        self.positive = bool(int(self.attr("detect_positive", 1)))

    def _test(self, x, out):
        if self.negative and self.positive:
            np.isinf(x, out=out)
        elif self.positive:
            np.isposinf(x, out=out)
        elif self.negative:
            np.isneginf(x, out=out)
        else:
            out[...] = False


__all__ = ["Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Sign",
           "IsNaN", "IsInf"]
