"""ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceSumSquare, ReduceL1, ReduceL2, ReduceLogSum,
ReduceLogSumExp, ReduceProd.

Axes come from the ``axes`` attribute before the opset where they became an input (ReduceSum: 13, the
others: 18) and from the optional ``axes`` input (a constant) from then on. No axes, or an empty axes
tensor, reduces every axis unless ``noop_with_empty_axes`` = 1, which makes the op an identity.
Reducing an empty set gives the identity: 0 (sum, sum of squares, L1, L2), 1 (product), -inf (log-sum,
log-sum-exp), NaN (mean), the lowest value of the dtype (max: -inf) or the highest (min: inf).

ReduceL1 = sum(|x|), ReduceL2 = sqrt(sum(x**2)), ReduceLogSum = log(sum(x)), ReduceLogSumExp =
log(sum(exp(x))) (computed as m + log(sum(exp(x - m))) with m the largest finite element), ReduceProd =
prod(x). Integer inputs compute in their own dtype (L2 and the logs through float64, truncated back);
ReduceLogSum and ReduceLogSumExp take floats only from opset 28.

float32 runs the Numba kernels of :mod:`edgedl.kernels.cpu.reduce` (float64 accumulation for sums);
other dtypes (and empty inputs) run the numpy reference. The float references accumulate in float64.
"""
from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu import reduce as K
from ..registry import Kernel, Op, ref_kernel, register
from .common import const_ints, normalize_axis, require_dtype
from .elementwise import FLOAT_DTYPES, NUMERIC_DTYPES


class _Reduce(Op):
    kernels = {"cpu": ("float32",)}
    num_inputs = (1, 2)
    #: first opset where axes is an input instead of an attribute
    axes_input_since: ClassVar[int] = 18
    kind: ClassVar[int]
    dtypes: ClassVar[tuple] = NUMERIC_DTYPES

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.keepdims = bool(int(self.attr("keepdims", 1)))
        self.noop = bool(int(self.attr("noop_with_empty_axes", 0)))
        self.axes_attr = self.attr("axes", None)
        self.axes_from_input = opset >= self.axes_input_since
        if not self.axes_from_input and len(node.inputs) > 1 and node.inputs[1]:
            raise self.error(f"opset {opset} takes axes as an attribute, not an input")

    # --- axes ------------------------------------------------------------------------------------------
    def _axes(self, rank: int, given) -> tuple[int, ...] | None:
        """Normalized, sorted axes; None means identity (noop_with_empty_axes with no axes)."""
        if given is None and self.axes_attr is not None:
            given = list(self.axes_attr)
        axes = [] if given is None else [int(a) for a in np.asarray(given).reshape(-1)]
        if not axes:
            return None if self.noop else tuple(range(rank))
        norm = [normalize_axis(self, a, rank, "reduction axis") for a in axes]
        if len(set(norm)) != len(norm):
            raise self.error(f"axes {axes} repeat an axis")
        return tuple(sorted(norm))

    def _given(self, consts):
        if self.axes_from_input and len(self.node.inputs) > 1 and self.node.inputs[1]:
            return const_ints(self, consts, 1, "axes")
        return None

    def _out_shape(self, shape, axes):
        if axes is None:
            return tuple(shape)
        if self.keepdims:
            return tuple(1 if k in axes else d for k, d in enumerate(shape))
        return tuple(d for k, d in enumerate(shape) if k not in axes)

    # --- the contract ----------------------------------------------------------------------------------
    def infer(self, ins, consts):
        require_dtype(self, ins[0], self.dtypes)
        if len(ins) > 1 and ins[1] is not None:
            if np.dtype(ins[1].dtype) != np.int64:
                raise self.error(f"axes must be int64, got {np.dtype(ins[1].dtype).name}")
            if len(ins[1].shape) != 1:
                raise self.error(f"axes must be 1-D, got shape {tuple(ins[1].shape)}")
        axes = self._axes(len(ins[0].shape), self._given(consts))
        return [TensorType(self._out_shape(ins[0].shape, axes), ins[0].dtype)]

    def reduce(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def ref(self, x, axes_value=None):
        axes = self._axes(x.ndim, axes_value)
        if axes is None:
            return [x.copy()]
        with np.errstate(all="ignore"):
            y = self.reduce(x, axes)
        return [np.asarray(y).reshape(self._out_shape(x.shape, axes)).astype(x.dtype)]

    def _backward_linear(self, grads, ins, scale_by_count: bool):
        """Sum and mean: the output gradient broadcast back over the reduced axes (divided by their size for
        a mean)."""
        g = grads[0]
        x_t = self.in_types[0]
        rest = [None] * (len(ins) - 1)
        if g is None:
            return [None] + rest
        axes = self._axes(len(x_t.shape), ins[1] if len(ins) > 1 else None)
        g = np.asarray(g, np.float32)
        if axes is None:
            return [g.reshape(x_t.shape).copy()] + rest
        kept = tuple(1 if k in axes else d for k, d in enumerate(x_t.shape))
        gx = np.broadcast_to(g.reshape(kept), x_t.shape)
        if scale_by_count:
            count = int(np.prod([x_t.shape[a] for a in axes], dtype=np.int64))
            gx = gx * np.float32(1.0 / max(count, 1))
        return [np.ascontiguousarray(gx, np.float32)] + rest

    def build(self, ins, outs, consts):
        x = ins[0]
        axes = self._axes(len(x.shape), self._given(consts))
        if np.dtype(x.dtype) != np.float32 or x.size == 0:
            return ref_kernel(self)
        if axes is None:
            def run_copy(inputs, outputs, scratch):
                np.copyto(outputs[0], inputs[0])

            return Kernel(run_copy, impl="numpy")
        plan = K.ReducePlan(x.shape, axes, self.kind, mean=self.op_type == "ReduceMean")

        def run(inputs, outputs, scratch):
            plan(inputs[0].reshape(-1), outputs[0].reshape(-1), scratch)

        def bind(inputs, outputs, scratch, threads):
            if not (inputs[0].flags.c_contiguous and outputs[0].flags.c_contiguous):
                return None  # (a reshape would copy)
            return functools.partial(plan, inputs[0].reshape(-1), outputs[0].reshape(-1), scratch)

        return Kernel(run, scratch_bytes=plan.scratch_bytes, bind=bind)

    def build_cuda(self, ins, outs, consts):
        """One contiguous block of float32 axes (the usual: the last axes, or the spatial ones)."""
        from ..kernels.cuda.reduce import KINDS, Reduce

        x = ins[0]
        if self.op_type not in KINDS or np.dtype(x.dtype) != np.float32 or x.size == 0:
            return None
        try:
            axes = self._axes(len(x.shape), self._given(consts))
        except EdgeDLError:
            return None  # axes computed at run time
        if axes is None or list(axes) != list(range(axes[0], axes[-1] + 1)):
            return None
        k = Reduce(x.shape, axes[0], axes[-1], KINDS[self.op_type])
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")


@register
class ReduceSum(_Reduce):
    op_type = "ReduceSum"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    axes_input_since = 13
    kind = K.R_SUM
    grad_inputs = (1,)

    def backward(self, grads, ins, outs, needs):
        return self._backward_linear(grads, ins, False)

    def reduce(self, x, axes):
        if x.dtype.kind == "f":
            return np.sum(x.astype(np.float64), axis=axes)
        return np.sum(x, axis=axes, dtype=x.dtype)


@register
class ReduceMean(_Reduce):
    op_type = "ReduceMean"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    kind = K.R_SUM
    grad_inputs = (1,)

    def backward(self, grads, ins, outs, needs):
        return self._backward_linear(grads, ins, True)

    def reduce(self, x, axes):
        if x.dtype.kind == "f":
            return np.mean(x.astype(np.float64), axis=axes)
        return np.mean(x, axis=axes)


def _extreme_identity(dtype: np.dtype, lowest: bool):
    """The value a max (lowest=True) or min over an empty set gives."""
    if dtype == np.bool_:
        return not lowest
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return info.min if lowest else info.max
    return -np.inf if lowest else np.inf


@register
class ReduceMax(_Reduce):
    op_type = "ReduceMax"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    kind = K.R_MAX
    dtypes = NUMERIC_DTYPES + ("bool",)

    def reduce(self, x, axes):
        if x.size == 0:
            return np.maximum.reduce(x, axis=axes, initial=_extreme_identity(x.dtype, True))
        return np.maximum.reduce(x, axis=axes)


@register
class ReduceMin(_Reduce):
    op_type = "ReduceMin"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    kind = K.R_MIN
    dtypes = NUMERIC_DTYPES + ("bool",)

    def reduce(self, x, axes):
        if x.size == 0:
            return np.minimum.reduce(x, axis=axes, initial=_extreme_identity(x.dtype, False))
        return np.minimum.reduce(x, axis=axes)


@register
class ReduceSumSquare(_Reduce):
    op_type = "ReduceSumSquare"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    kind = K.R_SUMSQ

    def reduce(self, x, axes):
        if x.dtype.kind == "f":
            x64 = x.astype(np.float64)
            return np.sum(x64 * x64, axis=axes)
        return np.sum(x * x, axis=axes, dtype=x.dtype)


@register
class ReduceL1(_Reduce):
    op_type = "ReduceL1"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    kind = K.R_L1

    def reduce(self, x, axes):
        if x.dtype.kind == "f":
            return np.sum(np.abs(x.astype(np.float64)), axis=axes)
        return np.sum(np.abs(x), axis=axes, dtype=x.dtype)


@register
class ReduceL2(_Reduce):
    op_type = "ReduceL2"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    kind = K.R_L2

    def reduce(self, x, axes):
        if x.dtype.kind == "f":
            x64 = x.astype(np.float64)
            return np.sqrt(np.sum(x64 * x64, axis=axes))
        return np.sqrt(np.sum(x * x, axis=axes, dtype=x.dtype))


class _FloatReduceSince28(_Reduce):
    """Reductions through log / exp: integer inputs are allowed before opset 28 only."""

    def infer(self, ins, consts):
        if self.opset >= 28:
            require_dtype(self, ins[0], FLOAT_DTYPES)
        return super().infer(ins, consts)


@register
class ReduceLogSum(_FloatReduceSince28):
    op_type = "ReduceLogSum"
    kind = K.R_LOGSUM

    def reduce(self, x, axes):
        if x.dtype.kind == "f":
            return np.log(np.sum(x.astype(np.float64), axis=axes))
        return np.log(np.sum(x, axis=axes, dtype=x.dtype).astype(np.float64))


@register
class ReduceLogSumExp(_FloatReduceSince28):
    op_type = "ReduceLogSumExp"
    kind = K.R_LSE

    def reduce(self, x, axes):
        x64 = x.astype(np.float64)
        if x.size == 0:
            return np.full(np.sum(x64, axis=axes).shape, -np.inf)
        finite = np.where(np.isfinite(x64), x64, -np.inf)
        m = np.max(finite, axis=axes, keepdims=True)
        m = np.where(np.isneginf(m), 0.0, m)
        return np.squeeze(m, axis=axes) + np.log(np.sum(np.exp(x64 - m), axis=axes))


@register
class ReduceProd(_Reduce):
    op_type = "ReduceProd"
    kind = K.R_PROD

    def reduce(self, x, axes):
        if x.dtype.kind == "f":
            return np.prod(x.astype(np.float64), axis=axes)
        return np.prod(x, axis=axes, dtype=x.dtype)


__all__ = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceProd"]
