"""Bitwise ops on integer tensors: BitShift, BitwiseAnd, BitwiseOr, BitwiseXor, BitwiseNot, and BitCast.

* BitwiseAnd / Or / Xor (opset 18): numpy broadcasting, both inputs of one integer dtype; BitwiseNot: ~x.
* BitShift (opsets 11 and 28): X shifted by Y (one unsigned or signed integer dtype, broadcast together),
  ``direction`` "LEFT" or "RIGHT". Right shifts of signed X are arithmetic (sign-extending); left shifts of
  signed X shift the bits (two's complement, what moves past the sign bit is lost). A shift amount that is
  negative or at least the bit width gives what the sign fill alone gives: -1 for a right shift of a negative X,
  0 otherwise (opset 28's rule; opset 11 left it undefined and allowed unsigned types only, which this follows
  too).
* BitCast (opset 26): the same bytes read as the ``to`` type (little endian, as numpy on every supported host),
  which must have the input's bit width; the output has the input's shape. Bytes cast to bool must be 0 or 1
  (others are not a bool: a run-time error).

numpy ufuncs for every dtype, writing into the preallocated output (no Numba kernels: none of these is on a hot
path).
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..registry import Kernel, Op, register
from .common import broadcast_shapes, require_dtype, same_dtype
from .elementwise import INT_DTYPES
from .gather import onnx_elem_dtype


class _BitwiseBinary(Op):
    kernels = {"cpu": ()}
    num_inputs = (2, 2)
    ufunc: ClassVar[np.ufunc]

    def infer(self, ins, consts):
        dt = same_dtype(self, ins)
        require_dtype(self, ins[0], INT_DTYPES)
        return [TensorType(broadcast_shapes(self, ins[0].shape, ins[1].shape), dt)]

    def ref(self, a, b):
        return [np.asarray(self.ufunc(a, b), dtype=a.dtype)]

    def build(self, ins, outs, consts):
        fn = self.ufunc

        def run(inputs, outputs, scratch):
            fn(inputs[0], inputs[1], out=outputs[0])

        return Kernel(run, impl="numpy")


@register
class BitwiseAnd(_BitwiseBinary):
    op_type = "BitwiseAnd"
    ufunc = np.bitwise_and


@register
class BitwiseOr(_BitwiseBinary):
    op_type = "BitwiseOr"
    ufunc = np.bitwise_or


@register
class BitwiseXor(_BitwiseBinary):
    op_type = "BitwiseXor"
    ufunc = np.bitwise_xor


@register
class BitwiseNot(Op):
    op_type = "BitwiseNot"
    kernels = {"cpu": ()}

    def infer(self, ins, consts):
        require_dtype(self, ins[0], INT_DTYPES)
        return [TensorType(ins[0].shape, ins[0].dtype)]

    def ref(self, x):
        return [np.invert(x)]

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            np.invert(inputs[0], out=outputs[0])

        return Kernel(run, impl="numpy")


@register
class BitShift(Op):
    op_type = "BitShift"
    kernels = {"cpu": ()}
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        direction = self.attr("direction")
        if isinstance(direction, bytes):
            direction = direction.decode()
        if direction not in ("LEFT", "RIGHT"):
            raise self.error(f"direction must be 'LEFT' or 'RIGHT', got {direction!r}")
        self.left = direction == "LEFT"

    def infer(self, ins, consts):
        dt = same_dtype(self, ins)
        require_dtype(self, ins[0], INT_DTYPES)
        return [TensorType(broadcast_shapes(self, ins[0].shape, ins[1].shape), dt)]

    def ref(self, x, y):
        out = np.empty(np.broadcast_shapes(x.shape, y.shape), x.dtype)
        self._shift(x, y, out)
        return [out]

    def _shift(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        dt = x.dtype
        bits = dt.itemsize * 8
        valid = (y >= 0) & (y < bits) if dt.kind == "i" else y < bits
        amount = np.where(valid, y, 0).astype(dt, copy=False)
        if self.left:
            unsigned = np.dtype(f"u{dt.itemsize}")
            # shift the bit pattern (a signed left shift that overflows is undefined in C, not here)
            np.left_shift(x.view(unsigned), amount.view(unsigned), out=out.view(unsigned))
            np.copyto(out, 0, where=~valid)
        else:
            np.right_shift(x, amount, out=out)  # arithmetic for signed dtypes
            if dt.kind == "i":
                np.copyto(out, np.where(x < 0, dt.type(-1), dt.type(0)), where=~valid)
            else:
                np.copyto(out, 0, where=~valid)

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            self._shift(inputs[0], inputs[1], outputs[0])

        return Kernel(run, impl="numpy")


_BITCAST_DTYPES = INT_DTYPES + ("float16", "float32", "float64", "bool")


@register
class BitCast(Op):
    op_type = "BitCast"
    kernels = {"cpu": ()}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        to = self.attr("to")
        if to is None:
            raise self.error("needs a 'to' attribute")
        self.to = onnx_elem_dtype(self, to, "target type")

    def infer(self, ins, consts):
        require_dtype(self, ins[0], _BITCAST_DTYPES)
        if self.to.name not in _BITCAST_DTYPES:
            raise self.unsupported(f"target type {self.to.name} is not supported")
        src = np.dtype(ins[0].dtype)
        if src.itemsize != self.to.itemsize:
            raise self.error(f"{src.name} ({src.itemsize * 8} bits) and {self.to.name} ({self.to.itemsize * 8} "
                             "bits) differ in width")
        return [TensorType(ins[0].shape, self.to)]

    def _view(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        if self.to == np.bool_ and x.dtype != np.bool_:
            raw = x.view(np.uint8)
            if raw.size and int(raw.max()) > 1:
                raise EdgeDLError(f"{self.node.describe()}: byte value {int(raw.max())} is not a bool (0 or 1)")
        return x.view(self.to)

    def ref(self, x):
        return [self._view(x).copy()]

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            np.copyto(outputs[0], self._view(inputs[0]))

        return Kernel(run, impl="numpy")


__all__ = ["BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitShift", "BitCast"]
