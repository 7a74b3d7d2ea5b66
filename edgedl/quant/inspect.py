"""Where a quantized model runs in int8 and where in float: the precision summary ``edgedl info`` prints."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_8BIT = (np.dtype(np.int8), np.dtype(np.uint8))
_EDGES = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@dataclass
class PrecisionSummary:
    """Steps of a plan by precision: ``int8`` (8-bit in and out), ``edges`` (Quantize/Dequantize), and
    ``float_islands``: float ops fed by a DequantizeLinear or between one and a QuantizeLinear, i.e. running
    in float inside the int8 part of the model because they have no int8 kernel or their pattern did not
    match (LayerNormalization, Attention, LSTM, Einsum, ...)."""

    int8: dict[str, int] = field(default_factory=dict)
    edges: dict[str, int] = field(default_factory=dict)
    float_islands: list[tuple[str, str]] = field(default_factory=list)  # (op type, node name)
    other: int = 0

    @property
    def quantized(self) -> bool:
        return bool(self.int8 or self.edges)


def _is_8bit_step(node, types) -> bool:
    outs = [types[o] for o in node.outputs if o]
    ins = [i for i in node.inputs if i]
    return bool(outs and ins) and all(np.dtype(t.dtype) in _8BIT or np.dtype(t.dtype) == np.int32 for t in outs) \
        and np.dtype(types[ins[0]].dtype) in _8BIT


def precision_summary(model) -> PrecisionSummary:
    """The plan's steps by precision. A float island is a float step fed by a DequantizeLinear, or a float
    step inside the span between a DequantizeLinear and a QuantizeLinear (reached from a dequantized tensor
    through float tensors, and reaching a QuantizeLinear): e.g. the Softmax between an attention's two
    float MatMuls, or the ops of a LayerNormalization decomposed into Reduce/Sub/Div."""
    plan = model.plan()
    types = plan.types
    steps = plan.steps
    edge = [s.node.op_type in _EDGES and not s.node.domain for s in steps]
    eight = [not e and _is_8bit_step(s.node, types) for s, e in zip(steps, edge)]

    def floating(t):
        return t in types and np.dtype(types[t].dtype).kind == "f"

    dq_outputs = {o for s in steps if s.node.op_type == "DequantizeLinear" for o in s.node.outputs}
    after_dq = set(dq_outputs)  # float tensors computed (in float) from a dequantized tensor
    for s, e, b in zip(steps, edge, eight):
        if not e and not b and any(i in after_dq for i in s.node.inputs if i):
            after_dq.update(o for o in s.node.outputs if o and floating(o))
    before_q = {s.node.inputs[0] for s in steps if s.node.op_type == "QuantizeLinear" and not s.node.domain}
    for s, e, b in zip(reversed(steps), reversed(edge), reversed(eight)):
        if not e and not b and any(o in before_q for o in s.node.outputs if o):
            before_q.update(i for i in s.node.inputs if i and floating(i))
    summary = PrecisionSummary()
    for step, e, b in zip(steps, edge, eight):
        node = step.node
        ins = [i for i in node.inputs if i]
        if e:
            summary.edges[node.op_type] = summary.edges.get(node.op_type, 0) + 1
        elif b:
            key = node.op_type if not node.domain else f"{node.domain}.{node.op_type}"
            summary.int8[key] = summary.int8.get(key, 0) + 1
        elif any(i in dq_outputs for i in ins) or (any(i in after_dq for i in ins)
                                                   and any(o in before_q for o in node.outputs if o)):
            summary.float_islands.append((node.op_type, node.name))
        else:
            summary.other += 1
    return summary


def format_summary(s: PrecisionSummary, limit: int = 12) -> list[str]:
    lines = ["precision: int8 steps: " + (", ".join(f"{k} x{v}" for k, v in sorted(s.int8.items())) or "none")]
    lines.append("  quantize/dequantize: " + (", ".join(f"{k} x{v}" for k, v in sorted(s.edges.items())) or "none"))
    if s.float_islands:
        shown = ", ".join(f"{op} '{name}'" for op, name in s.float_islands[:limit])
        more = f" (+{len(s.float_islands) - limit} more)" if len(s.float_islands) > limit else ""
        lines.append(f"  float after a DequantizeLinear ({len(s.float_islands)} steps: no int8 kernel or pattern, "
                     f"or past the last quantized tensor): {shown}{more}")
    else:
        lines.append("  float after a DequantizeLinear: none")
    return lines


__all__ = ["PrecisionSummary", "precision_summary", "format_summary"]
