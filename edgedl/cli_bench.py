"""``edgedl bench``: benchmark models on this board, side by side with onnxruntime / TFLite (see
:mod:`edgedl.benchmark.orchestrate`)."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    s = sub.add_parser(
        "bench", help="benchmark models on this board (each engine in its own process): latency percentiles, "
        "init and first run, memory, per-op profile, agreement with onnxruntime/TFLite, board state, energy",
        description="Benchmark models on this board. Every engine and setting runs in its own fresh process, "
        "one after another, on the same input bytes.")
    s.add_argument("models", nargs="+", help="model files (.onnx; .tflite with --compare tflite)")
    s.add_argument("--threads", default=None, help="thread counts, e.g. 1 or 1,2,4 (a sweep), or 'all' "
                   "(default: the target's)")
    s.add_argument("--runs", type=int, default=100, help="timed runs per setting, at most (default 100)")
    s.add_argument("--warmup", type=int, default=5, help="untimed runs before timing (default 5)")
    s.add_argument("--max-secs", type=float, default=20.0, help="stop timing a setting after this many seconds "
                   "(default 20)")
    s.add_argument("--precision", default="fp32", help="fp32, int8 or fp32,int8 (int8: the model's own "
                   "quantization, or edgedl.quantize with --calibration)")
    s.add_argument("--calibration", default=None, help="int8 calibration data (.npz/.npy with a leading "
                   "sample axis)")
    s.add_argument("--input", "-i", default=None, help="inputs (.npy for one input, .npz by input name); "
                   "default: seeded random inputs from the model's specs")
    s.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2,...",
                   help="sizes of an input with symbolic dimensions (repeatable)")
    s.add_argument("--batch", type=int, default=None, help="size of a symbolic first dimension (default 1)")
    s.add_argument("--target", default=None, help="board profile for edgedl (default: EDGEDL_TARGET, else "
                   "detected)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where edgedl runs (cuda: the "
                   "GPU; timings include the copies in and out)")
    s.add_argument("--compare", default="", help="other engines: onnxruntime, tflite, or onnxruntime,tflite")
    s.add_argument("--op-profile", action="store_true", help="per-op times (after the timed runs)")
    s.add_argument("--train", action="store_true", help="also time training steps (edgedl, and PyTorch when "
                   "installed)")
    s.add_argument("--trainable", default="last:1", help="the trained layers for --train: all, bias, last:K "
                   "(default last:1)")
    s.add_argument("--train-steps", type=int, default=20, help="timed training steps (default 20)")
    s.add_argument("--cooldown", type=float, default=0.0, help="seconds to sleep between processes")
    s.add_argument("--processes", type=int, default=1, help="fresh processes per setting, taking turns; p50 is "
                   "the median of theirs (default 1)")
    s.add_argument("--busy", type=int, default=0, help="busy-loop processes to run beside (benchmark beside "
                   "other work)")
    s.add_argument("--top", type=int, default=15, help="rows of the top-operators table (default 15)")
    s.add_argument("--json", default=None, help="write the report as JSON")
    s.add_argument("--csv", default=None, help="write one CSV row per run (and FILE_ops.csv with --op-profile)")
    s.add_argument("--plot", default=None, help="write a PNG: latency distributions, thread sweep, top ops "
                   "(needs matplotlib: pip install \"edgedl[plot]\")")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.set_defaults(fn=cmd_bench)


def _threads(text: str | None, target):
    from .errors import InputError

    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if part in ("all", "max"):
            out.append(target.cores)
        elif part.isdigit():
            out.append(int(part))
        elif part:
            raise InputError(f"--threads takes numbers or 'all', e.g. 1,2,4; got {text!r}")
    return out or None


def cmd_bench(args) -> int:
    from . import board
    from .benchmark.inputs import parse_shape_args
    from .benchmark.orchestrate import bench
    from .benchmark.report import format_report
    from .errors import InputError

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError('--plot needs matplotlib: pip install "edgedl[plot]"') from None
    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}")
    threads = _threads(args.threads, board.resolve(args.target))
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = bench(args.models if len(args.models) > 1 else args.models[0], threads=threads, runs=args.runs,
                   warmup=args.warmup, max_secs=args.max_secs, precision=args.precision, input=args.input,
                   shapes=parse_shape_args(args.shape), batch=args.batch, target=args.target,
                   compare=args.compare, op_profile=args.op_profile, train=args.train,
                   trainable=args.trainable, train_steps=args.train_steps, calibration=args.calibration,
                   cooldown=args.cooldown, busy=args.busy, json_path=args.json, csv_path=args.csv,
                   plot_path=args.plot, progress=progress, device=args.device, processes=args.processes)
    reports = result if isinstance(result, list) else [result]
    for i, report in enumerate(reports):
        if i:
            print()
        for line in format_report(report, top=args.top):
            print(line)
    if any(r.get("interrupted") for r in reports):
        return 130
    ran = [run for r in reports for run in r["runs"]]
    return 0 if ran and all(run["status"] == "ok" for run in ran if run["engine"] == "edgedl") else 1
