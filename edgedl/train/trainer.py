"""``edgedl.Trainer``: fine-tune or train an ONNX model on the device by backprop.

The trainer works on the model's unoptimized graph (the source ONNX graph, Identity/Dropout removed:
Dropout runs as in inference) with a :class:`~edgedl.train.tape.Tape` per batch shape. Trainable tensors
are chosen by a policy (:func:`select_trainable`); frozen ones stay constants, so their layers run as in
inference. :meth:`Trainer.fit` shuffles with a seeded generator, so a seed gives identical weights run to
run; :meth:`Trainer.commit` (called at the end of ``fit``) writes the weights back into the model, which
then runs and saves (``Model.save``) the trained network.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgeDLError
from ..ir import Graph, TensorType
from .losses import SoftmaxCrossEntropy, make_loss
from .optim import clip_grad_norm, make_optimizer
from .tape import Tape

__all__ = ["Trainer", "History", "EarlyStopping", "select_trainable", "parameter_layers"]

#: inputs of each op that hold layer parameters (what "all" trains)
_PARAM_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                 "BatchNormalization": (1, 2), "PRelu": (1,)}
#: inputs that are biases (what "bias" trains)
_BIAS_INPUTS = {"Conv": (2,), "ConvTranspose": (2,), "Gemm": (2,), "BatchNormalization": (2,)}


def parameter_layers(graph: Graph) -> list[tuple[str, list[str]]]:
    """(node name, its parameter initializers) of every layer with parameters, in graph order. A MatMul's
    bias is the constant operand of the Add that follows it."""
    consumers = graph.consumers()
    layers = []
    for n in graph.nodes:
        names = [n.inputs[i] for i in _PARAM_INPUTS.get(n.op_type, ()) if i < len(n.inputs)
                 and n.inputs[i] in graph.initializers and graph.initializers[n.inputs[i]].dtype == np.float32]
        if n.op_type == "MatMul" and n.outputs[0] in consumers:
            users = consumers[n.outputs[0]]
            if len(users) == 1 and users[0].op_type == "Add":
                names += [i for i in users[0].inputs if i in graph.initializers
                          and graph.initializers[i].dtype == np.float32]
        if names:
            layers.append((n.name, names))
    return layers


def _biases(graph: Graph) -> list[str]:
    out = []
    consumers = graph.consumers()
    for n in graph.nodes:
        out += [n.inputs[i] for i in _BIAS_INPUTS.get(n.op_type, ()) if i < len(n.inputs)
                and n.inputs[i] in graph.initializers]
        if n.op_type == "MatMul" and n.outputs[0] in consumers:
            users = consumers[n.outputs[0]]
            if len(users) == 1 and users[0].op_type == "Add":
                out += [i for i in users[0].inputs if i in graph.initializers]
    return out


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
        A float32 model with one input.
    loss : str or Loss
        "cross_entropy" (default; int labels), "mse", "bce", or a :mod:`edgedl.train.losses` instance.
    optimizer : str or Optimizer
        "adam" (default), "adamw", "sgd", or an :mod:`edgedl.train.optim` instance.
    trainable : str or list
        The policy of :func:`select_trainable` ("all", "bias", "last:K", names).
    output : str, optional
        The graph output the loss reads (default: the first).
    seed : int
        Seeds the shuffling: the same seed gives the same weights.
    clip_norm : float, optional
        Clip the global gradient norm to this value.
    lr : float, optional
        The learning rate of an optimizer given by name.
    budget_bytes : int, optional
        A training-memory budget: of the layers the policy selects, train the most trailing ones whose
        training step (activations kept, gradients, trained copies, optimizer state) fits, measured on a
        probe step at ``budget_batch`` samples. ``budget_probes`` lists what was measured.
    """

    def __init__(self, model, loss="cross_entropy", optimizer="adam", trainable="all", *, output: str | None = None,
                 seed: int = 0, clip_norm: float | None = None, lr: float | None = None,
                 budget_bytes: int | None = None, budget_batch: int = 32):
        from ..passes import remove_identities
        from ..quant.quantize_model import copy_graph, source_graph

        self.model = model
        graph = copy_graph(source_graph(model))
        remove_identities(graph)
        if len(graph.inputs) != 1:
            raise EdgeDLError(f"the trainer takes models with one input, this one has {len(graph.inputs)}")
        self.graph = graph
        self.input = graph.inputs[0]
        self.output = output or graph.outputs[0].name
        self.loss = make_loss(loss)
        self.optimizer = make_optimizer(optimizer, **({} if lr is None else {"lr": lr}))
        self.trainable = select_trainable(graph, trainable)
        #: the memory probes of a budgeted policy: (layers trained, estimated bytes), see fit_budget
        self.budget_probes: list[tuple[int, int]] = []
        if budget_bytes is not None:
            self.trainable = self._fit_budget(int(budget_bytes), int(budget_batch))
        self.params = {n: np.array(graph.initializers[n], np.float32, copy=True) for n in self.trainable}
        self.seed = int(seed)
        self.clip_norm = clip_norm
        self.step_count = 0
        #: the largest training memory of a step (activations, saved values, gradients) and, of it, the
        #: activations kept for the backward, in bytes
        self.peak_bytes = 0
        self.saved_bytes = 0
        self._tapes: dict[tuple, Tape] = {}

    # -- memory budget -----------------------------------------------------------------------------------
    def _optimizer_slots(self) -> int:
        """Arrays of optimizer state per trained tensor (Adam: 2; SGD with momentum: 1; plain SGD: 0)."""
        from .optim import SGD

        if isinstance(self.optimizer, SGD):
            return 1 if self.optimizer.momentum else 0
        return 2

    def estimate_bytes(self, names: list[str], batch: int) -> int:
        """Training memory of one step on a batch of ``batch`` samples when ``names`` are trained: the tape's
        peak (activations, saved values, gradients; measured on a zero batch) plus the trained copies of the
        tensors and the optimizer state."""
        if any(not isinstance(d, int) for d in self.input.shape[1:]):
            raise EdgeDLError(f"a memory budget needs static sample dimensions, input is {self.input.shape}")
        shape = (batch, *self.input.shape[1:])
        tape = Tape(self.graph, names, {self.input.name: TensorType(shape, np.dtype(self.input.dtype))}, self.output)
        params = {n: np.array(self.graph.initializers[n], np.float32) for n in names}
        outs, saved = tape.forward({self.input.name: np.zeros(shape, self.input.dtype)}, params)
        tape.backward(saved, np.zeros(outs[self.output].shape, np.float32))
        tensors = sum(p.nbytes for p in params.values())
        return int(tape.peak_bytes + tensors * (1 + self._optimizer_slots()))

    def _fit_budget(self, budget: int, batch: int) -> list[str]:
        """The parameters of the most trailing layers (of the policy's choice) whose training fits ``budget``
        bytes at ``batch`` samples per step (binary search on the number of layers, one probe step each)."""
        chosen = set(self.trainable)
        layers = [ps for _, ps in parameter_layers(self.graph) if any(p in chosen for p in ps)]
        layers = [[p for p in ps if p in chosen] for ps in layers]
        if not layers:
            raise EdgeDLError("the policy selects no layer to train")

        def names(k):
            return [p for ps in layers[len(layers) - k:] for p in ps]

        def cost(k):
            b = self.estimate_bytes(names(k), batch)
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
        return names(lo)

    # -- tapes -------------------------------------------------------------------------------------------
    def _tape(self, shape: tuple[int, ...]) -> Tape:
        tape = self._tapes.get(shape)
        if tape is None:
            dtype = np.dtype(self.input.dtype)
            tape = Tape(self.graph, self.trainable, {self.input.name: TensorType(shape, dtype)}, self.output)
            self._tapes[shape] = tape
        return tape

    def _check_data(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x)
        y = np.asarray(y)
        want = np.dtype(self.input.dtype)
        if x.dtype != want:
            raise EdgeDLError(f"inputs must be {want.name}, got {x.dtype}")
        if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
            raise EdgeDLError(f"inputs and labels must have the same number of samples, got {x.shape} and {y.shape}")
        spec = self.input.shape
        if len(spec) != x.ndim or any(isinstance(d, int) and d != s for d, s in zip(spec[1:], x.shape[1:])):
            raise EdgeDLError(f"input {self.input.name!r} expects samples of shape {tuple(spec[1:])}, got "
                              f"{tuple(x.shape[1:])}")
        return np.ascontiguousarray(x), y

    # -- steps -------------------------------------------------------------------------------------------
    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """One optimizer step on a batch; returns (loss, model output)."""
        tape = self._tape(tuple(x.shape))
        outs, saved = tape.forward({self.input.name: x}, self.params)
        out = outs[self.output]
        loss, grad = self.loss(out, y)
        if not np.isfinite(loss):
            raise EdgeDLError(f"the loss is {loss} at step {self.step_count}: training stopped (lower the "
                              f"learning rate, clip gradients, or check the data)")
        grads = tape.backward(saved, grad)
        self.peak_bytes = max(self.peak_bytes, tape.peak_bytes)
        self.saved_bytes = max(self.saved_bytes, tape.saved_bytes)
        if self.clip_norm:
            clip_grad_norm(grads, self.clip_norm)
        self.optimizer.step(self.params, grads)
        self.step_count += 1
        return loss, out

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """The model output (the loss's output) for every sample, with the current weights."""
        x = np.ascontiguousarray(np.asarray(x))
        outs = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            o, _ = self._tape(tuple(xb.shape)).forward({self.input.name: xb}, self.params, keep=False)
            outs.append(o[self.output])
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    def evaluate(self, x, y, batch_size: int = 256) -> dict[str, float]:
        """{"loss", and for cross-entropy "accuracy"} over the whole set."""
        x, y = self._check_data(x, y)
        out = self.predict(x, batch_size)
        loss, _ = self.loss(out, y)
        res = {"loss": loss}
        if isinstance(self.loss, SoftmaxCrossEntropy):
            res["accuracy"] = float(np.mean(np.argmax(out, axis=1) == y))
        return res

    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, validation=None, callbacks=(), shuffle: bool = True,
            progress: bool = False, checkpoint=None, checkpoint_every: int = 0, resume: bool = False) -> History:
        """Train for ``epochs`` over (x, y) in batches (the last one smaller), then write the weights into the
        model (:meth:`commit`). ``validation``: (x, y) evaluated after every epoch. ``callbacks``: objects with
        ``on_epoch_end(trainer, epoch, logs) -> stop`` (e.g. :class:`EarlyStopping`).

        ``checkpoint``: a path written atomically at the end of every epoch and every ``checkpoint_every``
        steps (weights, optimizer state, position, history). ``resume=True`` continues from that file when it
        exists: the run ends with the same weights as one never interrupted (epoch ``e`` shuffles with a
        generator seeded by (seed, e), so the batches are the same)."""
        x, y = self._check_data(x, y)
        if epochs < 1 or batch_size < 1 or checkpoint_every < 0:
            raise EdgeDLError("epochs and batch_size must be >= 1, checkpoint_every >= 0")
        if validation is not None:
            validation = self._check_data(*validation)
        if (resume or checkpoint_every) and checkpoint is None:
            raise EdgeDLError("resume and checkpoint_every need a checkpoint path")
        is_ce = isinstance(self.loss, SoftmaxCrossEntropy)
        hist = History()
        n = len(x)
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
                    xb, yb = np.ascontiguousarray(x[idx]), y[idx]
                    loss, out = self.train_step(xb, yb)
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
    def save_checkpoint(self, path, epoch: int = 0, batch: int = 0, total: float = 0.0, correct: int = 0,
                        hist: History | None = None, batch_size: int = 0, samples: int = 0) -> None:
        """Write the weights, optimizer state and position (continue at ``epoch``, ``batch``) atomically."""
        from .checkpoint import write_checkpoint

        h = hist or History()
        meta = {"epoch": epoch, "batch": batch, "total": total, "correct": correct, "seed": self.seed,
                "step_count": self.step_count, "batch_size": batch_size, "samples": samples,
                "trainable": self.trainable, "history": {k: getattr(h, k) for k in
                                                         ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")}}
        write_checkpoint(path, self.params, self.optimizer.state_dict(), meta)

    def _restore(self, path, samples: int, batch_size: int):
        from .checkpoint import read_checkpoint

        params, opt_state, meta = read_checkpoint(path)
        if meta["trainable"] != self.trainable:
            raise EdgeDLError(f"{path} trains {meta['trainable']}, this trainer {self.trainable}")
        if meta["batch_size"] != batch_size or meta["samples"] != samples or meta["seed"] != self.seed:
            raise EdgeDLError(f"{path} was written by a run with batch_size {meta['batch_size']}, "
                              f"{meta['samples']} samples and seed {meta['seed']}: resume with the same ones")
        for name, value in params.items():
            if value.shape != self.params[name].shape:
                raise EdgeDLError(f"{path}: {name!r} has shape {value.shape}, the model {self.params[name].shape}")
            self.params[name][...] = value
        self.optimizer.load_state_dict(opt_state)
        self.step_count = int(meta["step_count"])
        hist = History(**{k: list(v) for k, v in meta["history"].items()})
        return int(meta["epoch"]), int(meta["batch"]), float(meta["total"]), int(meta["correct"]), hist

    def commit(self) -> None:
        """Write the current weights into the model (its plans are rebuilt on the next run)."""
        self.model.set_weights(self.params)
