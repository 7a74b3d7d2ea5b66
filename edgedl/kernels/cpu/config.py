"""Numba compilation flags shared by every CPU kernel: change them here, nowhere else.

``FASTMATH`` turns on the LLVM fast-math flags that let loops vectorize and fuse (contraction into FMA,
reassociation of reductions, reciprocal approximations, no signed zeros) but deliberately leaves out
``nnan`` and ``ninf``: NaN and Inf must propagate through the kernels as they do in onnxruntime.
"""
from __future__ import annotations

import os
import platform

#: LLVM fast-math flags (a set, as ``numba.njit(fastmath=...)`` accepts); no nnan / ninf
FASTMATH = {"contract", "arcp", "nsz", "reassoc"}

#: a kernel runs its parallel (prange) variant only when it has at least this many multiply-adds
#: (or element operations) to do; below it the thread fork/join costs more than it saves
PARALLEL_MIN_WORK = int(os.environ.get("EDGEDL_PARALLEL_MIN_WORK", 1 << 18))

#: the same threshold for a GEMM (convolutions included), tunable on its own: a GEMM split costs more than
#: a plain loop (a ~3 us launch of a many-argument parallel kernel, B panels read across cores). With
#: even splits (see gemm._plan_tasks) 2 threads beat one from ~0.4M multiply-adds on (measured, 2 cores)
GEMM_PARALLEL_MIN_WORK = int(os.environ.get("EDGEDL_GEMM_PARALLEL_MIN_WORK", 1 << 18))

#: spatial convolutions (group 1, stride 1 or 2) read their zero-padded image in place instead of packing
#: im2col panels (kernels/cpu/conv_flat.py); EDGEDL_CONV_FLAT=0 or a target's ``conv_flat = false`` turns it off
CONV_FLAT = os.environ.get("EDGEDL_CONV_FLAT", "1") != "0"
#: group-1 convolutions with small output planes and many channels put the pixels on the GEMM's rows
#: (kernels/cpu/conv_pixels.py); EDGEDL_CONV_PIXELS=0 turns it off
CONV_PIXELS = os.environ.get("EDGEDL_CONV_PIXELS", "1") != "0"
#: group-1 convolutions with at most 4 input channels (first layers) run direct, output rows from the padded
#: image (kernels/cpu/conv_direct.py); EDGEDL_CONV_DIRECT=0 turns it off
CONV_DIRECT = os.environ.get("EDGEDL_CONV_DIRECT", "1") != "0"

#: numba.njit keyword arguments used by every kernel (lazy compilation, on-disk cache)
NJIT = dict(cache=True, fastmath=FASTMATH, nogil=True)
#: the same, for kernels with a prange loop
NJIT_PARALLEL = dict(NJIT, parallel=True)
#: integer and quantization kernels whose float steps must round exactly as written (no contraction into
#: FMA, no reciprocal approximation): float requantization must give the same bits as its numpy reference
NJIT_EXACT = dict(cache=True, nogil=True)
NJIT_EXACT_PARALLEL = dict(NJIT_EXACT, parallel=True)

MACHINE = platform.machine().lower()
IS_ARM = MACHINE.startswith(("arm", "aarch64"))


def _gemm_tile() -> tuple[int, int, int, int]:
    """(MR, VW, NV, UNROLL) of the GEMM microkernel: MR rows x NV vectors of VW floats, k loop unrolled.

    64-bit x86 and ARM (32 vector registers on AArch64 / AVX-512, 16 ymm on AVX2): 6 x 16 as 12
    <8 x float> accumulators, no spills (checked in the assembly for x86-64 and AArch64). 32-bit ARM
    (16 NEON q registers): 4 x 8 as 8 <4 x float>, unrolled twice only (more unrolling spills).
    ``EDGEDL_GEMM_TILE="MR,VW,NV,UNROLL"`` overrides it; compiled kernels are cached on disk with the
    tile baked in, so use a fresh NUMBA_CACHE_DIR with an override."""
    env = os.environ.get("EDGEDL_GEMM_TILE")
    if env:
        mr, vw, nv, unroll = (int(v) for v in env.split(","))
        return mr, vw, nv, unroll
    if MACHINE in ("x86_64", "amd64", "aarch64", "arm64"):
        return 6, 8, 2, 4
    return 4, 4, 2, 2


GEMM_TILE = _gemm_tile()


_get_num_threads = None


def num_threads() -> int:
    """``numba.get_num_threads()`` without its per-call pool launch check (0.76 -> 0.12 µs measured; kernels
    ask once per call, and small models make thousands of calls a second)."""
    global _get_num_threads
    if _get_num_threads is None:
        import numba

        numba.get_num_threads()  # launches the thread pool once
        try:
            from numba.np.ufunc.parallel import _get_num_threads as getter
        except ImportError:  # a Numba without the private accessor: the public call
            getter = numba.get_num_threads
        _get_num_threads = getter
    return int(_get_num_threads())


#: the tuning values a target may set (see :func:`apply_tuning`), with the defaults above
_DEFAULTS = {"PARALLEL_MIN_WORK": PARALLEL_MIN_WORK, "GEMM_PARALLEL_MIN_WORK": GEMM_PARALLEL_MIN_WORK,
             "CONV_FLAT": CONV_FLAT, "CONV_PIXELS": CONV_PIXELS}
_applied = None
#: the int8 GEMM kernel a target prefers ("sdot", "pairs", ...; None: the best the codegen has). An
#: ``EDGEDL_I8_KERNEL`` set by the user wins; a kernel the codegen cannot run is never picked
#: (see gemm_i8.preferred_kernel)
INT8_KERNEL: str | None = None


def apply_tuning(parallel_min_work: int | None = None, gemm_parallel_min_work: int | None = None,
                 int8_kernel: str | None = None, conv_flat: bool | None = None,
                 conv_pixels: bool | None = None) -> None:
    """Set the choices kernels read when they are prepared and bound (None: the defaults above, which the
    ``EDGEDL_*`` variables set). A target's choices arrive here from :meth:`edgedl.Model.plan`; plans built
    before keep the choices they were built with until they rebind."""
    global PARALLEL_MIN_WORK, GEMM_PARALLEL_MIN_WORK, INT8_KERNEL, CONV_FLAT, CONV_PIXELS, _applied
    key = (parallel_min_work, gemm_parallel_min_work, int8_kernel, conv_flat, conv_pixels)
    if key == _applied:
        return
    PARALLEL_MIN_WORK = int(parallel_min_work or _DEFAULTS["PARALLEL_MIN_WORK"])
    GEMM_PARALLEL_MIN_WORK = int(gemm_parallel_min_work or _DEFAULTS["GEMM_PARALLEL_MIN_WORK"])
    INT8_KERNEL = int8_kernel
    CONV_FLAT = _DEFAULTS["CONV_FLAT"] if conv_flat is None else bool(conv_flat)
    CONV_PIXELS = _DEFAULTS["CONV_PIXELS"] if conv_pixels is None else bool(conv_pixels)
    _applied = key


def apply_target(target) -> None:
    """:func:`apply_tuning` with a target's choices (None: the defaults)."""
    if target is None:
        apply_tuning()
    else:
        apply_tuning(target.parallel_min_work, target.gemm_parallel_min_work, target.int8_kernel,
                     getattr(target, "conv_flat", None), getattr(target, "conv_pixels", None))
