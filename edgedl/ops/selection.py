"""Selection along an axis: ArgMax, ArgMin, TopK and Hardmax.

Each views its input as (outer, n, inner) around the axis (n = the axis dim).

* ArgMax / ArgMin (opset 1, 11, 12, 13): int64 position of the maximum / minimum along ``axis`` (default 0),
  the first one, or the last with ``select_last_index`` (opset 12+); ``keepdims`` (default 1) keeps the axis
  as size 1. A NaN counts as larger (and smaller) than every number, as in numpy and PyTorch, so the first
  (last) NaN of a row wins; onnxruntime skips NaNs instead, the spec leaves it open. An empty axis is an error.
* TopK (opset 1: ``k`` attribute; 10: the K input, a constant; 11+: ``largest``, ``sorted``, negative axes):
  values and int64 indices of the k largest (smallest) along ``axis`` (default -1), best first; equal values
  in increasing index order (as the spec says); NaN ranks above +inf. Output is always sorted (``sorted=0``
  leaves the order free). Requires 0 <= k <= n.
* Hardmax: 1 at the first maximum, 0 elsewhere. Before opset 13 the input is coerced to 2-D
  (prod(shape[:axis]), prod(shape[axis:])) (``axis`` default 1) and each row is one slice; from opset 13 the
  slice is the single ``axis`` (default -1).

float32 runs Numba kernels (:mod:`edgedl.kernels.cpu.selection`: a scan for ArgMax / ArgMin / Hardmax, a
bounded heap per row for TopK); other dtypes the numpy reference.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernels.cpu.selection import arg_select, onehot_fill, topk
from ..registry import Kernel, Op, ref_kernel, register
from .common import const_ints, normalize_axis

_NUMERIC = ("float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
            "uint64")


def _split(shape, axis) -> tuple[int, int, int]:
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner


def _check_dtype(op: Op, t, allowed=_NUMERIC) -> None:
    name = np.dtype(t.dtype).name
    if name not in allowed:
        raise op.unsupported(f"input has dtype {name}; supported: {', '.join(allowed)}")


class _ArgBase(Op):
    kernels = {"cpu": ("float32",)}
    is_min = False

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", 0))
        self.keepdims = bool(int(self.attr("keepdims", 1)))
        self.last = bool(int(self.attr("select_last_index", 0)))
        if self.last and opset < 12:
            raise self.error(f"attribute select_last_index needs opset 12, the model has opset {opset}")

    def _axis(self, shape) -> int:
        if len(shape) == 0:
            raise self.error("input must have rank >= 1")
        axis = normalize_axis(self, self.axis_attr, len(shape))
        if shape[axis] == 0:
            raise self.error(f"cannot take the {self.op_type} of an empty axis {axis} (input shape {tuple(shape)})")
        return axis

    def _out_shape(self, shape, axis):
        if self.keepdims:
            return tuple(shape[:axis]) + (1,) + tuple(shape[axis + 1:])
        return tuple(shape[:axis]) + tuple(shape[axis + 1:])

    def infer(self, ins, consts):
        x = ins[0]
        _check_dtype(self, x)
        axis = self._axis(x.shape)
        return [TensorType(self._out_shape(x.shape, axis), np.dtype(np.int64))]

    def ref(self, x):
        axis = self._axis(x.shape)
        fn = np.argmin if self.is_min else np.argmax
        if self.last:
            res = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            res = fn(x, axis=axis)
        res = res.astype(np.int64)
        return [res.reshape(self._out_shape(x.shape, axis))]

    def build(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32:
            return ref_kernel(self)
        outer, n, inner = _split(x.shape, self._axis(x.shape))
        is_min, last = self.is_min, self.last

        def run(inputs, outputs, scratch):
            arg_select(np.ascontiguousarray(inputs[0]).reshape(-1), outputs[0].reshape(-1), outer, n, inner, is_min,
                       last)

        return Kernel(run)


@register
class ArgMax(_ArgBase):
    op_type = "ArgMax"


@register
class ArgMin(_ArgBase):
    op_type = "ArgMin"
    is_min = True


@register
class TopK(Op):
    op_type = "TopK"
    kernels = {"cpu": ("float32",)}
    num_inputs = (1, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", -1))
        self.largest = bool(int(self.attr("largest", 1)))
        self.sorted = bool(int(self.attr("sorted", 1)))
        if opset < 11 and (not self.largest or not self.sorted):
            raise self.error(f"attributes largest / sorted need opset 11, the model has opset {opset}")
        if opset < 10:
            if self.attr("k") is None:
                raise self.error("needs the attribute k (opset < 10)")
            if len([i for i in node.inputs if i]) != 1:
                raise self.error("takes 1 input before opset 10 (k is an attribute)")
        elif len([i for i in node.inputs if i]) != 2:
            raise self.error("takes 2 inputs (X, K) from opset 10")

    def _k(self, consts) -> int:
        if self.opset < 10:
            return int(self.attr("k"))
        ks = const_ints(self, consts, 1, "K")
        if len(ks) != 1:
            raise self.error(f"K must hold one value, got {len(ks)}")
        return ks[0]

    def _layout(self, shape, k):
        if len(shape) == 0:
            raise self.error("input must have rank >= 1")
        axis = normalize_axis(self, self.axis_attr, len(shape))
        if not 0 <= k <= shape[axis]:
            raise self.error(f"k = {k} must be in [0, {shape[axis]}] (the size of axis {axis})")
        return axis

    def infer(self, ins, consts):
        x = ins[0]
        _check_dtype(self, x)
        if self.opset >= 10 and (len(ins[1].shape) > 1 or np.dtype(ins[1].dtype).kind not in "iu"):
            raise self.error(f"K must be a 1-D int64 tensor of one value, got {ins[1].dtype}{tuple(ins[1].shape)}")
        k = self._k(consts)
        axis = self._layout(x.shape, k)
        shape = tuple(x.shape[:axis]) + (k,) + tuple(x.shape[axis + 1:])
        return [TensorType(shape, x.dtype), TensorType(shape, np.dtype(np.int64))]

    def ref(self, x, k_in=None):
        k = int(self.attr("k")) if self.opset < 10 else int(np.asarray(k_in).reshape(-1)[0])
        axis = self._layout(x.shape, k)
        n = x.shape[axis]
        pos = np.arange(n).reshape((n,) + (1,) * (x.ndim - 1 - axis))
        pos = np.broadcast_to(pos, x.shape)
        # lexsort: the last key is the primary one; NaN sorts above every number, ties by index
        if self.largest:
            order = np.lexsort((-pos, x), axis=axis)
            order = np.flip(order, axis)
        else:
            order = np.lexsort((pos, x), axis=axis)
        order = np.take(order, np.arange(k), axis=axis).astype(np.int64)
        return [np.take_along_axis(x, order, axis), order]

    def build(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32:
            return ref_kernel(self)
        k = self._k(consts)
        outer, n, inner = _split(x.shape, self._layout(x.shape, k))
        largest = self.largest

        def run(inputs, outputs, scratch):
            topk(np.ascontiguousarray(inputs[0]).reshape(-1), outputs[0].reshape(-1), outputs[1].reshape(-1), outer,
                 n, inner, k, largest)

        present = [bool(o) for o in self.node.outputs[:2]]
        if all(present):
            return Kernel(run)

        def run_some(inputs, outputs, scratch):  # an output is omitted: compute both, hand back what is asked
            vals = np.empty(outs[0].shape, np.float32)
            idxs = np.empty(vals.shape, np.int64)
            topk(np.ascontiguousarray(inputs[0]).reshape(-1), vals.reshape(-1), idxs.reshape(-1), outer, n, inner, k,
                 largest)
            outputs[0][...] = vals if present[0] else idxs

        return Kernel(run_some)


@register
class Hardmax(Op):
    op_type = "Hardmax"
    kernels = {"cpu": ("float32",)}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", -1 if opset >= 13 else 1))

    def _split(self, shape) -> tuple[int, int, int]:
        if len(shape) == 0:
            raise self.error("input must have rank >= 1")
        axis = normalize_axis(self, self.axis_attr, len(shape))
        if self.opset >= 13:
            return _split(shape, axis)
        return int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)), 1

    def infer(self, ins, consts):
        _check_dtype(self, ins[0], ("float16", "float32", "float64"))
        self._split(ins[0].shape)
        return [ins[0]]

    def ref(self, x):
        outer, n, inner = self._split(x.shape)
        y = np.zeros(x.shape, x.dtype)
        if x.size == 0:
            return [y]
        x3 = x.reshape(outer, n, inner)
        am = np.argmax(x3, axis=1)
        np.put_along_axis(y.reshape(outer, n, inner), am[:, None, :], 1, axis=1)
        return [y]

    def build(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32:
            return ref_kernel(self)
        outer, n, inner = self._split(x.shape)
        size = outer * inner

        def run(inputs, outputs, scratch):
            if outputs[0].size == 0:
                return
            idx = scratch[:8 * size].view(np.int64)
            arg_select(np.ascontiguousarray(inputs[0]).reshape(-1), idx, outer, n, inner, False, False)
            onehot_fill(outputs[0].reshape(-1), idx, n, inner)

        return Kernel(run, scratch_bytes=8 * size)


__all__ = ["ArgMax", "ArgMin", "Hardmax", "TopK"]
