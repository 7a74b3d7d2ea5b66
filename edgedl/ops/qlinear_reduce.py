"""edgedl's ``QLinearReduce``: an int8 reduction (mean, sum, product) with TFLite's integer arithmetic, what an
imported full-integer TFLite MEAN / SUM / REDUCE_PROD runs. (x, x_scale, x_zp, y_scale, y_zp) -> y; attributes
``function`` (ReduceMean, ReduceSum, ReduceProd), ``axes``, ``keepdims``. int8 REDUCE_MAX / REDUCE_MIN need
nothing of the kind: they pick codes.

* ReduceMean: TFLite's reference ``QuantizedMeanOrSum``: the int32 sum of the codes minus ``x_zp * count``,
  requantized by :func:`edgedl.quant.fixed_point.tflite_mean_multiplier` (double rounding), plus ``y_zp``.
* ReduceSum: TFLite's optimized int8 SUM (float32: ``round_away(sum * s + bias) + y_zp`` with
  ``s = x_scale / y_scale`` and ``bias = -x_zp * s * count``). Its reference kernel reads int8 data as uint8 (the
  interpreter's BUILTIN_REF results are not the sums of the real values), so the optimized one is the reference.
* ReduceProd: TFLite's reference ``QuantizedReduceProd``: the elements of each output are folded in row-major
  order of the reduced axes (TFLite's memory order: the importer keeps the TFLite layout), each product of the
  running value and ``x - x_zp`` rescaled by the 64-bit ``MultiplyByQuantizedMultiplier`` with the multiplier of
  ``x_scale / y_scale ** (1 / count)``; the last value once more, plus ``y_zp``.

The kernel is the numpy reference (reductions are rare and small in int8 models).
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType, attr_text
from ..quant.fixed_point import quantize_multiplier, tflite_mean_multiplier
from ..quant.reference import mbqm, round_half_away
from ..quant.requant import MODE_FLOAT
from ..registry import Kernel, Op, register
from .common import normalize_axis
from .qlinear import _check_8bit, requant_mode
from .qlinear_elementwise import _params

FUNCTIONS = ("ReduceMean", "ReduceSum", "ReduceProd")


def _mbqm64(x: np.ndarray, m0: int, shift: int) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier of an int64 value: the multiplier cut to 16 bits, one rounding."""
    reduced = (m0 + (1 << 15)) >> 16 if m0 < 0x7FFF0000 else 0x7FFF
    total = 15 - shift
    r = (np.asarray(x, np.int64) * reduced + (1 << (total - 1))) >> total
    return ((r + (1 << 31)) % (1 << 32)) - (1 << 31)  # the int32 it is stored in


@register
class QLinearReduce(Op):
    op_type = "QLinearReduce"
    domain = "edgedl"
    kernels = {"cpu": ("int8",)}
    num_inputs = (5, 5)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.function = attr_text(self.attr("function", ""))
        if self.function not in FUNCTIONS:
            raise self.unsupported(f"function {self.function!r} is not one of {FUNCTIONS}")
        if requant_mode(self) == MODE_FLOAT:
            raise self.unsupported("QLinearReduce follows TFLite's arithmetic (_requant 'double')")
        self.keepdims = bool(int(self.attr("keepdims", 1)))

    def infer(self, ins, consts):
        x = ins[0]
        _check_8bit(self, x, "input X")
        if np.dtype(x.dtype) != np.int8:
            raise self.unsupported("int8 input and output only")
        axes = self.attr("axes")
        rank = len(x.shape)
        self.axes = sorted({normalize_axis(self, int(a), rank) for a in axes}) if axes else list(range(rank))
        shape = [1 if a in self.axes else d for a, d in enumerate(x.shape)] if self.keepdims else \
            [d for a, d in enumerate(x.shape) if a not in self.axes]
        self.count = int(np.prod([x.shape[a] for a in self.axes], dtype=np.int64))
        if self.count < 1:
            raise self.unsupported("a reduction over no elements")
        return [TensorType(tuple(shape), np.dtype(np.int8))]

    def ref(self, x, xs, xz, ys, yz):
        arrays = [x, xs, xz, ys, yz]
        ins = [TensorType(v.shape, v.dtype) for v in arrays]
        out_t = self.infer(ins, arrays)[0]
        (xs, xz), (ys, yz) = _params(self, arrays, ins, 1, x.dtype, "X"), _params(self, arrays, ins, 3, np.int8, "Y")
        kept = [a for a in range(x.ndim) if a not in self.axes]
        # (outputs, count): each output's elements in row-major order of the reduced axes
        rows = np.transpose(x, kept + self.axes).reshape(-1, self.count).astype(np.int64)
        if self.function == "ReduceMean":
            m0, shift = tflite_mean_multiplier(xs, ys, self.count)
            y = mbqm(rows.sum(axis=1) - xz * self.count, m0, shift) + yz
        elif self.function == "ReduceSum":
            f32 = np.float32
            s = f32(f32(xs) / f32(ys))
            bias = f32(f32(f32(-xz) * s) * f32(self.count))
            total = rows.sum(axis=1)
            y = round_half_away((total.astype(f32) * s + bias).astype(f32)).astype(np.int64) + yz
        else:
            m0, shift = quantize_multiplier(float(np.float64(np.float32(xs)) /
                                                  np.float64(np.float32(ys)) ** (1.0 / self.count)))
            acc = rows[:, 0] - xz
            for k in range(1, self.count):
                acc = _mbqm64(acc * (rows[:, k] - xz), m0, shift)
            y = _mbqm64(acc, m0, shift) + yz
        return [np.clip(y, -128, 127).astype(np.int8).reshape(out_t.shape)]

    def build(self, ins, outs, consts):
        for i in range(1, 5):
            if consts[i] is None:
                raise self.error("the quantization parameters must be constants")

        def run(inputs, outputs, scratch):
            outputs[0][...] = self.ref(*inputs)[0]

        return Kernel(run, impl="numpy")
