"""LayerNormalization, RMSNormalization, onnxruntime's (Skip)(Simplified)LayerNormalization, Group- and
InstanceNormalization, LpNormalization and MeanVarianceNormalization against independent float64 numpy
formulas, every attribute / opset path, hostile inputs, and small models against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl import testing
from edgedl.errors import EdgeDLError, UnsupportedOpError
from edgedl.ir import Node
from edgedl.kernels.cpu import layer_norm as LK
from edgedl.registry import lookup

MS = "com.microsoft"


def make_op(op_type, attrs, inputs, outputs, opset=17, domain=""):
    cls = lookup(op_type, domain)
    assert cls is not None, (domain, op_type)
    return cls(Node(op_type, f"test_{op_type}", list(inputs), list(outputs), dict(attrs), domain), opset)


def run(op, arrays, consts=None):
    consts = [None] * len(arrays) if consts is None else consts
    return testing.run_kernel(op, arrays, consts)


def ln_formula(x, g, b, axis, eps, rms=False):
    """(y, mean, inv) in float64, the statistics with shape[:axis] + ones."""
    ax = axis % x.ndim
    axes = tuple(range(ax, x.ndim))
    x64 = x.astype(np.float64)
    if rms:
        mean = np.zeros(x.shape[:ax] + (1,) * (x.ndim - ax))
        inv = 1 / np.sqrt((x64 ** 2).mean(axis=axes, keepdims=True) + eps)
    else:
        mean = x64.mean(axis=axes, keepdims=True)
        inv = 1 / np.sqrt(x64.var(axis=axes, keepdims=True) + eps)
    y = (x64 - mean) * inv * g.astype(np.float64)
    if b is not None:
        y = y + b.astype(np.float64)
    return y, mean, inv


def randn(rng, shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


# --- LayerNormalization ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", [((2, 3, 8), -1), ((2, 3, 8), 1), ((4, 5), 0), ((3, 2, 4, 5), 2),
                                        ((7,), -1), ((2, 3, 1), -1), ((5, 33), -1)])
@pytest.mark.parametrize("with_b", [True, False])
def test_layernorm_kernel_every_axis(shape, axis, with_b):
    rng = np.random.default_rng(abs(hash((shape, axis))) % 1000)
    ax = axis % len(shape)
    x = randn(rng, shape, 2.0, 3.0)
    g = randn(rng, shape[ax:])
    b = randn(rng, shape[ax:]) if with_b else None
    ins = [x, g] + ([b] if with_b else [])
    op = make_op("LayerNormalization", dict(axis=axis, epsilon=1e-3), ["x", "g", "b"][:len(ins)], ["y", "m", "i"])
    (y, m, i), kern = run(op, ins)
    assert kern.impl == "numba"
    want, mean, inv = ln_formula(x, g, b, axis, 1e-3)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert m.dtype == np.float32 and i.dtype == np.float32 and m.shape == mean.shape
    np.testing.assert_allclose(m, mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(i, inv, rtol=1e-5)
    # the numpy reference agrees
    ry, rm, ri = op.ref(*ins)
    np.testing.assert_allclose(ry, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ri, inv, rtol=1e-5)


def test_layernorm_omitted_outputs_and_defaults():
    rng = np.random.default_rng(1)
    x = randn(rng, (3, 4, 16))
    g, b = randn(rng, 16), randn(rng, 16)
    want, mean, inv = ln_formula(x, g, b, -1, 1e-5)
    for outs in (["y"], ["y", "", "i"], ["y", "m"], ["y", "m", ""]):
        op = make_op("LayerNormalization", {}, ["x", "g", "b"], outs)
        res, kern = run(op, [x, g, b])
        assert kern.impl == "numba" and len(res) == sum(1 for o in outs if o)
        np.testing.assert_allclose(res[0], want, rtol=1e-5, atol=1e-5)
        if outs[1:2] == ["m"]:
            np.testing.assert_allclose(res[1], mean, rtol=1e-6, atol=1e-6)
        if outs[2:3] == ["i"]:
            np.testing.assert_allclose(res[-1], inv, rtol=1e-5)


def test_layernorm_contrib_opsets_and_ms_domain():
    """onnxruntime's contrib LayerNormalization (default domain, opsets < 17) and a com.microsoft spelling."""
    rng = np.random.default_rng(2)
    x, g, b = randn(rng, (2, 5, 12)), randn(rng, 12), randn(rng, 12)
    want = ln_formula(x, g, b, -1, 1e-5)[0]
    for opset, domain in ((11, ""), (13, ""), (17, ""), (13, MS)):
        op = make_op("LayerNormalization", {}, ["x", "g", "b"], ["y"], opset, domain)
        (y,), kern = run(op, [x, g, b])
        assert kern.impl == "numba"
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gshape", [(1, 1, 16), (1, 16), (1,), (4, 1), (1, 4, 1)])
@pytest.mark.parametrize("const", [True, False])
def test_layernorm_broadcast_scales(gshape, const):
    """Scale / B that broadcast inside the normalized dims run the kernel (expanded once when constant,
    per run into the workspace otherwise)."""
    rng = np.random.default_rng(3)
    x = randn(rng, (3, 4, 16))
    g, b = randn(rng, gshape), randn(rng, gshape)
    axis = -2 if gshape in ((4, 1), (1, 4, 1)) else -1
    op = make_op("LayerNormalization", dict(axis=axis), ["x", "g", "b"], ["y"])
    (y,), kern = run(op, [x, g, b], [None, g, b] if const else None)
    assert kern.impl == "numba"
    n = int(np.prod(x.shape[axis:]))
    assert kern.scratch_bytes == (0 if const or g.size == n else 2 * 4 * n)
    np.testing.assert_allclose(y, ln_formula(x, g, b, axis, 1e-5)[0], rtol=1e-5, atol=1e-5)


def test_layernorm_scale_varying_along_rows_uses_numpy():
    rng = np.random.default_rng(4)
    x = randn(rng, (3, 4, 8))
    g = randn(rng, (3, 1, 8))  # differs per row: not a per-column vector
    op = make_op("LayerNormalization", {}, ["x", "g"], ["y", "m"])
    (y, m), kern = run(op, [x, g])
    assert kern.impl == "numpy"
    want, mean, _ = ln_formula(x, g, None, -1, 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m, mean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_layernorm_other_dtypes(dtype):
    rng = np.random.default_rng(5)
    x = randn(rng, (2, 3, 6)).astype(dtype)
    g, b = randn(rng, 6).astype(dtype), randn(rng, 6).astype(dtype)
    op = make_op("LayerNormalization", {}, ["x", "g", "b"], ["y", "m", "i"])
    (y, m, i), kern = run(op, [x, g, b])
    assert kern.impl == "numpy" and y.dtype == dtype and m.dtype == np.float32
    tol = 1e-3 if dtype == np.float16 else 1e-10
    np.testing.assert_allclose(y.astype(np.float64), ln_formula(x, g, b, -1, 1e-5)[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("offset", [1e2, 1e4])
def test_layernorm_accuracy_with_a_large_offset(offset):
    """Rows whose mean is 100 / 10^4 standard deviations: the float64 one-pass statistics stay exact (InvStdDev
    to 1e-6); Y carries the rounding of the float32 mean (stash_type 1), ~offset * 3e-8."""
    rng = np.random.default_rng(6)
    x = randn(rng, (16, 384), 1.0, offset)
    g, b = np.ones(384, np.float32), np.zeros(384, np.float32)
    op = make_op("LayerNormalization", {}, ["x", "g", "b"], ["y", "m", "i"])
    (y, m, i), _ = run(op, [x, g, b])
    want, mean, inv = ln_formula(x, g, b, -1, 1e-5)
    np.testing.assert_allclose(i, inv, rtol=1e-6)
    np.testing.assert_allclose(m, mean, rtol=1e-7)
    np.testing.assert_allclose(y, want, rtol=0, atol=max(1e-5, offset * 6e-8))


@pytest.mark.parametrize("op_type,attrs,n_in,outs,domain,opset", [
    ("LayerNormalization", {}, 3, ["y", "m", "i"], "", 17),
    ("RMSNormalization", {}, 2, ["y"], "", 23),
    ("SimplifiedLayerNormalization", {}, 2, ["y", "i"], "", 17),
])
def test_parallel_rows_match_serial(op_type, attrs, n_in, outs, domain, opset, monkeypatch):
    rng = np.random.default_rng(7)
    x = randn(rng, (8, 197, 96), 1.5, 0.5)
    params = [randn(rng, 96), randn(rng, 96)][:n_in - 1]
    op = make_op(op_type, attrs, ["x", "g", "b"][:n_in], outs, opset, domain)
    monkeypatch.setattr(LK._config, "PARALLEL_MIN_WORK", 0)
    par, _ = run(op, [x] + params)
    monkeypatch.setattr(LK._config, "PARALLEL_MIN_WORK", 1 << 40)
    ser, _ = run(op, [x] + params)
    for a, b in zip(par, ser):
        np.testing.assert_array_equal(a, b)
    want = ln_formula(x, params[0], params[1] if n_in == 3 else None, -1, 1e-5, rms=op_type != "LayerNormalization")
    np.testing.assert_allclose(par[0], want[0], rtol=1e-5, atol=1e-5)


def test_layernorm_errors():
    t = TensorProto
    x, g = np.zeros((2, 3), np.float32), np.ones(3, np.float32)
    with pytest.raises(EdgeDLError, match="out of range"):
        run(make_op("LayerNormalization", dict(axis=2), ["x", "g"], ["y"]), [x, g])
    with pytest.raises(EdgeDLError, match="does not broadcast"):
        run(make_op("LayerNormalization", {}, ["x", "g"], ["y"]), [x, np.ones(4, np.float32)])
    with pytest.raises(EdgeDLError, match="does not broadcast"):
        run(make_op("LayerNormalization", {}, ["x", "g"], ["y"]), [x, np.ones((1, 2, 3), np.float32)])
    with pytest.raises(EdgeDLError, match="does not broadcast"):
        run(make_op("LayerNormalization", {}, ["x", "g", "b"], ["y"]), [x, g, np.ones(2, np.float32)])
    with pytest.raises(UnsupportedOpError, match="stash_type"):
        make_op("LayerNormalization", dict(stash_type=t.BFLOAT16), ["x", "g"], ["y"])
    with pytest.raises(EdgeDLError, match="epsilon"):
        make_op("LayerNormalization", dict(epsilon=-1.0), ["x", "g"], ["y"])
    with pytest.raises(UnsupportedOpError, match="int32"):
        run(make_op("LayerNormalization", {}, ["x", "g"], ["y"]), [x.astype(np.int32), g])
    with pytest.raises(EdgeDLError, match="rank"):
        run(make_op("LayerNormalization", {}, ["x", "g"], ["y"]), [np.float32(1.0).reshape(()), g[:1]])
    with pytest.raises(EdgeDLError, match="inputs"):
        make_op("LayerNormalization", {}, ["x"], ["y"])


def test_layernorm_empty_rows():
    x = np.zeros((0, 4), np.float32)
    g = np.ones(4, np.float32)
    (y, m), kern = run(make_op("LayerNormalization", {}, ["x", "g"], ["y", "m"]), [x, g])
    assert y.shape == (0, 4) and m.shape == (0, 1) and kern.impl == "numpy"


# --- RMSNormalization / SimplifiedLayerNormalization --------------------------------------------------------
@pytest.mark.parametrize("shape,axis", [((2, 3, 8), -1), ((2, 3, 8), 1), ((4, 5), 0), ((3, 2, 4, 5), -3)])
def test_rmsnorm(shape, axis):
    rng = np.random.default_rng(8)
    x = randn(rng, shape, 1.5, 0.3)
    g = randn(rng, shape[axis % len(shape):])
    op = make_op("RMSNormalization", dict(axis=axis, epsilon=1e-4), ["x", "g"], ["y"], 23)
    (y,), kern = run(op, [x, g])
    assert kern.impl == "numba"
    np.testing.assert_allclose(y, ln_formula(x, g, None, axis, 1e-4, rms=True)[0], rtol=1e-5, atol=1e-5)


def test_rmsnorm_output_takes_the_scale_dtype():
    rng = np.random.default_rng(9)
    x, g = randn(rng, (2, 6)), randn(rng, 6).astype(np.float64)
    op = make_op("RMSNormalization", {}, ["x", "g"], ["y"], 23)
    (y,), kern = run(op, [x, g])
    assert y.dtype == np.float64 and kern.impl == "numpy"
    np.testing.assert_allclose(y, ln_formula(x, g, None, -1, 1e-5, rms=True)[0], rtol=1e-6)
    with pytest.raises(EdgeDLError, match="inputs"):
        make_op("RMSNormalization", {}, ["x", "g", "b"], ["y"], 23)


@pytest.mark.parametrize("domain", ["", MS])
def test_simplified_layernorm(domain):
    rng = np.random.default_rng(10)
    x, g = randn(rng, (2, 7, 24), 0.1), randn(rng, 24)
    op = make_op("SimplifiedLayerNormalization", dict(epsilon=1e-6), ["x", "g"], ["y", "i"], 17, domain)
    (y, i), kern = run(op, [x, g])
    assert kern.impl == "numba" and i.shape == (2, 7, 1)
    want, _, inv = ln_formula(x, g, None, -1, 1e-6, rms=True)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(i, inv, rtol=1e-5)


# --- SkipLayerNormalization --------------------------------------------------------------------------------
def skip_formula(x, skip, g, beta, bias, eps, rms=False):
    s = x.astype(np.float64) + skip
    if bias is not None:
        s = s + bias
    y, mean, inv = ln_formula(s, g, beta, -1, eps, rms)
    return y, mean, inv, s


@pytest.mark.parametrize("xshape,sshape", [((2, 5, 16), (2, 5, 16)), ((2, 5, 16), (1, 5, 16)),
                                           ((2, 5, 16), (5, 16)), ((6, 16), (6, 16))])
@pytest.mark.parametrize("with_beta,with_bias", [(True, True), (False, True), (True, False), (False, False)])
def test_skip_layernorm(xshape, sshape, with_beta, with_bias):
    rng = np.random.default_rng(11)
    x, skip = randn(rng, xshape, 1.0, 0.5), randn(rng, sshape)
    h = xshape[-1]
    g, beta, bias = randn(rng, h), randn(rng, h), randn(rng, h)
    ins = [x, skip, g, beta if with_beta else None, bias if with_bias else None]
    names = ["x", "s", "g", "beta" if with_beta else "", "bias" if with_bias else ""]
    op = make_op("SkipLayerNormalization", {}, names, ["y", "m", "i", "sum"], 1, MS)
    (y, m, i, s), kern = run(op, ins)
    assert kern.impl == "numba"
    want = skip_formula(x, skip, g, beta if with_beta else None, bias if with_bias else None, 1e-12)
    np.testing.assert_allclose(y, want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m, want[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(i, want[2], rtol=1e-5)
    np.testing.assert_allclose(s, want[3], rtol=1e-6, atol=1e-6)
    assert m.shape == xshape[:-1] + (1,)


def test_skip_layernorm_output_subsets():
    rng = np.random.default_rng(12)
    x, skip, g, beta = randn(rng, (3, 4, 8)), randn(rng, (3, 4, 8)), randn(rng, 8), randn(rng, 8)
    want = skip_formula(x, skip, g, beta, None, 1e-5)
    for outs in (["y"], ["y", "", "", "sum"], ["y", "", "i"], ["y", "m"]):
        op = make_op("SkipLayerNormalization", dict(epsilon=1e-5), ["x", "s", "g", "beta"], outs, 1, MS)
        res, kern = run(op, [x, skip, g, beta])
        assert kern.impl == "numba"
        np.testing.assert_allclose(res[0], want[0], rtol=1e-5, atol=1e-5)
        if outs[-1] == "sum":
            np.testing.assert_allclose(res[-1], want[3], rtol=1e-6, atol=1e-6)
        if outs[-1] == "i":
            np.testing.assert_allclose(res[-1], want[2], rtol=1e-5)
        if outs[-1] == "m":
            np.testing.assert_allclose(res[-1], want[1], rtol=1e-6, atol=1e-6)


def test_skip_simplified_layernorm(monkeypatch):
    rng = np.random.default_rng(13)
    x, skip, g, bias = randn(rng, (4, 50, 64)), randn(rng, (50, 64)), randn(rng, 64), randn(rng, 64)
    op = make_op("SkipSimplifiedLayerNormalization", dict(epsilon=1e-6), ["x", "s", "g", "bias"],
                 ["y", "m", "i", "sum"], 1, MS)
    monkeypatch.setattr(LK._config, "PARALLEL_MIN_WORK", 0)
    (y, m, i, s), kern = run(op, [x, skip, g, bias])
    assert kern.impl == "numba"
    want = skip_formula(x, skip, g, None, bias, 1e-6, rms=True)
    np.testing.assert_allclose(y, want[0], rtol=1e-5, atol=1e-5)
    assert not m.any()  # onnxruntime reports mean 0 for the RMS form
    np.testing.assert_allclose(i, want[2], rtol=1e-5)
    np.testing.assert_allclose(s, want[3], rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(LK._config, "PARALLEL_MIN_WORK", 1 << 40)
    ser, _ = run(op, [x, skip, g, bias])
    for a, b in zip((y, m, i, s), ser):
        np.testing.assert_array_equal(a, b)


def test_skip_layernorm_float64_reference():
    rng = np.random.default_rng(14)
    x, skip, g = (randn(rng, s).astype(np.float64) for s in ((2, 3, 8), (2, 3, 8), (8,)))
    op = make_op("SkipLayerNormalization", {}, ["x", "s", "g"], ["y", "", "", "sum"], 1, MS)
    (y, s), kern = run(op, [x, skip, g])
    assert kern.impl == "numpy" and y.dtype == np.float64
    np.testing.assert_allclose(y, skip_formula(x, skip, g, None, None, 1e-12)[0], rtol=1e-9, atol=1e-9)


def test_skip_layernorm_errors():
    x = np.zeros((2, 3, 8), np.float32)
    g = np.ones(8, np.float32)

    def op(names=("x", "s", "g"), outs=("y",)):
        return make_op("SkipLayerNormalization", {}, list(names), list(outs), 1, MS)
    with pytest.raises(EdgeDLError, match="skip has shape"):
        run(op(), [x, np.zeros((2, 8), np.float32), g])
    with pytest.raises(EdgeDLError, match="skip has shape"):
        run(op(), [x, np.zeros((2, 1, 8), np.float32), g])
    with pytest.raises(EdgeDLError, match="input must be"):
        run(op(), [np.zeros((2, 2, 3, 8), np.float32), np.zeros((2, 2, 3, 8), np.float32), g])
    with pytest.raises(EdgeDLError, match="gamma has shape"):
        run(op(), [x, x, np.ones(4, np.float32)])
    with pytest.raises(EdgeDLError, match="bias has shape"):
        run(op(("x", "s", "g", "", "bias")), [x, x, g, None, np.ones((1, 8), np.float32)])
    with pytest.raises(EdgeDLError, match="share one dtype"):
        run(op(), [x, x, g.astype(np.float64)])
    with pytest.raises(EdgeDLError, match="at most 4"):
        op(outs=("y", "m", "i", "s", "extra"))
    with pytest.raises(EdgeDLError, match="inputs"):
        make_op("SkipSimplifiedLayerNormalization", {}, ["x", "s", "g", "b", "bias"], ["y"], 1, MS)


# --- Group / InstanceNormalization -------------------------------------------------------------------------
def gn_formula(x, scale, bias, groups, eps, per_group=False):
    n, c = x.shape[:2]
    x3 = x.astype(np.float64).reshape(n, groups, -1)
    xhat = ((x3 - x3.mean(axis=2, keepdims=True)) / np.sqrt(x3.var(axis=2, keepdims=True) + eps))
    xhat = xhat.reshape(n, c, -1)
    if per_group:
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    return (xhat * scale[:, None] + bias[:, None]).reshape(x.shape)


@pytest.mark.parametrize("shape,groups", [((2, 6, 5, 4), 3), ((3, 4, 2, 2), 2), ((1, 8, 7), 8), ((2, 4), 2),
                                          ((2, 6, 3, 2, 2), 1)])
@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm(shape, groups, opset):
    rng = np.random.default_rng(15)
    x = randn(rng, shape, 2.0, 1.0)
    nparam = groups if opset < 21 else shape[1]
    scale, bias = randn(rng, nparam), randn(rng, nparam)
    op = make_op("GroupNormalization", dict(num_groups=groups, epsilon=1e-4), ["x", "s", "b"], ["y"], opset)
    (y,), kern = run(op, [x, scale, bias])
    assert kern.impl == "numba"
    want = gn_formula(x, scale, bias, groups, 1e-4, per_group=opset < 21)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(op.ref(x, scale, bias)[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 4, 6, 7), (2, 2, 2, 3, 4), (1, 64, 32, 32)])
def test_instance_norm(shape, monkeypatch):
    rng = np.random.default_rng(16)
    x = randn(rng, shape, 1.0, -2.0)
    scale, bias = randn(rng, shape[1]), randn(rng, shape[1])
    op = make_op("InstanceNormalization", dict(epsilon=1e-3), ["x", "s", "b"], ["y"], 6)
    (y,), kern = run(op, [x, scale, bias])
    assert kern.impl == "numba"
    np.testing.assert_allclose(y, gn_formula(x, scale, bias, shape[1], 1e-3), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(LK._config, "PARALLEL_MIN_WORK", 0 if x.size < 100000 else 1 << 40)
    (y2,), _ = run(op, [x, scale, bias])
    np.testing.assert_array_equal(y, y2)


def test_group_and_instance_norm_other_dtypes():
    rng = np.random.default_rng(17)
    x = randn(rng, (2, 4, 3)).astype(np.float64)
    s, b = np.ones(4), np.zeros(4)
    (y,), kern = run(make_op("InstanceNormalization", {}, ["x", "s", "b"], ["y"], 22), [x, s, b])
    assert kern.impl == "numpy" and y.dtype == np.float64
    np.testing.assert_allclose(y, gn_formula(x, s, b, 4, 1e-5), rtol=1e-10, atol=1e-10)


def test_group_and_instance_norm_errors():
    x = np.zeros((2, 6, 4), np.float32)
    p6, p3 = np.ones(6, np.float32), np.ones(3, np.float32)
    with pytest.raises(EdgeDLError, match="cannot be split"):
        run(make_op("GroupNormalization", dict(num_groups=4), ["x", "s", "b"], ["y"], 21), [x, p6, p6])
    with pytest.raises(EdgeDLError, match="expected \\(6,\\)"):
        run(make_op("GroupNormalization", dict(num_groups=3), ["x", "s", "b"], ["y"], 21), [x, p3, p3])
    with pytest.raises(EdgeDLError, match="expected \\(3,\\)"):
        run(make_op("GroupNormalization", dict(num_groups=3), ["x", "s", "b"], ["y"], 18), [x, p6, p6])
    with pytest.raises(EdgeDLError, match="num_groups"):
        make_op("GroupNormalization", {}, ["x", "s", "b"], ["y"], 21)
    with pytest.raises(EdgeDLError, match="positive"):
        make_op("GroupNormalization", dict(num_groups=0), ["x", "s", "b"], ["y"], 21)
    with pytest.raises(EdgeDLError, match="rank >= 3"):
        run(make_op("InstanceNormalization", {}, ["x", "s", "b"], ["y"], 6), [x[:, :, 0], p6, p6])
    with pytest.raises(EdgeDLError, match="share one dtype"):
        run(make_op("InstanceNormalization", {}, ["x", "s", "b"], ["y"], 6), [x, p6.astype(np.float64), p6])
    with pytest.raises(UnsupportedOpError, match="int64"):
        run(make_op("InstanceNormalization", {}, ["x", "s", "b"], ["y"], 6), [x.astype(np.int64), p6, p6])


# --- LpNormalization / MeanVarianceNormalization ----------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_lp_normalization(p, axis):
    rng = np.random.default_rng(18)
    x = randn(rng, (3, 4, 5))
    x[1, 2, :] = 0  # a zero norm along the last axis gives zeros
    (y,), _ = run(make_op("LpNormalization", dict(p=p, axis=axis), ["x"], ["y"], 1), [x])
    x64 = x.astype(np.float64)
    norm = (np.abs(x64) ** p).sum(axis=axis, keepdims=True) ** (1 / p)
    with np.errstate(invalid="ignore"):
        want = np.where(norm == 0, 0, x64 / norm)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    assert np.isfinite(y).all()
    with pytest.raises(EdgeDLError, match="p must be"):
        make_op("LpNormalization", dict(p=3), ["x"], ["y"], 22)
    with pytest.raises(EdgeDLError, match="out of range"):
        run(make_op("LpNormalization", dict(axis=3), ["x"], ["y"], 22), [x])


@pytest.mark.parametrize("axes", [None, [1], [0, 1, 2, 3], [-1, -2]])
def test_mean_variance_normalization(axes):
    rng = np.random.default_rng(19)
    x = randn(rng, (2, 3, 4, 5), 3.0, 1.0)
    attrs = {} if axes is None else dict(axes=axes)
    (y,), _ = run(make_op("MeanVarianceNormalization", attrs, ["x"], ["y"], 13), [x])
    ax = tuple(a % 4 for a in (axes or [0, 2, 3]))
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(axis=ax, keepdims=True)) / (x64.std(axis=ax, keepdims=True) + 1e-9)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(EdgeDLError, match="repeat"):
        run(make_op("MeanVarianceNormalization", dict(axes=[1, -3]), ["x"], ["y"], 13), [x])
    with pytest.raises(EdgeDLError, match="out of range"):
        run(make_op("MeanVarianceNormalization", dict(axes=[4]), ["x"], ["y"], 13), [x])


# --- end to end against onnxruntime -----------------------------------------------------------------------
ort = pytest.importorskip("onnxruntime")


def ort_run(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def model_of(nodes, inputs, outputs, inits, opset, ms=False):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(MS, 1)] if ms else [])
    return helper.make_model(g, opset_imports=imports, ir_version=10)


def compare(model, feeds, rtol=1e-4, atol=1e-5):
    want = ort_run(model, feeds)
    m = edgedl.load(model.SerializeToString())
    for _ in range(2):  # the second run goes through the bound steps
        got = m.run(feeds)
        for k in want:
            assert got[k].shape == want[k].shape, k
            np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def test_transformer_block_matches_onnxruntime():
    """LayerNormalization (with Mean / InvStdDev), onnxruntime's SkipLayerNormalization and
    SimplifiedLayerNormalization, RMSNormalization, as exporters and onnxruntime's fusions write them."""
    rng = np.random.default_rng(20)
    h = 32
    inits = {k: randn(rng, h) for k in ("g1", "b1", "g2", "b2", "bias", "g3", "g4")}
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["ln", "mean", "inv"], axis=-1, epsilon=1e-5),
        helper.make_node("SkipLayerNormalization", ["ln", "skip", "g2", "b2", "bias"], ["sk", "", "", "sum"],
                         domain=MS, epsilon=1e-6),
        helper.make_node("SimplifiedLayerNormalization", ["sk", "g3"], ["rms", "rinv"], epsilon=1e-6),
        helper.make_node("SkipSimplifiedLayerNormalization", ["rms", "skip", "g4"], ["y"], domain=MS),
    ]
    model = model_of(nodes, [("x", (2, 9, h)), ("skip", (2, 9, h))], ["mean", "inv", "sum", "rinv", "y"],
                     inits, 17, ms=True)
    feeds = {"x": randn(rng, (2, 9, h), 2.0, 1.0), "skip": randn(rng, (2, 9, h))}
    compare(model, feeds)
    # onnxruntime's optimizer writes the same ops itself: a plain LayerNormalization model optimized by it
    rmsn = model_of([helper.make_node("RMSNormalization", ["x", "g1"], ["y"], axis=-2)], [("x", (2, 9, h))], ["y"],
                    {"g1": randn(rng, (9, h))}, 23)
    compare(rmsn, {"x": feeds["x"]})


@pytest.mark.parametrize("opset", [18, 21])
def test_group_instance_lp_mvn_match_onnxruntime(opset):
    rng = np.random.default_rng(21)
    c = 6
    params = {"gs": randn(rng, 3 if opset < 21 else c), "gb": randn(rng, 3 if opset < 21 else c),
              "is": randn(rng, c), "ib": randn(rng, c)}
    nodes = [helper.make_node("GroupNormalization", ["x", "gs", "gb"], ["gn"], num_groups=3, epsilon=1e-4),
             helper.make_node("InstanceNormalization", ["gn", "is", "ib"], ["inn"]),
             helper.make_node("LpNormalization", ["inn"], ["lp"], p=1, axis=1),
             helper.make_node("MeanVarianceNormalization", ["lp"], ["y"])]
    model = model_of(nodes, [("x", (2, c, 5, 4))], ["gn", "inn", "y"], params, opset)
    compare(model, {"x": randn(rng, (2, c, 5, 4), 3.0, 2.0)})


def test_onnxruntime_fused_layernorm_model():
    """A decomposed layer norm that onnxruntime's own optimizer fuses (to LayerNormalization and
    SkipLayerNormalization) and saves: edgedl runs the saved model."""
    import os
    import tempfile

    rng = np.random.default_rng(22)
    h = 16
    eps = numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    ax = numpy_helper.from_array(np.array([-1], np.int64), "ax")
    nodes = [helper.make_node("Add", ["x", "skip"], ["s"]),
             helper.make_node("ReduceMean", ["s", "ax"], ["m"]),
             helper.make_node("Sub", ["s", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2", "ax"], ["v"]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]),
             helper.make_node("Mul", ["n", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "b"], ["y"])]
    model = model_of(nodes, [("x", (1, 7, h)), ("skip", (1, 7, h))], ["y"],
                     {"g": randn(rng, h), "b": randn(rng, h)}, 18)
    model.graph.initializer.extend([eps, two, ax])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "opt.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        fused = onnx.load(path)
    ops = {(n.domain, n.op_type) for n in fused.graph.node}
    assert ops & {("", "LayerNormalization"), (MS, "SkipLayerNormalization")}, ops
    feeds = {"x": randn(rng, (1, 7, h)), "skip": randn(rng, (1, 7, h))}
    compare(fused, feeds)
