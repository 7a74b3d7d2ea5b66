"""In-place activations on a run of a flat float32 array (edgedl/kernels/cpu/act_vec.py: act_run, and the vector
kernel vec.act_floats behind it): every activation code against its numpy reference, runs of every length around
the vector width at any offset with nothing written outside them, NaN and infinities, the same bits as the element
loops (act_inplace) it replaced, and vec.act_floats' bits equal to the GEMM's fused epilogue."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from edgedl.kernels.cpu import act as A
from edgedl.kernels.cpu import gemm as G
from edgedl.kernels.cpu.act_vec import VECTOR_ACTS, act_run
from edgedl.kernels.cpu.config import NJIT
from edgedl.kernels.cpu.vec import VW, act_floats

#: (name, alpha, beta) of every activation code
CODES = [("Relu", 0.0, 0.0), ("Clip", -1.5, 6.0), ("LeakyRelu", 0.1, 0.0), ("HardSwish", 0.0, 0.0),
         ("HardSigmoid", 0.2, 0.5), ("Sigmoid", 0.0, 0.0), ("Swish", 1.0, 0.0), ("Swish", 1.702, 0.0),
         ("Tanh", 0.0, 0.0), ("Elu", 0.7, 0.0)]


def _values(n, seed=0):
    x = (np.random.default_rng(seed).standard_normal(n) * 5).astype(np.float32)
    specials = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 90.0, -90.0, -3.0, 3.0, 6.0, -1e-30], np.float32)
    x[:min(n, specials.size)] = specials[:n]
    return x


@pytest.mark.parametrize("name,alpha,beta", CODES, ids=lambda v: str(v))
def test_act_run_matches_the_reference_on_every_run(name, alpha, beta):
    code = A.act_code(name)
    base = _values(5 * VW + 7)
    for start in (0, 1, 3, VW):
        for n in (0, 1, VW - 1, VW, VW + 1, 2 * VW + 3, 4 * VW + 7 - start):
            x = base.copy()
            act_run(x, start, start + n, code, np.float32(alpha), np.float32(beta))
            # nothing outside the run changes (NaN compared as NaN)
            np.testing.assert_array_equal(x[:start], base[:start])
            np.testing.assert_array_equal(x[start + n:], base[start + n:])
            got = x[start:start + n].astype(np.float64)
            ref = A.act_ref(base[start:start + n].astype(np.float64), code, alpha, beta)
            assert np.array_equal(np.isnan(got), np.isnan(ref)), (name, start, n)
            ok = ~np.isnan(ref)
            np.testing.assert_allclose(got[ok], ref[ok], rtol=2e-6, atol=1e-6 * max(1.0, abs(beta)))


@pytest.mark.parametrize("name,alpha,beta", CODES, ids=lambda v: str(v))
def test_act_run_gives_the_bits_of_the_element_loops(name, alpha, beta):
    """act_run replaced the element loops (act_inplace) in every kernel: the same bits, NaN and infinities
    included (the piecewise-linear ones on vector code, the others on the loops themselves)."""
    code = A.act_code(name)
    x = _values(1000, seed=1)
    got = x.copy()
    act_run(got, 0, got.size, code, np.float32(alpha), np.float32(beta))
    loops = x.copy()
    A.act_inplace(loops, 0, loops.size, code, np.float32(alpha), np.float32(beta))
    np.testing.assert_array_equal(got.view(np.int32), loops.view(np.int32))


@numba.njit(**dict(NJIT, cache=False))  # the kernels' flags: the code generator fuses by the function's fast-math
def _act_floats(x, code, alpha, beta):
    act_floats(x, 0, x.size, code, alpha, beta)


@pytest.mark.parametrize("name,alpha,beta", [c for c in CODES if A.act_code(c[0]) in A.SIMPLE_ACTS],
                         ids=lambda v: str(v))
def test_act_floats_gives_the_bits_of_the_fused_gemm(name, alpha, beta):
    """vec.act_floats is the GEMM epilogue's vector code run over memory: a layer gives the same floats whether
    its activation runs in the microkernel or after it."""
    code = A.act_code(name)
    # A = identity (8 x 8), so the GEMM's outputs before the activation are B exactly (finite values, no -0:
    # the zeros of the other rows would make inf and NaN lanes NaN and -0 lanes +0)
    m = 8
    b = (np.random.default_rng(2).standard_normal((m, 125)) * 5).astype(np.float32)
    b[0, :6] = [90.0, -90.0, -3.0, 3.0, 6.0, 0.0]
    fused = G.gemm(np.eye(m, dtype=np.float32), b, act=code, alpha=alpha, beta=beta)
    after = b.reshape(-1).copy()
    _act_floats(after, code, np.float32(alpha), np.float32(beta))
    np.testing.assert_array_equal(fused.reshape(-1).view(np.int32), after.view(np.int32))
    if code in VECTOR_ACTS:  # and act_run is act_floats for these
        again = b.reshape(-1).copy()
        act_run(again, 0, again.size, code, np.float32(alpha), np.float32(beta))
        np.testing.assert_array_equal(again.view(np.int32), after.view(np.int32))


def test_act_run_is_the_identity_for_no_activation():
    x = _values(3 * VW + 1)
    y = x.copy()
    act_run(y, 0, y.size, A.ACT_NONE, np.float32(0.0), np.float32(0.0))
    np.testing.assert_array_equal(y, x)
