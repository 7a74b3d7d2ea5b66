"""8-bit pooling kernels, NCHW: MaxPool, AveragePool and GlobalAveragePool on int8 / uint8.

Inputs are (N, C, H, W), ``pads`` (top, left, bottom, right), ``strides`` / ``dilations`` (h, w); the output
size is given (the caller resolves ceil_mode and auto_pad). Windows are clipped to the image, so any output
size is memory-safe. The average kernels read the uint8 view of the input (one compiled variant for both
types: an int8 byte XOR 0x80 is its value + 128) and parallelize over the N * C planes from
config.PARALLEL_MIN_WORK tap reads on (and more than one thread).

Every op is prepared once (geometry, tables of divisors and requantized bytes, lookup tables) and then either
called, ``op(x, out)``, or bound to fixed arrays, ``op.bind(x, out, threads=...)``: a callable that makes a
single Numba call with every argument ready (arrays, or few Python scalars: NumPy scalars cost ~40 ns each to
dispatch), which is what the runtime's plan uses. Kernel choices (averages: MODE_* tables; workspace):

* AveragePool works on *phase buffers* (see the kernels): a chunk of planes is copied once, zero-padded, into
  sh * sw buffers, after which every tap is one long vectorized loop over the whole chunk, in row-major tap
  order (bit-exact float32 sums); 3x3 and 2x2 windows in a single pass. The float divisions run as vector
  divisions (the numpy error model), the fixed modes' C division in float32 (exact below 2^24) and their
  window sums in int16 where they fit.
* GlobalAveragePool sums each plane in an int32 loop LLVM vectorizes; planes of up to GAP_TABLE_MAX_HW values
  look the output up in a table of every possible sum (made at prepare time by the same requantization).

* :class:`QMaxPool2d`: the largest valid tap, on the 8-bit values themselves (int8 compared through
  ``byte ^ 0x80``); same scale in and out. A window without a valid tap gives the type's minimum.
* :class:`QAvgPool2d`:

  - MODE_FLOAT, onnxruntime com.microsoft QLinearAveragePool (qlinear_pool.cc): dequantize
    ``float32(x_scale * (x - x_zp))``, sum the window clipped to the image in float32 (row-major), divide by
    float(kh * kw) (count_include_pad) or by the clipped window's size, quantize
    ``rint(avg / y_scale + float(y_zp))`` (float32, half to even) and saturate. A kernel covering the whole
    image without pads runs onnxruntime's fallback, QLinearGlobalAveragePool (:class:`QGlobalAvgPool`).
  - MODE_DOUBLE / MODE_SINGLE, TFLite reference_integer_ops::AveragePool: the sum of the raw values (zero
    point included) of the valid taps, ``avg = acc > 0 ? (acc + n/2) / n : (acc - n/2) / n`` (C division, n
    the valid taps), clamped. Beyond TFLite: count_include_pad counts the taps inside the padded input and adds
    x_zp (a real 0) for each padding tap; if the output parameters differ from the input's, the average goes
    through :func:`.lut.requant_table` (TFLite's Requantize, so two roundings).

  A window without any counted tap gives y_zp (MODE_FLOAT) or x_zp requantized (fixed modes).
* :class:`QGlobalAvgPool` over (N * C, H * W) planes:

  - MODE_FLOAT, onnxruntime QLinearGlobalAveragePool (MlasQLinearGlobalAveragePoolNchw): int32 sum minus
    x_zp * image_size, times ``scale = x_scale / (y_scale * float(image_size))`` (float32) through
    MlasRequantizeOutput (edgedl.quant.requant.requantize, MODE_FLOAT). onnxruntime rejects scales outside
    [2^-32, 256); edgedl computes them.
  - MODE_DOUBLE / MODE_SINGLE, TFLite MEAN over H, W with keep_dims, as its default kernel
    (optimized_integer_ops::Mean) computes it::

        temp = float(x_zp) * x_scale / y_scale; temp += (temp > 0 ? 0.5 : -0.5); bias = y_zp - int(temp)
        M = x_scale / (float(H * W) * y_scale)      (float32) -> QuantizeMultiplier -> (M0, shift)
        out = clamp(MBQM(sum of the raw values, M0, shift) + bias, lo, hi)
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from ...quant.fixed_point import quantize_multiplier, tflite_mean_multiplier
from ...quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE, requantize
from . import config as _config
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL, num_threads
from .lut import byte_values, check_qparams, lut_span, requant_table
from .vec_lut import LUT_KERNEL

__all__ = ["QMaxPool2d", "QAvgPool2d", "QGlobalAvgPool"]

# NOTE: the average kernels use Numba's numpy error model: with the default (Python) one every division by an
# array element checks for zero, and the check keeps LLVM from vectorizing the loop (a divisor is never 0
# here); nothing else changes (no float flags)
_NJIT_AVG = dict(NJIT_EXACT, error_model="numpy")
_NJIT_AVG_PARALLEL = dict(NJIT_EXACT_PARALLEL, error_model="numpy")

# layout of the int64 geometry vector g of the windowed kernels
G_H, G_W, G_OH, G_OW, G_KH, G_KW, G_SH, G_SW, G_DH, G_DW, G_PT, G_PL, G_PB, G_PR, G_INCL = range(15)


@numba.njit(inline="always", **NJIT_EXACT)
def _maxpool_plane(p, x, out, g, lowest):
    # plane p of x: (P * H * W,) int8 or uint8 (typed: max compares the values) -> out: (P * OH * OW,).
    # Per output row, tap by tap: each tap updates the run of outputs whose window holds it, a loop over
    # contiguous outputs with no bounds checks (it vectorizes); an empty window keeps the type's minimum
    h_, w_, oh_, ow_ = g[G_H], g[G_W], g[G_OH], g[G_OW]
    kh, kw, sh, sw, dh, dw = g[G_KH], g[G_KW], g[G_SH], g[G_SW], g[G_DH], g[G_DW]
    pt, pl = g[G_PT], g[G_PL]
    xb = p * h_ * w_
    ob = p * oh_ * ow_
    for oh in range(oh_):
        orow = out[ob + oh * ow_:ob + (oh + 1) * ow_]
        for o in range(ow_):
            orow[o] = lowest
        hs = oh * sh - pt
        for i in range(kh):
            hh = hs + i * dh
            if hh < 0 or hh >= h_:
                continue
            xrow = x[xb + hh * w_:xb + (hh + 1) * w_]
            for j in range(kw):
                off = j * dw - pl  # input column of output o: o * sw + off
                o0 = max(0, (-off + sw - 1) // sw)
                o1 = min(ow_, (w_ - off + sw - 1) // sw)
                for o in range(o0, o1):
                    v = xrow[o * sw + off]
                    orow[o] = v if v > orow[o] else orow[o]


@numba.njit(**NJIT_EXACT)
def _max2x2s2(x, out):
    # 2x2 windows, stride 2, no padding or dilation: x (P, H, W) -> out (P, OH, OW), 8-bit. Written out tap by
    # tap on 3-D arrays: LLVM vectorizes it (runtime window sizes on flat arrays run ~20x slower)
    planes, oh, ow = out.shape
    for p in range(planes):
        for r in range(oh):
            a = x[p, 2 * r]
            b = x[p, 2 * r + 1]
            o = out[p, r]
            for i in range(ow):
                m = a[2 * i] if a[2 * i] > a[2 * i + 1] else a[2 * i + 1]
                n = b[2 * i] if b[2 * i] > b[2 * i + 1] else b[2 * i + 1]
                o[i] = m if m > n else n


@numba.njit(**NJIT_EXACT)
def _max3x3s2(x, out, pt, pl, lowest):
    # 3x3 windows, stride 2, any padding: x (P, H, W) -> out (P, OH, OW); interior windows written out tap by
    # tap, border ones clipped
    planes, h, w = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for p in range(planes):
        for r in range(oh):
            hs = 2 * r - pt
            o = out[p, r]
            inside_rows = hs >= 0 and hs + 3 <= h
            for i in range(ow):
                ws = 2 * i - pl
                if inside_rows and ws >= 0 and ws + 3 <= w:
                    a = x[p, hs]
                    b = x[p, hs + 1]
                    c = x[p, hs + 2]
                    m = max(max(a[ws], a[ws + 1]), max(a[ws + 2], b[ws]))
                    n = max(max(b[ws + 1], b[ws + 2]), max(c[ws], c[ws + 1]))
                    o[i] = max(max(m, n), c[ws + 2])
                    continue
                m = lowest
                for di in range(3):
                    hh = hs + di
                    if 0 <= hh < h:
                        for dj in range(3):
                            ww = ws + dj
                            if 0 <= ww < w:
                                m = max(m, x[p, hh, ww])
                o[i] = m


@numba.njit(**NJIT_EXACT)
def _maxpool(x, out, g, planes, lowest):
    for p in range(planes):
        _maxpool_plane(p, x, out, g, lowest)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _maxpool_parallel(x, out, g, planes, lowest):
    for p in prange(planes):
        _maxpool_plane(p, x, out, g, lowest)


# --- AveragePool: polyphase planes -------------------------------------------------------------------
# A chunk of planes is copied into sh * sw zero-padded *phase* buffers: phase (a, b) holds the padded
# plane's rows a, a + sh, ... and columns b, b + sw, ... (the padded plane is the input moved down by pt and
# right by pl, zeros around it), each plane a block of HQ x WQ, the blocks of the chunk one after the other.
# Tap (i, j) of output (r, o) is then element (r + i // sh, o + j // sw) of phase (i % sh, j % sw), so every
# tap is one flat loop over the whole chunk: S[q] += phase[q + (i // sh) * WQ + j // sw] (HQ >= OH +
# (KH - 1) // sh, WQ >= OW + (KW - 1) // sw; the positions q past OH / OW of a block are computed and thrown
# away). Taps run in row-major order, so each output's float32 sum is added in onnxruntime's order (padding
# taps add +0.0, which changes no sum: a sum starting from +0.0 of values none of which is -0.0 is never
# -0.0). Positions outside the image are written once (zeros) when the workspace is made and never again.
# layout of the int64 geometry vector of the average kernels
# (planes; the input's byte flip, see QGlobalAvgPool, and c0: value = int32(byte ^ flip) - c0, x_zp included in
# MODE_FLOAT; in the fixed modes the clamp of the average and the lookup kernel of its requantization, if any)
A_H, A_W, A_OH, A_OW, A_KH, A_KW, A_SH, A_SW, A_PT, A_PL, A_HQ, A_WQ, A_PLEN, A_CP = range(14)
A_P, A_FLIP, A_C0, A_LO, A_HI, A_LUT = range(14, 20)


def _to_buf(vi, scale):
    """The phase-buffer value of the input value ``vi``: ``scale * float32(vi)`` (float32 scale) or ``vi``."""


@overload(_to_buf, jit_options=dict(_NJIT_AVG))
def _to_buf_impl(vi, scale):
    if isinstance(scale, types.Float):
        return lambda vi, scale: scale * np.float32(vi)
    return lambda vi, scale: vi


@numba.njit(inline="always", **_NJIT_AVG)
def _fill_s1(x, xb, buf, slot, a_g, flip, c0, scale):
    # _fill_planes for sw == 1: one contiguous loop per input row
    h_, w_, sh, pt, pl = a_g[A_H], a_g[A_W], a_g[A_SH], a_g[A_PT], a_g[A_PL]
    hq, wq, plen = a_g[A_HQ], a_g[A_WQ], a_g[A_PLEN]
    a = pt % sh  # row phase and phase row of input row hh (row hh + pt of the padded plane)
    u = pt // sh
    for hh in range(h_):
        at = a * plen + (slot * hq + u) * wq + pl
        d = buf[at:at + w_]
        s1 = x[xb + hh * w_:xb + (hh + 1) * w_]
        for k in range(w_):
            d[k] = _to_buf(np.int32(s1[k] ^ flip) - c0, scale)
        a += 1
        if a == sh:
            a = 0
            u += 1


@numba.njit(inline="always", **_NJIT_AVG)
def _fill_s2(x16, xb, buf, slot, a_g, flip, c0, scale):
    # _fill_planes for sw == 2 and an even W, over the uint16 view x16: the low byte of word k is column 2k
    # (to column phase pl % 2), the high byte column 2k + 1 (the other phase); one loop per input row (LLVM
    # vectorizes it; ~4x faster than a stride-2 byte loop per column phase)
    h_, w_, sh, pt, pl = a_g[A_H], a_g[A_W], a_g[A_SH], a_g[A_PT], a_g[A_PL]
    hq, wq, plen = a_g[A_HQ], a_g[A_WQ], a_g[A_PLEN]
    a = pt % sh
    u = pt // sh
    npair = w_ // 2
    lo_ph, lo_c, hi_c = pl % 2, pl // 2, (pl + 1) // 2
    flip16 = np.uint16(np.uint16(flip) * np.uint16(0x101))
    xb2 = xb // 2
    for hh in range(h_):
        rowoff = (slot * hq + u) * wq
        lo_at = (a * 2 + lo_ph) * plen + rowoff + lo_c
        hi_at = (a * 2 + 1 - lo_ph) * plen + rowoff + hi_c
        dl = buf[lo_at:lo_at + npair]
        dh = buf[hi_at:hi_at + npair]
        s2 = x16[xb2 + hh * npair:xb2 + (hh + 1) * npair]
        for k in range(npair):
            v = s2[k] ^ flip16
            dl[k] = _to_buf(np.int32(v & 0xFF) - c0, scale)
            dh[k] = _to_buf(np.int32(v >> 8) - c0, scale)
        a += 1
        if a == sh:
            a = 0
            u += 1


@numba.njit(inline="always", **_NJIT_AVG)
def _fill_any(x, xb, buf, slot, a_g, flip, c0, scale):
    # _fill_planes for any stride: per input row and column phase
    h_, w_, sh, sw, pt, pl = a_g[A_H], a_g[A_W], a_g[A_SH], a_g[A_SW], a_g[A_PT], a_g[A_PL]
    hq, wq, plen = a_g[A_HQ], a_g[A_WQ], a_g[A_PLEN]
    a = pt % sh
    u = pt // sh
    for hh in range(h_):
        for b in range(sw):
            v0 = max(0, -((b - pl) // sw))  # first phase column inside the image
            n = max(min(wq, (w_ - 1 + pl - b) // sw + 1) - v0, 0)
            at = (a * sw + b) * plen + (slot * hq + u) * wq + v0
            d = buf[at:at + n]
            c = xb + hh * w_ + v0 * sw + b - pl  # input index of phase column v0
            for v in range(n):
                d[v] = _to_buf(np.int32(x[c + v * sw] ^ flip) - c0, scale)
        a += 1
        if a == sh:
            a = 0
            u += 1


@numba.njit(inline="always", **_NJIT_AVG)
def _fill_planes(x, x16, q0, q1, buf, a_g, flip, c0, scale):
    # planes q0 <= p < q1 of x (uint8 view; values int32(byte ^ flip) - c0, to_buf'd) into blocks 0, 1, ... of
    # the phase buffers buf[k * PLEN : ...]. NOTE: one specialised row loop per case, each in its own loop
    # nest: with the three inside one row loop the uint16 one ran 2x slower
    hw = a_g[A_H] * a_g[A_W]
    sw = a_g[A_SW]
    if sw == 2 and a_g[A_W] % 2 == 0:
        for p in range(q0, q1):
            _fill_s2(x16, p * hw, buf, p - q0, a_g, flip, c0, scale)
    elif sw == 1:
        for p in range(q0, q1):
            _fill_s1(x, p * hw, buf, p - q0, a_g, flip, c0, scale)
    else:
        for p in range(q0, q1):
            _fill_any(x, p * hw, buf, p - q0, a_g, flip, c0, scale)


@numba.njit(inline="always", **_NJIT_AVG)
def _tap(buf, i, j, n, sh, sw, wq, plen):
    # the n phase values tap (i, j) adds, as a slice (indexing slices keeps the loops free of index checks)
    at = ((i % sh) * sw + j % sw) * plen + (i // sh) * wq + j // sw
    return buf[at:at + n]


@numba.njit(inline="always", **_NJIT_AVG)
def _sum_taps(buf, s, n, a_g):
    # s[q] = sum over the taps, row-major, of the phase values (see above), q < n. Several taps per pass (the
    # same additions in the same order, s read and written once per pass)
    kh, kw, sh, sw, wq, plen = a_g[A_KH], a_g[A_KW], a_g[A_SH], a_g[A_SW], a_g[A_WQ], a_g[A_PLEN]
    dst = s[:n]
    if kh == 3 and kw == 3:  # the whole window in one pass: 9 streams, s written once (~1.5x faster)
        a0, a1, a2 = _tap(buf, 0, 0, n, sh, sw, wq, plen), _tap(buf, 0, 1, n, sh, sw, wq, plen), \
            _tap(buf, 0, 2, n, sh, sw, wq, plen)
        b0, b1, b2 = _tap(buf, 1, 0, n, sh, sw, wq, plen), _tap(buf, 1, 1, n, sh, sw, wq, plen), \
            _tap(buf, 1, 2, n, sh, sw, wq, plen)
        c0, c1, c2 = _tap(buf, 2, 0, n, sh, sw, wq, plen), _tap(buf, 2, 1, n, sh, sw, wq, plen), \
            _tap(buf, 2, 2, n, sh, sw, wq, plen)
        for q in range(n):
            dst[q] = (((((((a0[q] + a1[q]) + a2[q]) + b0[q]) + b1[q]) + b2[q]) + c0[q]) + c1[q]) + c2[q]
        return
    if kh == 2 and kw == 2:
        a0, a1 = _tap(buf, 0, 0, n, sh, sw, wq, plen), _tap(buf, 0, 1, n, sh, sw, wq, plen)
        b0, b1 = _tap(buf, 1, 0, n, sh, sw, wq, plen), _tap(buf, 1, 1, n, sh, sw, wq, plen)
        for q in range(n):
            dst[q] = ((a0[q] + a1[q]) + b0[q]) + b1[q]
        return
    for i in range(kh):  # a pass per kernel row, its first 2 or 3 taps in it
        t0 = _tap(buf, i, 0, n, sh, sw, wq, plen)
        j = 1
        if kw >= 3:
            t1, t2 = _tap(buf, i, 1, n, sh, sw, wq, plen), _tap(buf, i, 2, n, sh, sw, wq, plen)
            if i == 0:
                for q in range(n):
                    dst[q] = (t0[q] + t1[q]) + t2[q]
            else:
                for q in range(n):
                    dst[q] = ((dst[q] + t0[q]) + t1[q]) + t2[q]
            j = 3
        elif kw == 2:
            t1 = _tap(buf, i, 1, n, sh, sw, wq, plen)
            if i == 0:
                for q in range(n):
                    dst[q] = t0[q] + t1[q]
            else:
                for q in range(n):
                    dst[q] = (dst[q] + t0[q]) + t1[q]
            j = 2
        elif i == 0:
            for q in range(n):
                dst[q] = t0[q]
        else:
            for q in range(n):
                dst[q] += t0[q]
        for jj in range(j, kw):  # the rest of the row, tap by tap
            t = _tap(buf, i, jj, n, sh, sw, wq, plen)
            for q in range(n):
                dst[q] += t[q]


def _div_trunc(num, d):
    """C's ``num / d`` (toward zero) of an int32 by a positive integer held as float32 or float64."""


@overload(_div_trunc, jit_options=dict(_NJIT_AVG))
def _div_trunc_impl(num, d):
    # NOTE: exact: for integers with |num| < 2^p (p = 24 float32, 53 float64) the rounding error of num / d,
    # below |num / d| * 2^-p < 1 / d, cannot carry a quotient that is not an integer across one (its distance
    # to the nearest integer is at least 1 / d); a float32 vector division is ~2x as fast as a float64 one
    if d == types.float32:
        return lambda num, d: np.int32(np.float32(num) / d)
    return lambda num, d: np.int32(np.float64(num) / d)


@numba.njit(inline="always", **_NJIT_AVG)
def _avg_float_range(x, out, p0, p1, a_g, buf, cntf, fprm):
    # planes p0 <= p < p1, MODE_FLOAT. buf (float32): the phase buffers (sh * sw * PLEN), then S (CP * HQ * WQ).
    # cntf (HQ * WQ,) float32: the divisor of each block position (1 where it is unused or 0); fprm (float64,
    # float32 values): x_scale, y_scale, y_zp, lo, hi
    oh_, ow_ = a_g[A_OH], a_g[A_OW]
    hq, wq, plen, cp = a_g[A_HQ], a_g[A_WQ], a_g[A_PLEN], a_g[A_CP]
    flip, c0 = np.uint8(a_g[A_FLIP]), np.int32(a_g[A_C0])
    xs, ys, yzpf, lof, hif = (np.float32(fprm[0]), np.float32(fprm[1]), np.float32(fprm[2]), np.float32(fprm[3]),
                              np.float32(fprm[4]))
    blk = hq * wq
    s = buf[a_g[A_SH] * a_g[A_SW] * plen:]
    x16 = x[:x.shape[0] // 2 * 2].view(np.uint16)
    for q0 in range(p0, p1, cp):
        q1 = min(q0 + cp, p1)
        _fill_planes(x, x16, q0, q1, buf, a_g, flip, c0, xs)
        _sum_taps(buf, s, (q1 - q0) * blk, a_g)
        for p in range(q0, q1):
            sb = s[(p - q0) * blk:(p - q0 + 1) * blk]
            for t in range(blk):
                v = (sb[t] / cntf[t]) / ys + yzpf
                v = lof if v < lof else v
                v = hif if v > hif else v
                sb[t] = np.rint(v)
            ob = p * oh_ * ow_
            for r in range(oh_):
                srow = sb[r * wq:r * wq + ow_]
                orow = out[ob + r * ow_:ob + (r + 1) * ow_]
                for o in range(ow_):
                    orow[o] = np.uint8(np.int32(srow[o]) & 0xFF)


@numba.njit(inline="always", **_NJIT_AVG)
def _avg_fixed_range(x, out, p0, p1, a_g, buf, add, half, cntd, otab):
    # planes p0 <= p < p1, MODE_DOUBLE / MODE_SINGLE. buf (int16 or int32) as above; per block position: add
    # (int32, x_zp per padding tap counted, x_zp where nothing is), half (int32, divisor // 2), cntd (float32 or
    # float64 divisor, 1 where unused or 0). The average, clamped to [LO, HI], is the output's byte unless
    # LUT >= 0: then otab (256,) uint8 maps each average byte to the output byte (lut.py's kernel LUT)
    oh_, ow_ = a_g[A_OH], a_g[A_OW]
    hq, wq, plen, cp = a_g[A_HQ], a_g[A_WQ], a_g[A_PLEN], a_g[A_CP]
    flip, c0 = np.uint8(a_g[A_FLIP]), np.int32(a_g[A_C0])
    lo, hi, lut = np.int32(a_g[A_LO]), np.int32(a_g[A_HI]), a_g[A_LUT]
    blk = hq * wq
    s = buf[a_g[A_SH] * a_g[A_SW] * plen:]
    x16 = x[:x.shape[0] // 2 * 2].view(np.uint16)
    one = np.int32(1)
    for q0 in range(p0, p1, cp):
        q1 = min(q0 + cp, p1)
        _fill_planes(x, x16, q0, q1, buf, a_g, flip, c0, one)
        _sum_taps(buf, s, (q1 - q0) * blk, a_g)
        for p in range(q0, q1):
            sb = s[(p - q0) * blk:(p - q0 + 1) * blk]
            for t in range(blk):  # C division rounding half away from zero (see _div_trunc)
                acc = np.int32(sb[t] + add[t])
                num = np.int32(acc + half[t]) if acc > 0 else np.int32(acc - half[t])
                sb[t] = _div_trunc(num, cntd[t])
            ob = p * oh_ * ow_
            for r in range(oh_):
                srow = sb[r * wq:r * wq + ow_]
                orow = out[ob + r * ow_:ob + (r + 1) * ow_]
                for o in range(ow_):
                    v = np.int32(srow[o])
                    v = lo if v < lo else v
                    orow[o] = np.uint8((hi if v > hi else v) & 0xFF)
        if lut >= 0:  # the output parameters differ from the input's: requantize the chunk's bytes in place
            lut_span(out, otab, out, q0 * oh_ * ow_, q1 * oh_ * ow_, lut)


@numba.njit(**_NJIT_AVG)
def _avgpool_float(x, out, a_g, bufs, cntf, fprm):
    _avg_float_range(x, out, 0, a_g[A_P], a_g, bufs[0], cntf, fprm)


@numba.njit(**_NJIT_AVG_PARALLEL)
def _avgpool_float_parallel(x, out, a_g, bufs, cntf, fprm):
    nw = bufs.shape[0]
    planes = a_g[A_P]
    for k in prange(nw):
        _avg_float_range(x, out, k * planes // nw, (k + 1) * planes // nw, a_g, bufs[k], cntf, fprm)


@numba.njit(**_NJIT_AVG)
def _avgpool_fixed(x, out, a_g, bufs, add, half, cntd, otab):
    _avg_fixed_range(x, out, 0, a_g[A_P], a_g, bufs[0], add, half, cntd, otab)


@numba.njit(**_NJIT_AVG_PARALLEL)
def _avgpool_fixed_parallel(x, out, a_g, bufs, add, half, cntd, otab):
    nw = bufs.shape[0]
    planes = a_g[A_P]
    for k in prange(nw):
        _avg_fixed_range(x, out, k * planes // nw, (k + 1) * planes // nw, a_g, bufs[k], add, half, cntd, otab)


# --- GlobalAveragePool -------------------------------------------------------------------------------
#: planes of at most this many values requantize through a table indexed by the plane's sum
GAP_TABLE_MAX_HW = 256
# the int32 sum of a plane is taken over blocks of this many values (255 * 2^23 < 2^31), added up in int64
_GAP_BLOCK = 1 << 23


# layout of the int64 parameter vector of the kernels (the scale rides as a Python float: few, cheap arguments)
GP_PLANES, GP_HW, GP_FLIP, GP_OFF, GP_M0, GP_SHIFT, GP_ZP, GP_LO, GP_HI, GP_MODE = range(10)


@numba.njit(inline="always", **_NJIT_AVG)
def _gap_range(x, out, p0, p1, tab, prm, fscale):
    # planes p0 <= p < p1 of x (uint8 view, (P * hw,)) -> out[p] (uint8). s = sum of (byte ^ flip) (0x80 for
    # int8: value + 128); out = tab[s] where a table is given, else requantize(s + off) in `mode`.
    # NOTE: one int32 loop over the plane, indexed from x itself: a slice per plane, or an outer loop over
    # blocks, makes it ~2.5x slower on 7x7 planes
    hw, flip, off = prm[GP_HW], np.uint8(prm[GP_FLIP]), prm[GP_OFF]
    m0, shift, zp, lo, hi, mode = prm[GP_M0], prm[GP_SHIFT], prm[GP_ZP], prm[GP_LO], prm[GP_HI], prm[GP_MODE]
    fs = np.float32(fscale)
    use_tab = tab.shape[0] > 0
    if hw > _GAP_BLOCK:  # 255 * hw might not fit in int32: blocks, added up in int64
        for p in range(p0, p1):
            s = np.int64(0)
            for b0 in range(p * hw, (p + 1) * hw, _GAP_BLOCK):
                acc = np.int32(0)
                for i in range(b0, min(b0 + _GAP_BLOCK, (p + 1) * hw)):
                    acc = np.int32(acc + np.int32(x[i] ^ flip))
                s += acc
            out[p] = requantize(s + off, m0, shift, fs, zp, lo, hi, mode) & 0xFF
        return
    if use_tab:
        for p in range(p0, p1):
            b = p * hw
            acc = np.int32(0)
            for i in range(hw):
                acc = np.int32(acc + np.int32(x[b + i] ^ flip))
            out[p] = tab[acc]
        return
    for p in range(p0, p1):
        b = p * hw
        acc = np.int32(0)
        for i in range(hw):
            acc = np.int32(acc + np.int32(x[b + i] ^ flip))
        out[p] = requantize(np.int64(acc) + off, m0, shift, fs, zp, lo, hi, mode) & 0xFF


@numba.njit(**_NJIT_AVG)
def _gap(x, out, tab, prm, fscale):
    _gap_range(x, out, 0, prm[GP_PLANES], tab, prm, fscale)


@numba.njit(**_NJIT_AVG_PARALLEL)
def _gap_parallel(x, out, tab, prm, fscale, nchunks):
    planes = prm[GP_PLANES]
    for c in prange(nchunks):
        _gap_range(x, out, c * planes // nchunks, (c + 1) * planes // nchunks, tab, prm, fscale)


@numba.njit(**NJIT_EXACT)
def _gap_table(n, off, m0, shift, fscale, zp, lo, hi, mode):
    # (n,) uint8: the output byte of every plane sum s < n (requantize(s + off))
    t = np.empty(n, np.uint8)
    for s in range(n):
        t[s] = requantize(np.int64(s) + off, m0, shift, fscale, zp, lo, hi, mode) & 0xFF
    return t


# --- Python side -------------------------------------------------------------------------------------
def _pair(v, what):
    t = tuple(int(i) for i in v)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{what} must be two positive ints, got {v}")
    return t


def _check_mode(mode):
    if mode not in (MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT):
        raise ValueError(f"unknown requantization mode {mode}")
    return int(mode)


def _check_io(x, out, x_shape, out_shape):
    if tuple(x.shape) != tuple(x_shape):
        raise ValueError(f"input has shape {tuple(x.shape)}, the op was prepared for {tuple(x_shape)}")
    if tuple(out.shape) != tuple(out_shape):
        raise ValueError(f"output has shape {tuple(out.shape)}, expected {tuple(out_shape)}")
    for arr, what in ((x, "input"), (out, "output")):
        if np.dtype(arr.dtype) not in (np.dtype(np.int8), np.dtype(np.uint8)):
            raise ValueError(f"{what} must be int8 or uint8, got {arr.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("the output must be C-contiguous")


def _check_range(lo, hi, dtype):
    info = np.iinfo(dtype)
    if not info.min <= lo <= hi <= info.max:
        raise ValueError(f"output range [{lo}, {hi}] outside {np.dtype(dtype)}")


def _flat8(a):
    """The flat uint8 view of a C-contiguous 8-bit array (no copy)."""
    return a.reshape(-1).view(np.uint8)


def _flip(dtype) -> np.uint8:
    """The byte XORed into every input byte: 0x80 for int8 (the byte becomes value + 128), 0 for uint8."""
    return np.uint8(0x80 if np.dtype(dtype) == np.dtype(np.int8) else 0)


def _threads(threads):
    return num_threads() if threads is None else int(threads)


class _Prepared:
    """A prepared 8-bit op: ``op(x, out, parallel=None)`` runs it, ``op.bind(x, out, parallel=None,
    threads=None)`` returns a no-argument callable running it on those very arrays with every argument
    prepared (one Numba dispatch per run). ``parallel`` None picks the prange variant from
    config.PARALLEL_MIN_WORK on (and more than one thread); True / False force it."""

    def _call_args(self, x, out, parallel, threads):
        """(kernel, args) for a C-contiguous x; validates the arrays."""
        raise NotImplementedError

    def _parallel(self, work, parallel, threads):
        if parallel is None:
            return work >= _config.PARALLEL_MIN_WORK and _threads(threads) > 1
        return bool(parallel)

    def __call__(self, x, out, parallel=None):
        fn, args = self._call_args(np.ascontiguousarray(x), out, parallel, None)
        fn(*args)
        return out

    def bind(self, x, out, parallel=None, threads=None):
        if not x.flags.c_contiguous:  # NOTE: a contiguous copy made now would go stale: copy at each run
            self._call_args(np.ascontiguousarray(x), out, parallel, threads)  # validate now
            return functools.partial(self.__call__, x, out, parallel)
        fn, args = self._call_args(x, out, parallel, threads)
        return functools.partial(fn, *args)


class _Window(_Prepared):
    """Shared geometry of the windowed pools."""

    def __init__(self, x_shape, kernel, pads, strides, dilations, out_hw, include_pad=False):
        x_shape = tuple(int(d) for d in x_shape)
        if len(x_shape) != 4 or min(x_shape) < 1:
            raise ValueError(f"input shape must be (N, C, H, W) with positive dims, got {x_shape}")
        kh, kw = _pair(kernel, "kernel")
        sh, sw = _pair(strides, "strides")
        dh, dw = _pair(dilations, "dilations")
        oh, ow = _pair(out_hw, "output size")
        pads = tuple(int(p) for p in pads)
        if len(pads) != 4 or min(pads) < 0:
            raise ValueError(f"pads must be (top, left, bottom, right) >= 0, got {pads}")
        n, c, h, w = x_shape
        self.x_shape, self.out_shape = x_shape, (n, c, oh, ow)
        self.kernel, self.pads = (kh, kw), pads
        self.planes = n * c
        self.work = n * c * oh * ow * kh * kw
        self.g = np.array([h, w, oh, ow, kh, kw, sh, sw, dh, dw, *pads, int(include_pad)], np.int64)


class QMaxPool2d(_Window):
    """Prepared 8-bit MaxPool: ``QMaxPool2d(x_shape, kernel, pads, strides, dilations, out_hw)(x, out)``."""

    def _call_args(self, x, out, parallel, threads):
        if x.dtype != out.dtype:
            raise ValueError(f"MaxPool keeps the type: input {x.dtype}, output {out.dtype}")
        _check_io(x, out, self.x_shape, self.out_shape)
        xv, ov = x.reshape(-1), out.reshape(-1)
        lowest = x.dtype.type(np.iinfo(x.dtype).min)
        h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr = (int(v) for v in self.g[:14])
        x3, o3 = xv.reshape(self.planes, h, w), ov.reshape(self.planes, oh, ow)
        if (kh, kw, sh, sw, dh, dw) == (2, 2, 2, 2, 1, 1) and not (pt or pl) and 2 * oh <= h and 2 * ow <= w:
            return _max2x2s2, (x3, o3)
        if (kh, kw, sh, sw, dh, dw) == (3, 3, 2, 2, 1, 1):
            return _max3x3s2, (x3, o3, pt, pl, lowest)
        fn = _maxpool_parallel if self._parallel(self.work, parallel, threads) else _maxpool
        return fn, (xv, ov, self.g, self.planes, lowest)


class QGlobalAvgPool(_Prepared):
    """Prepared 8-bit GlobalAveragePool of (n, c, hw) planes (any NC... layout with the spatial dims last):
    ``QGlobalAvgPool(n, c, hw, x_scale, x_zp, y_scale, y_zp, lo, hi, mode)(x, out)``, out (n, c, 1, ...).

    A plane's sum is taken over its bytes XOR 0x80 for int8 (value + 128) or as they are for uint8 (an int32
    loop that vectorizes); planes of at most GAP_TABLE_MAX_HW values then look their output up in a table of
    every possible sum (built at prepare time with the same requantization), larger ones requantize."""

    def __init__(self, n, c, hw, x_scale, x_zp, y_scale, y_zp, lo, hi, mode, reference_mean: bool = False):
        self.n, self.c, self.hw = int(n), int(c), int(hw)
        if min(self.n, self.c, self.hw) < 1:
            raise ValueError(f"n, c, hw must be positive, got {(n, c, hw)}")
        #: TFLite's reference MEAN (sum of x - zp, one multiplier with the count folded in) instead of the
        #: optimized kernel's arithmetic (fixed-point modes only)
        self.reference_mean = bool(reference_mean)
        self.params = (x_scale, x_zp, y_scale, y_zp)
        self.lo, self.hi, self.mode = int(lo), int(hi), _check_mode(mode)
        self._prepared = {}

    def _prepare(self, in_dtype, out_dtype):
        key = (np.dtype(in_dtype), np.dtype(out_dtype))
        if key not in self._prepared:
            xs, xz = check_qparams(self.params[0], self.params[1], in_dtype, "input")
            ys, yz = check_qparams(self.params[2], self.params[3], out_dtype, "output")
            _check_range(self.lo, self.hi, out_dtype)
            if self.mode == MODE_FLOAT:  # bias -x_zp * image_size, MlasRequantizeOutput with zp = y_zp
                fscale = np.float32(xs / np.float32(ys * np.float32(self.hw)))
                bias, m0, shift, zp = -xz * self.hw, 0, 0, yz
            elif self.reference_mean:  # TFLite's reference MEAN
                m0, shift = tflite_mean_multiplier(xs, ys, self.hw)
                bias, fscale, zp = -xz * self.hw, np.float32(0), yz
            else:  # TFLite optimized_integer_ops::Mean
                temp = np.float32(np.float32(np.float32(xz) * xs) / ys)
                temp = np.float32(temp + np.float32(0.5)) if temp > 0 else np.float32(temp - np.float32(0.5))
                m0, shift = quantize_multiplier(float(np.float32(xs / np.float32(np.float32(self.hw) * ys))))
                bias, fscale, zp = 0, np.float32(0), yz - int(np.trunc(temp))
            flip = int(_flip(in_dtype))
            off = bias - flip * self.hw  # the kernel sums value + 128 per int8 element
            prm = np.array([self.n * self.c, self.hw, flip, off, m0, shift, zp, self.lo, self.hi, self.mode],
                           np.int64)
            if self.hw <= GAP_TABLE_MAX_HW:
                tab = _gap_table(255 * self.hw + 1, np.int64(off), np.int64(m0), np.int64(shift),
                                 np.float32(fscale), np.int64(zp), np.int64(self.lo), np.int64(self.hi),
                                 np.int64(self.mode))
            else:
                tab = np.zeros(0, np.uint8)
            self._prepared[key] = (tab, prm, float(fscale))
        return self._prepared[key]

    def _call_args(self, x, out, parallel, threads):
        if x.size != self.n * self.c * self.hw or out.size != self.n * self.c:
            raise ValueError(f"input of {x.size} / output of {out.size} elements for {self.n}x{self.c} planes of "
                             f"{self.hw}")
        if tuple(x.shape[:2]) != (self.n, self.c) or tuple(out.shape[:2]) != (self.n, self.c):
            raise ValueError(f"input {tuple(x.shape)} / output {tuple(out.shape)} do not start with "
                             f"{(self.n, self.c)}")
        _check_io(x, out, x.shape, out.shape)
        tab, prm, fscale = self._prepare(x.dtype, out.dtype)
        planes = self.n * self.c
        args = (_flat8(x), _flat8(out), tab, prm, fscale)
        if planes > 1 and self._parallel(planes * self.hw, parallel, threads):
            return _gap_parallel, args + (min(planes, 4 * max(_threads(threads), 1)),)
        return _gap, args


class QAvgPool2d(_Window):
    """Prepared 8-bit AveragePool: ``QAvgPool2d(x_shape, kernel, pads, strides, out_hw, count_include_pad,
    x_scale, x_zp, y_scale, y_zp, lo, hi, mode)(x, out)``."""

    #: elements (float32, int16 or int32) of one worker's workspace the chunk of planes is sized for (at least
    #: one plane): small enough to stay in L1 / L2 between the fill, the taps and the final pass
    WORKSPACE = 1 << 14

    def __init__(self, x_shape, kernel, pads, strides, out_hw, count_include_pad, x_scale, x_zp, y_scale, y_zp,
                 lo, hi, mode):
        super().__init__(x_shape, kernel, pads, strides, (1, 1), out_hw, bool(count_include_pad))
        self.params = (x_scale, x_zp, y_scale, y_zp)
        self.lo, self.hi, self.mode = int(lo), int(hi), _check_mode(mode)
        self.include_pad = bool(count_include_pad)
        n, c, h, w = self.x_shape
        self.global_pool = None
        if self.mode == MODE_FLOAT and self.kernel == (h, w) and not any(self.pads):
            if self.out_shape[2:] != (1, 1):
                raise ValueError(f"a {h}x{w} kernel on a {h}x{w} image gives 1x1, not {self.out_shape[2:]}")
            self.global_pool = QGlobalAvgPool(n, c, h * w, x_scale, x_zp, y_scale, y_zp, lo, hi, mode)
        # polyphase geometry (see the kernels)
        (kh, kw), (pt, pl, _, _) = self.kernel, self.pads
        sh, sw = int(self.g[G_SH]), int(self.g[G_SW])
        oh, ow = self.out_shape[2:]
        hq = max(oh + (kh - 1) // sh, -(-(pt + h) // sh))
        wq = max(ow + (kw - 1) // sw, -(-(pl + w) // sw))
        slack = ((kh - 1) // sh) * wq + (kw - 1) // sw
        cp = max(1, min(self.planes, self.WORKSPACE // (hq * wq * (sh * sw + 1))))
        plen = cp * hq * wq + slack
        self.a_g = np.array([h, w, oh, ow, kh, kw, sh, sw, pt, pl, hq, wq, plen, cp], np.int64)
        self.buffer_len = sh * sw * plen + cp * hq * wq
        self._prepared = {}

    def _counts(self):
        """(valid taps, taps inside the padded input) of every output position, (OH, OW) int64 each."""
        h, w = self.x_shape[2:]
        oh, ow = self.out_shape[2:]
        (kh, kw), (pt, pl, pb, pr) = self.kernel, self.pads
        sh, sw = int(self.g[G_SH]), int(self.g[G_SW])

        def axis(n_in, n_out, k, s, p0, p1):
            start = np.arange(n_out, dtype=np.int64) * s - p0
            valid = np.clip(np.minimum(start + k, n_in) - np.maximum(start, 0), 0, None)
            padded = np.clip(np.minimum(start + k, n_in + p1) - start, 0, None)
            return valid, padded

        vh, ph = axis(h, oh, kh, sh, pt, pb)
        vw, pw = axis(w, ow, kw, sw, pl, pr)
        return np.outer(vh, vw), np.outer(ph, pw)

    def _block(self, values, fill, dtype):
        """(OH, OW) values placed in an (HQ, WQ) block filled with ``fill``, flat."""
        hq, wq = int(self.a_g[A_HQ]), int(self.a_g[A_WQ])
        oh, ow = self.out_shape[2:]
        b = np.full((hq, wq), fill, dtype)
        b[:oh, :ow] = values
        return b.reshape(-1)

    def _prepare(self, in_dtype, out_dtype):
        key = (np.dtype(in_dtype), np.dtype(out_dtype))
        if key not in self._prepared:
            xs, xz = check_qparams(self.params[0], self.params[1], in_dtype, "input")
            ys, yz = check_qparams(self.params[2], self.params[3], out_dtype, "output")
            _check_range(self.lo, self.hi, out_dtype)
            flip = int(_flip(in_dtype))
            valid, padded = self._counts()
            if self.mode == MODE_FLOAT:
                kh, kw = self.kernel
                cnt = np.full(valid.shape, kh * kw, np.int64) if self.include_pad else valid
                cntf = self._block(np.where(cnt > 0, cnt, 1).astype(np.float32), 1, np.float32)
                a_g = np.array([*self.a_g, self.planes, flip, flip + xz, 0, 0, -1], np.int64)
                tabs = (cntf, np.array([xs, ys, yz, self.lo, self.hi], np.float64))
            else:  # average byte -> requantized output byte, clamped to [lo, hi]
                cnt, add = valid, np.zeros(valid.shape, np.int64)
                if self.include_pad:  # the padding taps hold x_zp
                    cnt, add = padded, (padded - valid) * xz
                add = np.where(cnt > 0, add, xz)  # no tap at all: the average is x_zp
                cnt = np.where(cnt > 0, cnt, 1)
                t = requant_table(xs, xz, ys, yz, in_dtype, out_dtype, self.mode).astype(np.int64)
                otab = (np.clip(t, self.lo, self.hi) & 0xFF).astype(np.uint8)
                vals = byte_values(in_dtype)
                if np.array_equal(t, vals):  # the same parameters: the output is the clamped average
                    a_g = np.array([*self.a_g, self.planes, flip, flip, self.lo, self.hi, -1], np.int64)
                else:  # the average byte, then its requantized byte through the table
                    a_g = np.array([*self.a_g, self.planes, flip, flip, vals.min(), vals.max(), LUT_KERNEL],
                                   np.int64)
                # |acc +- half| <= 256 * count: a float32 division is exact below 2^24 (see _div_trunc)
                div_t = np.float32 if 256 * int(cnt.max()) < 1 << 24 else np.float64
                tabs = (self._block(add, 0, np.int32), self._block(cnt // 2, 0, np.int32),
                        self._block(cnt, 1, div_t), otab)
            self._prepared[key] = (a_g, tabs)
        return self._prepared[key]

    def workspace(self, nworkers):
        """A zeroed workspace for ``nworkers`` (the kernels keep its padding 0): float32 in MODE_FLOAT; in the
        fixed modes int16 where every window sum fits (2x the lanes of int32), else int32."""
        if self.mode == MODE_FLOAT:
            dtype = np.float32
        else:
            dtype = np.int16 if 255 * self.kernel[0] * self.kernel[1] <= np.iinfo(np.int16).max else np.int32
        return np.zeros((nworkers, self.buffer_len), dtype)

    def _call_args(self, x, out, parallel, threads):
        if self.global_pool is not None:
            _check_io(x, out, self.x_shape, self.out_shape)
            return self.global_pool._call_args(x, out, parallel, threads)
        _check_io(x, out, self.x_shape, self.out_shape)
        a_g, tabs = self._prepare(x.dtype, out.dtype)
        nw = 1  # workers: each owns a workspace and an equal share of the planes
        if self.planes > 1 and self._parallel(self.work, parallel, threads):
            nw = min(self.planes, max(_threads(threads), 2))
        bufs = self.workspace(nw)
        if self.mode == MODE_FLOAT:
            fn = _avgpool_float_parallel if nw > 1 else _avgpool_float
        else:
            fn = _avgpool_fixed_parallel if nw > 1 else _avgpool_fixed
        return fn, (_flat8(x), _flat8(out), a_g, bufs, *tabs)
