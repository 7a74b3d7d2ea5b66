"""Softmax/LogSoftmax and ReduceSum/Mean/Max/Min/SumSquare kernels against float64 numpy references."""
import numba
import numpy as np
import pytest

from edgedl import testing
from edgedl.errors import ShapeError, UnsupportedOpError
from edgedl.kernels.cpu.config import PARALLEL_MIN_WORK
from edgedl.kernels.cpu.reduce import R_MAX, R_SUM, ReducePlan

rng = np.random.default_rng(77)


def run_op(op_type, inputs, attrs=None, opset=18, const=None):
    """Build the op like the planner does (infer, build) and run its kernel on a preallocated output.

    ``const``: indices of inputs passed as constants (default: every input after the first).
    Returns (output, reference output, kernel)."""
    const = range(1, len(inputs)) if const is None else const
    (y,), (ref,), kernel = testing.run_op(op_type, inputs, attrs, opset=opset, const=const)
    return y, ref, kernel


def rand(shape, scale=3.0, dtype=np.float32):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def close(y, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(y.astype(np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol)


def softmax64(x, axis, log=False, coerce=False):
    x = x.astype(np.float64)
    if coerce:
        axis = axis + x.ndim if axis < 0 else axis
        shape = x.shape
        x = x.reshape(int(np.prod(shape[:axis])), -1)
        return softmax64(x, 1, log).reshape(shape)
    v = x - x.max(axis=axis, keepdims=True)
    s = np.exp(v).sum(axis=axis, keepdims=True)
    return v - np.log(s) if log else np.exp(v) / s


# --- Softmax --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_opset13_every_axis(op_type):
    log = op_type == "LogSoftmax"
    for shape in [(3, 4, 5), (2, 300, 3), (2, 3, 600), (7,), (1, 1, 9)]:
        x = rand(shape)
        for axis in range(-len(shape), len(shape)):
            y, ref, k = run_op(op_type, [x], {"axis": axis}, opset=13)
            assert k.impl == "numba"
            want = softmax64(x, axis, log)
            close(y, want)
            close(ref, want)
    y, _, _ = run_op(op_type, [x], {}, opset=13)  # default axis -1
    close(y, softmax64(x, -1, log))


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_opset11_coerces_to_2d(op_type):
    log = op_type == "LogSoftmax"
    x = rand((2, 3, 4, 5))
    for axis in (0, 1, 2, 3, -1, -3):
        y, _, _ = run_op(op_type, [x], {"axis": axis}, opset=11)
        close(y, softmax64(x, axis, log, coerce=True))
    y, _, _ = run_op(op_type, [x], {}, opset=11)  # default axis 1
    close(y, softmax64(x, 1, log, coerce=True))


def test_softmax_large_and_special_values():
    x = np.array([[1000, 1001, 1002, 1003], [-1e4, 0, 1e4, 3], [0, 0, 0, 0]], np.float32)
    y, _, _ = run_op("Softmax", [x], {"axis": -1}, opset=13)
    close(y, softmax64(x, -1))
    y, _, _ = run_op("LogSoftmax", [x], {"axis": 0}, opset=13)
    close(y, softmax64(x, 0, log=True))
    assert np.all(np.isfinite(y))


def test_softmax_errors():
    with pytest.raises(ShapeError, match="axis 3"):
        run_op("Softmax", [rand((2, 3, 4))], {"axis": 3}, opset=13)
    with pytest.raises(ShapeError, match="axis -5"):
        run_op("LogSoftmax", [rand((2, 3, 4))], {"axis": -5}, opset=11)
    with pytest.raises(UnsupportedOpError):
        run_op("Softmax", [np.zeros((2, 3), np.int32)], opset=13)


def test_softmax_float64_reference_path():
    x = rand((3, 5)).astype(np.float64)
    y, _, k = run_op("Softmax", [x], {"axis": 1}, opset=13)
    assert k.impl == "numpy" and y.dtype == np.float64
    close(y, softmax64(x, 1), rtol=1e-12)


# --- Reductions -------------------------------------------------------------------------------------------
def reduce64(op_type, x, axes, keepdims):
    x = x.astype(np.float64)
    if op_type == "ReduceSumSquare":
        return np.sum(x * x, axis=axes, keepdims=keepdims)
    fn = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min}[op_type]
    return fn(x, axis=axes, keepdims=keepdims)


def test_reduce_plan_layouts():
    p = ReducePlan((2, 3, 4, 5), (2, 3), R_SUM)
    assert (p.outer, p.n, p.inner, p.transpose) == (6, 20, 1, None)
    p = ReducePlan((2, 3, 4, 5), (0,), R_SUM)
    assert (p.outer, p.n, p.inner) == (1, 2, 60)
    p = ReducePlan((2, 3, 4, 5), (1, 2), R_MAX)
    assert (p.outer, p.n, p.inner) == (2, 12, 5)
    p = ReducePlan((1, 3, 1, 5), (0, 2), R_SUM)  # size-1 dims drop out: nothing to reduce
    assert (p.outer, p.n, p.inner) == (15, 1, 1)
    p = ReducePlan((2, 3, 4, 5), (0, 2), R_SUM)  # interleaved: transposed copy first
    assert p.transpose is not None and (p.outer, p.n, p.inner) == (15, 8, 1)


AXES = [None, (0,), (1,), (2,), (3,), (-1,), (2, 3), (1, 2), (0, 1), (0, 2), (1, 3), (0, 2, 3), (0, 1, 2, 3)]


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare"])
def test_reduce_axes_keepdims(op_type):
    for shape in [(2, 3, 4, 5), (3, 1, 7, 300), (1, 5, 1, 2)]:
        x = rand(shape)
        for axes in AXES:
            for keepdims in (0, 1):
                inputs = [x] if axes is None else [x, np.array(axes, np.int64)]
                y, ref, k = run_op(op_type, inputs, {"keepdims": keepdims}, opset=18)
                assert k.impl == "numba"
                want = reduce64(op_type, x, axes, bool(keepdims))
                assert y.shape == want.shape
                close(y, want, rtol=1e-5, atol=1e-5)
                close(ref, want, rtol=1e-5, atol=1e-5)


def test_reduce_axes_attribute_opsets():
    x = rand((3, 4, 5))
    y, _, _ = run_op("ReduceSum", [x], {"axes": [1], "keepdims": 0}, opset=11)
    close(y, x.astype(np.float64).sum(axis=1), atol=1e-5)
    y, _, _ = run_op("ReduceSum", [x, np.array([1], np.int64)], {"keepdims": 0}, opset=13)
    close(y, x.astype(np.float64).sum(axis=1), atol=1e-5)
    y, _, _ = run_op("ReduceMean", [x], {"axes": [0, 2]}, opset=13)
    close(y, x.astype(np.float64).mean(axis=(0, 2), keepdims=True), atol=1e-5)
    y, _, _ = run_op("ReduceMax", [x], {"axes": [-1], "keepdims": 0}, opset=17)
    close(y, x.max(axis=-1))
    with pytest.raises(ShapeError, match="attribute"):
        run_op("ReduceMean", [x, np.array([1], np.int64)], opset=13)


def test_reduce_empty_axes_and_noop():
    x = rand((3, 4))
    empty = np.zeros((0,), np.int64)
    y, _, _ = run_op("ReduceSum", [x, empty], {"keepdims": 1}, opset=13)
    close(y, x.astype(np.float64).sum(keepdims=True), atol=1e-5)
    y, _, _ = run_op("ReduceSum", [x, empty], {"noop_with_empty_axes": 1}, opset=13)
    np.testing.assert_array_equal(y, x)
    y, _, _ = run_op("ReduceMax", [x], {"noop_with_empty_axes": 1, "keepdims": 0}, opset=18)
    np.testing.assert_array_equal(y, x)
    y, _, _ = run_op("ReduceMean", [x], {"keepdims": 0}, opset=18)
    assert y.shape == ()
    close(y, x.astype(np.float64).mean(), atol=1e-6)


def test_reduce_empty_sets():
    x = np.zeros((2, 0, 4), np.float32)
    y, _, _ = run_op("ReduceSum", [x, np.array([1], np.int64)], opset=18)
    np.testing.assert_array_equal(y, np.zeros((2, 1, 4)))
    y, _, _ = run_op("ReduceMax", [x, np.array([1], np.int64)], opset=18)
    np.testing.assert_array_equal(y, np.full((2, 1, 4), -np.inf))
    y, _, _ = run_op("ReduceMin", [x, np.array([1], np.int64)], opset=18)
    np.testing.assert_array_equal(y, np.full((2, 1, 4), np.inf))
    y, _, _ = run_op("ReduceMax", [np.zeros((2, 0), np.bool_), np.array([1], np.int64)], opset=20)
    np.testing.assert_array_equal(y, np.zeros((2, 1), np.bool_))
    y, _, _ = run_op("ReduceMin", [np.zeros((2, 0), np.int8), np.array([1], np.int64)], opset=20)
    np.testing.assert_array_equal(y, np.full((2, 1), 127, np.int8))


def test_reduce_other_dtypes():
    xi = rng.integers(-100, 100, (4, 6)).astype(np.int32)
    y, _, k = run_op("ReduceSum", [xi, np.array([1], np.int64)], {"keepdims": 0})
    assert k.impl == "numpy" and y.dtype == np.int32
    np.testing.assert_array_equal(y, xi.sum(axis=1))
    xb = rng.random((3, 5)) > 0.5
    y, _, _ = run_op("ReduceMax", [xb, np.array([0], np.int64)], {"keepdims": 0}, opset=20)
    np.testing.assert_array_equal(y, xb.max(axis=0))


def test_reduce_errors():
    x = rand((2, 3))
    with pytest.raises(ShapeError, match="out of range"):
        run_op("ReduceSum", [x, np.array([2], np.int64)])
    with pytest.raises(ShapeError, match="repeat"):
        run_op("ReduceMean", [x, np.array([1, -1], np.int64)])
    with pytest.raises(UnsupportedOpError, match="must be a constant known"):
        run_op("ReduceMax", [x, np.array([1], np.int64)], const=())


def test_long_reductions_stay_accurate():
    """A million-element sum/mean in float32 keeps 1e-4 relative accuracy (float64 accumulation)."""
    x = (rng.random((1 << 20,)) + 0.5).astype(np.float32)
    for op_type in ("ReduceSum", "ReduceMean"):
        y, _, _ = run_op(op_type, [x], {"keepdims": 0})
        close(y, reduce64(op_type, x, None, False), rtol=1e-6)
    x2 = (rng.random((4096, 64)) + 0.5).astype(np.float32)  # long strided reduction over axis 0
    y, _, _ = run_op("ReduceSum", [x2, np.array([0], np.int64)])
    close(y, x2.astype(np.float64).sum(axis=0, keepdims=True), rtol=1e-6)


# --- threads ---------------------------------------------------------------------------------------------
def test_parallel_matches_serial():
    """Sizes above PARALLEL_MIN_WORK run the prange kernels; 1 and 2 threads give the same results."""
    big = rand((PARALLEL_MIN_WORK // 64 + 3, 64))
    wide = rand((3, 70, 1100))
    cases = [
        ("Softmax", [big], {"axis": -1}, 13), ("LogSoftmax", [wide], {"axis": 1}, 13),
        ("ReduceSum", [big], {}, 18),  # reduce-all: each row split into pieces
        ("ReduceMean", [big, np.array([1], np.int64)], {}, 18),
        ("ReduceMax", [wide, np.array([1], np.int64)], {}, 18),
        ("ReduceMin", [big, np.array([0, 1], np.int64)], {}, 18),
        ("ReduceSum", [wide, np.array([0, 2], np.int64)], {}, 18),  # transposed copy
    ]
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append([run_op(t, ins, attrs, opset)[0] for t, ins, attrs, opset in cases])
    finally:
        numba.set_num_threads(before)
    for (t, _ins, _attrs, _), y1, y2 in zip(cases, *results):
        rtol = 1e-6 if t.startswith("Reduce") else 0  # sums: partial sums combine in another order
        np.testing.assert_allclose(y1, y2, rtol=rtol)
    close(results[0][0], softmax64(big, -1))
    close(results[1][1], softmax64(wide, 1, log=True))
    close(results[1][2], big.astype(np.float64).sum(keepdims=True), rtol=1e-6)
    close(results[1][6], wide.astype(np.float64).sum(axis=(0, 2), keepdims=True), rtol=1e-6, atol=1e-4)
