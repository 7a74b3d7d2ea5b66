"""Backward of pooling (MaxPool, AveragePool, GlobalAveragePool) and layout ops (Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Pad, Slice, Concat, Split) against float64 central finite differences, plus the
parallel pooling kernels against numpy at sizes above PARALLEL_MIN_WORK."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from gradcheck import check_backward, make_op

from edgedl.kernels.cpu import config
from edgedl.ops.pool import _axis_coords, maxpool_ref

I64 = np.int64
BIG = np.iinfo(np.int64).max


def distinct(shape, seed=0):
    """float32 values without ties (a random permutation, spaced 0.25 apart): MaxPool's argmax is stable
    under the finite-difference step."""
    n = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    return ((rng.permutation(n) - n / 2) * 0.25).astype(np.float32).reshape(shape)


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- pooling -------------------------------------------------------------------------------------------
POOL_CASES = [
    ((2, 2, 6, 6), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ((1, 3, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((1, 2, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1)),
    ((1, 2, 7, 7), dict(kernel_shape=[2, 2], dilations=[2, 2])),
    ((1, 2, 8, 7), dict(kernel_shape=[3, 2], strides=[2, 3], dilations=[2, 1], pads=[2, 0, 1, 1], ceil_mode=1)),
    ((1, 2, 5, 7), dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0])),
    ((1, 2, 5, 6), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 2, 5, 6), dict(kernel_shape=[2, 3], strides=[2, 1], auto_pad="SAME_LOWER")),
    ((1, 1, 9, 9), dict(kernel_shape=[5, 5], strides=[3, 3], pads=[2, 2, 2, 2])),
    ((2, 2, 9), dict(kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1)),          # 1-D
    ((1, 2, 10), dict(kernel_shape=[2], strides=[3], dilations=[3])),                    # 1-D
    ((1, 2, 4, 4, 5), dict(kernel_shape=[2, 2, 3], strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1])),  # 3-D
]


@pytest.mark.parametrize("shape,attrs", POOL_CASES)
def test_maxpool(shape, attrs):
    check_backward("MaxPool", [distinct(shape, len(shape))], attrs)


def test_maxpool_with_indices_output():
    x = distinct((1, 2, 6, 6), 3)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], storage_order=1)
    got = check_backward("MaxPool", [x], attrs, num_outputs=2)
    op, _, outs_t = make_op("MaxPool", [x], attrs, num_outputs=2)
    dy = normal(outs_t[0].shape, 1)
    (dx,) = op.backward([dy, None], [x], [None, None], [True])  # the Indices output carries no gradient
    (dx2,) = op.backward([dy, np.ones(outs_t[1].shape, np.float32)], [x], [None, None], [True])
    np.testing.assert_array_equal(dx, dx2)
    assert got[0].shape == x.shape


def _maxpool_scatter(x, dy, attrs):
    """The MaxPool gradient in numpy: dy added at the flat indices of the reference (ties: first in
    row-major window order)."""
    op, _, _ = make_op("MaxPool", [x], attrs)
    _, out, pads = op.geom
    _, ind = maxpool_ref(x, op.kernel_shape, op.strides, op.dilations, pads, out, want_indices=True)
    dx = np.zeros(x.size, np.float32)
    np.add.at(dx, ind.reshape(-1), dy.reshape(-1))
    return dx.reshape(x.shape)


def test_maxpool_ties_go_to_the_first_max():
    # every window of a constant input ties: each routes its gradient to its top-left element
    x = np.ones((1, 1, 3, 4), np.float32)
    attrs = dict(kernel_shape=[2, 2])
    op, _, outs_t = make_op("MaxPool", [x], attrs)
    dy = normal(outs_t[0].shape, 2)
    (dx,) = op.backward([dy], [x], [None, None], [True])
    want = np.zeros_like(x)
    want[0, 0, :2, :3] = dy[0, 0]
    np.testing.assert_array_equal(dx, want)
    # a tie that is not the window's first element: [[1, 3], [3, 2]] -> the 3 in the first row
    x = np.array([[[[1, 3], [3, 2]]]], np.float32)
    (dx,) = make_op("MaxPool", [x], attrs)[0].backward([np.full((1, 1, 1, 1), 5, np.float32)], [x], [None], [True])
    np.testing.assert_array_equal(dx, np.array([[[[0, 5], [0, 0]]]], np.float32))
    # many ties, overlapping strided windows, padding: the element the Indices output names
    x = np.random.default_rng(4).integers(0, 3, (2, 3, 7, 8)).astype(np.float32)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 1], pads=[1, 1, 1, 0], ceil_mode=1)
    op, _, outs_t = make_op("MaxPool", [x], attrs)
    dy = normal(outs_t[0].shape, 5)
    (dx,) = op.backward([dy], [x], [None, None], [True])
    np.testing.assert_array_equal(dx, _maxpool_scatter(x, dy, attrs))


@pytest.mark.parametrize("shape,attrs", [
    ((2, 3, 8, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),      # disjoint 2x2 windows tiling the plane
    ((1, 2, 4, 40), dict(kernel_shape=[2, 2], strides=[2, 2])),     # ... rows too wide for that kernel
    ((2, 2, 7, 9), dict(kernel_shape=[2, 2], strides=[2, 2])),      # odd sizes: the output-by-output kernel
    ((1, 2, 6, 40), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[1, 0, 1, 0])),  # wide rows, tap by tap
])
@pytest.mark.parametrize("parallel", [False, True])
def test_maxpool_kernels_ties_and_nan(shape, attrs, parallel, monkeypatch):
    """Every MaxPool backward kernel routes ties to the first maximum and never to a NaN, like the
    reference's indices; serial and parallel kernels agree bitwise."""
    from edgedl.kernels.cpu import pool_grad

    if parallel:
        monkeypatch.setattr(pool_grad._config, "PARALLEL_MIN_WORK", 0)
    x = np.random.default_rng(6).integers(0, 3, shape).astype(np.float32)
    x.reshape(-1)[::7] = np.nan
    op, _, outs_t = make_op("MaxPool", [x], attrs)
    dy = normal(outs_t[0].shape, 7)
    (dx,) = op.backward([dy], [x], [None, None], [True])
    np.testing.assert_array_equal(dx, _maxpool_scatter(x, dy, attrs))
    (one,) = _single_thread(lambda: op.backward([dy], [x], [None, None], [True]))
    np.testing.assert_array_equal(dx, one)


@pytest.mark.parametrize("cip", [0, 1])
@pytest.mark.parametrize("shape,attrs", POOL_CASES)
def test_averagepool(shape, attrs, cip):
    check_backward("AveragePool", [normal(shape, len(shape))], dict(attrs, count_include_pad=cip))


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 2, 3)])
def test_global_average_pool(shape):
    check_backward("GlobalAveragePool", [normal(shape)])


def test_pool_none_grad_is_zero():
    x = normal((1, 2, 4, 4))
    for op_type in ("MaxPool", "AveragePool", "GlobalAveragePool"):
        attrs = {} if op_type.startswith("Global") else dict(kernel_shape=[2, 2])
        op, _, _ = make_op(op_type, [x], attrs)
        (dx,) = op.backward([None, None], [x], [None, None], [True])
        np.testing.assert_array_equal(dx, np.zeros_like(x))


# --- the parallel kernels ------------------------------------------------------------------------------
BIG_SHAPE = (2, 16, 32, 32)
BIG_ATTRS = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # 32 planes * 1024 outputs * 9 taps = 294912


def _parallel_op(op_type, x, attrs):
    op, _, outs_t = make_op(op_type, [x], attrs)
    cip = bool(attrs.get("count_include_pad", 0))
    runner = op._grad_runner(cip)
    if numba.get_num_threads() < 2:
        pytest.skip("needs at least 2 Numba threads")
    assert runner.work >= config.PARALLEL_MIN_WORK and runner._parallel(None)
    return op, outs_t


def _single_thread(fn):
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn()
    finally:
        numba.set_num_threads(threads)


def test_maxpool_parallel_kernel():
    x = normal(BIG_SHAPE, 7)
    op, outs_t = _parallel_op("MaxPool", x, BIG_ATTRS)
    dy = normal(outs_t[0].shape, 8)
    (dx,) = op.backward([dy], [x], [None, None], [True])
    np.testing.assert_allclose(dx, _maxpool_scatter(x, dy, BIG_ATTRS), rtol=1e-6, atol=1e-6)
    (one,) = _single_thread(lambda: op.backward([dy], [x], [None, None], [True]))
    np.testing.assert_array_equal(dx, one)


def _avgpool_numpy(x_shape, dy, k, s, d, pads, out, cip):
    """The AveragePool gradient in numpy, 2-D: per kernel tap, dy / count added at that tap's inputs."""
    in_sp = list(x_shape[2:])
    coords = _axis_coords(in_sp, out, k, s, d, pads)
    count = np.outer(*[(c[2] if cip else c[1]).sum(axis=1) for c in coords]).astype(np.float64)
    g = dy.astype(np.float64) / count
    dx = np.zeros(x_shape, np.float64)
    for i in range(k[0]):
        for j in range(k[1]):
            ch, vh = coords[0][0][:, i], coords[0][1][:, i]
            cw, vw = coords[1][0][:, j], coords[1][1][:, j]
            dx[:, :, ch[vh][:, None], cw[vw][None, :]] += g[:, :, vh][:, :, :, vw]
    return dx


@pytest.mark.parametrize("cip", [0, 1])
def test_averagepool_parallel_kernel(cip):
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=cip)
    x = normal(BIG_SHAPE, 9)
    op, outs_t = _parallel_op("AveragePool", x, attrs)
    dy = normal(outs_t[0].shape, 10)
    (dx,) = op.backward([dy], [None], [None], [True])
    _, out, pads = op.geom
    want = _avgpool_numpy(x.shape, dy, op.kernel_shape, op.strides, op.dilations, pads, out, cip)
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-6)
    (one,) = _single_thread(lambda: op.backward([dy], [None], [None], [True]))
    np.testing.assert_array_equal(dx, one)


# --- layout ops ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,target", [((2, 3, 4), [4, -1]), ((2, 3, 4), [0, -1]), ((6,), [1, 2, 3, 1])])
def test_reshape(shape, target):
    check_backward("Reshape", [normal(shape), np.array(target, I64)], consts=(1,))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_flatten(axis):
    check_backward("Flatten", [normal((2, 3, 2, 2))], dict(axis=axis))


def test_squeeze_unsqueeze():
    check_backward("Squeeze", [normal((2, 1, 3, 1)), np.array([1, -1], I64)], consts=(1,))
    check_backward("Squeeze", [normal((1, 3, 1))])
    check_backward("Squeeze", [normal((2, 1, 3))], dict(axes=[-2]), opset=11)
    check_backward("Unsqueeze", [normal((2, 3)), np.array([0, -1], I64)], consts=(1,))
    check_backward("Unsqueeze", [normal((2, 3))], dict(axes=[1, 3]), opset=11)


@pytest.mark.parametrize("shape,perm", [((2, 3, 4), [2, 0, 1]), ((2, 3, 4), None), ((2, 3, 2, 4), [0, 2, 3, 1]),
                                        ((3, 5), [1, 0])])
def test_transpose(shape, perm):
    check_backward("Transpose", [normal(shape)], {} if perm is None else dict(perm=perm))


@pytest.mark.parametrize("mode,opset", [("constant", 18), ("reflect", 18), ("edge", 18), ("wrap", 19)])
def test_pad(mode, opset):
    x = normal((3, 4, 5))
    check_backward("Pad", [x, np.array([1, 0, 2, 2, 1, 3], I64)], dict(mode=mode), consts=(1,), opset=opset)
    # negative pads crop; axes (negative too) pick the padded axes
    pads = np.array([2, -1, -1, 2], I64)
    check_backward("Pad", [x, pads, None, np.array([-1, 1], I64)], dict(mode=mode), consts=(1, 3), opset=opset)


def test_pad_constant_value_gets_the_border_sum():
    x = normal((3, 4))
    got = check_backward("Pad", [x, np.array([1, -1, 2, 2], I64), np.array(0.5, np.float32)], consts=(1,))
    assert got[2].shape == ()
    check_backward("Pad", [x, np.array([0, 1, 1, 0], I64), np.array([1.5], np.float32)], consts=(1,), opset=11)
    check_backward("Pad", [x], dict(pads=[1, 0, 0, 2], value=2.0), opset=10)
    check_backward("Pad", [x], dict(pads=[2, 1, 2, 1], mode="reflect"), opset=2)


SLICE_CASES = [
    ([1, 0], [3, BIG], None, None),
    ([-1, 4], [-BIG, 0], [0, -1], [-1, -2]),            # negative steps and axes, clamped ends
    ([0, 1, 5], [BIG, 4, -BIG], [1, 0, 2], [2, 1, -3]),
    ([2], [-1], [-2], None),
    ([3], [1], [2], [1]),                               # empty along axis 2
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICE_CASES)
def test_slice(starts, ends, axes, steps):
    x = normal((4, 5, 6))
    ins = [x, np.array(starts, I64), np.array(ends, I64),
           None if axes is None and steps is None else np.array(axes if axes is not None else range(len(starts)),
                                                                I64),
           None if steps is None else np.array(steps, I64)]
    got = check_backward("Slice", ins, consts=(1, 2, 3, 4))
    assert got[1] is None and got[2] is None


def test_slice_attributes():
    check_backward("Slice", [normal((4, 5))], dict(starts=[1, -3], ends=[BIG, -1], axes=[0, -1]), opset=9)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    xs = [normal((2, 3, 2), 1), normal((2, 3, 2), 2), normal((2, 3, 2), 3)]
    check_backward("Concat", xs, dict(axis=axis))


def test_concat_uneven():
    check_backward("Concat", [normal((2, 1, 3)), normal((2, 4, 3), 1), normal((2, 2, 3), 2)], dict(axis=-2))


def _split_case(ins, attrs, n, opset, grads_none):
    """Split against finite differences (output gradients given as zeros where ``grads_none``), then the
    same backward with those gradients passed as None."""
    op, _, outs_t = make_op("Split", ins, attrs, consts=(1,), opset=opset, num_outputs=n)
    grads = [normal(t.shape, k) for k, t in enumerate(outs_t)]
    zeroed = [np.zeros_like(g) if k in grads_none else g for k, g in enumerate(grads)]
    got = check_backward("Split", ins, attrs, consts=(1,), opset=opset, num_outputs=n, grads=zeroed)
    with_none = [None if k in grads_none else g for k, g in enumerate(grads)]
    res = op.backward(with_none, [None] * len(ins), [None] * n, [True] + [False] * (len(ins) - 1))
    np.testing.assert_array_equal(res[0], got[0])
    assert all(r is None for r in res[1:])


def test_split():
    x = normal((4, 6, 3))
    _split_case([x, np.array([1, 3, 2], I64)], dict(axis=1), 3, 18, {1})
    _split_case([x, np.array([3, 1], I64)], dict(axis=-3), 2, 13, {0})
    _split_case([x], dict(axis=-2), 2, 18, set())                          # equal halves
    _split_case([x], dict(axis=1, split=[2, 4]), 2, 11, {1})               # split attribute (opset < 13)
    _split_case([x], dict(axis=0, num_outputs=3), 3, 18, {0, 2})           # uneven: 2, 2, 0
    _split_case([normal((2, 7))], dict(axis=1, num_outputs=3), 3, 18, {2})  # 3, 3, 1
