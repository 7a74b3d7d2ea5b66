"""Normalization: BatchNormalization (standalone; the load-time pass folds the ones that follow a Conv or
Gemm), LRN, InstanceNormalization, GroupNormalization, LpNormalization and MeanVarianceNormalization.
float32 runs Numba kernels (``edgedl.kernels.cpu.norm``; Instance/GroupNormalization
``edgedl.kernels.cpu.layer_norm``), other dtypes the numpy reference. (LayerNormalization, RMSNormalization and
onnxruntime's fused layer norms are in :mod:`edgedl.ops.layer_norm`.)

BatchNormalization follows every opset:

* opset 1 / 6: ``is_test`` (default 0: training), ``spatial``, ``consumed_inputs`` (ignored); outputs
  Y, mean, var, saved_mean, saved_var;
* opset 7 / 9: training mode when more than the Y output is requested (as onnxruntime decides); opset 7
  still has ``spatial``;
* opset 14+: ``training_mode``; outputs Y, running_mean, running_var; opset 15 lets mean/var have their own
  float type.

Inference: ``Y = (X - mean) / sqrt(var + epsilon) * scale + B``, run as a per-channel affine map precomputed
at build time when the parameters are constants (computed per run otherwise). With ``spatial=0`` the
parameters may have the shape (C, D1, ..., Dn) and apply per activation (numpy path).

InstanceNormalization / GroupNormalization: mean and population variance per sample and group of
``C / G`` channels (G = C for InstanceNormalization), ``y = (x - mean) / sqrt(var + epsilon) * scale + B``
with scale / B per channel (GroupNormalization opsets 18-20: per group). LpNormalization:
``x / ||x||_p`` along ``axis`` (p 1 or 2, 0 where the norm is 0). MeanVarianceNormalization:
``(x - mean) / (sqrt(var) + 1e-9)`` over ``axes``.

BatchNormalization training (float32 Numba kernels, :mod:`edgedl.kernels.cpu.bn_train`; the numpy reference for
other dtypes, ``spatial=0`` and opset < 14's saved statistics): the batch statistics over every axis but the channel one
(axis 0 only with ``spatial=0``), population variance; Y is normalized with them; ``running = input * momentum
+ current * (1 - momentum)``; saved_mean / saved_var (opset < 14) are the batch mean and variance.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .common import normalize_axis

_FLOATS = ("float16", "float32", "float64", "bfloat16")


def _dtname(t) -> str:
    return np.dtype(t.dtype).name


@register
class BatchNormalization(Op):
    op_type = "BatchNormalization"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    num_inputs = (5, 5)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.epsilon = float(self.attr("epsilon", 1e-5))
        self.momentum = float(self.attr("momentum", 0.9))
        self.spatial = int(self.attr("spatial", 1)) if opset < 9 else 1
        n_out = len(node.outputs)
        while n_out > 1 and not node.outputs[n_out - 1]:
            n_out -= 1
        self.n_out = n_out
        if opset >= 14:
            self.training = bool(int(self.attr("training_mode", 0)))
            max_out = 3
        elif opset >= 7:
            self.training = n_out > 1
            max_out = 5
        else:
            self.training = not bool(int(self.attr("is_test", 0)))
            max_out = 5
        if n_out > max_out:
            raise self.error(f"has {n_out} outputs; opset {opset} defines at most {max_out}")
        if self.epsilon < 0:
            raise self.error(f"epsilon must not be negative, got {self.epsilon}")

    # --- shapes -------------------------------------------------------------------------------------------
    def infer(self, ins, consts):
        x, scale, bias, mean, var = ins[:5]
        if len(x.shape) < 2:
            raise self.error(f"input must be (N, C, ...) with rank >= 2, got shape {x.shape}")
        for name, t in (("X", x), ("scale", scale), ("B", bias), ("mean", mean), ("var", var)):
            if _dtname(t) not in _FLOATS:
                raise self.unsupported(f"{name} has dtype {_dtname(t)}; supported: {', '.join(_FLOATS)}")
        if self.opset < 15 and len({np.dtype(t.dtype) for t in (x, scale, bias, mean, var)}) > 1:
            raise self.error("X, scale, B, mean and var must share one dtype before opset 15, got "
                             + ", ".join(_dtname(t) for t in (x, scale, bias, mean, var)))
        if self.opset >= 15 and (scale.dtype != bias.dtype or mean.dtype != var.dtype):
            raise self.error(f"scale/B ({_dtname(scale)}/{_dtname(bias)}) and mean/var ({_dtname(mean)}/"
                             f"{_dtname(var)}) must each share a dtype")
        c = x.shape[1]
        full = tuple(x.shape[1:])
        self.per_activation = False
        for name, t in (("scale", scale), ("B", bias), ("mean", mean), ("var", var)):
            shape = tuple(t.shape)
            if shape == (c,):
                continue
            if not self.spatial and shape == full:
                self.per_activation = True
                continue
            want = f"({c},)" + (f" or {full}" if not self.spatial else "")
            raise self.error(f"{name} has shape {shape}, expected {want} for an input of shape "
                             f"{tuple(x.shape)} ({c} channels)")
        if self.per_activation and any(tuple(t.shape) != full for t in (scale, bias, mean, var)):
            raise self.error("with spatial=0 the parameters must all have the shape (C,) or all the shape "
                             f"{full}")
        stat = tuple(mean.shape)
        outs = [TensorType(tuple(x.shape), x.dtype)]
        if self.opset >= 14:
            outs += [TensorType(stat, mean.dtype), TensorType(stat, var.dtype)]
        else:
            outs += [TensorType(stat, mean.dtype)] * 4
        return outs[:max(self.n_out, 1)]

    # --- the spec -----------------------------------------------------------------------------------------
    def _bshape(self, x, p):
        return p.reshape((1,) + p.shape + (1,) * (x.ndim - 1 - p.ndim))

    def ref(self, x, scale, bias, mean, var):
        x64 = x.astype(np.float64)
        sc, b, m, v = (self._bshape(x, p.astype(np.float64)) for p in (scale, bias, mean, var))
        if not self.training:
            y = (x64 - m) / np.sqrt(v + self.epsilon) * sc + b
            outs = [y.astype(x.dtype)]
            if self.opset >= 14:
                outs += [mean.copy(), var.copy()]
            else:
                outs += [mean.copy(), var.copy(), mean.copy(), var.copy()]
            return outs[:max(self.n_out, 1)]
        axes = (0,) if self.per_activation else (0,) + tuple(range(2, x.ndim))
        cur_mean = x64.mean(axis=axes)
        cur_var = x64.var(axis=axes)
        cm = self._bshape(x, cur_mean)
        cv = self._bshape(x, cur_var)
        y = (x64 - cm) / np.sqrt(cv + self.epsilon) * sc + b
        run_mean = mean.astype(np.float64) * self.momentum + cur_mean * (1 - self.momentum)
        run_var = var.astype(np.float64) * self.momentum + cur_var * (1 - self.momentum)
        outs = [y.astype(x.dtype), run_mean.astype(mean.dtype), run_var.astype(var.dtype)]
        if self.opset < 14:
            outs += [cur_mean.astype(mean.dtype), cur_var.astype(var.dtype)]
        return outs[:max(self.n_out, 1)]

    # --- training -----------------------------------------------------------------------------------------
    grad_inputs = (0, 1, 3, 4)

    def backward(self, grads, ins, outs, needs):
        """Inference mode (the running statistics, a per-channel affine map): dx = dy * scale / sqrt(var + eps),
        dscale = sum(dy * xhat), dB = sum(dy), and the gradients of mean and var for completeness. Training
        mode (batch statistics): the usual batch-norm backward through the mean and variance of the batch
        (the running-statistics outputs take no gradient). Float64 accumulation."""
        x, scale, mean, var = ins[0], ins[1], ins[3], ins[4]
        g = grads[0] if grads[0] is not None else np.zeros(x.shape, np.float32)
        if self._fast_backward(x, scale, mean, var) and not (needs[3] or needs[4]):
            from ..kernels.cpu.bn_train import bn_frozen_backward, bn_train_backward

            xc, gc = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(g, np.float32)
            if self.training:
                dx, dscale, dbias = bn_train_backward(xc, gc, scale, self.epsilon, bool(needs[0]))
            else:
                dx, dscale, dbias = bn_frozen_backward(xc, gc, scale, mean, var, self.epsilon, bool(needs[0]))
            return [dx, dscale if needs[1] else None, dbias if needs[2] else None, None, None]
        x64, g64 = x.astype(np.float64), g.astype(np.float64)
        axes = (0,) if self.per_activation else (0,) + tuple(range(2, x.ndim))
        sc = self._bshape(x, scale.astype(np.float64))
        if self.training:
            mu = x64.mean(axis=axes, keepdims=True)
            v = x64.var(axis=axes, keepdims=True)
        else:
            mu = self._bshape(x, mean.astype(np.float64))
            v = self._bshape(x, var.astype(np.float64))
        inv = 1.0 / np.sqrt(v + self.epsilon)
        xhat = (x64 - mu) * inv
        pshape = tuple(self.in_types[1].shape)
        res = [None] * 5
        if needs[1]:
            res[1] = (g64 * xhat).sum(axis=axes).reshape(pshape).astype(np.float32)
        if needs[2]:
            res[2] = g64.sum(axis=axes).reshape(pshape).astype(np.float32)
        if self.training:
            if needs[0]:
                count = x64.size // int(np.prod(pshape))
                dxhat = g64 * sc
                res[0] = (inv / count * (count * dxhat - dxhat.sum(axis=axes, keepdims=True)
                                         - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True))).astype(np.float32)
            return res
        if needs[0]:
            res[0] = (g64 * sc * inv).astype(np.float32)
        if needs[3]:
            res[3] = (-(g64 * sc * inv).sum(axis=axes)).reshape(pshape).astype(np.float32)
        if needs[4]:
            res[4] = (-0.5 * (g64 * sc * (x64 - mu) * inv ** 3).sum(axis=axes)).reshape(pshape).astype(np.float32)
        return res

    def _fast_backward(self, x, scale, mean, var) -> bool:
        """Whether the float32 Numba backward applies (else the float64 numpy one)."""
        return (not self.per_activation and x is not None and x.dtype == np.float32 and x.ndim >= 2
                and all(p is not None and p.dtype == np.float32 and p.shape == (x.shape[1],)
                        for p in (scale, mean, var)))

    # --- kernels ------------------------------------------------------------------------------------------
    def _cuda_per_channel(self, ins) -> bool:
        """Whether the device kernels apply: float32, per-channel parameters of shape (C,)."""
        x = ins[0]
        return (not getattr(self, "per_activation", False) and len(x.shape) >= 2 and self.n_out <= 3
                and all(t is not None and np.dtype(t.dtype) == np.float32 and
                        (k == 0 or tuple(t.shape) == (x.shape[1],)) for k, t in enumerate(ins[:5])))

    def _cuda_runtime(self, ins):
        """Statistics or parameters given at run time (the training tape), or batch statistics (training
        mode): batch mean and variance by one block per channel, the normalization, and the running
        statistics' update (:class:`~edgedl.kernels.cuda.grad.BatchNormTrain`)."""
        if not self._cuda_per_channel(ins) or (not self.training and self.n_out > 1):
            return None
        from ..kernels.cuda import grad as G

        x = ins[0]
        k = G.BatchNormTrain(x.shape, self.epsilon, self.momentum)
        c = int(x.shape[1])
        stats = G.empty((4, c))  # batch mean, batch variance, and spares for running outputs not asked for
        training, n_out = self.training, self.n_out

        def run(inputs, outputs, stream):
            if not training:
                k.apply(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], outputs[0], stream)
                return
            k.batch_stats(inputs[0], stats[0], stats[1], stream)
            k.apply(inputs[0], inputs[1], inputs[2], stats[0], stats[1], outputs[0], stream)
            k.running(inputs[3], inputs[4], stats[0], stats[1], outputs[1] if n_out > 1 else stats[2],
                      outputs[2] if n_out > 2 else stats[3], stream)
        return Kernel(run, impl="cuda")

    def backward_cuda(self, grads, ins, outs, needs, stream):
        """The backward of ``backward``'s float32 path on the device (training mode recomputes the batch
        statistics from x); the gradients of mean and var, and other types, run on the host."""
        if needs[3] or needs[4] or any(ins[k] is None for k in (0, 1, 3, 4)) or \
                not self._cuda_per_channel(self.in_types):
            return None
        from ..kernels.cuda import grad as G

        x_t = self.in_types[0]
        c = int(x_t.shape[1])
        k = G.BatchNormTrain(x_t.shape, self.epsilon, self.momentum)
        dy = grads[0] if grads[0] is not None else G.zeros(x_t.shape, stream)
        mean, var = ins[3], ins[4]
        if self.training:
            stats = G.empty((2, c), stream)
            k.batch_stats(ins[0], stats[0], stats[1], stream)
            mean, var = stats[0], stats[1]
        dscale, dbias = G.empty((c,), stream), G.empty((c,), stream)
        dx = G.empty(x_t.shape, stream) if needs[0] else None
        k.backward(ins[0], dy, ins[1], mean, var, dx, dscale, dbias, self.training, stream)
        return [dx, dscale if needs[1] else None, dbias if needs[2] else None, None, None]

    def build_cuda(self, ins, outs, consts):
        """Inference form with constant statistics: a per-channel scale and shift; otherwise (run-time
        statistics, training mode) :meth:`_cuda_runtime`."""
        x = ins[0]
        if np.dtype(x.dtype) != np.float32 or len(x.shape) < 2:
            return None
        if self.training or getattr(self, "per_activation", False) or any(c is None for c in consts[1:5]):
            return self._cuda_runtime(ins)
        from ..kernels.cuda.elementwise import ChannelAffine

        scale, bias, mean, var = (np.asarray(c, np.float64).reshape(-1) for c in consts[1:5])
        if not all(v.size == x.shape[1] for v in (scale, bias, mean, var)):
            return None
        a = scale / np.sqrt(var + self.epsilon)
        k = ChannelAffine(x.shape, a.astype(np.float32), (bias - mean * a).astype(np.float32))
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

    def build(self, ins, outs, consts):
        x = ins[0]
        if self.training and self.n_out <= 3 and all(self.node.outputs[:self.n_out]) and not self.per_activation \
                and all(np.dtype(t.dtype) == np.float32 for t in ins[:5]):
            return self._train_kernel(int(x.shape[1]))
        if self.n_out > 1:
            return self._ref_present()
        if self.training or x.dtype != np.float32 or self.per_activation:
            return ref_kernel(self)
        from ..kernels.cpu.norm import bn_affine, bn_runtime_affine, channel_affine

        n, c = int(x.shape[0]), int(x.shape[1])
        s = int(np.prod(x.shape[2:], dtype=np.int64))
        params = consts[1:5]
        if all(p is not None for p in params):
            a, b = bn_affine(*params, self.epsilon)

            def run(inputs, outputs, scratch):
                channel_affine(inputs[0], outputs[0], a, b, n, c, s)
            return Kernel(run)
        if any(t.dtype != np.float32 for t in ins[1:5]):
            return ref_kernel(self)
        eps = self.epsilon

        def run_dyn(inputs, outputs, scratch):
            ab = scratch[:8 * c].view(np.float32)
            a, b = ab[:c], ab[c:]
            bn_runtime_affine(inputs[1], inputs[2], inputs[3], inputs[4], eps, a, b)
            channel_affine(inputs[0], outputs[0], a, b, n, c, s)
        return Kernel(run_dyn, scratch_bytes=8 * c)

    def _train_kernel(self, c: int) -> Kernel:
        """Batch statistics (float32 Numba, float64 sums): Y and, when asked, the updated running statistics."""
        from ..kernels.cpu.bn_train import bn_train_forward

        eps, momentum, n_out = self.epsilon, self.momentum, self.n_out

        def run(inputs, outputs, scratch):
            spare = scratch[:8 * c].view(np.float32)
            new_mean = outputs[1] if n_out > 1 else spare[:c]
            new_var = outputs[2] if n_out > 2 else spare[c:]
            bn_train_forward(np.ascontiguousarray(inputs[0]), *inputs[1:5], eps, momentum, outputs[0], new_mean,
                             new_var)
        return Kernel(run, scratch_bytes=8 * c)

    def _ref_present(self) -> Kernel:
        """The numpy path, writing only the outputs the node has (an omitted middle output is skipped)."""
        present = [bool(o) for o in self.node.outputs]

        def run(inputs, outputs, scratch):
            results = [r for r, p in zip(self.ref(*inputs), present) if p]
            for o, r in zip(outputs, results):
                o[...] = r
        return Kernel(run, impl="numpy")


@register
class LRN(Op):
    op_type = "LRN"
    kernels = {"cpu": ("float32",)}
    num_inputs = (1, 1)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        size = self.attr("size")
        if size is None:
            raise self.error("the size attribute is required")
        self.size = int(size)
        if self.size < 1:
            raise self.error(f"size must be positive, got {self.size}")
        self.alpha = float(self.attr("alpha", 1e-4))
        self.beta = float(self.attr("beta", 0.75))
        self.bias = float(self.attr("bias", 1.0))

    def infer(self, ins, consts):
        x = ins[0]
        if len(x.shape) < 2:
            raise self.error(f"input must be (N, C, ...) with rank >= 2, got shape {x.shape}")
        if _dtname(x) not in ("float16", "float32", "float64", "bfloat16"):
            raise self.unsupported(f"input dtype {_dtname(x)} is not supported (float16, float32, float64)")
        return [TensorType(tuple(x.shape), x.dtype)]

    def ref(self, x):
        c = x.shape[1]
        x64 = x.astype(np.float64)
        sq = x64 * x64
        lo_off = (self.size - 1) // 2
        hi_off = -(-(self.size - 1) // 2)
        ssum = np.zeros_like(x64)
        for ch in range(c):
            lo, hi = max(0, ch - lo_off), min(c - 1, ch + hi_off)
            ssum[:, ch] = sq[:, lo:hi + 1].sum(axis=1)
        y = x64 / (self.bias + self.alpha / self.size * ssum) ** self.beta
        return [y.astype(x.dtype)]

    def build(self, ins, outs, consts):
        x = ins[0]
        if x.dtype != np.float32:
            return ref_kernel(self)
        from ..kernels.cpu.norm import lrn_runner

        n, c = int(x.shape[0]), int(x.shape[1])
        s = int(np.prod(x.shape[2:], dtype=np.int64))
        run_lrn = lrn_runner(n, c, s, self.size, self.alpha, self.beta, self.bias)

        def run(inputs, outputs, scratch):
            run_lrn(inputs[0], outputs[0])
        return Kernel(run)


# --- InstanceNormalization / GroupNormalization ------------------------------------------------------------
class _GroupNormBase(Op):
    """Statistics per sample and group of channels over (C / G) * spatial values, then a per-channel (or,
    GroupNormalization before opset 21, per-group) affine map. float32: the Numba kernels of
    :mod:`edgedl.kernels.cpu.layer_norm` (one pass per group row, float64 sums); else numpy."""

    kernels = {"cpu": ("float32",)}
    num_inputs = (3, 3)
    min_rank = 3

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.epsilon = float(self.attr("epsilon", 1e-5))
        if not np.isfinite(self.epsilon) or self.epsilon < 0:
            raise self.error(f"epsilon must be a finite non-negative number, got {self.epsilon}")

    def groups(self, c: int) -> int:
        raise NotImplementedError

    #: whether scale / bias have one value per group (GroupNormalization-18) instead of per channel
    per_group = False

    def infer(self, ins, consts):
        x, scale, bias = ins
        shape = tuple(x.shape)
        if len(shape) < self.min_rank:
            raise self.error(f"input must be (N, C, ...) with rank >= {self.min_rank}, got shape {shape}")
        for name, t in (("X", x), ("scale", scale), ("B", bias)):
            if _dtname(t) not in _FLOATS:
                raise self.unsupported(f"{name} has dtype {_dtname(t)}; supported: {', '.join(_FLOATS)}")
        if len({np.dtype(t.dtype) for t in ins}) > 1:
            raise self.error("X, scale and B must share one dtype, got " + ", ".join(_dtname(t) for t in ins))
        c = shape[1]
        g = self.groups(c)
        want = (g,) if self.per_group else (c,)
        what = f"{g} groups" if self.per_group else f"{c} channels"
        for name, t in (("scale", scale), ("B", bias)):
            if tuple(t.shape) != want:
                raise self.error(f"{name} has shape {tuple(t.shape)}, expected {want} ({what})")
        self.g = g
        self.nn, self.c = int(shape[0]), int(c)
        self.s = int(np.prod(shape[2:], dtype=np.int64))
        return [TensorType(shape, x.dtype)]

    def _channel_params(self, p: np.ndarray) -> np.ndarray:
        """A parameter as one float64 value per channel."""
        p = p.astype(np.float64)
        return np.repeat(p, self.c // self.g) if self.per_group else p

    def _normalize64(self, x):
        """(xhat (N, C, S), inv (N, G, 1)) in float64."""
        x3 = x.astype(np.float64).reshape(self.nn, self.g, -1)
        with np.errstate(all="ignore"):
            mean = x3.mean(axis=2, keepdims=True)
            inv = 1.0 / np.sqrt(((x3 - mean) ** 2).mean(axis=2, keepdims=True) + self.epsilon)
        return ((x3 - mean) * inv).reshape(self.nn, self.c, -1), inv

    def ref(self, x, scale, bias):
        xhat, _ = self._normalize64(x)
        with np.errstate(all="ignore"):
            y = xhat * self._channel_params(scale)[:, None] + self._channel_params(bias)[:, None]
        return [y.reshape(x.shape).astype(x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32 or ins[0].size == 0:
            return ref_kernel(self)
        from ..kernels.cpu.layer_norm import GroupNormKernel

        k = GroupNormKernel(self.nn, self.c, self.s, self.g, self.epsilon, self.per_group)

        def run(inputs, outputs, scratch):
            k(inputs[0], inputs[1], inputs[2], outputs[0])

        def bind(inputs, outputs, scratch, threads):
            return k.bind(inputs[0], inputs[1], inputs[2], outputs[0], threads)
        return Kernel(run, bind=bind)

    # --- training -----------------------------------------------------------------------------------------
    grad_inputs = (0, 1)

    def backward(self, grads, ins, outs, needs):
        """dX through the per-group statistics: inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) per
        (sample, group) with dxhat = dY * scale[c]; dscale = sum(dY * xhat), dB = sum(dY) per channel (summed
        per group for per-group parameters). float32: Numba (float64 sums, fixed order); else float64 numpy."""
        x, scale = ins[0], ins[1]
        shape = tuple(self.in_types[0].shape)
        self.infer(self.in_types, [None] * 3)
        dy = grads[0] if grads[0] is not None else np.zeros(shape, np.float32)
        want_params = bool(needs[1] or needs[2])
        res = [None, None, None]
        if x.dtype == np.float32 and scale.dtype == np.float32 and x.size > 0:
            from ..kernels.cpu.layer_norm import gn_backward

            dx, dsc, dbi = gn_backward(np.ascontiguousarray(x).reshape(self.nn, self.c, self.s),
                                       np.ascontiguousarray(dy, np.float32).reshape(self.nn, self.c, self.s),
                                       np.ascontiguousarray(scale), self.g, self.epsilon, self.per_group,
                                       bool(needs[0]), want_params)
            if needs[0]:
                res[0] = dx.reshape(shape)
        else:
            xhat, inv = self._normalize64(x)
            g64 = dy.astype(np.float64).reshape(self.nn, self.c, -1)
            dsc = (g64 * xhat).sum(axis=(0, 2))
            dbi = g64.sum(axis=(0, 2))
            if needs[0]:
                dxhat = (g64 * self._channel_params(scale)[:, None]).reshape(self.nn, self.g, -1)
                xh = xhat.reshape(self.nn, self.g, -1)
                dx = inv * (dxhat - dxhat.mean(axis=2, keepdims=True)
                            - xh * (dxhat * xh).mean(axis=2, keepdims=True))
                res[0] = dx.reshape(shape).astype(np.float32)
        if want_params:
            if self.per_group:
                dsc = dsc.reshape(self.g, -1).sum(axis=1)
                dbi = dbi.reshape(self.g, -1).sum(axis=1)
            if needs[1]:
                res[1] = dsc.astype(np.float32)
            if needs[2]:
                res[2] = dbi.astype(np.float32)
        return res


@register
class InstanceNormalization(_GroupNormBase):
    """InstanceNormalization (opsets 1, 6, 22): y = scale[c] * (x - mean) / sqrt(var + epsilon) + B[c], the
    statistics over the spatial dims of each (n, c) plane."""

    op_type = "InstanceNormalization"

    def groups(self, c):
        return c


@register
class GroupNormalization(_GroupNormBase):
    """GroupNormalization: ``num_groups`` groups of C / num_groups channels; scale and bias per group at
    opsets 18-20, per channel from opset 21 (the spec's change); ``stash_type`` 1 (float32 statistics)."""

    op_type = "GroupNormalization"
    min_rank = 2

    def __init__(self, node, opset):
        super().__init__(node, opset)
        ng = self.attr("num_groups")
        if ng is None:
            raise self.error("the num_groups attribute is required")
        self.num_groups = int(ng)
        if self.num_groups < 1:
            raise self.error(f"num_groups must be positive, got {self.num_groups}")
        stash = int(self.attr("stash_type", 1))
        if stash != 1:
            raise self.unsupported(f"stash_type {stash} is not supported (only 1: float32 statistics)")
        self.per_group = opset < 21

    def groups(self, c):
        if c % self.num_groups:
            raise self.error(f"{c} channels cannot be split into {self.num_groups} groups")
        return self.num_groups


# --- LpNormalization / MeanVarianceNormalization ---------------------------------------------------------
@register
class LpNormalization(Op):
    """LpNormalization (opsets 1, 22): x / ||x||_p along ``axis`` (default -1), p = 1 (sum of |x|) or 2;
    a zero norm gives 0. numpy, float64 sums."""

    op_type = "LpNormalization"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis = int(self.attr("axis", -1))
        self.p = int(self.attr("p", 2))
        if self.p not in (1, 2):
            raise self.error(f"p must be 1 or 2, got {self.p}")

    def infer(self, ins, consts):
        x = ins[0]
        if _dtname(x) not in _FLOATS:
            raise self.unsupported(f"input dtype {_dtname(x)} is not supported ({', '.join(_FLOATS)})")
        if len(x.shape) == 0:
            raise self.error("input must have rank >= 1")
        self.ax = normalize_axis(self, self.axis, len(x.shape))
        return [TensorType(tuple(x.shape), x.dtype)]

    def ref(self, x):
        x64 = x.astype(np.float64)
        if self.p == 1:
            norm = np.abs(x64).sum(axis=self.ax, keepdims=True)
        else:
            norm = np.sqrt((x64 * x64).sum(axis=self.ax, keepdims=True))
        with np.errstate(all="ignore"):
            y = np.where(norm == 0, 0.0, x64 / norm)
        return [y.astype(x.dtype)]


@register
class MeanVarianceNormalization(Op):
    """MeanVarianceNormalization (opsets 9, 13): (X - mean) / (sqrt(var) + 1e-9) over ``axes`` (default
    [0, 2, 3]), population variance computed from the deviations (never negative). numpy, float64."""

    op_type = "MeanVarianceNormalization"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axes = [int(a) for a in self.attr("axes", [0, 2, 3])]

    def infer(self, ins, consts):
        x = ins[0]
        if _dtname(x) not in _FLOATS:
            raise self.unsupported(f"input dtype {_dtname(x)} is not supported ({', '.join(_FLOATS)})")
        rank = len(x.shape)
        axes = [normalize_axis(self, a, rank, "axes entry") for a in self.axes]
        if len(set(axes)) != len(axes):
            raise self.error(f"axes {self.axes} repeat an axis")
        self.norm_axes = tuple(sorted(axes))
        return [TensorType(tuple(x.shape), x.dtype)]

    def ref(self, x):
        x64 = x.astype(np.float64)
        with np.errstate(all="ignore"):
            mean = x64.mean(axis=self.norm_axes, keepdims=True)
            d = x64 - mean
            std = np.sqrt((d * d).mean(axis=self.norm_axes, keepdims=True))
            y = d / (std + 1e-9)
        return [y.astype(x.dtype)]
