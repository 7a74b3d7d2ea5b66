"""LLVM-IR building blocks of the dense kernels, as Numba intrinsics (usable inside @njit code only).

Numba does not keep a GEMM register tile in registers (arrays live in memory and SLP vectorization of a
scalar tile fails), so the GEMM microkernel is emitted here with llvmlite's IRBuilder:

* :data:`microkernel_panel`: a loop over the MR x NR tiles down one packed B panel; per tile, ``MR`` rows
  of ``NV`` vectors ``<VW x float>`` (MR * NV accumulators, phi nodes of a k loop built from basic blocks,
  unrolled ``UNROLL`` times plus a remainder loop);
* per k step: ``NV`` vector loads of the packed B row (align 4: unaligned-safe), ``MR`` scalar loads of
  the packed A column splatted to vectors, ``MR * NV`` ``llvm.fmuladd`` (fused where the FPU has FMA,
  a multiply and an add elsewhere; never a libcall as ``llvm.fma`` can be);
* before the loop the accumulators start from 0, or from the C tile (``UK_ACCUMULATE``: K-blocking), plus
  a per-row bias (``UK_BIAS``) and/or a per-column bias (``UK_BIAS_COL``);
* after the loop the in-register activations (:data:`~edgedl.kernels.cpu.act.SIMPLE_ACTS`, Sigmoid and Swish
  with an exp polynomial) run on the vectors
  and the tile is stored to C at row stride ``ldc``. Edge tiles: missing rows are handled without masks
  (their stores are redirected to row 0, rewritten with its own values), missing columns with
  ``llvm.masked.load/store``.

Also here: vector copies for B packing (:data:`copy_nr`, :data:`copy_nr_s2`, :data:`copy_floats`) and
the depthwise convolution row kernels (:data:`dw_row_3_1` ...), because LLVM does not vectorize those
loops by itself from Numba code (unprovable aliasing, negative-index wraparound).

Only portable LLVM vector IR is used (no target intrinsics): the backend maps ``<8 x float>`` onto the
target's registers (two NEON q registers, one AVX ymm register). The tile shape comes from
:data:`~edgedl.kernels.cpu.config.GEMM_TILE` (6 x 16 on x86-64 and AArch64, 4 x 8 on 32-bit ARM).

Packed layouts (see :mod:`~edgedl.kernels.cpu.gemm`): A row panel ``[K][MR]``, B column panel ``[K][NR]``.

Note: Numba's on-disk cache of a kernel is keyed on its own source file only; after editing this file,
delete the ``*.nbi``/``*.nbc`` files of gemm/conv in ``__pycache__`` (or change gemm.py/conv.py).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .act import (
    ACT_CLIP,
    ACT_HARD_SIGMOID,
    ACT_HARD_SWISH,
    ACT_LEAKY_RELU,
    ACT_NONE,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_SWISH,
)
from .config import GEMM_TILE
from .sigmoid_ir import emit_sigmoid, emit_swish, fmuladd

#: rows of the register tile, floats per vector, vectors per tile row, k steps per unrolled iteration
#: (per platform, see config.GEMM_TILE)
MR, VW, NV, UNROLL = GEMM_TILE
#: columns of the register tile
NR = NV * VW

#: ``flags`` bits of the microkernel
UK_ACCUMULATE = 1  # start from the values in C (K-blocking) instead of 0
UK_BIAS = 2        # add bias[bias_off + r] to every element of row r
UK_BIAS_COL = 4    # add bias[bias_off + j] to every element of column j

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _const_i64(v):
    return ir.Constant(_I64, v)


def _arg_readers(context, builder, signature, args):
    """(i64, data) for an intrinsic's codegen: ``i64(k)`` is argument k cast to int64, ``data(k, off_k)``
    the data pointer of array argument k advanced by the int64 value of argument ``off_k`` (if given)."""
    at = signature.args

    def i64(k):
        return context.cast(builder, args[k], at[k], types.int64)

    def data(k, off_k=None):
        ptr = context.make_array(at[k])(context, builder, value=args[k]).data
        return ptr if off_k is None else builder.gep(ptr, [i64(off_k)])

    return i64, data


def _splat(builder, vecty, scalar):
    undef = ir.Constant(vecty, ir.Undefined)
    v = builder.insert_element(undef, scalar, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, vecty.count), [0] * vecty.count)
    return builder.shuffle_vector(v, undef, mask)


def _vec_const(vecty, value):
    return ir.Constant(vecty, [float(np.float32(value))] * vecty.count)


def _select_lt(builder, x, y, then_v, else_v):
    """x < y ? then_v : else_v (ordered: NaN x keeps else_v)."""
    return builder.select(builder.fcmp_ordered("<", x, y), then_v, else_v)


def _select_gt(builder, x, y, then_v, else_v):
    return builder.select(builder.fcmp_ordered(">", x, y), then_v, else_v)


def _act_ir(builder, code, x, va, vb, vecty):
    """IR for the in-register activation ``code`` on vector ``x`` (NaN-propagating, like act.apply_act)."""
    zero = _vec_const(vecty, 0.0)
    one = _vec_const(vecty, 1.0)
    if code == ACT_NONE:
        return x
    if code == ACT_RELU:
        return _select_lt(builder, x, zero, zero, x)
    if code == ACT_CLIP:
        t = _select_lt(builder, x, va, va, x)
        return _select_gt(builder, t, vb, vb, t)
    if code == ACT_LEAKY_RELU:
        return _select_lt(builder, x, zero, builder.fmul(x, va), x)
    if code == ACT_HARD_SWISH:
        t = fmuladd(builder, x, _vec_const(vecty, 1.0 / 6.0), _vec_const(vecty, 0.5))
        t = _select_lt(builder, t, zero, zero, t)
        t = _select_gt(builder, t, one, one, t)
        return builder.fmul(x, t)
    if code == ACT_HARD_SIGMOID:
        t = fmuladd(builder, x, va, vb)
        t = _select_lt(builder, t, zero, zero, t)
        return _select_gt(builder, t, one, one, t)
    if code == ACT_SIGMOID:
        return emit_sigmoid(builder, x)
    if code == ACT_SWISH:
        return emit_swish(builder, x, va)
    raise AssertionError(code)


_IR_ACTS = (ACT_RELU, ACT_CLIP, ACT_LEAKY_RELU, ACT_HARD_SWISH, ACT_HARD_SIGMOID, ACT_SIGMOID, ACT_SWISH)


def _emit_microkernel(context, builder, mr, nv, vw, unroll, kc, a_ptr, b_ptr, c_ptr, ldc, flags,
                      bias_ptr, act, alpha, beta, mrows, ncols, bstride=None, b_base=None):
    """Emit one tile update at the builder's position; ``mrows`` (<= mr) rows and ``ncols`` (<= nv*vw)
    columns of C are read/written (edge tiles use masked vector loads/stores).

    ``b_base`` (a float pointer) switches B to a row table: ``b_ptr`` then walks an int64 table with
    ``bstride`` elements per k step, and row k of B starts at ``b_base + table[k]``."""
    vecty = ir.VectorType(_F32, vw)
    vptr = vecty.as_pointer()
    maskty = ir.VectorType(ir.IntType(1), vw)
    bs = nv * vw if bstride is None else bstride  # floats per k step in the B panel (an int, or an i64 value)

    def b_off(k):
        """offset of k steps down the B panel"""
        if isinstance(bs, int):
            return _const_i64(k * bs)
        return builder.mul(_const_i64(k), bs)

    fn = builder.function
    module = builder.module
    fmuladd = cgutils.get_or_insert_function(
        module, ir.FunctionType(vecty, [vecty, vecty, vecty]), f"llvm.fmuladd.v{vw}f32")
    mload = cgutils.get_or_insert_function(
        module, ir.FunctionType(vecty, [vptr, _I32, maskty, vecty]), f"llvm.masked.load.v{vw}f32.p0")
    mstore = cgutils.get_or_insert_function(
        module, ir.FunctionType(ir.VoidType(), [vecty, vptr, _I32, maskty]),
        f"llvm.masked.store.v{vw}f32.p0")
    nacc = mr * nv
    cols_full = builder.icmp_signed(">=", ncols, _const_i64(nv * vw))
    full = builder.and_(builder.icmp_signed(">=", mrows, _const_i64(mr)), cols_full)

    def edge_masks():
        """mask[r][v]: lanes of row r, vector v that lie inside the mrows x ncols edge tile."""
        lanes = ir.Constant(ir.VectorType(_I32, vw), list(range(vw)))
        out = []
        for r in range(mr):
            row_ok = builder.icmp_signed("<", _const_i64(r), mrows)
            row = []
            for v in range(nv):
                rem = builder.trunc(builder.sub(ncols, _const_i64(v * vw)), _I32)
                rem = builder.select(row_ok, rem, ir.Constant(_I32, 0))
                row.append(builder.icmp_signed("<", lanes, _splat(builder, ir.VectorType(_I32, vw), rem)))
            out.append(row)
        return out

    def row_col_ptr(r, v):
        off = builder.add(builder.mul(_const_i64(r), ldc), _const_i64(v * vw))
        return builder.bitcast(builder.gep(c_ptr, [off]), vptr)

    # ---- initial accumulators: 0, or C, plus bias -------------------------------------------------------
    bb_entry = builder.block
    bb_load_c = fn.append_basic_block("uk.load_c")
    bb_after_c = fn.append_basic_block("uk.after_c")
    bb_bias = fn.append_basic_block("uk.bias")
    bb_after_bias = fn.append_basic_block("uk.after_bias")

    zero_v = _vec_const(vecty, 0.0)
    is_acc = builder.icmp_unsigned("!=", builder.and_(flags, _const_i64(UK_ACCUMULATE)), _const_i64(0))
    bb_acc = fn.append_basic_block("uk.acc")
    builder.cbranch(is_acc, bb_acc, bb_after_c)
    builder.position_at_end(bb_acc)

    bb_load_edge = fn.append_basic_block("uk.load_c_edge")
    bb_load_rows = fn.append_basic_block("uk.load_c_rows")
    bb_load_cols = fn.append_basic_block("uk.load_c_cols")
    builder.cbranch(full, bb_load_c, bb_load_edge)
    builder.position_at_end(bb_load_c)
    c_vals = [builder.load(row_col_ptr(r, v), align=4) for r in range(mr) for v in range(nv)]
    builder.branch(bb_after_c)
    builder.position_at_end(bb_load_edge)
    builder.cbranch(cols_full, bb_load_rows, bb_load_cols)
    # missing rows only: plain loads, rows past mrows read row 0 instead and become 0 (no masks)
    builder.position_at_end(bb_load_rows)
    c_rows = []
    for r in range(mr):
        ok = builder.icmp_signed("<", _const_i64(r), mrows)
        for v in range(nv):
            p = builder.select(ok, row_col_ptr(r, v), row_col_ptr(0, v))
            c_rows.append(builder.select(ok, builder.load(p, align=4), zero_v))
    builder.branch(bb_after_c)
    # missing columns: masked loads
    builder.position_at_end(bb_load_cols)
    masks = edge_masks()
    c_edge = [builder.call(mload, [row_col_ptr(r, v), ir.Constant(_I32, 4), masks[r][v], zero_v])
              for r in range(mr) for v in range(nv)]
    builder.branch(bb_after_c)

    builder.position_at_end(bb_after_c)
    init = []
    for i in range(nacc):
        phi = builder.phi(vecty)
        phi.add_incoming(zero_v, bb_entry)
        phi.add_incoming(c_vals[i], bb_load_c)
        phi.add_incoming(c_rows[i], bb_load_rows)
        phi.add_incoming(c_edge[i], bb_load_cols)
        init.append(phi)
    # per-row bias (UK_BIAS): bias[r] splat over row r
    prev_block, prev = bb_after_c, init
    has_bias = builder.icmp_unsigned("!=", builder.and_(flags, _const_i64(UK_BIAS)), _const_i64(0))
    builder.cbranch(has_bias, bb_bias, bb_after_bias)
    builder.position_at_end(bb_bias)
    with_bias = []
    for r in range(mr):
        bval = builder.load(builder.gep(bias_ptr, [_const_i64(r)]), align=4)
        bvec = _splat(builder, vecty, bval)
        for v in range(nv):
            with_bias.append(builder.fadd(prev[r * nv + v], bvec))
    builder.branch(bb_after_bias)
    builder.position_at_end(bb_after_bias)
    mid = []
    for i in range(nacc):
        phi = builder.phi(vecty)
        phi.add_incoming(prev[i], prev_block)
        phi.add_incoming(with_bias[i], bb_bias)
        mid.append(phi)
    # per-column bias (UK_BIAS_COL): bias[v*vw : v*vw+vw] added to every row
    bb_bias_col = fn.append_basic_block("uk.bias_col")
    bb_after_col = fn.append_basic_block("uk.after_bias_col")
    has_col = builder.icmp_unsigned("!=", builder.and_(flags, _const_i64(UK_BIAS_COL)), _const_i64(0))
    builder.cbranch(has_col, bb_bias_col, bb_after_col)
    builder.position_at_end(bb_bias_col)
    bcols = [builder.load(builder.bitcast(builder.gep(bias_ptr, [_const_i64(v * vw)]), vptr), align=4)
             for v in range(nv)]
    with_col = [builder.fadd(mid[r * nv + v], bcols[v]) for r in range(mr) for v in range(nv)]
    builder.branch(bb_after_col)
    builder.position_at_end(bb_after_col)
    acc0 = []
    for i in range(nacc):
        phi = builder.phi(vecty)
        phi.add_incoming(mid[i], bb_after_bias)
        phi.add_incoming(with_col[i], bb_bias_col)
        acc0.append(phi)

    def k_step(accs, ap, bp, k, rows):
        """One k step on the accumulators of rows < ``rows`` (the others pass through), reading A at
        ap[k*mr + r], B at bp[k*nr + v*vw]."""
        bvecs = []
        if b_base is not None:
            row = builder.gep(b_base, [builder.load(builder.gep(bp, [b_off(k)], inbounds=True), align=8)])
        for v in range(nv):
            if b_base is not None:
                p = builder.gep(row, [_const_i64(v * vw)])
            else:
                p = builder.gep(bp, [builder.add(b_off(k), _const_i64(v * vw))], inbounds=True)
            bvecs.append(builder.load(builder.bitcast(p, vptr), align=4))
        out = list(accs)
        for r in range(rows):
            aval = builder.load(builder.gep(ap, [_const_i64(k * mr + r)], inbounds=True), align=4)
            avec = _splat(builder, vecty, aval)
            for v in range(nv):
                out[r * nv + v] = builder.call(fmuladd, [avec, bvecs[v], out[r * nv + v]])
        return out

    def k_loops(rows, acc_in, tag):
        """The k loop (unrolled by ``unroll``, then single steps) on the accumulators of rows < ``rows``,
        starting from ``acc_in`` at the builder's block; returns (final accumulators, the block they are
        defined in)."""
        bb_start = builder.block
        bb_loop4 = fn.append_basic_block(f"uk.loop4{tag}")
        bb_mid = fn.append_basic_block(f"uk.mid{tag}")
        bb_loop1 = fn.append_basic_block(f"uk.loop1{tag}")
        bb_done = fn.append_basic_block(f"uk.done{tag}")
        n4 = builder.udiv(kc, _const_i64(unroll)) if unroll > 1 else kc
        builder.cbranch(builder.icmp_signed(">", n4, _const_i64(0)), bb_loop4, bb_mid)
        # unrolled main loop
        builder.position_at_end(bb_loop4)
        i_phi = builder.phi(_I64)
        a_phi = builder.phi(a_ptr.type)
        b_phi = builder.phi(b_ptr.type)
        acc_phis = [builder.phi(vecty) for _ in range(nacc)]
        accs = acc_phis
        for u in range(unroll):
            accs = k_step(accs, a_phi, b_phi, u, rows)
        a_next = builder.gep(a_phi, [_const_i64(unroll * mr)], inbounds=True)
        b_next = builder.gep(b_phi, [b_off(unroll)], inbounds=True)
        i_next = builder.add(i_phi, _const_i64(1))
        bb_loop4_end = builder.block
        builder.cbranch(builder.icmp_signed("<", i_next, n4), bb_loop4, bb_mid)
        i_phi.add_incoming(_const_i64(0), bb_start)
        i_phi.add_incoming(i_next, bb_loop4_end)
        a_phi.add_incoming(a_ptr, bb_start)
        a_phi.add_incoming(a_next, bb_loop4_end)
        b_phi.add_incoming(b_ptr, bb_start)
        b_phi.add_incoming(b_next, bb_loop4_end)
        for i in range(nacc):
            acc_phis[i].add_incoming(acc_in[i], bb_start)
            acc_phis[i].add_incoming(accs[i], bb_loop4_end)
        # remainder: kc % unroll single steps
        builder.position_at_end(bb_mid)
        a_mid = builder.phi(a_ptr.type)
        a_mid.add_incoming(a_ptr, bb_start)
        a_mid.add_incoming(a_next, bb_loop4_end)
        b_mid = builder.phi(b_ptr.type)
        b_mid.add_incoming(b_ptr, bb_start)
        b_mid.add_incoming(b_next, bb_loop4_end)
        acc_mid = []
        for i in range(nacc):
            phi = builder.phi(vecty)
            phi.add_incoming(acc_in[i], bb_start)
            phi.add_incoming(accs[i], bb_loop4_end)
            acc_mid.append(phi)
        rem = builder.sub(kc, builder.mul(n4, _const_i64(unroll))) if unroll > 1 else _const_i64(0)
        builder.cbranch(builder.icmp_signed(">", rem, _const_i64(0)), bb_loop1, bb_done)
        builder.position_at_end(bb_loop1)
        j_phi = builder.phi(_I64)
        a1 = builder.phi(a_ptr.type)
        b1 = builder.phi(b_ptr.type)
        acc1 = [builder.phi(vecty) for _ in range(nacc)]
        accs1 = k_step(acc1, a1, b1, 0, rows)
        a1n = builder.gep(a1, [_const_i64(mr)], inbounds=True)
        b1n = builder.gep(b1, [b_off(1)], inbounds=True)
        j_next = builder.add(j_phi, _const_i64(1))
        bb_loop1_end = builder.block
        builder.cbranch(builder.icmp_signed("<", j_next, rem), bb_loop1, bb_done)
        j_phi.add_incoming(_const_i64(0), bb_mid)
        j_phi.add_incoming(j_next, bb_loop1_end)
        a1.add_incoming(a_mid, bb_mid)
        a1.add_incoming(a1n, bb_loop1_end)
        b1.add_incoming(b_mid, bb_mid)
        b1.add_incoming(b1n, bb_loop1_end)
        for i in range(nacc):
            acc1[i].add_incoming(acc_mid[i], bb_mid)
            acc1[i].add_incoming(accs1[i], bb_loop1_end)
        builder.position_at_end(bb_done)
        final = []
        for i in range(nacc):
            phi = builder.phi(vecty)
            phi.add_incoming(acc_mid[i], bb_mid)
            phi.add_incoming(accs1[i], bb_loop1_end)
            final.append(phi)
        return final, bb_done

    # An edge tile of at most ``short`` rows (the last row panel of M = 16, 32, 64, 128 against MR = 6) runs a
    # k loop over its live rows only: the rows past M were multiply-adds of zero, an eighth of the work at
    # M = 16 or 32 (its 4 x NV accumulators still cover the FMA latency). Every live element gets the same
    # operations in the same order: the same floats.
    short = mr - 2 if mr >= 6 else 0
    if short:
        bb_short = fn.append_basic_block("uk.short")
        bb_whole = fn.append_basic_block("uk.whole")
        bb_joined = fn.append_basic_block("uk.joined")
        builder.cbranch(builder.icmp_signed("<=", mrows, _const_i64(short)), bb_short, bb_whole)
        builder.position_at_end(bb_short)
        final_short, end_short = k_loops(short, acc0, ".short")
        builder.branch(bb_joined)
        builder.position_at_end(bb_whole)
        final_whole, end_whole = k_loops(mr, acc0, "")
        builder.branch(bb_joined)
        builder.position_at_end(bb_joined)
        final = []
        for i in range(nacc):
            phi = builder.phi(vecty)
            phi.add_incoming(final_short[i], end_short)
            phi.add_incoming(final_whole[i], end_whole)
            final.append(phi)
    else:
        final, _ = k_loops(mr, acc0, "")

    # ---- epilogue: activation, store --------------------------------------------------------------------
    va = _splat(builder, vecty, alpha)
    vb = _splat(builder, vecty, beta)
    bb_exit = fn.append_basic_block("uk.exit")
    bb_plain = fn.append_basic_block("uk.act_none")
    switch = builder.switch(act, bb_plain)

    def store_all(vals):
        bb_full = fn.append_basic_block("uk.store_full")
        bb_edge = fn.append_basic_block("uk.store_edge")
        builder.cbranch(full, bb_full, bb_edge)
        builder.position_at_end(bb_full)
        for r in range(mr):
            for v in range(nv):
                builder.store(vals[r * nv + v], row_col_ptr(r, v), align=4)
        builder.branch(bb_exit)
        builder.position_at_end(bb_edge)
        bb_rows = fn.append_basic_block("uk.store_rows")
        bb_cols = fn.append_basic_block("uk.store_cols")
        builder.cbranch(cols_full, bb_rows, bb_cols)
        # missing rows only: rows past mrows store row 0's values to row 0 again (no masks, no branches;
        # masked stores are slow on some x86 parts and scalarized on NEON)
        builder.position_at_end(bb_rows)
        for r in range(mr):
            ok = builder.icmp_signed("<", _const_i64(r), mrows)
            for v in range(nv):
                p = builder.select(ok, row_col_ptr(r, v), row_col_ptr(0, v))
                builder.store(builder.select(ok, vals[r * nv + v], vals[v]), p, align=4)
        builder.branch(bb_exit)
        # missing columns: masked stores
        builder.position_at_end(bb_cols)
        masks = edge_masks()
        for r in range(mr):
            for v in range(nv):
                builder.call(mstore, [vals[r * nv + v], row_col_ptr(r, v), ir.Constant(_I32, 4), masks[r][v]])
        builder.branch(bb_exit)

    builder.position_at_end(bb_plain)
    store_all(final)
    for code in _IR_ACTS:
        bb = fn.append_basic_block(f"uk.act{code}")
        switch.add_case(_const_i64(code), bb)
        builder.position_at_end(bb)
        store_all([_act_ir(builder, code, x, va, vb, vecty) for x in final])
    builder.position_at_end(bb_exit)


# ---------------------------------------------------------------------------------------------------
# panel row copies (packing): LLVM does not vectorize 16-float copies between two float32 arrays that
# it cannot prove disjoint, so they are written as explicit vector loads and stores too
# ---------------------------------------------------------------------------------------------------
def _make_copy(nv, vw, stride):
    @intrinsic
    def copy_row(typingctx, dst, doff, src, soff):
        for arr in (dst, src):
            if not isinstance(arr, types.Array) or arr.dtype != types.float32:
                return None
        if not isinstance(doff, types.Integer) or not isinstance(soff, types.Integer):
            return None
        sig = types.void(dst, doff, src, soff)

        def codegen(context, builder, signature, args):
            _, data = _arg_readers(context, builder, signature, args)
            vecty = ir.VectorType(_F32, vw)
            wide = ir.VectorType(_F32, vw * stride)
            d = data(0, 1)
            s = data(2, 3)
            for v in range(nv):
                sp = builder.gep(s, [_const_i64(v * vw * stride)])
                val = builder.load(builder.bitcast(sp, wide.as_pointer()), align=4)
                if stride > 1:
                    mask = ir.Constant(ir.VectorType(_I32, vw), [i * stride for i in range(vw)])
                    val = builder.shuffle_vector(val, ir.Constant(wide, ir.Undefined), mask)
                dp = builder.gep(d, [_const_i64(v * vw)])
                builder.store(val, builder.bitcast(dp, vecty.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return copy_row


#: ``copy_nr(dst, doff, src, soff)``: dst[doff:doff+NR] = src[soff:soff+NR] (vector loads/stores)
copy_nr = _make_copy(NV, VW, 1)
#: ``copy_nr_s2(dst, doff, src, soff)``: dst[doff+t] = src[soff+2t], t < NR; reads src[soff:soff+2*NR]
copy_nr_s2 = _make_copy(NV, VW, 2)


def _emit_tile_loop(builder, n, a0, a_step, c0, c_step, bias0, bias_step, mrows_last, mr, emit_tile):
    """``for t in range(n)``: ``emit_tile(a_ptr, c_ptr, bias_ptr, mrows)`` on tile t of a panel (A, C and
    bias pointers advanced by their steps; the last tile has ``mrows_last`` rows, the others ``mr``)."""
    fn = builder.function
    bb_pre = builder.block
    bb_loop = fn.append_basic_block("panel.loop")
    bb_exit = fn.append_basic_block("panel.exit")
    builder.cbranch(builder.icmp_signed(">", n, _const_i64(0)), bb_loop, bb_exit)
    builder.position_at_end(bb_loop)
    t = builder.phi(_I64)
    ap_ = builder.phi(a0.type)
    cp_ = builder.phi(c0.type)
    bp_ = builder.phi(bias0.type)
    last = builder.icmp_signed("==", t, builder.sub(n, _const_i64(1)))
    emit_tile(ap_, cp_, bp_, builder.select(last, mrows_last, _const_i64(mr)))
    t_next = builder.add(t, _const_i64(1))
    a_next = builder.gep(ap_, [a_step])
    c_next = builder.gep(cp_, [c_step])
    b_next = builder.gep(bp_, [bias_step])
    bb_end = builder.block
    builder.cbranch(builder.icmp_signed("<", t_next, n), bb_loop, bb_exit)
    for phi, first, nxt in ((t, _const_i64(0), t_next), (ap_, a0, a_next), (cp_, c0, c_next), (bp_, bias0, b_next)):
        phi.add_incoming(first, bb_pre)
        phi.add_incoming(nxt, bb_end)
    builder.position_at_end(bb_exit)


def _make_panel_kernel(mr, nv, vw, unroll, bstride=None):
    """``bstride``: floats per k step of the B panel; None: NR (packed), "ldb": a trailing runtime
    argument (B read in place from a row-major matrix)."""

    def typer(ntiles, kc, ap, a_off, a_step, bp, b_off, c, c_off, c_step, ldc, flags, bias, bias_off,
              bias_step, act, alpha, beta, mrows_last, ncols, *ldb):
        for arr in (ap, bp, c, bias):
            if not isinstance(arr, types.Array) or arr.dtype != types.float32:
                return None
        for i in (ntiles, kc, a_off, a_step, b_off, c_off, c_step, ldc, flags, bias_off, bias_step, act,
                  mrows_last, ncols, *ldb):
            if not isinstance(i, types.Integer):
                return None
        for f in (alpha, beta):
            if not isinstance(f, (types.Float, types.Integer)):
                return None
        sig = types.void(ntiles, kc, ap, a_off, a_step, bp, b_off, c, c_off, c_step, ldc, flags, bias,
                         bias_off, bias_step, act, alpha, beta, mrows_last, ncols, *ldb)
        return sig, codegen

    def codegen(context, builder, signature, args):
        at = signature.args
        i64, data = _arg_readers(context, builder, signature, args)
        n = i64(0)
        kcv = i64(1)
        a0 = data(2, 3)
        b_ptr = data(5, 6)
        c0 = data(7, 8)
        bias0 = data(12, 13)
        a_step_v, c_step_v, bias_step_v = i64(4), i64(9), i64(14)
        ldc_v, flags_v, act_v = i64(10), i64(11), i64(15)
        alpha_v = context.cast(builder, args[16], at[16], types.float32)
        beta_v = context.cast(builder, args[17], at[17], types.float32)
        bs = i64(20) if bstride == "ldb" else bstride

        def tile(ap_, cp_, bp_, mrows):
            _emit_microkernel(context, builder, mr, nv, vw, unroll, kcv, ap_, b_ptr, cp_, ldc_v, flags_v,
                              bp_, act_v, alpha_v, beta_v, mrows, i64(19), bs)

        _emit_tile_loop(builder, n, a0, a_step_v, c0, c_step_v, bias0, bias_step_v, i64(18), mr, tile)
        return context.get_dummy_value()

    if bstride == "ldb":
        @intrinsic
        def microkernel_panel_ldb(typingctx, ntiles, kc, ap, a_off, a_step, bp, b_off, c, c_off, c_step, ldc,
                                  flags, bias, bias_off, bias_step, act, alpha, beta, mrows_last, ncols, ldb):
            return typer(ntiles, kc, ap, a_off, a_step, bp, b_off, c, c_off, c_step, ldc, flags, bias, bias_off,
                         bias_step, act, alpha, beta, mrows_last, ncols, ldb)

        return microkernel_panel_ldb

    @intrinsic
    def microkernel_panel(typingctx, ntiles, kc, ap, a_off, a_step, bp, b_off, c, c_off, c_step, ldc,
                          flags, bias, bias_off, bias_step, act, alpha, beta, mrows_last, ncols):
        return typer(ntiles, kc, ap, a_off, a_step, bp, b_off, c, c_off, c_step, ldc, flags, bias, bias_off,
                     bias_step, act, alpha, beta, mrows_last, ncols)

    return microkernel_panel


#: ``microkernel_panel(ntiles, kc, ap, a_off, a_step, bp, b_off, c, c_off, c_step, ldc, flags, bias,
#: bias_off, bias_step, act, alpha, beta, mrows_last, ncols)``: :data:`microkernel` on ``ntiles`` tiles
#: down one B panel, tile t reading A at ``a_off + t*a_step``, writing C at ``c_off + t*c_step`` with
#: bias at ``bias_off + t*bias_step``; the last tile has ``mrows_last`` rows, every tile ``ncols``
#: columns (the loop over the tiles runs in IR: no per-tile call overhead).
microkernel_panel = _make_panel_kernel(MR, NV, VW, UNROLL)
#: the same on the first VW columns only (B panels still NR wide): for a last panel of at most VW
#: columns it does half the work of :data:`microkernel_panel`
microkernel_panel_narrow = _make_panel_kernel(MR, 1, VW, UNROLL, bstride=NR)
#: :data:`microkernel_panel` reading B in place: one more argument ``ldb``, the floats between two k rows
#: of B (a full NR-column panel of a row-major matrix: no packing)
microkernel_panel_ldb = _make_panel_kernel(MR, NV, VW, UNROLL, bstride="ldb")


@intrinsic
def microkernel_panel_rows(typingctx, ntiles, kc, ap, a_off, a_step, ktab, t_off, src, s_off, c, c_off, c_step, ldc,
                           flags, bias, bias_off, bias_step, act, alpha, beta, mrows_last):
    """:data:`microkernel_panel` on a full NR-column panel read in place through a row table: row k of B
    is ``src[s_off + ktab_flat[t_off + 3*k] :][:NR]`` (``ktab`` an (K, 3) int64 table as gemm.conv_ktab
    builds it, first column the row offsets): the interior panels of a stride-1 convolution read the
    image directly, without im2col packing."""
    for arr in (ap, src, c, bias):
        if not isinstance(arr, types.Array) or arr.dtype != types.float32:
            return None
    if not isinstance(ktab, types.Array) or ktab.dtype != types.int64:
        return None
    for i in (ntiles, kc, a_off, a_step, t_off, s_off, c_off, c_step, ldc, flags, bias_off, bias_step, act,
              mrows_last):
        if not isinstance(i, types.Integer):
            return None
    for f in (alpha, beta):
        if not isinstance(f, (types.Float, types.Integer)):
            return None
    sig = types.void(ntiles, kc, ap, a_off, a_step, ktab, t_off, src, s_off, c, c_off, c_step, ldc, flags, bias,
                     bias_off, bias_step, act, alpha, beta, mrows_last)

    def codegen(context, builder, signature, args):
        at = signature.args
        i64, data = _arg_readers(context, builder, signature, args)
        n = i64(0)
        kcv = i64(1)
        a0 = data(2, 3)
        t_ptr = data(5, 6)
        s_base = data(7, 8)
        c0 = data(9, 10)
        bias0 = data(14, 15)
        a_step_v, c_step_v, bias_step_v = i64(4), i64(11), i64(16)
        ldc_v, flags_v, act_v = i64(12), i64(13), i64(17)
        alpha_v = context.cast(builder, args[18], at[18], types.float32)
        beta_v = context.cast(builder, args[19], at[19], types.float32)

        def tile(ap_, cp_, bp_, mrows):
            _emit_microkernel(context, builder, MR, NV, VW, UNROLL, kcv, ap_, t_ptr, cp_, ldc_v, flags_v, bp_,
                              act_v, alpha_v, beta_v, mrows, _const_i64(NR), 3, s_base)

        _emit_tile_loop(builder, n, a0, a_step_v, c0, c_step_v, bias0, bias_step_v, i64(20), MR, tile)
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------------------------------------------
# depthwise convolution rows and float copies
# ---------------------------------------------------------------------------------------------------
def _masked_fns(module, vw):
    vecty = ir.VectorType(_F32, vw)
    maskty = ir.VectorType(ir.IntType(1), vw)
    mload = cgutils.get_or_insert_function(
        module, ir.FunctionType(vecty, [vecty.as_pointer(), _I32, maskty, vecty]),
        f"llvm.masked.load.v{vw}f32.p0")
    mstore = cgutils.get_or_insert_function(
        module, ir.FunctionType(ir.VoidType(), [vecty, vecty.as_pointer(), _I32, maskty]),
        f"llvm.masked.store.v{vw}f32.p0")
    return mload, mstore


def _lane_mask(builder, vw, rem):
    """<vw x i1>: lane < rem (rem: i64)."""
    lanes = ir.Constant(ir.VectorType(_I32, vw), list(range(vw)))
    return builder.icmp_signed("<", lanes, _splat(builder, ir.VectorType(_I32, vw), builder.trunc(rem, _I32)))


def _emit_chunk_loop(builder, n, vw, body):
    """for each chunk of vw items of [0, n): body(builder, first_index, mask or None); the last,
    partial chunk gets a lane mask."""
    fn = builder.function
    bb_pre = builder.block
    bb_loop = fn.append_basic_block("chunk.loop")
    bb_tail_check = fn.append_basic_block("chunk.tail_check")
    bb_tail = fn.append_basic_block("chunk.tail")
    bb_exit = fn.append_basic_block("chunk.exit")
    nfull = builder.sdiv(n, _const_i64(vw))
    builder.cbranch(builder.icmp_signed(">", nfull, _const_i64(0)), bb_loop, bb_tail_check)
    builder.position_at_end(bb_loop)
    i = builder.phi(_I64)
    body(builder, builder.mul(i, _const_i64(vw)), None)
    i_next = builder.add(i, _const_i64(1))
    bb_loop_end = builder.block
    builder.cbranch(builder.icmp_signed("<", i_next, nfull), bb_loop, bb_tail_check)
    i.add_incoming(_const_i64(0), bb_pre)
    i.add_incoming(i_next, bb_loop_end)
    builder.position_at_end(bb_tail_check)
    start = builder.mul(nfull, _const_i64(vw))
    rem = builder.sub(n, start)
    builder.cbranch(builder.icmp_signed(">", rem, _const_i64(0)), bb_tail, bb_exit)
    builder.position_at_end(bb_tail)
    body(builder, start, _lane_mask(builder, vw, rem))
    builder.branch(bb_exit)
    builder.position_at_end(bb_exit)


def _emit_overlap_loop(builder, n, vw, full, scalar):
    """for each chunk of vw items of [0, n): ``full(builder, first_index)``; a partial last chunk runs as a
    full one ending at n (overlapping the chunk before it), and a run shorter than vw as ``scalar(builder,
    index)`` per item. No masked stores: AVX2's ``vmaskmovps`` store is microcoded on AMD Zen and NEON has
    none (LLVM stores lane by lane). Only for bodies that may write an item twice with the same value:
    copies between ranges that do not overlap."""
    vwc = _const_i64(vw)
    with builder.if_else(builder.icmp_signed(">=", n, vwc)) as (whole, short):
        with whole:
            with cgutils.for_range(builder, builder.sdiv(n, vwc)) as loop:
                full(builder, builder.mul(loop.index, vwc))
            with builder.if_then(builder.icmp_signed("!=", builder.srem(n, vwc), _const_i64(0))):
                full(builder, builder.sub(n, vwc))
        with short:
            with cgutils.for_range(builder, n) as loop:
                scalar(builder, loop.index)


def _make_dw_rows(kk, stride, nrows, vw=VW):
    """``nrows`` vertically adjacent output rows of a KxK depthwise convolution, each with bias first, then the
    taps in order. One row: any row dilation (``rstride`` is the kernel's row step). Several rows (the
    convolution's row stride and row dilation 1, ``rstride`` one input row): they share K - 1 input rows per
    pair, so each input vector is loaded once for all of them, and their accumulator chains are independent
    (one row's K*K fused multiply-adds form one chain, a latency-bound loop alone)."""
    @intrinsic
    def dw_rows(typingctx, n, out, ooff, ostride, pbuf, poff, rstride, dil, wts, woff, bias):
        for arr in (out, pbuf, wts):
            if not isinstance(arr, types.Array) or arr.dtype != types.float32:
                return None
        for i in (n, ooff, ostride, poff, rstride, dil, woff):
            if not isinstance(i, types.Integer):
                return None
        sig = types.void(n, out, ooff, ostride, pbuf, poff, rstride, dil, wts, woff, bias)

        def codegen(context, builder, signature, args):
            at = signature.args
            i64, data = _arg_readers(context, builder, signature, args)
            vecty = ir.VectorType(_F32, vw)
            wide = ir.VectorType(_F32, vw * stride)
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vecty, [vecty, vecty, vecty]), f"llvm.fmuladd.v{vw}f32")
            _, mstore = _masked_fns(builder.module, vw)
            optr0 = builder.gep(data(1), [i64(2)])
            optrs = [builder.gep(optr0, [builder.mul(_const_i64(k), i64(3))]) for k in range(nrows)]
            pptr = builder.gep(data(4), [i64(5)])
            rs = i64(6)
            dl = i64(7)
            wptr = builder.gep(data(8), [i64(9)])
            wv = [_splat(builder, vecty, builder.load(builder.gep(wptr, [_const_i64(t)]), align=4))
                  for t in range(kk * kk)]
            bv = _splat(builder, vecty, context.cast(builder, args[10], at[10], types.float32))
            even = ir.Constant(ir.VectorType(_I32, vw), [i * stride for i in range(vw)])

            def body(bld, ox, mask):
                base = bld.gep(pptr, [bld.mul(ox, _const_i64(stride))])
                accs = [bv] * nrows
                for r in range(kk + nrows - 1):  # input row r feeds kernel row r - k of output row k
                    for b in range(kk):
                        p = bld.gep(base, [bld.add(bld.mul(_const_i64(r), rs), bld.mul(_const_i64(b), dl))])
                        if stride == 1:
                            v = bld.load(bld.bitcast(p, vecty.as_pointer()), align=4)
                        else:
                            v = bld.load(bld.bitcast(p, wide.as_pointer()), align=4)
                            v = bld.shuffle_vector(v, ir.Constant(wide, ir.Undefined), even)
                        for k in range(nrows):
                            if 0 <= r - k < kk:
                                accs[k] = bld.call(fmuladd, [wv[(r - k) * kk + b], v, accs[k]])
                for optr, acc in zip(optrs, accs):
                    dst = bld.bitcast(bld.gep(optr, [ox]), vecty.as_pointer())
                    if mask is None:
                        bld.store(acc, dst, align=4)
                    else:
                        bld.call(mstore, [acc, dst, ir.Constant(_I32, 4), mask])

            _emit_chunk_loop(builder, i64(0), vw, body)
            return context.get_dummy_value()

        return sig, codegen

    return dw_rows


#: ``dw_row_K_S(n, out, ooff, ostride, pbuf, poff, rstride, dil, wts, woff, bias)``: one output row of a KxK
#: depthwise convolution with column stride S over a zero-padded plane (``ostride`` unused):
#: out[ooff + x] = bias + sum_{a,b<K} wts[woff + a*K + b] * pbuf[poff + a*rstride + b*dil + S*x], x < n.
#: Loads may read up to S*VW floats past the last tap of the row (pad the buffer); the last, partial
#: vector of the row is stored with a lane mask.
dw_row_3_1 = _make_dw_rows(3, 1, 1)
dw_row_3_2 = _make_dw_rows(3, 2, 1)
dw_row_5_1 = _make_dw_rows(5, 1, 1)
dw_row_5_2 = _make_dw_rows(5, 2, 1)
#: ``dw_rows2_K_S(n, out, ooff, ostride, pbuf, poff, rstride, dil, wts, woff, bias)``: output rows
#: ``out[ooff + x]`` and ``out[ooff + ostride + x]`` (x < n, each with its own lane-masked tail, no spill) of
#: :data:`dw_row_3_1`'s formula for input rows starting at ``poff`` and ``poff + rstride``: the same floats
#: (bias, then the taps in order), each input vector loaded once for both rows
dw_rows2_3_1 = _make_dw_rows(3, 1, 2)
dw_rows2_3_2 = _make_dw_rows(3, 2, 2)
dw_rows2_5_1 = _make_dw_rows(5, 1, 2)
dw_rows2_5_2 = _make_dw_rows(5, 2, 2)
dw_rows4_3_1 = _make_dw_rows(3, 1, 4)


@intrinsic
def copy_floats(typingctx, dst, doff, src, soff, n):
    """``copy_floats(dst, doff, src, soff, n)``: dst[doff:doff+n] = src[soff:soff+n] for ranges that do not
    overlap (vector loop, its last vector overlapping the one before, a scalar loop below one vector: reads and
    writes nothing outside the two ranges). Against a masked last chunk: a padded 10x10 plane's rows (three
    copies each) 30 -> 16 us for 128 channels on Zen 3."""
    for arr in (dst, src):
        if not isinstance(arr, types.Array) or arr.dtype != types.float32:
            return None
    for i in (doff, soff, n):
        if not isinstance(i, types.Integer):
            return None
    sig = types.void(dst, doff, src, soff, n)

    def codegen(context, builder, signature, args):
        i64, data = _arg_readers(context, builder, signature, args)

        vecty = ir.VectorType(_F32, VW)
        d = data(0, 1)
        s = data(2, 3)

        def full(bld, i):
            sp = bld.bitcast(bld.gep(s, [i]), vecty.as_pointer())
            dp = bld.bitcast(bld.gep(d, [i]), vecty.as_pointer())
            bld.store(bld.load(sp, align=4), dp, align=4)

        def scalar(bld, i):
            bld.store(bld.load(bld.gep(s, [i])), bld.gep(d, [i]))

        _emit_overlap_loop(builder, i64(4), VW, full, scalar)
        return context.get_dummy_value()

    return sig, codegen


class _VolatileStore(ir.instructions.StoreInstr):
    """``store volatile``: a plain store instruction that the code generator keeps as it is."""

    def descr(self, buf):
        val, ptr = self.operands
        align = f", align {self.align}" if self.align is not None else ""
        buf.append(f"store volatile {val.type} {val.get_reference()}, {ptr.type} {ptr.get_reference()}{align}"
                   f"{self._stringify_metadata(leading_comma=True)}\n")


def _store_plain(builder, value, ptr):
    """Store ``value`` (a vector) to ``ptr`` with one plain vector store. The code generator rewrites
    ``store (select c, v, (load p)), p`` (the lanes an in-place activation leaves alone) into a masked store
    of the changed lanes (``vmaskmovps``: microcoded on AMD Zen; lane by lane on NEON); it leaves volatile
    stores alone."""
    st = _VolatileStore(builder.block, value, ptr)
    st.align = 4
    builder._insert(st)
    return st


@intrinsic
def act_floats(typingctx, x, off, n, act, alpha, beta):
    """``act_floats(x, off, n, act, alpha, beta)``: x[off:off+n] = act(x[off:off+n]) in place, for the
    in-register activations (:data:`~edgedl.kernels.cpu.act.SIMPLE_ACTS`): the GEMM epilogue's own vector
    code (the same bits as a fused activation), one unconditional vector store per VW floats and a masked
    last chunk. Other codes leave x as it is (callers check). Written out because LLVM turns a Numba loop
    ``x[i] = 0 if x[i] < 0 else x[i]`` into a conditional store of the changed lanes: ``vmaskmovps`` on AVX
    (in-place Relu and LeakyRelu ran at 0.48 ns per float on Zen 3 against 0.07 for Clip, whose stores stay
    plain), one scalar store per lane on NEON."""
    if not isinstance(x, types.Array) or x.dtype != types.float32 or x.ndim != 1 or x.layout != "C":
        return None
    for i in (off, n, act):
        if not isinstance(i, types.Integer):
            return None
    for f in (alpha, beta):
        if not isinstance(f, types.Float):
            return None
    sig = types.void(x, off, n, act, alpha, beta)

    def codegen(context, builder, signature, args):
        i64, data = _arg_readers(context, builder, signature, args)
        vecty = ir.VectorType(_F32, VW)
        mload, mstore = _masked_fns(builder.module, VW)
        p = data(0, 1)
        at = signature.args
        va = _splat(builder, vecty, context.cast(builder, args[4], at[4], types.float32))
        vb = _splat(builder, vecty, context.cast(builder, args[5], at[5], types.float32))
        zero = _vec_const(vecty, 0.0)
        fn = builder.function
        bb_exit = fn.append_basic_block("act.exit")
        switch = builder.switch(i64(3), bb_exit)
        for code in _IR_ACTS:
            bb = fn.append_basic_block(f"act.code{code}")
            switch.add_case(_const_i64(code), bb)
            builder.position_at_end(bb)

            def body(bld, i, mask, code=code):
                ptr = bld.bitcast(bld.gep(p, [i]), vecty.as_pointer())
                if mask is None:
                    _store_plain(bld, _act_ir(bld, code, bld.load(ptr, align=4), va, vb, vecty), ptr)
                else:
                    v = bld.call(mload, [ptr, ir.Constant(_I32, 4), mask, zero])
                    bld.call(mstore, [_act_ir(bld, code, v, va, vb, vecty), ptr, ir.Constant(_I32, 4), mask])

            _emit_chunk_loop(builder, i64(2), VW, body)
            builder.branch(bb_exit)
        builder.position_at_end(bb_exit)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def split_pairs(typingctx, n, even, eoff, odd, ooff, src, soff):
    """``split_pairs(n, even, eoff, odd, ooff, src, soff)``: for t < n, even[eoff + t] = src[soff + 2t] and
    odd[ooff + t] = src[soff + 2t + 1] (a stride-2 convolution's two column phases of one input row): two
    vector loads split by two shuffles per VW pairs, the last VW pairs overlapping the ones before, a scalar
    loop below VW pairs (reads src[soff:soff+2n] only; the three ranges must not overlap)."""
    for arr in (even, odd, src):
        if not isinstance(arr, types.Array) or arr.dtype != types.float32:
            return None
    for i in (n, eoff, ooff, soff):
        if not isinstance(i, types.Integer):
            return None
    sig = types.void(n, even, eoff, odd, ooff, src, soff)

    def codegen(context, builder, signature, args):
        i64, data = _arg_readers(context, builder, signature, args)
        vw = VW
        vecty = ir.VectorType(_F32, vw)
        wide = ir.VectorType(_F32, 2 * vw)
        e = data(1, 2)
        o = data(3, 4)
        sp0 = data(5, 6)
        evens = ir.Constant(ir.VectorType(_I32, vw), [2 * i for i in range(vw)])
        odds = ir.Constant(ir.VectorType(_I32, vw), [2 * i + 1 for i in range(vw)])

        def full(bld, i):
            sp = bld.bitcast(bld.gep(sp0, [bld.mul(i, _const_i64(2))]), wide.as_pointer())
            pair = bld.load(sp, align=4)
            ev = bld.shuffle_vector(pair, ir.Constant(wide, ir.Undefined), evens)
            od = bld.shuffle_vector(pair, ir.Constant(wide, ir.Undefined), odds)
            bld.store(ev, bld.bitcast(bld.gep(e, [i]), vecty.as_pointer()), align=4)
            bld.store(od, bld.bitcast(bld.gep(o, [i]), vecty.as_pointer()), align=4)

        def scalar(bld, i):
            i2 = bld.mul(i, _const_i64(2))
            bld.store(bld.load(bld.gep(sp0, [i2])), bld.gep(e, [i]))
            bld.store(bld.load(bld.gep(sp0, [bld.add(i2, _const_i64(1))])), bld.gep(o, [i]))

        _emit_overlap_loop(builder, i64(0), vw, full, scalar)
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------------------------------------------
# channel-interleaved depthwise convolution
# ---------------------------------------------------------------------------------------------------
#: output pixels computed together by :data:`dw_ci_rows` (independent accumulator chains per tap)
DWCI_PIXELS = 4


def _counted_loop(builder, count, name, at_least_once=False):
    """Open ``for i in range(count)`` (count: i64, may be <= 0 unless ``at_least_once``: then the body
    runs first and its values dominate the code after the loop); returns (i, close) where ``close()``
    ends the loop body and leaves the builder after the loop."""
    fn = builder.function
    bb_pre = builder.block
    bb_loop = fn.append_basic_block(f"{name}.loop")
    bb_exit = fn.append_basic_block(f"{name}.exit")
    if at_least_once:
        builder.branch(bb_loop)
    else:
        builder.cbranch(builder.icmp_signed(">", count, _const_i64(0)), bb_loop, bb_exit)
    builder.position_at_end(bb_loop)
    i = builder.phi(_I64)
    i.add_incoming(_const_i64(0), bb_pre)

    def close():
        i_next = builder.add(i, _const_i64(1))
        i.add_incoming(i_next, builder.block)
        builder.cbranch(builder.icmp_signed("<", i_next, count), bb_loop, bb_exit)
        builder.position_at_end(bb_exit)

    return i, close


def _make_ci_rows(is_max: bool):
    """The interleaved-channel tap kernel: weighted sums (depthwise convolution) or maxima (max pooling)."""

    def typer(typingctx, nrows, ncols, out, ooff, pin, poff, prow, pcol, taps, ntaps, wts, woff, bias, boff):
        for arr in (out, pin, wts, bias):
            if not isinstance(arr, types.Array) or arr.dtype != types.float32:
                return None
        if not isinstance(taps, types.Array) or taps.dtype != types.int64:
            return None
        for i in (nrows, ncols, ooff, poff, prow, pcol, ntaps, woff, boff):
            if not isinstance(i, types.Integer):
                return None
        sig = types.void(nrows, ncols, out, ooff, pin, poff, prow, pcol, taps, ntaps, wts, woff, bias, boff)
        return sig, codegen

    def codegen(context, builder, signature, args):
        i64, data = _arg_readers(context, builder, signature, args)

        vw = VW
        npx = DWCI_PIXELS
        vecty = ir.VectorType(_F32, vw)
        vptr = vecty.as_pointer()
        fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vecty, [vecty, vecty, vecty]), f"llvm.fmuladd.v{vw}f32")
        nrows_v, ncols_v = i64(0), i64(1)
        optr = builder.gep(data(2), [i64(3)])
        pptr = builder.gep(data(4), [i64(5)])
        prow_v, pcol_v = i64(6), i64(7)
        tptr = data(8)
        ntaps_v = i64(9)
        wptr = builder.gep(data(10), [i64(11)])
        if is_max:
            start_vec = _vec_const(vecty, float("-inf"))
        else:
            start_vec = builder.load(builder.bitcast(builder.gep(data(12), [i64(13)]), vptr), align=4)
        ngroups = builder.sdiv(ncols_v, _const_i64(npx))

        def combine(acc, v, wv):
            if is_max:  # v > acc (ordered): a NaN never wins, as in the window kernel
                return builder.select(builder.fcmp_ordered(">", v, acc), v, acc)
            return builder.call(fmuladd, [wv, v, acc])

        def pixels(row_in, row_out, c0, count):
            """``count`` pixels from column c0 of one row: a tap loop carrying ``count`` accumulators."""
            ins = [builder.gep(row_in, [builder.mul(builder.add(c0, _const_i64(p)), pcol_v)])
                   for p in range(count)]
            bb_pre = builder.block
            t, close = _counted_loop(builder, ntaps_v, "dwci.taps", at_least_once=True)
            accs = [builder.phi(vecty) for _ in range(count)]
            for a in accs:
                a.add_incoming(start_vec, bb_pre)
            wv = None
            if not is_max:
                wv = builder.load(builder.bitcast(builder.gep(wptr, [builder.mul(t, _const_i64(vw))]), vptr),
                                  align=4)
            toff = builder.load(builder.gep(tptr, [t]), align=8)
            new = [combine(accs[p], builder.load(builder.bitcast(builder.gep(ins[p], [toff]), vptr), align=4), wv)
                   for p in range(count)]
            bb_body = builder.block
            for a, v in zip(accs, new):
                a.add_incoming(v, bb_body)
            close()
            # after the loop: the final values (ntaps >= 1 is the caller's contract)
            for p in range(count):
                dst = builder.gep(row_out, [builder.mul(builder.add(c0, _const_i64(p)), _const_i64(vw))])
                builder.store(new[p], builder.bitcast(dst, vptr), align=4)

        r, close_rows = _counted_loop(builder, nrows_v, "dwci.rows")
        row_in = builder.gep(pptr, [builder.mul(r, prow_v)])
        row_out = builder.gep(optr, [builder.mul(builder.mul(r, ncols_v), _const_i64(vw))])
        g, close_groups = _counted_loop(builder, ngroups, "dwci.groups")
        pixels(row_in, row_out, builder.mul(g, _const_i64(npx)), npx)
        close_groups()
        start = builder.mul(ngroups, _const_i64(npx))
        rem = builder.sub(ncols_v, start)
        c, close_rem = _counted_loop(builder, rem, "dwci.rem")
        pixels(row_in, row_out, builder.add(start, c), 1)
        close_rem()
        close_rows()
        return context.get_dummy_value()

    return intrinsic(typer)


#: ``dw_ci_rows(nrows, ncols, out, ooff, pin, poff, prow, pcol, taps, ntaps, wts, woff, bias, boff)``:
#: depthwise convolution of VW interleaved channels (every pixel is one ``<VW x float>``)::
#:
#:     out[ooff + (r*ncols + c)*VW + l] = bias[boff + l]
#:         + sum_{t < ntaps} wts[woff + t*VW + l] * pin[poff + r*prow + c*pcol + taps[t] + l]
#:
#: for r < nrows, c < ncols, l < VW. ``DWCI_PIXELS`` pixels of a row share each weight load and keep
#: their own accumulator; the taps are summed in order (as the row kernels do).
dw_ci_rows = _make_ci_rows(False)
#: ``max_ci_rows(...)``, the same arguments (``wts`` and ``bias`` unread): the maximum over the taps instead,
#: starting from -inf; a tap wins only when greater (NaN never does), as in max pooling's window kernel
max_ci_rows = _make_ci_rows(True)


def _transpose_vectors(builder, rows, vw):
    """Transpose vw vectors of vw floats (vw a power of two) by log2(vw) rounds of perfect shuffles."""
    half = vw // 2
    lo = ir.Constant(ir.VectorType(_I32, vw), [i // 2 + (vw if i % 2 else 0) for i in range(vw)])
    hi = ir.Constant(ir.VectorType(_I32, vw), [half + i // 2 + (vw if i % 2 else 0) for i in range(vw)])
    for _ in range(vw.bit_length() - 1):
        nxt = [None] * vw
        for i in range(half):
            a, b = rows[i], rows[i + half]
            nxt[2 * i] = builder.shuffle_vector(a, b, lo)
            nxt[2 * i + 1] = builder.shuffle_vector(a, b, hi)
        rows = nxt
    return rows


def _transpose_codegen(scatter):
    def codegen(context, builder, signature, args):
        i64, data = _arg_readers(context, builder, signature, args)

        vw = VW
        vptr = ir.VectorType(_F32, vw).as_pointer()
        dst = data(1)
        s0 = data(4, 5)
        sstride_v = i64(6)
        if scatter:
            dofs = data(2)
        else:
            d0 = builder.gep(dst, [i64(2)])
            dstride_v = i64(3)
        nchunks = builder.sdiv(i64(0), _const_i64(vw))
        i, close = _counted_loop(builder, nchunks, "transpose")
        j0 = builder.mul(i, _const_i64(vw))
        rows = [builder.load(builder.bitcast(builder.gep(s0, [builder.add(builder.mul(_const_i64(r), sstride_v),
                                                                                     j0)]), vptr), align=4)
                for r in range(vw)]
        for q, v in enumerate(_transpose_vectors(builder, rows, vw)):
            j = builder.add(j0, _const_i64(q))
            if scatter:
                p = builder.gep(dst, [builder.load(builder.gep(dofs, [builder.add(i64(3), j)]), align=8)])
            else:
                p = builder.gep(d0, [builder.mul(j, dstride_v)])
            builder.store(v, builder.bitcast(p, vptr), align=4)
        close()
        return context.get_dummy_value()

    return codegen


@intrinsic
def transpose_tiles(typingctx, ncols, dst, doff, dstride, src, soff, sstride):
    """``transpose_tiles(ncols, dst, doff, dstride, src, soff, sstride)``: for every whole chunk of VW
    columns j0 of [0, ncols): dst[doff + (j0 + q)*dstride + r] = src[soff + r*sstride + j0 + q] for
    q, r < VW (a VW x VW transpose in registers per chunk). The last ncols % VW columns are not touched:
    the caller finishes them."""
    for arr in (dst, src):
        if not isinstance(arr, types.Array) or arr.dtype != types.float32:
            return None
    for i in (ncols, doff, dstride, soff, sstride):
        if not isinstance(i, types.Integer):
            return None
    return types.void(ncols, dst, doff, dstride, src, soff, sstride), _transpose_codegen(False)


@intrinsic
def transpose_scatter(typingctx, ncols, dst, dofs, dofs_off, src, soff, sstride):
    """``transpose_scatter(ncols, dst, dofs, dofs_off, src, soff, sstride)``: :data:`transpose_tiles`
    with each transposed vector stored at an offset from a table: for every whole chunk j0 of VW columns
    of [0, ncols), dst[dofs[dofs_off + j0 + q] + r] = src[soff + r*sstride + j0 + q], q, r < VW."""
    for arr in (dst, src):
        if not isinstance(arr, types.Array) or arr.dtype != types.float32:
            return None
    if not isinstance(dofs, types.Array) or dofs.dtype != types.int64:
        return None
    for i in (ncols, dofs_off, soff, sstride):
        if not isinstance(i, types.Integer):
            return None
    return types.void(ncols, dst, dofs, dofs_off, src, soff, sstride), _transpose_codegen(True)


# ---------------------------------------------------------------------------------------------------
# 2x2 stride-2 pooling rows
# ---------------------------------------------------------------------------------------------------
def _make_pool2x2(is_max: bool):
    @intrinsic
    def pool2x2_row(typingctx, n, out, ooff, src, aoff, boff):
        for arr in (out, src):
            if not isinstance(arr, types.Array) or arr.dtype != types.float32:
                return None
        for i in (n, ooff, aoff, boff):
            if not isinstance(i, types.Integer):
                return None
        sig = types.void(n, out, ooff, src, aoff, boff)

        def codegen(context, builder, signature, args):
            i64, data = _arg_readers(context, builder, signature, args)

            vw = VW
            vecty = ir.VectorType(_F32, vw)
            wide = ir.VectorType(_F32, 2 * vw)
            optr = data(1, 2)
            sptr = data(3)
            aptr = builder.gep(sptr, [i64(4)])
            bptr = builder.gep(sptr, [i64(5)])
            even = ir.Constant(ir.VectorType(_I32, vw), [2 * i for i in range(vw)])
            odd = ir.Constant(ir.VectorType(_I32, vw), [2 * i + 1 for i in range(vw)])
            nchunks = builder.sdiv(i64(0), _const_i64(vw))
            i, close = _counted_loop(builder, nchunks, "pool2x2")
            j = builder.mul(i, _const_i64(2 * vw))
            a = builder.load(builder.bitcast(builder.gep(aptr, [j]), wide.as_pointer()), align=4)
            b = builder.load(builder.bitcast(builder.gep(bptr, [j]), wide.as_pointer()), align=4)
            undef = ir.Constant(wide, ir.Undefined)
            if is_max:
                # as the generic kernel: m = -inf, then m = v > m ? v : m over the rows, then the columns
                # (NaN inputs are skipped; a window of NaNs gives -inf)
                ninf = ir.Constant(wide, [float("-inf")] * (2 * vw))
                m = _select_gt(builder, a, ninf, a, ninf)
                m = _select_gt(builder, b, m, b, m)
                e = builder.shuffle_vector(m, undef, even)
                o = builder.shuffle_vector(m, undef, odd)
                r = _select_gt(builder, o, e, o, e)
            else:
                s = builder.fadd(a, b)
                r = builder.fmul(builder.fadd(builder.shuffle_vector(s, undef, even),
                                              builder.shuffle_vector(s, undef, odd)), _vec_const(vecty, 0.25))
            builder.store(r, builder.bitcast(builder.gep(optr, [builder.mul(i, _const_i64(vw))]),
                                             vecty.as_pointer()), align=4)
            close()
            return context.get_dummy_value()

        return sig, codegen

    return pool2x2_row


#: ``pool2x2_max_row(n, out, ooff, src, aoff, boff)``: for every whole chunk of VW outputs i < n,
#: out[ooff + i] = max of src[aoff + 2i], src[aoff + 2i + 1], src[boff + 2i], src[boff + 2i + 1] (NaN
#: skipped, as the generic pooling kernel does); the last n % VW outputs are left to the caller.
pool2x2_max_row = _make_pool2x2(True)
#: the same with the mean of the four
pool2x2_avg_row = _make_pool2x2(False)


# ---------------------------------------------------------------------------------------------------
# (de)interleaving a few channels: the NHWC <-> NCHW transposes of images with 2 to 4 channels
# ---------------------------------------------------------------------------------------------------
def _make_channel_shuffle(nch: int, split: bool):
    @intrinsic
    def shuffle_channels(typingctx, npix, dst, doff, src, soff, plane):
        for arr in (dst, src):
            if not isinstance(arr, types.Array) or arr.dtype.bitwidth != 32 or arr.dtype != dst.dtype:
                return None
        for i in (npix, doff, soff, plane):
            if not isinstance(i, types.Integer):
                return None
        sig = types.void(npix, dst, doff, src, soff, plane)

        def codegen(context, builder, signature, args):
            i64, data = _arg_readers(context, builder, signature, args)

            vw = VW
            elt = ir.IntType(32)
            vec = ir.VectorType(elt, vw)
            big = ir.VectorType(elt, vw * nch)
            dptr = builder.bitcast(data(1, 2), elt.as_pointer())
            sptr = builder.bitcast(data(3, 4), elt.as_pointer())
            plane_v = i64(5)
            nchunks = builder.sdiv(i64(0), _const_i64(vw))
            i, close = _counted_loop(builder, nchunks, "chshuf")
            p0 = builder.mul(i, _const_i64(vw))
            if split:
                # src pixels p0.. of interleaved channels -> nch planes
                v = builder.load(builder.bitcast(builder.gep(sptr, [builder.mul(p0, _const_i64(nch))]),
                                                 big.as_pointer()), align=4)
                for c in range(nch):
                    mask = ir.Constant(ir.VectorType(_I32, vw), [q * nch + c for q in range(vw)])
                    part = builder.shuffle_vector(v, ir.Constant(big, ir.Undefined), mask)
                    p = builder.gep(dptr, [builder.add(builder.mul(_const_i64(c), plane_v), p0)])
                    builder.store(part, builder.bitcast(p, vec.as_pointer()), align=4)
            else:
                # nch planes -> interleaved pixels: concatenate the plane vectors, then interleave
                parts = [builder.load(builder.bitcast(builder.gep(sptr, [builder.add(
                    builder.mul(_const_i64(c), plane_v), p0)]), vec.as_pointer()), align=4) for c in range(nch)]
                cat = parts[0]
                for c in range(1, nch):
                    width = vw * c
                    widen = ir.Constant(ir.VectorType(_I32, width + vw), list(range(width + vw)))
                    if width != vw:  # pad the shorter operand to the accumulated width first
                        pad = ir.Constant(ir.VectorType(_I32, width), list(range(vw)) + [vw] * (width - vw))
                        nxt = builder.shuffle_vector(parts[c], ir.Constant(vec, ir.Undefined), pad)
                        widen = ir.Constant(ir.VectorType(_I32, width + vw), list(range(width)) +
                                            [width + t for t in range(vw)])
                        cat = builder.shuffle_vector(cat, nxt, widen)
                    else:
                        cat = builder.shuffle_vector(cat, parts[c], widen)
                mask = ir.Constant(ir.VectorType(_I32, vw * nch), [(k % nch) * vw + k // nch for k in range(vw * nch)])
                v = builder.shuffle_vector(cat, ir.Constant(big, ir.Undefined), mask)
                builder.store(v, builder.bitcast(builder.gep(dptr, [builder.mul(p0, _const_i64(nch))]),
                                                 big.as_pointer()), align=4)
            close()
            return context.get_dummy_value()

        return sig, codegen

    return shuffle_channels


#: ``split_channels_C(npix, dst, doff, src, soff, plane)``: for whole chunks of VW pixels p < npix,
#: dst[doff + c*plane + p] = src[soff + p*C + c] (c < C); ``join_channels_C`` the inverse,
#: dst[doff + p*C + c] = src[soff + c*plane + p]. 32-bit elements (any dtype, bits moved as they are);
#: the last npix % VW pixels are left to the caller.
SPLIT_CHANNELS = {c: _make_channel_shuffle(c, True) for c in (2, 3, 4)}
JOIN_CHANNELS = {c: _make_channel_shuffle(c, False) for c in (2, 3, 4)}
