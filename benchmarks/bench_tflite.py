"""edgedl against TFLite (ai-edge-litert, XNNPACK as it ships) on .tflite models: a MobileNet-style test network
built here in float32 and as a full-integer int8 twin (random weights, TFLite's int8 scheme: per-channel
symmetric weights, int32 biases, asymmetric activations), and any .tflite files given on the command line.

    pip install ".[test]" && python benchmarks/bench_tflite.py [--threads 1,2] [--runs 200] [--processes 3]
        [MODEL.tflite ...]

Each engine runs alone in its own fresh processes (``edgedl.bench``, ``--processes`` of them per setting, taking
turns); the table gives p50 latencies in milliseconds (the median of the processes' p50s) and edgedl's ratio to
TFLite, with the geometric mean of the ratios at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "tflite"))


def mobilenet(int8: bool, size: int = 128, width: int = 16, blocks: int = 6) -> bytes:
    """input (1, size, size, 3) -> CONV_2D 3x3 s2 -> blocks x (DEPTHWISE 3x3 [s2 every other] + CONV_2D 1x1,
    RELU6) -> MEAN (float) / AVERAGE_POOL (int8) -> FULLY_CONNECTED (10); int8: QUANTIZE in, DEQUANTIZE out."""
    from tflite_builder import Builder, schema

    rng = np.random.default_rng(0)
    af, same = schema.ActivationFunctionType.RELU6, schema.Padding.SAME
    b = Builder()
    x = b.tensor("input", (1, size, size, 3))
    act_q = (0.05, -20)

    def act(name, shape):
        return b.tensor(name, shape, np.int8, quant=act_q) if int8 else b.tensor(name, shape)

    def weights(name, shape, axis):
        if not int8:
            return b.const(name, rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5)
        scales = (rng.random(shape[axis]) * 0.005 + 0.002).astype(np.float32)
        return b.const(name, rng.integers(-127, 128, shape), np.int8, quant=(scales, np.zeros(shape[axis]), axis))

    def bias(name, n):
        if not int8:
            return b.const(name, rng.standard_normal(n) * 0.05)
        return b.const(name, rng.integers(-500, 500, n), np.int32, quant=(np.full(n, act_q[0] * 0.004), np.zeros(n)))

    h = x
    if int8:
        h = act("q_input", (1, size, size, 3))
        b.op("QUANTIZE", [x], [h])
    side, ch = size // 2, width
    y = act("stem", (1, side, side, ch))
    b.op("CONV_2D", [h, weights("stem_w", (ch, 3, 3, 3), 0), bias("stem_b", ch)], [y], "Conv2DOptions",
         padding=same, strideW=2, strideH=2, fusedActivationFunction=af, dilationWFactor=1, dilationHFactor=1)
    h = y
    for k in range(blocks):
        stride = 2 if k % 2 else 1
        side = -(-side // stride)
        d = act(f"dw{k}", (1, side, side, ch))
        b.op("DEPTHWISE_CONV_2D", [h, weights(f"dw{k}_w", (1, 3, 3, ch), 3), bias(f"dw{k}_b", ch)], [d],
             "DepthwiseConv2DOptions", padding=same, strideW=stride, strideH=stride, depthMultiplier=1,
             fusedActivationFunction=af, dilationWFactor=1, dilationHFactor=1)
        out_ch = ch * 2 if stride == 2 else ch
        p = act(f"pw{k}", (1, side, side, out_ch))
        b.op("CONV_2D", [d, weights(f"pw{k}_w", (out_ch, 1, 1, ch), 0), bias(f"pw{k}_b", out_ch)], [p],
             "Conv2DOptions", padding=same, strideW=1, strideH=1, fusedActivationFunction=af, dilationWFactor=1,
             dilationHFactor=1)
        h, ch = p, out_ch
    pooled = act("pooled", (1, 1, 1, ch))
    if int8:
        b.op("AVERAGE_POOL_2D", [h], [pooled], "Pool2DOptions", padding=schema.Padding.VALID, strideW=1,
             strideH=1, filterWidth=side, filterHeight=side)
    else:
        b.op("MEAN", [h, b.const("axes", np.array([1, 2], np.int32), np.int32)], [pooled], "ReducerOptions",
             keepDims=True)
    flat = act("flat", (1, ch))
    b.op("RESHAPE", [pooled, b.const("shape", np.array([1, ch], np.int32), np.int32)], [flat])
    logits = act("logits", (1, 10))
    b.op("FULLY_CONNECTED", [flat, weights("fc_w", (10, ch), 0), bias("fc_b", 10)], [logits],
         "FullyConnectedOptions")
    out = logits
    if int8:
        out = b.tensor("scores", (1, 10))
        b.op("DEQUANTIZE", [logits], [out])
    return b.build([x], [out])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="more .tflite files")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--max-secs", type=float, default=3.0)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--no-test-nets", action="store_true", help="only the models given")
    args = ap.parse_args()
    import edgedl

    folder = tempfile.mkdtemp(prefix="edgedl_tflite_bench_")
    paths = []
    for int8 in () if args.no_test_nets else (False, True):
        path = os.path.join(folder, f"mobilenet_128_{'int8' if int8 else 'fp32'}.tflite")
        with open(path, "wb") as f:
            f.write(mobilenet(int8))
        paths.append(path)
    paths += args.models
    threads = [int(t) for t in args.threads.split(",")]
    print(f"{'model':34s}" + "".join(f"  edgedl {t}t  tflite {t}t  ratio" for t in threads))
    ratios: dict[int, list[float]] = {t: [] for t in threads}
    for path in paths:
        report = edgedl.bench(path, compare=["tflite"], threads=threads, runs=args.runs, max_secs=args.max_secs,
                              processes=args.processes)
        p50 = {(r["engine"], r["threads"]): r["latency_ms"]["p50"] for r in report["runs"] if r.get("latency_ms")}
        cells = []
        for t in threads:
            e, f = p50.get(("edgedl", t)), p50.get(("tflite", t))
            cells.append(f"  {e:9.3f}  {f:9.3f}  {e / f:5.2f}x" if e and f else "  (failed)")
            if e and f:
                ratios[t].append(e / f)
        print(f"{os.path.basename(path):34s}" + "".join(cells), flush=True)
    print("geometric mean of edgedl / TFLite: " + ", ".join(
        f"{t} thread(s) {np.exp(np.mean(np.log(r))):.2f}x" for t, r in ratios.items() if r))


if __name__ == "__main__":
    main()
