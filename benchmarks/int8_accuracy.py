"""int8 accuracy of the bundled digits CNN (tests/data/digits_cnn.onnx, trained in numpy by
tests/data/train_digits_cnn.py) per calibration method, against fp32 and onnxruntime running the same QDQ file.

    python benchmarks/int8_accuracy.py [--calibration 320] [--batch 32]

Prints a markdown table: method, weights, top-1 accuracy (fp32 -> int8), agreement with fp32, and the
agreement of edgedl's int8 with onnxruntime's execution of the exported QDQ model.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

import edgedl

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", type=int, default=320, help="training images used for calibration")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    d = np.load(DATA / "digits_split.npz")
    x, y = d["x_test"], d["y_test"]
    model = edgedl.load(DATA / "digits_cnn.onnx")
    fp32 = model.run({"input": x})["logits"].argmax(1)
    cal = [d["x_train"][i:i + args.batch] for i in range(0, args.calibration, args.batch)]
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    print(f"digits CNN, {len(y)} test images, calibration on {args.calibration} training images; "
          f"fp32 top-1 {100 * np.mean(fp32 == y):.2f}%\n")
    print("| method | weights | int8 top-1 | change vs fp32 | agreement with fp32 | "
          "edgedl vs onnxruntime (same QDQ file) |")
    print("|---|---|---|---|---|---|")
    for method in ("minmax", "percentile", "entropy", "mse"):
        for per_channel in (True, False):
            q = edgedl.quantize(model, cal, method=method, per_channel=per_channel, progress=False)
            pred = q.run({"input": x})["logits"].argmax(1)
            ort_col = "-"
            if ort is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "q.onnx")
                    q.save(path)
                    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                    ort_pred = sess.run(None, {"input": x})[0].argmax(1)
                ort_col = f"{100 * np.mean(ort_pred == pred):.2f}% agree"
            acc = 100 * np.mean(pred == y)
            print(f"| {method} | {'per-channel' if per_channel else 'per-tensor'} | {acc:.2f}% | "
                  f"{acc - 100 * np.mean(fp32 == y):+.2f} pt | {100 * np.mean(pred == fp32):.2f}% | {ort_col} |")


if __name__ == "__main__":
    main()
