"""Run the model benchmark several times, each in a fresh process, and summarize the ratios robustly.

On a shared machine a whole process can run at a fraction of its usual speed (scheduling, cache placement
of its threads), for either engine. One pytest-benchmark run therefore gives ratios that swing by 1.5-2x;
the median over several fresh processes does not.

    pip install ".[test]" && python benchmarks/repeat.py --runs 5 [--threads 2]
    python benchmarks/repeat.py --suite int8 --runs 5

Prints, per case, the edgedl / onnxruntime ratio of median latencies in every run, their median, the
median latencies of both engines, and the geometric mean of the per-case median ratios. The int8 suite
(benchmarks/test_bench_int8.py) compares edgedl int8 with the faster of onnxruntime's two int8 models (the
same QDQ file, and onnxruntime's own uint8-activation quantization of the model) and with edgedl fp32.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


SUITES = {"models": "test_bench_models.py", "int8": "test_bench_int8.py"}


def one_run(threads: int, path: str, suite: str = "models") -> dict[str, dict[str, float]]:
    """{case: {engine: median seconds}} of one pytest-benchmark run in a fresh process."""
    env = dict(os.environ, EDGEDL_BENCH_THREADS=str(threads))
    cmd = [sys.executable, "-m", "pytest", os.path.join(HERE, SUITES[suite]), "--benchmark-only", "-q",
           f"--benchmark-json={path}", "-p", "no:cacheprovider"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    with open(path) as f:
        data = json.load(f)
    out: dict[str, dict[str, float]] = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        out.setdefault(info["case"], {})[info["engine"]] = b["stats"]["median"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--suite", choices=sorted(SUITES), default="models")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            runs.append(one_run(args.threads, os.path.join(tmp, f"run{i}.json"), args.suite))
            print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
    cases = sorted(set.intersection(*(set(r) for r in runs)))
    if args.suite == "int8":
        return summarize_int8(runs, cases, args)
    print(f"{args.threads} thread(s), {args.runs} runs; latency = median over runs of each run's median")
    print(f"{'case':<28} {'edgedl ms':>10} {'ort ms':>8} {'ratio':>6}   per-run ratios")
    medians = []
    for case in cases:
        ratios = [r[case]["edgedl"] / r[case]["onnxruntime"] for r in runs]
        e = statistics.median(r[case]["edgedl"] for r in runs) * 1e3
        o = statistics.median(r[case]["onnxruntime"] for r in runs) * 1e3
        med = statistics.median(ratios)
        medians.append(med)
        print(f"{case:<28} {e:>10.3f} {o:>8.3f} {med:>6.2f}   " + " ".join(f"{x:.2f}" for x in ratios))
    gm = math.exp(sum(math.log(m) for m in medians) / len(medians))
    print(f"geometric mean of the median ratios: {gm:.2f}")


def summarize_int8(runs, cases, args) -> None:
    print(f"{args.threads} thread(s), {args.runs} runs; latency = median over runs of each run's median (ms)")
    print(f"{'case':<28} {'int8':>8} {'ort int8':>9} {'ort u8s8':>9} {'fp32':>8} {'int8/ort':>9} {'fp32/int8':>10}")
    vs_ort, vs_fp32 = [], []
    for case in cases:
        med = {e: statistics.median(r[case][e] for r in runs) * 1e3 for e in runs[0][case]}
        r_ort = statistics.median(r[case]["edgedl-int8"] / min(r[case]["onnxruntime-int8"],
                                                                 r[case]["onnxruntime-int8-u8s8"]) for r in runs)
        r_fp = statistics.median(r[case]["edgedl-fp32"] / r[case]["edgedl-int8"] for r in runs)
        vs_ort.append(r_ort)
        vs_fp32.append(r_fp)
        print(f"{case:<28} {med['edgedl-int8']:>8.3f} {med['onnxruntime-int8']:>9.3f} "
              f"{med['onnxruntime-int8-u8s8']:>9.3f} {med['edgedl-fp32']:>8.3f} {r_ort:>9.2f} {r_fp:>10.2f}")
    gm = (lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs)))
    print(f"geometric means: edgedl int8 / best onnxruntime int8 {gm(vs_ort):.2f}; "
          f"edgedl fp32 / edgedl int8 {gm(vs_fp32):.2f}")


if __name__ == "__main__":
    main()
