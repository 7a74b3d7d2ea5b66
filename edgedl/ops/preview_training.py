"""The optimizers of the ``ai.onnx.preview.training`` domain (version 1): Adagrad, Adam and Momentum.

Inputs: ``R`` (learning rate, float / double scalar), ``T`` (update count, int64 scalar), then n tensors to
optimize ``X_1..X_n``, their gradients ``G_1..G_n`` and the optimizer state (``H_i`` for Adagrad, ``V_i`` for
Momentum, ``V_i`` then ``H_i`` for Adam). Outputs: the new ``X_i``, then the new state, in the same order
(2n outputs for Adagrad / Momentum, 3n for Adam). Each output has the dtype of the input it replaces.

With ``g = norm_coefficient * x + g`` (L2 regularization):

* Adagrad (decay_factor 0, epsilon 1e-6, norm_coefficient 0): ``r' = R / (1 + T * decay_factor)``,
  ``h' = h + g * g``, ``x' = x - r' * g / (sqrt(h') + epsilon)``.
* Adam (alpha 0.9, beta 0.999, epsilon 1e-6, norm_coefficient 0, norm_coefficient_post 0):
  ``v' = alpha * v + (1 - alpha) * g``, ``h' = beta * h + (1 - beta) * g * g``,
  ``r' = R * sqrt(1 - beta ** T) / (1 - alpha ** T)`` when T > 0 (else R),
  ``x' = (1 - norm_coefficient_post) * (x - r' * v' / (sqrt(h') + epsilon))``.
* Momentum (alpha, beta, mode and norm_coefficient required): ``b = beta`` if T > 0 else 1,
  ``v' = alpha * v + b * g``; mode ``standard``: ``x' = x - R * v'``; ``nesterov``: ``x' = x - R * (g + alpha * v')``.

numpy, written as onnx's reference implementation evaluates them (the same operations in the same order and
numpy type promotion, attributes as numpy float32 scalars) so results agree bit for bit;
then each result is cast to its input's dtype. These are tiny elementwise updates run once per training step.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Op, register

DOMAIN = "ai.onnx.preview.training"
_FLOATS = ("float32", "float64")


def _f32(v) -> np.float32:
    """A float attribute as onnx's reference evaluator holds it: a numpy float32 scalar (which also sets numpy's
    type promotion in the formulas: float32 tensors stay float32 where the reference's do)."""
    return np.float32(v)


class _Optimizer(Op):
    domain = DOMAIN
    num_inputs = (2, 1 << 16)
    #: tensors per optimized input: X, G and the state tensors
    group = 3
    #: the float attributes with their defaults (None: required)
    defaults: dict[str, float | None] = {}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        for name, default in self.defaults.items():
            value = self.attr(name, default)
            if value is None:
                raise self.error(f"the {name} attribute is required")
            setattr(self, name, _f32(value))
        n_in = len(node.inputs)
        if (n_in - 2) % self.group or n_in < 2 + self.group:
            raise self.error(f"takes R, T and {self.group} tensors per optimized input ({self.group} * n + 2 inputs), "
                             f"got {n_in} inputs")
        self.n = (n_in - 2) // self.group
        want_out = (self.group - 1) * self.n
        if len(node.outputs) != want_out:
            raise self.error(f"with {self.n} optimized inputs it has {want_out} outputs, got {len(node.outputs)}")
        if not all(node.inputs) or not all(node.outputs):
            raise self.error("no input or output may be omitted")

    def infer(self, ins, consts):
        r, t = ins[0], ins[1]
        if np.dtype(r.dtype).name not in _FLOATS:
            raise self.unsupported(f"R has dtype {np.dtype(r.dtype).name}; supported: float32, float64")
        if np.dtype(t.dtype) != np.int64:
            raise self.error(f"T must be int64, got {np.dtype(t.dtype).name}")
        for name, v in (("R", r), ("T", t)):
            if int(np.prod(v.shape, dtype=np.int64)) != 1 or len(v.shape) > 1:
                raise self.error(f"{name} must be a scalar, got shape {tuple(v.shape)}")
        n = self.n
        outs_x, outs_state = [], []
        for i in range(n):
            group = [ins[2 + k * n + i] for k in range(self.group)]
            for k, tt in enumerate(group):
                if np.dtype(tt.dtype).name not in _FLOATS:
                    raise self.unsupported(f"input {2 + k * n + i} has dtype {np.dtype(tt.dtype).name}; supported: "
                                           "float32, float64")
            shape = tuple(group[0].shape)
            for k, tt in enumerate(group[1:], 1):
                if tuple(tt.shape) != shape:
                    raise self.error(f"input {2 + k * n + i} has shape {tuple(tt.shape)}, expected {shape} (the "
                                     f"shape of X_{i + 1})")
            outs_x.append(TensorType(shape, group[0].dtype))
            outs_state.append([TensorType(shape, tt.dtype) for tt in group[2:]])
        # outputs: X'_1..X'_n, then each state kind for every input
        state = [outs_state[i][k] for k in range(self.group - 2) for i in range(n)]
        return outs_x + state

    def ref(self, r, t, *tensors):
        r = np.asarray(r).reshape(())
        t = np.asarray(t).reshape(())
        n = self.n
        xs, states = [], [[] for _ in range(self.group - 2)]
        for i in range(n):
            group = [tensors[k * n + i] for k in range(self.group)]
            x_new, *new_state = self.update(r, t, *group)
            xs.append(np.asarray(x_new).astype(group[0].dtype))
            for k, s in enumerate(new_state):
                states[k].append(np.asarray(s).astype(group[2 + k].dtype))
        return xs + [s for kind in states for s in kind]

    def update(self, r, t, x, g, *state):
        raise NotImplementedError


@register
class Adagrad(_Optimizer):
    op_type = "Adagrad"
    group = 3
    defaults = {"decay_factor": 0.0, "epsilon": 1e-6, "norm_coefficient": 0.0}

    def update(self, r, t, x, g, h):
        r_ = r / (1 + t * self.decay_factor)
        g_reg = self.norm_coefficient * x + g
        h_new = h + g_reg * g_reg
        h_sqrt = np.sqrt(h_new) + self.epsilon
        x_new = x - r_ * g_reg / h_sqrt
        return x_new, h_new


@register
class Adam(_Optimizer):
    op_type = "Adam"
    group = 4
    defaults = {"alpha": 0.9, "beta": 0.999, "epsilon": 1e-6, "norm_coefficient": 0.0, "norm_coefficient_post": 0.0}

    def update(self, r, t, x, g, v, h):
        alpha, beta = self.alpha, self.beta
        g_reg = self.norm_coefficient * x + g
        v_new = alpha * v + (1 - alpha) * g_reg
        h_new = beta * h + (1 - beta) * (g_reg * g_reg)
        h_sqrt = np.sqrt(h_new) + self.epsilon
        r_adj = r * np.sqrt(1 - beta ** t) / (1 - alpha ** t) if t > 0 else r
        x_new = x - r_adj * (v_new / h_sqrt)
        return (1 - self.norm_coefficient_post) * x_new, v_new, h_new


@register
class Momentum(_Optimizer):
    op_type = "Momentum"
    group = 3
    defaults = {"alpha": None, "beta": None, "norm_coefficient": None}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        mode = self.attr("mode")
        if mode is None:
            raise self.error("the mode attribute is required")
        if mode not in ("standard", "nesterov"):
            raise self.error(f"mode must be 'standard' or 'nesterov', got {mode!r}")
        self.mode = mode

    def update(self, r, t, x, g, v):
        g_reg = self.norm_coefficient * x + g
        beta_adj = self.beta if t > 0 else 1
        v_new = self.alpha * v + beta_adj * g_reg
        if self.mode == "standard":
            x_new = x - r * v_new
        else:
            x_new = x - r * (g_reg + self.alpha * v_new)
        return x_new, v_new
