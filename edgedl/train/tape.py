"""The training tape: forward over a float32 graph keeping what the backward needs, then reverse-mode
gradients through each op's ``backward`` (see :mod:`edgedl.registry`).

A :class:`Tape` is built for one binding of input shapes (a batch size) and a set of trainable
initializers (the parameters). At build time it

* runs every op's shape rule, folds nodes whose inputs are all constant, and prepares one kernel per node:
  frozen initializers are constants, so their kernels pack them once, exactly as inference does;
  parameters are run-time inputs (packed on every call);
* marks the nodes a gradient flows through: those downstream of a parameter and upstream of the loss
  output. Nothing upstream of the first parameter runs backward, and only the forward values those nodes
  declare (``grad_inputs`` / ``grad_outputs``) are kept; everything else is freed after its last use.

``forward`` returns the graph outputs and a :class:`Saved` record; ``backward`` takes the gradient of the
loss with respect to one output and returns the gradient of every parameter. ``peak_bytes`` is the largest
total of live arrays (activations, saved values, gradients) the last step held: what training costs in
memory beyond the parameters and the optimizer state; ``saved_bytes`` the activations kept for the backward.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgeDLError
from ..ir import Graph, Node, TensorType
from ..registry import Kernel, Op, lookup


@dataclass
class _Step:
    node: Node
    op: Op
    kernel: Kernel | None
    #: whether a gradient flows through this node (downstream of a parameter, upstream of the loss)
    grad: bool = False
    #: whether each input needs a gradient
    needs: list[bool] = field(default_factory=list)
    #: forward values kept for backward: input indices and output indices
    keep_in: tuple[int, ...] = ()
    keep_out: tuple[int, ...] = ()


@dataclass
class Saved:
    """What one forward pass kept for the backward: values by tensor name."""

    values: dict[str, np.ndarray]


class _Memory:
    """Live-bytes accounting of one step: each array counts as the buffer it views, once, for as long as some
    array added on it has not been dropped. Subclasses say what a buffer is (``_key``) and its size."""

    def __init__(self):
        self.live: dict[int, list[int]] = {}  # key of the root buffer -> [bytes, arrays on it]
        self.total = 0
        self.peak = 0

    @staticmethod
    def _root(a: np.ndarray) -> np.ndarray:
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a

    def _key_and_size(self, a) -> tuple[int, int] | None:
        """(the buffer's key, its bytes), or None for a value not counted."""
        r = self._root(a)
        return id(r), r.nbytes

    def add(self, a) -> None:
        found = None if a is None else self._key_and_size(a)
        if found is None:
            return
        key, nbytes = found
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [nbytes, 1]
            self.total += nbytes
            self.peak = max(self.peak, self.total)
        else:
            entry[1] += 1

    def drop(self, a) -> None:
        found = None if a is None else self._key_and_size(a)
        if found is None:
            return
        entry = self.live.get(found[0])
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[found[0]]
            self.total -= entry[0]


class Tape:
    """Forward and backward of ``graph`` for fixed input shapes; ``params`` are the trainable initializers.

    ``loss_output``: the graph output the loss reads (default: the first). ``buffers``: initializers fed at
    run time, like the parameters, but taking no gradient (running statistics of a training-mode
    BatchNormalization)."""

    def __init__(self, graph: Graph, params: list[str], input_types: dict[str, TensorType],
                 loss_output: str | None = None, buffers: list[str] = ()):
        self.graph = graph
        self.params = list(params)
        self.buffers = list(buffers)
        missing = [p for p in self.params + self.buffers if p not in graph.initializers]
        if missing:
            raise EdgeDLError(f"trainable tensors {missing} are not initializers of the graph")
        self.loss_output = loss_output or graph.outputs[0].name
        if self.loss_output not in {s.name for s in graph.outputs}:
            raise EdgeDLError(f"{self.loss_output!r} is not an output of the graph")
        self.input_types = dict(input_types)
        param_set = set(self.params)
        runtime = param_set | set(self.buffers)
        types: dict[str, TensorType] = dict(self.input_types)
        consts: dict[str, np.ndarray] = {}
        for name, value in graph.initializers.items():
            types[name] = TensorType(tuple(value.shape), value.dtype)
            if name not in runtime:
                consts[name] = value
        self.steps: list[_Step] = []
        for node in graph.nodes:
            cls = lookup(node.op_type, node.domain)
            if cls is None:
                raise EdgeDLError(f"{node.describe()}: operator {node.op_type} is not supported")
            op = cls(node, graph.opset)
            ins_t = [types[i] if i else None for i in node.inputs]
            cvals = [consts.get(i) if i else None for i in node.inputs]
            try:
                outs_t = op.infer(ins_t, cvals)
            except EdgeDLError:
                raise
            except Exception as e:  # noqa: BLE001 - a shape rule's failure names the node
                raise EdgeDLError(f"{node.describe()}: {type(e).__name__}: {e}") from e
            op.in_types, op.out_types = ins_t, outs_t
            for o, t in zip(node.outputs, outs_t):
                if o:
                    types[o] = t
            known = all(c is not None for i, c in zip(node.inputs, cvals) if i)
            if (known and not op.nondeterministic) or op.shape_only:
                vals = op.ref(*[cvals[k] if cvals[k] is not None else _dummy(ins_t[k]) if ins_t[k] else None
                                for k in range(len(node.inputs))])
                for o, v in zip(node.outputs, vals):
                    if o:
                        consts[o] = np.asarray(v)
                continue
            kernel = None if op.alias else op.build(ins_t, outs_t, cvals)
            self.steps.append(_Step(node, op, kernel))
        self.types = types
        self.consts = consts
        self._mark(param_set)
        self._last_use = self._last_uses()

    def _mark(self, param_set: set[str]) -> None:
        """Which steps a gradient flows through, which inputs need one, and what each keeps."""
        requires = set(param_set)
        for s in self.steps:
            s.needs = [bool(i) and i in requires and np.dtype(self.types[i].dtype).kind == "f"
                       for i in s.node.inputs]
            if any(s.needs):
                requires.update(o for o in s.node.outputs if o)
        useful = {self.loss_output}
        for s in reversed(self.steps):
            s.grad = any(s.needs) and any(o in useful for o in s.node.outputs if o)
            if s.grad:
                useful.update(i for i, need in zip(s.node.inputs, s.needs) if need)
                if not s.op.has_backward():
                    raise EdgeDLError(f"{s.node.describe()}: operator {s.node.op_type} has no backward yet: "
                                      f"training cannot go through it (freeze what comes before it)")
                gi = s.op.grad_inputs
                s.keep_in = tuple(range(len(s.node.inputs))) if gi is None else tuple(gi)
                s.keep_out = tuple(s.op.grad_outputs)
        unreached = [p for p in param_set if p not in useful]
        if unreached:
            raise EdgeDLError(f"trainable tensors {sorted(unreached)} do not reach output {self.loss_output!r}")
        self.saved_names = set()
        #: step index -> the saved values no earlier step's backward reads (freed once that step's backward ran)
        self._free_after: dict[int, list[str]] = {}
        first_reader: dict[str, int] = {}
        for idx, s in enumerate(self.steps):
            if s.grad:
                names = [s.node.inputs[k] for k in s.keep_in if k < len(s.node.inputs) and s.node.inputs[k]]
                names += [s.node.outputs[k] for k in s.keep_out if s.node.outputs[k]]
                self.saved_names.update(names)
                for n in names:
                    first_reader.setdefault(n, idx)
        for n, idx in first_reader.items():
            self._free_after.setdefault(idx, []).append(n)

    # -- running ---------------------------------------------------------------------------------------
    def forward(self, feeds: dict[str, np.ndarray], params: dict[str, np.ndarray],
                keep: bool = True) -> tuple[dict[str, np.ndarray], Saved]:
        """Graph outputs and the values the backward needs (``keep=False``: inference only). ``params`` holds
        the parameters and the buffers."""
        values: dict[str, np.ndarray] = dict(self.consts)
        mem = _Memory()
        for name, t in self.input_types.items():
            x = feeds[name]
            if tuple(x.shape) != tuple(t.shape) or x.dtype != t.dtype:
                raise EdgeDLError(f"input {name!r} must be {np.dtype(t.dtype).name}{tuple(t.shape)}, got "
                                  f"{x.dtype}{tuple(x.shape)}")
            values[name] = x
        values.update(params)
        last_use = self._last_use
        outputs = {s.name for s in self.graph.outputs}
        for idx, s in enumerate(self.steps):
            ins = [values[i] if i else None for i in s.node.inputs]
            if s.op.alias:
                outs = [np.asarray(ins[0]).reshape(s.op.out_types[0].shape)]
            else:
                outs = [np.empty(t.shape, t.dtype) for t in s.op.out_types]
                scratch = np.empty(s.kernel.scratch_bytes, np.uint8)
                s.kernel.fn(ins, outs, scratch)
            for o, v in zip(s.node.outputs, outs):
                if o:
                    values[o] = v
                    mem.add(v)
            for i in set(s.node.inputs):
                if i and last_use.get(i) == idx and i not in outputs and not (keep and i in self.saved_names) \
                        and i not in self.consts and i not in params and i not in self.input_types:
                    mem.drop(values.pop(i))
        self.forward_peak = mem.peak
        self._mem = mem
        result = {s.name: values[s.name] for s in self.graph.outputs}
        saved = {k: values[k] for k in self.saved_names if k in values} if keep else {}
        # what the backward keeps alive (parameters and constants excluded: they live anyway)
        self.saved_bytes = sum(v.nbytes for k, v in saved.items() if k not in params and k not in self.consts)
        return result, Saved(saved)

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for idx, s in enumerate(self.steps):
            for i in s.node.inputs:
                if i:
                    last[i] = idx
        return last

    def backward(self, saved: Saved, grad_output, via=None, mem: _Memory | None = None) -> dict:
        """The gradient of every parameter, from the gradient of the loss with respect to ``loss_output``.
        Consumes ``saved``: each value is released once no remaining backward step reads it.

        ``via`` says where the gradients live (default: host arrays, ``Op.backward``): an object with
        ``gradient(array)`` (the loss gradient as a gradient value), ``input_gradients(index, step, output
        gradients, inputs, outputs)`` (one op's backward) and ``add(a, b)`` (a new a + b);
        :class:`~edgedl.train.cuda_tape.CudaTape` runs the same walk on the device. ``mem`` counts the live
        bytes (default: this tape's forward's)."""
        via = via or _HOST
        t = self.types[self.loss_output]
        if tuple(grad_output.shape) != tuple(t.shape):
            raise EdgeDLError(f"the loss gradient has shape {tuple(grad_output.shape)}, output {self.loss_output!r} "
                              f"{tuple(t.shape)}")
        mem = mem if mem is not None else getattr(self, "_mem", _Memory())
        grads: dict = {self.loss_output: via.gradient(grad_output)}
        mem.add(grads[self.loss_output])
        values = saved.values
        produced = {o for s in self.steps for o in s.node.outputs if o}
        for idx in range(len(self.steps) - 1, -1, -1):
            s = self.steps[idx]
            if s.grad:
                self._backward_step(idx, s, grads, values, mem, via)
            for name in self._free_after.get(idx, ()):  # no earlier step's backward reads these
                v = values.pop(name, None)
                if name in produced:
                    mem.drop(v)
        self.peak_bytes = mem.peak
        return {p: grads[p] for p in self.params}

    def _backward_step(self, idx: int, s: _Step, grads: dict, values: dict, mem: _Memory, via) -> None:
        """One op's backward: its output gradients in, its inputs' gradients accumulated into ``grads``."""
        gouts = [grads.pop(o, None) if o else None for o in s.node.outputs]
        if all(g is None for g in gouts):
            return
        ins = [values.get(s.node.inputs[k]) if (k in s.keep_in and s.node.inputs[k]) else None
               for k in range(len(s.node.inputs))]
        outs = [values.get(s.node.outputs[k]) if k in s.keep_out else None for k in range(len(s.node.outputs))]
        gins = via.input_gradients(idx, s, gouts, ins, outs)
        for g in gouts:
            mem.drop(g)
        for name, need, g in zip(s.node.inputs, s.needs, gins):
            if not need:
                continue
            if g is None:
                raise EdgeDLError(f"{s.node.describe()}: backward gave no gradient for input {name!r}")
            want = tuple(self.types[name].shape)
            if tuple(g.shape) != want:
                raise EdgeDLError(f"{s.node.describe()}: gradient of {name!r} has shape {tuple(g.shape)}, "
                                  f"expected {want}")
            if name in grads:
                prev = grads[name]
                grads[name] = via.add(prev, g)
                mem.drop(prev)
            else:
                grads[name] = g
            mem.add(grads[name])


class _HostGradients:
    """Gradients as host arrays, each op's ``backward``: the tape's default (see :meth:`Tape.backward`)."""

    @staticmethod
    def gradient(g) -> np.ndarray:
        return np.ascontiguousarray(g, np.float32)

    @staticmethod
    def input_gradients(idx, s: _Step, gouts, ins, outs) -> list:
        return s.op.backward(gouts, ins, outs, s.needs)

    @staticmethod
    def add(a, b):
        return a + b


_HOST = _HostGradients()


def _dummy(t: TensorType | None):
    return None if t is None else np.broadcast_to(np.zeros((), t.dtype), t.shape)
