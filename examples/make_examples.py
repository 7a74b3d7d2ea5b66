"""Regenerate the bundled example: a keyword-spotting model (TC-ResNet style, random weights) and one
spectrogram-shaped input. Run from the repository root: python examples/make_examples.py"""
from pathlib import Path

import numpy as np
import onnx

from edgedl import zoo

here = Path(__file__).parent
onnx.save(zoo.kws_tc_resnet(seed=0), here / "kws_tc_resnet.onnx")
np.save(here / "spectrogram.npy", np.random.default_rng(0).standard_normal((1, 40, 98)).astype(np.float32))
print("wrote", here / "kws_tc_resnet.onnx", here / "spectrogram.npy")
