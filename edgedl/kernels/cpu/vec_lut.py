"""LLVM-IR kernels of the 8-bit table lookup ``out[i] = table[x[i]]`` (usable inside @njit code only).

A 256-entry byte table does not fit one vector register, so each kernel keeps the whole table in
registers (loaded once, before the loop) and combines lookups over parts of it:

* x86 with AVX-512 VBMI (Ice Lake and later, Zen 4): 64 bytes per step. ``vpermi2b``
  (``llvm.x86.avx512.vpermi2var.qi.512(a, idx, b)``) looks up 64 indices at once in the 128 bytes a||b,
  using the low 7 bits of each index; one lookup in table bytes 0..127 and one in 128..255, then a select
  on the index's top bit (``idx <s 0``). Four zmm hold the table. LLVM may encode either lookup as
  ``vpermt2b`` (the same operation, overwriting a table operand instead of the index).
* AArch64 (every core has NEON: Raspberry Pi 3/4/5): 16 bytes per step. ``tbl`` with four registers
  (``llvm.aarch64.neon.tbl4.v16i8``) looks up table bytes 0..63 and gives 0 for indices >= 64; three
  ``tbx`` (``llvm.aarch64.neon.tbx4.v16i8``, which keeps the previous byte where the index is >= 64) look
  up bytes 64..127, 128..191, 192..255 with idx - 64, idx - 128, idx - 192: byte arithmetic wraps, so
  each shifted index is < 64 exactly for its own quarter. Sixteen q registers hold the table.
* Elsewhere (x86 without VBMI, e.g. AVX2 only; 32-bit ARM, whose ``vtbl`` reaches 32 bytes only) the
  scalar loop of :mod:`.lut` runs: a ``vpshufb`` scheme would need 16 shuffles, compares and blends per
  32 bytes, about what the scalar loop costs (one load-load-store per byte).

:data:`LUT_KERNELS` lists what the compilation target offers, decided once at import from the CPU name
and features Numba compiles for (``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` honoured,
:func:`~.vec_i8dot.target_cpu`): Numba's on-disk cache is keyed on those, so a cached kernel never meets a
CPU it was not compiled for. The intrinsic of an unavailable instruction compiles to ``return 0`` (no
bytes done: the caller's scalar loop does them all), so both may be named in code compiled for any CPU.

:data:`LUT_KERNEL` is the kernel :func:`~.lut.apply_table` uses unless told otherwise:
``EDGEDL_LUT_KERNEL=auto|scalar|vbmi|neon`` picks one of the available ones (it changes no compiled code,
only a run-time argument of the kernel).

Note: Numba's on-disk cache of a kernel is keyed on its own source file only; after editing this file,
delete the ``*.nbi``/``*.nbc`` files of lut in ``__pycache__`` (or change lut.py).
"""
from __future__ import annotations

import os
import warnings

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .vec import _arg_readers, _counted_loop, _splat
from .vec_i8dot import _feature_map, target_cpu

__all__ = ["LUT_SCALAR", "LUT_VBMI", "LUT_NEON", "LUT_NAMES", "LUT_KERNELS", "LUT_KERNEL", "lut_kernels_for",
           "available_lut_kernels", "lut_vbmi", "lut_neon"]

#: lookup kernels: the scalar loop (portable), AVX-512 VBMI, AArch64 NEON
LUT_SCALAR, LUT_VBMI, LUT_NEON = 0, 1, 2
LUT_NAMES = {LUT_SCALAR: "scalar", LUT_VBMI: "vbmi", LUT_NEON: "neon"}
#: (bytes per vector, vectors per loop step) of each vector kernel.
#: NOTE: two vectors per step give two independent lookup chains (the NEON tbl -> tbx -> tbx -> tbx chain
#: is serial; in-order cores such as the Pi 3's Cortex-A53 cannot overlap steps by themselves)
_SHAPE = {LUT_VBMI: (64, 1), LUT_NEON: (16, 2)}

_I8 = ir.IntType(8)
_I64 = ir.IntType(64)


def lut_kernels_for(machine: str, cpu: str, feats: str) -> tuple[int, ...]:
    """The vector lookup kernels code compiled for (machine, LLVM CPU name, LLVM feature string) may use.
    x86 needs an explicit ``+avx512vbmi`` (with ``+avx512bw``, ``+avx512f``) in the features; AArch64 has
    NEON unless the features say ``-neon``."""
    f = _feature_map(feats)
    if machine in ("x86_64", "amd64"):
        # NOTE: a NUMBA_CPU_FEATURES string without these features means "none" here, as in vec_i8dot
        return (LUT_VBMI,) if f.get("avx512vbmi") and f.get("avx512bw") and f.get("avx512f") else ()
    if machine in ("aarch64", "arm64"):
        return (LUT_NEON,) if f.get("neon", True) else ()
    return ()


#: the vector lookup kernels the compilation target can run
LUT_KERNELS = lut_kernels_for(*target_cpu())


def available_lut_kernels() -> tuple[int, ...]:
    """Kernels :func:`~.lut.apply_table` accepts here, best first (the scalar loop always)."""
    return LUT_KERNELS + (LUT_SCALAR,)


def _default_kernel() -> int:
    want = os.environ.get("EDGEDL_LUT_KERNEL", "auto").lower()
    by_name = {v: k for k, v in LUT_NAMES.items()}
    if want == "auto":
        return available_lut_kernels()[0]
    if want not in by_name or by_name[want] not in available_lut_kernels():
        warnings.warn(f"EDGEDL_LUT_KERNEL={want!r} is not available here (have: "
                      f"{', '.join(LUT_NAMES[k] for k in available_lut_kernels())}); using the default",
                      stacklevel=2)
        return available_lut_kernels()[0]
    return by_name[want]


#: the kernel apply_table / bind_table use unless told otherwise (see the module doc)
LUT_KERNEL = _default_kernel()


def _c64(v):
    return ir.Constant(_I64, v)


def _emit_lookup(b, kind, tables, idx):
    """<W x i8> ``table[idx]`` for <W x i8> indices ``idx``, the table held in ``tables`` (W-byte parts)."""
    vt = idx.type
    if kind == LUT_VBMI:
        perm = cgutils.get_or_insert_function(b.module, ir.FunctionType(vt, [vt, vt, vt]),
                                              "llvm.x86.avx512.vpermi2var.qi.512")
        lo = b.call(perm, [tables[0], idx, tables[1]])  # table[idx & 127]
        hi = b.call(perm, [tables[2], idx, tables[3]])  # table[128 + (idx & 127)]
        return b.select(b.icmp_signed("<", idx, ir.Constant(vt, [0] * vt.count)), hi, lo)
    tbl = cgutils.get_or_insert_function(b.module, ir.FunctionType(vt, [vt] * 5), "llvm.aarch64.neon.tbl4.v16i8")
    tbx = cgutils.get_or_insert_function(b.module, ir.FunctionType(vt, [vt] * 6), "llvm.aarch64.neon.tbx4.v16i8")
    r = b.call(tbl, tables[0:4] + [idx])  # table[idx] for idx < 64, else 0
    for q in range(1, 4):
        # idx - 64q (mod 256) is < 64 exactly where 64q <= idx < 64q + 64 (as a signed byte: 64q - 256 for q >= 2)
        sh = b.sub(idx, _splat(b, vt, ir.Constant(_I8, (64 * q + 128) % 256 - 128)))
        r = b.call(tbx, [r] + tables[4 * q:4 * q + 4] + [sh])
    return r


def _make_lut(kind):
    vw, unroll = _SHAPE[kind]

    @intrinsic
    def lut_vec(typingctx, x, xoff, table, out, ooff, n):
        for arr in (x, table, out):
            if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.ndim == 1):
                return None
        if not all(isinstance(t, types.Integer) for t in (xoff, ooff, n)):
            return None
        sig = types.int64(x, xoff, table, out, ooff, n)

        def codegen(context, builder, signature, args):
            if kind not in LUT_KERNELS:  # not on this target: no bytes done (module doc)
                return _c64(0)
            b = builder
            i64, data = _arg_readers(context, builder, signature, args)
            xp = data(0, 1)  # (n,) input bytes
            tp = data(2)  # (256,) table bytes
            op = data(3, 4)  # (n,) output bytes
            n = i64(5)
            vt = ir.VectorType(_I8, vw)
            vp = vt.as_pointer()
            # the whole table in 256 / vw registers, loaded once
            tables = [b.load(b.bitcast(b.gep(tp, [_c64(vw * k)]), vp), align=1) for k in range(256 // vw)]

            def step(off):
                idx = b.load(b.bitcast(b.gep(xp, [off]), vp), align=1)
                b.store(_emit_lookup(b, kind, tables, idx), b.bitcast(b.gep(op, [off]), vp), align=1)

            # steps of unroll vectors, then single vectors; the last n % vw bytes are the caller's
            nblk = b.sdiv(n, _c64(vw * unroll))
            i, close = _counted_loop(b, nblk, "lut.blk")
            base = b.mul(i, _c64(vw * unroll))
            for u in range(unroll):
                step(b.add(base, _c64(vw * u)))
            close()
            head = b.mul(nblk, _c64(vw * unroll))
            nrest = b.sdiv(b.sub(n, head), _c64(vw))
            j, close = _counted_loop(b, nrest, "lut.vec")
            step(b.add(head, b.mul(j, _c64(vw))))
            close()
            done = b.add(head, b.mul(nrest, _c64(vw)))
            return b.select(b.icmp_signed(">", done, _c64(0)), done, _c64(0))  # n <= 0: nothing done

        return sig, codegen

    return lut_vec


#: ``lut_vbmi(x, xoff, table, out, ooff, n) -> done``: out[ooff + i] = table[x[xoff + i]] for i < done, done =
#: n rounded down to whole 64-byte vectors (0 where the target has no AVX-512 VBMI); x, table (256,), out:
#: 1-D uint8 arrays, C-contiguous, no bounds checks
lut_vbmi = _make_lut(LUT_VBMI)
#: ``lut_neon(x, xoff, table, out, ooff, n) -> done``: the same with 16-byte NEON vectors (0 off AArch64)
lut_neon = _make_lut(LUT_NEON)


if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1 (coverage runs): intrinsics cannot run as Python

    def _py_lut(kind):
        vw = _SHAPE[kind][0]

        def lut_vec(x, xoff, table, out, ooff, n):
            done = max(n, 0) // vw * vw if kind in LUT_KERNELS else 0
            out[ooff:ooff + done] = table[x[xoff:xoff + done]]
            return done

        return lut_vec

    lut_vbmi = _py_lut(LUT_VBMI)
    lut_neon = _py_lut(LUT_NEON)
