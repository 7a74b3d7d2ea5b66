"""LayerNormalization (opset 17, axis -1, Scale and B constants): edgedl against onnxruntime.

Run:  python benchmarks/bench_layernorm.py [--threads 1 2] [--repeat 3] [--max-secs 1.0]

Shapes: (1, 128, 768) (BERT-base, one sequence), (8, 197, 384) (ViT-S/16, a batch of 8), (1, 1500, 512)
(Whisper-base encoder). Every case runs through :func:`edgedl.bench` (``bench_models.bench_files``): each
engine and thread count in its own fresh process (no shared thread pools, caches or allocator state), the
public API with a fresh output per call (``InferenceSession.run`` against ``Model.run``), repetitions
outermost. edgedl runs with ``EDGEDL_FOLLOW_LOAD=0`` (the thread count asked for, as onnxruntime's
``intra_op_num_threads``, instead of fewer threads beside other busy work).

Prints microseconds per call, the median over ``--repeat`` repetitions of each process's p50, the ratio
edgedl / onnxruntime (below 1: edgedl is faster) and the largest difference between the engines' outputs.
Timings are wall clock: meaningful only on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_models import bench_files, print_other_load, print_ratio_table, worst_agreement, write_protos  # noqa: E402

SHAPES = [(1, 128, 768), (8, 197, 384), (1, 1500, 512)]


def make_model(shape):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    h = shape[-1]
    inits = [numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "bias")]
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1, epsilon=1e-5)
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (fresh processes each; default 3)")
    ap.add_argument("--max-secs", type=float, default=1.0, help="timed seconds per process (default 1)")
    args = ap.parse_args()
    os.environ.setdefault("EDGEDL_FOLLOW_LOAD", "0")  # the benchmark processes inherit it
    labels = ["x".join(map(str, shape)) for shape in SHAPES]
    reports: list = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = write_protos(tmp, [(label, make_model(shape)) for label, shape in zip(labels, SHAPES)])
        cells = bench_files(cases, args.threads, args.repeat, args.max_secs, reports=reports)
    agreement = worst_agreement(reports)
    print(f"LayerNormalization, float32, axis -1; {os.cpu_count()} cores; median over {args.repeat} "
          f"repetition(s) of each process's p50; one process per engine and thread count")
    for t in args.threads:
        print()
        print_ratio_table(cells, labels, t, unit="us", agreement=agreement, title="shape")
    print_other_load(reports)


if __name__ == "__main__":
    main()
