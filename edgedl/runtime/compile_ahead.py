"""A cold first start in two processes: the GEMM tasks in this one, everything else in a helper.

On an empty kernel cache a model's first result waits for every kernel it uses to compile, one after the
other (Numba compiles lazily, in call order, one function at a time per process). Most of that time is one
function, the GEMM task (the fp32 one's vectorized microkernels, or the int8 kernel's packing, dot-product
tiles and requantization; see :mod:`edgedl.kernels.cpu.native`), that every convolution and matrix product
calls; the rest are dozens of small kernels. :func:`maybe_compile_ahead`, called by ``edgedl.load`` while
a model loads, splits the work across two cores:

* this process compiles the GEMM tasks the model's layers call (into the on-disk cache);
* meanwhile a helper process (``python -m edgedl.runtime.compile_ahead``) loads the same model with the same
  target, thread count and codegen and runs it once on zeros (symbolic dimensions bound to 1, as
  ``Model.plan()``) with those tasks replaced by stand-ins that do nothing
  (:func:`edgedl.kernels.cpu.native.use_stubs`): every other kernel compiles into the cache there.

The model then plans and runs here with every kernel loaded from the cache. Nothing the helper computes is
used. When the helper cannot run (it fails, the board has one core or little free memory), this process
compiles what is missing itself, as before. It runs only when a GEMM task the model's layers call is missing
from the cache; ``EDGEDL_COMPILE_AHEAD=0`` turns it off.
"""
from __future__ import annotations

import os
import sys

#: layers whose kernels call the fp32 GEMM task
GEMM_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "DeformConv", "DFT", "STFT", "Einsum", "LSTM",
                      "GRU", "RNN"})
#: onnxruntime's contrib layers that run on the fp32 GEMM
CONTRIB_GEMM_OPS = frozenset({"FusedConv", "FusedGemm", "FusedMatMul", "TransposeMatMul", "DynamicQuantizeLSTM"})
#: layers whose kernels call an int8 GEMM task (after the load-time passes lower a QDQ model)
INT8_GEMM_OPS = frozenset({"QLinearConv", "QLinearConvTranspose", "QLinearMatMul", "QGemm", "ConvInteger",
                           "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
#: a helper beside the main process needs about this much free memory (its peak resident size, measured
#: ~230 MB for the bundled example, with margin)
MIN_FREE_BYTES = 600 << 20
#: a helper still running after this many seconds is stopped (this process then compiles what is missing)
TIMEOUT_S = 900.0


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _free_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def skip_reason(graph) -> str | None:
    """Why a model's cold start would not use a helper process (None: it would, if kernels are missing)."""
    from ..threads import env_flag

    if not env_flag("EDGEDL_COMPILE_AHEAD", True):
        return "EDGEDL_COMPILE_AHEAD=0"
    from ..kernels.cpu import native

    if native._stub_report is not None:
        return "this is a compile-ahead helper"
    if not _gemm_kinds(graph):
        return "no layer uses a GEMM task"
    if _usable_cores() < 2:
        return "one core"
    free = _free_bytes()
    if free is not None and free < MIN_FREE_BYTES:
        return f"{free >> 20} MB of free memory"
    return None


def _gemm_kinds(graph) -> set[str]:
    """Which GEMM tasks the layers of ``graph`` call: ``"fp32"``, ``"int8"``."""
    kinds = set()
    for node in graph.nodes:
        if node.op_type in GEMM_OPS and node.domain in ("", "ai.onnx"):
            kinds.add("fp32")
        elif node.op_type in CONTRIB_GEMM_OPS and node.domain == "com.microsoft":
            kinds.add("fp32")
        elif node.op_type in INT8_GEMM_OPS:
            kinds.add("int8")
    return kinds


def missing_natives(graph, target=None) -> list:
    """The GEMM tasks ``graph``'s layers call (the fp32 task; the int8 task of the kernel ``target`` prefers,
    with 8-bit outputs) that are neither in this process nor in the on-disk cache (a probe loads the others)."""
    kinds = _gemm_kinds(graph)
    wanted = []
    if "fp32" in kinds:
        from ..kernels.cpu import gemm  # noqa: F401 - defines the fp32 GEMM task
        from ..kernels.cpu.native import all_native

        wanted += [fn for fn in all_native() if fn.ahead]
    if "int8" in kinds:
        from ..kernels.cpu import config, gemm_i8

        config.apply_target(target)  # the target's int8 kernel choice
        wanted.append(gemm_i8.task_natives(gemm_i8.preferred_kernel())[0])
    return [fn for fn in wanted if not fn.cached()]


def maybe_compile_ahead(source_graph, target, num_threads: int | None, optimize: bool = True,
                        graph=None) -> dict | None:
    """Compile a model's kernels into the cache in two processes when its cold start would benefit (see the
    module docstring). ``graph``: the model as it will run (after the load-time passes, which turn a
    quantized model's Conv into QLinearConv); default ``source_graph``. Returns what happened (None when
    nothing was done)."""
    graph = source_graph if graph is None else graph
    if skip_reason(graph) is not None:
        return None
    missing = missing_natives(graph, target)
    if not missing:
        return None
    return compile_ahead(source_graph, target, num_threads, optimize, first=missing)


def _child_env() -> dict:
    """The helper's environment: this process's codegen (so its cache entries are the ones this process
    loads), no target variable (it gets the resolved target), quiet, fixed threads."""
    from numba.core import config

    env = dict(os.environ)
    env.pop("EDGEDL_TARGET", None)
    for var, value in (("NUMBA_CPU_NAME", config.CPU_NAME), ("NUMBA_CPU_FEATURES", config.CPU_FEATURES)):
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value
    env.update(EDGEDL_QUIET_COMPILE="1", EDGEDL_FOLLOW_LOAD="0", EDGEDL_COMPILE_AHEAD="0", EDGEDL_TUNED="0")
    return env


def compile_ahead(source_graph, target, num_threads: int | None, optimize: bool = True, first=()) -> dict:
    """Run the helper on ``source_graph`` while this process compiles the native functions ``first``; see the
    module docstring. Returns ``{"helper": "done" | "failed: ...", "natives": [compiled here], "stubbed":
    [stood in for in the helper], "stats": {the helper's kernel counts}}``."""
    import json
    import pickle
    import subprocess
    import tempfile
    import threading

    from ..threads import wanted_threads

    threads = wanted_threads(num_threads, None if target is None else target.threads)
    # the helper gets the target without its codegen: this process's codegen reaches it through the
    # NUMBA_CPU_* variables (equal even when the target's could not apply here)
    child_target = None if target is None else target.replace(codegen_cpu=None, codegen_features=None)
    result = {"helper": "failed", "natives": [], "stubbed": [], "stats": {}}
    spec = {"graph": source_graph, "optimize": optimize, "target": child_target, "num_threads": num_threads,
            "threads": threads, "stub": [fn.key for fn in first]}
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "edgedl.runtime.compile_ahead"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, env=_child_env())
        except OSError as e:  # no helper: this process compiles everything, as without one
            result["helper"] = f"failed: {e}"
            return result
        timer = threading.Timer(TIMEOUT_S, proc.kill)
        timer.daemon = True
        timer.start()
        try:
            try:
                proc.stdin.write(pickle.dumps(spec))
                proc.stdin.close()
            except OSError:
                pass  # the helper is gone already: its exit status says why
            for fn in first:
                fn.compile()
                result["natives"].append(fn.key)
            for raw in proc.stdout:
                word, _, rest = raw.decode(errors="replace").strip().partition(" ")
                if word == "stubbed":
                    result["stubbed"].append(rest)
                elif word == "done":
                    result["helper"] = "done"
                    result["stats"] = json.loads(rest or "{}")
            rc = proc.wait()
            if rc != 0:
                err.seek(0)
                tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
                result["helper"] = f"failed: exit {rc}" + (f": {tail[0]}" if tail else "")
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return result


def _helper_main() -> int:
    """The helper: load the model given on stdin, run it once with native functions stubbed out."""
    import json
    import pickle

    spec = pickle.load(sys.stdin.buffer)
    import numpy as np

    import edgedl
    from edgedl.kernels.cpu.native import use_stubs
    from edgedl.runtime.warmup import kernel_cache_stats

    asked: set[str] = set()

    def report(fn) -> None:
        if fn.key not in asked:
            asked.add(fn.key)
            print("stubbed", fn.key, flush=True)

    use_stubs(report, spec["stub"])  # what the main process compiles meanwhile; the rest compiles here
    edgedl.set_num_threads(spec["threads"], follow_load=False)
    from edgedl.board import resolve

    model = edgedl._model_from_source(spec["graph"], resolve(spec["target"]), spec["num_threads"], spec["optimize"])
    plan = model.plan()
    model.run({n: np.zeros(t.shape, t.dtype) for n, t in plan.input_types.items()})
    print("done", json.dumps(kernel_cache_stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_helper_main())
