"""int8 on CUDA: QuantizeLinear, DequantizeLinear and QLinearConv, bit-exact with the CPU int8 path.

Requantization follows :mod:`edgedl.quant.requant` to the bit in its three modes: TFLite's double rounding
(``MultiplyByQuantizedMultiplier``: a saturating rounding doubling high multiply, then a rounding divide by a
power of two), its single rounding, and onnxruntime's float32 scale with round-half-to-even. Integer steps run
in int64; float steps in float32 as on the CPU. These are plain numba.cuda kernels (no ``__dp4a``) that run in
the simulator; on a GPU the GEMMs and the convolutions with symmetric weights take :mod:`.dp4a` instead.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32, int64

from .common import blocks, broadcast_offsets, flat, im2col_index, unravel_nchw

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


@cuda.jit(device=True)
def round_half_even(f):
    """float32 to the nearest integer (as float32), ties to even (numpy's rint)."""
    r = math.floor(f + float32(0.5))
    if r - f == float32(0.5) and r - float32(2) * math.floor(r / float32(2)) != float32(0):
        r -= float32(1)
    return r


@cuda.jit(device=True)
def _trunc_div(a, d):
    q = a // d
    if a < 0 and q * d != a:
        q += 1
    return q


@cuda.jit(device=True)
def _wrap32(x):
    x = x & int64(0xFFFFFFFF)
    if x >= int64(1 << 31):
        return x - int64(1 << 32)
    return x


@cuda.jit(device=True)
def mbqm_double(x, m0, shift):
    """TFLite's MultiplyByQuantizedMultiplier (double rounding) of an int64 holding an int32 value."""
    left = shift if shift > 0 else int64(0)
    right = -shift if shift < 0 else int64(0)
    a = _wrap32(x << left)
    if a == INT32_MIN and m0 == INT32_MIN:
        h = int64(INT32_MAX)
    else:
        ab = a * m0
        nudge = int64(1 << 30) if ab >= 0 else int64(1 - (1 << 30))
        h = _trunc_div(ab + nudge, int64(1 << 31))
    mask = (int64(1) << right) - 1
    rem = h & mask
    threshold = (mask >> 1) + (int64(1) if h < 0 else int64(0))
    return (h >> right) + (int64(1) if rem > threshold else int64(0))


@cuda.jit(device=True)
def mbqm_single(x, m0, shift):
    """TFLite's single-rounding MultiplyByQuantizedMultiplier: (x * m0 + 2^(t-1)) >> t, t = 31 - shift."""
    t = int64(31) - shift
    return (x * m0 + (int64(1) << (t - 1))) >> t


@cuda.jit(device=True)
def clamp(v, lo, hi):
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


@cuda.jit(device=True)
def requantize(acc, m0, shift, fscale, zp, lo, hi, mode):
    """One accumulator (int64) to the output integer (int64): see edgedl.quant.requant.requantize."""
    if mode == 2:
        f = float32(acc) * fscale
        flo = float32(lo - zp)
        fhi = float32(hi - zp)
        f = max(min(f, fhi), flo)
        v = int64(round_half_even(f)) + zp
    elif mode == 1:
        v = mbqm_single(acc, m0, shift) + zp
    else:
        v = mbqm_double(acc, m0, shift) + zp
    return clamp(v, lo, hi)


@cuda.jit(cache=True)
def _quantize(x, y, n, channels, inner, scale, zero, lo, hi, away):
    # x: [n] float32 -> y: [n] int8/uint8; scale / zero: [channels] (1 channel per tensor); away: ties away from 0
    i = cuda.grid(1)
    if i >= n:
        return
    c = (i // inner) % channels
    t = float32(x[i]) / scale[c]
    r = round_half_even(t)
    if away:
        tr = float32(math.floor(t)) if t >= float32(0) else -float32(math.floor(-t))
        if abs(t - tr) == float32(0.5):
            r = tr + (float32(1) if t > float32(0) else float32(-1))
    v = r + float32(zero[c])
    y[i] = int64(max(min(v, float32(hi)), float32(lo)))


@cuda.jit(cache=True)
def _dequantize(x, y, n, channels, inner, scale, zero):
    i = cuda.grid(1)
    if i < n:
        c = (i // inner) % channels
        y[i] = float32(int64(x[i]) - zero[c]) * scale[c]


@cuda.jit(cache=True)
def _qconv2d(x, w, bias, y, total, c, h, wd, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups, has_bias, xz, wz,
             m0, shift, fscale, zp, lo, hi, mode):
    # x: [N, C, H, W] 8-bit, w: [CO, C / groups, KH, KW] 8-bit, bias int32 [CO], y: [N, CO, OH, OW] 8-bit
    i = cuda.grid(1)
    if i >= total:
        return
    nb, o, oy, ox = unravel_nchw(i, co, oh, ow)
    cpg = c // groups
    g = o // (co // groups)
    wzo = wz[o]
    acc = int64(0)
    for ci in range(cpg):
        ch = g * cpg + ci
        xbase = (nb * c + ch) * h
        wbase = (o * cpg + ci) * kh
        for ky in range(kh):
            iy = oy * sh - ph + ky * dh
            if iy < 0 or iy >= h:
                continue
            for kx in range(kw):
                ix = ox * sw - pw + kx * dw
                if ix >= 0 and ix < wd:
                    acc += (int64(x[(xbase + iy) * wd + ix]) - xz) * (int64(w[(wbase + ky) * kw + kx]) - wzo)
    if has_bias:
        acc += int64(bias[o])
    y[i] = requantize(acc, m0[o], shift[o], fscale[o], zp, lo, hi, mode)


def _channels(scale, zero, shape, axis):
    scale = np.asarray(scale, np.float32).reshape(-1)
    zero = np.zeros(scale.size, np.int64) if zero is None else np.asarray(zero).astype(np.int64).reshape(-1)
    if axis is None:
        return scale[:1], zero[:1], 1, 1
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return scale, np.broadcast_to(zero, scale.shape).copy(), int(shape[axis]), inner


class Quantize:
    """float32 -> 8-bit, per tensor (``axis`` None) or per ``axis``, constant scale and zero point."""

    def __init__(self, shape, axis, scale, zero, qtype, away: bool = False):
        self.away = bool(away)
        s, z, self.channels, self.inner = _channels(scale, zero, shape, axis)
        self.scale, self.zero = cuda.to_device(s), cuda.to_device(z)
        info = np.iinfo(qtype)
        self.lo, self.hi = int(info.min), int(info.max)
        self.n = int(np.prod(shape, dtype=np.int64))

    def __call__(self, x, y, stream=0):
        if self.n:
            _quantize[blocks(self.n), 128, stream](flat(x), flat(y), self.n, self.channels, self.inner, self.scale,
                                                   self.zero, self.lo, self.hi, self.away)


class Dequantize:
    """8-bit -> float32: (x - zero) * scale."""

    def __init__(self, shape, axis, scale, zero):
        s, z, self.channels, self.inner = _channels(scale, zero, shape, axis)
        self.scale, self.zero = cuda.to_device(s), cuda.to_device(z)
        self.n = int(np.prod(shape, dtype=np.int64))

    def __call__(self, x, y, stream=0):
        if self.n:
            _dequantize[blocks(self.n), 128, stream](flat(x), flat(y), self.n, self.channels, self.inner,
                                                     self.scale, self.zero)


TILE = 16


@cuda.jit(cache=True)
def _qconv2d_gemm(x, w, bias, y, n_img, c, h, wd, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups, has_bias,
                  xz, wz, m0, shift, fscale, zp, lo, hi, mode):
    # the implicit GEMM of edgedl.kernels.cuda.conv, on zero-point-shifted 8-bit values with int64 sums
    sa = cuda.shared.array((TILE, TILE), int32)
    sb = cuda.shared.array((TILE, TILE), int32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    g = cuda.blockIdx.z
    cpg = c // groups
    opg = co // groups
    taps = kh * kw
    k_len = cpg * taps
    pixels = n_img * oh * ow
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    nb, _, oy, ox = unravel_nchw(col, 1, oh, ow)  # the pixel this thread gathers for the im2col tile
    acc = int64(0)
    for step in range((k_len + TILE - 1) // TILE):
        ka = step * TILE + tx
        if row < opg and ka < k_len:
            o = g * opg + row
            sa[ty, tx] = int32(int64(w[o * k_len + ka]) - wz[o])
        else:
            sa[ty, tx] = int32(0)
        kb = step * TILE + ty
        v = int32(0)  # padding reads as the zero point: 0 once shifted
        if kb < k_len and col < pixels:
            at = im2col_index(kb, nb, oy, ox, g, cpg, c, h, wd, taps, kw, sh, sw, ph, pw, dh, dw)
            if at >= 0:
                v = int32(int64(x[at]) - xz)
        sb[ty, tx] = v
        cuda.syncthreads()
        for j in range(TILE):
            acc += int64(sa[ty, j]) * int64(sb[j, tx])
        cuda.syncthreads()
    if row < opg and col < pixels:
        o = g * opg + row
        if has_bias:
            acc += int64(bias[o])
        y[((nb * co + o) * oh + oy) * ow + ox] = requantize(acc, m0[o], shift[o], fscale[o], zp, lo, hi, mode)


def upload_requant(target, req, channels: int) -> None:
    """Set ``target``'s ``m0``, ``shift``, ``fscale`` (device arrays of ``channels`` values, per-tensor parameters
    broadcast) and ``zp``, ``lo``, ``hi``, ``mode`` from a :class:`edgedl.quant.requant.Requant`."""
    target.m0 = cuda.to_device(np.ascontiguousarray(np.broadcast_to(req.m0, (channels,)), np.int64))
    target.shift = cuda.to_device(np.ascontiguousarray(np.broadcast_to(req.shift, (channels,)), np.int64))
    target.fscale = cuda.to_device(np.ascontiguousarray(np.broadcast_to(req.fscale, (channels,)), np.float32))
    target.zp, target.lo, target.hi, target.mode = int(req.zp), int(req.lo), int(req.hi), int(req.mode)


class QConv2d:
    """QLinearConv of fixed geometry with its requantization (:class:`edgedl.quant.requant.Requant`): the
    implicit GEMM, or the direct kernel for depthwise and small reductions (and in the simulator)."""

    def __init__(self, x_shape, w_shape, y_shape, strides, pads, dilations, groups, x_zp, w_zp, req,
                 tiled: bool | None = None):
        self.n, self.c, self.h, self.w = (int(v) for v in x_shape)
        self.co, _, self.kh, self.kw = (int(v) for v in w_shape)
        self.oh, self.ow = int(y_shape[2]), int(y_shape[3])
        (self.sh, self.sw), (self.dh, self.dw) = (int(v) for v in strides), (int(v) for v in dilations)
        self.ph, self.pw = int(pads[0]), int(pads[1])
        self.groups, self.xz = int(groups), int(x_zp)
        self.wz = cuda.to_device(np.ascontiguousarray(np.broadcast_to(np.asarray(w_zp, np.int64), (self.co,))))
        upload_requant(self, req, self.co)
        self.total = self.n * self.co * self.oh * self.ow
        reduction, per_group = (self.c // self.groups) * self.kh * self.kw, self.co // self.groups
        if tiled is None:
            from . import simulated

            tiled = reduction >= 8 and per_group >= 8 and not simulated()
        self.tiled = bool(tiled)
        self.grid = ((self.n * self.oh * self.ow + TILE - 1) // TILE, (per_group + TILE - 1) // TILE, self.groups)

    def __call__(self, x, w, bias, y, stream=0):
        yf = flat(y)
        if self.tiled:
            _qconv2d_gemm[self.grid, (TILE, TILE), stream](
                flat(x), flat(w), flat(bias) if bias is not None else self.m0, yf, self.n, self.c, self.h, self.w,
                self.co, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw,
                self.groups, bias is not None, self.xz, self.wz, self.m0, self.shift, self.fscale, self.zp, self.lo,
                self.hi, self.mode)
            return
        _qconv2d[blocks(self.total), 128, stream](
            flat(x), flat(w), flat(bias) if bias is not None else self.m0, yf, self.total, self.c, self.h, self.w,
            self.co, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw,
            self.groups, bias is not None, self.xz, self.wz, self.m0, self.shift, self.fscale, self.zp, self.lo,
            self.hi, self.mode)


@cuda.jit(cache=True)
def _qgemm_rows(a, b, bias, y, m, n, k, az, bz, has_bias, m0, shift, fscale, zp, lo, hi, mode):
    # a: [M, K] 8-bit, b: [N, K] 8-bit (B transposed), bias int32 [N], y: [M, N] 8-bit
    i = cuda.grid(1)
    if i >= m * n:
        return
    col = i % n
    row = i // n
    zb = bz[col]
    acc = int64(0)
    for t in range(k):
        acc += (int64(a[row * k + t]) - az) * (int64(b[col * k + t]) - zb)
    if has_bias:
        acc += int64(bias[col])
    y[i] = requantize(acc, m0[col], shift[col], fscale[col], zp, lo, hi, mode)


class QGemmRows:
    """Every row of A [M, K] against a constant B given as [N, K], per-column zero points and requantization
    (QLinearMatMul with a 2-D B, com.microsoft QGemm)."""

    def __init__(self, m, n, k, a_zp, b_zp, req):
        self.m, self.n, self.k, self.az = int(m), int(n), int(k), int(a_zp)
        self.bz = cuda.to_device(np.ascontiguousarray(np.broadcast_to(np.asarray(b_zp, np.int64), (self.n,))))
        upload_requant(self, req, self.n)

    def __call__(self, a, b_nk, bias, y, stream=0):
        total = self.m * self.n
        if total:
            _qgemm_rows[blocks(total), 128, stream](flat(a), flat(b_nk), flat(bias) if bias is not None else self.m0,
                                                    flat(y), self.m, self.n, self.k, self.az, self.bz,
                                                    bias is not None, self.m0, self.shift, self.fscale, self.zp,
                                                    self.lo, self.hi, self.mode)



@cuda.jit(cache=True)
def _qbinary(a, b, y, n, shape, sa, sb, rank, mul, mode, az, bz, yz, lo, hi, ints, floats):
    # y[i] = QLinearAdd / QLinearMul of a[ia], b[ib] (numpy broadcasting through element strides)
    # ints: add (m1, sh1, m2, sh2, mo, sho), mul (m0, sh); floats: add (rx, ry, fixed, swap), mul (ratio)
    i = cuda.grid(1)
    if i >= n:
        return
    ia, ib = broadcast_offsets(i, shape, sa, sb, rank)
    xa = int64(a[ia])
    xb = int64(b[ib])
    if mode == 2:
        if mul:
            f = float32((xa - az) * (xb - bz)) * floats[0] + float32(yz)
        elif floats[3] != float32(0):  # onnxruntime swaps the roles when A is constant along the last axis
            f = cuda.fma(float32(xb), floats[0], cuda.fma(float32(xa), floats[1], floats[2]))
        else:
            f = cuda.fma(float32(xa), floats[0], cuda.fma(float32(xb), floats[1], floats[2]))
        f = max(min(f, float32(1e9)), float32(-1e9))
        v = int64(round_half_even(f))
    elif mul:
        acc = (xa - az) * (xb - bz)
        v = (mbqm_single(acc, ints[0], ints[1]) if mode == 1 else mbqm_double(acc, ints[0], ints[1])) + yz
    else:
        x1 = (xa - az) * int64(1 << 20)
        x2 = (xb - bz) * int64(1 << 20)
        if mode == 1:
            total = mbqm_single(x1, ints[0], ints[1]) + mbqm_single(x2, ints[2], ints[3])
            v = mbqm_single(total, ints[4], ints[5]) + yz
        else:
            total = mbqm_double(x1, ints[0], ints[1]) + mbqm_double(x2, ints[2], ints[3])
            v = mbqm_double(total, ints[4], ints[5]) + yz
    y[i] = clamp(v, lo, hi)


class QBinary:
    """QLinearAdd / QLinearMul in every requantization mode (parameters as edgedl.quant.reference_ops
    computes them), with numpy broadcasting."""

    def __init__(self, kind, a_shape, b_shape, out_shape, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, lo, hi,
                 mode):
        from ...quant import reference as ref
        from ...quant import reference_ops as R
        from ...quant.fixed_point import quantize_multiplier
        from .common import upload
        from .elementwise import broadcast_strides

        f32 = np.float32
        out_shape = tuple(out_shape) or (1,)
        self.n, self.rank = int(np.prod(out_shape, dtype=np.int64)), len(out_shape)
        self.shape = upload(out_shape)
        self.sa, self.sb = upload(broadcast_strides(a_shape, out_shape)), upload(broadcast_strides(b_shape, out_shape))
        self.mul = kind == "mul"
        self.mode, self.az, self.bz, self.yz, self.lo, self.hi = int(mode), int(a_zp), int(b_zp), int(y_zp), int(lo), \
            int(hi)
        ints, floats = [0], [f32(0)]
        if self.mul:
            ratio = f32(f32(f32(a_scale) * f32(b_scale)) / f32(y_scale))
            ints, floats = list(quantize_multiplier(float(ratio))), [ratio]
        else:
            ints = list(ref.add_params(float(f32(a_scale)), float(f32(b_scale)), float(f32(y_scale))))
            axes = [d for d, k in enumerate(out_shape) if k > 1]
            a_full = (1,) * (len(out_shape) - len(a_shape)) + tuple(a_shape)
            swap = not axes or a_full[axes[-1]] == 1
            ra, rb = f32(f32(a_scale) / f32(y_scale)), f32(f32(b_scale) / f32(y_scale))
            (rx, zx), (ry, zy) = ((rb, b_zp), (ra, a_zp)) if swap else ((ra, a_zp), (rb, b_zp))
            fixed = f32(f32(y_zp) - R.fma_f32(rx, f32(zx), f32(ry * f32(zy))))
            floats = [rx, ry, fixed, f32(1.0 if swap else 0.0)]
        self.ints = upload(ints, np.int64)
        self.floats = upload(floats, np.float32)

    def __call__(self, a, b, y, stream=0):
        if self.n:
            _qbinary[blocks(self.n), 128, stream](flat(a), flat(b), flat(y), self.n, self.shape, self.sa, self.sb,
                                                  self.rank, self.mul, self.mode, self.az, self.bz, self.yz, self.lo,
                                                  self.hi, self.ints, self.floats)


@cuda.jit(cache=True)
def _qglobal_average(x, y, rows, hw, zero_sum, mode, fscale, m0, shift, offset, yz, lo, hi, sub):
    # x: [rows, hw] 8-bit -> y: [rows] 8-bit (QLinearGlobalAveragePool, NCHW)
    r = cuda.grid(1)
    if r >= rows:
        return
    acc = int64(0)
    for j in range(hw):
        acc += int64(x[r * hw + j])
    if mode == 2:
        f = float32(acc - zero_sum) * fscale
        f = max(min(f, float32(hi - yz)), float32(lo - yz))
        v = int64(round_half_even(f)) + yz
    elif mode == 1:
        v = mbqm_single(acc - sub, m0, shift) + offset
    else:
        v = mbqm_double(acc - sub, m0, shift) + offset
    y[r] = clamp(v, lo, hi)


class QGlobalAverage:
    """QLinearGlobalAveragePool (NCHW) with the arithmetic of edgedl.quant.reference_ops in each mode."""

    def __init__(self, n, c, hw, x_scale, x_zp, y_scale, y_zp, lo, hi, mode, reference_mean: bool = False):
        from ...quant.fixed_point import quantize_multiplier, tflite_mean_multiplier

        f32 = np.float32
        self.rows, self.hw, self.mode = int(n) * int(c), int(hw), int(mode)
        self.zero_sum = int(x_zp) * self.hw
        self.fscale = f32(f32(x_scale) / f32(f32(y_scale) * f32(self.hw)))
        temp = f32(f32(f32(x_zp) * f32(x_scale)) / f32(y_scale))
        temp = f32(temp + f32(0.5)) if temp > 0 else f32(temp - f32(0.5))
        self.offset = int(y_zp) - int(np.trunc(temp))
        self.m0, self.shift = quantize_multiplier(float(f32(f32(x_scale) / f32(f32(self.hw) * f32(y_scale)))))
        self.yz, self.lo, self.hi = int(y_zp), int(lo), int(hi)
        self.sub = 0
        if reference_mean:  # TFLite's reference MEAN: the sum of x - zp, the count in the multiplier
            self.m0, self.shift = tflite_mean_multiplier(x_scale, y_scale, self.hw)
            self.sub, self.offset = self.zero_sum, self.yz

    def __call__(self, x, y, stream=0):
        if self.rows:
            _qglobal_average[blocks(self.rows), 128, stream](flat(x), flat(y), self.rows, self.hw, self.zero_sum,
                                                             self.mode, self.fscale, int(self.m0), int(self.shift),
                                                             self.offset, self.yz, self.lo, self.hi, self.sub)
