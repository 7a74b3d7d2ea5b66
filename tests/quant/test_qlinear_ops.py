"""QOperator ops (QLinearConv, QLinearMatMul, com.microsoft QGemm, ConvInteger, MatMulInteger,
DynamicQuantizeLinear) through edgedl.load against onnxruntime on the same model, and each kernel against
the op's numpy reference (bit-exact)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl

ort = pytest.importorskip("onnxruntime")

_T = {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8, np.float32: TensorProto.FLOAT,
      np.int32: TensorProto.INT32}


def _model(nodes, inputs, outputs, inits, ms=False):
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    g = helper.make_graph(nodes, "q", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=opsets)


def _run_both(model, feeds):
    data = model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    m = edgedl.load(data)
    got = m.run(feeds)
    return [got[o.name] for o in model.graph.output], want, m


def _kernel_vs_ref(model, feeds):
    """The compiled kernels against the ops' numpy references: run the plan, then each op's ref."""
    m = edgedl.load(model.SerializeToString())
    out = m.run(feeds)
    plan = m.plan({k: v.shape for k, v in feeds.items()})
    assert any(s.kernel.impl == "numba" for s in plan.steps)
    step = plan.steps[-1]
    arrays = {**{k: v for k, v in feeds.items()}, **{i.name: numpy_helper.to_array(i) for i in model.graph.initializer}}
    ref = step.op.ref(*[arrays.get(i) if i else None for i in step.node.inputs])[0]
    np.testing.assert_array_equal(out[model.graph.output[0].name], ref)


def _lsb_diff(a, b):
    return int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) if a.size else 0


@pytest.mark.parametrize("xt", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("geo", [
    dict(c=8, m=16, k=3, s=1, p=1, g=1, hw=(10, 12)),
    dict(c=8, m=8, k=3, s=2, p=1, g=8, hw=(11, 9)),       # depthwise, strided
    dict(c=16, m=24, k=1, s=1, p=0, g=1, hw=(7, 7)),      # pointwise
    dict(c=6, m=9, k=3, s=1, p=0, g=3, hw=(8, 8)),        # grouped
    dict(c=4, m=6, k=5, s=1, p=2, g=1, hw=(20,)),         # 1-D
])
def test_qlinearconv_matches_onnxruntime(xt, per_channel, geo):
    rng = np.random.default_rng(7)
    c, m, k, g, hw = geo["c"], geo["m"], geo["k"], geo["g"], geo["hw"]
    nd = len(hw)
    x = rng.integers(np.iinfo(xt).min, np.iinfo(xt).max + 1, (1, c, *hw)).astype(xt)
    w = rng.integers(-127, 128, (m, c // g, *(k,) * nd)).astype(np.int8)
    w_scale = (rng.uniform(0.002, 0.01, m) if per_channel else np.array(0.005)).astype(np.float32)
    w_zp = np.zeros(w_scale.shape, np.int8)
    x_zp = np.array(131 if xt == np.uint8 else 3, xt)
    y_zp = np.array(120 if xt == np.uint8 else -5, xt)
    bias = rng.integers(-3000, 3000, m).astype(np.int32)
    inits = dict(xs=np.array(0.03, np.float32), xz=x_zp, w=w, ws=w_scale, wz=w_zp, ys=np.array(0.2, np.float32),
                 yz=y_zp, b=bias)
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], group=g,
                            strides=[geo["s"]] * nd, pads=[geo["p"]] * 2 * nd)
    model = _model([node], [helper.make_tensor_value_info("x", _T[xt], x.shape)],
                   [helper.make_tensor_value_info("y", _T[xt], None)], inits)
    (got,), (want,), _ = _run_both(model, {"x": x})
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _lsb_diff(got, want) <= 1
    assert np.mean(got != want) < 0.01
    _kernel_vs_ref(model, {"x": x})


@pytest.mark.parametrize("xt", [np.uint8, np.int8])
@pytest.mark.parametrize("shape_a", [(5, 24), (2, 3, 24), (24,)])
def test_qlinearmatmul_matches_onnxruntime(xt, shape_a):
    rng = np.random.default_rng(1)
    a = rng.integers(np.iinfo(xt).min, np.iinfo(xt).max + 1, shape_a).astype(xt)
    b = rng.integers(-127, 128, (24, 10)).astype(np.int8)
    inits = dict(as_=np.array(0.05, np.float32), az=np.array(7, xt), b=b, bs=np.array(0.01, np.float32),
                 bz=np.array(0, np.int8), ys=np.array(0.3, np.float32), yz=np.array(100 if xt == np.uint8 else 2, xt))
    node = helper.make_node("QLinearMatMul", ["a", "as_", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    model = _model([node], [helper.make_tensor_value_info("a", _T[xt], a.shape)],
                   [helper.make_tensor_value_info("y", _T[xt], None)], inits)
    (got,), (want,), _ = _run_both(model, {"a": a})
    assert got.shape == want.shape
    assert _lsb_diff(got, want) <= 1
    _kernel_vs_ref(model, {"a": a})


def test_matmulinteger_and_convinteger_match_onnxruntime():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (6, 33)).astype(np.uint8)
    b = rng.integers(0, 256, (33, 7)).astype(np.uint8)
    model = _model([helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])],
                   [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape)],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                   dict(b=b, az=np.array(12, np.uint8), bz=np.array(140, np.uint8)))
    (got,), (want,), _ = _run_both(model, {"a": a})
    np.testing.assert_array_equal(got, want)
    _kernel_vs_ref(model, {"a": a})

    x = rng.integers(0, 256, (1, 3, 9, 9)).astype(np.uint8)
    w = rng.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)
    model = _model([helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 1, 1])],
                   [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                   dict(w=w, xz=np.array(100, np.uint8), wz=np.array(128, np.uint8)))
    (got,), (want,), _ = _run_both(model, {"x": x})
    np.testing.assert_array_equal(got, want)


def test_dynamicquantizelinear_matches_onnxruntime():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 50)) * 3 + 1).astype(np.float32)
    model = _model([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                   [helper.make_tensor_value_info(n, t, None) for n, t in
                    (("y", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8))], {})
    got, want, _ = _run_both(model, {"x": x})
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    assert _lsb_diff(got[0], want[0]) <= 1


@pytest.mark.parametrize("case", ["normal", "zeros", "one", "negative", "subnormal", "ties", "constant", "big", "inf",
                                  "-inf", "nan", "-nan", "strided"])
def test_dynamicquantizelinear_kernel_is_the_reference(case):
    """The fused kernel (one pass of order-preserving integer keys for the range, then the vectorized quantization)
    against the op's numpy reference, bit for bit; NaN and infinities fall back to the reference's semantics."""
    from edgedl.kernels.cpu.quantize import dynamic_quantize_u8, float_range
    from edgedl.ops.qlinear import DynamicQuantizeLinear

    rng = np.random.default_rng(11)
    x = {"normal": (rng.standard_normal((3, 700)) * 5).astype(np.float32),
         "zeros": np.array([-0.0, 0.0, -0.0], np.float32),
         "one": np.array([3.0], np.float32),
         "negative": np.array([-2.0, -1.0, -7.25], np.float32),
         "subnormal": np.array([1e-42, -1e-40, 5.0, -3e-39], np.float32),
         "ties": np.arange(-255, 256, dtype=np.float32) * np.float32(0.5),  # x / scale lands on .5
         "constant": np.full(77, 7.5, np.float32),
         "big": (rng.standard_normal(70001) * 1e30).astype(np.float32),
         "inf": np.array([1.0, np.inf, -2.0], np.float32),
         "-inf": np.array([-np.inf, 2.0], np.float32),
         "nan": np.array([1.0, np.nan, -3.0], np.float32),
         "-nan": np.array([-np.nan, 2.0], np.float32),
         "strided": (rng.standard_normal((40, 30)) * 2).astype(np.float32).T}[case]
    finite = bool(np.all(np.isfinite(x)))
    lo, hi = float_range(np.ascontiguousarray(x).reshape(-1))
    if finite:
        assert (lo, hi) == (x.min(), x.max())
    else:
        assert not (np.isfinite(lo) and np.isfinite(hi))
    y = np.zeros(x.size, np.uint8)
    scale, zp, ok = dynamic_quantize_u8(np.ascontiguousarray(x).reshape(-1), y)
    assert ok == finite
    op = DynamicQuantizeLinear.__new__(DynamicQuantizeLinear)
    with np.errstate(all="ignore"):
        want = DynamicQuantizeLinear.ref(op, x)
    if finite:
        np.testing.assert_array_equal(y, want[0].reshape(-1))
        assert scale == want[1] and zp == want[2]
    model = _model([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                   [helper.make_tensor_value_info(n, t, None) for n, t in
                    (("y", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8))], {})
    with np.errstate(all="ignore"):
        got = edgedl.load(model.SerializeToString()).run({"x": x})
    for name, w in zip("ysz", want):
        np.testing.assert_array_equal(got[name], w)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_microsoft_qgemm_matches_onnxruntime(trans_b):
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, (5, 40)).astype(np.int8)
    b = rng.integers(-127, 128, (12, 40) if trans_b else (40, 12)).astype(np.int8)
    c = rng.integers(-2000, 2000, 12).astype(np.int32)
    inits = dict(as_=np.array(0.04, np.float32), az=np.array(-3, np.int8), b=b, bs=np.array(0.02, np.float32),
                 bz=np.array(0, np.int8), c=c, ys=np.array(0.5, np.float32), yz=np.array(4, np.int8))
    node = helper.make_node("QGemm", ["a", "as_", "az", "b", "bs", "bz", "c", "ys", "yz"], ["y"],
                            domain="com.microsoft", transB=trans_b, alpha=1.0)
    model = _model([node], [helper.make_tensor_value_info("a", TensorProto.INT8, a.shape)],
                   [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inits, ms=True)
    (got,), (want,), _ = _run_both(model, {"a": a})
    assert _lsb_diff(got, want) <= 1
    _kernel_vs_ref(model, {"a": a})


def test_bad_quantization_parameters_are_clear_errors():
    w = np.ones((2, 2, 1, 1), np.int8)
    inits = dict(xs=np.array(-1.0, np.float32), xz=np.array(0, np.uint8), w=w, ws=np.array(0.1, np.float32),
                 wz=np.array(0, np.int8), ys=np.array(0.1, np.float32), yz=np.array(0, np.uint8))
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, (1, 2, 3, 3))],
                   [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    with pytest.raises(edgedl.EdgeDLError, match="x_scale must be positive"):
        edgedl.load(model.SerializeToString())
    inits["xs"] = np.array(0.1, np.float32)
    inits["xz"] = np.array(0, np.int8)  # zero point type differs from x
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, (1, 2, 3, 3))],
                   [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    with pytest.raises(edgedl.EdgeDLError, match="x_zero_point"):
        edgedl.load(model.SerializeToString())


@pytest.mark.parametrize("mode", ["double", "float"])
@pytest.mark.parametrize("c,m,k,s,p,g,op,xt", [
    (4, 6, 3, 2, 1, 1, 0, np.int8), (4, 4, 3, 2, 0, 2, 1, np.uint8), (8, 3, 4, 2, 1, 1, 0, np.int8),
    (3, 5, 3, 1, 1, 1, 0, np.uint8), (2, 2, 2, 3, 0, 1, 2, np.int8),
    # windows that tile the output (kernel == stride, no padding): requantized by the GEMM, bytes moved
    (4, 6, 2, 2, 0, 1, 0, np.int8), (6, 4, 2, 2, 0, 2, 0, np.uint8), (3, 5, 3, 3, 0, 1, 0, np.int8),
])
def test_qlinear_conv_transpose_kernel_matches_its_reference(mode, c, m, k, s, p, g, op, xt):
    rng = np.random.default_rng(c * 7 + k)
    info = np.iinfo(xt)
    x = rng.integers(info.min, info.max + 1, (2, c, 5, 6)).astype(xt)
    w = rng.integers(-127, 128, (c, m // g, k, k)).astype(np.int8)
    ws = (rng.uniform(0.002, 0.01, m) if g == 1 else np.array(0.004)).astype(np.float32)
    inits = dict(xs=np.array(0.03, np.float32), xz=np.array(7, xt), w=w, ws=ws, wz=np.zeros(ws.shape, np.int8),
                 ys=np.array(0.08, np.float32), yz=np.array(-3 if xt == np.int8 else 120, xt),
                 b=rng.integers(-3000, 3000, m).astype(np.int32))
    node = helper.make_node("QLinearConvTranspose", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            domain="edgedl", strides=[s, s], pads=[p] * 4, group=g, output_padding=[op, op],
                            _requant=mode)
    model = _model([node], [helper.make_tensor_value_info("x", _T[xt], x.shape)],
                   [helper.make_tensor_value_info("y", _T[xt], None)], inits)
    model.opset_import.append(helper.make_opsetid("edgedl", 1))
    _kernel_vs_ref(model, {"x": x})


def test_quantized_conv_transpose_agrees_with_onnxruntime(tmp_path):
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((4, 6, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")])
    fp32 = edgedl.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    q = edgedl.quantize(fp32, [rng.standard_normal((1, 4, 5, 6)).astype(np.float32) for _ in range(8)],
                        progress=False)
    assert "QLinearConvTranspose" in q.op_counts()
    path = tmp_path / "ct.onnx"
    q.save(path)
    x = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    step = q.quantization.params["y"][0]
    assert np.max(np.abs(q(x) - want)) <= 2 * step + 1e-6


@pytest.mark.parametrize("xt", [np.int8, np.uint8])
def test_microsoft_concat_sigmoid_leakyrelu_match_onnxruntime(xt):
    rng = np.random.default_rng(6)
    info = np.iinfo(xt)
    a = rng.integers(info.min, info.max + 1, (1, 3, 4, 5)).astype(xt)
    b = rng.integers(info.min, info.max + 1, (1, 2, 4, 5)).astype(xt)
    z = (lambda v: np.array(v, xt))
    inits = dict(ys=np.array(0.07, np.float32), yz=z(10), as_=np.array(0.05, np.float32), az=z(3),
                 bs=np.array(0.11, np.float32), bz=z(-4 if xt == np.int8 else 200))
    nodes = [helper.make_node("QLinearConcat", ["ys", "yz", "a", "as_", "az", "b", "bs", "bz"], ["c"], axis=1,
                              domain="com.microsoft"),
             helper.make_node("QLinearSigmoid", ["c", "ys", "yz", "bs", "bz"], ["s"], domain="com.microsoft"),
             helper.make_node("QLinearLeakyRelu", ["s", "bs", "bz", "as_", "az"], ["y"], alpha=0.2,
                              domain="com.microsoft")]
    model = _model(nodes, [helper.make_tensor_value_info("a", _T[xt], a.shape),
                           helper.make_tensor_value_info("b", _T[xt], b.shape)],
                   [helper.make_tensor_value_info("y", _T[xt], None)], inits, ms=True)
    got, want, m = _run_both(model, {"a": a, "b": b})
    np.testing.assert_array_equal(got[0], want[0])
    assert all(s.kernel.impl != "numpy" or s.node.op_type == "QLinearConcat" for s in m.plan().steps)


# --- QLinearAdd / QLinearMul with a constant operand: tables -------------------------------------------------
@pytest.mark.parametrize("mode", ["float", "double"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_constant_operand_runs_as_tables_equal_to_the_reference(mode, dtype):
    """A constant of one value, or one per channel (planes of at least TABLE_MIN_PLANE), on either side: the
    op's own arithmetic tabulated per value gives the reference's bytes, at 1 and 2 threads; constants that vary
    along the last axis (planes of one element) keep the element-wise kernel and agree too."""
    import numba

    from edgedl.ir import Node, TensorType
    from edgedl.registry import lookup
    from edgedl import testing

    rng = np.random.default_rng(21)
    info = np.iinfo(dtype)
    cases = [((3, 5, 7), (1,), True), ((3, 5, 7), (), True), ((2, 6, 40), (1, 6, 1), True), ((2, 6, 40), (6, 1), True),
             ((1, 4, 8, 8), (1, 4, 1, 1), True), ((2, 3, 64), (1, 3, 1), True), ((4, 20), (4, 1), False),
             ((5, 70), (70,), False), ((1, 24, 16, 16), (1, 24, 1, 1), True)]
    old = numba.get_num_threads()
    try:
        for kind in ("QLinearAdd", "QLinearMul"):
            for x_shape, c_shape, tabulated in cases:
                for swap in (False, True):
                    x = rng.integers(info.min, info.max + 1, x_shape).astype(dtype)
                    c = rng.integers(info.min, info.max + 1, c_shape).astype(dtype)
                    qp = [np.array(np.float32(rng.uniform(0.002, 0.2))), np.array(dtype(rng.integers(info.min,
                                                                                                      info.max + 1)))]
                    cp = [np.array(np.float32(rng.uniform(0.002, 0.2))), np.array(dtype(rng.integers(info.min,
                                                                                                      info.max + 1)))]
                    yp = [np.array(np.float32(rng.uniform(0.002, 0.2))), np.array(dtype(rng.integers(info.min,
                                                                                                      info.max + 1)))]
                    ins = [x, *qp, c, *cp, *yp] if not swap else [c, *cp, x, *qp, *yp]
                    consts = [None if i == (3 if swap else 0) else v for i, v in enumerate(ins)]
                    types = [TensorType(v.shape, v.dtype) for v in ins]
                    results = []
                    for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                        numba.set_num_threads(nt)
                        node = Node(kind, "t", [f"i{i}" for i in range(8)], ["y"], {"_requant": mode},
                                    domain="com.microsoft")
                        op = lookup(kind, "com.microsoft")(node, 13)
                        out_t = op.infer(types, consts)
                        assert (op._constant_operand_tables(types, out_t, consts) is not None) == tabulated
                        outs, _ = testing.run_kernel(op, ins, consts)
                        results.append(outs[0])
                    what = f"{kind} {mode} {np.dtype(dtype).name} x {x_shape} c {c_shape} swap {swap}"
                    np.testing.assert_array_equal(results[0], op.ref(*ins)[0], err_msg=what)
                    np.testing.assert_array_equal(results[0], results[1], err_msg=what)
    finally:
        numba.set_num_threads(old)
