"""Resize (float32, NCHW): edgedl against onnxruntime.

Run:  python benchmarks/bench_resize.py [--threads 1 2] [--repeat 7] [--rounds 3] [--same-process] [--cases ...]

Cases (opset 19, constant scales/sizes, the default half_pixel coordinates):

* ``cubic_up``: cubic (1, 3, 224, 224) -> (1, 3, 448, 448) (image upscaling before a model);
* ``cubic_aa_down``: cubic with antialias (1, 3, 448, 448) -> (1, 3, 224, 224) (PIL-style downscaling);
* ``linear_2x``: linear 2x of a (1, 64, 80, 80) feature map (FPN / segmentation heads);
* ``nearest_2x``: nearest 2x of (1, 256, 20, 20) (YOLO's upsampling neck).

Every (engine, thread count) pair runs in its own child process (no shared thread pools, caches or
allocator state); ``--same-process`` runs them all in this process instead. edgedl runs with
``EDGEDL_FOLLOW_LOAD=0`` (the thread count asked for, as onnxruntime's ``intra_op_num_threads``).

Each engine is timed through its public API with a fresh output per call (``InferenceSession.run`` against
``Model.run``): the median of ``--repeat`` batches of calls (each batch long enough to time), and over
``--rounds`` fresh processes (the engines taking turns) the smallest of those medians; also the best batch.
Prints microseconds per call and the ratio ``onnxruntime / edgedl`` (> 1: edgedl is faster). Wall-clock
timings: meaningful only on an otherwise idle machine (with other work on the cores, a parallel region waits
for a descheduled thread: the multi-thread medians suffer first, the best batches less).
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

#: name -> (input shape, attributes, scales or None, sizes or None)
CASES = {
    "cubic_up": ((1, 3, 224, 224), {"mode": "cubic"}, None, (1, 3, 448, 448)),
    "cubic_aa_down": ((1, 3, 448, 448), {"mode": "cubic", "antialias": 1}, None, (1, 3, 224, 224)),
    "linear_2x": ((1, 64, 80, 80), {"mode": "linear"}, (1.0, 1.0, 2.0, 2.0), None),
    "nearest_2x": ((1, 256, 20, 20), {"mode": "nearest"}, (1.0, 1.0, 2.0, 2.0), None),
}


def out_shape(case: str) -> list[int]:
    shape, _, scales, sizes = CASES[case]
    return list(sizes) if sizes is not None else [int(np.floor(d * s)) for d, s in zip(shape, scales)]


def make_model(case: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape, attrs, scales, sizes = CASES[case]
    inits, names = [], ["x", "", "", ""]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.asarray(scales, np.float32), "scales"))
        names[2] = "scales"
    else:
        inits.append(numpy_helper.from_array(np.asarray(sizes, np.int64), "sizes"))
        names[3] = "sizes"
    while names[-1] == "":
        names.pop()
    node = helper.make_node("Resize", names, ["y"], **attrs)
    graph = helper.make_graph([node], case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape(case))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def median_time(fn, repeat: int, min_seconds: float = 0.05) -> tuple[float, float]:
    """Seconds per call: (median, best) of ``repeat`` batches, each long enough to time reliably."""
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
    times = [dt / n]
    for _ in range(repeat - 1):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n)
    return float(np.median(times)), float(np.min(times))


def _input(case: str) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(CASES[case][0]).astype(np.float32)


def bench_ort(case: str, threads: int, repeat: int) -> tuple[tuple[float, float], np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(make_model(case).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = _input(case)
    return median_time(lambda: sess.run(None, {"x": x}), repeat), sess.run(None, {"x": x})[0]


def bench_edgedl(case: str, threads: int, repeat: int) -> tuple[tuple[float, float], np.ndarray]:
    import edgedl

    model = edgedl.load(make_model(case).SerializeToString(), num_threads=threads)
    x = _input(case)
    y = model.run({"x": x})["y"]  # compiles (or loads) the kernels, builds and binds the plan
    return median_time(lambda: model.run({"x": x}), repeat), y


def child(engine: str, case: str, threads: int, repeat: int) -> dict:
    fn = bench_ort if engine == "ort" else bench_edgedl
    (seconds, best), y = fn(case, threads, repeat)
    # a checksum of the output, so that the parent can see both engines computed the same thing
    return {"seconds": seconds, "best": best, "sum": float(np.float64(y).sum()), "absmax": float(np.abs(y).max()),
            "shape": list(y.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per engine, taking turns")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--same-process", action="store_true", help="run every engine in this process")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("EDGEDL_FOLLOW_LOAD", "0")  # before edgedl is imported (here or in a child)
    if args.child:
        engine, case, threads = json.loads(args.child)
        print(json.dumps(child(engine, case, threads, args.repeat)))
        return

    def measure(engine, case, threads):
        if args.same_process:
            return child(engine, case, threads, args.repeat)
        env = dict(os.environ, NUMBA_NUM_THREADS=str(max(args.threads)), OMP_NUM_THREADS=str(threads),
                   EDGEDL_FOLLOW_LOAD="0")
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeat", str(args.repeat), "--child",
                              json.dumps([engine, case, threads])], capture_output=True, text=True, env=env,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"Resize, float32, opset 19; {os.cpu_count()} cores; median of {args.repeat} batches, best of "
          f"{args.rounds} rounds; {'one process' if args.same_process else 'one process per engine and thread count'}")
    print(f"{'case':>14} {'shape':>28} {'thr':>3} | {'ort':>9} {'edgedl':>9} {'ort/edgedl':>10} | "
          f"{'ort best':>9} {'edgedl best':>11} {'ratio':>6} | check")
    results = []
    for case in args.cases:
        shape, _, _, _ = CASES[case]
        for threads in args.threads:
            o = e = None
            for _ in range(max(1, args.rounds)):
                r = measure("ort", case, threads)
                o = r if o is None else {**r, "seconds": min(o["seconds"], r["seconds"]), "best": min(o["best"],
                                                                                                      r["best"])}
                r = measure("edgedl", case, threads)
                e = r if e is None else {**r, "seconds": min(e["seconds"], r["seconds"]), "best": min(e["best"],
                                                                                                      r["best"])}
            same = o["shape"] == e["shape"] and abs(o["sum"] - e["sum"]) <= 1e-4 * max(1.0, o["absmax"]) * np.prod(
                o["shape"]) ** 0.5
            out_shape = "x".join(map(str, e["shape"]))
            print(f"{case:>14} {'x'.join(map(str, shape)) + '->' + out_shape:>28} {threads:>3} | "
                  f"{o['seconds'] * 1e6:8.0f}u {e['seconds'] * 1e6:8.0f}u {o['seconds'] / e['seconds']:9.2f}x | "
                  f"{o['best'] * 1e6:8.0f}u {e['best'] * 1e6:10.0f}u {o['best'] / e['best']:5.2f}x | "
                  f"{'same sum' if same else 'SUMS DIFFER'}", flush=True)
            results.append({"case": case, "threads": threads, "ort_s": o["seconds"], "edgedl_s": e["seconds"],
                            "ort_best_s": o["best"], "edgedl_best_s": e["best"]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
