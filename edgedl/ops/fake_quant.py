"""Fake-quantization ops of quantization-aware training (domain ``edgedl``; they never appear in a saved
model: :mod:`edgedl.train.qat` writes them back as QuantizeLinear / DequantizeLinear).

* ``FakeQuantize(x, scale, zero_point) -> (y, mask)``: an activation quantized to int8/uint8 per tensor and
  dequantized again, the same float32 arithmetic as the QDQ pair it stands for. ``mask`` (uint8) records
  where the value was not clipped; the backward passes the gradient there (straight-through estimator).
  Keeping a 1-byte mask rather than x costs a quarter of the memory of the activation.
* ``FakeQuantizeWeight(w) -> y``: a weight quantized int8 symmetric ([-127, 127]) with its scale computed
  from the current values (per channel along ``axis``, or per tensor when ``axis`` is absent), so the scales
  follow the weights as they train and match what the export writes. Its backward is the identity: the
  scale is the channel's largest magnitude, so nothing clips.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernels.cpu.fake_quant import fake_quantize, fake_quantize_grad
from ..registry import Kernel, Op, register

_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


def _scalar(op: Op, a, what: str):
    a = np.asarray(a)
    if a.size != 1:
        raise op.unsupported(f"{what} must be a scalar (per-tensor activation quantization), got shape {a.shape}")
    return a.reshape(())


@register
class FakeQuantize(Op):
    op_type = "FakeQuantize"
    domain = "edgedl"
    num_inputs = (3, 3)
    kernels = {"cpu": ("float32",)}
    grad_inputs = ()
    grad_outputs = (1,)

    def infer(self, ins, consts):
        x, scale, zp = ins
        if np.dtype(x.dtype) != np.float32 or np.dtype(scale.dtype) != np.float32:
            raise self.unsupported("fake quantization takes a float32 input and a float32 scale")
        if np.dtype(zp.dtype) not in _RANGES:
            raise self.unsupported(f"fake quantization to {np.dtype(zp.dtype).name} (int8 or uint8 only)")
        for t, what in ((scale, "scale"), (zp, "zero point")):
            if int(np.prod(t.shape, dtype=np.int64)) != 1:
                raise self.unsupported(f"{what} must be a scalar (per-tensor activation quantization), got "
                                       f"shape {tuple(t.shape)}")
        return [TensorType(tuple(x.shape), np.dtype(np.float32)), TensorType(tuple(x.shape), np.dtype(np.uint8))]

    def ref(self, x, scale, zp):
        lo, hi = _RANGES[np.dtype(zp.dtype)]
        s = np.float32(_scalar(self, scale, "scale"))
        z = np.float32(_scalar(self, zp, "zero point"))
        v = np.rint(np.asarray(x, np.float32) / s) + z
        mask = ((v >= lo) & (v <= hi)).astype(np.uint8)
        y = ((np.clip(v, np.float32(lo), np.float32(hi)) - z) * s).astype(np.float32)
        return [y, mask]

    def build(self, ins, outs, consts):
        lo, hi = _RANGES[np.dtype(ins[2].dtype)]

        def run(inputs, outputs, scratch):
            x = np.ascontiguousarray(inputs[0])
            fake_quantize(x, float(_scalar(self, inputs[1], "scale")), int(_scalar(self, inputs[2], "zero point")),
                          lo, hi, outputs[0], outputs[1])

        return Kernel(run)

    def backward(self, grads, ins, outs, needs):
        if not needs[0]:
            return [None, None, None]
        shape = tuple(self.in_types[0].shape)
        g = grads[0]
        if g is None:
            return [np.zeros(shape, np.float32), None, None]
        mask = outs[1]
        if mask is None or tuple(mask.shape) != shape or tuple(g.shape) != shape:
            raise self.error("backward needs the forward's clip mask and a gradient of the input's shape")
        return [fake_quantize_grad(g, mask), None, None]


@register
class FakeQuantizeWeight(Op):
    op_type = "FakeQuantizeWeight"
    domain = "edgedl"
    kernels = {"cpu": ("float32",)}
    grad_inputs = ()

    def infer(self, ins, consts):
        w = ins[0]
        if np.dtype(w.dtype) != np.float32:
            raise self.unsupported("weight fake quantization takes float32")
        axis = self.attr("axis")
        if axis is not None and not -len(w.shape) <= int(axis) < len(w.shape):
            raise self.error(f"axis {axis} is out of range for a weight of shape {tuple(w.shape)}")
        return [TensorType(tuple(w.shape), np.dtype(np.float32))]

    def quantized(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int | None]:
        """(int8 weight, float32 scale, axis or None): what the export writes for ``w``."""
        from ..quant.quantize_model import symmetric_int8

        axis = self.attr("axis")
        axis = None if axis is None else int(axis) % w.ndim
        q, s = symmetric_int8(np.asarray(w, np.float32), axis)
        return q, s, axis

    def ref(self, w):
        q, s, axis = self.quantized(w)
        view = [1] * q.ndim
        if axis is not None:
            view[axis] = -1
        # DequantizeLinear's float32 arithmetic: (q - 0) * s
        return [(q.astype(np.float32) * s.reshape(view)).astype(np.float32)]

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            outputs[0][...] = self.ref(inputs[0])[0]

        # NOTE: numpy: a per-channel max and a rounding of the (small) weight once per step; the float64
        # arithmetic must be the export's (quant.quantize_model.symmetric_int8) bit for bit
        return Kernel(run, impl="numpy")

    def backward(self, grads, ins, outs, needs):
        if not needs[0]:
            return [None]
        g = grads[0]
        shape = tuple(self.in_types[0].shape)
        return [np.zeros(shape, np.float32) if g is None else np.ascontiguousarray(g, np.float32)]


__all__ = ["FakeQuantize", "FakeQuantizeWeight"]
