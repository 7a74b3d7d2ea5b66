"""Check, on the Pi's instruction set, that a board profile sets the codegen and that the kernels agree.

Run under the emulated arm64 Debian (``../shared/tools/arm64``) with a profile selected by name only (the
profile sets Numba's CPU and features; no NUMBA_CPU_NAME by hand):

    ../shared/tools/arm64 'pip install -q -e . && EDGEDL_TARGET=rpi5 python benchmarks/arm64_profile_check.py'

It runs the bundled keyword model and checks it against onnxruntime's output saved beside it (computed on
x86), quantizes the digits CNN to int8 and runs it, then reads the assembly of every int8 GEMM kernel
compiled and reports whether it uses ``sdot`` (the Pi 5 profile promises it; the Pi 3/4 profiles must not use it; only
code compiled in this process can be read, so run it once on an empty cache). A second run shows the cache
the first one prepared serving the profile: ``kernels.cache_misses`` is 0.
Prints one JSON line; exits 1 when a check fails. The same prepared cache then serves every process that
runs with that profile (Numba's cache index is keyed by the CPU name and features the profile sets).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main() -> int:
    import edgedl
    from edgedl import board
    from edgedl.runtime.warmup import kernel_cache_stats

    kws = edgedl.load(os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"))
    target = kws.target
    from numba.core import config

    out = {"target": target.name, "codegen": board.codegen_status.get(target.name), "cpu_name": config.CPU_NAME,
           "features": config.CPU_FEATURES}
    spec = np.load(os.path.join(ROOT, "examples", "spectrogram.npy"))
    ref = np.load(os.path.join(ROOT, "examples", "kws_tc_resnet_reference.npy"))
    y = kws(spec)
    out["kws_max_rel_err"] = float(np.max(np.abs(y - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
    digits = edgedl.load(os.path.join(ROOT, "examples", "digits_cnn.onnx"))
    calib = np.load(os.path.join(ROOT, "examples", "digits_calibration.npz"))
    x = calib[calib.files[0]][:64]
    q = edgedl.quantize(digits, [x[i:i + 16] for i in range(0, 64, 16)], progress=False)
    f32 = digits(x[:32])
    i8 = q(x[:32])
    out["int8_agreement"] = float(np.mean(f32.argmax(1) == i8.argmax(1)))
    from edgedl.kernels.cpu import gemm_i8

    out["int8_kernel"] = gemm_i8.KERNEL_NAMES[gemm_i8.preferred_kernel()]
    # NOTE: Numba gives no assembly for code loaded from its cache: only kernels compiled in this process
    # (the first run with an empty cache) are read
    sdot = []
    # the GEMM tasks are native functions (edgedl/kernels/cpu/native.py); the drivers only call them
    for fn in gemm_i8.usable_natives():
        asm = fn.inspect_asm()
        if asm is not None:
            sdot.append((fn.__qualname__, "sdot" in asm or "udot" in asm))
    for name in dir(gemm_i8):
        d = getattr(gemm_i8, name)
        if not hasattr(d, "inspect_asm") or not hasattr(d, "signatures"):
            continue
        for sig in d.signatures:
            if d.stats.cache_hits.get(sig):
                continue
            asm = d.inspect_asm(sig)
            sdot.append((name, "sdot" in asm or "udot" in asm))
    out["asm_with_sdot"] = sorted(n for n, has in sdot if has)
    out["asm_without_sdot"] = sorted(n for n, has in sdot if not has)
    out["kernels"] = kernel_cache_stats()
    ok = out["kws_max_rel_err"] < 1e-4 and out["int8_agreement"] >= 0.9
    if target.codegen_cpu:  # the profile's codegen must be the one in force
        ok = ok and out["codegen"] in ("applied", "same") and config.CPU_NAME == target.codegen_cpu
    if sdot and target.int8_kernel == "sdot":
        ok = ok and bool(out["asm_with_sdot"])
    elif sdot and target.int8_kernel == "pairs":
        ok = ok and not out["asm_with_sdot"]
    out["ok"] = bool(ok)
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
