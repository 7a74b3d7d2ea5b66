"""8-bit GEMM and convolution (kernels/cpu/gemm_i8.py, conv_i8.py) bit-exact against the numpy
transcription of TFLite's integer FullyConnected / Conv, and against int64 accumulation plus the reference
requantization for every mode, uint8 operands, weight zero points, the rows (MatMul) layout, raw int32
outputs, ragged tiles, odd K, saturation, and the parallel split.

The second half runs every kernel this CPU has (byte dot products: ``vpdpbusd`` on zmm/ymm, ``sdot``; the
int16-pair fallback): operand types and zero points (correction terms), ragged M/N/K, extreme values up to
K = 32767, the whole multiplier range of each requantization mode, the scalar epilogue, every convolution
packing path, and the parallel splits. Run it under ``NUMBA_CPU_NAME=cortex-a76`` (sdot) and
``cortex-a72`` (pairs only) on arm64 too."""
from __future__ import annotations

import numpy as np
import pytest

from edgedl.kernels.cpu import vec_i8dot
from edgedl.kernels.cpu.conv_i8 import QConv2d
from edgedl.kernels.cpu.gemm_i8 import KERNEL_NAMES, QGemm, available_kernels
from edgedl.quant import reference as ref
from edgedl.quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE, Requant, requantize_reference


def _req(rng, m, k, mode, zp=0, lo=-128, hi=127):
    return Requant.for_scales(0.02, rng.uniform(0.001, 0.02, m).astype(np.float32), 0.05 * np.sqrt(k), m, zp, lo, hi,
                              mode)


@pytest.mark.parametrize("m,k,n", [(4, 2, 16), (7, 33, 19), (64, 576, 49), (10, 1, 3), (33, 250, 100)])
@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE])
def test_qgemm_matches_tflite_fully_connected(m, k, n, mode):
    rng = np.random.default_rng(m * 31 + k)
    w = rng.integers(-127, 128, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-20000, 20000, m).astype(np.int32)
    x_zp, y_zp = int(rng.integers(-20, 20)), int(rng.integers(-20, 20))
    req = _req(rng, m, k, mode, y_zp, -100, 120)
    out = np.empty((m, n), np.int8)
    QGemm(w, bias, req, x_zp)(x, out)
    want = ref.fully_connected(x.T, x_zp, w, bias, req.m0, req.shift, y_zp, -100, 120,
                               single_rounding=mode == MODE_SINGLE).T
    np.testing.assert_array_equal(out.astype(np.int64), want)


@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT])
@pytest.mark.parametrize("xt,wt", [(np.int8, np.int8), (np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)])
@pytest.mark.parametrize("layout", ["cols", "rows"])
def test_qgemm_every_mode_type_and_layout(mode, xt, wt, layout):
    rng = np.random.default_rng(hash((mode, xt().dtype.str, wt().dtype.str, layout)) % 2**32)
    m, k, n = 21, 37, 45
    ii = np.iinfo(xt)
    wi = np.iinfo(wt)
    w = rng.integers(wi.min, wi.max + 1, (m, k)).astype(wt)
    x = rng.integers(ii.min, ii.max + 1, (k, n)).astype(xt)
    w_zp = rng.integers(wi.min, wi.max + 1, m) if wt == np.uint8 else 0
    x_zp = int(rng.integers(ii.min, ii.max + 1))
    yt = xt
    yi = np.iinfo(yt)
    bias = rng.integers(-50000, 50000, m).astype(np.int32)
    req = _req(rng, m, k, mode, int(rng.integers(yi.min, yi.max + 1)), yi.min, yi.max)
    acc = (w.astype(np.int64) - np.asarray(w_zp).reshape(-1, 1)) @ (x.astype(np.int64) - x_zp) + bias[:, None]
    want = requantize_reference(acc, req, channel_axis=0)
    q = QGemm(w, bias, req, x_zp, w_zp)
    if layout == "cols":
        out = np.empty((m, n), yt)
        q(x, out)
    else:
        out = np.empty((n, m), yt)
        q.rows(np.ascontiguousarray(x.T), out)
        out = out.T
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qgemm_raw_int32_output():
    rng = np.random.default_rng(5)
    w = rng.integers(0, 256, (9, 70)).astype(np.uint8)
    a = rng.integers(0, 256, (30, 70)).astype(np.uint8)
    out = np.empty((30, 9), np.int32)
    QGemm(w, None, None, 17, w_zp=128).rows(a, out)
    np.testing.assert_array_equal(out, (a.astype(np.int64) - 17) @ (w.astype(np.int64) - 128).T)


@pytest.mark.parametrize("threads", [1, 2])
def test_qgemm_parallel_split_gives_the_same_bits(threads):
    import numba

    rng = np.random.default_rng(11)
    m, k, n = 64, 300, 1000  # enough work for the parallel path
    w = rng.integers(-127, 128, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (k, n)).astype(np.int8)
    req = _req(rng, m, k, MODE_DOUBLE, 3)
    q = QGemm(w, None, req, -5)
    out = np.empty((m, n), np.int8)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        q(x, out)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    want = ref.fully_connected(x.T, -5, w, None, req.m0, req.shift, 3).T
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qgemm_saturates_at_the_activation_bounds():
    rng = np.random.default_rng(9)
    w = rng.integers(-127, 128, (12, 64)).astype(np.int8)
    x = rng.integers(-128, 128, (64, 40)).astype(np.int8)
    req = Requant.from_multipliers(np.full(12, 0.01), np.full(12, 0.01), -3, -100, 120, MODE_DOUBLE)
    out = np.empty((12, 40), np.int8)
    QGemm(w, None, req, 5)(x, out)
    want = ref.fully_connected(x.T, 5, w, None, req.m0, req.shift, -3, -100, 120).T
    np.testing.assert_array_equal(out.astype(np.int64), want)
    assert (out == -100).any() and (out == 120).any()


def test_qgemm_extreme_values_do_not_overflow():
    # every product at its extreme: 127 * (-128 - 127) summed over K = 4096 stays inside int32
    k = 4096
    w = np.full((8, k), -127, np.int8)
    x = np.full((k, 16), -128, np.int8)
    req = Requant.from_multipliers(np.full(8, 1e-4), np.full(8, 1e-4), 0, -128, 127, MODE_DOUBLE)
    out = np.empty((8, 16), np.int8)
    QGemm(w, None, req, 127)(x, out)
    want = ref.fully_connected(x.T, 127, w, None, req.m0, req.shift, 0).T
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qgemm_rejects_bad_shapes():
    req = Requant.from_multipliers(np.full(4, 0.01), np.full(4, 0.01), 0, -128, 127, MODE_DOUBLE)
    q = QGemm(np.zeros((4, 8), np.int8), None, req, 0)
    with pytest.raises(ValueError):
        q(np.zeros((7, 3), np.int8), np.empty((4, 3), np.int8))
    with pytest.raises(ValueError):
        q(np.zeros((8, 3), np.int8), np.empty((4, 3), np.int32))
    with pytest.raises(ValueError):
        q.rows(np.zeros((3, 8), np.float32), np.empty((3, 4), np.int8))


@pytest.mark.parametrize("shape,m,k,s,p,d,g", [
    ((1, 3, 12, 11), 8, 3, 1, (1, 1, 1, 1), 1, 1),      # first layer, same padding
    ((2, 8, 9, 9), 16, 3, 2, (1, 0, 2, 1), 1, 1),       # strided, asymmetric pads, batch 2
    ((1, 6, 10, 8), 6, 3, 1, (2, 2, 2, 2), 2, 6),       # depthwise, dilated
    ((1, 8, 7, 7), 12, 1, 1, (0, 0, 0, 0), 1, 2),       # grouped 1x1
    ((1, 16, 9, 13), 24, 1, 1, (0, 0, 0, 0), 1, 1),     # 1x1 as a matrix
    ((1, 5, 30, 40), 7, 5, 3, (2, 1, 0, 2), 1, 1),      # wide rows, several segments per panel
])
@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_FLOAT])
def test_qconv_bit_exact(shape, m, k, s, p, d, g, mode):
    rng = np.random.default_rng(sum(shape) + m)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    w = rng.integers(-127, 128, (m, shape[1] // g, k, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, m).astype(np.int32)
    req = Requant.from_multipliers(rng.uniform(0.0005, 0.01, m), rng.uniform(0.0005, 0.01, m).astype(np.float32),
                                   -2, -128, 127, mode)
    conv = QConv2d(w, bias, req, shape, 7, (s, s), p, (d, d), g)
    out = np.empty(conv.out_shape, np.int8)
    conv(x, out)
    if mode == MODE_DOUBLE:
        want = ref.conv2d(x, 7, w, bias, req.m0, req.shift, -2, (s, s), p, (d, d), g)
    else:
        acc = ref.conv2d_accumulate(x, 7, w, 0, bias, (s, s), p, (d, d), g)
        want = requantize_reference(acc, req, channel_axis=1)
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_qconv_uint8_with_weight_zero_point_and_raw_output():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 4, 6, 7)).astype(np.uint8)
    w = rng.integers(0, 256, (5, 4, 3, 3)).astype(np.uint8)
    conv = QConv2d(w, None, None, x.shape, 100, (1, 1), (1, 1, 1, 1), (1, 1), 1, w_zp=131)
    out = np.empty(conv.out_shape, np.int32)
    conv(x, out)
    np.testing.assert_array_equal(out, ref.conv2d_accumulate(x, 100, w, 131, None, (1, 1), (1, 1, 1, 1), (1, 1), 1))


# ---------------------------------------------------------------------------------------------------------------
# every kernel this CPU runs (byte dot products: vpdpbusd zmm/ymm, sdot; the int16-pair fallback)
# ---------------------------------------------------------------------------------------------------------------
KERNELS = [pytest.param(k, id=KERNEL_NAMES[k]) for k in available_kernels()]


def _acc(w, w_zp, x, x_zp, bias):
    return (w.astype(np.int64) - np.asarray(w_zp, np.int64).reshape(-1, 1)) @ (x.astype(np.int64) - x_zp) + \
        (0 if bias is None else bias.astype(np.int64)[:, None])


def _run(q, x, layout, out_dtype):
    m = q.m
    n = x.shape[1]
    if layout == "cols":
        out = np.empty((m, n), out_dtype)
        q(x, out)
        return out
    out = np.empty((n, m), out_dtype)
    q.rows(np.ascontiguousarray(x.T), out)
    return out.T


def test_default_kernel_is_the_best_available():
    assert vec_i8dot.KERNEL_I8 == (vec_i8dot.DOT_KERNELS[0] if vec_i8dot.DOT_KERNELS else vec_i8dot.K_PAIRS) or \
        "EDGEDL_I8_KERNEL" in __import__("os").environ
    assert available_kernels()[-1] == vec_i8dot.K_PAIRS


@pytest.mark.parametrize("machine,cpu,feats,want", [
    ("x86_64", "znver4", "+avx512f,+avx512bw,+avx512vl,+avx512vnni", ("vnni512", "vnni256")),
    ("x86_64", "alderlake", "+avxvnni,-avx512f,-avx512vnni", ("vnni256",)),
    ("x86_64", "skylake-avx512", "+avx512f,+avx512bw,+avx512vl,-avx512vnni,-avxvnni", ()),
    ("x86_64", "haswell", "", ()),
    ("aarch64", "cortex-a76", "", ("sdot",)),          # Pi 5: the CPU name's defaults, resolved by LLVM
    ("aarch64", "cortex-a72", "", ()),                 # Pi 4
    ("aarch64", "cortex-a53", "", ()),                 # Pi 3
    ("aarch64", "cortex-a72", "+neon,+dotprod", ("sdot",)),   # an explicit feature decides
    ("aarch64", "cortex-a76", "+neon,-dotprod", ()),
])
def test_kernel_choice_follows_the_compilation_target(machine, cpu, feats, want):
    got = vec_i8dot.dot_kernels_for(machine, cpu, feats)
    assert tuple(KERNEL_NAMES[k] for k in got) == want


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT])
@pytest.mark.parametrize("xt,wt", [(np.int8, np.int8), (np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)])
def test_every_kernel_mode_and_operand_type(kernel, mode, xt, wt):
    rng = np.random.default_rng(hash((kernel, mode, xt().dtype.str, wt().dtype.str)) % 2**32)
    m, k, n = 19, 45, 71
    xi, wi = np.iinfo(xt), np.iinfo(wt)
    w = rng.integers(wi.min, wi.max + 1, (m, k)).astype(wt)
    x = rng.integers(xi.min, xi.max + 1, (k, n)).astype(xt)
    # int8 weights: symmetric (the usual) or with a per-row zero point; uint8: any zero point
    w_zp = rng.integers(wi.min, wi.max + 1, m) if (wt == np.uint8 or mode == MODE_SINGLE) else 0
    x_zp = int(rng.integers(xi.min, xi.max + 1))
    bias = rng.integers(-50000, 50000, m).astype(np.int32)
    req = _req(rng, m, k, mode, int(rng.integers(xi.min, xi.max + 1)), xi.min, xi.max)
    want = requantize_reference(_acc(w, w_zp, x, x_zp, bias), req, channel_axis=0)
    q = QGemm(w, bias, req, x_zp, w_zp, kernel=kernel)
    for layout in ("cols", "rows"):
        np.testing.assert_array_equal(_run(q, x, layout, xt).astype(np.int64), want, err_msg=layout)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 2, 5), (9, 3, 33), (8, 5, 32), (17, 7, 31), (33, 13, 65), (40, 64, 9),
                                   (5, 130, 100), (64, 255, 2)])
def test_ragged_shapes(kernel, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    w = rng.integers(0, 256, (m, k)).astype(np.uint8)
    x = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w_zp = rng.integers(0, 256, m)
    bias = rng.integers(-1000, 1000, m).astype(np.int32)
    req = _req(rng, m, k, MODE_DOUBLE, 0)
    q = QGemm(w, bias, req, -3, w_zp, kernel=kernel)
    want = requantize_reference(_acc(w, w_zp, x, -3, bias), req, channel_axis=0)
    for layout in ("cols", "rows"):
        np.testing.assert_array_equal(_run(q, x, layout, np.int8).astype(np.int64), want, err_msg=layout)
    raw = QGemm(w, bias, None, -3, w_zp, kernel=kernel)
    np.testing.assert_array_equal(_run(raw, x, "cols", np.int32), _acc(w, w_zp, x, -3, bias))
    np.testing.assert_array_equal(_run(raw, x, "rows", np.int32), _acc(w, w_zp, x, -3, bias))
    raw0 = QGemm(w, None, None, -3, w_zp, kernel=kernel)  # no bias: the pairs kernel's rows-as-A path
    np.testing.assert_array_equal(_run(raw0, x, "rows", np.int32), _acc(w, w_zp, x, -3, None))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("xt", [np.uint8, np.int8])
def test_raw_rows_on_the_pairs_kernel_split_across_threads(threads, xt):
    """Raw int32 rows on the int16 pairs (MatMulInteger without byte dot products): activation rows as the
    tile's rows, weight panels split across threads, ragged on both sides; the same bits at every count."""
    from edgedl.kernels.cpu.vec_i8dot import K_PAIRS

    rng = np.random.default_rng(threads)
    r, k, m = 23, 301, 1003  # above the parallel threshold; 23 rows: a partial last row panel
    w = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w_zp = rng.integers(0, 256, m)
    info = np.iinfo(xt)
    a = rng.integers(info.min, info.max + 1, (r, k)).astype(xt)
    q = QGemm(w, None, None, int(info.min) + 77, w_zp, kernel=K_PAIRS)
    out = np.full((r, m), -1, np.int32)
    q.rows(a, out, threads=threads)
    np.testing.assert_array_equal(out, _acc(w, w_zp, a.T, int(info.min) + 77, None).T)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("xt,wt,xv,wv,x_zp,w_zp", [
    (np.uint8, np.int8, 255, -128, 0, 0),      # the largest u8 x s8 product everywhere
    (np.uint8, np.int8, 0, 127, 255, 0),
    (np.int8, np.int8, -128, -128, 127, 0),    # (-128 - 127) * -128
    (np.int8, np.int8, 127, -128, -128, 0),
    (np.uint8, np.uint8, 255, 0, 0, 255),      # (255 - 0) * (0 - 255): the most negative sum
    (np.int8, np.uint8, -128, 255, 127, 0),
    (np.uint8, np.int8, 255, -128, 0, 127),    # int8 weights with a zero point
])
@pytest.mark.parametrize("k", [4096, 32767])
def test_extreme_values_do_not_overflow(kernel, xt, wt, xv, wv, x_zp, w_zp, k):
    m, n = 9, 37
    w = np.full((m, k), wv, wt)
    x = np.full((k, n), xv, xt)
    want = _acc(w, w_zp, x, x_zp, None)
    assert np.abs(want).max() < 2**31
    raw = QGemm(w, None, None, x_zp, w_zp, kernel=kernel)
    np.testing.assert_array_equal(_run(raw, x, "cols", np.int32), want)
    np.testing.assert_array_equal(_run(raw, x, "rows", np.int32), want)
    req = Requant.from_multipliers(np.full(m, 1e-7), np.full(m, 1e-7), 0, -128, 127, MODE_DOUBLE)
    out = _run(QGemm(w, None, req, x_zp, w_zp, kernel=kernel), x, "cols", np.int8)
    np.testing.assert_array_equal(out.astype(np.int64), requantize_reference(want, req, channel_axis=0))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT])
def test_requantization_over_the_whole_multiplier_range(kernel, mode):
    # multipliers from 2^-30 to ~2^5 (right shifts up to 31, left shifts up to 6), ties and saturation
    rng = np.random.default_rng(mode)
    m, k, n = 48, 40, 50
    w = rng.integers(-127, 128, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-300000, 300000, m).astype(np.int32)
    real = 2.0 ** rng.uniform(-30, 5, m)
    req = Requant.from_multipliers(real, real.astype(np.float32), int(rng.integers(-10, 10)), -128, 127, mode)
    want = requantize_reference(_acc(w, 0, x, 1, bias), req, channel_axis=0)
    out = _run(QGemm(w, bias, req, 1, kernel=kernel), x, "cols", np.int8)
    np.testing.assert_array_equal(out.astype(np.int64), want)


@pytest.mark.parametrize("kernel", KERNELS)
def test_scalar_epilogue_when_acc_plus_bias_may_leave_int32(kernel):
    # a bias near 2^31 makes acc + bias overflow int32: the kernels keep the int64 sum (scalar epilogue)
    rng = np.random.default_rng(2)
    m, k, n = 10, 64, 40
    w = rng.integers(-127, 128, (m, k)).astype(np.int8)
    x = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = np.full(m, 2**31 - 100, np.int32)
    bias[::2] = -(2**31) + 100
    req = Requant.from_multipliers(np.full(m, 2.0**-24), np.full(m, 2.0**-24, np.float32), 0, -128, 127, MODE_FLOAT)
    q = QGemm(w, bias, req, 0, kernel=kernel)
    want = requantize_reference(_acc(w, 0, x, 0, bias), req, channel_axis=0)
    np.testing.assert_array_equal(_run(q, x, "cols", np.int8).astype(np.int64), want)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("xt,wt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
@pytest.mark.parametrize("shape,m,kk,s,p,d,g", [
    ((1, 5, 13, 11), 7, 3, 1, (1, 1, 1, 1), 1, 1),      # same padding: consecutive input pixels
    ((1, 6, 9, 40), 9, 3, 1, (1, 1, 1, 1), 1, 1),       # wide rows (several panels per row)
    ((1, 4, 11, 9), 5, 3, 1, (0, 1, 2, 1), 1, 1),       # asymmetric pads, ow == w
    ((1, 3, 10, 12), 6, 3, 2, (1, 1, 1, 1), 1, 1),      # stride 2: row gathers
    ((1, 3, 12, 12), 6, 3, 2, (1, 0, 1, 0), 2, 1),      # stride 2, dilation 2
    ((1, 3, 7, 75), 5, 3, 2, (1, 1, 1, 1), 1, 1),       # stride 2, rows longer than a panel
    ((1, 4, 10, 10), 4, 3, 3, (1, 1, 1, 1), 1, 1),      # stride 3: scalar gathers
    ((1, 8, 6, 7), 8, 3, 1, (0, 0, 0, 0), 1, 2),        # grouped, valid padding (segments)
    ((2, 16, 5, 5), 20, 1, 1, (0, 0, 0, 0), 1, 1),      # 1x1 as a matrix, batch 2
])
def test_conv_every_kernel(kernel, xt, wt, shape, m, kk, s, p, d, g, monkeypatch):
    import edgedl.kernels.cpu.gemm_i8 as gemm_i8

    rng = np.random.default_rng(sum(shape) * 7 + m + kk)
    xi, wi = np.iinfo(xt), np.iinfo(wt)
    x = rng.integers(xi.min, xi.max + 1, shape).astype(xt)
    w = rng.integers(wi.min, wi.max + 1, (m, shape[1] // g, kk, kk)).astype(wt)
    w_zp = rng.integers(wi.min, wi.max + 1, m) if wt == np.uint8 else 0
    x_zp = int(rng.integers(xi.min, xi.max + 1))
    bias = rng.integers(-5000, 5000, m).astype(np.int32)
    req = Requant.from_multipliers(rng.uniform(0.0005, 0.01, m), rng.uniform(0.0005, 0.01, m).astype(np.float32),
                                   3, xi.min, xi.max, MODE_FLOAT)
    monkeypatch.setattr(gemm_i8, "KERNEL_I8", kernel)
    conv = QConv2d(w, bias, req, shape, x_zp, (s, s), p, (d, d), g, w_zp)
    assert all(q.kernel == kernel for q in conv.gemms)
    out = np.empty(conv.out_shape, xt)
    conv(x, out)
    acc = ref.conv2d_accumulate(x, x_zp, w, w_zp, bias, (s, s), p, (d, d), g)
    np.testing.assert_array_equal(out.astype(np.int64), requantize_reference(acc, req, channel_axis=1))
    raw = QConv2d(w, None, None, shape, x_zp, (s, s), p, (d, d), g, w_zp)
    out32 = np.empty(raw.out_shape, np.int32)
    raw(x, out32)
    np.testing.assert_array_equal(out32, ref.conv2d_accumulate(x, x_zp, w, w_zp, None, (s, s), p, (d, d), g))


@pytest.mark.parametrize("xt,x_zp", [(np.uint8, 300), (np.uint8, 200), (np.uint8, -1), (np.int8, -200), (np.int8, 100),
                                     (np.int8, 128)])
def test_image_zero_point_outside_the_byte_range_falls_back_to_int16_pairs(xt, x_zp):
    # a zero point no packed byte can hold (outside the activation type, or outside the kernel's byte type
    # after the XOR) cannot be packed into padding taps: the int16-pair path takes over
    rng = np.random.default_rng(4)
    xi = np.iinfo(xt)
    x = rng.integers(xi.min, xi.max + 1, (1, 3, 6, 6)).astype(xt)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    conv = QConv2d(w, None, None, x.shape, x_zp, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    out = np.empty(conv.out_shape, np.int32)
    conv(x, out)
    np.testing.assert_array_equal(out, ref.conv2d_accumulate(x, x_zp, w, 0, None, (1, 1), (1, 1, 1, 1), (1, 1), 1))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m,k,n", [(64, 300, 1000), (960, 160, 49), (512, 600, 7), (8, 64, 5000)])
def test_parallel_splits_give_the_same_bits(kernel, m, k, n):
    # column panels, row tiles (few panels, many rows) or both
    import numba

    rng = np.random.default_rng(m + n)
    w = rng.integers(0, 256, (m, k)).astype(np.uint8)
    x = rng.integers(0, 256, (k, n)).astype(np.uint8)
    w_zp = rng.integers(100, 150, m)
    req = _req(rng, m, k, MODE_DOUBLE, 3, 0, 255)
    q = QGemm(w, None, req, 128, w_zp, kernel=kernel)
    want = requantize_reference(_acc(w, w_zp, x, 128, None), req, channel_axis=0)
    outs = []
    for threads in (1, 2):
        out = np.empty((m, n), np.uint8)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            q(x, out)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        outs.append(out)
        np.testing.assert_array_equal(out.astype(np.int64), want)


def test_plan_balances_panels_and_row_tiles():
    from edgedl.kernels.cpu.gemm_i8 import _plan

    assert _plan(100, 8, 2) == (2, 1)      # many panels: split the columns
    assert _plan(2, 120, 2)[1] == 2 or _plan(2, 120, 2) == (2, 1)
    assert _plan(1, 120, 2) == (1, 2)      # one panel: split the rows
    assert _plan(1, 1, 4) == (1, 1)
    tp, tm = _plan(3, 64, 4)
    assert tp * tm <= 4 and tp <= 3


@pytest.mark.parametrize("shape,m,kk,s,p,g", [
    ((1, 8, 10, 10), 16, 3, 1, (1, 1, 1, 1), 1),
    ((2, 16, 6, 6), 8, 1, 1, (0, 0, 0, 0), 1),
    ((1, 8, 9, 9), 8, 3, 2, (1, 1, 1, 1), 2),
])
def test_bound_calls_see_new_inputs(shape, m, kk, s, p, g):
    # bind prepares every argument once: later calls read the current contents of the same arrays
    rng = np.random.default_rng(8)
    w = rng.integers(-127, 128, (m, shape[1] // g, kk, kk)).astype(np.int8)
    req = Requant.from_multipliers(np.full(m, 0.004), np.full(m, 0.004, np.float32), 1, -128, 127, MODE_DOUBLE)
    conv = QConv2d(w, None, req, shape, -4, (s, s), p, (1, 1), g)
    x = np.empty(shape, np.int8)
    out = np.empty(conv.out_shape, np.int8)
    run = conv.bind(x, out, None, 1)
    for seed in range(2):
        x[...] = np.random.default_rng(seed).integers(-128, 128, shape)
        run()
        np.testing.assert_array_equal(out.astype(np.int64),
                                      ref.conv2d(x, -4, w, None, req.m0, req.shift, 1, (s, s), p, (1, 1), g))
    wq = rng.integers(-127, 128, (5, 12)).astype(np.int8)
    a = np.empty((7, 12), np.uint8)
    o = np.empty((7, 5), np.int32)
    run = QGemm(wq, None, None, 9).bind(a, o, 1, "rows")
    for seed in range(2):
        a[...] = np.random.default_rng(seed).integers(0, 256, a.shape)
        run()
        np.testing.assert_array_equal(o, (a.astype(np.int64) - 9) @ wq.T.astype(np.int64))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", [MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT])
@pytest.mark.parametrize("xt,wt", [(np.int8, np.int8), (np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)])
def test_matrix_vector_kernel(kernel, mode, xt, wt):
    # a few activation rows (fully connected at batch 1, a (K, 1) column) run the matrix-vector kernel,
    # not a tile: same bits for every mode, operand type, zero point and row count up to the switch point
    rng = np.random.default_rng(hash(("gemv", kernel, mode, xt().dtype.str, wt().dtype.str)) % 2**32)
    m, k = 37, 301
    xi, wi = np.iinfo(xt), np.iinfo(wt)
    w = rng.integers(wi.min, wi.max + 1, (m, k)).astype(wt)
    w_zp = rng.integers(wi.min, wi.max + 1, m) if (wt == np.uint8 or mode == MODE_SINGLE) else 0
    x_zp = int(rng.integers(xi.min, xi.max + 1))
    bias = rng.integers(-50000, 50000, m).astype(np.int32)
    req = _req(rng, m, k, mode, int(rng.integers(xi.min, xi.max + 1)), xi.min, xi.max)
    q = QGemm(w, bias, req, x_zp, w_zp, kernel=kernel)
    raw = QGemm(w, bias, None, x_zp, w_zp, kernel=kernel)
    top = max(1, q.nr // 4)
    assert q._gemv_ok(top) and not q._gemv_ok(top + 1)
    for n in sorted({1, 2, top, top + 1}):
        x = rng.integers(xi.min, xi.max + 1, (k, n)).astype(xt)
        acc = _acc(w, w_zp, x, x_zp, bias)
        want = requantize_reference(acc, req, channel_axis=0)
        for layout in ("cols", "rows"):
            np.testing.assert_array_equal(_run(q, x, layout, xt).astype(np.int64), want, err_msg=f"{layout} {n}")
            np.testing.assert_array_equal(_run(raw, x, layout, np.int32), acc, err_msg=f"raw {layout} {n}")


@pytest.mark.parametrize("xt,wt,xv,wv,x_zp,w_zp", [
    (np.uint8, np.uint8, 255, 0, 0, 255),      # the most negative sum
    (np.uint8, np.uint8, 255, 255, 0, 0),      # the largest product of the real values, 65025 per step
    (np.int8, np.int8, -128, -128, 127, 0),
])
def test_matrix_vector_kernel_extreme_values(xt, wt, xv, wv, x_zp, w_zp):
    m, k = 5, 32767
    w = np.full((m, k), wv, wt)
    x = np.full((k, 1), xv, xt)
    want = _acc(w, w_zp, x, x_zp, None)
    assert np.abs(want).max() < 2**31
    raw = QGemm(w, None, None, x_zp, w_zp)
    np.testing.assert_array_equal(_run(raw, x, "rows", np.int32), want)
    np.testing.assert_array_equal(_run(raw, x, "cols", np.int32), want)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matrix_vector_parallel_split_gives_the_same_bits(threads):
    rng = np.random.default_rng(threads)
    m, k = 1000, 1280  # a MobileNet classifier: above the parallel threshold
    w = rng.integers(-127, 128, (m, k)).astype(np.int8)
    a = rng.integers(-128, 128, (1, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, m).astype(np.int32)
    req = _req(rng, m, k, MODE_DOUBLE, 3)
    q = QGemm(w, bias, req, -7)
    out = np.empty((1, m), np.int8)
    q.rows(a, out, threads=threads)
    want = requantize_reference(_acc(w, 0, a.T, -7, bias), req, channel_axis=0).T
    np.testing.assert_array_equal(out.astype(np.int64), want)
