"""NonMaxSuppression (float32), the greedy per-class selection of onnxruntime and onnx's reference.

For every (batch b, class c): the boxes whose score is above ``score_threshold`` (every box without one; NaN
scores never) are visited by decreasing score, equal scores by lower box index (a stable sort); a box is
selected unless its IoU with a box already selected for this class is strictly greater than
``iou_threshold``, until ``max_per_class`` boxes are selected. Output rows are (b, c, box index) in that
order, batch-major then class-major.

IoU uses each box's min / max corners (``[y1, x1, y2, x2]`` in any corner order, or ``[x_center, y_center,
width, height]`` with ``center``); boxes that do not overlap, or have a non-positive area, never suppress. The
float32 arithmetic is the one of onnxruntime's SuppressByIOU step for step (compiled without fast-math), so
IoUs at the threshold decide the same way.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .config import NJIT_EXACT


@njit(**NJIT_EXACT)
def _corners(boxes, b, center, x0, x1, y0, y1, area):
    # boxes (B, N, 4) float32; fills the per-box x / y min and max and the area (N,) float32 of batch b
    half = np.float32(2.0)
    for j in range(boxes.shape[1]):
        if center:
            wh = boxes[b, j, 2] / half
            hh = boxes[b, j, 3] / half
            x0[j] = boxes[b, j, 0] - wh
            x1[j] = boxes[b, j, 0] + wh
            y0[j] = boxes[b, j, 1] - hh
            y1[j] = boxes[b, j, 1] + hh
        else:
            x0[j] = min(boxes[b, j, 1], boxes[b, j, 3])
            x1[j] = max(boxes[b, j, 1], boxes[b, j, 3])
            y0[j] = min(boxes[b, j, 0], boxes[b, j, 2])
            y1[j] = max(boxes[b, j, 0], boxes[b, j, 2])
        area[j] = (x1[j] - x0[j]) * (y1[j] - y0[j])


@njit(**NJIT_EXACT)
def _suppresses(p, q, x0, x1, y0, y1, area, iou_threshold):
    # whether box q (selected) suppresses box p: IoU(p, q) > iou_threshold
    ix0 = max(x0[p], x0[q])
    ix1 = min(x1[p], x1[q])
    if ix1 <= ix0:
        return False
    iy0 = max(y0[p], y0[q])
    iy1 = min(y1[p], y1[q])
    if iy1 <= iy0:
        return False
    inter = (ix1 - ix0) * (iy1 - iy0)
    if inter <= 0:
        return False
    a1 = area[p]
    a2 = area[q]
    union = a1 + a2 - inter
    if a1 <= 0 or a2 <= 0 or union <= 0:
        return False
    return inter / union > iou_threshold


@njit(**NJIT_EXACT)
def nms(boxes, scores, max_per_class, iou_threshold, score_threshold, has_score_threshold, center):
    # boxes (B, N, 4) float32, scores (B, C, N) float32 (both contiguous); returns (num_selected, 3) int64
    nb, nbox = boxes.shape[0], boxes.shape[1]
    nc = scores.shape[1]
    limit = min(max_per_class, nbox)
    out = np.empty((max(min(nb * nc * limit, 1024), 1), 3), np.int64)
    count = 0
    if limit <= 0:
        return out[:0]
    x0 = np.empty(nbox, np.float32)
    x1 = np.empty(nbox, np.float32)
    y0 = np.empty(nbox, np.float32)
    y1 = np.empty(nbox, np.float32)
    area = np.empty(nbox, np.float32)
    cand = np.empty(nbox, np.int64)
    neg = np.empty(nbox, np.float32)
    sel = np.empty(limit, np.int64)
    for b in range(nb):
        _corners(boxes, b, center, x0, x1, y0, y1, area)
        for c in range(nc):
            s = scores[b, c]
            m = 0
            for j in range(nbox):
                v = s[j]
                if v == v and (not has_score_threshold or v > score_threshold):
                    cand[m] = j
                    neg[m] = -v
                    m += 1
            if m == 0:
                continue
            order = np.argsort(neg[:m], kind="mergesort")  # stable: equal scores keep the lower index first
            nsel = 0
            for t in range(m):
                p = cand[order[t]]
                keep = True
                for u in range(nsel):
                    if _suppresses(p, sel[u], x0, x1, y0, y1, area, iou_threshold):
                        keep = False
                        break
                if not keep:
                    continue
                sel[nsel] = p
                nsel += 1
                if count == out.shape[0]:
                    grown = np.empty((2 * out.shape[0], 3), np.int64)
                    grown[:count] = out[:count]
                    out = grown
                out[count, 0] = b
                out[count, 1] = c
                out[count, 2] = p
                count += 1
                if nsel >= limit:
                    break
    return out[:count]


__all__ = ["nms"]
