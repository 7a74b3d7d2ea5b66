"""Optimizers (SGD with momentum / Nesterov / weight decay, Adam, AdamW), learning-rate schedules and
gradient clipping, updating float32 parameter arrays in place.

Conventions follow PyTorch's: SGD momentum ``v = mu*v + g`` (no dampening), Nesterov ``g + mu*v``, weight
decay added to the gradient (L2); Adam with bias correction and L2 weight decay added to the gradient;
AdamW's decay ``p -= lr * wd * p`` decoupled from the gradient. Updates are computed in float32 with numpy
(element-wise, the same for any thread count). ``state_dict`` / ``load_state_dict`` hold everything a
checkpoint needs to continue to the same weights.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import EdgeDLError

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "constant", "step_lr", "cosine_lr", "warmup", "clip_grad_norm",
           "make_optimizer"]


# -- schedules: step -> learning-rate factor -----------------------------------------------------------
def constant():
    return lambda step: 1.0


def step_lr(step_size: int, gamma: float = 0.1):
    """Multiply the rate by ``gamma`` every ``step_size`` steps."""
    if step_size < 1:
        raise EdgeDLError("step_size must be >= 1")
    return lambda step: gamma ** (step // step_size)


def cosine_lr(total_steps: int, min_factor: float = 0.0):
    """Cosine decay from 1 to ``min_factor`` over ``total_steps``, then ``min_factor``."""
    if total_steps < 1:
        raise EdgeDLError("total_steps must be >= 1")
    return lambda step: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps)
                                                                             / total_steps))


def warmup(warmup_steps: int, after=None):
    """Linear warm-up from 1/warmup_steps to 1 over ``warmup_steps``, then ``after`` (shifted to start at 0)."""
    after = after or constant()
    return lambda step: (step + 1) / warmup_steps if step < warmup_steps else after(step - warmup_steps)


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale every gradient in place so that their global L2 norm is at most ``max_norm``; returns the
    norm before clipping."""
    total = math.sqrt(sum(float(np.dot(g.reshape(-1).astype(np.float64), g.reshape(-1).astype(np.float64)))
                          for g in grads.values()))
    if max_norm > 0 and total > max_norm:
        scale = np.float32(max_norm / (total + 1e-6))
        for g in grads.values():
            g *= scale
    return total


class Optimizer:
    """Base: ``step(params, grads)`` updates ``params`` (name -> float32 array) in place."""

    def __init__(self, lr: float, schedule=None, weight_decay: float = 0.0):
        if not lr > 0:
            raise EdgeDLError(f"the learning rate must be > 0, got {lr}")
        self.lr = float(lr)
        self.schedule = schedule or constant()
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def current_lr(self) -> float:
        return self.lr * self.schedule(self.steps)

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        lr = np.float32(self.current_lr())
        for name, p in params.items():
            g = grads.get(name)
            if g is not None:
                self._update(name, p, np.asarray(g, np.float32), lr)
        self.steps += 1

    def _update(self, name, p, g, lr) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"steps": self.steps, "state": {k: {n: v.copy() for n, v in d.items()} for k, d in self.state.items()}}

    def load_state_dict(self, d: dict) -> None:
        self.steps = int(d["steps"])
        self.state = {k: {n: np.array(v, np.float32) for n, v in s.items()} for k, s in d["state"].items()}


class SGD(Optimizer):
    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 schedule=None):
        super().__init__(lr, schedule, weight_decay)
        if nesterov and momentum <= 0:
            raise EdgeDLError("Nesterov momentum needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, lr):
        if self.weight_decay:
            g = g + np.float32(self.weight_decay) * p
        if self.momentum:
            st = self.state.setdefault(name, {})
            v = st.get("v")
            if v is None:
                v = st["v"] = g.copy()
            else:
                v *= np.float32(self.momentum)
                v += g
            g = g + np.float32(self.momentum) * v if self.nesterov else v
        p -= lr * g


class Adam(Optimizer):
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 schedule=None):
        super().__init__(lr, schedule, weight_decay)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = float(eps)

    def _update(self, name, p, g, lr):
        if self.weight_decay and not self.decoupled:
            g = g + np.float32(self.weight_decay) * p
        if self.weight_decay and self.decoupled:
            p -= lr * np.float32(self.weight_decay) * p
        st = self.state.setdefault(name, {})
        if "m" not in st:
            st["m"] = np.zeros_like(p)
            st["v"] = np.zeros_like(p)
        m, v = st["m"], st["v"]
        m *= np.float32(self.b1)
        m += np.float32(1 - self.b1) * g
        v *= np.float32(self.b2)
        v += np.float32(1 - self.b2) * g * g
        t = self.steps + 1
        c1 = np.float32(1 - self.b1 ** t)
        c2 = np.float32(math.sqrt(1 - self.b2 ** t))
        p -= lr * (m / c1) / (np.sqrt(v) / c2 + np.float32(self.eps))


class AdamW(Adam):
    decoupled = True

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 schedule=None):
        super().__init__(lr, betas, eps, weight_decay, schedule)


def make_optimizer(optimizer, **kw) -> Optimizer:
    """An Optimizer from an instance or a name ("sgd", "adam", "adamw") with keyword options."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    table = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
    if optimizer not in table:
        raise EdgeDLError(f"unknown optimizer {optimizer!r} (choose from {sorted(table)} or pass an Optimizer)")
    return table[optimizer](**kw)
