"""Small helpers shared by op families: axis normalization, broadcasting, reading constant inputs."""
from __future__ import annotations

import numpy as np

from ..errors import ConstantRequired, ShapeError, UnsupportedOpError
from ..ir import TensorType
from ..registry import Op


def normalize_axis(op: Op, axis: int, rank: int, what: str = "axis") -> int:
    """Map a possibly negative axis into [0, rank); ShapeError when out of range."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise op.error(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def broadcast_shapes(op: Op, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy (multidirectional) broadcasting; ShapeError naming the shapes when they do not fit."""
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise op.error(f"shapes {', '.join(str(tuple(s)) for s in shapes)} cannot be broadcast together")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def const_input(op: Op, consts: list, index: int, what: str) -> np.ndarray:
    """The value of a constant input, or UnsupportedOpError if it is computed at run time."""
    value = consts[index] if index < len(consts) else None
    if value is None:
        tensor = op.node.inputs[index] if index < len(op.node.inputs) else ""
        raise ConstantRequired(f"{op.node.describe()}: {what} (input {index}, '{tensor}') must be a constant "
                               "known when the plan is built; values computed from data inside the model are not "
                               "supported", tensor)
    return value


def const_ints(op: Op, consts: list, index: int, what: str) -> list[int]:
    value = const_input(op, consts, index, what)
    if value.dtype.kind not in "iu":
        raise op.error(f"{what} must be integers, got {value.dtype}")
    return [int(v) for v in value.reshape(-1)]


def require_dtype(op: Op, t: TensorType, allowed: tuple, what: str = "input") -> None:
    if np.dtype(t.dtype).name not in allowed:
        raise op.error(f"{what} has dtype {np.dtype(t.dtype).name}; supported: {', '.join(allowed)}",
                       UnsupportedOpError)


def same_dtype(op: Op, ins: list, what: str = "inputs") -> np.dtype:
    dts = {np.dtype(t.dtype) for t in ins if t is not None}
    if len(dts) != 1:
        raise op.error(f"{what} must share one dtype, got {sorted(d.name for d in dts)}")
    return dts.pop()


__all__ = ["normalize_axis", "broadcast_shapes", "const_input", "const_ints", "require_dtype", "same_dtype",
           "ShapeError"]


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The gradient of an operand of ``shape`` that numpy broadcast to ``grad.shape``: ``grad`` summed over
    the broadcast axes (in float64), as float32 of ``shape``."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return np.asarray(grad, np.float32)
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and grad.shape[lead + i] != 1)
    return grad.sum(axis=axes, dtype=np.float64).reshape(shape).astype(np.float32)
