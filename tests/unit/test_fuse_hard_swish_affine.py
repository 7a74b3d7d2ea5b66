"""The HardSwish written out as Add / Clip / Mul / Div (edgedl.passes.fuse_hard_swish) and scalar Mul / Add steps
after a convolution (edgedl.passes.fold_conv_scalar_affine), as PP-OCRv4's published files have them: fused, and
the model's outputs still match onnxruntime; chains that are not safe to fuse stay as they are."""
from __future__ import annotations

import numpy as np
import pytest
from edgedl.converters.onnx_import import import_onnx
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl.passes import fold_conv_scalar_affine, fuse_hard_swish

ort = pytest.importorskip("onnxruntime")


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _model(extra_output: str | None = None, div: bool = True):
    """x -> Conv -> *2.5 -> +0.25 -> HardSwish written out (Add 3, Clip 0..6, Mul x, Div 6 or Mul 1/6) -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             _const("s", 2.5), _const("t", 0.25), _const("three", 3.0), _const("zero", 0.0), _const("six", 6.0),
             _const("sixth", 1 / 6)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["cs"]), helper.make_node("Add", ["t", "cs"], ["h"]),
             helper.make_node("Add", ["h", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["cl"]),
             helper.make_node("Mul", ["cl", "h"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["y"]) if div else helper.make_node("Mul", ["sixth", "m"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


@pytest.mark.parametrize("div", [True, False])
def test_hard_swish_and_affine_steps_fuse_and_match_onnxruntime(div):
    proto = _model(div=div)
    g = import_onnx(proto)
    assert fuse_hard_swish(g) == 1 and fold_conv_scalar_affine(g) == 2
    assert [n.op_type for n in g.nodes] == ["Conv", "HardSwish"]
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32) * 2
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = edgedl.load(proto)
    assert [n.op_type for n in model.graph.nodes] == ["Conv"]  # HardSwish fused into the convolution
    np.testing.assert_allclose(model.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)
    q = edgedl.quantize(proto, [x], progress=False)
    assert not any(n.op_type in ("QLinearAdd", "QLinearMul") for n in q.graph.nodes)
    assert np.abs(q.run({"x": x})["y"] - want).max() < 0.1 * np.abs(want).max()


@pytest.mark.parametrize("opset", [12, 14])
def test_a_fused_hard_swish_saves_as_a_valid_file_at_any_opset(tmp_path, opset):
    """HardSwish exists from opset 14: below, Model.save and the quantizer's QDQ file write it out as Add / Clip /
    Mul / Div again, so onnxruntime loads them (and agrees with edgedl)."""
    proto = _model()
    proto.opset_import[0].version = opset
    x = np.random.default_rng(3).standard_normal((1, 3, 6, 6)).astype(np.float32)
    for model in (edgedl.load(proto), edgedl.quantize(proto, [x], progress=False)):
        path = str(tmp_path / "m.onnx")
        model.save(path)
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, edgedl.load(path).run({"x": x})["y"], rtol=1e-4, atol=0.05)


@pytest.mark.parametrize("exposed", ["a", "cs"])
def test_chains_with_an_exposed_intermediate_stay(exposed):
    """An intermediate tensor that is also a graph output keeps its producer: nothing is fused past it."""
    g = import_onnx(_model(extra_output=exposed))
    fused, folded = fuse_hard_swish(g), fold_conv_scalar_affine(g)
    if exposed == "a":
        assert fused == 0 and folded == 2
    else:
        assert fused == 1 and folded == 1  # the Mul stays folded, the Add after the exposed tensor does not
    proto = _model(extra_output=exposed)
    x = np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = edgedl.load(proto).run({"x": x})
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[exposed], want[1], rtol=1e-5, atol=1e-5)
