"""8-bit transposed convolution (NCHW, groups): per image and group, the int8 GEMM computes the int32
columns ``cols[(co, i, j), p] = sum_ci (w[ci, co, i, j] - w_zp[co]) * (x[ci, p] - x_zp)`` for every input
pixel p (:class:`~edgedl.kernels.cpu.gemm_i8.QGemm` in raw mode), then :func:`_col2im_requant` scatters
them onto the output (``oy = iy*sh - pt + i*dh``), adds the bias and requantizes per output channel.
"""
from __future__ import annotations

import numba
import numpy as np

from ...quant.requant import Requant, requantize
from .config import NJIT_EXACT
from .gemm_i8 import QGemm

__all__ = ["QConvTranspose2d"]


@numba.njit(**NJIT_EXACT)
def _col2im_requant(cols, acc, co0, cog, geo, bias, m0, shift, fscale, zp, lo, hi, mode, out):
    # cols: (cog*kh*kw, h*w) int32 of one group; acc: (cog, oh*ow) int64 workspace; out: (M, oh, ow) 8-bit
    # geo = (h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
    h, w, kh, kw = geo[0], geo[1], geo[2], geo[3]
    sh, sw, dh, dw, pt, pl, oh, ow = geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo[10], geo[11]
    acc[:] = 0
    for c in range(cog):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                for iy in range(h):
                    oy = iy * sh - pt + i * dh
                    if oy < 0 or oy >= oh:
                        continue
                    for ix in range(w):
                        ox = ix * sw - pl + j * dw
                        if 0 <= ox < ow:
                            acc[c, oy * ow + ox] += row[iy * w + ix]
    for c in range(cog):
        co = co0 + c
        b = np.int64(bias[co])
        o = out[co].reshape(-1)
        for p in range(oh * ow):
            o[p] = requantize(acc[c, p] + b, m0[co], shift[co], fscale[co], zp, lo, hi, mode)


@numba.njit(**NJIT_EXACT)
def _shuffle_taps(cols, out, cog, kh, kw, h, w):
    # cols: (cog*kh*kw, h*w) 8-bit, tap (c, i, j) of every input pixel; out: (cog, h*kh, w*kw) of the same type.
    # Windows that tile the output (kernel == stride, no padding or dilation): out[c, iy*kh + i, ix*kw + j] =
    # cols[(c*kh + i)*kw + j, iy*w + ix]
    ow = w * kw
    for c in range(cog):
        for iy in range(h):
            for i in range(kh):
                orow = out[c, iy * kh + i]
                for j in range(kw):
                    src = cols[(c * kh + i) * kw + j, iy * w:(iy + 1) * w]
                    dst = orow[j:ow:kw]
                    for ix in range(w):
                        dst[ix] = src[ix]


class QConvTranspose2d:
    """Prepared 8-bit 2-D transposed convolution: weight (C, M/group, kH, kW) int8/uint8 with zero point
    ``w_zp`` (scalar or per output channel), bias (M,) int32 or None, ``req`` a Requant of M channels,
    pads (top, left, bottom, right) and the output size (oh, ow) already resolved by the op's shape rule.
    ``__call__(x, out)``: x (N, C, H, W) 8-bit, out (N, M, OH, OW)."""

    def __init__(self, weight, bias, req: Requant, in_shape, x_zp: int, strides, pads, dilations, out_hw, group=1,
                 w_zp=0):
        weight = np.asarray(weight)
        n, c, h, w = (int(v) for v in in_shape)
        cin, cog, kh, kw = weight.shape
        if weight.dtype not in (np.int8, np.uint8) or cin != c or c % group:
            raise ValueError(f"weight {weight.dtype}{weight.shape} does not fit input {in_shape}, group {group}")
        m = cog * group
        oh, ow = (int(v) for v in out_hw)
        self.in_shape, self.out_shape = (n, c, h, w), (n, m, oh, ow)
        self.group, self.cg, self.cog = group, c // group, cog
        self.geo = np.array([h, w, kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1],
                             oh, ow], np.int64)
        self.req = req
        self.bias = np.zeros(m, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(-1)
        w_zp = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (m,))
        # windows that tile the output (kernel == stride, no padding or dilation, no output padding): every
        # output pixel is one tap of one input pixel, so the GEMM requantizes its rows itself (the bias and
        # parameters of channel c on its kh*kw rows) and the bytes are only moved into place; otherwise the
        # int32 columns are scattered, summed and requantized (:func:`_col2im_requant`). ppocr_v4_det's 2x2
        # stride-2 upsampling to 24 x 160 x 160 (Zen 3, 1 thread)
        self.tiled = (kh == strides[0] and kw == strides[1] and dilations[0] == 1 and dilations[1] == 1
                      and pads[0] == 0 and pads[1] == 0 and oh == h * kh and ow == w * kw)
        self.gemms = []
        for g in range(group):
            wg = weight[g * self.cg:(g + 1) * self.cg]                      # (cg, cog, kh, kw)
            wt = np.ascontiguousarray(wg.transpose(1, 2, 3, 0).reshape(cog * kh * kw, self.cg))
            zps = np.repeat(w_zp[g * cog:(g + 1) * cog], kh * kw)
            if self.tiled:
                taps = kh * kw
                rows = slice(g * cog, (g + 1) * cog)
                req_g = Requant(np.repeat(req.m0[rows], taps), np.repeat(req.shift[rows], taps),
                                np.repeat(req.fscale[rows], taps), req.zp, req.lo, req.hi, req.mode)
                self.gemms.append(QGemm(wt, np.repeat(self.bias[rows], taps), req_g, x_zp, zps))
            else:
                self.gemms.append(QGemm(wt, None, None, x_zp, zps))
        self.cols = None if self.tiled else np.empty((cog * kh * kw, h * w), np.int32)
        self.cols8 = None
        self.acc = None if self.tiled else np.empty((cog, oh * ow), np.int64)

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if x.shape != self.in_shape or out.shape != self.out_shape or x.dtype not in (np.int8, np.uint8):
            raise ValueError(f"expected 8-bit {self.in_shape} -> {self.out_shape}, got {x.dtype}{x.shape} -> "
                             f"{out.dtype}{out.shape}")
        n, c, h, w = self.in_shape
        r = self.req
        if self.tiled:
            kh, kw = int(self.geo[2]), int(self.geo[3])
            if self.cols8 is None or self.cols8.dtype != out.dtype:
                self.cols8 = np.empty((self.cog * kh * kw, h * w), out.dtype)  # requantized taps
            cols = self.cols8
            for b in range(n):
                for g in range(self.group):
                    xg = x[b, g * self.cg:(g + 1) * self.cg].reshape(self.cg, h * w)
                    self.gemms[g](xg, cols)
                    _shuffle_taps(cols, out[b, g * self.cog:(g + 1) * self.cog], self.cog, kh, kw, h, w)
            return out
        for b in range(n):
            for g in range(self.group):
                xg = x[b, g * self.cg:(g + 1) * self.cg].reshape(self.cg, h * w)
                self.gemms[g](xg, self.cols)
                _col2im_requant(self.cols, self.acc, g * self.cog, self.cog, self.geo, self.bias, r.m0, r.shift,
                                r.fscale, r.zp, r.lo, r.hi, r.mode, out[b])
        return out
