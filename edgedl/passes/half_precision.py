"""float16 and bfloat16 models compute in float32.

edgedl's kernels are float32 (and int8); numpy's float16 arithmetic is slow and bfloat16 has none of its own.
So a model stored in a 16-bit float type runs as onnxruntime's CPU provider runs the ops it has no 16-bit
kernel for: in float32. This pass, run at load time, converts every 16-bit float initializer (and tensor
attribute) to float32, retargets casts and dtype attributes that name a 16-bit type to float32, casts 16-bit
graph inputs to float32 where they enter and casts the graph outputs back to the dtype they are declared with.
The model's inputs and outputs keep their dtypes; the results are those of float32 arithmetic rounded once at
the end, usually closer to the exact values than 16-bit arithmetic rounded after every op.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, TensorSpec

#: ONNX element type codes of the 16-bit floats, and float32's
_HALF_CODES = {10, 16}
_FLOAT = 1
#: attributes that name an element type
_TYPE_ATTRS = ("to", "dtype", "output_datatype", "output_dtype")


def _is_half(dtype) -> bool:
    return dtype is not None and np.dtype(dtype).name in ("float16", "bfloat16")


def has_half(graph: Graph) -> bool:
    """Whether the graph (or a subgraph) holds or produces 16-bit floats."""
    if any(_is_half(a.dtype) for a in graph.initializers.values()):
        return True
    if any(_is_half(s.dtype) for s in (*graph.inputs, *graph.outputs)):
        return True
    for node in graph.nodes:
        for key, value in node.attrs.items():
            if key in _TYPE_ATTRS and isinstance(value, int) and value in _HALF_CODES:
                return True
            if isinstance(value, np.ndarray) and _is_half(value.dtype):
                return True
            for g in (value if isinstance(value, list) else [value]):
                if isinstance(g, Graph) and has_half(g):
                    return True
    return False


def _unique(graph: Graph, base: str) -> str:
    taken = {s.name for s in graph.inputs} | set(graph.initializers) | {o for n in graph.nodes for o in n.outputs}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _convert_body(graph: Graph) -> None:
    """Initializers, attributes and subgraphs of ``graph`` to float32 (its inputs and outputs untouched)."""
    for name, arr in list(graph.initializers.items()):
        if _is_half(arr.dtype):
            graph.initializers[name] = np.ascontiguousarray(arr.astype(np.float32))
    for node in graph.nodes:
        for key, value in list(node.attrs.items()):
            if key in _TYPE_ATTRS and isinstance(value, int) and value in _HALF_CODES:
                node.attrs[key] = _FLOAT
            elif isinstance(value, np.ndarray) and _is_half(value.dtype):
                node.attrs[key] = value.astype(np.float32)
            elif isinstance(value, Graph):
                _convert_subgraph(value)
            elif isinstance(value, list) and value and isinstance(value[0], Graph):
                for g in value:
                    _convert_subgraph(g)


def _as_float(spec: TensorSpec) -> TensorSpec:
    return TensorSpec(spec.name, spec.shape, np.dtype(np.float32), spec.kind) if _is_half(spec.dtype) else spec


def _convert_subgraph(graph: Graph) -> None:
    """A subgraph computes in float32 end to end: values cross its boundary as float32."""
    _convert_body(graph)
    graph.inputs = [_as_float(s) for s in graph.inputs]
    graph.outputs = [_as_float(s) for s in graph.outputs]


def compute_half_in_float32(graph: Graph) -> int:
    """Rewrite a model with 16-bit floats to compute in float32 (in place). Returns the number of boundary
    casts inserted (0 for a model without 16-bit floats, which is left alone)."""
    if not has_half(graph):
        return 0
    _convert_body(graph)
    casts = 0
    new_nodes: list[Node] = []
    for spec in graph.inputs:
        if spec.kind == "tensor" and _is_half(spec.dtype):
            inner = _unique(graph, f"{spec.name}__float32")
            for node in graph.nodes:
                node.inputs = [inner if i == spec.name else i for i in node.inputs]
            new_nodes.append(Node("Cast", inner, [spec.name], [inner], {"to": _FLOAT}))
            casts += 1
    producers = graph.producers()
    tail: list[Node] = []
    for spec in graph.outputs:
        if spec.kind != "tensor" or not _is_half(spec.dtype) or spec.name not in producers:
            continue
        inner = _unique(graph, f"{spec.name}__float32")
        node = producers[spec.name]
        node.outputs = [inner if o == spec.name else o for o in node.outputs]
        for other in graph.nodes:
            other.inputs = [inner if i == spec.name else i for i in other.inputs]
        code = 10 if np.dtype(spec.dtype).name == "float16" else 16
        tail.append(Node("Cast", spec.name + "__cast_back", [inner], [spec.name], {"to": code}))
        casts += 1
    graph.nodes = new_nodes + graph.nodes + tail
    graph.validate_and_sort()
    return casts
