"""LLVM-IR kernels of the 8-bit GEMM on 4-way byte dot products (usable inside @njit code only).

**Instructions.** One instruction multiplies four bytes of an A row by four bytes of a B column and adds
the four products into an int32 lane:

* x86 with AVX-512 VNNI: ``vpdpbusd`` on zmm (``llvm.x86.avx512.vpdpbusd.512``, 64 multiply-adds),
  unsigned bytes (B, activations) x signed bytes (A, weights, broadcast from memory);
* x86 with AVX-VNNI, or AVX-512 VNNI on ymm: the same on ymm (``llvm.x86.avx512.vpdpbusd.256``, which
  LLVM encodes with VEX on AVX-VNNI cores);
* AArch64 with the dot product extension (Cortex-A55/A76: Pi 5): ``sdot`` (signed x signed,
  ``llvm.aarch64.neon.sdot.v4i32.v16i8``; the A operand is a lane of a register holding four rows).

Without them (Cortex-A72: Pi 4; x86 without VNNI) the GEMM runs the int16-pair tile of :mod:`.vec_i8`.
:data:`DOT_KERNELS` lists what the compilation target offers, decided once at import from the CPU name and
features Numba compiles for (``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` honoured): Numba's on-disk cache
is keyed on those, so a cached kernel never meets a CPU it was not compiled for. The kernel of an
unavailable instruction compiles to nothing (it is never called: :class:`~.gemm_i8.QGemm` only picks
available kernels), so every kernel may be named in code compiled for any CPU.

**Operands and zero points** (see :mod:`.gemm_i8`): bytes are packed raw (an XOR with 0x80 turns int8
into uint8 or back), and the zero points are corrected outside the k loop.

**Packed layouts** (k-quads): A ``ap[p*KQ*4*MR + q*4*MR + 4*r + t] = A[p*MR + r, 4*q + t]`` (int8), B
``bp[q*4*NR + 4*c + t] = B[4*q + t, col0 + c]`` (one panel), both zero padded to KQ = ceil(K/4) quads.

**The tile** (``dot_tile_<kernel>``): MR rows x NV vectors of VW int32 lanes, k loop over quads, then per
row the correction terms, and one of three stores: the raw int32 tile into a buffer, the int32 outputs
(plus bias), or the requantized 8-bit outputs (:func:`emit_requant`, every mode of
:func:`edgedl.quant.requant.requantize`, vectorized and exact) with a lane mask on a ragged last panel.
``requant_tile_pairs`` is the same epilogue for the int16-pair tile.

**B packing** (per panel of NR columns): ``pack_quads_<nr>`` interleaves four activation rows into k-quads
in registers (a (K, N) matrix: 1x1 convolutions, Gemm), ``pack_image_contig_<nr>`` /
``pack_image_segs_<nr>`` build a whole im2col panel of a convolution with one vector load per im2col row
(stride 1 and output width = input width) or per output-row segment (column stride 1 or 2), padding taps
selected by lane masks; ``copy_quads`` copies the rows of a (R, K) matrix (MatMul) as quads. Each can add
the column sums of the panel (for weight zero points).

Note: Numba's on-disk cache of a kernel is keyed on its own source file only; after editing this file,
delete the ``*.nbi``/``*.nbc`` files of gemm_i8 in ``__pycache__`` (or change gemm_i8.py).
"""
from __future__ import annotations

import os
import platform
import warnings

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .vec import _arg_readers, _counted_loop, _splat

__all__ = ["K_PAIRS", "K_VNNI512", "K_VNNI256", "K_SDOT", "KERNEL_NAMES", "DOT_KERNELS", "KERNEL_I8", "TILES",
           "B_SIGNED", "target_cpu", "dot_kernels_for", "emit_requant", "dot_tile_vnni512", "dot_tile_vnni256",
           "dot_tile_sdot", "requant_tile_pairs", "pack_quads_32", "pack_quads_16", "pack_quads_8s",
           "pack_image_contig_32", "pack_image_contig_16", "pack_image_contig_8s", "pack_image_segs_32",
           "pack_image_segs_16", "pack_image_segs_8s", "copy_quads"]

#: GEMM kernels: the int16-pair tile (portable), and the byte dot-product tiles
K_PAIRS, K_VNNI512, K_VNNI256, K_SDOT = 0, 1, 2, 3
KERNEL_NAMES = {K_PAIRS: "pairs", K_VNNI512: "vnni512", K_VNNI256: "vnni256", K_SDOT: "sdot"}

#: (MR, VW, NV) per dot kernel: MR rows x NV vectors of VW int32 lanes (NR = VW * NV columns).
#: NOTE: register budgets: AVX-512 has 32 zmm (8 x 2 = 16 accumulators, 2 B vectors, A broadcast from
#: memory); AVX-VNNI 16 ymm (4 x 2 = 8); AArch64 32 q registers (8 x 2 = 16 accumulators, 2 B and 2 A
#: registers per quad, A rows picked by lane: ``sdot v.4s, v.16b, v.4b[lane]``)
TILES = {K_VNNI512: (8, 16, 2), K_VNNI256: (4, 8, 2), K_SDOT: (8, 4, 2)}
#: B bytes are signed on AArch64 (sdot), unsigned on x86 (vpdpbusd)
B_SIGNED = {K_VNNI512: False, K_VNNI256: False, K_SDOT: True}

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()

# ---------------------------------------------------------------------------------------------------
# what the compilation target offers
# ---------------------------------------------------------------------------------------------------
#: AArch64 cores with the dot product extension (LLVM names), for when LLVM cannot be asked
_ARM_DOTPROD_CPUS = ("cortex-a55", "cortex-a65", "cortex-a75", "cortex-a76", "cortex-a77", "cortex-a78",
                     "cortex-a710", "cortex-a715", "cortex-a720", "cortex-x1", "cortex-x2", "cortex-x3", "cortex-x4",
                     "cortex-a510", "cortex-a520", "neoverse-n1", "neoverse-n2", "neoverse-v1", "neoverse-v2",
                     "apple-", "ampere1", "a64fx", "oryon", "exynos-m4", "exynos-m5", "tsv110")


def target_cpu() -> tuple[str, str, str]:
    """(machine, CPU name, feature string) that Numba compiles for: ``NUMBA_CPU_NAME`` /
    ``NUMBA_CPU_FEATURES`` if set, else the host's (as numba.core.codegen does)."""
    import llvmlite.binding as ll
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    cpu = config.CPU_NAME if config.CPU_NAME is not None else ll.get_host_cpu_name()
    feats = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return platform.machine().lower(), cpu, feats


def _feature_map(feats: str) -> dict[str, bool]:
    out = {}
    for f in feats.split(","):
        f = f.strip()
        if len(f) > 1 and f[0] in "+-":
            out[f[1:]] = f[0] == "+"
    return out


def _aarch64_cpu_has_dotprod(cpu: str, feats: str) -> bool:
    """Ask LLVM: compile a portable 4-way byte reduction for the target and look for ``sdot``."""
    import llvmlite.binding as ll

    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    src = """
declare <4 x i32> @llvm.vector.partial.reduce.add.v4i32.v16i32(<4 x i32>, <16 x i32>)
define <4 x i32> @probe(<4 x i32> %acc, <16 x i8> %b, <16 x i8> %c) {
  %be = sext <16 x i8> %b to <16 x i32>
  %ce = sext <16 x i8> %c to <16 x i32>
  %m = mul <16 x i32> %be, %ce
  %r = call <4 x i32> @llvm.vector.partial.reduce.add.v4i32.v16i32(<4 x i32> %acc, <16 x i32> %m)
  ret <4 x i32> %r
}"""
    try:
        mod = ll.parse_assembly(src)
        mod.verify()
        tm = ll.Target.from_triple("aarch64-unknown-linux-gnu").create_target_machine(cpu=cpu, features=feats, opt=2)
        asm = tm.emit_assembly(mod)
        return "sdot" in asm or "udot" in asm
    except Exception:  # an LLVM without the partial reduction: the table
        return cpu.lower().startswith(_ARM_DOTPROD_CPUS)


def dot_kernels_for(machine: str, cpu: str, feats: str) -> tuple[int, ...]:
    """The dot-product kernels code compiled for (machine, LLVM CPU name, LLVM feature string) may use,
    best first. An explicit ``+feature``/``-feature`` decides; on AArch64 a CPU name alone is resolved by
    LLVM (:func:`_aarch64_cpu_has_dotprod`)."""
    f = _feature_map(feats)
    if machine in ("x86_64", "amd64"):
        out = []
        if f.get("avx512vnni") and f.get("avx512bw") and f.get("avx512f"):
            out.append(K_VNNI512)
        if (f.get("avx512vnni") and f.get("avx512vl") and f.get("avx512bw")) or f.get("avxvnni"):
            out.append(K_VNNI256)
        # NOTE: a NUMBA_CPU_FEATURES string without these features means "none" here (LLVM would take the
        # CPU name's defaults): the portable kernel is the safe side of that doubt
        return tuple(out)
    if machine in ("aarch64", "arm64"):
        if "dotprod" in f:
            return (K_SDOT,) if f["dotprod"] else ()
        return (K_SDOT,) if _aarch64_cpu_has_dotprod(cpu, feats) else ()
    return ()


#: the dot-product kernels the compilation target can run, best first
DOT_KERNELS = dot_kernels_for(*target_cpu())


def _default_kernel() -> int:
    want = os.environ.get("EDGEDL_I8_KERNEL", "auto").lower()
    by_name = {v: k for k, v in KERNEL_NAMES.items()}
    if want == "auto":
        return DOT_KERNELS[0] if DOT_KERNELS else K_PAIRS
    if want not in by_name or (by_name[want] != K_PAIRS and by_name[want] not in DOT_KERNELS):
        warnings.warn(f"EDGEDL_I8_KERNEL={want!r} is not available here (have: pairs"
                      f"{''.join(', ' + KERNEL_NAMES[k] for k in DOT_KERNELS)}); using the default", stacklevel=2)
        return DOT_KERNELS[0] if DOT_KERNELS else K_PAIRS
    return by_name[want]


#: the kernel QGemm uses unless told otherwise (``EDGEDL_I8_KERNEL=pairs|vnni512|vnni256|sdot`` picks one
#: of the available ones; it changes no compiled code, only which compiled kernel runs)
KERNEL_I8 = _default_kernel()


# ---------------------------------------------------------------------------------------------------
# small IR helpers
# ---------------------------------------------------------------------------------------------------
def _c64(v):
    return ir.Constant(_I64, v)


def _c32(v):
    return ir.Constant(_I32, v)


def _vconst(ty, n, v):
    return ir.Constant(ir.VectorType(ty, n), [v] * n)


def _concat(b, vecs):
    """Concatenate equal vectors (a power-of-two count) into one."""
    while len(vecs) > 1:
        n = vecs[0].type.count
        mask = ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n)))
        vecs = [b.shuffle_vector(vecs[i], vecs[i + 1], mask) for i in range(0, len(vecs), 2)]
    return vecs[0]


def _clamp(b, v, lo, hi):
    v = b.select(b.icmp_signed("<", v, lo), lo, v)
    return b.select(b.icmp_signed(">", v, hi), hi, v)


def _lanes_below(b, n, rem):
    """<n x i1>: lane < rem (rem: i64)."""
    v32 = ir.VectorType(_I32, n)
    return b.icmp_signed("<", ir.Constant(v32, list(range(n))), _splat(b, v32, b.trunc(rem, _I32)))


def _masked_store(b, val, ptr, mask):
    vt = val.type
    name = f"llvm.masked.store.v{vt.count}{'i8' if vt.element == _I8 else 'i32'}.p0"
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), _I32, ir.VectorType(_I1, vt.count)]), name)
    b.call(fn, [val, ptr, _c32(1), mask])


def _masked_load(b, vt, ptr, mask, passthru):
    name = f"llvm.masked.load.v{vt.count}{'i8' if vt.element == _I8 else 'i32'}.p0"
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(vt, [vt.as_pointer(), _I32, ir.VectorType(_I1, vt.count), vt]), name)
    return b.call(fn, [ptr, _c32(1), mask, passthru])


def _store_quads(b, rows, dptr, nr, signed, want_cs, cp):
    """Interleave four k-rows (``rows``: <nr x i8> each) into nr k-quads stored at ``dptr`` (<4nr x i8>*);
    where ``want_cs`` (i1) holds, add each lane's four values (sign- or zero-extended) to the int32 column
    sums at ``cp`` (<nr x i32>*)."""
    pair = ir.Constant(ir.VectorType(_I32, 2 * nr), list(range(2 * nr)))
    lo = b.shuffle_vector(rows[0], rows[1], pair)
    hi = b.shuffle_vector(rows[2], rows[3], pair)
    mask = ir.Constant(ir.VectorType(_I32, 4 * nr), [t * nr + c for c in range(nr) for t in range(4)])
    b.store(b.shuffle_vector(lo, hi, mask), dptr, align=1)
    with b.if_then(want_cs):
        v32 = ir.VectorType(_I32, nr)
        ext = b.sext if signed else b.zext
        tot = b.add(b.add(ext(rows[0], v32), ext(rows[1], v32)), b.add(ext(rows[2], v32), ext(rows[3], v32)))
        b.store(b.add(b.load(cp, align=4), tot), cp, align=4)


def _int_arg(*ts):
    return all(isinstance(t, (types.Integer, types.Boolean)) for t in ts)


# ---------------------------------------------------------------------------------------------------
# requantization of int32 vectors (every mode of edgedl.quant.requant.requantize, exact)
# ---------------------------------------------------------------------------------------------------
#: rows of the per-row parameter table ``rp`` (int32, one column per output row, padded to whole tiles)
RP_ADD, RP_ADD_RAW, RP_AZ, RP_M0, RP_LEFT, RP_RIGHT, RP_T, RP_FSCALE = range(8)
RP_ROWS = 8
#: ``store`` argument of the tiles
ST_BUFFER, ST_REQUANT, ST_INT32 = 0, 1, 2


def emit_requant(b, mode, x, rp_at, zp, lo, hi):
    """<VW x i32> values ``x`` (accumulator + bias, exact int32) -> <VW x i8> outputs in requantization
    ``mode`` (0 double, 1 single, 2 float; a Python int), per-row parameters read by ``rp_at(row)`` (an
    i32). Bit-exact with :func:`edgedl.quant.requant.requantize`:

    * double rounding: ``SaturatingRoundingDoublingHighMul(x << left, m0)`` is ``(p + 2^30) >> 31`` with
      ``p = (x << left) * m0`` (for p < 0 the nudge ``1 - 2^30`` and C's truncating division give the same
      floor; ``m0 < 2^31`` never saturates: checked by the caller), then RoundingDivideByPOT as the
      reference does;
    * single rounding: ``(x * m0 + 2^(t-1)) >> t`` in int64, t = 31 - shift;
    * float: float32(x) * fscale in float32, clamped, rounded half to even (``llvm.rint``).

    The result is clamped to ``[lo - zp, hi - zp]`` before the zero point is added (no overflow)."""
    n = x.type.count
    v32 = ir.VectorType(_I32, n)
    v64 = ir.VectorType(_I64, n)
    vf = ir.VectorType(_F32, n)
    rlo = b.sub(lo, zp)
    rhi = b.sub(hi, zp)
    if mode == 2:
        fs = _splat(b, vf, b.bitcast(rp_at(RP_FSCALE), _F32))
        flo = _splat(b, vf, b.sitofp(rlo, _F32))
        fhi = _splat(b, vf, b.sitofp(rhi, _F32))
        rint = cgutils.get_or_insert_function(b.module, ir.FunctionType(vf, [vf]), f"llvm.rint.v{n}f32")
        f = b.fmul(b.sitofp(x, vf), fs)
        f = b.select(b.fcmp_ordered("<", f, flo), flo, f)
        f = b.select(b.fcmp_ordered(">", f, fhi), fhi, f)
        r = b.fptosi(b.call(rint, [f]), v32)
    elif mode == 1:
        m0 = b.sext(_splat(b, v32, rp_at(RP_M0)), v64)
        t = b.sext(_splat(b, v32, rp_at(RP_T)), v64)
        one = _vconst(_I64, n, 1)
        p = b.add(b.mul(b.sext(x, v64), m0), b.shl(one, b.sub(t, one)))
        r = _clamp(b, b.ashr(p, t), _splat(b, v64, rlo), _splat(b, v64, rhi))
        r = b.trunc(r, v32)
    else:
        m0 = b.sext(_splat(b, v32, rp_at(RP_M0)), v64)
        left = _splat(b, v32, rp_at(RP_LEFT))
        right = _splat(b, v32, rp_at(RP_RIGHT))
        one = _vconst(_I32, n, 1)
        p = b.mul(b.sext(b.shl(x, left), v64), m0)
        h = b.trunc(b.lshr(b.add(p, _vconst(_I64, n, 1 << 30)), _vconst(_I64, n, 31)), v32)
        mask = b.sub(b.shl(one, right), one)
        thr = b.add(b.ashr(mask, one), b.lshr(h, _vconst(_I32, n, 31)))
        r = b.add(b.ashr(h, right), b.zext(b.icmp_signed(">", b.and_(h, mask), thr), v32))
    if mode != 1:
        r = _clamp(b, r, _splat(b, v32, b.trunc(rlo, _I32)), _splat(b, v32, b.trunc(rhi, _I32)))
    return b.trunc(b.add(r, _splat(b, v32, b.trunc(zp, _I32))), ir.VectorType(_I8, n))


def _emit_stores(b, vals, mr, nv, vw, rp_at_row, store, out8, out32, ldo, mrows, ncols, tb,
                 zp, lo, hi, mode):
    """The tile's epilogue: ``vals[r][v]`` (<vw x i32>, corrections applied, no per-row addend yet) get
    the row addend (rp row ``RP_ADD`` for outputs, ``RP_ADD_RAW`` for the buffer) and are stored (see
    :func:`dot_tile`). ``rp_at_row(r, k)``: parameter k of tile row r (i32)."""
    nr = vw * nv
    fn = b.function
    bb_exit = fn.append_basic_block("epi.exit")
    bb_buf = fn.append_basic_block("epi.buffer")
    bb_i32 = fn.append_basic_block("epi.int32")
    bb_req = fn.append_basic_block("epi.requant")
    full = b.icmp_signed(">=", ncols, _c64(nr))
    sw = b.switch(store, bb_req)
    sw.add_case(ir.Constant(store.type, ST_BUFFER), bb_buf)
    sw.add_case(ir.Constant(store.type, ST_INT32), bb_i32)
    v32 = ir.VectorType(_I32, vw)

    def added(r, which):
        add = _splat(b, v32, rp_at_row(r, which))
        return [b.add(vals[r][v], add) for v in range(nv)]

    # raw buffer: every row and column (tb rows of nr int32)
    b.position_at_end(bb_buf)
    for r in range(mr):
        for v, val in enumerate(added(r, RP_ADD_RAW)):
            ptr = b.bitcast(b.gep(tb, [_c64(r * nr + v * vw)]), v32.as_pointer())
            b.store(val, ptr, align=4)
    b.branch(bb_exit)

    def store_rows(values_of_row, wide_ty, base):
        """values_of_row(r) -> one <nr x T> vector; stored at base + r*ldo (masked if not full)."""
        for r in range(mr):
            cond = b.icmp_signed("<", _c64(r), mrows) if r else None
            ctx = b.if_then(cond) if cond is not None else None
            if ctx is not None:
                ctx.__enter__()
            val = values_of_row(r)
            ptr = b.bitcast(b.gep(base, [b.mul(_c64(r), ldo)]), wide_ty.as_pointer())
            with b.if_else(full) as (then, otherwise):
                with then:
                    b.store(val, ptr, align=1)
                with otherwise:
                    _masked_store(b, val, ptr, _lanes_below(b, nr, ncols))
            if ctx is not None:
                ctx.__exit__(None, None, None)

    # int32 outputs (MODE_RAW): accumulator + bias, wrapping as an int32 store does
    b.position_at_end(bb_i32)
    store_rows(lambda r: _concat(b, added(r, RP_ADD)), ir.VectorType(_I32, nr), out32)
    b.branch(bb_exit)

    # 8-bit outputs, per requantization mode
    b.position_at_end(bb_req)
    bb_modes = [fn.append_basic_block(f"epi.mode{m}") for m in range(3)]
    msw = b.switch(mode, bb_modes[0])
    msw.add_case(ir.Constant(mode.type, 1), bb_modes[1])
    msw.add_case(ir.Constant(mode.type, 2), bb_modes[2])
    for m in range(3):
        b.position_at_end(bb_modes[m])

        def row8(r, m=m):
            return _concat(b, [emit_requant(b, m, x, lambda k, r=r: rp_at_row(r, k), zp, lo, hi)
                               for x in added(r, RP_ADD)])

        store_rows(row8, ir.VectorType(_I8, nr), out8)
        b.branch(bb_exit)
    b.position_at_end(bb_exit)


# ---------------------------------------------------------------------------------------------------
# the dot-product tile
# ---------------------------------------------------------------------------------------------------
def _make_dot_tile(kind):
    mr, vw, nv = TILES[kind]
    nr = vw * nv

    @intrinsic
    def dot_tile(typingctx, kq, ap, a_off, bp, b_off, rp, row0, cs, colcorr, store, out, o_off, ldo, mrows, ncols,
                 tb, zp, lo, hi, mode):
        if not (isinstance(ap, types.Array) and ap.dtype == types.int8 and isinstance(bp, types.Array)
                and bp.dtype == types.uint8 and isinstance(rp, types.Array) and rp.dtype == types.int32
                and rp.ndim == 2 and isinstance(cs, types.Array) and cs.dtype == types.int32
                and isinstance(tb, types.Array) and tb.dtype == types.int32 and isinstance(out, types.Array)
                and out.dtype in (types.int8, types.uint8, types.int32)):
            return None
        if not _int_arg(kq, a_off, b_off, row0, colcorr, store, o_off, ldo, mrows, ncols, zp, lo, hi, mode):
            return None
        sig = types.void(kq, ap, a_off, bp, b_off, rp, row0, cs, colcorr, store, out, o_off, ldo, mrows, ncols,
                         tb, zp, lo, hi, mode)

        def codegen(context, builder, signature, args):
            if kind not in DOT_KERNELS:  # never called on this target (module doc)
                return context.get_dummy_value()
            at = signature.args
            b = builder
            i64, data = _arg_readers(context, builder, signature, args)
            n = i64(0)
            a0 = data(1, 2)
            b0 = data(3, 4)
            rp_arr = context.make_array(at[5])(context, builder, value=args[5])
            rp_data = rp_arr.data
            rp_ld = b.extract_value(rp_arr.strides, 0)
            rp_ld = b.sdiv(rp_ld, _c64(4))
            r0 = i64(6)
            cs0 = data(7)
            colcorr = b.icmp_signed("!=", i64(8), _c64(0))
            store = b.trunc(i64(9), _I32)
            out_ptr = data(10, 11)
            out8 = b.bitcast(out_ptr, _I8.as_pointer())
            out32 = b.bitcast(out_ptr, _I32.as_pointer())
            ldo, mrows, ncols = i64(12), i64(13), i64(14)
            tb = data(15)
            zp, lo, hi = i64(16), i64(17), i64(18)
            mode = b.trunc(i64(19), _I32)

            v32 = ir.VectorType(_I32, vw)
            x86 = kind in (K_VNNI512, K_VNNI256)
            if x86:
                dot = cgutils.get_or_insert_function(
                    b.module, ir.FunctionType(v32, [v32, v32, v32]), f"llvm.x86.avx512.vpdpbusd.{32 * vw}")
            else:
                v8 = ir.VectorType(_I8, 16)
                dot = cgutils.get_or_insert_function(
                    b.module, ir.FunctionType(v32, [v32, v8, v8]), "llvm.aarch64.neon.sdot.v4i32.v16i8")

            fn = b.function
            bb_entry = b.block
            bb_loop = fn.append_basic_block("dot.loop")
            bb_done = fn.append_basic_block("dot.done")
            zero = ir.Constant(v32, [0] * vw)
            b.cbranch(b.icmp_signed(">", n, _c64(0)), bb_loop, bb_done)

            b.position_at_end(bb_loop)
            q = b.phi(_I64)
            accs = [b.phi(v32) for _ in range(mr * nv)]
            brow = b.gep(b0, [b.mul(q, _c64(4 * nr))])
            arow = b.gep(a0, [b.mul(q, _c64(4 * mr))])
            new = []
            if x86:
                bv = [b.load(b.bitcast(b.gep(brow, [_c64(4 * vw * v)]), v32.as_pointer()), align=1)
                      for v in range(nv)]
                for r in range(mr):
                    a = b.load(b.bitcast(b.gep(arow, [_c64(4 * r)]), _I32.as_pointer()), align=1)
                    asp = _splat(b, v32, a)
                    for v in range(nv):
                        new.append(b.call(dot, [accs[r * nv + v], bv[v], asp]))
            else:
                v8 = ir.VectorType(_I8, 16)
                bv = [b.load(b.bitcast(b.gep(brow, [_c64(16 * v)]), v8.as_pointer()), align=1) for v in range(nv)]
                groups = [b.load(b.bitcast(b.gep(arow, [_c64(16 * g)]), v32.as_pointer()), align=1)
                          for g in range(mr // 4)]
                for r in range(mr):
                    lane = ir.Constant(ir.VectorType(_I32, 4), [r % 4] * 4)
                    asp = b.bitcast(b.shuffle_vector(groups[r // 4], ir.Constant(v32, ir.Undefined), lane), v8)
                    for v in range(nv):
                        new.append(b.call(dot, [accs[r * nv + v], bv[v], asp]))
            q_next = b.add(q, _c64(1))
            bb_end = b.block
            b.cbranch(b.icmp_signed("<", q_next, n), bb_loop, bb_done)
            q.add_incoming(_c64(0), bb_entry)
            q.add_incoming(q_next, bb_end)
            for acc, nxt in zip(accs, new):
                acc.add_incoming(zero, bb_entry)
                acc.add_incoming(nxt, bb_end)

            b.position_at_end(bb_done)
            final = []
            for k in range(mr * nv):
                phi = b.phi(v32)
                phi.add_incoming(zero, bb_entry)
                phi.add_incoming(new[k], bb_end)
                final.append(phi)

            def rp_at_row(r, k):
                idx = b.add(b.mul(_c64(k), rp_ld), b.add(r0, _c64(r)))
                return b.load(b.gep(rp_data, [idx]))

            # column correction: - az[row] * colsum[col] (weights with a zero point)
            bb_pre = b.block
            bb_cc = fn.append_basic_block("dot.colcorr")
            bb_vals = fn.append_basic_block("dot.vals")
            b.cbranch(colcorr, bb_cc, bb_vals)
            b.position_at_end(bb_cc)
            csv = [b.load(b.bitcast(b.gep(cs0, [_c64(v * vw)]), v32.as_pointer()), align=4) for v in range(nv)]
            corr = []
            for r in range(mr):
                az = _splat(b, v32, rp_at_row(r, RP_AZ))
                for v in range(nv):
                    corr.append(b.sub(final[r * nv + v], b.mul(az, csv[v])))
            bb_cc_end = b.block
            b.branch(bb_vals)
            b.position_at_end(bb_vals)
            vals = []
            for r in range(mr):
                row = []
                for v in range(nv):
                    phi = b.phi(v32)
                    phi.add_incoming(final[r * nv + v], bb_pre)
                    phi.add_incoming(corr[r * nv + v], bb_cc_end)
                    row.append(phi)
                vals.append(row)
            _emit_stores(b, vals, mr, nv, vw, rp_at_row, store, out8, out32, ldo, mrows, ncols, tb, zp, lo, hi,
                         mode)
            return context.get_dummy_value()

        return sig, codegen

    return dot_tile


#: ``dot_tile_<kernel>(kq, ap, a_off, bp, b_off, rp, row0, cs, colcorr, store, out, o_off, ldo, mrows, ncols, tb,
#: zp, lo, hi, mode)``: one MR x NR tile over ``kq`` k-quads of A (ap from a_off) and B (bp from b_off):
#: ``acc = A.B + rp[RP_ADD(_RAW), row0 + r] - (colcorr ? rp[RP_AZ, row0 + r] * cs[c] : 0)``, then ``store``:
#: ST_BUFFER: tb[r*NR + c] (every row and column, RP_ADD_RAW); ST_INT32: out[o_off + r*ldo + c] (int32);
#: ST_REQUANT: the requantized 8-bit value in ``mode`` (rp rows RP_M0...); both for r < mrows, c < ncols.
dot_tile_vnni512 = _make_dot_tile(K_VNNI512)
dot_tile_vnni256 = _make_dot_tile(K_VNNI256)
dot_tile_sdot = _make_dot_tile(K_SDOT)


def _make_requant_tile(mr, vw, nv):
    @intrinsic
    def requant_tile(typingctx, c, c_off, rp, row0, store, out, o_off, ldo, mrows, ncols, tb, zp, lo, hi, mode):
        if not (isinstance(c, types.Array) and c.dtype == types.int32 and isinstance(rp, types.Array)
                and rp.dtype == types.int32 and rp.ndim == 2 and isinstance(out, types.Array)
                and out.dtype in (types.int8, types.uint8, types.int32)):
            return None
        if not _int_arg(c_off, row0, store, o_off, ldo, mrows, ncols, zp, lo, hi, mode):
            return None
        sig = types.void(c, c_off, rp, row0, store, out, o_off, ldo, mrows, ncols, tb, zp, lo, hi, mode)

        def codegen(context, builder, signature, args):
            at = signature.args
            b = builder
            i64, data = _arg_readers(context, builder, signature, args)
            c0 = data(0, 1)
            rp_arr = context.make_array(at[2])(context, builder, value=args[2])
            rp_ld = b.sdiv(b.extract_value(rp_arr.strides, 0), _c64(4))
            r0 = i64(3)
            store = b.trunc(i64(4), _I32)
            out_ptr = data(5, 6)
            v32 = ir.VectorType(_I32, vw)
            vals = [[b.load(b.bitcast(b.gep(c0, [_c64(r * vw * nv + v * vw)]), v32.as_pointer()), align=4)
                     for v in range(nv)] for r in range(mr)]

            def rp_at_row(r, k):
                idx = b.add(b.mul(_c64(k), rp_ld), b.add(r0, _c64(r)))
                return b.load(b.gep(rp_arr.data, [idx]))

            _emit_stores(b, vals, mr, nv, vw, rp_at_row, store, b.bitcast(out_ptr, _I8.as_pointer()),
                         b.bitcast(out_ptr, _I32.as_pointer()), i64(7), i64(8), i64(9), data(10), i64(11), i64(12),
                         i64(13), b.trunc(i64(14), _I32))
            return context.get_dummy_value()

        return sig, codegen

    return requant_tile


#: ``requant_tile_pairs(c, c_off, rp, row0, store, out, o_off, ldo, mrows, ncols, tb, zp, lo, hi, mode)``: the
#: epilogue of :func:`dot_tile` on an int32 tile c[c_off + r*NR + j] of the int16-pair kernel (4 x 16)
requant_tile_pairs = _make_requant_tile(4, 8, 2)


# ---------------------------------------------------------------------------------------------------
# packing of B panels
# ---------------------------------------------------------------------------------------------------
def _make_pack_quads(nr, signed):
    @intrinsic
    def pack_quads(typingctx, dst, doff, src, soff, ld, flip, cs, want_cs):
        if not (isinstance(dst, types.Array) and dst.dtype == types.uint8 and isinstance(src, types.Array)
                and src.dtype in (types.int8, types.uint8) and isinstance(cs, types.Array)
                and cs.dtype == types.int32):
            return None
        if not _int_arg(doff, soff, ld, flip, want_cs):
            return None
        sig = types.void(dst, doff, src, soff, ld, flip, cs, want_cs)

        def codegen(context, builder, signature, args):
            b = builder
            i64, data = _arg_readers(context, builder, signature, args)
            d = b.bitcast(data(0, 1), _I8.as_pointer())
            s = b.bitcast(data(2, 3), _I8.as_pointer())
            ld = i64(4)
            flip = _splat(b, ir.VectorType(_I8, nr), b.trunc(i64(5), _I8))
            v8 = ir.VectorType(_I8, nr)
            rows = [b.xor(b.load(b.bitcast(b.gep(s, [b.mul(ld, _c64(t))]), v8.as_pointer()), align=1), flip)
                    for t in range(4)]
            _store_quads(b, rows, b.bitcast(d, ir.VectorType(_I8, 4 * nr).as_pointer()), nr, signed,
                         b.icmp_signed("!=", i64(7), _c64(0)),
                         b.bitcast(data(6), ir.VectorType(_I32, nr).as_pointer()))
            return context.get_dummy_value()

        return sig, codegen

    return pack_quads


@intrinsic
def copy_quads(typingctx, dst, doff, dstride, src, soff, nq, flip):
    """``copy_quads(dst, doff, dstride, src, soff, nq, flip)``: for i < nq, the 4 bytes src[soff + 4i ..]
    XOR ``flip`` (per byte) -> dst[doff + i*dstride ..] (a row of an activation matrix into k-quads)."""
    if not (isinstance(dst, types.Array) and dst.dtype == types.uint8 and isinstance(src, types.Array)
            and src.dtype in (types.int8, types.uint8)):
        return None
    if not _int_arg(doff, dstride, soff, nq, flip):
        return None
    sig = types.void(dst, doff, dstride, src, soff, nq, flip)

    def codegen(context, builder, signature, args):
        b = builder
        i64, data = _arg_readers(context, builder, signature, args)
        d = b.bitcast(data(0, 1), _I8.as_pointer())
        s = b.bitcast(data(3, 4), _I8.as_pointer())
        f8 = b.and_(i64(6), _c64(0xFF))
        f32 = b.trunc(b.mul(f8, _c64(0x01010101)), _I32)
        stride = i64(2)
        i, close = _counted_loop(b, i64(5), "copyq")
        v = b.load(b.bitcast(b.gep(s, [b.mul(i, _c64(4))]), _I32.as_pointer()), align=1)
        b.store(b.xor(v, f32), b.bitcast(b.gep(d, [b.mul(i, stride)]), _I32.as_pointer()), align=1)
        close()
        return context.get_dummy_value()

    return sig, codegen


#: ``pack_quads_<nr>(dst, doff, src, soff, ld, flip, cs, want_cs)``: one k-quad of a B panel: the rows
#: src[soff + t*ld : + NR] (t < 4, bytes XOR ``flip``) interleaved into dst[doff : doff + 4*NR]
#: (``dst[doff + 4c + t]``); with ``want_cs``, cs[c] += the four (B-domain) values of column c
pack_quads_32 = _make_pack_quads(32, False)
pack_quads_16 = _make_pack_quads(16, False)
pack_quads_8s = _make_pack_quads(8, True)


def _make_pack_image_contig(nr, signed):
    @intrinsic
    def pack_image_contig(typingctx, bp, x, total, col0, kq, k, ktab, oy, ox, h, w, bz, flip, cs, want_cs):
        if not (isinstance(bp, types.Array) and bp.dtype == types.uint8 and isinstance(x, types.Array)
                and x.dtype in (types.int8, types.uint8) and isinstance(ktab, types.Array)
                and ktab.dtype == types.int64 and ktab.ndim == 2 and isinstance(oy, types.Array)
                and oy.dtype == types.int32 and isinstance(ox, types.Array) and ox.dtype == types.int32
                and isinstance(cs, types.Array) and cs.dtype == types.int32):
            return None
        if not _int_arg(total, col0, kq, k, h, w, bz, flip, want_cs):
            return None
        sig = types.void(bp, x, total, col0, kq, k, ktab, oy, ox, h, w, bz, flip, cs, want_cs)

        def codegen(context, builder, signature, args):
            b = builder
            at = signature.args
            i64, data = _arg_readers(context, builder, signature, args)
            d0 = b.bitcast(data(0), _I8.as_pointer())
            xb = b.bitcast(data(1), _I8.as_pointer())
            total, col0, kq, k = i64(2), i64(3), i64(4), i64(5)
            kt = context.make_array(at[6])(context, builder, value=args[6])
            kt_ld = b.sdiv(b.extract_value(kt.strides, 0), _c64(8))
            v8 = ir.VectorType(_I8, nr)
            v32 = ir.VectorType(_I32, nr)
            oyv = b.load(b.bitcast(data(7), v32.as_pointer()), align=4)
            oxv = b.load(b.bitcast(data(8), v32.as_pointer()), align=4)
            hv = _splat(b, v32, b.trunc(i64(9), _I32))
            wv = _splat(b, v32, b.trunc(i64(10), _I32))
            bz = _splat(b, v8, b.trunc(i64(11), _I8))
            flip = _splat(b, v8, b.trunc(i64(12), _I8))
            want_cs = b.icmp_signed("!=", i64(14), _c64(0))
            cp = b.bitcast(data(13), v32.as_pointer())
            zero8 = ir.Constant(v8, [0] * nr)
            fn = b.function

            def row(kk):
                """the B-domain bytes of im2col row kk over the panel's lanes (0 past K)"""
                bb_in = fn.append_basic_block("img.row")
                bb_fast = fn.append_basic_block("img.fast")
                bb_slow = fn.append_basic_block("img.slow")
                bb_val = fn.append_basic_block("img.val")
                bb_out = fn.append_basic_block("img.out")
                bb_pre = b.block
                b.cbranch(b.icmp_signed("<", kk, k), bb_in, bb_out)
                b.position_at_end(bb_in)
                off = b.load(b.gep(kt.data, [b.add(b.mul(_c64(3), kt_ld), kk)]))
                dy = b.trunc(b.load(b.gep(kt.data, [b.add(b.mul(_c64(4), kt_ld), kk)])), _I32)
                dx = b.trunc(b.load(b.gep(kt.data, [b.add(b.mul(_c64(5), kt_ld), kk)])), _I32)
                yy = b.add(oyv, _splat(b, v32, dy))
                xx = b.add(oxv, _splat(b, v32, dx))
                valid = b.and_(b.icmp_unsigned("<", yy, hv), b.icmp_unsigned("<", xx, wv))
                start = b.add(col0, off)
                inside = b.and_(b.icmp_signed(">=", start, _c64(0)), b.icmp_signed("<=", b.add(start, _c64(nr)), total))
                ptr = b.bitcast(b.gep(xb, [start]), v8.as_pointer())
                b.cbranch(inside, bb_fast, bb_slow)
                b.position_at_end(bb_fast)
                r1 = b.load(ptr, align=1)
                b.branch(bb_val)
                b.position_at_end(bb_slow)
                r2 = _masked_load(b, v8, ptr, valid, zero8)
                b.branch(bb_val)
                b.position_at_end(bb_val)
                raw = b.phi(v8)
                raw.add_incoming(r1, bb_fast)
                raw.add_incoming(r2, bb_slow)
                val = b.select(valid, b.xor(raw, flip), bz)
                bb_val_end = b.block
                b.branch(bb_out)
                b.position_at_end(bb_out)
                res = b.phi(v8)
                res.add_incoming(zero8, bb_pre)
                res.add_incoming(val, bb_val_end)
                return res

            q, close = _counted_loop(b, kq, "img")
            rows = [row(b.add(b.mul(q, _c64(4)), _c64(t))) for t in range(4)]
            dptr = b.bitcast(b.gep(d0, [b.mul(q, _c64(4 * nr))]), ir.VectorType(_I8, 4 * nr).as_pointer())
            _store_quads(b, rows, dptr, nr, signed, want_cs, cp)
            close()
            return context.get_dummy_value()

        return sig, codegen

    return pack_image_contig


#: ``pack_image_contig_<nr>(bp, x, total, col0, kq, k, ktab, oy, ox, h, w, bz, flip, cs, want_cs)``: a whole B
#: panel of a convolution whose output pixels read consecutive input pixels (stride 1, output width = input
#: width): im2col row kk of lane c is ``x[col0 + c + ktab[3, kk]]`` (flat) when ``0 <= oy[c] + ktab[4, kk] < h``
#: and ``0 <= ox[c] + ktab[5, kk] < w``, else ``bz`` (a padding tap); rows past k are 0.
pack_image_contig_32 = _make_pack_image_contig(32, False)
pack_image_contig_16 = _make_pack_image_contig(16, False)
pack_image_contig_8s = _make_pack_image_contig(8, True)


def _make_pack_image_segs(nr, signed):
    @intrinsic
    def pack_image_segs(typingctx, bp, x, total, kq, k, ktab, segs, nseg, oxs, h, w, sw, bz, flip, cs, want_cs):
        if not (isinstance(bp, types.Array) and bp.dtype == types.uint8 and isinstance(x, types.Array)
                and x.dtype in (types.int8, types.uint8) and isinstance(ktab, types.Array)
                and ktab.dtype == types.int64 and ktab.ndim == 2 and isinstance(segs, types.Array)
                and segs.dtype == types.int64 and segs.ndim == 2 and isinstance(oxs, types.Array)
                and oxs.dtype == types.int32 and isinstance(cs, types.Array) and cs.dtype == types.int32):
            return None
        if not _int_arg(total, kq, k, nseg, h, w, sw, bz, flip, want_cs):
            return None
        sig = types.void(bp, x, total, kq, k, ktab, segs, nseg, oxs, h, w, sw, bz, flip, cs, want_cs)

        def codegen(context, builder, signature, args):
            b = builder
            at = signature.args
            i64, data = _arg_readers(context, builder, signature, args)
            d0 = b.bitcast(data(0), _I8.as_pointer())
            xb = b.bitcast(data(1), _I8.as_pointer())
            total, kq, k = i64(2), i64(3), i64(4)
            kt = context.make_array(at[5])(context, builder, value=args[5])
            kt_ld = b.sdiv(b.extract_value(kt.strides, 0), _c64(8))
            sg = context.make_array(at[6])(context, builder, value=args[6])
            sg_ld = b.sdiv(b.extract_value(sg.strides, 0), _c64(8))
            nseg = i64(7)
            v8 = ir.VectorType(_I8, nr)
            v32 = ir.VectorType(_I32, nr)
            wide = ir.VectorType(_I8, 2 * nr)
            oxv = b.load(b.bitcast(data(8), v32.as_pointer()), align=4)
            h, w, sw = i64(9), i64(10), i64(11)
            wv = _splat(b, v32, b.trunc(w, _I32))
            two = b.icmp_signed("==", sw, _c64(2))
            bz = _splat(b, v8, b.trunc(i64(12), _I8))
            flip = _splat(b, v8, b.trunc(i64(13), _I8))
            want_cs = b.icmp_signed("!=", i64(15), _c64(0))
            cp = b.bitcast(data(14), v32.as_pointer())
            zero8 = ir.Constant(v8, [0] * nr)
            lanes = ir.Constant(v32, list(range(nr)))
            even = ir.Constant(v32, [2 * c for c in range(nr)])
            wmask_idx = ir.Constant(ir.VectorType(_I32, 2 * nr), [c // 2 for c in range(2 * nr)])
            wmask_even = ir.Constant(ir.VectorType(_I1, 2 * nr), [c % 2 == 0 for c in range(2 * nr)])
            fn = b.function

            def kt_at(row, kk):
                return b.load(b.gep(kt.data, [b.add(b.mul(_c64(row), kt_ld), kk)]))

            def sg_at(row, s):
                return b.load(b.gep(sg.data, [b.add(b.mul(_c64(row), sg_ld), s)]))

            def segment(row, s, plane, dy, dx):
                """merge segment s of im2col row (plane, dy, dx) into the vector ``row``"""
                yy = b.add(sg_at(0, s), dy)
                c0 = b.trunc(sg_at(1, s), _I32)
                c1 = b.trunc(sg_at(2, s), _I32)
                xs = sg_at(3, s)  # input column of lane 0 if it belonged to this segment (before dx)
                bb_pre = b.block
                bb_in = fn.append_basic_block("seg.in")
                bb_out = fn.append_basic_block("seg.out")
                y_ok = b.and_(b.icmp_signed(">=", yy, _c64(0)), b.icmp_signed("<", yy, h))
                b.cbranch(y_ok, bb_in, bb_out)
                b.position_at_end(bb_in)
                in_seg = b.and_(b.icmp_signed(">=", lanes, _splat(b, v32, c0)),
                                b.icmp_signed("<", lanes, _splat(b, v32, c1)))
                valid = b.and_(in_seg, b.icmp_unsigned("<", b.add(oxv, _splat(b, v32, b.trunc(dx, _I32))), wv))
                start = b.add(b.add(plane, b.mul(yy, w)), b.add(xs, dx))
                span = b.select(two, _c64(2 * nr), _c64(nr))
                inside = b.and_(b.icmp_signed(">=", start, _c64(0)), b.icmp_signed("<=", b.add(start, span), total))
                ptr = b.gep(xb, [start])
                bb_f1 = fn.append_basic_block("seg.f1")
                bb_f2 = fn.append_basic_block("seg.f2")
                bb_m1 = fn.append_basic_block("seg.m1")
                bb_m2 = fn.append_basic_block("seg.m2")
                bb_fast = fn.append_basic_block("seg.fast")
                bb_slow = fn.append_basic_block("seg.slow")
                bb_join = fn.append_basic_block("seg.join")
                b.cbranch(inside, bb_fast, bb_slow)
                b.position_at_end(bb_fast)
                b.cbranch(two, bb_f2, bb_f1)
                b.position_at_end(bb_slow)
                b.cbranch(two, bb_m2, bb_m1)
                b.position_at_end(bb_f1)
                r1 = b.load(b.bitcast(ptr, v8.as_pointer()), align=1)
                b.branch(bb_join)
                b.position_at_end(bb_f2)
                r2 = b.shuffle_vector(b.load(b.bitcast(ptr, wide.as_pointer()), align=1),
                                      ir.Constant(wide, ir.Undefined), even)
                b.branch(bb_join)
                b.position_at_end(bb_m1)
                r3 = _masked_load(b, v8, b.bitcast(ptr, v8.as_pointer()), valid, zero8)
                b.branch(bb_join)
                b.position_at_end(bb_m2)
                wm = b.and_(b.shuffle_vector(valid, ir.Constant(valid.type, ir.Undefined), wmask_idx), wmask_even)
                r4 = b.shuffle_vector(_masked_load(b, wide, b.bitcast(ptr, wide.as_pointer()), wm,
                                                   ir.Constant(wide, [0] * (2 * nr))),
                                      ir.Constant(wide, ir.Undefined), even)
                b.branch(bb_join)
                b.position_at_end(bb_join)
                raw = b.phi(v8)
                raw.add_incoming(r1, bb_f1)
                raw.add_incoming(r2, bb_f2)
                raw.add_incoming(r3, bb_m1)
                raw.add_incoming(r4, bb_m2)
                merged = b.select(valid, b.xor(raw, flip), row)
                bb_in_end = b.block
                b.branch(bb_out)
                b.position_at_end(bb_out)
                res = b.phi(v8)
                res.add_incoming(row, bb_pre)
                res.add_incoming(merged, bb_in_end)
                return res

            def im2col_row(kk):
                """the B-domain bytes of im2col row kk over the panel's lanes (bz at padding taps, 0 past K)"""
                bb_pre = b.block
                bb_in = fn.append_basic_block("segrow.in")
                bb_loop = fn.append_basic_block("segrow.loop")
                bb_done = fn.append_basic_block("segrow.done")
                bb_out = fn.append_basic_block("segrow.out")
                b.cbranch(b.icmp_signed("<", kk, k), bb_in, bb_out)
                b.position_at_end(bb_in)
                plane, dy, dx = kt_at(0, kk), kt_at(4, kk), kt_at(5, kk)
                b.cbranch(b.icmp_signed(">", nseg, _c64(0)), bb_loop, bb_done)
                b.position_at_end(bb_loop)
                s = b.phi(_I64)
                acc = b.phi(v8)
                s.add_incoming(_c64(0), bb_in)
                acc.add_incoming(bz, bb_in)
                nxt = segment(acc, s, plane, dy, dx)
                s_next = b.add(s, _c64(1))
                s.add_incoming(s_next, b.block)
                acc.add_incoming(nxt, b.block)
                bb_loop_end = b.block
                b.cbranch(b.icmp_signed("<", s_next, nseg), bb_loop, bb_done)
                b.position_at_end(bb_done)
                done = b.phi(v8)
                done.add_incoming(bz, bb_in)
                done.add_incoming(nxt, bb_loop_end)
                b.branch(bb_out)
                b.position_at_end(bb_out)
                res = b.phi(v8)
                res.add_incoming(zero8, bb_pre)
                res.add_incoming(done, bb_done)
                return res

            q, close = _counted_loop(b, kq, "segq")
            rows = [im2col_row(b.add(b.mul(q, _c64(4)), _c64(t))) for t in range(4)]
            dptr = b.bitcast(b.gep(d0, [b.mul(q, _c64(4 * nr))]), ir.VectorType(_I8, 4 * nr).as_pointer())
            _store_quads(b, rows, dptr, nr, signed, want_cs, cp)
            close()
            return context.get_dummy_value()

        return sig, codegen

    return pack_image_segs


#: ``pack_image_segs_<nr>(bp, x, total, kq, k, ktab, segs, nseg, oxs, h, w, sw, bz, flip, cs, want_cs)``: a whole
#: B panel of a convolution of column stride ``sw`` (1 or 2) whose output pixels lie on ``nseg`` output rows:
#: segment s covers lanes [segs[1, s], segs[2, s]) of one output row (segs[0, s] = oy*sh), lane c
#: of it reads input column ``segs[3, s] + c*sw + dx`` (segs[3, s] = (ox(c0) - c0)*sw); oxs[c] = ox*sw
#: per lane. im2col row kk = (plane ktab[0, kk], dy = ktab[4, kk], dx = ktab[5, kk]): bz at padding taps, 0 past k.
pack_image_segs_32 = _make_pack_image_segs(32, False)
pack_image_segs_16 = _make_pack_image_segs(16, False)
pack_image_segs_8s = _make_pack_image_segs(8, True)
