"""Kernel compilation on the device itself, and statistics about Numba's on-disk cache.

Numba caches compiled kernels per CPU model (``cache=True``), so the first process on a board compiles and
every later process loads machine code from the cache. :func:`warmup` runs a model once on zeros so that this
happens at install or deploy time rather than on the first real request; :func:`warmup_parallel` (the
``edgedl warmup`` command) runs such jobs for given models, or for a catalog of architectures that uses every
kernel family in fp32, int8 and training, in one fresh process per core.
"""
from __future__ import annotations

import numpy as np


def _dispatchers():
    """Every live Numba dispatcher of edgedl's: module-level kernels and those made per op at run time
    (closures such as the element-wise kernels), found among the garbage collector's objects (a diagnostic:
    tens of milliseconds)."""
    import gc

    from numba.core.registry import CPUDispatcher

    for obj in gc.get_objects():
        # NOTE: type(), not isinstance(): some objects (numpy's NpzFile attribute bags) raise on __class__
        if issubclass(type(obj), CPUDispatcher) and (obj.py_func.__module__ or "").startswith("edgedl."):
            yield obj


def kernel_cache_stats() -> dict[str, int]:
    """Across every Numba kernel loaded so far (dispatchers and native functions): signatures compiled or
    loaded in this process (``compiled``), loaded from the on-disk cache (``cache_hits``), and compiled because
    the cache had nothing (``cache_misses``)."""
    seen = set()
    hits = misses = compiled = 0
    for d in _dispatchers():
        if id(d) in seen:
            continue
        seen.add(id(d))
        hits += sum(d.stats.cache_hits.values())
        misses += sum(d.stats.cache_misses.values())
        compiled += len(d.signatures)
    from ..kernels.cpu.native import all_native

    for fn in all_native():  # the native functions (compiled once, called through pointers)
        hits += fn.cache_hits
        misses += fn.cache_misses
        compiled += fn.compiled
    return {"compiled": compiled, "cache_hits": hits, "cache_misses": misses}


def warmup(model, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Run ``model`` once on zeros (symbolic dims bound to 1 unless ``shapes`` says otherwise) so every kernel
    it needs is compiled and cached on this machine."""
    plan = model.plan(shapes)
    feeds = {name: np.zeros(t.shape, t.dtype) for name, t in plan.input_types.items()}
    model.run(feeds)


# ---------------------------------------------------------------------------------------------------
# edgedl warmup: compile ahead of time, in parallel processes
# ---------------------------------------------------------------------------------------------------
#: the architectures ``edgedl warmup`` without models prepares (edgedl.zoo builders and their arguments):
#: together they use every kernel family a model can choose (1-D/2-D/depthwise/grouped/strided/1x1
#: convolutions, GEMM and matrix-vector, pooling, residual adds, HardSwish/ReLU6/Sigmoid, layout ops,
#: Softmax, spelled-out LayerNorm, batched MatMul attention, Resize, ConvTranspose), in fp32 and int8, and the
#: training steps of the digits CNN and the MobileNet-like (their backward kernels)
CATALOG = [
    ("kws_tc_resnet", {}),
    ("digits_cnn", {}),
    ("mobilenet_v2_like", {"resolution": 96, "width": 0.35, "classes": 10}),
    ("resnet_like", {"resolution": 64, "widths": (16, 32, 64, 64), "blocks": (1, 1, 1, 1), "classes": 10}),
    ("nhwc_cnn", {}),
    ("transformer_block", {}),
    ("seg_decoder", {}),
]


def native_jobs() -> list[dict]:
    """One job per native function (the GEMM task and the others every GEMM driver calls through a pointer):
    :func:`warmup_parallel` runs them first, so the model jobs after them load these instead of each
    compiling its own copy at the same time."""
    from ..kernels.cpu import gemm, gemm_i8

    natives = [*gemm.usable_natives(), *gemm_i8.usable_natives()]
    return [{"native": fn.key} for fn in natives]


def catalog_jobs(threads: tuple[int, ...], train: bool = True, cuda: bool = False) -> list[dict]:
    """Jobs that prepare the catalog: the native functions, then each architecture in fp32 and int8 at each
    thread count, and training; with ``cuda``, each architecture on the GPU in fp32 and int8 too."""
    jobs = native_jobs()
    if cuda:
        jobs += [{"zoo": name, "kwargs": kwargs, "precision": p, "threads": 1, "device": "cuda"}
                 for name, kwargs in CATALOG for p in ("fp32", "int8")]
    for name, kwargs in CATALOG:
        for precision in ("fp32", "int8"):
            for t in threads:
                jobs.append({"zoo": name, "kwargs": kwargs, "precision": precision, "threads": t})
    if train:
        for name in ("digits_cnn", "mobilenet_v2_like"):
            kwargs = dict(CATALOG)[name]
            for t in threads:
                jobs.append({"zoo": name, "kwargs": kwargs, "precision": "train", "threads": t})
    return jobs


def model_jobs(models: list[str], threads: tuple[int, ...], train: bool = False, cuda: bool = False) -> list[dict]:
    """Jobs that prepare given model files: the native functions, then each model at each thread count (serial
    and parallel kernels differ); with ``cuda``, each model on the GPU too (its CUDA kernels, cached)."""
    jobs = native_jobs() + [{"model": str(m), "precision": "fp32", "threads": t} for m in models for t in threads]
    if cuda:
        jobs += [{"model": str(m), "precision": "fp32", "threads": 1, "device": "cuda"} for m in models]
    if train:
        jobs += [{"model": str(m), "precision": "train", "threads": t} for m in models for t in threads]
    return jobs


def _zeros_feeds(model) -> dict[str, np.ndarray]:
    plan = model.plan()
    return {name: np.zeros(t.shape, t.dtype) for name, t in plan.input_types.items()}


def run_job(job: dict, target=None) -> dict:
    """Run one warmup job in this process; returns its kernel cache statistics and seconds."""
    import time

    import edgedl

    t0 = time.perf_counter()
    if "native" in job:
        from ..board import resolve
        from ..kernels.cpu.native import by_key

        resolve(target)  # the target's codegen, before anything compiles
        by_key(job["native"]).compile()
        return {**kernel_cache_stats(), "seconds": time.perf_counter() - t0}
    edgedl.set_num_threads(job["threads"], follow_load=False)
    if "zoo" in job:
        from edgedl import zoo

        src = getattr(zoo, job["zoo"])(**job.get("kwargs", {})).SerializeToString()
    else:
        src = job["model"]
    model = edgedl.load(src, target=target, num_threads=job["threads"], device=job.get("device", "cpu"))
    feeds = _zeros_feeds(model)
    if job["precision"] == "int8":
        rng = np.random.default_rng(0)
        calib = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in feeds.items()} for _ in range(2)]
        model = edgedl.quantize(model, calib, progress=False)
        if job.get("device") == "cuda":  # the quantized model, loaded on the GPU
            import os
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                model.save(os.path.join(tmp, "q.onnx"))
                model = edgedl.load(os.path.join(tmp, "q.onnx"), target=target, device="cuda")
        model.run(feeds)
    elif job["precision"] == "train":
        _train_step(model, feeds)
    else:
        model.run(feeds)
    return {**kernel_cache_stats(), "seconds": time.perf_counter() - t0}


def _train_step(model, feeds) -> None:
    """Two optimizer steps of every layer on a small random batch (the training kernels of the model)."""
    import edgedl

    rng = np.random.default_rng(0)
    out = model.run(feeds)
    y0 = next(iter(out.values()))
    batch = {k: rng.standard_normal((4,) + v.shape[1:]).astype(v.dtype) for k, v in feeds.items()}
    if y0.ndim == 2 and y0.shape[1] > 1:
        trainer = edgedl.Trainer(model, "cross_entropy", "adam", "all")
        y = rng.integers(0, y0.shape[1], 4)
    else:
        trainer = edgedl.Trainer(model, "mse", "adam", "all")
        y = rng.standard_normal((4,) + y0.shape[1:]).astype(np.float32)
    x = batch if len(batch) > 1 else next(iter(batch.values()))
    for _ in range(2):
        trainer.train_step(x, y)


def _worker_init() -> None:
    import os

    os.environ["EDGEDL_QUIET_COMPILE"] = "1"  # the parent shows progress
    os.environ["EDGEDL_FOLLOW_LOAD"] = "0"  # each job runs at the thread count it names
    os.environ["EDGEDL_COMPILE_AHEAD"] = "0"  # the pool is already one process per core


def _describe(job: dict) -> str:
    if "native" in job:
        return f"native function {job['native'].split(':')[1]}"
    what = job.get("zoo") or job.get("model")
    if job.get("device") == "cuda":
        return f"{what} {job['precision']} on cuda"
    return f"{what} {job['precision']} {job['threads']} thread(s)"


def warmup_parallel(jobs: list[dict], target=None, processes: int | None = None, progress: bool = True) -> dict:
    """Run warmup jobs in ``processes`` fresh processes (default: one per core), each compiling into the
    on-disk cache what its job needs. Returns totals: kernels compiled, loaded from the cache, failures."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    processes = max(1, min(processes or os.cpu_count() or 1, len(jobs) or 1))
    totals = {"jobs": len(jobs), "compiled_signatures": 0, "cache_misses": 0, "cache_hits": 0, "failed": []}
    ctx = mp.get_context("spawn")  # fresh interpreters: each applies the target's codegen before compiling
    # the native functions first (in parallel), then the models, which load them
    stages = [[j for j in jobs if "native" in j], [j for j in jobs if "native" not in j]]
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_worker_init) as pool:
        bar = tqdm(total=len(jobs), desc="edgedl warmup", unit="job", disable=not progress)
        for stage in stages:
            futures = {pool.submit(run_job, job, target): job for job in stage}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    stats = fut.result()
                except Exception as e:  # noqa: BLE001 - one model failing does not stop the others
                    totals["failed"].append(f"{_describe(job)}: {type(e).__name__}: {e}")
                else:
                    totals["compiled_signatures"] += stats["compiled"]
                    totals["cache_misses"] += stats["cache_misses"]
                    totals["cache_hits"] += stats["cache_hits"]
                bar.update(1)
        bar.close()
    return totals
