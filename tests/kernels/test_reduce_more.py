"""ReduceL1, ReduceL2, ReduceLogSum, ReduceLogSumExp, ReduceProd (and the empty-set identities of every Reduce
op) against float64 numpy formulas, on every kernel layout (rows, strided, transposed, split rows), both axes
conventions (attribute before opset 18, input after), noop_with_empty_axes, special values, other dtypes and
hostile inputs; LpPool against a direct window loop; small models against onnxruntime."""
from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl import testing
from edgedl.errors import EdgeDLError, ShapeError, UnsupportedOpError
from edgedl.ir import Node, TensorType
from edgedl.kernels.cpu import reduce as RK
from edgedl.kernels.cpu.config import PARALLEL_MIN_WORK
from edgedl.registry import lookup

NEW = ["ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd"]


def run_op(op_type, inputs, attrs=None, opset=18, const=None):
    const = range(1, len(inputs)) if const is None else const
    (y,), (ref,), kernel = testing.run_op(op_type, inputs, attrs, opset=opset, const=const)
    return y, ref, kernel


def formula(op_type, x, axes, keepdims):
    """The reduction in float64, written out independently of the op's reference."""
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
    if op_type == "ReduceL1":
        y = np.abs(x).sum(axis=axes, keepdims=True)
    elif op_type == "ReduceL2":
        y = np.sqrt((x ** 2).sum(axis=axes, keepdims=True))
    elif op_type == "ReduceLogSum":
        with np.errstate(all="ignore"):
            y = np.log(x.sum(axis=axes, keepdims=True))
    elif op_type == "ReduceLogSumExp":
        m = x.max(axis=axes, keepdims=True)
        y = m + np.log(np.exp(x - m).sum(axis=axes, keepdims=True))
    elif op_type == "ReduceProd":
        y = x.prod(axis=axes, keepdims=True)
    elif op_type == "ReduceSumSquare":
        y = (x ** 2).sum(axis=axes, keepdims=True)
    else:
        raise AssertionError(op_type)
    return y if keepdims else y.reshape([d for k, d in enumerate(y.shape) if k not in axes])


def data(op_type, shape, rng):
    if op_type == "ReduceLogSum":  # positive sums
        return (rng.random(shape) + 0.1).astype(np.float32)
    if op_type == "ReduceProd":  # products near 1
        return (1 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return (rng.standard_normal(shape) * 3).astype(np.float32)


AXES = [None, (0,), (1,), (3,), (-1,), (2, 3), (1, 2), (0, 1), (0, 2), (1, 3), (0, 2, 3), (0, 1, 2, 3)]


@pytest.mark.parametrize("op_type", NEW)
def test_every_layout_and_keepdims(op_type):
    rng = np.random.default_rng(NEW.index(op_type))
    for shape in [(2, 3, 4, 5), (3, 1, 7, 300), (1, 5, 1, 2)]:
        x = data(op_type, shape, rng)
        for axes in AXES:
            for keepdims in (0, 1):
                inputs = [x] if axes is None else [x, np.array(axes, np.int64)]
                y, ref, k = run_op(op_type, inputs, {"keepdims": keepdims})
                assert k.impl == "numba"
                want = formula(op_type, x, axes, bool(keepdims))
                assert y.shape == want.shape and y.dtype == np.float32
                np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5, err_msg=f"{shape} {axes}")
                np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op_type", NEW + ["ReduceSumSquare"])
def test_axes_attribute_before_opset_18(op_type):
    rng = np.random.default_rng(1)
    x = data(op_type, (3, 4, 5), rng)
    for opset in (1, 11, 13):
        y, _, k = run_op(op_type, [x], {"axes": [0, -1], "keepdims": 0}, opset=opset)
        assert k.impl == "numba"
        np.testing.assert_allclose(y, formula(op_type, x, (0, 2), False), rtol=1e-5, atol=1e-5)
    y, _, _ = run_op(op_type, [x], {}, opset=13)  # no axes: every axis
    np.testing.assert_allclose(y, formula(op_type, x, None, True), rtol=1e-5, atol=1e-5)
    with pytest.raises(ShapeError, match="attribute"):
        run_op(op_type, [x, np.array([1], np.int64)], opset=13)


@pytest.mark.parametrize("op_type", NEW + ["ReduceSumSquare"])
def test_empty_axes_and_noop(op_type):
    rng = np.random.default_rng(2)
    x = data(op_type, (3, 4), rng)
    empty = np.zeros((0,), np.int64)
    y, _, _ = run_op(op_type, [x, empty], {"keepdims": 0})
    assert y.shape == ()
    np.testing.assert_allclose(y, formula(op_type, x, None, False), rtol=1e-5, atol=1e-5)
    y, _, _ = run_op(op_type, [x, empty], {"noop_with_empty_axes": 1})
    np.testing.assert_array_equal(y, x)
    y, _, _ = run_op(op_type, [x], {"noop_with_empty_axes": 1, "keepdims": 0})
    np.testing.assert_array_equal(y, x)


IDENTITY = {"ReduceL1": 0.0, "ReduceL2": 0.0, "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf,
            "ReduceProd": 1.0, "ReduceSumSquare": 0.0, "ReduceSum": 0.0, "ReduceMin": np.inf, "ReduceMax": -np.inf}


@pytest.mark.parametrize("op_type", sorted(IDENTITY))
def test_empty_set_gives_the_identity(op_type):
    x = np.zeros((2, 0, 4), np.float32)
    y, _, _ = run_op(op_type, [x, np.array([1], np.int64)])
    np.testing.assert_array_equal(y, np.full((2, 1, 4), IDENTITY[op_type], np.float32))
    y, _, _ = run_op(op_type, [x, np.array([1], np.int64)], {"keepdims": 0})
    assert y.shape == (2, 4)
    y, _, _ = run_op(op_type, [x], {"keepdims": 0})  # everything: a scalar identity
    assert y.shape == () and y == np.float32(IDENTITY[op_type])


def test_log_sum_exp_special_values():
    x = np.array([[1000.0, 999.0, -1000.0],       # no overflow: 1000 + log(1 + e^-1)
                  [-np.inf, -np.inf, -np.inf],    # -inf, not NaN
                  [np.inf, 1.0, 2.0],             # +inf
                  [-np.inf, 0.0, 0.0],            # log 2
                  [np.nan, 1.0, 2.0]], np.float32)
    want = [1000 + np.log1p(np.exp(-1.0)), -np.inf, np.inf, np.log(2.0), np.nan]
    for layout in ("rows", "strided"):
        xi = x if layout == "rows" else np.ascontiguousarray(x.T)
        axes = np.array([1 if layout == "rows" else 0], np.int64)
        y, ref, k = run_op("ReduceLogSumExp", [xi, axes], {"keepdims": 0})
        assert k.impl == "numba"
        np.testing.assert_allclose(y, want, rtol=1e-6)
        np.testing.assert_allclose(ref, want, rtol=1e-6)


def test_prod_and_l2_special_values():
    x = np.array([[2.0, 0.0, 3.0], [1e20, 1e20, 1e-30], [-2.0, 3.0, -1.0]], np.float32)
    y, _, _ = run_op("ReduceProd", [x, np.array([1], np.int64)], {"keepdims": 0})
    np.testing.assert_allclose(y, [0.0, 1e10, 6.0], rtol=1e-6)  # float64 product: no overflow on the way
    y, _, _ = run_op("ReduceL2", [np.array([[3e20, 4e20]], np.float32), np.array([1], np.int64)])
    np.testing.assert_allclose(y, [[5e20]], rtol=1e-6)
    y, _, _ = run_op("ReduceLogSum", [np.array([[1.0, -1.0], [-3.0, 1.0]], np.float32), np.array([1], np.int64)])
    assert y[0, 0] == -np.inf and np.isnan(y[1, 0])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64, np.float16])
def test_other_dtypes(dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(-4, 5, (3, 4)).astype(dtype)
    axes = np.array([1], np.int64)
    y, _, k = run_op("ReduceL1", [x, axes], {"keepdims": 0})
    assert k.impl == "numpy" and y.dtype == dtype
    np.testing.assert_array_equal(y, np.abs(x).sum(axis=1))
    y, _, _ = run_op("ReduceProd", [x, axes], {"keepdims": 0})
    np.testing.assert_array_equal(y, x.prod(axis=1))
    y, _, _ = run_op("ReduceL2", [x, axes], {"keepdims": 0})
    want = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1))
    np.testing.assert_allclose(y.astype(np.float64), want.astype(dtype), rtol=1e-3)


def test_log_reductions_are_float_only_from_opset_28():
    xi = np.ones((2, 3), np.int32)
    for op_type in ("ReduceLogSum", "ReduceLogSumExp"):
        with pytest.raises(UnsupportedOpError, match="int32"):
            run_op(op_type, [xi], opset=28)
        y, _, _ = run_op(op_type, [xi, np.array([1], np.int64)], {"keepdims": 0}, opset=18)
        assert y.dtype == np.int32
        x = (np.random.default_rng(4).random((2, 3)) + 0.5).astype(np.float32)
        y, _, _ = run_op(op_type, [x, np.array([1], np.int64)], {"keepdims": 0}, opset=28)
        np.testing.assert_allclose(y, formula(op_type, x, (1,), False), rtol=1e-6)


@pytest.mark.parametrize("op_type", NEW)
def test_errors(op_type):
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ShapeError, match="out of range"):
        run_op(op_type, [x, np.array([2], np.int64)])
    with pytest.raises(ShapeError, match="repeat"):
        run_op(op_type, [x, np.array([1, -1], np.int64)])
    with pytest.raises(ShapeError, match="int64"):
        run_op(op_type, [x, np.array([1], np.int32)])
    with pytest.raises(UnsupportedOpError, match="must be a constant known"):
        run_op(op_type, [x, np.array([1], np.int64)], const=())
    with pytest.raises(UnsupportedOpError, match="bool"):
        run_op(op_type, [x > 0])


def test_long_reductions_and_threads():
    """Above PARALLEL_MIN_WORK the prange kernels run (rows, split rows, strided); 1 and 2 threads agree and
    million-element reductions keep 1e-5 accuracy (float64 accumulation)."""
    rng = np.random.default_rng(5)
    big = (rng.random((PARALLEL_MIN_WORK // 64 + 3, 64)) + 0.5).astype(np.float32)
    wide = (rng.random((3, 70, 1100)) + 0.5).astype(np.float32)
    near1 = (1 + 1e-4 * rng.standard_normal((1 << 19,))).astype(np.float32)
    cases = [("ReduceL1", [big], {}), ("ReduceL2", [big, np.array([1], np.int64)], {}),
             ("ReduceLogSum", [wide, np.array([1], np.int64)], {}),
             ("ReduceLogSumExp", [big], {}), ("ReduceLogSumExp", [wide, np.array([0, 2], np.int64)], {}),
             ("ReduceLogSumExp", [wide, np.array([1], np.int64)], {}),
             ("ReduceProd", [near1], {})]
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append([run_op(t, ins, attrs)[0] for t, ins, attrs in cases])
    finally:
        numba.set_num_threads(before)
    for (t, ins, _), y1, y2 in zip(cases, *results):
        np.testing.assert_allclose(y1, y2, rtol=1e-6)
        axes = None if len(ins) == 1 else tuple(ins[1])
        np.testing.assert_allclose(y1, formula(t, ins[0], axes, True), rtol=1e-5, err_msg=t)


# --- LpPool ------------------------------------------------------------------------------------------------
def lppool_loop(x, kernel, strides, dilations, pads, out, p):
    """Direct loop over windows: (sum of |x| ** p over the taps inside the input) ** (1 / p)."""
    nsp = x.ndim - 2
    y = np.zeros(x.shape[:2] + tuple(out))
    for o in itertools.product(*[range(v) for v in out]):
        acc = np.zeros(x.shape[:2])
        for t in itertools.product(*[range(k) for k in kernel]):
            idx = [o[i] * strides[i] - pads[i] + t[i] * dilations[i] for i in range(nsp)]
            if all(0 <= idx[i] < x.shape[2 + i] for i in range(nsp)):
                acc += np.abs(x[(slice(None), slice(None)) + tuple(idx)].astype(np.float64)) ** p
        y[(slice(None), slice(None)) + o] = acc ** (1.0 / p)
    return y


@pytest.mark.parametrize("case", [
    dict(shape=(1, 2, 9), kernel_shape=[3], p=2),
    dict(shape=(2, 3, 6, 7), kernel_shape=[2, 3], strides=[2, 1], pads=[1, 0, 0, 1], p=1),
    dict(shape=(1, 2, 7, 7), kernel_shape=[3, 3], dilations=[2, 1], p=3),
    dict(shape=(1, 2, 6, 5), kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1, p=2),
    dict(shape=(1, 2, 5, 6), kernel_shape=[2, 3], auto_pad="SAME_UPPER", p=2),
    dict(shape=(1, 2, 5, 6), kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER", p=2),
    dict(shape=(1, 2, 5, 6), kernel_shape=[2, 2], auto_pad="VALID", p=4),
    dict(shape=(1, 1, 4, 5, 6), kernel_shape=[2, 2, 3], strides=[1, 2, 2], p=2),
])
def test_lppool(case):
    case = dict(case)
    shape = case.pop("shape")
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    y, ref, k = run_op("LpPool", [x], case, opset=18)
    assert k.impl == "numba"
    op = lookup("LpPool")(Node("LpPool", "n", ["x"], ["y"], case), 18)
    op.infer([TensorType(x.shape, x.dtype)], [None])
    _, out, pads = op.geom
    nsp = len(shape) - 2
    want = lppool_loop(x, case["kernel_shape"], case.get("strides", [1] * nsp), case.get("dilations", [1] * nsp),
                       pads, out, case["p"])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-6)


def test_lppool_opsets_and_errors():
    x = np.random.default_rng(7).standard_normal((1, 2, 6, 6)).astype(np.float32)
    y1, _, _ = run_op("LpPool", [x], {"kernel_shape": [2, 2], "p": 2.0}, opset=1)  # opset 1: p is a float
    y2, _, _ = run_op("LpPool", [x], {"kernel_shape": [2, 2]}, opset=11)
    np.testing.assert_allclose(y1, y2)
    np.testing.assert_allclose(y2, lppool_loop(x, [2, 2], [1, 1], [1, 1], [0, 0, 0, 0], [5, 5], 2), rtol=1e-5)
    y64, _, k = run_op("LpPool", [x.astype(np.float64)], {"kernel_shape": [2, 2]}, opset=22)
    assert k.impl == "numpy" and y64.dtype == np.float64
    np.testing.assert_allclose(y64, y2, rtol=1e-5)
    with pytest.raises(EdgeDLError, match="opset 18"):
        run_op("LpPool", [x], {"kernel_shape": [2, 2], "dilations": [2, 2]}, opset=11)
    with pytest.raises(EdgeDLError, match="positive"):
        run_op("LpPool", [x], {"kernel_shape": [2, 2], "p": 0}, opset=18)
    with pytest.raises(EdgeDLError, match="integer"):
        run_op("LpPool", [x], {"kernel_shape": [2, 2], "p": 1.5}, opset=18)
    with pytest.raises(EdgeDLError, match="larger than the padded input"):
        run_op("LpPool", [x], {"kernel_shape": [7, 2]}, opset=18)
    with pytest.raises(EdgeDLError, match="kernel_shape"):
        run_op("LpPool", [x], {}, opset=18)
    with pytest.raises(UnsupportedOpError, match="int32"):
        run_op("LpPool", [x.astype(np.int32)], {"kernel_shape": [2, 2]}, opset=18)


# --- end to end against onnxruntime -----------------------------------------------------------------------
ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("opset", [13, 18])
def test_models_match_onnxruntime(opset):
    rng = np.random.default_rng(8)
    x = (rng.random((2, 3, 8, 8)) + 0.2).astype(np.float32)
    inits = []
    nodes = []
    outs = []
    for i, (op_type, axes) in enumerate([("ReduceL1", [1]), ("ReduceL2", [2, 3]), ("ReduceLogSum", [0, 2]),
                                         ("ReduceLogSumExp", [-1]), ("ReduceProd", [1]), ("ReduceSumSquare", [3]),
                                         ("ReduceMin", [0, 3])]):
        if op_type == "ReduceMin" and opset == 13 or opset < 18:
            nodes.append(helper.make_node(op_type, ["x"], [f"y{i}"], axes=axes, keepdims=i % 2))
        else:
            inits.append(numpy_helper.from_array(np.array(axes, np.int64), f"a{i}"))
            nodes.append(helper.make_node(op_type, ["x", f"a{i}"], [f"y{i}"], keepdims=i % 2))
        outs.append(f"y{i}")
    nodes.append(helper.make_node("LpPool", ["x"], ["lp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                  p=2))
    outs.append("lp")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip(outs, sess.run(outs, {"x": x})))
    got = edgedl.load(model.SerializeToString()).run({"x": x})
    for o in outs:
        np.testing.assert_allclose(got[o], want[o], rtol=1e-5, atol=1e-6, err_msg=o)


def test_kinds_are_distinct():
    kinds = [RK.R_SUM, RK.R_MAX, RK.R_MIN, RK.R_SUMSQ, RK.R_L1, RK.R_L2, RK.R_LOGSUM, RK.R_LSE, RK.R_PROD]
    assert len(set(kinds)) == len(kinds)
