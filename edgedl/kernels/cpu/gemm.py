"""fp32 GEMM: packing, the blocked (and parallel) driver around the LLVM microkernel, GEMV paths,
batched matmul and pre-packed weights.

Layouts
-------
* packed A (the "weights" side, M rows): row panels of ``MR`` rows, panel ``p`` holds
  ``ap[p*K*MR + k*MR + r] = A[p*MR + r, k]`` (rows past M are zero). Size :func:`packed_a_size`.
* packed B (K x N): column panels of ``NR`` columns, ``bp[q*K*NR + k*NR + j] = B[k, q*NR + j]`` (zero
  padded). Size :func:`packed_b_size`. Only a pre-packed constant B (an FC weight) is stored like this;
  otherwise the driver packs each ``KC x NR`` panel of B on the fly into a per-thread buffer, straight
  from the source through a *B geometry* + row table (:func:`matrix_geometry` / :func:`matrix_ktab`),
  which also describes im2col of a convolution input (:func:`conv_geometry` / :func:`conv_ktab`), so
  convolutions never materialize an im2col matrix.

Driver (:class:`GemmCall`)
--------------------------
C = act(A @ B + bias) (or C += A @ B with ``accumulate``) for a batch of independent GEMMs that share
M, N, K (convolution: images x groups), split into tasks (GEMM x column block x row split); each task
owns its C tiles, tasks run under ``prange`` when the work is at least ``config.GEMM_PARALLEL_MIN_WORK``. Inside a
task: K blocks of ``KC`` > row blocks of ``MC`` rows (A block in L2) > B panels (packed once per K block,
kept for the next row blocks) > the tiles of the panel in one IR loop. Every C element is computed by
the same sequence of operations whatever the thread count, so results are bitwise identical for 1 or N
threads. Bias (per row or per column) enters the accumulators before the k loop; the activation runs on
the tile right after its last K block (in registers for the simple ones, on the L1-hot tile otherwise).

High level: :func:`gemm`, :func:`matmul`, :class:`PackedA` (constant left operand, e.g. conv weights),
:class:`PackedWeight` (FC weight, Y = X @ W^T), :func:`gemv` / :func:`vecmat` (1 to 3 vectors).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange, types

from ..aligned import aligned_zeros
from . import config as _config
from .act import ACT_NONE, NUM_ACTS, SIMPLE_ACTS, act_code, act_ref, apply_act
from .act_vec import act_run
from .config import NJIT, NJIT_PARALLEL, num_threads
from .native import caller, native
from .native import readonly as _ro
from .vec import (
    MR,
    NR,
    UK_ACCUMULATE,
    UK_BIAS,
    UK_BIAS_COL,
    VW,
    copy_floats,
    copy_nr,
    copy_nr_s2,
    microkernel_panel,
    microkernel_panel_ldb,
    microkernel_panel_narrow,
    microkernel_panel_rows,
)

__all__ = [
    "MR", "NR", "KC", "MC", "NC", "matrix_ktab", "conv_ktab", "BIAS_NONE", "BIAS_ROW", "BIAS_COL",
    "packed_a_size", "packed_b_size", "pack_a", "pack_b", "matrix_geometry", "conv_geometry",
    "sgemm_packed", "gemm_driver", "gemm", "matmul", "gemv", "vecmat", "PackedA", "PackedWeight",
    "gemm_ref", "GemmCall", "pad_bias", "pack_a_parallel",
]

#: K block (B panel of KC x NR floats = 16 KiB stays in L1) ...
KC = 256
#: ... and for long dot products (K >= K_LONG: the 3x3 convolutions of 256 to 512 channels, big FC layers),
#: whose C tiles would otherwise make a round trip per 256 steps: 512 (measured on Zen 4, 1 thread: 54 x 512 x
#: 4608 from 85 to 98 GFLOP/s, 512 x 49 x 4608 from 68 to 81; no change below K = 600)
KC_LONG = 512
K_LONG = 2048
#: rows of C per task row block (A block of MC x KC floats stays in L2)
MC = 24 * MR
#: columns of C per task column block (when the task has several row blocks, all its packed B panels
#: of one K block are kept: NC/NR panels of KC x NR floats)
NC = 24 * NR

#: GEMMs with at most this many rows read B in place instead of packing it: a plain row-major B whole, a
#: stride-1 convolution's image in its interior panels
DIRECT_B_MAX_M = 48
#: in-place B modes of the driver
DIRECT_NONE, DIRECT_MATRIX, DIRECT_CONV, DIRECT_FLAT = 0, 1, 2, 3

#: bias modes
BIAS_NONE = 0
BIAS_ROW = 1
BIAS_COL = 2

#: geometry vector fields (int64): B[k, j] of im2col with k = (c, kh, kw), j = (oh, ow)
G_SC, G_SY, G_SX, G_H, G_W, G_KH, G_KW, G_SH, G_SW, G_DH, G_DW, G_PT, G_PL, G_OW = range(14)
GEOM_LEN = 14

_SIMPLE = np.array([code in SIMPLE_ACTS for code in range(NUM_ACTS)], dtype=np.bool_)


def packed_a_size(m: int, k: int) -> int:
    """float32 elements of a packed A (M x K)."""
    return -(-m // MR) * MR * max(k, 1)


def packed_b_size(k: int, n: int) -> int:
    """float32 elements of a packed B (K x N)."""
    return -(-n // NR) * NR * max(k, 1)


def matrix_geometry(k: int, n: int, row_stride: int, col_stride: int = 1) -> np.ndarray:
    """B geometry of a plain matrix: B[k, j] = src[off + k*row_stride + j*col_stride]."""
    return np.array([row_stride, 0, col_stride, 1, max(n, 1), 1, 1, 1, 1, 1, 1, 0, 0, max(n, 1)],
                    dtype=np.int64)


def conv_geometry(h: int, w: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, pt: int, pl: int,
                  ow: int) -> np.ndarray:
    """B geometry of im2col of one image group x[c, y, x] (C-contiguous planes of h x w):
    B[(c*kh + i)*kw + j, oy*ow + ox] = x[c, oy*sh - pt + i*dh, ox*sw - pl + j*dw] (0 outside)."""
    return np.array([h * w, w, 1, h, w, kh, kw, sh, sw, dh, dw, pt, pl, ow], dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT)
def _pack_a_panel(a, ap, p):
    m, k = a.shape
    base = p * k * MR
    r0 = p * MR
    rows = min(MR, m - r0)
    if rows == MR:
        for kk in range(k):
            for r in range(MR):
                ap[base + kk * MR + r] = a[r0 + r, kk]
    else:
        for kk in range(k):
            for r in range(rows):
                ap[base + kk * MR + r] = a[r0 + r, kk]
            for r in range(rows, MR):
                ap[base + kk * MR + r] = np.float32(0.0)


@numba.njit(**NJIT)
def pack_a(a, ap):
    """Pack A (2-D float32, any strides: a transposed view is fine) into ``ap`` (packed_a_size)."""
    for p in range((a.shape[0] + MR - 1) // MR):
        _pack_a_panel(a, ap, p)


@numba.njit(**NJIT_PARALLEL)
def pack_a_parallel(a, ap):
    """:func:`pack_a` with the row panels spread over the threads."""
    for p in prange((a.shape[0] + MR - 1) // MR):
        _pack_a_panel(a, ap, p)


def _pack_a_auto(a: np.ndarray, ap: np.ndarray, threads: int | None) -> None:
    if threads is None:
        threads = num_threads()
    if threads > 1 and a.size >= _config.PARALLEL_MIN_WORK // 2 and a.shape[0] > 2 * MR:
        pack_a_parallel(a, ap)
    else:
        pack_a(a, ap)


@numba.njit(**NJIT)
def pack_b(b, bp):
    """Pack B (2-D float32, any strides) into ``bp`` (packed_b_size) as NR-column panels."""
    k, n = b.shape
    npan = (n + NR - 1) // NR
    for q in range(npan):
        base = q * k * NR
        c0 = q * NR
        cols = min(NR, n - c0)
        for kk in range(k):
            o = base + kk * NR
            for j in range(cols):
                bp[o + j] = b[kk, c0 + j]
            for j in range(cols, NR):
                bp[o + j] = np.float32(0.0)


_ZEROS_NR = np.zeros(NR, dtype=np.float32)


@numba.njit(inline="always", **NJIT)
def _pack_b_panel(src, soff, geo, ktab, k0, kc, col0, ncols, buf, ybase, xbase):
    """Pack B[k0:k0+kc, col0:col0+ncols] (geometry ``geo``, row table ``ktab``) into buf[kc][NR],
    zero padded. Fast path: the panel's NR columns lie in one output row and the row's taps are inside
    the image: one vector copy (stride 1 or 2) per k."""
    h = geo[G_H]
    w = geo[G_W]
    sy = geo[G_SY]
    sx = geo[G_SX]
    sh = geo[G_SH]
    sw = geo[G_SW]
    ow_n = geo[G_OW]
    zero = np.float32(0.0)
    zeros = _ZEROS_NR
    oh = col0 // ow_n
    ow = col0 - oh * ow_n
    if ow + ncols <= ow_n and ncols == NR:
        y0 = oh * sh - geo[G_PT]
        x0 = ow * sw - geo[G_PL]
        span = (NR - 1) * sw
        pbase = soff + y0 * sy + x0 * sx
        step = sw * sx
        nsrc = src.size
        if (y0 >= 0 and y0 + (geo[G_KH] - 1) * geo[G_DH] < h and x0 >= 0
                and x0 + (geo[G_KW] - 1) * geo[G_DW] + span < w):
            # every tap of every row is inside the image: no checks per k
            if step == 1:
                for kk in range(kc):
                    copy_nr(buf, kk * NR, src, pbase + ktab[k0 + kk, 0])
                return
            if step == 2:
                for kk in range(kc):
                    p = pbase + ktab[k0 + kk, 0]
                    if p + 2 * NR <= nsrc:
                        copy_nr_s2(buf, kk * NR, src, p)
                    else:
                        for t in range(NR):
                            buf[kk * NR + t] = src[p + 2 * t]
                return
        for kk in range(kc):
            k = k0 + kk
            dst = kk * NR
            y = y0 + ktab[k, 1]
            x = x0 + ktab[k, 2]
            if y < 0 or y >= h:
                for t in range(NR):
                    buf[dst + t] = zero
            elif x >= 0 and x + span < w:
                p = pbase + ktab[k, 0]
                if step == 1:
                    copy_nr(buf, dst, src, p)
                elif step == 2 and p + 2 * NR <= nsrc:
                    copy_nr_s2(buf, dst, src, p)
                else:
                    for t in range(NR):
                        buf[dst + t] = src[p + t * step]
            else:
                p = pbase + ktab[k, 0]
                if step == 1:
                    # a row running off the image (left or right padding): zeros around one run
                    lo = min(NR, max(0, -x))
                    hi = max(lo, min(NR, w - x))
                    copy_floats(buf, dst, zeros, 0, NR)
                    copy_floats(buf, dst + lo, src, p + lo, hi - lo)
                else:
                    for t in range(NR):
                        xt = x + t * sw
                        buf[dst + t] = src[p + t * step] if (xt >= 0 and xt < w) else zero
        return
    # general: columns across output rows, or a partial panel. Split the panel into segments, each a run
    # of consecutive output columns of one output row (ybase/xbase hold each segment's top-left tap),
    # and copy each segment per k as a run of the source row when its taps are inside the image.
    nseg = 0
    t = 0
    while t < ncols:
        ybase[nseg] = oh * sh - geo[G_PT]
        xbase[nseg] = ow * sw - geo[G_PL]
        t += min(ncols - t, ow_n - ow)
        nseg += 1
        ow = 0
        oh += 1
    col_step = sw * sx
    span_y = (geo[G_KH] - 1) * geo[G_DH]
    span_x = (geo[G_KW] - 1) * geo[G_DW]
    t = 0
    seg_len = min(ncols, ow_n - (col0 - (col0 // ow_n) * ow_n))
    for sg in range(nseg):
        yb = ybase[sg]
        xb = xbase[sg]
        pbase = soff + yb * sy + xb * sx
        if (col_step == 1 and yb >= 0 and yb + span_y < h and xb >= 0
                and xb + span_x + (seg_len - 1) * sw < w):
            # every tap of the segment is inside the image: one run per k
            for kk in range(kc):
                copy_floats(buf, kk * NR + t, src, pbase + ktab[k0 + kk, 0], seg_len)
        else:
            for kk in range(kc):
                k = k0 + kk
                o = kk * NR + t
                y = yb + ktab[k, 1]
                x = xb + ktab[k, 2]
                if y < 0 or y >= h:
                    for q in range(seg_len):
                        buf[o + q] = zero
                    continue
                p = pbase + ktab[k, 0]
                if col_step == 1:
                    # one run of the source row, zeros where it runs off the image
                    lo = min(seg_len, max(0, -x))
                    hi = max(lo, min(seg_len, w - x))
                    if lo > 0 or hi < seg_len:
                        copy_floats(buf, o, zeros, 0, seg_len)
                    copy_floats(buf, o + lo, src, p + lo, hi - lo)
                else:
                    for q in range(seg_len):
                        xq = x + q * sw
                        buf[o + q] = src[p + q * col_step] if (xq >= 0 and xq < w) else zero
        t += seg_len
        seg_len = min(ncols - t, ow_n)
    if ncols < NR:
        for kk in range(kc):
            for q in range(ncols, NR):
                buf[kk * NR + q] = zero


def matrix_ktab(k: int, row_stride: int) -> np.ndarray:
    """Row table of a plain matrix B: (k*row_stride, 0, 0) per row k."""
    t = np.zeros((max(k, 1), 3), dtype=np.int64)
    t[:, 0] = np.arange(max(k, 1), dtype=np.int64) * row_stride
    return t


def conv_ktab(c: int, h: int, w: int, kh: int, kw: int, dh: int, dw: int) -> np.ndarray:
    """Row table of im2col: for k = (ci*kh + i)*kw + j: (ci*h*w + i*dh*w + j*dw, i*dh, j*dw)."""
    ci, i, j = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
    t = np.empty((max(c * kh * kw, 1), 3), dtype=np.int64)
    if c * kh * kw == 0:
        t[:] = 0
        return t
    t[:, 0] = (ci * h * w + i * dh * w + j * dw).reshape(-1)
    t[:, 1] = (i * dh).reshape(-1)
    t[:, 2] = (j * dw).reshape(-1)
    return t


# ---------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT)
def k_block(k):
    """Rows of B per K block for a dot product of length k (see KC, KC_LONG)."""
    return KC_LONG if k >= K_LONG else KC


@numba.njit(**NJIT)
def _act_rows(c, nbatch, ngroups, c_nstride, c_gstride, ldc, m, n, act, alpha, beta):
    # c: flat float32; the m x n block of GEMM (b, g) starts at b*c_nstride + g*c_gstride, rows ldc apart:
    # activation ``act`` applied in place, row by row (the ones the microkernel does not fuse: exp/tanh)
    for bi in range(nbatch):
        for g in range(ngroups):
            base = bi * c_nstride + g * c_gstride
            for r in range(m):
                act_run(c, base + r * ldc, base + r * ldc + n, act, alpha, beta)


_F1, _I1, _I2 = types.float32[::1], types.int64[::1], types.int64[:, ::1]
_i, _f = types.int64, types.float32
#: _run_task's signature: every array flat and contiguous except the (k, 3) int64 row table; A, B, the
#: geometry, the row table and the bias read-only
_TASK_SIG = types.void(_i, _ro(_F1), _i, _ro(_F1), _ro(_F1), _i, _i, _ro(_I1), _ro(_I2), _F1, _i, _i, _i, _ro(_F1),
                       _i, _i, _i, _i, _i, _i, _i, _i, _i, _i, types.boolean, _i, _f, _f, _i, _F1, _I1, _I1)


@native(_TASK_SIG, ahead=True, **NJIT)
def _run_task(task, ap, a_gstride, bp, bsrc, b_nstride, b_gstride, geo, ktab, c, c_nstride, c_gstride, ldc,
              bias, bias_mode, bias_gstride, m, n, k, ngroups, rs, cb, mst, nbt, accumulate, act, alpha,
              beta, direct, buf, ybase, xbase):
    """Task = (GEMM of the batch, column block of nbt tiles, row split of mst tiles).

    Loops: K blocks > row blocks of MC rows (A block in L2) > column panels (B panel in L1, packed once
    per K block and kept for the next row blocks) > row tiles. ``direct``: DIRECT_MATRIX: B is a
    row-major matrix (geometry row stride ldb, column stride 1) read in place for whole panels;
    DIRECT_CONV: B is a stride-1 convolution's image, its interior panels read in place through the row
    table; other panels are packed. DIRECT_FLAT: every panel is read in place through the row table at
    column offset ``col0`` (a zero-padded image whose output columns run over the padded width, see
    conv.Conv2d's "flat" strategy; N is a whole number of panels and the source is long enough)."""
    per = rs * cb
    gemm_i = task // per
    t = task - gemm_i * per
    cbi = t // rs
    rsi = t - cbi * rs
    bi = gemm_i // ngroups
    g = gemm_i - bi * ngroups
    mt = (m + MR - 1) // MR
    nt = (n + NR - 1) // NR
    i0 = rsi * mst
    i1 = min(mt, i0 + mst)
    j0 = cbi * nbt
    j1 = min(nt, j0 + nbt)
    if i0 >= i1 or j0 >= j1:
        return
    a_base = g * a_gstride
    b_off = bi * b_nstride + g * b_gstride
    c_base = bi * c_nstride + g * c_gstride
    bias_base = g * bias_gstride
    prepacked = bp.size > 0
    mbt = MC // MR
    nrb = (i1 - i0 + mbt - 1) // mbt
    keep = nrb > 1  # several row blocks: keep every packed panel of the column block for the next ones
    kcb = k_block(k)
    nkb = max(1, (k + kcb - 1) // kcb)
    ldb = geo[G_SC]
    ow_n = geo[G_OW]
    sh_c = geo[G_SH]
    sy_c = geo[G_SY]
    pt_c = geo[G_PT]
    pl_c = geo[G_PL]
    h_c = geo[G_H]
    w_c = geo[G_W]
    span_y = (geo[G_KH] - 1) * geo[G_DH]
    span_x = (geo[G_KW] - 1) * geo[G_DW]
    for kb in range(nkb):
        k0 = kb * kcb
        kc = min(kcb, k - k0)
        flags = 0
        if kb > 0 or accumulate:
            flags |= UK_ACCUMULATE
        if kb == 0:
            if bias_mode == BIAS_ROW:
                flags |= UK_BIAS
            elif bias_mode == BIAS_COL:
                flags |= UK_BIAS_COL
        last = kb == nkb - 1
        uact = act if last else ACT_NONE  # a simple activation (the driver applies the others afterwards)
        for ib in range(nrb):
            ia = i0 + ib * mbt
            ie = min(i1, ia + mbt)
            for jt in range(j0, j1):
                col0 = jt * NR
                if direct == DIRECT_FLAT:
                    microkernel_panel_rows(ie - ia, kc, ap, a_base + ia * k * MR + k0 * MR, k * MR, ktab, k0 * 3,
                                           bsrc, b_off + col0, c, c_base + ia * MR * ldc + col0, MR * ldc, ldc,
                                           flags, bias, bias_base + (ia * MR if bias_mode == BIAS_ROW else col0),
                                           MR if bias_mode == BIAS_ROW else 0, uact, alpha, beta,
                                           min(MR, m - (ie - 1) * MR))
                    continue
                if direct == DIRECT_CONV and n - col0 >= NR:
                    # an interior panel of a stride-1 convolution: B rows read from the image in place
                    poh = col0 // ow_n
                    pow_ = col0 - poh * ow_n
                    y0 = poh * sh_c - pt_c
                    x0 = pow_ - pl_c
                    if (pow_ + NR <= ow_n and y0 >= 0 and y0 + span_y < h_c and x0 >= 0
                            and x0 + span_x + NR - 1 < w_c):
                        microkernel_panel_rows(ie - ia, kc, ap, a_base + ia * k * MR + k0 * MR, k * MR, ktab,
                                               k0 * 3, bsrc, b_off + y0 * sy_c + x0, c,
                                               c_base + ia * MR * ldc + col0, MR * ldc, ldc, flags, bias,
                                               bias_base + (ia * MR if bias_mode == BIAS_ROW else col0),
                                               MR if bias_mode == BIAS_ROW else 0, uact, alpha, beta,
                                               min(MR, m - (ie - 1) * MR))
                        continue
                if direct == DIRECT_MATRIX and n - col0 >= NR:
                    microkernel_panel_ldb(ie - ia, kc, ap, a_base + ia * k * MR + k0 * MR, k * MR, bsrc,
                                          b_off + ktab[k0, 0] + col0, c, c_base + ia * MR * ldc + col0,
                                          MR * ldc, ldc, flags, bias,
                                          bias_base + (ia * MR if bias_mode == BIAS_ROW else col0),
                                          MR if bias_mode == BIAS_ROW else 0, uact, alpha, beta,
                                          min(MR, m - (ie - 1) * MR), NR, ldb)
                    continue
                if prepacked:
                    bpanel = bp
                    boff = jt * k * NR + k0 * NR
                else:
                    bpanel = buf
                    boff = (jt - j0) * kcb * NR if keep else 0
                    if ib == 0 or not keep:
                        _pack_b_panel(bsrc, b_off, geo, ktab, k0, kc, col0, min(NR, n - col0),
                                      buf[boff:], ybase, xbase)
                ncols = min(NR, n - col0)
                mlast = min(MR, m - (ie - 1) * MR)
                if ncols > VW:
                    microkernel_panel(ie - ia, kc, ap, a_base + ia * k * MR + k0 * MR, k * MR, bpanel, boff,
                                      c, c_base + ia * MR * ldc + col0, MR * ldc, ldc, flags, bias,
                                      bias_base + (ia * MR if bias_mode == BIAS_ROW else col0),
                                      MR if bias_mode == BIAS_ROW else 0, uact, alpha, beta, mlast, ncols)
                else:
                    microkernel_panel_narrow(ie - ia, kc, ap, a_base + ia * k * MR + k0 * MR, k * MR, bpanel,
                                             boff, c, c_base + ia * MR * ldc + col0, MR * ldc, ldc, flags,
                                             bias, bias_base + (ia * MR if bias_mode == BIAS_ROW else col0),
                                             MR if bias_mode == BIAS_ROW else 0, uact, alpha, beta, mlast,
                                             ncols)


_call_task = caller(_run_task)


@numba.njit(**NJIT)
def _gemm_serial(task_fn, ntasks, bufsize, wbuf, ibuf, ap, a_gstride, bp, bsrc, b_nstride, b_gstride, geo, ktab, c,
                 c_nstride, c_gstride, ldc, bias, bias_mode, bias_gstride, m, n, k, ngroups, rs, cb, mst, nbt,
                 accumulate, act, alpha, beta, direct):
    # wbuf: (>= bufsize,) float32 panel buffer; ibuf: (>= 2*NR,) int64 index buffers (the caller's workspace)
    buf = wbuf[:bufsize]
    ybase = ibuf[:NR]
    xbase = ibuf[NR:2 * NR]
    for task in range(ntasks):
        _call_task(task_fn, (task, ap, a_gstride, bp, bsrc, b_nstride, b_gstride, geo, ktab, c, c_nstride,
                             c_gstride, ldc, bias, bias_mode, bias_gstride, m, n, k, ngroups, rs, cb, mst, nbt,
                             accumulate, act, alpha, beta, direct, buf, ybase, xbase))


@numba.njit(**NJIT_PARALLEL)
def _gemm_parallel(task_fn, nslots, ntasks, bufsize, wbuf, ibuf, ap, a_gstride, bp, bsrc, b_nstride, b_gstride, geo,
                   ktab, c, c_nstride, c_gstride, ldc, bias, bias_mode, bias_gstride, m, n, k, ngroups, rs, cb,
                   mst, nbt, accumulate, act, alpha, beta, direct):
    # wbuf: (nslots*bufsize,) float32, ibuf: (nslots*2*NR,) int64: each slot owns its slice
    for s in prange(nslots):
        buf = wbuf[s * bufsize:(s + 1) * bufsize]
        ybase = ibuf[s * 2 * NR:s * 2 * NR + NR]
        xbase = ibuf[s * 2 * NR + NR:(s + 1) * 2 * NR]
        lo = s * ntasks // nslots
        hi = (s + 1) * ntasks // nslots
        for task in range(lo, hi):
            _call_task(task_fn, (task, ap, a_gstride, bp, bsrc, b_nstride, b_gstride, geo, ktab, c, c_nstride,
                                 c_gstride, ldc, bias, bias_mode, bias_gstride, m, n, k, ngroups, rs, cb, mst,
                                 nbt, accumulate, act, alpha, beta, direct, buf, ybase, xbase))


_EMPTY = np.zeros(0, dtype=np.float32)


def _split_heuristic(m: int, n: int, nbatch: int, threads: int):
    """(rs, cb, mst, nbt): enough tasks for every thread, preferring column blocks."""
    mt = -(-m // MR)
    nt = -(-n // NR)
    cb = -(-nt // max(1, NC // NR))
    rs = 1
    if threads > 1:
        tasks = nbatch * cb
        if tasks < 2 * threads:
            f = -(-2 * threads // tasks)
            if nt >= mt and nt >= f * cb:
                cb *= f
            else:
                rs = min(mt, f)
        tasks = nbatch * cb * rs
        if tasks % threads and tasks < 8 * threads:
            # round the number of tasks up to a multiple of the threads for an even static split
            if nt >= mt:
                while (nbatch * cb * rs) % threads and cb < nt:
                    cb += 1
            else:
                while (nbatch * cb * rs) % threads and rs < mt:
                    rs += 1
    nbt = -(-nt // cb)
    cb = -(-nt // nbt)
    mst = -(-mt // rs)
    rs = -(-mt // mst)
    return rs, cb, mst, nbt


def _busiest(m: int, n: int, nbatch: int, threads: int, split) -> int:
    """Rows x columns computed by the busiest thread under ``split`` (tasks dealt out as the driver does)."""
    rs, cb, mst, nbt = split
    per = rs * cb
    tasks = nbatch * per
    most = 0
    for slot in range(threads):
        work = 0
        for task in range(slot * tasks // threads, (slot + 1) * tasks // threads):
            cbi, rsi = divmod(task % per, rs)
            rows = min(m, (rsi + 1) * mst * MR) - rsi * mst * MR
            cols = min(n, (cbi + 1) * nbt * NR) - cbi * nbt * NR
            work += max(rows, 0) * max(cols, 0)
        most = max(most, work)
    return most


def _plan_tasks(m: int, n: int, nbatch: int, threads: int):
    """(rs, cb, mst, nbt): row splits and column blocks per GEMM and their sizes in tiles.

    The heuristic split, unless it leaves few tasks unevenly spread (a ragged last block, a task count
    that is not a multiple of the threads): then the pure column or pure row split is taken when its
    busiest thread has less work (measured: a 32 x 64 GEMM in 3 row tasks on 2 threads ran slower than
    on one)."""
    split = _split_heuristic(m, n, nbatch, threads)
    if threads <= 1 or nbatch * split[0] * split[1] > 8 * threads:
        return split
    mt = -(-m // MR)
    nt = -(-n // NR)
    candidates = [split]
    for cb_want in (threads, 2 * threads):
        if cb_want <= nt:
            nbt = -(-nt // cb_want)
            candidates.append((1, -(-nt // nbt), mt, nbt))
    for rs_want in (threads, 2 * threads):
        if rs_want <= mt:
            mst = -(-mt // rs_want)
            nbt = -(-nt // -(-nt // max(1, NC // NR)))
            candidates.append((-(-mt // mst), -(-nt // nbt), mst, nbt))
    # a task with several row blocks keeps all its packed B panels: bound them as NC does
    candidates = [c for c in candidates if c[3] <= max(1, NC // NR) or c[2] <= MC // MR] or [split]
    # NOTE: with a row split every thread packs the whole B: ~1 cycle per 8 floats against 1 per 16
    # multiply-adds, so it costs about 2 * threads / M of the work
    dup = 1.0 + 2.0 * threads / max(m, 1)
    return min(candidates, key=lambda c: (_busiest(m, n, nbatch, threads, c) * (dup if c[0] > 1 else 1.0),
                                          c[0] * c[1]))


def pad_bias(bias: np.ndarray | None, bias_mode: int, m: int, n: int, ngroups: int = 1,
             bias_gstride: int = 0) -> tuple[np.ndarray, int, int]:
    """(padded bias, bias_mode, group stride) as the driver reads it: the microkernel loads a whole
    MR (rows) / NR (columns) from every tile start, so the bias is zero padded to whole tiles."""
    if bias is None or bias_mode == BIAS_NONE:
        return _EMPTY, BIAS_NONE, 0
    bias = np.asarray(bias, dtype=np.float32).reshape(-1)
    mt = -(-m // MR)
    nt = -(-n // NR)
    if bias_mode == BIAS_ROW:
        if ngroups == 1 or bias_gstride == 0:
            arr = np.zeros(mt * MR, dtype=np.float32)
            arr[:m] = bias[:m]
            return arr, BIAS_ROW, 0
        arr = np.zeros((ngroups, mt * MR), dtype=np.float32)
        arr[:, :m] = bias[: ngroups * bias_gstride].reshape(ngroups, bias_gstride)[:, :m]
        return arr.reshape(-1), BIAS_ROW, mt * MR
    arr = np.zeros(nt * NR, dtype=np.float32)
    arr[:n] = bias[:n]
    return arr, BIAS_COL, 0


class GemmCall:
    """A prepared batched, grouped GEMM on packed A: everything but the B source and C is fixed.

    For image ``b < nbatch`` and group ``g < ngroups``, ``run(c, bsrc)`` computes
    ``C_bg = act(A_g @ B_bg + bias_g)`` (or ``C_bg += A_g @ B_bg + bias_g`` with ``accumulate``), where

    * ``A_g`` = packed A at ``ap[g*a_gstride:]`` (M x K, see :func:`pack_a`);
    * ``B_bg`` = the pre-packed ``bp`` (see :func:`pack_b`) if non-empty, else B[kk, j] read through
      geometry ``geo`` and row table ``ktab`` from the flat float32 ``bsrc`` at offset
      ``b*b_nstride + g*b_gstride`` (:func:`matrix_geometry` / :func:`matrix_ktab` for a matrix,
      :func:`conv_geometry` / :func:`conv_ktab` for im2col of an image);
    * ``C_bg`` = flat float32 ``c`` from offset ``b*c_nstride + g*c_gstride``, rows ``ldc`` apart;
    * bias: ``BIAS_ROW`` adds ``bias[g*bias_gstride + i]`` to row i, ``BIAS_COL`` ``bias[j]`` to column j;
      the activation comes last.

    The task split depends on the thread count at call time (num_threads(), or ``threads``);
    the parallel path runs when M*N*K*batch reaches config.GEMM_PARALLEL_MIN_WORK. Results do not depend on it."""

    def __init__(self, ap: np.ndarray, m: int, n: int, k: int, ldc: int, *, bp: np.ndarray = _EMPTY,
                 geo: np.ndarray | None = None, ktab: np.ndarray | None = None, nbatch: int = 1,
                 ngroups: int = 1, a_gstride: int = 0, b_nstride: int = 0, b_gstride: int = 0,
                 c_nstride: int = 0, c_gstride: int = 0, bias: np.ndarray | None = None,
                 bias_mode: int = BIAS_NONE, bias_gstride: int = 0, accumulate: bool = False,
                 act: int = ACT_NONE, alpha: float = 0.0, beta: float = 0.0, flat: bool = False):
        if bp.size == 0 and (geo is None or ktab is None):
            raise ValueError("GemmCall: give a pre-packed B or a B geometry and row table")
        self.m, self.n, self.k, self.nbatch, self.ngroups = m, n, k, nbatch, ngroups
        self._bias_spec = (bias_mode, bias_gstride)  # as given: set_bias pads a new bias the same way
        bias_arr, bias_mode, bias_gstride = pad_bias(bias, bias_mode, m, n, ngroups, bias_gstride)
        self._head = (ap, a_gstride, bp)
        self._mid = (b_nstride, b_gstride, geo if geo is not None else matrix_geometry(1, 1, 1),
                     np.ascontiguousarray(ktab if ktab is not None else matrix_ktab(1, 1), dtype=np.int64))
        self._tail = (c_nstride, c_gstride, ldc, bias_arr, bias_mode, bias_gstride, m, n, k, ngroups)
        geo_v = self._mid[2]
        # NOTE: a GEMM with few rows of A reuses each B panel only a few times, so packing it (a load and a
        # store per element) costs about as much as the multiply: read a row-major B in place instead
        plain = (bp.size == 0 and geo_v[G_KH] == 1 and geo_v[G_KW] == 1 and geo_v[G_SX] == 1
                 and geo_v[G_H] == 1 and geo_v[G_PT] == 0 and geo_v[G_PL] == 0 and geo_v[G_SH] == 1
                 and geo_v[G_SW] == 1 and geo_v[G_OW] == geo_v[G_W] and ktab is not None
                 and (k <= 1 or int(self._mid[3][1, 0] - self._mid[3][0, 0]) == int(geo_v[G_SC])))
        # ... and an image read through its row table, for the interior panels of a stride-1 convolution
        conv_rows = bp.size == 0 and ktab is not None and geo_v[G_SW] == 1 and geo_v[G_SX] == 1
        direct = DIRECT_NONE
        if m <= DIRECT_B_MAX_M:
            direct = DIRECT_MATRIX if plain else (DIRECT_CONV if conv_rows else DIRECT_NONE)
        if flat:
            if bp.size or ktab is None or n % NR:
                raise ValueError("GemmCall(flat=True) reads B through its row table in whole panels")
            direct = DIRECT_FLAT
        code = int(act_code(act))
        # NOTE: the microkernel applies the simple activations in its registers; the others (exp, tanh) run
        # over the finished output (_act_rows), so the GEMM kernels never carry their code: it made every
        # GEMM kernel ~3 s slower to compile for layers most models do not have
        self._post = None if _SIMPLE[code] else (code, np.float32(alpha), np.float32(beta))
        self._flags = (bool(accumulate), code if _SIMPLE[code] else ACT_NONE, np.float32(alpha), np.float32(beta),
                       direct)
        self.work = m * n * max(k, 1) * nbatch * ngroups
        self._plans: dict[int, tuple] = {}

    def _plan(self, threads: int) -> tuple:
        plan = self._plans.get(threads)
        if plan is None:
            total = self.nbatch * self.ngroups
            parallel = threads > 1 and self.work >= _config.GEMM_PARALLEL_MIN_WORK
            rs, cb, mst, nbt = _plan_tasks(self.m, self.n, total, threads if parallel else 1)
            ntasks = total * rs * cb
            keep = mst > MC // MR
            bufsize = (nbt if keep else 1) * k_block(self.k) * NR
            nslots = min(threads, ntasks) if parallel else 0
            # NOTE: when the threads split the rows of one GEMM, each would pack the same B panels (im2col
            # for a conv): pack B once, in parallel, into the workspace, and let every thread read it.
            shared = (nslots > 1 and rs > 1 and total == 1 and self._head[2].size == 0
                      and self.k <= SHARED_PACK_MAX_K and self._flags[4] in (DIRECT_NONE, DIRECT_CONV)
                      and (nslots - 1) * self.k * self.n >= SHARED_PACK_MIN_FLOATS)
            shared_floats = -(-self.n // NR) * self.k * NR if shared else 0
            plan = (nslots, ntasks, bufsize, (rs, cb, mst, nbt), shared_floats)
            self._plans[threads] = plan
        return plan

    def splits(self, threads: int) -> bool:
        """Whether a call at ``threads`` threads runs the parallel kernel (the work is large enough)."""
        return self._plan(threads)[0] > 0

    def set_bias(self, bias: np.ndarray) -> None:
        """Load a new bias of the prepared size into this call (in place: bound callables see it too)."""
        bias_arr, bias_mode, m, n, ngroups = self._tail[3], self._tail[4], self.m, self.n, self.ngroups
        new, _, _ = pad_bias(bias, self._bias_spec[0], m, n, ngroups, self._bias_spec[1])
        if bias_mode == BIAS_NONE or new.shape != bias_arr.shape:
            raise ValueError("set_bias: this call was prepared without a bias of that size")
        bias_arr[...] = new

    def with_a(self, ap: np.ndarray) -> GemmCall:
        """Point this prepared call at another packed A of the same size (e.g. one packed per call)."""
        self._head = (ap,) + self._head[1:]
        return self

    def _work_sizes(self, threads: int) -> tuple[int, int]:
        nslots, _, bufsize, _, shared_floats = self._plan(threads)
        slots = max(nslots, 1)
        return (slots * bufsize + shared_floats) * 4, slots * 2 * NR * 8

    def scratch_bytes(self, max_threads: int | None = None) -> int:
        """Workspace bytes :meth:`run` needs for any thread count up to ``max_threads`` (default: every
        thread Numba may use), so a preallocated arena slice serves every call."""
        if self.m <= 0 or self.n <= 0 or self.nbatch * self.ngroups == 0:
            return 0
        top = max_threads or numba.config.NUMBA_NUM_THREADS
        sizes = [self._work_sizes(t) for t in range(1, top + 1)]
        return _align8(max(f for f, _ in sizes)) + max(i for _, i in sizes)

    def bind(self, c: np.ndarray, bsrc: np.ndarray, threads: int, work: np.ndarray | None):
        """A no-argument callable doing ``run(c, bsrc, threads, work)`` with every argument prepared now
        (the arrays must stay the same from call to call)."""
        if self.m <= 0 or self.n <= 0 or self.nbatch * self.ngroups == 0:
            return _nothing
        fbytes, ibytes = self._work_sizes(threads)
        if work is None or work.nbytes < _align8(fbytes) + ibytes:
            work = np.empty(_align8(fbytes) + ibytes, dtype=np.uint8)
        if self._plan(threads)[4] or self._post is not None:
            return functools.partial(self.run, c, bsrc, threads, work)
        return functools.partial(*self._call_args(c, bsrc, threads, work))

    def _apply_post(self, c: np.ndarray) -> None:
        if self._post is not None:
            c_nstride, c_gstride, ldc = self._tail[0], self._tail[1], self._tail[2]
            _act_rows(c, self.nbatch, self.ngroups, c_nstride, c_gstride, ldc, self.m, self.n, *self._post)

    def _call_args(self, c, bsrc, threads, work) -> tuple:
        """(kernel, *arguments) of one call without shared B packing."""
        nslots, ntasks, bufsize, split, _ = self._plan(threads)
        fbytes, ibytes = self._work_sizes(threads)
        wbuf = work[:fbytes].view(np.float32)
        ibuf = work[_align8(fbytes):_align8(fbytes) + ibytes].view(np.int64)
        if bsrc.size == 0:
            bsrc = _ONE
        args = ((bufsize, wbuf, ibuf) + self._head + (bsrc,) + self._mid + (c,) + self._tail + split
                + self._flags)
        task_fn = _run_task.address
        return ((_gemm_parallel, task_fn, nslots, ntasks, *args) if nslots
                else (_gemm_serial, task_fn, ntasks, *args))

    def run(self, c: np.ndarray, bsrc: np.ndarray = _EMPTY, threads: int | None = None,
            work: np.ndarray | None = None) -> None:
        """Compute into the flat float32 ``c`` reading B from the flat float32 ``bsrc``.

        ``work``: a uint8 workspace of at least :meth:`scratch_bytes` (allocated here when None)."""
        if self.m <= 0 or self.n <= 0 or self.nbatch * self.ngroups == 0:
            return
        threads = num_threads() if threads is None else threads
        nslots, ntasks, bufsize, split, shared_floats = self._plan(threads)
        fbytes, ibytes = self._work_sizes(threads)
        if work is None or work.nbytes < _align8(fbytes) + ibytes:
            work = np.empty(_align8(fbytes) + ibytes, dtype=np.uint8)
        if not shared_floats:
            fn, *args = self._call_args(c, bsrc, threads, work)
            fn(*args)
            self._apply_post(c)
            return
        wbuf = work[:fbytes].view(np.float32)
        ibuf = work[_align8(fbytes):_align8(fbytes) + ibytes].view(np.int64)
        if bsrc.size == 0:
            bsrc = _ONE
        bshared = wbuf[wbuf.size - shared_floats:]
        wbuf = wbuf[:wbuf.size - shared_floats]
        _, _, geo, ktab = self._mid
        _pack_b_shared(nslots, bsrc, geo, ktab, self.k, self.n, bshared, ibuf)
        head = (self._head[0], self._head[1], bshared)
        _gemm_parallel(_run_task.address, nslots, ntasks, bufsize, wbuf, ibuf, *head, bsrc, *self._mid, c,
                       *self._tail, *split, *self._flags)
        self._apply_post(c)


_ONE = np.zeros(1, dtype=np.float32)


def _nothing() -> None:
    return None

#: largest K for which a row-split parallel GEMM packs B once into the workspace (bounds its size)
SHARED_PACK_MAX_K = 1 << 14
#: ... and only when the packing it saves (every other thread's copy of B) outweighs a second parallel
#: region and the Python-side call (measured ~6 us on 2 cores: a 32 x 64 B packed twice costs less)
SHARED_PACK_MIN_FLOATS = 1 << 17


@numba.njit(**NJIT_PARALLEL)
def _pack_b_shared(nslots, bsrc, geo, ktab, k, n, bp, ibuf):
    # bp: (ceil(n/NR) * k * NR,) float32, packed as pack_b lays it out: panel jt at bp[jt*k*NR:], [k][NR]
    # ibuf: (nslots * 2*NR,) int64 index buffers, one pair per slot
    nt = (n + NR - 1) // NR
    for s in prange(nslots):
        ybase = ibuf[s * 2 * NR:s * 2 * NR + NR]
        xbase = ibuf[s * 2 * NR + NR:(s + 1) * 2 * NR]
        for jt in range(s * nt // nslots, (s + 1) * nt // nslots):
            col0 = jt * NR
            _pack_b_panel(bsrc, 0, geo, ktab, 0, k, col0, min(NR, n - col0), bp[jt * k * NR:], ybase, xbase)


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


def _align64(n: int) -> int:
    return (n + 63) // 64 * 64


_EMPTY_PACKED = np.zeros(1, dtype=np.float32)


def gemm_driver(ap: np.ndarray, m: int, n: int, k: int, c: np.ndarray, ldc: int, *,
                bsrc: np.ndarray = _EMPTY, threads: int | None = None, **kw) -> None:
    """One-off :class:`GemmCall`: ``GemmCall(ap, m, n, k, ldc, **kw).run(c, bsrc, threads)``."""
    GemmCall(ap, m, n, k, ldc, **kw).run(c, bsrc, threads)


def sgemm_packed(ap: np.ndarray, bp: np.ndarray, c: np.ndarray, m: int, n: int, k: int,
                 bias: np.ndarray | None = None, act: int = ACT_NONE, alpha: float = 0.0,
                 beta: float = 0.0, *, bias_mode: int = BIAS_ROW, accumulate: bool = False,
                 ldc: int | None = None, threads: int | None = None) -> None:
    """C[M, N] = act(A @ B + bias) with both operands packed (:func:`pack_a`, :func:`pack_b`).

    ``c``: C-contiguous float32 (M, N) array (or any array whose flat buffer has rows ``ldc`` apart);
    ``bias``: per row (default; conv output channels) or per column with ``bias_mode=BIAS_COL``."""
    flat = c.reshape(-1)
    gemm_driver(ap, m, n, k, flat, n if ldc is None else ldc, bp=bp, bias=bias,
                bias_mode=bias_mode if bias is not None else BIAS_NONE, accumulate=accumulate,
                act=act, alpha=alpha, beta=beta, threads=threads)


# ---------------------------------------------------------------------------------------------------
# GEMV (few rows or few columns)
# ---------------------------------------------------------------------------------------------------
#: _gemv_block's signatures: x with contiguous rows (the usual case) or any row stride; out any strides
_GEMV_SIGS = tuple(types.void(_ro(types.float32[:, ::1]), _ro(x), types.float32[:, :], _i, _i, _ro(_F1),
                              types.boolean, _i, _f, _f) for x in (types.float32[:, ::1], types.float32[:, :]))


def _gemv_block(w, x, out, n0, n1, bias, has_bias, act, alpha, beta):
    """out[q, n] = act(dot(w[n, :], x[q, :]) + bias[n]) for n in [n0, n1), q < x.shape[0] (<= 3).
    One vector: four rows of w at a time (four independent streams); two or three vectors share each
    load of a row of w."""
    nb = x.shape[0]
    kk = w.shape[1]
    zero = np.float32(0.0)
    n = n0
    if nb == 1:
        xr = x[0]
        while n + 4 <= n1:
            w0 = w[n]
            w1 = w[n + 1]
            w2 = w[n + 2]
            w3 = w[n + 3]
            s0 = zero
            s1 = zero
            s2 = zero
            s3 = zero
            for i in range(kk):
                xv = xr[i]
                s0 += w0[i] * xv
                s1 += w1[i] * xv
                s2 += w2[i] * xv
                s3 += w3[i] * xv
            if has_bias:
                s0 += bias[n]
                s1 += bias[n + 1]
                s2 += bias[n + 2]
                s3 += bias[n + 3]
            out[0, n] = s0
            out[0, n + 1] = s1
            out[0, n + 2] = s2
            out[0, n + 3] = s3
            n += 4
        while n < n1:
            wr = w[n]
            s0 = zero
            for i in range(kk):
                s0 += wr[i] * xr[i]
            if has_bias:
                s0 += bias[n]
            out[0, n] = s0
            n += 1
    elif nb == 2:
        x0 = x[0]
        x1 = x[1]
        for n in range(n0, n1):
            wr = w[n]
            s0 = zero
            s1 = zero
            for i in range(kk):
                wv = wr[i]
                s0 += wv * x0[i]
                s1 += wv * x1[i]
            b = bias[n] if has_bias else zero
            out[0, n] = s0 + b
            out[1, n] = s1 + b
    else:
        x0 = x[0]
        x1 = x[1]
        x2 = x[2]
        for n in range(n0, n1):
            wr = w[n]
            s0 = zero
            s1 = zero
            s2 = zero
            for i in range(kk):
                wv = wr[i]
                s0 += wv * x0[i]
                s1 += wv * x1[i]
                s2 += wv * x2[i]
            b = bias[n] if has_bias else zero
            out[0, n] = s0 + b
            out[1, n] = s1 + b
            out[2, n] = s2 + b
    if act != ACT_NONE:
        # one activation loop for all paths (an inlined apply_act per store would bloat the code)
        for q in range(nb):
            for n in range(n0, n1):
                out[q, n] = apply_act(out[q, n], act, alpha, beta)


_GEMV_ROWS = 64


# NOTE: compiled once as native functions (see native.py) that both drivers call through a pointer
_gemv_blocks = tuple(native(sig, **NJIT)(_gemv_block) for sig in _GEMV_SIGS)
_call_gemv = caller(*_gemv_blocks)


def usable_natives() -> tuple:
    """The fp32 native functions (the GEMM task, the GEMV blocks)."""
    return (_run_task, *_gemv_blocks)


@numba.njit(**NJIT)
def _gemv_serial(block_fn, w, x, out, bias, act, alpha, beta):
    # block_fn: the address of _gemv_blocks[0] for a C-contiguous x, else of _gemv_blocks[1]
    _call_gemv(block_fn, (w, x, out, 0, w.shape[0], bias, bias.size > 0, act, alpha, beta))


@numba.njit(**NJIT_PARALLEL)
def _gemv_parallel(block_fn, w, x, out, bias, act, alpha, beta):
    nrow = w.shape[0]
    nblk = (nrow + _GEMV_ROWS - 1) // _GEMV_ROWS
    for blk in prange(nblk):
        n0 = blk * _GEMV_ROWS
        n1 = min(nrow, (blk + 1) * _GEMV_ROWS)
        _call_gemv(block_fn, (w, x, out, n0, n1, bias, bias.size > 0, act, alpha, beta))


def gemv(w: np.ndarray, x: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
         act: int = ACT_NONE, alpha: float = 0.0, beta: float = 0.0, threads: int | None = None) -> None:
    """out[b, n] = act(sum_k w[n, k] * x[b, k] + bias[n]) for up to 3 rows b of x.

    ``w``: (N, K) with contiguous rows (an FC weight as stored by ONNX Gemm transB=1); ``x``: (B<=3, K);
    ``out``: (B, N), any strides (pass ``out.T`` for the transposed layout)."""
    if x.shape[0] > 3:
        raise ValueError("gemv handles at most 3 vectors")
    fn, *args = _gemv_args(w, x, out, bias, act, alpha, beta, threads)
    fn(*args)


def _gemv_args(w, x, out, bias, act, alpha, beta, threads) -> tuple:
    """(kernel, *arguments) of :func:`gemv`."""
    b = _EMPTY if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if threads is None:
        threads = num_threads()
    if not w.flags.c_contiguous:
        w = np.ascontiguousarray(w)
    block_fn = _gemv_blocks[0 if x.flags.c_contiguous else 1].address
    if threads > 1 and w.size * x.shape[0] >= _config.PARALLEL_MIN_WORK:
        return (_gemv_parallel, block_fn, w, x, out, b, int(act), np.float32(alpha), np.float32(beta))
    return (_gemv_serial, block_fn, w, x, out, b, int(act), np.float32(alpha), np.float32(beta))


@numba.njit(inline="always", **NJIT)
def _vecmat_chunk(a, b, out, j0, j1, bias, has_bias, act, alpha, beta):
    """out[i, j0:j1] = act(sum_k a[i, k] * b[k, j0:j1] + bias[j]) for the (<= 3) rows i of a."""
    m, kk = a.shape
    for i in range(m):
        for j in range(j0, j1):
            out[i, j] = bias[j] if has_bias else np.float32(0.0)
    for q in range(kk):
        for i in range(m):
            s = a[i, q]
            for j in range(j0, j1):
                out[i, j] += s * b[q, j]
    if act != ACT_NONE:
        for i in range(m):
            for j in range(j0, j1):
                out[i, j] = apply_act(out[i, j], act, alpha, beta)


_VM_CHUNK = 256


@numba.njit(**NJIT)
def _vecmat_serial(a, b, out, bias, act, alpha, beta):
    n = b.shape[1]
    has_bias = bias.size > 0
    for j0 in range(0, n, _VM_CHUNK):
        _vecmat_chunk(a, b, out, j0, min(n, j0 + _VM_CHUNK), bias, has_bias, act, alpha, beta)


@numba.njit(**NJIT_PARALLEL)
def _vecmat_parallel(a, b, out, bias, act, alpha, beta):
    n = b.shape[1]
    has_bias = bias.size > 0
    nch = (n + _VM_CHUNK - 1) // _VM_CHUNK
    for c in prange(nch):
        j0 = c * _VM_CHUNK
        _vecmat_chunk(a, b, out, j0, min(n, j0 + _VM_CHUNK), bias, has_bias, act, alpha, beta)


def vecmat(a: np.ndarray, b: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
           act: int = ACT_NONE, alpha: float = 0.0, beta: float = 0.0, threads: int | None = None) -> None:
    """out[i, :] = act(a[i, :] @ b + bias) for up to 3 rows of a; b: (K, N) with unit column stride
    (read in place, row by row), out: (M, N) with unit column stride, bias per column."""
    if a.shape[0] > 3:
        raise ValueError("vecmat handles at most 3 rows")
    bb = _EMPTY if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if threads is None:
        threads = num_threads()
    args = (np.ascontiguousarray(a, dtype=np.float32), b, out, bb, int(act), np.float32(alpha),
            np.float32(beta))
    if threads > 1 and b.size * a.shape[0] >= _config.PARALLEL_MIN_WORK and b.shape[1] > _VM_CHUNK:
        _vecmat_parallel(*args)
    else:
        _vecmat_serial(*args)


# ---------------------------------------------------------------------------------------------------
# high level
# ---------------------------------------------------------------------------------------------------
def _unit_cols(b: np.ndarray) -> np.ndarray:
    """b as float32 2-D with unit column stride and a non-negative row stride (copy only if needed)."""
    if b.dtype != np.float32:
        b = b.astype(np.float32)
    if (b.shape[1] > 1 and b.strides[1] != 4) or (b.shape[0] > 1 and (b.strides[0] % 4 or b.strides[0] < 0)):
        b = np.ascontiguousarray(b)
    return b


_GEO_CACHE: dict = {}


def _b_geometry(k: int, n: int, rs: int):
    key = (k, n, rs)
    hit = _GEO_CACHE.get(key)
    if hit is None:
        if len(_GEO_CACHE) > 256:
            _GEO_CACHE.clear()
        hit = _GEO_CACHE[key] = (matrix_geometry(k, n, rs), matrix_ktab(k, rs))
    return hit


def _b_source(b: np.ndarray):
    """(flat source, geometry, row table) for a 2-D float32 B with unit column stride."""
    k, n = b.shape
    if b.size == 0:
        return (np.zeros(1, np.float32),) + _b_geometry(1, max(n, 1), 0)
    if b.flags.c_contiguous:
        return (b.reshape(-1),) + _b_geometry(k, n, n)
    rs = b.strides[0] // 4 if k > 1 else n
    length = (k - 1) * rs + n
    flat = np.lib.stride_tricks.as_strided(b, shape=(length,), strides=(4,))
    return (flat,) + _b_geometry(k, n, rs)


def _flat_out(out: np.ndarray) -> tuple[np.ndarray, int]:
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("output must be a C-contiguous float32 array")
    return out.reshape(-1), (out.shape[-1] if out.ndim else 1)


class PackedA:
    """A constant left operand A (M x K) packed once (a conv weight, or any weight used as A).

    ``PackedA(a)(b, out, bias=None, act=0, alpha=0, beta=0)``: out (M, N) = act(A @ b + bias[row])."""

    def __init__(self, a: np.ndarray):
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 2:
            raise ValueError("A must be 2-D")
        self.m, self.k = a.shape
        self.data = aligned_zeros(packed_a_size(self.m, self.k))
        if self.k > 0 and self.m > 0:
            pack_a(a, self.data)
        self._calls: dict = {}

    def __call__(self, b: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
                 act: int | str | None = ACT_NONE, alpha: float = 0.0, beta: float = 0.0, *,
                 accumulate: bool = False, threads: int | None = None) -> np.ndarray:
        k, n = b.shape
        if k != self.k:
            raise ValueError(f"K mismatch: A has {self.k}, B has {k}")
        src, geo, ktab = _b_source(_unit_cols(b))
        flat, ldc = _flat_out(out)
        key = (n, ldc, int(geo[G_SC]), act_code(act), float(alpha), float(beta), bool(accumulate))
        call = self._calls.get(key) if bias is None else None
        if call is None:
            call = GemmCall(self.data, self.m, n, k, ldc, geo=geo, ktab=ktab, bias=bias,
                            bias_mode=BIAS_ROW if bias is not None else BIAS_NONE, accumulate=accumulate,
                            act=act_code(act), alpha=alpha, beta=beta)
            if bias is None:
                if len(self._calls) > 64:
                    self._calls.clear()
                self._calls[key] = call
        call.run(flat, src, threads)
        return out


class PackedWeight:
    """A fully connected weight packed once at load: Y = act(X @ W^T + bias) (ONNX Gemm transB=1).

    ``w``: (N_out, K) as ONNX Gemm stores it with transB=1; pass ``trans_b=False`` for a (K, N_out)
    weight (ONNX Gemm transB=0, or the constant B of a MatMul). Batches of at most 3 rows run a GEMV on
    W's contiguous rows (parallel over outputs); larger ones the GEMM with W^T pre-packed as the B
    operand (bias per column) and X packed per call into the scratch."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None = None, trans_b: bool = True,
                 act: int | str | None = ACT_NONE, alpha: float = 0.0, beta: float = 0.0):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError("weight must be 2-D")
        self.w_rows = np.ascontiguousarray(w if trans_b else w.T)  # (N_out, K)
        self.n, self.k = self.w_rows.shape
        self.bp = aligned_zeros(packed_b_size(self.k, self.n))
        if self.k > 0 and self.n > 0:
            pack_b(self.w_rows.T, self.bp)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if self.bias is not None and self.bias.size == 1 and self.n != 1:
            self.bias = np.full(self.n, self.bias[0], dtype=np.float32)
        if self.bias is not None and self.bias.size != self.n:
            raise ValueError(f"bias has {self.bias.size} elements, expected {self.n}")
        self.act = act_code(act)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self._calls: dict[int, GemmCall] = {}

    def _call(self, m: int) -> GemmCall:
        call = self._calls.get(m)
        if call is None:
            call = GemmCall(_EMPTY_PACKED, m, self.n, self.k, self.n, bp=self.bp, bias=self.bias,
                            bias_mode=BIAS_COL if self.bias is not None else BIAS_NONE, act=self.act,
                            alpha=self.alpha, beta=self.beta)
            if len(self._calls) > 16:
                self._calls.clear()
            self._calls[m] = call
        return call

    def scratch_bytes(self, m: int) -> int:
        """Workspace bytes for a batch of m rows: the packed X, then the GEMM's own workspace."""
        if m <= 3 or self.k == 0 or self.n == 0:
            return 0
        return _align64(4 * packed_a_size(m, self.k)) + self._call(m).scratch_bytes()

    def bind(self, x: np.ndarray, out: np.ndarray, scratch: np.ndarray | None, threads: int):
        """A no-argument callable computing ``self(x, out, scratch, threads)`` on these very arrays, or None
        where only the per-call path applies (batches of more than 3 rows)."""
        m, k = x.shape
        if k != self.k or m == 0 or self.n == 0 or m > 3 or k == 0 or _unit_cols(x) is not x:
            return None  # (a copied x would go stale)
        return functools.partial(*_gemv_args(self.w_rows, x, out, self.bias, self.act, self.alpha, self.beta,
                                              threads))

    def __call__(self, x: np.ndarray, out: np.ndarray, scratch: np.ndarray | None = None,
                 threads: int | None = None) -> np.ndarray:
        """out (M, N_out) = act(x (M, K) @ W^T + bias); out C-contiguous. ``scratch``: a uint8 workspace of
        :meth:`scratch_bytes` (m) bytes, allocated per call when missing."""
        m, k = x.shape
        if k != self.k:
            raise ValueError(f"K mismatch: weight has {self.k}, input {k}")
        if m == 0 or self.n == 0:
            return out
        if m <= 3 and k > 0:
            gemv(self.w_rows, _unit_cols(x), out, self.bias, self.act, self.alpha, self.beta, threads)
            return out
        if k == 0:
            out[...] = 0.0
            if self.bias is not None:
                out += self.bias
            act_run(out.reshape(-1), 0, out.size, self.act, np.float32(self.alpha), np.float32(self.beta))
            return out
        need = self.scratch_bytes(m)
        if scratch is None or scratch.nbytes < need:
            scratch = np.empty(need, dtype=np.uint8)
        ap_bytes = _align64(4 * packed_a_size(m, k))
        ap = scratch[:4 * packed_a_size(m, k)].view(np.float32)
        _pack_a_auto(x.astype(np.float32, copy=False), ap, threads)
        flat, _ = _flat_out(out)
        self._call(m).with_a(ap).run(flat, _EMPTY, threads, scratch[ap_bytes:])
        return out


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, bias: np.ndarray | None = None,
         act: int | str | None = ACT_NONE, alpha: float = 0.0, beta: float = 0.0, *,
         bias_mode: int = BIAS_COL, accumulate: bool = False, threads: int | None = None) -> np.ndarray:
    """out (M, N) = act(a (M, K) @ b (K, N) + bias) in float32; a and b may be strided 2-D views.

    ``bias`` is per column (length N, or 1) by default, per row (length M) with ``bias_mode=BIAS_ROW``;
    ``accumulate=True`` adds the product to what ``out`` holds (ONNX Gemm with a full C: copy beta*C
    into out first). Packs A on every call: for a constant A use :class:`PackedA`, for a constant FC
    weight :class:`PackedWeight`. ``alpha``/``beta`` are the activation's parameters."""
    m, k = a.shape
    k2, n = b.shape
    if k != k2:
        raise ValueError(f"inner dimensions differ: {a.shape} @ {b.shape}")
    if out is None:
        out = np.empty((m, n), dtype=np.float32)
    act = act_code(act)
    if m == 0 or n == 0:
        return out
    if bias is None:
        bias_mode = BIAS_NONE
    else:
        bias = np.asarray(bias, dtype=np.float32).reshape(-1)
        want = m if bias_mode == BIAS_ROW else n
        if bias.size == 1 and want != 1:
            bias = np.full(want, bias[0], dtype=np.float32)
        if bias.size != want:
            raise ValueError(f"bias has {bias.size} elements, expected {want}")
    if k > 0 and not accumulate:
        if n <= 3 and bias_mode != BIAS_COL and n < m:
            # out^T (n, m): dot products of A's contiguous rows with B's columns
            gemv(np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b.T, dtype=np.float32),
                 out.T, bias, act, alpha, beta, threads)
            return out
        if m <= 3 and bias_mode != BIAS_ROW:
            vecmat(a, _unit_cols(b), out, bias, act, alpha, beta, threads)
            return out
    ap = np.zeros(packed_a_size(m, k), dtype=np.float32)
    if k > 0:
        _pack_a_auto(a.astype(np.float32, copy=False), ap, threads)
    src, geo, ktab = _b_source(_unit_cols(b))
    flat, ldc = _flat_out(out)
    gemm_driver(ap, m, n, k, flat, ldc, bsrc=src, geo=geo, ktab=ktab, bias=bias, bias_mode=bias_mode,
                accumulate=accumulate, act=act, alpha=alpha, beta=beta, threads=threads)
    return out


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
           threads: int | None = None) -> np.ndarray:
    """numpy.matmul for float32 with broadcast batch dimensions (1-D operands promoted as numpy does).

    The batch loop runs in Python; a 2-D ``a`` shared by the whole batch is packed once."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    m, k = a2.shape[-2:]
    k2, n = b2.shape[-2:]
    if k != k2:
        raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    want_shape = batch + (m, n)
    if a.ndim == 1:
        want_shape = want_shape[:-2] + (n,)
    if b.ndim == 1:
        want_shape = want_shape[:-1]
    if out is None:
        out = np.empty(want_shape, dtype=np.float32)
    elif out.shape != want_shape:
        raise ValueError(f"matmul: out has shape {out.shape}, expected {want_shape}")
    if not out.flags.c_contiguous or out.dtype != np.float32:
        raise ValueError("matmul: out must be a C-contiguous float32 array")
    o3 = out.reshape(batch + (m, n))
    ab = np.broadcast_to(a2, batch + (m, k))
    bb = np.broadcast_to(b2, batch + (k, n))
    shared = a2.ndim == 2 and m > 3 and n > 3 and len(batch) > 0
    packed = PackedA(a2) if shared else None
    for idx in np.ndindex(*batch):
        if packed is not None:
            packed(bb[idx], o3[idx], threads=threads)
        else:
            gemm(ab[idx], bb[idx], o3[idx], threads=threads)
    return out


def gemm_ref(a, b, bias=None, act=ACT_NONE, alpha=0.0, beta=0.0, bias_mode=BIAS_COL):
    """float64 numpy reference of :func:`gemm`."""
    r = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    if bias is not None:
        bias = np.asarray(bias, np.float64).reshape(-1)
        r = r + (bias[:, None] if bias_mode == BIAS_ROW else bias[None, :])
    return act_ref(r, act_code(act), alpha, beta)
