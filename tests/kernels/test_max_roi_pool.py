"""MaxRoiPool against an independent Python loop of Caffe's ROIPooling rules and against onnxruntime."""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import edgedl

ROIS = np.array([[0, 0, 0, 16, 12], [1, 2, 3, 9, 8], [0, 5, 5, 5, 5], [1, -3, -2, 30, 40], [0, 10, 1, 60, 50],
                 [1, 3.4, 2.6, 7.5, 11.2], [0, 2, 2, 6, 6]], np.float32)


def _loop_reference(x, rois, pooled, scale):
    def rnd(v):
        return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)

    ph_n, pw_n = pooled
    out = np.zeros((len(rois), x.shape[1], ph_n, pw_n), np.float32)
    for r, (b, *c) in enumerate(rois):
        x1, y1, x2, y2 = (rnd(float(np.float32(v) * np.float32(scale))) for v in c)
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        for ph in range(ph_n):
            h0 = min(max(math.floor(ph * rh / ph_n) + y1, 0), x.shape[2])
            h1 = min(max(math.ceil((ph + 1) * rh / ph_n) + y1, 0), x.shape[2])
            for pw in range(pw_n):
                w0 = min(max(math.floor(pw * rw / pw_n) + x1, 0), x.shape[3])
                w1 = min(max(math.ceil((pw + 1) * rw / pw_n) + x1, 0), x.shape[3])
                if h1 > h0 and w1 > w0:
                    out[r, :, ph, pw] = x[int(b), :, h0:h1, w0:w1].max(axis=(1, 2))
    return out


def _model(pooled, scale):
    g = h.make_graph([h.make_node("MaxRoiPool", ["x", "rois"], ["y"], pooled_shape=list(pooled), spatial_scale=scale)],
                     "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 3, 13, 17]),
                           h.make_tensor_value_info("rois", T.FLOAT, ["R", 5])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("pooled,scale", [((3, 4), 1.0), ((2, 2), 0.25), ((7, 7), 0.5)])
def test_matches_the_rules_and_onnxruntime(pooled, scale):
    x = np.random.default_rng(0).standard_normal((2, 3, 13, 17)).astype(np.float32)
    mb = _model(pooled, scale)
    got = edgedl.load(mb).run({"x": x, "rois": ROIS})["y"]
    np.testing.assert_array_equal(got, _loop_reference(x, ROIS, pooled, scale))
    ref = ort.InferenceSession(mb, providers=["CPUExecutionProvider"]).run(None, {"x": x, "rois": ROIS})[0]
    np.testing.assert_array_equal(got, ref)


def test_a_batch_index_out_of_range_is_an_error():
    m = edgedl.load(_model((2, 2), 1.0))
    x = np.zeros((2, 3, 13, 17), np.float32)
    for bad in (2.0, -1.0, np.nan):
        rois = ROIS.copy()
        rois[1, 0] = bad
        with pytest.raises(edgedl.EdgeDLError, match="batch indices"):
            m.run({"x": x, "rois": rois})
