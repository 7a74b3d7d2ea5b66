"""Native functions: compiled once, called from jitted kernels through a pointer, stubbed in helpers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from numba import prange, types
from numba.core.errors import TypingError

from edgedl.kernels.cpu.native import by_key, caller, native, use_stubs

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

_RO = types.float32[::1].copy(readonly=True)


def _axpy_row(i, a, x, y, n):
    # y[i*n:(i+1)*n] += a * x[i*n:(i+1)*n]
    for j in range(i * n, (i + 1) * n):
        y[j] += a * x[j]


axpy_row = native(types.void(types.int64, types.float32, _RO, types.float32[::1], types.int64))(_axpy_row)
call_axpy = caller(axpy_row)


@numba.njit
def _serial(fn, rows, a, x, y, n):
    for i in range(rows):
        call_axpy(fn, (i, a, x, y, n))


@numba.njit(parallel=True)
def _parallel(fn, rows, a, x, y, n):
    for i in prange(rows):
        call_axpy(fn, (np.int64(i), a, x, y, n))


@pytest.mark.parametrize("driver", [_serial, _parallel])
def test_drivers_call_the_native_function(driver):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5 * 7).astype(np.float32)
    y = rng.standard_normal(5 * 7).astype(np.float32)
    want = y + np.float32(0.5) * x
    driver(axpy_row.address, 5, np.float32(0.5), x, y, 7)
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_read_only_arrays_are_accepted_where_declared():
    x = np.ones(6, np.float32)
    x.setflags(write=False)  # a constant initializer, say
    y = np.zeros(6, np.float32)
    _serial(axpy_row.address, 2, np.float32(2.0), x, y, 3)
    assert y.tolist() == [2.0] * 6


def test_wrong_argument_types_fail_when_the_caller_is_typed():
    x = np.ones(6, np.float64)  # float64 where float32 is declared
    with pytest.raises(TypingError, match="fit none of"):
        _serial(axpy_row.address, 2, np.float32(2.0), x, np.zeros(6, np.float32), 3)
    y = np.zeros(6, np.float32)
    y.setflags(write=False)  # the output must be writable
    with pytest.raises(TypingError, match="fit none of"):
        _serial(axpy_row.address, 2, np.float32(2.0), np.ones(6, np.float32), y, 3)


def test_several_signatures_pick_the_first_that_fits():
    """The GEMV block: one body, a C-contiguous x and a strided x; the address passed must be the matching one."""
    from edgedl.kernels.cpu import gemm

    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    xs = np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::2]  # rows 6 apart, column stride 2 -> copied
    x2 = np.ascontiguousarray(np.arange(12, dtype=np.float32).reshape(2, 6)[:, :3])  # contiguous
    xa = np.arange(12, dtype=np.float32).reshape(2, 6)[:, :3]  # unit columns, rows 6 apart: not C-contiguous
    for x in (x2, xa, np.ascontiguousarray(xs)):
        out = np.zeros((2, 4), np.float32)
        gemm.gemv(w, x, out)
        np.testing.assert_allclose(out, x @ w.T, rtol=1e-6)
    out_t = np.zeros((4, 2), np.float32)
    gemm.gemv(w, xa, out_t.T)  # a transposed output
    np.testing.assert_allclose(out_t.T, xa @ w.T, rtol=1e-6)


def test_stub_mode_reports_and_does_nothing():
    from edgedl.kernels.cpu.native import NativeFunction

    fresh = NativeFunction(_axpy_row, axpy_row.signature, {})
    asked = []
    use_stubs(asked.append)
    try:
        address = fresh.address
    finally:
        use_stubs(None)
    assert asked == [fresh] and fresh.compiled == 0
    y = np.zeros(4, np.float32)
    _serial(address, 2, np.float32(1.0), np.ones(4, np.float32), y, 2)
    assert not y.any()  # the stand-in computes nothing


def test_keys_name_functions_across_processes():
    from edgedl.kernels.cpu import gemm

    key = gemm._run_task.key
    assert key.startswith("edgedl.kernels.cpu.gemm:_run_task:") and by_key(key) is gemm._run_task
    assert len({fn.key for fn in gemm._gemv_blocks}) == 2
    with pytest.raises(KeyError):
        by_key("os:system:x")
    with pytest.raises(KeyError):
        by_key("edgedl.kernels.cpu.gemm:nothing:()")


PROBE = """
import json
from edgedl.kernels.cpu import gemm
fn = gemm._gemv_blocks[1]
found = fn.cached()
fn.address
print(json.dumps({"found": found, "hits": fn.cache_hits, "misses": fn.cache_misses}))
"""


def test_compiled_once_then_loaded_from_the_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert runs[0] == {"found": False, "hits": 0, "misses": 1}
    assert runs[1] == {"found": True, "hits": 1, "misses": 0}


def test_assembly_of_a_function_compiled_here():
    from edgedl.kernels.cpu.native import NativeFunction

    fresh = NativeFunction(_axpy_row, axpy_row.signature, {})
    assert fresh.inspect_asm() is None  # not compiled yet
    assert fresh.address  # compiles it
    asm = fresh.inspect_asm()
    assert asm and ("ret" in asm)
