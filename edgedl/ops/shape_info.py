"""Shape and Size: ops whose outputs depend only on input shapes, always folded at plan time."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Op, register


@register
class Shape(Op):
    op_type = "Shape"
    shape_only = True

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.start = int(self.attr("start", 0))
        self.end = self.attr("end", None)

    def _range(self, rank: int) -> tuple[int, int]:
        start = min(max(self.start + rank if self.start < 0 else self.start, 0), rank)
        end = rank if self.end is None else int(self.end)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        return start, max(start, end)

    def infer(self, ins, consts):
        start, end = self._range(len(ins[0].shape))
        return [TensorType((end - start,), np.dtype(np.int64))]

    def ref(self, x):
        start, end = self._range(x.ndim)
        return [np.array(x.shape[start:end], dtype=np.int64)]


@register
class Size(Op):
    op_type = "Size"
    shape_only = True

    def infer(self, ins, consts):
        return [TensorType((), np.dtype(np.int64))]

    def ref(self, x):
        return [np.array(x.size, dtype=np.int64)]
