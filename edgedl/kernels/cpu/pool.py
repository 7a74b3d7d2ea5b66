"""Pooling kernels (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LpPool), float32.

Windowed pooling of any spatial rank runs on a "rows x columns" view of every (n, c) plane: the last
spatial axis is the column axis, all the others are flattened into rows::

    x: (P, R_in, W)     P = N * C planes, R_in = prod(in_spatial[:-1]), W = in_spatial[-1]
    y: (P, R_out, OW)   R_out = prod(out_spatial[:-1]),                OW = out_spatial[-1]

The window geometry is precomputed once per plan (:func:`window_tables`):

* ``row_ptr`` / ``row_src`` (CSR): for output row ``r`` the input rows ``row_src[row_ptr[r]:row_ptr[r+1]]``
  that its window covers inside the input (padding rows are simply absent), in row-major tap order;
* ``col_k0[ow]`` / ``col_k1[ow]``: the range of column taps ``j`` that fall inside the input for output
  column ``ow`` (input column ``ow * sw + j * dw - pw``), and the interior columns [ow_lo, ow_hi) where every
  tap does;
* for averages, the reciprocal of the element count of every output position (separable: count_include_pad=0
  counts the taps inside the input, =1 the taps inside the padded input, which clips windows that hang past
  it because of ceil_mode).

A plane is pooled in two passes. The vertical pass reduces, for every output row, the input rows its window
covers into a row of ``vb`` (R_out x W): one contiguous loop per output row, three input rows at a time;
with a vertical stride of 1 (2D), the rows whose window is entirely inside the input go as one long loop per
tap over the flattened plane. The horizontal pass reduces each vb row over the kw column taps into y. CNN
rows are short (7 to 112 columns), too short for vector loops on their own, so when the output rows line up
with vb's the horizontal pass also runs as a few long loops over the whole flattened plane:

* mode 1 (stride 1, OW == W): y[q] = op_j vb[q + j*dw - pw] for every flat position q;
* mode 2 (stride 2, W == 2 * OW): vb is first split into its even and odd columns (through a uint64 view:
  element 2i is the low half of word i), then every tap reads one of the halves contiguously;
* mode 0 (anything else): row by row, through a padded row buffer whose pads hold the identity.

Flat loops read across row ends at the border columns (windows that reach into the padding); those columns
are recomputed afterwards from their valid taps only. The parallel variants split the planes into
contiguous chunks, each with its own workspace (float32): vb (R_out*W) | even/odd split (R_out*W) |
identity row (W) | padded row (L) | its even/odd split (L).

MaxPool ignores NaN inputs (``v > m`` comparisons), as onnx's reference does; a window with no element inside
the input gives -inf (MaxPool) or NaN (AveragePool without count_include_pad). GlobalMaxPool propagates NaN
(numpy's max, onnxruntime).

LpPool (:func:`lp_pool_runner`) is the windowed sum of ``|x| ** p`` (the average kernel with reciprocal
counts of 1; padding contributes nothing), raised to ``1 / p``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads

_NINF = np.float32(-np.inf)
_F0 = np.float32(0.0)

# layout of the int64 geometry vector handed to the windowed kernels
G_KW, G_SW, G_DW, G_PL, G_MODE, G_OWLO, G_OWHI, G_RA, G_RB, G_KH, G_DH, G_PT = range(12)


# --- build-time tables -------------------------------------------------------------------------------
def axis_taps(n_in: int, n_out: int, k: int, s: int, d: int, pb: int, pe: int):
    """Per output position of one axis: the valid tap range [k0, k1) (input coordinate o*s - pb + j*d inside
    [0, n_in)) and the number of taps inside the padded input [-pb, n_in + pe)."""
    start = np.arange(n_out, dtype=np.int64) * s - pb
    k0 = np.clip(np.where(start >= 0, 0, (-start + d - 1) // d), 0, k)
    k1 = np.clip(np.where(n_in - 1 - start >= 0, (n_in - 1 - start) // d + 1, 0), 0, k)
    k1 = np.maximum(k1, k0)
    padded = np.clip((n_in + pe - start + d - 1) // d, 0, k)  # taps with j*d < n_in + pe - start
    return k0.astype(np.int64), k1.astype(np.int64), padded.astype(np.int64)


def flat_mode(w_in: int, ow: int, sw: int) -> int:
    """Mode of the horizontal pass (see above) for rows of w_in columns pooled to ow columns at stride sw."""
    if sw == 1 and ow == w_in:
        return 1
    if sw == 2 and w_in == 2 * ow:
        return 2
    return 0


def row_buffer_len(w_in: int, ow: int, kw: int, sw: int, dw: int, pl: int) -> int:
    """Length L (even) of the padded row buffer of mode 0."""
    n = max((ow - 1) * sw + (kw - 1) * dw + 1, pl + w_in)
    return n + (n % 2)


@dataclass
class WindowTables:
    """Everything a windowed-pooling kernel needs about the geometry (see the module docstring)."""

    x3: tuple[int, int, int]       # (P, R_in, W)
    y3: tuple[int, int, int]       # (P, R_out, OW)
    row_ptr: np.ndarray            # (R_out + 1,) int64
    row_src: np.ndarray            # (nnz,) int64
    col_k0: np.ndarray             # (OW,) int64
    col_k1: np.ndarray             # (OW,) int64
    inv: np.ndarray                # (R_out * OW,) float32: 1 / element count (averages)
    row_cm: np.ndarray             # (R_in,) int64: column-major index of each input row's first element
    geo: np.ndarray                # int64 vector, see the G_* constants
    kernel_volume: int

    @property
    def buffer_len(self) -> int:
        """float32 workspace per chunk of planes."""
        r_out, w_in = self.y3[1], self.x3[2]
        kw, sw, dw, pl = (int(self.geo[i]) for i in (G_KW, G_SW, G_DW, G_PL))
        return 2 * r_out * w_in + w_in + 2 * row_buffer_len(w_in, self.y3[2], kw, sw, dw, pl)


def window_tables(x_shape, out_sp, kernel, strides, dilations, pads, count_include_pad: bool = False):
    """Precompute the tables for pooling an input of shape ``x_shape`` (N, C, spatial...) to ``out_sp``."""
    in_sp = [int(v) for v in x_shape[2:]]
    out_sp = [int(v) for v in out_sp]
    nsp = len(in_sp)
    per_axis = [axis_taps(in_sp[i], out_sp[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + nsp])
                for i in range(nsp)]
    outer_in, outer_out = in_sp[:-1], out_sp[:-1]
    r_in = int(np.prod(outer_in, dtype=np.int64))
    r_out = int(np.prod(outer_out, dtype=np.int64))
    in_row_strides = [int(np.prod(outer_in[i + 1:], dtype=np.int64)) for i in range(len(outer_in))]
    row_ptr = np.zeros(r_out + 1, np.int64)
    srcs: list[int] = []
    row_cnt = np.ones(r_out, np.float64)
    for r, oidx in enumerate(np.ndindex(*outer_out)):
        ranges = []
        for i, o in enumerate(oidx):
            k0, k1, padded = per_axis[i]
            start = o * strides[i] - pads[i]
            ranges.append([start + j * dilations[i] for j in range(k0[o], k1[o])])
            row_cnt[r] *= float(padded[o] if count_include_pad else k1[o] - k0[o])
        for coords in np.ndindex(*[len(v) for v in ranges]):
            srcs.append(sum(ranges[i][c] * in_row_strides[i] for i, c in enumerate(coords)))
        row_ptr[r + 1] = len(srcs)
    ck0, ck1, cpad = per_axis[-1]
    col_cnt = (cpad if count_include_pad else ck1 - ck0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cnt = np.outer(row_cnt, col_cnt).reshape(-1)
        inv = np.where(cnt > 0, 1.0 / cnt, np.nan).astype(np.float32)
    full = np.nonzero((ck0 == 0) & (ck1 == kernel[-1]))[0]
    ow_lo, ow_hi = (int(full[0]), int(full[-1]) + 1) if len(full) else (out_sp[-1], out_sp[-1])
    # column-major (storage_order=1) index of each input row's first element: the first spatial axis varies
    # fastest; the column axis has the multiplier R_in
    cm_mul = [int(np.prod(outer_in[:i], dtype=np.int64)) for i in range(len(outer_in))]
    row_cm = np.array([sum(c * m for c, m in zip(idx, cm_mul, strict=True)) for idx in np.ndindex(*outer_in)],
                      np.int64)
    # a 2D pool with vertical stride 1: the output rows whose every tap is inside the input
    ra = rb = 0
    if nsp == 2 and strides[0] == 1:
        k0, k1, _ = per_axis[0]
        inner = np.nonzero((k0 == 0) & (k1 == kernel[0]))[0]
        if len(inner) and inner[-1] - inner[0] + 1 == len(inner):
            ra, rb = int(inner[0]), int(inner[-1]) + 1
    planes = int(x_shape[0]) * int(x_shape[1])
    geo = np.array([kernel[-1], strides[-1], dilations[-1], pads[nsp - 1],
                    flat_mode(in_sp[-1], out_sp[-1], strides[-1]), ow_lo, ow_hi,
                    ra, rb, kernel[0], dilations[0], pads[0]], np.int64)
    return WindowTables((planes, r_in, in_sp[-1]), (planes, r_out, out_sp[-1]), row_ptr,
                        np.array(srcs, np.int64), ck0, ck1, inv, row_cm, geo, int(np.prod(kernel)))


@numba.njit(**NJIT)
def _deinterleave(src, dst, half):
    # src (2 * half,) float32 -> dst[:half] = src[0::2], dst[half:2 * half] = src[1::2]
    su = src.view(np.uint64)
    eu = dst[:half].view(np.uint32)
    ou = dst[half:2 * half].view(np.uint32)
    for i in range(half):
        u = su[i]
        eu[i] = np.uint32(u & np.uint64(0xFFFFFFFF))
        ou[i] = np.uint32(u >> np.uint64(32))


@numba.njit(**NJIT)
def _tap_start(qa, c, half):
    # where the source of output qa starts for a tap at column offset c: in the flat rows (half == 0), or
    # in the even/odd split (even columns first, odd columns from ``half`` on)
    if half == 0:
        return qa + c
    if c % 2 == 0:
        return qa + c // 2
    return half + qa + c // 2


@numba.njit(**NJIT)
def _flat_range(m_len, kw, dw, pl, half):
    # [qa, qb): outputs whose every tap stays inside the m_len source positions
    qa = 0
    qb = m_len
    for j in range(kw):
        off = j * dw - pl
        if half > 0:
            off = off // 2
        if -off > qa:
            qa = -off
        if m_len - off < qb:
            qb = m_len - off
    return qa, max(qa, qb)


@numba.njit(**NJIT)
def _taps_max(dst, src, qa, pl, kw, dw, half):
    # dst[i] = max over taps j of src[start_j + i] (see _tap_start); NaN never wins
    n = dst.shape[0]
    s0 = src[_tap_start(qa, -pl, half):]
    for i in range(n):
        v = s0[i]
        dst[i] = v if v > _NINF else _NINF
    if kw == 3:  # the common 3-wide window in one pass
        s1 = src[_tap_start(qa, dw - pl, half):]
        s2 = src[_tap_start(qa, 2 * dw - pl, half):]
        for i in range(n):
            a = s1[i]
            b = s2[i]
            m = dst[i]
            m = a if a > m else m
            dst[i] = b if b > m else m
        return
    for j in range(1, kw):
        sj = src[_tap_start(qa, j * dw - pl, half):]
        for i in range(n):
            v = sj[i]
            m = dst[i]
            dst[i] = v if v > m else m


@numba.njit(**NJIT)
def _taps_sum(dst, src, qa, pl, kw, dw, half):
    # dst[i] = sum over taps j of src[start_j + i]
    n = dst.shape[0]
    s0 = src[_tap_start(qa, -pl, half):]
    if kw == 2:
        s1 = src[_tap_start(qa, dw - pl, half):]
        for i in range(n):
            dst[i] = s0[i] + s1[i]
        return
    if kw == 3:
        s1 = src[_tap_start(qa, dw - pl, half):]
        s2 = src[_tap_start(qa, 2 * dw - pl, half):]
        for i in range(n):
            dst[i] = s0[i] + s1[i] + s2[i]
        return
    for i in range(n):
        dst[i] = s0[i]
    for j in range(1, kw):
        sj = src[_tap_start(qa, j * dw - pl, half):]
        for i in range(n):
            dst[i] += sj[i]


@numba.njit(**NJIT)
def _vrows_max(xp, vb, row_ptr, row_src, idrow, r0, r1):
    # xp is (R_in, W), vb is (R_out, W): vb[r] = max of the input rows of output row r, r0 <= r < r1
    # (NaN never wins); missing rows read ``idrow`` (-inf)
    n_w = xp.shape[1]
    for r in range(r0, r1):
        t = vb[r]
        e0 = row_ptr[r]
        e1 = row_ptr[r + 1]
        a0 = xp[row_src[e0]] if e0 < e1 else idrow
        a1 = xp[row_src[e0 + 1]] if e0 + 1 < e1 else idrow
        a2 = xp[row_src[e0 + 2]] if e0 + 2 < e1 else idrow
        for w in range(n_w):
            a = a0[w]
            b = a1[w]
            c = a2[w]
            m = _NINF
            m = a if a > m else m
            m = b if b > m else m
            t[w] = c if c > m else m
        e = e0 + 3
        while e < e1:
            a0 = xp[row_src[e]]
            a1 = xp[row_src[e + 1]] if e + 1 < e1 else idrow
            for w in range(n_w):
                a = a0[w]
                b = a1[w]
                m = t[w]
                m = a if a > m else m
                t[w] = b if b > m else m
            e += 2


@numba.njit(**NJIT)
def _vrows_sum(xp, vb, row_ptr, row_src, idrow, r0, r1):
    # xp is (R_in, W), vb is (R_out, W): vb[r] = sum of the input rows of output row r; idrow holds zeros
    n_w = xp.shape[1]
    for r in range(r0, r1):
        t = vb[r]
        e0 = row_ptr[r]
        e1 = row_ptr[r + 1]
        a0 = xp[row_src[e0]] if e0 < e1 else idrow
        a1 = xp[row_src[e0 + 1]] if e0 + 1 < e1 else idrow
        a2 = xp[row_src[e0 + 2]] if e0 + 2 < e1 else idrow
        for w in range(n_w):
            t[w] = a0[w] + a1[w] + a2[w]
        e = e0 + 3
        while e < e1:
            a0 = xp[row_src[e]]
            a1 = xp[row_src[e + 1]] if e + 1 < e1 else idrow
            for w in range(n_w):
                t[w] += a0[w] + a1[w]
            e += 2


@numba.njit(**NJIT)
def _vpass(xp, vb, row_ptr, row_src, idrow, geo, is_max):
    # the vertical pass of one plane: xp is (R_in, W), vb is (R_out, W)
    ra, rb = geo[G_RA], geo[G_RB]
    n_w = xp.shape[1]
    if rb > ra:  # stride-1 rows with every tap inside: one flat loop per tap (rows r - pt + j*dh)
        dst = vb.reshape(vb.shape[0] * n_w)[ra * n_w:rb * n_w]
        src = xp.reshape(xp.shape[0] * n_w)
        if is_max:
            _taps_max(dst, src, ra * n_w, geo[G_PT] * n_w, geo[G_KH], geo[G_DH] * n_w, 0)
        else:
            _taps_sum(dst, src, ra * n_w, geo[G_PT] * n_w, geo[G_KH], geo[G_DH] * n_w, 0)
    if is_max:
        _vrows_max(xp, vb, row_ptr, row_src, idrow, 0, ra)
        _vrows_max(xp, vb, row_ptr, row_src, idrow, rb, vb.shape[0])
    else:
        _vrows_sum(xp, vb, row_ptr, row_src, idrow, 0, ra)
        _vrows_sum(xp, vb, row_ptr, row_src, idrow, rb, vb.shape[0])


@numba.njit(**NJIT)
def _pool_planes(x, y, p0, p1, row_ptr, row_src, col_k0, col_k1, geo, inv, buf, is_max):
    # x is (P, R_in, W), y is (P, R_out, OW); planes p0 <= p < p1. is_max: max pooling, else window sums
    # times inv (R_out * OW,). buf is this chunk's float32 workspace (see the module docstring).
    kw, sw, dw, pl, mode = geo[G_KW], geo[G_SW], geo[G_DW], geo[G_PL], geo[G_MODE]
    lo = min(geo[G_OWLO], y.shape[2])
    hi = geo[G_OWHI]
    n_w = x.shape[2]
    n_r = y.shape[1]
    ow_n = y.shape[2]
    n_v = n_r * n_w
    n_y = n_r * ow_n
    n_l = (buf.shape[0] - 2 * n_v - n_w) // 2
    vflat = buf[:n_v]
    vb = vflat.reshape((n_r, n_w))
    eo = buf[n_v:2 * n_v]
    idrow = buf[2 * n_v:2 * n_v + n_w]
    tpad = buf[2 * n_v + n_w:2 * n_v + n_w + n_l]
    teo = buf[2 * n_v + n_w + n_l:2 * n_v + n_w + 2 * n_l]
    ident = _NINF if is_max else _F0
    for i in range(n_w):
        idrow[i] = ident
    for i in range(n_l):
        tpad[i] = ident
    t = tpad[pl:pl + n_w]
    for p in range(p0, p1):
        _vpass(x[p], vb, row_ptr, row_src, idrow, geo, is_max)
        yp = y[p]
        yflat = yp.reshape(n_y)
        if mode == 0:  # row by row through the padded row buffer
            for r in range(n_r):
                vr = vb[r]
                for w in range(n_w):
                    t[w] = vr[w]
                if sw <= 2:
                    half = n_l // 2 if sw == 2 else 0
                    src = tpad
                    if sw == 2:
                        _deinterleave(tpad, teo, half)
                        src = teo
                    if is_max:
                        _taps_max(yp[r], src, 0, 0, kw, dw, half)
                    else:
                        _taps_sum(yp[r], src, 0, 0, kw, dw, half)
                else:
                    yr = yp[r]
                    for i in range(ow_n):
                        m = ident
                        for j in range(kw):
                            v = tpad[i * sw + j * dw]
                            if is_max:
                                m = v if v > m else m
                            else:
                                m += v
                        yr[i] = m
        else:
            half = n_v // 2 if mode == 2 else 0
            src = vflat
            if mode == 2:
                _deinterleave(vflat, eo, half)
                src = eo
            qa, qb = _flat_range(n_v // 2 if mode == 2 else n_v, kw, dw, pl, half)
            if is_max:
                _taps_max(yflat[qa:qb], src, qa, pl, kw, dw, half)
            else:
                _taps_sum(yflat[qa:qb], src, qa, pl, kw, dw, half)
            for i in range(ow_n):  # border columns: their valid taps only
                if lo <= i < hi:
                    continue
                k0 = col_k0[i]
                nk = col_k1[i] - k0
                vcol = vflat[i * sw + k0 * dw - pl:]
                ycol = yflat[i:]
                for r in range(n_r):
                    m = ident
                    for j in range(nk):
                        v = vcol[r * n_w + j * dw]
                        if is_max:
                            m = v if v > m else m
                        else:
                            m += v
                    ycol[r * ow_n] = m
        if not is_max:
            for i in range(n_y):
                yflat[i] *= inv[i]


@numba.njit(**NJIT_PARALLEL)
def _pool_planes_par(x, y, row_ptr, row_src, col_k0, col_k1, geo, inv, bufs, is_max, nchunks):
    # every chunk owns a contiguous range of planes and one workspace row
    n_p = y.shape[0]
    for c in prange(nchunks):
        p0 = c * n_p // nchunks
        p1 = (c + 1) * n_p // nchunks
        _pool_planes(x, y, p0, p1, row_ptr, row_src, col_k0, col_k1, geo, inv, bufs[c], is_max)


@numba.njit(**NJIT)
def _max_idx_rows(x, y, ind, t0, t1, row_ptr, row_src, row_cm, col_k0, col_k1, geo, col_major):
    # x is (P, R_in, W), y and ind are (P, R_out, OW); output rows t0 <= t < t1 of the flattened P * R_out.
    # ind gets the flat index (over N*C*spatial) of the max, row-major (or column-major over the spatial
    # axes when col_major); ties keep the first in row-major window order; NaN never wins; a window where
    # nothing beats -inf keeps its first element
    sw, dw, pl = geo[G_SW], geo[G_DW], geo[G_PL]
    n_r = y.shape[1]
    ow_n = y.shape[2]
    n_w = x.shape[2]
    n_rows = x.shape[1]
    plane = n_rows * n_w
    for t in range(t0, t1):
        p = t // n_r
        r = t - p * n_r
        base = p * plane
        for ow in range(ow_n):
            m = _NINF
            best_row = -1
            best_w = -1
            for e in range(row_ptr[r], row_ptr[r + 1]):
                xr = row_src[e]
                for j in range(col_k0[ow], col_k1[ow]):
                    w = ow * sw + j * dw - pl
                    v = x[p, xr, w]
                    if best_row < 0 or v > m:
                        best_row = xr
                        best_w = w
                    m = v if v > m else m
            y[p, r, ow] = m
            if best_row < 0:
                ind[p, r, ow] = -1
            elif col_major:
                ind[p, r, ow] = base + row_cm[best_row] + best_w * n_rows
            else:
                ind[p, r, ow] = base + best_row * n_w + best_w


@numba.njit(**NJIT_PARALLEL)
def _max_idx_rows_par(x, y, ind, row_ptr, row_src, row_cm, col_k0, col_k1, geo, col_major, nchunks):
    total = y.shape[0] * y.shape[1]
    for c in prange(nchunks):
        _max_idx_rows(x, y, ind, c * total // nchunks, (c + 1) * total // nchunks, row_ptr, row_src, row_cm,
                      col_k0, col_k1, geo, col_major)


def _nchunks(work: int, units: int, threads: int | None = None) -> int:
    """How many parallel chunks to split ``units`` independent pieces into (0: run serially)."""
    if work < _config.PARALLEL_MIN_WORK or units < 2:
        return 0
    nt = num_threads() if threads is None else threads
    return min(units, 4 * nt) if nt > 1 else 0


def max_chunks(units: int) -> int:
    """The most parallel chunks a run over ``units`` pieces may use (workspaces are sized for it)."""
    return max(1, min(units, 4 * numba.config.NUMBA_NUM_THREADS))


def pool_runner(kind: str, tab: WindowTables):
    """``(run(x, y, scratch), scratch_bytes)`` for windowed pooling; kind "max" or "avg". ``scratch`` is a
    uint8 workspace of at least scratch_bytes. ``run.bind(x, y, scratch, threads)`` returns the same call
    with every argument prepared (for arrays that stay the same from run to run)."""
    planes, r_out, ow = tab.y3
    is_max = kind == "max"
    per_chunk = tab.buffer_len
    work = planes * (r_out * tab.x3[2] * 3 + r_out * ow * int(tab.geo[G_KW]))
    maxch = max_chunks(planes)
    args = (tab.row_ptr, tab.row_src, tab.col_k0, tab.col_k1, tab.geo, tab.inv)
    x3s, y3s = tab.x3, tab.y3

    def call_args(x, y, scratch, threads):
        x3, y3 = x.reshape(x3s), y.reshape(y3s)
        nch = min(_nchunks(work, planes, threads), maxch)
        bufs = scratch[:4 * per_chunk * max(nch, 1)].view(np.float32).reshape(max(nch, 1), per_chunk)
        if nch:
            return (_pool_planes_par, x3, y3, *args, bufs, is_max, nch)
        return (_pool_planes, x3, y3, 0, planes, *args, bufs[0], is_max)

    def run(x, y, scratch):
        fn, *a = call_args(x, y, scratch, None)
        fn(*a)

    run.bind = lambda x, y, scratch, threads: functools.partial(*call_args(x, y, scratch, threads))
    return run, 4 * per_chunk * maxch


def maxpool_indices_runner(tab: WindowTables, col_major: bool):
    """``run(x, y, ind)`` for MaxPool with its Indices output (a scalar loop per output element)."""
    rows = tab.y3[0] * tab.y3[1]
    work = rows * tab.y3[2] * tab.kernel_volume * 4
    args = (tab.row_ptr, tab.row_src, tab.row_cm, tab.col_k0, tab.col_k1, tab.geo, bool(col_major))
    x3s, y3s = tab.x3, tab.y3

    def run(x, y, ind):
        x3, y3, i3 = x.reshape(x3s), y.reshape(y3s), ind.reshape(y3s)
        nch = _nchunks(work, rows)
        if nch:
            _max_idx_rows_par(x3, y3, i3, *args, nch)
        else:
            _max_idx_rows(x3, y3, i3, 0, rows, *args)
    return run


@numba.njit(**NJIT)
def scale_planes(y, inv):
    """y (P, Q) *= inv (Q,) in every plane: an average pool computed as window sums (a depthwise convolution
    with weights of one, see :meth:`edgedl.ops.pool.AveragePool.build`) times the reciprocal element counts."""
    n_q = y.shape[1]
    for p in range(y.shape[0]):
        yp = y[p]
        for q in range(n_q):
            yp[q] *= inv[q]


# --- global pooling ----------------------------------------------------------------------------------
@numba.njit(**NJIT)
def _gap_planes(x, y, p0, p1, inv):
    # x is (P, S), y is (P,): mean over each plane
    n_s = x.shape[1]
    for p in range(p0, p1):
        acc = _F0
        xr = x[p]
        for i in range(n_s):
            acc += xr[i]
        y[p] = acc * inv


@numba.njit(**NJIT)
def _gmp_planes(x, y, p0, p1, lanes):
    # x is (P, S), y is (P,): max over each plane; NaN propagates. The max runs in 16 independent lanes
    # (``lanes``, a float32 workspace of 16) so that it vectorizes; a plain sum rides along to detect NaN
    n_s = x.shape[1]
    nb = n_s // 16
    for p in range(p0, p1):
        xr = x[p]
        for k in range(16):
            lanes[k] = _NINF
        s = _F0
        for b in range(nb):
            blk = xr[b * 16:b * 16 + 16]
            for k in range(16):
                v = blk[k]
                m = lanes[k]
                lanes[k] = v if v > m else m
                s += v
        m = _NINF
        for k in range(16):
            v = lanes[k]
            m = v if v > m else m
        for i in range(nb * 16, n_s):
            v = xr[i]
            m = v if v > m else m
            s += v
        if math.isnan(s) or math.isinf(s):  # a NaN, an inf or an overflow: look for a NaN
            for i in range(n_s):
                if math.isnan(xr[i]):
                    m = np.float32(np.nan)
                    break
        y[p] = m


@numba.njit(**NJIT_PARALLEL)
def _gap_planes_par(x, y, inv, nchunks):
    n_p = x.shape[0]
    for c in prange(nchunks):
        _gap_planes(x, y, c * n_p // nchunks, (c + 1) * n_p // nchunks, inv)


@numba.njit(**NJIT_PARALLEL)
def _gmp_planes_par(x, y, lanes, nchunks):
    n_p = x.shape[0]
    for c in prange(nchunks):
        _gmp_planes(x, y, c * n_p // nchunks, (c + 1) * n_p // nchunks, lanes[c])


def global_pool_runner(kind: str, planes: int, size: int):
    """``(run(x, y, scratch), scratch_bytes)`` for global pooling over (planes, size) views. kind: "max" or
    "avg". ``run.bind`` as in :func:`pool_runner`."""
    inv = np.float32(1.0 / size) if size else np.float32(np.nan)
    work = planes * size
    maxch = max_chunks(planes)

    def call_args(x, y, scratch, threads):
        x2, y1 = x.reshape(planes, size), y.reshape(planes)
        nch = min(_nchunks(work, planes, threads), maxch)
        if kind == "avg":
            return (_gap_planes_par, x2, y1, inv, nch) if nch else (_gap_planes, x2, y1, 0, planes, inv)
        lanes = scratch[:64 * max(nch, 1)].view(np.float32).reshape(max(nch, 1), 16)
        return (_gmp_planes_par, x2, y1, lanes, nch) if nch else (_gmp_planes, x2, y1, 0, planes, lanes[0])

    def run(x, y, scratch):
        fn, *a = call_args(x, y, scratch, None)
        fn(*a)

    run.bind = lambda x, y, scratch, threads: functools.partial(*call_args(x, y, scratch, threads))
    return run, (64 * maxch if kind == "max" else 0)


# --- LpPool --------------------------------------------------------------------------------------------
@numba.njit(**NJIT)
def _lp_pow(x, t, p, code):
    # x, t: (size,) float32: t = |x| ** p (code 1: p = 1, 2: p = 2, 0: any p > 0)
    if code == 1:
        for i in range(x.shape[0]):
            t[i] = abs(x[i])
    elif code == 2:
        for i in range(x.shape[0]):
            v = x[i]
            t[i] = v * v
    else:
        for i in range(x.shape[0]):
            t[i] = np.float32(math.pow(abs(np.float64(x[i])), p))


@numba.njit(**NJIT)
def _lp_root(y, invp, code):
    # y: (size,) float32 sums of |x| ** p, in place: y = y ** (1 / p)
    if code == 2:
        for i in range(y.shape[0]):
            y[i] = np.float32(math.sqrt(y[i]))
    elif code == 0:
        for i in range(y.shape[0]):
            y[i] = np.float32(math.pow(np.float64(y[i]), invp))


def lp_pool_runner(tab: WindowTables, p: float):
    """``(run(x, y, scratch), scratch_bytes)`` for LpPool: ``(sum of |x| ** p over the window's elements inside
    the input) ** (1 / p)``. |x| ** p goes to the workspace, the windowed-sum kernel of AveragePool (with
    every reciprocal count 1) pools it into y, then y is raised to 1 / p in place."""
    import dataclasses

    code = 1 if p == 1.0 else 2 if p == 2.0 else 0
    run_sum, nbytes = pool_runner("avg", dataclasses.replace(tab, inv=np.ones_like(tab.inv)))
    n_x = int(np.prod(tab.x3, dtype=np.int64))
    off = (4 * n_x + 63) // 64 * 64
    invp = 1.0 / p

    def run(x, y, scratch):
        t = scratch[:4 * n_x].view(np.float32)
        _lp_pow(x.reshape(-1), t, p, code)
        run_sum(t, y, scratch[off:])
        if code != 1:
            _lp_root(y.reshape(-1), invp, code)
    return run, off + nbytes
