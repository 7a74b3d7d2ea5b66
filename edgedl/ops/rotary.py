"""RotaryEmbedding (ONNX opset 23): rotary position embeddings (RoPE) of a 3-D (B, S, H*hd) or 4-D
(B, H, S, hd) input.

The first ``rotary_embedding_dim`` (default: all, ``rd``) features of each head are rotated in pairs by the
angle of the token's position: the pairs are (i, i + rd/2) (default) or (2i, 2i + 1) (``interleaved``)::

    y1 = cos * x1 - sin * x2,   y2 = sin * x1 + cos * x2,   y[rd:] = x[rd:]

cos / sin come from ``cos_cache`` / ``sin_cache``: rows ``position_ids[b, s]`` of (max_position, rd/2) caches,
or, without position_ids, the token's own row of (B, S, rd/2) caches (a (S, rd/2) cache is shared by the
batch). position_ids are data: each is checked against the cache length at run time.

float32 runs the Numba kernel (:mod:`edgedl.kernels.cpu.rotary`), other dtypes the numpy reference (float64
for float32, float32 for float16 / bfloat16).
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register

_FLOATS = ("float16", "float32", "float64", "bfloat16")


@register
class RotaryEmbedding(Op):
    op_type = "RotaryEmbedding"
    kernels = {"cpu": ("float32",)}
    num_inputs = (3, 4)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.interleaved = bool(int(self.attr("interleaved", 0)))
        self.rd_attr = int(self.attr("rotary_embedding_dim", 0))
        nh = self.attr("num_heads")
        self.num_heads = None if nh is None else int(nh)
        if self.rd_attr < 0:
            raise self.error(f"rotary_embedding_dim must not be negative, got {self.rd_attr}")
        if self.num_heads is not None and self.num_heads <= 0:
            raise self.error(f"num_heads must be positive, got {self.num_heads}")

    def _geometry(self, x_shape):
        """(B, S, H, hd, rd, strides (batch, head, seq))."""
        if len(x_shape) == 4:
            nb, nh, ns, hd = x_shape
            if self.num_heads is not None and self.num_heads != nh:
                raise self.error(f"num_heads {self.num_heads} disagrees with the input's {nh} heads")
            strides = (nh * ns * hd, ns * hd, hd)
        elif len(x_shape) == 3:
            if self.num_heads is None:
                raise self.error("a 3-D input needs the num_heads attribute")
            nb, ns, hid = x_shape
            nh = self.num_heads
            if hid % nh:
                raise self.error(f"hidden size {hid} is not a multiple of num_heads {nh}")
            hd = hid // nh
            strides = (ns * hid, hd, hid)
        else:
            raise self.error(f"input must be 3-D or 4-D, got shape {tuple(x_shape)}")
        rd = self.rd_attr or hd
        if rd > hd or rd % 2:
            raise self.error(f"rotary_embedding_dim {rd} must be even and at most the head size {hd}")
        return nb, ns, nh, hd, rd, strides

    def infer(self, ins, consts):
        x, cos, sin = ins[0], ins[1], ins[2]
        pos = ins[3] if len(ins) > 3 else None
        if np.dtype(x.dtype).name not in _FLOATS:
            raise self.unsupported(f"input has dtype {np.dtype(x.dtype).name}; supported: {', '.join(_FLOATS)}")
        if cos.dtype != x.dtype or sin.dtype != x.dtype:
            raise self.error("cos_cache and sin_cache must have the input's dtype")
        if tuple(cos.shape) != tuple(sin.shape):
            raise self.error(f"cos_cache {cos.shape} and sin_cache {sin.shape} differ in shape")
        nb, ns, nh, hd, rd, _ = self._geometry(x.shape)
        half = rd // 2
        if pos is not None:
            if np.dtype(pos.dtype) != np.int64:
                raise self.error(f"position_ids must be int64, got {np.dtype(pos.dtype).name}")
            if len(pos.shape) != 2 or pos.shape[1] != ns or pos.shape[0] not in (1, nb):
                raise self.error(f"position_ids must have the shape ({nb}, {ns}), got {tuple(pos.shape)}")
            if len(cos.shape) != 2 or cos.shape[1] != half:
                raise self.error(f"with position_ids the caches must be (max_position, {half}), got {cos.shape}")
        else:
            if len(cos.shape) == 3:
                if cos.shape[0] not in (1, nb) or cos.shape[1] != ns or cos.shape[2] != half:
                    raise self.error(f"without position_ids the caches must be ({nb}, {ns}, {half}), got {cos.shape}")
            elif len(cos.shape) == 2:
                if cos.shape[0] != ns or cos.shape[1] != half:
                    raise self.error(f"a 2-D cache without position_ids must be ({ns}, {half}), got {cos.shape}")
            else:
                raise self.error(f"the caches must be 2-D or 3-D, got shape {cos.shape}")
        return [TensorType(tuple(x.shape), x.dtype)]

    def _rows(self, nb, ns, cos_shape, pos):
        """Cache row of every token (b, s), int64 (nb * ns,); position_ids checked against the cache."""
        if pos is not None:
            p = np.broadcast_to(pos, (nb, ns)).reshape(-1)
            n = cos_shape[0]
            bad = (p < 0) | (p >= n)
            if bad.any():
                k = int(np.argmax(bad))
                raise self.error(f"position_ids[{k // ns}, {k % ns}] = {int(p[k])} is out of range for a cache "
                                 f"of {n} positions")
            return np.ascontiguousarray(p, np.int64)
        if len(cos_shape) == 3 and cos_shape[0] == nb:
            return np.arange(nb * ns, dtype=np.int64)
        return np.tile(np.arange(ns, dtype=np.int64), nb)

    def ref(self, x, cos, sin, pos=None):
        nb, ns, nh, hd, rd, _ = self._geometry(x.shape)
        half = rd // 2
        compute = np.float64 if x.dtype.itemsize >= 4 else np.float32
        rows = self._rows(nb, ns, cos.shape, pos)
        c = cos.reshape(-1, half)[rows].reshape(nb, ns, 1, half).astype(compute)
        s = sin.reshape(-1, half)[rows].reshape(nb, ns, 1, half).astype(compute)
        xt = x.transpose(0, 2, 1, 3) if x.ndim == 4 else x.reshape(nb, ns, nh, hd)  # (B, S, H, hd)
        xt = xt.astype(compute)
        rot = xt[..., :rd]
        if self.interleaved:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
        else:
            x1, x2 = rot[..., :half], rot[..., half:]
        real = c * x1 - s * x2
        imag = s * x1 + c * x2
        if self.interleaved:
            rot = np.stack([real, imag], axis=-1).reshape(rot.shape)
        else:
            rot = np.concatenate([real, imag], axis=-1)
        out = np.concatenate([rot, xt[..., rd:]], axis=-1)
        out = out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(x.shape)
        return [np.ascontiguousarray(out).astype(x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        from ..kernels.cpu.rotary import rotary

        nb, ns, nh, hd, rd, strides = self._geometry(ins[0].shape)
        half = rd // 2
        cos_shape = tuple(ins[1].shape)
        has_pos = len(ins) > 3 and ins[3] is not None
        fixed_rows = None
        if not has_pos:
            fixed_rows = self._rows(nb, ns, cos_shape, None)
        elif consts[3] is not None:
            fixed_rows = self._rows(nb, ns, cos_shape, consts[3])
        interleaved = self.interleaved

        def run(inputs, outputs, scratch):
            rows = fixed_rows if fixed_rows is not None else self._rows(nb, ns, cos_shape, inputs[3])
            if half == 0:
                outputs[0][...] = inputs[0]
                return
            rotary(inputs[0].reshape(-1), outputs[0].reshape(-1), strides, strides, inputs[1].reshape(-1),
                   inputs[2].reshape(-1), rows, nb, ns, nh, hd, half, interleaved)

        return Kernel(run)
