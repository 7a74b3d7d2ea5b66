"""The "flat" convolution strategy (edgedl/kernels/cpu/conv_flat.py: the zero-padded, phase-split image read in
place by the GEMM) and the "pixels" one (conv_pixels.py: output pixels as the GEMM's rows, the weights as its
pre-packed columns). Against the float64 reference over strides, dilations, asymmetric pads, batches, fused
activations (in the microkernel and after it) and residuals; the same bits at any thread count; weights
reloaded for training; which convolutions take them and the per-board switch; the phase planes against numpy
slicing."""
from __future__ import annotations

import numpy as np
import pytest

from edgedl.kernels.cpu import config
from edgedl.kernels.cpu import conv_flat as F
from edgedl.kernels.cpu.act import act_code, act_ref
from edgedl.kernels.cpu.conv import Conv2d, conv2d_ref

CASES = [
    # (N, C, M, H, W, (kh, kw), (sh, sw), (dh, dw), pads (t, l, b, r), act)
    (1, 8, 8, 13, 11, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "Relu"),
    (2, 9, 7, 20, 17, (3, 3), (1, 1), (2, 2), (2, 1, 0, 3), None),
    (1, 16, 5, 15, 16, (5, 5), (2, 2), (1, 1), (2, 2, 2, 2), "Sigmoid"),
    (1, 8, 16, 31, 33, (3, 3), (2, 2), (1, 1), (0, 0, 1, 1), None),
    (1, 10, 4, 12, 40, (3, 5), (2, 1), (1, 2), (1, 2, 1, 2), "Tanh"),
    (3, 12, 13, 9, 10, (2, 2), (1, 2), (1, 1), (0, 0, 0, 0), "LeakyRelu"),
    (1, 8, 6, 10, 10, (3, 3), (3, 3), (1, 1), (1, 1, 1, 1), "HardSwish"),
    (1, 64, 70, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "Clip"),
]


def _data(case, seed=0):
    n, c, m, h, w, k, *_ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c) + k) * 0.3).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    return x, wt, b


def _reference(x, wt, b, case, base=None):
    *_, s, d, pads, act = case
    y = conv2d_ref(x, wt, b, strides=s, dilations=d, pads=pads)
    if base is not None:
        y = y + base
    return act_ref(y, act_code(act or 0), 0.1, 6.0 if act == "Clip" else 0.0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[5]}s{c[6]}d{c[7]}p{c[8]}{c[9]}")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("strategy", ["flat", "pixels"])
def test_strategy_matches_the_reference_and_the_same_bits_at_any_thread_count(case, bias, strategy, monkeypatch):
    x, wt, b = _data(case)
    b = b if bias else None
    *_, s, d, pads, act = case
    conv = Conv2d(wt, b, x.shape, strides=s, dilations=d, pads=pads, act=act or 0, alpha=0.1,
                  beta=6.0 if act == "Clip" else 0.0, strategy=strategy)
    assert conv.strategy == strategy
    out = np.empty(conv.out_shape, np.float32)
    conv(x, out)
    np.testing.assert_allclose(out, _reference(x, wt, b, case), rtol=1e-5, atol=1e-4)
    for threads in (1, 2, 3):
        again = np.full(conv.out_shape, np.nan, np.float32)
        conv.bind(x, again, np.empty(conv.scratch_bytes, np.uint8), threads)()
        assert np.array_equal(again, out)
    # these small layers copy on one thread; with no size threshold every pass runs its parallel variant too
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(config, "GEMM_PARALLEL_MIN_WORK", 0)
    for threads in (2, 3):
        again = np.full(conv.out_shape, np.nan, np.float32)
        conv.bind(x, again, np.empty(conv.scratch_bytes, np.uint8), threads)()
        assert np.array_equal(again, out)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5]], ids=["s1", "s2", "s12"])
@pytest.mark.parametrize("strategy", ["flat", "pixels"])
def test_residual_accumulates_before_the_activation(case, strategy):
    x, wt, b = _data(case, 1)
    *_, s, d, pads, act = case
    conv = Conv2d(wt, b, x.shape, strides=s, dilations=d, pads=pads, act=act or 0, alpha=0.1, accumulate=True,
                  strategy=strategy)
    base = np.random.default_rng(2).standard_normal(conv.out_shape).astype(np.float32)
    out = base.copy()
    conv(x, out)
    np.testing.assert_allclose(out, _reference(x, wt, b, case, base), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("strategy", ["flat", "pixels"])
def test_strategy_agrees_with_the_packed_gemm_and_reloads_weights(strategy):
    case = CASES[1]
    x, wt, b = _data(case, 4)
    *_, s, d, pads, _ = case
    flat = Conv2d(wt, b, x.shape, strides=s, dilations=d, pads=pads, strategy=strategy)
    gemm = Conv2d(wt, b, x.shape, strides=s, dilations=d, pads=pads, strategy="gemm")
    assert gemm.strategy == "gemm"
    y_flat, y_gemm = np.empty(flat.out_shape, np.float32), np.empty(gemm.out_shape, np.float32)
    flat(x, y_flat)
    gemm(x, y_gemm)
    np.testing.assert_allclose(y_flat, y_gemm, rtol=1e-5, atol=1e-5)
    wt2, b2 = wt * -0.5, b + 1.0  # a training step's new weights, loaded in place
    assert flat.repack(wt2, b2)
    flat(x, y_flat)
    np.testing.assert_allclose(y_flat, conv2d_ref(x, wt2, b2, strides=s, dilations=d, pads=pads), rtol=1e-5,
                               atol=1e-4)


def test_which_convolutions_read_their_image_in_place():
    def pick(c, h, k=(3, 3), s=(1, 1), group=1, m=16):
        wt = np.zeros((m, c // group) + k, np.float32)
        return Conv2d(wt, None, (1, c, h, h), strides=s, pads=(1, 1, 1, 1) if k == (3, 3) else (0, 0, 0, 0),
                      group=group).strategy

    assert pick(16, 40) == "flat"
    assert pick(16, 40, s=(2, 2)) == "flat"
    assert pick(256, 7, m=256) == "pixels"  # a deep stage: 49 pixels, 256 channels
    assert pick(128, 28, s=(2, 2), m=256) == "pixels"  # strided into 14x14
    assert pick(256, 14, m=256) == "flat"
    assert pick(256, 7, m=32) == "gemm"  # few channels, and rows of 7
    assert pick(256, 7, k=(1, 1), m=256) == "gemm"  # 1x1: the plain GEMM packs nothing
    from edgedl.kernels.cpu.conv_direct import MULTI_CHANNEL_DIRECT

    # a first layer (K = 27): direct on one thread, packed when split (column stride 2: where its shuffle is cheap)
    assert pick(3, 224, s=(2, 2)) == ("direct" if MULTI_CHANNEL_DIRECT else "flat")
    assert pick(3, 224) == ("direct" if MULTI_CHANNEL_DIRECT else "flat")
    assert pick(1, 224, s=(2, 2), m=32) == "direct"
    first = Conv2d(np.zeros((16, 3, 3, 3), np.float32), None, (1, 3, 224, 224), strides=(2, 2), pads=(1,) * 4)
    assert first._gemm is not None  # (the packed call its 2-thread binds use)
    # a keyword spotter's 1-D layer: 13 output columns, and a 9-wide kernel would waste 4 more per row
    audio = Conv2d(np.zeros((48, 32, 1, 9), np.float32), None, (1, 32, 1, 25), strides=(1, 2), pads=(0, 4, 0, 4))
    assert audio.strategy == "gemm"
    assert pick(16, 6) == "gemm"  # output rows narrower than 8
    assert pick(16, 40, k=(1, 1)) == "gemm"  # nothing to unfold
    assert pick(16, 40, s=(3, 3)) == "gemm"
    assert pick(16, 40, group=2) == "gemm"
    assert pick(16, 40, group=16, m=16) == "depthwise"
    config.apply_tuning(conv_flat=False)  # a board whose tuned profile says packed panels are faster
    try:
        assert pick(16, 40) == "gemm"
    finally:
        config.apply_tuning()
    assert pick(16, 40) == "flat"
    with pytest.raises(ValueError, match="strategy"):
        Conv2d(np.zeros((4, 2, 3, 3), np.float32), None, (1, 4, 8, 8), group=2, strategy="flat")
    with pytest.raises(ValueError, match="strategy"):
        Conv2d(np.zeros((4, 2, 3, 3), np.float32), None, (1, 4, 8, 8), group=2, strategy="pixels")
    with pytest.raises(ValueError, match="strategy"):
        Conv2d(np.zeros((4, 4, 3, 3), np.float32), None, (1, 4, 8, 8), strategy="im2col")


@pytest.mark.parametrize("s", [(1, 1), (2, 2), (3, 2), (1, 3)])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 2, 3, 0), (0, 0, 0, 0)])
def test_phase_planes_are_the_padded_image_sliced(s, pads):
    n, c, h, w = 2, 3, 37, 35
    sh, sw = s
    pt, pl, pb, pr = pads
    x = np.random.default_rng(7).standard_normal((n, c, h, w)).astype(np.float32)
    hq, wq = -(-(h + pt + pb) // sh), -(-(w + pl + pr) // sw)
    img = c * sh * sw * hq * wq + 40
    xpad = np.full(n * img, np.nan, np.float32)
    zeros = np.zeros(wq, np.float32)
    args = (x.reshape(-1), xpad, n, c, h, w, pt, pl, sh, sw, hq, wq, img, zeros)
    for parallel in (False, True):
        xpad[:] = np.nan
        if parallel:
            F._pad_parallel(2, *args)
        else:
            F._pad_serial(*args)
        padded = np.zeros((n, c, hq * sh, wq * sw), np.float32)
        padded[:, :, pt:pt + h, pl:pl + w] = x
        for b in range(n):
            planes = xpad[b * img:b * img + c * sh * sw * hq * wq].reshape(c, sh, sw, hq, wq)
            for a in range(sh):
                for q in range(sw):
                    np.testing.assert_array_equal(planes[:, a, q], padded[b, :, a::sh, q::sw])
            assert not xpad[b * img + c * sh * sw * hq * wq:(b + 1) * img].any()  # the tail is zeros


@pytest.mark.parametrize("n,c,m,h,act", [(1, 512, 300, 1, "Relu"), (2, 64, 16, 1, "HardSigmoid"), (3, 8, 10, 5, None),
                                         (1, 3, 7, 4, "Swish")])
def test_one_output_pixel_is_a_matrix_vector_product(n, c, m, h, act):
    """A squeeze-and-excite block's 1x1 convolutions on a pooled 1x1 map, or a kernel covering the whole input:
    the "gemv" strategy, against the reference, at 1 and 2 threads, and with reloaded weights."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    wt = (rng.standard_normal((m, c, h, h)) * 0.1).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    alpha, beta = (0.2, 0.5) if act == "HardSigmoid" else (1.0, 0.0)
    conv = Conv2d(wt, b, x.shape, act=act or 0, alpha=alpha, beta=beta)
    assert conv.strategy == "gemv"
    want = act_ref(conv2d_ref(x, wt, b), act_code(act or 0), alpha, beta)
    for threads in (1, 2):
        out = np.full(conv.out_shape, np.nan, np.float32)
        conv.bind(x, out, None, threads)()
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert conv.repack(-wt, b)
    out = np.empty(conv.out_shape, np.float32)
    conv(x, out)
    np.testing.assert_allclose(out, act_ref(conv2d_ref(x, -wt, b), act_code(act or 0), alpha, beta), rtol=1e-5,
                               atol=1e-5)
    # padding, a residual or a batch of 4 keep the GEMM strategies
    assert Conv2d(wt, b, x.shape, pads=(1, 1, 1, 1)).strategy != "gemv"
    assert Conv2d(wt, b, (4, c, h, h)).strategy != "gemv"


@pytest.mark.parametrize("act", [0, "LeakyRelu", "Swish", "Tanh", "Elu"])
def test_a_small_flat_layer_runs_the_packed_gemm_when_split_with_the_same_bits(act):
    """Below FLAT_PARALLEL_MIN_WORK a flat layer keeps a packed-GEMM call too and binds it at 2+ threads
    (three parallel regions cost more than packing saves there): the same bits either way."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 16, 32, 32)).astype(np.float32)
    wt = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    conv = Conv2d(wt, b, x.shape, strides=(2, 2), pads=(1, 1, 1, 1), act=act or 0, alpha=0.1)
    assert conv.strategy == "flat" and conv._gemm is not None
    outs = []
    for threads in (1, 2, 3):
        out = np.full(conv.out_shape, np.nan, np.float32)
        conv.bind(x, out, np.empty(conv.scratch_bytes, np.uint8), threads)()
        outs.append(out)
    ref = act_ref(conv2d_ref(x, wt, b, strides=(2, 2), pads=(1, 1, 1, 1)), act_code(act or 0), 0.1, 0.0)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-4)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    big = Conv2d(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), None, (1, 64, 40, 40), pads=(1,) * 4)
    assert big.strategy == "flat" and big._flat.work >= F.FLAT_PARALLEL_MIN_WORK and big._gemm is None


def test_a_flat_layer_with_a_residual_keeps_one_strategy_at_every_thread_count():
    """Flat adds a fused residual after the dot products and the packed GEMM starts from it: different
    roundings, so such a layer stays flat when split (the same bits at 1, 2 and 3 threads)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 16, 20, 20)).astype(np.float32)
    conv = Conv2d(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), None, x.shape, pads=(1,) * 4,
                  act="Relu", accumulate=True)
    assert conv.strategy == "flat" and conv._gemm is None
    base = rng.standard_normal(conv.out_shape).astype(np.float32)
    outs = []
    for threads in (1, 2, 3):
        out = base.copy()
        conv.bind(x, out, np.empty(conv.scratch_bytes, np.uint8), threads)()
        outs.append(out)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("shape,kernel,pads,strides", [
    ((1, 24, 1, 49), (1, 9), (0, 4, 0, 4), (1, 1)),  # a 1-D audio layer: flat
    ((1, 3, 24, 24), (3, 3), (1, 1, 1, 1), (2, 2)),  # an RGB first layer: direct
])
def test_a_layer_too_small_to_split_runs_its_own_strategy_on_one_thread(shape, kernel, pads, strides, monkeypatch):
    """A small flat or direct layer keeps a packed GEMM for 2+ threads, but when that GEMM's work is below
    GEMM_PARALLEL_MIN_WORK it would run on one thread anyway, slower than flat or direct: they then run on one
    thread instead (the same bits as at 1 thread), and the packed GEMM only when it really splits."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape).astype(np.float32)
    m = 24 if shape[1] == 24 else 16
    wt = rng.standard_normal((m, shape[1]) + kernel).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    conv = Conv2d(wt, b, x.shape, strides=strides, pads=pads, act="Relu")
    assert conv.strategy in ("flat", "direct") and conv._gemm is not None
    inner = conv._flat if conv.strategy == "flat" else conv._direct
    bound_threads = []
    original = type(inner).bind
    monkeypatch.setattr(type(inner), "bind", lambda self, *a: bound_threads.append(a[-1]) or original(self, *a))
    ref = act_ref(conv2d_ref(x, wt, b, strides=strides, pads=pads), act_code("Relu"), 0.0, 0.0)
    outs = []
    for limit in (1 << 40, 1):  # the packed GEMM too small to split, then splitting from 1 multiply-add on
        monkeypatch.setattr(config, "GEMM_PARALLEL_MIN_WORK", limit)
        conv._gemm._plans.clear()
        for threads in (1, 2, 3):
            bound_threads.clear()
            out = np.full(conv.out_shape, np.nan, np.float32)
            conv.bind(x, out, np.empty(conv.scratch_bytes, np.uint8), threads)()
            outs.append(out)
            split = threads > 1 and limit == 1
            assert bound_threads == ([] if split else [1]), (threads, limit, bound_threads)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-4)
    for out in outs[1:]:
        assert np.array_equal(outs[0], out)
