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
from edgedl.ir import TensorType

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


def test_conv_with_fused_silu():
    """x * Sigmoid(x) after a convolution becomes its Swish epilogue (activation code 9) on the device too."""
    x = _f32(1, 4, 6, 6)
    inits = [numpy_helper.from_array(_f32(5, 4, 3, 3), "w"), numpy_helper.from_array(_f32(5), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    _compare(_model(nodes, [_vi("x", [1, 4, 6, 6])], [_vi("y", [1, 5, 6, 6])], inits), {"x": x}, rtol=1e-4)


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
    """A Floor (no CUDA kernel) and an If (control flow) between CUDA steps."""
    branch_out = _vi("t_out", [3, 4])
    then = helper.make_graph([helper.make_node("Relu", ["t"], ["t_out"])], "then", [], [branch_out])
    other = helper.make_graph([helper.make_node("Neg", ["t"], ["e_out"])], "else", [], [_vi("e_out", [3, 4])])
    nodes = [helper.make_node("Sigmoid", ["x"], ["q"]), helper.make_node("Floor", ["q"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=[1, 0]),
             helper.make_node("If", ["cond"], ["u"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["u", "t"], ["y"])]
    proto = _model(nodes, [_vi("x", [4, 3]), _vi("cond", [], TensorProto.BOOL)], [_vi("y", [3, 4])])
    for cond in (True, False):
        model = _compare(proto, {"x": _f32(4, 3), "cond": np.array(cond)}, host_steps=2)
    hosts = model.cuda_plan({"x": (4, 3), "cond": ()}).host_steps()
    assert any("Floor" in h for h in hosts) and any("If" in h for h in hosts)


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
    monkeypatch.setattr(kc, "simulated", lambda: False)
    on_cpu = edgedl.load(path, target="jetson-orin-nano")  # no usable GPU: the CPU cores, and why
    assert on_cpu.device == "cpu" and "prefers cuda" in on_cpu.device_note


@pytest.mark.parametrize("shape,perm", [((2, 3, 4), [2, 0, 1]), ((3, 5), None), ((2, 1, 3, 2), [0, 3, 1, 2])])
def test_transpose(shape, perm):
    attrs = {} if perm is None else {"perm": perm}
    out = np.transpose(np.zeros(shape), perm).shape
    proto = _model([helper.make_node("Transpose", ["x"], ["y"], **attrs)], [_vi("x", list(shape))],
                   [_vi("y", list(out))])
    _compare(proto, {"x": _f32(*shape)})


def test_concat_and_expand():
    nodes = [helper.make_node("Concat", ["a", "b", "a"], ["c"], axis=1),
             helper.make_node("Expand", ["c", "shape"], ["y"])]
    inits = [numpy_helper.from_array(np.array([2, 3, 7, 4], np.int64), "shape")]
    proto = _model(nodes, [_vi("a", [3, 2, 1]), _vi("b", [3, 3, 1])], [_vi("y", [2, 3, 7, 4])], inits)
    _compare(proto, {"a": _f32(3, 2, 1), "b": _f32(3, 3, 1)})


def test_int64_concat_runs_on_the_device():
    nodes = [helper.make_node("Concat", ["a", "b"], ["y"], axis=0)]
    proto = _model(nodes, [_vi("a", [2, 3], TensorProto.INT64), _vi("b", [1, 3], TensorProto.INT64)],
                   [_vi("y", [3, 3], TensorProto.INT64)])
    _compare(proto, {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.array([[7, 8, 9]], np.int64)})


@pytest.mark.parametrize("op", ["Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Sin", "Cos", "Erf"])
def test_unary_math(op):
    x = _f32(3, 7)
    if op in ("Sqrt", "Log", "Reciprocal"):
        x = np.abs(x) + 0.25
    proto = _model([helper.make_node(op, ["x"], ["y"])], [_vi("x", [3, 7])], [_vi("y", [3, 7])])
    _compare(proto, {"x": x})


@pytest.mark.parametrize("exponent", [np.array(2.0, np.float32), np.array(0.5, np.float32), None])
def test_pow(exponent):
    x = np.abs(_f32(4, 5)) + 0.1
    inits = [] if exponent is None else [numpy_helper.from_array(exponent, "p")]
    inputs = [_vi("x", [4, 5])] + ([_vi("p", [5])] if exponent is None else [])
    proto = _model([helper.make_node("Pow", ["x", "p"], ["y"])], inputs, [_vi("y", [4, 5])], inits)
    feeds = {"x": x} if exponent is not None else {"x": x, "p": _f32(5)}
    _compare(proto, feeds, rtol=1e-4)


@pytest.mark.parametrize("op", ["Max", "Min", "Sum"])
def test_variadic_two_inputs(op):
    proto = _model([helper.make_node(op, ["a", "b"], ["y"])], [_vi("a", [2, 3, 4]), _vi("b", [3, 1])],
                   [_vi("y", [2, 3, 4])])
    _compare(proto, {"a": _f32(2, 3, 4), "b": _f32(3, 1)})


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL1",
                                "ReduceL2"])
@pytest.mark.parametrize("axes,keepdims", [([2], 1), ([1, 2], 0), ([-1], 0), ([0], 1)])
def test_reduce(op, axes, keepdims):
    x = _f32(2, 3, 4, 5)
    cpu = edgedl.load(_model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], [_vi("x", [2, 3, 4, 5])],
                             [_vi("y", None)], [numpy_helper.from_array(np.array(axes, np.int64), "axes")], opset=18))
    shape = cpu.plan().types["y"].shape
    proto = _model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], [_vi("x", [2, 3, 4, 5])],
                   [_vi("y", list(shape))], [numpy_helper.from_array(np.array(axes, np.int64), "axes")], opset=18)
    _compare(proto, {"x": x}, rtol=1e-4)


@pytest.mark.parametrize("starts,ends,axes,steps", [([1], [3], [1], [1]), ([0, 4], [2, 0], [0, 2], [1, -2]),
                                                    ([-3], [100], [2], [2])])
def test_slice(starts, ends, axes, steps):
    x = _f32(3, 4, 6)
    inits = [numpy_helper.from_array(np.array(v, np.int64), n)
             for v, n in ((starts, "s"), (ends, "e"), (axes, "a"), (steps, "t"))]
    node = helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])
    cpu = edgedl.load(_model([node], [_vi("x", [3, 4, 6])], [_vi("y", None)], inits))
    shape = cpu.plan().types["y"].shape
    _compare(_model([node], [_vi("x", [3, 4, 6])], [_vi("y", list(shape))], inits), {"x": x})


def test_batch_normalization_inference():
    c = 3
    inits = [numpy_helper.from_array(v, n) for v, n in ((_f32(c), "g"), (_f32(c), "b"), (_f32(c), "m"),
                                                         (np.abs(_f32(c)) + 0.5, "v"))]
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3)
    proto = _model([node], [_vi("x", [2, c, 4, 5])], [_vi("y", [2, c, 4, 5])], inits)
    model = edgedl.load(proto, optimize=False, device="cuda")  # unfused: the BatchNormalization kernel itself
    x = _f32(2, c, 4, 5)
    assert model.cuda_plan({"x": x.shape}).host_steps() == []
    np.testing.assert_allclose(model.run({"x": x})["y"], edgedl.load(proto, optimize=False).run({"x": x})["y"],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [
    dict(x=(1, 3, 4, 5), w=(3, 2, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0]),
    dict(x=(2, 4, 3, 3), w=(4, 1, 2, 2), strides=[2, 2], group=2),
    dict(x=(1, 2, 5), w=(2, 3, 4), strides=[3], dilations=[2], pads=[1, 2]),
    dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), output_shape=[8, 8], strides=[2, 2]),
])
def test_conv_transpose(case):
    x, w = _f32(*case["x"]), _f32(*case["w"])
    attrs = {k: case[k] for k in ("pads", "group", "strides", "dilations", "output_padding", "output_shape")
             if k in case}
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(_f32(w.shape[1] * case.get("group", 1)), "b")]
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    cpu = edgedl.load(_model([node], [_vi("x", list(x.shape))], [_vi("y", None)], inits))
    shape = cpu.plan().types["y"].shape
    _compare(_model([node], [_vi("x", list(x.shape))], [_vi("y", list(shape))], inits), {"x": x}, rtol=1e-4)


@pytest.mark.parametrize("attrs,scales", [
    (dict(mode="nearest"), [1, 1, 2, 2]),
    (dict(mode="nearest", nearest_mode="floor", coordinate_transformation_mode="asymmetric"), [1, 1, 1.5, 0.5]),
    (dict(mode="linear"), [1, 1, 2, 3]),
    (dict(mode="linear", coordinate_transformation_mode="align_corners"), [1, 1, 0.5, 2]),
    (dict(mode="cubic"), [1, 1, 2, 2]),
    (dict(mode="linear", antialias=1), [1, 1, 0.5, 0.5]),
])
def test_resize(attrs, scales):
    x = _f32(1, 2, 6, 4)
    inits = [numpy_helper.from_array(np.array(scales, np.float32), "scales")]
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
    cpu = edgedl.load(_model([node], [_vi("x", [1, 2, 6, 4])], [_vi("y", None)], inits, opset=18))
    shape = cpu.plan().types["y"].shape
    _compare(_model([node], [_vi("x", [1, 2, 6, 4])], [_vi("y", list(shape))], inits, opset=18), {"x": x},
             rtol=1e-4)


def test_bench_on_the_cuda_device(tmp_path):
    _needs_cuda()
    path = os.path.join(ROOT, "examples", "digits_cnn.onnx")
    report = edgedl.bench(path, runs=2, warmup=0, max_secs=1.0, threads=[1], device="cuda", op_profile=True,
                          compare=["onnxruntime"])
    ed, ort = report["runs"]
    assert report["settings"]["device"] == "cuda" and ed["device"] == "cuda" and ed["status"] == "ok"
    assert ed["ops"] and all(o["kernel"].startswith("cuda") for o in ed["ops"])
    assert ort["agreement"]["top1"] == 1.0 and ort["agreement"]["max_rel"] < 1e-4


def _int8_compare(proto, feeds, host_steps=0):
    """int8 must match the CPU int8 path exactly."""
    _needs_cuda()
    cpu = edgedl.load(proto).run(feeds)
    model = edgedl.load(proto, device="cuda")
    assert len(model.cuda_plan({k: v.shape for k, v in feeds.items()}).host_steps()) == host_steps
    got = model.run(feeds)
    for name in cpu:
        assert got[name].dtype == cpu[name].dtype
        np.testing.assert_array_equal(got[name], cpu[name], err_msg=name)


@pytest.mark.parametrize("qtype", [TensorProto.INT8, TensorProto.UINT8])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_dequantize(qtype, per_axis):
    x = _f32(2, 3, 4) * 40
    x[0, 0, :2] = [2.5, -3.5]  # ties round to even
    scale = np.array([0.5, 0.25, 1.0], np.float32) if per_axis else np.array(0.5, np.float32)
    np_q = np.int8 if qtype == TensorProto.INT8 else np.uint8
    zero = (np.array([1, -2, 0]) if per_axis else np.array(3)).astype(np_q) if qtype == TensorProto.INT8 else \
        (np.array([128, 120, 130]) if per_axis else np.array(128)).astype(np_q)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    proto = _model(nodes, [_vi("x", [2, 3, 4])], [_vi("q", [2, 3, 4], qtype), _vi("y", [2, 3, 4])], inits,
                   opset=19)
    _int8_compare(proto, {"x": x})


@pytest.mark.parametrize("requant", ["float", "double", "single"])
@pytest.mark.parametrize("case", [dict(x=(1, 4, 6, 5), w=(6, 4, 3, 3), pads=[1, 1, 1, 1]),
                                  dict(x=(2, 4, 7, 7), w=(4, 1, 3, 3), group=4, strides=[2, 2], pads=[1, 0, 1, 1]),
                                  dict(x=(1, 3, 9), w=(5, 3, 3), dilations=[2])])
def test_qlinearconv_bit_exact(requant, case):
    x = RNG.integers(-128, 128, case["x"]).astype(np.int8)
    w = RNG.integers(-127, 128, case["w"]).astype(np.int8)
    cout = case["w"][0]
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.array(0.02, np.float32), "xs"), (np.array(3, np.int8), "xz"), (w, "w"),
        ((RNG.random(cout) * 0.01 + 0.001).astype(np.float32), "ws"), (np.zeros(cout, np.int8), "wz"),
        (np.array(0.05, np.float32), "ys"), (np.array(-5, np.int8), "yz"),
        (RNG.integers(-500, 500, cout).astype(np.int32), "b"))]
    attrs = {k: case[k] for k in ("pads", "group", "strides", "dilations") if k in case}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            _requant=requant, **attrs)
    cpu = edgedl.load(_model([node], [_vi("x", list(x.shape), TensorProto.INT8)],
                             [_vi("y", None, TensorProto.INT8)], inits))
    shape = cpu.plan().types["y"].shape
    proto = _model([node], [_vi("x", list(x.shape), TensorProto.INT8)], [_vi("y", list(shape), TensorProto.INT8)],
                   inits)
    _int8_compare(proto, {"x": x})


def test_int8_digits_model_matches_the_cpu_int8_path(tmp_path):
    _needs_cuda()
    path = os.path.join(ROOT, "examples", "digits_cnn.onnx")
    data = np.load(os.path.join(ROOT, "examples", "digits_calibration.npz"))["input"]
    q = edgedl.quantize(edgedl.load(path), [data[:64]], progress=False)
    q.save(str(tmp_path / "d8.onnx"))
    x = data[64:68]
    cpu = edgedl.load(str(tmp_path / "d8.onnx")).run({"input": x})
    model = edgedl.load(str(tmp_path / "d8.onnx"), device="cuda")
    got = model.run({"input": x})
    for name in cpu:
        np.testing.assert_array_equal(got[name], cpu[name])


@pytest.mark.parametrize("requant", ["float", "double"])
def test_qlinearmatmul_bit_exact(requant):
    a = RNG.integers(0, 256, (2, 3, 20)).astype(np.uint8)
    b = RNG.integers(-128, 128, (20, 6)).astype(np.int8)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.array(0.03, np.float32), "as"), (np.array(120, np.uint8), "az"), (b, "b"),
        ((RNG.random(6) * 0.01 + 0.002).astype(np.float32), "bs"), (np.zeros(6, np.int8), "bz"),
        (np.array(0.07, np.float32), "ys"), (np.array(128, np.uint8), "yz"))]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], _requant=requant)
    proto = _model([node], [_vi("a", [2, 3, 20], TensorProto.UINT8)], [_vi("y", [2, 3, 6], TensorProto.UINT8)], inits)
    _int8_compare(proto, {"a": a})


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("requant", ["double", "single", "float"])
@pytest.mark.parametrize("b_shape", [(2, 3, 8), (3, 1), (1, 8)])
def test_qlinear_add_mul(op, requant, b_shape):
    from edgedl.kernels.cuda import simulated

    a = RNG.integers(-128, 128, (2, 3, 8)).astype(np.int8)
    b = RNG.integers(-128, 128, b_shape).astype(np.int8)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.array(0.031, np.float32), "as"), (np.array(-3, np.int8), "az"), (np.array(0.047, np.float32), "bs"),
        (np.array(5, np.int8), "bz"), (np.array(0.06 if op == "QLinearAdd" else 0.9, np.float32), "ys"),
        (np.array(2, np.int8), "yz"))]
    node = helper.make_node(op, ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], domain="com.microsoft",
                            _requant=requant)
    graph = helper.make_graph([node], "g", [_vi("a", [2, 3, 8], TensorProto.INT8), _vi("b", list(b_shape),
                                                                                        TensorProto.INT8)],
                              [_vi("y", [2, 3, 8], TensorProto.INT8)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    feeds = {"a": a, "b": b}
    if requant == "float" and op == "QLinearAdd" and simulated():
        # the simulator's fma rounds twice (a real GPU's once, as onnxruntime's AVX2 kernel): within 1 LSB here
        _needs_cuda()
        got = edgedl.load(proto, device="cuda").run(feeds)["y"].astype(int)
        assert np.abs(got - edgedl.load(proto).run(feeds)["y"].astype(int)).max() <= 1
        return
    _int8_compare(proto, feeds)


@pytest.mark.parametrize("requant", ["double", "single", "float"])
def test_qlinear_global_average_pool(requant):
    x = RNG.integers(-128, 128, (2, 3, 5, 4)).astype(np.int8)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.array(0.05, np.float32), "xs"), (np.array(-7, np.int8), "xz"), (np.array(0.02, np.float32), "ys"),
        (np.array(4, np.int8), "yz"))]
    node = helper.make_node("QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"],
                            domain="com.microsoft", _requant=requant)
    graph = helper.make_graph([node], "g", [_vi("x", [2, 3, 5, 4], TensorProto.INT8)],
                              [_vi("y", [2, 3, 1, 1], TensorProto.INT8)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    _int8_compare(proto, {"x": x})


def test_zero_copy_inputs_and_outputs_on_an_integrated_gpu():
    """Mapped host memory for inputs and outputs (a Jetson), the same results."""
    _needs_cuda()
    from edgedl.runtime.cuda_plan import CudaPlan

    path = os.path.join(ROOT, "examples", "digits_cnn.onnx")
    x = np.load(os.path.join(ROOT, "examples", "digits_calibration.npz"))["input"][:2]
    model = edgedl.load(path, device="cuda")
    plan = CudaPlan(model.plan({"input": x.shape}), model._runner.op_classes, zero_copy=True)
    assert plan.zero_copy
    ref = edgedl.load(path).run({"input": x})
    for _ in range(2):  # the mapped buffers are reused run after run
        got = plan.run({"input": x})
        np.testing.assert_allclose(got["logits"], ref["logits"], rtol=1e-4, atol=1e-4)


def test_warmup_jobs_compile_the_cuda_kernels():
    _needs_cuda()
    from edgedl.runtime.warmup import CATALOG, _describe, model_jobs, run_job

    path = os.path.join(ROOT, "examples", "digits_cnn.onnx")
    jobs = [j for j in model_jobs([path], (1,), cuda=True) if j.get("device") == "cuda"]
    assert len(jobs) == 1 and "on cuda" in _describe(jobs[0])
    assert run_job(jobs[0])["seconds"] > 0
    int8 = {"zoo": "digits_cnn", "kwargs": dict(CATALOG)["digits_cnn"], "precision": "int8", "threads": 1,
            "device": "cuda"}
    assert run_job(int8)["seconds"] > 0


def test_out_of_device_memory_is_a_clear_error(monkeypatch):
    _needs_cuda()
    from collections import namedtuple

    info = namedtuple("info", "free total")(1024, 4096)
    monkeypatch.setattr(type(cuda.current_context()), "get_memory_info", lambda self: info)
    model = edgedl.load(os.path.join(ROOT, "examples", "digits_cnn.onnx"), device="cuda")
    with pytest.raises(EdgeDLError, match=r"needs about .* MiB of GPU memory .* 0\.0 MiB of 0\.0 MiB are free"):
        model.run({"input": np.zeros((1, 1, 8, 8), np.float32)})


def test_fine_tuning_with_the_frozen_backbone_on_the_gpu():
    """Trainer on a model loaded with device="cuda": the frozen prefix runs as a CUDA plan, the trained last
    layer on the host; the same losses and weights as on the CPU."""
    _needs_cuda()
    path = os.path.join(ROOT, "examples", "digits_cnn.onnx")
    data = np.load(os.path.join(ROOT, "examples", "digits_calibration.npz"))["input"][:16]
    labels = np.arange(16) % 10
    results = []
    for device in ("cpu", "cuda"):
        model = edgedl.load(path, device=device)
        trainer = edgedl.Trainer(model, optimizer=edgedl.train.Adam(lr=1e-2), trainable="last:1", seed=0)
        losses = [trainer.train_step(data[:4], labels[:4])[0] for _ in range(2)]
        results.append((losses, {k: v.copy() for k, v in trainer.params.items()}))
        if device == "cuda":
            prefix = trainer.runner._prefix_model(trainer.runner.train_split)
            assert prefix is not None and prefix.device == "cuda"
    (l_cpu, p_cpu), (l_gpu, p_gpu) = results
    np.testing.assert_allclose([float(v) for v in l_gpu], [float(v) for v in l_cpu], rtol=1e-4)
    for name in p_cpu:
        np.testing.assert_allclose(p_gpu[name], p_cpu[name], rtol=1e-4, atol=1e-5)


def test_bundled_keyword_model_end_to_end():
    """The bundled example on the GPU path: every step a CUDA kernel, the CPU backend's scores."""
    _needs_cuda()
    path = os.path.join(ROOT, "examples", "kws_tc_resnet.onnx")
    x = np.load(os.path.join(ROOT, "examples", "spectrogram.npy"))
    model = edgedl.load(path, device="cuda")
    name = model.inputs[0].name
    assert model.cuda_plan({name: x.shape}).host_steps() == []
    ref = edgedl.load(path).run({name: x})
    got = model.run({name: x})
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6)
        assert got[k].argmax() == ref[k].argmax()


@pytest.mark.parametrize("model_file", ["digits_cnn.onnx"])
def test_fp16_storage(model_file):
    """precision="fp16": float16 weights and activations on the device, float32 arithmetic. Tolerance: each
    stored tensor is rounded to float16 (relative 2^-11 ~ 4.9e-4), a few roundings compound over the layers:
    within 1e-2 of the largest output, the same top-1."""
    _needs_cuda()
    path = os.path.join(ROOT, "examples", model_file)
    cpu = edgedl.load(path)
    name = cpu.inputs[0].name
    x = np.load(os.path.join(ROOT, "examples", "digits_calibration.npz"))["input"][:2] if "digits" in model_file \
        else np.load(os.path.join(ROOT, "examples", "spectrogram.npy"))
    model = edgedl.load(path, device="cuda", precision="fp16")
    assert model.precision == "fp16"
    plan = model.cuda_plan({name: x.shape})
    assert plan.half and plan.constant_bytes * 2 <= sum(v.nbytes for v in model.plan({name: x.shape}).template
                                                         if isinstance(v, np.ndarray)) + 64
    ref = cpu.run({name: x})
    feeds = (x, cuda.to_device(x)) if "digits" in model_file else (x,)  # numpy and float32 device feeds
    for feed in feeds:
        got = model.run({name: feed})
        for k in ref:
            assert got[k].dtype == np.float32
            scale = float(np.abs(ref[k]).max())
            assert float(np.abs(got[k] - ref[k]).max()) <= 1e-2 * scale
            top = [a.reshape(len(a), -1).argmax(-1).tolist() for a in (got[k], ref[k])]
            assert top[0] == top[1]
    dev = model.run({name: x}, outputs="device")
    assert all(np.dtype(v.dtype) == np.float32 for v in dev.values())
    with pytest.raises(EdgeDLError, match="runs on the cuda device"):
        edgedl.load(path, precision="fp16")


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("case", [
    dict(x=(2, 5, 7, 6), w=(9, 5, 3, 3), pads=(1, 2), strides=(1, 2), dilations=(1, 1), group=1),
    dict(x=(1, 6, 8, 5), w=(18, 2, 2, 3), pads=(0, 1), strides=(2, 1), dilations=(2, 1), group=3),
    dict(x=(1, 4, 1, 9), w=(17, 4, 1, 4), pads=(0, 2), strides=(1, 3), dilations=(1, 1), group=1),
])
def test_conv_kernels_directly(tiled, case):
    """Both convolution kernels (implicit GEMM and direct) against the float64 reference, with bias,
    residual and a fused activation."""
    _needs_cuda()
    from edgedl.kernels.cuda.conv import Conv2d
    from edgedl.ops.conv import conv_ref
    from edgedl.ops.fused import activation_ref

    x, w = _f32(*case["x"]), _f32(*case["w"])
    b = _f32(case["w"][0])
    ph, pw = case["pads"]
    ref = conv_ref(x, w, b, list(case["strides"]), [ph, pw, ph, pw], list(case["dilations"]), case["group"])
    res = _f32(*ref.shape)
    want = activation_ref((ref + res).astype(np.float32), 3, 0.1, 0.0)
    k = Conv2d(x.shape, w.shape, ref.shape, case["strides"], case["pads"], case["dilations"], case["group"],
               (3, 0.1, 0.0), tiled=tiled)
    y = cuda.device_array(ref.shape, np.float32)
    k(cuda.to_device(x), cuda.to_device(w), cuda.to_device(b), cuda.to_device(res), y)
    np.testing.assert_allclose(y.copy_to_host(), want, rtol=1e-4, atol=1e-4)


def test_command_line_on_the_cuda_device(tmp_path, capsys):
    _needs_cuda()
    from edgedl.cli import main

    path = os.path.join(ROOT, "examples", "digits_cnn.onnx")
    np.save(tmp_path / "x.npy", np.load(os.path.join(ROOT, "examples", "digits_calibration.npz"))["input"][:1])
    assert main(["info", path, "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "device cuda" in out and "7 steps on the GPU, 0 on the host" in out
    assert main(["run", path, "--input", str(tmp_path / "x.npy"), "--device", "cuda", "-o",
                 str(tmp_path / "y.npz")]) == 0
    got = np.load(tmp_path / "y.npz")["logits"]
    ref = edgedl.load(path).run({"input": np.load(tmp_path / "x.npy")})["logits"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert main(["ops"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "float32" in rows["Conv"] and "int8,uint8" in rows["QLinearConv"]


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("requant", ["double", "float"])
def test_qconv_kernels_directly(tiled, requant):
    """Both int8 convolution kernels against the CPU int8 path (the op's reference), bit for bit."""
    _needs_cuda()
    from edgedl.kernels.cuda.quant import QConv2d

    x = RNG.integers(0, 256, (2, 6, 7, 5)).astype(np.uint8)
    w = RNG.integers(-127, 128, (18, 2, 3, 2)).astype(np.int8)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.array(0.02, np.float32), "xs"), (np.array(131, np.uint8), "xz"), (w, "w"),
        ((RNG.random(18) * 0.01 + 0.001).astype(np.float32), "ws"), (np.zeros(18, np.int8), "wz"),
        (np.array(0.05, np.float32), "ys"), (np.array(120, np.uint8), "yz"),
        (RNG.integers(-500, 500, 18).astype(np.int32), "b"))]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], group=3,
                            pads=[1, 0, 1, 1], strides=[2, 1], _requant=requant)
    model = edgedl.load(_model([node], [_vi("x", list(x.shape), TensorProto.UINT8)],
                               [_vi("y", None, TensorProto.UINT8)], inits))
    ref = model.run({"x": x})["y"]
    op = model.plan().steps[0].op  # the op instance, its geometry set by its shape rule
    consts = [None] + [numpy_helper.to_array(t) for t in inits[:2]] + [w] + \
        [numpy_helper.to_array(t) for t in inits[3:]]
    ins = [TensorType(x.shape, x.dtype)] + [TensorType(c.shape, c.dtype) for c in consts[1:]]
    x_zp, w_zp, req = op._params(consts, ins, [TensorType(ref.shape, ref.dtype)])
    kernel, strides, dilations, pads = op._geometry4()
    k = QConv2d(x.shape, w.shape, ref.shape, strides, pads, dilations, 3, x_zp, w_zp, req, tiled=tiled)
    y = cuda.device_array(ref.shape, np.uint8)
    k(cuda.to_device(x), cuda.to_device(w), cuda.to_device(consts[8]), y)
    np.testing.assert_array_equal(y.copy_to_host(), ref)
