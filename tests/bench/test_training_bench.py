"""edgedl.benchmark.training: the TRAIN entries of ``edgedl bench --train``."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl.benchmark import training
from edgedl.benchmark.training import TORCH_MISSING, train_bench

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.onnx"
KEYS = {"engine", "trainable", "batch", "threads", "status", "error", "steps", "step_ms", "samples_per_s",
        "training_peak_bytes", "trained_values"}
STAT_KEYS = {"min", "mean", "p50", "p90", "p99", "max", "std"}


@pytest.fixture(autouse=True)
def _restore_threads():
    """train_bench sets the process's thread counts (it runs in a child of its own in `edgedl bench`)."""
    from edgedl import threads

    default, follow = threads._default, threads._follow_load
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    yield
    edgedl.set_num_threads(default, follow_load=follow)
    torch = sys.modules.get("torch")
    if torch is not None and torch_threads is not None:
        torch.set_num_threads(torch_threads)


def _spec(model, **kw):
    return {"engine": "edgedl", "model": str(model), "trainable": "last:1", "batch": 8, "threads": 1, "steps": 3,
            "warmup": 1, "max_secs": 600.0, **kw}


def _last_layer_values(path) -> int:
    """Scalars of the last Gemm's weight and bias."""
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    gemm = [n for n in proto.graph.node if n.op_type == "Gemm"][-1]
    return sum(inits[i].size for i in gemm.input[1:] if i in inits)


def _save(tmp_path, nodes, inputs, outputs, inits=(), name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _dense(tmp_path, in_shape, out_features=3, tail=(), name="dense.onnx"):
    """x [in_shape] -> Gemm (4 -> out_features) -> tail ops."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((out_features, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(out_features, np.float32), "b")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y0"], transB=1)]
    prev = "y0"
    for i, op in enumerate(tail):
        nodes.append(helper.make_node(op, [prev], [f"y{i + 1}"]))
        prev = f"y{i + 1}"
    out_shape = [in_shape[0], out_features]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                 [helper.make_tensor_value_info(prev, TensorProto.FLOAT, out_shape)], [w, b], name)


def test_digits_edgedl_train_entry():
    res = train_bench(_spec(DIGITS))
    assert set(res) == KEYS
    assert res["status"] == "ok", res["error"]
    assert res["error"] is None
    assert (res["engine"], res["trainable"], res["batch"], res["threads"]) == ("edgedl", "last:1", 8, 1)
    assert res["steps"] == 3
    ms = res["step_ms"]
    assert set(ms) == STAT_KEYS
    assert 0 < ms["min"] <= ms["p50"] <= ms["p90"] <= ms["p99"] <= ms["max"]
    assert ms["min"] <= ms["mean"] <= ms["max"]
    assert res["samples_per_s"] == pytest.approx(8 / (ms["mean"] / 1e3), rel=1e-9)
    assert res["trained_values"] == _last_layer_values(DIGITS) == 10 * 32 + 10
    peak = res["training_peak_bytes"]
    assert peak is None or (isinstance(peak, int) and peak >= 0)


def test_batch_is_deterministic_and_picks_the_loss(tmp_path):
    proto = training._read_model(str(DIGITS))
    a, b = training._Batch(proto, 8, 0, None), training._Batch(proto, 8, 0, None)
    assert a.x.shape == (8, 1, 8, 8) and a.x.dtype == np.float32
    assert np.array_equal(a.x, b.x) and 0.0 <= a.x.min() and a.x.max() < 1.0
    assert a.known() and a.out_shape == (8, 10)
    loss, y = a.targets(a.out_shape)
    assert loss == "cross_entropy" and y.shape == (8,) and y.dtype == np.int64 and 0 <= y.min() and y.max() < 10
    assert np.array_equal(y, b.targets(b.out_shape)[1])
    assert not np.array_equal(a.x, training._Batch(proto, 8, 1, None).x)
    # one output column: mse, with float targets of the output's shape
    one = training._Batch(training._read_model(str(_dense(tmp_path, ["N", 4], out_features=1))), 5, 0, None)
    loss, y = one.targets(one.out_shape)
    assert loss == "mse" and y.shape == (5, 1) and y.dtype == np.float32


def test_trailing_softmax_is_stripped(tmp_path):
    path = _dense(tmp_path, ["N", 4], tail=["Softmax"])
    proto = training._read_model(str(path))
    assert [n.op_type for n in proto.graph.node] == ["Gemm"]
    assert proto.graph.output[0].name == "y0"
    onnx.checker.check_model(proto)
    res = train_bench(_spec(path, trainable="all", steps=2))
    assert res["status"] == "ok", res["error"]
    assert res["trained_values"] == 3 * 4 + 3


def test_fixed_batch_equal_to_the_batch_trains(tmp_path):
    res = train_bench(_spec(_dense(tmp_path, [8, 4]), loss="mse", steps=2))
    assert res["status"] == "ok", res["error"]
    assert res["steps"] == 2


def test_fixed_batch_mismatch_is_a_clear_error(tmp_path):
    res = train_bench(_spec(_dense(tmp_path, [4, 4])))
    assert set(res) == KEYS
    assert res["status"] == "error"
    assert "fixed batch dimension of 4" in res["error"] and "batch of 8" in res["error"]
    assert res["step_ms"] is None and res["samples_per_s"] is None and res["training_peak_bytes"] is None


def test_multi_input_model_is_a_clear_error(tmp_path):
    path = _save(tmp_path, [helper.make_node("Add", ["a", "b"], ["c"])],
                 [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "ab"],
                 [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4])])
    res = train_bench(_spec(path))
    assert res["status"] == "error"
    assert "one input" in res["error"] and "has 2 (a, b)" in res["error"]


def test_unsuited_models_are_errors_not_exceptions(tmp_path):
    missing = train_bench(_spec(tmp_path / "nope.onnx"))
    assert missing["status"] == "error" and "does not exist" in missing["error"]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model at all" * 10)
    assert train_bench(_spec(garbage))["status"] == "error"
    symbolic = train_bench(_spec(_dense(tmp_path, ["N", "F"])))
    assert symbolic["status"] == "error" and "fixed sample dimensions" in symbolic["error"]
    ce = train_bench(_spec(_dense(tmp_path, ["N", 4], out_features=1), loss="cross_entropy"))
    assert ce["status"] == "error" and "cross-entropy" in ce["error"]
    policy = train_bench(_spec(DIGITS, trainable="last:x"))
    assert policy["status"] == "error" and "last:K" in policy["error"]


@pytest.mark.parametrize("bad", [{"engine": "tflite"}, {"batch": 0}, {"steps": 0}, {"max_secs": 0},
                                 {"loss": "hinge"}, {"bogus": 1}])
def test_malformed_spec_raises(bad):
    with pytest.raises(ValueError):
        train_bench({**_spec(DIGITS), **bad})


def test_pytorch_missing_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` then raises ImportError
    monkeypatch.delitem(sys.modules, "edgedl.benchmark.torch_from_onnx", raising=False)
    res = train_bench(_spec(DIGITS, engine="pytorch"))
    assert set(res) == KEYS
    assert res["status"] == "error" and res["error"] == TORCH_MISSING == "torch is not installed (pip install torch)"
    assert res["engine"] == "pytorch" and res["step_ms"] is None


def test_pytorch_trains_digits():
    pytest.importorskip("torch")
    res = train_bench(_spec(DIGITS, engine="pytorch"))
    assert res["status"] == "ok", res["error"]
    assert res["steps"] == 3 and res["trained_values"] == 10 * 32 + 10
    ms = res["step_ms"]
    assert ms["p50"] <= ms["p90"] <= ms["p99"] <= ms["max"]
    assert res["samples_per_s"] == pytest.approx(8 / (ms["mean"] / 1e3), rel=1e-9)


def test_pytorch_unsupported_operator_is_an_error(tmp_path):
    pytest.importorskip("torch")
    res = train_bench(_spec(_dense(tmp_path, ["N", 4], tail=["Tanh"]), engine="pytorch"))
    assert res["status"] == "error"
    assert res["error"] == "PyTorch side: operator Tanh is not supported by torch_from_onnx"


def test_peak_is_none_when_it_cannot_be_told(monkeypatch):
    """Without a peak reset, a peak that did not rise during the timed steps is not the steps' own: None."""
    rss = {"VmRSS": 100 << 20, "VmHWM": 300 << 20}
    monkeypatch.setattr(training, "_status_bytes", lambda field: rss[field])
    monkeypatch.setattr(training, "_reset_peak", lambda: False)
    meter = training._PeakMeter()
    meter.loaded()
    meter.start()
    assert meter.peak_growth() is None
    rss["VmHWM"] = 350 << 20  # a new high during the steps: exact
    assert meter.peak_growth() == 250 << 20
    monkeypatch.setattr(training, "_reset_peak", lambda: True)
    rss["VmHWM"] = 120 << 20
    meter.start()
    assert meter.peak_growth() == 20 << 20


def test_peak_without_proc_uses_maxrss_growth_or_none(monkeypatch):
    monkeypatch.setattr(training, "_status_bytes", lambda field: None)
    monkeypatch.setattr(training, "_reset_peak", lambda: False)
    maxrss = {"v": 500 << 20}
    monkeypatch.setattr(training, "_maxrss_bytes", lambda: maxrss["v"])
    meter = training._PeakMeter()
    meter.loaded()
    meter.start()
    assert meter.peak_growth() is None
    maxrss["v"] = 540 << 20
    assert meter.peak_growth() == 40 << 20
