"""Training kernels on CUDA besides the backward of the ops: losses (their per-sample terms and the gradient with
respect to the model output) and optimizer updates (SGD, Adam, AdamW), element-wise on flat float32 arrays.

The formulas are those of :mod:`edgedl.train.losses` and :mod:`edgedl.train.optim` (PyTorch's conventions),
in float32 on the device: a loss's terms are summed on the host in float64 (one small copy per step, which
the trainer needs anyway to report the loss), the optimizer reads the learning rate and bias corrections as
scalars computed on the host.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from .common import blocks, flat
from .grad import REDUCE_MAX, block_sum, reduce_threads
from .softmax import row_max_and_sum


# --- losses -----------------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _softmax_cross_entropy(z, labels, terms, grad, rows, c, eps, coef):
    # z, grad: [rows, c]; labels: [rows] int64; terms: [rows] the per-sample loss
    r = cuda.grid(1)
    if r >= rows:
        return
    base = r * c
    top, acc = row_max_and_sum(z, base, c)
    lse = top + math.log(acc)
    y = labels[r]
    smooth = eps / float32(c)
    loss = float32(0)
    for k in range(c):
        logp = float32(z[base + k]) - lse
        t = smooth + (float32(1) - eps if k == y else float32(0))
        loss -= t * logp
        grad[base + k] = (math.exp(logp) - t) * coef
    terms[r] = loss


@cuda.jit(cache=True)
def _mse(z, target, terms, grad, n, coef):
    i = cuda.grid(1)
    if i < n:
        d = float32(z[i]) - float32(target[i])
        terms[i] = d * d
        grad[i] = float32(2) * d * coef


@cuda.jit(cache=True)
def _bce_with_logits(z, target, terms, grad, n, pos_weight, coef):
    i = cuda.grid(1)
    if i >= n:
        return
    v = float32(z[i])
    y = float32(target[i])
    e = math.exp(-abs(v))
    softplus_neg = math.log1p(e) + max(-v, float32(0))  # log(1 + exp(-v))
    terms[i] = pos_weight * y * softplus_neg + (float32(1) - y) * (v + softplus_neg)
    sig = float32(1) / (float32(1) + e) if v >= float32(0) else e / (float32(1) + e)
    grad[i] = (pos_weight * y * (sig - float32(1)) + (float32(1) - y) * sig) * coef


def softmax_cross_entropy(z, labels, terms, grad, label_smoothing: float = 0.0, stream=0) -> None:
    """Per-sample terms and the gradient of the mean softmax cross-entropy of logits z (N, C) against int64
    labels (N,) (checked by the caller), with label smoothing."""
    rows, c = int(z.shape[0]), int(z.shape[1])
    if rows:
        _softmax_cross_entropy[blocks(rows), 128, stream](flat(z), labels, terms, flat(grad), rows, c,
                                                          np.float32(label_smoothing), np.float32(1.0 / rows))


def mse(z, target, terms, grad, stream=0) -> None:
    n = int(z.size)
    if n:
        _mse[blocks(n), 128, stream](flat(z), flat(target), terms, flat(grad), n, np.float32(1.0 / n))


def bce_with_logits(z, target, terms, grad, pos_weight: float = 1.0, stream=0) -> None:
    n = int(z.size)
    if n:
        _bce_with_logits[blocks(n), 128, stream](flat(z), flat(target), terms, flat(grad), n,
                                                 np.float32(pos_weight), np.float32(1.0 / n))


# --- optimizers -------------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _sgd(p, g, v, n, lr, wd, momentum, nesterov, first):
    i = cuda.grid(1)
    if i >= n:
        return
    gi = g[i]
    if wd != float32(0):
        gi = gi + wd * p[i]
    if momentum != float32(0):
        if first:
            v[i] = gi
        else:
            v[i] = v[i] * momentum + gi
        gi = gi + momentum * v[i] if nesterov else v[i]
    p[i] -= lr * gi


@cuda.jit(cache=True)
def _adam(p, g, m, v, n, lr, wd, decoupled, b1, b2, c1, c2, eps):
    i = cuda.grid(1)
    if i >= n:
        return
    gi = g[i]
    if wd != float32(0) and not decoupled:
        gi = gi + wd * p[i]
    if wd != float32(0) and decoupled:
        p[i] -= lr * wd * p[i]
    m[i] = m[i] * b1 + (float32(1) - b1) * gi
    v[i] = v[i] * b2 + (float32(1) - b2) * gi * gi
    p[i] -= lr * (m[i] / c1) / (math.sqrt(v[i]) / c2 + eps)


def sgd_step(p, g, v, lr, weight_decay, momentum, nesterov, first, stream=0) -> None:
    """One SGD update of p in place (v: the momentum buffer, unused without momentum)."""
    n = int(p.size)
    if n:
        _sgd[blocks(n), 128, stream](flat(p), flat(g), flat(v if v is not None else p), n, np.float32(lr),
                                     np.float32(weight_decay), np.float32(momentum), bool(nesterov), bool(first))


def adam_step(p, g, m, v, lr, weight_decay, decoupled, b1, b2, step, eps, stream=0) -> None:
    """One Adam / AdamW update of p in place at 1-based ``step`` (bias corrections computed here)."""
    n = int(p.size)
    if n:
        c1 = np.float32(1 - b1 ** step)
        c2 = np.float32(math.sqrt(1 - b2 ** step))
        _adam[blocks(n), 128, stream](flat(p), flat(g), flat(m), flat(v), n, np.float32(lr), np.float32(weight_decay),
                                      bool(decoupled), np.float32(b1), np.float32(b2), c1, c2, np.float32(eps))


# --- gradient clipping ------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _sum_squares(a, partial, n):
    sh = cuda.shared.array(REDUCE_MAX, float32)
    acc = float32(0)
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for i in range(start, n, cuda.gridDim.x * cuda.blockDim.x):
        acc += a[i] * a[i]
    total = block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        partial[cuda.blockIdx.x] = total


@cuda.jit(cache=True)
def _scale(a, n, s):
    i = cuda.grid(1)
    if i < n:
        a[i] *= s


def sum_squares(a, stream=0) -> float:
    """sum(a * a) of a float32 device array (per-block partial sums on the device, their float64 sum here)."""
    n = int(a.size)
    if not n:
        return 0.0
    threads = reduce_threads()
    nblocks = min(64, max(1, (n + threads - 1) // threads))
    partial = cuda.device_array(nblocks, np.float32, stream=stream)
    _sum_squares[nblocks, threads, stream](flat(a), partial, n)
    return float(partial.copy_to_host(stream=stream).astype(np.float64).sum())


def scale(a, s, stream=0) -> None:
    n = int(a.size)
    if n:
        _scale[blocks(n), 128, stream](flat(a), n, np.float32(s))
