"""MaxRoiPool (Fast R-CNN's region-of-interest max pooling), as onnxruntime computes it (Caffe's ROIPooling).

Each RoI row ``[batch_index, x1, y1, x2, y2]`` (input-image coordinates) is scaled by ``spatial_scale`` and
rounded to feature-map cells (halves away from zero, as C's ``roundf``): ``[round(x1 s), round(x2 s)]``
inclusive, at least one cell wide. The region is split into ``pooled_shape`` bins, bin ``p`` covering
``[floor(p * size / pooled), ceil((p + 1) * size / pooled))`` cells from the region's start, clipped to the map;
each output is the bin's maximum, or 0 for an empty bin. Output ``(num_rois, C, pooled_h, pooled_w)``. Batch
indices are checked before the kernel reads anything.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu.config import NJIT
from ..registry import Kernel, Op, register


@numba.njit(**NJIT)
def _round_half_away(v):
    # C's roundf: halves away from zero (numpy rounds them to even)
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


@numba.njit(**NJIT)
def _max_roi_pool(x, rois, scale, out):
    # x (N, C, H, W), rois (R, 5) [batch, x1, y1, x2, y2], out (R, C, PH, PW)
    n_c, height, width = x.shape[1], x.shape[2], x.shape[3]
    ph_n, pw_n = out.shape[2], out.shape[3]
    for r in range(rois.shape[0]):
        b = int(rois[r, 0])
        x1 = _round_half_away(rois[r, 1] * scale)
        y1 = _round_half_away(rois[r, 2] * scale)
        x2 = _round_half_away(rois[r, 3] * scale)
        y2 = _round_half_away(rois[r, 4] * scale)
        roi_w = max(x2 - x1 + 1, 1)
        roi_h = max(y2 - y1 + 1, 1)
        bin_h = roi_h / ph_n
        bin_w = roi_w / pw_n
        for ph in range(ph_n):
            h0 = min(max(int(math.floor(ph * bin_h)) + y1, 0), height)
            h1 = min(max(int(math.ceil((ph + 1) * bin_h)) + y1, 0), height)
            for pw in range(pw_n):
                w0 = min(max(int(math.floor(pw * bin_w)) + x1, 0), width)
                w1 = min(max(int(math.ceil((pw + 1) * bin_w)) + x1, 0), width)
                for c in range(n_c):
                    if h1 <= h0 or w1 <= w0:
                        out[r, c, ph, pw] = 0.0
                        continue
                    m = x[b, c, h0, w0]
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            v = x[b, c, h, w]
                            if v > m:
                                m = v
                    out[r, c, ph, pw] = m


@register
class MaxRoiPool(Op):
    op_type = "MaxRoiPool"
    num_inputs = (2, 2)
    kernels = {"cpu": ("float32", "float64")}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        shape = self.attr("pooled_shape")
        if shape is None or len(shape) != 2 or min(int(v) for v in shape) < 1:
            raise self.error(f"pooled_shape must be two positive sizes, got {shape}")
        self.pooled = (int(shape[0]), int(shape[1]))
        self.scale = float(self.attr("spatial_scale", 1.0))

    def infer(self, ins, consts):
        x, rois = ins
        if len(x.shape) != 4:
            raise self.error(f"X must be (N, C, H, W), got shape {x.shape}")
        if len(rois.shape) != 2 or rois.shape[1] != 5:
            raise self.error(f"rois must be (num_rois, 5), got shape {rois.shape}")
        if np.dtype(x.dtype).name not in ("float32", "float64") or rois.dtype != x.dtype:
            raise self.unsupported(f"X and rois must share a float32/float64 dtype, got {x.dtype}, {rois.dtype}")
        return [TensorType((rois.shape[0], x.shape[1]) + self.pooled, x.dtype)]

    def _check(self, x, rois):
        b = rois[:, 0]
        if rois.shape[0] and (not np.all(np.isfinite(rois)) or b.min() < 0 or b.max() >= x.shape[0]):
            raise EdgeDLError(f"{self.node.describe()}: rois hold batch indices outside [0, {x.shape[0]}) or "
                              "non-finite coordinates")

    def ref(self, x, rois):
        self._check(x, rois)
        out = np.zeros((rois.shape[0], x.shape[1]) + self.pooled, x.dtype)
        _max_roi_pool(np.ascontiguousarray(x), np.ascontiguousarray(rois), x.dtype.type(self.scale), out)
        return [out]

    def build(self, ins, outs, consts):
        scale = np.dtype(ins[0].dtype).type(self.scale)  # the coordinates are scaled in the tensors' precision

        def run(inputs, outputs, scratch):
            x, rois = inputs
            self._check(x, rois)
            _max_roi_pool(x, rois, scale, outputs[0])

        return Kernel(run)
