"""Benchmark of Attention (ONNX opset 23) and Einsum against onnxruntime, 1 thread and all threads.

Run:  python benchmarks/bench_attention_einsum.py [--threads 1 2] [--repeat 3] [--max-secs 1.0] [--quick]

Each case is a one-node ONNX model run through :func:`edgedl.bench` (``bench_models.bench_files``): each
engine and thread count in its own fresh process (onnxruntime's intra-op threads; edgedl's ``num_threads``),
repetitions outermost. Prints the median over ``--repeat`` repetitions of each process's p50 latency in ms and
the ratio edgedl / onnxruntime (below 1: edgedl is faster), and the largest difference between the engines'
outputs. Cases:

* Attention 4-D (1, 8 heads, 128 tokens, 64 dims) and (1, 12, 197, 64) (ViT-B/16), plus the causal variant
  of the first and a 3-D GQA decode step (1 query, 512 cached keys);
* Einsum 'bhqd,bhkd->bhqk' (attention scores) and 'bij,bjk->bik' (batched matmul) at transformer sizes.

Timings are wall clock on whatever else the machine runs; by default edgedl follows the load (runs fewer threads
beside other busy work, see ``edgedl.set_num_threads``), ``--no-follow-load`` forces the asked count
(``EDGEDL_FOLLOW_LOAD=0`` in the benchmark processes). Compare ratios from the same run, on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import onnx
from onnx import TensorProto, helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_models import bench_files, print_other_load, print_ratio_table, worst_agreement, write_protos  # noqa: E402


def attention_model(q_shape, k_shape, v_shape, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], **attrs)
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in
           (("Q", q_shape), ("K", k_shape), ("V", v_shape))]
    graph = helper.make_graph([node], "attention", ins, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def einsum_model(equation, shapes) -> onnx.ModelProto:
    names = [f"x{i}" for i in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation)
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(names, shapes)]
    graph = helper.make_graph([node], "einsum", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def cases(quick: bool):
    out = [
        ("attn 4d 1x8x128x64", attention_model((1, 8, 128, 64), (1, 8, 128, 64), (1, 8, 128, 64))),
        ("attn 4d 1x12x197x64", attention_model((1, 12, 197, 64), (1, 12, 197, 64), (1, 12, 197, 64))),
        ("attn causal 1x8x128x64", attention_model((1, 8, 128, 64), (1, 8, 128, 64), (1, 8, 128, 64), is_causal=1)),
        ("einsum bhqd,bhkd 1x12x197x64", einsum_model("bhqd,bhkd->bhqk", [(1, 12, 197, 64), (1, 12, 197, 64)])),
        ("einsum bij,bjk 12x197x64x197", einsum_model("bij,bjk->bik", [(12, 197, 64), (12, 64, 197)])),
        ("einsum bij,bjk 8x128x768x64", einsum_model("bij,bjk->bik", [(8, 128, 768), (8, 768, 64)])),
    ]
    if not quick:
        out.append(("attn gqa decode 32q/8kv x512", attention_model((1, 1, 32 * 64), (1, 512, 8 * 64),
                                                                    (1, 512, 8 * 64), q_num_heads=32,
                                                                    kv_num_heads=8)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all)")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--max-secs", type=float, default=1.0, help="timed seconds per process (default 1)")
    ap.add_argument("--quick", action="store_true", help="fewer cases, one repetition")
    ap.add_argument("--no-follow-load", action="store_true",
                    help="run edgedl's asked thread count even beside other busy work (default: it follows the load)")
    args = ap.parse_args()
    if args.no_follow_load:
        os.environ["EDGEDL_FOLLOW_LOAD"] = "0"  # the benchmark processes inherit it
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    repeat = args.repeat or (1 if args.quick else 3)
    protos = cases(args.quick)
    reports: list = []
    with tempfile.TemporaryDirectory() as tmp:
        cells = bench_files(write_protos(tmp, protos), threads, repeat, args.max_secs, reports=reports)
    agreement = worst_agreement(reports)
    print(f"median over {repeat} repetition(s) of each process's p50")
    for t in threads:
        print()
        print_ratio_table(cells, [name for name, _ in protos], t, agreement=agreement)
    print_other_load(reports)


if __name__ == "__main__":
    main()
