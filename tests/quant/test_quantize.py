"""Post-training quantization (edgedl.quantize): accuracy on a real task (the bundled digits CNN), the QDQ
export and its onnxruntime round trip, dynamic quantization, the report, the CLI and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgedl
from edgedl.quant.calibrate import int8_params

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def digits():
    d = np.load(DATA / "digits_split.npz")
    model = edgedl.load(DATA / "digits_cnn.onnx")
    calibration = [d["x_train"][i:i + 32] for i in range(0, 320, 32)]
    fp32 = model.run({"input": d["x_test"]})["logits"]
    return model, calibration, d["x_test"], d["y_test"], fp32


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_digits_accuracy_within_half_a_point_of_fp32(digits, method, per_channel):
    model, cal, x, y, fp32 = digits
    q = edgedl.quantize(model, cal, method=method, per_channel=per_channel, progress=False)
    logits = q.run({"input": x})["logits"]
    acc_fp32 = float(np.mean(fp32.argmax(1) == y))
    acc_int8 = float(np.mean(logits.argmax(1) == y))
    agreement = float(np.mean(logits.argmax(1) == fp32.argmax(1)))
    assert acc_int8 >= acc_fp32 - 0.005, (method, per_channel, acc_fp32, acc_int8)
    assert agreement >= 0.99, (method, per_channel, agreement)


def test_quantized_model_runs_int8_kernels_and_reports_ranges(digits):
    model, cal, x, _, _ = digits
    q = edgedl.quantize(model, cal, progress=False)
    from edgedl.quant.inspect import precision_summary

    s = precision_summary(q)
    assert s.int8.get("QLinearConv") == 3
    assert s.int8.get("com.microsoft.QGemm") == 1
    r = q.quantization
    assert r.method == "minmax" and r.calibration_feeds == len(cal)
    lo, hi = r.ranges["input"]
    assert lo == 0.0 and hi == pytest.approx(float(np.max(np.concatenate(cal))))
    scale, zp = r.params["input"]
    assert (scale, zp) == int8_params(lo, hi)
    assert q.graph.metadata["edgedl.requant"] == "double"


def test_reshape_with_a_computed_shape_runs_on_int8():
    # Shape -> Gather -> Concat -> Reshape (a flatten written the PyTorch way) before the classifier: the
    # Reshape shares its input's parameters and runs on int8, no float island between the layers
    from edgedl import zoo
    from edgedl.quant.inspect import precision_summary

    model = edgedl.load(zoo.nhwc_cnn())
    rng = np.random.default_rng(0)
    cal = [rng.standard_normal((1, 64, 64, 3)).astype(np.float32) for _ in range(4)]
    q = edgedl.quantize(model, cal, progress=False)
    s = precision_summary(q)
    assert s.int8.get("Reshape") == 1 and s.int8.get("QLinearMatMul") == 1
    assert [op for op, _ in s.float_islands] == ["Softmax"]  # after the last DequantizeLinear, as intended
    assert s.edges == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    x = cal[0]
    want = model.run({"image": x})["probabilities"]
    got = q.run({"image": x})["probabilities"]
    assert np.argmax(got) == np.argmax(want) and np.abs(got - want).max() < 0.05


def test_save_writes_qdq_that_onnxruntime_runs_close_to_edgedl(digits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    model, cal, x, _, _ = digits
    q = edgedl.quantize(model, cal, progress=False)
    path = tmp_path / "digits.int8.onnx"
    q.save(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    assert all(init.data_type != onnx.TensorProto.FLOAT or len(init.dims) <= 1 or init.name.endswith("scale")
               for init in proto.graph.initializer), "float weights left in the QDQ model"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    got = q.run({"input": x})["logits"]
    out_scale = q.quantization.params["logits"][0]
    # edgedl: TFLite fixed-point requantization; onnxruntime: float; they differ at rounding ties only
    assert np.max(np.abs(got - want)) <= 2 * out_scale + 1e-6
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    again = edgedl.load(path)  # the metadata keeps edgedl's requantization mode: the same bits
    np.testing.assert_array_equal(again.run({"input": x})["logits"], got)


def test_dynamic_quantization_of_matmul_models(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 128)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((10, 128)).astype(np.float32) * 0.1
    b2 = rng.standard_normal(10).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = edgedl.load(proto)
    q = edgedl.quantize(model, dynamic=True)
    assert q.op_counts().get("MatMulInteger") == 2 and q.op_counts().get("DynamicQuantizeLinear") == 2
    x = rng.standard_normal((16, 64)).astype(np.float32)
    ref = model(x)
    got = q(x)
    assert np.max(np.abs(got - ref)) < 0.05 * np.max(np.abs(ref))
    path = tmp_path / "mlp.dyn.onnx"
    q.save(path)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_quantize_rejects_bad_input(digits):
    model, cal, _, _, _ = digits
    with pytest.raises(edgedl.EdgeDLError, match="calibration"):
        edgedl.quantize(model, None)
    with pytest.raises(edgedl.EdgeDLError, match="empty"):
        edgedl.quantize(model, [])
    with pytest.raises(edgedl.EdgeDLError, match="method"):
        edgedl.quantize(model, cal, method="magic")
    with pytest.raises(edgedl.EdgeDLError, match="not one dict"):
        edgedl.quantize(model, {"input": cal[0]})
    with pytest.raises(edgedl.EdgeDLError, match="NaN"):
        edgedl.quantize(model, [np.full((1, 1, 8, 8), np.nan, np.float32)], progress=False)
    q = edgedl.quantize(model, cal, progress=False)
    with pytest.raises(edgedl.EdgeDLError, match="already quantized"):
        edgedl.quantize(q, cal)


def test_cli_quantize_prints_the_accuracy_proxy(digits, tmp_path, capsys):
    from edgedl.cli import main

    _, cal, _, _, _ = digits
    np.savez(tmp_path / "cal.npz", input=np.concatenate(cal))
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(DATA / "digits_cnn.onnx"), "--calibration", str(tmp_path / "cal.npz"), "-o", str(out),
                 "--method", "percentile", "--batch-size", "40"]) == 0
    text = capsys.readouterr().out
    assert "top-1 agreement with fp32" in text and out.is_file()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "precision: int8 steps:" in text and "QLinearConv x3" in text
    assert main(["quantize", str(DATA / "digits_cnn.onnx"), "-o", str(out)]) == 2
    assert "--calibration is required" in capsys.readouterr().err


def test_an_opset_10_model_is_upgraded_to_13_and_quantized(tmp_path):
    """Models older than opset 13 (PP-OCR's published files are opset 11 and 12) are converted with onnx's version
    converter before quantization (per-channel DequantizeLinear is an opset-13 form), as onnxruntime's quantizer
    does; the int8 model tracks the float one."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Clip", ["r"], ["y"], min=0.0, max=6.0)]  # Clip's attribute form (opset < 11)
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    proto.ir_version = 6
    calibration = [rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(8)]
    q = edgedl.quantize(proto, calibration, progress=False)
    assert q.graph.opset == 13 and any(n.op_type == "QLinearConv" or n.op_type == "DequantizeLinear"
                                       for n in q.graph.nodes)
    x = calibration[0]
    want = edgedl.load(proto).run({"x": x})["y"]
    assert np.abs(q.run({"x": x})["y"] - want).max() < 0.1
