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

__all__ = ["TrainingRunner", "PREFIX_CHUNK"]

#: samples per run of the frozen prefix: its inference arena holds this many samples' activations, not the
#: batch's (a frozen prefix treats samples independently; checked by op type and by output shapes)
PREFIX_CHUNK = 4

#: ops that compute each sample from that sample alone (with the attribute checks in _per_sample)
_PER_SAMPLE = {"Conv", "ConvTranspose", "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid",
               "HardSwish", "Swish",
               "Elu", "Selu", "Softplus", "Erf", "Gelu", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt",
               "Max", "Min", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
               "LRN", "InstanceNormalization", "Concat", "Flatten", "Reshape", "Identity", "Dropout", "QuantizeLinear",
               "DequantizeLinear", "MatMul", "Gemm", "Pad", "Resize", "Upsample", "Softmax", "LogSoftmax",
               "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Shape", "Gather", "Cast", "Constant",
               "ConstantOfShape", "Neg", "Abs", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round",
               "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
               "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu"}


def _per_sample(graph: Graph) -> bool:
    """Whether every node of ``graph`` computes each sample (axis 0) from that sample alone (conservative)."""
    producers = graph.producers()
    for n in graph.nodes:
        a = n.attrs
        if n.op_type not in _PER_SAMPLE:
            return False
        if n.op_type in ("Concat", "Softmax", "LogSoftmax", "Split", "Flatten") and int(a.get("axis", 1)) == 0:
            return False
        if n.op_type == "Gemm" and a.get("transA", 0):
            return False
        if n.op_type == "Transpose" and list(a.get("perm", [1]))[:1] != [0]:
            return False
        if n.op_type in ("Squeeze", "Unsqueeze") and 0 in list(a.get("axes", [])):
            return False
        if n.op_type == "BatchNormalization" and (a.get("training_mode", 0) or len(n.outputs) > 1):
            return False
        if n.op_type == "Gather" and int(a.get("axis", 0)) == 0 and n.inputs[0] not in graph.initializers \
                and producers.get(n.inputs[0]) is not None and producers[n.inputs[0]].op_type != "Shape":
            return False  # picking samples (a Gather on a shape vector is fine)
        # axes / pads given as inputs (Slice, Pad, Squeeze, Unsqueeze): a use that mixes samples changes the
        # outputs' sample axis, which _run_in_chunks checks
    return True


class TrainingRunner:
    """Forward (and the tape for the backward) of ``train_graph`` / ``eval_graph`` with ``params`` trained and
    ``buffers`` fed at run time; ``output``: the output the loss reads. ``quantized``: the graphs are in
    fake-quantized form (:mod:`edgedl.train.qat`), so the frozen prefix runs as int8. ``frozen_prefix=False``
    runs the frozen part on the tape too: slower, but its activations are freed as they go rather than held in
    an inference arena (what a tight memory budget wants). ``device="cuda"`` runs everything on the GPU:
    the frozen prefix as a CUDA plan (:mod:`edgedl.runtime.cuda_plan`), the trained layers on a
    :class:`~edgedl.train.cuda_tape.CudaTape`, on one stream (:attr:`stream`); the frontier and the tape's values
    are device arrays."""

    def __init__(self, train_graph: Graph, eval_graph: Graph, params: list[str], buffers: list[str], output: str,
                 *, quantized: bool = False, num_threads: int | None = None, frozen_prefix: bool = True,
                 prefix_chunk: int | None = PREFIX_CHUNK, device: str = "cpu"):
        self.params, self.buffers, self.output = list(params), list(buffers), output
        self.device = device
        #: samples per run of the frozen prefix (its arena is sized for that many); None: the whole batch
        self.prefix_chunk = prefix_chunk
        self.quantized, self.num_threads = quantized, num_threads
        self.train_graph = train_graph
        self.train_split = split_frozen(train_graph, self.params, self.buffers, frozen_prefix)
        self.eval_split = self.train_split if eval_graph is train_graph else split_frozen(
            eval_graph, self.params, self.buffers, frozen_prefix)
        if self.output not in {s.name for s in self.train_split.suffix.outputs}:
            raise EdgeDLError(f"output {output!r} does not depend on any trained tensor")
        self._prefix = {}
        self._tapes: dict[tuple, Tape] = {}
        #: the CUDA stream the tapes (and the trainer's loss and optimizer kernels) launch on
        self.stream = None
        if device == "cuda":
            from numba import cuda

            self.stream = cuda.stream()

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
                                                                 num_threads=self.num_threads, device=self.device)
        return self._prefix[key]

    def frontier(self, feeds: dict[str, np.ndarray], train: bool) -> dict[str, np.ndarray]:
        """The frontier tensors for a batch: graph inputs passed through, the rest computed by the prefix (in
        chunks of ``prefix_chunk`` samples when it treats samples independently)."""
        split = self.train_split if train else self.eval_split
        prefix = self._prefix_model(split)
        out = {t: feeds[t] for t in split.frontier if t in feeds}
        if prefix is None:
            return out
        ins = {s.name: feeds[s.name] for s in prefix.graph.inputs}
        n = len(next(iter(ins.values()))) if ins else 0
        chunk = self.prefix_chunk
        if chunk and n > chunk and _per_sample(prefix.source) and all(v.ndim and len(v) == n for v in ins.values()):
            parts = self._run_in_chunks(prefix, ins, n, chunk)
            if parts is not None:
                out.update(parts)
                return out
        out.update(prefix.run(ins, outputs="device") if self.device == "cuda" else prefix.run(ins))
        return out

    def _run_in_chunks(self, prefix, ins: dict[str, np.ndarray], n: int, chunk: int) -> dict | None:
        """The prefix over ``chunk`` samples at a time (the last chunk zero-padded, so one plan serves all);
        None when an output does not keep the sample axis first. On the GPU the results are device arrays
        (each chunk's outputs copied into them on the device)."""
        on_device = self.device == "cuda"
        result: dict = {}
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            part = {k: v[i:i + m] if m == chunk else
                    np.concatenate([v[i:], np.zeros((chunk - m, *v.shape[1:]), v.dtype)]) for k, v in ins.items()}
            outs = prefix.run(part, outputs="device") if on_device else prefix.run(part)
            if not result:
                if any(len(o.shape) == 0 or o.shape[0] != chunk for o in outs.values()):
                    return None
                if on_device:
                    from numba import cuda

                    result = {k: cuda.device_array((n, *o.shape[1:]), o.dtype) for k, o in outs.items()}
                else:
                    result = {k: np.empty((n, *o.shape[1:]), o.dtype) for k, o in outs.items()}
            for k, o in outs.items():
                if on_device:
                    result[k][i:i + m].copy_to_device(o[:m])
                else:
                    result[k][i:i + m] = o[:m]
        return result

    def prefix_bytes(self, train: bool = True) -> int:
        """The arenas of the prefix's inference plans built so far (what its runs hold; 0 without a prefix)."""
        split = self.train_split if train else self.eval_split
        prefix = self._prefix_model(split)
        if prefix is None:
            return 0
        return int(sum(p.arena_bytes for p in prefix._plans.values()))

    # -- the tape -------------------------------------------------------------------------------------------
    def tape(self, front: dict[str, np.ndarray], train: bool) -> Tape:
        key = (train, tuple((k, tuple(v.shape), np.dtype(v.dtype).str) for k, v in sorted(front.items())))
        tape = self._tapes.get(key)
        if tape is None:
            split = self.train_split if train else self.eval_split
            types = {t: TensorType(tuple(front[t].shape), front[t].dtype) for t in split.frontier}
            buffers = [b for b in self.buffers if b in split.suffix.initializers]  # (no dropout seeds in evaluation)
            tape = Tape(split.suffix, self.params, types, self.output, buffers)
            if self.device == "cuda":
                from .cuda_tape import CudaTape

                tape = CudaTape(tape, self.stream)
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
