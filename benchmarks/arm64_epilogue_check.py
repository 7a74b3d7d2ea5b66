"""The GEMM microkernel's in-register activations on the Pi's instruction set: results and assembly.

Sigmoid and Swish run inside the microkernel as portable LLVM IR (``llvm.floor``, ``llvm.fabs``, an
exponent-bit ldexp): this runs every activation code through ``gemm`` on full and edge tiles against the
reference on the GEMM's own plain output, and counts what the exp polynomial became in the GEMM task's
assembly (``frintm`` on AArch64, ``vroundps``/``vrndscaleps`` on x86; no ``floorf`` calls). Under the emulated
arm64 Debian, on an empty kernel cache:

    ../shared/tools/arm64 'pip install -q -e . && NUMBA_CACHE_DIR=$(mktemp -d) NUMBA_CPU_NAME=cortex-a76 \
        python benchmarks/arm64_epilogue_check.py'

Prints one JSON object.
"""
from __future__ import annotations

import json
import platform
import re

import numpy as np


def main() -> dict:
    from edgedl.kernels.cpu import act as A
    from edgedl.kernels.cpu import gemm as G

    x = np.concatenate([np.linspace(-12, 12, 97), [-100.0, -87.5, -86.0, 0.0, 20.0, 88.0, 100.0, np.nan]])
    n = 21  # a full 16-column panel and an edge one
    a = np.resize(x.astype(np.float32), (-(-x.size // n) * n,)).reshape(-1, n)
    eye = np.eye(n, dtype=np.float32)
    plain = G.gemm(a, eye)
    names = {code: name for name, code in A.ACT_BY_NAME.items()}
    errors = {}
    for code in range(A.NUM_ACTS):
        alpha, beta = {A.ACT_CLIP: (-0.5, 0.7), A.ACT_LEAKY_RELU: (0.1, 0.0), A.ACT_HARD_SIGMOID: (0.2, 0.5),
                       A.ACT_ELU: (0.9, 0.0), A.ACT_SWISH: (1.0, 0.0)}.get(code, (0.0, 0.0))
        out = G.gemm(a, eye, act=code, alpha=alpha, beta=beta)
        ref = A.act_ref(plain.astype(np.float64), code, alpha, beta)
        ok = np.isfinite(ref)
        rel = np.abs(out[ok] - ref[ok]) / np.maximum(np.abs(ref[ok]), 1e-30)
        rel[np.abs(ref[ok]) < 1e-35] = 0.0  # flushed below exp's cutoff, as elementwise.exp_f32
        errors[names.get(code, "none")] = {
            "max_rel": float(rel.max()), "nan_kept": bool(np.array_equal(np.isnan(out), np.isnan(ref)))}
    asm = G._run_task.inspect_asm() or ""
    counts = {k: len(re.findall(p, asm)) for k, p in {
        "frintm": r"\bfrintm\b", "fabs": r"\bfabs\b", "fdiv": r"\bfdiv\b", "floorf_calls": r"floorf",
        "vround": r"\bv(round|rndscale)ps\b", "vdivps": r"\bvdivps\b"}.items()}
    return {"machine": platform.machine(), "errors_by_activation_code": errors, "gemm_task_asm": counts}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
