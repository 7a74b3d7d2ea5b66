"""numpy references of edgedl's 8-bit elementwise, lookup-table and pooling kernels, one function per op and
semantics (``../shared/INT8.md``). Vectorized over int64 / float arrays and written from the sources named
in each docstring, independently of the kernels (:mod:`edgedl.kernels.cpu.lut`, ``qelementwise``, ``qpool``),
so the tests compare two implementations of each formula bit for bit.

Two families:

* ``*_onnx``: onnxruntime's CPU kernels (com.microsoft QLinear* ops, MLAS), float32 arithmetic in the order
  onnxruntime does it (every numpy op below on float32 operands rounds to float32, as C does);
* ``*_tflite``: TFLite's integer kernels, fixed-point through :mod:`.reference` (``single=True``: the
  TFLITE_SINGLE_ROUNDING build).

Inputs are 8-bit arrays (int8 or uint8, or their int64 values); every function returns int64 values in the
output type's range. ``lo``/``hi`` narrow that range (a fused Relu/Clip) and are applied last.
"""
from __future__ import annotations

import numpy as np

from . import reference as ref
from .fixed_point import quantize_multiplier, tflite_mean_multiplier

_F32 = np.float32


def _f32(v) -> np.float32:
    return _F32(np.asarray(v, np.float32).reshape(()))


def _range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def round_half_away(q) -> np.ndarray:
    """``std::round``: to nearest, ties away from zero (exact for any float: q - trunc(q) is exact)."""
    q = np.asarray(q)
    t = np.trunc(q)
    return t + np.where(np.abs(q - t) >= 0.5, np.sign(q), 0).astype(q.dtype)


def _c_div(num, den) -> np.ndarray:
    """C's integer division (truncates toward zero) of int64 arrays, den > 0."""
    num = np.asarray(num, np.int64)
    return np.where(num >= 0, num // den, -((-num) // den))


# --- lookup tables -----------------------------------------------------------------------------------
def activation_reference(name: str, x, alpha=None, beta=None):
    """The ONNX activation ``name`` (onnx.ai operator definitions) on a float array, in x's precision."""
    x = np.asarray(x)
    t = x.dtype.type
    if name == "Relu":
        return np.where(x > 0, x, t(0))
    if name == "LeakyRelu":
        a = t(0.01 if alpha is None else alpha)
        return np.where(x >= 0, x, a * x)
    if name == "Sigmoid":
        return t(1) / (t(1) + np.exp(-x))
    if name == "Tanh":
        return np.tanh(x)
    if name == "HardSigmoid":
        a, b = t(0.2 if alpha is None else alpha), t(0.5 if beta is None else beta)
        return np.minimum(np.maximum(a * x + b, t(0)), t(1))
    if name == "HardSwish":
        return x * np.minimum(np.maximum(x * t(1.0 / 6.0) + t(0.5), t(0)), t(1))
    if name == "Elu":
        a = t(1.0 if alpha is None else alpha)
        return np.where(x > 0, x, a * np.expm1(x))
    if name == "Clip":
        lo = t(-np.inf if alpha is None else alpha)
        hi = t(np.inf if beta is None else beta)
        return np.minimum(np.maximum(x, lo), hi)
    if name == "Softplus":
        return np.logaddexp(t(0), x)
    raise ValueError(f"unknown activation {name!r}")


def lut_reference(fn, x, x_scale, x_zp, y_scale, y_zp, out_dtype, rounding="even", precision="float64"):
    """``saturate(round(fn(dequantize(x)) / y_scale) + y_zp)`` elementwise (no table).

    dequantize(x) = float32(x_scale * float32(x - x_zp)) (onnxruntime's QlinearBuildLookupTable); fn and the
    division run in float64 (``precision="float64"``) or float32 (onnxruntime's: the lookup ops' lambdas and
    MlasQuantizeLinear); ``rounding`` "even" (ONNX QuantizeLinear) or "away" (TFLite's TfLiteRound)."""
    xf = _f32(x_scale) * (np.asarray(x, np.int64) - int(x_zp)).astype(np.float32)
    with np.errstate(over="ignore"):
        if precision == "float32":
            q = np.asarray(fn(xf), np.float32) / _f32(y_scale)
        else:
            q = np.asarray(fn(xf.astype(np.float64)), np.float64) / np.float64(_f32(y_scale))
    r = np.rint(q) if rounding == "even" else round_half_away(q)
    lo, hi = _range(out_dtype)
    return np.clip(r + int(y_zp), lo, hi).astype(np.int64)


def requantize_onnx(x, x_scale, x_zp, y_scale, y_zp, out_dtype):
    """onnxruntime QLinearConcat (a QlinearBuildLookupTable of the identity): float32(x_scale * (x - x_zp)),
    divided by y_scale in float32, rounded half to even, plus y_zp, saturated."""
    return lut_reference(lambda v: v, x, x_scale, x_zp, y_scale, y_zp, out_dtype, "even", "float32")


def requantize_tflite(x, x_scale, x_zp, y_scale, y_zp, out_dtype, single=False):
    """TFLite's QUANTIZE of a quantized tensor (reference_ops::Requantize): effective scale
    double(x_scale) / double(y_scale) split by QuantizeMultiplier, then
    ``clamp(MultiplyByQuantizedMultiplier(x - x_zp) + y_zp)`` to the output type."""
    m0, shift = quantize_multiplier(float(np.float64(_f32(x_scale)) / np.float64(_f32(y_scale))))
    v = (ref.mbqm_single if single else ref.mbqm)(np.asarray(x, np.int64) - int(x_zp), m0, shift) + int(y_zp)
    lo, hi = _range(out_dtype)
    return np.clip(v, lo, hi)


# --- binary elementwise ------------------------------------------------------------------------------
def fma_f32(x, y, z) -> np.ndarray:
    """Fused multiply-add of float32 arrays, rounded once to float32 (half to even): the product is exact in
    float64, the sum's float64 rounding error is recovered exactly (TwoSum) and decides the float32 ties."""
    x, y, z = (np.asarray(v, np.float32) for v in (x, y, z))
    p = x.astype(np.float64) * y.astype(np.float64)
    z64 = z.astype(np.float64)
    s = p + z64
    bb = s - p
    err = (p - (s - bb)) + (z64 - bb)  # exact: p + z = s + err
    r = s.astype(np.float32)
    d = s - r.astype(np.float64)
    other = np.nextafter(r, np.where(d > 0, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32))
    tie = (d != 0) & (2 * s == r.astype(np.float64) + other.astype(np.float64))  # s halfway between r, other
    up, down = np.maximum(r, other), np.minimum(r, other)
    return np.where(tie & (err > 0), up, np.where(tie & (err < 0), down, r))


def qadd_onnx(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, lo, hi):
    """onnxruntime QLinearAdd on x86-64 with AVX2 (MlasQLinearAddKernelAvx2Helper, qladd_avx2.cpp): with
    r_a = a_scale / y_scale, r_b = b_scale / y_scale (float32) and the raw values as float32,

        fixed = float(y_zp) - fma(r_a, float(a_zp), r_b * float(b_zp))
        c = fma(a, r_a, fma(b, r_b, fixed));  out = clamp(rint(c))             (half to even)

    except where A is constant along the innermost output dimension (onnxruntime's IsScalarA spans, or a
    scalar A), where A and B swap roles. The fused operands of the scalar expression are what the
    onnxruntime 1.32 x86-64 build does (measured)."""
    a = np.asarray(a)
    b = np.asarray(b)
    out_shape = np.broadcast_shapes(a.shape, b.shape)
    axes = [d for d, n in enumerate(out_shape) if n > 1]
    a_full = (1,) * (len(out_shape) - a.ndim) + a.shape
    scalar_a = not axes or a_full[axes[-1]] == 1
    ra = _F32(_f32(a_scale) / _f32(y_scale))
    rb = _F32(_f32(b_scale) / _f32(y_scale))
    (x, rx, zx), (y, ry, zy) = ((b, rb, b_zp), (a, ra, a_zp)) if scalar_a else ((a, ra, a_zp), (b, rb, b_zp))
    fixed = _F32(y_zp) - fma_f32(rx, _F32(zx), _F32(ry * _F32(zy)))
    c = fma_f32(np.asarray(x, np.float32), rx, fma_f32(np.asarray(y, np.float32), ry, fixed))
    return np.clip(np.rint(np.clip(c, _F32(-1e9), _F32(1e9))), lo, hi).astype(np.int64)


def qmul_onnx(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, lo, hi):
    """onnxruntime QLinearMul (MlasQLinearMulKernel, SSE2 and NEON64): the exact integer product
    ``acc = (a - a_zp) * (b - b_zp)``, then ``float32(acc) * ratio + float32(y_zp)`` in float32 with
    ``ratio = a_scale * b_scale / y_scale`` (float32, left to right), rounded half to even, saturated."""
    ratio = _F32(_F32(_f32(a_scale) * _f32(b_scale)) / _f32(y_scale))
    acc = (np.asarray(a, np.int64) - int(a_zp)) * (np.asarray(b, np.int64) - int(b_zp))
    f = acc.astype(np.float32) * ratio + _F32(y_zp)
    return np.clip(np.rint(np.clip(f, _F32(-1e9), _F32(1e9))), lo, hi).astype(np.int64)


def qadd_tflite(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, lo, hi, single=False):
    """TFLite's int8/uint8 Add (reference_integer_ops::AddElementwise, left_shift 20): the double-rounding
    transcription is :func:`.reference.add`; ``single`` replaces every MultiplyByQuantizedMultiplier by the
    single-rounding one (TFLITE_SINGLE_ROUNDING makes MultiplyByQuantizedMultiplierSmallerThanOneExp call it)."""
    params = ref.add_params(float(_f32(a_scale)), float(_f32(b_scale)), float(_f32(y_scale)))
    if not single:
        return ref.add(a, a_zp, b, b_zp, params, y_zp, act_min=lo, act_max=hi)
    m1, sh1, m2, sh2, mo, sho = params
    x1 = (np.asarray(a, np.int64) - int(a_zp)) * (1 << 20)
    x2 = (np.asarray(b, np.int64) - int(b_zp)) * (1 << 20)
    total = ref.mbqm_single(x1, m1, sh1) + ref.mbqm_single(x2, m2, sh2)
    return np.clip(ref.mbqm_single(total, mo, sho) + int(y_zp), lo, hi)


def qmul_tflite(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, lo, hi, single=False):
    """TFLite's int8/uint8 Mul (reference_integer_ops::MulElementwise): real multiplier
    ``input1_scale * input2_scale / output_scale`` evaluated in float32 (mul.cc), QuantizeMultiplier, then
    ``clamp(MBQM((a - a_zp) * (b - b_zp)) + y_zp, lo, hi)``."""
    m0, shift = quantize_multiplier(float(_F32(_F32(_f32(a_scale) * _f32(b_scale)) / _f32(y_scale))))
    acc = (np.asarray(a, np.int64) - int(a_zp)) * (np.asarray(b, np.int64) - int(b_zp))
    return np.clip((ref.mbqm_single if single else ref.mbqm)(acc, m0, shift) + int(y_zp), lo, hi)


# --- pooling -----------------------------------------------------------------------------------------
def _taps(x_shape, kernel, pads, strides, dilations, out_hw, fill, values):
    """The (kh * kw) strided tap views of ``values`` (N, C, H, W) padded with ``fill``, in row-major tap
    order, each (N, C, OH, OW), plus the matching validity masks."""
    n, c, h, w = x_shape
    kh, kw = kernel
    pt, pl, _, _ = pads
    sh, sw = strides
    dh, dw = dilations
    oh, ow = out_hw
    hp = max(pt + h, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(pl + w, (ow - 1) * sw + (kw - 1) * dw + 1)
    xp = np.full((n, c, hp, wp), fill, dtype=values.dtype)
    xp[:, :, pt:pt + h, pl:pl + w] = values
    mp = np.zeros((hp, wp), bool)
    mp[pt:pt + h, pl:pl + w] = True
    for i in range(kh):
        for j in range(kw):
            rs = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            cs = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            yield xp[:, :, rs, cs], mp[rs, cs]


def qmaxpool2d(x, kernel, pads, strides, dilations, out_hw):
    """MaxPool on 8-bit values (NCHW): the largest valid tap (padding ignored; a window without one gives
    the type's minimum). Same scale and zero point in and out."""
    x = np.asarray(x)
    lo, _ = _range(x.dtype)
    sentinel = np.int64(-(1 << 40))
    out = None
    for patch, _ in _taps(x.shape, kernel, pads, strides, dilations, out_hw, sentinel, x.astype(np.int64)):
        out = patch.copy() if out is None else np.maximum(out, patch)
    return np.where(out == sentinel, lo, out)


def _counts(n_in, n_out, k, s, p0, p1):
    """Per output position of one axis: valid taps (onnxruntime's clipped [start, end)), taps inside the
    padded input, and the unclipped window start."""
    start = np.arange(n_out, dtype=np.int64) * s - p0
    valid = np.clip(np.minimum(start + k, n_in) - np.maximum(start, 0), 0, None)
    padded = np.clip(np.minimum(start + k, n_in + p1) - start, 0, None)
    return valid, padded


def qglobal_avgpool_onnx(x, x_scale, x_zp, y_scale, y_zp, lo, hi):
    """onnxruntime QLinearGlobalAveragePool, NCHW (MlasQLinearGlobalAveragePoolNchw): the int32 sum of each
    plane minus x_zp * image_size, times ``scale = x_scale / (y_scale * float(image_size))`` (float32), then
    MlasRequantizeOutput: float32 product, clamp to [lo - y_zp, hi - y_zp], round half to even, + y_zp.
    Returns (N, C, 1, 1)."""
    x = np.asarray(x)
    n, c = x.shape[:2]
    hw = int(np.prod(x.shape[2:], dtype=np.int64))
    acc = x.reshape(n, c, hw).astype(np.int64).sum(-1) - int(x_zp) * hw
    scale = _F32(_f32(x_scale) / _F32(_f32(y_scale) * _F32(hw)))
    f = np.clip(acc.astype(np.float32) * scale, _F32(lo - y_zp), _F32(hi - y_zp))
    return (np.rint(f).astype(np.int64) + int(y_zp)).reshape(n, c, 1, 1)


def qglobal_avgpool_tflite(x, x_scale, x_zp, y_scale, y_zp, lo, hi, single=False):
    """TFLite's MEAN over H, W with keep_dims (what a converted GlobalAveragePool runs: the default kernel
    optimized_integer_ops::Mean; reference_ops::Mean for uint8 has the same arithmetic), NCHW here:

        temp = float(x_zp) * x_scale / y_scale (float32); temp += temp > 0 ? 0.5 : -0.5
        bias = y_zp - int(temp)                               (truncation: round half away)
        M = x_scale / (float(H * W) * y_scale)                (float32), QuantizeMultiplier(M) -> (M0, shift)
        out = clamp(MBQM(sum of the raw values, M0, shift) + bias)

    Returns (N, C, 1, 1)."""
    x = np.asarray(x)
    n, c = x.shape[:2]
    hw = int(np.prod(x.shape[2:], dtype=np.int64))
    temp = _F32(_F32(_F32(x_zp) * _f32(x_scale)) / _f32(y_scale))
    temp = _F32(temp + _F32(0.5)) if temp > 0 else _F32(temp - _F32(0.5))
    bias = int(y_zp) - int(np.trunc(temp))
    m0, shift = quantize_multiplier(float(_F32(_f32(x_scale) / _F32(_F32(hw) * _f32(y_scale)))))
    acc = x.reshape(n, c, hw).astype(np.int64).sum(-1)
    v = (ref.mbqm_single if single else ref.mbqm)(acc, m0, shift) + bias
    return np.clip(v, lo, hi).reshape(n, c, 1, 1)


def qglobal_avgpool_tflite_reference(x, x_scale, x_zp, y_scale, y_zp, lo, hi, single=False):
    """TFLite's reference int8 MEAN over H, W (BUILTIN_REF): the sum of ``x - x_zp`` requantized by the fixed-point
    multiplier of ``x_scale / y_scale`` with the count divided into it (:func:`tflite_mean_multiplier`), plus
    ``y_zp``. Returns (N, C, 1, 1)."""
    x = np.asarray(x)
    n, c = x.shape[:2]
    hw = int(np.prod(x.shape[2:], dtype=np.int64))
    m0, shift = tflite_mean_multiplier(x_scale, y_scale, hw)
    acc = x.reshape(n, c, hw).astype(np.int64).sum(-1) - int(x_zp) * hw
    v = (ref.mbqm_single if single else ref.mbqm)(acc, m0, shift) + int(y_zp)
    return np.clip(v, lo, hi).reshape(n, c, 1, 1)


def qavgpool2d_onnx(x, kernel, pads, strides, out_hw, count_include_pad, x_scale, x_zp, y_scale, y_zp, lo, hi):
    """onnxruntime com.microsoft QLinearAveragePool, NCHW (contrib_ops/cpu/quantization/qlinear_pool.cc):

    * a kernel covering the whole image without pads falls back to QLinearGlobalAveragePool
      (:func:`qglobal_avgpool_onnx`);
    * otherwise every input is dequantized to float32 ``x_scale * (x - x_zp)``, the taps of the window
      clipped to the image ([max(s, 0), min(s + k, H))) are summed in float32 in row-major order, the sum is
      divided by float(kh * kw) (count_include_pad) or by the number of those taps, and quantized as
      ``nearbyintf(avg / y_scale + float(y_zp))`` (float32, half to even), saturated (then [lo, hi]).

    A window without a valid tap and count_include_pad=0 (0 / 0 in onnxruntime) gives y_zp here."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    kh, kw = kernel
    if (kh, kw) == (h, w) and not any(pads):
        return np.broadcast_to(qglobal_avgpool_onnx(x, x_scale, x_zp, y_scale, y_zp, lo, hi), (n, c) + tuple(out_hw))
    deq = _f32(x_scale) * (x.astype(np.int64) - int(x_zp)).astype(np.float32)
    s = np.zeros((n, c) + tuple(out_hw), np.float32)
    for patch, _ in _taps(x.shape, kernel, pads, strides, (1, 1), out_hw, _F32(0), deq):
        s = s + patch
    vh, _ = _counts(h, out_hw[0], kh, strides[0], pads[0], pads[2])
    vw, _ = _counts(w, out_hw[1], kw, strides[1], pads[1], pads[3])
    cnt = np.full((out_hw[0], out_hw[1]), kh * kw, np.int64) if count_include_pad else np.outer(vh, vw)
    avg = np.where(cnt > 0, s / np.maximum(cnt, 1).astype(np.float32), _F32(0))
    q = avg / _f32(y_scale) + _F32(y_zp)
    return np.clip(np.rint(np.clip(q, _F32(-1e9), _F32(1e9))), lo, hi).astype(np.int64)


def qavgpool2d_tflite(x, kernel, pads, strides, out_hw, count_include_pad, x_scale, x_zp, y_scale, y_zp, lo, hi,
                      out_dtype=None, single=False):
    """TFLite's int8 AveragePool (reference_integer_ops::AveragePool), NCHW: the raw values (zero point
    included) of the valid taps are summed, ``avg = acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n`` (C
    division) with n the number of valid taps, then clamped.

    Extensions (TFLite has neither): count_include_pad=1 counts the taps inside the padded input (the window
    clipped to [-pads, size + pads)) and adds x_zp (a real 0) for each padding tap; when the output
    parameters differ from the input's, the average is requantized as :func:`requantize_tflite` does.
    A window without a valid tap (and no padding counted) gives x_zp."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    kh, kw = kernel
    acc = np.zeros((n, c) + tuple(out_hw), np.int64)
    for patch, _ in _taps(x.shape, kernel, pads, strides, (1, 1), out_hw, np.int64(0), x.astype(np.int64)):
        acc += patch
    vh, ph = _counts(h, out_hw[0], kh, strides[0], pads[0], pads[2])
    vw, pw = _counts(w, out_hw[1], kw, strides[1], pads[1], pads[3])
    cnt = np.outer(vh, vw)
    if count_include_pad:
        full = np.outer(ph, pw)
        acc = acc + (full - cnt) * int(x_zp)
        cnt = full
    safe = np.maximum(cnt, 1)
    half = safe // 2
    avg = np.where(acc > 0, _c_div(acc + half, safe), _c_div(acc - half, safe))
    avg = np.where(cnt > 0, avg, int(x_zp))
    out_dtype = x.dtype if out_dtype is None else out_dtype
    return np.clip(requantize_tflite(avg, x_scale, x_zp, y_scale, y_zp, out_dtype, single), lo, hi)


__all__ = ["round_half_away", "fma_f32", "activation_reference", "lut_reference", "requantize_onnx",
           "requantize_tflite", "qadd_onnx", "qmul_onnx", "qadd_tflite", "qmul_tflite", "qmaxpool2d",
           "qglobal_avgpool_onnx", "qglobal_avgpool_tflite", "qavgpool2d_onnx", "qavgpool2d_tflite"]
