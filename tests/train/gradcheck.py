"""Shared by the backward tests: an op's ``backward`` against float64 central finite differences.

``check_backward(op_type, inputs, attrs)`` builds a one-node graph, runs the op's numpy reference forward,
draws a random output gradient R, takes the loss L = sum(R * output) and compares ``Op.backward`` (float32)
with (L(x + h) - L(x - h)) / 2h per element of every float input, evaluated on the reference in float64
(``eps`` 1e-6; a reference that only computes in float32 gets a larger step and looser tolerance). The
backward only sees the forward values the op declares in ``grad_inputs`` / ``grad_outputs``, and it must
give the same bits with one thread and with every thread (no racy accumulation).
"""
from __future__ import annotations

import numba
import numpy as np

from edgedl.ir import Node, TensorType
from edgedl.registry import lookup


def make_op(op_type: str, inputs: list, attrs: dict | None = None, *, consts=(), opset: int = 18, domain: str = "",
            num_outputs: int = 1):
    """(op, input types, output types) of a one-node graph; ``consts``: indices of inputs known at prepare time."""
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    node = Node(op_type, "node", names, [f"out{j}" for j in range(num_outputs)], dict(attrs or {}), domain)
    cls = lookup(op_type, domain)
    assert cls is not None, op_type
    op = cls(node, opset)
    ins_t = [None if x is None else TensorType(tuple(np.shape(x)), np.asarray(x).dtype) for x in inputs]
    cvals = [np.asarray(x) if (i in consts and x is not None) else None for i, x in enumerate(inputs)]
    outs_t = op.infer(ins_t, cvals)
    op.in_types, op.out_types = ins_t, outs_t
    return op, ins_t, outs_t


def _forward64(op, inputs, wrt_set):
    xs = [np.asarray(x, np.float64) if (i in wrt_set) else x for i, x in enumerate(inputs)]
    return [np.asarray(o) for o in op.ref(*xs)]


def _analytic(op, grads, inputs, outs, wrt):
    keep_in = range(len(inputs)) if op.grad_inputs is None else op.grad_inputs
    ins = [inputs[i] if i in keep_in else None for i in range(len(inputs))]
    kept_outs = [outs[j] if j in op.grad_outputs else None for j in range(len(outs))]
    needs = [i in wrt for i in range(len(inputs))]
    return op.backward([None if g is None else g.copy() for g in grads], ins, kept_outs, needs)


def check_backward(op_type: str, inputs: list, attrs: dict | None = None, *, wrt=None, consts=(), opset: int = 18,
                   domain: str = "", num_outputs: int = 1, rtol: float = 1e-4, atol: float = 1e-5, seed: int = 0,
                   eps: float | None = None, grads=None):
    """Assert that ``backward`` matches central finite differences; returns the analytic gradients.

    ``inputs``: float32 arrays (and int64 ones for shapes / indices, listed in ``consts`` when the op needs
    them at prepare time); ``wrt``: the input indices to check (default: every float32 input); ``grads``:
    output gradients (default: standard normal; None entries: that output takes no gradient)."""
    inputs = [None if x is None else np.asarray(x) for x in inputs]
    if wrt is None:
        wrt = [i for i, x in enumerate(inputs) if x is not None and x.dtype == np.float32]
    wrt_set = set(wrt)
    op, _, outs_t = make_op(op_type, inputs, attrs, consts=consts, opset=opset, domain=domain,
                            num_outputs=num_outputs)
    outs = [np.asarray(o, np.float32) for o in op.ref(*inputs)]
    rng = np.random.default_rng(seed)
    if grads is None:
        grads = [rng.standard_normal(t.shape).astype(np.float32) for t in outs_t]
    grads = [None if g is None else np.asarray(g, np.float32) for g in grads]  # None: no gradient

    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _analytic(op, grads, inputs, outs, wrt)
    finally:
        numba.set_num_threads(threads)
    got = _analytic(op, grads, inputs, outs, wrt)
    for i in wrt:
        assert got[i] is not None, f"no gradient for input {i}"
        assert got[i].shape == inputs[i].shape, f"input {i}: gradient shape {got[i].shape} != {inputs[i].shape}"
        np.testing.assert_array_equal(got[i], one[i], err_msg=f"input {i}: 1 thread and {threads} threads differ")

    precise = _forward64(op, inputs, wrt_set)[0].dtype == np.float64
    h = eps if eps is not None else (1e-6 if precise else 1e-2)
    if not precise:
        rtol, atol = max(rtol, 2e-2), max(atol, 2e-3)
    g64 = [None if g is None else g.astype(np.float64) for g in grads]

    def loss(xs):
        return sum(float(np.sum(g * np.asarray(o, np.float64))) for g, o in zip(g64, _forward64(op, xs, wrt_set))
                   if g is not None)

    for i in wrt:
        x = inputs[i].astype(np.float64)
        num = np.zeros(x.shape)
        flat = x.reshape(-1)
        for k in range(flat.size):
            saved = flat[k]
            flat[k] = saved + h
            xs = list(inputs)
            xs[i] = x
            up = loss(xs)
            flat[k] = saved - h
            down = loss(xs)
            flat[k] = saved
            num.reshape(-1)[k] = (up - down) / (2 * h)
        scale = max(1.0, float(np.abs(num).max()))
        np.testing.assert_allclose(got[i].astype(np.float64), num, rtol=rtol, atol=atol * scale,
                                   err_msg=f"{op_type} input {i}")
    return got
