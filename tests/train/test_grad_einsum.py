"""Backward of Einsum: every operand's gradient (itself an einsum on the fp32 GEMM path, put back on the diagonal
for repeated letters and summed over broadcast dims) against float64 central differences
(:func:`gradcheck.check_backward`, which also checks 1 thread against N threads)."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_backward, make_op

EQUATIONS = [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ("ij->ji", [(3, 4)]),
    ("ij->i", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("ii->i", [(3, 3)]),                       # diagonal: the gradient lives on the diagonal only
    ("ii", [(4, 4)]),                          # trace
    ("...ii->...i", [(2, 3, 3)]),
    ("iij,jk->ik", [(3, 3, 2), (2, 4)]),
    ("i,i", [(5,), (5,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,jk", [(2, 1), (3, 3)]),               # a size-1 index broadcast against 3
    ("...ij,...jk", [(4, 1, 2, 3), (5, 3, 2)]),  # broadcast ellipsis dims
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("bn,anm,bm->ba", [(2, 3), (2, 3, 4), (2, 4)]),
    ("ijk->k", [(2, 3, 4)]),                   # letters only the operand has: broadcast back
    ("ij,ij->ij", [(3, 4), (3, 4)]),
]


@pytest.mark.parametrize("eq,shapes", EQUATIONS)
def test_einsum_backward(eq, shapes):
    rng = np.random.default_rng(len(eq) + len(shapes))
    ins = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    check_backward("Einsum", ins, {"equation": eq}, opset=12)


def test_einsum_backward_only_requested_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    op, _, outs = make_op("Einsum", [a, b], {"equation": "ij,jk->ik"}, opset=12)
    g = rng.standard_normal(outs[0].shape).astype(np.float32)
    da, db = op.backward([g], [a, b], [None], [False, True])
    assert da is None
    np.testing.assert_allclose(db, a.T.astype(np.float64) @ g, rtol=1e-5, atol=1e-5)


def test_einsum_backward_large_batched_matches_matmul_formula():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 40, 50)).astype(np.float32)
    b = rng.standard_normal((3, 50, 60)).astype(np.float32)
    op, _, outs = make_op("Einsum", [a, b], {"equation": "bij,bjk->bik"}, opset=12)
    g = rng.standard_normal(outs[0].shape).astype(np.float32)
    da, db = op.backward([g], [a, b], [None], [True, True])
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(da, g64 @ np.swapaxes(b, 1, 2), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, np.swapaxes(a, 1, 2).astype(np.float64) @ g64, rtol=1e-4, atol=1e-4)


# --- Attention (opset 23+) ------------------------------------------------------------------------------------
def _attn_inputs(rng, nb=1, hq=2, hkv=1, sq=3, skv=4, d=3, dv=2, rank3=False, past=0):
    q = rng.standard_normal((nb, hq, sq, d)).astype(np.float32)
    k = rng.standard_normal((nb, hkv, skv, d)).astype(np.float32)
    v = rng.standard_normal((nb, hkv, skv, dv)).astype(np.float32)
    attrs = {}
    if rank3:
        q = np.ascontiguousarray(q.transpose(0, 2, 1, 3).reshape(nb, sq, hq * d))
        k = np.ascontiguousarray(k.transpose(0, 2, 1, 3).reshape(nb, skv, hkv * d))
        v = np.ascontiguousarray(v.transpose(0, 2, 1, 3).reshape(nb, skv, hkv * dv))
        attrs = {"q_num_heads": hq, "kv_num_heads": hkv}
    pk = rng.standard_normal((nb, hkv, past, d)).astype(np.float32) if past else None
    pv = rng.standard_normal((nb, hkv, past, dv)).astype(np.float32) if past else None
    return [q, k, v, None, pk, pv], attrs


@pytest.mark.parametrize("case", ["4d", "3d_gqa", "causal", "softcap_scale", "float_mask", "bool_mask",
                                  "past_present", "qk_mode0", "qk_mode2", "qk_mode3"])
def test_attention_backward(case):
    rng = np.random.default_rng(7)
    kw, extra, n_out = {}, {}, 1
    if case == "3d_gqa":
        kw = {"hq": 4, "hkv": 2, "rank3": True}
    if case in ("past_present", "causal"):
        kw["past"] = 2
    ins, attrs = _attn_inputs(rng, **kw)
    attrs.update(extra)
    wrt = [0, 1, 2]
    if case == "causal":
        attrs["is_causal"] = 1
        wrt += [4, 5]
    elif case == "softcap_scale":
        attrs.update(softcap=1.5, scale=0.7)
    elif case == "float_mask":
        ins[3] = rng.standard_normal((1, 3, 4)).astype(np.float32)
        wrt.append(3)
    elif case == "bool_mask":
        ins[3] = np.array([[True, False, True, True], [True, True, False, True], [False, True, True, True]])
    elif case == "past_present":
        n_out = 3
        wrt += [4, 5]
    elif case.startswith("qk_mode"):
        attrs["qk_matmul_output_mode"] = int(case[-1])
        attrs["softcap"] = 2.0
        ins[3] = rng.standard_normal((3, 4)).astype(np.float32)
        n_out = 4
        wrt.append(3)
    while ins and ins[-1] is None:
        ins.pop()
    check_backward("Attention", ins, attrs, wrt=wrt, opset=23, num_outputs=n_out)
