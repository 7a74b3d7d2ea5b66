"""Backward of LayerNormalization, RMSNormalization, InstanceNormalization and GroupNormalization.

Small shapes against float64 central differences (:func:`gradcheck.check_backward`, which also checks 1 thread
against N threads); the gradients through the Mean / InvStdDev outputs against differences of an independent
float64 formula; and, above ``PARALLEL_MIN_WORK``, the Numba kernels against a float64 numpy formula with the
parallel result equal to the serial one bit for bit.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
from gradcheck import check_backward, make_op

from edgedl.kernels.cpu import layer_norm as LK


def randn(rng, shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


# --- finite differences ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis,pshape", [((2, 3, 5), -1, (5,)), ((2, 3, 5), 1, (3, 5)), ((4, 6), 0, (4, 6)),
                                               ((2, 3, 4), -1, (1, 1, 4)), ((2, 3, 4), -2, (3, 1)),
                                               ((2, 3, 4), -1, (3, 4)), ((2, 3, 4), 1, (1,))])
@pytest.mark.parametrize("with_b", [True, False])
def test_layernorm_backward(shape, axis, pshape, with_b):
    rng = np.random.default_rng(len(shape) + axis)
    x = randn(rng, shape, 1.5, 0.5)
    g = randn(rng, pshape)
    ins = [x, g] + ([randn(rng, pshape)] if with_b else [])
    check_backward("LayerNormalization", ins, dict(axis=axis, epsilon=1e-3), opset=17)


@pytest.mark.parametrize("shape,axis", [((2, 3, 5), -1), ((3, 4), 0), ((2, 2, 3, 2), 2)])
def test_rmsnorm_backward(shape, axis):
    rng = np.random.default_rng(3)
    x = randn(rng, shape, 1.0, 0.3)
    g = randn(rng, shape[axis % len(shape):])
    check_backward("RMSNormalization", [x, g], dict(axis=axis, epsilon=1e-3), opset=23)


def test_simplified_layernorm_backward():
    rng = np.random.default_rng(4)
    check_backward("SimplifiedLayerNormalization", [randn(rng, (3, 6)), randn(rng, 6)], dict(epsilon=1e-3),
                   opset=17, grads=[randn(rng, (3, 6)), None], num_outputs=2)


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3, 3), (2, 2, 1, 2, 3)])
def test_instancenorm_backward(shape):
    rng = np.random.default_rng(5)
    x = randn(rng, shape, 2.0, -1.0)
    c = shape[1]
    check_backward("InstanceNormalization", [x, randn(rng, c), randn(rng, c)], dict(epsilon=1e-3), opset=22)


@pytest.mark.parametrize("shape,groups", [((2, 6, 3), 3), ((1, 4, 2, 3), 2), ((2, 4), 1), ((2, 4, 3), 4)])
@pytest.mark.parametrize("opset", [18, 21])
def test_groupnorm_backward(shape, groups, opset):
    rng = np.random.default_rng(6)
    x = randn(rng, shape, 1.0, 1.0)
    np_ = groups if opset < 21 else shape[1]
    check_backward("GroupNormalization", [x, randn(rng, np_), randn(rng, np_)],
                   dict(num_groups=groups, epsilon=1e-3), opset=opset)


def test_backward_of_other_float_dtypes_uses_numpy():
    """float64 inputs run the float64 numpy backward (same formulas)."""
    rng = np.random.default_rng(7)
    x, g, b = randn(rng, (3, 5)), randn(rng, 5), randn(rng, 5)
    dy = randn(rng, (3, 5))
    op, _, _ = make_op("LayerNormalization", [x, g, b], {}, opset=17)
    fast = op.backward([dy], [x, g, None], [None], [True, True, True])
    slow = op.backward([dy], [x.astype(np.float64), g.astype(np.float64), None], [None], [True, True, True])
    for a, s in zip(fast, slow):
        np.testing.assert_allclose(a, s, rtol=1e-5, atol=1e-6)
    op, _, _ = make_op("GroupNormalization", [x.reshape(3, 5, 1), g, b], dict(num_groups=5), opset=21)
    fast = op.backward([dy.reshape(3, 5, 1)], [x.reshape(3, 5, 1), g, None], [None], [True, True, True])
    slow = op.backward([dy.reshape(3, 5, 1)], [x.reshape(3, 5, 1).astype(np.float64), g.astype(np.float64), None],
                       [None], [True, True, True])
    for a, s in zip(fast, slow):
        np.testing.assert_allclose(a, s, rtol=1e-5, atol=1e-6)


# --- gradients through Mean / InvStdDev -------------------------------------------------------------------------
def ln_outputs64(x, g, b, axis, eps):
    ax = axis % x.ndim
    axes = tuple(range(ax, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    return (x - mean) * inv * g + b, mean, inv


def test_layernorm_backward_through_mean_and_invstddev():
    rng = np.random.default_rng(8)
    x, g, b = randn(rng, (3, 4, 5)), randn(rng, (4, 5)), randn(rng, (4, 5))
    op, _, outs_t = make_op("LayerNormalization", [x, g, b], dict(axis=1, epsilon=1e-3), opset=17, num_outputs=3)
    grads = [randn(rng, t.shape) for t in outs_t]
    got = op.backward(grads, [x, g, None], [None] * 3, [True, True, True])

    def loss(xv):
        outs = ln_outputs64(xv, g.astype(np.float64), b.astype(np.float64), 1, 1e-3)
        return sum(float((gr.astype(np.float64) * o).sum()) for gr, o in zip(grads, outs))

    x64 = x.astype(np.float64)
    num = np.zeros(x.shape)
    h = 1e-6
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = h
        e = e.reshape(x.shape)
        num.reshape(-1)[k] = (loss(x64 + e) - loss(x64 - e)) / (2 * h)
    np.testing.assert_allclose(got[0], num, rtol=1e-4, atol=1e-4)
    for i, want in ((1, (grads[0] * (x64 - x64.mean(axis=(1, 2), keepdims=True))
                        / np.sqrt(x64.var(axis=(1, 2), keepdims=True) + 1e-3)).sum(axis=0)),
                    (2, grads[0].astype(np.float64).sum(axis=0))):
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


# --- large tensors: kernels, threads ----------------------------------------------------------------------------
def ln_backward64(x, dy, g, eps, rms=False):
    x, dy, g = (a.astype(np.float64) for a in (x, dy, g))
    n = x.shape[1]
    mean = 0.0 if rms else x.mean(axis=1, keepdims=True)
    inv = 1 / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = (x - mean) * inv
    dxhat = dy * g
    c1 = 0.0 if rms else dxhat.sum(axis=1, keepdims=True) / n
    dx = inv * (dxhat - c1 - xhat * (dxhat * xhat).sum(axis=1, keepdims=True) / n)
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


@pytest.mark.parametrize("rms", [False, True])
def test_large_layernorm_backward_threads(rms, monkeypatch):
    rng = np.random.default_rng(9)
    x, dy, g = randn(rng, (1200, 300), 2.0, 1.0), randn(rng, (1200, 300)), randn(rng, 300)
    assert 3 * x.size >= LK._config.PARALLEL_MIN_WORK
    before = numba.get_num_threads()
    res = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            res.append(LK.ln_backward(x, dy, g, 1e-5, rms, True, True))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)
    dx, dg, db = ln_backward64(x, dy, g, 1e-5, rms)
    np.testing.assert_allclose(res[0][0], dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res[0][1], dg, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(res[0][2], db, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("per_group", [False, True])
def test_large_groupnorm_backward_threads(per_group):
    rng = np.random.default_rng(10)
    n, c, s, groups = 4, 32, 1024, 8
    x, dy = randn(rng, (n, c, s), 1.0, 0.5), randn(rng, (n, c, s))
    scale = randn(rng, groups if per_group else c)
    before = numba.get_num_threads()
    res = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            res.append(LK.gn_backward(x, dy, scale, groups, 1e-5, per_group, True, True))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)
    # the group rows are layer-norm rows with a per-channel scale
    sc = np.repeat(scale, c // groups) if per_group else scale
    rows = x.reshape(n * groups, -1)
    gfull = np.tile(np.repeat(sc.reshape(groups, -1), s, axis=1), (n, 1))
    x64, dy64 = rows.astype(np.float64), dy.reshape(n * groups, -1).astype(np.float64)
    mean = x64.mean(axis=1, keepdims=True)
    inv = 1 / np.sqrt(x64.var(axis=1, keepdims=True) + 1e-5)
    xhat = (x64 - mean) * inv
    dxhat = dy64 * gfull
    dx = inv * (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    np.testing.assert_allclose(res[0][0], dx.reshape(x.shape), rtol=1e-4, atol=1e-5)
    dsc = (dy64 * xhat).reshape(n, c, s).sum(axis=(0, 2))
    np.testing.assert_allclose(res[0][1], dsc, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res[0][2], dy.astype(np.float64).sum(axis=(0, 2)), rtol=1e-6, atol=1e-6)


def test_backward_wants_only_some_gradients():
    rng = np.random.default_rng(11)
    x, g, b = randn(rng, (4, 8)), randn(rng, 8), randn(rng, 8)
    op, _, _ = make_op("LayerNormalization", [x, g, b], {}, opset=17)
    dy = randn(rng, (4, 8))
    full = op.backward([dy], [x, g, None], [None], [True, True, True])
    only_dx = op.backward([dy], [x, g, None], [None], [True, False, False])
    only_dg = op.backward([dy], [x, g, None], [None], [False, True, False])
    np.testing.assert_array_equal(only_dx[0], full[0])
    assert only_dx[1] is None and only_dg[0] is None
    np.testing.assert_array_equal(only_dg[1], full[1])
    zero = op.backward([None], [x, g, None], [None], [True, True, True])
    assert not zero[0].any() and not zero[1].any()
