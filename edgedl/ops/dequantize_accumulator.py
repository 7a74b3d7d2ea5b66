"""edgedl's ``DequantizeAccumulator``: ``y = float32(acc + bias) * scale + float_bias``, one pass instead of the
ops onnxruntime's dynamic quantization writes after every ConvInteger and MatMulInteger (``quantize_dynamic``:
the accumulator cast to float and multiplied by ``x_scale * w_scale``, then the float bias added; older
versions quantize the bias at run time and add it to the int32 accumulator before the Cast).

Inputs ``acc`` (int32), ``scale`` (float32), ``bias`` (int32, optional), ``float_bias`` (float32, optional);
numpy broadcasting as the ops it replaces (the int32 sum wraps as theirs does; float32 multiply, then add). Made by
:func:`edgedl.passes.fuse.fuse_integer_dequantize`. The kernel handles the shapes that pattern has (the output
the accumulator's shape, each bias a vector along the same axis or a scalar, the scale one value); anything else
runs the numpy reference.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register


def _bias_axis(acc_shape: tuple, bias_shape: tuple) -> int | None:
    """The axis of ``acc`` the bias runs along (-1: a single value), or None when it is no such vector."""
    if int(np.prod(bias_shape, dtype=np.int64)) == 1:
        return -1
    if len(bias_shape) > len(acc_shape):
        return None
    padded = (1,) * (len(acc_shape) - len(bias_shape)) + tuple(bias_shape)
    axes = [k for k, d in enumerate(padded) if d != 1]
    if len(axes) != 1 or padded[axes[0]] != acc_shape[axes[0]]:
        return None
    return axes[0]


@register
class DequantizeAccumulator(Op):
    op_type = "DequantizeAccumulator"
    domain = "edgedl"
    kernels = {"cpu": ("int32",)}
    num_inputs = (2, 4)

    def infer(self, ins, consts):
        ins = list(ins) + [None] * (4 - len(ins))
        acc, scale, bias, fbias = ins
        for t, what, dtype in ((acc, "acc", "int32"), (scale, "scale", "float32"), (bias, "bias", "int32"),
                               (fbias, "float_bias", "float32")):
            if t is not None and np.dtype(t.dtype).name != dtype:
                raise self.error(f"{what} must be {dtype}, got {np.dtype(t.dtype).name}")
        shapes = [tuple(t.shape) for t in (acc, scale, bias, fbias) if t is not None]
        try:
            out = np.broadcast_shapes(*shapes)
        except ValueError:
            raise self.error(f"acc, scale and the biases do not broadcast: {shapes}") from None
        return [TensorType(out, np.dtype(np.float32))]

    def ref(self, acc, scale, bias=None, fbias=None):
        total = acc if bias is None else np.add(acc, bias, dtype=np.int32)
        y = np.multiply(total.astype(np.float32), scale, dtype=np.float32)
        return [y if fbias is None else np.add(y, fbias, dtype=np.float32)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.quantize import accumulator_to_float

        ins = list(ins) + [None] * (4 - len(ins))
        acc_shape = tuple(ins[0].shape)
        axes = {_bias_axis(acc_shape, tuple(t.shape)) for t in ins[2:] if t is not None} - {-1}
        if (tuple(outs[0].shape) != acc_shape or None in axes or len(axes) > 1
                or int(np.prod(ins[1].shape, dtype=np.int64)) != 1):
            return ref_kernel(self)
        if not axes:
            outer, ch, inner = 1, 1, int(np.prod(acc_shape, dtype=np.int64))
        else:
            axis = axes.pop()
            outer = int(np.prod(acc_shape[:axis], dtype=np.int64))
            ch = int(acc_shape[axis])
            inner = int(np.prod(acc_shape[axis + 1:], dtype=np.int64))
        has_bias, has_fbias = ins[2] is not None, ins[3] is not None
        # an absent bias is ch zeros when the other runs along the last axis (the kernel's vector loop)
        nz = ch if inner == 1 and ch > 1 else 1
        zero_i, zero_f = np.zeros(nz, np.int32), np.zeros(nz, np.float32)

        def run(inputs, outputs, scratch):
            inputs = list(inputs) + [None] * (4 - len(inputs))
            acc = np.ascontiguousarray(inputs[0]).reshape(-1)
            bias = np.ascontiguousarray(inputs[2]).reshape(-1) if has_bias else zero_i
            fbias = np.ascontiguousarray(inputs[3]).reshape(-1) if has_fbias else zero_f
            out = outputs[0]
            target = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)
            accumulator_to_float(acc, bias, np.float32(inputs[1].reshape(-1)[0]), fbias, has_fbias,
                                 target.reshape(-1), outer, ch, inner)
            if target is not out:
                out[...] = target

        return Kernel(run)
