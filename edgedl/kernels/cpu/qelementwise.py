"""Broadcasting int8 / uint8 Add and Mul (QLinearAdd / QLinearMul, TFLite ADD / MUL).

An 8-bit binary op has only 256 x 256 distinct inputs, so :class:`QBinary` evaluates its formula once per
pair at prepare time into a 64 KiB table (``table[a_byte << 8 | b_byte]`` = output byte) and the kernel is a
broadcasting gather: exact for every mode by construction, and one load per element. The formulas (scalar,
:func:`_qbinary`):

* MODE_FLOAT add, onnxruntime MlasQLinearAdd as x86-64 with AVX2 runs it (MlasQLinearAddKernelAvx2Helper,
  mlas/lib/intrinsics/avx2/qladd_avx2.cpp), on the raw values, float32, with fused multiply-adds::

      r_a = a_scale / y_scale, r_b = b_scale / y_scale                      (float32)
      fixed = float(y_zp) - fma(r_a, float(a_zp), r_b * float(b_zp))
      c = fma(float(a), r_a, fma(float(b), r_b, fixed))
      out = clamp(rint(c), lo, hi)                                          (half to even)

  When A is the broadcast scalar of the innermost dimension (onnxruntime's IsScalarA path) the roles of A
  and B swap (fixed = float(y_zp) - fma(r_b, float(b_zp), r_a * float(a_zp)), c = fma(float(b), r_b,
  fma(float(a), r_a, fixed))): QBinary keeps a second table for that case. Which operand the compiler fused
  in the scalar expression was measured against onnxruntime 1.32 (no mismatch in 5M pairs). onnxruntime
  builds without AVX2 (SSE2: no fma) or on ARM (NEON: a fixed-point multiplier) can differ by 1 near ties.
* MODE_FLOAT mul, onnxruntime MlasQLinearMulKernel (SSE2 / NEON64)::

      ratio = float32(a_scale * b_scale / y_scale)    (float32, left to right)
      out = clamp(rint(float32((a - a_zp) * (b - b_zp)) * ratio + float32(y_zp)), lo, hi)

* MODE_DOUBLE / MODE_SINGLE add, TFLite reference_integer_ops::AddElementwise (left_shift 20): both inputs
  are shifted left 20 bits, rescaled to the common scale 2 * max(a_scale, b_scale) with their own
  multipliers, summed and rescaled to the output (TFLite's add.cc Prepare; edgedl.quant.reference.add):
  ``clamp(MBQM(MBQM(a' << 20, M_a) + MBQM(b' << 20, M_b), M_out) + y_zp, lo, hi)``, MBQM double or single
  rounding.
* MODE_DOUBLE / MODE_SINGLE mul, TFLite MulElementwise: ``clamp(MBQM((a - a_zp) * (b - b_zp), M) + y_zp)``
  with M = a_scale * b_scale / y_scale evaluated in float32 as mul.cc does.

Broadcasting (numpy rules, any rank) is collapsed at prepare time to at most four dims with per-input
element strides (0 on broadcast dims); shapes that do not collapse to four dims loop over the leading ones.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from ...quant.fixed_point import (
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_single,
    quantize_multiplier,
)
from ...quant.requant import MODE_DOUBLE, MODE_FLOAT, MODE_SINGLE
from . import config as _config
from .config import NJIT_EXACT, NJIT_EXACT_PARALLEL
from .lut import byte_values, check_qparams

__all__ = ["QBinary", "QTableBinary", "broadcast_geometry", "KINDS"]

KINDS = {"add": 0, "mul": 1}
_ADD, _MUL = 0, 1
_LEFT_SHIFT = 20
#: elements per parallel task of the gather
_CHUNK = 1 << 12
#: outputs from which the gather runs on several threads. NOTE: on the 2-vCPU Zen 4 machine of the benchmarks
#: two threads never beat one on a gather (0.45 ns per element either way, 16k to 1M elements: the vCPUs
#: seem to share a core's load ports), so the split waits for large tensors, as the other element-wise ops
PARALLEL_MIN_ELEMENTS = _config.PARALLEL_MIN_WORK
# int64 parameter vector of _qbinary
P_AZP, P_BZP, P_YZP, P_LO, P_HI, P_MA, P_SA, P_MB, P_SB, P_MO, P_SO = range(11)
# float32 parameter vector: a_scale / y_scale, b_scale / y_scale, add's fixed part, mul's ratio
F_RA, F_RB, F_FIXED, F_RATIO = range(4)


@intrinsic
def _fma32(typingctx, x, y, z):
    """x * y + z rounded once (llvm.fma.f32: the FMA instruction, or libm's fmaf) for float32 x, y, z."""
    if not (x == types.float32 and y == types.float32 and z == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1 (coverage runs): intrinsics cannot run as Python
    def _fma32(x, y, z):
        from fractions import Fraction

        exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        r = np.float32(float(exact))  # float64 then float32: fix the rare double rounding at float32 ties
        other = np.nextafter(r, np.float32(np.inf) if Fraction(float(r)) < exact else np.float32(-np.inf))
        d_r, d_o = abs(Fraction(float(r)) - exact), abs(Fraction(float(other)) - exact)
        return other if d_o < d_r or (d_o == d_r and int(other.view(np.int32)) % 2 == 0) else r


@numba.njit(inline="always", **NJIT_EXACT)
def _mbqm(x, m0, shift, mode):
    if mode == MODE_SINGLE:
        return multiply_by_quantized_multiplier_single(x, m0, shift)
    return multiply_by_quantized_multiplier(x, m0, shift)


@numba.njit(inline="always", **NJIT_EXACT)
def _qbinary(a, b, kind, mode, ip, fp):
    """One output value (int64) of the op on input values a, b (int64); see the module doc. For MODE_FLOAT
    add, (a, b) are (x, y) of fp's r_x, r_y, fixed: swapped by the caller for onnxruntime's IsScalarA path."""
    lo = ip[P_LO]
    hi = ip[P_HI]
    zp = ip[P_YZP]
    if mode == MODE_FLOAT:
        if kind == _ADD:
            c = _fma32(np.float32(a), fp[F_RA], _fma32(np.float32(b), fp[F_RB], fp[F_FIXED]))
        else:
            c = np.float32((a - ip[P_AZP]) * (b - ip[P_BZP])) * fp[F_RATIO] + np.float32(zp)
        c = np.float32(lo) if c < np.float32(lo) else c
        c = np.float32(hi) if c > np.float32(hi) else c
        return np.int64(np.rint(c))
    da = a - ip[P_AZP]
    db = b - ip[P_BZP]
    if kind == _ADD:
        sa = _mbqm(da << _LEFT_SHIFT, ip[P_MA], ip[P_SA], mode)
        sb = _mbqm(db << _LEFT_SHIFT, ip[P_MB], ip[P_SB], mode)
        v = _mbqm(sa + sb, ip[P_MO], ip[P_SO], mode) + zp
    else:
        v = _mbqm(da * db, ip[P_MO], ip[P_SO], mode) + zp
    v = lo if v < lo else v
    return hi if v > hi else v


@numba.njit(**NJIT_EXACT)
def _pair_table(av, bv, kind, mode, ip, fs, swap, out):
    # av, bv: (256,) int64 values of the input bytes; fs: float32 (a_scale, b_scale, y_scale); swap: onnxruntime's
    # IsScalarA variant of MODE_FLOAT add; out: (65536,) int64, out[i << 8 | j] = op(av[i], bv[j])
    fp = np.empty(4, np.float32)
    ra = fs[0] / fs[2]
    rb = fs[1] / fs[2]
    za = np.float32(ip[P_AZP])
    zb = np.float32(ip[P_BZP])
    fp[F_RATIO] = (fs[0] * fs[1]) / fs[2]
    if swap:  # x = b, y = a
        fp[F_RA] = rb
        fp[F_RB] = ra
        fp[F_FIXED] = np.float32(ip[P_YZP]) - _fma32(rb, zb, ra * za)
    else:
        fp[F_RA] = ra
        fp[F_RB] = rb
        fp[F_FIXED] = np.float32(ip[P_YZP]) - _fma32(ra, za, rb * zb)
    # NOTE: one call site of the inlined _qbinary (every op and mode): a second one for the swapped operands
    # doubled this table builder's compile time
    for i in range(av.size):
        for j in range(bv.size):
            x = bv[j] if swap else av[i]
            y = av[i] if swap else bv[j]
            out[(i << 8) | j] = _qbinary(x, y, kind, mode, ip, fp)


@numba.njit(inline="always", **NJIT_EXACT)
def _gather_row(r, lo, hi, a, b, tables, out, g, a0, b0, o0):
    # elements lo..hi of output row r of the collapsed 4-D loop (d0, d1, d2 flattened); g: int64 (12,) = dims
    # (4), a strides (4), b strides (4), in elements of the uint8 arrays a, b; out: the flat output, rows of
    # g[3] elements; tables: (2, 65536) uint8, the pair table indexed a << 8 | b and its transpose (b << 8 | a)
    table = tables[0]
    d1 = g[1]
    d2 = g[2]
    i0 = r // (d1 * d2)
    i1 = (r // d2) % d1
    i2 = r % d2
    ia = a0 + i0 * g[4] + i1 * g[5] + i2 * g[6]
    ib = b0 + i0 * g[8] + i1 * g[9] + i2 * g[10]
    sa = g[7]
    sb = g[11]
    o = o0 + r * g[3]
    if sa == 1 and sb == 1:  # same shapes (the residual Add): unit strides, ~3x faster than the general loop
        ar = a[ia + lo:ia + hi]
        br = b[ib + lo:ib + hi]
        orow = out[o + lo:o + hi]
        for i in range(hi - lo):
            orow[i] = table[(np.int64(ar[i]) << 8) | np.int64(br[i])]
        return
    if sb == 0 and sa == 1:  # one B value along the row (a per-channel scale): B's row of the transposed table
        row = tables[1, np.int64(b[ib]) << 8:(np.int64(b[ib]) << 8) + 256]
        ar = a[ia + lo:ia + hi]
        orow = out[o + lo:o + hi]
        for i in range(hi - lo):
            orow[i] = row[ar[i]]
        return
    if sa == 0 and sb == 1:  # one A value along the row: A's row of the table
        row = table[np.int64(a[ia]) << 8:(np.int64(a[ia]) << 8) + 256]
        br = b[ib + lo:ib + hi]
        orow = out[o + lo:o + hi]
        for i in range(hi - lo):
            orow[i] = row[br[i]]
        return
    for i in range(lo, hi):
        out[o + i] = table[(np.int64(a[ia + i * sa]) << 8) | np.int64(b[ib + i * sb])]


@numba.njit(**NJIT_EXACT)
def _gather(a, b, table, out, g, a0, b0, o0):
    # a, b: flat uint8 inputs; table: (2, 65536) uint8 (see _gather_row); out: flat uint8 output
    for r in range(g[0] * g[1] * g[2]):
        _gather_row(r, 0, g[3], a, b, table, out, g, a0, b0, o0)


@numba.njit(**NJIT_EXACT_PARALLEL)
def _gather_parallel(a, b, table, out, g, a0, b0, o0):
    # as _gather, each row cut into chunks of _CHUNK elements: a same-shape Add collapses to a single row
    chunks = (g[3] + _CHUNK - 1) // _CHUNK
    for t in prange(g[0] * g[1] * g[2] * chunks):
        r = t // chunks
        c = t - r * chunks
        _gather_row(r, c * _CHUNK, min(g[3], (c + 1) * _CHUNK), a, b, table, out, g, a0, b0, o0)


def broadcast_geometry(a_shape, b_shape, out_shape):
    """(dims, a_strides, b_strides): the numpy broadcast of C-contiguous a and b to out_shape, collapsed
    (size-1 dims dropped, mergeable neighbours merged), strides in elements, 0 on broadcast dims."""
    a_shape, b_shape, out_shape = tuple(a_shape), tuple(b_shape), tuple(out_shape)
    try:
        full = np.broadcast_shapes(a_shape, b_shape)
    except ValueError:
        raise ValueError(f"shapes {a_shape} and {b_shape} do not broadcast") from None
    if full != out_shape:
        raise ValueError(f"{a_shape} and {b_shape} broadcast to {full}, not to the output shape {out_shape}")

    def strides(shape):
        shape = (1,) * (len(out_shape) - len(shape)) + shape
        st, acc = [], 1
        for d in reversed(shape):
            st.append(acc if d != 1 else 0)
            acc *= d
        return st[::-1]

    sa, sb = strides(a_shape), strides(b_shape)
    dims, ga, gb = [], [], []
    for d, n in enumerate(out_shape):
        if n == 1:
            continue
        if dims and ga[-1] == sa[d] * n and gb[-1] == sb[d] * n:
            dims[-1] *= n
            ga[-1], gb[-1] = sa[d], sb[d]
        else:
            dims.append(n)
            ga.append(sa[d])
            gb.append(sb[d])
    if not dims:
        dims, ga, gb = [1], [0], [0]
    return tuple(dims), tuple(ga), tuple(gb)


class _BroadcastGather:
    """The broadcasting gather of an 8-bit op of two 8-bit tensors through a (65536,) table of every input byte
    pair: ``a`` (a_shape) and ``b`` (b_shape) into ``out`` (out_shape, their numpy broadcast). Subclasses give
    :meth:`table` for the dtypes."""

    def __init__(self, a_shape, b_shape, out_shape):
        self.a_shape, self.b_shape, self.out_shape = tuple(a_shape), tuple(b_shape), tuple(out_shape)
        dims, ga, gb = broadcast_geometry(a_shape, b_shape, out_shape)
        pad = max(0, 4 - len(dims))
        dims, ga, gb = (1,) * pad + dims, (0,) * pad + ga, (0,) * pad + gb
        self.outer = dims[:-4]  # leading dims that did not collapse: looped over in Python
        self._outer_strides = (ga[:-4], gb[:-4])
        self.geometry = np.array(dims[-4:] + ga[-4:] + gb[-4:], np.int64)
        self.size = int(np.prod(out_shape, dtype=np.int64))

    def table(self, a_dtype, b_dtype, out_dtype) -> np.ndarray:
        """(65536,) out_dtype: output of each (a byte << 8 | b byte)."""
        raise NotImplementedError

    def _kernel_tables(self, a_dtype, b_dtype, out_dtype) -> np.ndarray:
        """(2, 65536) uint8: :meth:`table` and its transpose (indexed b << 8 | a), so that a row with one value
        of either operand reads 256 consecutive bytes (a per-channel scale: 2.7 -> ~0.4 ns per element)."""
        key = (np.dtype(a_dtype), np.dtype(b_dtype), np.dtype(out_dtype))
        cache = self.__dict__.setdefault("_kernel_table_cache", {})
        if key not in cache:
            t = np.ascontiguousarray(self.table(*key)).view(np.uint8)
            cache[key] = np.ascontiguousarray(np.stack([t, t.reshape(256, 256).T.reshape(-1)]))
        return cache[key]

    def bind(self, a: np.ndarray, b: np.ndarray, out: np.ndarray):
        """A no-argument callable doing ``self(a, b, out)`` on these very arrays, every argument prepared once
        (C-contiguous a and b; plans bind arena tensors and constants)."""
        for arr, shape, what in ((a, self.a_shape, "A"), (b, self.b_shape, "B"), (out, self.out_shape, "output")):
            if tuple(arr.shape) != shape:
                raise ValueError(f"{what} has shape {tuple(arr.shape)}, the op was prepared for {shape}")
        if self.outer or not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
            return lambda: self(a, b, out)
        table = self._kernel_tables(a.dtype, b.dtype, out.dtype)
        args = (a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8), table, out.reshape(-1).view(np.uint8),
                self.geometry, 0, 0, 0)
        kernel = _gather_parallel if self.size >= PARALLEL_MIN_ELEMENTS else _gather
        return lambda: kernel(*args)

    def __call__(self, a: np.ndarray, b: np.ndarray, out: np.ndarray, parallel: bool | None = None) -> np.ndarray:
        for arr, shape, what in ((a, self.a_shape, "A"), (b, self.b_shape, "B"), (out, self.out_shape, "output")):
            if tuple(arr.shape) != shape:
                raise ValueError(f"{what} has shape {tuple(arr.shape)}, the op was prepared for {shape}")
        if not out.flags.c_contiguous:
            raise ValueError("the output must be C-contiguous")
        table = self._kernel_tables(a.dtype, b.dtype, out.dtype)
        av = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        bv = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
        ov = out.reshape(-1).view(np.uint8)
        if parallel is None:
            parallel = self.size >= PARALLEL_MIN_ELEMENTS
        kernel = _gather_parallel if parallel else _gather
        if not self.outer:
            kernel(av, bv, table, ov, self.geometry, 0, 0, 0)
            return out
        inner = int(np.prod(self.geometry[:4]))
        sa, sb = self._outer_strides
        for k, idx in enumerate(np.ndindex(*self.outer)):
            a0 = sum(i * s for i, s in zip(idx, sa))
            b0 = sum(i * s for i, s in zip(idx, sb))
            kernel(av, bv, table, ov, self.geometry, a0, b0, k * inner)
        return out


class QBinary(_BroadcastGather):
    """Prepared 8-bit Add / Mul of ``a`` (a_shape) and ``b`` (b_shape) into ``out`` (out_shape, their
    numpy broadcast), per-tensor parameters, output clamped to [lo, hi] (the output type's range narrowed
    by a fused activation), ``mode`` one of edgedl.quant.requant's MODE_*. The 256 x 256 table is built on
    the first call for each (a, b, out) dtype triple."""

    def __init__(self, kind, a_shape, b_shape, out_shape, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, lo, hi,
                 mode):
        if kind not in KINDS:
            raise ValueError(f"kind must be 'add' or 'mul', got {kind!r}")
        if mode not in (MODE_DOUBLE, MODE_SINGLE, MODE_FLOAT):
            raise ValueError(f"unknown requantization mode {mode}")
        super().__init__(a_shape, b_shape, out_shape)
        self.kind, self.mode = kind, int(mode)
        # onnxruntime's add takes its IsScalarA path where A is constant along the innermost dimension
        self.scalar_a = self.kind == "add" and self.mode == MODE_FLOAT and self.geometry[7] == 0  # A's inner stride
        self.params = (a_scale, a_zp, b_scale, b_zp, y_scale, y_zp)
        self.lo, self.hi = int(lo), int(hi)
        if self.lo > self.hi:
            raise ValueError(f"empty output range [{lo}, {hi}]")
        self._tables = {}

    def _int_params(self, a_dtype, b_dtype, out_dtype):
        """(int64 parameters, float32 scales) of :func:`_qbinary` for these dtypes."""
        a_scale, a_zp, b_scale, b_zp, y_scale, y_zp = self.params
        sa, za = check_qparams(a_scale, a_zp, a_dtype, "input A")
        sb, zb = check_qparams(b_scale, b_zp, b_dtype, "input B")
        sy, zy = check_qparams(y_scale, y_zp, out_dtype, "output")
        info = np.iinfo(out_dtype)
        if not info.min <= self.lo <= self.hi <= info.max:
            raise ValueError(f"output range [{self.lo}, {self.hi}] outside {np.dtype(out_dtype)}")
        ma = mb = (0, 0)
        if self.kind == "add":  # TFLite add.cc Prepare (double from the float32 scales)
            twice_max = 2.0 * max(float(sa), float(sb))
            ma = quantize_multiplier(float(sa) / twice_max)
            mb = quantize_multiplier(float(sb) / twice_max)
            mo = quantize_multiplier(twice_max / ((1 << _LEFT_SHIFT) * float(sy)))
        else:  # TFLite mul.cc Prepare: input1_scale * input2_scale / output_scale in float32
            mo = quantize_multiplier(float(np.float32(np.float32(sa * sb) / sy)))
        ip = np.array([za, zb, zy, self.lo, self.hi, *ma, *mb, *mo], np.int64)
        return ip, np.array([sa, sb, sy], np.float32)

    def table(self, a_dtype, b_dtype, out_dtype) -> np.ndarray:
        """(65536,) out_dtype: output of each (a byte << 8 | b byte)."""
        key = (np.dtype(a_dtype), np.dtype(b_dtype), np.dtype(out_dtype))
        if key not in self._tables:
            ip, fs = self._int_params(*key)
            vals = np.empty(65536, np.int64)
            _pair_table(byte_values(key[0]), byte_values(key[1]), KINDS[self.kind], self.mode, ip, fs,
                        self.scalar_a, vals)
            self._tables[key] = vals.astype(key[2])
        return self._tables[key]

class QTableBinary(_BroadcastGather):
    """The broadcasting gather over a given (65536,) int8 table of an int8 operator of two int8 inputs (indexed
    by ``a byte << 8 | b byte``; :mod:`edgedl.quant.tflite_tables` makes them)."""

    def __init__(self, pair_table: np.ndarray, a_shape, b_shape, out_shape):
        pair_table = np.asarray(pair_table)
        if pair_table.shape != (65536,) or pair_table.dtype != np.int8:
            raise ValueError(f"a pair table is (65536,) int8, got {pair_table.dtype}{pair_table.shape}")
        super().__init__(a_shape, b_shape, out_shape)
        self.pair_table = pair_table

    def table(self, a_dtype, b_dtype, out_dtype) -> np.ndarray:
        if {np.dtype(a_dtype), np.dtype(b_dtype), np.dtype(out_dtype)} != {np.dtype(np.int8)}:
            raise ValueError("a pair table maps int8 inputs to an int8 output")
        return self.pair_table
