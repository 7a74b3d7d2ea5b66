"""8-bit lookup tables: any elementwise function of one int8/uint8 tensor is a 256-entry table.

A table holds, for each input *byte* b (0..255), the output *byte*; it is indexed with the uint8 view of the
input (an int8 value v sits at v & 0xFF, i.e. v + 256 for negatives) and stored in the output dtype, so
``out = table[x.view(np.uint8)]`` for any pair of 8-bit types.

* :func:`build_table`: ``saturate(round(fn(dequantize(b)) / y_scale) + y_zp)`` with dequantize(b) =
  float32(x_scale * float32(value(b) - x_zp)) (onnxruntime's QlinearBuildLookupTable). ``precision``
  "float64" evaluates fn and the division in float64 (edgedl's own models: the best rounding); "float32"
  does both in float32 as onnxruntime does (its lookup-table ops and MlasQuantizeLinear); "tflite" evaluates fn
  in float32 and multiplies by float32(1 / y_scale), as TFLite's ``LUTPopulate`` does. ``rounding`` "even"
  is ONNX QuantizeLinear (half to even), "away" TFLite (half away from zero).
* :func:`requant_table`: the same tensor at another scale / zero point (Concat inputs, any op whose output
  parameters differ from its input's). MODE_FLOAT = onnxruntime QLinearConcat (identity table in float32, half
  to even); MODE_DOUBLE / MODE_SINGLE = TFLite's QUANTIZE of a quantized tensor (reference_ops::Requantize:
  ``MultiplyByQuantizedMultiplier(v - x_zp, M0, shift) + y_zp`` with M = double(x_scale) / double(y_scale)).
  TFLite's int8 CONCATENATION itself requires equal parameters (the converter inserts that QUANTIZE); its
  float ConcatenationWithScaling is uint8-only and not used.
* :func:`activation_table`: tables of the ONNX activations (Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu,
  Elu, Relu, Clip, Softplus).
* :func:`apply_table`: the Numba lookup kernel (parallel over chunks for large tensors): whole vectors by
  table lookups in registers where the CPU has them (AVX-512 VBMI ``vpermi2b``, AArch64 NEON ``tbl``/``tbx``:
  :mod:`.vec_lut`), the rest (and every byte elsewhere) by a scalar loop; the ``kernel`` argument or
  ``EDGEDL_LUT_KERNEL=scalar`` forces the scalar loop.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ...quant.fixed_point import quantize_multiplier
from ...quant.reference import round_half_away
from ...quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE, requantize
from . import config as _config
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL
from .vec_lut import LUT_KERNEL, LUT_NAMES, LUT_NEON, LUT_VBMI, available_lut_kernels, lut_neon, lut_vbmi

__all__ = ["byte_values", "check_qparams", "build_table", "requant_table", "activation_fn", "activation_table",
           "apply_table", "bind_table", "lut_span", "ACTIVATIONS"]

_8BIT = (np.dtype(np.int8), np.dtype(np.uint8))
#: elements per parallel chunk of :func:`apply_table`
_CHUNK = 1 << 14


def _dtype8(dtype, what: str) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _8BIT:
        raise ValueError(f"{what} must be int8 or uint8, got {dt}")
    return dt


def byte_values(dtype) -> np.ndarray:
    """(256,) int64: the value of each byte 0..255 read as ``dtype`` (int8: 0..127, -128..-1)."""
    return np.arange(256, dtype=np.uint8).view(_dtype8(dtype, "dtype")).astype(np.int64)


def check_qparams(scale, zp, dtype, what: str) -> tuple[np.float32, int]:
    """A per-tensor (scale, zero point) as (float32, int): scale finite and > 0, zp inside ``dtype``."""
    s = np.asarray(scale, np.float32)
    z = np.asarray(zp)
    if s.size != 1 or z.size != 1:
        raise ValueError(f"{what}: per-tensor scale and zero point expected, got sizes {s.size} and {z.size}")
    s = np.float32(s.reshape(()))
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"{what}: scale must be finite and > 0, got {s}")
    info = np.iinfo(_dtype8(dtype, what))
    z = int(z.reshape(()))
    if not info.min <= z <= info.max:
        raise ValueError(f"{what}: zero point {z} outside {np.dtype(dtype)}")
    return s, z


def _round(q: np.ndarray, rounding: str) -> np.ndarray:
    if rounding == "even":
        return np.rint(q)
    if rounding == "away":  # std::round
        return round_half_away(q)
    raise ValueError(f"rounding must be 'even' or 'away', got {rounding!r}")


def build_table(fn, x_scale, x_zp, y_scale, y_zp, in_dtype, out_dtype, rounding: str = "even",
                precision: str = "float64") -> np.ndarray:
    """(256,) ``out_dtype`` table of ``fn`` (a numpy function of a float array, keeping its dtype), indexed
    by the input byte (see the module doc)."""
    xs, xz = check_qparams(x_scale, x_zp, in_dtype, "input")
    ys, yz = check_qparams(y_scale, y_zp, out_dtype, "output")
    xf = xs * (byte_values(in_dtype) - xz).astype(np.float32)  # (256,) float32, onnxruntime's dequantize
    with np.errstate(all="ignore"):
        if precision == "tflite":  # TFLite's LUTPopulate: fn in float32, times float32(1 / y_scale)
            q = np.asarray(fn(xf), np.float32) * (np.float32(1) / ys)
        elif precision == "float32":
            q = np.asarray(fn(xf), np.float32) / ys
        elif precision == "float64":
            q = np.asarray(fn(xf.astype(np.float64)), np.float64) / np.float64(ys)
        else:
            raise ValueError(f"precision must be 'float32', 'float64' or 'tflite', got {precision!r}")
    if np.isnan(q).any():
        raise ValueError("the table function gives NaN on the input's range")
    info = np.iinfo(np.dtype(out_dtype))
    return np.clip(_round(q, rounding) + yz, info.min, info.max).astype(out_dtype)


@numba.njit(**NJIT_EXACT)
def _requant_values(vals, m0, shift, zp, lo, hi, mode):
    # vals: (256,) int64 input values minus x_zp -> (256,) int64 output values (MBQM + zp, clamped)
    out = np.empty(vals.size, np.int64)
    for i in range(vals.size):
        out[i] = requantize(vals[i], m0, shift, np.float32(0), zp, lo, hi, mode)
    return out


def requant_table(x_scale, x_zp, y_scale, y_zp, in_dtype, out_dtype, mode: int) -> np.ndarray:
    """(256,) ``out_dtype`` table re-quantizing ``in_dtype`` values from (x_scale, x_zp) to (y_scale, y_zp):
    onnxruntime QLinearConcat semantics (MODE_FLOAT) or TFLite's Requantize (MODE_DOUBLE / MODE_SINGLE)."""
    if mode == MODE_FLOAT:
        return build_table(lambda v: v, x_scale, x_zp, y_scale, y_zp, in_dtype, out_dtype, "even", "float32")
    if mode not in (MODE_DOUBLE, MODE_SINGLE):
        raise ValueError(f"unknown requantization mode {mode}")
    xs, xz = check_qparams(x_scale, x_zp, in_dtype, "input")
    ys, yz = check_qparams(y_scale, y_zp, out_dtype, "output")
    m0, shift = quantize_multiplier(float(np.float64(xs) / np.float64(ys)))
    info = np.iinfo(np.dtype(out_dtype))
    vals = _requant_values(byte_values(in_dtype) - xz, m0, shift, yz, int(info.min), int(info.max), mode)
    return vals.astype(out_dtype)


# --- named activations (ONNX definitions); each keeps its argument's float dtype ---------------------
def activation_fn(name: str, alpha=None, beta=None):
    """numpy function of the ONNX activation ``name`` with its attributes (None: the ONNX default;
    Clip: alpha = min, beta = max)."""

    def relu(x):
        return np.maximum(x, x.dtype.type(0))

    def leaky_relu(x):
        return np.where(x >= 0, x, x * x.dtype.type(0.01 if alpha is None else alpha))

    def sigmoid(x):
        one = x.dtype.type(1)
        return one / (one + np.exp(-x))

    def tanh(x):
        return np.tanh(x)

    def hard_sigmoid(x):
        t = x.dtype.type
        return np.clip(x * t(0.2 if alpha is None else alpha) + t(0.5 if beta is None else beta), t(0), t(1))

    def hard_swish(x):
        t = x.dtype.type
        return x * np.clip(x * t(1.0 / 6.0) + t(0.5), t(0), t(1))

    def elu(x):
        return np.where(x > 0, x, x.dtype.type(1.0 if alpha is None else alpha) * np.expm1(x))

    def clip(x):
        t = x.dtype.type
        return np.clip(x, t(-np.inf if alpha is None else alpha), t(np.inf if beta is None else beta))

    def softplus(x):
        return np.logaddexp(x.dtype.type(0), x)

    fns = {"Relu": relu, "LeakyRelu": leaky_relu, "Sigmoid": sigmoid, "Tanh": tanh, "HardSigmoid": hard_sigmoid,
           "HardSwish": hard_swish, "Elu": elu, "Clip": clip, "Softplus": softplus}
    if name not in fns:
        raise ValueError(f"no table for activation {name!r} (have {sorted(fns)})")
    return fns[name]


ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Clip", "Softplus")


def activation_table(name: str, alpha, beta, x_scale, x_zp, y_scale, y_zp, in_dtype, out_dtype,
                     rounding: str = "even", precision: str = "float64") -> np.ndarray:
    """:func:`build_table` of the ONNX activation ``name`` (see :func:`activation_fn`)."""
    return build_table(activation_fn(name, alpha, beta), x_scale, x_zp, y_scale, y_zp, in_dtype, out_dtype,
                       rounding, precision)


# --- the lookup kernel -------------------------------------------------------------------------------
@numba.njit(**NJIT_EXACT)
def lut_span(x, table, out, lo, hi, kernel):
    # out[lo:hi] = table[x[lo:hi]]; x, out: (n,) uint8, table: (256,) uint8; kernel: vec_lut.LUT_*.
    # The vector kernel does whole vectors (0 bytes where the target lacks it), the scalar loop the rest
    i = lo
    if kernel == LUT_VBMI:
        i += lut_vbmi(x, lo, table, out, lo, hi - lo)
    elif kernel == LUT_NEON:
        i += lut_neon(x, lo, table, out, lo, hi - lo)
    # NOTE: indexing slices from 0 (not x[k] for k in range(i, hi)) spares the negative-index checks that
    # kept LLVM from unrolling the loop (0.57 -> 0.31 ns per byte measured)
    xs = x[i:hi]
    os_ = out[i:hi]
    for k in range(xs.size):
        os_[k] = table[xs[k]]


@numba.njit(**NJIT_EXACT)
def _lut(x, table, out, kernel):
    # x: (n,) uint8 input bytes; table: (256,) uint8 output bytes; out: (n,) uint8; kernel: vec_lut.LUT_*
    lut_span(x, table, out, 0, x.size, kernel)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _lut_parallel(x, table, out, kernel):
    # as _lut, in chunks of _CHUNK elements (whole vectors: the scalar tail is the last chunk's) across threads
    n = x.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lut_span(x, table, out, c * _CHUNK, min(c * _CHUNK + _CHUNK, n), kernel)


@numba.njit(**NJIT_EXACT)
def _lut_planes(x, tables, out, p0, p1, inner, kernel):
    # x, out: (planes*inner,) uint8; tables: (ntab, 256) uint8; plane p (of p0 <= p < p1) through table p % ntab
    ntab = tables.shape[0]
    for p in range(p0, p1):
        lut_span(x, tables[p % ntab], out, p * inner, (p + 1) * inner, kernel)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _lut_planes_parallel(nchunks, x, tables, out, planes, inner, kernel):
    for c in prange(nchunks):
        _lut_planes(x, tables, out, c * planes // nchunks, (c + 1) * planes // nchunks, inner, kernel)


def bind_plane_tables(x: np.ndarray, tables: np.ndarray, out: np.ndarray, inner: int, threads: int,
                      kernel: int | None = None):
    """A no-argument callable: ``out = tables[p % T][x]`` plane by plane (planes of ``inner`` contiguous bytes;
    ``tables`` (T, 256), one per channel: an 8-bit op with a per-channel constant operand). C-contiguous x and
    out of one size, a multiple of ``inner``."""
    _dtype8(x.dtype, "input")
    _dtype8(out.dtype, "output")
    if (tables.ndim != 2 or tables.shape[1] != 256 or tables.dtype != out.dtype or x.size != out.size or inner < 1
            or x.size % inner or not (x.flags.c_contiguous and out.flags.c_contiguous)):
        raise ValueError(f"tables {tables.dtype}{tables.shape} do not map {x.dtype}{x.shape} to "
                         f"{out.dtype}{out.shape} in planes of {inner}")
    kernel = _check_kernel(kernel)
    planes = x.size // inner
    args = (x.reshape(-1).view(np.uint8), np.ascontiguousarray(tables).view(np.uint8), out.reshape(-1).view(np.uint8))
    nchunks = min(planes, 4 * threads)
    if threads > 1 and nchunks > 1 and x.size >= _config.PARALLEL_MIN_WORK:
        return lambda: _lut_planes_parallel(nchunks, *args, planes, inner, kernel)
    return lambda: _lut_planes(*args, 0, planes, inner, kernel)


def _check_kernel(kernel) -> int:
    if kernel is None:
        return LUT_KERNEL
    if int(kernel) not in available_lut_kernels():
        raise ValueError(f"lookup kernel {kernel!r} is not available here (have "
                         f"{[LUT_NAMES[k] for k in available_lut_kernels()]})")
    return int(kernel)


def bind_table(x: np.ndarray, table: np.ndarray, out: np.ndarray, kernel: int | None = None):
    """A no-argument callable doing ``apply_table(x, table, out, kernel=kernel)`` on these very arrays
    (prepared once)."""
    _dtype8(x.dtype, "input")
    _dtype8(out.dtype, "output")
    if table.shape != (256,) or table.dtype != out.dtype or x.size != out.size:
        raise ValueError(f"table {table.dtype}{table.shape} does not map {x.dtype}{x.shape} to {out.dtype}{out.shape}")
    kernel = _check_kernel(kernel)
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        return lambda: apply_table(x, table, out, kernel=kernel)
    args = (x.reshape(-1).view(np.uint8), np.ascontiguousarray(table).view(np.uint8), out.reshape(-1).view(np.uint8),
            kernel)
    fn = _lut_parallel if x.size >= _config.PARALLEL_MIN_WORK else _lut
    return lambda: fn(*args)


def apply_table(x: np.ndarray, table: np.ndarray, out: np.ndarray, parallel: bool | None = None,
                kernel: int | None = None) -> np.ndarray:
    """``out[...] = table[x.view(uint8)]`` for 8-bit ``x`` and a C-contiguous ``out`` of table's dtype and
    x's size. ``parallel`` None: the prange variant from config.PARALLEL_MIN_WORK elements on. ``kernel``:
    one of :func:`~.vec_lut.available_lut_kernels` (``vec_lut.LUT_SCALAR`` forces the scalar loop); None:
    :data:`~.vec_lut.LUT_KERNEL` (the best the CPU has, or ``EDGEDL_LUT_KERNEL``)."""
    _dtype8(x.dtype, "input")
    _dtype8(out.dtype, "output")
    if table.shape != (256,) or table.dtype != out.dtype:
        raise ValueError(f"table must be (256,) {out.dtype}, got {table.shape} {table.dtype}")
    if x.size != out.size:
        raise ValueError(f"input has {x.size} elements, output {out.size}")
    if not out.flags.c_contiguous:
        raise ValueError("the output must be C-contiguous")
    kernel = _check_kernel(kernel)
    xv = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    ov = out.reshape(-1).view(np.uint8)
    if parallel is None:
        parallel = x.size >= _config.PARALLEL_MIN_WORK
    (_lut_parallel if parallel else _lut)(xv, np.ascontiguousarray(table).view(np.uint8), ov, kernel)
    return out
