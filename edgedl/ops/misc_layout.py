"""Less common layout ops: ReverseSequence, CenterCropPad, Col2Im, Det and MaxUnpool (numpy kernels: none
is on a hot path of the models edgedl targets; every kernel is vectorized numpy writing into the output).

* ReverseSequence (opset 10): for every batch entry b, the first ``sequence_lens[b]`` steps along
  ``time_axis`` are reversed, the rest copied: ``y[b, t] = x[b, len_b - 1 - t]`` for ``t < len_b``.
  Lengths outside [0, time steps] are an error at run time.
* CenterCropPad (opset 18): each listed axis is cropped (window start ``(dim - size) // 2``) or zero-padded
  (``(size - dim) // 2`` before, the rest after) to ``shape``, which is needed at plan time.
* Col2Im (opset 18): the inverse of im2col (PyTorch's ``fold``): input (N, C * prod(block_shape), L) with
  L the number of sliding blocks; each column element is added into the image (N, C, *image_shape) at
  ``block_index * strides - pads_begin + kernel_offset * dilations`` (positions in the padding dropped).
  ``image_shape`` and ``block_shape`` are needed at plan time.
* Det (opset 11, 22): the determinants of the (M, M) matrices over the last two axes (LU through
  ``numpy.linalg.det``; float16 computed in float32).
* MaxUnpool (opset 9, 11, 22): zeros of the output shape with ``y.flat[I[i]] = X.flat[i]``. The output
  shape is ``output_shape`` when given (needed at plan time), else (N, C, (in - 1) * stride - pad_begin -
  pad_end + kernel, ...). Indices are flat positions in the whole output, as MaxPool's Indices output is in
  its input (onnxruntime and PyTorch agree); indices outside the output are an error at run time.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType, check_shape
from ..registry import Kernel, Op, register
from .common import const_ints, normalize_axis


def _ints_attr(op: Op, name: str, n: int, default: int, lo: int) -> list[int]:
    v = op.attr(name)
    vals = [default] * n if v is None else [int(a) for a in v]
    if len(vals) != n:
        raise op.error(f"{name} {vals} has {len(vals)} entries, expected {n}")
    if any(a < lo for a in vals):
        raise op.error(f"{name} {vals} must all be >= {lo}")
    return vals


# --------------------------------------------------------------------------------------------------------
@register
class ReverseSequence(Op):
    op_type = "ReverseSequence"
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.batch_axis = int(self.attr("batch_axis", 1))
        self.time_axis = int(self.attr("time_axis", 0))
        if self.batch_axis not in (0, 1) or self.time_axis not in (0, 1) or self.batch_axis == self.time_axis:
            raise self.error(f"batch_axis ({self.batch_axis}) and time_axis ({self.time_axis}) must be 0 and 1, "
                             "one each")

    def infer(self, ins, consts):
        x, lens = ins
        if len(x.shape) < 2:
            raise self.error(f"input must have rank >= 2, got shape {tuple(x.shape)}")
        if np.dtype(lens.dtype).kind not in "iu":
            raise self.error(f"sequence_lens must be int64, got {np.dtype(lens.dtype).name}")
        nb = x.shape[self.batch_axis]
        if tuple(lens.shape) != (nb,):
            raise self.error(f"sequence_lens has shape {tuple(lens.shape)}, expected ({nb},) (the batch size)")
        if consts[1] is not None:
            self._index(consts[1], x.shape)
        return [TensorType(tuple(x.shape), x.dtype)]

    def _index(self, lens, shape) -> np.ndarray:
        """Source time index of every (batch, time) position, shaped to broadcast against the input."""
        steps = int(shape[self.time_axis])
        lens = np.asarray(lens).astype(np.int64).reshape(-1)
        bad = (lens < 0) | (lens > steps)
        if bad.any():
            b = int(np.argmax(bad))
            raise self.error(f"sequence_lens[{b}] = {int(lens[b])} is outside [0, {steps}] (the time steps)",
                             EdgeDLError)
        t = np.arange(steps, dtype=np.int64)[None, :]
        ln = lens[:, None]
        idx = np.where(t < ln, ln - 1 - t, t)  # (batch, time)
        if self.time_axis < self.batch_axis:
            idx = idx.T
        return idx.reshape(idx.shape + (1,) * (len(shape) - 2))

    def ref(self, x, lens):
        return [np.take_along_axis(x, self._index(lens, x.shape), axis=self.time_axis)]

    def build(self, ins, outs, consts):
        shape = tuple(ins[0].shape)
        fixed = None if consts[1] is None else self._index(consts[1], shape)
        axis = self.time_axis

        # NOTE: one numpy gather along the time axis with a (batch, time) index built from the lengths.
        def run(inputs, outputs, scratch):
            idx = fixed if fixed is not None else self._index(inputs[1], shape)
            outputs[0][...] = np.take_along_axis(inputs[0], idx, axis=axis)

        return Kernel(run, impl="numpy")


# --------------------------------------------------------------------------------------------------------
@register
class CenterCropPad(Op):
    op_type = "CenterCropPad"
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        axes = self.attr("axes")
        self.axes_attr = None if axes is None else [int(a) for a in axes]

    def _geometry(self, shape, consts):
        rank = len(shape)
        sizes = const_ints(self, consts, 1, "shape")
        if self.axes_attr is None:
            axes = list(range(rank))
        else:
            axes = [normalize_axis(self, a, rank) for a in self.axes_attr]
            if len(set(axes)) != len(axes):
                raise self.error(f"axes {self.axes_attr} repeat an axis")
        if len(sizes) != len(axes):
            raise self.error(f"shape {sizes} has {len(sizes)} entries for {len(axes)} axes")
        if any(s < 0 for s in sizes):
            raise self.error(f"shape {sizes} has a negative size")
        out = list(shape)
        crop = [slice(None)] * rank
        pad = [slice(None)] * rank
        for a, s in zip(axes, sizes):
            d = int(shape[a])
            out[a] = s
            if s < d:
                lo = (d - s) // 2
                crop[a] = slice(lo, lo + s)
            elif s > d:
                lo = (s - d) // 2
                pad[a] = slice(lo, lo + d)
        out = check_shape(tuple(out), f"{self.node.describe()}: output")
        return tuple(crop), tuple(pad), out

    def infer(self, ins, consts):
        if len(ins[1].shape) != 1:
            raise self.error(f"shape must be a 1-D tensor, got shape {tuple(ins[1].shape)}")
        _, _, out = self._geometry(ins[0].shape, consts)
        return [TensorType(out, ins[0].dtype)]

    def ref(self, x, shape):
        crop, pad, out = self._geometry(x.shape, [x, shape])
        y = np.zeros(out, x.dtype)
        y[pad] = x[crop]
        return [y]

    def build(self, ins, outs, consts):
        crop, pad, out = self._geometry(ins[0].shape, consts)
        pads = any(p != slice(None) for p in pad)
        empty = int(np.prod(out, dtype=np.int64)) == 0

        # NOTE: a zero fill (only when padding) and one numpy slice copy.
        def run(inputs, outputs, scratch):
            if empty:
                return
            o = outputs[0]
            if pads:
                o.fill(0)
            o[pad] = inputs[0][crop]

        return Kernel(run, impl="numpy")


# --------------------------------------------------------------------------------------------------------
@register
class Col2Im(Op):
    op_type = "Col2Im"
    num_inputs = (3, 3)

    def _geometry(self, shape, consts):
        image = const_ints(self, consts, 1, "image_shape")
        block = const_ints(self, consts, 2, "block_shape")
        nd = len(image)
        if nd < 1 or len(block) != nd:
            raise self.error(f"image_shape {image} and block_shape {block} must have the same, positive length")
        if any(v < 1 for v in image) or any(v < 1 for v in block):
            raise self.error(f"image_shape {image} and block_shape {block} must be positive")
        dil = _ints_attr(self, "dilations", nd, 1, 1)
        strides = _ints_attr(self, "strides", nd, 1, 1)
        pads = _ints_attr(self, "pads", 2 * nd, 0, 0)
        if len(shape) != 3:
            raise self.error(f"input must be 3-D (N, C * prod(block_shape), L), got shape {tuple(shape)}")
        n, ck, length = (int(d) for d in shape)
        k = int(np.prod(block, dtype=np.int64))
        if ck % k:
            raise self.error(f"input dim 1 ({ck}) is not a multiple of prod(block_shape) = {k}")
        nblocks = []
        for a in range(nd):
            span = dil[a] * (block[a] - 1) + 1
            nb = (image[a] + pads[a] + pads[nd + a] - span) // strides[a] + 1
            if nb < 1:
                raise self.error(f"block {block[a]} (dilation {dil[a]}) does not fit axis {a} of the padded image "
                                 f"({image[a]} + {pads[a]} + {pads[nd + a]})")
            nblocks.append(nb)
        if length != int(np.prod(nblocks, dtype=np.int64)):
            raise self.error(f"input dim 2 ({length}) must be the number of sliding blocks "
                             f"{' * '.join(map(str, nblocks))} = {int(np.prod(nblocks))}")
        out = check_shape((n, ck // k) + tuple(image), f"{self.node.describe()}: output")
        return image, block, dil, strides, pads, nblocks, out

    def infer(self, ins, consts):
        for k in (1, 2):
            if len(ins[k].shape) != 1 or np.dtype(ins[k].dtype).kind not in "iu":
                raise self.error(f"input {k} must be a 1-D int64 tensor, got {np.dtype(ins[k].dtype).name}"
                                 f"{tuple(ins[k].shape)}")
        *_, out = self._geometry(ins[0].shape, consts)
        return [TensorType(out, ins[0].dtype)]

    def _fold(self, x, geo, out):
        image, block, dil, strides, pads, nblocks, oshape = geo
        nd = len(image)
        n, c = oshape[0], oshape[1]
        padded = np.zeros((n, c) + tuple(image[a] + pads[a] + pads[nd + a] for a in range(nd)), out.dtype)
        cols = x.reshape((n, c, int(np.prod(block))) + tuple(nblocks))
        # NOTE: one strided numpy add per kernel offset (prod(block_shape) of them), all positions at once.
        for kk, off in enumerate(np.ndindex(*block)):
            sl = tuple(slice(off[a] * dil[a], off[a] * dil[a] + strides[a] * (nblocks[a] - 1) + 1, strides[a])
                       for a in range(nd))
            padded[(slice(None), slice(None)) + sl] += cols[:, :, kk]
        inner = tuple(slice(pads[a], pads[a] + image[a]) for a in range(nd))
        out[...] = padded[(slice(None), slice(None)) + inner]

    def ref(self, x, image_shape, block_shape):
        geo = self._geometry(x.shape, [x, image_shape, block_shape])
        out = np.empty(geo[-1], x.dtype)
        self._fold(x, geo, out)
        return [out]

    def build(self, ins, outs, consts):
        geo = self._geometry(ins[0].shape, consts)

        def run(inputs, outputs, scratch):
            self._fold(inputs[0], geo, outputs[0])

        return Kernel(run, impl="numpy")


# --------------------------------------------------------------------------------------------------------
@register
class Det(Op):
    op_type = "Det"

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype).name not in ("float16", "float32", "float64"):
            raise self.unsupported(f"input has dtype {np.dtype(x.dtype).name}; supported: float16, float32, float64")
        if len(x.shape) < 2 or x.shape[-1] != x.shape[-2]:
            raise self.error(f"input must be (..., M, M) square matrices, got shape {tuple(x.shape)}")
        return [TensorType(tuple(x.shape[:-2]), x.dtype)]

    def ref(self, x):
        work = np.float32 if x.dtype == np.float16 else x.dtype
        return [np.asarray(np.linalg.det(x.astype(work, copy=False))).astype(x.dtype)]


# --------------------------------------------------------------------------------------------------------
@register
class MaxUnpool(Op):
    op_type = "MaxUnpool"
    num_inputs = (2, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        ks = self.attr("kernel_shape")
        if ks is None:
            raise self.error("needs a 'kernel_shape' attribute")
        self.kernel = [int(k) for k in ks]
        if not self.kernel or any(k < 1 for k in self.kernel):
            raise self.error(f"kernel_shape {self.kernel} must be positive")
        nd = len(self.kernel)
        self.strides = _ints_attr(self, "strides", nd, 1, 1)
        self.pads = _ints_attr(self, "pads", 2 * nd, 0, 0)

    def _out_shape(self, x_shape, consts) -> tuple[int, ...]:
        nd = len(self.kernel)
        if len(x_shape) != nd + 2:
            raise self.error(f"input has shape {tuple(x_shape)}; kernel_shape {self.kernel} needs rank {nd + 2}")
        if len(self.node.inputs) > 2 and self.node.inputs[2]:
            out = const_ints(self, consts, 2, "output_shape")
            if len(out) != nd + 2:
                raise self.error(f"output_shape {out} must have {nd + 2} entries")
            if any(d < 0 for d in out):
                raise self.error(f"output_shape {out} has a negative dimension")
        else:
            out = [int(x_shape[0]), int(x_shape[1])]
            for a in range(nd):
                d = (int(x_shape[a + 2]) - 1) * self.strides[a] - self.pads[a] - self.pads[nd + a] + self.kernel[a]
                if d < 0:
                    raise self.error(f"axis {a + 2} of the output would have size {d}")
                out.append(d)
        return check_shape(tuple(out), f"{self.node.describe()}: output")

    def infer(self, ins, consts):
        x, ind = ins[0], ins[1]
        if np.dtype(ind.dtype).name != "int64":
            raise self.error(f"indices must be int64, got {np.dtype(ind.dtype).name}")
        if tuple(ind.shape) != tuple(x.shape):
            raise self.error(f"indices have shape {tuple(ind.shape)} but X has {tuple(x.shape)}")
        if len(ins) > 2 and ins[2] is not None and len(ins[2].shape) != 1:
            raise self.error(f"output_shape must be 1-D, got shape {tuple(ins[2].shape)}")
        out = self._out_shape(x.shape, consts)
        if consts[1] is not None:
            self._check(consts[1], int(np.prod(out, dtype=np.int64)))
        return [TensorType(out, x.dtype)]

    def _check(self, ind, size: int) -> None:
        bad = (ind < 0) | (ind >= size)
        if bad.any():
            pos = np.unravel_index(int(np.argmax(bad)), ind.shape)
            raise self.error(f"index {int(ind[pos])} at position {tuple(int(p) for p in pos)} is outside the output "
                             f"of {size} elements", EdgeDLError)

    def _unpool(self, x, ind, out):
        flat = out.reshape(-1)
        self._check(ind, flat.size)
        flat.fill(0)
        flat[ind.reshape(-1)] = x.reshape(-1)

    def ref(self, x, ind, output_shape=None):
        out = np.empty(self._out_shape(x.shape, [x, ind, output_shape]), x.dtype)
        self._unpool(x, ind, out)
        return [out]

    def build(self, ins, outs, consts):
        # NOTE: a zero fill and one numpy scatter after the index check.
        def run(inputs, outputs, scratch):
            self._unpool(inputs[0], inputs[1], outputs[0])

        return Kernel(run, impl="numpy")


__all__ = ["CenterCropPad", "Col2Im", "Det", "MaxUnpool", "ReverseSequence"]
