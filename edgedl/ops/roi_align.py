"""RoiAlign (opsets 10, 16, 22): pools a fixed-size (output_height x output_width) feature map per region of
interest by bilinear sampling, as Mask R-CNN / Faster R-CNN heads do.

Inputs ``X`` (N, C, H, W), ``rois`` (R, 4) boxes (x1, y1, x2, y2) in input coordinates (the dtype of X),
``batch_indices`` (R,) int64; output (R, C, output_height, output_width). Per roi and axis::

    start = x1 * spatial_scale - offset,   size = (x2 - x1) * spatial_scale,   bin = size / output_size
    samples per bin = sampling_ratio, or ceil(bin) when sampling_ratio is 0 (adaptive)

``coordinate_transformation_mode`` (opset 16+, default ``half_pixel``): ``half_pixel`` shifts by
offset = 0.5 and keeps the size as is; ``output_half_pixel`` (and opset 10, which has no attribute) uses
offset 0 and at least 1 for the size. Sample points outside [-1, H] x [-1, W] count as 0; others are clamped
into the map and interpolated bilinearly. ``mode`` ``avg`` averages the samples of a bin (dividing by the
number of sample points); ``max`` takes the maximum over the samples of the largest of the four weighted
neighbour terms ``w_i * x_i``. That is onnxruntime's max (documented there as not the spec's intent: the max
of the interpolated values); onnx's reference and the onnx node test data compute the same, so edgedl follows
them rather than the spec's prose.

The roi geometry is computed in float32 (float64 for double inputs) as onnxruntime does, so sample counts
match it exactly. ``batch_indices`` outside [0, N), non-finite roi coordinates and rois that would need more
than ``MAX_SAMPLES`` sample points (or ``MAX_AXIS`` along one axis: adaptive sampling of an absurdly large box)
are rejected at run time with an EdgeDLError. float32 runs the Numba kernels of :mod:`edgedl.kernels.cpu.roi_align`
(parallel over (roi, channel) units when the work is large); float16 / bfloat16 / float64 the numpy reference.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..registry import Kernel, Op, register

_FLOATS = ("float16", "float32", "float64", "bfloat16")
#: the most sample points one roi may need per channel (grid_h * grid_w * output_height * output_width)
MAX_SAMPLES = 1 << 26
#: the most sample rows (output_height * grid_h) or columns one roi may need
MAX_AXIS = 1 << 20
#: the most sample rows (or columns) all the rois of one run may need together (the kernel's sample tables)
MAX_TABLE = 1 << 22
#: elements per block of the numpy reference's sample arrays (bounds its memory whatever the grid)
_REF_BLOCK = 1 << 20


def _operand(a: np.ndarray) -> np.ndarray:
    """``a`` as a writable C-contiguous array (a copy only when it is not): Numba compiles a separate
    specialization for read-only arrays (constants), so this keeps one compiled signature per kernel."""
    return a if a.flags.c_contiguous and a.flags.writeable else np.array(a, order="C")


@register
class RoiAlign(Op):
    op_type = "RoiAlign"
    kernels = {"cpu": ("float32",)}
    num_inputs = (3, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 10:
            raise self.unsupported(f"RoiAlign is defined from opset 10 (the model has {opset})")
        if opset < 16:
            if "coordinate_transformation_mode" in node.attrs:
                raise self.error(f"coordinate_transformation_mode needs opset 16 (the model has {opset})")
            ctm = "output_half_pixel"
        else:
            ctm = str(self.attr("coordinate_transformation_mode", "half_pixel"))
        if ctm not in ("half_pixel", "output_half_pixel"):
            raise self.error(f"coordinate_transformation_mode must be half_pixel or output_half_pixel, got {ctm!r}")
        self.half_pixel = ctm == "half_pixel"
        self.mode = str(self.attr("mode", "avg")).lower()
        if self.mode not in ("avg", "max"):
            raise self.error(f"mode must be avg or max, got {self.mode!r}")
        self.oh = int(self.attr("output_height", 1))
        self.ow = int(self.attr("output_width", 1))
        if self.oh < 1 or self.ow < 1:
            raise self.error(f"output_height and output_width must be positive, got {self.oh}, {self.ow}")
        self.sampling_ratio = int(self.attr("sampling_ratio", 0))
        if self.sampling_ratio < 0:
            raise self.error(f"sampling_ratio must not be negative, got {self.sampling_ratio}")
        if self.sampling_ratio and (self.sampling_ratio ** 2 * self.oh * self.ow > MAX_SAMPLES
                                    or self.sampling_ratio * max(self.oh, self.ow) > MAX_AXIS):
            raise self.error(f"sampling_ratio {self.sampling_ratio} with a {self.oh}x{self.ow} output needs more "
                             f"than {MAX_SAMPLES} samples per roi")
        self.spatial_scale = float(self.attr("spatial_scale", 1.0))
        if not math.isfinite(self.spatial_scale):
            raise self.error(f"spatial_scale must be finite, got {self.spatial_scale}")

    # --- shapes -------------------------------------------------------------------------------------------
    def infer(self, ins, consts):
        x, rois, bi = ins
        for name, t in (("X", x), ("rois", rois)):
            if np.dtype(t.dtype).name not in _FLOATS:
                raise self.unsupported(f"{name} has dtype {np.dtype(t.dtype).name}; supported: {', '.join(_FLOATS)}")
        if np.dtype(x.dtype) != np.dtype(rois.dtype):
            raise self.error(f"X ({np.dtype(x.dtype).name}) and rois ({np.dtype(rois.dtype).name}) must share a dtype")
        if np.dtype(bi.dtype).name not in ("int64", "int32"):
            raise self.error(f"batch_indices must be int64, got {np.dtype(bi.dtype).name}")
        if len(x.shape) != 4:
            raise self.error(f"X must be (N, C, H, W), got shape {tuple(x.shape)}")
        if len(rois.shape) != 2 or rois.shape[1] != 4:
            raise self.error(f"rois must be (num_rois, 4), got shape {tuple(rois.shape)}")
        if tuple(bi.shape) != (rois.shape[0],):
            raise self.error(f"batch_indices must be ({rois.shape[0]},) (one per roi), got shape {tuple(bi.shape)}")
        n, c, h, w = (int(d) for d in x.shape)
        if (h == 0 or w == 0) and rois.shape[0] > 0:
            raise self.error(f"cannot sample rois from an empty {h}x{w} feature map")
        self.n, self.c, self.h, self.w, self.r = n, c, h, w, int(rois.shape[0])
        return [TensorType((self.r, c, self.oh, self.ow), x.dtype)]

    # --- run-time checks ----------------------------------------------------------------------------------
    def _fail(self, status: int, rois, batch):
        r, code = divmod(int(status), 4)
        from ..kernels.cpu import roi_align as K

        if code == K.BAD_BATCH:
            msg = f"batch_indices[{r}] = {int(batch[r])} is out of range for a batch of {self.n}"
        elif code == K.BAD_COORD:
            msg = f"roi {r} has non-finite coordinates {rois[r].tolist()}"
        else:
            msg = (f"roi {r} ({rois[r].tolist()}) needs too many sample points (adaptive sampling; at most "
                   f"{MAX_SAMPLES} per roi and {MAX_AXIS} along each axis)")
        return self.error(msg, cls=EdgeDLError)

    def _geometry(self, rois, batch):
        """(geo (R, 4): start_h, start_w, bin_h, bin_w; grid (R, 2)) in the rois' float type (float32 for the
        half types), validated."""
        ft = np.float64 if rois.dtype == np.float64 else np.float32
        rois = rois.astype(ft, copy=False)
        batch = np.asarray(batch).astype(np.int64, copy=False)
        bad = (batch < 0) | (batch >= self.n)
        if bad.any():
            raise self._fail(int(np.argmax(bad)) * 4 + 1, rois, batch)
        fin = np.isfinite(rois).all(axis=1)
        if not fin.all():
            raise self._fail(int(np.argmin(fin)) * 4 + 2, rois, batch)
        with np.errstate(all="ignore"):
            scale, offset = ft(self.spatial_scale), ft(0.5 if self.half_pixel else 0.0)
            start = rois[:, :2] * scale - offset
            end = rois[:, 2:] * scale - offset
            size = end - start
            if not self.half_pixel:
                size = np.maximum(size, ft(1.0))
            bins = size / np.array([self.ow, self.oh], ft)  # (w, h)
            if not np.isfinite(bins).all():
                raise self._fail(int(np.argmin(np.isfinite(bins).all(axis=1))) * 4 + 2, rois, batch)
            if self.sampling_ratio > 0:
                grid = np.full((len(rois), 2), self.sampling_ratio, np.int64)
            else:
                g = np.ceil(size / np.array([self.ow, self.oh], ft)).astype(np.float64)
                over = (g > MAX_AXIS).any(axis=1)
                if over.any():
                    raise self._fail(int(np.argmax(over)) * 4 + 3, rois, batch)
                grid = np.maximum(g, 0).astype(np.int64)[:, ::-1]  # (h, w)
        over = ((grid[:, 0] * grid[:, 1] * self.oh * self.ow > MAX_SAMPLES) | (grid[:, 0] * self.oh > MAX_AXIS)
                | (grid[:, 1] * self.ow > MAX_AXIS))
        if over.any():
            raise self._fail(int(np.argmax(over)) * 4 + 3, rois, batch)
        geo = np.stack([start[:, 1], start[:, 0], bins[:, 1], bins[:, 0]], axis=1)
        return geo, grid, batch

    # --- the spec -----------------------------------------------------------------------------------------
    def _axis(self, start, bin_size, n_bins, g, limit, ft):
        """Sample tables of one axis: (lo, hi, w_lo, w_hi, ok), each (n_bins, g)."""
        p = np.arange(n_bins, dtype=ft)[:, None]
        i = (np.arange(g, dtype=np.float64) + 0.5).astype(ft)[None, :]
        v = start + p * bin_size + i * bin_size / ft(g)
        ok = (v >= -1) & (v <= limit)
        v = np.where(ok, np.maximum(v, ft(0)), ft(0))
        low = v.astype(np.int64)
        edge = low >= limit - 1
        low = np.where(edge, limit - 1, low)
        high = np.where(edge, limit - 1, low + 1)
        v = np.where(edge, low.astype(ft), v)
        frac = (v - low.astype(ft)).astype(ft)
        return low, high, frac, (ft(1) - frac).astype(ft), ok

    def ref(self, x, rois, batch_indices):
        """Per roi, the samples of every bin in blocks of (channels, sample rows, sample columns) of at most
        ``_REF_BLOCK`` elements, reduced into the bins (float64 sums): memory stays bounded for any grid."""
        geo, grid, batch = self._geometry(rois, batch_indices)
        ft = geo.dtype.type
        oh, ow, c = self.oh, self.ow, self.c
        y = np.zeros((self.r, c, oh, ow), np.float64)
        for r in range(self.r):
            gh, gw = int(grid[r, 0]), int(grid[r, 1])
            if gh == 0 or gw == 0:
                continue
            ylo, yhi, yl, yh, yok = (a.reshape(-1) for a in self._axis(geo[r, 0], geo[r, 2], oh, gh, self.h, ft))
            xlo, xhi, xl, xh, xok = (a.reshape(-1) for a in self._axis(geo[r, 1], geo[r, 3], ow, gw, self.w, ft))
            plane = x[batch[r]]
            acc = np.zeros((c, oh, ow)) if self.mode == "avg" else np.full((c, oh, ow), -np.inf)
            nx = ow * gw
            xb = min(nx, _REF_BLOCK)
            yb = max(1, min(oh * gh, _REF_BLOCK // xb))
            cb = max(1, min(c, _REF_BLOCK // (xb * yb)))
            for k0 in range(0, oh * gh, yb):
                ky = slice(k0, min(k0 + yb, oh * gh))
                for j0 in range(0, nx, xb):
                    kx = slice(j0, min(j0 + xb, nx))
                    ok = yok[ky][:, None] & xok[kx][None, :]
                    w = [(wy[ky][:, None] * wx[kx][None, :]).astype(np.float64)
                         for wy in (yh, yl) for wx in (xh, xl)]  # w1 .. w4
                    pos = [(ry[ky][:, None], rx[kx][None, :]) for ry in (ylo, yhi) for rx in (xlo, xhi)]
                    rows = np.arange(ky.start, ky.stop) // gh
                    cols = np.arange(kx.start, kx.stop) // gw
                    for c0 in range(0, c, cb):
                        p = plane[c0:c0 + cb].astype(np.float64)
                        terms = np.stack([wi * p[:, yi, xi] for wi, (yi, xi) in zip(w, pos)])
                        terms = np.where(ok, terms, 0.0)  # (4, cb, rows, cols)
                        if self.mode == "avg":
                            v = terms.sum(axis=0)
                            np.add.at(acc[c0:c0 + cb], (slice(None), rows[:, None], cols[None, :]), v)
                        else:
                            v = terms.max(axis=0)
                            np.maximum.at(acc[c0:c0 + cb], (slice(None), rows[:, None], cols[None, :]), v)
            y[r] = acc / (gh * gw) if self.mode == "avg" else acc
        return [y.astype(x.dtype)]

    # --- kernels ------------------------------------------------------------------------------------------
    def build(self, ins, outs, consts):
        x = ins[0]
        if np.dtype(x.dtype) != np.float32:
            return super().build(ins, outs, consts)
        from ..kernels.cpu import config as _config
        from ..kernels.cpu import roi_align as K
        from ..kernels.cpu.config import num_threads

        n, c, h, w, oh, ow = self.n, self.c, self.h, self.w, self.oh, self.ow
        scale, offset = np.float32(self.spatial_scale), np.float32(0.5 if self.half_pixel else 0.0)
        clamp, sr, is_max = not self.half_pixel, self.sampling_ratio, self.mode == "max"

        def run(inputs, outputs, scratch):
            xin, rois, bi = inputs
            nr = rois.shape[0]
            y = outputs[0]
            if nr == 0 or c == 0:
                return
            rois, bi = _operand(rois), _operand(bi.astype(np.int64, copy=False))
            geo = np.empty((nr, 4), np.float32)
            grid = np.empty((nr, 2), np.int64)
            status = K.roi_setup(rois, bi, n, oh, ow, scale, offset, clamp, sr, MAX_SAMPLES, MAX_AXIS, geo, grid)
            if status >= 0:
                raise self._fail(status, rois, bi)
            xin = _operand(xin).reshape(n * c, -1)  # (N * C, H * W) planes
            if int((grid[:, 0] * oh).sum()) > MAX_TABLE or int((grid[:, 1] * ow).sum()) > MAX_TABLE:
                raise self.error(f"these {nr} rois need more than {MAX_TABLE} sample rows or columns in all "
                                 "(adaptive sampling of very large boxes)", cls=EdgeDLError)
            tabs, yoff, xoff = K.make_tables(geo, grid, h, w, oh, ow)
            per_unit = np.maximum(grid[:, 0] * grid[:, 1], 1) * (oh * ow)  # work of one (roi, channel)
            total = int(per_unit.sum()) * c
            threads = num_threads()
            units = nr * c
            if total < _config.PARALLEL_MIN_WORK or threads < 2 or units < 2:
                K.roi_pool_units(xin, c, w, bi, grid, tabs, yoff, xoff, y, is_max, 0, units)
                return
            nchunks = min(units, 4 * threads)
            # chunk boundaries at equal shares of the work (units of one roi weigh the same)
            cum = np.cumsum(np.repeat(per_unit, c))
            bounds = np.searchsorted(cum, np.arange(1, nchunks) * (cum[-1] / nchunks), side="right")
            bounds = np.unique(np.concatenate([[0], bounds, [units]])).astype(np.int64)
            K.roi_pool_parallel(xin, c, w, bi, grid, tabs, yoff, xoff, y, is_max, bounds)

        return Kernel(run)
