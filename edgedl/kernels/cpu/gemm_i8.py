"""int8 GEMM with requantization in the epilogue: ``out[m, j] = requantize(sum_k (W[m,k] - w_zp[m]) *
(X[k,j] - x_zp) + bias[m])`` (one output channel per weight row ``m``).

Two families of kernels (:data:`~.vec_i8dot.KERNEL_I8` picks the best the CPU has; ``QGemm(...,
kernel=...)`` another available one):

* **byte dot products** (:mod:`.vec_i8dot`: ``vpdpbusd`` with AVX-512/AVX VNNI, ``sdot`` on AArch64 with
  the dot product extension). Both operands are packed as raw bytes in k-quads; the zero points stay out of
  the k loop through correction terms. With ``a``/``b`` the packed bytes, ``a - az = W - w_zp`` and
  ``b - bz = X - x_zp``::

      acc[m, n] = sum_k a*b - bz * rowsum(a)[m] - az[m] * colsum(b)[n] + K * az[m] * bz

  The per-row terms are folded with the bias into one int32 per row at construction (per activation
  type), the column sums are made while packing a panel, only when some ``az`` is not 0. The operand
  types of the instruction decide the bytes: ``vpdpbusd`` multiplies unsigned B by signed A, so int8
  activations are packed XOR 0x80 (``x + 128``, ``bz = x_zp + 128``); ``sdot`` is signed x signed, so
  uint8 activations are packed XOR 0x80 (``x - 128``); uint8 weights are always packed XOR 0x80
  (``az = w_zp - 128``). Padding taps of a convolution are packed as ``bz`` (they contribute 0), the
  padding of K to whole quads as 0 in both operands. Every sum is an exact int32 in wrapping arithmetic
  (no saturating instruction is used), so the result is the same for every kernel.
* **int16 pairs** (:mod:`.vec_i8`, the portable fallback: Cortex-A72, x86 without VNNI): weights and
  activations minus their zero points, widened to int16 k-pairs.

The operands: weights ``W`` (M x K) are packed once; activations per column panel of NR output columns,
straight from the source: a (K, N) matrix (``SRC_COLS``; a 1x1 convolution's (C, H*W) image: each quad
is four contiguous rows, interleaved in registers), a (R, K) matrix whose rows are the output columns
(``SRC_ROWS``: MatMul, the output is written transposed), or a (C, H, W) image read through the
convolution's geometry (``SRC_IMAGE``: implicit im2col; one vector load per im2col row of a panel for
stride-1 "same" convolutions, per output-row segment for column strides 1 and 2, bytes otherwise).

The epilogue runs on the tile in registers: the requantization of :func:`edgedl.quant.requant.requantize`
in every mode, vectorized and bit-exact (:func:`~.vec_i8dot.emit_requant`), 8-bit stores (a lane mask on a
ragged last panel), or the int32 sum plus bias (``MODE_RAW``: ConvInteger / MatMulInteger). It needs
``acc + bias`` to be an exact int32, checked per row at construction from the weights and the bias
(always true but for huge biases), and multipliers in the usual ranges; otherwise, and for the transposed
``SRC_ROWS`` output, the tile goes through an int32 buffer and the scalar :func:`requantize` (int64
``acc + bias``), as before.

Parallel split: tasks of (runs of column panels) x (runs of row tiles), chosen to balance the threads
(:func:`_plan`), when the work reaches ``config.GEMM_PARALLEL_MIN_WORK`` (scaled per kernel). Each task packs
its own panels, the packed panel staying in L1/L2 while its tiles run. NOTE: packing all of B once per
call into a buffer shared by the threads, then running the tiles, was measured slower on every benchmarked
layer (2 threads, MobileNetV2/ResNet shapes: 5-50%; a second fork/join and a B that leaves the caches).

``bind`` prepares a call once (the executor's bound kernels): a call then costs ~1.3 us of dispatch instead
of ~6 us of argument preparation.
"""
from __future__ import annotations

import functools
import os

import numba
import numpy as np
from numba import prange, types

from ...quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE, Requant, requantize
from ..aligned import aligned_copy, aligned_zeros
from . import config as _config
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL, num_threads
from .native import caller, native
from .native import readonly as _ro
from .vec_i8 import MR_I8, NR_I8, microkernel_i8, quads_to_pairs
from .vec_i8dot import (
    B_SIGNED,
    DOT_KERNELS,
    K_PAIRS,
    K_SDOT,
    K_VNNI256,
    K_VNNI512,
    KERNEL_I8,
    KERNEL_NAMES,
    RP_ADD,
    RP_ADD_RAW,
    RP_AZ,
    RP_FSCALE,
    RP_LEFT,
    RP_M0,
    RP_RIGHT,
    RP_ROWS,
    RP_T,
    ST_BUFFER,
    ST_INT32,
    ST_REQUANT,
    TILES,
    copy_quads,
    dot_tile_sdot,
    dot_tile_vnni256,
    dot_tile_vnni512,
    pack_image_contig_8s,
    pack_image_contig_16,
    pack_image_contig_32,
    pack_image_segs_8s,
    pack_image_segs_16,
    pack_image_segs_32,
    pack_quads_8s,
    pack_quads_16,
    pack_quads_32,
    requant_tile_pairs,
)

__all__ = ["QGemm", "pack_weights_i8", "SRC_COLS", "SRC_ROWS", "SRC_IMAGE", "MODE_RAW", "conv_geometry",
           "KERNEL_I8", "DOT_KERNELS", "KERNEL_NAMES", "available_kernels"]

SRC_COLS, SRC_ROWS, SRC_IMAGE = 0, 1, 2
#: no requantization: the int32 accumulator (plus bias) is the output
MODE_RAW = 3

#: tile rows / columns per kernel id (K_PAIRS, K_VNNI512, K_VNNI256, K_SDOT)
_MR = (MR_I8,) + tuple(TILES[k][0] for k in (K_VNNI512, K_VNNI256, K_SDOT))
_NR = (NR_I8,) + tuple(TILES[k][1] * TILES[k][2] for k in (K_VNNI512, K_VNNI256, K_SDOT))


#: a GEMM splits over threads from config.GEMM_PARALLEL_MIN_WORK times this many multiply-adds: the byte kernels do
#: a multiply-add in ~1/8 of the time of the fp32 GEMM the threshold was tuned on, so a split pays later
#: (measured on 2 Zen 4 cores: 2 threads beat 1 from ~2^21 multiply-adds, ~2^20 for the int16 pairs)
_MIN_WORK_SCALE = (4, 8, 8, 8)
#: what one output costs beyond its K multiply-adds (packing its column, requantizing, storing), in
#: multiply-adds: ~0.35 ns against ~0.008 ns per multiply-add (VNNI tile, Zen 4). A 1x1 convolution with
#: K = 8 over 4096 pixels (MobileNetV2's first expansion) spends 85 us mostly there: worth two threads
EPILOGUE_MACS = 48
#: the matrix-vector kernel splits over threads from config.GEMM_PARALLEL_MIN_WORK times this many multiply-adds
GEMV_PARALLEL_SCALE = 2


def available_kernels() -> tuple[int, ...]:
    """The kernels this CPU runs: the dot-product ones (best first), then the int16 pairs."""
    return DOT_KERNELS + (K_PAIRS,)


def preferred_kernel() -> int:
    """The kernel a QGemm uses by default: ``EDGEDL_I8_KERNEL`` if the user set it, else the target's choice
    (``config.INT8_KERNEL``) when the codegen can run it, else :data:`KERNEL_I8`."""
    want = _config.INT8_KERNEL
    if want is None or "EDGEDL_I8_KERNEL" in os.environ:
        return KERNEL_I8
    by_name = {v: k for k, v in KERNEL_NAMES.items()}
    k = by_name.get(want)
    return k if k is not None and k in available_kernels() else KERNEL_I8


# ---------------------------------------------------------------------------------------------------
# int16 pairs (portable)
# ---------------------------------------------------------------------------------------------------
@numba.njit(**NJIT_EXACT)
def pack_weights_i8(w, w_zp, ap):
    """Pack W (M, K) minus its per-row zero point into row panels of MR_I8 rows of int16 k-pairs (zero padded)."""
    m, k = w.shape
    kp = (k + 1) // 2
    for p in range((m + MR_I8 - 1) // MR_I8):
        base = p * kp * 2 * MR_I8
        for q in range(kp):
            for r in range(MR_I8):
                row = p * MR_I8 + r
                for t in range(2):
                    kk = 2 * q + t
                    v = np.int16(0)
                    if row < m and kk < k:
                        v = np.int16(np.int16(w[row, kk]) - np.int16(w_zp[row]))
                    ap[base + q * 2 * MR_I8 + 2 * r + t] = v


@numba.njit(inline="always", **NJIT_EXACT)
def _x16(u, xs):
    # an activation byte as int16: int8 when xs, else uint8
    return np.int16(np.int8(u)) if xs else np.int16(u)


@numba.njit(**NJIT_EXACT)
def _pack_cols(x, xs, zp, col0, bp):
    # x: (K, N) bytes (int8 values if xs); bp: (KP * 2 * NR_I8,) int16 <- columns col0..col0+NR_I8 of x - zp
    # (zero padded)
    k, n = x.shape
    kp = (k + 1) // 2
    z = np.int16(zp)
    full = col0 + NR_I8 <= n
    for q in range(kp):
        dst = bp[q * 2 * NR_I8:(q + 1) * 2 * NR_I8]
        if full and 2 * q + 1 < k:
            r0 = x[2 * q, col0:col0 + NR_I8]
            r1 = x[2 * q + 1, col0:col0 + NR_I8]
            for c in range(NR_I8):
                dst[2 * c] = _x16(r0[c], xs) - z
                dst[2 * c + 1] = _x16(r1[c], xs) - z
            continue
        for c in range(NR_I8):
            col = col0 + c
            for t in range(2):
                kk = 2 * q + t
                v = np.int16(0)
                if col < n and kk < k:
                    v = _x16(x[kk, col], xs) - z
                dst[2 * c + t] = v


@numba.njit(inline="always", **NJIT_EXACT)
def _rows_to_pairs(a, xs, zp, row0, width, dst):
    # a: (R, K) bytes; dst (KP * 2 * width,) <- rows row0..row0+width of a - zp as the lanes of an int16-pair
    # panel (dst[q*2*width + 2*lane + t] = a[row0 + lane, 2q + t] - zp; rows past R and k past K are 0)
    r_total, k = a.shape
    kp = (k + 1) // 2
    z = np.int16(zp)
    for c in range(width):
        r = row0 + c
        if r >= r_total:
            for q in range(kp):
                dst[q * 2 * width + 2 * c] = 0
                dst[q * 2 * width + 2 * c + 1] = 0
            continue
        row = a[r]
        for q in range(k // 2):
            dst[q * 2 * width + 2 * c] = _x16(row[2 * q], xs) - z
            dst[q * 2 * width + 2 * c + 1] = _x16(row[2 * q + 1], xs) - z
        if k % 2:
            dst[(kp - 1) * 2 * width + 2 * c] = _x16(row[k - 1], xs) - z
            dst[(kp - 1) * 2 * width + 2 * c + 1] = 0


@numba.njit(**NJIT_EXACT)
def _pack_rows(a, xs, zp, row0, bp):
    # a: (R, K) bytes; bp <- rows row0..row0+NR_I8 of a - zp as columns (zero padded)
    _rows_to_pairs(a, xs, zp, row0, NR_I8, bp)


@numba.njit(**NJIT_EXACT)
def _segments(col0, nr, ow, npix, seg):
    # the panel's columns as output row segments: seg[0..3, s] = (output row, first output column, first panel
    # column, length); returns (count, columns filled)
    nseg = 0
    c = 0
    while c < nr and col0 + c < npix:
        p = col0 + c
        oy = p // ow
        ox = p - oy * ow
        length = min(ow - ox, nr - c, npix - p)
        seg[0, nseg] = oy
        seg[1, nseg] = ox
        seg[2, nseg] = c
        seg[3, nseg] = length
        nseg += 1
        c += length
    return nseg, c


@numba.njit(**NJIT_EXACT)
def _pack_image(x, xs, zp, col0, geo, bp, seg):
    # x: (C, H, W) bytes; output pixels col0..col0+NR_I8 (row-major over OH x OW) of the implicit
    # im2col matrix (K = cg*kh*kw rows over channels c0..c0+cg) minus zp; padding taps and columns past
    # the end are 0. geo = (h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0, cg)
    h, w, kh, kw = geo[0], geo[1], geo[2], geo[3]
    sh, sw, dh, dw = geo[4], geo[5], geo[6], geo[7]
    pt, pl, oh, ow, c0, cg = geo[8], geo[9], geo[10], geo[11], geo[12], geo[13]
    k = cg * kh * kw
    kp = (k + 1) // 2
    z = np.int16(zp)
    nseg, filled = _segments(col0, NR_I8, ow, oh * ow, seg)
    for kk in range(2 * kp):
        t = kk & 1
        base = (kk >> 1) * 2 * NR_I8 + t
        if kk >= k:
            for cc in range(NR_I8):
                bp[base + 2 * cc] = 0
            continue
        ci = kk // (kh * kw)
        rem = kk - ci * kh * kw
        i = rem // kw
        j = rem - i * kw
        plane = x[c0 + ci]
        for s in range(nseg):
            y = seg[0, s] * sh - pt + i * dh
            cs = seg[2, s]
            ln = seg[3, s]
            if y < 0 or y >= h:
                for cc in range(ln):
                    bp[base + 2 * (cs + cc)] = 0
                continue
            row = plane[y]
            x0 = seg[1, s] * sw - pl + j * dw
            if x0 >= 0 and x0 + (ln - 1) * sw < w:
                for cc in range(ln):
                    bp[base + 2 * (cs + cc)] = _x16(row[x0 + cc * sw], xs) - z
            else:
                for cc in range(ln):
                    xx = x0 + cc * sw
                    v = np.int16(0)
                    if 0 <= xx < w:
                        v = _x16(row[xx], xs) - z
                    bp[base + 2 * (cs + cc)] = v
        for cc in range(filled, NR_I8):
            bp[base + 2 * cc] = 0


@numba.njit(inline="always", **NJIT_EXACT)
def _epilogue_scalar(src, tb, ldt, row0, mrows, col0, nc, bias, m0, shift, fscale, zp, lo, hi, mode, out):
    # the int32 tile tb[r*ldt + c] (no bias) -> out, through the scalar requantize (int64 acc + bias)
    for r in range(mrows):
        row = row0 + r
        b = np.int64(bias[row])
        mm = m0[row]
        sh = shift[row]
        fs = fscale[row]
        a_row = tb[r * ldt:r * ldt + nc]
        if src == SRC_ROWS:
            for c in range(nc):
                a = np.int64(a_row[c]) + b
                out[col0 + c, row] = a if mode == MODE_RAW else requantize(a, mm, sh, fs, zp, lo, hi, mode)
        else:
            o_row = out[row, col0:col0 + nc]
            for c in range(nc):
                a = np.int64(a_row[c]) + b
                o_row[c] = a if mode == MODE_RAW else requantize(a, mm, sh, fs, zp, lo, hi, mode)


@numba.njit(inline="always", **NJIT_EXACT)
def _ncols(src, x, geo):
    if src == SRC_COLS:
        return x.shape[2]
    if src == SRC_ROWS:
        return x.shape[1]
    return geo[10] * geo[11]


#: the pairs task's ``bz`` for a zero point its byte packers cannot take
NO_BYTE_ZP = -(1 << 40)


#: the pairs task packs its column panels in groups that fit in this many bytes (L2), then runs each weight panel
#: over a whole group: the weights (int16 pairs, twice the bytes of the model's) stream from memory once per group,
#: not once per panel (a MatMulInteger of 20 rows by 8210 x 1024 weights: its 2 panels are one group)
PAIRS_HELD_BYTES = 1 << 18


@numba.njit(inline="always", **NJIT_EXACT)
def _pairs_pack(src, x, xs, x_zp, geo, ktab, bz, flip, col0, nc, kq, bp, qb, cs, tmp, seg, oyx, segs):
    # column panel col0.. of B -> int16 pairs minus the zero point in bp
    if src == SRC_COLS:
        if bz != NO_BYTE_ZP:
            _pack_cols_dot(NR_I8, x[0], col0, nc, kq, flip, qb, cs, False, tmp)
            quads_to_pairs(bp, qb, kq, bz)
        else:
            _pack_cols(x[0], xs, x_zp, col0, bp)
    elif src == SRC_ROWS:
        _pack_rows(x[0], xs, x_zp, col0, bp)
    elif bz != NO_BYTE_ZP:
        _pack_image_dot(NR_I8, x, col0, geo, ktab, kq, flip, bz, qb, cs, False, tmp, seg, oyx, segs)
        quads_to_pairs(bp, qb, kq, bz)
    else:
        _pack_image(x, xs, x_zp, col0, geo, bp, seg)


def _pairs_task(src, ap, x, xs, x_zp, geo, ktab, bz, j0, j1, i0, i1, kp, m, rp, store, bias, m0, shift, fscale, zp,
                lo, hi, mode, out):
    # bz: the activations' zero point in the unsigned domain (x XOR 0x80 when xs): panels are packed as byte
    # k-quads by the vectorized packers, then widened to int16 pairs minus bz (quads_to_pairs); NO_BYTE_ZP (an
    # image's zero point that no byte holds: its padding taps cannot be bytes): byte by byte into pairs
    kq = (kp + 1) // 2
    psz = 2 * kq * 2 * NR_I8
    group = max(1, min(j1 - j0, PAIRS_HELD_BYTES // (2 * psz)))  # panels packed together
    bp = np.empty(group * psz, np.int16)
    acc = np.empty(MR_I8 * NR_I8, np.int32)
    seg = np.empty((4, NR_I8), np.int64)
    qb = np.empty(kq * 4 * NR_I8, np.uint8)
    cs = np.zeros(NR_I8, np.int32)
    tmp = np.empty(4 * NR_I8, np.uint8)
    oyx = np.empty((2, NR_I8), np.int32)
    segs = np.empty((4, NR_I8), np.int64)
    flip = 0x80 if xs else 0
    ncol = _ncols(src, x, geo)
    ldo = out.shape[1]
    for g0 in range(j0, j1, group):
        g1 = min(j1, g0 + group)
        for j in range(g0, g1):
            col0 = j * NR_I8
            _pairs_pack(src, x, xs, x_zp, geo, ktab, bz, flip, col0, min(NR_I8, ncol - col0), kq,
                        bp[(j - g0) * psz:(j - g0 + 1) * psz], qb, cs, tmp, seg, oyx, segs)
        for i in range(i0, i1):
            row0 = i * MR_I8
            mrows = min(MR_I8, m - row0)
            for j in range(g0, g1):
                col0 = j * NR_I8
                nc = min(NR_I8, ncol - col0)
                microkernel_i8(kp, ap, i * kp * 2 * MR_I8, bp, (j - g0) * psz, acc, 0, NR_I8, False)
                if store == ST_BUFFER:
                    _epilogue_scalar(src, acc, NR_I8, row0, mrows, col0, nc, bias, m0, shift, fscale, zp, lo, hi,
                                     mode, out)
                else:
                    requant_tile_pairs(acc, 0, rp, row0, store, out, row0 * ldo + col0, ldo, mrows, nc, acc, zp, lo,
                                       hi, mode)


_I64 = types.int64
#: outputs of the int8 tasks: requantized bytes, or raw int32 accumulators (ConvInteger / MatMulInteger)
_TASK_OUTS = (types.uint8[:, ::1], types.int32[:, ::1])
#: _pairs_task's signatures (one per output type)
_PAIRS_SIGS = tuple(types.void(_I64, _ro(types.int16[::1]), _ro(types.uint8[:, :, ::1]), types.boolean, _I64,
                               _ro(types.int64[::1]), _ro(types.int64[:, ::1]), _I64, _I64, _I64, _I64, _I64, _I64,
                               _I64, _ro(types.int32[:, ::1]),
                               _I64, _ro(types.int32[::1]), _ro(types.int64[::1]), _ro(types.int64[::1]),
                               _ro(types.float32[::1]), _I64, _I64, _I64, _I64, out) for out in _TASK_OUTS)


# NOTE: native functions (see native.py): compiled once, called by both drivers through a pointer, so the
# serial and parallel drivers no longer each compile the packing, microkernel and requantization code
_PAIRS_NATIVES = tuple(native(sig, **NJIT_EXACT)(_pairs_task) for sig in _PAIRS_SIGS)
_call_pairs = caller(*_PAIRS_NATIVES)


@numba.njit(**NJIT_EXACT)
def _pairs_serial(task_fn, src, ap, x, xs, x_zp, geo, ktab, bz, panels, mt, kp, m, rp, store, bias, m0, shift,
                  fscale, zp, lo, hi, mode, out):
    # task_fn: the address of the _PAIRS_NATIVES entry for out's type
    _call_pairs(task_fn, (src, ap, x, xs, x_zp, geo, ktab, bz, 0, panels, 0, mt, kp, m, rp, store, bias, m0, shift,
                          fscale, zp, lo, hi, mode, out))


@numba.njit(**NJIT_EXACT_PARALLEL)
def _pairs_parallel(task_fn, src, ap, x, xs, x_zp, geo, ktab, bz, panels, mt, kp, m, rp, store, bias, m0, shift,
                    fscale, zp, lo, hi, mode, out, tp, tm):
    for t in prange(tp * tm):
        pj = t // tm
        ti = t - pj * tm
        _call_pairs(task_fn, (src, ap, x, xs, x_zp, geo, ktab, bz, pj * panels // tp, (pj + 1) * panels // tp,
                              ti * mt // tm, (ti + 1) * mt // tm, kp, m, rp, store, bias, m0, shift, fscale, zp, lo,
                              hi, mode, out))


# int16 pairs, activation rows against the weights as B (raw int32 outputs: MatMulInteger)
@numba.njit(**NJIT_EXACT)
def _pack_rows_as_a(a, xs, zp, ap):
    # a (R, K) bytes (int8 values if xs) minus zp -> row panels of MR_I8 rows of int16 k-pairs (zero padded)
    kp = (a.shape[1] + 1) // 2
    for p in range((a.shape[0] + MR_I8 - 1) // MR_I8):
        _rows_to_pairs(a, xs, zp, p * MR_I8, MR_I8, ap[p * kp * 2 * MR_I8:(p + 1) * kp * 2 * MR_I8])


@numba.njit(inline="always", **NJIT_EXACT)
def _rows_as_a_range(ap, bw, kp, rows, m, out, j0, j1, tile):
    # out (rows, m) int32 = activation panels ap x weight panels j0..j1 of bw (NR_I8 weight rows each); every
    # weight panel is read once, against all the activation panels
    of = out.reshape(rows * m)
    for j in range(j0, j1):
        col0 = j * NR_I8
        nc = min(NR_I8, m - col0)
        for i in range((rows + MR_I8 - 1) // MR_I8):
            row0 = i * MR_I8
            mr = min(MR_I8, rows - row0)
            if mr == MR_I8 and nc == NR_I8:
                microkernel_i8(kp, ap, i * kp * 2 * MR_I8, bw, j * kp * 2 * NR_I8, of, row0 * m + col0, m, False)
            else:
                microkernel_i8(kp, ap, i * kp * 2 * MR_I8, bw, j * kp * 2 * NR_I8, tile, 0, NR_I8, False)
                for r in range(mr):
                    for c in range(nc):
                        out[row0 + r, col0 + c] = tile[r * NR_I8 + c]


@numba.njit(**NJIT_EXACT)
def _rows_as_a_serial(a, xs, zp, ap, bw, kp, m, out):
    _pack_rows_as_a(a, xs, zp, ap)
    tile = np.empty(MR_I8 * NR_I8, np.int32)
    _rows_as_a_range(ap, bw, kp, a.shape[0], m, out, 0, (m + NR_I8 - 1) // NR_I8, tile)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _rows_as_a_parallel(a, xs, zp, ap, bw, kp, m, out, tasks):
    _pack_rows_as_a(a, xs, zp, ap)
    panels = (m + NR_I8 - 1) // NR_I8
    for t in prange(tasks):
        tile = np.empty(MR_I8 * NR_I8, np.int32)
        _rows_as_a_range(ap, bw, kp, a.shape[0], m, out, t * panels // tasks, (t + 1) * panels // tasks, tile)


# ---------------------------------------------------------------------------------------------------
# byte dot products
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT_EXACT)
def _quad(nr, dst, doff, src, soff, ld, flip, cs, want_cs):
    # one k-quad of a panel (see vec_i8dot.pack_quads_*): nr picks the kernel's packing
    if nr == 32:
        pack_quads_32(dst, doff, src, soff, ld, flip, cs, want_cs)
    elif nr == 16:
        pack_quads_16(dst, doff, src, soff, ld, flip, cs, want_cs)
    else:
        pack_quads_8s(dst, doff, src, soff, ld, flip, cs, want_cs)


@numba.njit(**NJIT_EXACT)
def _image_segs(nr, bp, x, total, kq, k, ktab, segs, nseg, oxs, h, w, sw, bz, flip, cs, want_cs):
    if nr == 32:
        pack_image_segs_32(bp, x, total, kq, k, ktab, segs, nseg, oxs, h, w, sw, bz, flip, cs, want_cs)
    elif nr == 16:
        pack_image_segs_16(bp, x, total, kq, k, ktab, segs, nseg, oxs, h, w, sw, bz, flip, cs, want_cs)
    else:
        pack_image_segs_8s(bp, x, total, kq, k, ktab, segs, nseg, oxs, h, w, sw, bz, flip, cs, want_cs)


@numba.njit(**NJIT_EXACT)
def _image_contig(nr, bp, x, total, col0, kq, k, ktab, oy, ox, h, w, bz, flip, cs, want_cs):
    if nr == 32:
        pack_image_contig_32(bp, x, total, col0, kq, k, ktab, oy, ox, h, w, bz, flip, cs, want_cs)
    elif nr == 16:
        pack_image_contig_16(bp, x, total, col0, kq, k, ktab, oy, ox, h, w, bz, flip, cs, want_cs)
    else:
        pack_image_contig_8s(bp, x, total, col0, kq, k, ktab, oy, ox, h, w, bz, flip, cs, want_cs)


@numba.njit(inline="always", **NJIT_EXACT)
def _tile(kind, kq, ap, a_off, bp, rp, row0, cs, colcorr, store, out, o_off, ldo, mrows, ncols, tb, zp, lo, hi, mode):
    if kind == K_VNNI512:
        dot_tile_vnni512(kq, ap, a_off, bp, 0, rp, row0, cs, colcorr, store, out, o_off, ldo, mrows, ncols, tb, zp, lo,
                         hi, mode)
    elif kind == K_VNNI256:
        dot_tile_vnni256(kq, ap, a_off, bp, 0, rp, row0, cs, colcorr, store, out, o_off, ldo, mrows, ncols, tb, zp, lo,
                         hi, mode)
    else:
        dot_tile_sdot(kq, ap, a_off, bp, 0, rp, row0, cs, colcorr, store, out, o_off, ldo, mrows, ncols, tb, zp, lo,
                      hi, mode)


@numba.njit(inline="always", **NJIT_EXACT)
def _byte(v, flip):
    return np.uint8(np.uint8(v) ^ np.uint8(flip))


@numba.njit(inline="always", **NJIT_EXACT)
def _bval(u, signed):
    # a packed byte as the kernel reads it
    return np.int32(u) - 256 if signed and u >= 128 else np.int32(u)


@numba.njit(**NJIT_EXACT)
def _pack_cols_dot(nr, x, col0, nc, kq, flip, bp, cs, colcorr, tmp):
    # x: (K, N) 8-bit -> the k-quads of columns col0..col0+nc (zero padded)
    k, n = x.shape
    q0 = 0
    if nc == nr:
        q0 = k // 4
        for q in range(q0):
            _quad(nr, bp, q * 4 * nr, x, 4 * q * n + col0, n, flip, cs, colcorr)
    for q in range(q0, kq):
        for t in range(4):
            kk = 4 * q + t
            for c in range(nr):
                tmp[t * nr + c] = _byte(x[kk, col0 + c], flip) if kk < k and c < nc else np.uint8(0)
        _quad(nr, bp, q * 4 * nr, tmp, 0, nr, 0, cs, colcorr)


@numba.njit(**NJIT_EXACT)
def _pack_rows_dot(nr, signed, a, col0, nc, kq, flip, bp, cs, colcorr):
    # a: (R, K) 8-bit, rows col0..col0+nc are the panel's columns
    k = a.shape[1]
    kf = k // 4
    for c in range(nr):
        if c >= nc:
            for q in range(kq):
                for t in range(4):
                    bp[q * 4 * nr + 4 * c + t] = 0
            cs[c] = 0
            continue
        r = col0 + c
        copy_quads(bp, 4 * c, 4 * nr, a, r * k, kf, flip)
        if kf < kq:
            for t in range(4):
                kk = 4 * kf + t
                bp[kf * 4 * nr + 4 * c + t] = _byte(a[r, kk], flip) if kk < k else np.uint8(0)
        if colcorr:
            s = np.int32(0)
            for kk in range(k):
                s += _bval(_byte(a[r, kk], flip), signed)
            cs[c] = s


@numba.njit(**NJIT_EXACT)
def _pack_image_dot(nr, x, col0, geo, ktab, kq, flip, bz, bp, cs, colcorr, tmp, seg, oyx, segs):
    # x: (C, H, W) 8-bit image -> the k-quads of output pixels col0..col0+nr of the implicit im2col matrix
    # (ktab: image_ktab). Padding taps are bz, rows past K 0; lanes past the last pixel are junk.
    h, w = geo[0], geo[1]
    sh, sw = geo[4], geo[5]
    oh, ow = geo[10], geo[11]
    k = ktab.shape[1]
    total = x.size
    if sh == 1 and sw == 1 and ow == w:
        # output pixels read consecutive input pixels: one vector load per im2col row (vec_i8dot)
        for c in range(nr):
            p = min(col0 + c, oh * ow - 1)
            oyx[0, c] = p // ow
            oyx[1, c] = p - (p // ow) * ow
        _image_contig(nr, bp, x, total, col0, kq, k, ktab, oyx[0], oyx[1], h, w, bz, flip, cs, colcorr)
        return
    nseg, filled = _segments(col0, nr, ow, oh * ow, seg)
    if sw == 1 or sw == 2:
        # one vector load (sw = 2: of 2*nr bytes, even lanes kept) per output row segment and im2col row
        for s in range(nseg):
            c0 = seg[2, s]
            segs[0, s] = seg[0, s] * sh
            segs[1, s] = c0
            segs[2, s] = c0 + seg[3, s]
            segs[3, s] = (seg[1, s] - c0) * sw
            for c in range(c0, c0 + seg[3, s]):
                oyx[1, c] = (seg[1, s] + c - c0) * sw
        _image_segs(nr, bp, x, total, kq, k, ktab, segs, nseg, oyx[1], h, w, sw, bz, flip, cs, colcorr)
        return
    # other strides: byte by byte
    xf = x.reshape(total)
    for q in range(kq):
        for t in range(4):
            kk = 4 * q + t
            for c in range(nr):
                tmp[t * nr + c] = 0
            if kk >= k:
                continue
            plane = ktab[0, kk]
            dy = ktab[4, kk]
            dx = ktab[5, kk]
            for s in range(nseg):
                y = seg[0, s] * sh + dy
                for c in range(seg[3, s]):
                    xx = (seg[1, s] + c) * sw + dx
                    v = np.uint8(bz)
                    if 0 <= y < h and 0 <= xx < w:
                        v = _byte(xf[plane + y * w + xx], flip)
                    tmp[t * nr + seg[2, s] + c] = v
        _quad(nr, bp, q * 4 * nr, tmp, 0, nr, 0, cs, colcorr)


@numba.njit(inline="always", **NJIT_EXACT)
def _dot_pack(kind, src, x, geo, ktab, flip, bz, j, kq, colcorr, bp, cs, tmp, seg, oyx, segs):
    # column panel j of B into bp (k-quads) and, with colcorr, its column sums into cs
    nr = _NR[kind]
    col0 = j * nr
    nc = min(nr, _ncols(src, x, geo) - col0)
    if colcorr:
        cs[:nr] = 0
    if src == SRC_COLS:
        _pack_cols_dot(nr, x[0], col0, nc, kq, flip, bp, cs, colcorr, tmp)
    elif src == SRC_ROWS:
        _pack_rows_dot(nr, kind == K_SDOT, x[0], col0, nc, kq, flip, bp, cs, colcorr)
    else:
        _pack_image_dot(nr, x, col0, geo, ktab, kq, flip, bz, bp, cs, colcorr, tmp, seg, oyx, segs)


@numba.njit(inline="always", **NJIT_EXACT)
def _dot_tiles(kind, src, ap, x, geo, j, i0, i1, kq, m, bp, cs, rp, colcorr, store, bias, m0, shift, fscale, zp, lo,
               hi, mode, out, tb):
    # row tiles i0..i1 of column panel j (packed in bp, cs)
    mr = _MR[kind]
    nr = _NR[kind]
    col0 = j * nr
    nc = min(nr, _ncols(src, x, geo) - col0)
    ldo = out.shape[1]
    for i in range(i0, i1):
        row0 = i * mr
        mrows = min(mr, m - row0)
        _tile(kind, kq, ap, i * kq * 4 * mr, bp, rp, row0, cs, colcorr, store, out, row0 * ldo + col0, ldo, mrows,
              nc, tb, zp, lo, hi, mode)
        if store == ST_BUFFER:
            _epilogue_scalar(src, tb, nr, row0, mrows, col0, nc, bias, m0, shift, fscale, zp, lo, hi, mode, out)


@numba.njit(inline="always", **NJIT_EXACT)
def _dot_task(kind, src, ap, x, geo, ktab, flip, bz, j0, j1, i0, i1, kq, m, rp, colcorr, store, bias, m0, shift,
              fscale, zp, lo, hi, mode, out):
    # panels j0..j1 x row tiles i0..i1, each panel packed once into this task's buffer
    mr = _MR[kind]
    nr = _NR[kind]
    bp = np.empty(kq * 4 * nr, np.uint8)
    cs = np.zeros(nr, np.int32)
    tb = np.empty(mr * nr, np.int32)
    tmp = np.empty(4 * nr, np.uint8)
    seg = np.empty((4, nr), np.int64)
    oyx = np.empty((2, nr), np.int32)
    segs = np.empty((4, nr), np.int64)
    for j in range(j0, j1):
        _dot_pack(kind, src, x, geo, ktab, flip, bz, j, kq, colcorr, bp, cs, tmp, seg, oyx, segs)
        _dot_tiles(kind, src, ap, x, geo, j, i0, i1, kq, m, bp, cs, rp, colcorr, store, bias, m0, shift, fscale, zp,
                   lo, hi, mode, out, tb)


#: _dot_task's signatures without ``kind`` (one per output type)
_DOT_SIGS = tuple(types.void(_I64, _ro(types.int8[::1]), _ro(types.uint8[:, :, ::1]), _ro(types.int64[::1]),
                             _ro(types.int64[:, ::1]), _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64,
                             _ro(types.int32[:, ::1]), types.boolean, _I64, _ro(types.int32[::1]),
                             _ro(types.int64[::1]), _ro(types.int64[::1]), _ro(types.float32[::1]), _I64, _I64, _I64,
                             _I64, out)
                  for out in _TASK_OUTS)


def _make_dot_natives(kind: int) -> tuple:
    """The task of dot-product kernel ``kind`` as native functions (one per output type). ``kind`` is a
    constant of each (a closure variable, part of Numba's cache key), so it holds that kernel's tile and
    packing code only; with ``kind`` an argument every compiled task held every kernel the CPU might use."""

    def dot_task(src, ap, x, geo, ktab, flip, bz, j0, j1, i0, i1, kq, m, rp, colcorr, store, bias, m0, shift, fscale,
                 zp, lo, hi, mode, out):
        _dot_task(kind, src, ap, x, geo, ktab, flip, bz, j0, j1, i0, i1, kq, m, rp, colcorr, store, bias, m0, shift,
                  fscale, zp, lo, hi, mode, out)

    dot_task.__qualname__ = dot_task.__name__ = f"dot_task_{KERNEL_NAMES[kind]}"
    return tuple(native(sig, **NJIT_EXACT)(dot_task) for sig in _DOT_SIGS)


#: kernel -> its task's native functions (uint8 output, int32 output)
_DOT_NATIVES = {k: _make_dot_natives(k) for k in (K_VNNI512, K_VNNI256, K_SDOT)}
_call_dot = caller(*_DOT_NATIVES[K_SDOT])  # the same signatures for every kernel: its address says which


@numba.njit(**NJIT_EXACT)
def _dot_serial(task_fn, src, ap, x, geo, ktab, flip, bz, panels, mt, kq, m, rp, colcorr, store, bias, m0, shift,
                fscale, zp, lo, hi, mode, out):
    # task_fn: the address of the _DOT_NATIVES entry of the kernel, for out's type
    _call_dot(task_fn, (src, ap, x, geo, ktab, flip, bz, 0, panels, 0, mt, kq, m, rp, colcorr, store, bias, m0, shift,
                        fscale, zp, lo, hi, mode, out))


@numba.njit(**NJIT_EXACT_PARALLEL)
def _dot_parallel(task_fn, src, ap, x, geo, ktab, flip, bz, panels, mt, kq, m, rp, colcorr, store, bias, m0, shift,
                  fscale, zp, lo, hi, mode, out, tp, tm):
    for t in prange(tp * tm):
        pj = t // tm
        ti = t - pj * tm
        _call_dot(task_fn, (src, ap, x, geo, ktab, flip, bz, pj * panels // tp, (pj + 1) * panels // tp, ti * mt // tm,
                            (ti + 1) * mt // tm, kq, m, rp, colcorr, store, bias, m0, shift, fscale, zp, lo, hi, mode,
                            out))


def task_natives(kernel: int) -> tuple:
    """The native functions of an int8 GEMM kernel's task (uint8 output, int32 output)."""
    return _PAIRS_NATIVES if kernel == K_PAIRS else _DOT_NATIVES[kernel]


def usable_natives() -> tuple:
    """The int8 task native functions the codegen in force can run (the pairs task, and the dot-product
    kernels it has)."""
    return _PAIRS_NATIVES + tuple(fn for k in available_kernels() if k != K_PAIRS for fn in _DOT_NATIVES[k])


@numba.njit(inline="always", **NJIT_EXACT)
def _gemv_range(w, x, rowc, az, bias, m0, shift, fscale, zp, lo, hi, mode, out, m_lo, m_hi):
    # rows m_lo..m_hi of out (R, M) = requantize((W - az) (M, K) @ (X - bz) (R, K)^T + bias): w and x hold
    # the real 8-bit values (int8 or uint8, unpacked); rowc[m] = K*az[m]*bz - bz*rowsum(W)[m] (int32, wrapping)
    r_count, k_len = x.shape
    for r in range(r_count):
        xr = x[r]
        sx = np.int32(0)
        for k in range(k_len):
            sx += np.int32(xr[k])
        for m in range(m_lo, m_hi):
            wr = w[m]
            acc = np.int32(0)
            for k in range(k_len):  # LLVM vectorizes this (widening multiply-add pairs)
                acc += np.int32(wr[k]) * np.int32(xr[k])
            acc += rowc[m] - az[m] * sx
            a = np.int64(acc) + np.int64(bias[m])
            out[r, m] = a if mode == MODE_RAW else requantize(a, m0[m], shift[m], fscale[m], zp, lo, hi, mode)


@numba.njit(**NJIT_EXACT)
def _gemv_serial(w, x, rowc, az, bias, m0, shift, fscale, zp, lo, hi, mode, out):
    _gemv_range(w, x, rowc, az, bias, m0, shift, fscale, zp, lo, hi, mode, out, 0, w.shape[0])


@numba.njit(**NJIT_EXACT_PARALLEL)
def _gemv_parallel(w, x, rowc, az, bias, m0, shift, fscale, zp, lo, hi, mode, out, tasks):
    m = w.shape[0]
    for t in prange(tasks):
        _gemv_range(w, x, rowc, az, bias, m0, shift, fscale, zp, lo, hi, mode, out, t * m // tasks,
                    (t + 1) * m // tasks)


# ---------------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------------
def conv_geometry(h, w, kh, kw, strides, dilations, pads, c0, cg) -> np.ndarray:
    """The ``geo`` array of the image packing for a convolution over channels c0..c0+cg; pads are
    (top, left, bottom, right)."""
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    return np.array([h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0, cg], np.int64)


def image_ktab(geo: np.ndarray) -> np.ndarray:
    """(6, K) int64 per im2col row kk = (ci, i, j): offset of input plane c0 + ci, i*dh, j*dw, and for
    consecutive-pixel convolutions the flat offset plane + dy*w + dx, dy = i*dh - pt, dx = j*dw - pl."""
    h, w, kh, kw, dh, dw, pt, pl, c0, cg = (int(geo[i]) for i in (0, 1, 2, 3, 6, 7, 8, 9, 12, 13))
    ci, i, j = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
    plane = (c0 + ci) * h * w
    dy, dx = i * dh - pt, j * dw - pl
    return np.stack([plane.ravel(), (i * dh).ravel(), (j * dw).ravel(), (plane + dy * w + dx).ravel(), dy.ravel(),
                     dx.ravel()]).astype(np.int64)


_NO_GEO = np.zeros(14, np.int64)
_NO_KTAB = np.zeros((6, 1), np.int64)


def _plan(panels: int, mt: int, threads: int) -> tuple[int, int]:
    """(column-panel runs, row-tile runs) for ``threads`` tasks: the split whose busiest task does the
    least (a task packs each of its panels once, about half a tile's work, then runs its tiles on it)."""
    best = None
    for tp in range(1, threads + 1):
        tm = threads // tp
        if tp > panels or tm > mt or tm < 1:
            continue
        cost = -(-panels // tp) * (-(-mt // tm) + 0.5)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, tp, tm)
    return (1, 1) if best is None else best[1:]


def _wrap32(v: np.ndarray) -> np.ndarray:
    return (np.asarray(v, np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


class QGemm:
    """A prepared 8-bit GEMM over constant weights (see the module docstring).

    ``QGemm(w, bias, req, x_zp, w_zp=0, kernel=None)``: w (M, K) int8 or uint8; bias (M,) int32 or None;
    ``req`` a :class:`~edgedl.quant.requant.Requant` with M channels, or None for raw int32 outputs; w_zp
    scalar or per row; ``kernel`` one of :func:`available_kernels` (default :data:`KERNEL_I8`). Calls (all
    shapes are checked here, the kernels trust them):

    * ``q(x, out)``: x (K, N) -> out (M, N);
    * ``q.rows(a, out)``: a (R, K) -> out (R, M) (out[r, m] for activation row r);
    * ``q.image(x, geo, out)``: x (C, H, W), ``geo`` from :func:`conv_geometry` -> out (M, OH*OW).
    """

    def __init__(self, w, bias, req: Requant | None, x_zp: int, w_zp=0, kernel: int | None = None):
        w = np.asarray(w)
        if w.dtype not in (np.int8, np.uint8) or w.ndim != 2:
            raise ValueError(f"weights must be a 2-D int8 or uint8 array, got {w.dtype}{w.shape}")
        self.m, self.k = w.shape
        if self.k >= 1 << 15:
            raise ValueError(f"K = {self.k} could overflow the int32 accumulators (at most 32767)")
        kernel = preferred_kernel() if kernel is None else int(kernel)
        if kernel not in available_kernels():
            raise ValueError(f"kernel {KERNEL_NAMES.get(kernel, kernel)!r} is not available on this CPU "
                             f"(available: {[KERNEL_NAMES[k] for k in available_kernels()]})")
        self.kernel = kernel
        self.mr, self.nr = _MR[kernel], _NR[kernel]
        self.mt = -(-self.m // self.mr)
        w_zp = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (self.m,)).copy()
        self.bias = np.zeros(self.m, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(-1).copy()
        if req is None:
            req = Requant(np.zeros(self.m, np.int64), np.zeros(self.m, np.int64), np.zeros(self.m, np.float32), 0,
                          0, 0, MODE_RAW)
        if req.m0.shape != (self.m,):
            raise ValueError(f"requantization has {req.m0.shape[0]} channels, the weights {self.m} rows")
        self.req = req
        self.x_zp = int(x_zp)
        self._w, self._w_zp = w, w_zp
        self._pairs_ap = None  # the int16-pair packing, made when that kernel runs
        self.kp = (self.k + 1) // 2  # k-pairs (int16-pair kernel)
        self.kq = (self.k + 3) // 4  # k-quads (byte dot-product kernels)
        if kernel == K_PAIRS:
            self.ap = self._pack_pairs()
        else:
            a = w.view(np.int8) if w.dtype == np.int8 else (w ^ np.uint8(0x80)).view(np.int8)
            self.az = w_zp if w.dtype == np.int8 else w_zp - 128
            self.rowsum = a.sum(axis=1, dtype=np.int64)
            pad = np.zeros((self.mt * self.mr, self.kq * 4), np.int8)
            pad[:self.m, :self.k] = a
            self.ap = aligned_copy(pad.reshape(self.mt, self.mr, self.kq, 4).transpose(0, 2, 1, 3))
            self.colcorr = bool(np.any(self.az != 0))
        self.store = self._store_kind(w, w_zp)
        self._rp = {}
        self._ktabs = {}
        self._gemv_params = None  # (w, rowc, az) of the matrix-vector kernel, made on its first call
        self._rows_b = None  # the weights as int16-pair B panels (raw rows on the pairs kernel), made on first use

    # -- preparation -------------------------------------------------------------------------------
    def _pack_pairs(self) -> np.ndarray:
        if self._pairs_ap is None:
            mt = -(-self.m // MR_I8)
            ap = aligned_zeros(mt * ((self.k + 1) // 2) * 2 * MR_I8, np.int16)
            pack_weights_i8(self._w, self._w_zp, ap)
            self._pairs_ap = ap
        return self._pairs_ap

    def _store_kind(self, w, w_zp) -> int:
        """ST_INT32 for raw outputs; ST_REQUANT when the vector epilogue is exact (acc + bias an int32 for
        every input, multipliers in range), else ST_BUFFER (scalar epilogue)."""
        r = self.req
        if r.mode == MODE_RAW:
            return ST_INT32
        wmax = np.abs(w.astype(np.int64) - w_zp[:, None]).max(axis=1) if self.k else np.zeros(self.m, np.int64)
        xmax = max(abs(-128 - self.x_zp), abs(255 - self.x_zp))  # |x - x_zp| for int8 or uint8 x
        bound = self.k * wmax * xmax + np.abs(self.bias.astype(np.int64))
        ok = bool(np.all(bound < 2**31)) and bool(np.all((r.m0 >= 0) & (r.m0 < 2**31)))
        if r.mode == MODE_DOUBLE:
            ok &= bool(np.all((r.shift >= -31) & (r.shift <= 31)))
        elif r.mode == MODE_SINGLE:
            ok &= bool(np.all((r.shift >= -31) & (r.shift <= 30)))
        elif r.mode != MODE_FLOAT:
            ok = False
        ok &= -(2**31) <= r.lo - r.zp and r.hi - r.zp < 2**31
        return ST_REQUANT if ok else ST_BUFFER

    def _operand(self, xdtype) -> tuple[int, int]:
        """(flip, bz): the XOR that turns activations of this type into the kernel's B bytes, and the
        packed value of the zero point (see the module doc)."""
        signed_b = B_SIGNED.get(self.kernel, False)
        is_i8 = np.dtype(xdtype) == np.int8
        flip = 0x80 if is_i8 != signed_b else 0
        bz = self.x_zp + (128 if (is_i8 and not signed_b) else -128 if (signed_b and not is_i8) else 0)
        return flip, bz

    def _row_params(self, xdtype, kernel: int | None = None) -> np.ndarray:
        """The per-row parameter table ``rp`` (vec_i8dot.RP_*) of ``kernel`` (default: this GEMM's) for
        activations of type ``xdtype`` (cached)."""
        kernel = self.kernel if kernel is None else kernel
        key = (np.dtype(xdtype).str, kernel)
        rp = self._rp.get(key)
        if rp is not None:
            return rp
        r = self.req
        m = self.m
        rp = np.zeros((RP_ROWS, -(-m // _MR[kernel]) * _MR[kernel]), np.int32)
        if kernel == K_PAIRS:
            rowc = np.zeros(m, np.int64)  # the zero points are subtracted while packing
        else:
            _, bz = self._operand(xdtype)
            rowc = self.k * self.az * bz - bz * self.rowsum
            rp[RP_AZ, :m] = _wrap32(self.az)
        rp[RP_ADD, :m] = _wrap32(rowc + self.bias)
        rp[RP_ADD_RAW, :m] = _wrap32(rowc)
        if self.store == ST_REQUANT:
            shift = np.asarray(r.shift, np.int64)
            rp[RP_M0, :m] = r.m0
            rp[RP_LEFT, :m] = np.maximum(shift, 0)
            rp[RP_RIGHT, :m] = np.maximum(-shift, 0)
            rp[RP_T, :m] = 31 - shift
            rp[RP_FSCALE, :m] = np.asarray(r.fscale, np.float32).view(np.int32)
        self._rp[key] = rp
        return rp

    def out_dtype_ok(self, out: np.ndarray) -> bool:
        return out.dtype == np.int32 if self.req.mode == MODE_RAW else out.dtype in (np.int8, np.uint8)

    # -- calls -------------------------------------------------------------------------------------
    def _prepare(self, src, x3, geo, ncols, out, threads=None) -> tuple:
        """(compiled function, arguments) of one call: x3 the source (3-D), out the checked output."""
        r = self.req
        threads = num_threads() if threads is None else threads
        kernel = self.kernel
        flip, bz = self._operand(x3.dtype)
        if kernel != K_PAIRS and src == SRC_IMAGE and not (-128 <= bz <= 127 if B_SIGNED[kernel] else 0 <= bz <= 255):
            kernel = K_PAIRS  # a zero point outside the byte range: padding taps cannot be packed as bytes
        mr, nr = _MR[kernel], _NR[kernel]
        mt = -(-self.m // mr)
        panels = -(-ncols // nr)
        store = ST_BUFFER if src == SRC_ROWS else self.store  # the transposed output: scalar stores
        work = self.m * (self.k + EPILOGUE_MACS) * panels * nr  # multiply-adds, plus the per-output costs
        tp, tm = (1, 1)
        if threads > 1 and work >= _config.GEMM_PARALLEL_MIN_WORK * _MIN_WORK_SCALE[kernel]:
            tp, tm = _plan(panels, mt, threads)
        # NOTE: the kernels see bytes (activations as uint8, 8-bit outputs as uint8: the same bits), which
        # halves the compiled variants; the activation type is a flag (pairs) or the XOR ``flip`` (dot)
        xb = x3.view(np.uint8)
        outb = out if out.dtype == np.int32 else out.view(np.uint8)
        task_fn = task_natives(kernel)[0 if outb.dtype == np.uint8 else 1].address
        if kernel == K_PAIRS:
            ap = self._pack_pairs()
            rp = self._row_params(x3.dtype, K_PAIRS)
            # the zero point in the unsigned byte domain of the vectorized packers (an image's padding taps are
            # that byte; a matrix's zero point is only subtracted: any int16 value minus a byte)
            pbz = self.x_zp + (128 if x3.dtype == np.int8 else 0)
            if not (0 <= pbz <= 255 or (src == SRC_COLS and abs(pbz) < 2 ** 15 - 256)):
                pbz = NO_BYTE_ZP
            args = (task_fn, src, ap, xb, x3.dtype == np.int8, self.x_zp, geo,
                    self._ktab(geo) if src == SRC_IMAGE else _NO_KTAB, pbz, panels, mt, (self.k + 1) // 2, self.m,
                    rp, store, self.bias, r.m0, r.shift, r.fscale, r.zp, r.lo, r.hi, r.mode, outb)
            return (_pairs_parallel, *args, tp, tm) if tp * tm > 1 else (_pairs_serial, *args)
        args = (task_fn, src, self.ap, xb, geo, self._ktab(geo) if src == SRC_IMAGE else _NO_KTAB, flip, bz & 0xFF,
                panels, mt, self.kq, self.m, self._row_params(x3.dtype), self.colcorr, store, self.bias, r.m0, r.shift,
                r.fscale, r.zp, r.lo, r.hi, r.mode, outb)
        return (_dot_parallel, *args, tp, tm) if tp * tm > 1 else (_dot_serial, *args)

    def _ktab(self, geo) -> np.ndarray:
        key = geo.tobytes()
        kt = self._ktabs.get(key)
        if kt is None:
            kt = self._ktabs[key] = image_ktab(geo)
        return kt

    def _check(self, x, out, want_x, want_out):
        if x.dtype not in (np.int8, np.uint8) or tuple(x.shape) != want_x:
            raise ValueError(f"input must be 8-bit {want_x}, got {x.dtype}{x.shape}")
        if tuple(out.shape) != want_out or not self.out_dtype_ok(out) or not out.flags.c_contiguous:
            raise ValueError(f"output must be a contiguous {want_out} array of the output type, got "
                             f"{out.dtype}{out.shape}")

    def _gemv(self, a, out, threads=None) -> tuple:
        """(compiled function, arguments) of the matrix-vector kernel: a (R, K) activation rows, out (R, M).
        For a few rows (a fully connected layer at batch 1) a tile kernel would compute NR columns to keep R:
        this one computes only the R real ones (LLVM vectorizes its k loop into widening multiply-adds)."""
        if self._gemv_params is None:
            w = np.ascontiguousarray(self._w)
            az = self._w_zp
            rowsum = w.sum(axis=1, dtype=np.int64)
            self._gemv_params = (w, _wrap32(self.k * az * self.x_zp - self.x_zp * rowsum), _wrap32(az))
        w, rowc, az = self._gemv_params
        r = self.req
        threads = num_threads() if threads is None else threads
        outb = out if out.dtype == np.int32 else out.view(np.uint8)
        args = (w, a, rowc, az, self.bias, r.m0, r.shift, r.fscale, r.zp, r.lo, r.hi, r.mode, outb)
        tasks = min(threads, self.m)
        if tasks > 1 and self.m * self.k * a.shape[0] >= _config.GEMM_PARALLEL_MIN_WORK * GEMV_PARALLEL_SCALE:
            return (_gemv_parallel, *args, tasks)
        return (_gemv_serial, *args)

    def _gemv_ok(self, rows: int) -> bool:
        """Whether ``rows`` activation rows run the matrix-vector kernel rather than a tile kernel."""
        return rows <= max(1, self.nr // 4)

    def _cols(self, x, out, threads):
        n = x.shape[1] if x.ndim == 2 else -1
        self._check(x, out, (self.k, n), (self.m, n))
        x = np.ascontiguousarray(x)
        if n == 1:  # a (K, 1) column is a (1, K) row
            return self._gemv(x.reshape(1, self.k), out.reshape(1, self.m), threads)
        return self._prepare(SRC_COLS, x.reshape(1, *x.shape), _NO_GEO, n, out, threads)

    def _rows(self, a, out, threads):
        r = a.shape[0] if a.ndim == 2 else -1
        self._check(a, out, (r, self.k), (r, self.m))
        a = np.ascontiguousarray(a)
        if self._gemv_ok(r):
            return self._gemv(a, out, threads)
        if self.kernel == K_PAIRS and self.req.mode == MODE_RAW and not self.bias.any():
            return self._rows_as_a(a, out, threads)
        return self._prepare(SRC_ROWS, a.reshape(1, *a.shape), _NO_GEO, r, out, threads)

    def _rows_as_a(self, a, out, threads):
        """(function, arguments) of raw int32 rows on the int16 pairs (MatMulInteger): the activation rows are
        the tile's rows (packed per call, MR_I8 at a time) and the weights its columns, packed once as B panels:
        each weight panel streams once against every row (the other way round a row count such as 20 fills 20 of
        32 columns; ddddocr_old's 20 x 1024 x 8210 on Zen 3: 4.4 -> 3.0 ms in the model's op profile, 2.7 ms
        alone), and out (R, M) is stored row by row."""
        if self._rows_b is None:
            j = -(-self.m // NR_I8)
            wz = np.zeros((j * NR_I8, 2 * self.kp), np.int16)
            wz[:self.m, :self.k] = self._w.astype(np.int16) - self._w_zp[:, None].astype(np.int16)
            self._rows_b = aligned_copy(wz.reshape(j, NR_I8, self.kp, 2).transpose(0, 2, 1, 3)).reshape(-1)
        r = a.shape[0]
        ap = np.empty(-(-r // MR_I8) * self.kp * 2 * MR_I8, np.int16)
        threads = num_threads() if threads is None else threads
        tasks = min(threads, -(-self.m // NR_I8))
        args = (a.view(np.uint8), a.dtype == np.int8, self.x_zp, ap, self._rows_b, self.kp, self.m, out)
        if tasks > 1 and self.m * self.k * r >= _config.GEMM_PARALLEL_MIN_WORK * _MIN_WORK_SCALE[K_PAIRS]:
            return (_rows_as_a_parallel, *args, tasks)
        return (_rows_as_a_serial, *args)

    def _image(self, x, geo, out, threads):
        h, w, kh, kw, c0, cg = (int(geo[i]) for i in (0, 1, 2, 3, 12, 13))
        npix = int(geo[10] * geo[11])
        if x.ndim != 3 or x.shape[1:] != (h, w) or c0 + cg > x.shape[0] or cg * kh * kw != self.k:
            raise ValueError(f"image {x.shape} does not fit geometry {geo.tolist()} and K = {self.k}")
        self._check(x, out, tuple(x.shape), (self.m, npix))
        return self._prepare(SRC_IMAGE, np.ascontiguousarray(x), geo, npix, out, threads)

    def __call__(self, x: np.ndarray, out: np.ndarray, threads: int | None = None) -> np.ndarray:
        fn, *args = self._cols(x, out, threads)
        fn(*args)
        return out

    def rows(self, a: np.ndarray, out: np.ndarray, threads: int | None = None) -> np.ndarray:
        fn, *args = self._rows(a, out, threads)
        fn(*args)
        return out

    def image(self, x: np.ndarray, geo: np.ndarray, out: np.ndarray, threads: int | None = None) -> np.ndarray:
        fn, *args = self._image(x, geo, out, threads)
        fn(*args)
        return out

    def bind(self, x: np.ndarray, out: np.ndarray, threads: int | None = None, src: str = "cols",
             geo: np.ndarray | None = None):
        """A no-argument callable doing ``self(x, out)`` (``src="rows"``: ``self.rows(x, out)``; ``"image"``:
        ``self.image(x, geo, out)``) with every argument prepared now: x and out must stay the same arrays
        (their contents may change) and be contiguous."""
        if not x.flags.c_contiguous:
            raise ValueError("bind needs a contiguous input (a copy would not see later contents)")
        if src == "cols":
            call = self._cols(x, out, threads)
        elif src == "rows":
            call = self._rows(x, out, threads)
        else:
            call = self._image(x, geo, out, threads)
        return functools.partial(*call)
