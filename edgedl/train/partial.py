"""Train some input channels of a layer: the layer split in two along its input channels, and joined back.

A memory budget that fits the last K layers but not the layer before them can still train part of that
layer. The weight gradient of a Conv / Gemm / MatMul needs the layer's input; training only its first ``c``
input channels needs only those channels of the input. :func:`split_input_channels` rewrites

    y = Layer(x, W, B)   into   y = Layer(x[:, :c], W[:, :c], B) + Layer(x, W with its first c channels zeroed)

(the channel axis of the input: 1 for a Conv, the last for a Gemm / MatMul). The second layer is frozen, so it
runs in the inference prefix on the whole input (no copy of the frozen channels), and the tape keeps only
``x[:, :c]``. :func:`join_split_weights` undoes the
rewrite after training, with the trained slice written into the full weight. The record of each split is kept
in ``graph.metadata`` (``edgedl.split.<weight>``) until it is joined.
"""
from __future__ import annotations

import json

import numpy as np

from ..ir import Graph, Node

__all__ = ["split_input_channels", "join_split_weights"]

_KEY = "edgedl.split."


def _geometry(graph: Graph, node: Node):
    """(weight's input-channel axis, the input's channel axis, channels) or None when the layer cannot split."""
    if node.domain or len(node.inputs) < 2 or graph.opset < 10:  # (Slice takes its starts as inputs from 10)
        return None
    w = graph.initializers.get(node.inputs[1])
    if w is None or w.dtype != np.float32:
        return None
    if node.op_type == "Conv" and int(node.attrs.get("group", 1)) == 1 and w.ndim >= 3:
        return 1, 1, w.shape[1]
    if node.op_type == "Gemm" and w.ndim == 2 and not node.attrs.get("transA", 0):
        return (1 if node.attrs.get("transB", 0) else 0), 1, w.shape[1 if node.attrs.get("transB", 0) else 0]
    if node.op_type == "MatMul" and w.ndim == 2:
        return 0, -1, w.shape[0]
    return None


def split_input_channels(graph: Graph, node: Node, channels: int | None) -> int | str | None:
    """With ``channels`` None: how many input channels ``node`` has (None if it cannot be split). Otherwise
    split it so that its first ``channels`` input channels have their own weight, and return that weight's
    name (a new float32 initializer)."""
    geo = _geometry(graph, node)
    if geo is None:
        return None
    w_axis, x_axis, total = geo
    if channels is None:
        return int(total)
    if not 0 < channels < total:
        raise ValueError(f"channels must be in (0, {total}), got {channels}")
    from ..quant.quantize_model import _Builder

    b = _Builder(graph)
    w_name = node.inputs[1]
    w = graph.initializers[w_name]
    w_a = b.const(f"{w_name}_channels_0_{channels}", np.take(w, np.arange(channels), axis=w_axis))
    rest = np.array(w, copy=True)
    rest[tuple(slice(0, channels) if i == w_axis else slice(None) for i in range(w.ndim))] = 0.0
    w_b = b.const(f"{w_name}_channels_{channels}_{total}", rest)
    x = node.inputs[0]
    axes = b.const(f"{node.name}_split_axes", np.array([x_axis], np.int64))
    cut = [b.const(f"{node.name}_split_{v}", np.array([v], np.int64)) for v in (0, channels)]
    x_a = b.fresh(f"{x}_channels_0_{channels}")
    y = node.outputs[0]
    y_a, y_b = b.fresh(f"{y}_channels_0_{channels}"), b.fresh(f"{y}_channels_{channels}_{total}")
    rest_attrs = dict(node.attrs)
    if node.op_type == "Gemm":
        rest_attrs.pop("beta", None)
    new = [Node("Slice", b.fresh(f"{node.name}_slice"), [x, cut[0], cut[1], axes], [x_a]),
           Node(node.op_type, b.fresh(f"{node.name}_channels_a"), [x_a, w_a] + node.inputs[2:], [y_a],
                dict(node.attrs)),
           Node(node.op_type, b.fresh(f"{node.name}_channels_b"), [x, w_b], [y_b], rest_attrs),
           Node("Add", b.fresh(f"{node.name}_join"), [y_a, y_b], [y])]
    at = graph.nodes.index(node)
    graph.nodes[at:at + 1] = new
    graph.metadata[_KEY + w_name] = json.dumps({
        "node": {"op_type": node.op_type, "name": node.name, "inputs": node.inputs, "outputs": node.outputs,
                 "attrs": node.attrs},
        "weights": [w_a, w_b], "axis": w_axis, "nodes": [n.name for n in new], "consts": [axes, *cut]})
    del graph.initializers[w_name]
    return w_a


def join_split_weights(graph: Graph) -> Graph:
    """Undo every :func:`split_input_channels` of ``graph`` (in place; returns it): one layer again, its weight
    the concatenation of the two parts' current values."""
    for key in [k for k in graph.metadata if k.startswith(_KEY)]:
        rec = json.loads(graph.metadata.pop(key))
        w_a, w = (graph.initializers.pop(n) for n in rec["weights"])
        w = np.array(w, copy=True)
        w[tuple(slice(0, w_a.shape[rec["axis"]]) if i == rec["axis"] else slice(None) for i in range(w.ndim))] = w_a
        graph.initializers[key[len(_KEY):]] = np.ascontiguousarray(w, np.float32)
        for c in rec["consts"]:
            graph.initializers.pop(c, None)
        n = rec["node"]
        names = set(rec["nodes"])
        at = next(i for i, m in enumerate(graph.nodes) if m.name in names)
        graph.nodes = [m for m in graph.nodes if m.name not in names]
        graph.nodes.insert(at, Node(n["op_type"], n["name"], n["inputs"], n["outputs"], n["attrs"]))
    graph.validate_and_sort()
    return graph
