"""The CUDA backend (device="cuda") against the CPU backend, in numba's CUDA simulator (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1 unless told otherwise): tiny shapes, every kernel through an ONNX model, host steps,
device arrays in and out, and the errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl.errors import EdgeDLError, InputError

cuda = pytest.importorskip("numba.cuda")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RNG = np.random.default_rng(0)


def _needs_cuda():
    from edgedl.kernels.cuda import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _compare(proto, feeds, rtol=1e-5, atol=1e-5, host_steps=0):
    """Run on the CPU and on CUDA; the CUDA plan has ``host_steps`` host steps."""
    _needs_cuda()
    cpu = edgedl.load(proto).run(feeds)
    model = edgedl.load(proto, device="cuda")
    assert model.device == "cuda"
    plan = model.cuda_plan({k: v.shape for k, v in feeds.items()})
    assert len(plan.host_steps()) == host_steps, plan.host_steps()
    got = model.run(feeds)
    assert set(got) == set(cpu)
    for name in cpu:
        np.testing.assert_allclose(got[name], cpu[name], rtol=rtol, atol=atol, err_msg=name)
    return model


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {"alpha": 0.2}),
                                      ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}),
                                      ("Elu", {"alpha": 0.7})])
def test_activations(op, attrs):
    x = _f32(2, 3, 5) * 4
    proto = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [_vi("x", [2, 3, 5])], [_vi("y", [2, 3, 5])])
    _compare(proto, {"x": x})


def test_clip_with_constant_bounds():
    inits = [numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
             numpy_helper.from_array(np.array(0.75, np.float32), "hi")]
    proto = _model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [_vi("x", [4, 6])], [_vi("y", [4, 6])],
                   inits)
    _compare(proto, {"x": _f32(4, 6)})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (3, 1)), ((1, 4), (3, 1)),
                                             ((2, 1, 3, 2), (4, 1, 2)), ((3,), ())])
def test_binary_broadcasting(op, a_shape, b_shape):
    out = np.broadcast_shapes(a_shape, b_shape)
    b = _f32(*b_shape) if op != "Div" else np.abs(_f32(*b_shape)) + 0.5
    proto = _model([helper.make_node(op, ["a", "b"], ["y"])], [_vi("a", list(a_shape)), _vi("b", list(b_shape))],
                   [_vi("y", list(out))])
    _compare(proto, {"a": _f32(*a_shape), "b": np.asarray(b, np.float32)})


@pytest.mark.parametrize("trans_a,trans_b,c_shape", [(0, 0, (5,)), (1, 0, (3, 5)), (0, 1, (3, 1)), (1, 1, None)])
def test_gemm(trans_a, trans_b, c_shape):
    m, k, n = 3, 17, 5
    a = _f32(*((k, m) if trans_a else (m, k)))
    b = _f32(*((n, k) if trans_b else (k, n)))
    inits = [numpy_helper.from_array(b, "b")]
    ins = ["a", "b"]
    if c_shape is not None:
        inits.append(numpy_helper.from_array(_f32(*c_shape), "c"))
        ins.append("c")
    node = helper.make_node("Gemm", ins, ["y"], transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0)
    proto = _model([node, helper.make_node("Relu", ["y"], ["z"])], [_vi("a", list(a.shape))], [_vi("z", [m, n])],
                   inits)
    _compare(proto, {"a": a})  # Gemm + Relu fuse into one kernel with an activation epilogue


@pytest.mark.parametrize("a_shape,b_shape", [((4, 20), (20, 3)), ((2, 3, 20), (20, 6)), ((2, 3, 5, 18), (2, 3, 18, 4))])
def test_matmul(a_shape, b_shape):
    out = np.matmul(np.zeros(a_shape), np.zeros(b_shape)).shape
    proto = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [_vi("a", list(a_shape)),
                                                                       _vi("b", list(b_shape))], [_vi("y", list(out))])
    _compare(proto, {"a": _f32(*a_shape), "b": _f32(*b_shape)})


@pytest.mark.parametrize("case", [
    dict(x=(1, 3, 7, 6), w=(4, 3, 3, 3), pads=[1, 1, 1, 1]),
    dict(x=(2, 4, 8, 8), w=(4, 1, 3, 3), pads=[1, 0, 2, 1], group=4, strides=[2, 1]),  # depthwise, asymmetric
    dict(x=(1, 4, 9, 9), w=(6, 2, 3, 2), group=2, dilations=[2, 1], strides=[1, 2]),
    dict(x=(1, 3, 11), w=(5, 3, 4), pads=[2, 1], strides=[2]),  # 1-D
    dict(x=(1, 2, 6, 6), w=(3, 2, 1, 1), bias=False),
])
def test_conv(case):
    x, w = _f32(*case["x"]), _f32(*case["w"])
    attrs = {k: case[k] for k in ("pads", "group", "strides", "dilations") if k in case}
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if case.get("bias", True):
        inits.append(numpy_helper.from_array(_f32(w.shape[0]), "b"))
        ins.append("b")
    cpu = edgedl.load(_model([helper.make_node("Conv", ins, ["y"], **attrs)], [_vi("x", list(x.shape))],
                             [_vi("y", None)], inits))
    out_shape = cpu.plan().types["y"].shape
    nodes = [helper.make_node("Conv", ins, ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])]
    _compare(_model(nodes, [_vi("x", list(x.shape))], [_vi("y", list(out_shape))], inits), {"x": x}, rtol=1e-4)


def test_conv_with_fused_residual():
    x = _f32(1, 4, 5, 5)
    inits = [numpy_helper.from_array(_f32(4, 4, 3, 3), "w"), numpy_helper.from_array(_f32(4), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    _compare(_model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("y", [1, 4, 5, 5])], inits), {"x": x}, rtol=1e-4)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2], ceil_mode=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], count_include_pad=1)),
    ("GlobalAveragePool", {}),
])
def test_pooling(op, attrs):
    x = _f32(2, 3, 7, 8)
    cpu = edgedl.load(_model([helper.make_node(op, ["x"], ["y"], **attrs)], [_vi("x", [2, 3, 7, 8])],
                             [_vi("y", None)]))
    shape = cpu.plan().types["y"].shape
    _compare(_model([helper.make_node(op, ["x"], ["y"], **attrs)], [_vi("x", [2, 3, 7, 8])],
                    [_vi("y", list(shape))]), {"x": x})


@pytest.mark.parametrize("op,opset,axis", [("Softmax", 13, -1), ("LogSoftmax", 13, -1), ("Softmax", 11, 1)])
def test_softmax(op, opset, axis):
    x = _f32(3, 4, 5) * 3
    proto = _model([helper.make_node(op, ["x"], ["y"], axis=axis)], [_vi("x", [3, 4, 5])], [_vi("y", [3, 4, 5])],
                   opset=opset)
    _compare(proto, {"x": x})


def test_nodes_without_cuda_kernels_run_on_the_host_between_transfers():
    """A Transpose (no CUDA kernel) and an If (control flow) between CUDA steps."""
    branch_out = _vi("t_out", [3, 4])
    then = helper.make_graph([helper.make_node("Relu", ["t"], ["t_out"])], "then", [], [branch_out])
    other = helper.make_graph([helper.make_node("Neg", ["t"], ["e_out"])], "else", [], [_vi("e_out", [3, 4])])
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Transpose", ["s"], ["t"], perm=[1, 0]),
             helper.make_node("If", ["cond"], ["u"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["u", "t"], ["y"])]
    proto = _model(nodes, [_vi("x", [4, 3]), _vi("cond", [], TensorProto.BOOL)], [_vi("y", [3, 4])])
    for cond in (True, False):
        model = _compare(proto, {"x": _f32(4, 3), "cond": np.array(cond)}, host_steps=2)
    hosts = model.cuda_plan({"x": (4, 3), "cond": ()}).host_steps()
    assert any("Transpose" in h for h in hosts) and any("If" in h for h in hosts)


def test_digits_cnn_end_to_end_with_device_arrays():
    _needs_cuda()
    path = os.path.join(ROOT, "examples", "digits_cnn.onnx")
    x = np.load(os.path.join(ROOT, "examples", "digits_calibration.npz"))["input"][:3]
    ref = edgedl.load(path).run({"input": x})
    model = edgedl.load(path, device="cuda")
    assert model.cuda_plan({"input": x.shape}).host_steps() == []
    got = model.run({"input": x})
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-4)
        assert got[name].argmax(-1).tolist() == ref[name].argmax(-1).tolist()
    dev = model.run({"input": cuda.to_device(x)}, outputs="device")
    for name in ref:
        assert hasattr(dev[name], "copy_to_host")
        np.testing.assert_allclose(dev[name].copy_to_host(), ref[name], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="must have shape"):
        model.run({"input": cuda.to_device(np.ascontiguousarray(x[:, :, :4]))})


def test_device_errors(monkeypatch):
    path = os.path.join(ROOT, "examples", "digits_cnn.onnx")
    with pytest.raises(EdgeDLError, match="device must be"):
        edgedl.load(path, device="gpu")
    with pytest.raises(InputError, match="outputs='device'"):
        edgedl.load(path).run({"input": np.zeros((1, 1, 8, 8), np.float32)}, outputs="device")
    import edgedl.kernels.cuda as kc

    monkeypatch.setattr(kc, "_reason", ["numba.cuda finds no usable GPU (no CUDA driver or GPU found)"])
    with pytest.raises(EdgeDLError, match="cannot run here: numba.cuda finds no usable GPU"):
        edgedl.load(path, device="cuda")
    assert edgedl.load(path, target="jetson-orin-nano").device == "cpu"  # no usable GPU: the CPU cores
