"""Resize (opset 10, 11, 13, 18, 19) and the deprecated Upsample (opset 7 to 9).

Resize is separable: every resized axis gets a table of K taps per output coordinate (source indices,
clamped into range, and weights), computed once at plan time exactly as onnx's reference does it
(:func:`axis_table`): coordinate transformation, nearest rounding, linear/cubic coefficients, antialiasing
filters, ``exclude_outside`` renormalization and the ``tf_crop_and_resize`` extrapolation mask.

Kernels (float32): NCHW inputs resized over H and W only, in nearest or (non-antialiased) linear mode, run a
single-pass 2-D kernel; everything else (cubic, antialias, other ranks or axes) runs one separable Numba
pass per resized axis, ping-ponging through scratch. Other dtypes run the numpy reference, which applies the
same tables in float64 and casts back as onnx's reference does (rounded and saturated for integers).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu.resize import resize_axis, resize_linear_2d, resize_nearest_2d
from ..registry import Kernel, Op, register
from .common import const_input, normalize_axis

COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_crop_and_resize", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


# --------------------------------------------------------------------------------------------------------
# Tables (the spec, shared by the reference and the kernels)
def _source_coords(ctm: str, out_len: int, in_len: int, scale: float, roi) -> tuple[np.ndarray, np.ndarray | None]:
    """Map output coordinates to input coordinates; also the extrapolation mask for tf_crop_and_resize."""
    y = np.arange(out_len, dtype=np.float64)
    width = scale * in_len  # the real-valued output length
    extrap = None
    if ctm == "align_corners":
        x = np.zeros(out_len) if width == 1 else y * (in_len - 1) / (width - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        r0, r1 = roi
        if width == 1:
            x = np.full(out_len, (r1 - r0) * (in_len - 1) / 2, dtype=np.float64)
        else:
            x = y * (r1 - r0) * (in_len - 1) / (width - 1)
        x = x + r0 * (in_len - 1)
        extrap = (x < 0) | (x > in_len - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full(out_len, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        adjustment = out_len / width
        offset = in_len / 2 * (1 - adjustment)
        x = offset + (y + 0.5) / scale - 0.5
    elif ctm == "tf_half_pixel_for_nn":
        x = (y + 0.5) / scale
    else:  # validated in __init__
        raise ValueError(ctm)
    return np.asarray(x, dtype=np.float64), extrap


def _coeffs(mode: str, ratio: np.ndarray, scale: float, cubic_a: float, antialias: bool) -> np.ndarray:
    """(out, K) filter coefficients for ratios in (0, 1] (onnx reference formulas, vectorized)."""
    r = ratio[:, None]
    a = cubic_a
    if mode == "linear":
        if not antialias:
            return np.concatenate([1 - r, r], axis=1)
        s = min(scale, 1.0)
        start = int(np.floor(-1 / s) + 1)
        footprint = 2 - 2 * start
        args = (np.arange(start, start + footprint)[None, :] - r) * s
        c = np.clip(1 - np.abs(args), 0, 1)
        return c / c.sum(axis=1, keepdims=True)
    # cubic
    if not antialias:
        return np.concatenate([
            ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1,
            ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
            ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a,
        ], axis=1)
    s = min(scale, 1.0)
    i_start = int(np.floor(-2 / s) + 1)
    i_end = 2 - i_start
    x = np.abs(s * (np.arange(i_start, i_end)[None, :] - r))
    x2 = x * x
    x3 = x2 * x
    c = np.where(x <= 1, (a + 2) * x3 - (a + 3) * x2 + 1,
                 np.where(x < 2, a * x3 - 5 * a * x2 + 8 * a * x - 4 * a, 0.0))
    return c / c.sum(axis=1, keepdims=True)


def axis_table(mode: str, ctm: str, nearest_mode: str, in_len: int, out_len: int, scale: float, roi=None,
               cubic_a: float = -0.75, exclude_outside: bool = False, antialias: bool = False):
    """Taps of one resized axis: (idx (out, K) int64 in [0, in_len), weights (out, K) float64, extrapolation
    mask (out,) bool or None)."""
    x, extrap = _source_coords(ctm, out_len, in_len, scale, roi)
    xf = np.floor(x)
    integer = x == xf
    ratio = np.where(integer, 1.0, x - xf)  # in (0, 1]: the pixel left of x is preferred
    if mode == "nearest":
        # two candidates (left, right) and a 0/1 choice, exactly as the reference (which also decides
        # the candidates from x + 1 in floating point)
        if nearest_mode == "round_prefer_floor":
            right = ratio > 0.5
        elif nearest_mode == "round_prefer_ceil":
            right = ratio >= 0.5
        elif nearest_mode == "floor":
            right = np.zeros(out_len, bool)
        elif nearest_mode == "ceil":
            right = np.ones(out_len, bool)
        else:  # "simple" (opset <= 10, as onnxruntime): floor when upsampling, ceil when downsampling
            right = np.full(out_len, scale < 1)
        right = right | integer  # an integer x is its own right candidate
        neighbors = _neighbors(x, 2)
        idx = np.where(right, neighbors[:, 1], neighbors[:, 0])
        return np.clip(idx, 0, in_len - 1)[:, None], np.ones((out_len, 1)), extrap
    coeffs = _coeffs(mode, ratio, scale, cubic_a, antialias)
    neighbors = _neighbors(x, coeffs.shape[1])
    if exclude_outside:
        coeffs = np.where((neighbors < 0) | (neighbors >= in_len), 0.0, coeffs)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    return np.clip(neighbors, 0, in_len - 1), coeffs, extrap


def _neighbors(x: np.ndarray, n: int) -> np.ndarray:
    """(out, n): the n indices nearest to each x (ties to the smaller), unclamped; computed like the
    reference's edge-padded neighbourhood (in padded coordinates, so rounding matches it)."""
    pad = math.ceil(n / 2)
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        off = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        base = -((n - 1) // 2)
        off = np.where(frac <= 0.5, base, base + 1)
    return (p + off)[:, None] + np.arange(n)[None, :] - pad


# --------------------------------------------------------------------------------------------------------
class _ResizeBase(Op):
    """Geometry and kernels shared by Resize and Upsample. Subclasses set the attributes and
    ``_scales_sizes_roi(consts, rank)``."""

    kernels = {"cpu": ("float32",), "cuda": ("float32",)}

    mode = "nearest"
    ctm = "asymmetric"
    nearest_mode = "simple"
    cubic_a = -0.75
    exclude_outside = False
    extrapolation_value = 0.0
    antialias = False
    axes_attr = None
    policy = "stretch"

    def _check_mode(self):
        if self.mode not in ("nearest", "linear", "cubic"):
            raise self.unsupported(f"mode '{self.mode}' is not supported (nearest, linear, cubic)")

    def _scales_sizes_roi(self, consts, rank):
        raise NotImplementedError

    def _geometry(self, in_shape, consts):
        """Output shape and the passes: [(axis, idx int64 (out, K), weights float64 (out, K), mask|None)]."""
        rank = len(in_shape)
        scales, sizes, roi = self._scales_sizes_roi(consts, rank)
        if self.axes_attr is None:
            axes = list(range(rank))
        else:
            axes = [normalize_axis(self, a, rank) for a in self.axes_attr]
            if len(set(axes)) != len(axes):
                raise self.error(f"axes {self.axes_attr} repeat an axis")
        n = len(axes)
        if (scales is None) == (sizes is None):
            raise self.error("needs exactly one of scales and sizes (a non-empty tensor)")
        if scales is not None:
            if len(scales) != n:
                raise self.error(f"scales has {len(scales)} values for {n} axes (input shape {tuple(in_shape)})")
            if any(not (s > 0) or not math.isfinite(s) for s in scales):
                raise self.error(f"scales {list(scales)} must be positive and finite")
            scale = [1.0] * rank
            for a, s in zip(axes, scales):
                scale[a] = float(s)
            out = [math.floor(scale[a] * in_shape[a]) for a in range(rank)]
        else:
            if len(sizes) != n:
                raise self.error(f"sizes has {len(sizes)} values for {n} axes (input shape {tuple(in_shape)})")
            if any(s < 0 for s in sizes):
                raise self.error(f"sizes {list(sizes)} must not be negative")
            out = list(in_shape)
            for a, s in zip(axes, sizes):
                out[a] = int(s)
            if any(in_shape[a] == 0 and out[a] > 0 for a in axes):
                raise self.error(f"cannot resize an empty axis (input shape {tuple(in_shape)}) to sizes {sizes}")
            scale = [out[a] / in_shape[a] if in_shape[a] else 1.0 for a in range(rank)]
            if self.policy != "stretch":
                pick = min if self.policy == "not_larger" else max
                s = pick(scale[a] for a in axes)
                scale = [s if a in axes else 1.0 for a in range(rank)]
                out = [int(s * in_shape[a] + 0.5) if a in axes else in_shape[a] for a in range(rank)]
        for a in range(rank):
            if in_shape[a] == 0 and out[a] > 0:
                raise self.error(f"cannot resize an empty axis {a} (input shape {tuple(in_shape)})")
        full_roi = None
        if self.ctm == "tf_crop_and_resize":
            if roi is None or len(roi) != 2 * n:
                raise self.error(f"tf_crop_and_resize needs roi with {2 * n} values (start and end per axis), "
                                 f"got {None if roi is None else len(roi)}")
            full_roi = [(0.0, 1.0)] * rank
            for i, a in enumerate(axes):
                full_roi[a] = (roi[i], roi[n + i])
        passes = []
        for a in axes:
            r = full_roi[a] if full_roi is not None else None
            if (math.isclose(scale[a], 1.0) and out[a] == in_shape[a]
                    and (r is None or (math.isclose(float(r[0]), 0.0) and math.isclose(float(r[1]), 1.0)))):
                continue  # identity along this axis
            if out[a] == 0:
                passes.append((a, np.zeros((0, 1), np.int64), np.zeros((0, 1)), None))
                continue
            idx, w, mask = axis_table(self.mode, self.ctm, self.nearest_mode, in_shape[a], out[a], scale[a], r,
                                      self.cubic_a, self.exclude_outside, self.antialias)
            if mask is not None and not mask.any():
                mask = None
            passes.append((a, idx, w, mask))
        return tuple(out), passes

    def infer(self, ins, consts):
        x = ins[0]
        if len(x.shape) == 0:
            raise self.error("cannot resize a scalar")
        if np.dtype(x.dtype).kind not in "fiu":
            raise self.unsupported(f"dtype {np.dtype(x.dtype).name} is not supported (numeric types only)")
        out, _ = self._geometry(x.shape, consts)
        return [TensorType(out, x.dtype)]

    def ref(self, x, *rest):
        _, passes = self._geometry(x.shape, [x, *rest])
        res = x.astype(np.float64)
        for a, idx, w, mask in passes:
            g = np.take(res, idx, axis=a)  # axis a becomes (out, K)
            shape = (1,) * a + w.shape + (1,) * (res.ndim - a - 1)
            res = (g * w.reshape(shape)).sum(axis=a + 1)
            if mask is not None:
                res = np.where(mask.reshape((1,) * a + (-1,) + (1,) * (res.ndim - a - 1)),
                               self.extrapolation_value, res)
        return [_saturate(res, x.dtype)]

    def build_cuda(self, ins, outs, consts):
        """float32 resizes of the last two axes (rank 4) or the last one (rank 3), without extrapolation."""
        x = ins[0]
        if np.dtype(x.dtype) != np.float32 or len(x.shape) not in (3, 4) or outs[0].size == 0:
            return None
        try:
            out_shape, passes = self._geometry(tuple(x.shape), consts)
        except EdgeDLError:
            return None  # scales / sizes computed at run time
        rank = len(x.shape)
        if any(a < rank - (2 if rank == 4 else 1) or m is not None for a, _, _, m in passes):
            return None
        from ..kernels.cuda.resize import Resize2d

        k = Resize2d(tuple(x.shape), out_shape, {a: (idx, w) for a, idx, w, _ in passes})
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def build(self, ins, outs, consts):
        x = ins[0]
        in_shape = tuple(x.shape)
        out_shape, passes = self._geometry(in_shape, consts)
        if not passes or outs[0].size == 0:
            return _copy_kernel(outs[0].size)  # identity resize (or nothing to write)
        rank = len(in_shape)
        if x.dtype != np.float32:
            gather_2d = (rank == 4 and sorted(p[0] for p in passes) in ([2], [3], [2, 3])
                         and all(p[1].shape[1] == 1 and p[3] is None for p in passes))
            if not (gather_2d and np.dtype(x.dtype) in (np.dtype(np.int8), np.dtype(np.uint8))):
                return super().build(ins, outs, consts)  # the numpy reference
            # 8-bit nearest 2-D resize (int8 models): the float kernel's gather, typed for bytes
            return self._build_2d(in_shape, out_shape, passes, 1, None, False)
        ev = np.float32(self.extrapolation_value)
        # tf_crop_and_resize: output slabs whose source coordinate lies outside the input on some axis
        masks = [((int(np.prod(out_shape[:a], dtype=np.int64)), out_shape[a],
                   int(np.prod(out_shape[a + 1:], dtype=np.int64))), np.flatnonzero(m))
                 for a, _, _, m in passes if m is not None]

        def fill_extrapolated(o):
            for view, bad in masks:
                o.reshape(view)[:, bad, :] = ev

        axes = sorted(p[0] for p in passes)
        ntaps = passes[0][1].shape[1]
        if (rank == 4 and axes in ([2], [3], [2, 3]) and ntaps <= 2
                and all(p[1].shape[1] == ntaps for p in passes)):
            return self._build_2d(in_shape, out_shape, passes, ntaps, fill_extrapolated, bool(masks))

        # separable passes: shapes after each pass, ping-pong through scratch
        shapes = []
        cur = list(in_shape)
        prepared = []
        for a, idx, w, _ in passes:
            outer = int(np.prod(cur[:a], dtype=np.int64))
            inner = int(np.prod(cur[a + 1:], dtype=np.int64))
            itype = np.uint64 if inner == 1 else np.int64  # see edgedl.kernels.cpu.resize
            prepared.append((np.ascontiguousarray(idx, itype), np.ascontiguousarray(w, np.float32),
                             outer, cur[a], idx.shape[0], inner))
            cur[a] = idx.shape[0]
            shapes.append(int(np.prod(cur, dtype=np.int64)))
        inter = shapes[:-1]
        nbuf = min(len(inter), 2)
        buf_elems = max(inter) if inter else 0
        scratch_bytes = nbuf * buf_elems * 4

        def run(inputs, outputs, scratch):
            src = inputs[0].reshape(-1)
            final = outputs[0].reshape(-1)
            bufs = [scratch[k * buf_elems * 4:(k + 1) * buf_elems * 4].view(np.float32) for k in range(nbuf)]
            for k, (idx, w, outer, din, dout, inner) in enumerate(prepared):
                dst = final if k == len(prepared) - 1 else bufs[k % 2][:shapes[k]]
                resize_axis(src, dst, idx, w, outer, din, dout, inner)
                src = dst
            if masks:
                fill_extrapolated(outputs[0])

        return Kernel(run, scratch_bytes=scratch_bytes)

    def _build_2d(self, in_shape, out_shape, passes, ntaps, fill_extrapolated, has_masks):
        n, c, h, w = in_shape
        oh, ow = out_shape[2], out_shape[3]
        tabs = {p[0]: p for p in passes}

        def table(axis, length):
            if axis in tabs:
                return tabs[axis][1], tabs[axis][2]
            ident = np.arange(length, dtype=np.int64)[:, None]
            return np.repeat(ident, ntaps, axis=1), np.concatenate(
                [np.ones((length, 1)), np.zeros((length, ntaps - 1))], axis=1)

        hi, hw = table(2, h)
        wi, ww = table(3, w)
        nc = n * c
        if ntaps == 1:
            hidx = np.ascontiguousarray(hi[:, 0], np.int64)
            widx = np.ascontiguousarray(wi[:, 0], np.uint64)

            def run(inputs, outputs, scratch):
                resize_nearest_2d(inputs[0].reshape(-1), outputs[0].reshape(-1), hidx, widx, nc, h, w, oh, ow)
                if has_masks:
                    fill_extrapolated(outputs[0])

            def bind(inputs, outputs, scratch, threads):
                if has_masks:
                    return None
                return functools.partial(resize_nearest_2d, inputs[0].reshape(-1), outputs[0].reshape(-1), hidx,
                                         widx, nc, h, w, oh, ow)

            return Kernel(run, bind=bind)
        t = [np.ascontiguousarray(v, np.int64) for v in (hi[:, 0], hi[:, 1])]
        t += [np.ascontiguousarray(v, np.float32) for v in (hw[:, 0], hw[:, 1])]
        t += [np.ascontiguousarray(v, np.uint64) for v in (wi[:, 0], wi[:, 1])]
        t += [np.ascontiguousarray(v, np.float32) for v in (ww[:, 0], ww[:, 1])]

        def run2(inputs, outputs, scratch):
            resize_linear_2d(inputs[0].reshape(-1), outputs[0].reshape(-1), *t, nc, h, w, oh, ow)
            if has_masks:
                fill_extrapolated(outputs[0])

        def bind2(inputs, outputs, scratch, threads):
            if has_masks:
                return None
            return functools.partial(resize_linear_2d, inputs[0].reshape(-1), outputs[0].reshape(-1), *t, nc, h, w,
                                     oh, ow)

        return Kernel(run2, bind=bind2)


def _copy_kernel(size: int) -> Kernel:
    def run(inputs, outputs, scratch):
        if size:
            np.copyto(outputs[0].reshape(-1), inputs[0].reshape(-1))

    return Kernel(run, impl="numpy")


def _saturate(res: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.round(res), info.min, info.max).astype(dtype)
    info = np.finfo(dtype)
    return np.clip(res, info.min, info.max).astype(dtype)


def _floats(a) -> list:
    return [v for v in np.asarray(a).reshape(-1)]


@register
class Resize(_ResizeBase):
    op_type = "Resize"
    num_inputs = (1, 4)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = self.attr("mode", "nearest")
        self._check_mode()
        self.tflite_int8 = False
        if opset < 11:
            if self.mode == "cubic":
                raise self.error("mode 'cubic' exists from opset 11 on")
            if len(node.inputs) < 2 or not node.inputs[1]:
                raise self.error("needs scales (input 1) at opset 10")
            self.ctm, self.nearest_mode = "asymmetric", "simple"
            return
        self.ctm = self.attr("coordinate_transformation_mode", "half_pixel")
        if self.ctm not in COORD_MODES:
            raise self.unsupported(f"coordinate_transformation_mode '{self.ctm}' is not supported")
        if self.ctm == "tf_half_pixel_for_nn" and opset >= 13:
            raise self.error("coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed in opset 13")
        self.nearest_mode = self.attr("nearest_mode", "round_prefer_floor")
        if self.nearest_mode not in NEAREST_MODES:
            raise self.unsupported(f"nearest_mode '{self.nearest_mode}' is not supported")
        self.cubic_a = float(self.attr("cubic_coeff_a", -0.75))
        self.exclude_outside = bool(int(self.attr("exclude_outside", 0)))
        self.extrapolation_value = float(self.attr("extrapolation_value", 0.0))
        self.antialias = bool(int(self.attr("antialias", 0))) and self.mode != "nearest"
        axes = self.attr("axes")
        self.axes_attr = None if axes is None else [int(a) for a in axes]
        self.policy = self.attr("keep_aspect_ratio_policy", "stretch")
        if self.policy not in ("stretch", "not_larger", "not_smaller"):
            raise self.unsupported(f"keep_aspect_ratio_policy '{self.policy}' is not supported")
        # edgedl's _tflite_int8: TFLite's all-integer int8 bilinear arithmetic (an imported RESIZE_BILINEAR)
        self.tflite_int8 = bool(int(self.attr("_tflite_int8", 0)))
        if self.tflite_int8 and (self.mode != "linear" or self.ctm not in ("asymmetric", "align_corners",
                                                                          "half_pixel")):
            raise self.unsupported("_tflite_int8 is TFLite's bilinear resize (linear mode; asymmetric, "
                                   "align_corners or half_pixel coordinates)")

    def _tflite_geometry(self, x: TensorType, consts) -> tuple:
        """(output shape, align_corners, half_pixel_centers) of a TFLite int8 bilinear resize over H, W."""
        out, _ = self._geometry(tuple(x.shape), consts)
        if np.dtype(x.dtype) != np.int8 or len(x.shape) != 4 or tuple(out[:2]) != tuple(x.shape[:2]):
            raise self.unsupported("TFLite's int8 bilinear resize takes an int8 (N, C, H, W) tensor and resizes H, W")
        return out, self.ctm == "align_corners", self.ctm == "half_pixel"

    def ref(self, x, *rest):
        if not self.tflite_int8:
            return super().ref(x, *rest)
        from ..kernels.cpu.resize_i8 import resize_bilinear_int8_reference

        out, align, half = self._tflite_geometry(TensorType(x.shape, x.dtype), [x, *rest])
        return [resize_bilinear_int8_reference(x, out[2], out[3], align, half)]

    def build(self, ins, outs, consts):
        if not self.tflite_int8:
            return super().build(ins, outs, consts)
        from ..kernels.cpu.resize_i8 import resize_bilinear_int8

        _, align, half = self._tflite_geometry(ins[0], consts)

        def run(inputs, outputs, scratch):
            resize_bilinear_int8(inputs[0], outputs[0], align, half)

        return Kernel(run)

    def build_cuda(self, ins, outs, consts):
        return None if self.tflite_int8 else super().build_cuda(ins, outs, consts)

    def _opt_const(self, consts, index, what):
        if len(self.node.inputs) <= index or not self.node.inputs[index]:
            return None
        value = const_input(self, consts, index, what)
        return None if value.size == 0 else value

    def _scales_sizes_roi(self, consts, rank):
        if self.opset < 11:
            scales = _floats(const_input(self, consts, 1, "scales"))
            return [float(s) for s in scales], None, None
        roi = self._opt_const(consts, 1, "roi") if self.ctm == "tf_crop_and_resize" else None
        scales = self._opt_const(consts, 2, "scales")
        sizes = self._opt_const(consts, 3, "sizes")
        if scales is not None and scales.dtype.kind != "f":
            raise self.error(f"scales must be floats, got {scales.dtype}")
        if sizes is not None and sizes.dtype.kind not in "iu":
            raise self.error(f"sizes must be integers, got {sizes.dtype}")
        return (None if scales is None else [float(s) for s in _floats(scales)],
                None if sizes is None else [int(s) for s in _floats(sizes)],
                None if roi is None else _floats(roi))


@register
class Upsample(_ResizeBase):
    """Deprecated since opset 10: nearest or linear, asymmetric coordinates, scales >= 1."""

    op_type = "Upsample"
    num_inputs = (1, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = self.attr("mode", "nearest")
        if self.mode == "bilinear":
            self.mode = "linear"
        if self.mode not in ("nearest", "linear"):
            raise self.unsupported(f"mode '{self.mode}' is not supported (nearest, linear)")
        self.ctm, self.nearest_mode = "asymmetric", "simple"
        if opset < 9:
            scales = self.attr("scales")
            if scales is None:
                raise self.error("needs a 'scales' attribute (opset < 9)")
            self.scales_attr = [float(s) for s in scales]
        else:
            self.scales_attr = None
            if len(node.inputs) < 2 or not node.inputs[1]:
                raise self.error("needs scales (input 1)")

    def _scales_sizes_roi(self, consts, rank):
        scales = self.scales_attr
        if scales is None:
            scales = [float(s) for s in _floats(const_input(self, consts, 1, "scales"))]
        return scales, None, None


__all__ = ["Resize", "Upsample", "axis_table"]
