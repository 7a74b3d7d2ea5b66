"""8-bit depthwise convolution (NCHW; group == C_in, any channel multiplier), requantized per channel.

``acc[n, m, oy, ox] = bias[m] + sum_{i,j} (w[m, i, j] - w_zp[m]) * (x[n, m // mult, y, x] - x_zp)`` over the
valid taps (padding taps add nothing, as TFLite skips them), then :func:`edgedl.quant.requant.requantize`
of channel m. Bit-exact with :func:`edgedl.quant.reference.conv2d` (``group == C``) in the fixed-point
modes and with ``requantize_reference`` of the int64 accumulators in the float mode (tested).

**Operands.** The input, minus its zero point, and the weights, minus theirs, are packed as float32: their
products and every partial sum are integers below 2^24 (checked per weight at construction: always for
kernels up to 258 taps), so float32 multiply-adds (``fmla`` by element on NEON, FMA on x86; two pipes
where the int16 multiply-accumulate ``smlal`` has one) give the exact int32 sum, converted after the last
tap. Past 2^24 the int16 operands take over: int16 x int16 products widened into int32 accumulators
(``smlal``/``smlal2`` on NEON). Either way the sums are exact int32 values, as TFLite's accumulators.

**Strategies** (:func:`prefer_interleaved` picks one):

* ``"rows"``, for wide output rows: one plane of one image and channel at a time (parallel over
  images x channels). The input plane is packed into a zero-bordered buffer whose rows and columns are
  split by phase modulo the stride, ``pbuf[Y % sh][X % sw][Y // sh][X // sw]`` for padded coordinates
  (Y, X), so tap t reads output pixel (oy, ox) at ``taps[t] + oy*wq + ox``: one contiguous run per output
  row for every stride and dilation, and no bounds check anywhere (the border is zeroed once per call; only
  the interior is rewritten per plane; a channel multiplier packs each input plane once). The kernel
  (:data:`dw_q8_rows_d_9` ...) sums the taps over vectors of ``VQ`` output pixels, ``GQ`` vectors at a
  time with the weights and tap offsets in registers (unrolled for 3x3 and 5x5, a tap loop otherwise),
  requantizes them and stores 8-bit vectors: a row's last vector spills into the next row (rewritten
  later), the vectors that would pass the plane's end are stored under a lane mask.
* ``"interleaved"``, for narrow output planes (the 28x28 to 7x7 end of a MobileNet; channel multiplier
  1): ``VQ`` channels at a time, one vector per pixel. Their planes are transposed (VQ x VQ in registers)
  into a zero-bordered pixel-major buffer, the kernel (:data:`dw_q8_ci_d_9` ...) computes every output
  pixel of the block with per-lane weights and requantization parameters, and the 8-bit results are
  transposed back into the output planes. No per-plane or per-row overhead, no masked tails.

**Requantization** runs in int32 lanes, in the mode of the :class:`~edgedl.quant.requant.Requant`
(compiled per mode). TFLite's ``MultiplyByQuantizedMultiplier`` is rewritten for vectors, exact for every
input: SaturatingRoundingDoublingHighMul(a, m0) is ``(a*m0 + 2^30) >> 31`` (for a*m0 < 0 the nudge
1 - 2^30 followed by C's truncating division is the same floor division; m0 < 2^31 never saturates): one
widening 32x32->64 multiply and a rounding narrowing shift (``smull`` + ``rshrn`` on NEON);
RoundingDivideByPOT is computed as the reference does. The result is clamped to ``[lo - zp, hi - zp]``
before the zero point is added (no int32 overflow). The float mode multiplies in float32, clamps and
rounds half to even (``llvm.rint``), as onnxruntime does.

Only portable LLVM vector IR is emitted (no target intrinsics): ``<8 x float>``/``<8 x i32>`` are two NEON
q registers or one AVX ymm register.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ...quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE, Requant
from . import config as _config
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL, num_threads
from .vec import _arg_readers, _counted_loop, _splat, _transpose_vectors

__all__ = ["QDepthwise2d", "prefer_interleaved", "VQ", "GQ"]

#: lanes per vector (float32/int32 accumulators: two NEON q registers; also the channels of an interleaved
#: block)
VQ = 8
#: vectors summed together through the taps (their accumulators stay in registers)
GQ = 4

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()


def _c64(v):
    return ir.Constant(_I64, v)


# ---------------------------------------------------------------------------------------------------
# LLVM-IR kernels
# ---------------------------------------------------------------------------------------------------
class _Rq:
    """Requantization values of one mode, as vectors (see :func:`_emit_requant`): ``m0``, ``shift``
    (<VQ x i32>) and ``fscale`` (<VQ x float>) per lane (a splat for one channel, a vector for VQ
    interleaved channels); ``zp``, ``lo``, ``hi``: i64 scalars."""

    def __init__(self, b, mode: int, m0, shift, fscale, zp, lo, hi):
        v32 = ir.VectorType(_I32, VQ)
        v64 = ir.VectorType(_I64, VQ)
        vf = ir.VectorType(_F32, VQ)
        rlo = b.sub(lo, zp)
        rhi = b.sub(hi, zp)
        self.rlo = _splat(b, v32, b.trunc(rlo, _I32))
        self.rhi = _splat(b, v32, b.trunc(rhi, _I32))
        self.zp = _splat(b, v32, b.trunc(zp, _I32))
        # m0 < 2^31 as a sign-extended int32: the 64-bit products are widening 32x32 multiplies (smull)
        self.m0 = b.sext(m0, v64)
        zero = ir.Constant(v32, [0] * VQ)
        one = ir.Constant(v32, [1] * VQ)
        if mode == MODE_DOUBLE:
            self.left = b.select(b.icmp_signed(">", shift, zero), shift, zero)
            nshift = b.sub(zero, shift)
            self.right = b.select(b.icmp_signed(">", nshift, zero), nshift, zero)
            self.mask = b.sub(b.shl(one, self.right), one)
            self.half = b.ashr(self.mask, one)
        elif mode == MODE_SINGLE:
            # t = 31 - shift in [1, 62] for every multiplier quantize_multiplier produces
            self.t = b.sext(b.sub(ir.Constant(v32, [31] * VQ), shift), v64)
            one64 = ir.Constant(v64, [1] * VQ)
            self.rnd = b.shl(one64, b.sub(self.t, one64))
        else:
            self.fscale = fscale
            self.flo = _splat(b, vf, b.sitofp(rlo, _F32))
            self.fhi = _splat(b, vf, b.sitofp(rhi, _F32))
            self.rint = cgutils.get_or_insert_function(b.module, ir.FunctionType(vf, [vf]), f"llvm.rint.v{VQ}f32")

    @classmethod
    def scalar(cls, b, mode: int, m0, shift, fscale, zp, lo, hi):
        """The values of one channel (m0, shift: i64; fscale: float) in every lane."""
        v32 = ir.VectorType(_I32, VQ)
        return cls(b, mode, _splat(b, v32, b.trunc(m0, _I32)), _splat(b, v32, b.trunc(shift, _I32)),
                   _splat(b, ir.VectorType(_F32, VQ), fscale), zp, lo, hi)


def _clamp(b, v, lo, hi):
    v = b.select(b.icmp_signed("<", v, lo), lo, v)
    return b.select(b.icmp_signed(">", v, hi), hi, v)


def _emit_requant(b, acc, rq: _Rq, mode: int):
    """<VQ x i32> accumulators -> <VQ x i8> outputs in ``mode`` (module doc)."""
    v32 = ir.VectorType(_I32, VQ)
    v64 = ir.VectorType(_I64, VQ)
    vf = ir.VectorType(_F32, VQ)
    if mode == MODE_FLOAT:
        f = b.fmul(b.sitofp(acc, vf), rq.fscale)
        f = b.select(b.fcmp_ordered("<", f, rq.flo), rq.flo, f)
        f = b.select(b.fcmp_ordered(">", f, rq.fhi), rq.fhi, f)
        r = b.fptosi(b.call(rq.rint, [f]), v32)
    elif mode == MODE_SINGLE:
        p = b.mul(b.sext(acc, v64), rq.m0)
        r = b.ashr(b.add(p, rq.rnd), rq.t)
        # saturate to int32 (a saturating narrow), then to the output range
        r = b.trunc(_clamp(b, r, ir.Constant(v64, [-(1 << 31)] * VQ), ir.Constant(v64, [(1 << 31) - 1] * VQ)), v32)
        r = _clamp(b, r, rq.rlo, rq.rhi)
    else:
        x = b.shl(acc, rq.left)
        p = b.mul(b.sext(x, v64), rq.m0)
        # SaturatingRoundingDoublingHighMul: (x*m0 + 2^30) >> 31 (module doc); the low 32 bits of a logical
        # shift are those of the arithmetic one
        h = b.trunc(b.lshr(b.add(p, ir.Constant(v64, [1 << 30] * VQ)), ir.Constant(v64, [31] * VQ)), v32)
        # RoundingDivideByPOT(h, right)
        rem = b.and_(h, rq.mask)
        thr = b.add(rq.half, b.lshr(h, ir.Constant(v32, [31] * VQ)))
        r = b.add(b.ashr(h, rq.right), b.zext(b.icmp_signed(">", rem, thr), v32))
        r = _clamp(b, r, rq.rlo, rq.rhi)
    return b.trunc(b.add(r, rq.zp), ir.VectorType(_I8, VQ))


def _masked_store_i8(b):
    v8 = ir.VectorType(_I8, VQ)
    return cgutils.get_or_insert_function(
        b.module, ir.FunctionType(ir.VoidType(), [v8, v8.as_pointer(), _I32, ir.VectorType(ir.IntType(1), VQ)]),
        f"llvm.masked.store.v{VQ}i8.p0")


def _lanes_below(b, n, rem):
    """<n x i1>: lane < rem (rem: i64)."""
    v32 = ir.VectorType(_I32, n)
    return b.icmp_signed("<", ir.Constant(v32, list(range(n))), _splat(b, v32, b.trunc(rem, _I32)))


def _make_kernel(ntaps_static, mode, interleaved):
    """A convolution kernel (see :data:`dw_q8_rows_d_9`) of one requantization ``mode``, its tap loop unrolled
    for ``ntaps_static`` taps (None: a runtime tap loop); ``interleaved``: the channel-interleaved variant."""

    @intrinsic
    def kernel(typingctx, nrows, ncols, out, ooff, ostride, pbuf, poff, istride, icol, taps, ntaps, wts, woff, bias,
               m0, shift, fscale, coff, zp, lo, hi):
        if not (isinstance(out, types.Array) and out.dtype in (types.int8, types.uint8)):
            return None
        if not (isinstance(pbuf, types.Array) and pbuf.dtype in (types.int16, types.float32)):
            return None
        fp = pbuf.dtype == types.float32
        for arr, dt in ((taps, types.int64), (wts, pbuf.dtype), (bias, types.int32), (m0, types.int32),
                        (shift, types.int32), (fscale, types.float32)):
            if not (isinstance(arr, types.Array) and arr.dtype == dt):
                return None
        for i in (nrows, ncols, ooff, ostride, poff, istride, icol, ntaps, woff, coff, zp, lo, hi):
            if not isinstance(i, types.Integer):
                return None
        sig = types.void(nrows, ncols, out, ooff, ostride, pbuf, poff, istride, icol, taps, ntaps, wts, woff, bias,
                         m0, shift, fscale, coff, zp, lo, hi)

        def codegen(context, builder, signature, args):
            b = builder
            i64, data = _arg_readers(context, builder, signature, args)
            v32 = ir.VectorType(_I32, VQ)
            v8 = ir.VectorType(_I8, VQ)
            vf = ir.VectorType(_F32, VQ)
            # the operands: exact float32 (see the module doc) or int16 widened to int32 products
            el = _F32 if fp else _I16
            vel = ir.VectorType(el, VQ)
            vacc = vf if fp else v32
            fmuladd = cgutils.get_or_insert_function(b.module, ir.FunctionType(vf, [vf, vf, vf]),
                                                     f"llvm.fmuladd.v{VQ}f32")
            nrows_v, ncols_v = i64(0), i64(1)
            optr = data(2, 3)
            ostr = i64(4)
            pptr = data(5, 6)
            istr, icol_v = i64(7), i64(8)
            tptr = data(9)
            nt = i64(10)
            wptr = data(11, 12)
            coff_v = i64(17)
            par = [b.gep(data(k), [coff_v]) for k in (13, 14, 15, 16)]
            if interleaved:
                # VQ channels in the lanes: per-lane bias, multipliers, weights
                bias_v, m0_v, shift_v, fs_v = [b.load(b.bitcast(ptr, ty.as_pointer()), align=4)
                                               for ptr, ty in zip(par, (v32, v32, v32, vf))]
            else:
                bias_v, m0_v, shift_v, fs_v = [_splat(b, ty, b.load(ptr, align=4))
                                               for ptr, ty in zip(par, (v32, v32, v32, vf))]
            rq = _Rq(b, mode, m0_v, shift_v, fs_v, i64(18), i64(19), i64(20))
            mstore = _masked_store_i8(b)

            ealign = 4 if fp else 2

            def widen(v):
                return v if fp else b.sext(v, v32)

            def weight(t):
                if interleaved:
                    return b.load(b.bitcast(b.gep(wptr, [b.mul(t, _c64(VQ))]), vel.as_pointer()), align=ealign)
                return _splat(b, vel, b.load(b.gep(wptr, [t]), align=ealign))

            def tap_value(t):
                off = b.load(b.gep(tptr, [t]), align=8)
                return b.gep(pptr, [off]), widen(weight(t))

            static = None
            if ntaps_static is not None:
                static = []
                if not interleaved:
                    # the weights as lanes of whole 128-bit vectors (multiply-by-element operands on NEON, few
                    # registers)
                    wl = 4 if fp else 8
                    wty = ir.VectorType(el, wl)
                    wvecs = [b.load(b.bitcast(b.gep(wptr, [_c64(wl * i)]), wty.as_pointer()), align=ealign)
                             for i in range(-(-ntaps_static // wl))]
                for t in range(ntaps_static):
                    if interleaved:
                        wv = weight(_c64(t))
                    else:
                        sel = ir.Constant(ir.VectorType(_I32, VQ), [t % wl] * VQ)
                        wv = b.shuffle_vector(wvecs[t // wl], ir.Constant(wty, ir.Undefined), sel)
                    off = b.load(b.gep(tptr, [_c64(t)]), align=8)
                    static.append((b.gep(pptr, [off]), widen(wv)))

            def mac(acc, base, wv, ioff):
                x = b.load(b.bitcast(b.gep(base, [ioff]), vel.as_pointer()), align=ealign)
                if fp:
                    return b.call(fmuladd, [x, wv, acc])
                return b.add(acc, b.mul(b.sext(x, v32), wv))

            # float sums start from 0 (the bias is added in int32), int32 sums from the bias
            acc0 = ir.Constant(vf, [0.0] * VQ) if fp else bias_v

            def vectors(ioffs, ooffs, last_mask=None):
                """Sum the taps for vectors at input offsets ioffs, requantize, store at ooffs (the last one
                under ``last_mask`` if given)."""
                k = len(ioffs)
                if static is not None:
                    accs = [acc0] * k
                    for base, wv in static:
                        accs = [mac(accs[g], base, wv, ioffs[g]) for g in range(k)]
                else:
                    bb_pre = b.block
                    t, close = _counted_loop(b, nt, "dwq8.taps", at_least_once=True)
                    phis = [b.phi(vacc) for _ in range(k)]
                    for p in phis:
                        p.add_incoming(acc0, bb_pre)
                    base, wv = tap_value(t)
                    accs = [mac(phis[g], base, wv, ioffs[g]) for g in range(k)]
                    for p, a in zip(phis, accs):
                        p.add_incoming(a, b.block)
                    close()
                if fp:
                    accs = [b.add(b.fptosi(a, v32), bias_v) for a in accs]
                for g in range(k):
                    dst = b.bitcast(b.gep(optr, [ooffs[g]]), v8.as_pointer())
                    val = _emit_requant(b, accs[g], rq, mode)
                    if last_mask is not None and g == k - 1:
                        b.call(mstore, [val, dst, ir.Constant(_I32, 1), last_mask])
                    else:
                        b.store(val, dst, align=1)

            # vectors enumerate (row, column block) row by row: (v, ioff, ooff) advance by (istep, ostep),
            # from a row's last vector to the next row by (iwrap, owrap)
            if interleaved:
                nv = ncols_v
                istep, ostep = icol_v, _c64(VQ)
            else:
                nv = b.sdiv(b.add(ncols_v, _c64(VQ - 1)), _c64(VQ))
                istep = ostep = _c64(VQ)
            iwrap = b.sub(istr, b.mul(b.sub(nv, _c64(1)), istep))
            owrap = b.sub(ostr, b.mul(b.sub(nv, _c64(1)), ostep))

            def advance(state):
                v, io, oo = state
                v1 = b.add(v, _c64(1))
                wrap = b.icmp_signed("==", v1, nv)
                return (b.select(wrap, _c64(0), v1), b.add(io, b.select(wrap, iwrap, istep)),
                        b.add(oo, b.select(wrap, owrap, ostep)))

            def state_loop(count, per_iter, name, state0, masked=False):
                """count iterations of per_iter vectors, carrying the (v, ioff, ooff) state; ``masked``: one
                vector per iteration, its lanes past the plane's end (``oend``) not stored."""
                bb_pre = b.block
                fn = b.function
                bb_loop = fn.append_basic_block(f"{name}.loop")
                bb_exit = fn.append_basic_block(f"{name}.exit")
                b.cbranch(b.icmp_signed(">", count, _c64(0)), bb_loop, bb_exit)
                b.position_at_end(bb_loop)
                i = b.phi(_I64)
                st = [b.phi(_I64) for _ in range(3)]
                i.add_incoming(_c64(0), bb_pre)
                for p, s0 in zip(st, state0):
                    p.add_incoming(s0, bb_pre)
                cur = tuple(st)
                ios, oos = [], []
                for _ in range(per_iter):
                    ios.append(cur[1])
                    oos.append(cur[2])
                    cur = advance(cur)
                if masked:
                    vectors(ios, oos, _lanes_below(b, VQ, b.sub(oend, oos[0])))
                else:
                    vectors(ios, oos)
                i1 = b.add(i, _c64(1))
                bb_end = b.block
                i.add_incoming(i1, bb_end)
                for p, s1 in zip(st, cur):
                    p.add_incoming(s1, bb_end)
                b.cbranch(b.icmp_signed("<", i1, count), bb_loop, bb_exit)
                b.position_at_end(bb_exit)
                outs = []
                for s0, s1 in zip(state0, cur):
                    phi = b.phi(_I64)
                    phi.add_incoming(s0, bb_pre)
                    phi.add_incoming(s1, bb_end)
                    outs.append(phi)
                return tuple(outs)

            total = b.mul(nrows_v, nv)
            fn = b.function
            bb_work = fn.append_basic_block("dwq8.work")
            bb_end = fn.append_basic_block("dwq8.end")
            b.cbranch(b.icmp_signed(">", total, _c64(0)), bb_work, bb_end)
            b.position_at_end(bb_work)
            if interleaved:
                main = total
            else:
                # rows: the last vectors, those that would write past the plane's last output (which belongs
                # to the next plane), are stored under a lane mask: the plane's last vector, and with rows
                # narrower than a vector ceil((VQ - ncols) / ostride) of them (ostride >= ncols)
                oend = b.add(b.mul(b.sub(nrows_v, _c64(1)), ostr), ncols_v)
                short = b.sdiv(b.add(b.sub(_c64(VQ), ncols_v), b.sub(ostr, _c64(1))), ostr)
                short = b.select(b.icmp_signed("<", short, nrows_v), short, nrows_v)
                ntail = b.select(b.icmp_signed(">=", ncols_v, _c64(VQ)), _c64(1), short)
                main = b.sub(total, ntail)
            ngrp = b.sdiv(main, _c64(GQ))
            st = state_loop(ngrp, GQ, "dwq8.groups", (_c64(0), _c64(0), _c64(0)))
            st = state_loop(b.sub(main, b.mul(ngrp, _c64(GQ))), 1, "dwq8.rest", st)
            if not interleaved:
                state_loop(ntail, 1, "dwq8.tail", st, masked=True)
            b.branch(bb_end)
            b.position_at_end(bb_end)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


#: ``dw_q8_rows_M_T(nrows, ncols, out, ooff, ostride, pbuf, poff, istride, icol, taps, ntaps, wts, woff, bias, m0,
#: shift, fscale, coff, zp, lo, hi)``: one channel c (``coff``), for r < nrows, x < ncols
#: ``out[ooff + r*ostride + x] = requantize_c(bias[c] + sum_{t < ntaps} wts[woff + t] * pbuf[poff + r*istride + x
#: + taps[t]])`` with ``m0[c]``, ``shift[c]``, ``fscale[c]``, zp, lo, hi (``icol`` is unused). Rows are
#: computed in whole vectors of VQ: a row's last vector also writes the first columns of the next row (stored
#: later, so rewritten) and reads as far; vectors that would write past the plane's last output are stored
#: under a lane mask (``ostride >= ncols``).
#: ``dw_q8_ci_M_T(...)`` (same arguments): VQ channels coff..coff+VQ-1 interleaved, pixel (r, x) of
#: channel coff + l at ``pbuf[poff + r*istride + x*icol + l]`` (plus the tap offsets) and at ``out[ooff +
#: r*ostride + x*VQ + l]``, tap t's weights at ``wts[woff + t*VQ + l]``.
#: Types: out int8 or uint8; pbuf and wts both float32 (exact integer values, sums below 2^24) or both
#: int16; taps int64; bias, m0, shift int32; fscale float32. The unrolled rows kernels load the weights as
#: whole 128-bit vectors from ``woff``: pad them. M: the requantization mode (d: double, s: single, f: float
#: rounding); T: the tap loop unrolled for 9 / 25 taps, or a loop over ``ntaps`` (n).
_KERNELS = {(kind, m, t): _make_kernel(None if t == "n" else int(t), mode, kind == "ci")
            for kind in ("rows", "ci") for m, mode in (("d", MODE_DOUBLE), ("s", MODE_SINGLE), ("f", MODE_FLOAT))
            for t in ("n", "9", "25")}
dw_q8_rows_d_n, dw_q8_rows_d_9, dw_q8_rows_d_25 = (_KERNELS["rows", "d", t] for t in ("n", "9", "25"))
dw_q8_rows_s_n, dw_q8_rows_s_9, dw_q8_rows_s_25 = (_KERNELS["rows", "s", t] for t in ("n", "9", "25"))
dw_q8_rows_f_n, dw_q8_rows_f_9, dw_q8_rows_f_25 = (_KERNELS["rows", "f", t] for t in ("n", "9", "25"))
dw_q8_ci_d_n, dw_q8_ci_d_9, dw_q8_ci_d_25 = (_KERNELS["ci", "d", t] for t in ("n", "9", "25"))
dw_q8_ci_s_n, dw_q8_ci_s_9, dw_q8_ci_s_25 = (_KERNELS["ci", "s", t] for t in ("n", "9", "25"))
dw_q8_ci_f_n, dw_q8_ci_f_9, dw_q8_ci_f_25 = (_KERNELS["ci", "f", t] for t in ("n", "9", "25"))


#: columns per chunk of the packing kernels
PACK_C = 16


def _make_pack(stride):
    """The packing kernel for column stride ``stride`` (every column phase in one pass)."""

    @intrinsic
    def dw_q8_pack(typingctx, nrows, ncols, dst, doff, dstride, pstride, pl, src, soff, sstride, zp):
        if not (isinstance(src, types.Array) and src.dtype in (types.int8, types.uint8)):
            return None
        if not (isinstance(dst, types.Array) and dst.dtype in (types.int16, types.float32)):
            return None
        for i in (nrows, ncols, doff, dstride, pstride, pl, soff, sstride, zp):
            if not isinstance(i, types.Integer):
                return None
        signed = src.dtype == types.int8
        fp = dst.dtype == types.float32
        sig = types.void(nrows, ncols, dst, doff, dstride, pstride, pl, src, soff, sstride, zp)

        def codegen(context, builder, signature, args):
            b = builder
            at = signature.args
            i64, data = _arg_readers(context, builder, signature, args)
            c = PACK_C
            vin = ir.VectorType(_I8, c * stride)
            vw = ir.VectorType(_F32 if fp else _I16, c)
            vz = ir.VectorType(_I16, c)
            nrows_v, ncols_v = i64(0), i64(1)
            dptr = data(2, 3)
            dstr, pstr, pl_v = i64(4), i64(5), i64(6)
            sarr = context.make_array(at[7])(context, builder, value=args[7])
            sbase = sarr.data
            slen = sarr.nitems
            soff, sstr = i64(8), i64(9)
            zpv = _splat(b, vz, b.trunc(i64(10), _I16))
            ext = b.sext if signed else b.zext
            zero = ir.Constant(vw, [0.0 if fp else 0] * c)
            align = 4 if fp else 2
            mload = cgutils.get_or_insert_function(
                b.module, ir.FunctionType(vin, [vin.as_pointer(), _I32, ir.VectorType(ir.IntType(1), c * stride),
                                                vin]), f"llvm.masked.load.v{c * stride}i8.p0")
            # source columns j, j + stride, ... (j < stride) go to column phase (j + pl) % stride, from column
            # (j + pl) // stride of its row; there are ceil((ncols - j) / stride) of them
            phases = []
            for j in range(stride):
                jp = b.add(_c64(j), pl_v)
                q = b.sdiv(jp, _c64(stride))
                base = b.add(b.mul(b.sub(jp, b.mul(q, _c64(stride))), pstr), q)
                cnt = b.sdiv(b.add(b.sub(ncols_v, _c64(j)), _c64(stride - 1)), _c64(stride))
                pick = ir.Constant(ir.VectorType(_I32, c), [k * stride + j for k in range(c)])
                phases.append((base, cnt, pick))
            nch = b.sdiv(b.add(phases[0][1], _c64(c - 1)), _c64(c))

            def convert(raw, pick):
                if stride > 1:
                    raw = b.shuffle_vector(raw, ir.Constant(vin, ir.Undefined), pick)
                val = b.sub(ext(raw, vz), zpv)
                return b.sitofp(val, vw) if fp else val

            def store(val, drow, base, k0):
                b.store(val, b.bitcast(b.gep(dptr, [b.add(b.add(drow, base), k0)]), vw.as_pointer()), align=align)

            r, close_r = _counted_loop(b, nrows_v, "pack.rows")
            srow = b.add(soff, b.mul(r, sstr))
            drow = b.mul(r, dstr)
            k, close_k = _counted_loop(b, b.sub(nch, _c64(1)), "pack.chunks")
            k0 = b.mul(k, _c64(c))
            raw = b.load(b.bitcast(b.gep(sbase, [b.add(srow, b.mul(k0, _c64(stride)))]), vin.as_pointer()), align=1)
            for base, _, pick in phases:
                store(convert(raw, pick), drow, base, k0)
            close_k()
            # the row's last chunk: lanes past a phase's count are stored as 0 (into the padding or the next
            # row); it is read under a mask at the very end of the source array only
            k0 = b.mul(b.sub(nch, _c64(1)), _c64(c))
            s0 = b.add(srow, b.mul(k0, _c64(stride)))
            sp = b.bitcast(b.gep(sbase, [s0]), vin.as_pointer())
            fn = b.function
            bb_plain = fn.append_basic_block("pack.plain")
            bb_masked = fn.append_basic_block("pack.masked")
            bb_join = fn.append_basic_block("pack.join")
            b.cbranch(b.icmp_signed("<=", b.add(s0, _c64(c * stride)), slen), bb_plain, bb_masked)
            b.position_at_end(bb_plain)
            v_plain = b.load(sp, align=1)
            b.branch(bb_join)
            b.position_at_end(bb_masked)
            lmask = _lanes_below(b, c * stride, b.sub(slen, s0))
            v_masked = b.call(mload, [sp, ir.Constant(_I32, 1), lmask, ir.Constant(vin, [0] * (c * stride))])
            b.branch(bb_join)
            b.position_at_end(bb_join)
            raw = b.phi(vin)
            raw.add_incoming(v_plain, bb_plain)
            raw.add_incoming(v_masked, bb_masked)
            for base, cnt, pick in phases:
                val = b.select(_lanes_below(b, c, b.sub(cnt, k0)), convert(raw, pick), zero)
                store(val, drow, base, k0)
            close_r()
            return context.get_dummy_value()

        return sig, codegen

    return dw_q8_pack


#: ``dw_q8_pack_S(nrows, ncols, dst, doff, dstride, pstride, pl, src, soff, sstride, zp)``: rows of ncols
#: (>= 1) source pixels, minus zp, into column stride S's phase planes: for r < nrows, x < ncols
#: ``dst[doff + ((x + pl) % S)*pstride + r*dstride + (x + pl) // S] = src[soff + r*sstride + x] - zp`` (dst
#: int16 or float32; src int8 or uint8), in chunks of PACK_C per phase: a phase row also writes 0 to up to
#: PACK_C - 1 elements past its end.
dw_q8_pack_1 = _make_pack(1)
dw_q8_pack_2 = _make_pack(2)


def _chunk_loop_overlapped(b, n, body):
    """for k < ceil(n / VQ): body(j0) with j0 = min(k*VQ, n - VQ) (n >= VQ: the last chunk overlaps the one
    before it instead of running past n)."""
    nch = b.sdiv(b.add(n, _c64(VQ - 1)), _c64(VQ))
    k, close = _counted_loop(b, nch, "ci.chunks")
    j0 = b.mul(k, _c64(VQ))
    last = b.sub(n, _c64(VQ))
    body(b.select(b.icmp_signed("<", j0, last), j0, last))
    close()


@intrinsic
def dw_q8_ci_pack(typingctx, n, src, soff, sstride, dst, dofs, zp):
    """``dw_q8_ci_pack(n, src, soff, sstride, dst, dofs, zp)``: VQ channel planes into the interleaved
    buffer, ``dst[dofs[j] + l] = src[soff + l*sstride + j] - zp`` for j < n (n >= VQ), l < VQ: VQ x VQ
    transposes in registers. src int8 or uint8, dst int16 or float32, dofs int64."""
    if not (isinstance(src, types.Array) and src.dtype in (types.int8, types.uint8)):
        return None
    if not (isinstance(dst, types.Array) and dst.dtype in (types.int16, types.float32)):
        return None
    if not (isinstance(dofs, types.Array) and dofs.dtype == types.int64):
        return None
    for i in (n, soff, sstride, zp):
        if not isinstance(i, types.Integer):
            return None
    signed = src.dtype == types.int8
    fp = dst.dtype == types.float32
    sig = types.void(n, src, soff, sstride, dst, dofs, zp)

    def codegen(context, builder, signature, args):
        b = builder
        i64, data = _arg_readers(context, builder, signature, args)
        v8 = ir.VectorType(_I8, VQ)
        v16 = ir.VectorType(_I16, VQ)
        vd = ir.VectorType(_F32, VQ) if fp else v16
        s0 = data(1, 2)
        sstr = i64(3)
        dptr = data(4)
        optr = data(5)
        zpv = _splat(b, v16, b.trunc(i64(6), _I16))
        ext = b.sext if signed else b.zext

        def body(j0):
            rows = [b.sub(ext(b.load(b.bitcast(b.gep(s0, [b.add(b.mul(_c64(r), sstr), j0)]), v8.as_pointer()),
                                     align=1), v16), zpv) for r in range(VQ)]
            if fp:
                rows = [b.sitofp(r, vd) for r in rows]
            for q, v in enumerate(_transpose_vectors(b, rows, VQ)):
                off = b.load(b.gep(optr, [b.add(j0, _c64(q))]), align=8)
                b.store(v, b.bitcast(b.gep(dptr, [off]), vd.as_pointer()), align=4 if fp else 2)

        _chunk_loop_overlapped(b, i64(0), body)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def dw_q8_ci_unpack(typingctx, n, src, dst, doff, dstride):
    """``dw_q8_ci_unpack(n, src, dst, doff, dstride)``: interleaved results back to VQ channel planes,
    ``dst[doff + l*dstride + j] = src[j*VQ + l]`` for j < n (n >= VQ), l < VQ. src, dst: int8 or uint8."""
    for arr in (src, dst):
        if not (isinstance(arr, types.Array) and arr.dtype in (types.int8, types.uint8)):
            return None
    for i in (n, doff, dstride):
        if not isinstance(i, types.Integer):
            return None
    sig = types.void(n, src, dst, doff, dstride)

    def codegen(context, builder, signature, args):
        b = builder
        i64, data = _arg_readers(context, builder, signature, args)
        v8 = ir.VectorType(_I8, VQ)
        sptr = data(1)
        d0 = data(2, 3)
        dstr = i64(4)

        def body(j0):
            rows = [b.load(b.bitcast(b.gep(sptr, [b.mul(b.add(j0, _c64(q)), _c64(VQ))]), v8.as_pointer()), align=1)
                    for q in range(VQ)]
            for r, v in enumerate(_transpose_vectors(b, rows, VQ)):
                b.store(v, b.bitcast(b.gep(d0, [b.add(b.mul(_c64(r), dstr), j0)]), v8.as_pointer()), align=1)

        _chunk_loop_overlapped(b, i64(0), body)
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------------------------------------------
# Numba drivers
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT_EXACT)
def _rows(nrows, ncols, out, ooff, ostride, pbuf, istride, taps, wts, woff, bias, m0, shift, fscale, c, q):
    """One channel's plane by the rows kernel of its mode and tap count."""
    zp, lo, hi, mode = q
    nt = taps.size
    a = (nrows, ncols, out, ooff, ostride, pbuf, 0, istride, 1, taps, nt, wts, woff, bias, m0, shift, fscale, c, zp,
         lo, hi)
    if mode == MODE_DOUBLE:
        if nt == 9:
            dw_q8_rows_d_9(*a)
        elif nt == 25:
            dw_q8_rows_d_25(*a)
        else:
            dw_q8_rows_d_n(*a)
    elif mode == MODE_SINGLE:
        if nt == 9:
            dw_q8_rows_s_9(*a)
        elif nt == 25:
            dw_q8_rows_s_25(*a)
        else:
            dw_q8_rows_s_n(*a)
    else:
        if nt == 9:
            dw_q8_rows_f_9(*a)
        elif nt == 25:
            dw_q8_rows_f_25(*a)
        else:
            dw_q8_rows_f_n(*a)


@numba.njit(inline="always", **NJIT_EXACT)
def _ci(nrows, ncols, out, ostride, pin, istride, icol, taps, wts, woff, bias, m0, shift, fscale, c0, q):
    """One block of VQ interleaved channels by the interleaved kernel of its mode and tap count."""
    zp, lo, hi, mode = q
    nt = taps.size
    a = (nrows, ncols, out, 0, ostride, pin, 0, istride, icol, taps, nt, wts, woff, bias, m0, shift, fscale, c0, zp,
         lo, hi)
    if mode == MODE_DOUBLE:
        if nt == 9:
            dw_q8_ci_d_9(*a)
        elif nt == 25:
            dw_q8_ci_d_25(*a)
        else:
            dw_q8_ci_d_n(*a)
    elif mode == MODE_SINGLE:
        if nt == 9:
            dw_q8_ci_s_9(*a)
        elif nt == 25:
            dw_q8_ci_s_25(*a)
        else:
            dw_q8_ci_s_n(*a)
    else:
        if nt == 9:
            dw_q8_ci_f_9(*a)
        elif nt == 25:
            dw_q8_ci_f_25(*a)
        else:
            dw_q8_ci_f_n(*a)


@numba.njit(inline="always", **NJIT_EXACT)
def _pack(x, xoff, h, wd, x_zp, pt, pl, sh, sw, wq, pstride, hq, pbuf):
    """Input plane x[xoff:] (h x wd) minus x_zp into the phase-split padded buffer (module doc), phase
    planes ``pstride`` apart. Pixels beyond the padded extent hq*sh x wq*sw (never read by a tap) are
    skipped."""
    ymax = min(h, hq * sh - pt)
    xmax = min(wd, wq * sw - pl)
    if xmax <= 0:
        return
    for pr in range(sh):
        y0 = (pr - pt) % sh
        if y0 >= ymax:
            continue
        nr = (ymax - y0 + sh - 1) // sh
        d0 = pr * sw * pstride + ((y0 + pt) // sh) * wq
        s0 = xoff + y0 * wd
        if sw == 1:
            dw_q8_pack_1(nr, xmax, pbuf, d0, wq, pstride, pl, x, s0, sh * wd, x_zp)
        elif sw == 2:
            dw_q8_pack_2(nr, xmax, pbuf, d0, wq, pstride, pl, x, s0, sh * wd, x_zp)
        else:
            for xx in range(xmax):
                d = d0 + ((xx + pl) % sw) * pstride + (xx + pl) // sw
                for r in range(nr):
                    pbuf[d + r * wq] = np.int32(x[s0 + r * sh * wd + xx]) - x_zp


@numba.njit(inline="always", **NJIT_EXACT)
def _planes(lo_p, hi_p, x, wts, bias, taps, m0, shift, fscale, out, geo, q, pbuf):
    """Output planes lo_p..hi_p (plane p = image * C_out + channel) by the rows kernels."""
    c_in, c_out, mult, h, wd, pt, pl, sh, sw, hq, wq, pstride, oh, ow, x_zp = geo
    wstride = (taps.size + 7) // 8 * 8
    plane_in = h * wd
    plane_out = oh * ow
    last_in = -1
    for p in range(lo_p, hi_p):
        n = p // c_out
        oc = p - n * c_out
        src = n * c_in + oc // mult
        if src != last_in:
            _pack(x, src * plane_in, h, wd, x_zp, pt, pl, sh, sw, wq, pstride, hq, pbuf)
            last_in = src
        _rows(oh, ow, out, p * plane_out, ow, pbuf, wq, taps, wts, oc * wstride, bias, m0, shift, fscale, oc, q)


@numba.njit(**NJIT_EXACT)
def _rows_serial(x, wts, bias, taps, m0, shift, fscale, out, geo, q, nplanes, pbufs):
    # pbufs: (slots * psize,) float32 or int16 padded-plane buffers, one slot here
    pbufs[:] = 0
    _planes(0, nplanes, x, wts, bias, taps, m0, shift, fscale, out, geo, q, pbufs)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _rows_parallel(nslots, x, wts, bias, taps, m0, shift, fscale, out, geo, q, nplanes, pbufs):
    psize = pbufs.size // nslots
    for s in prange(nslots):
        pbuf = pbufs[s * psize:(s + 1) * psize]
        pbuf[:] = 0
        _planes(s * nplanes // nslots, (s + 1) * nplanes // nslots, x, wts, bias, taps, m0, shift, fscale, out,
                geo, q, pbuf)


@numba.njit(inline="always", **NJIT_EXACT)
def _blocks(lo_b, hi_b, x, wts, bias, taps, dofs, m0, shift, fscale, out, geo, q, pin, pout):
    """Blocks lo_b..hi_b of VQ channels (block = image * ceil(C / VQ) + channel block) by the interleaved
    kernels: pack (transpose) into ``pin``, compute into ``pout``, unpack into the output planes."""
    c, h, wd, sh, sw, wp, oh, ow, x_zp = geo
    nblk = (c + VQ - 1) // VQ
    ntaps = taps.size
    plane_in = h * wd
    plane_out = oh * ow
    for blk in range(lo_b, hi_b):
        n = blk // nblk
        cb = blk - n * nblk
        c0 = cb * VQ
        nv = min(VQ, c - c0)
        xoff = (n * c + c0) * plane_in
        if nv == VQ and plane_in >= VQ:
            dw_q8_ci_pack(plane_in, x, xoff, plane_in, pin, dofs, x_zp)
        else:
            for ch in range(nv):
                src = x[xoff + ch * plane_in:xoff + (ch + 1) * plane_in]
                for j in range(plane_in):
                    pin[dofs[j] + ch] = np.int32(src[j]) - x_zp
        _ci(oh, ow, pout, ow * VQ, pin, sh * wp * VQ, sw * VQ, taps, wts, cb * ntaps * VQ, bias, m0, shift, fscale,
            c0, q)
        ooff = (n * c + c0) * plane_out
        if nv == VQ and plane_out >= VQ:
            dw_q8_ci_unpack(plane_out, pout, out, ooff, plane_out)
        else:
            for ch in range(nv):
                dst = out[ooff + ch * plane_out:ooff + (ch + 1) * plane_out]
                for j in range(plane_out):
                    dst[j] = pout[j * VQ + ch]


@numba.njit(**NJIT_EXACT)
def _ci_serial(x, wts, bias, taps, dofs, m0, shift, fscale, out, geo, q, nblocks, pins, pouts):
    # pins: (slots * psize,) float32 or int16 interleaved padded planes; pouts: (slots * osize,) 8-bit
    # results; one slot
    pins[:] = 0
    _blocks(0, nblocks, x, wts, bias, taps, dofs, m0, shift, fscale, out, geo, q, pins, pouts)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _ci_parallel(nslots, x, wts, bias, taps, dofs, m0, shift, fscale, out, geo, q, nblocks, pins, pouts):
    psize = pins.size // nslots
    osize = pouts.size // nslots
    for s in prange(nslots):
        pin = pins[s * psize:(s + 1) * psize]
        pin[:] = 0
        _blocks(s * nblocks // nslots, (s + 1) * nblocks // nslots, x, wts, bias, taps, dofs, m0, shift, fscale,
                out, geo, q, pin, pouts[s * osize:(s + 1) * osize])


# ---------------------------------------------------------------------------------------------------
# the prepared operator
# ---------------------------------------------------------------------------------------------------
def _pair(v, name):
    v = tuple(int(a) for a in v)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"{name} must be 2 values >= 1, got {v}")
    return v


_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


#: output rows narrower than this go to the channel-interleaved kernels (when the channels allow it)
CI_BELOW = 32


def prefer_interleaved(c: int, mult: int, ow: int) -> bool:
    """Whether the channel-interleaved kernels beat the rows kernels: for output rows narrower than
    CI_BELOW (per-plane packing, per-row overhead and masked tails cost more than the transposes; measured
    equal at 56 columns, 1.2-1.7x faster at 28 to 7), channel multiplier 1, at least one whole block of
    channels."""
    return mult == 1 and c >= VQ and ow < CI_BELOW


class QDepthwise2d:
    """Prepared 8-bit depthwise convolution (NCHW), one weight and input shape.

    ``QDepthwise2d(weight, w_zp, bias, req, in_shape, x_zp, strides=(1, 1), pads=(0, 0, 0, 0),
    dilations=(1, 1), strategy=None, operands=None)``:

    * ``weight``: (M, 1, kH, kW) int8 or uint8 with M a multiple of C (channel multiplier M // C);
      ``w_zp``: scalar or (M,) zero point(s) of the weights; ``bias``: (M,) int32 or None;
    * ``req``: :class:`~edgedl.quant.requant.Requant` of M channels (or one, broadcast): mode, per-channel
      multipliers, output zero point, output bounds ``[lo, hi]`` (type range narrowed by a fused Relu);
    * ``in_shape``: (N, C, H, W); ``x_zp``: the input zero point; ``pads``: (top, left, bottom, right);
    * ``strategy``: "rows" or "interleaved" (channel multiplier 1 only); None picks one
      (:func:`prefer_interleaved`); ``operands``: "float32" (exact; the default when sums stay below 2^24)
      or "int16" (module doc).

    ``__call__(x, out, scratch=None, threads=None)``: x (N, C, H, W) int8 or uint8, C-contiguous; out
    (N, M, OH, OW) int8 or uint8 (its range must hold ``[req.lo, req.hi]``); ``scratch``: a buffer of at least
    ``scratch_bytes`` bytes (allocated per call when None); ``threads``: parallel over images x channels
    (blocks) when > 1 and the layer has _config.PARALLEL_MIN_WORK multiply-adds. ``bind(x, out, scratch, threads)``:
    a no-argument callable doing the same with every argument prepared once (x, out, scratch stay the same
    arrays). Attributes: ``out_shape``, ``strategy``, ``operands``, ``scratch_bytes``."""

    def __init__(self, weight, w_zp, bias, req: Requant, in_shape, x_zp: int, strides=(1, 1), pads=(0, 0, 0, 0),
                 dilations=(1, 1), strategy: str | None = None, operands: str | None = None):
        weight = np.asarray(weight)
        n, c, h, wd = (int(v) for v in in_shape)
        if weight.ndim != 4 or weight.shape[1] != 1 or weight.dtype not in _RANGES:
            raise ValueError(f"weight must be (M, 1, kH, kW) int8/uint8, got {weight.dtype}{weight.shape}")
        m, _, kh, kw = weight.shape
        if c < 1 or m % c:
            raise ValueError(f"{m} output channels is not a multiple of {c} input channels")
        mult = m // c
        sh, sw = _pair(strides, "strides")
        dh, dw = _pair(dilations, "dilations")
        pt, pl, pb, pr = (int(v) for v in pads)
        if min(pt, pl, pb, pr) < 0:
            raise ValueError(f"negative pads {pads}")
        oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
        ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"empty output {oh}x{ow} for input {h}x{wd}, kernel {kh}x{kw}")
        if strategy is None:
            strategy = "interleaved" if prefer_interleaved(c, mult, ow) else "rows"
        if strategy not in ("rows", "interleaved") or (strategy == "interleaved" and mult != 1):
            raise ValueError(f"bad strategy {strategy!r} (interleaved needs channel multiplier 1)")
        self.strategy = strategy
        self.in_shape, self.out_shape = (n, c, h, wd), (n, m, oh, ow)
        self.x_zp = int(x_zp)
        if req.mode not in (MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT):
            raise ValueError(f"unknown requantization mode {req.mode}")
        m0 = np.broadcast_to(np.asarray(req.m0, np.int64).reshape(-1), (m,))
        shift = np.broadcast_to(np.asarray(req.shift, np.int64).reshape(-1), (m,))
        if np.any(m0 < 0) or np.any(m0 >= 1 << 31) or np.any(shift > 30) or np.any(shift < -31):
            raise ValueError("fixed-point multipliers out of range")
        bias = np.zeros(m, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1)
        if bias.size != m:
            raise ValueError(f"bias has {bias.size} values, expected {m}")
        self.req = req
        self._q = (np.int64(req.zp), np.int64(req.lo), np.int64(req.hi), np.int64(req.mode))
        # per-channel parameters, padded to whole vectors of channels
        mpad = -(-m // VQ) * VQ
        self.bias, self.m0, self.shift = (np.zeros(mpad, np.int32) for _ in range(3))
        self.fscale = np.zeros(mpad, np.float32)
        self.bias[:m], self.m0[:m], self.shift[:m] = bias, m0, shift
        self.fscale[:m] = np.broadcast_to(np.asarray(req.fscale, np.float32).reshape(-1), (m,))
        # weights minus their zero point (int16 or exact float32 operands), taps row-major
        wzp = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (m,))
        wts = weight.reshape(m, kh * kw).astype(np.int64) - wzp[:, None]
        ntaps = kh * kw
        # float32 operands are exact while every partial sum stays below 2^24 (x - x_zp within +-383 for
        # any 8-bit type and zero point in either type's range)
        xmax = max(abs(-128 - self.x_zp), abs(255 - self.x_zp))
        exact = int(np.abs(wts).sum(axis=1).max()) * xmax < (1 << 24)
        if operands is None:
            operands = "float32" if exact else "int16"
        if operands not in ("float32", "int16") or (operands == "float32" and not exact):
            raise ValueError(f"bad operands {operands!r} (float32 needs sums below 2^24)")
        self.operands = operands
        edt = np.float32 if operands == "float32" else np.int16
        hp = (oh - 1) * sh + (kh - 1) * dh + 1
        wp = (ow - 1) * sw + (kw - 1) * dw + 1
        i, j = np.meshgrid(np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
        self.work = n * m * oh * ow * ntaps
        threads_max = numba.config.NUMBA_NUM_THREADS
        if strategy == "rows":
            # per channel, padded to whole vectors of 8 (the unrolled kernels load them 8 at a time)
            wstride = -(-ntaps // 8) * 8
            self.wts = np.zeros((m, wstride), edt)
            self.wts[:, :ntaps] = wts
            self.wts = self.wts.reshape(-1)
            # padded extent the taps read, split by phase; phase planes PACK_C apart (a packed row writes
            # zeros up to PACK_C - 1 elements past its end)
            hq, wq = -(-hp // sh), -(-wp // sw)
            pstride = hq * wq + PACK_C
            self.taps = (((i % sh) * sw + j % sw) * pstride + (i // sh) * wq + j // sw).reshape(-1).astype(np.int64)
            # the plane's last vector reads up to VQ - 1 elements past its last output (plus the tap offset)
            self._psize = sh * sw * pstride + wq + 2 * VQ
            self._osize = 0
            self._geo = tuple(np.int64(v) for v in (c, m, mult, h, wd, pt, pl, sh, sw, hq, wq, pstride, oh, ow,
                                                     self.x_zp))
            self.units = n * m
        else:
            nblk = mpad // VQ
            w = np.zeros((mpad, ntaps), edt)
            w[:m] = wts
            # wts[block][tap][lane]
            self.wts = np.ascontiguousarray(w.reshape(nblk, VQ, ntaps).transpose(0, 2, 1)).reshape(-1)
            self.taps = ((i * wp + j) * VQ).reshape(-1).astype(np.int64)
            # where each input pixel lands in the padded buffer; pixels no tap reads go to a junk pixel
            y, xx = np.meshgrid(np.arange(h) + pt, np.arange(wd) + pl, indexing="ij")
            inside = (y < hp) & (xx < wp)
            self.dofs = np.where(inside, (y * wp + xx) * VQ, hp * wp * VQ).reshape(-1).astype(np.int64)
            self._psize = (hp * wp + 1) * VQ
            self._osize = oh * ow * VQ
            self._geo = tuple(np.int64(v) for v in (c, h, wd, sh, sw, wp, oh, ow, self.x_zp))
            self.units = n * nblk
        # per slot (thread): the padded operand buffer, then (interleaved) the 8-bit results, 64-byte aligned
        self._edt = np.dtype(edt)
        self._pbytes = -(-self._edt.itemsize * self._psize // 64) * 64
        self._obytes = -(-self._osize // 64) * 64
        # (+ 64: the buffers are aligned inside a scratch buffer at any address)
        self.scratch_bytes = (self._pbytes + self._obytes) * max(1, min(threads_max, self.units)) + 64

    def _slots(self, threads: int) -> int:
        if threads > 1 and self.work >= _config.PARALLEL_MIN_WORK:
            return max(1, min(threads, self.units, numba.config.NUMBA_NUM_THREADS))
        return 1

    def _check(self, x, out):
        if x.shape != self.in_shape or x.dtype not in _RANGES or not x.flags.c_contiguous:
            raise ValueError(f"input must be a C-contiguous int8/uint8 {self.in_shape}, got {x.dtype}{x.shape}")
        if out.shape != self.out_shape or out.dtype not in _RANGES or not out.flags.c_contiguous:
            raise ValueError(f"output must be a C-contiguous int8/uint8 {self.out_shape}, got {out.dtype}{out.shape}")
        tlo, thi = _RANGES[out.dtype]
        if not tlo <= self.req.lo <= self.req.hi <= thi:
            raise ValueError(f"output range [{self.req.lo}, {self.req.hi}] does not fit {out.dtype}")

    def _call_args(self, x, out, scratch, threads) -> tuple:
        slots = self._slots(threads)
        pb = slots * self._pbytes
        need = pb + slots * self._obytes
        if scratch is None:
            scratch = np.empty(need + 64, np.uint8)
        scratch = np.asarray(scratch).reshape(-1).view(np.uint8)
        skip = -scratch.ctypes.data % 64
        if scratch.size < skip + need:
            raise ValueError(f"scratch has {scratch.size} bytes, {need + 64} needed")
        scratch = scratch[skip:]
        pbufs = scratch[:pb].view(self._edt)
        # the kernels store bytes: uint8 outputs go through an int8 view (one compiled variant less)
        xf, of = x.reshape(-1), out.reshape(-1).view(np.int8)
        if self.strategy == "rows":
            args = (xf, self.wts, self.bias, self.taps, self.m0, self.shift, self.fscale, of, self._geo, self._q,
                    self.units, pbufs)
            return (_rows_parallel, slots, *args) if slots > 1 else (_rows_serial, *args)
        pouts = scratch[pb:need].view(np.int8)
        args = (xf, self.wts, self.bias, self.taps, self.dofs, self.m0, self.shift, self.fscale, of, self._geo,
                self._q, self.units, pbufs, pouts)
        return (_ci_parallel, slots, *args) if slots > 1 else (_ci_serial, *args)

    def bind(self, x: np.ndarray, out: np.ndarray, scratch, threads: int):
        """A no-argument callable computing ``self(x, out, scratch, threads)`` with every argument prepared
        now (x, out and scratch must stay the same arrays from call to call)."""
        self._check(x, out)
        return functools.partial(*self._call_args(x, out, scratch, threads))

    def __call__(self, x: np.ndarray, out: np.ndarray, scratch=None, threads: int | None = None) -> np.ndarray:
        self._check(x, out)
        if threads is None:
            threads = num_threads()
        fn, *args = self._call_args(x, out, scratch, threads)
        fn(*args)
        return out
