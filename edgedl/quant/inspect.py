"""Where a quantized model runs in int8 and where in float: the precision summary ``edgedl info`` prints."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_8BIT = (np.dtype(np.int8), np.dtype(np.uint8))
_EDGES = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@dataclass
class PrecisionSummary:
    """Steps of a plan by precision: ``int8`` (8-bit in and out), ``edges`` (Quantize/Dequantize), and
    ``float_islands``: float ops fed by a DequantizeLinear, i.e. running in float inside the int8 part of
    the model because they have no int8 kernel or their pattern did not match."""

    int8: dict[str, int] = field(default_factory=dict)
    edges: dict[str, int] = field(default_factory=dict)
    float_islands: list[tuple[str, str]] = field(default_factory=list)  # (op type, node name)
    other: int = 0

    @property
    def quantized(self) -> bool:
        return bool(self.int8 or self.edges)


def precision_summary(model) -> PrecisionSummary:
    plan = model.plan()
    types = plan.types
    dq_outputs = {o for s in plan.steps if s.node.op_type == "DequantizeLinear" for o in s.node.outputs}
    summary = PrecisionSummary()
    for step in plan.steps:
        node = step.node
        if node.op_type in _EDGES and not node.domain:
            summary.edges[node.op_type] = summary.edges.get(node.op_type, 0) + 1
            continue
        outs = [types[o] for o in node.outputs if o]
        ins = [i for i in node.inputs if i]
        if outs and all(np.dtype(t.dtype) in _8BIT or np.dtype(t.dtype) == np.int32 for t in outs) and \
                np.dtype(types[ins[0]].dtype) in _8BIT:
            key = node.op_type if not node.domain else f"{node.domain}.{node.op_type}"
            summary.int8[key] = summary.int8.get(key, 0) + 1
        elif any(i in dq_outputs for i in ins):
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
