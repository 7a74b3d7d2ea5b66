"""``TrainingDropout(x, seed) -> (y, mask)`` (domain ``edgedl``): Dropout as it runs while training.

The trainer rewrites each Dropout of the model into this op for training steps (evaluation keeps the
identity). Each element is kept with probability ``1 - ratio`` and scaled by ``1 / (1 - ratio)`` (inverted
dropout, as ONNX's training mode and PyTorch do); ``seed`` is an int64 scalar fed on every step, so a step's
mask is a function of (trainer seed, step, node) and a resumed run drops the same units. The uint8 mask is
what the backward reads: dx = dy * mask / (1 - ratio).
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, register


@register
class TrainingDropout(Op):
    op_type = "TrainingDropout"
    domain = "edgedl"
    num_inputs = (2, 2)
    grad_inputs = ()
    grad_outputs = (1,)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.ratio = float(self.attr("ratio", 0.5))
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"ratio must be in [0, 1), got {self.ratio}")

    def infer(self, ins, consts):
        x, seed = ins
        if np.dtype(x.dtype) != np.float32:
            raise self.unsupported(f"training dropout takes float32, got {np.dtype(x.dtype).name}")
        if tuple(seed.shape) != () or np.dtype(seed.dtype) != np.int64:
            raise self.error("the seed must be an int64 scalar")
        return [TensorType(tuple(x.shape), np.dtype(np.float32)), TensorType(tuple(x.shape), np.dtype(np.uint8))]

    def ref(self, x, seed):
        rng = np.random.default_rng(int(seed))
        mask = (rng.random(x.shape, dtype=np.float32) >= np.float32(self.ratio)).astype(np.uint8)
        scale = np.float32(1.0 / (1.0 - self.ratio))
        return [(np.asarray(x, np.float32) * mask * scale).astype(np.float32), mask]

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            y, mask = self.ref(*inputs)
            outputs[0][...] = y
            outputs[1][...] = mask

        # NOTE: numpy: the mask comes from numpy's generator (one draw per element), a memory-bound pass
        return Kernel(run, impl="numpy")

    def backward(self, grads, ins, outs, needs):
        if not needs[0]:
            return [None, None]
        shape = tuple(self.in_types[0].shape)
        g = grads[0]
        if g is None:
            return [np.zeros(shape, np.float32), None]
        mask = outs[1]
        if mask is None or tuple(mask.shape) != shape:
            raise self.error("backward needs the forward's dropout mask")
        scale = np.float32(1.0 / (1.0 - self.ratio))
        return [(np.asarray(g, np.float32) * mask * scale).astype(np.float32), None]


__all__ = ["TrainingDropout"]
