"""Gather, Cast, ConstantOfShape and Constant.

Gather runs a Numba kernel for every dtype (raw bits through a same-size unsigned view) that checks the
indices at run time when they are not constants: an index outside ``[-dim, dim)`` raises EdgeDLError, it is
never read. Cast and ConstantOfShape are numpy one-liners writing straight into the preallocated output.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu.gather import gather
from ..kernels.cpu.layout import bits_view
from ..registry import Kernel, Op, register
from .common import const_ints, normalize_axis
from .layout import ALL_DTYPES

#: ONNX TensorProto element types edgedl has numpy dtypes for
ONNX_TO_NUMPY = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}
#: element types that exist in ONNX but not in edgedl
ONNX_UNSUPPORTED = {
    8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ",
    19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1", 24: "FLOAT8E8M0",
    25: "UINT2", 26: "INT2",
}


def onnx_elem_dtype(op: Op, code, what: str) -> np.dtype:
    """numpy dtype of an ONNX element type code (an int or a name such as "FLOAT")."""
    if isinstance(code, str):
        names = {np.dtype(v).name: k for k, v in ONNX_TO_NUMPY.items()}
        onnx_names = {"FLOAT": 1, "UINT8": 2, "INT8": 3, "UINT16": 4, "INT16": 5, "INT32": 6, "INT64": 7,
                      "BOOL": 9, "FLOAT16": 10, "DOUBLE": 11, "UINT32": 12, "UINT64": 13}
        key = code.upper()
        if key in onnx_names:
            code = onnx_names[key]
        elif code in names:
            code = names[code]
        else:
            raise op.unsupported(f"{what} {code} is not a supported element type")
    code = int(code)
    if code in ONNX_TO_NUMPY:
        return np.dtype(ONNX_TO_NUMPY[code])
    if code in ONNX_UNSUPPORTED:
        raise op.unsupported(f"{what} {ONNX_UNSUPPORTED[code]} is not supported (no numpy dtype in edgedl)")
    raise op.error(f"{what} {code} is not a valid ONNX element type")


# --------------------------------------------------------------------------------------------------------
@register
class Gather(Op):
    op_type = "Gather"
    kernels = {"cpu": ALL_DTYPES}
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", 0))

    def _axis(self, data_shape) -> int:
        if len(data_shape) == 0:
            raise self.error("cannot gather from a scalar (rank-0 data)")
        return normalize_axis(self, self.axis_attr, len(data_shape))

    def _check(self, idx: np.ndarray, dim: int) -> None:
        bad = (idx < -dim) | (idx >= dim)
        if bad.any():
            pos = np.unravel_index(int(np.argmax(bad)), idx.shape)
            raise self.error(f"index {int(idx[pos])} at position {tuple(int(p) for p in pos)} is out of range "
                             f"for an axis of size {dim} (valid: [{-dim}, {dim - 1}])", EdgeDLError)

    def infer(self, ins, consts):
        data, ind = ins[0], ins[1]
        axis = self._axis(data.shape)
        if np.dtype(ind.dtype).name not in ("int32", "int64"):
            raise self.error(f"indices must be int32 or int64, got {np.dtype(ind.dtype).name}")
        if consts[1] is not None:
            self._check(consts[1], data.shape[axis])
        shape = tuple(data.shape[:axis]) + tuple(ind.shape) + tuple(data.shape[axis + 1:])
        return [TensorType(shape, data.dtype)]

    def ref(self, data, indices):
        axis = self._axis(data.shape)
        self._check(indices, data.shape[axis])
        return [np.take(data, indices.astype(np.int64), axis=axis)]

    def build(self, ins, outs, consts):
        data = ins[0]
        axis = self._axis(data.shape)
        dim = data.shape[axis]
        outer = int(np.prod(data.shape[:axis], dtype=np.int64))
        inner = int(np.prod(data.shape[axis + 1:], dtype=np.int64))
        const_idx = None if consts[1] is None else np.ascontiguousarray(consts[1].reshape(-1), np.int64)
        if np.dtype(data.dtype).itemsize not in (1, 2, 4, 8):
            def run_np(inputs, outputs, scratch):
                outputs[0][...] = self.ref(inputs[0], inputs[1])[0]
            return Kernel(run_np, impl="numpy")

        def run(inputs, outputs, scratch):
            idx = const_idx if const_idx is not None else inputs[1].reshape(-1)
            bad = gather(bits_view(inputs[0]), idx, bits_view(outputs[0]), outer, dim, inner)
            if bad >= 0:
                self._check(inputs[1], dim)  # raises with the position and value
                raise self.error(f"index out of range for an axis of size {dim}", EdgeDLError)

        return Kernel(run)


# --------------------------------------------------------------------------------------------------------
@register
class Cast(Op):
    op_type = "Cast"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        to = self.attr("to")
        if to is None:
            raise self.error("needs a 'to' attribute")
        self.to = onnx_elem_dtype(self, to, "target type")
        # 'saturate' (opset 19) only matters for float8 targets, which edgedl does not have

    def infer(self, ins, consts):
        return [TensorType(ins[0].shape, self.to)]

    def ref(self, x):
        with np.errstate(all="ignore"):  # NaN/Inf/out-of-range to int: undefined in ONNX, no warning here
            return [x.astype(self.to)]

    def build(self, ins, outs, consts):
        # NOTE: numpy's casting loops are vectorized C; copyto writes into the preallocated output.
        def run(inputs, outputs, scratch):
            with np.errstate(all="ignore"):
                np.copyto(outputs[0], inputs[0], casting="unsafe")

        return Kernel(run, impl="numpy")


# --------------------------------------------------------------------------------------------------------
@register
class ConstantOfShape(Op):
    op_type = "ConstantOfShape"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        value = self.attr("value")
        if value is None:
            value = np.zeros(1, np.float32)
        value = np.asarray(value)
        if value.size != 1:
            raise self.error(f"attribute value must hold one element, got shape {value.shape}")
        self.value = value.reshape(-1)[0]
        self.dtype = value.dtype

    def _shape(self, consts) -> tuple[int, ...]:
        shape = const_ints(self, consts, 0, "shape")
        if any(d < 0 for d in shape):
            raise self.error(f"shape {shape} has a negative dimension")
        return tuple(shape)

    def infer(self, ins, consts):
        if len(ins[0].shape) != 1:
            raise self.error(f"the shape input must be 1-D, got shape {ins[0].shape}")
        return [TensorType(self._shape(consts), self.dtype)]

    def ref(self, shape):
        return [np.full(self._shape([shape]), self.value, self.dtype)]

    def build(self, ins, outs, consts):
        value = self.value

        def run(inputs, outputs, scratch):
            outputs[0].fill(value)

        return Kernel(run, impl="numpy")


# --------------------------------------------------------------------------------------------------------
@register
class Constant(Op):
    """The importer turns Constant nodes into initializers; this class serves hand-built graphs."""

    op_type = "Constant"
    num_inputs = (0, 0)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        a = node.attrs
        if "value" in a:
            self.value = np.asarray(a["value"])
        elif "value_float" in a:
            self.value = np.array(a["value_float"], np.float32)
        elif "value_floats" in a:
            self.value = np.array(a["value_floats"], np.float32)
        elif "value_int" in a:
            self.value = np.array(a["value_int"], np.int64)
        elif "value_ints" in a:
            self.value = np.array(a["value_ints"], np.int64)
        elif "value_string" in a or "value_strings" in a:
            raise self.unsupported("string constants are not supported")
        elif "sparse_value" in a:
            raise self.unsupported("sparse constants are not supported")
        else:
            raise self.error("needs a value attribute (value, value_float(s) or value_int(s))")
        self.value = np.ascontiguousarray(self.value)

    def infer(self, ins, consts):
        return [TensorType(self.value.shape, self.value.dtype)]

    def ref(self):
        return [self.value]


__all__ = ["ONNX_TO_NUMPY", "Cast", "Constant", "ConstantOfShape", "Gather", "onnx_elem_dtype"]
