"""Load-time removal of Casts to the dtype their input already has (edgedl.passes.simplify.remove_noop_casts):
float -> float Casts go, real conversions, Casts whose input dtype is unknown at load time and Casts that produce
a graph output stay; results match onnxruntime."""
import numpy as np
import onnxruntime as ort
from edgedl.converters.onnx_import import import_onnx
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl.passes import remove_noop_casts

n = helper.make_node
F, I64, D = TensorProto.FLOAT, TensorProto.INT64, TensorProto.DOUBLE


def _proto(nodes, outputs, inits=None, x_type=F, x_shape=(2, 3, 4)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, list(x_shape))],
                          [helper.make_tensor_value_info(o, t, None) for o, t in outputs],
                          [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _check(proto, feeds):
    model = edgedl.load(proto.SerializeToString())
    got = model.run(feeds)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in proto.graph.output]
    for name, ref in zip(names, sess.run(names, feeds)):
        assert got[name].dtype == ref.dtype and got[name].shape == ref.shape
        np.testing.assert_allclose(got[name], ref, rtol=1e-6)
    return model


def test_float_to_float_casts_removed():
    nodes = [n("Cast", ["x"], ["c0"], to=F), n("Relu", ["c0"], ["r"]), n("Cast", ["r"], ["c1"], to=F),
             n("Transpose", ["c1"], ["t"], perm=[0, 2, 1]), n("Cast", ["t"], ["c2"], to=F),
             n("Add", ["c2", "c1b"], ["a"]), n("Cast", ["r"], ["c1b0"], to=F),
             n("Transpose", ["c1b0"], ["c1b"], perm=[0, 2, 1]), n("Cast", ["a"], ["y"], to=F)]
    nodes = nodes[:5] + nodes[6:8] + [nodes[5], nodes[8]]
    proto = _proto(nodes, [("y", F)])
    model = _check(proto, {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)})
    ops = [nd.op_type for nd in model.graph.nodes]
    assert ops.count("Cast") == 1  # only the one producing the graph output y
    assert model.graph.nodes[-1].outputs == ["y"]


def test_real_and_unknown_casts_kept():
    nodes = [n("Cast", ["x"], ["i"], to=I64), n("Cast", ["i"], ["i2"], to=I64),  # int64 -> int64: removed
             n("Cast", ["i2"], ["f"], to=F),  # a real conversion: kept
             n("Shape", ["x"], ["s"]), n("Cast", ["s"], ["s2"], to=I64),  # Shape's dtype not tracked: kept
             n("Cast", ["f"], ["d"], to=D), n("Cast", ["d"], ["f2"], to=F),  # float -> double -> float: kept
             n("Mul", ["f2", "two"], ["m"]), n("Identity", ["s2"], ["shape_out"]), n("Neg", ["m"], ["y"])]
    proto = _proto(nodes, [("y", F), ("shape_out", I64)], {"two": np.array(2.0, np.float32)})
    x = (np.random.default_rng(1).standard_normal((2, 3, 4)) * 5).astype(np.float32)
    model = _check(proto, {"x": x})
    casts = [(nd.inputs[0], nd.attrs["to"]) for nd in model.graph.nodes if nd.op_type == "Cast"]
    assert ("i", I64) not in casts and len(casts) == 5


def test_cast_count_and_graph_input():
    nodes = [n("Cast", ["x"], ["c"], to=F), n("Neg", ["c"], ["y"]), n("Abs", ["c"], ["z"])]
    graph = import_onnx(_proto(nodes, [("y", F), ("z", F)]).SerializeToString())
    assert remove_noop_casts(graph) == 1
    assert [nd.inputs for nd in graph.nodes] == [["x"], ["x"]]
    graph = import_onnx(_proto(nodes, [("y", F), ("c", F)]).SerializeToString())
    assert remove_noop_casts(graph) == 0  # c is a graph output


def test_half_model_casts():
    """A float16 model computes in float32: its internal Casts to float16 become float -> float and go."""
    nodes = [n("Relu", ["x"], ["r"]), n("Cast", ["r"], ["c"], to=TensorProto.FLOAT16), n("Neg", ["c"], ["y"])]
    proto = _proto(nodes, [("y", TensorProto.FLOAT16)], x_type=TensorProto.FLOAT16)
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float16)
    model = _check(proto, {"x": x})
    assert [nd.op_type for nd in model.graph.nodes].count("Cast") == 2  # the boundary casts only
