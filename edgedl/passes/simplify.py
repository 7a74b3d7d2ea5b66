"""Remove nodes that do nothing at inference: Identity, Dropout whose mask nobody reads, and Cast to the dtype
its input already has (:func:`remove_noop_casts`)."""
from __future__ import annotations

import numpy as np

from ..ir import Graph


def rename_input(graph: Graph, old: str, new: str) -> None:
    """Make every consumer of tensor ``old`` read ``new`` instead."""
    for node in graph.nodes:
        node.inputs = [new if i == old else i for i in node.inputs]


def remove_identities(graph: Graph, dropout: bool = True) -> int:
    """Drop Identity nodes (and inference-mode Dropout with ``dropout``), renaming their consumers' inputs;
    returns how many were removed."""
    outputs = {s.name for s in graph.outputs}
    removed = 0
    kept = []
    for node in graph.nodes:
        passthrough = node.op_type == "Identity" or (
            dropout and node.op_type == "Dropout" and (len(node.outputs) < 2 or not node.outputs[1])
            and (len(node.inputs) < 3 or not node.inputs[2] or _is_false(graph, node.inputs[2])))
        if (passthrough and node.domain == "" and node.inputs and node.inputs[0]
                and node.outputs[0] not in outputs):
            rename_input(graph, node.outputs[0], node.inputs[0])
            removed += 1
            continue
        kept.append(node)
    graph.nodes = kept
    return removed


def fold_output_identities(graph: Graph) -> int:
    """An Identity that copies a tensor computed in this graph to a graph output: its producer writes the output
    itself (every reader of the tensor reads the output's name), one copy and one step fewer. Exporters end the
    branches of an If and the bodies of a Loop this way (PyTorch: ``output = Identity(x)``). A tensor that is
    a graph input, an initializer or another graph output keeps its Identity. Returns how many were folded.

    Renaming an internal tensor changes what a caller sees by name, so :func:`edgedl.passes.optimize` runs this
    on subgraphs only, whose internal names nothing outside reads."""
    outputs = {s.name for s in graph.outputs}
    producers = graph.producers()
    inputs = {s.name for s in graph.inputs}
    folded = 0
    for node in list(graph.nodes):
        if node.op_type != "Identity" or node.domain or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if (not src or dst not in outputs or src in outputs or src in inputs or src in graph.initializers
                or src not in producers):
            continue
        graph.nodes.remove(node)
        producer = producers.pop(src)
        producer.outputs = [dst if o == src else o for o in producer.outputs]
        producers[dst] = producer
        rename_input(graph, src, dst)
        folded += 1
    return folded


def _is_false(graph: Graph, name: str) -> bool:
    value = graph.initializers.get(name)
    return value is not None and value.size == 1 and not bool(value.reshape(-1)[0])


#: ops whose every output has the dtype of their first input (per the ONNX spec)
_SAME_DTYPE_OPS = frozenset({
    "Abs", "Neg", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Sin", "Cos",
    "Gelu", "Clip", "Softmax", "LogSoftmax", "Identity", "Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "Sum",
    "Mean", "MatMul", "Gemm", "Conv", "ConvTranspose", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Expand", "Tile", "Slice", "Pad", "Concat", "Gather", "Split", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "LpNormalization", "InstanceNormalization", "ReduceMean", "ReduceSum", "ReduceMax",
    "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    "SpaceToDepth", "DepthToSpace", "Resize", "Upsample",
})
#: ops whose FIRST output has the dtype of their first input (the others are indices, masks or statistics)
_SAME_DTYPE_FIRST = frozenset({"MaxPool", "BatchNormalization", "LayerNormalization", "Dropout", "TopK"})


def _element_dtype(code) -> np.dtype | None:
    from ..converters.onnx_proto import element_dtype

    try:
        dtype = element_dtype(int(code))
    except (TypeError, ValueError):
        return None
    return None if dtype is None else np.dtype(dtype)


def _known_dtypes(graph: Graph) -> dict[str, np.dtype]:
    """Element types known at load time without shapes: graph inputs, initializers, and what flows from them
    through Cast, CastLike and the ops that keep their first input's dtype (others: unknown)."""
    known: dict[str, np.dtype] = {}
    for spec in graph.inputs:
        if spec.dtype is not None and getattr(spec, "kind", "tensor") == "tensor":
            known[spec.name] = np.dtype(spec.dtype)
    for name, value in graph.initializers.items():
        known[name] = value.dtype
    for node in graph.nodes:
        if node.domain or not node.outputs:
            continue
        if node.op_type == "Cast":
            dt = _element_dtype(node.attrs.get("to"))
            if dt is not None and node.outputs[0]:
                known[node.outputs[0]] = dt
            continue
        src = None
        if node.op_type == "CastLike" and len(node.inputs) > 1:
            src = node.inputs[1]
        elif node.op_type in _SAME_DTYPE_OPS or node.op_type in _SAME_DTYPE_FIRST:
            src = node.inputs[0] if node.inputs else None
        dt = known.get(src) if src else None
        if dt is None:
            continue
        outs = node.outputs[:1] if node.op_type in _SAME_DTYPE_FIRST or node.op_type == "CastLike" else node.outputs
        for o in outs:
            if o:
                known[o] = dt
    return known


def remove_noop_casts(graph: Graph) -> int:
    """Drop Casts to the dtype their input already has (a float -> float Cast is a copy; exporters emit hundreds),
    renaming their consumers' inputs, as :func:`remove_identities` does. A Cast whose output is a graph output
    stays (the output must keep its name), and so does one whose input dtype is not known at load time.
    Returns how many were removed."""
    outputs = {s.name for s in graph.outputs}
    known = _known_dtypes(graph)
    removed = 0
    kept = []
    for node in graph.nodes:
        if (node.op_type == "Cast" and not node.domain and node.inputs and node.inputs[0] and node.outputs
                and node.outputs[0] and node.outputs[0] not in outputs):
            src = known.get(node.inputs[0])
            if src is not None and src == _element_dtype(node.attrs.get("to")):
                rename_input(graph, node.outputs[0], node.inputs[0])
                removed += 1
                continue
        kept.append(node)
    graph.nodes = kept
    return removed
