"""What one training configuration runs: the frozen prefix as an inference model, then a tape per batch shape.

:class:`TrainingRunner` is built from the training graph(s) and the tensors to train. The frozen prefix
(:func:`~edgedl.train.split.split_frozen`) is loaded as an ordinary :class:`edgedl.Model`: fused float kernels,
or, for a quantized model, its QDQ export lowered to int8 kernels. The rest runs on a
:class:`~edgedl.train.tape.Tape`, one per batch shape and mode (training, or evaluation when the training
graph differs: BatchNormalization with batch statistics, Dropout).
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import Graph, TensorType
from .split import Split, split_frozen
from .tape import Saved, Tape

__all__ = ["TrainingRunner"]


class TrainingRunner:
    """Forward (and the tape for the backward) of ``train_graph`` / ``eval_graph`` with ``params`` trained and
    ``buffers`` fed at run time; ``output``: the output the loss reads. ``quantized``: the graphs are in
    fake-quantized form (:mod:`edgedl.train.qat`), so the frozen prefix runs as int8. ``frozen_prefix=False``
    runs the frozen part on the tape too: slower, but its activations are freed as they go rather than held in
    an inference arena (what a tight memory budget wants)."""

    def __init__(self, train_graph: Graph, eval_graph: Graph, params: list[str], buffers: list[str], output: str,
                 *, quantized: bool = False, num_threads: int | None = None, frozen_prefix: bool = True):
        self.params, self.buffers, self.output = list(params), list(buffers), output
        self.quantized, self.num_threads = quantized, num_threads
        self.train_graph = train_graph
        self.train_split = split_frozen(train_graph, self.params, self.buffers, frozen_prefix)
        self.eval_split = self.train_split if eval_graph is train_graph else split_frozen(
            eval_graph, self.params, self.buffers, frozen_prefix)
        if self.output not in {s.name for s in self.train_split.suffix.outputs}:
            raise EdgeDLError(f"output {output!r} does not depend on any trained tensor")
        self._prefix = {}
        self._tapes: dict[tuple, Tape] = {}

    def initial_values(self) -> dict[str, np.ndarray]:
        """Copies of the parameters' and buffers' values in the training graph."""
        return {n: np.array(self.train_graph.initializers[n], copy=True) for n in self.params + self.buffers}

    # -- the frozen prefix --------------------------------------------------------------------------------
    def _prefix_model(self, split: Split):
        from ..model import Model
        from ..passes import optimize
        from ..quant.quantize_model import copy_graph

        key = id(split)
        if key not in self._prefix:
            graph = split.prefix
            if graph is not None and self.quantized:
                from .qat import QatGraph

                graph = QatGraph(graph).export()
            self._prefix[key] = None if graph is None else Model(optimize(copy_graph(graph)), source=graph,
                                                                 num_threads=self.num_threads)
        return self._prefix[key]

    def frontier(self, feeds: dict[str, np.ndarray], train: bool) -> dict[str, np.ndarray]:
        """The frontier tensors for a batch: graph inputs passed through, the rest computed by the prefix."""
        split = self.train_split if train else self.eval_split
        prefix = self._prefix_model(split)
        out = {t: feeds[t] for t in split.frontier if t in feeds}
        if prefix is not None:
            out.update(prefix.run({s.name: feeds[s.name] for s in prefix.graph.inputs}))
        return out

    def prefix_bytes(self, shapes: dict[str, tuple], train: bool = True) -> int:
        """The arena of the prefix's inference plan for these input shapes (0 without a prefix)."""
        split = self.train_split if train else self.eval_split
        prefix = self._prefix_model(split)
        if prefix is None:
            return 0
        return int(prefix.plan({s.name: shapes[s.name] for s in prefix.graph.inputs}).arena_bytes)

    # -- the tape -------------------------------------------------------------------------------------------
    def tape(self, front: dict[str, np.ndarray], train: bool) -> Tape:
        key = (train, tuple((k, v.shape, v.dtype.str) for k, v in sorted(front.items())))
        tape = self._tapes.get(key)
        if tape is None:
            split = self.train_split if train else self.eval_split
            types = {t: TensorType(tuple(front[t].shape), front[t].dtype) for t in split.frontier}
            buffers = [b for b in self.buffers if b in split.suffix.initializers]  # (no dropout seeds in evaluation)
            tape = Tape(split.suffix, self.params, types, self.output, buffers)
            self._tapes[key] = tape
        return tape

    def forward(self, feeds: dict[str, np.ndarray], values: dict[str, np.ndarray], train: bool,
                keep: bool) -> tuple[dict[str, np.ndarray], Saved, Tape]:
        """(suffix outputs, what the backward needs, the tape) for one batch; ``values``: parameters and
        buffers."""
        front = self.frontier(feeds, train)
        tape = self.tape(front, train)
        outs, saved = tape.forward(front, values, keep=keep)
        return outs, saved, tape
