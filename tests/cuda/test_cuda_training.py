"""Training on the CUDA device against the CPU: every device backward (``Op.backward_cuda``) through a
:class:`~edgedl.train.cuda_tape.CudaTape` against the host tape on the same graph, the loss and optimizer
kernels against :mod:`edgedl.train.losses` / :mod:`edgedl.train.optim`, and ``Trainer(device="cuda")`` end to
end (steps, checkpoints, evaluation), in numba's CUDA simulator (tiny shapes: it runs every GPU thread as a
Python thread)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import edgedl
from edgedl.errors import EdgeDLError
from edgedl.ir import TensorType

cuda = pytest.importorskip("numba.cuda")
RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _needs_cuda():
    from edgedl.kernels.cuda import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _init(name, value):
    value = np.asarray(value)
    dtype = TensorProto.INT64 if value.dtype == np.int64 else TensorProto.FLOAT
    return helper.make_tensor(name, dtype, value.shape, value.ravel().tolist())


def _graph(nodes, x_shape, out, params, consts=(), opset=17, extra_outputs=()):
    """An edgedl graph: input x, outputs ``out`` and ``extra_outputs``, initializers ``params`` and ``consts``
    (dicts)."""
    from edgedl.quant.quantize_model import source_graph

    inits = [_init(k, v) for k, v in {**params, **dict(consts)}.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in (out, *extra_outputs)],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return source_graph(edgedl.load(model.SerializeToString()))


def _check_tape(nodes, x, params, out="y", consts=(), buffers=(), opset=17, host_steps=0, rtol=1e-4, atol=1e-5,
                extra_outputs=()):
    """The CUDA tape's outputs and parameter gradients equal the host tape's on the same graph."""
    from edgedl.train.cuda_tape import CudaTape
    from edgedl.train.tape import Tape

    values = {**params, **dict(buffers)}
    g = _graph(nodes, x.shape, out, values, consts, opset, extra_outputs)
    tape = Tape(g, list(params), {"x": TensorType(x.shape, np.dtype(np.float32))}, out, list(dict(buffers)))
    dtape = CudaTape(tape)
    host_out, saved = tape.forward({"x": x}, values)
    r = _f32(*host_out[out].shape)
    host_grads = tape.backward(saved, r)
    dev_out, dsaved = dtape.forward({"x": cuda.to_device(x)}, values)
    dev_grads = dtape.backward(dsaved, cuda.to_device(r))
    assert len(dtape.host_steps()) == host_steps, dtape.host_steps()
    np.testing.assert_allclose(dev_out[out].copy_to_host(), host_out[out], rtol=rtol, atol=atol)
    for name in params:
        np.testing.assert_allclose(dev_grads[name].copy_to_host(), host_grads[name], rtol=rtol, atol=atol,
                                   err_msg=name)
    assert dtape.peak_bytes > 0
    return dtape


# -- the device backward of each op ------------------------------------------------------------------------
@pytest.mark.parametrize("attrs,w_shape,x_shape", [
    ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, (3, 2, 3, 3), (2, 2, 5, 5)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 0]}, (4, 2, 3, 3), (1, 2, 6, 5)),
    ({"kernel_shape": [2, 2], "dilations": [2, 2], "group": 2}, (4, 1, 2, 2), (1, 2, 5, 5)),
    ({"kernel_shape": [3, 3], "group": 3, "pads": [1, 1, 1, 1]}, (3, 1, 3, 3), (2, 3, 4, 4)),  # depthwise
    ({"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, (3, 2, 3), (2, 2, 7)),  # 1-D
])
def test_conv_backward(attrs, w_shape, x_shape):
    x = _f32(*x_shape)
    params = {"p": _f32(*x_shape), "w": _f32(*w_shape), "b": _f32(w_shape[0])}
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node("Conv", ["h", "w", "b"], ["y"], **attrs)]
    _check_tape(nodes, x, params)


@pytest.mark.parametrize("trans_a,trans_b,c_shape", [(0, 0, (5,)), (1, 0, (3, 5)), (0, 1, (3, 1)), (1, 1, ())])
def test_gemm_backward(trans_a, trans_b, c_shape):
    m, k, n = 3, 4, 5
    x_shape = (k, m) if trans_a else (m, k)
    x = _f32(*x_shape)
    params = {"p": _f32(*x_shape), "w": _f32(*((n, k) if trans_b else (k, n))), "c": _f32(*c_shape)}
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]),
             helper.make_node("Gemm", ["h", "w", "c"], ["y"], transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0)]
    _check_tape(nodes, x, params)


@pytest.mark.parametrize("x_shape,w_shape", [((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5))])
def test_matmul_backward(x_shape, w_shape):
    x = _f32(*x_shape)
    params = {"p": _f32(*x_shape), "w": _f32(*w_shape)}
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    _check_tape(nodes, x, params)


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {}),
                                      ("HardSwish", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
                                      ("Elu", {"alpha": 0.7}), ("Softplus", {}), ("Softsign", {}), ("Gelu", {})])
def test_activation_backward(op, attrs):
    """Softplus, Softsign and Gelu have no CUDA forward kernel (a host step) but a device backward."""
    x = _f32(2, 3, 4, scale=2.0)
    params = {"p": _f32(2, 3, 4)}
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node(op, ["h"], ["y"], **attrs)]
    _check_tape(nodes, x, params, opset=20 if op == "Gelu" else 17,
                host_steps=int(op in ("Softplus", "Softsign", "Gelu")))


def test_clip_backward_from_the_output():
    x = _f32(2, 8, scale=3.0)
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node("Clip", ["h", "lo", "hi"], ["y"])]
    _check_tape(nodes, x, {"p": _f32(2, 8)}, consts={"lo": np.float32(-1.0), "hi": np.float32(6.0)})


@pytest.mark.parametrize("op,b_shape", [("Add", (3, 1)), ("Sub", (4,)), ("Mul", (1, 3, 4)), ("Mul", (2, 3, 4))])
def test_binary_backward(op, b_shape):
    x = _f32(2, 3, 4)
    params = {"p": _f32(2, 3, 4), "b": _f32(*b_shape)}
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node(op, ["h", "b"], ["y"])]
    _check_tape(nodes, x, params)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),  # overlapping windows
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [1, 1], "pads": [1, 1, 0, 0], "count_include_pad": 1}),
    ("GlobalAveragePool", {}),
])
def test_pool_backward(op, attrs):
    x = _f32(2, 2, 5, 5)
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node(op, ["h"], ["y"], **attrs)]
    _check_tape(nodes, x, {"p": _f32(2, 2, 5, 5)})


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_backward(training):
    """Training mode (batch statistics, the running statistics updated as extra outputs) and frozen (the
    running statistics) BatchNormalization, scale and bias trained."""
    x = _f32(3, 2, 3, 3, scale=2.0)
    params = {"p": _f32(3, 2, 3, 3), "scale": _f32(2), "bias": _f32(2)}
    buffers = {"mean": _f32(2), "var": np.abs(_f32(2)) + 0.5}
    outs = ["y", "new_mean", "new_var"] if training else ["y"]
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]),
             helper.make_node("BatchNormalization", ["h", "scale", "bias", "mean", "var"], outs,
                              training_mode=int(training), momentum=0.8)]
    dtape = _check_tape(nodes, x, params, buffers=buffers, extra_outputs=outs[1:])
    if training:  # the updated running statistics
        values = {**params, **buffers}
        host = dtape.tape.forward({"x": x}, values, keep=False)[0]
        dev = dtape.forward({"x": x}, values, keep=False)[0]
        for k in ("new_mean", "new_var"):
            np.testing.assert_allclose(dev[k].copy_to_host(), host[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op,axis", [("Softmax", -1), ("LogSoftmax", -1), ("LogSoftmax", 1), ("Softmax", 1)])
def test_softmax_backward(op, axis):
    """The backward along any axis; the forward kernel covers the last axis (others: a host step)."""
    x = _f32(2, 3, 4)
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node(op, ["h"], ["y"], axis=axis)]
    _check_tape(nodes, x, {"p": _f32(2, 3, 4)}, host_steps=int(axis == 1))


def test_views_and_fan_out():
    """Flatten / Reshape gradients are device reshapes; a tensor read twice sums its gradients."""
    x = _f32(2, 3, 2)
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node("Flatten", ["h"], ["f"]),
             helper.make_node("Relu", ["f"], ["r"]), helper.make_node("Mul", ["f", "r"], ["m"]),
             helper.make_node("Reshape", ["m", "shape"], ["y"])]
    _check_tape(nodes, x, {"p": _f32(2, 3, 2)}, consts={"shape": np.array([3, 4], np.int64)})


def test_an_op_without_a_device_backward_runs_on_the_host():
    """Mish has no CUDA kernel and no device backward: both directions are host steps, with the same
    results."""
    x = _f32(2, 5)
    nodes = [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node("Mish", ["h"], ["y"])]
    dtape = _check_tape(nodes, x, {"p": _f32(2, 5)}, host_steps=2, opset=18)
    assert all("Mish" in s for s in dtape.host_steps())


# -- losses and optimizers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loss,target", [
    (edgedl.train.SoftmaxCrossEntropy(), np.array([0, 3, 1], np.int64)),
    (edgedl.train.SoftmaxCrossEntropy(label_smoothing=0.2), np.array([2, 2, 0], np.int64)),
    (edgedl.train.MSE(), _f32(3, 4)),
    (edgedl.train.BCEWithLogits(pos_weight=2.0), (RNG.random((3, 4)) > 0.5).astype(np.float32)),
    (edgedl.train.SoftmaxCrossEntropy(class_weights=[1, 2, 1, 0.5]), np.array([0, 1, 3], np.int64)),  # host form
])
def test_losses_on_the_device(loss, target):
    from edgedl.train.cuda_state import DeviceTraining

    out = _f32(3, 4, scale=3.0)
    want, want_grad = loss(out, target)
    state = DeviceTraining({}, {}, cuda.stream())
    got, grad = state.loss(loss, cuda.to_device(out), target)
    assert got == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grad.copy_to_host(), want_grad, rtol=1e-5, atol=1e-7)


def test_bad_labels_on_the_device_are_a_clear_error():
    from edgedl.train.cuda_state import DeviceTraining

    state = DeviceTraining({}, {}, cuda.stream())
    with pytest.raises(EdgeDLError, match="labels must be in 0..3"):
        state.loss(edgedl.train.SoftmaxCrossEntropy(), cuda.to_device(_f32(2, 4)), np.array([0, 4]))


@pytest.mark.parametrize("make", [
    lambda: edgedl.train.SGD(lr=0.1),
    lambda: edgedl.train.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda: edgedl.train.Adam(lr=0.05, weight_decay=0.01),
    lambda: edgedl.train.AdamW(lr=0.05, schedule=edgedl.train.step_lr(2, 0.5)),
])
def test_optimizers_on_the_device(make):
    """Three steps of the device update give the host optimizer's weights and state (float32 rounding)."""
    from edgedl.train.cuda_state import DeviceTraining

    host_opt, dev_opt = make(), make()
    p0 = {"a": _f32(4, 3), "b": _f32(5)}
    grads = [{k: _f32(*v.shape) for k, v in p0.items()} for _ in range(3)]
    host = {k: v.copy() for k, v in p0.items()}
    dev = {k: v.copy() for k, v in p0.items()}
    state = DeviceTraining(dev, {}, cuda.stream())
    for g in grads:
        host_opt.step(host, {k: v.copy() for k, v in g.items()})
        state.step(dev_opt, {k: cuda.to_device(v) for k, v in g.items()})
    state.pull()
    assert dev_opt.steps == host_opt.steps == 3
    for k in p0:
        np.testing.assert_allclose(dev[k], host[k], rtol=1e-5, atol=1e-6)
    state.optimizer_to_host(dev_opt)
    for k, st in host_opt.state.items():
        for slot, v in st.items():
            np.testing.assert_allclose(dev_opt.state[k][slot], v, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_on_the_device():
    from edgedl.train.cuda_state import DeviceTraining
    from edgedl.train.optim import clip_grad_norm

    grads = {"a": _f32(40, 3), "b": _f32(7)}
    host = {k: v.copy() for k, v in grads.items()}
    want = clip_grad_norm(host, 1.5)
    dev = {k: cuda.to_device(v) for k, v in grads.items()}
    got = DeviceTraining({}, {}, cuda.stream()).clip(dev, 1.5)
    assert got == pytest.approx(want, rel=1e-5)
    for k in grads:
        np.testing.assert_allclose(dev[k].copy_to_host(), host[k], rtol=1e-5, atol=1e-7)


# -- the trainer ---------------------------------------------------------------------------------------------
def _small_cnn():
    """Conv-BN-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm on 1x6x6 inputs (2 and 3 channels)."""
    f = TensorProto.FLOAT
    rng = np.random.default_rng(3)
    # (no bias before the BatchNormalization: batch statistics cancel it, its gradient is rounding noise)
    inits = {"w1": rng.standard_normal((2, 1, 3, 3)) * 0.5,
             "s1": 1 + rng.standard_normal(2) * 0.1, "t1": rng.standard_normal(2) * 0.1,
             "m1": rng.standard_normal(2) * 0.1, "v1": 1 + rng.random(2),
             "w2": rng.standard_normal((3, 2, 3, 3)) * 0.5, "b2": rng.standard_normal(3) * 0.1,
             "fc_w": rng.standard_normal((4, 3)) * 0.5, "fc_b": rng.standard_normal(4) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s1", "t1", "m1", "v1"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["fl"]),
             helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", f, ["N", 1, 6, 6])],
                          [helper.make_tensor_value_info("logits", f, ["N", 4])],
                          [helper.make_tensor(k, f, v.shape, v.astype(np.float32).ravel().tolist())
                           for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)]).SerializeToString()


def _data(n=6):
    rng = np.random.default_rng(5)
    return rng.standard_normal((n, 1, 6, 6)).astype(np.float32), rng.integers(0, 4, n)


@pytest.mark.parametrize("trainable,optimizer", [("all", "adam"), ("last:2", "sgd")])
def test_trainer_on_the_gpu_matches_the_cpu(trainable, optimizer):
    """Full and last-layers fine-tuning (BatchNormalization with batch statistics, its running statistics
    updated): every step on the device, no host step, the CPU trainer's losses, weights and statistics."""
    x, y = _data()
    results = []
    for device in ("cpu", "cuda"):
        model = edgedl.load(_small_cnn())
        opt = edgedl.train.Adam(lr=0.02) if optimizer == "adam" else edgedl.train.SGD(lr=0.05, momentum=0.9)
        tr = edgedl.Trainer(model, optimizer=opt, trainable=trainable, seed=1, clip_norm=5.0, device=device)
        losses = [tr.train_step(x[:3], y[:3])[0], tr.train_step(x[3:], y[3:])[0]]
        if device == "cuda":
            assert [s for t in tr.runner._tapes.values() for s in t.host_steps()] == []
        results.append((losses, {k: v.copy() for k, v in tr.params.items()},
                        {k: v.copy() for k, v in tr.buffers.items()}, tr.predict(x)))
    (l_cpu, p_cpu, b_cpu, o_cpu), (l_gpu, p_gpu, b_gpu, o_gpu) = results
    np.testing.assert_allclose(l_gpu, l_cpu, rtol=1e-4)
    for name in p_cpu:
        np.testing.assert_allclose(p_gpu[name], p_cpu[name], rtol=1e-4, atol=1e-5, err_msg=name)
    for name in b_cpu:
        np.testing.assert_allclose(b_gpu[name], b_cpu[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(o_gpu, o_cpu, rtol=1e-4, atol=1e-5)


def test_trainer_on_the_gpu_fit_checkpoint_and_resume(tmp_path):
    """fit on the device writes the same checkpoints as on the CPU (weights, running statistics, Adam's
    state), a resumed run ends where an uninterrupted one does, and the trained weights reach the model."""
    x, y = _data(4)
    ckpt = tmp_path / "run.ckpt"
    model = edgedl.load(_small_cnn())
    tr = edgedl.Trainer(model, trainable="last:1", seed=0, device="cuda")
    tr.fit(x, y, epochs=1, batch_size=2, checkpoint=str(ckpt), shuffle=False)
    once = {k: v.copy() for k, v in tr.params.items()}
    resumed = edgedl.Trainer(edgedl.load(_small_cnn()), trainable="last:1", seed=0, device="cuda")
    resumed.fit(x, y, epochs=2, batch_size=2, checkpoint=str(ckpt), resume=True, shuffle=False)
    straight = edgedl.Trainer(edgedl.load(_small_cnn()), trainable="last:1", seed=0, device="cpu")
    straight.fit(x, y, epochs=2, batch_size=2, shuffle=False)
    for k in once:
        np.testing.assert_allclose(resumed.params[k], straight.params[k], rtol=1e-4, atol=1e-5)
    assert resumed.optimizer.steps == straight.optimizer.steps == 4
    got = resumed.model.run({"x": x})["logits"]
    np.testing.assert_allclose(got, straight.model.run({"x": x})["logits"], rtol=1e-4, atol=1e-5)


def test_edited_host_weights_reach_the_device():
    """Host views of the weights may be edited between steps (EarlyStopping restores its best this way)."""
    x, y = _data(2)
    tr = edgedl.Trainer(edgedl.load(_small_cnn()), trainable="last:1", optimizer="sgd", device="cuda")
    tr.params["fc_w"][...] = 0.0
    tr.params["fc_b"][...] = 0.0
    out = tr.predict(x)
    np.testing.assert_array_equal(out, np.zeros_like(out))


def test_trainer_device_errors():
    with pytest.raises(EdgeDLError, match="device must be 'cpu' or 'cuda'"):
        edgedl.Trainer(edgedl.load(_small_cnn()), device="tpu")
