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


@pytest.mark.parametrize("shape,attrs,opset", [
    ((2, 3, 4, 5), {"epsilon": 1e-3}, 15),
    ((3, 4), {}, 15),
    ((2, 3, 5), {"training_mode": 1, "epsilon": 1e-2}, 15),
    ((4, 2, 3, 3), {"training_mode": 1}, 15),
])
def test_batchnorm_backward(shape, attrs, opset):
    rng = np.random.default_rng(len(shape))
    c = shape[1]
    ins = [_r(rng, *shape), _r(rng, c), _r(rng, c), _r(rng, c), rng.uniform(0.5, 2, c).astype(np.float32)]
    wrt = [0, 1, 2] if attrs.get("training_mode") else [0, 1, 2, 3, 4]
    n_out = 3 if attrs.get("training_mode") else 1
    grads = None
    if n_out == 3:  # the running statistics take no gradient
        grads = [_r(rng, *shape), np.zeros(c, np.float32), np.zeros(c, np.float32)]
    check_backward("BatchNormalization", ins, attrs, wrt=wrt, opset=opset, num_outputs=n_out, grads=grads)
