"""A zero-copy view (Unsqueeze/Reshape) of a graph input or output whose memory the plan does not own: its
consumers must read the real data (found in basic-pitch and openWakeWord's melspectrogram on long audio, where a
pre-bound kernel read an arena buffer nothing wrote)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import edgedl


def _model(n: int, view_of: str):
    head = [h.make_node("Relu", ["X"], ["Y"])] if view_of == "output" else []
    src = "Y" if view_of == "output" else "X"
    nodes = head + [h.make_node("Unsqueeze", [src, "ax"], ["U"]), h.make_node("Neg", ["U"], ["N"]),
                    h.make_node("Abs", ["N"], ["Z"])]
    outs = [h.make_tensor_value_info("Z", T.FLOAT, [1, 1, n])]
    if view_of == "output":
        outs.append(h.make_tensor_value_info("Y", T.FLOAT, [1, n]))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("X", T.FLOAT, [1, n])], outs,
                     [nh.from_array(np.array([1], np.int64), "ax")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)]).SerializeToString()


@pytest.mark.parametrize("view_of,n", [("output", 1000), ("output", 20000), ("input", 1000), ("input", 400000)])
def test_consumers_of_a_view_of_a_graph_input_or_output_read_the_data(view_of, n):
    mb = _model(n, view_of)
    m = edgedl.load(mb)
    sess = ort.InferenceSession(mb, providers=["CPUExecutionProvider"])
    for seed in (0, 1):  # the second run must not see the first run's values either
        x = np.random.default_rng(seed).uniform(-1, 1, (1, n)).astype(np.float32)
        np.testing.assert_array_equal(m.run({"X": x})["Z"], sess.run(["Z"], {"X": x})[0])
