"""8-bit depthwise convolution (kernels/cpu/depthwise_i8.py) bit-exact against the numpy transcription of
TFLite's DepthwiseConv (edgedl.quant.reference.conv2d, group == C) in the fixed-point modes and against int64
accumulation plus requantize_reference in the float mode: random shapes, kernels 1x1 to 5x5 and even ones,
strides 1-3, dilations, asymmetric and oversized pads, int8/uint8 inputs and weights with weight zero
points, channel multipliers, narrowed output ranges, saturation, float ties, batches, both strategies
(rows / channel-interleaved), both operand types (exact float32 / int16), the parallel split, bind()."""
from __future__ import annotations

import numpy as np
import pytest

import edgedl.kernels.cpu.depthwise_i8 as dwi8
from edgedl.kernels.cpu.depthwise_i8 import QDepthwise2d
from edgedl.quant import reference as ref
from edgedl.quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE, Requant, requantize_reference

MODES = (MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT)


def _accumulate(x, x_zp, w, w_zp, bias, strides, pads, dilations):
    """int64 accumulators of a depthwise convolution with channel multiplier M // C (independent of the
    kernels and of reference.conv2d)."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    mult = m // c
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    xs = np.repeat(np.asarray(x, np.int64) - x_zp, mult, axis=1)
    wz = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (m,))
    w2 = np.asarray(w, np.int64)[:, 0] - wz[:, None, None]
    xp = np.zeros((n, m, h + pt + pb, wd + pl + pr), np.int64)
    xp[:, :, pt:pt + h, pl:pl + wd] = xs
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    acc = np.zeros((n, m, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            acc += patch * w2[None, :, i, j, None, None]
    if bias is not None:
        acc += np.asarray(bias, np.int64).reshape(1, m, 1, 1)
    return acc


def _expected(x, x_zp, w, w_zp, bias, req, strides, pads, dilations):
    m = w.shape[0]
    if req.mode == MODE_FLOAT:
        return requantize_reference(_accumulate(x, x_zp, w, w_zp, bias, strides, pads, dilations), req,
                                    channel_axis=1)
    wz = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (m,)).reshape(m, 1, 1, 1)
    return ref.conv2d(x, x_zp, np.asarray(w, np.int64) - wz, bias, req.m0, req.shift, req.zp, strides, pads,
                      dilations, group=x.shape[1], act_min=req.lo, act_max=req.hi,
                      single_rounding=req.mode == MODE_SINGLE)


def _run(op, x, out_dtype, threads=1):
    out = np.full(op.out_shape, 77, out_dtype)
    op(x, out, threads=threads)
    return out.astype(np.int64)


def _case(rng, mode, c, h, w, k, strides, dilations, pads, xt=np.int8, wt=np.int8, w_zp=0, mult=1,
          out_dt=np.int8, lo=None, hi=None, batch=1, scale=(0.0005, 0.01)):
    xinfo, winfo, oinfo = np.iinfo(xt), np.iinfo(wt), np.iinfo(out_dt)
    kh, kw = k
    x = rng.integers(xinfo.min, xinfo.max + 1, (batch, c, h, w)).astype(xt)
    wgt = rng.integers(winfo.min + (wt == np.int8), winfo.max + 1, (c * mult, 1, kh, kw)).astype(wt)
    bias = rng.integers(-3000, 3000, c * mult).astype(np.int32)
    x_zp = int(rng.integers(xinfo.min, xinfo.max + 1))
    y_zp = int(rng.integers(oinfo.min // 2, oinfo.max // 2 + 1))
    lo = oinfo.min if lo is None else lo
    hi = oinfo.max if hi is None else hi
    real = rng.uniform(*scale, c * mult)
    req = Requant.from_multipliers(real, real.astype(np.float32), y_zp, lo, hi, mode)
    return x, x_zp, wgt, w_zp, bias, req


def _check(x, x_zp, wgt, w_zp, bias, req, strides, pads, dilations, out_dt=np.int8, **kw):
    op = QDepthwise2d(wgt, w_zp, bias, req, x.shape, x_zp, strides, pads, dilations, **kw)
    want = _expected(x, x_zp, wgt, w_zp, bias, req, strides, pads, dilations)
    got = _run(op, x, out_dt)
    np.testing.assert_array_equal(got, want, err_msg=f"{op.strategy}/{op.operands} {x.shape} {wgt.shape}")
    return op


KERNELS = [(3, 3), (3, 3), (5, 5), (1, 1), (3, 1), (1, 3), (2, 2), (4, 4), (2, 3)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("strategy", ["rows", "interleaved"])
def test_random_shapes_every_mode(seed, strategy):
    rng = np.random.default_rng(1000 * seed + (strategy == "rows"))
    for it in range(14):
        mode = MODES[it % 3]
        k = KERNELS[int(rng.integers(len(KERNELS)))]
        c = int(rng.integers(1, 41))
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        strides = tuple(int(v) for v in rng.integers(1, 4, 2))
        dil = tuple(int(v) for v in rng.integers(1, 3, 2))
        pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        # keep the output non-empty
        h = max(h, (k[0] - 1) * dil[0] + 1 - pads[0] - pads[2])
        w = max(w, (k[1] - 1) * dil[1] + 1 - pads[1] - pads[3])
        xt = (np.int8, np.uint8)[it % 2]
        out_dt = (np.int8, np.uint8)[(it // 2) % 2]
        x, x_zp, wgt, w_zp, bias, req = _case(rng, mode, c, h, w, k, strides, dil, pads, xt=xt, out_dt=out_dt,
                                              batch=1 + (it % 4 == 0))
        _check(x, x_zp, wgt, w_zp, bias, req, strides, pads, dil, out_dt, strategy=strategy)


@pytest.mark.parametrize("strategy", ["rows", "interleaved"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,k,s,pads", [
    ((2, 24, 23, 21), (3, 3), 1, (1, 1, 1, 1)),
    ((1, 19, 22, 17), (3, 3), 2, (0, 0, 1, 1)),
    ((1, 16, 15, 23), (5, 5), 1, (2, 2, 2, 2)),
    ((1, 9, 23, 20), (5, 5), 2, (1, 2, 2, 1)),
])
def test_mobilenet_like_layers(strategy, mode, shape, k, s, pads):
    rng = np.random.default_rng(hash((strategy, mode, shape)) % 2**32)
    x, x_zp, wgt, w_zp, bias, req = _case(rng, mode, shape[1], shape[2], shape[3], k, (s, s), (1, 1), pads,
                                          batch=shape[0])
    _check(x, x_zp, wgt, w_zp, bias, req, (s, s), pads, (1, 1), strategy=strategy)


@pytest.mark.parametrize("strategy", ["rows", "interleaved"])
def test_uint8_weights_with_zero_points_and_relu(strategy):
    rng = np.random.default_rng(5)
    for mode in MODES:
        for w_zp in (128, None):
            c = 13
            if w_zp is None:
                w_zp = rng.integers(0, 256, c)
            x, x_zp, wgt, _, bias, req = _case(rng, mode, c, 17, 19, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1),
                                               xt=np.uint8, wt=np.uint8, out_dt=np.uint8, lo=0, hi=255)
            # fused Relu on a uint8 output: lo = the zero point
            req.lo = req.zp
            _check(x, x_zp, wgt, w_zp, bias, req, (1, 1), (1, 1, 1, 1), (1, 1), np.uint8, strategy=strategy)
            # Relu6-like window on an int8 output, int8 weights with per-channel zero points
            x, x_zp, wgt, _, bias, req = _case(rng, mode, c, 11, 9, (5, 5), (2, 1), (1, 2), (2, 1, 0, 3))
            req.lo, req.hi = req.zp, min(127, req.zp + 60)
            _check(x, x_zp, wgt, rng.integers(-20, 21, c), bias, req, (2, 1), (2, 1, 0, 3), (1, 2),
                   strategy=strategy)


def test_channel_multiplier():
    rng = np.random.default_rng(7)
    for mode in MODES:
        for mult, k, s in ((2, (3, 3), 1), (3, (5, 5), 2), (4, (2, 3), 1)):
            x, x_zp, wgt, w_zp, bias, req = _case(rng, mode, 5, 14, 12, k, (s, s), (1, 1), (1, 0, 2, 1), mult=mult,
                                                  batch=2)
            op = _check(x, x_zp, wgt, w_zp, bias, req, (s, s), (1, 0, 2, 1), (1, 1))
            assert op.strategy == "rows"
    with pytest.raises(ValueError):
        QDepthwise2d(wgt, 0, bias, req, x.shape, x_zp, strategy="interleaved")


@pytest.mark.parametrize("strategy", ["rows", "interleaved"])
def test_saturation_and_large_multipliers(strategy):
    rng = np.random.default_rng(11)
    for mode in MODES:
        # multipliers above 1 (positive shifts) and large biases: most outputs clamp at lo or hi
        x, x_zp, wgt, w_zp, bias, req = _case(rng, mode, 10, 12, 13, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1),
                                              scale=(0.5, 40.0))
        bias = rng.integers(-(1 << 30), 1 << 30, 10).astype(np.int32)
        req = Requant.from_multipliers(rng.uniform(0.5, 40.0, 10) * (rng.random(10) < 0.5) + rng.uniform(0, 0.01, 10),
                                       rng.uniform(0.5, 40.0, 10).astype(np.float32), req.zp, -128, 127, mode)
        _check(x, x_zp, wgt, w_zp, bias, req, (1, 1), (1, 1, 1, 1), (1, 1), strategy=strategy)
        # extreme inputs: every product at its largest magnitude
        x = np.full((1, 10, 9, 9), -128, np.int8)
        wgt = np.full((10, 1, 5, 5), -127, np.int8)
        req = Requant.from_multipliers(np.full(10, 1e-4), np.full(10, 1e-4, np.float32), 3, -128, 127, mode)
        _check(x, 127, wgt, 0, None, req, (1, 1), (2, 2, 2, 2), (1, 1), strategy=strategy)


@pytest.mark.parametrize("strategy", ["rows", "interleaved"])
def test_float_mode_ties_round_to_even(strategy):
    # fscale 0.5 / 0.25: exact .5 ties, which onnxruntime rounds to even
    rng = np.random.default_rng(13)
    c = 8
    x, x_zp, wgt, w_zp, bias, _ = _case(rng, MODE_FLOAT, c, 10, 10, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    wgt = rng.integers(-3, 4, wgt.shape).astype(np.int8)
    x = rng.integers(-6, 7, x.shape).astype(np.int8)
    fs = np.array([0.5, 0.25, 0.5, 0.125, 0.5, 0.25, 1.0, 0.5], np.float32)
    req = Requant.from_multipliers(fs, fs, -1, -128, 127, MODE_FLOAT)
    _check(x, 0, wgt, w_zp, np.zeros(c, np.int32), req, (1, 1), (1, 1, 1, 1), (1, 1), strategy=strategy)


@pytest.mark.parametrize("strategy", ["rows", "interleaved"])
def test_int16_operands_and_automatic_fallback(strategy):
    rng = np.random.default_rng(17)
    for mode in MODES:
        x, x_zp, wgt, w_zp, bias, req = _case(rng, mode, 11, 13, 17, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1))
        op = _check(x, x_zp, wgt, w_zp, bias, req, (2, 2), (1, 1, 1, 1), (1, 1), strategy=strategy,
                    operands="int16")
        assert op.operands == "int16"
    # a 17x17 kernel of uint8 weights: float32 sums could pass 2^24, so int16 operands are picked
    x = rng.integers(0, 256, (1, 9, 18, 18)).astype(np.uint8)
    wgt = rng.integers(200, 256, (9, 1, 17, 17)).astype(np.uint8)
    req = Requant.from_multipliers(np.full(9, 2e-6), np.full(9, 2e-6, np.float32), 0, -128, 127, MODE_DOUBLE)
    op = _check(x, 0, wgt, 0, None, req, (1, 1), (8, 8, 8, 8), (1, 1), strategy=strategy)
    assert op.operands == "int16"
    with pytest.raises(ValueError):
        QDepthwise2d(wgt, 0, None, req, x.shape, 0, pads=(8, 8, 8, 8), operands="float32")


@pytest.mark.parametrize("strategy", ["rows", "interleaved"])
def test_parallel_split_bind_and_scratch(strategy, monkeypatch):
    rng = np.random.default_rng(19)
    x, x_zp, wgt, w_zp, bias, req = _case(rng, MODE_DOUBLE, 21, 20, 22, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1),
                                          batch=2)
    op = QDepthwise2d(wgt, w_zp, bias, req, x.shape, x_zp, (1, 1), (1, 1, 1, 1), strategy=strategy)
    want = _expected(x, x_zp, wgt, w_zp, bias, req, (1, 1), (1, 1, 1, 1), (1, 1))
    monkeypatch.setattr(dwi8._config, "PARALLEL_MIN_WORK", 0)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(_run(op, x, np.int8, threads), want)
    # bind: prepared once, called again after the input changed in place
    out = np.zeros(op.out_shape, np.int8)
    scratch = np.zeros(op.scratch_bytes, np.uint8)
    fn = op.bind(x, out, scratch, 2)
    fn()
    np.testing.assert_array_equal(out, want)
    x2 = rng.integers(-128, 128, x.shape).astype(np.int8)
    x[...] = x2
    fn()
    np.testing.assert_array_equal(out, _expected(x2, x_zp, wgt, w_zp, bias, req, (1, 1), (1, 1, 1, 1), (1, 1)))
    with pytest.raises(ValueError):
        op(x, out, scratch=np.zeros(8, np.uint8), threads=1)


def test_picks_interleaved_for_narrow_planes_and_checks_arguments():
    req = Requant.from_multipliers(np.full(64, 0.01), np.full(64, 0.01, np.float32), 0, -128, 127, MODE_DOUBLE)
    w = np.ones((64, 1, 3, 3), np.int8)
    assert QDepthwise2d(w, 0, None, req, (1, 64, 14, 14), 0, pads=(1, 1, 1, 1)).strategy == "interleaved"
    assert QDepthwise2d(w, 0, None, req, (1, 64, 56, 56), 0, pads=(1, 1, 1, 1)).strategy == "rows"
    op = QDepthwise2d(w, 0, None, req, (1, 64, 8, 8), 0, pads=(1, 1, 1, 1))
    x = np.zeros((1, 64, 8, 8), np.int8)
    with pytest.raises(ValueError):
        op(x, np.zeros(op.out_shape, np.uint8))  # [-128, 127] does not fit uint8
    with pytest.raises(ValueError):
        op(x.astype(np.int16), np.zeros(op.out_shape, np.int8))
    with pytest.raises(ValueError):
        QDepthwise2d(w, 0, None, req, (1, 64, 2, 2), 0)  # empty output


@pytest.mark.parametrize("strategy", ["rows", "interleaved"])
def test_writes_stay_inside_output_and_scratch(strategy):
    # rows narrower than a vector, planes smaller than one: every store must stay inside its own plane
    rng = np.random.default_rng(23)
    for shape, k, s, pads in (((2, 9, 3, 5), (3, 3), 1, (1, 1, 1, 1)), ((1, 12, 7, 2), (2, 1), 2, (0, 0, 1, 0)),
                              ((3, 8, 1, 1), (1, 1), 1, (0, 0, 0, 0)), ((1, 17, 9, 9), (5, 5), 3, (2, 2, 2, 2))):
        x, x_zp, wgt, w_zp, bias, req = _case(rng, MODE_DOUBLE, shape[1], shape[2], shape[3], k, (s, s), (1, 1),
                                              pads, batch=shape[0])
        if strategy == "interleaved" and shape[1] < dwi8.VQ:
            continue
        op = QDepthwise2d(wgt, w_zp, bias, req, x.shape, x_zp, (s, s), pads, strategy=strategy)
        size = int(np.prod(op.out_shape))
        big = np.full(size + 256, 99, np.int8)
        out = big[128:128 + size].reshape(op.out_shape)
        sbig = np.full(op.scratch_bytes + 256, 0x5A, np.uint8)
        op(x, out, scratch=sbig[:op.scratch_bytes], threads=1)
        np.testing.assert_array_equal(out, _expected(x, x_zp, wgt, w_zp, bias, req, (s, s), pads, (1, 1)))
        assert (big[:128] == 99).all() and (big[128 + size:] == 99).all()
        assert (sbig[op.scratch_bytes:] == 0x5A).all()
