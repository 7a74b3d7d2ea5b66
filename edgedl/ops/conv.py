"""Conv and ConvTranspose (any spatial rank in the reference; Numba kernels for 1D and 2D float32)."""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .fused import activation_ref, fused_activation


def _ints(op: Op, name: str, default: list[int], n: int) -> list[int]:
    value = op.attr(name)
    if value is None:
        return list(default)
    value = [int(v) for v in value]
    if len(value) != n:
        raise op.error(f"attribute {name} has {len(value)} values, expected {n}")
    return value


class _ConvBase(Op):
    num_inputs = (2, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.group = int(self.attr("group", 1))
        self.auto_pad = self.attr("auto_pad", "NOTSET")
        if isinstance(self.auto_pad, bytes):
            self.auto_pad = self.auto_pad.decode()
        if self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise self.error(f"unknown auto_pad '{self.auto_pad}'")
        if self.group < 1:
            raise self.error(f"group must be positive, got {self.group}")
        self.act = fused_activation(self)

    def _geometry(self, x: TensorType, w: TensorType):
        """Validate input against weight; (spatial rank, kernel, strides, dilations)."""
        if x.dtype != w.dtype:
            raise self.error(f"input dtype {x.dtype} and weight dtype {w.dtype} differ")
        if len(x.shape) < 3:
            raise self.error(f"input must be (N, C, spatial...), got shape {x.shape}")
        if len(w.shape) != len(x.shape):
            raise self.error(f"weight rank {len(w.shape)} (shape {w.shape}) does not match input rank "
                             f"{len(x.shape)} (shape {x.shape})")
        nsp = len(x.shape) - 2
        kernel = list(w.shape[2:])
        ks = self.attr("kernel_shape")
        if ks is not None and [int(k) for k in ks] != kernel:
            raise self.error(f"kernel_shape {list(ks)} does not match the weight's spatial shape {kernel}")
        strides = _ints(self, "strides", [1] * nsp, nsp)
        dilations = _ints(self, "dilations", [1] * nsp, nsp)
        if any(s < 1 for s in strides) or any(d < 1 for d in dilations) or any(k < 1 for k in kernel):
            raise self.error(f"strides {strides}, dilations {dilations} and kernel {kernel} must be positive")
        return nsp, kernel, strides, dilations

    def _check_bias(self, b: TensorType | None, channels: int):
        if b is not None and tuple(b.shape) != (channels,):
            raise self.error(f"bias must have shape ({channels},), got {b.shape}")

    def _gradient_list(self, dx, dw, dy, needs) -> list:
        """[dx, dw, db] shaped as the inputs (None where not computed or asked for); db sums dy."""
        from ..kernels.cpu.conv_grad import bias_grad

        out = [None] * len(self.in_types)
        if dx is not None:
            out[0] = dx.reshape(self.in_types[0].shape)
        if dw is not None:
            out[1] = dw.reshape(self.in_types[1].shape)
        if len(out) > 2 and self.in_types[2] is not None and needs[2]:
            out[2] = bias_grad(dy)
        return out

@register
class Conv(_ConvBase):
    """ONNX Conv. A fused residual connection (``attrs["_residual"]``, set by the fuse pass) adds a fourth
    input R: ``y = act(conv(x, w) + b + R)``, R broadcast to the convolution's shape."""

    op_type = "Conv"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    num_inputs = (2, 4)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.residual = bool(self.attr("_residual", False))
        if len([i for i in node.inputs if i]) > 3 and not self.residual or self.residual and len(node.inputs) < 4:
            raise self.error("takes 2 to 3 inputs (a fourth only as a fused residual)")

    def infer(self, ins, consts):
        out = self._infer_conv(ins)
        if self.residual:
            r = ins[3]
            if r.dtype != out.dtype:
                raise self.error(f"fused residual dtype {r.dtype} differs from the convolution's {out.dtype}")
            try:
                shape = np.broadcast_shapes(out.shape, r.shape)
            except ValueError:
                raise self.error(f"fused residual of shape {r.shape} does not broadcast with the convolution "
                                 f"output {out.shape}") from None
            if shape != tuple(out.shape):
                raise self.error(f"fused residual of shape {r.shape} would broadcast the convolution output "
                                 f"{out.shape} to {shape}")
        return [out]

    def _infer_conv(self, ins):
        x, w = ins[0], ins[1]
        b = ins[2] if len(ins) > 2 else None
        nsp, kernel, strides, dilations = self._geometry(x, w)
        n, c = x.shape[:2]
        m = w.shape[0]
        if c != w.shape[1] * self.group:
            raise self.error(f"input has {c} channels but the weight expects {w.shape[1]} x group {self.group}"
                             f" = {w.shape[1] * self.group} (weight shape {w.shape})")
        if m % self.group:
            raise self.error(f"{m} output channels are not divisible by group {self.group}")
        self._check_bias(b, m)
        spatial = x.shape[2:]
        pads = self._pads(spatial, kernel, strides, dilations, nsp)
        out = []
        for i in range(nsp):
            span = (kernel[i] - 1) * dilations[i] + 1
            padded = spatial[i] + pads[i] + pads[i + nsp]
            if span > padded:
                raise self.error(f"kernel {'x'.join(map(str, kernel))} (dilated extent {span} on spatial axis "
                                 f"{i}) is larger than the padded input ({padded})")
            out.append((padded - span) // strides[i] + 1)
        self.geometry = (kernel, strides, dilations, pads)
        return TensorType((n, m, *out), x.dtype)

    def _pads(self, spatial, kernel, strides, dilations, nsp):
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for i in range(nsp):
                out = -(-spatial[i] // strides[i])
                total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
                small, big = total // 2, total - total // 2
                begin.append(small if self.auto_pad == "SAME_UPPER" else big)
                end.append(big if self.auto_pad == "SAME_UPPER" else small)
            return begin + end
        if self.auto_pad == "VALID":
            return [0] * (2 * nsp)
        pads = _ints(self, "pads", [0] * (2 * nsp), 2 * nsp)
        if any(p < 0 for p in pads):
            raise self.error(f"negative pads {pads} are not allowed")
        return pads

    def ref(self, x, w, b=None, r=None):
        kernel, strides, dilations, pads = self.geometry
        y = conv_ref(x, w, b, strides, pads, dilations, self.group).astype(x.dtype)
        if r is not None:
            y = y + r
        return [activation_ref(y, *self.act)]

    grad_inputs = (0, 1)

    def backward(self, grads, ins, outs, needs):
        """dx and dw by :func:`edgedl.kernels.cpu.conv_grad.conv2d_grads` (depthwise: both in one pass; 1x1
        stride 1: GEMMs on the NCHW planes; otherwise a dot-product kernel for dw and the GEMM + col2im per
        chunk of images for dx), db by summing dy. 1-D and 2-D convolutions."""
        from ..kernels.cpu.conv_grad import conv2d_grads

        if self.act[0] or self.residual:
            raise self.unsupported("has a fused activation or residual: train the graph before fusion")
        x, w = ins[0], ins[1]
        x_t, w_t = self.in_types[0], self.in_types[1]
        if len(x_t.shape) not in (3, 4) or np.dtype(x_t.dtype) != np.float32:
            raise self.unsupported(f"backward supports float32 1-D and 2-D convolutions, got {x_t.dtype}{x_t.shape}")
        kernel, strides, dilations, pads = _as_2d(*self.geometry)
        x_shape, y_shape = _as_4d(tuple(x_t.shape)), _as_4d(tuple(self.out_types[0].shape))
        w_shape = (*w_t.shape[:2], *kernel)
        dy = np.ascontiguousarray(grads[0] if grads[0] is not None else np.zeros(y_shape, np.float32),
                                  np.float32).reshape(y_shape)
        need_dx, need_dw = bool(needs[0]), bool(needs[1])
        dx = dw = None
        if need_dx or need_dw:
            wc = np.ascontiguousarray(w, np.float32).reshape(w_shape) if need_dx else None
            xs = np.ascontiguousarray(x, np.float32).reshape(x_shape) if need_dw else None
            dx, dw = conv2d_grads(xs, dy, wc, x_shape, w_shape, strides, (pads[0], pads[1]), dilations, self.group,
                                  need_dx, need_dw)
        return self._gradient_list(dx if need_dx else None, dw if need_dw else None, dy, needs)

    def backward_cuda(self, grads, ins, outs, needs, stream):
        """On the device: dx is the transposed convolution of dy by w (the forward's geometry), dw one block
        per weight element (:class:`~edgedl.kernels.cuda.grad.ConvWeightGrad`), db dy summed per channel."""
        x_t, w_t, y_t = self.in_types[0], self.in_types[1], self.out_types[0]
        if self.act[0] or self.residual or len(x_t.shape) not in (3, 4) or np.dtype(x_t.dtype) != np.float32:
            return None  # the host backward says why (or runs the float64 path)
        from ..kernels.cuda import grad as G
        from ..kernels.cuda.conv import ConvTranspose2d

        _, strides, dilations, pads = self.geometry
        dy = grads[0] if grads[0] is not None else G.zeros(y_t.shape, stream)
        out = [None] * len(self.in_types)
        if needs[0]:
            out[0] = G.empty(x_t.shape, stream)
            ConvTranspose2d(y_t.shape, w_t.shape, x_t.shape, strides, pads, dilations, self.group)(
                dy, ins[1], None, out[0], stream)
        if needs[1]:
            out[1] = G.empty(w_t.shape, stream)
            G.ConvWeightGrad(x_t.shape, w_t.shape, y_t.shape, strides, pads, dilations, self.group)(
                ins[0], dy, out[1], stream)
        if len(out) > 2 and self.in_types[2] is not None and needs[2]:
            out[2] = G.empty(self.in_types[2].shape, stream)
            G.Unbroadcast(y_t.shape, (1, y_t.shape[1]) + (1,) * (len(y_t.shape) - 2))(dy, out[2], stream=stream)
        return out

    def build_cuda(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32 or len(x.shape) not in (3, 4):
            return None
        if self.residual and tuple(ins[3].shape) != tuple(outs[0].shape):
            return None
        from ..kernels.cuda.conv import Conv2d

        kernel, strides, dilations, pads = self.geometry
        k = Conv2d(x.shape, ins[1].shape, outs[0].shape, strides, pads, dilations, self.group, self.act)
        has_bias = len(ins) > 2 and ins[2] is not None
        res_index = 3 if self.residual else None

        def run(inputs, outputs, stream):
            k(inputs[0], inputs[1], inputs[2] if has_bias else None,
              inputs[res_index] if res_index is not None else None, outputs[0], stream)

        return Kernel(run, impl="cuda")

    def build(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32 or len(x.shape) not in (3, 4):
            return ref_kernel(self)
        if self.residual and (tuple(ins[3].shape) != tuple(outs[0].shape) or consts[3] is not None):
            return _build_conv_then_add(self, ins, outs, consts)
        return _build_conv_kernel(self, ins, outs, consts)


def conv_ref(x, w, b, strides, pads, dilations, group):
    """Direct N-d convolution in float64 (the spec): y[n, m, o...] = sum_c,k x[n, c, o*s + k*d - p] w[m, c, k]."""
    nsp = x.ndim - 2
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(pads[i], pads[i + nsp]) for i in range(nsp)])
    n, c = x.shape[:2]
    m = w.shape[0]
    kernel = w.shape[2:]
    out_sp = [(xp.shape[2 + i] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(nsp)]
    y = np.zeros((n, m, *out_sp))
    cg, mg = c // group, m // group
    w64 = w.astype(np.float64)
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for offs in itertools.product(*[range(k) for k in kernel]):
            sl = tuple(slice(offs[i] * dilations[i], offs[i] * dilations[i] + strides[i] * (out_sp[i] - 1) + 1,
                             strides[i]) for i in range(nsp))
            patch = xs[(slice(None), slice(None)) + sl]
            wk = w64[(slice(g * mg, (g + 1) * mg), slice(None)) + tuple(offs)]
            y[:, g * mg:(g + 1) * mg] += np.einsum("nc...,mc->nm...", patch, wk)
    if b is not None:
        y += b.astype(np.float64).reshape((1, m) + (1,) * nsp)
    return y


@register
class ConvTranspose(_ConvBase):
    op_type = "ConvTranspose"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}

    def infer(self, ins, consts):
        x, w = ins[0], ins[1]
        b = ins[2] if len(ins) > 2 else None
        nsp, kernel, strides, dilations = self._geometry(x, w)
        n, c = x.shape[:2]
        if c != w.shape[0]:
            raise self.error(f"input has {c} channels but the weight (shape {w.shape}) expects {w.shape[0]}")
        if c % self.group:
            raise self.error(f"{c} input channels are not divisible by group {self.group}")
        m = w.shape[1] * self.group
        self._check_bias(b, m)
        spatial = x.shape[2:]
        out_pad = _ints(self, "output_padding", [0] * nsp, nsp)
        for i in range(nsp):
            if out_pad[i] < 0 or (out_pad[i] >= strides[i] and out_pad[i] >= dilations[i]):
                raise self.error(f"output_padding {out_pad} must be smaller than the stride or the dilation")
        full = [strides[i] * (spatial[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
                for i in range(nsp)]
        out_shape = self.attr("output_shape")
        if out_shape is not None:
            out_shape = [int(v) for v in out_shape][-nsp:]
            if len(out_shape) != nsp:
                raise self.error(f"output_shape {list(self.attr('output_shape'))} does not have {nsp} spatial dims")
            pads = [0] * (2 * nsp)
            for i in range(nsp):
                total = full[i] - out_shape[i]
                if self.auto_pad == "SAME_UPPER":
                    pads[i], pads[i + nsp] = total // 2, total - total // 2
                else:
                    pads[i], pads[i + nsp] = total - total // 2, total // 2
        elif self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * nsp)
            for i in range(nsp):
                total = max(0, full[i] - spatial[i] * strides[i])
                if self.auto_pad == "SAME_UPPER":
                    pads[i], pads[i + nsp] = total // 2, total - total // 2
                else:
                    pads[i], pads[i + nsp] = total - total // 2, total // 2
        elif self.auto_pad == "VALID":
            pads = [0] * (2 * nsp)
        else:
            pads = _ints(self, "pads", [0] * (2 * nsp), 2 * nsp)
        out = [full[i] - pads[i] - pads[i + nsp] for i in range(nsp)]
        if any(o < 1 for o in out):
            raise self.error(f"pads {pads} leave an empty output (full output {full})")
        self.geometry = (kernel, strides, dilations, pads, out_pad, out)
        return [TensorType((n, m, *out), x.dtype)]

    def ref(self, x, w, b=None):
        kernel, strides, dilations, pads, out_pad, out = self.geometry
        y = conv_transpose_ref(x, w, b, strides, pads, dilations, self.group, out)
        return [activation_ref(y.astype(x.dtype), *self.act)]

    grad_inputs = (0, 1)

    def backward(self, grads, ins, outs, needs):
        """dx = the ordinary convolution of dy with w, dw = x against im2col(dy), one GEMM per group (one input
        channel per group: direct kernels), db = dy summed (:mod:`edgedl.kernels.cpu.convt_grad`). 1-D and
        2-D; every attribute of the forward (group, strides, dilations, pads / auto_pad, output_padding,
        output_shape) reaches the backward through the geometry ``infer`` stored."""
        from ..kernels.cpu.convt_grad import conv_transpose2d_grads

        if self.act[0]:
            raise self.unsupported("has a fused activation: train the graph before fusion")
        x_t, w_t = self.in_types[0], self.in_types[1]
        if len(x_t.shape) not in (3, 4) or np.dtype(x_t.dtype) != np.float32:
            raise self.unsupported(f"backward supports float32 1-D and 2-D transposed convolutions, got "
                                   f"{x_t.dtype}{x_t.shape}")
        kernel, strides, dilations, pads, _, _ = self.geometry
        if any(p < 0 for p in pads):
            # NOTE: an output_shape larger than the full output (onnxruntime rejects it); the forward
            # reference does not produce it either, so there is no forward to differentiate
            raise self.unsupported(f"backward of an output_shape beyond the full output (pads {pads})")
        kernel, strides, dilations, pads = _as_2d(kernel, strides, dilations, pads)
        y_t = self.out_types[0]
        x_shape, y_shape = _as_4d(tuple(x_t.shape)), _as_4d(tuple(y_t.shape))
        w_shape = (*w_t.shape[:2], *kernel)
        dy = grads[0]
        if dy is None:
            dy = np.zeros(y_shape, np.float32)
        elif tuple(np.shape(dy)) != tuple(y_t.shape):
            raise self.error(f"output gradient of shape {np.shape(dy)}, expected {tuple(y_t.shape)}")
        dy = np.ascontiguousarray(dy, np.float32).reshape(y_shape)
        need_dx, need_dw = bool(needs[0]), bool(needs[1])
        if need_dx and ins[1] is None or need_dw and ins[0] is None:
            raise self.error("backward needs the forward input and weight (grad_inputs)")
        w = np.ascontiguousarray(ins[1], np.float32).reshape(w_shape) if need_dx else None
        x = np.ascontiguousarray(ins[0], np.float32).reshape(x_shape) if need_dw else None
        dx, dw = conv_transpose2d_grads(dy, x, w, x_shape, w_shape, strides, (pads[0], pads[1]), dilations,
                                        self.group, need_dx, need_dw)
        return self._gradient_list(dx if need_dx else None, dw if need_dw else None, dy, needs)

    def build(self, ins, outs, consts):
        if ins[0].dtype != np.float32 or len(ins[0].shape) not in (3, 4):
            return ref_kernel(self)
        return _build_conv_transpose_kernel(self, ins, outs, consts)

    def build_cuda(self, ins, outs, consts):
        if ins[0].dtype != np.float32 or len(ins[0].shape) not in (3, 4):
            return None
        from ..kernels.cuda.conv import ConvTranspose2d

        kernel, strides, dilations, pads, _, _ = self.geometry
        k = ConvTranspose2d(ins[0].shape, ins[1].shape, outs[0].shape, strides, pads, dilations, self.group,
                            self.act)
        has_bias = len(ins) > 2 and ins[2] is not None

        def run(inputs, outputs, stream):
            k(inputs[0], inputs[1], inputs[2] if has_bias else None, outputs[0], stream)

        return Kernel(run, impl="cuda")


def conv_transpose_ref(x, w, b, strides, pads, dilations, group, out_sp):
    """Transposed convolution in float64 by scattering each input pixel's kernel (the spec)."""
    nsp = x.ndim - 2
    n, c = x.shape[:2]
    cg = c // group
    mg = w.shape[1]
    kernel = w.shape[2:]
    # an output_shape beyond the full output gives negative pads: zeros before (lead) and after the scatter
    lead = [max(0, -pads[i]) for i in range(nsp)]
    full = [lead[i] + max(strides[i] * (x.shape[2 + i] - 1) + (kernel[i] - 1) * dilations[i] + 1, pads[i] + out_sp[i])
            for i in range(nsp)]
    y = np.zeros((n, mg * group, *full))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for g in range(group):
        xs = x64[:, g * cg:(g + 1) * cg]
        for offs in itertools.product(*[range(k) for k in kernel]):
            sl = tuple(slice(lead[i] + offs[i] * dilations[i],
                             lead[i] + offs[i] * dilations[i] + strides[i] * (x.shape[2 + i] - 1) + 1, strides[i])
                       for i in range(nsp))
            wk = w64[(slice(g * cg, (g + 1) * cg), slice(None)) + tuple(offs)]
            y[(slice(None), slice(g * mg, (g + 1) * mg)) + sl] += np.einsum("nc...,cm->nm...", xs, wk)
    y = y[(slice(None), slice(None)) + tuple(slice(lead[i] + pads[i], lead[i] + pads[i] + out_sp[i])
                                             for i in range(nsp))]
    if b is not None:
        y = y + b.astype(np.float64).reshape((1, -1) + (1,) * nsp)
    return y


def _as_2d(kernel, strides, dilations, pads):
    """1-D geometry as 2-D with a unit height (Conv1D runs on the 2-D kernels)."""
    if len(kernel) == 2:
        return kernel, strides, dilations, pads
    return [1, kernel[0]], [1, strides[0]], [1, dilations[0]], [0, pads[0], 0, pads[1]]


def _as_4d(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, C, L) as (N, C, 1, L); 4-D shapes unchanged."""
    return shape if len(shape) == 4 else (*shape[:2], 1, shape[2])


def _constant_params(op: Op, consts) -> tuple[np.ndarray | None, np.ndarray | None, bool]:
    """(weight, bias, all constant): the prepare step packs constant weights once."""
    w = consts[1]
    has_bias = len(op.node.inputs) > 2 and bool(op.node.inputs[2])
    b = consts[2] if has_bias else None
    return w, b, w is not None and (b is not None or not has_bias)


def _conv2d_kernel(op: Conv, ins, outs, consts, *, fused_act: bool, accumulate: bool) -> Kernel:
    """The Conv2d kernel of the node (1-D as 2-D), with or without its fused activation / accumulation."""
    from ..kernels.cpu.conv import Conv2d

    kernel, strides, dilations, pads = _as_2d(*op.geometry)
    x_shape, out_shape = _as_4d(ins[0].shape), _as_4d(outs[0].shape)
    w_shape = (*ins[1].shape[:2], *kernel)
    code, alpha, beta = op.act if fused_act else (0, 0.0, 0.0)

    def make(w, b):
        return Conv2d(w.reshape(w_shape), b, x_shape, strides, pads, dilations, op.group, code, alpha, beta,
                      accumulate=accumulate)

    return _conv_kernel(op, make, consts, w_shape, x_shape, out_shape)


def _build_conv_kernel(op: Conv, ins, outs, consts) -> Kernel:
    kern = _conv2d_kernel(op, ins, outs, consts, fused_act=True, accumulate=op.residual)
    if not op.residual:
        return kern
    # fused residual: the output starts as a copy of R and the GEMM accumulates onto it; the activation runs
    # after the sum, in the epilogue (R and the output never share memory: both are live at this step)
    inner_fn, inner_bind = kern.fn, kern.bind

    def run(inputs, outputs, scratch):
        np.copyto(outputs[0], inputs[3])
        inner_fn(inputs, outputs, scratch)

    bind = None
    if inner_bind is not None:
        def bind(inputs, outputs, scratch, threads):
            conv_call = inner_bind(inputs, outputs, scratch, threads)
            out, res = outputs[0], inputs[3]

            def call():
                np.copyto(out, res)
                conv_call()

            return call

    return Kernel(run, scratch_bytes=kern.scratch_bytes, bind=bind)


def _build_conv_then_add(op: Conv, ins, outs, consts) -> Kernel:
    """A fused residual the GEMM epilogue cannot take (broadcast or constant R): the convolution without
    activation into the workspace, then the add and the activation (rare; correct, not fast)."""
    from ..kernels.cpu.act_vec import act_run

    code, alpha, beta = op.act
    nbytes = int(np.prod(outs[0].shape)) * 4
    conv = _conv2d_kernel(op, ins, outs, consts, fused_act=False, accumulate=False)

    def run(inputs, outputs, scratch):
        raw = scratch[:nbytes]
        tmp = raw.view(np.float32).reshape(outputs[0].shape)
        conv.fn(inputs, [tmp], scratch[nbytes:])
        np.add(tmp, inputs[3], out=outputs[0])
        act_run(outputs[0].reshape(-1), 0, outputs[0].size, code, alpha, beta)

    return Kernel(run, scratch_bytes=nbytes + conv.scratch_bytes)


def _build_conv_transpose_kernel(op: ConvTranspose, ins, outs, consts) -> Kernel:
    from ..kernels.cpu.conv import ConvTranspose2d

    kernel, strides, dilations, pads, out_pad, _ = op.geometry
    if any(p < 0 for p in pads):
        return ref_kernel(op)  # an output_shape larger than the full output: numpy reference
    if len(kernel) == 1:
        out_pad = [0, out_pad[0]]
    kernel, strides, dilations, pads = _as_2d(kernel, strides, dilations, pads)
    x_shape, out_shape = _as_4d(ins[0].shape), _as_4d(outs[0].shape)
    w_shape = (*ins[1].shape[:2], *kernel)
    code, alpha, beta = op.act

    def make(w, b):
        conv = ConvTranspose2d(w.reshape(w_shape), b, x_shape, strides, pads, dilations, out_pad, op.group,
                               code, alpha, beta)
        if tuple(conv.out_shape) != tuple(out_shape):
            raise op.error(f"internal: transposed convolution kernel computes {conv.out_shape}, "
                           f"shape rule says {out_shape}")
        return conv

    return _conv_kernel(op, make, consts, w_shape, x_shape, out_shape)


def _conv_kernel(op: Op, make, consts, w_shape, x_shape, out_shape) -> Kernel:
    """A Kernel over a prepared 2-D (transposed) convolution ``make(weight, bias)``: constant weights are
    packed once, here; weights computed at run time (rare) are packed on every call."""
    w, b, constant = _constant_params(op, consts)
    if constant:
        conv = make(w, b)

        def run(inputs, outputs, scratch):
            conv(inputs[0].reshape(x_shape), outputs[0].reshape(out_shape), scratch)

        bind = None
        if hasattr(conv, "bind"):
            def bind(inputs, outputs, scratch, threads):
                return conv.bind(inputs[0].reshape(x_shape), outputs[0].reshape(out_shape), scratch, threads)

        return Kernel(run, scratch_bytes=conv.scratch_bytes, bind=bind)

    probe = make(np.zeros(w_shape, np.float32), None)
    prepared = []  # the convolution of the last call: new weights are repacked into it when it can

    def run_dynamic(inputs, outputs, scratch):
        w, b = inputs[1], inputs[2] if len(inputs) > 2 else None
        conv = prepared[0] if prepared else None
        if conv is None or not hasattr(conv, "repack") or not conv.repack(w, b):
            conv = make(w, b)
            prepared[:] = [conv]
        conv(inputs[0].reshape(x_shape), outputs[0].reshape(out_shape), scratch)

    return Kernel(run_dynamic, scratch_bytes=probe.scratch_bytes)
