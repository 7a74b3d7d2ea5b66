"""Gemm and MatMul."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .common import broadcast_shapes, unbroadcast
from .fused import activation_ref, fused_activation


def matmul_shape(op: Op, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """numpy.matmul's output shape (1-D operands promoted, batch dimensions broadcast); ShapeError else."""
    if len(a) == 0 or len(b) == 0:
        raise op.error("MatMul operands must have rank >= 1")
    sa = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    sb = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if sa[-1] != sb[-2]:
        raise op.error(f"inner dimensions differ: A is {tuple(a)}, B is {tuple(b)}")
    out = broadcast_shapes(op, sa[:-2], sb[:-2]) + (sa[-2], sb[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


@register
class Gemm(Op):
    """Y = alpha * A' @ B' + beta * C, with A' = A.T if transA, B' = B.T if transB, C broadcast to Y."""

    op_type = "Gemm"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    num_inputs = (2, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.0))
        self.beta = float(self.attr("beta", 1.0))
        self.trans_a = int(self.attr("transA", 0))
        self.trans_b = int(self.attr("transB", 0))
        self.act = fused_activation(self)

    def infer(self, ins, consts):
        a, b = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise self.error(f"A and B must be 2-D, got shapes {a.shape} and {b.shape}")
        if a.dtype != b.dtype or (c is not None and c.dtype != a.dtype):
            raise self.error(f"A, B and C must share a dtype, got {[t.dtype.name for t in ins if t]}")
        m, k = a.shape[::-1] if self.trans_a else a.shape
        k2, n = b.shape[::-1] if self.trans_b else b.shape
        if k != k2:
            raise self.error(f"inner dimensions differ: A{'ᵀ' if self.trans_a else ''} is ({m}, {k}) and "
                             f"B{'ᵀ' if self.trans_b else ''} is ({k2}, {n})")
        if c is not None:
            if len(c.shape) > 2 or broadcast_shapes(self, c.shape, (m, n)) != (m, n):
                raise self.error(f"C with shape {c.shape} does not broadcast to the output ({m}, {n})")
        return [TensorType((m, n), a.dtype)]

    def ref(self, a, b, c=None):
        a64 = a.astype(np.float64).T if self.trans_a else a.astype(np.float64)
        b64 = b.astype(np.float64).T if self.trans_b else b.astype(np.float64)
        y = self.alpha * (a64 @ b64)
        if c is not None:
            y = y + self.beta * c.astype(np.float64)
        return [activation_ref(y.astype(a.dtype), *self.act)]

    grad_inputs = (0, 1)

    def backward(self, grads, ins, outs, needs):
        """Y = alpha A'B' + beta C: dA' = alpha dY B'^T, dB' = alpha A'^T dY, dC = beta unbroadcast(dY)
        (A' = A^T with transA, B' likewise), on the fp32 GEMM kernel."""
        from ..kernels.cpu.gemm import gemm

        if self.act[0]:
            raise self.unsupported("has a fused activation: train the graph before fusion")
        a = np.asarray(ins[0], np.float32)
        b = np.asarray(ins[1], np.float32)
        ap = a.T if self.trans_a else a
        bp = b.T if self.trans_b else b
        m, n = ap.shape[0], bp.shape[1]
        g = np.ascontiguousarray(grads[0] if grads[0] is not None else np.zeros((m, n), np.float32), np.float32)
        out = [None] * len(self.in_types)
        if needs[0]:
            d = gemm(g, bp.T)  # (M, K)
            out[0] = np.ascontiguousarray((d.T if self.trans_a else d) * np.float32(self.alpha))
        if needs[1]:
            d = gemm(ap.T, g)  # (K, N)
            out[1] = np.ascontiguousarray((d.T if self.trans_b else d) * np.float32(self.alpha))
        if len(out) > 2 and self.in_types[2] is not None and needs[2]:
            out[2] = unbroadcast(g, self.in_types[2].shape) * np.float32(self.beta)
        return out

    def backward_cuda(self, grads, ins, outs, needs, stream):
        """On the device: the same products as ``backward``, each one tiled GEMM reading its operands through
        transposing strides (no transposed copies), alpha in the GEMM; dC = beta * dY summed over C's broadcast
        axes."""
        if self.act[0] or any(t is not None and np.dtype(t.dtype) != np.float32 for t in self.in_types):
            return None
        from ..kernels.cuda import grad as G
        from ..kernels.cuda.gemm import Gemm as CudaGemm

        (m, n) = self.out_types[0].shape
        a_shape = tuple(self.in_types[0].shape)
        k = a_shape[0] if self.trans_a else a_shape[1]
        g = grads[0] if grads[0] is not None else G.zeros((m, n), stream)
        # element strides of A' (m, k) and B' (k, n) in their stored operands
        sa = (1, m) if self.trans_a else (k, 1)
        sb = (1, k) if self.trans_b else (n, 1)
        out = [None] * len(self.in_types)
        if needs[0]:  # dA' = dY B'^T: (m, n) x (n, k); stored transposed when transA
            out[0] = G.empty(a_shape, stream)
            if self.trans_a:  # dA (k, m) = B' dY^T
                CudaGemm(k, m, n, sb, (1, n), alpha=self.alpha)(ins[1], g, out[0], None, stream)
            else:
                CudaGemm(m, k, n, (n, 1), (sb[1], sb[0]), alpha=self.alpha)(g, ins[1], out[0], None, stream)
        if needs[1]:  # dB' = A'^T dY: (k, m) x (m, n); stored transposed when transB
            out[1] = G.empty(self.in_types[1].shape, stream)
            if self.trans_b:  # dB (n, k) = dY^T A'
                CudaGemm(n, k, m, (1, n), sa, alpha=self.alpha)(g, ins[0], out[1], None, stream)
            else:
                CudaGemm(k, n, m, (sa[1], sa[0]), (n, 1), alpha=self.alpha)(ins[0], g, out[1], None, stream)
        if len(out) > 2 and self.in_types[2] is not None and needs[2]:
            out[2] = G.empty(self.in_types[2].shape, stream)
            G.Unbroadcast((m, n), self.in_types[2].shape, scale=self.beta)(g, out[2], stream=stream)
        return out

    def build(self, ins, outs, consts):
        if ins[0].dtype != np.float32:
            return ref_kernel(self)
        return _build_gemm_kernel(self, ins, outs, consts)

    def build_cuda(self, ins, outs, consts):
        if any(t is not None and np.dtype(t.dtype) != np.float32 for t in ins):
            return None
        from ..kernels.cuda.elementwise import broadcast_strides
        from ..kernels.cuda.gemm import Gemm as CudaGemm

        (m, n), a = outs[0].shape, ins[0].shape
        k = a[0] if self.trans_a else a[1]
        sa = (1, m) if self.trans_a else (k, 1)
        sb = (1, k) if self.trans_b else (n, 1)
        c = ins[2] if len(ins) > 2 else None
        bias = broadcast_strides(c.shape, (m, n)) if c is not None else None
        g = CudaGemm(m, n, k, sa, sb, alpha=self.alpha, beta=self.beta, bias_strides=bias, act=self.act)

        def run(inputs, outputs, stream):
            g(inputs[0], inputs[1], outputs[0], inputs[2] if bias is not None else None, stream)

        return Kernel(run, impl="cuda")


@register
class MatMul(Op):
    """numpy.matmul semantics: 1-D operands are promoted, batch dimensions broadcast."""

    op_type = "MatMul"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    num_inputs = (2, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        # a fused bias (attrs["_bias"], set by the fuse pass): a third input added along the last axis
        self.bias = bool(self.attr("_bias", False))
        if (len([i for i in node.inputs if i]) == 3) != self.bias:
            raise self.error("takes 2 inputs (a third only as a fused bias)")

    def infer(self, ins, consts):
        out = self._infer_matmul(ins[0], ins[1])
        if self.bias:
            c = ins[2]
            n = out.shape[-1] if out.shape else 1
            if c.dtype != out.dtype or int(np.prod(c.shape, dtype=np.int64)) != n or (c.shape and c.shape[-1] != n):
                raise self.error(f"fused bias {c.dtype}{c.shape} must hold the {n} output columns as {out.dtype}")
        return [out]

    def build_cuda(self, ins, outs, consts):
        a, b = tuple(ins[0].shape), tuple(ins[1].shape)
        if any(np.dtype(t.dtype) != np.float32 for t in ins if t is not None) or len(a) < 2 or len(b) < 2:
            return None
        from ..kernels.cuda.gemm import Gemm as CudaGemm

        k, n = b[-2], b[-1]
        if len(b) == 2:  # every row of A (its batch dims flattened) against one B
            m, batch, a_batch, b_batch = int(np.prod(a[:-1])), 1, 0, 0
        elif a[:-2] == b[:-2]:
            m, batch = a[-2], int(np.prod(a[:-2]))
            a_batch, b_batch = m * k, k * n
        else:
            return None  # broadcast batch dimensions: on the host for now
        g = CudaGemm(m, n, k, (k, 1), (n, 1), batch=batch, a_batch=a_batch, b_batch=b_batch,
                     bias_strides=(0, 1) if self.bias else None)

        def run(inputs, outputs, stream):
            g(inputs[0], inputs[1], outputs[0], inputs[2] if self.bias else None, stream)

        return Kernel(run, impl="cuda")

    def _infer_matmul(self, a, b):
        if a.dtype != b.dtype:
            raise self.error(f"A and B must share a dtype, got {a.dtype} and {b.dtype}")
        return TensorType(matmul_shape(self, a.shape, b.shape), a.dtype)

    grad_inputs = (0, 1)

    def backward(self, grads, ins, outs, needs):
        """dA = unbroadcast(dY @ B^T), dB = unbroadcast(A^T @ dY) (1-D operands promoted as in the forward),
        d(fused bias) = dY summed over every axis but the last; on the fp32 GEMM kernel."""
        from ..kernels.cpu.gemm import matmul

        a_t, b_t = self.in_types[0], self.in_types[1]
        a = np.asarray(ins[0], np.float32)
        b = np.asarray(ins[1], np.float32)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        out_shape = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1])
        g = grads[0] if grads[0] is not None else np.zeros(self.out_types[0].shape, np.float32)
        g2 = np.ascontiguousarray(g, np.float32).reshape(out_shape)
        res = [None] * len(self.in_types)
        if needs[0]:
            da = matmul(g2, np.swapaxes(b2, -1, -2))
            res[0] = unbroadcast(da, a2.shape).reshape(a_t.shape)
        if needs[1]:
            db = matmul(np.swapaxes(a2, -1, -2), g2)
            res[1] = unbroadcast(db, b2.shape).reshape(b_t.shape)
        if self.bias and needs[2]:
            n = g2.shape[-1]
            res[2] = g2.reshape(-1, n).sum(axis=0, dtype=np.float64).astype(np.float32).reshape(self.in_types[2].shape)
        return res

    def backward_cuda(self, grads, ins, outs, needs, stream):
        """On the device for a 2-D B (A's batch axes folded into its rows) and for equal batch axes: dA = dY B^T
        and dB = A^T dY as tiled GEMMs through transposing strides, the fused bias's gradient dY summed over
        the rows; broadcast batch axes and 1-D operands run ``backward`` on the host."""
        a_t, b_t = self.in_types[0], self.in_types[1]
        a, b = tuple(a_t.shape), tuple(b_t.shape)
        if any(np.dtype(t.dtype) != np.float32 for t in self.in_types if t is not None) or len(a) < 2 or len(b) < 2:
            return None
        if len(b) != 2 and a[:-2] != b[:-2]:
            return None
        from ..kernels.cuda import grad as G
        from ..kernels.cuda.gemm import Gemm as CudaGemm

        k, n = b[-2], b[-1]
        y_shape = tuple(self.out_types[0].shape)
        g = grads[0] if grads[0] is not None else G.zeros(y_shape, stream)
        out = [None] * len(self.in_types)
        if len(b) == 2:
            rows = int(np.prod(a[:-1], dtype=np.int64))
            if needs[0]:  # dA (rows, k) = dY (rows, n) B^T
                out[0] = G.empty(a, stream)
                CudaGemm(rows, k, n, (n, 1), (1, n))(g, ins[1], out[0], None, stream)
            if needs[1]:  # dB (k, n) = A^T (k, rows) dY
                out[1] = G.empty(b, stream)
                CudaGemm(k, n, rows, (1, k), (n, 1))(ins[0], g, out[1], None, stream)
        else:
            m, batch = a[-2], int(np.prod(a[:-2], dtype=np.int64))
            if needs[0]:  # dA[z] (m, k) = dY[z] (m, n) B[z]^T
                out[0] = G.empty(a, stream)
                CudaGemm(m, k, n, (n, 1), (1, n), batch=batch, a_batch=m * n, b_batch=k * n)(
                    g, ins[1], out[0], None, stream)
            if needs[1]:  # dB[z] (k, n) = A[z]^T dY[z]
                out[1] = G.empty(b, stream)
                CudaGemm(k, n, m, (1, k), (n, 1), batch=batch, a_batch=m * k, b_batch=m * n)(
                    ins[0], g, out[1], None, stream)
        if self.bias and needs[2]:
            out[2] = G.empty(self.in_types[2].shape, stream)
            G.Unbroadcast(y_shape, (y_shape[-1],))(g, out[2].reshape((y_shape[-1],)), stream=stream)
        return out

    def ref(self, a, b, c=None):
        if a.dtype.kind == "f":
            y = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
        else:
            y = np.matmul(a, b)
        if c is not None:
            y = (y + c.reshape(-1)).astype(y.dtype)
        return [y]

    def build(self, ins, outs, consts):
        if ins[0].dtype != np.float32:
            return ref_kernel(self)
        return _build_matmul_kernel(self, ins, outs, consts)


def _build_gemm_kernel(op: Gemm, ins, outs, consts) -> Kernel:
    from ..kernels.cpu.act_vec import act_run
    from ..kernels.cpu.gemm import PackedWeight, gemm

    m, n = outs[0].shape
    k = ins[0].shape[0] if op.trans_a else ins[0].shape[1]
    code, act_alpha, act_beta = op.act
    b_const = consts[1]
    has_c = len(op.node.inputs) > 2 and bool(op.node.inputs[2])
    c_const = consts[2] if has_c else None
    c_shape = ins[2].shape if has_c else None
    # A bias per output column: C absent, or a constant of N (or 1) values broadcast over the rows.
    column_bias = not has_c or (c_const is not None and (len(c_shape) < 2 or c_shape[0] == 1))
    if b_const is not None and column_bias:
        w = b_const.astype(np.float32) * np.float32(op.alpha) if op.alpha != 1.0 else b_const
        bias = None
        if has_c:
            bias = np.ascontiguousarray(np.broadcast_to(c_const.reshape(-1) * np.float32(op.beta), (n,)),
                                        dtype=np.float32)
        packed = PackedWeight(w, bias, trans_b=bool(op.trans_b), act=code, alpha=act_alpha, beta=act_beta)
        a_bytes = m * k * 4 if op.trans_a else 0
        scratch_bytes = a_bytes + packed.scratch_bytes(m)

        def run(inputs, outputs, scratch):
            a = inputs[0]
            rest = scratch
            if op.trans_a:  # NOTE: the packed path wants a C-contiguous A: transpose into the workspace
                a_t = scratch[:a_bytes].view(np.float32).reshape(m, k)
                np.copyto(a_t, a.T)
                a, rest = a_t, scratch[a_bytes:]
            packed(a, outputs[0], rest)

        bind = None
        if not op.trans_a:
            def bind(inputs, outputs, scratch, threads):
                return packed.bind(inputs[0], outputs[0], scratch, threads)

        return Kernel(run, scratch_bytes=scratch_bytes, bind=bind)

    # General case: B computed at run time, or a C that varies along the rows.
    def run_general(inputs, outputs, scratch):
        a = inputs[0].T if op.trans_a else inputs[0]
        b = inputs[1].T if op.trans_b else inputs[1]
        out = outputs[0]
        if has_c:
            np.multiply(np.broadcast_to(inputs[2], (m, n)), np.float32(op.beta), out=out)
        if op.alpha != 1.0:
            a = a * np.float32(op.alpha)  # NOTE: rare (alpha is folded into constant weights)
        gemm(a, b, out, accumulate=has_c)
        if code:
            act_run(out.reshape(-1), 0, out.size, code, act_alpha, act_beta)

    return Kernel(run_general)


def _build_matmul_kernel(op: MatMul, ins, outs, consts) -> Kernel:
    from ..kernels.cpu.gemm import PackedWeight, matmul

    a_shape, b_shape = ins[0].shape, ins[1].shape
    out_shape = outs[0].shape
    bias = consts[2] if op.bias else None
    if consts[1] is not None and len(b_shape) == 2 and len(a_shape) >= 1 and (bias is not None or not op.bias):
        # A constant (K, N) weight: pack it once; every row of A (over all batch dims) is one GEMM row.
        k, n = b_shape
        rows = int(np.prod(a_shape[:-1], dtype=np.int64)) if len(a_shape) > 1 else 1
        packed = PackedWeight(consts[1], None if bias is None else bias.reshape(-1), trans_b=False)

        def run(inputs, outputs, scratch):
            packed(inputs[0].reshape(rows, k), outputs[0].reshape(rows, n), scratch)

        def bind(inputs, outputs, scratch, threads):
            return packed.bind(inputs[0].reshape(rows, k), outputs[0].reshape(rows, n), scratch, threads)

        return Kernel(run, scratch_bytes=packed.scratch_bytes(rows), bind=bind)

    if len(b_shape) == 2 and len(a_shape) >= 1:
        return _rows_matmul_kernel(op, a_shape, b_shape)
    batched = _batched_matmul_kernel(op, a_shape, b_shape, out_shape)
    if batched is not None:
        return batched

    def run_general(inputs, outputs, scratch):
        out = outputs[0].reshape(out_shape)
        matmul(inputs[0], inputs[1], out)
        if op.bias:
            out += inputs[2].reshape(-1)

    return Kernel(run_general)


def _rows_matmul_kernel(op: MatMul, a_shape, b_shape) -> Kernel:
    """A (..., K) @ B (K, N) with B computed at run time: every row of A (over all batch dimensions) is one row
    of a single GEMM; up to FEW_ROWS_MAX rows run :func:`edgedl.kernels.cpu.few_rows.few_rows_matmul` (B streamed
    in place, no packing), more the GEMM driver."""
    from ..kernels.cpu.few_rows import FEW_ROWS_MAX, few_rows_matmul
    from ..kernels.cpu.gemm import gemm

    k, n = b_shape
    rows = int(np.prod(a_shape[:-1], dtype=np.int64)) if len(a_shape) > 1 else 1
    few = 0 < rows <= FEW_ROWS_MAX and k > 0 and n > 0

    def run(inputs, outputs, scratch):
        a = inputs[0].reshape(rows, k)
        out = outputs[0].reshape(rows, n)
        if few:
            few_rows_matmul(a, inputs[1], out)
        else:
            gemm(a, inputs[1], out)
        if op.bias:
            out += inputs[2].reshape(-1)

    return Kernel(run)


def _batched_matmul_kernel(op: MatMul, a_shape, b_shape, out_shape) -> Kernel | None:
    """MatMul with batch dimensions (A or B of rank >= 3, B not a packed constant: attention scores Q @ K^T,
    probabilities @ V): the whole batch in one compiled call of the GEMM driver
    (:class:`edgedl.kernels.cpu.einsum.BatchedGemm`: every A[g] packed into one buffer, B[g] read in place
    through its strides, broadcast batch dimensions included), instead of one GEMM call per matrix.
    None when there is no batch (or a batch of one)."""
    from ..kernels.cpu.einsum import BatchedGemm

    a2 = (1,) + tuple(a_shape) if len(a_shape) == 1 else tuple(a_shape)
    b2 = tuple(b_shape) + (1,) if len(b_shape) == 1 else tuple(b_shape)
    batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    g = int(np.prod(batch, dtype=np.int64))
    if len(batch) == 0 or g < 2:
        return None
    m, k = a2[-2:]
    n = b2[-1]
    bg = BatchedGemm(g, m, k, n)
    a_full, b_full = batch + (m, k), batch + (k, n)

    def run(inputs, outputs, scratch):
        a = inputs[0].reshape(a2)
        b = inputs[1].reshape(b2)
        # broadcast batch axes become zero strides; reshape copies only when they cannot be merged into one
        a3 = np.broadcast_to(a, a_full).reshape(g, m, k)
        b3 = np.broadcast_to(b, b_full).reshape(g, k, n)
        out = outputs[0].reshape(g, m, n)
        bg.run(a3, b3, out)
        if op.bias:
            out += inputs[2].reshape(-1)

    return Kernel(run)
