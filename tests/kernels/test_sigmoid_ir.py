"""The shared sigmoid / Swish code (edgedl/kernels/cpu/sigmoid_ir.py): accuracy against float64 over the whole
float range, the limits, and the same bits in a vectorized loop, its scalar remainder and the GEMM epilogue."""
import numba
import numpy as np
import pytest

from edgedl.kernels.cpu import act as A
from edgedl.kernels.cpu import elementwise as E
from edgedl.kernels.cpu.config import FASTMATH
from edgedl.kernels.cpu.gemm import gemm
from edgedl.kernels.cpu.sigmoid_ir import EXP_HI, sigmoid_f32, swish_f32


@numba.njit(fastmath=FASTMATH)
def _sigmoid_loop(x, out, start, stop):
    for i in range(start, stop):
        out[i] = sigmoid_f32(x[i])


@numba.njit(fastmath=FASTMATH)
def _swish_loop(x, out, alpha, start, stop):
    a = np.float32(alpha)
    for i in range(start, stop):
        out[i] = swish_f32(x[i], a)


def _grid():
    rng = np.random.default_rng(0)
    return np.concatenate([np.linspace(-100, 100, 400_001, dtype=np.float32),
                           (rng.standard_normal(200_000) * 6).astype(np.float32),
                           np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-40, 17.0, -17.0, 86.6, -86.6, 87.9, -87.9,
                                       88.0, -88.0, 88.1, -88.1])])


def _ulps(got, want64):
    """|got - want| in units of the float32 spacing at want (want64 float64, rounded to float32 for the unit)."""
    return np.abs(got.astype(np.float64) - want64) / np.spacing(np.abs(want64).astype(np.float32)).astype(np.float64)


def test_sigmoid_is_within_2_5_ulp_wherever_the_result_is_a_normal_float():
    x = _grid()
    y = np.empty_like(x)
    _sigmoid_loop(x, y, 0, x.size)
    want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    normal = want >= np.finfo(np.float32).tiny
    assert _ulps(y[normal], want[normal]).max() <= 2.5
    # below the normal range (x < -87.3) the value is tiny or 0, never negative, NaN or large
    assert np.all((y[~normal] >= 0) & (y[~normal] < 2 * np.finfo(np.float32).tiny))
    assert np.all(y[x < -EXP_HI] == 0.0)
    assert np.all(y[x >= 17.0] == 1.0)


def test_swish_is_x_over_one_plus_exp_to_2_5_ulp_and_has_numpys_limits():
    x = _grid()
    for alpha in (1.0, 1.702, 0.5):
        y = np.empty_like(x)
        _swish_loop(x, y, alpha, 0, x.size)
        x64 = x.astype(np.float64)
        ax = (np.float32(alpha) * x).astype(np.float64)  # the kernel's argument: the float32 product
        want = x64 / (1.0 + np.exp(-ax))
        inside = (np.abs(want) >= np.finfo(np.float32).tiny) & (ax >= -EXP_HI)
        assert _ulps(y[inside], want[inside]).max() <= 2.5, alpha
        assert np.all(np.abs(y[~inside] - want[~inside]) < 1e-35)  # beyond: -0 for |x * sigmoid| < 5e-37
    special = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, -1e30])
    y = np.empty_like(special)
    _swish_loop(special, y, 1.0, 0, special.size)
    with np.errstate(over="ignore", invalid="ignore"):
        want = special * (1.0 / (1.0 + np.exp(-special.astype(np.float64))))
    np.testing.assert_array_equal(y, want.astype(np.float32))  # NaN, inf, NaN (-inf * 0), 0, -0, 3e38, -0, -0
    s = np.empty_like(special)
    _sigmoid_loop(special, s, 0, special.size)
    np.testing.assert_array_equal(s, np.float32([np.nan, 1.0, 0.0, 0.5, 0.5, 1.0, 0.0, 0.0]))


@pytest.mark.parametrize("start", [0, 1, 3, 5, 8, 13])
def test_vector_body_and_scalar_remainder_give_the_same_bits(start):
    """A loop over [start, n) runs its first elements in the vectorized body or in the scalar remainder
    depending on start: every element must come out the same either way."""
    x = (np.random.default_rng(1).standard_normal(300) * 8).astype(np.float32)
    whole, parts = np.empty_like(x), np.empty_like(x)
    _sigmoid_loop(x, whole, 0, x.size)
    _sigmoid_loop(x, parts, 0, start)
    _sigmoid_loop(x, parts, start, x.size)
    np.testing.assert_array_equal(whole, parts)
    for i in range(0, x.size, 7):  # one element at a time: the scalar code alone
        _swish_loop(x, parts, 1.0, i, i + 1)
    _swish_loop(x, whole, 1.0, 0, x.size)
    np.testing.assert_array_equal(whole[::7], parts[::7])


@pytest.mark.parametrize("code,op,alpha", [(A.ACT_SIGMOID, E.U_SIGMOID, 0.0), (A.ACT_SWISH, E.U_SWISH, 1.0),
                                           (A.ACT_SWISH, E.U_SWISH, 1.702)])
def test_the_gemm_epilogue_gives_the_element_wise_kernels_bits(code, op, alpha):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((13, 40)).astype(np.float32)
    b = (rng.standard_normal((40, 37)) * 2).astype(np.float32)
    fused = np.empty((13, 37), np.float32)
    gemm(a, b, fused, act=code, alpha=alpha)
    plain = np.empty_like(fused)
    gemm(a, b, plain)
    want = np.empty_like(plain)
    E.unary(op, plain.ravel(), want.ravel(), alpha)
    np.testing.assert_array_equal(fused, want)
