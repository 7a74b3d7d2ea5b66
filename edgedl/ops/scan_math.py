"""Cumulative sum and product along an axis: CumSum (opset 11, 14) and CumProd (opset 26).

``axis`` is an input (a 0-D or one-element int32 / int64 tensor, negative counts from the end). Along it:

    inclusive:  y[k] = x[0] (+) x[1] (+) ... (+) x[k]
    exclusive:  y[k] = x[0] (+) ... (+) x[k-1],   y[0] = 0 (sum) or 1 (product)

``reverse`` = 1 runs the scan from the last element down (y[k] combines x[k..n-1]). Accumulation is in order
in the tensor's dtype, as numpy and onnxruntime do. The output shape never depends on ``axis``, so an axis
computed in the model is read (and checked) at run time. float32, float64, int32 and int64 run the Numba
kernel of :mod:`edgedl.kernels.cpu.cumulative`; other dtypes the numpy reference.

Backward (CumSum): dx = cumsum(dy) along the same axis with the same ``exclusive`` and the opposite
``reverse`` (float64 sums); axis gets none.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu.cumulative import scan
from ..registry import Kernel, Op, register

_KERNEL_DTYPES = ("float32", "float64", "int32", "int64")


class _Cumulative(Op):
    kernels = {"cpu": _KERNEL_DTYPES}
    num_inputs = (2, 2)
    prod = False
    dtypes: tuple[str, ...] = ()

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.exclusive = bool(int(self.attr("exclusive", 0)))
        self.reverse = bool(int(self.attr("reverse", 0)))
        self.axis = None

    def _axis(self, value, rank: int, cls=None) -> int:
        a = np.asarray(value)
        if a.size != 1:
            raise self.error(f"axis must be a scalar, got shape {a.shape}", *(cls,) if cls else ())
        v = int(a.reshape(-1)[0])
        if not -max(rank, 1) <= v < max(rank, 1):
            raise self.error(f"axis {v} is out of range for rank {rank}", *(cls,) if cls else ())
        return v + max(rank, 1) if v < 0 else v

    def infer(self, ins, consts):
        x, a = ins[0], ins[1]
        if np.dtype(x.dtype).name not in self.dtypes:
            raise self.unsupported(f"input has dtype {np.dtype(x.dtype).name}; supported: {', '.join(self.dtypes)}")
        if np.dtype(a.dtype).name not in ("int32", "int64"):
            raise self.error(f"axis must be int32 or int64, got {np.dtype(a.dtype).name}")
        if len(a.shape) > 1 or a.size != 1:
            raise self.error(f"axis must be a scalar (0-D), got shape {tuple(a.shape)}")
        self.axis = None if consts[1] is None else self._axis(consts[1], len(x.shape))
        return [TensorType(tuple(x.shape), x.dtype)]

    def ref(self, x, axis):
        if x.ndim == 0:
            self._axis(axis, 0)
            return [x.copy()]
        ax = self._axis(axis, x.ndim)
        fn = np.cumprod if self.prod else np.cumsum
        v = np.flip(x, ax) if self.reverse else x
        if self.exclusive:
            ident = 1 if self.prod else 0
            y = np.full(v.shape, ident, x.dtype)
            n = v.shape[ax]
            if n > 1:
                head = [slice(None)] * x.ndim
                tail = [slice(None)] * x.ndim
                head[ax] = slice(0, n - 1)
                tail[ax] = slice(1, n)
                y[tuple(tail)] = fn(v[tuple(head)], axis=ax, dtype=x.dtype)
        else:
            y = fn(v, axis=ax, dtype=x.dtype)
        return [np.ascontiguousarray(np.flip(y, ax) if self.reverse else y)]

    def build(self, ins, outs, consts):
        x = ins[0]
        shape = tuple(x.shape)
        if np.dtype(x.dtype).name not in _KERNEL_DTYPES or len(shape) == 0:
            return super().build(ins, outs, consts)
        ident = np.array([1 if self.prod else 0], x.dtype)
        exclusive, reverse, prod = self.exclusive, self.reverse, self.prod
        fixed = self.axis

        def geometry(ax):
            return (int(np.prod(shape[:ax], dtype=np.int64)), int(shape[ax]),
                    int(np.prod(shape[ax + 1:], dtype=np.int64)))

        geo = None if fixed is None else geometry(fixed)

        def run(inputs, outputs, scratch):
            g = geo if geo is not None else geometry(self._axis(inputs[1], len(shape), EdgeDLError))
            scan(np.ascontiguousarray(inputs[0]).reshape(-1), outputs[0].reshape(-1), ident, *g, exclusive, reverse,
                 prod)

        return Kernel(run)


@register
class CumSum(_Cumulative):
    op_type = "CumSum"
    prod = False
    dtypes = ("uint32", "uint64", "int32", "int64", "float16", "float32", "float64")

    grad_inputs = (1,)

    def backward(self, grads, ins, outs, needs):
        """dx = cumsum(dy) with the same ``exclusive`` and the opposite ``reverse`` (float64 sums)."""
        res: list[np.ndarray | None] = [None, None]
        if not needs[0]:
            return res
        shape = tuple(self.in_types[0].shape)
        g = grads[0]
        if g is None or len(shape) == 0:
            res[0] = np.zeros(shape, np.float32) if g is None else np.asarray(g, np.float32).reshape(shape)
            return res
        ax = self.axis if self.axis is not None else self._axis(ins[1], len(shape))
        g = np.asarray(g, np.float64).reshape(shape)
        v = g if self.reverse else np.flip(g, ax)  # the backward scan runs the other way
        if self.exclusive:
            y = np.zeros(shape, np.float64)
            n = shape[ax]
            if n > 1:
                head = [slice(None)] * len(shape)
                tail = [slice(None)] * len(shape)
                head[ax] = slice(0, n - 1)
                tail[ax] = slice(1, n)
                y[tuple(tail)] = np.cumsum(v[tuple(head)], axis=ax)
        else:
            y = np.cumsum(v, axis=ax)
        res[0] = np.ascontiguousarray(y if self.reverse else np.flip(y, ax), dtype=np.float32)
        return res


@register
class CumProd(_Cumulative):
    op_type = "CumProd"
    prod = True
    dtypes = ("uint32", "uint64", "int32", "int64", "float16", "float32", "float64")

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 26:
            raise self.error(f"CumProd exists from opset 26 on; the model has opset {opset}")


__all__ = ["CumProd", "CumSum"]
