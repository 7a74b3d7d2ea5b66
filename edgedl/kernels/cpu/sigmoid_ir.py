"""The logistic sigmoid as LLVM IR, one emitter for the element-wise loops and the GEMM epilogue.

``sigmoid(x) = 1 / (1 + exp(-x))`` with ``exp(t)`` for ``t`` clamped to [-86.6, 88]:

* ``n = rint(t * log2(e))``, ``r = t - n * ln2`` in two fused steps (ln2 split in a high part exact in
  float32 and a low part), so ``r`` is in [-ln2/2, ln2/2];
* ``e**r = 1 + r + r**2 * P(r)``, ``P`` of degree 5 (Cephes' expf coefficients), every multiply-add fused
  (``llvm.fmuladd``: one rounding on an FPU with FMA, and the same choice for the scalar and vector forms on
  one target);
* ``* 2**n`` by adding ``n`` to the exponent bits (n in [-125, 127], so the result stays a normal float).

Tails: above x = 86.6 the sum ``1 + exp(-x)`` is 1 (exp clamped at 2.6e-38: the float result is exactly 1,
as it is from x = 17 on); below x = -88 it is +inf, so sigmoid gives 0 (exact: below 6e-39, a denormal) and
``x / (1 + exp(-x))`` gives -0 for finite x (the exact value is below 5e-37 in magnitude) and NaN for -inf
(numpy's ``-inf * 0``). Elsewhere the result is within 2.5 ulp of the exact sigmoid, relative (no
``0.5 + 0.5 * tanh(x / 2)`` cancellation in the tail). A NaN x gives NaN.

Swish / SiLU (:func:`emit_swish`) is ``x / (1 + exp(-alpha * x))``, not ``x * sigmoid(alpha * x)``: one
rounding fewer, and inside a fast-math loop LLVM rewrites ``x * (1 / d)`` into ``x / d`` anyway, so only
the division form gives the same bits in the loops and in the epilogue.

Against the previous form (exp of -|x|, then a select on the sign, separate multiplies and adds) this is 27
LLVM IR instructions per vector for Sigmoid instead of 39, 26 for Swish instead of 41.

:data:`sigmoid_f32` / :data:`swish_f32` are the scalar functions for ``@njit`` code (loops calling them
vectorize: every instruction has a vector form); :func:`emit_sigmoid` / :func:`emit_swish` the same code for
any ``float`` or ``<N x float>`` type, used by the GEMM microkernel (:mod:`.vec`). Both emit the same instructions without fast-math flags, so the fused
epilogue and the element-wise Sigmoid kernel give the same bits (an optimized graph equals the unoptimized
one, tests/unit/test_passes.py).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I32 = ir.IntType(32)

#: exp's argument range: n = rint(t * log2 e) stays in [-125, 127]
EXP_LO = -86.6
EXP_HI = 88.0
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375       # ln 2 rounded to 12 significant bits: n * _LN2_HI is exact
_LN2_LO = -2.12194440e-4    # ln 2 - _LN2_HI
#: P(r) of e**r = 1 + r + r**2 P(r), highest degree first
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _const(ty, value):
    v = float(np.float32(value))
    return ir.Constant(ty, [v] * ty.count) if isinstance(ty, ir.VectorType) else ir.Constant(ty, v)


def _suffix(ty):
    return f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"


def _int_type(ty):
    return ir.VectorType(_I32, ty.count) if isinstance(ty, ir.VectorType) else _I32


def _unary(builder, name, x):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(x.type, [x.type]),
                                        f"{name}.{_suffix(x.type)}")
    return builder.call(fn, [x])


def fmuladd(builder, a, b, c):
    """``a * b + c`` as ``llvm.fmuladd`` (fused where the FPU has FMA; never a libcall)."""
    ty = a.type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]),
                                        f"llvm.fmuladd.{_suffix(ty)}")
    return builder.call(fn, [a, b, c])


def _exp_tail(builder, t):
    """(exp(clamp(t)), t > EXP_HI) for ``float`` or ``<N x float>`` t: exp of t clamped to [EXP_LO, EXP_HI] (a
    NaN t counts as EXP_LO) and the lanes above EXP_HI, where the callers' results are their limits."""
    ty = t.type
    lo, hi = _const(ty, EXP_LO), _const(ty, EXP_HI)
    above = builder.fcmp_ordered(">", t, hi)
    t = builder.select(builder.fcmp_ordered(">=", t, lo), t, lo)
    t = builder.select(above, hi, t)
    n = _unary(builder, "llvm.rint", builder.fmul(t, _const(ty, _LOG2E)))
    r = fmuladd(builder, n, _const(ty, -_LN2_HI), t)
    r = fmuladd(builder, n, _const(ty, -_LN2_LO), r)
    p = _const(ty, _EXP_P[0])
    for c in _EXP_P[1:]:
        p = fmuladd(builder, p, r, _const(ty, c))
    er = builder.fadd(fmuladd(builder, p, builder.fmul(r, r), r), _const(ty, 1.0))  # e**r in [0.7, 1.42]
    ity = _int_type(ty)
    shift = builder.shl(builder.fptosi(n, ity), ir.Constant(ity, [23] * ty.count)
                        if isinstance(ty, ir.VectorType) else ir.Constant(_I32, 23))
    return builder.bitcast(builder.add(builder.bitcast(er, ity), shift), ty), above


def _one_plus_exp_neg(builder, z):
    """1 + exp(-z), +inf where -z > EXP_HI (so that 1 / it and x / it reach their limits 0 and -0 or NaN)."""
    ty = z.type
    e, above = _exp_tail(builder, builder.fsub(_const(ty, 0.0), z))
    return builder.select(above, _const(ty, np.inf), builder.fadd(_const(ty, 1.0), e))


def emit_sigmoid(builder, x):
    """1 / (1 + exp(-x)) for ``float`` or ``<N x float>`` x; a NaN lane gives NaN."""
    ty = x.type
    y = builder.fdiv(_const(ty, 1.0), _one_plus_exp_neg(builder, x))
    return builder.select(builder.fcmp_unordered("uno", x, x), x, y)


def emit_swish(builder, x, alpha):
    """x * sigmoid(alpha * x) as ``x / (1 + exp(-alpha * x))``: one rounding less than the product, and the
    form LLVM's fast-math rewrites ``x * (1 / d)`` into inside a loop, so every path writes it so. NaN gives
    NaN, +inf gives +inf, -inf NaN (alpha > 0: -inf * 0, as numpy's x * sigmoid(x))."""
    return builder.fdiv(x, _one_plus_exp_neg(builder, builder.fmul(x, alpha)))


@intrinsic
def sigmoid_f32(typingctx, x):
    """1 / (1 + exp(-x)) for a float32 (see the module docstring)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return emit_sigmoid(builder, args[0])

    return types.float32(types.float32), codegen


@intrinsic
def swish_f32(typingctx, x, alpha):
    """x * sigmoid(alpha * x) for float32s, as :func:`emit_swish`."""
    if x != types.float32 or alpha != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return emit_swish(builder, args[0], args[1])

    return types.float32(types.float32, types.float32), codegen


if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1 (coverage runs): intrinsics cannot run as Python
    def _one_plus_exp_neg_py(z):
        t = -z
        if t > np.float32(EXP_HI):
            return np.float32(np.inf)
        t = t if t >= np.float32(EXP_LO) else np.float32(EXP_LO)  # NaN -> EXP_LO
        return np.float32(np.float32(1.0) + np.float32(np.exp(np.float64(t))))

    def sigmoid_f32(x):
        x = np.float32(x)
        return x if x != x else np.float32(np.float32(1.0) / _one_plus_exp_neg_py(x))

    def swish_f32(x, alpha):
        x = np.float32(x)
        with np.errstate(invalid="ignore"):
            return np.float32(x / _one_plus_exp_neg_py(np.float32(np.float32(alpha) * x)))
