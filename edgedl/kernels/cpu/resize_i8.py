"""8-bit bilinear resize with TFLite's all-integer arithmetic (RESIZE_BILINEAR on int8, reference kernel).

TFLite's reference resolver sends int8 (and int16) RESIZE_BILINEAR to ``reference_ops::ResizeBilinearInteger``;
the functions here give the same bits on NCHW tensors (TFLite's tensors are NHWC, but every channel is
resized on its own with the same arithmetic, so the layout does not change a single value).

The arithmetic, per axis of input size ``n_in`` and output size ``n_out``:

* a 10-bit fixed-point scale, a rounded integer quotient (no float anywhere):
  ``s = (1024 * n_in + n_out // 2) // n_out``, or, with align_corners and ``n_out > 1``,
  ``s = (1024 * (n_in - 1) + (n_out - 1) // 2) // (n_out - 1)``;
* output coordinate ``v`` maps to ``p = v * s`` (``p = v * s + s // 2 - 512`` with half_pixel_centers, which
  may be negative near the start), the low tap ``lo = max(p / 1024, 0)`` and the high tap
  ``hi = min((p + 1023) / 1024, n_in - 1)`` (C division: towards zero), and the fraction ``f = p - 1024 * lo``;
  the two taps weigh ``1024 - f`` and ``f``;
* an output value is the int64 sum of the four taps times their row weight times their column weight
  (2^20 for one), brought back by ``(acc + 2^19) / 2^20`` for ``acc > 0`` and ``(acc - 2^19) / 2^20``
  otherwise (C division: ties away from zero; TFLite's default build), or ``(acc + 2^19) >> 20`` (ties up)
  in a ``TFLITE_SINGLE_ROUNDING`` build (``single_rounding=True``).

TFLite looks at neither tensor's scale nor zero point: the codes are interpolated as they are, whatever the
output's quantization says (the importer has to check that the two are equal if it wants the real values to
mean the same). Its uint8 reference kernel takes the *float* path (``reference_ops::ResizeBilinear``), so uint8
is accepted here with the integer arithmetic above but does not reproduce TFLite's uint8 results.

Out-of-range taps: the low tap is not clamped to ``n_in - 1`` in TFLite, and the rounded scale times a large
``n_out`` can overshoot the input (for example 1 -> 55, 2 -> 110 or 199 -> 650 without align_corners): TFLite
then reads past the row / image (a neighbour's pixel, or memory beyond the tensor). Here such a tap is clamped
to the last row / column (the result is the edge value, as both taps then land on it);
:func:`tflite_reads_out_of_bounds` tells when a geometry is affected.

The Numba kernel works on (N*C, H, W) -> (N*C, OH, OW) views; a work item is one output row of one plane.
Each input row is first interpolated along W into an int64 row (two taps, weights ``1024 - f``, ``f``), which
consecutive output rows reuse, then the two rows are blended with the row weights. Integer sums are exact, so
this factoring equals TFLite's four-product sum.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

from . import config as _config
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL, num_threads

_ONE = 1 << 10  # the 10-bit fixed-point one of the coordinates
_HALF20 = 1 << 19
_INT32_MAX = (1 << 31) - 1
_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))


# --- geometry -----------------------------------------------------------------------------------------
def _scale_10(n_in: int, n_out: int, align_corners: bool) -> int:
    """TFLite's 10-bit scale of one axis (int32 arithmetic; every operand is non-negative, so Python's floor
    division is C's)."""
    if align_corners and n_out > 1:
        return (_ONE * (n_in - 1) + (n_out - 1) // 2) // (n_out - 1)
    return (_ONE * n_in + n_out // 2) // n_out


def _check_axis(n_in: int, n_out: int, align_corners: bool) -> None:
    if n_in < 1 or n_out < 1:
        raise ValueError(f"resize sizes must be positive, got input {n_in} -> output {n_out}")
    # TFLite computes in int32: refuse sizes where its intermediate values would wrap
    s = _scale_10(n_in, n_out, align_corners)
    if _ONE * n_in + n_out > _INT32_MAX or (n_out - 1) * s + s // 2 + _ONE > _INT32_MAX:
        raise ValueError(f"resize sizes {n_in} -> {n_out} overflow TFLite's int32 coordinate arithmetic")


def _tdiv(a: np.ndarray, b: int) -> np.ndarray:
    """C integer division (towards zero) of an int64 array by a positive int."""
    q = np.abs(a) // b
    return np.where(a < 0, -q, q)


@lru_cache(maxsize=256)
def _axis_tables(n_in: int, n_out: int, align_corners: bool, half_pixel_centers: bool):
    _check_axis(n_in, n_out, align_corners)
    s = _scale_10(n_in, n_out, align_corners)
    v = np.arange(n_out, dtype=np.int64)
    p = v * s + (s // 2 - _ONE // 2) if half_pixel_centers else v * s
    lo = np.maximum(_tdiv(p, _ONE), 0)
    hi = np.minimum(_tdiv(p + (_ONE - 1), _ONE), n_in - 1)
    f = p - _ONE * lo  # TFLite's fraction, from the unclamped low tap
    oob = bool((lo > n_in - 1).any())
    lo = np.minimum(lo, n_in - 1)  # the overshooting tap is then the last one (hi already is): the edge value
    w0 = _ONE - f
    tables = (lo.astype(np.int64), hi.astype(np.int64), w0.astype(np.int64), f.astype(np.int64))
    for t in tables:
        t.flags.writeable = False
    return tables, oob


def resize_bilinear_int8_tables(n_in: int, n_out: int, align_corners: bool, half_pixel_centers: bool):
    """One axis's integer interpolation tables ``(lo, hi, w_lo, w_hi)``, int64 arrays of ``n_out`` (read-only,
    cached): output coordinate v blends input coordinates ``lo[v]`` and ``hi[v]`` (both within
    ``[0, n_in - 1]``) with weights ``w_lo[v] + w_hi[v] == 1024``, TFLite's ComputeInterpolationValuesInteger."""
    if align_corners and half_pixel_centers:
        raise ValueError("align_corners and half_pixel_centers cannot both be set (TFLite refuses it)")
    return _axis_tables(int(n_in), int(n_out), bool(align_corners), bool(half_pixel_centers))[0]


def tflite_reads_out_of_bounds(in_h: int, in_w: int, out_h: int, out_w: int, align_corners: bool,
                               half_pixel_centers: bool) -> bool:
    """True when TFLite's ResizeBilinearInteger reads a tap past the input for this geometry (its low tap is
    not clamped): its output there is undefined, and this module's (the edge value) can differ from it."""
    if align_corners and half_pixel_centers:
        raise ValueError("align_corners and half_pixel_centers cannot both be set (TFLite refuses it)")
    return (_axis_tables(int(in_h), int(out_h), bool(align_corners), bool(half_pixel_centers))[1]
            or _axis_tables(int(in_w), int(out_w), bool(align_corners), bool(half_pixel_centers))[1])


# --- numpy reference ----------------------------------------------------------------------------------
def _reference_axis(n_in: int, n_out: int, align_corners: bool, half_pixel_centers: bool):
    # a literal, per-coordinate transcription with Python ints (independent of _axis_tables)
    s = _scale_10(n_in, n_out, align_corners)
    p_all, lo_all, hi_all = [], [], []
    for v in range(n_out):
        p = v * s + s // 2 - (1 << 9) if half_pixel_centers else v * s
        lo = max(int(p / _ONE) if p < 0 else p // _ONE, 0)  # C division towards zero
        hi = min((p + _ONE - 1) // _ONE if p + _ONE - 1 >= 0 else -((-(p + _ONE - 1)) // _ONE), n_in - 1)
        p_all.append(p)
        lo_all.append(lo)
        hi_all.append(hi)
    return np.array(p_all, np.int64), np.array(lo_all, np.int64), np.array(hi_all, np.int64)


def resize_bilinear_int8_reference(x: np.ndarray, out_h: int, out_w: int, align_corners: bool,
                                   half_pixel_centers: bool, *, single_rounding: bool = False) -> np.ndarray:
    """TFLite's ResizeBilinearInteger in numpy: x (N, C, H, W) int8 or uint8 -> (N, C, out_h, out_w), same
    dtype. Taps TFLite would read past the input are clamped to the edge (see :func:`tflite_reads_out_of_bounds`)."""
    x = np.asarray(x)
    if x.dtype not in _DTYPES:
        raise ValueError(f"resize_bilinear_int8_reference takes int8 or uint8, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear_int8_reference takes (N, C, H, W), got shape {x.shape}")
    if align_corners and half_pixel_centers:
        raise ValueError("align_corners and half_pixel_centers cannot both be set (TFLite refuses it)")
    n, c, h, w = x.shape
    out_h, out_w = int(out_h), int(out_w)
    _check_axis(h, out_h, align_corners)
    _check_axis(w, out_w, align_corners)
    py, y0, y1 = _reference_axis(h, out_h, align_corners, half_pixel_centers)
    px, x0, x1 = _reference_axis(w, out_w, align_corners, half_pixel_centers)
    fy = (py - _ONE * y0)[:, None]  # (OH, 1): TFLite's input_y - (1 << 10) * y0
    fx = (px - _ONE * x0)[None, :]  # (1, OW)
    y0c, x0c = np.minimum(y0, h - 1), np.minimum(x0, w - 1)  # the taps TFLite reads out of bounds: the edge
    xi = x.astype(np.int64)

    def tap(rows, cols):  # (N, C, OH, OW)
        return xi[:, :, rows[:, None], cols[None, :]]

    acc = (tap(y0c, x0c) * (_ONE - fy) * (_ONE - fx)
           + tap(y1, x0c) * fy * (_ONE - fx)
           + tap(y0c, x1) * (_ONE - fy) * fx
           + tap(y1, x1) * fy * fx)
    if single_rounding:
        res = (acc + _HALF20) >> 20
    else:
        num = acc + np.where(acc > 0, _HALF20, -_HALF20)
        res = _tdiv(num, 1 << 20)
    return np.ascontiguousarray(res.astype(x.dtype))


# --- Numba kernel -------------------------------------------------------------------------------------
@njit(**NJIT_EXACT)
def _wrow(xrow, dst, xlo, xhi, wx0, wx1, ow):
    # xrow: (W,) int8 / uint8 input row; dst: (OW,) int64, the row interpolated along W (weights sum to 1024)
    for j in range(ow):
        dst[j] = np.int64(xrow[xlo[j]]) * wx0[j] + np.int64(xrow[xhi[j]]) * wx1[j]


@njit(**NJIT_EXACT)
def _bilinear_i8_range(x, out, ylo, yhi, wy0, wy1, xlo, xhi, wx0, wx1, single, start, stop):
    # x: (N, C, H, W) int8 or uint8 viewed as (NC, H, W); out: (N, C, OH, OW) as (NC, OH, OW), same dtype
    # ylo, yhi, wy0, wy1: (OH,) int64 row taps and weights; xlo, xhi: (OW,) uint64 column taps; wx0, wx1: (OW,)
    # int64 column weights. Work item r = nc * OH + i: output row i of plane nc. ra caches the W-interpolated
    # source row (plane, row) ka, rb the row kb (keys are nc * H + row)
    h = x.shape[1]
    oh = out.shape[1]
    ow = out.shape[2]
    ra = np.empty(ow, np.int64)
    rb = np.empty(ow, np.int64)
    ka = -1
    kb = -1
    for r in range(start, stop):
        nc = r // oh
        i = r - nc * oh
        s0 = nc * h + ylo[i]
        s1 = nc * h + yhi[i]
        if ka != s0:
            if kb == s0:
                ra, rb = rb, ra
                ka, kb = kb, ka
            else:
                _wrow(x[nc, ylo[i]], ra, xlo, xhi, wx0, wx1, ow)
                ka = s0
        if kb != s1:
            _wrow(x[nc, yhi[i]], rb, xlo, xhi, wx0, wx1, ow)
            kb = s1
        a0 = wy0[i]
        a1 = wy1[i]
        orow = out[nc, i]
        if single:
            for j in range(ow):
                orow[j] = (a0 * ra[j] + a1 * rb[j] + 524288) >> 20
        else:
            for j in range(ow):
                acc = a0 * ra[j] + a1 * rb[j]
                if acc > 0:
                    orow[j] = (acc + 524288) >> 20
                else:
                    orow[j] = -((524288 - acc) >> 20)  # C's (acc - 2^19) / 2^20 for acc <= 0


@njit(**NJIT_EXACT_PARALLEL)
def _bilinear_i8_par(x, out, ylo, yhi, wy0, wy1, xlo, xhi, wx0, wx1, single, nwork, nchunks):
    # x: (NC, H, W), out: (NC, OH, OW); chunks of the NC * OH output rows run in parallel
    for c in prange(nchunks):
        _bilinear_i8_range(x, out, ylo, yhi, wy0, wy1, xlo, xhi, wx0, wx1, single,
                           c * nwork // nchunks, (c + 1) * nwork // nchunks)


@lru_cache(maxsize=256)
def _kernel_tables(h: int, w: int, oh: int, ow: int, align_corners: bool, half_pixel_centers: bool):
    ylo, yhi, wy0, wy1 = _axis_tables(h, oh, align_corners, half_pixel_centers)[0]
    xlo, xhi, wx0, wx1 = _axis_tables(w, ow, align_corners, half_pixel_centers)[0]
    # column taps only index row views: unsigned, so Numba emits no negative-index wraparound code
    return ylo, yhi, wy0, wy1, xlo.astype(np.uint64), xhi.astype(np.uint64), wx0, wx1


def resize_bilinear_int8(x: np.ndarray, out: np.ndarray, align_corners: bool, half_pixel_centers: bool, *,
                         single_rounding: bool = False) -> np.ndarray:
    """TFLite's ResizeBilinearInteger: x (N, C, H, W) int8 or uint8 into ``out`` (N, C, OH, OW), same dtype,
    C-contiguous; the output size is ``out``'s. Returns ``out``. ``single_rounding``: a TFLITE_SINGLE_ROUNDING
    build's rounding (ties up) instead of the default (ties away from zero)."""
    if not isinstance(x, np.ndarray) or not isinstance(out, np.ndarray):
        raise ValueError("resize_bilinear_int8 takes numpy arrays")
    if x.dtype not in _DTYPES:
        raise ValueError(f"resize_bilinear_int8 takes int8 or uint8, got {x.dtype}")
    if out.dtype != x.dtype:
        raise ValueError(f"output dtype {out.dtype} differs from the input's {x.dtype}")
    if x.ndim != 4 or out.ndim != 4:
        raise ValueError(f"resize_bilinear_int8 takes (N, C, H, W) tensors, got {x.shape} -> {out.shape}")
    if x.shape[:2] != out.shape[:2]:
        raise ValueError(f"batch and channels must match: {x.shape} -> {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("the output must be a writeable C-contiguous array")
    if align_corners and half_pixel_centers:
        raise ValueError("align_corners and half_pixel_centers cannot both be set (TFLite refuses it)")
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    tables = _kernel_tables(h, w, oh, ow, bool(align_corners), bool(half_pixel_centers))  # checks the sizes
    nc = n * c
    if nc == 0:
        return out
    x3 = np.ascontiguousarray(x).reshape(nc, h, w)
    o3 = out.reshape(nc, oh, ow)
    nwork = nc * oh
    single = bool(single_rounding)
    if out.size * 4 >= _config.PARALLEL_MIN_WORK and nwork > 1 and num_threads() > 1:
        _bilinear_i8_par(x3, o3, *tables, single, nwork, min(nwork, 8 * num_threads()))
    else:
        _bilinear_i8_range(x3, o3, *tables, single, 0, nwork)
    return out


__all__ = ["resize_bilinear_int8", "resize_bilinear_int8_reference", "resize_bilinear_int8_tables",
           "tflite_reads_out_of_bounds"]
