"""Targets in force: load(target=...), EDGEDL_TARGET, codegen, thresholds and threads from the target, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgedl.targets import Target, load_profile

import edgedl
from edgedl import board, codegen
from edgedl.cli import main as cli_main
from edgedl.kernels.cpu import config

ROOT = Path(__file__).resolve().parents[2]
KWS = ROOT / "examples" / "kws_tc_resnet.onnx"
SPEC = ROOT / "examples" / "spectrogram.npy"


def test_load_detects_by_default():
    m = edgedl.load(KWS)
    assert isinstance(m.target, Target)
    assert m.target.name == board.detected_target().name


@pytest.mark.parametrize("name", ["rpi3", "rpi4", "rpi5", "rpi-zero2w", "jetson-nano", "jetson-orin-nano", "host"])
def test_load_with_a_profile_name(name):
    m = edgedl.load(KWS, target=name)
    assert m.target.name == name
    y = m(np.load(SPEC))
    ref = edgedl.load(KWS, target="host")(np.load(SPEC))
    np.testing.assert_array_equal(y, ref)  # a profile from another board changes no result here


def test_load_with_a_target_object_and_errors():
    t = load_profile("rpi4").replace(threads=1)
    assert edgedl.load(KWS, target=t).target is t
    with pytest.raises(edgedl.EdgeDLError, match="valid targets: host, .*rpi4"):
        edgedl.load(KWS, target="rpi9")
    with pytest.raises(edgedl.EdgeDLError, match="has 4 cores"):
        edgedl.load(KWS, target="rpi4", num_threads=8)
    with pytest.raises(edgedl.EdgeDLError, match="positive integer"):
        edgedl.load(KWS, num_threads=0)


def test_target_thresholds_reach_the_kernels():
    t = load_profile("host").replace(parallel_min_work=12345, gemm_parallel_min_work=54321, int8_kernel="pairs")
    m = edgedl.load(KWS, target=t)
    m(np.load(SPEC))
    assert (config.PARALLEL_MIN_WORK, config.GEMM_PARALLEL_MIN_WORK, config.INT8_KERNEL) == (12345, 54321, "pairs")
    from edgedl.kernels.cpu.gemm_i8 import K_PAIRS, preferred_kernel

    if "EDGEDL_I8_KERNEL" not in os.environ:
        assert preferred_kernel() == K_PAIRS
    edgedl.load(KWS, target="host")(np.load(SPEC))
    assert config.PARALLEL_MIN_WORK == config._DEFAULTS["PARALLEL_MIN_WORK"]
    assert config.INT8_KERNEL is None


def test_target_convolution_strategy_reaches_the_kernels():
    """A board profile with ``conv_flat = false`` (tuned: packed panels faster there) prepares its convolutions
    with packed panels; the default reads the padded image in place. Same outputs either way."""
    x = np.load(SPEC)
    packed = edgedl.load(KWS, target=load_profile("host").replace(conv_flat=False, conv_pixels=False))
    y_packed = packed(x)
    assert config.CONV_FLAT is False and config.CONV_PIXELS is False
    y_flat = edgedl.load(KWS, target="host")(x)
    assert config.CONV_FLAT is True and config.CONV_PIXELS is True
    np.testing.assert_allclose(y_packed, y_flat, rtol=1e-5, atol=1e-5)
    with pytest.raises(edgedl.EdgeDLError, match="conv_flat"):
        load_profile("host").replace(conv_flat="yes")


def test_target_thread_count_is_the_default(monkeypatch):
    import numba

    from edgedl import threads

    monkeypatch.setattr(threads, "_follow_load", False)
    before = numba.get_num_threads()
    try:
        edgedl.load(KWS, target=load_profile("host").replace(threads=1))(np.load(SPEC))
        assert numba.get_num_threads() == 1
        edgedl.load(KWS, target=load_profile("host").replace(threads=1), num_threads=2)(np.load(SPEC))
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally:
        numba.set_num_threads(before)


def test_codegen_of_another_arch_is_not_applied():
    arm = load_profile("rpi5")
    if codegen.host_arch() == "aarch64":
        pytest.skip("this machine is aarch64")
    assert codegen.apply_codegen(arm) == "other-arch"
    assert codegen.apply_codegen(load_profile("host")) == "host"


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_profile_codegen_applies_in_a_fresh_process(tmp_path):
    """A same-arch profile with its own codegen makes Numba compile for it (and caches under that key)."""
    if codegen.host_arch() != "x86_64":
        pytest.skip("the custom profile below is for x86-64")
    profile = tmp_path / "laptop.toml"
    profile.write_text('name = "laptop"\ndescription = "a test profile"\n[facts]\narch = "x86_64"\n'
                       'cpu = "x86-64-v2"\ncores = 1\nmemory_bytes = 1073741824\n[choices]\nthreads = 1\n'
                       'codegen_cpu = "x86-64-v2"\ncodegen_features = "+sse4.2,+popcnt"\n')
    code = ("import edgedl, numpy as np, numba\n"
            "m = edgedl.load('examples/digits_cnn.onnx')\n"
            "from numba.core import config\n"
            "print(m.target.name, config.CPU_NAME, config.CPU_FEATURES)\n")
    # an empty NUMBA_CPU_NAME (as wrappers pass it through) is no choice of the user's
    out = _run(code, {"EDGEDL_TARGET": str(profile), "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_CPU_NAME": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["laptop", "x86-64-v2", "+sse4.2,+popcnt"]
    user = _run(code, {"EDGEDL_TARGET": str(profile), "NUMBA_CACHE_DIR": str(tmp_path / "cache2"),
                       "NUMBA_CPU_NAME": "x86-64"})
    assert user.returncode == 0, user.stderr
    assert user.stdout.split()[:2] == ["laptop", "x86-64"]  # the user's own choice wins


def test_env_target_and_user_numba_cpu_name_wins(tmp_path):
    code = ("import edgedl\nfrom edgedl import board\nm = edgedl.load('examples/kws_tc_resnet.onnx')\n"
            "print(m.target.name, board.codegen_status[m.target.name])\n")
    out = _run(code, {"EDGEDL_TARGET": "rpi4", "NUMBA_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "rpi4"
    bad = _run(code, {"EDGEDL_TARGET": "nope"})
    assert bad.returncode != 0 and "unknown target 'nope'" in bad.stderr


def test_cli_targets(capsys):
    assert cli_main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("rpi3", "rpi4", "rpi5", "rpi-zero2w", "jetson-nano", "jetson-agx-orin"):
        assert name in out
    assert cli_main(["targets", "--detect"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"target: {board.detected_target().name}") and "threads:" in out and "codegen:" in out
    assert cli_main(["targets", "--detect", "--target", "rpi5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "rpi5" and "dotprod" in data["features"] and data["int8_kernel"] == "sdot"
    assert cli_main(["targets", "--detect", "--target", "nope"]) == 2
    assert "valid targets" in capsys.readouterr().err


def test_cli_info_shows_the_target(capsys):
    assert cli_main(["info", str(KWS), "--target", "rpi4"]) == 0
    out = capsys.readouterr().out
    assert "target: rpi4" in out and "cortex-a72" in out
