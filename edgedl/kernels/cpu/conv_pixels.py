"""Convolution with output pixels as GEMM rows: the "pixels" strategy of :class:`~.conv.Conv2d`.

The other GEMM strategies compute ``Y (C_out x pixels) = W (C_out x K) @ im2col(X) (K x pixels)`` with the
vector registers along the pixels. Deep layers have few pixels and many channels (7x7 or 14x14 planes of 256
to 1024 channels, or a batch of small images): there the ``NR``-column panels waste much of each vector (49
pixels fill 4 panels of 16 at 77 %) while the channels, a multiple of 16, would fill them exactly. So this
strategy computes the transpose, ``Y^T (pixels x C_out) = im2col(X)^T (pixels x K) @ W^T (K x C_out)``:

* ``W^T`` is the constant B operand, packed once into ``NR``-column panels (bias per column = per channel);
* ``im2col(X)^T`` is packed per call straight into the ``MR``-row A panels, one gather per element through a
  per-pixel base offset and a per-tap offset (from a zero-padded copy of the image when the convolution
  pads), the pixels of every image of the batch one after another (the batch folds into the GEMM's rows);
* the ``pixels x C_out`` result is transposed into NCHW (adding a fused residual, applying the activations
  the microkernel does not).

Scratch (float32): the padded image (only with pads), the packed A (``packed_a_size(N*OH*OW, K)``) and the
transposed result (``N*OH*OW x C_out``), then the GEMM's workspace.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..aligned import aligned_zeros
from .act_vec import act_run
from .config import NJIT, NJIT_PARALLEL
from .conv_flat import _pad_parallel, _pad_serial, pass_call, round16, staged_call
from .gemm import BIAS_COL, BIAS_NONE, MR, GemmCall, pack_b, packed_a_size, packed_b_size

#: a spatial convolution with at least this many output channels takes this strategy ...
PIXELS_MIN_CHANNELS = 64
#: ... when its output plane has at most this many pixels per image (ResNet's and VGG's 7x7 stages) ...
PIXELS_MAX_PLANE = 64
#: ... or, strided (the phase split of the flat strategy costs more there), at most this many (14x14)
PIXELS_MAX_PLANE_STRIDED = 196


def prefer_pixels(in_shape, out_shape, kh: int, kw: int, sh: int, sw: int, group: int) -> bool:
    """True for a group-1 spatial convolution with a small output plane and many output channels.

    Measured on Zen 4 at 1 thread (``benchmarks/bench_conv_strategies.py``; time against the best other
    strategy): 3x3 512->512 at 7x7 0.93x, 256->256 at 7x7 0.95x, 256->512 stride 2 to 7x7 0.89x, 128->128
    stride 2 to 10x10 0.92x, 192->384 stride 2 to 13x13 0.93x; but 256->256 at 14x14 1.01x, 128->128 at 14x14
    1.10x, 64->128 stride 2 to 20x20 1.03x, and every 1x1 convolution 1.03-3x (its plain GEMM packs nothing).
    Like the flat strategy, not for fewer than 8 input channels (first layers, STFT-as-convolution) nor
    strides above 2."""
    _, m, oh, ow = out_shape
    if group != 1 or kh * kw == 1 or m < PIXELS_MIN_CHANNELS or in_shape[1] < 8 or max(sh, sw) > 2:
        return False
    return oh * ow <= (PIXELS_MAX_PLANE_STRIDED if max(sh, sw) > 1 else PIXELS_MAX_PLANE)


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------
@numba.njit(inline="always", **NJIT)
def _pack_tile(src, pix_off, koff, ap, t, k, npix):
    """A panel t (MR pixels x K taps, layout [k][MR]) of im2col^T: ap[t*K*MR + kk*MR + r] =
    src[pix_off[t*MR + r] + koff[kk]]; rows past the last pixel repeat pixel 0 (the microkernel never stores
    them)."""
    base = t * k * MR
    p0 = t * MR
    for kk in range(k):
        o = koff[kk]
        dst = base + kk * MR
        for r in range(MR):
            q = p0 + r
            q = q if q < npix else 0
            ap[dst + r] = src[pix_off[q] + o]


@numba.njit(**NJIT)
def _pack_serial(src, pix_off, koff, ap, k, npix):
    # src: flat image (or padded copy); pix_off: (npix,) int64 offset of each pixel's first tap; koff: (K,)
    for t in range((npix + MR - 1) // MR):
        _pack_tile(src, pix_off, koff, ap, t, k, npix)


@numba.njit(**NJIT_PARALLEL)
def _pack_parallel(nslots, src, pix_off, koff, ap, k, npix):
    ntiles = (npix + MR - 1) // MR
    for s in prange(nslots):
        for t in range(s * ntiles // nslots, (s + 1) * ntiles // nslots):
            _pack_tile(src, pix_off, koff, ap, t, k, npix)


@numba.njit(inline="always", **NJIT)
def _unpack_plane(ct, out, b, co, m, plane, accumulate, act, alpha, beta):
    """out[b, co] (plane pixels) = act(ct[b*plane + p, co] (+ out when accumulating)); ct rows of m."""
    dst = (b * m + co) * plane
    src = b * plane * m + co
    if accumulate:
        for p in range(plane):
            out[dst + p] += ct[src + p * m]
    else:
        for p in range(plane):
            out[dst + p] = ct[src + p * m]
    act_run(out, dst, dst + plane, act, alpha, beta)


@numba.njit(**NJIT)
def _unpack_serial(ct, out, nb, m, plane, accumulate, act, alpha, beta):
    # ct: (nb*plane, m) row-major; out: (nb, m, plane) flat
    for b in range(nb):
        for co in range(m):
            _unpack_plane(ct, out, b, co, m, plane, accumulate, act, alpha, beta)


@numba.njit(**NJIT_PARALLEL)
def _unpack_parallel(nslots, ct, out, nb, m, plane, accumulate, act, alpha, beta):
    planes = nb * m
    for s in prange(nslots):
        for pi in range(s * planes // nslots, (s + 1) * planes // nslots):
            b = pi // m
            _unpack_plane(ct, out, b, pi - b * m, m, plane, accumulate, act, alpha, beta)


# ---------------------------------------------------------------------------------------------------
# prepared convolution
# ---------------------------------------------------------------------------------------------------
class PixelConv:
    """A group-1 convolution as ``Y^T = im2col(X)^T @ W^T``, prepared for one input shape.

    ``PixelConv(weight, bias, in_shape, out_shape, strides, pads, dilations, act, alpha, beta, accumulate,
    simple)``: ``weight`` (M, C, kh, kw) float32, ``bias`` (M,) or None, ``simple``: the microkernel applies
    ``act`` itself. ``scratch_bytes``; ``bind(xf, of, scratch, threads)`` returns the prepared call;
    ``repack(weight, bias)`` loads new weights of the same shapes."""

    def __init__(self, weight, bias, in_shape, out_shape, strides, pads, dilations, act, alpha, beta, accumulate,
                 simple):
        n, c, h, w = in_shape
        _, m, oh, ow = out_shape
        _, _, kh, kw = weight.shape
        sh, sw = strides
        dh, dw = dilations
        pt, pl, pb, pr = pads
        self.k = k = c * kh * kw
        self.m = m
        self.padded = bool(pt or pl or pb or pr)
        hp, wp = (h + pt + pb, w + pl + pr) if self.padded else (h, w)
        img = round16(c * hp * wp)
        self.npix = npix = n * oh * ow
        # offsets into the (padded) image: pixel (b, oy, ox) -> its first tap; tap (ci, i, j) -> from there
        b_i, oy, ox = np.meshgrid(np.arange(n), np.arange(oh), np.arange(ow), indexing="ij")
        self.pix_off = np.ascontiguousarray((b_i * (img if self.padded else c * h * w) + oy * sh * wp
                                             + ox * sw).reshape(-1), dtype=np.int64)
        ci, i, j = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
        self.koff = np.ascontiguousarray((ci * hp * wp + i * dh * wp + j * dw).reshape(-1), dtype=np.int64)
        self.bp = aligned_zeros(packed_b_size(k, m))
        self.repack(weight)
        self.accumulate = bool(accumulate)
        in_kernel = simple and not accumulate
        self._post = (np.int64(0 if in_kernel else act), np.float32(alpha), np.float32(beta))
        self._gemm = GemmCall(np.zeros(1, np.float32), npix, m, k, m, bp=self.bp, bias=bias,
                              bias_mode=BIAS_COL if bias is not None else BIAS_NONE,
                              act=act if in_kernel else 0, alpha=alpha, beta=beta)
        self._dims = (n, c, h, w, pt, pl, hp, wp, img, oh * ow)
        self.pad_floats = n * img if self.padded else 0
        self.ap_floats = round16(packed_a_size(npix, k))
        self.ct_floats = round16(npix * m)
        self._buffers = 4 * (self.pad_floats + self.ap_floats + self.ct_floats)
        self.work = npix * m * k
        self.scratch_bytes = self._buffers + self._gemm.scratch_bytes()

    def repack(self, weight) -> None:
        """Pack a new weight of the prepared shape in place (bound calls see it)."""
        w2 = np.ascontiguousarray(weight, dtype=np.float32).reshape(weight.shape[0], -1)  # (M, K)
        pack_b(w2.T, self.bp)

    def set_bias(self, bias) -> None:
        self._gemm.set_bias(bias)

    def bind(self, xf: np.ndarray, of: np.ndarray, scratch, threads: int):
        """A no-argument callable: out = conv(x) (flat float32 arrays that stay the same between calls)."""
        if scratch is None or scratch.nbytes < self.scratch_bytes:
            scratch = np.empty(self.scratch_bytes, dtype=np.uint8)
        n, c, h, w, pt, pl, hp, wp, img, plane = self._dims
        floats = scratch[:self._buffers].view(np.float32)
        xpad = floats[:self.pad_floats]
        ap = floats[self.pad_floats:self.pad_floats + self.ap_floats]
        ct = floats[self.pad_floats + self.ap_floats:self.pad_floats + self.ap_floats + self.ct_floats]
        gemm = self._gemm.with_a(ap).bind(ct, np.zeros(0, np.float32), threads, scratch[self._buffers:])
        ntiles = -(-self.npix // MR)
        stages = []
        if self.padded:
            stages.append(pass_call(_pad_parallel, _pad_serial, threads, n * c, self.work,
                                    (xf, xpad, n, c, h, w, pt, pl, 1, 1, hp, wp, img, np.zeros(wp, np.float32))))
        stages.append(pass_call(_pack_parallel, _pack_serial, threads, ntiles, self.work,
                                (xpad if self.padded else xf, self.pix_off, self.koff, ap, self.k, self.npix)))
        stages.append((gemm, ()))
        stages.append(pass_call(_unpack_parallel, _unpack_serial, threads, n * self.m, self.work,
                                (ct, of, n, self.m, plane, self.accumulate, *self._post)))
        return staged_call(stages)
