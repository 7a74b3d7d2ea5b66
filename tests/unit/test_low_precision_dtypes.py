"""The low-precision element types (float8 e4m3fn/e4m3fnuz/e5m2/e5m2fnuz/e8m0, float6, float4e2m1, int4/uint4,
int2/uint2; ml_dtypes types, one byte per element in memory): decoding packed tensors against
onnx.numpy_helper, Cast against ml_dtypes (saturation, round modes), QuantizeLinear / DequantizeLinear against
onnx's reference implementation, the export round trip, and hostile tensors."""
import numpy as np
import onnx
import pytest
from edgedl.converters import onnx_proto as pb
from edgedl.converters.onnx_export import export_graph
from edgedl.converters.onnx_import import import_onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import edgedl
import edgedl.backend
from edgedl.errors import EdgeDLError, ModelFormatError, UnsupportedOpError
from edgedl.ops import logic
from edgedl.ops.gather import cast_array
from edgedl.registry import Op

ml_dtypes = pytest.importorskip("ml_dtypes")
# the expected values come from numpy / ml_dtypes casts of NaN, Inf and out-of-range values, which warn
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in cast:RuntimeWarning")

pb.load_ml_dtypes()  # (a model loads them when it first needs one)
LOW = sorted(pb.LOW_PRECISION_DTYPES)
FLOAT8 = [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ]
SUB_BYTE_INTS = [TensorProto.UINT4, TensorProto.INT4, TensorProto.UINT2, TensorProto.INT2]
NAME = TensorProto.DataType.Name


def _np(code: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(code))


def _codes(code: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random valid bit patterns of the type (every code of its width), as that type."""
    bits = pb.PACKED_BITS.get(code, 8)
    return np.random.default_rng(seed + code).integers(0, 1 << bits, n).astype(np.uint8).view(_np(code))


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_array_equal(np.ascontiguousarray(got).reshape(-1).view(np.uint8),
                                  np.ascontiguousarray(want).reshape(-1).view(np.uint8))


def _model(nodes, inputs, outputs, initializers=(), opset=25):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, c, s) for n, c, s in inputs],
                              [helper.make_tensor_value_info(n, c, s) for n, c, s in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11
    return model


def _empty_tensor(name: str, code: int, dims) -> TensorProto:
    t = TensorProto(name=name, data_type=code)
    t.dims.extend(dims)
    return t


def _run(model, feeds):
    return edgedl.load(model.SerializeToString()).run(feeds)


def _reference(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


# --- decoding ------------------------------------------------------------------------------------------------
def test_every_low_precision_type_is_known():
    # ml_dtypes >= 0.5 has them all; each matches onnx's numpy type
    assert LOW == list(range(17, 29))
    for code in LOW:
        assert pb.tensor_dtype_to_np_dtype(code) == _np(code)
        assert code not in pb.DTYPES  # DTYPES: numpy's own types and bfloat16


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 6, 7, 9, 13])
@pytest.mark.parametrize("code", LOW, ids=NAME)
def test_raw_data_matches_numpy_helper(code, count):
    arr = _codes(code, count)
    t = numpy_helper.from_array(arr, "t")  # packs 4-, 2- and 6-bit values
    assert len(t.raw_data) == pb.data_nbytes(code, count)
    _same_bits(pb.tensor_to_array(t), numpy_helper.to_array(t))
    _same_bits(pb.tensor_to_array(t), arr)
    if count == 6:  # a 2-D shape
        t = numpy_helper.from_array(arr.reshape(2, 3), "t")
        _same_bits(pb.tensor_to_array(t), arr.reshape(2, 3))


@pytest.mark.parametrize("count", [0, 1, 3, 4, 5, 8, 11])
@pytest.mark.parametrize("code", LOW, ids=NAME)
def test_int32_data_matches_numpy_helper(code, count):
    arr = _codes(code, count, seed=1)
    # make_tensor packs 4- and 2-bit values into int32_data (one packed byte per entry), float8/float6 one each
    vals = arr.astype(np.int32) if code in SUB_BYTE_INTS else arr.astype(np.float32)
    t = helper.make_tensor("t", code, (count,), vals)
    assert not t.HasField("raw_data")
    got, want = pb.tensor_to_array(t), numpy_helper.to_array(t)
    assert got.dtype == want.dtype == _np(code) and got.shape == want.shape == (count,)
    both_nan = np.isnan(got.astype(np.float32)) & np.isnan(want.astype(np.float32))
    assert ((got.view(np.uint8) == want.view(np.uint8)) | both_nan).all()


def test_scalar_and_bit_layout():
    # two int4 per byte, first in the low nibble; four uint2 per byte from the low bits up
    t = helper.make_tensor("t", TensorProto.INT4, (3,), b"\x8f\x07", raw=True)
    np.testing.assert_array_equal(pb.tensor_to_array(t).astype(np.int8), [-1, -8, 7])
    t = helper.make_tensor("t", TensorProto.UINT2, (5,), b"\xe4\x03", raw=True)
    np.testing.assert_array_equal(pb.tensor_to_array(t).astype(np.int8), [0, 1, 2, 3, 3])
    t = helper.make_tensor("t", TensorProto.FLOAT8E4M3FN, (), b"\x38", raw=True)  # 1.0
    got = pb.tensor_to_array(t)
    assert got.shape == () and float(got) == 1.0
    t = numpy_helper.from_array(np.array(-3.0, np.float32).astype(ml_dtypes.float4_e2m1fn))
    _same_bits(pb.tensor_to_array(t), numpy_helper.to_array(t))


@pytest.mark.parametrize("code", [TensorProto.INT4, TensorProto.UINT2, TensorProto.FLOAT8E5M2,
                                  TensorProto.FLOAT6E2M3, TensorProto.FLOAT4E2M1], ids=NAME)
def test_initializers_inputs_and_outputs_through_a_model(code):
    dt = _np(code)
    w = _codes(code, 7, seed=2)
    x = _codes(code, 7, seed=3)
    model = _model([helper.make_node("Concat", ["x", "w"], ["y"], axis=0)], [("x", code, [7])], [("y", code, [14])],
                   [numpy_helper.from_array(w, "w")])
    y = _run(model, {"x": x})["y"]
    assert y.dtype == dt
    _same_bits(y, np.concatenate([x, w]))
    m = edgedl.load(model.SerializeToString())
    assert m.inputs[0].dtype == dt


def test_export_round_trip_packs_again():
    inits = {"i4": _codes(TensorProto.INT4, 7), "u2": _codes(TensorProto.UINT2, 5),
             "f6": _codes(TensorProto.FLOAT6E3M2, 5), "f8": _codes(TensorProto.FLOAT8E4M3FNUZ, 3)}
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], [("x", TensorProto.INT4, [3])],
                   [("y", TensorProto.FLOAT, [3])], [numpy_helper.from_array(a, n) for n, a in inits.items()])
    graph = import_onnx(model.SerializeToString())
    out = export_graph(graph)
    onnx.checker.check_model(out)
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.INT4
    for t in out.graph.initializer:
        assert len(t.raw_data) == pb.data_nbytes(t.data_type, inits[t.name].size)
        _same_bits(numpy_helper.to_array(t), inits[t.name])


def test_external_data_of_a_packed_type(tmp_path):
    arr = _codes(TensorProto.INT4, 9, seed=4)
    packed = numpy_helper.from_array(arr).raw_data
    assert len(packed) == 5
    (tmp_path / "w.bin").write_bytes(b"\x00" + packed)

    def model_with(length):
        t = _empty_tensor("w", TensorProto.INT4, (9,))
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "w.bin"), ("offset", "1"), ("length", str(length))):
            t.external_data.add(key=k, value=v)
        return _model([helper.make_node("Cast", ["w"], ["y"], to=TensorProto.INT8)], [], [("y", TensorProto.INT8, [9])],
                      [t])

    path = tmp_path / "m.onnx"
    path.write_bytes(model_with(5).SerializeToString())
    np.testing.assert_array_equal(edgedl.load(str(path)).run({})["y"], arr.astype(np.int8))
    path.write_bytes(model_with(4).SerializeToString())
    with pytest.raises(ModelFormatError, match="5 bytes"):
        edgedl.load(str(path))


# --- hostile tensors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, count, nbytes", [
    (TensorProto.INT4, 5, 2), (TensorProto.UINT4, 5, 4), (TensorProto.FLOAT4E2M1, 1, 0), (TensorProto.INT2, 9, 2),
    (TensorProto.UINT2, 4, 2), (TensorProto.FLOAT6E2M3, 5, 3), (TensorProto.FLOAT6E3M2, 4, 4),
    (TensorProto.FLOAT8E4M3FN, 4, 3), (TensorProto.FLOAT8E8M0, 2, 3),
], ids=str)
def test_packed_raw_data_of_the_wrong_size_is_a_format_error(code, count, nbytes):
    t = _empty_tensor("w", code, (count,))
    t.raw_data = b"\x11" * nbytes
    model = _model([helper.make_node("Identity", ["w"], ["y"])], [], [("y", code, [count])], [t])
    with pytest.raises(ModelFormatError, match="initializer 'w'"):
        edgedl.load(model.SerializeToString())
    with pytest.raises(ValueError):
        pb.tensor_to_array(t)


def test_packed_int32_data_of_the_wrong_count_is_a_format_error():
    for code, entries in ((TensorProto.INT4, [1, 2]), (TensorProto.INT4, [1, 2, 3, 4]), (TensorProto.UINT2, []),
                          (TensorProto.FLOAT6E2M3, [1])):
        t = _empty_tensor("w", code, (5,))
        t.int32_data.extend(entries)
        model = _model([helper.make_node("Identity", ["w"], ["y"])], [], [("y", code, [5])], [t])
        with pytest.raises(ModelFormatError, match="initializer 'w'"):
            edgedl.load(model.SerializeToString())


def test_other_ops_reject_low_precision_types():
    f8 = np.ones((2, 2), np.float32).astype(ml_dtypes.float8_e4m3fn)
    for op, n in (("Add", 2), ("Relu", 1), ("Softmax", 1), ("ReduceSum", 1)):
        model = _model([helper.make_node(op, [f"x{i}" for i in range(n)], ["y"])],
                       [(f"x{i}", TensorProto.FLOAT8E4M3FN, [2, 2]) for i in range(n)], [("y", 0, None)])
        with pytest.raises(UnsupportedOpError):
            _run(model, {f"x{i}": f8 for i in range(n)})
    # ops that name an element type take only the types they compute in
    model = _model([helper.make_node("EyeLike", ["x"], ["y"], dtype=TensorProto.FLOAT8E4M3FN)],
                   [("x", TensorProto.FLOAT, [2, 2])], [("y", 0, None)])
    with pytest.raises(UnsupportedOpError, match="FLOAT8E4M3FN"):
        _run(model, {"x": np.ones((2, 2), np.float32)})


# --- Cast -----------------------------------------------------------------------------------------------------
SPECIAL = np.array([0.0, -0.0, 0.3, 1e-7, -1e-7, 1.0625, 100, 239, 241, 447, 449, 500, 1e6, -1e6, 57343, 57345,
                    60000, 70000, np.nan, np.inf, -np.inf], np.float32)
VALUES = np.concatenate([SPECIAL, np.random.default_rng(0).standard_normal(40).astype(np.float32) * 300])


def _cast_model(src: int, dst: int, shape, **attrs):
    return _model([helper.make_node("Cast", ["x"], ["y"], to=dst, **attrs)], [("x", src, shape)], [("y", dst, shape)])


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("code", FLOAT8, ids=NAME)
@pytest.mark.parametrize("src", [np.float32, np.float16, np.float64])
def test_cast_to_float8_against_ml_dtypes(code, src, saturate):
    dt = _np(code)
    x = VALUES.astype(src)
    limit = float(ml_dtypes.finfo(dt).max)
    want = np.clip(x.astype(np.float64), -limit, limit).astype(dt) if saturate else x.astype(dt)
    model = _cast_model(helper.np_dtype_to_tensor_dtype(np.dtype(src)), code, [x.size], saturate=saturate)
    _same_bits(_run(model, {"x": x})["y"], want)
    _same_bits(cast_array(x, dt, bool(saturate)), want)


def test_cast_to_float8_follows_the_spec_tables():
    x = np.array([np.inf, -np.inf, 1e6, np.nan, -0.0], np.float32)
    for code, sat, nosat in (
            (TensorProto.FLOAT8E4M3FN, [448, -448, 448], [np.nan, np.nan, np.nan]),
            (TensorProto.FLOAT8E4M3FNUZ, [240, -240, 240], [np.nan, np.nan, np.nan]),
            (TensorProto.FLOAT8E5M2, [57344, -57344, 57344], [np.inf, -np.inf, np.inf]),
            (TensorProto.FLOAT8E5M2FNUZ, [57344, -57344, 57344], [np.nan, np.nan, np.nan])):
        for saturate, want in ((1, sat), (0, nosat)):
            y = _run(_cast_model(TensorProto.FLOAT, code, [5], saturate=saturate), {"x": x})["y"].astype(np.float32)
            np.testing.assert_array_equal(y[:3], want)
            assert np.isnan(y[3]) and y[4] == 0
            assert np.signbit(y[4]) == (code in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2))


@pytest.mark.parametrize("code", LOW, ids=NAME)
def test_cast_from_low_precision_against_ml_dtypes(code):
    x = _codes(code, 64, seed=5)
    for dst in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
        y = _run(_cast_model(code, dst, [64]), {"x": x})["y"]
        np.testing.assert_array_equal(y, x.astype(_np(dst)))
    if code in SUB_BYTE_INTS:
        dst = TensorProto.INT8 if NAME(code).startswith("INT") else TensorProto.UINT8
        np.testing.assert_array_equal(_run(_cast_model(code, dst, [64]), {"x": x})["y"], x.astype(_np(dst)))


@pytest.mark.parametrize("code", SUB_BYTE_INTS + [TensorProto.FLOAT4E2M1, TensorProto.FLOAT6E2M3,
                                                  TensorProto.FLOAT6E3M2], ids=NAME)
def test_cast_to_sub_byte_types_against_ml_dtypes(code):
    dt = _np(code)
    x = np.arange(-9, 16, dtype=np.float32) * 0.75
    _same_bits(_run(_cast_model(TensorProto.FLOAT, code, [x.size]), {"x": x})["y"], x.astype(dt))
    i = np.arange(-20, 20, dtype=np.int32)  # integers wrap into the low bits (as ml_dtypes does)
    _same_bits(_run(_cast_model(TensorProto.INT32, code, [i.size]), {"x": i})["y"], i.astype(dt))


def test_cast_between_low_precision_types():
    x = _codes(TensorProto.FLOAT8E5M2, 32, seed=6)
    y = _run(_cast_model(TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E4M3FN, [32]), {"x": x})["y"]
    limit = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)
    _same_bits(y, np.clip(x.astype(np.float32), -limit, limit).astype(ml_dtypes.float8_e4m3fn))
    i4 = _codes(TensorProto.INT4, 16, seed=7)
    y = _run(_cast_model(TensorProto.INT4, TensorProto.FLOAT4E2M1, [16]), {"x": i4})["y"]
    _same_bits(y, i4.astype(np.float32).astype(ml_dtypes.float4_e2m1fn))


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_to_e8m0_against_onnx(round_mode, saturate):
    rng = np.random.default_rng(1)
    x = np.concatenate([np.array([0.0, 0.124, 0.25, 0.5, 0.75, 1.1, 1.5, 2.0, 3.0, 1e-40, 3e-39, 1e38, 2.0 ** 127,
                                  1.7e38, 3.4e38, np.nan], np.float32),
                        np.exp2(rng.uniform(-126, 127, 64)).astype(np.float32)])
    want = numpy_helper.to_float8e8m0(x, bool(saturate), round_mode)
    model = _cast_model(TensorProto.FLOAT, TensorProto.FLOAT8E8M0, [x.size], saturate=saturate, round_mode=round_mode)
    _same_bits(_run(model, {"x": x})["y"], want)
    _same_bits(cast_array(x.astype(np.float16)[:9], want.dtype, bool(saturate), round_mode),
               numpy_helper.to_float8e8m0(x.astype(np.float16)[:9], bool(saturate), round_mode))


def test_cast_to_e8m0_infinity():
    # the Cast table: saturate + up gives E8M0_MAX for Inf (onnx's helper returns NaN there); NaN stays NaN
    x = np.array([np.inf, np.nan, 3.4e38], np.float32)
    y = _run(_cast_model(TensorProto.FLOAT, TensorProto.FLOAT8E8M0, [3]), {"x": x})["y"].view(np.uint8)
    np.testing.assert_array_equal(y, [0xFE, 0xFF, 0xFE])
    y = _run(_cast_model(TensorProto.FLOAT, TensorProto.FLOAT8E8M0, [3], saturate=0), {"x": x})["y"].view(np.uint8)
    np.testing.assert_array_equal(y, [0xFF, 0xFF, 0xFF])


def test_cast_attribute_errors():
    with pytest.raises(EdgeDLError, match="round_mode"):
        _run(_cast_model(TensorProto.FLOAT, TensorProto.FLOAT8E8M0, [1], round_mode="sideways"),
             {"x": np.ones(1, np.float32)})
    with pytest.raises(EdgeDLError, match="saturate"):
        _run(_cast_model(TensorProto.FLOAT, TensorProto.FLOAT8E5M2, [1], saturate=2), {"x": np.ones(1, np.float32)})


_CASTLIKE_SATURATES = logic.CastLike.__init__ is not Op.__init__


@pytest.mark.parametrize("saturate", [pytest.param(1, marks=pytest.mark.xfail(
    not _CASTLIKE_SATURATES, strict=True, reason="CastLike (edgedl/ops/logic.py) must read saturate/round_mode "
    "and cast through gather.cast_array")), 0])
@pytest.mark.parametrize("code", FLOAT8, ids=NAME)
def test_castlike_to_float8_against_cast(code, saturate):
    model = _model([helper.make_node("CastLike", ["x", "like"], ["y"], saturate=saturate)],
                   [("x", TensorProto.FLOAT, [VALUES.size]), ("like", code, [1])], [("y", code, [VALUES.size])])
    y = _run(model, {"x": VALUES, "like": np.zeros(1, _np(code))})["y"]
    _same_bits(y, cast_array(VALUES, _np(code), bool(saturate)))


@pytest.mark.parametrize("code", [TensorProto.INT4, TensorProto.UINT2, TensorProto.FLOAT4E2M1], ids=NAME)
def test_castlike_to_and_from_sub_byte_types(code):
    x = np.clip(VALUES[np.isfinite(VALUES)], -8, 7)
    model = _model([helper.make_node("CastLike", ["x", "like"], ["y"])],
                   [("x", TensorProto.FLOAT, [x.size]), ("like", code, [1])], [("y", code, [x.size])])
    y = _run(model, {"x": x, "like": np.zeros(1, _np(code))})["y"]
    _same_bits(y, x.astype(_np(code)))
    model = _model([helper.make_node("CastLike", ["y", "like"], ["z"])],
                   [("y", code, [x.size]), ("like", TensorProto.FLOAT16, [1])], [("z", TensorProto.FLOAT16, [x.size])])
    np.testing.assert_array_equal(_run(model, {"y": y, "like": np.zeros(1, np.float16)})["z"], y.astype(np.float16))


# --- QuantizeLinear / DequantizeLinear ------------------------------------------------------------------------
X = np.array([[-30.0, -2.5, -0.6, 0.0, 0.4, 1.5, 2.5, 9.0, 100.0, 1e6],
              [1.25, -1.25, 3.0, -3.0, 7.1, -7.6, 0.0, -0.0, 12.0, -12.0],
              [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]], np.float32)


def _q_case(code, mode):
    """(scale, zero point) for per-tensor, per-axis (axis 0) and blocked (axis 1, block 4: a remainder block)."""
    dt = _np(code)
    floats = code not in SUB_BYTE_INTS
    if mode == "tensor":
        scale = np.array(0.5, np.float32)
    elif mode == "axis":
        scale = np.array([2.0, 0.5, 0.125], np.float32)
    else:
        scale = np.array([[1.0, 0.5, 2.0], [0.25, 3.0, 1.0], [0.1, 0.2, 0.4]], np.float32)
    zp = np.zeros(scale.shape, np.float32) if floats else np.ones(scale.shape, np.float32)
    return scale, zp.astype(dt)


@pytest.mark.parametrize("mode", ["tensor", "axis", "blocked"])
@pytest.mark.parametrize("code", SUB_BYTE_INTS + FLOAT8 + [TensorProto.FLOAT4E2M1], ids=NAME)
def test_quantize_against_the_onnx_reference(code, mode):
    scale, zp = _q_case(code, mode)
    attrs = {"axis": 0} if mode == "axis" else {"axis": 1, "block_size": 4} if mode == "blocked" else {}
    for saturate in ((1, 0) if code in FLOAT8 else (1,)):
        node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], saturate=saturate, **attrs)
        model = _model([node], [("x", TensorProto.FLOAT, X.shape)], [("y", code, X.shape)],
                       [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")], opset=24)
        got = _run(model, {"x": X})["y"]
        want = _reference(model, {"x": X})[0]
        assert got.dtype == want.dtype == _np(code)
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
        # dequantize it back: y = (q - zp) * scale
        node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)
        model = _model([node], [("q", code, X.shape)], [("y", TensorProto.FLOAT, X.shape)],
                       [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")], opset=24)
        np.testing.assert_array_equal(_run(model, {"q": got})["y"], _reference(model, {"q": got})[0])


@pytest.mark.parametrize("code", SUB_BYTE_INTS + FLOAT8 + [TensorProto.FLOAT4E2M1, TensorProto.FLOAT6E2M3,
                                                          TensorProto.FLOAT6E3M2], ids=NAME)
def test_quantize_output_dtype_without_zero_point(code):
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], output_dtype=code)
    model = _model([node], [("x", TensorProto.FLOAT, X.shape)], [("y", code, X.shape)],
                   [numpy_helper.from_array(np.array(0.25, np.float32), "s")], opset=25)
    got = _run(model, {"x": X})["y"]
    assert got.dtype == _np(code)
    q = X / np.float32(0.25)
    if code in SUB_BYTE_INTS:
        info = ml_dtypes.iinfo(_np(code))
        want = np.clip(np.rint(q), info.min, info.max).astype(_np(code))
    else:
        want = cast_array(q, _np(code), True)
    _same_bits(got, want)


def test_quantize_errors():
    s = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    z = numpy_helper.from_array(np.zeros((), ml_dtypes.int4), "z")
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], output_dtype=TensorProto.UINT4)
    model = _model([node], [("x", TensorProto.FLOAT, [2])], [("y", 0, None)], [s, z])
    with pytest.raises(EdgeDLError, match="output_dtype"):
        _run(model, {"x": np.ones(2, np.float32)})
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], output_dtype=TensorProto.FLOAT8E8M0)
    model = _model([node], [("x", TensorProto.FLOAT, [2])], [("y", 0, None)], [s])
    with pytest.raises(UnsupportedOpError):
        _run(model, {"x": np.ones(2, np.float32)})


def test_dequantize_output_dtype_and_e8m0_scales():
    q = _codes(TensorProto.FLOAT4E2M1, 12, seed=8).reshape(2, 6)
    scale = np.array([[2.0, 0.25], [0.5, 8.0]], np.float32).astype(ml_dtypes.float8_e8m0fnu)  # MX: 1 per 3 values
    node = helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=3,
                            output_dtype=TensorProto.FLOAT16)
    model = _model([node], [("q", TensorProto.FLOAT4E2M1, [2, 6])], [("y", TensorProto.FLOAT16, [2, 6])],
                   [numpy_helper.from_array(scale, "s")])
    y = _run(model, {"q": q})["y"]
    assert y.dtype == np.float16
    want = q.astype(np.float32) * np.repeat(scale.astype(np.float32), 3, axis=1)
    np.testing.assert_array_equal(y, want.astype(np.float16))
    node = helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=3)
    model = _model([node], [("q", TensorProto.FLOAT4E2M1, [2, 6])], [("y", 0, None)],
                   [numpy_helper.from_array(scale, "s")])
    with pytest.raises(EdgeDLError, match="output_dtype"):
        _run(model, {"q": q})
    # a zero point of another type
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    model = _model([node], [("q", TensorProto.INT4, [3])], [("y", 0, None)],
                   [numpy_helper.from_array(np.array(1.0, np.float32), "s"),
                    numpy_helper.from_array(np.zeros((), ml_dtypes.uint4), "z")])
    with pytest.raises(EdgeDLError, match="zero point"):
        _run(model, {"q": np.zeros(3, ml_dtypes.int4)})


def test_quantize_precision_attribute():
    x = np.array([1.0, 2.0, 3.0, 1000.0], np.float32)
    s = np.array(3.0, np.float32)
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], output_dtype=TensorProto.FLOAT8E4M3FN,
                            precision=TensorProto.FLOAT16)
    model = _model([node], [("x", TensorProto.FLOAT, [4])], [("y", TensorProto.FLOAT8E4M3FN, [4])],
                   [numpy_helper.from_array(s, "s")])
    want = cast_array(x.astype(np.float16) / s.astype(np.float16), ml_dtypes.float8_e4m3fn)
    _same_bits(_run(model, {"x": x})["y"], want)


def test_backend_run_node_with_packed_types():
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    q = np.array([-8, -1, 0, 7, 3], np.int8).astype(ml_dtypes.int4)
    (y,) = edgedl.backend.run_node(node, [q, np.float32(0.5), np.array(1, np.int8).astype(ml_dtypes.int4)])
    np.testing.assert_array_equal(y, (q.astype(np.float32) - 1) * 0.5)


def test_ml_dtypes_load_only_when_a_model_needs_them(tmp_path):
    """Importing ml_dtypes costs ~0.6 s: a float32 model's process never imports it (a fresh process that does
    not import onnx either)."""
    import subprocess
    import sys

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "relu.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    code = ("import sys, numpy as np, edgedl\n"
            f"edgedl.load({str(path)!r}).run({{'x': np.ones(2, np.float32)}})\n"
            "from edgedl.converters import onnx_proto as pb\n"
            "print('ml_dtypes' in sys.modules, pb.element_dtype(16), 'ml_dtypes' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "bfloat16", "True"]
