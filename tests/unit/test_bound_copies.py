"""Split, Concat, Slice, Pad and Gather with constant indices are pre-bound copies (ops.layout.bound_copies,
Gather's bind), ReduceMean and the square Pow pre-bound calls: the bound steps give the reference's results run
after run, with new inputs each time."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import edgedl


def _model(nodes, inits, x_shape, outputs):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _i64(*v):
    return np.array(v, np.int64)


# each case: a Relu first (the op then reads an arena tensor), the op, and a Neg after it (an arena output)
CASES = {
    "split": ([helper.make_node("Split", ["r", "sp"], ["a", "b", "c"], axis=1)], {"sp": _i64(1, 3, 2)}, (2, 6, 5),
              ["a", "b", "c"]),
    "concat": ([helper.make_node("Concat", ["r", "r", "k"], ["a"], axis=2)],
               {"k": np.arange(12, dtype=np.float32).reshape(2, 3, 2)}, (2, 3, 4), ["a"]),
    "slice_steps": ([helper.make_node("Slice", ["r", "s0", "s1", "ax", "st"], ["a"])],
                    {"s0": _i64(1, -1), "s1": _i64(4, -9), "ax": _i64(1, 2), "st": _i64(2, -2)}, (2, 5, 7),
                    ["a"]),
    "pad_constant": ([helper.make_node("Pad", ["r", "p", "v"], ["a"], mode="constant")],
                     {"p": _i64(0, 1, 2, 0, 2, 1), "v": np.array(1.5, np.float32)}, (2, 3, 4), ["a"]),
    "pad_reflect": ([helper.make_node("Pad", ["r", "p"], ["a"], mode="reflect")], {"p": _i64(0, 2, 1, 0, 1, 2)},
                    (1, 4, 5), ["a"]),
    "pad_edge": ([helper.make_node("Pad", ["r", "p"], ["a"], mode="edge")], {"p": _i64(1, 0, 3, 0, 2, 1)},
                 (2, 3, 4), ["a"]),
    "gather_row": ([helper.make_node("Gather", ["r", "i"], ["a"], axis=0)], {"i": np.array(-1, np.int64)},
                   (3, 2, 4), ["a"]),
    "gather_run": ([helper.make_node("Gather", ["r", "i"], ["a"], axis=2)], {"i": _i64(1, 2, 3)}, (2, 3, 5),
                   ["a"]),
    "reduce_mean": ([helper.make_node("ReduceMean", ["r", "ax"], ["a"], keepdims=1)], {"ax": _i64(1, 2)},
                    (2, 3, 5), ["a"]),
    "pow_square": ([helper.make_node("Pow", ["r", "two"], ["a"])], {"two": np.array(2.0, np.float32)}, (2, 7),
                   ["a"]),
    "gather_any": ([helper.make_node("Gather", ["r", "i"], ["a"], axis=1)], {"i": _i64(2, -3, 2, 0)},
                   (2, 3, 5), ["a"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bound_copy_steps_match_the_reference_run_after_run(name):
    op_nodes, inits, x_shape, outs = CASES[name]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), *op_nodes]
    nodes += [helper.make_node("Neg", [o], [o + "_n"]) for o in outs]
    model = _model(nodes, inits, x_shape, [o + "_n" for o in outs])
    mod = edgedl.load(model)
    ref = ReferenceEvaluator(model)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal(x_shape).astype(np.float32)
        got = mod.run({"x": x})
        want = ref.run(None, {"x": x})
        for o, w in zip(outs, want):
            np.testing.assert_allclose(got[o + "_n"], w, rtol=1e-6, atol=1e-7)
    plan = mod.plan()
    op_type = op_nodes[0].op_type
    steps = [s for s in plan.steps if s.node.op_type == op_type]
    assert steps and all(s.bound is not None for s in steps), f"{op_type} step not pre-bound"
