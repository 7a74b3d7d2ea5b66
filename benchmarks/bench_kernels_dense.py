"""Benchmark of the fp32 dense kernels (GEMM, Conv) against numpy/OpenBLAS and onnxruntime.

Run:  python benchmarks/bench_kernels_dense.py [--threads 1 2] [--quick]

Prints GFLOPS of sgemm at MobileNetV2-like shapes and the time per call of three MobileNetV2 convs,
for 1 and 2 threads. Timings are the best of several repeats (wall clock), so they are meaningful only
on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numba  # noqa: E402

from edgedl.kernels.cpu.conv import Conv2d  # noqa: E402
from edgedl.kernels.cpu.gemm import PackedA, gemm  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

GEMM_SHAPES = [(64, 32, 12544), (144, 24, 3136), (576, 96, 196), (1280, 320, 49)]
# name, (N, C, H, W), C_out, k, stride, pad, group
CONV_CASES = [
    ("3x3 s2 p1 3->32 @224", (1, 3, 224, 224), 32, 3, 2, 1, 1),
    ("1x1 32->16 @112", (1, 32, 112, 112), 16, 1, 1, 0, 1),
    ("dw 3x3 s1 144ch @56", (1, 144, 56, 56), 144, 3, 1, 1, 144),
]
# every distinct conv shape of MobileNetV2 (--all)
MOBILENETV2 = [("pw 16->96 @112", (1, 16, 112, 112), 96, 1, 1, 0, 1),
               ("dw 32 @112", (1, 32, 112, 112), 32, 3, 1, 1, 32),
               ("dw s2 96 @112", (1, 96, 112, 112), 96, 3, 2, 1, 96),
               ("pw 96->24 @56", (1, 96, 56, 56), 24, 1, 1, 0, 1),
               ("pw 24->144 @56", (1, 24, 56, 56), 144, 1, 1, 0, 1),
               ("pw 144->24 @56", (1, 144, 56, 56), 24, 1, 1, 0, 1),
               ("dw s2 144 @56", (1, 144, 56, 56), 144, 3, 2, 1, 144),
               ("pw 144->32 @28", (1, 144, 28, 28), 32, 1, 1, 0, 1),
               ("pw 32->192 @28", (1, 32, 28, 28), 192, 1, 1, 0, 1),
               ("dw 192 @28", (1, 192, 28, 28), 192, 3, 1, 1, 192),
               ("pw 192->32 @28", (1, 192, 28, 28), 32, 1, 1, 0, 1),
               ("dw s2 192 @28", (1, 192, 28, 28), 192, 3, 2, 1, 192),
               ("pw 192->64 @14", (1, 192, 14, 14), 64, 1, 1, 0, 1),
               ("pw 64->384 @14", (1, 64, 14, 14), 384, 1, 1, 0, 1),
               ("dw 384 @14", (1, 384, 14, 14), 384, 3, 1, 1, 384),
               ("pw 384->64 @14", (1, 384, 14, 14), 64, 1, 1, 0, 1),
               ("pw 384->96 @14", (1, 384, 14, 14), 96, 1, 1, 0, 1),
               ("pw 96->576 @14", (1, 96, 14, 14), 576, 1, 1, 0, 1),
               ("dw 576 @14", (1, 576, 14, 14), 576, 3, 1, 1, 576),
               ("pw 576->96 @14", (1, 576, 14, 14), 96, 1, 1, 0, 1),
               ("dw s2 576 @14", (1, 576, 14, 14), 576, 3, 2, 1, 576),
               ("pw 576->160 @7", (1, 576, 7, 7), 160, 1, 1, 0, 1),
               ("pw 160->960 @7", (1, 160, 7, 7), 960, 1, 1, 0, 1),
               ("dw 960 @7", (1, 960, 7, 7), 960, 3, 1, 1, 960),
               ("pw 960->160 @7", (1, 960, 7, 7), 160, 1, 1, 0, 1),
               ("pw 960->320 @7", (1, 960, 7, 7), 320, 1, 1, 0, 1),
               ("pw 320->1280 @7", (1, 320, 7, 7), 1280, 1, 1, 0, 1)]


def best_time(fn, min_total=0.25, repeats=7):
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_total / repeats:
                break
        best = min(best, dt / n)
    return best


def numpy_limited(threads):
    if threadpool_limits is None:
        return _Null()
    return threadpool_limits(limits=threads, user_api="blas")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def ort_session(kind, x_shape, w, b, stride, pad, group, threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(kind, ["x", "w", "b"], ["y"], strides=[stride, stride], pads=[pad] * 4,
                            group=group)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    ap.add_argument("--all", action="store_true", help="also every conv shape of MobileNetV2")
    args = ap.parse_args()
    tmin = 0.1 if args.quick else 0.4
    rng = np.random.default_rng(0)
    threads_list = [t for t in args.threads if t <= numba.config.NUMBA_NUM_THREADS]
    print(f"numba {numba.__version__}, threading layer candidates: {numba.config.THREADING_LAYER}, "
          f"max threads {numba.config.NUMBA_NUM_THREADS}")

    print("\n== sgemm GFLOPS (M, K, N) ==")
    print(f"{'shape':>20} {'thr':>3} {'packedA':>8} {'gemm':>8} {'numpy':>8} {'packedA/np':>10}")
    for m, k, n in GEMM_SHAPES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        c = np.empty((m, n), np.float32)
        pa = PackedA(a)
        flop = 2.0 * m * k * n
        pa(b, c)
        assert np.allclose(c, a @ b, rtol=1e-3, atol=1e-3)
        for th in threads_list:
            numba.set_num_threads(th)
            t_pa = best_time(lambda: pa(b, c), tmin)
            t_g = best_time(lambda: gemm(a, b, c), tmin)
            with numpy_limited(th):
                t_np = best_time(lambda: np.matmul(a, b, out=c), tmin)
            print(f"{str((m, k, n)):>20} {th:>3} {flop / t_pa / 1e9:8.1f} {flop / t_g / 1e9:8.1f} "
                  f"{flop / t_np / 1e9:8.1f} {t_np / t_pa:10.2f}")
    print("packedA: weights packed once (how Conv/Gemm ops run); gemm: packs A on every call")

    print("\n== conv, time per call (ms) ==")
    print(f"{'case':>24} {'thr':>3} {'edgedl':>8} {'ort':>8} {'numpy':>8} {'edgedl/ort':>10} {'strategy':>10}")
    totals = {}
    for name, shape, cout, ksz, stride, pad, group in CONV_CASES + (MOBILENETV2 if args.all else []):
        x = rng.standard_normal(shape).astype(np.float32)
        w = (rng.standard_normal((cout, shape[1] // group, ksz, ksz)) * 0.1).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        conv = Conv2d(w, b, shape, (stride, stride), (pad,) * 4, (1, 1), group)
        out = np.empty(conv.out_shape, np.float32)
        scratch = np.empty(conv.scratch_bytes, np.uint8)
        np_fn = numpy_conv(x, w, b, stride, pad, group)
        for th in threads_list:
            numba.set_num_threads(th)
            t_e = best_time(lambda: conv(x, out, scratch), tmin)
            with numpy_limited(th):
                t_n = best_time(np_fn, tmin)
            try:
                sess = ort_session("Conv", shape, w, b, stride, pad, group, th)
                y = sess.run(None, {"x": x})[0]
                assert np.allclose(out, y, rtol=1e-3, atol=1e-3), np.abs(out - y).max()
                t_o = best_time(lambda: sess.run(None, {"x": x}), tmin)
                ort_s, ratio = f"{t_o * 1e3:8.3f}", f"{t_e / t_o:10.2f}"
            except ImportError:
                t_o, ort_s, ratio = float("nan"), f"{'n/a':>8}", f"{'':>10}"
            tot = totals.setdefault(th, [0.0, 0.0])
            tot[0] += t_e
            tot[1] += t_o
            print(f"{name:>24} {th:>3} {t_e * 1e3:8.3f} {ort_s} {t_n * 1e3:8.3f} {ratio} {conv.strategy:>10}")
    for th, (te, to) in totals.items():
        print(f"{'total':>24} {th:>3} {te * 1e3:8.3f} {to * 1e3:8.3f} {'':>8} {te / to:10.2f}")
    print("ort: onnxruntime InferenceSession with one Conv node, intra_op_num_threads = thr (includes its "
          "per-run overhead, a few microseconds)\nnumpy: im2col (sliding_window_view) + matmul + bias "
          "(per-channel einsum for depthwise)")


def numpy_conv(x, w, b, stride, pad, group):
    """A numpy/OpenBLAS baseline for one conv: im2col + matmul (einsum per channel for depthwise)."""
    _, c, h, wd = x.shape
    cout, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    bias = b.reshape(-1, 1)
    if group == 1 and k == 1 and stride == 1:
        w2 = w.reshape(cout, c)
        return lambda: np.matmul(w2, x.reshape(c, -1)) + bias
    if group == 1:
        w2 = w.reshape(cout, -1)

        def run():
            xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
            win = np.lib.stride_tricks.sliding_window_view(xp_[0], (k, k), axis=(1, 2))[:, ::stride, ::stride]
            cols = win.transpose(0, 3, 4, 1, 2).reshape(c * k * k, oh * ow)
            return np.matmul(w2, cols) + bias
        return run
    wk = w.reshape(cout, k, k)

    def run_dw():
        xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else xp
        win = np.lib.stride_tricks.sliding_window_view(xp_[0], (k, k), axis=(1, 2))[:, ::stride, ::stride]
        return np.einsum("chwij,cij->chw", win, wk) + b.reshape(-1, 1, 1)
    return run_dw


if __name__ == "__main__":
    main()
