"""Control flow: If, Loop and Scan, whose bodies are subgraphs.

A subgraph reads tensors of the graphs around it by name; the importer lists those outer tensors as the last
inputs of the node that owns the subgraph (``Graph.outer`` holds the subgraph's names for them), so the
planner sees every dependency and keeps every such tensor alive. Each subgraph runs through a
:class:`~edgedl.runtime.runner.GraphRunner`, which builds one plan per binding of the subgraph's input types and
reuses it: a Loop body is planned once, not once per iteration.

These ops are *eager* (see :mod:`edgedl.runtime.plan`): their output types are worked out when the plan is
built (by planning the subgraphs), and the outputs are computed at run time. When the types cannot be known
before the data is (an If whose branches give different shapes, a Loop's scan outputs or a loop-carried value
that changes shape) the shape rule raises DataDependentShape and the planner runs the node at run time and plans
what follows once its outputs exist.

Hostile models stay bounded: a Loop runs at most ``MAX_LOOP_ITERATIONS`` iterations (environment variable
``EDGEDL_MAX_LOOP_ITERATIONS``) and its scan outputs at most MAX_TENSOR_ELEMENTS elements; subgraph nesting is
bounded by the importer.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import ConstantRequired, DataDependentShape, EdgeDLError, ShapeError
from ..ir import MAX_TENSOR_ELEMENTS, Graph, TensorType, contiguous, subgraph_outer_names
from ..registry import Op, register

#: the most iterations one Loop node may run (a while-loop whose condition never turns false stops here)
MAX_LOOP_ITERATIONS = int(os.environ.get("EDGEDL_MAX_LOOP_ITERATIONS", 1 << 20))


class SubgraphOp(Op):
    """Shared by ops that own subgraphs: the outer tensors each reads, and a runner per subgraph."""

    eager = True
    num_inputs = (0, 1 << 30)
    #: attribute names of the subgraphs
    graph_attrs: tuple[str, ...] = ()

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.graphs: dict[str, Graph] = {}
        for key in self.graph_attrs:
            g = self.attr(key)
            if not isinstance(g, Graph):
                raise self.error(f"attribute '{key}' must be a graph")
            self.graphs[key] = g
        self.outer_names = subgraph_outer_names(node.attrs)
        if len(node.inputs) < len(self.outer_names):
            raise self.error("lists fewer inputs than its subgraphs read from outside")
        self.n_formal = len(node.inputs) - len(self.outer_names)
        self._runners = {}

    def runner(self, key: str):
        from ..runtime.runner import GraphRunner

        r = self._runners.get(key)
        if r is None:
            r = self._runners[key] = GraphRunner(self.graphs[key])
        return r

    def split(self, args: list) -> tuple[list, dict]:
        """This node's inputs (types, constants or values) as (formal inputs, outer name -> the rest)."""
        return list(args[:self.n_formal]), dict(zip(self.outer_names, args[self.n_formal:]))

    def feeds(self, key: str, formal: list, outer: dict) -> dict:
        g = self.graphs[key]
        n_formal = len(g.inputs) - len(g.outer)
        if len(formal) != n_formal:
            raise self.error(f"subgraph '{key}' takes {n_formal} inputs, the node gives it {len(formal)}")
        feeds = {s.name: v for s, v in zip(g.inputs[:n_formal], formal)}
        feeds.update({n: outer[n] for n in g.outer})
        return feeds

    def subgraph_types(self, key: str, formal_types: list, outer_types: dict, outer_consts: dict) -> list:
        """Output types of subgraph ``key`` for these input types (planning it, once per binding).

        ConstantRequired for an outer tensor reaches the enclosing planner under the outer name; a subgraph whose
        own shapes depend on data makes this node data-dependent."""
        g = self.graphs[key]
        n_formal = len(g.inputs) - len(g.outer)
        types = {s.name: t for s, t in zip(g.inputs[:n_formal], formal_types)}
        types.update({n: outer_types[n] for n in g.outer})
        values = {n: v for n, v in outer_consts.items() if n in g.outer and v is not None}
        runner = self.runner(key)
        try:
            plan = runner.resolve(types, values)
        except ConstantRequired as e:
            name = e.tensor
            wanted = runner.value_inputs - set(values)
            if name in self.outer_names or wanted & set(self.outer_names):
                outer_name = name if name in self.outer_names else sorted(wanted & set(self.outer_names))[0]
                idx = self.n_formal + self.outer_names.index(outer_name)
                raise ConstantRequired(f"{self.node.describe()}: {e}", self.node.inputs[idx]) from e
            raise DataDependentShape(f"{self.node.describe()}: subgraph '{key}' needs values known only at run "
                                     "time") from e
        if plan.tail is not None:
            raise DataDependentShape(f"{self.node.describe()}: subgraph '{key}' has data-dependent shapes")
        return [plan.types[s.name] for s in g.outputs]

    def run_subgraph(self, key: str, formal: list, outer: dict) -> list:
        g = self.graphs[key]
        result = self.runner(key).run(self.feeds(key, formal, outer))
        return [result[s.name] for s in g.outputs]


# --- If ---------------------------------------------------------------------------------------------------
@register
class If(SubgraphOp):
    """``outputs = then_branch() if cond else else_branch()``; both branches read outer tensors."""

    op_type = "If"
    graph_attrs = ("then_branch", "else_branch")

    def infer(self, ins, consts):
        formal, outer_t = self.split(ins)
        _, outer_c = self.split(consts)
        if self.n_formal != 1 or formal[0] is None:
            raise self.error("takes one input, cond")
        cond = formal[0]
        if not isinstance(cond, TensorType) or cond.size != 1:
            raise self.error(f"cond must hold one element, got {cond}")
        if consts[0] is not None:
            key = "then_branch" if bool(np.asarray(consts[0]).reshape(-1)[0]) else "else_branch"
            return self.subgraph_types(key, [], outer_t, outer_c)
        # Both branches planned for these inputs and giving the same types: one eager step, either branch.
        # Otherwise (a branch that cannot run on these shapes, as onnxruntime never plans the branch not taken,
        # or different types) the condition's value is needed: the runner specializes on the graph inputs it
        # comes from when they are small (a sample rate), else it cuts the plan here.
        try:
            then_t = self.subgraph_types("then_branch", [], outer_t, outer_c)
            else_t = self.subgraph_types("else_branch", [], outer_t, outer_c)
            same = then_t == else_t
        except ConstantRequired:
            raise
        except EdgeDLError:
            same = False
        if not same:
            raise ConstantRequired(f"{self.node.describe()}: which branch runs decides the output types; the "
                                   "condition must be known", self.node.inputs[0])
        return then_t

    def ref(self, cond, *rest):
        _, outer = self.split([cond, *rest])
        key = "then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch"
        return self.run_subgraph(key, [], outer)


# --- Loop -------------------------------------------------------------------------------------------------
@register
class Loop(SubgraphOp):
    """``for i in range(M) while cond``: the body maps (i, cond, v...) to (cond, v..., scan outputs...); the
    loop-carried values v come out last-iteration, the scan outputs stacked along a new first axis."""

    op_type = "Loop"
    graph_attrs = ("body",)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if self.n_formal < 2:
            raise self.error("takes at least two inputs (M and cond, either may be empty)")
        body = self.graphs["body"]
        self.n_carried = self.n_formal - 2
        n_body_in = len(body.inputs) - len(body.outer)
        if n_body_in != self.n_carried + 2:
            raise self.error(f"body takes {n_body_in} inputs, expected {self.n_carried + 2} (iteration number, "
                             f"condition and {self.n_carried} loop-carried values)")
        self.n_scan = len(body.outputs) - 1 - self.n_carried
        if self.n_scan < 0:
            raise self.error(f"body has {len(body.outputs)} outputs, fewer than 1 + {self.n_carried}")

    def infer(self, ins, consts):
        formal, outer_t = self.split(ins)
        _, outer_c = self.split(consts)
        for k, what in ((0, "M"), (1, "cond")):
            t = formal[k]
            if t is not None and (not isinstance(t, TensorType) or t.size != 1):
                raise self.error(f"{what} must hold one element, got {t}")
        carried = formal[2:]
        if any(t is None for t in carried):
            raise self.error("a loop-carried input is empty")
        if self.n_scan:
            raise DataDependentShape(f"{self.node.describe()}: scan outputs have a length known at run time")
        body_in = [TensorType((), np.dtype(np.int64)), TensorType((), np.dtype(np.bool_))] + list(carried)
        out = self.subgraph_types("body", body_in, outer_t, outer_c)
        if list(out[1:1 + self.n_carried]) != list(carried):
            raise DataDependentShape(f"{self.node.describe()}: loop-carried values change type between "
                                     "iterations")
        return list(carried)

    def ref(self, m, cond, *rest):
        formal, outer = self.split([m, cond, *rest])
        carried = formal[2:]
        trips = None if m is None else int(np.asarray(m).reshape(-1)[0])
        keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
        scans: list[list] = [[] for _ in range(self.n_scan)]
        scan_elems = 0
        i = 0
        while keep_going and (trips is None or i < trips):
            if i >= MAX_LOOP_ITERATIONS:
                raise EdgeDLError(f"{self.node.describe()}: ran {i} iterations without stopping; the limit is "
                                  f"{MAX_LOOP_ITERATIONS} (environment variable EDGEDL_MAX_LOOP_ITERATIONS)")
            outs = self.run_subgraph("body", [np.array(i, np.int64), np.array(keep_going)] + carried, outer)
            keep_going = bool(np.asarray(outs[0]).reshape(-1)[0])
            carried = list(outs[1:1 + self.n_carried])
            for k, v in enumerate(outs[1 + self.n_carried:]):
                scans[k].append(v)
                scan_elems += _size(v)
            if scan_elems > MAX_TENSOR_ELEMENTS:
                raise EdgeDLError(f"{self.node.describe()}: its scan outputs grew past {MAX_TENSOR_ELEMENTS} "
                                  "elements")
            i += 1
        return carried + [self._stack(k, s) for k, s in enumerate(scans)]

    def _stack(self, k: int, values: list):
        if values and isinstance(values[0], list):  # a sequence scan output (opset 13+) is not stacked
            return values
        if not values:
            # no iteration ran: the element type comes from the body's declared output, else float32
            spec = self.graphs["body"].outputs[1 + self.n_carried + k]
            dtype = spec.dtype or np.float32
            shape = tuple(d if isinstance(d, int) else 0 for d in (spec.shape or ()))
            return np.zeros((0,) + shape, dtype)
        shapes = {v.shape for v in values}
        if len(shapes) != 1:
            raise ShapeError(f"{self.node.describe()}: scan output {k} changes shape between iterations "
                             f"({sorted(shapes)})")
        return np.stack(values)


def _size(v) -> int:
    if isinstance(v, np.ndarray):
        return v.size
    if isinstance(v, list):
        return sum(_size(x) for x in v)
    return 0


# --- Scan -------------------------------------------------------------------------------------------------
@register
class Scan(SubgraphOp):
    """Runs the body once per element along the scan axis of each scan input, carrying state values; the
    body's scan outputs are stacked along ``scan_output_axes``. Opset 8 has a batch axis (axis 0) and an
    optional ``sequence_lens`` first input; opset 9+ has neither, and axes and directions per input/output."""

    op_type = "Scan"
    graph_attrs = ("body",)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.n_scan_in = int(self.attr("num_scan_inputs", 0))
        body = self.graphs["body"]
        n_body_in = len(body.inputs) - len(body.outer)
        self.batched = opset < 9
        formal = self.n_formal - (1 if self.batched else 0)
        self.n_state = formal - self.n_scan_in
        if self.n_scan_in < 1 or self.n_state < 0:
            raise self.error(f"num_scan_inputs={self.n_scan_in} does not fit {formal} inputs")
        if n_body_in != formal:
            raise self.error(f"body takes {n_body_in} inputs, the node gives it {formal}")
        self.n_scan_out = len(body.outputs) - self.n_state
        if self.n_scan_out < 0:
            raise self.error(f"body has {len(body.outputs)} outputs, fewer than its {self.n_state} states")
        self.in_axes = list(self.attr("scan_input_axes", [0] * self.n_scan_in))
        self.in_dirs = list(self.attr("scan_input_directions", self.attr("directions", [0] * self.n_scan_in)))
        self.out_axes = list(self.attr("scan_output_axes", [0] * self.n_scan_out))
        self.out_dirs = list(self.attr("scan_output_directions", [0] * self.n_scan_out))
        for what, vals, n in (("scan_input_axes", self.in_axes, self.n_scan_in),
                              ("scan_input_directions", self.in_dirs, self.n_scan_in),
                              ("scan_output_axes", self.out_axes, self.n_scan_out),
                              ("scan_output_directions", self.out_dirs, self.n_scan_out)):
            if len(vals) != n:
                raise self.error(f"{what} has {len(vals)} entries, expected {n}")
        if self.batched and (any(a != 0 for a in self.in_axes) or any(a != 0 for a in self.out_axes)):
            raise self.error("opset 8 Scan has no scan axes")

    def _lens(self, formal: list) -> tuple:
        """(sequence_lens or None, the states and scan inputs): opset 8 has sequence_lens first."""
        return (formal[0], formal[1:]) if self.batched else (None, formal)

    def infer(self, ins, consts):
        formal, outer_t = self.split(ins)
        _, outer_c = self.split(consts)
        lens, formal = self._lens(formal)
        states, scans = formal[:self.n_state], formal[self.n_state:]
        if any(t is None or not isinstance(t, TensorType) for t in states + scans):
            raise self.error("every state and scan input must be a tensor")
        off = 1 if self.batched else 0
        axes = []
        for t, a in zip(scans, self.in_axes):
            rank = len(t.shape) - off
            if not -rank <= a < rank:
                raise self.error(f"scan axis {a} is out of range for a scan input of shape {t.shape}")
            axes.append(a % rank + off)
        lengths = {t.shape[a] for t, a in zip(scans, axes)}
        if len(lengths) != 1:
            raise self.error(f"scan inputs have different lengths along their scan axes: {sorted(lengths)}")
        n = lengths.pop()
        if self.batched:
            batches = {t.shape[0] for t in states + scans}
            if len(batches) != 1:
                raise self.error(f"opset 8 Scan: inputs have different batch sizes {sorted(batches)}")
            batch = batches.pop()
            states_b = [TensorType(t.shape[1:], t.dtype) for t in states]
        else:
            states_b = list(states)
        elems = [TensorType(t.shape[:a] + t.shape[a + 1:], t.dtype) for t, a in zip(scans, axes)]
        if self.batched:
            elems = [TensorType(e.shape[1:], e.dtype) for e in elems]
        out = self.subgraph_types("body", states_b + elems, outer_t, outer_c)
        if out[:self.n_state] != states_b:
            raise self.error(f"body changes the state types: {states_b} -> {out[:self.n_state]}")
        result = [TensorType(((batch,) if self.batched else ()) + t.shape, t.dtype) for t in out[:self.n_state]]
        for t, a in zip(out[self.n_state:], self.out_axes):
            rank = len(t.shape) + 1
            if not -rank <= a < rank:
                raise self.error(f"scan output axis {a} is out of range for rank {rank}")
            a %= rank
            shape = t.shape[:a] + (n,) + t.shape[a:]
            result.append(TensorType(((batch,) if self.batched else ()) + shape, t.dtype))
        return result

    def ref(self, *args):
        formal, outer = self.split(args)
        lens, formal = self._lens(formal)
        states, scans = formal[:self.n_state], formal[self.n_state:]
        if not self.batched:
            return self._scan_one(states, scans, outer, None)
        batch = (states + scans)[0].shape[0]
        results = [self._scan_one([s[b] for s in states], [x[b] for x in scans], outer,
                                  None if lens is None else int(lens[b])) for b in range(batch)]
        return [np.stack([r[k] for r in results]) for k in range(len(results[0]))]

    def _scan_one(self, states, scans, outer, length):
        axes = [a % x.ndim for a, x in zip(self.in_axes, scans)]
        n = scans[0].shape[axes[0]] if scans else 0
        if length is not None:
            if not 0 <= length <= n:
                raise EdgeDLError(f"{self.node.describe()}: sequence length {length} is outside [0, {n}]")
            n_run = length
        else:
            n_run = n
        outs_per_step: list[list] = [[] for _ in range(self.n_scan_out)]
        for i in range(n_run):
            elems = []
            for x, a, d in zip(scans, axes, self.in_dirs):
                j = n_run - 1 - i if d else i
                elems.append(contiguous(np.take(x, j, axis=a)))
            outs = self.run_subgraph("body", list(states) + elems, outer)
            states = outs[:self.n_state]
            for k, v in enumerate(outs[self.n_state:]):
                outs_per_step[k].append(v)
        result = [np.asarray(s) for s in states]
        body = self.graphs["body"]
        for k, (vals, a, d) in enumerate(zip(outs_per_step, self.out_axes, self.out_dirs)):
            if not vals:
                spec = body.outputs[self.n_state + k]
                raise EdgeDLError(f"{self.node.describe()}: no iteration ran, so scan output '{spec.name}' has "
                                  "no element shape")
            if d:
                vals = vals[::-1]
            stacked = np.stack(vals, axis=a % (vals[0].ndim + 1))
            if length is not None and length < n:  # opset 8: padded to the full length with zeros
                pad = [(0, 0)] * stacked.ndim
                pad[a % stacked.ndim] = (0, n - length)
                stacked = np.pad(stacked, pad)
            result.append(stacked)
        return result


__all__ = ["If", "Loop", "Scan", "SubgraphOp", "MAX_LOOP_ITERATIONS"]
