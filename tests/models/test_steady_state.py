"""Steady-state execution: no allocation beyond the outputs, and 1-thread and N-thread runs agree."""
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import edgedl
from edgedl import zoo

CHILD = r"""
import json, tracemalloc, numpy as np, edgedl
from edgedl import zoo
from edgedl.registry import Kernel
model = edgedl.load(zoo.mobilenet_v2_like(resolution=128, width=0.5, classes=10))
x = np.random.default_rng(0).standard_normal((1, 3, 128, 128)).astype(np.float32)
model(x); model(x)
plan = model.plan({"input": x.shape})
per_step = {}

def measured(step, fn):
    def run(*args):
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn(*args)
        key = f"{step.node.op_type} {step.node.name}"
        per_step[key] = max(per_step.get(key, 0), tracemalloc.get_traced_memory()[1] - base)
    return run

# both ways a step runs: its pre-bound call (the usual one) and the per-call kernel
for step in plan.steps:
    if step.bound is not None:
        step.bound = measured(step, step.bound)
    step.kernel = Kernel(measured(step, step.kernel.fn), step.kernel.scratch_bytes, step.kernel.impl)
assert sum(s.bound is not None for s in plan.steps) > len(plan.steps) // 2
tracemalloc.start()
for _ in range(3):
    y = model(x)
    del y
tracemalloc.stop()
# NOTE: tracemalloc sees numpy buffers and Numba's NRT allocations (PyMem_RawMalloc) alike, so an array
# allocated inside a compiled kernel shows up here too.
worst = max(per_step.items(), key=lambda kv: kv[1])
tensors = sorted(plan.types[o].nbytes for step in plan.steps for o in step.node.outputs if o)
print(json.dumps({"worst_step": worst, "median_tensor": tensors[len(tensors) // 2], "steps": len(per_step)}))
"""


def test_no_allocation_beyond_outputs(tmp_path):
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=900,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    # Every step allocates at most a few KiB of interpreter bookkeeping (views, argument tuples), no
    # buffers: far below the model's typical activation tensor.
    assert stats["worst_step"][1] < 4096, stats
    assert stats["median_tensor"] > 4 * 4096, stats
    assert stats["steps"] > 10, stats


def test_one_and_two_threads_agree():
    proto = zoo.mobilenet_v2_like(resolution=64, width=0.5, classes=10)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    y1 = edgedl.load(proto, num_threads=1)(x)
    y2 = edgedl.load(proto, num_threads=2)(x)
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_changing_the_thread_count_rebinds_prepared_steps():
    proto = zoo.mobilenet_v2_like(resolution=64, width=0.5, classes=10)
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    model = edgedl.load(proto)
    try:
        edgedl.set_num_threads(2)
        y2 = model(x)
        plan = model.plan({"input": x.shape})
        assert plan.bound_threads == 2 and any(s.bound is not None for s in plan.steps)
        edgedl.set_num_threads(1)
        y1 = model(x)
        assert plan.bound_threads == 1
    finally:
        edgedl.set_num_threads(None)
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-7)
