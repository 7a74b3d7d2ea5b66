"""The dp4a int8 GEMM (:mod:`edgedl.kernels.cuda.dp4a`) bit for bit against the integer reference: the portable
dp4a in numba's CUDA simulator, the linked CUDA C ``__dp4a`` on a real GPU only (the simulator cannot link CUDA
C; run with ``NUMBA_ENABLE_CUDASIM=0`` on a GPU)."""
from __future__ import annotations

import numpy as np
import pytest

from edgedl.quant.requant import MODE_DOUBLE, MODE_FLOAT, Requant, requantize_reference

cuda = pytest.importorskip("numba.cuda")
RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def _needs_cuda():
    from edgedl.kernels.cuda import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _case(a_dtype, b_dtype, m, n, k, mode):
    """A, B [N, K], zero points, bias, requantization and the expected int8 result (integer reference)."""
    lo_a, hi_a = (0, 256) if a_dtype == np.uint8 else (-128, 128)
    lo_b, hi_b = (0, 256) if b_dtype == np.uint8 else (-128, 128)
    a = RNG.integers(lo_a, hi_a, (m, k)).astype(a_dtype)
    b = RNG.integers(lo_b, hi_b, (n, k)).astype(b_dtype)
    a_zp = int(RNG.integers(lo_a, hi_a))
    b_zp = RNG.integers(lo_b, hi_b, n).astype(np.int64)
    bias = RNG.integers(-3000, 3000, n).astype(np.int32)
    acc = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp[:, None]).T + bias
    scale = (RNG.random(n) * 2e-4 + 1e-5).astype(np.float32)
    req = Requant.for_scales(np.float32(1.0), scale, np.float32(1.0), n, 3, -128, 127, mode)
    want = requantize_reference(acc, req).astype(np.int8)
    return a, b, a_zp, b_zp, bias, req, want


def _run(gemm, a, bias, shape):
    y = cuda.device_array(shape, np.int8)
    gemm(cuda.to_device(a), cuda.to_device(bias), y)
    return y.copy_to_host()


def test_pack_rows_matches_on_host_and_device():
    from edgedl.kernels.cuda.common import flat
    from edgedl.kernels.cuda.dp4a import _pack_rows, pack_rows_host

    for dtype in (np.uint8, np.int8):
        a = RNG.integers(0, 256, (3, 7)).astype(np.uint8).view(dtype)
        words, sums = pack_rows_host(a)
        a4, a_sum = cuda.device_array(3 * 2, np.int32), cuda.device_array(3, np.int64)
        _pack_rows[1, 32](flat(cuda.to_device(a)), a4, a_sum, 3, 7, 2, dtype == np.uint8)
        np.testing.assert_array_equal(a4.copy_to_host().reshape(3, 2), words)
        np.testing.assert_array_equal(a_sum.copy_to_host(), sums)
        signed = a.astype(np.int64) - (128 if dtype == np.uint8 else 0)
        np.testing.assert_array_equal(words.view(np.int8)[:, :7], signed)  # little-endian bytes, zero padding
        assert not words.view(np.int8)[:, 7:].any()


@pytest.mark.parametrize("a_dtype,b_dtype,mode,shape", [(np.uint8, np.int8, MODE_DOUBLE, (5, 6, 37)),
                                                         (np.int8, np.uint8, MODE_FLOAT, (5, 6, 37)),
                                                         (np.uint8, np.uint8, MODE_DOUBLE, (66, 65, 36))])
def test_portable_dp4a_gemm_is_bit_exact(a_dtype, b_dtype, mode, shape):
    """K not a multiple of 4 (and K spanning two shared-memory steps), zero points per column, uint8 and int8
    operands (stored as signed bytes), a bias, both requantization families; one 64x64 tile, and four with
    partial edges (the simulator runs 256 threads a tile)."""
    from edgedl.kernels.cuda.dp4a import QGemmDp4a

    m, n, k = shape
    a, b, a_zp, b_zp, bias, req, want = _case(a_dtype, b_dtype, m, n, k, mode)
    gemm = QGemmDp4a(m, n, k, a_dtype, a_zp, b, b_zp, req, linked=False)
    assert not gemm.linked
    np.testing.assert_array_equal(_run(gemm, a, bias, want.shape), want)


def test_linked_dp4a_needs_a_gpu():
    """In the simulator the CUDA C ``__dp4a`` cannot be linked: asking for it is an error, the default takes the
    portable kernel."""
    from edgedl.kernels.cuda import simulated
    from edgedl.kernels.cuda.dp4a import QGemmDp4a, linked_dp4a

    if not simulated():
        pytest.skip("a GPU: test_linked_dp4a_on_a_gpu covers it")
    assert linked_dp4a() is None
    a, b, a_zp, b_zp, bias, req, want = _case(np.uint8, np.int8, 2, 3, 8, MODE_DOUBLE)
    with pytest.raises(RuntimeError, match="not available"):
        QGemmDp4a(2, 3, 8, np.uint8, a_zp, b, b_zp, req, linked=True)
    assert not QGemmDp4a(2, 3, 8, np.uint8, a_zp, b, b_zp, req).linked


@pytest.mark.parametrize("m,n,k", [(1, 1000, 1280), (130, 70, 257)])
def test_linked_dp4a_on_a_gpu(m, n, k):
    """The linked ``__dp4a`` kernel over several tiles, bit-exact (a real GPU of compute capability >= 6.1)."""
    from edgedl.kernels.cuda import simulated
    from edgedl.kernels.cuda.dp4a import QGemmDp4a

    if simulated():
        pytest.skip("the CUDA simulator cannot link CUDA C: run with NUMBA_ENABLE_CUDASIM=0 on a GPU")
    a, b, a_zp, b_zp, bias, req, want = _case(np.uint8, np.int8, m, n, k, MODE_DOUBLE)
    gemm = QGemmDp4a(m, n, k, np.uint8, a_zp, b, b_zp, req, linked=True)
    assert gemm.linked
    np.testing.assert_array_equal(_run(gemm, a, bias, want.shape), want)


@pytest.mark.parametrize("x_dtype,w_dtype,w_zp", [(np.uint8, np.int8, 0), (np.int8, np.uint8, 128)])
def test_portable_dp4a_convolution_is_bit_exact(x_dtype, w_dtype, w_zp):
    """The implicit-GEMM dp4a convolution (grouped, strided, padded: padding reads as the input's zero point;
    the reduction not a multiple of 4) against the CPU int8 convolution, bit for bit."""
    from onnx import TensorProto, helper, numpy_helper

    import edgedl
    from edgedl.ir import TensorType
    from edgedl.kernels.cuda.dp4a import QConv2dDp4a

    lo_x, hi_x = (0, 256) if x_dtype == np.uint8 else (-128, 128)
    lo_w, hi_w = (0, 256) if w_dtype == np.uint8 else (-127, 128)
    x = RNG.integers(lo_x, hi_x, (2, 4, 5, 6)).astype(x_dtype)
    w = RNG.integers(lo_w, hi_w, (6, 2, 3, 3)).astype(w_dtype)
    x_zp = np.array(int(RNG.integers(lo_x, hi_x)), x_dtype)
    consts = {"xs": np.array(0.02, np.float32), "xz": x_zp, "w": w,
              "ws": (RNG.random(6) * 0.01 + 0.001).astype(np.float32), "wz": np.full(6, w_zp, w_dtype),
              "ys": np.array(0.05, np.float32), "yz": np.array(3, np.int8), "b": RNG.integers(-500, 500, 6).astype(
                  np.int32)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], group=2,
                            pads=[1, 0, 1, 1], strides=[2, 1])
    x_type = TensorProto.UINT8 if x_dtype == np.uint8 else TensorProto.INT8
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = edgedl.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    ref = model.run({"x": x})["y"]
    op = model.plan().steps[0].op
    order = ["xs", "xz", "w", "ws", "wz", "ys", "yz", "b"]
    cvals = [None] + [consts[k] for k in order]
    ins = [TensorType(x.shape, x.dtype)] + [TensorType(consts[k].shape, consts[k].dtype) for k in order]
    xz, wz, req = op._params(cvals, ins, [TensorType(ref.shape, ref.dtype)])
    assert QConv2dDp4a.applies(w_dtype, wz, 18)
    _, strides, dilations, pads = op._geometry4()
    conv = QConv2dDp4a(x.shape, x_dtype, w, ref.shape, strides, pads, dilations, 2, xz, req, linked=False)
    y = cuda.device_array(ref.shape, np.int8)
    conv(cuda.to_device(x), cuda.to_device(consts["b"]), y)
    np.testing.assert_array_equal(y.copy_to_host(), ref)


def test_dp4a_convolution_needs_zero_weight_zero_points():
    from edgedl.kernels.cuda.dp4a import QConv2dDp4a

    assert not QConv2dDp4a.applies(np.int8, np.array([0, 3]), 18)
    assert not QConv2dDp4a.applies(np.uint8, 0, 18)
    assert QConv2dDp4a.applies(np.uint8, 128, 18)
