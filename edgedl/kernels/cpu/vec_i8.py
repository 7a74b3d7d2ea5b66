"""LLVM-IR microkernel of the int8 GEMM on int16 pairs (usable inside @njit code only): the portable
kernel, for CPUs without byte dot products (Cortex-A72 of the Pi 4, x86 without VNNI; the others run
:mod:`.vec_i8dot`), and for convolutions whose activation zero point no byte can hold.

Operands are int8 values widened to int16 and stored in *pairs* along K, so one 32-bit load holds two k
steps of an A row and the inner product of two k steps is one "multiply pairs and add" — the shape that
``pmaddwd`` / ``vpdpwssd`` (x86) and ``smull``/``smlal`` pairs (AArch64) implement. The IR only says
"sign-extend, multiply, add the even and odd lanes, accumulate" in portable vector types; the backend picks
the instruction (on an AVX-512 VNNI core LLVM emits ``vpdpwssd``).

Packed layouts (see :mod:`edgedl.kernels.cpu.gemm_i8`):

* A (weights, M x K): row panels of ``MR_I8`` rows, ``ap[p*KP*2*MR + q*2*MR + 2*r + t] = A[p*MR + r, 2*q + t]``
  (KP = ceil(K/2) pairs, zero padded);
* B (activations minus their zero point, K x N): column panels of ``NR_I8`` columns,
  ``bp[j*KP*2*NR + q*2*NR + 2*c + t] = B[2*q + t, j*NR + c]``.

The tile: MR_I8 rows x NR_I8 columns of int32 accumulators, ``NV_I8`` vectors of ``VW_I8`` lanes per row.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .vec import _arg_readers, _counted_loop, _splat

#: rows of the tile, int32 lanes per vector, vectors per tile row
MR_I8, VW_I8, NV_I8 = 4, 8, 2
#: columns of the tile
NR_I8 = VW_I8 * NV_I8

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _c64(v):
    return ir.Constant(_I64, v)


@intrinsic
def microkernel_i8(typingctx, kp, ap, a_off, bp, b_off, c, c_off, ldc, accumulate):
    """``microkernel_i8(kp, ap, a_off, bp, b_off, c, c_off, ldc, accumulate)``: the MR_I8 x NR_I8 int32 tile
    c[c_off + r*ldc + j] (+)= sum over kp k-pairs of A pair (ap, a_off) . B pair (bp, b_off); ``accumulate``
    adds to what c holds, else overwrites it. ap, bp: int16 arrays in the packed layouts; c: int32."""
    for arr, dt in ((ap, types.int16), (bp, types.int16), (c, types.int32)):
        if not isinstance(arr, types.Array) or arr.dtype != dt:
            return None
    for i in (kp, a_off, b_off, c_off, ldc):
        if not isinstance(i, types.Integer):
            return None
    if not isinstance(accumulate, (types.Boolean, types.Integer)):
        return None
    sig = types.void(kp, ap, a_off, bp, b_off, c, c_off, ldc, accumulate)

    def codegen(context, builder, signature, args):
        at = signature.args
        i64, data = _arg_readers(context, builder, signature, args)

        vw, nv, mr, nr = VW_I8, NV_I8, MR_I8, NR_I8
        a0, b0, c0 = data(1, 2), data(3, 4), data(5, 6)
        n, ldc_v = i64(0), i64(7)
        acc_flag = context.cast(builder, args[8], at[8], types.boolean)
        pairs = ir.VectorType(_I16, 2 * vw)
        wide = ir.VectorType(_I32, 2 * vw)
        vec = ir.VectorType(_I32, vw)
        even = ir.Constant(ir.VectorType(_I32, vw), [2 * i for i in range(vw)])
        odd = ir.Constant(ir.VectorType(_I32, vw), [2 * i + 1 for i in range(vw)])
        splat0 = ir.Constant(ir.VectorType(_I32, vw), [0] * vw)
        zero = ir.Constant(vec, [0] * vw)

        def c_ptr(r, v):
            return builder.bitcast(builder.gep(c0, [builder.add(builder.mul(_c64(r), ldc_v), _c64(v * vw))]),
                                   vec.as_pointer())

        fn = builder.function
        bb_entry = builder.block
        bb_load = fn.append_basic_block("i8.load_c")
        bb_start = fn.append_basic_block("i8.start")
        builder.cbranch(acc_flag, bb_load, bb_start)
        builder.position_at_end(bb_load)
        loaded = [builder.load(c_ptr(r, v), align=4) for r in range(mr) for v in range(nv)]
        builder.branch(bb_start)
        builder.position_at_end(bb_start)
        init = []
        for k in range(mr * nv):
            phi = builder.phi(vec)
            phi.add_incoming(zero, bb_entry)
            phi.add_incoming(loaded[k], bb_load)
            init.append(phi)
        bb_loop = fn.append_basic_block("i8.loop")
        bb_done = fn.append_basic_block("i8.done")
        builder.cbranch(builder.icmp_signed(">", n, _c64(0)), bb_loop, bb_done)

        builder.position_at_end(bb_loop)
        q = builder.phi(_I64)
        accs = [builder.phi(vec) for _ in range(mr * nv)]
        brow = builder.gep(b0, [builder.mul(q, _c64(2 * nr))])
        arow = builder.gep(a0, [builder.mul(q, _c64(2 * mr))])
        bw = [builder.sext(builder.load(builder.bitcast(builder.gep(brow, [_c64(v * 2 * vw)]), pairs.as_pointer()),
                                        align=2), wide) for v in range(nv)]
        new = []
        for r in range(mr):
            pair = builder.load(builder.bitcast(builder.gep(arow, [_c64(2 * r)]), _I32.as_pointer()), align=2)
            sp = builder.insert_element(ir.Constant(vec, ir.Undefined), pair, ir.Constant(_I32, 0))
            sp = builder.shuffle_vector(sp, ir.Constant(vec, ir.Undefined), splat0)
            aw = builder.sext(builder.bitcast(sp, pairs), wide)
            for v in range(nv):
                prod = builder.mul(aw, bw[v])
                und = ir.Constant(wide, ir.Undefined)
                s = builder.add(builder.shuffle_vector(prod, und, even), builder.shuffle_vector(prod, und, odd))
                new.append(builder.add(accs[r * nv + v], s))
        q_next = builder.add(q, _c64(1))
        bb_end = builder.block
        builder.cbranch(builder.icmp_signed("<", q_next, n), bb_loop, bb_done)
        q.add_incoming(_c64(0), bb_start)
        q.add_incoming(q_next, bb_end)
        for a, first, nxt in zip(accs, init, new):
            a.add_incoming(first, bb_start)
            a.add_incoming(nxt, bb_end)

        builder.position_at_end(bb_done)
        final = []
        for k in range(mr * nv):
            phi = builder.phi(vec)
            phi.add_incoming(init[k], bb_start)
            phi.add_incoming(new[k], bb_end)
            final.append(phi)
        for r in range(mr):
            for v in range(nv):
                builder.store(final[r * nv + v], c_ptr(r, v), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def quads_to_pairs(typingctx, dst, src, kq, zp):
    """``quads_to_pairs(dst, src, kq, zp)``: a B panel of NR_I8 columns packed as byte k-quads (the layout of
    :mod:`.vec_i8dot`'s packers, ``src[q*4*NR + 4*c + t]``, unsigned) -> the int16 k-pairs this module's tile
    reads, minus ``zp``: ``dst[(2q+h)*2*NR + 2*c + t] = src[q*4*NR + 4*c + 2*h + t] - zp`` for q < kq, h, t < 2
    (dst holds 2*kq pairs). Lets the pairs kernel reuse the vectorized im2col packers (one vector load per
    im2col row) instead of a byte-by-byte packing loop."""
    if not (isinstance(dst, types.Array) and dst.dtype == types.int16 and isinstance(src, types.Array)
            and src.dtype == types.uint8):
        return None
    for i in (kq, zp):
        if not isinstance(i, types.Integer):
            return None
    sig = types.void(dst, src, kq, zp)

    def codegen(context, builder, signature, args):
        b = builder
        i64, data = _arg_readers(context, builder, signature, args)
        nr = NR_I8
        d0 = b.bitcast(data(0), _I16.as_pointer())
        s0 = b.bitcast(data(1), ir.IntType(8).as_pointer())
        quad = ir.VectorType(ir.IntType(8), 4 * nr)
        pairs = ir.VectorType(_I16, 2 * nr)
        zp = _splat(b, pairs, b.trunc(i64(3), _I16))
        halves = [ir.Constant(ir.VectorType(_I32, 2 * nr), [4 * c + 2 * h + t for c in range(nr) for t in range(2)])
                  for h in range(2)]
        q, close = _counted_loop(b, i64(2), "q2p")
        v = b.load(b.bitcast(b.gep(s0, [b.mul(q, _c64(4 * nr))]), quad.as_pointer()), align=1)
        for h in range(2):
            half = b.shuffle_vector(v, ir.Constant(quad, ir.Undefined), halves[h])
            val = b.sub(b.zext(half, pairs), zp)
            dptr = b.gep(d0, [b.add(b.mul(q, _c64(4 * nr)), _c64(2 * nr * h))])
            b.store(val, b.bitcast(dptr, pairs.as_pointer()), align=2)
        close()
        return context.get_dummy_value()

    return sig, codegen
