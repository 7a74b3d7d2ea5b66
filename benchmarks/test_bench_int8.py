"""End-to-end int8 latency of the zoo models, batch 1: edgedl int8 against onnxruntime int8 (the same QDQ
model, which onnxruntime fuses into its QLinear kernels) and against edgedl fp32, in the same run.

    pip install ".[test]" && pytest benchmarks/test_bench_int8.py --benchmark-only
    python benchmarks/repeat.py --suite int8 --runs 5      # medians over fresh processes

The int8 models come from ``edgedl.quantize`` (minmax, per-channel, calibration on 8 random inputs) and
``Model.save``: the QDQ file onnxruntime loads is the one edgedl runs ("onnxruntime-int8"). Its activations
are int8, and onnxruntime's x86 kernels are fastest with uint8 activations, so "onnxruntime-int8-u8s8" also
times onnxruntime's own quantization of the model (quant_pre_process, quantize_static: QDQ, uint8
activations, int8 per-channel weights, the same calibration inputs).
"""
import gc
import os
import time

import numpy as np
import pytest
from test_bench_models import CASES  # the same models as the fp32 benchmark (pytest puts benchmarks/ on sys.path)

import edgedl

ort = pytest.importorskip("onnxruntime")

THREADS = int(os.environ.get("EDGEDL_BENCH_THREADS", "2"))
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
        _cache[name] = (proto, data, x, _ort_quantized(proto, calibration))
    return _cache[name]


def _ort_quantized(proto, calibration) -> bytes:
    """onnxruntime's own QDQ quantization of the model: uint8 activations, int8 per-channel weights."""
    import tempfile

    import onnx
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{proto.graph.input[0].name: c} for c in calibration])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (os.path.join(tmp, f) for f in ("m.onnx", "p.onnx", "q.onnx"))
        onnx.save(proto, src)
        q.shape_inference.quant_pre_process(src, pre, skip_symbolic_shape=True)
        q.quantize_static(pre, dst, Reader(), quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8, per_channel=True)
        with open(dst, "rb") as f:
            return f.read()


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
    "edgedl-int8": lambda proto, data, x, ortq: _edgedl(data, x),
    "onnxruntime-int8": lambda proto, data, x, ortq: _ort(data, x),
    "onnxruntime-int8-u8s8": lambda proto, data, x, ortq: _ort(ortq, x),
    "edgedl-fp32": lambda proto, data, x, ortq: _edgedl(proto, x),
}


@pytest.mark.parametrize("case,engine", [(c, e) for c in sorted(CASES) for e in ENGINES])
def test_int8_latency(benchmark, case, engine):
    proto, data, x, ortq = _case(case)
    gc.collect()
    run, feeds, close = ENGINES[engine](proto, data, x, ortq)
    benchmark.extra_info.update(engine=engine, case=case, threads=THREADS)
    benchmark.group = case
    try:
        benchmark(run, feeds)
    finally:
        close()
        gc.collect()
