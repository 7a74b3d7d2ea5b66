"""Backward of RNN, GRU and LSTM (backprop through time) against float64 central finite differences of the
reference (:func:`gradcheck.check_backward`, which also checks 1 thread against N threads): gradients of X, W,
R, B, initial_h, initial_c and P, every direction and layout, sequence lengths (an empty row included), the
activations with their alpha / beta, clip, GRU linear_before_reset, LSTM input_forget, gradients arriving on
any subset of the outputs; then edgedl.Trainer fine-tuning small recurrent classifiers."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_backward, make_op

import edgedl

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
NOUT = {"RNN": 2, "GRU": 2, "LSTM": 3}


def inputs_for(op_type, rng, *, t=3, b=2, i=3, h=2, direction="forward", layout=0, lens=None):
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op_type]
    state = (b, d, h) if layout else (d, b, h)
    ins = [rng.standard_normal((b, t, i) if layout else (t, b, i)).astype(np.float32),
           (rng.standard_normal((d, g * h, i)) * 0.6).astype(np.float32),
           (rng.standard_normal((d, g * h, h)) * 0.6).astype(np.float32),
           (rng.standard_normal((d, 2 * g * h)) * 0.5).astype(np.float32),
           None if lens is None else np.asarray(lens, np.int32),
           rng.standard_normal(state).astype(np.float32)]
    if op_type == "LSTM":
        ins += [rng.standard_normal(state).astype(np.float32),
                (rng.standard_normal((d, 3 * h)) * 0.5).astype(np.float32)]
    return ins


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_bptt_matches_finite_differences(op_type, direction, layout):
    rng = np.random.default_rng(hash((op_type, direction, layout)) % 2**32)
    for lens in (None, [3, 0, 2]):
        ins = inputs_for(op_type, rng, b=3, direction=direction, layout=layout, lens=lens)
        got = check_backward(op_type, ins, dict(direction=direction, layout=layout, hidden_size=2), opset=14,
                             num_outputs=NOUT[op_type], consts=(4,), seed=int(rng.integers(1 << 30)))
        if lens is not None:  # the empty row's initial state reaches no output
            empty = got[5][:, 1] if layout == 0 else got[5][1]
            assert not empty.any()


GRAD_VARIANTS = [
    ("RNN", dict(activations=["Softsign"])),
    ("RNN", dict(activations=["ScaledTanh"], activation_alpha=[1.3], activation_beta=[0.7], clip=1.2)),
    ("RNN", dict(activations=["Elu"], activation_alpha=[0.6])),
    ("GRU", dict(linear_before_reset=1)),
    ("GRU", dict(linear_before_reset=1, clip=0.8)),
    ("GRU", dict(clip=0.8)),
    ("GRU", dict(activations=["Softsign", "Softplus"])),
    ("GRU", dict(activations=["HardSigmoid", "Affine"], activation_alpha=[0.15, 0.8], activation_beta=[0.5, 0.1],
                 linear_before_reset=1)),
    ("LSTM", dict(input_forget=1)),
    ("LSTM", dict(clip=0.9)),
    ("LSTM", dict(activations=["Softsign", "ScaledTanh", "Softplus"], activation_alpha=[0.8],
                  activation_beta=[1.2])),
    ("LSTM", dict(activations=["HardSigmoid", "LeakyRelu", "Elu"], activation_alpha=[0.1, 0.3, 0.9],
                  activation_beta=[0.5], input_forget=1)),
]


@pytest.mark.parametrize("op_type,attrs", GRAD_VARIANTS, ids=[f"{o}-{sorted(a.items())}" for o, a in GRAD_VARIANTS])
def test_bptt_variants(op_type, attrs):
    rng = np.random.default_rng(len(attrs))
    ins = inputs_for(op_type, rng, t=4, h=3, lens=[4, 2])
    if any(a in ("HardSigmoid", "LeakyRelu", "Elu") for a in attrs.get("activations", [])):
        ins = [None if a is None else a if a.dtype != np.float32 else a * np.float32(0.5) for a in ins]
    check_backward(op_type, ins, attrs, opset=14, num_outputs=NOUT[op_type], consts=(4,))


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_gradients_through_any_subset_of_the_outputs(op_type):
    rng = np.random.default_rng(3)
    ins = inputs_for(op_type, rng, t=4, direction="bidirectional", lens=[4, 1])
    n = NOUT[op_type]
    for k in range(n):
        grads = [None] * n
        grads[k] = rng.standard_normal((4, 2, 2, 2) if k == 0 else (2, 2, 2)).astype(np.float32)
        check_backward(op_type, ins, dict(direction="bidirectional"), opset=14, num_outputs=n, consts=(4,),
                       grads=grads)


def test_backward_keeps_no_output_and_gives_only_what_is_needed():
    ins = inputs_for("LSTM", np.random.default_rng(4))
    op, _, outs_t = make_op("LSTM", ins, {}, opset=14, num_outputs=3)
    assert op.grad_outputs == () and op.has_backward()
    g = [np.ones(t.shape, np.float32) for t in outs_t]
    res = op.backward(g, ins, [None] * 3, [False, True, False, False, False, False, False, False])
    assert res[1] is not None and res[1].shape == ins[1].shape and res[0] is None and res[2] is None


# --- training -------------------------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _classifier(op_type: str, t_len: int, feat: int, hsz: int, classes: int, seed: int = 0, lens: bool = False):
    """(N, T, F) -> op_type (layout 1) -> last state (N, 1, H) -> Reshape (N, H) -> Gemm -> logits."""
    rng = np.random.default_rng(seed)
    g = GATES[op_type]
    inits = {"W": (rng.standard_normal((1, g * hsz, feat)) * 0.4).astype(np.float32),
             "R": (rng.standard_normal((1, g * hsz, hsz)) * 0.3).astype(np.float32),
             "B": np.zeros((1, 2 * g * hsz), np.float32),
             "shape": np.array([-1, hsz], np.int64),
             "Wc": (rng.standard_normal((classes, hsz)) * 0.3).astype(np.float32),
             "Bc": np.zeros(classes, np.float32)}
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", t_len, feat])]
    rnn_in = ["x", "W", "R", "B"]
    if lens:
        ins.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"]))
        rnn_in.append("lens")
    outs = ["", "yh"] + (["yc"] if op_type == "LSTM" else [])
    nodes = [helper.make_node(op_type, rnn_in, outs, hidden_size=hsz, layout=1),
             helper.make_node("Reshape", ["yh", "shape"], ["last"]),
             helper.make_node("Gemm", ["last", "Wc", "Bc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "clf", ins,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _sequences(n: int, t_len: int, feat: int, seed: int):
    """Class k: a burst on feature k in the first half of the sequence, noise after it (the model must remember)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.standard_normal((n, t_len, feat)) * 0.3).astype(np.float32)
    for i, k in enumerate(y):
        start = rng.integers(0, t_len // 2 - 1)
        x[i, start:start + 2, k] += 1.5
    return x, y.astype(np.int64)


@pytest.mark.parametrize("op_type", ["GRU", "LSTM", "RNN"])
def test_trainer_fine_tunes_a_recurrent_classifier(op_type):
    t_len, feat, hsz = 10, 4, 12
    x, y = _sequences(240, t_len, feat, seed=1)
    xv, yv = _sequences(90, t_len, feat, seed=2)
    model = edgedl.load(_classifier(op_type, t_len, feat, hsz, 3))
    before = float(np.mean(np.argmax(model.run({"x": xv})["logits"], 1) == yv))
    trainer = edgedl.Trainer(model, trainable=["W", "R", "B", "Wc", "Bc"], lr=2e-2, seed=0)
    hist = trainer.fit(x, y, epochs=12, batch_size=24)
    after = float(np.mean(np.argmax(model.run({"x": xv})["logits"], 1) == yv))  # the committed weights
    assert hist.loss[-1] < 0.6 * hist.loss[0], hist.loss
    assert after >= 0.8 and after > before, (before, after)


def test_trainer_with_sequence_lengths_as_an_input():
    t_len, feat, hsz = 10, 4, 10
    x, y = _sequences(200, t_len, feat, seed=3)
    lens = np.random.default_rng(4).integers(6, t_len + 1, len(y)).astype(np.int32)  # the burst lies in the first 5
    model = edgedl.load(_classifier("GRU", t_len, feat, hsz, 3, lens=True))
    trainer = edgedl.Trainer(model, trainable=["W", "R", "B", "Wc", "Bc"], lr=2e-2, seed=0)
    hist = trainer.fit({"x": x, "lens": lens}, y, epochs=10, batch_size=25)
    assert hist.loss[-1] < 0.6 * hist.loss[0], hist.loss
    pred = np.argmax(model.run({"x": x, "lens": lens})["logits"], 1)
    assert np.mean(pred == y) >= 0.8
