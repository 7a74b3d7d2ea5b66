"""Trainer modes: the frozen prefix run as inference, BatchNormalization with batch statistics and running
updates, Dropout in training mode, models with several inputs, and memory budgets that train part of a
layer's input channels."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl import EdgeDLError, zoo
from edgedl.ir import TensorType
from edgedl.passes import remove_identities
from edgedl.train import SGD, Adam, Tape


def _init(name, a, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(a, dtype), name)


def _bn_dropout_two_inputs(seed=0, ratio=0.25, opset=15):
    """x (N, 1, 8, 8) -> Conv 8 -> BatchNormalization -> Relu -> MaxPool -> Flatten, concatenated with z (N, 4)
    -> Dropout -> Gemm 10."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], momentum=0.8),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p1"], ["f1"]),
             helper.make_node("Concat", ["f1", "z"], ["cat"], axis=1),
             helper.make_node("Dropout", ["cat", "ratio"], ["dr"]),
             helper.make_node("Gemm", ["dr", "w2", "b2"], ["logits"], transB=1)]
    inits = [_init("w1", rng.normal(0, 0.3, (8, 1, 3, 3))), _init("g1", np.ones(8)), _init("b1", np.zeros(8)),
             _init("m1", np.zeros(8)), _init("v1", np.ones(8)), _init("ratio", np.array(ratio)),
             _init("w2", rng.normal(0, 0.05, (10, 8 * 16 + 4))), _init("b2", np.zeros(10))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8]),
                                       helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_frozen_prefix_runs_as_inference_and_gives_the_full_tapes_gradients(digits):
    x = digits[0][:16]
    y = digits[1][:16]
    model = edgedl.load(zoo.digits_cnn(seed=2))
    tr = edgedl.Trainer(model, trainable="last:2", optimizer=SGD(lr=1e-30))
    split = tr.runner.train_split
    assert split.frontier == ["p1"] and [n.op_type for n in split.prefix.nodes] == ["Conv", "Relu", "MaxPool"]
    np.testing.assert_allclose(tr.predict(x), model(x), rtol=1e-5, atol=1e-5)
    # gradients through the split equal those of one tape over the whole graph
    full = Tape(tr.graph, tr.trainable, {"x": TensorType(x.shape, np.dtype(np.float32))})
    out, saved = full.forward({"x": x}, tr.params)
    _, g = tr.loss(out["logits"], y)
    want = full.backward(saved, g)
    outs, saved2, tape = tr.runner.forward({"x": x}, tr.params, train=True, keep=True)
    got = tape.backward(saved2, tr.loss(outs["logits"], y)[1])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6)
    assert full.peak_bytes > tape.peak_bytes  # the prefix's activations are not the tape's


def test_batchnorm_trains_with_batch_statistics_and_updates_running_ones():
    model = edgedl.load(_bn_dropout_two_inputs(ratio=0.0))
    tr = edgedl.Trainer(model, optimizer=SGD(lr=1e-30), seed=0)  # lr 0: the weights stay, the statistics move
    assert {"m1", "v1"} <= set(tr.buffers)
    rng = np.random.default_rng(3)
    x = rng.normal(1.5, 2.0, (32, 1, 8, 8)).astype(np.float32)
    z = rng.normal(size=(32, 4)).astype(np.float32)
    tr.train_step({"x": x, "z": z}, rng.integers(0, 10, 32))
    w1 = model.source.initializers["w1"].astype(np.float64)
    c1 = np.zeros((32, 8, 8, 8))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            c1 += np.einsum("nhw,o->nohw", xp[:, 0, i:i + 8, j:j + 8], w1[:, 0, i, j])
    mean, var = c1.mean(axis=(0, 2, 3)), c1.var(axis=(0, 2, 3))
    np.testing.assert_allclose(tr.buffers["m1"], 0.8 * 0 + 0.2 * mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tr.buffers["v1"], 0.8 * 1 + 0.2 * var, rtol=1e-4, atol=1e-5)
    # evaluation uses the running statistics, and the committed model holds them
    tr.commit()
    np.testing.assert_allclose(model.source.initializers["m1"], tr.buffers["m1"])
    np.testing.assert_allclose(tr.predict({"x": x, "z": z}), model(x, z), rtol=1e-4, atol=1e-5)
    frozen = edgedl.Trainer(edgedl.load(_bn_dropout_two_inputs(ratio=0.0)), batchnorm="frozen", trainable="all")
    assert not any(b in frozen.buffers for b in ("m1", "v1"))
    with pytest.raises(EdgeDLError, match="batchnorm"):
        edgedl.Trainer(model, batchnorm="train")


def test_dropout_drops_while_training_only_and_is_reproducible():
    model = edgedl.load(_bn_dropout_two_inputs(ratio=0.25))
    tr = edgedl.Trainer(model, optimizer=SGD(lr=1e-30), seed=7)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    z = rng.normal(size=(64, 4)).astype(np.float32)
    feeds = {"x": x, "z": z}
    values = dict(tr._values())
    seed_name = next(b for b in tr.buffers if b.startswith("edgedl_dropout_seed"))
    values[seed_name] = np.array(12345, np.int64)
    outs, saved, tape = tr.runner.forward(feeds, values, train=True, keep=True)
    mask = next(v for k, v in saved.values.items() if k.endswith("_mask"))
    assert mask.dtype == np.uint8 and abs(1 - mask.mean() - 0.25) < 0.03
    again, _, _ = tr.runner.forward(feeds, values, train=True, keep=False)
    np.testing.assert_array_equal(outs["logits"], again["logits"])  # the same seed drops the same units
    # the dropped activations reach the Gemm scaled by 1 / (1 - ratio); evaluation has no dropout
    ev = tr.predict(feeds)
    np.testing.assert_allclose(ev, model(x, z), rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs["logits"], ev)
    cat = saved.values["dr"]  # the Gemm keeps its (dropped) input for the weight gradient
    g = tape.backward(saved, np.ones_like(outs["logits"]))
    assert not saved.values  # the backward released every saved value
    np.testing.assert_allclose(g["w2"], np.ones((10, 64)) @ cat, rtol=1e-4, atol=1e-4)
    kept = cat != 0
    assert np.all(mask.astype(bool) | ~kept)
    # steps draw new masks from (seed, step): two trainers with one seed draw the same ones
    t1 = edgedl.Trainer(edgedl.load(_bn_dropout_two_inputs(ratio=0.25)), seed=1, optimizer=Adam(lr=1e-2))
    t2 = edgedl.Trainer(edgedl.load(_bn_dropout_two_inputs(ratio=0.25)), seed=1, optimizer=Adam(lr=1e-2))
    y = rng.integers(0, 10, 64)
    for t in (t1, t2):
        t.fit(feeds, y, epochs=2, batch_size=16)
    for k in t1.params:
        np.testing.assert_array_equal(t1.params[k], t2.params[k])


def test_several_inputs_as_a_dict_or_a_list_and_clear_errors(digits):
    model = edgedl.load(_bn_dropout_two_inputs())
    x, y = digits[0][:200], digits[1][:200]
    z = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    tr = edgedl.Trainer(model, optimizer=Adam(lr=3e-3), seed=0)
    hist = tr.fit({"x": x, "z": z}, y, epochs=4, batch_size=32, validation=([x, z], y))
    assert hist.loss[-1] < hist.loss[0]
    np.testing.assert_allclose(tr.predict([x, z]), tr.predict({"z": z, "x": x}))
    with pytest.raises(EdgeDLError, match="missing"):
        tr.fit({"x": x}, y)
    with pytest.raises(EdgeDLError, match="2 inputs"):
        tr.fit(x, y)
    with pytest.raises(EdgeDLError, match="same number of samples"):
        tr.fit({"x": x, "z": z[:100]}, y)
    with pytest.raises(EdgeDLError, match="samples of shape"):
        tr.fit({"x": x, "z": z[:, :3]}, y)


def test_remove_identities_keeps_dropout_when_asked():
    model = edgedl.load(_bn_dropout_two_inputs())
    from edgedl.quant.quantize_model import copy_graph

    g = copy_graph(model.source)
    assert remove_identities(g, dropout=False) == 0 and any(n.op_type == "Dropout" for n in g.nodes)
    assert remove_identities(g) == 1 and not any(n.op_type == "Dropout" for n in g.nodes)


def _wide_1x1(seed=0):
    """x (N, 4, 12, 12) -> Conv 3x3 to 64 -> Relu -> [Conv 1x1 64 -> Relu] x 2 -> GlobalAveragePool -> Flatten ->
    Gemm 10: the 1x1 convs' saved inputs (64 channels) dominate their training memory."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p2"]), helper.make_node("Flatten", ["p2"], ["f2"]),
             helper.make_node("Gemm", ["f2", "w3", "b3"], ["logits"], transB=1)]
    inits = [_init("w0", rng.normal(0, 0.3, (64, 4, 3, 3))), _init("b0", np.zeros(64)),
             _init("w1", rng.normal(0, 0.15, (64, 64, 1, 1))), _init("b1", np.zeros(64)),
             _init("w2", rng.normal(0, 0.15, (64, 64, 1, 1))), _init("b2", np.zeros(64)),
             _init("w3", rng.normal(0, 0.3, (10, 64))), _init("b3", np.zeros(10))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 12, 12])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_budget_between_layers_trains_part_of_a_layers_input_channels():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 4, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    probe = edgedl.Trainer(edgedl.load(_wide_1x1()), budget_bytes=1 << 40)  # (budgeted: the same accounting)
    two = probe.estimate_bytes(["w2", "b2", "w3", "b3"], 16)
    three = probe.estimate_bytes(["w1", "b1", "w2", "b2", "w3", "b3"], 16)
    assert three > two
    budget = (two + three) // 2
    model = edgedl.load(_wide_1x1())
    w0_before = model.source.initializers["w0"].copy()
    w1_before = model.source.initializers["w1"].copy()
    tr = edgedl.Trainer(model, budget_bytes=budget, budget_batch=16, optimizer=Adam(lr=1e-2), seed=0)
    layer, c, total = tr.partial_layer
    assert total == 64 and 0 < c < 64
    assert tr.trainable[0].startswith("w1_channels_0_") and {"b1", "w2", "b2", "w3", "b3"} <= set(tr.trainable)
    fits = [b for k, b in tr.budget_probes if k == -c]
    assert fits and two < fits[0] <= budget
    # fewer channels, less memory: the saved input of the split layer is the slice it trains
    more = [b for k, b in tr.budget_probes if k < 0 and -k > c]
    assert all(b > budget for b in more)
    tr.fit(x, y, epochs=2, batch_size=16)
    assert tr.peak_bytes <= budget
    # the model is whole again: the split Conv is one Conv, its first c input channels trained, the others not
    assert [n.op_type for n in model.source.nodes] == ["Conv", "Relu", "Conv", "Relu", "Conv", "Relu",
                                                        "GlobalAveragePool", "Flatten", "Gemm"]
    w1 = model.source.initializers["w1"]
    assert w1.shape == (64, 64, 1, 1)
    np.testing.assert_array_equal(w1[:, c:], w1_before[:, c:])
    assert not np.allclose(w1[:, :c], w1_before[:, :c])
    np.testing.assert_array_equal(model.source.initializers["w0"], w0_before)
    np.testing.assert_allclose(model(x[:8]), tr.predict(x[:8]), rtol=1e-4, atol=1e-5)


def test_frozen_prefix_runs_in_chunks_of_samples_with_the_same_bits(digits):
    x, y = digits[0][:30], digits[1][:30]
    model = edgedl.load(zoo.digits_cnn(seed=1))
    whole = edgedl.Trainer(model, trainable="last:1", prefix_chunk=None)
    chunked = edgedl.Trainer(model, trainable="last:1", prefix_chunk=4)  # 30 = 7 x 4 + 2 (a padded last chunk)
    a = whole.runner.frontier({"x": x}, True)
    b = chunked.runner.frontier({"x": x}, True)
    assert a and a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert 0 < chunked.runner.prefix_bytes() < whole.runner.prefix_bytes()
    la, _ = whole.train_step(x, y)
    lb, _ = chunked.train_step(x, y)
    assert la == lb
    with pytest.raises(EdgeDLError, match="prefix_chunk"):
        edgedl.Trainer(model, prefix_chunk=0)


def test_a_prefix_that_mixes_samples_runs_on_the_whole_batch():
    from edgedl.train.runner import _per_sample

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=0), helper.make_node("Gemm", ["s", "w", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [_init("w", rng.normal(size=(4, 3))), _init("b", np.zeros(3))])
    model = edgedl.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    tr = edgedl.Trainer(model, prefix_chunk=2)
    assert not _per_sample(tr.runner.train_split.prefix)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_allclose(tr.predict(x), model(x), rtol=1e-5, atol=1e-6)  # softmax over all 8 samples
