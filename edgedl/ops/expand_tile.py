"""Expand and Tile: broadcast copies.

* Expand (opset 8, 13): ``y = x`` broadcast (numpy rules, both ways) with ``shape``: the output shape is
  ``broadcast(x.shape, shape)``, so a 1 in ``shape`` keeps the input dim.
* Tile (opset 6, 13): ``y[i_0, ..., i_{r-1}] = x[i_0 mod d_0, ..., i_{r-1} mod d_{r-1}]``, output dims
  ``d_a * repeats[a]``. Opset 1 took scalar ``tiles`` and ``axis`` inputs: ``repeats`` is ``tiles`` on that axis
  and 1 elsewhere.

The output shape depends on the values of ``shape`` / ``repeats``: constants give exact output types at plan
time; values computed in the model raise ConstantRequired (the model specializes its plan on them). Sizes
are checked against ``MAX_TENSOR_ELEMENTS``. Every dtype of 1, 2, 4 or 8 bytes runs the Numba broadcast copy
of :mod:`edgedl.kernels.cpu.expand_tile` (a Tile is the Expand of x viewed as (1, d0, 1, d1, ...) to
(r0, d0, r1, d1, ...)).

Backward: Expand sums dy over the broadcast axes; Tile views dy as (r0, d0, r1, d1, ...) and sums over
the r axes (float64 sums). The shape / repeats inputs get no gradient.
"""
from __future__ import annotations

import functools

import numpy as np

from ..ir import TensorType, check_shape
from ..kernels.cpu.expand_tile import make_broadcast, tile_shapes
from ..kernels.cpu.layout import bits_view
from ..registry import Kernel, Op, register
from .common import broadcast_shapes, const_ints, normalize_axis, unbroadcast
from .layout import ALL_DTYPES


def _broadcast_kernel(in_shape, view_shape, out_shape, dtype) -> Kernel:
    """A kernel copying input 0 (``in_shape``, viewed as ``view_shape``) broadcast to ``out_shape`` into output 0
    (a flat copy of the same elements)."""
    if np.dtype(dtype).itemsize not in (1, 2, 4, 8):
        def run_np(inputs, outputs, scratch):
            np.copyto(outputs[0].reshape(out_shape), np.broadcast_to(inputs[0].reshape(view_shape), out_shape))
        return Kernel(run_np, impl="numpy")
    fn = make_broadcast(view_shape, out_shape)

    def run(inputs, outputs, scratch):
        fn(bits_view(np.ascontiguousarray(inputs[0])), bits_view(outputs[0]))

    def bind(inputs, outputs, scratch, threads):
        if not (inputs[0].flags.c_contiguous and outputs[0].flags.c_contiguous):
            return functools.partial(run, inputs, outputs, scratch)
        return functools.partial(fn, bits_view(inputs[0]), bits_view(outputs[0]))

    return Kernel(run, bind=bind)


# --------------------------------------------------------------------------------------------------------
@register
class Expand(Op):
    op_type = "Expand"
    kernels = {"cpu": ALL_DTYPES, "cuda": ALL_DTYPES}
    num_inputs = (2, 2)

    def _out_shape(self, x_shape, consts) -> tuple[int, ...]:
        shape = const_ints(self, consts, 1, "shape")
        if any(d < 0 for d in shape):
            raise self.error(f"shape {shape} has a negative dimension")
        out = broadcast_shapes(self, tuple(x_shape), tuple(shape))
        return check_shape(out, f"{self.node.describe()}: output")

    def infer(self, ins, consts):
        x, s = ins[0], ins[1]
        if len(s.shape) != 1:
            raise self.error(f"shape must be a 1-D tensor, got shape {tuple(s.shape)}")
        if np.dtype(s.dtype).kind not in "iu":
            raise self.error(f"shape must be int64, got {np.dtype(s.dtype).name}")
        return [TensorType(self._out_shape(x.shape, consts), x.dtype)]

    def ref(self, x, shape):
        out = self._out_shape(x.shape, [x, shape])
        return [np.array(np.broadcast_to(x, out))]

    def build(self, ins, outs, consts):
        x = ins[0]
        out = tuple(outs[0].shape)
        view = (1,) * (len(out) - len(x.shape)) + tuple(x.shape)
        return _broadcast_kernel(x.shape, view, out, x.dtype)

    def build_cuda(self, ins, outs, consts):
        if ins[0].dtype == object:
            return None
        from ..kernels.cuda.copy import StridedCopy, contiguous_strides
        from ..kernels.cuda.elementwise import broadcast_strides

        out = tuple(outs[0].shape)
        k = StridedCopy(out, broadcast_strides(ins[0].shape, out), contiguous_strides(out))
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx: dy summed over the broadcast axes (float64 sums); shape: none."""
        res: list[np.ndarray | None] = [None, None]
        if needs[0]:
            shape = tuple(self.in_types[0].shape)
            g = grads[0]
            res[0] = np.zeros(shape, np.float32) if g is None else unbroadcast(np.asarray(g), shape)
        return res


# --------------------------------------------------------------------------------------------------------
@register
class Tile(Op):
    op_type = "Tile"
    kernels = {"cpu": ALL_DTYPES}
    num_inputs = (2, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        n = len([i for i in node.inputs if i])
        if opset < 6 and n != 3:
            raise self.error("takes 3 inputs (input, tiles, axis) before opset 6")
        if opset >= 6 and n != 2:
            raise self.error("takes 2 inputs (input, repeats) from opset 6 on")

    def _repeats(self, rank: int, consts) -> list[int]:
        if self.opset < 6:
            tiles = const_ints(self, consts, 1, "tiles")
            axis = const_ints(self, consts, 2, "axis")
            if len(tiles) != 1 or len(axis) != 1:
                raise self.error(f"tiles and axis must be scalars, got {tiles} and {axis}")
            reps = [1] * rank
            reps[normalize_axis(self, axis[0], rank)] = tiles[0]
        else:
            reps = const_ints(self, consts, 1, "repeats")
            if len(reps) != rank:
                raise self.error(f"repeats {reps} has {len(reps)} entries for an input of rank {rank}")
        if any(r < 0 for r in reps):
            raise self.error(f"repeats {reps} has a negative entry")
        return reps

    def _out_shape(self, x_shape, consts) -> tuple[int, ...]:
        reps = self._repeats(len(x_shape), consts)
        out = tuple(int(d) * r for d, r in zip(x_shape, reps))
        return check_shape(out, f"{self.node.describe()}: output")

    def infer(self, ins, consts):
        x = ins[0]
        for k in range(1, len(ins)):
            t = ins[k]
            if t is not None and np.dtype(t.dtype).kind not in "iu":
                raise self.error(f"input {k} must be int64, got {np.dtype(t.dtype).name}")
        if self.opset >= 6 and len(ins[1].shape) != 1:
            raise self.error(f"repeats must be a 1-D tensor, got shape {tuple(ins[1].shape)}")
        return [TensorType(self._out_shape(x.shape, consts), x.dtype)]

    def ref(self, x, *rest):
        reps = self._repeats(x.ndim, [x, *rest])
        self._out_shape(x.shape, [x, *rest])
        return [np.tile(x, reps) if x.ndim else x.copy()]

    def build(self, ins, outs, consts):
        x = ins[0]
        reps = [o // d if d else 0 for o, d in zip(outs[0].shape, x.shape)]
        if any(d == 0 for d in x.shape):  # nothing to copy; the output is empty too
            return Kernel(lambda i, o, s: None, impl="numpy")
        view, full = tile_shapes(x.shape, reps)
        return _broadcast_kernel(x.shape, view, full, x.dtype)

    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx: dy viewed as (r0, d0, r1, d1, ...) summed over the r axes (float64 sums); repeats: none."""
        res: list[np.ndarray | None] = [None] * len(self.in_types)
        if not needs[0]:
            return res
        shape = tuple(self.in_types[0].shape)
        g = grads[0]
        if g is None:
            res[0] = np.zeros(shape, np.float32)
            return res
        out = tuple(self.out_types[0].shape)
        reps = [o // d if d else 0 for o, d in zip(out, shape)]
        if any(d == 0 for d in shape):
            res[0] = np.zeros(shape, np.float32)
            return res
        _, full = tile_shapes(shape, reps)
        g = np.asarray(g).reshape(full)
        res[0] = g.sum(axis=tuple(range(0, 2 * len(shape), 2)), dtype=np.float64).reshape(shape).astype(np.float32)
        return res


__all__ = ["Expand", "Tile"]
