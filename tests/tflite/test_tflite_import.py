"""The .tflite importer (converters/tflite_import.py) against the TFLite interpreter (ai-edge-litert), on
models built with the schema's object API: every operator, the NHWC -> NCHW layout handling, and bad files."""
from __future__ import annotations

import numpy as np
import pytest
from tflite_builder import Builder, int8_conv_model, interpret, schema  # noqa: E402  (tests/tflite on sys.path)

import edgedl
from edgedl.errors import EdgeDLError, ModelFormatError, UnsupportedOpError

RNG = np.random.default_rng(21)
AF = schema.ActivationFunctionType
SAME, VALID = schema.Padding.SAME, schema.Padding.VALID


def _f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _check(data: bytes, feeds: list[np.ndarray], rtol=1e-5, atol=1e-5) -> edgedl.Model:
    """edgedl's outputs equal the interpreter's (float32: within 1e-5 relative)."""
    want = interpret(data, feeds)
    model = edgedl.load(data)
    got = model.run({s.name: x for s, x in zip(model.inputs, feeds)})
    assert len(got) == len(want)
    for (name, g), w in zip(got.items(), want):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)
    return model


def _transposes(model: edgedl.Model) -> int:
    return sum(n.op_type == "Transpose" for n in model.graph.nodes)


def test_a_small_mobilenet_runs_in_nchw_with_transposes_only_at_the_edges(tmp_path):
    """CONV_2D (fused RELU6, stride 2, SAME) -> DEPTHWISE_CONV_2D -> CONV_2D 1x1 + residual ADD -> MAX_POOL_2D ->
    MEAN over H, W -> FULLY_CONNECTED -> SOFTMAX; loaded from a file and from bytes."""
    b = Builder()
    x = b.tensor("input", (1, 10, 10, 3))
    w1, b1 = b.const("w1", _f32(8, 3, 3, 3, scale=0.3)), b.const("b1", _f32(8))
    c1 = b.tensor("c1", (1, 5, 5, 8))
    b.op("CONV_2D", [x, w1, b1], [c1], "Conv2DOptions", padding=SAME, strideW=2, strideH=2,
         fusedActivationFunction=AF.RELU6, dilationWFactor=1, dilationHFactor=1)
    wd, bd = b.const("wd", _f32(1, 3, 3, 8, scale=0.3)), b.const("bd", _f32(8))
    d1 = b.tensor("d1", (1, 5, 5, 8))
    b.op("DEPTHWISE_CONV_2D", [c1, wd, bd], [d1], "DepthwiseConv2DOptions", padding=SAME, strideW=1, strideH=1,
         depthMultiplier=1, fusedActivationFunction=AF.RELU, dilationWFactor=1, dilationHFactor=1)
    w2, b2 = b.const("w2", _f32(8, 1, 1, 8, scale=0.3)), b.const("b2", _f32(8))
    p1 = b.tensor("p1", (1, 5, 5, 8))
    b.op("CONV_2D", [d1, w2, b2], [p1], "Conv2DOptions", padding=VALID, strideW=1, strideH=1,
         dilationWFactor=1, dilationHFactor=1)
    s1 = b.tensor("s1", (1, 5, 5, 8))
    b.op("ADD", [p1, c1], [s1], "AddOptions")
    m1 = b.tensor("m1", (1, 2, 2, 8))
    b.op("MAX_POOL_2D", [s1], [m1], "Pool2DOptions", padding=VALID, strideW=2, strideH=2, filterWidth=2,
         filterHeight=2)
    axes = b.const("axes", np.array([1, 2], np.int32), np.int32)
    r1 = b.tensor("r1", (1, 8))
    b.op("MEAN", [m1, axes], [r1], "ReducerOptions", keepDims=False)
    wf, bf = b.const("wf", _f32(4, 8)), b.const("bf", _f32(4))
    f1 = b.tensor("f1", (1, 4))
    b.op("FULLY_CONNECTED", [r1, wf, bf], [f1], "FullyConnectedOptions")
    y = b.tensor("probs", (1, 4))
    b.op("SOFTMAX", [f1], [y], "SoftmaxOptions", beta=1.0)
    data = b.build([x], [y])
    model = _check(data, [_f32(1, 10, 10, 3)])
    assert _transposes(model) == 1  # the input's, and none between the layers
    path = tmp_path / "net.tflite"
    path.write_bytes(data)
    np.testing.assert_array_equal(edgedl.load(str(path)).run({"input": np.ones((1, 10, 10, 3), np.float32)})["probs"],
                                  model.run({"input": np.ones((1, 10, 10, 3), np.float32)})["probs"])


def _conv_model(out_op, *extra_tensors):
    """input (1, 6, 6, 2) -> CONV_2D 3x3 SAME (4 channels, NCHW inside) -> ``out_op(builder, conv_out)``."""
    b = Builder()
    x = b.tensor("input", (1, 6, 6, 2))
    c = b.tensor("conv", (1, 6, 6, 4))
    b.op("CONV_2D", [x, b.const("w", _f32(4, 3, 3, 2, scale=0.4)), b.const("b", _f32(4))], [c], "Conv2DOptions",
         padding=SAME, strideW=1, strideH=1, dilationWFactor=1, dilationHFactor=1)
    y = out_op(b, c)
    return b.build([x], [y])


@pytest.mark.parametrize("code,options,other", [
    ("ADD", "AddOptions", (4,)), ("SUB", "SubOptions", (1, 1, 6, 4)), ("MUL", "MulOptions", (6, 1, 1)),
    ("DIV", "DivOptions", ()), ("MAXIMUM", None, (4,)), ("MINIMUM", None, (6, 6, 4)),
    ("SQUARED_DIFFERENCE", None, (1, 6, 1, 4)),
])
def test_binary_ops_broadcast_constants_in_nchw(code, options, other):
    def op(b, c):
        k = b.const("k", np.abs(_f32(*other)) + 0.5 if code == "DIV" else _f32(*other))
        y = b.tensor("y", (1, 6, 6, 4))
        fields = {"fusedActivationFunction": AF.RELU} if options else {}
        b.op(code, [c, k], [y], options, **fields)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


@pytest.mark.parametrize("code,options,fields", [
    ("RELU", None, {}), ("RELU6", None, {}), ("RELU_N1_TO_1", None, {}), ("LOGISTIC", None, {}), ("TANH", None, {}),
    ("HARD_SWISH", None, {}), ("LEAKY_RELU", "LeakyReluOptions", {"alpha": 0.15}),
])
def test_activations(code, options, fields):
    def op(b, c):
        y = b.tensor("y", (1, 6, 6, 4))
        b.op(code, [c], [y], options, **fields)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2, scale=3.0)])


@pytest.mark.parametrize("axes,keep", [([1, 2], True), ([3], False), ([1], False), ([0, 3], True)])
def test_mean(axes, keep):
    shape = [d for i, d in enumerate((1, 6, 6, 4)) if i not in axes or keep]
    shape = [1 if (i in axes and keep) else d for i, d in enumerate((1, 6, 6, 4))] if keep else shape

    def op(b, c):
        y = b.tensor("y", tuple(shape))
        b.op("MEAN", [c, b.const("axes", np.array(axes, np.int32), np.int32)], [y], "ReducerOptions", keepDims=keep)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


def test_reshape_then_fully_connected_sees_nhwc_order():
    """Flattening a convolution's output must see TFLite's (NHWC) element order."""
    def op(b, c):
        flat = b.tensor("flat", (1, 144))
        b.op("RESHAPE", [c, b.const("shape", np.array([1, 144], np.int32), np.int32)], [flat], "ReshapeOptions",
             newShape=[1, 144])
        y = b.tensor("y", (1, 5))
        b.op("FULLY_CONNECTED", [flat, b.const("fw", _f32(5, 144, scale=0.1)), b.const("fb", _f32(5))], [y],
             "FullyConnectedOptions", fusedActivationFunction=AF.RELU_N1_TO_1)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


def test_concatenation_pad_transpose_squeeze():
    def op(b, c):
        cat = b.tensor("cat", (1, 6, 6, 8))
        b.op("CONCATENATION", [c, c], [cat], "ConcatenationOptions", axis=3)
        padded = b.tensor("padded", (1, 7, 9, 8))
        b.op("PAD", [cat, b.const("pads", np.array([[0, 0], [1, 0], [1, 2], [0, 0]], np.int32), np.int32)], [padded])
        pooled = b.tensor("pooled", (1, 4, 5, 8))
        b.op("AVERAGE_POOL_2D", [padded], [pooled], "Pool2DOptions", padding=SAME, strideW=2, strideH=2,
             filterWidth=3, filterHeight=3)
        t = b.tensor("t", (1, 8, 4, 5))
        b.op("TRANSPOSE", [pooled, b.const("perm", np.array([0, 3, 1, 2], np.int32), np.int32)], [t])
        y = b.tensor("y", (8, 4, 5))
        b.op("SQUEEZE", [t], [y], "SqueezeOptions", squeezeDims=[0])
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


def test_a_fused_activation_on_concatenation_is_refused():
    """TFLite's reference kernel refuses it (XNNPACK silently ignores it): a clear error, not a guess."""
    b = Builder()
    x, y = b.tensor("x", (1, 2, 2, 2)), b.tensor("y", (1, 2, 2, 4))
    b.op("CONCATENATION", [x, x], [y], "ConcatenationOptions", axis=3, fusedActivationFunction=AF.RELU)
    with pytest.raises(ModelFormatError, match="fused activation on CONCATENATION"):
        edgedl.load(b.build([x], [y]))


def test_float16_weights_through_dequantize():
    b = Builder()
    x = b.tensor("input", (2, 5))
    w16 = b.const("w16", _f32(3, 5).astype(np.float16), np.float16)
    w = b.tensor("w", (3, 5))
    b.op("DEQUANTIZE", [w16], [w])
    y = b.tensor("y", (2, 3))
    b.op("FULLY_CONNECTED", [x, w, -1], [y], "FullyConnectedOptions")
    _check(b.build([x], [y]), [_f32(2, 5)])


# -- bad files ---------------------------------------------------------------------------------------------
def _dense() -> bytes:
    b = Builder()
    x = b.tensor("x", (1, 4))
    y = b.tensor("y", (1, 2))
    b.op("FULLY_CONNECTED", [x, b.const("w", _f32(2, 4)), -1], [y], "FullyConnectedOptions")
    return b.build([x], [y])


def test_unsupported_operators_are_listed_together():
    b = Builder()
    x = b.tensor("x", (1, 4))
    y, z = b.tensor("y", (1, 4)), b.tensor("z", (1, 4))
    b.op("SIN", [x], [y])
    b.op("COS", [x], [z])
    listing = r"SIN \(operator 0: inputs \['x'\], outputs \['y'\]\); COS \(operator 1"
    with pytest.raises(UnsupportedOpError, match=listing):
        edgedl.load(b.build([x], [y, z]))


def test_truncated_and_corrupt_files_are_clear_errors():
    data = _dense()
    for cut in (8, 20, len(data) // 2, len(data) - 4):
        with pytest.raises(EdgeDLError):
            edgedl.load(data[:cut])


def test_a_buffer_that_does_not_match_its_tensor():
    b = Builder()
    x = b.tensor("x", (1, 4))
    w = b.tensor("w", (2, 4), np.float32, _f32(3, 4))  # 48 bytes for a (2, 4) tensor
    y = b.tensor("y", (1, 2))
    b.op("FULLY_CONNECTED", [x, w, -1], [y], "FullyConnectedOptions")
    with pytest.raises(ModelFormatError, match=r"needs 32 bytes, its buffer 1 holds 48"):
        edgedl.load(b.build([x], [y]))


def test_a_tensor_nothing_writes():
    b = Builder()
    x = b.tensor("x", (1, 4))
    ghost = b.tensor("ghost", (1, 4))
    y = b.tensor("y", (1, 4))
    b.op("ADD", [x, ghost], [y], "AddOptions")
    with pytest.raises(ModelFormatError, match="'ghost'.* read before anything writes it"):
        edgedl.load(b.build([x], [y]))


def test_mutated_files_never_crash():
    """Random byte mutations of a valid model: edgedl either loads it or raises EdgeDLError (never another
    exception, a hang or a huge allocation)."""
    data = bytearray(_dense())
    rng = np.random.default_rng(0)
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
        try:
            model = edgedl.load(bytes(mutated))
        except EdgeDLError:
            continue
        try:
            model.run({s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], s.dtype)
                       for s in model.inputs})
        except EdgeDLError:
            pass


# -- full-integer models ---------------------------------------------------------------------------------
def _int8_net(dynamic_batch: bool = False):
    """float input -> QUANTIZE -> CONV_2D int8 (per-channel weights, int32 bias, fused RELU6) ->
    DEPTHWISE_CONV_2D int8 (fused RELU) -> MAX_POOL_2D -> RESHAPE -> FULLY_CONNECTED int8 -> DEQUANTIZE."""
    b = Builder()
    rng = np.random.default_rng(4)
    x = b.tensor("input", (1, 6, 6, 3))
    if dynamic_batch:
        b.tensors[x].shapeSignature = [-1, 6, 6, 3]
    xs, xz = 0.04, -3
    q = b.tensor("q", (1, 6, 6, 3), np.int8, quant=(xs, xz))
    b.op("QUANTIZE", [x], [q])
    w1s = (rng.random(8) * 0.01 + 0.004).astype(np.float32)
    w1 = b.const("w1", rng.integers(-127, 128, (8, 3, 3, 3)), np.int8, quant=(w1s, np.zeros(8, np.int64), 0))
    b1 = b.const("b1", rng.integers(-400, 400, 8), np.int32, quant=(xs * w1s, np.zeros(8, np.int64), 0))
    c1 = b.tensor("c1", (1, 6, 6, 8), np.int8, quant=(0.05, -128))
    b.op("CONV_2D", [q, w1, b1], [c1], "Conv2DOptions", padding=SAME, strideW=1, strideH=1,
         fusedActivationFunction=AF.RELU6, dilationWFactor=1, dilationHFactor=1)
    wds = (rng.random(8) * 0.02 + 0.005).astype(np.float32)
    wd = b.const("wd", rng.integers(-127, 128, (1, 3, 3, 8)), np.int8, quant=(wds, np.zeros(8, np.int64), 3))
    bd = b.const("bd", rng.integers(-300, 300, 8), np.int32, quant=(0.05 * wds, np.zeros(8, np.int64), 0))
    d1 = b.tensor("d1", (1, 3, 3, 8), np.int8, quant=(0.03, -20))
    b.op("DEPTHWISE_CONV_2D", [c1, wd, bd], [d1], "DepthwiseConv2DOptions", padding=SAME, strideW=2, strideH=2,
         depthMultiplier=1, fusedActivationFunction=AF.RELU, dilationWFactor=1, dilationHFactor=1)
    m1 = b.tensor("m1", (1, 2, 2, 8), np.int8, quant=(0.03, -20))
    b.op("MAX_POOL_2D", [d1], [m1], "Pool2DOptions", padding=SAME, strideW=2, strideH=2, filterWidth=2,
         filterHeight=2)
    flat = b.tensor("flat", (1, 32), np.int8, quant=(0.03, -20))
    b.op("RESHAPE", [m1, b.const("shape", np.array([1, 32], np.int32), np.int32)], [flat], "ReshapeOptions",
         newShape=[1, 32])
    wf = b.const("wf", rng.integers(-127, 128, (5, 32)), np.int8, quant=(0.01, 0))
    bf = b.const("bf", rng.integers(-500, 500, 5), np.int32, quant=(0.03 * 0.01, 0))
    f1 = b.tensor("f1", (1, 5), np.int8, quant=(0.1, 4))
    b.op("FULLY_CONNECTED", [flat, wf, bf], [f1], "FullyConnectedOptions")
    y = b.tensor("y", (1, 5))
    b.op("DEQUANTIZE", [f1], [y])
    return b.build([x], [y])


def test_a_full_integer_model_is_bit_exact_with_the_reference_kernels():
    """TFLite's fixed-point requantization (double rounding), fused RELU / RELU6 as output ranges, per-channel
    weights, QUANTIZE's rounding (ties away from zero): the same bits as the interpreter's reference kernels,
    on random inputs and on inputs at rounding ties."""
    data = _int8_net()
    model = edgedl.load(data)
    ops = {n.op_type for n in model.graph.nodes}
    assert {"QLinearConv", "QGemm", "QuantizeLinear", "DequantizeLinear"} <= ops and "Conv" not in ops
    for x in (_f32(1, 6, 6, 3, scale=2.0), (np.arange(108, dtype=np.float32).reshape(1, 6, 6, 3) - 54) * 0.02):
        want = interpret(data, [x], reference=True)[0]
        got = model.run({"input": x})["y"]
        np.testing.assert_array_equal(got, want)


def test_quantize_rounds_ties_away_from_zero():
    b = Builder()
    x = b.tensor("x", (1, 8))
    q = b.tensor("q", (1, 8), np.int8, quant=(0.5, 1))
    b.op("QUANTIZE", [x], [q])
    data = b.build([x], [q])
    x = np.array([[-1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 63.75, -70.0]], np.float32)  # x / 0.5 at .5 ties
    want = interpret(data, [x], reference=True)[0]
    np.testing.assert_array_equal(edgedl.load(data).run({"x": x})["q"], want)


def test_quantize_rounding_on_cuda():
    """The CUDA QuantizeLinear kernel rounds TFLite's way too (numba's CUDA simulator)."""
    pytest.importorskip("numba.cuda")
    from edgedl.kernels.cuda import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    b = Builder()
    x = b.tensor("x", (1, 6))
    q = b.tensor("q", (1, 6), np.int8, quant=(0.5, -2))
    b.op("QUANTIZE", [x], [q])
    data = b.build([x], [q])
    x = np.array([[-1.25, -0.25, 0.25, 0.75, 2.25, 100.0]], np.float32)
    want = interpret(data, [x], reference=True)[0]
    np.testing.assert_array_equal(edgedl.load(data, device="cuda").run({"x": x})["q"], want)


def _same_bits(data: bytes, x: np.ndarray) -> None:
    """edgedl's output is the interpreter's reference kernels' output, bit for bit."""
    np.testing.assert_array_equal(edgedl.load(data).run({"input": x})["y"], interpret(data, [x], reference=True)[0])


def _int8_conv_then(out_op):
    """QUANTIZE -> CONV_2D int8 on a (1, 5, 5, 2) input -> ``out_op(builder, conv_out)`` -> DEQUANTIZE."""
    return int8_conv_model(out_op, in_shape=(1, 5, 5, 2))


@pytest.mark.parametrize("code,options,other_q,out_q", [
    ("ADD", "AddOptions", (0.02, 7), (0.07, -9)), ("MUL", "MulOptions", (0.03, -4), (0.05, 2)),
])
def test_int8_add_and_mul_are_bit_exact(code, options, other_q, out_q):
    def op(b, c):
        k = b.const("k", np.random.default_rng(2).integers(-128, 128, (4,)), np.int8, quant=other_q)
        y = b.tensor("r", (1, 5, 5, 4), np.int8, quant=out_q)
        b.op(code, [c, k], [y], options, fusedActivationFunction=AF.RELU)
        return y, (1, 5, 5, 4)
    _same_bits(_int8_conv_then(op), _f32(1, 5, 5, 2, scale=2.0))


def test_int8_pad_and_concatenation_move_codes():
    def op(b, c):
        cat = b.tensor("cat", (1, 5, 5, 8), np.int8, quant=(0.06, -5))
        b.op("CONCATENATION", [c, c], [cat], "ConcatenationOptions", axis=3)
        p = b.tensor("p", (1, 6, 7, 8), np.int8, quant=(0.06, -5))
        b.op("PAD", [cat, b.const("pads", np.array([[0, 0], [1, 0], [0, 2], [0, 0]], np.int32), np.int32)], [p])
        return p, (1, 6, 7, 8)
    _same_bits(_int8_conv_then(op), _f32(1, 5, 5, 2, scale=2.0))


def test_int8_operators_without_an_int8_form_are_errors_not_float_math():
    """L2_POOL_2D has no int8 kernel in TFLite: an error naming it."""
    def l2(b, c):
        y = b.tensor("r", (1, 5, 5, 4), np.int8, quant=(0.05, 0))
        b.op("L2_POOL_2D", [c], [y], "Pool2DOptions", padding=SAME, strideW=1, strideH=1, filterWidth=2,
             filterHeight=2)
        return y, (1, 5, 5, 4)
    with pytest.raises(UnsupportedOpError, match="L2_POOL_2D.*int8 form .* not supported"):
        edgedl.load(_int8_conv_then(l2))


# -- more float operators -----------------------------------------------------------------------------------
@pytest.mark.parametrize("code,options,fields", [
    ("EXP", None, {}), ("LOG", None, {}), ("SQRT", None, {}), ("RSQRT", None, {}), ("ABS", None, {}),
    ("NEG", None, {}), ("ELU", None, {}), ("GELU", "GeluOptions", {"approximate": False}),
    ("GELU", "GeluOptions", {"approximate": True}), ("LOG_SOFTMAX", "LogSoftmaxOptions", {}),
])
def test_more_element_wise_ops(code, options, fields):
    def op(b, c):
        src = c
        if code in ("LOG", "SQRT", "RSQRT"):  # positive inputs
            src = b.tensor("pos", (1, 6, 6, 4))
            b.op("ABS", [c], [src])
        y = b.tensor("y", (1, 6, 6, 4))
        b.op(code, [src], [y], options, **fields)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)], rtol=2e-5)


@pytest.mark.parametrize("code,onnx_out", [("SUM", np.float32), ("REDUCE_MAX", np.float32),
                                           ("REDUCE_MIN", np.float32), ("REDUCE_PROD", np.float32)])
def test_reductions(code, onnx_out):
    def op(b, c):
        y = b.tensor("y", (1, 4))
        b.op(code, [c, b.const("axes", np.array([1, 2], np.int32), np.int32)], [y], "ReducerOptions",
             keepDims=False)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2, scale=0.3)], rtol=1e-4)


@pytest.mark.parametrize("code", ["ARG_MAX", "ARG_MIN"])
def test_arg_max_min(code):
    def op(b, c):
        y = b.tensor("y", (1, 6, 6), np.int32)
        opts = "ArgMaxOptions" if code == "ARG_MAX" else "ArgMinOptions"
        b.op(code, [c, b.const("axis", np.array([3], np.int32), np.int32)], [y], opts, outputType=2)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


def test_slices_gather_split_pack_unpack_tile():
    def op(b, c):
        s1 = b.tensor("s1", (1, 4, 3, 4))
        b.op("SLICE", [c, b.const("begin", np.array([0, 1, 2, 0], np.int32), np.int32),
                       b.const("size", np.array([-1, 4, 3, -1], np.int32), np.int32)], [s1])
        s2 = b.tensor("s2", (2, 3, 2))
        b.op("STRIDED_SLICE", [s1, b.const("b", np.array([0, 0, 0, 1], np.int32), np.int32),
                               b.const("e", np.array([1, 4, 3, 4], np.int32), np.int32),
                               b.const("st", np.array([1, 2, 1, 2], np.int32), np.int32)], [s2],
             "StridedSliceOptions", shrinkAxisMask=1, beginMask=0, endMask=0)
        g = b.tensor("g", (2, 3, 2))
        b.op("GATHER", [s2, b.const("idx", np.array([2, 0, 1], np.int32), np.int32)], [g], "GatherOptions", axis=1)
        parts = [b.tensor(f"part{k}", (2, 1, 2)) for k in range(3)]
        b.op("SPLIT", [b.const("axis", np.array(1, np.int32), np.int32), g], parts, "SplitOptions", numSplits=3)
        packed = b.tensor("packed", (3, 2, 1, 2))
        b.op("PACK", parts, [packed], "PackOptions", valuesCount=3, axis=0)
        un = [b.tensor(f"un{k}", (3, 1, 2)) for k in range(2)]
        b.op("UNPACK", [packed], un, "UnpackOptions", num=2, axis=1)
        tiled = b.tensor("tiled", (3, 2, 4))
        b.op("TILE", [un[1], b.const("reps", np.array([1, 2, 2], np.int32), np.int32)], [tiled])
        sv = [b.tensor("sv0", (3, 2, 1)), b.tensor("sv1", (3, 2, 3))]
        b.op("SPLIT_V", [tiled, b.const("sizes", np.array([1, 3], np.int32), np.int32),
                         b.const("ax", np.array(2, np.int32), np.int32)], sv, "SplitVOptions", numSplits=2)
        y = b.tensor("y", (3, 2, 3))
        b.op("ADD", [sv[1], sv[0]], [y], "AddOptions")
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


@pytest.mark.parametrize("code,options,align,half", [
    ("RESIZE_BILINEAR", "ResizeBilinearOptions", False, False),
    ("RESIZE_BILINEAR", "ResizeBilinearOptions", True, False),
    ("RESIZE_BILINEAR", "ResizeBilinearOptions", False, True),
    ("RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions", False, False),
    ("RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions", True, False),
    ("RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions", False, True),
])
def test_resize(code, options, align, half):
    def op(b, c):
        y = b.tensor("y", (1, 10, 15, 4))
        b.op(code, [c, b.const("size", np.array([10, 15], np.int32), np.int32)], [y], options, alignCorners=align,
             halfPixelCenters=half)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


def test_depth_space_prelu_mirror_pad_l2_pool_batch_matmul():
    def op(b, c):
        s2d = b.tensor("s2d", (1, 3, 3, 16))
        b.op("SPACE_TO_DEPTH", [c], [s2d], "SpaceToDepthOptions", blockSize=2)
        d2s = b.tensor("d2s", (1, 6, 6, 4))
        b.op("DEPTH_TO_SPACE", [s2d], [d2s], "DepthToSpaceOptions", blockSize=2)
        pr = b.tensor("pr", (1, 6, 6, 4))
        b.op("PRELU", [d2s, b.const("slope", _f32(1, 1, 4))], [pr])
        mp = b.tensor("mp", (1, 8, 7, 4))
        b.op("MIRROR_PAD", [pr, b.const("pads", np.array([[0, 0], [1, 1], [0, 1], [0, 0]], np.int32), np.int32)],
             [mp], "MirrorPadOptions", mode=0)
        l2 = b.tensor("l2", (1, 4, 4, 4))
        b.op("L2_POOL_2D", [mp], [l2], "Pool2DOptions", padding=SAME, strideW=2, strideH=2, filterWidth=2,
             filterHeight=2)
        flat = b.tensor("flat", (1, 16, 4))
        b.op("RESHAPE", [l2, b.const("shape", np.array([1, 16, 4], np.int32), np.int32)], [flat])
        y = b.tensor("y", (1, 4, 3))
        b.op("BATCH_MATMUL", [flat, b.const("m", _f32(1, 3, 16))], [y], "BatchMatMulOptions", adjX=True,
             adjY=True)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)], rtol=1e-4)


@pytest.mark.parametrize("padding,stride,out_hw", [(SAME, 2, (12, 12)), (VALID, 2, (13, 13)), (SAME, 1, (6, 6))])
def test_transpose_conv(padding, stride, out_hw):
    def op(b, c):
        y = b.tensor("y", (1, *out_hw, 3))
        shape = b.const("out_shape", np.array([1, *out_hw, 3], np.int32), np.int32)
        b.op("TRANSPOSE_CONV", [shape, b.const("tw", _f32(3, 3, 3, 4, scale=0.3)), c, b.const("tb", _f32(3))],
             [y], "TransposeConvOptions", padding=padding, strideW=stride, strideH=stride)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


def _sparse_weights(b, dense: np.ndarray, block: int | None):
    """``dense`` [rows, cols] stored sparse: CSR over the columns (``block``: in 1 x block blocks)."""
    rows, cols = dense.shape
    width = cols // (block or 1)
    seg, idx, vals = [0], [], []
    for r in range(rows):
        for c in range(width):
            chunk = dense[r, c * (block or 1):(c + 1) * (block or 1)]
            if np.any(chunk):
                idx.append(c)
                vals.extend(chunk.tolist())
        seg.append(len(idx))
    t = b.tensors[b.const("w_sparse", np.array(vals, np.float32))]
    t.shape = [rows, cols]
    sp = schema.SparsityParametersT()

    def dim(fmt, size=0, segments=None, indices=None):
        m = schema.DimensionMetadataT()
        m.format, m.denseSize = fmt, size
        if segments is not None:
            m.arraySegmentsType, m.arrayIndicesType = schema.SparseIndexVector.Int32Vector, \
                schema.SparseIndexVector.Uint8Vector
            m.arraySegments, m.arrayIndices = schema.Int32VectorT(), schema.Uint8VectorT()
            m.arraySegments.values, m.arrayIndices.values = segments, indices
        return m
    dims = [dim(0, rows), dim(1, 0, seg, idx)]
    sp.traversalOrder = [0, 1] if not block else [0, 1, 2]
    if block:
        sp.blockMap = [1]
        dims.append(dim(0, block))
    sp.dimMetadata = dims
    t.sparsity = sp
    return len(b.tensors) - 1


@pytest.mark.parametrize("block", [None, 2])
def test_sparse_weights_through_densify(block):
    dense = _f32(3, 8) * (RNG.random((3, 8)) > 0.5)
    if block:
        dense = dense.reshape(3, 4, 2) * (RNG.random((3, 4, 1)) > 0.4)
        dense = dense.reshape(3, 8).astype(np.float32)
    b = Builder()
    x = b.tensor("x", (2, 8))
    w_sparse = _sparse_weights(b, dense, block)
    w = b.tensor("w", (3, 8))
    b.op("DENSIFY", [w_sparse], [w])
    y = b.tensor("y", (2, 3))
    b.op("FULLY_CONNECTED", [x, w, -1], [y], "FullyConnectedOptions")
    model = _check(b.build([x], [y]), [_f32(2, 8)])
    gemm = next(n for n in model.graph.nodes if n.op_type == "Gemm")
    np.testing.assert_array_equal(model.graph.initializers[gemm.inputs[1]], dense)


# -- streaming state -----------------------------------------------------------------------------------------
def _streaming_model():
    """A running sum and a frame counter kept in resource variables: CALL_ONCE assigns their initial values
    (subgraph 1); each run reads them, adds the frame, assigns them back and outputs sum * 0.5 and the count."""
    b = Builder()
    h0, h1 = b.tensor("h_acc", (), "resource"), b.tensor("h_n", (), "resource")
    b.op("VAR_HANDLE", [], [h0], "VarHandleOptions", sharedName="acc")
    b.op("VAR_HANDLE", [], [h1], "VarHandleOptions", sharedName="count")
    b.op("ASSIGN_VARIABLE", [h0, b.const("acc0", np.full((1, 4), 0.5, np.float32))], [])
    b.op("ASSIGN_VARIABLE", [h1, b.const("n0", np.zeros((1,), np.float32))], [])
    init = b.subgraph([], [])
    x = b.tensor("frame", (1, 4))
    b.op("CALL_ONCE", [], [], "CallOnceOptions", initSubgraphIndex=init)
    h_acc, h_n = b.tensor("acc_handle", (), "resource"), b.tensor("n_handle", (), "resource")
    b.op("VAR_HANDLE", [], [h_acc], "VarHandleOptions", sharedName="acc")
    b.op("VAR_HANDLE", [], [h_n], "VarHandleOptions", sharedName="count")
    acc, n = b.tensor("acc", (1, 4)), b.tensor("n", (1,))
    b.op("READ_VARIABLE", [h_acc], [acc])
    b.op("READ_VARIABLE", [h_n], [n])
    new_acc, new_n = b.tensor("new_acc", (1, 4)), b.tensor("new_n", (1,))
    b.op("ADD", [acc, x], [new_acc], "AddOptions")
    b.op("ADD", [n, b.const("one", np.ones((1,), np.float32))], [new_n], "AddOptions")
    b.op("ASSIGN_VARIABLE", [h_acc, new_acc], [])
    b.op("ASSIGN_VARIABLE", [h_n, new_n], [])
    y = b.tensor("y", (1, 4))
    b.op("MUL", [new_acc, b.const("half", np.float32(0.5))], [y], "MulOptions")
    return b.build([x], [y, new_n])


def test_streaming_state_persists_between_runs_and_resets():
    from ai_edge_litert.interpreter import Interpreter

    data = _streaming_model()
    model = edgedl.load(data)
    assert [s.name for s in model.inputs] == ["frame"] and [s.name for s in model.outputs] == ["y", "new_n"]
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    frames = [_f32(1, 4) for _ in range(4)]
    first = None
    for k, x in enumerate(frames):
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        want = [it.get_tensor(d["index"]) for d in it.get_output_details()]
        got = model.run({"frame": x})
        np.testing.assert_allclose(got["y"], want[0], rtol=1e-6, err_msg=f"frame {k}")
        np.testing.assert_array_equal(got["new_n"], want[1])
        assert got["new_n"][0] == k + 1
        first = first if first is not None else got
    model.reset_state()
    again = model(frames[0])
    np.testing.assert_array_equal(again[0], first["y"])
    assert again[1][0] == 1
    with pytest.raises(EdgeDLError, match="the model's state"):
        model.run({"frame": frames[0], "variable:acc": frames[0]})


@pytest.mark.parametrize("time_major,peephole,cifg", [(False, False, False), (True, True, False), (False, True, True)])
def test_unidirectional_sequence_lstm_keeps_its_state(time_major, peephole, cifg):
    """UNIDIRECTIONAL_SEQUENCE_LSTM against the interpreter over three invokes: its state tensors carry over
    from one run to the next, and reset_state() matches the interpreter's reset_all_variables()."""
    from ai_edge_litert.interpreter import Interpreter

    batch, steps, n_in, hidden = 2, 5, 3, 4
    b = Builder()
    x_shape = (steps, batch, n_in) if time_major else (batch, steps, n_in)
    x = b.tensor("x", x_shape)
    ins = [x]
    for k in range(4):  # gates i, f, c, o; CIFG: no input gate (i = 1 - f)
        ins.append(-1 if cifg and k == 0 else b.const(f"w{k}", _f32(hidden, n_in, scale=0.5)))
    for k in range(4):
        ins.append(-1 if cifg and k == 0 else b.const(f"r{k}", _f32(hidden, hidden, scale=0.5)))
    for k in range(3):
        ins.append(b.const(f"p{k}", _f32(hidden, scale=0.3)) if peephole and not (cifg and k == 0) else -1)
    for k in range(4):
        ins.append(-1 if cifg and k == 0 else b.const(f"b{k}", _f32(hidden, scale=0.2)))
    ins += [-1, -1]
    for name in ("h", "c"):
        t = b.tensor(name, (batch, hidden))
        b.tensors[t].isVariable = True
        ins.append(t)
    ins += [-1] * 4
    y = b.tensor("y", (steps, batch, hidden) if time_major else (batch, steps, hidden))
    b.op("UNIDIRECTIONAL_SEQUENCE_LSTM", ins, [y], "UnidirectionalSequenceLSTMOptions",
         fusedActivationFunction=AF.TANH, timeMajor=time_major)
    data = b.build([x], [y])
    model = edgedl.load(data)
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    xs = [_f32(*x_shape) for _ in range(3)]
    for k, xv in enumerate(xs + xs[:1]):
        if k == 3:
            it.reset_all_variables()
            model.reset_state()
        it.set_tensor(it.get_input_details()[0]["index"], xv)
        it.invoke()
        want = it.get_tensor(it.get_output_details()[0]["index"])
        np.testing.assert_allclose(model.run({"x": xv})["y"], want, rtol=1e-5, atol=1e-6, err_msg=f"invoke {k}")


def test_info_tells_what_runs_in_int8(tmp_path, capsys):
    from edgedl.cli import main

    path = tmp_path / "int8.tflite"
    path.write_bytes(_int8_net())
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "requantization: double" in out
    assert "int8 steps:" in out and "QLinearConv x2" in out and "com.microsoft.QGemm x1" in out
    assert "quantize/dequantize: DequantizeLinear x1, QuantizeLinear x1" in out


def _two_signatures() -> bytes:
    """Subgraph 0 ("double": y = 2x) and subgraph 1 ("shift": out = in + 3), each with a SignatureDef."""
    b = Builder()
    a = b.tensor("t_in", (1, 3))
    r = b.tensor("t_out", (1, 3))
    b.op("ADD", [a, b.const("three", np.full((1, 3), 3.0, np.float32))], [r], "AddOptions")
    shift = b.subgraph([a], [r])
    x = b.tensor("x_tensor", (1, 3))
    y = b.tensor("y_tensor", (1, 3))
    b.op("MUL", [x, b.const("two", np.full((1, 3), 2.0, np.float32))], [y], "MulOptions")
    data = b.build([x], [y])
    # add the SignatureDefs to the built model
    m = schema.ModelT.InitFromPackedBuf(data, 0)

    def sig(key, index, ins, outs):
        s = schema.SignatureDefT()
        s.signatureKey, s.subgraphIndex = key, index
        s.inputs, s.outputs = [], []
        for name, t in ins:
            tm = schema.TensorMapT()
            tm.name, tm.tensorIndex = name, t
            s.inputs.append(tm)
        for name, t in outs:
            tm = schema.TensorMapT()
            tm.name, tm.tensorIndex = name, t
            s.outputs.append(tm)
        return s
    m.signatureDefs = [sig("double", 0, [("value", 0)], [("doubled", 1)]), sig("shift", shift, [("value", 0)],
                                                                              [("shifted", 1)])]
    import flatbuffers

    fb = flatbuffers.Builder(1024)
    fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
    return bytes(fb.Output())


def test_signatures_select_a_subgraph_and_its_names():
    from ai_edge_litert.interpreter import Interpreter

    data = _two_signatures()
    model = edgedl.load(data)
    assert model.signatures == {"double": {"inputs": ["value"], "outputs": ["doubled"]},
                                "shift": {"inputs": ["value"], "outputs": ["shifted"]}}
    x = _f32(1, 3)
    np.testing.assert_array_equal(model.run({"x_tensor": x})["y_tensor"], 2 * x)
    it = Interpreter(model_content=data)
    for key, out in (("double", "doubled"), ("shift", "shifted")):
        m = edgedl.load(data, signature=key)
        assert [s.name for s in m.inputs] == ["value"] and [s.name for s in m.outputs] == [out]
        want = it.get_signature_runner(key)(value=x)[out]
        np.testing.assert_allclose(m.run({"value": x})[out], want, rtol=1e-6)
    with pytest.raises(EdgeDLError, match="no signature 'nope'"):
        edgedl.load(data, signature="nope")


@pytest.mark.parametrize("padding", [SAME, VALID])
def test_int8_average_pool_is_bit_exact(padding):
    """int8 AVERAGE_POOL_2D: TFLite averages the raw values and rounds half away from zero; SAME windows at the
    edges average fewer values."""
    def op(b, c):
        pooled = b.tensor("pooled", (1, 3, 3, 4) if padding == SAME else (1, 2, 2, 4), np.int8, quant=(0.06, -5))
        b.op("AVERAGE_POOL_2D", [c], [pooled], "Pool2DOptions", padding=padding, strideW=2, strideH=2,
             filterWidth=2, filterHeight=2)
        return pooled, (1, 3, 3, 4) if padding == SAME else (1, 2, 2, 4)
    data = _int8_conv_then(op)
    model = edgedl.load(data)
    assert any(n.op_type == "QLinearAveragePool" for n in model.graph.nodes)
    for seed in range(5):
        x = np.random.default_rng(seed).standard_normal((1, 5, 5, 2)).astype(np.float32) * 2
        np.testing.assert_array_equal(model.run({"input": x})["y"], interpret(data, [x], reference=True)[0])


def test_int8_mean_over_height_and_width_is_bit_exact():
    """int8 MEAN over H, W, with and without keep_dims (a converted GlobalAveragePooling2D) with TFLite's reference
    arithmetic (the count divided into the multiplier with integers), over 80 random quantizations, sizes and
    inputs (an earlier multiplier, x_scale / (count * y_scale) quantized at once, was one step off in ~6 % of
    them)."""
    from tflite_builder import Builder as B

    rng = np.random.default_rng(12)
    for trial in range(80):
        xs, ys = float(rng.random() * 0.3 + 0.002), float(rng.random() * 0.3 + 0.002)
        xz, yz = int(rng.integers(-60, 60)), int(rng.integers(-60, 60))
        h, w, keep = int(rng.integers(1, 15)), int(rng.integers(1, 15)), bool(trial % 2)
        b = B()
        x = b.tensor("input", (1, h, w, 4), np.int8, quant=(xs, xz))
        y = b.tensor("y", (1, 1, 1, 4) if keep else (1, 4), np.int8, quant=(ys, yz))
        b.op("MEAN", [x, b.const("axes", np.array([1, 2], np.int32), np.int32)], [y], "ReducerOptions",
             keepDims=keep)
        data = b.build([x], [y])
        xv = rng.integers(-128, 128, (1, h, w, 4)).astype(np.int8)
        np.testing.assert_array_equal(edgedl.load(data).run({"input": xv})["y"],
                                      interpret(data, [xv], reference=True)[0], err_msg=f"trial {trial}")


# -- dynamic batch, training, export ---------------------------------------------------------------------------
def _dynamic_batch_net(resize: bool = True) -> bytes:
    """CONV_2D (RELU6) [-> RESIZE_BILINEAR] -> MEAN -> RESHAPE -> FULLY_CONNECTED with a dynamic batch
    (shape_signature -1)."""
    b = Builder()
    rng = np.random.default_rng(8)
    x = b.tensor("input", (1, 6, 6, 2))
    b.tensors[x].shapeSignature = [-1, 6, 6, 2]
    c = b.tensor("c", (1, 6, 6, 4))
    b.op("CONV_2D", [x, b.const("w", rng.standard_normal((4, 3, 3, 2)) * 0.4), b.const("b", np.zeros(4))], [c],
         "Conv2DOptions", padding=SAME, strideW=1, strideH=1, dilationWFactor=1, dilationHFactor=1,
         fusedActivationFunction=AF.RELU6)
    r = c
    if resize:
        r = b.tensor("r", (1, 9, 9, 4))
        b.op("RESIZE_BILINEAR", [c, b.const("size", np.array([9, 9], np.int32), np.int32)], [r],
             "ResizeBilinearOptions", halfPixelCenters=True)
    m = b.tensor("m", (1, 4))
    b.op("MEAN", [r, b.const("axes", np.array([1, 2], np.int32), np.int32)], [m], "ReducerOptions", keepDims=False)
    flat = b.tensor("flat", (1, 4))
    b.op("RESHAPE", [m, b.const("shape", np.array([-1, 4], np.int32), np.int32)], [flat])
    y = b.tensor("logits", (1, 3))
    b.op("FULLY_CONNECTED", [flat, b.const("fw", rng.standard_normal((3, 4))), b.const("fb", np.zeros(3))], [y],
         "FullyConnectedOptions")
    return b.build([x], [y])


def test_a_dynamic_batch_runs_any_batch():
    from ai_edge_litert.interpreter import Interpreter

    data = _dynamic_batch_net()
    model = edgedl.load(data)
    assert model.inputs[0].shape == ("N", 6, 6, 2)
    x = _f32(5, 6, 6, 2)
    it = Interpreter(model_content=data)
    it.resize_tensor_input(it.get_input_details()[0]["index"], [5, 6, 6, 2])
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    want = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(model.run({"input": x})["logits"], want, rtol=1e-5, atol=1e-6)


def test_an_imported_model_fine_tunes_and_exports_standard_onnx(tmp_path):
    """A float .tflite model trains (every layer) with the Trainer, and Model.save writes ONNX that onnxruntime
    runs to edgedl's outputs."""
    ort = pytest.importorskip("onnxruntime")
    model = edgedl.load(_dynamic_batch_net(resize=False))
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((24, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, 24)
    before = edgedl.Trainer(model, trainable="all").evaluate(x, y)["loss"]
    trainer = edgedl.Trainer(model, trainable="all", optimizer=edgedl.train.Adam(lr=0.05), seed=0)
    history = trainer.fit(x, y, epochs=8, batch_size=8)
    assert history.loss[-1] < before
    path = tmp_path / "trained.onnx"
    model.save(str(path))
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, model.run({"input": x})["logits"], rtol=1e-4, atol=1e-5)


def test_mediapipe_convolution_2d_transpose_bias():
    """MediaPipe's custom Convolution2DTransposeBias (selfie segmentation's last layer): options are TFLite's C
    struct (padding, stride width, stride height)."""
    def op(b, c):
        y = b.tensor("y", (1, 12, 12, 1))
        b.custom("Convolution2DTransposeBias", [c, b.const("k", _f32(1, 2, 2, 4, scale=0.5)), b.const("kb", _f32(1))],
                 [y], np.array([1, 2, 2], "<i4").tobytes())
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


def _hybrid_net(quantized: bool) -> bytes:
    """CONV_2D -> RESHAPE -> FULLY_CONNECTED with int8 weights (a dynamic-range model), or with those weights
    dequantized to float32 (``quantized=False``)."""
    rng = np.random.default_rng(6)
    ws = (rng.random(4) * 0.01 + 0.005).astype(np.float32)
    wq, fq = rng.integers(-127, 128, (4, 3, 3, 2)), rng.integers(-127, 128, (3, 144))
    b = Builder()
    x = b.tensor("input", (1, 6, 6, 2))
    if quantized:
        w = b.const("w", wq, np.int8, quant=(ws, np.zeros(4), 0))
        fw = b.const("fw", fq, np.int8, quant=(0.004, 0))
    else:
        w = b.const("w", wq * ws[:, None, None, None])
        fw = b.const("fw", fq * np.float32(0.004))
    c = b.tensor("c", (1, 6, 6, 4))
    b.op("CONV_2D", [x, w, b.const("b", np.linspace(-0.1, 0.1, 4))], [c], "Conv2DOptions", padding=SAME,
         strideW=1, strideH=1, dilationWFactor=1, dilationHFactor=1, fusedActivationFunction=AF.RELU)
    flat = b.tensor("flat", (1, 144))
    b.op("RESHAPE", [c, b.const("shape", np.array([1, 144], np.int32), np.int32)], [flat])
    y = b.tensor("y", (1, 3))
    b.op("FULLY_CONNECTED", [flat, fw, b.const("fb", np.linspace(-0.2, 0.2, 3))], [y], "FullyConnectedOptions")
    return b.build([x], [y])


def test_dynamic_range_weights_run_in_float():
    """A dynamic-range (hybrid) model: int8 weights with float activations. edgedl dequantizes the weights at
    import and runs float layers: exactly the float model with those weights (within 1e-5); TFLite's hybrid
    kernels also quantize the input on the fly, so they differ from both by that rounding (here < 2%)."""
    data = _hybrid_net(True)
    xv = _f32(1, 6, 6, 2)
    got = edgedl.load(data).run({"input": xv})["y"]
    float_model = interpret(_hybrid_net(False), [xv])[0]
    np.testing.assert_allclose(got, float_model, rtol=1e-5, atol=1e-6)
    hybrid = interpret(data, [xv])[0]
    np.testing.assert_allclose(got, hybrid, atol=0.02 * np.abs(hybrid).max())


def test_an_imported_int8_model_exports_qdq_and_fine_tunes_quantization_aware(tmp_path):
    """An imported full-integer model saves as standard QDQ ONNX (ONNX rounding: onnxruntime and edgedl agree
    on the file, both within one output step of TFLite), and fine-tunes with quantization-aware training."""
    ort = pytest.importorskip("onnxruntime")
    data = _int8_net(dynamic_batch=True)
    model = edgedl.load(data)
    path = tmp_path / "int8.onnx"
    model.save(str(path))
    x = _f32(1, 6, 6, 3, scale=2.0)
    ours = edgedl.load(str(path)).run({"input": x})["y"]
    theirs = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(ours, interpret(data, [x], reference=True)[0], atol=0.1 + 1e-6)  # y's scale: 0.1
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((8, 6, 6, 3)).astype(np.float32), rng.integers(0, 5, 8)
    trainer = edgedl.Trainer(model, trainable="last:1", optimizer=edgedl.train.Adam(lr=0.01), seed=0)
    assert trainer.qat is not None
    history = trainer.fit(xs, ys, epochs=3, batch_size=4)
    assert np.isfinite(history.loss).all()
    model.save(str(tmp_path / "tuned.onnx"))
    tuned = ort.InferenceSession(str(tmp_path / "tuned.onnx")).run(None, {"input": x})[0]
    np.testing.assert_array_equal(model.run({"input": x})["y"], tuned)


@pytest.mark.parametrize("mode", [0, 1])  # REFLECT, SYMMETRIC
def test_mirror_pad_modes(mode):
    def op(b, c):
        y = b.tensor("y", (1, 9, 7, 4))
        b.op("MIRROR_PAD", [c, b.const("pads", np.array([[0, 0], [2, 1], [0, 1], [0, 0]], np.int32), np.int32)],
             [y], "MirrorPadOptions", mode=mode)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


@pytest.mark.parametrize("begin,end,strides,masks,out_shape", [
    ([0, 1], [0, 5], [1, 2], dict(ellipsisMask=1), (1, 6, 6, 2)),            # ..., 1:5:2
    ([0, 0, 2], [0, 0, 3], [1, 1, 1], dict(newAxisMask=2, beginMask=1, endMask=1, shrinkAxisMask=4),
     (1, 1, 6, 4)),                                                            # :, newaxis, 2, (the rest whole)
    ([0, -1, 0], [0, -7, 0], [1, -1, 1], dict(beginMask=5, endMask=5, ellipsisMask=4), (1, 6, 6, 4)),
])
def test_strided_slice_masks(begin, end, strides, masks, out_shape):
    def op(b, c):
        y = b.tensor("y", out_shape)
        consts = [b.const(n, np.array(v, np.int32), np.int32) for n, v in (("b", begin), ("e", end), ("s", strides))]
        b.op("STRIDED_SLICE", [c, *consts], [y], "StridedSliceOptions", **masks)
        return y
    _check(_conv_model(op), [_f32(1, 6, 6, 2)])


def test_int8_mean_on_cuda():
    """TFLite's reference MEAN arithmetic in the CUDA kernel too (numba's CUDA simulator)."""
    pytest.importorskip("numba.cuda")
    from edgedl.kernels.cuda import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    b = Builder()
    x = b.tensor("input", (1, 5, 5, 3), np.int8, quant=(0.037, -9))
    y = b.tensor("y", (1, 3), np.int8, quant=(0.021, 4))
    b.op("MEAN", [x, b.const("axes", np.array([1, 2], np.int32), np.int32)], [y], "ReducerOptions", keepDims=False)
    data = b.build([x], [y])
    xv = np.random.default_rng(3).integers(-128, 128, (1, 5, 5, 3)).astype(np.int8)
    np.testing.assert_array_equal(edgedl.load(data, device="cuda").run({"input": xv})["y"],
                                  interpret(data, [xv], reference=True)[0])


@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_int8_softmax_is_bit_exact(beta):
    """TFLite's reference int8 softmax (fixed-point exp and reciprocal, edgedl/quant/tflite_softmax.py) at the end
    of an int8 classifier and along the channels of a feature map, bit for bit."""
    def op(b, c):
        flat = b.tensor("flat", (1, 100), np.int8, quant=(0.06, -5))
        b.op("RESHAPE", [c, b.const("shape", np.array([1, 100], np.int32), np.int32)], [flat])
        probs = b.tensor("probs", (1, 100), np.int8, quant=(1.0 / 256, -128))
        b.op("SOFTMAX", [flat], [probs], "SoftmaxOptions", beta=beta)
        return probs, (1, 100)
    def op_channels(b, c):
        probs = b.tensor("probs", (1, 5, 5, 4), np.int8, quant=(1.0 / 256, -128))
        b.op("SOFTMAX", [c], [probs], "SoftmaxOptions", beta=beta)
        return probs, (1, 5, 5, 4)
    for build in (op, op_channels):
        data = _int8_conv_then(build)
        for seed in range(3):
            _same_bits(data, np.random.default_rng(seed).standard_normal((1, 5, 5, 2)).astype(np.float32) * 3)


def test_int8_softmax_exports_as_qdq(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    def op(b, c):
        flat = b.tensor("flat", (1, 100), np.int8, quant=(0.06, -5))
        b.op("RESHAPE", [c, b.const("shape", np.array([1, 100], np.int32), np.int32)], [flat])
        probs = b.tensor("probs", (1, 100), np.int8, quant=(1.0 / 256, -128))
        b.op("SOFTMAX", [flat], [probs], "SoftmaxOptions", beta=0.8)
        return probs, (1, 100)
    data = _int8_conv_then(op)
    model = edgedl.load(data)
    model.save(str(tmp_path / "sm.onnx"))
    x = _f32(1, 5, 5, 2, scale=3.0)
    ours = edgedl.load(str(tmp_path / "sm.onnx")).run({"input": x})["y"]
    np.testing.assert_allclose(ort.InferenceSession(str(tmp_path / "sm.onnx")).run(None, {"input": x})[0], ours,
                               atol=1 / 256 + 1e-7)
    np.testing.assert_allclose(ours, interpret(data, [x], reference=True)[0], atol=1 / 256 + 1e-7)


def test_int8_logistic_is_bit_exact():
    """TFLite's reference int8 logistic (Q4.27 input, fixed-point 1 / (1 + exp(-x)), saturation beyond the
    radius) through a 256-entry table, bit for bit on every input code."""
    rng = np.random.default_rng(5)
    for _ in range(10):
        xs, xz = float(rng.random() * 0.2 + 0.005), int(rng.integers(-30, 30))
        b = Builder()
        x = b.tensor("input", (1, 256), np.int8, quant=(xs, xz))
        y = b.tensor("y", (1, 256), np.int8, quant=(1 / 256, -128))
        b.op("LOGISTIC", [x], [y])
        data = b.build([x], [y])
        codes = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
        np.testing.assert_array_equal(edgedl.load(data).run({"input": codes})["y"],
                                      interpret(data, [codes], reference=True)[0])
