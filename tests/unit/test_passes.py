"""Load-time passes (BatchNormalization folding, activation fusion, Identity removal) and plan-time
constant folding keep results unchanged while removing work."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl


def _model(nodes, inits, x_shape, y_name="y"):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _bn_params(rng, c):
    return {"s": rng.uniform(0.5, 1.5, c).astype(np.float32), "t": rng.standard_normal(c).astype(np.float32),
            "m": rng.standard_normal(c).astype(np.float32), "v": rng.uniform(0.5, 2, c).astype(np.float32)}


@pytest.mark.parametrize("act", ["Relu", "HardSwish", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "Elu", "Clip"])
def test_conv_bn_activation_fold(act):
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32),
             **_bn_params(rng, 6)}
    act_inputs = ["bn"]
    if act == "Clip":
        inits["lo"], inits["hi"] = np.array(-0.5, np.float32), np.array(1.0, np.float32)
        act_inputs += ["lo", "hi"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["bn"]),
             helper.make_node(act, act_inputs, ["y"])]
    proto = _model(nodes, inits, (2, 3, 7, 7))
    fused = edgedl.load(proto)
    plain = edgedl.load(proto, optimize=False)
    assert [n.op_type for n in fused.graph.nodes] == ["Conv"]
    assert fused.graph.nodes[0].attrs["_activation"][0] == act
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(fused(x), plain(x), rtol=1e-5, atol=1e-5)


def test_gemm_bn_fold():
    rng = np.random.default_rng(1)
    inits = {"w": rng.standard_normal((5, 8)).astype(np.float32), "c": rng.standard_normal(5).astype(np.float32),
             **_bn_params(rng, 5)}
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1, alpha=0.5, beta=2.0),
             helper.make_node("BatchNormalization", ["g", "s", "t", "m", "v"], ["y"])]
    proto = _model(nodes, inits, (3, 8))
    fused = edgedl.load(proto)
    assert [n.op_type for n in fused.graph.nodes] == ["Gemm"]
    x = rng.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(fused(x), edgedl.load(proto, optimize=False)(x), rtol=1e-5, atol=1e-5)


def test_no_fusion_when_intermediate_is_shared():
    rng = np.random.default_rng(2)
    inits = {"w": rng.standard_normal((2, 2, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["c", "r"], ["y"])]
    model = edgedl.load(_model(nodes, inits, (1, 2, 3, 3)))
    assert [n.op_type for n in model.graph.nodes] == ["Conv", "Relu", "Add"]
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    c = np.einsum("oi,nihw->nohw", inits["w"][:, :, 0, 0], x)
    np.testing.assert_allclose(model(x), c + np.maximum(c, 0), rtol=1e-5, atol=1e-6)


def test_identity_and_dropout_removed():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Dropout", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Identity", ["c"], ["y"])]
    model = edgedl.load(_model(nodes, {}, (2, 3)))
    # the last Identity produces the graph output and stays
    assert [n.op_type for n in model.graph.nodes] == ["Relu", "Identity"]
    x = np.array([[-1, 0, 1], [2, -2, 3]], np.float32)
    np.testing.assert_array_equal(model(x), np.maximum(x, 0))


def test_shape_subgraph_folds_at_plan_time():
    inits = {"idx": np.array([0], np.int64), "rest": np.array([-1], np.int64)}
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "idx"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "rest"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    model = edgedl.load(_model(nodes, inits, ("N", 2, 3)))
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), np.maximum(x.reshape(4, -1), 0))
    plan = model.plan({"x": (4, 2, 3)})
    assert plan.folded == 3
    assert [s.node.op_type for s in plan.steps] == ["Reshape", "Relu"]
    assert plan.steps[0].view_shape == (4, 6)  # Reshape is a view, no copy
    assert model(x[:1].copy()).shape == (1, 6)
