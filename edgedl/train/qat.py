"""Quantization-aware fine-tuning: a QDQ int8 graph rewritten for training, and written back to QDQ.

:func:`to_qat` turns the standard QDQ form (what :func:`edgedl.quantize` writes and onnxruntime's quantizer
emits) into a float graph that trains:

* the int8 weight of every Conv / ConvTranspose / Gemm / MatMul (DequantizeLinear of a constant) becomes a
  float32 initializer, the dequantized value, behind a ``FakeQuantizeWeight`` node that re-quantizes it on
  every step with scales computed from the current values (per channel as in the source, or per tensor);
* its int32 bias (DequantizeLinear of a constant) becomes a float32 initializer;
* every activation QuantizeLinear -> DequantizeLinear pair becomes one ``FakeQuantize`` node with the same
  scale and zero point (straight-through gradient where nothing clipped).

:meth:`QatGraph.export` writes the trained graph back: weights int8 symmetric with their synchronized scales,
biases int32 at ``s_x * s_w[c]`` (times a Gemm's alpha), activation pairs as they were. A layer whose weight is
not fake-quantized (the float head of :meth:`QatGraph.float_after`) keeps float weights and bias.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgeDLError
from ..ir import Graph, Node
from ..passes.simplify import rename_input
from ..quant.quantize_model import _Builder, copy_graph
from ..registry import lookup

__all__ = ["QatGraph", "to_qat", "has_quantized_ops"]

_LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
              "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul"}


def has_quantized_ops(graph: Graph) -> bool:
    """Whether the graph holds quantization nodes (QDQ or operator form)."""
    return any(n.op_type in _QUANT_OPS for n in graph.nodes)


def _dequantize(node: Node, graph: Graph, opset: int) -> np.ndarray:
    op = lookup("DequantizeLinear")(node, opset)
    args = [graph.initializers[i] if i else None for i in node.inputs]
    return np.ascontiguousarray(op.ref(*args)[0], np.float32)


def _base(name: str, suffix: str) -> str:
    return name[:-len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name


@dataclass
class QatGraph:
    """A QDQ graph in its trainable form.

    ``graph``: float weights and biases, ``FakeQuantize`` / ``FakeQuantizeWeight`` nodes. ``weights``: the
    float weight initializers (in layer order); ``biases``: their layers' bias initializers."""

    graph: Graph
    weights: list[str] = field(default_factory=list)
    biases: list[str] = field(default_factory=list)

    def float_after(self, tensors) -> QatGraph:
        """A copy in which everything downstream of ``tensors`` (trainable initializers) runs in float: their
        fake quantization nodes are removed. The frozen part keeps its int8 simulation; the export writes
        an int8 backbone with a float head."""
        g = copy_graph(self.graph)
        down = set(tensors)
        outputs = {s.name for s in g.outputs}
        kept = []
        for n in g.nodes:
            if any(i in down for i in n.inputs if i):
                down.update(o for o in n.outputs if o)
                if n.domain == "edgedl" and n.op_type in ("FakeQuantize", "FakeQuantizeWeight"):
                    x, y = n.inputs[0], n.outputs[0]
                    if y in outputs:  # a graph output keeps its name: the float value is written under it
                        for m in kept:
                            m.outputs = [y if o == x else o for o in m.outputs]
                        rename_input(g, x, y)
                    else:
                        rename_input(g, y, x)
                    continue
            kept.append(n)
        g.nodes = kept
        return QatGraph(g, list(self.weights), list(self.biases))

    def export(self, values: dict[str, np.ndarray] | None = None) -> Graph:
        """The QDQ graph with ``values`` (trained initializers by name) in place of the current ones."""
        g = copy_graph(self.graph)
        for name, v in (values or {}).items():
            if name not in g.initializers:
                raise EdgeDLError(f"{name!r} is not an initializer of the training graph")
            g.initializers[name] = np.ascontiguousarray(v, np.float32)
        b = _Builder(g)
        producers = g.producers()
        w_scales: dict[str, np.ndarray] = {}
        nodes: list[Node] = []
        for n in g.nodes:
            if n.domain == "edgedl" and n.op_type == "FakeQuantizeWeight":
                op = lookup("FakeQuantizeWeight", "edgedl")(n, g.opset)
                q, s, axis = op.quantized(g.initializers[n.inputs[0]])
                base = n.inputs[0]
                ins = [b.const(f"{base}_quantized", q), b.const(f"{base}_scale", s),
                       b.const(f"{base}_zero_point", np.zeros(s.shape, np.int8))]
                nodes.append(Node("DequantizeLinear", b.fresh(f"{base}_DequantizeLinear"), ins, [n.outputs[0]],
                                  {} if axis is None else {"axis": axis}))
                w_scales[n.outputs[0]] = s
            elif n.domain == "edgedl" and n.op_type == "FakeQuantize":
                x, s, z = n.inputs
                q = b.fresh(f"{x}_quantized")
                nodes.append(Node("QuantizeLinear", b.fresh(f"{x}_QuantizeLinear"), [x, s, z], [q]))
                nodes.append(Node("DequantizeLinear", b.fresh(f"{x}_DequantizeLinear"), [q, s, z], [n.outputs[0]]))
            else:
                nodes.append(n)
        g.nodes = nodes
        for n in nodes:  # int32 biases of the layers whose weight and input are quantized
            if n.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(n.inputs) < 3 or not n.inputs[2]:
                continue
            ws = w_scales.get(n.inputs[1])
            xp = producers.get(n.inputs[0])
            if ws is None or xp is None or xp.op_type != "FakeQuantize" or n.inputs[2] not in g.initializers:
                continue
            x_scale = np.float32(g.initializers[xp.inputs[1]].reshape(()))
            w = g.initializers[producers[n.inputs[1]].inputs[0]]
            group = int(n.attrs.get("group", 1)) if n.op_type == "ConvTranspose" else 1
            axis = 0 if n.op_type == "Conv" or (n.op_type == "Gemm" and n.attrs.get("transB", 0)) else 1
            channels = w.shape[axis] * group
            bias = g.initializers[n.inputs[2]].astype(np.float64).reshape(-1)
            if bias.size not in (1, channels):
                continue
            alpha = float(n.attrs.get("alpha", 1.0)) if n.op_type == "Gemm" else 1.0
            bias = np.broadcast_to(bias, (channels,)) * (float(n.attrs.get("beta", 1.0)) if n.op_type == "Gemm"
                                                         else 1.0)
            bs = (x_scale * np.broadcast_to(ws.reshape(-1), (channels,)) * np.float32(alpha)).astype(np.float32)
            bq = np.clip(np.rint(bias / bs.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
            if n.op_type == "Gemm":
                n.attrs["beta"] = 1.0
            base = n.inputs[2]
            out = b.fresh(f"{base}_dequantized")
            nodes.insert(nodes.index(n), Node(
                "DequantizeLinear", b.fresh(f"{base}_DequantizeLinear"),
                [b.const(f"{base}_quantized", bq), b.const(f"{base}_scale", bs),
                 b.const(f"{base}_zero_point", np.zeros(bs.shape, np.int32))], [out], {"axis": 0}))
            n.inputs[2] = out
        used = {i for n in g.nodes for i in n.inputs if i}
        for name in [k for k in g.initializers if k not in used]:
            del g.initializers[name]
        g.validate_and_sort()
        return g


def to_qat(source: Graph) -> QatGraph:
    """The trainable form of a QDQ graph (see the module docstring). Raises EdgeDLError for a quantized
    graph in operator form (QLinearConv, MatMulInteger, ...) or with quantization it cannot train through."""
    operator_form = sorted({n.op_type for n in source.nodes if n.op_type in _QUANT_OPS}
                           - {"QuantizeLinear", "DequantizeLinear"})
    if operator_form:
        raise EdgeDLError(f"quantization-aware training takes models in QDQ form (QuantizeLinear / "
                          f"DequantizeLinear around float ops); this one has {operator_form}")
    g = copy_graph(source)
    b = _Builder(g)
    producers = g.producers()
    consumers = g.consumers()
    drop: set[int] = set()
    replace: dict[int, Node] = {}
    qat = QatGraph(g)
    init = g.initializers
    # weights and biases of linear layers
    for n in g.nodes:
        if n.domain or n.op_type not in _LINEAR or len(n.inputs) < 2:
            continue
        dq = producers.get(n.inputs[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] not in init or \
                len(consumers[n.inputs[1]]) != 1 or any(i and i not in init for i in dq.inputs):
            continue
        q = init[dq.inputs[0]]
        if q.dtype not in (np.int8, np.uint8):
            continue
        value = _dequantize(dq, g, g.opset)
        scale = init[dq.inputs[1]]
        axis = None if scale.size == 1 else int(dq.attrs.get("axis", 1)) % q.ndim
        param = b.const(_base(dq.inputs[0], "_quantized"), value)
        replace[id(dq)] = Node("FakeQuantizeWeight", b.fresh(f"{param}_FakeQuantizeWeight"), [param],
                               [n.inputs[1]], {} if axis is None else {"axis": axis}, domain="edgedl")
        qat.weights.append(param)
        if n.op_type != "MatMul" and len(n.inputs) > 2 and n.inputs[2]:
            bdq = producers.get(n.inputs[2])
            if bdq is not None and bdq.op_type == "DequantizeLinear" and all(i in init for i in bdq.inputs if i) \
                    and len(consumers[n.inputs[2]]) == 1:
                bias = b.const(_base(bdq.inputs[0], "_quantized"), _dequantize(bdq, g, g.opset))
                drop.add(id(bdq))
                n.inputs[2] = bias
                qat.biases.append(bias)
            elif n.inputs[2] in init and init[n.inputs[2]].dtype == np.float32:
                qat.biases.append(n.inputs[2])
    # activation QuantizeLinear -> DequantizeLinear pairs
    outputs = {s.name for s in g.outputs}
    renames: list[tuple[str, str]] = []
    for n in g.nodes:
        if n.op_type != "QuantizeLinear" or n.domain:
            continue
        users = consumers.get(n.outputs[0], [])
        if not users or any(u.op_type != "DequantizeLinear" or not _same_constants(u.inputs[1:], n.inputs[1:], init)
                            for u in users) or n.outputs[0] in outputs:
            raise EdgeDLError(f"{n.describe()}: quantization-aware training needs every QuantizeLinear to feed "
                              f"DequantizeLinear nodes with the same scale and zero point")
        if len(n.inputs) < 3 or not n.inputs[2] or any(i not in init for i in n.inputs[1:]):
            raise EdgeDLError(f"{n.describe()}: quantization-aware training needs a constant scale and zero "
                              f"point")
        mask = b.fresh(f"{n.inputs[0]}_clip_mask")
        replace[id(n)] = Node("FakeQuantize", b.fresh(f"{n.inputs[0]}_FakeQuantize"), list(n.inputs),
                              [users[0].outputs[0], mask], domain="edgedl")
        for u in users:
            drop.add(id(u))
        renames += [(u.outputs[0], users[0].outputs[0]) for u in users[1:]]
    g.nodes = [replace.get(id(n), n) for n in g.nodes if id(n) not in drop]
    for old, new in renames:
        if old in outputs:
            raise EdgeDLError(f"graph output {old!r} is one of several dequantizations of one tensor")
        rename_input(g, old, new)
    left = [n.describe() for n in g.nodes if n.op_type == "DequantizeLinear" and n.inputs[0] not in init]
    if left:
        raise EdgeDLError(f"quantization-aware training cannot go through {left[:3]}: a DequantizeLinear of a "
                          f"computed tensor without its QuantizeLinear")
    used = {i for n in g.nodes for i in n.inputs if i}
    for name in [k for k in init if k not in used]:
        del init[name]
    g.validate_and_sort()
    if not qat.weights:
        raise EdgeDLError("the model has no int8 Conv / Gemm / MatMul weight to train")
    return qat


def _same_constants(a: list[str], b: list[str], init: dict) -> bool:
    """Whether two lists of quantization parameters (scale, zero point) name the same tensors or constants of
    equal type and value."""
    return len(a) == len(b) and all(
        x == y or (x in init and y in init and init[x].dtype == init[y].dtype and np.array_equal(init[x], init[y]))
        for x, y in zip(a, b))
