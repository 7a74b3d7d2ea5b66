"""End-to-end int8 latency of the zoo models, batch 1: edgedl int8 against onnxruntime int8 (the same QDQ
model, which onnxruntime fuses into its QLinear kernels) and against edgedl fp32, in the same run.

    pip install ".[test]" && pytest benchmarks/test_bench_int8.py --benchmark-only
    python benchmarks/repeat.py --suite int8 --runs 5      # medians over fresh processes

The int8 models come from ``edgedl.quantize`` (minmax, per-channel, calibration on 8 random inputs) and
``Model.save``: the QDQ file onnxruntime loads is the one edgedl runs.
"""
import gc
import io
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
    """(fp32 proto, int8 QDQ bytes, input)"""
    if name not in _cache:
        proto, shape = CASES[name]()
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(np.float32)
        calibration = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
        q = edgedl.quantize(edgedl.load(proto), calibration, progress=False)
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"edgedl_bench_{os.getpid()}.onnx")
        q.save(path)
        with open(path, "rb") as f:
            data = f.read()
        os.remove(path)
        _cache[name] = (proto, data, x)
    return _cache[name]


def _edgedl(model_src, x):
    model = edgedl.load(model_src, num_threads=THREADS)
    feeds = {model.inputs[0].name: x}
    model.run(feeds)
    return model.run, feeds, lambda: time.sleep(0.2)  # let OpenMP workers go idle before the next engine


def _ort(data, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x}
    sess.run(None, feeds)
    holder = [sess]
    return (lambda f: holder[0].run(None, f)), feeds, holder.clear


ENGINES = {
    "edgedl-int8": lambda proto, data, x: _edgedl(io.BytesIO(data).getvalue(), x),
    "onnxruntime-int8": lambda proto, data, x: _ort(data, x),
    "edgedl-fp32": lambda proto, data, x: _edgedl(proto, x),
}


@pytest.mark.parametrize("case,engine", [(c, e) for c in sorted(CASES) for e in ENGINES])
def test_int8_latency(benchmark, case, engine):
    proto, data, x = _case(case)
    gc.collect()
    run, feeds, close = ENGINES[engine](proto, data, x)
    benchmark.extra_info.update(engine=engine, case=case, threads=THREADS)
    benchmark.group = case
    try:
        benchmark(run, feeds)
    finally:
        close()
        gc.collect()
