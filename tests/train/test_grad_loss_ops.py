"""Backward of NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (w.r.t. the scores and the class weights).

Every reduction, with and without class weights, ignore_index (inside and outside the class range), N-d
inputs and the log_prob output's gradient, against float64 central differences
(:func:`gradcheck.check_backward`); and the op's gradient against the training loss
(:class:`edgedl.train.losses.SoftmaxCrossEntropy`), which shares its formula.
"""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_backward, make_op

CASES = [  # shape, ignore_index, reduction, weighted
    ((4, 3), None, "mean", False), ((4, 3), None, "sum", True), ((4, 3), None, "none", True),
    ((3, 4, 2), 1, "mean", True), ((3, 4, 2), -1, "none", False), ((2, 3, 2, 2), 2, "sum", True),
    ((2, 3, 1, 2, 2), 9, "mean", True), ((5, 3), 0, "mean", False),
]


def _inputs(shape, ii, weighted, seed):
    rng = np.random.default_rng(seed)
    n, c = shape[:2]
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, c, (n,) + shape[2:]).astype(np.int64)
    if ii is not None:
        t.reshape(-1)[1::3] = ii
    w = (rng.random(c) + 0.3).astype(np.float32) if weighted else None
    return [x, t] + ([w] if weighted else [])


def _attrs(ii, reduction):
    return {"reduction": reduction} | ({} if ii is None else {"ignore_index": ii})


@pytest.mark.parametrize("op_type", ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"])
@pytest.mark.parametrize("shape,ii,reduction,weighted", CASES)
def test_loss_backward_fd(op_type, shape, ii, reduction, weighted):
    inputs = _inputs(shape, ii, weighted, len(shape) + (ii or 0))
    got = check_backward(op_type, inputs, _attrs(ii, reduction), opset=13)
    if ii is not None:  # an ignored element takes no gradient
        t = inputs[1]
        ignored = np.moveaxis(np.broadcast_to((t == ii)[:, None], shape), 1, -1)
        assert not np.moveaxis(got[0], 1, -1)[ignored].any()


@pytest.mark.parametrize("shape,ii,reduction,weighted", CASES[:6])
def test_sce_log_prob_gradient_fd(shape, ii, reduction, weighted):
    inputs = _inputs(shape, ii, weighted, 7)
    check_backward("SoftmaxCrossEntropyLoss", inputs, _attrs(ii, reduction), opset=13, num_outputs=2)
    # only the log_prob output carries a gradient
    rng = np.random.default_rng(1)
    loss_shape = (shape[0],) + shape[2:] if reduction == "none" else ()
    check_backward("SoftmaxCrossEntropyLoss", inputs, _attrs(ii, reduction), opset=13, num_outputs=2,
                   grads=[np.zeros(loss_shape, np.float32), rng.standard_normal(shape).astype(np.float32)])


def test_backward_reads_scores_labels_weights_and_matches_training_loss():
    from edgedl.train.losses import SoftmaxCrossEntropy

    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.integers(0, 5, 6)
    w = (rng.random(5) + 0.5).astype(np.float32)
    op, _, _ = make_op("SoftmaxCrossEntropyLoss", [z, t, w], {}, opset=13)
    assert op.has_backward() and op.grad_inputs == (0, 1, 2) and op.grad_outputs == ()
    gz, gl, gw = op.backward([np.float32(1.0)], [z, t, w], [None], [True, False, False])
    assert gl is None and gw is None and gz.dtype == np.float32
    _, want = SoftmaxCrossEntropy(class_weights=w)(z, t)
    np.testing.assert_allclose(gz, want, rtol=1e-6, atol=1e-7)
    # the NLL of log-probabilities: the gradient sits on the labels' entries only
    op, _, _ = make_op("NegativeLogLikelihoodLoss", [z, t], {"reduction": "sum"}, opset=13)
    gz, _ = op.backward([np.float32(2.0)], [z, t], [None], [True, False])
    want = np.zeros_like(z)
    want[np.arange(6), t] = -2.0
    np.testing.assert_array_equal(gz, want)
    # every element ignored: the mean loss is NaN (0 / 0) but no element takes a gradient
    op, _, _ = make_op("SoftmaxCrossEntropyLoss", [z, np.full(6, -1)], {"ignore_index": -1}, opset=13)
    assert np.isnan(op.ref(z, np.full(6, -1))[0])
    gz, _ = op.backward([np.float32(1.0)], [z, np.full(6, -1)], [None], [True, False])
    np.testing.assert_array_equal(gz, np.zeros_like(z))
