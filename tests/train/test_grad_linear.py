"""Backward of the linear ops (Conv, Gemm, MatMul) and of Add / Mul / Sub against float64 finite
differences (tests/train/gradcheck.py), and 1 vs N threads bitwise."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_backward


def _r(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ((2, 3, 7, 6), (4, 3, 3, 3), {}),
    ((1, 4, 9, 8), (6, 2, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 2, 1]}),
    ((2, 3, 8, 8), (5, 3, 3, 3), {"dilations": [2, 1], "pads": [2, 1, 2, 1], "strides": [1, 2]}),
    ((1, 4, 7, 7), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1], "strides": [2, 2]}),     # depthwise
    ((1, 3, 6, 6), (6, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),                       # multiplier 2
    ((2, 3, 11), (4, 3, 3), {"strides": [2], "pads": [1, 2]}),                             # 1-D
    ((1, 2, 5, 5), (3, 2, 1, 1), {"auto_pad": "SAME_UPPER"}),
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_backward(x_shape, w_shape, attrs, bias):
    rng = np.random.default_rng(len(x_shape) * 7 + w_shape[0])
    ins = [_r(rng, *x_shape), _r(rng, *w_shape)]
    if bias:
        ins.append(_r(rng, w_shape[0]))
    check_backward("Conv", ins, attrs)


@pytest.mark.parametrize("a_shape,b_shape,attrs,c_shape", [
    ((3, 4), (4, 5), {}, None),
    ((4, 3), (4, 5), {"transA": 1}, (5,)),
    ((3, 4), (5, 4), {"transB": 1, "alpha": 0.5, "beta": 2.0}, (3, 5)),
    ((4, 3), (5, 4), {"transA": 1, "transB": 1}, (1, 5)),
    ((2, 6), (6, 3), {"beta": -1.5}, (2, 1)),
])
def test_gemm_backward(a_shape, b_shape, attrs, c_shape):
    rng = np.random.default_rng(a_shape[0] * 11 + b_shape[1])
    ins = [_r(rng, *a_shape), _r(rng, *b_shape)] + ([_r(rng, *c_shape)] if c_shape else [])
    check_backward("Gemm", ins, attrs)


@pytest.mark.parametrize("a_shape,b_shape", [
    ((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 3)), ((3, 4), (4,)), ((2, 1, 3, 4), (3, 4, 2)), ((5,), (5,)),
])
def test_matmul_backward(a_shape, b_shape):
    rng = np.random.default_rng(len(a_shape) * 13 + len(b_shape))
    check_backward("MatMul", [_r(rng, *a_shape), _r(rng, *b_shape)])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)),
                                             ((3,), (2, 3)), ((), (2, 2))])
def test_binary_backward_unbroadcasts(op, a_shape, b_shape):
    rng = np.random.default_rng(len(a_shape) * 3 + len(b_shape))
    check_backward(op, [_r(rng, *a_shape), _r(rng, *b_shape)])


@pytest.mark.parametrize("shape,attrs,opset,stats_grad", [
    ((2, 3, 4, 5), {"epsilon": 1e-3}, 15, True),  # the gradients of mean and var: the numpy path
    ((2, 3, 4, 5), {"epsilon": 1e-3}, 15, False),  # the Numba running-statistics path
    ((3, 4), {}, 15, False),
    ((2, 3, 5), {"training_mode": 1, "epsilon": 1e-2}, 15, False),
    ((4, 2, 3, 3), {"training_mode": 1}, 15, False),
])
def test_batchnorm_backward(shape, attrs, opset, stats_grad):
    rng = np.random.default_rng(len(shape))
    c = shape[1]
    ins = [_r(rng, *shape), _r(rng, c), _r(rng, c), _r(rng, c), rng.uniform(0.5, 2, c).astype(np.float32)]
    wrt = [0, 1, 2, 3, 4] if stats_grad else [0, 1, 2]
    n_out = 3 if attrs.get("training_mode") else 1
    grads = None
    if n_out == 3:  # the running statistics take no gradient
        grads = [_r(rng, *shape), np.zeros(c, np.float32), np.zeros(c, np.float32)]
    check_backward("BatchNormalization", ins, attrs, wrt=wrt, opset=opset, num_outputs=n_out, grads=grads)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_backward_kernels_serial_and_parallel_agree(training, monkeypatch):
    """One channel per thread: the same bits for any thread count, and the float64 reference's values."""
    from edgedl.kernels.cpu import bn_train

    rng = np.random.default_rng(9)
    x = (rng.standard_normal((8, 6, 30, 31)) * 3 + 2).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    scale, mean = _r(rng, 6), _r(rng, 6)
    var = rng.uniform(0.5, 2, 6).astype(np.float32)

    def call():
        if training:
            return bn_train.bn_train_backward(x, g, scale, 1e-3, True)
        return bn_train.bn_frozen_backward(x, g, scale, mean, var, 1e-3, True)

    monkeypatch.setattr(bn_train._config, "PARALLEL_MIN_WORK", 1 << 40)
    serial = call()
    monkeypatch.setattr(bn_train._config, "PARALLEL_MIN_WORK", 0)
    parallel = call()
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    axes = (0, 2, 3)
    if training:
        mu, v = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
    else:
        mu, v = mean.reshape(1, -1, 1, 1).astype(np.float64), var.reshape(1, -1, 1, 1).astype(np.float64)
    inv = 1 / np.sqrt(v + 1e-3)
    xhat = (x64 - mu) * inv
    dscale, dbias = (g64 * xhat).sum(axis=axes), g64.sum(axis=axes)
    sc = scale.reshape(1, -1, 1, 1).astype(np.float64)
    if training:
        m = x.size // 6
        dx = sc * inv / m * (m * g64 - g64.sum(axis=axes, keepdims=True)
                             - xhat * (g64 * xhat).sum(axis=axes, keepdims=True))
    else:
        dx = g64 * sc * inv
    np.testing.assert_allclose(serial[0], dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(serial[1], dscale, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(serial[2], dbias, rtol=1e-4, atol=1e-3)
