"""The training tape on a CUDA device: the forward and backward of a :class:`~edgedl.train.tape.Tape` with every
value (activations, saved values, gradients, parameters) in device memory.

A :class:`CudaTape` is built from a host tape (its steps, types, folded constants, gradient marking and the
plan of what to keep and when to free it) and adds, per step,

* forward: the op's CUDA kernel (``Op.build_cuda``, outputs allocated on the device), a device reshape for a
  view (Reshape, Flatten, ...), or, where the op has no CUDA kernel for its types, a *host step*: inputs copied
  to the host, the host tape's CPU kernel, outputs copied back;
* backward: the op's device backward (``Op.backward_cuda``), the gradient reshaped back for a view, or a host
  step around ``Op.backward``.

Everything is launched on one stream; host steps synchronize it. :meth:`host_steps` lists the host steps of
both directions (a model whose trained layers are all Conv / Gemm / MatMul / BatchNormalization / pooling /
activations / Add / Mul / Softmax has none). Feeds and parameters may be numpy arrays (copied in) or device
arrays (used in place); results are device arrays. ``peak_bytes`` and ``saved_bytes`` count device memory as
the host tape counts host memory.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from .tape import Saved, Tape, _Memory


def _is_device(a) -> bool:
    return hasattr(a, "copy_to_host") or hasattr(a, "__cuda_array_interface__")


def _to_host(a):
    if a is None or isinstance(a, np.ndarray):
        return a
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    from numba import cuda

    return cuda.as_cuda_array(a).copy_to_host()


class _DeviceMemory(_Memory):
    """Live device bytes: an array counts as the allocation at its start address (views share it); host values
    (Dropout seeds) are not counted."""

    def _key_and_size(self, a):
        if not _is_device(a):
            return None
        return _address(a), int(a.size) * np.dtype(a.dtype).itemsize


class CudaTape:
    """A host :class:`Tape`'s forward and backward on the CUDA device (see the module docstring)."""

    def __init__(self, tape: Tape, stream=None):
        from numba import cuda

        self.tape = tape
        self.cuda = cuda
        self.stream = stream if stream is not None else cuda.stream()
        self.params, self.buffers, self.loss_output = tape.params, tape.buffers, tape.loss_output
        self.types, self.input_types, self.graph = tape.types, tape.input_types, tape.graph
        #: folded constants on the device (numeric arrays; anything else stays on the host)
        self.consts = {k: cuda.to_device(np.asarray(v, order="C"), stream=self.stream) if _uploadable(v) else v
                       for k, v in tape.consts.items()}
        self.forward_kernels = []
        for s in tape.steps:
            kernel = None
            if not s.op.alias:
                ins_t = [tape.types[i] if i else None for i in s.node.inputs]
                outs_t = list(s.op.out_types)
                cvals = [tape.consts.get(i) if i else None for i in s.node.inputs]
                kernel = s.op.build_cuda(ins_t, outs_t, cvals)
            self.forward_kernels.append(kernel)
        #: steps whose backward ran on the host (filled as the backward meets them)
        self._host_backward: set[int] = set()
        self.stream.synchronize()
        self.peak_bytes = 0
        self.saved_bytes = 0

    # -- description -----------------------------------------------------------------------------------
    def host_steps(self) -> list[str]:
        """Nodes whose forward, or whose backward in the steps run so far, runs on the host."""
        out = [f"{s.node.describe()} (forward)" for s, k in zip(self.tape.steps, self.forward_kernels)
               if k is None and not s.op.alias]
        out += [f"{self.tape.steps[i].node.describe()} (backward)" for i in sorted(self._host_backward)]
        return out

    # -- running -----------------------------------------------------------------------------------------
    def _device(self, value, dtype=None):
        """A device array of a numpy or device value (numpy copied in on the stream)."""
        if value is None:
            return None
        if hasattr(value, "copy_to_host"):
            return value
        if _is_device(value):
            return self.cuda.as_cuda_array(value)
        if not _uploadable(value):
            return value
        return self.cuda.to_device(np.asarray(value, dtype, order="C"), stream=self.stream)

    def forward(self, feeds: dict, params: dict, keep: bool = True) -> tuple[dict, Saved]:
        """Graph outputs (device arrays) and the values the backward needs (``keep=False``: inference only);
        ``params`` holds the parameters and buffers (numpy or device arrays)."""
        tape = self.tape
        values: dict = dict(self.consts)
        mem = _DeviceMemory()
        for name, t in self.input_types.items():
            x = feeds[name]
            if tuple(x.shape) != tuple(t.shape) or np.dtype(x.dtype) != np.dtype(t.dtype):
                raise EdgeDLError(f"input {name!r} must be {np.dtype(t.dtype).name}{tuple(t.shape)}, got "
                                  f"{np.dtype(x.dtype)}{tuple(x.shape)}")
            values[name] = self._device(x)
        values.update({k: self._device(v) for k, v in params.items()})
        last_use = tape._last_use
        outputs = {s.name for s in self.graph.outputs}
        runtime = set(params) | set(self.input_types)
        for idx, (s, kernel) in enumerate(zip(tape.steps, self.forward_kernels)):
            ins = [values[i] if i else None for i in s.node.inputs]
            if s.op.alias:
                outs = [ins[0].reshape(tuple(s.op.out_types[0].shape))]
            elif kernel is not None:
                outs = [self.cuda.device_array(tuple(t.shape), t.dtype, stream=self.stream) for t in s.op.out_types]
                kernel.fn(ins, outs, self.stream)
            else:
                outs = self._host_forward(s, ins)
            for o, v in zip(s.node.outputs, outs):
                if o:
                    values[o] = v
                    mem.add(v)
            for i in set(s.node.inputs):
                if i and last_use.get(i) == idx and i not in outputs and not (keep and i in tape.saved_names) \
                        and i not in self.consts and i not in runtime:
                    mem.drop(values.pop(i))
        self._mem = mem
        result = {s.name: values[s.name] for s in self.graph.outputs}
        saved = {k: values[k] for k in tape.saved_names if k in values} if keep else {}
        self.saved_bytes = sum(int(v.size) * np.dtype(v.dtype).itemsize for k, v in saved.items()
                               if k not in params and k not in self.consts and _is_device(v))
        return result, Saved(saved)

    def _host_forward(self, s, ins: list) -> list:
        self.stream.synchronize()
        host_ins = [_to_host(v) for v in ins]
        outs = [np.empty(t.shape, t.dtype) for t in s.op.out_types]
        scratch = np.empty(s.kernel.scratch_bytes, np.uint8)
        s.kernel.fn(host_ins, outs, scratch)
        return [self._device(o) for o in outs]

    def backward(self, saved: Saved, grad_output) -> dict:
        """The gradient of every parameter (device arrays) from the gradient of the loss with respect to
        ``loss_output`` (numpy or device): the host tape's walk (:meth:`Tape.backward`), with gradients made and
        summed on the device (the three methods below). Consumes ``saved`` as the host tape does."""
        grads = self.tape.backward(saved, grad_output, via=self, mem=getattr(self, "_mem", None) or _DeviceMemory())
        self.peak_bytes = self.tape.peak_bytes
        return grads

    def gradient(self, g):
        return self._device(g, np.float32)

    def input_gradients(self, idx: int, s, gouts, ins, outs) -> list:
        """One op's input gradients on the device: a view's reshaped, ``Op.backward_cuda``, else ``Op.backward``
        on the host between transfers."""
        if s.op.alias:
            return [gouts[0].reshape(tuple(self.types[s.node.inputs[0]].shape))] + [None] * (len(ins) - 1)
        gins = s.op.backward_cuda(gouts, ins, outs, s.needs, self.stream)
        if gins is not None:
            return gins
        self._host_backward.add(idx)
        self.stream.synchronize()
        host = s.op.backward([_to_host(g) for g in gouts], [_to_host(v) for v in ins], [_to_host(v) for v in outs],
                             s.needs)
        return [self._device(g, np.float32) if g is not None else None for g in host]

    def add(self, a, b):
        from ..kernels.cuda.grad import add

        return add(a, b, self.stream)


def _address(a) -> int:
    """The device address an array starts at (the simulator's arrays: their host buffer's)."""
    try:
        return a.__cuda_array_interface__["data"][0]
    except AttributeError:
        return a._ary.__array_interface__["data"][0]  # numba's CUDA simulator


def _uploadable(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype != object and v.dtype.kind in "biuf"
