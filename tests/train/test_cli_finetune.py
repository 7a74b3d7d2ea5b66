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
