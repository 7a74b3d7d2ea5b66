"""End-to-end latency of the zoo models, batch 1, 2 threads: edgedl and onnxruntime in the same run.

    pip install ".[test]" && pytest benchmarks/test_bench_models.py --benchmark-only

The summary at the end prints each ratio and their geometric mean.
"""
import gc
import os
import time

import numpy as np
import pytest

import edgedl
from edgedl import zoo

ort = pytest.importorskip("onnxruntime")

THREADS = int(os.environ.get("EDGEDL_BENCH_THREADS", "2"))
CASES = {
    "mobilenet_v2_like 224": lambda: (zoo.mobilenet_v2_like(), (1, 3, 224, 224)),
    "mobilenet_v2_like 0.5x 128": lambda: (zoo.mobilenet_v2_like(resolution=128, width=0.5), (1, 3, 128, 128)),
    "resnet_like 224": lambda: (zoo.resnet_like(), (1, 3, 224, 224)),
    "kws_tc_resnet": lambda: (zoo.kws_tc_resnet(), (1, 40, 98)),
    "nhwc_cnn 64": lambda: (zoo.nhwc_cnn(), (1, 64, 64, 3)),
}
_cache: dict = {}


def _case(name):
    if name not in _cache:
        proto, shape = CASES[name]()
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        _cache[name] = (proto, x)
    return _cache[name]


def _edgedl_runner(proto, x):
    model = edgedl.load(proto, num_threads=THREADS)
    feeds = {model.inputs[0].name: x}
    model.run(feeds)  # compile + plan outside the timing
    # NOTE: OpenMP workers spin for a while after their last parallel region: let them go idle before the
    # other engine is measured on the same cores
    return model.run, feeds, lambda: time.sleep(0.2)


def _ort_runner(proto, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x}
    sess.run(None, feeds)
    holder = [sess]

    def close():
        holder.clear()  # the session's spinning worker threads end with it

    return (lambda f: holder[0].run(None, f)), feeds, close


RUNNERS = {"edgedl": _edgedl_runner, "onnxruntime": _ort_runner}


# NOTE: each case's two engines run back to back, so slow drifts of a shared machine hit both alike.
@pytest.mark.parametrize("case,engine", [(c, e) for c in sorted(CASES) for e in RUNNERS])
def test_latency(benchmark, case, engine):
    proto, x = _case(case)
    gc.collect()
    run, feeds, close = RUNNERS[engine](proto, x)
    benchmark.extra_info.update(engine=engine, case=case, threads=THREADS)
    benchmark.group = case
    try:
        benchmark(run, feeds)
    finally:
        # NOTE: one engine's idle worker threads must not share the cores with the other's measurement
        close()
        gc.collect()
