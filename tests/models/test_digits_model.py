"""The bundled digits CNN (tests/data/digits_cnn.onnx, trained by tests/data/train_digits_cnn.py): edgedl agrees
with onnxruntime on the test split, the model is as accurate as trained, and the file is the trained network."""
import importlib.util
import os

import numpy as np
import onnx
import pytest

import edgedl

ort = pytest.importorskip("onnxruntime")

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
MODEL = os.path.join(DATA, "digits_cnn.onnx")
SPLIT = os.path.join(DATA, "digits_split.npz")
SCRIPT = os.path.join(DATA, "train_digits_cnn.py")


@pytest.fixture(scope="module")
def split():
    with np.load(SPLIT) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def ort_logits(split):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": split["x_test"]})[0]


def _script():
    spec = importlib.util.spec_from_file_location("train_digits_cnn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only: training runs under __main__
    return module


def test_bundled_files(split):
    assert os.path.getsize(MODEL) < 1 << 20
    assert split["x_train"].dtype == np.float32 and split["x_test"].dtype == np.float32
    assert split["y_train"].dtype == np.int64 and split["y_test"].dtype == np.int64
    assert split["x_train"].shape == (1347, 1, 8, 8) and split["x_test"].shape == (450, 1, 8, 8)
    assert 0.0 <= split["x_test"].min() and split["x_test"].max() <= 1.0
    assert np.bincount(split["y_test"], minlength=10).min() >= 40  # stratified: every class present
    proto = onnx.load(MODEL)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import} == {"": 17}
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "Relu", "Add", "MaxPool", "GlobalAveragePool", "Gemm"} <= ops


def test_edgedl_matches_onnxruntime_and_is_accurate(split, ort_logits):
    model = edgedl.load(MODEL)
    x, y = split["x_test"], split["y_test"]
    logits = model.run({"input": x})["logits"]
    assert logits.shape == (450, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ort_logits, rtol=1e-4, atol=1e-5)
    accuracy = float((logits.argmax(axis=1) == y).mean())
    assert accuracy >= 0.97, accuracy
    # a batch of one and an odd batch run through other plans and give the same answers
    np.testing.assert_allclose(model.run({"input": x[:1]})["logits"], ort_logits[:1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.run({"input": x[5:12]})["logits"], ort_logits[5:12], rtol=1e-4, atol=1e-5)


def test_onnxruntime_accuracy(split, ort_logits):
    assert float((ort_logits.argmax(axis=1) == split["y_test"]).mean()) >= 0.97


def test_export_matches_the_trained_forward_pass(split, ort_logits):
    script = _script()
    params = script.params_from_onnx(onnx.load(MODEL))
    x = split["x_test"][:16]
    ours = script.forward(params, x)
    np.testing.assert_allclose(ours, ort_logits[:16], rtol=1e-4, atol=1e-4)
    assert (ours.argmax(axis=1) == ort_logits[:16].argmax(axis=1)).all()
