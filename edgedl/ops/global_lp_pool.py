"""GlobalLpPool (opsets 1, 2, 22): the Lp norm of every (n, c) plane over its spatial dims,
``(sum of |x| ** p) ** (1 / p)``, output (N, C, 1, ..., 1). ``p`` is a float attribute (default 2.0) at opset 1
and an int (default 2) from opset 2. numpy in float64 (p = 1 and 2 without a power), one rounding at the end: the
op is rare and memory-bound (a single pass over the input).
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Op, register

_FLOATS = ("float16", "float32", "float64", "bfloat16")


@register
class GlobalLpPool(Op):
    op_type = "GlobalLpPool"
    num_inputs = (1, 1)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        p = self.attr("p", 2)
        if opset >= 2 and isinstance(p, float) and not float(p).is_integer():
            raise self.error(f"p must be an integer from opset 2, got {p}")
        self.p = float(p)
        if not (np.isfinite(self.p) and self.p > 0):
            raise self.error(f"p must be positive, got {p}")

    def infer(self, ins, consts):
        x = ins[0]
        shape = tuple(x.shape)
        if len(shape) < 3:
            raise self.error(f"input must be (N, C, spatial...) with rank >= 3, got shape {shape}")
        if np.dtype(x.dtype).name not in _FLOATS:
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported ({', '.join(_FLOATS)})")
        return [TensorType(shape[:2] + (1,) * (len(shape) - 2), x.dtype)]

    def ref(self, x):
        axes = tuple(range(2, x.ndim))
        a = np.abs(x.astype(np.float64))
        with np.errstate(all="ignore"):
            if self.p == 1:
                y = a.sum(axis=axes, keepdims=True)
            elif self.p == 2:
                y = np.sqrt((a * a).sum(axis=axes, keepdims=True))
            else:
                y = (a ** self.p).sum(axis=axes, keepdims=True) ** (1.0 / self.p)
        return [y.astype(x.dtype)]
