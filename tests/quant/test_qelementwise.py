"""Broadcasting 8-bit Add / Mul (edgedl.kernels.cpu.qelementwise.QBinary) against the numpy references
(edgedl.quant.reference_ops) bit for bit in every mode, over all 65536 input pairs, random broadcast shapes,
ties, saturation, extreme zero points and narrowed output ranges; and against onnxruntime's com.microsoft
QLinearAdd / QLinearMul (MODE_FLOAT)."""
from __future__ import annotations

import platform

import numba
import numpy as np
import pytest
from onnx import helper, numpy_helper

from edgedl.kernels.cpu.qelementwise import QBinary, _fma32, broadcast_geometry
from edgedl.quant import reference_ops as R
from edgedl.quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE

I8, U8 = np.int8, np.uint8
MODES = [MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT]


def _reference(kind, mode, a, sa, za, b, sb, zb, sy, zy, lo, hi):
    if mode == MODE_FLOAT:
        fn = R.qadd_onnx if kind == "add" else R.qmul_onnx
        return fn(a, sa, za, b, sb, zb, sy, zy, lo, hi)
    fn = R.qadd_tflite if kind == "add" else R.qmul_tflite
    return fn(a, sa, za, b, sb, zb, sy, zy, lo, hi, single=mode == MODE_SINGLE)


def _run(kind, mode, a, sa, za, b, sb, zb, sy, zy, lo, hi, out_dtype, parallel=None):
    shape = np.broadcast_shapes(a.shape, b.shape)
    op = QBinary(kind, a.shape, b.shape, shape, sa, za, sb, zb, sy, zy, lo, hi, mode)
    out = np.empty(shape, out_dtype)
    return op(a, b, out, parallel=parallel)


def _zp(rng, dtype):
    info = np.iinfo(dtype)
    return int(rng.choice([info.min, info.max, 0, int(rng.integers(info.min, info.max + 1))]))


@numba.njit(cache=False)
def _fma_loop(x, y, z):
    out = np.empty(x.size, np.float32)
    for i in range(x.size):
        out[i] = _fma32(x[i], y[i], z[i])
    return out


def test_fused_multiply_add_rounds_once():
    """The kernel's llvm.fma against the numpy emulation (reference_ops.fma_f32), including products that sit
    exactly on a float32 midpoint, where a float64 sum would round twice: (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000).astype(np.float32)
    y = (rng.standard_normal(4000) * 300).astype(np.float32)
    z = (rng.standard_normal(4000) * np.exp(rng.uniform(-30, 10, 4000))).astype(np.float32)
    a = np.float32(1 + 2.0**-12)
    x[:4], y[:4], z[:4] = [a, a, a, -a], a, [2.0**-80, -(2.0**-80), 0, 2.0**-80]
    got = _fma_loop(x, y, z)
    np.testing.assert_array_equal(got, R.fma_f32(x, y, z))
    assert (got[:3] - 1).tolist() == [2.0**-11 + 2.0**-23, 2.0**-11, 2.0**-11]


def test_broadcast_geometry():
    assert broadcast_geometry((2, 3, 4), (2, 3, 4), (2, 3, 4)) == ((24,), (1,), (1,))
    assert broadcast_geometry((2, 3, 4), (), (2, 3, 4)) == ((24,), (1,), (0,))
    assert broadcast_geometry((2, 3, 4, 5), (3, 1, 1), (2, 3, 4, 5)) == ((2, 3, 20), (60, 20, 1), (0, 1, 0))
    assert broadcast_geometry((1, 5), (4, 1), (4, 5)) == ((4, 5), (0, 1), (1, 0))
    assert broadcast_geometry((1,), (1, 1), (1, 1)) == ((1,), (0,), (0,))
    alt = broadcast_geometry((2, 1, 2, 1, 2, 1), (1, 3, 1, 3, 1, 3), (2, 3, 2, 3, 2, 3))
    assert len(alt[0]) == 6
    with pytest.raises(ValueError, match="broadcast"):
        broadcast_geometry((2, 3), (4,), (2, 4))
    with pytest.raises(ValueError, match="output shape"):
        broadcast_geometry((2, 3), (3,), (1, 2, 3))


@pytest.mark.parametrize("kind", ["add", "mul"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dts", [(I8, I8, I8), (U8, U8, U8), (I8, U8, U8)])
def test_all_pairs_match_reference(kind, mode, dts):
    """Every (a, b) pair at once (a 256 x 256 grid) for several parameter sets: ties (scales in ratios of
    powers of two), extreme zero points, saturation, a narrowed output range."""
    a_dt, b_dt, o_dt = dts
    rng = np.random.default_rng(100 + 10 * mode + (kind == "mul"))
    a = np.arange(256, dtype=np.uint8).view(a_dt).reshape(256, 1)
    b = np.arange(256, dtype=np.uint8).view(b_dt).reshape(1, 256)
    info = np.iinfo(o_dt)
    cases = [(0.5, 0.5, 1.0), (0.25, 0.75, 0.5), (1.0, 1.0, 0.03125), (0.02, 0.02, 8.0)]
    cases += [tuple(float(np.exp(rng.uniform(-6, 0))) for _ in range(3)) for _ in range(4)]
    for k, (sa, sb, sy) in enumerate(cases):
        za, zb, zy = _zp(rng, a_dt), _zp(rng, b_dt), _zp(rng, o_dt)
        lo, hi = (zy, info.max) if k % 3 == 2 else (info.min, info.max)  # a fused Relu
        got = _run(kind, mode, a, sa, za, b, sb, zb, sy, zy, lo, hi, o_dt)
        want = _reference(kind, mode, a, sa, za, b, sb, zb, sy, zy, lo, hi)
        np.testing.assert_array_equal(got, want, err_msg=f"case {k}")
        assert got.min() >= lo and got.max() <= hi


def test_ties_and_rounding_conventions():
    # (a + b) / 2 with a + b odd is an exact tie: half to even (onnxruntime) vs TFLite's away from zero
    a = np.array([1, -1, 3, -3, 127, -128], I8)
    b = np.zeros(6, I8)
    add = lambda mode: _run("add", mode, a, 1.0, 0, b, 1.0, 0, 2.0, 0, -128, 127, I8).tolist()  # noqa: E731
    assert add(MODE_FLOAT) == [0, 0, 2, -2, 64, -64]
    assert add(MODE_DOUBLE) == [1, -1, 2, -2, 64, -64]
    mul = _run("mul", MODE_DOUBLE, a, 1.0, 0, np.full(6, 3, I8), 1.0, 0, 2.0, 0, -128, 127, I8)
    # M = 0.5 is (2^30, shift 0): SRDHM alone rounds, and its nudge 1 - 2^30 takes negative ties toward zero
    assert mul.tolist() == [2, -1, 5, -4, 127, -128]


@pytest.mark.parametrize("kind", ["add", "mul"])
@pytest.mark.parametrize("mode", MODES)
def test_random_broadcast_shapes(kind, mode):
    rng = np.random.default_rng(7 + mode)
    shapes = [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (3, 1, 5)), ((4, 1), (1, 6)), ((7,), ()),
              ((), (3, 5)), ((1, 3, 1, 5), (2, 1, 4, 1)), ((2, 1, 3, 1, 2, 1), (1, 2, 1, 3, 1, 2)), ((1,), (1, 1))]
    for k, (sha, shb) in enumerate(shapes):
        dt = (I8, U8)[k % 2]
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max + 1, sha).astype(dt)
        b = rng.integers(info.min, info.max + 1, shb).astype(dt)
        sa, sb, sy = (np.float32(np.exp(rng.uniform(-5, 0))) for _ in range(3))
        za, zb, zy = _zp(rng, dt), _zp(rng, dt), _zp(rng, dt)
        got = _run(kind, mode, a, sa, za, b, sb, zb, sy, zy, info.min, info.max, dt)
        want = _reference(kind, mode, a, sa, za, b, sb, zb, sy, zy, info.min, info.max)
        np.testing.assert_array_equal(got, want, err_msg=f"{sha} {shb}")


def test_parallel_and_noncontiguous_inputs():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (8, 96, 400)).astype(I8)  # > PARALLEL_MIN_WORK outputs
    b = rng.integers(-128, 128, (96, 1)).astype(I8)
    want = R.qadd_tflite(a, 0.05, 3, b, 0.02, -7, 0.06, 1, -128, 127)
    for parallel in (None, True, False):
        np.testing.assert_array_equal(_run("add", MODE_DOUBLE, a, 0.05, 3, b, 0.02, -7, 0.06, 1, -128, 127, I8,
                                           parallel), want)
    at = np.asfortranarray(a)  # copied to C order by the kernel
    np.testing.assert_array_equal(_run("add", MODE_DOUBLE, at, 0.05, 3, b, 0.02, -7, 0.06, 1, -128, 127, I8), want)


@pytest.mark.parametrize("shape", [(1, 24, 56, 57), (3, 4097), (9000,)])
def test_parallel_same_shape_add_splits_its_single_row(shape):
    # same shapes collapse to one row: the parallel gather cuts it into chunks (a ragged last one here);
    # unit strides take the contiguous loop
    rng = np.random.default_rng(len(shape))
    a = rng.integers(-128, 128, shape).astype(I8)
    b = rng.integers(-128, 128, shape).astype(I8)
    want = R.qadd_tflite(a, 0.05, 3, b, 0.02, -7, 0.06, 1, -128, 127)
    op = QBinary("add", shape, shape, shape, 0.05, 3, 0.02, -7, 0.06, 1, -128, 127, MODE_DOUBLE)
    for parallel in (True, False):
        out = np.empty(shape, I8)
        op(a, b, out, parallel)
        np.testing.assert_array_equal(out, want)
    out = np.empty(shape, I8)
    op.bind(a, b, out)()
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("kind", ["add", "mul"])
@pytest.mark.parametrize("mode", MODES)
def test_one_value_per_row_of_either_operand(kind, mode):
    """A squeeze-and-excitation scale (N, C, H, W) x (N, C, 1, 1), on either side: each row reads its row of the
    pair table (or of its transpose), serial, parallel and bound, against the reference."""
    rng = np.random.default_rng(30 + mode)
    cases = [((2, 40, 6, 80), (2, 40, 1, 1)), ((3, 1, 1), (3, 7, 100)), ((2, 96, 1400), (2, 96, 1))]
    for k, (sha, shb) in enumerate(cases):
        dt = (I8, U8)[k % 2]
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max + 1, sha).astype(dt)
        b = rng.integers(info.min, info.max + 1, shb).astype(dt)
        sa, sb, sy = (np.float32(np.exp(rng.uniform(-5, 0))) for _ in range(3))
        za, zb, zy = _zp(rng, dt), _zp(rng, dt), _zp(rng, dt)
        want = _reference(kind, mode, a, sa, za, b, sb, zb, sy, zy, info.min, info.max)
        for parallel in (False, True):
            got = _run(kind, mode, a, sa, za, b, sb, zb, sy, zy, info.min, info.max, dt, parallel)
            np.testing.assert_array_equal(got, want, err_msg=f"{sha} {shb} parallel {parallel}")
        shape = np.broadcast_shapes(sha, shb)
        op = QBinary(kind, sha, shb, shape, sa, za, sb, zb, sy, zy, info.min, info.max, mode)
        out = np.empty(shape, dt)
        op.bind(a, b, out)()
        np.testing.assert_array_equal(out, want, err_msg=f"{sha} {shb} bound")


def test_fixed_modes_are_close_to_real_arithmetic():
    """Sanity of the TFLite transcriptions themselves: within 1 of the exactly rounded real result."""
    rng = np.random.default_rng(9)
    a = rng.integers(-128, 128, 5000)
    b = rng.integers(-128, 128, 5000)
    sa, sb, sy, za, zb, zy = 0.031, 0.047, 0.052, 5, -9, 3
    real_add = np.round(((a - za) * sa + (b - zb) * sb) / sy) + zy
    real_mul = np.round((a - za) * sa * (b - zb) * sb / 0.9) + zy
    for single in (False, True):
        add = R.qadd_tflite(a, sa, za, b, sb, zb, sy, zy, -128, 127, single)
        mul = R.qmul_tflite(a, sa, za, b, sb, zb, 0.9, zy, -128, 127, single)
        assert np.abs(add - np.clip(real_add, -128, 127)).max() <= 1
        assert np.abs(mul - np.clip(real_mul, -128, 127)).max() <= 1


def test_qbinary_errors():
    op = QBinary("add", (2, 3), (3,), (2, 3), 0.1, 0, 0.1, 0, 0.1, 0, -128, 127, MODE_DOUBLE)
    a, b = np.zeros((2, 3), I8), np.zeros(3, I8)
    with pytest.raises(ValueError, match="shape"):
        op(a, np.zeros(2, I8), np.empty((2, 3), I8))
    with pytest.raises(ValueError, match="shape"):
        op(a, b, np.empty((3, 2), I8))
    with pytest.raises(ValueError, match="int8 or uint8"):
        op(a.astype(np.int16), b, np.empty((2, 3), I8))
    with pytest.raises(ValueError, match="outside uint8"):
        op(a.view(U8), b.view(U8), np.empty((2, 3), U8))  # [-128, 127] is not a uint8 range
    with pytest.raises(ValueError, match="contiguous"):
        op(a, b, np.empty((3, 2), I8).T)
    with pytest.raises(ValueError, match="kind"):
        QBinary("sub", (2,), (2,), (2,), 0.1, 0, 0.1, 0, 0.1, 0, -128, 127, MODE_DOUBLE)
    with pytest.raises(ValueError, match="mode"):
        QBinary("add", (2,), (2,), (2,), 0.1, 0, 0.1, 0, 0.1, 0, -128, 127, 5)
    with pytest.raises(ValueError, match="broadcast"):
        QBinary("mul", (2,), (3,), (3,), 0.1, 0, 0.1, 0, 0.1, 0, -128, 127, MODE_DOUBLE)
    bad = QBinary("mul", (2,), (2,), (2,), -0.1, 0, 0.1, 0, 0.1, 0, -128, 127, MODE_DOUBLE)
    with pytest.raises(ValueError, match="scale"):
        bad(np.zeros(2, I8), np.zeros(2, I8), np.empty(2, I8))


def _host_has_avx2_fma():
    try:
        import llvmlite.binding as llvm

        feats = llvm.get_host_cpu_features()
        return platform.machine().lower() in ("x86_64", "amd64") and feats["avx2"] and feats["fma"]
    except Exception:  # pragma: no cover - no feature query: don't claim exactness
        return False


@pytest.mark.parametrize("dtype", [I8, U8])
def test_onnxruntime_qlinear_add_mul(dtype):
    """MODE_FLOAT against com.microsoft QLinearAdd / QLinearMul over broadcast patterns (onnxruntime's
    vector-vector, IsScalarA and IsScalarB spans). Within 1 LSB anywhere; bit-exact on x86-64 with
    AVX2 + FMA, which the transcription targets (measured: 0 differences)."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(21)
    info = np.iinfo(dtype)
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    shapes = [((64, 256), (64, 256)), ((64, 256), (64, 1)), ((64, 1), (64, 256)), ((1,), (32, 256)),
              ((32, 256), ()), ((2, 16, 1, 16), (1, 16, 32, 1)), ((3, 1), (1, 5))]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    diffs = total = 0
    for k in range(4):
        sa, sb, sy = (np.float32(np.exp(rng.uniform(-6, 0))) for _ in range(3))
        if k == 0:
            sa, sb, sy = np.float32(0.5), np.float32(0.25), np.float32(1.0)  # exact ties
        za, zb, zy = (int(rng.integers(info.min, info.max + 1)) for _ in range(3))
        inits = [numpy_helper.from_array(np.asarray(v, t), n) for n, v, t in
                 (("sa", sa, np.float32), ("za", za, dtype), ("sb", sb, np.float32), ("zb", zb, dtype),
                  ("sy", sy, np.float32), ("zy", zy, dtype))]
        for sha, shb in shapes:
            a = rng.integers(info.min, info.max + 1, sha).astype(dtype)
            b = rng.integers(info.min, info.max + 1, shb).astype(dtype)
            for kind, op in (("add", "QLinearAdd"), ("mul", "QLinearMul")):
                node = helper.make_node(op, ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"],
                                        domain="com.microsoft")
                g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", tt, list(sha)),
                                                    helper.make_tensor_value_info("b", tt, list(shb))],
                                      [helper.make_tensor_value_info("y", tt, None)], inits)
                m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
                sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                want = sess.run(None, {"a": a, "b": b})[0]
                got = _run(kind, MODE_FLOAT, a, sa, za, b, sb, zb, sy, zy, info.min, info.max, dtype)
                d = np.abs(got.astype(np.int64) - want.astype(np.int64))
                assert d.max() <= 1, (kind, sha, shb)
                diffs += int(np.count_nonzero(d))
                total += d.size
    assert diffs <= total // 1000
    if _host_has_avx2_fma():
        assert diffs == 0
