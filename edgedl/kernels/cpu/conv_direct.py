"""Direct convolution for few input channels (a network's first layer: RGB or grey images), NCHW float32.

The im2col GEMM gives such a layer a K of 27 (3 channels x 3x3): its packing costs about what its few
multiply-adds do, and the flat strategy's zero-padded image is read with stride 2 through an im2col panel.
Here each output row is computed directly from the zero-padded image:

* the input is copied once per call into a zero-padded buffer ``(C_in, HP, WP)`` (plus slack for the
  vector loads past a row's end, whose lanes are never stored);
* ``conv_rows_sS_R`` (LLVM IR) compute one (or, with AVX-512, two) output rows of ``MB = 8`` output
  channels: per vector of ``VW`` output pixels, a loop over the ``K = C_in * kH * kW`` taps in order (channel,
  kernel row, kernel column) with MB accumulators, one vector load of the input per tap (column stride 2: a
  load of 2 VW floats and a shuffle of the even lanes) and MB broadcast weights; the accumulators start from
  the bias, so the sums are the GEMM's (same order, same fused multiply-adds): the same floats;
* the activation runs on each finished row while it is in L1.

Rows (and output-channel blocks) are split across threads. Used by :class:`~.conv.Conv2d` for group-1
convolutions with at most :data:`MAX_CIN` input channels (strategy ``"direct"``).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..aligned import aligned_zeros
from . import config as _config
from .act import ACT_NONE
from .act_vec import act_run
from .config import NJIT, NJIT_PARALLEL
from .vec import VW, _arg_readers, _const_i64, _counted_loop, _emit_chunk_loop, _masked_fns, _splat, copy_floats

__all__ = ["DirectConv", "MAX_CIN", "MB", "PAIR_ROWS", "MULTI_CHANNEL_DIRECT", "pad_plane"]

#: output channels per row call (accumulators)
MB = 8
#: the most input channels the direct strategy takes (first layers)
MAX_CIN = 4


def _pair_rows() -> bool:
    """Two output rows per call (2 MB accumulators of VW = 8 floats) on x86 with AVX-512 (32 ymm registers);
    AVX2's 16 ymm would spill them, and so do AArch64's 32 q registers (a vector of 8 floats is two of them:
    the two-row variant compiled for Cortex-A76 reloads 27 spilled registers per tap loop, the one-row none)."""
    from .vec_i8dot import _feature_map, target_cpu

    machine, _, feats = target_cpu()
    return machine in ("x86_64", "amd64") and _feature_map(feats).get("avx512vl", False)


#: see :func:`_pair_rows`
PAIR_ROWS = _pair_rows()


def _multi_channel_direct() -> bool:
    """Whether images of several channels (RGB) run direct, or only single-channel ones. On x86 without AVX-512
    (AVX2's 16 ymm: one row of 8 accumulators, and column stride 2 pays two shuffles, ``vshufps`` + ``vpermpd``,
    per 8 FMAs) the flat or packed GEMM is as fast or faster (Zen 3, 1 thread: 3->16 3x3 at 224 with stride 2
    0.33 ms against 0.27 packed; 3->32 0.63 against 0.42; the 7x7 stem 4.5 against 3.0 flat; stride 1 3->16 at 64
    0.096 against 0.073 flat, 3->8 at 224 0.57 against 0.60); a single channel still gains (1->32 at 224 with
    stride 2: 0.38 against 0.69, the GEMM's K of 9 is all packing). AVX-512 (two rows share each weight) and
    AArch64 (32 registers, ``uzp1`` for stride 2) keep it."""
    from .vec_i8dot import target_cpu

    return PAIR_ROWS or target_cpu()[0] in ("aarch64", "arm64")


#: see :func:`_multi_channel_direct`
MULTI_CHANNEL_DIRECT = _multi_channel_direct()

_F32 = ir.FloatType()
_I32 = ir.IntType(32)


def _make_conv_rows(stride: int, nrows: int):
    @intrinsic
    def conv_rows(typingctx, ncols, out, ooff, ostride, orow, mrows, src, soff, srow, taps, ntaps, wts, woff, bias,
                  boff):
        for arr in (out, src, wts, bias):
            if not isinstance(arr, types.Array) or arr.dtype != types.float32:
                return None
        if not isinstance(taps, types.Array) or taps.dtype != types.int64:
            return None
        for i in (ncols, ooff, ostride, orow, mrows, soff, srow, ntaps, woff, boff):
            if not isinstance(i, types.Integer):
                return None
        sig = types.void(ncols, out, ooff, ostride, orow, mrows, src, soff, srow, taps, ntaps, wts, woff, bias, boff)

        def codegen(context, builder, signature, args):
            i64, data = _arg_readers(context, builder, signature, args)
            vecty = ir.VectorType(_F32, VW)
            wide = ir.VectorType(_F32, VW * stride)
            even = ir.Constant(ir.VectorType(_I32, VW), [i * stride for i in range(VW)])
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vecty, [vecty, vecty, vecty]), f"llvm.fmuladd.v{VW}f32")
            _, mstore = _masked_fns(builder.module, VW)
            optr = builder.gep(data(1), [i64(2)])
            ostride_v = i64(3)
            orow_v = i64(4)
            mrows_v = i64(5)
            sptr = builder.gep(data(6), [i64(7)])
            srow_v = i64(8)
            tptr = data(9)
            ntaps_v = i64(10)
            wptr = builder.gep(data(11), [i64(12)])
            bptr = builder.gep(data(13), [i64(14)])
            bvs = [_splat(builder, vecty, builder.load(builder.gep(bptr, [_const_i64(m)]), align=4))
                   for m in range(MB)]

            def body(bld, ox, mask):
                bases = [bld.gep(sptr, [bld.add(bld.mul(_const_i64(r), srow_v), bld.mul(ox, _const_i64(stride)))])
                         for r in range(nrows)]
                bb_pre = bld.block
                t, close = _counted_loop(bld, ntaps_v, "direct.taps", at_least_once=True)
                accs = [bld.phi(vecty) for _ in range(MB * nrows)]
                for k, a in enumerate(accs):
                    a.add_incoming(bvs[k % MB], bb_pre)
                toff = bld.load(bld.gep(tptr, [t]), align=8)
                vs = []
                for r in range(nrows):
                    p = bld.gep(bases[r], [toff])
                    if stride == 1:
                        v = bld.load(bld.bitcast(p, vecty.as_pointer()), align=4)
                    else:
                        v = bld.load(bld.bitcast(p, wide.as_pointer()), align=4)
                        v = bld.shuffle_vector(v, ir.Constant(wide, ir.Undefined), even)
                    vs.append(v)
                wrow = bld.gep(wptr, [bld.mul(t, _const_i64(MB))])
                new = []
                for r in range(nrows):
                    for m in range(MB):
                        wv = _splat(bld, vecty, bld.load(bld.gep(wrow, [_const_i64(m)]), align=4))
                        new.append(bld.call(fmuladd, [wv, vs[r], accs[r * MB + m]]))
                bb_body = bld.block
                for a, nv in zip(accs, new):
                    a.add_incoming(nv, bb_body)
                close()
                # store the rows, the last channel first: a channel m >= mrows (a partial last block) goes to
                # channel 0, which its own store then rewrites (no branch: a conditional store per channel lets
                # LLVM split the tap loop into one latency-bound loop per accumulator)
                for r in range(nrows):
                    orow_ptr = bld.gep(optr, [bld.mul(_const_i64(r), orow_v)])
                    for m in reversed(range(MB)):
                        ch = bld.select(bld.icmp_signed(">", mrows_v, _const_i64(m)), _const_i64(m), _const_i64(0))
                        dst = bld.gep(orow_ptr, [bld.add(bld.mul(ch, ostride_v), ox)])
                        dst = bld.bitcast(dst, vecty.as_pointer())
                        if mask is None:
                            bld.store(new[r * MB + m], dst, align=4)
                        else:
                            bld.call(mstore, [new[r * MB + m], dst, ir.Constant(_I32, 4), mask])

            _emit_chunk_loop(builder, i64(0), VW, body)
            return context.get_dummy_value()

        return sig, codegen

    return conv_rows


#: ``conv_rows_sS_R(ncols, out, ooff, ostride, orow, mrows, src, soff, srow, taps, ntaps, wts, woff, bias,
#: boff)``: R output rows r (R = 1 or 2), for m < mrows, x < ncols: ``out[ooff + r*orow + m*ostride + x] =
#: bias[boff + m] + sum_{t < ntaps} wts[woff + t*MB + m] * src[soff + r*srow + taps[t] + S*x]`` (taps summed in
#: order; ntaps >= 1; loads may read up to S*VW floats past the last tap of a row). Two rows share each weight
#: broadcast: 2 MB accumulators (registers enough with AVX-512's 32 ymm only, see _pair_rows)
conv_rows_s1_1 = _make_conv_rows(1, 1)
conv_rows_s2_1 = _make_conv_rows(2, 1)
conv_rows_s1_2 = _make_conv_rows(1, 2)
conv_rows_s2_2 = _make_conv_rows(2, 2)


@numba.njit(inline="always", **NJIT)
def pad_plane(x, xoff, h, w, pt, pl, hp, wp, dst, doff, border):
    """Plane x[xoff:] (h x w) into dst[doff:] (hp x wp) at row pt, column pl (pads >= 0); with ``border`` the
    cells around it are written 0 too (a shared scratch buffer), else left as they are (a buffer zeroed once)."""
    c0 = min(pl, wp)
    c1 = max(c0, min(wp, pl + w))
    for r in range(hp):
        row = doff + r * wp
        if r < pt or r >= pt + h:
            if border:
                for j in range(wp):
                    dst[row + j] = np.float32(0.0)
            continue
        if border:
            for j in range(c0):
                dst[row + j] = np.float32(0.0)
            for j in range(c1, wp):
                dst[row + j] = np.float32(0.0)
        if c1 > c0:
            copy_floats(dst, row + c0, x, xoff + (r - pt) * w + (c0 - pl), c1 - c0)


@numba.njit(inline="always", **NJIT)
def _pad_image(x, xoff, c, h, w, pt, pl, hp, wp, buf):
    # x[xoff:] (c, h, w) -> buf (c, hp, wp), the image at (pt, pl), zeros around it (every cell written: the
    # buffer is scratch other steps use between calls)
    for ci in range(c):
        pad_plane(x, xoff + ci * h * w, h, w, pt, pl, hp, wp, buf, ci * hp * wp, True)


@numba.njit(inline="always", **NJIT)
def _rows(r0, r1, out, ooff, oh, ow, m, sh, wp, buf, taps, wts, bias, stride, pair, act, alpha, beta):
    # output rows [r0, r1) of every channel block of one image, two at a time with ``pair``
    k = taps.shape[0]
    nmb = (m + MB - 1) // MB
    plane = oh * ow
    oy = r0
    while oy < r1:
        two = pair and oy + 1 < r1
        soff = oy * sh * wp
        for mb in range(nmb):
            mrows = min(MB, m - mb * MB)
            o0 = ooff + (mb * MB * oh + oy) * ow
            if two:
                if stride == 1:
                    conv_rows_s1_2(ow, out, o0, plane, ow, mrows, buf, soff, sh * wp, taps, k, wts, mb * k * MB,
                                   bias, mb * MB)
                else:
                    conv_rows_s2_2(ow, out, o0, plane, ow, mrows, buf, soff, sh * wp, taps, k, wts, mb * k * MB,
                                   bias, mb * MB)
            else:
                if stride == 1:
                    conv_rows_s1_1(ow, out, o0, plane, ow, mrows, buf, soff, sh * wp, taps, k, wts, mb * k * MB,
                                   bias, mb * MB)
                else:
                    conv_rows_s2_1(ow, out, o0, plane, ow, mrows, buf, soff, sh * wp, taps, k, wts, mb * k * MB,
                                   bias, mb * MB)
            if act != ACT_NONE:
                for mm in range(mrows):
                    s = o0 + mm * plane
                    act_run(out, s, s + (2 * ow if two else ow), act, alpha, beta)
        oy += 2 if two else 1


@numba.njit(**NJIT)
def direct_serial(x, out, buf, n, c, h, w, pt, pl, hp, wp, oh, ow, m, sh, taps, wts, bias, stride, pair, act,
                  alpha, beta):
    # x (n, c, h, w) flat, out (n, m, oh, ow) flat, buf the zero-bordered padded image (c, hp, wp) + slack
    for b in range(n):
        _pad_image(x, b * c * h * w, c, h, w, pt, pl, hp, wp, buf)
        _rows(0, oh, out, b * m * oh * ow, oh, ow, m, sh, wp, buf, taps, wts, bias, stride, pair, act, alpha, beta)


@numba.njit(**NJIT_PARALLEL)
def direct_parallel(x, out, buf, n, c, h, w, pt, pl, hp, wp, oh, ow, m, sh, taps, wts, bias, stride, pair, act,
                    alpha, beta, nchunks):
    # direct_serial with each image's rows split into nchunks ranges across threads
    for b in range(n):
        _pad_image(x, b * c * h * w, c, h, w, pt, pl, hp, wp, buf)
        for q in prange(nchunks):
            _rows(q * oh // nchunks, (q + 1) * oh // nchunks, out, b * m * oh * ow, oh, ow, m, sh, wp, buf, taps,
                  wts, bias, stride, pair, act, alpha, beta)


class DirectConv:
    """A group-1 convolution with few input channels (see the module docstring), one weight and shape.

    ``bind(x, out, scratch, threads)`` returns the prepared call (flat x and out); ``scratch_bytes`` is the
    padded image. Dilations any, column stride 1 or 2 (other strides: not this strategy), row stride any."""

    def __init__(self, weight, bias, in_shape, out_shape, kh, kw, sh, sw, dh, dw, pads, act, alpha, beta):
        n, c, h, w = in_shape
        m, oh, ow = out_shape[1], out_shape[2], out_shape[3]
        if sw not in (1, 2):
            raise ValueError("the direct strategy takes column stride 1 or 2")
        pt, pl, _, _ = pads
        self.geo = (n, c, h, w, pt, pl)
        # the padded extent the taps read, at least the image (the copy's destination)
        hp = max((oh - 1) * sh + (kh - 1) * dh + 1, pt + h)
        wp = max((ow - 1) * sw + (kw - 1) * dw + 1, pl + w)
        self.hp, self.wp = hp, wp
        self.oh, self.ow, self.m, self.sh, self.sw = oh, ow, m, sh, sw
        ci, i, j = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
        self.taps = ((ci * hp + i * dh) * wp + j * dw).reshape(-1).astype(np.int64)
        self.k = c * kh * kw
        self.act, self.alpha, self.beta = act, np.float32(alpha), np.float32(beta)
        self.work = n * m * oh * ow * self.k
        # slack: a row's last vector loads up to sw * VW floats past its last tap
        self.buf_floats = c * hp * wp + 2 * VW * sw + 16
        self.scratch_bytes = 4 * self.buf_floats + 64
        self.repack(weight)
        self.set_bias(bias)

    def repack(self, weight) -> None:
        """wts[block][tap][MB] from (M, C, kH, kW), zero past M."""
        nmb = -(-self.m // MB)
        w = np.zeros((nmb * MB, self.k), np.float32)
        w[:self.m] = np.asarray(weight, np.float32).reshape(self.m, self.k)
        self.wts = np.ascontiguousarray(w.reshape(nmb, MB, self.k).transpose(0, 2, 1)).reshape(-1)

    def set_bias(self, bias) -> None:
        b = aligned_zeros(-(-self.m // MB) * MB)
        if bias is not None:
            b[:self.m] = bias
        self.bias = b

    def _buffer(self, scratch) -> np.ndarray:
        raw = scratch.reshape(-1).view(np.uint8)
        skip = (-raw.ctypes.data) % 64
        return raw[skip:skip + 4 * self.buf_floats].view(np.float32)

    def bind(self, x: np.ndarray, out: np.ndarray, scratch, threads: int):
        buf = self._buffer(scratch)
        stride = self.sw
        n, c, h, w, pt, pl = self.geo
        args = (x, out, buf, n, c, h, w, pt, pl, self.hp, self.wp, self.oh, self.ow, self.m, self.sh, self.taps,
                self.wts, self.bias, stride, PAIR_ROWS, self.act, self.alpha, self.beta)
        nch = min(self.oh, 4 * threads) if threads > 1 and self.work >= _config.PARALLEL_MIN_WORK else 0
        if nch > 1:
            return functools.partial(direct_parallel, *args, nch)
        return functools.partial(direct_serial, *args)

    def __call__(self, x, out, scratch, threads: int) -> None:
        self.bind(x, out, scratch, threads)()
