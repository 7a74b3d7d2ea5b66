"""Data-movement ops that reorder or cut tensors: Transpose, Concat, Split, Slice, Pad.

Transpose runs Numba kernels (tiled 2-D transposes over collapsed axes, any dtype through a same-size
unsigned-integer view; see :mod:`edgedl.kernels.cpu.layout`). The others are pure copies: their kernels
copy numpy slices of collapsed views straight into the preallocated outputs (``np.copyto`` and slice
assignment run at memcpy speed, so Numba would not gain anything), with every index computed in ``build``.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu.layout import bits_view, make_transpose
from ..registry import Kernel, Op, register
from .common import const_ints, normalize_axis


def bound_copies(pairs):
    """A ``Kernel.bind`` for a kernel that is a fixed list of copies: ``pairs(inputs, outputs)`` gives the
    (destination view, source view or value) pairs of those very arrays, or None where they cannot be views
    (a non-contiguous array). The bound call is then one ``np.copyto`` per pair, with every reshape and
    slice done here once: a Split, Concat, Slice or Pad of a small tensor costs its copies only, instead
    of 2-5 us of Python per step in an audio model's loop."""
    def bind(inputs, outputs, scratch, threads):
        if not all(a is None or a.flags.c_contiguous for a in (*inputs, *outputs)):
            return None
        copies = tuple(pairs(inputs, outputs))

        def run():
            for dst, src in copies:
                np.copyto(dst, src)

        return run

    return bind

#: dtypes the bit-moving kernels handle (every dtype edgedl imports)
ALL_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "bool")

INT64_MAX = np.iinfo(np.int64).max


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------------------------------------
@register
class Transpose(Op):
    op_type = "Transpose"
    kernels = {"cpu": ALL_DTYPES, "cuda": ALL_DTYPES}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        perm = self.attr("perm")
        self.perm = None if perm is None else [int(p) for p in perm]

    def _perm(self, rank: int) -> list[int]:
        if self.perm is None:
            return list(range(rank - 1, -1, -1))
        if sorted(self.perm) != list(range(rank)):
            raise self.error(f"perm {self.perm} is not a permutation of the {rank} axes of the input")
        return self.perm

    def infer(self, ins, consts):
        x = ins[0]
        perm = self._perm(len(x.shape))
        return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]

    def ref(self, x):
        return [np.transpose(x, self._perm(x.ndim))]

    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx: dy transposed by the inverse permutation (a C-contiguous copy)."""
        shape = tuple(self.in_types[0].shape)
        if not needs[0]:
            return [None]
        if grads[0] is None:
            return [np.zeros(shape, np.float32)]
        inv = np.argsort(self._perm(len(shape)))
        return [np.ascontiguousarray(np.transpose(np.asarray(grads[0], np.float32), inv))]

    def build_cuda(self, ins, outs, consts):
        x = ins[0]
        if x.dtype == object:
            return None
        from ..kernels.cuda.copy import StridedCopy, contiguous_strides

        perm = self._perm(len(x.shape))
        src = contiguous_strides(x.shape)
        k = StridedCopy(outs[0].shape, [src[p] for p in perm], contiguous_strides(outs[0].shape))
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def build(self, ins, outs, consts):
        x = ins[0]
        perm = self._perm(len(x.shape))
        if np.dtype(x.dtype).itemsize not in (1, 2, 4, 8):
            def run_np(inputs, outputs, scratch):
                np.copyto(outputs[0], np.transpose(inputs[0], perm))
            return Kernel(run_np, impl="numpy")
        fn, kind = make_transpose(x.shape, perm, np.dtype(x.dtype).itemsize)

        def run(inputs, outputs, scratch):
            fn(bits_view(inputs[0]), bits_view(outputs[0]))

        def bind(inputs, outputs, scratch, threads):
            return functools.partial(fn, bits_view(inputs[0]), bits_view(outputs[0]))

        return Kernel(run, impl="numpy" if kind == "copy" else "numba", bind=bind)


# --------------------------------------------------------------------------------------------------------
@register
class Concat(Op):
    op_type = "Concat"
    kernels = {"cuda": ALL_DTYPES}
    num_inputs = (1, 1 << 30)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if self.attr("axis") is None and opset >= 4:
            raise self.error("needs an 'axis' attribute")
        self.axis_attr = int(self.attr("axis", 1))  # (Concat-1: optional, 1 by default)

    def infer(self, ins, consts):
        present = [(k, t) for k, t in enumerate(ins) if t is not None]
        k0, t0 = present[0]
        rank = len(t0.shape)
        if rank == 0:
            raise self.error("cannot concatenate scalars (rank-0 inputs)")
        axis = normalize_axis(self, self.axis_attr, rank)
        total = 0
        for k, t in present:
            if t.dtype != t0.dtype:
                raise self.error(f"input {k} has dtype {np.dtype(t.dtype).name} but input {k0} has "
                                 f"{np.dtype(t0.dtype).name}")
            if len(t.shape) != rank:
                raise self.error(f"input {k} has rank {len(t.shape)} (shape {_shape_str(t.shape)}) but input "
                                 f"{k0} has rank {rank} (shape {_shape_str(t0.shape)})")
            for a in range(rank):
                if a != axis and t.shape[a] != t0.shape[a]:
                    raise self.error(f"input {k} has shape {_shape_str(t.shape)} and input {k0} has shape "
                                     f"{_shape_str(t0.shape)}: they differ in axis {a}, not only in the "
                                     f"concatenation axis {axis}")
            total += t.shape[axis]
        shape = list(t0.shape)
        shape[axis] = total
        return [TensorType(tuple(shape), t0.dtype)]

    def ref(self, *xs):
        xs = [x for x in xs if x is not None]
        return [np.concatenate(xs, axis=normalize_axis(self, self.axis_attr, xs[0].ndim))]

    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dy split along the axis into one piece per present input (C-contiguous copies)."""
        res: list[np.ndarray | None] = [None] * len(self.in_types)
        present = [k for k, t in enumerate(self.in_types) if t is not None]
        out_shape = tuple(self.out_types[0].shape)
        axis = normalize_axis(self, self.axis_attr, len(out_shape))
        g = grads[0]
        if g is None:
            for k in present:
                if needs[k]:
                    res[k] = np.zeros(self.in_types[k].shape, np.float32)
            return res
        g = np.asarray(g, np.float32).reshape(out_shape)
        bounds = np.cumsum([self.in_types[k].shape[axis] for k in present])[:-1]
        for k, part in zip(present, np.split(g, bounds, axis=axis)):
            if needs[k]:
                res[k] = np.ascontiguousarray(part)
        return res

    def build_cuda(self, ins, outs, consts):
        if outs[0].dtype == object:
            return None
        from ..kernels.cuda.copy import StridedCopy, contiguous_strides

        shape = outs[0].shape
        axis = normalize_axis(self, self.axis_attr, len(shape))
        dst = contiguous_strides(shape)
        copies, off = [], 0
        for k, t in enumerate(ins):
            if t is None:
                continue
            copies.append((k, StridedCopy(t.shape, contiguous_strides(t.shape), dst, 0, off * dst[axis])))
            off += t.shape[axis]

        def run(inputs, outputs, stream):
            for k, copy in copies:  # each input into its band of the output
                copy(inputs[k], outputs[0], stream)

        return Kernel(run, impl="cuda")

    def build(self, ins, outs, consts):
        present = [k for k, t in enumerate(ins) if t is not None]
        shape = outs[0].shape
        axis = normalize_axis(self, self.axis_attr, len(shape))
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        width = shape[axis] * inner
        parts = []
        off = 0
        for k in present:
            w = ins[k].shape[axis] * inner
            if w:
                parts.append((k, off, off + w))
            off += w

        # NOTE: numpy slice copies of (outer, axis*inner) views: each row is one memcpy.
        def run(inputs, outputs, scratch):
            o = outputs[0].reshape(outer, width)
            for k, a, b in parts:
                o[:, a:b] = inputs[k].reshape(outer, b - a)

        def pairs(inputs, outputs):
            o = outputs[0].reshape(outer, width)
            return [(o[:, a:b], inputs[k].reshape(outer, b - a)) for k, a, b in parts]

        return Kernel(run, impl="numpy", bind=bound_copies(pairs))


# --------------------------------------------------------------------------------------------------------
@register
class Split(Op):
    op_type = "Split"
    num_inputs = (1, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis_attr = int(self.attr("axis", 0))
        self.num_outputs = self.attr("num_outputs")
        self.n_out = len(node.outputs)
        if self.num_outputs is not None:
            if opset < 18:
                raise self.error("attribute num_outputs exists from opset 18 on")
            self.num_outputs = int(self.num_outputs)
            if self.num_outputs != self.n_out:
                raise self.error(f"num_outputs is {self.num_outputs} but the node has {self.n_out} outputs")
            if len(node.inputs) > 1 and node.inputs[1]:
                raise self.error("give either the split input or the num_outputs attribute, not both")
        if self.n_out < 1:
            raise self.error("has no outputs")

    def _sizes(self, dim: int, consts) -> list[int]:
        if self.opset < 13:
            split = self.attr("split")
            split = None if split is None else [int(s) for s in split]
        elif len(self.node.inputs) > 1 and self.node.inputs[1]:
            split = const_ints(self, consts, 1, "split")
        else:
            split = None
        n = self.n_out
        if split is not None:
            if len(split) != n:
                raise self.error(f"split {split} has {len(split)} entries for {n} outputs")
            if any(s < 0 for s in split):
                raise self.error(f"split {split} has a negative size")
            if sum(split) != dim:
                raise self.error(f"split {split} sums to {sum(split)} but the axis has size {dim}")
            return split
        if dim % n == 0:
            return [dim // n] * n
        if self.num_outputs is None:
            raise self.error(f"cannot split an axis of size {dim} into {n} equal parts")
        chunk = -(-dim // n)
        return [max(0, min(chunk, dim - k * chunk)) for k in range(n)]

    def _geometry(self, shape, consts):
        if len(shape) == 0:
            raise self.error("cannot split a scalar")
        axis = normalize_axis(self, self.axis_attr, len(shape))
        return axis, self._sizes(shape[axis], consts)

    def infer(self, ins, consts):
        x = ins[0]
        axis, sizes = self._geometry(x.shape, consts)
        outs = []
        for s in sizes:
            shape = list(x.shape)
            shape[axis] = s
            outs.append(TensorType(tuple(shape), x.dtype))
        return outs

    def ref(self, x, split=None):
        consts = [x, split]
        axis, sizes = self._geometry(x.shape, consts)
        bounds = np.cumsum(sizes)[:-1]
        return list(np.split(x, bounds, axis=axis))

    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx: the output gradients concatenated along the axis, zeros for a None (unused) one; the split
        input is integer and gets none."""
        res: list[np.ndarray | None] = [None] * len(self.in_types)
        if not needs[0]:
            return res
        axis = normalize_axis(self, self.axis_attr, len(self.in_types[0].shape))
        parts = []
        for k, t in enumerate(self.out_types):
            g = grads[k] if k < len(grads) else None
            parts.append(np.zeros(t.shape, np.float32) if g is None else np.asarray(g, np.float32).reshape(t.shape))
        res[0] = np.concatenate(parts, axis=axis)
        return res

    def build(self, ins, outs, consts):
        shape = ins[0].shape
        axis, sizes = self._geometry(shape, consts)
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        width = shape[axis] * inner
        # outputs[] holds only the named outputs: map each chunk to its slot there
        slot = {k: i for i, k in enumerate(k for k, o in enumerate(self.node.outputs) if o)}
        parts = []
        off = 0
        for k, s in enumerate(sizes):
            if s and k in slot:
                parts.append((slot[k], off, off + s * inner))
            off += s * inner

        # NOTE: numpy slice copies of an (outer, axis*inner) view: each row is one memcpy.
        def run(inputs, outputs, scratch):
            x = inputs[0].reshape(outer, width)
            for k, a, b in parts:
                np.copyto(outputs[k].reshape(outer, b - a), x[:, a:b])

        def pairs(inputs, outputs):
            x = inputs[0].reshape(outer, width)
            return [(outputs[k].reshape(outer, b - a), x[:, a:b]) for k, a, b in parts]

        return Kernel(run, impl="numpy", bind=bound_copies(pairs))


# --------------------------------------------------------------------------------------------------------
def slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    """ONNX Slice clamping for one axis: (first index, one-past-last index or -1, output length)."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
        n = max(0, (end - start + step - 1) // step)
    else:
        start = min(max(start, 0), dim - 1)
        end = min(max(end, -1), dim - 1)
        n = max(0, (start - end + (-step) - 1) // (-step))
    return start, end, n


@register
class Slice(Op):
    op_type = "Slice"
    kernels = {"cuda": ALL_DTYPES}
    num_inputs = (1, 5)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 10:
            if len([i for i in node.inputs if i]) != 1:
                raise self.error("takes 1 input before opset 10 (starts/ends/axes are attributes)")
            if self.attr("starts") is None or self.attr("ends") is None:
                raise self.error("needs 'starts' and 'ends' attributes (opset < 10)")
        elif len(node.inputs) < 3 or not node.inputs[1] or not node.inputs[2]:
            raise self.error("needs starts (input 1) and ends (input 2)")

    def _params(self, rank: int, consts) -> tuple[list[int], list[int], list[int], list[int]]:
        if self.opset < 10:
            starts = [int(v) for v in self.attr("starts")]
            ends = [int(v) for v in self.attr("ends")]
            axes = self.attr("axes")
            axes = None if axes is None else [int(v) for v in axes]
            steps = None
        else:
            starts = const_ints(self, consts, 1, "starts")
            ends = const_ints(self, consts, 2, "ends")
            n = len(self.node.inputs)
            axes = const_ints(self, consts, 3, "axes") if n > 3 and self.node.inputs[3] else None
            steps = const_ints(self, consts, 4, "steps") if n > 4 and self.node.inputs[4] else None
        if len(starts) != len(ends):
            raise self.error(f"starts has {len(starts)} entries but ends has {len(ends)}")
        if axes is None:
            if len(starts) > rank:
                raise self.error(f"{len(starts)} starts for an input of rank {rank}")
            axes = list(range(len(starts)))
        elif len(axes) != len(starts):
            raise self.error(f"axes has {len(axes)} entries but starts has {len(starts)}")
        axes = [normalize_axis(self, a, rank) for a in axes]
        if len(set(axes)) != len(axes):
            raise self.error(f"axes {axes} repeat an axis")
        if steps is None:
            steps = [1] * len(starts)
        elif len(steps) != len(starts):
            raise self.error(f"steps has {len(steps)} entries but starts has {len(starts)}")
        if any(s == 0 for s in steps):
            raise self.error(f"steps {steps} contain 0")
        return starts, ends, axes, steps

    def _slices(self, shape, consts) -> tuple[tuple, tuple[int, ...]]:
        starts, ends, axes, steps = self._params(len(shape), consts)
        sl = [slice(None)] * len(shape)
        out = list(shape)
        for s, e, a, st in zip(starts, ends, axes, steps):
            first, stop, n = slice_bounds(shape[a], s, e, st)
            out[a] = n
            if n == 0:
                sl[a] = slice(0, 0)
            else:
                sl[a] = slice(first, None if stop < 0 else stop, st)
        return tuple(sl), tuple(out)

    def build_cuda(self, ins, outs, consts):
        """Constant starts / ends / axes / steps: a strided copy (an offset, and a stride per step)."""
        x = ins[0]
        if x.dtype == object:
            return None
        try:
            sl, shape = self._slices(x.shape, consts)
        except EdgeDLError:
            return None  # bounds computed at run time
        from ..kernels.cuda.copy import StridedCopy, contiguous_strides

        base = contiguous_strides(x.shape)
        offset, strides = 0, []
        for d, s in enumerate(sl):
            first = 0 if s.start is None else s.start
            step = 1 if s.step is None else s.step
            offset += first * base[d]
            strides.append(step * base[d])
        k = StridedCopy(shape, strides, contiguous_strides(shape), offset)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def infer(self, ins, consts):
        for k in range(1, len(ins)):
            if ins[k] is not None and len(ins[k].shape) != 1:
                raise self.error(f"input {k} must be 1-D, got shape {ins[k].shape}")
        sl, shape = self._slices(ins[0].shape, consts)
        self.slices = sl  # for backward: starts / ends / axes / steps are only known here
        return [TensorType(shape, ins[0].dtype)]

    def ref(self, x, *rest):
        consts = [x, *rest]
        sl, _ = self._slices(x.shape, consts)
        return [x[sl]]

    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx: zeros with dy written back into the sliced positions (negative steps included; the slice
        never repeats an element, so an assignment is the scatter). starts / ends / axes / steps: none."""
        res: list[np.ndarray | None] = [None] * len(self.in_types)
        if not needs[0]:
            return res
        dx = np.zeros(self.in_types[0].shape, np.float32)
        g = grads[0]
        if g is not None and dx.size and np.size(g):
            dx[self.slices] = np.asarray(g, np.float32).reshape(self.out_types[0].shape)
        res[0] = dx
        return res

    def build(self, ins, outs, consts):
        sl, _ = self._slices(ins[0].shape, consts)
        empty = outs[0].size == 0

        # NOTE: one numpy strided copy of the sliced view into the output.
        def run(inputs, outputs, scratch):
            if not empty:
                np.copyto(outputs[0], inputs[0][sl])

        return Kernel(run, impl="numpy", bind=bound_copies(lambda i, o: [] if empty else [(o[0], i[0][sl])]))


# --------------------------------------------------------------------------------------------------------
@register
class Pad(Op):
    op_type = "Pad"
    num_inputs = (1, 4)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = self.attr("mode", "constant")
        if self.mode not in ("constant", "reflect", "edge", "wrap"):
            raise self.unsupported(f"mode '{self.mode}' is not supported (constant, reflect, edge, wrap)")
        if self.mode == "wrap" and opset < 19:
            raise self.error("mode 'wrap' exists from opset 19 on")
        if opset < 11:
            pads = self.attr("pads", self.attr("paddings"))
            if pads is None:
                raise self.error("needs a 'pads' attribute (opset < 11)")
            self.pads_attr = [int(p) for p in pads]
            self.value_attr = float(self.attr("value", 0.0))
        else:
            if len(node.inputs) < 2 or not node.inputs[1]:
                raise self.error("needs pads (input 1)")
            self.pads_attr = None
            self.value_attr = None

    def _pads(self, rank: int, consts) -> tuple[list[int], list[int]]:
        """Per-axis (begin, end) pads, over all axes."""
        pads = self.pads_attr if self.pads_attr is not None else const_ints(self, consts, 1, "pads")
        n = len(self.node.inputs)
        if self.opset >= 18 and n > 3 and self.node.inputs[3]:
            axes = [normalize_axis(self, a, rank) for a in const_ints(self, consts, 3, "axes")]
            if len(set(axes)) != len(axes):
                raise self.error(f"axes {axes} repeat an axis")
        else:
            axes = list(range(rank))
        if len(pads) != 2 * len(axes):
            raise self.error(f"pads has {len(pads)} values; expected 2 x {len(axes)} (begin and end for "
                             f"each padded axis)")
        begin = [0] * rank
        end = [0] * rank
        for i, a in enumerate(axes):
            begin[a] = pads[i]
            end[a] = pads[len(axes) + i]
        return begin, end

    def _geometry(self, shape, consts):
        rank = len(shape)
        begin, end = self._pads(rank, consts)
        crop = []      # input slice after negative pads
        cropped = []   # cropped size per axis
        out = []
        for a in range(rank):
            d = shape[a]
            lo, hi = max(-begin[a], 0), max(-end[a], 0)
            c = d - lo - hi
            if c < 0:
                raise self.error(f"pads ({begin[a]}, {end[a]}) on axis {a} crop more than its size {d} "
                                 f"(input shape {_shape_str(shape)})")
            crop.append(slice(lo, lo + c))
            cropped.append(c)
            pb, pe = max(begin[a], 0), max(end[a], 0)
            out.append(c + pb + pe)
            if self.mode != "constant" and (pb or pe):
                if c == 0:
                    raise self.error(f"mode '{self.mode}' cannot pad axis {a}: it has size 0 after cropping "
                                     f"(input shape {_shape_str(shape)})")
                if self.mode == "reflect" and (pb >= c or pe >= c):
                    raise self.error(f"mode 'reflect' needs pads smaller than the axis size: axis {a} has size "
                                     f"{c} and pads ({pb}, {pe}) (input shape {_shape_str(shape)})")
        pb = [max(b, 0) for b in begin]
        pe = [max(e, 0) for e in end]
        return tuple(crop), cropped, pb, pe, tuple(out)

    def _value(self, dtype, value_in):
        if self.value_attr is not None:
            v = self.value_attr
        elif value_in is None or np.asarray(value_in).size == 0:
            v = 0
        else:
            v = np.asarray(value_in).reshape(-1)[0]
        return np.asarray(v).astype(dtype)

    def infer(self, ins, consts):
        x = ins[0]
        if len(ins) > 2 and ins[2] is not None:
            if ins[2].size > 1:
                raise self.error(f"constant_value must be a scalar, got shape {ins[2].shape}")
            if ins[2].dtype != x.dtype:
                raise self.error(f"constant_value has dtype {np.dtype(ins[2].dtype).name} but the data has "
                                 f"{np.dtype(x.dtype).name}")
        if len(ins) > 1 and ins[1] is not None and self.opset >= 11 and len(ins[1].shape) != 1:
            raise self.error(f"pads must be 1-D, got shape {ins[1].shape}")
        self.geom = self._geometry(x.shape, consts)  # for backward: pads / axes are only known here
        return [TensorType(self.geom[-1], x.dtype)]

    def ref(self, x, pads=None, constant_value=None, axes=None):
        crop, _, pb, pe, _ = self._geometry(x.shape, [x, pads, constant_value, axes])
        xc = x[crop]
        width = list(zip(pb, pe))
        if self.mode == "constant":
            res = np.pad(xc, width, mode="constant", constant_values=self._value(x.dtype, constant_value))
        else:
            res = np.pad(xc, width, mode=self.mode)
        return [res.astype(x.dtype, copy=False)]

    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx: constant mode slices the interior out of dy; reflect / edge / wrap add every border element of
        dy onto the input element it copies, axis after axis (padding is separable: output index t of axis a
        reads input index src_a[t], ``np.pad(arange(size), pads, mode)``). Negatively padded (cropped) input
        elements get zero. constant_value (input 2) gets the sum of dy over the padding (constant mode; zero
        otherwise); pads and axes get none."""
        crop, cropped, pb, pe, out_shape = self.geom
        rank = len(out_shape)
        res: list[np.ndarray | None] = [None] * len(self.in_types)
        g = grads[0]
        g = np.zeros(out_shape, np.float32) if g is None else np.asarray(g, np.float32).reshape(out_shape)
        interior = tuple(slice(pb[a], pb[a] + cropped[a]) for a in range(rank))
        if needs[0]:
            if self.mode == "constant":
                gc = g[interior]
            else:
                gc = g
                for a in range(rank):
                    c, lo = cropped[a], pb[a]
                    if not (pb[a] or pe[a]):
                        continue
                    src = np.pad(np.arange(c, dtype=np.int64), (pb[a], pe[a]), mode=self.mode)
                    border = np.r_[0:lo, lo + c:lo + c + pe[a]]
                    before = (slice(None),) * a
                    acc = np.array(gc[before + (slice(lo, lo + c),)], np.float32)  # the interior: a copy
                    np.add.at(acc, before + (src[border],), gc[before + (border,)])
                    gc = acc
            dx = np.zeros(self.in_types[0].shape, np.float32)
            dx[crop] = gc
            res[0] = dx
        if len(self.in_types) > 2 and self.in_types[2] is not None and needs[2]:
            total = 0.0
            if self.mode == "constant":
                outside = np.ones(out_shape, bool)
                outside[interior] = False
                total = float(g[outside].sum(dtype=np.float64))
            res[2] = np.full(self.in_types[2].shape, total, np.float32)
        return res

    def build(self, ins, outs, consts):
        x = ins[0]
        crop, cropped, pb, pe, out_shape = self._geometry(x.shape, consts)
        rank = len(out_shape)
        interior = tuple(slice(pb[a], pb[a] + cropped[a]) for a in range(rank))
        mode = self.mode
        full = slice(None)
        has_value_input = self.opset >= 11 and len(self.node.inputs) > 2 and bool(self.node.inputs[2])
        runtime_value = has_value_input and consts[2] is None
        const_value = None
        if mode == "constant" and not runtime_value:
            const_value = self._value(x.dtype, consts[2] if has_value_input else None)

        # Border regions. Constant: a point is outside the interior; take its first such axis a: axes < a
        # are interior, axis a is a border, axes > a anything -> disjoint slabs that cover every border.
        # Other modes: after copying the interior, fill axis a's borders over (full axes < a, interior
        # axes > a) from already valid output (as np.pad does, axis after axis).
        copies = []  # (dest index tuple, source index tuple or None for the constant)
        for a in range(rank):
            before = interior[:a] if mode == "constant" else (full,) * a
            after = (full,) * (rank - a - 1) if mode == "constant" else interior[a + 1:]
            c, b, e = cropped[a], pb[a], pe[a]
            lo, hi = b, b + c  # interior along a: [lo, hi)
            if mode == "constant":
                if b:
                    copies.append((before + (slice(0, b),) + after, None))
                if e:
                    copies.append((before + (slice(hi, hi + e),) + after, None))
                continue
            spans = []  # (dest slice, source slice) along axis a
            if mode == "edge":
                if b:
                    spans.append((slice(0, b), slice(lo, lo + 1)))
                if e:
                    spans.append((slice(hi, hi + e), slice(hi - 1, hi)))
            elif mode == "reflect":
                if b:
                    spans.append((slice(0, b), slice(2 * b, b, -1)))
                if e:
                    last = hi - 1
                    stop = last - 1 - e
                    spans.append((slice(hi, hi + e), slice(last - 1, None if stop < 0 else stop, -1)))
            else:  # wrap: output index t reads interior index lo + (t - lo) mod c
                for t0, t1 in ((0, b), (hi, hi + e)):
                    t = t0
                    while t < t1:
                        s = lo + (t - lo) % c
                        n = min(t1 - t, hi - s)
                        spans.append((slice(t, t + n), slice(s, s + n)))
                        t += n
            for dst, src in spans:
                copies.append((before + (dst,) + after, before + (src,) + after))
        empty_out = int(np.prod(out_shape, dtype=np.int64)) == 0
        empty_in = int(np.prod(cropped, dtype=np.int64)) == 0

        # NOTE: numpy slice copies and fills straight into the output; every slab is computed here.
        def run(inputs, outputs, scratch):
            if empty_out:
                return
            o = outputs[0]
            value = const_value
            if mode == "constant" and value is None:
                value = self._value(o.dtype, inputs[2])
            if not empty_in:
                o[interior] = inputs[0][crop]
            elif mode == "constant":
                o.fill(value)
                return
            for dst, src in copies:
                if src is None:
                    o[dst] = value
                else:
                    o[dst] = o[src]

        def pairs(inputs, outputs):
            # in order: the interior first, then the borders (the other modes copy from filled parts)
            o = outputs[0]
            if empty_out:
                return []
            borders = [(o[d], const_value if src is None else o[src]) for d, src in copies]
            if empty_in:
                return [(o, const_value)] if mode == "constant" else borders
            return [(o[interior], inputs[0][crop])] + borders

        return Kernel(run, impl="numpy", bind=None if runtime_value else bound_copies(pairs))


__all__ = ["ALL_DTYPES", "INT64_MAX", "Concat", "Pad", "Slice", "Split", "Transpose", "slice_bounds"]
