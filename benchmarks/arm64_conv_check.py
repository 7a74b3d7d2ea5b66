"""The float convolution strategies on the Pi's instruction set: results against the float64 reference, and
what the hot loops compile to.

Run under the emulated arm64 Debian (``../shared/tools/arm64``), once per Pi core, on an empty kernel cache
(only code compiled in this process can be read):

    ../shared/tools/arm64 'pip install -q -e . && NUMBA_CACHE_DIR=$(mktemp -d) NUMBA_CPU_NAME=cortex-a72 \
        python benchmarks/arm64_conv_check.py'

For each strategy (gemm, flat, pixels, gemv) it runs a few shapes through ``Conv2d`` and reports the largest
error against ``conv2d_ref``, relative to the largest output. Then it reads the assembly of the GEMM task (every
microkernel variant: packed panels, rows read in place through the row table as the flat strategy does, the narrow
panel), of the flat strategy's phase-split copy and of the pixels strategy's im2col^T gather, and counts the
instructions that matter: vector multiply-adds and their form (``fmla`` by element of a loaded A vector, or
against a broadcast), vector loads, stack stores inside the code (spills), and the de-interleaving the stride-2
copy should become. On x86 it counts the AVX forms instead. Prints one JSON object.
"""
from __future__ import annotations

import json
import platform
import re
from collections import Counter

import numpy as np

SHAPES = {  # strategy -> [(N, C_in, C_out, H, W, k, stride, pads)]
    "gemm": [(1, 3, 16, 33, 31, 3, 2, 1), (2, 16, 24, 9, 9, 1, 1, 0)],
    "flat": [(1, 16, 24, 20, 19, 3, 1, 1), (1, 16, 20, 21, 18, 3, 2, 1)],
    "pixels": [(1, 64, 96, 7, 7, 3, 1, 1), (2, 32, 64, 14, 14, 3, 2, 1)],
    "gemv": [(1, 256, 80, 1, 1, 1, 1, 0)],
}


def check_results() -> dict:
    from edgedl.kernels.cpu.conv import Conv2d, conv2d_ref

    rng = np.random.default_rng(0)
    out = {}
    for strategy, cases in SHAPES.items():
        worst = 0.0
        for n, c, m, h, w, k, s, p in cases:
            x = rng.standard_normal((n, c, h, w)).astype(np.float32)
            wt = (rng.standard_normal((m, c, k, k)) * 0.2).astype(np.float32)
            b = rng.standard_normal(m).astype(np.float32)
            conv = Conv2d(wt, b, x.shape, strides=(s, s), pads=(p,) * 4, act="Relu",
                          strategy=None if strategy == "gemv" else strategy)
            assert conv.strategy == strategy, (strategy, conv.strategy)
            y = np.empty(conv.out_shape, np.float32)
            conv(x, y)
            ref = np.maximum(conv2d_ref(x, wt, b, strides=(s, s), pads=(p,) * 4), 0)
            worst = max(worst, float(np.max(np.abs(y - ref)) / np.max(np.abs(ref))))
        out[strategy] = worst
    return out


ARM = {"fmla_by_element": r"\bfmla\s+v\d+\.4s,\s*v\d+\.4s,\s*v\d+\.s\[\d\]",
       "fmla_vector": r"\bfmla\s+v\d+\.4s,\s*v\d+\.4s,\s*v\d+\.4s",
       "ld1r_broadcast": r"\bld1r\b", "vector_loads": r"\b(ldr|ldp|ldur)\s+q\d+|\bld1\s+\{v",
       "spills_to_stack": r"\b(str|stp|stur)\s+q\d+.*\[sp", "uzp1_deinterleave": r"\buzp1\b",
       "ld2_deinterleave": r"\bld2\b", "scalar_fmadd": r"\bfmadd\s+s\d+"}
X86 = {"vfmadd_ymm": r"vfmadd\d+ps\s+.*ymm", "vfmadd_zmm": r"vfmadd\d+ps\s+.*zmm",
       "vbroadcastss": r"vbroadcastss", "spills_to_stack": r"vmovups\s+%?[yz]mm\d+,\s*.*\(%?rsp\)|"
                                                           r"vmovups\s+.*\[rsp.*\],\s*[yz]mm",
       "vshufps_vpermps": r"vshufps|vpermps|vpermt2ps"}


def count(asm: str | None) -> dict:
    if not asm:
        return {"compiled_here": False}
    pats = ARM if platform.machine().lower() in ("aarch64", "arm64") else X86
    c = Counter()
    for line in asm.splitlines():
        for name, pat in pats.items():
            if re.search(pat, line):
                c[name] += 1
    return {"compiled_here": True, "lines": asm.count("\n"), **dict(c)}


def read_assembly() -> dict:
    from edgedl.kernels.cpu import conv_flat, conv_pixels, gemm

    out = {"gemm_task": count(gemm._run_task.inspect_asm())}
    for name, fns in (("flat_phase_copy", (conv_flat._pad_serial, conv_flat._pad_parallel)),
                      ("pixels_gather", (conv_pixels._pack_serial, conv_pixels._pack_parallel))):
        # whichever ran here (the parallel one when the work passed config.PARALLEL_MIN_WORK)
        asm = "\n".join(fn.inspect_asm(sig) for fn in fns for sig in fn.signatures)
        out[name] = count(asm or None)
    return out


def main() -> None:
    from numba.core import config

    result = {"machine": platform.machine(), "cpu_name": config.CPU_NAME, "max_error": check_results(),
              "assembly": read_assembly()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
