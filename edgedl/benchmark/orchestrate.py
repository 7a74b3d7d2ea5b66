"""``edgedl.bench``: benchmark models on this board, edgedl side by side with onnxruntime and TFLite.

Every engine and setting (precision, thread count) runs in its own fresh process
(:mod:`edgedl.benchmark.worker`), one after another, so thread pools never fight and each process's memory is
its engine's own; every process reads the same input bytes. This process stays light: it writes the inputs,
starts the workers, samples the board (power, temperature, clocks, throttling; :mod:`.board_state`) while
they run, and builds the report: timings (:mod:`.stats`), agreement of every engine's outputs with edgedl's
(:mod:`.agreement`), per-op profiles, board state and warnings. :mod:`.report` prints it and writes JSON and
CSV; :mod:`.plot` draws it.

A missing compare engine is a note; a model an engine cannot load, or an engine process that crashes or hangs,
is a failed run in the report while the other runs go on. Ctrl-C stops the benchmark and writes the report
gathered so far (``report["interrupted"]``).
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import board_state
from .agreement import compare
from .inputs import InputSpec, file_feeds, onnx_input_specs, random_feeds, resolve_shapes, save_feeds
from .stats import latency_stats, spread_warning
from .worker import load_arrays, save_arrays

ENGINES = ("edgedl", "onnxruntime", "tflite")
PRECISIONS = ("fp32", "int8")
WORKER = str(Path(__file__).with_name("worker.py"))
#: where the board's /proc and /sys are read from (tests point it at a fake tree)
BOARD_ROOT = "/"
#: seconds a worker may take beyond its timed phases (imports, load, kernel compilation on a cold cache)
WORKER_GRACE_S = 1800.0
#: op types that make an ONNX model an int8 one (QDQ or operator form)
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
             "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul", "DynamicQuantizeMatMul",
             "MatMulIntegerToFloat", "QAttention"}
_ENGINE_MODULES = {"onnxruntime": ("onnxruntime",), "tflite": ("ai_edge_litert", "tflite_runtime", "tensorflow")}
_INSTALL_HINT = {"onnxruntime": "pip install onnxruntime", "tflite": "pip install ai-edge-litert",
                 "pytorch": "pip install torch"}


def bench(models, *, threads=None, runs: int = 100, warmup: int = 5, max_secs: float = 20.0,
          precision=("fp32",), input: str | None = None, shapes: dict | None = None, batch: int | None = None,
          target=None, compare=(), compare_with=None, op_profile: bool = False, train: bool = False,
          trainable: str = "last:1",
          train_steps: int = 20, calibration: str | None = None, cooldown: float = 0.0, busy: int = 0,
          seed: int = 0, json_path: str | None = None, csv_path: str | None = None, plot_path: str | None = None,
          progress=None, device: str = "cpu", processes: int = 1):
    """Benchmark one model (returns its report, a dict) or several (a list of reports).

    Parameters
    ----------
    models : str or list of str
        ONNX (or ``.tflite``) files.
    threads : int, list of int or None
        Thread counts to run at (a sweep gives one run per count); None: the target's default.
    runs, warmup, max_secs :
        Timed runs (at most), untimed warm-up runs, and the most seconds the timed runs of one setting take.
    precision : "fp32", "int8" or a list of them
        int8 runs the model's own quantization, or quantizes a float model with ``edgedl.quantize``
        (calibrated on ``calibration``, else on the benchmark inputs, which times it right but says little
        about its accuracy). onnxruntime runs the same QDQ file.
    input : str, optional
        An ``.npy``/``.npz`` of inputs (default: seeded random inputs from the model's input specs).
    shapes, batch :
        Sizes of symbolic dimensions: ``{name: dims}``; ``batch`` sets a symbolic first dimension (default 1).
    target :
        Board profile for edgedl (see :func:`edgedl.load`).
    compare : list of str or str
        Other engines to run side by side: ``"onnxruntime"`` (ONNX models), ``"tflite"`` (``.tflite`` models);
        a string may list several (``"onnxruntime,tflite"``). ``compare_with`` is another name for it.
    op_profile : bool
        Per-op times of each engine (edgedl's steps; onnxruntime's profiler), after the timed runs.
    train, trainable, train_steps :
        Also time training steps for the ``trainable`` policy, edgedl and (when installed) PyTorch.
    cooldown : float
        Seconds to sleep between processes (lets a hot board cool, as benchncnn does).
    processes : int
        Fresh processes per setting (default 1). With several, the settings take turns (every engine once,
        then again), so drift of the board hits all alike; a setting's ``latency_ms`` then summarizes all its
        runs, except ``p50``, the median of the processes' own p50s (``process_p50_ms`` lists them), and its
        start-up numbers are the processes' medians.
    busy : int
        Busy-loop processes to run beside the benchmark (how it holds up beside other work).
    json_path, csv_path, plot_path :
        Also write the report there (:mod:`edgedl.benchmark.report`, :mod:`edgedl.benchmark.plot`).
    progress : callable, optional
        Called with one line of text per step (the command line prints them).
    device : "cpu" or "cuda"
        Where edgedl runs (``edgedl.load(device=...)``); the timings then include copying inputs to the GPU and
        outputs back.

    Returns
    -------
    dict or list of dict
        The report (see the README's "Benchmarking" section for its fields). Numbers that cannot be measured
        on this machine are None.
    """
    single = isinstance(models, (str, os.PathLike))
    paths = [str(models)] if single else [str(m) for m in models]
    if not paths:
        raise InputError("no model to benchmark")
    engines = compare_with if compare_with is not None else compare
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")
    settings = _settings(threads, runs, warmup, max_secs, precision, engines, busy, cooldown, target)
    settings["device"] = device
    if int(processes) < 1:
        raise InputError(f"processes must be at least 1, got {processes}")
    settings["processes"] = int(processes)
    log = progress or (lambda line: None)
    reports = []
    busy_procs = _start_busy(busy)
    try:
        for path in paths:
            report = _bench_one(path, settings, input=input, shapes=shapes, batch=batch,
                                op_profile=op_profile, train=train, trainable=trainable, train_steps=train_steps,
                                calibration=calibration, seed=seed, log=log)
            reports.append(report)
            if report.get("interrupted"):
                break
    finally:
        _stop_busy(busy_procs)
    result = reports[0] if single else reports
    _write_outputs(result, json_path, csv_path, plot_path, log)
    return result


# ---------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------
def _settings(threads, runs, warmup, max_secs, precision, compare_with, busy, cooldown, target) -> dict:
    from .. import board

    resolved = board.resolve(target)
    if threads is None:
        threads = [resolved.threads]
    elif isinstance(threads, int):
        threads = [threads]
    threads = list(dict.fromkeys(int(t) for t in threads))
    for t in threads:
        if t < 1:
            raise InputError(f"thread counts must be at least 1, got {t}")
        if t > resolved.cores:
            raise InputError(f"{t} threads, but target {resolved.name!r} has {resolved.cores} cores")
    if isinstance(precision, str):
        precision = [p.strip() for p in precision.split(",") if p.strip()]
    precision = list(dict.fromkeys(precision))
    bad = [p for p in precision if p not in PRECISIONS]
    if bad or not precision:
        raise InputError(f"precision must be among {list(PRECISIONS)}, got {precision}")
    if isinstance(compare_with, str):
        compare_with = [c.strip() for c in compare_with.split(",") if c.strip()]
    compare_with = [c for c in dict.fromkeys(compare_with) if c != "edgedl"]
    bad = [c for c in compare_with if c not in ENGINES]
    if bad:
        raise InputError(f"unknown engine(s) {bad} to compare with: choose from {list(ENGINES[1:])}")
    if int(runs) < 1 or int(warmup) < 0 or not float(max_secs) > 0:
        raise InputError(f"need runs >= 1, warmup >= 0 and max_secs > 0 (got {runs}, {warmup}, {max_secs})")
    if int(busy) < 0 or float(cooldown) < 0:
        raise InputError(f"busy and cooldown cannot be negative (got {busy}, {cooldown})")
    return {"runs": int(runs), "warmup": int(warmup), "max_secs": float(max_secs), "threads": threads,
            "precisions": precision, "compare": compare_with, "busy": int(busy), "cooldown_s": float(cooldown),
            # the worker resolves the target again from a name or a profile file (a Target object: its name)
            "target": target if isinstance(target, (str, type(None))) else getattr(target, "name", str(target)),
            "_target": resolved}


def _engine_available(engine: str) -> bool:
    if engine == "edgedl":
        return True
    if engine == "pytorch":
        return importlib.util.find_spec("torch") is not None
    return any(importlib.util.find_spec(m) is not None for m in _ENGINE_MODULES[engine])


def _is_tflite(path: str) -> bool:
    if path.lower().endswith(".tflite"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        return head[4:8] == b"TFL3"  # the flatbuffer file identifier
    except OSError:
        return False


def _onnx_is_quantized(path: str) -> bool:
    from ..converters.onnx_import import read_model_proto

    proto, _ = read_model_proto(path)
    return any(n.op_type in QUANT_OPS for n in proto.graph.node)


# ---------------------------------------------------------------------------------------------------
# one model
# ---------------------------------------------------------------------------------------------------
def _bench_one(path: str, settings: dict, *, input, shapes, batch, op_profile, train, trainable, train_steps,
               calibration, seed, log) -> dict:
    from .. import __version__

    if not os.path.isfile(path):
        raise InputError(f"model file '{path}' does not exist")
    target = settings["_target"]
    public = {k: v for k, v in settings.items() if not k.startswith("_")}
    report = {"model": path, "edgedl_version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "settings": {**public, "op_profile": bool(op_profile), "batch": batch,
                           "input": input or f"random (seed {seed})", "shapes": None, "train": None},
              "inputs": {}, "target": target.to_dict(), "environment": {}, "notes": [], "runs": [],
              "training": []}
    notes = report["notes"]
    with tempfile.TemporaryDirectory(prefix="edgedl-bench-") as work:
        tflite = _is_tflite(path)
        specs = _tflite_specs(path, work) if tflite else onnx_input_specs(path)
        if input:  # the file's arrays give the shapes
            feeds = file_feeds(input, specs)
            bound = {n: tuple(a.shape) for n, a in feeds.items()}
        else:
            bound = resolve_shapes(specs, shapes, batch, default_batch=1)
            feeds = random_feeds(specs, bound, seed)
        report["settings"]["shapes"] = {n: list(s) for n, s in bound.items()}
        report["inputs"] = {s.name: {"shape": list(bound[s.name]), "dtype": s.dtype.name} for s in specs}
        run_batch = batch if batch is not None else _batch_of(specs, bound)
        report["settings"]["batch"] = run_batch
        inputs_path = os.path.join(work, "inputs.npz")
        save_feeds(feeds, inputs_path)
        engines = _engines(settings["compare"], tflite, notes)
        precisions, model_for = _precisions(path, settings, tflite, feeds, specs, calibration, run_batch, work,
                                            notes, log)
        jobs = [(p, t, e) for _ in range(settings.get("processes", 1)) for p in precisions
                for t in settings["threads"] for e in engines]
        sampler = board_state.Sampler(BOARD_ROOT)
        sampler.start()
        before = board_state.read_state(BOARD_ROOT)
        time.sleep(0.3)  # idle samples: the board's power before any engine runs
        interrupted = False
        try:
            for k, (prec, threads, engine) in enumerate(jobs):
                if k and settings["cooldown_s"]:
                    time.sleep(settings["cooldown_s"])
                log(f"[{k + 1}/{len(jobs)}] {engine} {prec} {threads} thread(s) ...")
                spec = {"mode": "run", "engine": engine, "model": model_for.get(prec, path), "precision": prec,
                        "threads": threads, "target": settings["target"], "inputs": inputs_path,
                        "device": settings["device"],
                        "outputs": os.path.join(work, f"out{k}.npz"), "warmup": settings["warmup"],
                        "runs": settings["runs"], "max_secs": settings["max_secs"], "op_profile": bool(op_profile),
                        "shapes": {n: list(s) for n, s in bound.items()}, "workdir": work}
                raw, interrupted = _run_worker(spec, work, f"run{k}", settings["max_secs"] * 2.5)
                run = _run_entry(raw, engine, prec, threads, run_batch, sampler)
                run["_outputs"] = spec["outputs"]
                report["runs"].append(run)
                log("    " + _one_line(run))
                if interrupted:
                    break
            if train and not interrupted:
                interrupted = _train_runs(report, path, settings, trainable, train_steps, batch, specs, work, log)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            after = board_state.read_state(BOARD_ROOT)
            sampler.stop()
        if interrupted:
            report["interrupted"] = True
            notes.append("interrupted (Ctrl-C): the report holds what was measured before")
        report["runs"] = _merge_processes(report["runs"])
        _agreement(report["runs"])
        whole = None
        ok = [r for r in report["runs"] if r.get("_window")]
        if ok:
            whole = sampler.window(min(r["_window"][0] for r in ok), max(r["_window"][1] for r in ok))
        spread = [w for r in report["runs"]
                  if (w := spread_warning(r.get("latency_ms"), f"{r['engine']} {r['precision']} "
                                                               f"{r['threads']} thread(s)"))]
        other = [r["other_load_cores"] for r in report["runs"] if r.get("other_load_cores") is not None]
        env = board_state.environment(before, after, whole, spread,
                                      other_load=float(np.median(other)) if other else None)
        env["versions"] = _versions()
        report["environment"] = env
        for run in report["runs"]:
            run.pop("_outputs", None)
            run.pop("_window", None)
    return report


#: run fields that are each process's own: a merged run gets their median over its processes
_PER_PROCESS = ("import_ms", "init_ms", "compile_ms", "first_ms", "warmup_ms", "peak_rss_bytes", "power_w",
                "energy_mj", "other_load_cores")


def _merge_processes(runs: list[dict]) -> list[dict]:
    """One run per (engine, precision, threads) from the runs of several processes of that setting: all latencies
    pooled, p50 the median of the processes' p50s, start-up numbers their medians (see :func:`bench`)."""
    groups: dict = {}
    for run in runs:
        groups.setdefault((run["engine"], run["precision"], run["threads"]), []).append(run)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        ok = [r for r in group if r.get("latency_ms")]
        base = dict(ok[0] if ok else group[0])
        base["processes"] = len(group)
        base["process_p50_ms"] = [r["latency_ms"]["p50"] for r in ok]
        if ok:
            base["latencies_ms"] = [t for r in ok for t in r["latencies_ms"]]
            stats = latency_stats(np.asarray(base["latencies_ms"]) / 1e3)
            stats["p50"] = float(np.median(base["process_p50_ms"]))
            base["latency_ms"] = stats
            base["runs"] = len(base["latencies_ms"])
            base["throughput_per_s"] = base["batch"] / (stats["mean"] / 1e3) if stats["mean"] > 0 else None
            for key in _PER_PROCESS:
                values = [r[key] for r in ok if r.get(key) is not None]
                base[key] = float(np.median(values)) if values else None
            windows = [r["_window"] for r in ok if r.get("_window")]
            if windows:
                base["_window"] = (min(w[0] for w in windows), max(w[1] for w in windows))
        if any(r["status"] != "ok" for r in group):
            base["notes"] = list(base.get("notes") or []) + [
                f"{sum(r['status'] != 'ok' for r in group)} of {len(group)} processes failed"]
        merged.append(base)
    return merged


def _batch_of(specs: list[InputSpec], bound: dict) -> int:
    """The batch size throughput counts: the first input's first dimension when it has rank 2 or more."""
    shape = bound[specs[0].name] if specs else ()
    return int(shape[0]) if len(shape) >= 2 else 1


def _engines(compare_with: list[str], tflite: bool, notes: list) -> list[str]:
    engines = ["edgedl"]
    for engine in compare_with:
        if engine == "tflite" and not tflite:
            notes.append("tflite: compares .tflite models only (this is an ONNX model)")
            continue
        if engine == "onnxruntime" and tflite:
            notes.append("onnxruntime: runs ONNX models only (this is a .tflite model)")
            continue
        if not _engine_available(engine):
            notes.append(f"{engine} is not installed, so it was not compared ({_INSTALL_HINT[engine]})")
            continue
        engines.append(engine)
    return engines


def _tflite_specs(path: str, work: str) -> list[InputSpec]:
    if not _engine_available("tflite"):
        raise InputError(f"'{path}' is a .tflite model: reading its inputs needs a TFLite interpreter "
                         f"({_INSTALL_HINT['tflite']})")
    raw, _ = _run_worker({"mode": "describe", "model": path}, work, "describe", 60.0)
    if raw.get("status") != "ok":
        raise InputError(f"cannot read the inputs of '{path}': {raw.get('error')}")
    return [InputSpec(d["name"], tuple(d["dims"]), np.dtype(d["dtype"])) for d in raw["inputs"]]


def _precisions(path, settings, tflite, feeds, specs, calibration, batch, work, notes, log):
    """The precisions to run and the model file each uses (an int8 run of a float model runs the QDQ file
    edgedl.quantize writes)."""
    wanted = list(settings["precisions"])
    if tflite:
        if len(wanted) > 1:
            notes.append("a .tflite model runs as it is (its own precision): one precision only")
        return wanted[:1], {}
    if _onnx_is_quantized(path):
        if "fp32" in wanted:
            notes.append("the model is already quantized: its runs are int8 (fp32 was not run)")
        return ["int8"], {}
    model_for = {}
    if "int8" in wanted:
        from .inputs import calibration_batches

        batches = calibration_batches(calibration, specs, batch) if calibration else [feeds]
        if not calibration:
            notes.append("int8: calibrated on the benchmark inputs (pass --calibration data.npz for accuracy "
                         "that means something; the timings do not depend on it)")
        files = []
        for i, b in enumerate(batches):
            files.append(os.path.join(work, f"calib{i}.npz"))
            save_arrays(files[-1], b)
        qpath = os.path.join(work, "model.int8.onnx")
        log("quantizing the model to int8 (edgedl.quantize) ...")
        raw, interrupted = _run_worker({"mode": "quantize", "model": path, "calibration": files, "output": qpath,
                                        "target": settings["target"]}, work, "quantize", 0.0)
        if interrupted:
            raise KeyboardInterrupt
        if raw.get("status") != "ok":
            notes.append(f"int8: quantization failed ({raw.get('error')}); no int8 runs")
            wanted.remove("int8")
        else:
            model_for["int8"] = qpath
    return wanted, model_for


# ---------------------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------------------
def _sys_path() -> list[str]:
    """Where this edgedl was imported from, for the worker (a source checkout may not be installed)."""
    # the folder holding the edgedl package: site-packages, or a source checkout (whose converters/ and targets/
    # beside edgedl/ the package's __init__ maps in)
    return [str(Path(__file__).resolve().parents[2])]


def _run_worker(spec: dict, work: str, tag: str, timed_s: float) -> tuple[dict, bool]:
    """Run one worker process to its end. Returns (its result, whether Ctrl-C interrupted it)."""
    spec = {**spec, "sys_path": _sys_path()}
    spec_path, result_path = os.path.join(work, f"{tag}.json"), os.path.join(work, f"{tag}.result.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    log_path = os.path.join(work, f"{tag}.log")
    interrupted = False
    timeout = WORKER_GRACE_S + timed_s
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, WORKER, spec_path, result_path], stdout=log_file,
                                stderr=subprocess.STDOUT, env=_worker_env())
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {"status": "error", "error": f"the process did not finish within {timeout:.0f} s and was "
                                                "stopped"}, False
        except KeyboardInterrupt:
            interrupted = True
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # also when the parent alone was interrupted
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if os.path.isfile(result_path):  # an "ok" result finished before the interruption reached it
        with open(result_path) as f:
            return json.load(f), interrupted
    code = proc.returncode
    if code is not None and code < 0:
        try:
            what = f"signal {signal.Signals(-code).name}"
        except ValueError:
            what = f"signal {-code}"
        error = f"the process died with {what}"
    else:
        error = f"the process exited with status {code} without a result"
    tail = _tail(log_path)
    return {"status": "interrupted" if interrupted else "error",
            "error": error + (f": {tail}" if tail else "")}, interrupted


def _worker_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    return env


def _tail(path: str, lines: int = 6) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read()[-4000:].decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)


# ---------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------
def _run_entry(raw: dict, engine: str, precision: str, threads: int, batch: int, sampler) -> dict:
    """A report run entry from a worker's raw result and the board samples of its timed window."""
    lat_s = raw.get("latencies_s") or []
    stats = latency_stats(lat_s)
    run = {"engine": engine, "precision": precision, "threads": threads, "batch": batch,
           "status": raw.get("status", "error"), "error": raw.get("error"),
           "import_ms": raw.get("import_ms"), "init_ms": raw.get("init_ms"), "compile_ms": raw.get("compile_ms"),
           "first_ms": raw.get("first_ms"), "warmup_ms": raw.get("warmup_ms"),
           "warmup_runs": raw.get("warmup_runs"), "runs": len(lat_s), "latency_ms": stats,
           "latencies_ms": [t * 1e3 for t in lat_s],
           "throughput_per_s": batch / (stats["mean"] / 1e3) if stats and stats["mean"] > 0 else None,
           "peak_rss_bytes": raw.get("peak_rss_bytes"), "arena_bytes": raw.get("arena_bytes"),
           "ops": None, "ops_profile": None, "power_w": None, "energy_mj": None, "temp_c_before": None,
           "temp_c_after": None, "freq_mhz_min": None, "throttled": None, "other_load_cores": None,
           "agreement": None, "cache_hits": raw.get("cache_hits"), "cache_misses": raw.get("cache_misses"),
           "versions": raw.get("versions") or {}, "notes": list(raw.get("notes") or []),
           "device": raw.get("device") or ("cpu" if engine != "edgedl" else None)}
    if raw.get("target"):
        run["target"] = raw["target"]
    if raw.get("ops_raw") and stats:
        total = sum(r[3] for r in raw["ops_raw"])
        run["ops"] = [{"node": n, "op_type": o, "kernel": k, "ms": s * 1e3,
                       "percent": 100.0 * s / total if total > 0 else 0.0} for n, o, k, s in raw["ops_raw"]]
        profiled = raw.get("ops_profiled_mean_s")
        run["ops_profile"] = {
            "runs": raw.get("ops_runs"), "sum_ms": total * 1e3,
            "mean_latency_ms": profiled * 1e3 if profiled else None,
            "overhead_percent": 100.0 * (profiled * 1e3 / stats["mean"] - 1) if profiled else None,
            "coverage_percent": 100.0 * total * 1e3 / stats["mean"]}
    t0, t1 = raw.get("timed_start"), raw.get("timed_end")
    if t0 is not None and t1 is not None and lat_s:
        run["_window"] = (t0, t1)
        w = sampler.window(t0, t1)
        run["power_w"] = w.get("power_w")
        if run["power_w"] is not None and stats:
            run["energy_mj"] = run["power_w"] * stats["mean"]  # W x ms = mJ per inference
        run["temp_c_before"] = w.get("temp_c_first", w.get("temp_c_min"))
        run["temp_c_after"] = w.get("temp_c_last", w.get("temp_c_max"))
        run["freq_mhz_min"] = w.get("freq_mhz_min")
        bits = w.get("throttled_bits")
        run["throttled"] = None if bits is None else bool(bits & 0xF)
        run["other_load_cores"] = board_state.other_load_cores(0.0, raw.get("machine_busy_s"), t1 - t0,
                                                               raw.get("timed_cpu_s")) \
            if raw.get("machine_busy_s") is not None and raw.get("timed_cpu_s") is not None else None
    return run


def _agreement(runs: list[dict]) -> None:
    """Each run's outputs against edgedl's at the same precision (edgedl int8 against edgedl fp32)."""
    outputs: dict = {}

    def load(run):
        key = id(run)
        if key not in outputs:
            path = run.get("_outputs")
            outputs[key] = load_arrays(path) if path and os.path.isfile(path) else None
        return outputs[key]

    def reference_for(run):
        if run["engine"] == "edgedl":
            if run["precision"] == "fp32":
                return None
            cands = [r for r in runs if r["engine"] == "edgedl" and r["precision"] == "fp32"]
        else:
            cands = [r for r in runs if r["engine"] == "edgedl" and r["precision"] == run["precision"]]
        cands = [r for r in cands if r["status"] == "ok" and load(r) is not None]
        return cands[0] if cands else None

    for run in runs:
        if run["status"] != "ok" or load(run) is None:
            continue
        ref = reference_for(run)
        if ref is None:
            continue
        label = f"edgedl {ref['precision']} ({ref['threads']} thread{'s' if ref['threads'] > 1 else ''})"
        run["agreement"] = compare(load(ref), load(run), label)


def _train_runs(report, path, settings, trainable, steps, batch, specs, work, log) -> bool:
    """Training-step timings, edgedl and PyTorch (when installed), at each thread count."""
    engines = ["edgedl"]
    if _engine_available("pytorch"):
        engines.append("pytorch")
    else:
        report["notes"].append(f"--train: PyTorch is not installed, so edgedl trains alone "
                               f"({_INSTALL_HINT['pytorch']})")
    first = specs[0].dims[0] if specs and specs[0].dims else None
    train_batch = batch if batch is not None else (first if isinstance(first, int) else 32)
    report["settings"]["train"] = {"trainable": trainable, "batch": train_batch, "steps": steps}
    for threads in settings["threads"]:
        for engine in engines:
            log(f"training step: {engine} {threads} thread(s), trainable {trainable!r}, batch {train_batch} ...")
            spec = {"mode": "train", "engine": engine, "model": path, "trainable": trainable, "batch": train_batch,
                    "threads": threads, "steps": steps, "warmup": min(3, steps), "max_secs": settings["max_secs"],
                    "loss": None, "seed": 0}
            raw, interrupted = _run_worker(spec, work, f"train-{engine}-{threads}", settings["max_secs"] * 2)
            raw.setdefault("engine", engine)
            raw.setdefault("threads", threads)
            raw.setdefault("trainable", trainable)
            raw.setdefault("batch", train_batch)
            report["training"].append(raw)
            if interrupted:
                return True
    return False


def _one_line(run: dict) -> str:
    if run["status"] != "ok":
        return f"{run['status']}: {run.get('error')}"
    s = run["latency_ms"]
    return (f"p50 {s['p50']:.4g} ms, p90 {s['p90']:.4g} ms, mean {s['mean']:.4g} ms over {run['runs']} runs; "
            f"init {run['init_ms']:.0f} ms, first {run['first_ms']:.4g} ms")


def _versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("numpy", "numba", "onnx", "onnxruntime", "ai-edge-litert", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# ---------------------------------------------------------------------------------------------------
# busy neighbours and output files
# ---------------------------------------------------------------------------------------------------
_BUSY_LOOP = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True:\n    pass\n"


def _start_busy(n: int) -> list:
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY_LOOP], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    if procs:
        time.sleep(0.2)
    return procs


def _stop_busy(procs: list) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def _write_outputs(result, json_path, csv_path, plot_path, log) -> None:
    from . import report as report_io

    if json_path:
        report_io.write_json(result, json_path)
        log(f"wrote {json_path}")
    if csv_path:
        for p in report_io.write_csv(result, csv_path):
            log(f"wrote {p}")
    if plot_path:
        from .plot import plot_report

        plot_report(result, plot_path)
        log(f"wrote {plot_path}")
