"""float16 and bfloat16 models compute in float32 and return their own dtypes."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import edgedl


def _cnn(elem: int, npdt):
    rng = np.random.default_rng(0)
    w = nh.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(npdt), "w")
    b = nh.from_array((rng.standard_normal(8) * 0.1).astype(npdt), "b")
    fc = nh.from_array((rng.standard_normal((8, 4)) * 0.3).astype(npdt), "fc")
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("GlobalAveragePool", ["p"], ["gp"]), h.make_node("Flatten", ["gp"], ["f"]),
             h.make_node("MatMul", ["f", "fc"], ["mm"]), h.make_node("Softmax", ["mm"], ["y"], axis=-1)]
    g = h.make_graph(nodes, "m", [h.make_tensor_value_info("x", elem, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", elem, [1, 4])], [w, b, fc])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()


def test_float16_cnn_runs_float32_kernels_and_matches_onnxruntime():
    mb = _cnn(T.FLOAT16, np.float16)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float16)
    m = edgedl.load(mb)
    got = m.run({"x": x})["y"]
    ref = ort.InferenceSession(mb, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), atol=2e-3)
    assert m.plan().kernel_impls().get("numba", 0) >= 4  # Conv, Relu, pools, MatMul in float32 kernels


def test_bfloat16_cnn_matches_the_float32_model_rounded():
    import ml_dtypes

    bf16 = ml_dtypes.bfloat16
    mb16 = _cnn(T.BFLOAT16, bf16)
    mb32 = _cnn(T.FLOAT, np.float32)
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(bf16)
    got = edgedl.load(mb16).run({"x": x})["y"]
    assert got.dtype == np.dtype(bf16)
    # the same weights rounded to bfloat16, computed in float32: the float32 model on the rounded values
    ref = ort.InferenceSession(_rounded(mb32, bf16), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float32)})[0]
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(bf16).astype(np.float32), atol=1e-2)


def _rounded(model_bytes: bytes, dtype) -> bytes:
    import onnx

    p = onnx.load_from_string(model_bytes)
    for t in p.graph.initializer:
        t.CopyFrom(nh.from_array(nh.to_array(t).astype(dtype).astype(np.float32), t.name))
    return p.SerializeToString()
