"""Exporter habits onnxruntime accepts: a negative dim_value is unknown, a dim_param is a name, not a promise."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl


def _paddle_like() -> onnx.ModelProto:
    """A PaddlePaddle-style classifier head: input [-1, 3, "?", "?"] (batch -1, height and width both "?")."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "paddle_like", [inp], [out], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_negative_dims_and_question_marks_bind_from_the_data():
    ort = pytest.importorskip("onnxruntime")
    proto = _paddle_like()
    m = edgedl.load(proto)
    assert m.inputs[0].shape == (None, 3, "?", "?")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 48, 192), (2, 3, 32, 20)]:  # height != width, both named "?"
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(m(x), sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_a_shared_name_does_not_hide_a_shape_a_node_cannot_take():
    """Two inputs named ["?"] may differ (onnxruntime binds each); Add still rejects what it cannot broadcast."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["?"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y])
    m = edgedl.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert m(np.ones(3, np.float32), np.ones(1, np.float32)).tolist() == [2.0] * 3  # broadcast: fine
    with pytest.raises(edgedl.EdgeDLError):
        m(np.ones(3, np.float32), np.ones(4, np.float32))


def test_a_huge_dim_value_is_still_refused():
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 << 62])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [inp],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(edgedl.EdgeDLError, match="not a valid size"):
        edgedl.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_an_initializer_listed_as_an_input_is_an_overridable_default():
    ort = pytest.importorskip("onnxruntime")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "g", [x, b],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones(3, np.float32), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    m = edgedl.load(proto)
    assert [i.name for i in m.inputs] == ["x"]
    xv = np.arange(3, dtype=np.float32)
    for feeds in ({"x": xv}, {"x": xv, "b": np.full(3, 5.0, np.float32)}, {"x": xv}):
        np.testing.assert_array_equal(m.run(feeds)["y"], sess.run(None, feeds)[0])


def test_a_stale_declared_output_shape_does_not_stop_the_model():
    """Exporters leave stale shapes in value infos; onnxruntime merges them leniently (the data's shape wins)."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 7])])
    m = edgedl.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert m(np.ones((2, 3), np.float32)).shape == (2, 3)
