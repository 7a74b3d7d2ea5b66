"""Import ONNX models (file path, bytes or ModelProto) into an edgedl :class:`~edgedl.ir.Graph`.

Every structural problem becomes a :class:`~edgedl.errors.ModelFormatError` naming what and where.
External tensor data is read only from inside the model's folder. Reading a model does not import the
``onnx`` package (see :mod:`edgedl.converters.onnx_proto`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgedl.errors import EdgeDLError, ModelFormatError, UnsupportedOpError
from edgedl.ir import MAX_TENSOR_ELEMENTS, Graph, Node, TensorSpec, contiguous, subgraph_outer_names

from . import onnx_proto as _pb

if TYPE_CHECKING:
    from onnx import AttributeProto, ModelProto, TensorProto, ValueInfoProto

#: ONNX element type code -> numpy dtype, for the types edgedl runs (the low-precision ones included)
_ONNX_DTYPES = _pb.ELEMENT_DTYPES


def onnx_dtype(elem_type: int, where: str) -> np.dtype:
    """numpy dtype of an ONNX element type; ModelFormatError/UnsupportedOpError for others."""
    dtype = _pb.element_dtype(elem_type)
    if dtype is not None:
        return np.dtype(dtype)
    try:
        name = _pb.data_type_name(elem_type)
    except ValueError:
        raise ModelFormatError(f"{where}: unknown element type {elem_type}") from None
    raise UnsupportedOpError(f"{where}: element type {name} is not supported")


def numpy_to_onnx_dtype(dtype: np.dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16" or dtype.name in _pb.LOW_PRECISION_NAMES:
        _pb.load_ml_dtypes()
    for k, v in _ONNX_DTYPES.items():
        if np.dtype(v) == dtype:
            return k
    raise EdgeDLError(f"dtype {dtype} has no ONNX equivalent")


def read_model_proto(src) -> tuple[ModelProto, Path | None]:
    """Parse ``src`` (path, bytes or ModelProto) without external data. Returns the proto and its folder.

    An ``onnx.ModelProto`` is used as it is; a ModelProto message of another generated class is re-parsed."""
    if not isinstance(src, (bytes, bytearray, memoryview, str, os.PathLike)):
        proto = _pb.as_model_proto(src)
        if proto is None:
            raise EdgeDLError(f"cannot load a model from {type(src).__name__}: pass a path, bytes or "
                              "onnx.ModelProto")
        return proto, None
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, base = bytes(src), None
        where = "model bytes"
    else:
        path = Path(src)
        where = f"'{path}'"
        if not path.exists():
            raise ModelFormatError(f"model file {where} does not exist")
        if path.is_dir():
            raise ModelFormatError(f"{where} is a folder, not a model file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelFormatError(f"cannot read model file {where}: {e.strerror}") from None
        base = path.resolve().parent
    if not data:
        raise ModelFormatError(f"{where} is empty")
    proto = _pb.schema().ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError and, for some inputs, other errors
        raise ModelFormatError(f"{where} is not an ONNX model (protobuf decoding failed; truncated or "
                               "another format?)") from None
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.output:
        raise ModelFormatError(f"{where} is not an ONNX model (no IR version or no graph outputs)")
    return proto, base


def _safe_external_path(base: Path | None, location: str, tensor: str) -> Path:
    if base is None:
        raise ModelFormatError(f"initializer '{tensor}' stores its data in external file '{location}', but the "
                               "model was not loaded from a file path, so there is no folder to read it from")
    if not location or "\x00" in location:
        raise ModelFormatError(f"initializer '{tensor}' has an empty or invalid external data location")
    rel = Path(location)
    if rel.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise ModelFormatError(f"initializer '{tensor}': external data path '{location}' is absolute; only "
                               "paths inside the model's folder are allowed")
    if ".." in Path(location.replace("\\", "/")).parts:
        raise ModelFormatError(f"initializer '{tensor}': external data path '{location}' leaves the model's "
                               "folder ('..' is not allowed)")
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise ModelFormatError(f"initializer '{tensor}': external data path '{location}' resolves outside the "
                               "model's folder (symbolic link?)")
    if not full.is_file():
        raise ModelFormatError(f"initializer '{tensor}': external data file '{location}' does not exist")
    return full


def _tensor_to_array(t: TensorProto, base: Path | None, where: str) -> np.ndarray:
    name = t.name or where
    dims = tuple(int(d) for d in t.dims)
    if any(d < 0 for d in dims):
        raise ModelFormatError(f"initializer '{name}' has negative dims {dims}")
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if count > MAX_TENSOR_ELEMENTS:
        raise ModelFormatError(f"initializer '{name}' declares {count} elements {dims}: absurdly large")
    onnx_dtype(t.data_type, f"initializer '{name}'")  # ModelFormatError / UnsupportedOpError for other types
    raw = None
    if t.data_location == _pb.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        path = _safe_external_path(base, info.get("location", ""), name)
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelFormatError(f"initializer '{name}': bad external data offset/length") from None
        size = path.stat().st_size
        want = _pb.data_nbytes(t.data_type, count)  # packed for 4-, 2- and 6-bit types
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelFormatError(f"initializer '{name}': external data range [{offset}, {offset + length}) "
                                   f"is outside file '{info.get('location')}' ({size} bytes)")
        if length != want:
            raise ModelFormatError(f"initializer '{name}' declares dims {dims} ({want} bytes) but its external "
                                   f"data holds {length} bytes")
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read(length)
    try:
        arr = _pb.tensor_to_array(t, raw)
    except Exception as e:
        raise ModelFormatError(f"initializer '{name}' declares dims {dims} but its data does not match "
                               f"({e.__class__.__name__}: {e})") from None
    if arr.shape != dims:
        raise ModelFormatError(f"initializer '{name}' declares dims {dims} but its data has shape {arr.shape}")
    # NOTE: Numba compiles separate code for read-only arrays; owning writeable copies keeps one signature.
    return arr if arr.flags.c_contiguous and arr.flags.writeable else np.array(arr, order="C")


def _value_spec(vi: ValueInfoProto, kind: str, subgraph: bool = False) -> TensorSpec:
    where = f"{kind} '{vi.name}'"
    tt = vi.type
    which = tt.WhichOneof("value")
    if which is None and (kind == "graph output" or subgraph):
        return TensorSpec(vi.name, None, None)  # no declared type: taken from the plan
    value_kind = "tensor"
    if which == "optional_type":
        tt = tt.optional_type.elem_type
        which = tt.WhichOneof("value")
        value_kind = "optional"
    if which == "sequence_type":
        tt = tt.sequence_type.elem_type
        which = tt.WhichOneof("value")
        value_kind = "sequence" if value_kind == "tensor" else "optional_sequence"
    if which is None and value_kind != "tensor":
        return TensorSpec(vi.name, None, None, value_kind)
    if which != "tensor_type":
        raise UnsupportedOpError(f"{where} is not a tensor, a sequence of tensors or an optional (maps and sparse "
                                 "tensors are not supported)")
    if tt.tensor_type.elem_type:
        dtype = onnx_dtype(tt.tensor_type.elem_type, where)
    else:
        dtype = None if (subgraph or value_kind != "tensor") else np.dtype(np.float32)
    if not tt.tensor_type.HasField("shape"):
        return TensorSpec(vi.name, None, dtype, value_kind)
    dims: list = []
    for i, d in enumerate(tt.tensor_type.shape.dim):
        which = d.WhichOneof("value")
        if which == "dim_value":
            if d.dim_value > MAX_TENSOR_ELEMENTS:
                raise ModelFormatError(f"{where}: dimension {i} is {d.dim_value}, which is not a valid size")
            # NOTE: a negative size is an unknown dimension, as onnxruntime reads it (PaddlePaddle writes -1)
            dims.append(int(d.dim_value) if d.dim_value >= 0 else None)
        elif which == "dim_param":
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return TensorSpec(vi.name, tuple(dims), dtype, value_kind)


def _attribute(a: AttributeProto, node_desc: str, ctx: _Context | None = None):
    if a.type == _pb.A_TENSOR:
        return _tensor_to_array(a.t, ctx.base if ctx else None, f"attribute {a.name} of {node_desc}")
    if a.type in (_pb.A_GRAPH, _pb.A_GRAPHS):
        if ctx is None:
            raise UnsupportedOpError(f"{node_desc}: subgraph attributes are not supported here")
        if a.type == _pb.A_GRAPH:
            return _import_graph(a.g, ctx.deeper(f"{node_desc} attribute {a.name}"))
        return [_import_graph(g, ctx.deeper(f"{node_desc} attribute {a.name}")) for g in a.graphs]
    if a.type == _pb.A_SPARSE_TENSOR:
        raise UnsupportedOpError(f"{node_desc}: sparse tensor attributes are not supported")
    v = _pb.attribute_value(a)
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    elif isinstance(v, list) and v and isinstance(v[0], bytes):
        v = [s.decode("utf-8", errors="replace") for s in v]
    return v


def _constant_value(node: Node) -> np.ndarray:
    a = node.attrs
    if "value" in a:
        return a["value"]
    if "value_float" in a:
        return np.array(a["value_float"], np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], np.int64)
    raise UnsupportedOpError(f"{node.describe()}: only tensor, float(s) and int(s) constants are supported")


#: subgraphs nested deeper than this are refused (a bound on recursion for hostile files)
MAX_SUBGRAPH_DEPTH = 16


class _Context:
    """What importing a (sub)graph needs from its model: the folder for external data, the opsets, the depth."""

    def __init__(self, base: Path | None, opset: int, domains: dict[str, int], depth: int = 0):
        self.base, self.opset, self.domains, self.depth = base, opset, domains, depth

    def deeper(self, where: str) -> _Context:
        if self.depth + 1 > MAX_SUBGRAPH_DEPTH:
            raise ModelFormatError(f"{where}: subgraphs are nested more than {MAX_SUBGRAPH_DEPTH} deep")
        return _Context(self.base, self.opset, self.domains, self.depth + 1)


def _import_graph(g, ctx: _Context) -> Graph:
    """A GraphProto as a Graph. For a subgraph (depth > 0) every input is a formal input, and the names it reads
    from enclosing graphs become ``Graph.outer`` (appended to its inputs)."""
    subgraph = ctx.depth > 0
    initializers: dict[str, np.ndarray] = {}
    for t in g.initializer:
        if not t.name:
            raise ModelFormatError("an initializer has no name")
        initializers[t.name] = _tensor_to_array(t, ctx.base, "initializer")
    if g.sparse_initializer:
        raise UnsupportedOpError("sparse initializers are not supported")

    overridable: list[str] = []
    if subgraph:
        inputs = [_value_spec(vi, "subgraph input", True) for vi in g.input]
    else:
        inputs = [_value_spec(vi, "graph input") for vi in g.input if vi.name not in initializers]
        overridable = [vi.name for vi in g.input if vi.name in initializers]
    outputs = [_value_spec(vi, "graph output", subgraph) for vi in g.output]

    nodes: list[Node] = []
    seen_names: set[str] = set()
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        if name in seen_names:  # plans key ops by node name: a repeated name gets the node's index
            name = f"{name}_{i}"
        seen_names.add(name)
        desc = f"{n.op_type} node '{name}'"
        attrs = {a.name: _attribute(a, desc, ctx) for a in n.attribute}
        node = Node(n.op_type, name, list(n.input), list(n.output), attrs, n.domain or "")
        outer = subgraph_outer_names(attrs)
        node.inputs += outer  # the outer tensors its subgraphs read are inputs of the node
        nodes.append(node)

    # Constant nodes become initializers: one mechanism for every constant.
    kept: list[Node] = []
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            if len(node.outputs) != 1:
                raise ModelFormatError(f"{node.describe()} must have exactly one output")
            initializers[node.outputs[0]] = contiguous(_constant_value(node))
        else:
            kept.append(node)

    outer: list[str] = []
    if subgraph:
        defined = {s.name for s in inputs} | set(initializers) | {o for n in kept for o in n.outputs if o}
        wanted = [i for n in kept for i in n.inputs if i] + [s.name for s in outputs]
        outer = [t for t in dict.fromkeys(wanted) if t not in defined]
        inputs = inputs + [TensorSpec(t, None, None) for t in outer]
    graph = Graph(kept, inputs, outputs, initializers, opset=ctx.opset, name=g.name or "graph",
                  domains=dict(ctx.domains), outer=outer, overridable=overridable)
    graph.validate_and_sort()
    return graph


def _unsupported_nodes(graph: Graph, lookup) -> list[Node]:
    missing = [n for n in graph.nodes if lookup(n.op_type, n.domain) is None]
    for n in graph.nodes:
        for value in n.attrs.values():
            for g in (value if isinstance(value, list) else [value]):
                if isinstance(g, Graph):
                    missing += _unsupported_nodes(g, lookup)
    return missing


def import_onnx(src) -> Graph:
    """Convert an ONNX model into an edgedl Graph (no shape binding, no optimization)."""
    proto, base = read_model_proto(src)
    opset = 0
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    if opset == 0:
        opset = 1 if not proto.opset_import else 13
    domains = {imp.domain: int(imp.version) for imp in proto.opset_import if imp.domain not in ("", "ai.onnx")}
    graph = _import_graph(proto.graph, _Context(base, opset, domains))
    graph.metadata = {p.key: p.value for p in proto.metadata_props}

    from edgedl.registry import lookup

    missing = _unsupported_nodes(graph, lookup)
    if missing:
        by_type: dict[str, list[str]] = {}
        for n in missing:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            by_type.setdefault(key, []).append(n.name)
        parts = [f"{t} (nodes: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                 for t, names in sorted(by_type.items())]
        raise UnsupportedOpError(f"unsupported operators: {'; '.join(parts)}")
    return graph
