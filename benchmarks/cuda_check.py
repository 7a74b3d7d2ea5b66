"""The CUDA backend on a real GPU: correctness against the CPU backend and batch-1 latency, one short run.

    pip install ".[test,cuda]" "numpy<2.5" && python benchmarks/cuda_check.py [--runs 200] [--json out.json]
    NUMBA_ENABLE_CUDASIM=0 pytest -q tests/cuda      # the simulator tests, on the GPU

For each model (the bundled examples and the zoo's: digits, kws, mobilenet_v2_like 224, resnet_like 224,
nhwc_cnn), it loads the model on the CPU and with ``device="cuda"``, checks that the outputs agree (max
difference relative to the largest output magnitude, top-1) on seeded random inputs, and times ``Model.run``
on the GPU (numpy in and out, so the copies count; and device arrays in and out) against the CPU path and,
when PyTorch with CUDA is installed, PyTorch eager on the same network (``edgedl.benchmark.torch_from_onnx``,
the models it can build), each the median of ``--runs`` runs after warm-up. It also reports the first run
(kernel compilation, cached for later processes) and how many steps run on the host. Then the int8 dp4a GEMM
(:mod:`edgedl.kernels.cuda.dp4a`, linked ``__dp4a``) at 2048^3 against the integer reference and, with PyTorch,
``torch._int_mm`` (cuBLAS int8) in TOPS; and fine-tuning the digits CNN (``Trainer(device="cuda")``, every layer)
against the CPU trainer: weights after the same steps, milliseconds per step. numba-cuda 0.30 with numpy 2.5
fails to import: pin numpy below 2.5 there.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import edgedl  # noqa: E402
from edgedl import zoo  # noqa: E402


def models() -> list[tuple[str, object, tuple]]:
    ex = os.path.join(os.path.dirname(HERE), "examples")
    return [("digits_cnn", os.path.join(ex, "digits_cnn.onnx"), (1, 1, 8, 8)),
            ("kws_tc_resnet", os.path.join(ex, "kws_tc_resnet.onnx"), (1, 40, 98)),
            ("mobilenet_v2_like 224", zoo.mobilenet_v2_like(), (1, 3, 224, 224)),
            ("resnet_like 224", zoo.resnet_like(), (1, 3, 224, 224)),
            ("nhwc_cnn 64", zoo.nhwc_cnn(), (1, 64, 64, 3))]


def median_ms(fn, runs: int) -> float:
    for _ in range(max(3, runs // 10)):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def torch_ms(proto, x, runs: int):
    try:
        import torch

        from edgedl.benchmark.torch_from_onnx import OnnxModule
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        net = OnnxModule(proto).cuda().eval()
    except NotImplementedError:
        return None
    xt = torch.from_numpy(x).cuda()

    def run():
        with torch.no_grad():
            net(xt)
        torch.cuda.synchronize()

    return median_ms(run, runs)


def int8_gemm(size: int = 2048, runs: int = 20) -> dict:
    """TOPS of the dp4a GEMM (bit-exact check on a slice) and of torch._int_mm when available."""
    from numba import cuda

    from edgedl.kernels.cuda.dp4a import QGemmDp4a
    from edgedl.quant.requant import MODE_DOUBLE, Requant, requantize_reference

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (size, size)).astype(np.uint8)
    b = rng.integers(-128, 128, (size, size)).astype(np.int8)
    req = Requant.for_scales(np.float32(1), np.full(size, 2e-5, np.float32), np.float32(1), size, 0, -128, 127,
                             MODE_DOUBLE)
    t0 = time.perf_counter()
    g = QGemmDp4a(size, size, size, np.uint8, 128, b, 0, req)
    ad, y = cuda.to_device(a), cuda.device_array((size, size), np.int8)
    g(ad, None, y)
    cuda.synchronize()
    first = (time.perf_counter() - t0) * 1e3
    want = requantize_reference((a[:64].astype(np.int64) - 128) @ b.astype(np.int64).T, req).astype(np.int8)
    exact = bool(np.array_equal(y.copy_to_host()[:64], want))

    def run():
        g(ad, None, y)
        cuda.synchronize()

    ms = median_ms(run, runs)
    row = {"int8_gemm": size, "linked_dp4a": g.linked, "exact": exact, "first_ms": first, "ms": ms,
           "tops": 2 * size ** 3 / ms / 1e9}
    try:
        import torch

        if torch.cuda.is_available():
            at = torch.from_numpy(a.view(np.int8)).cuda()
            bt = torch.from_numpy(b).cuda().t()

            def run_torch():
                torch._int_mm(at, bt)
                torch.cuda.synchronize()

            row["torch_int_mm_tops"] = 2 * size ** 3 / median_ms(run_torch, runs) / 1e9
            row["fraction_of_cublas"] = row["tops"] / row["torch_int_mm_tops"]
    except (ImportError, RuntimeError) as e:
        row["torch_int_mm"] = f"unavailable: {e}"
    return row


def finetune(steps: int = 20, batch: int = 32) -> dict:
    """The digits CNN fine-tuned (every layer, Adam) on the GPU and on the CPU: weights after ``steps`` and the
    median step time of each."""
    ex = os.path.join(os.path.dirname(HERE), "examples")
    x = np.load(os.path.join(ex, "digits_calibration.npz"))["input"][:batch]
    y = np.arange(batch) % 10
    out = {"finetune": "digits_cnn all", "batch": batch, "steps": steps}
    params = {}
    for device in ("cpu", "cuda"):
        tr = edgedl.Trainer(edgedl.load(os.path.join(ex, "digits_cnn.onnx")), trainable="all", seed=0,
                            optimizer=edgedl.train.Adam(lr=1e-3), device=device)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            tr.train_step(x, y)
            times.append(time.perf_counter() - t)
        out[f"{device}_step_ms"] = statistics.median(times[2:]) * 1e3
        params[device] = tr.params
        if device == "cuda":
            out["host_steps"] = sorted({s for t in tr.runner._tapes.values() for s in t.host_steps()})
    out["max_rel_weight_diff"] = max(float(np.abs(params["cuda"][k] - params["cpu"][k]).max()
                                           / max(np.abs(params["cpu"][k]).max(), 1e-30)) for k in params["cpu"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from numba import cuda

    from edgedl.kernels.cuda import device_info, unavailable_reason

    reason = unavailable_reason()
    if reason:
        sys.exit(f"no GPU: {reason}")
    print(json.dumps(device_info()))
    rows = []
    for label, src, shape in models():
        import onnx

        proto = onnx.load(src) if isinstance(src, str) else src
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        cpu = edgedl.load(proto)
        name = cpu.inputs[0].name
        ref = cpu.run({name: x})
        t0 = time.perf_counter()
        gpu = edgedl.load(proto, device="cuda")
        got = gpu.run({name: x})
        first = (time.perf_counter() - t0) * 1e3
        out = next(iter(ref))
        rel = float(np.abs(got[out] - ref[out]).max() / max(np.abs(ref[out]).max(), 1e-30))
        top1 = float(np.mean(got[out].reshape(len(x), -1).argmax(-1) == ref[out].reshape(len(x), -1).argmax(-1)))
        xd = cuda.to_device(x)
        row = {"model": label, "max_rel": rel, "top1": top1, "first_ms": first,
               "host_steps": len(gpu.cuda_plan({name: shape}).host_steps()),
               "gpu_ms": median_ms(lambda: gpu.run({name: x}), args.runs),
               "gpu_device_io_ms": median_ms(lambda: gpu.run({name: xd}, outputs="device"), args.runs),
               "cpu_ms": median_ms(lambda: cpu.run({name: x}), min(args.runs, 50)),
               "torch_cuda_ms": torch_ms(proto, x, args.runs)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for extra in (int8_gemm, finetune):
        row = extra()
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
