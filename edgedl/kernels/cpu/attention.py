"""float32 attention kernels: the fused scaled-dot-product attention of ONNX Attention (opset 23+), and the
recurrences of LinearAttention and CausalConvWithState.

Attention (:func:`attention_forward`)
-------------------------------------
For batch b, query head h (key/value head ``h // (Hq / Hkv)``: GQA), query row i and key j::

    s[i, j] = scale * <Q[b, h, i], K[b, kvh, j]>        (then softcap * tanh(s / softcap) when softcap > 0)
    t[i, j] = s[i, j] + mask[b, h, i, j]               (j inside the allowed range of row i, else -inf)
    P[i]    = softmax(t[i])   (a zero row when every key of the row is disallowed)
    Y[b, h, i] = P[i] @ V[b, kvh]

The allowed range of row i is ``lo_i <= j < hi_i``: the causal frontier ``j <= i + offset``, the sliding window
``p - left <= j <= p + right`` (``p = offset + i``), the padding ``j < nonpad_kv_seqlen[b]`` and the length of
a mask shorter than the keys; ``offset`` is the past length (or ``nonpad_kv_seqlen[b] - Sq``).

Both products run on the project's GEMM microkernel (:data:`edgedl.kernels.cpu.vec.microkernel_panel`):

1. :func:`_pack_kv` (parallel over (b, kvh)): K^T into packed B panels of NR keys (``[D][NR]``) and V into
   packed B panels of NR value columns (``[T][NR]``), once per call, shared by every query head of the group;
2. :func:`_attn_task` per (b, h, block of QB query rows) (parallel over all of them): Q block (times scale)
   packed as A panels (``[D][MR]``); S = Q K^T for the key panels the block can see; per row the softcap, the
   bias and the softmax in place (exp as :func:`edgedl.kernels.cpu.elementwise.exp_f32`, the sum in float64);
   P packed as A panels over the block's key range; Y = P V written straight into Y's rows (3-D or 4-D
   layout, through row strides).

Few query rows (``sq < MR``: decoding) take :func:`_decode_task` instead, per (b, kvh, chunk of the group's rows):
no packing of K, the scores as dot products reading each key row in place once for all the query heads of the
group (GQA rows share it), the same row step, then Y = P V on the microkernel reading V's rows in place
(:data:`edgedl.kernels.cpu.vec.microkernel_panel_ldb`).

Every tensor is passed flat with element strides (batch, head, sequence); the head dim is contiguous. Results do
not depend on the thread count (each task owns its rows).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads
from .elementwise import exp_f32
from .vec import MR, NR, microkernel_panel, microkernel_panel_ldb

#: query rows per task (a multiple of MR)
QB = 8 * MR

_NEG_INF = np.float32(-np.inf)


def panels(n: int) -> int:
    return -(-n // NR)


def packed_kv_floats(b: int, hkv: int, t: int, d: int, dv: int) -> tuple[int, int]:
    """(floats of the packed K^T panels, floats of the packed V panels) for all (b, kvh)."""
    return b * hkv * panels(t) * d * NR, b * hkv * panels(dv) * t * NR


def slot_floats(t: int, d: int) -> int:
    """floats of one task slot's workspace: packed Q, the score block, packed P."""
    ld = panels(t) * NR
    return QB * max(d, 1) + QB * ld + QB * max(t, 1)


@numba.njit(inline="always", **NJIT)
def _pack_one(k, k_off, k_ss, v, v_off, v_ss, t, d, dv, kp, kp_off, vp, vp_off):
    # K (t, d) rows k_ss apart from k[k_off] -> kp[kp_off + jt*d*NR + dd*NR + j] = K[jt*NR + j, dd]
    # V (t, dv) rows v_ss apart from v[v_off] -> vp[vp_off + pt*t*NR + tt*NR + j] = V[tt, pt*NR + j]
    # (loops index slices from 0: no negative-index wraparound checks, so they vectorize)
    npt = (t + NR - 1) // NR
    for jt in range(npt):
        dst = kp[kp_off + jt * d * NR:kp_off + (jt + 1) * d * NR]
        for j in range(NR):
            row = jt * NR + j
            if row < t:
                src = k[k_off + row * k_ss:k_off + row * k_ss + d]
                for dd in range(d):
                    dst[dd * NR + j] = src[dd]
            else:
                for dd in range(d):
                    dst[dd * NR + j] = np.float32(0.0)
    npv = (dv + NR - 1) // NR
    for pt in range(npv):
        dst = vp[vp_off + pt * t * NR:vp_off + (pt + 1) * t * NR]
        c0 = pt * NR
        cols = min(NR, dv - c0)
        for tt in range(t):
            src = v[v_off + tt * v_ss + c0:v_off + tt * v_ss + c0 + cols]
            o = dst[tt * NR:tt * NR + NR]
            for j in range(cols):
                o[j] = src[j]
            for j in range(cols, NR):
                o[j] = np.float32(0.0)


@numba.njit(inline="always", **NJIT)
def _add_mask(seg, m):
    # seg (n,) += m (n,) (any layout); whether some m is not -inf (the row keeps a key)
    n = seg.size
    for j in range(n):
        seg[j] += m[j]
    for j in range(n):
        if m[j] != _NEG_INF:
            return True
    return False


@numba.njit(inline="always", **NJIT)
def _max_seg(seg):
    # the largest value of seg (NaN ignored; -inf for none): eight independent chains (without fast-math nnan
    # LLVM does not vectorize a max reduction; the chains give the instruction-level parallelism instead)
    n = seg.size
    n8 = n // 8 * 8
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = _NEG_INF
    for j in range(0, n8, 8):
        v = seg[j]
        m0 = v if v > m0 else m0
        v = seg[j + 1]
        m1 = v if v > m1 else m1
        v = seg[j + 2]
        m2 = v if v > m2 else m2
        v = seg[j + 3]
        m3 = v if v > m3 else m3
        v = seg[j + 4]
        m4 = v if v > m4 else m4
        v = seg[j + 5]
        m5 = v if v > m5 else m5
        v = seg[j + 6]
        m6 = v if v > m6 else m6
        v = seg[j + 7]
        m7 = v if v > m7 else m7
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    m0 = m4 if m4 > m0 else m0
    for j in range(n8, n):
        v = seg[j]
        m0 = v if v > m0 else m0
    return m0


@numba.njit(inline="always", **NJIT)
def _softmax_seg(seg):
    # seg (n >= 1,) contiguous, in place: softmax; a row whose max is -inf becomes zeros (a NaN, an inf - inf
    # makes the row NaN, as numpy does)
    n = seg.size
    mx = _max_seg(seg)
    if mx == _NEG_INF:
        nan = False
        for j in range(n):
            if seg[j] != seg[j]:
                nan = True
        for j in range(n):
            seg[j] = np.float32(np.nan) if nan else np.float32(0.0)
        return
    tot = np.float64(0.0)
    for j in range(n):
        e = exp_f32(seg[j] - mx)
        seg[j] = e
        tot += np.float64(e)
    inv = np.float32(1.0 / tot)
    for j in range(n):
        seg[j] *= inv


@numba.njit(inline="always", **NJIT)
def _fill(seg, value):
    for j in range(seg.size):
        seg[j] = value


@numba.njit(**NJIT)
def _pack_kv_serial(k, ks, v, vs, nb, hkv, t, d, dv, kp, vp):
    # k, v: flat float32; ks, vs: (3,) int64 element strides (batch, head, seq); kp, vp: packed panels
    npt = (t + NR - 1) // NR
    npv = (dv + NR - 1) // NR
    for u in range(nb * hkv):
        b = u // hkv
        g = u - b * hkv
        _pack_one(k, b * ks[0] + g * ks[1], ks[2], v, b * vs[0] + g * vs[1], vs[2], t, d, dv, kp, u * npt * d * NR,
                  vp, u * npv * t * NR)


@numba.njit(**NJIT_PARALLEL)
def _pack_kv_parallel(k, ks, v, vs, nb, hkv, t, d, dv, kp, vp):
    # as _pack_kv_serial, one task per (batch, kv head)
    npt = (t + NR - 1) // NR
    npv = (dv + NR - 1) // NR
    for u in prange(nb * hkv):
        b = u // hkv
        g = u - b * hkv
        _pack_one(k, b * ks[0] + g * ks[1], ks[2], v, b * vs[0] + g * vs[1], vs[2], t, d, dv, kp, u * npt * d * NR,
                  vp, u * npv * t * NR)


@numba.njit(inline="always", **NJIT)
def _pack_a_rows(src, base, ld, rows, kc, dst, scale):
    # one packed A panel: dst[k*MR + r] = scale * src[base + r*ld + k] for r < rows (<= MR), k < kc; rows past
    # `rows` are zero. Each k step writes MR consecutive floats (unrolled for MR = 6 / 4)
    if rows == MR and MR == 6:
        s0 = src[base:base + kc]
        s1 = src[base + ld:base + ld + kc]
        s2 = src[base + 2 * ld:base + 2 * ld + kc]
        s3 = src[base + 3 * ld:base + 3 * ld + kc]
        s4 = src[base + 4 * ld:base + 4 * ld + kc]
        s5 = src[base + 5 * ld:base + 5 * ld + kc]
        for k in range(kc):
            o = k * MR
            dst[o] = s0[k] * scale
            dst[o + 1] = s1[k] * scale
            dst[o + 2] = s2[k] * scale
            dst[o + 3] = s3[k] * scale
            dst[o + 4] = s4[k] * scale
            dst[o + 5] = s5[k] * scale
        return
    if rows == MR and MR == 4:
        s0 = src[base:base + kc]
        s1 = src[base + ld:base + ld + kc]
        s2 = src[base + 2 * ld:base + 2 * ld + kc]
        s3 = src[base + 3 * ld:base + 3 * ld + kc]
        for k in range(kc):
            o = k * MR
            dst[o] = s0[k] * scale
            dst[o + 1] = s1[k] * scale
            dst[o + 2] = s2[k] * scale
            dst[o + 3] = s3[k] * scale
        return
    for r in range(rows):
        sr = src[base + r * ld:base + r * ld + kc]
        for k in range(kc):
            dst[k * MR + r] = sr[k] * scale
    for r in range(rows, MR):
        for k in range(kc):
            dst[k * MR + r] = np.float32(0.0)


@numba.njit(inline="always", **NJIT)
def _row_range(qi, off, t, causal, left, right, pad_len, mlen):
    # allowed keys [lo, hi) of absolute query row qi (see the module docstring)
    lo = 0
    hi = min(t, pad_len, mlen)
    p = off + qi
    if causal:
        hi = min(hi, p + 1)
    if left >= 0:
        lo = max(lo, p - left)
    if right >= 0:
        hi = min(hi, p + right + 1)
    lo = min(lo, t)
    if hi < lo:
        hi = lo
    return lo, hi


@numba.njit(inline="always", **NJIT)
def _row_probs(srow, lo, hi, c0, c1, softcap, has_mask, mask, mrow, ms3, qk, qoff, qk_mode, t):
    # one query row: srow (>= c1,) holds the scaled scores of keys [c0, c1) and becomes the probabilities there
    # (zero outside [lo, hi), the allowed keys); mask[mrow + j*ms3]: the row's additive mask; qk[qoff:qoff+t]:
    # the row of the qk output (qk_mode 0/1: scores after the softcap, 2: plus the bias, 3: probabilities)
    if softcap > 0.0:
        seg = srow[c0:c1]
        for j in range(seg.size):
            seg[j] = softcap * math.tanh(seg[j] / softcap)
    if qk_mode == 0 or qk_mode == 1:
        qrow = qk[qoff:qoff + t]
        for j in range(t):
            qrow[j] = srow[j]
    seg = srow[lo:hi]
    open_ = hi > lo
    if has_mask and open_:
        m0 = mrow + lo * ms3
        if ms3 == 1:
            open_ = _add_mask(seg, mask[m0:m0 + hi - lo])
        elif ms3 == 0:
            mv = mask[m0]
            for j in range(seg.size):
                seg[j] += mv
            open_ = mv != _NEG_INF
        else:
            open_ = _add_mask(seg, mask[m0:m0 + (hi - lo - 1) * ms3 + 1:ms3])
    if qk_mode == 2:
        qrow = qk[qoff:qoff + t]
        for j in range(t):
            qrow[j] = srow[j] if (j >= lo and j < hi) else srow[j] + _NEG_INF
    # a fully masked row (no key allowed, or the mask disallows every allowed one) is a zero row
    if open_:
        _softmax_seg(seg)
        _fill(srow[c0:lo], np.float32(0.0))
        _fill(srow[hi:c1], np.float32(0.0))
    else:
        _fill(srow[c0:c1], np.float32(0.0))
    if qk_mode == 3:
        qrow = qk[qoff:qoff + t]
        for j in range(t):
            qrow[j] = srow[j] if (j >= c0 and j < c1) else np.float32(0.0)


@numba.njit(inline="always", **NJIT)
def _offsets(b, nonpad, has_nonpad, past, t, sq):
    # (padding length, causal / window offset) of batch b
    pad_len = t
    npb = 0
    if has_nonpad:
        npb = min(max(nonpad[b], -(1 << 40)), 1 << 40)  # data: bounded so no offset below can overflow
        pad_len = max(0, min(t, npb))
    if past >= 0:
        off = past
    elif has_nonpad:
        off = npb - sq
    else:
        off = 0
    return pad_len, off


@numba.njit(**NJIT)
def _attn_task(task, nqb, q, qs, kp, vp, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad, causal, past, left,
               right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, work, one):
    # task = (b * hq + h) * nqb + query block; q, y: flat, qs / ys: (3,) element strides (batch, head, seq);
    # kp / vp: packed K^T / V panels (see _pack_one); mask: flat float32 with (4,) strides ms (0: broadcast);
    # qk: flat (nb, hq, sq, t) or empty (qk_mode -1); work: this slot's workspace (slot_floats(t, d))
    qb = task % nqb
    bh = task // nqb
    b = bh // hq
    h = bh - b * hq
    g = h // (hq // hkv)
    q0 = qb * QB
    nq = min(QB, sq - q0)
    npt = (t + NR - 1) // NR
    npv = (dv + NR - 1) // NR
    ld = npt * NR
    dd1 = max(d, 1)
    apq = work[:QB * dd1]
    s = work[QB * dd1:QB * dd1 + QB * ld]
    app = work[QB * dd1 + QB * ld:]
    ntiles = (nq + MR - 1) // MR
    mlast = nq - (ntiles - 1) * MR
    # --- the rows' key ranges ---------------------------------------------------------------------------
    pad_len, off = _offsets(b, nonpad, has_nonpad, past, t, sq)
    mcap = mlen if has_mask else t
    blo = t
    bhi = 0
    for r in range(nq):
        lo, hi = _row_range(q0 + r, off, t, causal, left, right, pad_len, mcap)
        if hi > lo:
            blo = min(blo, lo)
            bhi = max(bhi, hi)
    full = qk_mode >= 0 and qk_mode <= 2
    c0 = 0 if full else (blo // NR) * NR
    c1 = t if full else min(t, ((bhi + NR - 1) // NR) * NR)
    # --- S = (scale Q) K^T over key panels [c0, c1) -----------------------------------------------------------
    if c1 > c0:
        qbase = b * qs[0] + h * qs[1]
        for p in range(ntiles):
            _pack_a_rows(q, qbase + (q0 + p * MR) * qs[2], qs[2], min(MR, nq - p * MR), d,
                         apq[p * d * MR:(p + 1) * d * MR], scale)
        kbase = (b * hkv + g) * npt * d * NR
        for jt in range(c0 // NR, (c1 + NR - 1) // NR):
            microkernel_panel(ntiles, d, apq, 0, d * MR, kp, kbase + jt * d * NR, s, jt * NR, MR * ld, ld, 0, one,
                              0, 0, 0, 0.0, 0.0, mlast, min(NR, t - jt * NR))
    # --- per row: softcap, bias, softmax ----------------------------------------------------------------------
    qk_base = ((b * hq + h) * sq + q0) * t
    for r in range(nq):
        qi = q0 + r
        lo, hi = _row_range(qi, off, t, causal, left, right, pad_len, mcap)
        _row_probs(s[r * ld:r * ld + ld], lo, hi, c0, c1, softcap, has_mask, mask,
                   b * ms[0] + h * ms[1] + qi * ms[2], ms[3], qk, qk_base + r * t, qk_mode, t)
    # --- Y = P V over the keys [blo, bhi) -------------------------------------------------------------------
    ybase = b * ys[0] + h * ys[1] + q0 * ys[2]
    kc = bhi - blo
    if kc <= 0:
        for r in range(nq):
            _fill(y[ybase + r * ys[2]:ybase + r * ys[2] + dv], np.float32(0.0))
        return
    for p in range(ntiles):
        _pack_a_rows(s, p * MR * ld + blo, ld, min(MR, nq - p * MR), kc, app[p * kc * MR:(p + 1) * kc * MR],
                     np.float32(1.0))
    vbase = (b * hkv + g) * npv * t * NR
    for pt in range(npv):
        microkernel_panel(ntiles, kc, app, 0, kc * MR, vp, vbase + pt * t * NR + blo * NR, y, ybase + pt * NR,
                          MR * ys[2], ys[2], 0, one, 0, 0, 0, 0.0, 0.0, mlast, min(NR, dv - pt * NR))


@numba.njit(**NJIT)
def _attn_serial(ntasks, nqb, q, qs, kp, vp, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad, causal, past,
                 left, right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, work, one):
    # every task in turn on work[:slot_floats]
    for task in range(ntasks):
        _attn_task(task, nqb, q, qs, kp, vp, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad, causal, past, left,
                   right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, work, one)


@numba.njit(**NJIT_PARALLEL)
def _attn_parallel(nslots, slot, ntasks, nqb, q, qs, kp, vp, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad,
                   causal, past, left, right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, work, one):
    # work: (nslots * slot,) float32: slot s runs tasks [s*ntasks/nslots, (s+1)*ntasks/nslots) on its own slice
    for sl in prange(nslots):
        w = work[sl * slot:(sl + 1) * slot]
        for task in range(sl * ntasks // nslots, (sl + 1) * ntasks // nslots):
            _attn_task(task, nqb, q, qs, kp, vp, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad, causal, past,
                       left, right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, w, one)


#: query rows per decode task (the rows of one kv head's group of query heads, at most this many at once)
DECODE_ROWS = 8
_DECODE_PANELS = -(-DECODE_ROWS // MR)


@numba.njit(**NJIT)
def _decode_task(task, nch, q, qs, k, ks, v, vs, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad, causal, past,
                 left, right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, work, one):
    # Few query rows (sq < MR): task = (b * hkv + g) * nch + chunk of the group's rows r = hi * sq + qi (query head
    # g * grp + hi, row qi). K and V are read in place (rows of d / dv contiguous floats, strides ks / vs): each
    # key row is loaded once for every query row of the chunk (dot products over d), each value row once for
    # the weighted sums. work: (DECODE_ROWS * (d + t + dv),) float32
    grp = hq // hkv
    rows_all = grp * sq
    ch = task % nch
    bg = task // nch
    b = bg // hkv
    g = bg - b * hkv
    r0 = ch * DECODE_ROWS
    nr = min(DECODE_ROWS, rows_all - r0)
    qb = work[:DECODE_ROWS * d]
    s = work[DECODE_ROWS * d:DECODE_ROWS * (d + t)]
    acc = work[DECODE_ROWS * (d + t):DECODE_ROWS * (d + t + dv)]
    o_ = DECODE_ROWS * (d + t + dv)
    app = work[o_:o_ + _DECODE_PANELS * MR * t]
    vtail = work[o_ + _DECODE_PANELS * MR * t:o_ + _DECODE_PANELS * MR * t + t * NR]
    pad_len, off = _offsets(b, nonpad, has_nonpad, past, t, sq)
    mcap = mlen if has_mask else t
    blo = t
    bhi = 0
    for r in range(nr):
        qi = (r0 + r) % sq
        lo, hi = _row_range(qi, off, t, causal, left, right, pad_len, mcap)
        if hi > lo:
            blo = min(blo, lo)
            bhi = max(bhi, hi)
        h = g * grp + (r0 + r) // sq
        src0 = b * qs[0] + h * qs[1] + qi * qs[2]
        src = q[src0:src0 + d]
        dst = qb[r * d:r * d + d]
        for dd in range(d):
            dst[dd] = src[dd] * scale
    full = qk_mode >= 0 and qk_mode <= 2
    c0 = 0 if full else blo
    c1 = t if full else max(bhi, blo)
    kbase = b * ks[0] + g * ks[1]
    for j in range(c0, c1):
        k0 = kbase + j * ks[2]
        krow = k[k0:k0 + d]
        r = 0
        while r + 4 <= nr:  # four dot products per load of the key row
            q0_ = qb[r * d:r * d + d]
            q1_ = qb[(r + 1) * d:(r + 2) * d]
            q2_ = qb[(r + 2) * d:(r + 3) * d]
            q3_ = qb[(r + 3) * d:(r + 4) * d]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for dd in range(d):
                kv = krow[dd]
                a0 += q0_[dd] * kv
                a1 += q1_[dd] * kv
                a2 += q2_[dd] * kv
                a3 += q3_[dd] * kv
            s[r * t + j] = a0
            s[(r + 1) * t + j] = a1
            s[(r + 2) * t + j] = a2
            s[(r + 3) * t + j] = a3
            r += 4
        while r < nr:
            qr = qb[r * d:r * d + d]
            a = np.float32(0.0)
            for dd in range(d):
                a += qr[dd] * krow[dd]
            s[r * t + j] = a
            r += 1
    for r in range(nr):
        qi = (r0 + r) % sq
        h = g * grp + (r0 + r) // sq
        lo, hi = _row_range(qi, off, t, causal, left, right, pad_len, mcap)
        _row_probs(s[r * t:r * t + t], lo, hi, c0, c1, softcap, has_mask, mask, b * ms[0] + h * ms[1] + qi * ms[2],
                   ms[3], qk, ((b * hq + h) * sq + qi) * t, qk_mode, t)
    # Y rows = P V on the GEMM microkernel: P packed as A panels, V's full NR-column panels read in place, its
    # last partial panel packed
    kc = bhi - blo
    if kc <= 0:
        _fill(acc[:nr * dv], np.float32(0.0))
    else:
        ntiles = (nr + MR - 1) // MR
        mlast = nr - (ntiles - 1) * MR
        for p in range(ntiles):
            _pack_a_rows(s, p * MR * t + blo, t, min(MR, nr - p * MR), kc, app[p * kc * MR:(p + 1) * kc * MR],
                         np.float32(1.0))
        vbase = b * vs[0] + g * vs[1] + blo * vs[2]
        npv = (dv + NR - 1) // NR
        for pt in range(npv):
            c0_ = pt * NR
            ncols = min(NR, dv - c0_)
            if ncols == NR:
                microkernel_panel_ldb(ntiles, kc, app, 0, kc * MR, v, vbase + c0_, acc, c0_, MR * dv, dv, 0, one, 0, 0,
                                      0, 0.0, 0.0, mlast, NR, vs[2])
            else:
                for j in range(kc):
                    src = v[vbase + j * vs[2] + c0_:vbase + j * vs[2] + c0_ + ncols]
                    o = vtail[j * NR:j * NR + NR]
                    for c in range(ncols):
                        o[c] = src[c]
                    for c in range(ncols, NR):
                        o[c] = np.float32(0.0)
                microkernel_panel(ntiles, kc, app, 0, kc * MR, vtail, 0, acc, c0_, MR * dv, dv, 0, one, 0, 0, 0, 0.0,
                                  0.0, mlast, ncols)
    for r in range(nr):
        qi = (r0 + r) % sq
        h = g * grp + (r0 + r) // sq
        o0 = b * ys[0] + h * ys[1] + qi * ys[2]
        out = y[o0:o0 + dv]
        ar = acc[r * dv:r * dv + dv]
        for dd in range(dv):
            out[dd] = ar[dd]


@numba.njit(**NJIT)
def _decode_serial(ntasks, nch, q, qs, k, ks, v, vs, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad, causal,
                   past, left, right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, work, one):
    # every decode task in turn on work[:decode_slot_floats]
    for task in range(ntasks):
        _decode_task(task, nch, q, qs, k, ks, v, vs, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad, causal,
                     past, left, right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, work, one)


@numba.njit(**NJIT_PARALLEL)
def _decode_parallel(nslots, slot, ntasks, nch, q, qs, k, ks, v, vs, y, ys, mask, ms, has_mask, mlen, nonpad,
                     has_nonpad, causal, past, left, right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv,
                     work, one):
    # work: (nslots * slot,): slot sl runs a contiguous range of the tasks on its own slice
    for sl in prange(nslots):
        w = work[sl * slot:(sl + 1) * slot]
        for task in range(sl * ntasks // nslots, (sl + 1) * ntasks // nslots):
            _decode_task(task, nch, q, qs, k, ks, v, vs, y, ys, mask, ms, has_mask, mlen, nonpad, has_nonpad,
                         causal, past, left, right, scale, softcap, qk, qk_mode, nb, hq, hkv, sq, t, d, dv, w, one)


def decode_slot_floats(t: int, d: int, dv: int) -> int:
    return DECODE_ROWS * (d + t + dv) + _DECODE_PANELS * MR * t + t * NR


def use_decode(sq: int) -> bool:
    """Few query rows: the decode kernel (K / V read in place, no packing) instead of the GEMM tiles."""
    return sq < MR


_ONE = np.zeros(max(NR, MR), np.float32)
_EMPTY_I = np.zeros(0, np.int64)
_EMPTY_F = np.zeros(0, np.float32)


def attention_scratch_floats(nb: int, hkv: int, t: int, d: int, dv: int, slots: int, sq: int = QB) -> int:
    if use_decode(sq):
        return slots * decode_slot_floats(t, d, dv)
    kpf, vpf = packed_kv_floats(nb, hkv, t, d, dv)
    return kpf + vpf + slots * slot_floats(t, d)


def attention_forward(q, qs, k, ks, v, vs, y, ys, nb, hq, hkv, sq, t, d, dv, *, scale, softcap=0.0,
                      causal=False, past=-1, left=-1, right=-1, mask=None, ms=(0, 0, 0, 0), mlen=0, nonpad=None,
                      qk=None, qk_mode=-1, work=None, threads=None):
    """The fused attention (see the module docstring) on flat float32 arrays.

    ``q``/``k``/``v``/``y``: flat float32, element strides ``qs``/``ks``/``vs``/``ys`` = (batch, head, seq) with
    the head dim contiguous; ``mask``: flat float32 additive mask with strides ``ms`` (batch, head, query, key;
    0 = broadcast) and ``mlen`` keys (keys past it are disallowed); ``nonpad``: int64 (nb,) or None; ``past``:
    the causal / window offset when there is a past (-1: none, the offset then comes from ``nonpad`` or is 0);
    ``qk``: flat float32 (nb, hq, sq, t) written as ``qk_mode`` says (0/1: scaled (softcapped) scores, 2: plus
    the bias, 3: the probabilities); ``work``: float32 of at least :func:`attention_scratch_floats`."""
    if threads is None:
        threads = num_threads()
    work_units = nb * hq * sq * t * (d + dv)
    has_mask = mask is not None
    has_nonpad = nonpad is not None
    tail = (mask if has_mask else _EMPTY_F, np.asarray(ms, np.int64), has_mask, int(mlen if has_mask else t),
            nonpad if has_nonpad else _EMPTY_I, has_nonpad, bool(causal), int(past), int(left), int(right),
            np.float32(scale), np.float32(softcap), qk if qk is not None else _EMPTY_F,
            int(qk_mode if qk is not None else -1), nb, hq, hkv, sq, t, d, dv)
    if use_decode(sq):
        nch = -(-(hq // hkv) * sq // DECODE_ROWS)
        ntasks = nb * hkv * nch
        parallel = threads > 1 and work_units >= _config.PARALLEL_MIN_WORK and ntasks > 1
        nslots = min(threads, ntasks) if parallel else 1
        slot = decode_slot_floats(t, d, dv)
        if work is None or work.size < nslots * slot:
            work = np.empty(nslots * slot, np.float32)
        args = (ntasks, nch, q, np.asarray(qs, np.int64), k, np.asarray(ks, np.int64), v, np.asarray(vs, np.int64), y,
                np.asarray(ys, np.int64)) + tail
        if parallel:
            _decode_parallel(nslots, slot, *args, work, _ONE)
        else:
            _decode_serial(*args, work, _ONE)
        return
    nqb = -(-sq // QB)
    ntasks = nb * hq * nqb
    parallel = threads > 1 and work_units >= _config.PARALLEL_MIN_WORK and ntasks > 1
    nslots = min(threads, ntasks) if parallel else 1
    kpf, vpf = packed_kv_floats(nb, hkv, t, d, dv)
    slot = slot_floats(t, d)
    need = kpf + vpf + nslots * slot
    if work is None or work.size < need:
        work = np.empty(need, np.float32)
    kp = work[:kpf]
    vp = work[kpf:kpf + vpf]
    ws = work[kpf + vpf:kpf + vpf + nslots * slot]
    ks_a = np.asarray(ks, np.int64)
    vs_a = np.asarray(vs, np.int64)
    if parallel and nb * hkv > 1:
        _pack_kv_parallel(k, ks_a, v, vs_a, nb, hkv, t, d, dv, kp, vp)
    else:
        _pack_kv_serial(k, ks_a, v, vs_a, nb, hkv, t, d, dv, kp, vp)
    args = (ntasks, nqb, q, np.asarray(qs, np.int64), kp, vp, y, np.asarray(ys, np.int64)) + tail
    if parallel:
        _attn_parallel(nslots, slot, *args, ws, _ONE)
    else:
        _attn_serial(*args, ws, _ONE)


# ----------------------------------------------------------------------------------------------------------
# LinearAttention
# ----------------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT)
def _linear_head(q, k, v, state, decay, beta, out, b, g, hq, hkv, t, dk, dv, mode, dec_per_key, beta_heads,
                 scale, sq_, sk_, sv_, so_, dec_s, beta_s, tmp):
    # One (batch b, kv head g): state (dk, dv) float32 in place; q/k/v/out/decay/beta flat (B, T, H*D) packed;
    # mode: 0 linear, 1 gated, 2 delta, 3 gated_delta; tmp: (dv,) float32
    grp = hq // hkv
    for i in range(t):
        kb = (b * t + i) * sk_ + g * dk
        vb = (b * t + i) * sv_ + g * dv
        if mode == 1 or mode == 3:
            db = (b * t + i) * dec_s
            for a in range(dk):
                gv = decay[db + g * dk + a] if dec_per_key else decay[db + g]
                f = np.float32(math.exp(gv))
                for m in range(dv):
                    state[a, m] *= f
        if mode >= 2:
            bb = (b * t + i) * beta_s
            bt = beta[bb + g] if beta_heads else beta[bb]
            for m in range(dv):
                tmp[m] = np.float32(0.0)
            for a in range(dk):
                ka = k[kb + a]
                for m in range(dv):
                    tmp[m] += state[a, m] * ka
            for m in range(dv):
                tmp[m] = bt * (v[vb + m] - tmp[m])
        else:
            for m in range(dv):
                tmp[m] = v[vb + m]
        for a in range(dk):
            ka = k[kb + a]
            for m in range(dv):
                state[a, m] += ka * tmp[m]
        for hh in range(g * grp, (g + 1) * grp):
            qb_ = (b * t + i) * sq_ + hh * dk
            ob = (b * t + i) * so_ + hh * dv
            for m in range(dv):
                tmp[m] = np.float32(0.0)
            for a in range(dk):
                qa = q[qb_ + a]
                for m in range(dv):
                    tmp[m] += qa * state[a, m]
            for m in range(dv):
                out[ob + m] = scale * tmp[m]


@numba.njit(**NJIT_PARALLEL)
def linear_attention_kernel(q, k, v, state, decay, beta, out, nb, hq, hkv, t, dk, dv, mode, dec_per_key, beta_heads,
                            scale):
    # state: (nb*hkv, dk, dv) float32 (past state in, present state out); parallel over (batch, kv head)
    sq_ = hq * dk
    sk_ = hkv * dk
    sv_ = hkv * dv
    so_ = hq * dv
    dec_s = hkv * dk if dec_per_key else hkv
    beta_s = hkv if beta_heads else 1
    for u in prange(nb * hkv):
        b = u // hkv
        g = u - b * hkv
        tmp = np.empty(dv, np.float32)
        _linear_head(q, k, v, state[u], decay, beta, out, b, g, hq, hkv, t, dk, dv, mode, dec_per_key, beta_heads,
                     scale, sq_, sk_, sv_, so_, dec_s, beta_s, tmp)


# ----------------------------------------------------------------------------------------------------------
# CausalConvWithState
# ----------------------------------------------------------------------------------------------------------
@numba.njit(**NJIT_PARALLEL)
def causal_conv_kernel(x, w, bias, past, y, present, silu):
    # x, y: (B, C, L); w: (C, K); bias: (C,) or empty; past: (B, C, K-1) (zeros when absent);
    # present: (B, C, K-1) = the last K-1 positions of concat(past, x); parallel over (batch, channel)
    nb, nc, n = x.shape
    kk = w.shape[1]
    for u in prange(nb * nc):
        b = u // nc
        c = u - b * nc
        bc = bias[c] if bias.size > 0 else np.float32(0.0)
        xr = x[b, c]
        pr = past[b, c]
        for i in range(n):
            acc = bc
            for j in range(kk):
                src = i + j - (kk - 1)  # index into x; negative: the past
                xv = xr[src] if src >= 0 else pr[kk - 1 + src]
                acc += w[c, j] * xv
            if silu:
                acc = acc / (np.float32(1.0) + np.float32(math.exp(-acc)))
            y[b, c, i] = acc
        for j in range(kk - 1):
            src = n + j - (kk - 1)
            present[b, c, j] = xr[src] if src >= 0 else pr[kk - 1 + src]
