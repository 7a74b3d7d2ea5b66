"""Shape-generating and layout ops: Expand, Tile, Range, Trilu, EyeLike, OneHot, CumSum, CumProd, DepthToSpace,
SpaceToDepth, ReverseSequence, CenterCropPad, Col2Im, Det and MaxUnpool.

Kernels against independent numpy formulas of the ONNX spec (explicit loops on small shapes), the
parallel paths (PARALLEL_MIN_WORK lowered) against the serial ones, hostile inputs (bad shapes, out-of-range
data -> EdgeDLError, oversized outputs), and small models end to end against onnxruntime.
"""
from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
from onnx import TensorProto, helper

import edgedl
from edgedl import testing
from edgedl.errors import ConstantRequired, EdgeDLError, ShapeError, UnsupportedOpError
from edgedl.ir import MAX_TENSOR_ELEMENTS, Node, TensorType
from edgedl.kernels.cpu import config as _config
from edgedl.kernels.cpu.expand_tile import broadcast_plan, make_broadcast
from edgedl.kernels.cpu.layout import bits_view
from edgedl.registry import lookup

rng = np.random.default_rng(7)
I64 = np.int64
DTYPES = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.int16, np.float16, np.bool_]


def rand(shape, dtype=np.float32):
    a = rng.standard_normal(shape) * 20
    if np.dtype(dtype) == np.bool_:
        return a > 0
    return a.astype(dtype)


def run_op(op_type, inputs, attrs=None, opset=18, const=()):
    """(outputs, reference outputs, kernel) of a one-node op built like the planner builds it."""
    return testing.run_op(op_type, inputs, attrs, opset=opset, const=const)


def make(op_type, n_in, attrs=None, opset=18):
    return lookup(op_type)(Node(op_type, "n", [f"i{k}" for k in range(n_in)], ["o"], dict(attrs or {})), opset)


def infer(op_type, inputs, attrs=None, opset=18, const=()):
    op = make(op_type, len(inputs), attrs, opset)
    ins = [None if a is None else TensorType(np.shape(a), np.asarray(a).dtype) for a in inputs]
    return op.infer(ins, [np.asarray(a) if k in const else None for k, a in enumerate(inputs)])


@pytest.fixture
def parallel(monkeypatch):
    """Every kernel takes its parallel path (with 2 threads where Numba has them)."""
    monkeypatch.setattr(_config, "PARALLEL_MIN_WORK", 1)
    saved = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    yield
    numba.set_num_threads(saved)


# --- Expand ------------------------------------------------------------------------------------------------
EXPAND_CASES = [((3, 1), (3, 4)), ((1, 4), (3, 4)), ((1,), (5,)), ((), (2, 3)), ((2, 1, 3, 1), (2, 4, 3, 5)),
                ((1, 2, 1, 3), (4, 2, 5, 3)), ((5,), (2, 3, 5)), ((1, 1), (1, 1)), ((3,), (3,)), ((2, 1), (2, 0)),
                ((1, 3, 1, 1), (2, 3, 4, 4)), ((4, 1, 1), (4, 3, 1)), ((3, 1), (1, 1, 5)), ((2, 3), (1,))]


def test_broadcast_plan_collapses_axes():
    assert [a.tolist() for a in broadcast_plan((1, 256, 1, 1), (8, 256, 32, 32))] == [[8, 256, 1024], [0, 1, 0],
                                                                                      [262144, 1024, 1]]
    assert [a.tolist() for a in broadcast_plan((2, 3, 4), (2, 3, 4))] == [[24], [1], [1]]
    assert [a.tolist() for a in broadcast_plan((1, 1), (1, 1))] == [[], [], []]
    assert [a.tolist() for a in broadcast_plan((3, 1, 5), (1, 3, 1, 5))] == [[15], [1], [1]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,target", EXPAND_CASES)
def test_expand(xs, target, dtype):
    x = rand(xs, dtype)
    shape = np.array(target, I64)
    (y,), (ref,), kern = run_op("Expand", [x, shape], const=(1,))
    want = np.broadcast_to(x, np.broadcast_shapes(xs, target))
    assert y.shape == want.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(ref, want)
    assert kern.impl == "numba" and kern.bind is not None


def test_broadcast_random_shapes_and_parallel(parallel):
    for _ in range(150):
        r = int(rng.integers(1, 6))
        out = tuple(int(v) for v in rng.integers(1, 5, r))
        xs = tuple(1 if rng.random() < 0.5 else d for d in out)[int(rng.integers(0, r + 1)):]
        x = rand(xs)
        y = np.full(out, np.nan, np.float32)
        make_broadcast(xs, out)(bits_view(x), bits_view(y))
        np.testing.assert_array_equal(y, np.broadcast_to(x, out))


@pytest.mark.parametrize("xs,target", [((1, 64), (300, 64)), ((300, 1), (300, 70)), ((1, 5, 1, 7), (40, 5, 30, 7)),
                                       ((1,), (5000,)), ((3, 1, 1), (3, 60, 70))])
def test_broadcast_parallel_matches_serial(xs, target, parallel):
    x = rand(xs)
    (y,), _, _ = run_op("Expand", [x, np.array(target, I64)], const=(1,))
    np.testing.assert_array_equal(y, np.broadcast_to(x, target))


def test_expand_types_at_plan_time_and_errors():
    x = rand((3, 1))
    (t,) = infer("Expand", [x, np.array([2, 1, 6], I64)], const=(1,))
    assert t.shape == (2, 3, 6) and t.dtype == np.float32
    with pytest.raises(ConstantRequired):
        infer("Expand", [x, np.array([2, 1, 6], I64)])
    with pytest.raises(ShapeError, match="cannot be broadcast"):
        run_op("Expand", [x, np.array([2, 4], I64)], const=(1,))
    with pytest.raises(ShapeError, match="negative"):
        run_op("Expand", [x, np.array([-1, 3], I64)], const=(1,))
    with pytest.raises(ShapeError, match="more than edgedl accepts"):
        infer("Expand", [x, np.array([1 << 20, 1, 1 << 20], I64)], const=(1,))
    with pytest.raises(ShapeError, match="1-D"):
        infer("Expand", [x, np.array([[2, 3]], I64)], const=(1,))
    with pytest.raises(ShapeError, match="int64"):
        infer("Expand", [x, np.array([2.0, 3.0], np.float32)], const=(1,))


# --- Tile ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, np.float16, np.bool_])
@pytest.mark.parametrize("xs,reps", [((2, 3), (1, 1)), ((2, 3), (2, 3)), ((3,), (4,)), ((2, 1, 3), (1, 5, 2)),
                                     ((2, 3), (0, 2)), ((0, 3), (2, 2)), ((), ()), ((1, 2, 3, 4), (2, 1, 3, 1))])
def test_tile(xs, reps, dtype):
    x = rand(xs, dtype)
    (y,), (ref,), _ = run_op("Tile", [x, np.array(reps, I64)], const=(1,))
    want = np.tile(x, reps) if xs else x
    assert y.shape == want.shape
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(ref, want)
    # the definition: y[i] = x[i mod d]
    if y.size and y.ndim:
        idx = np.indices(y.shape).reshape(y.ndim, -1)
        src = tuple(idx[a] % xs[a] for a in range(len(xs)))
        np.testing.assert_array_equal(y.reshape(-1), x[src])


def test_tile_parallel(parallel):
    x = rand((64, 3))
    (y,), _, _ = run_op("Tile", [x, np.array([50, 100], I64)], const=(1,))
    np.testing.assert_array_equal(y, np.tile(x, (50, 100)))


def test_tile_opset1_and_errors():
    x = rand((2, 3))
    (y,), _, _ = run_op("Tile", [x, np.array(3, I64), np.array(1, I64)], opset=1, const=(1, 2))
    np.testing.assert_array_equal(y, np.tile(x, (1, 3)))
    with pytest.raises(ShapeError, match="entries for an input of rank 2"):
        run_op("Tile", [x, np.array([2], I64)], const=(1,))
    with pytest.raises(ShapeError, match="negative"):
        run_op("Tile", [x, np.array([2, -1], I64)], const=(1,))
    with pytest.raises(ShapeError, match="more than edgedl accepts"):
        infer("Tile", [x, np.array([1 << 31, 1 << 31], I64)], const=(1,))
    with pytest.raises(ConstantRequired):
        infer("Tile", [x, np.array([2, 2], I64)])
    with pytest.raises(ShapeError, match="2 inputs"):
        make("Tile", 3, opset=13)


# --- DepthToSpace / SpaceToDepth ----------------------------------------------------------------------------
def d2s_loops(x, b, crd):
    n, cd, h, w = x.shape
    c = cd // (b * b)
    y = np.empty((n, c, h * b, w * b), x.dtype)
    for ni, ci, hi, wi, i, j in itertools.product(range(n), range(c), range(h), range(w), range(b), range(b)):
        ch = ci * b * b + i * b + j if crd else (i * b + j) * c + ci
        y[ni, ci, hi * b + i, wi * b + j] = x[ni, ch, hi, wi]
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.float16, np.int64])
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("shape,b", [((1, 4, 2, 3), 2), ((2, 8, 3, 3), 2), ((1, 18, 2, 2), 3), ((1, 32, 2, 1), 4),
                                     ((2, 3, 2, 2), 1)])
def test_depth_to_space_and_back(shape, b, mode, dtype):
    x = rand(shape, dtype)
    (y,), (ref,), kern = run_op("DepthToSpace", [x], {"blocksize": b, "mode": mode})
    want = d2s_loops(x, b, mode == "CRD")
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(ref, want)
    assert kern.impl == "numba"
    (z,), (zref,), _ = run_op("SpaceToDepth", [y], {"blocksize": b, "mode": mode}, opset=28)
    np.testing.assert_array_equal(z, x)
    np.testing.assert_array_equal(zref, x)


def test_depth_space_default_mode_and_parallel(parallel):
    x = rand((2, 16, 9, 7))
    (y,), _, _ = run_op("DepthToSpace", [x], {"blocksize": 2}, opset=1)
    np.testing.assert_array_equal(y, d2s_loops(x, 2, False))
    (z,), _, _ = run_op("SpaceToDepth", [y], {"blocksize": 2}, opset=13)
    np.testing.assert_array_equal(z, x)
    x = rand((1, 27, 5, 4))
    (y,), _, _ = run_op("DepthToSpace", [x], {"blocksize": 3, "mode": "CRD"})
    np.testing.assert_array_equal(y, d2s_loops(x, 3, True))


def test_depth_space_errors():
    with pytest.raises(ShapeError, match="multiple of blocksize"):
        run_op("DepthToSpace", [rand((1, 6, 2, 2))], {"blocksize": 2})
    with pytest.raises(ShapeError, match="multiples of the blocksize"):
        run_op("SpaceToDepth", [rand((1, 1, 3, 4))], {"blocksize": 2})
    with pytest.raises(ShapeError, match="4-D"):
        run_op("DepthToSpace", [rand((4, 2, 2))], {"blocksize": 2})
    with pytest.raises(ShapeError, match="from opset 28"):
        make("SpaceToDepth", 1, {"blocksize": 2, "mode": "CRD"}, opset=13)
    with pytest.raises(ShapeError, match="from opset 11"):
        make("DepthToSpace", 1, {"blocksize": 2, "mode": "CRD"}, opset=9)
    with pytest.raises(ShapeError, match="DCR"):
        make("DepthToSpace", 1, {"blocksize": 2, "mode": "XYZ"})
    with pytest.raises(ShapeError, match="blocksize"):
        make("DepthToSpace", 1, {})
    with pytest.raises(ShapeError, match="positive"):
        make("DepthToSpace", 1, {"blocksize": 0})


# --- CumSum / CumProd ---------------------------------------------------------------------------------------
def scan_loops(x, axis, exclusive, reverse, prod):
    xm = np.moveaxis(x, axis, -1)
    y = np.empty_like(xm)
    n = xm.shape[-1]
    for idx in np.ndindex(*xm.shape[:-1]):
        acc = xm.dtype.type(1 if prod else 0)
        order = range(n - 1, -1, -1) if reverse else range(n)
        for k in order:
            if exclusive:
                y[idx + (k,)] = acc
            acc = acc * xm[idx + (k,)] if prod else acc + xm[idx + (k,)]
            if not exclusive:
                y[idx + (k,)] = acc
    return np.moveaxis(y, -1, axis)


@pytest.mark.parametrize("op_type", ["CumSum", "CumProd"])
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("shape,axis", [((7,), 0), ((3, 5), 1), ((3, 5), 0), ((2, 3, 4), -2), ((2, 1, 4), 1),
                                        ((4, 0), 1)])
def test_cumulative(op_type, exclusive, reverse, shape, axis):
    x = (rng.random(shape) + 0.5).astype(np.float32)
    attrs = {"exclusive": exclusive, "reverse": reverse}
    ax = np.array(axis, I64)
    want = scan_loops(x, axis, exclusive, reverse, op_type == "CumProd")
    for const in ((1,), ()):  # the axis as a constant, and read at run time
        (y,), (ref,), kern = run_op(op_type, [x, ax], attrs, opset=26, const=const)
        assert kern.impl == "numba"
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64, np.float16, np.uint32, np.uint64])
def test_cumsum_dtypes(dtype):
    x = (rng.integers(0, 5, (3, 6))).astype(dtype)
    for attrs in ({}, {"exclusive": 1, "reverse": 1}):
        (y,), _, _ = run_op("CumSum", [x, np.array([1], np.int32)], attrs, const=(1,))
        assert y.dtype == dtype
        np.testing.assert_array_equal(y, scan_loops(x, 1, attrs.get("exclusive", 0), attrs.get("reverse", 0), False))


def test_cumsum_matches_numpy_float32_bits():
    x = rng.standard_normal((5, 3000)).astype(np.float32)
    (y,), _, _ = run_op("CumSum", [x, np.array(1, I64)], const=(1,))
    np.testing.assert_array_equal(y, np.cumsum(x, axis=1))  # in-order float32 accumulation, as numpy
    (y,), _, _ = run_op("CumSum", [x.T.copy(), np.array(0, I64)], const=(1,))
    np.testing.assert_array_equal(y, np.cumsum(x.T, axis=0))


@pytest.mark.parametrize("shape,axis", [((40, 300), 1), ((2, 50, 300), 1), ((300, 5), 0), ((3, 200, 2), 2)])
def test_cumulative_parallel(shape, axis, parallel):
    x = (rng.random(shape) + 0.5).astype(np.float32)
    for op_type in ("CumSum", "CumProd"):  # the kernel against numpy's cumsum / cumprod (the reference)
        for attrs in ({}, {"exclusive": 1, "reverse": 1}):
            (y,), (ref,), _ = run_op(op_type, [x, np.array(axis, I64)], attrs, opset=26, const=(1,))
            np.testing.assert_array_equal(y, ref)
    (y,), _, _ = run_op("CumSum", [x, np.array(axis, I64)], {}, const=(1,))
    np.testing.assert_array_equal(y, np.cumsum(x, axis=axis))


def test_cumulative_errors():
    x = rand((2, 3))
    with pytest.raises(ShapeError, match="out of range"):
        run_op("CumSum", [x, np.array(2, I64)], const=(1,))
    with pytest.raises(EdgeDLError, match="out of range"):  # an axis known only at run time
        run_op("CumSum", [x, np.array(-3, I64)])
    with pytest.raises(ShapeError, match="scalar"):
        run_op("CumSum", [x, np.array([0, 1], I64)], const=(1,))
    with pytest.raises(ShapeError, match="int32 or int64"):
        run_op("CumSum", [x, np.array(0.0, np.float32)], const=(1,))
    with pytest.raises(UnsupportedOpError, match="int8"):
        run_op("CumSum", [rand((2, 3), np.int8), np.array(0, I64)], const=(1,))
    with pytest.raises(ShapeError, match="opset 26"):
        make("CumProd", 2, opset=25)


# --- Trilu --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, np.float16, np.bool_])
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, 1, -1, 3, -2, 7, -7, 1 << 62, -(1 << 62)])
def test_trilu(k, upper, dtype):
    x = rand((2, 4, 5), dtype)
    ins = [x] if k is None else [x, np.array(k, I64)]
    kk = 0 if k is None else k
    i, j = np.indices((4, 5))
    keep = (j - i >= kk) if upper else (j - i <= kk)
    want = np.where(keep, x, np.zeros((), dtype))
    for const in ((1,), ()):
        (y,), (ref,), kern = run_op("Trilu", ins, {"upper": upper}, const=const if k is not None else ())
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(ref, want)
        assert kern.impl == "numba"


def test_trilu_parallel_and_errors(parallel):
    x = rand((3, 33, 40))
    for upper in (0, 1):
        (y,), _, _ = run_op("Trilu", [x, np.array(-3, I64)], {"upper": upper}, const=(1,))
        np.testing.assert_array_equal(y, np.triu(x, -3) if upper else np.tril(x, -3))
    with pytest.raises(ShapeError, match="rank >= 2"):
        run_op("Trilu", [rand((4,))])
    with pytest.raises(ShapeError, match="int64"):
        run_op("Trilu", [rand((4, 4)), np.array(1, np.int32)])
    with pytest.raises(ShapeError, match="scalar"):
        run_op("Trilu", [rand((4, 4)), np.array([1, 2], I64)])


# --- Range ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,start,limit,delta", [
    (np.int64, 3, 9, 3), (np.int32, 10, 4, -2), (np.int16, 0, 7, 1), (np.int64, 5, 5, 1), (np.int64, 5, 1, 2),
    (np.float32, 1.0, 5.0, 2.0), (np.float64, 0.1, 1.0, 0.3), (np.float32, 3.0, -1.0, -0.75),
    (np.float16, 1.0, 5.0, 0.5), (np.int64, -(1 << 40), 1 << 40, 1 << 38)])
def test_range(dtype, start, limit, delta):
    ins = [np.array(v, dtype) for v in (start, limit, delta)]
    (y,), (ref,), _ = run_op("Range", ins, const=(0, 1, 2))
    n = max(int(np.ceil((float(ins[1]) - float(ins[0])) / float(ins[2]))), 0)
    want = np.array([float(ins[0]) + i * float(ins[2]) for i in range(n)]).astype(dtype)
    assert y.dtype == dtype and y.shape == (n,)
    np.testing.assert_allclose(y.astype(np.float64), want.astype(np.float64), rtol=1e-6)
    np.testing.assert_array_equal(ref, y)


def test_range_errors():
    one = np.array(1, I64)
    with pytest.raises(ShapeError, match="delta is 0"):
        run_op("Range", [one, np.array(5, I64), np.array(0, I64)], const=(0, 1, 2))
    with pytest.raises(ShapeError, match="delta is 0"):
        run_op("Range", [np.array(1.0, np.float32), np.array(5.0, np.float32), np.array(0.0, np.float32)],
               const=(0, 1, 2))
    with pytest.raises(ShapeError, match="more than edgedl accepts"):
        run_op("Range", [np.array(0, I64), np.array(1 << 62, I64), one], const=(0, 1, 2))
    with pytest.raises(ShapeError, match="more than edgedl accepts"):
        run_op("Range", [np.array(0, np.float32), np.array(1e30, np.float32), np.array(1e-3, np.float32)],
               const=(0, 1, 2))
    with pytest.raises(ShapeError, match="finite"):
        run_op("Range", [np.array(0, np.float32), np.array(np.inf, np.float32), np.array(1, np.float32)],
               const=(0, 1, 2))
    with pytest.raises(ShapeError, match="share one dtype"):
        run_op("Range", [one, np.array(5, np.int32), one], const=(0, 1, 2))
    with pytest.raises(ShapeError, match="scalar"):
        run_op("Range", [np.array([1, 2], I64), np.array(5, I64), one], const=(0, 1, 2))
    with pytest.raises(ConstantRequired):
        infer("Range", [one, np.array(5, I64), one], const=(0, 2))
    with pytest.raises(UnsupportedOpError, match="uint8"):
        run_op("Range", [np.array(v, np.uint8) for v in (0, 5, 1)], const=(0, 1, 2))


def test_range_float16_stash_type():
    ins = [np.array(v, np.float16) for v in (1000.0, 1010.0, 0.5)]
    (y,), _, _ = run_op("Range", ins, {"stash_type": 1}, opset=27, const=(0, 1, 2))
    np.testing.assert_array_equal(y, (np.float32(1000) + np.arange(20, dtype=np.float32) * 0.5).astype(np.float16))
    with pytest.raises(ShapeError, match="stash_type"):
        make("Range", 3, {"stash_type": 7}, opset=27)


# --- EyeLike ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,k", [((3, 3), 0), ((3, 5), 1), ((4, 2), -1), ((3, 4), 5), ((3, 4), -4), ((0, 3), 0)])
def test_eyelike(shape, k):
    x = rand(shape, np.int32)
    (y,), (ref,), _ = run_op("EyeLike", [x], {"k": k})
    np.testing.assert_array_equal(y, np.eye(*shape, k=k, dtype=np.int32))
    np.testing.assert_array_equal(ref, y)
    (y,), _, _ = run_op("EyeLike", [x], {"k": k, "dtype": TensorProto.DOUBLE})
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, np.eye(*shape, k=k))
    assert lookup("EyeLike").shape_only  # folded at plan time
    with pytest.raises(ShapeError, match="2-D"):
        run_op("EyeLike", [rand((2, 2, 2))])


# --- OneHot -------------------------------------------------------------------------------------------------
def onehot_loops(ind, depth, axis, values, wrap=True):
    ind = np.asarray(ind)
    axis = axis if axis >= 0 else axis + ind.ndim + 1
    shape = ind.shape[:axis] + (depth,) + ind.shape[axis:]
    y = np.full(shape, values[0], values.dtype)
    for idx in np.ndindex(*ind.shape):
        v = int(ind[idx])
        if wrap and v < 0:
            v += depth
        if 0 <= v < depth:
            y[idx[:axis] + (v,) + idx[axis:]] = values[1]
    return y


@pytest.mark.parametrize("axis", [-1, 0, 1, -2, 2])
@pytest.mark.parametrize("ind_dtype", [np.int64, np.int32, np.float32, np.uint8])
def test_onehot(axis, ind_dtype):
    ind = rng.integers(-7, 8, (3, 4)).astype(ind_dtype) if ind_dtype != np.uint8 else \
        rng.integers(0, 9, (3, 4)).astype(np.uint8)
    values = np.array([2, 5], np.int64)
    for depth in (np.array(6, I64), np.array([6.0], np.float32)):
        (y,), (ref,), _ = run_op("OneHot", [ind, depth, values], {"axis": axis}, opset=11, const=(1,))
        want = onehot_loops(ind, 6, axis, values)
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(ref, want)


def test_onehot_opset9_negative_indices_are_out_of_range_and_errors():
    ind = np.array([0, -1, 3, 9, -9], I64)
    values = np.array([0.0, 1.0], np.float32)
    (y,), _, _ = run_op("OneHot", [ind, np.array(4, I64), values], opset=9, const=(1,))
    np.testing.assert_array_equal(y, onehot_loops(ind, 4, -1, values, wrap=False))
    (y,), _, _ = run_op("OneHot", [np.array([1.7, -1.2, np.nan], np.float32), np.array(4, I64), values], const=(1,))
    np.testing.assert_array_equal(y, onehot_loops(np.array([1, -1, 99]), 4, -1, values))
    with pytest.raises(ShapeError, match="positive"):
        run_op("OneHot", [ind, np.array(0, I64), values], const=(1,))
    with pytest.raises(ShapeError, match="more than edgedl accepts"):
        run_op("OneHot", [ind, np.array(MAX_TENSOR_ELEMENTS // 2, I64), values], const=(1,))
    with pytest.raises(ShapeError, match="pair"):
        run_op("OneHot", [ind, np.array(4, I64), np.array([0.0, 1.0, 2.0], np.float32)], const=(1,))
    with pytest.raises(ShapeError, match="out of range"):
        run_op("OneHot", [ind, np.array(4, I64), values], {"axis": 2}, const=(1,))
    with pytest.raises(ConstantRequired):
        infer("OneHot", [ind, np.array(4, I64), values])


# --- ReverseSequence -------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence(batch_axis, time_axis):
    x = rand((4, 5, 3) if time_axis == 0 else (5, 4, 3))
    lens = np.array([4, 0, 1, 3, 2], I64)
    want = x.copy()
    for b, n in enumerate(lens):
        for t in range(n):
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            src[batch_axis], src[time_axis] = b, n - 1 - t
            dst[batch_axis], dst[time_axis] = b, t
            want[tuple(dst)] = x[tuple(src)]
    for const in ((1,), ()):
        (y,), (ref,), _ = run_op("ReverseSequence", [x, lens], {"batch_axis": batch_axis, "time_axis": time_axis},
                                 const=const)
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(ref, want)


def test_reverse_sequence_errors():
    x = rand((4, 2))
    with pytest.raises(EdgeDLError, match=r"outside \[0, 4\]"):
        run_op("ReverseSequence", [x, np.array([5, 1], I64)])  # run time
    with pytest.raises(EdgeDLError, match=r"outside \[0, 4\]"):
        run_op("ReverseSequence", [x, np.array([-1, 1], I64)], const=(1,))
    with pytest.raises(ShapeError, match="batch size"):
        run_op("ReverseSequence", [x, np.array([1, 1, 1], I64)])
    with pytest.raises(ShapeError, match="one each"):
        make("ReverseSequence", 2, {"batch_axis": 0, "time_axis": 0})


# --- CenterCropPad ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("xs,shape,axes", [((6, 7), (4, 4), None), ((3, 4), (6, 7), None), ((5, 4, 3), (2, 7), [0, 1]),
                                           ((5, 4, 3), (8, 2), [-1, -3]), ((2, 5), (5,), [1]), ((4, 4), (0, 4), None)])
def test_center_crop_pad(xs, shape, axes):
    x = rand(xs)
    attrs = {} if axes is None else {"axes": axes}
    (y,), (ref,), _ = run_op("CenterCropPad", [x, np.array(shape, I64)], attrs, const=(1,))
    ax = list(range(x.ndim)) if axes is None else [a % x.ndim for a in axes]
    out = list(xs)
    for a, s in zip(ax, shape):
        out[a] = s
    want = np.zeros(out, np.float32)
    for idx in np.ndindex(*out):  # output index -> input index: shift by the centered offset
        src = list(idx)
        for a, s in zip(ax, shape):
            d = xs[a]
            src[a] = idx[a] + (d - s) // 2 if s <= d else idx[a] - (s - d) // 2
        if all(0 <= v < d for v, d in zip(src, xs)):
            want[idx] = x[tuple(src)]
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(ref, want)


def test_center_crop_pad_errors():
    x = rand((4, 4))
    with pytest.raises(ShapeError, match="entries for"):
        run_op("CenterCropPad", [x, np.array([2], I64)], const=(1,))
    with pytest.raises(ShapeError, match="repeat"):
        run_op("CenterCropPad", [x, np.array([2, 2], I64)], {"axes": [0, -2]}, const=(1,))
    with pytest.raises(ShapeError, match="negative"):
        run_op("CenterCropPad", [x, np.array([2, -2], I64)], const=(1,))
    with pytest.raises(ConstantRequired):
        infer("CenterCropPad", [x, np.array([2, 2], I64)])


# --- Col2Im --------------------------------------------------------------------------------------------------
def col2im_loops(x, image, block, dil, pads, strides):
    nd = len(image)
    n, ck, _ = x.shape
    k = int(np.prod(block))
    c = ck // k
    nb = [(image[a] + pads[a] + pads[nd + a] - dil[a] * (block[a] - 1) - 1) // strides[a] + 1 for a in range(nd)]
    y = np.zeros((n, c) + tuple(image), x.dtype)
    for ni, ci in itertools.product(range(n), range(c)):
        for kk, off in enumerate(np.ndindex(*block)):
            for li, pos in enumerate(np.ndindex(*nb)):
                p = [pos[a] * strides[a] - pads[a] + off[a] * dil[a] for a in range(nd)]
                if all(0 <= p[a] < image[a] for a in range(nd)):
                    y[(ni, ci) + tuple(p)] += x[ni, ci * k + kk, li]
    return y


@pytest.mark.parametrize("image,block,attrs", [
    ((5, 5), (1, 5), {}), ((5, 5), (2, 2), {"strides": [2, 2]}), ((5, 5), (2, 2), {"pads": [0, 1, 0, 1]}),
    ((6, 6), (2, 2), {"dilations": [2, 2], "strides": [1, 2]}), ((3, 4, 5), (2, 1, 2), {"pads": [1, 0, 0, 0, 1, 1]}),
    ((7,), (3,), {"strides": [2], "pads": [1, 2], "dilations": [2]})])
def test_col2im(image, block, attrs):
    nd = len(image)
    dil = attrs.get("dilations", [1] * nd)
    pads = attrs.get("pads", [0] * 2 * nd)
    strides = attrs.get("strides", [1] * nd)
    nb = [(image[a] + pads[a] + pads[nd + a] - dil[a] * (block[a] - 1) - 1) // strides[a] + 1 for a in range(nd)]
    x = rand((2, 3 * int(np.prod(block)), int(np.prod(nb))))
    (y,), (ref,), _ = run_op("Col2Im", [x, np.array(image, I64), np.array(block, I64)], attrs, const=(1, 2))
    want = col2im_loops(x, image, block, dil, pads, strides)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-4)


def test_col2im_errors():
    x = rand((1, 8, 9))
    with pytest.raises(ShapeError, match="number of sliding blocks"):
        run_op("Col2Im", [x, np.array([5, 5], I64), np.array([2, 2], I64)], const=(1, 2))
    with pytest.raises(ShapeError, match="multiple of prod"):
        run_op("Col2Im", [rand((1, 7, 9)), np.array([4, 4], I64), np.array([2, 2], I64)], const=(1, 2))
    with pytest.raises(ShapeError, match="does not fit"):
        run_op("Col2Im", [x, np.array([1, 1], I64), np.array([2, 2], I64)], const=(1, 2))
    with pytest.raises(ShapeError, match="strides"):
        run_op("Col2Im", [x, np.array([4, 4], I64), np.array([2, 2], I64)], {"strides": [0, 1]}, const=(1, 2))
    with pytest.raises(ConstantRequired):
        infer("Col2Im", [x, np.array([4, 4], I64), np.array([2, 2], I64)], const=(2,))


# --- Det -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4), (2, 1, 2, 2), (1, 1), (2, 0, 0)])
def test_det(shape, dtype):
    x = (rng.standard_normal(shape)).astype(dtype)
    (y,), _, _ = run_op("Det", [x])
    assert y.shape == shape[:-2] and y.dtype == dtype
    want = np.linalg.det(x.astype(np.float64))
    tol = 1e-2 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=tol, atol=tol)
    with pytest.raises(ShapeError, match="square"):
        run_op("Det", [rand((2, 3))])
    with pytest.raises(UnsupportedOpError):
        run_op("Det", [rand((2, 2), np.int32)])


# --- MaxUnpool -----------------------------------------------------------------------------------------------
def test_maxunpool():
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    idx = np.array([[[[5, 7], [13, 15]]]], I64)
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}
    (y,), (ref,), _ = run_op("MaxUnpool", [x, idx], attrs)
    want = np.zeros((1, 1, 4, 4), np.float32)
    want.reshape(-1)[[5, 7, 13, 15]] = [1, 2, 3, 4]
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(ref, want)
    # output_shape: indices are flat positions in that (larger) output, as MaxPool of a 5x5 input gives them
    (y,), _, _ = run_op("MaxUnpool", [x, np.array([[[[6, 8], [16, 18]]]], I64), np.array([1, 1, 5, 5], I64)],
                        attrs, const=(2,))
    want = np.zeros((1, 1, 5, 5), np.float32)
    want[0, 0, 1, 1], want[0, 0, 1, 3], want[0, 0, 3, 1], want[0, 0, 3, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(y, want)
    (t,) = infer("MaxUnpool", [rand((2, 3, 4, 5)), np.zeros((2, 3, 4, 5), I64)],
                 {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1]})
    assert t.shape == (2, 3, 8, 9)


def test_maxunpool_errors():
    x = rand((1, 1, 2, 2))
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}
    with pytest.raises(EdgeDLError, match="outside the output of 16"):
        run_op("MaxUnpool", [x, np.array([[[[0, 1], [2, 16]]]], I64)], attrs)  # run time
    with pytest.raises(EdgeDLError, match="outside the output"):
        run_op("MaxUnpool", [x, np.array([[[[0, 1], [2, -1]]]], I64)], attrs, const=(1,))
    with pytest.raises(ShapeError, match="indices have shape"):
        run_op("MaxUnpool", [x, np.zeros((1, 1, 2, 3), I64)], attrs)
    with pytest.raises(ShapeError, match="kernel_shape"):
        make("MaxUnpool", 2, {})
    with pytest.raises(ShapeError, match="needs rank 4"):
        run_op("MaxUnpool", [rand((1, 2, 2)), np.zeros((1, 2, 2), I64)], attrs)
    with pytest.raises(ConstantRequired):
        infer("MaxUnpool", [x, np.zeros((1, 1, 2, 2), I64), np.array([1, 1, 4, 4], I64)], attrs)


# --- end to end against onnxruntime -----------------------------------------------------------------------
ort = pytest.importorskip("onnxruntime")

F32 = TensorProto.FLOAT
INT64 = TensorProto.INT64


def run_both(nodes, inputs, outputs, feeds, inits=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    got = edgedl.load(model.SerializeToString()).run(feeds)
    for spec, w in zip(outputs, want):
        g = got[spec.name]
        assert g.shape == w.shape and g.dtype == w.dtype, spec.name
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=spec.name)
    return got


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_e2e_expand_tile_depth_space_cumsum_trilu():
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["e"]),
        helper.make_node("Tile", ["e", "reps"], ["t"]),
        helper.make_node("DepthToSpace", ["t"], ["d"], blocksize=2, mode="CRD"),
        helper.make_node("SpaceToDepth", ["d"], ["s"], blocksize=2),
        helper.make_node("CumSum", ["s", "axis"], ["c"], exclusive=1, reverse=1),
        helper.make_node("Trilu", ["c", "k"], ["y"], upper=0),
    ]
    inits = [helper.make_tensor("shape", INT64, [4], [2, 1, 3, 1]),
             helper.make_tensor("reps", INT64, [4], [1, 2, 2, 2]),
             helper.make_tensor("axis", INT64, [], [1]),
             helper.make_tensor("k", INT64, [], [1])]
    x = rand((1, 4, 3, 5)) / 20
    run_both(nodes, [vi("x", F32, [1, 4, 3, 5])], [vi("y", F32, None)], {"x": x}, inits, opset=14)


def test_e2e_values_from_inputs_specialize_the_plan():
    """Expand's shape, Range's limits and OneHot's depth fed as graph inputs (ConstantRequired -> the model
    specializes its plan on those values), and CumSum's axis read at run time."""
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["e"]),
        helper.make_node("CumSum", ["e", "axis"], ["c"]),
        helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
        helper.make_node("OneHot", ["ind", "depth", "values"], ["o"], axis=0),
    ]
    inputs = [vi("x", F32, [3, 1]), vi("shape", INT64, ["n"]), vi("axis", INT64, []), vi("start", INT64, []),
              vi("limit", INT64, []), vi("delta", INT64, []), vi("ind", INT64, [4]), vi("depth", INT64, []),
              vi("values", F32, [2])]
    outputs = [vi("c", F32, None), vi("r", INT64, None), vi("o", F32, None)]
    feeds = {"x": rand((3, 1)), "shape": np.array([3, 4], I64), "axis": np.array(1, I64),
             "start": np.array(10, I64), "limit": np.array(-3, I64), "delta": np.array(-3, I64),
             "ind": np.array([0, -1, 5, 2], I64), "depth": np.array(3, I64), "values": np.array([-1, 4], np.float32)}
    run_both(nodes, inputs, outputs, feeds)
    feeds.update(shape=np.array([2, 3, 5], I64), axis=np.array(0, I64), limit=np.array(30, I64),
                 delta=np.array(4, I64), depth=np.array(6, I64))
    run_both(nodes, inputs, outputs, feeds)


def test_e2e_misc_layout():
    nodes = [
        helper.make_node("ReverseSequence", ["x", "lens"], ["r"], batch_axis=0, time_axis=1),
        helper.make_node("CenterCropPad", ["r", "cshape"], ["p"], axes=[1, 2]),
        helper.make_node("Det", ["m"], ["d"]),
        helper.make_node("EyeLike", ["m2"], ["eye"], k=1, dtype=TensorProto.INT32),
        helper.make_node("Col2Im", ["cols", "image", "block"], ["im"], strides=[2, 1], pads=[1, 0, 1, 1]),
    ]
    inputs = [vi("x", F32, [3, 5, 4]), vi("lens", INT64, [3]), vi("m", F32, [2, 3, 3]), vi("m2", F32, [3, 4]),
              vi("cols", F32, [2, 12, 12])]
    inits = [helper.make_tensor("cshape", INT64, [2], [4, 7]),
             helper.make_tensor("image", INT64, [2], [5, 4]), helper.make_tensor("block", INT64, [2], [2, 2])]
    outputs = [vi("p", F32, None), vi("d", F32, None), vi("eye", TensorProto.INT32, None), vi("im", F32, None)]
    feeds = {"x": rand((3, 5, 4)), "lens": np.array([5, 2, 0], I64), "m": rand((2, 3, 3)) / 10,
             "m2": rand((3, 4)), "cols": rand((2, 12, 12))}
    run_both(nodes, inputs, outputs, feeds, inits)


def test_e2e_maxpool_maxunpool_round_trip():
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxUnpool", ["p", "i", "oshape"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    inits = [helper.make_tensor("oshape", INT64, [4], [2, 3, 5, 7])]
    x = rand((2, 3, 5, 7))
    got = run_both(nodes, [vi("x", F32, [2, 3, 5, 7])], [vi("y", F32, None)], {"x": x}, inits)
    y = got["y"]
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])  # every unpooled value lands where MaxPool found it
