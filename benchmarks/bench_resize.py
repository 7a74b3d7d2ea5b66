"""Resize (float32, NCHW): edgedl against onnxruntime.

Run:  python benchmarks/bench_resize.py [--threads 1 2] [--repeat 3] [--max-secs 1.0] [--cases ...]

Cases (opset 19, constant scales/sizes, the default half_pixel coordinates):

* ``cubic_up``: cubic (1, 3, 224, 224) -> (1, 3, 448, 448) (image upscaling before a model);
* ``cubic_aa_down``: cubic with antialias (1, 3, 448, 448) -> (1, 3, 224, 224) (PIL-style downscaling);
* ``linear_2x``: linear 2x of a (1, 64, 80, 80) feature map (FPN / segmentation heads);
* ``nearest_2x``: nearest 2x of (1, 256, 20, 20) (YOLO's upsampling neck).

Every case runs through :func:`edgedl.bench` (``bench_models.bench_files``): each engine and thread count in
its own fresh process (no shared thread pools, caches or allocator state), the public API with a fresh output
per call (``InferenceSession.run`` against ``Model.run``), repetitions outermost. edgedl runs with
``EDGEDL_FOLLOW_LOAD=0`` (the thread count asked for, as onnxruntime's ``intra_op_num_threads``).

Prints microseconds per call, the median over ``--repeat`` repetitions of each process's p50, the ratio
edgedl / onnxruntime (below 1: edgedl is faster) and the largest difference between the engines' outputs.
Wall-clock timings: meaningful only on an otherwise idle machine (with other work on the cores, a parallel
region waits for a descheduled thread: the multi-thread numbers suffer first).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_models import bench_files, print_other_load, print_ratio_table, worst_agreement, write_protos  # noqa: E402

#: name -> (input shape, attributes, scales or None, sizes or None)
CASES = {
    "cubic_up": ((1, 3, 224, 224), {"mode": "cubic"}, None, (1, 3, 448, 448)),
    "cubic_aa_down": ((1, 3, 448, 448), {"mode": "cubic", "antialias": 1}, None, (1, 3, 224, 224)),
    "linear_2x": ((1, 64, 80, 80), {"mode": "linear"}, (1.0, 1.0, 2.0, 2.0), None),
    "nearest_2x": ((1, 256, 20, 20), {"mode": "nearest"}, (1.0, 1.0, 2.0, 2.0), None),
}


def out_shape(case: str) -> list[int]:
    shape, _, scales, sizes = CASES[case]
    return list(sizes) if sizes is not None else [int(np.floor(d * s)) for d, s in zip(shape, scales)]


def make_model(case: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape, attrs, scales, sizes = CASES[case]
    inits, names = [], ["x", "", "", ""]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.asarray(scales, np.float32), "scales"))
        names[2] = "scales"
    else:
        inits.append(numpy_helper.from_array(np.asarray(sizes, np.int64), "sizes"))
        names[3] = "sizes"
    while names[-1] == "":
        names.pop()
    node = helper.make_node("Resize", names, ["y"], **attrs)
    graph = helper.make_graph([node], case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape(case))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (fresh processes each; default 3)")
    ap.add_argument("--max-secs", type=float, default=1.0, help="timed seconds per process (default 1)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--json", help="also write every edgedl.bench report to this file")
    args = ap.parse_args()
    os.environ.setdefault("EDGEDL_FOLLOW_LOAD", "0")  # the benchmark processes inherit it
    labels = {case: f"{case} {'x'.join(map(str, CASES[case][0]))}->{'x'.join(map(str, out_shape(case)))}"
              for case in args.cases}
    reports: list = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = write_protos(tmp, [(labels[case], make_model(case)) for case in args.cases])
        cells = bench_files(cases, args.threads, args.repeat, args.max_secs, reports=reports)
    if args.json:
        from edgedl.benchmark.report import write_json

        write_json(reports, args.json)
    agreement = worst_agreement(reports)
    print(f"Resize, float32, opset 19; {os.cpu_count()} cores; median over {args.repeat} repetition(s) of each "
          f"process's p50; one process per engine and thread count")
    for t in args.threads:
        print()
        print_ratio_table(cells, list(labels.values()), t, unit="us", agreement=agreement)
    print_other_load(reports)


if __name__ == "__main__":
    main()
