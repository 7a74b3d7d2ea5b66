"""Batch-1 latency of models, edgedl against onnxruntime, through ``edgedl bench`` (each engine and setting in
its own fresh process): at 1 thread and at every core, alone and beside busy-loop processes, medians over
several repetitions. This produces the README's performance tables.

    pip install ".[test]" && python benchmarks/bench_models.py                       # the zoo, 3 repetitions
    python benchmarks/bench_models.py --busy 0 1 2 --models examples/kws_tc_resnet.onnx rec.onnx:x=1,3,48,320
    python benchmarks/bench_models.py --json all.json   # every report, for edgedl's report tools
    python benchmarks/bench_models.py --precision fp32,int8 --ort-u8s8   # the README's int8 table
    python benchmarks/published.py fetch DIR && python benchmarks/bench_models.py --published DIR --zoo

Models: ``--zoo`` (the default) writes the zoo's models (mobilenet_v2_like at 224 and 0.5x 128, resnet_like
224, kws_tc_resnet, nhwc_cnn 64) to a temporary folder; ``--models`` takes files, each ``PATH`` or
``PATH:NAME=D1,D2,...`` for symbolic dimensions. Every repetition runs every model once through
:func:`edgedl.bench` (so slow drifts of a shared machine hit both engines alike); a cell of the table is the
median over repetitions of each process's p50 (and p90). Busy neighbours: ``--busy 0 1 2`` runs each
repetition alone, beside one busy-loop process, then two.

int8 (``--precision fp32,int8``): edgedl quantizes each model (``edgedl.quantize``: minmax, per-channel,
calibrated on 8 seeded random inputs) and onnxruntime runs the same QDQ file. onnxruntime's x86 kernels are
fastest with uint8 activations, so ``--ort-u8s8`` also benchmarks onnxruntime's own quantization of each model
(quant_pre_process + quantize_static: QDQ, uint8 activations, int8 per-channel weights, the same calibration
inputs), which both engines run.

Other scripts reuse :func:`bench_files` (cases through :func:`edgedl.bench`, repetitions outermost) with
:func:`write_protos` (ONNX protos to files), :func:`medians` and :func:`print_ratio_table`.
"""
from __future__ import annotations

import argparse
import math
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


def calibration_file(path: str, shapes: dict, folder: str, count: int = 8) -> str | None:
    """``count`` seeded random inputs for ``path`` (an .npz with a leading sample axis) for int8 calibration; None
    for a model with a scalar input."""
    import numpy as np

    from edgedl.benchmark.inputs import onnx_input_specs, resolve_shapes

    specs = onnx_input_specs(path)
    bound = resolve_shapes(specs, shapes or None, default_batch=1)
    if any(len(bound[s.name]) == 0 for s in specs):
        return None  # a scalar input (a sample rate) has no sample axis: int8 calibrates on the benchmark inputs
    rng = np.random.default_rng(1)
    # samples stacked along the batch (first) axis, which the calibration splits again
    arrays = {s.name: rng.standard_normal((count * bound[s.name][0], *bound[s.name][1:])).astype(s.dtype)
              for s in specs}
    out = os.path.join(folder, os.path.basename(path) + ".calibration.npz")
    np.savez(out, **arrays)
    return out


def ort_u8s8(path: str, calibration: str, folder: str) -> str:
    """onnxruntime's own QDQ quantization of ``path``: uint8 activations, int8 per-channel weights."""
    import numpy as np
    from onnxruntime import quantization as q

    with np.load(calibration) as data:
        feeds = [{k: data[k][i:i + 1] for k in data.files} for i in range(len(data[data.files[0]]))]

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    pre = os.path.join(folder, "pre_" + os.path.basename(path))
    out = os.path.join(folder, "u8s8_" + os.path.basename(path))
    q.shape_inference.quant_pre_process(path, pre, skip_symbolic_shape=True)
    q.quantize_static(pre, out, Reader(), quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, per_channel=True)
    return out


def write_protos(folder: str, protos) -> list[tuple[str, str, dict]]:
    """Save ``(label, onnx.ModelProto)`` pairs to ``folder``: the ``(label, path, shapes)`` cases of
    :func:`bench_files` (static shapes: an empty shapes dict)."""
    import onnx

    out = []
    for i, (label, proto) in enumerate(protos):
        name = "".join(c if c.isalnum() else "_" for c in label)
        path = os.path.join(folder, f"{i:02d}_{name}.onnx")
        onnx.save(proto, path)
        out.append((label, path, {}))
    return out


def bench_case(label: str, path: str, shapes: dict, threads, *, runs: int = 100000, max_secs: float = 3.0,
               busy: int = 0, precision="fp32", calibration: str | None = None) -> dict:
    """One :func:`edgedl.bench` report of one model beside onnxruntime (each engine and thread count in its own
    fresh process, 20 warm-up runs), with ``report["label"]``."""
    threads = [threads] if isinstance(threads, int) else list(threads)
    report = edgedl.bench(path, threads=threads, runs=runs, warmup=20, max_secs=max_secs,
                          precision=precision, calibration=calibration, shapes=shapes or None,
                          compare_with=["onnxruntime"], busy=busy)
    report["label"] = label
    return report


def bench_files(cases, threads, repeat: int, max_secs: float, busy: int = 0, *, reports: list | None = None) -> dict:
    """Latencies of ``cases`` (``(label, path, shapes)``), edgedl and onnxruntime, at each of ``threads``:
    ``repeat`` repetitions, each running every case once through :func:`edgedl.bench` (so slow drifts of a
    shared machine hit every case and both engines alike), ``busy`` busy-loop processes beside.

    Returns ``{(label, threads, engine): [latency_ms dict per repetition]}`` (the report's ``latency_ms``:
    min, mean, p50, p90, p99, max, std; failed runs are left out and said on stderr); :func:`medians` turns it
    into medians over repetitions. ``reports``: a list that collects every report (agreement, notes, JSON).
    """
    cells: dict = {}
    for rep in range(repeat):
        for label, path, shapes in cases:
            print(f"repetition {rep + 1}/{repeat}, {busy} busy, {label}", file=sys.stderr, flush=True)
            report = bench_case(label, path, shapes, threads, max_secs=max_secs, busy=busy)
            if reports is not None:
                reports.append(report)
            for run in report["runs"]:
                if run["status"] == "ok":
                    cells.setdefault((label, run["threads"], run["engine"]), []).append(run["latency_ms"])
                else:
                    print(f"  {label}: {run['engine']} at {run['threads']} thread(s) failed: {run['error']}",
                          file=sys.stderr, flush=True)
                for note in run.get("notes") or []:
                    print(f"  {label}: {run['engine']} at {run['threads']} thread(s): {note}", file=sys.stderr)
    return cells


def medians(cells: dict, stat: str = "p50") -> dict:
    """``{key: median over repetitions of each process's stat}`` of :func:`bench_files`' result."""
    return {key: statistics.median(s[stat] for s in values) for key, values in cells.items() if values}


def worst_agreement(reports: list) -> dict:
    """``{label: largest max_abs}`` of onnxruntime's outputs against edgedl's over ``reports`` (None: nothing
    compared)."""
    worst: dict = {}
    for report in reports:
        label = report.get("label", report["model"])
        worst.setdefault(label, None)
        for run in report["runs"]:
            value = (run.get("agreement") or {}).get("max_abs")
            if value is not None:
                worst[label] = value if worst[label] is None else max(worst[label], value)
    return worst


def print_ratio_table(cells: dict, labels, threads: int, *, unit: str = "ms", agreement: dict | None = None,
                      title: str = "case") -> None:
    """A markdown table at ``threads`` threads: ``label | edgedl | onnxruntime | edgedl / onnxruntime`` (below
    1: edgedl faster), each the median over repetitions of each process's p50 (``unit``: "ms" or "us"), and
    the largest difference between the engines' outputs when ``agreement`` (:func:`worst_agreement`) is given."""
    scale, shown = {"ms": (1.0, "ms"), "us": (1e3, "µs")}[unit]
    mid = medians(cells)
    head = f"| {title} ({threads} thread{'s' if threads > 1 else ''}) | edgedl | onnxruntime | ratio |"
    print(head + (" max abs diff |" if agreement is not None else ""))
    print("|---|---|---|---|" + ("---|" if agreement is not None else ""))
    for label in labels:
        e, o = mid.get((label, threads, "edgedl")), mid.get((label, threads, "onnxruntime"))
        fmt = (lambda v: "-" if v is None else f"{_sig3(v * scale)} {shown}")
        ratio = f"{e / o:.2f}" if e is not None and o is not None else "-"
        row = f"| {label} | {fmt(e)} | {fmt(o)} | {ratio} |"
        if agreement is not None:
            diff = agreement.get(label)
            row += f" {'-' if diff is None else f'{diff:.1e}'} |"
        print(row, flush=True)


def _sig3(v: float) -> str:
    """Three significant digits without an exponent (1234.5 -> "1235", 0.01234 -> "0.0123")."""
    digits = 2 - math.floor(math.log10(abs(v))) if v else 0
    return f"{v:.{max(0, digits)}f}"


def print_other_load(reports: list) -> None:
    """One line: how many cores other processes used during the timed runs (the reports' ``other_load_cores``),
    median and largest; a busy neighbour makes the multi-thread numbers the first to suffer."""
    values = [run["other_load_cores"] for report in reports for run in report["runs"]
              if run.get("other_load_cores") is not None]
    if values:
        print(f"other processes beside the timed runs: median {statistics.median(values):.2f} cores, "
              f"largest {max(values):.2f} (over {len(values)} processes)")


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
    ap.add_argument("--published", default=None, metavar="DIR", help="also the published models present in DIR "
                    "(benchmarks/published.py fetch DIR downloads them)")
    ap.add_argument("--zoo", action="store_true", help="the zoo too when --models or --published is given")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and every core")
    ap.add_argument("--busy", type=int, nargs="+", default=[0], help="busy-loop processes beside (default 0)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (fresh processes each; default 3)")
    ap.add_argument("--max-secs", type=float, default=3.0, help="timed seconds per process (default 3)")
    ap.add_argument("--runs", type=int, default=100000, help="timed runs per process, at most")
    ap.add_argument("--precision", default="fp32", help="fp32, int8 or fp32,int8")
    ap.add_argument("--ort-u8s8", action="store_true", help="with int8: also onnxruntime's own quantization")
    ap.add_argument("--json", default=None, help="write every report here")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    threads = args.threads or sorted({1, cores})
    reports = []
    cells: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = parse_models(args.models) if args.models else []
        if args.published:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from published import PUBLISHED
            from published import models as published_models

            found = published_models(args.published)
            models += found
            missing = sorted(set(PUBLISHED) - {m[0] for m in found})
            if missing:
                print(f"not in {args.published} (benchmarks/published.py fetch): {', '.join(missing)}",
                      file=sys.stderr)
        if not models or args.zoo:
            models += write_zoo(tmp)
        int8 = "int8" in args.precision
        calibration = {label: calibration_file(path, shapes, tmp) for label, path, shapes in models} if int8 else {}
        runs = [(label, path, shapes, args.precision, calibration.get(label)) for label, path, shapes in models]
        if int8 and args.ort_u8s8:
            for label, path, shapes in models:
                if calibration[label] is None:
                    continue  # (already quantized, or nothing to calibrate)
                try:
                    runs.append((f"{label} [ort u8s8]", ort_u8s8(path, calibration[label], tmp), shapes, "int8",
                                 None))
                except Exception as e:  # onnxruntime's quantizer fails on some published files
                    print(f"{label}: onnxruntime's quantize_static failed ({type(e).__name__}: {e}); no u8s8 row",
                          file=sys.stderr)
        for rep in range(args.repeat):
            for busy in args.busy:
                for label, path, shapes, precision, calib in runs:
                    print(f"repetition {rep + 1}/{args.repeat}, {busy} busy, {label}", file=sys.stderr, flush=True)
                    report = bench_case(label, path, shapes, threads, runs=args.runs, max_secs=args.max_secs,
                                        busy=busy, precision=precision, calibration=calib)
                    reports.append(report)
                    for run in report["runs"]:
                        if run["status"] == "ok":
                            key = (label, busy, run["precision"], run["threads"], run["engine"])
                            cells.setdefault(key, []).append(run["latency_ms"])
    if args.json:
        write_json(reports, args.json)
    print_table(cells, [m[0] for m in models], args.busy, threads, cores)
    if "int8" in args.precision:
        print()
        print_int8_table(cells, [m[0] for m in models], args.busy, threads)


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
                    print(f"| {label} | {busy} of {cores} | {prec} | {t} | {e50:.3g} / {e90:.3g} "
                          f"| {o50:.3g} / {o90:.3g} | {e50 / o50:.2f} | {e90 / o90:.2f} |")
    for (busy, prec, t), values in sorted(ratios.items()):
        print(f"geometric mean of edgedl / onnxruntime p50, {prec}, {t} thread(s), {busy} busy: "
              f"{statistics.geometric_mean(values):.2f} over {len(values)} models")



def print_int8_table(cells: dict, labels: list[str], loads: list[int], threads: list[int]) -> None:
    """edgedl int8 against onnxruntime on the same QDQ file and on its own u8s8 quantization, and edgedl fp32."""
    def p50(key):
        values = cells.get(key)
        return statistics.median(v["p50"] for v in values) if values else None

    print("| model | busy | threads | edgedl int8 | onnxruntime, same QDQ file | onnxruntime u8s8 | edgedl on the u8s8 "
          "file | edgedl fp32 | int8 / best onnxruntime | fp32 / int8 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    vs_ort: dict = {}
    for label in labels:
        for busy in loads:
            for t in threads:
                e8, o8 = p50((label, busy, "int8", t, "edgedl")), p50((label, busy, "int8", t, "onnxruntime"))
                ou, eu = (p50((f"{label} [ort u8s8]", busy, "int8", t, e)) for e in ("onnxruntime", "edgedl"))
                e32 = p50((label, busy, "fp32", t, "edgedl"))
                if e8 is None or o8 is None:
                    continue
                best = min(v for v in (o8, ou) if v is not None)
                vs_ort.setdefault((busy, t), []).append(e8 / best)
                fmt = (lambda v: "-" if v is None else f"{v:.3g} ms")
                print(f"| {label} | {busy} | {t} | {fmt(e8)} | {fmt(o8)} | {fmt(ou)} | {fmt(eu)} | {fmt(e32)} "
                      f"| {e8 / best:.2f} | {'-' if e32 is None else f'{e32 / e8:.2f}'} |")
    for (busy, t), values in sorted(vs_ort.items()):
        print(f"geometric mean of edgedl int8 / best onnxruntime int8, {t} thread(s), {busy} busy: "
              f"{statistics.geometric_mean(values):.2f}")


if __name__ == "__main__":
    main()
