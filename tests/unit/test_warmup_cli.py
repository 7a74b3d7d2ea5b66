"""edgedl warmup: compiles a model's kernels in parallel processes; a later process then compiles nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgedl.runtime.warmup import CATALOG, catalog_jobs, model_jobs, native_jobs

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

CHILD = """
import json, sys, numpy as np
import edgedl
from edgedl.runtime.warmup import kernel_cache_stats
edgedl.set_num_threads(int(sys.argv[2]), follow_load=False)
m = edgedl.load(sys.argv[1])
y = m(np.load('examples/spectrogram.npy'))
print(json.dumps(kernel_cache_stats()))
"""


def test_warmup_then_a_new_process_compiles_nothing(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "edgedl.cli", "warmup", "examples/kws_tc_resnet.onnx", "--quiet"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "kernel signatures compiled" in r.stdout and "failed" not in r.stdout
    import numba

    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        out = subprocess.run([sys.executable, "-c", CHILD, "examples/kws_tc_resnet.onnx", str(threads)],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert out.returncode == 0, out.stderr
        stats = json.loads(out.stdout.strip().splitlines()[-1])
        assert stats["cache_misses"] == 0 and stats["cache_hits"] > 0, (threads, stats)


def test_warmup_rejects_a_missing_model(capsys):
    from edgedl.cli import main

    assert main(["warmup", "no/such/model.onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_job_lists():
    natives = native_jobs()
    assert natives and all(set(j) == {"native"} for j in natives)
    assert any(":_run_task:" in j["native"] for j in natives)
    jobs = catalog_jobs((1, 2))
    assert jobs[:len(natives)] == natives  # first: the models load them
    models = jobs[len(natives):]
    assert len(models) == len(CATALOG) * 2 * 2 + 2 * 2
    assert {j["precision"] for j in models} == {"fp32", "int8", "train"}
    assert catalog_jobs((1,), train=False) and all(j.get("precision") != "train" for j in catalog_jobs((1,), False))
    assert model_jobs(["a.onnx"], (1, 4), train=True) == natives + [
        {"model": "a.onnx", "precision": p, "threads": t} for p in ("fp32", "train") for t in (1, 4)]


def test_native_job_in_process():
    """A native-function job compiles (here: loads from the warm test cache) that one function."""
    from edgedl.kernels.cpu.native import by_key
    from edgedl.runtime.warmup import run_job

    key = native_jobs()[0]["native"]
    stats = run_job({"native": key})
    assert by_key(key).compiled == 1 and stats["compiled"] >= 1


@pytest.mark.parametrize("precision", ["int8", "train"])
def test_run_job_in_process(precision):
    """The catalog's int8 and training jobs run (in this process, on the already warm test cache)."""
    import edgedl
    from edgedl.runtime.warmup import run_job

    try:
        stats = run_job({"zoo": "digits_cnn", "kwargs": {}, "precision": precision, "threads": 1})
    finally:
        edgedl.set_num_threads(None)
    assert stats["seconds"] > 0 and stats["compiled"] > 0
