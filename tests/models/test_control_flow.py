"""Control flow, sequences and data-dependent shapes, end to end against onnxruntime, and the ways a hostile model
could use them (endless loops, huge data-dependent allocations, deep nesting)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import edgedl
from edgedl.errors import EdgeDLError, ModelFormatError
from edgedl.ops import control_flow


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = h.make_graph(nodes, "m", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)]).SerializeToString()


def _both(model_bytes, feeds):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ref = dict(zip(names, sess.run(None, feeds)))
    return ref, edgedl.load(model_bytes)


def _check(ref, got, rtol=1e-6):
    for name, r in ref.items():
        e = got[name]
        assert e.shape == r.shape and e.dtype == r.dtype, (name, e.shape, r.shape)
        np.testing.assert_allclose(e, r, rtol=rtol, atol=1e-6)


def _scalar(name, value, dtype=T.FLOAT):
    return h.make_tensor(name, dtype, [], [value])


# --- a Loop whose body holds an If that reads tensors from two scopes out ------------------------------------
def _nested_loop_if():
    then_g = h.make_graph([h.make_node("Add", ["acc_in", "w"], ["r"])], "then", [],
                          [h.make_tensor_value_info("r", T.FLOAT, [3])])
    else_g = h.make_graph([h.make_node("Mul", ["acc_in", "scale"], ["r2"])], "else", [],
                          [h.make_tensor_value_info("r2", T.FLOAT, [3])])
    body = h.make_graph(
        [h.make_node("Less", ["i", "half"], ["c"]),
         h.make_node("If", ["c"], ["acc_out"], then_branch=then_g, else_branch=else_g),
         h.make_node("Identity", ["cond_in"], ["cond_out"]),
         h.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0)],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("acc_in", T.FLOAT, [3])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("acc_out", T.FLOAT, [3]),
         h.make_tensor_value_info("total", T.FLOAT, [])],
        [h.make_tensor("half", T.INT64, [], [2])])
    return _model(
        [h.make_node("Loop", ["trips", "yes", "acc0"], ["acc", "totals"], body=body)],
        [h.make_tensor_value_info("trips", T.INT64, []), h.make_tensor_value_info("acc0", T.FLOAT, [3]),
         h.make_tensor_value_info("scale", T.FLOAT, [3])],
        [h.make_tensor_value_info("acc", T.FLOAT, [3]), h.make_tensor_value_info("totals", T.FLOAT, None)],
        [h.make_tensor("w", T.FLOAT, [3], [1.0, 2.0, 3.0]), h.make_tensor("yes", T.BOOL, [], [True])])


@pytest.mark.parametrize("trips", [0, 1, 5])
def test_nested_loop_and_if_match_onnxruntime(trips):
    mb = _nested_loop_if()
    feeds = {"trips": np.array(trips, np.int64), "acc0": np.array([0.5, -1.0, 2.0], np.float32),
             "scale": np.array([1.5, 0.5, -2.0], np.float32)}
    if trips == 0:  # onnxruntime gives an empty (0, ) scan output; edgedl takes the body's declared shape
        m = edgedl.load(mb)
        got = m.run(feeds)
        np.testing.assert_array_equal(got["acc"], feeds["acc0"])
        assert got["totals"].shape[0] == 0
        return
    ref, m = _both(mb, feeds)
    _check(ref, m.run(feeds))
    _check(ref, m.run(feeds))  # the second run reuses every plan


def test_loop_body_is_planned_once():
    mb = _nested_loop_if()
    m = edgedl.load(mb)
    feeds = {"trips": np.array(6, np.int64), "acc0": np.ones(3, np.float32), "scale": np.ones(3, np.float32)}
    m.run(feeds)
    m.run(feeds)
    plan = m.plan({"trips": (), "acc0": (3,), "scale": (3,)}, feeds)
    loop_op = plan.tail.op if plan.tail is not None else next(s.op for s in plan.steps if s.node.op_type == "Loop")
    assert len(loop_op.runner("body").plans) == 1


# --- If: same types (one eager step), a small condition input (specialized), a data condition (cut) ----------
def _if_model(cond_nodes, inputs, then_out_shape, else_out_shape):
    then_g = h.make_graph([h.make_node("Add", ["x", "x"], ["t"])], "then", [],
                          [h.make_tensor_value_info("t", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("ReduceSum", ["x"], ["e"], keepdims=0 if else_out_shape == () else 1)],
                          "else", [], [h.make_tensor_value_info("e", T.FLOAT, None)])
    if then_out_shape == else_out_shape:
        else_g = h.make_graph([h.make_node("Mul", ["x", "x"], ["e"])], "else", [],
                              [h.make_tensor_value_info("e", T.FLOAT, None)])
    return _model(cond_nodes + [h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                  inputs, [h.make_tensor_value_info("y", T.FLOAT, None)])


def test_if_with_branches_of_one_type_is_a_static_step():
    mb = _if_model([h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                    h.make_node("Greater", ["s", "zero"], ["c"])],
                   [h.make_tensor_value_info("x", T.FLOAT, [100])], (100,), (100,))
    mb = _with_init(mb, [_scalar("zero", 0.0)])
    m = edgedl.load(mb)
    plan = m.plan()
    assert plan.tail is None and plan.kernel_impls().get("eager") == 1
    for sign in (1, -1):
        x = (sign * np.abs(np.random.default_rng(1).standard_normal(100))).astype(np.float32)
        ref, _ = _both(mb, {"x": x})
        _check(ref, m.run({"x": x}))


def _with_init(mb, inits):
    p = onnx.load_from_string(mb)
    p.graph.initializer.extend(inits)
    return p.SerializeToString()


def test_if_on_a_small_input_specializes_on_its_value():
    # the silero-vad pattern: If(sr == 16000) with branches that only fit their own input size
    mb = _if_model([h.make_node("Equal", ["sr", "k16"], ["c"])],
                   [h.make_tensor_value_info("x", T.FLOAT, [4, 5]), h.make_tensor_value_info("sr", T.INT64, [])],
                   (4, 5), ())
    mb = _with_init(mb, [h.make_tensor("k16", T.INT64, [], [16000])])
    m = edgedl.load(mb)
    x = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    for sr in (16000, 8000):
        feeds = {"x": x, "sr": np.array(sr, np.int64)}
        ref, _ = _both(mb, feeds)
        _check(ref, m.run(feeds), rtol=1e-5)
    assert m._value_inputs == {"sr"}


def test_if_on_data_cuts_the_plan():
    mb = _if_model([h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                    h.make_node("Greater", ["s", "zero"], ["c"])],
                   [h.make_tensor_value_info("x", T.FLOAT, [200])], (200,), ())
    mb = _with_init(mb, [_scalar("zero", 0.0)])
    m = edgedl.load(mb)
    assert m.plan().tail is not None
    for sign in (1, -1, 1):
        x = (sign * np.abs(np.random.default_rng(3).standard_normal(200))).astype(np.float32)
        ref, _ = _both(mb, {"x": x})
        _check(ref, m.run({"x": x}), rtol=1e-5)
    assert len(m.plan().tail.runner.plans) <= 2  # one plan per value of the condition, reused


# --- data-dependent shapes ----------------------------------------------------------------------------------
def _nonzero_model():
    return _model(
        [h.make_node("Greater", ["x", "zero"], ["m"]), h.make_node("NonZero", ["m"], ["nz"]),
         h.make_node("Squeeze", ["nz", "ax0"], ["idx"]), h.make_node("Gather", ["x", "idx"], ["g"]),
         h.make_node("Mul", ["g", "g"], ["y"]), h.make_node("Shape", ["y"], ["s"])],
        [h.make_tensor_value_info("x", T.FLOAT, ["N"])],
        [h.make_tensor_value_info("y", T.FLOAT, None), h.make_tensor_value_info("s", T.INT64, None)],
        [_scalar("zero", 0.0), h.make_tensor("ax0", T.INT64, [1], [0])])


def test_nonzero_then_static_ops_match_onnxruntime_and_reuse_plans():
    mb = _nonzero_model()
    m = edgedl.load(mb)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal(n).astype(np.float32) for n in (10, 1000, 10, 1)]
    xs[0][:] = np.abs(xs[0])
    xs[2][:] = np.abs(xs[2])  # the same count of non-zeros as xs[0]: the same tail plan
    for x in xs:
        ref, _ = _both(mb, {"x": x})
        _check(ref, m.run({"x": x}))
    tail = m.plan({"x": (10,)}).tail
    assert tail is not None and tail.eager
    assert len(tail.runner.plans) == 1


def test_static_model_keeps_its_single_arena_plan():
    mb = _model([h.make_node("Relu", ["x"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                [h.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    plan = edgedl.load(mb).plan()
    assert plan.tail is None and "eager" not in plan.kernel_impls()


def test_nonzero_feeding_a_huge_allocation_is_refused():
    # count = number of non-zeros; ConstantOfShape([count, 2**40]) would be terabytes
    mb = _model(
        [h.make_node("NonZero", ["x"], ["nz"]), h.make_node("Shape", ["nz"], ["s"]),
         h.make_node("Slice", ["s", "one", "two"], ["count"]),
         h.make_node("Concat", ["count", "big"], ["shape"], axis=0),
         h.make_node("ConstantOfShape", ["shape"], ["y"])],
        [h.make_tensor_value_info("x", T.FLOAT, [100])], [h.make_tensor_value_info("y", T.FLOAT, None)],
        [h.make_tensor("one", T.INT64, [1], [1]), h.make_tensor("two", T.INT64, [1], [2]),
         h.make_tensor("big", T.INT64, [1], [1 << 40])])
    m = edgedl.load(mb)
    with pytest.raises(EdgeDLError, match="elements"):
        m.run({"x": np.ones(100, np.float32)})


# --- hostile control flow -----------------------------------------------------------------------------------
def _endless_loop():
    body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Add", ["v_in", "one"], ["v_out"])],
                        "body", [h.make_tensor_value_info("i", T.INT64, []),
                                 h.make_tensor_value_info("c_in", T.BOOL, []),
                                 h.make_tensor_value_info("v_in", T.FLOAT, [])],
                        [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, [])],
                        [_scalar("one", 1.0)])
    return _model([h.make_node("Loop", ["", "yes", "v0"], ["v"], body=body)],
                  [h.make_tensor_value_info("v0", T.FLOAT, [])], [h.make_tensor_value_info("v", T.FLOAT, [])],
                  [h.make_tensor("yes", T.BOOL, [], [True])])


def test_a_loop_that_never_stops_is_bounded(monkeypatch):
    monkeypatch.setattr(control_flow, "MAX_LOOP_ITERATIONS", 500)
    m = edgedl.load(_endless_loop())
    with pytest.raises(EdgeDLError, match="iterations"):
        m.run({"v0": np.array(0, np.float32)})


def test_loop_scan_outputs_are_bounded(monkeypatch):
    monkeypatch.setattr(control_flow, "MAX_TENSOR_ELEMENTS", 10_000)
    body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]),
                         h.make_node("ConstantOfShape", ["shape"], ["chunk"])],
                        "body",
                        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, [])],
                        [h.make_tensor_value_info("c_out", T.BOOL, []),
                         h.make_tensor_value_info("chunk", T.FLOAT, None)],
                        [h.make_tensor("shape", T.INT64, [1], [1000])])
    mb = _model([h.make_node("Loop", ["m", ""], ["chunks"], body=body)],
                [h.make_tensor_value_info("m", T.INT64, [])], [h.make_tensor_value_info("chunks", T.FLOAT, None)])
    m = edgedl.load(mb)
    assert m.run({"m": np.array(3, np.int64)})["chunks"].shape == (3, 1000)
    with pytest.raises(EdgeDLError, match="grew past"):
        m.run({"m": np.array(1 << 40, np.int64)})


def test_deeply_nested_subgraphs_are_refused():
    g = h.make_graph([h.make_node("Identity", ["x"], ["y0"])], "leaf", [],
                     [h.make_tensor_value_info("y0", T.FLOAT, None)])
    leaf = g
    for depth in range(20):  # one branch nests deeper, the other is a leaf (both nesting would double per level)
        g = h.make_graph([h.make_node("If", ["c"], [f"y{depth + 1}"], then_branch=g, else_branch=leaf)],
                         f"g{depth}", [], [h.make_tensor_value_info(f"y{depth + 1}", T.FLOAT, None)])
    mb = _model(list(g.node), [h.make_tensor_value_info("c", T.BOOL, []), h.make_tensor_value_info("x", T.FLOAT, [1])],
                [h.make_tensor_value_info("y20", T.FLOAT, None)])
    with pytest.raises(ModelFormatError, match="nested"):
        edgedl.load(mb)


# --- sequences ------------------------------------------------------------------------------------------------
def test_split_to_sequence_and_back_match_onnxruntime():
    mb = _model(
        [h.make_node("SplitToSequence", ["x", "sizes"], ["seq"], axis=1),
         h.make_node("SequenceAt", ["seq", "pos"], ["second"]),
         h.make_node("SequenceInsert", ["seq", "second"], ["seq2"]),
         h.make_node("SequenceLength", ["seq2"], ["n"]),
         h.make_node("ConcatFromSequence", ["seq2"], ["y"], axis=1)],
        [h.make_tensor_value_info("x", T.FLOAT, [2, 6])],
        [h.make_tensor_value_info("y", T.FLOAT, None), h.make_tensor_value_info("n", T.INT64, None)],
        [h.make_tensor("sizes", T.INT64, [3], [1, 2, 3]), h.make_tensor("pos", T.INT64, [], [-2])])
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    ref, m = _both(mb, {"x": x})
    _check(ref, m.run({"x": x}))
