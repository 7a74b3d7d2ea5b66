"""SwiGLU (opset 28): the gated activation of Llama-style MLPs, ``Y = Swish_alpha(A) * B`` with
``Swish_alpha(a) = a * sigmoid(alpha * a)`` (alpha default 1.0). A and B must have the same shape and dtype (no
broadcasting); Y has that shape.

float32 runs the Numba kernel of :mod:`edgedl.kernels.cpu.swiglu` (parallel over contiguous chunks when large);
float16 / bfloat16 / float64 the numpy reference, which computes in float64 and rounds once.

Backward (training): with ``s = sigmoid(alpha * a)``, ``dB = dY * a * s`` and
``dA = dY * B * (s + alpha * a * s * (1 - s))`` (float32 Numba kernel; float64 numpy for other dtypes).
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register

_FLOATS = ("float16", "float32", "float64", "bfloat16")


def _sigmoid64(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))  # never overflows
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


@register
class SwiGLU(Op):
    op_type = "SwiGLU"
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 28:
            raise self.unsupported(f"SwiGLU is defined from opset 28 (the model has {opset})")
        self.alpha = float(self.attr("alpha", 1.0))

    def infer(self, ins, consts):
        a, b = ins
        for name, t in (("A", a), ("B", b)):
            if np.dtype(t.dtype).name not in _FLOATS:
                raise self.unsupported(f"{name} has dtype {np.dtype(t.dtype).name}; supported: {', '.join(_FLOATS)}")
        if np.dtype(a.dtype) != np.dtype(b.dtype):
            raise self.error(f"A ({np.dtype(a.dtype).name}) and B ({np.dtype(b.dtype).name}) must share a dtype")
        if tuple(a.shape) != tuple(b.shape):
            raise self.error(f"A {tuple(a.shape)} and B {tuple(b.shape)} must have the same shape (SwiGLU does not "
                             "broadcast)")
        return [TensorType(tuple(a.shape), a.dtype)]

    def ref(self, a, b):
        a64 = a.astype(np.float64)
        with np.errstate(all="ignore"):
            y = a64 * _sigmoid64(self.alpha * a64) * b.astype(np.float64)
        return [y.astype(a.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        from ..kernels.cpu import swiglu as K

        alpha = self.alpha

        def operands(inputs):
            # one compiled signature: read-only (constant) or strided operands become writable contiguous copies
            return [x.reshape(-1) if x.flags.c_contiguous and x.flags.writeable else np.ascontiguousarray(x).copy()
                    .reshape(-1) for x in inputs]

        def run(inputs, outputs, scratch):
            a, b = operands(inputs)
            K.swiglu(a, b, outputs[0].reshape(-1), alpha)

        def bind(inputs, outputs, scratch, threads):
            a, b = operands(inputs)
            return K.swiglu_bind(a, b, outputs[0].reshape(-1), alpha, threads)

        return Kernel(run, bind=bind)

    # --- training -----------------------------------------------------------------------------------------
    grad_inputs = (0, 1)

    def backward(self, grads, ins, outs, needs):
        shape = tuple(self.in_types[0].shape)
        if not (needs[0] or needs[1]):
            return [None, None]
        if grads[0] is None:
            return [np.zeros(shape, np.float32) if need else None for need in needs[:2]]
        a, b = ins
        if a.dtype == np.float32 and b.dtype == np.float32:
            from ..kernels.cpu import swiglu as K

            ac = np.ascontiguousarray(a).reshape(-1)
            bc = np.ascontiguousarray(b).reshape(-1)
            g = np.ascontiguousarray(grads[0], np.float32).reshape(-1)
            da = np.empty(g.size, np.float32)
            db = np.empty(g.size, np.float32) if needs[1] else da
            K.swiglu_grad(ac, bc, g, da, db, self.alpha, bool(needs[0]), bool(needs[1]))
            return [da.reshape(shape) if needs[0] else None, db.reshape(shape) if needs[1] else None]
        a64, b64, g64 = (np.asarray(v, np.float64) for v in (a, b, grads[0]))
        with np.errstate(all="ignore"):
            s = _sigmoid64(self.alpha * a64)
            da = g64 * b64 * (s + self.alpha * a64 * s * (1 - s))
            db = g64 * a64 * s
        return [da.astype(np.float32) if needs[0] else None, db.astype(np.float32) if needs[1] else None]
