"""QuantizeLinear and DequantizeLinear (ONNX semantics: round half to even, saturate to the integer type).

Per tensor (scalar scale), per axis (1-D scale along ``axis``) and blocked (opset 21: scale of the input's
rank, each entry covering ``block_size`` elements along ``axis``). float32 <-> int8/uint8 per tensor and per
axis run a Numba kernel over an (outer, channels, inner) view (:mod:`edgedl.kernels.cpu.quantize`); other
types (int16, uint16, int32, float16 scales) and blocked scales run the numpy reference.

The low-precision types (ml_dtypes, one byte per element in memory) run the numpy reference too:

* int4 / uint4 / int2 / uint2: ``q = clip(rint(x / scale) + zp, lo, hi)`` like the 8-bit types.
* float8 (e4m3fn, e4m3fnuz, e5m2, e5m2fnuz): ``q = RNE(x / scale + zp)``; ``saturate`` (opset 19, default
  1) clamps to the type's finite range first, else overflow becomes Inf/NaN (see gather.cast_array). The zero
  point is normally 0 (then it is not added, so -0 keeps its sign, as in onnx's reference).
* float4e2m1, float6e2m3, float6e3m2: ``q = RNE(x / scale + zp)`` clamped (they have no Inf).

Dequantize: ``y = (q - zp) * scale`` in float32, as ``output_dtype`` (opset 23+; default: the scale's
type; required with a float8e8m0 scale). QuantizeLinear's ``output_dtype`` (opset 21+) picks the quantized
type when there is no zero point (default uint8) and must match it when there is; ``precision`` (opset 23+)
is the type of the division ``x / scale`` (default float32 here, exact for float16 and bfloat16 scales).
"""
from __future__ import annotations

import numpy as np

from ..converters import onnx_proto as _pb
from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .gather import LOW_PRECISION_NAMES, cast_array, onnx_elem_dtype

#: integer types edgedl quantizes to, with their ranges
_QTYPES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.int8, np.uint8, np.int16, np.uint16,
                                                                    np.int32)}
#: the low-precision float types QuantizeLinear produces: float8 (``saturate`` applies), float4, float6
_QFLOATS: set[np.dtype] = set()
_SUB_BYTE_RANGES = {"int4": (-8, 7), "uint4": (0, 15), "int2": (-2, 1), "uint2": (0, 3)}
#: the float8 types: their zero point should be 0
_FLOAT8: set[np.dtype] = set()


def _add_low_precision() -> None:
    """Join the ml_dtypes types to the tables above (once, when a model first uses one: see load_ml_dtypes)."""
    if _FLOAT8:
        return
    _pb.load_ml_dtypes()
    for dt in _pb.LOW_PRECISION_DTYPES.values():
        if dt.name in _SUB_BYTE_RANGES:
            _QTYPES[dt] = _SUB_BYTE_RANGES[dt.name]
        elif dt.name != "float8_e8m0fnu":
            _QFLOATS.add(dt)
    _FLOAT8.update(d for d in _QFLOATS if d.name.startswith("float8"))


def _quantizable(dtype) -> bool:
    """Whether QuantizeLinear produces / DequantizeLinear reads ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.name in LOW_PRECISION_NAMES:
        _add_low_precision()
    return dtype in _QTYPES or dtype in _QFLOATS


def _is_float(dtype) -> bool:
    """float16/32/64, bfloat16 and float8e8m0 (scales)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name in ("bfloat16", "float8_e8m0fnu")


def _names(dtypes) -> str:
    return ", ".join(sorted(np.dtype(d).name for d in dtypes))


class _LinearQ(Op):
    num_inputs = (2, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis = int(self.attr("axis", 1))
        self.block_size = int(self.attr("block_size", 0))
        if self.block_size < 0:
            raise self.error(f"block_size must be >= 0, got {self.block_size}")

    def _axis(self, rank: int) -> int:
        axis = self.axis + rank if self.axis < 0 else self.axis
        if rank and not 0 <= axis < rank:
            raise self.error(f"axis {self.axis} is out of range for rank {rank}")
        return axis

    def _check_params(self, x: TensorType, scale: TensorType, zp: TensorType | None) -> None:
        """Scale (and zero point) must be a scalar, a 1-D vector along axis, or blocked along axis."""
        shape = tuple(x.shape)
        s = tuple(scale.shape)
        if zp is not None and tuple(zp.shape) != s and not (zp.size == 1 and scale.size == 1):
            raise self.error(f"zero point shape {zp.shape} differs from scale shape {s}")
        if len(s) == 0 or (len(s) == 1 and s[0] == 1 and self.block_size == 0):
            return
        axis = self._axis(len(shape))
        if self.block_size == 0:
            if len(s) != 1 or s[0] != shape[axis]:
                raise self.error(f"a per-axis scale must have shape ({shape[axis]},) for axis {axis} of input "
                                 f"{shape}, got {s}")
            return
        if len(s) != len(shape) or any(s[i] != shape[i] for i in range(len(shape)) if i != axis) or \
                s[axis] != -(-shape[axis] // self.block_size):
            raise self.error(f"a blocked scale for input {shape}, axis {axis}, block_size {self.block_size} "
                             f"must have shape with {-(-shape[axis] // self.block_size)} on the axis, got {s}")

    def _broadcast(self, param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The scale / zero point expanded to the input's shape (scalar, per axis or blocked)."""
        param = np.asarray(param)
        if param.ndim == 0 or (param.ndim == 1 and param.size == 1 and self.block_size == 0):
            return param.reshape(())
        axis = self._axis(len(shape))
        if self.block_size == 0:
            view = [1] * len(shape)
            view[axis] = param.size
            return param.reshape(view)
        return np.repeat(param, self.block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


@register
class QuantizeLinear(_LinearQ):
    op_type = "QuantizeLinear"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.saturate = bool(self.attr("saturate", 1))
        #: edgedl's "_round" attribute: "even" (ONNX), or "away" (ties away from zero: TFLite's QUANTIZE)
        rounding = self.attr("_round", "even")
        rounding = rounding.decode() if isinstance(rounding, bytes) else str(rounding)
        if rounding not in ("even", "away"):
            raise self.error(f"_round must be 'even' or 'away', got {rounding!r}")
        self.away = rounding == "away"
        out = int(self.attr("output_dtype", 0))
        self.output_dtype = onnx_elem_dtype(self, out, "output_dtype", low_precision=True) if out else None
        precision = int(self.attr("precision", 0))
        self.precision = onnx_elem_dtype(self, precision, "precision") if precision else None
        if self.precision is not None and not _is_float(self.precision):
            raise self.error(f"precision must be a float type, got {self.precision.name}")

    def _out_dtype(self, zp: TensorType | None) -> np.dtype:
        if zp is not None:
            return np.dtype(zp.dtype)
        return self.output_dtype if self.output_dtype is not None else np.dtype(np.uint8)

    def infer(self, ins, consts):
        x, scale = ins[0], ins[1]
        zp = ins[2] if len(ins) > 2 else None
        xd = np.dtype(x.dtype)
        if not (xd.kind == "f" or xd.name == "bfloat16" or xd == np.int32):
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported")
        if not _is_float(scale.dtype) and np.dtype(scale.dtype) != np.int32:
            raise self.error(f"scale must be a float tensor, got {np.dtype(scale.dtype).name}")
        qtype = self._out_dtype(zp)
        if zp is not None and self.output_dtype is not None and self.output_dtype != qtype:
            raise self.error(f"output_dtype {self.output_dtype.name} differs from the zero point's dtype {qtype.name}")
        if not _quantizable(qtype):
            _add_low_precision()
            raise self.unsupported(f"quantizing to {qtype.name} is not supported "
                                   f"({_names([*_QTYPES, *_QFLOATS])})")
        self._check_params(x, scale, zp)
        return [TensorType(tuple(x.shape), qtype)]

    def ref(self, x, scale, zp=None):
        qtype = np.dtype(zp.dtype) if zp is not None else self._out_dtype(None)
        _quantizable(qtype)  # the low-precision tables are filled
        s = self._broadcast(scale, x.shape)
        if self.precision is not None and self.precision != np.float32:
            with np.errstate(all="ignore"):
                v = np.asarray(x).astype(self.precision) / s.astype(self.precision)
        else:
            with np.errstate(all="ignore"):
                v = np.asarray(x, np.float32) / s.astype(np.float32)
        if qtype in _QTYPES:
            lo, hi = _QTYPES[qtype]
            z = 0 if zp is None else self._broadcast(zp, x.shape).astype(np.int64)
            r = np.rint(v)  # rint: ties to even
            if self.away:
                r = np.where(np.abs(v - np.trunc(v)) == 0.5, np.trunc(v) + np.sign(v), r)
            q = r.astype(np.float64) + z
            return [np.clip(q, lo, hi).astype(qtype)]
        # float8 / float4 / float6: round to nearest even in the type
        v = np.asarray(v, np.float32)
        if zp is not None:
            z = self._broadcast(zp, x.shape).astype(np.float32)
            if qtype not in _FLOAT8 or np.any(z):
                v = v + z
        return [cast_array(v, qtype, self.saturate)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.quantize import QuantizeKernel

        x, scale = ins[0], ins[1]
        qtype = np.dtype(outs[0].dtype)
        if (np.dtype(x.dtype) != np.float32 or np.dtype(scale.dtype) != np.float32 or self.block_size
                or qtype not in (np.dtype(np.int8), np.dtype(np.uint8))
                or (self.precision is not None and self.precision != np.float32)):
            return ref_kernel(self)
        k = QuantizeKernel(tuple(x.shape), self._channel_axis(x, scale), qtype, self.away)
        return _bindable(k, ins, consts)

    def build_cuda(self, ins, outs, consts):
        x, scale = ins[0], ins[1]
        qtype = np.dtype(outs[0].dtype)
        has_zero = len(ins) > 2 and ins[2] is not None
        if (np.dtype(x.dtype) != np.float32 or np.dtype(scale.dtype) != np.float32 or self.block_size
                or qtype not in (np.dtype(np.int8), np.dtype(np.uint8)) or consts[1] is None
                or (has_zero and consts[2] is None) or (self.precision is not None and self.precision != np.float32)):
            return None
        from ..kernels.cuda.quant import Quantize

        k = Quantize(tuple(x.shape), self._channel_axis(x, scale), consts[1], consts[2] if has_zero else None, qtype,
                     self.away)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def _channel_axis(self, x: TensorType, scale: TensorType) -> int | None:
        s = tuple(scale.shape)
        if len(s) == 0 or (len(s) == 1 and s[0] == 1):
            return None
        return self._axis(len(x.shape))


@register
class DequantizeLinear(_LinearQ):
    op_type = "DequantizeLinear"
    kernels = {"cpu": ("int8", "uint8"), "cuda": ("int8", "uint8")}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        out = int(self.attr("output_dtype", 0))
        self.output_dtype = onnx_elem_dtype(self, out, "output_dtype") if out else None
        if self.output_dtype is not None and not _is_float(self.output_dtype):
            raise self.error(f"output_dtype must be a float type, got {self.output_dtype.name}")

    def infer(self, ins, consts):
        x, scale = ins[0], ins[1]
        zp = ins[2] if len(ins) > 2 else None
        if not _quantizable(x.dtype):
            _add_low_precision()
            raise self.unsupported(f"dequantizing {np.dtype(x.dtype).name} is not supported "
                                   f"({_names([*_QTYPES, *_QFLOATS])})")
        if zp is not None and np.dtype(zp.dtype) != np.dtype(x.dtype):
            raise self.error(f"zero point dtype {np.dtype(zp.dtype).name} differs from input dtype "
                             f"{np.dtype(x.dtype).name}")
        if not _is_float(scale.dtype):
            raise self.error(f"scale must be a float tensor, got {np.dtype(scale.dtype).name}")
        out = self.output_dtype if self.output_dtype is not None else np.dtype(scale.dtype)
        if out.name == "float8_e8m0fnu":
            raise self.error("a float8e8m0 scale needs output_dtype (float, float16 or bfloat16)")
        self._check_params(x, scale, zp)
        return [TensorType(tuple(x.shape), out)]

    def ref(self, x, scale, zp=None):
        s = self._broadcast(scale, x.shape)
        z = np.float32(0) if zp is None else self._broadcast(zp, x.shape).astype(np.float32)
        out = self.output_dtype if self.output_dtype is not None else scale.dtype
        return [((np.asarray(x).astype(np.float32) - z) * s.astype(np.float32)).astype(out)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.quantize import DequantizeKernel

        x, scale = ins[0], ins[1]
        if (np.dtype(x.dtype) not in (np.dtype(np.int8), np.dtype(np.uint8)) or self.block_size
                or np.dtype(scale.dtype) != np.float32 or np.dtype(outs[0].dtype) != np.float32):
            return ref_kernel(self)
        s = tuple(scale.shape)
        axis = None if len(s) == 0 or (len(s) == 1 and s[0] == 1) else self._axis(len(x.shape))
        k = DequantizeKernel(tuple(x.shape), axis)
        return _bindable(k, ins, consts)

    def build_cuda(self, ins, outs, consts):
        x, scale = ins[0], ins[1]
        has_zero = len(ins) > 2 and ins[2] is not None
        if (np.dtype(x.dtype) not in (np.dtype(np.int8), np.dtype(np.uint8)) or self.block_size
                or np.dtype(scale.dtype) != np.float32 or np.dtype(outs[0].dtype) != np.float32
                or consts[1] is None or (has_zero and consts[2] is None)):
            return None
        from ..kernels.cuda.quant import Dequantize

        s = tuple(scale.shape)
        axis = None if len(s) == 0 or (len(s) == 1 and s[0] == 1) else self._axis(len(x.shape))
        k = Dequantize(tuple(x.shape), axis, consts[1], consts[2] if has_zero else None)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")


def _bindable(k, ins, consts) -> Kernel:
    """A Kernel over ``k(x, scale, zero_point or None, out)``, bound once to fixed arrays. A constant scale
    and zero point are converted once here rather than on every call."""
    has_zero = len(ins) > 2 and ins[2] is not None
    if consts[1] is not None and (not has_zero or consts[2] is not None):
        k.prepare(consts[1], consts[2] if has_zero else None)

    def run(inputs, outputs, scratch):
        zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        k(inputs[0], inputs[1], zero, outputs[0])

    def bind(inputs, outputs, scratch, threads):
        x, scale, out = inputs[0], inputs[1], outputs[0]
        zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        return lambda: k(x, scale, zero, out)

    return Kernel(run, bind=bind)


__all__ = ["QuantizeLinear", "DequantizeLinear"]
