"""onnxruntime's dynamic quantization writes ``[Add(acc, bias_int32) ->] Cast -> Mul(scale)`` after every
ConvInteger / MatMulInteger, then ``Add(float_bias)`` (or before the Cast, older versions, an int32 bias);
edgedl.passes.fuse_integer_dequantize makes that one DequantizeAccumulator. Fused,
a ``quantize_dynamic`` model gives the same values as onnxruntime's ops would (the kernel against the numpy
reference of the three ops, bit for bit), and chains that are not that pattern stay."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from edgedl.converters.onnx_import import import_onnx
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl.ir import Node
from edgedl.passes import fuse_integer_dequantize
from edgedl.registry import lookup
from edgedl.testing import run_kernel

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")


def _float_model():
    """x (1, 3, 16, 16) -> Conv 3->8 3x3 (bias) -> Relu -> Conv 8->8 3x3 (bias) + the Relu (a residual Add: not a
    bias) -> Conv 8->8 3x3 s2 (bias) -> Flatten -> MatMul -> Add."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.4).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "w3"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b2"),
             numpy_helper.from_array((rng.standard_normal((512, 10)) * 0.05).astype(np.float32), "wm"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "bm")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c3", "r1"], ["res"]),
             helper.make_node("Conv", ["res", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Flatten", ["c2"], ["f"]),
             helper.make_node("MatMul", ["f", "wm"], ["m"]),
             helper.make_node("Add", ["m", "bm"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


def test_quantize_dynamic_model_fuses_and_matches_onnxruntime(tmp_path):
    fp, qp = os.path.join(tmp_path, "f.onnx"), os.path.join(tmp_path, "q.onnx")
    onnx.save(_float_model(), fp)
    quantization.quantize_dynamic(fp, qp, weight_type=quantization.QuantType.QUInt8,
                                  op_types_to_quantize=["Conv", "MatMul"])
    q = onnx.load(qp)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("ConvInteger") == 3 and ops.count("MatMulInteger") == 1
    g = import_onnx(q)
    assert fuse_integer_dequantize(g) == 4
    kinds = [n.op_type for n in g.nodes]
    assert kinds.count("DequantizeAccumulator") == 4 and "Cast" not in kinds
    fused = [n for n in g.nodes if n.op_type == "DequantizeAccumulator"]
    assert sum(len(n.inputs) == 4 and not n.inputs[2] for n in fused) == 3  # the float biases went in
    assert [n.inputs for n in g.nodes if n.op_type == "Add"] == [["c3", "r1"]]  # the residual stays
    model = edgedl.load(qp)
    assert any(n.op_type == "DequantizeAccumulator" for n in model.graph.nodes)
    sess = ort.InferenceSession(qp, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        got = model.run({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _op(inputs):
    names = [n if a is not None else "" for n, a in zip(["acc", "scale", "bias", "fbias"], inputs)]
    return lookup("DequantizeAccumulator", "edgedl")(Node("DequantizeAccumulator", "n", names, ["y"], {}, "edgedl"), 1)


@pytest.mark.parametrize("acc_shape,bias_shape,fbias_shape,numpy", [
    ((2, 5, 7, 3), (1, 5, 1, 1), None, False),      # a convolution's per-channel int32 bias (older versions)
    ((2, 5, 7, 3), (5, 1, 1), (1, 5, 1, 1), False),  # both biases
    ((2, 5, 7, 3), None, (5, 1, 1), False),          # a convolution's float bias
    ((4, 9), None, (9,), False),                     # a MatMul's per-column bias
    ((4, 9), (9,), None, False),
    ((4, 9), (1,), (9,), False),
    ((4, 9), (1,), None, False),                     # one value
    ((3, 6, 2), None, None, False),                  # no bias
    ((3, 1, 2), (4, 1), None, True),                 # a broadcast that grows the output: the reference runs
    ((3, 6, 2), (3, 6, 2), None, True),              # an elementwise bias: the reference runs
    ((3, 6, 2), (6, 1), (2,), True),                 # biases along two axes: the reference runs
])
def test_kernel_is_the_ops_it_replaces_bit_for_bit(acc_shape, bias_shape, fbias_shape, numpy):
    rng = np.random.default_rng(len(acc_shape))
    acc = rng.integers(-2 ** 31, 2 ** 31, acc_shape, dtype=np.int64).astype(np.int32)  # sums that wrap too
    scale = np.float32(3.7e-5)
    bias = None if bias_shape is None else rng.integers(-2 ** 31, 2 ** 31, bias_shape, dtype=np.int64).astype(
        np.int32)
    fbias = None if fbias_shape is None else rng.standard_normal(fbias_shape).astype(np.float32) * 1e4
    inputs = [acc, np.array(scale)]
    if bias is not None or fbias is not None:
        inputs.append(bias)
    if fbias is not None:
        inputs.append(fbias)
    op = _op(inputs)
    outs, kern = run_kernel(op, inputs, [None] * len(inputs))
    total = acc if bias is None else np.add(acc, bias, dtype=np.int32)  # wraps, as onnxruntime's Add
    want = np.multiply(total.astype(np.float32), scale, dtype=np.float32)
    if fbias is not None:
        want = np.add(want, fbias, dtype=np.float32)
    assert outs[0].shape == want.shape
    np.testing.assert_array_equal(outs[0], want)
    assert (kern.impl == "numpy") == numpy


def test_not_the_pattern_stays():
    """A Cast to another type, a second user of the accumulator or of the cast: nothing fused."""
    w = numpy_helper.from_array(np.ones((2, 3), np.int8), "w")
    for variant in ("double", "two_users", "cast_output"):
        to = TensorProto.DOUBLE if variant == "double" else TensorProto.FLOAT
        nodes = [helper.make_node("MatMulInteger", ["a", "w"], ["acc"]),
                 helper.make_node("Cast", ["acc"], ["f"], to=to),
                 helper.make_node("Mul", ["f", "s"], ["y"])]
        outs = [helper.make_tensor_value_info("y", to, None)]
        if variant == "two_users":
            outs.append(helper.make_tensor_value_info("acc", TensorProto.INT32, None))
        if variant == "cast_output":
            outs.append(helper.make_tensor_value_info("f", to, None))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.INT8, [4, 2]),
                                               helper.make_tensor_value_info("s", to, [])], outs, [w])
        g = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
        assert fuse_integer_dequantize(g) == 0, variant


def test_bad_types_are_refused():
    from edgedl.ir import TensorType

    op = _op([1, 1])

    with pytest.raises(edgedl.EdgeDLError, match="acc must be int32"):
        op.infer([TensorType((2,), np.dtype(np.float32)), TensorType((), np.dtype(np.float32))], [None, None])
    with pytest.raises(edgedl.EdgeDLError, match="broadcast"):
        _op([1, 1, 1]).infer([TensorType((2, 3), np.dtype(np.int32)), TensorType((), np.dtype(np.float32)),
                      TensorType((4,), np.dtype(np.int32))], [None] * 3)
