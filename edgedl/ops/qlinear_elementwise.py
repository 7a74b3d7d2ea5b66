"""8-bit element-wise, pooling and lookup ops: com.microsoft QLinearAdd, QLinearMul, QLinearConcat,
QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax, and
edgedl's own ``QLinearLookup`` (any element-wise float op through a 256-entry table, made by the QDQ
lowering pass). Kernels: :mod:`edgedl.kernels.cpu.qelementwise`, :mod:`.qpool`, :mod:`.lut`; references:
:mod:`edgedl.quant.reference_ops`.

Requantization modes as in :mod:`edgedl.ops.qlinear` (``_requant``; "float" = onnxruntime's formulas,
"double"/"single" = TFLite's), and a fused Relu/Clip as the ``_clamp`` output range.
"""
from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType, attr_text
from ..quant import reference_ops as R
from ..quant.requant import MODE_FLOAT, MODE_SINGLE
from ..registry import Kernel, Op, lookup, register
from .common import broadcast_shapes, normalize_axis
from .pool import _WindowPool
from .qlinear import _check_8bit, check_scale, output_bounds, requant_mode, scalar_param

MS = "com.microsoft"


def _params(op: Op, consts, ins, first: int, data_dtype, what: str):
    """(scale float32, zero point int) of inputs first, first + 1 (a missing zero point is 0)."""
    scale = scalar_param(op, consts, ins, first, f"{what}_scale")
    zp = scalar_param(op, consts, ins, first + 1, f"{what}_zero_point", data_dtype)
    check_scale(op, scale, f"{what}_scale")
    return np.float32(scale), int(zp)


def _zp_type(op: Op, ins, index: int, default) -> np.dtype:
    t = ins[index] if index < len(ins) else None
    dt = np.dtype(t.dtype) if t is not None else np.dtype(default)
    if dt not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise op.unsupported(f"zero point of input {index} must be int8 or uint8, got {dt.name}")
    return dt


def _pool_kernel(k) -> Kernel:
    """The Kernel of a prepared 8-bit pool ``k`` (:mod:`edgedl.kernels.cpu.qpool`): bound, one Numba call per
    run with every argument (workspace included) prepared once."""

    def run(inputs, outputs, scratch):
        k(inputs[0], outputs[0])

    def bind(inputs, outputs, scratch, threads):
        return k.bind(inputs[0], outputs[0], threads=threads)

    return Kernel(run, bind=bind)


def _gather_kernel(k) -> Kernel:
    """The Kernel of a prepared two-input 8-bit gather ``k`` (:mod:`edgedl.kernels.cpu.qelementwise`), reading
    inputs 0 and 3 (the QLinearAdd layout)."""

    def run(inputs, outputs, scratch):
        k(inputs[0], inputs[3], outputs[0])

    def bind(inputs, outputs, scratch, threads):
        return k.bind(inputs[0], inputs[3], outputs[0])

    return Kernel(run, bind=bind)


class _QBinaryOp(Op):
    domain = MS
    kernels = {"cpu": ("int8", "uint8"), "cuda": ("int8", "uint8")}
    num_inputs = (7, 8)
    kind = ""

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = requant_mode(self)

    def infer(self, ins, consts):
        a, b = ins[0], ins[3]
        _check_8bit(self, a, "input A")
        _check_8bit(self, b, "input B")
        out_dtype = _zp_type(self, ins, 7, a.dtype)
        return [TensorType(broadcast_shapes(self, a.shape, b.shape), out_dtype)]

    def _all(self, consts, ins, out_dtype):
        a = _params(self, consts, ins, 1, ins[0].dtype, "A")
        b = _params(self, consts, ins, 4, ins[3].dtype, "B")
        y = _params(self, consts, ins, 6, out_dtype, "C")
        lo, hi = output_bounds(self, float(y[0]), y[1], np.dtype(out_dtype), self.mode)
        return a, b, y, lo, hi

    def ref(self, a, a_s, a_z, b, b_s, b_z, y_s, y_z=None):
        arrays = [a, a_s, a_z, b, b_s, b_z, y_s, y_z]
        out_dtype = y_z.dtype if y_z is not None else a.dtype
        ins = [TensorType(v.shape, v.dtype) if v is not None else None for v in arrays]
        (asc, azp), (bsc, bzp), (ysc, yzp), lo, hi = self._all(arrays, ins, out_dtype)
        if self.mode == MODE_FLOAT:
            fn = R.qadd_onnx if self.kind == "add" else R.qmul_onnx
            y = fn(a, asc, azp, b, bsc, bzp, ysc, yzp, lo, hi)
        else:
            fn = R.qadd_tflite if self.kind == "add" else R.qmul_tflite
            y = fn(a, asc, azp, b, bsc, bzp, ysc, yzp, lo, hi, single=self.mode == MODE_SINGLE)
        return [np.asarray(y).astype(out_dtype)]

    #: a per-channel constant operand goes through one table per channel when each channel's plane holds at
    #: least this many elements (shorter planes: the per-plane call costs more than the table saves)
    TABLE_MIN_PLANE = 32

    def _constant_operand_tables(self, ins, outs, consts) -> Kernel | None:
        """With one operand a constant that varies along one axis at most (a single value: PP-LCNet's learnable
        scale and shift after every HardSwish; one per channel: a bias after a ConvTranspose), C is, plane by
        plane, a function of the other operand's byte: a 256-entry table per value of the constant, computed
        with this op's own arithmetic (:meth:`ref` on every byte), one table read per element (the LUT
        kernels) instead of a requantization. ppocr_v4_det (int8, Zen 3, 1 thread): 71 such steps took 21.7 of
        its 46 ms. None when it does not apply (two tensors, parameters computed at run time, an output larger
        than the other operand, planes under :data:`TABLE_MIN_PLANE`)."""
        out_shape = tuple(int(d) for d in outs[0].shape)
        out_size = int(np.prod(out_shape, dtype=np.int64))
        if out_size == 0 or any(consts[i] is None for i in (1, 2, 4, 5, 6)) \
                or (len(ins) > 7 and ins[7] is not None and consts[7] is None):
            return None
        for side, other in ((3, 0), (0, 3)):
            value = consts[side]
            if (value is None or consts[other] is not None or value.ndim > len(out_shape)
                    or tuple(int(d) for d in ins[other].shape) != out_shape):
                continue
            shape = (1,) * (len(out_shape) - value.ndim) + tuple(value.shape)
            axes = [k for k, d in enumerate(shape) if d != 1]
            if len(axes) > 1:
                continue
            axis = axes[0] if axes else len(out_shape)
            inner = int(np.prod(out_shape[axis + 1:], dtype=np.int64)) if axes else out_size
            if axes and inner < self.TABLE_MIN_PLANE:
                continue
            values = np.asarray(value).reshape(1, -1)  # (1, T): T = 1 or the axis' length
            codes = np.arange(256, dtype=np.uint8).view(np.dtype(ins[other].dtype)).reshape(256, 1)
            args = list(consts[:8]) + [None] * (8 - len(consts[:8]))
            args[other], args[side] = codes, values
            tables = np.broadcast_to(self.ref(*args)[0], (256, values.shape[1])).T.astype(outs[0].dtype)
            tables = np.ascontiguousarray(tables)
            from ..kernels.cpu.config import num_threads
            from ..kernels.cpu.lut import apply_table, bind_plane_tables, bind_table

            if tables.shape[0] == 1:  # one value: the plain LUT kernel (split across threads in chunks)
                table = tables[0]

                def bind_one(inputs, outputs, scratch, threads, other=other):
                    return bind_table(inputs[other], table, outputs[0])

                def run_one(inputs, outputs, scratch, other=other):
                    apply_table(inputs[other], table, outputs[0])

                return Kernel(run_one, bind=bind_one)

            def bind(inputs, outputs, scratch, threads, other=other):
                return bind_plane_tables(inputs[other], tables, outputs[0], inner, threads)

            def run(inputs, outputs, scratch, other=other):
                bind_plane_tables(inputs[other], tables, outputs[0], inner, num_threads())()

            return Kernel(run, bind=bind)
        return None

    def build(self, ins, outs, consts):
        from ..kernels.cpu.qelementwise import QBinary

        tables = self._constant_operand_tables(ins, outs, consts)
        if tables is not None:
            return tables
        (asc, azp), (bsc, bzp), (ysc, yzp), lo, hi = self._all(consts, ins, outs[0].dtype)
        return _gather_kernel(QBinary(self.kind, ins[0].shape, ins[3].shape, outs[0].shape, asc, azp, bsc, bzp, ysc,
                                      yzp, lo, hi, self.mode))

    def build_cuda(self, ins, outs, consts):
        from ..errors import EdgeDLError

        try:
            (asc, azp), (bsc, bzp), (ysc, yzp), lo, hi = self._all(consts, ins, outs[0].dtype)
        except EdgeDLError:
            return None  # quantization parameters computed at run time
        from ..kernels.cuda.quant import QBinary

        k = QBinary(self.kind, ins[0].shape, ins[3].shape, outs[0].shape, asc, azp, bsc, bzp, ysc, yzp, lo, hi,
                    self.mode)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], inputs[3], outputs[0], stream), impl="cuda")


@register
class QLinearAdd(_QBinaryOp):
    """C = A + B on 8-bit tensors (numpy broadcasting): (A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp)."""

    op_type = "QLinearAdd"
    kind = "add"


@register
class QLinearMul(_QBinaryOp):
    """C = A * B on 8-bit tensors (numpy broadcasting)."""

    op_type = "QLinearMul"
    kind = "mul"


class _QUnary(Op):
    """(X, X_scale, X_zp, Y_scale, Y_zp, ...) -> Y of X's shape."""

    domain = MS
    kernels = {"cpu": ("int8", "uint8")}
    num_inputs = (4, 5)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = requant_mode(self)

    def infer(self, ins, consts):
        _check_8bit(self, ins[0], "input X")
        return [TensorType(tuple(ins[0].shape), _zp_type(self, ins, 4, ins[0].dtype))]

    def qparams(self, consts, ins, out_dtype):
        x = _params(self, consts, ins, 1, ins[0].dtype, "X")
        y = _params(self, consts, ins, 3, out_dtype, "Y")
        lo, hi = output_bounds(self, float(y[0]), y[1], np.dtype(out_dtype), self.mode)
        return x, y, lo, hi

    def _arrays(self, arrays):
        """(consts list, TensorTypes, output dtype) for ref() calls."""
        y_z = arrays[4] if len(arrays) > 4 else None
        ins = [TensorType(v.shape, v.dtype) if v is not None else None for v in arrays]
        return list(arrays), ins, (y_z.dtype if y_z is not None else arrays[0].dtype)


class _TableOp(_QUnary):
    """An element-wise function through a 256-entry table built at prepare time."""

    def table(self, consts, ins, out_dtype) -> np.ndarray:
        raise NotImplementedError

    def ref(self, x, *rest):
        arrays, ins, out_dtype = self._arrays([x, *rest])
        table = self.table(arrays, ins, out_dtype)
        return [table[x.view(np.uint8)]]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.lut import apply_table, bind_table

        table = self.table(consts, ins, outs[0].dtype)

        def run(inputs, outputs, scratch):
            apply_table(inputs[0], table, outputs[0])

        def bind(inputs, outputs, scratch, threads):
            return bind_table(inputs[0], table, outputs[0])

        return Kernel(run, bind=bind)


def _clamped(table: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(table.astype(np.int64), lo, hi).astype(table.dtype)


@register
class QLinearSigmoid(_TableOp):
    """com.microsoft QLinearSigmoid through a 256-entry table: dequantize, sigmoid, quantize; in the fixed-point
    modes (``_requant``) TFLite's reference int8 logistic (:func:`edgedl.quant.tflite_softmax.logistic_int8`,
    output scale 1/256 and the type's minimum as zero point) fills the table."""

    op_type = "QLinearSigmoid"

    def table(self, consts, ins, out_dtype):
        from ..kernels.cpu.lut import activation_table

        (xs, xz), (ys, yz), lo, hi = self.qparams(consts, ins, out_dtype)
        if self.mode != MODE_FLOAT:
            from ..quant.tflite_softmax import logistic_int8

            if np.dtype(ins[0].dtype) != np.int8 or np.dtype(out_dtype) != np.int8 or \
                    np.float32(ys) != np.float32(1 / 256) or yz != -128:
                raise self.unsupported("TFLite's int8 logistic takes int8 in and out, output scale 1/256 and zero "
                                       "point -128")
            codes = np.arange(-128, 128, dtype=np.int8)
            t = np.empty(256, np.int8)
            t[codes.view(np.uint8)] = logistic_int8(codes, float(xs), int(xz))
            return _clamped(t, lo, hi)
        t = activation_table("Sigmoid", None, None, xs, xz, ys, yz, ins[0].dtype, out_dtype, "even", "float32")
        return _clamped(t, lo, hi)


@register
class QLinearLeakyRelu(_TableOp):
    op_type = "QLinearLeakyRelu"

    def table(self, consts, ins, out_dtype):
        from ..kernels.cpu.lut import activation_table

        (xs, xz), (ys, yz), lo, hi = self.qparams(consts, ins, out_dtype)
        alpha = float(self.attr("alpha", 0.01))
        t = activation_table("LeakyRelu", alpha, None, xs, xz, ys, yz, ins[0].dtype, out_dtype, "even", "float32")
        return _clamped(t, lo, hi)


@register
class QLinearLookup(_TableOp):
    """edgedl's 8-bit element-wise op: ``y = Q(f(DQ(x)))`` for the float op named by the ``function``
    attribute (its other attributes and constant inputs 5... are the float op's), through a 256-entry
    table computed with the float op's own numpy reference. Made by the QDQ lowering pass for Sigmoid,
    Tanh, HardSwish, HardSigmoid, Elu, Gelu, ... Rounding: half to even in float mode (ONNX
    QuantizeLinear), half away from zero in the fixed modes (TFLite)."""

    op_type = "QLinearLookup"
    domain = "edgedl"
    num_inputs = (5, 8)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        fn = self.attr("function")
        if isinstance(fn, bytes):
            fn = fn.decode()
        cls = lookup(fn, "") if fn else None
        if cls is None:
            raise self.unsupported(f"function {fn!r} is not an element-wise op edgedl has")
        attrs = {k: v for k, v in node.attrs.items() if k != "function" and not k.startswith("_")}
        self.float_node = Node(fn, f"{node.name}/{fn}", ["x", *node.inputs[5:]], ["y"], attrs)
        self.float_op = cls(self.float_node, opset)

    def table(self, consts, ins, out_dtype):
        from ..kernels.cpu.lut import build_table

        (xs, xz), (ys, yz), lo, hi = self.qparams(consts, ins, out_dtype)
        if self.attr("_tflite") is not None:
            return _clamped(self._tflite_table(ins, out_dtype, xs, xz, ys, yz), lo, hi)
        extra = list(consts[5:])
        if any(v is None for v in extra):
            raise self.error("the float function's extra inputs must be constants")
        x_t = TensorType((256,), np.dtype(np.float32))
        self.float_op.infer([x_t] + [TensorType(v.shape, v.dtype) for v in extra], [None] + extra)

        def fn(v):
            return self.float_op.ref(np.asarray(v, np.float32), *extra)[0].astype(v.dtype)

        if self.mode == MODE_FLOAT:
            t = build_table(fn, xs, xz, ys, yz, ins[0].dtype, out_dtype, "even", "float32")
        else:
            t = build_table(fn, xs, xz, ys, yz, ins[0].dtype, out_dtype, "away", "float64")
        return _clamped(t, lo, hi)

    def _tflite_table(self, ins, out_dtype, xs, xz, ys, yz) -> np.ndarray:
        """The table of the TFLite int8 operator named by ``_tflite`` (:mod:`edgedl.quant.tflite_tables`: its
        arithmetic, not the float function's, which stays for export and training)."""
        from ..quant.tflite_tables import unary_table

        name = attr_text(self.attr("_tflite"))
        if np.dtype(ins[0].dtype) != np.int8 or np.dtype(out_dtype) != np.int8:
            raise self.unsupported(f"TFLite's {name} table maps int8 to int8")
        options = {}
        if name == "LEAKY_RELU":
            options["alpha"] = float(self.attr("alpha", 0.01))
        elif name == "GELU":
            options["approximate"] = attr_text(self.attr("approximate", "none")) == "tanh"
        try:
            return unary_table(name, xs, xz, ys, yz, **options)
        except ValueError as e:
            raise self.unsupported(str(e)) from None


#: edgedl.QLinearBinary's functions -> the TFLite int8 operator whose arithmetic its table follows
TFLITE_PAIRS = {"Sub": "SUB", "Div": "DIV", "SquaredDifference": "SQUARED_DIFFERENCE", "PRelu": "PRELU",
                "Max": "MAXIMUM", "Min": "MINIMUM"}


@register
class QLinearBinary(_QBinaryOp):
    """edgedl's int8 operator of two int8 tensors (numpy broadcasting), laid out as QLinearAdd
    (A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp), through a 65536-entry table of every input pair
    computed at prepare time with TFLite's integer arithmetic for ``function`` (Sub, Div, SquaredDifference,
    PRelu with B the slopes, Max, Min: :data:`TFLITE_PAIRS`, :mod:`edgedl.quant.tflite_tables`). Made by the .tflite
    importer; the TFLite requantization mode (``_requant`` "double") is required."""

    op_type = "QLinearBinary"
    domain = "edgedl"
    kernels = {"cpu": ("int8",)}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.function = attr_text(self.attr("function", ""))
        if self.function not in TFLITE_PAIRS:
            raise self.unsupported(f"function {self.function!r} is not one of {sorted(TFLITE_PAIRS)}")
        if self.mode == MODE_FLOAT or self.mode == MODE_SINGLE:
            raise self.unsupported("QLinearBinary follows TFLite's double-rounding arithmetic (_requant 'double')")

    def pair_table(self, consts, ins, out_dtype) -> np.ndarray:
        from ..quant.tflite_tables import pair_table

        if {np.dtype(ins[0].dtype), np.dtype(ins[3].dtype), np.dtype(out_dtype)} != {np.dtype(np.int8)}:
            raise self.unsupported("the inputs and the output must be int8")
        (asc, azp), (bsc, bzp), (ysc, yzp), lo, hi = self._all(consts, ins, out_dtype)
        return pair_table(TFLITE_PAIRS[self.function], asc, azp, bsc, bzp, ysc, yzp, lo, hi)

    def ref(self, a, a_s, a_z, b, b_s, b_z, y_s, y_z=None):
        arrays = [a, a_s, a_z, b, b_s, b_z, y_s, y_z]
        ins = [TensorType(v.shape, v.dtype) if v is not None else None for v in arrays]
        table = self.pair_table(arrays, ins, y_z.dtype if y_z is not None else a.dtype)
        a8, b8 = np.broadcast_arrays(a.view(np.uint8).astype(np.int64), b.view(np.uint8).astype(np.int64))
        return [table[(a8 << 8) | b8]]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.qelementwise import QTableBinary

        return _gather_kernel(QTableBinary(self.pair_table(consts, ins, outs[0].dtype), ins[0].shape, ins[3].shape,
                                           outs[0].shape))

    def build_cuda(self, ins, outs, consts):
        return None  # a host step


@register
class QLinearSoftmax(_QUnary):
    """com.microsoft QLinearSoftmax: dequantize, softmax in float32 along ``axis``, quantize (round half to
    even). (onnxruntime builds a table of exponentials; results can differ by 1 LSB near ties.) In the fixed-point
    modes (``_requant``): TFLite's reference int8 softmax (:mod:`edgedl.quant.tflite_softmax`; edgedl's ``_beta``
    scales the input), which needs the last axis and TFLite's output quantization."""

    op_type = "QLinearSoftmax"
    kernels = {"cpu": ("int8", "uint8")}

    def infer(self, ins, consts):
        out = super().infer(ins, consts)
        self.axis = normalize_axis(self, int(self.attr("axis", -1)), len(ins[0].shape))
        return out

    def ref(self, x, *rest):
        arrays, ins, out_dtype = self._arrays([x, *rest])
        (xs, xz), (ys, yz), lo, hi = self.qparams(arrays, ins, out_dtype)
        if self.mode != MODE_FLOAT:  # TFLite's reference int8 softmax (fixed point), along the last axis
            from ..quant.tflite_softmax import softmax_int8

            if not self.attr("_log") and (self.axis != x.ndim - 1 or np.float32(ys) != np.float32(1 / 256) or
                                          yz != np.iinfo(out_dtype).min):
                raise self.unsupported("TFLite's int8 softmax runs along the last axis with output scale 1/256 and "
                                       "the type's minimum as zero point")
            if self.attr("_log"):  # TFLite's reference int8 LOG_SOFTMAX
                return [self._log_softmax(x, xs, xz, ys, yz, out_dtype)]
            return [softmax_int8(x, float(xs), float(self.attr("_beta", 1.0)), out_dtype)]
        f = (x.astype(np.float32) - np.float32(xz)) * xs
        if int(self.attr("opset", 13)) < 13:  # softmax over the flattened trailing axes
            shape = f.shape
            f2 = f.reshape(int(np.prod(shape[:self.axis], dtype=np.int64)), -1)
            e = np.exp(f2 - f2.max(axis=1, keepdims=True))
            p = (e / e.sum(axis=1, keepdims=True)).reshape(shape)
        else:
            e = np.exp(f - f.max(axis=self.axis, keepdims=True))
            p = e / e.sum(axis=self.axis, keepdims=True)
        q = np.rint(p.astype(np.float32) / ys) + yz
        return [np.clip(q, lo, hi).astype(out_dtype)]

    def _log_softmax(self, x, xs, xz, ys, yz, out_dtype) -> np.ndarray:
        from ..quant.tflite_log_softmax import OUTPUT_SCALE, OUTPUT_ZERO_POINT, log_softmax_int8

        if self.axis != x.ndim - 1 or np.dtype(out_dtype) != np.int8 or x.dtype != np.int8 or \
                np.float32(ys) != np.float32(OUTPUT_SCALE) or yz != OUTPUT_ZERO_POINT:
            raise self.unsupported("TFLite's int8 log-softmax runs along the last axis on int8, with output scale "
                                   "16/256 and zero point 127")
        try:
            return log_softmax_int8(x, float(xs), int(xz))
        except ValueError as e:  # a row TFLite's int32 sum overflows on
            raise self.error(str(e)) from None

    def build(self, ins, outs, consts):
        (xs, _), (ys, yz), _, _ = self.qparams(consts, ins, outs[0].dtype)  # validate at prepare time
        if self.mode != MODE_FLOAT and not self.attr("_log") and self.axis == len(ins[0].shape) - 1 and \
                np.float32(ys) == np.float32(1 / 256) and yz == np.iinfo(outs[0].dtype).min:
            from ..kernels.cpu.softmax_i8 import TFLiteSoftmax

            k = TFLiteSoftmax(float(xs), float(self.attr("_beta", 1.0)))
            return Kernel(lambda inputs, outputs, scratch: k(inputs[0], outputs[0]))

        def run(inputs, outputs, scratch):
            outputs[0][...] = self.ref(*inputs)[0]

        return Kernel(run, impl="numpy")


@register
class QLinearConcat(Op):
    """(Y_scale, Y_zp, X1, X1_scale, X1_zp, X2, ...) with ``axis``: every input requantized to the output's
    parameters (a table per input; a plain copy where the parameters are equal), then concatenated."""

    op_type = "QLinearConcat"
    domain = MS
    kernels = {"cpu": ()}  # numpy: a table lookup and a strided copy per input
    num_inputs = (5, 2 + 3 * 1024)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = requant_mode(self)
        if (len(node.inputs) - 2) % 3:
            raise self.error(f"takes Y_scale, Y_zero_point and triples (X, X_scale, X_zero_point), got "
                             f"{len(node.inputs)} inputs")

    def infer(self, ins, consts):
        xs = ins[2::3]
        for k, t in enumerate(xs):
            _check_8bit(self, t, f"input {k}")
        rank = len(xs[0].shape)
        self.axis = normalize_axis(self, int(self.attr("axis", 0)), rank)
        for t in xs[1:]:
            if len(t.shape) != rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, xs[0].shape))
                                           if i != self.axis):
                raise self.error(f"inputs {[t.shape for t in xs]} differ outside axis {self.axis}")
        shape = list(xs[0].shape)
        shape[self.axis] = sum(t.shape[self.axis] for t in xs)
        return [TensorType(tuple(shape), _zp_type(self, ins, 1, xs[0].dtype))]

    def tables(self, consts, ins, out_dtype):
        from ..kernels.cpu.lut import requant_table

        ys, yz = _params(self, consts, ins, 0, out_dtype, "Y")
        tables = []
        for k in range(2, len(ins), 3):
            xs, xz = _params(self, consts, ins, k + 1, ins[k].dtype, f"X{(k - 2) // 3}")
            same = xs == ys and xz == yz and np.dtype(ins[k].dtype) == np.dtype(out_dtype)
            tables.append(None if same else requant_table(xs, xz, ys, yz, ins[k].dtype, out_dtype, self.mode))
        return tables

    def _concat(self, tables, inputs, out):
        outer = int(np.prod(out.shape[:self.axis], dtype=np.int64))
        o = out.reshape(outer, -1)
        off = 0
        for table, x in zip(tables, inputs[2::3]):
            xv = x.reshape(outer, -1)
            width = xv.shape[1]
            o[:, off:off + width] = xv if table is None else table[xv.view(np.uint8)]
            off += width
        return out

    def ref(self, *arrays):
        ins = [TensorType(v.shape, v.dtype) if v is not None else None for v in arrays]
        out_dtype = arrays[1].dtype if arrays[1] is not None else arrays[2].dtype
        shape = list(arrays[2].shape)
        shape[self.axis] = sum(a.shape[self.axis] for a in arrays[2::3])
        return [self._concat(self.tables(list(arrays), ins, out_dtype), arrays, np.empty(shape, out_dtype))]

    def build(self, ins, outs, consts):
        tables = self.tables(consts, ins, outs[0].dtype)

        def run(inputs, outputs, scratch):
            self._concat(tables, inputs, outputs[0])

        return Kernel(run, impl="numpy")


@register
class QLinearGlobalAveragePool(_QUnary):
    """com.microsoft QLinearGlobalAveragePool (channels_last 0: NC...; 1: N...C). In the fixed-point modes
    edgedl's ``_mean`` attribute picks TFLite's arithmetic: "optimized" (default: the optimized MEAN kernel, what a
    converted GlobalAveragePool runs) or "reference" (the reference kernel's: an imported TFLite MEAN)."""

    op_type = "QLinearGlobalAveragePool"
    kernels = {"cpu": ("int8", "uint8"), "cuda": ("int8", "uint8")}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        mean = self.attr("_mean", "optimized")
        mean = mean.decode() if isinstance(mean, bytes) else str(mean)
        if mean not in ("optimized", "reference"):
            raise self.error(f"_mean must be 'optimized' or 'reference', got {mean!r}")
        self.reference_mean = mean == "reference"

    def infer(self, ins, consts):
        x = ins[0]
        _check_8bit(self, x, "input X")
        if len(x.shape) < 3:
            raise self.error(f"input must be (N, C, spatial...), got {x.shape}")
        self.channels_last = int(self.attr("channels_last", 0))
        if self.channels_last:
            shape = (x.shape[0],) + (1,) * (len(x.shape) - 2) + (x.shape[-1],)
        else:
            shape = tuple(x.shape[:2]) + (1,) * (len(x.shape) - 2)
        return [TensorType(shape, _zp_type(self, ins, 4, x.dtype))]

    def ref(self, x, *rest):
        arrays, ins, out_dtype = self._arrays([x, *rest])
        (xs, xz), (ys, yz), lo, hi = self.qparams(arrays, ins, out_dtype)
        nchw = np.moveaxis(x, -1, 1) if self.channels_last else x
        n, c = nchw.shape[:2]
        flat = nchw.reshape(n, c, -1)
        fn = R.qglobal_avgpool_onnx if self.mode == MODE_FLOAT else \
            R.qglobal_avgpool_tflite_reference if self.reference_mean else R.qglobal_avgpool_tflite
        kw = {} if self.mode == MODE_FLOAT else {"single": self.mode == MODE_SINGLE}
        y = np.asarray(fn(flat.reshape(n, c, flat.shape[2], 1), xs, xz, ys, yz, lo, hi, **kw)).reshape(n, c)
        out_shape = self.infer([TensorType(x.shape, x.dtype)] + ins[1:], [None] * len(ins))[0].shape
        y = y.reshape((n,) + (1,) * (x.ndim - 2) + (c,)) if self.channels_last else y.reshape(out_shape)
        return [y.astype(out_dtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.qpool import QGlobalAvgPool

        (xs, xz), (ys, yz), lo, hi = self.qparams(consts, ins, outs[0].dtype)
        if self.channels_last:
            def run(inputs, outputs, scratch):
                outputs[0][...] = self.ref(*inputs)[0]

            return Kernel(run, impl="numpy")
        x = ins[0]
        n, c = x.shape[:2]
        hw = int(np.prod(x.shape[2:], dtype=np.int64))
        k = QGlobalAvgPool(n, c, hw, xs, xz, ys, yz, lo, hi, self.mode, self.reference_mean)
        return _pool_kernel(k)

    def build_cuda(self, ins, outs, consts):
        from ..errors import EdgeDLError

        if self.channels_last:
            return None
        try:
            (xs, xz), (ys, yz), lo, hi = self.qparams(consts, ins, outs[0].dtype)
        except EdgeDLError:
            return None
        from ..kernels.cuda.quant import QGlobalAverage

        x = ins[0]
        k = QGlobalAverage(x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64)), xs, xz, ys, yz, lo, hi,
                           self.mode, self.reference_mean)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")


@register
class QLinearAveragePool(_WindowPool):
    """com.microsoft QLinearAveragePool (2-D, NCHW): (X, x_scale, x_zp, y_scale, y_zp) with AveragePool's
    attributes."""

    op_type = "QLinearAveragePool"
    domain = MS
    kernels = {"cpu": ("int8", "uint8")}
    num_inputs = (4, 5)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = requant_mode(self)
        self.count_include_pad = int(self.attr("count_include_pad", 0))
        if int(self.attr("channels_last", 0)):
            raise self.unsupported("channels_last=1 is not supported")

    qparams = _QUnary.qparams

    def infer(self, ins, consts):
        x = ins[0]
        _check_8bit(self, x, "input X")
        if len(x.shape) != 4:
            raise self.unsupported(f"only 2-D pooling (NCHW input) is supported, got shape {x.shape}")
        _, out, _ = self.geometry(x)
        return [TensorType(tuple(x.shape[:2]) + tuple(out), _zp_type(self, ins, 4, x.dtype))]

    def ref(self, x, *rest):
        arrays = [x, *rest]
        y_z = arrays[4] if len(arrays) > 4 else None
        out_dtype = y_z.dtype if y_z is not None else x.dtype
        ins = [TensorType(v.shape, v.dtype) if v is not None else None for v in arrays]
        (xs, xz), (ys, yz), lo, hi = self.qparams(arrays, ins, out_dtype)
        _, out, pads = self.geom
        if self.mode == MODE_FLOAT:
            y = R.qavgpool2d_onnx(x, self.kernel_shape, pads, self.strides, out, self.count_include_pad, xs, xz, ys,
                                  yz, lo, hi)
        else:
            y = R.qavgpool2d_tflite(x, self.kernel_shape, pads, self.strides, out, self.count_include_pad, xs, xz,
                                    ys, yz, lo, hi, single=self.mode == MODE_SINGLE)
        return [np.asarray(y).astype(out_dtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.qpool import QAvgPool2d

        if list(self.dilations) != [1, 1]:
            raise self.unsupported("dilated average pooling is not supported")
        (xs, xz), (ys, yz), lo, hi = self.qparams(consts, ins, outs[0].dtype)
        _, out, pads = self.geom
        k = QAvgPool2d(ins[0].shape, self.kernel_shape, pads, self.strides, out, self.count_include_pad, xs, xz, ys,
                       yz, lo, hi, self.mode)
        return _pool_kernel(k)


__all__ = ["QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool",
           "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearLookup"]
