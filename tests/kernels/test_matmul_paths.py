"""MatMul with a B computed at run time: batched products (rank >= 3) in one BatchedGemm call, rows of A over all
batch dimensions as one GEMM against a 2-D B, and the few-rows kernel (edgedl.kernels.cpu.few_rows) for 1 to 3
rows; against float64 numpy and onnxruntime, with the kernel path each shape takes."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import edgedl
import edgedl.kernels.cpu.einsum as einsum_kernels
import edgedl.kernels.cpu.few_rows as few_rows_mod
import edgedl.kernels.cpu.gemm as gemm_kernels
from edgedl.kernels.cpu.few_rows import few_rows_matmul


@pytest.mark.parametrize("m,k,n", [(1, 300, 1200), (2, 300, 1200), (3, 64, 256), (3, 7, 5), (2, 1, 3), (1, 5, 1),
                                   (3, 13, 1030)])
def test_few_rows_kernel(m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    out = np.full((m, n), np.nan, np.float32)
    few_rows_matmul(a, b, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    few_rows_matmul(a, np.asfortranarray(b), out)  # a strided B is copied, not misread
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    with pytest.raises(ValueError):
        few_rows_matmul(np.zeros((4, k), np.float32), b, np.zeros((4, n), np.float32))


def _model(a_shape, b_shape):
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape)),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _forbidden(*args, **kwargs):
    raise AssertionError("the per-matrix Python loop (kernels.cpu.gemm.matmul) ran")


CASES = [  # a shape, b shape, expected path
    ((64, 32, 16), (64, 16, 32), "batched"),        # attention scores: one call for the batch
    ((2, 4, 7, 8), (2, 4, 8, 5), "batched"),
    ((2, 1, 7, 8), (1, 3, 8, 5), "batched"),          # broadcast batch dimensions on both sides
    ((3, 7, 8), (8, 5), "rows"),                      # 2-D B: all rows of A as one GEMM
    ((8,), (2, 8, 5), "batched"),                     # 1-D A promoted
    ((2, 6, 8), (8,), "batched"),                     # 1-D B promoted
    ((2, 300), (300, 1200), "few"),                   # few rows, B at run time
    ((1, 3, 40), (40, 9), "few"),                     # 3 rows over batch dimensions
    ((40,), (40, 9), "few"),
    ((1, 7, 8), (1, 8, 5), "loop"),                   # a batch of one
]


@pytest.mark.parametrize("a_shape,b_shape,path", CASES, ids=[str(i) for i in range(len(CASES))])
def test_matmul_path_and_result(a_shape, b_shape, path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    run_counter = _Counter(einsum_kernels.BatchedGemm.run)
    few_counter = _Counter(few_rows_mod.few_rows_matmul)
    monkeypatch.setattr(einsum_kernels.BatchedGemm, "run", lambda self, *a, **kw: run_counter(self, *a, **kw))
    monkeypatch.setattr(few_rows_mod, "few_rows_matmul", few_counter)
    if path != "loop":
        monkeypatch.setattr(gemm_kernels, "matmul", _forbidden)
    rng = np.random.default_rng(len(a_shape) * 10 + len(b_shape))
    a, b = rng.standard_normal(a_shape).astype(np.float32), rng.standard_normal(b_shape).astype(np.float32)
    proto = _model(a_shape, b_shape)
    model = edgedl.load(proto.SerializeToString())
    for _ in range(2):
        got = model.run({"a": a, "b": b})["y"]
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"a": a, "b": b})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, np.matmul(a.astype(np.float64), b), rtol=1e-4, atol=1e-4)
    assert run_counter.calls == (2 if path == "batched" else 0)
    assert few_counter.calls == (2 if path == "few" else 0)
