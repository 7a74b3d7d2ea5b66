"""End-to-end comparisons with onnxruntime: zoo models built with onnx.helper and the model files shipped
inside the onnx wheel (onnx/backend/test/data/light)."""
import os

import numpy as np
import onnx
import pytest

import edgedl
from edgedl import zoo

ort = pytest.importorskip("onnxruntime")


def run_ort(model: onnx.ModelProto, feeds: dict) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def assert_close(got: dict, want: dict, rtol=1e-4, atol=1e-5):
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


ZOO_CASES = {
    "mobilenet_v2_like": (lambda: zoo.mobilenet_v2_like(resolution=96, width=0.5, classes=100), (3, 96, 96)),
    "resnet_like": (lambda: zoo.resnet_like(resolution=64, widths=(16, 32, 64, 128), classes=50), (3, 64, 64)),
    "kws_tc_resnet": (lambda: zoo.kws_tc_resnet(), (40, 98)),
    "nhwc_cnn": (lambda: zoo.nhwc_cnn(height=48, width=40), (48, 40, 3)),
}


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
@pytest.mark.parametrize("batch", [1, 3])
def test_zoo_model_matches_onnxruntime(name, batch):
    build, shape = ZOO_CASES[name]
    proto = build()
    model = edgedl.load(proto)
    x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
    feeds = {model.inputs[0].name: x}
    assert_close(model.run(feeds), run_ort(proto, feeds))


def test_symbolic_batch_gets_a_plan_per_shape():
    build, shape = ZOO_CASES["kws_tc_resnet"]
    model = edgedl.load(build())
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, *shape)).astype(np.float32)
    x4 = rng.standard_normal((4, *shape)).astype(np.float32)
    y1 = model(x1)
    y4 = model(x4)
    assert y1.shape == (1, 12) and y4.shape == (4, 12)
    np.testing.assert_allclose(model(x1), y1, rtol=0, atol=0)  # cached plan, same answer
    np.testing.assert_allclose(model(x4[:1].copy()), model(x4)[:1], rtol=1e-5, atol=1e-6)


LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(f[:-5] for f in os.listdir(LIGHT_DIR) if f.endswith(".onnx")) if os.path.isdir(LIGHT_DIR) else []
# NOTE: vgg19 and alexnet/zfnet carry ~20 GFLOP and large Gemm weights; they run in the slow marker only.
HEAVY = {"light_vgg19", "light_bvlc_alexnet", "light_zfnet512"}


@pytest.mark.parametrize("name", [m for m in LIGHT_MODELS if m not in HEAVY])
def test_onnx_wheel_model_matches_onnxruntime(name):
    path = os.path.join(LIGHT_DIR, name + ".onnx")
    proto = onnx.load(path)
    model = edgedl.load(path)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal(i.shape).astype(i.dtype) for i in model.inputs}
    assert_close(model.run(feeds), run_ort(proto, feeds), rtol=1e-3, atol=1e-5)
