"""Split a training graph into its frozen prefix, which runs as inference, and the part gradients flow through.

With a policy that trains the last layers, everything before them is frozen: it runs once per step through
an ordinary inference plan (fused float kernels, or int8 kernels for a quantized backbone), keeps nothing
for the backward and lives in the plan's arena. The training tape then starts at the *frontier*: the
computed tensors the trainable part reads from the frozen part.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, TensorSpec
from ..registry import lookup

__all__ = ["Split", "split_frozen"]


@dataclass
class Split:
    """``prefix``: graph inputs -> frontier tensors (None when the trainable part reads the inputs only);
    ``suffix``: frontier tensors -> the outputs that depend on a trainable tensor; ``frontier``: the
    suffix's inputs (graph inputs among them pass straight through)."""

    prefix: Graph | None
    suffix: Graph
    frontier: list[str]


def _value_dynamic(graph: Graph) -> set[str]:
    """Tensors whose values depend on the graph inputs' values (shape computations excluded)."""
    dyn = {s.name for s in graph.inputs}
    for n in graph.nodes:
        cls = lookup(n.op_type, n.domain)
        if cls is not None and cls.shape_only:
            continue
        if any(i in dyn for i in n.inputs if i):
            dyn.update(o for o in n.outputs if o)
    return dyn


def split_frozen(graph: Graph, trainable: list[str], runtime: list[str] = (), prefix: bool = True) -> Split:
    """Split ``graph`` where the ``trainable`` initializers (and ``runtime`` ones: buffers such as running
    statistics, fed on every step) start to matter. Nodes depending on neither and feeding the trainable
    part by value form the prefix. ``prefix=False``: no split (the whole graph is the suffix)."""
    if not prefix:
        return Split(None, graph, [s.name for s in graph.inputs])
    dyn = _value_dynamic(graph)
    req = set(trainable) | set(runtime)
    for n in graph.nodes:
        if any(i in req for i in n.inputs if i):
            req.update(o for o in n.outputs if o)
    in_suffix = [any(o in req for o in n.outputs if o) for n in graph.nodes]
    # shape and constant computations feeding the suffix go with it (the tape folds them)
    needed = {i for n, s in zip(graph.nodes, in_suffix) if s for i in n.inputs if i}
    for k in range(len(graph.nodes) - 1, -1, -1):
        n = graph.nodes[k]
        if not in_suffix[k] and any(o in needed and o not in dyn for o in n.outputs if o):
            in_suffix[k] = True
            needed.update(i for i in n.inputs if i)
    suffix_nodes = [n for n, s in zip(graph.nodes, in_suffix) if s]
    produced = {o for n in suffix_nodes for o in n.outputs if o}
    frontier = list(dict.fromkeys(i for n in suffix_nodes for i in n.inputs
                                  if i and i in dyn and i not in produced))
    graph_inputs = {s.name: s for s in graph.inputs}
    computed = [t for t in frontier if t not in graph_inputs]
    prefix = None
    if computed:
        want = set(computed)
        keep = []
        # (a shape computation may serve both parts: it is in each)
        for n in reversed([n for n in graph.nodes if not any(o in req for o in n.outputs if o)]):
            if any(o in want for o in n.outputs if o):
                keep.append(n)
                want.update(i for i in n.inputs if i)
        keep.reverse()
        used = {i for n in keep for i in n.inputs if i}
        prefix = Graph(keep, [s for s in graph.inputs if s.name in used],
                       [TensorSpec(t, None, None) for t in computed],
                       {k: v for k, v in graph.initializers.items() if k in used}, graph.opset,
                       f"{graph.name}_frozen", dict(graph.metadata), dict(graph.domains))
        prefix.validate_and_sort()
    used = {i for n in suffix_nodes for i in n.inputs if i}
    outputs = [s for s in graph.outputs if s.name in produced]
    suffix = Graph(suffix_nodes, [graph_inputs.get(t) or TensorSpec(t, None, None) for t in frontier], outputs,
                   {k: v for k, v in graph.initializers.items() if k in used}, graph.opset,
                   f"{graph.name}_trainable", dict(graph.metadata), dict(graph.domains))
    return Split(prefix, suffix, frontier)
