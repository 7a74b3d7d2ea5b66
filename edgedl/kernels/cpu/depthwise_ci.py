"""Depthwise convolution on channel-interleaved blocks: the small-plane strategy of :class:`Conv2d`.

The row kernels of ``conv.py`` vectorize along an output row, so a plane of a few pixels per row (the
7x7, 4x4 planes at the end of a MobileNet) spends its time in per-plane overhead and masked tails. Here
``VW`` channels are processed together instead, one ``<VW x float>`` per pixel:

1. pack: the block's input planes are copied, interleaved, into a zero-padded buffer
   ``pin[hp][wp][VW]`` (the border vectors are zeroed once per call, the interior rewritten per block; a
   last block of fewer than VW channels zeroes the whole buffer first);
2. compute: :data:`~edgedl.kernels.cpu.vec.dw_ci_rows` sums the taps per output pixel into
   ``pout[oh][ow][VW]`` (bias first, then the taps in order, as the row kernels do, so both
   strategies give the same floats), then the activation runs over ``pout``; for max pooling
   (``is_max``, the padding holds -inf) :data:`~edgedl.kernels.cpu.vec.max_ci_rows` takes the maximum instead;
3. unpack: ``pout`` is written back to the block's NCHW output planes.

Weights and bias are interleaved once at construction (``wi[block][tap][VW]``, zero past C). Blocks
(images x channel blocks) are spread over the threads; each thread owns its buffers in the workspace.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..aligned import aligned_copy, aligned_zeros
from . import config as _config
from .act import ACT_NONE
from .act_vec import act_run
from .config import NJIT, NJIT_PARALLEL
from .vec import VW, dw_ci_rows, max_ci_rows, transpose_scatter, transpose_tiles

__all__ = ["DepthwiseInterleaved", "prefer_interleaved"]


def prefer_interleaved(oh: int, ow: int, sw: int = 1) -> bool:
    """Whether the channel-interleaved kernel beats the row kernels for an output plane of oh x ow with
    column stride sw: rows shorter than two vectors leave the row kernels mostly masked tails and
    per-row overhead, and a strided row kernel shuffles every load (measured 1.2-1.4x slower than the
    interleaved kernel on 56x56 and 112x112 planes with stride 2). With four output rows per call the row
    kernels won from 28 columns (128 channels at 28x28: 0.069 against 0.080 ms, 1 thread)."""
    return ow < 2 * VW or sw > 1


@numba.njit(inline="always", **NJIT)
def _pack_block(x, src0, plane_in, nv, dofs, pin):
    # x: flat NCHW input, the block's first plane at src0; pin: (hp*wp*VW + VW,) interleaved padded buffer;
    # dofs: (plane_in,) where input pixel j goes in pin (the junk vector at the end when no tap reads it)
    whole = 0
    if nv == VW:
        whole = plane_in // VW * VW
        transpose_scatter(plane_in, pin, dofs, 0, x, src0, plane_in)
    for cc in range(nv):
        s = x[src0 + cc * plane_in:src0 + (cc + 1) * plane_in]
        for j in range(whole, plane_in):
            pin[dofs[j] + cc] = s[j]


@numba.njit(inline="always", **NJIT)
def _unpack_block(pout, out, dst0, plane_out, nv):
    # pout: (plane_out*VW,) interleaved result; out: flat NCHW output, the block's first plane at dst0
    if nv == VW:
        whole = plane_out // VW * VW
        for q0 in range(0, whole, VW):
            transpose_tiles(VW, out, dst0 + q0, plane_out, pout, q0 * VW, VW)
        for cc in range(VW):
            o = out[dst0 + cc * plane_out:dst0 + (cc + 1) * plane_out]
            p = pout[cc:]
            for q in range(whole, plane_out):
                o[q] = p[q * VW]
        return
    for cc in range(nv):
        o = out[dst0 + cc * plane_out:dst0 + (cc + 1) * plane_out]
        p = pout[cc:]
        for q in range(plane_out):
            o[q] = p[q * VW]


@numba.njit(inline="always", **NJIT)
def _fill_border(pin, zofs, pad):
    # the padded buffer's vectors no input pixel lands in (its border): the only ones the packing leaves
    for k in range(zofs.shape[0]):
        z = pin[zofs[k]:zofs[k] + VW]
        for lane in range(VW):
            z[lane] = pad


@numba.njit(inline="always", **NJIT)
def _blocks(blo, bhi, x, wi, bi, taps, dofs, zofs, out, c, h, wd, sh, sw, wp, oh_n, ow_n, act, alpha, beta, pin,
            pout, is_max):
    nblk = (c + VW - 1) // VW
    ntaps = taps.size
    plane_in = h * wd
    plane_out = oh_n * ow_n
    pad = -np.inf if is_max else 0.0
    _fill_border(pin, zofs, pad)
    for blk in range(blo, bhi):
        n = blk // nblk
        cb = blk - n * nblk
        ch0 = cb * VW
        nv = min(VW, c - ch0)
        if nv < VW:  # a last, partial block: the packing writes nv lanes, the others read the padding value
            pin[:] = pad
        _pack_block(x, (n * c + ch0) * plane_in, plane_in, nv, dofs, pin)
        if is_max:
            max_ci_rows(oh_n, ow_n, pout, 0, pin, 0, sh * wp * VW, sw * VW, taps, ntaps, wi, 0, bi, 0)
        else:
            dw_ci_rows(oh_n, ow_n, pout, 0, pin, 0, sh * wp * VW, sw * VW, taps, ntaps, wi, cb * ntaps * VW, bi,
                       cb * VW)
        if act != ACT_NONE:
            act_run(pout, 0, plane_out * VW, act, alpha, beta)
        _unpack_block(pout, out, (n * c + ch0) * plane_out, plane_out, nv)


@numba.njit(**NJIT)
def _dwci_serial(work, psize, osize, x, wi, bi, taps, dofs, zofs, out, nb, c, h, wd, sh, sw, wp, oh_n, ow_n,
                 act, alpha, beta, is_max):
    # work: (>= psize + osize,) float32
    pin = work[:psize]
    pout = work[psize:psize + osize]
    _blocks(0, nb * ((c + VW - 1) // VW), x, wi, bi, taps, dofs, zofs, out, c, h, wd, sh, sw, wp, oh_n, ow_n, act,
            alpha, beta, pin, pout, is_max)


@numba.njit(**NJIT_PARALLEL)
def _dwci_parallel(nslots, work, psize, osize, x, wi, bi, taps, dofs, zofs, out, nb, c, h, wd, sh, sw, wp,
                   oh_n, ow_n, act, alpha, beta, is_max):
    # work: (nslots*(psize+osize),) float32: each slot owns one pair of buffers
    total = nb * ((c + VW - 1) // VW)
    for s in prange(nslots):
        base = s * (psize + osize)
        pin = work[base:base + psize]
        pout = work[base + psize:base + psize + osize]
        _blocks(s * total // nslots, (s + 1) * total // nslots, x, wi, bi, taps, dofs, zofs, out, c, h, wd, sh, sw,
                wp, oh_n, ow_n, act, alpha, beta, pin, pout, is_max)


class DepthwiseInterleaved:
    """Depthwise convolution (channel multiplier 1) of one weight and input shape, NCHW float32, or with
    ``is_max`` the 2-D max pooling of that window geometry (``weight`` and ``bias`` None: the maximum over the
    taps inside the input, the padding reading -inf).

    ``weight`` (C, 1, kH, kW), ``bias`` (C,) or None, geometry as :class:`~edgedl.kernels.cpu.conv.Conv2d`
    computes it (``hp``/``wp``: the padded extent the taps read). ``call_args(x, out, work, threads)``
    returns ``(kernel, *arguments)``; ``work`` is a float32 array of at least
    ``workspace_floats(threads)``."""

    def __init__(self, weight: np.ndarray | None, bias: np.ndarray | None, in_shape, out_shape, kh: int, kw: int,
                 sh: int, sw: int, dh: int, dw: int, pt: int, pl: int, hp: int, wp: int, act: int,
                 alpha: float, beta: float, is_max: bool = False):
        nb, c, h, wd = in_shape
        oh, ow = out_shape[2], out_shape[3]
        nblk = -(-c // VW)
        w = np.zeros((nblk * VW, kh * kw), dtype=np.float32)
        if weight is not None:
            w[:c] = np.asarray(weight, dtype=np.float32).reshape(c, kh * kw)
        # wi[block][tap][lane]
        self.wi = aligned_copy(w.reshape(nblk, VW, kh * kw).transpose(0, 2, 1))
        b = aligned_zeros(nblk * VW)
        if bias is not None:
            b[:c] = bias
        self.bi = b
        i, j = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
        self.taps = ((i * dh * wp + j * dw) * VW).reshape(-1).astype(np.int64)
        # where each input pixel lands in the padded buffer; pixels no tap reads (hp, wp can be smaller
        # than the padded input when the stride skips its last rows) go to a junk vector past the end
        y, xx = np.meshgrid(np.arange(h) + pt, np.arange(wd) + pl, indexing="ij")
        inside = (y >= 0) & (y < hp) & (xx >= 0) & (xx < wp)
        self.dofs = np.where(inside, (y * wp + xx) * VW, hp * wp * VW).reshape(-1).astype(np.int64)
        # the padded pixels no input pixel lands in: zeroed once per call (the interior is rewritten per block)
        self.zofs = np.setdiff1d(np.arange(hp * wp, dtype=np.int64) * VW, self.dofs).astype(np.int64)
        self.psize = hp * wp * VW + VW
        self.osize = oh * ow * VW
        self.blocks = nb * nblk
        self.work = nb * c * oh * ow * kh * kw
        self._args = (self.wi, self.bi, self.taps, self.dofs, self.zofs)
        self._geo = (nb, c, h, wd, sh, sw, wp, oh, ow, act, np.float32(alpha), np.float32(beta), bool(is_max))

    def _slots(self, threads: int) -> int:
        if threads > 1 and self.work >= _config.PARALLEL_MIN_WORK:
            return min(threads, self.blocks)
        return 1

    def workspace_floats(self, threads: int) -> int:
        return self._slots(threads) * (self.psize + self.osize)

    def call_args(self, x: np.ndarray, out: np.ndarray, work: np.ndarray, threads: int) -> tuple:
        slots = self._slots(threads)
        if slots > 1:
            return (_dwci_parallel, slots, work, self.psize, self.osize, x, *self._args, out, *self._geo)
        return (_dwci_serial, work, self.psize, self.osize, x, *self._args, out, *self._geo)
