"""Read the machine code of every CPU kernel a set of models runs, on the Pi's instruction set.

Run under the emulated arm64 Debian (``../shared/tools/arm64``), once per core, on an empty kernel cache (Numba
only gives the assembly of code compiled in the running process; the script points NUMBA_CACHE_DIR at a fresh
folder and turns compile-ahead off):

    ../shared/tools/arm64 'pip install -q -e . && NUMBA_CPU_NAME=cortex-a72 python benchmarks/arm64_asm_survey.py'

It builds models from :mod:`edgedl.zoo` (MobileNetV2-like, ResNet-like, the keyword CNN, a transformer block, a
segmentation decoder, an NHWC CNN), runs each in fp32 and quantized to int8 at 1 and 2 threads, checks the
float results against onnx's own numpy evaluator (``onnx.reference``) and int8 against fp32
(top-1 agreement), then lists every kernel that was compiled: its vector float and integer instructions
(``fmla v.4s``, ``sdot``, ``smlal``, ...), its scalar float arithmetic and its loads/stores, so a kernel that
stayed scalar on NEON stands out. Prints a table (``--json FILE`` writes the counts too); timings under
emulation mean nothing, so it reports none.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="edgedl-asm-"))
os.environ["EDGEDL_COMPILE_AHEAD"] = "0"

import numpy as np  # noqa: E402

#: instruction classes counted per kernel (AArch64 mnemonics, NEON forms on vector registers)
PATTERNS = {
    "vec_fma": r"\bfml[as]\s+v\d+\.[248]s",
    "vec_farith": r"\bf(?:add|sub|mul|div|max|min|maxnm|minnm|neg|abs|sqrt|cmgt|cmge|cmeq)\s+v\d+\.[248]s",
    "vec_fcvt": r"\b(?:fcvt\w*|scvtf|ucvtf|frint\w)\s+v\d+\.",
    "sdot": r"\b[su]dot\s+v\d+",
    "vec_mla_long": r"\b[su]ml[as]l2?\s+v\d+",
    "vec_mul_long": r"\b[su]mull2?\s+v\d+",
    "vec_int": r"\b(?:add|sub|mul|mla|sqrdmulh|sqdmulh|srshl|sshl|ushl|srshr|sshr|ushr|shl|sqxtn2?|sqxtun2?|"
               r"uqxtn2?|xtn2?|sxtl2?|uxtl2?|saddw2?|uaddw2?|sadalp|uadalp|addp|smax|smin|umax|umin|cmgt|cmhi|"
               r"tbl|tbx)\s+v\d+",
    "vec_select": r"\b(?:bsl|bit|bif)\s+v\d+",
    "vec_load": r"\b(?:ld[1-4]r?|ldr\s+q|ldp\s+q|ldur\s+q)\b",
    "vec_store": r"\b(?:st[1-4]|str\s+q|stp\s+q|stur\s+q)\b",
    "scalar_farith": r"\bf(?:add|sub|mul|madd|msub|nmadd|div|max|min|maxnm|minnm)\s+s\d+",
    "scalar_int_mul": r"\b(?:mul|madd|smull|umull|smaddl)\s+[wx]\d+",
    "calls": r"\bblr?\s",
}


def count_asm(asm: str) -> dict:
    """Instruction counts by class (see :data:`PATTERNS`) in ``asm``."""
    out = {key: len(re.findall(pat, asm)) for key, pat in PATTERNS.items()}
    out["lines"] = asm.count("\n")
    return out


def verdict(c: dict) -> str:
    """'vector' when the kernel has NEON arithmetic and at most as much scalar float arithmetic, 'mixed' when it
    has both (vector loops with scalar remainders, or a scalar part: read it), 'scalar' when it does float
    arithmetic with none in vector registers, '-' when it has little arithmetic of either kind (setup, data
    movement: 'vector' instead when it moves data with vector loads and stores)."""
    vec = (c["vec_fma"] + c["vec_farith"] + c["sdot"] + c["vec_mla_long"] + c["vec_mul_long"] + c["vec_int"]
           + c["vec_select"])
    sca = c["scalar_farith"]
    if vec + sca < 4:
        return "vector" if c["vec_load"] + c["vec_store"] >= 4 else "-"
    if vec == 0:
        return "scalar"
    return "vector" if vec >= sca else "mixed"


def models():
    """(name, ONNX model, {input: array}) of the survey."""
    from edgedl import zoo

    rng = np.random.default_rng(0)

    def inputs(model):
        out = {}
        for vi in model.graph.input:
            shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
        return out

    built = [("mobilenet_v2_like", zoo.mobilenet_v2_like(resolution=64, width=0.5, classes=10)),
             ("resnet_like", zoo.resnet_like(resolution=32, widths=(16, 32, 64, 64), blocks=(1, 1, 1, 1),
                                             classes=10)),
             ("kws_tc_resnet", zoo.kws_tc_resnet()),
             ("transformer_block", zoo.transformer_block()),
             ("seg_decoder", zoo.seg_decoder()),
             ("nhwc_cnn", zoo.nhwc_cnn(height=32, width=32))]
    return [(name, m, inputs(m)) for name, m in built]


def run_models(threads=(1, 2)) -> list[dict]:
    """Run every survey model in fp32 and int8 at each thread count; returns the accuracy rows."""
    from onnx.reference import ReferenceEvaluator

    import edgedl

    rows = []
    for name, model, feeds in models():
        raw = model.SerializeToString()
        ref = [np.asarray(r, np.float64) for r in ReferenceEvaluator(model).run(None, feeds)]
        for t in threads:
            m = edgedl.load(raw, num_threads=t)
            got = list(m.run(feeds).values())
            err = max(float(np.max(np.abs(np.asarray(g, np.float64) - r)) / max(float(np.max(np.abs(r))), 1e-30))
                      for g, r in zip(got, ref))
            rows.append({"model": name, "precision": "fp32", "threads": t, "max_rel_err": err})
        calib = [{k: np.random.default_rng(i).standard_normal(v.shape).astype(np.float32) for k, v in feeds.items()}
                 for i in range(4)]
        q = edgedl.quantize(edgedl.load(raw), calib, progress=False)
        for t in threads:
            edgedl.set_num_threads(t)
            f32 = next(iter(edgedl.load(raw, num_threads=t).run(feeds).values()))
            i8 = next(iter(q.run(feeds).values()))
            rows.append({"model": name, "precision": "int8", "threads": t,
                         "top1_agree": float(np.mean(np.argmax(f32.reshape(f32.shape[0], -1), -1)
                                                     == np.argmax(i8.reshape(i8.shape[0], -1), -1))),
                         "rel_err_vs_fp32": float(np.max(np.abs(i8 - f32)) / max(float(np.max(np.abs(f32))), 1e-30))})
        edgedl.set_num_threads(None)
    return rows


def _dispatchers(mod):
    """(name, dispatcher) of a module: its @njit functions, and those its factories keep in dicts or tuples
    (the element-wise kernels per op code, the serial/parallel pairs)."""
    for attr, obj in vars(mod).items():
        if hasattr(obj, "signatures") and hasattr(obj, "inspect_asm"):
            yield attr, obj
        elif isinstance(obj, dict):
            for key, val in obj.items():
                for i, item in enumerate(val if isinstance(val, tuple) else (val,)):
                    if hasattr(item, "signatures") and hasattr(item, "inspect_asm"):
                        yield f"{attr}[{key}][{i}]:{getattr(item, '__name__', '')}", item


def compiled_kernels() -> list[tuple[str, str]]:
    """(qualified name, assembly) of every kernel this process compiled: the @njit dispatchers of the CPU
    kernel modules (each signature with an array argument: scalar helpers such as ``sigmoid_f32`` are compiled
    on their own only when called from Python, and are inlined into the kernels that use them) and the native
    functions."""
    import importlib
    import pkgutil

    from numba import types

    import edgedl.kernels.cpu as cpu
    from edgedl.kernels.cpu.native import all_native

    out = []
    seen = set()
    for info in pkgutil.iter_modules(cpu.__path__):
        mod = importlib.import_module(f"edgedl.kernels.cpu.{info.name}")
        for attr, obj in _dispatchers(mod):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            for sig in obj.signatures:
                if obj.stats.cache_hits.get(sig) or not any(isinstance(t, types.Array) for t in sig):
                    continue
                try:
                    asm = obj.inspect_asm(sig)
                except Exception:  # noqa: BLE001 - a dispatcher that cannot show its code is skipped
                    continue
                out.append((f"{info.name}.{attr}", asm))
    for fn in all_native():
        asm = fn.inspect_asm()
        if asm:
            out.append((f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__} (native)", asm))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the accuracy rows and the per-kernel counts here")
    args = ap.parse_args(argv)
    import platform

    from numba.core import config

    rows = run_models()
    kernels = {}
    for name, asm in compiled_kernels():
        c = count_asm(asm)
        prev = kernels.get(name)
        if prev is None or c["lines"] > prev["lines"]:  # one row per kernel: its largest specialization
            kernels[name] = c
    print(f"machine {platform.machine()}, Numba CPU {config.CPU_NAME or 'host'}, {len(kernels)} kernels compiled")
    for r in rows:
        print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    cols = ["vec_fma", "vec_farith", "sdot", "vec_mla_long", "vec_mul_long", "vec_int", "vec_select", "vec_load",
            "vec_store", "scalar_farith", "calls", "lines"]
    print(f"{'kernel':58s} {'verdict':7s} " + " ".join(f"{c[:9]:>9s}" for c in cols))
    for name in sorted(kernels, key=lambda n: (verdict(kernels[n]), n)):
        c = kernels[name]
        print(f"{name[:58]:58s} {verdict(c):7s} " + " ".join(f"{c[k]:9d}" for k in cols))
    bad = [r for r in rows if (r["precision"] == "fp32" and r["max_rel_err"] > 1e-4)
           or (r["precision"] == "int8" and r["top1_agree"] < 1.0 and r["rel_err_vs_fp32"] > 0.2)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": config.CPU_NAME, "rows": rows, "kernels": kernels}, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
