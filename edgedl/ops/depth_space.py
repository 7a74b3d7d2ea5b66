"""DepthToSpace and SpaceToDepth (pixel shuffle / unshuffle) on (N, C, H, W) tensors.

With block size b, DepthToSpace maps (N, C*b*b, H, W) to (N, C, H*b, W*b) and SpaceToDepth is its inverse:

    space[n, c, h*b + i, w*b + j] = depth[n, ch(c, i, j), h, w]
    DCR (the default): ch = (i*b + j) * C + c        CRD: ch = c*b*b + i*b + j

DepthToSpace has the ``mode`` attribute from opset 11, SpaceToDepth from opset 28 (DCR before). Every dtype
of 1, 2, 4 or 8 bytes runs the Numba kernel of :mod:`edgedl.kernels.cpu.depth_space`.

Backward: each op is a permutation, so dx is the other op (same block size and mode) applied to dy.
"""
from __future__ import annotations

import functools

import numpy as np

from ..ir import TensorType
from ..kernels.cpu.depth_space import depth_space
from ..kernels.cpu.layout import bits_view
from ..registry import Kernel, Op, register
from .layout import ALL_DTYPES


def _to_space(x: np.ndarray, b: int, crd: bool) -> np.ndarray:
    """numpy DepthToSpace of (N, C*b*b, H, W)."""
    n, cd, h, w = x.shape
    c = cd // (b * b)
    if crd:
        t = x.reshape(n, c, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        t = x.reshape(n, b, b, c, h, w).transpose(0, 3, 4, 1, 5, 2)
    return t.reshape(n, c, h * b, w * b)


def _to_depth(x: np.ndarray, b: int, crd: bool) -> np.ndarray:
    """numpy SpaceToDepth of (N, C, H*b, W*b)."""
    n, c, hs, ws = x.shape
    h, w = hs // b, ws // b
    t = x.reshape(n, c, h, b, w, b)
    t = t.transpose(0, 1, 3, 5, 2, 4) if crd else t.transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * b * b, h, w)


class _DepthSpace(Op):
    kernels = {"cpu": ALL_DTYPES}
    #: True: DepthToSpace
    to_space = True
    #: first opset with the mode attribute
    mode_since = 11

    def __init__(self, node, opset):
        super().__init__(node, opset)
        b = self.attr("blocksize")
        if b is None:
            raise self.error("needs a 'blocksize' attribute")
        self.b = int(b)
        if self.b < 1:
            raise self.error(f"blocksize must be positive, got {self.b}")
        mode = self.attr("mode")
        if mode is not None and opset < self.mode_since:
            raise self.error(f"attribute mode exists from opset {self.mode_since} on")
        mode = "DCR" if mode is None else (mode.decode() if isinstance(mode, bytes) else str(mode))
        if mode not in ("DCR", "CRD"):
            raise self.error(f"mode must be 'DCR' or 'CRD', got '{mode}'")
        self.crd = mode == "CRD"

    def _geometry(self, shape) -> tuple[int, int, int, int]:
        """(N, C of the space side, H, W of the depth side) from the input shape."""
        if len(shape) != 4:
            raise self.error(f"input must be 4-D (N, C, H, W), got shape {tuple(shape)}")
        n, c, h, w = (int(d) for d in shape)
        b = self.b
        if self.to_space:
            if c % (b * b):
                raise self.error(f"input channels {c} are not a multiple of blocksize^2 = {b * b}")
            return n, c // (b * b), h, w
        if h % b or w % b:
            raise self.error(f"input height {h} and width {w} must be multiples of the blocksize {b}")
        return n, c, h // b, w // b

    def infer(self, ins, consts):
        x = ins[0]
        n, c, h, w = self._geometry(x.shape)
        b = self.b
        shape = (n, c, h * b, w * b) if self.to_space else (n, c * b * b, h, w)
        return [TensorType(shape, x.dtype)]

    def ref(self, x):
        self._geometry(x.shape)
        return [(_to_space if self.to_space else _to_depth)(x, self.b, self.crd)]

    def build(self, ins, outs, consts):
        x = ins[0]
        n, c, h, w = self._geometry(x.shape)
        if np.dtype(x.dtype).itemsize not in (1, 2, 4, 8):
            return super().build(ins, outs, consts)
        b, crd, to_space = self.b, self.crd, self.to_space

        def call(xb, ob):
            if to_space:
                depth_space(xb, ob, n, c, h, w, b, crd, True)
            else:
                depth_space(ob, xb, n, c, h, w, b, crd, False)

        def run(inputs, outputs, scratch):
            call(bits_view(np.ascontiguousarray(inputs[0])), bits_view(outputs[0]))

        def bind(inputs, outputs, scratch, threads):
            if not (inputs[0].flags.c_contiguous and outputs[0].flags.c_contiguous):
                return functools.partial(run, inputs, outputs, scratch)
            return functools.partial(call, bits_view(inputs[0]), bits_view(outputs[0]))

        return Kernel(run, bind=bind)

    grad_inputs = ()

    def backward(self, grads, ins, outs, needs):
        """dx: the inverse permutation of dy (the other op with the same block size and mode)."""
        if not needs[0]:
            return [None]
        shape = tuple(self.in_types[0].shape)
        g = grads[0]
        if g is None:
            return [np.zeros(shape, np.float32)]
        g = np.asarray(g, np.float32).reshape(self.out_types[0].shape)
        inv = _to_depth if self.to_space else _to_space
        return [np.ascontiguousarray(inv(g, self.b, self.crd))]


@register
class DepthToSpace(_DepthSpace):
    op_type = "DepthToSpace"
    to_space = True
    mode_since = 11


@register
class SpaceToDepth(_DepthSpace):
    op_type = "SpaceToDepth"
    to_space = False
    mode_since = 28


__all__ = ["DepthToSpace", "SpaceToDepth"]
