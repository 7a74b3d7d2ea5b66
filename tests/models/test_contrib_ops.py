"""onnxruntime contrib ops (domain com.microsoft) that onnxruntime's optimizer and exporters write into saved
models: single-node models against onnxruntime (or, for the ops onnxruntime runs only on CUDA, against numpy),
hostile inputs, and the real-world path: models optimized by onnxruntime (optimized_model_filepath) loaded in
edgedl."""
import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import edgedl
from edgedl import zoo
from edgedl.errors import EdgeDLError, UnsupportedOpError

ort = pytest.importorskip("onnxruntime")

MS = "com.microsoft"
_TP = {np.dtype(np.float32): TP.FLOAT, np.dtype(np.float64): TP.DOUBLE, np.dtype(np.int32): TP.INT32,
       np.dtype(np.int64): TP.INT64, np.dtype(np.int8): TP.INT8, np.dtype(np.uint8): TP.UINT8,
       np.dtype(np.bool_): TP.BOOL, np.dtype(np.float16): TP.FLOAT16}


def rng(seed=0):
    return np.random.default_rng(seed)


def node_model(op, inputs, attrs=None, outputs=("y",), consts=(), domain=MS, opset=17):
    """A one-node model: ``inputs`` is a list of (name, array) (name "" / array None: omitted); names in
    ``consts`` become initializers, the others graph inputs."""
    names = [n for n, _ in inputs]
    node = h.make_node(op, names, list(outputs), domain=domain, **(attrs or {}))
    graph_inputs = [h.make_tensor_value_info(n, _TP[np.asarray(a).dtype], np.shape(a))
                    for n, a in inputs if n and n not in consts]
    inits = [nh.from_array(np.asarray(a), n) for n, a in inputs if n and n in consts]
    graph = h.make_graph([node], "g", graph_inputs, [onnx.ValueInfoProto(name=o) for o in outputs if o], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid(MS, 1)])


def feeds_of(inputs, consts=()):
    return {n: np.asarray(a) for n, a in inputs if n and n not in consts}


def run_ort(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def run_edgedl(model, feeds):
    return edgedl.load(model.SerializeToString()).run(feeds)


def assert_close(got, want, rtol=1e-5, atol=1e-5):
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def check_vs_ort(op, inputs, attrs=None, outputs=("y",), consts=(), rtol=1e-5, atol=1e-5, ort_inputs=None):
    """The op in edgedl against onnxruntime; ``ort_inputs``: what onnxruntime gets instead (the same values)."""
    model = node_model(op, inputs, attrs, outputs, consts)
    feeds = feeds_of(inputs, consts)
    if ort_inputs is None:
        want = run_ort(model, feeds)
    else:
        want = run_ort(node_model(op, ort_inputs, attrs, outputs, consts), feeds_of(ort_inputs, consts))
    got = run_edgedl(model, feeds)
    assert_close(got, want, rtol, atol)
    return got


def raises(op, inputs, attrs=None, outputs=("y",), consts=(), exc=EdgeDLError, match=None):
    model = node_model(op, inputs, attrs, outputs, consts)
    with pytest.raises(exc, match=match):
        run_edgedl(model, feeds_of(inputs, consts))


def f32(*shape, seed=0):
    return rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# FusedConv

CONV_ACTS = [
    ({}, "none"),
    ({"activation": "Relu"}, "relu"),
    ({"activation": "Tanh"}, "tanh"),
    ({"activation": "Sigmoid"}, "sigmoid"),
    ({"activation": "LeakyRelu", "activation_params": [0.1]}, "leaky"),
    ({"activation": "Clip", "activation_params": [-0.5, 0.7]}, "clip"),
    ({"activation": "HardSigmoid", "activation_params": [0.3, 0.4]}, "hardsigmoid"),
]


@pytest.mark.parametrize("act", [a for a, _ in CONV_ACTS], ids=[i for _, i in CONV_ACTS])
@pytest.mark.parametrize("variant", ["bias", "bias_z", "no_bias_z", "dynamic_w_z"])
def test_fused_conv_2d(act, variant):
    x, w, b, z = f32(2, 4, 7, 6, seed=1), f32(6, 2, 3, 3, seed=2), f32(6, seed=3), f32(2, 6, 4, 3, seed=4)
    attrs = dict(act, group=2, strides=[2, 2], pads=[1, 1, 1, 0], dilations=[1, 1], kernel_shape=[3, 3])
    ins = [("x", x), ("w", w)]
    if variant == "bias":
        ins.append(("b", b))
    elif variant in ("bias_z", "dynamic_w_z"):
        ins += [("b", b), ("z", z)]
    else:
        ins += [("", None), ("z", z)]
    consts = ("b",) if variant == "dynamic_w_z" else ("w", "b")
    check_vs_ort("FusedConv", ins, attrs, consts=consts)


@pytest.mark.parametrize("shape", [(2, 3, 9), (1, 2, 4, 5, 4)], ids=["1d", "3d"])
def test_fused_conv_1d_3d(shape):
    nsp = len(shape) - 2
    x = f32(*shape, seed=5)
    w = f32(4, shape[1], *([2] * nsp), seed=6)
    out_sp = [s - 1 for s in shape[2:]]
    z = f32(shape[0], 4, *out_sp, seed=7)
    check_vs_ort("FusedConv", [("x", x), ("w", w), ("b", f32(4, seed=8)), ("z", z)],
                 {"activation": "LeakyRelu", "activation_params": [0.2]}, consts=("w", "b"))


def test_fused_conv_auto_pad_and_float64():
    x, w = f32(1, 3, 6, 6, seed=9), f32(2, 3, 3, 3, seed=10)
    check_vs_ort("FusedConv", [("x", x), ("w", w)], {"activation": "Relu", "auto_pad": "SAME_UPPER",
                                                      "strides": [2, 2]}, consts=("w",))
    got = run_edgedl(node_model("FusedConv", [("x", x.astype(np.float64)), ("w", w.astype(np.float64))],
                                {"activation": "Sigmoid"}), {"x": x.astype(np.float64), "w": w.astype(np.float64)})
    want = run_edgedl(node_model("FusedConv", [("x", x), ("w", w)], {"activation": "Sigmoid"}), {"x": x, "w": w})
    assert got["y"].dtype == np.float64
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)


def test_fused_conv_errors():
    x, w = f32(1, 2, 5, 5), f32(3, 2, 3, 3)
    raises("FusedConv", [("x", x), ("w", w)], {"activation": "LeakyRelu"}, consts=("w",), match="activation_params")
    raises("FusedConv", [("x", x), ("w", w)], {"activation": "Clip", "activation_params": [0.0]}, consts=("w",))
    raises("FusedConv", [("x", x), ("w", w)], {"activation": "Gelu"}, consts=("w",), exc=UnsupportedOpError)
    raises("FusedConv", [("x", x), ("w", f32(3, 3, 3, 3))], {"activation": "Relu"}, consts=("w",), match="channels")
    raises("FusedConv", [("x", x), ("w", w), ("", None), ("z", f32(1, 3, 4, 4))], {"activation": "Relu"},
           consts=("w",), match="residual")


# ---------------------------------------------------------------------------------------------------------
# FusedGemm

GEMM_ACTS = [
    ({"activation": "Relu"}, "relu"),
    ({"activation": "LeakyRelu", "activation_alpha": 0.15}, "leaky"),
    ({"activation": "Sigmoid"}, "sigmoid"),
    ({"activation": "Tanh"}, "tanh"),
    ({"activation": "HardSigmoid", "activation_alpha": 0.3, "activation_beta": 0.45}, "hardsigmoid"),
    ({"activation": "Elu", "activation_alpha": 0.7}, "elu"),
    ({"activation": "Selu", "activation_alpha": 1.6, "activation_gamma": 1.05}, "selu"),
    ({"activation": "Softplus"}, "softplus"),
    ({"activation": "Softsign"}, "softsign"),
    ({"activation": "ThresholdedRelu", "activation_alpha": 0.3}, "thresholdedrelu"),
    ({"activation": "ParametricSoftplus", "activation_alpha": 0.8, "activation_beta": 1.5}, "psoftplus"),
    ({"activation": "ScaledTanh", "activation_alpha": 1.3, "activation_beta": 0.6}, "scaledtanh"),
]


@pytest.mark.parametrize("act", [a for a, _ in GEMM_ACTS], ids=[i for _, i in GEMM_ACTS])
def test_fused_gemm_activations(act):
    a, b, c = f32(5, 7, seed=1) * 2, f32(6, 7, seed=2), f32(6, seed=3)
    check_vs_ort("FusedGemm", [("a", a), ("b", b), ("c", c)], dict(act, transB=1, alpha=0.9, beta=1.2),
                 consts=("b", "c"))


@pytest.mark.parametrize("case", ["transA", "full_c", "dynamic_b", "no_c", "row_c"])
def test_fused_gemm_layouts(case):
    act = {"activation": "LeakyRelu", "activation_alpha": 0.1}
    a, b = f32(4, 6, seed=4), f32(6, 3, seed=5)
    ins, consts, attrs = [("a", a), ("b", b), ("c", f32(3, seed=6))], ("b", "c"), dict(act)
    if case == "transA":
        ins[0] = ("a", np.ascontiguousarray(a.T))
        attrs["transA"] = 1
    elif case == "full_c":
        ins[2] = ("c", f32(4, 3, seed=7))
    elif case == "dynamic_b":
        consts = ()
    elif case == "no_c":
        ins = ins[:2]
    else:
        ins[2] = ("c", f32(4, 1, seed=8))
    check_vs_ort("FusedGemm", ins, attrs, consts=consts)


def test_fused_gemm_softplus_no_overflow():
    a = np.array([[80.0, -80.0, 0.5]], np.float32)
    got = check_vs_ort("FusedGemm", [("a", a), ("b", np.eye(3, dtype=np.float32))], {"activation": "Softplus"},
                       consts=("b",))
    assert np.all(np.isfinite(got["y"]))


def test_fused_gemm_errors():
    a, b = f32(2, 3), f32(3, 4)
    raises("FusedGemm", [("a", a), ("b", b)], {"activation": "LeakyRelu"}, consts=("b",), match="activation_alpha")
    raises("FusedGemm", [("a", a), ("b", b)], {"activation": "Clip"}, consts=("b",), exc=UnsupportedOpError)
    raises("FusedGemm", [("a", a), ("b", f32(4, 4))], {"activation": "Relu"}, consts=("b",), match="inner")


# ---------------------------------------------------------------------------------------------------------
# FusedMatMul / TransposeMatMul

MATMUL_CASES = {
    "2d": ((3, 4), (4, 5), {}),
    "transA_transB": ((4, 3), (5, 4), {"transA": 1, "transB": 1}),
    "batched_broadcast": ((2, 1, 3, 4), (3, 4, 5), {"alpha": 0.5}),
    "batched_transB": ((2, 3, 4), (2, 5, 4), {"transB": 1, "alpha": 2.0}),
    "vec_left": ((4,), (2, 4, 5), {"transA": 1}),
    "vec_right": ((2, 3, 4), (4,), {"transB": 1}),
    "transBatchA": ((3, 2, 4), (2, 4, 5), {"transBatchA": 1}),
    "transBatchB": ((2, 3, 4), (4, 2, 5), {"transBatchB": 1, "alpha": 0.25}),
    "transBatch_both_trans": ((4, 2, 2, 3), (5, 2, 2, 4), {"transBatchA": 1, "transBatchB": 1, "transA": 1,
                                                          "transB": 1}),
}


@pytest.mark.parametrize("name", sorted(MATMUL_CASES))
@pytest.mark.parametrize("const_b", [False, True])
def test_fused_matmul(name, const_b):
    sa, sb, attrs = MATMUL_CASES[name]
    check_vs_ort("FusedMatMul", [("a", f32(*sa, seed=1)), ("b", f32(*sb, seed=2))], attrs,
                 consts=("b",) if const_b else ())


@pytest.mark.parametrize("sa,sb,attrs", [((2, 5, 3), (5, 4), {"transA": 1, "alpha": 0.5}),
                                         ((2, 3, 5), (1, 4, 5), {"transB": 1}),
                                         ((7, 5), (6, 5), {"transB": 1, "alpha": 3.0})])
def test_fused_matmul_packed_weight(sa, sb, attrs):
    check_vs_ort("FusedMatMul", [("a", f32(*sa, seed=3)), ("b", f32(*sb, seed=4))], attrs, consts=("b",))


def test_transpose_matmul():
    check_vs_ort("TransposeMatMul", [("a", f32(2, 4, 3)), ("b", f32(2, 5, 4))], {"transA": 1, "transB": 1,
                                                                               "alpha": 0.3})


def test_fused_matmul_errors():
    raises("FusedMatMul", [("a", f32(2, 3, 4)), ("b", f32(4, 5))], {"transBatchA": 1}, match="transBatch")
    raises("FusedMatMul", [("a", f32(3, 4)), ("b", f32(3, 5))], {}, match="inner")
    raises("FusedMatMul", [("a", f32(2, 3, 4)), ("b", f32(3, 4, 5))], {}, match="broadcast")


# ---------------------------------------------------------------------------------------------------------
# BiasAdd, BiasSoftmax, BiasDropout (onnxruntime runs them on CUDA only: numpy is the reference)

def test_bias_add():
    x, b, s = f32(2, 5, 8, seed=1), f32(8, seed=2), f32(2, 5, 8, seed=3)
    got = run_edgedl(node_model("BiasAdd", [("x", x), ("b", b), ("s", s)]), {"x": x, "b": b, "s": s})["y"]
    np.testing.assert_allclose(got, x + b + s, rtol=1e-6, atol=1e-6)
    raises("BiasAdd", [("x", x), ("b", f32(5)), ("s", s)], match="bias")
    raises("BiasAdd", [("x", x), ("b", b), ("s", f32(2, 5, 1))], match="skip")
    raises("BiasAdd", [("x", f32(10, 8)), ("b", b), ("s", f32(10, 8))], match="N, S, C")


def _softmax_ref(v, axis):
    shape = v.shape
    v = v.astype(np.float64).reshape(int(np.prod(shape[:axis])), -1)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(shape)


@pytest.mark.parametrize("bias_shape,axis,inner", [((2, 1, 1, 6), 3, 1), ((1, 3, 6, 6), 3, 0), ((2, 3, 6, 6), -1, 0),
                                                   ((3, 6, 6), 1, 0), ((6,), 3, 0)])
def test_bias_softmax(bias_shape, axis, inner):
    x, b = f32(2, 3, 6, 6, seed=4) * 3, f32(*bias_shape, seed=5)
    model = node_model("BiasSoftmax", [("x", x), ("b", b)], {"axis": axis, "is_inner_broadcast": inner})
    got = run_edgedl(model, {"x": x, "b": b})["y"]
    np.testing.assert_allclose(got, _softmax_ref(x + b, axis % 4), rtol=1e-5, atol=1e-6)


def test_bias_softmax_errors():
    raises("BiasSoftmax", [("x", f32(2, 3)), ("b", f32(4))], {"axis": 1, "is_inner_broadcast": 0},
           match="broadcast")
    raises("BiasSoftmax", [("x", f32(2, 3)), ("b", f32(3))], {"axis": 2, "is_inner_broadcast": 0},
           match="out of range")


@pytest.mark.parametrize("variant", ["plain", "residual_mask", "full_bias_training_false", "training_ratio0"])
def test_bias_dropout_inference(variant):
    x, b, r = f32(2, 3, 5, seed=6), f32(5, seed=7), f32(2, 3, 5, seed=8)
    ins, outs, want = [("x", x), ("b", b)], ("y",), x + b
    if variant == "residual_mask":
        ins.append(("r", r))
        outs, want = ("y", "mask"), x + b + r
    elif variant == "full_bias_training_false":
        b = f32(2, 3, 5, seed=9)
        ins = [("x", x), ("b", b), ("", None), ("ratio", np.array(0.3, np.float32)), ("t", np.array(False))]
        want = x + b
    elif variant == "training_ratio0":
        ins = [("x", x), ("b", b), ("r", r), ("ratio", np.array(0.0, np.float32)), ("t", np.array(True))]
        outs, want = ("y", "mask"), x + b + r
    model = node_model("BiasDropout", ins, outputs=outs, consts=("ratio", "t"))
    got = run_edgedl(model, feeds_of(ins, ("ratio", "t")))
    np.testing.assert_allclose(got["y"], want, rtol=1e-6, atol=1e-6)
    if "mask" in got:
        assert got["mask"].dtype == np.bool_ and got["mask"].all()


def test_bias_dropout_training_is_unsupported():
    x, b = f32(2, 5), f32(5)
    raises("BiasDropout", [("x", x), ("b", b), ("", None), ("", None), ("t", np.array(True))], consts=("t",),
           exc=UnsupportedOpError, match="random")
    raises("BiasDropout", [("x", x), ("b", f32(4))], match="bias")


# ---------------------------------------------------------------------------------------------------------
# EmbedLayerNormalization

def _embed_inputs(seed=0, b=2, s=5, h=8, v=11, p=7):
    r = rng(seed)
    return {"ids": r.integers(0, v, (b, s)).astype(np.int32), "seg": r.integers(0, 2, (b, s)).astype(np.int32),
            "we": r.standard_normal((v, h)).astype(np.float32), "pe": r.standard_normal((p, h)).astype(np.float32),
            "se": r.standard_normal((2, h)).astype(np.float32), "g": r.standard_normal(h).astype(np.float32),
            "bt": r.standard_normal(h).astype(np.float32),
            "mask": np.array([[1, 1, 1, 0, 0], [1, 2, 1, 1, 0]][:b], np.int32)[:, :s],
            "pos": r.integers(0, p, (1, s)).astype(np.int32), "posb": r.integers(0, p, (b, s)).astype(np.int32)}


EMBED_CASES = {
    "bert": (["ids", "seg", "we", "pe", "se", "g", "bt", "mask"], ("y", "mi")),
    "distilbert_no_mask": (["ids", "", "we", "pe", "", "g", "bt"], ("y", "mi")),
    "position_ids_sum": (["ids", "seg", "we", "pe", "se", "g", "bt", "mask", "pos"], ("y", "mi", "es")),
    "position_ids_batch_skip_mask_index": (["ids", "seg", "we", "pe", "se", "g", "bt", "", "posb"], ("y", "", "es")),
}


@pytest.mark.parametrize("name", sorted(EMBED_CASES))
@pytest.mark.parametrize("const_tables", [False, True])
def test_embed_layer_norm(name, const_tables):
    data = _embed_inputs()
    names, outs = EMBED_CASES[name]
    ins = [(n, data[n] if n else None) for n in names]
    consts = ("we", "pe", "se", "g", "bt") if const_tables else ()
    check_vs_ort("EmbedLayerNormalization", ins, {"epsilon": 1e-5}, outputs=outs, consts=consts)


def test_embed_layer_norm_bad_ids():
    data = _embed_inputs()
    base = ["ids", "seg", "we", "pe", "se", "g", "bt"]
    for key, bad in (("ids", 11), ("ids", -1), ("seg", 2)):
        d = dict(data)
        d[key] = d[key].copy()
        d[key][1, 2] = bad
        raises("EmbedLayerNormalization", [(n, d[n]) for n in base], outputs=("y",), match="out of range")
    d = dict(data)
    d["pos"] = np.array([[0, 1, 2, 3, 7]], np.int32)
    raises("EmbedLayerNormalization", [(n, d.get(n)) for n in base + ["", "pos"]], outputs=("y",),
           match="position_ids")
    long = _embed_inputs(s=9, p=7)  # no position_ids: the position table must cover the sequence
    long["mask"] = np.ones((2, 9), np.int32)
    raises("EmbedLayerNormalization", [(n, long[n]) for n in base], outputs=("y",), match="position_embedding")
    raises("EmbedLayerNormalization", [(n, data.get(n)) for n in ["ids", "seg", "we", "pe", "", "g", "bt"]],
           outputs=("y",), match="together")


# ---------------------------------------------------------------------------------------------------------
# Inverse, Trilu, Range, GridSample, Rfft / Irfft

def test_inverse():
    x = f32(2, 3, 4, 4, seed=3) + 4 * np.eye(4, dtype=np.float32)
    check_vs_ort("Inverse", [("x", x)], rtol=1e-4, atol=1e-5)
    raises("Inverse", [("x", np.zeros((2, 3, 3), np.float32))], match="singular")
    raises("Inverse", [("x", f32(3, 4))], match="square")


@pytest.mark.parametrize("upper,k", [(1, None), (0, -1), (1, 2)])
def test_trilu_microsoft(upper, k):
    ins = [("x", f32(2, 4, 5))] + ([("k", np.array(k, np.int64))] if k is not None else [])
    check_vs_ort("Trilu", ins, {"upper": upper})


@pytest.mark.parametrize("vals", [(1, 10, 3), (2, -5, None), (0.5, 3.0, 0.75), (7, 2, -2)])
def test_range_microsoft(vals):
    dt = np.float32 if isinstance(vals[0], float) else np.int64
    ins = [("start", np.array(vals[0], dt)), ("limit", np.array(vals[1], dt))]
    if vals[2] is not None:
        ins.append(("delta", np.array(vals[2], dt)))
    check_vs_ort("Range", ins, consts=("start", "limit", "delta"))
    check_vs_ort("Range", ins)  # values fed at run time: the plan specializes on them
    raises("Range", [("start", np.array(0, np.int64)), ("limit", np.array(3, np.int64)),
                     ("delta", np.array(0, np.int64))], consts=("start", "limit", "delta"), match="delta")


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("pad", ["zeros", "border", "reflection"])
def test_grid_sample_microsoft(mode, pad):
    x, grid = f32(1, 2, 5, 6, seed=1), rng(2).uniform(-1.2, 1.2, (1, 3, 4, 2)).astype(np.float32)
    check_vs_ort("GridSample", [("x", x), ("g", grid)], {"mode": mode, "padding_mode": pad, "align_corners": 0},
                 rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,ndim", [((3, 8), 1), ((2, 6, 7), 2), ((2, 3, 4, 6), 3)])
def test_rfft_irfft(shape, ndim):
    x = f32(*shape, seed=4)
    y = run_edgedl(node_model("Rfft", [("x", x)], {"signal_ndim": ndim}), {"x": x})["y"]
    want = np.fft.rfftn(x.astype(np.float64), axes=tuple(range(x.ndim - ndim, x.ndim)))
    np.testing.assert_allclose(y, np.stack([want.real, want.imag], -1), rtol=1e-4, atol=1e-4)
    z = run_edgedl(node_model("Irfft", [("x", y)], {"signal_ndim": ndim}), {"x": y})["y"]
    m = y.shape[-2]
    assert z.shape == x.shape[:-1] + (2 * m - 1,)  # onnxruntime's Irfft infers 2m - 1 points
    spec = y[..., 0].astype(np.float64) + 1j * y[..., 1]
    axes = tuple(range(spec.ndim - ndim, spec.ndim))
    sizes = [spec.shape[a] for a in axes[:-1]] + [2 * m - 1]
    np.testing.assert_allclose(z, np.fft.irfftn(spec, s=sizes, axes=axes), rtol=1e-4, atol=1e-5)
    if shape[-1] % 2:  # odd length: the round trip is exact
        np.testing.assert_allclose(z, x, rtol=1e-4, atol=1e-5)


def test_fft_errors():
    raises("Rfft", [("x", f32(4, 8))], {"signal_ndim": 1, "onesided": 0}, exc=UnsupportedOpError)
    raises("Irfft", [("x", f32(4, 5, 3))], {"signal_ndim": 1}, match="size 2")
    raises("Irfft", [("x", f32(4, 5, 2))], {}, match="signal_ndim")


# ---------------------------------------------------------------------------------------------------------
# 8-bit: MatMulIntegerToFloat, DynamicQuantizeMatMul, NhwcMaxPool, QLinearConv (channels_last)

def _int8(shape, dt, seed):
    info = np.iinfo(dt)
    return rng(seed).integers(info.min, info.max + 1, shape).astype(dt)


def _exact_for_ort(ins, w, zp, zp_at=None, defaults=()):
    """``ins`` with int8 weights ``w`` and their zero point ``zp`` moved to uint8 (+128 both: the same
    differences) for onnxruntime, for uint8 activations. Its uint8 x int8 kernels on x86 without VNNI add byte-pair products in a
    saturating int16 (off by tens of steps where a pair exceeds 32767; its session option
    ``session.x64quantprecision`` moves only constant weights of some ops to uint8); its uint8 x uint8 kernels
    are exact, as edgedl is. ``zp_at``: the zero point's input index when ``ins`` omits it, with ``defaults``
    (name, array) for the optional inputs before it."""
    out = [list(t) for t in ins]
    names = [n for n, _ in out]
    if np.asarray(dict(ins)[w]).dtype != np.int8:
        return None
    out[names.index(w)][1] = (np.asarray(dict(ins)[w]).astype(np.int16) + 128).astype(np.uint8)
    if zp in names:
        out[names.index(zp)][1] = (np.asarray(dict(ins)[zp]).astype(np.int16) + 128).astype(np.uint8)
    else:
        while len(out) < zp_at:
            out.append(list(defaults[len(out) - len(ins)]))
        out.insert(zp_at, [zp, np.array(128, np.uint8)])
    return [tuple(t) for t in out]


@pytest.mark.parametrize("a_dt,b_dt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("const_b", [True, False])
def test_matmul_integer_to_float(a_dt, b_dt, per_column, const_b):
    n = 6
    a, b = _int8((2, 3, 9), a_dt, 1), _int8((9, n), b_dt, 2)
    b_scale = (rng(3).uniform(0.01, 0.05, n) if per_column else np.array(0.02)).astype(np.float32)
    b_zp = _int8((n,) if per_column else (), b_dt, 4)
    ins = [("a", a), ("b", b), ("as", np.array(0.03, np.float32)), ("bs", b_scale), ("az", np.array(7, a_dt)),
           ("bz", b_zp), ("bias", f32(n, seed=5))]
    check_vs_ort("MatMulIntegerToFloat", ins, consts=("b", "bs", "bz", "bias") if const_b else (), rtol=1e-5,
                 atol=1e-4, ort_inputs=_exact_for_ort(ins, "b", "bz") if a_dt == np.uint8 else None)
    check_vs_ort("MatMulIntegerToFloat", ins[:4], consts=("b", "bs") if const_b else (), rtol=1e-5, atol=1e-4,
                 ort_inputs=_exact_for_ort(ins[:4], "b", "bz", 5, [("az", np.array(0, a_dt))]) if a_dt == np.uint8
                 else None)


@pytest.mark.parametrize("b_dt", [np.int8, np.uint8])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("a_shape", [(5, 12), (2, 1, 12), (12,)])
def test_dynamic_quantize_matmul(b_dt, per_column, a_shape):
    n = 7
    a, b = f32(*a_shape, seed=6) * 3 + 0.5, _int8((12, n), b_dt, 7)
    b_scale = (rng(8).uniform(0.01, 0.05, n) if per_column else np.array(0.03)).astype(np.float32)
    b_zp = _int8((n,) if per_column else (), b_dt, 9)
    check_vs_ort("DynamicQuantizeMatMul", [("a", a), ("b", b), ("bs", b_scale), ("bz", b_zp), ("bias", f32(n))],
                 consts=("b", "bs", "bz", "bias"), rtol=1e-5, atol=1e-4)
    check_vs_ort("DynamicQuantizeMatMul", [("a", a), ("b", b), ("bs", b_scale)], consts=("b", "bs"), rtol=1e-5,
                 atol=1e-4)


def test_dynamic_quantize_matmul_reference_path_and_zeros():
    a, b = f32(3, 5) * 0, _int8((5, 4), np.int8, 1)  # an all-zero A: only the bias remains
    ins = [("a", a), ("b", b), ("bs", np.array(0.1, np.float32)), ("", None), ("bias", f32(4))]
    check_vs_ort("DynamicQuantizeMatMul", ins, consts=("bs", "bias"))  # B fed at run time: the reference


def test_integer_matmul_errors():
    a, b = _int8((2, 4), np.uint8, 1), _int8((4, 3), np.int8, 2)
    raises("MatMulIntegerToFloat", [("a", a), ("b", b), ("as", np.array([0.1, 0.2], np.float32)),
                                    ("bs", np.array(0.1, np.float32))], exc=UnsupportedOpError, match="a_scale")
    raises("MatMulIntegerToFloat", [("a", a), ("b", b), ("as", np.array(0.1, np.float32)),
                                    ("bs", np.full(2, 0.1, np.float32))], exc=UnsupportedOpError, match="b_scale")
    raises("DynamicQuantizeMatMul", [("a", f32(2, 4)), ("b", b), ("bs", np.array(0.1, np.float32)), ("", None),
                                     ("bias", f32(2))], match="bias")
    raises("DynamicQuantizeMatMul", [("a", f32(2, 5)), ("b", b), ("bs", np.array(0.1, np.float32))], match="inner")


@pytest.mark.parametrize("dt", [np.uint8, np.int8])
@pytest.mark.parametrize("attrs", [{"kernel_shape": [2, 2], "strides": [2, 2]},
                                   {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 1]},
                                   {"kernel_shape": [3, 2], "ceil_mode": 1, "strides": [2, 2]},
                                   {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}])
def test_nhwc_max_pool(dt, attrs):
    check_vs_ort("NhwcMaxPool", [("x", _int8((2, 7, 6, 5), dt, 3))], attrs)


def test_nhwc_max_pool_errors():
    raises("NhwcMaxPool", [("x", _int8((1, 4, 4, 2), np.uint8, 1))], {}, match="kernel_shape")
    raises("NhwcMaxPool", [("x", _int8((1, 2, 2, 2), np.uint8, 1))], {"kernel_shape": [3, 3]}, match="larger")


@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("group", [1, 3])
def test_qlinear_conv_microsoft(channels_last, group):
    x = _int8((1, 6, 7, 6) if not channels_last else (1, 7, 6, 6), np.uint8, 1)
    w = _int8((6, 6 // group, 3, 3), np.int8, 2)
    ins = [("x", x), ("xs", np.array(0.02, np.float32)), ("xz", np.array(120, np.uint8)), ("w", w),
           ("ws", rng(3).uniform(0.005, 0.01, 6).astype(np.float32)), ("wz", np.zeros(6, np.int8)),
           ("ys", np.array(0.05, np.float32)), ("yz", np.array(128, np.uint8)),
           ("b", rng(4).integers(-500, 500, 6).astype(np.int32))]
    got = check_vs_ort("QLinearConv", ins, {"channels_last": channels_last, "group": group, "pads": [1, 1, 1, 1],
                                            "strides": [1, 2]}, consts=[n for n, _ in ins if n != "x"], atol=1,
                       ort_inputs=_exact_for_ort(ins, "w", "wz"))
    assert len(np.unique(got["y"])) > 10  # a non-trivial output


# ---------------------------------------------------------------------------------------------------------
# The real-world path: files onnxruntime's optimizer wrote (optimized_model_filepath), loaded in edgedl

def _ort_optimize(model, path, level="ORT_ENABLE_EXTENDED", disabled=()) -> onnx.ModelProto:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.optimized_model_filepath = str(path)
    src = model if isinstance(model, str) else model.SerializeToString()
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
    return onnx.load(str(path))


def _contrib_ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node if n.domain == MS)


def _compare_file(path, feeds, rtol=1e-4, atol=1e-5):
    want = run_ort(onnx.load(str(path)), feeds)
    got = edgedl.load(str(path)).run(feeds)
    assert_close(got, want, rtol, atol)


def _mlp_gemm():
    r = rng(11)
    init = [nh.from_array(r.standard_normal(s).astype(np.float32), n)
            for n, s in (("W1", (16, 8)), ("B1", (16,)), ("W2", (16, 12)), ("B2", (12,)), ("W3", (12, 5)))]
    nodes = [h.make_node("Gemm", ["x", "W1", "B1"], ["g1"], transB=1),
             h.make_node("LeakyRelu", ["g1"], ["r1"], alpha=0.2),
             h.make_node("Gemm", ["r1", "W2", "B2"], ["g2"]), h.make_node("Sigmoid", ["g2"], ["r2"]),
             h.make_node("Gemm", ["r2", "W3"], ["g3"]), h.make_node("Elu", ["g3"], ["y"])]
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 8])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 5])], init)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


OPTIMIZED = {
    "resnet_like": (lambda: zoo.resnet_like(resolution=32, widths=(8, 16, 16, 16), classes=10), (3, 32, 32),
                    {"FusedConv"}),
    "mobilenet_v2_like": (lambda: zoo.mobilenet_v2_like(resolution=32, width=0.5, classes=10), (3, 32, 32),
                          {"FusedConv"}),
    "nhwc_cnn": (lambda: zoo.nhwc_cnn(height=16, width=16), (16, 16, 3), {"FusedConv"}),
    "seg_decoder": (lambda: zoo.seg_decoder(), (3, 32, 32), {"FusedConv"}),
    "kws_tc_resnet": (lambda: zoo.kws_tc_resnet(), (40, 98), {"FusedConv"}),
    "transformer_block": (lambda: zoo.transformer_block(), None, {"FusedMatMul"}),
    "mlp_gemm": (_mlp_gemm, (8,), {"FusedGemm"}),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZED))
def test_ort_optimized_float_models(name, tmp_path):
    build, shape, expect = OPTIMIZED[name]
    src = build()
    opt = _ort_optimize(src, tmp_path / f"{name}.onnx")
    assert expect <= set(_contrib_ops(opt)), _contrib_ops(opt)
    inp = opt.graph.input[0]
    if shape is None:
        dims = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
        shape = tuple(dims[1:])
    x = rng(1).standard_normal((2, *shape)).astype(np.float32)
    _compare_file(tmp_path / f"{name}.onnx", {inp.name: x})


def test_ort_optimized_fused_conv_residual(tmp_path):
    """Conv + Add(residual) + Relu at ORT_ENABLE_ALL without the (hardware-specific) NCHWc layout: onnxruntime's
    ConvAddActivationFusion writes a FusedConv with the Z input."""
    r = rng(5)
    init = [nh.from_array(r.standard_normal((4, 4, 3, 3)).astype(np.float32), "w"),
            nh.from_array(r.standard_normal(4).astype(np.float32), "b")]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Add", ["c", "x"], ["s"]),
             h.make_node("Relu", ["s"], ["y"])]
    g = h.make_graph(nodes, "res", [h.make_tensor_value_info("x", TP.FLOAT, [1, 4, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 4, 6, 6])], init)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    opt = _ort_optimize(m, tmp_path / "res.onnx", "ORT_ENABLE_ALL", ["NchwcTransformer"])
    fused = [n for n in opt.graph.node if n.op_type == "FusedConv"]
    assert fused and len(fused[0].input) == 4, [(n.op_type, list(n.input)) for n in opt.graph.node]
    _compare_file(tmp_path / "res.onnx", {"x": f32(1, 4, 6, 6, seed=6)})


def test_ort_optimized_resnet_all_levels_without_nchwc(tmp_path):
    opt = _ort_optimize(zoo.resnet_like(resolution=32, widths=(8, 16, 16, 16), classes=10), tmp_path / "r.onnx",
                        "ORT_ENABLE_ALL", ["NchwcTransformer"])
    assert any(n.op_type == "FusedConv" and len(n.input) == 4 for n in opt.graph.node)
    _compare_file(tmp_path / "r.onnx", {opt.graph.input[0].name: f32(2, 3, 32, 32, seed=7)})


def _dense_model(path, shared):
    r = rng(7)
    init = [nh.from_array(r.standard_normal((16, 8)).astype(np.float32), "W1"),
            nh.from_array(r.standard_normal((16, 8)).astype(np.float32), "W2"),
            nh.from_array(r.standard_normal(8).astype(np.float32), "B1")]
    if shared:  # one quantized input for two MatMuls: MatMulIntegerToFloat
        nodes = [h.make_node("MatMul", ["x", "W1"], ["q"]), h.make_node("MatMul", ["x", "W2"], ["k"]),
                 h.make_node("Add", ["q", "k"], ["y"])]
    else:  # a chain: DynamicQuantizeMatMul (with the bias Add fused)
        init[1] = nh.from_array(r.standard_normal((8, 8)).astype(np.float32), "W2")
        nodes = [h.make_node("MatMul", ["x", "W1"], ["m"]), h.make_node("Add", ["m", "B1"], ["a"]),
                 h.make_node("Relu", ["a"], ["r"]), h.make_node("MatMul", ["r", "W2"], ["y"])]
    g = h.make_graph(nodes, "dense", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 16])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 8])], init)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


@pytest.mark.parametrize("shared,per_channel", [(False, False), (False, True), (True, True), (True, False)])
def test_ort_optimized_dynamic_quantization(tmp_path, shared, per_channel):
    quantization = pytest.importorskip("onnxruntime.quantization")
    _dense_model(tmp_path / "f.onnx", shared)
    quantization.quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), per_channel=per_channel,
                                  weight_type=quantization.QuantType.QInt8)
    opt = _ort_optimize(str(tmp_path / "q.onnx"), tmp_path / "opt.onnx")
    want_op = "MatMulIntegerToFloat" if shared else "DynamicQuantizeMatMul"
    assert want_op in _contrib_ops(opt), _contrib_ops(opt)
    x = f32(5, 16, seed=8)
    _compare_file(tmp_path / "opt.onnx", {"x": x}, rtol=1e-5, atol=1e-4)


def _small_cnn():
    r = rng(9)
    init = [nh.from_array((r.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
            nh.from_array(r.standard_normal(8).astype(np.float32) * 0.1, "b1"),
            nh.from_array((r.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "w2"),
            nh.from_array(r.standard_normal(8).astype(np.float32) * 0.1, "b2")]
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("GlobalAveragePool", ["r2"], ["y"])]
    g = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", TP.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 8, 1, 1])], init)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_ort_optimized_static_quantization_channels_last(tmp_path):
    """A QDQ model optimized at ORT_ENABLE_ALL: onnxruntime rewrites it to com.microsoft QLinearConv with
    channels_last = 1 and NhwcMaxPool between Transposes."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    onnx.save(_small_cnn(), str(tmp_path / "f.onnx"))
    calib = [{"x": rng(k).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)} for k in range(4)]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    quantization.quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(),
                                 quant_format=quantization.QuantFormat.QDQ,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    opt = _ort_optimize(str(tmp_path / "q.onnx"), tmp_path / "opt.onnx", "ORT_ENABLE_ALL")
    ops = _contrib_ops(opt)
    assert "QLinearConv" in ops and "NhwcMaxPool" in ops, ops
    _compare_file(tmp_path / "opt.onnx", {"x": calib[0]["x"]}, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# float32 / 8-bit hot paths run compiled kernels (not the numpy reference)

def _impls(model, shapes=None):
    plan = edgedl.load(model.SerializeToString()).plan(shapes)
    return {s.node.op_type: s.kernel.impl for s in plan.steps}


def test_hot_paths_use_compiled_kernels():
    cases = [
        ("FusedConv", [("x", f32(1, 4, 6, 6)), ("w", f32(4, 4, 3, 3)), ("b", f32(4)), ("z", f32(1, 4, 4, 4))],
         {"activation": "Relu"}, ("y",), ("w", "b")),
        ("FusedGemm", [("a", f32(5, 6)), ("b", f32(6, 3))], {"activation": "Tanh"}, ("y",), ("b",)),
        ("FusedGemm", [("a", f32(5, 6)), ("b", f32(6, 3))], {"activation": "Softsign"}, ("y",), ("b",)),
        ("FusedMatMul", [("a", f32(2, 6, 5)), ("b", f32(6, 3))], {"transA": 1}, ("y",), ("b",)),
        ("FusedMatMul", [("a", f32(2, 5, 6)), ("b", f32(2, 3, 6))], {"transB": 1}, ("y",), ()),
        ("BiasAdd", [("x", f32(2, 3, 4)), ("b", f32(4)), ("s", f32(2, 3, 4))], {}, ("y",), ()),
        ("EmbedLayerNormalization", [(n, _embed_inputs()[n]) for n in ("ids", "seg", "we", "pe", "se", "g", "bt")],
         {}, ("y", "mi"), ("we", "pe", "se", "g", "bt")),
        ("DynamicQuantizeMatMul", [("a", f32(4, 12)), ("b", _int8((12, 5), np.int8, 1)),
                                   ("bs", np.array(0.1, np.float32))], {}, ("y",), ("b", "bs")),
        ("MatMulIntegerToFloat", [("a", _int8((4, 12), np.uint8, 2)), ("b", _int8((12, 5), np.int8, 1)),
                                  ("as", np.array(0.1, np.float32)), ("bs", np.array(0.1, np.float32))], {}, ("y",),
         ("b", "bs")),
        ("NhwcMaxPool", [("x", _int8((1, 6, 6, 4), np.uint8, 3))], {"kernel_shape": [2, 2]}, ("y",), ()),
    ]
    for op, ins, attrs, outs, consts in cases:
        model = node_model(op, ins, attrs, outs, consts)
        assert _impls(model)[op] == "numba", op


def test_dynamic_quantization_reads_zero_points_at_run_time(tmp_path):
    """onnxruntime's quantize_dynamic turns Conv into DynamicQuantizeLinear -> ConvInteger (and MatMul into
    MatMulInteger): the zero point is computed from each input. The plan reads it at run time (a kernel prepared
    per zero point) instead of specializing on the input's values, which rebuilt and constant-folded the whole
    model for every new image (a published OCR model took 500 ms per new input and a bogus 0.06 ms for a
    repeated one). Every new input matches onnxruntime, runs the ConvInteger kernels, and adds no plan."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    onnx.save(_small_cnn(), str(tmp_path / "f.onnx"))
    quantization.quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), op_types_to_quantize=["Conv"],
                                  weight_type=quantization.QuantType.QUInt8)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger"} <= ops, ops
    model = edgedl.load(str(tmp_path / "q.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    for k in range(6):
        x = (rng(20 + k).uniform(-1, 1, (1, 3, 16, 16)) * (k + 1) + k * 0.3).astype(np.float32)
        profile = []
        got = model.run({"x": x}, profile=profile)["y"]
        np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
        assert sum(p.node.op_type == "ConvInteger" for p in profile) == 2
    assert len(model._runner.plans) == 1 and not model._runner.value_inputs
