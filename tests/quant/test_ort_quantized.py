"""Models quantized by onnxruntime (quantize_static: QDQ and QOperator forms, int8 and uint8 activations,
per-channel and per-tensor weights) run in edgedl on int8 kernels and agree with onnxruntime's own int8
execution within 2 LSB of the output's quantization step.

The comparison is on the final (dequantized) outputs, in units of the output scale: edgedl reproduces
onnxruntime's float requantization (``_requant = "float"``), so most outputs match exactly; the documented
differences are float islands (ops without an int8 kernel run in float32 in both, in a different order)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import edgedl
from edgedl import zoo

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")


def _models():
    return {
        "resnet": lambda: zoo.resnet_like(resolution=32, widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1), classes=10),
        "mobilenet": lambda: zoo.mobilenet_v2_like(resolution=32, width=0.35, classes=10),
        "kws": lambda: zoo.kws_tc_resnet(frames=49, classes=12),
        "nhwc": lambda: zoo.nhwc_cnn(height=32, width=32),
    }


class _Reader(quantization.CalibrationDataReader):
    def __init__(self, name, shape, n=8):
        rng = np.random.default_rng(0)
        self.items = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.items, None)


def _quantize_with_ort(tmp_path, model, fmt, act, per_channel, quantize_bias=True):
    src, pre, dst = (str(tmp_path / f) for f in ("m.onnx", "pre.onnx", "q.onnx"))
    onnx.save(model, src)
    quantization.shape_inference.quant_pre_process(src, pre, skip_symbolic_shape=True)
    inp = model.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    quantization.quantize_static(pre, dst, _Reader(inp.name, shape), quant_format=fmt, activation_type=act,
                                 weight_type=quantization.QuantType.QInt8, per_channel=per_channel,
                                 extra_options={"QuantizeBias": quantize_bias})
    return dst, inp.name, shape


def _output_scale(model: onnx.ModelProto) -> float:
    """Scale of the DequantizeLinear that produces the graph output (1.0 if it is not dequantized)."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    out = model.graph.output[0].name
    for n in model.graph.node:
        if out in n.output and n.op_type == "DequantizeLinear":
            return float(inits[n.input[1]].reshape(-1)[0])
    # an output computed in float after the last DequantizeLinear (e.g. Softmax): compare in its own units
    return 1.0 / 255


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("fmt,act,per_channel,bias", [
    ("QDQ", "QInt8", True, True),
    ("QDQ", "QUInt8", False, True),
    ("QDQ", "QInt8", True, False),      # float biases (QuantizeBias=False): quantized at load
    ("QOperator", "QInt8", True, True),
    ("QOperator", "QUInt8", True, True),
])
def test_onnxruntime_quantized_models_agree_within_2_lsb(tmp_path, name, fmt, act, per_channel, bias):
    model = _models()[name]()
    path, iname, shape = _quantize_with_ort(tmp_path, model, getattr(quantization.QuantFormat, fmt),
                                            getattr(quantization.QuantType, act), per_channel, bias)
    qmodel = onnx.load(path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    m = edgedl.load(path)
    from edgedl.quant.inspect import precision_summary

    summary = precision_summary(m)
    assert summary.int8.get("QLinearConv", 0) > 0, summary
    step = _output_scale(qmodel)
    rng = np.random.default_rng(1)
    diffs = []
    for _ in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        want = sess.run(None, {iname: x})[0]
        got = m.run({iname: x})[m.graph.outputs[0].name]
        assert got.shape == want.shape and got.dtype == want.dtype
        diffs.append(np.abs(got.astype(np.float64) - want) / step)
    worst = max(float(d.max()) for d in diffs)
    exact = float(np.mean([np.mean(d == 0) for d in diffs]))
    print(f"{name} {fmt} {act} per_channel={per_channel}: worst {worst:.2f} LSB, exact {exact:.4f}")  # for -s runs
    assert worst <= 2.0 + 1e-3, f"{name} {fmt} {act}: worst difference {worst:.2f} LSB"


def test_qdq_lowering_leaves_no_pattern_in_float_for_a_plain_cnn(tmp_path):
    model = _models()["resnet"]()
    path, _, _ = _quantize_with_ort(tmp_path, model, quantization.QuantFormat.QDQ, quantization.QuantType.QInt8, True)
    m = edgedl.load(path)
    from edgedl.quant.inspect import precision_summary

    s = precision_summary(m)
    assert s.int8["QLinearConv"] == 12
    assert "com.microsoft.QGemm" in s.int8
    # the only DequantizeLinear left is the one at the output (weights are folded into the int8 ops)
    assert s.edges.get("DequantizeLinear", 0) <= 2, s
    assert os.path.getsize(path) > 0
