"""numpy transcription of TFLite's reference integer arithmetic (``../shared/INT8.md``): what the int8
kernels must match bit for bit. Vectorized over numpy int64 arrays and written independently of
:mod:`.fixed_point` (which the kernels use), so the tests compare two implementations of the spec.

C semantics throughout: division truncates toward zero, ``>>`` is arithmetic, int8 stores saturate only
where the spec clamps (clamping happens before every narrowing here).
"""
from __future__ import annotations

import numpy as np

_I32_MIN = np.int64(-(2**31))
_I32_MAX = np.int64(2**31 - 1)


def srdhm(a, b) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul on int32 values (as int64 arrays)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(2**30), np.int64(1 - 2**30))
    num = ab + nudge
    # C's truncating division by 2^31
    q = np.where(num >= 0, num // np.int64(2**31), -((-num) // np.int64(2**31)))
    return np.where((a == _I32_MIN) & (b == _I32_MIN), _I32_MAX, q)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """RoundingDivideByPOT: x / 2^exponent, to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def _to_int32(x) -> np.ndarray:
    """Two's complement wrap to int32 (what a C int32 multiply does on the machine)."""
    return np.asarray(x, dtype=np.int64).astype(np.uint64).astype(np.uint32).astype(np.int32).astype(np.int64)


def round_half_away(q: np.ndarray) -> np.ndarray:
    """std::round on a float array, in its dtype: to nearest, ties away from zero (``q - trunc(q)`` is exact,
    unlike ``floor(|q| + 0.5)`` near 0.5 in float32)."""
    q = np.asarray(q)
    t = np.trunc(q)
    return t + np.where(np.abs(q - t) >= q.dtype.type(0.5), np.sign(q), 0).astype(q.dtype)


def mbqm(x, m0, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier, double rounding (TFLite's default)."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(srdhm(_to_int32(np.asarray(x, dtype=np.int64) * (np.int64(1) << left)), m0), right)


def mbqm_single(x, m0, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING."""
    t = np.int64(31) - np.asarray(shift, dtype=np.int64)
    return (np.asarray(x, dtype=np.int64) * np.asarray(m0, dtype=np.int64) + (np.int64(1) << (t - 1))) >> t


def quantize_tflite(x, scale, zero_point, qmin=-128, qmax=127) -> np.ndarray:
    """float -> int8 as TFLite: round half away from zero, add the zero point, saturate."""
    v = np.asarray(x, dtype=np.float64) / scale
    r = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(r + zero_point, qmin, qmax).astype(np.int64)


def quantize_onnx(x, scale, zero_point, qmin=-128, qmax=127) -> np.ndarray:
    """float -> int8/uint8 as ONNX QuantizeLinear: round half to even, add the zero point, saturate."""
    r = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale))
    return np.clip(r + zero_point, qmin, qmax).astype(np.int64)


def fully_connected(x, x_zp, w, bias, m0, shift, y_zp, act_min=-128, act_max=127, single_rounding=False):
    """TFLite's reference int8 FullyConnected: x (B, K) int8 with zero point x_zp; w (N, K) int8, symmetric;
    bias (N,) int32 or None; (m0, shift) per output channel (arrays of N) or per tensor (scalars).
    Returns int8 values as int64: clamp(MBQM(sum_k w * (x - x_zp) + bias) + y_zp, act_min, act_max)."""
    acc = (np.asarray(x, np.int64) - x_zp) @ np.asarray(w, np.int64).T
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)
    scaled = (mbqm_single if single_rounding else mbqm)(acc, m0, shift)
    return np.clip(scaled + y_zp, act_min, act_max)


def conv2d_accumulate(x, x_zp, w, w_zp, bias, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """The int64 accumulators of an 8-bit convolution in NCHW: bias[m] + sum (x - x_zp) * (w - w_zp[m]) over
    valid taps (padding taps add nothing: the same as padding with the zero point). x (N, C, H, W); w
    (M, C/group, kH, kW); w_zp scalar or per output channel; pads (top, left, bottom, right)."""
    x = np.asarray(x, np.int64) - x_zp
    m = np.asarray(w).shape[0]
    w = np.asarray(w, np.int64) - np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (m,)).reshape(m, 1, 1, 1)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr), np.int64)
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    mg = m // group
    acc = np.zeros((n, m, oh, ow), np.int64)
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                acc[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, w[g * mg:(g + 1) * mg, :, i, j])
    if bias is not None:
        acc += np.asarray(bias, np.int64).reshape(1, m, 1, 1)
    return acc


def conv2d(x, x_zp, w, bias, m0, shift, y_zp, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
           act_min=-128, act_max=127, single_rounding=False):
    """TFLite's reference int8 convolution (ConvPerChannel; DepthwiseConvPerChannel when group == C_in),
    in NCHW: x (N, C, H, W) int8 with zero point x_zp; w (M, C/group, kH, kW) int8 symmetric; bias (M,)
    int32 or None; (m0, shift) per output channel. Padding taps add nothing (TFLite skips them: the same as
    padding with the zero point). Returns int8 values as int64 (N, M, OH, OW)."""
    acc = conv2d_accumulate(x, x_zp, w, 0, bias, strides, pads, dilations, group)
    m = acc.shape[1]
    m0 = np.broadcast_to(np.asarray(m0, np.int64), (m,)).reshape(1, m, 1, 1)
    shift = np.broadcast_to(np.asarray(shift, np.int64), (m,)).reshape(1, m, 1, 1)
    scaled = (mbqm_single if single_rounding else mbqm)(acc, m0, shift)
    return np.clip(scaled + y_zp, act_min, act_max)


def add_params(s1: float, s2: float, s_out: float, left_shift: int = 20):
    """TFLite's int8 Add preparation: both inputs are brought to a common scale 2*max(s1, s2) with
    ``left_shift`` bits of headroom. Returns (m1, shift1, m2, shift2, m_out, shift_out)."""
    from .fixed_point import quantize_multiplier

    twice_max = 2.0 * max(s1, s2)
    p1 = quantize_multiplier(s1 / twice_max)
    p2 = quantize_multiplier(s2 / twice_max)
    po = quantize_multiplier(twice_max / ((1 << left_shift) * s_out))
    return (*p1, *p2, *po)


def add(x1, zp1, x2, zp2, params, y_zp, left_shift=20, act_min=-128, act_max=127):
    """TFLite's reference int8 Add (elementwise, numpy broadcasting): each input, offset by its zero point
    and shifted left by ``left_shift``, is rescaled to the common scale; the sum is rescaled to the output
    (every multiplier below one: MultiplyByQuantizedMultiplierSmallerThanOneExp, double rounding)."""
    m1, sh1, m2, sh2, mo, sho = params
    a = (np.asarray(x1, np.int64) - zp1) * (np.int64(1) << left_shift)
    b = (np.asarray(x2, np.int64) - zp2) * (np.int64(1) << left_shift)
    total = mbqm(a, m1, sh1) + mbqm(b, m2, sh2)
    return np.clip(mbqm(total, mo, sho) + y_zp, act_min, act_max)
