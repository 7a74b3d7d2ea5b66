"""The training tape and edgedl.Trainer: whole-model gradients against finite differences, a CNN trained
from random initialization on scikit-learn's digits, determinism, trainable policies (and their memory),
bad data, a diverging loss, and the export of the trained model to ONNX that onnxruntime runs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgedl
from edgedl import EdgeDLError, zoo
from edgedl.ir import TensorType
from edgedl.train import SGD, Adam, EarlyStopping, Tape, cosine_lr, select_trainable


def _cnn(seed: int = 0) -> onnx.ModelProto:
    """The untrained digits CNN of the zoo (Conv 16 -> Relu -> MaxPool -> Conv 32 -> Relu -> MaxPool -> Flatten ->
    Gemm 10, He-normal weights)."""
    return zoo.digits_cnn(seed=seed)


def test_cnn_trained_from_random_initialization_reaches_97_percent(digits):
    x, y, xt, yt = digits
    model = edgedl.load(_cnn())
    before = float(np.mean(np.argmax(model.run({"x": xt})["logits"], 1) == yt))
    steps = 10 * -(-len(x) // 32)
    trainer = edgedl.Trainer(model, optimizer=Adam(lr=1e-2, schedule=cosine_lr(steps)), seed=0)
    hist = trainer.fit(x, y, epochs=10, batch_size=32, validation=(xt, yt))
    after = float(np.mean(np.argmax(model.run({"x": xt})["logits"], 1) == yt))  # the committed model
    assert after >= 0.97, (before, hist.val_accuracy)
    assert after == pytest.approx(hist.val_accuracy[-1])
    assert hist.loss[-1] < hist.loss[0] and hist.peak_bytes > 0


def test_tape_gradients_match_finite_differences_of_the_whole_model():
    model = edgedl.load(_cnn(seed=3))
    tr = edgedl.Trainer(model)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    tape = Tape(tr.graph, tr.trainable, {"x": TensorType((3, 1, 8, 8), np.dtype(np.float32))})
    params = {k: v.astype(np.float32) for k, v in tr.params.items()}
    out, saved = tape.forward({"x": x}, params)
    r = rng.standard_normal(out["logits"].shape).astype(np.float32)
    grads = tape.backward(saved, r)

    def loss(p):
        o, _ = tape.forward({"x": x}, p, keep=False)
        return float(np.sum(r.astype(np.float64) * o["logits"]))

    h = 1e-3  # float32 forward: small enough not to cross a ReLU / max-pool kink, large enough for rounding
    for name in ("w1", "b2", "w3"):
        flat = params[name].reshape(-1)
        for k in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            saved_v = flat[k]
            flat[k] = saved_v + h
            up = loss(params)
            flat[k] = saved_v - h
            down = loss(params)
            flat[k] = saved_v
            num = (up - down) / (2 * h)
            assert grads[name].reshape(-1)[k] == pytest.approx(num, rel=1e-2, abs=2e-3), (name, k)


def test_same_seed_same_weights_and_other_seed_differs(digits):
    x, y, _, _ = digits
    runs = []
    for seed in (5, 5, 6):
        tr = edgedl.Trainer(edgedl.load(_cnn()), optimizer=SGD(lr=0.05, momentum=0.9), seed=seed)
        tr.fit(x[:256], y[:256], epochs=1, batch_size=50)
        runs.append(tr.params)
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize("policy,changed", [
    ("bias", {"b1", "b2", "b3"}),
    ("last:1", {"w3", "b3"}),
    (["w2"], {"w2"}),
    (["node_7"], None),  # a layer name (resolved below)
])
def test_policies_train_only_what_they_select(digits, policy, changed):
    x, y, _, _ = digits
    model = edgedl.load(_cnn())
    if changed is None:
        gemm = [n.name for n in model.source.nodes if n.op_type == "Gemm"][0]
        policy, changed = [gemm], {"w3", "b3"}
    start = {k: v.copy() for k, v in model.source.initializers.items()}
    edgedl.Trainer(model, trainable=policy, lr=0.01).fit(x[:128], y[:128], epochs=1, batch_size=64)
    now = model.source.initializers
    moved = {k for k in start if not np.array_equal(start[k], now[k])}
    assert moved == changed


def test_a_frozen_prefix_keeps_less_memory(digits):
    x, y, _, _ = digits
    peaks = {}
    for policy in ("all", "last:1"):
        tr = edgedl.Trainer(edgedl.load(_cnn()), trainable=policy)
        tr.fit(x[:64], y[:64], epochs=1, batch_size=64)
        peaks[policy] = (tr.peak_bytes, tr.saved_bytes)
    # the frozen prefix runs as inference: nothing of it is kept for the backward
    assert peaks["last:1"][1] < peaks["all"][1] / 10, peaks
    assert peaks["last:1"][0] < peaks["all"][0], peaks


def test_early_stopping_restores_the_best_epoch(digits):
    x, y, xt, yt = digits
    tr = edgedl.Trainer(edgedl.load(_cnn()), lr=3e-3)
    stop = EarlyStopping(monitor="val_loss", patience=1)
    hist = tr.fit(x[:200], y[:200], epochs=30, batch_size=50, validation=(xt[:100], yt[:100]), callbacks=[stop])
    assert len(hist.val_loss) < 30
    assert tr.evaluate(xt[:100], yt[:100])["loss"] == pytest.approx(min(hist.val_loss), rel=1e-5)


def test_bad_data_and_a_diverging_loss_raise_clear_errors(digits):
    x, y, _, _ = digits
    tr = edgedl.Trainer(edgedl.load(_cnn()))
    with pytest.raises(EdgeDLError, match="same number of samples"):
        tr.fit(x[:10], y[:9])
    with pytest.raises(EdgeDLError, match="float32"):
        tr.fit(x[:10].astype(np.float64), y[:10])
    with pytest.raises(EdgeDLError, match="samples of shape"):
        tr.fit(np.zeros((4, 1, 9, 9), np.float32), y[:4])
    with pytest.raises(EdgeDLError, match="0..9"):
        tr.fit(x[:4], np.array([0, 1, 2, 10]))
    with pytest.raises(EdgeDLError, match="policy"):
        edgedl.Trainer(edgedl.load(_cnn()), trainable="some")
    with pytest.raises(EdgeDLError, match="neither"):
        edgedl.Trainer(edgedl.load(_cnn()), trainable=["nope"])
    bad = edgedl.Trainer(edgedl.load(_cnn()), optimizer=SGD(lr=1e12))
    with pytest.raises(EdgeDLError, match=r"step \d+"):
        bad.fit(x[:256], y[:256], epochs=3, batch_size=32)


def test_trained_model_saves_to_onnx_that_onnxruntime_runs(digits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x, y, xt, _ = digits
    model = edgedl.load(_cnn())
    edgedl.Trainer(model, lr=3e-3).fit(x[:300], y[:300], epochs=1, batch_size=30)
    path = tmp_path / "trained.onnx"
    model.save(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": xt[:50]})[0]
    np.testing.assert_allclose(got, model.run({"x": xt[:50]})["logits"], rtol=1e-4, atol=1e-4)
    reloaded = edgedl.load(path)
    np.testing.assert_allclose(reloaded.run({"x": xt[:50]})["logits"], got, rtol=1e-4, atol=1e-4)


def test_select_trainable_lists_layer_parameters():
    from edgedl.converters.onnx_import import import_onnx

    g = import_onnx(_cnn())
    assert select_trainable(g, "all") == ["w1", "b1", "w2", "b2", "w3", "b3"]
    assert select_trainable(g, "last:2") == ["w2", "b2", "w3", "b3"]


def test_fine_tuning_to_a_shifted_domain_improves_under_each_policy(digits):
    # pre-train on the digits, then fine-tune on 300 inverted digits (benchmarks/finetune_shift.py)
    x, y, xt, yt = digits
    steps = 10 * -(-1000 // 32)
    base = edgedl.load(_cnn())
    edgedl.Trainer(base, optimizer=Adam(lr=1e-2, schedule=cosine_lr(steps))).fit(x[:1000], y[:1000], epochs=10)
    xs, ys = np.ascontiguousarray(1 - x[1000:1300]), y[1000:1300]
    xst = np.ascontiguousarray(1 - xt)
    want = {"all": 0.7, "last:2": 0.7, "last:1": 0.25, "bias": 0.15}
    for policy, lr in (("all", 3e-3), ("last:2", 3e-3), ("last:1", 3e-3), ("bias", 9e-2)):
        model = edgedl.load(_cnn())
        model.set_weights(dict(base.source.initializers))
        before = float(np.mean(np.argmax(model.run({"x": xst})["logits"], 1) == yt))
        edgedl.Trainer(model, trainable=policy, optimizer=Adam(lr=lr)).fit(xs, ys, epochs=10, batch_size=32)
        after = float(np.mean(np.argmax(model.run({"x": xst})["logits"], 1) == yt))
        assert before < 0.1 and after >= want[policy], (policy, before, after)


def test_a_memory_budget_trains_what_fits_and_a_smaller_budget_uses_less(digits):
    x, y, _, _ = digits
    full = edgedl.Trainer(edgedl.load(_cnn()), budget_bytes=1 << 40)  # (a budgeted trainer's accounting)
    everything = full.estimate_bytes(full.trainable, 32)
    last = full.estimate_bytes(["w3", "b3"], 32)
    assert last < everything
    big = edgedl.Trainer(edgedl.load(_cnn()), budget_bytes=everything, budget_batch=32)
    assert big.trainable == full.trainable
    budget = (last + everything) // 2
    small = edgedl.Trainer(edgedl.load(_cnn()), budget_bytes=budget, budget_batch=32)
    assert small.trainable[-2:] == ["w3", "b3"]  # the trailing layers first
    assert not {"w1", "b1"} & set(small.trainable)
    probes = dict(small.budget_probes)  # layers trained -> bytes (negative: channels of a split layer)
    whole = max(k for k, b in probes.items() if k > 0 and b <= budget)
    assert probes.get(whole + 1, budget + 1) > budget
    if small.partial_layer is not None:  # then part of the next layer's input channels fit too
        assert probes[-small.partial_layer[1]] <= budget
    peaks = {}
    for name, tr in (("big", big), ("small", small)):
        tr.fit(x[:64], y[:64], epochs=1, batch_size=32)
        peaks[name] = tr.peak_bytes
    assert peaks["small"] < peaks["big"], peaks
    with pytest.raises(EdgeDLError, match="over the budget"):
        edgedl.Trainer(edgedl.load(_cnn()), budget_bytes=1000)


def test_the_training_package_loads_on_first_use():
    import subprocess
    import sys

    code = ("import sys, edgedl; assert 'edgedl.train' not in sys.modules; "
            "print(edgedl.train.Adam.__name__, edgedl.Trainer.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Adam", "Trainer"]
