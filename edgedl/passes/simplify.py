"""Remove nodes that do nothing at inference: Identity, and Dropout whose mask nobody reads."""
from __future__ import annotations

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


def _is_false(graph: Graph, name: str) -> bool:
    value = graph.initializers.get(name)
    return value is not None and value.size == 1 and not bool(value.reshape(-1)[0])
