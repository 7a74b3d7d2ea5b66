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


def _residual_model(rng, c=8, hw=(6, 7), shortcut="identity", act="Relu", group=1, extra_use=False):
    """x -> Conv(w1) -> c1; y = act(Conv(c1, w2) + shortcut), shortcut: x, a 1x1 projection Conv of x, or a
    broadcast constant."""
    inits = {"w1": rng.standard_normal((c, c, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((c, c // group, 3, 3)).astype(np.float32) * 0.3,
             "b2": rng.standard_normal(c).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=group)]
    if shortcut == "identity":
        r = "x"
    elif shortcut == "projection":
        inits["wp"] = rng.standard_normal((c, c, 1, 1)).astype(np.float32)
        nodes.append(helper.make_node("Conv", ["x", "wp"], ["p"]))
        r = "p"
    else:
        inits["k"] = rng.standard_normal((1, c, 1, 1)).astype(np.float32)
        r = "k"
    nodes.append(helper.make_node("Add", [r, "c2"], ["s"] if act else ["y"]))
    if act:
        nodes.append(helper.make_node(act, ["s"], ["y"]))
    outputs = ["y"] + (["c2"] if extra_use else [])
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, *hw])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("shortcut,act", [("identity", "Relu"), ("identity", None), ("projection", "Relu"),
                                          ("projection", "Clip"), ("constant", "Relu")])
def test_residual_add_fused_into_conv(shortcut, act):
    rng = np.random.default_rng(3)
    proto = _residual_model(rng, shortcut=shortcut, act=act)
    fused = edgedl.load(proto)
    ops = [n.op_type for n in fused.graph.nodes]
    assert "Add" not in ops and (act is None or act not in ops)
    (res,) = [n for n in fused.graph.nodes if n.attrs.get("_residual")]
    assert (res.attrs.get("_activation") or (None,))[0] == act
    x = rng.standard_normal((2, 8, 6, 7)).astype(np.float32)
    np.testing.assert_allclose(fused(x), edgedl.load(proto, optimize=False)(x), rtol=1e-5, atol=1e-5)


def test_residual_not_fused_into_depthwise_or_shared_output():
    rng = np.random.default_rng(4)
    for kwargs in (dict(group=8), dict(extra_use=True)):
        proto = _residual_model(rng, **kwargs)
        model = edgedl.load(proto)
        assert "Add" in [n.op_type for n in model.graph.nodes]
        assert not any(n.attrs.get("_residual") for n in model.graph.nodes)
        x = rng.standard_normal((2, 8, 6, 7)).astype(np.float32)
        for a, b in zip(model(x), edgedl.load(proto, optimize=False)(x)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_residual_conv1d_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(5)
    inits = {"w": rng.standard_normal((6, 6, 3)).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1]), helper.make_node("Add", ["c", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    proto = _model(nodes, inits, (1, 6, 11))
    model = edgedl.load(proto)
    assert [n.op_type for n in model.graph.nodes] == ["Conv"]
    x = rng.standard_normal((1, 6, 11)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
    # the fused node's numpy reference (what `edgedl ops` and the tests check kernels against) agrees too
    (step,) = model.plan({"x": x.shape}).steps
    (ref,) = step.op.ref(x, inits["w"], inits["b"], x)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("a_shape,c_shape,fused", [((5, 8), (6,), True), ((2, 3, 8), (1, 6), True),
                                                   ((1, 8), (6,), True), ((4, 8), (4, 6), False)])
def test_matmul_bias_fused(a_shape, c_shape, fused):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(6)
    inits = {"w": rng.standard_normal((8, 6)).astype(np.float32), "c": rng.standard_normal(c_shape).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["c", "m"], ["y"])]
    proto = _model(nodes, inits, a_shape)
    model = edgedl.load(proto)
    assert [n.op_type for n in model.graph.nodes] == (["MatMul"] if fused else ["MatMul", "Add"])
    x = rng.standard_normal(a_shape).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
    if fused:
        (step,) = model.plan({"x": x.shape}).steps
        np.testing.assert_allclose(step.op.ref(x, inits["w"], inits["c"])[0], want, rtol=1e-5, atol=1e-5)


def _branch(name, nodes, out, inits=()):
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                             list(inits))


def _if_model():
    """y = If(s > 0): then Relu(Conv(x)) through a nested If (its output through an Identity), else
    Sigmoid(Conv(x)) + x read again (the Identity's source has a second reader); z = If(s > 0): x itself (an
    Identity of a tensor from outside, which must stay) else Relu(x)."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "w")
    inner_then = _branch("inner_then", [helper.make_node("Conv", ["x", "w"], ["ic"], pads=[1, 1, 1, 1]),
                                        helper.make_node("Relu", ["ic"], ["ir"]),
                                        helper.make_node("Identity", ["ir"], ["iy"])], "iy")
    inner_else = _branch("inner_else", [helper.make_node("Neg", ["x"], ["iy2"])], "iy2")
    then = _branch("then", [helper.make_node("If", ["cond"], ["t"], then_branch=inner_then, else_branch=inner_else),
                            helper.make_node("Identity", ["t"], ["ty"])], "ty")
    other = _branch("else", [helper.make_node("Conv", ["x", "w"], ["ec"], pads=[1, 1, 1, 1]),
                             helper.make_node("Sigmoid", ["ec"], ["es"]),
                             helper.make_node("Identity", ["es"], ["ey"]),
                             helper.make_node("Add", ["es", "ey"], ["ez"]),
                             helper.make_node("Identity", ["ez"], ["eo"])], "eo")
    keep = _branch("keep", [helper.make_node("Identity", ["x"], ["kx"])], "kx")
    relu = _branch("relu", [helper.make_node("Relu", ["x"], ["rx"])], "rx")
    nodes = [helper.make_node("ReduceSum", ["s"], ["ssum"], keepdims=0),
             helper.make_node("Greater", ["ssum", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("If", ["cond"], ["z"], then_branch=keep, else_branch=relu)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]),
                                       helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                          [w, numpy_helper.from_array(np.array(0, np.float32), "zero")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_subgraphs_get_the_fusions_and_keep_their_interface():
    ort = pytest.importorskip("onnxruntime")
    proto = _if_model()
    model = edgedl.load(proto)
    first_if = next(n for n in model.graph.nodes if n.op_type == "If")
    then, other = first_if.attrs["then_branch"], first_if.attrs["else_branch"]
    inner = then.nodes[0].attrs["then_branch"]
    # nested: Conv + Relu is one step, and the Conv writes the branch output itself
    assert [(n.op_type, n.attrs.get("_activation", (None,))[0]) for n in inner.nodes] == [("Conv", "Relu")]
    assert inner.nodes[0].outputs == ["iy"] and [s.name for s in inner.outputs] == ["iy"]
    assert [n.op_type for n in then.nodes] == ["If"] and then.nodes[0].outputs == ["ty"]
    # the else branch: Sigmoid fused, the Identity with a second reader of its source removed by renaming
    # (remove_identities), the output Identity folded into the Add
    assert [n.op_type for n in other.nodes] == ["Conv", "Add"]
    assert other.nodes[1].outputs == ["eo"]
    keep = next(n for n in model.graph.nodes if n.outputs == ["z"]).attrs["then_branch"]
    assert [n.op_type for n in keep.nodes] == ["Identity"]  # a tensor from outside: stays
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    plain = edgedl.load(proto, optimize=False)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    for s in (np.array([1, 2], np.float32), np.array([-1, -2], np.float32)):
        ref = sess.run(None, {"x": x, "s": s})
        got = model.run({"x": x, "s": s})
        got_plain = plain.run({"x": x, "s": s})
        for name, r in zip(("y", "z"), ref):
            np.testing.assert_allclose(got[name], r, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got[name], got_plain[name])
