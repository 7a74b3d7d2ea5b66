"""Run a graph with plans cached per binding: what a Model, a subgraph (If/Loop/Scan bodies) and the part of a
plan after a data-dependent node have in common.

A :class:`GraphRunner` owns a graph and its op classes. ``plan(types, values)`` returns the cached
:class:`~edgedl.runtime.plan.Plan` for a binding of input types (and, for inputs the plan must be specialized
on, their values); ``run(feeds)`` finds or builds it and runs it. When a node needs the value of a tensor that
is computed from graph inputs (a Reshape shape, Range limits), the runner either specializes its plans on those
inputs' values (when they are small: ``specialize_limit`` elements at most, or always when it is None) or lets
the planner cut the plan at that node (:mod:`edgedl.runtime.plan`), so a large data input never becomes a
cache key.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ConstantRequired, InputError
from ..ir import Graph, Node, TensorType
from ..registry import Op, lookup
from .inline_if import has_if, inline_constant_ifs
from .plan import nested_profile

#: How many bindings keep their plan (and arena) alive at once, per runner.
MAX_CACHED_PLANS = 8
#: A node needing a value computed from graph inputs of at most this many elements each (a shape, a count, a
#: sample rate) makes the plans specialize on those inputs' values; from larger inputs (data) it cuts the plan
#: instead (the model's runner, and the runners of plan tails)
SPECIALIZE_MAX_ELEMENTS = 64


class GraphRunner:
    """Plans of one graph, cached per binding of input types and specialized values."""

    def __init__(self, graph: Graph, *, specialize_limit: int | None = None,
                 before_plan: Callable[[], None] | None = None):
        self.graph = graph
        self.specialize_limit = specialize_limit
        self.before_plan = before_plan
        self.op_classes: dict[str, type[Op]] = {}
        for node in graph.nodes:
            cls = lookup(node.op_type, node.domain)
            if cls is None:
                from ..errors import UnsupportedOpError

                raise UnsupportedOpError(f"{node.describe()}: operator {node.op_type} is not supported")
            self.op_classes[node.name] = cls
        self.plans: dict[tuple, object] = {}
        #: graph inputs whose values the plans are specialized on
        self.value_inputs: set[str] = set()
        #: the value inputs that only If conditions come from (plans without their values keep the If)
        self.optional_value_inputs: set[str] = set()
        self._producers = graph.producers()
        self.last = LastPlan()
        self._graph_inputs = {s.name for s in graph.inputs}
        self._has_if = has_if(graph)

    # --- planning -----------------------------------------------------------------------------------------
    def plan(self, types: dict[str, TensorType], values: dict[str, np.ndarray] | None = None):
        """The plan for input ``types``; ``values`` holds (at least) the feeds of the value inputs."""
        from .plan import build_plan

        values = {n: values[n] for n in self.value_inputs if n in values} if values and self.value_inputs else {}
        # the If-condition inputs are a choice, not a need: without their values the plan keeps the eager If
        if self.value_inputs and set(self.value_inputs) - set(values) - self.optional_value_inputs:
            raise ConstantRequired(f"this model needs the values of inputs {sorted(self.value_inputs)} to "
                                   "build a plan: call run() with feeds", sorted(self.value_inputs)[0])
        key = tuple((n, types[n]) for n in sorted(types))
        key += tuple((n, _value_key(values[n])) for n in sorted(values))
        plan = self.plans.get(key)
        if plan is None:
            graph = inline_constant_ifs(self.graph, values) if self._has_if else self.graph
            # NOTE: every plan gets its own op instances, so an op may keep per-shape state from infer().
            ops = {n.name: self._op_class(n)(n, graph.opset) for n in graph.nodes}
            if self.before_plan is not None:
                self.before_plan()
            plan = build_plan(graph, ops, types, values, cut=lambda t: self._should_cut(t, types))
            if len(self.plans) >= MAX_CACHED_PLANS:
                self.plans.pop(next(iter(self.plans)))
            self.plans[key] = plan
        else:  # most recently used last: the oldest binding is dropped first
            self.plans[key] = self.plans.pop(key)
        return plan

    def _op_class(self, node: Node) -> type[Op]:
        """The op class of a graph node, or of a node an inlined If branch brought in."""
        cls = self.op_classes.get(node.name)
        if cls is None:
            cls = lookup(node.op_type, node.domain)
            if cls is None:
                from ..errors import UnsupportedOpError

                raise UnsupportedOpError(f"{node.describe()}: operator {node.op_type} is not supported")
        return cls

    def condition_inputs(self, types: dict[str, TensorType]) -> set[str]:
        """Small graph inputs (at most ``specialize_limit`` elements) that If conditions are computed from: a plan
        specialized on their values knows each condition and inlines the branch it takes
        (:mod:`edgedl.runtime.inline_if`). None for a runner that specializes without a limit (subgraphs)."""
        if self.specialize_limit is None or not self._has_if:
            return set()
        found: set[str] = set()
        for node in self.graph.nodes:
            if node.op_type == "If" and node.inputs and node.inputs[0]:
                sources = self.inputs_feeding(node.inputs[0])
                if sources and all(s in types and types[s].size <= self.specialize_limit for s in sources):
                    found |= sources
        return found

    def inputs_feeding(self, tensor: str) -> set[str]:
        """Graph inputs that ``tensor`` is computed from."""
        found, stack, seen = set(), [tensor], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in self._graph_inputs:
                found.add(t)
            elif t in self._producers:
                stack.extend(i for i in self._producers[t].inputs if i)
        return found

    def _should_cut(self, tensor: str, types: dict[str, TensorType]) -> bool:
        """Whether a node needing the value of ``tensor`` starts a run-time segment (True) or the plans get
        specialized on the graph inputs it comes from (False: ConstantRequired reaches ``resolve``)."""
        sources = self.inputs_feeding(tensor) - self.value_inputs
        if not sources:
            return True
        if self.specialize_limit is None:
            return False
        return any(types[s].size > self.specialize_limit for s in sources if s in types)

    def resolve(self, types: dict[str, TensorType], feeds: dict[str, np.ndarray]):
        """The plan for these feeds, specializing on input values the planner asks for (and on the small inputs
        If conditions come from)."""
        wanted = self.condition_inputs(types) - self.value_inputs
        if wanted and all(n in feeds for n in wanted):
            self.value_inputs |= wanted
            self.optional_value_inputs |= wanted
        while True:
            try:
                return self.plan(types, feeds)
            except ConstantRequired as e:
                needed = self.inputs_feeding(e.tensor)
                sources = needed - self.value_inputs
                if not sources:
                    if needed & self.optional_value_inputs:  # needed after all, not only a choice
                        self.optional_value_inputs -= needed
                        continue
                    raise
                self.value_inputs |= sources

    # --- running ------------------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray], profile: list | None = None) -> dict[str, np.ndarray]:
        """Run on ``feeds`` (every graph input; dtypes and shapes taken from the arrays). ``profile``: see
        :meth:`Plan.run`; a subgraph run inside a profiled control-flow step profiles into that step's list."""
        if profile is None:
            profile = nested_profile.active
        plan = self.last.recall(feeds)  # a subgraph called again like last time (a Loop body, an If branch)
        if plan is not None:
            return plan.run(feeds, profile)
        types = {}
        for spec in self.graph.inputs:
            if spec.name not in feeds:
                raise InputError(f"missing input '{spec.name}'")
            value = feeds[spec.name]
            if isinstance(value, np.ndarray) and not value.flags.c_contiguous:
                feeds = {**feeds, spec.name: np.ascontiguousarray(value)}
            types[spec.name] = spec_type(spec, feeds[spec.name])
        plan = self.resolve(types, feeds)
        self.last.remember(feeds, plan, self.value_inputs)
        return plan.run(feeds, profile)


class LastPlan:
    """The last run's plan with the names, shapes and dtypes of its feeds: a caller feeding C-contiguous arrays
    of the very same names, shapes and dtypes again (a stream of same-sized frames, a Loop body's next
    iteration) skips the type binding and the plan lookup (about 15 us per call)."""

    __slots__ = ("signature", "plan", "values")

    #: the most elements of a value input the remembered plan compares by value (larger ones: not remembered)
    MAX_VALUE_ELEMENTS = SPECIALIZE_MAX_ELEMENTS

    def __init__(self):
        self.signature: tuple | None = None
        self.plan = None
        #: value inputs (the plan is specialized on their values) -> the bytes of the values it was made for
        self.values: dict[str, bytes] = {}

    def remember(self, feeds: dict, plan, value_inputs=()) -> None:
        """Keep ``plan`` for feeds like these (only when every feed is an array); for the names in
        ``value_inputs`` (small inputs the plan is specialized on) the values must match too."""
        if all(type(a) is np.ndarray for a in feeds.values()) and \
                all(n in feeds and feeds[n].size <= self.MAX_VALUE_ELEMENTS for n in value_inputs):
            self.signature = tuple((n, a.shape, a.dtype) for n, a in feeds.items())
            self.values = {n: feeds[n].tobytes() for n in value_inputs}
            self.plan = plan
        else:
            self.signature, self.plan, self.values = None, None, {}

    def recall(self, feeds):
        """The remembered plan when ``feeds`` match its signature, else None."""
        signature = self.signature
        if signature is None or type(feeds) is not dict or len(feeds) != len(signature):
            return None
        for name, shape, dtype in signature:
            a = feeds.get(name)
            if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
                return None
        for name, value in self.values.items():
            if feeds[name].tobytes() != value:
                return None
        return self.plan


def value_type(value):
    """The plan-time type of a run-time value (a tensor, a sequence of tensors, or an optional)."""
    from ..ir import OptionalType, SequenceType

    if isinstance(value, np.ndarray):
        return TensorType(tuple(value.shape), value.dtype)
    if isinstance(value, list):
        return SequenceType(tuple(value_type(v) for v in value))
    if value is None:
        return OptionalType(None)
    raise InputError(f"cannot run on a value of type {type(value).__name__}")


def spec_type(spec, value):
    """The plan-time type of ``value`` fed to the graph input ``spec`` (its kind decides how an empty list or a
    None reads)."""
    from ..ir import OptionalType, SequenceType

    kind = getattr(spec, "kind", "tensor")
    if kind.startswith("optional"):
        inner_seq = kind == "optional_sequence"
        if value is None:
            return OptionalType(None, spec.dtype, inner_seq)
        inner = SequenceType(tuple(value_type(v) for v in value), spec.dtype) if inner_seq else value_type(value)
        return OptionalType(inner, spec.dtype, inner_seq)
    if kind == "sequence":
        return SequenceType(tuple(value_type(v) for v in value), spec.dtype)
    return value_type(value)



def _value_key(value):
    """A hashable key for a value a plan is specialized on (a tensor, a sequence or an optional)."""
    if isinstance(value, np.ndarray):
        return value.dtype.str, value.shape, value.tobytes()
    if isinstance(value, list):
        return tuple(_value_key(v) for v in value)
    return None
