"""8-bit pooling kernels, NCHW: MaxPool, AveragePool and GlobalAveragePool on int8 / uint8.

Inputs are (N, C, H, W), ``pads`` (top, left, bottom, right), ``strides`` / ``dilations`` (h, w); the output
size is given (the caller resolves ceil_mode and auto_pad). Windows are clipped to the image, so any output
size is memory-safe. Every kernel reads the uint8 view of the input (one compiled variant for both types)
and parallelizes over the N * C planes from config.PARALLEL_MIN_WORK tap reads on.

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

import numba
import numpy as np
from numba import prange

from ...quant.fixed_point import quantize_multiplier
from ...quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE, requantize
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL, PARALLEL_MIN_WORK
from .lut import byte_values, check_qparams, requant_table

__all__ = ["QMaxPool2d", "QAvgPool2d", "QGlobalAvgPool"]

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


@numba.njit(inline="always", **NJIT_EXACT)
def _avgpool_plane(p, x, out, g, mode, vals, deq, otab, ys, yzp, lo, hi, xzp):
    # plane p of x: (P * H * W,) uint8 -> out: (P * OH * OW,) uint8. MODE_FLOAT: deq (256,) float32 dequantized
    # byte values, ys / yzp the output scale and zero point, [lo, hi] the output range; fixed modes: vals (256,)
    # int64 byte values, otab (256,) uint8 output byte of each average byte (requantized and clamped)
    h_, w_, oh_, ow_, kh, kw = g[G_H], g[G_W], g[G_OH], g[G_OW], g[G_KH], g[G_KW]
    incl = g[G_INCL] != 0
    xb = p * h_ * w_
    ob = p * oh_ * ow_
    for oh in range(oh_):
        h0 = oh * g[G_SH] - g[G_PT]
        hs = max(h0, 0)
        he = min(h0 + kh, h_)
        for ow in range(ow_):
            w0 = ow * g[G_SW] - g[G_PL]
            ws = max(w0, 0)
            we = min(w0 + kw, w_)
            nh = max(he - hs, 0)
            nw = max(we - ws, 0)
            if mode == MODE_FLOAT:
                s = np.float32(0.0)
                for hh in range(hs, he):
                    row = xb + hh * w_
                    for ww in range(ws, we):
                        s += deq[x[row + ww]]
                cnt = kh * kw if incl else nh * nw
                if cnt > 0:
                    q = (s / np.float32(cnt)) / ys + np.float32(yzp)
                else:
                    q = np.float32(yzp)
                q = np.float32(lo) if q < np.float32(lo) else q
                q = np.float32(hi) if q > np.float32(hi) else q
                out[ob + oh * ow_ + ow] = np.int64(np.rint(q)) & 0xFF
            else:
                acc = np.int64(0)
                for hh in range(hs, he):
                    row = xb + hh * w_
                    for ww in range(ws, we):
                        acc += vals[x[row + ww]]
                cnt = nh * nw
                if incl:  # taps inside the padded input; the padding ones hold x_zp
                    full = max(min(h0 + kh, h_ + g[G_PB]) - h0, 0) * max(min(w0 + kw, w_ + g[G_PR]) - w0, 0)
                    acc += (full - cnt) * xzp
                    cnt = full
                if cnt > 0:
                    half = cnt // 2
                    avg = (acc + half) // cnt if acc > 0 else -((half - acc) // cnt)
                else:
                    avg = np.int64(xzp)
                out[ob + oh * ow_ + ow] = otab[avg & 0xFF]


@numba.njit(**NJIT_EXACT)
def _avgpool(x, out, g, planes, mode, vals, deq, otab, ys, yzp, lo, hi, xzp):
    for p in range(planes):
        _avgpool_plane(p, x, out, g, mode, vals, deq, otab, ys, yzp, lo, hi, xzp)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _avgpool_parallel(x, out, g, planes, mode, vals, deq, otab, ys, yzp, lo, hi, xzp):
    for p in prange(planes):
        _avgpool_plane(p, x, out, g, mode, vals, deq, otab, ys, yzp, lo, hi, xzp)


@numba.njit(inline="always", **NJIT_EXACT)
def _gap_plane(p, x, out, hw, vals, bias, m0, shift, fscale, zp, lo, hi, mode):
    # plane p of x: (P * hw,) uint8 -> out[p] (uint8): requantize(sum of the values + bias) in `mode`
    acc = np.int64(bias)
    base = p * hw
    for i in range(hw):
        acc += vals[x[base + i]]
    out[p] = requantize(acc, m0, shift, fscale, zp, lo, hi, mode) & 0xFF


@numba.njit(**NJIT_EXACT)
def _gap(x, out, planes, hw, vals, bias, m0, shift, fscale, zp, lo, hi, mode):
    for p in range(planes):
        _gap_plane(p, x, out, hw, vals, bias, m0, shift, fscale, zp, lo, hi, mode)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _gap_parallel(x, out, planes, hw, vals, bias, m0, shift, fscale, zp, lo, hi, mode):
    for p in prange(planes):
        _gap_plane(p, x, out, hw, vals, bias, m0, shift, fscale, zp, lo, hi, mode)


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
    return np.ascontiguousarray(x).reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8)


def _check_range(lo, hi, dtype):
    info = np.iinfo(dtype)
    if not info.min <= lo <= hi <= info.max:
        raise ValueError(f"output range [{lo}, {hi}] outside {np.dtype(dtype)}")


class _Window:
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

    def parallel(self, parallel):
        return self.work >= PARALLEL_MIN_WORK if parallel is None else parallel


class QMaxPool2d(_Window):
    """Prepared 8-bit MaxPool: ``QMaxPool2d(x_shape, kernel, pads, strides, dilations, out_hw)(x, out)``."""

    def __call__(self, x, out, parallel=None):
        if x.dtype != out.dtype:
            raise ValueError(f"MaxPool keeps the type: input {x.dtype}, output {out.dtype}")
        _check_io(x, out, self.x_shape, self.out_shape)
        xv, ov = np.ascontiguousarray(x).reshape(-1), out.reshape(-1)
        lowest = x.dtype.type(np.iinfo(x.dtype).min)
        h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr = (int(v) for v in self.g[:14])
        x3, o3 = xv.reshape(self.planes, h, w), ov.reshape(self.planes, oh, ow)
        if (kh, kw, sh, sw, dh, dw) == (2, 2, 2, 2, 1, 1) and not (pt or pl) and 2 * oh <= h and 2 * ow <= w:
            _max2x2s2(x3, o3)
        elif (kh, kw, sh, sw, dh, dw) == (3, 3, 2, 2, 1, 1):
            _max3x3s2(x3, o3, pt, pl, lowest)
        else:
            (_maxpool_parallel if self.parallel(parallel) else _maxpool)(xv, ov, self.g, self.planes, lowest)
        return out


class QGlobalAvgPool:
    """Prepared 8-bit GlobalAveragePool of (n, c, hw) planes (any NC... layout with the spatial dims last):
    ``QGlobalAvgPool(n, c, hw, x_scale, x_zp, y_scale, y_zp, lo, hi, mode)(x, out)``, out (n, c, 1, ...)."""

    def __init__(self, n, c, hw, x_scale, x_zp, y_scale, y_zp, lo, hi, mode):
        self.n, self.c, self.hw = int(n), int(c), int(hw)
        if min(self.n, self.c, self.hw) < 1:
            raise ValueError(f"n, c, hw must be positive, got {(n, c, hw)}")
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
                p = (-xz * self.hw, 0, 0, fscale, yz)
            else:  # TFLite optimized_integer_ops::Mean
                temp = np.float32(np.float32(np.float32(xz) * xs) / ys)
                temp = np.float32(temp + np.float32(0.5)) if temp > 0 else np.float32(temp - np.float32(0.5))
                m0, shift = quantize_multiplier(float(np.float32(xs / np.float32(np.float32(self.hw) * ys))))
                p = (0, m0, shift, np.float32(0), yz - int(np.trunc(temp)))
            self._prepared[key] = (byte_values(in_dtype), p)
        return self._prepared[key]

    def __call__(self, x, out, parallel=None):
        if x.size != self.n * self.c * self.hw or out.size != self.n * self.c:
            raise ValueError(f"input of {x.size} / output of {out.size} elements for {self.n}x{self.c} planes of "
                             f"{self.hw}")
        if tuple(x.shape[:2]) != (self.n, self.c) or tuple(out.shape[:2]) != (self.n, self.c):
            raise ValueError(f"input {tuple(x.shape)} / output {tuple(out.shape)} do not start with "
                             f"{(self.n, self.c)}")
        xv, ov = _check_io(x, out, x.shape, out.shape)
        vals, (bias, m0, shift, fscale, zp) = self._prepare(x.dtype, out.dtype)
        planes = self.n * self.c
        par = planes * self.hw >= PARALLEL_MIN_WORK if parallel is None else parallel
        (_gap_parallel if par else _gap)(xv, ov, planes, self.hw, vals, bias, m0, shift, fscale, zp, self.lo,
                                         self.hi, self.mode)
        return out


class QAvgPool2d(_Window):
    """Prepared 8-bit AveragePool: ``QAvgPool2d(x_shape, kernel, pads, strides, out_hw, count_include_pad,
    x_scale, x_zp, y_scale, y_zp, lo, hi, mode)(x, out)``."""

    def __init__(self, x_shape, kernel, pads, strides, out_hw, count_include_pad, x_scale, x_zp, y_scale, y_zp,
                 lo, hi, mode):
        super().__init__(x_shape, kernel, pads, strides, (1, 1), out_hw, bool(count_include_pad))
        self.params = (x_scale, x_zp, y_scale, y_zp)
        self.lo, self.hi, self.mode = int(lo), int(hi), _check_mode(mode)
        n, c, h, w = self.x_shape
        self.global_pool = None
        if self.mode == MODE_FLOAT and self.kernel == (h, w) and not any(self.pads):
            if self.out_shape[2:] != (1, 1):
                raise ValueError(f"a {h}x{w} kernel on a {h}x{w} image gives 1x1, not {self.out_shape[2:]}")
            self.global_pool = QGlobalAvgPool(n, c, h * w, x_scale, x_zp, y_scale, y_zp, lo, hi, mode)
        self._prepared = {}

    def _prepare(self, in_dtype, out_dtype):
        key = (np.dtype(in_dtype), np.dtype(out_dtype))
        if key not in self._prepared:
            xs, xz = check_qparams(self.params[0], self.params[1], in_dtype, "input")
            ys, yz = check_qparams(self.params[2], self.params[3], out_dtype, "output")
            _check_range(self.lo, self.hi, out_dtype)
            vals = byte_values(in_dtype)
            deq = xs * (vals - xz).astype(np.float32)
            if self.mode == MODE_FLOAT:
                otab = np.zeros(256, np.uint8)
            else:  # average byte -> requantized output byte, clamped to [lo, hi]
                t = requant_table(xs, xz, ys, yz, in_dtype, out_dtype, self.mode).astype(np.int64)
                otab = (np.clip(t, self.lo, self.hi) & 0xFF).astype(np.uint8)
            self._prepared[key] = (vals, deq, otab, ys, yz, xz)
        return self._prepared[key]

    def __call__(self, x, out, parallel=None):
        if self.global_pool is not None:
            _check_io(x, out, self.x_shape, self.out_shape)
            return self.global_pool(x, out, parallel)
        xv, ov = _check_io(x, out, self.x_shape, self.out_shape)
        vals, deq, otab, ys, yz, xz = self._prepare(x.dtype, out.dtype)
        (_avgpool_parallel if self.parallel(parallel) else _avgpool)(
            xv, ov, self.g, self.planes, self.mode, vals, deq, otab, ys, yz, self.lo, self.hi, xz)
        return out
