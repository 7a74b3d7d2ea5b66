"""Einsum, Attention, RotaryEmbedding, LinearAttention and CausalConvWithState: the float32 kernels against the
numpy references, the references against numpy.einsum and the ONNX reference implementation
(onnx.reference.ReferenceEvaluator), every attribute / opset path, hostile inputs, and end to end against
onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import edgedl
from edgedl import testing
from edgedl.errors import EdgeDLError, ShapeError, UnsupportedOpError
from edgedl.ir import Node
from edgedl.registry import lookup

ort = pytest.importorskip("onnxruntime")


def make_op(op_type, attrs, arrays, n_out=1, opset=25, domain=""):
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(arrays)]
    while names and not names[-1]:
        names.pop()
    outs = [f"o{k}" if k < n_out else "" for k in range(n_out)]
    return lookup(op_type, domain)(Node(op_type, "n", names, outs, dict(attrs), domain), opset), arrays[:len(names)]


def run(op_type, attrs, arrays, n_out=1, opset=25, const=(), domain=""):
    """(kernel outputs, reference outputs, kernel) of a one-node op."""
    op, arrays = make_op(op_type, attrs, arrays, n_out, opset, domain)
    consts = [a if k in const else None for k, a in enumerate(arrays)]
    outs, kern = testing.run_kernel(op, list(arrays), consts)
    return outs, op.ref(*arrays), kern


def onnx_model(op_type, attrs, arrays, n_out, opset, domain="", out_names=None):
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(arrays)]
    while names and not names[-1]:
        names.pop()
    outs = out_names or [f"o{k}" for k in range(n_out)]
    node = helper.make_node(op_type, names, outs, domain=domain or None, **attrs)
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
           for n, a in zip(names, arrays) if n]
    elem = helper.np_dtype_to_tensor_dtype(arrays[0].dtype)
    graph = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info(o, elem, None) for o in outs if o])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports), {n: a for n, a in zip(names, arrays) if n}


def onnx_reference(op_type, attrs, arrays, n_out, opset):
    model, feeds = onnx_model(op_type, attrs, arrays, n_out, opset)
    return ReferenceEvaluator(model).run(None, feeds)


def run_ort(model, feeds, threads=1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def close(got, want, rtol=1e-5, atol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)


def rnd(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# ============================================================================================================
# Einsum
# ============================================================================================================
EINSUM_CASES = [
    ("bij,bjk->bik", [(3, 4, 5), (3, 5, 6)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 13, 8), (2, 3, 17, 8)]),
    ("bhqk,bhkd->bhqd", [(1, 2, 9, 50), (1, 2, 50, 7)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("ij->ji", [(3, 4)]),
    ("ij->i", [(3, 4)]),
    ("i,i", [(5,), (5,)]),
    ("...,...", [(), ()]),
    ("ij,jk", [(2, 1), (3, 3)]),                # a broadcast size-1 index
    ("...ij,...jk", [(4, 1, 2, 3), (5, 3, 2)]),  # broadcast ellipsis dims of different ranks
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    ("ii", [(4, 4)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),
    ("bij,bkj->bki", [(2, 3, 4), (2, 5, 4)]),
    ("abc,cd->dba", [(2, 3, 4), (4, 5)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("Ab,bA->A", [(3, 4), (4, 3)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    (" b i j , b j k -> b i k ", [(2, 3, 4), (2, 4, 5)]),
    ("ijk,ikj->j", [(2, 3, 3), (2, 3, 3)]),
    ("i...,i...->...", [(3, 2, 4), (3, 1, 4)]),
    ("ba", [(2, 3)]),                            # implicit output: sorted letters
    ("bij,jk->bik", [(4, 30, 20), (20, 40)]),    # a shared operand: one GEMM of 120 rows
    ("nhwc,cd->nhwd", [(2, 5, 6, 7), (7, 9)]),
    ("ijkl->lkji", [(2, 3, 4, 5)]),
    ("i,i,i->", [(4,), (4,), (4,)]),
    ("ij,kl->ijkl", [(2, 3), (4, 1)]),
]


@pytest.mark.parametrize("eq,shapes", EINSUM_CASES)
def test_einsum_kernel_and_ref_match_numpy(eq, shapes):
    rng = np.random.default_rng(len(eq))
    xs = [rnd(rng, *s) for s in shapes]
    (y,), (r,), kern = run("Einsum", {"equation": eq}, xs, opset=12)
    want = np.einsum(eq.replace(" ", ""), *[x.astype(np.float64) for x in xs])
    assert kern.impl == "numba"
    close(y, want, 1e-5, 1e-5)
    close(r, want, 1e-6, 1e-6)
    assert y.dtype == np.float32


def test_einsum_large_gemm_paths():
    """Batched GEMMs above the parallel threshold, a transposed B read through a copy, M <= 3 rows."""
    rng = np.random.default_rng(3)
    for eq, shapes in (("bhqd,bhkd->bhqk", [(1, 4, 70, 64), (1, 4, 90, 64)]),
                       ("bij,bjk->bik", [(6, 100, 70), (6, 70, 90)]),
                       ("bij,bkj->bik", [(6, 2, 70), (6, 90, 70)]),
                       ("ij,jk->ki", [(300, 200), (200, 10)])):
        xs = [rnd(rng, *s) for s in shapes]
        (y,), _, _ = run("Einsum", {"equation": eq}, xs, opset=12)
        close(y, np.einsum(eq, *[x.astype(np.float64) for x in xs]), 1e-4, 1e-4)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64, np.float16])
def test_einsum_other_dtypes(dtype):
    rng = np.random.default_rng(0)
    a = (rng.integers(-5, 5, (2, 3, 4))).astype(dtype)
    b = (rng.integers(-5, 5, (2, 4, 5))).astype(dtype)
    (y,), (r,), kern = run("Einsum", {"equation": "bij,bjk->bik"}, [a, b], opset=12)
    assert kern.impl == "numpy" and y.dtype == dtype
    np.testing.assert_array_equal(y, np.einsum("bij,bjk->bik", a, b))


def test_einsum_zero_sized():
    a = np.zeros((2, 0, 3), np.float32)
    b = np.ones((2, 3, 4), np.float32)
    (y,), _, _ = run("Einsum", {"equation": "bij,bjk->bik"}, [a, b], opset=12)
    assert y.shape == (2, 0, 4)
    (y,), _, _ = run("Einsum", {"equation": "ij,jk->ik"}, [np.ones((2, 0), np.float32), np.ones((0, 3), np.float32)],
                     opset=12)
    np.testing.assert_array_equal(y, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("eq,shapes,msg", [
    ("ij,jk->ik", [(2, 3), (4, 5)], "size"),
    ("ij->ii", [(2, 2)], "repeats"),
    ("ij->k", [(2, 2)], "appears in no operand"),
    ("ij,jk", [(2, 3)], "terms"),
    ("ijk->i", [(2, 3)], "letters"),
    ("...ij->ij", [(4, 2, 3)], "'...'"),
    ("ii->i", [(2, 3)], "repeated index"),
    ("i1->i", [(2, 3)], "character"),
    ("i..j->i", [(2, 3)], "ellipsis"),
    ("i->i->i", [(2,)], "'->'"),
])
def test_einsum_bad_equations(eq, shapes, msg):
    xs = [np.ones(s, np.float32) for s in shapes]
    op, _ = make_op("Einsum", {"equation": eq}, xs, opset=12)
    with pytest.raises(ShapeError, match=msg):
        testing.run_kernel(op, xs, [None] * len(xs))


def test_einsum_mixed_dtypes_rejected():
    op, _ = make_op("Einsum", {"equation": "i,i"}, [np.ones(2, np.float32), np.ones(2, np.float64)], opset=12)
    with pytest.raises(EdgeDLError):
        testing.run_kernel(op, [np.ones(2, np.float32), np.ones(2, np.float64)], [None, None])


@pytest.mark.parametrize("eq,shapes", [("bhqd,bhkd->bhqk", [(1, 3, 20, 16), (1, 3, 24, 16)]),
                                       ("...ii->...i", [(2, 4, 4)]),
                                       ("bij,jk", [(3, 4, 5), (5, 6)])])
def test_einsum_end_to_end_vs_onnxruntime(eq, shapes):
    rng = np.random.default_rng(1)
    xs = [rnd(rng, *s) for s in shapes]
    model, feeds = onnx_model("Einsum", {"equation": eq}, xs, 1, 13)
    got = edgedl.load(model.SerializeToString()).run(feeds)["o0"]
    close(got, run_ort(model, feeds)[0], 1e-4, 1e-5)


# ============================================================================================================
# Attention
# ============================================================================================================
def attention_case(rng, nb=1, hq=2, hkv=2, sq=5, skv=7, d=8, dv=8, rank3=False, past=0):
    q = rnd(rng, nb, hq, sq, d)
    k = rnd(rng, nb, hkv, skv, d)
    v = rnd(rng, nb, hkv, skv, dv)
    attrs = {}
    if rank3:
        q = q.transpose(0, 2, 1, 3).reshape(nb, sq, hq * d).copy()
        k = k.transpose(0, 2, 1, 3).reshape(nb, skv, hkv * d).copy()
        v = v.transpose(0, 2, 1, 3).reshape(nb, skv, hkv * dv).copy()
        attrs = {"q_num_heads": hq, "kv_num_heads": hkv}
    pk = rnd(rng, nb, hkv, past, d) if past else None
    pv = rnd(rng, nb, hkv, past, dv) if past else None
    return q, k, v, pk, pv, attrs


def check_outputs(got, ref, rtol=1e-5, atol=2e-5):
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert np.array_equal(np.isnan(g), np.isnan(r))
        assert np.array_equal(np.isinf(g), np.isinf(r))
        fin = np.isfinite(r)
        np.testing.assert_allclose(g[fin].astype(np.float64), r[fin].astype(np.float64), rtol=rtol, atol=atol)


def test_attention_random_configurations_kernel_vs_ref():
    """A sweep over every feature at once: heads / GQA, 3-D / 4-D, blocks of query rows and key panels,
    past, masks (bool / float, every broadcast, short), causal, windows, nonpad, softcap, scale, qk modes."""
    rng = np.random.default_rng(0)
    for _ in range(120):
        hkv = int(rng.integers(1, 3))
        hq = hkv * int(rng.integers(1, 3))
        nb = int(rng.integers(1, 3))
        sq = int(rng.choice([1, 2, 5, 47, 49, 100]))
        skv = int(rng.choice([1, 3, 16, 17, 40]))
        d = int(rng.choice([1, 4, 16, 20]))
        dv = int(rng.choice([1, 5, 16, 33]))
        past = int(rng.choice([0, 0, 3, 17]))
        q, k, v, pk, pv, attrs = attention_case(rng, nb, hq, hkv, sq, skv, d, dv, bool(rng.random() < 0.4), past)
        t = past + skv
        for key, p, val in (("is_causal", 0.5, 1), ("scale", 0.3, float(rng.random())),
                            ("softcap", 0.3, float(rng.random() * 3 + 0.5)),
                            ("left_window_size", 0.3, int(rng.integers(0, 5))),
                            ("right_window_size", 0.2, int(rng.integers(0, 5)))):
            if rng.random() < p:
                attrs[key] = val
        mask = None
        if rng.random() < 0.5:
            shp = [int(rng.choice([1, nb])), int(rng.choice([1, hq])), int(rng.choice([1, sq])),
                   int(rng.choice([t, max(1, t - 2), 1]))][4 - int(rng.integers(1, 5)):]
            mask = (rng.random(shp) < 0.8) if rng.random() < 0.5 else rnd(rng, *shp)
            if mask.dtype == np.float32 and rng.random() < 0.3:
                mask[rng.random(shp) < 0.5] = -np.inf
        nonpad = rng.integers(-1, skv + 2, size=nb).astype(np.int64) if (not past and rng.random() < 0.3) else None
        n_out = int(rng.integers(1, 5))
        if n_out == 4:
            attrs["qk_matmul_output_mode"] = int(rng.integers(0, 4))
        const = (3,) if rng.random() < 0.3 else ()
        got, ref, kern = run("Attention", attrs, [q, k, v, mask, pk, pv, nonpad], n_out, 25, const)
        assert kern.impl == "numba"
        check_outputs(got, ref, 1e-4, 1e-4)


ATTN_REF_CASES = [
    (23, {}, {}),
    (23, {"is_causal": 1}, {"sq": 4, "skv": 6}),
    (23, {"scale": 0.3, "softcap": 1.5}, {"hq": 4, "hkv": 2}),
    (23, {"is_causal": 1}, {"rank3": True, "hq": 6, "hkv": 2, "past": 3}),
    (23, {"qk_matmul_output_mode": 0, "softcap": 2.0}, {"past": 2}),
    (23, {"qk_matmul_output_mode": 1, "softcap": 2.0}, {"past": 2}),
    (23, {"qk_matmul_output_mode": 2, "is_causal": 1}, {"past": 2, "mask": "float4d"}),
    (23, {"qk_matmul_output_mode": 3, "is_causal": 1}, {"past": 2, "mask": "bool2d"}),
    (23, {}, {"mask": "bool_short"}),
    (23, {"is_causal": 1}, {"mask": "float_short"}),
    (24, {"is_causal": 1}, {"nonpad": [4, 7], "nb": 2, "skv": 7}),
    (24, {}, {"nonpad": [0, 9], "nb": 2, "skv": 7}),
    (24, {"is_causal": 1}, {"nonpad": [2], "sq": 4, "skv": 4}),  # negative offset: empty leading rows
    (24, {"softmax_precision": 1}, {}),
    (25, {"left_window_size": 2, "is_causal": 1}, {"mask": "bool1d"}),
    (25, {"left_window_size": 1, "right_window_size": 2}, {"past": 3, "rank3": True}),
    (25, {"left_window_size": 2, "is_causal": 1}, {"nonpad": [5, 7], "nb": 2, "skv": 7, "mask": "float3d"}),
]


def _ref_case(opset, attrs, spec, dtype=np.float32):
    rng = np.random.default_rng(opset)
    shape_keys = ("nb", "hq", "hkv", "sq", "skv", "d", "dv", "rank3", "past")
    q, k, v, pk, pv, extra = attention_case(rng, **{k_: v_ for k_, v_ in spec.items() if k_ in shape_keys})
    nb, hq = q.shape[0], extra.get("q_num_heads", q.shape[1])
    sq = q.shape[1] if q.ndim == 3 else q.shape[2]
    t = (spec.get("past", 0)) + (k.shape[1] if k.ndim == 3 else k.shape[2])
    masks = {"float4d": lambda: rnd(rng, nb, hq, sq, t), "bool2d": lambda: rng.random((sq, t)) < 0.7,
             "bool_short": lambda: rng.random((nb, 1, sq, t - 2)) < 0.7, "float_short": lambda: rnd(rng, sq, t - 3),
             "bool1d": lambda: rng.random(t) < 0.8, "float3d": lambda: rnd(rng, hq, sq, t)}
    mask = masks[spec["mask"]]() if "mask" in spec else None
    nonpad = np.array(spec["nonpad"], np.int64) if "nonpad" in spec else None
    cast = (lambda a: None if a is None else a.astype(dtype))
    mask = mask if (mask is None or mask.dtype == np.bool_) else mask.astype(dtype)
    arrays = [cast(q), cast(k), cast(v), mask, cast(pk), cast(pv), nonpad]
    return {**attrs, **extra}, arrays


@pytest.mark.parametrize("opset,attrs,spec", ATTN_REF_CASES)
def test_attention_matches_onnx_reference(opset, attrs, spec):
    attrs, arrays = _ref_case(opset, attrs, spec)
    n_out = 4 if "qk_matmul_output_mode" in attrs else (3 if arrays[4] is not None else 1)
    got, ref, kern = run("Attention", attrs, arrays, n_out, opset)
    want = onnx_reference("Attention", attrs, arrays, n_out, opset)
    assert kern.impl == "numba"
    check_outputs(got, want, 1e-4, 1e-5)
    check_outputs(ref, want, 1e-5, 1e-6)


@pytest.mark.parametrize("opset,attrs,spec", [ATTN_REF_CASES[1], ATTN_REF_CASES[3], ATTN_REF_CASES[10]])
def test_attention_float16_and_float64_follow_the_reference(opset, attrs, spec):
    for dtype, tol in ((np.float16, 2e-3), (np.float64, 1e-12)):
        attrs_, arrays = _ref_case(opset, attrs, spec, dtype)
        got, _, kern = run("Attention", attrs_, arrays, 1, opset)
        want = onnx_reference("Attention", attrs_, arrays, 1, opset)
        assert kern.impl == "numpy" and got[0].dtype == dtype
        check_outputs(got, want, tol, tol)


def test_attention_softmax_precision_float16_of_float32():
    attrs, arrays = _ref_case(23, {"softmax_precision": 10}, {})
    got, _, kern = run("Attention", attrs, arrays, 1, 23)
    assert kern.impl == "numpy"
    check_outputs(got, onnx_reference("Attention", attrs, arrays, 1, 23), 2e-3, 2e-3)


def test_attention_fully_masked_rows_are_zero():
    rng = np.random.default_rng(5)
    q, k, v, _, _, _ = attention_case(rng, sq=3, skv=4)
    mask = np.ones((3, 4), bool)
    mask[1] = False
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    for m in (mask, fmask):
        (y, _, _, qk), _, _ = run("Attention", {"qk_matmul_output_mode": 3}, [q, k, v, m], 4, 23)
        assert np.all(y[:, :, 1] == 0) and np.all(qk[:, :, 1] == 0)
        assert np.all(np.abs(y[:, :, 0]) > 0)
        np.testing.assert_allclose(qk[:, :, 0].sum(-1), 1.0, rtol=1e-5)


def test_attention_nan_inputs_propagate_like_numpy():
    rng = np.random.default_rng(6)
    q, k, v, _, _, _ = attention_case(rng, sq=3, skv=4)
    q[0, 0, 1, 0] = np.nan
    got, ref, _ = run("Attention", {}, [q, k, v], 1, 23)
    check_outputs(got, ref)
    assert np.isnan(got[0][0, 0, 1]).all() and np.isfinite(got[0][0, 0, 0]).all()


def test_attention_large_parallel_and_long_keys():
    rng = np.random.default_rng(7)
    q, k, v, _, _, _ = attention_case(rng, nb=2, hq=4, hkv=2, sq=97, skv=300, d=32, dv=24)
    for attrs in ({}, {"is_causal": 1}):
        got, ref, _ = run("Attention", attrs, [q, k, v], 1, 23)
        check_outputs(got, ref, 1e-4, 1e-5)


@pytest.mark.parametrize("arrays_fn,attrs,msg", [
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 1, 2, 5, 6), rnd(r, 1, 2, 5, 4)], {}, "head size"),
    (lambda r: [rnd(r, 1, 3, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 5, 4)], {}, "multiple"),
    (lambda r: [rnd(r, 1, 3, 8), rnd(r, 1, 5, 8), rnd(r, 1, 5, 8)], {}, "q_num_heads"),
    (lambda r: [rnd(r, 1, 3, 8), rnd(r, 1, 5, 8), rnd(r, 1, 5, 8)], {"q_num_heads": 3, "kv_num_heads": 1},
     "multiple"),
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 6, 4)], {}, "sequence length"),
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 2, 2, 5, 4), rnd(r, 2, 2, 5, 4)], {}, "batch"),
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 5, 4), rnd(r, 3, 6)], {}, "more than"),
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 5, 4), rnd(r, 2, 5)], {}, "broadcast"),
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 5, 4), None, rnd(r, 1, 2, 2, 4)], {},
     "together"),
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 5, 4), None, rnd(r, 1, 2, 2, 3),
                rnd(r, 1, 2, 2, 4)], {}, "past_key"),
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 5, 4), None, None, None,
                np.array([1, 2], np.int64)], {}, "nonpad_kv_seqlen"),
    (lambda r: [rnd(r, 1, 2, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 5, 4), None, None, None,
                np.array([1], np.int32)], {}, "int64"),
    (lambda r: [rnd(r, 2, 3, 4), rnd(r, 1, 2, 5, 4), rnd(r, 1, 2, 5, 4)], {}, "3-D or all 4-D"),
])
def test_attention_bad_inputs(arrays_fn, attrs, msg):
    arrays = arrays_fn(np.random.default_rng(0))
    op, arrays = make_op("Attention", attrs, arrays, 1, 24)
    with pytest.raises(ShapeError, match=msg):
        testing.run_kernel(op, arrays, [None] * len(arrays))


@pytest.mark.parametrize("attrs", [{"qk_matmul_output_mode": 4}, {"softmax_precision": 7},
                                   {"left_window_size": -2}])
def test_attention_bad_attributes(attrs):
    with pytest.raises(ShapeError):
        make_op("Attention", attrs, [np.ones((1, 1, 1, 1), np.float32)] * 3, 1, 25)


def test_attention_int_dtype_unsupported():
    arrays = [np.ones((1, 1, 2, 2), np.int32)] * 3
    op, _ = make_op("Attention", {}, arrays, 1, 23)
    with pytest.raises(UnsupportedOpError):
        testing.run_kernel(op, arrays, [None] * 3)


def test_attention_nonpad_values_outside_the_keys_are_safe():
    rng = np.random.default_rng(8)
    q, k, v, _, _, _ = attention_case(rng, nb=3, sq=2, skv=5)
    nonpad = np.array([-7, 1 << 40, 3], np.int64)
    got, ref, _ = run("Attention", {"is_causal": 1}, [q, k, v, None, None, None, nonpad], 1, 24)
    check_outputs(got, ref)
    assert np.all(got[0][0] == 0)


@pytest.mark.parametrize("case", ["4d", "3d_gqa_past", "causal_mask"])
def test_attention_end_to_end_vs_onnxruntime(case):
    rng = np.random.default_rng(9)
    if case == "4d":
        q, k, v, pk, pv, attrs = attention_case(rng, nb=2, hq=4, hkv=4, sq=33, skv=33, d=16, dv=16)
        arrays, n_out = [q, k, v], 1
    elif case == "3d_gqa_past":
        q, k, v, pk, pv, attrs = attention_case(rng, nb=1, hq=8, hkv=2, sq=1, skv=1, d=16, dv=16, rank3=True,
                                                past=20)
        attrs["is_causal"] = 1
        arrays, n_out = [q, k, v, None, pk, pv], 3
    else:
        q, k, v, pk, pv, attrs = attention_case(rng, nb=1, hq=2, hkv=2, sq=10, skv=10, d=8, dv=8)
        attrs["is_causal"] = 1
        arrays, n_out = [q, k, v, rnd(rng, 10, 10)], 1
    model, feeds = onnx_model("Attention", attrs, arrays, n_out, 23)
    got = edgedl.load(model.SerializeToString()).run(feeds)
    want = run_ort(model, feeds)
    for j, w in enumerate(want):
        close(got[f"o{j}"], w, 1e-4, 1e-5)


# ============================================================================================================
# RotaryEmbedding
# ============================================================================================================
ROPE_CASES = [
    ({}, "4d_pos"), ({"interleaved": 1}, "4d_pos"), ({"rotary_embedding_dim": 4}, "4d_pos"),
    ({"interleaved": 1, "rotary_embedding_dim": 4}, "4d_pos"), ({"num_heads": 4}, "3d_pos"),
    ({"num_heads": 4, "interleaved": 1, "rotary_embedding_dim": 2}, "3d_pos"), ({}, "4d_nopos"),
    ({"interleaved": 1}, "4d_nopos"), ({"num_heads": 4}, "3d_nopos"),
]


def rope_arrays(rng, kind, attrs, nb=2, nh=4, ns=3, hd=8, npos=50):
    rd = attrs.get("rotary_embedding_dim", 0) or hd
    half = rd // 2
    x = rnd(rng, nb, nh, ns, hd) if kind.startswith("4d") else rnd(rng, nb, ns, nh * hd)
    if kind.endswith("_pos"):
        return [x, rnd(rng, npos, half), rnd(rng, npos, half), rng.integers(0, npos, (nb, ns)).astype(np.int64)]
    return [x, rnd(rng, nb, ns, half), rnd(rng, nb, ns, half)]


@pytest.mark.parametrize("attrs,kind", ROPE_CASES)
def test_rotary_matches_onnx_reference(attrs, kind):
    rng = np.random.default_rng(11)
    arrays = rope_arrays(rng, kind, attrs)
    (y,), (r,), kern = run("RotaryEmbedding", attrs, arrays, 1, 23)
    want = onnx_reference("RotaryEmbedding", attrs, arrays, 1, 23)[0]
    assert kern.impl == "numba"
    close(y, want, 1e-5, 1e-6)
    close(r, want, 1e-6, 1e-6)


def test_rotary_large_parallel_and_constant_positions():
    rng = np.random.default_rng(12)
    arrays = rope_arrays(rng, "4d_pos", {}, nb=2, nh=16, ns=256, hd=64, npos=300)
    for const in ((), (3,)):
        (y,), (r,), _ = run("RotaryEmbedding", {}, arrays, 1, 23, const)
        close(y, r, 1e-5, 1e-6)


def test_rotary_float16_uses_reference():
    rng = np.random.default_rng(13)
    arrays = [a.astype(np.float16) if a.dtype == np.float32 else a for a in rope_arrays(rng, "4d_pos", {})]
    (y,), _, kern = run("RotaryEmbedding", {}, arrays, 1, 23)
    assert kern.impl == "numpy" and y.dtype == np.float16
    close(y, onnx_reference("RotaryEmbedding", {}, arrays, 1, 23)[0], 2e-3, 2e-3)


@pytest.mark.parametrize("bad", [-1, 50])
def test_rotary_position_ids_out_of_range(bad):
    rng = np.random.default_rng(14)
    arrays = rope_arrays(rng, "4d_pos", {})
    arrays[3][1, 2] = bad
    op, _ = make_op("RotaryEmbedding", {}, arrays, 1, 23)
    with pytest.raises(EdgeDLError, match="out of range"):
        testing.run_kernel(op, arrays, [None] * 4)
    with pytest.raises(EdgeDLError, match="out of range"):
        testing.run_kernel(op, arrays, [None, None, None, arrays[3]])


@pytest.mark.parametrize("attrs,kind,mutate,msg", [
    ({}, "3d_pos", None, "num_heads"),
    ({"num_heads": 3}, "3d_pos", None, "multiple"),
    ({"rotary_embedding_dim": 3}, "4d_pos", None, "even"),
    ({"rotary_embedding_dim": 10}, "4d_pos", None, "even"),
    ({}, "4d_pos", lambda a: a.__setitem__(1, a[1][:, :3]), "differ"),
    ({}, "4d_pos", lambda a: a.__setitem__(3, a[3].astype(np.int32)), "int64"),
    ({}, "4d_nopos", lambda a: a.__setitem__(1, a[1][:, :2]) or a.__setitem__(2, a[2][:, :2]), "without"),
])
def test_rotary_bad_inputs(attrs, kind, mutate, msg):
    rng = np.random.default_rng(15)
    arrays = rope_arrays(rng, kind, {})
    if mutate:
        mutate(arrays)
    with pytest.raises(ShapeError, match=msg):
        op, _ = make_op("RotaryEmbedding", attrs, arrays, 1, 23)
        testing.run_kernel(op, arrays, [None] * len(arrays))


def test_rotary_end_to_end_vs_onnxruntime():
    rng = np.random.default_rng(16)
    arrays = rope_arrays(rng, "3d_pos", {}, nb=1, nh=4, ns=6, hd=16)
    model, feeds = onnx_model("RotaryEmbedding", {"num_heads": 4, "interleaved": 1}, arrays, 1, 23)
    close(edgedl.load(model.SerializeToString()).run(feeds)["o0"], run_ort(model, feeds)[0], 1e-5, 1e-6)


# ============================================================================================================
# LinearAttention / CausalConvWithState (opset 27)
# ============================================================================================================
def linear_arrays(rng, rule, nb=2, t=5, hq=4, hkv=2, dk=4, dv=3, past=True, per_key=False, beta_heads=True):
    q, k, v = rnd(rng, nb, t, hq * dk), rnd(rng, nb, t, hkv * dk), rnd(rng, nb, t, hkv * dv)
    k = k / np.linalg.norm(k.reshape(nb, t, hkv, dk), axis=-1, keepdims=True).repeat(dk, -1).reshape(k.shape)
    st = rnd(rng, nb, hkv, dk, dv) if past else None
    decay = -np.abs(rnd(rng, nb, t, hkv * dk if per_key else hkv)) * 0.3 if rule in ("gated", "gated_delta") else None
    beta = (1 / (1 + np.exp(-rnd(rng, nb, t, hkv if beta_heads else 1)))).astype(np.float32) \
        if rule in ("delta", "gated_delta") else None
    return [q, k.astype(np.float32), v, st, None if decay is None else decay.astype(np.float32), beta]


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
@pytest.mark.parametrize("variant", ["past", "nopast_perkey", "mqa_beta1"])
def test_linear_attention_matches_onnx_reference(rule, variant):
    rng = np.random.default_rng(17)
    kw = {"past": variant == "past", "per_key": variant == "nopast_perkey", "beta_heads": variant != "mqa_beta1"}
    if variant == "mqa_beta1":
        kw.update(hkv=1)
    arrays = linear_arrays(rng, rule, **kw)
    attrs = {"update_rule": rule, "q_num_heads": 4, "kv_num_heads": kw.get("hkv", 2)}
    if variant == "past":
        attrs["scale"] = 0.7
    got, ref, kern = run("LinearAttention", attrs, arrays, 2, 27)
    want = onnx_reference("LinearAttention", attrs, arrays, 2, 27)
    assert kern.impl == "numba"
    for g, r, w in zip(got, ref, want):
        close(g, w, 1e-5, 1e-5)
        close(r, w, 1e-6, 1e-6)


def test_linear_attention_float16():
    rng = np.random.default_rng(18)
    arrays = [None if a is None else a.astype(np.float16) for a in linear_arrays(rng, "gated_delta")]
    attrs = {"q_num_heads": 4, "kv_num_heads": 2}
    got, _, _ = run("LinearAttention", attrs, arrays, 2, 27)
    want = onnx_reference("LinearAttention", attrs, arrays, 2, 27)
    for g, w in zip(got, want):
        assert g.dtype == np.float16
        close(g, w, 2e-3, 2e-3)


@pytest.mark.parametrize("attrs,drop,msg", [
    ({"update_rule": "linear"}, None, "forbids"),
    ({"update_rule": "gated_delta"}, 4, "requires"),
    ({"update_rule": "bad"}, None, "update_rule"),
    ({"q_num_heads": 3}, None, "multiple"),
])
def test_linear_attention_bad_inputs(attrs, drop, msg):
    rng = np.random.default_rng(19)
    arrays = linear_arrays(rng, "gated_delta")
    if drop is not None:
        arrays[drop] = None
    full = {"q_num_heads": 4, "kv_num_heads": 2, **attrs}
    with pytest.raises(ShapeError, match=msg):
        op, arrays = make_op("LinearAttention", full, arrays, 2, 27)
        testing.run_kernel(op, arrays, [None] * len(arrays))


@pytest.mark.parametrize("activation", ["none", "silu", "swish"])
@pytest.mark.parametrize("kk,bias,past", [(4, True, True), (1, False, False), (3, False, True), (5, True, False)])
def test_causal_conv_matches_onnx_reference(activation, kk, bias, past):
    rng = np.random.default_rng(20)
    nb, nc, n = 2, 5, 3
    arrays = [rnd(rng, nb, nc, n), rnd(rng, nc, 1, kk), rnd(rng, nc) if bias else None,
              rnd(rng, nb, nc, kk - 1) if past else None]
    attrs = {"activation": activation}
    got, ref, kern = run("CausalConvWithState", attrs, arrays, 2, 27)
    want = onnx_reference("CausalConvWithState", attrs, arrays, 2, 27)
    assert kern.impl == "numba"
    for g, r, w in zip(got, ref, want):
        close(g, w, 1e-5, 1e-6)
        close(r, w, 1e-6, 1e-6)


@pytest.mark.parametrize("shapes,msg", [
    ([(2, 3, 4), (3, 2, 2)], "weight"),
    ([(2, 3, 4), (3, 1, 2), (4,)], "bias"),
    ([(2, 3, 4), (3, 1, 3), None, (2, 3, 1)], "past_state"),
    ([(2, 3), (3, 1, 2)], "input"),
])
def test_causal_conv_bad_inputs(shapes, msg):
    arrays = [None if s is None else np.ones(s, np.float32) for s in shapes]
    with pytest.raises(ShapeError, match=msg):
        op, arrays = make_op("CausalConvWithState", {}, arrays, 2, 27)
        testing.run_kernel(op, arrays, [None] * len(arrays))


# ============================================================================================================
# onnxruntime contrib ops: com.microsoft Attention and MultiHeadAttention
# ============================================================================================================
MS = "com.microsoft"


def contrib_model(op_type, named, outs, attrs):
    names = [n if a is not None else "" for n, a in named]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op_type, names, outs, domain=MS, **attrs)
    vi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
          for n, a in named if a is not None]
    graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                 for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    return model, {n: a for n, a in named if a is not None}


def compare_with_ort(model, feeds):
    got = edgedl.load(model.SerializeToString()).run(feeds)
    want = run_ort(model, feeds)
    for g, w in zip(got.values(), want):
        close(g, w, 1e-4, 1e-5)


@pytest.mark.parametrize("case", ["plain", "bias_len_mask", "raw_mask_2d", "raw_mask_3d", "left_right_pad",
                                  "unidirectional", "past_present", "attention_bias", "qkv_sizes"])
def test_contrib_attention_vs_onnxruntime(case):
    rng = np.random.default_rng(21)
    nb, s, d, nh = 2, 5, 16, 2
    x, w, b = rnd(rng, nb, s, d), rnd(rng, d, 3 * d) * 0.3, rnd(rng, 3 * d)
    attrs, mask, past, ab, outs = {"num_heads": nh}, None, None, None, ["y"]
    if case == "plain":
        b = None
    elif case == "bias_len_mask":
        mask = np.array([3, 5], np.int32)
    elif case == "raw_mask_2d":
        mask = (rng.random((nb, s)) < 0.7).astype(np.int32)
    elif case == "raw_mask_3d":
        mask = (rng.random((nb, s, s)) < 0.7).astype(np.int32)
    elif case == "left_right_pad":
        mask = np.array([4, 5, 1, 0], np.int32)
    elif case == "unidirectional":
        attrs["unidirectional"] = 1
    elif case == "past_present":
        past, outs = rnd(rng, 2, nb, nh, 3, d // nh), ["y", "present"]
        attrs["unidirectional"] = 1
    elif case == "attention_bias":
        ab = rnd(rng, 1, nh, s, s)
    else:
        w, b = rnd(rng, d, 2 * d + 8), rnd(rng, 2 * d + 8)
        attrs["qkv_hidden_sizes"] = [d, d, 8]
    model, feeds = contrib_model("Attention", [("x", x), ("w", w), ("b", b), ("mask", mask), ("past", past),
                                               ("ab", ab)], outs, attrs)
    compare_with_ort(model, feeds)


@pytest.mark.parametrize("case", ["3d", "3d_bias", "bnsh", "past_present", "len_mask", "raw_mask_2d",
                                  "raw_mask_3d", "unidirectional", "attention_bias", "causal_past", "value_dim"])
def test_multihead_attention_vs_onnxruntime(case):
    rng = np.random.default_rng(22)
    nb, s, lk, nh, d = 2, 4, 6, 2, 8
    q, k, v = rnd(rng, nb, s, nh * d), rnd(rng, nb, lk, nh * d), rnd(rng, nb, lk, nh * d)
    bias = mask = ab = pk = pv = None
    attrs, outs = {"num_heads": nh}, ["y"]
    if case == "3d_bias":
        bias = rnd(rng, 3 * nh * d)
    elif case == "bnsh":
        k, v = rnd(rng, nb, nh, lk, d), rnd(rng, nb, nh, lk, d)
    elif case in ("past_present", "causal_past"):
        pk, pv, outs, bias = rnd(rng, nb, nh, 3, d), rnd(rng, nb, nh, 3, d), ["y", "opk", "opv"], rnd(rng, 3 * nh * d)
        if case == "causal_past":
            attrs["unidirectional"] = 1
            k, v = rnd(rng, nb, s, nh * d), rnd(rng, nb, s, nh * d)
    elif case == "len_mask":
        mask = np.array([2, 6], np.int32)
    elif case == "raw_mask_2d":
        mask = (rng.random((nb, lk)) < 0.7).astype(np.int32)
    elif case == "raw_mask_3d":
        mask = (rng.random((nb, s, lk)) < 0.7).astype(np.int32)
    elif case == "unidirectional":
        attrs["unidirectional"] = 1
        k, v = rnd(rng, nb, s, nh * d), rnd(rng, nb, s, nh * d)
    elif case == "attention_bias":
        ab = rnd(rng, nb, 1, s, lk)
    else:
        v = rnd(rng, nb, lk, nh * 4)
    model, feeds = contrib_model("MultiHeadAttention", [("q", q), ("k", k), ("v", v), ("bias", bias), ("mask", mask),
                                                        ("ab", ab), ("pk", pk), ("pv", pv)], outs, attrs)
    compare_with_ort(model, feeds)


def test_multihead_attention_packed_layouts_match_separate_inputs():
    """Packed QKV (B, S, H, 3, D) and packed KV (B, L, H, 2, D) (not on onnxruntime's CPU provider): the same
    result as the separate 3-D tensors."""
    rng = np.random.default_rng(23)
    nb, s, nh, d = 2, 5, 3, 4
    q, k, v = rnd(rng, nb, s, nh, d), rnd(rng, nb, s, nh, d), rnd(rng, nb, s, nh, d)
    attrs = {"num_heads": nh}
    (want,), _, _ = run("MultiHeadAttention", attrs, [q.reshape(nb, s, -1), k.reshape(nb, s, -1),
                                                      v.reshape(nb, s, -1)], 1, 1, domain=MS)
    (got,), (ref, *_), kern = run("MultiHeadAttention", attrs, [np.stack([q, k, v], axis=3)], 1, 1, domain=MS)
    assert kern.impl == "numba"
    close(got, want, 1e-5, 1e-6)
    close(ref, want, 1e-5, 1e-6)
    (got,), _, _ = run("MultiHeadAttention", attrs, [q.reshape(nb, s, -1), np.stack([k, v], axis=3)], 1, 1, domain=MS)
    close(got, want, 1e-5, 1e-6)


@pytest.mark.parametrize("op_type,attrs,shapes,err", [
    ("Attention", {}, [(1, 2, 6), (6, 18)], ShapeError),                        # no num_heads
    ("Attention", {"num_heads": 2, "do_rotary": 1}, [(1, 2, 6), (6, 18)], UnsupportedOpError),
    ("Attention", {"num_heads": 4}, [(1, 2, 6), (6, 18)], ShapeError),          # 6 not a multiple of 4
    ("Attention", {"num_heads": 2}, [(1, 2, 6), (5, 18)], ShapeError),
    ("MultiHeadAttention", {"num_heads": 2}, [(1, 2, 6), (1, 3, 4), (1, 3, 6)], ShapeError),
])
def test_contrib_bad_inputs(op_type, attrs, shapes, err):
    arrays = [np.ones(s, np.float32) for s in shapes]
    with pytest.raises(err):
        op, arrays = make_op(op_type, attrs, arrays, 1, 1, domain=MS)
        testing.run_kernel(op, arrays, [None] * len(arrays))


def test_contrib_unsupported_mask_shape():
    arrays = [np.ones((2, 3, 4), np.float32), np.ones((4, 12), np.float32), None, np.ones((8,), np.int32)]
    op, arrays = make_op("Attention", {"num_heads": 2}, arrays, 1, 1, domain=MS)
    with pytest.raises(UnsupportedOpError, match="mask"):
        testing.run_kernel(op, arrays, [None] * len(arrays))


# ============================================================================================================
# serial and parallel kernels agree bit for bit
# ============================================================================================================
def test_parallel_and_serial_kernels_agree(monkeypatch):
    import numba

    from edgedl.kernels.cpu import config as cfg

    rng = np.random.default_rng(24)
    q, k, v, _, _, attrs = attention_case(rng, nb=2, hq=4, hkv=2, sq=60, skv=50, d=16, dv=8, rank3=True)
    attn = ("Attention", {**attrs, "is_causal": 1}, [q, k, v, rnd(rng, 60, 50)], 1, 23)
    rope = ("RotaryEmbedding", {}, rope_arrays(rng, "4d_pos", {}, nb=2, nh=4, ns=30, hd=16), 1, 23)
    eins = ("Einsum", {"equation": "bij,bjk->bik"}, [rnd(rng, 5, 30, 20), rnd(rng, 5, 20, 40)], 1, 12)
    lin = ("LinearAttention", {"q_num_heads": 4, "kv_num_heads": 2}, linear_arrays(rng, "gated_delta"), 2, 27)
    conv = ("CausalConvWithState", {"activation": "silu"}, [rnd(rng, 2, 5, 9), rnd(rng, 5, 1, 4)], 2, 27)
    threads = numba.get_num_threads()
    for op_type, a, arrays, n_out, opset in (attn, rope, eins, lin, conv):
        monkeypatch.setattr(cfg, "PARALLEL_MIN_WORK", 1 << 40)
        serial, _, _ = run(op_type, a, arrays, n_out, opset)
        monkeypatch.setattr(cfg, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(cfg, "GEMM_PARALLEL_MIN_WORK", 0)
        parallel, ref, _ = run(op_type, a, arrays, n_out, opset)
        try:
            numba.set_num_threads(1)
            one, _, _ = run(op_type, a, arrays, n_out, opset)
        finally:
            numba.set_num_threads(threads)
        for s, p, o, r in zip(serial, parallel, one, ref):
            np.testing.assert_array_equal(s, p, err_msg=op_type)
            np.testing.assert_array_equal(s, o, err_msg=op_type)
            close(s, r, 1e-4, 1e-5)
