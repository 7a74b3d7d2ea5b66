"""Quantization-aware fine-tuning: the fake-quantization kernels against numpy and against the QDQ pair they
stand for, the QDQ <-> training-graph round trip, the frozen int8 backbone, fine-tuning to a shifted domain
(the int8 export within 0.5 accuracy points of its float counterpart), the float head, and onnxruntime
loading the result."""
from __future__ import annotations

import numpy as np
import pytest

import edgedl
from edgedl import EdgeDLError
from edgedl.ir import Node
from edgedl.kernels.cpu import fake_quant as FQ
from edgedl.ops.fake_quant import FakeQuantize, FakeQuantizeWeight
from edgedl.ops.quantize import DequantizeLinear, QuantizeLinear
from edgedl.quant.quantize_model import source_graph
from edgedl.train import Adam
from edgedl.train.qat import to_qat


def _acc(model, x, y) -> float:
    return float(np.mean(np.argmax(model(x), 1) == y))


def _values(rng, n, scale, zp):
    """Random values, exact rounding ties, and values far outside the range."""
    x = rng.normal(0, 200 * scale, n).astype(np.float32)
    k = rng.integers(-140, 140, n // 4)
    x[: n // 4] = ((k + zp + 0.5) * np.float64(scale)).astype(np.float32)
    return x


@pytest.mark.parametrize("qtype, zp", [(np.int8, -3), (np.int8, 0), (np.uint8, 128), (np.uint8, 7)])
@pytest.mark.parametrize("n", [1000, 70001])  # serial and parallel paths
def test_fake_quantize_equals_quantize_then_dequantize(qtype, zp, n):
    rng = np.random.default_rng(n + zp)
    scale = np.float32(0.0173)
    x = _values(rng, n, scale, zp)
    s, z = np.array(scale, np.float32), np.array(zp, qtype)
    node = Node("FakeQuantize", "fq", ["x", "s", "z"], ["y", "m"], domain="edgedl")
    y_ref, m_ref = FakeQuantize(node, 17).ref(x, s, z)
    y, m = np.empty_like(x), np.empty(x.shape, np.uint8)
    lo, hi = np.iinfo(qtype).min, np.iinfo(qtype).max
    FQ.fake_quantize(x, scale, zp, lo, hi, y, m)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(m, m_ref)
    q = QuantizeLinear(Node("QuantizeLinear", "q", ["x", "s", "z"], ["q"]), 17).ref(x, s, z)[0]
    dq = DequantizeLinear(Node("DequantizeLinear", "d", ["q", "s", "z"], ["y"]), 17).ref(q, s, z)[0]
    np.testing.assert_array_equal(y, dq)
    # the mask: rounded value inside the integer range before clipping (PyTorch's rule)
    v = np.rint(x.astype(np.float32) / scale) + zp
    np.testing.assert_array_equal(m, ((v >= lo) & (v <= hi)).astype(np.uint8))
    assert 0 < m.sum() < n
    dy = rng.normal(size=n).astype(np.float32)
    np.testing.assert_array_equal(FQ.fake_quantize_grad(dy, m), np.where(m == 1, dy, 0).astype(np.float32))


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_fake_quantize_weight_is_the_exported_int8_weight(axis):
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.1, (6, 4, 3, 3)).astype(np.float32)
    w[2] = 0.0  # an all-zero channel keeps scale 1
    op = FakeQuantizeWeight(Node("FakeQuantizeWeight", "w", ["w"], ["y"], {} if axis is None else {"axis": axis},
                                 domain="edgedl"), 17)
    y = op.ref(w)[0]
    q, s, ax = op.quantized(w)
    assert q.dtype == np.int8 and q.min() >= -127 and ax == axis
    scale = s if axis is None else s.reshape([-1 if i == axis else 1 for i in range(4)])
    np.testing.assert_array_equal(y, q.astype(np.float32) * scale)
    amax = np.abs(w).max() if axis is None else np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(1)
    np.testing.assert_allclose(s, np.where(amax > 0, amax / 127, 1), rtol=1e-6)
    assert np.abs(y - w).max() <= np.max(s) / 2 + 1e-7
    op.in_types = [edgedl.ir.TensorType(w.shape, np.dtype(np.float32))]
    g = rng.normal(size=w.shape).astype(np.float32)
    np.testing.assert_array_equal(op.backward([g], [None], [None], [True])[0], g)  # straight through


@pytest.fixture(scope="module")
def quantized_digits(pretrained_digits, digits):
    x = digits[0]
    return lambda: edgedl.quantize(edgedl.load(pretrained_digits), [x[i:i + 64] for i in range(0, 512, 64)],
                                   progress=False)


def test_training_graph_round_trips_to_the_same_int8_model(quantized_digits, digits):
    q = quantized_digits()
    qat = to_qat(source_graph(q))
    ops = [n.op_type for n in qat.graph.nodes]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert ops.count("FakeQuantizeWeight") == 3 and qat.weights == ["w1", "w2", "w3"]
    assert qat.biases == ["b1", "b2", "b3"]
    again = quantized_digits()
    again.set_source(qat.export())
    xt = digits[2]
    np.testing.assert_array_equal(again(xt), q(xt))  # untouched weights: the same int8 model, bit for bit


def test_operator_form_and_unpaired_quantization_are_refused():
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    g = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"]),
                           helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["y"])], "g", [x], [y], inits)
    m = edgedl.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(EdgeDLError, match="QDQ form"):
        edgedl.Trainer(m)
    with pytest.raises(EdgeDLError, match="calibration"):
        from edgedl import zoo

        edgedl.Trainer(edgedl.load(zoo.digits_cnn()), quantized=True)
    with pytest.raises(EdgeDLError, match="int8 backbone"):
        from edgedl import zoo

        edgedl.Trainer(edgedl.load(zoo.digits_cnn()), float_head=True)


def test_frozen_backbone_runs_on_int8_kernels(quantized_digits, digits):
    q = quantized_digits()
    tr = edgedl.Trainer(q, trainable="last:1")
    prefix = tr.runner._prefix_model(tr.runner.train_split)
    assert "QLinearConv" in prefix.op_counts()  # the frozen convolutions are int8 inference
    assert tr.trainable == ["w3", "b3"]
    x = digits[2]
    # before training, the trainer's forward is the int8 model's up to the fake-quantized head's rounding
    out, ref = tr.predict(x), q(x)
    assert np.mean(np.argmax(out, 1) == np.argmax(ref, 1)) > 0.99
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("policy", ["all", "last:2"])
def test_qat_fine_tuning_exports_int8_within_half_a_point_of_its_float_counterpart(
        quantized_digits, digits, policy, tmp_path):
    x, y, xt, yt = digits
    xs, ys, xst = 1.0 - x[:400], y[:400], 1.0 - xt  # the shifted domain: inverted digits
    q = quantized_digits()
    before = _acc(q, xst, yt)
    tr = edgedl.Trainer(q, optimizer=Adam(lr=2e-3), trainable=policy, seed=0)
    tr.fit(xs, ys, epochs=8, batch_size=32)
    int8 = _acc(q, xst, yt)  # the committed model: QDQ int8 on int8 kernels
    assert "QLinearConv" in q.op_counts()
    # the float counterpart: the same trained weights, no quantization anywhere
    float_graph = tr.qat.float_after(tr.qat.weights + tr.qat.biases).export(tr.params)
    # (only the input keeps its quantization: it is not downstream of any trained tensor)
    assert [n.op_type for n in float_graph.nodes].count("QuantizeLinear") == 1
    fm = quantized_digits()
    fm.set_source(float_graph)
    flt = _acc(fm, xst, yt)
    assert int8 > before + 0.4, (before, int8)
    assert int8 >= flt - 0.005, (int8, flt)  # quantization costs at most half a point
    # onnxruntime loads the exported QDQ model and agrees with edgedl
    ort = pytest.importorskip("onnxruntime")
    q.save(tmp_path / "qat.onnx")
    sess = ort.InferenceSession(str(tmp_path / "qat.onnx"), providers=["CPUExecutionProvider"])
    o = sess.run(None, {"x": xst})[0]
    mine = q(xst)
    assert np.mean(np.argmax(o, 1) == np.argmax(mine, 1)) > 0.98
    out_scale = float(q.source.initializers[[n for n in q.source.nodes if n.op_type == "QuantizeLinear"][-1]
                                            .inputs[1]])
    assert np.abs(o - mine).max() <= 3 * out_scale + 1e-6


def test_float_head_behind_an_int8_backbone(quantized_digits, digits):
    x, y, xt, yt = digits
    q = quantized_digits()
    before = _acc(q, 1.0 - xt, yt)
    tr = edgedl.Trainer(q, optimizer=Adam(lr=3e-3), trainable="last:2", float_head=True, seed=0)
    tr.fit(1.0 - x[:400], y[:400], epochs=8)
    ops = [n.op_type for n in q.source.nodes]
    # the backbone stays QDQ; the head (second conv onwards) reads float weights, no fake quantization left
    assert ops.count("QuantizeLinear") >= 2
    conv2 = [n for n in q.source.nodes if n.op_type == "Conv"][1]
    assert conv2.inputs[1] in q.source.initializers and q.source.initializers[conv2.inputs[1]].dtype == np.float32
    assert ops[-1] == "Gemm"
    after = _acc(q, 1.0 - xt, yt)
    assert after > before + 0.4
    assert after == pytest.approx(tr.evaluate(1.0 - xt, yt)["accuracy"], abs=0.01)


def test_quantized_true_calibrates_a_float_model_first(pretrained_digits, digits):
    x, y, xt, yt = digits
    m = edgedl.load(pretrained_digits)
    tr = edgedl.Trainer(m, quantized=True, calibration=[x[i:i + 64] for i in range(0, 256, 64)], trainable="last:1")
    assert tr.qat is not None
    tr.fit(x[:256], y[:256], epochs=1)
    assert any(n.op_type == "QuantizeLinear" for n in m.source.nodes)  # the committed model is int8 now
    assert _acc(m, xt, yt) > 0.9
