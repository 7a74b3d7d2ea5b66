"""Cold and warm time to first result: a fresh process imports edgedl, loads a model and runs it once.

Cold: an empty Numba cache (every kernel compiles). Warm: the cache filled by the cold run.

    python benchmarks/startup.py [model.onnx] [--runs 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import time, json, sys
t0 = time.perf_counter()
import numpy as np, edgedl
from edgedl.runtime.warmup import kernel_cache_stats
t1 = time.perf_counter()
m = edgedl.load(sys.argv[1])
t2 = time.perf_counter()
plan = m.plan()
feeds = {n: np.zeros(t.shape, t.dtype) for n, t in plan.input_types.items()}
m.run(feeds)
t3 = time.perf_counter()
import resource
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak resident MB (Linux: KB)
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first_run": t3 - t2, "rss_mb": rss, **kernel_cache_stats()}))
"""


def measure(model: str, cache: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, model], env=env, capture_output=True, text=True, check=True)
    total = time.perf_counter() - t0
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process": total}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default=os.path.join(here, "..", "examples", "kws_tc_resnet.onnx"))
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            cold = measure(args.model, cache)
            warm = measure(args.model, cache)
        for name, r in (("cold", cold), ("warm", warm)):
            print(f"{name}: process {r['process']:.2f} s (import {r['import']:.2f} s, load {r['load']:.2f} s, "
                  f"first run {r['first_run']:.2f} s; peak RSS {r['rss_mb']:.0f} MB; kernels compiled "
                  f"{r['cache_misses']}, from cache {r['cache_hits']})")


if __name__ == "__main__":
    main()
