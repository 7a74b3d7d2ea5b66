"""Training step time and peak memory, edgedl against PyTorch (CPU), on the same models, weights and batches:
full training ("all") and last-layer fine-tuning ("last:1", "last:2"), Adam (lr 1e-3).

    pip install ".[test]" torch
    python benchmarks/bench_train.py [--model digits|mobilenet|all] [--batch B] [--steps S] [--threads 1 [2]]
    python benchmarks/bench_train.py --validate    # check the memory method on allocations of known size
    python benchmarks/bench_train.py --model mobilenet --profile   # where an edgedl step spends its time

Models: the zoo's digits CNN (8x8 inputs, batch 32) and ``zoo.mobilenet_v2_like`` (96x96, width 0.35, 10
classes, batch 16; ``--resolution``, ``--width``), its trailing Softmax removed (the loss takes logits). The
PyTorch network is built from the same ONNX graph by :mod:`edgedl.benchmark.torch_from_onnx`, with the same
weights. Before timing, a check process asserts that the two forward outputs agree (rtol 1e-4, atol 1e-4 of the largest
logit), that both train the same tensors, and that one step's gradients agree (each tensor within 2e-2 of its
gradient's norm, floored at 1% of the largest tensor gradient's norm; a wrong gradient is off by O(1)). Not
tighter, not elementwise: a Clip / HardSwish input within float32 rounding of a kink (0, 6; -3, 3) takes the
other derivative in one framework, and that one element, spread by the batch-statistics BatchNormalization
backward over its channel, is ~1/sqrt(size) of a small tensor's gradient norm (seen: 5e-3 at 128x128, width
0.5; edgedl and PyTorch float32 each agree with float64 PyTorch to ~1e-5 elsewhere). PyTorch: frozen
parameters have ``requires_grad=False``, BatchNormalization layers whose scale or bias trains use batch
statistics (edgedl's ``batchnorm="auto"``), Adam on the trained parameters, ``zero_grad(set_to_none=True)``
at the start of each step. edgedl:
``Trainer(model, optimizer=Adam(lr=1e-3), trainable=policy).train_step(x, y)``.

Every (framework, model, policy, threads) is measured in two fresh processes:

* time: default allocator settings; the median step (forward, loss, backward, optimizer) over ``--steps``
  steps after warm-up steps.
* memory: the process starts with ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 MALLOC_TOP_PAD_=0``
  (``BENCH_MMAP_THRESHOLD`` overrides the 65536), so glibc serves every block of 64 KiB or more with its own
  ``mmap`` and unmaps it when freed, and trims the heap top at once: the resident set then follows the live
  memory. (With default settings glibc raises its mmap threshold after the first large free and serves later
  blocks from the heap, which keeps freed memory: RSS growth after warm-up is then ~0 whatever a step
  allocates.) A throwaway set-up (trainer or module + optimizer) first runs the warm-up steps and is
  deleted, so that JIT code, kernel caches and thread pools exist before the measured set-up is built; then,
  with VmRSS of the loaded model as ``loaded`` and the peak (VmHWM) reset by writing ``5`` to
  ``/proc/self/clear_refs``, the measured set-up runs the warm-up steps; PyTorch then drops its gradients
  (``zero_grad(set_to_none=True)``) so that neither side holds them between steps; VmRSS is ``base``; the
  peak is reset again and the measured steps run. Reported, in MB (10^6 bytes) of touched pages:

  - **step peak = VmHWM - base**: the transient working memory of a training step (activations kept for the
    backward, gradients, kernel workspaces, temporaries);
  - **training peak = highest VmHWM - loaded**: all that training adds to the loaded model at its peak: the
    step peak plus what persists between steps (optimizer state, trained copies of the parameters, and
    edgedl's preallocated arena of the frozen prefix, which it runs as an inference model: for ``last:K``
    almost all of edgedl's forward memory is in that arena, so its step peak alone understates it);
  - with ``--details``: persistent = base - loaded, the optimizer state (exact: Adam's two moments, the same
    for both) and the trained tensors.

  Resolution: a few hundred kB. Blocks under 64 KiB come from the heap and may reuse freed space, RSS
  counts whole pages: sub-MB numbers (the digits CNN) are not meaningful, use the cross-checks there.

Cross-checks, in the memory process after the measured steps (``--details``): edgedl: ``tracemalloc``
(numpy registers its buffers; Numba's run-time allocations inside kernels are not seen) and
``Trainer.peak_bytes`` (the tape's live-array accounting plus the frozen prefix's arena: activations, saved
values, gradients; not kernel workspaces, optimizer or loss temporaries); PyTorch: the profiler's memory
events (``profile_memory=True``: the largest "Total Allocated" over one step, every CPU tensor allocation at
its full size). ``--validate`` runs steps that allocate known amounts (one 50 MB array; 100 arrays of 0.5 MB
alive at once, numpy and PyTorch; 25 MB allocated and freed twice), with and without the allocator settings.

The machine's load matters for the time columns; memory does not depend on it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": os.environ.get("BENCH_MMAP_THRESHOLD", "65536"),
              "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}
MB = 1e6
DEFAULTS = {"digits": {"batch": 32, "steps": 200, "warmup": 20},
            "mobilenet": {"batch": 16, "steps": 10, "warmup": 3}}


# -- the child: one framework, one model, one policy ---------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def _batch(model_path: str, batch: int):
    import numpy as np
    import onnx

    proto = onnx.load(model_path)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    classes = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, *dims)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    return proto, x, y


#: a policy ending in this runs edgedl's frozen backbone in int8 (float head), against PyTorch's float policy
INT8 = "+int8"


def _edgedl_setup(proto, policy: str, threads: int, optimizer=None, x=None):
    import edgedl
    from edgedl.train import Adam

    edgedl.set_num_threads(threads)
    model = edgedl.load(proto)
    if policy.endswith(INT8):  # the int8 backbone: post-training quantization calibrated on the batch
        model = edgedl.quantize(model, [x], progress=False)
        return edgedl.Trainer(model, optimizer=optimizer or Adam(lr=1e-3), trainable=policy[:-len(INT8)],
                              float_head=True)
    return edgedl.Trainer(model, optimizer=optimizer or Adam(lr=1e-3), trainable=policy)


def _torch_setup(proto, policy: str, threads: int):
    import torch

    from edgedl.benchmark.torch_from_onnx import OnnxModule, set_trainable, trainable_names

    policy = policy.removesuffix(INT8)  # PyTorch trains in float
    torch.set_num_threads(threads)
    net = OnnxModule(proto)
    params = set_trainable(net, trainable_names(net, policy))
    return net, params


def _probe_step(kind: str):
    """A step that allocates a known amount (--validate)."""
    import numpy as np

    if kind == "np-50MB":
        def step():
            a = np.ones(int(50 * MB) // 4, np.float32)
            del a
    elif kind == "np-100x0.5MB":
        def step():
            arrays = [np.ones(int(0.5 * MB) // 4, np.float32) for _ in range(100)]
            del arrays
    elif kind == "np-2x25MB-seq":
        def step():
            for _ in range(2):
                a = np.ones(int(25 * MB) // 4, np.float32)
                del a
    elif kind == "torch-100x0.5MB":
        import torch

        def step():
            tensors = [torch.ones(int(0.5 * MB) // 4) for _ in range(100)]
            del tensors
    else:
        raise ValueError(kind)
    return step


class _Run:
    """One framework's training set-up: ``step()``, ``zero_grad()`` (drop gradients held between steps),
    ``opt_bytes()`` (optimizer state), ``trained_bytes``."""

    def __init__(self, framework: str, cfg: dict):
        self.framework = framework
        self.zero_grad = lambda: None
        self.opt_bytes = lambda: 0
        self.trained_bytes = 0
        if framework == "probe":
            self.step = _probe_step(cfg["probe"])
            return
        proto, x, y = _batch(cfg["model_path"], cfg["batch"])
        self.x = x
        if framework == "edgedl":
            tr = self.trainer = _edgedl_setup(proto, cfg["policy"], cfg["threads"], x=x)
            self.step = lambda: tr.train_step(x, y)
            self.opt_bytes = lambda: sum(a.nbytes for st in tr.optimizer.state.values() for a in st.values())
            self.trained_bytes = sum(p.nbytes for p in tr.params.values())
            return
        import torch

        net, params = _torch_setup(proto, cfg["policy"], cfg["threads"])
        opt = torch.optim.Adam(params, lr=1e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        lossf = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = lossf(net(xt), yt)
            loss.backward()
            opt.step()
        self.step = step
        self.zero_grad = lambda: opt.zero_grad(set_to_none=True)
        self.opt_bytes = lambda: sum(t.nbytes for st in opt.state.values() for t in st.values()
                                     if isinstance(t, torch.Tensor) and t.dim() > 0)
        self.trained_bytes = sum(p.numel() * p.element_size() for p in params)


def child(cfg: dict) -> dict:
    import gc
    import statistics
    import time

    framework, mode = cfg["framework"], cfg["mode"]
    res: dict = {}
    if mode == "profile":
        return _profile(_Run(framework, cfg), cfg)
    if mode == "memory" and framework != "probe":
        # a throwaway set-up runs first: JIT compilation, kernel caches and thread pools are then in place
        # before the measured set-up is built, so they do not count as training memory
        warm = _Run(framework, cfg)
        for _ in range(cfg["warmup"]):
            warm.step()
        del warm
        gc.collect()
    run = _Run(framework, cfg)
    gc.collect()
    loaded = _status_kb("VmRSS")
    _reset_peak()
    for _ in range(cfg["warmup"]):
        run.step()
    run.zero_grad()
    gc.collect()
    first_peak = _status_kb("VmHWM")
    base = _status_kb("VmRSS")
    _reset_peak()
    times = []
    for _ in range(cfg["steps"]):
        t = time.perf_counter()
        run.step()
        times.append(time.perf_counter() - t)
    res["ms"] = statistics.median(times) * 1e3
    res["step_peak_mb"] = (_status_kb("VmHWM") - base) * 1024 / MB
    res["persistent_mb"] = (base - loaded) * 1024 / MB
    res["training_peak_mb"] = (max(first_peak, _status_kb("VmHWM")) - loaded) * 1024 / MB
    res["opt_state_mb"] = run.opt_bytes() / MB
    res["trained_mb"] = run.trained_bytes / MB
    if mode != "memory" or framework == "probe" and not cfg["probe"].startswith("np"):
        return res
    # cross-checks (not timed)
    if framework in ("edgedl", "probe"):
        import tracemalloc

        tracemalloc.start()
        run.step()  # allocations made before tracing started are not seen when freed: one traced step first
        cur0 = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(2):
            run.step()
        res["tracemalloc_mb"] = (tracemalloc.get_traced_memory()[1] - cur0) / MB
        tracemalloc.stop()
        if framework == "edgedl":
            res["tape_peak_mb"] = run.trainer.peak_bytes / MB
            res["tape_saved_mb"] = run.trainer.saved_bytes / MB
    else:
        res["profiler_mb"] = _torch_profiler_peak(run.step, run.zero_grad) / MB
    return res


def _torch_profiler_peak(step, zero_grad) -> float:
    """The largest total of CPU tensor bytes allocated since the start of one profiled step (the profiler's
    "Total Allocated" of its memory events)."""
    from torch.profiler import ProfilerActivity, profile

    zero_grad()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory(prefix="bmem_") as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return float(max(totals, default=0))


def _profile(run: _Run, cfg: dict) -> dict:
    """edgedl: time and transient memory (tracemalloc: numpy buffers) per op type, forward kernels and
    backward; PyTorch: its profiler's table."""
    import time
    import tracemalloc

    for _ in range(cfg["warmup"]):
        run.step()
    n = cfg["steps"]
    if run.framework == "torch":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _ in range(n):
                run.step()
        return {"table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)}
    tr = run.trainer
    tapes = list(tr.runner._tapes.values())  # private handles: this is a diagnostic
    secs: dict[str, float] = {}
    mem: dict[str, int] = {}
    state = {"trace": False}

    def timed(fn, key):
        def wrapper(*a, **k):
            if state["trace"]:
                cur = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
            t = time.perf_counter()
            r = fn(*a, **k)
            secs[key] = secs.get(key, 0.0) + time.perf_counter() - t
            if state["trace"]:
                mem[key] = max(mem.get(key, 0), tracemalloc.get_traced_memory()[1] - cur)
            return r
        return wrapper

    for tape in tapes:
        for s in tape.steps:
            desc = s.node.op_type
            if desc == "Conv":
                k = "x".join(map(str, s.op.in_types[1].shape[2:]))
                desc = f"Conv {k}" + (" depthwise" if s.node.attrs.get("group", 1) > 1 else "")
            elif desc == "BatchNormalization":
                desc += " (train)" if s.node.attrs.get("training_mode", 0) else " (running stats)"
            if s.kernel is not None:
                object.__setattr__(s.kernel, "fn", timed(s.kernel.fn, f"fwd {desc}"))
            s.op.backward = timed(s.op.backward, f"bwd {desc}")
    for name in ("frontier",):
        setattr(tr.runner, name, timed(getattr(tr.runner, name), "frozen prefix (inference model)"))
    tr.loss = timed(tr.loss, "loss")
    tr.optimizer.step = timed(tr.optimizer.step, "optimizer")
    t0 = time.perf_counter()
    for _ in range(n):
        run.step()
    total = time.perf_counter() - t0
    timing = dict(secs)
    secs.clear()
    tracemalloc.start()
    state["trace"] = True
    run.step()
    tracemalloc.stop()
    rows = sorted(timing.items(), key=lambda kv: -kv[1])
    lines = [f"edgedl step {total / n * 1e3:.1f} ms; per op type: ms per step, share, largest transient "
             "numpy allocation of one call (MB, tracemalloc)"]
    lines += [f"  {k:<40} {v / n * 1e3:8.2f}  {v / total:6.1%}  {mem.get(k, 0) / MB:8.2f}" for k, v in rows]
    rest = total - sum(timing.values())
    lines.append(f"  {'(rest: tape bookkeeping, Python)':<40} {rest / n * 1e3:8.2f}  {rest / total:6.1%}")
    return {"table": "\n".join(lines)}


def check(cfg: dict) -> dict:
    """Forward outputs, trained tensors and one step's gradients agree between edgedl and PyTorch."""
    import numpy as np
    import torch

    from edgedl.benchmark.torch_from_onnx import OnnxModule, set_trainable, trainable_names
    from edgedl.train import SGD

    proto, x, y = _batch(cfg["model_path"], cfg["batch"])
    torch.set_num_threads(1)
    net = OnnxModule(proto)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    import edgedl

    out = edgedl.load(proto)(x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()),
                               err_msg="edgedl and PyTorch forward outputs differ")
    res = {"forward_max_abs_diff": float(np.abs(out - ref).max()), "grad_rel_err": {}}
    for policy in [p for p in cfg["policies"] if not p.endswith(INT8)]:  # (an int8 backbone computes otherwise)
        net = OnnxModule(proto)  # fresh: a training-mode BatchNormalization updates its running statistics
        names = trainable_names(net, policy)
        tr = _edgedl_setup(proto, policy, 1, optimizer=SGD(lr=1.0))
        assert names == tr.trainable, f"{policy}: edgedl trains {tr.trainable}, the PyTorch module {names}"
        before = {k: v.copy() for k, v in tr.params.items()}
        tr.train_step(x, y)  # SGD with lr 1: the update is the gradient
        set_trainable(net, names)
        net.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        ref = {n: net.tensor(n).grad.numpy() for n in names}
        # per tensor, relative to its gradient's norm, floored at 1% of the largest one's (the bias of a
        # BatchNormalization followed, through linear ops only, by a training-mode one has a zero gradient)
        floor = 1e-2 * max(float(np.linalg.norm(g)) for g in ref.values())
        worst = max(float(np.linalg.norm(before[n] - tr.params[n] - g) / max(float(np.linalg.norm(g)), floor))
                    for n, g in ref.items())
        assert worst < 2e-2, f"{policy}: edgedl and PyTorch gradients differ (relative error {worst:.2e})"
        res["grad_rel_err"][policy] = worst
    return res


# -- the parent -------------------------------------------------------------------------------------------
def spawn(cfg: dict, malloc_env: bool) -> dict:
    env = dict(os.environ)
    for k in MALLOC_ENV:
        env.pop(k, None)
    if malloc_env:
        env.update(MALLOC_ENV)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)],
                         capture_output=True, text=True, env=env, cwd=HERE)
    if out.returncode:
        raise RuntimeError(f"child {cfg} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_model(name: str, args, folder: str) -> str:
    import onnx

    from edgedl import zoo
    from edgedl.benchmark.torch_from_onnx import strip_softmax

    if name == "digits":
        proto = zoo.digits_cnn()
    else:
        proto = strip_softmax(zoo.mobilenet_v2_like(resolution=args.resolution, width=args.width, classes=10))
    path = os.path.join(folder, f"{name}.onnx")
    onnx.save(proto, path)
    return path


def validate() -> None:
    print("Memory method check: steps that allocate known amounts, step peak = VmHWM - VmRSS after warm-up "
          "(MB). 'default malloc' is the same measurement without the allocator settings.\n")
    print("| step | expected | step peak | tracemalloc | default malloc |")
    print("|---|---|---|---|---|")
    for probe, want in (("np-50MB", 50), ("np-100x0.5MB", 50), ("np-2x25MB-seq", 25), ("torch-100x0.5MB", 50)):
        cfg = {"framework": "probe", "probe": probe, "mode": "memory", "threads": 1, "steps": 5, "warmup": 3}
        m = spawn(cfg, True)
        d = spawn(cfg, False)
        tm = f"{m['tracemalloc_mb']:.1f}" if "tracemalloc_mb" in m else "-"
        print(f"| {probe} | {want} | {m['step_peak_mb']:.1f} | {tm} | {d['step_peak_mb']:.1f} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["digits", "mobilenet", "all"], default="all")
    ap.add_argument("--batch", type=int, help="samples per step (default: digits 32, mobilenet 16)")
    ap.add_argument("--steps", type=int, help="timed steps (default: digits 200, mobilenet 10)")
    ap.add_argument("--warmup", type=int, help="warm-up steps (default: digits 20, mobilenet 3)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts, e.g. --threads 1 2")
    ap.add_argument("--policies", nargs="+", default=["all", "last:1", "last:2", "last:1+int8", "last:2+int8"],
                    help="trainable policies; +int8: edgedl with a frozen int8 backbone and a float head")
    ap.add_argument("--resolution", type=int, default=96, help="mobilenet input size")
    ap.add_argument("--width", type=float, default=0.35, help="mobilenet width multiplier")
    ap.add_argument("--validate", action="store_true", help="check the memory method, then exit")
    ap.add_argument("--profile", action="store_true", help="time per op type of an edgedl step and PyTorch's "
                    "profiler table (policy: the first of --policies), then exit")
    ap.add_argument("--details", action="store_true", help="also print the cross-checks and persistent memory")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cfg = json.loads(args.child)
        print(json.dumps(check(cfg) if cfg["mode"] == "check" else child(cfg)))
        return
    if args.validate:
        validate()
        return
    models = ["digits", "mobilenet"] if args.model == "all" else [args.model]
    with tempfile.TemporaryDirectory(prefix="bmem_") as folder:
        for name in models:
            d = DEFAULTS[name]
            batch, steps = args.batch or d["batch"], args.steps or d["steps"]
            warmup = args.warmup if args.warmup is not None else d["warmup"]
            path = write_model(name, args, folder)
            title = "digits CNN" if name == "digits" else \
                f"mobilenet_v2_like {args.resolution}x{args.resolution}, width {args.width}, 10 classes"
            base = {"model_path": path, "batch": batch, "steps": steps, "warmup": warmup}
            if args.profile:
                for fw in ("edgedl", "torch"):
                    cfg = dict(base, framework=fw, mode="profile", threads=args.threads[0],
                               policy=args.policies[0])
                    print(f"{title}, batch {batch}, {fw}, policy {args.policies[0]}, {args.threads[0]} thread(s)")
                    print(spawn(cfg, False)["table"] + "\n")
                continue
            chk = spawn(dict(base, mode="check", policies=args.policies), False)
            grads = ", ".join(f"{p} {e:.1e}" for p, e in chk["grad_rel_err"].items())
            print(f"{title}: forward max |edgedl - PyTorch| {chk['forward_max_abs_diff']:.1e}; gradient relative "
                  f"error {grads}\n")
            for threads in args.threads:
                print(f"{title}, batch {batch}, Adam, {threads} thread(s); time: median of {steps} steps; memory "
                      f"in MB: step peak = VmHWM - VmRSS after warm-up, training peak = VmHWM - VmRSS of the "
                      f"loaded model")
                print()
                print("| policy | edgedl step ms | PyTorch step ms | time ratio | edgedl step peak MB | "
                      "PyTorch step peak MB | memory ratio | edgedl training peak MB | PyTorch training peak MB | "
                      "ratio |")
                print("|---|---|---|---|---|---|---|---|---|---|")
                rows = []
                for policy in args.policies:
                    r = {}
                    for fw in ("edgedl", "torch"):
                        cfg = dict(base, framework=fw, policy=policy, threads=threads)
                        r[fw] = spawn(dict(cfg, mode="memory"), True)
                        r[fw]["ms"] = spawn(dict(cfg, mode="time"), False)["ms"]
                    e, t = r["edgedl"], r["torch"]
                    rows.append((policy, e, t))
                    print(f"| {policy} | {e['ms']:.2f} | {t['ms']:.2f} | {e['ms'] / t['ms']:.2f} | "
                          f"{e['step_peak_mb']:.2f} | {t['step_peak_mb']:.2f} | "
                          f"{e['step_peak_mb'] / max(t['step_peak_mb'], 1e-9):.2f} | {e['training_peak_mb']:.2f} | "
                          f"{t['training_peak_mb']:.2f} | "
                          f"{e['training_peak_mb'] / max(t['training_peak_mb'], 1e-9):.2f} |")
                print()
                if args.details:
                    print("Cross-checks and persistent memory, MB: edgedl tracemalloc step peak, Trainer.peak_bytes "
                          "(of it saved for the backward); PyTorch profiler step peak; persistent = VmRSS after "
                          "warm-up - VmRSS of the loaded model; optimizer state; trained tensors")
                    print()
                    print("| policy | edgedl tracemalloc | edgedl Trainer.peak_bytes (saved) | PyTorch profiler | "
                          "edgedl persistent | PyTorch persistent | optimizer state | trained tensors |")
                    print("|---|---|---|---|---|---|---|---|")
                    for policy, e, t in rows:
                        print(f"| {policy} | {e['tracemalloc_mb']:.2f} | {e['tape_peak_mb']:.2f} "
                              f"({e['tape_saved_mb']:.2f}) | {t['profiler_mb']:.2f} | {e['persistent_mb']:.2f} | "
                              f"{t['persistent_mb']:.2f} | {e['opt_state_mb']:.2f} | {e['trained_mb']:.2f} |")
                    print()

if __name__ == "__main__":
    main()
