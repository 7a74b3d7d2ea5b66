"""``edgedl.Trainer``: fine-tune or train an ONNX model on the device by backprop.

The trainer works on the model's unoptimized graph (the source ONNX graph, Identity removed). Trainable
tensors are chosen by a policy (:func:`select_trainable`); frozen ones stay constants. The frozen prefix (what
comes before the first trained layer) runs as an inference model, the rest on a
:class:`~edgedl.train.tape.Tape` per batch shape (:class:`~edgedl.train.runner.TrainingRunner`).

An int8 model in QDQ form (or a float model with ``quantized=True`` and calibration data) is fine-tuned with
quantization-aware training (:mod:`edgedl.train.qat`): weights fake-quantized with per-channel scales that
follow them, activations fake-quantized with their calibrated parameters, straight-through gradients; the
frozen backbone runs on int8 kernels. ``float_head=True`` trains the selected layers in float behind the
int8 backbone instead.

BatchNormalization layers whose scale and bias train use batch statistics and update their running
statistics (``batchnorm="auto"``); Dropout drops with its ratio while training (seeded). Evaluation uses the
running statistics and no dropout. :meth:`Trainer.fit` shuffles with a seeded generator, so a seed gives
identical weights run to run; :meth:`Trainer.commit` (called at the end of ``fit``) writes the weights back
into the model, which then runs and saves (``Model.save``: float ONNX, or QDQ int8) the trained network.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..affinity import core_ids, running_on
from ..errors import EdgeDLError
from ..ir import Graph
from ..threads import configure_threads
from .losses import SoftmaxCrossEntropy, make_loss
from .optim import clip_grad_norm, make_optimizer
from .runner import PREFIX_CHUNK, TrainingRunner

__all__ = ["Trainer", "History", "EarlyStopping", "select_trainable", "parameter_layers"]

#: inputs of each op that hold layer parameters (what "all" trains)
_PARAM_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                 "BatchNormalization": (1, 2), "PRelu": (1,), "LayerNormalization": (1, 2),
                 "InstanceNormalization": (1, 2), "GroupNormalization": (1, 2), "RMSNormalization": (1,),
                 "LSTM": (1, 2, 3, 7), "GRU": (1, 2, 3), "RNN": (1, 2, 3), "Gather": (0,), "Einsum": (0, 1)}
#: inputs that are biases (what "bias" trains)
_BIAS_INPUTS = {"Conv": (2,), "ConvTranspose": (2,), "Gemm": (2,), "BatchNormalization": (2,),
                "LayerNormalization": (2,), "InstanceNormalization": (2,), "GroupNormalization": (2,),
                "LSTM": (3,), "GRU": (3,), "RNN": (3,)}


def _param_tensor(graph: Graph, producers: dict, name: str) -> str | None:
    """The float32 initializer behind a layer input: itself, or the weight a FakeQuantizeWeight reads."""
    if name in graph.initializers:
        return name if graph.initializers[name].dtype == np.float32 else None
    p = producers.get(name)
    if p is not None and p.domain == "edgedl" and p.op_type == "FakeQuantizeWeight":
        return _param_tensor(graph, producers, p.inputs[0])
    return None


def _layer_tensors(graph: Graph, which: dict[str, tuple[int, ...]]) -> list[tuple[str, list[str]]]:
    consumers, producers = graph.consumers(), graph.producers()
    layers = []
    for n in graph.nodes:
        names = [_param_tensor(graph, producers, n.inputs[i]) for i in which.get(n.op_type, ())
                 if i < len(n.inputs) and n.inputs[i]]
        if n.op_type == "MatMul" and n.outputs[0] in consumers:
            users = consumers[n.outputs[0]]
            if len(users) == 1 and users[0].op_type == "Add":
                names += [_param_tensor(graph, producers, i) for i in users[0].inputs if i != n.outputs[0]]
        names = [t for t in names if t]
        if names:
            layers.append((n.name, names))
    return layers


def parameter_layers(graph: Graph) -> list[tuple[str, list[str]]]:
    """(node name, its parameter initializers) of every layer with parameters, in graph order. A MatMul's
    bias is the constant operand of the Add that follows it; a fake-quantized weight (quantization-aware
    training) is the float initializer behind its FakeQuantizeWeight."""
    return _layer_tensors(graph, _PARAM_INPUTS)


def _biases(graph: Graph) -> list[str]:
    return [p for _, ps in _layer_tensors(graph, {**_BIAS_INPUTS, "MatMul": ()}) for p in ps]


def select_trainable(graph: Graph, trainable) -> list[str]:
    """The initializers a policy trains.

    * ``"all"``: every layer parameter (Conv/ConvTranspose/Gemm/MatMul weights and biases, BatchNormalization
      scale and bias, PRelu slopes);
    * ``"bias"``: the biases only (TinyTL's bias-only fine-tuning);
    * ``"last:K"``: the parameters of the last K layers that have some;
    * a list of names: initializers, or layer (node) names meaning all their parameters."""
    layers = parameter_layers(graph)
    if isinstance(trainable, str):
        if trainable == "all":
            names = [p for _, ps in layers for p in ps]
        elif trainable == "bias":
            names = _biases(graph)
        elif trainable.startswith("last:"):
            try:
                k = int(trainable[5:])
            except ValueError:
                raise EdgeDLError(f"bad policy {trainable!r}: use last:K with an integer K") from None
            if k < 1:
                raise EdgeDLError(f"bad policy {trainable!r}: K must be >= 1")
            names = [p for _, ps in layers[-k:] for p in ps]
        else:
            raise EdgeDLError(f"unknown trainable policy {trainable!r} (all, bias, last:K, or a list of names)")
    else:
        by_layer = dict(layers)
        names = []
        for item in trainable:
            if item in by_layer:
                names += by_layer[item]
            elif item in graph.initializers:
                names.append(item)
            else:
                raise EdgeDLError(f"{item!r} is neither a layer with parameters nor an initializer")
    names = list(dict.fromkeys(names))
    bad = [n for n in names if graph.initializers[n].dtype != np.float32]
    if bad:
        raise EdgeDLError(f"only float32 tensors can be trained; {bad} are not")
    if not names:
        raise EdgeDLError(f"policy {trainable!r} selects no tensor to train")
    return names


@dataclass
class History:
    """Per-epoch metrics of :meth:`Trainer.fit` (lists, one entry per epoch)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    #: the largest training memory of a step (activations, saved values, gradients), bytes
    peak_bytes: int = 0


class EarlyStopping:
    """Stop when ``monitor`` ("val_loss", "val_accuracy", "loss", "accuracy") has not improved for
    ``patience`` epochs; with ``restore_best``, the best epoch's weights are kept."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, restore_best: bool = True):
        self.monitor, self.patience, self.restore_best = monitor, int(patience), restore_best
        self.best = None
        self.best_params = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict) -> bool:
        if self.monitor not in logs:
            raise EdgeDLError(f"EarlyStopping monitors {self.monitor!r}, which this run does not compute "
                              f"(have {sorted(logs)})")
        value = logs[self.monitor]
        better = self.best is None or (value > self.best if "accuracy" in self.monitor else value < self.best)
        if better:
            self.best, self.wait = value, 0
            if self.restore_best:
                self.best_params = {k: v.copy() for k, v in trainer.params.items()}
            return False
        self.wait += 1
        if self.wait >= self.patience:
            if self.restore_best and self.best_params is not None:
                for k, v in self.best_params.items():
                    trainer.params[k][...] = v
            return True
        return False


class Trainer:
    """Train ``model`` (an :class:`edgedl.Model`) by backprop.

    Parameters
    ----------
    model : edgedl.Model
        A float32 model, or an int8 model in QDQ form (fine-tuned with quantization-aware training).
    loss : str or Loss
        "cross_entropy" (default; int labels), "mse", "bce", or a :mod:`edgedl.train.losses` instance.
    optimizer : str or Optimizer
        "adam" (default), "adamw", "sgd", or an :mod:`edgedl.train.optim` instance.
    trainable : str or list
        The policy of :func:`select_trainable` ("all", "bias", "last:K", names).
    output : str, optional
        The graph output the loss reads (default: the first).
    seed : int
        Seeds the shuffling and dropout: the same seed gives the same weights.
    clip_norm : float, optional
        Clip the global gradient norm to this value.
    lr : float, optional
        The learning rate of an optimizer given by name.
    budget_bytes : int, optional
        A training-memory budget: of the layers the policy selects, train the most trailing ones whose
        training step (frozen prefix's arena, activations kept, gradients, trained copies, optimizer state)
        fits, measured on a probe step at ``budget_batch`` samples; if the last layers fit with room to spare
        but the next one does not, the input channels of that next layer that fit train too (its saved
        input shrinks with them). ``budget_probes`` lists what was measured.
    quantized : bool, optional
        Fine-tune with quantization-aware training. Implied by an int8 (QDQ) model; a float model needs
        ``calibration`` (it is quantized first with :func:`edgedl.quantize`).
    calibration : iterable of batches, optional
        Calibration inputs for ``quantized=True`` on a float model.
    float_head : bool
        With a quantized model: train the selected layers in float behind the frozen int8 backbone (they
        export in float) instead of quantization-aware.
    batchnorm : "auto" or "frozen"
        "auto": BatchNormalization layers whose scale / bias train use batch statistics and update their
        running statistics; "frozen": every BatchNormalization uses its running statistics.
    prefix_chunk : int or None
        The frozen prefix runs as inference on this many samples at a time (its arena holds that many
        samples' activations) when it treats samples independently; None: the whole batch at once.
    device : "cpu", "cuda" or None
        Where the training step runs; None: the model's device. On "cuda" the frozen prefix, the trained
        layers' forward and backward (:class:`~edgedl.train.cuda_tape.CudaTape`), the loss, the gradient
        clipping and the optimizer (its state on the device) run on the GPU (:mod:`edgedl.train.cuda_state`);
        ``params`` and ``buffers`` are host views refreshed when read, checkpoints are the same files.
    """

    def __init__(self, model, loss="cross_entropy", optimizer="adam", trainable="all", *, output: str | None = None,
                 seed: int = 0, clip_norm: float | None = None, lr: float | None = None,
                 budget_bytes: int | None = None, budget_batch: int = 32, quantized: bool | None = None,
                 calibration=None, float_head: bool = False, batchnorm: str = "auto",
                 prefix_chunk: int | None = PREFIX_CHUNK, device: str | None = None):
        from ..passes import remove_identities
        from ..quant.quantize_model import copy_graph, source_graph
        from .qat import has_quantized_ops, to_qat

        if batchnorm not in ("auto", "frozen"):
            raise EdgeDLError(f"batchnorm must be 'auto' or 'frozen', got {batchnorm!r}")
        self.model = model
        self.device = _training_device(device, model)
        graph = copy_graph(source_graph(model))
        from ..quant.qoperator_to_qdq import has_qoperator_nodes, qoperator_to_qdq

        if has_qoperator_nodes(graph) and any("_requant" in n.attrs for n in graph.nodes):
            graph = qoperator_to_qdq(graph)  # an imported TFLite int8 model: QDQ, what QAT starts from
        remove_identities(graph, dropout=False)  # Dropout drops while training
        from ..passes import fuse_gelu, remove_noop_casts

        remove_noop_casts(graph)
        fuse_gelu(graph)  # an exported exact GELU (Erf and four element-wise ops) trains through Gelu's backward
        self.qat = None
        if has_quantized_ops(graph):
            if quantized is False:
                raise EdgeDLError("the model is int8 (QDQ): it trains with quantization-aware training or a float "
                                  "head (float_head=True), not quantized=False")
            self.qat = to_qat(graph)
        elif quantized:
            if calibration is None:
                raise EdgeDLError("quantized=True on a float model needs calibration= (input batches to calibrate "
                                  "the int8 ranges), or quantize it first with edgedl.quantize")
            from ..quant.quantize_model import quantize

            self.qat = to_qat(copy_graph(source_graph(quantize(model, calibration, progress=False))))
        elif float_head:
            raise EdgeDLError("float_head=True needs a quantized model (an int8 backbone)")
        if self.qat is not None:
            graph = self.qat.graph
        self.graph = graph
        self.inputs = list(graph.inputs)
        self.input = self.inputs[0]
        self.output = output or graph.outputs[0].name
        if self.output not in {s.name for s in graph.outputs}:
            raise EdgeDLError(f"{self.output!r} is not an output of the model")
        self.loss = make_loss(loss)
        self.optimizer = make_optimizer(optimizer, **({} if lr is None else {"lr": lr}))
        self.batchnorm = batchnorm
        if prefix_chunk is not None and int(prefix_chunk) < 1:
            raise EdgeDLError(f"prefix_chunk must be >= 1 or None, got {prefix_chunk}")
        self.prefix_chunk = None if prefix_chunk is None else int(prefix_chunk)
        self.float_head = bool(float_head)
        self.seed = int(seed)
        self.trainable = select_trainable(graph, trainable)
        #: the memory probes of a budgeted policy: (layers trained, estimated bytes)
        self.budget_probes: list[tuple[int, int]] = []
        #: a layer of which only some input channels train (budget): (layer, channels trained, channels)
        self.partial_layer: tuple[str, int, int] | None = None
        self._budgeted = budget_bytes is not None
        if budget_bytes is not None:
            self.trainable = self._fit_budget(int(budget_bytes), int(budget_batch))
        self.runner = self._runner(self.trainable)
        initial = self.runner.initial_values()
        self._params = {n: initial[n] for n in self.trainable}
        self._buffers = {n: initial[n] for n in self.runner.buffers}
        #: the device copies, optimizer state and step of a GPU trainer (None on the CPU)
        self._gpu = None
        if self.device == "cuda":
            from .cuda_state import DeviceTraining

            self._gpu = DeviceTraining(self._params, self._buffers, self.runner.stream,
                                       keep_on_host=[b for b in self._buffers if b.startswith(_DROPOUT_SEED)])
        self.clip_norm = clip_norm
        self.step_count = 0
        #: the largest training memory of a step (frozen prefix's arena, activations, saved values, gradients)
        #: and, of it, the activations kept for the backward, in bytes
        self.peak_bytes = 0
        self.saved_bytes = 0

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The trained tensors by name (float32 host arrays; on the GPU refreshed from the device when read,
        and uploaded again before the next step, so they may be edited)."""
        if self._gpu is not None:
            self._gpu.pull()
        return self._params

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """Run-time tensors that take no gradient (running statistics, Dropout seeds), as ``params``."""
        if self._gpu is not None:
            self._gpu.pull()
        return self._buffers

    # -- graphs ------------------------------------------------------------------------------------------
    def _runner(self, names: list[str], graph: Graph | None = None) -> TrainingRunner:
        """The training and evaluation graphs for ``names`` trained (of ``graph``, default the trainer's), and
        their runner."""
        from ..quant.quantize_model import copy_graph

        graph = graph if graph is not None else self.graph
        if self.float_head:
            graph = self.qat.float_after(names).graph
        train_graph = copy_graph(graph)
        buffers = _batchnorm_training(train_graph, set(names)) if self.batchnorm == "auto" else []
        dropout = _dropout_training(train_graph)
        eval_graph = copy_graph(graph)
        _drop_dropout(eval_graph)
        if not buffers and not dropout:
            train_graph = eval_graph
        # NOTE: under a memory budget a float model's frozen part runs on the tape, which frees activations as
        # it goes; an inference plan would hold them in its arena for the whole run
        return TrainingRunner(train_graph, eval_graph, names, buffers + dropout, self.output,
                              quantized=self.qat is not None, num_threads=getattr(self.model, "num_threads", None),
                              frozen_prefix=not self._budgeted or self.qat is not None,
                              prefix_chunk=self.prefix_chunk, device=self.device)

    # -- memory budget -----------------------------------------------------------------------------------
    @property
    def _target_threads(self) -> int | None:
        target = getattr(self.model, "target", None)
        return None if target is None else target.threads

    @property
    def _cores(self):
        """The CPUs of the target's core set (None: every core)."""
        return core_ids(getattr(self.model, "target", None))

    def _optimizer_slots(self) -> int:
        """Arrays of optimizer state per trained tensor (Adam: 2; SGD with momentum: 1; plain SGD: 0)."""
        from .optim import SGD

        if isinstance(self.optimizer, SGD):
            return 1 if self.optimizer.momentum else 0
        return 2

    def estimate_bytes(self, names: list[str], batch: int) -> int:
        """Training memory of one step on a batch of ``batch`` samples when ``names`` are trained, as this
        trainer runs it: the frozen prefix's arena and outputs (a budgeted trainer runs the prefix on the tape
        instead), the tape's peak (activations, saved values, gradients; measured on a zero batch), the trained
        copies of the tensors and the optimizer state. The input batch itself is not counted."""
        return self._estimate(names, batch, self.graph)

    def _estimate(self, names: list[str], batch: int, graph: Graph) -> int:
        for s in self.inputs:
            if s.shape is None or any(not isinstance(d, int) for d in s.shape[1:]):
                raise EdgeDLError(f"a memory budget needs static sample dimensions, input {s.name!r} is {s.shape}")
        runner = self._runner(names, graph)
        feeds = {s.name: np.zeros((batch, *s.shape[1:]), s.dtype) for s in self.inputs}
        values = runner.initial_values()
        outs, saved, tape = runner.forward(feeds, values, train=True, keep=True)
        tape.backward(saved, np.zeros(outs[self.output].shape, np.float32))
        tensors = sum(values[n].nbytes for n in names)
        # the batch itself is the caller's: only computed frontier tensors count
        front = sum(v.nbytes for k, v in runner.frontier(feeds, True).items() if k not in feeds)
        return int(runner.prefix_bytes() + front + tape.peak_bytes
                   + tensors * (1 + self._optimizer_slots()))

    def _fit_budget(self, budget: int, batch: int) -> list[str]:
        """The parameters of the most trailing layers (of the policy's choice) whose training fits ``budget``
        bytes at ``batch`` samples per step (binary search on the number of layers, one probe step each),
        then as many input channels of the next layer as still fit."""
        chosen = set(self.trainable)
        layers = [(name, [p for p in ps if p in chosen]) for name, ps in parameter_layers(self.graph)
                  if any(p in chosen for p in ps)]
        if not layers:
            raise EdgeDLError("the policy selects no layer to train")

        def names(k):
            return [p for _, ps in layers[len(layers) - k:] for p in ps]

        def cost(k, extra=()):
            b = self.estimate_bytes(list(extra) + names(k), batch)
            self.budget_probes.append((k, b))
            return b

        if cost(1) > budget:
            raise EdgeDLError(f"even the last layer alone needs {self.budget_probes[-1][1]:,} bytes of training "
                              f"memory at batch {batch}, over the budget of {budget:,}: lower the batch size")
        lo, hi = 1, len(layers)
        while lo < hi:  # the largest k that fits (training memory grows with the layers trained)
            mid = (lo + hi + 1) // 2
            if cost(mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo < len(layers):
            partial = self._partial_channels(layers[len(layers) - lo - 1][0], names(lo), budget, batch)
            if partial:
                return partial + names(lo)
        return names(lo)

    def _partial_channels(self, layer: str, trained: list[str], budget: int, batch: int) -> list[str]:
        """Train the first input channels of ``layer`` that fit the budget beside ``trained`` (the weight is
        split in two along its input channels: the trained part's saved input is the slice it reads)."""
        from .partial import split_input_channels

        node = next(n for n in self.graph.nodes if n.name == layer)
        channels = split_input_channels(self.graph, node, None)
        if channels is None or channels < 2:
            return []

        def attempt(c):
            from ..quant.quantize_model import copy_graph

            g = copy_graph(self.graph)
            w_train = split_input_channels(g, next(n for n in g.nodes if n.name == layer), c)
            bias = [i for i in node.inputs[2:3] if node.op_type != "MatMul" and i in self.trainable]
            b = self._estimate([w_train] + bias + trained, batch, g)
            self.budget_probes.append((-c, b))
            return g, w_train, b

        lo, hi, best = 0, channels - 1, None
        while lo < hi:  # the most channels (fewer than all) that fit
            mid = (lo + hi + 1) // 2
            g, w_train, b = attempt(mid)
            if b <= budget:
                lo, best = mid, (g, w_train)
            else:
                hi = mid - 1
        if best is None:
            return []
        self.graph, w_train = best
        self.partial_layer = (layer, lo, channels)
        bias = [i for i in node.inputs[2:3] if node.op_type != "MatMul" and i in self.trainable]
        return [w_train] + bias

    # -- data --------------------------------------------------------------------------------------------
    def _feeds(self, x) -> dict[str, np.ndarray]:
        """Inputs as {name: array}: an array for a one-input model, a dict, or a list in input order."""
        names = [s.name for s in self.inputs]
        if isinstance(x, dict):
            unknown = sorted(set(x) - set(names))
            missing = [n for n in names if n not in x]
            if unknown or missing:
                raise EdgeDLError(f"inputs must be given for exactly {names}; unknown {unknown}, missing {missing}")
            arrays = [x[n] for n in names]
        elif isinstance(x, (list, tuple)) and len(names) > 1:
            arrays = list(x)
            if len(arrays) != len(names):
                raise EdgeDLError(f"the model has {len(names)} inputs, got {len(arrays)} arrays")
        else:
            if len(names) != 1:
                raise EdgeDLError(f"the model has {len(names)} inputs {names}: give a dict name -> array or a list "
                                  f"in that order")
            arrays = [x]
        feeds = {}
        for spec, a in zip(self.inputs, arrays):
            a = np.asarray(a)
            want = np.dtype(spec.dtype)
            if a.dtype != want:
                raise EdgeDLError(f"input {spec.name!r} must be {want.name}, got {a.dtype}")
            shape = spec.shape
            if a.ndim < 1 or (shape is not None and (len(shape) != a.ndim or any(
                    isinstance(d, int) and d != s for d, s in zip(shape[1:], a.shape[1:])))):
                raise EdgeDLError(f"input {spec.name!r} expects samples of shape "
                                  f"{tuple(shape[1:]) if shape else '?'}, got {tuple(a.shape[1:])}")
            feeds[spec.name] = np.ascontiguousarray(a)
        counts = {len(a) for a in feeds.values()}
        if len(counts) > 1:
            raise EdgeDLError(f"every input must have the same number of samples, got {sorted(counts)}")
        return feeds

    def _check_data(self, x, y) -> tuple[dict[str, np.ndarray], np.ndarray]:
        feeds = self._feeds(x)
        y = np.asarray(y)
        n = len(next(iter(feeds.values())))
        if y.ndim < 1 or len(y) != n:
            raise EdgeDLError(f"inputs and labels must have the same number of samples, got {n} and {y.shape}")
        return feeds, y

    def _values(self) -> dict[str, np.ndarray]:
        if self._gpu is not None:
            return self._gpu.values()
        values = dict(self._params)
        values.update(self._buffers)
        return values

    # -- steps -------------------------------------------------------------------------------------------
    def train_step(self, x, y: np.ndarray) -> tuple[float, np.ndarray]:
        """One optimizer step on a batch; returns (loss, model output)."""
        feeds, y = self._check_data(x, y)
        return self._step(feeds, y)

    def _step(self, feeds: dict[str, np.ndarray], y: np.ndarray) -> tuple[float, np.ndarray]:
        """train_step on a batch already checked by _check_data, on the target's core set."""
        cores = self._cores
        configure_threads(self.runner.num_threads, self._target_threads,  # the tape's kernels: what the load leaves
                          None if cores is None else len(cores))
        with running_on(cores):
            return self._step_here(feeds, y)

    def _step_here(self, feeds: dict[str, np.ndarray], y: np.ndarray) -> tuple[float, np.ndarray]:
        """The step itself (threads and cores already set)."""
        values = self._values()
        for name in self.runner.buffers:
            if name.startswith(_DROPOUT_SEED):
                values[name] = np.array(_dropout_seed(self.seed, self.step_count, name), np.int64)
        outs, saved, tape = self.runner.forward(feeds, values, train=True, keep=True)
        out = outs[self.output]
        gpu = self._gpu  # on the GPU: the loss, clipping, update and running statistics on the device too
        loss, grad = gpu.loss(self.loss, out, y) if gpu is not None else self.loss(out, y)
        if not np.isfinite(loss):
            raise EdgeDLError(f"the loss is {loss} at step {self.step_count}: training stopped (lower the "
                              f"learning rate, clip gradients, or check the data)")
        grads = tape.backward(saved, grad)
        prefix = self.runner.prefix_bytes()
        self.peak_bytes = max(self.peak_bytes, prefix + tape.peak_bytes)
        self.saved_bytes = max(self.saved_bytes, tape.saved_bytes)
        if self.clip_norm:
            if gpu is not None:
                gpu.clip(grads, self.clip_norm)
            else:
                clip_grad_norm(grads, self.clip_norm)
        if gpu is not None:
            gpu.step(self.optimizer, grads)
        else:
            self.optimizer.step(self._params, grads)
        for name in self.runner.buffers:
            updated = outs.get(f"{name}{_UPDATED}")  # a running statistic of a training-mode BatchNormalization
            if updated is None:
                continue
            if gpu is not None:
                gpu.update_buffer(name, updated)
            else:
                self._buffers[name][...] = updated
        self.step_count += 1
        return loss, (gpu.to_host(out) if gpu is not None else out)

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """The model output (the loss's output) for every sample, with the current weights (running
        statistics, no dropout)."""
        feeds = self._feeds(x)
        n = len(next(iter(feeds.values())))
        cores = self._cores
        configure_threads(self.runner.num_threads, self._target_threads, None if cores is None else len(cores))
        values = self._values()
        outs = []
        for i in range(0, n, batch_size):
            fb = {k: v[i:i + batch_size] for k, v in feeds.items()}
            o, _, _ = self.runner.forward(fb, values, train=False, keep=False)
            out = o[self.output]
            outs.append(out.copy_to_host() if hasattr(out, "copy_to_host") else out)
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    def evaluate(self, x, y, batch_size: int = 256) -> dict[str, float]:
        """{"loss", and for cross-entropy "accuracy"} over the whole set."""
        feeds, y = self._check_data(x, y)
        out = self.predict(feeds, batch_size)
        loss, _ = self.loss(out, y)
        res = {"loss": loss}
        if isinstance(self.loss, SoftmaxCrossEntropy):
            res["accuracy"] = float(np.mean(np.argmax(out, axis=1) == y))
        return res

    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, validation=None, callbacks=(), shuffle: bool = True,
            progress: bool = False, checkpoint=None, checkpoint_every: int = 0, resume: bool = False) -> History:
        """Train for ``epochs`` over (x, y) in batches (the last one smaller), then write the weights into the
        model (:meth:`commit`). ``x``: an array (one-input model), a dict input name -> array, or a list in
        input order. ``validation``: (x, y) evaluated after every epoch. ``callbacks``: objects with
        ``on_epoch_end(trainer, epoch, logs) -> stop`` (e.g. :class:`EarlyStopping`).

        ``checkpoint``: a path written atomically at the end of every epoch and every ``checkpoint_every``
        steps (weights, running statistics, optimizer state, position, history). ``resume=True`` continues
        from that file when it exists: the run ends with the same weights as one never interrupted (epoch
        ``e`` shuffles with a generator seeded by (seed, e), so the batches are the same)."""
        feeds, y = self._check_data(x, y)
        if epochs < 1 or batch_size < 1 or checkpoint_every < 0:
            raise EdgeDLError("epochs and batch_size must be >= 1, checkpoint_every >= 0")
        if validation is not None:
            validation = self._check_data(*validation)
        if (resume or checkpoint_every) and checkpoint is None:
            raise EdgeDLError("resume and checkpoint_every need a checkpoint path")
        is_ce = isinstance(self.loss, SoftmaxCrossEntropy)
        hist = History()
        n = len(y)
        start_epoch, start_batch, total, correct = 0, 0, 0.0, 0
        if resume and checkpoint is not None and os.path.exists(checkpoint):
            start_epoch, start_batch, total, correct, hist = self._restore(checkpoint, n, batch_size)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=epochs * n, initial=min(epochs * n, start_epoch * n + start_batch * batch_size),
                       unit="sample", dynamic_ncols=True)
        try:
            for epoch in range(start_epoch, epochs):
                t0 = time.perf_counter()
                order = np.random.default_rng([self.seed, epoch]).permutation(n) if shuffle else np.arange(n)
                first = start_batch if epoch == start_epoch else 0
                if first == 0:
                    total, correct = 0.0, 0
                nbatches = -(-n // batch_size)
                for b in range(first, nbatches):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    fb, yb = {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}, y[idx]
                    loss, out = self._step(fb, yb)
                    total += loss * len(idx)
                    if is_ce:
                        correct += int(np.sum(np.argmax(out, axis=1) == yb))
                    if bar is not None:
                        bar.update(len(idx))
                        bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch + 1)
                    if checkpoint_every and self.step_count % checkpoint_every == 0 and b + 1 < nbatches:
                        self.save_checkpoint(checkpoint, epoch, b + 1, total, correct, hist, batch_size, n)
                logs = {"loss": total / n}
                hist.loss.append(logs["loss"])
                if is_ce:
                    logs["accuracy"] = correct / n
                    hist.accuracy.append(logs["accuracy"])
                if validation is not None:
                    v = self.evaluate(*validation)
                    logs.update({f"val_{k}": val for k, val in v.items()})
                    hist.val_loss.append(v["loss"])
                    if "accuracy" in v:
                        hist.val_accuracy.append(v["accuracy"])
                hist.seconds.append(time.perf_counter() - t0)
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint, epoch + 1, 0, 0.0, 0, hist, batch_size, n)
                if any(cb.on_epoch_end(self, epoch, logs) for cb in callbacks):
                    break
        finally:
            if bar is not None:
                bar.close()
        hist.peak_bytes = self.peak_bytes
        self.commit()
        return hist

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        """What a checkpoint stores besides the optimizer: the trained tensors and the running statistics."""
        arrays = dict(self.params)
        arrays.update({k: v for k, v in self.buffers.items() if not k.startswith(_DROPOUT_SEED)})
        return arrays

    def save_checkpoint(self, path, epoch: int = 0, batch: int = 0, total: float = 0.0, correct: int = 0,
                        hist: History | None = None, batch_size: int = 0, samples: int = 0) -> None:
        """Write the weights, optimizer state and position (continue at ``epoch``, ``batch``) atomically."""
        from .checkpoint import write_checkpoint

        h = hist or History()
        meta = {"epoch": epoch, "batch": batch, "total": total, "correct": correct, "seed": self.seed,
                "step_count": self.step_count, "batch_size": batch_size, "samples": samples,
                "trainable": self.trainable, "history": {k: getattr(h, k) for k in
                                                         ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")}}
        if self._gpu is not None:
            self._gpu.optimizer_to_host(self.optimizer)
        write_checkpoint(path, self._state_arrays(), self.optimizer.state_dict(), meta)

    def _restore(self, path, samples: int, batch_size: int):
        from .checkpoint import read_checkpoint

        arrays, opt_state, meta = read_checkpoint(path)
        if meta["trainable"] != self.trainable:
            raise EdgeDLError(f"{path} trains {meta['trainable']}, this trainer {self.trainable}")
        if meta["batch_size"] != batch_size or meta["samples"] != samples or meta["seed"] != self.seed:
            raise EdgeDLError(f"{path} was written by a run with batch_size {meta['batch_size']}, "
                              f"{meta['samples']} samples and seed {meta['seed']}: resume with the same ones")
        mine = self._state_arrays()
        if set(arrays) != set(mine):
            raise EdgeDLError(f"{path} holds {sorted(arrays)}, this trainer {sorted(mine)}")
        for name, value in arrays.items():
            if value.shape != mine[name].shape:
                raise EdgeDLError(f"{path}: {name!r} has shape {value.shape}, the model {mine[name].shape}")
            mine[name][...] = value
        self.optimizer.load_state_dict(opt_state)
        if self._gpu is not None:
            self._gpu.optimizer_from_host(self.optimizer)
        self.step_count = int(meta["step_count"])
        hist = History(**{k: list(v) for k, v in meta["history"].items()})
        return int(meta["epoch"]), int(meta["batch"]), float(meta["total"]), int(meta["correct"]), hist

    def exported_graph(self) -> Graph:
        """The trained model's graph in standard ONNX form: float, or QDQ int8 for a quantized model (a float
        head stays float); a budget's split layer is joined again."""
        from .partial import join_split_weights

        values = {**self.params, **{k: v for k, v in self.buffers.items() if not k.startswith(_DROPOUT_SEED)}}
        if self.qat is not None:
            qat = self.qat.float_after(self.trainable) if self.float_head else self.qat
            graph = qat.export(values)
        else:
            from ..quant.quantize_model import copy_graph

            graph = copy_graph(self.graph)
            graph.initializers.update({k: np.array(v) for k, v in values.items()})
        return join_split_weights(graph)

    def commit(self) -> None:
        """Write the current weights into the model (its plans are rebuilt on the next run)."""
        if self.qat is None and self.partial_layer is None:
            values = {**self.params, **{k: v for k, v in self.buffers.items() if not k.startswith(_DROPOUT_SEED)}}
            self.model.set_weights(values)
        else:
            self.model.set_source(self.exported_graph())


def _training_device(device: str | None, model) -> str:
    """The device a trainer runs on: ``device``, else the model's; "cuda" must be usable here."""
    device = device or getattr(model, "device", "cpu") or "cpu"
    if device not in ("cpu", "cuda"):
        raise EdgeDLError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        from ..kernels.cuda import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise EdgeDLError(f"device='cuda': {reason}")
    return device


# -- training-mode rewrites ------------------------------------------------------------------------------------
_DROPOUT_SEED = "edgedl_dropout_seed"
#: the suffix of a training-mode BatchNormalization's updated running statistic
_UPDATED = "_edgedl_updated"


def _dropout_seed(seed: int, step: int, name: str) -> int:
    """The seed of one Dropout at one step: a function of (trainer seed, step, node), so a resumed run
    drops the same units."""
    k = int(name[len(_DROPOUT_SEED) + 1:] or 0)
    return int(np.random.default_rng([seed, step, k]).integers(0, 2**62))


def _dropout_ratio(graph: Graph, n) -> float:
    if len(n.inputs) > 1 and n.inputs[1]:
        v = graph.initializers.get(n.inputs[1])
        if v is None:
            raise EdgeDLError(f"{n.describe()}: the dropout ratio must be a constant to train")
        return float(v.reshape(-1)[0])
    return float(n.attrs.get("ratio", 0.5))


def _dropout_training(graph: Graph) -> list[str]:
    """Dropout nodes -> edgedl TrainingDropout(x, seed) with a per-step seed tensor each; returns the seeds."""
    from ..ir import Node

    seeds = []
    nodes = []
    for k, n in enumerate(graph.nodes):
        if n.op_type == "Dropout" and not n.domain:
            ratio = _dropout_ratio(graph, n)
            seed = f"{_DROPOUT_SEED}_{k}"
            graph.initializers[seed] = np.zeros((), np.int64)
            seeds.append(seed)
            nodes.append(Node("TrainingDropout", n.name, [n.inputs[0], seed], [n.outputs[0], f"{n.outputs[0]}_mask"],
                              {"ratio": ratio}, domain="edgedl"))
        else:
            nodes.append(n)
    graph.nodes = nodes
    return seeds


def _drop_dropout(graph: Graph) -> None:
    """Evaluation: Dropout is the identity."""
    from ..passes import remove_identities

    remove_identities(graph)


def _batchnorm_training(graph: Graph, trained: set[str]) -> list[str]:
    """BatchNormalization nodes whose scale or bias train -> training mode (batch statistics), with their
    running mean and variance as run-time buffers and the updated values as extra outputs."""
    from ..ir import TensorSpec

    buffers = []
    for n in graph.nodes:
        if n.op_type != "BatchNormalization" or n.domain or not (set(n.inputs[1:3]) & trained):
            continue
        if graph.opset < 7:
            raise EdgeDLError(f"{n.describe()}: training BatchNormalization needs opset >= 7")
        mean, var = n.inputs[3], n.inputs[4]
        if mean not in graph.initializers or var not in graph.initializers:
            raise EdgeDLError(f"{n.describe()}: the running statistics must be initializers to train")
        outs = [n.outputs[0], f"{mean}{_UPDATED}", f"{var}{_UPDATED}"]
        n.outputs = outs
        if graph.opset >= 14:
            n.attrs["training_mode"] = 1
        graph.outputs.extend(TensorSpec(o, None, None) for o in outs[1:])
        buffers += [mean, var]
    return buffers

