"""Loss operators: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (opset 12, 13, 22), with backward.

Scores / log-probabilities ``x`` are (N, C) or (N, C, d1, ..., dk), labels ``t`` (N) or (N, d1, ..., dk) in
[0, C) (a label equal to ``ignore_index`` is skipped; any other label outside [0, C) is an error at run
time), ``weight`` an optional (C,) class weight. Per element ``e = (n, d...)``::

    w_e = weight[t_e] (1 without weights), 0 where t_e == ignore_index
    NLL:  l_e = -w_e * x[n, t_e, d...]
    SCE:  logp = log_softmax(x, axis=1);  l_e = -w_e * logp[n, t_e, d...]     (output 2: logp)

reduction ``none`` gives l (the labels' shape), ``sum`` its sum, ``mean`` ``sum(l) / sum(w)`` (0 / 0 = NaN
when every element is ignored). Arithmetic in float64, results in the input dtype.

Backward (w.r.t. the scores, and the class weights): with ``c_e`` the loss gradient reaching element e
(``g_e`` for none, ``g`` for sum, ``g / sum(w)`` for mean; 0 for an ignored element, even when every element
is ignored) and ``u_e = l_e / w_e`` the unweighted term::

    NLL:  dx[n, t_e, d...] = -w_e c_e                       (0 elsewhere)
    SCE:  dx = (softmax(x) - onehot(t)) * w_e c_e  +  G - softmax(x) * sum_c G    (G: gradient of logp)
    dweight[c] = sum over the kept e with t_e = c of  c_e u_e        (none, sum)
                                                      c_e (u_e - loss)  (mean)

:class:`LossTerms` (the weighted NLL, its reductions and gradients), :func:`softmax_cross_entropy` and
:func:`softmax_cross_entropy_grad` hold the one implementation of these formulas; they also take PyTorch's
label smoothing (the target ``(1 - eps) onehot + eps / C``) for the training loss
``edgedl.train.losses.SoftmaxCrossEntropy``.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..registry import Op, register

_FLOATS = ("float16", "float32", "float64")
_REDUCTIONS = ("none", "sum", "mean")


# --- the math (float64), shared with edgedl.train.losses ---------------------------------------------------
def check_labels(labels: np.ndarray, classes: int, ignore_index: int | None, what: str = "labels") -> np.ndarray:
    """Labels as int64; EdgeDLError naming the first one outside [0, classes) that is not ``ignore_index``."""
    t = np.asarray(labels).astype(np.int64, copy=False)
    bad = (t < 0) | (t >= classes)
    if ignore_index is not None:
        bad &= t != ignore_index
    if bad.any():
        pos = tuple(int(p) for p in np.argwhere(bad)[0])
        raise EdgeDLError(f"{what}: value {int(t[pos])} at position {pos} is not a class in [0, {classes})"
                          + (f" nor the ignore_index {ignore_index}" if ignore_index is not None else ""))
    return t


def class_weights(t: np.ndarray, weight, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(w_e float64 of t's shape, the labels with ignored ones set to class 0) for labels checked by
    :func:`check_labels`."""
    keep = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    tc = np.where(keep, t, 0)
    w = keep.astype(np.float64)
    if weight is not None:
        w = w * np.asarray(weight, np.float64)[tc]
    return w, tc


def reduce_loss(per: np.ndarray, w: np.ndarray, reduction: str) -> np.ndarray:
    """The reduced loss (float64): per-element, summed, or summed over the summed weights."""
    if reduction == "none":
        return per
    if reduction == "sum":
        return np.asarray(per.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(per.sum() / w.sum())


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log_softmax over axis 1, float64."""
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class LossTerms:
    """One evaluation of the negative log-likelihood: ``loss`` (reduced, float64), ``unit`` (the unweighted
    term of each element, -logp[target] or its label-smoothed form), ``w`` (each element's weight, 0 where
    ignored) and ``tc`` (the labels, ignored ones set to class 0)."""

    def __init__(self, logp: np.ndarray, t: np.ndarray, weight=None, ignore_index: int | None = None,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        self.reduction, self.smoothing, self.classes = reduction, float(label_smoothing), logp.shape[1]
        self.w, self.tc = class_weights(t, weight, ignore_index)
        self.keep = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        lp = np.asarray(logp, np.float64)
        picked = np.take_along_axis(lp, self.tc[:, None], axis=1)[:, 0]
        if self.smoothing:
            picked = (1.0 - self.smoothing) * picked + self.smoothing / self.classes * lp.sum(axis=1)
        self.unit = -picked
        self.loss = reduce_loss(self.w * self.unit, self.w, reduction)

    def coef(self, g) -> np.ndarray:
        """The loss gradient reaching each element times its weight (w_e c_e), for the upstream gradient g."""
        g = np.asarray(g, np.float64)
        if self.reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                # an ignored element (w = 0) takes no gradient, even when every element is ignored (0 / 0)
                return np.where(self.w != 0, self.w * (g / self.w.sum()), 0.0)
        return self.w * g  # none: g has the elements' shape; sum: a scalar

    def target(self) -> np.ndarray:
        """d unit / d logp, negated: the one-hot labels (label-smoothed), float64 (N, C, d...)."""
        q = np.zeros((self.tc.shape[0], self.classes) + self.tc.shape[1:])
        np.put_along_axis(q, self.tc[:, None], 1.0, axis=1)
        if self.smoothing:
            q = (1.0 - self.smoothing) * q + self.smoothing / self.classes
        return q

    def grad_logp(self, g) -> np.ndarray:
        """d loss / d logp (float64)."""
        return -self.target() * self.coef(g)[:, None]

    def grad_weight(self, g) -> np.ndarray:
        """d loss / d weight (float64, (C,)): none / sum: sum of g_e unit_e per class; mean:
        (g / sum w) sum of (unit_e - loss) per class, over the elements not ignored."""
        g = np.asarray(g, np.float64)
        if self.reduction == "mean":
            contrib = (g / self.w.sum()) * (self.unit - self.loss)
        else:
            contrib = g * self.unit
        contrib = np.broadcast_to(contrib, self.tc.shape)
        return np.bincount(self.tc[self.keep], weights=contrib[self.keep], minlength=self.classes)


def softmax_cross_entropy(scores: np.ndarray, t: np.ndarray, weight=None, ignore_index: int | None = None,
                          reduction: str = "mean", label_smoothing: float = 0.0) -> tuple[LossTerms, np.ndarray]:
    """(terms, log_prob float64): the softmax cross-entropy of scores (N, C, d...) against checked labels t."""
    logp = log_softmax(scores)
    return LossTerms(logp, t, weight, ignore_index, reduction, label_smoothing), logp


def softmax_cross_entropy_grad(terms: LossTerms, logp: np.ndarray, g, g_logp=None) -> np.ndarray:
    """d loss / d scores (float64): (softmax - target) w_e c_e, plus ``g_logp - softmax sum_c g_logp`` when
    the log_prob output has a gradient."""
    p = np.exp(logp)
    d = (p - terms.target()) * terms.coef(g)[:, None]
    if g_logp is not None:
        gl = np.asarray(g_logp, np.float64)
        d = d + gl - p * gl.sum(axis=1, keepdims=True)
    return d


# --- the operators ----------------------------------------------------------------------------------------
class _LossOp(Op):
    num_inputs = (2, 3)
    grad_inputs = (0, 1, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 12:
            raise self.unsupported(f"{self.op_type} needs opset 12 or later, the model has opset {opset}")
        red = self.attr("reduction", "mean")
        self.reduction = red.decode() if isinstance(red, bytes) else str(red)
        if self.reduction not in _REDUCTIONS:
            raise self.error(f"reduction must be one of {', '.join(_REDUCTIONS)}, got '{self.reduction}'")
        ii = self.attr("ignore_index")
        self.ignore_index = None if ii is None else int(ii)
        n_out = len(node.outputs)
        while n_out > 1 and not node.outputs[n_out - 1]:
            n_out -= 1
        self.n_out = n_out
        if n_out > self.max_outputs:
            raise self.error(f"has {n_out} outputs; {self.op_type} has at most {self.max_outputs}")

    def infer(self, ins, consts):
        x, t = ins[0], ins[1]
        w = ins[2] if len(ins) > 2 else None
        if np.dtype(x.dtype).name not in _FLOATS:
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported ({', '.join(_FLOATS)})")
        if np.dtype(t.dtype).name not in ("int32", "int64"):
            raise self.error(f"labels must be int32 or int64, got {np.dtype(t.dtype).name}")
        if len(x.shape) < 2:
            raise self.error(f"input must be (N, C) or (N, C, d1, ...), got shape {tuple(x.shape)}")
        want = (x.shape[0],) + tuple(x.shape[2:])
        if tuple(t.shape) != want:
            raise self.error(f"labels have shape {tuple(t.shape)}, expected {want} for an input of shape "
                             f"{tuple(x.shape)}")
        if w is not None:
            if tuple(w.shape) != (x.shape[1],):
                raise self.error(f"weights have shape {tuple(w.shape)}, expected ({x.shape[1]},)")
            if np.dtype(w.dtype) != np.dtype(x.dtype):
                raise self.error(f"weights dtype {np.dtype(w.dtype).name} differs from the input's "
                                 f"{np.dtype(x.dtype).name}")
        loss_shape = want if self.reduction == "none" else ()
        outs = [TensorType(loss_shape, x.dtype), TensorType(tuple(x.shape), x.dtype)]
        return outs[:self.n_out]

    def _labels(self, x, t):
        return check_labels(t, x.shape[1], self.ignore_index, f"{self.node.describe()}: labels")


@register
class NegativeLogLikelihoodLoss(_LossOp):
    op_type = "NegativeLogLikelihoodLoss"
    max_outputs = 1

    def ref(self, x, t, weight=None):
        terms = LossTerms(x, self._labels(x, t), weight, self.ignore_index, self.reduction)
        return [np.asarray(terms.loss).astype(x.dtype)]

    def backward(self, grads, ins, outs, needs):
        x, t = ins[0], ins[1]
        weight = ins[2] if len(ins) > 2 else None
        g = grads[0] if grads[0] is not None else np.zeros(self.out_types[0].shape, np.float32)
        terms = LossTerms(x, self._labels(x, t), weight, self.ignore_index, self.reduction)
        res = [None] * len(ins)
        if needs[0]:
            res[0] = terms.grad_logp(g).astype(np.float32)
        if len(ins) > 2 and needs[2]:
            res[2] = terms.grad_weight(g).astype(np.float32)
        return res


@register
class SoftmaxCrossEntropyLoss(_LossOp):
    op_type = "SoftmaxCrossEntropyLoss"
    max_outputs = 2

    def ref(self, x, t, weight=None):
        terms, logp = softmax_cross_entropy(x, self._labels(x, t), weight, self.ignore_index, self.reduction)
        return [np.asarray(terms.loss).astype(x.dtype), logp.astype(x.dtype)][:self.n_out]

    def backward(self, grads, ins, outs, needs):
        x, t = ins[0], ins[1]
        weight = ins[2] if len(ins) > 2 else None
        g = grads[0] if grads[0] is not None else np.zeros(self.out_types[0].shape, np.float32)
        g_logp = grads[1] if len(grads) > 1 else None
        terms, logp = softmax_cross_entropy(x, self._labels(x, t), weight, self.ignore_index, self.reduction)
        res = [None] * len(ins)
        if needs[0]:
            res[0] = softmax_cross_entropy_grad(terms, logp, g, g_logp).astype(np.float32)
        if len(ins) > 2 and needs[2]:
            res[2] = terms.grad_weight(g).astype(np.float32)
        return res
