"""What a :class:`~edgedl.Trainer` keeps on the CUDA device: the trained tensors, the running statistics, the
optimizer state, and the loss and update of each step.

The trainer's host dictionaries (``Trainer.params``, ``Trainer.buffers``) stay the public view: they are
refreshed from the device when read (:meth:`DeviceTraining.pull`), and a host view handed out may be edited
(EarlyStopping restoring its best weights, a user setting a tensor), so the next step uploads the host values
first (:meth:`DeviceTraining.push`). Between those points every step runs on the device: forward, loss,
backward, gradient clipping and the optimizer update, with one small copy back per step (the loss terms and
the model output the trainer reports).

The losses of :mod:`edgedl.train.losses` (cross-entropy without class weights, MSE, BCE with a scalar
``pos_weight``) and the optimizers of :mod:`edgedl.train.optim` (SGD, Adam, AdamW) have device forms; any other
loss or optimizer runs on the host around copies, with the same result.
"""
from __future__ import annotations

import math

import numpy as np

from .losses import MSE, BCEWithLogits, SoftmaxCrossEntropy
from .optim import SGD, Adam


class DeviceTraining:
    """Device copies of ``params`` and ``buffers`` (name -> float32 host array, updated in place by
    :meth:`pull`) and the optimizer's state, on ``stream``."""

    def __init__(self, params: dict, buffers: dict, stream, keep_on_host=()):
        from numba import cuda

        self.cuda, self.stream = cuda, stream
        self.host_params, self.host_buffers = params, buffers
        #: buffers that stay host values (Dropout seeds: scalars the host step reads)
        self.keep_on_host = set(keep_on_host)
        self.params = {k: cuda.to_device(np.ascontiguousarray(v), stream=stream) for k, v in params.items()}
        self.buffers = {k: cuda.to_device(np.asarray(v, order="C"), stream=stream) for k, v in buffers.items()
                        if k not in self.keep_on_host}
        #: optimizer state by tensor: {"v"} (SGD momentum) or {"m", "v"} (Adam)
        self.opt_state: dict[str, dict] = {}
        self._device_newer = False
        self._host_edited = False

    # -- host views ----------------------------------------------------------------------------------------
    def pull(self) -> None:
        """Copy the device tensors into the host arrays (when the device has moved on); the host arrays may
        be edited afterwards, so the next step pushes them."""
        if self._device_newer:
            self.stream.synchronize()
            for k, d in self.params.items():
                self.host_params[k][...] = d.copy_to_host()
            for k, d in self.buffers.items():
                self.host_buffers[k][...] = d.copy_to_host()
            self._device_newer = False
        self._host_edited = True

    def push(self) -> None:
        """Upload the host arrays when they may have been edited since the last pull."""
        if self._host_edited:
            for k, d in self.params.items():
                d.copy_to_device(np.ascontiguousarray(self.host_params[k]), stream=self.stream)
            for k, d in self.buffers.items():
                d.copy_to_device(np.asarray(self.host_buffers[k], order="C"), stream=self.stream)
            self._host_edited = False

    def values(self) -> dict:
        """Parameters and buffers as the tape takes them (device arrays; host-kept buffers from the host)."""
        self.push()
        values = dict(self.params)
        values.update(self.buffers)
        values.update({k: self.host_buffers[k] for k in self.keep_on_host if k in self.host_buffers})
        return values

    def to_host(self, value) -> np.ndarray:
        """A device array's values on the host, once the stream has produced them."""
        host = value.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return host

    def update_buffer(self, name: str, value) -> None:
        """A running statistic's new value (a device array of the buffer's shape)."""
        self.buffers[name].copy_to_device(value, stream=self.stream)
        self._device_newer = True

    # -- loss ------------------------------------------------------------------------------------------
    def loss(self, loss, out, target) -> tuple[float, object]:
        """(mean loss, gradient as a device array) of ``loss`` for the device output ``out``."""
        from ..kernels.cuda import train as T

        cuda, stream = self.cuda, self.stream
        kind = type(loss)
        device_form = ((kind is SoftmaxCrossEntropy and loss.weights is None) or kind is MSE
                       or (kind is BCEWithLogits and (loss.pos_weight is None or loss.pos_weight.size == 1)))
        if not device_form:
            stream.synchronize()
            value, grad = loss(out.copy_to_host(), target)
            return value, cuda.to_device(grad, stream=stream)
        t = loss.check(out, target)
        grad = cuda.device_array(tuple(out.shape), np.float32, stream=stream)
        if kind is SoftmaxCrossEntropy:
            terms = cuda.device_array(int(out.shape[0]), np.float32, stream=stream)
            T.softmax_cross_entropy(out, cuda.to_device(t, stream=stream), terms, grad, loss.eps, stream)
        else:
            terms = cuda.device_array(int(out.size), np.float32, stream=stream)
            tdev = cuda.to_device(np.ascontiguousarray(t, np.float32), stream=stream)
            if kind is MSE:
                T.mse(out, tdev, terms, grad, stream)
            else:
                pw = 1.0 if loss.pos_weight is None else float(loss.pos_weight.reshape(-1)[0])
                T.bce_with_logits(out, tdev, terms, grad, pw, stream)
        total = terms.copy_to_host(stream=stream)
        stream.synchronize()
        return float(total.astype(np.float64).sum() / max(total.size, 1)), grad

    # -- update ----------------------------------------------------------------------------------------------
    def clip(self, grads: dict, max_norm: float) -> float:
        """Scale the device gradients so their global L2 norm is at most ``max_norm`` (as
        :func:`~edgedl.train.optim.clip_grad_norm`); returns the norm before clipping."""
        from ..kernels.cuda import train as T

        total = math.sqrt(sum(T.sum_squares(g, self.stream) for g in grads.values()))
        if max_norm > 0 and total > max_norm:
            s = max_norm / (total + 1e-6)
            for g in grads.values():
                T.scale(g, s, self.stream)
        return total

    def step(self, optimizer, grads: dict) -> None:
        """One update of the device tensors by ``optimizer`` (its ``steps`` and schedule advance as on the
        host; an optimizer without a device form updates host copies that are uploaded again)."""
        from ..kernels.cuda import train as T

        lr = optimizer.current_lr()
        update = type(optimizer)._update
        if update is SGD._update:
            for name, p in self.params.items():
                g = grads.get(name)
                if g is None:
                    continue
                st = self.opt_state.setdefault(name, {})
                first = optimizer.momentum and "v" not in st
                if first:
                    st["v"] = self.cuda.device_array(p.shape, np.float32, stream=self.stream)
                T.sgd_step(p, g, st.get("v"), lr, optimizer.weight_decay, optimizer.momentum, optimizer.nesterov,
                           first, self.stream)
            optimizer.steps += 1
        elif update is Adam._update:
            for name, p in self.params.items():
                g = grads.get(name)
                if g is None:
                    continue
                st = self.opt_state.get(name)
                if st is None:
                    from ..kernels.cuda.grad import zeros

                    st = self.opt_state[name] = {"m": zeros(p.shape, self.stream), "v": zeros(p.shape, self.stream)}
                T.adam_step(p, g, st["m"], st["v"], lr, optimizer.weight_decay, optimizer.decoupled, optimizer.b1,
                            optimizer.b2, optimizer.steps + 1, optimizer.eps, self.stream)
            optimizer.steps += 1
        else:
            self.pull()
            optimizer.step(self.host_params, {k: g.copy_to_host() for k, g in grads.items()})
            self.push()
        self._device_newer = True

    def optimizer_to_host(self, optimizer) -> None:
        """Copy the device optimizer state into ``optimizer.state`` (what its ``state_dict`` saves)."""
        self.stream.synchronize()
        for name, st in self.opt_state.items():
            optimizer.state[name] = {k: v.copy_to_host() for k, v in st.items()}

    def optimizer_from_host(self, optimizer) -> None:
        """Upload ``optimizer.state`` (after ``load_state_dict``) as the device optimizer state."""
        self.opt_state = {name: {k: self.cuda.to_device(np.ascontiguousarray(v, np.float32), stream=self.stream)
                                 for k, v in st.items()} for name, st in optimizer.state.items()}
