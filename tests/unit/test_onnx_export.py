"""ONNX export (converters/onnx_export.py): import -> export round trips of the zoo models checked by the ONNX
checker and onnxruntime, opset imports, symbolic dims, attribute kinds, internal attributes, atomic saves."""
import os

import numpy as np
import onnx
import pytest
from edgedl.converters import onnx_export
from edgedl.converters.onnx_export import export_graph, save_graph
from edgedl.converters.onnx_import import _attribute, import_onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

import edgedl
from edgedl import zoo
from edgedl.errors import ModelFormatError
from edgedl.ir import Graph, Node, TensorSpec

ort = pytest.importorskip("onnxruntime")


def run_ort(model, feeds: dict) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    src = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def assert_same_graph(a: Graph, b: Graph) -> None:
    """Two imports describe the same model: nodes, attributes, initializers, specs, opset."""
    assert a.opset == b.opset and a.name == b.name
    for field in ("metadata", "domains"):  # recorded by newer importers
        assert getattr(a, field, None) == getattr(b, field, None), field
    assert a.inputs == b.inputs and a.outputs == b.outputs
    assert list(a.initializers) == list(b.initializers)
    for name, arr in a.initializers.items():
        assert arr.dtype == b.initializers[name].dtype, name
        np.testing.assert_array_equal(arr, b.initializers[name], err_msg=name)
    assert len(a.nodes) == len(b.nodes)
    for m, n in zip(a.nodes, b.nodes):
        assert (m.op_type, m.name, m.inputs, m.outputs, m.domain) == (n.op_type, n.name, n.inputs, n.outputs, n.domain)
        assert set(m.attrs) == set(n.attrs), m.name
        for k, v in m.attrs.items():
            w = n.attrs[k]
            if isinstance(v, np.ndarray):
                assert isinstance(w, np.ndarray) and v.dtype == w.dtype, (m.name, k)
                np.testing.assert_array_equal(v, w)
            else:
                assert type(v) is type(w) and v == w, (m.name, k, v, w)


ZOO_CASES = {
    "mobilenet_v2_like": (lambda: zoo.mobilenet_v2_like(resolution=64, width=0.5), (3, 64, 64)),
    "resnet_like": (lambda: zoo.resnet_like(resolution=64, widths=(16, 32, 64, 128), classes=50), (3, 64, 64)),
    "kws_tc_resnet": (lambda: zoo.kws_tc_resnet(), (40, 98)),
    "nhwc_cnn": (lambda: zoo.nhwc_cnn(height=48, width=40), (48, 40, 3)),
}


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_round_trip(name):
    build, shape = ZOO_CASES[name]
    original = build()
    graph = import_onnx(original)
    exported = export_graph(graph)
    onnx.checker.check_model(exported, full_check=True)
    assert {(o.domain, o.version) for o in exported.opset_import} == {("", 17)}
    assert exported.ir_version == 8  # the smallest for opset 17
    assert exported.producer_name == "edgedl"
    assert_same_graph(import_onnx(exported), import_onnx(original))

    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    feeds = {graph.inputs[0].name: x}
    want = run_ort(original, feeds)
    got = run_ort(exported, feeds)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)

    model = edgedl.load(exported.SerializeToString())
    ours = model.run(feeds)
    assert set(ours) == set(want)
    for k in want:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_model_fields():
    graph = import_onnx(zoo.kws_tc_resnet())
    m = export_graph(graph, producer="me", doc="a test model", metadata={"author": "edgedl", "license": "MIT"})
    assert m.producer_name == "me" and m.doc_string == "a test model"
    assert {p.key: p.value for p in m.metadata_props} == {"author": "edgedl", "license": "MIT"}
    assert m.graph.name == "kws_tc_resnet"
    assert [i.name for i in m.graph.input] == ["spectrogram"]  # initializers are not graph inputs
    onnx.checker.check_model(m, full_check=True)
    with pytest.raises(ModelFormatError, match="metadata"):
        export_graph(graph, metadata={"n": 1})


def _fused_matmul_graph() -> Graph:
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    nodes = [
        Node("FusedMatMul", "fmm", ["x", "w"], ["y"], {"alpha": 2.0, "transA": 0, "transB": 0}, "com.microsoft"),
        Node("Relu", "relu", ["y"], ["z"], {}, "ai.onnx"),
    ]
    return Graph(nodes, [TensorSpec("x", ("N", 3), np.dtype(np.float32))],
                 [TensorSpec("z", ("N", 4), np.dtype(np.float32))], {"w": w}, opset=15, name="fmm")


def test_non_default_domain_gets_an_opset_import():
    # the importer rejects com.microsoft nodes (no edgedl op), so the graph is built by hand
    graph = _fused_matmul_graph()
    m = export_graph(graph)
    assert {o.domain: o.version for o in m.opset_import} == {"": 15, "com.microsoft": 1}
    assert m.ir_version == 8  # opset 15 needs IR 8; the unknown domain adds nothing
    assert [n.domain for n in m.graph.node] == ["com.microsoft", ""]  # "ai.onnx" is written as ""
    onnx.checker.check_model(m)
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    got = run_ort(m, {"x": x})["z"]
    np.testing.assert_allclose(got, np.maximum(2.0 * x @ graph.initializers["w"], 0), rtol=1e-6, atol=1e-6)

    m = export_graph(graph, opset_imports={"ai.onnx": 17, "com.microsoft": 1, "ai.onnx.ml": 3})
    assert {o.domain: o.version for o in m.opset_import} == {"": 17, "com.microsoft": 1, "ai.onnx.ml": 3}
    m = export_graph(graph, opset_imports={"com.microsoft": 2})
    assert {o.domain: o.version for o in m.opset_import} == {"": 15, "com.microsoft": 2}
    with pytest.raises(ModelFormatError, match="opset version"):
        export_graph(graph, opset_imports={"": 0})


GRAPH_RECORDS = hasattr(Graph, "__dataclass_fields__") and {"metadata", "domains"} <= set(Graph.__dataclass_fields__)


@pytest.mark.skipif(not GRAPH_RECORDS, reason="this Graph has no metadata/domains fields")
def test_graph_metadata_and_domains_are_written_back():
    graph = _fused_matmul_graph()
    graph.metadata = {"edgedl.requant": "double", "author": "x"}
    graph.domains = {"com.microsoft": 1, "ai.onnx.ml": 2}
    m = export_graph(graph, metadata={"author": "y"})
    assert {p.key: p.value for p in m.metadata_props} == {"edgedl.requant": "double", "author": "y"}
    assert {o.domain: o.version for o in m.opset_import} == {"": 15, "com.microsoft": 1, "ai.onnx.ml": 2}
    m = export_graph(graph, opset_imports={"ai.onnx.ml": 3})
    assert {o.domain: o.version for o in m.opset_import} == {"": 15, "com.microsoft": 1, "ai.onnx.ml": 3}

    # through the importer: a model with metadata and an extra (unused) domain
    original = zoo.kws_tc_resnet(frames=16, mfcc=8)
    helper.set_model_props(original, {"source": "zoo"})
    original.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    graph = import_onnx(original)
    m = export_graph(graph)
    onnx.checker.check_model(m, full_check=True)
    assert {p.key: p.value for p in m.metadata_props} == {"source": "zoo"}
    assert {o.domain: o.version for o in m.opset_import} == {"": 17, "ai.onnx.ml": 3}
    assert_same_graph(import_onnx(m), graph)


def test_symbolic_and_unknown_dims_round_trip():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)  # no shape at all
    z = helper.make_tensor_value_info("z", TensorProto.INT64, [3])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r"),
                           helper.make_node("Shape", ["x"], ["z"], name="s")], "dims", [x], [y, z])
    original = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = import_onnx(original)
    assert graph.inputs[0].shape == ("batch", None, 4) and graph.outputs[0].shape is None
    m = export_graph(graph)
    # the checker wants a shape on every graph output: the exporter fills y's from ONNX shape inference
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.input[0] == original.graph.input[0]
    assert m.graph.output[1] == original.graph.output[1]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.WhichOneof("value") for d in dims] == ["dim_param", None, "dim_value"]
    back = import_onnx(m)
    assert back.inputs == graph.inputs
    assert back.outputs == [TensorSpec("y", ("batch", None, 4), np.dtype(np.float32)), graph.outputs[1]]
    assert m.ir_version == 7  # opset 13

    # without the Relu, y's shape cannot be inferred and stays absent: check_model refuses that
    graph.outputs[0] = TensorSpec("y", None, np.dtype(np.float32))
    graph.nodes[0] = Node("Custom", "r", ["x"], ["y"], {}, "com.example")
    m = export_graph(graph)
    assert not m.graph.output[0].type.tensor_type.HasField("shape")
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(m)


def test_untyped_output_gets_its_type_from_shape_inference():
    graph = Graph([Node("Relu", "r", ["x"], ["y"])], [TensorSpec("x", ("N", 3), np.dtype(np.float32))],
                  [TensorSpec("y", None, None)], {}, opset=17)
    m = export_graph(graph)
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    onnx.checker.check_model(m, full_check=True)


def _attribute_model() -> onnx.ModelProto:
    """Opset 17 ops with tensor, string, float and int attributes, and Constants of several kinds."""
    nodes = [
        helper.make_node("Constant", [], ["shape"], name="c_shape",
                         value=numpy_helper.from_array(np.array([1, 2, 1, 1], np.int64), "shape_value")),
        helper.make_node("ConstantOfShape", ["shape"], ["fill"], name="cos",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Add", ["x", "fill"], ["a"], name="add"),
        helper.make_node("Constant", [], ["scales"], name="c_scales", value_floats=[1.0, 1.0, 2.0, 2.0]),
        helper.make_node("Resize", ["a", "", "scales"], ["r"], name="resize", mode="linear",
                         coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.5, exclude_outside=0),
        helper.make_node("LeakyRelu", ["r"], ["l"], name="leaky", alpha=0.2),
        helper.make_node("HardSigmoid", ["l"], ["h"], name="hsig", alpha=0.3, beta=0.4),
        helper.make_node("Constant", [], ["k"], name="c_k", value_float=1.5),
        helper.make_node("Mul", ["h", "k"], ["m"], name="mul"),
        helper.make_node("Cast", ["m"], ["out"], name="cast", to=TensorProto.DOUBLE),
        helper.make_node("Transpose", ["m"], ["t"], name="tr", perm=[0, 2, 3, 1]),
    ]
    g = helper.make_graph(nodes, "attrs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.DOUBLE, ["N", 2, 8, 8]),
                           helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 8, 8, 2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _upsample7_model() -> onnx.ModelProto:
    """Opset 7 Upsample: a float-list attribute and a string one; an old opset (IR version >= 4)."""
    g = helper.make_graph([helper.make_node("Upsample", ["x"], ["y"], name="up", scales=[1.0, 1.0, 2.0, 3.0],
                                            mode="nearest")], "up7",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 9])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)])
    m.ir_version = 3
    return m


@pytest.mark.parametrize("build", [_attribute_model, _upsample7_model])
def test_attribute_kinds_round_trip(build):
    original = build()
    onnx.checker.check_model(original, full_check=True)
    graph = import_onnx(original)
    m = export_graph(graph)
    onnx.checker.check_model(m, full_check=True)
    assert_same_graph(import_onnx(m), graph)
    # every attribute of every exported node has the kind and the value of the original's
    orig_nodes = {n.name: n for n in original.graph.node}
    for n in m.graph.node:
        want = {a.name: a for a in orig_nodes[n.name].attribute}
        assert {a.name for a in n.attribute} == set(want), n.name
        for a in n.attribute:
            assert a.type == want[a.name].type, (n.name, a.name)
            if a.type == AttributeProto.TENSOR:
                np.testing.assert_array_equal(numpy_helper.to_array(a.t), numpy_helper.to_array(want[a.name].t))
            else:
                assert helper.get_attribute_value(a) == helper.get_attribute_value(want[a.name])
    rng = np.random.default_rng(2)
    inp = original.graph.input[0]
    shape = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    feeds = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    want, got = run_ort(original, feeds), run_ort(m, feeds)
    for k in want:
        assert got[k].dtype == want[k].dtype
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    ours = edgedl.load(m).run(feeds)
    for k in want:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_upsample7_ir_version():
    m = export_graph(import_onnx(_upsample7_model()))
    assert m.ir_version == 4  # opset 7 alone would allow 3, where initializers must be graph inputs


def test_attribute_values_invert_the_importer():
    t = np.arange(6, dtype=np.int32).reshape(2, 3)
    attrs = {
        "i": 3, "b": True, "npi": np.int64(-4), "f": 0.25, "npf": np.float32(1.5), "s": "hello", "sb": b"raw",
        "ints": [1, -2, 3], "tuple_ints": (4, 5), "floats": [0.5, 1.0, -2.25], "mixed": [1, 2.5],
        "strings": ["a", "bc", ""], "tensor": t, "scalar_tensor": np.array(2.5, np.float64),
        "tensors": [t, np.ones(2, np.float32)], "empty": [],
    }
    graph = Graph([Node("Custom", "c", ["x"], ["y"], attrs, "com.example")],
                  [TensorSpec("x", (2,), np.dtype(np.float32))], [TensorSpec("y", (2,), np.dtype(np.float32))], {})
    m = export_graph(graph)
    assert {o.domain: o.version for o in m.opset_import} == {"": 13, "com.example": 1}
    protos = {a.name: a for a in m.graph.node[0].attribute}
    kinds = {k: AttributeProto.AttributeType.Name(a.type) for k, a in protos.items()}
    assert kinds == {
        "i": "INT", "b": "INT", "npi": "INT", "f": "FLOAT", "npf": "FLOAT", "s": "STRING", "sb": "STRING",
        "ints": "INTS", "tuple_ints": "INTS", "floats": "FLOATS", "mixed": "FLOATS", "strings": "STRINGS",
        "tensor": "TENSOR", "scalar_tensor": "TENSOR", "tensors": "TENSORS", "empty": "INTS",
    }
    back = {k: _attribute(a, "node") for k, a in protos.items()}
    expect = dict(attrs, b=1, npi=-4, sb="raw", tuple_ints=[4, 5], mixed=[1.0, 2.5])
    for k in ("i", "b", "npi", "f", "npf", "s", "sb", "ints", "tuple_ints", "floats", "mixed", "strings", "empty"):
        assert back[k] == expect[k], k
    for k in ("tensor", "scalar_tensor"):
        assert back[k].dtype == attrs[k].dtype and back[k].shape == attrs[k].shape
        np.testing.assert_array_equal(back[k], attrs[k])
    for got, want in zip(back["tensors"], attrs["tensors"]):  # the importer keeps these as TensorProtos
        np.testing.assert_array_equal(numpy_helper.to_array(got), want)


def test_schema_decides_attribute_kinds():
    # a pass may store alpha=1 (an int) or an empty list: the operator schema gives the ONNX kind
    nodes = [Node("LeakyRelu", "l", ["x"], ["y"], {"alpha": 1}),
             Node("Upsample", "u", ["y"], ["z"], {"scales": [], "mode": "nearest"})]
    graph = Graph(nodes, [TensorSpec("x", (1, 1, 2, 2), np.dtype(np.float32))],
                  [TensorSpec("z", None, np.dtype(np.float32))], {}, opset=7)
    m = export_graph(graph)
    a = m.graph.node[0].attribute[0]
    assert a.type == AttributeProto.FLOAT and a.f == 1.0
    scales = {x.name: x for x in m.graph.node[1].attribute}["scales"]
    assert scales.type == AttributeProto.FLOATS and list(scales.floats) == []
    bad = Graph([Node("LeakyRelu", "l", ["x"], ["y"], {"alpha": object()})], graph.inputs,
                [TensorSpec("y", None, np.dtype(np.float32))], {}, opset=17)
    with pytest.raises(ModelFormatError, match="alpha.*'l'"):
        export_graph(bad)


def test_internal_attributes_are_refused():
    from edgedl.passes import optimize

    graph = import_onnx(zoo.resnet_like(resolution=32, widths=(8, 16, 16, 16), classes=10))
    optimize(graph)
    fused = [n for n in graph.nodes if any(k.startswith("_") for k in n.attrs)]
    assert fused, "the passes fused nothing: the test needs a graph with internal attributes"
    with pytest.raises(ModelFormatError) as err:
        export_graph(graph)
    node = next(n for n in graph.nodes if any(k.startswith("_") for k in n.attrs))
    attr = next(k for k in node.attrs if k.startswith("_"))
    assert f"'{node.name}'" in str(err.value) and f"'{attr}'" in str(err.value)

    internal = Graph([Node("FusedThing", "ft", ["x"], ["y"], {}, "edgedl")],
                     [TensorSpec("x", (2,), np.dtype(np.float32))], [TensorSpec("y", (2,), np.dtype(np.float32))], {})
    with pytest.raises(ModelFormatError, match="'ft'.*edgedl"):
        export_graph(internal)


def test_unsupported_initializer_dtype():
    graph = _fused_matmul_graph()
    graph.initializers["w"] = np.array(["a", "b"])
    with pytest.raises(ModelFormatError, match="'w'"):
        export_graph(graph)


# ------------------------------------------------------------------------------------------------ saving


def _kws_graph() -> Graph:
    return import_onnx(zoo.kws_tc_resnet(frames=16, mfcc=8))


def test_save_graph_single_file(tmp_path):
    graph = _kws_graph()
    path = tmp_path / "m.onnx"
    returned = save_graph(graph, path, metadata={"k": "v"})
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert path.read_bytes() == returned.SerializeToString()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert {p.key: p.value for p in loaded.metadata_props} == {"k": "v"}
    back = import_onnx(str(path))
    if GRAPH_RECORDS:
        back.metadata = {}
    assert_same_graph(back, graph)
    # overwriting an existing file
    save_graph(_fused_matmul_graph(), str(path))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert onnx.load(str(path)).graph.name == "fmm"


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    save_graph(_kws_graph(), path)
    old = path.read_bytes()

    def broken_save(proto, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(b"partial")
        else:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_graph(_fused_matmul_graph(), path)
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]

    monkeypatch.setattr(onnx_export, "MAX_SINGLE_FILE_BYTES", 1000)  # the external-data path fails the same way
    with pytest.raises(RuntimeError, match="disk full"):
        save_graph(_fused_matmul_graph(), path)
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_large_model_uses_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "MAX_SINGLE_FILE_BYTES", 10_000)  # stands in for protobuf's 2 GB
    graph = _kws_graph()
    path = tmp_path / "big.onnx"
    save_graph(graph, path)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert os.path.getsize(path) < 10_000 < os.path.getsize(tmp_path / "big.onnx.data")
    proto = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"}
    onnx.checker.check_model(str(path), full_check=True)
    assert_same_graph(import_onnx(path), graph)

    x = np.random.default_rng(3).standard_normal((2, 8, 16)).astype(np.float32)
    want = run_ort(export_graph(graph), {"spectrogram": x})["scores"]
    np.testing.assert_array_equal(run_ort(str(path), {"spectrogram": x})["scores"], want)
    np.testing.assert_allclose(edgedl.load(path)(x), want, rtol=1e-4, atol=1e-5)

    # saved again as a small model: a single file (the old data file stays; it is not the exporter's to delete)
    monkeypatch.setattr(onnx_export, "MAX_SINGLE_FILE_BYTES", onnx.checker.MAXIMUM_PROTOBUF)
    save_graph(graph, path)
    assert not onnx.load(str(path), load_external_data=False).graph.initializer[0].external_data
