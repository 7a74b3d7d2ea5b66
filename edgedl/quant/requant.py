"""Requantization of int32 accumulators to 8-bit outputs, in the three modes edgedl's int8 kernels offer.

Every int8 kernel that rescales an int32 accumulator (convolution, GEMM, pooling sums) calls
:func:`requantize` per output value with the parameters of :class:`Requant`:

* ``MODE_DOUBLE`` (0): TFLite's default, ``MultiplyByQuantizedMultiplier`` with double rounding
  (:mod:`.fixed_point`). Used by models edgedl quantizes itself: bit-exact with the numpy transcription of
  TFLite's reference kernels (:mod:`.reference`).
* ``MODE_SINGLE`` (1): TFLite's single-rounding build (TFLITE_SINGLE_ROUNDING).
* ``MODE_FLOAT`` (2): ONNX QLinear* semantics as onnxruntime computes them (MlasRequantizeOutput):
  ``float32(acc) * scale`` in float32, clamped to ``[lo - zp, hi - zp]``, rounded half to even, plus the
  zero point. Used for imported pre-quantized models (QOperator and QDQ), so edgedl agrees with onnxruntime.

The output is finally clamped to ``[lo, hi]``: the integer type's range narrowed by a fused Relu/Clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..kernels.cpu.config import NJIT_EXACT
from .fixed_point import (
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_single,
    quantize_multipliers,
)

MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT = 0, 1, 2
MODES = {"double": MODE_DOUBLE, "single": MODE_SINGLE, "float": MODE_FLOAT}


@numba.njit(inline="always", **NJIT_EXACT)
def requantize(acc, m0, shift, fscale, zp, lo, hi, mode):
    """One int32 accumulator (as int64) to the output integer (as int64) in ``mode`` (see module doc)."""
    if mode == MODE_FLOAT:
        f = np.float32(acc) * fscale
        flo = np.float32(lo - zp)
        fhi = np.float32(hi - zp)
        f = flo if f < flo else f
        f = fhi if f > fhi else f
        v = np.int64(np.rint(f)) + zp
    elif mode == MODE_SINGLE:
        v = multiply_by_quantized_multiplier_single(acc, m0, shift) + zp
    else:
        v = multiply_by_quantized_multiplier(acc, m0, shift) + zp
    v = lo if v < lo else v
    return hi if v > hi else v


@dataclass
class Requant:
    """Per-channel requantization parameters of one op, for every mode.

    ``multiplier`` holds the real multipliers (e.g. ``s_x * s_w[c] / s_y``); ``m0``/``shift`` (int64) are
    their TFLite fixed-point split, ``fscale`` (float32) the float32 product onnxruntime uses. ``lo``/``hi``
    bound the output (type range narrowed by a fused activation)."""

    m0: np.ndarray
    shift: np.ndarray
    fscale: np.ndarray
    zp: int
    lo: int
    hi: int
    mode: int

    @classmethod
    def for_scales(cls, x_scale, w_scale, y_scale, channels: int, zp: int, lo: int, hi: int,
                   mode: int) -> Requant:
        """Parameters for ``acc * x_scale * w_scale[c] / y_scale`` (w_scale scalar or per channel).

        The fixed-point multiplier is computed in float64 from the float32 scales (TFLite's
        ``(double)input_scale * filter_scale / output_scale``); the float scale in float32, left to right
        (onnxruntime's ``X_scale * W_scale[c] / Y_scale``)."""
        xs = np.float32(np.asarray(x_scale, np.float32).reshape(()))
        ys = np.float32(np.asarray(y_scale, np.float32).reshape(()))
        ws = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (channels,))
        real = np.float64(xs) * ws.astype(np.float64) / np.float64(ys)
        fscale = ((xs * ws).astype(np.float32) / ys).astype(np.float32)
        return cls.from_multipliers(real, fscale, zp, lo, hi, mode)

    @classmethod
    def from_multipliers(cls, real, fscale, zp: int, lo: int, hi: int, mode: int) -> Requant:
        real = np.asarray(real, np.float64).reshape(-1)
        if not np.all(np.isfinite(real)) or np.any(real < 0):
            raise ValueError(f"requantization multipliers must be finite and >= 0, got {real[:4]}...")
        m0, shift = quantize_multipliers(real)
        return cls(m0.astype(np.int64), shift.astype(np.int64),
                   np.broadcast_to(np.asarray(fscale, np.float32).reshape(-1), real.shape).copy(),
                   int(zp), int(lo), int(hi), int(mode))

    def channel(self, c0: int, c1: int) -> Requant:
        """The parameters of channels c0..c1 (a group of a grouped convolution)."""
        return Requant(self.m0[c0:c1].copy(), self.shift[c0:c1].copy(), self.fscale[c0:c1].copy(), self.zp,
                       self.lo, self.hi, self.mode)


def requantize_reference(acc, req: Requant, channel_axis: int = -1) -> np.ndarray:
    """numpy reference of :func:`requantize` over an int64 array of accumulators, channel along
    ``channel_axis`` (the fixed modes use :mod:`.reference`, written independently of the kernels)."""
    from . import reference

    acc = np.asarray(acc, np.int64)
    shape = [1] * acc.ndim
    if acc.ndim:
        shape[channel_axis] = -1
    m0 = req.m0.reshape(shape)
    shift = req.shift.reshape(shape)
    if req.mode == MODE_FLOAT:
        f = acc.astype(np.float32) * req.fscale.reshape(shape)
        f = np.clip(f, np.float32(req.lo - req.zp), np.float32(req.hi - req.zp))
        v = np.rint(f).astype(np.int64) + req.zp
    elif req.mode == MODE_SINGLE:
        v = reference.mbqm_single(acc, m0, shift) + req.zp
    else:
        v = reference.mbqm(acc, m0, shift) + req.zp
    return np.clip(v, req.lo, req.hi)


__all__ = ["MODE_DOUBLE", "MODE_SINGLE", "MODE_FLOAT", "MODES", "requantize", "Requant", "requantize_reference"]
