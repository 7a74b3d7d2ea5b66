"""Gather, GatherElements, GatherND, Cast, ConstantOfShape and Constant.

* Gather: ``out[o, k..., i] = data[o, idx[k...], i]`` on the (outer, dim, inner) view around the axis.
* GatherElements (opset 11, 13): ``out[p] = data[p with p[axis] replaced by idx[p]]``; indices have the
  data's rank and, off the axis, dims no larger than the data's (as onnxruntime requires).
* GatherND (opset 11; ``batch_dims`` from 12): with b = batch_dims and q = indices.shape[-1],
  ``out[B..., K...] = data[B..., idx[B..., K..., :]]`` where the index tuple picks the slice
  ``data.shape[b + q:]``; out.shape = indices.shape[:-1] + data.shape[b + q:].

All three run Numba kernels for every dtype (raw bits through a same-size unsigned view) that check the
indices at run time when they are not constants: an index outside ``[-dim, dim)`` (negative ones wrap once)
raises EdgeDLError, it is never read. Cast and ConstantOfShape are numpy one-liners writing straight into the
preallocated output.

Cast covers the low-precision element types (ml_dtypes: float8 e4m3fn/e4m3fnuz/e5m2/e5m2fnuz/e8m0, float6,
float4e2m1, int4/uint4, int2/uint2; see :func:`cast_array`): to float8 with ``saturate`` (opset 19, default 1)
``y = RNE(clip(x, -max, max))``, without it ``RNE(x)`` with overflow to Inf/NaN; to float8e8m0
``y = 2**(e + r)`` from x's float32 exponent e, r per ``round_mode`` (opset 24). Every other op but the layout
ops rejects these types (:func:`reject_low_precision`, for the planner).

Backward (training): Gather and GatherElements scatter-add the output gradient into a zero gradient of the
data (float32 Numba kernels, serial in index order: duplicates accumulate in one fixed order); indices take no
gradient.
"""
from __future__ import annotations

import functools

import numpy as np

from ..converters import onnx_proto as _pb
from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu.gather import (
    check_indices,
    check_nd_indices,
    gather,
    gather_add,
    gather_elements,
    gather_nd_copy,
    nd_offsets,
)
from ..kernels.cpu.layout import bits_view
from ..registry import Kernel, Op, ref_kernel, register
from .common import const_ints, normalize_axis
from .layout import ALL_DTYPES, bound_copies

#: ONNX TensorProto element type names (fixed by the ONNX standard)
ONNX_TYPE_NAMES = {
    1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL",
    10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16",
    17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4",
    23: "FLOAT4E2M1", 24: "FLOAT8E8M0", 25: "UINT2", 26: "INT2", 27: "FLOAT6E2M3", 28: "FLOAT6E3M2",
}
#: the numpy names of the low-precision element types (8-, 6-, 4- and 2-bit floats and integers, ml_dtypes
#: types): only the quantization boundary takes them (see LOW_PRECISION_OPS)
LOW_PRECISION_NAMES = _pb.LOW_PRECISION_NAMES
#: element types that exist in ONNX but not in edgedl
ONNX_UNSUPPORTED = {code: name for code, name in ONNX_TYPE_NAMES.items()
                    if code == _pb.STRING or (code not in _pb.DTYPES and code not in _pb.ML_CODES)}


def numeric_dtype(code: int) -> np.dtype | None:
    """numpy dtype of a numeric ONNX element type code (strings excluded), None for others."""
    return None if code == _pb.STRING else _pb.element_dtype(code)
#: ops that compute on the low-precision types (Cast, CastLike, QuantizeLinear, DequantizeLinear) and those
#: that only move their bytes (shape and layout ops, Gather); every other op rejects them
LOW_PRECISION_OPS = frozenset({
    "Cast", "CastLike", "QuantizeLinear", "DequantizeLinear",
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Size", "Concat", "Split",
    "Slice", "Gather", "Expand", "Tile", "If", "Loop", "Scan",
})


def is_low_precision(dtype) -> bool:
    """Whether ``dtype`` is one of the low-precision element types (float8, float6, float4, int4, int2...)."""
    return dtype is not None and np.dtype(dtype).name in LOW_PRECISION_NAMES


def reject_low_precision(op: Op, ins, outs) -> None:
    """UnsupportedOpError when an op outside LOW_PRECISION_OPS takes or produces a low-precision tensor
    (for the planner, after ``infer``: those types only appear at casts and quantization boundaries)."""
    if op.domain in ("", "ai.onnx") and op.op_type in LOW_PRECISION_OPS:
        return
    for kind, types in (("input", ins), ("output", outs)):
        for k, t in enumerate(types or ()):
            dtype = getattr(t, "dtype", None)
            if isinstance(t, TensorType) and is_low_precision(dtype):
                raise op.unsupported(f"{kind} {k} has the low-precision element type {np.dtype(dtype).name}, "
                                     "which only Cast, CastLike, QuantizeLinear, DequantizeLinear and layout ops "
                                     "take")


def onnx_elem_dtype(op: Op, code, what: str, low_precision: bool = False) -> np.dtype:
    """numpy dtype of an ONNX element type code (an int or a name such as "FLOAT").

    The low-precision types (float8, int4, ...) only where ``low_precision`` is set (casts, quantization):
    elsewhere they are UnsupportedOpError."""
    if isinstance(code, str):
        _pb.load_ml_dtypes()
        names = {np.dtype(v).name: k for k, v in _pb.ELEMENT_DTYPES.items() if k != _pb.STRING}
        onnx_names = {name: k for k, name in ONNX_TYPE_NAMES.items()}
        key = code.upper()
        if key in onnx_names:
            code = onnx_names[key]
        elif code in names:
            code = names[code]
        else:
            raise op.unsupported(f"{what} {code} is not a supported element type")
    code = int(code)
    dtype = numeric_dtype(code)
    if dtype is not None and (low_precision or dtype.name not in LOW_PRECISION_NAMES):
        return np.dtype(dtype)
    if code in ONNX_TYPE_NAMES:
        raise op.unsupported(f"{what} {ONNX_TYPE_NAMES[code]} is not supported here")
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

        bind = None
        if const_idx is not None and const_idx.size and bool(((const_idx >= -dim) & (const_idx < dim)).all()):
            first = int(const_idx[0]) % dim
            if np.array_equal(const_idx % dim, np.arange(first, first + const_idx.size)):
                # constant indices of one ascending run (a state tensor's row, x[..., 2:5]): a strided copy
                n = const_idx.size
                bind = bound_copies(lambda i, o: [(o[0].reshape(outer, n, inner),
                                                   i[0].reshape(outer, dim, inner)[:, first:first + n])])
            else:
                def bind(inputs, outputs, scratch, threads):  # indices checked here, once
                    x, o = inputs[0], outputs[0]
                    if not (x.flags.c_contiguous and o.flags.c_contiguous):
                        return None
                    return functools.partial(gather, bits_view(x), const_idx, bits_view(o), outer, dim, inner)

        return Kernel(run, bind=bind)

    # --- training -----------------------------------------------------------------------------------------
    grad_inputs = (1,)

    def backward(self, grads, ins, outs, needs):
        """d data[o, j, i] = sum over k with idx[k] == j (wrapped) of d out[o, k, i]."""
        if not needs[0]:
            return [None, None]
        shape = tuple(self.in_types[0].shape)
        axis = self._axis(shape)
        dim = shape[axis]
        idx = np.ascontiguousarray(ins[1].reshape(-1))
        self._check(ins[1], dim)
        res = np.zeros(shape, np.float32)
        if grads[0] is not None and res.size:
            outer = int(np.prod(shape[:axis], dtype=np.int64))
            inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
            g = np.ascontiguousarray(grads[0], np.float32).reshape(-1)
            gather_add(g, idx, res.reshape(-1), outer, dim, inner)
        return [res, None]


def _index_error(op: Op, idx: np.ndarray, pos: int, dim: int) -> EdgeDLError:
    where = tuple(int(p) for p in np.unravel_index(pos, idx.shape)) if idx.ndim else ()
    return op.error(f"index {int(idx.reshape(-1)[pos])} at position {where} is out of range for an axis of size "
                    f"{dim} (valid: [{-dim}, {dim - 1}])", EdgeDLError)


def _check_flat(op: Op, idx: np.ndarray, dim: int) -> None:
    """EdgeDLError naming the first index outside [-dim, dim)."""
    flat = np.ascontiguousarray(idx).reshape(-1)
    if flat.dtype.kind not in "iu":
        raise op.error(f"indices must be integers, got {flat.dtype}")
    if flat.size:
        bad = check_indices(flat.astype(np.int64, copy=False), dim)
        if bad >= 0:
            raise _index_error(op, idx, bad, dim)


def elements_layout(data_shape, idx_shape, axis) -> tuple[np.ndarray, int, int, int]:
    """The (outer, ka, inner) split of an index tensor around ``axis`` for GatherElements / ScatterElements:
    (base, ka, inner, stride) where base[o * inner + i] is the flat data offset of element (o, 0, i) and
    stride the data's stride along the axis (in elements)."""
    rank = len(data_shape)
    strides = [1] * rank
    for d in range(rank - 2, -1, -1):
        strides[d] = strides[d + 1] * int(data_shape[d + 1])
    base = np.zeros((), np.int64)
    for d in range(rank):
        if d != axis:
            base = np.add.outer(base, np.arange(int(idx_shape[d]), dtype=np.int64) * strides[d])
    inner = int(np.prod(idx_shape[axis + 1:], dtype=np.int64))
    return np.ascontiguousarray(base.reshape(-1)), int(idx_shape[axis]), inner, strides[axis]


def check_elements_shapes(op: Op, data, ind, axis_attr: int, what: str = "indices") -> int:
    """Shared rule of GatherElements / ScatterElements: the axis, integer indices of the data's rank whose
    dims off the axis do not exceed the data's. Returns the normalized axis."""
    if len(data.shape) == 0:
        raise op.error("data must have rank >= 1")
    axis = normalize_axis(op, axis_attr, len(data.shape))
    if np.dtype(ind.dtype).name not in ("int32", "int64"):
        raise op.error(f"{what} must be int32 or int64, got {np.dtype(ind.dtype).name}")
    if len(ind.shape) != len(data.shape):
        raise op.error(f"{what} have rank {len(ind.shape)}, data rank {len(data.shape)}: they must be equal")
    for d, (a, b) in enumerate(zip(ind.shape, data.shape)):
        if d != axis and a > b:
            raise op.error(f"{what} shape {tuple(ind.shape)} exceeds the data shape {tuple(data.shape)} in dim {d} "
                           f"(only the axis {axis} may be larger)")
    return axis


def elements_index(idx: np.ndarray, axis: int, dim: int) -> tuple:
    """numpy advanced index of GatherElements / ScatterElements: the wrapped indices on the axis, positions
    elsewhere."""
    grids = list(np.indices(idx.shape, sparse=True))
    grids[axis] = np.where(idx < 0, idx.astype(np.int64) + dim, idx.astype(np.int64))
    return tuple(grids)


# --------------------------------------------------------------------------------------------------------
@register
class GatherElements(Op):
    op_type = "GatherElements"
    kernels = {"cpu": ALL_DTYPES}
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", 0))

    def infer(self, ins, consts):
        data, ind = ins
        axis = check_elements_shapes(self, data, ind, self.axis_attr)
        if consts[1] is not None:
            _check_flat(self, consts[1], data.shape[axis])
        return [TensorType(tuple(ind.shape), data.dtype)]

    def ref(self, data, indices):
        axis = normalize_axis(self, self.axis_attr, data.ndim)
        _check_flat(self, indices, data.shape[axis])
        if indices.size == 0:
            return [np.empty(indices.shape, data.dtype)]
        return [np.ascontiguousarray(data[elements_index(indices, axis, data.shape[axis])])]

    def build(self, ins, outs, consts):
        data, ind = ins
        axis = normalize_axis(self, self.axis_attr, len(data.shape))
        dim = int(data.shape[axis])
        if np.dtype(data.dtype).itemsize not in (1, 2, 4, 8):
            return ref_kernel(self)
        base, ka, inner, stride = elements_layout(data.shape, ind.shape, axis)

        def run(inputs, outputs, scratch):
            idx = inputs[1].reshape(-1)
            bad = gather_elements(bits_view(np.ascontiguousarray(inputs[0])), idx, base, bits_view(outputs[0]), ka,
                                  inner, dim, stride)
            if bad >= 0:
                raise _index_error(self, inputs[1], bad, dim)

        return Kernel(run)

    grad_inputs = (1,)

    def backward(self, grads, ins, outs, needs):
        """d data = zeros, then d data[index of p] += d out[p] (a ScatterElements add)."""
        if not needs[0]:
            return [None, None]
        from ..kernels.cpu.scatter import RED_ADD, scatter_elements

        shape = tuple(self.in_types[0].shape)
        axis = normalize_axis(self, self.axis_attr, len(shape))
        idx = ins[1]
        _check_flat(self, idx, shape[axis])
        res = np.zeros(shape, np.float32)
        if grads[0] is not None and idx.size:
            base, ka, inner, stride = elements_layout(shape, idx.shape, axis)
            g = np.ascontiguousarray(grads[0], np.float32).reshape(-1)
            scatter_elements(res.reshape(-1), np.ascontiguousarray(idx).reshape(-1), g, base, ka, inner,
                             shape[axis], stride, RED_ADD)
        return [res, None]


# --------------------------------------------------------------------------------------------------------
@register
class GatherND(Op):
    op_type = "GatherND"
    kernels = {"cpu": ALL_DTYPES}
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.batch_dims = int(self.attr("batch_dims", 0))
        if self.batch_dims and opset < 12:
            raise self.error(f"attribute batch_dims needs opset 12, the model has opset {opset}")
        if self.batch_dims < 0:
            raise self.error(f"batch_dims must not be negative, got {self.batch_dims}")

    def _layout(self, dshape, ishape):
        b = self.batch_dims
        r, q = len(dshape), len(ishape)
        if r < 1 or q < 1:
            raise self.error(f"data and indices must have rank >= 1, got ranks {r} and {q}")
        if b >= min(r, q):
            raise self.error(f"batch_dims {b} must be smaller than the ranks of data ({r}) and indices ({q})")
        if tuple(dshape[:b]) != tuple(ishape[:b]):
            raise self.error(f"the first {b} (batch) dims of data {tuple(dshape)} and indices {tuple(ishape)} differ")
        last = int(ishape[-1])
        if last > r - b:
            raise self.error(f"indices.shape[-1] = {last} exceeds the data rank minus batch_dims ({r} - {b})")
        return b, last

    def infer(self, ins, consts):
        data, ind = ins
        if np.dtype(ind.dtype).name not in ("int32", "int64"):
            raise self.error(f"indices must be int64 (or int32), got {np.dtype(ind.dtype).name}")
        b, last = self._layout(data.shape, ind.shape)
        if consts[1] is not None:
            self._check(consts[1], data.shape)
        return [TensorType(tuple(ind.shape[:-1]) + tuple(data.shape[b + last:]), data.dtype)]

    def _check(self, idx, dshape):
        b, last = self.batch_dims, idx.shape[-1]
        if idx.size == 0:
            return
        dims = np.array(dshape[b:b + last], np.int64)
        flat = np.ascontiguousarray(idx.reshape(-1, last))
        if flat.size:
            bad = check_nd_indices(flat, dims)
            if bad >= 0:
                t = bad % last
                pos = tuple(int(p) for p in np.unravel_index(bad, idx.shape))
                raise self.error(f"index {int(flat.reshape(-1)[bad])} at position {pos} is out of range for data "
                                 f"dim {b + t} of size {int(dims[t])}", EdgeDLError)

    def ref(self, data, indices):
        b, last = self._layout(data.shape, indices.shape)
        self._check(indices, data.shape)
        out_shape = tuple(indices.shape[:-1]) + tuple(data.shape[b + last:])
        nb = int(np.prod(data.shape[:b], dtype=np.int64))
        d = data.reshape((nb,) + tuple(data.shape[b:]))
        ind = indices.astype(np.int64).reshape(nb, int(np.prod(indices.shape[b:-1], dtype=np.int64)), last)
        dims = np.array(data.shape[b:b + last], np.int64)
        ind = np.where(ind < 0, ind + dims, ind)
        batch = np.broadcast_to(np.arange(nb)[:, None], ind.shape[:2])
        picked = d[(batch,) + tuple(ind[..., t] for t in range(last))]
        return [np.ascontiguousarray(picked.reshape(out_shape))]

    def build(self, ins, outs, consts):
        data, ind = ins
        if np.dtype(data.dtype).itemsize not in (1, 2, 4, 8):
            return ref_kernel(self)
        b, last = self._layout(data.shape, ind.shape)
        nb = int(np.prod(data.shape[:b], dtype=np.int64))
        rest = tuple(int(v) for v in data.shape[b:])
        strides = [1] * len(rest)
        for d in range(len(rest) - 2, -1, -1):
            strides[d] = strides[d + 1] * rest[d + 1]
        dims = np.array(rest[:last], np.int64)
        tstrides = np.array(strides[:last], np.int64)
        batch_stride = int(np.prod(rest, dtype=np.int64))
        slice_size = int(np.prod(rest[last:], dtype=np.int64))
        rows = int(np.prod(ind.shape[:-1], dtype=np.int64))
        per_batch = rows // nb if nb else 0
        const_off = None
        if consts[1] is not None:
            const_off = np.zeros(rows, np.int64)
            if rows and last:
                nd_offsets(np.ascontiguousarray(consts[1].reshape(rows, last)), dims, tstrides, const_off)

        def run(inputs, outputs, scratch):
            if rows == 0 or slice_size == 0:
                return
            if const_off is not None:
                off = const_off
            else:
                off = scratch[:8 * rows].view(np.int64)
                if last:
                    idx = np.ascontiguousarray(inputs[1]).reshape(rows, last)
                    bad = check_nd_indices(idx, dims)
                    if bad >= 0:
                        self._check(inputs[1], data.shape)  # raises with the position and value
                    nd_offsets(idx, dims, tstrides, off)
                else:
                    off[:] = 0
            gather_nd_copy(bits_view(np.ascontiguousarray(inputs[0])), off, bits_view(outputs[0]), per_batch,
                           batch_stride, slice_size)

        return Kernel(run, scratch_bytes=0 if const_off is not None else 8 * rows)


# --------------------------------------------------------------------------------------------------------
#: the float8 types whose conversions ``saturate`` governs (float8e8m0 has its own rule, see _to_e8m0)
_FLOAT8 = frozenset({"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"})
ROUND_MODES = ("up", "down", "nearest")


def _e8m0_dtype():
    return _pb.element_dtype(_pb.FLOAT8E8M0)


def _as_float(x: np.ndarray) -> np.ndarray:
    """``x`` as float64 (float64 and 32/64-bit integers: exact) or float32 (every other type: exact)."""
    if x.dtype == np.float64 or (x.dtype.kind in "iu" and x.dtype.itemsize >= 4):
        return x.astype(np.float64)
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """float8e8m0 (2**(e - 127), codes 0..254, 255 = NaN) from the float32 exponent bits of ``x``.

    round_mode 'down' keeps the exponent, 'up' adds one when the mantissa is not zero, 'nearest' when the
    mantissa is at least one half (ties up), for subnormal inputs above one half (onnx's rule). Saturation
    keeps 254 (2**127) rather than overflowing to NaN, and turns +-Inf into 254 (the Cast table); NaN stays
    NaN. The sign is ignored (negative inputs are undefined in ONNX)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    special = exponent == 0xFF
    if round_mode == "up":
        up = (bits & 0x7FFFFF) != 0
    elif round_mode == "nearest":
        guard = (bits & 0x400000) != 0
        up = guard & (((bits & 0x3FFFFF) != 0) | (exponent > 0))
    else:
        up = np.zeros(bits.shape, np.bool_)
    up &= ~special
    if saturate:
        up &= exponent != 0xFE
    code = np.minimum(exponent + up, 0xFF).astype(np.uint8)
    if saturate:
        code[special & ((bits & 0x7FFFFF) == 0)] = 0xFE  # +-Inf -> the largest value
    return code.view(_e8m0_dtype())


def cast_array(x: np.ndarray, to: np.dtype, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast of ``x`` to ``to`` (a new array).

    numpy's conversions, with ml_dtypes' for the low-precision types (round to nearest even; integer
    overflow wraps). To a float8 type with ``saturate``, values beyond the type's largest finite value (and
    +-Inf) become that value (NaN stays NaN); without it they become Inf (float8e5m2) or NaN. float8e8m0
    follows ``round_mode`` (see _to_e8m0). float4 and float6 have no Inf/NaN: ml_dtypes clamps."""
    to = np.dtype(to)
    with np.errstate(all="ignore"):  # NaN/Inf/out-of-range to int: undefined in ONNX, no warning here
        if to == _e8m0_dtype():
            return _to_e8m0(x.astype(np.float32), saturate, round_mode)
        if to.name in _FLOAT8 and saturate:
            import ml_dtypes

            limit = float(ml_dtypes.finfo(to).max)
            return np.clip(_as_float(x), -limit, limit).astype(to)
        return x.astype(to)


@register
class Cast(Op):
    """Cast (1, 6, 9, 13, 19: ``saturate``, 21, 23, 24: ``round_mode``, 25, 28) to every numeric type edgedl has,
    the low-precision ones included (see cast_array)."""

    op_type = "Cast"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        to = self.attr("to")
        if to is None:
            raise self.error("needs a 'to' attribute")
        self.to = onnx_elem_dtype(self, to, "target type", low_precision=True)
        self.saturate, self.round_mode = cast_attributes(self)

    def infer(self, ins, consts):
        return [TensorType(ins[0].shape, self.to)]

    def ref(self, x):
        return [cast_array(x, self.to, self.saturate, self.round_mode)]

    def build(self, ins, outs, consts):
        return cast_kernel(self, ins[0].dtype, self.to)


def cast_attributes(op: Op) -> tuple[bool, str]:
    """The ``saturate`` (opset 19, default 1) and ``round_mode`` (opset 24, default 'up') attributes of Cast and
    CastLike."""
    saturate = op.attr("saturate", 1)
    if saturate not in (0, 1):
        raise op.error(f"saturate must be 0 or 1, got {saturate}")
    round_mode = op.attr("round_mode", "up")
    if round_mode not in ROUND_MODES:
        raise op.error(f"round_mode must be one of {', '.join(ROUND_MODES)}, got {round_mode!r}")
    return bool(saturate), round_mode


def cast_kernel(op: Op, src, to) -> Kernel:
    """The Cast / CastLike kernel: numpy's casting loops into the preallocated output (vectorized C), or
    cast_array where a low-precision type is involved."""
    if is_low_precision(src) or is_low_precision(to):
        saturate, round_mode = op.saturate, op.round_mode

        def run_low(inputs, outputs, scratch):
            outputs[0][...] = cast_array(inputs[0], outputs[0].dtype, saturate, round_mode)

        return Kernel(run_low, impl="numpy")

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


__all__ = ["LOW_PRECISION_NAMES", "LOW_PRECISION_OPS", "ONNX_TYPE_NAMES", "numeric_dtype", "Cast", "Constant",
           "ConstantOfShape", "Gather", "GatherElements", "GatherND", "cast_array", "cast_attributes", "cast_kernel",
           "check_elements_shapes", "elements_index", "elements_layout", "is_low_precision", "onnx_elem_dtype",
           "reject_low_precision"]
