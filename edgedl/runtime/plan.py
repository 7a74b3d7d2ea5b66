"""Turn a graph plus concrete input types into an executable plan.

Building a plan: bind shapes (running every op's shape rule in topological order), fold constants (any node
whose inputs are all constant, and every shape-only node such as Shape), drop nodes no output needs,
prepare a kernel per remaining node, and lay every intermediate tensor and kernel workspace into one arena
by liveness. Running a plan does no allocation beyond the outputs handed to the caller.

Two kinds of nodes make a plan allocate at run time, and only models that have them pay for it:

* *eager* nodes (``Op.eager``: control flow, sequence and optional ops) have output types known when the
  plan is built, but their ``ref`` produces the outputs at run time (allocated; not in the arena);
* a node whose output shapes depend on data (its shape rule raises :class:`DataDependentShape`, e.g.
  NonZero), or that needs the value of a tensor computed inside the model when the model would rather not
  specialize on its inputs' values (a large data input: see :mod:`edgedl.runtime.runner`), *cuts* the plan:
  the nodes before it form this plan (its arena and bound kernels as usual), the node runs at run time, and
  the nodes after it run through a :class:`Tail`, whose own runner builds one plan per binding of the
  tensors crossing the cut (shapes, and values where a node needs them) and caches it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import ConstantRequired, DataDependentShape, EdgeDLError, ShapeError
from ..ir import Graph, Node, OptionalType, SequenceType, TensorSpec, TensorType, check_shape, contiguous
from ..kernels.aligned import aligned_empty
from ..kernels.cpu.config import num_threads
from ..registry import Kernel, Op
from .arena import Buffer, lower_bound, plan_arena

#: graph inputs up to this size are copied into a plan-owned buffer per run (see build_plan)
STAGE_MAX_BYTES = 1 << 20
#: graph outputs up to this size are computed into a plan-owned buffer and copied out (see build_plan)
OWNED_OUTPUT_MAX_BYTES = 1 << 16


@dataclass
class Step:
    node: Node
    op: Op
    kernel: Kernel
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    scratch: np.ndarray | None = None
    #: output 0 becomes a view of input 0 with this shape (no kernel runs)
    view_shape: tuple[int, ...] | None = None
    #: the kernel bound to this step's fixed arrays (see Kernel.bind), or None
    bound: object = None
    #: the op's ref computes the outputs at run time (an eager op: see the module docstring)
    eager: bool = False


@dataclass
class Plan:
    """An executable plan for one binding of input shapes."""

    input_types: dict[str, TensorType]
    types: dict[str, TensorType]
    steps: list[Step]
    slot_of: dict[str, int]
    template: list
    #: (input name, slot, staged): a staged input is copied into a buffer the plan owns (its consumers are
    #: pre-bound to that buffer); others are used in place
    input_slots: list[tuple[str, int, bool]]
    fresh_outputs: list[tuple[int, tuple[int, ...], np.dtype]]
    outputs: list[tuple[str, int, bool]]  # (name, slot, copy before returning)
    arena: np.ndarray
    arena_bytes: int
    arena_lower_bound: int
    folded: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    bound_threads: int = 0
    #: the nodes after a data-dependent node (see the module docstring), or None
    tail: Tail | None = None
    #: what runs each step, for profiles (see _kernel_name; set by the first profiled run)
    kernel_names: list | None = None

    def _bind(self, threads: int) -> None:
        """Bind every step whose inputs, outputs and workspace are the same arrays on every run."""
        arrays = list(self.template)
        for step in self.steps:
            step.bound = None
            if step.view_shape is not None:
                base = arrays[step.ins[0]]
                if base is not None:  # a view of an arena tensor or a constant: the same memory every run
                    arrays[step.outs[0]] = base.reshape(step.view_shape)
                continue
            if (step.kernel.bind is not None and all(i < 0 or arrays[i] is not None for i in step.ins)
                    and all(arrays[o] is not None for o in step.outs)):
                step.bound = step.kernel.bind([arrays[i] if i >= 0 else None for i in step.ins],
                                              [arrays[o] for o in step.outs], step.scratch, threads)
        self.bound_threads = threads

    def run(self, feeds: dict[str, np.ndarray], profile: list | None = None) -> dict[str, np.ndarray]:
        """Run the plan on ``feeds``. With a ``profile`` list, every step is timed and appended to it as
        :class:`StepTime` (see :meth:`_run_profiled`); without, the steps run back to back."""
        if profile is not None:
            return self._run_profiled(feeds, profile)
        with self.lock:
            threads = num_threads()
            if threads != self.bound_threads:
                self._bind(threads)
            slots = self._start(feeds)
            for step in self.steps:  # NOTE: _run_profiled dispatches steps the same way; keep them in step
                if step.bound is not None:
                    step.bound()
                    continue
                if step.view_shape is not None:
                    slots[step.outs[0]] = slots[step.ins[0]].reshape(step.view_shape)
                    continue
                if step.eager:
                    self._run_eager(step, slots)
                    continue
                step.kernel.fn([slots[i] if i >= 0 else None for i in step.ins],
                               [slots[o] for o in step.outs], step.scratch)
            results = {name: _copy_value(slots[idx]) if copy else slots[idx] for name, idx, copy in self.outputs}
            if self.tail is not None:
                tail_feeds = {n: feeds[n] for n in self.tail.feeds_from_inputs}
                tail_feeds.update(results)
                return self.tail.run(tail_feeds)
            return results

    def _start(self, feeds: dict[str, np.ndarray]) -> list:
        """The run's slots: the template with the feeds placed (staged ones copied) and fresh outputs."""
        slots = list(self.template)
        for name, idx, staged in self.input_slots:
            if staged:
                np.copyto(slots[idx], feeds[name])
            else:
                slots[idx] = feeds[name]
        for idx, shape, dtype in self.fresh_outputs:
            slots[idx] = np.empty(shape, dtype)
        return slots

    def _run_profiled(self, feeds: dict[str, np.ndarray], profile: list) -> dict[str, np.ndarray]:
        """:meth:`run` with a clock read around every step (the same dispatch as the loop in ``run``, which
        stays free of the timing). Views cost nothing and are not listed; a data-dependent tail appends its
        own steps (the cut node, then the steps of the tail's plan).

        An eager step that runs subgraphs (If, Loop, Scan...) profiles them too: while it runs,
        :data:`nested_profile` makes every plan its runners execute append its steps, scoped
        ``"<node>/"``; the eager step itself then records its own time less theirs, so the entries add up to
        the run's time once."""
        clock = time.perf_counter
        if self.kernel_names is None:
            self.kernel_names = [_kernel_name(step, self.types) for step in self.steps]
        record = profile.append
        scope = nested_profile.scope
        with self.lock:
            threads = num_threads()
            if threads != self.bound_threads:
                self._bind(threads)
            slots = self._start(feeds)
            for step, kernel in zip(self.steps, self.kernel_names):
                if step.view_shape is not None:
                    slots[step.outs[0]] = slots[step.ins[0]].reshape(step.view_shape)
                    continue
                t0 = clock()
                if step.bound is not None:
                    step.bound()
                elif step.eager:
                    before = len(profile)
                    outer = nested_profile.active, nested_profile.scope
                    nested_profile.active, nested_profile.scope = profile, f"{scope}{step.node.name}/"
                    try:
                        self._run_eager(step, slots)
                    finally:
                        nested_profile.active, nested_profile.scope = outer
                    t1 = clock()
                    inner = sum(e.seconds for e in profile[before:])
                    record(StepTime(step.node, kernel, t1 - t0 - inner, scope))
                    continue
                else:
                    step.kernel.fn([slots[i] if i >= 0 else None for i in step.ins],
                                   [slots[o] for o in step.outs], step.scratch)
                t1 = clock()
                record(StepTime(step.node, kernel, t1 - t0, scope))
            results = {name: _copy_value(slots[idx]) if copy else slots[idx] for name, idx, copy in self.outputs}
            if self.tail is not None:
                tail_feeds = {n: feeds[n] for n in self.tail.feeds_from_inputs}
                tail_feeds.update(results)
                return self.tail.run(tail_feeds, profile)
            return results

    def _run_eager(self, step: Step, slots: list) -> None:
        values = step.op.ref(*[slots[i] if i >= 0 else None for i in step.ins])
        present = [k for k, o in enumerate(step.node.outputs) if o]
        for k, slot in zip(present, step.outs):
            value = values[k]
            want = self.types[step.node.outputs[k]]
            if not _matches(value, want):
                raise EdgeDLError(f"{step.node.describe()}: output '{step.node.outputs[k]}' came out as "
                                  f"{_describe(value)}, but the plan was built for {_describe_type(want)}")
            # an eager output must not alias the arena, which later steps overwrite
            slots[slot] = _detach(value, self.arena)

    def kernel_impls(self) -> dict[str, int]:
        """How many steps run each implementation ("numba", "numpy", "view", "eager")."""
        counts: dict[str, int] = {}
        for s in self.steps:
            key = "view" if s.view_shape is not None else "eager" if s.eager else s.kernel.impl
            counts[key] = counts.get(key, 0) + 1
        return counts


class Tail:
    """The nodes after a cut: the cut node itself when it runs at run time (``eager``: its ref computes its
    outputs, whose shapes only data decides), then a runner over the remaining nodes, which plans them once
    per binding of the tensors that cross the cut and caches the plans."""

    def __init__(self, node: Node, op: Op, eager: bool, graph: Graph, feeds_from_inputs: list[str],
                 constants: dict):
        from .runner import SPECIALIZE_MAX_ELEMENTS, GraphRunner

        #: values known when the plan was built that the cut node or the remainder reads
        self.constants = constants
        self.node = node
        self.op = op
        self.eager = eager
        self.graph = graph
        #: graph inputs of the enclosing plan that the tail reads directly
        self.feeds_from_inputs = feeds_from_inputs
        # like the model's runner, specialize only on small values (shape tensors, zero points): a large one
        # crossing the cut (an image) would make every new input a new plan, built at run time
        self.runner = GraphRunner(graph, specialize_limit=SPECIALIZE_MAX_ELEMENTS)

    def run(self, values: dict[str, np.ndarray], profile: list | None = None) -> dict[str, np.ndarray]:
        values.update(self.constants)
        if self.eager:
            t0 = time.perf_counter()
            try:
                outs = self.op.ref(*[values[i] if i else None for i in self.node.inputs])
            except EdgeDLError as e:
                raise _context(self.node, e) from e
            if profile is not None:
                profile.append(StepTime(self.node, "eager (data-dependent shape)", time.perf_counter() - t0,
                                        nested_profile.scope))
            for k, name in enumerate(self.node.outputs):
                if name:
                    value = outs[k]
                    if isinstance(value, np.ndarray):
                        check_shape(value.shape, f"{self.node.describe()}: output {k} ('{name}')")
                        value = contiguous(value)
                    values[name] = value
        feeds = {s.name: values[s.name] for s in self.graph.inputs}
        return self.runner.run(feeds, profile)


class StepTime(NamedTuple):
    """One timed step of a profiled run: the node, what ran it (e.g. ``"numba float32"``, ``"numpy int64"``,
    ``"eager"``), its wall time in seconds, and its scope: ``""`` for the model's own nodes, ``"If_0/"`` for
    the nodes of a subgraph the node If_0 ran (nested scopes chain: ``"Loop_3/If_1/"``). An eager node's time
    excludes the steps recorded inside it."""

    node: Node
    kernel: str
    seconds: float
    scope: str = ""


class _NestedProfile(threading.local):
    """The profile a running eager step's subgraphs append to (per thread), and their scope."""

    active: list | None = None
    scope: str = ""


#: set while a profiled eager step runs: :class:`~edgedl.runtime.runner.GraphRunner` runs profile into it
nested_profile = _NestedProfile()


def _kernel_name(step: Step, types: dict) -> str:
    """What runs a step, with the precision it computes in: the kernel implementation and the element type of
    its first output (an int8 convolution is "numba int8"; a float one "numba float32")."""
    impl = "eager" if step.eager else step.kernel.impl
    out = next((o for o in step.node.outputs if o), None)
    t = types.get(out)
    dtype = getattr(t, "dtype", None)
    if dtype is None:
        return impl
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    return f"{impl} {'string' if name == 'object' else name}"


def _copy_value(value):
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    if isinstance(value, list):
        return [np.array(v, copy=True) for v in value]
    return value


def _detach(value, arena: np.ndarray):
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True) if np.may_share_memory(value, arena) else value
    if isinstance(value, list):
        return [_detach(v, arena) for v in value]
    return value


def _matches(value, want) -> bool:
    if isinstance(want, TensorType):
        return isinstance(value, np.ndarray) and value.shape == want.shape and value.dtype == want.dtype
    if isinstance(want, SequenceType):
        return (isinstance(value, list) and len(value) == len(want.elems)
                and all(_matches(v, t) for v, t in zip(value, want.elems)))
    if isinstance(want, OptionalType):
        return value is None if want.inner is None else _matches(value, want.inner)
    return False


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype.name}{list(value.shape)}"
    if isinstance(value, list):
        return "sequence(" + ", ".join(_describe(v) for v in value) + ")"
    return "an empty optional" if value is None else type(value).__name__


def _describe_type(t) -> str:
    if isinstance(t, TensorType):
        return f"{np.dtype(t.dtype).name}{list(t.shape)}"
    if isinstance(t, SequenceType):
        return "sequence(" + ", ".join(_describe_type(e) for e in t.elems) + ")"
    if isinstance(t, OptionalType):
        return "an empty optional" if t.inner is None else f"optional({_describe_type(t.inner)})"
    return str(t)


def _context(node: Node, exc: Exception) -> EdgeDLError:
    if isinstance(exc, ConstantRequired):
        return exc
    if isinstance(exc, EdgeDLError):
        msg = str(exc)
        if node.name not in msg:
            msg = f"{node.describe()}: {msg}"
        return type(exc)(msg)
    return EdgeDLError(f"{node.describe()}: {type(exc).__name__}: {exc}")


def _dummy(t: TensorType) -> np.ndarray:
    """A zero-memory stand-in with the right shape and dtype (for shape-only ops)."""
    return np.broadcast_to(np.zeros((), t.dtype), t.shape)


def build_plan(graph: Graph, ops: dict[str, Op], input_types: dict[str, TensorType],
               input_values: dict[str, np.ndarray] | None = None, cut=None) -> Plan:
    """Build a plan for concrete input types. ``input_values`` are graph inputs whose values the plan is
    specialized on (they become constants; see Model). ``cut(tensor)`` says whether a node that needs the
    value of ``tensor`` (ConstantRequired) starts a run-time segment instead (see the module docstring); without
    it ConstantRequired reaches the caller."""
    from ..ops.gather import reject_low_precision  # (here: importing the ops loads their kernels' modules)

    types: dict[str, object] = {}
    consts: dict[str, object] = {}
    for name, arr in graph.initializers.items():
        consts[name] = arr
        types[name] = TensorType(arr.shape, arr.dtype)
    types.update(input_types)
    input_values = input_values or {}
    consts.update(input_values)
    input_types = {n: t for n, t in input_types.items() if n not in input_values}

    live: list[Node] = []
    folded = 0
    for index, node in enumerate(graph.nodes):
        op = ops[node.name]
        ins = [types[i] if i else None for i in node.inputs]
        cin = [consts.get(i) if i else None for i in node.inputs]
        try:
            outs = op.infer(ins, cin)
            reject_low_precision(op, ins, outs)
            for k, (name, t) in enumerate(zip(node.outputs, outs)):
                if name:
                    if isinstance(t, TensorType) or not isinstance(t, (SequenceType, OptionalType)):
                        t = TensorType(check_shape(t.shape, f"output {k} ('{name}')"), np.dtype(t.dtype))
                    types[name] = t
            if len(outs) < sum(1 for o in node.outputs if o):
                raise ShapeError(f"has {len(node.outputs)} outputs, at most {len(outs)} are defined")
            present = [c for i, c in zip(node.inputs, cin) if i]
            foldable = all(c is not None for c in present) and (present or not op.eager) and not op.nondeterministic
            if op.shape_only or foldable:
                args = [(_dummy(t) if op.shape_only and isinstance(t, TensorType) else c) if t is not None else None
                        for t, c in zip(ins, cin)]
                values = op.ref(*args)
                for name, val in zip(node.outputs, values):
                    if name:
                        if isinstance(types[name], TensorType):
                            val = contiguous(val)
                        if not _matches(val, types[name]):
                            raise EdgeDLError(f"internal: folded value of '{name}' is {_describe(val)}, shape rule "
                                              f"said {_describe_type(types[name])}")
                        consts[name] = val
                folded += 1
                continue
        except DataDependentShape:
            return _cut(graph, ops, input_types, input_values, index, True, consts, cut)
        except ConstantRequired as e:
            if cut is not None and cut(e.tensor):
                return _cut(graph, ops, input_types, input_values, index, False, consts, cut)
            raise _context(node, e) from e
        except Exception as e:  # noqa: BLE001 - every failure gets the node's name attached
            raise _context(node, e) from e
        live.append(node)

    for spec in graph.outputs:
        t = types[spec.name]
        if not isinstance(t, TensorType):
            continue
        if spec.dtype is not None and spec.shape is not None and t.dtype != spec.dtype:
            raise ShapeError(f"graph output '{spec.name}' is declared {spec.dtype} but computes {t.dtype}")
        # NOTE: a declared output shape that disagrees with the computed one is not an error: exporters write
        # stale shapes, and onnxruntime merges them leniently (the computed shape wins)

    # Dead-node elimination: keep what the graph outputs need.
    needed = {s.name for s in graph.outputs}
    kept: list[Node] = []
    for node in reversed(live):
        if any(o in needed for o in node.outputs if o):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    kept.reverse()

    output_names = [s.name for s in graph.outputs]
    graph_out = set(output_names)
    graph_in = set(input_types)

    slot_of: dict[str, int] = {}
    template: list = []

    def slot(name: str) -> int:
        if name not in slot_of:
            slot_of[name] = len(template)
            template.append(consts.get(name))
        return slot_of[name]

    steps: list[Step] = []
    base_of: dict[str, str] = {}  # alias tensor -> arena tensor whose memory it views
    for node in kept:
        op = ops[node.name]
        ins_t = [types[i] if i else None for i in node.inputs]
        cin = [consts.get(i) if i else None for i in node.inputs]
        outs_t = [types[o] for o in node.outputs if o]
        # strings (object arrays) never live in the arena: their producers run eagerly
        eager = op.eager or any(not isinstance(types[o], TensorType) or types[o].dtype == object
                                for o in node.outputs if o)
        try:
            src = node.inputs[0] if node.inputs else ""
            if eager:
                kernel = Kernel(_no_kernel, impl="eager")
                view = None
            elif op.alias and node.outputs[0] not in graph_out and src not in consts:
                kernel = Kernel(lambda i, o, s: None, impl="view")
                view = types[node.outputs[0]].shape
                if src not in graph_in and src not in graph_out:
                    base_of[node.outputs[0]] = base_of.get(src, src)
            else:
                kernel = op.build(ins_t, outs_t, cin)
                view = None
        except Exception as e:  # noqa: BLE001
            raise _context(node, e) from e
        ins = tuple(slot(i) if i else -1 for i in node.inputs)
        outs = tuple(slot(o) for o in node.outputs if o)
        steps.append(Step(node, op, kernel, ins, outs, None, view, eager=eager))

    for name in output_names:
        slot(name)

    # Liveness of arena tensors (intermediates that are not graph outputs, inputs or constants).
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for s_idx, step in enumerate(steps):
        node = step.node
        for i in node.inputs:
            if i:
                b = base_of.get(i, i)
                if b in first:
                    last[b] = max(last[b], s_idx)
        if step.eager:
            continue  # eager outputs are allocated when they are computed
        if step.view_shape is not None:
            # a view owns no memory: of an arena tensor it extends that tensor's life (base_of); of a graph input
            # or output, or of an eager value, it is made at run time (consumers then cannot be pre-bound)
            continue
        for o in node.outputs:
            if o and o not in graph_out and o not in base_of and o not in consts:
                first[o] = s_idx
                last[o] = s_idx
    buffers = [Buffer(name, types[name].nbytes, first[name], last[name]) for name in first]
    buffers += [Buffer(("scratch", s_idx), step.kernel.scratch_bytes, s_idx, s_idx)
                for s_idx, step in enumerate(steps) if step.kernel.scratch_bytes > 0]
    arena_bytes = plan_arena(buffers)
    arena = aligned_empty(max(arena_bytes, 1), np.uint8)
    for buf in buffers:
        raw = arena[buf.offset:buf.offset + buf.nbytes]
        if isinstance(buf.key, tuple):
            steps[buf.key[1]].scratch = raw
        else:
            t = types[buf.key]
            template[slot_of[buf.key]] = raw.view(t.dtype).reshape(t.shape)

    fresh = []
    outputs = []
    produced_fresh = set()
    for step in steps:
        for o in step.node.outputs:
            if o in graph_out and step.eager:
                produced_fresh.add(o)  # computed into a new value every run (see Plan._run_eager)
                continue
            if o in graph_out and step.view_shape is None and o not in produced_fresh:
                if types[o].nbytes <= OWNED_OUTPUT_MAX_BYTES and template[slot_of[o]] is None:
                    # a small output lives in a buffer of the plan (its producer binds) and is copied out
                    template[slot_of[o]] = np.empty(types[o].shape, types[o].dtype)
                    continue
                produced_fresh.add(o)
                fresh.append((slot_of[o], types[o].shape, types[o].dtype))
    for name in output_names:
        outputs.append((name, slot_of[name], name not in produced_fresh))

    # Small inputs are staged: copied into a buffer of the plan on every run (a memcpy), so the steps
    # that read them are pre-bound like the rest instead of paying the per-call Python path.
    input_slots = []
    for name in input_types:
        if name in slot_of:
            t = types[name]
            staged = isinstance(t, TensorType) and t.nbytes <= STAGE_MAX_BYTES
            if staged:
                template[slot_of[name]] = np.empty(t.shape, t.dtype)
            input_slots.append((name, slot_of[name], staged))

    return Plan(
        input_types=dict(input_types), types=types, steps=steps, slot_of=slot_of, template=template,
        input_slots=input_slots, fresh_outputs=fresh,
        outputs=outputs, arena=arena, arena_bytes=arena_bytes, arena_lower_bound=lower_bound(buffers),
        folded=folded,
    )


def _no_kernel(inputs, outputs, scratch):
    raise EdgeDLError("internal: an eager step has no kernel")


def _cut(graph: Graph, ops: dict[str, Op], input_types: dict[str, TensorType], input_values: dict, index: int,
         eager: bool, consts: dict, cut) -> Plan:
    """The plan of the nodes before ``graph.nodes[index]``, with a Tail for that node and the rest."""
    nodes = graph.nodes
    node = nodes[index]
    rest = nodes[index + 1:] if eager else nodes[index:]
    made_later = {o for n in rest for o in n.outputs if o}
    cut_outputs = [o for o in node.outputs if o] if eager else []
    wanted: list[str] = []
    for n in ([node] if eager else []) + rest:
        wanted += [i for i in n.inputs if i]
    wanted += [s.name for s in graph.outputs]
    initializers: dict[str, object] = {}
    boundary: list[str] = []
    for name in dict.fromkeys(wanted):
        if name in made_later or name in cut_outputs:
            continue
        if name in consts:
            initializers[name] = consts[name]
        else:
            boundary.append(name)
    from_inputs = [b for b in boundary if b in input_types]
    prefix = Graph(nodes[:index], list(graph.inputs),
                   [TensorSpec(b, None, None) for b in boundary if b not in input_types],
                   dict(graph.initializers), graph.opset, graph.name, dict(graph.metadata), dict(graph.domains))
    plan = build_plan(prefix, ops, {**input_types, **{n: TensorType(v.shape, v.dtype) for n, v in
                                                        input_values.items()}}, input_values, cut)
    # values that are not tensors (a folded sequence or optional) enter the remainder as inputs
    others = {n: v for n, v in initializers.items() if not isinstance(v, np.ndarray)}
    names_in = [b for b in boundary if b not in cut_outputs] + list(others) + cut_outputs
    remainder = Graph(rest, [TensorSpec(n, None, None) for n in names_in], list(graph.outputs),
                      {n: v for n, v in initializers.items() if isinstance(v, np.ndarray)}, graph.opset,
                      graph.name, dict(graph.metadata), dict(graph.domains))
    known = {i: consts[i] for i in node.inputs if i and i in consts} if eager else {}
    plan.tail = Tail(node, ops[node.name], eager, remainder, from_inputs, {**known, **others})
    return plan
