"""One benchmark process: one engine, one precision, one thread count, alone in a fresh interpreter.

The orchestrator (:mod:`edgedl.benchmark.orchestrate`) starts it as a script::

    python .../edgedl/benchmark/worker.py SPEC.json RESULT.json

It is run by path, not as ``python -m edgedl.benchmark.worker``: importing the ``edgedl`` package imports
Numba, which the onnxruntime and TFLite processes must not pay for (their import time, start-up and resident
memory are measured). So this file imports only the standard library and numpy at the top, and each engine
imports its runtime when it starts. ``SPEC["mode"]``:

* ``"run"``: load the model, run it once (first inference), warm up, time single runs until ``runs`` or
  ``max_secs``, then (``op_profile``) profiled runs; write the outputs of the first inference to
  ``SPEC["outputs"]`` and the measurements to RESULT (raw: :mod:`edgedl.benchmark.orchestrate` turns them
  into the report's run entries).
* ``"describe"``: the engine's view of the model's inputs (for ``.tflite`` files).
* ``"quantize"``: ``edgedl.quantize`` the model (calibrated on ``SPEC["calibration"]``) to a QDQ file.
* ``"train"``: :func:`edgedl.benchmark.training.train_bench`.

Whatever happens, RESULT is written: an exception becomes ``status: "error"`` with its message, Ctrl-C
(SIGINT, which the terminal sends to the whole process group) ``status: "interrupted"`` with the runs timed so
far. A crash that kills the interpreter (a segfault) leaves no RESULT; the orchestrator reports its signal.
"""
from __future__ import annotations

import json
import os
import sys
import time

_T_START = time.perf_counter()

import numpy as np  # noqa: E402

#: key of the name list in the .npz files this module writes (array names can be anything, even "file")
_NAMES = "__names__"


# ---------------------------------------------------------------------------------------------------
# arrays on disk
# ---------------------------------------------------------------------------------------------------
def save_arrays(path: str, arrays: dict) -> None:
    """Write named arrays to an .npz under positional keys plus their names (any string is a valid name)."""
    names = list(arrays)
    payload = {}
    for i, n in enumerate(names):
        a = np.asarray(arrays[n])
        payload[f"a{i}"] = a.astype(str) if a.dtype == object else a  # string tensors: no pickles on disk
    payload[_NAMES] = np.array(names, dtype=str)
    with open(path, "wb") as f:
        np.savez(f, **payload)


def load_arrays(path: str) -> dict:
    """Read what :func:`save_arrays` wrote."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data[_NAMES]] if _NAMES in data.files else []
        return {n: data[f"a{i}"] for i, n in enumerate(names)}


# ---------------------------------------------------------------------------------------------------
# measurements of this process
# ---------------------------------------------------------------------------------------------------
def peak_rss_bytes() -> int | None:
    """The process's peak resident set (VmHWM), or None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError, ValueError):
        return None


def machine_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (/proc/stat's "cpu" line without idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        if fields[0] != "cpu":
            return None
        ticks = [int(v) for v in fields[1:]]
        busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
        return busy / (os.sysconf("SC_CLK_TCK") or 100)
    except (OSError, ValueError, IndexError):
        return None


class CompileClock:
    """Wall time Numba spends compiling (its ``numba:compile`` events, outermost ones only): what a cold
    Numba cache adds to edgedl's init and first inference. Loads from the on-disk cache are not compiles."""

    def __init__(self):
        self.seconds = 0.0
        self._depth = 0
        self._t0 = 0.0
        from numba.core import event

        clock = self

        class _Listener(event.Listener):
            def on_start(self, ev):
                if clock._depth == 0:
                    clock._t0 = time.perf_counter()
                clock._depth += 1

            def on_end(self, ev):
                clock._depth -= 1
                if clock._depth == 0:
                    clock.seconds += time.perf_counter() - clock._t0

        event.register("numba:compile", _Listener())


# ---------------------------------------------------------------------------------------------------
# engines: load(), run(feeds) -> outputs, and what each can say about itself
# ---------------------------------------------------------------------------------------------------
class EdgedlEngine:
    name = "edgedl"

    def __init__(self, spec: dict):
        self.spec = spec
        self.compile = None

    def import_runtime(self) -> None:
        import edgedl

        self.edgedl = edgedl
        self.compile = CompileClock()

    def load(self) -> None:
        target = self.spec.get("target")
        self.model = self.edgedl.load(self.spec["model"], target=target, num_threads=self.spec["threads"],
                                      device=self.spec.get("device") or "cpu")

    def run(self, feeds: dict) -> dict:
        return self.model.run(feeds)

    def profile(self, feeds: dict) -> list:
        steps: list = []
        self.model.run(feeds, profile=steps)
        return [(s.scope + s.node.name, s.node.op_type, s.kernel, s.seconds) for s in steps]

    def facts(self, feeds: dict) -> dict:
        from edgedl.runtime.warmup import kernel_cache_stats

        shapes = {n: a.shape for n, a in feeds.items()}
        try:
            arena = int(self.model.plan(shapes, values=feeds).arena_bytes)
        except Exception:  # noqa: BLE001 - a plan built only at run time (data-dependent): no single arena
            arena = None
        from edgedl.kernels.cpu.config import num_threads

        target = self.model.target
        notes = []
        if num_threads() != self.spec["threads"]:
            notes.append(f"edgedl ran {num_threads()} thread(s) at the end of the timed runs, not "
                         f"{self.spec['threads']}: its thread count follows the load of other processes "
                         "(EDGEDL_FOLLOW_LOAD=0 keeps it fixed)")
        return {"arena_bytes": arena, **kernel_cache_stats(), "compile_ms": self.compile.seconds * 1e3,
                "notes": notes, "device": self.model.device,
                "target": target.to_dict() if target is not None else None,
                "versions": {"edgedl": self.edgedl.__version__, "numba": _version("numba"),
                             "numpy": np.__version__}}


class OnnxruntimeEngine:
    name = "onnxruntime"

    def __init__(self, spec: dict):
        self.spec = spec

    def import_runtime(self) -> None:
        import onnxruntime

        self.ort = onnxruntime

    def _session(self, profile: bool):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.spec["threads"]
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(self.spec["workdir"], "ort_profile")
        return self.ort.InferenceSession(self.spec["model"], so, providers=["CPUExecutionProvider"])

    def load(self) -> None:
        self.session = self._session(False)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def profile_runs(self, feeds: dict, runs: int) -> tuple[list, float]:
        """Per-node times from onnxruntime's own profiler (a separate session: profiling slows every run).
        Returns ([(node, op_type, kernel, seconds per run)], mean seconds of a profiled run)."""
        session = self._session(True)
        session.run(None, feeds)  # its first run (allocations) is not averaged
        t0 = time.perf_counter()
        for _ in range(runs):
            session.run(None, feeds)
        mean = (time.perf_counter() - t0) / runs
        path = session.end_profiling()
        with open(path) as f:
            events = json.load(f)
        os.remove(path)
        per_node: dict = {}
        counts: dict = {}
        for ev in events:
            if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
                continue
            node = ev["name"][: -len("_kernel_time")]
            args = ev.get("args", {})
            provider = str(args.get("provider", "")).replace("ExecutionProvider", "")
            key = (node, args.get("op_name", "?"), f"onnxruntime {provider}".strip())
            per_node[key] = per_node.get(key, 0.0) + ev.get("dur", 0) * 1e-6
            counts[key] = counts.get(key, 0) + 1
        runs_seen = max(counts.values()) if counts else 1  # the first run is in the file too
        # a subgraph's nodes (named after their If / Loop / Scan node) run inside it: its time already counts
        # them, as edgedl's profile counts a control-flow step whole
        control = [k[0] for k in per_node if k[1] in ("If", "Loop", "Scan")]
        nested = {k for k in per_node if any(k[0] != c and k[0].startswith(c + "_") for c in control)}
        return [(k[0], k[1], k[2], v / runs_seen) for k, v in per_node.items() if k not in nested], mean

    def facts(self, feeds: dict) -> dict:
        return {"versions": {"onnxruntime": self.ort.__version__, "numpy": np.__version__}}


class TfliteEngine:
    name = "tflite"

    def __init__(self, spec: dict):
        self.spec = spec

    def import_runtime(self) -> None:
        self.interpreter_class, self.package = tflite_interpreter()

    def load(self) -> None:
        it = self.interpreter_class(model_path=self.spec["model"], num_threads=self.spec["threads"])
        shapes = self.spec.get("shapes") or {}
        for d in it.get_input_details():
            want = shapes.get(d["name"])
            if want is not None and tuple(want) != tuple(d["shape"]):
                it.resize_tensor_input(d["index"], list(want))
        it.allocate_tensors()
        self.it = it
        self.inputs = {d["name"]: d["index"] for d in it.get_input_details()}
        self.outputs = [(d["name"], d["index"]) for d in it.get_output_details()]

    def run(self, feeds: dict) -> dict:
        for name, index in self.inputs.items():
            self.it.set_tensor(index, feeds[name])
        self.it.invoke()
        return {name: self.it.get_tensor(index) for name, index in self.outputs}

    def facts(self, feeds: dict) -> dict:
        return {"versions": {self.package: _version(self.package.replace("_", "-")), "numpy": np.__version__},
                "notes": ["the TFLite Python interpreter has no per-op profiler (TFLite's benchmark_model "
                          "--enable_op_profiling=true has one)"] if self.spec.get("op_profile") else []}


def tflite_interpreter():
    """The TFLite interpreter class and the package it comes from: ai_edge_litert (LiteRT), tflite_runtime or
    tensorflow, the first one installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        raise ImportError("no TFLite interpreter is installed (pip install ai-edge-litert)") from None


ENGINES = {"edgedl": EdgedlEngine, "onnxruntime": OnnxruntimeEngine, "tflite": TfliteEngine}


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - not installed, or no metadata
        return None


# ---------------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------------
def bench(spec: dict, result: dict) -> None:
    """The "run" mode; fills ``result`` as it goes, so an interruption keeps what was measured."""
    engine = ENGINES[spec["engine"]](spec)
    clock = time.perf_counter
    t0 = clock()
    engine.import_runtime()
    result["import_ms"] = (clock() - t0) * 1e3
    feeds = load_arrays(spec["inputs"])
    t0 = clock()
    engine.load()
    result["init_ms"] = (clock() - t0) * 1e3
    t0 = clock()
    outputs = engine.run(feeds)
    result["first_ms"] = (clock() - t0) * 1e3
    # tensors only: a sequence or optional output (a list, None) is not compared
    save_arrays(spec["outputs"], {k: v for k, v in outputs.items() if isinstance(v, np.ndarray)})
    warm = []
    for _ in range(spec["warmup"]):
        t0 = clock()
        engine.run(feeds)
        warm.append(clock() - t0)
    result["warmup_runs"] = len(warm)
    result["warmup_ms"] = float(np.mean(warm)) * 1e3 if warm else None
    times: list = []
    result["latencies_s"] = times  # the orchestrator's summary reads these, also after an interruption
    cpu0, busy0 = time.process_time(), machine_busy_seconds()
    result["timed_start"] = time.monotonic()
    end = clock() + spec["max_secs"]
    runs = spec["runs"]
    while len(times) < runs:
        t0 = clock()
        engine.run(feeds)
        t1 = clock()
        times.append(t1 - t0)
        if t1 > end:
            break
    result["timed_end"] = time.monotonic()
    busy1 = machine_busy_seconds()
    result["timed_cpu_s"] = time.process_time() - cpu0
    result["machine_busy_s"] = None if busy0 is None or busy1 is None else busy1 - busy0
    result["peak_rss_bytes"] = peak_rss_bytes()  # before profiling, which may allocate
    if spec.get("op_profile"):
        profile_runs(engine, feeds, spec, result, float(np.mean(times)))
    facts = engine.facts(feeds)
    notes = result.get("notes", []) + facts.pop("notes", [])
    result.update(facts, notes=notes)
    result["status"] = "ok"


def profile_runs(engine, feeds: dict, spec: dict, result: dict, mean_s: float) -> None:
    """Per-op times averaged over profiled runs (as many as the timed runs, within half of ``max_secs``)."""
    runs = max(1, min(spec["runs"], int(0.5 * spec["max_secs"] / max(mean_s, 1e-9))))
    if hasattr(engine, "profile_runs"):
        ops, profiled_mean = engine.profile_runs(feeds, runs)
    elif hasattr(engine, "profile"):
        engine.profile(feeds)  # one profiled run first: its step labels are built once
        totals: dict = {}
        t0 = time.perf_counter()
        for _ in range(runs):
            for node, op_type, kernel, seconds in engine.profile(feeds):
                key = (node, op_type, kernel)
                totals[key] = totals.get(key, 0.0) + seconds
        profiled_mean = (time.perf_counter() - t0) / runs
        ops = [(k[0], k[1], k[2], v / runs) for k, v in totals.items()]
    else:
        return
    result["ops_raw"] = ops
    result["ops_runs"] = runs
    result["ops_profiled_mean_s"] = profiled_mean


def describe(spec: dict) -> dict:
    """The engine's input specs (the TFLite interpreter's, for .tflite models edgedl cannot read yet)."""
    interpreter_class, _ = tflite_interpreter()
    it = interpreter_class(model_path=spec["model"])
    inputs = []
    for d in it.get_input_details():
        signature = d.get("shape_signature")
        dims = [int(v) for v in (signature if signature is not None and len(signature) else d["shape"])]
        inputs.append({"name": d["name"], "dims": [v if v >= 0 else None for v in dims],
                       "dtype": np.dtype(d["dtype"]).name})
    return {"status": "ok", "inputs": inputs}


def quantize(spec: dict) -> dict:
    """Quantize a float model with edgedl (QDQ file at ``spec["output"]``); an int8 model is left as it is."""
    import edgedl
    from edgedl.train.qat import has_quantized_ops

    model = edgedl.load(spec["model"], target=spec.get("target"))
    if has_quantized_ops(model.source if model.source is not None else model.graph):
        return {"status": "ok", "quantized_already": True}
    batches = [load_arrays(p) for p in spec["calibration"]]
    qmodel = edgedl.quantize(model, batches, progress=False)
    qmodel.save(spec["output"])
    return {"status": "ok", "quantized_already": False, "nodes": len(qmodel.quantization.quantized_nodes)}


def main(argv: list[str]) -> int:
    spec_path, result_path = argv[1], argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    for entry in reversed(spec.get("sys_path", [])):  # the parent's edgedl, wherever it was imported from
        if entry not in sys.path:
            sys.path.insert(0, entry)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # no sibling module shadows a name
    result: dict = {"status": "error", "error": None}
    try:
        mode = spec.get("mode", "run")
        if mode == "run":
            bench(spec, result)
        elif mode == "describe":
            result = describe(spec)
        elif mode == "quantize":
            result = quantize(spec)
        elif mode == "train":
            from edgedl.benchmark.training import train_bench

            result = train_bench({k: v for k, v in spec.items() if k not in ("mode", "sys_path")})
        else:
            raise ValueError(f"unknown worker mode {mode!r}")
    except KeyboardInterrupt:
        result["status"] = "interrupted"
        result["error"] = "interrupted (Ctrl-C)"
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the orchestrator
        msg = str(e).strip() or type(e).__name__
        ours = type(e).__module__.startswith("edgedl")  # edgedl's errors are sentences already
        result["status"] = "error"
        result["error"] = msg if ours else f"{type(e).__name__}: {msg}"
    result["process_s"] = time.perf_counter() - _T_START
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, default=_jsonable)
    os.replace(tmp, result_path)
    return 0


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
