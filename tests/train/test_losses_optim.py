"""Losses (value and gradient against finite differences and closed forms) and optimizers (against
hand-written transcriptions of PyTorch's update rules), schedules, gradient clipping, bad labels."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgedl import EdgeDLError
from edgedl.train import MSE, SGD, Adam, AdamW, BCEWithLogits, SoftmaxCrossEntropy, clip_grad_norm, cosine_lr, step_lr
from edgedl.train.optim import warmup


def _fd_grad(loss, z, t, h=1e-6):
    g = np.zeros(z.shape)
    z64 = z.astype(np.float64)
    for k in range(z.size):
        zp, zm = z64.copy(), z64.copy()
        zp.reshape(-1)[k] += h
        zm.reshape(-1)[k] -= h
        g.reshape(-1)[k] = (loss(zp, t)[0] - loss(zm, t)[0]) / (2 * h)
    return g


@pytest.mark.parametrize("loss,target", [
    (SoftmaxCrossEntropy(), "labels"),
    (SoftmaxCrossEntropy(label_smoothing=0.1), "labels"),
    (SoftmaxCrossEntropy(class_weights=[1, 2, 0.5, 1, 3]), "labels"),
    (MSE(), "float"),
    (BCEWithLogits(), "prob"),
    (BCEWithLogits(pos_weight=2.0), "prob"),
])
def test_loss_gradient_matches_finite_differences(loss, target):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 5)).astype(np.float32) * 3
    t = {"labels": rng.integers(0, 5, 6), "float": rng.standard_normal((6, 5)).astype(np.float32),
         "prob": rng.uniform(0, 1, (6, 5)).astype(np.float32)}[target]
    value, grad = loss(z, t)
    assert grad.dtype == np.float32 and grad.shape == z.shape and np.isfinite(value)
    np.testing.assert_allclose(grad, _fd_grad(loss, z, t), rtol=1e-4, atol=1e-6)


def test_cross_entropy_values():
    z = np.array([[2.0, 0.0, -1.0]], np.float32)
    p = np.exp(z[0]) / np.exp(z[0]).sum()
    assert SoftmaxCrossEntropy()(z, np.array([0]))[0] == pytest.approx(-math.log(p[0]), rel=1e-6)
    eps = 0.3
    want = -((1 - eps) * math.log(p[0]) + eps / 3 * np.log(p).sum())
    assert SoftmaxCrossEntropy(label_smoothing=eps)(z, np.array([0]))[0] == pytest.approx(want, rel=1e-6)
    big = np.array([[1000.0, -1000.0]], np.float32)  # no overflow
    assert SoftmaxCrossEntropy()(big, np.array([1]))[0] == pytest.approx(2000.0)
    assert BCEWithLogits()(np.array([[-1000.0]], np.float32), np.array([[1.0]]))[0] == pytest.approx(1000.0)


@pytest.mark.parametrize("labels,err", [
    (np.array([0, 1, 5]), "0..4"),
    (np.array([0, 1]), "shape"),
    (np.array([0.0, 1.0, 2.0]), "integers"),
    (np.array([-1, 0, 0]), "0..4"),
])
def test_cross_entropy_rejects_bad_labels(labels, err):
    with pytest.raises(EdgeDLError, match=err):
        SoftmaxCrossEntropy()(np.zeros((3, 5), np.float32), labels)


def test_other_losses_reject_bad_targets():
    with pytest.raises(EdgeDLError, match="shape"):
        MSE()(np.zeros((3, 2), np.float32), np.zeros((3,), np.float32))
    with pytest.raises(EdgeDLError, match=r"\[0, 1\]"):
        BCEWithLogits()(np.zeros((2,), np.float32), np.array([0.5, 2.0]))


def _run(opt, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    p = {"w": rng.standard_normal((3, 4)).astype(np.float32)}
    gs = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(steps)]
    for g in gs:
        opt.step(p, {"w": g.copy()})
    return p["w"], gs, rng


def _start(seed=0):
    return np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float64)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2),
                                                 (0.5, False, 0.1)])
def test_sgd_matches_pytorch_rule(momentum, nesterov, wd):
    got, gs, _ = _run(SGD(lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd))
    p, v = _start(), None
    for g in gs:
        g = g.astype(np.float64) + wd * p
        if momentum:
            v = g.copy() if v is None else momentum * v + g
            g = g + momentum * v if nesterov else v
        p = p - 0.1 * g
    np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,wd", [(Adam, 0.0), (Adam, 0.1), (AdamW, 0.1)])
def test_adam_matches_pytorch_rule(cls, wd):
    got, gs, _ = _run(cls(lr=0.01, weight_decay=wd))
    p = _start()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(gs, 1):
        g = g.astype(np.float64)
        if cls is Adam:
            g = g + wd * p
        else:
            p = p - 0.01 * wd * p
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v) / math.sqrt(1 - 0.999 ** t) + 1e-8)
    np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)


def test_optimizer_state_round_trip_continues_identically():
    a = Adam(lr=0.01)
    p1, gs, _ = _run(a, steps=3)
    b = Adam(lr=0.01)
    b.load_state_dict(a.state_dict())
    rng = np.random.default_rng(9)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    q = {"w": p1.copy()}
    r = {"w": p1.copy()}
    a.step(q, {"w": g.copy()})
    b.step(r, {"w": g.copy()})
    np.testing.assert_array_equal(q["w"], r["w"])


def test_schedules_and_clipping():
    s = step_lr(10, 0.5)
    assert [s(0), s(9), s(10), s(25)] == [1.0, 1.0, 0.5, 0.25]
    c = cosine_lr(100, 0.1)
    assert c(0) == pytest.approx(1.0) and c(50) == pytest.approx(0.55) and c(100) == pytest.approx(0.1)
    w = warmup(4, step_lr(2, 0.5))
    assert [w(0), w(3), w(4), w(6)] == [0.25, 1.0, 1.0, 0.5]
    opt = SGD(lr=1.0, schedule=step_lr(1, 0.5))
    p = {"w": np.zeros(1, np.float32)}
    for _ in range(3):
        opt.step(p, {"w": np.ones(1, np.float32)})
    assert p["w"][0] == pytest.approx(-(1 + 0.5 + 0.25))
    grads = {"a": np.full(4, 3.0, np.float32), "b": np.full(9, 4.0, np.float32)}
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(math.sqrt(4 * 9 + 9 * 16))
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    assert total == pytest.approx(1.0, rel=1e-5)


def test_optimizer_rejects_bad_settings():
    with pytest.raises(EdgeDLError):
        SGD(lr=0)
    with pytest.raises(EdgeDLError):
        SGD(lr=0.1, nesterov=True)
