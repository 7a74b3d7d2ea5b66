"""``edgedl tune``: measure, on the device itself, the execution choices that matter for one model and write a
tuned profile that later loads on this board use.

What is tuned, one choice at a time (coordinate descent from the shipped profile's choices, each stage keeping
the winner of the stages before): on a big.LITTLE CPU the core set (all, big or little cores), the thread
count, the parallel threshold of element-wise / pooling / layout
kernels (``parallel_min_work``), the GEMM's (``gemm_parallel_min_work``), and for a quantized model the int8
GEMM kernel among those the codegen can run. Each candidate runs the model (warm) for a fixed time with the
thread count held (no load following) and scores its median latency.

A stage adopts a candidate only if it beats the current choice by more than :data:`MIN_GAIN` (noise on a
board is a few percent), and at the end the tuned choices are checked against the shipped ones in interleaved
rounds: if the tuned set is not faster there, the shipped choices are kept. So the result is never slower
than the shipped profile on the model it was tuned for, and reruns land on the same choices within noise.

The tuned file is a profile (see :mod:`edgedl.targets.profile`) with a ``[tuned]`` table naming the board,
its CPU, the edgedl version and the model's hash; :mod:`edgedl.board` applies it on that board only.
"""
from __future__ import annotations

import hashlib
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgeDLError

#: a candidate must be this much faster (relative median) than the current choice to replace it
MIN_GAIN = 0.03
#: parallel thresholds tried (multiply-adds or element operations)
THRESHOLDS = (1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 22)


def tuned_dir() -> Path:
    """Where tuned profiles go by default: ``$XDG_CONFIG_HOME/edgedl/tuned`` (``~/.config/edgedl/tuned``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edgedl" / "tuned"


def tuned_path(board: str) -> Path:
    return tuned_dir() / f"{board}.toml"


def model_hash(src) -> str:
    if isinstance(src, (bytes, bytearray)):
        data = bytes(src)
    else:
        data = Path(src).read_bytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Stage:
    """One tuned choice: its shipped value, the candidates measured (value -> median seconds), the pick."""

    choice: str
    shipped: object
    measured: dict = field(default_factory=dict)
    picked: object = None


@dataclass
class TuneResult:
    target: object  # the tuned Target
    shipped: object  # the Target tuning started from
    stages: list[Stage]
    before: float  # median seconds with the shipped choices (final interleaved rounds)
    after: float  # median seconds with the tuned choices
    kept_shipped: bool
    path: Path | None = None


def _thread_candidates(cores: int) -> list[int]:
    if cores <= 8:
        return list(range(1, cores + 1))
    return sorted({1, 2, 4, cores // 2, cores - 2, cores} - {0})


class _Bench:
    """Runs the model with one Target at a fixed thread count and scores the median latency."""

    def __init__(self, src, shapes, seconds: float):
        import edgedl

        self.src, self.seconds = src, seconds
        self.model = edgedl.load(src)
        plan = self.model.plan(shapes)
        rng = np.random.default_rng(0)
        self.feeds = {n: (rng.standard_normal(t.shape) if t.dtype.kind == "f" else np.zeros(t.shape)).astype(t.dtype)
                      for n, t in plan.input_types.items()}
        self.shapes = shapes

    def measure(self, target, seconds: float | None = None) -> float:
        from .model import Model

        m = Model(self.model.graph, target=target, num_threads=target.threads, source=self.model.source)
        run = lambda: m.run(self.feeds)  # noqa: E731
        end = time.perf_counter() + 0.1
        n = 0
        while n < 3 or time.perf_counter() < end:  # warm: plans, caches, the thread pool
            run()
            n += 1
        times = []
        end = time.perf_counter() + (seconds or self.seconds)
        while len(times) < 10 or time.perf_counter() < end:
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
            if len(times) >= 20000:
                break
        return statistics.median(times)


def tune(src, target=None, shapes=None, seconds: float = 0.4, out=None, progress: bool = True) -> TuneResult:
    """Tune the execution choices for model ``src`` on this machine and write the tuned profile.

    Parameters
    ----------
    src : path or bytes of an ONNX model
    target : profile name, Target or None (the detected board, as ``edgedl.load`` resolves it, without any
        tuned file)
    shapes : input name -> shape for symbolic dimensions (default: 1)
    seconds : timed seconds per candidate
    out : where to write (default: :func:`tuned_path` of the board); False: do not write
    """
    from tqdm import tqdm

    import edgedl

    from . import board, threads
    from .affinity import core_ids, pin_workers, pinned
    from .kernels.cpu import config
    from .targets.profile import load_profile_file

    shipped = board.resolve(target, tuned=False)
    bench = _Bench(src, shapes, seconds)
    int8_options = _int8_options(bench.model)
    core_options = _core_set_options(shipped)
    thread_options = _thread_candidates(shipped.cores)
    flat_options = _conv_flat_options(bench.model)
    total = (len(core_options) + len(thread_options) + 2 * len(THRESHOLDS) + len(int8_options)
             + 2 * len(flat_options) + 1)
    follow = threads.follows_load()
    threads.set_num_threads(None, follow_load=False)  # every candidate runs at the count it names
    bar = tqdm(total=total, desc="edgedl tune", unit="trial", disable=not progress)
    try:
        current = shipped
        stages = []

        def stage(choice, options, shipped_value):
            nonlocal current
            st = Stage(choice, shipped_value)
            base = bench.measure(current)
            st.measured[getattr(current, choice)] = base
            for v in options:
                if v not in st.measured:
                    st.measured[v] = bench.measure(current.replace(**{choice: v}))
                bar.update(1)
            best = min(st.measured, key=st.measured.get)
            if st.measured[best] < base * (1 - MIN_GAIN):
                current = current.replace(**{choice: best})
            st.picked = getattr(current, choice)
            stages.append(st)

        if core_options:
            stage("core_set", core_options, shipped.core_set)
        cores = core_ids(current)
        if cores is not None:  # threads beyond the set's cores would share them
            bar.update(len([t for t in thread_options if t > len(cores)]))
            thread_options = [t for t in thread_options if t <= len(cores)]
        stage("threads", thread_options, min(shipped.threads, len(cores) if cores else shipped.threads))
        if current.threads > 1:
            stage("parallel_min_work", THRESHOLDS, shipped.parallel_min_work)
            stage("gemm_parallel_min_work", THRESHOLDS, shipped.gemm_parallel_min_work)
        else:
            bar.update(2 * len(THRESHOLDS))
        if len(int8_options) > 1:
            stage("int8_kernel", int8_options, shipped.int8_kernel)
        else:
            bar.update(len(int8_options))
        if flat_options:
            stage("conv_flat", flat_options, shipped.conv_flat)
            stage("conv_pixels", flat_options, shipped.conv_pixels)
        # final check, interleaved so drifts of the board (clocks, heat, other work) hit both alike
        before, after = [], []
        for _ in range(5):
            before.append(bench.measure(shipped, seconds / 2))
            after.append(bench.measure(current, seconds / 2))
        bar.update(1)
    finally:
        bar.close()
        threads.set_num_threads(None, follow_load=follow)
        config.apply_target(None)
        if pinned():
            pin_workers(None)
    b, a = statistics.median(before), statistics.median(after)
    changed = any(getattr(current, st.choice) != getattr(shipped, st.choice) for st in stages)
    kept = not changed or not a < b * (1 - MIN_GAIN / 2)
    tuned = shipped if kept else current
    info = {"edgedl_version": edgedl.__version__, "board": shipped.name, "cpu": shipped.cpu,
            "model_hash": model_hash(src)}
    result = TuneResult(tuned.replace(tuned=info), shipped, stages, b, a if not kept else b, kept)
    if out is not False:
        path = Path(out) if out else tuned_path(shipped.name)
        write_profile(result.target, path)
        load_profile_file(path)  # what was written reads back (validated)
        result.path = path
    return result


def _core_set_options(target) -> list[str]:
    """The core sets to try: on a CPU with big and little cores (both usable here), all, big and little."""
    from .affinity import core_ids

    if core_ids(target.replace(core_set="big")) is None or core_ids(target.replace(core_set="little")) is None:
        return []
    return ["all", "big", "little"]


def _conv_flat_options(model) -> list[bool]:
    """On and off, for each of the convolution strategy switches (``conv_flat``: the padded image read in place;
    ``conv_pixels``: pixels on the GEMM's rows) when the model has a float group-1 spatial convolution, the kind
    they decide for."""
    for node in model.graph.nodes:
        if node.op_type != "Conv" or node.domain or int(node.attrs.get("group", 1)) != 1:
            continue
        w = model.graph.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is not None and w.dtype == np.float32 and w.ndim in (3, 4) and int(np.prod(w.shape[2:])) > 1:
            return [True, False]
    return []


def _int8_options(model) -> list[str]:
    """The int8 GEMM kernels to try: those the codegen runs, when the model has int8 GEMMs."""
    from .runtime.compile_ahead import INT8_GEMM_OPS

    if not any(n.op_type in INT8_GEMM_OPS for n in model.graph.nodes):
        return []
    from .kernels.cpu.gemm_i8 import KERNEL_NAMES, available_kernels

    return [KERNEL_NAMES[k] for k in available_kernels()]


# ---------------------------------------------------------------------------------------------------
# writing a profile
# ---------------------------------------------------------------------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v) if isinstance(v, (set, frozenset)) else list(v)
        return "[" + ", ".join(_toml_value(i) for i in items) + "]"
    raise EdgeDLError(f"cannot write {v!r} to a profile")


def write_profile(target, path) -> None:
    """Write ``target`` as a profile file (facts, choices and its ``[tuned]`` table), atomically."""
    from .targets.profile import CHOICE_FIELDS, FACT_FIELDS

    lines = [f"# tuned by `edgedl tune` on {time.strftime('%Y-%m-%d %H:%M')}", f"name = {_toml_value(target.name)}",
             f"description = {_toml_value(target.description or target.name)}", "", "[facts]"]
    for name in FACT_FIELDS:
        v = getattr(target, name)
        if v is None or (name in ("big_cores", "little_cores", "features") and not v):
            continue
        lines.append(f"{name} = {_toml_value(v)}")
    lines += ["", "[choices]"]
    for name in CHOICE_FIELDS:
        v = getattr(target, name)
        if v is not None:
            lines.append(f"{name} = {_toml_value(v)}")
    if target.tuned:
        lines += ["", "[tuned]"] + [f"{k} = {_toml_value(v)}" for k, v in target.tuned.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def format_result(r: TuneResult) -> list[str]:
    """The before/after table."""
    out = ["| choice | shipped | tuned | candidates (median ms) |", "|---|---|---|---|"]
    for st in r.stages:
        order = sorted(st.measured.items(), key=lambda kv: (kv[0] is not None, str(type(kv[0])), kv[0] or 0))
        cands = ", ".join(f"{'default' if k is None else k}: {v * 1e3:.3f}" for k, v in order)
        out.append(f"| {st.choice} | {st.shipped if st.shipped is not None else 'default'} | "
                   f"{st.picked if st.picked is not None else 'default'} | {cands} |")
    verdict = ("kept the shipped choices (no other choice was faster beyond noise)" if r.kept_shipped
               else f"{r.before / r.after:.2f}x faster")
    out.append(f"\nmedian latency: shipped {r.before * 1e3:.3f} ms, tuned {r.after * 1e3:.3f} ms: {verdict}")
    if r.path:
        out.append(f"wrote {r.path}")
    return out
