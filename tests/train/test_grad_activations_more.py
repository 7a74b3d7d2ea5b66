"""Backward of the smooth activations: Gelu (both forms), the com.microsoft Gelu / FastGelu / BiasGelu / QuickGelu,
Swish, Softplus, Mish, Selu, Celu, Softsign.

Random shapes against float64 central differences (:func:`gradcheck.check_backward`, which also checks 1 thread
against N), the forward value each op keeps, the derivatives far out in the tails (finite, the right limits),
and every new derivative kernel above ``PARALLEL_MIN_WORK`` against a numpy formula, serial against parallel bit
for bit.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import check_backward, make_op

from edgedl.kernels.cpu import act_grad as G
from edgedl.kernels.cpu.config import PARALLEL_MIN_WORK

MS = "com.microsoft"
SELU_A, SELU_G = 1.67326319217681884765625, 1.05070102214813232421875


def rand_shape(rng, max_rank=4, max_size=48):
    while True:
        shape = tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(1, max_rank + 1))))
        if np.prod(shape) <= max_size:
            return shape


def rand_x(rng, shape, scale, kink=False):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    if kink:  # keep 1e-3 away from x = 0
        x[np.abs(x) < 1e-3] = 0.5
    return x


UNARY = [
    ("Gelu", {}, "", 20, False, 4.0), ("Gelu", {"approximate": "tanh"}, "", 20, False, 4.0),
    ("Gelu", {}, MS, 18, False, 4.0), ("FastGelu", {}, MS, 18, False, 4.0), ("QuickGelu", {}, MS, 18, False, 4.0),
    ("QuickGelu", {"alpha": -0.8}, MS, 18, False, 3.0), ("Swish", {}, "", 24, False, 4.0),
    ("Swish", {"alpha": 0.4}, "", 24, False, 4.0), ("Softplus", {}, "", 18, False, 5.0),
    ("Mish", {}, "", 18, False, 4.0), ("Selu", {}, "", 18, True, 2.0),
    ("Selu", {"alpha": 0.7, "gamma": 2.0}, "", 18, True, 2.0),
    ("Selu", {"alpha": -1.0, "gamma": 0.5}, "", 18, True, 2.0),
    ("Selu", {"alpha": 1.5, "gamma": -0.5}, "", 18, True, 2.0), ("Celu", {}, "", 18, True, 2.0),
    ("Celu", {"alpha": 0.3}, "", 18, True, 1.0), ("Celu", {"alpha": -2.0}, "", 18, True, 2.0),
    ("Softsign", {}, "", 18, True, 3.0),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("op_type,attrs,domain,opset,kink,scale", UNARY,
                         ids=[f"{d and 'ms-'}{o}-{'-'.join(f'{k}{v}' for k, v in a.items())}"
                              for o, a, d, _, _, _ in UNARY])
def test_unary_fd(op_type, attrs, domain, opset, kink, scale, seed):
    rng = np.random.default_rng(seed)
    x = rand_x(rng, rand_shape(rng), scale, kink)
    check_backward(op_type, [x], attrs, domain=domain, opset=opset, seed=seed)


@pytest.mark.parametrize("op_type", ["FastGelu", "BiasGelu"])
@pytest.mark.parametrize("b_shape", [(6,), (1, 6), (4, 6), ()])
def test_bias_gelu_fd(op_type, b_shape):
    rng = np.random.default_rng(len(b_shape))
    x = rand_x(rng, (2, 4, 6), 2.0)
    b = rand_x(rng, b_shape, 1.0)
    got = check_backward(op_type, [x, b], domain=MS, opset=18)
    # the bias gradient is the input gradient summed over the broadcast axes
    lead = x.ndim - b.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(b_shape) if d == 1)
    np.testing.assert_allclose(got[1], got[0].astype(np.float64).sum(axis=axes).reshape(b_shape), rtol=1e-5, atol=1e-6)
    # only the bias wanted
    op, _, _ = make_op(op_type, [x, b], domain=MS, opset=18)
    dx, db = op.backward([np.ones(x.shape, np.float32)], [x, b], [None], [False, True])
    assert dx is None and db.shape == b_shape


def test_saved_values():
    x = np.zeros((2, 3), np.float32)
    for op_type, attrs, domain, want_in, want_out in [
            ("Gelu", {}, "", (0,), ()), ("Gelu", {"approximate": "tanh"}, "", (0,), ()), ("Gelu", {}, MS, (0,), ()),
            ("QuickGelu", {}, MS, (0,), ()), ("Swish", {}, "", (0,), ()), ("Softplus", {}, "", (), (0,)),
            ("Mish", {}, "", (0,), ()), ("Selu", {}, "", (), (0,)), ("Selu", {"gamma": -1.0}, "", (0,), ()),
            ("Selu", {"alpha": -1.0}, "", (0,), ()), ("Celu", {}, "", (), (0,)),
            ("Celu", {"alpha": -3.0}, "", (), (0,)),
            ("Softsign", {}, "", (0,), ())]:
        op, _, _ = make_op(op_type, [x], attrs, domain=domain, opset=24)
        assert op.has_backward()
        assert (tuple(op.grad_inputs), tuple(op.grad_outputs)) == (want_in, want_out), (op_type, attrs)
    op, _, _ = make_op("FastGelu", [x, np.zeros(3, np.float32)], domain=MS)
    assert op.grad_inputs == (0, 1) and op.grad_outputs == ()


def test_none_gradient_gives_zeros():
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    for op_type, domain in [("Gelu", ""), ("Mish", ""), ("Softplus", ""), ("QuickGelu", MS)]:
        op, _, _ = make_op(op_type, [x], domain=domain, opset=24)
        y = op.ref(x)[0]
        (dx,) = op.backward([None], [x], [y], [True])
        assert dx.dtype == np.float32 and dx.shape == x.shape and not dx.any()


def _grad(op_type, x, attrs=None, domain=""):
    x = np.asarray(x, np.float32)
    op, _, _ = make_op(op_type, [x], attrs, domain=domain, opset=24)
    y = op.ref(x)[0]
    (dx,) = op.backward([np.ones(x.shape, np.float32)], [x], [y], [True])
    return dx


def test_derivatives_in_the_tails():
    x = np.array([-1e30, -1e10, -60, -30, -12.5, 12.5, 30, 60, 1e10, 1e30], np.float32)
    ones = (x > 0).astype(np.float32)
    for op_type, attrs, domain in [("Gelu", {}, ""), ("Gelu", {"approximate": "tanh"}, ""), ("FastGelu", {}, MS),
                                   ("Mish", {}, ""), ("Swish", {}, ""), ("QuickGelu", {}, MS), ("Softplus", {}, "")]:
        dx = _grad(op_type, x, attrs, domain)
        assert np.isfinite(dx).all(), (op_type, attrs, dx)
        np.testing.assert_allclose(dx, ones, atol=5e-5, err_msg=f"{op_type} {attrs}")  # Mish'(-12.5) ~ -4e-5
    # Softsign: 1 / (1 + |x|)^2; Selu / Celu: the slopes far out
    np.testing.assert_allclose(_grad("Softsign", [-1e10, 1e3]), [1e-20, 1 / 1001 ** 2], rtol=1e-5)
    np.testing.assert_allclose(_grad("Selu", [-100.0, 100.0]), [0.0, SELU_G], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(_grad("Celu", [-100.0, 100.0], {"alpha": 2.0}), [math.exp(-50), 1.0], rtol=1e-5,
                               atol=1e-7)


def test_values_against_closed_forms():
    x = np.linspace(-5, 5, 201, dtype=np.float32)
    x64 = x.astype(np.float64)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x64])
    pdf = np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(_grad("Gelu", x), cdf + x64 * pdf, rtol=2e-6, atol=1e-7)
    k, c = math.sqrt(2 / math.pi), 0.044715
    t = np.tanh(k * (x64 + c * x64 ** 3))
    want = 0.5 * (1 + t) + 0.5 * x64 * (1 - t * t) * k * (1 + 3 * c * x64 ** 2)
    np.testing.assert_allclose(_grad("Gelu", x, {"approximate": "tanh"}), want, rtol=2e-6, atol=1e-7)
    sp = np.log1p(np.exp(x64))
    sig = 1 / (1 + np.exp(-x64))
    np.testing.assert_allclose(_grad("Softplus", x), sig, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(_grad("Mish", x), np.tanh(sp) + x64 * (1 - np.tanh(sp) ** 2) * sig, rtol=2e-6,
                               atol=1e-7)


# --- kernels above PARALLEL_MIN_WORK: serial == parallel, against numpy --------------------------------------------
BIG = PARALLEL_MIN_WORK + 4099


def _np_dact(code, v, g, alpha, beta):
    v = v.astype(np.float64)
    g = g.astype(np.float64)
    if code == G.G_GELU:
        cdf = np.array([0.5 * math.erfc(-t / math.sqrt(2)) for t in v])
        return g * (cdf + v * np.exp(-v * v / 2) / math.sqrt(2 * math.pi))
    if code == G.G_GELU_TANH:
        k = 2 * math.sqrt(2 / math.pi)
        s = 1 / (1 + np.exp(-k * (v + 0.044715 * v ** 3)))
        return g * (s + v * s * (1 - s) * k * (1 + 3 * 0.044715 * v * v))
    if code == G.G_SWISH:
        s = 1 / (1 + np.exp(-alpha * v))
        return g * (s + alpha * v * s * (1 - s))
    if code == G.G_SOFTPLUS_OUT:
        return g * -np.expm1(-v)
    if code == G.G_MISH:
        sp = np.log1p(np.exp(v))
        return g * (np.tanh(sp) + v * (1 - np.tanh(sp) ** 2) / (1 + np.exp(-v)))
    if code == G.G_SELU:
        return g * np.where(v > 0, beta, beta * alpha * np.exp(v))
    if code == G.G_SELU_OUT:
        return g * np.where(v > 0, beta, v + beta * alpha)
    if code == G.G_CELU_OUT:
        return g * np.where(v > 0, 1, v / alpha + 1)
    return g / (1 + np.abs(v)) ** 2  # G_SOFTSIGN


@pytest.mark.parametrize("code,alpha,beta", [
    (G.G_GELU, 0, 0), (G.G_GELU_TANH, 0, 0), (G.G_SWISH, 1.702, 0), (G.G_SOFTPLUS_OUT, 0, 0), (G.G_MISH, 0, 0),
    (G.G_SELU, SELU_A, SELU_G), (G.G_SELU_OUT, SELU_A, SELU_G), (G.G_CELU_OUT, 0.5, 0), (G.G_SOFTSIGN, 0, 0)],
    ids=["gelu", "gelu_tanh", "swish", "softplus", "mish", "selu", "selu_out", "celu_out", "softsign"])
def test_act_kernel_parallel(code, alpha, beta):
    rng = np.random.default_rng(code)
    v = (rng.standard_normal(BIG) * 4).astype(np.float32)
    if code == G.G_SOFTPLUS_OUT:
        v = np.log1p(np.exp(v)).astype(np.float32)  # a saved output
    elif code == G.G_SELU_OUT:
        v = (SELU_G * np.where(v > 0, v, SELU_A * np.expm1(v))).astype(np.float32)
    elif code == G.G_CELU_OUT:
        v = np.where(v > 0, v, 0.5 * np.expm1(v / 0.5)).astype(np.float32)
    v[:3] = [0.0, -1e-3, 1e-3]
    g = rng.standard_normal(BIG).astype(np.float32)

    def call(threads):
        dx = np.empty_like(v)
        G.act_grad(code, v, g, dx, alpha, beta, threads=threads)
        return dx

    one, par = call(1), call(3)
    np.testing.assert_array_equal(one, par)
    check = slice(0, 20000) if code == G.G_GELU else slice(None)  # the reference's erfc loop is slow
    np.testing.assert_allclose(one[check], _np_dact(code, v[check], g[check], np.float32(alpha), np.float32(beta)),
                               rtol=1e-5, atol=1e-6)
