"""Backward of Expand, Tile, DepthToSpace, SpaceToDepth and CumSum against float64 central finite differences
(:func:`gradcheck.check_backward`, which also checks 1 thread against N threads), the exact adjoint identity
<dy, f(x)> = <f^T(dy), x> for the permutations, and a training tape through all of them."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_backward, make_op
from onnx import TensorProto, helper

import edgedl
from edgedl.ir import TensorType
from edgedl.train import Tape

I64 = np.int64


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("xs,target", [((3, 1), (3, 4)), ((1, 4), (2, 3, 4)), ((2, 1, 3), (1, 4, 1)), ((), (2, 3)),
                                       ((2, 3), (2, 3)), ((1, 1), (3, 1, 2))])
def test_expand(xs, target):
    got = check_backward("Expand", [normal(xs, len(xs)), np.array(target, I64)], consts=(1,))
    assert got[1] is None  # the shape input takes no gradient


@pytest.mark.parametrize("xs,reps", [((2, 3), (2, 2)), ((3,), (4,)), ((2, 1, 3), (1, 3, 2)), ((2, 2), (1, 1)),
                                     ((2, 3), (0, 2))])
def test_tile(xs, reps):
    got = check_backward("Tile", [normal(xs, 1), np.array(reps, I64)], consts=(1,))
    assert got[1] is None


def test_tile_gradient_is_the_sum_of_tiles():
    x = normal((2, 3))
    op, _, outs_t = make_op("Tile", [x, np.array([3, 2], I64)], consts=(1,))
    dy = normal(outs_t[0].shape, 2)
    (dx, _) = op.backward([dy, None], [None, None], [None], [True, False])
    want = sum(dy[i * 2:(i + 1) * 2, j * 3:(j + 1) * 3].astype(np.float64) for i in range(3) for j in range(2))
    np.testing.assert_allclose(dx, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op_type,shape", [("DepthToSpace", (2, 8, 2, 3)), ("SpaceToDepth", (1, 2, 4, 6))])
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_space(op_type, shape, mode):
    x = normal(shape, 3)
    attrs = {"blocksize": 2, "mode": mode}
    check_backward(op_type, [x], attrs, opset=28)
    # a permutation: the backward is its exact transpose
    op, _, outs_t = make_op(op_type, [x], attrs, opset=28)
    dy = normal(outs_t[0].shape, 4)
    (dx,) = op.backward([dy], [None], [None], [True])
    y = op.ref(x)[0]
    assert np.dot(dy.ravel().astype(np.float64), y.ravel()) == pytest.approx(
        np.dot(dx.ravel().astype(np.float64), x.ravel()), rel=1e-12)
    assert sorted(dx.ravel()) == sorted(dy.ravel())


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("shape,axis", [((6,), 0), ((3, 4), 1), ((3, 4), -2), ((2, 3, 4), 1)])
@pytest.mark.parametrize("const_axis", [True, False])
def test_cumsum(shape, axis, exclusive, reverse, const_axis):
    got = check_backward("CumSum", [normal(shape, 5), np.array(axis, I64)],
                         {"exclusive": exclusive, "reverse": reverse}, consts=(1,) if const_axis else ())
    assert got[1] is None


def test_none_gradient_is_zero():
    for op_type, inputs, attrs in [("Expand", [normal((3, 1)), np.array([3, 4], I64)], {}),
                                   ("Tile", [normal((2, 3)), np.array([2, 1], I64)], {}),
                                   ("DepthToSpace", [normal((1, 4, 2, 2))], {"blocksize": 2}),
                                   ("CumSum", [normal((2, 3)), np.array(1, I64)], {})]:
        op, ins_t, _ = make_op(op_type, inputs, attrs, consts=(1,))
        res = op.backward([None], inputs, [None], [True] + [False] * (len(inputs) - 1))
        np.testing.assert_array_equal(res[0], np.zeros(ins_t[0].shape, np.float32))


def test_tape_through_the_family():
    """A parameter through Expand -> Tile -> DepthToSpace -> CumSum -> SpaceToDepth -> Mul: the tape's gradient
    against finite differences of its own forward."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [helper.make_node("Expand", ["w", "shape"], ["e"]),
             helper.make_node("Tile", ["e", "reps"], ["t"]),
             helper.make_node("DepthToSpace", ["t"], ["d"], blocksize=2, mode="CRD"),
             helper.make_node("CumSum", ["d", "axis"], ["c"], exclusive=1),
             helper.make_node("SpaceToDepth", ["c"], ["s"], blocksize=2),
             helper.make_node("Mul", ["s", "x"], ["y"])]
    w = normal((1, 4, 1, 2), 6)
    inits = [helper.make_tensor("w", f32, w.shape, w.ravel().tolist()),
             helper.make_tensor("shape", i64, [4], [2, 1, 3, 1]),
             helper.make_tensor("reps", i64, [4], [1, 2, 1, 2]),
             helper.make_tensor("axis", i64, [], [3])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [2, 8, 3, 4])],
                              [helper.make_tensor_value_info("y", f32, [2, 8, 3, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    g = edgedl.load(model.SerializeToString()).graph
    tape = Tape(g, ["w"], {"x": TensorType((2, 8, 3, 4), np.dtype(np.float32))})
    x = normal((2, 8, 3, 4), 7)
    r = normal((2, 8, 3, 4), 8)
    out, saved = tape.forward({"x": x}, {"w": w})
    grad = tape.backward(saved, r)["w"]

    def loss(wv):
        y = tape.forward({"x": x}, {"w": wv.astype(np.float32)}, keep=False)[0]["y"]
        return float(np.sum(r.astype(np.float64) * y))

    num = np.zeros(w.shape)
    h = 1e-2
    for k in range(w.size):
        wp = w.astype(np.float64).copy()
        wp.reshape(-1)[k] += h
        wm = w.astype(np.float64).copy()
        wm.reshape(-1)[k] -= h
        num.reshape(-1)[k] = (loss(wp) - loss(wm)) / (2 * h)  # linear in w: central differences are exact
    np.testing.assert_allclose(grad, num, rtol=1e-3, atol=1e-3)
