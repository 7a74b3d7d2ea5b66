"""Pooling kernels (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool), float32.

Windowed pooling of any spatial rank runs on a "rows x columns" view of every (n, c) plane: the last
spatial axis is the column axis, all the others are flattened into rows::

    x: (P, R_in, W)     P = N * C planes, R_in = prod(in_spatial[:-1]), W = in_spatial[-1]
    y: (P, R_out, OW)   R_out = prod(out_spatial[:-1]),                OW = out_spatial[-1]

Everything about the window geometry is precomputed at build time (:func:`window_tables`):

* ``row_ptr`` / ``row_src`` (CSR): for output row ``r`` the input rows ``row_src[row_ptr[r]:row_ptr[r+1]]``
  that its window covers inside the input (padding rows are simply absent), in row-major tap order;
* ``col_k0[ow]`` / ``col_k1[ow]``: the range of column taps ``j`` that fall inside the input for output
  column ``ow`` (input column ``ow * sw + j * dw - pw``);
* for averages, ``row_inv[r]`` and ``col_inv[ow]``: the reciprocal of the per-axis element counts (the
  divisor is separable: count_include_pad=0 counts taps inside the input, =1 taps inside the padded input).

The parallel variants split the ``P * R_out`` output rows into contiguous chunks, each with its own
workspace (see ``_max_rows``).
MaxPool ignores NaN inputs (``v > m`` comparisons), as onnx's reference does; a window with no element
inside the input gives -inf (MaxPool) or NaN (AveragePool without count_include_pad).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .config import NJIT, NJIT_PARALLEL, PARALLEL_MIN_WORK

_NINF = np.float32(-np.inf)
_F0 = np.float32(0.0)


# --- build-time tables -------------------------------------------------------------------------------
def axis_taps(n_in: int, n_out: int, k: int, s: int, d: int, pb: int, pe: int):
    """Per output position of one axis: the valid tap range [k0, k1) (input coordinate o*s - pb + j*d inside
    [0, n_in)) and the number of taps inside the padded input [-pb, n_in + pe)."""
    o = np.arange(n_out, dtype=np.int64)
    start = o * s - pb
    # smallest j with start + j*d >= 0, largest j with start + j*d <= n_in - 1
    k0 = np.where(start >= 0, 0, (-start + d - 1) // d)
    k1 = np.where(n_in - 1 - start >= 0, (n_in - 1 - start) // d + 1, 0)
    k0 = np.clip(k0, 0, k)
    k1 = np.clip(k1, 0, k)
    k1 = np.maximum(k1, k0)
    limit = n_in + pe - start  # taps with j*d < limit are inside the padded input
    padded = np.clip((limit + d - 1) // d, 0, k)
    return k0.astype(np.int64), k1.astype(np.int64), padded.astype(np.int64)


def window_tables(in_sp, out_sp, kernel, strides, dilations, pads, count_include_pad: bool = False):
    """Precompute the tables described in the module docstring. Returns a dict of arrays and ints."""
    nsp = len(in_sp)
    per_axis = [axis_taps(in_sp[i], out_sp[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + nsp])
                for i in range(nsp)]
    # rows: outer spatial axes (all but the last)
    outer_in = list(in_sp[:-1])
    outer_out = list(out_sp[:-1])
    r_out = int(np.prod(outer_out, dtype=np.int64)) if outer_out else 1
    in_row_strides = [int(np.prod(outer_in[i + 1:], dtype=np.int64)) for i in range(len(outer_in))]
    row_ptr = np.zeros(r_out + 1, np.int64)
    srcs: list[int] = []
    row_cnt = np.ones(r_out, np.float64)
    for r, oidx in enumerate(np.ndindex(*outer_out) if outer_out else [()]):
        ranges = []
        cnt = 1.0
        for i, o in enumerate(oidx):
            k0, k1, padded = per_axis[i]
            start = o * strides[i] - pads[i]
            ranges.append([start + j * dilations[i] for j in range(k0[o], k1[o])])
            cnt *= float(padded[o] if count_include_pad else k1[o] - k0[o])
        row_cnt[r] = cnt
        for coords in (np.ndindex(*[len(x) for x in ranges]) if ranges else [()]):
            srcs.append(sum(ranges[i][c] * in_row_strides[i] for i, c in enumerate(coords)))
        row_ptr[r + 1] = len(srcs)
    row_src = np.array(srcs, np.int64)
    ck0, ck1, cpad = per_axis[-1]
    col_cnt = (cpad if count_include_pad else ck1 - ck0).astype(np.float64)
    full = np.nonzero((ck0 == 0) & (ck1 == kernel[-1]))[0]
    if len(full):
        ow_lo, ow_hi = int(full[0]), int(full[-1]) + 1
    else:
        ow_lo = ow_hi = int(out_sp[-1])
    with np.errstate(divide="ignore"):
        row_inv = np.where(row_cnt > 0, 1.0 / row_cnt, np.nan).astype(np.float32)
        col_inv = np.where(col_cnt > 0, 1.0 / col_cnt, np.nan).astype(np.float32)
    # column-major (storage_order=1) index of each input row's first element, for MaxPool Indices:
    # the first spatial axis varies fastest; the last (column) axis has multiplier prod(outer_in)
    n_rows_in = int(np.prod(outer_in, dtype=np.int64)) if outer_in else 1
    row_cm = np.zeros(n_rows_in, np.int64)
    cm_mul = [int(np.prod(outer_in[:i], dtype=np.int64)) for i in range(len(outer_in))]
    for r, idx in enumerate(np.ndindex(*outer_in) if outer_in else [()]):
        row_cm[r] = sum(c * m for c, m in zip(idx, cm_mul))
    # stride-1 vertical windows of a 2D pool: the output rows whose every tap is inside the input
    vflat = (0, 0, 1, 1, 0)
    if nsp == 2 and strides[0] == 1:
        k0, k1, _ = per_axis[0]
        inner = np.nonzero((k0 == 0) & (k1 == kernel[0]))[0]
        if len(inner) and inner[-1] - inner[0] + 1 == len(inner):
            vflat = (int(inner[0]), int(inner[-1]) + 1, int(kernel[0]), int(dilations[0]), int(pads[0]))
    return dict(vflat=vflat, row_ptr=row_ptr, row_src=row_src, col_k0=ck0, col_k1=ck1, ow_lo=ow_lo, ow_hi=ow_hi,
                row_inv=row_inv, col_inv=col_inv, row_cm=row_cm, cm_wmul=n_rows_in,
                kw=int(kernel[-1]), sw=int(strides[-1]), dw=int(dilations[-1]), pw=int(pads[nsp - 1]))


# --- windowed pooling ---------------------------------------------------------------------------------
# A plane is pooled in two passes. The vertical pass reduces, for every output row, the input rows its
# window covers (the CSR tables) into a row of ``vb`` (R_out x W): one contiguous loop per output row,
# three input rows at a time. The horizontal pass reduces each vb row over the kw column taps into y.
# CNN rows are short (7 to 112 columns), too short for vector loops on their own, so when the output row
# length lines up with vb's the horizontal pass runs as a few long loops over the whole flattened plane:
#
# * mode 1 (stride 1, OW == W): y[q] = op_j vb[q + j*dw - pw] for every flat position q;
# * mode 2 (stride 2, W == 2 * OW): vb is first split into its even and odd columns (through a uint64 view:
#   element 2i is the low half of word i), then every tap reads one of the halves contiguously;
# * mode 0 (anything else): per row, through a padded row buffer (pads hold the identity).
#
# Flat loops read across row ends at the border columns (windows that reach into the padding); those
# columns are recomputed afterwards from the valid taps only (col_k0/col_k1).
# Workspace per chunk of planes (float32): vb (R_out*W) | even/odd split (R_out*W) | identity row (W) |
# padded row (L) | its even/odd split (L).

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


def plane_buffer_len(r_out: int, w_in: int, ow: int, kw: int, sw: int, dw: int, pl: int) -> int:
    return 2 * r_out * w_in + w_in + 2 * row_buffer_len(w_in, ow, kw, sw, dw, pl)


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
def _vpass_max(xp, vb, row_ptr, row_src, idrow, vflat):
    # rows vflat = (ra, rb, kh, dh, pt): output rows ra <= r < rb read input rows r - pt + j*dh, j < kh (stride
    # 1, every tap inside): one flat loop per tap over all of them
    ra, rb, kh, dh, pt = vflat
    n_w0 = xp.shape[1]
    if rb > ra:
        _taps_max(vb.reshape(vb.shape[0] * n_w0)[ra * n_w0:rb * n_w0], xp.reshape(xp.shape[0] * n_w0), ra * n_w0,
                  pt * n_w0, kh, dh * n_w0, 0)
    _vrows_max(xp, vb, row_ptr, row_src, idrow, 0, ra)
    _vrows_max(xp, vb, row_ptr, row_src, idrow, rb, vb.shape[0])


@numba.njit(**NJIT)
def _vrows_max(xp, vb, row_ptr, row_src, idrow, r0, r1):
    # xp is (R_in, W), vb is (R_out, W): vb[r] = max of the input rows of output row r (NaN never wins)
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
def _vpass_sum(xp, vb, row_ptr, row_src, idrow, vflat):
    # rows vflat = (ra, rb, kh, dh, pt): output rows ra <= r < rb read input rows r - pt + j*dh, j < kh (stride
    # 1, every tap inside): one flat loop per tap over all of them
    ra, rb, kh, dh, pt = vflat
    n_w0 = xp.shape[1]
    if rb > ra:
        _taps_sum(vb.reshape(vb.shape[0] * n_w0)[ra * n_w0:rb * n_w0], xp.reshape(xp.shape[0] * n_w0), ra * n_w0,
                  pt * n_w0, kh, dh * n_w0, 0)
    _vrows_sum(xp, vb, row_ptr, row_src, idrow, 0, ra)
    _vrows_sum(xp, vb, row_ptr, row_src, idrow, rb, vb.shape[0])


@numba.njit(**NJIT)
def _vrows_sum(xp, vb, row_ptr, row_src, idrow, r0, r1):
    # xp is (R_in, W), vb is (R_out, W): vb[r] = sum of the input rows of output row r
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
def _max_planes(x, y, p0, p1, row_ptr, row_src, vflat_rows, col_k0, col_k1, ow_lo, ow_hi, kw, sw, dw, pl, mode,
                buf):
    # x is (P, R_in, W), y is (P, R_out, OW); planes p0 <= p < p1
    n_w = x.shape[2]
    n_r = y.shape[1]
    ow_n = y.shape[2]
    n_v = n_r * n_w
    n_l = (buf.shape[0] - 2 * n_v - n_w) // 2
    vflat = buf[:n_v]
    vb = vflat.reshape((n_r, n_w))
    eo = buf[n_v:2 * n_v]
    idrow = buf[2 * n_v:2 * n_v + n_w]
    tpad = buf[2 * n_v + n_w:2 * n_v + n_w + n_l]
    teo = buf[2 * n_v + n_w + n_l:2 * n_v + n_w + 2 * n_l]
    for i in range(n_w):
        idrow[i] = _NINF
    for i in range(n_l):
        tpad[i] = _NINF
    lo = min(ow_lo, ow_n)
    for p in range(p0, p1):
        _vpass_max(x[p], vb, row_ptr, row_src, idrow, vflat_rows)
        yp = y[p]
        if mode == 0:
            t = tpad[pl:pl + n_w]
            for r in range(n_r):
                vr = vb[r]
                for w in range(n_w):
                    t[w] = vr[w]
                if sw == 2:
                    _deinterleave(tpad, teo, n_l // 2)
                    _taps_max(yp[r], teo, 0, 0, kw, dw, n_l // 2)
                elif sw == 1:
                    _taps_max(yp[r], tpad, 0, 0, kw, dw, 0)
                else:
                    yr = yp[r]
                    for i in range(ow_n):
                        m = _NINF
                        for j in range(kw):
                            v = tpad[i * sw + j * dw]
                            m = v if v > m else m
                        yr[i] = m
            continue
        yflat = yp.reshape(n_r * ow_n)
        if mode == 2:
            half = n_v // 2
            _deinterleave(vflat, eo, half)
            qa, qb = _flat_range(half, kw, dw, pl, half)
            _taps_max(yflat[qa:qb], eo, qa, pl, kw, dw, half)
        else:
            qa, qb = _flat_range(n_v, kw, dw, pl, 0)
            _taps_max(yflat[qa:qb], vflat, qa, pl, kw, dw, 0)
        for i in range(ow_n):  # border columns: valid taps only
            if lo <= i < ow_hi:
                continue
            k0 = col_k0[i]
            nk = col_k1[i] - k0
            vcol = vflat[i * sw + k0 * dw - pl:]
            ycol = yflat[i:]
            for r in range(n_r):
                m = _NINF
                for j in range(nk):
                    v = vcol[r * n_w + j * dw]
                    m = v if v > m else m
                ycol[r * ow_n] = m


@numba.njit(**NJIT)
def _avg_planes(x, y, p0, p1, row_ptr, row_src, vflat_rows, col_k0, col_k1, ow_lo, ow_hi, kw, sw, dw, pl, mode,
                inv, buf):
    # x is (P, R_in, W), y is (P, R_out, OW): window sums times inv (R_out * OW,), 1 / element count
    n_w = x.shape[2]
    n_r = y.shape[1]
    ow_n = y.shape[2]
    n_v = n_r * n_w
    n_l = (buf.shape[0] - 2 * n_v - n_w) // 2
    vflat = buf[:n_v]
    vb = vflat.reshape((n_r, n_w))
    eo = buf[n_v:2 * n_v]
    idrow = buf[2 * n_v:2 * n_v + n_w]
    tpad = buf[2 * n_v + n_w:2 * n_v + n_w + n_l]
    teo = buf[2 * n_v + n_w + n_l:2 * n_v + n_w + 2 * n_l]
    for i in range(n_w):
        idrow[i] = _F0
    for i in range(n_l):
        tpad[i] = _F0
    lo = min(ow_lo, ow_n)
    n_y = n_r * ow_n
    for p in range(p0, p1):
        _vpass_sum(x[p], vb, row_ptr, row_src, idrow, vflat_rows)
        yp = y[p]
        yflat = yp.reshape(n_y)
        if mode == 0:
            t = tpad[pl:pl + n_w]
            for r in range(n_r):
                vr = vb[r]
                for w in range(n_w):
                    t[w] = vr[w]
                if sw == 2:
                    _deinterleave(tpad, teo, n_l // 2)
                    _taps_sum(yp[r], teo, 0, 0, kw, dw, n_l // 2)
                elif sw == 1:
                    _taps_sum(yp[r], tpad, 0, 0, kw, dw, 0)
                else:
                    yr = yp[r]
                    for i in range(ow_n):
                        acc = _F0
                        for j in range(kw):
                            acc += tpad[i * sw + j * dw]
                        yr[i] = acc
        else:
            if mode == 2:
                half = n_v // 2
                _deinterleave(vflat, eo, half)
                qa, qb = _flat_range(half, kw, dw, pl, half)
                _taps_sum(yflat[qa:qb], eo, qa, pl, kw, dw, half)
            else:
                qa, qb = _flat_range(n_v, kw, dw, pl, 0)
                _taps_sum(yflat[qa:qb], vflat, qa, pl, kw, dw, 0)
            for i in range(ow_n):  # border columns: valid taps only
                if lo <= i < ow_hi:
                    continue
                k0 = col_k0[i]
                nk = col_k1[i] - k0
                vcol = vflat[i * sw + k0 * dw - pl:]
                ycol = yflat[i:]
                for r in range(n_r):
                    acc = _F0
                    for j in range(nk):
                        acc += vcol[r * n_w + j * dw]
                    ycol[r * ow_n] = acc
        for i in range(n_y):
            yflat[i] *= inv[i]


# --- drivers: every chunk owns a contiguous range of planes and one workspace row ---------------------
@numba.njit(**NJIT_PARALLEL)
def _max_planes_par(x, y, row_ptr, row_src, vflat_rows, col_k0, col_k1, ow_lo, ow_hi, kw, sw, dw, pl, mode, bufs, nchunks):
    n_p = y.shape[0]
    for c in prange(nchunks):
        _max_planes(x, y, c * n_p // nchunks, (c + 1) * n_p // nchunks, row_ptr, row_src, vflat_rows, col_k0, col_k1,
                    ow_lo, ow_hi, kw, sw, dw, pl, mode, bufs[c])


@numba.njit(**NJIT_PARALLEL)
def _avg_planes_par(x, y, row_ptr, row_src, vflat_rows, col_k0, col_k1, ow_lo, ow_hi, kw, sw, dw, pl, mode, inv, bufs,
                    nchunks):
    n_p = y.shape[0]
    for c in prange(nchunks):
        _avg_planes(x, y, c * n_p // nchunks, (c + 1) * n_p // nchunks, row_ptr, row_src, vflat_rows, col_k0, col_k1,
                    ow_lo, ow_hi, kw, sw, dw, pl, mode, inv, bufs[c])


@numba.njit(**NJIT)
def _max_idx_rows(x, y, ind, t0, t1, row_ptr, row_src, row_cm, col_k0, col_k1, sw, dw, pw, col_major, cm_wmul):
    # x is (P, R_in, W), y and ind are (P, R_out, OW); ind gets the flat index (over N*C*spatial) of the
    # max, row-major (or column-major over the spatial axes when col_major); ties keep the first in
    # row-major window order; NaN never wins; a window where nothing beats -inf keeps its first element
    n_r = y.shape[1]
    ow_n = y.shape[2]
    n_w = x.shape[2]
    plane = x.shape[1] * n_w
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
                    w = ow * sw + j * dw - pw
                    v = x[p, xr, w]
                    if best_row < 0 or v > m:
                        if v > m:
                            m = v
                        best_row = xr
                        best_w = w
                    elif v > m:
                        m = v
            y[p, r, ow] = m
            if best_row < 0:
                ind[p, r, ow] = -1
            elif col_major:
                ind[p, r, ow] = base + row_cm[best_row] + best_w * cm_wmul
            else:
                ind[p, r, ow] = base + best_row * n_w + best_w


@numba.njit(**NJIT_PARALLEL)
def _max_idx_rows_par(x, y, ind, row_ptr, row_src, row_cm, col_k0, col_k1, sw, dw, pw, col_major, cm_wmul,
                      nchunks):
    total = y.shape[0] * y.shape[1]
    for c in prange(nchunks):
        _max_idx_rows(x, y, ind, c * total // nchunks, (c + 1) * total // nchunks, row_ptr, row_src, row_cm,
                      col_k0, col_k1, sw, dw, pw, col_major, cm_wmul)


def _nchunks(work: int, rows: int) -> int:
    """How many parallel chunks (0: run serially)."""
    if work < PARALLEL_MIN_WORK or rows < 2:
        return 0
    nt = numba.get_num_threads()
    return min(rows, 4 * nt) if nt > 1 else 0


def max_chunks(units: int) -> int:
    """The most parallel chunks a run over ``units`` independent pieces may use (workspace is sized for it)."""
    return max(1, min(units, 4 * numba.config.NUMBA_NUM_THREADS))


def pool2d_runner(kind: str, tab: dict, x_shape3: tuple, y_shape3: tuple, kernel_volume: int):
    """``(run(x, y, scratch), scratch_bytes)`` for windowed pooling on the (P, R, W) views. kind: "max" or
    "avg". ``scratch`` is a uint8 workspace of at least scratch_bytes."""
    row_ptr, row_src = tab["row_ptr"], tab["row_src"]
    col_k0, col_k1, ow_lo, ow_hi = tab["col_k0"], tab["col_k1"], tab["ow_lo"], tab["ow_hi"]
    kw, sw, dw, pw = tab["kw"], tab["sw"], tab["dw"], tab["pw"]
    planes, r_in, w_in = x_shape3
    r_out, ow = y_shape3[1], y_shape3[2]
    inv = np.ascontiguousarray(np.outer(tab["row_inv"], tab["col_inv"]).reshape(-1), dtype=np.float32)
    mode = flat_mode(w_in, ow, sw)
    per_chunk = plane_buffer_len(r_out, w_in, ow, kw, sw, dw, pw)
    work = planes * (r_out * w_in * 3 + r_out * ow * kw)
    maxch = max_chunks(planes)
    vflat_rows = tab["vflat"]

    def run(x, y, scratch):
        x3, y3 = x.reshape(x_shape3), y.reshape(y_shape3)
        nch = min(_nchunks(work, planes), maxch)
        bufs = scratch[:4 * per_chunk * max(nch, 1)].view(np.float32).reshape(max(nch, 1), per_chunk)
        if kind == "max":
            if nch:
                _max_planes_par(x3, y3, row_ptr, row_src, vflat_rows, col_k0, col_k1, ow_lo, ow_hi, kw, sw, dw, pw, mode,
                                bufs, nch)
            else:
                _max_planes(x3, y3, 0, planes, row_ptr, row_src, vflat_rows, col_k0, col_k1, ow_lo, ow_hi, kw, sw, dw, pw,
                            mode, bufs[0])
        else:
            if nch:
                _avg_planes_par(x3, y3, row_ptr, row_src, vflat_rows, col_k0, col_k1, ow_lo, ow_hi, kw, sw, dw, pw, mode, inv,
                                bufs, nch)
            else:
                _avg_planes(x3, y3, 0, planes, row_ptr, row_src, vflat_rows, col_k0, col_k1, ow_lo, ow_hi, kw, sw, dw, pw,
                            mode, inv, bufs[0])
    return run, 4 * per_chunk * maxch


def maxpool_indices_runner(tab: dict, x_shape3: tuple, y_shape3: tuple, kernel_volume: int, col_major: bool):
    """A ``run(x, y, ind)`` closure for MaxPool with its Indices output."""
    row_ptr, row_src, row_cm = tab["row_ptr"], tab["row_src"], tab["row_cm"]
    col_k0, col_k1, sw, dw, pw, cm_wmul = tab["col_k0"], tab["col_k1"], tab["sw"], tab["dw"], tab["pw"], \
        tab["cm_wmul"]
    rows = y_shape3[0] * y_shape3[1]
    work = rows * y_shape3[2] * kernel_volume * 4  # scalar loop: weigh it more

    def run(x, y, ind):
        x3, y3, i3 = x.reshape(x_shape3), y.reshape(y_shape3), ind.reshape(y_shape3)
        nch = _nchunks(work, rows)
        if nch:
            _max_idx_rows_par(x3, y3, i3, row_ptr, row_src, row_cm, col_k0, col_k1, sw, dw, pw, col_major,
                              cm_wmul, nch)
        else:
            _max_idx_rows(x3, y3, i3, 0, rows, row_ptr, row_src, row_cm, col_k0, col_k1, sw, dw, pw, col_major,
                          cm_wmul)
    return run


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
def _gmp_planes(x, y, p0, p1):
    # x is (P, S), y is (P,): max over each plane; NaN propagates
    n_s = x.shape[1]
    for p in range(p0, p1):
        m = _NINF
        nan = False
        xr = x[p]
        for i in range(n_s):
            v = xr[i]
            nan |= v != v
            m = v if v > m else m
        y[p] = np.float32(np.nan) if nan else m


@numba.njit(**NJIT_PARALLEL)
def _gap_planes_par(x, y, inv, nchunks):
    n_p = x.shape[0]
    for c in prange(nchunks):
        _gap_planes(x, y, c * n_p // nchunks, (c + 1) * n_p // nchunks, inv)


@numba.njit(**NJIT_PARALLEL)
def _gmp_planes_par(x, y, nchunks):
    n_p = x.shape[0]
    for c in prange(nchunks):
        _gmp_planes(x, y, c * n_p // nchunks, (c + 1) * n_p // nchunks)


def global_pool_runner(kind: str, planes: int, size: int):
    """A ``run(x, y)`` closure for global pooling over (planes, size) views. kind: "max" or "avg"."""
    inv = np.float32(1.0 / size) if size else np.float32(np.nan)
    work = planes * size

    def run(x, y):
        x2, y1 = x.reshape(planes, size), y.reshape(planes)
        nch = _nchunks(work, planes)
        if kind == "avg":
            if nch:
                _gap_planes_par(x2, y1, inv, nch)
            else:
                _gap_planes(x2, y1, 0, planes, inv)
        else:
            if nch:
                _gmp_planes_par(x2, y1, nch)
            else:
                _gmp_planes(x2, y1, 0, planes)
    return run
