"""Shared data of the training tests: scikit-learn's digits (offline), and a digits CNN trained on them."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits():
    """(x train, y train, x test, y test): 1,400 / 397 8x8 digits in [0, 1], shuffled with a fixed seed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="session")
def pretrained_digits(digits):
    """The zoo's digits CNN trained 6 epochs on the digits (about 97 % test accuracy): its ONNX bytes."""
    import edgedl
    from edgedl import zoo
    from edgedl.train import Adam, cosine_lr

    x, y, _, _ = digits
    model = edgedl.load(zoo.digits_cnn(seed=0))
    steps = 6 * -(-len(x) // 32)
    edgedl.Trainer(model, optimizer=Adam(lr=1e-2, schedule=cosine_lr(steps)), seed=0).fit(x, y, epochs=6)
    from edgedl.converters.onnx_export import export_graph

    return export_graph(model.source).SerializeToString()
