"""The 8-bit matrix-vector kernels (edgedl.kernels.cpu.gemv_i8) and the dynamic quantization of a row
(edgedl.kernels.cpu.recurrent.quantize_row): exact against int64 / float32 numpy references, for every kernel
this CPU can run (the portable one always, vpdpbusd / sdot where available)."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from edgedl.errors import EdgeDLError
from edgedl.kernels.cpu import gemv_i8 as G
from edgedl.kernels.cpu import recurrent as R
from edgedl.kernels.cpu.vec_i8dot import DOT_KERNELS, K_PAIRS, K_SDOT

KINDS = [K_PAIRS] + list(DOT_KERNELS)
SHAPES = [(1, 1), (3, 5), (4, 32), (13, 37), (64, 128), (129, 300), (512, 2048)]


def _bytes(u: np.ndarray, kind: int, kq: int) -> np.ndarray:
    """Activation bytes as the kernel wants them: padded to whole quads, XOR 0x80 for sdot."""
    ub = np.zeros(u.shape[:-1] + (4 * kq,), np.uint8)
    ub[..., :u.shape[-1]] = u ^ 0x80 if kind == K_SDOT else u
    return ub


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k,n", SHAPES)
def test_gemv_is_the_exact_dot_product(kind, k, n):
    rng = np.random.default_rng(k * 1000 + n)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w[0, :] = -128  # the extremes
    u = rng.integers(0, 256, k).astype(np.uint8)
    u[0] = 255
    wp, cs, kq, nblk = G.pack(w, kind)
    assert cs.shape[0] >= n and cs.shape[0] % nblk == 0
    np.testing.assert_array_equal(cs[:n], w.astype(np.int64).sum(axis=0))
    assert not cs[n:].any()
    out = np.full(cs.shape[0], 7, np.int32)
    G.gemv_u8s8(_bytes(u, kind, kq), wp, kq, nblk, kind, out)
    want = u.astype(np.int64) @ w.astype(np.int64)
    if kind == K_SDOT:
        want -= 128 * cs[:n].astype(np.int64)
    np.testing.assert_array_equal(out[:n], want)
    assert not out[n:].any()  # padded columns: zero weights


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m,k,n", [(1, 5, 300), (4, 64, 128), (7, 13, 37), (20, 512, 700)])
def test_gemm_block_rows(kind, m, k, n):
    rng = np.random.default_rng(m + k + n)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    u = rng.integers(0, 256, (m, k)).astype(np.uint8)
    wp, cs, kq, nblk = G.pack(w, kind)
    nb = cs.shape[0] // nblk
    got = np.zeros((m, cs.shape[0]), np.int64)
    tmp = np.empty((m, nb), np.int32)
    ub = _bytes(u, kind, kq)
    for blk in range(nblk):
        G.gemm_block_u8s8(ub, wp, kq, blk, kind, tmp)
        got[:, blk * nb:(blk + 1) * nb] = tmp
    want = u.astype(np.int64) @ w.astype(np.int64)
    if kind == K_SDOT:
        want -= 128 * cs[:n].astype(np.int64)[None, :]
    np.testing.assert_array_equal(got[:, :n], want)


def test_pack_rejects_bad_weights():
    with pytest.raises(EdgeDLError, match="int8"):
        G.pack(np.zeros((4, 4), np.uint8))
    with pytest.raises(EdgeDLError, match="overflow"):
        G.pack(np.zeros((G.MAX_K + 1, 1), np.int8))


@numba.njit(cache=False)
def _quantize(h, ub, flip):
    return R.quantize_row(h, ub, flip)


def _quantize_ref(h: np.ndarray):
    """onnxruntime's GetQuantizationParameter + QuantizeLinear in float32 numpy."""
    lo = min(np.float32(0), h.min())
    hi = max(np.float32(0), h.max())
    scale = np.float32(1) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zp = int(np.rint(np.clip(np.float32(0) - lo / scale, 0, 255)))
    q = np.clip(np.rint(h / scale) + np.float32(zp), 0, 255).astype(np.uint8)
    return scale, zp, q


@pytest.mark.parametrize("case", ["normal", "positive", "negative", "zeros", "ties", "wide"])
@pytest.mark.parametrize("flip", [False, True])
def test_quantize_row_is_onnxruntimes(case, flip):
    rng = np.random.default_rng(len(case))
    h = {"normal": rng.standard_normal(257), "positive": rng.uniform(0.1, 3, 64),
         "negative": -rng.uniform(0.1, 3, 64), "zeros": np.zeros(33),
         "ties": np.arange(-255, 256) / 2.0,  # x.5 steps: half-to-even decides
         "wide": rng.standard_normal(100) * 1e30}[case].astype(np.float32)
    ub = np.full(h.size, 99, np.uint8)
    scale, zp, total = _quantize(h, ub, flip)
    s_ref, z_ref, q_ref = _quantize_ref(h)
    assert np.float32(scale) == s_ref and zp == z_ref
    np.testing.assert_array_equal(ub, q_ref ^ 0x80 if flip else q_ref)
    assert total == int(q_ref.astype(np.int64).sum())
