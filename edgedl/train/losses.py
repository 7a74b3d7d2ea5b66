"""Losses: each returns the mean loss over the batch and its gradient with respect to the model output.

* :class:`SoftmaxCrossEntropy` (logits (N, C) and int class labels (N,)): label smoothing ``eps`` spreads
  ``eps`` uniformly over the classes (target ``(1 - eps) * onehot + eps / C``, as PyTorch); ``class_weights``
  weight each sample's loss by its label's weight and divide by the sum of those weights (PyTorch's mean).
* :class:`MSE` (any shape, float targets of the output's shape).
* :class:`BCEWithLogits` (any shape, targets in [0, 1]): ``max(z, 0) - z*y + log(1 + exp(-|z|))``, stable for
  any logit; ``pos_weight`` optional.

Arithmetic in float64; the gradient is float32. Bad labels (wrong shape, dtype, out of range) raise
:class:`~edgedl.errors.EdgeDLError`.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError

__all__ = ["Loss", "SoftmaxCrossEntropy", "MSE", "BCEWithLogits", "make_loss"]


class Loss:
    """``loss(output, target) -> (mean loss: float, d loss / d output: float32 array)``."""

    name = "loss"

    def check(self, output: np.ndarray, target: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, output: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        raise NotImplementedError


class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy of logits (N, C) against int labels (N,) in 0..C-1."""

    name = "cross_entropy"

    def __init__(self, label_smoothing: float = 0.0, class_weights=None):
        if not 0.0 <= label_smoothing < 1.0:
            raise EdgeDLError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.eps = float(label_smoothing)
        self.weights = None if class_weights is None else np.asarray(class_weights, np.float64).reshape(-1)
        if self.weights is not None and (np.any(self.weights < 0) or not np.all(np.isfinite(self.weights))):
            raise EdgeDLError("class_weights must be finite and >= 0")

    def check(self, output, target):
        if output.ndim != 2:
            raise EdgeDLError(f"cross-entropy needs logits of shape (N, classes), got {output.shape}")
        t = np.asarray(target)
        if t.dtype.kind not in "iu":
            raise EdgeDLError(f"cross-entropy labels must be integers, got {t.dtype}")
        if t.shape != (output.shape[0],):
            raise EdgeDLError(f"cross-entropy labels must have shape ({output.shape[0]},), got {t.shape}")
        c = output.shape[1]
        if t.size and (t.min() < 0 or t.max() >= c):
            raise EdgeDLError(f"labels must be in 0..{c - 1}, got values from {t.min()} to {t.max()}")
        if self.weights is not None and self.weights.size != c:
            raise EdgeDLError(f"class_weights has {self.weights.size} entries for {c} classes")
        return t.astype(np.int64)

    def __call__(self, output, target):
        from ..ops.loss_ops import softmax_cross_entropy, softmax_cross_entropy_grad

        t = self.check(output, target)
        # one implementation of the formula: the SoftmaxCrossEntropyLoss operator's
        terms, logp = softmax_cross_entropy(output, t, self.weights, None, "mean", self.eps)
        if terms.w.sum() <= 0:
            raise EdgeDLError("the batch's class weights sum to 0")
        return float(terms.loss), softmax_cross_entropy_grad(terms, logp, 1.0).astype(np.float32)


class MSE(Loss):
    """Mean squared error over every element."""

    name = "mse"

    def check(self, output, target):
        t = np.asarray(target)
        if t.shape != output.shape:
            raise EdgeDLError(f"MSE targets must have the output's shape {output.shape}, got {t.shape}")
        if t.dtype.kind != "f":
            raise EdgeDLError(f"MSE targets must be floats, got {t.dtype}")
        return t.astype(np.float64)

    def __call__(self, output, target):
        t = self.check(output, target)
        d = output.astype(np.float64) - t
        return float(np.mean(d * d)), (2.0 * d / max(d.size, 1)).astype(np.float32)


class BCEWithLogits(Loss):
    """Binary cross-entropy of logits against targets in [0, 1] (mean over elements)."""

    name = "bce"

    def __init__(self, pos_weight=None):
        self.pos_weight = None if pos_weight is None else np.asarray(pos_weight, np.float64)

    def check(self, output, target):
        t = np.asarray(target)
        if t.shape != output.shape:
            raise EdgeDLError(f"BCE targets must have the output's shape {output.shape}, got {t.shape}")
        t = t.astype(np.float64)
        if t.size and (t.min() < 0 or t.max() > 1):
            raise EdgeDLError("BCE targets must be in [0, 1]")
        return t

    def __call__(self, output, target):
        y = self.check(output, target)
        z = output.astype(np.float64)
        softplus_neg = np.log1p(np.exp(-np.abs(z))) + np.maximum(-z, 0)  # log(1 + exp(-z))
        pw = 1.0 if self.pos_weight is None else self.pos_weight
        per = pw * y * softplus_neg + (1 - y) * (z + softplus_neg)
        e = np.exp(-np.abs(z))  # never overflows
        sig = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        grad = (pw * y * (sig - 1) + (1 - y) * sig) / max(z.size, 1)
        return float(per.mean()), grad.astype(np.float32)


def make_loss(loss) -> Loss:
    """A Loss from an instance or a name ("cross_entropy", "mse", "bce")."""
    if isinstance(loss, Loss):
        return loss
    table = {"cross_entropy": SoftmaxCrossEntropy, "crossentropy": SoftmaxCrossEntropy, "mse": MSE,
             "bce": BCEWithLogits}
    if loss not in table:
        raise EdgeDLError(f"unknown loss {loss!r} (choose from {sorted(table)} or pass a Loss)")
    return table[loss]()
