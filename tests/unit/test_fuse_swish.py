"""SiLU written out as ``x * Sigmoid(x)`` (YOLOv5/v8/X and EfficientNet exports) becomes one Swish
(edgedl.passes.fuse_swish): fused, the outputs still match onnxruntime, files saved below opset 24 spell it out
again, the quantized model gets one table for it, and chains that are not safe to fuse stay."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from edgedl.converters.onnx_import import import_onnx
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl.passes import fuse_swish

ort = pytest.importorskip("onnxruntime")


def _model(order: str = "xs", extra_output: str | None = None, other: bool = False, opset: int = 13):
    """x -> Conv -> c; y = Mul(c, Sigmoid(c)) (operands in ``order``), then a second Conv -> SiLU -> z."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((5, 4, 3, 3)) * 0.3).astype(np.float32), "w2")]
    mul_in = ["c", "s"] if order == "xs" else ["s", "c"]
    if other:  # the product of the Sigmoid with a tensor that is not its input: not a SiLU
        mul_in = ["s", "x2"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", mul_in, ["y"]),
             helper.make_node("Conv", ["y", "w2"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["d"], ["e"]),
             helper.make_node("Mul", ["d", "e"], ["z"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])]
    if other:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 4, 12, 12]))
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5, 12, 12])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto


def _feeds(proto, seed=1):
    rng = np.random.default_rng(seed)
    return {i.name: (rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]) * 2).astype(np.float32)
            for i in proto.graph.input}


@pytest.mark.parametrize("order", ["xs", "sx"])
def test_silu_fuses_into_swish_and_matches_onnxruntime(order):
    proto = _model(order)
    g = import_onnx(proto)
    assert fuse_swish(g) == 2
    assert [n.op_type for n in g.nodes] == ["Conv", "Swish", "Conv", "Swish"]
    feeds = _feeds(proto)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    model = edgedl.load(proto)
    assert [n.op_type for n in model.graph.nodes] == ["Conv", "Conv"]  # each Swish fused into its convolution
    assert all(n.attrs["_activation"][0] == "Swish" for n in model.graph.nodes)
    np.testing.assert_allclose(model.run(feeds)["z"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["exposed_sigmoid", "exposed_product_ok", "other_operand"])
def test_chains_that_are_not_a_private_silu_stay(case):
    """A Sigmoid whose output is also a graph output, or a product with another tensor, is left alone (a
    graph output *after* the Mul is fine: the Swish writes it)."""
    proto = _model(extra_output="s" if case == "exposed_sigmoid" else ("y" if case == "exposed_product_ok" else None),
                   other=case == "other_operand")
    g = import_onnx(proto)
    fused = fuse_swish(g)
    assert fused == (2 if case == "exposed_product_ok" else 1)
    feeds = _feeds(proto)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = edgedl.load(proto).run(feeds)
    for out, want in zip(sess.get_outputs(), sess.run(None, feeds)):
        np.testing.assert_allclose(got[out.name], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 13, 24])
def test_a_fused_swish_saves_as_a_valid_file_at_any_opset(tmp_path, opset):
    """Swish exists from opset 24: below, Model.save and the quantizer's QDQ file write Sigmoid and Mul again."""
    proto = _model(opset=opset)
    feeds = _feeds(proto, 3)
    path = str(tmp_path / "m.onnx")
    model = edgedl.load(proto)
    model.save(path)
    saved = onnx.load(path)
    np.testing.assert_allclose(edgedl.load(path).run(feeds)["z"], model.run(feeds)["z"], rtol=1e-6, atol=1e-6)
    if opset < 24:
        assert "Swish" not in [n.op_type for n in saved.graph.node]
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_allclose(got, model.run(feeds)["z"], rtol=1e-5, atol=1e-5)
        q = edgedl.quantize(proto, [feeds], progress=False)
        q.save(path)
        saved = onnx.load(path)
        assert "Swish" not in [n.op_type for n in saved.graph.node]
        # onnxruntime computes the spelled-out SiLU in float between DequantizeLinear and QuantizeLinear,
        # edgedl as one table of the same function: they may differ by one output step on rounding ties
        last = next(n for n in saved.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "z")
        step = float(numpy_helper.to_array(next(i for i in saved.graph.initializer if i.name == last.input[1])))
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_allclose(got, edgedl.load(path).run(feeds)["z"], rtol=0, atol=1.01 * step)


def test_quantized_silu_is_one_table():
    """In int8 the SiLU becomes one 256-entry table, not a table and a requantized product."""
    proto = _model()
    rng = np.random.default_rng(5)
    calib = [_feeds(proto, s) for s in range(4)]
    q = edgedl.quantize(proto, calib, progress=False)
    assert not any(n.op_type in ("QLinearMul", "QLinearSigmoid") for n in q.graph.nodes)
    feeds = {"x": (rng.standard_normal((1, 3, 12, 12)) * 2).astype(np.float32)}
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(q.run(feeds)["z"] - want).max() < 0.1 * np.abs(want).max()
