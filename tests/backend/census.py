"""Count onnx's backend tests that pass in edgedl and in onnxruntime, on the same harness.

    python tests/backend/census.py [--engine edgedl|onnxruntime|both] [--pattern REGEX] [--json FILE]

Runs every node test shipped in the onnx wheel (and the model tests that need no download) through
``edgedl.backend`` and/or ``onnxruntime.backend``, each test with a 60 s limit, and prints the pass counts, the
tests that pass in onnxruntime but not in edgedl (with edgedl's error), and the reverse count. Not a pytest file:
CI runs ``test_onnx_backend.py``; this is for the numbers in the issue notes and the README.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import unittest
import warnings

import onnx.backend.test

CLASSES = ("OnnxBackendNodeModelTest", "OnnxBackendSimpleModelTest", "OnnxBackendPyTorchConvertedModelTest",
           "OnnxBackendPyTorchOperatorModelTest")


class _Timeout(Exception):
    pass


def _alarm(*_):
    raise _Timeout()


def run(engine: str, pattern: str | None) -> dict[str, str]:
    if engine == "onnxruntime":
        import onnxruntime.backend as backend
    else:
        import edgedl.backend as backend
    bt = onnx.backend.test.BackendTest(backend, "census")
    bt.include(r"_cpu$")
    results = {}
    signal.signal(signal.SIGALRM, _alarm)
    for cname in CLASSES:
        cls = bt.test_cases[cname]
        for name in sorted(t for t in vars(cls) if t.endswith("_cpu")):
            if pattern and not re.search(pattern, name):
                continue
            outcome = unittest.TestResult()
            signal.alarm(60)
            try:
                cls(name).run(outcome)
            except _Timeout:
                results[name] = "timeout"
                continue
            finally:
                signal.alarm(0)
            bad = outcome.errors or outcome.failures
            results[name] = "pass" if not bad and not outcome.skipped else \
                ("skip" if not bad else bad[0][1].strip().splitlines()[-1][:300])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("edgedl", "onnxruntime", "both"), default="both")
    ap.add_argument("--pattern")
    ap.add_argument("--json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    engines = ("edgedl", "onnxruntime") if args.engine == "both" else (args.engine,)
    results = {e: run(e, args.pattern) for e in engines}
    for e, r in results.items():
        print(f"{e}: {sum(v == 'pass' for v in r.values())} of {len(r)} pass")
    if len(results) == 2:
        ed, ort = results["edgedl"], results["onnxruntime"]
        gap = sorted(n for n in ort if ort[n] == "pass" and ed.get(n) != "pass")
        extra = sorted(n for n in ed if ed[n] == "pass" and ort.get(n) != "pass")
        print(f"pass in onnxruntime, not in edgedl: {len(gap)}")
        for n in gap:
            print(f"  {n}: {ed.get(n)}")
        print(f"pass in edgedl, not in onnxruntime: {len(extra)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=0)


if __name__ == "__main__":
    main()
