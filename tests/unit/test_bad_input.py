"""Bad models and bad inputs give a clear EdgeDLError, never a crash or a silent wrong answer."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl import EdgeDLError


def relu_model(shape=("N", 4), dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="act")], "g",
                          [helper.make_tensor_value_info("x", dtype, list(shape))],
                          [helper.make_tensor_value_info("y", dtype, list(shape))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def conv_model(x_shape, w_shape, **attrs) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones(w_shape, np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv0", **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_missing_file(tmp_path):
    with pytest.raises(EdgeDLError, match="does not exist"):
        edgedl.load(tmp_path / "nope.onnx")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(EdgeDLError, match="empty"):
        edgedl.load(p)


def test_truncated_file(tmp_path):
    data = relu_model().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgeDLError):
        edgedl.load(p)


@pytest.mark.parametrize("payload", [b"\x89PNG\r\n\x1a\n" + bytes(100), b"hello world, not a model", bytes(64)])
def test_not_onnx(tmp_path, payload):
    p = tmp_path / "x.onnx"
    p.write_bytes(payload)
    with pytest.raises(EdgeDLError):
        edgedl.load(p)


def test_folder_is_not_a_model(tmp_path):
    with pytest.raises(EdgeDLError, match="folder"):
        edgedl.load(tmp_path)


def test_unknown_ops_are_listed_together():
    nodes = [helper.make_node("FancyOp", ["x"], ["a"], name="f1"), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("OtherOp", ["b"], ["c"], name="o1"), helper.make_node("FancyOp", ["c"], ["y"], name="f2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(edgedl.UnsupportedOpError) as e:
        edgedl.load(helper.make_model(g))
    msg = str(e.value)
    assert "FancyOp" in msg and "OtherOp" in msg and "f1" in msg and "f2" in msg and "o1" in msg


def test_cycle_is_rejected():
    nodes = [helper.make_node("Relu", ["x2"], ["a"], name="r1"), helper.make_node("Relu", ["a"], ["x2"], name="r2"),
             helper.make_node("Relu", ["x"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(EdgeDLError, match="cycle"):
        edgedl.load(helper.make_model(g))


def test_undefined_tensor():
    g = helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["y"], name="add0")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(EdgeDLError, match="ghost"):
        edgedl.load(helper.make_model(g))


def test_channel_mismatch_names_the_node():
    with pytest.raises(edgedl.ShapeError, match="conv0.*channels"):
        edgedl.load(conv_model((1, 3, 8, 8), (4, 2, 3, 3)))


def test_kernel_larger_than_padded_input():
    with pytest.raises(edgedl.ShapeError, match="larger than the padded input"):
        edgedl.load(conv_model((1, 1, 4, 4), (1, 1, 7, 7), pads=[1, 1, 1, 1]))


def test_symbolic_shapes_are_checked_before_kernels_run():
    model = edgedl.load(conv_model(("N", 1, "H", "W"), (1, 1, 5, 5)))
    with pytest.raises(edgedl.ShapeError, match="larger than the padded input"):
        model.run({"x": np.zeros((1, 1, 3, 3), np.float32)})
    assert model.run({"x": np.zeros((2, 1, 6, 7), np.float32)})["y"].shape == (2, 1, 2, 3)


def test_absurd_dimensions():
    with pytest.raises(EdgeDLError):
        edgedl.load(relu_model(shape=(1 << 40, 1 << 40)))


def test_initializer_dims_disagree_with_data():
    t = numpy_helper.from_array(np.ones(6, np.float32), "w")
    del t.dims[:]
    t.dims.extend([4, 4])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [t])
    with pytest.raises(EdgeDLError, match="'w'"):
        edgedl.load(helper.make_model(g))


def test_run_input_errors():
    model = edgedl.load(relu_model())
    with pytest.raises(edgedl.InputError, match="unknown input"):
        model.run({"x": np.zeros((1, 4), np.float32), "z": np.zeros(1)})
    with pytest.raises(edgedl.InputError, match="missing"):
        model.run({})
    with pytest.raises(edgedl.InputError, match="dtype float32"):
        model.run({"x": np.zeros((1, 4), np.float64)})
    with pytest.raises(edgedl.InputError, match="rank"):
        model.run({"x": np.zeros((4,), np.float32)})
    with pytest.raises(edgedl.InputError, match="axis 1"):
        model.run({"x": np.zeros((2, 5), np.float32)})
    with pytest.raises(edgedl.InputError):
        model(np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32))
    np.testing.assert_array_equal(model(np.array([[-1, 2, -3, 4]], np.float32)), [[0, 2, 0, 4]])


def _external_model(tmp_path, location: str) -> str:
    t = numpy_helper.from_array(np.ones(4, np.float32), "w")
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [t])
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(helper.make_model(g).SerializeToString())
    return str(path)


def test_external_data_inside_folder_loads(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(np.full(4, 2, np.float32).tobytes())
    y = edgedl.load(path)(np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(y, [2, 3, 4, 5])


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_cannot_escape(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(bytes(16))
    with pytest.raises(EdgeDLError, match="model's folder|absolute"):
        edgedl.load(_external_model(tmp_path, location))


def test_external_data_symlink_escape(tmp_path):
    (tmp_path / "secret.bin").write_bytes(bytes(16))
    path = _external_model(tmp_path, "link.bin")
    os.symlink(tmp_path / "secret.bin", tmp_path / "model" / "link.bin")
    with pytest.raises(EdgeDLError, match="outside the model's folder"):
        edgedl.load(path)


def test_external_data_length_mismatch(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(bytes(8))
    with pytest.raises(EdgeDLError, match="outside file|holds"):
        edgedl.load(path)
