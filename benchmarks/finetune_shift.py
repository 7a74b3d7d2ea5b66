"""Domain-shift fine-tuning on scikit-learn's digits: pre-train the zoo's digits CNN on the digits, then
fine-tune it on a shifted domain (inverted or rotated digits, a few hundred samples) under each trainable
policy. Prints, per policy: test accuracy on the shifted domain before -> after, training peak memory, saved
activations, and time (the README's table).

    pip install ".[test]" && python benchmarks/finetune_shift.py [--shift invert|rotate] [--samples 300]
"""
import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import edgedl
from edgedl import zoo
from edgedl.train import Adam, cosine_lr

#: policy -> learning-rate factor: biases alone move the network little per step, so they get a 30x rate
POLICIES = {"all": 1.0, "last:2": 1.0, "last:1": 1.0, "bias": 30.0}


def shifted(x: np.ndarray, shift: str) -> np.ndarray:
    if shift == "invert":
        return np.ascontiguousarray(1.0 - x)
    if shift == "rotate":
        return np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))
    raise SystemExit(f"unknown shift {shift!r}")


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.run({"x": x})["logits"], 1) == y))


def pretrained(x, y):
    """The digits CNN trained on the original domain (10 epochs, Adam with cosine decay)."""
    model = edgedl.load(zoo.digits_cnn())
    steps = 10 * -(-len(x) // 32)
    edgedl.Trainer(model, optimizer=Adam(lr=1e-2, schedule=cosine_lr(steps))).fit(x, y, epochs=10, batch_size=32)
    return model


def run(shift: str, samples: int, epochs: int, lr: float):
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    base = pretrained(x[:1000], y[:1000])
    source = base.source
    xs_train, ys_train = shifted(x[1000:1000 + samples], shift), y[1000:1000 + samples]
    xs_test, ys_test = shifted(x[1400:], shift), y[1400:]
    rows = []
    for policy, factor in POLICIES.items():
        model = edgedl.load(zoo.digits_cnn())
        model.set_weights({k: v for k, v in source.initializers.items()})
        before = accuracy(model, xs_test, ys_test)
        trainer = edgedl.Trainer(model, trainable=policy, optimizer=Adam(lr=lr * factor), seed=0)
        t0 = time.perf_counter()
        trainer.fit(xs_train, ys_train, epochs=epochs, batch_size=32)
        seconds = time.perf_counter() - t0
        rows.append((policy, lr * factor, before, accuracy(model, xs_test, ys_test), trainer.peak_bytes,
                     trainer.saved_bytes, seconds))
    return accuracy(base, x[1400:], y[1400:]), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shift", default="invert", choices=["invert", "rotate"])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    base_acc, rows = run(args.shift, args.samples, args.epochs, args.lr)
    what = {"invert": "inverted", "rotate": "rotated"}[args.shift]
    print(f"pre-trained on the digits: {base_acc:.1%} test accuracy; fine-tuned on {args.samples} {what} digits, "
          f"{args.epochs} epochs, Adam")
    print("| policy | lr | shifted test accuracy before -> after | training peak | saved activations | time |")
    print("|---|---|---|---|---|---|")
    for policy, lr, before, after, peak, saved, seconds in rows:
        print(f"| {policy} | {lr:g} | {before:.1%} -> {after:.1%} | {peak / 1e3:.0f} kB | {saved / 1e3:.0f} kB | "
              f"{seconds:.2f} s |")


if __name__ == "__main__":
    main()
