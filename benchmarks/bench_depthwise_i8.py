"""Benchmark of the 8-bit depthwise convolution (edgedl.kernels.cpu.depthwise_i8.QDepthwise2d) at the
MobileNetV2 depthwise shapes, single thread, against the generic 8-bit convolution (QConv2d: im2col + int8
GEMM per group), onnxruntime's QLinearConv on the same layer (uint8 activations, int8 per-channel
weights, group = C, intra_op_num_threads=1) and edgedl's fp32 depthwise (Conv2d with group = C).

Run:  python benchmarks/bench_depthwise_i8.py [--quick] [--mode double|single|float] [--no-ort] [--no-qconv]

Prints GOPS = 2 * C * OH * OW * 9 / time (best of several repeats, wall clock: meaningful on an otherwise
idle machine only). Outputs are cross-checked on the way: QDepthwise2d against QConv2d (bit-exact, same
mode) and, in float mode, against onnxruntime (which requantizes in float32 like MODE_FLOAT: the
mismatch count is printed, expected 0).
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from edgedl.kernels.cpu.conv import Conv2d  # noqa: E402
from edgedl.kernels.cpu.depthwise_i8 import QDepthwise2d  # noqa: E402
from edgedl.quant.requant import MODES, Requant  # noqa: E402

# C, H (= W), stride: every depthwise layer shape of MobileNetV2 (3x3; pads 1 for stride 1, TF-style
# (0, 0, 1, 1) for stride 2)
SHAPES = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (384, 14, 1), (576, 14, 1),
          (576, 14, 2), (960, 7, 1)]


def best_time(fn, min_total=0.3, repeats=5):
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


def make_qconv(w, bias, req, in_shape, x_zp, strides, pads, group):
    """QConv2d with whichever constructor this checkout has (Requant-based, or the older m0/shift one)."""
    from edgedl.kernels.cpu.conv_i8 import QConv2d

    params = list(inspect.signature(QConv2d.__init__).parameters)
    if "req" in params:
        return QConv2d(w, bias, req, in_shape, x_zp, strides, pads, (1, 1), group)
    if req.mode == MODES["float"]:
        raise ValueError("this QConv2d has no float requantization")
    return QConv2d(w, bias, req.m0, req.shift, in_shape, x_zp, req.zp, strides, pads, (1, 1), group, req.lo,
                   req.hi, req.mode == MODES["single"])


def ort_qlinearconv(x_shape, x_dtype, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias, strides, pads, group):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    xt = TensorProto.UINT8 if x_dtype == np.uint8 else TensorProto.INT8
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zp, x_dtype), "xz"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.asarray(w_scale, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), "wz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zp, x_dtype), "yz"),
             numpy_helper.from_array(bias, "b")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            group=group, kernel_shape=list(w.shape[2:]), strides=list(strides), pads=list(pads))
    graph = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", xt, list(x_shape))],
                              [helper.make_tensor_value_info("y", xt, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    ap.add_argument("--mode", choices=sorted(MODES), default="double", help="requantization of edgedl's kernels")
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime")
    ap.add_argument("--no-qconv", action="store_true", help="skip the generic QConv2d (slow on depthwise)")
    args = ap.parse_args()
    tmin = 0.1 if args.quick else 0.3
    mode = MODES[args.mode]
    rng = np.random.default_rng(0)
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    use_ort = ort_version is not None and not args.no_ort
    print(f"single thread, GOPS = 2*C*OH*OW*9 / time; requantization {args.mode}; uint8 activations, int8 "
          f"per-channel weights" + (f"; onnxruntime {ort_version}" if use_ort else ""))
    hdr = f"{'layer':>22} {'QDepthwise2d':>13} {'(kernel)':>12} {'QConv2d':>9} {'ort int8':>9} {'fp32 dw':>9}"
    print(hdr)
    for c, hw, s in SHAPES:
        pads = (1, 1, 1, 1) if s == 1 else (0, 0, 1, 1)
        x_shape = (1, c, hw, hw)
        x = rng.integers(0, 256, x_shape).astype(np.uint8)
        w = rng.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
        bias = rng.integers(-2000, 2000, c).astype(np.int32)
        x_scale, y_scale, x_zp, y_zp = np.float32(0.02), np.float32(0.05), 121, 117
        w_scale = rng.uniform(0.002, 0.01, c).astype(np.float32)
        req = Requant.for_scales(x_scale, w_scale, y_scale, c, y_zp, 0, 255, mode)
        op = QDepthwise2d(w, 0, bias, req, x_shape, x_zp, (s, s), pads)
        oh, ow = op.out_shape[2:]
        gop = 2.0 * c * oh * ow * 9 / 1e9
        out = np.empty(op.out_shape, np.uint8)
        fn = op.bind(x, out, np.zeros(op.scratch_bytes, np.uint8), 1)
        t_dw = best_time(fn, tmin)
        name = f"C={c} {hw}->{oh} s{s}"
        cols = [f"{gop / t_dw:13.1f}", f"{op.strategy:>12}"]

        qconv = "-"
        if not args.no_qconv:
            try:
                qc = make_qconv(w, bias, req, x_shape, x_zp, (s, s), pads, c)
                out_q = np.empty(op.out_shape, np.uint8)
                try:
                    qc(x, out_q)
                except (ValueError, TypeError):  # an int8-only QConv2d: shift the data by 128
                    x8 = (x.astype(np.int16) - 128).astype(np.int8)
                    qc = make_qconv(w, bias, Requant(req.m0, req.shift, req.fscale, req.zp - 128, req.lo - 128,
                                                     req.hi - 128, req.mode), x_shape, x_zp - 128, (s, s), pads, c)
                    out_q = np.empty(op.out_shape, np.int8)
                    qc(x8, out_q)
                    out_q = (out_q.astype(np.int16) + 128).astype(np.uint8)
                    run_q = lambda: qc(x8, out_q.view(np.int8))
                else:
                    run_q = lambda: qc(x, out_q)
                fn()
                assert np.array_equal(out, out_q), "QDepthwise2d and QConv2d differ"
                qconv = f"{gop / best_time(run_q, tmin / 3, 3):9.2f}"
            except (ImportError, ValueError, TypeError) as e:
                qconv = f"({type(e).__name__})"
        cols.append(f"{qconv:>9}")

        ort_col = "-"
        if use_ort:
            sess = ort_qlinearconv(x_shape, np.uint8, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias, (s, s), pads, c)
            feed = {"x": x}
            y = sess.run(None, feed)[0]
            ort_col = f"{gop / best_time(lambda: sess.run(None, feed), tmin):9.1f}"
            if mode == MODES["float"]:
                fn()
                mism = int(np.count_nonzero(y != out))
                ort_col += f" ({mism} diff)" if mism else ""
        cols.append(f"{ort_col:>9}")

        xf = rng.standard_normal(x_shape).astype(np.float32)
        cv = Conv2d(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), rng.standard_normal(c).astype(np.float32),
                    x_shape, (s, s), pads, group=c)
        of = np.empty(cv.out_shape, np.float32)
        g = cv.bind(xf, of, np.zeros(cv.scratch_bytes, np.uint8), 1)
        cols.append(f"{gop / best_time(g, tmin):9.1f}")
        print(f"{name:>22} " + " ".join(cols), flush=True)


if __name__ == "__main__":
    main()
