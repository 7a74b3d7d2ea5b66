"""Activations: Relu, LeakyRelu, PRelu, Elu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish, and the smooth ones:
Gelu (opset 20, approximate "none" / "tanh"), Swish (opset 24), Softplus, Softsign, Mish, Selu, Celu,
ThresholdedRelu, Shrink, and onnxruntime's com.microsoft Gelu, FastGelu (optional bias), BiasGelu, QuickGelu.

All but PRelu, FastGelu with a bias and BiasGelu are :class:`~edgedl.ops.elementwise.Unary` ops (one flat fp32
Numba loop with an op code and two parameters); PRelu is a broadcasting binary kernel (slope broadcast to x),
and so are the bias Gelus (Gelu of x + bias in one pass). Clip takes its bounds from attributes (opset < 11)
or from optional scalar inputs (opset >= 11), constant or computed at run time.
NaN propagates through every activation, as in onnxruntime, except ThresholdedRelu and Shrink, where NaN gives
0 (onnxruntime and the ONNX reference do the same). At -inf the product forms (Gelu, Swish, Mish) give NaN,
as their formulas and onnxruntime do.

Formulas (Phi: the standard normal CDF; the references compute in float64 and round once):

==================  ====================================================================================
Gelu                x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2))
Gelu tanh, FastGelu x / 2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) = x * sigmoid(2 sqrt(2/pi) (...))
BiasGelu            Gelu(a + b); FastGelu(x, bias) = Gelu tanh(x + bias)
Swish, QuickGelu    x * sigmoid(alpha * x) (alpha 1; QuickGelu 1.702)
Softplus            log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))
Softsign            x / (1 + |x|)
Mish                x * tanh(softplus(x))
Selu                gamma * (x if x > 0 else alpha * (exp(x) - 1))
Celu                x if x > 0 else alpha * (exp(x / alpha) - 1) (alpha != 0)
ThresholdedRelu     x if x > alpha else 0
Shrink              x + bias if x < -lambd; x - bias if x > lambd; else 0 (every numeric dtype)
==================  ====================================================================================

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
The smooth ones: Gelu (both forms, the contrib Gelus), Swish / QuickGelu, Mish and Softsign read the input;
Softplus its output (sigmoid(x) = -expm1(-y)); Celu its output (exp(x / alpha) = y / alpha + 1); Selu its
output when gamma > 0 and alpha >= 0 (Selu'(0) = gamma * alpha, as Elu), else the input. FastGelu / BiasGelu
give the bias the input gradient summed over its broadcast axes. ThresholdedRelu and Shrink have no backward.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..kernels.cpu import act_grad as G
from ..kernels.cpu import elementwise as K
from ..kernels.cpu.elementwise import broadcast_plan
from ..registry import Kernel, Op, ref_kernel, register
from .common import require_dtype, same_dtype, unbroadcast
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


def act_backward_cuda(op: Op, code: int, g, v, stream, alpha: float = 0.0, beta: float = 0.0):
    """``act_backward`` on the device: dx = f'(v) * g (:func:`edgedl.kernels.cuda.grad.act_grad`); None where
    the input is not float32 or ``code`` has no device form (the host backward runs)."""
    from ..kernels.cuda import grad as G

    t = op.in_types[0]
    if t is None or np.dtype(t.dtype) != np.float32 or not G.act_grad_supported(code) or v is None:
        return None
    shape = tuple(t.shape)
    if g is None:
        return G.zeros(shape, stream)
    dx = G.empty(shape, stream)
    G.act_grad(code, v, g, dx, alpha, beta, stream)
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

    @classmethod
    def has_backward_cuda(cls) -> bool:
        from ..kernels.cuda import ACT_GRAD_CODES

        return cls.grad_code in ACT_GRAD_CODES

    def backward_cuda(self, grads, ins, outs, needs, stream):
        if self.out_code is not None:
            dx = act_backward_cuda(self, self.out_code, grads[0], outs[0], stream, *self.params())
        else:
            dx = act_backward_cuda(self, self.grad_code, grads[0], ins[0], stream, *self.params())
        return None if dx is None else [dx]


class _FromOutput:
    """backward of an elementwise activation from its saved output (``grad_code``, no parameters)."""

    grad_inputs: ClassVar[tuple[int, ...]] = ()
    grad_outputs: ClassVar[tuple[int, ...]] = (0,)
    grad_code: ClassVar[int]

    def backward(self, grads, ins, outs, needs):
        return [act_backward(self, self.grad_code, grads[0], outs[0], "output")]

    @classmethod
    def has_backward_cuda(cls) -> bool:
        from ..kernels.cuda import ACT_GRAD_CODES

        return cls.grad_code in ACT_GRAD_CODES

    def backward_cuda(self, grads, ins, outs, needs, stream):
        dx = act_backward_cuda(self, self.grad_code, grads[0], outs[0], stream)
        return None if dx is None else [dx]


@register
class Relu(_FromOutput, Unary):
    op_type = "Relu"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    grad_code = G.G_RELU
    code = K.U_RELU
    dtypes = SIGNED_DTYPES

    def compute(self, x):
        return np.where(x < 0, np.zeros((), x.dtype), x)


@register
class LeakyRelu(_FromInput, Unary):
    op_type = "LeakyRelu"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
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
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
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
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    grad_code = G.G_SIGMOID
    code = K.U_SIGMOID

    def compute(self, x):
        e = np.exp(-np.abs(x))  # never overflows
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@register
class Tanh(_FromOutput, Unary):
    op_type = "Tanh"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
    grad_code = G.G_TANH
    code = K.U_TANH

    def compute(self, x):
        return np.tanh(x)


@register
class HardSigmoid(_FromInput, Unary):
    op_type = "HardSigmoid"
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
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
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
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
    kernels = {"cpu": ("float32",), "cuda": ("float32",)}
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

    def build_cuda(self, ins, outs, consts):
        present = [k for k in (1, 2) if k < len(ins) and ins[k] is not None]
        if np.dtype(ins[0].dtype) != np.float32 or any(consts[k] is None for k in present):
            return None  # bounds computed at run time: on the host
        lo, hi = self._bounds(np.float32, *(consts[k] if k < len(consts) else None for k in (1, 2)))
        from ..kernels.cuda.elementwise import Activation

        k = Activation(2, -np.inf if lo is None else lo, np.inf if hi is None else hi)
        return Kernel(lambda inputs, outputs, stream: k(inputs[0], outputs[0], stream), impl="cuda")

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

    def backward_cuda(self, grads, ins, outs, needs, stream):
        """Constant bounds (the tape keeps the output): dy where lo < y < hi, on the device; bounds that are
        run-time inputs, or asked for a gradient, run ``backward`` on the host."""
        if ins[0] is not None or not outs or outs[0] is None or any(needs[1:]):
            return None
        bounds = getattr(self, "_cuda_bounds", None)
        if bounds is None:
            host = [v.copy_to_host() if hasattr(v, "copy_to_host") else v for v in ins[1:3]]
            lo, hi = self._bounds(np.float32, *(host[k - 1] if k < len(ins) else None for k in (1, 2)))
            bounds = self._cuda_bounds = (-np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))
        dx = act_backward_cuda(self, G.G_CLIP_OUT, grads[0], outs[0], stream, *bounds)
        return None if dx is None else [dx] + [None] * (len(ins) - 1)

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


# --- smooth activations ------------------------------------------------------------------------------------
def _wide(x: np.ndarray) -> np.ndarray:
    """x in float64 (the references compute there and round once to the input's dtype)."""
    return np.asarray(x, dtype=np.float64)


def _sigmoid64(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


_erfc = np.frompyfunc(math.erfc, 1, 1)
_SQRT1_2 = 0.7071067811865476


def ndtr64(x: np.ndarray) -> np.ndarray:
    """The standard normal CDF Phi(x) = erfc(-x / sqrt(2)) / 2 in float64 (math.erfc per element: the spec)."""
    return 0.5 * _erfc(-_wide(x) * _SQRT1_2).astype(np.float64)


def gelu_ref(x: np.ndarray, tanh_form: bool) -> np.ndarray:
    """Gelu in float64: x * Phi(x), or the tanh form x / 2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) written
    as x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) (the same function, no 1 + tanh cancellation)."""
    x = _wide(x)
    if tanh_form:
        return x * _sigmoid64(K.GELU_K2 * (x + K.GELU_C * x ** 3))
    return x * ndtr64(x)


def _softplus64(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


class _GeluForm:
    """Gelu's float32 kernel and backward by form (``tanh_form``); float16 / float64 run a float64 Numba
    loop (math.erfc) instead of the per-element reference."""

    tanh_form = False

    def _set_form(self, tanh_form: bool) -> None:
        self.tanh_form = tanh_form
        self.code = K.U_GELU_TANH if tanh_form else K.U_GELU
        self.grad_code = G.G_GELU_TANH if tanh_form else G.G_GELU

    def compute(self, x):
        return gelu_ref(x, self.tanh_form)

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) == np.float32:
            return super().build(ins, outs, consts)
        from ..kernels.cpu.special import gelu_f64

        tanh_form = self.tanh_form

        def run(inputs, outputs, scratch):
            x = np.ascontiguousarray(inputs[0], dtype=np.float64).reshape(-1)
            y = np.empty_like(x)
            gelu_f64(x, y, tanh_form)
            outputs[0][...] = y.reshape(outputs[0].shape)

        return Kernel(run)


@register
class Gelu(_GeluForm, _FromInput, Unary):
    """Gelu (opset 20): x * Phi(x) (approximate="none"), or its tanh approximation (approximate="tanh")."""

    op_type = "Gelu"
    code = K.U_GELU
    grad_code = G.G_GELU

    def __init__(self, node, opset):
        super().__init__(node, opset)
        approximate = self.attr("approximate", "none")
        if isinstance(approximate, bytes):
            approximate = approximate.decode()
        if approximate not in ("none", "tanh"):
            raise self.error(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self._set_form(approximate == "tanh")


@register
class MsGelu(_GeluForm, _FromInput, Unary):
    """com.microsoft Gelu: x * Phi(x) (the erf form)."""

    op_type = "Gelu"
    domain = "com.microsoft"
    code = K.U_GELU
    grad_code = G.G_GELU


class _BiasGelu(Op):
    """Gelu of x + bias (com.microsoft BiasGelu, FastGelu): the bias broadcasts to x (usually 1-D, the last
    axis), the output has x's shape; float32 adds and activates in one pass (a broadcasting binary kernel)."""

    kernels = {"cpu": ("float32",)}
    tanh_form: ClassVar[bool]
    bin_code: ClassVar[int]
    grad_code: ClassVar[int]
    grad_inputs = (0, 1)

    def infer(self, ins, consts):
        require_dtype(self, ins[0], ("float16", "float32", "float64"))
        if len(ins) > 1 and ins[1] is not None:
            same_dtype(self, ins)
            x, b = tuple(ins[0].shape), tuple(ins[1].shape)
            if len(b) > len(x) or any(db not in (1, dx) for db, dx in zip(b[::-1], x[::-1])):
                raise self.error(f"bias of shape {b} does not broadcast to the input shape {x}")
        return [TensorType(ins[0].shape, ins[0].dtype)]

    def ref(self, x, bias=None):
        z = _wide(x) if bias is None else _wide(x) + _wide(bias)
        with np.errstate(all="ignore"):
            return [gelu_ref(z, self.tanh_form).astype(x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            from ..kernels.cpu.special import gelu_f64

            tanh_form = self.tanh_form

            def run64(inputs, outputs, scratch):  # float16 / float64: x + bias and Gelu in float64, one rounding
                z = np.array(inputs[0], np.float64)  # a copy: Gelu runs in place on it
                if len(inputs) > 1 and inputs[1] is not None:
                    z += inputs[1]
                z = z.reshape(-1)
                gelu_f64(z, z, tanh_form)
                outputs[0][...] = z.reshape(outputs[0].shape)

            return Kernel(run64)
        if len(ins) < 2 or ins[1] is None:
            code = K.U_GELU_TANH if self.tanh_form else K.U_GELU

            def run1(inputs, outputs, scratch):
                K.unary(code, _flat(inputs[0]), _flat(outputs[0]))

            def bind1(inputs, outputs, scratch, threads):
                x = inputs[0] if inputs[0].flags.writeable else inputs[0].copy()  # one compiled signature
                return K.unary_bind(code, _flat(x), _flat(outputs[0]), 0.0, 0.0, threads)

            return Kernel(run1, bind=bind1)
        k = K.BinaryKernel(self.bin_code, ins[0].shape, ins[1].shape, outs[0].shape)
        fixed = const_operands(consts)

        def run(inputs, outputs, scratch):
            k(operand(inputs, fixed, 0), operand(inputs, fixed, 1), _flat(outputs[0]))

        def bind(inputs, outputs, scratch, threads):
            return k.bind(operand(inputs, fixed, 0), operand(inputs, fixed, 1), _flat(outputs[0]), threads)

        return Kernel(run, bind=bind)

    def backward(self, grads, ins, outs, needs):
        """dz = Gelu'(x + bias) * g; dx = dz, dbias = dz summed over the broadcast axes."""
        x_t = self.in_types[0]
        has_bias = len(ins) > 1 and ins[1] is not None
        if not differentiable(x_t):
            return [None] * len(ins)
        shape = tuple(x_t.shape)
        x = grad_operand(self, ins[0], shape, "input")
        z = x if not has_bias else np.add(x, np.asarray(ins[1], np.float32), dtype=np.float32)
        dz = act_backward(self, self.grad_code, grads[0], np.ascontiguousarray(z), "input")
        out = [dz if needs[0] else None]
        if has_bias:
            out.append(unbroadcast(dz, tuple(self.in_types[1].shape)) if needs[1] else None)
        return out + [None] * (len(ins) - len(out))


@register
class FastGelu(_BiasGelu):
    """com.microsoft FastGelu: the tanh form of Gelu of x (+ an optional bias)."""

    op_type = "FastGelu"
    domain = "com.microsoft"
    num_inputs = (1, 2)
    tanh_form = True
    bin_code = K.B_BIAS_GELU_TANH
    grad_code = G.G_GELU_TANH


@register
class BiasGelu(_BiasGelu):
    """com.microsoft BiasGelu: Gelu (the erf form) of A + B."""

    op_type = "BiasGelu"
    domain = "com.microsoft"
    num_inputs = (2, 2)
    tanh_form = False
    bin_code = K.B_BIAS_GELU
    grad_code = G.G_GELU


@register
class Swish(_FromInput, Unary):
    """Swish (opset 24): x * sigmoid(alpha * x), alpha 1 by default."""

    op_type = "Swish"
    grad_code = G.G_SWISH
    code = K.U_SWISH
    default_alpha: ClassVar[float] = 1.0

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", self.default_alpha))

    def params(self):
        return self.alpha, 0.0

    def compute(self, x):
        x = _wide(x)
        return x * _sigmoid64(self.alpha * x)


@register
class QuickGelu(Swish):
    """com.microsoft QuickGelu: x * sigmoid(alpha * x), alpha 1.702 by default."""

    op_type = "QuickGelu"
    domain = "com.microsoft"
    default_alpha = 1.702


@register
class Softplus(_FromOutput, Unary):
    """log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)). Backward from the output: sigmoid(x) =
    -expm1(-y)."""

    op_type = "Softplus"
    grad_code = G.G_SOFTPLUS_OUT
    code = K.U_SOFTPLUS

    def compute(self, x):
        return _softplus64(_wide(x))


@register
class Softsign(_FromInput, Unary):
    """x / (1 + |x|) (NaN at +-inf, as the formula and onnxruntime give)."""

    op_type = "Softsign"
    grad_code = G.G_SOFTSIGN
    code = K.U_SOFTSIGN

    def compute(self, x):
        x = _wide(x)
        return x / (1 + np.abs(x))


@register
class Mish(_FromInput, Unary):
    """x * tanh(softplus(x))."""

    op_type = "Mish"
    grad_code = G.G_MISH
    code = K.U_MISH

    def compute(self, x):
        x = _wide(x)
        return x * np.tanh(_softplus64(x))


@register
class Selu(_FromInput, Unary):
    """gamma * (x if x > 0 else alpha * (exp(x) - 1)); alpha 1.6732632..., gamma 1.0507009... (ONNX's float
    defaults). Backward from the output when gamma > 0 and alpha >= 0 (y > 0 exactly where x > 0)."""

    op_type = "Selu"
    grad_code = G.G_SELU
    code = K.U_SELU

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.67326319217681884765625))
        self.gamma = float(self.attr("gamma", 1.05070102214813232421875))
        if self.gamma > 0 and self.alpha >= 0:
            self._from_output(G.G_SELU_OUT)

    def params(self):
        return self.alpha, self.gamma

    def compute(self, x):
        x = _wide(x)
        return self.gamma * np.where(x > 0, x, self.alpha * np.expm1(x))


@register
class Celu(_FromInput, Unary):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) = x if x > 0 else alpha * expm1(x / alpha), alpha != 0
    (1 by default). Backward from the output (y > 0 exactly where x > 0, and exp(x / alpha) = y / alpha + 1)."""

    op_type = "Celu"
    code = K.U_CELU
    grad_code = G.G_CELU_OUT

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.0))
        if self.alpha == 0 or not math.isfinite(self.alpha):
            raise self.error(f"alpha must be a finite nonzero number, got {self.alpha}")
        self._from_output(G.G_CELU_OUT)

    def params(self):
        return self.alpha, 0.0

    def compute(self, x):
        x = _wide(x)
        a = float(np.float32(self.alpha)) if x.dtype != np.float64 else self.alpha
        return np.where(x > 0, x, a * np.expm1(x / a))


@register
class ThresholdedRelu(Unary):
    """x if x > alpha else 0 (alpha 1 by default); NaN gives 0, as in onnxruntime and the ONNX reference."""

    op_type = "ThresholdedRelu"
    code = K.U_THRESHOLDED_RELU

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.0))

    def params(self):
        return self.alpha, 0.0

    def compute(self, x):
        return np.where(x > x.dtype.type(self.alpha), x, x.dtype.type(0))


@register
class Shrink(Unary):
    """x + bias where x < -lambd, x - bias where x > lambd, else 0 (lambd 0.5, bias 0 by default); every numeric
    dtype (integers computed in float64 and cast back, as the ONNX reference does); NaN gives 0."""

    op_type = "Shrink"
    code = K.U_SHRINK
    dtypes = NUMERIC_DTYPES

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.lambd = float(self.attr("lambd", 0.5))
        self.bias = float(self.attr("bias", 0.0))

    def params(self):
        return self.lambd, self.bias

    def compute(self, x):
        if x.dtype.kind == "f":  # in x's dtype, with the parameters rounded to it (as the kernel compares)
            lam, b, w = x.dtype.type(self.lambd), x.dtype.type(self.bias), x
        else:
            lam, b, w = self.lambd, self.bias, _wide(x)
        return np.where(w < -lam, w + b, np.where(w > lam, w - b, w.dtype.type(0)))


__all__ = ["Relu", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "PRelu", "Clip", "Gelu",
           "MsGelu", "FastGelu", "BiasGelu", "Swish", "QuickGelu", "Softplus", "Softsign", "Mish", "Selu", "Celu",
           "ThresholdedRelu", "Shrink"]
