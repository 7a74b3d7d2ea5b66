"""`edgedl finetune`: trains, prints accuracy before/after and memory, writes a model onnxruntime runs; clear
errors for bad data files."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgedl import zoo
from edgedl.cli import main


@pytest.fixture()
def files(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    np.savez(tmp_path / "train.npz", x=x[:600], y=y[:600])
    np.savez(tmp_path / "val.npz", x=x[1400:], labels=y[1400:])
    onnx.save(zoo.digits_cnn(), tmp_path / "cnn.onnx")
    return tmp_path


def test_finetune_trains_and_writes_the_model(files, capsys):
    out = files / "trained.onnx"
    code = main(["finetune", str(files / "cnn.onnx"), "--data", str(files / "train.npz"), "--val",
                 str(files / "val.npz"), "--epochs", "4", "--lr", "0.01", "--quiet", "-o", str(out),
                 "--checkpoint", str(files / "ck.npz")])
    text = capsys.readouterr().out
    assert code == 0, text
    before = float(text.split("before: validation loss")[1].split("accuracy ")[1].split("%")[0])
    after = float(text.split("after: validation loss")[1].split("accuracy ")[1].split("%")[0])
    assert after > 85 and after > before + 50, text
    assert "training peak memory" in text and out.exists() and (files / "ck.npz").exists()
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    val = np.load(files / "val.npz")
    acc = np.mean(np.argmax(sess.run(None, {"x": val["x"]})[0], 1) == val["labels"])
    assert acc * 100 == pytest.approx(after, abs=0.01)


def test_finetune_reports_bad_data(files, capsys):
    np.savez(files / "bad.npz", inputs=np.zeros((4, 1, 8, 8), np.float32))
    code = main(["finetune", str(files / "cnn.onnx"), "--data", str(files / "bad.npz"), "-o", str(files / "o.onnx")])
    assert code == 2 and "labels under 'y'" in capsys.readouterr().err
    code = main(["finetune", str(files / "cnn.onnx"), "--data", str(files / "missing.npz"), "-o",
                 str(files / "o.onnx")])
    assert code == 2 and "cannot read" in capsys.readouterr().err
    np.savez(files / "mismatch.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([0, 1, 2]))
    code = main(["finetune", str(files / "cnn.onnx"), "--data", str(files / "mismatch.npz"), "-o",
                 str(files / "o.onnx"), "--quiet"])
    assert code == 2 and "same number of samples" in capsys.readouterr().err


def test_finetune_with_a_memory_budget(files, capsys):
    code = main(["finetune", str(files / "cnn.onnx"), "--data", str(files / "train.npz"), "--epochs", "1",
                 "--budget", "400kB", "--quiet", "-o", str(files / "b.onnx")])
    text = capsys.readouterr().out
    assert code == 0 and "budget 390.6 KiB: training" in text, text
    code = main(["finetune", str(files / "cnn.onnx"), "--data", str(files / "train.npz"), "--budget", "10kB",
                 "-o", str(files / "b.onnx")])
    assert code == 2 and "over the budget" in capsys.readouterr().err
    code = main(["finetune", str(files / "cnn.onnx"), "--data", str(files / "train.npz"), "--budget", "lots",
                 "-o", str(files / "b.onnx")])
    assert code == 2 and "as a size" in capsys.readouterr().err


def _accuracy(text, when):
    return float(text.split(f"{when}: validation loss")[1].split("accuracy ")[1].split("%")[0])


def test_finetune_quantized_writes_int8_qdq_that_onnxruntime_runs(files, capsys):
    trained = files / "float.onnx"
    assert main(["finetune", str(files / "cnn.onnx"), "--data", str(files / "train.npz"), "--epochs", "4", "--lr",
                 "0.01", "--quiet", "-o", str(trained)]) == 0
    capsys.readouterr()
    out = files / "qat.onnx"
    code = main(["finetune", str(trained), "--data", str(files / "train.npz"), "--val", str(files / "val.npz"),
                 "--epochs", "2", "--lr", "0.001", "--quantized", "--quiet", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "quantization-aware" in text, text
    assert _accuracy(text, "after") > 85, text
    saved = onnx.load(out)
    ops = [n.op_type for n in saved.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "FakeQuantize" not in ops
    weights = {t.name: t for t in saved.graph.initializer}
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in weights.values())
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    val = np.load(files / "val.npz")
    acc = np.mean(np.argmax(sess.run(None, {"x": val["x"]})[0], 1) == val["labels"]) * 100
    assert acc == pytest.approx(_accuracy(text, "after"), abs=1.0)  # onnxruntime's int8 rounding may differ
    # an int8 model: a float head behind the int8 backbone
    head = files / "head.onnx"
    code = main(["finetune", str(out), "--data", str(files / "train.npz"), "--val", str(files / "val.npz"),
                 "--epochs", "1", "--trainable", "last:1", "--float-head", "--quiet", "-o", str(head)])
    text = capsys.readouterr().out
    assert code == 0 and "float head" in text, text
    ops = [n.op_type for n in onnx.load(head).graph.node]
    assert ops[-1] == "Gemm" and "QuantizeLinear" in ops
