"""fp32 GEMM kernels (edgedl.kernels.cpu.gemm / vec / act) against float64 numpy references."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from edgedl.kernels.cpu import act as A
from edgedl.kernels.cpu import gemm as G

RTOL, ATOL = 1e-4, 1e-4
ALPHA_BETA = {A.ACT_CLIP: (-0.5, 0.7), A.ACT_LEAKY_RELU: (0.1, 0.0), A.ACT_HARD_SIGMOID: (0.2, 0.5),
              A.ACT_ELU: (0.9, 0.0)}


def rnd(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def check(out, ref, rtol=RTOL, atol=ATOL):
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------------------
@numba.njit(cache=False)
def _apply_all(x, code, alpha, beta, out):
    for i in range(x.size):
        out[i] = A.apply_act(x[i], code, alpha, beta)


@pytest.mark.parametrize("code", range(A.NUM_ACTS))
def test_apply_act_matches_ref(code):
    x = np.concatenate([np.linspace(-8, 8, 101), [0.0, -0.0, 1e-30, -40.0, 40.0]]).astype(np.float32)
    alpha, beta = ALPHA_BETA.get(code, (0.0, 0.0))
    out = np.empty_like(x)
    _apply_all(x, code, np.float32(alpha), np.float32(beta), out)
    check(out, A.act_ref(x.astype(np.float64), code, alpha, beta), 1e-5, 1e-6)
    y = x.copy()
    A.act_inplace(y, 3, x.size - 2, code, np.float32(alpha), np.float32(beta))
    np.testing.assert_array_equal(y[:3], x[:3])
    np.testing.assert_array_equal(y[-2:], x[-2:])
    check(y[3:-2], A.act_ref(x[3:-2].astype(np.float64), code, alpha, beta), 1e-5, 1e-6)


@pytest.mark.parametrize("code", range(A.NUM_ACTS))
def test_nan_propagates(code):
    alpha, beta = ALPHA_BETA.get(code, (0.0, 0.0))
    x = np.array([np.nan, 1.0, -1.0], np.float32)
    out = np.empty_like(x)
    _apply_all(x, code, np.float32(alpha), np.float32(beta), out)
    assert np.isnan(out[0])
    # and through the GEMM epilogue (the microkernel's vector activations)
    a = np.ones((7, 5), np.float32)
    a[2, 3] = np.nan
    c = G.gemm(a, np.ones((5, 18), np.float32), act=code, alpha=alpha, beta=beta)
    assert np.isnan(c[2]).all() and not np.isnan(np.delete(c, 2, axis=0)).any()


def test_act_code_names():
    assert A.act_code(None) == A.ACT_NONE
    assert A.act_code("Relu") == A.ACT_RELU and A.act_code("HardSwish") == A.ACT_HARD_SWISH
    assert A.act_code(7) == A.ACT_TANH
    with pytest.raises(ValueError):
        A.act_code("Softplus")


# --------------------------------------------------------------------------------------------------------
# packing and the packed driver
# --------------------------------------------------------------------------------------------------------
def test_pack_layouts():
    rng = np.random.default_rng(0)
    m, n = 2 * G.MR + 1, G.NR + 5
    a = rnd(rng, m, 5)
    ap = np.full(G.packed_a_size(m, 5), np.nan, np.float32)
    G.pack_a(a.T.copy().T, ap)  # strided view
    panels = ap.reshape(-1, 5, G.MR)
    np.testing.assert_array_equal(panels[0].T, a[:G.MR])
    np.testing.assert_array_equal(panels[2][:, 0], a[2 * G.MR])
    assert (panels[2][:, 1:] == 0).all()
    b = rnd(rng, 4, n)
    bp = np.full(G.packed_b_size(4, n), np.nan, np.float32)
    G.pack_b(b, bp)
    bpan = bp.reshape(-1, 4, G.NR)
    np.testing.assert_array_equal(bpan[0], b[:, :G.NR])
    np.testing.assert_array_equal(bpan[1][:, :5], b[:, G.NR:])
    assert (bpan[1][:, 5:] == 0).all()


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (6, 16, 16), (7, 3, 17), (13, 300, 37), (25, 513, 9),
                                   (64, 32, 100), (5, 0, 4)])
def test_sgemm_packed(m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = rnd(rng, m, k), rnd(rng, k, n)
    bias = rnd(rng, m)
    ap = np.zeros(G.packed_a_size(m, k), np.float32)
    bp = np.zeros(G.packed_b_size(k, n), np.float32)
    if k:
        G.pack_a(a, ap)
        G.pack_b(b, bp)
    c = np.full((m, n), np.nan, np.float32)
    G.sgemm_packed(ap, bp, c, m, n, k, bias, A.ACT_RELU)
    check(c, G.gemm_ref(a, b, bias, A.ACT_RELU, bias_mode=G.BIAS_ROW))
    G.sgemm_packed(ap, bp, c, m, n, k)
    check(c, G.gemm_ref(a, b))


# --------------------------------------------------------------------------------------------------------
# gemm / matmul / FC weights
# --------------------------------------------------------------------------------------------------------
SHAPES = [(1, 1, 1), (2, 7, 40), (3, 50, 2), (4, 1, 33), (6, 16, 16), (11, 257, 29), (13, 64, 3),
          (37, 20, 1), (50, 300, 70), (100, 3, 130)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gemm_shapes_bias_col(m, k, n):
    rng = np.random.default_rng(k + 7 * n + 31 * m)
    a, b, bias = rnd(rng, m, k), rnd(rng, k, n), rnd(rng, n)
    check(G.gemm(a, b), G.gemm_ref(a, b))
    check(G.gemm(a, b, bias=bias, act="Relu"), G.gemm_ref(a, b, bias, A.ACT_RELU))


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gemm_bias_row_strided_operands(m, k, n):
    rng = np.random.default_rng(m + 3 * k + 5 * n)
    a = rnd(rng, k, m).T  # transposed views
    b = rnd(rng, n, k).T
    bias = rnd(rng, m)
    out = np.empty((m, n), np.float32)
    G.gemm(a, b, out, bias=bias, bias_mode=G.BIAS_ROW, act=A.ACT_TANH)
    check(out, G.gemm_ref(a, b, bias, A.ACT_TANH, bias_mode=G.BIAS_ROW))


@pytest.mark.parametrize("code", range(A.NUM_ACTS))
def test_gemm_every_activation(code):
    rng = np.random.default_rng(code)
    alpha, beta = ALPHA_BETA.get(code, (0.0, 0.0))
    for m, k, n in [(14, 37, 45), (2, 9, 20), (9, 9, 2)]:  # GEMM, row-GEMV and column-GEMV paths
        a, b, bias = rnd(rng, m, k), rnd(rng, k, n), rnd(rng, n)
        out = G.gemm(a, b, bias=bias, act=code, alpha=alpha, beta=beta)
        check(out, G.gemm_ref(a, b, bias, code, alpha, beta))


@pytest.mark.parametrize("code, alpha", [(A.ACT_SIGMOID, 0.0), (A.ACT_SWISH, 1.0), (A.ACT_SWISH, 1.702)])
def test_in_register_exp_activations_over_the_whole_range(code, alpha):
    """Sigmoid and Swish run in the microkernel's registers (their own exp polynomial in IR): against the
    reference on the GEMM's own plain output, from deep underflow (-100, the -86.6 cutoff) to saturation,
    on full and edge tiles."""
    x = np.concatenate([np.linspace(-12, 12, 97), [-100.0, -87.5, -86.6, -86.0, -20.0, 0.0, -0.0, 1e-30, 20.0,
                                                    88.0, 100.0]]).astype(np.float32)
    # C = A @ I puts every value of x through the epilogue exactly (identity B: no rounding)
    n = 16 + 5
    a = np.resize(x, (-(-x.size // n) * n,)).reshape(-1, n)
    out = G.gemm(a, np.eye(n, dtype=np.float32), act=code, alpha=alpha)
    np.testing.assert_array_equal(G.gemm(a, np.eye(n, dtype=np.float32)), a)
    ref = A.act_ref(a.astype(np.float64), code, alpha, 0.0)
    # (exp flushes to 0 below -86.6, like elementwise.exp_f32: |x * sigmoid(x)| < 1e-35 there)
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=2e-6, atol=1e-35)


def test_gemm_k_blocking_and_accumulate():
    rng = np.random.default_rng(3)
    m, k, n = 20, 2 * G.KC + 17, 35  # three K blocks
    a, b, c0 = rnd(rng, m, k), rnd(rng, k, n), rnd(rng, m, n)
    bias = rnd(rng, n)
    out = c0.copy()
    G.gemm(a, b, out, bias=bias, accumulate=True, act=A.ACT_SIGMOID)
    ref = A.act_ref(c0.astype(np.float64) + a.astype(np.float64) @ b + bias, A.ACT_SIGMOID)
    check(out, ref)


def test_large_m_several_row_blocks():
    rng = np.random.default_rng(4)
    m, k, n = 3 * G.MC + 5, 40, 3 * G.NR + 3  # several row blocks: packed B panels are kept and reused
    a, b, bias = rnd(rng, m, k), rnd(rng, k, n), rnd(rng, m)
    out = G.gemm(a, b, bias=bias, bias_mode=G.BIAS_ROW, act=A.ACT_HARD_SWISH)
    check(out, G.gemm_ref(a, b, bias, A.ACT_HARD_SWISH, bias_mode=G.BIAS_ROW))


def test_row_blocks_with_k_blocks():
    rng = np.random.default_rng(10)
    m, k, n = 2 * G.MC + 7, G.KC + 33, G.NC + 21  # kept B panels across row blocks, 2 K blocks, 2 col blocks
    a, b, bias = rnd(rng, m, k), rnd(rng, k, n), rnd(rng, m)
    out = G.gemm(a, b, bias=bias, bias_mode=G.BIAS_ROW, act=A.ACT_ELU, alpha=0.9)
    check(out, G.gemm_ref(a, b, bias, A.ACT_ELU, 0.9, bias_mode=G.BIAS_ROW))


def test_packed_a():
    rng = np.random.default_rng(5)
    a = rnd(rng, 23, 19)
    pa = G.PackedA(a)
    for n in (1, 5, 16, 40):
        b, bias = rnd(rng, 19, n), rnd(rng, 23)
        out = np.empty((23, n), np.float32)
        pa(b, out, bias, A.ACT_LEAKY_RELU, 0.2)
        check(out, G.gemm_ref(a, b, bias, A.ACT_LEAKY_RELU, 0.2, bias_mode=G.BIAS_ROW))


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 7, 33])
def test_packed_weight_fc(batch):
    rng = np.random.default_rng(batch)
    nout, k = 45, 70
    w, bias = rnd(rng, nout, k), rnd(rng, nout)
    pw = G.PackedWeight(w, bias, act=A.ACT_RELU)
    x = rnd(rng, batch, k)
    out = np.empty((batch, nout), np.float32)
    pw(x, out, np.empty(pw.scratch_bytes(batch), np.uint8))
    check(out, G.gemm_ref(x, w.T, bias, A.ACT_RELU))
    # transB = 0 layout, no bias
    pw2 = G.PackedWeight(w.T.copy(), None, trans_b=False)
    pw2(x, out)
    check(out, G.gemm_ref(x, w.T))


def test_gemv_and_vecmat_direct():
    rng = np.random.default_rng(6)
    w, x, bias = rnd(rng, 300, 129), rnd(rng, 2, 129), rnd(rng, 300)
    out = np.empty((2, 300), np.float32)
    G.gemv(w, x, out, bias, A.ACT_ELU, 0.9)
    check(out, G.gemm_ref(x, w.T, bias, A.ACT_ELU, 0.9))
    outt = np.empty((300, 2), np.float32)
    G.gemv(w, x, outt.T)
    check(outt, G.gemm_ref(w, x.T))
    a, b = rnd(rng, 3, 40), rnd(rng, 40, 600)
    out2 = np.empty((3, 600), np.float32)
    G.vecmat(a, b, out2, rnd(rng, 600) * 0, A.ACT_CLIP, -0.3, 0.3)
    check(out2, G.gemm_ref(a, b, None, A.ACT_CLIP, -0.3, 0.3))


@pytest.mark.parametrize("sa,sb", [((5, 7), (7, 9)), ((3, 5, 7), (7, 2)), ((7,), (2, 7, 4)), ((2, 1, 4, 7), (3, 7, 20)),
                                   ((4, 7), (7,)), ((7,), (7,)), ((2, 3, 1, 6), (2, 1, 6, 1))])
def test_matmul_broadcasting(sa, sb):
    rng = np.random.default_rng(len(sa) * 10 + len(sb))
    a, b = rnd(rng, *sa), rnd(rng, *sb)
    out = G.matmul(a, b)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert out.shape == ref.shape
    check(out, ref)


# --------------------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_one_vs_two_threads_identical():
    rng = np.random.default_rng(8)
    cases = [(64, 96, 300), (200, 40, 150), (7, 600, 500), (390, 300, 20)]
    before = numba.get_num_threads()
    try:
        for m, k, n in cases:
            a, b, bias = rnd(rng, m, k), rnd(rng, k, n), rnd(rng, n)
            assert m * n * k >= G._config.GEMM_PARALLEL_MIN_WORK
            res = []
            for th in (1, 2):
                numba.set_num_threads(th)
                res.append(G.gemm(a, b, bias=bias, act=A.ACT_RELU))
            np.testing.assert_array_equal(res[0], res[1])
            check(res[1], G.gemm_ref(a, b, bias, A.ACT_RELU))
        w, x = rnd(rng, 700, 400), rnd(rng, 1, 400)
        res = []
        for th in (1, 2):
            numba.set_num_threads(th)
            out = np.empty((1, 700), np.float32)
            G.gemv(w, x, out)
            res.append(out)
        np.testing.assert_array_equal(res[0], res[1])
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("m,k,n", [(1, 7, 16), (5, 33, 40), (8, 300, 70), (16, 96, 1024), (48, 20, 33), (13, 600, 17)])
def test_direct_b_matches_packed(m, k, n, monkeypatch):
    """GEMMs with few rows read a row-major B in place instead of packing it: the same floats either way
    (bias per row and per column, accumulate, K blocks, a partial last panel)."""
    rng = np.random.default_rng(m * 1000 + n)
    a, b = rnd(rng, m, k), rnd(rng, k, n)
    cases = [dict(bias=rnd(rng, n), act=A.ACT_RELU), dict(bias=rnd(rng, m), bias_mode=G.BIAS_ROW),
             dict(act=A.ACT_HARD_SWISH)]
    for kw in cases:
        outs = []
        for limit in (G.DIRECT_B_MAX_M, 0):
            monkeypatch.setattr(G, "DIRECT_B_MAX_M", limit)
            out = np.full((m, n), 0.5, np.float32)
            G.gemm(a, b, out, accumulate=True, **kw)
            outs.append(out)
        np.testing.assert_array_equal(outs[0], outs[1])
        bias = kw.get("bias")
        ref = 0.5 + a.astype(np.float64) @ b.astype(np.float64)
        if bias is not None:
            ref = ref + (bias[:, None] if kw.get("bias_mode") == G.BIAS_ROW else bias[None, :])
        check(outs[0], A.act_ref(ref, kw.get("act", A.ACT_NONE), 0.0, 0.0))
