"""Signal kernels: the FFT behind DFT and STFT, and the DFT matrices of the GEMM path.

A transform runs on *lines*: line ``l`` of ``nlines`` reads ``n_take`` complex (or real) samples of the flat
input ``x`` at element offsets ``a_in * (l // nb) + b_in * (l % nb) + k * s_in`` (k < n_take; an element is
``c_in`` floats: 1 real, 2 real + imaginary) and writes ``n_out`` values at ``a_out * (l // nb) + b_out *
(l % nb) + k * s_out`` of the flat output (``c_out`` floats each). DFT along an axis of a (outer, n, inner, c)
tensor: ``nb = inner``, ``a = n * inner``, ``b = 1``, ``s = inner``; STFT frames: ``nb = frames``, ``a_in =
signal_length``, ``b_in = frame_step``, ``s_in = 1``. Samples past ``n_take`` are zeros (dft_length
padding); an optional window multiplies the samples.

The FFT (:func:`_fft`) is a mixed-radix Stockham autosort, decimation in frequency, in complex128 whatever
the input dtype (its error is that of numpy's pocketfft, ~1e-16 relative, so values the exact transform
makes zero stay tiny): for a stage of radix r over the current length L (stride s, m = L / r)::

    y[q + s (r p + u)] = W_L^(p u) * sum_k x[q + s (p + k m)] W_r^(k u)      (W_L = exp(-2 pi i / L))

radix 4, 2, 3 and 5 have their own butterflies, 7 and any other prime the generic O(r^2) one. The twiddles
come from one table ``tw[j] = W_N^j`` (conjugated for the inverse) computed in float64 with the quarter
points exact; a stage of length L reads it with stride N / L.

Modes (``mode``): FWD and INV, the complex transform of length n (real input: zero imaginary parts; the
inverse scaled by 1/n); RFWD, a real input of even length as a complex FFT of n/2 points
``z[k] = x[2k] + i x[2k+1]`` unpacked with ``X[k] = (Z[k] + Z*[h-k]) / 2 - i W_n^k (Z[k] - Z*[h-k]) / 2``
(bins past n/2 by conjugate symmetry); IRFFT, the inverse of a one-sided spectrum to a real signal of even
length n through the n/2-point inverse of ``Z[k] = (X[k] + X*[h-k]) + i W_n^-k (X[k] - X*[h-k])``;
IRFFT_ODD the same for odd n through the full Hermitian spectrum. The imaginary parts of the DC and Nyquist
bins of an IRFFT input are ignored (as numpy's irfft does).

Lengths whose FFT has a prime factor above 7 may instead run as a GEMM with a precomputed real DFT matrix
(:func:`dft_matrix`; the op layer decides), float32.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads

FWD, RFWD, INV, IRFFT, IRFFT_ODD = 0, 1, 2, 3, 4


# --- plans ----------------------------------------------------------------------------------------------------
def radices(n: int) -> np.ndarray:
    """The radix of every stage of an n-point FFT: 4s first, then 2, 3, 5 and the remaining primes."""
    out = []
    while n % 4 == 0:
        out.append(4)
        n //= 4
    for p in (2, 3, 5):
        while n % p == 0:
            out.append(p)
            n //= p
    p = 7
    while n > 1:
        if p * p > n:
            out.append(n)
            break
        while n % p == 0:
            out.append(p)
            n //= p
        p += 2
    return np.array(out, dtype=np.int64)


def largest_prime_factor(n: int) -> int:
    r = radices(n)
    return max([1] + [int(v) for v in r if v != 4] + ([2] if 4 in r else []))


def twiddles(n: int, inverse: bool) -> np.ndarray:
    """(n,) complex128 ``exp(-+2 pi i j / n)`` (``+`` for the inverse), exact at the quarter points."""
    j = np.arange(n, dtype=np.int64)
    ang = 2.0 * np.pi * j / max(n, 1)
    c, s = np.cos(ang), np.sin(ang)
    quarter = (4 * j) % max(n, 1) == 0
    k = ((4 * j) // max(n, 1)) % 4
    c[quarter] = np.array([1.0, 0.0, -1.0, 0.0])[k[quarter]]
    s[quarter] = np.array([0.0, 1.0, 0.0, -1.0])[k[quarter]]
    return c + 1j * s if inverse else c - 1j * s


class FFTPlan:
    """Everything a transform of length ``n`` in ``mode`` needs: the FFT length, its radices, the table."""

    def __init__(self, n: int, mode: int):
        self.n, self.mode = int(n), int(mode)
        half = mode in (RFWD, IRFFT)
        if half and n % 2:
            raise ValueError("RFWD and IRFFT need an even length")
        self.nfft = n // 2 if half else n
        self.tmul = 2 if half else 1
        self.rad = radices(self.nfft)
        self.tw = twiddles(max(n, 1), mode in (INV, IRFFT, IRFFT_ODD))
        self.maxr = int(self.rad.max()) if self.rad.size else 1
        self.scale = 1.0 / n if mode in (INV, IRFFT, IRFFT_ODD) else 1.0


# --- the FFT --------------------------------------------------------------------------------------------------
@numba.njit(**NJIT)
def _fft(src, dst, n, rad, tw, tmul, tmp, wp, fmat):
    # src, dst (>= n,) complex128; tw (n * tmul,) the table of W_(n * tmul); tmp, wp (max radix,) and
    # fmat (max radix, max radix) complex128 work space. Transforms src[:n] (destroying it); returns the
    # buffer holding the result.
    s = 1
    cur = n
    for si in range(rad.shape[0]):
        r = rad[si]
        m = cur // r
        step = (n // cur) * tmul
        if r == 4:
            wq = tw[(n // 4) * tmul]  # W_4: -i forward, +i inverse
            for p in range(m):
                w1 = tw[p * step]
                w2 = tw[2 * p * step]
                w3 = tw[3 * p * step]
                for q in range(s):
                    a0 = src[q + s * p]
                    a1 = src[q + s * (p + m)]
                    a2 = src[q + s * (p + 2 * m)]
                    a3 = src[q + s * (p + 3 * m)]
                    t0 = a0 + a2
                    t1 = a0 - a2
                    t2 = a1 + a3
                    t3 = (a1 - a3) * wq
                    o = q + s * 4 * p
                    dst[o] = t0 + t2
                    dst[o + s] = (t1 + t3) * w1
                    dst[o + 2 * s] = (t0 - t2) * w2
                    dst[o + 3 * s] = (t1 - t3) * w3
        elif r == 2:
            for p in range(m):
                w = tw[p * step]
                for q in range(s):
                    a = src[q + s * p]
                    b = src[q + s * (p + m)]
                    o = q + s * 2 * p
                    dst[o] = a + b
                    dst[o + s] = (a - b) * w
        elif r == 3:
            w3 = tw[(n // 3) * tmul]
            c, si = w3.real, 1j * w3.imag
            for p in range(m):
                w1 = tw[p * step]
                w2 = tw[2 * p * step]
                for q in range(s):
                    a0 = src[q + s * p]
                    a1 = src[q + s * (p + m)]
                    a2 = src[q + s * (p + 2 * m)]
                    t = a1 + a2
                    d = si * (a1 - a2)
                    b = a0 + c * t
                    o = q + s * 3 * p
                    dst[o] = a0 + t
                    dst[o + s] = (b + d) * w1
                    dst[o + 2 * s] = (b - d) * w2
        elif r == 5:
            wa = tw[(n // 5) * tmul]
            wb = tw[2 * (n // 5) * tmul]
            c1, c2 = wa.real, wb.real
            s1, s2 = wa.imag, wb.imag
            for p in range(m):
                w1 = tw[p * step]
                w2 = tw[2 * p * step]
                w3 = tw[3 * p * step]
                w4 = tw[4 * p * step]
                for q in range(s):
                    a0 = src[q + s * p]
                    a1 = src[q + s * (p + m)]
                    a2 = src[q + s * (p + 2 * m)]
                    a3 = src[q + s * (p + 3 * m)]
                    a4 = src[q + s * (p + 4 * m)]
                    t1 = a1 + a4
                    t2 = a2 + a3
                    t3 = a1 - a4
                    t4 = a2 - a3
                    b1 = a0 + c1 * t1 + c2 * t2
                    b2 = a0 + c2 * t1 + c1 * t2
                    e1 = 1j * (s1 * t3 + s2 * t4)
                    e2 = 1j * (s2 * t3 - s1 * t4)
                    o = q + s * 5 * p
                    dst[o] = a0 + t1 + t2
                    dst[o + s] = (b1 + e1) * w1
                    dst[o + 2 * s] = (b2 + e2) * w2
                    dst[o + 3 * s] = (b2 - e2) * w3
                    dst[o + 4 * s] = (b1 - e1) * w4
        else:
            rstep = (n // r) * tmul
            for u in range(r):  # the r-point DFT matrix of this stage
                for k in range(r):
                    fmat[u, k] = tw[((k * u) % r) * rstep]
            for p in range(m):
                for u in range(r):
                    wp[u] = tw[((p * u) % cur) * step]
                for q in range(s):
                    for k in range(r):
                        tmp[k] = src[q + s * (p + k * m)]
                    o = q + s * r * p
                    for u in range(r):
                        acc = tmp[0]
                        for k in range(1, r):
                            acc += tmp[k] * fmat[u, k]
                        dst[o + s * u] = acc * wp[u]
        src, dst = dst, src
        cur = m
        s *= r
    return src


@numba.njit(inline="always", **NJIT)
def _sample(x, e, c_in):
    # the complex value of input element e
    if c_in == 1:
        return complex(np.float64(x[e]), 0.0)
    return complex(np.float64(x[2 * e]), np.float64(x[2 * e + 1]))


@numba.njit(inline="always", **NJIT)
def _bin(x, base, k, s_in, c_in, n_take, nyq):
    # one-sided spectrum bin k of an IRFFT input: zero past n_take; DC and Nyquist (k == nyq) real
    if k >= n_take:
        return complex(0.0, 0.0)
    e = base + k * s_in
    re = np.float64(x[e * c_in])
    if c_in == 1 or k == 0 or k == nyq:
        return complex(re, 0.0)
    return complex(re, np.float64(x[e * c_in + 1]))


@numba.njit(**NJIT)
def _lines(x, y, l0, l1, nb, a_in, b_in, s_in, c_in, n_take, win, use_win, a_out, b_out, s_out, n_out, mode, n,
           rad, tw, tmul, maxr, scale):
    # x: flat input, y: flat output (float32 or float64); lines l0 <= l < l1, see the module docstring
    nfft = n // tmul
    buf = np.empty(max(n, 1), np.complex128)
    buf2 = np.empty(max(n, 1), np.complex128)
    tmp = np.empty(maxr, np.complex128)
    wp = np.empty(maxr, np.complex128)
    fmat = np.empty((maxr, maxr), np.complex128)
    h = n // 2
    for line in range(l0, l1):
        g = line // nb
        i = line - g * nb
        ib = a_in * g + b_in * i
        ob = a_out * g + b_out * i
        if mode == FWD or mode == INV:
            for k in range(n):
                if k < n_take:
                    v = _sample(x, ib + k * s_in, c_in)
                    if use_win:
                        v = v * np.float64(win[k])
                    buf[k] = v
                else:
                    buf[k] = 0.0
            res = _fft(buf, buf2, nfft, rad, tw, tmul, tmp, wp, fmat)
            for k in range(n_out):
                o = (ob + k * s_out) * 2
                v = res[k] * scale
                y[o] = v.real
                y[o + 1] = v.imag
        elif mode == RFWD:
            for k in range(h):
                re = 0.0
                im = 0.0
                if 2 * k < n_take:
                    re = np.float64(x[(ib + 2 * k * s_in) * c_in])
                    if use_win:
                        re *= np.float64(win[2 * k])
                if 2 * k + 1 < n_take:
                    im = np.float64(x[(ib + (2 * k + 1) * s_in) * c_in])
                    if use_win:
                        im *= np.float64(win[2 * k + 1])
                buf[k] = complex(re, im)
            res = _fft(buf, buf2, h, rad, tw, tmul, tmp, wp, fmat)
            for k in range(n_out):
                kk = k if k <= h else n - k
                a = res[kk % h]
                b = res[(h - kk) % h].conjugate()
                v = 0.5 * (a + b) - 0.5j * tw[kk] * (a - b)
                if k > h:
                    v = v.conjugate()
                o = (ob + k * s_out) * 2
                y[o] = v.real
                y[o + 1] = v.imag
        elif mode == IRFFT:
            for k in range(h):
                a = _bin(x, ib, k, s_in, c_in, n_take, h)
                b = _bin(x, ib, h - k, s_in, c_in, n_take, h).conjugate()
                buf[k] = (a + b) + 1j * tw[k] * (a - b)
            res = _fft(buf, buf2, h, rad, tw, tmul, tmp, wp, fmat)
            for m in range(h):
                v = res[m]
                y[ob + 2 * m * s_out] = v.real * scale
                y[ob + (2 * m + 1) * s_out] = v.imag * scale
        else:  # IRFFT_ODD
            half = (n - 1) // 2
            for k in range(n):
                if k <= half:
                    buf[k] = _bin(x, ib, k, s_in, c_in, n_take, -1)
                else:
                    buf[k] = _bin(x, ib, n - k, s_in, c_in, n_take, -1).conjugate()
            res = _fft(buf, buf2, nfft, rad, tw, tmul, tmp, wp, fmat)
            for m in range(n):
                y[ob + m * s_out] = res[m].real * scale


@numba.njit(**NJIT_PARALLEL)
def _lines_par(nchunks, nlines, x, y, nb, a_in, b_in, s_in, c_in, n_take, win, use_win, a_out, b_out, s_out, n_out,
               mode, n, rad, tw, tmul, maxr, scale):
    for c in prange(nchunks):
        _lines(x, y, c * nlines // nchunks, (c + 1) * nlines // nchunks, nb, a_in, b_in, s_in, c_in, n_take, win,
               use_win, a_out, b_out, s_out, n_out, mode, n, rad, tw, tmul, maxr, scale)


_NO_WINDOW = np.ones(1, np.float32)


def fft_lines(plan: FFTPlan, x: np.ndarray, y: np.ndarray, nlines: int, nb: int, a_in: int, b_in: int, s_in: int,
              c_in: int, n_take: int, a_out: int, b_out: int, s_out: int, n_out: int,
              window: np.ndarray | None = None) -> None:
    """Run ``plan`` over ``nlines`` lines of the flat arrays ``x`` -> ``y`` (see the module docstring)."""
    if nlines == 0:
        return
    win = _NO_WINDOW if window is None else window
    args = (max(nb, 1), a_in, b_in, s_in, c_in, n_take, win, window is not None, a_out, b_out, s_out, n_out,
            plan.mode, plan.n, plan.rad, plan.tw, plan.tmul, plan.maxr, plan.scale)
    work = nlines * max(plan.n, 1) * max(1, int(math.log2(max(plan.n, 2)))) * 4
    nt = num_threads()
    if work >= _config.PARALLEL_MIN_WORK and nlines > 1 and nt > 1:
        _lines_par(min(nlines, 4 * nt), nlines, x, y, *args)
    else:
        _lines(x, y, 0, nlines, *args)


# --- the GEMM path --------------------------------------------------------------------------------------------
def dft_matrix(n: int, mode: int, n_take: int, c_in: int, n_out: int, window: np.ndarray | None = None) -> np.ndarray:
    """The real (n_take * c_in, n_out * c_out) matrix M with ``y_line = x_line @ M`` for a line of ``n_take``
    interleaved input elements (``c_in`` floats each) and ``n_out`` output elements (``c_out`` = 1 for the
    IRFFT modes, else 2), ``mode`` as for the FFT; a window scales the rows. float64."""
    j = np.arange(n_take, dtype=np.int64)[:, None]
    k = np.arange(n_out, dtype=np.int64)[None, :]
    tw = twiddles(max(n, 1), False)
    if mode in (IRFFT, IRFFT_ODD):
        # x[m] = (1/n) sum_k c_k (Re X_k cos(2 pi k m / n) - Im X_k sin(2 pi k m / n)), c = 1 for DC / Nyquist
        ang = tw[(j * k) % n]  # rows: bins k (j here), columns: samples m (k here)
        cos, sin = ang.real, -ang.imag
        coef = np.where((j == 0) | ((n % 2 == 0) & (j == n // 2)), 1.0, 2.0) / n
        coef = np.where(j <= n // 2, coef, 0.0)
        mat = np.zeros((n_take, c_in, n_out))
        mat[:, 0, :] = coef * cos
        if c_in == 2:
            mat[:, 1, :] = np.where((j == 0) | ((n % 2 == 0) & (j == n // 2)), 0.0, -coef * sin)
    else:
        w = tw[(j * k) % n]
        if mode == INV:
            w = np.conj(w) / n
        cos, msin = w.real, w.imag  # forward: exp(-i t) = cos - i sin
        mat = np.zeros((n_take, c_in, n_out, 2))
        mat[:, 0, :, 0] = cos
        mat[:, 0, :, 1] = msin
        if c_in == 2:
            mat[:, 1, :, 0] = -msin
            mat[:, 1, :, 1] = cos
    if window is not None:
        mat *= np.asarray(window, np.float64).reshape((n_take,) + (1,) * (mat.ndim - 1))
    return mat.reshape(n_take * c_in, -1)
