"""Backward of SwiGLU (opset 28): finite differences on small shapes (gradcheck.check_backward, which also checks
1 thread against N threads), one gradient at a time, no output gradient, the float64 path, and the Numba kernel
above PARALLEL_MIN_WORK against a numpy formula (serial against parallel, bit for bit)."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from gradcheck import check_backward, make_op

from edgedl.kernels.cpu import swiglu as K
from edgedl.kernels.cpu.config import PARALLEL_MIN_WORK


@pytest.mark.parametrize("shape", [(7,), (2, 5), (2, 3, 4)])
@pytest.mark.parametrize("attrs", [{}, {"alpha": 1.702}, {"alpha": -0.5}])
def test_swiglu_backward_finite_differences(shape, attrs):
    rng = np.random.default_rng(len(shape))
    a = (rng.standard_normal(shape) * 2).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    check_backward("SwiGLU", [a, b], attrs, opset=28)


@pytest.mark.parametrize("wrt", [[0], [1]])
def test_swiglu_backward_one_input(wrt):
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    got = check_backward("SwiGLU", [a, b], {"alpha": 0.8}, wrt=wrt, opset=28)
    other = 1 - wrt[0]
    assert got[other] is None


def _grads64(a, b, g, alpha):
    a, b, g = (x.astype(np.float64) for x in (a, b, g))
    s = 1 / (1 + np.exp(-alpha * a))
    return g * b * (s + alpha * a * s * (1 - s)), g * a * s


def test_swiglu_backward_no_output_gradient_and_float64():
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((4, 3)).astype(np.float32) for _ in range(2))
    op, ins_t, outs_t = make_op("SwiGLU", [a, b], {}, opset=28)
    da, db = op.backward([None], [a, b], [None], [True, True])
    assert da.shape == db.shape == (4, 3) and not da.any() and not db.any()
    assert op.backward([np.ones((4, 3), np.float32)], [a, b], [None], [False, False]) == [None, None]
    # float64 inputs: the numpy path, float32 gradients
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    op, _, _ = make_op("SwiGLU", [a64, b64], {"alpha": 1.5}, opset=28)
    g = rng.standard_normal((4, 3)).astype(np.float32)
    da, db = op.backward([g], [a64, b64], [None], [True, True])
    want_a, want_b = _grads64(a, b, g, 1.5)
    assert da.dtype == np.float32 and db.dtype == np.float32
    np.testing.assert_allclose(da, want_a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, want_b, rtol=1e-6, atol=1e-7)


def test_swiglu_backward_kernel_parallel_matches_formula():
    n = 4 * PARALLEL_MIN_WORK + 13
    rng = np.random.default_rng(5)
    a = (rng.standard_normal(n) * 4).astype(np.float32)
    b, g = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    a[:4] = [0.0, 90.0, -90.0, 1e-30]  # saturated sigmoid both ways, a tiny gate
    want_a, want_b = _grads64(a, b, g, 1.25)
    outs = []
    threads = numba.get_num_threads()
    for t in (1, max(2, threads)):
        da, db = np.empty(n, np.float32), np.empty(n, np.float32)
        K.swiglu_grad(a, b, g, da, db, 1.25, True, True, threads=t)
        outs.append((da, db))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_allclose(outs[0][0], want_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[0][1], want_b, rtol=1e-5, atol=1e-6)
