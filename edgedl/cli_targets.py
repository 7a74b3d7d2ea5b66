"""``edgedl targets`` (the shipped board profiles, the board this machine is detected as) and ``edgedl warmup``."""
from __future__ import annotations

import json


def _size(n) -> str:
    if not n:
        return "?"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.1f} {unit}" if v < 10 and v != int(v) else f"{v:.0f} {unit}"
    return f"{n} B"


def _cores(ids) -> str:
    return ",".join(str(i) for i in ids) if ids else "-"


def describe_target(target) -> list[str]:
    """Lines describing a target's facts and the choices in force (for ``targets --detect`` and ``info``)."""
    from .board import codegen_status
    from .codegen import codegen_in_force, codegen_started
    from .threads import follows_load, wanted_threads

    t = target
    key = {"neon", "asimd", "dotprod", "fp16", "i8mm", "sve", "avx2", "fma", "avx512f", "avx512bw", "avx512vnni",
           "avxvnni", "avx512vbmi"}
    feats = sorted(f for f in t.features if f in key)
    lines = [f"target: {t.name}  ({t.description or 'this machine'}; profile: {t.source})"]
    lines.append(f"  cpu: {t.cpu} ({t.arch}), {t.cores} cores, big {_cores(t.big_cores)}, little "
                 f"{_cores(t.little_cores)}; features: {' '.join(feats) or '-'}")
    lines.append(f"  caches: L1d {_size(t.l1d_bytes)}, L2 {_size(t.l2_bytes)}, L3 {_size(t.l3_bytes)}; memory "
                 f"{_size(t.memory_bytes)}; gpu: {t.gpu or '-'}")
    threads = wanted_threads(None, t.threads)
    load_note = "fewer while other processes keep cores busy" if follows_load() else "fixed (EDGEDL_FOLLOW_LOAD=0)"
    from .affinity import core_ids

    cores = core_ids(t)
    on = "every core" if cores is None else f"{t.core_set} cores {_cores(tuple(sorted(cores)))}"
    lines.append(f"  threads: {t.threads} by default ({threads} here, {load_note}) on {on}; device: {t.device}"
                 + (f" (preferred: {t.preferred_device}, once its backend exists)"
                    if t.preferred_device != t.device else ""))
    status = codegen_status.get(t.name)
    want = f"{t.codegen_cpu or 'host'} {t.codegen_features or ''}".strip()
    if codegen_started() or status:
        cpu, _ = codegen_in_force()
        lines.append(f"  codegen: profile wants {want}; in force: {cpu}" + (f" ({status})" if status else ""))
    else:
        lines.append(f"  codegen: {want}")
    lines.append(f"  int8 kernel: {t.int8_kernel or 'best available'}; parallel thresholds: "
                 f"{t.parallel_min_work or 'default'} / GEMM {t.gemm_parallel_min_work or 'default'}; "
                 f"convolutions: {'packed panels' if t.conv_flat is False else 'padded image in place'}"
                 f"{'' if t.conv_pixels is False else ', deep ones pixel rows'}; "
                 f"precision: {t.precision}; training budget: {_size(t.train_budget_bytes)} "
                 f"({t.train_budget_fraction:.0%} of memory)")
    if t.tuned:
        lines.append(f"  tuned: {', '.join(f'{k}={v}' for k, v in sorted(t.tuned.items()))}")
    return lines


def cmd_targets(args) -> int:
    from . import board
    from .targets import load_profile, profiles

    if args.detect:
        target = board.resolve(args.target)
        if args.json:
            print(json.dumps(target.to_dict(), indent=2, default=str))
        else:
            for line in describe_target(target):
                print(line)
        return 0
    names = profiles()
    rows = []
    for name in names:
        t = load_profile(name)
        rows.append((name, t.description, f"{t.cpu} x{t.cores}", ",".join(
            sorted(f for f in t.features if f in ("dotprod", "fp16", "i8mm"))) or "-", t.gpu or "-",
            str(t.threads), t.int8_kernel or "auto"))
    if args.json:
        print(json.dumps({name: load_profile(name).to_dict() for name in names}, indent=2, default=str))
        return 0
    head = ("name", "board", "cpu", "features", "gpu", "threads", "int8 kernel")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    here = board.detected_target()
    print(f"\nthis machine: {here.name} ({here.cpu}, {here.cores} cores). 'host' (any other machine) is built "
          "from detection; `edgedl targets --detect` shows the facts and choices in force.")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("targets", help="list the board profiles; --detect: the board this is, its facts and tuning")
    s.add_argument("--detect", action="store_true", help="show the detected (or --target) board and its choices")
    s.add_argument("--target", default=None, help="a profile name or .toml file instead of detection")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_targets)
    s = sub.add_parser("warmup", help="compile kernels ahead of time (given models, or every kernel family)")
    s.add_argument("models", nargs="*", help="model files (default: a catalog that uses every kernel family)")
    s.add_argument("--target", default=None, help="board profile (default: EDGEDL_TARGET, else detected)")
    s.add_argument("--threads", type=int, default=None, help="thread count to prepare besides 1 (default: the "
                   "target's)")
    s.add_argument("--jobs", type=int, default=None, help="parallel processes (default: one per core)")
    s.add_argument("--train", action="store_true", help="with models: also their training kernels")
    s.add_argument("--no-train", action="store_true", help="without models: leave the training kernels out")
    s.add_argument("--cuda", action="store_true", help="also compile the CUDA kernels (device='cuda'; needs a GPU "
                   "and numba-cuda)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_warmup)
    s = sub.add_parser("tune", help="measure the execution choices for a model on this board; write a tuned "
                       "profile that later loads use")
    s.add_argument("model")
    s.add_argument("--target", default=None, help="profile to start from (default: the detected board)")
    s.add_argument("--out", default=None, help="tuned profile file (default: ~/.config/edgedl/tuned/BOARD.toml)")
    s.add_argument("--seconds", type=float, default=0.4, help="timed seconds per candidate (default 0.4)")
    s.add_argument("--shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="shape of an input with symbolic dimensions (repeatable)")
    s.set_defaults(fn=cmd_tune)


def cmd_warmup(args) -> int:
    import os

    from . import board
    from .runtime.warmup import catalog_jobs, model_jobs, warmup_parallel
    from .threads import wanted_threads

    target = board.resolve(args.target) if args.target else None
    cores = wanted_threads(None, target.threads if target else None) if args.threads is None else args.threads
    threads = tuple(sorted({1, cores}))
    for m in args.models:
        if not os.path.isfile(m):
            from .errors import InputError

            raise InputError(f"model file '{m}' does not exist")
    if args.cuda:
        from .kernels.cuda import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            from .errors import EdgeDLError

            raise EdgeDLError(f"--cuda: {reason}")
    jobs = model_jobs(args.models, threads, args.train, args.cuda) if args.models else \
        catalog_jobs(threads, not args.no_train, args.cuda)
    what = f"{len(args.models)} model(s)" if args.models else "the kernel catalog (fp32, int8, training)"
    procs = min(len(jobs), args.jobs or os.cpu_count() or 1)
    print(f"warming {what} at {', '.join(map(str, threads))} thread(s) in {procs} processes; target: "
          f"{target.name if target else 'detected'}")
    import time

    t0 = time.perf_counter()
    totals = warmup_parallel(jobs, args.target, processes=args.jobs, progress=not args.quiet)
    print(f"done in {time.perf_counter() - t0:.1f} s: {totals['cache_misses']} kernel signatures compiled, "
          f"{totals['cache_hits']} already in the cache")
    for line in totals["failed"]:
        print(f"failed: {line}")
    return 1 if totals["failed"] and len(totals["failed"]) == totals["jobs"] else 0


def _parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]] | None:
    from .errors import InputError

    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            sep = ""
        if not sep or not name or any(d < 1 for d in shapes.get(name, ())):
            raise InputError(f"--shape must look like NAME=1x3x224x224, got {item!r}")
    return shapes or None


def cmd_tune(args) -> int:
    import os

    from .errors import InputError
    from .tune import format_result, tune

    if not os.path.isfile(args.model):
        raise InputError(f"model file '{args.model}' does not exist")
    if not args.seconds > 0:
        raise InputError(f"--seconds must be positive, got {args.seconds}")
    shapes = _parse_shapes(args.shape)
    if shapes is not None:
        import edgedl

        names = [t.name for t in edgedl.load(args.model).inputs]
        missing = sorted(set(names) - set(shapes))
        if missing or set(shapes) - set(names):
            raise InputError(f"--shape must name every input {names} (missing {missing})")
    result = tune(args.model, target=args.target, shapes=shapes, seconds=args.seconds, out=args.out)
    print(f"target: {result.shipped.name} ({result.shipped.cpu}, {result.shipped.cores} cores)")
    for line in format_result(result):
        print(line)
    return 0
