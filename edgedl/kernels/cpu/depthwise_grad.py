"""Gradients of the depthwise 2-D convolution (NCHW float32, group = C, M = C * multiplier, any kernel, stride,
dilation and padding): dx and dW in one pass over each input channel.

Both gradients are correlations of dy with x or w. To make their inner loops long, contiguous and free of
bounds checks whatever the plane size (MobileNet planes are 3x3 to 48x48), each channel works on "phase
planes": the zero-padded input plane split by stride phase, several images stacked::

    XP[ry*sw + rx][(n*Hq + a)*Wq + b] = x[n, c, a*sh + ry - pt, b*sw + rx - pl]   (0 outside the input)

Tap (i, j) of output (oy, ox) reads padded pixel (oy*sh + i*dh, ox*sw + j*dw), i.e. phase
``((i*dh) % sh, (j*dw) % sw)`` at (oy + (i*dh)//sh, ox + (j*dw)//sw). The output gradient is laid out on
the same (Hq x Wq) grid, zero outside the OH x OW outputs and before the first image (a margin of
``off0`` floats)::

    DYP[off0 + (n*Hq + oy)*Wq + ox] = dy[n, m, oy, ox]

so, with o_t = (i*dh)//sh * Wq + (j*dw)//sw the flat offset of tap t in its phase plane:

* dW[m, t] = sum_q DYP[off0 + q] * XP[phase_t][q + o_t]: one contiguous dot product per tap and chunk of
  images (float32 vector partial sums; the chunks add up in a float64 accumulator per tap);
* dXP[phase][p] = sum over the taps t of that phase of w[m, t] * DYP[off0 + p - o_t]: contiguous
  multiply-adds; dx is then read back from dXP (the inverse of the XP layout).

The grid is wide and tall enough (Wq >= OW + max column offset, Hq >= OH + max row offset) that every read
of a valid output lands on its true pixel and every other read on a zero (a junk column, a zero row of the
grid or the margin), so there are no per-element checks. (Zeros of the grid do meet real values in these
products, so an infinite x or w can make a gradient entry NaN that an exact sum of the valid products would
leave finite; such an input makes the forward non-finite already.)

Work is split by input channel: a channel's dx planes and its ``multiplier`` rows of dW are written by one
thread only, with the same operations in the same order for any thread count (bitwise identical results).
Each thread owns its scratch (about 3 x CHUNK_FLOATS floats: one chunk of images of one channel).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .config import NJIT, NJIT_PARALLEL
from .vec import NR, copy_floats, copy_nr_s2

__all__ = ["DepthwiseGradGeometry", "depthwise_grads", "copy_s2"]

#: target floats of one chunk's phase planes (all phases): the chunk's XP, dXP and DYP stay in L2
CHUNK_FLOATS = 1 << 14
#: strided planes narrower than this are copied to and from the phase planes pixel by pixel (a loop per row
#: and phase costs more than the copy of a few floats; stride-1 rows are single vector copies)
NARROW_W = 8
#: floats per block of the tap loops: a block of DYP, XP and dXP (4 KiB each) stays in L1 across the taps
BLOCK = 1024

# geometry vector fields (int64)
_SH, _SW, _PT, _PL, _HQ, _WQ, _NB, _OFF0, _NTAP, _MULT, _NPH, _H, _W = range(13)


class DepthwiseGradGeometry:
    """The phase-plane layout of one depthwise convolution's backward (see the module docstring)."""

    def __init__(self, x_shape, w_shape, out_hw, strides, pads, dilations):
        """``pads``: (top, left) (the bottom and right ones only shape ``out_hw``)."""
        n, c, h, w = (int(v) for v in x_shape)
        m, one, kh, kw = (int(v) for v in w_shape)
        oh, ow = (int(v) for v in out_hw)
        sh, sw = (int(v) for v in strides)
        pt, pl = (int(v) for v in pads[:2])
        dh, dw = (int(v) for v in dilations)
        if one != 1 or m % c or min(sh, sw, dh, dw, kh, kw) < 1 or min(pt, pl) < 0:
            raise ValueError(f"not a depthwise convolution: x {x_shape}, w {w_shape}, strides {strides}, "
                             f"pads {pads}, dilations {dilations}")
        if oh < 1 or ow < 1:
            raise ValueError(f"empty output {out_hw}")
        iy = np.arange(kh) * dh // sh
        jx = np.arange(kw) * dw // sw
        iy_max, jx_max = int(iy.max()), int(jx.max())
        # rows: every output's taps (oy + iy <= OH-1 + iy_max) and every input row ((pt + h) / sh rows).
        # The dot products of a chunk's last image read up to jx_max floats into the next image's first
        # row: the slack row after the last slot, or a row _channel zeroes after a partial chunk
        hq = max(oh + iy_max, -(-(pt + h) // sh))
        wq = max(ow + jx_max, -(-(pl + w) // sw))
        plane = hq * wq
        nph = sh * sw
        nb = max(1, min(n, CHUNK_FLOATS // max(1, plane * nph)))
        off0 = iy_max * wq + jx_max
        ii, jj = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
        # per tap (row-major): phase plane, flat offset in it
        phase = (ii * dh % sh) * sw + (jj * dw % sw)
        self.taps = np.stack([phase, (ii * dh // sh) * wq + jj * dw // sw], axis=1).astype(np.int64)
        self.reached = np.zeros(sh * sw, np.bool_)
        self.reached[phase] = True
        # tap groups, one pass each: (phase, count 1, 2 or 4, first group of its phase, 4 taps (repeated))
        groups = []
        for ph in range(sh * sw):
            ts = [t for t in range(kh * kw) if phase[t] == ph]
            first = 1
            while ts:
                cnt = 4 if len(ts) >= 4 else (2 if len(ts) >= 2 else 1)
                grp, ts = ts[:cnt], ts[cnt:]
                groups.append([ph, cnt, first] + (grp * 4)[:4])
                first = 0
        self.groups = np.array(groups, dtype=np.int64).reshape(-1, 7)
        # per input pixel (y, x): its phase plane and flat position in the image's slot (narrow planes
        # are copied pixel by pixel through these instead of row by row)
        yy, xx = np.meshgrid(np.arange(h) + pt, np.arange(w) + pl, indexing="ij")
        self.pix = np.stack([((yy % sh) * sw + xx % sw).reshape(-1), ((yy // sh) * wq + xx // sw).reshape(-1)]) \
            .astype(np.int64)
        self.geo = np.array([sh, sw, pt, pl, hq, wq, nb, off0, kh * kw, m // c, nph, h, w], dtype=np.int64)
        self.x_shape = (n, c, h, w)
        self.w_shape = (m, 1, kh, kw)
        self.dy_shape = (n, m, oh, ow)
        self.sizes = (nph * (nb * plane + wq), off0 + nb * plane, nph * nb * plane)

    def scratch_floats(self) -> int:
        """float32 scratch of one thread: XP, DYP, dXP."""
        return sum(self.sizes)


@numba.njit(**NJIT)
def _fill_xp(x, c, n0, nbc, h, w, sh, sw, pt, pl, hq, wq, xp, tmp, pix):
    # XP[ry*sw + rx][(n*Hq + a)*Wq + b] = x[n0 + n, c, a*sh + ry - pt, b*sw + rx - pl]
    # x (N, C, H, W); xp (nph, >= nb*Hq*Wq) float32, padding never written (stays zero)
    if sw > 1 and w < NARROW_W:
        _fill_xp_pix(x, c, n0, nbc, h * w, hq * wq, pix, xp)
    elif sw == 1:
        _fill_xp_1(x, c, n0, nbc, h, w, sh, pt, pl, hq, wq, xp)
    elif sw == 2:
        _fill_xp_2(x, c, n0, nbc, h, w, sh, pt, pl, hq, wq, xp, tmp)
    else:
        _fill_xp_any(x, c, n0, nbc, h, w, sh, sw, pt, pl, hq, wq, xp)


@numba.njit(**NJIT)
def _fill_xp_pix(x, c, n0, nbc, hw, plane, pix, xp):
    # pixel by pixel: pix (2, H*W) = (phase, flat position in the slot) of every input pixel
    for n in range(nbc):
        src = x[n0 + n, c].reshape(hw)
        for k in range(hw):
            xp[pix[0, k], n * plane + pix[1, k]] = src[k]


@numba.njit(**NJIT)
def _read_dxp_pix(dxp, dx, c, n0, nbc, hw, plane, pix):
    for n in range(nbc):
        dst = dx[n0 + n, c].reshape(hw)
        for k in range(hw):
            dst[k] = dxp[pix[0, k], n * plane + pix[1, k]]


@numba.njit(**NJIT)
def _fill_xp_1(x, c, n0, nbc, h, w, sh, pt, pl, hq, wq, xp):
    # column stride 1: one copy per input row
    plane = hq * wq
    for n in range(nbc):
        xs = x[n0 + n, c]
        for y in range(h):
            a = (y + pt) // sh
            copy_floats(xp[y + pt - a * sh], n * plane + a * wq + pl, xs[y], 0, w)


@numba.njit(**NJIT)
def copy_s2(dst, doff, src, soff, n):
    """dst[doff + t] = src[soff + 2t] for t < n (1-D float32): vector copies of NR floats (LLVM turns the
    plain loop into gathers), the last ones scalar where a vector copy would read past src's end."""
    t = 0
    lim = src.shape[0] - 2 * NR  # copy_nr_s2 reads src[p:p + 2*NR]
    while t + NR <= n and soff + 2 * t <= lim:
        copy_nr_s2(dst, doff + t, src, soff + 2 * t)
        t += NR
    for u in range(t, n):
        dst[doff + u] = src[soff + 2 * u]


@numba.njit(**NJIT)
def _fill_xp_2(x, c, n0, nbc, h, w, sh, pt, pl, hq, wq, xp, tmp):
    # column stride 2: column 2t goes to phase pa at ba + t, column 2t + 1 to phase 1 - pa at bb + t.
    # An even width: the whole plane is split into even and odd columns (long vector copies) into tmp
    # (2, H*W/2), then copied row by row; an odd width: row by row
    plane = hq * wq
    pa = pl % 2
    ba = pl // 2
    bb = (pl + 1) // 2
    half = w // 2
    for n in range(nbc):
        xs = x[n0 + n, c]
        if 2 * half == w:
            src = xs.reshape(h * w)
            ev = tmp[0]
            od = tmp[1]
            copy_s2(ev, 0, src, 0, h * half)
            copy_s2(od, 0, src, 1, h * half)
            for y in range(h):
                a = (y + pt) // sh
                ry = y + pt - a * sh
                copy_floats(xp[ry * 2 + pa], n * plane + a * wq + ba, ev, y * half, half)
                copy_floats(xp[ry * 2 + 1 - pa], n * plane + a * wq + bb, od, y * half, half)
            continue
        src = xs.reshape(h * w)
        for y in range(h):
            a = (y + pt) // sh
            ry = y + pt - a * sh
            copy_s2(xp[ry * 2 + pa], n * plane + a * wq + ba, src, y * w, half + 1)
            copy_s2(xp[ry * 2 + 1 - pa], n * plane + a * wq + bb, src, y * w + 1, half)


@numba.njit(**NJIT)
def _fill_xp_any(x, c, n0, nbc, h, w, sh, sw, pt, pl, hq, wq, xp):
    plane = hq * wq
    for n in range(nbc):
        xs = x[n0 + n, c]
        for y in range(h):
            a = (y + pt) // sh
            ry = y + pt - a * sh
            for rx in range(sw):
                # columns x = x0 + t*sw land in phase rx at b = b0 + t
                x0 = (rx - pl) % sw
                b0 = (x0 + pl) // sw
                cnt = (w - x0 + sw - 1) // sw if x0 < w else 0
                dst = xp[ry * sw + rx, n * plane + a * wq + b0:]
                src = xs[y, x0:]
                for t in range(cnt):
                    dst[t] = src[t * sw]


@numba.njit(**NJIT)
def _fill_dyp(dy, m, n0, nbc, oh, ow, wq, hq, off0, dyp):
    # DYP[off0 + (n*Hq + oy)*Wq + ox] = dy[n0 + n, m, oy, ox]; the rest of dyp is never written (zero)
    plane = hq * wq
    for n in range(nbc):
        for oy in range(oh):
            copy_floats(dyp, off0 + n * plane + oy * wq, dy[n0 + n, m, oy], 0, ow)


@numba.njit(**NJIT)
def _dot1(a, b, o0, n):
    # sum a[q] * b[o0 + q], q < n: float32 vector partial sums (fast-math reassociation: a fixed order for
    # a given build, whatever the thread count)
    b0 = b[o0:]
    s0 = np.float32(0.0)
    for q in range(n):
        s0 += a[q] * b0[q]
    return s0


@numba.njit(**NJIT)
def _dot2(a, b, o0, o1, n):
    # two taps in one pass over a
    b0 = b[o0:]
    b1 = b[o1:]
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    for q in range(n):
        v = a[q]
        s0 += v * b0[q]
        s1 += v * b1[q]
    return s0, s1


@numba.njit(**NJIT)
def _dot4(a, b, o0, o1, o2, o3, n):
    # four taps in one pass over a
    b0 = b[o0:]
    b1 = b[o1:]
    b2 = b[o2:]
    b3 = b[o3:]
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for q in range(n):
        v = a[q]
        s0 += v * b0[q]
        s1 += v * b1[q]
        s2 += v * b2[q]
        s3 += v * b3[q]
    return s0, s1, s2, s3


@numba.njit(**NJIT)
def _axpy1(dst, src, w0, o0, n, first):
    # dst[p] (=|+=) w0 * src[o0 + p], p < n
    s0 = src[o0:]
    if first:
        for p in range(n):
            dst[p] = w0 * s0[p]
    else:
        for p in range(n):
            dst[p] += w0 * s0[p]


@numba.njit(**NJIT)
def _axpy2(dst, src, w0, w1, o0, o1, n, first):
    s0 = src[o0:]
    s1 = src[o1:]
    if first:
        for p in range(n):
            dst[p] = w0 * s0[p] + w1 * s1[p]
    else:
        for p in range(n):
            dst[p] += w0 * s0[p] + w1 * s1[p]


@numba.njit(**NJIT)
def _axpy4(dst, src, w0, w1, w2, w3, o0, o1, o2, o3, n, first):
    s0 = src[o0:]
    s1 = src[o1:]
    s2 = src[o2:]
    s3 = src[o3:]
    if first:
        for p in range(n):
            dst[p] = w0 * s0[p] + w1 * s1[p] + w2 * s2[p] + w3 * s3[p]
    else:
        for p in range(n):
            dst[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p] + w3 * s3[p]


@numba.njit(**NJIT)
def _read_dxp(dxp, dx, c, n0, nbc, h, w, sh, sw, pt, pl, hq, wq, tmp, pix):
    # dx[n0 + n, c, y, x] = dXP[phase of (y + pt, x + pl)][...]: the inverse of _fill_xp
    if sw > 1 and w < NARROW_W:
        _read_dxp_pix(dxp, dx, c, n0, nbc, h * w, hq * wq, pix)
    elif sw == 1:
        _read_dxp_1(dxp, dx, c, n0, nbc, h, w, sh, pt, pl, hq, wq)
    elif sw == 2:
        _read_dxp_2(dxp, dx, c, n0, nbc, h, w, sh, pt, pl, hq, wq, tmp)
    else:
        _read_dxp_any(dxp, dx, c, n0, nbc, h, w, sh, sw, pt, pl, hq, wq)


@numba.njit(**NJIT)
def _read_dxp_1(dxp, dx, c, n0, nbc, h, w, sh, pt, pl, hq, wq):
    plane = hq * wq
    for n in range(nbc):
        ds = dx[n0 + n, c]
        for y in range(h):
            a = (y + pt) // sh
            copy_floats(ds[y], 0, dxp[y + pt - a * sh], n * plane + a * wq + pl, w)


@numba.njit(**NJIT)
def _read_dxp_2(dxp, dx, c, n0, nbc, h, w, sh, pt, pl, hq, wq, tmp):
    # the inverse of _fill_xp_2 (whole plane: rows gathered into tmp, then one interleaved store)
    plane = hq * wq
    pa = pl % 2
    ba = pl // 2
    bb = (pl + 1) // 2
    half = w // 2
    for n in range(nbc):
        ds = dx[n0 + n, c]
        if 2 * half == w:
            ev = tmp[0]
            od = tmp[1]
            for y in range(h):
                a = (y + pt) // sh
                ry = y + pt - a * sh
                copy_floats(ev, y * half, dxp[ry * 2 + pa], n * plane + a * wq + ba, half)
                copy_floats(od, y * half, dxp[ry * 2 + 1 - pa], n * plane + a * wq + bb, half)
            dst = ds.reshape(h * w)
            for t in range(h * half):
                dst[2 * t] = ev[t]
                dst[2 * t + 1] = od[t]
            continue
        for y in range(h):
            a = (y + pt) // sh
            ry = y + pt - a * sh
            dst = ds[y]
            sa = dxp[ry * 2 + pa, n * plane + a * wq + ba:]
            sb = dxp[ry * 2 + 1 - pa, n * plane + a * wq + bb:]
            for t in range(half):
                dst[2 * t] = sa[t]
                dst[2 * t + 1] = sb[t]
            dst[w - 1] = sa[half]


@numba.njit(**NJIT)
def _read_dxp_any(dxp, dx, c, n0, nbc, h, w, sh, sw, pt, pl, hq, wq):
    plane = hq * wq
    for n in range(nbc):
        ds = dx[n0 + n, c]
        for y in range(h):
            a = (y + pt) // sh
            ry = y + pt - a * sh
            drow = ds[y]
            for rx in range(sw):
                x0 = (rx - pl) % sw
                b0 = (x0 + pl) // sw
                cnt = (w - x0 + sw - 1) // sw if x0 < w else 0
                src = dxp[ry * sw + rx, n * plane + a * wq + b0:]
                dst = drow[x0:]
                for t in range(cnt):
                    dst[t * sw] = src[t]


@numba.njit(**NJIT)
def _channel(c, x, dy, w, dx, dw, geo, taps, groups, pix, xp, dyp, dxp, tmp, acc, reached, need_dx, need_dw):
    """Input channel c: dx[:, c] (need_dx) and dw[c*mult:(c+1)*mult] (need_dw).

    x, dx (N, C, H, W); dy (N, M, OH, OW); w, dw (M, T) with T = kH*kW taps; geo, taps, groups, pix: see
    DepthwiseGradGeometry; scratch: xp (nph, >= nb*Hq*Wq + Wq), dyp (>= off0 + nb*Hq*Wq), dxp (nph,
    >= nb*Hq*Wq) float32, all zero where never written, tmp (2, H*W/2) (column stride 2); acc (mult, T)
    float64; reached (nph,): whether any tap reads the phase."""
    n_img = dy.shape[0]
    oh, ow = dy.shape[2], dy.shape[3]
    h, wd = geo[_H], geo[_W]
    sh, sw, pt, pl = geo[_SH], geo[_SW], geo[_PT], geo[_PL]
    hq, wq, nb, off0 = geo[_HQ], geo[_WQ], geo[_NB], geo[_OFF0]
    ntap, mult, nph = geo[_NTAP], geo[_MULT], geo[_NPH]
    plane = hq * wq
    for mm in range(mult):
        for t in range(ntap):
            acc[mm, t] = 0.0
    for n0 in range(0, n_img, nb):
        nbc = min(nb, n_img - n0)
        if need_dw:
            _fill_xp(x, c, n0, nbc, h, wd, sh, sw, pt, pl, hq, wq, xp, tmp, pix)
            if nbc < nb:  # (padding or pixels the next full chunk rewrites)
                xp[:, nbc * plane:nbc * plane + wq] = 0.0
        span = nbc * plane  # dXP entries of this chunk
        nq = (nbc - 1) * plane + oh * wq  # DYP entries that can hold an output of this chunk
        for mm in range(mult):
            m = c * mult + mm
            _fill_dyp(dy, m, n0, nbc, oh, ow, wq, hq, off0, dyp)
            # blocks of BLOCK floats, all taps per block: the block's DYP, XP and dXP stay in L1; the taps of
            # a phase in groups of up to 4 per pass
            if need_dw:
                for q0 in range(0, nq, BLOCK):
                    ln = min(BLOCK, nq - q0)
                    src = dyp[off0 + q0:]
                    for gi in range(groups.shape[0]):
                        xs = xp[groups[gi, 0]]
                        cnt = groups[gi, 1]
                        t0, t1, t2, t3 = groups[gi, 3], groups[gi, 4], groups[gi, 5], groups[gi, 6]
                        if cnt == 4:
                            s0, s1, s2, s3 = _dot4(src, xs, taps[t0, 1] + q0, taps[t1, 1] + q0, taps[t2, 1] + q0,
                                                   taps[t3, 1] + q0, ln)
                            acc[mm, t0] += np.float64(s0)
                            acc[mm, t1] += np.float64(s1)
                            acc[mm, t2] += np.float64(s2)
                            acc[mm, t3] += np.float64(s3)
                        elif cnt == 2:
                            s0, s1 = _dot2(src, xs, taps[t0, 1] + q0, taps[t1, 1] + q0, ln)
                            acc[mm, t0] += np.float64(s0)
                            acc[mm, t1] += np.float64(s1)
                        else:
                            acc[mm, t0] += np.float64(_dot1(src, xs, taps[t0, 1] + q0, ln))
            if need_dx:
                for p0 in range(0, span, BLOCK):
                    ln = min(BLOCK, span - p0)
                    for gi in range(groups.shape[0]):
                        dst = dxp[groups[gi, 0], p0:]
                        cnt = groups[gi, 1]
                        first = mm == 0 and groups[gi, 2] != 0
                        t0, t1, t2, t3 = groups[gi, 3], groups[gi, 4], groups[gi, 5], groups[gi, 6]
                        base = off0 + p0
                        if cnt == 4:
                            _axpy4(dst, dyp, w[m, t0], w[m, t1], w[m, t2], w[m, t3], base - taps[t0, 1],
                                   base - taps[t1, 1], base - taps[t2, 1], base - taps[t3, 1], ln, first)
                        elif cnt == 2:
                            _axpy2(dst, dyp, w[m, t0], w[m, t1], base - taps[t0, 1], base - taps[t1, 1], ln, first)
                        else:
                            _axpy1(dst, dyp, w[m, t0], base - taps[t0, 1], ln, first)
        if need_dx:
            for ph in range(nph):
                if not reached[ph]:  # a phase no tap reaches (stride > kernel extent): zero gradient
                    dxp[ph, :span] = 0.0
            _read_dxp(dxp, dx, c, n0, nbc, h, wd, sh, sw, pt, pl, hq, wq, tmp, pix)
    if need_dw:
        for mm in range(mult):
            for t in range(ntap):
                dw[c * mult + mm, t] = np.float32(acc[mm, t])


@numba.njit(**NJIT)
def _scratch(geo, s0, s1, s2):
    nph = geo[_NPH]
    xp = np.zeros((nph, s0 // nph), np.float32)
    dyp = np.zeros(s1, np.float32)
    dxp = np.zeros((nph, s2 // nph), np.float32)
    # column stride 2, even width: one plane's even and odd columns
    tmp = np.empty((2, (geo[_H] * geo[_W] // 2) if geo[_SW] == 2 else 1), np.float32)
    acc = np.zeros((geo[_MULT], geo[_NTAP]), np.float64)
    return xp, dyp, dxp, tmp, acc


@numba.njit(**NJIT)
def _grads_serial(x, dy, w, dx, dw, geo, taps, groups, pix, reached, s0, s1, s2, need_dx, need_dw):
    xp, dyp, dxp, tmp, acc = _scratch(geo, s0, s1, s2)
    for c in range(dx.shape[1]):
        _channel(c, x, dy, w, dx, dw, geo, taps, groups, pix, xp, dyp, dxp, tmp, acc, reached, need_dx, need_dw)


@numba.njit(**NJIT_PARALLEL)
def _grads_parallel(x, dy, w, dx, dw, geo, taps, groups, pix, reached, s0, s1, s2, need_dx, need_dw, nslots):
    # slot s takes channels [s*C/nslots, (s+1)*C/nslots) with its own scratch
    nc = dx.shape[1]
    for s in prange(nslots):
        xp, dyp, dxp, tmp, acc = _scratch(geo, s0, s1, s2)
        for c in range(s * nc // nslots, (s + 1) * nc // nslots):
            _channel(c, x, dy, w, dx, dw, geo, taps, groups, pix, xp, dyp, dxp, tmp, acc, reached, need_dx, need_dw)


def depthwise_grads(geom: DepthwiseGradGeometry, x: np.ndarray | None, dy: np.ndarray, w: np.ndarray | None,
                    need_dx: bool, need_dw: bool, threads: int = 1):
    """(dx (N, C, H, W) or None, dW (M, 1, kH, kW) or None) of the depthwise convolution ``geom``.

    ``x`` (needed for dW), ``dy`` and ``w`` (needed for dx): C-contiguous float32 of the geometry's shapes;
    ``threads``: the slots the channels are split over (1: the serial kernel)."""
    def check(a, shape, what):
        if a.shape != shape or a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(f"{what} must be a C-contiguous float32 {shape} array, got {a.dtype}{a.shape}")

    check(dy, geom.dy_shape, "dy")
    m, _, kh, kw = geom.w_shape
    dx = np.empty(geom.x_shape, np.float32) if need_dx else np.empty((1, geom.x_shape[1], 1, 1), np.float32)
    dw = np.empty((m, kh * kw), np.float32)
    if need_dw:
        check(x, geom.x_shape, "x")
    else:
        x = dx
    if need_dx:
        check(w, geom.w_shape, "w")
        w2 = w.reshape(m, kh * kw)
    else:
        w2 = dw
    if need_dx and not need_dw and dx.shape[0] == 0:
        return dx, None
    s0, s1, s2 = geom.sizes
    tables = (geom.geo, geom.taps, geom.groups, geom.pix, geom.reached)
    nslots = min(int(threads), geom.x_shape[1])
    if nslots > 1:
        _grads_parallel(x, dy, w2, dx, dw, *tables, s0, s1, s2, need_dx, need_dw, nslots)
    else:
        _grads_serial(x, dy, w2, dx, dw, *tables, s0, s1, s2, need_dx, need_dw)
    return (dx if need_dx else None), (dw.reshape(geom.w_shape) if need_dw else None)
