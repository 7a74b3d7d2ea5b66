"""int8 convolution (NCHW, groups) on the int8 GEMM: per image and group, out_g (M/g x OH*OW) =
requantize(W_g (M/g x C/g*kH*kW) @ (im2col(x)_g - x_zp) + bias).

The im2col matrix is built per call with the input zero point at padded taps (they contribute nothing, as
TFLite skips them). Bit-exact with :func:`edgedl.quant.reference.conv2d` (tested). First version: im2col
is materialized (int8, K x OH*OW per group) rather than packed on the fly as the fp32 GEMM does.
"""
from __future__ import annotations

import numba
import numpy as np

from .config import NJIT
from .gemm_i8 import QGemm

__all__ = ["QConv2d"]


@numba.njit(**NJIT)
def _im2col_i8(x, c0, cg, h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, zp, col):
    # x: (C, H, W) int8 of one image; col: (cg*kh*kw, oh*ow) int8 for channels c0..c0+cg
    z = np.int8(zp)
    for ci in range(cg):
        for i in range(kh):
            for j in range(kw):
                row = (ci * kh + i) * kw + j
                for oy in range(oh):
                    y = oy * sh - pt + i * dh
                    base = oy * ow
                    if y < 0 or y >= h:
                        for ox in range(ow):
                            col[row, base + ox] = z
                        continue
                    for ox in range(ow):
                        xx = ox * sw - pl + j * dw
                        col[row, base + ox] = x[c0 + ci, y, xx] if 0 <= xx < w else z


class QConv2d:
    """Prepared int8 2-D convolution: weight (M, C/group, kH, kW) int8, bias (M,) int32 or None, (m0, shift)
    per output channel, zero points, activation bounds; ``__call__(x, out)`` with x (N, C, H, W) int8 and
    out (N, M, OH, OW) int8."""

    def __init__(self, weight, bias, m0, shift, in_shape, x_zp: int, y_zp: int, strides=(1, 1),
                 pads=(0, 0, 0, 0), dilations=(1, 1), group: int = 1, act_min: int = -128, act_max: int = 127,
                 single_rounding: bool = False):
        weight = np.asarray(weight)
        n, c, h, w = (int(v) for v in in_shape)
        m, cg, kh, kw = weight.shape
        if weight.dtype != np.int8 or c != cg * group or m % group:
            raise ValueError(f"weight {weight.dtype}{weight.shape} does not fit input {in_shape} with group {group}")
        sh, sw = strides
        dh, dw = dilations
        pt, pl, pb, pr = pads
        oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
        ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"empty output {oh}x{ow}")
        self.in_shape, self.out_shape = (n, c, h, w), (n, m, oh, ow)
        self.group, self.mg, self.cg = group, m // group, cg
        self.geo = (h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
        self.x_zp = int(x_zp)
        bias = np.zeros(m, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(-1)
        m0 = np.broadcast_to(np.asarray(m0, np.int64), (m,))
        shift = np.broadcast_to(np.asarray(shift, np.int64), (m,))
        w2 = weight.reshape(m, cg * kh * kw)
        self.gemms = [QGemm(w2[g * self.mg:(g + 1) * self.mg], bias[g * self.mg:(g + 1) * self.mg],
                            m0[g * self.mg:(g + 1) * self.mg], shift[g * self.mg:(g + 1) * self.mg], x_zp, y_zp,
                            act_min, act_max, single_rounding) for g in range(group)]

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if x.shape != self.in_shape or out.shape != self.out_shape or x.dtype != np.int8 or out.dtype != np.int8:
            raise ValueError(f"expected int8 {self.in_shape} -> {self.out_shape}, got {x.dtype}{x.shape} -> "
                             f"{out.dtype}{out.shape}")
        h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow = self.geo
        col = np.empty((self.cg * kh * kw, oh * ow), np.int8)
        for b in range(x.shape[0]):
            for g in range(self.group):
                _im2col_i8(x[b], g * self.cg, self.cg, h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, self.x_zp, col)
                self.gemms[g](col, out[b, g * self.mg:(g + 1) * self.mg].reshape(self.mg, oh * ow))
        return out
