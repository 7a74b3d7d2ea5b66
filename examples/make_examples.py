"""Regenerate the bundled examples. Run from the repository root: python examples/make_examples.py

* kws_tc_resnet.onnx: a keyword-spotting model (TC-ResNet style, random weights) and spectrogram.npy, one
  spectrogram-shaped input, and kws_tc_resnet_reference.npy, onnxruntime's output on it (the oracle of
  benchmarks/arm64_profile_check.py, which runs where onnxruntime cannot);
* digits_cnn.onnx: the small CNN trained on scikit-learn's digits (tests/data/train_digits_cnn.py, 99.1%
  test accuracy) and digits_calibration.npz: 256 of its training images (key "input") for
  ``edgedl quantize``.
"""
import shutil
from pathlib import Path

import numpy as np
import onnx

from edgedl import zoo

here = Path(__file__).parent
data = here.parent / "tests" / "data"
onnx.save(zoo.kws_tc_resnet(seed=0), here / "kws_tc_resnet.onnx")
np.save(here / "spectrogram.npy", np.random.default_rng(0).standard_normal((1, 40, 98)).astype(np.float32))
import onnxruntime as ort  # noqa: E402  (a test dependency; only this script needs it)

sess = ort.InferenceSession(str(here / "kws_tc_resnet.onnx"), providers=["CPUExecutionProvider"])
np.save(here / "kws_tc_resnet_reference.npy", sess.run(None, {"spectrogram": np.load(here / "spectrogram.npy")})[0])
shutil.copyfile(data / "digits_cnn.onnx", here / "digits_cnn.onnx")
np.savez_compressed(here / "digits_calibration.npz", input=np.load(data / "digits_split.npz")["x_train"][:256])
print("wrote", *sorted(p.name for p in here.iterdir() if p.suffix in (".onnx", ".npy", ".npz")))
