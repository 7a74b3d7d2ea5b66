"""The notice printed when compiling keeps a run waiting, driven by fake compile events."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time

from edgedl.kernels.compile_notice import _Notice

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_short_compiles_say_nothing():
    out = io.StringIO()
    n = _Notice(out, delay=0.2)
    n.start()
    n.end()
    time.sleep(0.3)
    assert out.getvalue() == ""


def test_long_compile_says_so_once():
    out = io.StringIO()
    n = _Notice(out, delay=0.05)
    n.start()
    n.start()  # nested compilation
    time.sleep(0.2)
    n.end()
    n.end()
    n.start()
    time.sleep(0.2)
    n.end()
    text = out.getvalue()
    assert text.count("compiling kernels") == 1 and "edgedl warmup" in text and text.endswith("\n")


def test_cold_process_prints_the_notice(tmp_path):
    """A real cold start (empty cache) of the bundled example compiles for seconds: the line appears."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("EDGEDL_QUIET_COMPILE", None)
    r = subprocess.run([sys.executable, "-m", "edgedl.cli", "run", "examples/kws_tc_resnet.onnx", "-i",
                        "examples/spectrogram.npy"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "edgedl: compiling kernels for this CPU" in r.stderr
    warm = subprocess.run([sys.executable, "-m", "edgedl.cli", "run", "examples/kws_tc_resnet.onnx", "-i",
                           "examples/spectrogram.npy"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert warm.returncode == 0 and "compiling" not in warm.stderr
