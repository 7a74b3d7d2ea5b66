"""A second process that loads the same model must not recompile kernels (Numba cache=True)."""
import json
import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "kws_tc_resnet.onnx")

CHILD = """
import json, sys, numpy as np
import edgedl
from edgedl.runtime.warmup import kernel_cache_stats
m = edgedl.load(sys.argv[1])
y = m(np.ones((1, 40, 98), np.float32))
print(json.dumps({**kernel_cache_stats(), "y": y.tolist()}))
"""


def _child(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    r = subprocess.run([sys.executable, "-c", CHILD, EXAMPLE], capture_output=True, text=True, env=env, timeout=600,
                       cwd=cache_dir)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_second_process_loads_kernels_from_cache(tmp_path):
    cold = _child(tmp_path)
    warm = _child(tmp_path)
    assert cold["compiled"] > 0 and cold["cache_misses"] > 0
    assert warm["cache_misses"] == 0, warm
    assert warm["cache_hits"] == warm["compiled"] > 0
    assert warm["y"] == cold["y"]
