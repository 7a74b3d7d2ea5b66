"""Quantized linear ops: QLinearConv, QLinearMatMul, com.microsoft QGemm, ConvInteger, MatMulInteger and
DynamicQuantizeLinear, on the 8-bit GEMM of :mod:`edgedl.kernels.cpu.gemm_i8`.

Requantization mode (``edgedl.quant.requant``): imported QOperator and QDQ models run in ``"float"`` mode
(ONNX QLinear semantics as onnxruntime computes them). Models edgedl quantizes itself carry the internal
attribute ``_requant = "double"`` (TFLite fixed point, bit-exact with :mod:`edgedl.quant.reference`) or
``"single"``. A fused Relu/Clip (from the QDQ lowering pass) is the internal attribute ``_clamp = (lo, hi)``
in real units: the output range narrows to ``[Q(lo), Q(hi)]``, which is exactly ``Q(clip(y, lo, hi))``.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..quant.requant import MODE_FLOAT, MODES, Requant, requantize_reference
from ..registry import Kernel, Op, ref_kernel, register
from .common import broadcast_shapes, const_input
from .conv import Conv, ConvTranspose, _as_2d, _as_4d, _ConvBase
from .gemm import matmul_shape

_8BIT = (np.dtype(np.int8), np.dtype(np.uint8))


def requant_mode(op: Op) -> int:
    mode = op.attr("_requant", "float")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in MODES:
        raise op.error(f"unknown requantization mode {mode!r} (one of {sorted(MODES)})")
    return MODES[mode]


def scalar_param(op: Op, consts, ins, index: int, what: str, zero_dtype=None):
    """A per-tensor quantization parameter: a constant scalar (or 1-element) input. A missing zero point is
    0 of ``zero_dtype``."""
    if index >= len(op.node.inputs) or not op.node.inputs[index]:
        if zero_dtype is None:
            raise op.error(f"{what} (input {index}) is required")
        return np.zeros((), zero_dtype)
    value = const_input(op, consts, index, what)
    if value.size != 1:
        raise op.unsupported(f"{what} must be a scalar (per-tensor), got shape {value.shape}")
    return value.reshape(())


def channel_param(op: Op, consts, index: int, what: str, channels: int, dtype=None):
    """A per-tensor or per-channel parameter: a constant of 1 or ``channels`` values (zero when absent)."""
    if index >= len(op.node.inputs) or not op.node.inputs[index]:
        return np.zeros(channels, dtype or np.int64)
    value = const_input(op, consts, index, what).reshape(-1)
    if value.size not in (1, channels):
        raise op.error(f"{what} must hold 1 or {channels} values, got {value.size}")
    return np.broadcast_to(value, (channels,))


def check_scale(op: Op, scale: np.ndarray, what: str) -> None:
    s = np.asarray(scale, np.float64)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise op.error(f"{what} must be positive and finite, got {s.reshape(-1)[:4]}")


def output_bounds(op: Op, y_scale: float, y_zp: int, dtype: np.dtype, mode: int) -> tuple[int, int]:
    """The output range: the integer type's, narrowed by a fused ``_clamp = (lo, hi)`` in real units."""
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    clamp = op.attr("_clamp")
    if clamp is not None:
        c_lo, c_hi = float(clamp[0]), float(clamp[1])
        rnd = np.rint if mode == MODE_FLOAT else (lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5))
        if np.isfinite(c_lo):
            lo = max(lo, min(hi, int(rnd(np.float32(c_lo) / np.float32(y_scale))) + y_zp))
        if np.isfinite(c_hi):
            hi = min(hi, max(lo, int(rnd(np.float32(c_hi) / np.float32(y_scale))) + y_zp))
    return lo, hi


def linear_params(op: Op, consts, ins, channels: int, out_dtype, names=("x", "w")):
    """The QLinear input layout (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp): (x zero point, per-channel
    w zero points, Requant of ``channels`` channels for ``op.mode`` and its ``_clamp``), all validated."""
    a, b = names
    x_scale = scalar_param(op, consts, ins, 1, f"{a}_scale")
    x_zp = scalar_param(op, consts, ins, 2, f"{a}_zero_point", ins[0].dtype)
    w_scale = channel_param(op, consts, 4, f"{b}_scale", channels)
    w_zp = channel_param(op, consts, 5, f"{b}_zero_point", channels)
    y_scale = scalar_param(op, consts, ins, 6, "y_scale")
    y_zp = scalar_param(op, consts, ins, 7, "y_zero_point", out_dtype)
    for v, what in ((x_scale, f"{a}_scale"), (w_scale, f"{b}_scale"), (y_scale, "y_scale")):
        check_scale(op, v, what)
    lo, hi = output_bounds(op, float(y_scale), int(y_zp), np.dtype(out_dtype), op.mode)
    req = Requant.for_scales(x_scale, w_scale, y_scale, channels, int(y_zp), lo, hi, op.mode)
    return int(x_zp), w_zp.astype(np.int64), req


def _check_8bit(op: Op, t: TensorType, what: str) -> None:
    if np.dtype(t.dtype) not in _8BIT:
        raise op.unsupported(f"{what} must be int8 or uint8, got {np.dtype(t.dtype).name}")


def _check_zp_dtype(op: Op, ins, index: int, data: TensorType, what: str) -> None:
    if index < len(ins) and ins[index] is not None and np.dtype(ins[index].dtype) != np.dtype(data.dtype):
        raise op.error(f"{what} has dtype {np.dtype(ins[index].dtype).name}, its tensor "
                       f"{np.dtype(data.dtype).name}")


def conv_float_types(op: Op, ins) -> list[TensorType | None]:
    """Check the 8-bit inputs of a QLinearConv-like op (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp[, B])
    and return float32 stand-ins of (x, w, B) for the float op's shape rule."""
    x, w, y_zp = ins[0], ins[3], ins[7]
    _check_8bit(op, x, "input x")
    _check_8bit(op, w, "weight w")
    _check_8bit(op, y_zp, "y_zero_point")
    _check_zp_dtype(op, ins, 2, x, "x_zero_point")
    _check_zp_dtype(op, ins, 5, w, "w_zero_point")
    b = ins[8] if len(ins) > 8 else None
    if b is not None and np.dtype(b.dtype) != np.int32:
        raise op.error(f"bias must be int32, got {np.dtype(b.dtype).name}")
    f32 = np.dtype(np.float32)
    return [TensorType(x.shape, f32), TensorType(w.shape, f32), None if b is None else TensorType(b.shape, f32)]


@register
class QLinearConv(_ConvBase):
    """ONNX QLinearConv: (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp[, B int32])."""

    op_type = "QLinearConv"
    kernels = {"cpu": ("int8", "uint8"), "cuda": ("int8", "uint8")}
    num_inputs = (8, 9)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = requant_mode(self)
        self.residual = False

    _infer_conv = Conv._infer_conv
    _pads = Conv._pads

    def infer(self, ins, consts):
        out = self._infer_conv(conv_float_types(self, ins))
        return [TensorType(out.shape, np.dtype(ins[7].dtype))]

    def _params(self, consts, ins, outs):
        return linear_params(self, consts, ins, ins[3].shape[0], outs[0].dtype)

    def _geometry4(self):
        kernel, strides, dilations, pads = _as_2d(*self.geometry)
        return kernel, strides, dilations, pads

    def ref(self, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b=None):
        from ..quant.reference import conv2d_accumulate

        consts = [x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b]
        ins = [TensorType(a.shape, a.dtype) if a is not None else None for a in consts]
        out_t = TensorType((), np.asarray(y_zp).dtype)
        xz, wz, req = self._params(consts, ins, [out_t])
        kernel, strides, dilations, pads = self._geometry4()
        x4 = x.reshape(_as_4d(x.shape))
        w4 = w.reshape(*w.shape[:2], *kernel)
        acc = conv2d_accumulate(x4, xz, w4, wz, b, strides, pads, dilations, self.group)
        y = requantize_reference(acc, req, channel_axis=1).astype(out_t.dtype)
        return [y.reshape(x.shape[0], w.shape[0], *out_spatial(self.geometry, x.shape))]

    def build_cuda(self, ins, outs, consts):
        if len(ins[0].shape) not in (3, 4) or consts[3] is None:
            return None
        has_bias = len(self.node.inputs) > 8 and bool(self.node.inputs[8])
        if has_bias and consts[8] is None:
            return None
        try:
            x_zp, w_zp, req = self._params(consts, ins, outs)
        except EdgeDLError:
            return None  # quantization parameters computed at run time
        from ..kernels.cuda import simulated
        from ..kernels.cuda.dp4a import QConv2dDp4a
        from ..kernels.cuda.quant import QConv2d

        kernel, strides, dilations, pads = self._geometry4()
        x4, y4 = _as_4d(ins[0].shape), _as_4d(outs[0].shape)
        w_shape = (*ins[3].shape[:2], *kernel)
        reduction, per_group = int(np.prod(w_shape[1:])), w_shape[0] // self.group
        if not simulated() and reduction >= 8 and per_group >= 8 and \
                QConv2dDp4a.applies(ins[3].dtype, w_zp, reduction):  # on a GPU: four products per instruction
            d = QConv2dDp4a(x4, ins[0].dtype, consts[3].reshape(w_shape), y4, strides, pads, dilations, self.group,
                            x_zp, req)
            return Kernel(lambda inputs, outputs, stream: d(inputs[0], inputs[8] if has_bias else None, outputs[0],
                                                            stream), impl="cuda")
        k = QConv2d(x4, w_shape, y4, strides, pads, dilations, self.group, x_zp, w_zp, req)

        def run(inputs, outputs, stream):
            k(inputs[0], inputs[3], inputs[8] if has_bias else None, outputs[0], stream)

        return Kernel(run, impl="cuda")

    def build(self, ins, outs, consts):
        if len(ins[0].shape) not in (3, 4) or consts[3] is None:
            return ref_kernel(self)
        x_zp, w_zp, req = self._params(consts, ins, outs)
        kernel, strides, dilations, pads = self._geometry4()
        x_shape, out_shape = _as_4d(ins[0].shape), _as_4d(outs[0].shape)
        w = consts[3].reshape(*consts[3].shape[:2], *kernel)
        bias = consts[8] if len(consts) > 8 else None
        if len(self.node.inputs) > 8 and self.node.inputs[8] and bias is None:
            return ref_kernel(self)
        conv = make_qconv(w, w_zp, bias, req, x_shape, x_zp, strides, pads, dilations, self.group)
        return _conv_kernel(conv, x_shape, out_shape)


def out_spatial(geometry, x_shape) -> list[int]:
    """Output spatial sizes of a convolution geometry (kernel, strides, dilations, pads) on input x_shape."""
    kernel, strides, dilations, pads = geometry[:4]
    nsp = len(kernel)
    return [(x_shape[2 + i] + pads[i] + pads[i + nsp] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
            for i in range(nsp)]


def make_qconv(w, w_zp, bias, req, x_shape, x_zp, strides, pads, dilations, group):
    """The fastest prepared 8-bit convolution for this geometry: the depthwise kernel when every group is
    one channel in and out, else the implicit-im2col GEMM."""
    from ..kernels.cpu.conv_i8 import QConv2d

    c, m = x_shape[1], w.shape[0]
    if req is not None and group == c == m and w.shape[1] == 1:
        try:
            from ..kernels.cpu.depthwise_i8 import QDepthwise2d
        except ImportError:  # pragma: no cover - the depthwise kernel ships with the package
            QDepthwise2d = None
        if QDepthwise2d is not None:
            return QDepthwise2d(w, w_zp, bias, req, x_shape, x_zp, strides, pads, dilations)
    return QConv2d(w, bias, req, x_shape, x_zp, strides, pads, dilations, group, w_zp)


def _conv_kernel(conv, x_shape, out_shape) -> Kernel:
    scratch_bytes = int(getattr(conv, "scratch_bytes", 0))

    def run(inputs, outputs, scratch):
        if scratch_bytes:
            conv(inputs[0].reshape(x_shape), outputs[0].reshape(out_shape), scratch)
        else:
            conv(inputs[0].reshape(x_shape), outputs[0].reshape(out_shape))

    def bind(inputs, outputs, scratch, threads):
        if hasattr(conv, "bind"):
            return conv.bind(inputs[0].reshape(x_shape), outputs[0].reshape(out_shape), scratch, threads)
        x, out = inputs[0].reshape(x_shape), outputs[0].reshape(out_shape)
        return lambda: conv(x, out)

    return Kernel(run, scratch_bytes=scratch_bytes, bind=bind)


@register
class QLinearConvTranspose(_ConvBase):
    """edgedl's 8-bit ConvTranspose (made by the QDQ lowering pass; there is no standard QOperator op): inputs
    as QLinearConv's, (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp[, B int32]), the weight (C, M/group,
    kH, kW) quantized per tensor or per output channel (axis 1), ConvTranspose's attributes."""

    op_type = "QLinearConvTranspose"
    domain = "edgedl"
    kernels = {"cpu": ("int8", "uint8")}
    num_inputs = (8, 9)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = requant_mode(self)

    _float_infer = ConvTranspose.infer

    def infer(self, ins, consts):
        out = self._float_infer(conv_float_types(self, ins), [None] * 3)[0]
        return [TensorType(out.shape, np.dtype(ins[7].dtype))]

    def _params(self, consts, ins, out_dtype):
        return linear_params(self, consts, ins, ins[3].shape[1] * self.group, out_dtype)

    def ref(self, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b=None):
        arrays = [x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b]
        ins = [TensorType(a.shape, a.dtype) if a is not None else None for a in arrays]
        xz, wz, req = self._params(arrays, ins, np.asarray(y_zp).dtype)
        kernel, strides, dilations, pads, out_pad, out = self.geometry
        cg, cog = x.shape[1] // self.group, w.shape[1]
        zp_of_group = wz.reshape(self.group, cog)                          # per output channel, by group
        w64 = w.astype(np.int64) - np.concatenate(
            [np.broadcast_to(zp_of_group[g].reshape(1, cog, *(1,) * len(kernel)), (cg, cog, *kernel))
             for g in range(self.group)])
        from .conv import conv_transpose_ref

        acc = np.rint(conv_transpose_ref((x.astype(np.int64) - xz).astype(np.float64), w64.astype(np.float64),
                                         None, strides, pads, dilations, self.group, out)).astype(np.int64)
        if b is not None:
            acc = acc + b.astype(np.int64).reshape((1, -1) + (1,) * len(kernel))
        return [requantize_reference(acc, req, channel_axis=1).astype(np.asarray(y_zp).dtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.conv_transpose_i8 import QConvTranspose2d

        kernel, strides, dilations, pads, out_pad, out = self.geometry
        has_b = len(self.node.inputs) > 8 and bool(self.node.inputs[8])
        if len(kernel) != 2 or consts[3] is None or (has_b and consts[8] is None):
            return ref_kernel(self)
        x_zp, w_zp, req = self._params(consts, ins, outs[0].dtype)
        conv = QConvTranspose2d(consts[3], consts[8] if has_b else None, req, ins[0].shape, x_zp, strides,
                                (pads[0], pads[1], pads[2], pads[3]), dilations, out, self.group, w_zp)
        return _conv_kernel(conv, ins[0].shape, outs[0].shape)


@register
class ConvInteger(_ConvBase):
    """ONNX ConvInteger: int32 y = sum (x - x_zp)(w - w_zp) (w_zp per tensor or per output channel)."""

    op_type = "ConvInteger"
    kernels = {"cpu": ("int8", "uint8")}
    num_inputs = (2, 4)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.residual = False

    _infer_conv = Conv._infer_conv
    _pads = Conv._pads

    def infer(self, ins, consts):
        x, w = ins[0], ins[1]
        _check_8bit(self, x, "input x")
        _check_8bit(self, w, "weight w")
        _check_zp_dtype(self, ins, 2, x, "x_zero_point")
        _check_zp_dtype(self, ins, 3, w, "w_zero_point")
        out = self._infer_conv([TensorType(x.shape, np.dtype(np.float32)), TensorType(w.shape, np.dtype(np.float32))])
        return [TensorType(out.shape, np.dtype(np.int32))]

    def _zps(self, consts, ins):
        x_zp = scalar_param(self, consts, ins, 2, "x_zero_point", ins[0].dtype)
        w_zp = channel_param(self, consts, 3, "w_zero_point", ins[1].shape[0])
        return int(x_zp), w_zp.astype(np.int64)

    def ref(self, x, w, x_zp=None, w_zp=None):
        from ..quant.reference import conv2d_accumulate

        arrays = [x, w, x_zp, w_zp]
        xz, wz = self._zps(arrays, [TensorType(a.shape, a.dtype) if a is not None else None for a in arrays])
        kernel, strides, dilations, pads = _as_2d(*self.geometry)
        acc = conv2d_accumulate(x.reshape(_as_4d(x.shape)), xz, w.reshape(*w.shape[:2], *kernel), wz, None, strides,
                                pads, dilations, self.group)
        return [acc.astype(np.int32).reshape(x.shape[0], w.shape[0], *out_spatial(self.geometry, x.shape))]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.conv_i8 import QConv2d

        if len(ins[0].shape) not in (3, 4) or consts[1] is None:
            return ref_kernel(self)
        kernel, strides, dilations, pads = _as_2d(*self.geometry)
        x_shape, out_shape = _as_4d(ins[0].shape), _as_4d(outs[0].shape)
        w = consts[1].reshape(*consts[1].shape[:2], *kernel)
        w_zp = channel_param(self, consts, 3, "w_zero_point", ins[1].shape[0]).astype(np.int64)
        has_xzp = len(self.node.inputs) > 2 and bool(self.node.inputs[2])
        if has_xzp and consts[2] is None:  # computed at run time (DynamicQuantizeLinear): a kernel per value
            if ins[2] is not None and int(np.prod(ins[2].shape, dtype=np.int64)) != 1:
                raise self.unsupported("x_zero_point must be a scalar")
            return _runtime_zero_point_kernel(
                lambda zp: QConv2d(w, None, None, x_shape, zp, strides, pads, dilations, self.group, w_zp),
                lambda conv, x, out, scratch: conv(x.reshape(x_shape), out.reshape(out_shape)))
        x_zp, _ = self._zps(consts, ins)
        conv = QConv2d(w, None, None, x_shape, x_zp, strides, pads, dilations, self.group, w_zp)
        return _conv_kernel(conv, x_shape, out_shape)


#: prepared kernels kept per op for zero points computed at run time (most recently used)
RUNTIME_ZERO_POINTS_KEPT = 16


def _runtime_zero_point_kernel(make, call) -> Kernel:
    """A kernel for an 8-bit op whose input zero point is a tensor computed at run time (onnxruntime's dynamic
    quantization: DynamicQuantizeLinear -> ConvInteger / MatMulInteger): ``make(zp)`` prepares the op for one
    zero point (weights packed with its corrections), kept for the last :data:`RUNTIME_ZERO_POINTS_KEPT` values
    seen, and ``call(prepared, x, out, scratch)`` runs it. A zero point is one of 256 values, so the plan never
    has to specialize on the data that produced it."""
    cache: dict[int, object] = {}

    def run(inputs, outputs, scratch):
        zp = int(np.asarray(inputs[2]).reshape(()))
        prepared = cache.pop(zp, None)
        if prepared is None:
            prepared = make(zp)
            if len(cache) >= RUNTIME_ZERO_POINTS_KEPT:
                cache.pop(next(iter(cache)))
        cache[zp] = prepared
        call(prepared, inputs[0], outputs[0], scratch)

    return Kernel(run)


def _int_matmul(a, a_zp, b, b_zp) -> np.ndarray:
    """int64 numpy matmul of (a - a_zp) and (b - b_zp); a_zp per row (…, M) or scalar, b_zp per column."""
    a64 = np.asarray(a, np.int64)
    b64 = np.asarray(b, np.int64)
    az = np.asarray(a_zp, np.int64)
    bz = np.asarray(b_zp, np.int64)
    if az.ndim and az.size > 1 and a64.ndim >= 2:
        az = az.reshape(-1, 1)
    return np.matmul(a64 - az, b64 - bz.reshape(-1) if bz.size > 1 else b64 - bz.reshape(()))


class _MatMulRows:
    """Shared by the MatMul-like ops: a constant 2-D B (K, N) runs as one GEMM over every row of A."""

    @staticmethod
    def kernel(gemm, a_shape, out_shape) -> Kernel:
        k = a_shape[-1]
        rows = int(np.prod(a_shape[:-1], dtype=np.int64)) if len(a_shape) > 1 else 1
        n = out_shape[-1] if len(out_shape) else 1

        def run(inputs, outputs, scratch):
            gemm.rows(inputs[0].reshape(rows, k), outputs[0].reshape(rows, n))

        def bind(inputs, outputs, scratch, threads):
            a, out = inputs[0].reshape(rows, k), outputs[0].reshape(rows, n)
            if a.flags.c_contiguous and out.flags.c_contiguous:
                return gemm.bind(a, out, threads, "rows")
            return lambda: gemm.rows(a, out, threads)

        return Kernel(run, bind=bind)


@register
class QLinearMatMul(Op):
    """ONNX QLinearMatMul: (a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp); numpy matmul shapes. The
    kernel handles per-tensor a parameters and a constant 2-D b (per-column b parameters)."""

    op_type = "QLinearMatMul"
    kernels = {"cpu": ("int8", "uint8"), "cuda": ("int8", "uint8")}
    num_inputs = (8, 8)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = requant_mode(self)

    def infer(self, ins, consts):
        a, b, y_zp = ins[0], ins[3], ins[7]
        for t, what in ((a, "input a"), (b, "input b"), (y_zp, "y_zero_point")):
            _check_8bit(self, t, what)
        _check_zp_dtype(self, ins, 2, a, "a_zero_point")
        _check_zp_dtype(self, ins, 5, b, "b_zero_point")
        return [TensorType(matmul_shape(self, a.shape, b.shape), np.dtype(y_zp.dtype))]

    def _params(self, consts, ins, out_dtype):
        n = ins[3].shape[-1] if len(ins[3].shape) > 1 else 1
        return linear_params(self, consts, ins, n, out_dtype, ("a", "b"))

    def ref(self, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        arrays = [a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp]
        az, bz, req = self._params(arrays, [TensorType(v.shape, v.dtype) for v in arrays], np.asarray(y_zp).dtype)
        acc = _int_matmul(a, az, b, bz)
        return [requantize_reference(acc, req, channel_axis=-1).astype(np.asarray(y_zp).dtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.gemm_i8 import QGemm

        if consts[3] is None or len(ins[3].shape) != 2 or len(ins[0].shape) < 1:
            return ref_kernel(self)
        a_zp, b_zp, req = self._params(consts, ins, outs[0].dtype)
        gemm = QGemm(np.ascontiguousarray(consts[3].T), None, req, a_zp, b_zp)
        return _MatMulRows.kernel(gemm, ins[0].shape, outs[0].shape)

    def build_cuda(self, ins, outs, consts):
        if consts[3] is None or len(ins[3].shape) != 2 or len(ins[0].shape) < 1:
            return None
        try:
            a_zp, b_zp, req = self._params(consts, ins, outs[0].dtype)
        except EdgeDLError:
            return None
        return _cuda_rows(ins[0].shape, ins[0].dtype, outs[0].shape, np.ascontiguousarray(consts[3].T), None, a_zp,
                          b_zp, req)


@register
class MatMulInteger(Op):
    """ONNX MatMulInteger: int32 (a - a_zp) @ (b - b_zp); a_zp per tensor or per row, b_zp per tensor or per
    column."""

    op_type = "MatMulInteger"
    kernels = {"cpu": ("int8", "uint8")}
    num_inputs = (2, 4)

    def infer(self, ins, consts):
        a, b = ins[0], ins[1]
        _check_8bit(self, a, "input A")
        _check_8bit(self, b, "input B")
        _check_zp_dtype(self, ins, 2, a, "a_zero_point")
        _check_zp_dtype(self, ins, 3, b, "b_zero_point")
        return [TensorType(matmul_shape(self, a.shape, b.shape), np.dtype(np.int32))]

    def ref(self, a, b, a_zp=None, b_zp=None):
        az = np.zeros((), np.int64) if a_zp is None else a_zp
        bz = np.zeros((), np.int64) if b_zp is None else b_zp
        return [_int_matmul(a, az, b, bz).astype(np.int32)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.gemm_i8 import QGemm

        has_azp = len(self.node.inputs) > 2 and bool(self.node.inputs[2])
        scalar_azp = not has_azp or (ins[2] is not None and int(np.prod(ins[2].shape, dtype=np.int64)) == 1)
        if consts[1] is None or len(ins[1].shape) != 2 or not scalar_azp:
            return ref_kernel(self)
        n = ins[1].shape[1]
        b_zp = channel_param(self, consts, 3, "b_zero_point", n).astype(np.int64)
        w = np.ascontiguousarray(consts[1].T)
        if has_azp and consts[2] is None:  # computed at run time (DynamicQuantizeLinear): a GEMM per value
            def call(gemm_kernel, a, out, scratch):
                gemm_kernel.fn([a], [out], scratch)

            return _runtime_zero_point_kernel(
                lambda zp: _MatMulRows.kernel(QGemm(w, None, None, zp, b_zp), ins[0].shape, outs[0].shape), call)
        a_zp = int(consts[2].reshape(())) if has_azp else 0
        gemm = QGemm(w, None, None, a_zp, b_zp)
        return _MatMulRows.kernel(gemm, ins[0].shape, outs[0].shape)


@register
class QGemmMicrosoft(Op):
    """com.microsoft QGemm: (A, a_scale, a_zp, B, b_scale, b_zp[, C int32, y_scale, y_zp]) with alpha,
    transA, transB. ``acc = (A' - a_zp)(B' - b_zp) + C`` in int32, real value ``alpha * a_scale *
    b_scale[n] * acc``; quantized to (y_scale, y_zp) when y_scale is given, float32 otherwise."""

    op_type = "QGemm"
    domain = "com.microsoft"
    kernels = {"cpu": ("int8", "uint8"), "cuda": ("int8", "uint8")}
    num_inputs = (6, 9)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.0))
        self.trans_a = int(self.attr("transA", 0))
        self.trans_b = int(self.attr("transB", 0))
        self.mode = requant_mode(self)
        self.quantized = len(node.inputs) > 7 and bool(node.inputs[7])

    def infer(self, ins, consts):
        a, b = ins[0], ins[3]
        _check_8bit(self, a, "input A")
        _check_8bit(self, b, "input B")
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise self.error(f"A and B must be 2-D, got {a.shape} and {b.shape}")
        m, k = a.shape[::-1] if self.trans_a else a.shape
        k2, n = b.shape[::-1] if self.trans_b else b.shape
        if k != k2:
            raise self.error(f"inner dimensions differ: A' is ({m}, {k}), B' is ({k2}, {n})")
        c = ins[6] if len(ins) > 6 else None
        if c is not None:
            if np.dtype(c.dtype) != np.int32:
                raise self.error(f"C must be int32, got {np.dtype(c.dtype).name}")
            broadcast_shapes(self, c.shape, (m, n))
        if self.quantized:
            y_zp = ins[8] if len(ins) > 8 else None
            return [TensorType((m, n), np.dtype(y_zp.dtype) if y_zp is not None else np.dtype(a.dtype))]
        return [TensorType((m, n), np.dtype(np.float32))]

    def ref(self, a, a_scale, a_zp, b, b_scale, b_zp, c=None, y_scale=None, y_zp=None):
        a2 = a.T if self.trans_a else a
        b2 = b.T if self.trans_b else b
        n = b2.shape[1]
        acc = _int_matmul(a2, a_zp, b2, np.broadcast_to(b_zp.reshape(-1), (n,)) if b_zp.size > 1 else b_zp)
        if c is not None:
            acc = acc + np.asarray(c, np.int64)
        scale = np.float32(self.alpha) * np.float32(a_scale.reshape(())) * np.asarray(b_scale, np.float32).reshape(-1)
        if not self.quantized:
            return [(acc.astype(np.float32) * scale).astype(np.float32)]
        zdt = y_zp.dtype if y_zp is not None else a.dtype
        zp = int(y_zp.reshape(())) if y_zp is not None else 0
        lo, hi = output_bounds(self, float(y_scale.reshape(())), zp, np.dtype(zdt), self.mode)
        req = Requant.for_scales(np.float32(self.alpha) * np.float32(a_scale.reshape(())), b_scale, y_scale, n, zp, lo,
                                 hi, self.mode)
        return [requantize_reference(acc, req, channel_axis=-1).astype(zdt)]

    def _rows_params(self, ins, outs, consts):
        """(B as [N, K], int32 bias or None, a_zp, b_zp, Requant) when the kernels apply (constant B and
        quantization parameters, A not transposed, C per column, quantized output), else None (the
        reference)."""
        c_given = len(self.node.inputs) > 6 and bool(self.node.inputs[6])
        c = consts[6] if c_given else None
        column_c = not c_given or (c is not None and (len(c.shape) < 2 or c.shape[0] == 1))
        if (consts[3] is None or self.trans_a or not column_c or not self.quantized
                or any(consts[i] is None for i in (1, 2, 4, 5))):
            return None
        b = consts[3] if self.trans_b else consts[3].T
        n = b.shape[0]
        a_zp = int(scalar_param(self, consts, ins, 2, "a_zero_point", ins[0].dtype))
        b_zp = channel_param(self, consts, 5, "b_zero_point", n).astype(np.int64)
        b_scale = channel_param(self, consts, 4, "b_scale", n)
        a_scale = np.float32(self.alpha) * np.float32(scalar_param(self, consts, ins, 1, "a_scale"))
        y_scale = scalar_param(self, consts, ins, 7, "y_scale")
        y_zp = int(scalar_param(self, consts, ins, 8, "y_zero_point", outs[0].dtype))
        check_scale(self, y_scale, "y_scale")
        lo, hi = output_bounds(self, float(y_scale), y_zp, outs[0].dtype, self.mode)
        req = Requant.for_scales(a_scale, b_scale, y_scale, n, y_zp, lo, hi, self.mode)
        bias = None if c is None else np.broadcast_to(c.reshape(-1), (n,)).astype(np.int32)
        return np.ascontiguousarray(b), bias, a_zp, b_zp, req

    def build(self, ins, outs, consts):
        from ..kernels.cpu.gemm_i8 import QGemm

        params = self._rows_params(ins, outs, consts)
        if params is None:
            return ref_kernel(self)
        b, bias, a_zp, b_zp, req = params
        return _MatMulRows.kernel(QGemm(b, bias, req, a_zp, b_zp), ins[0].shape, outs[0].shape)

    def build_cuda(self, ins, outs, consts):
        params = self._rows_params(ins, outs, consts)
        if params is None:
            return None  # as on the CPU: the reference runs it, on the host
        b, bias, a_zp, b_zp, req = params
        return _cuda_rows(ins[0].shape, ins[0].dtype, outs[0].shape, b, bias, a_zp, b_zp, req)


def _cuda_rows(a_shape, a_dtype, out_shape, b_nk, bias, a_zp, b_zp, req) -> Kernel:
    """The CUDA kernel of an 8-bit GEMM over every row of A against a constant B [N, K] (uploaded once): the
    dp4a GEMM on a GPU (:mod:`edgedl.kernels.cuda.dp4a`), one thread per output in the simulator."""
    from numba import cuda

    from ..kernels.cuda import simulated
    from ..kernels.cuda.dp4a import MAX_K, QGemmDp4a
    from ..kernels.cuda.quant import QGemmRows

    k = a_shape[-1]
    rows = int(np.prod(a_shape[:-1], dtype=np.int64)) if len(a_shape) > 1 else 1
    n = out_shape[-1] if len(out_shape) else 1
    bias_dev = None if bias is None else cuda.to_device(np.ascontiguousarray(bias, np.int32))
    if not simulated() and k <= MAX_K:  # on a GPU: four products per instruction (the simulator: one per thread)
        d = QGemmDp4a(rows, n, k, a_dtype, a_zp, b_nk, b_zp, req)
        return Kernel(lambda inputs, outputs, stream: d(inputs[0], bias_dev, outputs[0], stream), impl="cuda")
    g = QGemmRows(rows, n, k, a_zp, b_zp, req)
    b_dev = cuda.to_device(b_nk)
    return Kernel(lambda inputs, outputs, stream: g(inputs[0], b_dev, bias_dev, outputs[0], stream), impl="cuda")


@register
class DynamicQuantizeLinear(Op):
    """ONNX DynamicQuantizeLinear: float32 -> (uint8 y, y_scale, y_zero_point) over the tensor's range
    extended to 0 (onnx's reference semantics: round half to even)."""

    op_type = "DynamicQuantizeLinear"
    kernels = {"cpu": ("float32",)}

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype) != np.float32:
            raise self.unsupported(f"input must be float32, got {np.dtype(x.dtype).name}")
        return [TensorType(x.shape, np.dtype(np.uint8)), TensorType((), np.dtype(np.float32)),
                TensorType((), np.dtype(np.uint8))]

    def ref(self, x):
        x = np.asarray(x, np.float32)
        hi = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0)
        lo = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0)
        scale = np.float32(np.float32(1.0 if hi == lo else hi - lo) / np.float32(255))
        zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
        y = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
        return [y, np.array(scale, np.float32), np.array(zp, np.uint8)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.quantize import dynamic_quantize_u8

        def run(inputs, outputs, scratch):
            x = inputs[0]
            if not x.size:
                outputs[1][...], outputs[2][...] = np.float32(1.0) / np.float32(255), 0
                return
            flat = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
            y = outputs[0]
            dst = y.reshape(-1) if y.flags.c_contiguous else np.empty(y.size, np.uint8)
            scale, zp, ok = dynamic_quantize_u8(flat, dst)
            if not ok:
                y_ref, scale, zp = self.ref(x)  # NaN / Inf: the reference's numpy semantics
                dst = y_ref.reshape(-1)
            if not y.flags.c_contiguous or not ok:
                y[...] = dst.reshape(y.shape)
            outputs[1][...] = scale
            outputs[2][...] = zp

        return Kernel(run)


__all__ = ["QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemmMicrosoft", "DynamicQuantizeLinear",
           "make_qconv", "requant_mode", "scalar_param", "channel_param", "check_scale", "output_bounds",
           "linear_params"]
