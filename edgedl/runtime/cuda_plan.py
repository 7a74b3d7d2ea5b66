"""Run a plan on a CUDA device: the host plan's steps, shapes, folded constants and arena layout, with device
memory and CUDA kernels.

:class:`CudaPlan` is built from a host :class:`~edgedl.runtime.plan.Plan` (one per binding of input shapes):

* one device arena laid out like the host arena (the same liveness planner's offsets), constants uploaded
  once, a device buffer per input and per output;
* every step whose op has a CUDA kernel for its types (``Op.build_cuda``) launches it on the plan's stream,
  back to back, with no host round trip;
* a step without one becomes a *host step*: its inputs are copied to the host, the op's CPU kernel (or, for
  control flow and other eager ops, its reference) runs there, and its outputs are copied back.
  :meth:`CudaPlan.host_steps` lists them (``edgedl info --device cuda`` prints them);
* views (Reshape, Flatten, Squeeze...) are device reshapes; the nodes after a data-dependent cut run on the
  host plan's tail with the results copied to the host.

Feeds may be numpy arrays (copied in) or device arrays (anything with ``__cuda_array_interface__``: numba
device arrays, CuPy, PyTorch CUDA tensors), used in place when C-contiguous and of the right shape and dtype.

``half=True`` stores every float32 tensor (activations, weights, inputs and outputs) as float16 on the device,
halving memory and memory traffic; the kernels read float16 and compute in float32 (every float kernel converts
its operands), so no GPU feature beyond float16 conversion is needed. numpy feeds are converted on the host,
float32 device feeds by a cast kernel, and outputs come back as float32. The float16 arena is the host arena's
layout at half the offsets (every float32 tensor halves, so none overlap); tensors of other types keep their
own arena at the host offsets.

On a GPU that shares the host's memory (a Jetson: the device's ``INTEGRATED`` attribute), the input and output
buffers are *mapped* host memory (``cuda.mapped_array``, zero-copy): feeding writes the host buffer the
kernels read, and results are read where the kernels wrote them, with no copy engine in between; weights and
activations stay in device memory.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..model import is_device_array
from .plan import Plan, Step, StepTime


class CudaStep:
    """One step of a CUDA plan: ``kind`` is "cuda", "host" or "view"."""

    __slots__ = ("step", "kind", "kernel")

    def __init__(self, step: Step, kind: str, kernel=None):
        self.step, self.kind, self.kernel = step, kind, kernel


class CudaPlan:
    """A host plan's steps on the device (see the module docstring)."""

    def __init__(self, host: Plan, ops: dict, zero_copy: bool | None = None, half: bool = False):
        from numba import cuda

        from ..kernels.cuda import device_info

        #: inputs and outputs in mapped host memory (default: on integrated GPUs, see the module docstring)
        self.zero_copy = bool(device_info()["integrated"]) if zero_copy is None else bool(zero_copy)
        #: float32 tensors stored as float16 on the device (see the module docstring)
        self.half = bool(half)
        self.host = host
        self.cuda = cuda
        self.stream = cuda.stream()
        self.lock = threading.Lock()
        template = host.template
        _check_device_memory(cuda, self.device_bytes_needed(host) // (2 if self.half else 1))
        arena_ptr = host.arena.__array_interface__["data"][0]
        arena_end = arena_ptr + host.arena.nbytes
        in_arena = [(v, v.__array_interface__["data"][0] - arena_ptr) for v in template
                    if isinstance(v, np.ndarray) and v.dtype != object and v.nbytes
                    and arena_ptr <= v.__array_interface__["data"][0] < arena_end]
        halved = [(v, off) for v, off in in_arena if self._halves(v.dtype)]
        others = [(v, off) for v, off in in_arena if not self._halves(v.dtype)]
        self.arena = cuda.device_array(max(max((off + v.nbytes for v, off in others), default=0), 1), np.uint8)
        self.arena16 = cuda.device_array(max(max(((off + v.nbytes) // 2 for v, off in halved), default=0), 1),
                                         np.uint8) if self.half else None
        inputs = {idx for _, idx, _ in host.input_slots}
        produced = {o for step in host.steps for o in step.outs}
        # outputs some step writes (a constant or input that is also an output keeps its own value)
        outputs = {idx for _, idx, _ in host.outputs if idx in produced} | {idx for idx, _, _ in host.fresh_outputs}
        self.template: list = [None] * len(template)
        self.constant_bytes = 0
        constants: set[int] = set()  # slots whose host value is a constant (what build_cuda may read)
        for idx, value in enumerate(template):
            if not isinstance(value, np.ndarray) or value.dtype == object:
                continue
            ptr = value.__array_interface__["data"][0]
            if arena_ptr <= ptr < arena_end and value.nbytes:  # an arena tensor: the same offset on the device
                off = ptr - arena_ptr
                if self._halves(value.dtype):
                    raw = self.arena16[off // 2:off // 2 + value.nbytes // 2]
                    self.template[idx] = raw.view(np.float16).reshape(value.shape)
                else:
                    raw = self.arena[off:off + value.nbytes]
                    self.template[idx] = raw.view(value.dtype).reshape(value.shape)
            elif idx in inputs or idx in outputs:
                continue  # device buffers of their own, below
            else:
                stored = np.ascontiguousarray(value, self._stored(value.dtype))
                self.template[idx] = cuda.to_device(stored, stream=self.stream)
                self.constant_bytes += stored.nbytes
                constants.add(idx)
        self.inputs = []
        for name, idx, _ in host.input_slots:
            t = host.types[name]
            self.inputs.append((name, idx, t, self._io_buffer(t)))
        self.outputs = []
        for name, idx, _ in host.outputs:
            t = host.types[name]
            if isinstance(t, TensorType) and t.dtype != object and self.template[idx] is None:
                self.template[idx] = self._io_buffer(t)
            self.outputs.append((name, idx))
        self.steps: list[CudaStep] = []
        for step in host.steps:
            if step.view_shape is not None:
                self.steps.append(CudaStep(step, "view"))
                continue
            kernel = None
            if not step.eager:
                ins_t = [host.types[i] if i else None for i in step.node.inputs]
                outs_t = [host.types[o] for o in step.node.outputs if o]
                consts = [template[i] if i in constants else None for i in step.ins]
                kernel = step.op.build_cuda(ins_t, outs_t, consts)
            self.steps.append(CudaStep(step, "cuda" if kernel is not None else "host", kernel))
        self.stream.synchronize()

    def _halves(self, dtype) -> bool:
        return self.half and np.dtype(dtype) == np.float32

    def _stored(self, dtype) -> np.dtype:
        """The device storage type of a host type."""
        return np.dtype(np.float16) if self._halves(dtype) else np.dtype(dtype)

    def _io_buffer(self, t: TensorType):
        dtype = self._stored(t.dtype)
        if self.zero_copy:
            return self.cuda.mapped_array(t.shape, dtype)
        return self.cuda.device_array(t.shape, dtype, stream=self.stream)

    def _cast(self, src, dtype):
        """A device copy of ``src`` as ``dtype`` (a cast kernel)."""
        from ..kernels.cuda.copy import StridedCopy, contiguous_strides

        dst = self.cuda.device_array(src.shape, dtype, stream=self.stream)
        strides = contiguous_strides(src.shape)
        StridedCopy(src.shape, strides, strides)(src, dst, self.stream)
        return dst

    @staticmethod
    def device_bytes_needed(host: Plan) -> int:
        """Device memory a plan needs: its arena, its constants, and a buffer per input and output."""
        total = host.arena_bytes
        for value in host.template:
            if isinstance(value, np.ndarray) and value.dtype != object:
                total += value.nbytes  # constants (arena views are counted twice: an upper bound)
        for name in list(host.input_types) + [n for n, _, _ in host.outputs]:
            t = host.types.get(name)
            if isinstance(t, TensorType) and t.dtype != object:
                total += t.nbytes
        return int(total)

    # --- description -------------------------------------------------------------------------------
    def host_steps(self) -> list[str]:
        """The nodes that run on the host between transfers (no CUDA kernel for their types)."""
        return [s.step.node.describe() for s in self.steps if s.kind == "host"]

    def kernel_impls(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s.kind] = counts.get(s.kind, 0) + 1
        return counts

    @property
    def arena_bytes(self) -> int:
        return self.host.arena_bytes

    # --- running -----------------------------------------------------------------------------------
    def run(self, feeds: dict, outputs: str = "host", profile: list | None = None) -> dict:
        """Run on ``feeds``; outputs as numpy arrays (``outputs="host"``) or device arrays (``"device"``).
        With a ``profile`` list, the stream is synchronized after every step and each step's wall time is
        appended as a :class:`~edgedl.runtime.plan.StepTime` (kernel ``"cuda <dtype>"`` or ``"host <dtype>"``
        for a host step, transfers included): the per-step costs, not the overlapped run."""
        cuda, stream = self.cuda, self.stream
        clock = time.perf_counter
        with self.lock:
            slots = list(self.template)
            for name, idx, t, buf in self.inputs:
                value = feeds[name]
                if is_device_array(value):
                    dev = value if hasattr(value, "copy_to_host") else cuda.as_cuda_array(value)
                    contiguous = dev.is_c_contiguous() if hasattr(dev, "is_c_contiguous") else True
                    if tuple(dev.shape) != tuple(t.shape) or np.dtype(dev.dtype) != np.dtype(t.dtype) or not contiguous:
                        raise EdgeDLError(f"input '{name}': a device array of shape {tuple(dev.shape)} and dtype "
                                          f"{np.dtype(dev.dtype).name} (C-contiguous: {contiguous}); the plan "
                                          f"takes {tuple(t.shape)} {np.dtype(t.dtype).name}, C-contiguous")
                    slots[idx] = self._cast(dev, buf.dtype) if np.dtype(buf.dtype) != np.dtype(dev.dtype) else dev
                else:
                    if isinstance(buf, np.ndarray):  # mapped host memory: a host copy, no transfer
                        np.copyto(buf, value, casting="unsafe")
                    else:
                        buf.copy_to_device(np.ascontiguousarray(value, buf.dtype), stream=stream)
                    slots[idx] = buf
            if profile is not None:
                stream.synchronize()
            for cstep in self.steps:
                step = cstep.step
                t0 = clock() if profile is not None else 0.0
                if cstep.kind == "cuda":
                    cstep.kernel.fn([slots[i] if i >= 0 else None for i in step.ins],
                                    [slots[o] for o in step.outs], stream)
                elif cstep.kind == "view":
                    slots[step.outs[0]] = slots[step.ins[0]].reshape(step.view_shape)
                    continue
                else:
                    self._run_on_host(step, slots)
                if profile is not None:
                    stream.synchronize()
                    profile.append(StepTime(step.node, self._label(cstep), clock() - t0))
            results = {}
            if self.zero_copy:
                stream.synchronize()  # mapped outputs are read by the host below
            for name, idx in self.outputs:
                value = slots[idx]
                want = getattr(self.host.types.get(name), "dtype", None)
                if not hasattr(value, "copy_to_host"):
                    results[name] = value  # a host value (a sequence, a string tensor) from a host step
                elif outputs == "device":
                    if want is not None and np.dtype(value.dtype) != np.dtype(want):
                        results[name] = self._cast(value, want)  # float16 storage, float32 result
                    else:
                        copy = cuda.device_array(value.shape, value.dtype, stream=stream)
                        copy.copy_to_device(value, stream=stream)
                        results[name] = copy
                elif self.zero_copy and isinstance(value, np.ndarray):
                    results[name] = np.array(value, want)  # mapped host memory: the kernels wrote it in place
                else:
                    results[name] = value.copy_to_host(stream=stream)
            stream.synchronize()
            for name, value in results.items():
                want = getattr(self.host.types.get(name), "dtype", None)
                if isinstance(value, np.ndarray) and want is not None and value.dtype != want:
                    results[name] = value.astype(want)
            if self.host.tail is not None:
                host_results = {k: v.copy_to_host() if hasattr(v, "copy_to_host") else v for k, v in results.items()}
                tail_feeds = {n: _to_host(feeds[n]) for n in self.host.tail.feeds_from_inputs}
                tail_feeds.update(host_results)
                results = self.host.tail.run(tail_feeds)
                if outputs == "device":
                    results = {k: cuda.to_device(v) if isinstance(v, np.ndarray) else v for k, v in results.items()}
            return results

    def _label(self, cstep: CudaStep) -> str:
        out = next((o for o in cstep.step.node.outputs if o), None)
        t = self.host.types.get(out)
        dtype = getattr(t, "dtype", None)
        name = "" if dtype is None or np.dtype(dtype).kind == "O" else f" {np.dtype(dtype).name}"
        return f"{cstep.kind}{name}"

    def _run_on_host(self, step: Step, slots: list) -> None:
        """One node on the host: inputs copied out, the CPU kernel (or the eager op's reference), outputs in."""
        stream = self.stream
        stream.synchronize()
        types = self.host.types
        ins = [_to_host(slots[i]) if i >= 0 else None for i in step.ins]
        ins = [v.astype(types[n].dtype) if isinstance(v, np.ndarray) and n and isinstance(types.get(n), TensorType)
               and v.dtype != types[n].dtype else v for v, n in zip(ins, step.node.inputs)]
        names = [o for o in step.node.outputs if o]
        if step.eager:
            values = step.op.ref(*ins)
            present = [v for v, o in zip(values, step.node.outputs) if o]
        else:
            present = [np.empty(types[o].shape, types[o].dtype) for o in names]
            scratch = np.empty(step.kernel.scratch_bytes, np.uint8)
            step.kernel.fn(ins, present, scratch)
        for slot, value in zip(step.outs, present):
            if not isinstance(value, np.ndarray) or value.dtype == object:
                slots[slot] = value  # sequences, optionals and strings stay on the host
                continue
            value = np.ascontiguousarray(value, self._stored(value.dtype))
            target = slots[slot]
            if target is not None and hasattr(target, "copy_to_device") and tuple(target.shape) == value.shape:
                target.copy_to_device(value, stream=stream)
            else:
                slots[slot] = self.cuda.to_device(value, stream=stream)


def _to_host(value):
    if hasattr(value, "copy_to_host"):
        return value.copy_to_host()
    if is_device_array(value):
        from numba import cuda

        return cuda.as_cuda_array(value).copy_to_host()
    return value


def _check_device_memory(cuda, needed: int) -> None:
    """An EdgeDLError naming the bytes needed and free when the plan cannot fit in the GPU's free memory."""
    try:
        free, total = cuda.current_context().get_memory_info()
    except Exception:  # noqa: BLE001 - a context that cannot say: the allocations themselves will tell
        return
    if needed > free:
        raise EdgeDLError(f"the model needs about {needed / 2**20:.1f} MiB of GPU memory (arena, weights, inputs and "
                          f"outputs) but {free / 2**20:.1f} MiB of {total / 2**20:.1f} MiB are free: run it on the "
                          "CPU (device='cpu'), with smaller inputs, or after freeing GPU memory")
