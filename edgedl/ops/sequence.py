"""Sequences and optionals: ONNX's ``seq(tensor)`` and ``optional(...)`` values.

At run time a sequence is a Python list of arrays and an optional is its value or None. When a plan is built,
a sequence's type is the type of each element (:class:`~edgedl.ir.SequenceType`), so the nodes that read
elements (SequenceAt, ConcatFromSequence) get exact shapes, and an optional's type says whether it holds a
value (:class:`~edgedl.ir.OptionalType`). Where a position is data (SequenceAt/Insert/Erase with a computed
position, SplitToSequence with computed split sizes) and the element types differ, the op's shape rule raises
DataDependentShape and the planner decides after the values exist.

All of these are eager ops (their outputs are computed at run time, outside the arena): they move references
to arrays, not data, except ConcatFromSequence and SplitToSequence, which copy.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataDependentShape, EdgeDLError
from ..ir import OptionalType, SequenceType, TensorType, check_shape, contiguous
from ..registry import Op, register
from .common import normalize_axis
from .control_flow import SubgraphOp

_TENSOR_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
                  9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def _dtype_attr(op: Op, name: str, default: int = 1) -> np.dtype:
    code = int(op.attr(name, default))
    if code not in _TENSOR_DTYPES:
        raise op.unsupported(f"{name}={code} is not a supported element type")
    return np.dtype(_TENSOR_DTYPES[code])


def _seq(op: Op, t, what: str = "input_sequence") -> SequenceType:
    if isinstance(t, OptionalType) and isinstance(t.inner, SequenceType):
        t = t.inner
    if not isinstance(t, SequenceType):
        raise op.error(f"{what} must be a sequence, got {t}")
    return t


def _position(op: Op, t, c, length: int, insert: bool) -> int | None:
    """A constant position normalized into range (None when it is data)."""
    if t is None:
        return length if insert else length - 1
    if not isinstance(t, TensorType) or t.size != 1 or np.dtype(t.dtype).kind not in "iu":
        raise op.error(f"position must be one integer, got {t}")
    if c is None:
        return None
    return _check_position(op, int(np.asarray(c).reshape(-1)[0]), length, insert)


def _check_position(op: Op, pos: int, length: int, insert: bool) -> int:
    hi = length if insert else length - 1
    if not -length <= pos <= hi:
        raise EdgeDLError(f"{op.node.describe()}: position {pos} is out of range for a sequence of {length} "
                          "tensors")
    return pos + length if pos < 0 else pos


def _all_same(elems) -> TensorType | None:
    kinds = set(elems)
    return kinds.pop() if len(kinds) == 1 else None


class _SeqOp(Op):
    eager = True


@register
class SequenceEmpty(_SeqOp):
    op_type = "SequenceEmpty"
    num_inputs = (0, 0)

    def infer(self, ins, consts):
        self.dtype = _dtype_attr(self, "dtype")
        return [SequenceType((), self.dtype)]

    def ref(self):
        return [[]]


@register
class SequenceConstruct(_SeqOp):
    op_type = "SequenceConstruct"
    num_inputs = (1, 1 << 20)

    def infer(self, ins, consts):
        if any(not isinstance(t, TensorType) for t in ins):
            raise self.error("every input must be a tensor")
        dtypes = {np.dtype(t.dtype) for t in ins}
        if len(dtypes) != 1:
            raise self.error(f"the tensors of a sequence share one dtype, got {sorted(d.name for d in dtypes)}")
        return [SequenceType(tuple(ins), dtypes.pop())]

    def ref(self, *tensors):
        return [list(tensors)]


@register
class SequenceLength(_SeqOp):
    op_type = "SequenceLength"

    def infer(self, ins, consts):
        _seq(self, ins[0])
        return [TensorType((), np.dtype(np.int64))]

    def ref(self, seq):
        return [np.array(len(seq), np.int64)]


@register
class SequenceAt(_SeqOp):
    op_type = "SequenceAt"
    num_inputs = (2, 2)

    def infer(self, ins, consts):
        seq = _seq(self, ins[0])
        pos = _position(self, ins[1], consts[1], len(seq.elems), False)
        if pos is None:
            same = _all_same(seq.elems)
            if same is None:
                raise DataDependentShape(f"{self.node.describe()}: the element read depends on data")
            return [same]
        return [seq.elems[pos]]

    def ref(self, seq, position):
        return [seq[_check_position(self, int(np.asarray(position).reshape(-1)[0]), len(seq), False)]]


@register
class SequenceInsert(_SeqOp):
    op_type = "SequenceInsert"
    num_inputs = (2, 3)

    def infer(self, ins, consts):
        seq = _seq(self, ins[0])
        t = ins[1]
        if not isinstance(t, TensorType):
            raise self.error(f"tensor must be a tensor, got {t}")
        if seq.dtype is not None and np.dtype(t.dtype) != seq.dtype:
            raise self.error(f"cannot insert a {np.dtype(t.dtype).name} tensor into a sequence of {seq.dtype.name}")
        pos_t = ins[2] if len(ins) > 2 else None
        pos = _position(self, pos_t, consts[2] if len(consts) > 2 else None, len(seq.elems), True)
        elems = list(seq.elems)
        if pos is None:
            if _all_same(elems + [t]) is None:
                raise DataDependentShape(f"{self.node.describe()}: the insert position depends on data")
            pos = 0
        elems.insert(pos, t)
        return [SequenceType(tuple(elems), np.dtype(t.dtype))]

    def ref(self, seq, tensor, position=None):
        out = list(seq)
        pos = len(out) if position is None else _check_position(
            self, int(np.asarray(position).reshape(-1)[0]), len(out), True)
        out.insert(pos, tensor)
        return [out]


@register
class SequenceErase(_SeqOp):
    op_type = "SequenceErase"
    num_inputs = (1, 2)

    def infer(self, ins, consts):
        seq = _seq(self, ins[0])
        if not seq.elems:
            raise self.error("cannot erase from an empty sequence")
        pos_t = ins[1] if len(ins) > 1 else None
        pos = _position(self, pos_t, consts[1] if len(consts) > 1 else None, len(seq.elems), False)
        elems = list(seq.elems)
        if pos is None:
            if _all_same(elems) is None:
                raise DataDependentShape(f"{self.node.describe()}: the erase position depends on data")
            pos = 0
        del elems[pos]
        return [SequenceType(tuple(elems), seq.dtype)]

    def ref(self, seq, position=None):
        out = list(seq)
        if not out:
            raise EdgeDLError(f"{self.node.describe()}: cannot erase from an empty sequence")
        pos = len(out) - 1 if position is None else _check_position(
            self, int(np.asarray(position).reshape(-1)[0]), len(out), False)
        del out[pos]
        return [out]


@register
class SplitToSequence(_SeqOp):
    """Split a tensor along ``axis`` into a sequence: equal chunks of ``split`` (a scalar) or the sizes in
    ``split`` (1-D); without ``split``, pieces of size 1, squeezed unless ``keepdims=0``."""

    op_type = "SplitToSequence"
    num_inputs = (1, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", 0))
        self.keepdims = int(self.attr("keepdims", 1))

    def _sizes(self, n: int, split) -> list[int] | None:
        if split is None:
            return [1] * n
        split = np.asarray(split)
        if split.ndim == 0:
            k = int(split)
            if k <= 0:
                raise EdgeDLError(f"{self.node.describe()}: split size {k} must be positive")
            return [k] * (n // k) + ([n % k] if n % k else [])
        sizes = [int(v) for v in split.reshape(-1)]
        if any(v < 0 for v in sizes) or sum(sizes) != n:
            raise EdgeDLError(f"{self.node.describe()}: split sizes {sizes} do not add up to {n}")
        return sizes

    def infer(self, ins, consts):
        x = ins[0]
        if not isinstance(x, TensorType) or not x.shape:
            raise self.error(f"input must be a tensor of rank >= 1, got {x}")
        self.axis = normalize_axis(self, self.axis_attr, len(x.shape))
        split_t = ins[1] if len(ins) > 1 else None
        if split_t is not None and consts[1] is None:
            raise DataDependentShape(f"{self.node.describe()}: the split sizes are data")
        n = x.shape[self.axis]
        sizes = self._sizes(n, None if split_t is None else consts[1])
        elems = []
        for k in sizes:
            shape = list(x.shape)
            if split_t is None and not self.keepdims:
                del shape[self.axis]
            else:
                shape[self.axis] = k
            elems.append(TensorType(tuple(shape), x.dtype))
        return [SequenceType(tuple(elems), np.dtype(x.dtype))]

    def ref(self, x, split=None):
        axis = normalize_axis(self, self.axis_attr, x.ndim)
        sizes = self._sizes(x.shape[axis], split)
        out, start = [], 0
        for k in sizes:
            piece = np.take(x, np.arange(start, start + k), axis=axis)
            if split is None and not self.keepdims:
                piece = np.squeeze(piece, axis=axis)
            out.append(contiguous(piece))
            start += k
        return [out]


@register
class ConcatFromSequence(_SeqOp):
    """Concatenate a sequence's tensors along ``axis`` (``new_axis=1``: stack them along a new axis)."""

    op_type = "ConcatFromSequence"

    def infer(self, ins, consts):
        seq = _seq(self, ins[0])
        if not seq.elems:
            raise self.error("cannot concatenate an empty sequence")
        new_axis = int(self.attr("new_axis", 0))
        rank = len(seq.elems[0].shape)
        if any(len(e.shape) != rank for e in seq.elems):
            raise self.error("the tensors have different ranks")
        axis = normalize_axis(self, int(self.attr("axis")), rank + (1 if new_axis else 0))
        if new_axis:
            shapes = {e.shape for e in seq.elems}
            if len(shapes) != 1:
                raise self.error(f"stacking needs one shape, got {sorted(shapes)}")
            shape = list(seq.elems[0].shape)
            shape.insert(axis, len(seq.elems))
        else:
            rest = {e.shape[:axis] + e.shape[axis + 1:] for e in seq.elems}
            if len(rest) != 1:
                raise self.error(f"shapes {[e.shape for e in seq.elems]} differ outside axis {axis}")
            shape = list(seq.elems[0].shape)
            shape[axis] = sum(e.shape[axis] for e in seq.elems)
        self.axis, self.new_axis = axis, new_axis
        return [TensorType(check_shape(tuple(shape), "output"), seq.dtype)]

    def ref(self, seq):
        if self.new_axis:
            return [np.stack(seq, axis=self.axis)]
        return [np.concatenate(seq, axis=self.axis)]


# --- optionals --------------------------------------------------------------------------------------------
@register
class Optional(_SeqOp):
    """An optional holding the input, or an empty optional of the type attribute when there is no input."""

    op_type = "Optional"
    num_inputs = (0, 1)

    def infer(self, ins, consts):
        if ins and ins[0] is not None:
            inner = ins[0]
            return [OptionalType(inner, inner.dtype, isinstance(inner, SequenceType))]
        tp = self.attr("type")
        return [OptionalType(None, None, bool(tp is not None and "sequence" in str(tp)))]

    def ref(self, x=None):
        return [x]


@register
class OptionalHasElement(_SeqOp):
    op_type = "OptionalHasElement"
    num_inputs = (0, 1)

    def infer(self, ins, consts):
        t = ins[0] if ins else None
        self.has = not (t is None or (isinstance(t, OptionalType) and t.inner is None))
        return [TensorType((), np.dtype(np.bool_))]

    def ref(self, x=None):
        return [np.array(x is not None)]


@register
class OptionalGetElement(_SeqOp):
    op_type = "OptionalGetElement"

    def infer(self, ins, consts):
        t = ins[0]
        if isinstance(t, OptionalType):
            if t.inner is None:
                raise self.error("the optional is empty")
            return [t.inner]
        return [t]

    def ref(self, x):
        if x is None:
            raise EdgeDLError(f"{self.node.describe()}: the optional is empty")
        return [x]


# --- SequenceMap ------------------------------------------------------------------------------------------
@register
class SequenceMap(SubgraphOp):
    """Apply the body to each element of the input sequence (and of further sequence inputs; tensor inputs go
    to every call as they are), collecting each body output into an output sequence."""

    op_type = "SequenceMap"
    graph_attrs = ("body",)

    def infer(self, ins, consts):
        formal, outer_t = self.split(ins)
        _, outer_c = self.split(consts)
        seq = _seq(self, formal[0])
        n = len(seq.elems)
        for t in formal[1:]:
            if isinstance(t, SequenceType) and len(t.elems) != n:
                raise self.error(f"sequence inputs have different lengths ({n} and {len(t.elems)})")
        n_out = len(self.graphs["body"].outputs)
        outs: list[list] = [[] for _ in range(n_out)]
        for i in range(n):
            args = [t.elems[i] if isinstance(t, SequenceType) else t for t in formal]
            for k, t in enumerate(self.subgraph_types("body", args, outer_t, outer_c)):
                outs[k].append(t)
        dtypes = [self.graphs["body"].outputs[k].dtype for k in range(n_out)]
        return [SequenceType(tuple(o), np.dtype(o[0].dtype) if o else (dtypes[k] or np.dtype(np.float32)))
                for k, o in enumerate(outs)]

    def ref(self, *args):
        formal, outer = self.split(args)
        n = len(formal[0])
        n_out = len(self.graphs["body"].outputs)
        outs: list[list] = [[] for _ in range(n_out)]
        for i in range(n):
            call = [a[i] if isinstance(a, list) else a for a in formal]
            for k, v in enumerate(self.run_subgraph("body", call, outer)):
                outs[k].append(v)
        return outs
