"""Where compiled kernels are cached: NUMBA_CACHE_DIR when set, next to the installed package of a wheel
install, and a per-user folder when site-packages is read-only. A second process compiles nothing in each."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
import numpy as np
import edgedl
from edgedl.runtime.warmup import kernel_cache_stats
m = edgedl.load(sys.argv[1])
y = m(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64))
print(json.dumps({**kernel_cache_stats(), "file": edgedl.__file__, "y": float(y.sum())}))
"""


def _model(folder: Path) -> str:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    path = folder / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(extra)
    return env


def _child(model: str, env: dict, cwd) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, model], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _cold_then_warm(model: str, env: dict, cwd) -> tuple[dict, dict]:
    cold = _child(model, env, cwd)
    warm = _child(model, env, cwd)
    assert cold["cache_misses"] > 0, cold
    assert warm["cache_misses"] == 0 and warm["cache_hits"] > 0, warm
    assert warm["y"] == cold["y"]
    return cold, warm


def _index_files(folder) -> list[str]:
    return glob.glob(os.path.join(str(folder), "**", "*.nbi"), recursive=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """edgedl built as a wheel and installed into a plain folder (as pip installs it into site-packages)."""
    work = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(work / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr[-300:]}")
    wheel = next((work / "dist").glob("edgedl-*.whl"))
    site = work / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (site / "edgedl" / "targets" / "profiles" / "rpi5.toml").is_file()  # package data travels
    return site


def test_numba_cache_dir_is_honoured(tmp_path):
    cache = tmp_path / "cache"
    model = _model(tmp_path)
    _cold_then_warm(model, _env(NUMBA_CACHE_DIR=str(cache)), ROOT)
    assert _index_files(cache)


def test_wheel_install_caches_beside_the_package(installed, tmp_path):
    model = _model(tmp_path)
    env = _env(PYTHONPATH=str(installed))
    cold, _ = _cold_then_warm(model, env, tmp_path)
    assert cold["file"].startswith(str(installed))
    assert _index_files(installed / "edgedl")
    # a reinstall (or pip unpacking a wheel with a prebuilt cache) gives the sources new mtimes: Numba >= 0.68
    # keys its cache by the source's content, so nothing recompiles
    for py in installed.rglob("*.py"):
        os.utime(py, (2_000_000_000, 2_000_000_000))
    again = _child(model, env, tmp_path)
    assert again["cache_misses"] == 0 and again["cache_hits"] > 0, again


def test_a_change_in_another_file_of_the_package_recompiles(installed, tmp_path):
    """A kernel's machine code holds the @njit functions it calls from other files (an epilogue from act.py);
    Numba keys its cache entry on the kernel's own file only, so an upgrade that changed just the callee ran the
    old callee. edgedl keys every entry on the whole package's sources: a changed file anywhere recompiles,
    identical sources (a reinstall) do not."""
    model = _model(tmp_path)
    env = _env(PYTHONPATH=str(installed))
    _child(model, env, tmp_path)  # (warm or cold: whatever the other tests left)
    act = installed / "edgedl" / "kernels" / "cpu" / "act.py"
    original = act.read_bytes()
    try:
        act.write_bytes(original + b"\n# an upgrade that changed only this file\n")
        changed = _child(model, env, tmp_path)
        assert changed["cache_misses"] > 0, changed
        again = _child(model, env, tmp_path)
        assert again["cache_misses"] == 0 and again["cache_hits"] > 0, again
    finally:
        act.write_bytes(original)


def test_read_only_site_packages_fall_back_to_a_user_cache(installed, tmp_path):
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs a read-only bind mount (root)")
    ro = tmp_path / "ro-site"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(installed), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("read-only remounts are not allowed here")
        before = set(_index_files(installed))
        user_cache = tmp_path / "xdg-cache"
        model = _model(tmp_path)
        cold, _ = _cold_then_warm(model, _env(PYTHONPATH=str(ro), XDG_CACHE_HOME=str(user_cache)), tmp_path)
        assert cold["file"].startswith(str(ro))
        assert _index_files(user_cache / "numba")
        assert set(_index_files(installed)) == before  # nothing written into the read-only package
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
