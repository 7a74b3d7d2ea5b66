"""8-bit matrix-vector product on byte dot products: ``out (N,) = u (K,) @ W (K, N)``, u uint8, W int8.

Made for a recurrent layer's step with quantized weights (``h_prev @ R^T`` of a dynamically quantized
LSTM): one activation row against a few-MB weight matrix, at every time step. The GEMM tiles of
:mod:`.gemm_i8` put weight rows on the tile's rows and activation columns on its vector lanes, so a single
activation row would fill 1/NR of the lanes; here the lanes run over the weight's output columns instead.

**Packed weights** (:func:`pack`): blocks of ``NB`` output columns (:data:`BLOCK_COLS`, per instruction
set), each block k-quad major: ``wp[blk * KQ * 4 * NB + q * 4 * NB + 4 * c + t] = W[4q + t, blk * NB + c]``,
zero padded to ``KQ = ceil(K / 4)`` quads and whole blocks; plus the column sums ``cs[c] = sum_k W[k, c]``.
One block is ``NB / VW`` vector accumulators, a k loop over quads with one broadcast of four activation
bytes and ``NB / VW`` instructions per quad:

* x86 AVX-512 VNNI: ``vpdpbusd`` on zmm (unsigned activations x signed weights), 8 x 16 columns;
* x86 AVX-VNNI / AVX-512 VNNI on ymm: the same on ymm, 8 x 8 columns;
* AArch64 dot product (Pi 5's Cortex-A76): ``sdot`` (signed x signed), 8 x 4 columns; the activation bytes
  go in XOR 0x80 (``u - 128``) and :func:`gemv_u8s8` adds ``128 * cs`` back;
* anything else (x86 AVX2, Pi 4's Cortex-A72, Pi 3): :func:`block_pairs`, 32 columns, the quads widened to
  int16 and multiplied in pairs (``vpmovsxbw`` + ``vpmaddwd``; on AArch64 widening multiplies). Zen 3, 512 x 2048
  (an LSTM step): 38 us as the former Numba loop over a row-major weight (32-bit multiplies), 22 us (its 1 MB
  streams from L3).

The result is the exact int32 dot product (no saturation: ``vpdpbusd``, not ``vpdpbusds``) for any
``K < 2**31 / (255 * 128)``; :func:`pack` refuses larger K.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import NJIT_EXACT
from .vec import _arg_readers, _splat
from .vec_i8dot import DOT_KERNELS, K_PAIRS, K_SDOT, K_VNNI256, K_VNNI512, KERNEL_I8

__all__ = ["BLOCK_COLS", "KIND", "MAX_K", "pack", "gemv_u8s8", "gemm_block_u8s8"]

#: (int32 lanes per vector, vectors per block) per kernel
_SHAPE = {K_VNNI512: (16, 8), K_VNNI256: (8, 8), K_SDOT: (4, 8), K_PAIRS: (4, 8)}
#: output columns per packed block, per kernel
BLOCK_COLS = {k: vw * nv for k, (vw, nv) in _SHAPE.items()}
#: the kernel this process uses (the GEMM's choice, ``EDGEDL_I8_KERNEL`` honoured)
KIND = KERNEL_I8
# gemv_u8s8 spells the block widths out (Numba constants)
assert BLOCK_COLS == {K_VNNI512: 128, K_VNNI256: 64, K_SDOT: 32, K_PAIRS: 32}
#: largest K whose int32 sums cannot overflow (255 * 128 per product)
MAX_K = (2 ** 31 - 1) // (255 * 128)

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _k_loop(b, n, zero, nacc, step, name):
    """Emit ``for q in range(n)`` around ``accs = step(q, accs)`` (nacc vector accumulators from ``zero``);
    returns the accumulators after the loop (``zero`` when n <= 0) with the builder after it."""
    fn = b.function
    bb_entry = b.block
    bb_loop = fn.append_basic_block(f"{name}.loop")
    bb_done = fn.append_basic_block(f"{name}.done")
    b.cbranch(b.icmp_signed(">", n, ir.Constant(_I64, 0)), bb_loop, bb_done)
    b.position_at_end(bb_loop)
    q = b.phi(_I64)
    accs = [b.phi(zero.type) for _ in range(nacc)]
    new = step(q, accs)
    q_next = b.add(q, ir.Constant(_I64, 1))
    bb_end = b.block
    b.cbranch(b.icmp_signed("<", q_next, n), bb_loop, bb_done)
    q.add_incoming(ir.Constant(_I64, 0), bb_entry)
    q.add_incoming(q_next, bb_end)
    for acc, nxt in zip(accs, new):
        acc.add_incoming(zero, bb_entry)
        acc.add_incoming(nxt, bb_end)
    b.position_at_end(bb_done)
    final = []
    for v in range(nacc):
        phi = b.phi(zero.type)
        phi.add_incoming(zero, bb_entry)
        phi.add_incoming(new[v], bb_end)
        final.append(phi)
    return final


def _make_block(kind):
    vw, nv = _SHAPE[kind]
    nb = vw * nv

    @intrinsic
    def block(typingctx, kq, wp, w_off, u, out, o_off):
        if not (isinstance(wp, types.Array) and wp.dtype == types.int8 and isinstance(u, types.Array)
                and u.dtype in (types.uint8, types.int8) and isinstance(out, types.Array)
                and out.dtype == types.int32):
            return None
        if not all(isinstance(t, types.Integer) for t in (kq, w_off, o_off)):
            return None
        sig = types.void(kq, wp, w_off, u, out, o_off)

        def codegen(context, builder, signature, args):
            if kind not in DOT_KERNELS:  # never called on this target
                return context.get_dummy_value()
            b = builder
            i64, data = _arg_readers(context, builder, signature, args)
            n = i64(0)
            w0 = b.bitcast(data(1, 2), _I8.as_pointer())
            u0 = b.bitcast(data(3), _I8.as_pointer())
            o0 = b.bitcast(data(4, 5), _I32.as_pointer())
            v32 = ir.VectorType(_I32, vw)
            if kind == K_SDOT:
                v8 = ir.VectorType(_I8, 16)
                dot = cgutils.get_or_insert_function(
                    b.module, ir.FunctionType(v32, [v32, v8, v8]), "llvm.aarch64.neon.sdot.v4i32.v16i8")
            else:
                dot = cgutils.get_or_insert_function(
                    b.module, ir.FunctionType(v32, [v32, v32, v32]), f"llvm.x86.avx512.vpdpbusd.{32 * vw}")
            zero = ir.Constant(v32, [0] * vw)

            def step(q, accs):
                # four activation bytes, as one i32 broadcast to every lane
                quad = b.load(b.bitcast(b.gep(u0, [b.mul(q, ir.Constant(_I64, 4))]), _I32.as_pointer()), align=1)
                usp = _splat(b, v32, quad)
                wrow = b.gep(w0, [b.mul(q, ir.Constant(_I64, 4 * nb))])
                new = []
                for v in range(nv):
                    wv = b.load(b.bitcast(b.gep(wrow, [ir.Constant(_I64, 4 * vw * v)]), v32.as_pointer()), align=1)
                    if kind == K_SDOT:
                        # acc[i] += sum_t w[4i + t] * u[t]: weights are the first operand, the quad the second
                        new.append(b.call(dot, [accs[v], b.bitcast(wv, v8), b.bitcast(usp, v8)]))
                    else:
                        # vpdpbusd(acc, unsigned bytes, signed bytes)
                        new.append(b.call(dot, [accs[v], usp, wv]))
                return new

            final = _k_loop(b, n, zero, nv, step, "gemv")
            for v in range(nv):
                b.store(final[v], b.bitcast(b.gep(o0, [ir.Constant(_I64, vw * v)]), v32.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


def _make_block_rows(kind):
    """Four activation rows against half a block (four of its eight vectors): 16 accumulators, each weight
    vector loaded once per quad for the four rows."""
    vw, nv = _SHAPE[kind]
    nb = vw * nv
    rows, nh = 4, nv // 2

    @intrinsic
    def block_rows(typingctx, kq, wp, w_off, v0, u, u_off, ldu, out, o_off, ldo):
        if not (isinstance(wp, types.Array) and wp.dtype == types.int8 and isinstance(u, types.Array)
                and u.dtype in (types.uint8, types.int8) and isinstance(out, types.Array)
                and out.dtype == types.int32):
            return None
        if not all(isinstance(t, types.Integer) for t in (kq, w_off, v0, u_off, ldu, o_off, ldo)):
            return None
        sig = types.void(kq, wp, w_off, v0, u, u_off, ldu, out, o_off, ldo)

        def codegen(context, builder, signature, args):
            if kind not in DOT_KERNELS:  # never called on this target
                return context.get_dummy_value()
            b = builder
            i64, data = _arg_readers(context, builder, signature, args)
            n = i64(0)
            w0 = b.gep(b.bitcast(data(1, 2), _I8.as_pointer()), [b.mul(i64(3), ir.Constant(_I64, 4 * vw))])
            u0 = b.bitcast(data(4, 5), _I8.as_pointer())
            ldu = i64(6)
            o0 = b.bitcast(data(7, 8), _I32.as_pointer())
            ldo = i64(9)
            v32 = ir.VectorType(_I32, vw)
            if kind == K_SDOT:
                v8 = ir.VectorType(_I8, 16)
                dot = cgutils.get_or_insert_function(
                    b.module, ir.FunctionType(v32, [v32, v8, v8]), "llvm.aarch64.neon.sdot.v4i32.v16i8")
            else:
                dot = cgutils.get_or_insert_function(
                    b.module, ir.FunctionType(v32, [v32, v32, v32]), f"llvm.x86.avx512.vpdpbusd.{32 * vw}")
            zero = ir.Constant(v32, [0] * vw)

            def step(q, accs):
                q4 = b.mul(q, ir.Constant(_I64, 4))
                usp = []
                for r in range(rows):
                    ptr = b.gep(u0, [b.add(b.mul(ldu, ir.Constant(_I64, r)), q4)])
                    usp.append(_splat(b, v32, b.load(b.bitcast(ptr, _I32.as_pointer()), align=1)))
                wrow = b.gep(w0, [b.mul(q, ir.Constant(_I64, 4 * nb))])
                new = [None] * (rows * nh)
                for v in range(nh):
                    wv = b.load(b.bitcast(b.gep(wrow, [ir.Constant(_I64, 4 * vw * v)]), v32.as_pointer()), align=1)
                    for r in range(rows):
                        k = r * nh + v
                        if kind == K_SDOT:
                            new[k] = b.call(dot, [accs[k], b.bitcast(wv, v8), b.bitcast(usp[r], v8)])
                        else:
                            new[k] = b.call(dot, [accs[k], usp[r], wv])
                return new

            final = _k_loop(b, n, zero, rows * nh, step, "gemvr")
            for r in range(rows):
                orow = b.gep(o0, [b.mul(ldo, ir.Constant(_I64, r))])
                for v in range(nh):
                    b.store(final[r * nh + v], b.bitcast(b.gep(orow, [ir.Constant(_I64, vw * v)]),
                                                          v32.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block_rows


@intrinsic
def block_pairs(typingctx, kq, wp, w_off, u, out, o_off):
    """The portable block (CPUs without byte dot products: x86 AVX2, Pi 4's Cortex-A72): the 32 columns of one
    block in the k-quad layout, widened to int16 and multiplied in pairs (``vpmaddwd`` on x86, ``smull`` /
    ``smlal`` pairs on AArch64). Per quad, 8 vectors of 4 columns x 4 bytes: sign-extended weights times the
    activation quad (``u[4q..4q+3]`` widened, repeated 4 times), even + odd lanes into 8 int32 lanes (two partial
    sums per column); the two are added once, after the k loop. Exact: |u * w| <= 255 * 128."""
    if not (isinstance(wp, types.Array) and wp.dtype == types.int8 and isinstance(u, types.Array)
            and u.dtype in (types.uint8, types.int8) and isinstance(out, types.Array) and out.dtype == types.int32):
        return None
    if not all(isinstance(t, types.Integer) for t in (kq, w_off, o_off)):
        return None
    sig = types.void(kq, wp, w_off, u, out, o_off)
    signed_u = u.dtype == types.int8

    def codegen(context, builder, signature, args):
        b = builder
        i64, data = _arg_readers(context, builder, signature, args)
        n = i64(0)
        nv, nb = 8, 32
        w0 = b.bitcast(data(1, 2), _I8.as_pointer())
        u0 = b.bitcast(data(3), _I8.as_pointer())
        o0 = b.bitcast(data(4, 5), _I32.as_pointer())
        v16x8 = ir.VectorType(_I8, 16)
        w16 = ir.VectorType(_I32, 16)
        v8 = ir.VectorType(_I32, 8)
        v4 = ir.VectorType(_I32, 4)
        even8 = ir.Constant(v8, [2 * i for i in range(8)])
        odd8 = ir.Constant(v8, [2 * i + 1 for i in range(8)])
        even4 = ir.Constant(v4, [2 * i for i in range(4)])
        odd4 = ir.Constant(v4, [2 * i + 1 for i in range(4)])
        rep = ir.Constant(w16, [i % 4 for i in range(16)])
        zero = ir.Constant(v8, [0] * 8)

        def step(q, accs):
            quad = b.load(b.bitcast(b.gep(u0, [b.mul(q, ir.Constant(_I64, 4))]), ir.VectorType(_I8, 4).as_pointer()),
                          align=1)
            uq = (b.sext if signed_u else b.zext)(b.shuffle_vector(quad, ir.Constant(quad.type, ir.Undefined), rep),
                                                  w16)
            wrow = b.gep(w0, [b.mul(q, ir.Constant(_I64, 4 * nb))])
            new = []
            for v in range(nv):
                wv = b.sext(b.load(b.bitcast(b.gep(wrow, [ir.Constant(_I64, 16 * v)]), v16x8.as_pointer()),
                                   align=1), w16)
                prod = b.mul(wv, uq)
                und = ir.Constant(w16, ir.Undefined)
                pair = b.add(b.shuffle_vector(prod, und, even8), b.shuffle_vector(prod, und, odd8))
                new.append(b.add(accs[v], pair))
            return new

        final = _k_loop(b, n, zero, nv, step, "gemvp")
        for v, phi in enumerate(final):
            und = ir.Constant(v8, ir.Undefined)
            cols = b.add(b.shuffle_vector(phi, und, even4), b.shuffle_vector(phi, und, odd4))
            b.store(cols, b.bitcast(b.gep(o0, [ir.Constant(_I64, 4 * v)]), v4.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


#: ``block_<kernel>(kq, wp, w_off, u, out, o_off)``: ``out[o_off + c] = sum_{q < kq, t < 4} u[4q + t] *
#: wp[w_off + 16q * NB/4 + 4c + t]`` for the NB columns of one packed block (u uint8 on x86, int8 on sdot)
block_vnni512 = _make_block(K_VNNI512)
block_vnni256 = _make_block(K_VNNI256)
block_sdot = _make_block(K_SDOT)


#: ``rows_<kernel>(kq, wp, w_off, v0, u, u_off, ldu, out, o_off, ldo)``: vectors v0 .. v0+NV/2-1 of one
#: packed block (NB/2 columns) for four activation rows ``u[u_off + r*ldu + ...]`` into
#: ``out[o_off + r*ldo + c]``, c < NB/2
rows_vnni512 = _make_block_rows(K_VNNI512)
rows_vnni256 = _make_block_rows(K_VNNI256)
rows_sdot = _make_block_rows(K_SDOT)


@numba.njit(**NJIT_EXACT)
def gemv_u8s8(u, wp, kq, nblk, kind, out):
    """out (N',) int32 = u (4 * kq,) uint8 @ the packed weight ``wp`` (exact dot products).

    ``u`` holds the activation bytes (padded to whole quads with anything: the padded weights are 0); with
    ``kind == K_SDOT`` it must hold them XOR 0x80 as int8 and ``out`` is ``sum (u - 128) * w`` (the caller adds
    ``128 * cs``)."""
    if kind == K_VNNI512:
        nb = 128
        for j in range(nblk):
            block_vnni512(kq, wp, j * kq * 4 * nb, u, out, j * nb)
    elif kind == K_VNNI256:
        nb = 64
        for j in range(nblk):
            block_vnni256(kq, wp, j * kq * 4 * nb, u, out, j * nb)
    elif kind == K_SDOT:
        nb = 32
        for j in range(nblk):
            block_sdot(kq, wp, j * kq * 4 * nb, u, out, j * nb)
    else:
        nb = 32
        for j in range(nblk):
            block_pairs(kq, wp, j * kq * 4 * nb, u, out, j * nb)


@numba.njit(**NJIT_EXACT)
def gemm_block_u8s8(u, wp, kq, blk, kind, out):
    """out (M, NB) int32 = u (M, 4kq) uint8 @ block ``blk`` of the packed weight: rows four at a time, the
    rest one by one (for ``kind == K_SDOT`` u holds the bytes XOR 0x80, as :func:`gemv_u8s8`)."""
    m = u.shape[0]
    ldu = u.shape[1]
    ldo = out.shape[1]
    if kind == K_VNNI512:
        nb = 128
    elif kind == K_VNNI256:
        nb = 64
    else:
        nb = 32
    w_off = blk * kq * 4 * nb
    r = 0
    if kind == K_VNNI512 or kind == K_VNNI256 or kind == K_SDOT:
        while r + 4 <= m:
            for half in range(2):
                if kind == K_VNNI512:
                    rows_vnni512(kq, wp, w_off, 4 * half, u, r * ldu, ldu, out, r * ldo + half * nb // 2, ldo)
                elif kind == K_VNNI256:
                    rows_vnni256(kq, wp, w_off, 4 * half, u, r * ldu, ldu, out, r * ldo + half * nb // 2, ldo)
                else:
                    rows_sdot(kq, wp, w_off, 4 * half, u, r * ldu, ldu, out, r * ldo + half * nb // 2, ldo)
            r += 4
        while r < m:
            ur = u[r]
            if kind == K_VNNI512:
                block_vnni512(kq, wp, w_off, ur, out, r * ldo)
            elif kind == K_VNNI256:
                block_vnni256(kq, wp, w_off, ur, out, r * ldo)
            else:
                block_sdot(kq, wp, w_off, ur, out, r * ldo)
            r += 1
    else:
        for i in range(m):
            block_pairs(kq, wp, w_off, u[i], out, i * ldo)


def pack(w: np.ndarray, kind: int = KIND) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(wp int8, cs int32 (N',), KQ, nblk) for a (K, N) int8 weight: ``nblk`` blocks of ``N' / nblk`` columns
    (:data:`BLOCK_COLS`)."""
    from ...errors import EdgeDLError
    from ..aligned import aligned_zeros

    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise EdgeDLError(f"gemv_i8.pack takes a 2-D int8 weight, got {w.dtype} {w.shape}")
    k, n = w.shape
    if k > MAX_K:
        raise EdgeDLError(f"gemv_i8.pack: K = {k} would overflow the int32 sums (at most {MAX_K})")
    nb = BLOCK_COLS[kind]
    kq = -(-k // 4)
    nblk = -(-n // nb)
    full = np.zeros((4 * kq, nblk * nb), np.int8)
    full[:k, :n] = w
    blocks = full.reshape(kq, 4, nblk, nb).transpose(2, 0, 3, 1)  # (nblk, kq, nb, 4)
    wp = aligned_zeros(blocks.size, np.int8)
    wp[:] = blocks.reshape(-1)
    cs = np.zeros(full.shape[1], np.int32)
    cs[:n] = w.astype(np.int32).sum(axis=0)
    return wp, cs, kq, nblk
