"""Convolution strategies side by side: the packed implicit-im2col GEMM ("gemm"), the padded image read in
place ("flat", edgedl/kernels/cpu/conv_flat.py) and pixels as GEMM rows ("pixels", conv_pixels.py), on the 3x3
shapes of published detectors and classifiers (YOLOv8n at 320, YOLOX-style heads at 416, PP-OCR, ResNet's deep
layers). They run in one process, taking turns, best of several rounds; the strategy Conv2d picks is marked *.

    python benchmarks/bench_conv_strategies.py --threads 1
    python benchmarks/bench_conv_strategies.py --threads 2
"""
from __future__ import annotations

import argparse
import time

import numpy as np

#: (C_in, C_out, H = W, stride)
SHAPES = [(512, 512, 7, 1), (256, 256, 14, 1), (128, 128, 14, 1), (64, 128, 16, 1), (256, 512, 14, 2),
          (64, 64, 14, 1), (32, 32, 16, 1), (16, 32, 160, 2), (128, 256, 20, 2), (32, 64, 80, 2), (64, 128, 40, 2),
          (64, 64, 40, 2), (128, 128, 20, 2), (96, 192, 52, 2), (192, 384, 26, 2), (64, 64, 40, 1), (32, 32, 40, 1),
          (128, 128, 10, 1), (16, 16, 80, 1), (8, 8, 160, 1), (96, 96, 52, 1), (256, 256, 7, 1)]


def best_ms(fn, rounds: int, calls: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    import numba

    from edgedl.kernels.cpu.conv import Conv2d
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    strategies = ("gemm", "flat", "pixels")
    print(f"| C_in -> C_out | H=W | stride | {' | '.join(s + ' ms' for s in strategies)} | "
          f"({args.threads} thread(s))")
    print("|---|---|---|" + "---|" * len(strategies))
    totals = {s: 0.0 for s in strategies}
    picked_total = 0.0
    for cin, cout, h, stride in SHAPES:
        x = rng.random((1, cin, h, h), dtype=np.float32)
        w = rng.random((cout, cin, 3, 3), dtype=np.float32) - 0.5
        calls, outs = [], []
        picked = Conv2d(w, None, x.shape, pads=(1,) * 4, strides=(stride, stride)).strategy
        for strategy in strategies:
            conv = Conv2d(w, np.zeros(cout, np.float32), x.shape, pads=(1,) * 4, strides=(stride, stride),
                          strategy=strategy)
            out = np.empty(conv.out_shape, np.float32)
            fn = conv.bind(x, out, np.empty(conv.scratch_bytes, np.uint8), args.threads)
            fn()
            calls.append(fn)
            outs.append(out)
        for out in outs[1:]:
            np.testing.assert_allclose(out, outs[0], rtol=1e-4, atol=1e-3)
        times = [float("inf")] * len(calls)
        for _ in range(args.rounds):  # the strategies take turns, so drifts of the machine hit all alike
            for i, fn in enumerate(calls):
                times[i] = min(times[i], best_ms(fn, 1, 10))
        for s, t in zip(strategies, times):
            totals[s] += t
        picked_total += times[strategies.index(picked)]
        cells = " | ".join(f"{t:.3f}{'*' if s == picked else ''}" for s, t in zip(strategies, times))
        print(f"| {cin} -> {cout} | {h} | {stride} | {cells} |")
    print(f"| total | | | {' | '.join(f'{totals[s]:.3f}' for s in strategies)} | picked: {picked_total:.3f} |")


if __name__ == "__main__":
    main()
