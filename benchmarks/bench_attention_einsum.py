"""Benchmark of Attention (ONNX opset 23) and Einsum against onnxruntime, 1 thread and all threads.

Run:  python benchmarks/bench_attention_einsum.py [--threads 1 2] [--repeat 30] [--quick]

Each case is a one-node ONNX model run through ``edgedl.load`` and an onnxruntime session with the same
thread count (intra-op threads; edgedl's ``num_threads``). Prints the best and median time per call in ms and
the ratio edgedl / onnxruntime (below 1: edgedl is faster). Cases:

* Attention 4-D (1, 8 heads, 128 tokens, 64 dims) and (1, 12, 197, 64) (ViT-B/16), plus the causal variant
  of the first and a 3-D GQA decode step (1 query, 512 cached keys);
* Einsum 'bhqd,bhkd->bhqk' (attention scores) and 'bij,bjk->bik' (batched matmul) at transformer sizes.

Timings are wall clock on whatever else the machine runs; by default edgedl follows the load (runs fewer threads
beside other busy work, see ``edgedl.set_num_threads``), ``--no-follow-load`` forces the asked count. Compare
ratios from the same run, on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import edgedl  # noqa: E402


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


def timeit(fn, repeat: int) -> tuple[float, float]:
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all)")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="fewer cases and repeats")
    ap.add_argument("--no-follow-load", action="store_true",
                    help="run edgedl's asked thread count even beside other busy work (default: it follows the load)")
    args = ap.parse_args()
    import numba
    import onnxruntime as ort

    threads = args.threads or sorted({1, numba.config.NUMBA_NUM_THREADS})
    if args.no_follow_load:
        edgedl.set_num_threads(None, follow_load=False)
    repeat = 10 if args.quick else args.repeat
    rng = np.random.default_rng(0)
    print(f"{'case':<32} {'thr':>3} {'edgedl best/med ms':>20} {'ort best/med ms':>18} {'ratio best':>10} "
          f"{'ratio med':>9}")
    for name, proto in cases(args.quick):
        feeds = {}
        for vi in proto.graph.input:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
        for nt in threads:
            model = edgedl.load(proto, num_threads=nt)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = nt
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            want = sess.run(None, feeds)[0]
            got = list(model.run(feeds).values())[0]
            err = float(np.abs(got - want).max() / max(1e-6, float(np.abs(want).max())))
            e_best, e_med = timeit(lambda: model.run(feeds), repeat)
            o_best, o_med = timeit(lambda: sess.run(None, feeds), repeat)
            note = f"  (max rel err {err:.1e})" if err > 1e-4 else ""
            print(f"{name:<32} {nt:>3} {e_best * 1e3:>9.3f}/{e_med * 1e3:<9.3f} "
                  f"{o_best * 1e3:>8.3f}/{o_med * 1e3:<8.3f} {e_best / o_best:>10.2f} {e_med / o_med:>9.2f}{note}")


if __name__ == "__main__":
    main()
