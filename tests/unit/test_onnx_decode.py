"""edgedl's own ONNX decoding (edgedl.converters.onnx_proto) against onnx's: every element type edgedl runs, in
raw_data and in the typed fields, empty tensors and scalars, attributes of every type, and every model in
tests/ and examples/."""
import glob
import os

import numpy as np
import onnx
import pytest
from edgedl.converters import onnx_proto as pb
from edgedl.converters.onnx_import import _attribute, _tensor_to_array, import_onnx, read_model_proto
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from onnx import AttributeProto, TensorProto, helper, numpy_helper

import edgedl
from edgedl.errors import EdgeDLError, ModelFormatError

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MODELS = sorted(glob.glob(os.path.join(ROOT, "tests", "**", "*.onnx"), recursive=True)
                + glob.glob(os.path.join(ROOT, "examples", "*.onnx")))

# the numeric types with numpy's own dtypes (strings and bfloat16 have their own tests below)
CODES = sorted(c for c in pb.DTYPES if c not in (pb.STRING, pb.BFLOAT16))
SHAPES = [(2, 3), (), (0,), (3, 0, 2), (7,)]


def _values(code: int, shape) -> np.ndarray:
    """Values that exercise each type's range: negative, large, NaN/inf for floats, both bools."""
    dtype = pb.DTYPES[code]
    n = int(np.prod(shape, dtype=np.int64))
    rng = np.random.default_rng(code)
    if dtype == np.bool_:
        flat = rng.integers(0, 2, n).astype(np.bool_)
    elif dtype.kind == "f":
        flat = (rng.standard_normal(n) * 1000).astype(dtype)
        special = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(dtype).max, np.finfo(dtype).tiny], dtype)
        flat[:min(n, special.size)] = special[:min(n, special.size)]
    else:
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        edges = np.array([info.min, info.max, 0, 1], dtype)
        flat[:min(n, edges.size)] = edges[:min(n, edges.size)]
    return flat.reshape(shape)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, shape and bits (NaN payloads and -0.0 included)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.ascontiguousarray(got).reshape(-1).view(np.uint8),
                                  np.ascontiguousarray(want).reshape(-1).view(np.uint8))


def test_codes_match_onnx():
    for code, dtype in pb.DTYPES.items():
        assert helper.tensor_dtype_to_np_dtype(code) == dtype
        assert pb.data_type_name(code) == TensorProto.DataType.Name(code)
        assert pb.tensor_dtype_to_np_dtype(code) == dtype
    for name in ("FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "STRING", "BOOL", "FLOAT16",
                 "DOUBLE", "UINT32", "UINT64"):
        assert getattr(pb, name) == getattr(TensorProto, name)
    assert (pb.DEFAULT, pb.EXTERNAL) == (TensorProto.DEFAULT, TensorProto.EXTERNAL)
    for name in AttributeProto.AttributeType.keys():
        assert getattr(pb, f"A_{name}") == AttributeProto.AttributeType.Value(name), name
    # element types edgedl does not run: onnx's answer, through onnx
    assert pb.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16) == helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)
    with pytest.raises(ValueError):
        pb.data_type_name(1000)


def test_schema_classes_are_onnx_classes():
    assert pb.schema().ModelProto is onnx.ModelProto
    assert pb.schema().TensorProto is onnx.TensorProto


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("code", CODES, ids=lambda c: TensorProto.DataType.Name(c))
def test_raw_data_matches_numpy_helper(code, shape):
    t = numpy_helper.from_array(_values(code, shape), "t")
    assert t.HasField("raw_data")
    _same(pb.tensor_to_array(t), numpy_helper.to_array(t))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("code", CODES, ids=lambda c: TensorProto.DataType.Name(c))
def test_typed_fields_match_numpy_helper(code, shape):
    t = helper.make_tensor("t", code, shape, _values(code, shape).flatten().tolist(), raw=False)
    assert not t.HasField("raw_data")
    want = numpy_helper.to_array(t)
    _same(pb.tensor_to_array(t), want)
    _same(want, _values(code, shape))  # the typed field holds the values (not a copy of raw bytes)


@pytest.mark.parametrize("code", CODES, ids=lambda c: TensorProto.DataType.Name(c))
def test_raw_bytes_given_by_the_caller(code):
    """External data: the caller reads the bytes and hands them in."""
    arr = _values(code, (3, 4))
    t = TensorProto(name="t", data_type=code, dims=[3, 4])
    _same(pb.tensor_to_array(t, arr.astype(arr.dtype.newbyteorder("<")).tobytes()), arr)


def test_out_of_range_typed_values_wrap_like_numpy_helper():
    """int32_data entries outside the element type's range (hand-written protos): the same bits as onnx."""
    cases = {TensorProto.INT8: [300, -129, 127, -1], TensorProto.UINT8: [256, -1, 255, 7],
             TensorProto.INT16: [40000, -40000, 32767, -1], TensorProto.UINT16: [70000, -1, 65535, 3],
             TensorProto.FLOAT16: [0x7C00, 0xFC00, 0x3C00, 0x7E01], TensorProto.BOOL: [0, 1, 1, 0]}
    for code, vals in cases.items():
        t = TensorProto(name="t", data_type=code, dims=[2, 2])
        t.int32_data.extend(vals)
        _same(pb.tensor_to_array(t), numpy_helper.to_array(t))


@pytest.mark.parametrize("raw", [True, False])
def test_data_not_matching_dims_fails_like_numpy_helper(raw):
    t = TensorProto(name="t", data_type=TensorProto.FLOAT, dims=[2, 3])
    if raw:
        t.raw_data = np.arange(5, dtype=np.float32).tobytes()
    else:
        t.float_data.extend([1.0, 2.0])
    with pytest.raises(ValueError) as want:
        numpy_helper.to_array(t)
    with pytest.raises(ValueError) as got:
        pb.tensor_to_array(t)
    assert str(got.value) == str(want.value)
    # and the importer's message names the initializer, as before
    with pytest.raises(ModelFormatError, match=r"initializer 't' declares dims \(2, 3\) but its data does not match"):
        _tensor_to_array(t, None, "initializer")


def test_raw_data_with_a_partial_element():
    t = TensorProto(name="t", data_type=TensorProto.FLOAT, dims=[1], raw_data=b"\x00\x00\x80")
    with pytest.raises(ValueError) as want:
        numpy_helper.to_array(t)
    with pytest.raises(ValueError) as got:
        pb.tensor_to_array(t)
    assert str(got.value) == str(want.value)


def test_segment_is_refused_like_numpy_helper():
    t = numpy_helper.from_array(np.ones(4, np.float32), "t")
    t.segment.begin, t.segment.end = 0, 2
    with pytest.raises(ValueError, match="segments"):
        numpy_helper.to_array(t)
    with pytest.raises(ValueError, match="Currently not supporting loading segments."):
        pb.tensor_to_array(t)


def test_unsupported_element_type():
    t = TensorProto(name="t", data_type=TensorProto.COMPLEX64, dims=[1])
    t.float_data.extend([1.0, 2.0])
    with pytest.raises(TypeError):
        pb.tensor_to_array(t)
    with pytest.raises(edgedl.UnsupportedOpError, match="element type COMPLEX64 is not supported"):
        _tensor_to_array(t, None, "initializer")


def test_string_tensors_are_object_arrays_of_str():
    want = np.array([["a", "é€"], ["", "xyz"]], dtype=object)
    t = numpy_helper.from_array(want, "s")
    got = pb.tensor_to_array(t)
    assert got.dtype == object and got.shape == (2, 2) and got.tolist() == want.tolist()
    t.raw_data = b"xx"
    with pytest.raises(ValueError, match="raw data"):
        pb.tensor_to_array(t)


@pytest.mark.parametrize("raw", [True, False])
def test_bfloat16_tensors_match_numpy_helper(raw):
    import ml_dtypes

    want = np.array([1.5, -2.0, np.inf, 3.140625, 0.0], ml_dtypes.bfloat16).reshape(5, 1)
    # raw: the bits as bytes; else make_tensor rounds the float values into int32_data itself
    t = helper.make_tensor("b", TensorProto.BFLOAT16, [5, 1], want.view(np.uint16).tobytes() if raw else
                           want.astype(np.float32).ravel().tolist(), raw=raw)
    got = pb.tensor_to_array(t)
    _same(got, numpy_helper.to_array(t))
    _same(got, want)


def _attributes() -> list[AttributeProto]:
    tensor = numpy_helper.from_array(np.arange(6, dtype=np.int64).reshape(2, 3), "w")
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "v"),
                                       numpy_helper.from_array(np.array([0, 3], np.int64), "i"), [4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    type_proto = helper.make_tensor_type_proto(TensorProto.FLOAT, [2, "N"])
    attrs = [
        helper.make_attribute("f", 0.25),
        helper.make_attribute("i", -7),
        helper.make_attribute("s", "same_upper"),
        helper.make_attribute("s_bytes", b"\xff\x00"),
        helper.make_attribute("t", tensor),
        helper.make_attribute("sp", sparse),
        helper.make_attribute("g", graph),
        helper.make_attribute("tp", type_proto),
        helper.make_attribute("floats", [1.5, -2.0]),
        helper.make_attribute("ints", [1, 2, 3]),
        helper.make_attribute("strings", ["a", "bc"]),
        helper.make_attribute("tensors", [tensor, tensor]),
        helper.make_attribute("graphs", [graph]),
        helper.make_attribute("sparse_tensors", [sparse]),
        helper.make_attribute("type_protos", [type_proto, type_proto]),
        helper.make_attribute("empty_ints", [], attr_type=AttributeProto.INTS),
        AttributeProto(name="undefined"),
    ]
    return attrs


def test_every_attribute_type_matches_get_attribute_value():
    attrs = _attributes()
    kinds = {a.type for a in attrs}
    assert kinds == set(AttributeProto.AttributeType.values()), "an attribute type is not covered"
    for a in attrs:
        want = helper.get_attribute_value(a)
        got = pb.attribute_value(a)
        assert type(got) is type(want), a.name
        assert got == want, a.name


def test_reference_attribute_fails_like_onnx():
    ref = AttributeProto(name="alpha", ref_attr_name="alpha", type=AttributeProto.FLOAT)
    with pytest.raises(ValueError) as want:
        helper.get_attribute_value(ref)
    with pytest.raises(ValueError) as got:
        pb.attribute_value(ref)
    assert str(got.value) == str(want.value)


def test_importer_attribute_values():
    """What the importer makes of each kind (strings decoded, tensors as arrays, subgraphs refused)."""
    by_name = {a.name: a for a in _attributes()}
    assert _attribute(by_name["s"], "n") == "same_upper"
    assert _attribute(by_name["strings"], "n") == ["a", "bc"]
    assert _attribute(by_name["s_bytes"], "n") == b"\xff\x00".decode("utf-8", errors="replace")
    np.testing.assert_array_equal(_attribute(by_name["t"], "n"), np.arange(6).reshape(2, 3))
    assert _attribute(by_name["t"], "n").flags.writeable
    for name in ("g", "graphs"):
        with pytest.raises(edgedl.UnsupportedOpError, match="subgraph"):
            _attribute(by_name[name], "n")
    with pytest.raises(edgedl.UnsupportedOpError, match="sparse"):
        _attribute(by_name["sp"], "n")


def _walk_attributes(graph):
    for node in graph.node:
        for a in node.attribute:
            yield a
            if a.type == AttributeProto.GRAPH:
                yield from _walk_attributes(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _walk_attributes(g)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: os.path.relpath(p, ROOT))
def test_models_decode_like_onnx(path):
    assert MODELS, "no models found"
    model = onnx.load(path, load_external_data=False)
    proto, base = read_model_proto(path)
    assert proto == model and base is not None
    tensors = list(model.graph.initializer) + [a.t for a in _walk_attributes(model.graph)
                                               if a.type == AttributeProto.TENSOR]
    for t in tensors:
        if t.data_location != TensorProto.EXTERNAL:
            _same(pb.tensor_to_array(t), numpy_helper.to_array(t))
    for a in _walk_attributes(model.graph):
        assert pb.attribute_value(a) == helper.get_attribute_value(a)
    # a path, bytes and a ModelProto give the same graph
    graphs = [import_onnx(path), import_onnx(model.SerializeToString()), import_onnx(model)]
    for g in graphs[1:]:
        assert [(n.op_type, n.name, n.inputs, n.outputs) for n in g.nodes] == \
            [(n.op_type, n.name, n.inputs, n.outputs) for n in graphs[0].nodes]
        assert g.initializers.keys() == graphs[0].initializers.keys()
        for k, v in g.initializers.items():
            _same(v, graphs[0].initializers[k])


def test_a_model_proto_object_is_used_as_is():
    model = onnx.load(os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"))
    proto, base = read_model_proto(model)
    assert proto is model and base is None


def _foreign_model_proto_class():
    """onnx.ModelProto generated into a separate descriptor pool: same message, another Python class."""
    pool = descriptor_pool.DescriptorPool()
    fd = descriptor_pb2.FileDescriptorProto()
    onnx.ModelProto.DESCRIPTOR.file.CopyToProto(fd)
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("onnx.ModelProto"))


def test_a_model_proto_of_another_class_is_reparsed():
    path = os.path.join(ROOT, "examples", "kws_tc_resnet.onnx")
    cls = _foreign_model_proto_class()
    assert cls is not onnx.ModelProto
    foreign = cls.FromString(open(path, "rb").read())
    proto, _ = read_model_proto(foreign)
    assert isinstance(proto, onnx.ModelProto) and proto == onnx.load(path)
    x = np.load(os.path.join(ROOT, "examples", "spectrogram.npy"))
    np.testing.assert_array_equal(edgedl.load(foreign)(x), edgedl.load(path)(x))


def test_other_objects_are_refused():
    for src in (3, None, [b"x"], TensorProto()):
        with pytest.raises(EdgeDLError, match="cannot load a model from"):
            read_model_proto(src)
