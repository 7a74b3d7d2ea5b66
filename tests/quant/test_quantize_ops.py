"""QuantizeLinear / DequantizeLinear: the Numba kernels (float32 <-> int8/uint8, per tensor and per axis)
against the numpy reference and onnxruntime, including exact ties (half to even) and saturation."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl

ort = pytest.importorskip("onnxruntime")


def _model(op, x_type, shape, scale, zp, axis=1):
    out_type = TensorProto.FLOAT if op == "DequantizeLinear" else helper.np_dtype_to_tensor_dtype(zp.dtype)
    inits = [numpy_helper.from_array(scale, "s")]
    inputs = ["x", "s"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "z"))
        inputs.append("z")
    node = helper.make_node(op, inputs, ["y"], axis=axis)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, list(shape))],
                          [helper.make_tensor_value_info("y", out_type, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("qtype", [np.int8, np.uint8])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_linear_kernel(qtype, per_axis):
    rng = np.random.default_rng(5)
    shape = (2, 4, 5, 7)
    if per_axis:
        scale = rng.uniform(0.01, 0.1, 4).astype(np.float32)
        zp = rng.integers(np.iinfo(qtype).min // 4, np.iinfo(qtype).max // 4, 4).astype(qtype)
    else:
        scale, zp = np.array(0.05, np.float32), np.array(3, qtype)
    x = rng.uniform(-20, 20, shape).astype(np.float32)
    # exact ties x / scale = k + 0.5 (both parities) and values far past the range
    s_b = scale.reshape(1, -1, 1, 1) if per_axis else scale
    ties = ((np.arange(x.size).reshape(shape) % 9) - 4 + 0.5).astype(np.float32) * s_b
    x[:, :, 0] = ties[:, :, 0]
    x[:, :, 1, :2] = np.float32(1e6)
    model = edgedl.load(_model("QuantizeLinear", TensorProto.FLOAT, shape, scale, zp))
    y = model(x)
    assert y.dtype == qtype
    (step,) = model.plan({"x": shape}).steps
    assert step.kernel.impl == "numba"
    np.testing.assert_array_equal(y, step.op.ref(x, scale, zp)[0])
    proto = _model("QuantizeLinear", TensorProto.FLOAT, shape, scale, zp)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # x / scale in float32 may sit one ulp off a tie in either engine: allow 1 step where the quotient is a tie
    diff = np.abs(y.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= x.size // 50


@pytest.mark.parametrize("qtype,onnx_type", [(np.int8, TensorProto.INT8), (np.uint8, TensorProto.UINT8)])
@pytest.mark.parametrize("per_axis", [False, True])
def test_dequantize_linear_kernel(qtype, onnx_type, per_axis):
    rng = np.random.default_rng(6)
    shape = (3, 5, 6)
    info = np.iinfo(qtype)
    q = rng.integers(info.min, info.max + 1, shape).astype(qtype)
    if per_axis:
        scale = rng.uniform(0.01, 0.1, 5).astype(np.float32)
        zp = rng.integers(info.min, info.max + 1, 5).astype(qtype)
    else:
        scale, zp = np.array(0.02, np.float32), np.array(info.max // 3, qtype)
    proto = _model("DequantizeLinear", onnx_type, shape, scale, zp)
    model = edgedl.load(proto)
    y = model(q)
    (step,) = model.plan({"x": shape}).steps
    assert step.kernel.impl == "numba" and y.dtype == np.float32
    np.testing.assert_array_equal(y, step.op.ref(q, scale, zp)[0])
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": q})[0]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


def test_bad_quantization_parameters():
    x = np.zeros((2, 3), np.float32)
    bad = _model("QuantizeLinear", TensorProto.FLOAT, (2, 3), np.ones(4, np.float32), np.zeros(4, np.int8))
    with pytest.raises(edgedl.EdgeDLError, match="per-axis scale"):
        edgedl.load(bad)(x)
    mismatch = _model("QuantizeLinear", TensorProto.FLOAT, (2, 3), np.ones(3, np.float32), np.zeros(2, np.int8))
    with pytest.raises(edgedl.EdgeDLError, match="zero point shape"):
        edgedl.load(mismatch)(x)
