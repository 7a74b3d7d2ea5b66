"""The ``edgedl`` command: info, run, bench, quantize, finetune, ops, targets, warmup, tune."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _fmt_shape(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def cmd_info(args) -> int:
    import edgedl

    model = edgedl.load(args.model, target=args.target, device=args.device)
    print(f"model: {args.model}  (graph '{model.graph.name}', opset {model.graph.opset}; device {model.device})")
    if model.device_note:
        print(f"device: {model.device_note}")
    print("inputs:")
    for t in model.inputs:
        print(f"  {t.name}: {np.dtype(t.dtype).name} {_fmt_shape(t.shape)}")
    print("outputs:")
    for t in model.outputs:
        print(f"  {t.name}: {'?' if t.dtype is None else np.dtype(t.dtype).name} {_fmt_shape(t.shape)}")
    print(f"parameters: {model.num_parameters():,}")
    print(f"nodes after load-time passes: {len(model.graph.nodes)}")
    print("ops: " + ", ".join(f"{k} x{v}" for k, v in model.op_counts().items()))
    from edgedl.errors import ConstantRequired

    symbolic = any(not isinstance(d, int) for t in model.inputs for d in (t.shape or ()))
    try:
        plan = model.plan()
    except ConstantRequired as e:  # the plan depends on an input's value (a sample rate, a shape): built at run
        plan = None
        print(f"plan: built at the first run, from the values of inputs {sorted(model._inputs_feeding(e.tensor))}")
    if plan is not None:
        note = " (symbolic dims bound to 1)" if symbolic else ""
        after = "; then nodes whose shapes depend on data, planned at run time" if plan.tail is not None else ""
        print(f"plan{note}: {len(plan.steps)} steps, {plan.folded} nodes folded to constants; kernels: "
              + ", ".join(f"{k} {v}" for k, v in sorted(plan.kernel_impls().items())) + after)
        print(f"arena: {plan.arena_bytes:,} bytes ({_fmt_bytes(plan.arena_bytes)}); lower bound (most bytes live "
              f"at one step): {plan.arena_lower_bound:,} bytes")
        if model.device == "cuda":
            cplan = model.cuda_plan()
            hosts = cplan.host_steps()
            print(f"cuda: {cplan.kernel_impls().get('cuda', 0)} steps on the GPU, {len(hosts)} on the host between "
                  f"transfers; constants on the device: {_fmt_bytes(cplan.constant_bytes)}")
            for h in hosts:
                print(f"  host step: {h}")
    from edgedl.quant.inspect import format_summary, precision_summary

    summary = precision_summary(model) if plan is not None else None
    if summary is not None and summary.quantized:
        requant = model.graph.metadata.get("edgedl.requant", "float")
        print(f"quantized model (requantization: {requant}; 'float' = onnxruntime semantics, 'double'/'single' = "
              "TFLite fixed point)")
        for line in format_summary(summary):
            print(line)
    from edgedl.cli_targets import describe_target

    for line in describe_target(model.target):
        print(line)
    return 0


def _load_inputs(path: str, model) -> dict[str, np.ndarray]:
    from edgedl.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"input file '{path}' does not exist")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise InputError(f"cannot read '{path}' as .npy/.npz: {e}") from None
    if isinstance(data, np.ndarray):
        if len(model.inputs) != 1:
            raise InputError(f"the model has {len(model.inputs)} inputs ({[t.name for t in model.inputs]}): "
                             "pass an .npz with one array per input name")
        return {model.inputs[0].name: data}
    with data:
        feeds = {k: data[k] for k in data.files}
    if len(model.inputs) == 1 and len(feeds) == 1 and model.inputs[0].name not in feeds:
        feeds = {model.inputs[0].name: next(iter(feeds.values()))}
    return feeds


def cmd_run(args) -> int:
    import edgedl

    model = edgedl.load(args.model, target=args.target, num_threads=args.threads, device=args.device)
    feeds = _load_inputs(args.input, model)
    t0 = time.perf_counter()
    outputs = model.run(feeds)
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(0, args.repeat - 1)):
        t0 = time.perf_counter()
        model.run(feeds)
        times.append(time.perf_counter() - t0)
    for name, arr in outputs.items():
        line = f"{name}: {arr.dtype.name} {list(arr.shape)}"
        if arr.size and arr.dtype.kind == "f":
            flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
            line += f"  min {arr.min():.6g} max {arr.max():.6g} mean {arr.mean():.6g}"
            line += f"  argmax per row {flat.argmax(axis=1)[:8].tolist()}"
        print(line)
    msg = f"first run {first * 1e3:.2f} ms (includes plan and any kernel compilation)"
    if times:
        msg += f"; steady state median {np.median(times) * 1e3:.3f} ms over {len(times)} runs"
    print(msg)
    if args.output:
        np.savez(args.output, **outputs)
        print(f"wrote {args.output}")
    return 0


def _calibration_feeds(path: str, model, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Calibration feeds from an .npz/.npy (a leading sample axis, split into batches) or a folder of
    .npy/.npz files (one feed each)."""
    from edgedl.errors import InputError

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".npy", ".npz"))
        if not files:
            raise InputError(f"calibration folder '{path}' has no .npy/.npz files")
        return [_load_inputs(str(f), model) for f in files]
    data = _load_inputs(path, model)
    sizes = {k: v.shape[0] if v.ndim else 0 for k, v in data.items()}
    n = min(sizes.values()) if sizes else 0
    if n == 0 or len(set(sizes.values())) != 1:
        raise InputError(f"calibration arrays need one common leading sample axis, got shapes "
                         f"{ {k: v.shape for k, v in data.items()} }")
    return [{k: v[i:i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]


def _agreement(fp32, int8, feeds) -> str:
    """Accuracy proxy: top-1 agreement of the first output (when it is a score vector) and its SQNR."""
    agree = total = 0
    signal = noise = 0.0
    name = fp32.outputs[0].name
    for feed in feeds:
        a = fp32.run(feed)[name].astype(np.float64)
        b = int8.run(feed)[name].astype(np.float64)
        signal += float(np.sum(a * a))
        noise += float(np.sum((a - b) ** 2))
        if a.ndim >= 2 and a.shape[-1] > 1:
            agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
            total += int(np.prod(a.shape[:-1]))
    sqnr = 10 * np.log10(signal / noise) if noise > 0 else float("inf")
    msg = f"output '{name}': SQNR {sqnr:.1f} dB vs fp32"
    if total:
        msg = f"top-1 agreement with fp32 {100.0 * agree / total:.2f}% ({agree}/{total}); " + msg
    return msg


def cmd_quantize(args) -> int:
    import edgedl

    model = edgedl.load(args.model, num_threads=args.threads)
    if args.dynamic:
        feeds = _calibration_feeds(args.calibration, model, args.batch_size) if args.calibration else []
        qmodel = edgedl.quantize(model, dynamic=True, per_channel=not args.per_tensor)
    else:
        if not args.calibration:
            from edgedl.errors import InputError

            raise InputError("--calibration is required for static quantization (or use --dynamic)")
        feeds = _calibration_feeds(args.calibration, model, args.batch_size)
        qmodel = edgedl.quantize(model, feeds, method=args.method, per_channel=not args.per_tensor,
                                 rounding=args.rounding)
    qmodel.save(args.output)
    report = qmodel.quantization
    print(f"quantized {len(report.quantized_nodes)} nodes ({report.method}, "
          f"{'per-tensor' if args.per_tensor else 'per-channel'} weights); "
          f"{len(report.float_nodes)} nodes stay float")
    print(f"wrote {args.output}")
    if feeds:
        print("accuracy proxy on the calibration set: " + _agreement(model, qmodel, feeds))
    return 0


def _training_data(path: str, model, what: str):
    """(x, y) from an .npz: each input under its name (or "x" for a one-input model), the labels under "y" or
    "labels". x is an array for a one-input model, else a dict input name -> array."""
    from edgedl.errors import InputError

    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a missing or foreign file
        raise InputError(f"{what} {path}: cannot read it as .npz ({type(e).__name__}: {e})") from None
    names = [i.name for i in model.inputs]
    yk = "y" if "y" in data.files else "labels" if "labels" in data.files else None
    if len(names) == 1:
        xk = names[0] if names[0] in data.files else "x" if "x" in data.files else None
        if xk is None or yk is None:
            raise InputError(f"{what} {path} must hold the inputs under {names[0]!r} or 'x' and the labels under "
                             f"'y' or 'labels' (found {data.files})")
        return data[xk], data[yk]
    missing = [n for n in names if n not in data.files]
    if missing or yk is None:
        raise InputError(f"{what} {path} must hold every input under its name ({names}) and the labels under 'y' "
                         f"or 'labels' (found {data.files})")
    return {n: data[n] for n in names}, data[yk]


def _is_quantized(model) -> bool:
    from edgedl.train.qat import has_quantized_ops

    return has_quantized_ops(model.source if model.source is not None else model.graph)


def parse_size(text: str) -> int:
    """Bytes from "64MB", "512kB", "1.5GiB", "100000" (k/M/G are powers of 1000, Ki/Mi/Gi of 1024)."""
    import re

    from edgedl.errors import InputError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)(i?)[bB]?\s*", text)
    if not m:
        raise InputError(f"cannot read {text!r} as a size (e.g. 64MB, 512kB, 1GiB, 100000)")
    value, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    scale = {"": 1, "k": 1, "m": 2, "g": 3}[unit]
    return int(value * (1024 if binary else 1000) ** scale) if unit else int(value)


def cmd_finetune(args) -> int:
    import time

    import edgedl
    from edgedl.train import make_optimizer

    model = edgedl.load(args.model, num_threads=args.threads, device=args.device)
    x, y = _training_data(args.data, model, "--data")
    val = _training_data(args.val, model, "--val") if args.val else None
    opt = make_optimizer(args.optimizer, lr=args.lr)
    budget = parse_size(args.budget) if args.budget else None
    calibration = None
    if args.quantized and not _is_quantized(model):
        n = min(len(y), 512)  # calibrate the int8 ranges on (up to) 512 training samples
        feeds = x if isinstance(x, dict) else {model.inputs[0].name: x}
        calibration = [{k: v[i:i + 64] for k, v in feeds.items()} for i in range(0, n, 64)]
    trainer = edgedl.Trainer(model, loss=args.loss, optimizer=opt, trainable=args.trainable, seed=args.seed,
                             clip_norm=args.clip_norm, budget_bytes=budget, budget_batch=args.batch_size,
                             quantized=True if args.quantized else None, calibration=calibration,
                             float_head=args.float_head, batchnorm=args.batchnorm)
    if trainer.device == "cuda":
        print("training on the GPU (device cuda)")
    if trainer.qat is not None:
        how = "float head behind a frozen int8 backbone" if args.float_head else "quantization-aware (fake int8)"
        print(f"int8 model: training {how}; the output is QDQ int8 ONNX")
    if budget is not None:
        fits = [b for _, b in trainer.budget_probes if b <= budget]
        part = trainer.partial_layer
        extra = f" and {part[1]} of the {part[2]} input channels of {part[0]}" if part else ""
        print(f"budget {_fmt_bytes(budget)}: training {len(trainer.trainable)} tensors of the last layers{extra} "
              f"(estimated {_fmt_bytes(max(fits))})")
    ex, ey = val if val is not None else (x, y)
    before = trainer.evaluate(ex, ey)
    print(f"training {len(trainer.trainable)} tensors ({sum(trainer.params[k].size for k in trainer.trainable):,} "
          f"values, policy {args.trainable!r}) on {len(y)} samples")
    t0 = time.perf_counter()
    trainer.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, validation=val, progress=not args.quiet,
                checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume)
    seconds = time.perf_counter() - t0
    after = trainer.evaluate(ex, ey)
    model.save(args.output)
    on = "validation" if val is not None else "training"
    for label, r in (("before", before), ("after", after)):
        acc = f", accuracy {r['accuracy']:.2%}" if "accuracy" in r else ""
        print(f"{label}: {on} loss {r['loss']:.4f}{acc}")
    print(f"time {seconds:.1f} s ({args.epochs * len(y) / max(seconds, 1e-9):.0f} samples/s); training peak memory "
          f"{_fmt_bytes(trainer.peak_bytes)} (saved activations {_fmt_bytes(trainer.saved_bytes)})")
    print(f"wrote {args.output}")
    return 0


def cmd_ops(args) -> int:
    from edgedl.registry import Op, registered_ops

    dtype_cols = ("float32", "int8")
    header = ("op", *(f"cpu {d}" for d in dtype_cols), "cpu other", "cuda", "backward", "notes")
    rows = []
    for (domain, op_type), cls in registered_ops().items():
        cpu = set(cls.kernels.get("cpu", ()))
        cells = ["numba" if d in cpu or (d == "int8" and "uint8" in cpu) else "numpy" for d in dtype_cols]
        cells.append("numba" if len(cpu - set(dtype_cols)) > 1 else "numpy")
        cuda = ",".join(cls.kernels.get("cuda", ())) or "-"
        backward = "-" if cls.backward is Op.backward else "yes, cuda" if cls.has_backward_cuda() else "yes"
        note = "zero-copy view" if cls.alias else ("folded at plan time" if cls.shape_only else "")
        rows.append((f"{domain + '.' if domain else ''}{op_type}", *cells, cuda, backward, note))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\n{len(rows)} ops. numba: a compiled Numba kernel; numpy: the numpy path (reference math, or "
          "numpy copies for data movement). The int8 column covers 8-bit tensors (int8 and uint8: QLinear* "
          "ops, int8 pooling); backward: the op has a gradient for training (edgedl finetune; \"cuda\": also on the "
          "GPU, otherwise a GPU trainer runs it on the host between transfers); cuda: the dtypes with a numba.cuda "
          "kernel (device='cuda'; other nodes run on the host between transfers).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgedl", description="Run neural networks on single-board computers.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="describe a model: inputs, outputs, ops, parameters, arena, target")
    s.add_argument("model")
    s.add_argument("--device", default=None, choices=["cpu", "cuda"], help="where it runs (default: the target's "
                   "preferred device when usable, else cpu); cuda: also which nodes run on the host")
    s.add_argument("--target", default=None, help="board profile (default: EDGEDL_TARGET, else detected)")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("run", help="run a model on inputs from .npy/.npz")
    s.add_argument("model")
    s.add_argument("--input", "-i", required=True, help=".npy (single-input models) or .npz keyed by input name")
    s.add_argument("--output", "-o", help="write the outputs to this .npz")
    s.add_argument("--threads", type=int, default=None, help="threads for parallel kernels")
    s.add_argument("--repeat", type=int, default=1, help="run this many times and report the median time")
    s.add_argument("--device", default=None, choices=["cpu", "cuda"], help="where it runs (default: the target's "
                   "preferred device when usable, else cpu)")
    s.add_argument("--target", default=None, help="board profile (default: EDGEDL_TARGET, else detected)")
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("quantize", help="post-training int8 quantization to a QDQ ONNX file")
    s.add_argument("model")
    s.add_argument("--calibration", "-c", help=".npz/.npy with a leading sample axis, or a folder of .npy/.npz feeds")
    s.add_argument("--output", "-o", required=True, help="the quantized model (.onnx, QDQ form)")
    s.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy", "mse"])
    s.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default: per channel)")
    s.add_argument("--rounding", default="double", choices=["double", "single"],
                   help="TFLite requantization rounding")
    s.add_argument("--dynamic", action="store_true", help="dynamic quantization of MatMul/Gemm (no calibration)")
    s.add_argument("--batch-size", type=int, default=1, help="samples per calibration feed (from one .npz)")
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(fn=cmd_quantize)
    s = sub.add_parser("finetune", help="fine-tune a model on the device (backprop) and save it as ONNX (float, "
                       "or QDQ int8 with --quantized / an int8 model)")
    s.add_argument("model")
    s.add_argument("--data", required=True, help=".npz with inputs ('x' or the input's name) and labels ('y')")
    s.add_argument("--val", help="validation .npz, same keys")
    s.add_argument("--output", "-o", required=True, help="the trained model (.onnx)")
    s.add_argument("--epochs", type=int, default=5)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--trainable", default="all", help='"all", "bias", "last:K" (default: all)')
    s.add_argument("--budget", help="training-memory budget (e.g. 64MB): train the last layers (and input "
                   "channels of the next one) that fit")
    s.add_argument("--quantized", action="store_true",
                   help="quantization-aware fine-tuning: a float model is calibrated on the training data and "
                        "quantized first (an int8 QDQ model always trains this way); writes QDQ int8 ONNX")
    s.add_argument("--float-head", action="store_true",
                   help="with an int8 model: train the selected layers in float behind the frozen int8 backbone")
    s.add_argument("--batchnorm", default="auto", choices=["auto", "frozen"],
                   help="auto: trained BatchNormalization layers use batch statistics (default); frozen: running ones")
    s.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse", "bce"])
    s.add_argument("--clip-norm", type=float, default=None, help="clip the global gradient norm")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint", help="checkpoint file, written atomically every epoch")
    s.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    s.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="where training runs (default: the target's preferred device when usable, else cpu)")
    s.set_defaults(fn=cmd_finetune)
    s = sub.add_parser("ops", help="print the operator coverage matrix from the registry")
    s.set_defaults(fn=cmd_ops)
    from edgedl.cli_targets import add_parsers as add_target_parsers

    add_target_parsers(sub)
    from edgedl.cli_bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    return p


def _skip_exit_collection() -> None:
    """Freeze the garbage collector's generations at interpreter exit (an atexit hook, registered once).

    Python's shutdown runs full collections over every object alive, and Numba alone leaves ~60k of them:
    80-100 ms of a ~0.5 s warm ``edgedl run``. Frozen objects are skipped; the process is ending anyway."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def main(argv: list[str] | None = None) -> int:
    from edgedl.errors import EdgeDLError

    _skip_exit_collection()
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except EdgeDLError as e:
        print(f"edgedl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
