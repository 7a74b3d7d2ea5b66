"""Pooling kernels (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool) against an independent, naive
per-window implementation of the ONNX spec, and against the ops' numpy references."""
from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest

from edgedl import testing
from edgedl.errors import EdgeDLError, ShapeError
from edgedl.ir import Node, TensorType
from edgedl.registry import lookup


# --- helpers ---------------------------------------------------------------------------------------------
def make_op(op_type, attrs, n_out=1, opset=19):
    outs = ["y", "i"][:n_out] if n_out <= 2 else ["y"]
    node = Node(op_type, f"test_{op_type}", ["x"], outs, dict(attrs))
    return lookup(op_type)(node, opset)


def run_kernel(op, x):
    """infer -> build -> run on preallocated outputs (filled with 7); returns (outputs, kernel)."""
    return testing.run_kernel(op, [x], [None], fill=7)


def spec_out_size(n, k, s, d, pb, pe, ceil_mode, auto_pad):
    ext = (k - 1) * d + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        o = -(-n // s)
        total = max(0, (o - 1) * s + ext - n)
        small, big = total // 2, total - total // 2
        pb, pe = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return o, pb, pe
    if auto_pad == "VALID":
        pb = pe = 0
    span = n + pb + pe - ext
    if ceil_mode:
        o = -(-span // s) + 1
        if (o - 1) * s >= n + pb:
            o -= 1
    else:
        o = span // s + 1
    return o, pb, pe


def naive_pool(x, kind, kernel, strides, dilations, pads, ceil_mode=0, auto_pad="NOTSET", cip=0,
               storage_order=0):
    """Per-window loops, straight from the spec. Returns (y, indices)."""
    nsp = x.ndim - 2
    in_sp = x.shape[2:]
    geo = [spec_out_size(in_sp[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + nsp], ceil_mode,
                         auto_pad) for i in range(nsp)]
    out = [g[0] for g in geo]
    pb = [g[1] for g in geo]
    pe = [g[2] for g in geo]
    y = np.zeros(x.shape[:2] + tuple(out), np.float64)
    ind = np.full(y.shape, -1, np.int64)
    plane = int(np.prod(in_sp))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for o in itertools.product(*[range(v) for v in out]):
            vals, where, padded_count = [], [], 0
            for taps in itertools.product(*[range(k) for k in kernel]):
                co = [o[i] * strides[i] - pb[i] + taps[i] * dilations[i] for i in range(nsp)]
                if all(co[i] < in_sp[i] + pe[i] for i in range(nsp)):
                    padded_count += 1
                if all(0 <= co[i] < in_sp[i] for i in range(nsp)):
                    vals.append(float(x[(n, c) + tuple(co)]))
                    if storage_order:
                        flat = sum(co[i] * int(np.prod(in_sp[:i])) for i in range(nsp))
                    else:
                        flat = sum(co[i] * int(np.prod(in_sp[i + 1:])) for i in range(nsp))
                    where.append((n * x.shape[1] + c) * plane + flat)
            if kind == "max":
                best = int(np.argmax(vals))  # first maximum in row-major window order
                y[(n, c) + o] = vals[best]
                ind[(n, c) + o] = where[best]
            else:
                y[(n, c) + o] = sum(vals) / (padded_count if cip else len(vals))
    return y, ind


def random_geometry(rng, nsp):
    while True:
        kernel = [int(rng.integers(1, 5)) for _ in range(nsp)]
        strides = [int(rng.integers(1, 4)) for _ in range(nsp)]
        dil = [int(rng.integers(1, 3)) if rng.random() < 0.3 else 1 for _ in range(nsp)]
        pads = [int(rng.integers(0, k)) for k in kernel] + [int(rng.integers(0, k)) for k in kernel]
        auto_pad = str(rng.choice(["NOTSET"] * 5 + ["SAME_UPPER", "SAME_LOWER", "VALID"]))
        ceil_mode = int(rng.random() < 0.4) if auto_pad == "NOTSET" else 0
        in_sp = [int(rng.integers(1, 10)) for _ in range(nsp)]
        ok = True
        for i in range(nsp):
            ext = (kernel[i] - 1) * dil[i] + 1
            p = 0 if auto_pad == "VALID" else pads[i] + pads[i + nsp]
            if auto_pad in ("NOTSET", "VALID") and ext > in_sp[i] + p:
                ok = False
            # every window must hold at least one element of the input (true for real models)
            o, pb, _ = spec_out_size(in_sp[i], kernel[i], strides[i], dil[i], pads[i], pads[i + nsp],
                                      ceil_mode, auto_pad)
            for oo in range(max(o, 0)):
                if not any(0 <= oo * strides[i] - pb + j * dil[i] < in_sp[i] for j in range(kernel[i])):
                    ok = False
        if ok:
            return kernel, strides, dil, pads, auto_pad, ceil_mode, in_sp


def attrs_of(kernel, strides, dil, pads, auto_pad, ceil_mode, **extra):
    a = dict(kernel_shape=kernel, strides=strides, dilations=dil, ceil_mode=ceil_mode, **extra)
    if auto_pad == "NOTSET":
        a["pads"] = pads
    else:
        a["auto_pad"] = auto_pad
    return a


# --- windowed pooling vs the naive spec --------------------------------------------------------------------
@pytest.mark.parametrize("nsp", [1, 2, 3])
def test_random_geometries_against_naive_spec(nsp):
    rng = np.random.default_rng(100 + nsp)
    for _ in range({1: 30, 2: 40, 3: 12}[nsp]):
        kernel, strides, dil, pads, auto_pad, ceil_mode, in_sp = random_geometry(rng, nsp)
        x = rng.standard_normal((int(rng.integers(1, 3)), int(rng.integers(1, 4)), *in_sp)).astype(np.float32)
        what = f"x {x.shape} k {kernel} s {strides} d {dil} pads {pads} {auto_pad} ceil {ceil_mode}"
        op = make_op("MaxPool", attrs_of(kernel, strides, dil, pads, auto_pad, ceil_mode))
        (y,), kern = run_kernel(op, x)
        assert kern.impl == "numba"
        want, _ = naive_pool(x, "max", kernel, strides, dil, pads, ceil_mode, auto_pad)
        assert y.shape == want.shape, what
        np.testing.assert_array_equal(y, want.astype(np.float32), err_msg=what)
        np.testing.assert_array_equal(op.ref(x)[0], y, err_msg=what)
        for cip in (0, 1):
            op = make_op("AveragePool", attrs_of(kernel, strides, dil, pads, auto_pad, ceil_mode,
                                                 count_include_pad=cip))
            (y,), _ = run_kernel(op, x)
            want, _ = naive_pool(x, "avg", kernel, strides, dil, pads, ceil_mode, auto_pad, cip)
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6, err_msg=f"{what} cip {cip}")
            np.testing.assert_allclose(op.ref(x)[0], want, rtol=1e-6, atol=1e-7, err_msg=f"{what} cip {cip}")


@pytest.mark.parametrize("shape,kernel,strides,pads,ceil_mode", [
    ((1, 3, 16, 16), [3, 3], [2, 2], [1, 1, 1, 1], 0),   # ResNet stem: stride-2 flat horizontal pass
    ((2, 2, 12, 10), [2, 2], [2, 2], [0, 0, 0, 0], 0),   # 2x2 s2
    ((1, 2, 9, 11), [2, 2], [2, 2], [0, 0, 0, 0], 1),    # odd sizes, ceil: per-row path
    ((1, 3, 10, 10), [3, 3], [1, 1], [1, 1, 1, 1], 0),   # stride 1 'same': flat in both directions
    ((1, 2, 11, 8), [5, 5], [1, 1], [2, 2, 2, 2], 0),    # SPP-like 5x5 s1 p2
    ((1, 2, 13, 13), [3, 3], [2, 2], [0, 0, 0, 0], 1),   # GoogLeNet 3x3 s2 ceil
    ((1, 1, 7, 12), [1, 3], [1, 2], [0, 1, 0, 1], 0),
    ((1, 2, 6, 6), [7, 2], [1, 2], [3, 0, 3, 0], 0),     # tall kernel: more than 3 rows per window
    ((1, 2, 8, 8), [3, 3], [3, 3], [1, 1, 1, 1], 0),     # stride 3
])
def test_cnn_shapes(shape, kernel, strides, pads, ceil_mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    for kind, op_type in (("max", "MaxPool"), ("avg", "AveragePool")):
        for cip in ((0,) if kind == "max" else (0, 1)):
            attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode)
            if kind == "avg":
                attrs["count_include_pad"] = cip
            (y,), _ = run_kernel(make_op(op_type, attrs), x)
            want, _ = naive_pool(x, kind, kernel, strides, [1, 1], pads, ceil_mode, "NOTSET", cip)
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6, err_msg=f"{op_type} cip {cip}")


def test_ceil_mode_last_window_must_start_inside():
    # 2x2 input, kernel 1, stride 2, ceil: ceil((2-1)/2)+1 = 2 windows, but the second would start at 2
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    (y,), _ = run_kernel(make_op("MaxPool", dict(kernel_shape=[1, 1], strides=[2, 2], ceil_mode=1)), x)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == 0
    # the last window may start in the left padding only: (3 + 1 - 3) / 3 -> 1 output
    x = np.ones((1, 1, 2, 2), np.float32)
    op = make_op("AveragePool", dict(kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1,
                                     count_include_pad=1))
    (y,), _ = run_kernel(op, x)
    assert y.shape == (1, 1, 1, 1)
    np.testing.assert_allclose(y, 4 / 9)


def test_ceil_windows_hanging_past_the_padding_divide_by_clipped_count():
    # 5 wide, kernel 3, stride 2, pads 1/1, ceil: windows at -1, 1, 3 (hangs to 5 = in + pe, clipped)
    x = np.arange(1, 6, dtype=np.float32).reshape(1, 1, 5)
    attrs = dict(kernel_shape=[3], strides=[2], ceil_mode=1, count_include_pad=1)
    op = make_op("AveragePool", dict(attrs, pads=[1, 1]))
    (y,), _ = run_kernel(op, x)
    np.testing.assert_allclose(y.ravel(), [(0 + 1 + 2) / 3, (2 + 3 + 4) / 3, (4 + 5 + 0) / 3])
    op = make_op("AveragePool", dict(attrs, pads=[0, 0]))
    (y,), _ = run_kernel(op, x)
    np.testing.assert_allclose(y.ravel(), [2, 4])  # (5 - 3) / 2 + 1 = 2 exactly


# --- MaxPool Indices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_indices(storage_order):
    rng = np.random.default_rng(5 + storage_order)
    cases = [((2, 3, 7, 6), [3, 2], [2, 1], [1, 0, 1, 1], [1, 1], 0),
             ((1, 2, 8, 9), [2, 3], [2, 2], [0, 0, 0, 0], [1, 2], 1),
             ((1, 2, 5, 4, 6), [2, 2, 3], [1, 2, 2], [0, 1, 1, 1, 0, 1], [1, 1, 1], 0),
             ((2, 2, 9), [3], [2], [1, 1], [2], 1)]
    for shape, kernel, strides, pads, dil, ceil_mode in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        x[..., 0] = x[..., 1]  # ties: the first in row-major window order wins
        attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dil, ceil_mode=ceil_mode,
                     storage_order=storage_order)
        op = make_op("MaxPool", attrs, n_out=2)
        (y, ind), kern = run_kernel(op, x)
        assert kern.impl == "numba" and ind.dtype == np.int64
        want_y, want_i = naive_pool(x, "max", kernel, strides, dil, pads, ceil_mode,
                                    storage_order=storage_order)
        np.testing.assert_array_equal(y, want_y.astype(np.float32))
        np.testing.assert_array_equal(ind, want_i)
        ry, ri = op.ref(x)
        np.testing.assert_array_equal(ry, y)
        np.testing.assert_array_equal(ri, want_i)
        if storage_order == 0:  # the indices address the flattened input
            np.testing.assert_array_equal(x.reshape(-1)[ind], y)


def test_maxpool_indices_only_output():
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    node = Node("MaxPool", "m", ["x"], ["", "i"], dict(kernel_shape=[2, 2], strides=[2, 2]))
    op = lookup("MaxPool")(node, 12)
    types = op.infer([TensorType(x.shape, x.dtype)], [None])
    kernel = op.build([TensorType(x.shape, x.dtype)], [types[1]], [None])
    ind = np.empty(types[1].shape, np.int64)
    kernel.fn([x], [ind], np.empty(kernel.scratch_bytes, np.uint8))
    np.testing.assert_array_equal(ind, naive_pool(x, "max", [2, 2], [2, 2], [1, 1], [0, 0, 0, 0])[1])


# --- NaN, dtypes, global pooling ---------------------------------------------------------------------------
def test_maxpool_ignores_nan_globalmaxpool_propagates_it():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.nan
    (y,), _ = run_kernel(make_op("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2])), x)
    np.testing.assert_array_equal(y.ravel(), [5, 7, 13, 14])
    (g,), _ = run_kernel(make_op("GlobalMaxPool", {}), x)
    assert np.isnan(g).all()
    x = np.full((1, 2, 3, 3), -np.inf, np.float32)
    x[0, 1, 1, 1] = np.inf
    (g,), _ = run_kernel(make_op("GlobalMaxPool", {}), x)
    np.testing.assert_array_equal(g.ravel(), [-np.inf, np.inf])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float64, np.float16])
def test_other_dtypes(dtype):
    """float64/float16 run the reference; int8/uint8 MaxPool has a kernel (int8 models), checked the same way."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, 2, 7, 7)) * 40).astype(dtype)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    (y,), kern = run_kernel(make_op("MaxPool", attrs), x)
    assert kern.impl == ("numba" if np.dtype(dtype).kind in "iu" else "numpy") and y.dtype == dtype
    want, _ = naive_pool(x.astype(np.float64), "max", [3, 3], [2, 2], [1, 1], [1, 1, 1, 1])
    np.testing.assert_array_equal(y, want.astype(dtype))
    if np.dtype(dtype).kind == "f":
        (y,), kern = run_kernel(make_op("AveragePool", attrs), x)
        assert kern.impl == "numpy" and y.dtype == dtype
        want, _ = naive_pool(x.astype(np.float64), "avg", [3, 3], [2, 2], [1, 1], [1, 1, 1, 1])
        np.testing.assert_allclose(y, want, rtol=1e-3 if dtype == np.float16 else 1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 4, 3, 7), (2, 2, 3, 4, 5), (1, 1280, 7, 7), (1, 5, 1, 1),
                                   (1, 3, 17, 1)])
def test_global_pools(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    axes = tuple(range(2, len(shape)))
    (ya,), ka = run_kernel(make_op("GlobalAveragePool", {}), x)
    (ym,), km = run_kernel(make_op("GlobalMaxPool", {}), x)
    assert ka.impl == km.impl == "numba"
    assert ya.shape == ym.shape == shape[:2] + (1,) * (len(shape) - 2)
    np.testing.assert_allclose(ya, x.astype(np.float64).mean(axis=axes, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ym, x.max(axis=axes, keepdims=True))


# --- threads -----------------------------------------------------------------------------------------------
def test_parallel_kernels_match_serial():
    rng = np.random.default_rng(9)
    cases = [("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (1, 24, 64, 64), 1),
             ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2]), (1, 32, 64, 64), 1),
             ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
              (2, 8, 48, 48), 1),
             ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (1, 24, 64, 64), 2),
             ("GlobalAveragePool", {}, (1, 512, 16, 16), 1),
             ("GlobalMaxPool", {}, (1, 512, 16, 16), 1)]
    old = numba.get_num_threads()
    many = min(2, numba.config.NUMBA_NUM_THREADS)
    try:
        for op_type, attrs, shape, n_out in cases:
            x = rng.standard_normal(shape).astype(np.float32)
            results = []
            for nt in (1, many):
                numba.set_num_threads(nt)
                outs, _ = run_kernel(make_op(op_type, attrs, n_out=n_out), x)
                results.append(outs)
            for a, b in zip(*results):
                np.testing.assert_array_equal(a, b, err_msg=op_type)
            ref = make_op(op_type, attrs, n_out=n_out)
            ref.infer([TensorType(x.shape, x.dtype)], [None])
            np.testing.assert_allclose(results[0][0], ref.ref(x)[0], rtol=1e-5, atol=1e-6, err_msg=op_type)
    finally:
        numba.set_num_threads(old)


# --- validation --------------------------------------------------------------------------------------------
def _infer(op_type, attrs, shape, opset=19):
    op = make_op(op_type, attrs, opset=opset)
    return op.infer([TensorType(shape, np.dtype(np.float32))], [None])


def test_kernel_larger_than_padded_input():
    with pytest.raises(ShapeError, match=r"kernel 5x5 is larger than the padded input 3x3"):
        _infer("MaxPool", dict(kernel_shape=[5, 5]), (1, 1, 3, 3))
    with pytest.raises(ShapeError, match=r"dilated extent 5x1"):
        _infer("AveragePool", dict(kernel_shape=[3, 1], dilations=[2, 1]), (1, 1, 4, 4))
    out = _infer("MaxPool", dict(kernel_shape=[5, 5], pads=[1, 1, 1, 1]), (1, 1, 3, 3))
    assert out[0].shape == (1, 1, 1, 1)


@pytest.mark.parametrize("attrs,shape,match", [
    (dict(kernel_shape=[2, 2], strides=[0, 1]), (1, 1, 4, 4), "strides"),
    (dict(kernel_shape=[0, 2]), (1, 1, 4, 4), "kernel_shape"),
    (dict(kernel_shape=[2, 2], pads=[1, 1]), (1, 1, 4, 4), "pads has 2 values, expected 4"),
    (dict(kernel_shape=[2, 2], dilations=[1]), (1, 1, 4, 4), "dilations"),
    (dict(kernel_shape=[2, 2], pads=[-1, 0, 0, 0]), (1, 1, 4, 4), "negative pads"),
    (dict(kernel_shape=[2]), (4, 4), "rank >= 3"),
    (dict(kernel_shape=[2, 2]), (1, 1, 4), "has 2 spatial dims"),
    (dict(kernel_shape=[2, 2], auto_pad="SAME"), (1, 1, 4, 4), "auto_pad"),
    (dict(strides=[1, 1]), (1, 1, 4, 4), "kernel_shape attribute is required"),
])
def test_bad_attributes(attrs, shape, match):
    with pytest.raises(EdgeDLError, match=match):
        _infer("MaxPool", attrs, shape)


def test_global_pool_needs_rank_3():
    with pytest.raises(ShapeError, match="rank >= 3"):
        _infer("GlobalAveragePool", {}, (2, 3))


def test_end_to_end_through_onnx():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import edgedl

    nodes = [helper.make_node("MaxPool", ["x"], ["a"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    y = edgedl.load(model).run({"x": x})["y"]
    a, _ = naive_pool(x, "max", [3, 3], [2, 2], [1, 1], [1, 1, 1, 1])
    b, _ = naive_pool(a, "avg", [2, 2], [2, 2], [1, 1], [0, 0, 0, 0])
    np.testing.assert_allclose(y, b.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)
    del onnx


@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (2, 3, 43, 42), (1, 2, 5, 37), (1, 1, 2, 16)])
def test_pool2x2_kernel_matches_generic(shape):
    """2x2 stride-2 unpadded windows take a dedicated kernel: the same results as the generic one (max:
    bit for bit, NaN skipped; average: within one rounding), vector chunks and scalar tails alike."""
    from edgedl.kernels.cpu.pool import pool_runner
    from edgedl.kernels.cpu.pool2x2 import pool2x2_runner

    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::5] = np.nan
    x.reshape(-1)[3::11] = -np.inf
    for kind, op_type in (("max", "MaxPool"), ("avg", "AveragePool")):
        xin = x if kind == "max" else np.nan_to_num(x, nan=0.5, neginf=-3.0)
        op = make_op(op_type, dict(kernel_shape=[2, 2], strides=[2, 2]))
        (y,), kern = run_kernel(op, xin)
        assert kern.scratch_bytes == 0  # the dedicated kernel (the generic one needs a workspace)
        tab = op._tables(TensorType(xin.shape, xin.dtype))
        generic, nbytes = pool_runner(kind, tab)
        want = np.empty_like(y)
        generic(xin, want, np.empty(nbytes, np.uint8))
        if kind == "max":
            np.testing.assert_array_equal(y, want)
        else:
            np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
        run = pool2x2_runner(kind, shape[0] * shape[1], shape[2], shape[3])
        y2 = np.empty_like(y)
        run.bind(xin, y2, None, 2)()
        np.testing.assert_array_equal(y2, y)


# --- AveragePool as a depthwise convolution of ones ----------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_average_pool_as_depthwise_sums_against_naive_spec(seed):
    """Two vectors of channels and more: 2-D average pooling runs as window sums on the depthwise convolution
    kernels times the reciprocal counts (ceil_mode, count_include_pad, dilations, asymmetric and auto pads),
    the same floats for 1 and 2 threads."""
    from edgedl.kernels.cpu.vec import VW

    rng = np.random.default_rng(40 + seed)
    taken = 0
    old = numba.get_num_threads()
    try:
        for _ in range(8):
            kernel, strides, dil, pads, auto_pad, ceil_mode, in_sp = random_geometry(rng, 2)
            in_sp = [v + int(rng.integers(0, 12)) for v in in_sp]
            if auto_pad in ("NOTSET", "VALID") and any(
                    (kernel[i] - 1) * dil[i] + 1 > in_sp[i] + (0 if auto_pad == "VALID" else pads[i] + pads[i + 2])
                    for i in range(2)):
                continue
            c = int(rng.choice([2 * VW, 3 * VW, 5 * VW + 3]))
            x = rng.standard_normal((int(rng.integers(1, 3)), c, *in_sp)).astype(np.float32)
            for cip in (0, 1):
                attrs = attrs_of(kernel, strides, dil, pads, auto_pad, ceil_mode, count_include_pad=cip)
                what = f"x {x.shape} {attrs}"
                results = []
                for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                    numba.set_num_threads(nt)
                    op = make_op("AveragePool", attrs)
                    (y,), _ = run_kernel(op, x)
                    results.append(y)
                taken += op.avg_kernel == "depthwise"
                want, _ = naive_pool(x, "avg", kernel, strides, dil, pads, ceil_mode, auto_pad, cip)
                np.testing.assert_allclose(results[0], want, rtol=1e-5, atol=1e-6, err_msg=what)
                np.testing.assert_array_equal(results[0], results[1], err_msg=what)
    finally:
        numba.set_num_threads(old)
    assert taken >= 8


def test_average_pool_route_depends_on_channels():
    """Few channels at a strided (interleaved) geometry keep the window kernel; a wide layer takes the sums."""
    from edgedl.kernels.cpu.vec import VW

    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for c, kernel in ((3, "windows"), (2 * VW, "depthwise")):
        op = make_op("AveragePool", attrs)
        x = np.random.default_rng(c).standard_normal((1, c, 40, 40)).astype(np.float32)
        (y,), _ = run_kernel(op, x)
        assert op.avg_kernel == kernel
        want, _ = naive_pool(x, "avg", [3, 3], [2, 2], [1, 1], [1, 1, 1, 1])
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


# --- MaxPool on VW interleaved channels --------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_max_pool_on_interleaved_channels_against_naive_spec(seed):
    """Two vectors of channels and more, short or strided rows: max pooling on the interleaved-channel kernel
    (padding -inf; ceil_mode, dilations, asymmetric and auto pads, a last partial block of channels), NaN
    inputs never winning, the same floats for 1 and 2 threads."""
    from edgedl.kernels.cpu.vec import VW

    rng = np.random.default_rng(60 + seed)
    taken = 0
    old = numba.get_num_threads()
    try:
        for _ in range(10):
            kernel, strides, dil, pads, auto_pad, ceil_mode, in_sp = random_geometry(rng, 2)
            c = int(rng.choice([2 * VW, 3 * VW, 5 * VW + 3]))
            x = rng.standard_normal((int(rng.integers(1, 3)), c, *in_sp)).astype(np.float32)
            x[rng.random(x.shape) < 0.05] = np.nan
            x[rng.random(x.shape) < 0.02] = -np.inf
            attrs = attrs_of(kernel, strides, dil, pads, auto_pad, ceil_mode)
            what = f"x {x.shape} {attrs}"
            results = []
            for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                numba.set_num_threads(nt)
                op = make_op("MaxPool", attrs)
                (y,), _ = run_kernel(op, x)
                results.append(y)
            taken += op.max_kernel == "interleaved"
            want = np.full(results[0].shape, -np.inf)
            xs = np.where(np.isnan(x), -np.inf, x)  # NaN never wins: as if absent
            got_spec, _ = naive_pool(xs, "max", kernel, strides, dil, pads, ceil_mode, auto_pad)
            want[...] = got_spec
            np.testing.assert_array_equal(results[0], want.astype(np.float32), err_msg=what)
            np.testing.assert_array_equal(results[0], results[1], err_msg=what)
            np.testing.assert_array_equal(op.ref(x)[0], results[0], err_msg=what)
    finally:
        numba.set_num_threads(old)
    assert taken >= 5


def test_max_pool_route_and_sppf_windows():
    """SPPF's 5x5 stride-1 windows over a 10x10 plane of 128 channels take the interleaved kernel; few
    channels, and long unstrided rows, keep the window kernel."""
    cases = (((1, 128, 10, 10), dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2]), "interleaved"),
             ((1, 3, 10, 10), dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2]), "windows"),
             ((1, 32, 40, 40), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), "windows"))
    for shape, attrs, kernel in cases:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        op = make_op("MaxPool", attrs)
        (y,), _ = run_kernel(op, x)
        assert op.max_kernel == kernel
        want, _ = naive_pool(x, "max", attrs["kernel_shape"], [1, 1], [1, 1], attrs["pads"])
        np.testing.assert_array_equal(y, want.astype(np.float32))
