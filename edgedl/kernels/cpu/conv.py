"""fp32 2-D convolution (NCHW) and transposed convolution, prepared once per (weight, input shape).

:class:`Conv2d` picks a strategy at construction:

* ``"depthwise"`` (group == C_in, one input channel per group, any channel multiplier; but a single input
  channel into several outputs with a kernel the row kernels below do not cover goes to the GEMM): for output rows
  narrower than 4 vectors or strided, multiplier 1, the channel-interleaved kernel of :mod:`.depthwise_ci`;
  otherwise a direct kernel, one output plane at a time (parallel over images x channels): the input
  plane is copied into a zero-padded buffer, then each output row is computed in one pass over its columns with all taps
  fused (LLVM-IR row kernels for 3x3 and 5x5 with column stride 1 or 2; vectorized Numba loops, one
  pass per tap, otherwise);
* ``"gemm"``: per image and group, ``out[g] (C_out/g x OH*OW) = W_g (C_out/g x C_in/g*kH*kW) @
  im2col(x)[g]``. The weights are packed once here; im2col is never materialized: the GEMM driver packs
  each B panel straight from ``x`` (zero padding included; a 1x1 stride-1 unpadded convolution reads x
  as a plain matrix). Bias and activation run in the GEMM epilogue.

:class:`ConvTranspose2d`: ``col[g] (C_out/g*kH*kW x H*W) = W_g^T @ x[g]`` by the same GEMM, then a
col2im scatter-add that is parallel over output channels (each thread owns whole output planes), with
bias and activation fused.

Both take ``__call__(x, out, scratch=None)``: ``x`` and ``out`` C-contiguous float32 arrays of
``in_shape`` / ``out_shape``; ``scratch`` a uint8 (or any) buffer of at least ``scratch_bytes`` bytes.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from ..aligned import aligned_zeros
from . import config as _config
from .act import ACT_NONE, SIMPLE_ACTS, act_code, act_ref
from .act_vec import act_run
from .config import NJIT, NJIT_PARALLEL, num_threads
from .conv_direct import MAX_CIN as DIRECT_MAX_CIN
from .conv_direct import MULTI_CHANNEL_DIRECT, DirectConv, pad_plane
from .conv_flat import FLAT_PARALLEL_MIN_C, FLAT_PARALLEL_MIN_WORK, FlatConv, prefer_flat
from .conv_pixels import PixelConv, prefer_pixels
from .depthwise_ci import DepthwiseInterleaved, prefer_interleaved
from .gemm import (
    BIAS_NONE,
    BIAS_ROW,
    GemmCall,
    _gemv_args,
    conv_geometry,
    conv_ktab,
    matrix_geometry,
    matrix_ktab,
    pack_a,
    packed_a_size,
)
from .vec import (
    VW,
    copy_floats,
    dw_row_3_1,
    dw_row_3_2,
    dw_row_5_1,
    dw_row_5_2,
    dw_rows2_3_1,
    dw_rows2_3_2,
    dw_rows2_5_1,
    dw_rows2_5_2,
    dw_rows4_3_1,
)

__all__ = ["Conv2d", "ConvTranspose2d", "conv_out_size", "conv_transpose_out_size", "conv2d_ref",
           "conv_transpose2d_ref"]


def _pair(v, name, default):
    if v is None:
        return default
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must have 2 values, got {v}")
    return v


def _pads4(p):
    if p is None:
        return (0, 0, 0, 0)
    p = tuple(int(a) for a in p)
    if len(p) != 4:
        raise ValueError(f"pads must be (top, left, bottom, right), got {p}")
    if min(p) < 0:
        raise ValueError(f"negative pads are not supported: {p}")
    return p


def conv_out_size(size: int, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int) -> int:
    return (size + pad_begin + pad_end - ((k - 1) * dilation + 1)) // stride + 1


def conv_transpose_out_size(size: int, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
                            output_padding: int) -> int:
    return stride * (size - 1) + output_padding + (k - 1) * dilation + 1 - pad_begin - pad_end


def _as_scratch_f32(scratch, nfloat: int) -> np.ndarray:
    if nfloat <= 0:
        return np.zeros(1, dtype=np.float32)
    if scratch is not None:
        raw = scratch.reshape(-1).view(np.uint8)
        if raw.nbytes >= 4 * nfloat:
            addr = raw.ctypes.data
            skip = (-addr) % 4
            if raw.nbytes - skip >= 4 * nfloat:
                return raw[skip: skip + 4 * nfloat].view(np.float32)
    return np.empty(nfloat, dtype=np.float32)


def _scratch_bytes(scratch, nbytes: int) -> np.ndarray:
    """The caller's uint8 workspace, or a new one when there is none."""
    return scratch if scratch is not None else np.empty(nbytes, np.uint8)


def _flat(a: np.ndarray, shape, what: str) -> np.ndarray:
    if a.shape != tuple(shape):
        raise ValueError(f"{what} has shape {a.shape}, expected {tuple(shape)}")
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous float32 array")
    return a.reshape(-1)


# ---------------------------------------------------------------------------------------------------
# depthwise
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT)
def _dw_plane_wide(w, woff, bval, out, ooff, kh_n, kw_n, dh, dw, oh_n, ow_n, wp, pbuf, wide):
    """Generic stride-1 depthwise plane computed 'wide': wide[oy*wp + ox] for every ox < wp (the last
    columns are junk) is one long vectorized loop per tap, then the valid columns are copied to out."""
    nq = oh_n * wp
    for q in range(nq):
        wide[q] = bval
    for i in range(kh_n):
        for j in range(kw_n):
            wv = w[woff + i * kw_n + j]
            p = pbuf[i * dh * wp + j * dw:]
            for q in range(nq):
                wide[q] += wv * p[q]
    for oy in range(oh_n):
        copy_floats(out, ooff + oy * ow_n, wide, oy * wp, ow_n)


@numba.njit(inline="always", **NJIT)
def _dw_plane_rows(w, woff, bval, out, ooff, kh_n, kw_n, sh, sw, dh, dw, oh_n, ow_n, wp, pbuf):
    """Generic strided depthwise plane, row by row (views indexed by the loop variable only, so the
    loops carry no negative-index wraparound)."""
    for oy in range(oh_n):
        ob = ooff + oy * ow_n
        o = out[ob:ob + ow_n]
        rb = oy * sh * wp
        for ox in range(ow_n):
            o[ox] = bval
        for i in range(kh_n):
            for j in range(kw_n):
                wv = w[woff + i * kw_n + j]
                p = pbuf[rb + i * dh * wp + j * dw:]
                for ox in range(ow_n):
                    o[ox] += wv * p[ox * sw]


@numba.njit(inline="always", **NJIT)
def _dw_range(lo, hi, x, w, bias, out, c_in, c_out, mult, h, wd, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n,
              ow_n, hp, wp, act, alpha, beta, pbuf, wide):
    has_bias = bias.size > 0
    # 3x3 and 5x5 with column stride 1 or 2: LLVM-IR row kernels (vec.dw_row_K_S)
    fast = (kh_n == kw_n) and (kh_n == 3 or kh_n == 5) and (sw == 1 or sw == 2)
    rstride = dh * wp
    ow_round = (ow_n + VW - 1) // VW * VW
    plane = oh_n * ow_n
    if hi <= lo:
        return
    n = lo // c_out
    oc = lo - n * c_out
    for p in range(lo, hi):
        ic = oc if mult == 1 else oc // mult
        bval = bias[oc] if has_bias else np.float32(0.0)
        woff = oc * kh_n * kw_n
        ooff = p * plane
        # the plane into the padded buffer (its border stays zero from the buffer's allocation)
        pad_plane(x, (n * c_in + ic) * h * wd, h, wd, pt, pl, hp, wp, pbuf, 0, False)
        if fast:
            oy0 = 0
            if sh == 1 and dh == 1:
                # several output rows per call: they share input rows (fewer loads, independent chains)
                if kh_n == 3 and sw == 1:
                    while oy0 + 4 <= oh_n:
                        dw_rows4_3_1(ow_n, out, ooff + oy0 * ow_n, ow_n, pbuf, oy0 * wp, wp, dw, w, woff, bval)
                        oy0 += 4
                while oy0 + 2 <= oh_n:
                    o0 = ooff + oy0 * ow_n
                    if kh_n == 3:
                        if sw == 1:
                            dw_rows2_3_1(ow_n, out, o0, ow_n, pbuf, oy0 * wp, wp, dw, w, woff, bval)
                        else:
                            dw_rows2_3_2(ow_n, out, o0, ow_n, pbuf, oy0 * wp, wp, dw, w, woff, bval)
                    else:
                        if sw == 1:
                            dw_rows2_5_1(ow_n, out, o0, ow_n, pbuf, oy0 * wp, wp, dw, w, woff, bval)
                        else:
                            dw_rows2_5_2(ow_n, out, o0, ow_n, pbuf, oy0 * wp, wp, dw, w, woff, bval)
                    oy0 += 2
            for oy in range(oy0, oh_n):
                o0 = ooff + oy * ow_n
                p0 = oy * sh * wp
                # a row may spill whole vectors into the next rows of this plane (computed later, so
                # overwritten): only the plane's last rows need the masked tail
                nr = ow_round if (oy * ow_n + ow_round <= plane) else ow_n
                if kh_n == 3:
                    if sw == 1:
                        dw_row_3_1(nr, out, o0, 0, pbuf, p0, rstride, dw, w, woff, bval)
                    else:
                        dw_row_3_2(nr, out, o0, 0, pbuf, p0, rstride, dw, w, woff, bval)
                else:
                    if sw == 1:
                        dw_row_5_1(nr, out, o0, 0, pbuf, p0, rstride, dw, w, woff, bval)
                    else:
                        dw_row_5_2(nr, out, o0, 0, pbuf, p0, rstride, dw, w, woff, bval)
        elif sh == 1 and sw == 1:
            _dw_plane_wide(w, woff, bval, out, ooff, kh_n, kw_n, dh, dw, oh_n, ow_n, wp, pbuf, wide)
        else:
            _dw_plane_rows(w, woff, bval, out, ooff, kh_n, kw_n, sh, sw, dh, dw, oh_n, ow_n, wp, pbuf)
        if act != ACT_NONE:
            act_run(out, ooff, ooff + plane, act, alpha, beta)
        oc += 1
        if oc == c_out:
            oc = 0
            n += 1


def dw_buffer_sizes(hp: int, wp: int, kw_n: int, dw: int, oh_n: int) -> tuple[int, int]:
    """Floats of the padded-plane buffer and of the wide-row buffer one depthwise worker needs."""
    # slack past the last row: the row kernels read up to 2*(2*VW - 1) floats beyond their last tap
    return hp * wp + (kw_n - 1) * dw + 6 * VW + 64, oh_n * wp + 16


@numba.njit(inline="always", **NJIT)
def _dw_buffers(work, slot, psize, wsize):
    # work: (slots*(psize+wsize),) float32 workspace; the padded plane must start all zero (its border is
    # never written), the wide buffer is fully written before it is read
    base = slot * (psize + wsize)
    pbuf = work[base:base + psize]
    pbuf[:] = 0.0
    wide = work[base + psize:base + psize + wsize]
    return pbuf, wide


@numba.njit(**NJIT)
def _dw_serial(work, psize, wsize, x, w, bias, out, nb, c_in, c_out, h, wd, kh_n, kw_n, sh, sw, dh, dw, pt,
               pl, oh_n, ow_n, hp, wp, act, alpha, beta):
    pbuf, wide = _dw_buffers(work, 0, psize, wsize)
    _dw_range(0, nb * c_out, x, w, bias, out, c_in, c_out, c_out // c_in, h, wd, kh_n, kw_n, sh, sw, dh,
              dw, pt, pl, oh_n, ow_n, hp, wp, act, alpha, beta, pbuf, wide)


@numba.njit(**NJIT_PARALLEL)
def _dw_parallel(nslots, work, psize, wsize, x, w, bias, out, nb, c_in, c_out, h, wd, kh_n, kw_n, sh, sw, dh,
                 dw, pt, pl, oh_n, ow_n, hp, wp, act, alpha, beta):
    total = nb * c_out
    for s in prange(nslots):
        pbuf, wide = _dw_buffers(work, s, psize, wsize)
        _dw_range(s * total // nslots, (s + 1) * total // nslots, x, w, bias, out, c_in, c_out,
                  c_out // c_in, h, wd, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n, ow_n, hp, wp, act, alpha,
                  beta, pbuf, wide)


# ---------------------------------------------------------------------------------------------------
# col2im (ConvTranspose)
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT)
def _col2im_plane(col, coff, out, ooff, bval, h, wd, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n, ow_n, act,
                  alpha, beta):
    """out[ooff:] (oh_n x ow_n) = act(bval + scatter of the kh_n*kw_n rows (h*wd each) of col[coff:])."""
    hw = h * wd
    for q in range(oh_n * ow_n):
        out[ooff + q] = bval
    for i in range(kh_n):
        for j in range(kw_n):
            rbase = coff + (i * kw_n + j) * hw
            xo = j * dw - pl
            # input columns ix with 0 <= ix*sw + xo < ow_n
            ix0 = 0 if xo >= 0 else (-xo + sw - 1) // sw
            lim = ow_n - xo  # ix*sw < lim
            ix1 = 0 if lim <= 0 else min(wd, (lim + sw - 1) // sw)
            if ix1 <= ix0:
                continue
            for iy in range(h):
                oy = iy * sh + i * dh - pt
                if oy < 0 or oy >= oh_n:
                    continue
                ob = ooff + oy * ow_n + xo
                cb = rbase + iy * wd
                if sw == 1:
                    for ix in range(ix0, ix1):
                        out[ob + ix] += col[cb + ix]
                else:
                    for ix in range(ix0, ix1):
                        out[ob + ix * sw] += col[cb + ix]
    act_run(out, ooff, ooff + oh_n * ow_n, act, alpha, beta)


@numba.njit(inline="always", **NJIT)
def _col2im_range(lo, hi, col, out, bias, n, c_out, cog, h, wd, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n,
                  ow_n, act, alpha, beta):
    has_bias = bias.size > 0
    for oc in range(lo, hi):
        g = oc // cog
        ocg = oc - g * cog
        coff = (g * cog * kh_n * kw_n + ocg * kh_n * kw_n) * h * wd
        bval = bias[oc] if has_bias else np.float32(0.0)
        _col2im_plane(col, coff, out, (n * c_out + oc) * oh_n * ow_n, bval, h, wd, kh_n, kw_n, sh, sw, dh,
                      dw, pt, pl, oh_n, ow_n, act, alpha, beta)


@numba.njit(**NJIT)
def _col2im_serial(col, out, bias, n, c_out, cog, h, wd, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n, ow_n,
                   act, alpha, beta):
    _col2im_range(0, c_out, col, out, bias, n, c_out, cog, h, wd, kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n,
                  ow_n, act, alpha, beta)


@numba.njit(**NJIT_PARALLEL)
def _col2im_parallel(nslots, col, out, bias, n, c_out, cog, h, wd, kh_n, kw_n, sh, sw, dh, dw, pt, pl,
                     oh_n, ow_n, act, alpha, beta):
    for s in prange(nslots):
        _col2im_range(s * c_out // nslots, (s + 1) * c_out // nslots, col, out, bias, n, c_out, cog, h, wd,
                      kh_n, kw_n, sh, sw, dh, dw, pt, pl, oh_n, ow_n, act, alpha, beta)


# ---------------------------------------------------------------------------------------------------
# classes
# ---------------------------------------------------------------------------------------------------
_EMPTY = np.zeros(0, dtype=np.float32)


def _single_channel_gemm(c: int, cout: int, kh: int, kw: int, sw: int) -> bool:
    """True for a convolution of ONE input channel (group 1) into several output channels that the
    depthwise kernels only cover by their generic per-tap loops (any kernel but 3x3/5x5 with column stride
    1 or 2): STFT-as-convolution and audio first layers. As a GEMM (``C_out x kH*kW`` weights against the
    implicit im2col of the plane) it runs an order of magnitude faster."""
    if c != 1 or cout < 2:
        return False
    return not (kh == kw and kh in (3, 5) and sw in (1, 2))


class Conv2d:
    """2-D convolution, NCHW float32, prepared for one weight and one input shape.

    ``Conv2d(weight, bias, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
    act=ACT_NONE, alpha=0.0, beta=0.0)``

    * ``weight``: (C_out, C_in/group, kH, kW); ``bias``: (C_out,) or None;
    * ``in_shape``: (N, C_in, H, W); ``pads``: (top, left, bottom, right) (ONNX order is
      (top, left, bottom, right) too: x1_begin, x2_begin, x1_end, x2_end);
    * ``act``, ``alpha``, ``beta``: fused activation (an ``ACT_*`` code or an ONNX op name);
    * ``accumulate``: add the convolution to what ``out`` holds (a fused residual connection:
      ``out = act(out + conv(x) + bias)``); computed by the GEMM or flat strategy;
    * ``strategy``: None (choose), or force ``"gemm"`` / ``"flat"`` (group 1) on a non-depthwise convolution.

    Attributes: ``out_shape``, ``scratch_bytes`` (0: panels are packed in small per-thread buffers),
    ``strategy`` ("gemv": one output pixel per image from the whole unpadded input, a matrix-vector product;
    "gemm": implicit im2col, panels packed per call; "direct": few input channels (first layers), output rows
    straight from the padded image, :mod:`.conv_direct`; "flat": the zero-padded image read in place,
    :mod:`.conv_flat`, chosen by :func:`~.conv_flat.prefer_flat` unless ``config.CONV_FLAT`` is off; or
    "depthwise"), for depthwise ``depthwise_kernel`` ("rows": one plane at a
    time, vectorized along output rows; "interleaved": :mod:`.depthwise_ci`, VW channels at a time, for
    narrow planes). ``__call__(x, out, scratch=None, threads=None)``.
    """

    def __init__(self, weight, bias, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                 group: int = 1, act=ACT_NONE, alpha: float = 0.0, beta: float = 0.0, accumulate: bool = False,
                 strategy: str | None = None):
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 4:
            raise ValueError(f"weight must be (C_out, C_in/group, kH, kW), got shape {weight.shape}")
        if (strategy not in (None, "gemm", "flat", "pixels", "direct")
                or (strategy in ("flat", "pixels", "direct") and group != 1)):
            raise ValueError(f"strategy must be None, 'gemm', or (group 1 only) 'flat', 'pixels' or 'direct', "
                             f"got {strategy!r}")
        n, c, h, w = (int(v) for v in in_shape)
        cout, cg, kh, kw = weight.shape
        sh, sw = _pair(strides, "strides", (1, 1))
        dh, dw = _pair(dilations, "dilations", (1, 1))
        pt, pl, pb, pr = _pads4(pads)
        group = int(group)
        if group < 1 or c % group or cout % group or c // group != cg:
            raise ValueError(f"bad group {group} for C_in={c}, C_out={cout}, weight {weight.shape}")
        if min(sh, sw, dh, dw) < 1:
            raise ValueError("strides and dilations must be >= 1")
        oh = conv_out_size(h, kh, sh, pt, pb, dh)
        ow = conv_out_size(w, kw, sw, pl, pr, dw)
        if oh < 1 or ow < 1:
            raise ValueError(f"empty output {oh}x{ow} for input {h}x{w}, kernel {kh}x{kw}")
        self.in_shape = (n, c, h, w)
        self.out_shape = (n, cout, oh, ow)
        self.geometry = dict(kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl, pb=pb, pr=pr)
        self.group = group
        self.act = act_code(act)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if self.bias is not None and self.bias.size != cout:
            raise ValueError(f"bias has {self.bias.size} elements, expected {cout}")
        self.scratch_bytes = 0
        self.accumulate = bool(accumulate)
        self._direct = None
        # a first layer (RGB / grey input): output rows straight from the padded image (conv_direct.py) on one
        # thread, the packed GEMM (built below too) when split across threads; the same sums, so the same
        # floats (measured, 1 thread: 3->16 3x3 s2 at 224 0.17 against 0.20 ms flat; grey 1->32 s2 at 224 0.15
        # against 0.38 as a multiplier-32 depthwise, which stays for stride 1: equal. 2 threads: the GEMM
        # 0.10, direct 0.13: its rows split well, its padding pass does not)
        direct = strategy == "direct" or (strategy is None and _config.CONV_DIRECT and group == 1
                                          and c <= DIRECT_MAX_CIN and sw in (1, 2) and ow >= 2 * VW
                                          and not accumulate and (c > 1 or sw == 2)
                                          and (c == 1 or MULTI_CHANNEL_DIRECT))
        if direct and (group != 1 or sw not in (1, 2) or accumulate):
            raise ValueError("the direct strategy takes group 1, column stride 1 or 2, no accumulation")
        if not direct and group == c and cg == 1 and not accumulate and not _single_channel_gemm(c, cout, kh, kw, sw):
            self.strategy = "depthwise"
            self.w = np.ascontiguousarray(weight).reshape(-1)
            self._hp = (oh - 1) * sh + (kh - 1) * dh + 1
            self._wp = (ow - 1) * sw + (kw - 1) * dw + 1
            self._dw_args = (n, c, cout, h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, self._hp, self._wp,
                             self.act, np.float32(self.alpha), np.float32(self.beta))
            self.work = n * cout * oh * ow * kh * kw
            self._dw_sizes = dw_buffer_sizes(self._hp, self._wp, kw, dw, oh)
            slots = max(1, min(numba.config.NUMBA_NUM_THREADS, n * cout))
            self.scratch_bytes = 4 * slots * sum(self._dw_sizes)
            self._ci = None
            self.depthwise_kernel = "rows"
            if cout == c and prefer_interleaved(oh, ow, sw):
                self.depthwise_kernel = "interleaved"
                self._ci = DepthwiseInterleaved(weight, self.bias, self.in_shape, self.out_shape, kh, kw, sh, sw,
                                                dh, dw, pt, pl, self._hp, self._wp, self.act, self.alpha,
                                                self.beta)
                self.scratch_bytes = 4 * max(self._ci.workspace_floats(t)
                                             for t in range(1, numba.config.NUMBA_NUM_THREADS + 1))
            return
        self._flat = self._pixels = self._gemm = None
        if (not direct and strategy is None and group == 1 and n <= 3 and oh == 1 and ow == 1 and kh == h and kw == w
                and dh == 1 and dw == 1 and pt == pl == pb == pr == 0 and not accumulate):
            # one output pixel per image, the kernel covering the whole unpadded input (a squeeze-and-excite
            # block's 1x1 convolutions on a pooled 1x1 map, a classifier head): the image is the vector and
            # the weights the rows of a matrix-vector product (the GEMM would fill 1 of 16 columns; measured
            # 512 -> 1280 on Zen 4: 0.46 ms as a GEMM)
            self.strategy = "gemv"
            self._w_rows = np.array(weight.reshape(cout, cg * kh * kw), dtype=np.float32)  # owned: repack writes it
            return
        if strategy == "pixels" or (not direct and strategy is None and _config.CONV_PIXELS
                                    and prefer_pixels(self.in_shape, self.out_shape, kh, kw, sh, sw, group)):
            self.strategy = "pixels"  # (the weights live only in its packed B)
            self._pixels = PixelConv(weight, self.bias, self.in_shape, self.out_shape, (sh, sw), (pt, pl, pb, pr),
                                     (dh, dw), self.act, self.alpha, self.beta, self.accumulate,
                                     self.act in SIMPLE_ACTS)
            self.scratch_bytes = self._pixels.scratch_bytes
            return
        self.strategy = "gemm"
        m = cout // group
        k = cg * kh * kw
        npix = oh * ow
        asz = packed_a_size(m, k)
        self._packing = (group, m, k, asz)
        self.ap = aligned_zeros(group * asz)
        w2 = weight.reshape(group, m, k)
        for g in range(group):
            pack_a(w2[g], self.ap[g * asz:(g + 1) * asz])
        if strategy == "flat" or (not direct and strategy is None and _config.CONV_FLAT
                                     and prefer_flat(self.in_shape, self.out_shape, kh, kw, sh, sw, group)):
            self.strategy = "flat"
            self._flat = FlatConv(self.ap, self.bias, self.in_shape, self.out_shape, kh, kw, sh, sw, dh, dw,
                                  (pt, pl, pb, pr), self.act, self.alpha, self.beta, self.accumulate,
                                  self.act in SIMPLE_ACTS)
            self.scratch_bytes = self._flat.scratch_bytes
            if (strategy is not None or self.accumulate
                    or (self._flat.work >= FLAT_PARALLEL_MIN_WORK and c >= FLAT_PARALLEL_MIN_C)):
                return
            # a small layer (or a first one): flat at 1 thread, the packed GEMM when split across threads (see
            # bind), with the same bits. Not with a fused residual: flat adds it after the dot products, the
            # GEMM starts its accumulators from it, and the roundings differ.
        if kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == pl == pb == pr == 0:
            geo, ktab = matrix_geometry(cg, h * w, h * w), matrix_ktab(cg, h * w)
        else:
            geo = conv_geometry(h, w, kh, kw, sh, sw, dh, dw, pt, pl, ow)
            ktab = conv_ktab(cg, h, w, kh, kw, dh, dw)
        self._gemm = GemmCall(self.ap, m, npix, k, npix, geo=geo, ktab=ktab, nbatch=n, ngroups=group,
                              a_gstride=asz, b_nstride=c * h * w, b_gstride=cg * h * w,
                              c_nstride=cout * npix, c_gstride=m * npix, bias=self.bias,
                              bias_mode=BIAS_ROW if self.bias is not None else BIAS_NONE, bias_gstride=m,
                              accumulate=self.accumulate, act=self.act, alpha=self.alpha, beta=self.beta)
        self.scratch_bytes = max(self.scratch_bytes, self._gemm.scratch_bytes())
        if direct:
            self.strategy = "direct"
            self._direct = DirectConv(weight, self.bias, self.in_shape, self.out_shape, kh, kw, sh, sw, dh, dw,
                                      (pt, pl, pb, pr), self.act, self.alpha, self.beta)
            self.scratch_bytes = max(self.scratch_bytes, self._direct.scratch_bytes)

    def repack(self, weight, bias) -> bool:
        """Load a new weight and bias of the same shapes (weights trained at run time), keeping everything
        else prepared; False when this convolution cannot (interleaved depthwise, or the bias appears or
        disappears): build a new one then."""
        if (bias is None) != (self.bias is None) or getattr(self, "_ci", None) is not None:
            return False
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        if self.strategy == "gemv":
            self._w_rows[...] = weight.reshape(self._w_rows.shape)
        elif self.strategy == "pixels":
            self._pixels.repack(weight)
        elif self.strategy in ("gemm", "flat", "direct"):
            if self.strategy == "direct":
                self._direct.repack(weight)
            group, m, k, asz = self._packing
            w2 = weight.reshape(group, m, k)
            for g in range(group):
                pack_a(w2[g], self.ap[g * asz:(g + 1) * asz])
        else:
            self.w = weight.reshape(-1)  # (read at each call; may view the caller's array, as at __init__)
        if bias is not None:
            self.bias = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
            if self.strategy in ("gemm", "direct"):
                self._gemm.set_bias(self.bias)
            if self.strategy == "direct":
                self._direct.set_bias(self.bias)
            elif self.strategy == "flat":
                self._flat.set_bias(self.bias)
                if self._gemm is not None:
                    self._gemm.set_bias(self.bias)
            elif self.strategy == "pixels":
                self._pixels.set_bias(self.bias)
        return True

    def bind(self, x: np.ndarray, out: np.ndarray, scratch, threads: int):
        """A no-argument callable computing ``self(x, out, scratch, threads)`` with every argument prepared
        now (x, out and scratch must stay the same arrays from call to call)."""
        xf = _flat(x, self.in_shape, "input")
        of = _flat(out, self.out_shape, "output")
        if self.strategy == "gemm":
            return self._gemm.bind(of, xf, threads, scratch)
        if self.strategy == "direct":
            if self._gemm_splits(threads):
                return self._gemm.bind(of, xf, threads, scratch)
            return self._direct.bind(xf, of, _scratch_bytes(scratch, self.scratch_bytes), 1)
        if self.strategy == "flat":
            if self._gemm is None:
                return self._flat.bind(xf, of, scratch, threads)
            if self._gemm_splits(threads):
                return self._gemm.bind(of, xf, threads, scratch)
            return self._flat.bind(xf, of, scratch, 1)
        if self.strategy == "pixels":
            return self._pixels.bind(xf, of, scratch, threads)
        if self.strategy == "gemv":
            return functools.partial(*self._gemv_call(xf, of, threads))
        return functools.partial(*self._dw_call(xf, of, _as_scratch_f32(scratch, self.scratch_bytes // 4), threads))

    def _gemm_splits(self, threads: int) -> bool:
        """Whether the packed GEMM kept beside a small flat or direct strategy splits across ``threads``: only
        then does it run in their place; otherwise they run on one thread (the packed GEMM left on one thread
        is 1.1-1.8x slower than they are: measured 2 cores, 24->24 channels k=9 at 49 columns 15.1 against
        11.9 us, 32->32 3x3 at 16x16 127 against 72 us; and flat's own split, which counts its discarded
        columns as work, took 14-16 us there)."""
        return self._gemm.splits(threads)

    def _gemv_call(self, xf, of, threads) -> tuple:
        """(kernel, *arguments) of the matrix-vector strategy: out (N, C_out) = x (N, K) @ W^T."""
        n = self.in_shape[0]
        return _gemv_args(self._w_rows, xf.reshape(n, -1), of.reshape(n, -1), self.bias, self.act, self.alpha,
                          self.beta, threads)

    def _dw_call(self, xf, of, work, threads) -> tuple:
        """(kernel, *arguments) of the depthwise path."""
        if self._ci is not None:
            return self._ci.call_args(xf, of, work, threads)
        psize, wsize = self._dw_sizes
        bias = self.bias if self.bias is not None else _EMPTY
        planes = self.out_shape[0] * self.out_shape[1]
        slots = min(threads, planes, work.size // (psize + wsize))
        if slots > 1 and self.work >= _config.PARALLEL_MIN_WORK:
            return (_dw_parallel, slots, work, psize, wsize, xf, self.w, bias, of, *self._dw_args)
        return (_dw_serial, work, psize, wsize, xf, self.w, bias, of, *self._dw_args)

    def __call__(self, x: np.ndarray, out: np.ndarray, scratch=None, threads: int | None = None) -> np.ndarray:
        """``scratch``: a uint8 workspace of ``scratch_bytes`` (allocated per call when None)."""
        xf = _flat(x, self.in_shape, "input")
        of = _flat(out, self.out_shape, "output")
        if scratch is not None and scratch.nbytes < self.scratch_bytes:
            raise ValueError(f"scratch has {scratch.nbytes} bytes, {self.scratch_bytes} needed")
        if self.strategy == "gemm":
            self._gemm.run(of, xf, threads, scratch)
            return out
        if threads is None:
            threads = num_threads()
        if self.strategy == "flat":
            self.bind(x, out, scratch, threads)()
            return out
        if self.strategy == "pixels":
            self._pixels.bind(xf, of, scratch, threads)()
            return out
        if self.strategy == "direct":
            self.bind(x, out, _scratch_bytes(scratch, self.scratch_bytes), threads)()
            return out
        if self.strategy == "gemv":
            fn, *args = self._gemv_call(xf, of, threads)
            fn(*args)
            return out
        if threads is None:
            threads = num_threads()
        fn, *args = self._dw_call(xf, of, _as_scratch_f32(scratch, self.scratch_bytes // 4), threads)
        fn(*args)
        return out


class ConvTranspose2d:
    """2-D transposed convolution (ONNX ConvTranspose), NCHW float32, prepared per weight and input shape.

    ``ConvTranspose2d(weight, bias, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
    output_padding=(0, 0), group=1, act=ACT_NONE, alpha=0.0, beta=0.0)``

    * ``weight``: (C_in, C_out/group, kH, kW); ``bias``: (C_out,) or None; ``pads``: (top, left, bottom,
      right); output size ``stride*(H-1) + output_padding + (k-1)*dilation + 1 - pad_begin - pad_end``
      (for ONNX ``output_shape``, the caller derives the pads).

    ``scratch_bytes``: the column buffer (C_out*kH*kW x H*W floats for one image).
    ``__call__(x, out, scratch=None, threads=None)``.
    """

    def __init__(self, weight, bias, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                 output_padding=(0, 0), group: int = 1, act=ACT_NONE, alpha: float = 0.0, beta: float = 0.0):
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 4:
            raise ValueError(f"weight must be (C_in, C_out/group, kH, kW), got shape {weight.shape}")
        n, c, h, w = (int(v) for v in in_shape)
        cin, cog, kh, kw = weight.shape
        sh, sw = _pair(strides, "strides", (1, 1))
        dh, dw = _pair(dilations, "dilations", (1, 1))
        oph, opw = _pair(output_padding, "output_padding", (0, 0))
        pt, pl, pb, pr = _pads4(pads)
        group = int(group)
        if group < 1 or cin != c or c % group:
            raise ValueError(f"bad group {group} for C_in={c}, weight {weight.shape}")
        cout = cog * group
        oh = conv_transpose_out_size(h, kh, sh, pt, pb, dh, oph)
        ow = conv_transpose_out_size(w, kw, sw, pl, pr, dw, opw)
        if oh < 1 or ow < 1:
            raise ValueError(f"empty output {oh}x{ow}")
        self.in_shape = (n, c, h, w)
        self.out_shape = (n, cout, oh, ow)
        self.group = group
        self.act = act_code(act)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if self.bias is not None and self.bias.size != cout:
            raise ValueError(f"bias has {self.bias.size} elements, expected {cout}")
        cig = c // group
        m = cog * kh * kw
        hw = h * w
        asz = packed_a_size(m, cig)
        self.ap = aligned_zeros(group * asz)
        for g in range(group):
            wg = weight[g * cig:(g + 1) * cig].reshape(cig, m)  # (K, M)
            if cig > 0:
                pack_a(wg.T, self.ap[g * asz:(g + 1) * asz])
        self._ncol = group * m * hw
        self._gemm = GemmCall(self.ap, m, hw, cig, hw, geo=matrix_geometry(cig, hw, hw),
                              ktab=matrix_ktab(cig, hw), nbatch=1, ngroups=group, a_gstride=asz,
                              b_gstride=cig * hw, c_gstride=m * hw)
        self._col_bytes = (4 * self._ncol + 63) // 64 * 64
        self.scratch_bytes = self._col_bytes + self._gemm.scratch_bytes()
        self._c2i = (cout, cog, h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, self.act, np.float32(self.alpha),
                     np.float32(self.beta))
        self.work = n * m * group * hw * max(cig, 1)

    def __call__(self, x: np.ndarray, out: np.ndarray, scratch=None, threads: int | None = None) -> np.ndarray:
        xf = _flat(x, self.in_shape, "input")
        of = _flat(out, self.out_shape, "output")
        if threads is None:
            threads = num_threads()
        if scratch is None or scratch.nbytes < self.scratch_bytes:
            scratch = np.empty(self.scratch_bytes, dtype=np.uint8)
        col = scratch[:4 * self._ncol].view(np.float32)
        gemm_work = scratch[self._col_bytes:]
        bias = self.bias if self.bias is not None else _EMPTY
        n, c, h, w = self.in_shape
        cout = self.out_shape[1]
        par = threads > 1 and cout > 1 and self.work >= _config.PARALLEL_MIN_WORK
        for i in range(n):
            if c == 0:
                col[:] = 0.0
            else:
                self._gemm.run(col, xf[i * c * h * w:(i + 1) * c * h * w], threads, gemm_work)
            if par:
                _col2im_parallel(min(threads, cout), col, of, bias, i, *self._c2i)
            else:
                _col2im_serial(col, of, bias, i, *self._c2i)
        return out


# ---------------------------------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------------------------------
def conv2d_ref(x, weight, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
               act=ACT_NONE, alpha=0.0, beta=0.0):
    """float64 numpy reference of :class:`Conv2d`."""
    x = np.asarray(x, np.float64)
    wt = np.asarray(weight, np.float64)
    n, _, h, w = x.shape
    cout, cg, kh, kw = wt.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(w, kw, sw, pl, pr, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    m = cout // group
    out = np.zeros((n, cout, oh, ow))
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, g * m:(g + 1) * m] += np.einsum("nchw,mc->nmhw", patch, wt[g * m:(g + 1) * m, :, i, j])
    if bias is not None:
        out += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return act_ref(out, act_code(act), alpha, beta)


def conv_transpose2d_ref(x, weight, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                         output_padding=(0, 0), group=1, act=ACT_NONE, alpha=0.0, beta=0.0):
    """float64 numpy reference of :class:`ConvTranspose2d` (direct scatter, then crop)."""
    x = np.asarray(x, np.float64)
    wt = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    _, cog, kh, kw = wt.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oph, opw = output_padding
    oh = conv_transpose_out_size(h, kh, sh, pt, pb, dh, oph)
    ow = conv_transpose_out_size(w, kw, sw, pl, pr, dw, opw)
    fh = max(sh * (h - 1) + (kh - 1) * dh + 1, pt + oh)
    fw = max(sw * (w - 1) + (kw - 1) * dw + 1, pl + ow)
    full = np.zeros((n, cog * group, fh, fw))
    cig = c // group
    for g in range(group):
        xs = x[:, g * cig:(g + 1) * cig]
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", xs, wt[g * cig:(g + 1) * cig, :, i, j])
                full[:, g * cog:(g + 1) * cog, i * dh: i * dh + sh * (h - 1) + 1: sh,
                     j * dw: j * dw + sw * (w - 1) + 1: sw] += contrib
    out = full[:, :, pt: pt + oh, pl: pl + ow]
    if bias is not None:
        out = out + np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return act_ref(out, act_code(act), alpha, beta)
