"""A cold start compiles in two processes: the GEMM task here, the model's other kernels in a helper."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from onnx import TensorProto, helper

from edgedl.runtime import compile_ahead

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

CHILD = """
import json, sys, numpy as np
import edgedl
from edgedl.runtime import compile_ahead
from edgedl.runtime.warmup import kernel_cache_stats
seen = {}
original = compile_ahead.compile_ahead
def spy(*a, **k):
    seen.update(original(*a, **k))
    return seen
compile_ahead.compile_ahead = spy
edgedl.set_num_threads(int(sys.argv[1]), follow_load=False)
m = edgedl.load('examples/kws_tc_resnet.onnx')
y = m(np.load('examples/spectrogram.npy'))
from numba.core.registry import CPUDispatcher
import gc
compiled_here = sum(sum(d.stats.cache_misses.values()) for d in gc.get_objects()
                    if issubclass(type(d), CPUDispatcher) and d.py_func.__module__.startswith('edgedl.'))
print(json.dumps({"ahead": seen, "y": y.tolist(), "dispatchers_compiled_here": compiled_here,
                  **kernel_cache_stats()}))
"""


def _run(env, threads=2):
    r = subprocess.run([sys.executable, "-c", CHILD, str(threads)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_cold_start_in_two_processes_gives_the_same_result(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    cold = _run(env)
    ahead = cold["ahead"]
    assert ahead["helper"] == "done", ahead
    assert any(":_run_task:" in k for k in ahead["natives"])  # compiled here, meanwhile
    assert ahead["stats"]["cache_misses"] > 0  # the helper compiled the rest...
    assert cold["dispatchers_compiled_here"] == 0  # ... so this process loaded every other kernel
    want = np.load(os.path.join(ROOT, "examples", "kws_tc_resnet_reference.npy"))
    np.testing.assert_allclose(np.array(cold["y"], np.float32), want.reshape(np.shape(cold["y"])), rtol=1e-4,
                               atol=1e-6)
    warm = _run(env)
    assert warm["ahead"] == {} and warm["cache_misses"] == 0  # a warm start starts no helper
    assert warm["y"] == cold["y"]


def test_off_switch_and_models_without_a_gemm(monkeypatch):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    from edgedl.converters.onnx_import import import_onnx

    relu = import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert compile_ahead.skip_reason(relu) == "no layer uses a GEMM task"
    conv = import_onnx(os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"))
    monkeypatch.setattr(compile_ahead, "_usable_cores", lambda: 2)
    monkeypatch.setattr(compile_ahead, "_free_bytes", lambda: 4 << 30)
    assert compile_ahead.skip_reason(conv) is None
    monkeypatch.setenv("EDGEDL_COMPILE_AHEAD", "0")
    assert compile_ahead.skip_reason(conv) == "EDGEDL_COMPILE_AHEAD=0"
    monkeypatch.delenv("EDGEDL_COMPILE_AHEAD")
    monkeypatch.setattr(compile_ahead, "_usable_cores", lambda: 1)
    assert compile_ahead.skip_reason(conv) == "one core"
    monkeypatch.setattr(compile_ahead, "_usable_cores", lambda: 4)
    monkeypatch.setattr(compile_ahead, "_free_bytes", lambda: 300 << 20)
    assert compile_ahead.skip_reason(conv) == "300 MB of free memory"


def test_gemm_kinds_follow_the_layers_as_they_run():
    """A quantized model's Conv runs as QLinearConv (the int8 task), a float one on the fp32 task."""
    import edgedl

    path = os.path.join(ROOT, "examples", "kws_tc_resnet.onnx")
    model = edgedl.load(path)
    assert compile_ahead._gemm_kinds(model.graph) == {"fp32"}
    x = np.load(os.path.join(ROOT, "examples", "spectrogram.npy"))
    q = edgedl.quantize(model, [{model.inputs[0].name: x}], progress=False)
    assert compile_ahead._gemm_kinds(q.graph) == {"int8"}
    q(x)
    from edgedl.kernels.cpu import gemm_i8

    missing = compile_ahead.missing_natives(q.graph, model.target)
    assert missing == []  # the quantized run above compiled or loaded it
    assert gemm_i8.task_natives(gemm_i8.preferred_kernel())[0].compiled


def test_a_failing_helper_leaves_the_work_to_this_process(monkeypatch):
    """A helper that cannot start its work (here: an interpreter that exits at once) is reported, the native
    functions asked for are compiled here anyway, and loading goes on."""
    from edgedl.converters.onnx_import import import_onnx

    from edgedl.kernels.cpu import gemm

    graph = import_onnx(os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"))
    monkeypatch.setattr(compile_ahead.sys, "executable", "/bin/false")
    result = compile_ahead.compile_ahead(graph, None, 1, first=[gemm._run_task])
    assert result["helper"].startswith("failed: exit 1"), result
    assert result["natives"] == [gemm._run_task.key] and gemm._run_task.compiled


def test_helper_environment():
    """The helper's environment carries this process's codegen and switches off what would recurse."""
    from numba.core import config

    env = compile_ahead._child_env()
    assert env["EDGEDL_COMPILE_AHEAD"] == "0" and env["EDGEDL_FOLLOW_LOAD"] == "0"
    assert "EDGEDL_TARGET" not in env
    assert env.get("NUMBA_CPU_NAME") == config.CPU_NAME or (config.CPU_NAME is None and "NUMBA_CPU_NAME" not in env)


def test_model_from_source_matches_load():
    from edgedl.converters.onnx_import import import_onnx

    import edgedl

    path = os.path.join(ROOT, "examples", "kws_tc_resnet.onnx")
    x = np.load(os.path.join(ROOT, "examples", "spectrogram.npy"))
    a = edgedl.load(path)
    b = edgedl._model_from_source(import_onnx(path), a.target, None)
    np.testing.assert_array_equal(a(x), b(x))
