"""8-bit convolution (NCHW, groups) on the int8 GEMM: per image and group, out_g (M/g x OH*OW) =
requantize((W_g - w_zp) (M/g x C/g*kH*kW) @ (im2col(x)_g - x_zp) + bias).

im2col is never materialized: the GEMM packs each panel of output pixels straight from the image
(:mod:`edgedl.kernels.cpu.gemm_i8`): padding taps contribute 0, as TFLite skips them and as padding with the
zero point does. Stride-1 convolutions whose output rows are as wide as the input ("same" padding) read
consecutive input pixels for consecutive output pixels: one vector load per im2col row of a panel; other
geometries gather row segments. 1x1 stride-1 unpadded convolutions read the image as a (C, H*W) matrix.
Bit-exact with :func:`edgedl.quant.reference.conv2d` (tested, every GEMM kernel).
"""
from __future__ import annotations

import numpy as np

from ...quant.requant import Requant
from .gemm_i8 import QGemm, conv_geometry

__all__ = ["QConv2d"]


class QConv2d:
    """Prepared 8-bit 2-D convolution.

    ``QConv2d(weight, bias, req, in_shape, x_zp, strides, pads, dilations, group, w_zp=0)``: weight
    (M, C/group, kH, kW) int8 or uint8 with zero point ``w_zp`` (scalar or per output channel), bias (M,)
    int32 or None, ``req`` a :class:`~edgedl.quant.requant.Requant` of M channels (None: raw int32
    output, ConvInteger), pads (top, left, bottom, right). ``__call__(x, out)``: x (N, C, H, W) 8-bit,
    out (N, M, OH, OW) of the output type."""

    def __init__(self, weight, bias, req: Requant | None, in_shape, x_zp: int, strides=(1, 1), pads=(0, 0, 0, 0),
                 dilations=(1, 1), group: int = 1, w_zp=0):
        weight = np.asarray(weight)
        n, c, h, w = (int(v) for v in in_shape)
        m, cg, kh, kw = weight.shape
        if weight.dtype not in (np.int8, np.uint8) or c != cg * group or m % group:
            raise ValueError(f"weight {weight.dtype}{weight.shape} does not fit input {in_shape} with group {group}")
        self.geos = [conv_geometry(h, w, kh, kw, strides, dilations, pads, g * cg, cg) for g in range(group)]
        oh, ow = int(self.geos[0][10]), int(self.geos[0][11])
        if oh < 1 or ow < 1:
            raise ValueError(f"empty output {oh}x{ow}")
        self.in_shape, self.out_shape = (n, c, h, w), (n, m, oh, ow)
        self.group, self.mg, self.cg = group, m // group, cg
        self.matrix = (kh == kw == 1 and tuple(strides) == (1, 1) and not any(pads) and group == 1)
        bias = np.zeros(m, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(-1)
        w_zp = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (m,))
        w2 = weight.reshape(m, cg * kh * kw)
        mg = self.mg
        self.gemms = [QGemm(w2[g * mg:(g + 1) * mg], bias[g * mg:(g + 1) * mg],
                            None if req is None else req.channel(g * mg, (g + 1) * mg), x_zp,
                            w_zp[g * mg:(g + 1) * mg]) for g in range(group)]

    def _calls(self, x: np.ndarray, out: np.ndarray, threads: int | None) -> list:
        if x.shape != self.in_shape or out.shape != self.out_shape or x.dtype not in (np.int8, np.uint8):
            raise ValueError(f"expected 8-bit {self.in_shape} -> {self.out_shape}, got {x.dtype}{x.shape} -> "
                             f"{out.dtype}{out.shape}")
        n, c, h, w = self.in_shape
        _, m, oh, ow = self.out_shape
        calls = []
        for b in range(n):
            if self.matrix:
                calls.append(self.gemms[0].bind(x[b].reshape(c, h * w), out[b].reshape(m, oh * ow), threads))
                continue
            for g in range(self.group):
                calls.append(self.gemms[g].bind(x[b], out[b, g * self.mg:(g + 1) * self.mg].reshape(self.mg, oh * ow),
                                                threads, "image", self.geos[g]))
        return calls

    def __call__(self, x: np.ndarray, out: np.ndarray, threads: int | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x)
        for call in self._calls(x, out, threads):
            call()
        return out

    def bind(self, x: np.ndarray, out: np.ndarray, scratch=None, threads: int | None = None):
        """A no-argument callable computing ``self(x, out)`` with every argument prepared now (x and out
        must stay the same contiguous arrays; ``scratch`` is unused: the GEMM allocates its panels)."""
        calls = self._calls(x, out, threads)
        if len(calls) == 1:
            return calls[0]

        def run():
            for call in calls:
                call()

        return run
