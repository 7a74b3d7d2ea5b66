"""Helpers for testing ops and kernels: run one op the way the planner does, outside a model."""
from __future__ import annotations

import numpy as np

from .ir import Node, TensorType
from .registry import Kernel, Op, lookup


def run_kernel(op: Op, inputs: list, consts: list, fill: float = np.nan) -> tuple[list[np.ndarray], Kernel]:
    """infer -> build -> run ``op``'s kernel on freshly preallocated outputs (one per named output).

    ``inputs``: arrays (None for omitted optional inputs); ``consts``: the value of each input the op may
    treat as a constant, else None. Float outputs start as ``fill`` (NaN shows elements a kernel forgot to
    write); other dtypes start as ``fill`` when it is not NaN, else uninitialized.
    Returns (outputs, kernel)."""
    ins = [None if a is None else TensorType(a.shape, a.dtype) for a in inputs]
    types = op.infer(ins, consts)
    present = [t for t, name in zip(types, op.node.outputs) if name]
    kernel = op.build(ins, present, consts)
    outs = []
    for t in present:
        if np.dtype(t.dtype).kind == "f" or not np.isnan(fill):
            outs.append(np.full(t.shape, fill, t.dtype))
        else:
            outs.append(np.empty(t.shape, t.dtype))
    kernel.fn(list(inputs), outs, np.empty(kernel.scratch_bytes, np.uint8))
    return outs, kernel


def run_op(op_type: str, inputs: list, attrs: dict | None = None, *, opset: int, const=(), n_out: int = 1,
           fill: float = np.nan) -> tuple[list[np.ndarray], list[np.ndarray], Kernel]:
    """Build a one-node ``op_type`` op (inputs named i0, i1, ...; indices in ``const`` passed as constants),
    run its kernel (see :func:`run_kernel`) and its numpy reference. Returns (outputs, references, kernel)."""
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    node = Node(op_type, "n", names, [f"o{k}" for k in range(n_out)], dict(attrs or {}))
    op = lookup(op_type)(node, opset)
    consts = [a if k in const else None for k, a in enumerate(inputs)]
    outs, kernel = run_kernel(op, inputs, consts, fill)
    return outs, op.ref(*inputs), kernel
