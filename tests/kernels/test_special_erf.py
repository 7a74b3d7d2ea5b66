"""float32 Erf (edgedl.kernels.cpu.special): the branch-free polynomial kernel against math.erf over a dense range
with both tails and the special values, its loop vectorizing, and the Erf op against onnxruntime."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from onnx import TensorProto, helper

import edgedl
from edgedl.kernels.cpu.special import erf_f32, erf_inplace, erf_into


def _dense():
    tiny = np.float32(10) ** np.linspace(-38, 1.3, 40001).astype(np.float32)
    return np.concatenate([np.linspace(-12, 12, 400001, dtype=np.float32), tiny, -tiny,
                           np.array([0.0, 1.0, 1.5, np.nextafter(np.float32(1.5), np.float32(0)), 3.9, 4.0, 1e-45,
                                     np.finfo(np.float32).max], np.float32)]).astype(np.float32)


def test_erf_against_math_erf_within_one_ulp():
    x = _dense()
    ref = np.array([math.erf(float(v)) for v in x])
    y = x.copy()
    erf_inplace(y)
    err = np.abs(y.astype(np.float64) - ref)
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert (err <= ulp).all(), (x[np.argmax(err / ulp)], (err / ulp).max())
    nz = np.abs(ref) > 2 * np.finfo(np.float32).tiny  # relative error where float32 is normal
    assert (err[nz] / np.abs(ref[nz])).max() < 1e-6
    out = np.empty_like(x)
    erf_into(x, out)
    np.testing.assert_array_equal(out, y)


def test_erf_special_values():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 30.0, -30.0], np.float32)
    erf_inplace(x)
    assert x[0] == 1.0 and x[1] == -1.0 and np.isnan(x[2])
    assert x[3] == 0.0 and x[4] == 0.0 and np.signbit(x[4])
    assert x[5] == 1.0 and x[6] == -1.0


def test_erf_loop_vectorizes():
    """The kernel must not call a scalar libm erf per element: a fresh compile of the same loop (cached code
    cannot be inspected) has vector float operations in its LLVM IR."""
    import numba

    from edgedl.kernels.cpu.config import FASTMATH

    fn = numba.njit(fastmath=FASTMATH)(erf_inplace.py_func)
    fn(np.zeros(8, np.float32))
    llvm = next(iter(fn.inspect_llvm().values()))
    assert re.search(r"<\d+ x (float|double)>", llvm), "the Erf loop did not vectorize"
    assert erf_f32 is not None


@pytest.mark.parametrize("shape", [(3, 1000), (7,), ()])
def test_erf_op_against_onnxruntime(shape):
    ort = pytest.importorskip("onnxruntime")
    g = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    x = np.asarray(np.random.default_rng(0).standard_normal(shape) * 3, dtype=np.float32)
    got = edgedl.load(proto.SerializeToString()).run({"x": x})["y"]
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
