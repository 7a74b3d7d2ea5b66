"""Ops whose output shape depends on input values: Compress, Unique, NonZero and NonMaxSuppression.

When the deciding inputs are plan-time constants, ``infer`` returns the exact output types (and the planner
folds or runs them like any op); otherwise it raises :class:`~edgedl.errors.DataDependentShape` and the planner
runs ``ref`` at run time, which allocates and returns the outputs. So ``ref`` here is also the run-time path:
NonMaxSuppression's calls the float32 Numba kernel (:mod:`edgedl.kernels.cpu.nms`), the others are numpy's
vectorized C (np.compress / np.unique / np.nonzero).

* Compress (opset 9, 11, 28): the slices of ``input`` along ``axis`` (or of the flattened input without one)
  where the 1-D ``condition`` is true; a condition shorter than the axis drops the rest, a longer one is cut to
  the axis (as onnxruntime does). Deciding input: condition.
* Unique (opset 11, 28): the unique values (``axis`` absent: of the flattened input) or the unique slices
  along ``axis``, sorted ascending (``sorted=1``, the default; slices lexicographically, as numpy) or in the
  order of first occurrence; outputs Y, indices (first occurrence of each Y in X), inverse_indices (X's
  position in Y, for each element or slice) and counts, all int64. Deciding input: X.
* NonZero (opset 9, 13): int64 (rank, nnz) of the indices of the non-zero elements, row-major order; a scalar
  counts as a 1-element vector (onnxruntime: shape (1, nnz)). Deciding input: X.
* NonMaxSuppression (opset 10, 11): boxes (B, N, 4), scores (B, C, N), optional max_output_boxes_per_class
  (default 0: nothing selected), iou_threshold (default 0, must lie in [0, 1]) and score_threshold (boxes need
  a score strictly above it); an empty optional tensor counts as absent. ``center_point_box`` 0: [y1, x1, y2,
  x2] corners, 1: [x_center, y_center, width, height]. Output selected_indices (num_selected, 3) int64 rows
  (batch, class, box): see the kernel for the selection rule. Deciding inputs: all of them (an absent or
  non-positive max_output_boxes_per_class gives (0, 3) without data).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataDependentShape, EdgeDLError
from ..ir import TensorType
from ..registry import Kernel, Op, register
from .common import normalize_axis

_I64 = np.dtype(np.int64)


def _data_dependent(op: Op, what: str) -> DataDependentShape:
    return DataDependentShape(f"{op.node.describe()}: the output shape depends on the values of {what}, which are "
                              "computed at run time")


def _present(ins, i):
    return i < len(ins) and ins[i] is not None


# --------------------------------------------------------------------------------------------------------
@register
class Compress(Op):
    op_type = "Compress"
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        axis = self.attr("axis")
        self.axis_attr = None if axis is None else int(axis)

    def _axis(self, rank: int) -> int | None:
        if self.axis_attr is None:
            return None
        if rank == 0:
            raise self.error("cannot compress a scalar along an axis")
        return normalize_axis(self, self.axis_attr, rank)

    def _positions(self, condition, shape) -> np.ndarray:
        axis = self._axis(len(shape))
        n = int(np.prod(shape, dtype=np.int64)) if axis is None else int(shape[axis])
        cond = np.asarray(condition).reshape(-1)[:n]
        return np.flatnonzero(cond).astype(np.int64)

    def infer(self, ins, consts):
        x, c = ins
        if len(c.shape) != 1:
            raise self.error(f"condition must be 1-D, got shape {tuple(c.shape)}")
        if np.dtype(c.dtype).kind not in "biu":
            raise self.error(f"condition must be bool, got {np.dtype(c.dtype).name}")
        axis = self._axis(len(x.shape))
        if consts[1] is None:
            raise _data_dependent(self, "the condition")
        k = int(self._positions(consts[1], x.shape).size)
        shape = (k,) if axis is None else tuple(x.shape[:axis]) + (k,) + tuple(x.shape[axis + 1:])
        return [TensorType(shape, x.dtype)]

    def ref(self, x, condition):
        axis = self._axis(x.ndim)
        pos = self._positions(condition, x.shape)
        if axis is None:
            return [np.ascontiguousarray(x.reshape(-1)[pos])]
        return [np.ascontiguousarray(np.take(x, pos, axis=axis))]

    def build(self, ins, outs, consts):
        axis = self._axis(len(ins[0].shape))
        pos = self._positions(consts[1], ins[0].shape)

        def run(inputs, outputs, scratch):
            x = inputs[0] if axis is not None else inputs[0].reshape(-1)
            np.take(x, pos, axis=axis if axis is not None else 0, out=outputs[0])

        return Kernel(run, impl="numpy")


# --------------------------------------------------------------------------------------------------------
@register
class Unique(Op):
    op_type = "Unique"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        axis = self.attr("axis")
        self.axis_attr = None if axis is None else int(axis)
        self.sorted = bool(int(self.attr("sorted", 1)))
        if len(node.outputs) > 4:
            raise self.error(f"has {len(node.outputs)} outputs, at most 4 are defined")

    def _axis(self, rank: int) -> int | None:
        if self.axis_attr is None:
            return None
        if rank == 0:
            raise self.error("cannot take unique slices of a scalar along an axis")
        return normalize_axis(self, self.axis_attr, rank)

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype).kind not in "biuf":
            raise self.unsupported(f"Unique of {np.dtype(x.dtype).name} is not supported")
        self._axis(len(x.shape))
        if consts[0] is None:
            raise _data_dependent(self, "X")
        outs = self.ref(consts[0])
        return [TensorType(o.shape, o.dtype) for o in outs][:len(self.node.outputs)]

    def ref(self, x):
        axis = self._axis(x.ndim)
        if axis is not None and x.shape[axis] == 0:
            y = np.empty(x.shape, x.dtype)
            e = np.zeros(0, np.int64)
            return [y, e, e.copy(), e.copy()]
        y, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True,
                                              axis=axis)
        first = first.astype(np.int64)
        inverse = inverse.astype(np.int64).reshape(-1)
        counts = counts.astype(np.int64)
        if not self.sorted:
            order = np.argsort(first, kind="stable")  # Y in the order of first occurrence
            rank = np.empty(order.size, np.int64)
            rank[order] = np.arange(order.size)
            y = y[order] if axis is None else np.take(y, order, axis=axis)
            first, counts, inverse = first[order], counts[order], rank[inverse]
        return [np.ascontiguousarray(y), first, inverse, counts]


# --------------------------------------------------------------------------------------------------------
@register
class NonZero(Op):
    op_type = "NonZero"

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype).kind not in "biuf":
            raise self.unsupported(f"NonZero of {np.dtype(x.dtype).name} is not supported")
        if consts[0] is None:
            raise _data_dependent(self, "X")
        return [TensorType((max(len(x.shape), 1), int(np.count_nonzero(consts[0]))), _I64)]

    def ref(self, x):
        x = np.asarray(x)
        if x.ndim == 0:
            x = x.reshape(1)
        idx = np.nonzero(x)
        out = np.empty((x.ndim, idx[0].size), np.int64)
        for d, v in enumerate(idx):
            out[d] = v
        return [out]


# --------------------------------------------------------------------------------------------------------
@register
class NonMaxSuppression(Op):
    op_type = "NonMaxSuppression"
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 5)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.center = int(self.attr("center_point_box", 0))
        if self.center not in (0, 1):
            raise self.error(f"center_point_box must be 0 or 1, got {self.center}")

    def infer(self, ins, consts):
        boxes, scores = ins[0], ins[1]
        for name, t in (("boxes", boxes), ("scores", scores)):
            if np.dtype(t.dtype) != np.float32:
                raise self.error(f"{name} must be float32, got {np.dtype(t.dtype).name}")
            if len(t.shape) != 3:
                raise self.error(f"{name} must have rank 3, got shape {tuple(t.shape)}")
        if boxes.shape[2] != 4:
            raise self.error(f"boxes must have the shape (batches, boxes, 4), got {tuple(boxes.shape)}")
        if boxes.shape[0] != scores.shape[0] or boxes.shape[1] != scores.shape[2]:
            raise self.error(f"boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)} do not fit (scores must "
                             "be (batches, classes, boxes))")
        for i, name, kinds in ((2, "max_output_boxes_per_class", "iu"), (3, "iou_threshold", "f"),
                               (4, "score_threshold", "f")):
            if _present(ins, i):
                t = ins[i]
                if np.dtype(t.dtype).kind not in kinds or int(np.prod(t.shape, dtype=np.int64)) > 1 \
                        or len(t.shape) > 1:
                    raise self.error(f"{name} must be a scalar or a 1-element 1-D tensor "
                                     f"({'int64' if kinds == 'iu' else 'float32'}), got "
                                     f"{np.dtype(t.dtype).name}{tuple(t.shape)}")
        if not _present(ins, 2) or (consts[2] is not None and self._params(consts[2], None, None)[0] == 0):
            return [TensorType((0, 3), _I64)]
        if all(consts[i] is not None for i in range(len(ins)) if ins[i] is not None):
            return [TensorType(self.ref(*consts)[0].shape, _I64)]
        raise _data_dependent(self, "boxes and scores")

    def _params(self, max_out, iou, score):
        """(max boxes per class >= 0, iou threshold, score threshold or None); an empty tensor counts as absent."""
        def value(v):
            return None if v is None or np.asarray(v).size == 0 else np.asarray(v).reshape(-1)[0]

        m, t, s = value(max_out), value(iou), value(score)
        m = 0 if m is None else max(int(m), 0)
        t = np.float32(0.0) if t is None else np.float32(t)
        if not 0.0 <= t <= 1.0:
            raise self.error(f"iou_threshold must lie in [0, 1], got {float(t)}", EdgeDLError)
        return m, t, None if s is None else np.float32(s)

    def ref(self, boxes, scores, max_output_boxes_per_class=None, iou_threshold=None, score_threshold=None):
        from ..kernels.cpu.nms import nms

        m, iou, score = self._params(max_output_boxes_per_class, iou_threshold, score_threshold)
        if m == 0 or boxes.size == 0 or scores.size == 0:
            return [np.zeros((0, 3), np.int64)]
        out = nms(np.ascontiguousarray(boxes, np.float32), np.ascontiguousarray(scores, np.float32), np.int64(m),
                  iou, np.float32(0.0 if score is None else score), score is not None, bool(self.center))
        return [np.ascontiguousarray(out)]

    def build(self, ins, outs, consts):
        # reached when the output is known to be empty (no or a non-positive max_output_boxes_per_class)
        def run(inputs, outputs, scratch):
            outputs[0][...] = self.ref(*inputs)[0]

        return Kernel(run, impl="numpy")


__all__ = ["Compress", "NonMaxSuppression", "NonZero", "Unique"]
