"""onnxruntime's 8-bit contrib ops (domain ``com.microsoft``) that its optimizer writes into saved models of
quantized networks: dynamic quantization (``quantize_dynamic``) fused at ORT_ENABLE_EXTENDED, and the
channels-last layout of ORT_ENABLE_ALL (NhwcTransformer).

* MatMulIntegerToFloat (A, B, a_scale, b_scale[, a_zero_point, b_zero_point, bias]):
  ``Y = float((A - a_zp) @ (B - b_zp)) * (a_scale * b_scale) + bias`` with a per-tensor A and a per-tensor
  or per-column (N values) B; Y has a_scale's dtype.
* DynamicQuantizeMatMul (A float, B, b_scale[, b_zero_point, bias]): A quantized to uint8 over its range
  extended to 0 (DynamicQuantizeLinear: ``scale = (max - min) / 255``, ``zp = round(-min / scale)``, round half
  to even), then MatMulIntegerToFloat.
* NhwcMaxPool: MaxPool (every attribute) on an (N, spatial..., C) input, output (N, spatial'..., C).
* QLinearConv (com.microsoft): the standard QLinearConv; with ``channels_last`` = 1 the input and output are
  (N, spatial..., C) (the weights keep their (M, C / group, k...) layout).

Kernels: the integer MatMuls with a constant 2-D B run the 8-bit GEMM of :mod:`edgedl.kernels.cpu.gemm_i8`
on the raw A against ``B - b_zp`` (int32), then the float epilogue of :mod:`edgedl.kernels.cpu.contrib`
subtracts ``a_zp * colsum(B - b_zp)`` and scales (A's zero point may change every run). The channels-last
ops transpose into the workspace and run the NCHW op's kernel (MaxPool's 8-bit kernel, QLinearConv's).
"""
from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .gemm import matmul_shape
from .pool import MaxPool
from .qlinear import DynamicQuantizeLinear, QLinearConv, _int_matmul

MS = "com.microsoft"
_8BIT = ("int8", "uint8")


def _name(t: TensorType) -> str:
    return np.dtype(t.dtype).name


def _align(n: int) -> int:
    return -(-n // 64) * 64


# ----------------------------------------------------------------------------------------------------------
# integer MatMul -> float

class _IntMatMulFloat(Op):
    """Shared by MatMulIntegerToFloat and DynamicQuantizeMatMul. Subclasses name their input positions:
    ``A, B, A_SCALE, B_SCALE, A_ZP, B_ZP, BIAS`` (None where the op has no such input)."""

    A, B = 0, 1
    A_SCALE = A_ZP = B_SCALE = B_ZP = BIAS = None
    kernels = {"cpu": ("float32",)}

    def _opt(self, ins, index):
        if index is None or index >= len(ins):
            return None
        return ins[index]

    def _check(self, ins) -> tuple[TensorType, np.dtype]:
        """Validate B, the quantization parameters and the bias; (output type, float dtype)."""
        a, b = ins[self.A], ins[self.B]
        if _name(b) not in _8BIT:
            raise self.unsupported(f"B must be int8 or uint8, got {_name(b)}")
        b_scale = ins[self.B_SCALE]
        fdt = np.dtype(b_scale.dtype)
        if fdt.name not in ("float32", "float16"):
            raise self.unsupported(f"b_scale must be float32 or float16, got {fdt.name}")
        shape = matmul_shape(self, a.shape, b.shape)
        n = b.shape[-1] if len(b.shape) > 1 else 1
        b_zp = self._opt(ins, self.B_ZP)
        if b_zp is not None and np.dtype(b_zp.dtype) != np.dtype(b.dtype):
            raise self.error(f"b_zero_point has dtype {_name(b_zp)}, B {_name(b)}")
        for t, what in ((b_scale, "b_scale"), (b_zp, "b_zero_point")):
            if t is not None and t.size not in (1, n):
                raise self.unsupported(f"{what} must hold 1 value (per tensor) or {n} (per column), got shape "
                                       f"{tuple(t.shape)}")
        bias = self._opt(ins, self.BIAS)
        if bias is not None and (np.dtype(bias.dtype) != fdt or tuple(bias.shape) != (n,)):
            raise self.error(f"bias must be {fdt.name} of shape ({n},), got {_name(bias)}{tuple(bias.shape)}")
        return TensorType(shape, fdt), fdt

    # -- the numpy reference ------------------------------------------------------------------------------
    def _float_out(self, acc, a_scale, b_scale, bias, fdt):
        scale = np.float32(np.asarray(a_scale, np.float32).reshape(())) * np.asarray(b_scale, np.float32).reshape(-1)
        y = acc.astype(np.float32) * scale
        if bias is not None:
            y = y + np.asarray(bias, np.float32)
        return y.astype(fdt)

    def _int_ref(self, a, a_zp, b, b_zp):
        az = np.zeros((), np.int64) if a_zp is None else np.asarray(a_zp).reshape(())
        bz = np.zeros((), np.int64) if b_zp is None else np.asarray(b_zp).reshape(-1)
        return _int_matmul(a, az, b, bz)

    # -- the kernel -----------------------------------------------------------------------------------------
    def _gemm_parts(self, ins, consts):
        """(QGemm on the raw A, colsum(B - b_zp), b_scale (N,) float32) for a constant 2-D B with constant
        b parameters; None where the numpy reference must run."""
        from ..kernels.cpu.gemm_i8 import QGemm

        b_t = ins[self.B]
        if consts[self.B] is None or len(b_t.shape) != 2 or len(ins[self.A].shape) < 1:
            return None
        has_bzp = self._opt(ins, self.B_ZP) is not None
        if consts[self.B_SCALE] is None or (has_bzp and consts[self.B_ZP] is None):
            return None
        b = consts[self.B]
        n = b.shape[1]
        b_zp = np.broadcast_to(np.asarray(consts[self.B_ZP]).reshape(-1), (n,)).astype(np.int64) if has_bzp \
            else np.zeros(n, np.int64)
        try:
            gemm = QGemm(np.ascontiguousarray(b.T), None, None, 0, b_zp)
        except ValueError:  # K too large for the int32 accumulators: the reference (int64)
            return None
        colsum = (b.astype(np.int64) - b_zp[None, :]).sum(axis=0)
        b_scale = np.ascontiguousarray(np.broadcast_to(np.asarray(consts[self.B_SCALE], np.float32).reshape(-1),
                                                       (n,)))
        return gemm, colsum, b_scale

    def _int_kernel(self, ins, outs, parts, quantize=None) -> Kernel:
        """Kernel over the prepared parts. ``quantize(a, q, scratch) -> (a_scale, a_zp)`` turns a float A into
        uint8 ``q`` (DynamicQuantizeMatMul); without it A is already 8-bit and its parameters are inputs."""
        from ..kernels.cpu.contrib import int_to_float

        gemm, colsum, b_scale = parts
        a_shape = tuple(ins[self.A].shape)
        k = a_shape[-1]
        n = colsum.shape[0]
        rows = int(np.prod(a_shape[:-1], dtype=np.int64)) if len(a_shape) > 1 else 1
        acc_bytes = _align(rows * n * 4)
        q_bytes = _align(rows * k) if quantize is not None else 0
        a_zp_i, a_scale_i, bias_i = self.A_ZP, self.A_SCALE, self.BIAS
        fdt = np.dtype(outs[0].dtype)

        def run(inputs, outputs, scratch):
            acc = scratch[:rows * n * 4].view(np.int32).reshape(rows, n)
            if quantize is not None:
                q = scratch[acc_bytes:acc_bytes + rows * k].view(np.uint8).reshape(rows, k)
                a_scale, a_zp = quantize(inputs[self.A], q, scratch[acc_bytes + q_bytes:])
                a = q
            else:
                a = np.ascontiguousarray(inputs[self.A]).reshape(rows, k)
                a_scale = inputs[a_scale_i]
                zp = inputs[a_zp_i] if a_zp_i is not None and a_zp_i < len(inputs) else None
                a_zp = 0 if zp is None else int(np.asarray(zp).reshape(-1)[0])
            if rows == 0 or n == 0:
                return
            gemm.rows(a, acc)
            scale = np.float32(np.asarray(a_scale, np.float32).reshape(-1)[0]) * b_scale
            bias = inputs[bias_i] if bias_i is not None and bias_i < len(inputs) else None
            corr = colsum * a_zp
            if fdt == np.float32:
                int_to_float(acc, corr, scale, None if bias is None else np.ascontiguousarray(bias, np.float32),
                             outputs[0].reshape(rows, n))
            else:
                y = np.empty((rows, n), np.float32)
                int_to_float(acc, corr, scale, None if bias is None else np.asarray(bias, np.float32), y)
                outputs[0].reshape(rows, n)[...] = y

        return Kernel(run, scratch_bytes=acc_bytes + q_bytes + (self._quant_scratch if quantize else 0))

    _quant_scratch = 0


@register
class MatMulIntegerToFloat(_IntMatMulFloat):
    """com.microsoft MatMulIntegerToFloat (see the module docstring)."""

    op_type = "MatMulIntegerToFloat"
    domain = MS
    num_inputs = (4, 7)
    A_SCALE, B_SCALE, A_ZP, B_ZP, BIAS = 2, 3, 4, 5, 6

    def infer(self, ins, consts):
        a, a_scale = ins[0], ins[2]
        if _name(a) not in _8BIT:
            raise self.unsupported(f"A must be int8 or uint8, got {_name(a)}")
        out, fdt = self._check(ins)
        if np.dtype(a_scale.dtype) != fdt:
            raise self.error(f"a_scale ({_name(a_scale)}) and b_scale ({fdt.name}) must share a dtype")
        a_zp = self._opt(ins, self.A_ZP)
        for t, what in ((a_scale, "a_scale"), (a_zp, "a_zero_point")):
            if t is not None and t.size != 1:
                raise self.unsupported(f"{what} must be a scalar (per-tensor A), got shape {tuple(t.shape)}")
        if a_zp is not None and np.dtype(a_zp.dtype) != np.dtype(a.dtype):
            raise self.error(f"a_zero_point has dtype {_name(a_zp)}, A {_name(a)}")
        return [out]

    def ref(self, a, b, a_scale, b_scale, a_zp=None, b_zp=None, bias=None):
        acc = self._int_ref(a, a_zp, b, b_zp)
        return [self._float_out(acc, a_scale, b_scale, bias, np.asarray(a_scale).dtype)]

    def build(self, ins, outs, consts):
        parts = self._gemm_parts(ins, consts)
        if parts is None:
            return ref_kernel(self)
        return self._int_kernel(ins, outs, parts)


@register
class DynamicQuantizeMatMul(_IntMatMulFloat):
    """com.microsoft DynamicQuantizeMatMul (see the module docstring)."""

    op_type = "DynamicQuantizeMatMul"
    domain = MS
    num_inputs = (3, 5)
    B_SCALE, B_ZP, BIAS = 2, 3, 4

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.quant = DynamicQuantizeLinear(Node("DynamicQuantizeLinear", f"{node.name}/quantize_A",
                                                [node.inputs[0]], ["q", "scale", "zp"]), opset)

    def infer(self, ins, consts):
        a = ins[0]
        if _name(a) != "float32":
            raise self.unsupported(f"A must be float32, got {_name(a)}")
        out, fdt = self._check(ins)
        if fdt != np.float32:
            raise self.unsupported(f"b_scale must be float32, got {fdt.name}")
        return [out]

    def ref(self, a, b, b_scale, b_zp=None, bias=None):
        q, a_scale, a_zp = self.quant.ref(a)
        acc = self._int_ref(q, a_zp, b, b_zp)
        return [self._float_out(acc, a_scale, b_scale, bias, np.dtype(np.float32))]

    def build(self, ins, outs, consts):
        parts = self._gemm_parts(ins, consts)
        if parts is None:
            return ref_kernel(self)
        a_t = ins[0]
        qtypes = self.quant.infer([a_t], [None])
        qk = self.quant.build([a_t], qtypes, [None])
        self._quant_scratch = qk.scratch_bytes
        scale, zp = np.zeros((), np.float32), np.zeros((), np.uint8)

        def quantize(a, q, scratch):
            qk.fn([a], [q.reshape(a.shape), scale, zp], scratch)
            return scale, int(zp)

        return self._int_kernel(ins, outs, parts, quantize)


# ----------------------------------------------------------------------------------------------------------
# channels-last ops

def _to_first(shape) -> tuple[int, ...]:
    """(N, spatial..., C) -> (N, C, spatial...)."""
    return (shape[0], shape[-1], *shape[1:-1])


def _to_last(shape) -> tuple[int, ...]:
    """(N, C, spatial...) -> (N, spatial..., C)."""
    return (shape[0], *shape[2:], shape[1])


def _channels_last_kernel(kern: Kernel, x_last, x_dtype, y_first, y_dtype) -> Kernel:
    """``kern`` (channels-first input 0 and output 0) run on a channels-last input and output: both are
    transposed through the workspace."""
    x_first = _to_first(x_last)
    x_item, y_item = np.dtype(x_dtype).itemsize, np.dtype(y_dtype).itemsize
    nx = int(np.prod(x_first, dtype=np.int64)) * x_item
    ny = int(np.prod(y_first, dtype=np.int64)) * y_item
    xb, yb = _align(nx), _align(ny)
    fn = kern.fn

    def run(inputs, outputs, scratch):
        xt = scratch[:nx].view(x_dtype).reshape(x_first)
        np.copyto(xt, np.moveaxis(inputs[0], -1, 1))
        yt = scratch[xb:xb + ny].view(y_dtype).reshape(y_first)
        fn([xt, *inputs[1:]], [yt], scratch[xb + yb:])
        np.copyto(outputs[0], np.moveaxis(yt, 1, -1))

    return Kernel(run, scratch_bytes=xb + yb + kern.scratch_bytes, impl=kern.impl)


@register
class NhwcMaxPool(Op):
    """com.microsoft NhwcMaxPool: MaxPool over the spatial axes of an (N, spatial..., C) input."""

    op_type = "NhwcMaxPool"
    domain = MS
    kernels = {"cpu": ("int8", "uint8")}
    num_inputs = (1, 1)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        keep = ("kernel_shape", "pads", "strides", "dilations", "ceil_mode", "auto_pad")
        attrs = {k: v for k, v in node.attrs.items() if k in keep}
        self.pool = MaxPool(Node("MaxPool", node.name, list(node.inputs[:1]), list(node.outputs[:1]), attrs,
                                 ""), max(opset, 12))

    def infer(self, ins, consts):
        x = ins[0]
        if len(x.shape) < 3:
            raise self.error(f"input must be (N, spatial..., C) with rank >= 3, got shape {tuple(x.shape)}")
        y = self.pool.infer([TensorType(_to_first(x.shape), x.dtype)], consts)[0]
        return [TensorType(_to_last(y.shape), x.dtype)]

    def ref(self, x):
        y = self.pool.ref(np.moveaxis(x, -1, 1))[0]
        return [np.ascontiguousarray(np.moveaxis(y, 1, -1))]

    def build(self, ins, outs, consts):
        x = ins[0]
        x_first = TensorType(_to_first(x.shape), x.dtype)
        y_first = TensorType(_to_first(outs[0].shape), x.dtype)
        kern = self.pool.build([x_first], [y_first], consts)
        return _channels_last_kernel(kern, tuple(x.shape), x.dtype, y_first.shape, x.dtype)


@register
class QLinearConvMicrosoft(QLinearConv):
    """com.microsoft QLinearConv: QLinearConv with ``channels_last`` (1: (N, spatial..., C) input and output)."""

    domain = MS

    def __init__(self, node, opset):
        super().__init__(node, opset)
        cl = int(self.attr("channels_last", 0))
        if cl not in (0, 1):
            raise self.error(f"channels_last must be 0 or 1, got {cl}")
        self.channels_last = bool(cl)

    def infer(self, ins, consts):
        if not self.channels_last:
            return super().infer(ins, consts)
        x = ins[0]
        if len(x.shape) < 3:
            raise self.error(f"input must be (N, spatial..., C) with rank >= 3, got shape {tuple(x.shape)}")
        y = super().infer([TensorType(_to_first(x.shape), x.dtype), *ins[1:]], consts)[0]
        return [TensorType(_to_last(y.shape), y.dtype)]

    def ref(self, x, *rest):
        if not self.channels_last:
            return super().ref(x, *rest)
        y = super().ref(np.ascontiguousarray(np.moveaxis(x, -1, 1)), *rest)[0]
        return [np.ascontiguousarray(np.moveaxis(y, 1, -1))]

    def build(self, ins, outs, consts):
        if not self.channels_last:
            return super().build(ins, outs, consts)
        x = ins[0]
        x_first = TensorType(_to_first(x.shape), x.dtype)
        y_first = TensorType(_to_first(outs[0].shape), outs[0].dtype)
        kern = super().build([x_first, *ins[1:]], [y_first], consts)
        if kern.impl == "numpy":  # the reference kernel calls self.ref, which transposes itself
            return ref_kernel(self)
        return _channels_last_kernel(kern, tuple(x.shape), x.dtype, y_first.shape, outs[0].dtype)


__all__ = ["MatMulIntegerToFloat", "DynamicQuantizeMatMul", "NhwcMaxPool", "QLinearConvMicrosoft"]
