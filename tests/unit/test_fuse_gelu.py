"""Load-time fusion of PyTorch's exported exact GELU, x * 0.5 * (1 + Erf(x / sqrt 2)), into one Gelu node
(edgedl.passes.fuse.fuse_gelu): every exported ordering fuses and matches onnxruntime; chains whose intermediate
tensors are read elsewhere, are graph outputs or use other constants are left alone; training runs through the
fused Gelu's backward."""
import numpy as np
import onnxruntime as ort
import pytest
from edgedl.converters.onnx_import import import_onnx
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl.passes import fuse_gelu

n = helper.make_node
C = {"s": np.array(1.4142135, np.float32), "r": np.array(0.70710677, np.float32), "one": np.array(1.0, np.float32),
     "half": np.array(0.5, np.float32)}


def _proto(nodes, outputs=("y",), inits=C, x_shape=(2, 5, 24), opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _head(scale="div"):
    if scale == "div":
        return [n("Div", ["x", "s"], ["a"])]
    if scale == "mul":
        return [n("Mul", ["x", "r"], ["a"])]
    return [n("Mul", ["r", "x"], ["a"])]


TAILS = {
    "x_then_half": [n("Add", ["b", "one"], ["c"]), n("Mul", ["x", "c"], ["d"]), n("Mul", ["d", "half"], ["y"])],
    "half_then_x": [n("Add", ["one", "b"], ["c"]), n("Mul", ["c", "half"], ["d"]), n("Mul", ["d", "x"], ["y"])],
    "xhalf_times": [n("Mul", ["x", "half"], ["h"]), n("Add", ["b", "one"], ["c"]), n("Mul", ["h", "c"], ["y"])],
    "half_first": [n("Mul", ["half", "x"], ["h"]), n("Add", ["b", "one"], ["c"]), n("Mul", ["c", "h"], ["y"])],
}


def _gelu_chain(scale, tail):
    return _head(scale) + [n("Erf", ["a"], ["b"])] + TAILS[tail]


def _ops(model):
    return [nd.op_type for nd in model.graph.nodes]


def _ort(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("scale", ["div", "mul", "mul_swapped"])
@pytest.mark.parametrize("tail", list(TAILS))
def test_exported_gelu_fuses_and_matches_onnxruntime(scale, tail):
    proto = _proto(_gelu_chain(scale, tail))
    model = edgedl.load(proto.SerializeToString())
    assert _ops(model) == ["Gelu"]
    assert _ops(edgedl.load(proto.SerializeToString(), optimize=False)).count("Erf") == 1
    x = (np.random.default_rng(0).standard_normal((2, 5, 24)) * 3).astype(np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], _ort(proto, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_fused_gelu_inside_a_network():
    rng = np.random.default_rng(1)
    inits = dict(C, w1=rng.standard_normal((24, 32)).astype(np.float32),
                 w2=rng.standard_normal((32, 8)).astype(np.float32))
    nodes = ([n("MatMul", ["x", "w1"], ["m"])] + [n(nd.op_type, [("m" if i == "x" else i) for i in nd.input],
                                                    list(nd.output)) for nd in _gelu_chain("div", "x_then_half")])
    nodes[-1].output[0] = "g"
    nodes.append(n("MatMul", ["g", "w2"], ["y"]))
    proto = _proto(nodes, inits=inits)
    model = edgedl.load(proto.SerializeToString())
    assert _ops(model) == ["MatMul", "Gelu", "MatMul"]
    x = rng.standard_normal((2, 5, 24)).astype(np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], _ort(proto, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["intermediate_output", "erf_read_twice", "sum_read_twice", "wrong_scale",
                                  "wrong_half", "wrong_one", "other_x", "xhalf_read_twice"])
def test_not_fused(case):
    nodes = _gelu_chain("div", "x_then_half")
    outputs = ["y"]
    inits = dict(C)
    if case == "intermediate_output":
        outputs.append("c")
    elif case == "erf_read_twice":
        nodes.append(n("Neg", ["b"], ["z"]))
        outputs.append("z")
    elif case == "sum_read_twice":
        nodes.append(n("Neg", ["d"], ["z"]))
        outputs.append("z")
    elif case == "wrong_scale":
        inits["s"] = np.array(1.5, np.float32)
    elif case == "wrong_half":
        inits["half"] = np.array(0.25, np.float32)
    elif case == "wrong_one":
        inits["one"] = np.array(2.0, np.float32)
    elif case == "other_x":  # (1 + erf(x / sqrt 2)) times something other than x
        nodes = [n("Neg", ["x"], ["x2"])] + _gelu_chain("div", "x_then_half")
        nodes[4] = n("Mul", ["x2", "c"], ["d"])
    elif case == "xhalf_read_twice":
        nodes = _gelu_chain("div", "xhalf_times") + [n("Neg", ["h"], ["z"])]
        outputs.append("z")
    proto = _proto(nodes, outputs=outputs, inits=inits)
    model = edgedl.load(proto.SerializeToString())
    assert "Erf" in _ops(model) and "Gelu" not in _ops(model)
    x = (np.random.default_rng(2).standard_normal((2, 5, 24)) * 2).astype(np.float32)
    got = model.run({"x": x})
    for name, ref in zip(outputs, _ort(proto, {"x": x})):
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6)


def test_rank0_input_with_1d_constants_not_fused():
    """A (1,)-shaped constant broadcasts a scalar x to shape (1,): the Gelu would keep the scalar shape."""
    inits = {k: v.reshape(1) for k, v in C.items()}
    proto = _proto(_gelu_chain("div", "x_then_half"), inits=inits, x_shape=())
    model = edgedl.load(proto.SerializeToString())
    assert "Gelu" not in _ops(model)
    assert model.run({"x": np.array(0.7, np.float32)})["y"].shape == (1,)
    proto = _proto(_gelu_chain("div", "x_then_half"), inits=inits)  # x of rank 3: fused
    assert _ops(edgedl.load(proto.SerializeToString())) == ["Gelu"]


def test_two_chains_count():
    nodes = _gelu_chain("div", "x_then_half")
    second = [n(nd.op_type, [i if i in C or i == "x" else i + "2" for i in nd.input], [nd.output[0] + "2"])
              for nd in _gelu_chain("mul", "xhalf_times")]
    proto = _proto(nodes + second, outputs=("y", "y2"))
    graph = import_onnx(proto.SerializeToString())
    assert fuse_gelu(graph) == 2
    assert [nd.op_type for nd in graph.nodes] == ["Gelu", "Gelu"]


def test_training_through_fused_gelu():
    from edgedl.model import Model
    from edgedl.train.trainer import Trainer

    rng = np.random.default_rng(0)
    inits = dict(C, w1=(rng.standard_normal((8, 16)) * 0.3).astype(np.float32),
                 w2=(rng.standard_normal((16, 3)) * 0.3).astype(np.float32))
    chain = [n(nd.op_type, [("m" if i == "x" else i) for i in nd.input], list(nd.output))
             for nd in _gelu_chain("div", "x_then_half")]
    chain[-1].output[0] = "g"
    nodes = [n("MatMul", ["x", "w1"], ["m"]), *chain, n("MatMul", ["g", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    graph = import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert fuse_gelu(graph) == 1
    trainer = Trainer(Model(graph), lr=0.05)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    first = trainer.train_step(x, y)[0]
    for _ in range(30):
        last = trainer.train_step(x, y)[0]
    assert np.isfinite(last) and last < first


def test_quantized_chain_fuses_before_qdq_lowering():
    """DequantizeLinear -> exported GELU -> QuantizeLinear: fused first, so the int8 lowering sees one Gelu
    between DQ and Q; the result stays within one quantization step of onnxruntime."""
    inits = dict(C, sx=np.array(0.05, np.float32), zx=np.array(0, np.int8), sy=np.array(0.03, np.float32),
                 zy=np.array(-20, np.int8))
    chain = [n(nd.op_type, [("xf" if i == "x" else i) for i in nd.input], list(nd.output))
             for nd in _gelu_chain("div", "x_then_half")]
    chain[-1].output[0] = "g"
    nodes = [n("DequantizeLinear", ["x", "sx", "zx"], ["xf"]), *chain, n("QuantizeLinear", ["g", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [4, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = edgedl.load(proto.SerializeToString())
    assert "Erf" not in _ops(model)
    x = np.arange(-128, 128, dtype=np.int8).reshape(4, 64)
    got = model.run({"x": x})["y"].astype(np.int32)
    ref = _ort(proto, {"x": x})[0].astype(np.int32)
    assert np.abs(got - ref).max() <= 1
