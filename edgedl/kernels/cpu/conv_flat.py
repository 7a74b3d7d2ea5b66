"""Convolution as a GEMM that reads the image in place: the "flat" strategy of :class:`~.conv.Conv2d`.

The implicit-im2col GEMM packs every ``KC x NR`` panel of B from the image before the microkernel reads it.
That packing is avoidable. Copy the image once into a zero-padded buffer (``Hp x Wp`` per channel, the pads
included) and let the output columns run over the *padded* width, ``p = oy*Wp + ox`` for ``ox < Wp``. For a
stride-1 convolution, row ``k = (ci, i, j)`` of B at columns ``p .. p+NR-1`` is then the contiguous run
``xpad[ci*Hp*Wp + i*dh*Wp + j*dw + p :][:NR]``, whatever the row boundaries, so every panel is read in place
through a row table (:data:`~.gemm.DIRECT_FLAT`). The columns ``ox >= OW`` of each row are computed and thrown
away when the result is copied out of the column buffer (the activations that the microkernel does not apply,
and a fused residual, are applied during that copy).

Stride s: the padded image is split into ``s x s`` phase planes of ``Hq x Wq`` = ``ceil(Hp/s) x ceil(Wp/s)``,
plane (a, b) holding the padded pixels ``[y*s + a, x*s + b]``. Tap (i, j) of output (oy, ox) is pixel
``[oy + i*dh // s, ox + j*dw // s]`` of plane ``(i*dh % s, j*dw % s)``: contiguous in ox again, with the
output columns running over ``Wq``.

Cost against packing: one copy of the input into the padded buffer and one of the output out of the column
buffer, plus ``(Wq - OW) / OW`` wasted columns (5 % at 40 wide, 20 % at 10): worth it from about 8 columns of
output width (measured, see :func:`prefer_flat`).

Buffers per image (float32): ``pad_floats`` for the phase planes (with a tail so the last panel's reads stay
inside) and ``col_floats`` = ``M x Np`` for the columns (``Np`` = ``OH*Wq`` rounded up to whole panels).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import config as _config
from .act_vec import act_run
from .config import NJIT, NJIT_PARALLEL
from .gemm import BIAS_NONE, BIAS_ROW, NR, GemmCall
from .vec import copy_floats, split_pairs

#: a flat convolution of fewer multiply-adds runs as the packed GEMM when it is split across threads: its
#: three parallel regions (pad, GEMM, copy out) cost more than the packing saves (2 cores: 16->32 channels
#: 3x3 stride 2 at 32x32 took 31 us flat against 24 us packed; 3->16 at 64x64 41 us against 34 us), while one
#: thread runs it 12-20 % faster flat
FLAT_PARALLEL_MIN_WORK = 1 << 22
#: ... and so does one with fewer input channels (a first layer: its K of 27 is too short to pay for the
#: pad and copy-out regions at 2 threads, 1.0-1.4x the packed GEMM's time, while 0.81-0.98x on one thread)
FLAT_PARALLEL_MIN_C = 8


def prefer_flat(in_shape, out_shape, kh: int, kw: int, sh: int, sw: int, group: int) -> bool:
    """True when a group-1 spatial convolution should read its padded (phase-split) image in place: stride 1
    or 2, output rows of at least 8 columns that are wide against the kernel: the ``ceil((kw - 1) / sw)``
    extra columns each row computes and throws away stay within a quarter of it (a 1-D audio layer of width
    9 at 13 output columns would waste a third of its work).

    Measured on Zen 4 (3x3 kernels, time against the packed GEMM's, ``benchmarks/bench_conv_flat.py``):
    stride 1 0.79-0.93x at 1 thread and 0.81-0.98x at 2; stride 2 0.75-1.01x at 1 thread, 0.58-1.06x at 2.
    Width-9 1-D layers of a keyword spotter: 0.67-0.84x from 25 output columns on, 1.39-1.45x at 13. First
    layers (1-4 input channels, K of 9-36): 0.81-0.98x at 1 thread but 1.0-1.4x at 2, so
    :class:`~.conv.Conv2d` runs those packed when split (see :data:`FLAT_PARALLEL_MIN_C`)."""
    ow = out_shape[3]
    wasted = -(-(kw - 1) // max(sw, 1))
    return group == 1 and kh * kw > 1 and ow >= 8 and 4 * wasted <= ow and sh <= 2 and sw <= 2


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT)
def _phase_plane(x, xoff, xpad, poff, h, w, pt, pl, sh, sw, a, b, hq, wq, zeros):
    """xpad[poff:] (hq x wq) = phase (a, b) of the zero-padded plane x[xoff:] (h x w, pads pt, pl):
    element [yq, xq] = x[yq*sh + a - pt, xq*sw + b - pl] (0 outside the plane). ``zeros``: at least wq
    zeros (the pads are written as masked vector copies of it: a loop storing zeros becomes a memset call,
    whose fixed cost dominated the short runs of a row's pads)."""
    # the columns xq whose source column lies inside the plane: [q0, q1)
    q0 = max(0, (pl - b + sw - 1) // sw)
    q1 = min(wq, (w - 1 + pl - b) // sw + 1)
    for yq in range(hq):
        row = poff + yq * wq
        y = yq * sh + a - pt
        if y < 0 or y >= h or q1 <= q0:
            copy_floats(xpad, row, zeros, 0, wq)
            continue
        copy_floats(xpad, row, zeros, 0, q0)
        src = xoff + y * w + q0 * sw + b - pl
        if sw == 1:
            copy_floats(xpad, row + q0, x, src, q1 - q0)
        else:  # (column stride 2 goes through _phase_pair)
            for t in range(q1 - q0):
                xpad[row + q0 + t] = x[src + t * sw]
        copy_floats(xpad, row + q1, zeros, 0, wq - q1)


@numba.njit(inline="always", **NJIT)
def _phase_pair(x, xoff, xpad, poff, h, w, pt, pl, sh, a, hq, wq, zeros):
    """Column stride 2: both column phases (a, 0) at ``xpad[poff:]`` and (a, 1) at ``xpad[poff + hq*wq:]`` in
    one pass over each input row (:func:`_phase_plane`'s elements). Input column x lands in phase
    (x + pl) % 2 at column (x + pl) // 2: the even columns in phase pl % 2 from column pl // 2, the odd ones
    in the other from (pl + 1) // 2. :data:`~.vec.split_pairs` loads VW pairs of neighbours as two vectors
    and stores their even and odd lanes to the two planes, where a copy per phase read every row twice and
    ended in a scalar tail."""
    plane = hq * wq
    n2 = w // 2
    n_even = w - n2
    e_off = poff + (pl % 2) * plane  # the even columns' plane
    o_off = poff + (1 - pl % 2) * plane
    e0 = pl // 2
    o0 = (pl + 1) // 2
    for yq in range(hq):
        y = yq * sh + a - pt
        er = e_off + yq * wq
        orow = o_off + yq * wq
        if y < 0 or y >= h:
            copy_floats(xpad, er, zeros, 0, wq)
            copy_floats(xpad, orow, zeros, 0, wq)
            continue
        copy_floats(xpad, er, zeros, 0, e0)
        copy_floats(xpad, orow, zeros, 0, o0)
        src = xoff + y * w
        split_pairs(n2, xpad, er + e0, xpad, orow + o0, x, src)
        if n_even > n2:
            xpad[er + e0 + n2] = x[src + w - 1]
        copy_floats(xpad, er + e0 + n_even, zeros, 0, wq - e0 - n_even)
        copy_floats(xpad, orow + o0 + n2, zeros, 0, wq - o0 - n2)


@numba.njit(inline="always", **NJIT)
def _pad_unit(x, xpad, u, c, h, w, pt, pl, sh, sw, hq, wq, img_floats, zeros):
    """Unit ``u`` of an image batch's padding: one phase plane, or with column stride 2 the pair of column
    phases of one row phase (``u`` over images x channels x row phases)."""
    units_img = c * sh if sw == 2 else c * sh * sw
    b = u // units_img
    pi = u - b * units_img
    if sw == 2:
        ci = pi // sh
        a = pi - ci * sh
        _phase_pair(x, (b * c + ci) * h * w, xpad, b * img_floats + (ci * sh + a) * 2 * hq * wq, h, w, pt, pl, sh,
                    a, hq, wq, zeros)
        return
    phases = sh * sw
    ci = pi // phases
    ph = pi - ci * phases
    _phase_plane(x, (b * c + ci) * h * w, xpad, b * img_floats + pi * hq * wq, h, w, pt, pl, sh, sw, ph // sw,
                 ph % sw, hq, wq, zeros)


def pad_units(c: int, sh: int, sw: int) -> int:
    """Padding units per image (see :func:`_pad_unit`)."""
    return c * sh if sw == 2 else c * sh * sw


@numba.njit(**NJIT)
def _pad_serial(x, xpad, nb, c, h, w, pt, pl, sh, sw, hq, wq, img_floats, zeros):
    # x: (nb, c, h, w) flat; xpad: nb images of img_floats = c*sh*sw phase planes of hq x wq, zero tail
    phases = sh * sw
    units = c * sh if sw == 2 else c * phases
    for u in range(nb * units):
        _pad_unit(x, xpad, u, c, h, w, pt, pl, sh, sw, hq, wq, img_floats, zeros)
    for b in range(nb):
        for q in range(b * img_floats + c * phases * hq * wq, (b + 1) * img_floats):
            xpad[q] = 0.0


@numba.njit(**NJIT_PARALLEL)
def _pad_parallel(nslots, x, xpad, nb, c, h, w, pt, pl, sh, sw, hq, wq, img_floats, zeros):
    phases = sh * sw
    units = nb * (c * sh if sw == 2 else c * phases)
    for s in prange(nslots):
        for u in range(s * units // nslots, (s + 1) * units // nslots):
            _pad_unit(x, xpad, u, c, h, w, pt, pl, sh, sw, hq, wq, img_floats, zeros)
    for b in range(nb):
        for q in range(b * img_floats + c * phases * hq * wq, (b + 1) * img_floats):
            xpad[q] = 0.0


@numba.njit(inline="always", **NJIT)
def _unflat_plane(col, coff, out, ooff, oh, ow, wp, accumulate, act, alpha, beta):
    """out[ooff:] (oh x ow) = act(col[coff:] rows of wp, first ow columns (+ out when accumulating))."""
    if accumulate:
        for y in range(oh):
            dst = out[ooff + y * ow:ooff + (y + 1) * ow]
            src = col[coff + y * wp:coff + y * wp + ow]
            for q in range(ow):
                dst[q] += src[q]
    else:
        for y in range(oh):
            copy_floats(out, ooff + y * ow, col, coff + y * wp, ow)
    act_run(out, ooff, ooff + oh * ow, act, alpha, beta)


@numba.njit(**NJIT)
def _unflat_serial(col, out, nb, m, oh, ow, wp, col_floats, accumulate, act, alpha, beta):
    # col: nb blocks of col_floats, rows of np_ columns = oh x wp; out: (nb, m, oh, ow) flat
    np_ = col_floats // m
    for b in range(nb):
        for r in range(m):
            _unflat_plane(col, b * col_floats + r * np_, out, (b * m + r) * oh * ow, oh, ow, wp, accumulate, act,
                          alpha, beta)


@numba.njit(**NJIT_PARALLEL)
def _unflat_parallel(nslots, col, out, nb, m, oh, ow, wp, col_floats, accumulate, act, alpha, beta):
    np_ = col_floats // m
    planes = nb * m
    for s in prange(nslots):
        for pi in range(s * planes // nslots, (s + 1) * planes // nslots):
            b = pi // m
            r = pi - b * m
            _unflat_plane(col, b * col_floats + r * np_, out, pi * oh * ow, oh, ow, wp, accumulate, act, alpha,
                          beta)


# ---------------------------------------------------------------------------------------------------
# prepared convolution
# ---------------------------------------------------------------------------------------------------
def flat_ktab(c: int, hq: int, wq: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int) -> np.ndarray:
    """Row table of B over the phase planes: for k = (ci*kh + i)*kw + j, the plane of phase
    (i*dh % sh, j*dw % sw) of channel ci, moved down i*dh // sh rows and right j*dw // sw columns:
    (plane*hq*wq + (i*dh // sh)*wq + j*dw // sw, 0, 0)."""
    ci, i, j = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
    plane = (ci * sh + (i * dh) % sh) * sw + (j * dw) % sw
    t = np.zeros((max(c * kh * kw, 1), 3), dtype=np.int64)
    t[:c * kh * kw, 0] = (plane * hq * wq + ((i * dh) // sh) * wq + (j * dw) // sw).reshape(-1)
    return t


class FlatConv:
    """The GEMM half of a group-1 convolution on its zero-padded, phase-split image read in place.

    ``FlatConv(ap, bias, in_shape, out_shape, kh, kw, sh, sw, dh, dw, pads, act, alpha, beta, accumulate,
    simple)``: ``ap`` the packed weights (M x C*kh*kw), ``bias`` (M,) or None, ``simple``: the microkernel
    applies ``act`` itself (otherwise it runs during the copy out). ``scratch_bytes`` covers both buffers;
    ``bind(x, out, scratch, threads)`` returns the prepared call."""

    def __init__(self, ap, bias, in_shape, out_shape, kh, kw, sh, sw, dh, dw, pads, act, alpha, beta,
                 accumulate, simple):
        n, c, h, w = in_shape
        _, m, oh, ow = out_shape
        pt, pl, pb, pr = pads
        hq, wq = -(-(h + pt + pb) // sh), -(-(w + pl + pr) // sw)
        k = c * kh * kw
        npanel = -(-(oh * wq) // NR) * NR
        ktab = flat_ktab(c, hq, wq, kh, kw, sh, sw, dh, dw)
        # the last panel reads up to its NR-th column past the deepest row offset
        self.pad_floats = round16(max(c * sh * sw * hq * wq, int(ktab[:, 0].max()) + npanel))
        self.col_floats = m * npanel
        self._dims = (n, c, h, w, pt, pl, sh, sw, hq, wq, m, oh, ow)
        self._zeros = np.zeros(wq, dtype=np.float32)
        self.accumulate = bool(accumulate)
        in_kernel = simple and not accumulate
        self._post = (np.int64(0 if in_kernel else act), np.float32(alpha), np.float32(beta))
        self._gemm = GemmCall(ap, m, npanel, k, npanel, geo=_FLAT_GEO, ktab=ktab, nbatch=n,
                              b_nstride=self.pad_floats, c_nstride=self.col_floats, bias=bias,
                              bias_mode=BIAS_ROW if bias is not None else BIAS_NONE,
                              act=act if in_kernel else 0, alpha=alpha, beta=beta, flat=True)
        self.work = n * m * npanel * max(k, 1)
        self._buffers = 4 * n * (self.pad_floats + self.col_floats)
        self.scratch_bytes = self._buffers + self._gemm.scratch_bytes()

    def set_bias(self, bias) -> None:
        self._gemm.set_bias(bias)

    def bind(self, xf: np.ndarray, of: np.ndarray, scratch, threads: int):
        """A no-argument callable: out = conv(x) (flat float32 arrays that stay the same between calls)."""
        if scratch is None or scratch.nbytes < self.scratch_bytes:
            scratch = np.empty(self.scratch_bytes, dtype=np.uint8)
        n, c, h, w, pt, pl, sh, sw, hq, wq, m, oh, ow = self._dims
        pad_bytes = 4 * n * self.pad_floats
        xpad = scratch[:pad_bytes].view(np.float32)
        col = scratch[pad_bytes:self._buffers].view(np.float32)
        gemm = self._gemm.bind(col, xpad, threads, scratch[self._buffers:])
        return staged_call([
            pass_call(_pad_parallel, _pad_serial, threads, n * pad_units(c, sh, sw), self.work,
                      (xf, xpad, n, c, h, w, pt, pl, sh, sw, hq, wq, self.pad_floats, self._zeros)),
            (gemm, ()),
            pass_call(_unflat_parallel, _unflat_serial, threads, n * m, self.work,
                      (col, of, n, m, oh, ow, wq, self.col_floats, self.accumulate, *self._post)),
        ])


def pass_call(parallel, serial, threads: int, items: int, work: int, args: tuple):
    """(kernel, args) of a data-movement pass over ``items`` planes of a convolution of ``work``
    multiply-adds: the parallel variant (its first argument the number of slots) when the GEMM itself runs
    parallel (at least PARALLEL_MIN_WORK), else the serial one. The pass runs split like the GEMM even when
    it is small: a serial copy leaves all of the padded image in one core's cache, and the other thread's
    share of the GEMM then reads it across cores (measured on 2 cores: a 16->32 channel 3x3 convolution at
    32x32 took 46 us after a serial pad, 31 us after a parallel one)."""
    slots = min(threads, items)
    if slots > 1 and work >= _config.PARALLEL_MIN_WORK:
        return parallel, (slots, *args)
    return serial, args


def staged_call(stages: list):
    """A no-argument callable running ``kernel(*args)`` for each (kernel, args) stage in turn."""
    stages = tuple(stages)

    def run():
        for kernel, args in stages:
            kernel(*args)

    return run


def round16(v: int) -> int:
    """``v`` rounded up to a multiple of 16 (64-byte-aligned float buffers)."""
    return -(-v // 16) * 16


#: the geometry argument of a flat GEMM (unused by DIRECT_FLAT, which reads only the row table)
_FLAT_GEO = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1], dtype=np.int64)
