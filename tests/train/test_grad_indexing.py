"""Backward of Gather, GatherElements and Where against float64 central finite differences
(:func:`gradcheck.check_backward`, which also checks 1 thread against N threads), the scatter-add kernels
against ``np.add.at`` at larger sizes (duplicate indices included), hostile indices, and a tape through an
embedding lookup.
"""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_backward, make_op

from edgedl.errors import EdgeDLError


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- Gather --------------------------------------------------------------------------------------------------
GATHER_CASES = [
    ((5, 3), np.array([0, 2, 2, -1]), 0),           # duplicates and a negative index
    ((4, 6), np.array([[1, 5], [5, -6]]), 1),       # 2-D indices
    ((2, 3, 4), np.array([3, 0, 3, 3]), -1),
    ((2, 3, 4), np.array(1), 1),                    # a scalar index drops the axis
    ((6,), np.array([[0, 1, 0], [5, 5, 5]]), 0),
    ((3, 4), np.zeros((0,), np.int64), 0),          # no index: a zero gradient
]


@pytest.mark.parametrize("shape,idx,axis", GATHER_CASES)
@pytest.mark.parametrize("idt", [np.int64, np.int32])
def test_gather(shape, idx, axis, idt):
    check_backward("Gather", [normal(shape, len(shape)), idx.astype(idt)], {"axis": axis}, consts=(1,))


def test_gather_embedding_matches_add_at():
    rng = np.random.default_rng(1)
    vocab, dim = 1000, 64
    ids = rng.integers(-vocab, vocab, (16, 50))
    op, _, outs_t = make_op("Gather", [np.zeros((vocab, dim), np.float32), ids], {"axis": 0})
    g = normal(outs_t[0].shape, 2)
    dw, dids = op.backward([g], [None, ids], [None], [True, False])
    want = np.zeros((vocab, dim), np.float64)
    np.add.at(want, ids % vocab, g.astype(np.float64))
    np.testing.assert_allclose(dw, want, rtol=1e-5, atol=1e-5)
    assert dids is None and dw.dtype == np.float32
    # a middle axis, with an outer dim
    x = np.zeros((3, 40, 5), np.float32)
    idx = rng.integers(0, 40, 70)
    op, _, outs_t = make_op("Gather", [x, idx], {"axis": 1})
    g = normal(outs_t[0].shape, 3)
    (dx, _) = op.backward([g], [None, idx], [None], [True, False])
    want = np.zeros(x.shape, np.float64)
    np.add.at(want, (slice(None), idx), g.astype(np.float64))
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-5)
    # no output gradient: zeros; data gradient not wanted: None
    assert not op.backward([None], [None, idx], [None], [True, False])[0].any()
    assert op.backward([g], [None, idx], [None], [False, False])[0] is None


def test_gather_backward_rejects_bad_indices():
    op, _, outs_t = make_op("Gather", [np.zeros((4, 2), np.float32), np.array([0, 1])], {"axis": 0})
    with pytest.raises(EdgeDLError, match="out of range"):
        op.backward([np.ones(outs_t[0].shape, np.float32)], [None, np.array([0, 4])], [None], [True, False])


# --- GatherElements ------------------------------------------------------------------------------------------
GE_CASES = [
    ((4, 3), (6, 3), 0),
    ((4, 3), (4, 5), 1),
    ((2, 3, 4), (2, 2, 4), -2),
    ((3, 4, 2), (2, 3, 1), 1),       # indices smaller than the data off the axis
    ((5,), (9,), 0),
]


@pytest.mark.parametrize("shape,ishape,axis", GE_CASES)
def test_gather_elements(shape, ishape, axis):
    rng = np.random.default_rng(len(shape) + len(ishape))
    dim = shape[axis]
    idx = rng.integers(-dim, dim, ishape)   # duplicates: the gradient accumulates
    check_backward("GatherElements", [normal(shape, 4), idx], {"axis": axis}, consts=(1,), opset=13)


def test_gather_elements_large_matches_add_at(monkeypatch):
    from edgedl.kernels.cpu import config

    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 1)  # the parallel scatter-add (over the outer dims)
    rng = np.random.default_rng(5)
    x = np.zeros((8, 30, 6), np.float32)
    idx = rng.integers(-30, 30, (8, 50, 6))
    op, _, _ = make_op("GatherElements", [x, idx], {"axis": 1})
    g = normal(idx.shape, 6)
    dx, _ = op.backward([g], [None, idx], [None], [True, False])
    want = np.zeros(x.shape, np.float64)
    i0, _, i2 = np.indices(idx.shape)
    np.add.at(want, (i0, idx % 30, i2), g.astype(np.float64))
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(EdgeDLError, match="out of range"):
        op.backward([g], [None, np.full(idx.shape, 30)], [None], [True, False])


# --- Where ---------------------------------------------------------------------------------------------------
WHERE_CASES = [
    ((3, 4), (3, 4), (3, 4)),
    ((3, 1), (1, 4), (3, 4)),      # X and Y broadcast: their gradients sum over the broadcast axes
    ((2, 3, 4), (4,), ()),
    ((4,), (2, 3, 4), (3, 1)),     # the condition smaller than the output
]


@pytest.mark.parametrize("cshape,xshape,yshape", WHERE_CASES)
def test_where(cshape, xshape, yshape):
    rng = np.random.default_rng(len(cshape) + len(xshape))
    cond = rng.random(cshape) < 0.5
    check_backward("Where", [cond, normal(xshape, 1), normal(yshape, 2)])


def test_where_only_one_side():
    cond = np.array([True, False, True])
    op, _, _ = make_op("Where", [cond, normal((3,)), normal((1,))])
    g = np.array([1.0, 2.0, 4.0], np.float32)
    dc, dx, dy = op.backward([g], [cond, None, None], [None], [False, True, False])
    np.testing.assert_array_equal(dx, [1, 0, 4])
    assert dc is None and dy is None
    _, dx, dy = op.backward([g], [cond, None, None], [None], [False, True, True])
    np.testing.assert_array_equal(dy, [2])


# --- through the tape ----------------------------------------------------------------------------------------
def test_tape_embedding_where_gather_elements():
    """ids -> Gather(emb) -> GatherElements(picks along the feature axis) -> Where(mask, ., w2): the tape's
    gradients of emb and w2 against finite differences of its own forward."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    import edgedl
    from edgedl.ir import TensorType
    from edgedl.train.tape import Tape

    rng = np.random.default_rng(8)
    emb = normal((7, 5), 9)
    w2 = normal((1, 3), 10)
    pick = rng.integers(0, 5, (4, 3))
    mask = rng.random((4, 3)) < 0.5
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0),
             helper.make_node("GatherElements", ["e", "pick"], ["p"], axis=1),
             helper.make_node("Where", ["mask", "p", "w2"], ["y"])]
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(pick, "pick"), numpy_helper.from_array(mask, "mask")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])], inits)
    g = edgedl.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()).graph
    tape = Tape(g, ["emb", "w2"], {"ids": TensorType((4,), np.dtype(np.int64))})
    ids = np.array([3, 0, 3, -1])
    r = normal((4, 3), 11)
    _, saved = tape.forward({"ids": ids}, {"emb": emb, "w2": w2})
    grads = tape.backward(saved, r)
    params = {"emb": emb, "w2": w2}
    for name in ("emb", "w2"):
        num = np.zeros(params[name].shape)
        for k in range(num.size):
            vals = []
            for h in (0.5, -0.5):
                p = dict(params)
                p[name] = params[name].copy()
                p[name].reshape(-1)[k] += h
                y = tape.forward({"ids": ids}, p, keep=False)[0]["y"]
                vals.append(float(np.sum(r.astype(np.float64) * y)))
            num.reshape(-1)[k] = vals[0] - vals[1]  # linear in the parameters: exact
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-5, err_msg=name)
