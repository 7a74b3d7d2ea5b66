"""QDQ models around the newer ops: what the lowering pass (:mod:`edgedl.passes.qdq`) runs on int8, and what
stays a float island between DequantizeLinear and QuantizeLinear, each checked against onnxruntime.

* Layout ops that move bytes (DepthToSpace, SpaceToDepth, Expand, Tile, ReverseSequence, GatherElements,
  GatherND) run on the 8-bit tensor and agree with onnxruntime bit for bit; Trilu and CenterCropPad only
  with a zero point of 0 (their zeros are then the byte 0); MaxUnpool stays float.
* Element-wise activations (Gelu, Swish, Mish, Softplus, ..., com.microsoft Gelu/FastGelu/QuickGelu) become a
  256-entry table (``edgedl.QLinearLookup``); onnxruntime computes them in float, so within one step.
* LayerNormalization, Attention, LSTM, Einsum, ... stay float and ``precision_summary`` lists them.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import edgedl
from edgedl.quant.inspect import format_summary, precision_summary

ort = pytest.importorskip("onnxruntime")

MS = "com.microsoft"


class _G:
    """A QDQ graph under construction: one float input "x", quantized as (0.05, zp) of ``dtype``."""

    def __init__(self, shape, dtype=np.int8, zp=3, scale=0.05):
        self.dtype = dtype
        self.nodes, self.inits, self.k = [], [], 0
        self.shape = list(shape)
        self.x = self.qdq("x", scale, zp)

    def name(self, base):
        self.k += 1
        return f"{base}_{self.k}"

    def c(self, value, base="c"):
        n = self.name(base)
        self.inits.append(nh.from_array(np.asarray(value), n))
        return n

    def node(self, op, ins, n_out=1, domain="", **attrs):
        outs = [self.name(op) for _ in range(n_out)]
        self.nodes.append(h.make_node(op, ins, outs, name=self.name(op + "_node"), domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def quantize(self, t, scale, zp):
        s, z = self.c(np.array(scale, np.float32), "s"), self.c(np.array(zp, self.dtype), "z")
        return self.node("QuantizeLinear", [t, s, z]), (s, z)

    def qdq(self, t, scale, zp):
        q, (s, z) = self.quantize(t, scale, zp)
        return self.node("DequantizeLinear", [q, s, z])

    def model(self, out_q, opset=21, domains=()):
        """The model whose output is the 8-bit tensor ``out_q`` (a QuantizeLinear's output)."""
        g = h.make_graph(self.nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, self.shape)],
                         [h.make_tensor_value_info(out_q, T.UNDEFINED, None)], self.inits)
        g.output[0].type.tensor_type.elem_type = T.INT8 if self.dtype == np.int8 else T.UINT8
        ops = [h.make_opsetid("", opset)] + [h.make_opsetid(d, 1) for d in domains]
        return h.make_model(g, opset_imports=ops, ir_version=10)


def _run_both(model, x):
    b = model.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    want = ort.InferenceSession(b, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    m = edgedl.load(b)
    got = m.run({"x": x})[m.graph.outputs[0].name]
    assert got.dtype == want.dtype and got.shape == want.shape
    return m, got, want


def _kinds(m):
    return [s.node.op_type for s in m.plan().steps]


def _x(shape, seed=0, spread=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * spread).astype(np.float32)


# --- layout ops: bytes moved unchanged ----------------------------------------------------------------------
LAYOUT = {
    "DepthToSpace": ([1, 8, 3, 3], {"blocksize": 2, "mode": "CRD"}, []),
    "SpaceToDepth": ([1, 2, 4, 6], {"blocksize": 2}, []),
    "Expand": ([1, 3, 1], {}, [np.array([2, 3, 4], np.int64)]),
    "Tile": ([2, 3], {}, [np.array([2, 3], np.int64)]),
    "ReverseSequence": ([4, 3, 2], {"batch_axis": 1, "time_axis": 0}, [np.array([4, 2, 1], np.int64)]),
    "GatherElements": ([3, 4], {"axis": 1}, [np.array([[0, 3, 3], [1, 1, 0], [2, 0, -1]], np.int64)]),
    "GatherND": ([3, 4, 2], {}, [np.array([[0, 3], [2, 1], [-1, 0]], np.int64)]),
}


@pytest.mark.parametrize("dtype,zp", [(np.int8, 3), (np.uint8, 131)])
@pytest.mark.parametrize("op", list(LAYOUT))
def test_layout_ops_run_on_8bit_and_match_onnxruntime_bit_for_bit(op, dtype, zp):
    shape, attrs, extra = LAYOUT[op]
    g = _G(shape, dtype, zp)
    y = g.node(op, [g.x] + [g.c(v, "idx") for v in extra], **attrs)
    out, _ = g.quantize(y, 0.05, zp)
    m, got, want = _run_both(g.model(out), _x(shape))
    assert _kinds(m) == ["QuantizeLinear", op], _kinds(m)
    step = m.plan().steps[1]
    assert np.dtype(m.plan().types[step.node.inputs[0]].dtype) == np.dtype(dtype)
    np.testing.assert_array_equal(got, want)
    assert op in precision_summary(m).int8


def test_layout_op_with_other_output_parameters_stays_float():
    g = _G([1, 8, 2, 2])
    y = g.node("DepthToSpace", [g.x], blocksize=2)
    out, _ = g.quantize(y, 0.1, 3)  # a different scale: a requantization, not a move
    m, got, want = _run_both(g.model(out), _x([1, 8, 2, 2]))
    assert "DequantizeLinear" in _kinds(m)
    assert [op for op, _ in precision_summary(m).float_islands] == ["DepthToSpace"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("op,shape,attrs,extra", [
    ("Trilu", [2, 4, 5], {"upper": 1}, [np.array(1, np.int64)]),
    ("Trilu", [4, 5], {"upper": 0}, []),
    ("CenterCropPad", [4, 5], {}, [np.array([6, 3], np.int64)]),
])
@pytest.mark.parametrize("zp", [0, 7])
def test_zero_filling_ops_are_8bit_only_with_a_zero_point_of_0(op, shape, attrs, extra, dtype, zp):
    g = _G(shape, dtype, zp)
    y = g.node(op, [g.x] + [g.c(v, "k") for v in extra], **attrs)
    out, _ = g.quantize(y, 0.05, zp)
    m, got, want = _run_both(g.model(out), _x(shape, 1))
    np.testing.assert_array_equal(got, want)
    if zp == 0:
        assert _kinds(m) == ["QuantizeLinear", op]
    else:  # the filled zeros must be the byte zp: the float op between DQ and Q does that
        assert _kinds(m) == ["QuantizeLinear", "DequantizeLinear", op, "QuantizeLinear"]
        assert (op, m.plan().steps[2].node.name) in precision_summary(m).float_islands
        assert np.any(got == zp)


def test_maxunpool_stays_a_float_island():
    g = _G([1, 2, 2, 2], zp=0)
    idx = g.c(np.array([0, 3, 9, 14, 17, 18, 28, 31], np.int64).reshape(1, 2, 2, 2), "idx")
    y = g.node("MaxUnpool", [g.x, idx], kernel_shape=[2, 2], strides=[2, 2])
    out, _ = g.quantize(y, 0.05, 0)
    m, got, want = _run_both(g.model(out), _x([1, 2, 2, 2], 2))
    np.testing.assert_array_equal(got, want)
    assert "MaxUnpool" in [op for op, _ in precision_summary(m).float_islands]


# --- element-wise activations through a table --------------------------------------------------------------
LUT = [
    ("Gelu", {}, "", 21), ("Gelu", {"approximate": "tanh"}, "", 21), ("Swish", {"alpha": 0.7}, "", 24),
    ("Mish", {}, "", 21), ("Softplus", {}, "", 21), ("Softsign", {}, "", 21), ("Selu", {}, "", 21),
    ("Celu", {"alpha": 1.5}, "", 21), ("ThresholdedRelu", {"alpha": 0.4}, "", 21),
    ("Shrink", {"lambd": 0.3, "bias": 0.1}, "", 21), ("Sin", {}, "", 21), ("Cos", {}, "", 21), ("Sign", {}, "", 21),
    ("HardSwish", {}, "", 21), ("Atan", {}, "", 21), ("Round", {}, "", 21),
    ("Gelu", {}, MS, 17), ("FastGelu", {}, MS, 17), ("QuickGelu", {}, MS, 17), ("QuickGelu", {"alpha": 1.2}, MS, 17),
]


@pytest.mark.parametrize("dtype,zp,out_zp", [(np.int8, 3, -20), (np.uint8, 128, 40)])
@pytest.mark.parametrize("op,attrs,domain,opset", LUT, ids=[f"{d or 'ai'}.{o}{'_' + str(a) if a else ''}"
                                                            for o, a, d, _ in LUT])
def test_activations_become_one_table_within_one_step_of_onnxruntime(op, attrs, domain, opset, dtype, zp, out_zp):
    g = _G([4, 64], dtype, zp, scale=0.04)
    y = g.node(op, [g.x], domain=domain, **attrs)
    out, _ = g.quantize(y, 0.03, out_zp)
    m, got, want = _run_both(g.model(out, opset, [domain] if domain else []), _x([4, 64], 3, 3.0))
    assert _kinds(m) == ["QuantizeLinear", "QLinearLookup"], _kinds(m)
    assert m.plan().steps[1].kernel.impl == "numba"
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1, (op, diff.max())
    assert np.mean(diff == 0) > 0.95
    assert "edgedl.QLinearLookup" in precision_summary(m).int8


def test_fastgelu_with_a_bias_stays_float():
    g = _G([2, 8])
    y = g.node("FastGelu", [g.x, g.c(np.linspace(-1, 1, 8).astype(np.float32), "bias")], domain=MS)
    out, _ = g.quantize(y, 0.03, 0)
    m, got, want = _run_both(g.model(out, 17, [MS]), _x([2, 8]))
    assert [op for op, _ in precision_summary(m).float_islands] == ["FastGelu"]
    assert np.abs(got.astype(np.int32) - want).max() <= 1


def test_a_function_undefined_on_part_of_the_range_stays_float():
    g = _G([4, 16])
    y = g.node("Log", [g.x])  # NaN on the negative bytes: no table
    out, _ = g.quantize(y, 0.03, 0)
    x = _x([4, 16], 4)
    m, got, want = _run_both(g.model(out), x)
    assert "Log" in [op for op, _ in precision_summary(m).float_islands]
    pos = x > 0.1
    assert np.abs(got[pos].astype(np.int32) - want[pos]).max() <= 1


# --- float islands ----------------------------------------------------------------------------------------
def _island_model(kind):
    """(graph builder, output to quantize, opset, op types expected among the islands)."""
    rng = np.random.default_rng(5)
    if kind == "LayerNormalization":
        g = _G([2, 5, 16])
        y = g.node("LayerNormalization", [g.x, g.c(rng.uniform(0.5, 1.5, 16).astype(np.float32)),
                                          g.c(rng.standard_normal(16).astype(np.float32) * 0.1)], axis=-1)
        return g, y, 17, ["LayerNormalization"]
    if kind == "Attention":
        g = _G([1, 2, 6, 8])
        k = g.qdq(g.node("Mul", [g.x, g.c(np.float32(0.5))]), 0.05, 0)
        y = g.node("Attention", [g.x, k, g.x])
        return g, y, 23, ["Attention"]
    if kind == "LSTM":
        g = _G([5, 2, 4])
        w = g.c(rng.standard_normal((1, 24, 4)).astype(np.float32) * 0.3)
        r = g.c(rng.standard_normal((1, 24, 6)).astype(np.float32) * 0.3)
        y = g.node("LSTM", [g.x, w, r], hidden_size=6)
        return g, y, 14, ["LSTM"]
    if kind == "Einsum":
        g = _G([2, 3, 4])
        b = g.qdq(g.node("Transpose", [g.x], perm=[0, 2, 1]), 0.05, 3)
        y = g.node("Einsum", [g.x, b], equation="bij,bjk->bik")
        return g, y, 13, ["Einsum"]
    # an attention written out: both MatMuls take two activations (no int8 pattern); the Softmax between them
    # is fed by a float op, not a DequantizeLinear, and is inside the island all the same
    g = _G([1, 6, 8])
    kt = g.qdq(g.node("Transpose", [g.x], perm=[0, 2, 1]), 0.05, 3)
    s = g.node("MatMul", [g.x, kt])
    p = g.node("Softmax", [g.node("Mul", [s, g.c(np.float32(0.35))])], axis=-1)
    y = g.node("MatMul", [p, g.x])
    return g, y, 13, ["MatMul", "Mul", "Softmax", "MatMul"]


@pytest.mark.parametrize("kind", ["LayerNormalization", "Attention", "LSTM", "Einsum", "decomposed"])
def test_ops_without_int8_kernels_are_listed_as_float_islands(kind):
    g, y, opset, expect = _island_model(kind)
    out, _ = g.quantize(y, 0.05, 0)
    m, got, want = _run_both(g.model(out, opset), _x(g.shape, 6, 1.0))
    s = precision_summary(m)
    islands = [op for op, _ in s.float_islands]
    assert [op for op in islands if op in expect] == expect, islands
    assert any(kind == "decomposed" or op in line for line in format_summary(s) for op in expect)
    assert np.abs(got.astype(np.int32) - want).max() <= 1


# --- whole models -----------------------------------------------------------------------------------------
def _cnn(opset=21, domain_ops=False):
    rng = np.random.default_rng(0)
    w1 = nh.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    w2 = nh.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3, "w2")
    act = h.make_node("QuickGelu", ["c1"], ["g"], domain=MS) if domain_ops else h.make_node("Gelu", ["c1"], ["g"])
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), act,
             h.make_node("DepthToSpace", ["g"], ["d"], blocksize=2),
             h.make_node("Tile", ["d", "reps"], ["t"]),
             h.make_node("Conv", ["t", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             h.make_node("Mish", ["c2"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)],
                     [w1, w2, nh.from_array(np.array([1, 1, 1, 2], np.int64), "reps")])
    ops = [h.make_opsetid("", opset)] + ([h.make_opsetid(MS, 1)] if domain_ops else [])
    return h.make_model(g, opset_imports=ops, ir_version=10)


def test_onnxruntime_quantize_static_model_with_the_new_ops_runs_int8(tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    src, dst = str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx")
    onnx.save(_cnn(), src)
    rng = np.random.default_rng(1)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantization.quantize_static(src, dst, Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 activation_type=quantization.QuantType.QInt8,
                                 weight_type=quantization.QuantType.QInt8,
                                 op_types_to_quantize=["Conv", "Gelu", "DepthToSpace", "Tile", "Mish"],
                                 extra_options={"ForceQuantizeNoInputCheck": True})
    m = edgedl.load(dst)
    assert _kinds(m) == ["QuantizeLinear", "QLinearConv", "QLinearLookup", "DepthToSpace", "Tile", "QLinearConv",
                         "QLinearLookup", "DequantizeLinear"], _kinds(m)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"])
    qm = onnx.load(dst)
    inits = {i.name: nh.to_array(i) for i in qm.graph.initializer}
    step = float(inits[[n for n in qm.graph.node if n.output[0] == "y"][0].input[1]])
    for seed in range(2):
        x = np.random.default_rng(10 + seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
        diff = np.abs(m.run({"x": x})["y"] - sess.run(None, {"x": x})[0]) / step
        assert diff.max() <= 1.0 + 1e-3


def test_edgedl_quantize_keeps_the_new_ops_int8():
    model = _cnn(17, domain_ops=True)
    rng = np.random.default_rng(2)
    cal = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    q = edgedl.quantize(model.SerializeToString(), cal, progress=False)
    assert _kinds(q) == ["QuantizeLinear", "QLinearConv", "QLinearLookup", "DepthToSpace", "Tile", "QLinearConv",
                         "QLinearLookup", "DequantizeLinear"], _kinds(q)
    assert q.quantization.float_nodes == []
    f = edgedl.load(model.SerializeToString())
    x = cal[0]
    want = f.run({"x": x})["y"]
    assert np.abs(q.run({"x": x})["y"] - want).max() < 0.05 * np.abs(want).max()
