"""BatchNormalization and LRN kernels against independent numpy formulas of the ONNX spec."""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from edgedl import testing
from edgedl.errors import EdgeDLError, ShapeError
from edgedl.ir import Node, TensorType
from edgedl.registry import lookup

NAMES = ["x", "scale", "B", "mean", "var"]


def make_op(op_type, attrs, inputs, outputs, opset):
    return lookup(op_type)(Node(op_type, f"test_{op_type}", inputs, outputs, dict(attrs)), opset)


def run(op, arrays, consts):
    return testing.run_kernel(op, arrays, consts)


def bn_params(rng, c, dtype=np.float32):
    return [(rng.random(c) + 0.5).astype(dtype), rng.standard_normal(c).astype(dtype),
            rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.1).astype(dtype)]


def bn_inference(x, scale, b, mean, var, eps):
    shp = (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    std = np.sqrt(var.reshape(shp).astype(np.float64) + eps)
    return (x64 - mean.reshape(shp)) / std * scale.reshape(shp) + b.reshape(shp)


# --- BatchNormalization ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3), (1, 4, 7), (2, 3, 5, 6), (1, 2, 3, 4, 5), (3, 16, 1, 1)])
@pytest.mark.parametrize("opset", [9, 15])
def test_batchnorm_inference_constant_params(shape, opset):
    rng = np.random.default_rng(len(shape) + opset)
    x = rng.standard_normal(shape).astype(np.float32)
    params = bn_params(rng, shape[1])
    op = make_op("BatchNormalization", dict(epsilon=1e-3), NAMES, ["y"], opset)
    (y,), kern = run(op, [x] + params, [None] + params)
    assert kern.impl == "numba"
    np.testing.assert_allclose(y, bn_inference(x, *params, 1e-3), rtol=1e-5, atol=1e-5)


def test_batchnorm_runtime_params():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    params = bn_params(rng, 5)
    op = make_op("BatchNormalization", {}, NAMES, ["y"], 14)
    (y,), kern = run(op, [x] + params, [None] * 5)
    assert kern.impl == "numba" and kern.scratch_bytes >= 8 * 5
    np.testing.assert_allclose(y, bn_inference(x, *params, 1e-5), rtol=1e-5, atol=1e-5)
    # parameters in another dtype (opset 15): the numpy path
    p64 = [p.astype(np.float64) for p in params]
    op = make_op("BatchNormalization", {}, NAMES, ["y"], 15)
    (y,), kern = run(op, [x] + p64, [None] * 5)
    assert kern.impl == "numpy"
    np.testing.assert_allclose(y, bn_inference(x, *params, 1e-5), rtol=1e-5, atol=1e-5)


def test_batchnorm_old_opsets():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    params = bn_params(rng, 3)
    want = bn_inference(x, *params, 1e-5)
    variants = ((6, dict(is_test=1, spatial=1)), (1, dict(is_test=1, consumed_inputs=[0, 0, 0, 1, 1])),
                (7, dict(spatial=1)), (9, {}), (14, dict(training_mode=0)))
    for opset, attrs in variants:
        op = make_op("BatchNormalization", attrs, NAMES, ["y"], opset)
        (y,), kern = run(op, [x] + params, [None] + params)
        assert kern.impl == "numba"
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5, err_msg=f"opset {opset}")


def test_batchnorm_spatial_0_per_activation():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
    full = [(rng.random((3, 2, 5)) + 0.5), rng.standard_normal((3, 2, 5)), rng.standard_normal((3, 2, 5)),
            (rng.random((3, 2, 5)) + 0.1)]
    full = [p.astype(np.float32) for p in full]
    op = make_op("BatchNormalization", dict(spatial=0), NAMES, ["y"], 7)
    (y,), _ = run(op, [x] + full, [None] + full)
    s, b, m, v = full
    np.testing.assert_allclose(y, (x - m) / np.sqrt(v + 1e-5) * s + b, rtol=1e-5, atol=1e-5)


def _batch_stats(x, axes):
    x64 = x.astype(np.float64)
    return x64.mean(axis=axes), ((x64 - x64.mean(axis=axes, keepdims=True)) ** 2).mean(axis=axes)


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (4, 9, 40, 41)])
def test_batchnorm_training_mode_opset14(shape, monkeypatch):
    from edgedl.kernels.cpu import bn_train

    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32) * 2 + 1
    c = shape[1]
    params = bn_params(rng, c)
    op = make_op("BatchNormalization", dict(training_mode=1, momentum=0.8, epsilon=1e-4), NAMES,
                 ["y", "rm", "rv"], 15)
    (y, rm, rv), kern = run(op, [x] + params, [None] * 5)
    assert kern.impl == "numba"
    # serial and parallel (one channel per thread) give the same bits
    monkeypatch.setattr(bn_train._config, "PARALLEL_MIN_WORK", 0 if x.size < 1000 else 1 << 40)
    (y2, rm2, rv2), _ = run(op, [x] + params, [None] * 5)
    for a, b in ((y, y2), (rm, rm2), (rv, rv2)):
        np.testing.assert_array_equal(a, b)
    cm, cv = _batch_stats(x, (0, 2, 3))
    np.testing.assert_allclose(y, bn_inference(x, params[0], params[1], cm, cv, 1e-4), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, params[2] * 0.8 + cm * 0.2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, params[3] * 0.8 + cv * 0.2, rtol=1e-5, atol=1e-6)


def test_batchnorm_training_outputs_opset9_and_6():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    params = bn_params(rng, 3)
    cm, cv = _batch_stats(x, (0, 2))
    for opset, attrs in ((9, {}), (6, dict(is_test=0))):
        op = make_op("BatchNormalization", attrs, NAMES, ["y", "m", "v", "sm", "sv"], opset)
        (y, m, v, sm, sv), _ = run(op, [x] + params, [None] * 5)
        want = bn_inference(x, params[0], params[1], cm, cv, 1e-5)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m, params[2] * 0.9 + cm * 0.1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, params[3] * 0.9 + cv * 0.1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sm, cm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sv, cv, rtol=1e-5, atol=1e-6)


def test_batchnorm_training_with_an_omitted_middle_output():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    params = bn_params(rng, 3)
    op = make_op("BatchNormalization", dict(training_mode=1), NAMES, ["y", "", "rv"], 14)
    (y, rv), _ = run(op, [x] + params, [None] * 5)
    cm, cv = _batch_stats(x, (0, 2))
    np.testing.assert_allclose(rv, params[3] * 0.9 + cv * 0.1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,match", [
    ({"scale": (4,)}, r"scale has shape \(4,\), expected \(3,\)"),
    ({"var": (3, 1)}, r"var has shape \(3, 1\)"),
    ({"x": (5,)}, "rank >= 2"),
])
def test_batchnorm_shape_errors(bad, match):
    shapes = {"x": (2, 3, 4, 4), "scale": (3,), "B": (3,), "mean": (3,), "var": (3,)}
    shapes.update(bad)
    op = make_op("BatchNormalization", {}, NAMES, ["y"], 15)
    with pytest.raises(ShapeError, match=match):
        op.infer([TensorType(shapes[n], np.dtype(np.float32)) for n in NAMES], [None] * 5)


# --- LRN ---------------------------------------------------------------------------------------------------
def lrn_naive(x, size, alpha, beta, bias):
    c = x.shape[1]
    x64 = x.astype(np.float64)
    y = np.empty_like(x64)
    for ch in range(c):
        lo = max(0, ch - math.floor((size - 1) / 2))
        hi = min(c - 1, ch + math.ceil((size - 1) / 2))
        ssum = (x64[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, ch] = x64[:, ch] / (bias + alpha / size * ssum) ** beta
    return y


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.3])
def test_lrn(size, beta):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal((2, 7, 4, 5)) * 3).astype(np.float32)
    op = make_op("LRN", dict(size=size, alpha=0.02, beta=beta, bias=1.5), ["x"], ["y"], 13)
    (y,), kern = run(op, [x], [None])
    assert kern.impl == "numba"
    want = lrn_naive(x, size, 0.02, beta, 1.5)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(op.ref(x)[0], want, rtol=1e-6, atol=1e-7)


def test_lrn_defaults_and_ranks():
    rng = np.random.default_rng(8)
    for shape in [(3, 6, 9), (1, 5, 2, 3, 4), (4, 3)]:
        x = rng.standard_normal(shape).astype(np.float32)
        op = make_op("LRN", dict(size=3), ["x"], ["y"], 1)
        (y,), _ = run(op, [x], [None])
        np.testing.assert_allclose(y, lrn_naive(x, 3, 1e-4, 0.75, 1.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(EdgeDLError, match="size"):
        make_op("LRN", {}, ["x"], ["y"], 13)
    with pytest.raises(EdgeDLError, match="size must be positive"):
        make_op("LRN", dict(size=0), ["x"], ["y"], 13)


# --- threads -----------------------------------------------------------------------------------------------
def test_parallel_kernels_match_serial():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 64, 48, 48)).astype(np.float32)
    x2 = rng.standard_normal((40000, 8)).astype(np.float32)
    params = bn_params(rng, 64)
    params8 = bn_params(rng, 8)
    old = numba.get_num_threads()
    many = min(2, numba.config.NUMBA_NUM_THREADS)
    results = []
    try:
        for nt in (1, many):
            numba.set_num_threads(nt)
            bn = make_op("BatchNormalization", {}, NAMES, ["y"], 15)
            (a,), _ = run(bn, [x] + params, [None] + params)
            bn = make_op("BatchNormalization", {}, NAMES, ["y"], 15)
            (b,), _ = run(bn, [x2] + params8, [None] + params8)
            lrn = make_op("LRN", dict(size=5, alpha=1e-3, beta=0.75, bias=2.0), ["x"], ["y"], 13)
            (c,), _ = run(lrn, [x], [None])
            results.append((a, b, c))
    finally:
        numba.set_num_threads(old)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(results[0][0], bn_inference(x, *params, 1e-5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][1], bn_inference(x2, *params8, 1e-5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][2], lrn_naive(x, 5, 1e-3, 0.75, 2.0), rtol=1e-5, atol=1e-6)


def test_standalone_batchnorm_end_to_end():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    import edgedl

    rng = np.random.default_rng(12)
    params = bn_params(rng, 4)
    inits = [numpy_helper.from_array(p, n) for p, n in zip(params, NAMES[1:])]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization", ["r"] + NAMES[1:], ["y"], epsilon=1e-3)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    try:
        m = edgedl.load(model)
    except EdgeDLError as e:  # Relu lives in another op family that may not be there yet
        pytest.skip(str(e))
    y = m.run({"x": x})["y"]
    np.testing.assert_allclose(y, bn_inference(np.maximum(x, 0), *params, 1e-3), rtol=1e-5, atol=1e-5)
