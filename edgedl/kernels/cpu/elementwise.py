"""fp32 elementwise kernels: broadcasting binary ops and flat unary ops.

Binary ops run on a *broadcast plan* computed once at build time (:func:`broadcast_plan`): the output
shape is collapsed to at most 4 dims by merging neighbours that broadcast the same way, and every input
gets element strides on those dims (0 where it broadcasts). Padded to rank 4, the common patterns become:

=====================================  =========================  =====================
pattern                                collapsed dims             innermost strides
=====================================  =========================  =====================
same shape                             (1, 1, 1, N)               a: 1, b: 1
scalar operand                         (1, 1, 1, N)               a: 1, b: 0
per-channel x[N,C,H,W] op b[C,1,1]     (1, N, C, H*W)             a: 1, b: 0
last axis x[..., C] op b[C]            (1, 1, M, C)               a: 1, b: 1
=====================================  =========================  =====================

The kernel walks a flat range of output elements (so parallel chunks get equal work whatever the
shape), a run of whole innermost rows at a time; every row is a contiguous loop over the output in one
of four shapes (vector-vector, vector-scalar, scalar-vector, scalar-scalar).

Unary ops (including the activations) are one flat loop over the contiguous buffer with two float
parameters (alpha, beta).

Every op has its own compiled kernels (:func:`binary_kernels`, :func:`unary_kernels`: a serial one and a
``prange`` one, made on first use and cached on disk): the op code is a compile-time constant, so each
loop holds one operation and vectorizes. (A run-time op code branch inside the loop is not unswitched
by LLVM once the loop body is large, and putting every op's loop in one function made that function
take ~50 s to compile.) Loops run over slices from index 0: an index that Numba cannot prove
non-negative gets a wraparound check that stops vectorization.

exp, tanh and sigmoid use branch-free float32 versions (:func:`exp_f32`, ...) that vectorize, instead
of scalar libm calls.

Every kernel here is compiled with ``error_model="numpy"``: float division by zero gives inf/nan
instead of a Python exception check in the loop (which would also stop vectorization).
"""
from __future__ import annotations

import functools

import llvmlite.ir as ir
import numba
import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from . import config as _config
from .config import FASTMATH, num_threads

_NJIT = dict(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")
_NJIT_PAR = dict(_NJIT, parallel=True)

# --- binary op codes ---------------------------------------------------------------------------------
B_ADD = 0
B_SUB = 1
B_MUL = 2
B_DIV = 3
B_MAX = 4
B_MIN = 5
B_PRELU = 6  # a = x, b = slope: x if x >= 0 else slope * x

# --- unary op codes ----------------------------------------------------------------------------------
U_COPY = 0
U_NEG = 1
U_ABS = 2
U_SQRT = 3
U_EXP = 4
U_LOG = 5
U_RECIPROCAL = 6
U_RELU = 7
U_LEAKY_RELU = 8     # alpha
U_ELU = 9            # alpha
U_CLIP = 10          # alpha = min, beta = max
U_SIGMOID = 11
U_TANH = 12
U_HARD_SIGMOID = 13  # alpha, beta
U_HARD_SWISH = 14

#: the rank every broadcast plan is padded to
BCAST_RANK = 4


# --- vectorizable float32 math ------------------------------------------------------------------------
# libm's expf/tanhf are scalar calls that stop loops from vectorizing. These are branch-free (selects
# only) Cephes-style versions that LLVM vectorizes; accuracy about 1-2 ulp.
@intrinsic
def _ldexp(typingctx, p, n):
    """p * 2**n for float32 p (normal, positive) and an integral float32 n, by adding n to the exponent
    bits (integer ops: no float rounding, and fast-math cannot reassociate it into an overflow)."""
    if p != types.float32 or n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        e = builder.shl(builder.fptosi(args[1], i32), ir.Constant(i32, 23))
        return builder.bitcast(builder.add(bits, e), ir.FloatType())

    return types.float32(types.float32, types.float32), codegen


if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1 (coverage runs): intrinsics cannot run as Python
    def _ldexp(p, n):
        if not np.isfinite(n):  # the compiled kernels select such lanes away
            return np.float32(np.nan)
        with np.errstate(over="ignore", under="ignore"):
            return np.float32(np.ldexp(np.float32(p), int(n)))


@numba.njit(**_NJIT)
def exp_f32(x):
    """exp(x) for float32 x: inf above 88.72, NaN for NaN, 0 below -86.6 (results under 2.5e-38 are
    flushed to zero instead of going denormal)."""
    hi = np.float32(88.72283905206835)
    lo = np.float32(-86.6)
    xc = hi if x > hi else x
    xc = lo if xc < lo else xc
    fx = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - fx * np.float32(0.693359375) - fx * np.float32(-2.12194440e-4)
    z = r * r
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * z + r + np.float32(1.0)  # e**r, r in [-ln2/2, ln2/2]
    y = _ldexp(p, fx)  # fx in [-125, 128]; p < 1 where fx = 128
    y = np.float32(np.inf) if x > hi else y
    y = np.float32(0.0) if x < lo else y
    return x if x != x else y


@numba.njit(**_NJIT)
def expm1_f32(x):
    """exp(x) - 1 without cancellation near 0 (Taylor polynomial for |x| < 0.35)."""
    p = np.float32(1.0 / 5040.0)
    p = p * x + np.float32(1.0 / 720.0)
    p = p * x + np.float32(1.0 / 120.0)
    p = p * x + np.float32(1.0 / 24.0)
    p = p * x + np.float32(1.0 / 6.0)
    p = p * x + np.float32(0.5)
    small = x + x * x * p
    big = exp_f32(x) - np.float32(1.0)
    return small if np.abs(x) < np.float32(0.35) else big


@numba.njit(**_NJIT)
def tanh_f32(x):
    """tanh(x) for float32 x (odd polynomial for |x| <= 0.625, 1 - 2 / (exp(2|x|) + 1) above)."""
    z = np.abs(x)
    s = x * x
    p = np.float32(-5.70498872745e-3)
    p = p * s + np.float32(2.06390887954e-2)
    p = p * s - np.float32(5.37397155531e-2)
    p = p * s + np.float32(1.33314422036e-1)
    p = p * s - np.float32(3.33332819422e-1)
    small = p * s * x + x
    big = np.float32(1.0) - np.float32(2.0) / (exp_f32(z + z) + np.float32(1.0))
    big = -big if x < np.float32(0.0) else big
    return big if z > np.float32(0.625) else small


@numba.njit(**_NJIT)
def sigmoid_f32(x):
    """1 / (1 + exp(-x)) computed from exp(-|x|), which never overflows."""
    e = exp_f32(-np.abs(x))
    r = np.float32(1.0) / (np.float32(1.0) + e)
    return r if x >= np.float32(0.0) else e * r


@numba.njit(**_NJIT)
def _bin(op, x, y):
    # NaN-propagating max/min (like numpy.maximum): a NaN in x or y gives NaN.
    if op == B_ADD:
        return x + y
    elif op == B_SUB:
        return x - y
    elif op == B_MUL:
        return x * y
    elif op == B_DIV:
        return x / y
    elif op == B_MAX:
        return x if (x >= y or x != x) else y
    elif op == B_MIN:
        return x if (x <= y or x != x) else y
    else:  # B_PRELU
        return x if x >= np.float32(0.0) else y * x


@numba.njit(**_NJIT)
def _un(op, v, alpha, beta):
    zero = np.float32(0.0)
    one = np.float32(1.0)
    if op == U_COPY:
        return v
    elif op == U_NEG:
        return -v
    elif op == U_ABS:
        return np.abs(v)
    elif op == U_SQRT:
        return np.sqrt(v)
    elif op == U_EXP:
        return exp_f32(v)
    elif op == U_LOG:
        return np.log(v)
    elif op == U_RECIPROCAL:
        return one / v
    elif op == U_RELU:
        return zero if v < zero else v
    elif op == U_LEAKY_RELU:
        return alpha * v if v < zero else v
    elif op == U_ELU:
        return alpha * expm1_f32(v) if v < zero else v
    elif op == U_CLIP:
        r = alpha if v < alpha else v
        return beta if r > beta else r
    elif op == U_SIGMOID:
        return sigmoid_f32(v)
    elif op == U_TANH:
        return tanh_f32(v)
    elif op == U_HARD_SIGMOID:
        t = alpha * v + beta
        t = zero if t < zero else t
        return one if t > one else t
    else:  # U_HARD_SWISH
        t = v * np.float32(1.0 / 6.0) + np.float32(0.5)
        t = zero if t < zero else t
        t = one if t > one else t
        return v * t


@numba.njit(inline="always", **_NJIT)
def _rows_op(op, a, ao, a2, a3, b, bo, b2, b3, out, oo, rows, n):
    """``rows`` runs of ``n`` outputs each (out[oo + r*n + k]); run r reads a from ao + r*a2 and b from
    bo + r*b2, with innermost strides a3, b3 in {0, 1} (1: contiguous, 0: broadcast).

    Called with a constant ``op`` so ``_bin`` folds to one operation; the stride case is chosen once
    outside the row loop. The loops run over slices from index 0: an index Numba cannot prove
    non-negative gets a wraparound check that stops vectorization."""
    if a3 == 1 and b3 == 1:
        for r in range(rows):
            o = out[oo + r * n:oo + r * n + n]
            x = a[ao + r * a2:ao + r * a2 + n]
            y = b[bo + r * b2:bo + r * b2 + n]
            for k in range(n):
                o[k] = _bin(op, x[k], y[k])
    elif a3 == 1:
        for r in range(rows):
            o = out[oo + r * n:oo + r * n + n]
            x = a[ao + r * a2:ao + r * a2 + n]
            yv = b[bo + r * b2]
            for k in range(n):
                o[k] = _bin(op, x[k], yv)
    elif b3 == 1:
        for r in range(rows):
            o = out[oo + r * n:oo + r * n + n]
            xv = a[ao + r * a2]
            y = b[bo + r * b2:bo + r * b2 + n]
            for k in range(n):
                o[k] = _bin(op, xv, y[k])
    else:
        for r in range(rows):
            o = out[oo + r * n:oo + r * n + n]
            v = _bin(op, a[ao + r * a2], b[bo + r * b2])
            for k in range(n):
                o[k] = v


@numba.njit(inline="always", **_NJIT)
def _walk(op, a, b, out, dims, sa, sb, start, stop):
    """Flat output elements [start, stop) of ``out = a op b`` (see :func:`binary_range`)."""
    d1 = dims[1]
    d2 = dims[2]
    d3 = dims[3]
    r = start // d3
    j = start - r * d3
    i2 = r % d2
    t = r // d2
    i1 = t % d1
    i0 = t // d1
    a0, a1, a2, a3 = sa[0], sa[1], sa[2], sa[3]
    b0, b1, b2, b3 = sb[0], sb[1], sb[2], sb[3]
    pos = start
    while pos < stop:
        ao = i0 * a0 + i1 * a1 + i2 * a2 + j * a3
        bo = i0 * b0 + i1 * b1 + i2 * b2 + j * b3
        if j == 0 and stop - pos >= d3:
            # whole runs: as many as fit in this (i0, i1) block and in [pos, stop)
            rows = min(d2 - i2, (stop - pos) // d3)
            _rows_op(op, a, ao, a2, a3, b, bo, b2, b3, out, pos, rows, d3)
            pos += rows * d3
            i2 += rows
        else:
            # a partial run (chunk boundaries only)
            n = min(d3 - j, stop - pos)
            _rows_op(op, a, ao, a2, a3, b, bo, b2, b3, out, pos, 1, n)
            pos += n
            j += n
            if j < d3:
                continue
            j = 0
            i2 += 1
        if i2 == d2:
            i2 = 0
            i1 += 1
            if i1 == d1:
                i1 = 0
                i0 += 1


def _make_binary(op):
    @numba.njit(**_NJIT)
    def binary_range(a, b, out, dims, sa, sb, start, stop):
        _walk(op, a, b, out, dims, sa, sb, start, stop)

    @numba.njit(**_NJIT_PAR)
    def binary_parallel(a, b, out, dims, sa, sb, nchunks):
        total = out.size
        for c in prange(nchunks):
            _walk(op, a, b, out, dims, sa, sb, total * c // nchunks, total * (c + 1) // nchunks)

    return binary_range, binary_parallel


def _make_unary(op):
    @numba.njit(**_NJIT)
    def unary_range(x, out, alpha, beta, start, stop):
        xs = x[start:stop]
        o = out[start:stop]
        a = np.float32(alpha)
        b = np.float32(beta)
        for i in range(xs.size):
            o[i] = _un(op, xs[i], a, b)

    @numba.njit(**_NJIT_PAR)
    def unary_parallel(x, out, alpha, beta, nchunks):
        a = np.float32(alpha)
        b = np.float32(beta)
        total = out.size
        for c in prange(nchunks):
            xs = x[total * c // nchunks:total * (c + 1) // nchunks]
            o = out[total * c // nchunks:total * (c + 1) // nchunks]
            for i in range(xs.size):
                o[i] = _un(op, xs[i], a, b)

    return unary_range, unary_parallel


_BINARY: dict = {}
_UNARY: dict = {}


def binary_kernels(op: int):
    """(serial, parallel) kernels of binary op ``op``:

    ``serial(a, b, out, dims, sa, sb, start, stop)`` computes flat output elements [start, stop) of
    ``out = a op b`` under a rank-4 broadcast plan (a, b, out: flat float32; dims: int64[4] collapsed
    output dims; sa, sb: int64[4] element strides of a and b on them, 0 where broadcast, innermost 0 or
    1); ``parallel(a, b, out, dims, sa, sb, nchunks)`` does all of out in ``nchunks`` equal ranges."""
    if op not in _BINARY:
        _BINARY[op] = _make_binary(op)
    return _BINARY[op]


def unary_kernels(op: int):
    """(serial, parallel) kernels of unary op ``op``: ``serial(x, out, alpha, beta, start, stop)``
    computes out[i] = f(x[i]) for i in [start, stop); ``parallel(x, out, alpha, beta, nchunks)`` all."""
    if op not in _UNARY:
        _UNARY[op] = _make_unary(op)
    return _UNARY[op]


def binary_range(op, a, b, out, dims, sa, sb, start, stop):
    """Python-level convenience: the serial kernel of ``op`` on [start, stop)."""
    binary_kernels(op)[0](a, b, out, dims, sa, sb, start, stop)


# --- Python-side drivers (build-time planning, run-time dispatch) --------------------------------------
def num_chunks(work: int, threads: int | None = None) -> int:
    """How many parallel chunks ``work`` element operations are worth (1: run the serial kernel)."""
    if work < _config.PARALLEL_MIN_WORK:
        return 1
    return max(1, min(num_threads() if threads is None else threads, work // (_config.PARALLEL_MIN_WORK // 4)))


def broadcast_plan(out_shape, *in_shapes):
    """Collapse a broadcast of ``in_shapes`` to ``out_shape``.

    Returns ``(dims, strides)``: the collapsed output dims (at least one, outermost first) and per input a
    list of element strides on them (0 where that input broadcasts). Dims of size 1 are dropped and
    neighbouring dims where every input either broadcasts or not alike are merged, so the innermost
    stride of every input is 0 or 1.
    """
    rank = len(out_shape)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in in_shapes]
    groups: list[list] = []  # [size, pattern]
    for k in range(rank):
        d = out_shape[k]
        if d == 1:
            continue
        pattern = tuple(p[k] != 1 for p in padded)
        if groups and groups[-1][1] == pattern:
            groups[-1][0] *= d
        else:
            groups.append([d, pattern])
    if not groups:
        groups = [[1, tuple(False for _ in in_shapes)]]
    dims = [g[0] for g in groups]
    strides = []
    for i in range(len(in_shapes)):
        st = [0] * len(groups)
        acc = 1
        for g in range(len(groups) - 1, -1, -1):
            if groups[g][1][i]:
                st[g] = acc
                acc *= groups[g][0]
        strides.append(st)
    return dims, strides


class BinaryKernel:
    """A prepared fp32 ``out = a op b`` for fixed shapes; ``__call__(a, b, out)`` takes flat arrays.

    Collapsed ranks above :data:`BCAST_RANK` (unusual interleavings of broadcast dims) loop over the
    extra leading dims in Python, one rank-4 kernel call each.
    """

    def __init__(self, op: int, a_shape, b_shape, out_shape):
        self.op = op
        self.serial, self.parallel = binary_kernels(op)
        self.size = int(np.prod(out_shape, dtype=np.int64))
        dims, (sa, sb) = broadcast_plan(tuple(out_shape), tuple(a_shape), tuple(b_shape))
        extra = max(0, len(dims) - BCAST_RANK)
        pad = max(0, BCAST_RANK - len(dims))
        self.lead = [(d, x, y) for d, x, y in zip(dims[:extra], sa[:extra], sb[:extra])]
        self.dims = np.array([1] * pad + dims[extra:], np.int64)
        self.sa = np.array([0] * pad + sa[extra:], np.int64)
        self.sb = np.array([0] * pad + sb[extra:], np.int64)
        self.block = int(np.prod(self.dims))
        self.collapsed = len(dims)

    def __call__(self, a, b, out):
        if self.size == 0:
            return
        if not self.lead:
            self._one(a, b, out)
            return
        import itertools

        for idx in itertools.product(*(range(d) for d, _, _ in self.lead)):
            ao = sum(i * s for i, (_, s, _) in zip(idx, self.lead))
            bo = sum(i * s for i, (_, _, s) in zip(idx, self.lead))
            oo = 0
            for i, (d, _, _) in zip(idx, self.lead):
                oo = oo * d + i
            oo *= self.block
            self._one(a[ao:], b[bo:], out[oo:oo + self.block])

    def _one(self, a, b, out):
        fn, *args = self._call_args(a, b, out, None)
        fn(*args)

    def _call_args(self, a, b, out, threads):
        n = num_chunks(out.size, threads)
        if n == 1:
            return (self.serial, a, b, out, self.dims, self.sa, self.sb, 0, out.size)
        return (self.parallel, a, b, out, self.dims, self.sa, self.sb, n)

    def bind(self, a, b, out, threads: int):
        """A no-argument callable computing ``self(a, b, out)`` on these very arrays, or None when the
        shapes need the Python loop over leading dims."""
        if self.size == 0:
            return lambda: None
        if self.lead:
            return None
        return functools.partial(*self._call_args(a, b, out, threads))


def unary(op: int, x, out, alpha: float = 0.0, beta: float = 0.0) -> None:
    """out = f_op(x) on flat float32 arrays of one size (serial or parallel by size)."""
    serial, parallel = unary_kernels(op)
    n = num_chunks(out.size)
    if n == 1:
        serial(x, out, float(alpha), float(beta), 0, out.size)
    else:
        parallel(x, out, float(alpha), float(beta), n)
