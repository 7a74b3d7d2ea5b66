"""Batch-1 latency of models, edgedl against onnxruntime, through ``edgedl bench`` (each engine and setting in
its own fresh process): at 1 thread and at every core, alone and beside busy-loop processes, medians over
several repetitions. This produces the README's performance tables.

    pip install ".[test]" && python benchmarks/bench_models.py                       # the zoo, 3 repetitions
    python benchmarks/bench_models.py --busy 0 1 2 --models examples/kws_tc_resnet.onnx rec.onnx:x=1,3,48,320
    python benchmarks/bench_models.py --json all.json   # every report, for edgedl's report tools

Models: ``--zoo`` (the default) writes the zoo's models (mobilenet_v2_like at 224 and 0.5x 128, resnet_like
224, kws_tc_resnet, nhwc_cnn 64) to a temporary folder; ``--models`` takes files, each ``PATH`` or
``PATH:NAME=D1,D2,...`` for symbolic dimensions. Every repetition runs every model once through
:func:`edgedl.bench` (so slow drifts of a shared machine hit both engines alike); a cell of the table is the
median over repetitions of each process's p50 (and p90). Busy neighbours: ``--busy 0 1 2`` runs each
repetition alone, beside one busy-loop process, then two.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import edgedl
from edgedl.benchmark.inputs import parse_shape_args
from edgedl.benchmark.report import write_json

ZOO = {
    "mobilenet_v2_like 224": ("mobilenet_v2_like", {}),
    "mobilenet_v2_like 0.5x 128": ("mobilenet_v2_like", {"resolution": 128, "width": 0.5}),
    "resnet_like 224": ("resnet_like", {}),
    "kws_tc_resnet": ("kws_tc_resnet", {}),
    "nhwc_cnn 64": ("nhwc_cnn", {}),
}


def write_zoo(folder: str) -> list[tuple[str, str, dict]]:
    """(label, path, shapes) of the zoo models written to ``folder``."""
    import onnx

    from edgedl import zoo

    out = []
    for label, (fn, kwargs) in ZOO.items():
        path = os.path.join(folder, label.replace(" ", "_").replace(".", "") + ".onnx")
        onnx.save(getattr(zoo, fn)(**kwargs), path)
        out.append((label, path, {}))
    return out


def parse_models(specs: list[str]) -> list[tuple[str, str, dict]]:
    out = []
    for spec in specs:
        path, sep, shape = spec.partition(":")
        shapes = parse_shape_args([shape]) if sep else {}
        out.append((os.path.basename(path), path, shapes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, help="model files (default: the zoo)")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and every core")
    ap.add_argument("--busy", type=int, nargs="+", default=[0], help="busy-loop processes beside (default 0)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (fresh processes each; default 3)")
    ap.add_argument("--max-secs", type=float, default=3.0, help="timed seconds per process (default 3)")
    ap.add_argument("--runs", type=int, default=100000, help="timed runs per process, at most")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json", default=None, help="write every report here")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    threads = args.threads or sorted({1, cores})
    reports = []
    cells: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = parse_models(args.models) if args.models else write_zoo(tmp)
        for rep in range(args.repeat):
            for busy in args.busy:
                for label, path, shapes in models:
                    print(f"repetition {rep + 1}/{args.repeat}, {busy} busy, {label}", file=sys.stderr, flush=True)
                    report = edgedl.bench(path, threads=threads, runs=args.runs, warmup=20, max_secs=args.max_secs,
                                          precision=args.precision, shapes=shapes or None,
                                          compare_with=["onnxruntime"], busy=busy)
                    report["label"] = label
                    reports.append(report)
                    for run in report["runs"]:
                        if run["status"] == "ok":
                            key = (label, busy, run["precision"], run["threads"], run["engine"])
                            cells.setdefault(key, []).append(run["latency_ms"])
    if args.json:
        write_json(reports, args.json)
    print_table(cells, [m[0] for m in models], args.busy, threads, cores)


def print_table(cells: dict, labels: list[str], loads: list[int], threads: list[int], cores: int) -> None:
    """One markdown row per model, busy count, precision and thread count: medians over repetitions."""
    print("| model | busy cores beside | precision | threads | edgedl p50 / p90 (ms) | onnxruntime p50 / p90 (ms) "
          "| edgedl / onnxruntime p50 | p90 |")
    print("|---|---|---|---|---|---|---|---|")
    ratios: dict = {}
    precisions = sorted({k[2] for k in cells})
    for label in labels:
        for busy in loads:
            for prec in precisions:
                for t in threads:
                    e, o = cells.get((label, busy, prec, t, "edgedl")), cells.get((label, busy, prec, t, "onnxruntime"))
                    if not e or not o:
                        continue
                    e50, e90 = (statistics.median(s[k] for s in e) for k in ("p50", "p90"))
                    o50, o90 = (statistics.median(s[k] for s in o) for k in ("p50", "p90"))
                    ratios.setdefault((busy, prec, t), []).append(e50 / o50)
                    print(f"| {label} | {busy} of {cores} | {prec} | {t} | {e50:.3g} / {e90:.3g} | {o50:.3g} / {o90:.3g} "
                          f"| {e50 / o50:.2f} | {e90 / o90:.2f} |")
    for (busy, prec, t), values in sorted(ratios.items()):
        print(f"geometric mean of edgedl / onnxruntime p50, {prec}, {t} thread(s), {busy} busy: "
              f"{statistics.geometric_mean(values):.2f} over {len(values)} models")


if __name__ == "__main__":
    main()
