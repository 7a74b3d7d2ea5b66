"""Batch-1 latency beside other busy work: edgedl against onnxruntime, alone and beside busy-loop processes.

Edge boards run other work beside the model (a camera loop, audio capture, a web server). This script starts
busy-loop processes beside the model (none, one, then one per core; it stops them), and for each model,
engine and thread count runs several fresh processes, each alone with its engine: load, warm up, then time
single runs for a few seconds. It reports the median over processes of each process's p50 and p90.

    pip install ".[test]" && python benchmarks/contention.py
    python benchmarks/contention.py --models examples/kws_tc_resnet.onnx rec.onnx:1x3x48x320 --procs 5

A model is ``PATH`` or ``PATH:SHAPE`` (SHAPE like ``1x3x48x320`` for its first input; symbolic dimensions
default to 1). Published models to try: the PP-OCRv4 detection and recognition models in the
``rapidocr-onnxruntime`` wheel (``pip download --no-deps rapidocr-onnxruntime==1.4.4`` and unzip it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_MODELS = [os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"), os.path.join(ROOT, "examples",
                                                                                      "digits_cnn.onnx")]

BUSY_LOOP = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True:\n    pass\n"


def parse_model(spec: str) -> tuple[str, tuple[int, ...] | None]:
    """``PATH`` or ``PATH:1x3x48x320``."""
    path, sep, shape = spec.rpartition(":")
    if sep and shape and all(p.isdigit() for p in shape.split("x")):
        return path, tuple(int(p) for p in shape.split("x"))
    return spec, None


def worker(engine: str, path: str, threads: int, seconds: float, shape) -> dict:
    """Time single runs of one model in this process; returns latencies in ms."""
    import numpy as np

    if engine == "edgedl":
        import edgedl

        model = edgedl.load(path, num_threads=threads)
        inp = model.inputs[0]
        feed_shape = shape or tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        x = np.random.default_rng(0).standard_normal(feed_shape).astype(inp.dtype)
        name = inp.name

        def run():
            model.run({name: x})
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed_shape = shape or tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        x = np.random.default_rng(0).standard_normal(feed_shape).astype(np.float32)
        name = inp.name

        def run():
            sess.run(None, {name: x})
    end = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < end:  # warm-up: caches, thread pools, the load monitor's first window
        run()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and len(times) < 100000:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    times.sort()
    ms = [t * 1e3 for t in times]
    return {"p50": ms[len(ms) // 2], "p90": ms[int(len(ms) * 0.9)], "runs": len(ms)}


def one_process(engine: str, path: str, threads: int, seconds: float, shape) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, path, str(threads), str(seconds),
           "x".join(map(str, shape)) if shape else "-"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


class BusyLoops:
    """``n`` busy-loop processes for the duration of a ``with`` block."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(self.n)]
        time.sleep(0.3 if self.n else 0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--engines", nargs="+", default=["edgedl", "onnxruntime"])
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and every core")
    ap.add_argument("--loads", type=int, nargs="+", default=None,
                    help="busy-loop processes beside the model (default: 0, 1 and one per core)")
    ap.add_argument("--procs", type=int, default=3, help="fresh processes per cell (median over them)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per process")
    ap.add_argument("--worker", nargs=5, metavar=("ENGINE", "PATH", "THREADS", "SECONDS", "SHAPE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        engine, path, threads, seconds, shape = args.worker
        shape = None if shape == "-" else tuple(int(p) for p in shape.split("x"))
        print(json.dumps(worker(engine, path, int(threads), float(seconds), shape)))
        return
    cores = os.cpu_count() or 1
    threads = args.threads or sorted({1, cores})
    loads = args.loads if args.loads is not None else sorted({0, 1, cores})
    results = {}
    for load in loads:
        with BusyLoops(load):
            for spec in args.models:
                path, shape = parse_model(spec)
                for t in threads:
                    for engine in args.engines:
                        runs = [one_process(engine, path, t, args.seconds, shape) for _ in range(args.procs)]
                        cell = {k: statistics.median(r[k] for r in runs) for k in ("p50", "p90")}
                        results[(os.path.basename(path), load, t, engine)] = cell
                        print(f"load {load} {os.path.basename(path)} {engine} {t} thread(s): p50 {cell['p50']:.3f} "
                              f"ms p90 {cell['p90']:.3f} ms", file=sys.stderr, flush=True)
    print_table(results, args.engines, cores)


def print_table(results: dict, engines: list[str], cores: int) -> None:
    both = "edgedl" in engines and "onnxruntime" in engines
    head = "| model | busy cores beside | threads | " + " | ".join(f"{e} p50 / p90 (ms)" for e in engines)
    head += " | edgedl / onnxruntime p50 | p90 |" if both else " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    models = list(dict.fromkeys(k[0] for k in results))
    loads = sorted({k[1] for k in results})
    threads = sorted({k[2] for k in results})
    ratios50, ratios90 = [], []
    for m in models:
        for load in loads:
            for t in threads:
                cells = [results.get((m, load, t, e)) for e in engines]
                if any(c is None for c in cells):
                    continue
                row = f"| {m} | {load} of {cores} | {t} | " + " | ".join(
                    f"{c['p50']:.3f} / {c['p90']:.3f}" for c in cells)
                if both:
                    e, o = results[(m, load, t, "edgedl")], results[(m, load, t, "onnxruntime")]
                    r50, r90 = e["p50"] / o["p50"], e["p90"] / o["p90"]
                    row += f" | {r50:.2f} | {r90:.2f} |"
                    if t > 1:
                        ratios50.append(r50)
                        ratios90.append(r90)
                else:
                    row += " |"
                print(row)
    if ratios50:
        g50 = statistics.geometric_mean(ratios50)
        g90 = statistics.geometric_mean(ratios90)
        print(f"\ngeometric mean of edgedl / onnxruntime at {max(threads)} threads: p50 {g50:.2f}, p90 {g90:.2f}")


if __name__ == "__main__":
    main()
