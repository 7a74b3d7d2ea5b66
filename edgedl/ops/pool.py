"""Pooling: MaxPool (with the optional Indices output), AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool.

Windowed pooling works for any spatial rank >= 1 (1D, 2D, 3D, ...); float32 runs Numba kernels
(``edgedl.kernels.cpu.pool``), other dtypes (MaxPool int8/uint8, float16/float64) the numpy reference.

Output sizes follow the ONNX spec for every opset:

* explicit pads: ``floor((in + pb + pe - ext) / s) + 1`` with ``ext = (k - 1) * d + 1``; with ceil_mode the
  ceiling, minus one when the last window would start past the input and the left padding;
* auto_pad SAME_UPPER / SAME_LOWER: ``ceil(in / s)``, total padding ``(out - 1) * s + ext - in`` (the odd
  element at the end for SAME_UPPER, at the beginning for SAME_LOWER); VALID: no padding, floor.

Semantics: MaxPool ignores padding and NaN inputs (onnx's reference); AveragePool divides by the number of
window elements inside the input (count_include_pad=0) or inside the padded input (count_include_pad=1;
windows that hang past the padded input because of ceil_mode divide by the clipped count, as onnx's
reference and onnxruntime do). Indices are flat over (N, C, spatial...), row-major over the spatial axes
or column-major with storage_order=1; ties keep the first element in row-major window order. LpPool takes
``(sum of |x| ** p) ** (1 / p)`` over the window's elements inside the input.

Backward (training, float32): MaxPool routes dy to each window's first maximum in row-major window order,
recomputed from the saved input (the Indices output gets no gradient); AveragePool spreads dy / count over
the window's elements inside the input; both run the Numba kernels of :mod:`edgedl.kernels.cpu.pool_grad`.
GlobalAveragePool broadcasts dy / size.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _fmt(v) -> str:
    return "x".join(str(int(i)) for i in v)


class _WindowPool(Op):
    """Shared attribute parsing and geometry for MaxPool and AveragePool."""

    num_inputs = (1, 1)
    float_dtypes = ("float16", "float32", "float64")

    def __init__(self, node, opset):
        super().__init__(node, opset)
        ks = self.attr("kernel_shape")
        if ks is None:
            raise self.error("the kernel_shape attribute is required")
        self.kernel_shape = [int(k) for k in ks]
        if not self.kernel_shape:
            raise self.error("kernel_shape is empty")
        nsp = len(self.kernel_shape)
        self.auto_pad = self.attr("auto_pad", "NOTSET")
        if isinstance(self.auto_pad, bytes):
            self.auto_pad = self.auto_pad.decode()
        if self.auto_pad == "":
            self.auto_pad = "NOTSET"
        if self.auto_pad not in _AUTO_PADS:
            raise self.error(f"unknown auto_pad '{self.auto_pad}' (expected one of {', '.join(_AUTO_PADS)})")
        self.strides = self._ints("strides", [1] * nsp, nsp)
        self.dilations = self._ints("dilations", [1] * nsp, nsp)
        self.pads_attr = self._ints("pads", [0] * (2 * nsp), 2 * nsp)
        self.ceil_mode = int(self.attr("ceil_mode", 0))
        if any(k < 1 for k in self.kernel_shape):
            raise self.error(f"kernel_shape {self.kernel_shape} must be positive")
        if any(s < 1 for s in self.strides):
            raise self.error(f"strides {self.strides} must be positive")
        if any(d < 1 for d in self.dilations):
            raise self.error(f"dilations {self.dilations} must be positive")
        if any(p < 0 for p in self.pads_attr):
            raise self.error(f"negative pads {self.pads_attr} are not allowed")

    def _ints(self, name, default, n):
        value = self.attr(name)
        if value is None:
            return list(default)
        value = [int(v) for v in value]
        if len(value) != n:
            raise self.error(f"attribute {name} has {len(value)} values, expected {n} for kernel_shape "
                             f"{self.kernel_shape}")
        return value

    def geometry(self, x: TensorType):
        """(in_sp, out_sp, pads) for input ``x``; raises on bad shapes. Also stored on ``self.geom``."""
        shape = tuple(x.shape)
        nsp = len(self.kernel_shape)
        if len(shape) < 3:
            raise self.error(f"input must be (N, C, spatial...) with rank >= 3, got shape {shape}")
        if len(shape) - 2 != nsp:
            raise self.error(f"kernel_shape {self.kernel_shape} has {nsp} spatial dims but the input shape "
                             f"{shape} has {len(shape) - 2}")
        in_sp = list(shape[2:])
        k, s, d = self.kernel_shape, self.strides, self.dilations
        ext = [(k[i] - 1) * d[i] + 1 for i in range(nsp)]
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = [-(-in_sp[i] // s[i]) for i in range(nsp)]
            pads = [0] * (2 * nsp)
            for i in range(nsp):
                total = max(0, (out[i] - 1) * s[i] + ext[i] - in_sp[i])
                small, big = total // 2, total - total // 2
                pads[i], pads[i + nsp] = (small, big) if self.auto_pad == "SAME_UPPER" else (big, small)
        else:
            pads = [0] * (2 * nsp) if self.auto_pad == "VALID" else list(self.pads_attr)
            padded = [in_sp[i] + pads[i] + pads[i + nsp] for i in range(nsp)]
            if any(ext[i] > padded[i] for i in range(nsp)):
                dil = f" (dilated extent {_fmt(ext)})" if any(di != 1 for di in d) else ""
                raise self.error(f"kernel {_fmt(k)}{dil} is larger than the padded input {_fmt(padded)} "
                                 f"(input {shape}, pads {pads})")
            out = []
            for i in range(nsp):
                span = padded[i] - ext[i]
                if self.ceil_mode and self.auto_pad == "NOTSET":
                    o = -(-span // s[i]) + 1
                    if (o - 1) * s[i] >= in_sp[i] + pads[i]:
                        o -= 1  # the last window must start inside the input or the left padding
                else:
                    o = span // s[i] + 1
                out.append(o)
        if any(o < 1 for o in out):
            raise self.error(f"the output would be empty: spatial size {out} for input {shape}, kernel "
                             f"{_fmt(k)}, strides {s}, pads {pads}")
        self.geom = (in_sp, out, pads)
        return in_sp, out, pads

    def _pool2x2(self, kind: str, x: TensorType) -> Kernel | None:
        """The dedicated kernel for 2x2 windows, stride 2, no padding or dilation (None otherwise)."""
        in_sp, out, pads = self.geom
        if (len(in_sp) != 2 or list(self.kernel_shape) != [2, 2] or list(self.strides) != [2, 2]
                or list(self.dilations) != [1, 1] or any(pads) or out != [in_sp[0] // 2, in_sp[1] // 2]):
            return None
        from ..kernels.cpu.pool2x2 import pool2x2_runner

        run_2x2 = pool2x2_runner(kind, int(x.shape[0]) * int(x.shape[1]), in_sp[0], in_sp[1])

        def run(inputs, outputs, scratch):
            run_2x2(inputs[0], outputs[0], scratch)

        def bind(inputs, outputs, scratch, threads):
            return run_2x2.bind(inputs[0], outputs[0], scratch, threads)

        return Kernel(run, bind=bind)

    def _cuda_pool(self, x: TensorType, out: TensorType, is_max: bool, count_include_pad: bool = False):
        """The CUDA kernel of a 1-D or 2-D window pool (float32; 8-bit for max pooling), or None."""
        eight_bit = np.dtype(x.dtype) in (np.dtype(np.int8), np.dtype(np.uint8))
        if not (x.dtype == np.float32 or is_max and eight_bit) or len(x.shape) not in (3, 4):
            return None
        from ..kernels.cuda.pool import Pool2d

        _, _, pads = self.geom
        nsp = len(x.shape) - 2
        k = Pool2d(x.shape, out.shape, self.kernel_shape, self.strides, pads[:nsp], self.dilations, is_max,
                   count_include_pad)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def _cuda_pool_grad(self, grads, x, needs, stream, is_max: bool, count_include_pad: bool = False):
        """[dx] of a float32 1-D / 2-D window pool on the device (``x``: the forward input, read by max
        pooling), or None (the host backward runs)."""
        x_t = self.in_types[0]
        if not needs[0] or np.dtype(x_t.dtype) != np.float32 or len(x_t.shape) not in (3, 4):
            return None
        from ..kernels.cuda import grad as G

        self.geometry(x_t)
        _, out, pads = self.geom
        nsp = len(x_t.shape) - 2
        y_shape = tuple(self.out_types[0].shape)
        dy = grads[0] if grads[0] is not None else G.zeros(y_shape, stream)
        dx = G.empty(x_t.shape, stream)
        G.PoolGrad(x_t.shape, y_shape, self.kernel_shape, self.strides, pads[:nsp], self.dilations, is_max,
                   count_include_pad)(x, dy, dx, stream)
        return [dx]

    def _tables(self, x: TensorType, count_include_pad=False):
        from ..kernels.cpu.pool import window_tables

        _, out, pads = self.geom
        return window_tables(x.shape, out, self.kernel_shape, self.strides, self.dilations, pads,
                             count_include_pad)

    # --- training -----------------------------------------------------------------------------------
    def _grad_runner(self, count_include_pad=False):
        """The :class:`~edgedl.kernels.cpu.pool_grad.PoolBackward` of this geometry (built once per op)."""
        runner = getattr(self, "_pool_bwd", None)
        if runner is None:
            from ..kernels.cpu.pool_grad import PoolBackward

            x = self.in_types[0]
            self.geometry(x)  # sets self.geom (infer did too: recomputing keeps backward self-contained)
            runner = self._pool_bwd = PoolBackward(self._tables(x, count_include_pad))
        return runner

    def _grad_out(self, grads):
        """The gradient of output 0 (zeros when None) and the input's TensorType; float32 inputs only."""
        x = self.in_types[0]
        if np.dtype(x.dtype) != np.float32:
            raise self.unsupported(f"backward supports float32 inputs, got {np.dtype(x.dtype).name}")
        dy = grads[0]
        if dy is None:
            dy = np.zeros(self.out_types[0].shape, np.float32)
        return dy, x


def _axis_coords(in_sp, out, k, s, d, pads):
    """Per axis: input coordinates (out, k) of each tap, a mask of taps inside the input, and one of taps
    inside the padded input."""
    nsp = len(in_sp)
    res = []
    for i in range(nsp):
        c = (np.arange(out[i])[:, None] * s[i] - pads[i]) + np.arange(k[i])[None, :] * d[i]
        res.append((c, (c >= 0) & (c < in_sp[i]), c < in_sp[i] + pads[i + nsp]))
    return res


def _gather_taps(x, in_sp, out, k, s, d, pads, fill):
    """Yield (tap index tuple, values (N, C, *out), per-axis coordinate arrays) for every kernel tap, values
    outside the input replaced by ``fill``."""
    nsp = len(in_sp)
    coords = _axis_coords(in_sp, out, k, s, d, pads)
    lo = [max(0, -int(coords[i][0].min())) for i in range(nsp)]
    hi = [max(0, int(coords[i][0].max()) - in_sp[i] + 1) for i in range(nsp)]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(lo[i], hi[i]) for i in range(nsp)], constant_values=fill)
    for taps in itertools.product(*[range(kk) for kk in k]):
        sl = tuple(slice(lo[i] + int(coords[i][0][0, taps[i]]),
                         lo[i] + int(coords[i][0][0, taps[i]]) + s[i] * (out[i] - 1) + 1, s[i])
                   for i in range(nsp))
        yield taps, xp[(slice(None), slice(None)) + sl], coords


def maxpool_ref(x, kernel, strides, dilations, pads, out, want_indices=False, storage_order=0):
    """MaxPool in numpy (the spec). Returns (y, indices or None)."""
    in_sp = list(x.shape[2:])
    nsp = len(in_sp)
    if x.dtype.kind == "f":
        lowest = -np.inf
    else:
        lowest = np.iinfo(x.dtype).min
    y = np.full(x.shape[:2] + tuple(out), lowest, dtype=x.dtype)
    ind = None
    if want_indices:
        n, c = x.shape[:2]
        plane = int(np.prod(in_sp, dtype=np.int64))
        ind = np.full(y.shape, -1, np.int64)
        base = (np.arange(n * c, dtype=np.int64) * plane).reshape((n, c) + (1,) * nsp)
        mul = ([int(np.prod(in_sp[i + 1:], dtype=np.int64)) for i in range(nsp)] if not storage_order
               else [int(np.prod(in_sp[:i], dtype=np.int64)) for i in range(nsp)])
    for taps, v, coords in _gather_taps(x, in_sp, out, kernel, strides, dilations, pads, lowest):
        if ind is None:
            y = np.fmax(y, v) if x.dtype.kind == "f" else np.maximum(y, v)
            continue
        valid = np.ones(tuple(out), bool)
        flat = np.zeros(tuple(out), np.int64)
        for i in range(nsp):
            shp = [1] * nsp
            shp[i] = out[i]
            valid = valid & coords[i][1][:, taps[i]].reshape(shp)
            flat = flat + coords[i][0][:, taps[i]].reshape(shp) * mul[i]
        better = valid & ((ind < 0) | (v > y))
        y = np.where(valid & (v > y), v, y)
        ind = np.where(better, base + flat, ind)
    return y, ind


def avgpool_ref(x, kernel, strides, dilations, pads, out, count_include_pad):
    """AveragePool in numpy (the spec), accumulating in float64."""
    in_sp = list(x.shape[2:])
    nsp = len(in_sp)
    acc = np.zeros(x.shape[:2] + tuple(out), np.float64)
    for _, v, _ in _gather_taps(x.astype(np.float64), in_sp, out, kernel, strides, dilations, pads, 0.0):
        acc += v
    count = np.ones(tuple(out), np.float64)
    for i, (_, inside, in_padded) in enumerate(_axis_coords(in_sp, out, kernel, strides, dilations, pads)):
        shp = [1] * nsp
        shp[i] = out[i]
        count = count * (in_padded if count_include_pad else inside).sum(axis=1).reshape(shp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (acc / count).astype(x.dtype)


@register
class MaxPool(_WindowPool):
    op_type = "MaxPool"
    kernels = {"cpu": ("float32", "int8", "uint8"), "cuda": ("float32", "int8", "uint8")}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.storage_order = int(self.attr("storage_order", 0))
        if self.storage_order not in (0, 1):
            raise self.error(f"storage_order must be 0 or 1, got {self.storage_order}")
        self.present = [bool(o) for o in node.outputs]
        self.want_indices = len(self.present) > 1 and self.present[1]

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype).name not in ("float16", "float32", "float64", "int8", "uint8"):
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported "
                                   "(float16, float32, "
                                   "float64, int8, uint8)")
        _, out, _ = self.geometry(x)
        oshape = tuple(x.shape[:2]) + tuple(out)
        return [TensorType(oshape, x.dtype), TensorType(oshape, np.dtype(np.int64))]

    def ref(self, x):
        _, out, pads = self.geom
        y, ind = maxpool_ref(x, self.kernel_shape, self.strides, self.dilations, pads, out, self.want_indices,
                             self.storage_order)
        if ind is None:
            ind = np.zeros(y.shape, np.int64)  # not requested: only its type matters
        return [y, ind]

    def build_cuda(self, ins, outs, consts):
        if self.want_indices or not self.present[0]:
            return None
        return self._cuda_pool(ins[0], outs[0], True)

    def build(self, ins, outs, consts):
        x = ins[0]
        if np.dtype(x.dtype) in (np.dtype(np.int8), np.dtype(np.uint8)) and len(x.shape) == 4 \
                and not self.want_indices:
            return self._build_8bit(x)
        if x.dtype != np.float32:
            return self._ref_present()
        from ..kernels.cpu.pool import maxpool_indices_runner, pool_runner

        tab = self._tables(x)
        if self.want_indices:
            run_idx = maxpool_indices_runner(tab, bool(self.storage_order))
            if not self.present[0]:  # Y omitted: it goes to the workspace
                n_y = int(np.prod(tab.y3))

                def run(inputs, outputs, scratch):
                    run_idx(inputs[0], scratch[:4 * n_y].view(np.float32), outputs[0])
                return Kernel(run, scratch_bytes=4 * n_y)

            def run(inputs, outputs, scratch):
                run_idx(inputs[0], outputs[0], outputs[1])
            return Kernel(run)
        fast = self._pool2x2("max", x)
        if fast is not None:
            self.max_kernel = "2x2"
            return fast
        fast = self._interleaved_max(x)
        if fast is not None:
            return fast
        run_max, nbytes = pool_runner("max", tab)

        def run(inputs, outputs, scratch):
            run_max(inputs[0], outputs[0], scratch)

        def bind(inputs, outputs, scratch, threads):
            return run_max.bind(inputs[0], outputs[0], scratch, threads)
        return Kernel(run, scratch_bytes=nbytes, bind=bind)

    #: which float32 kernel build() chose: "windows" (:mod:`~edgedl.kernels.cpu.pool`), "2x2" or "interleaved"
    max_kernel = "windows"

    def _interleaved_max(self, x: TensorType) -> Kernel | None:
        """2-D max pooling on VW channels at a time (:class:`~edgedl.kernels.cpu.depthwise_ci.DepthwiseInterleaved`
        with ``is_max``: one vector per pixel, the padding -inf, a tap wins only when greater), for planes
        whose rows are short against a vector or strided, where the window kernel pays a fixed cost per plane
        and per row. Measured on Zen 3, 1 thread, against the window kernel: SPPF's 5x5 stride 1 on 128
        channels of 10x10 (YOLOv8n at 320) 113 -> 30 us per model step (onnxruntime 33 per run); the rule is the depthwise one
        (:func:`~edgedl.kernels.cpu.depthwise_ci.prefer_interleaved`), with two vectors of channels at least.
        None where it does not apply."""
        if len(x.shape) != 4 or 0 in tuple(x.shape):
            return None
        import numba

        from ..kernels.cpu.conv import _as_scratch_f32, _flat
        from ..kernels.cpu.depthwise_ci import DepthwiseInterleaved, prefer_interleaved
        from ..kernels.cpu.vec import VW

        n, c, h, w = (int(v) for v in x.shape)
        _, out, pads = self.geom
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_shape, self.strides, self.dilations
        if c < 2 * VW or not prefer_interleaved(out[0], out[1], sw):
            return None
        hp = (out[0] - 1) * sh + (kh - 1) * dh + 1
        wp = (out[1] - 1) * sw + (kw - 1) * dw + 1
        ci = DepthwiseInterleaved(None, None, (n, c, h, w), (n, c, out[0], out[1]), kh, kw, sh, sw, dh, dw,
                                  pads[0], pads[1], hp, wp, 0, 0.0, 0.0, is_max=True)
        nfloat = max(ci.workspace_floats(t) for t in range(1, numba.config.NUMBA_NUM_THREADS + 1))
        in_shape, out_shape = (n, c, h, w), (n, c, out[0], out[1])

        def call_args(inputs, outputs, scratch, threads):
            work = _as_scratch_f32(scratch, nfloat)
            return ci.call_args(_flat(inputs[0], in_shape, "input"), _flat(outputs[0], out_shape, "output"), work,
                                threads)

        def run(inputs, outputs, scratch):
            from ..kernels.cpu.config import num_threads

            fn, *args = call_args(inputs, outputs, scratch, num_threads())
            fn(*args)

        def bind(inputs, outputs, scratch, threads):
            return functools.partial(*call_args(inputs, outputs, scratch, threads))

        self.max_kernel = "interleaved"
        return Kernel(run, scratch_bytes=4 * nfloat + 4, bind=bind)

    #: backward recomputes every window's argmax from the input; the Indices output is not needed
    grad_inputs = (0,)

    def backward(self, grads, ins, outs, needs):
        """dx: dy scattered onto each window's maximum, recomputed from x (any spatial rank, Numba,
        :mod:`edgedl.kernels.cpu.pool_grad`). Ties go to the FIRST maximum in row-major window order (the
        element the Indices output names); NaN never wins. Only output 0 (Y) carries a gradient: the Indices
        output is integer, its gradient is ignored."""
        if not needs[0]:
            return [None]
        dy, x = self._grad_out(grads)
        return [self._grad_runner().max_grad(ins[0], dy).reshape(x.shape)]

    def backward_cuda(self, grads, ins, outs, needs, stream):
        return self._cuda_pool_grad(grads, ins[0], needs, stream, True)

    def _build_8bit(self, x: TensorType) -> Kernel:
        """int8/uint8 MaxPool (quantized models: the max of quantized values is the quantized max)."""
        from ..kernels.cpu.qpool import QMaxPool2d

        _, out, pads = self.geom
        k = QMaxPool2d(x.shape, self.kernel_shape, pads, self.strides, self.dilations, out)

        def run(inputs, outputs, scratch):
            k(inputs[0], outputs[0])

        def bind(inputs, outputs, scratch, threads):
            return k.bind(inputs[0], outputs[0], threads=threads)

        return Kernel(run, bind=bind)

    def _ref_present(self) -> Kernel:
        """The numpy path, writing only the outputs the node has."""
        present = self.present

        def run(inputs, outputs, scratch):
            results = [r for r, p in zip(self.ref(*inputs), present) if p]
            for o, r in zip(outputs, results):
                o[...] = r
        return Kernel(run, impl="numpy")


@register
class AveragePool(_WindowPool):
    op_type = "AveragePool"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.count_include_pad = int(self.attr("count_include_pad", 0))
        if self.count_include_pad not in (0, 1):
            raise self.error(f"count_include_pad must be 0 or 1, got {self.count_include_pad}")

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype).name not in self.float_dtypes:
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported "
                                   "(float16, float32, "
                                   "float64)")
        _, out, _ = self.geometry(x)
        return [TensorType(tuple(x.shape[:2]) + tuple(out), x.dtype)]

    def ref(self, x):
        _, out, pads = self.geom
        return [avgpool_ref(x, self.kernel_shape, self.strides, self.dilations, pads, out,
                            self.count_include_pad)]

    def build_cuda(self, ins, outs, consts):
        if self.ceil_mode:  # windows past the padded input divide by a clipped count: on the host
            return None
        return self._cuda_pool(ins[0], outs[0], False, bool(self.count_include_pad))

    def build(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32:
            return ref_kernel(self)
        from ..kernels.cpu.pool import pool_runner

        fast = self._pool2x2("avg", x)
        if fast is not None:
            self.avg_kernel = "2x2"
            return fast
        fast = self._depthwise_sums(x)
        if fast is not None:
            return fast
        run_avg, nbytes = pool_runner("avg", self._tables(x, bool(self.count_include_pad)))

        def run(inputs, outputs, scratch):
            run_avg(inputs[0], outputs[0], scratch)

        def bind(inputs, outputs, scratch, threads):
            return run_avg.bind(inputs[0], outputs[0], scratch, threads)
        return Kernel(run, scratch_bytes=nbytes, bind=bind)

    #: which float32 kernel build() chose: "windows" (:mod:`~edgedl.kernels.cpu.pool`), "2x2" or "depthwise"
    avg_kernel = "windows"

    def _depthwise_sums(self, x: TensorType) -> Kernel | None:
        """2-D average pooling as a depthwise convolution with weights of one (window sums, the padding adding
        zeros) followed by one multiply by each output's reciprocal element count (as the window kernel counts
        them: count_include_pad, ceil_mode clipping). The convolution's kernels read VW channels at a time
        (short rows, strides) or whole vector rows, where the window kernel (:mod:`~edgedl.kernels.cpu.pool`)
        loops over each plane's short rows and pays a fixed cost per plane. Measured on Zen 3, 1 thread, time
        against the window kernel: 32 channels 16x16 3x3 stride 2 0.17-0.34x, 96 at 7x7 3x3 stride 1 0.12x, 192
        at 28x28 0.24x, 64 at 56x56 stride 2 0.56x, 64 at 112x112 0.99x, 24 at 40x40 5x5 stride 2 0.42x. With
        fewer than two vectors of channels, the interleaved kernel fills few lanes of its vectors (8 channels
        at 128x128 stride 2: 1.32x, 3 at 224x224: 5.9x): those keep the window kernel. None where it does not
        apply (other ranks, a kernel the convolution does not take)."""
        if len(x.shape) != 4 or 0 in tuple(x.shape):
            return None
        from ..kernels.cpu.conv import Conv2d
        from ..kernels.cpu.depthwise_ci import prefer_interleaved
        from ..kernels.cpu.pool import scale_planes
        from ..kernels.cpu.vec import VW

        n, c, h, w = (int(v) for v in x.shape)
        _, out, pads = self.geom
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_shape, self.strides, self.dilations
        if c < 2 * VW and prefer_interleaved(out[0], out[1], sw):
            return None
        pt, pl, pb, pr = pads
        # ceil_mode: the last windows may hang past the end padding; more zeros there change no sum
        pb = max(pb, (out[0] - 1) * sh + (kh - 1) * dh + 1 - h - pt)
        pr = max(pr, (out[1] - 1) * sw + (kw - 1) * dw + 1 - w - pl)
        try:
            conv = Conv2d(np.ones((c, 1, kh, kw), np.float32), None, (n, c, h, w), (sh, sw), (pt, pl, pb, pr),
                          (dh, dw), c)
        except ValueError:
            return None
        if conv.strategy != "depthwise" or conv.out_shape[2:] != tuple(out):
            return None
        inv = self._tables(x, bool(self.count_include_pad)).inv
        planes = n * c

        def run(inputs, outputs, scratch):
            conv(inputs[0], outputs[0], scratch)
            scale_planes(outputs[0].reshape(planes, -1), inv)

        def bind(inputs, outputs, scratch, threads):
            summed = conv.bind(inputs[0], outputs[0], scratch, threads)
            y2 = outputs[0].reshape(planes, -1)

            def sums_scaled():
                summed()
                scale_planes(y2, inv)
            return sums_scaled

        self.avg_kernel = "depthwise"
        return Kernel(run, scratch_bytes=conv.scratch_bytes, bind=bind)

    #: the gradient is linear in dy: no forward value is needed
    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx: dy divided by each window's element count (as the forward counts it: count_include_pad,
        ceil_mode clipping), added to every window element inside the input (Numba,
        :mod:`edgedl.kernels.cpu.pool_grad`)."""
        if not needs[0]:
            return [None]
        dy, x = self._grad_out(grads)
        return [self._grad_runner(bool(self.count_include_pad)).avg_grad(dy).reshape(x.shape)]

    def backward_cuda(self, grads, ins, outs, needs, stream):
        if self.ceil_mode:  # windows past the padded input divide by a clipped count: on the host
            return None
        return self._cuda_pool_grad(grads, None, needs, stream, False, bool(self.count_include_pad))


def lppool_ref(x, kernel, strides, dilations, pads, out, p: float):
    """LpPool in numpy (the spec): (sum of |x| ** p over each window's elements inside the input) ** (1 / p),
    in float64."""
    in_sp = list(x.shape[2:])
    acc = np.zeros(x.shape[:2] + tuple(out), np.float64)
    for _, v, _ in _gather_taps(np.abs(x.astype(np.float64)) ** p, in_sp, out, kernel, strides, dilations, pads,
                                0.0):
        acc += v
    return (acc ** (1.0 / p)).astype(x.dtype)


@register
class LpPool(_WindowPool):
    """LpPool: ``(sum of |x| ** p over the window) ** (1 / p)``; padding counts as zeros. ``p`` is a float
    attribute (default 2.0) at opset 1 and an int (default 2) from opset 2; ``dilations`` and ``ceil_mode``
    exist from opset 18. float32: the windowed-sum kernel (:func:`edgedl.kernels.cpu.pool.lp_pool_runner`)."""

    op_type = "LpPool"
    kernels = {"cpu": ("float32",)}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 18:
            late = [a for a in ("dilations", "ceil_mode") if a in node.attrs]
            if late:
                raise self.error(f"attribute(s) {', '.join(late)} of LpPool need opset 18 (the model has {opset})")
        p = self.attr("p", 2)
        if opset >= 2 and isinstance(p, float) and not float(p).is_integer():
            raise self.error(f"p must be an integer from opset 2, got {p}")
        self.p = float(p)
        if not (np.isfinite(self.p) and self.p > 0):
            raise self.error(f"p must be positive, got {p}")

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype).name not in self.float_dtypes:
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported (float16, float32, "
                                   "float64)")
        _, out, _ = self.geometry(x)
        return [TensorType(tuple(x.shape[:2]) + tuple(out), x.dtype)]

    def ref(self, x):
        _, out, pads = self.geom
        return [lppool_ref(x, self.kernel_shape, self.strides, self.dilations, pads, out, self.p)]

    def build(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32 or x.size == 0:
            return ref_kernel(self)
        from ..kernels.cpu.pool import lp_pool_runner

        run_lp, nbytes = lp_pool_runner(self._tables(x), self.p)

        def run(inputs, outputs, scratch):
            run_lp(inputs[0], outputs[0], scratch)
        return Kernel(run, scratch_bytes=nbytes)


class _GlobalPool(Op):
    num_inputs = (1, 1)
    kernels = {"cpu": ("float32",)}
    kind = ""

    def infer(self, ins, consts):
        x = ins[0]
        shape = tuple(x.shape)
        if len(shape) < 3:
            raise self.error(f"input must be (N, C, spatial...) with rank >= 3, got shape {shape}")
        if np.dtype(x.dtype).name not in ("float16", "float32", "float64"):
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported "
                                   "(float16, float32, "
                                   "float64)")
        if self.kind == "max" and any(d == 0 for d in shape[2:]):
            raise self.error(f"cannot take the maximum over an empty spatial shape {shape[2:]}")
        return [TensorType(shape[:2] + (1,) * (len(shape) - 2), x.dtype)]

    def ref(self, x):
        axes = tuple(range(2, x.ndim))
        if self.kind == "avg":
            return [x.astype(np.float64).mean(axis=axes, keepdims=True).astype(x.dtype)]
        return [x.max(axis=axes, keepdims=True)]

    def build_cuda(self, ins, outs, consts):
        if self.kind != "avg" or ins[0].dtype != np.float32:
            return None
        from ..kernels.cuda.pool import GlobalAverage

        k = GlobalAverage(ins[0].shape)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def build(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32:
            return ref_kernel(self)
        from ..kernels.cpu.pool import global_pool_runner

        planes = int(x.shape[0]) * int(x.shape[1])
        size = int(np.prod(x.shape[2:], dtype=np.int64))
        run_g, nbytes = global_pool_runner(self.kind, planes, size)

        def run(inputs, outputs, scratch):
            run_g(inputs[0], outputs[0], scratch)

        def bind(inputs, outputs, scratch, threads):
            return run_g.bind(inputs[0], outputs[0], scratch, threads)
        return Kernel(run, scratch_bytes=nbytes, bind=bind)


@register
class GlobalAveragePool(_GlobalPool):
    op_type = "GlobalAveragePool"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    kind = "avg"
    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx = dy / (spatial size), broadcast over each plane (any rank >= 3; a numpy broadcast copy)."""
        x = self.in_types[0]
        if not needs[0]:
            return [None]
        shape = tuple(x.shape)
        if grads[0] is None:
            return [np.zeros(shape, np.float32)]
        size = int(np.prod(shape[2:], dtype=np.int64))
        if size == 0:
            return [np.zeros(shape, np.float32)]
        dy = np.asarray(grads[0], np.float32).reshape(shape[:2] + (1,) * (len(shape) - 2))
        return [np.ascontiguousarray(np.broadcast_to(dy * np.float32(1.0 / size), shape))]

    def backward_cuda(self, grads, ins, outs, needs, stream):
        x = self.in_types[0]
        if not needs[0] or np.dtype(x.dtype) != np.float32:
            return None
        from ..kernels.cuda import grad as G

        if grads[0] is None:
            return [G.zeros(x.shape, stream)]
        dx = G.empty(x.shape, stream)
        G.PoolGrad(x.shape, global_average=True)(None, grads[0], dx, stream)
        return [dx]


@register
class GlobalMaxPool(_GlobalPool):
    op_type = "GlobalMaxPool"
    kind = "max"
