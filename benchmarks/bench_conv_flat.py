"""Convolution strategies side by side: the packed implicit-im2col GEMM ("gemm") against the padded image read
in place ("flat", edgedl/kernels/cpu/conv_flat.py), on the 3x3 shapes of published detectors (YOLOv8n at 320,
YOLOX-style heads at 416, PP-OCR). Both run in one process, taking turns, best of several rounds.

    python benchmarks/bench_conv_flat.py --threads 1
    python benchmarks/bench_conv_flat.py --threads 2
"""
from __future__ import annotations

import argparse
import time

import numpy as np

#: (C_in, C_out, H = W, stride)
SHAPES = [(16, 32, 160, 2), (128, 256, 20, 2), (32, 64, 80, 2), (64, 128, 40, 2), (64, 64, 40, 2),
          (128, 128, 20, 2), (96, 192, 52, 2), (192, 384, 26, 2), (64, 64, 40, 1), (32, 32, 40, 1),
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
    print(f"| C_in -> C_out | H=W | stride | gemm ms | flat ms | flat / gemm | ({args.threads} thread(s))")
    print("|---|---|---|---|---|---|")
    totals = [0.0, 0.0]
    for cin, cout, h, stride in SHAPES:
        x = rng.random((1, cin, h, h), dtype=np.float32)
        w = rng.random((cout, cin, 3, 3), dtype=np.float32) - 0.5
        calls, outs = [], []
        for strategy in ("gemm", "flat"):
            conv = Conv2d(w, np.zeros(cout, np.float32), x.shape, pads=(1,) * 4, strides=(stride, stride),
                          strategy=strategy)
            out = np.empty(conv.out_shape, np.float32)
            fn = conv.bind(x, out, np.empty(conv.scratch_bytes, np.uint8), args.threads)
            fn()
            calls.append(fn)
            outs.append(out)
        np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-3)
        times = [float("inf"), float("inf")]
        for _ in range(args.rounds):  # the strategies take turns, so drifts of the machine hit both
            for i, fn in enumerate(calls):
                times[i] = min(times[i], best_ms(fn, 1, 10))
        totals = [t + v for t, v in zip(totals, times)]
        print(f"| {cin} -> {cout} | {h} | {stride} | {times[0]:.3f} | {times[1]:.3f} | {times[1] / times[0]:.2f} |")
    print(f"| total | | | {totals[0]:.3f} | {totals[1]:.3f} | {totals[1] / totals[0]:.2f} |")


if __name__ == "__main__":
    main()
