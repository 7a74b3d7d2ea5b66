"""Elementwise ops: broadcasting arithmetic (Add, Sub, Mul, Div, Mod), variadic Sum/Max/Min/Mean, and unary math
(Neg, Abs, Sqrt, Exp, Log, Reciprocal; trigonometry and Sign are in :mod:`edgedl.ops.unary_math`).

float32 runs Numba kernels (:mod:`edgedl.kernels.cpu.elementwise`): binary ops on a broadcast plan
collapsed at build time, unary ops as one flat loop. Every other dtype (int8 ... uint64, float16,
float64) runs the numpy reference, which follows the ONNX spec (integer Div truncates toward zero). Mean is
the Sum kernel followed by a division by the input count (float32); Mod runs numpy.mod / numpy.fmod.
"""
from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np

from ..ir import TensorType
from ..kernels.cpu import elementwise as K
from ..registry import Kernel, Op, ref_kernel, register
from .common import broadcast_shapes, require_dtype, same_dtype, unbroadcast

FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
NUMERIC_DTYPES = FLOAT_DTYPES + INT_DTYPES
SIGNED_DTYPES = FLOAT_DTYPES + ("int8", "int16", "int32", "int64")


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def const_operands(consts: list) -> list:
    """Per input: a flat, writeable, C-contiguous copy of a constant input that is read-only (initializers
    often are), else None. Kernels use it instead of the run-time array: Numba compiles a separate
    specialization for read-only arrays, so this keeps one compiled signature per kernel."""
    out = []
    for c in consts:
        if c is not None and not c.flags.writeable:
            out.append(np.array(c, dtype=c.dtype, order="C", copy=True).reshape(-1))
        else:
            out.append(None)
    return out


def operand(inputs: list, fixed: list, k: int) -> np.ndarray:
    f = fixed[k]
    return inputs[k].reshape(-1) if f is None else f


def _int_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C-style integer division (truncation toward zero); division by zero gives 0 like numpy."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.floor_divide(x, y)
        if np.dtype(x.dtype).kind == "u":
            return q
        r = np.remainder(x, y)
        adjust = (r != 0) & ((x < 0) ^ (y < 0))
        return (q + adjust.astype(q.dtype)).astype(x.dtype)


# --- binary --------------------------------------------------------------------------------------------
class _Binary(Op):
    """Two inputs of one dtype, numpy (multidirectional) broadcasting; opset < 7 ``broadcast``/``axis``."""

    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 2)
    code: ClassVar[int]
    ufunc: ClassVar[np.ufunc]

    def __init__(self, node, opset):
        super().__init__(node, opset)
        # opset < 7: B broadcasts to A only with broadcast=1, aligned at ``axis`` (default: trailing dims)
        self.legacy = opset < 7
        self.legacy_broadcast = int(self.attr("broadcast", 0))
        self.legacy_axis = self.attr("axis", None)

    def _shapes(self, a_shape, b_shape):
        """Effective input shapes (legacy broadcasting rewritten as numpy broadcasting)."""
        if not self.legacy:
            return a_shape, b_shape
        if not self.legacy_broadcast:
            if tuple(a_shape) != tuple(b_shape):
                raise self.error(f"shapes {tuple(a_shape)} and {tuple(b_shape)} differ and broadcast=0 "
                                 f"(opset {self.opset})")
            return a_shape, b_shape
        ra, rb = len(a_shape), len(b_shape)
        axis = ra - rb if self.legacy_axis is None else int(self.legacy_axis)
        if axis < 0:
            axis += ra
        if not 0 <= axis <= ra - rb:
            raise self.error(f"broadcast axis {self.legacy_axis} does not fit shapes {tuple(a_shape)} and "
                             f"{tuple(b_shape)}")
        b_eff = tuple(b_shape) + (1,) * (ra - axis - rb)
        for da, db in zip(a_shape[axis:], b_shape):
            if db not in (1, da):
                raise self.error(f"shape {tuple(b_shape)} cannot broadcast to {tuple(a_shape)} "
                                 f"at axis {axis}")
        return a_shape, b_eff

    def infer(self, ins, consts):
        dt = same_dtype(self, ins)
        require_dtype(self, ins[0], self.dtypes())
        a, b = self._shapes(ins[0].shape, ins[1].shape)
        return [TensorType(broadcast_shapes(self, a, b), dt)]

    def dtypes(self) -> tuple:
        return NUMERIC_DTYPES

    def compute(self, a, b):
        with np.errstate(all="ignore"):
            return self.ufunc(a, b)

    def ref(self, a, b):
        _, b_s = self._shapes(a.shape, b.shape)
        b = b.reshape(b_s)
        return [np.asarray(self.compute(a, b)).astype(a.dtype, copy=False)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        a_s, b_s = self._shapes(ins[0].shape, ins[1].shape)
        k = K.BinaryKernel(self.code, a_s, b_s, outs[0].shape)
        fixed = const_operands(consts)

        def run(inputs, outputs, scratch):
            k(operand(inputs, fixed, 0), operand(inputs, fixed, 1), _flat(outputs[0]))

        def bind(inputs, outputs, scratch, threads):
            return k.bind(operand(inputs, fixed, 0), operand(inputs, fixed, 1), _flat(outputs[0]), threads)

        return Kernel(run, bind=bind)

    def build_cuda(self, ins, outs, consts):
        from ..kernels.cuda.elementwise import BINARY_CODES

        if self.op_type not in BINARY_CODES or any(np.dtype(t.dtype) != np.float32 for t in (*ins, outs[0])):
            return None
        from ..kernels.cuda.elementwise import Binary

        a_s, b_s = self._shapes(ins[0].shape, ins[1].shape)
        k = Binary(BINARY_CODES[self.op_type], a_s, b_s, outs[0].shape)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], inputs[1], outputs[0], stream), impl="cuda")


class _LinearBinary(_Binary):
    """Add and Sub: dA = unbroadcast(dY), dB = +-unbroadcast(dY); no forward values needed."""

    grad_inputs = ()
    sign_b = 1.0

    def backward(self, grads, ins, outs, needs):
        a_t, b_t = self.in_types[0], self.in_types[1]
        _, b_s = self._shapes(a_t.shape, b_t.shape)
        g = grads[0] if grads[0] is not None else np.zeros(self.out_types[0].shape, np.float32)
        da = unbroadcast(g, a_t.shape) if needs[0] else None
        db = None
        if needs[1]:
            db = unbroadcast(g, b_s).reshape(b_t.shape)
            if self.sign_b < 0:
                db = np.negative(db)
        return [da, db]


    def backward_cuda(self, grads, ins, outs, needs, stream):
        """dA, dB: dY summed over each operand's broadcast axes on the device (B's negated for Sub)."""
        return _binary_backward_cuda(self, grads, None, None, needs, stream, self.sign_b)


def _binary_backward_cuda(op, grads, a, b, needs, stream, sign_b=1.0):
    """[dA, dB] of Add / Sub (``a``, ``b`` None) or Mul (the forward operands: dA = dY * B, dB = dY * A), each
    summed over its operand's broadcast axes (:class:`~edgedl.kernels.cuda.grad.Unbroadcast`); None unless
    float32."""
    if any(t is None or np.dtype(t.dtype) != np.float32 for t in op.in_types[:2]):
        return None
    from ..kernels.cuda import grad as G

    a_t, b_t = op.in_types[0], op.in_types[1]
    _, b_s = op._shapes(a_t.shape, b_t.shape)
    y_shape = tuple(op.out_types[0].shape)
    g = grads[0] if grads[0] is not None else G.zeros(y_shape, stream)
    res = [None, None]
    for k, (t, small, other, other_t, sign) in enumerate(((a_t, a_t.shape, b, b_s, 1.0),
                                                         (b_t, b_s, a, a_t.shape, sign_b))):
        if needs[k]:
            res[k] = G.empty(t.shape, stream)
            G.Unbroadcast(y_shape, small, other_t if other is not None else None, scale=sign)(
                g, res[k], other, stream)
    return res


@register
class Add(_LinearBinary):
    op_type = "Add"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.B_ADD
    ufunc = np.add


@register
class Sub(_LinearBinary):
    op_type = "Sub"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.B_SUB
    ufunc = np.subtract
    sign_b = -1.0


@register
class Mul(_Binary):
    op_type = "Mul"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.B_MUL
    ufunc = np.multiply

    def backward(self, grads, ins, outs, needs):
        """dA = unbroadcast(dY * B), dB = unbroadcast(dY * A)."""
        a_t, b_t = self.in_types[0], self.in_types[1]
        _, b_s = self._shapes(a_t.shape, b_t.shape)
        g = grads[0] if grads[0] is not None else np.zeros(self.out_types[0].shape, np.float32)
        a, b = ins[0], ins[1].reshape(b_s)
        da = unbroadcast(np.multiply(g, b, dtype=np.float32), a_t.shape) if needs[0] else None
        db = unbroadcast(np.multiply(g, a, dtype=np.float32), b_s).reshape(b_t.shape) if needs[1] else None
        return [da, db]

    grad_inputs = (0, 1)

    def backward_cuda(self, grads, ins, outs, needs, stream):
        return _binary_backward_cuda(self, grads, ins[0], ins[1], needs, stream)


@register
class Div(_Binary):
    op_type = "Div"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.B_DIV
    ufunc = np.divide

    def compute(self, a, b):
        if np.dtype(a.dtype).kind in "iu":
            return _int_div(a, b)
        with np.errstate(all="ignore"):
            return np.divide(a, b)


# --- variadic -----------------------------------------------------------------------------------------
class _Variadic(Op):
    """1..N inputs of one dtype, all broadcast together (opset >= 8; earlier opsets need equal shapes)."""

    kernels = {"cpu": ("float32",)}
    num_inputs = (1, 2 ** 31)
    code: ClassVar[int]
    ufunc: ClassVar[np.ufunc]

    def infer(self, ins, consts):
        if any(t is None for t in ins):
            raise self.error("inputs cannot be omitted")
        dt = same_dtype(self, ins)
        require_dtype(self, ins[0], NUMERIC_DTYPES)
        shapes = [t.shape for t in ins]
        if self.opset < 8 and len({tuple(s) for s in shapes}) > 1:
            raise self.error(f"opset {self.opset} requires equal shapes, got "
                             f"{', '.join(str(tuple(s)) for s in shapes)}")
        return [TensorType(broadcast_shapes(self, *shapes), dt)]

    def ref(self, *xs):
        shape = np.broadcast_shapes(*(x.shape for x in xs))
        with np.errstate(all="ignore"):
            res = functools.reduce(self.ufunc, xs[1:], xs[0])
        return [np.array(np.broadcast_to(res, shape), dtype=xs[0].dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        out_shape = outs[0].shape
        if len(ins) == 1:
            def run1(inputs, outputs, scratch):
                np.copyto(outputs[0], inputs[0])

            return Kernel(run1, impl="numpy")
        first = K.BinaryKernel(self.code, ins[0].shape, ins[1].shape, out_shape)
        rest = [K.BinaryKernel(self.code, out_shape, t.shape, out_shape) for t in ins[2:]]
        fixed = const_operands(consts)

        def run(inputs, outputs, scratch):
            out = _flat(outputs[0])
            first(operand(inputs, fixed, 0), operand(inputs, fixed, 1), out)
            for i, k in enumerate(rest, start=2):
                k(out, operand(inputs, fixed, i), out)  # in place: each element reads its own position

        return Kernel(run)

    def build_cuda(self, ins, outs, consts):
        from ..kernels.cuda.elementwise import BINARY_CODES, Binary

        if len(ins) != 2 or self.op_type not in BINARY_CODES or \
                any(np.dtype(t.dtype) != np.float32 for t in (*ins, outs[0])):
            return None
        k = Binary(BINARY_CODES[self.op_type], ins[0].shape, ins[1].shape, outs[0].shape)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], inputs[1], outputs[0], stream), impl="cuda")


@register
class Sum(_Variadic):
    op_type = "Sum"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.B_ADD
    ufunc = np.add


@register
class Max(_Variadic):
    op_type = "Max"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.B_MAX
    ufunc = np.maximum


@register
class Min(_Variadic):
    op_type = "Min"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.B_MIN
    ufunc = np.minimum


@register
class Mean(_Variadic):
    """The sum of the inputs (broadcast together) divided by their number; float types only."""

    op_type = "Mean"
    code = K.B_ADD
    ufunc = np.add

    def infer(self, ins, consts):
        outs = super().infer(ins, consts)
        require_dtype(self, ins[0], FLOAT_DTYPES)
        return outs

    def ref(self, *xs):
        (total,) = super().ref(*xs)
        with np.errstate(all="ignore"):
            return [(total / total.dtype.type(len(xs))).astype(xs[0].dtype)]

    def build(self, ins, outs, consts):
        total = super().build(ins, outs, consts)
        if np.dtype(ins[0].dtype) != np.float32:
            return total
        div = K.BinaryKernel(K.B_DIV, outs[0].shape, (), outs[0].shape)
        count = np.full(1, len(ins), np.float32)

        def run(inputs, outputs, scratch):
            total.fn(inputs, outputs, scratch)
            out = _flat(outputs[0])
            div(out, count, out)  # in place, as the sum

        return Kernel(run)


# --- Mod ----------------------------------------------------------------------------------------------------
@register
class Mod(_Binary):
    """Remainder with broadcasting. fmod=0: the sign of the divisor (numpy.mod, Python's %); fmod=1: the sign of
    the dividend (C fmod, numpy.fmod). Opsets 10, 13 and 28: 28 allows fmod=0 for floats and spells out numpy's
    special cases (x = +-0 gives a zero with y's sign, +-inf or a zero divisor give NaN, a finite x over +-inf
    gives x or y by sign); this op follows them at every opset. An integer divisor of 0 gives 0 (numpy; ONNX
    leaves it undefined). numpy ufuncs for every dtype, writing into the output."""

    kernels = {"cpu": ()}
    op_type = "Mod"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.fmod = int(self.attr("fmod", 0))
        if self.fmod not in (0, 1):
            raise self.error(f"fmod must be 0 or 1, got {self.fmod}")
        self.ufunc = np.fmod if self.fmod else np.mod

    def compute(self, a, b):
        with np.errstate(all="ignore"):
            return self.ufunc(a, b)

    def build(self, ins, outs, consts):
        fn = self.ufunc

        def run(inputs, outputs, scratch):
            with np.errstate(all="ignore"):
                fn(inputs[0], inputs[1], out=outputs[0])

        return Kernel(run, impl="numpy")


# --- unary --------------------------------------------------------------------------------------------
class Unary(Op):
    """One input, output of the same shape and dtype. Subclasses set ``code`` (the kernel's op code),
    ``dtypes`` (what ONNX allows) and ``compute`` (numpy); ``params`` gives the kernel's alpha, beta."""

    kernels = {"cpu": ("float32",)}
    num_inputs = (1, 1)
    code: ClassVar[int]
    dtypes: ClassVar[tuple] = FLOAT_DTYPES

    def params(self) -> tuple[float, float]:
        return 0.0, 0.0

    def infer(self, ins, consts):
        require_dtype(self, ins[0], self.dtypes)
        return [TensorType(ins[0].shape, ins[0].dtype)]

    def compute(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def ref(self, x, *rest):
        with np.errstate(all="ignore"):
            return [np.asarray(self.compute(x)).astype(x.dtype, copy=False)]

    def build_cuda(self, ins, outs, consts):
        from ..kernels.cuda.elementwise import UNARY_CODES
        from .fused import ACT_CODES

        if np.dtype(ins[0].dtype) != np.float32:
            return None
        code = ACT_CODES.get(self.op_type)
        if code:
            from ..kernels.cuda.elementwise import Activation

            k = Activation(code, *(float(v) for v in self.params()))
        elif self.op_type in UNARY_CODES:
            from ..kernels.cuda.elementwise import UnaryMath

            k = UnaryMath(UNARY_CODES[self.op_type])
        else:
            return None
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        code = self.code
        alpha, beta = (float(v) for v in self.params())

        def run(inputs, outputs, scratch):
            K.unary(code, _flat(inputs[0]), _flat(outputs[0]), alpha, beta)

        def bind(inputs, outputs, scratch, threads):
            x = inputs[0] if inputs[0].flags.writeable else inputs[0].copy()  # one compiled signature
            return K.unary_bind(code, _flat(x), _flat(outputs[0]), alpha, beta, threads)

        return Kernel(run, bind=bind)


@register
class Neg(Unary):
    op_type = "Neg"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.U_NEG
    dtypes = SIGNED_DTYPES

    def compute(self, x):
        return np.negative(x)


@register
class Abs(Unary):
    op_type = "Abs"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.U_ABS
    dtypes = NUMERIC_DTYPES

    def compute(self, x):
        return np.abs(x)


@register
class Sqrt(Unary):
    op_type = "Sqrt"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.U_SQRT

    def compute(self, x):
        return np.sqrt(x)


@register
class Exp(Unary):
    op_type = "Exp"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.U_EXP

    def compute(self, x):
        return np.exp(x)


@register
class Log(Unary):
    op_type = "Log"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.U_LOG

    def compute(self, x):
        return np.log(x)


@register
class Reciprocal(Unary):
    op_type = "Reciprocal"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    code = K.U_RECIPROCAL

    def compute(self, x):
        return np.reciprocal(x)


class _NumpyRounding(Unary):
    """Rounding ops (used by expanded quantization functions): numpy's vectorized ufuncs, no Numba kernel."""

    kernels = {"cpu": ()}

    def build(self, ins, outs, consts):
        fn = self.compute

        def run(inputs, outputs, scratch):
            fn(inputs[0], out=outputs[0])

        return Kernel(run, impl="numpy")


@register
class Round(_NumpyRounding):
    """Round half to even (ONNX Round)."""

    op_type = "Round"

    def compute(self, x, out=None):
        return np.rint(x, out=out)


@register
class Floor(_NumpyRounding):
    op_type = "Floor"

    def compute(self, x, out=None):
        return np.floor(x, out=out)


@register
class Ceil(_NumpyRounding):
    op_type = "Ceil"

    def compute(self, x, out=None):
        return np.ceil(x, out=out)
