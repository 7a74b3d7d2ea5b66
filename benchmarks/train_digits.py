"""Train the zoo's digits CNN from random initialization on scikit-learn's digits and print the test accuracy,
seconds per epoch and training memory (the README's training numbers).

    pip install ".[test]" && python benchmarks/train_digits.py [--epochs 10] [--threads 1]
"""
import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import edgedl
from edgedl import zoo
from edgedl.train import Adam, cosine_lr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--trainable", default="all")
    args = ap.parse_args()
    if args.threads:
        edgedl.set_num_threads(args.threads)
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
    warm = edgedl.Trainer(edgedl.load(zoo.digits_cnn()))
    warm.fit(xtr[:64], ytr[:64], epochs=1, batch_size=args.batch_size)  # compile outside the timing
    steps = args.epochs * -(-len(xtr) // args.batch_size)
    model = edgedl.load(zoo.digits_cnn())
    trainer = edgedl.Trainer(model, optimizer=Adam(lr=1e-2, schedule=cosine_lr(steps)), trainable=args.trainable)
    t0 = time.perf_counter()
    hist = trainer.fit(xtr, ytr, epochs=args.epochs, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    acc = float(np.mean(np.argmax(model.run({"x": xte})["logits"], 1) == yte))
    print(f"test accuracy {acc:.2%} after {args.epochs} epochs ({len(xtr)} training images, batch "
          f"{args.batch_size}); {seconds / args.epochs:.3f} s per epoch; training peak "
          f"{trainer.peak_bytes / 1e3:.0f} kB, saved activations {trainer.saved_bytes / 1e3:.0f} kB; "
          f"final loss {hist.loss[-1]:.4f}")


if __name__ == "__main__":
    main()
