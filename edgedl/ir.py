"""The edgedl graph IR: tensors with shapes and dtypes, nodes, graphs in topological order.

Importers (``edgedl.converters``) build a :class:`Graph`; passes rewrite it; the planner binds shapes and
turns it into an executable plan. Nothing here knows about ONNX protobufs or kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union  # noqa: F401  (Union keeps the Dim alias valid on Python 3.10)

import numpy as np

from .errors import ModelFormatError, ShapeError

#: A dimension is a fixed size (int), a symbol bound at run time (str) or unknown (None).
Dim = Union[int, str, None]  # noqa: UP007

#: Largest tensor edgedl accepts, in elements: anything bigger is a broken or hostile model.
MAX_TENSOR_ELEMENTS = 1 << 32


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a graph input or output. Shapes may hold symbolic dims (str)."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: np.dtype | None
    #: "tensor", or for ONNX's other value types "sequence" (of tensors of ``dtype``), "optional" (of a
    #: tensor) or "optional_sequence"; shape is then the elements' shape, if declared
    kind: str = "tensor"

    def __repr__(self) -> str:
        if self.dtype is None:
            return f"{self.name}: ?"
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"{self.name}: {np.dtype(self.dtype).name}{dims}"

    @property
    def is_static(self) -> bool:
        return self.kind == "tensor" and self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True)
class TensorType:
    """A concrete tensor type inside a plan: every dimension known."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class SequenceType:
    """A sequence of tensors inside a plan (ONNX ``seq(tensor)``): the type of each element, in order.

    ``elem_dtype`` is the element type of an empty sequence (and of every element)."""

    elems: tuple[TensorType, ...]
    elem_dtype: np.dtype | None = None

    @property
    def dtype(self) -> np.dtype | None:
        if self.elem_dtype is not None:
            return np.dtype(self.elem_dtype)
        return np.dtype(self.elems[0].dtype) if self.elems else None


@dataclass(frozen=True)
class OptionalType:
    """An optional value inside a plan (ONNX ``optional(...)``): ``inner`` is the type of the value it holds,
    or None for an empty optional (``elem`` then says what it would hold: a TensorType-like dtype or "seq")."""

    inner: TensorType | SequenceType | None
    elem_dtype: np.dtype | None = None
    elem_is_sequence: bool = False


#: anything a plan may hold in a slot
ValueType = Union[TensorType, SequenceType, OptionalType]  # noqa: UP007


@dataclass
class Node:
    """One operator application. Omitted optional inputs are empty strings, as in ONNX."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""

    def describe(self) -> str:
        return f"{self.op_type} node '{self.name}'"


@dataclass
class Graph:
    """A dataflow graph: nodes (kept in topological order), constant initializers, inputs and outputs."""

    nodes: list[Node]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    initializers: dict[str, np.ndarray]
    opset: int = 13
    name: str = "graph"
    #: the model's metadata_props (e.g. "edgedl.requant" on models edgedl quantized)
    metadata: dict[str, str] = field(default_factory=dict)
    #: opset versions of domains other than the default one (e.g. {"com.microsoft": 1})
    domains: dict[str, int] = field(default_factory=dict)
    #: a subgraph (the body of If/Loop/Scan): the names it reads from enclosing graphs. They are its last
    #: inputs; the node that owns the subgraph lists the matching outer tensors as its last inputs
    outer: list[str] = field(default_factory=list)
    #: initializers the file also lists as graph inputs: defaults a feed may override (as onnxruntime allows)
    overridable: list[str] = field(default_factory=list)
    #: state carried from one run to the next (a streaming model's variables): (graph input holding the value a
    #: run starts from, graph output holding the value the next run starts from, the initial value);
    #: :class:`edgedl.Model` feeds and keeps them, ``Model.reset_state`` starts over
    state: list[tuple[str, str, np.ndarray]] = field(default_factory=list)

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users.setdefault(i, []).append(n)
        return users

    def validate_and_sort(self) -> None:
        """Check that every tensor is defined exactly once and sort nodes topologically.

        Raises ModelFormatError for undefined tensors, tensors defined twice, and cycles.
        """
        defined: dict[str, str] = {}
        for spec in self.inputs:
            defined[spec.name] = "graph input"
        for name in self.initializers:
            defined.setdefault(name, "initializer")
        for node in self.nodes:
            for out in node.outputs:
                if not out:
                    continue
                if out in defined:
                    raise ModelFormatError(
                        f"tensor '{out}' is produced by {node.describe()} but is already defined by "
                        f"{defined[out]}")
                defined[out] = node.describe()
        for node in self.nodes:
            for inp in node.inputs:
                if inp and inp not in defined:
                    raise ModelFormatError(f"{node.describe()} reads tensor '{inp}', which nothing defines")
        for spec in self.outputs:
            if spec.name not in defined:
                raise ModelFormatError(f"graph output '{spec.name}' is not produced by any node")
        self.nodes = topological_order(self.nodes, set(defined) - set(self.producers()))


def attr_text(value) -> str:
    """A string attribute's text (the importer keeps ONNX's bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def subgraph_outer_names(attrs: dict) -> list[str]:
    """The outer tensors that the subgraphs among a node's attributes read, each once, in attribute order: the
    order in which the node lists them as its last inputs."""
    names: list[str] = []
    for value in attrs.values():
        for g in (value if isinstance(value, list) else [value]):
            if isinstance(g, Graph):
                names += g.outer
    return list(dict.fromkeys(names))


def topological_order(nodes: list[Node], available: set[str]) -> list[Node]:
    """Kahn's algorithm, stable with respect to the original order. Raises ModelFormatError on a cycle."""
    producers = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        deps = {producers[x] for x in n.inputs if x and x not in available and x in producers}
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    import heapq

    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].describe() for i, w in enumerate(waiting) if w > 0]
        raise ModelFormatError("the graph has a cycle through " + ", ".join(stuck[:8])
                               + (" ..." if len(stuck) > 8 else ""))
    return order


def check_shape(shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Validate a concrete shape: non-negative ints and a sane element count."""
    total = 1
    for d in shape:
        if not isinstance(d, (int, np.integer)) or d < 0:
            raise ShapeError(f"{what}: invalid dimension {d!r} in shape {tuple(shape)}")
        total *= int(d)
    if total > MAX_TENSOR_ELEMENTS:
        raise ShapeError(f"{what}: shape {tuple(shape)} has {total} elements, more than edgedl accepts "
                         f"({MAX_TENSOR_ELEMENTS})")
    return tuple(int(d) for d in shape)


def contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous array of the same shape (np.ascontiguousarray turns 0-d arrays into 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.array(a, order="C")
