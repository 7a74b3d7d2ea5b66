"""Ops that generate tensors or masks: Range, EyeLike, OneHot and Trilu.

* Range (opset 11, 27): ``y[i] = start + i * delta`` for ``i < max(ceil((limit - start) / delta), 0)``.
  The length needs the input values: constants (or ConstantRequired, the model specializes its plan on
  them). delta 0, non-finite values and more than ``MAX_TENSOR_ELEMENTS`` elements are errors. Integers
  are computed exactly, floats in float64 (float16 with opset 27's ``stash_type`` FLOAT: float32).
* EyeLike (opset 9, 22): a 2-D tensor of the input's shape, ones on diagonal ``k`` (``y[i, i + k] = 1``),
  in ``dtype`` (default: the input's). Depends only on the input shape: folded at plan time.
* OneHot (opset 9, 11): ``y`` has the shape of ``indices`` with ``depth`` inserted at ``axis``;
  ``y[..., d, ...] = on if indices[...] == d else off`` with ``values = [off, on]``. Indices in
  [-depth, -1] count from the end (opset 11; before, negative indices are out of range); out-of-range
  indices give a row of ``off`` (the spec). Float indices are truncated to integers. ``depth`` is needed at
  plan time and bounded by ``MAX_TENSOR_ELEMENTS``.
* Trilu (opset 14): keeps the elements with ``j - i >= k`` (``upper`` = 1, default) or ``j - i <= k`` of every
  matrix over the last two axes, zero elsewhere; ``k`` is an optional int64 scalar input (default 0), read
  at run time when it is not a constant. Every dtype of 1, 2, 4 or 8 bytes runs the Numba kernel of
  :mod:`edgedl.kernels.cpu.cumulative`.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import EdgeDLError
from ..ir import MAX_TENSOR_ELEMENTS, TensorType, check_shape
from ..kernels.cpu.cumulative import trilu
from ..kernels.cpu.layout import bits_view
from ..registry import Kernel, Op, register
from .common import const_input, normalize_axis
from .gather import onnx_elem_dtype
from .layout import ALL_DTYPES


def _scalar(op: Op, value, what: str, cls=None):
    a = np.asarray(value)
    if a.size != 1:
        raise op.error(f"{what} must be a scalar, got shape {a.shape}", *(cls,) if cls else ())
    return a.reshape(-1)[0]


# --------------------------------------------------------------------------------------------------------
@register
class Range(Op):
    op_type = "Range"
    num_inputs = (3, 3)
    DTYPES = ("float32", "float64", "int16", "int32", "int64", "float16")

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.stash = int(self.attr("stash_type", 1)) if opset >= 27 else None
        if self.stash is not None and self.stash not in (1, 11):
            raise self.error(f"stash_type must be FLOAT (1) or DOUBLE (11), got {self.stash}")

    def _values(self, consts):
        return [_scalar(self, const_input(self, consts, k, what), what)
                for k, what in enumerate(("start", "limit", "delta"))]

    def _count(self, start, limit, delta, dtype) -> int:
        if np.dtype(dtype).kind in "iu":
            s, lim, d = int(start), int(limit), int(delta)
            if d == 0:
                raise self.error("delta is 0: the range would never reach its limit")
            n = max(-((s - lim) // d), 0)  # ceil((lim - s) / d)
        else:
            s, lim, d = float(start), float(limit), float(delta)
            if not all(math.isfinite(v) for v in (s, lim, d)):
                raise self.error(f"start, limit and delta must be finite, got {s}, {lim}, {d}")
            if d == 0:
                raise self.error("delta is 0: the range would never reach its limit")
            q = math.ceil((lim - s) / d)
            n = max(q, 0)
        if n > MAX_TENSOR_ELEMENTS:
            raise self.error(f"the range from {start} to {limit} by {delta} has {n} elements, more than edgedl "
                             f"accepts ({MAX_TENSOR_ELEMENTS})")
        return int(n)

    def infer(self, ins, consts):
        t0 = ins[0]
        for k, t in enumerate(ins):
            if t.dtype != t0.dtype:
                raise self.error(f"start, limit and delta must share one dtype, got "
                                 f"{', '.join(np.dtype(t.dtype).name for t in ins)}")
            if t.size != 1 or len(t.shape) > 1:
                raise self.error(f"input {k} must be a scalar, got shape {tuple(t.shape)}")
        if np.dtype(t0.dtype).name not in self.DTYPES:
            raise self.unsupported(f"dtype {np.dtype(t0.dtype).name} is not supported; supported: "
                                   f"{', '.join(self.DTYPES)}")
        start, limit, delta = self._values(consts)
        return [TensorType((self._count(start, limit, delta, t0.dtype),), t0.dtype)]

    def ref(self, start, limit, delta):
        dtype = np.asarray(start).dtype
        s, lim, d = self._values([start, limit, delta])
        n = self._count(s, lim, d, dtype)
        if dtype.kind in "iu":
            return [(int(s) + np.arange(n, dtype=np.int64) * int(d)).astype(dtype)]
        work = np.float64
        if dtype == np.float16 and self.stash == 1:
            work = np.float32
        i = np.arange(n, dtype=work)
        return [(work(s) + i * work(d)).astype(dtype)]


# --------------------------------------------------------------------------------------------------------
@register
class EyeLike(Op):
    op_type = "EyeLike"
    shape_only = True

    def __init__(self, node, opset):
        super().__init__(node, opset)
        dt = self.attr("dtype")
        self.dtype = None if dt is None else onnx_elem_dtype(self, dt, "dtype")
        self.k = int(self.attr("k", 0))

    def infer(self, ins, consts):
        x = ins[0]
        if len(x.shape) != 2:
            raise self.error(f"input must be 2-D, got shape {tuple(x.shape)}")
        return [TensorType(tuple(x.shape), self.dtype if self.dtype is not None else x.dtype)]

    def ref(self, x):
        if x.ndim != 2:
            raise self.error(f"input must be 2-D, got shape {x.shape}")
        rows, cols = x.shape
        dtype = self.dtype if self.dtype is not None else x.dtype
        y = np.zeros((rows, cols), dtype)
        k = self.k
        i = np.arange(max(0, -k), min(rows, cols - k)) if -rows < k < cols else np.arange(0)
        y[i, i + k] = 1
        return [y]


# --------------------------------------------------------------------------------------------------------
@register
class OneHot(Op):
    op_type = "OneHot"
    num_inputs = (3, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", -1))

    def _depth(self, consts) -> int:
        v = _scalar(self, const_input(self, consts, 1, "depth"), "depth")
        if isinstance(v, (np.floating, float)):
            if not math.isfinite(float(v)):
                raise self.error(f"depth must be finite, got {v}")
            v = math.trunc(float(v))
        d = int(v)
        if d < 1:
            raise self.error(f"depth must be positive, got {d}")
        if d > MAX_TENSOR_ELEMENTS:
            raise self.error(f"depth {d} is more than edgedl accepts ({MAX_TENSOR_ELEMENTS})")
        return d

    def _geometry(self, ind_shape, consts):
        depth = self._depth(consts)
        rank = len(ind_shape)
        axis = normalize_axis(self, self.axis_attr, rank + 1)
        shape = tuple(ind_shape[:axis]) + (depth,) + tuple(ind_shape[axis:])
        check_shape(shape, f"{self.node.describe()}: output")
        outer = int(np.prod(ind_shape[:axis], dtype=np.int64))
        inner = int(np.prod(ind_shape[axis:], dtype=np.int64))
        return depth, axis, shape, outer, inner

    def infer(self, ins, consts):
        ind, dep, val = ins
        if np.dtype(ind.dtype).kind not in "iuf":
            raise self.error(f"indices must be numbers, got {np.dtype(ind.dtype).name}")
        if np.dtype(dep.dtype).kind not in "iuf":
            raise self.error(f"depth must be a number, got {np.dtype(dep.dtype).name}")
        if val.size != 2 or len(val.shape) != 1:
            raise self.error(f"values must be the 1-D pair [off_value, on_value], got shape {tuple(val.shape)}")
        _, _, shape, _, _ = self._geometry(ind.shape, consts)
        return [TensorType(shape, val.dtype)]

    def _fill(self, indices, values, out, depth, outer, inner):
        """Write the one-hot of ``indices`` into ``out`` viewed as (outer, depth, inner)."""
        idx = np.asarray(indices)
        with np.errstate(invalid="ignore"):
            if idx.dtype.kind == "f":
                idx = np.where(np.isfinite(idx), idx, -2.0 * depth - 2)  # NaN / inf: out of range
                idx = np.trunc(idx).clip(-2 * depth - 2, 2 * depth + 2)
            elif idx.dtype.kind == "u":
                idx = np.minimum(idx, 2 * depth + 2)  # no wrap to negative values in int64
            idx = idx.astype(np.int64).reshape(outer, inner)
        if self.opset >= 11:
            idx = np.where(idx < 0, idx + depth, idx)
        o = out.reshape(outer, depth, inner)
        o[...] = values[0]
        ok = (idx >= 0) & (idx < depth)
        r, c = np.nonzero(ok)
        o[r, idx[r, c], c] = values[1]

    def ref(self, indices, depth, values):
        d, _, shape, outer, inner = self._geometry(np.shape(indices), [indices, depth, values])
        out = np.empty(shape, values.dtype)
        self._fill(indices, values.reshape(-1), out, d, outer, inner)
        return [out]

    def build(self, ins, outs, consts):
        depth, _, _, outer, inner = self._geometry(ins[0].shape, consts)

        # NOTE: numpy fill + one fancy-index scatter of the valid positions (no per-element Python).
        def run(inputs, outputs, scratch):
            self._fill(inputs[0], inputs[2].reshape(-1), outputs[0], depth, outer, inner)

        return Kernel(run, impl="numpy")


# --------------------------------------------------------------------------------------------------------
@register
class Trilu(Op):
    op_type = "Trilu"
    kernels = {"cpu": ALL_DTYPES}
    num_inputs = (1, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.upper = bool(int(self.attr("upper", 1)))

    def _k(self, value, cls=None) -> int:
        if value is None:
            return 0
        return int(_scalar(self, value, "k", cls))

    def infer(self, ins, consts):
        x = ins[0]
        if len(x.shape) < 2:
            raise self.error(f"input must have rank >= 2, got shape {tuple(x.shape)}")
        if len(ins) > 1 and ins[1] is not None:
            k = ins[1]
            if np.dtype(k.dtype).name != "int64":
                raise self.error(f"k must be int64, got {np.dtype(k.dtype).name}")
            if k.size != 1 or len(k.shape) > 1:
                raise self.error(f"k must be a scalar, got shape {tuple(k.shape)}")
        return [TensorType(tuple(x.shape), x.dtype)]

    def ref(self, x, k=None):
        kk = self._k(k)
        return [np.triu(x, kk) if self.upper else np.tril(x, kk)]

    def build(self, ins, outs, consts):
        x = ins[0]
        if np.dtype(x.dtype).itemsize not in (1, 2, 4, 8):
            return super().build(ins, outs, consts)
        rows, cols = int(x.shape[-2]), int(x.shape[-1])
        batch = int(np.prod(x.shape[:-2], dtype=np.int64))
        has_k = len(ins) > 1 and ins[1] is not None
        fixed = None
        if not has_k:
            fixed = 0
        elif consts[1] is not None:
            fixed = self._k(consts[1])
        upper = self.upper

        def run(inputs, outputs, scratch):
            k = fixed if fixed is not None else self._k(inputs[1], EdgeDLError)
            trilu(bits_view(np.ascontiguousarray(inputs[0])), bits_view(outputs[0]), batch, rows, cols, k, upper)

        bind = None
        if fixed is not None:
            def bind(inputs, outputs, scratch, threads):
                if not (inputs[0].flags.c_contiguous and outputs[0].flags.c_contiguous):
                    return functools.partial(run, inputs, outputs, scratch)
                return functools.partial(trilu, bits_view(inputs[0]), bits_view(outputs[0]), batch, rows, cols,
                                         fixed, upper)

        return Kernel(run, bind=bind)


__all__ = ["EyeLike", "OneHot", "Range", "Trilu"]
