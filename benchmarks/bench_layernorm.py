"""LayerNormalization (opset 17, axis -1, Scale and B constants): edgedl against onnxruntime.

Run:  python benchmarks/bench_layernorm.py [--threads 1 2] [--repeat 7] [--rounds 3] [--same-process]

Shapes: (1, 128, 768) (BERT-base, one sequence), (8, 197, 384) (ViT-S/16, a batch of 8), (1, 1500, 512)
(Whisper-base encoder). Every (engine, thread count) pair runs in its own child process (no shared thread
pools, caches or allocator state); ``--same-process`` runs them all in this process instead. edgedl runs with
``EDGEDL_FOLLOW_LOAD=0`` (the thread count asked for, as onnxruntime's ``intra_op_num_threads``, instead of
fewer threads beside other busy work).

Each engine is timed two ways, best of ``--repeat`` batches of calls (and of ``--rounds`` fresh processes,
the engines taking turns, so that a burst of other load on the machine hits both):

* ``run``: the public API with a fresh output per call, ``InferenceSession.run`` against ``Model.run``;
* ``core``: the operator alone on preallocated arrays, onnxruntime's ``run_with_iobinding`` (output bound to
  a numpy array) against edgedl's bound kernel (what a plan step calls).

Prints microseconds per call and the speedup ``onnxruntime / edgedl`` (> 1: edgedl is faster). Timings are
wall clock: meaningful only on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = [(1, 128, 768), (8, 197, 384), (1, 1500, 512)]


def make_model(shape):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    h = shape[-1]
    inits = [numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "bias")]
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1, epsilon=1e-5)
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def best_time(fn, repeat: int, min_seconds: float = 0.05) -> float:
    """Seconds per call: the best of ``repeat`` rounds, each long enough to time reliably."""
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt >= min_seconds:
            break
        n *= 2
    best = dt / n
    for _ in range(repeat - 1):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def bench_ort(shape, threads: int, repeat: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(make_model(shape).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    y = np.empty(shape, np.float32)
    io = sess.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("y", "cpu", 0, np.float32, list(shape), y.ctypes.data)
    return {"run": best_time(lambda: sess.run(None, {"x": x}), repeat),
            "core": best_time(lambda: sess.run_with_iobinding(io), repeat)}


def bench_edgedl(shape, threads: int, repeat: int) -> dict:
    import edgedl
    from edgedl.kernels.cpu.layer_norm import RowNorm

    model = edgedl.load(make_model(shape).SerializeToString(), num_threads=threads)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    model.run({"x": x})  # compiles (or loads) the kernels, builds and binds the plan
    res = {"run": best_time(lambda: model.run({"x": x}), repeat)}
    rng = np.random.default_rng(0)
    g, b = (rng.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    y = np.empty(shape, np.float32)
    rows = int(np.prod(shape[:-1]))
    call = RowNorm(rows, shape[-1], 1e-5, False).bind(x, g, b, y, threads=threads)
    import numba

    numba.set_num_threads(threads)
    res["core"] = best_time(call, repeat)
    return res


def child(engine: str, shape, threads: int, repeat: int) -> dict:
    fn = bench_ort if engine == "ort" else bench_edgedl
    return fn(tuple(shape), threads, repeat)


def _best(a: dict | None, b: dict) -> dict:
    return b if a is None else {k: min(a[k], b[k]) for k in a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per engine, taking turns")
    ap.add_argument("--same-process", action="store_true", help="run every engine in this process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("EDGEDL_FOLLOW_LOAD", "0")  # before edgedl is imported (here or in a child)
    if args.child:
        engine, shape, threads = json.loads(args.child)
        print(json.dumps(child(engine, shape, threads, args.repeat)))
        return

    def measure(engine, shape, threads):
        if args.same_process:
            return child(engine, shape, threads, args.repeat)
        env = dict(os.environ, NUMBA_NUM_THREADS=str(max(args.threads)), OMP_NUM_THREADS=str(threads),
                   EDGEDL_FOLLOW_LOAD="0")
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeat", str(args.repeat), "--child",
                              json.dumps([engine, list(shape), threads])], capture_output=True, text=True, env=env,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"LayerNormalization, float32, axis -1; {os.cpu_count()} cores; best of {args.repeat} x {args.rounds}; "
          f"{'one process' if args.same_process else 'one process per engine and thread count'}")
    print(f"{'shape':>16} {'thr':>3} | {'ort run':>9} {'edgedl run':>10} {'speedup':>7} | "
          f"{'ort core':>9} {'edgedl core':>11} {'speedup':>7}")
    for shape in SHAPES:
        for threads in args.threads:
            o = e = None
            for _ in range(max(1, args.rounds)):
                o = _best(o, measure("ort", shape, threads))
                e = _best(e, measure("edgedl", shape, threads))
            print(f"{str(shape):>16} {threads:>3} | {o['run'] * 1e6:8.1f}u {e['run'] * 1e6:9.1f}u "
                  f"{o['run'] / e['run']:6.2f}x | {o['core'] * 1e6:8.1f}u {e['core'] * 1e6:10.1f}u "
                  f"{o['core'] / e['core']:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
