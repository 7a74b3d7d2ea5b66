"""Quantization-aware fine-tuning on a shifted domain: pre-train the zoo's digits CNN on the digits, quantize
it to int8 (edgedl.quantize, 512 calibration images), then fine-tune on a few hundred shifted digits (inverted
or rotated) and compare, per policy, the test accuracy on the shifted domain of

* float: fine-tuning the float model;
* float + PTQ: the float fine-tuned model quantized afterwards (calibrated on the shifted training images);
* QAT int8: quantization-aware fine-tuning of the int8 model, exported to QDQ and run on edgedl's int8
  kernels; and its float counterpart (the same trained weights, no quantization);
* float head: the selected layers trained in float behind the frozen int8 backbone.

Each figure is the mean over ``--seeds`` fine-tuning runs (shuffling seeds).

    pip install ".[test]" && python benchmarks/finetune_qat.py [--shift invert|rotate] [--samples 300]
"""
import argparse
import time

import numpy as np
from edgedl.converters.onnx_export import export_graph
from finetune_shift import pretrained, shifted
from sklearn.datasets import load_digits

import edgedl
from edgedl.train import Adam

POLICIES = ("all", "last:2", "last:1")


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model(x), 1) == y))


def run(shift: str, samples: int, epochs: int, lr: float, seeds: int):
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    base_bytes = export_graph(pretrained(x[:1000], y[:1000]).source).SerializeToString()
    calib = [x[i:i + 64] for i in range(0, 512, 64)]
    xs, ys = shifted(x[1000:1000 + samples], shift), y[1000:1000 + samples]
    xt, yt = shifted(x[1400:], shift), y[1400:]
    base = edgedl.load(base_bytes)
    base_int8 = edgedl.quantize(base, calib, progress=False)
    header = {"float": accuracy(base, x[1400:], y[1400:]), "int8": accuracy(base_int8, x[1400:], y[1400:]),
              "before_float": accuracy(base, xt, yt), "before_int8": accuracy(base_int8, xt, yt)}
    rows = []
    for policy in POLICIES:
        acc = {k: [] for k in ("float", "ptq", "qat", "qat_float", "head")}
        secs = {k: [] for k in ("float", "qat", "head")}
        peak = {}
        for seed in range(seeds):
            m = edgedl.load(base_bytes)
            t0 = time.perf_counter()
            edgedl.Trainer(m, trainable=policy, optimizer=Adam(lr=lr), seed=seed).fit(xs, ys, epochs=epochs)
            secs["float"].append(time.perf_counter() - t0)
            acc["float"].append(accuracy(m, xt, yt))
            acc["ptq"].append(accuracy(edgedl.quantize(m, [xs[i:i + 64] for i in range(0, len(xs), 64)],
                                                       progress=False), xt, yt))
            q = edgedl.quantize(edgedl.load(base_bytes), calib, progress=False)
            tr = edgedl.Trainer(q, trainable=policy, optimizer=Adam(lr=lr), seed=seed)
            t0 = time.perf_counter()
            tr.fit(xs, ys, epochs=epochs)
            secs["qat"].append(time.perf_counter() - t0)
            peak["qat"] = tr.peak_bytes
            acc["qat"].append(accuracy(q, xt, yt))
            counterpart = edgedl.load(base_bytes)
            counterpart.set_source(tr.qat.float_after(tr.qat.weights + tr.qat.biases).export(tr.params))
            acc["qat_float"].append(accuracy(counterpart, xt, yt))
            h = edgedl.quantize(edgedl.load(base_bytes), calib, progress=False)
            th = edgedl.Trainer(h, trainable=policy, optimizer=Adam(lr=lr), seed=seed, float_head=True)
            t0 = time.perf_counter()
            th.fit(xs, ys, epochs=epochs)
            secs["head"].append(time.perf_counter() - t0)
            peak["head"] = th.peak_bytes
            acc["head"].append(accuracy(h, xt, yt))
        rows.append((policy, {k: float(np.mean(v)) for k, v in acc.items()},
                     {k: float(np.median(v)) for k, v in secs.items()}, peak))
    return header, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shift", default="invert", choices=["invert", "rotate"])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    header, rows = run(args.shift, args.samples, args.epochs, args.lr, args.seeds)
    what = {"invert": "inverted", "rotate": "rotated"}[args.shift]
    print(f"pre-trained: float {header['float']:.1%}, int8 {header['int8']:.1%} on the digits; on {what} digits "
          f"before fine-tuning: float {header['before_float']:.1%}, int8 {header['before_int8']:.1%}")
    print(f"fine-tuned on {args.samples} {what} digits, {args.epochs} epochs, Adam lr {args.lr:g}, mean of "
          f"{args.seeds} seeds")
    print("| policy | float | float + PTQ int8 | QAT int8 (its float counterpart) | float head on int8 backbone | "
          "time float / QAT / head | peak QAT / head |")
    print("|---|---|---|---|---|---|---|")
    for policy, a, s, peak in rows:
        print(f"| {policy} | {a['float']:.1%} | {a['ptq']:.1%} | {a['qat']:.1%} ({a['qat_float']:.1%}) | "
              f"{a['head']:.1%} | {s['float']:.2f} / {s['qat']:.2f} / {s['head']:.2f} s | "
              f"{peak['qat'] / 1e3:.0f} / {peak['head'] / 1e3:.0f} kB |")


if __name__ == "__main__":
    main()
