"""If nodes whose condition is known when a plan is built become their branch's nodes.

A condition computed from constants and from the small inputs a plan is specialized on (silero VAD's ``sr ==
16000``) picks one branch for every run of that plan. Run as an eager If, the branch goes through its own
runner at every call (the lookup, a plan of its own, outputs copied out); inlined, its nodes join the plan: one
arena, bound kernels, no per-call Python beyond theirs.

The branch's tensors are renamed under the If node's name; the outer tensors it reads map to the names the If
node lists for them (positionally, as :class:`edgedl.ops.control_flow.SubgraphOp` feeds them); its initializers
join the graph's; Identity nodes give the branch outputs the If node's output names. Branches nested in the
inlined branch are inlined in turn when their conditions are known. Conditions are evaluated with the ops'
references on values of at most :data:`MAX_FOLD_ELEMENTS` elements.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import Graph, Node, subgraph_outer_names
from ..registry import lookup

#: the largest output (elements) the condition evaluation computes; larger values are left to the plan
MAX_FOLD_ELEMENTS = 4096

__all__ = ["inline_constant_ifs", "has_if"]


def has_if(graph: Graph) -> bool:
    return any(n.op_type == "If" and n.domain in ("", "ai.onnx") for n in graph.nodes)


def inline_constant_ifs(graph: Graph, values: dict[str, np.ndarray]) -> Graph:
    """``graph`` with every If node whose condition follows from its initializers and ``values`` (graph inputs
    the plan is specialized on) replaced by the nodes of the branch it takes; ``graph`` itself when none is."""
    if not has_if(graph):
        return graph
    known: dict[str, np.ndarray] = {**graph.initializers, **values}
    nodes = list(graph.nodes)
    kept: list[Node] = []
    initializers = dict(graph.initializers)
    changed = False
    i = 0
    while i < len(nodes):
        node = nodes[i]
        i += 1
        if node.op_type == "If" and node.domain in ("", "ai.onnx") and node.inputs and node.inputs[0] in known:
            cond = np.asarray(known[node.inputs[0]])
            if cond.size == 1:
                branch, inits = _branch_nodes(node, bool(cond.reshape(-1)[0]))
                nodes[i:i] = branch  # scanned next: nested Ifs get their turn
                initializers.update(inits)
                known.update(inits)
                changed = True
                continue
        _fold(node, known, graph.opset)
        kept.append(node)
    if not changed:
        return graph
    return dataclasses.replace(graph, nodes=kept, initializers=initializers)


def _fold(node: Node, known: dict, opset: int) -> None:
    """Record ``node``'s outputs in ``known`` when its inputs are all known and its outputs small."""
    if not all(i in known for i in node.inputs if i) or not node.outputs:
        return
    cls = lookup(node.op_type, node.domain)
    if cls is None or getattr(cls, "eager", False) or getattr(cls, "nondeterministic", False):
        return
    from ..ir import TensorType

    try:
        op = cls(node, opset)
        args = [known[i] if i else None for i in node.inputs]
        types = [TensorType(np.shape(a), np.asarray(a).dtype) if a is not None else None for a in args]
        outs = op.infer(types, args)
        if any(not isinstance(t, TensorType) or int(np.prod(t.shape, dtype=np.int64)) > MAX_FOLD_ELEMENTS
               for t in outs):
            return
        results = op.ref(*args)
    except Exception:  # noqa: BLE001 - the plan reports a node's errors with its context; here it stays a node
        return
    for name, value in zip(node.outputs, results):
        if name and isinstance(value, (np.ndarray, np.generic)):
            known[name] = np.asarray(value)


def _branch_nodes(node: Node, take_then: bool) -> tuple[list[Node], dict]:
    """The nodes (renamed) and initializers of the branch ``node`` takes, and Identity nodes naming its outputs as
    ``node``'s outputs."""
    key = "then_branch" if take_then else "else_branch"
    g: Graph = node.attrs[key]
    outer_names = subgraph_outer_names(node.attrs)
    n_formal = len(node.inputs) - len(outer_names)
    outer = dict(zip(outer_names, node.inputs[n_formal:]))
    prefix = f"{node.name}/{key}/"

    reads_outside = set(g.outer)

    def rename(t: str) -> str:
        if not t:
            return t
        if t in reads_outside:
            return outer[t]
        return prefix + t

    inits = {prefix + n: v for n, v in g.initializers.items()}
    out: list[Node] = []
    for n in g.nodes:
        attrs = dict(n.attrs)
        out.append(Node(n.op_type, prefix + n.name, [rename(t) for t in n.inputs], [rename(t) for t in n.outputs],
                        attrs, n.domain))
    for spec, name in zip(g.outputs, node.outputs):
        if name:
            out.append(Node("Identity", f"{prefix}output/{name}", [rename(spec.name)], [name]))
    return out, inits
