"""Element-wise math and the smooth activations: Gelu (both forms), Swish, Softplus, Mish, Selu, Celu, Softsign,
ThresholdedRelu, Shrink, the com.microsoft Gelu / FastGelu / BiasGelu / QuickGelu, Sin ... Atanh, Sign, IsInf,
IsNaN, Mean, Mod, BitShift, Bitwise*, BitCast.

float32 kernels against the float64 numpy references (special values included), accuracy sweeps of the
vectorizable math (Gelu's normal CDF tail, Sin / Cos range reduction), serial against parallel kernels, the
bound kernels, every attribute and opset path, hostile inputs, and small models against onnxruntime.
"""
import math

import numba
import numpy as np
import pytest

import edgedl
from edgedl import testing
from edgedl.errors import EdgeDLError, ShapeError, UnsupportedOpError
from edgedl.ir import Node
from edgedl.kernels.cpu import elementwise as K
from edgedl.kernels.cpu.config import PARALLEL_MIN_WORK
from edgedl.registry import lookup

MS = "com.microsoft"
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 3e38, -3e38, 20.5, -20.5,
                    88.0, -88.0, 1e-40], np.float32)


def run(op_type, inputs, attrs=None, *, opset=24, const=(), domain=""):
    """(output, reference, kernel) of a one-node op built as the planner builds it."""
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    node = Node(op_type, "n", names, ["o0"], dict(attrs or {}), domain)
    op = lookup(op_type, domain)(node, opset)
    consts = [a if k in const else None for k, a in enumerate(inputs)]
    (y,), kernel = testing.run_kernel(op, inputs, consts)
    return y, op.ref(*inputs)[0], kernel


def make(op_type, attrs=None, *, opset=24, domain="", n_in=1):
    node = Node(op_type, "n", [f"i{k}" for k in range(n_in)], ["o0"], dict(attrs or {}), domain)
    return lookup(op_type, domain)(node, opset)


def rand(shape, scale=4.0, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def sample(n=3000, scale=4.0, seed=0):
    return np.concatenate([rand((n,), scale, seed), SPECIAL])


def close(y, want, rtol=1e-5, atol=1e-7):
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol)


def sigmoid64(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


def ndtr64(x):
    return np.array([0.5 * math.erfc(-v / math.sqrt(2)) if not np.isnan(v) else np.nan for v in x.ravel()])


# --- float32 kernels against the references -------------------------------------------------------------
ACTS = [
    ("Gelu", {}, "", 20), ("Gelu", {"approximate": "tanh"}, "", 20), ("Gelu", {"approximate": "none"}, "", 20),
    ("Swish", {}, "", 24), ("Swish", {"alpha": 0.6}, "", 24), ("Softplus", {}, "", 1), ("Softsign", {}, "", 1),
    ("Mish", {}, "", 18), ("Selu", {}, "", 6), ("Selu", {"alpha": 2.0, "gamma": 0.5}, "", 6),
    ("Selu", {"alpha": 1.0, "gamma": -1.0}, "", 1), ("Celu", {}, "", 12), ("Celu", {"alpha": 0.3}, "", 12),
    ("Celu", {"alpha": -2.0}, "", 12), ("ThresholdedRelu", {}, "", 10), ("ThresholdedRelu", {"alpha": -0.5}, "", 10),
    ("Shrink", {}, "", 9), ("Shrink", {"lambd": 1.5, "bias": 0.25}, "", 9), ("Sin", {}, "", 7), ("Cos", {}, "", 7),
    ("Gelu", {}, MS, 17), ("FastGelu", {}, MS, 17), ("QuickGelu", {}, MS, 17), ("QuickGelu", {"alpha": 1.0}, MS, 17),
]


@pytest.mark.parametrize("op_type,attrs,domain,opset", ACTS,
                         ids=[f"{d and 'ms-'}{o}-{'-'.join(f'{k}{v}' for k, v in a.items())}" for o, a, d, _ in ACTS])
def test_float32_kernel_matches_reference(op_type, attrs, domain, opset):
    x = sample().reshape(-1, 1)
    y, want, kernel = run(op_type, [x], attrs, opset=opset, domain=domain)
    assert kernel.impl == "numba" and y.dtype == np.float32 and y.shape == x.shape
    close(y, want)
    # the bound kernel (what plans run) writes the same values
    out = np.full_like(x, np.nan)
    kernel.bind([x], [out], np.empty(0, np.uint8), 1)()
    np.testing.assert_array_equal(out, y)


def test_references_follow_the_formulas():
    x = np.linspace(-6, 6, 241)
    r = lambda op, attrs=None, domain="": make(op, attrs, domain=domain).ref(x)[0]  # noqa: E731
    close(r("Gelu"), x * ndtr64(x), 1e-12)
    close(r("Gelu", {"approximate": "tanh"}), 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
          1e-10, 1e-12)
    close(r("Gelu", domain=MS), x * ndtr64(x), 1e-12)
    close(r("QuickGelu", domain=MS), x * sigmoid64(1.702 * x), 1e-12)
    close(r("Swish", {"alpha": 0.5}), x * sigmoid64(0.5 * x), 1e-12)
    close(r("Softplus"), np.log(1 + np.exp(x)), 1e-12)
    close(r("Mish"), x * np.tanh(np.log(1 + np.exp(x))), 1e-12)
    close(r("Softsign"), x / (1 + np.abs(x)), 1e-12)
    alpha, gamma = 1.67326319217681884765625, 1.05070102214813232421875
    close(r("Selu"), np.where(x > 0, gamma * x, gamma * (alpha * np.exp(x) - alpha)), 1e-12)
    close(r("Celu", {"alpha": 2.0}), np.maximum(0, x) + np.minimum(0, 2 * (np.exp(x / 2) - 1)), 1e-12)
    close(r("ThresholdedRelu", {"alpha": 2.0}), np.where(x > 2, x, 0), 0)
    close(r("Shrink", {"lambd": 1.0, "bias": 0.5}), np.where(x < -1, x + 0.5, np.where(x > 1, x - 0.5, 0)), 0)


def test_gelu_normal_cdf_keeps_its_relative_accuracy_in_the_tail():
    # a 1 + erf(x / sqrt 2) form loses everything below x ~ -5; the kernel's Phi(-|x|) does not
    x = np.concatenate([np.linspace(-13, 13, 26001), -np.geomspace(1e-6, 12, 500)]).astype(np.float32)
    want = x.astype(np.float64) * ndtr64(x.astype(np.float64))
    y, _, _ = run("Gelu", [x], opset=20)
    rel = np.abs(y - want) / np.abs(want).clip(1e-300)
    assert rel[np.abs(want) > 1e-36].max() < 2e-6
    y_tanh, want_tanh, _ = run("Gelu", [x], {"approximate": "tanh"}, opset=20)
    close(y_tanh, want_tanh, 2e-5, 1e-30)  # the tanh argument itself rounds: 1e-5 far in the tail


@pytest.mark.parametrize("op_type", ["Sin", "Cos"])
def test_sin_cos_accuracy_and_large_arguments(op_type):
    fn = {"Sin": np.sin, "Cos": np.cos}[op_type]
    x = np.concatenate([rand((5000,), 1.0), rand((5000,), 3000.0, 1), np.linspace(-8192, 8192, 4001),
                        rand((2500,), 1e6, 2), SPECIAL]).astype(np.float32)
    y, _, _ = run(op_type, [x], opset=7)
    with np.errstate(invalid="ignore"):
        want = fn(x.astype(np.float64))
    np.testing.assert_allclose(y, want, rtol=0, atol=2.5e-7)  # about 1 ulp of values up to 1
    # one huge value in a block sends that block through libm; the fast blocks around it are unaffected
    z = np.linspace(-3, 3, 5000).astype(np.float32)
    z[2500] = 1e7
    yz, _, _ = run(op_type, [z], opset=7)
    np.testing.assert_allclose(yz, fn(z.astype(np.float64)), rtol=0, atol=2.5e-7)
    # in place (out is x)
    w = z.copy()
    K.unary(K.U_SIN if op_type == "Sin" else K.U_COS, w, w)
    np.testing.assert_array_equal(w, yz)


def test_softplus_mish_extremes():
    x = np.array([-200, -100, -90, -50, -20, -5, 0, 5, 15, 20, 21, 50, 100], np.float32)
    y, want, _ = run("Softplus", [x], opset=1)
    close(y, want, 1e-6, 1e-37)
    assert np.all(np.isfinite(y)) and y[-1] == 100.0
    y, want, _ = run("Mish", [x], opset=18)
    close(y, want, 1e-6, 1e-37)
    assert y[-1] == 100.0 and y[-4] == 20.0


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("op_type,attrs,domain", [("Gelu", {}, ""), ("Gelu", {"approximate": "tanh"}, ""),
                                                  ("Softplus", {}, ""), ("Mish", {}, ""), ("Selu", {}, ""),
                                                  ("Sin", {}, ""), ("Tan", {}, ""), ("Gelu", {}, MS),
                                                  ("FastGelu", {}, MS), ("QuickGelu", {}, MS)])
def test_other_float_dtypes(op_type, attrs, domain, dtype):
    with np.errstate(over="ignore"):
        x = sample(200, 3.0).astype(dtype)
    y, want, _ = run(op_type, [x], attrs, domain=domain)
    assert y.dtype == dtype
    if dtype == np.float16:
        np.testing.assert_array_equal(y, want)  # computed in float64 and rounded once, as the reference
    else:
        close(y, want, 1e-12, 1e-300)
    if op_type == "Gelu" and not attrs and dtype == np.float64:
        fin = np.isfinite(x)
        close(y[fin], x[fin] * ndtr64(x[fin]), 1e-12, 1e-300)


def test_shrink_integers_and_thresholded_relu_nan():
    x = np.arange(-6, 7, dtype=np.int32)
    y, want, kernel = run("Shrink", [x], {"lambd": 2.0, "bias": 1.0}, opset=9)
    np.testing.assert_array_equal(y, [-5, -4, -3, -2, 0, 0, 0, 0, 0, 2, 3, 4, 5])
    np.testing.assert_array_equal(y, want)
    assert kernel.impl == "numpy"
    y, _, _ = run("ThresholdedRelu", [np.array([np.nan, 2.0, 0.5], np.float32)], opset=10)
    np.testing.assert_array_equal(y, [0, 2, 0])  # NaN -> 0, as onnxruntime


@pytest.mark.parametrize("code,alpha,beta", [(K.U_GELU, 0, 0), (K.U_GELU_TANH, 0, 0), (K.U_MISH, 0, 0),
                                             (K.U_SOFTPLUS, 0, 0), (K.U_SIN, 0, 0), (K.U_SELU, 1.6, 1.05)])
def test_parallel_matches_serial(code, alpha, beta):
    x = rand((PARALLEL_MIN_WORK + 12345,), 5.0, 3)
    x[100] = 1e5  # a libm block for Sin
    before = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            y = np.empty_like(x)
            K.unary(code, x, y, alpha, beta)
            outs.append(y)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    serial, _ = K.unary_kernels(code)
    y1 = np.empty_like(x)
    serial(x, y1, float(alpha), float(beta), 0, x.size)
    np.testing.assert_array_equal(y1, outs[0])
    bound = np.empty_like(x)
    K.unary_bind(code, x, bound, alpha, beta, 3)()  # the parallel kernel, 3 chunks
    np.testing.assert_array_equal(bound, outs[0])


# --- FastGelu / BiasGelu: the bias ---------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["FastGelu", "BiasGelu"])
@pytest.mark.parametrize("b_shape", [(16,), (1, 16), (5, 16), ()])
def test_bias_gelu(op_type, b_shape):
    x, b = rand((3, 5, 16)), rand(b_shape, 1.0, 1)
    y, want, kernel = run(op_type, [x, b], domain=MS)
    assert kernel.impl == "numba" and y.shape == x.shape
    close(y, want)
    tanh_form = op_type == "FastGelu"
    y2, _, _ = run("Gelu", [x + b], {"approximate": "tanh" if tanh_form else "none"}, opset=20)
    close(y, y2, 1e-6, 1e-7)  # the same function of x + b (one rounding of the sum)
    yc, _, kc = run(op_type, [x, b], domain=MS, const=(1,))  # a read-only constant bias
    np.testing.assert_array_equal(yc, y)
    out = np.empty_like(x)
    kc.bind([x, b], [out], np.empty(0, np.uint8), 1)()
    np.testing.assert_array_equal(out, y)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("op_type", ["FastGelu", "BiasGelu"])
def test_bias_gelu_other_dtypes(op_type, dtype):
    x, b = rand((3, 8), 2.0, dtype=dtype), rand((8,), 1.0, 1, dtype=dtype)
    x0 = x.copy()
    y, want, _ = run(op_type, [x, b], domain=MS)
    np.testing.assert_array_equal(x, x0)  # the input is not overwritten
    assert y.dtype == dtype
    close(y, want, 1e-12 if dtype == np.float64 else 1e-3, 1e-300 if dtype == np.float64 else 1e-3)


def test_fast_gelu_without_bias_and_bad_bias():
    x = rand((4, 8))
    y, want, _ = run("FastGelu", [x], domain=MS)
    close(y, want)
    with pytest.raises(ShapeError, match="bias"):
        run("FastGelu", [x, rand((5,))], domain=MS)
    with pytest.raises(ShapeError, match="bias"):
        run("BiasGelu", [x, rand((2, 4, 8))], domain=MS)
    with pytest.raises(ShapeError):
        run("BiasGelu", [x, rand((8,), dtype=np.float64)], domain=MS)
    with pytest.raises(ShapeError, match="inputs"):
        run("BiasGelu", [x], domain=MS)


# --- attributes and hostile inputs ---------------------------------------------------------------------------
def test_bad_attributes_and_dtypes():
    with pytest.raises(ShapeError, match="approximate"):
        make("Gelu", {"approximate": "fast"}, opset=20)
    with pytest.raises(ShapeError, match="alpha"):
        make("Celu", {"alpha": 0.0})
    with pytest.raises(ShapeError, match="fmod"):
        make("Mod", {"fmod": 2}, n_in=2)
    with pytest.raises(ShapeError, match="direction"):
        make("BitShift", {"direction": "UP"}, n_in=2)
    with pytest.raises(ShapeError, match="direction"):
        make("BitShift", {}, n_in=2)
    for op_type in ("Gelu", "Softplus", "Sin", "Tan", "Acosh", "IsNaN", "IsInf", "Mish"):
        with pytest.raises(UnsupportedOpError):
            run(op_type, [np.arange(4, dtype=np.int32)])
    for op_type in ("BitwiseNot",):
        with pytest.raises(UnsupportedOpError):
            run(op_type, [np.ones(4, np.float32)])
    with pytest.raises(UnsupportedOpError):
        run("BitwiseAnd", [np.ones(4, np.float32), np.ones(4, np.float32)], opset=18)
    with pytest.raises(ShapeError, match="dtype"):
        run("BitwiseOr", [np.ones(4, np.int32), np.ones(4, np.int64)], opset=18)
    with pytest.raises(ShapeError, match="broadcast"):
        run("BitwiseXor", [np.ones((3, 4), np.int32), np.ones((5,), np.int32)], opset=18)
    with pytest.raises(ShapeError, match="broadcast"):
        run("Mod", [np.ones((3, 4), np.int32), np.ones((2, 4), np.int32)], opset=13)
    with pytest.raises(ShapeError, match="takes"):
        make("Softplus", n_in=2)


def test_sign_isinf_isnan_trig():
    xf = sample(300, 3.0)
    y, want, _ = run("Sign", [xf], opset=13)
    np.testing.assert_array_equal(y, np.sign(xf))
    for dt in (np.int8, np.int64, np.uint16):
        xi = np.array([-3, 0, 5], np.int64).astype(dt)
        y, _, _ = run("Sign", [xi], opset=13)
        assert y.dtype == dt
        np.testing.assert_array_equal(y, np.sign(xi))
    x = np.array([np.inf, -np.inf, np.nan, 0, 1.5], np.float32)
    for neg, pos, want in [(1, 1, [1, 1, 0, 0, 0]), (0, 1, [1, 0, 0, 0, 0]), (1, 0, [0, 1, 0, 0, 0]),
                           (0, 0, [0, 0, 0, 0, 0])]:
        y, r, _ = run("IsInf", [x], {"detect_negative": neg, "detect_positive": pos}, opset=20)
        assert y.dtype == np.bool_
        np.testing.assert_array_equal(y, np.array(want, bool))
        np.testing.assert_array_equal(r, y)
    y, _, _ = run("IsNaN", [x.astype(np.float16)], opset=20)
    np.testing.assert_array_equal(y, [0, 0, 1, 0, 0])
    u = np.linspace(-0.99, 0.99, 41).astype(np.float32)
    for op_type, fn, arg in [("Tan", np.tan, u), ("Asin", np.arcsin, u), ("Acos", np.arccos, u),
                             ("Atan", np.arctan, xf), ("Sinh", np.sinh, u * 5), ("Cosh", np.cosh, u * 5),
                             ("Asinh", np.arcsinh, xf), ("Acosh", np.arccosh, 1 + np.abs(xf)),
                             ("Atanh", np.arctanh, u)]:
        y, _, _ = run(op_type, [arg], opset=7)
        close(y, fn(arg.astype(np.float64)), 2e-6, 1e-7)
    y, _, _ = run("Asin", [np.array([2.0], np.float32)], opset=7)
    assert np.isnan(y[0])  # out of the domain: NaN, no error


# --- Mean ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shapes", [[(3, 4)], [(3, 4), (3, 4)], [(2, 3, 4), (4,), (3, 1), ()],
                                    [(1, 5), (4, 1), (4, 5)]])
def test_mean(shapes):
    xs = [rand(s, 3.0, k) for k, s in enumerate(shapes)]
    y, want, kernel = run("Mean", xs, opset=13)
    close(y, want, 1e-6, 1e-6)
    close(y, sum(x.astype(np.float64) for x in xs) / len(xs), 1e-6, 1e-6)
    x16 = [x.astype(np.float16) for x in xs]
    y16, want16, _ = run("Mean", x16, opset=13)
    np.testing.assert_array_equal(y16, want16)


def test_mean_opset_rules():
    with pytest.raises(ShapeError, match="equal shapes"):
        run("Mean", [rand((3, 4)), rand((4,))], opset=6)
    y, _, _ = run("Mean", [rand((3, 4)), rand((3, 4), seed=1)], opset=6)
    assert y.shape == (3, 4)
    with pytest.raises(UnsupportedOpError):
        run("Mean", [np.ones(3, np.int32), np.ones(3, np.int32)])


# --- Mod -----------------------------------------------------------------------------------------------------
def _py_mod(a, b, fmod):
    if b == 0:
        return 0
    r = abs(a) % abs(b)
    if fmod:
        return -r if a < 0 else r
    r = a - (a // b) * b  # Python floors: the divisor's sign
    return r


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64])
@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_integers(dtype, fmod):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(5)
    a = rng.integers(info.min, info.max, 200, dtype=dtype, endpoint=True)
    b = rng.integers(max(info.min, -50), min(info.max, 50), 200, dtype=dtype, endpoint=True)
    a[:3] = [info.min, info.max, 0]
    b[:4] = [-1 if info.min < 0 else 1, 7, 0, 0]
    y, want, kernel = run("Mod", [a, b], {"fmod": fmod}, opset=13)
    assert y.dtype == dtype and kernel.impl == "numpy"
    np.testing.assert_array_equal(y, [_py_mod(int(p), int(q), fmod) for p, q in zip(a, b)])
    np.testing.assert_array_equal(want, y)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_mod_floats_follow_numpy_and_the_opset28_special_cases(dtype):
    x = np.array([0.0, -0.0, 0.0, -0.0, -3.0, 3.0, -1.0, 1.0, np.inf, -np.inf, 1.0, 1.0, np.nan, 1.0, -4.3, 7.2],
                 dtype)
    y_ = np.array([-2.0, 2.0, 2.0, -2.0, np.inf, np.inf, -np.inf, -np.inf, 2.0, 2.0, 0.0, -0.0, 2.0, np.nan, 2.1, -3.4],
                  dtype)
    y, _, _ = run("Mod", [x, y_], {"fmod": 0}, opset=28)
    np.testing.assert_array_equal(np.signbit(y[:4]), [True, False, False, True])
    np.testing.assert_array_equal(y[4:8], [np.inf, 3.0, -1.0, -np.inf])  # x if the signs agree, else y
    assert np.isnan(y[8:14]).all()
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(y, np.mod(x, y_))
        yf, _, _ = run("Mod", [x, y_], {"fmod": 1}, opset=13)
        np.testing.assert_array_equal(yf, np.fmod(x, y_))
    assert np.sign(yf[-2]) == -1 and np.sign(yf[-1]) == 1  # the dividend's sign


def test_mod_broadcast():
    a = np.arange(-12, 12, dtype=np.int32).reshape(2, 3, 4)
    b = np.array([3, -5, 7, 2], np.int32)
    y, _, _ = run("Mod", [a, b], opset=13)
    np.testing.assert_array_equal(y, np.mod(a, b))


# --- BitShift, Bitwise*, BitCast --------------------------------------------------------------------------------
def _py_shift(x, s, bits, signed, left):
    if s < 0 or s >= bits:
        return -1 if (signed and not left and x < 0) else 0
    if left:
        r = (x << s) & ((1 << bits) - 1)
        return r - (1 << bits) if signed and r >= 1 << (bits - 1) else r
    return x >> s  # Python's >> is arithmetic


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift(dtype, direction):
    info = np.iinfo(dtype)
    bits = info.bits
    rng = np.random.default_rng(bits)
    x = rng.integers(info.min, info.max, (4, 12), dtype=dtype, endpoint=True)
    x[0, :3] = [info.min, info.max, 0]
    lo = -3 if info.min < 0 else 0
    s = rng.integers(lo, bits + 3, (12,)).astype(dtype)
    s[:4] = [0, 1, bits - 1, bits]
    y, want, _ = run("BitShift", [x, s], {"direction": direction}, opset=28)
    expect = [[_py_shift(int(v), int(k), bits, info.min < 0, direction == "LEFT") for v, k in zip(row, s)]
              for row in x]
    np.testing.assert_array_equal(y, np.array(expect, dtype=dtype))
    np.testing.assert_array_equal(want, y)


@pytest.mark.parametrize("op_type,fn", [("BitwiseAnd", lambda a, b: a & b), ("BitwiseOr", lambda a, b: a | b),
                                        ("BitwiseXor", lambda a, b: a ^ b)])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint16, np.uint64])
def test_bitwise_binary(op_type, fn, dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    a = rng.integers(info.min, info.max, (2, 3, 4), dtype=dtype, endpoint=True)
    b = rng.integers(info.min, info.max, (3, 1), dtype=dtype, endpoint=True)
    y, _, _ = run(op_type, [a, b], opset=18)
    bb = np.broadcast_to(b, a.shape)
    expect = [fn(int(p), int(q)) for p, q in zip(a.ravel(), bb.ravel())]
    np.testing.assert_array_equal(y.ravel(), np.array(expect, dtype=dtype))


def test_bitwise_not():
    x = np.array([0, 1, -1, 127, -128], np.int8)
    y, _, _ = run("BitwiseNot", [x], opset=18)
    np.testing.assert_array_equal(y, [-1, -2, 0, -128, 127])
    y, _, _ = run("BitwiseNot", [np.array([0, 5], np.uint16)], opset=18)
    np.testing.assert_array_equal(y, [65535, 65530])


def test_bitcast():
    x = np.array([1.0, -2.5, np.inf, 0.0], np.float32)
    y, want, _ = run("BitCast", [x], {"to": 6}, opset=26)  # INT32
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, [0x3F800000, -1071644672, 0x7F800000, 0])
    np.testing.assert_array_equal(want, y)
    y, _, _ = run("BitCast", [y], {"to": 1}, opset=26)
    np.testing.assert_array_equal(y, x)
    y, _, _ = run("BitCast", [np.array([-1, 5], np.int8).reshape(2, 1)], {"to": 2}, opset=26)
    assert y.shape == (2, 1) and y.dtype == np.uint8 and y.ravel().tolist() == [255, 5]
    y, _, _ = run("BitCast", [np.array([1.5], np.float64)], {"to": 7}, opset=26)
    assert y.dtype == np.int64 and y[0] == 0x3FF8000000000000
    y, _, _ = run("BitCast", [np.array([True, False])], {"to": 2}, opset=26)
    np.testing.assert_array_equal(y, [1, 0])
    y, _, _ = run("BitCast", [np.array([1, 0], np.uint8)], {"to": 9}, opset=26)
    assert y.dtype == np.bool_ and y.tolist() == [True, False]
    with pytest.raises(EdgeDLError, match="not a bool"):
        run("BitCast", [np.array([1, 2], np.uint8)], {"to": 9}, opset=26)
    with pytest.raises(ShapeError, match="width"):
        run("BitCast", [x], {"to": 11}, opset=26)  # DOUBLE
    with pytest.raises(UnsupportedOpError):
        run("BitCast", [np.ones(2, np.int16)], {"to": 16}, opset=26)  # BFLOAT16
    with pytest.raises(ShapeError, match="'to'"):
        make("BitCast", {}, opset=26)


# --- end to end against onnxruntime ----------------------------------------------------------------------------
ort = pytest.importorskip("onnxruntime")


def _ort(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _model(nodes, inputs, outputs, opset, ms=False):
    from onnx import helper

    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(MS, 1)] if ms else [])
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=ops)
    model.ir_version = 10
    return model


def _compare(model, feeds, rtol=1e-5, atol=1e-6):
    m = edgedl.load(model.SerializeToString())
    want = _ort(model, feeds)
    for _ in range(2):  # the second run goes through the bound kernels
        got = m.run(feeds)
        for name, w in want.items():
            assert got[name].dtype == w.dtype, name
            np.testing.assert_allclose(got[name], w, rtol=rtol, atol=atol, err_msg=name)


def test_activations_match_onnxruntime():
    from onnx import TensorProto, helper

    acts = [("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Swish", {"alpha": 0.7}), ("Softplus", {}),
            ("Softsign", {}), ("Mish", {}), ("Selu", {}), ("Celu", {"alpha": 0.5}), ("ThresholdedRelu", {}),
            ("Shrink", {"lambd": 0.3, "bias": 0.1}), ("Sin", {}), ("Cos", {}), ("Sign", {}), ("Tan", {}),
            ("Atan", {}), ("Sinh", {}), ("Asinh", {})]
    nodes = [helper.make_node(op, ["x"], [f"y{k}"], **attrs) for k, (op, attrs) in enumerate(acts)]
    nodes += [helper.make_node("IsInf", ["x"], ["inf"], detect_negative=0), helper.make_node("IsNaN", ["x"], ["nan"]),
              helper.make_node("Mean", ["x", "b"], ["mean"])]
    outs = [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None) for k in range(len(acts))]
    outs += [helper.make_tensor_value_info(n, TensorProto.BOOL, None) for n in ("inf", "nan")]
    outs += [helper.make_tensor_value_info("mean", TensorProto.FLOAT, None)]
    x = np.concatenate([rand((362,), 3.0), np.array([np.nan, np.inf, -np.inf, 0, 30, -30], np.float32)])
    x = x.reshape(8, 46)  # the special values in the last row
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 46]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [46])], outs, 24)
    _compare(model, {"x": x, "b": rand((46,), seed=4)})


def test_contrib_gelus_match_onnxruntime():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain=MS),
             helper.make_node("FastGelu", ["x"], ["f"], domain=MS),
             helper.make_node("FastGelu", ["x", "b"], ["fb"], domain=MS),
             helper.make_node("BiasGelu", ["x", "b"], ["bg"], domain=MS),
             helper.make_node("QuickGelu", ["x"], ["q"], domain=MS),
             helper.make_node("QuickGelu", ["x"], ["q1"], domain=MS, alpha=1.0)]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("g", "f", "fb", "bg", "q", "q1")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7, 32]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [32])], outs, 17, ms=True)
    _compare(model, {"x": rand((2, 7, 32), 3.0), "b": rand((32,), 1.0, 2)})


def test_integer_ops_match_onnxruntime():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mod", ["a", "b"], ["m0"]), helper.make_node("Mod", ["a", "b"], ["m1"], fmod=1),
             helper.make_node("BitShift", ["a", "s"], ["l"], direction="LEFT"),
             helper.make_node("BitShift", ["a", "s"], ["r"], direction="RIGHT"),
             helper.make_node("BitwiseAnd", ["a", "b"], ["and"]), helper.make_node("BitwiseXor", ["a", "b"], ["xor"]),
             helper.make_node("BitwiseNot", ["a"], ["not"]), helper.make_node("BitCast", ["a"], ["bc"], to=12)]
    names = ["m0", "m1", "l", "r", "and", "xor", "not"]
    outs = [helper.make_tensor_value_info(n, TensorProto.INT32, None) for n in names]
    outs.append(helper.make_tensor_value_info("bc", TensorProto.UINT32, None))
    ins = [helper.make_tensor_value_info(n, TensorProto.INT32, shape) for n, shape in
           (("a", [3, 8]), ("b", [8]), ("s", [8]))]
    model = _model(nodes, ins, outs, 28)
    rng = np.random.default_rng(9)
    a = rng.integers(-1000, 1000, (3, 8)).astype(np.int32)
    b = np.array([3, -5, 7, -2, 11, 13, -17, 1], np.int32)
    s = np.array([0, 1, 2, 5, 9, 31, 30, 4], np.int32)  # in range (ORT's older kernels differ outside)
    _compare(model, {"a": a, "b": b, "s": s}, rtol=0, atol=0)


def test_float16_gelu_matches_onnxruntime():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Gelu", ["x"], ["y"]), helper.make_node("Softplus", ["x"], ["z"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [64])],
                   [helper.make_tensor_value_info(n, TensorProto.FLOAT16, None) for n in "yz"], 20)
    _compare(model, {"x": rand((64,), 3.0).astype(np.float16)}, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_pow_by_a_constant_two_is_the_exact_square(dtype):
    """Pow(x, 2) with a constant exponent runs as x * x: the reference's float64 power rounded once, bit for bit,
    including inf, NaN and -0; other exponents keep the float64 path."""
    x = rand((3, 129), scale=100.0, dtype=dtype)
    x.reshape(-1)[:4] = [np.inf, -np.inf, np.nan, -0.0]
    for p in (2.0, 3.0, 0.5):
        with np.errstate(over="ignore", invalid="ignore"):
            want = np.power(x.astype(np.float64), p).astype(dtype)
        y = run("Pow", [x, np.array(p, np.float32)], const=(1,))[0]
        np.testing.assert_array_equal(y, want)
