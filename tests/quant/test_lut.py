"""8-bit lookup tables (edgedl.kernels.cpu.lut): tables of activations and requantizations against the
elementwise numpy references (edgedl.quant.reference_ops), bit for bit, including ties and saturation, and
against onnxruntime's QLinearSigmoid / QLinearLeakyRelu / QLinearConcat; the lookup kernel (vector table lookups
where the host has them, edgedl.kernels.cpu.vec_lut, and the scalar loop) against numpy indexing."""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from onnx import helper, numpy_helper

from edgedl.kernels.cpu import lut, vec_lut
from edgedl.kernels.cpu.config import PARALLEL_MIN_WORK
from edgedl.quant import reference_ops as R
from edgedl.quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE

I8, U8 = np.int8, np.uint8
ALL_BYTES = {dt: np.arange(256, dtype=np.uint8).view(dt) for dt in (I8, U8)}


def _qparams(rng, dtype, extreme=False):
    info = np.iinfo(dtype)
    zp = int(rng.choice([info.min, info.max])) if extreme else int(rng.integers(info.min, info.max + 1))
    return np.float32(np.exp(rng.uniform(-7, 0))), zp


def _ort_run(node, feeds, inits, out_dtype):
    ort = pytest.importorskip("onnxruntime")
    tt = lambda dt: helper.np_dtype_to_tensor_dtype(np.dtype(dt))  # noqa: E731
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, tt(v.dtype), list(v.shape))
                                        for k, v in feeds.items()],
                          [helper.make_tensor_value_info("y", tt(out_dtype), None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_byte_indexing():
    assert lut.byte_values(I8)[[0, 127, 128, 255]].tolist() == [0, 127, -128, -1]
    assert lut.byte_values(U8)[[0, 255]].tolist() == [0, 255]
    # a table indexed by the byte: an int8 -1 reads entry 255
    table = np.arange(256, dtype=np.uint8)
    out = np.empty(3, np.uint8)
    lut.apply_table(np.array([-1, 0, -128], I8), table, out)
    assert out.tolist() == [255, 0, 128]


@pytest.mark.parametrize("in_dt,out_dt", [(I8, I8), (U8, U8), (I8, U8), (U8, I8)])
@pytest.mark.parametrize("rounding", ["even", "away"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_activation_tables_match_reference(in_dt, out_dt, rounding, precision):
    rng = np.random.default_rng(zlib.crc32(f"{in_dt} {out_dt} {rounding} {precision}".encode()))
    attrs = {"LeakyRelu": (0.1, None), "HardSigmoid": (0.25, 0.4), "Elu": (0.7, None), "Clip": (-1.5, 2.0)}
    x = rng.integers(np.iinfo(in_dt).min, np.iinfo(in_dt).max + 1, (5, 67)).astype(in_dt)
    for k, name in enumerate(lut.ACTIVATIONS):
        alpha, beta = attrs.get(name, (None, None))
        xs, xz = _qparams(rng, in_dt, extreme=k % 3 == 0)
        ys, yz = _qparams(rng, out_dt, extreme=k % 4 == 1)
        table = lut.activation_table(name, alpha, beta, xs, xz, ys, yz, in_dt, out_dt, rounding, precision)
        assert table.dtype == out_dt and table.shape == (256,)
        out = np.empty(x.shape, out_dt)
        lut.apply_table(x, table, out)
        want = R.lut_reference(lambda v, n=name, a=alpha, b=beta: R.activation_reference(n, v, a, b), x, xs, xz, ys,
                               yz, out_dt, rounding, precision)
        np.testing.assert_array_equal(out, want, err_msg=name)


def test_rounding_ties_and_saturation():
    # identity at half the scale: every odd value is an exact tie
    x = np.array([-5, -3, -1, 1, 3, 5, 127, -128], I8)
    even = lut.build_table(lambda v: v, 1.0, 0, 2.0, 0, I8, I8, "even")
    away = lut.build_table(lambda v: v, 1.0, 0, 2.0, 0, I8, I8, "away")
    out = np.empty_like(x)
    assert lut.apply_table(x, even, out).tolist() == [-2, -2, 0, 0, 2, 2, 64, -64]
    assert lut.apply_table(x, away, out).tolist() == [-3, -2, -1, 1, 2, 3, 64, -64]
    # a fine output scale saturates both ends; a shifted zero point saturates one
    big = lut.build_table(lambda v: v, 1.0, 0, 0.01, 0, I8, I8)
    assert big[[0x7F, 0x80, 0]].tolist() == [127, -128, 0]
    u = lut.build_table(lambda v: v, 1.0, 0, 1.0, 200, I8, U8)
    assert u[[0, 0x7F, 0x80]].tolist() == [200, 255, 72]
    with pytest.raises(ValueError):
        lut.build_table(lambda v: v * np.nan, 1.0, 0, 1.0, 0, I8, I8)


@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT])
@pytest.mark.parametrize("in_dt,out_dt", [(I8, I8), (U8, U8), (I8, U8), (U8, I8)])
def test_requant_table_matches_reference(mode, in_dt, out_dt):
    rng = np.random.default_rng(7 + mode)
    x = ALL_BYTES[in_dt]
    info_in, info_out = np.iinfo(in_dt), np.iinfo(out_dt)
    cases = [(0.5, 0.5), (0.25, 0.5), (0.75, 0.5), (1.0, 4.0), (0.1, 0.3), (3.0, 0.02)]  # ties, saturation
    cases += [(float(np.exp(rng.uniform(-6, 0))), float(np.exp(rng.uniform(-6, 0)))) for _ in range(12)]
    for k, (xs, ys) in enumerate(cases):
        xz = int(rng.choice([info_in.min, info_in.max, 0, rng.integers(info_in.min, info_in.max + 1)]))
        yz = int(rng.choice([info_out.min, info_out.max, 0, rng.integers(info_out.min, info_out.max + 1)]))
        table = lut.requant_table(xs, xz, ys, yz, in_dt, out_dt, mode)
        got = table[x.view(np.uint8)]
        if mode == MODE_FLOAT:
            want = R.requantize_onnx(x, xs, xz, ys, yz, out_dt)
        else:
            want = R.requantize_tflite(x, xs, xz, ys, yz, out_dt, single=mode == MODE_SINGLE)
        np.testing.assert_array_equal(got, want, err_msg=f"case {k}: {xs} {xz} -> {ys} {yz}")
    # equal parameters: the identity; int8 <-> uint8 at zero points 0 / 128: a flip of the top bit
    np.testing.assert_array_equal(lut.requant_table(0.3, 5, 0.3, 5, in_dt, in_dt, mode), x)
    np.testing.assert_array_equal(lut.requant_table(0.3, 0, 0.3, 128, I8, U8, mode).view(np.uint8),
                                  np.arange(256, dtype=np.uint8) ^ 0x80)


def test_apply_table_parallel_and_layouts():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (3, 300, 301)).astype(I8)  # > PARALLEL_MIN_WORK elements
    table = rng.integers(0, 256, 256).astype(U8)
    want = table[x.view(np.uint8)]
    for parallel in (None, True, False):
        out = np.empty(x.shape, U8)
        np.testing.assert_array_equal(lut.apply_table(x, table, out, parallel=parallel), want)
    out = np.empty((300, 3), U8)  # non-contiguous input: copied
    np.testing.assert_array_equal(lut.apply_table(x[:, :, 0].T, table, out), want[:, :, 0].T)


KERNELS = vec_lut.available_lut_kernels()  # the host's vector kernel (if any) and the scalar loop
KERNEL_IDS = [vec_lut.LUT_NAMES[k] for k in KERNELS]
SIZES = [0, 1, 15, 16, 17, 63, 64, 65, 1000, 100003]


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("in_dt,out_dt", [(I8, I8), (U8, U8), (I8, U8), (U8, I8)])
def test_lookup_kernel_sizes(kernel, in_dt, out_dt):
    """Every size around the vector widths (16, 64) and chunks, serial and parallel, unaligned views inside
    guard bytes: bit-exact with numpy and nothing written outside ``out``."""
    rng = np.random.default_rng(zlib.crc32(f"{kernel} {in_dt} {out_dt}".encode()))
    for n in SIZES + [3 * lut._CHUNK + 65]:
        table = rng.integers(0, 256, 256).astype(np.uint8).view(out_dt)
        xbuf = rng.integers(0, 256, n + 3).astype(np.uint8).view(in_dt)
        x = xbuf[3:]  # an unaligned address
        want = table[x.view(np.uint8)]
        for parallel in (False, True):
            obuf = rng.integers(0, 256, n + 130).astype(np.uint8).view(out_dt)
            guard = obuf.copy()
            out = obuf[1:n + 1]
            assert lut.apply_table(x, table, out, parallel=parallel, kernel=kernel) is out
            np.testing.assert_array_equal(out, want, err_msg=f"n={n} parallel={parallel}")
            np.testing.assert_array_equal(obuf[:1], guard[:1])
            np.testing.assert_array_equal(obuf[n + 1:], guard[n + 1:])


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
def test_lookup_kernel_layouts_and_bind(kernel):
    rng = np.random.default_rng(5 + kernel)
    table = rng.integers(-128, 128, 256).astype(I8)
    x = rng.integers(0, 256, (7, 130, 67)).astype(U8)  # 60970 elements
    want = table[x]
    out = np.empty((67, 130), I8)  # non-contiguous input: copied
    np.testing.assert_array_equal(lut.apply_table(x[3].T, table, out, kernel=kernel), want[3].T)
    for shape in [(0,), (1,), (65,), (7, 130, 67), (2, 3, PARALLEL_MIN_WORK // 6 + 17)]:  # serial and parallel
        xs = rng.integers(0, 256, shape).astype(U8)
        out = np.empty(shape, I8)
        run = lut.bind_table(xs, table, out, kernel=kernel)
        run()
        np.testing.assert_array_equal(out, table[xs])
        xs[...] = rng.integers(0, 256, shape)  # bound to the arrays: new input, same call
        run()
        np.testing.assert_array_equal(out, table[xs])
    run = lut.bind_table(x[:, :, ::2], table, np.empty((7, 130, 34), I8), kernel=kernel)  # strided: a copy each call
    run()


def test_lookup_kernel_selection(monkeypatch):
    """The host's best kernel by default; EDGEDL_LUT_KERNEL / the ``kernel`` argument pick another."""
    assert KERNELS[-1] == vec_lut.LUT_SCALAR
    assert vec_lut.LUT_KERNELS == vec_lut.lut_kernels_for(*vec_lut.target_cpu())
    if "EDGEDL_LUT_KERNEL" not in os.environ:
        assert vec_lut.LUT_KERNEL == KERNELS[0]
    monkeypatch.delenv("EDGEDL_LUT_KERNEL", raising=False)
    assert vec_lut._default_kernel() == KERNELS[0]
    monkeypatch.setenv("EDGEDL_LUT_KERNEL", "scalar")
    assert vec_lut._default_kernel() == vec_lut.LUT_SCALAR
    missing = [k for k in (vec_lut.LUT_VBMI, vec_lut.LUT_NEON) if k not in KERNELS]
    for k in missing:
        monkeypatch.setenv("EDGEDL_LUT_KERNEL", vec_lut.LUT_NAMES[k])
        with pytest.warns(UserWarning, match="not available"):
            assert vec_lut._default_kernel() == KERNELS[0]
        with pytest.raises(ValueError, match="not available"):
            lut.apply_table(np.zeros(4, I8), np.zeros(256, I8), np.empty(4, I8), kernel=k)
    # what a compilation target offers (explicit features decide on x86; AArch64 has NEON unless "-neon")
    vbmi = "+avx512f,+avx512bw,+avx512vbmi"
    assert vec_lut.lut_kernels_for("x86_64", "znver4", vbmi) == (vec_lut.LUT_VBMI,)
    assert vec_lut.lut_kernels_for("x86_64", "znver4", vbmi.replace("+avx512vbmi", "-avx512vbmi")) == ()
    assert vec_lut.lut_kernels_for("x86_64", "haswell", "+avx2,+fma") == ()
    assert vec_lut.lut_kernels_for("aarch64", "cortex-a72", "") == (vec_lut.LUT_NEON,)
    assert vec_lut.lut_kernels_for("aarch64", "cortex-a53", "+neon,+crc") == (vec_lut.LUT_NEON,)
    assert vec_lut.lut_kernels_for("aarch64", "generic", "-neon") == ()
    assert vec_lut.lut_kernels_for("armv7l", "cortex-a72", "+neon") == ()


def test_lut_errors():
    x = np.zeros(4, I8)
    with pytest.raises(ValueError, match="table"):
        lut.apply_table(x, np.zeros(255, I8), np.empty(4, I8))
    with pytest.raises(ValueError, match="table"):
        lut.apply_table(x, np.zeros(256, U8), np.empty(4, I8))
    with pytest.raises(ValueError, match="elements"):
        lut.apply_table(x, np.zeros(256, I8), np.empty(5, I8))
    with pytest.raises(ValueError, match="int8 or uint8"):
        lut.apply_table(x.astype(np.int16), np.zeros(256, I8), np.empty(4, I8))
    with pytest.raises(ValueError, match="contiguous"):
        lut.apply_table(x, np.zeros(256, I8), np.empty((4, 2), I8)[:, 0])
    with pytest.raises(ValueError, match="zero point"):
        lut.requant_table(0.1, 200, 0.1, 0, I8, I8, MODE_FLOAT)
    with pytest.raises(ValueError, match="scale"):
        lut.activation_table("Relu", None, None, 0.0, 0, 0.1, 0, I8, I8)
    with pytest.raises(ValueError, match="activation"):
        lut.activation_table("Gelu", None, None, 0.1, 0, 0.1, 0, I8, I8)
    with pytest.raises(ValueError, match="mode"):
        lut.requant_table(0.1, 0, 0.1, 0, I8, I8, 7)


@pytest.mark.parametrize("dtype", [I8, U8])
def test_onnxruntime_lookup_ops(dtype):
    """QLinearLeakyRelu and QLinearConcat tables are bit-exact with float32 precision (onnxruntime's); the
    Sigmoid table (exact float64 logistic) stays within 1 LSB of onnxruntime's polynomial MlasComputeLogistic."""
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    x = ALL_BYTES[dtype]
    total = sig_diff = 0
    for k in range(24):
        if k < 4:  # power-of-two scales: exact ties in the requantization
            xs, ys = np.float32(2.0 ** -k), np.float32(2.0 ** (1 - k))
        else:
            xs, ys = np.float32(np.exp(rng.uniform(-7, 0))), np.float32(np.exp(rng.uniform(-9, 0)))
        xz, yz = (int(rng.integers(info.min, info.max + 1)) for _ in range(2))
        inits = dict(xs=np.array(xs), xz=np.array(xz, dtype), ys=np.array(ys), yz=np.array(yz, dtype))
        alpha = np.float32(rng.uniform(0.01, 0.5))
        node = helper.make_node("QLinearLeakyRelu", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft",
                                alpha=float(alpha))
        want = _ort_run(node, {"x": x}, inits, dtype)
        np.testing.assert_array_equal(lut.activation_table("LeakyRelu", alpha, None, xs, xz, ys, yz, dtype, dtype,
                                                           "even", "float32"), want)
        node = helper.make_node("QLinearSigmoid", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft")
        want = _ort_run(node, {"x": x}, inits, dtype)
        got = lut.activation_table("Sigmoid", None, None, xs, xz, ys, yz, dtype, dtype)
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
        assert diff.max() <= 1
        total += diff.size
        sig_diff += np.count_nonzero(diff)
        # QLinearConcat: input 0 requantized to the output's parameters, input 1 already there (a copy)
        x2 = rng.integers(info.min, info.max + 1, 7).astype(dtype)
        inits = dict(ys=np.array(ys), yz=np.array(yz, dtype), xs=np.array(xs), xz=np.array(xz, dtype),
                     x2s=np.array(ys), x2z=np.array(yz, dtype))
        node = helper.make_node("QLinearConcat", ["ys", "yz", "x", "xs", "xz", "x2", "x2s", "x2z"], ["y"],
                                domain="com.microsoft", axis=0)
        want = _ort_run(node, {"x": x, "x2": x2}, inits, dtype)
        np.testing.assert_array_equal(lut.requant_table(xs, xz, ys, yz, dtype, dtype, MODE_FLOAT), want[:256])
        np.testing.assert_array_equal(want[256:], x2)
    assert sig_diff <= total // 100  # measured: 0 of 6144 with onnxruntime 1.32 (x86-64)
