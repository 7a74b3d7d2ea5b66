"""Ops that only change the shape, never the data: Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout.

They are ``alias`` ops: the planner makes output 0 a zero-copy view of input 0 with the shape ``infer``
returned. ``build`` still works (a copy kernel) for the cases the planner cannot alias (a graph output, a
constant input, Dropout with a mask output).
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, register
from .common import const_ints, normalize_axis


def copy_kernel() -> Kernel:
    """Copy input 0 into output 0, reshaping (same element count, both C-contiguous)."""

    # NOTE: a plain memcpy: numpy's copy is as fast as a Numba loop and compiles nothing.
    def run(inputs, outputs, scratch):
        np.copyto(outputs[0].reshape(-1), inputs[0].reshape(-1))

    return Kernel(run, impl="numpy")


def _fmt_shape(dims) -> str:
    dims = tuple(int(d) for d in dims)
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _axes_list(op: Op, consts, index: int, attr_name: str = "axes") -> list[int] | None:
    """Axes from the attribute (opset < 13) or from input ``index`` (opset >= 13); None when absent."""
    if op.opset < 13:
        value = op.attr(attr_name)
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    if len(op.node.inputs) > index and op.node.inputs[index]:
        return const_ints(op, consts, index, attr_name)
    return None


class _AliasOp(Op):
    alias = True

    def build(self, ins, outs, consts):
        return copy_kernel()

    #: the gradient only needs the input's shape (``in_types``)
    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """The output gradient reshaped back to the input's shape; the other inputs (shape, axes, Dropout's
        ratio and training_mode) get none."""
        # NOTE: the result is a view of grads[0] when it is C-contiguous (these ops copy nothing forward
        # either): the caller owns both and must not accumulate into one in place while reading the other.
        res: list[np.ndarray | None] = [None] * len(self.in_types)
        if needs[0]:
            shape = tuple(self.in_types[0].shape)
            g = grads[0]
            res[0] = np.zeros(shape, np.float32) if g is None else np.asarray(g, np.float32).reshape(shape)
        return res


@register
class Reshape(_AliasOp):
    op_type = "Reshape"
    num_inputs = (1, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.allowzero = int(self.attr("allowzero", 0))
        if opset < 5:
            shape = self.attr("shape")
            if shape is None:
                raise self.error("needs a 'shape' attribute (opset < 5)")
            self.shape_attr = [int(s) for s in shape]
        else:
            self.shape_attr = None
            if len(node.inputs) < 2 or not node.inputs[1]:
                raise self.error("needs a shape input (input 1)")

    def _target(self, in_shape, requested) -> tuple[int, ...]:
        size = int(np.prod(in_shape, dtype=np.int64))
        what = f"cannot reshape {size} elements (shape {_fmt_shape(in_shape)}) into {_fmt_shape(requested)}"
        out = []
        infer_at = -1
        for i, d in enumerate(requested):
            if d == -1:
                if infer_at >= 0:
                    raise self.error(f"{what}: more than one -1 in the shape")
                infer_at = i
                out.append(1)
            elif d == 0 and not self.allowzero:
                if i >= len(in_shape):
                    raise self.error(f"{what}: 0 at position {i} copies an input dimension that does not exist")
                out.append(int(in_shape[i]))
            elif d < 0:
                raise self.error(f"{what}: invalid dimension {d}")
            else:
                out.append(int(d))
        if self.allowzero and infer_at >= 0 and 0 in requested:
            raise self.error(f"{what}: with allowzero=1 the shape cannot hold both 0 and -1")
        known = int(np.prod(out, dtype=np.int64))
        if infer_at >= 0:
            if known == 0 or size % known:
                raise self.error(what)
            out[infer_at] = size // known
        elif known != size:
            raise self.error(what)
        return tuple(out)

    def _requested(self, consts) -> list[int]:
        if self.shape_attr is not None:
            return self.shape_attr
        return const_ints(self, consts, 1, "shape")

    def infer(self, ins, consts):
        if self.shape_attr is None and ins[1] is not None and len(ins[1].shape) != 1:
            raise self.error(f"the shape input must be 1-D, got shape {ins[1].shape}")
        return [TensorType(self._target(ins[0].shape, self._requested(consts)), ins[0].dtype)]

    def ref(self, x, shape=None):
        req = self.shape_attr if shape is None else [int(v) for v in np.asarray(shape).reshape(-1)]
        return [x.reshape(self._target(x.shape, req))]


@register
class Flatten(_AliasOp):
    op_type = "Flatten"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis = int(self.attr("axis", 1))

    def _shape(self, shape) -> tuple[int, int]:
        r = len(shape)
        axis = self.axis
        if not -r <= axis <= r:
            raise self.error(f"axis {axis} is out of range for rank {r} (must be in [{-r}, {r}])")
        if axis < 0:
            axis += r
        return (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))

    def infer(self, ins, consts):
        return [TensorType(self._shape(ins[0].shape), ins[0].dtype)]

    def ref(self, x):
        return [x.reshape(self._shape(x.shape))]


@register
class Squeeze(_AliasOp):
    op_type = "Squeeze"
    num_inputs = (1, 2)

    def _out_shape(self, shape, axes) -> tuple[int, ...]:
        r = len(shape)
        if axes is None:
            return tuple(d for d in shape if d != 1)
        norm = [normalize_axis(self, a, r, "squeeze axis") for a in axes]
        if len(set(norm)) != len(norm):
            raise self.error(f"axes {axes} repeat an axis")
        for a in norm:
            if shape[a] != 1:
                raise self.error(f"cannot squeeze axis {a} of shape {_fmt_shape(shape)}: its size is "
                                 f"{shape[a]}, not 1")
        return tuple(d for i, d in enumerate(shape) if i not in norm)

    def infer(self, ins, consts):
        axes = _axes_list(self, consts, 1)
        return [TensorType(self._out_shape(ins[0].shape, axes), ins[0].dtype)]

    def ref(self, x, axes=None):
        ax = self._axes_for_ref(axes)
        return [x.reshape(self._out_shape(x.shape, ax))]

    def _axes_for_ref(self, axes):
        if self.opset < 13:
            value = self.attr("axes")
            return None if value is None else [int(a) for a in value]
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


@register
class Unsqueeze(_AliasOp):
    op_type = "Unsqueeze"
    num_inputs = (1, 2)

    def _out_shape(self, shape, axes) -> tuple[int, ...]:
        if axes is None:
            raise self.error("needs axes" + (" (attribute)" if self.opset < 13 else " (input 1)"))
        r = len(shape) + len(axes)
        norm = [normalize_axis(self, a, r, "unsqueeze axis") for a in axes]
        if len(set(norm)) != len(norm):
            raise self.error(f"axes {list(axes)} repeat an axis")
        out = []
        it = iter(shape)
        for i in range(r):
            out.append(1 if i in norm else int(next(it)))
        return tuple(out)

    def infer(self, ins, consts):
        axes = _axes_list(self, consts, 1)
        return [TensorType(self._out_shape(ins[0].shape, axes), ins[0].dtype)]

    def ref(self, x, axes=None):
        if self.opset < 13:
            value = self.attr("axes")
            ax = None if value is None else [int(a) for a in value]
        else:
            ax = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        return [x.reshape(self._out_shape(x.shape, ax))]


@register
class Identity(_AliasOp):
    op_type = "Identity"

    def infer(self, ins, consts):
        if not isinstance(ins[0], TensorType):  # a sequence or an optional passes through (an eager step)
            return [ins[0]]
        return [TensorType(ins[0].shape, ins[0].dtype)]

    def ref(self, x):
        return [x]


@register
class Dropout(_AliasOp):
    """Dropout. Inference mode (the default): the output is the input and the optional mask is all True.

    With ``training_mode`` true (opset 12+; ``is_test=0`` before opset 7) each element is kept with probability
    ``1 - ratio`` and scaled by ``1 / (1 - ratio)``; the ``seed`` attribute makes the masks repeatable (one
    random stream per op, advanced by every run). ``ratio = 0`` keeps everything."""

    op_type = "Dropout"
    num_inputs = (1, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.want_mask = len(node.outputs) > 1 and bool(node.outputs[1])
        self.always_training = opset < 7 and not int(self.attr("is_test", 0))
        # The planner's view covers output 0 only: with a mask to write, or a training flag, run a kernel.
        self.alias = (not self.want_mask and not (len(node.inputs) > 2 and node.inputs[2])
                      and not self.always_training)
        self.mask_dtype = np.dtype(np.bool_) if opset >= 10 else None
        seed = self.attr("seed")
        self._rng = np.random.default_rng(None if seed is None else int(seed))

    def infer(self, ins, consts):
        x = ins[0]
        if len(ins) > 1 and ins[1] is not None and ins[1].size != 1:
            raise self.error(f"ratio must be a scalar, got shape {ins[1].shape}")
        if len(ins) > 2 and ins[2] is not None and ins[2].size != 1:
            raise self.error(f"training_mode must be a scalar, got shape {ins[2].shape}")
        outs = [TensorType(x.shape, x.dtype)]
        if self.want_mask:
            outs.append(TensorType(x.shape, self.mask_dtype or x.dtype))
        return outs

    def _ratio(self, ratio) -> float:
        r = float(self.attr("ratio", 0.5)) if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if not 0.0 <= r < 1.0:
            raise self.error(f"ratio must be in [0, 1), got {r}")
        return r

    def _training(self, training_mode) -> bool:
        if training_mode is not None:
            return bool(np.asarray(training_mode).reshape(-1)[0])
        return self.always_training

    def _dropout(self, x, ratio, y, mask) -> None:
        r = self._ratio(ratio)
        if r == 0.0:
            np.copyto(y, x)
            if mask is not None:
                mask.fill(1)
            return
        keep = self._rng.random(x.shape) >= r
        np.multiply(x, keep, out=y, casting="unsafe")
        y *= y.dtype.type(1.0 / (1.0 - r))
        if mask is not None:
            mask[...] = keep

    def ref(self, x, ratio=None, training_mode=None):
        if self._training(training_mode):
            y = np.empty_like(x)
            mask = np.empty(x.shape, self.mask_dtype or x.dtype) if self.want_mask else None
            self._dropout(x, ratio, y, mask)
            return [y] + ([mask] if self.want_mask else [])
        outs = [x]
        if self.want_mask:
            outs.append(np.ones(x.shape, self.mask_dtype or x.dtype))
        return outs

    def build(self, ins, outs, consts):
        want_mask = self.want_mask

        # NOTE: a memcpy plus a fill: numpy does both at memory speed.
        def run(inputs, outputs, scratch):
            training = self._training(inputs[2] if len(inputs) > 2 else None)
            if training:
                self._dropout(inputs[0], inputs[1] if len(inputs) > 1 else None, outputs[0],
                              outputs[1] if want_mask else None)
                return
            np.copyto(outputs[0].reshape(-1), inputs[0].reshape(-1))
            if want_mask:
                outputs[1].fill(1)

        return Kernel(run, impl="numpy")
