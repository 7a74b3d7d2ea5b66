"""The training part of ``edgedl bench --train``: time training steps of one engine on one model.

:func:`train_bench` runs inside a fresh child process (one per engine): it builds one deterministic batch from
the model's input shape, trains the chosen tensors with Adam (lr 1e-3) on it, and returns one TRAIN entry of
the benchmark report. Engines:

* ``"edgedl"``: ``edgedl.Trainer(model, optimizer=Adam(lr=1e-3), trainable=policy, loss=...)``;
* ``"pytorch"``: the same ONNX graph and weights as a PyTorch module
  (:mod:`edgedl.benchmark.torch_from_onnx`), the same policy, ``torch.optim.Adam(lr=1e-3)``,
  ``zero_grad(set_to_none=True)`` at the start of each step.

A trailing Softmax is removed first (both engines then train the same logits; the cross-entropy loss takes
logits). Memory, after the method of ``benchmarks/bench_train.py``: a throwaway set-up runs the warm-up steps
first, so that JIT code, kernel caches and thread pools exist before the measured set-up is built; then
``training_peak_bytes`` is the highest resident set (``VmHWM``) during the timed steps of the measured set-up
minus its resident set once loaded (model and trainer or module + optimizer built, before any step): what
training adds to the loaded model at its peak (optimizer state, trained copies, the frozen prefix's arena,
activations, gradients, kernel workspaces). The peak is reset (``/proc/self/clear_refs``) after the warm-up
steps; where that is not allowed it counts only when the resident set reached a new high during the timed
steps; without ``/proc`` it is the growth of ``ru_maxrss`` over the timed steps (a lower bound); otherwise
None. Freed heap memory is returned to the system (glibc ``malloc_trim``) before each reading, so that what the
warm-up freed does not count.
"""
from __future__ import annotations

import gc
import os
import re
import sys
import time

import numpy as np

from .stats import latency_stats

__all__ = ["train_bench", "DEFAULTS"]

#: the spec's keys and their defaults (``engine`` and ``model`` have none)
DEFAULTS = {"trainable": "last:1", "batch": 32, "threads": 1, "steps": 20, "warmup": 3, "max_secs": 20.0,
            "loss": None, "seed": 0}
ENGINES = ("edgedl", "pytorch")
LOSSES = (None, "cross_entropy", "mse")
TORCH_MISSING = "torch is not installed (pip install torch)"


class BenchError(Exception):
    """A failure to report as ``status: "error"`` with this message."""


# -- the spec ------------------------------------------------------------------------------------------------
def _check_spec(spec: dict) -> dict:
    """The spec with defaults filled in; ValueError for a malformed one (a caller's mistake)."""
    if not isinstance(spec, dict):
        raise ValueError(f"spec must be a dict, got {type(spec).__name__}")
    unknown = set(spec) - set(DEFAULTS) - {"engine", "model"}
    if unknown:
        raise ValueError(f"unknown spec keys {sorted(unknown)}; known: engine, model, {', '.join(DEFAULTS)}")
    s = {**DEFAULTS, **spec}
    if s.get("engine") not in ENGINES:
        raise ValueError(f"spec engine must be one of {ENGINES}, got {s.get('engine')!r}")
    if not isinstance(s.get("model"), (str, os.PathLike)):
        raise ValueError(f"spec model must be a path, got {s.get('model')!r}")
    if not isinstance(s["trainable"], str) or not s["trainable"]:
        raise ValueError(f"spec trainable must be a policy string, got {s['trainable']!r}")
    for key, least in (("batch", 1), ("threads", 1), ("steps", 1), ("warmup", 0), ("seed", 0)):
        v = s[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            raise ValueError(f"spec {key} must be an integer >= {least}, got {v!r}")
    if not isinstance(s["max_secs"], (int, float)) or isinstance(s["max_secs"], bool) or not s["max_secs"] > 0:
        raise ValueError(f"spec max_secs must be a number > 0, got {s['max_secs']!r}")
    if s["loss"] not in LOSSES:
        raise ValueError(f"spec loss must be one of {LOSSES}, got {s['loss']!r}")
    return s


# -- the model and the batch ---------------------------------------------------------------------------------
def _read_model(path):
    """The ONNX proto of ``path`` (external data loaded), with a trailing Softmax removed."""
    from ..converters.onnx_import import read_model_proto
    from ..errors import EdgeDLError

    try:
        proto, base = read_model_proto(path)
    except EdgeDLError as e:
        raise BenchError(str(e)) from None
    if base is not None and any(t.data_location == 1 for t in proto.graph.initializer):  # EXTERNAL
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, str(base))
        except Exception as e:  # a missing or short external file
            raise BenchError(f"cannot read the external data of {path}: {e}") from None
    return _strip_softmax(proto)


def _strip_softmax(proto):
    """``proto`` itself, or a copy without its trailing Softmax: the first output becomes the Softmax's input
    (the logits). (Here rather than ``torch_from_onnx.strip_softmax``, which needs torch imported.)"""
    g = proto.graph
    if not g.node or not g.output:
        return proto
    last = g.node[-1]
    if last.op_type != "Softmax" or last.domain not in ("", "ai.onnx") or last.output[0] != g.output[0].name:
        return proto
    if any(last.output[0] == o.name for o in g.output[1:]) or last.input[0] in {o.name for o in g.output}:
        return proto
    m = type(proto)()
    m.CopyFrom(proto)
    del m.graph.node[-1]
    m.graph.output[0].name = last.input[0]
    return m


def _graph_inputs(proto) -> list:
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _input_shape(proto, batch: int) -> tuple[str, tuple[int, ...], np.dtype]:
    """The one input's name, its shape with the batch dimension set to ``batch``, and its dtype."""
    from onnx import helper

    inputs = _graph_inputs(proto)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise BenchError(f"the training benchmark takes models with one input; this one has {len(inputs)} "
                         f"({names})")
    vi = inputs[0]
    tt = vi.type.tensor_type
    if vi.type.WhichOneof("value") != "tensor_type" or not tt.HasField("shape") or not tt.shape.dim:
        raise BenchError(f"input {vi.name!r} has no declared shape: the training benchmark needs one")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except Exception:
        dtype = None
    if dtype is None or dtype.kind != "f":
        raise BenchError(f"input {vi.name!r} is of type {dtype or tt.elem_type}: the training benchmark makes "
                         "float inputs only")
    dims = list(tt.shape.dim)
    first = dims[0]
    if first.WhichOneof("value") == "dim_value" and first.dim_value > 0 and first.dim_value != batch:
        raise BenchError(f"input {vi.name!r} has a fixed batch dimension of {first.dim_value}, not the batch of "
                         f"{batch} asked for (export the model with a symbolic batch dimension, or ask for batch "
                         f"{first.dim_value})")
    shape = [batch]
    for i, d in enumerate(dims[1:], 1):
        if d.WhichOneof("value") != "dim_value" or d.dim_value <= 0:
            raise BenchError(f"input {vi.name!r} dimension {i} is {d.dim_param or 'unknown'}: the training "
                             "benchmark needs fixed sample dimensions")
        shape.append(int(d.dim_value))
    return vi.name, tuple(shape), dtype


def _output_info(proto, input_name: str, input_shape: tuple) -> tuple[tuple | None, bool]:
    """The first output's shape at this batch (None where a dimension is not known statically) and whether it
    is float, by ONNX shape inference on a copy with the input's batch dimension fixed."""
    import onnx

    m = type(proto)()
    m.CopyFrom(proto)
    for vi in m.graph.input:
        if vi.name == input_name:
            vi.type.tensor_type.shape.dim[0].Clear()
            vi.type.tensor_type.shape.dim[0].dim_value = input_shape[0]
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # an operator shape inference does not know: the declared shape is what there is
        pass
    out = m.graph.output[0]
    tt = out.type.tensor_type
    is_float = tt.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                                onnx.TensorProto.BFLOAT16) or tt.elem_type == 0
    if not tt.HasField("shape"):
        return None, is_float
    batch_param = next(vi.type.tensor_type.shape.dim[0].dim_param for vi in proto.graph.input
                       if vi.name == input_name)
    shape = []
    for d in tt.shape.dim:
        if d.WhichOneof("value") == "dim_value" and d.dim_value > 0:
            shape.append(int(d.dim_value))
        elif batch_param and d.dim_param == batch_param:
            shape.append(input_shape[0])
        else:
            shape.append(None)
    return tuple(shape), is_float


class _Batch:
    """One deterministic batch: inputs uniform in [0, 1) and, once the output's shape is known, the targets
    (from the same generator, so both engines get the same)."""

    def __init__(self, proto, batch: int, seed: int, loss: str | None):
        self.input_name, shape, dtype = _input_shape(proto, batch)
        self.rng = np.random.default_rng(seed)
        self.x = self.rng.uniform(0.0, 1.0, shape).astype(dtype)
        self.out_shape, self.out_float = _output_info(proto, self.input_name, shape)
        self.loss = loss
        self.y = None

    def known(self) -> bool:
        return self.out_shape is not None and None not in self.out_shape

    def targets(self, out_shape: tuple) -> tuple[str, np.ndarray]:
        """(loss name, targets) for an output of ``out_shape`` (int class labels for cross-entropy, normal
        floats of the output's shape for mse); the same on every call."""
        if self.y is None:
            out_shape = tuple(int(d) for d in out_shape)
            loss = self.loss
            if loss is None:
                loss = "cross_entropy" if len(out_shape) == 2 and out_shape[1] > 1 and self.out_float else "mse"
            if loss == "cross_entropy":
                if len(out_shape) != 2 or out_shape[1] < 2:
                    raise BenchError(f"the cross-entropy loss needs an output of shape [N, classes]; the model's "
                                     f"first output has shape {list(out_shape)} (use loss mse)")
                self.y = (loss, self.rng.integers(0, out_shape[1], out_shape[0]).astype(np.int64))
            else:
                self.y = (loss, self.rng.standard_normal(out_shape).astype(np.float32))
        return self.y


# -- memory --------------------------------------------------------------------------------------------------
def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` field (kB) in bytes, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """VmHWM := VmRSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) if sys.platform == "darwin" else int(kb) * 1024  # bytes on macOS, kB elsewhere


def _release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc), so RSS follows live memory."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class _PeakMeter:
    """Training peak = highest resident set during the timed steps - resident set of the loaded set-up."""

    def loaded(self) -> None:
        _release_memory()
        self.base = _status_bytes("VmRSS")
        self.base_maxrss = _maxrss_bytes()

    def start(self) -> None:
        _release_memory()
        self.reset = _reset_peak()
        self.hwm0 = _status_bytes("VmHWM")
        self.maxrss0 = _maxrss_bytes()

    def peak_growth(self) -> int | None:
        hwm = _status_bytes("VmHWM")
        if self.base is not None and hwm is not None and self.hwm0 is not None:
            if self.reset or hwm > self.hwm0:  # the peak is the timed steps' own
                return max(0, hwm - self.base)
            return None
        maxrss = _maxrss_bytes()
        if self.base is None and maxrss is not None and self.maxrss0 is not None and maxrss > self.maxrss0:
            return maxrss - max(self.maxrss0, self.base_maxrss or 0)  # growth of the peak: a lower bound
        return None


# -- the engines ---------------------------------------------------------------------------------------------
class _EdgedlSetup:
    """edgedl's trainer on the batch: ``step()``, ``trained_values``."""

    def __init__(self, proto, spec: dict, batch: _Batch):
        import edgedl
        from edgedl.train import Adam

        edgedl.set_num_threads(spec["threads"], follow_load=False)  # run at the count the report names
        model = edgedl.load(proto)
        if batch.known():
            out_shape = batch.out_shape
        else:  # the output's shape is known once it runs
            out_shape = model.run({batch.input_name: batch.x})[model.outputs[0].name].shape
        loss, y = batch.targets(out_shape)
        self.trainer = edgedl.Trainer(model, loss=loss, optimizer=Adam(lr=1e-3), trainable=spec["trainable"],
                                      seed=spec["seed"])
        self.trained_values = int(sum(p.size for p in self.trainer.params.values()))
        x, tr = batch.x, self.trainer
        self.step = lambda: tr.train_step(x, y)


class _TorchSetup:
    """The PyTorch module of the same graph: ``step()``, ``trained_values``."""

    def __init__(self, proto, spec: dict, batch: _Batch):
        import torch

        from .torch_from_onnx import OnnxModule, set_trainable, trainable_names

        torch.set_num_threads(spec["threads"])
        net = OnnxModule(proto)
        try:
            names = trainable_names(net, spec["trainable"])
        except ValueError:
            raise BenchError(f"PyTorch side: policy {spec['trainable']!r} is not supported by torch_from_onnx "
                             "(all or last:K)") from None
        if not names:
            raise BenchError(f"PyTorch side: policy {spec['trainable']!r} selects no tensor to train")
        params = set_trainable(net, names)
        xt = torch.from_numpy(batch.x)
        if batch.known():
            out_shape = batch.out_shape
        else:
            with torch.no_grad():
                out_shape = tuple(net(xt).shape)
        loss, y = batch.targets(out_shape)
        yt = torch.from_numpy(y)
        lossf = torch.nn.functional.cross_entropy if loss == "cross_entropy" else torch.nn.functional.mse_loss
        opt = torch.optim.Adam(params, lr=1e-3)
        self.trained_values = int(sum(p.numel() for p in params))

        def step():
            opt.zero_grad(set_to_none=True)
            value = lossf(net(xt), yt)
            value.backward()
            opt.step()
        self.step = step


def _setup(proto, spec: dict, batch: _Batch):
    if spec["engine"] == "edgedl":
        return _EdgedlSetup(proto, spec, batch)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BenchError(TORCH_MISSING) from None
    try:
        return _TorchSetup(proto, spec, batch)
    except NotImplementedError as e:
        raise BenchError(_torch_unsupported(str(e))) from None


def _torch_unsupported(msg: str) -> str:
    m = re.search(r"operator (\S+) is not supported", msg)
    what = f"operator {m.group(1)}" if m else msg.removeprefix("torch_from_onnx: ")
    return f"PyTorch side: {what} is not supported by torch_from_onnx"


def _run_steps(step, count: int, max_secs: float) -> list[float]:
    """Per-step seconds of up to ``count`` steps, stopping once ``max_secs`` have passed (at least one step)."""
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > max_secs:
            break
    return times


# -- the benchmark ------------------------------------------------------------------------------------------
def _result(s: dict) -> dict:
    return {"engine": s["engine"], "trainable": s["trainable"], "batch": s["batch"], "threads": s["threads"],
            "status": "error", "error": None, "steps": 0, "step_ms": None, "samples_per_s": None,
            "training_peak_bytes": None, "trained_values": None}


def train_bench(spec: dict) -> dict:
    """Time training steps of one engine on one model; returns the report's TRAIN entry.

    ``spec``: ``engine`` ("edgedl" or "pytorch"), ``model`` (an ONNX file with one float input whose batch
    dimension is symbolic or equal to ``batch``), and optionally ``trainable`` (policy, "last:1"), ``batch``
    (32), ``threads`` (1), ``steps`` (20 timed steps), ``warmup`` (3 steps before them), ``max_secs`` (20.0:
    the timed steps, and each warm-up, stop once this is exceeded, after at least one step), ``loss``
    ("cross_entropy", "mse" or None: cross-entropy when the first output is float [N, C] with C > 1, else
    mse) and ``seed`` (0: the batch's generator and the trainer's seed).

    The batch is the same for both engines: inputs uniform in [0, 1), then int labels in [0, C) for
    cross-entropy or standard-normal targets of the output's shape for mse, all from
    ``numpy.random.default_rng(seed)``.

    Returns ``{"engine", "trainable", "batch", "threads", "status": "ok"|"error", "error", "steps" (timed
    steps run), "step_ms" (latency summary, :func:`edgedl.benchmark.stats.latency_stats`), "samples_per_s"
    (batch / mean step seconds), "training_peak_bytes" (see the module notes; None where it cannot be
    measured), "trained_values" (scalars trained)}``. A model or engine that cannot train (a bad or unsuited
    model, torch missing, an operator torch_from_onnx lacks, a failing step) gives ``status "error"`` and the
    reason in ``error``; only a malformed ``spec`` raises (ValueError).
    """
    s = _check_spec(spec)
    res = _result(s)
    try:
        _measure(s, res)
        res["status"] = "ok"
    except BenchError as e:
        res["error"] = str(e)
    except Exception as e:  # an engine failing on this model: reported, the other engines still run
        from ..errors import EdgeDLError

        side = "PyTorch side: " if s["engine"] == "pytorch" else ""
        res["error"] = side + (str(e) if isinstance(e, EdgeDLError) else f"{type(e).__name__}: {e}")
    if res["status"] != "ok":
        res.update(step_ms=None, samples_per_s=None, training_peak_bytes=None)
    return res


def _measure(s: dict, res: dict) -> None:
    proto = _read_model(s["model"])
    batch = _Batch(proto, s["batch"], s["seed"], s["loss"])
    if s["warmup"]:
        # a throwaway set-up first: JIT code, kernel caches and thread pools then exist before the measured
        # set-up, and do not count as training memory
        warm = _setup(proto, s, batch)
        _run_steps(warm.step, s["warmup"], s["max_secs"])
        del warm
    meter = _PeakMeter()
    run = _setup(proto, s, batch)
    res["trained_values"] = run.trained_values
    meter.loaded()
    if s["warmup"]:
        _run_steps(run.step, s["warmup"], s["max_secs"])
    meter.start()
    times = _run_steps(run.step, s["steps"], s["max_secs"])
    res["training_peak_bytes"] = meter.peak_growth()
    res["steps"] = len(times)
    res["step_ms"] = latency_stats(times)
    res["samples_per_s"] = s["batch"] / (sum(times) / len(times))
