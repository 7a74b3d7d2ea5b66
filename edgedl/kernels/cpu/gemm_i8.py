"""int8 GEMM with requantization in the epilogue: ``out[m, j] = requantize(sum_k (W[m,k] - w_zp[m]) *
(X[k,j] - x_zp) + bias[m])`` (one output channel per weight row ``m``).

* Weights ``W`` (M x K, int8 or uint8, zero point per row) are packed once (:class:`QGemm`) as int16
  k-pairs ``W - w_zp`` (in [-255, 255]) in row panels of ``MR_I8``.
* Activations are packed per column panel of ``NR_I8`` output columns, with their zero point subtracted,
  straight from the source: a (K, N) matrix (``SRC_COLS``), a (R, K) matrix whose rows are the output
  columns (``SRC_ROWS``: MatMul, the output is written transposed), or a (C, H, W) image read through the
  convolution's geometry (``SRC_IMAGE``: implicit im2col, padding taps contribute 0).
* int32 accumulation on the LLVM-IR tile of :mod:`.vec_i8` (products of two values in [-255, 255] summed
  in pairs: no overflow for K < 2^15), then :func:`edgedl.quant.requant.requantize` per value (TFLite
  double or single rounding, or onnxruntime's float mode), or the raw int32 sum (``MODE_RAW``:
  ConvInteger / MatMulInteger).

Column panels are independent: the parallel variant gives each thread a run of panels, with its own
packing buffer and accumulator tile, when the work reaches ``GEMM_PARALLEL_MIN_WORK``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ...quant.requant import Requant, requantize
from .config import GEMM_PARALLEL_MIN_WORK, NJIT_EXACT, NJIT_EXACT_PARALLEL, num_threads
from .vec_i8 import MR_I8, NR_I8, microkernel_i8

__all__ = ["QGemm", "pack_weights_i8", "SRC_COLS", "SRC_ROWS", "SRC_IMAGE", "MODE_RAW", "conv_geometry"]

SRC_COLS, SRC_ROWS, SRC_IMAGE = 0, 1, 2
#: no requantization: the int32 accumulator (plus bias) is the output
MODE_RAW = 3


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
def _pack_cols(x, zp, col0, bp):
    # x: (K, N) 8-bit; bp: (KP * 2 * NR_I8,) int16 <- columns col0..col0+NR_I8 of x - zp (zero padded)
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
                dst[2 * c] = np.int16(r0[c]) - z
                dst[2 * c + 1] = np.int16(r1[c]) - z
            continue
        for c in range(NR_I8):
            col = col0 + c
            for t in range(2):
                kk = 2 * q + t
                v = np.int16(0)
                if col < n and kk < k:
                    v = np.int16(x[kk, col]) - z
                dst[2 * c + t] = v


@numba.njit(inline="always", **NJIT_EXACT)
def _pack_rows(a, zp, row0, bp):
    # a: (R, K) 8-bit; bp <- rows row0..row0+NR_I8 of a - zp as columns (zero padded)
    r_total, k = a.shape
    kp = (k + 1) // 2
    z = np.int16(zp)
    for c in range(NR_I8):
        r = row0 + c
        if r >= r_total:
            for q in range(kp):
                bp[q * 2 * NR_I8 + 2 * c] = 0
                bp[q * 2 * NR_I8 + 2 * c + 1] = 0
            continue
        row = a[r]
        for q in range(k // 2):
            bp[q * 2 * NR_I8 + 2 * c] = np.int16(row[2 * q]) - z
            bp[q * 2 * NR_I8 + 2 * c + 1] = np.int16(row[2 * q + 1]) - z
        if k % 2:
            bp[(kp - 1) * 2 * NR_I8 + 2 * c] = np.int16(row[k - 1]) - z
            bp[(kp - 1) * 2 * NR_I8 + 2 * c + 1] = 0


@numba.njit(inline="always", **NJIT_EXACT)
def _pack_image(x, zp, col0, geo, bp):
    # x: (C, H, W) 8-bit image; output pixels col0..col0+NR_I8 (row-major over OH x OW) of the implicit
    # im2col matrix (K = cg*kh*kw rows over channels c0..c0+cg) minus zp; padding taps and columns past
    # the end are 0. geo = (h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0, cg)
    h, w, kh, kw = geo[0], geo[1], geo[2], geo[3]
    sh, sw, dh, dw = geo[4], geo[5], geo[6], geo[7]
    pt, pl, oh, ow, c0, cg = geo[8], geo[9], geo[10], geo[11], geo[12], geo[13]
    npix = oh * ow
    k = cg * kh * kw
    kp = (k + 1) // 2
    z = np.int16(zp)
    # the panel's columns as row segments: (output row, first output column, first panel column, length)
    seg_oy = np.empty(NR_I8, np.int64)
    seg_ox = np.empty(NR_I8, np.int64)
    seg_c = np.empty(NR_I8, np.int64)
    seg_n = np.empty(NR_I8, np.int64)
    nseg = 0
    c = 0
    while c < NR_I8 and col0 + c < npix:
        p = col0 + c
        oy = p // ow
        ox = p - oy * ow
        length = min(ow - ox, NR_I8 - c, npix - p)
        seg_oy[nseg] = oy
        seg_ox[nseg] = ox
        seg_c[nseg] = c
        seg_n[nseg] = length
        nseg += 1
        c += length
    filled = c
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
            y = seg_oy[s] * sh - pt + i * dh
            cs = seg_c[s]
            ln = seg_n[s]
            if y < 0 or y >= h:
                for cc in range(ln):
                    bp[base + 2 * (cs + cc)] = 0
                continue
            row = plane[y]
            x0 = seg_ox[s] * sw - pl + j * dw
            if x0 >= 0 and x0 + (ln - 1) * sw < w:
                for cc in range(ln):
                    bp[base + 2 * (cs + cc)] = np.int16(row[x0 + cc * sw]) - z
            else:
                for cc in range(ln):
                    xx = x0 + cc * sw
                    v = np.int16(0)
                    if 0 <= xx < w:
                        v = np.int16(row[xx]) - z
                    bp[base + 2 * (cs + cc)] = v
        for cc in range(filled, NR_I8):
            bp[base + 2 * cc] = 0


@numba.njit(inline="always", **NJIT_EXACT)
def _panel(src, ap, x, x_zp, geo, j, mt, kp, m, bias, m0, shift, fscale, zp, lo, hi, mode, out, bp, acc):
    # one column panel j: pack, MR_I8 x NR_I8 tiles down all M rows, requantize into out
    col0 = j * NR_I8
    if src == SRC_COLS:
        _pack_cols(x[0], x_zp, col0, bp)
        ncol = x.shape[2]
    elif src == SRC_ROWS:
        _pack_rows(x[0], x_zp, col0, bp)
        ncol = x.shape[1]
    else:
        _pack_image(x, x_zp, col0, geo, bp)
        ncol = geo[10] * geo[11]
    for i in range(mt):
        microkernel_i8(kp, ap, i * kp * 2 * MR_I8, bp, 0, acc, i * MR_I8 * NR_I8, NR_I8, False)
    nc = min(NR_I8, ncol - col0)
    for r in range(m):
        b = np.int64(bias[r])
        mm = m0[r]
        sh = shift[r]
        fs = fscale[r]
        a_row = acc[r * NR_I8:r * NR_I8 + nc]
        if src == SRC_ROWS:
            for c in range(nc):
                a = np.int64(a_row[c]) + b
                out[col0 + c, r] = a if mode == MODE_RAW else requantize(a, mm, sh, fs, zp, lo, hi, mode)
        else:
            o_row = out[r, col0:col0 + nc]
            for c in range(nc):
                a = np.int64(a_row[c]) + b
                o_row[c] = a if mode == MODE_RAW else requantize(a, mm, sh, fs, zp, lo, hi, mode)


@numba.njit(**NJIT_EXACT)
def _qgemm_serial(src, ap, x, x_zp, geo, panels, mt, kp, m, bias, m0, shift, fscale, zp, lo, hi, mode, out):
    bp = np.empty(kp * 2 * NR_I8, np.int16)
    acc = np.empty(mt * MR_I8 * NR_I8, np.int32)
    for j in range(panels):
        _panel(src, ap, x, x_zp, geo, j, mt, kp, m, bias, m0, shift, fscale, zp, lo, hi, mode, out, bp, acc)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _qgemm_parallel(src, ap, x, x_zp, geo, panels, mt, kp, m, bias, m0, shift, fscale, zp, lo, hi, mode, out,
                    ntasks):
    for t in prange(ntasks):
        j0 = t * panels // ntasks
        j1 = (t + 1) * panels // ntasks
        bp = np.empty(kp * 2 * NR_I8, np.int16)
        acc = np.empty(mt * MR_I8 * NR_I8, np.int32)
        for j in range(j0, j1):
            _panel(src, ap, x, x_zp, geo, j, mt, kp, m, bias, m0, shift, fscale, zp, lo, hi, mode, out, bp, acc)


def conv_geometry(h, w, kh, kw, strides, dilations, pads, c0, cg) -> np.ndarray:
    """The ``geo`` array of :func:`_pack_image` for a convolution over channels c0..c0+cg; pads are
    (top, left, bottom, right)."""
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    return np.array([h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, c0, cg], np.int64)


_NO_GEO = np.zeros(14, np.int64)


class QGemm:
    """A prepared 8-bit GEMM over constant weights (see the module docstring).

    ``QGemm(w, bias, req, x_zp, w_zp=0)``: w (M, K) int8 or uint8; bias (M,) int32 or None; ``req`` a
    :class:`~edgedl.quant.requant.Requant` with M channels, or None for raw int32 outputs; w_zp scalar or
    per row. Calls (all shapes are checked here, the kernels trust them):

    * ``q(x, out)``: x (K, N) -> out (M, N);
    * ``q.rows(a, out)``: a (R, K) -> out (R, M) (out[r, m] for activation row r);
    * ``q.image(x, geo, out)``: x (C, H, W), ``geo`` from :func:`conv_geometry` -> out (M, OH*OW).
    """

    def __init__(self, w, bias, req: Requant | None, x_zp: int, w_zp=0):
        w = np.asarray(w)
        if w.dtype not in (np.int8, np.uint8) or w.ndim != 2:
            raise ValueError(f"weights must be a 2-D int8 or uint8 array, got {w.dtype}{w.shape}")
        self.m, self.k = w.shape
        if self.k >= 1 << 15:
            raise ValueError(f"K = {self.k} could overflow the int32 accumulators (at most 32767)")
        self.kp = (self.k + 1) // 2
        self.mt = -(-self.m // MR_I8)
        w_zp = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (self.m,))
        self.ap = np.zeros(self.mt * self.kp * 2 * MR_I8, np.int16)
        pack_weights_i8(w, w_zp.copy(), self.ap)
        self.bias = np.zeros(self.m, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(-1).copy()
        if req is None:
            req = Requant(np.zeros(self.m, np.int64), np.zeros(self.m, np.int64), np.zeros(self.m, np.float32), 0,
                          0, 0, MODE_RAW)
        if req.m0.shape != (self.m,):
            raise ValueError(f"requantization has {req.m0.shape[0]} channels, the weights {self.m} rows")
        self.req = req
        self.x_zp = int(x_zp)

    def out_dtype_ok(self, out: np.ndarray) -> bool:
        return out.dtype == np.int32 if self.req.mode == MODE_RAW else out.dtype in (np.int8, np.uint8)

    def _run(self, src, x3, geo, panels, out, threads=None):
        r = self.req
        threads = num_threads() if threads is None else threads
        work = self.m * self.k * panels * NR_I8
        ntasks = min(threads, panels)
        if ntasks > 1 and work >= GEMM_PARALLEL_MIN_WORK:
            _qgemm_parallel(src, self.ap, x3, self.x_zp, geo, panels, self.mt, self.kp, self.m, self.bias, r.m0,
                            r.shift, r.fscale, r.zp, r.lo, r.hi, r.mode, out, ntasks)
        else:
            _qgemm_serial(src, self.ap, x3, self.x_zp, geo, panels, self.mt, self.kp, self.m, self.bias, r.m0,
                          r.shift, r.fscale, r.zp, r.lo, r.hi, r.mode, out)
        return out

    def _check(self, x, out, want_x, want_out):
        if x.dtype not in (np.int8, np.uint8) or tuple(x.shape) != want_x:
            raise ValueError(f"input must be 8-bit {want_x}, got {x.dtype}{x.shape}")
        if tuple(out.shape) != want_out or not self.out_dtype_ok(out) or not out.flags.c_contiguous:
            raise ValueError(f"output must be a contiguous {want_out} array of the output type, got "
                             f"{out.dtype}{out.shape}")

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        n = x.shape[1] if x.ndim == 2 else -1
        self._check(x, out, (self.k, n), (self.m, n))
        x = np.ascontiguousarray(x)
        return self._run(SRC_COLS, x.reshape(1, *x.shape), _NO_GEO, -(-n // NR_I8), out)

    def rows(self, a: np.ndarray, out: np.ndarray) -> np.ndarray:
        r = a.shape[0] if a.ndim == 2 else -1
        self._check(a, out, (r, self.k), (r, self.m))
        a = np.ascontiguousarray(a)
        return self._run(SRC_ROWS, a.reshape(1, *a.shape), _NO_GEO, -(-r // NR_I8), out)

    def image(self, x: np.ndarray, geo: np.ndarray, out: np.ndarray) -> np.ndarray:
        h, w, kh, kw, c0, cg = (int(geo[i]) for i in (0, 1, 2, 3, 12, 13))
        npix = int(geo[10] * geo[11])
        if x.ndim != 3 or x.shape[1:] != (h, w) or c0 + cg > x.shape[0] or cg * kh * kw != self.k:
            raise ValueError(f"image {x.shape} does not fit geometry {geo.tolist()} and K = {self.k}")
        self._check(x, out, tuple(x.shape), (self.m, npix))
        return self._run(SRC_IMAGE, np.ascontiguousarray(x), geo, -(-npix // NR_I8), out)
