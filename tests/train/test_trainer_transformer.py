"""Trainer fine-tunes a small transformer-style classifier: LayerNormalization, Attention (opset 23), Gelu,
Einsum and Expand, all new layers with backward passes, in one model."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import edgedl

S, D, H, C = 8, 16, 2, 3


def _block(seed: int = 0):
    """x (N, S, D) + pos -> LayerNorm -> q/k/v (Einsum) -> Attention (2 heads) -> Wo -> + x -> LayerNorm ->
    Gelu MLP -> + -> mean over S -> Gemm -> logits (N, C)."""
    rng = np.random.default_rng(seed)

    def w(*shape, s=0.3):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    inits = {"pos": w(1, S, D, s=0.1), "g1": np.ones(D, np.float32), "b1": np.zeros(D, np.float32),
             "wq": w(D, D), "wk": w(D, D), "wv": w(D, D), "wo": w(D, D),
             "g2": np.ones(D, np.float32), "b2": np.zeros(D, np.float32), "w1": w(D, 2 * D), "w2": w(2 * D, D),
             "wc": w(D, C), "bc": np.zeros(C, np.float32), "axes": np.array([1], np.int64),
             "pshape": np.array([1, S, D], np.int64)}
    n = helper.make_node
    nodes = [
        n("Expand", ["pos", "pshape"], ["posx"]), n("Add", ["x", "posx"], ["h0"]),
        n("LayerNormalization", ["h0", "g1", "b1"], ["n1"], axis=-1),
        n("Einsum", ["n1", "wq"], ["q"], equation="bsd,de->bse"),
        n("Einsum", ["n1", "wk"], ["k"], equation="bsd,de->bse"),
        n("Einsum", ["n1", "wv"], ["v"], equation="bsd,de->bse"),
        n("Attention", ["q", "k", "v"], ["att"], q_num_heads=H, kv_num_heads=H),
        n("MatMul", ["att", "wo"], ["ao"]), n("Add", ["h0", "ao"], ["h1"]),
        n("LayerNormalization", ["h1", "g2", "b2"], ["n2"], axis=-1),
        n("MatMul", ["n2", "w1"], ["m1"]), n("Gelu", ["m1"], ["m2"]), n("MatMul", ["m2", "w2"], ["m3"]),
        n("Add", ["h1", "m3"], ["h2"]), n("ReduceMean", ["h2", "axes"], ["pooled"], keepdims=0),
        n("Gemm", ["pooled", "wc", "bc"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "tiny_transformer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", S, D])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def _data(n: int, seed: int):
    """Class k: token pattern k planted at a random position (attention must find it)."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).standard_normal((C, D)).astype(np.float32)
    y = rng.integers(0, C, n)
    x = (rng.standard_normal((n, S, D)) * 0.5).astype(np.float32)
    for i, k in enumerate(y):
        x[i, rng.integers(0, S)] += 1.5 * patterns[k]
    return x, y.astype(np.int64)


def test_forward_matches_onnxruntime():
    proto = _block()
    x, _ = _data(4, 5)
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(edgedl.load(proto).run({"x": x})["logits"], ref, rtol=1e-4, atol=1e-5)


def test_trainer_fine_tunes_a_transformer_block():
    model = edgedl.load(_block())
    x, y = _data(240, 1)
    xv, yv = _data(90, 2)
    before = float(np.mean(np.argmax(model.run({"x": xv})["logits"], 1) == yv))
    trainer = edgedl.Trainer(model, trainable="all", lr=1e-2, seed=0)
    hist = trainer.fit(x, y, epochs=10, batch_size=24)
    after = float(np.mean(np.argmax(model.run({"x": xv})["logits"], 1) == yv))
    assert hist.loss[-1] < 0.6 * hist.loss[0], hist.loss
    assert after >= 0.8 and after > before, (before, after)


def test_reduce_sum_and_mean_backward_match_finite_differences():
    import pytest
    from gradcheck import check_backward

    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    for op_type in ("ReduceSum", "ReduceMean"):
        for axes, keepdims in (([1], 0), ([0, 2], 1), ([-1], 1)):
            check_backward(op_type, [x, np.array(axes, np.int64)], {"keepdims": keepdims}, wrt=[0], consts=(1,))
        check_backward(op_type, [x], {"keepdims": 0}, wrt=[0], opset=11 if op_type == "ReduceSum" else 17)
    with pytest.raises(edgedl.EdgeDLError, match="no backward"):
        check_backward("ReduceMax", [x, np.array([1], np.int64)], wrt=[0], consts=(1,))
