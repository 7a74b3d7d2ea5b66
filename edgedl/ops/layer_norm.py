"""Layer normalizations: LayerNormalization, RMSNormalization and onnxruntime's SimplifiedLayerNormalization,
SkipLayerNormalization and SkipSimplifiedLayerNormalization.

All normalize over the trailing dims ``shape[axis:]`` (n values per row, rows = prod(shape[:axis])), with
float64 statistics, then scale (and shift)::

    LayerNormalization:   Y = (X - mean) / sqrt(var + epsilon) * Scale + B        var: population variance
    RMSNormalization:     Y = X / sqrt(mean(X**2) + epsilon) * scale

* LayerNormalization (opset 17; also onnxruntime's contrib op of the same name, which exporters and
  onnxruntime's fusions write at opsets < 17, with the same attributes): ``axis`` (-1), ``epsilon`` (1e-5),
  ``stash_type`` (1: float32 statistics; the only type numpy can hold). Optional outputs Mean and
  InvStdDev of shape ``shape[:axis] + (1,) * (rank - axis)``, float32. Scale and B broadcast
  unidirectionally to X.
* RMSNormalization (opset 23): X, scale; Y has scale's dtype.
* SimplifiedLayerNormalization (onnxruntime, default domain; also accepted in com.microsoft): the RMS form
  with outputs Y and inv_std_var (1 / rms).
* SkipLayerNormalization / SkipSimplifiedLayerNormalization (com.microsoft): inputs (input, skip, gamma,
  beta?, bias?) resp. (input, skip, gamma, bias?), ``epsilon`` (1e-12); ``s = input + skip + bias`` is
  normalized over the last dim. input is (B, S, H) or (T, H); skip has input's shape, or (1, S, H) / (S, H)
  against a 3-D input. Outputs: output, mean, inv_std_var ((B, S, 1), float32; the simplified form reports
  mean 0 as onnxruntime does) and input_skip_bias_sum (s).

float32 runs the Numba kernels of :mod:`edgedl.kernels.cpu.layer_norm` (one pass per row for the
statistics, parallel over rows when the tensor is large); other dtypes, and scales that vary along the
row dims, run the numpy reference.

Backward (LayerNormalization, RMSNormalization): dX, dScale, dB from the gradients of Y (and of Mean /
InvStdDev when they are used), Numba for float32 with per-column scales, float64 numpy otherwise.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernels.cpu.layer_norm import EMPTY, RowNorm
from ..registry import Kernel, Op, register
from .common import normalize_axis, unbroadcast

_FLOATS = ("float16", "float32", "float64")
MS = "com.microsoft"


def _dtname(t) -> str:
    return np.dtype(t.dtype).name


class _RowNormOp(Op):
    """Shared shape logic: rows over shape[:axis], normalized values over shape[axis:]."""

    kernels = {"cpu": ("float32",)}
    #: RMS form (no mean subtraction, no bias)
    simplified = False
    #: index of the first parameter input (scale) and of the optional bias B (None: no B)
    scale_index = 1
    bias_index: int | None = 2
    default_eps = 1e-5
    #: output positions of the mean and inv-std statistics (None: the op has no such output)
    mean_out: int | None = None
    inv_out: int | None = None

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis = int(self.attr("axis", -1))
        self.epsilon = float(self.attr("epsilon", self.default_eps))
        self.stash_type = int(self.attr("stash_type", 1))
        if self.stash_type != 1:
            raise self.unsupported(f"stash_type {self.stash_type} is not supported (only 1: float32 statistics)")
        if not np.isfinite(self.epsilon) or self.epsilon < 0:
            raise self.error(f"epsilon must be a finite non-negative number, got {self.epsilon}")
        self.present = [bool(o) for o in node.outputs]
        n_out = len(node.outputs)
        while n_out > 1 and not node.outputs[n_out - 1]:
            n_out -= 1
        #: outputs the node has (up to its last named one): infer and ref return that many
        self.n_out = max(n_out, 1)

    # --- shapes -------------------------------------------------------------------------------------------
    def _geometry(self, shape) -> None:
        rank = len(shape)
        if rank == 0:
            raise self.error("input must have rank >= 1")
        self.ax = normalize_axis(self, self.axis, rank)
        self.rows = int(np.prod(shape[:self.ax], dtype=np.int64))
        self.n = int(np.prod(shape[self.ax:], dtype=np.int64))
        self.stat_shape = tuple(shape[:self.ax]) + (1,) * (rank - self.ax)

    def _check_param(self, name: str, t, x) -> None:
        if _dtname(t) not in _FLOATS:
            raise self.unsupported(f"{name} has dtype {_dtname(t)}; supported: {', '.join(_FLOATS)}")
        ps, xs = tuple(t.shape), tuple(x.shape)
        if len(ps) > len(xs) or any(p not in (1, d) for p, d in zip(ps[::-1], xs[::-1])):
            raise self.error(f"{name} of shape {tuple(t.shape)} does not broadcast to the input shape "
                             f"{tuple(x.shape)}")

    def _per_column(self, shape) -> bool:
        """Whether a parameter of ``shape`` varies only along the normalized dims (one value per column)."""
        lead = len(self.x_shape) - len(shape)
        return all(d == 1 for d in shape[:max(0, self.ax - lead)])

    def _column_view(self, p: np.ndarray) -> np.ndarray:
        """A per-column parameter without its leading (size-1) row dims: it broadcasts to shape[axis:]."""
        norm = self.x_shape[self.ax:]
        return p.reshape(p.shape[p.ndim - len(norm):]) if p.ndim > len(norm) else p

    def _column_vector(self, p: np.ndarray) -> np.ndarray:
        """A per-column parameter as a contiguous float32 vector of n."""
        norm = self.x_shape[self.ax:]
        return np.ascontiguousarray(np.broadcast_to(self._column_view(p), norm), np.float32).reshape(-1)

    def _stat_types(self) -> list[TensorType]:
        return [TensorType(self.stat_shape, np.dtype(np.float32))]

    # --- the spec -----------------------------------------------------------------------------------------
    def _normalize64(self, x):
        """(xhat, mean, inv) in float64 over rows of x reshaped to (rows, n)."""
        x2 = x.astype(np.float64).reshape(self.rows, self.n)
        with np.errstate(all="ignore"):
            if self.simplified:
                mean = np.zeros((self.rows, 1))
                inv = 1.0 / np.sqrt((x2 * x2).mean(axis=1, keepdims=True) + self.epsilon)
            else:
                mean = x2.mean(axis=1, keepdims=True)
                inv = 1.0 / np.sqrt(((x2 - mean) ** 2).mean(axis=1, keepdims=True) + self.epsilon)
        return ((x2 - mean) * inv).reshape(x.shape), mean, inv

    # --- kernels ------------------------------------------------------------------------------------------
    def _params_f32(self, ins) -> bool:
        ps = [ins[self.scale_index]]
        if self.bias_index is not None and len(ins) > self.bias_index and ins[self.bias_index] is not None:
            ps.append(ins[self.bias_index])
        return all(np.dtype(p.dtype) == np.float32 and self._per_column(tuple(p.shape)) for p in ps)

    def _ref_present(self) -> Kernel:
        """The numpy path, writing only the outputs the node has."""
        present = self.present

        def run(inputs, outputs, scratch):
            results = [r for r, p in zip(self.ref(*inputs), present) if p]
            for o, r in zip(outputs, results):
                o[...] = r
        return Kernel(run, impl="numpy")

    def _out_slots(self) -> dict[int, int]:
        """node output index -> position in the kernel's outputs list (present outputs only)."""
        slots, k = {}, 0
        for i, p in enumerate(self.present):
            if p:
                slots[i] = k
                k += 1
        return slots


class _LayerNormBase(_RowNormOp):
    num_inputs = (2, 3)
    mean_out = 1
    inv_out = 2
    max_outputs = 3

    def infer(self, ins, consts):
        x = ins[0]
        if _dtname(x) not in _FLOATS:
            raise self.unsupported(f"X has dtype {_dtname(x)}; supported: {', '.join(_FLOATS)}")
        if len(self.node.outputs) > self.max_outputs:
            raise self.error(f"has {len(self.node.outputs)} outputs, at most {self.max_outputs}")
        self.x_shape = tuple(x.shape)
        self._geometry(self.x_shape)
        self._check_param("Scale", ins[self.scale_index], x)
        if self.bias_index is not None and len(ins) > self.bias_index and ins[self.bias_index] is not None:
            self._check_param("B", ins[self.bias_index], x)
        outs = [TensorType(self.x_shape, self._y_dtype(ins))]
        return (outs + self._stat_types() * (self.max_outputs - 1))[:self.n_out]

    def _y_dtype(self, ins):
        return ins[0].dtype

    def _ref3(self, x, scale, b=None):
        """[Y, mean, inv] (the statistics float32 of shape stat_shape)."""
        xhat, mean, inv = self._normalize64(x)
        with np.errstate(all="ignore"):
            y = xhat * scale.astype(np.float64)
            if b is not None:
                y = y + b.astype(np.float64)
        y_dtype = self._y_dtype([TensorType(x.shape, x.dtype), TensorType(scale.shape, scale.dtype)])
        return [y.astype(y_dtype), mean.reshape(self.stat_shape).astype(np.float32),
                inv.reshape(self.stat_shape).astype(np.float32)]

    def ref(self, x, scale, b=None):
        return self._ref3(x, scale, b)[:self.n_out]

    def build(self, ins, outs, consts):
        x = ins[0]
        if (np.dtype(x.dtype) != np.float32 or np.dtype(outs[0].dtype) != np.float32 or self.rows == 0
                or self.n == 0 or not self._params_f32(ins)):
            return self._ref_present()
        k = RowNorm(self.rows, self.n, self.epsilon, self.simplified)
        si, bi = self.scale_index, self.bias_index
        has_b = bi is not None and len(ins) > bi and ins[bi] is not None
        # parameters that are a full (n,) vector are used in place; others are expanded once (constants) or
        # per run into the workspace
        fixed = {}
        scratch_bytes = 0
        for i in (si, bi) if has_b else (si,):
            if ins[i].size == self.n:
                fixed[i] = None
            elif consts[i] is not None:
                fixed[i] = self._column_vector(consts[i])
            else:
                fixed[i] = ("scratch", scratch_bytes)
                scratch_bytes += 4 * self.n
        slots = self._out_slots()
        mi = slots.get(self.mean_out) if self.mean_out is not None else None
        ii = slots.get(self.inv_out) if self.inv_out is not None else None
        n = self.n
        norm = self.x_shape[self.ax:]

        def param(i, inputs, scratch):
            f = fixed[i]
            if f is None:
                return inputs[i].reshape(-1)
            if isinstance(f, tuple):
                buf = scratch[f[1]:f[1] + 4 * n].view(np.float32)
                np.copyto(buf.reshape(norm), self._column_view(inputs[i]))
                return buf
            return f

        go = k.run_flat

        def run(inputs, outputs, scratch):
            go(inputs[0].reshape(-1), EMPTY, EMPTY, param(si, inputs, scratch),
               param(bi, inputs, scratch) if has_b else EMPTY, outputs[0].reshape(-1), EMPTY,
               EMPTY if mi is None else outputs[mi].reshape(-1), EMPTY if ii is None else outputs[ii].reshape(-1))

        def bind(inputs, outputs, scratch, threads):
            if any(isinstance(f, tuple) for f in fixed.values()):
                return None
            return k.bind(inputs[0], param(si, inputs, scratch), param(bi, inputs, scratch) if has_b else None,
                          outputs[0], mean=None if mi is None else outputs[mi],
                          inv=None if ii is None else outputs[ii], threads=threads)

        return Kernel(run, scratch_bytes=scratch_bytes, bind=bind)

    # --- training -----------------------------------------------------------------------------------------
    grad_inputs = (0, 1)

    def backward(self, grads, ins, outs, needs):
        """dX through the row statistics, dScale = sum(dY * xhat) and dB = sum(dY) over the broadcast dims.
        Gradients of the Mean / InvStdDev outputs add ``g_mean / n`` and ``-g_inv * inv**3 * (x - mean) / n``
        to dX."""
        x, scale = ins[0], ins[self.scale_index]
        x_t = self.in_types[0]
        self.x_shape = tuple(x_t.shape)
        self._geometry(self.x_shape)
        dy = grads[0] if grads[0] is not None else np.zeros(self.x_shape, np.float32)
        rows, n = self.rows, self.n
        want_params = bool(needs[self.scale_index]) or (
            self.bias_index is not None and len(needs) > self.bias_index and bool(needs[self.bias_index]))
        res: list = [None] * len(ins)
        bias_t = self.in_types[self.bias_index] if (self.bias_index is not None
                                                     and len(self.in_types) > self.bias_index) else None
        fast = (x.dtype == np.float32 and scale.dtype == np.float32 and self._per_column(scale.shape)
                and (bias_t is None or self._per_column(tuple(bias_t.shape))) and rows > 0 and n > 0)
        if fast:
            from ..kernels.cpu.layer_norm import ln_backward

            dx, dg, db = ln_backward(np.ascontiguousarray(x).reshape(rows, n),
                                     np.ascontiguousarray(dy, np.float32).reshape(rows, n),
                                     self._column_vector(scale), self.epsilon, self.simplified, bool(needs[0]),
                                     want_params)
            norm = self.x_shape[self.ax:]
            if needs[0]:
                res[0] = dx.reshape(self.x_shape)
            if needs[self.scale_index]:
                res[self.scale_index] = _param_grad(dg.reshape(norm), tuple(scale.shape))
            if self.bias_index is not None and len(needs) > self.bias_index and needs[self.bias_index]:
                res[self.bias_index] = _param_grad(db.reshape(norm), tuple(self.in_types[self.bias_index].shape))
        else:
            xhat, _, inv = self._normalize64(x)
            g64 = dy.astype(np.float64)
            if needs[0]:
                dxhat = (g64 * np.broadcast_to(scale.astype(np.float64), self.x_shape)).reshape(rows, n)
                xh2 = xhat.reshape(rows, n)
                c1 = 0.0 if self.simplified else dxhat.mean(axis=1, keepdims=True)
                dx = inv * (dxhat - c1 - xh2 * (dxhat * xh2).mean(axis=1, keepdims=True))
                res[0] = dx.reshape(self.x_shape).astype(np.float32)
            if needs[self.scale_index]:
                res[self.scale_index] = unbroadcast(g64 * xhat, tuple(scale.shape))
            if self.bias_index is not None and len(needs) > self.bias_index and needs[self.bias_index]:
                res[self.bias_index] = unbroadcast(g64, tuple(self.in_types[self.bias_index].shape))
        if needs[0]:
            res[0] = self._stat_grads(res[0], grads, x)
        return res

    def _stat_grads(self, dx, grads, x):
        """dx plus the contributions of gradients on the Mean / InvStdDev outputs (if any)."""
        gm = grads[self.mean_out] if self.mean_out is not None and len(grads) > self.mean_out else None
        gi = grads[self.inv_out] if self.inv_out is not None and len(grads) > self.inv_out else None
        if gm is None and gi is None:
            return dx
        rows, n = self.rows, self.n
        x2 = x.astype(np.float64).reshape(rows, n)
        _, mean, inv = self._normalize64(x)
        extra = np.zeros((rows, n))
        if gm is not None and not self.simplified:
            extra += np.asarray(gm, np.float64).reshape(rows, 1) / n
        if gi is not None:
            extra += -np.asarray(gi, np.float64).reshape(rows, 1) * inv ** 3 * (x2 - mean) / n
        return (dx.astype(np.float64) + extra.reshape(dx.shape)).astype(np.float32)


def _param_grad(g: np.ndarray, shape: tuple) -> np.ndarray:
    """A per-column parameter gradient ``g`` (shape = the normalized dims) reduced to the parameter's shape."""
    if len(shape) > g.ndim:
        g = g.reshape((1,) * (len(shape) - g.ndim) + g.shape)
    elif len(shape) < g.ndim:
        g = g.sum(axis=tuple(range(g.ndim - len(shape))), dtype=np.float64)
    return unbroadcast(g, shape)


@register
class LayerNormalization(_LayerNormBase):
    """ONNX LayerNormalization (opset 17) and onnxruntime's contrib LayerNormalization (opsets < 17)."""

    op_type = "LayerNormalization"


@register
class LayerNormalizationMS(_LayerNormBase):
    """LayerNormalization written in the com.microsoft domain by some exporters (same semantics)."""

    op_type = "LayerNormalization"
    domain = MS


@register
class RMSNormalization(_LayerNormBase):
    """ONNX RMSNormalization (opset 23): Y = X / sqrt(mean(X**2) + epsilon) * scale, Y in scale's dtype."""

    op_type = "RMSNormalization"
    num_inputs = (2, 2)
    simplified = True
    bias_index = None
    mean_out = None
    inv_out = None
    max_outputs = 1

    def _y_dtype(self, ins):
        return ins[1].dtype

    def ref(self, x, scale):
        return self._ref3(x, scale)[:1]


class _SimplifiedBase(_LayerNormBase):
    num_inputs = (2, 2)
    simplified = True
    bias_index = None
    mean_out = None
    inv_out = 1
    max_outputs = 2

    def _y_dtype(self, ins):
        return ins[1].dtype

    def ref(self, x, scale):
        y, _, inv = self._ref3(x, scale)
        return [y, inv][:self.n_out]


@register
class SimplifiedLayerNormalization(_SimplifiedBase):
    """onnxruntime's SimplifiedLayerNormalization (RMS normalization; outputs Y, inv_std_var)."""

    op_type = "SimplifiedLayerNormalization"


@register
class SimplifiedLayerNormalizationMS(_SimplifiedBase):
    op_type = "SimplifiedLayerNormalization"
    domain = MS


# --- SkipLayerNormalization ------------------------------------------------------------------------------
class _SkipNorm(_RowNormOp):
    domain = MS
    default_eps = 1e-12
    mean_out = 1
    inv_out = 2
    sum_out = 3

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis = -1
        if len(node.outputs) > 4:
            raise self.error(f"has {len(node.outputs)} outputs, at most 4 (output, mean, inv_std_var, "
                             "input_skip_bias_sum)")

    def infer(self, ins, consts):
        x, skip = ins[0], ins[1]
        for name, t in zip(self.input_names, ins):
            if t is not None and _dtname(t) not in _FLOATS:
                raise self.unsupported(f"{name} has dtype {_dtname(t)}; supported: {', '.join(_FLOATS)}")
        if len({np.dtype(t.dtype) for t in ins if t is not None}) > 1:
            raise self.error("inputs must share one dtype, got " + ", ".join(_dtname(t) for t in ins if t is not None))
        shape = tuple(x.shape)
        if len(shape) not in (2, 3):
            raise self.error(f"input must be (batch, sequence, hidden) or (tokens, hidden), got shape {shape}")
        h = shape[-1]
        sk = tuple(skip.shape)
        ok = sk == shape or (len(shape) == 3 and sk in ((1,) + shape[1:], shape[1:]))
        if not ok:
            raise self.error(f"skip has shape {sk}; expected {shape}" + (
                f", {(1,) + shape[1:]} or {shape[1:]}" if len(shape) == 3 else ""))
        for name, t in zip(self.input_names[2:], ins[2:]):
            if t is not None and tuple(t.shape) != (h,):
                raise self.error(f"{name} has shape {tuple(t.shape)}, expected ({h},) (the hidden size)")
        self.x_shape = shape
        self._geometry(shape)
        self.skip_rows = int(np.prod(sk[:-1], dtype=np.int64))
        st = TensorType(self.stat_shape, np.dtype(np.float32))
        return [TensorType(shape, x.dtype), st, st, TensorType(shape, x.dtype)][:self.n_out]

    def _inputs(self, inputs):
        """(x, skip, gamma, beta or None, bias or None) from the node's inputs."""
        raise NotImplementedError

    def ref(self, *inputs):
        x, skip, gamma, beta, bias = self._inputs(list(inputs) + [None] * (5 - len(inputs)))
        s = x.astype(np.float64) + np.broadcast_to(skip.astype(np.float64), x.shape)
        if bias is not None:
            s = s + bias.astype(np.float64)
        s = s.astype(x.dtype)
        xhat, mean, inv = self._normalize64(s)
        y = xhat * gamma.astype(np.float64)
        if beta is not None:
            y = y + beta.astype(np.float64)
        stat = self.stat_shape
        return [y.astype(x.dtype), mean.reshape(stat).astype(np.float32), inv.reshape(stat).astype(np.float32),
                s][:self.n_out]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32 or self.rows == 0 or self.n == 0:
            return self._ref_present()
        k = RowNorm(self.rows, self.n, self.epsilon, self.simplified, self.skip_rows)
        slots = self._out_slots()
        mi, ii, si = slots.get(self.mean_out), slots.get(self.inv_out), slots.get(self.sum_out)
        pick = self._inputs
        go = k.run_flat

        def flat(a):
            return EMPTY if a is None else a.reshape(-1)

        def run(inputs, outputs, scratch):
            x, skip, gamma, beta, bias = pick(list(inputs) + [None] * (5 - len(inputs)))
            go(x.reshape(-1), skip.reshape(-1), flat(bias), gamma, flat(beta), outputs[0].reshape(-1),
               EMPTY if si is None else outputs[si].reshape(-1), EMPTY if mi is None else outputs[mi].reshape(-1),
               EMPTY if ii is None else outputs[ii].reshape(-1))

        def bind(inputs, outputs, scratch, threads):
            x, skip, gamma, beta, bias = pick(list(inputs) + [None] * (5 - len(inputs)))
            return k.bind(x, gamma, beta, outputs[0], skip=skip, bias=bias,
                          ssum=None if si is None else outputs[si], mean=None if mi is None else outputs[mi],
                          inv=None if ii is None else outputs[ii], threads=threads)

        return Kernel(run, bind=bind)


@register
class SkipLayerNormalization(_SkipNorm):
    """com.microsoft SkipLayerNormalization: LayerNorm(input + skip + bias) * gamma + beta."""

    op_type = "SkipLayerNormalization"
    num_inputs = (3, 5)
    input_names = ("input", "skip", "gamma", "beta", "bias")

    def _inputs(self, inputs):
        return inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]


@register
class SkipSimplifiedLayerNormalization(_SkipNorm):
    """com.microsoft SkipSimplifiedLayerNormalization: RMSNorm(input + skip + bias) * gamma (mean output 0)."""

    op_type = "SkipSimplifiedLayerNormalization"
    num_inputs = (3, 4)
    simplified = True
    input_names = ("input", "skip", "gamma", "bias")

    def _inputs(self, inputs):
        return inputs[0], inputs[1], inputs[2], None, inputs[3]
