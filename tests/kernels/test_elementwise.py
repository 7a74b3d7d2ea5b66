"""Elementwise kernels (broadcasting binary ops, variadic Sum/Max/Min, unary math, activations) against
numpy references."""
import numba
import numpy as np
import pytest

from edgedl import testing
from edgedl.errors import ShapeError, UnsupportedOpError
from edgedl.kernels.cpu import elementwise as K
from edgedl.kernels.cpu.config import PARALLEL_MIN_WORK

rng = np.random.default_rng(2024)


def run_op(op_type, inputs, attrs=None, opset=17, const=()):
    """Build the op like the planner does (infer, build) and run its kernel on a preallocated output.

    ``inputs``: arrays (None for omitted inputs); the indices in ``const`` are passed as constants.
    Returns (output, reference output, kernel)."""
    (y,), (ref,), kernel = testing.run_op(op_type, inputs, attrs, opset=opset, const=const)
    return y, ref, kernel


def rand(shape, dtype=np.float32, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def close(y, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(y.astype(np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol)


# --- broadcast plans --------------------------------------------------------------------------------------
def test_broadcast_plan_collapses():
    assert K.broadcast_plan((2, 3, 4), (2, 3, 4), (2, 3, 4)) == ([24], [[1], [1]])
    assert K.broadcast_plan((2, 3, 4), (2, 3, 4), ()) == ([24], [[1], [0]])
    assert K.broadcast_plan((2, 8, 5, 5), (2, 8, 5, 5), (8, 1, 1)) == ([2, 8, 25], [[200, 25, 1], [0, 1, 0]])
    assert K.broadcast_plan((1, 8, 5, 5), (1, 8, 5, 5), (1, 8, 1, 1)) == ([8, 25], [[25, 1], [1, 0]])
    assert K.broadcast_plan((6, 7, 16), (6, 7, 16), (16,)) == ([42, 16], [[16, 1], [0, 1]])
    assert K.broadcast_plan((3, 4, 5), (3, 1, 5), (1, 4, 1)) == ([3, 4, 5], [[5, 0, 1], [0, 1, 0]])
    assert K.broadcast_plan((), (), ()) == ([1], [[0], [0]])


SHAPES = [
    ((2, 3, 4), (2, 3, 4)),            # same shape
    ((2, 3, 4), ()),                   # scalar
    ((), (5, 6)),                      # scalar first
    ((1,), (5, 6)),
    ((2, 8, 5, 5), (8, 1, 1)),         # per channel
    ((3, 8, 4, 4), (1, 8, 1, 1)),
    ((7, 6, 16), (16,)),               # last axis
    ((16,), (7, 6, 16)),
    ((3, 1, 5), (1, 4, 1)),            # both broadcast
    ((5, 1), (1, 6)),
    ((2, 1, 3, 1, 2, 1), (1, 2, 1, 3, 1, 2)),  # collapses to rank 6: leading dims looped in Python
    ((3, 0, 4), (1, 4)),               # empty
    ((), ()),
]


@pytest.mark.parametrize("op_type,fn", [
    ("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", np.divide),
])
def test_binary_float32(op_type, fn):
    for sa, sb in SHAPES:
        a, b = rand(sa), rand(sb)
        if op_type == "Div":
            b = np.where(np.abs(b) < 0.1, 0.5, b).astype(np.float32)
        y, ref, k = run_op(op_type, [a, b])
        assert k.impl == "numba"
        want = fn(a.astype(np.float64), b.astype(np.float64))
        assert y.shape == want.shape and y.dtype == np.float32
        close(y, want)
        close(ref, want)


def test_div_by_zero_and_nan():
    a = np.array([1, -1, 0, np.nan, 2], np.float32)
    b = np.array([0, 0, 0, 1, np.inf], np.float32)
    y, _, _ = run_op("Div", [a, b])
    np.testing.assert_array_equal(y, [np.inf, -np.inf, np.nan, np.nan, 0.0])


def test_binary_ranges_split_anywhere():
    """binary_range on arbitrary flat sub-ranges (as parallel chunks cut them) gives the full result."""
    for sa, sb, out in [((4, 6, 9, 13), (6, 1, 1), (4, 6, 9, 13)), ((37, 11), (11,), (37, 11)),
                        ((3, 5, 7), (3, 1, 7), (3, 5, 7)), ((9, 1, 8), (1, 5, 1), (9, 5, 8))]:
        a, b = rand(sa), rand(sb)
        k = K.BinaryKernel(K.B_SUB, sa, sb, out)
        want = (a - b).reshape(-1)
        total = want.size
        cuts = np.unique(np.concatenate([[0, total], rng.integers(0, total, 12)]))
        y = np.full(total, np.nan, np.float32)
        for s, e in zip(cuts[:-1], cuts[1:]):
            K.binary_range(K.B_SUB, a.reshape(-1), b.reshape(-1), y, k.dims, k.sa, k.sb, int(s), int(e))
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("op_type,fn", [("Sum", np.add), ("Max", np.maximum), ("Min", np.minimum)])
def test_variadic(op_type, fn):
    cases = [[(3, 4)], [(3, 4), (3, 4)], [(2, 1, 4), (3, 1), (4,)], [(5,), (), (2, 5), (1, 5)]]
    for shapes in cases:
        xs = [rand(s) for s in shapes]
        y, ref, _ = run_op(op_type, xs)
        want = xs[0].astype(np.float64)
        for x in xs[1:]:
            want = fn(want, x)
        want = np.broadcast_to(want, y.shape)
        close(y, want, rtol=1e-6)
        close(ref, want, rtol=1e-6)


def test_max_min_propagate_nan():
    a = np.array([np.nan, 1, 2], np.float32)
    b = np.array([0, np.nan, 3], np.float32)
    for op_type in ("Max", "Min"):
        y, _, _ = run_op(op_type, [a, b])
        assert np.isnan(y[0]) and np.isnan(y[1])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int8, np.float64, np.float16])
def test_binary_other_dtypes_use_reference(dtype):
    a = (rng.integers(1, 50, (3, 4))).astype(dtype)
    b = (rng.integers(1, 7, (4,))).astype(dtype)
    for op_type, fn in (("Add", np.add), ("Mul", np.multiply), ("Sub", np.subtract)):
        y, _, k = run_op(op_type, [a, b])
        assert k.impl == "numpy" and y.dtype == dtype
        np.testing.assert_array_equal(y, fn(a, b).astype(dtype))
    y, _, _ = run_op("Max", [a, b, a])
    np.testing.assert_array_equal(y, np.maximum(a, b))


def test_integer_div_truncates_toward_zero():
    a = np.array([-3, 3, -3, 3, 7, -7], np.int32)
    b = np.array([2, 2, -2, -2, 3, 3], np.int32)
    y, _, _ = run_op("Div", [a, b])
    np.testing.assert_array_equal(y, [-1, 1, 1, -1, 2, -2])
    y, _, _ = run_op("Div", [np.array([200, 7], np.uint8), np.array([3, 2], np.uint8)])
    np.testing.assert_array_equal(y, [66, 3])


def test_legacy_broadcast_attribute():
    a, b = rand((2, 3, 4, 5)), rand((3, 4))
    y, _, _ = run_op("Add", [a, b], {"broadcast": 1, "axis": 1}, opset=6)
    close(y, a + b.reshape(3, 4, 1))
    with pytest.raises(ShapeError):
        run_op("Add", [a, b], {}, opset=6)


def test_binary_shape_errors_name_both_shapes():
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(4,\)"):
        run_op("Add", [rand((2, 3)), rand((4,))])
    with pytest.raises(ShapeError, match="broadcast"):
        run_op("Sum", [rand((2, 3)), rand((3,)), rand((2, 2))])
    with pytest.raises(ShapeError, match="dtype"):
        run_op("Mul", [rand((2, 3)), rand((2, 3), np.float64)])


# --- unary ------------------------------------------------------------------------------------------------
def _grid():
    return np.concatenate([np.linspace(-100, 100, 4001), np.linspace(-2, 2, 4001), [0.0, -1e-4, 1e-4, 1e-8]]
                          ).astype(np.float32)


UNARY = [
    ("Neg", {}, lambda x: -x),
    ("Abs", {}, np.abs),
    ("Relu", {}, lambda x: np.maximum(x, 0)),
    ("LeakyRelu", {"alpha": 0.1}, lambda x: np.where(x < 0, 0.1 * x, x)),
    ("LeakyRelu", {}, lambda x: np.where(x < 0, 0.01 * x, x)),
    ("Elu", {"alpha": 0.7}, lambda x: np.where(x < 0, 0.7 * np.expm1(x), x)),
    ("Sigmoid", {}, lambda x: 1 / (1 + np.exp(-x))),
    ("Tanh", {}, np.tanh),
    ("HardSigmoid", {}, lambda x: np.clip(0.2 * x + 0.5, 0, 1)),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, lambda x: np.clip(0.3 * x + 0.4, 0, 1)),
    ("HardSwish", {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
]


@pytest.mark.parametrize("op_type,attrs,fn", UNARY, ids=[f"{u[0]}{u[1]}" for u in UNARY])
def test_unary_against_float64(op_type, attrs, fn):
    x = _grid()
    with np.errstate(all="ignore"):
        want = fn(x.astype(np.float64))
    y, ref, k = run_op(op_type, [x], attrs)
    assert k.impl == "numba"
    assert np.all(np.isfinite(y))
    close(y, want, rtol=1e-5, atol=1e-7)  # atol: float32 cancellation in alpha * x + beta near 0
    close(ref, want, rtol=1e-5, atol=1e-7)


def test_sigmoid_tanh_relative_accuracy():
    """Relative accuracy also where the result is tiny (sigmoid's left tail, tanh near 0)."""
    tiny = np.geomspace(1e-7, 1, 2000)
    x = np.concatenate([np.linspace(-80, 80, 20001), tiny, -tiny]).astype(np.float32)
    x64 = x.astype(np.float64)
    y, _, _ = run_op("Sigmoid", [x])
    close(y, 1 / (1 + np.exp(-x64)), rtol=1e-5, atol=0)
    y, _, _ = run_op("Tanh", [x])
    close(y, np.tanh(x64), rtol=1e-5, atol=0)
    y, _, _ = run_op("Elu", [x])
    close(y, np.where(x64 < 0, np.expm1(x64), x64), rtol=1e-5, atol=0)


def test_math_ops():
    x = rand((7, 33)).astype(np.float32)
    pos = np.abs(x) + np.float32(1e-3)
    big = np.linspace(-80, 80, 999).astype(np.float32)
    for op_type, arg, fn in [("Exp", big, np.exp), ("Exp", x, np.exp), ("Log", pos, np.log),
                             ("Sqrt", pos, np.sqrt), ("Reciprocal", pos, np.reciprocal)]:
        y, ref, k = run_op(op_type, [arg])
        assert k.impl == "numba"
        close(y, fn(arg.astype(np.float64)), atol=0)
        close(ref, fn(arg.astype(np.float64)), atol=0)


def test_special_values():
    x = np.array([np.inf, -np.inf, np.nan, 100, -100, 89, -89, 0], np.float32)
    with np.errstate(all="ignore"):
        y, _, _ = run_op("Sigmoid", [x])
        np.testing.assert_allclose(y, [1, 0, np.nan, 1, 0, 1, 0, 0.5], atol=1e-30)
        y, _, _ = run_op("Tanh", [x])
        np.testing.assert_allclose(y, [1, -1, np.nan, 1, -1, 1, -1, 0])
        y, _, _ = run_op("Exp", [x])
        np.testing.assert_allclose(y, np.exp(x.astype(np.float64)).astype(np.float32), rtol=1e-6, atol=1e-37)
        y, _, _ = run_op("Relu", [x])
        np.testing.assert_array_equal(y, [np.inf, 0, np.nan, 100, 0, 89, 0, 0])
        y, _, _ = run_op("Sqrt", [np.array([-1, 0, 4], np.float32)])
        np.testing.assert_array_equal(y, [np.nan, 0, 2])
        y, _, _ = run_op("Log", [np.array([-1, 0, 1], np.float32)])
        np.testing.assert_array_equal(y, [np.nan, -np.inf, 0])


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.float64, np.float16])
def test_unary_other_dtypes(dtype):
    x = rng.integers(-20, 20, (4, 5)).astype(dtype)
    for op_type, fn in [("Neg", np.negative), ("Abs", np.abs), ("Relu", lambda v: np.maximum(v, 0))]:
        y, _, k = run_op(op_type, [x])
        assert k.impl == "numpy" and y.dtype == dtype
        np.testing.assert_array_equal(y, fn(x))
    with pytest.raises(UnsupportedOpError):
        run_op("Exp", [rng.integers(0, 3, (3,)).astype(np.int32)])


# --- Clip ---------------------------------------------------------------------------------------------------
def test_clip_variants():
    x = rand((4, 9))
    lo, hi = np.array(-1.5, np.float32), np.array(2.0, np.float32)
    want = np.clip(x, -1.5, 2.0)
    y, _, _ = run_op("Clip", [x], {"min": -1.5, "max": 2.0}, opset=6)
    np.testing.assert_array_equal(y, want)
    y, _, _ = run_op("Clip", [x], {}, opset=6)  # float range defaults
    np.testing.assert_array_equal(y, x)
    for const in [(1, 2), ()]:  # constant bounds, bounds computed at run time
        y, ref, _ = run_op("Clip", [x, lo, hi], const=const, opset=13)
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(ref, want)
        y, _, _ = run_op("Clip", [x, None, hi], const=const, opset=13)
        np.testing.assert_array_equal(y, np.minimum(x, 2.0))
        y, _, _ = run_op("Clip", [x, lo], const=const, opset=13)
        np.testing.assert_array_equal(y, np.maximum(x, -1.5))
    y, _, _ = run_op("Clip", [x], opset=13)
    np.testing.assert_array_equal(y, x)
    y, _, _ = run_op("Clip", [x, hi, lo], opset=13)  # min > max: everything becomes max
    np.testing.assert_array_equal(y, np.full_like(x, -1.5))
    y, _, _ = run_op("Clip", [x, np.array([-1.0], np.float32)], opset=13)  # shape [1] accepted
    np.testing.assert_array_equal(y, np.maximum(x, -1.0))
    xi = rng.integers(-100, 100, (10,)).astype(np.int8)
    y, _, k = run_op("Clip", [xi, np.array(-5, np.int8)], opset=13)
    assert k.impl == "numpy"
    np.testing.assert_array_equal(y, np.maximum(xi, -5))
    with pytest.raises(ShapeError, match="scalar"):
        run_op("Clip", [x, np.zeros(2, np.float32)], opset=13)
    with pytest.raises(ShapeError, match="dtype"):
        run_op("Clip", [x, np.zeros((), np.float64)], opset=13)


# --- PRelu --------------------------------------------------------------------------------------------------
def test_prelu():
    x = rand((2, 5, 3, 4))
    for s_shape in [(5, 1, 1), (1, 5, 1, 1), (1,), (), (4,), (2, 5, 3, 4), (3, 1)]:
        s = rng.random(s_shape).astype(np.float32)
        y, ref, k = run_op("PRelu", [x, s])
        assert k.impl == "numba"
        want = np.where(x < 0, x * s, x)
        close(y, want)
        close(ref, want)
    for bad in [(5,), (2, 5, 3, 5), (1, 2, 5, 3, 4), (3, 2)]:
        with pytest.raises(ShapeError, match="slope"):
            run_op("PRelu", [x, rand(bad)])


# --- threads ------------------------------------------------------------------------------------------------
def test_parallel_matches_serial():
    """Sizes above PARALLEL_MIN_WORK run the prange kernels; 1 and 2 threads give identical results."""
    n = PARALLEL_MIN_WORK + 12345
    x = rand((n,))
    a, b = rand((3, 7, n // 100)), rand((7, 1))
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            ys = [run_op("Sigmoid", [x])[0], run_op("Tanh", [x])[0], run_op("Mul", [a, b])[0],
                  run_op("Add", [x, np.float32(1.5) * np.ones((), np.float32)])[0]]
            results.append(ys)
    finally:
        numba.set_num_threads(before)
    for y1, y2 in zip(*results):
        np.testing.assert_array_equal(y1, y2)
    close(results[0][2], a.astype(np.float64) * b)
    close(results[0][0], 1 / (1 + np.exp(-x.astype(np.float64))))
