"""Scatter family: ScatterElements (and its deprecated alias Scatter), ScatterND and TensorScatter.

The output is a copy of ``data`` with updates applied, ``out[q] = f(out[q], u)``, for every update in the
row-major order of the indices; f is the ``reduction``: none (``u``; the last of duplicate indices wins, as in
onnx's reference), add, mul, max, min (max / min as ``np.maximum`` / ``np.minimum``).

* ScatterElements (opset 11, 13; ``reduction`` add / mul from 16, max / min from 18) and Scatter (opset 9,
  deprecated in 11): indices and updates share one shape, of the data's rank (dims off the axis no larger than
  the data's); ``out[p with p[axis] = idx[p]] = f(., updates[p])``.
* ScatterND (opset 11, 13; ``reduction`` as above): with q = indices.shape[-1],
  ``out[idx[K..., :]] = f(., updates[K...])`` where each index tuple picks the slice data.shape[q:]; updates
  have the shape indices.shape[:-1] + data.shape[q:].
* TensorScatter (opset 24, the KV-cache update): ``out = past_cache`` with ``update`` written along ``axis``
  (not 0, default -2) at positions ``write_indices[b] + s`` of batch b (s < update.shape[axis]); mode
  "linear" requires ``0 <= write_indices[b]`` and ``write_indices[b] + update.shape[axis] <= past_cache.shape[axis]``,
  mode "circular" wraps the positions modulo past_cache.shape[axis].

Indices may be negative (wrapped once); any index out of range raises EdgeDLError before anything is written.
float32 runs Numba kernels (:mod:`edgedl.kernels.cpu.scatter`) for every reduction; other dtypes run the
same kernels on raw bits for reduction "none" and the numpy reference otherwise. TensorScatter is a few numpy
slice copies per batch.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu.gather import check_indices, check_nd_indices, nd_offsets
from ..kernels.cpu.layout import bits_view
from ..kernels.cpu.scatter import REDUCTIONS, scatter_elements, scatter_nd
from ..registry import Kernel, Op, ref_kernel, register
from .common import normalize_axis
from .gather import _check_flat, _index_error, check_elements_shapes, elements_index, elements_layout

_UFUNC = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _reduction(op: Op) -> str:
    red = op.attr("reduction", "none")
    red = red.decode() if isinstance(red, bytes) else str(red)
    allowed = ("none",) if op.opset < 16 else ("none", "add", "mul") if op.opset < 18 else tuple(REDUCTIONS)
    if red not in allowed:
        if red in REDUCTIONS:
            since = 16 if red in ("add", "mul") else 18
            raise op.error(f"reduction '{red}' needs opset {since}, the model has opset {op.opset}")
        raise op.error(f"reduction '{red}' is not one of {', '.join(REDUCTIONS)}")
    return red


def _last_wins(keys: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each key (sorted by key): the update that wins with reduction none."""
    n = keys.size
    _, first_rev = np.unique(keys[::-1], return_index=True)
    return n - 1 - first_rev


@register
class ScatterElements(Op):
    op_type = "ScatterElements"
    kernels = {"cpu": ("float32",)}
    num_inputs = (3, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", 0))
        self.reduction = _reduction(self)

    def infer(self, ins, consts):
        data, ind, upd = ins
        axis = check_elements_shapes(self, data, ind, self.axis_attr)
        if tuple(upd.shape) != tuple(ind.shape):
            raise self.error(f"updates have shape {tuple(upd.shape)}, indices {tuple(ind.shape)}: they must be equal")
        if upd.dtype != data.dtype:
            raise self.error(f"updates have dtype {np.dtype(upd.dtype).name}, data {np.dtype(data.dtype).name}")
        if consts[1] is not None:
            _check_flat(self, consts[1], data.shape[axis])
        return [TensorType(tuple(data.shape), data.dtype)]

    def ref(self, data, indices, updates):
        axis = normalize_axis(self, self.axis_attr, data.ndim)
        _check_flat(self, indices, data.shape[axis])
        out = np.array(data, copy=True)
        if indices.size == 0:
            return [out]
        index = elements_index(indices, axis, data.shape[axis])
        if self.reduction == "none":
            flat = np.ravel_multi_index(tuple(np.broadcast_to(g, indices.shape).reshape(-1) for g in index),
                                        data.shape)
            keep = _last_wins(flat)
            out.reshape(-1)[flat[keep]] = updates.reshape(-1)[keep]
        else:
            with np.errstate(all="ignore"):
                _UFUNC[self.reduction].at(out, index, updates)
        return [out]

    def build(self, ins, outs, consts):
        data, ind, _ = ins
        dt = np.dtype(data.dtype)
        if not (dt == np.float32 or (self.reduction == "none" and dt.itemsize in (1, 2, 4, 8))):
            return ref_kernel(self)
        axis = normalize_axis(self, self.axis_attr, len(data.shape))
        dim = int(data.shape[axis])
        base, ka, inner, stride = elements_layout(data.shape, ind.shape, axis)
        red = REDUCTIONS[self.reduction]
        view = (lambda a: a.reshape(-1)) if dt == np.float32 else bits_view
        checked = consts[1] is not None

        def run(inputs, outputs, scratch):
            np.copyto(outputs[0], inputs[0])
            idx = np.ascontiguousarray(inputs[1]).reshape(-1)
            if idx.size == 0:
                return
            if not checked:
                bad = check_indices(idx, dim)
                if bad >= 0:
                    raise _index_error(self, inputs[1], bad, dim)
            scatter_elements(view(outputs[0]), idx, view(np.ascontiguousarray(inputs[2])), base, ka, inner, dim,
                             stride, red)

        return Kernel(run)


@register
class Scatter(ScatterElements):
    """Scatter (opset 9; deprecated in 11 in favour of ScatterElements, same semantics, no reduction)."""

    op_type = "Scatter"


@register
class ScatterND(Op):
    op_type = "ScatterND"
    kernels = {"cpu": ("float32",)}
    num_inputs = (3, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.reduction = _reduction(self)

    def infer(self, ins, consts):
        data, ind, upd = ins
        r, q = len(data.shape), len(ind.shape)
        if r < 1 or q < 1:
            raise self.error(f"data and indices must have rank >= 1, got ranks {r} and {q}")
        if np.dtype(ind.dtype).name not in ("int32", "int64"):
            raise self.error(f"indices must be int64 (or int32), got {np.dtype(ind.dtype).name}")
        last = int(ind.shape[-1])
        if last > r:
            raise self.error(f"indices.shape[-1] = {last} exceeds the data rank {r}")
        want = tuple(ind.shape[:-1]) + tuple(data.shape[last:])
        if tuple(upd.shape) != want:
            raise self.error(f"updates have shape {tuple(upd.shape)}, expected {want} (indices.shape[:-1] + "
                             f"data.shape[{last}:])")
        if upd.dtype != data.dtype:
            raise self.error(f"updates have dtype {np.dtype(upd.dtype).name}, data {np.dtype(data.dtype).name}")
        if consts[1] is not None:
            self._check(consts[1], data.shape)
        return [TensorType(tuple(data.shape), data.dtype)]

    def _check(self, idx, dshape):
        last = idx.shape[-1]
        if idx.size == 0 or last == 0:
            return
        dims = np.array(dshape[:last], np.int64)
        flat = np.ascontiguousarray(idx.reshape(-1, last))
        bad = check_nd_indices(flat, dims)
        if bad >= 0:
            pos = tuple(int(p) for p in np.unravel_index(bad, idx.shape))
            raise self.error(f"index {int(flat.reshape(-1)[bad])} at position {pos} is out of range for data dim "
                             f"{bad % last} of size {int(dims[bad % last])}", EdgeDLError)

    def ref(self, data, indices, updates):
        self._check(indices, data.shape)
        out = np.array(data, copy=True)
        last = indices.shape[-1]
        rows = int(np.prod(indices.shape[:-1], dtype=np.int64))
        if rows == 0:
            return [out]
        dims = np.array(data.shape[:last], np.int64)
        ind = indices.astype(np.int64).reshape(rows, last)
        ind = np.where(ind < 0, ind + dims, ind)
        upd = updates.reshape((rows,) + tuple(data.shape[last:]))
        if last == 0:  # every update covers the whole tensor, one after the other
            with np.errstate(all="ignore"):
                for r in range(rows):
                    out[...] = upd[r] if self.reduction == "none" else _UFUNC[self.reduction](out, upd[r])
            return [out]
        if self.reduction == "none":
            keep = _last_wins(np.ravel_multi_index(tuple(ind.T), tuple(dims)))
            out[tuple(ind[keep].T)] = upd[keep]
        else:
            with np.errstate(all="ignore"):
                _UFUNC[self.reduction].at(out, tuple(ind.T), upd)
        return [out]

    def build(self, ins, outs, consts):
        data, ind, _ = ins
        dt = np.dtype(data.dtype)
        if not (dt == np.float32 or (self.reduction == "none" and dt.itemsize in (1, 2, 4, 8))):
            return ref_kernel(self)
        shape = tuple(int(v) for v in data.shape)
        last = int(ind.shape[-1])
        strides = [1] * len(shape)
        for d in range(len(shape) - 2, -1, -1):
            strides[d] = strides[d + 1] * shape[d + 1]
        dims = np.array(shape[:last], np.int64)
        tstrides = np.array(strides[:last], np.int64)
        slice_size = int(np.prod(shape[last:], dtype=np.int64))
        rows = int(np.prod(ind.shape[:-1], dtype=np.int64))
        red = REDUCTIONS[self.reduction]
        view = (lambda a: a.reshape(-1)) if dt == np.float32 else bits_view
        const_off = None
        if consts[1] is not None:
            const_off = np.zeros(rows, np.int64)
            if rows and last:
                nd_offsets(np.ascontiguousarray(consts[1].reshape(rows, last)), dims, tstrides, const_off)

        def run(inputs, outputs, scratch):
            np.copyto(outputs[0], inputs[0])
            if rows == 0 or slice_size == 0:
                return
            if const_off is not None:
                off = const_off
            else:
                off = scratch[:8 * rows].view(np.int64)
                if last:
                    idx = np.ascontiguousarray(inputs[1]).reshape(rows, last)
                    if check_nd_indices(idx, dims) >= 0:
                        self._check(inputs[1], shape)  # raises with the position and value
                    nd_offsets(idx, dims, tstrides, off)
                else:
                    off[:] = 0
            scatter_nd(view(outputs[0]), off, view(np.ascontiguousarray(inputs[2])), slice_size, red)

        return Kernel(run, scratch_bytes=0 if const_off is not None else 8 * rows)


@register
class TensorScatter(Op):
    op_type = "TensorScatter"
    num_inputs = (2, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        mode = self.attr("mode", "linear")
        self.mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if self.mode not in ("linear", "circular"):
            raise self.error(f"mode '{self.mode}' is not 'linear' or 'circular'")
        self.axis_attr = int(self.attr("axis", -2))

    def _axis(self, rank: int) -> int:
        if rank < 2:
            raise self.error(f"past_cache must have rank >= 2 (batch, ..., sequence, ...), got rank {rank}")
        axis = normalize_axis(self, self.axis_attr, rank)
        if axis == 0:
            raise self.error("axis must not be 0 (the batch dim)")
        return axis

    def infer(self, ins, consts):
        past, upd = ins[0], ins[1]
        wi = ins[2] if len(ins) > 2 else None
        axis = self._axis(len(past.shape))
        if len(upd.shape) != len(past.shape) or upd.dtype != past.dtype:
            raise self.error(f"update {np.dtype(upd.dtype).name}{tuple(upd.shape)} must have the rank and dtype of "
                             f"past_cache {np.dtype(past.dtype).name}{tuple(past.shape)}")
        for d, (a, b) in enumerate(zip(upd.shape, past.shape)):
            if (d != axis and a != b) or (d == axis and a > b):
                raise self.error(f"update shape {tuple(upd.shape)} does not fit past_cache {tuple(past.shape)} "
                                 f"(equal dims, but for a sequence dim {axis} no longer than the cache's)")
        if wi is not None:
            if np.dtype(wi.dtype).kind not in "iu":
                raise self.error(f"write_indices must be int64, got {np.dtype(wi.dtype).name}")
            if tuple(wi.shape) != (past.shape[0],):
                raise self.error(f"write_indices have shape {tuple(wi.shape)}, expected ({past.shape[0]},)")
            if len(consts) > 2 and consts[2] is not None:
                self._positions(consts[2], past.shape[axis], upd.shape[axis])
        return [TensorType(tuple(past.shape), past.dtype)]

    def _positions(self, wi, size: int, seq: int) -> np.ndarray:
        """The first write position of each batch (checked, wrapped in circular mode)."""
        w = np.asarray(wi).astype(np.int64).reshape(-1)
        if self.mode == "circular":
            return np.mod(w, size) if size else w
        bad = (w < 0) | (w > size - seq)
        if bad.any():
            b = int(np.argmax(bad))
            raise self.error(f"write index {int(w[b])} of batch {b} plus the update length {seq} leaves the cache "
                             f"length {size} (linear mode needs 0 <= index <= {size - seq})", EdgeDLError)
        return w

    def _write(self, out, update, write_indices) -> None:
        """out (a copy of past_cache) with the update written in."""
        axis = self._axis(out.ndim)
        size, seq = out.shape[axis], update.shape[axis]
        if seq == 0 or out.size == 0:
            return
        nb = out.shape[0]
        pre = int(np.prod(out.shape[1:axis], dtype=np.int64))
        o4 = out.reshape(nb, pre, size, -1)
        u4 = update.reshape(nb, pre, seq, -1)
        if write_indices is None:
            o4[:, :, :seq] = u4
            return
        starts = self._positions(write_indices, size, seq)
        for b in range(nb):
            s = int(starts[b])
            first = min(seq, size - s)
            o4[b, :, s:s + first] = u4[b, :, :first]
            if first < seq:  # circular: the rest wraps to the front
                o4[b, :, :seq - first] = u4[b, :, first:]

    def ref(self, past, update, write_indices=None):
        out = np.array(past, copy=True)
        self._write(out, update, write_indices)
        return [out]

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            if len(inputs) > 2 and inputs[2] is not None:  # checked before the copy: nothing written on error
                self._positions(inputs[2], inputs[0].shape[self._axis(inputs[0].ndim)],
                                inputs[1].shape[self._axis(inputs[0].ndim)])
            np.copyto(outputs[0], inputs[0])
            self._write(outputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None)

        return Kernel(run, impl="numpy")


__all__ = ["Scatter", "ScatterElements", "ScatterND", "TensorScatter"]
