"""int8 element-wise TFLite operators (edgedl/quant/tflite_tables.py through edgedl.QLinearLookup and
edgedl.QLinearBinary): bit for bit with ai-edge-litert's reference kernels on every input code (every code pair
for two inputs), inside an NCHW convolution chain, and exported as QDQ ONNX."""
from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from tflite_builder import CONV_OUT_Q, Builder, int8_conv_model, interpret

import edgedl
from edgedl.quant.tflite_tables import div_is_defined, pair_table, unary_table

SAME = 0
CODES = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)

#: TFLite operator -> (options table, fields) for the builder
UNARY_OPTIONS = {"LEAKY_RELU": ("LeakyReluOptions", {"alpha": 0.2}), "GELU": ("GeluOptions", {"approximate": False})}
UNARY_OPS = ["TANH", "LOGISTIC", "ELU", "GELU", "EXP", "LOG", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU",
             "HARD_SWISH", "ABS", "NEG", "SQRT", "RSQRT", "QUANTIZE"]


def _scale(rng, lo=0.003, hi=0.3) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _unary_params(op: str, rng, k: int):
    xs, xz, ys, yz = _scale(rng), int(rng.integers(-40, 40)), _scale(rng), int(rng.integers(-40, 40))
    if op == "LOGISTIC":
        ys, yz = 1 / 256, -128
    if op == "TANH" and k % 2:
        ys, yz = 1 / 128, 0
    if op in ("SQRT", "RSQRT", "LOG"):  # TFLite fails at run time below the zero point (see tflite_tables)
        xz = -128
    if op == "EXP":
        xs = min(xs, 0.03)
    return xs, xz, ys, yz


def _unary_model(op: str, xs, xz, ys, yz, gelu_tanh=False) -> bytes:
    b = Builder()
    x = b.tensor("input", (1, 256), np.int8, quant=(xs, xz))
    y = b.tensor("y", (1, 256), np.int8, quant=(ys, yz))
    options = UNARY_OPTIONS.get(op)
    if options:
        fields = dict(options[1], approximate=gelu_tanh) if op == "GELU" else options[1]
        b.op(op, [x], [y], options[0], **fields)
    else:
        b.op(op, [x], [y])
    return b.build([x], [y])


@pytest.mark.parametrize("op", UNARY_OPS)
def test_int8_unary_operators_are_bit_exact_on_every_code(op):
    """Each operator on all 256 input codes, for random input and output quantizations, equals the reference
    kernels (ELU has no reference kernel registered: the builtin one, which is the same table)."""
    rng = np.random.default_rng(sum(map(ord, op)))
    for k in range(6):
        xs, xz, ys, yz = _unary_params(op, rng, k)
        data = _unary_model(op, xs, xz, ys, yz, gelu_tanh=bool(k % 2))
        got = edgedl.load(data).run({"input": CODES})["y"]
        np.testing.assert_array_equal(got, interpret(data, [CODES], reference=op != "ELU")[0],
                                      err_msg=f"{op} {xs} {xz} {ys} {yz}")


def test_int8_tables_match_many_quantizations():
    """The tables alone, over more quantizations than the model tests (the fixed-point ones especially)."""
    rng = np.random.default_rng(3)
    for op in ("HARD_SWISH", "RSQRT", "LEAKY_RELU", "TANH", "RELU6"):
        for k in range(12):
            xs, xz, ys, yz = _unary_params(op, rng, k)
            data = _unary_model(op, xs, xz, ys, yz)
            want = interpret(data, [CODES], reference=True)[0]
            kw = {"alpha": 0.2} if op == "LEAKY_RELU" else {}
            np.testing.assert_array_equal(unary_table(op, xs, xz, ys, yz, **kw)[CODES.view(np.uint8)], want,
                                          err_msg=f"{op} {xs} {xz} {ys} {yz}")


PAIR_OPS = {"SUB": ("SubOptions", {"fusedActivationFunction": 0}),
            "DIV": ("DivOptions", {"fusedActivationFunction": 0}), "SQUARED_DIFFERENCE": None, "MAXIMUM": None,
            "MINIMUM": None, "PRELU": None}


@pytest.mark.parametrize("op", list(PAIR_OPS))
def test_int8_two_input_operators_are_bit_exact_on_every_code_pair(op):
    a = np.repeat(np.arange(-128, 128, dtype=np.int8), 256).reshape(1, 65536)
    bv = np.tile(np.arange(-128, 128, dtype=np.int8), 256).reshape(1, 65536)
    rng = np.random.default_rng(sum(map(ord, op)))
    for _ in range(3):
        s = [_scale(rng) for _ in range(3)]
        z = [int(v) for v in rng.integers(-40, 40, 3)]
        if op == "SQUARED_DIFFERENCE":
            s[2] *= 3
        b = Builder()
        x1 = b.tensor("a", (1, 65536), np.int8, quant=(s[0], z[0]))
        x2 = b.tensor("b", (1, 65536), np.int8, quant=(s[1], z[1]))
        y = b.tensor("y", (1, 65536), np.int8, quant=(s[2], z[2]))
        options = PAIR_OPS[op]
        b.op(op, [x1, x2], [y], *(() if options is None else (options[0],)), **({} if options is None else
                                                                               options[1]))
        data = b.build([x1, x2], [y])
        divisor = bv.copy()
        if op == "DIV":  # TFLite refuses a zero divisor at run time
            divisor[divisor == z[1]] = z[1] + 1
        index = (a.view(np.uint8).astype(np.int64) << 8) | divisor.view(np.uint8)
        want = interpret(data, [a, divisor], reference=True)[0]
        got = edgedl.load(data).run({"a": a, "b": divisor})["y"]
        table = pair_table(op, s[0], z[0], s[1], z[1], s[2], z[2])
        np.testing.assert_array_equal(table[index], got)
        if op == "DIV":  # TFLite shifts by undefined amounts on quotients far below one step: those round to 0
            defined = div_is_defined(s[0], z[0], s[1], z[1], s[2])[index]
            assert defined.mean() > 0.7
            quotient = s[0] * (a.astype(float) - z[0]) / (s[1] * (divisor.astype(float) - z[1])) / s[2]
            assert np.all(np.abs(got[~defined] - z[2] - np.clip(quotient[~defined], -128 - z[2], 127 - z[2])) <= 1)
            got, want = got[defined], want[defined]
        np.testing.assert_array_equal(got, want, err_msg=f"{s} {z}")


def _conv_chain(tail) -> bytes:
    """QUANTIZE -> CONV_2D int8 (run in NCHW) -> ``tail(builder, conv_out)`` -> DEQUANTIZE of (1, 6, 6, 4)."""
    return int8_conv_model(lambda b, c: (tail(b, c), (1, 6, 6, 4)))


def _feature_map_tail(b, c):
    """HARD_SWISH, PRELU with per-channel slopes, SUB of a per-channel constant with a fused RELU,
    SQUARED_DIFFERENCE, MAXIMUM and TANH on a (1, 6, 6, 4) int8 feature map."""
    hs = b.tensor("hs", (1, 6, 6, 4), np.int8, quant=(0.04, -20))
    b.op("HARD_SWISH", [c], [hs])
    alpha = b.const("alpha", np.array([[[-100, 30, 90, 127]]]), np.int8, quant=(0.002, 0))
    pr = b.tensor("pr", (1, 6, 6, 4), np.int8, quant=(0.05, -3))
    b.op("PRELU", [hs, alpha], [pr])
    offset = b.const("offset", np.array([-50, 0, 40, 100]), np.int8, quant=(0.01, 2))
    sub = b.tensor("sub", (1, 6, 6, 4), np.int8, quant=(0.03, -128))
    b.op("SUB", [pr, offset], [sub], "SubOptions", fusedActivationFunction=1)
    sq = b.tensor("sq", (1, 6, 6, 4), np.int8, quant=(0.02, -128))
    b.op("SQUARED_DIFFERENCE", [sub, pr], [sq])
    mx = b.tensor("mx", (1, 6, 6, 4), np.int8, quant=(0.03, -128))
    b.op("MAXIMUM", [sq, sub], [mx])
    th = b.tensor("th", (1, 6, 6, 4), np.int8, quant=(1 / 128, 0))
    b.op("TANH", [mx], [th])
    return th


def test_int8_elementwise_chain_in_nchw_is_bit_exact():
    data = _conv_chain(_feature_map_tail)
    model = edgedl.load(data)
    assert {"QLinearLookup", "QLinearBinary"} <= {n.op_type for n in model.graph.nodes}
    for seed in range(4):
        x = np.random.default_rng(seed).standard_normal((1, 6, 6, 3)).astype(np.float32) * 3
        np.testing.assert_array_equal(model.run({"input": x})["y"], interpret(data, [x], reference=True)[0])


def test_int8_elementwise_chain_exports_as_qdq(tmp_path):
    """Model.save writes standard QDQ ONNX (the float functions between DequantizeLinear and QuantizeLinear):
    onnxruntime and edgedl agree on it, and it stays close to TFLite (ONNX rounds ties to even and computes the
    functions in float, so a few outputs move by a step of some intermediate scale)."""
    ort = pytest.importorskip("onnxruntime")
    data = _conv_chain(_feature_map_tail)
    path = str(tmp_path / "chain.onnx")
    edgedl.load(data).save(path)
    x = np.random.default_rng(0).standard_normal((1, 6, 6, 3)).astype(np.float32) * 3
    ours = edgedl.load(path).run({"input": x})["y"]
    np.testing.assert_allclose(ort.InferenceSession(path).run(None, {"input": x})[0], ours, atol=1 / 128 + 1e-6)
    want = interpret(data, [x], reference=True)[0]
    assert np.mean(np.abs(ours - want) <= 1 / 128 + 1e-6) > 0.9


def test_int8_requantize_and_log_are_bit_exact_in_a_chain():
    """QUANTIZE int8 -> int8 (TFLite's Requantize) and LOG, RSQRT after a RELU keeps inputs at or above the zero
    point."""
    def tail(b, c):
        r = b.tensor("r", (1, 6, 6, 4), np.int8, quant=(0.06, -128))
        b.op("RELU", [c], [r])
        rq = b.tensor("rq", (1, 6, 6, 4), np.int8, quant=(0.011, -128))
        b.op("QUANTIZE", [r], [rq])
        lg = b.tensor("lg", (1, 6, 6, 4), np.int8, quant=(0.05, 60))
        b.op("LOG", [rq], [lg])
        return lg
    data = _conv_chain(tail)
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 3)).astype(np.float32) * 3
    np.testing.assert_array_equal(edgedl.load(data).run({"input": x})["y"], interpret(data, [x], reference=True)[0])


def test_uint8_elementwise_forms_are_refused_clearly():
    b = Builder()
    x = b.tensor("input", (1, 8), np.uint8, quant=(0.1, 128))
    y = b.tensor("y", (1, 8), np.uint8, quant=(0.1, 128))
    b.op("TANH", [x], [y])
    with pytest.raises(edgedl.EdgeDLError, match="int8"):
        edgedl.load(b.build([x], [y]))


def test_int8_log_softmax_is_bit_exact_and_exports():
    """LOG_SOFTMAX int8 (edgedl/quant/tflite_log_softmax.py through QLinearSoftmax in TFLite's mode) at the end of
    an int8 chain, along the channels of a feature map, bit for bit; exported as DequantizeLinear -> LogSoftmax
    -> QuantizeLinear."""
    def tail(b, c):
        y = b.tensor("ls", (1, 6, 6, 4), np.int8, quant=(16 / 256, 127))
        b.op("LOG_SOFTMAX", [c], [y])
        return y
    data = _conv_chain(tail)
    model = edgedl.load(data)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 6, 6, 3)).astype(np.float32) * 3
        np.testing.assert_array_equal(model.run({"input": x})["y"], interpret(data, [x], reference=True)[0])
    from edgedl.quant.qoperator_to_qdq import qoperator_to_qdq

    qdq = qoperator_to_qdq(model.graph)
    assert "LogSoftmax" in {n.op_type for n in qdq.nodes}


@pytest.mark.parametrize("align,half", [(False, False), (True, False), (False, True)])
def test_int8_resize_bilinear_in_a_chain_is_bit_exact(align, half):
    """RESIZE_BILINEAR int8 (TFLite's integer interpolation, edgedl/kernels/cpu/resize_i8.py) between int8
    convolutions, 6x6 -> 11x9, then RESIZE_NEAREST_NEIGHBOR back to 6x6 (codes moved)."""
    def tail(b, c):
        up = b.tensor("up", (1, 11, 9, 4), np.int8, quant=(0.06, -5))
        b.op("RESIZE_BILINEAR", [c, b.const("size", np.array([11, 9], np.int32), np.int32)], [up],
             "ResizeBilinearOptions", alignCorners=align, halfPixelCenters=half)
        down = b.tensor("down", (1, 6, 6, 4), np.int8, quant=(0.06, -5))
        b.op("RESIZE_NEAREST_NEIGHBOR", [up, b.const("size2", np.array([6, 6], np.int32), np.int32)], [down],
             "ResizeNearestNeighborOptions", alignCorners=align, halfPixelCenters=half)
        return down
    data = _conv_chain(tail)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 6, 6, 3)).astype(np.float32) * 3
        np.testing.assert_array_equal(edgedl.load(data).run({"input": x})["y"], interpret(data, [x], reference=True)[0])


@pytest.mark.parametrize("stride,kernel,padding,out_hw", [
    (2, 3, SAME, (8, 8)), (1, 3, 1, (6, 6)), (2, 2, 1, (8, 8)), (3, 2, SAME, (12, 12)), (3, 2, SAME, (10, 11)),
    (2, 4, 1, (11, 10)),
])
def test_int8_transpose_conv_is_bit_exact(stride, kernel, padding, out_hw):
    """TRANSPOSE_CONV int8 with per-channel weights and an int32 bias, as a stride-1 QLinearConv over the codes
    spread with zero points (SAME and VALID, strides 1-3, outputs smaller and larger than the full extent)."""
    rng = np.random.default_rng(stride * 10 + kernel)
    b = Builder()
    x = b.tensor("input", (1, 4, 4, 3))
    q = b.tensor("q", (1, 4, 4, 3), np.int8, quant=(0.05, 3))
    b.op("QUANTIZE", [x], [q])
    ws = (rng.random(5) * 0.02 + 0.01).astype(np.float32)
    w = b.const("w", rng.integers(-127, 128, (5, kernel, kernel, 3)), np.int8, quant=(ws, np.zeros(5, np.int64), 0))
    bias = b.const("bias", rng.integers(-300, 300, 5), np.int32, quant=(0.05 * ws, np.zeros(5, np.int64), 0))
    shape = b.const("shape", np.array([1, *out_hw, 5], np.int32), np.int32)
    t = b.tensor("t", (1, *out_hw, 5), np.int8, quant=(0.04, -7))
    b.op("TRANSPOSE_CONV", [shape, w, q, bias], [t], "TransposeConvOptions", padding=padding, strideW=stride,
         strideH=stride)
    y = b.tensor("y", (1, *out_hw, 5))
    b.op("DEQUANTIZE", [t], [y])
    data = b.build([x], [y])
    model = edgedl.load(data)
    for seed in range(3):
        xv = np.random.default_rng(seed).standard_normal((1, 4, 4, 3)).astype(np.float32) * 3
        np.testing.assert_array_equal(model.run({"input": xv})["y"], interpret(data, [xv], reference=True)[0])


@pytest.mark.parametrize("adj_x,adj_y", [(False, False), (True, False), (False, True)])
def test_int8_batch_matmul_is_bit_exact(adj_x, adj_y):
    """BATCH_MATMUL int8 (QLinearMatMul in TFLite's mode) with batch broadcasting, both inputs activations, and
    against a constant right-hand side; exported as DequantizeLinear -> MatMul -> QuantizeLinear."""
    rng = np.random.default_rng(int(adj_x) * 2 + int(adj_y))
    b = Builder()
    a_shape = (2, 3, 7, 5) if not adj_x else (2, 3, 5, 7)
    b_shape = (1, 3, 5, 4) if not adj_y else (1, 3, 4, 5)
    xa = b.tensor("a", a_shape, np.int8, quant=(0.03, -4))
    xb = b.tensor("b", b_shape, np.int8, quant=(0.05, 6))
    y = b.tensor("y", (2, 3, 7, 4), np.int8, quant=(0.02, 1))
    b.op("BATCH_MATMUL", [xa, xb], [y], "BatchMatMulOptions", adjX=adj_x, adjY=adj_y)
    wc = b.const("wc", rng.integers(-127, 128, (4, 6)), np.int8, quant=(0.01, 0))
    z = b.tensor("z", (2, 3, 7, 6), np.int8, quant=(0.015, -2))
    b.op("BATCH_MATMUL", [y, wc], [z], "BatchMatMulOptions", adjX=False, adjY=False)
    data = b.build([xa, xb], [z])
    model = edgedl.load(data)
    for _ in range(3):
        av = rng.integers(-128, 128, a_shape).astype(np.int8)
        bv = rng.integers(-128, 128, b_shape).astype(np.int8)
        np.testing.assert_array_equal(model.run({"a": av, "b": bv})["z"], interpret(data, [av, bv], reference=True)[0])
    from edgedl.quant.qoperator_to_qdq import qoperator_to_qdq

    assert "QLinearMatMul" not in {n.op_type for n in qoperator_to_qdq(model.graph).nodes}


REDUCTIONS = [((1, 2), True), ((1, 2), False), ((3,), False), ((1,), True), ((0, 1, 2, 3), False), ((2, 3), True)]


@pytest.mark.parametrize("op", ["MEAN", "SUM", "REDUCE_PROD", "REDUCE_MAX", "REDUCE_MIN"])
def test_int8_reductions_are_bit_exact(op):
    """int8 MEAN (the reference kernel's integer arithmetic), SUM (the optimized kernel's: the reference one reads
    int8 data as uint8), REDUCE_PROD (requantized at every step, in TFLite's element order), REDUCE_MAX / MIN (codes)
    over several axis sets, with and without keep_dims, on an NCHW feature map and on an input."""
    rng = np.random.default_rng(sum(map(ord, op)))
    shape = (2, 5, 7, 6) if op != "REDUCE_PROD" else (2, 3, 4, 5)
    for axes, keep in REDUCTIONS:
        if op == "REDUCE_PROD" and len(axes) > 2:
            continue  # a product of 120 factors requantized at each step is 0 or saturated
        xs, xz = float(rng.uniform(0.01, 0.2)), int(rng.integers(-30, 30))
        ys, yz = (xs, xz) if op in ("REDUCE_MAX", "REDUCE_MIN") else (float(rng.uniform(0.01, 0.2)),
                                                                      int(rng.integers(-30, 30)))
        if op == "SUM":
            ys *= 8
        out_shape = [1 if a in axes else d for a, d in enumerate(shape)] if keep else \
            [d for a, d in enumerate(shape) if a not in axes]
        b = Builder()
        x = b.tensor("input", shape, np.int8, quant=(xs, xz))
        conv_in = b.tensor("c", shape, np.int8, quant=(xs, xz))  # through an NCHW convolution-free relay:
        b.op("MAX_POOL_2D", [x], [conv_in], "Pool2DOptions", padding=SAME, strideW=1, strideH=1, filterWidth=1,
             filterHeight=1)
        y = b.tensor("y", out_shape, np.int8, quant=(ys, yz))
        b.op(op, [conv_in, b.const("axes", np.array(axes, np.int32), np.int32)], [y], "ReducerOptions",
             keepDims=keep)
        data = b.build([x], [y])
        model = edgedl.load(data)
        for _ in range(2):
            xv = rng.integers(-128, 128, shape).astype(np.int8)
            want = interpret(data, [xv], reference=op != "SUM")[0]
            np.testing.assert_array_equal(model.run({"input": xv})["y"], want, err_msg=f"{axes} {keep}")


def test_int8_reductions_export_as_qdq(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    b = Builder()
    x = b.tensor("input", (1, 4, 5, 6), np.int8, quant=(0.05, 2))
    m = b.tensor("m", (1, 4, 1, 6), np.int8, quant=(0.04, -1))
    b.op("MEAN", [x, b.const("a1", np.array([2], np.int32), np.int32)], [m], "ReducerOptions", keepDims=True)
    s = b.tensor("s", (1, 6), np.int8, quant=(0.3, 0))
    b.op("SUM", [m, b.const("a2", np.array([1, 2], np.int32), np.int32)], [s], "ReducerOptions", keepDims=False)
    data = b.build([x], [s])
    path = str(tmp_path / "reduce.onnx")
    edgedl.load(data).save(path)
    xv = np.random.default_rng(0).integers(-128, 128, (1, 4, 5, 6)).astype(np.int8)
    ours = edgedl.load(path).run({"input": xv})["s"]
    np.testing.assert_array_equal(ort.InferenceSession(path).run(None, {"input": xv})[0], ours)
    assert np.max(np.abs(ours.astype(int) - interpret(data, [xv])[0])) <= 1


# -- data movement on codes ------------------------------------------------------------------------------------
Q = CONV_OUT_Q  # the conv output's quantization, kept by every data-movement operator


def _movement_model(tail) -> bytes:
    """QUANTIZE -> CONV_2D int8 (NCHW inside) -> ``tail(builder, conv_out, int8)`` -> (tensor, shape, dequantize)."""
    def run_tail(b, c):
        r, shape, dequantize = tail(b, c, lambda name, s: b.tensor(name, s, np.int8, quant=Q))
        return r, shape if dequantize else None

    return int8_conv_model(run_tail, seed=4)


def _i32(b, name, values):
    return b.const(name, np.array(values, np.int32), np.int32)


def _slices_and_splits(b, c, t):
    s1 = t("s1", (1, 4, 3, 4))
    b.op("SLICE", [c, _i32(b, "begin", [0, 1, 2, 0]), _i32(b, "size", [-1, 4, 3, -1])], [s1])
    s2 = t("s2", (2, 3, 2))
    b.op("STRIDED_SLICE", [s1, _i32(b, "b", [0, 0, 0, 1]), _i32(b, "e", [1, 4, 3, 4]), _i32(b, "st", [1, 2, 1, 2])],
         [s2], "StridedSliceOptions", shrinkAxisMask=1, beginMask=0, endMask=0)
    g = t("g", (2, 3, 2))
    b.op("GATHER", [s2, _i32(b, "idx", [2, 0, 1])], [g], "GatherOptions", axis=1)
    parts = [t(f"part{k}", (2, 1, 2)) for k in range(3)]
    b.op("SPLIT", [_i32(b, "axis", 1), g], parts, "SplitOptions", numSplits=3)
    packed = t("packed", (3, 2, 1, 2))
    b.op("PACK", parts, [packed], "PackOptions", valuesCount=3, axis=0)
    un = [t(f"un{k}", (3, 1, 2)) for k in range(2)]
    b.op("UNPACK", [packed], un, "UnpackOptions", num=2, axis=1)
    tiled = t("tiled", (3, 2, 4))
    b.op("TILE", [un[1], _i32(b, "reps", [1, 2, 2])], [tiled])
    sv = [t("sv0", (3, 2, 1)), t("sv1", (3, 2, 3))]
    b.op("SPLIT_V", [tiled, _i32(b, "sizes", [1, 3]), _i32(b, "ax", 2)], sv, "SplitVOptions", numSplits=2)
    cat = t("cat", (3, 2, 4))
    b.op("CONCATENATION", [sv[1], sv[0]], [cat], "ConcatenationOptions", axis=2)
    return cat, (3, 2, 4), True


def _layouts(b, c, t):
    s2d = t("s2d", (1, 3, 3, 16))
    b.op("SPACE_TO_DEPTH", [c], [s2d], "SpaceToDepthOptions", blockSize=2)
    d2s = t("d2s", (1, 6, 6, 4))
    b.op("DEPTH_TO_SPACE", [s2d], [d2s], "DepthToSpaceOptions", blockSize=2)
    mp = t("mp", (1, 8, 7, 4))
    b.op("MIRROR_PAD", [d2s, _i32(b, "pads", [[0, 0], [1, 1], [0, 1], [0, 0]])], [mp], "MirrorPadOptions", mode=1)
    pool = t("pool", (1, 4, 4, 4))
    b.op("MAX_POOL_2D", [mp], [pool], "Pool2DOptions", padding=SAME, strideW=2, strideH=2, filterWidth=2,
         filterHeight=2)
    pv = t("pv", (1, 5, 6, 4))
    b.op("PADV2", [pool, _i32(b, "pads2", [[0, 0], [0, 1], [1, 1], [0, 0]]),
                   b.const("value", np.array(-5, np.int8), np.int8, quant=Q)], [pv])
    tr = t("tr", (1, 4, 6, 5))
    b.op("TRANSPOSE", [pv, _i32(b, "perm", [0, 3, 2, 1])], [tr])
    ex = t("ex", (1, 4, 6, 5, 1))
    b.op("EXPAND_DIMS", [tr, _i32(b, "dim", -1)], [ex])
    b.versions[schema.BuiltinOperator.BROADCAST_TO] = 2  # the reference resolver registers versions 2 and 3
    bc = t("bc", (1, 4, 6, 5, 2))
    b.op("BROADCAST_TO", [ex, _i32(b, "to", [1, 4, 6, 5, 2])], [bc])
    gn = t("gn", (3, 6, 5, 2))
    b.op("GATHER_ND", [bc, _i32(b, "nd", [[0, 1], [0, 3], [0, 0]])], [gn])
    sq = t("sq", (3, 6, 10))
    b.op("RESHAPE", [gn, _i32(b, "shape", [3, 6, 10])], [sq])
    mx = t("mx", (3, 10))
    b.op("REDUCE_MAX", [sq, _i32(b, "rax", [1])], [mx], "ReducerOptions", keepDims=False)
    return mx, (3, 10), True


def _argmax(b, c, t):
    y = b.tensor("y", (1, 6, 6), np.int32)
    b.op("ARG_MAX", [c, _i32(b, "axis", [3])], [y], "ArgMaxOptions", outputType=2)
    return y, (1, 6, 6), False


def _argmin_squeezed(b, c, t):
    a = b.tensor("a", (1, 6, 4), np.int32)
    b.op("ARG_MIN", [c, _i32(b, "axis", [2])], [a], "ArgMinOptions", outputType=2)
    y = b.tensor("y", (6, 4), np.int32)
    b.op("SQUEEZE", [a], [y], "SqueezeOptions", squeezeDims=[0])
    return y, (6, 4), False


@pytest.mark.parametrize("tail", [_slices_and_splits, _layouts, _argmax, _argmin_squeezed])
def test_int8_data_movement_is_bit_exact(tail):
    """Every data-movement operator on int8 codes (the tensors share one quantization): slices, gathers, splits,
    packs, tiles, concatenation, depth/space, both pads, mirror pad, max pool, transpose, broadcast, reshapes and
    arg max / min, from an NCHW convolution."""
    data = _movement_model(tail)
    model = edgedl.load(data)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 6, 6, 3)).astype(np.float32) * 3
        got = list(model.run({"input": x}).values())[0]
        np.testing.assert_array_equal(got, interpret(data, [x], reference=True)[0])


# -- rounding: which layers round once ------------------------------------------------------------------------------
def _layer(kind: str, rng) -> tuple[bytes, tuple]:
    """One int8 layer whose outputs mostly stay inside int8 (so requantization ties show)."""
    b = Builder()
    xs = 0.05
    if kind == "FULLY_CONNECTED":
        k, n = 64, 256
        x = b.tensor("x", (4, k), np.int8, quant=(xs, 3))
        ws = (rng.random(n) * 0.02 + 0.005).astype(np.float32)
        w = b.const("w", rng.integers(-127, 128, (n, k)), np.int8, quant=(ws, np.zeros(n, np.int64), 0))
        bias = b.const("b", rng.integers(-2000, 2000, n), np.int32, quant=(xs * ws, np.zeros(n, np.int64), 0))
        y = b.tensor("y", (4, n), np.int8, quant=(xs * 0.012 * 8 * 128 * 0.7, -2))
        b.op(kind, [x, w, bias], [y], "FullyConnectedOptions", fusedActivationFunction=0)
        return b.build([x], [y]), (4, k)
    c, o = 16, 32
    x = b.tensor("x", (1, 12, 12, c), np.int8, quant=(xs, 3))
    ws = (rng.random(o) * 0.02 + 0.005).astype(np.float32)
    w = b.const("w", rng.integers(-127, 128, (o, 3, 3, c)), np.int8, quant=(ws, np.zeros(o, np.int64), 0))
    bias = b.const("b", rng.integers(-2000, 2000, o), np.int32, quant=(xs * ws, np.zeros(o, np.int64), 0))
    y = b.tensor("y", (1, 12, 12, o), np.int8, quant=(xs * 0.012 * 12 * 128 * 0.7, -2))
    b.op(kind, [x, w, bias], [y], "Conv2DOptions", padding=SAME, strideW=1, strideH=1, dilationWFactor=1,
         dilationHFactor=1)
    return b.build([x], [y]), (1, 12, 12, c)


@pytest.mark.parametrize("kind", ["FULLY_CONNECTED", "CONV_2D"])
def test_int8_requantization_ties_round_as_the_reference_kernels(kind):
    """TFLite's reference FULLY_CONNECTED requantizes with one rounding, its convolutions with two (ties one step
    apart): over ~10^4 in-range outputs each, edgedl matches both (a published MLPerf Tiny autoencoder showed the
    FULLY_CONNECTED difference)."""
    rng = np.random.default_rng(11)
    for _ in range(4):
        data, shape = _layer(kind, rng)
        x = rng.integers(-128, 128, shape).astype(np.int8)
        np.testing.assert_array_equal(edgedl.load(data).run({"x": x})["y"], interpret(data, [x], reference=True)[0])


def test_shape_is_a_constant_or_read_with_a_dynamic_batch():
    """SHAPE feeding a STRIDED_SLICE / PACK / RESHAPE chain (Keras' Reshape with a batch dimension): a constant for a
    fixed batch; with a declared dynamic batch the shape is read at run time and other batches run."""
    b = Builder()
    x = b.tensor("input", (1, 6, 4))
    shape = b.tensor("shape", (3,), np.int32)
    b.op("SHAPE", [x], [shape], "ShapeOptions", outType=2)
    n = b.tensor("n", (), np.int32)
    b.op("STRIDED_SLICE", [shape, _i32(b, "b0", [0]), _i32(b, "e0", [1]), _i32(b, "s0", [1])], [n],
         "StridedSliceOptions", shrinkAxisMask=1, beginMask=0, endMask=0)
    target = b.tensor("target", (3,), np.int32)
    b.op("PACK", [n, _i32(b, "d1", 4), _i32(b, "d2", 6)], [target], "PackOptions", valuesCount=3, axis=0)
    y = b.tensor("y", (1, 4, 6))
    b.op("RESHAPE", [x, target], [y])
    b.tensors[x].shapeSignature = [-1, 6, 4]
    b.tensors[y].shapeSignature = [-1, 4, 6]
    data = b.build([x], [y])
    model = edgedl.load(data)
    for batch in (1, 3):
        xv = np.random.default_rng(batch).standard_normal((batch, 6, 4)).astype(np.float32)
        np.testing.assert_array_equal(model.run({"input": xv})["y"], xv.reshape(batch, 4, 6))
    xv = np.random.default_rng(0).standard_normal((1, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.run({"input": xv})["y"], interpret(data, [xv])[0])


def test_int8_softmax_kernel_equals_the_numpy_transcription():
    """edgedl/kernels/cpu/softmax_i8.py (per-difference tables, a per-row reciprocal) against
    edgedl/quant/tflite_softmax.py over random scales, betas, row lengths, int8 and uint8, equal rows."""
    from edgedl.kernels.cpu.softmax_i8 import TFLiteSoftmax
    from edgedl.quant.tflite_softmax import softmax_int8

    rng = np.random.default_rng(2)
    for t in range(60):
        xs, beta = float(np.exp(rng.uniform(np.log(0.001), np.log(2)))), float(rng.choice([1.0, 0.5, 2.0]))
        dtype = np.int8 if t % 3 else np.uint8
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max + 1, (int(rng.integers(1, 80)), int(rng.integers(1, 300)))).astype(dtype)
        if t % 5 == 0:
            x[...] = info.max
        out = np.empty_like(x)
        np.testing.assert_array_equal(TFLiteSoftmax(xs, beta)(x, out), softmax_int8(x, xs, beta, dtype))


def test_a_model_with_the_int8_tables_fine_tunes_quantization_aware(tmp_path):
    """HARD_SWISH, SUB (a pair table), TANH, MEAN and FULLY_CONNECTED int8: the Trainer fine-tunes it through its QDQ
    form (quantization-aware), and the saved file runs the same in onnxruntime."""
    ort = pytest.importorskip("onnxruntime")

    def tail(b, c):
        hs = b.tensor("hs", (1, 6, 6, 4), np.int8, quant=(0.04, -20))
        b.op("HARD_SWISH", [c], [hs])
        off = b.const("off", np.array([-50, 0, 40, 100]), np.int8, quant=(0.01, 2))
        sub = b.tensor("sub", (1, 6, 6, 4), np.int8, quant=(0.03, -128))
        b.op("SUB", [hs, off], [sub], "SubOptions", fusedActivationFunction=1)
        th = b.tensor("th", (1, 6, 6, 4), np.int8, quant=(1 / 128, 0))
        b.op("TANH", [sub], [th])
        m = b.tensor("m", (1, 4), np.int8, quant=(1 / 128, 0))
        b.op("MEAN", [th, _i32(b, "ax", [1, 2])], [m], "ReducerOptions", keepDims=False)
        w = b.const("fw", np.random.default_rng(0).integers(-127, 128, (5, 4)), np.int8,
                    quant=(np.full(5, 0.02, np.float32), np.zeros(5, np.int64), 0))
        logits = b.tensor("logits", (1, 5), np.int8, quant=(0.05, 0))
        b.op("FULLY_CONNECTED", [m, w], [logits], "FullyConnectedOptions")
        return logits, (1, 5)

    model = edgedl.load(int8_conv_model(tail))
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((8, 6, 6, 3)).astype(np.float32), rng.integers(0, 5, 8)
    trainer = edgedl.Trainer(model, trainable="last:1", optimizer=edgedl.train.Adam(lr=0.01), seed=0)
    assert trainer.qat is not None
    assert np.isfinite(trainer.fit(xs, ys, epochs=2, batch_size=1).loss).all()
    model.save(str(tmp_path / "tuned.onnx"))
    x = xs[:1]
    np.testing.assert_array_equal(model.run({"input": x})["y"],
                                  ort.InferenceSession(str(tmp_path / "tuned.onnx")).run(None, {"input": x})[0])
