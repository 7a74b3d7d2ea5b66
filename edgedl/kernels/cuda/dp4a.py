"""int8 GEMM and convolution on CUDA with ``__dp4a`` (four 8-bit products summed into an int32 in one
instruction, CC >= 6.1).

numba.cuda has no dp4a intrinsic: :func:`linked_dp4a` declares a CUDA C device function (compiled by NVRTC when a
kernel using it is linked, ``cuda.declare_device(..., link=[CUSource])``), and :func:`dp4a_portable` is the same
arithmetic in numba.cuda (byte extraction and four multiply-adds) for the simulator, which cannot link CUDA C, and
for GPUs or installs where linking fails (no NVRTC, CC < 6.1).

:class:`QGemmDp4a` computes y = requantize(sum_k (a - za)(b - zb) + bias) for every row of A [M, K] against a
constant B [N, K] (QLinearMatMul with a 2-D B, com.microsoft QGemm), bit-exact with the CPU int8 path:

* operands are read as signed bytes: a uint8 value ``u`` is stored as ``u - 128`` (``u ^ 0x80``) and its zero
  point lowered by 128, so ``a - za`` is unchanged and one signed dp4a serves int8 and uint8 alike;
* rows are packed four bytes to an int32 word (K padded with zeros to a multiple of 4): B once at build, A per run
  by a pack kernel that also sums each row;
* the dot products accumulate in int32 (exact: |a b| <= 2^14, so up to 2^17 products), and the zero points come
  in afterwards in int64: ``dot - zb * sum(a) - za * sum(b) + K za zb``;
* tiles: a block of 16x16 threads computes a 64x64 output tile, 4x4 outputs per thread held in registers, over
  shared-memory tiles of 64 rows x 16 words of A and of B (the register tiling measured at 36.7 TOPS on an H100
  in ``../shared/CUDA.md``, against 0.75 for one output per thread).

:class:`QConv2dDp4a` is QLinearConv on the same tiles as an implicit GEMM (the im2col words gathered on the fly).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, int32, int64

from .common import blocks, flat, im2col_index, unravel_nchw
from .quant import requantize, upload_requant

#: the CUDA C device function behind :func:`linked_dp4a` (Numba's device-function ABI)
SOURCE = r"""
extern "C" __device__ int edgedl_dp4a(int* ret, int a, int b, int c) {
    *ret = __dp4a(a, b, c);
    return 0;
}
"""
#: products per int32 accumulator before it could overflow (|a b| <= 128 * 128)
MAX_K = 1 << 17
TILE = 64       # outputs per block side
WORDS = 16      # K words per shared-memory step
THREADS = 16    # threads per block side (each computes 4 x 4 outputs)


@cuda.jit(device=True)
def dp4a_portable(a, b, c):
    """c + the dot product of the four signed bytes of a and of b (int32), in numba.cuda."""
    acc = c
    for s in range(4):
        x = (a >> (8 * s)) & 0xFF
        y = (b >> (8 * s)) & 0xFF
        if x >= 128:
            x -= 256
        if y >= 128:
            y -= 256
        acc += int32(x * y)
    return acc


_linked: list = []


def linked_dp4a():
    """The CUDA C ``__dp4a`` as a numba.cuda device function (None in the simulator or where it cannot be
    declared)."""
    if not _linked:
        from . import simulated

        fn = None
        if not simulated():
            try:
                fn = cuda.declare_device("edgedl_dp4a", "int32(int32, int32, int32)", link=[cuda.CUSource(SOURCE)])
            except Exception:  # noqa: BLE001 - an install without NVRTC: the portable path
                fn = None
        _linked.append(fn)
    return _linked[0]


def _kernels(dp4a, cache):
    """The tiled dp4a GEMM and implicit-GEMM convolution kernels calling ``dp4a`` (see the module docstring)."""

    @cuda.jit(device=True)
    def tile_dot(sa, sb, acc, av, bv, ty, tx):
        # acc[i, j] += the dp4a dot of word rows sa[ty * 4 + i] and sb[tx * 4 + j] over one shared-memory step
        for w in range(WORDS):
            for i in range(4):
                av[i] = sa[ty * 4 + i, w]
                bv[i] = sb[tx * 4 + i, w]
            for i in range(4):
                for j in range(4):
                    acc[i, j] = dp4a(av[i], bv[j], acc[i, j])

    @cuda.jit(cache=cache)
    def gemm(a4, b4, a_sum, b_sum, bias, y, m, n, k4, k, az, bz, has_bias, m0, shift, fscale, zp, lo, hi, mode):
        # a4: [M, K4] int32 words, b4: [N, K4]; a_sum [M], b_sum [N] int64 (signed-byte sums); y: [M, N] 8-bit
        sa = cuda.shared.array((TILE, WORDS + 1), int32)
        sb = cuda.shared.array((TILE, WORDS + 1), int32)
        acc = cuda.local.array((4, 4), int32)
        av = cuda.local.array(4, int32)
        bv = cuda.local.array(4, int32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS + tx
        row0 = cuda.blockIdx.y * TILE
        col0 = cuda.blockIdx.x * TILE
        for i in range(4):
            for j in range(4):
                acc[i, j] = 0
        for t0 in range(0, k4, WORDS):
            for q in range(TILE * WORDS // (THREADS * THREADS)):
                idx = tid + q * THREADS * THREADS
                r = idx // WORDS
                w = idx - r * WORDS
                inside = t0 + w < k4
                sa[r, w] = a4[(row0 + r) * k4 + t0 + w] if (row0 + r < m and inside) else 0
                sb[r, w] = b4[(col0 + r) * k4 + t0 + w] if (col0 + r < n and inside) else 0
            cuda.syncthreads()
            tile_dot(sa, sb, acc, av, bv, ty, tx)
            cuda.syncthreads()
        for i in range(4):
            row = row0 + ty * 4 + i
            if row >= m:
                continue
            for j in range(4):
                col = col0 + tx * 4 + j
                if col < n:
                    zb = bz[col]
                    total = int64(acc[i, j]) - zb * a_sum[row] - az * b_sum[col] + int64(k) * az * zb
                    if has_bias:
                        total += int64(bias[col])
                    y[row * n + col] = requantize(total, m0[col], shift[col], fscale[col], zp, lo, hi, mode)

    @cuda.jit(cache=cache)
    def conv(x, w4, w_sum, bias, y, n_img, c, h, wd, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups, k4,
             has_bias, flip, xz, m0, shift, fscale, zp, lo, hi, mode):
        # per group (blockIdx.z): y[o, pixel] = sum_k w[o, k] * im2col[k, pixel], 64 channels x 64 pixels a block;
        # w4: [CO, K4] words of signed weights (zero point 0), w_sum [CO]; im2col words gathered from x [N, C, H, W]
        # (flip: uint8, stored as signed bytes), padding read as the signed zero point xz
        sa = cuda.shared.array((TILE, WORDS + 1), int32)
        sb = cuda.shared.array((TILE, WORDS + 1), int32)
        acc = cuda.local.array((4, 4), int32)
        av = cuda.local.array(4, int32)
        bv = cuda.local.array(4, int32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS + tx
        g = cuda.blockIdx.z
        cpg = c // groups
        opg = co // groups
        taps = kh * kw
        k_len = cpg * taps
        pixels = n_img * oh * ow
        row0 = cuda.blockIdx.y * TILE
        col0 = cuda.blockIdx.x * TILE
        for i in range(4):
            for j in range(4):
                acc[i, j] = 0
        for t0 in range(0, k4, WORDS):
            for q in range(TILE * WORDS // (THREADS * THREADS)):
                idx = tid + q * THREADS * THREADS
                r = idx // WORDS
                wi = idx - r * WORDS
                inside = t0 + wi < k4
                sa[r, wi] = w4[(g * opg + row0 + r) * k4 + t0 + wi] if (row0 + r < opg and inside) else 0
                p = col0 + r
                word = int64(0)
                if p < pixels and inside:
                    nb, _, oy, ox = unravel_nchw(p, 1, oh, ow)
                    for s in range(4):
                        kk = (t0 + wi) * 4 + s
                        v = int64(xz)
                        at = im2col_index(kk, nb, oy, ox, g, cpg, c, h, wd, taps, kw, sh, sw, ph, pw, dh, dw) \
                            if kk < k_len else -1
                        if at >= 0:
                            v = int64(x[at])
                            if flip:
                                v -= 128
                        word |= (v & 0xFF) << (8 * s)
                    if word >= int64(1 << 31):
                        word -= int64(1 << 32)
                sb[r, wi] = word
            cuda.syncthreads()
            tile_dot(sa, sb, acc, av, bv, ty, tx)
            cuda.syncthreads()
        for i in range(4):
            orow = row0 + ty * 4 + i
            if orow >= opg:
                continue
            o = g * opg + orow
            for j in range(4):
                p = col0 + tx * 4 + j
                if p < pixels:
                    nb, _, oy, ox = unravel_nchw(p, 1, oh, ow)
                    total = int64(acc[i, j]) - int64(xz) * w_sum[o]
                    if has_bias:
                        total += int64(bias[o])
                    y[((nb * co + o) * oh + oy) * ow + ox] = requantize(total, m0[o], shift[o], fscale[o], zp, lo, hi,
                                                                        mode)

    return gemm, conv


_portable = _kernels(dp4a_portable, True)
_linked_kernels: list = []


@cuda.jit(cache=True)
def _pack_rows(a, a4, a_sum, m, k, k4, flip):
    # a: [M, K] 8-bit (flip: uint8, stored as signed bytes u ^ 0x80); a4: [M, K4] words; a_sum: [M] int64
    r = cuda.grid(1)
    if r >= m:
        return
    total = int64(0)
    for w in range(k4):
        word = int64(0)
        for s in range(4):
            t = w * 4 + s
            if t < k:
                v = int64(a[r * k + t])
                if flip:
                    v -= 128
                total += v
                word |= (v & 0xFF) << (8 * s)
        if word >= int64(1 << 31):  # the word's bits as a signed int32
            word -= int64(1 << 32)
        a4[r * k4 + w] = word
    a_sum[r] = total


def pack_rows_host(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 words [N, K4], int64 sums [N]) of a host 8-bit matrix B [N, K] as signed bytes (see the module
    docstring)."""
    n, k = b.shape
    signed = b.astype(np.int16) - (128 if b.dtype == np.uint8 else 0)
    k4 = -(-k // 4)
    padded = np.zeros((n, k4 * 4), np.int8)
    padded[:, :k] = signed.astype(np.int8)
    return np.ascontiguousarray(padded).view(np.int32).reshape(n, k4).copy(), signed.sum(axis=1, dtype=np.int64)


def kernels(linked: bool | None):
    """(gemm, conv) kernels: with the linked ``__dp4a`` (``linked=None``: where available; True: required), or
    the portable dp4a."""
    fn = linked_dp4a() if linked is not False else None
    if fn is None:
        if linked:
            raise RuntimeError("the linked __dp4a is not available here (simulator, or no NVRTC)")
        return _portable
    if not _linked_kernels:
        _linked_kernels.append(_kernels(fn, False))
    return _linked_kernels[0]


def launch(kernel, which: int, grid, stream, args):
    """Launch ``kernel`` (entry ``which`` of :func:`kernels`); if linking the CUDA C fails on this install, the
    portable kernel instead (the same bits) from then on. Returns the kernel that ran."""
    try:
        kernel[grid, (THREADS, THREADS), stream](*args)
        return kernel
    except Exception:  # noqa: BLE001 - no NVRTC / nvJitLink, or a GPU below CC 6.1
        if kernel is _portable[which]:
            raise
        _linked_kernels[:] = [_portable]
        _portable[which][grid, (THREADS, THREADS), stream](*args)
        return _portable[which]


class QGemmDp4a:
    """QGemmRows on dp4a: every row of A [M, K] (8-bit, zero point ``a_zp``) against the constant B [N, K]
    (per-column zero points), requantized by ``req`` (:class:`~edgedl.kernels.cuda.quant.QGemmRows`'s
    arguments). ``linked=False`` forces the portable dp4a (what the simulator runs)."""

    def __init__(self, m, n, k, a_dtype, a_zp, b_nk: np.ndarray, b_zp, req, linked: bool | None = None):
        self.m, self.n, self.k = int(m), int(n), int(k)
        self.k4 = -(-self.k // 4)
        if self.k > MAX_K:
            raise ValueError(f"K = {self.k} > {MAX_K}: the int32 accumulator could overflow")
        self.flip_a = np.dtype(a_dtype) == np.uint8
        self.az = int(a_zp) - (128 if self.flip_a else 0)
        b4, b_sum = pack_rows_host(np.asarray(b_nk))
        self.b4, self.b_sum = cuda.to_device(b4.reshape(-1)), cuda.to_device(b_sum)
        bz = np.broadcast_to(np.asarray(b_zp, np.int64), (self.n,)) - (128 if b_nk.dtype == np.uint8 else 0)
        self.bz = cuda.to_device(np.ascontiguousarray(bz, np.int64))
        upload_requant(self, req, self.n)
        self.a4 = cuda.device_array(max(self.m * self.k4, 1), np.int32)
        self.a_sum = cuda.device_array(max(self.m, 1), np.int64)
        self.kernel = kernels(linked)[0]
        self.grid = ((self.n + TILE - 1) // TILE, (self.m + TILE - 1) // TILE)

    @property
    def linked(self) -> bool:
        return self.kernel is not _portable[0]

    def __call__(self, a, bias, y, stream=0):
        if not (self.m and self.n):
            return
        _pack_rows[blocks(self.m), 128, stream](flat(a), self.a4, self.a_sum, self.m, self.k, self.k4, self.flip_a)
        args = (self.a4, self.b4, self.a_sum, self.b_sum, flat(bias) if bias is not None else self.m0, flat(y),
                self.m, self.n, self.k4, self.k, self.az, self.bz, bias is not None, self.m0, self.shift, self.fscale,
                self.zp, self.lo, self.hi, self.mode)
        self.kernel = launch(self.kernel, 0, self.grid, stream, args)


class QConv2dDp4a:
    """QLinearConv of fixed geometry (2-D; 1-D as height 1) as an implicit GEMM on dp4a: per group, 64 output
    channels x 64 output pixels a block, the im2col words gathered on the fly, the weights packed once. It needs
    weights whose zero point is 0 once stored as signed bytes (:meth:`applies`: int8 weights with zero point 0,
    uint8 with 128), so that only the input's zero point needs a correction (``- zx * sum(w)`` per channel)."""

    @staticmethod
    def applies(w_dtype, w_zp, reduction: int) -> bool:
        shift = 128 if np.dtype(w_dtype) == np.uint8 else 0
        return reduction <= MAX_K and bool(np.all(np.asarray(w_zp, np.int64) == shift))

    def __init__(self, x_shape, x_dtype, w: np.ndarray, y_shape, strides, pads, dilations, groups, x_zp, req,
                 linked: bool | None = None):
        self.n, self.c, self.h, self.w = (int(v) for v in x_shape)
        self.co, cpg, self.kh, self.kw = (int(v) for v in w.shape)
        self.oh, self.ow = int(y_shape[2]), int(y_shape[3])
        (self.sh, self.sw), (self.dh, self.dw) = (int(v) for v in strides), (int(v) for v in dilations)
        self.ph, self.pw = int(pads[0]), int(pads[1])
        self.groups = int(groups)
        self.flip = np.dtype(x_dtype) == np.uint8
        self.xz = int(x_zp) - (128 if self.flip else 0)
        w4, w_sum = pack_rows_host(np.asarray(w).reshape(self.co, -1))
        self.k4 = int(w4.shape[1])
        self.w4, self.w_sum = cuda.to_device(w4.reshape(-1)), cuda.to_device(w_sum)
        upload_requant(self, req, self.co)
        per_group = self.co // self.groups
        self.grid = ((self.n * self.oh * self.ow + TILE - 1) // TILE, (per_group + TILE - 1) // TILE, self.groups)
        self.kernel = kernels(linked)[1]

    @property
    def linked(self) -> bool:
        return self.kernel is not _portable[1]

    def __call__(self, x, bias, y, stream=0):
        if not (self.n * self.co * self.oh * self.ow):
            return
        args = (flat(x), self.w4, self.w_sum, flat(bias) if bias is not None else self.m0, flat(y), self.n, self.c,
                self.h, self.w, self.co, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw,
                self.dh, self.dw, self.groups, self.k4, bias is not None, self.flip, self.xz, self.m0, self.shift,
                self.fscale, self.zp, self.lo, self.hi, self.mode)
        self.kernel = launch(self.kernel, 1, self.grid, stream, args)
