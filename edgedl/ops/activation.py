"""Activations: Relu, LeakyRelu, PRelu, Elu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish.

All but PRelu are :class:`~edgedl.ops.elementwise.Unary` ops (one flat fp32 Numba loop with an op code
and two parameters); PRelu is a broadcasting binary kernel (slope broadcast to x). Clip takes its bounds
from attributes (opset < 11) or from optional scalar inputs (opset >= 11), constant or computed at run time.
NaN propagates through every activation, as in onnxruntime.

Backward (training): fp32 Numba kernels (:mod:`edgedl.kernels.cpu.act_grad`). Each op reads the cheapest
forward value that determines its derivative: Relu, Sigmoid and Tanh the output; LeakyRelu, Elu, Clip,
HardSigmoid, HardSwish and PRelu the input (a LeakyRelu with a negative alpha, or an Elu with alpha <= 0,
cannot tell the sign of x from y). Derivatives at kinks follow PyTorch: Relu'(0) = 0, LeakyRelu'(0) =
PRelu'(0) = slope, Elu'(0) = alpha, Clip passes the gradient where min <= x <= max (both inclusive; a
bound given as an input, when its gradient is asked for, gets the sum of g where x lies beyond it; with
constant bounds the tape keeps only the output and the gradient passes where min < y < max, PyTorch's
ReLU6 / hardtanh rule), LeakyRelu with a positive slope and Elu with alpha >= 0 read their output too,
HardSigmoid passes alpha * g only where 0 < alpha * x + beta < 1 (exclusive), HardSwish'(x) = x / 3 + 1/2 on
[-3, 3] (so -1/2 at -3 and 3/2 at 3), 0 below, 1 above.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu import act_grad as G
from ..kernels.cpu import elementwise as K
from ..kernels.cpu.elementwise import broadcast_plan
from ..registry import Kernel, Op, ref_kernel, register
from .common import require_dtype, same_dtype
from .elementwise import NUMERIC_DTYPES, SIGNED_DTYPES, Unary, _flat, const_operands, operand


# --- backward helpers ------------------------------------------------------------------------------------
def grad_operand(op: Op, a: np.ndarray | None, shape: tuple, what: str) -> np.ndarray:
    """``a`` as a C-contiguous float32 array of ``shape`` (a kernel operand), or an error naming ``what``."""
    if a is None:
        raise op.error(f"backward needs the forward {what}, which was not kept", cls=EdgeDLError)
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape != shape:
        raise op.error(f"backward: {what} has shape {a.shape}, expected {shape}")
    return a


def differentiable(t: TensorType | None) -> bool:
    return t is not None and np.dtype(t.dtype).kind == "f"


def act_backward(op: Op, code: int, g: np.ndarray | None, v: np.ndarray | None, what: str,
                 alpha: float = 0.0, beta: float = 0.0) -> np.ndarray | None:
    """dx = f'(v) * g of an elementwise activation (``code``: a :mod:`~edgedl.kernels.cpu.act_grad` op code;
    ``v``: the saved forward ``what``, "input" or "output"); None for an integer input."""
    t = op.in_types[0]
    if not differentiable(t):
        return None
    shape = tuple(t.shape)
    if g is None:
        return np.zeros(shape, np.float32)
    g = grad_operand(op, g, shape, "output gradient")
    v = grad_operand(op, v, shape, what)
    dx = np.empty(shape, np.float32)
    G.act_grad(code, v.reshape(-1), g.reshape(-1), dx.reshape(-1), alpha, beta)
    return dx


class _FromInput:
    """backward of an elementwise activation from its saved input (``grad_code``, params as the forward), or
    from its output (``out_code``) when the parameters let the output tell the derivative: then the tape
    keeps only the output, which the next layer usually keeps anyway."""

    grad_inputs: ClassVar[tuple[int, ...]] = (0,)
    grad_outputs: ClassVar[tuple[int, ...]] = ()
    grad_code: ClassVar[int]
    out_code: int | None = None

    def _from_output(self, code: int) -> None:
        self.out_code = code
        self.grad_inputs, self.grad_outputs = (), (0,)

    def backward(self, grads, ins, outs, needs):
        if self.out_code is not None:
            return [act_backward(self, self.out_code, grads[0], outs[0], "output", *self.params())]
        return [act_backward(self, self.grad_code, grads[0], ins[0], "input", *self.params())]


class _FromOutput:
    """backward of an elementwise activation from its saved output (``grad_code``, no parameters)."""

    grad_inputs: ClassVar[tuple[int, ...]] = ()
    grad_outputs: ClassVar[tuple[int, ...]] = (0,)
    grad_code: ClassVar[int]

    def backward(self, grads, ins, outs, needs):
        return [act_backward(self, self.grad_code, grads[0], outs[0], "output")]


@register
class Relu(_FromOutput, Unary):
    op_type = "Relu"
    grad_code = G.G_RELU
    code = K.U_RELU
    dtypes = SIGNED_DTYPES

    def compute(self, x):
        return np.where(x < 0, np.zeros((), x.dtype), x)


@register
class LeakyRelu(_FromInput, Unary):
    op_type = "LeakyRelu"
    grad_code = G.G_LEAKY_RELU
    code = K.U_LEAKY_RELU

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 0.01))
        if self.alpha > 0:  # y > 0 exactly where x > 0
            self._from_output(G.G_LEAKY_RELU)

    def params(self):
        return self.alpha, 0.0

    def compute(self, x):
        return np.where(x < 0, x * x.dtype.type(self.alpha), x)


@register
class Elu(_FromInput, Unary):
    op_type = "Elu"
    grad_code = G.G_ELU
    code = K.U_ELU

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.0))
        if self.alpha >= 0:  # y > 0 exactly where x > 0, and alpha * exp(x) = y + alpha below
            self._from_output(G.G_ELU_OUT)

    def params(self):
        return self.alpha, 0.0

    def compute(self, x):
        return np.where(x < 0, self.alpha * np.expm1(x), x)


@register
class Sigmoid(_FromOutput, Unary):
    op_type = "Sigmoid"
    grad_code = G.G_SIGMOID
    code = K.U_SIGMOID

    def compute(self, x):
        e = np.exp(-np.abs(x))  # never overflows
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@register
class Tanh(_FromOutput, Unary):
    op_type = "Tanh"
    grad_code = G.G_TANH
    code = K.U_TANH

    def compute(self, x):
        return np.tanh(x)


@register
class HardSigmoid(_FromInput, Unary):
    op_type = "HardSigmoid"
    grad_code = G.G_HARD_SIGMOID
    code = K.U_HARD_SIGMOID

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 0.2))
        self.beta = float(self.attr("beta", 0.5))

    def params(self):
        return self.alpha, self.beta

    def compute(self, x):
        return np.clip(self.alpha * x + self.beta, 0, 1)


@register
class HardSwish(_FromInput, Unary):
    op_type = "HardSwish"
    grad_code = G.G_HARD_SWISH
    code = K.U_HARD_SWISH

    def compute(self, x):
        return x * np.clip(x / 6 + 0.5, 0, 1)


@register
class PRelu(Op):
    """y = x if x >= 0 else slope * x; slope broadcasts to x (unidirectionally)."""

    op_type = "PRelu"
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 2)

    def infer(self, ins, consts):
        dt = same_dtype(self, ins)
        require_dtype(self, ins[0], NUMERIC_DTYPES)
        x, s = tuple(ins[0].shape), tuple(ins[1].shape)
        if self.opset < 7 and len(s) == 1 and len(x) >= 2 and s[0] == x[1] and s[0] != 1 and x[-1] != s[0]:
            s = s + (1,) * (len(x) - 2)  # opset 6: a 1-D slope is per channel
        if len(s) > len(x) or any(ds not in (1, dx) for ds, dx in zip(s[::-1], x[::-1])):
            raise self.error(f"slope of shape {s} does not broadcast to the input shape {x}")
        return [TensorType(x, dt)]

    def _slope(self, x_shape, s):
        if (self.opset < 7 and s.ndim == 1 and len(x_shape) >= 2 and s.shape[0] == x_shape[1]
                and s.shape[0] != 1 and x_shape[-1] != s.shape[0]):
            return s.reshape(s.shape + (1,) * (len(x_shape) - 2))
        return s

    def ref(self, x, slope):
        slope = self._slope(x.shape, slope)
        return [np.where(x < 0, x * slope, x).astype(x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        s_shape = self._slope(ins[0].shape, np.empty(ins[1].shape, np.uint8)).shape
        k = K.BinaryKernel(K.B_PRELU, ins[0].shape, s_shape, outs[0].shape)
        fixed = const_operands(consts)

        def run(inputs, outputs, scratch):
            k(operand(inputs, fixed, 0), operand(inputs, fixed, 1), _flat(outputs[0]))

        return Kernel(run)

    grad_inputs = (0, 1)

    def backward(self, grads, ins, outs, needs):
        x_t, s_t = self.in_types[0], self.in_types[1]
        if not differentiable(x_t):
            return [None, None]
        x_shape, s_shape = tuple(x_t.shape), tuple(s_t.shape)
        g = grads[0]
        if g is None:
            return [np.zeros(x_shape, np.float32) if needs[0] else None,
                    np.zeros(s_shape, np.float32) if needs[1] else None]
        x = grad_operand(self, ins[0], x_shape, "input")
        s = grad_operand(self, ins[1], s_shape, "slope")
        g = grad_operand(self, g, x_shape, "output gradient")
        s_eff = self._slope(x_shape, s)  # opset < 7: a 1-D per-channel slope, as the forward reads it
        dims, (_, ss) = broadcast_plan(x_shape, x_shape, s_eff.shape)
        if len(dims) > K.BCAST_RANK:  # an unusual interleaving of broadcast dims: read a broadcast copy
            s_flat = np.ascontiguousarray(np.broadcast_to(s_eff, x_shape)).reshape(-1)
            kd, ks = [x.size], [1]
        else:
            s_flat, kd, ks = s.reshape(-1), dims, ss
        pad = K.BCAST_RANK - len(kd)
        kdims = np.array([1] * pad + list(kd), np.int64)
        kss = np.array([0] * pad + list(ks), np.int64)
        dx = np.empty(x_shape, np.float32) if needs[0] else None
        t = np.empty(x_shape, np.float32) if needs[1] else None
        G.prelu_grad(x.reshape(-1), s_flat, g.reshape(-1), None if dx is None else dx.reshape(-1),
                     None if t is None else t.reshape(-1), kdims, kss)
        ds = None
        if t is not None:
            # NOTE: the slope's gradient is summed over its broadcast dims by numpy (float64 accumulator) from
            # the per-element contributions t: the same bits for any thread count, unlike per-chunk partials.
            axes = tuple(a for a, st in enumerate(ss) if st == 0 and dims[a] > 1)
            ds = t.reshape(dims)
            if axes:
                ds = ds.sum(axis=axes, dtype=np.float64).astype(np.float32)
            ds = np.ascontiguousarray(ds, dtype=np.float32).reshape(s_shape)
        return [dx, ds]


@register
class Clip(Op):
    """min(max(x, lo), hi) (hi wins where lo > hi). Bounds: attributes ``min``/``max`` (opset < 11) or
    optional scalar inputs 1 and 2 (opset >= 11), constant or computed at run time."""

    op_type = "Clip"
    kernels = {"cpu": ("float32",)}
    num_inputs = (1, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 11:
            self.attr_min = float(self.attr("min", -3.4028234663852886e38))
            self.attr_max = float(self.attr("max", 3.4028234663852886e38))
            if len([i for i in node.inputs if i]) > 1:
                raise self.error(f"opset {opset} takes min/max as attributes, not inputs")

    def infer(self, ins, consts):
        require_dtype(self, ins[0], NUMERIC_DTYPES)
        for k, what in ((1, "min"), (2, "max")):
            if k < len(ins) and ins[k] is not None:
                t = ins[k]
                if np.dtype(t.dtype) != np.dtype(ins[0].dtype):
                    raise self.error(f"{what} has dtype {np.dtype(t.dtype).name}, input has "
                                     f"{np.dtype(ins[0].dtype).name}")
                if t.size != 1 or len(t.shape) > 1:
                    raise self.error(f"{what} must be a scalar, got shape {tuple(t.shape)}")
        self._grad_from_output(consts)
        return [TensorType(ins[0].shape, ins[0].dtype)]

    def _bounds(self, dtype, lo, hi):
        if self.opset < 11:
            return self.attr_min, self.attr_max
        return (None if lo is None else lo.reshape(()).item(), None if hi is None else hi.reshape(()).item())

    def ref(self, x, lo=None, hi=None):
        a, b = self._bounds(x.dtype, lo, hi)
        y = x
        if a is not None:
            y = np.where(y < a, np.asarray(a).astype(x.dtype), y)
        if b is not None:
            y = np.where(y > b, np.asarray(b).astype(x.dtype), y)
        return [np.array(y, dtype=x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        if self.opset < 11:
            fixed = (self.attr_min, self.attr_max)
        else:
            runtime = [k for k in (1, 2) if k < len(ins) and ins[k] is not None and consts[k] is None]
            if not runtime:
                lo, hi = self._bounds(np.float32, *(consts[k] if k < len(consts) else None for k in (1, 2)))
                fixed = (-np.inf if lo is None else lo, np.inf if hi is None else hi)
            else:
                fixed = None

        if fixed is not None:
            lo_f, hi_f = float(fixed[0]), float(fixed[1])

            def run(inputs, outputs, scratch):
                K.unary(K.U_CLIP, _flat(inputs[0]), _flat(outputs[0]), lo_f, hi_f)

            return Kernel(run)

        def run_dyn(inputs, outputs, scratch):
            lo = inputs[1] if len(inputs) > 1 else None
            hi = inputs[2] if len(inputs) > 2 else None
            lo_f = -np.inf if lo is None else float(lo.reshape(-1)[0])
            hi_f = np.inf if hi is None else float(hi.reshape(-1)[0])
            K.unary(K.U_CLIP, _flat(inputs[0]), _flat(outputs[0]), lo_f, hi_f)

        return Kernel(run_dyn)

    # every input: x and the bounds (scalars) decide where the gradient passes; with constant bounds the
    # output does (see infer), and the tape keeps only the output, which the next layer usually keeps anyway
    grad_inputs = None

    def _grad_from_output(self, consts) -> None:
        """Constant (or attribute) bounds: the backward reads the output, the gradient passing where
        min < y < max (PyTorch's ReLU6 / hardtanh rule; an input exactly at a bound takes no gradient)."""
        if self.opset < 11 or all(k >= len(consts) or not self.node.inputs[k] or consts[k] is not None
                                  for k in (1, 2)):
            self.grad_inputs, self.grad_outputs = (1, 2), (0,)

    def backward(self, grads, ins, outs, needs):
        t = self.in_types[0]
        if not differentiable(t):
            return [None] * len(ins)
        lo, hi = self._bounds(np.float32, *(ins[k] if k < len(ins) else None for k in (1, 2)))
        lo = -np.inf if lo is None else float(lo)
        hi = np.inf if hi is None else float(hi)
        if ins[0] is None and outs and outs[0] is not None:  # constant bounds: from the output
            return [act_backward(self, G.G_CLIP_OUT, grads[0], outs[0], "output", lo, hi) if needs[0] else None] \
                + [None] * (len(ins) - 1)
        dx = act_backward(self, G.G_CLIP, grads[0], ins[0], "input", lo, hi) if needs[0] else None
        # The bounds (inputs 1, 2) get a gradient only when asked for (the tape asks when one is trainable):
        # the sum of g where the output is that bound. Ties (x == bound) go to x, as above; where lo > hi the
        # output is hi everywhere.
        out = [dx] + [None] * (len(ins) - 1)
        for k in (1, 2):
            if k < len(needs) and needs[k] and ins[k] is not None:
                g = grads[0]
                total = 0.0
                if g is not None:
                    x = np.asarray(ins[0])
                    g = np.asarray(g, np.float32)
                    if lo > hi:
                        mask = np.ones(x.shape, bool) if k == 2 else np.zeros(x.shape, bool)
                    else:
                        mask = x < np.float32(lo) if k == 1 else x > np.float32(hi)
                    total = float(np.sum(g, where=mask, dtype=np.float64))
                out[k] = np.full(tuple(self.in_types[k].shape), total, np.float32)
        return out


__all__ = ["Relu", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "PRelu", "Clip"]
