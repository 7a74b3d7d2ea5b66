"""QuantizeLinear and DequantizeLinear (ONNX semantics: round half to even, saturate to the integer type).

Per tensor (scalar scale), per axis (1-D scale along ``axis``) and blocked (opset 21: scale of the input's
rank, each entry covering ``block_size`` elements along ``axis``). float32 <-> int8/uint8 per tensor and per
axis run a Numba kernel over an (outer, channels, inner) view (:mod:`edgedl.kernels.cpu.quantize`); other
types (int16, uint16, int32, float16 scales) and blocked scales run the numpy reference.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register

#: integer types edgedl quantizes to, with their ranges
_QTYPES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.int8, np.uint8, np.int16, np.uint16,
                                                                    np.int32)}


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
    kernels = {"cpu": ("float32",)}

    def _out_dtype(self, zp: TensorType | None) -> np.dtype:
        if zp is not None:
            return np.dtype(zp.dtype)
        out = self.attr("output_dtype", 0)
        if out:
            from ..converters.onnx_proto import tensor_dtype_to_np_dtype  # not onnx.helper: no onnx import

            return tensor_dtype_to_np_dtype(int(out))
        return np.dtype(np.uint8)

    def infer(self, ins, consts):
        x, scale = ins[0], ins[1]
        zp = ins[2] if len(ins) > 2 else None
        if np.dtype(x.dtype).kind != "f" and np.dtype(x.dtype) != np.int32:
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported")
        qtype = self._out_dtype(zp)
        if qtype not in _QTYPES:
            raise self.unsupported(f"quantizing to {qtype.name} is not supported (int8, uint8, int16, uint16, "
                                   "int32)")
        self._check_params(x, scale, zp)
        return [TensorType(tuple(x.shape), qtype)]

    def ref(self, x, scale, zp=None):
        qtype = np.dtype(zp.dtype) if zp is not None else self._out_dtype(None)
        lo, hi = _QTYPES[qtype]
        s = self._broadcast(scale, x.shape).astype(np.float32)
        z = 0 if zp is None else self._broadcast(zp, x.shape).astype(np.int64)
        q = np.rint(np.asarray(x, np.float32) / s).astype(np.float64) + z  # rint: ties to even
        return [np.clip(q, lo, hi).astype(qtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.quantize import QuantizeKernel

        x, scale = ins[0], ins[1]
        qtype = np.dtype(outs[0].dtype)
        if (np.dtype(x.dtype) != np.float32 or np.dtype(scale.dtype) != np.float32 or self.block_size
                or qtype not in (np.dtype(np.int8), np.dtype(np.uint8))):
            return ref_kernel(self)
        k = QuantizeKernel(tuple(x.shape), self._channel_axis(x, scale), qtype)
        return _bindable(k, ins, consts)

    def _channel_axis(self, x: TensorType, scale: TensorType) -> int | None:
        s = tuple(scale.shape)
        if len(s) == 0 or (len(s) == 1 and s[0] == 1):
            return None
        return self._axis(len(x.shape))


@register
class DequantizeLinear(_LinearQ):
    op_type = "DequantizeLinear"
    kernels = {"cpu": ("int8", "uint8")}

    def infer(self, ins, consts):
        x, scale = ins[0], ins[1]
        zp = ins[2] if len(ins) > 2 else None
        if np.dtype(x.dtype) not in _QTYPES:
            raise self.unsupported(f"dequantizing {np.dtype(x.dtype).name} is not supported (int8, uint8, int16, "
                                   "uint16, int32)")
        if zp is not None and np.dtype(zp.dtype) != np.dtype(x.dtype):
            raise self.error(f"zero point dtype {np.dtype(zp.dtype).name} differs from input dtype "
                             f"{np.dtype(x.dtype).name}")
        if np.dtype(scale.dtype).kind != "f":
            raise self.error(f"scale must be a float tensor, got {np.dtype(scale.dtype).name}")
        self._check_params(x, scale, zp)
        return [TensorType(tuple(x.shape), np.dtype(scale.dtype))]

    def ref(self, x, scale, zp=None):
        s = self._broadcast(scale, x.shape)
        z = np.float32(0) if zp is None else self._broadcast(zp, x.shape).astype(np.float32)
        return [((np.asarray(x).astype(np.float32) - z) * s.astype(np.float32)).astype(scale.dtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.quantize import DequantizeKernel

        x, scale = ins[0], ins[1]
        if (np.dtype(x.dtype) not in (np.dtype(np.int8), np.dtype(np.uint8)) or self.block_size
                or np.dtype(scale.dtype) != np.float32):
            return ref_kernel(self)
        s = tuple(scale.shape)
        axis = None if len(s) == 0 or (len(s) == 1 and s[0] == 1) else self._axis(len(x.shape))
        k = DequantizeKernel(tuple(x.shape), axis)
        return _bindable(k, ins, consts)


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
