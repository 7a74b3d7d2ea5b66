"""Export an edgedl :class:`~edgedl.ir.Graph` back to ONNX (a ``ModelProto`` or a file).

The exporter inverts :mod:`edgedl.converters.onnx_import`: node attributes (numpy arrays become tensor
attributes, Python scalars, strings and lists their ONNX kinds, typed by the operator schema where ONNX has
one), initializers, graph inputs and outputs with dtypes and (symbolic) shapes, and the opset imports.

Graphs that carry ``metadata`` and ``domains`` (the model's ``metadata_props`` and its non-default opset
versions, recorded by importers that keep them) get both back. What the importer drops cannot come back:
Constant nodes were turned into initializers (they are exported as initializers), intermediate
``value_info``, doc strings, the producer and the ``ir_version`` of the original file; an initializer that
was also declared as a graph input (an overridable default) is exported as an initializer only.

Graphs rewritten by edgedl's passes can carry edgedl-internal information (attributes whose names start with
``_``, nodes in the ``edgedl`` domain) that standard ONNX cannot express: exporting them raises
:class:`~edgedl.errors.ModelFormatError`. Export a graph before running the passes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from edgedl.errors import EdgeDLError, ModelFormatError
from edgedl.ir import Graph, Node, TensorSpec, subgraph_outer_names

from .onnx_import import numpy_to_onnx_dtype

#: Domain of edgedl-internal nodes: never written as ONNX.
INTERNAL_DOMAIN = "edgedl"

#: Models whose protobuf reaches this size are saved with external data (protobuf cannot encode 2 GB).
MAX_SINGLE_FILE_BYTES = onnx.checker.MAXIMUM_PROTOBUF

#: Version given to a non-default opset domain the nodes use when neither the caller nor the graph's
#: ``domains`` record names one.
DEFAULT_DOMAIN_VERSION = 1

_DEFAULT_DOMAINS = ("", "ai.onnx")


def export_graph(graph: Graph, *, opset_imports: Mapping[str, int] | None = None, producer: str = "edgedl",
                 doc: str = "", metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """Build an ONNX ``ModelProto`` from ``graph``.

    Parameters
    ----------
    graph : Graph
        An edgedl graph, typically from :func:`~edgedl.converters.onnx_import.import_onnx` (before the
        optimization passes, which add edgedl-internal attributes).
    opset_imports : dict, optional
        Domain -> version. The default domain (``""``; ``"ai.onnx"`` is the same) defaults to
        ``graph.opset``, other domains to the graph's ``domains`` record where it has one; a domain the
        nodes use that neither names gets version 1.
    producer, doc : str
        ``producer_name`` and ``doc_string`` of the model.
    metadata : dict, optional
        ``metadata_props`` (string keys and values), added to (and overriding) the graph's ``metadata``.

    Returns
    -------
    onnx.ModelProto
        ``ir_version`` is the smallest that supports the opsets (at least 4, so initializers need not be
        graph inputs).

    Raises
    ------
    ModelFormatError
        For nodes in the ``edgedl`` domain, attributes whose names start with ``_``, and values (attributes,
        initializers, dtypes) ONNX cannot represent.
    """
    _check_standard(graph)
    opsets = _opset_imports(graph, opset_imports)
    default_version = opsets[""]

    g = _graph_proto(graph, default_version)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name=producer, doc_string=doc)
    if producer == "edgedl":
        from edgedl import __version__

        model.producer_version = __version__
    model.ir_version = _ir_version(opsets)
    props = {**(getattr(graph, "metadata", None) or {}), **(metadata or {})}
    if props:
        bad = [k for k, v in props.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ModelFormatError(f"metadata keys and values must be strings (bad entries: {bad[:5]})")
        helper.set_model_props(model, props)
    if any(spec.dtype is None or spec.shape is None for spec in graph.outputs):
        symbols = {d for spec in (*graph.inputs, *graph.outputs) for d in spec.shape or () if isinstance(d, str)}
        _infer_output_types(model, symbols)
    return model


def _graph_proto(graph: Graph, default_version: int) -> onnx.GraphProto:
    """The GraphProto of a graph or subgraph (a subgraph's outer tensors are read by name, not inputs)."""
    node_list, extra = _spelled_out(graph, default_version)
    nodes = [_node_proto(n, default_version) for n in node_list]
    initializers = [_tensor_proto(arr, name, f"initializer '{name}'")
                    for name, arr in {**graph.initializers, **extra}.items()]
    formal = graph.inputs[:len(graph.inputs) - len(graph.outer)]
    inputs = [_value_info(spec, "graph input") for spec in formal]
    outputs = [_value_info(spec, "graph output") for spec in graph.outputs]
    return helper.make_graph(nodes, graph.name or "graph", inputs, outputs, initializers)


def _spelled_out(graph: Graph, version: int) -> tuple[list[Node], dict]:
    """The graph's nodes with the ops its opset lacks written in the ops it has: HardSwish (opset 14; edgedl's
    passes fuse ``x * Clip(x + 3, 0, 6) / 6`` into it at any opset) as Add, Clip, Mul and Div again, and Swish
    (opset 24; fused from ``x * Sigmoid(x)``) as Sigmoid and Mul. Returns the nodes and the constants they add."""
    newer = {"HardSwish": 14, "Swish": 24}
    if not any(version < newer.get(n.op_type, 0) and n.domain in _DEFAULT_DOMAINS for n in graph.nodes):
        return list(graph.nodes), {}
    taken = set(graph.initializers) | {t for n in graph.nodes for t in (*n.inputs, *n.outputs) if t}
    extra: dict = {}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def const(base: str, value: float) -> str:
        name = fresh(base)
        extra[name] = np.array(value, np.float32)
        return name

    out: list[Node] = []
    for n in graph.nodes:
        if version >= newer.get(n.op_type, 0) or n.domain not in _DEFAULT_DOMAINS:
            out.append(n)
            continue
        x, y = n.inputs[0], n.outputs[0]
        if n.op_type == "Swish":
            alpha = float(n.attrs.get("alpha", 1.0))
            gate_in, gate = x, fresh(f"{n.name}_sigmoid")
            if alpha != 1.0:
                gate_in = fresh(f"{n.name}_scaled")
                out.append(Node("Mul", f"{n.name}_Scale", [x, const(f"{n.name}_alpha", alpha)], [gate_in]))
            out += [Node("Sigmoid", f"{n.name}_Sigmoid", [gate_in], [gate]),
                    Node("Mul", f"{n.name}_Mul", [x, gate], [y])]
            continue
        shifted, clipped, product = fresh(f"{n.name}_plus3"), fresh(f"{n.name}_clip"), fresh(f"{n.name}_mul")
        if version >= 11:
            clip = Node("Clip", f"{n.name}_Clip", [shifted, const(f"{n.name}_zero", 0.0),
                                                   const(f"{n.name}_six", 6.0)], [clipped])
        else:
            clip = Node("Clip", f"{n.name}_Clip", [shifted], [clipped], {"min": 0.0, "max": 6.0})
        out += [Node("Add", f"{n.name}_Add", [x, const(f"{n.name}_three", 3.0)], [shifted]), clip,
                Node("Mul", f"{n.name}_Mul", [x, clipped], [product]),
                Node("Div", f"{n.name}_Div", [product, const(f"{n.name}_six_div", 6.0)], [y])]
    return out, extra


def save_graph(graph: Graph, path: str | os.PathLike, **kwargs) -> onnx.ModelProto:
    """Export ``graph`` (see :func:`export_graph` for ``kwargs``) and write it to ``path`` atomically.

    The model goes to a temporary file in the destination folder, flushed and fsynced, then replaces
    ``path`` with ``os.replace``: readers see the old file or the new one, never a partial one, and a
    failure leaves the old file untouched. Models of 2 GB or more keep their tensors in
    ``<basename>.data`` beside the model (ONNX external data), itself replaced atomically before the model.

    Returns the exported ``ModelProto`` (for an external-data save, with its tensors pointing at the file).
    """
    model = export_graph(graph, **kwargs)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not base:
        raise EdgeDLError(f"cannot save a model to '{path}': it names a folder")
    if _needs_external_data(model):
        _save_external(model, folder, base)
    else:
        _save_single(model, folder, base)
    return model


# ---------------------------------------------------------------------------------------------- checks


def _check_standard(graph: Graph) -> None:
    for node in graph.nodes:
        if node.domain == INTERNAL_DOMAIN:
            raise ModelFormatError(f"{node.describe()} is in the edgedl-internal domain '{INTERNAL_DOMAIN}' and "
                                   "cannot be written as ONNX (export the graph before edgedl's passes)")
        for attr in node.attrs:
            if attr.startswith("_"):
                raise ModelFormatError(f"{node.describe()} carries the edgedl-internal attribute '{attr}', which "
                                       "standard ONNX cannot express (export the graph before edgedl's passes)")


def _opset_imports(graph: Graph, given: Mapping[str, int] | None) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for domain, version in (given or {}).items():
        domain = "" if domain in _DEFAULT_DOMAINS else domain
        if not isinstance(version, Integral) or version < 1:
            raise ModelFormatError(f"opset version {version!r} for domain '{domain}' is not a positive integer")
        opsets[domain] = int(version)
    opsets.setdefault("", int(graph.opset))
    for domain, version in (getattr(graph, "domains", None) or {}).items():
        if domain not in _DEFAULT_DOMAINS:
            opsets.setdefault(domain, int(version))
    for node in graph.nodes:
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        opsets.setdefault(domain, DEFAULT_DOMAIN_VERSION)
    return opsets


def _ir_version(opsets: dict[str, int]) -> int:
    """Smallest IR version for these opsets, at least 4 (before 4, initializers had to be graph inputs).
    A default-domain opset newer than this onnx package knows gets the package's IR version."""
    ids = [helper.make_opsetid(d, v) for d, v in opsets.items()]
    known = {d for d, _ in helper.OP_SET_ID_VERSION_MAP}
    newest = max(v for d, v in helper.OP_SET_ID_VERSION_MAP if d == "ai.onnx")
    if opsets[""] > newest:
        return onnx.IR_VERSION
    ids = [i for i in ids if (i.domain or "ai.onnx") in known]
    return max(4, helper.find_min_ir_version_for(ids, ignore_unknown=True))


# ----------------------------------------------------------------------------------------- conversions


def _value_info(spec: TensorSpec, kind: str) -> onnx.ValueInfoProto:
    if spec.dtype is None:
        return helper.make_empty_tensor_value_info(spec.name)
    elem = _elem_type(spec.dtype, f"{kind} '{spec.name}'")
    shape = None if spec.shape is None else [d if d is None or isinstance(d, str) else int(d) for d in spec.shape]
    if spec.kind == "tensor":
        return helper.make_tensor_value_info(spec.name, elem, shape)
    tp = helper.make_tensor_type_proto(elem, shape)
    if spec.kind in ("sequence", "optional_sequence"):
        tp = helper.make_sequence_type_proto(tp)
    if spec.kind.startswith("optional"):
        tp = helper.make_optional_type_proto(tp)
    return helper.make_value_info(spec.name, tp)


def _elem_type(dtype, where: str) -> int:
    try:
        return numpy_to_onnx_dtype(np.dtype(dtype))
    except (EdgeDLError, TypeError):
        raise ModelFormatError(f"{where}: dtype {dtype} has no ONNX equivalent edgedl supports") from None


def _tensor_proto(value, name: str, where: str) -> onnx.TensorProto:
    arr = np.asarray(value)
    _elem_type(arr.dtype, where)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return numpy_helper.from_array(arr, name)


def _node_proto(node: Node, default_version: int) -> onnx.NodeProto:
    domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
    schema = _schema(node.op_type, default_version, domain)
    n_outer = len(subgraph_outer_names(node.attrs))  # the implicit inputs of a node with subgraphs
    proto = helper.make_node(node.op_type, list(node.inputs[:len(node.inputs) - n_outer]), list(node.outputs),
                             name=node.name, domain=domain or None)
    for key in sorted(node.attrs):
        value = node.attrs[key]
        if isinstance(value, Graph) or (isinstance(value, list) and value and isinstance(value[0], Graph)):
            graphs = [_graph_proto(g, default_version) for g in (value if isinstance(value, list) else [value])]
            proto.attribute.append(helper.make_attribute(key, graphs if isinstance(value, list) else graphs[0]))
            continue
        declared = int(schema.attributes[key].type) if schema is not None and key in schema.attributes else None
        proto.attribute.append(_attribute(key, node.attrs[key], declared, node))
    return proto


def _schema(op_type: str, version: int, domain: str):
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except Exception:  # SchemaError for unknown ops, domains and versions
        return None


_LIST_OF = {
    AttributeProto.INT: AttributeProto.INTS,
    AttributeProto.FLOAT: AttributeProto.FLOATS,
    AttributeProto.STRING: AttributeProto.STRINGS,
    AttributeProto.TENSOR: AttributeProto.TENSORS,
    AttributeProto.TYPE_PROTO: AttributeProto.TYPE_PROTOS,
}


def _kind(v) -> int | None:
    """ONNX attribute type of one scalar value as the importer stores it, None if it has none."""
    if isinstance(v, (bool, np.bool_, Integral)):
        return AttributeProto.INT
    if isinstance(v, Real):
        return AttributeProto.FLOAT
    if isinstance(v, (str, bytes)):
        return AttributeProto.STRING
    if isinstance(v, (np.ndarray, onnx.TensorProto)):
        return AttributeProto.TENSOR
    if isinstance(v, onnx.TypeProto):
        return AttributeProto.TYPE_PROTO
    return None


def _attribute(key: str, value, declared: int | None, node: Node) -> onnx.AttributeProto:
    where = f"attribute '{key}' of {node.describe()}"
    if isinstance(value, np.ndarray) and declared in _LIST_OF.values() and declared != AttributeProto.TENSORS:
        value = value.tolist()  # a list stored as an array (a pass may do that)
    if isinstance(value, (list, tuple)):
        kinds = {_kind(v) for v in value}
        if None in kinds:
            raise ModelFormatError(f"{where}: cannot write a list holding {sorted({type(v).__name__ for v in value})}")
        if declared in _LIST_OF.values():
            kind = declared
        elif not kinds:
            kind = AttributeProto.INTS  # an empty list with no schema to say which kind: ints are the common one
        elif kinds <= {AttributeProto.INT, AttributeProto.FLOAT}:
            kind = _LIST_OF[AttributeProto.FLOAT if AttributeProto.FLOAT in kinds else AttributeProto.INT]
        elif len(kinds) == 1:
            kind = _LIST_OF[kinds.pop()]
        else:
            raise ModelFormatError(f"{where}: a list mixing {sorted(type(v).__name__ for v in value)}")
    else:
        kind = _kind(value)
        if kind is None:
            raise ModelFormatError(f"{where}: cannot write a value of type {type(value).__name__} as ONNX")
        if declared is not None and declared not in _LIST_OF.values():
            kind = declared

    a = AttributeProto()
    a.name = key
    a.type = kind
    try:
        if kind == AttributeProto.INT:
            a.i = _as_int(value, where)
        elif kind == AttributeProto.FLOAT:
            a.f = float(value)
        elif kind == AttributeProto.STRING:
            a.s = _as_bytes(value)
        elif kind == AttributeProto.TENSOR:
            a.t.CopyFrom(_attr_tensor(value, where))
        elif kind == AttributeProto.TYPE_PROTO:
            a.tp.CopyFrom(value)
        elif kind == AttributeProto.INTS:
            a.ints.extend(_as_int(v, where) for v in value)
        elif kind == AttributeProto.FLOATS:
            a.floats.extend(float(v) for v in value)
        elif kind == AttributeProto.STRINGS:
            a.strings.extend(_as_bytes(v) for v in value)
        elif kind == AttributeProto.TENSORS:
            a.tensors.extend(_attr_tensor(v, where) for v in value)
        elif kind == AttributeProto.TYPE_PROTOS:
            a.type_protos.extend(value)
        else:
            raise ModelFormatError(f"{where}: ONNX declares it as {AttributeProto.AttributeType.Name(kind)}, "
                                   "which edgedl cannot write")
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{where}: value {value!r} does not fit ONNX type "
                               f"{AttributeProto.AttributeType.Name(kind)} ({e})") from None
    return a


def _as_int(v, where: str) -> int:
    if isinstance(v, (bool, np.bool_, Integral)):
        return int(v)
    if isinstance(v, Real) and float(v).is_integer():
        return int(v)
    raise ModelFormatError(f"{where}: {v!r} is not an integer")


def _as_bytes(v) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    raise TypeError(f"{type(v).__name__} is not a string")


def _attr_tensor(v, where: str) -> onnx.TensorProto:
    if isinstance(v, onnx.TensorProto):
        return v
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{type(v).__name__} is not a tensor")
    return _tensor_proto(v, "", where)


def _infer_output_types(model: onnx.ModelProto, symbols: set[str]) -> None:
    """Fill graph outputs declared without a type or a shape from ONNX shape inference, where it knows them
    (the ONNX checker requires both on graph outputs; edgedl takes them from the plan). Symbols inference
    makes up for dims it does not know (``unk__0``) become unknown dims."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # the checker will name what is wrong
        return
    types = {vi.name: vi.type for vi in (*inferred.graph.output, *inferred.graph.value_info)}
    for vi in model.graph.output:
        t = types.get(vi.name)
        if t is None or t.WhichOneof("value") != "tensor_type" or not t.tensor_type.elem_type:
            continue
        if not vi.HasField("type"):
            vi.type.CopyFrom(t)
            shape = vi.type.tensor_type.shape if t.tensor_type.HasField("shape") else None
        elif (vi.type.tensor_type.elem_type == t.tensor_type.elem_type and not vi.type.tensor_type.HasField("shape")
              and t.tensor_type.HasField("shape")):
            vi.type.tensor_type.shape.CopyFrom(t.tensor_type.shape)
            shape = vi.type.tensor_type.shape
        else:
            continue
        for d in shape.dim if shape is not None else ():
            if d.WhichOneof("value") == "dim_param" and d.dim_param not in symbols:
                d.ClearField("dim_param")


# ------------------------------------------------------------------------------------------------ files


def _needs_external_data(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() >= MAX_SINGLE_FILE_BYTES
    except Exception:  # protobuf refuses to size messages past its limit
        return True


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode(path: str) -> None:
    """Temporary files are created 0600; give the saved model the mode a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _save_single(model: onnx.ModelProto, folder: str, base: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:  # a named file object: onnx.save_model asks for its name
            onnx.save_model(model, f)
            f.flush()
            os.fsync(f.fileno())
        _default_mode(tmp)
        os.replace(tmp, os.path.join(folder, base))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _save_external(model: onnx.ModelProto, folder: str, base: str) -> None:
    data_name = base + ".data"
    # onnx writes the data file beside the model under its final name: write both inside a private
    # temporary folder in the destination folder, then move each into place.
    tmpdir = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    try:
        tmp_model = os.path.join(tmpdir, base)
        tmp_data = os.path.join(tmpdir, data_name)
        onnx.save_model(model, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name)
        for p in (tmp_model, tmp_data):
            if os.path.exists(p):
                _fsync(p)
                _default_mode(p)
        if os.path.exists(tmp_data):
            os.replace(tmp_data, os.path.join(folder, data_name))
        os.replace(tmp_model, os.path.join(folder, base))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    _fsync_dir(folder)
