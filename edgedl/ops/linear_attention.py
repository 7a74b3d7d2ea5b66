"""LinearAttention and CausalConvWithState (ONNX opset 27): the recurrent blocks of linear-attention / state
space models (Gated DeltaNet, Mamba, RWKV, RetNet), with their state carried between calls.

LinearAttention: query (B, T, Hq*dk), key (B, T, Hkv*dk), value (B, T, Hkv*dv), optional past_state
(B, Hkv, dk, dv) (zeros when absent), decay (log-space gate: (B, T, Hkv*dk) per key dim or (B, T, Hkv) per
head) and beta ((B, T, Hkv) or (B, T, 1)). Per kv head, token by token (S the (dk, dv) state)::

    linear:       S = S + k v^T
    gated:        S = exp(g) * S + k v^T
    delta:        S = S + k (beta (v - S^T k))^T
    gated_delta:  S = exp(g) * S;  S = S + k (beta (v - S^T k))^T
    o = scale * q^T S           (each of the Hq / Hkv query heads of the group reads its kv head's S)

``scale`` 0 means 1/sqrt(dk). Outputs: output (B, T, Hq*dv) and present_state (past_state's dtype, or the
query's). Everything runs in float32 (the Numba kernel of :mod:`edgedl.kernels.cpu.attention`, parallel over
(batch, kv head)), inputs of other float types cast on the way in and out, as the ONNX reference does.

CausalConvWithState: a depthwise causal 1-D convolution of input (B, C, L) with weight (C, 1, K) and an
optional bias (C,), left-padded with past_state (B, C, K-1) (zeros when absent)::

    y[b, c, i] = bias[c] + sum_j w[c, j] * xp[b, c, i + j]      xp = concat(past_state, x) along L
    y = y * sigmoid(y)   with activation "silu" / "swish"
    present_state = the last K-1 positions of xp

float32 runs a Numba kernel (parallel over (batch, channel)); other dtypes the numpy reference.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register

_FLOATS = ("float16", "float32", "bfloat16", "float64")
_RULES = {"linear": 0, "gated": 1, "delta": 2, "gated_delta": 3}


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _n(t) -> str:
    return np.dtype(t.dtype).name


@register
class LinearAttention(Op):
    op_type = "LinearAttention"
    kernels = {"cpu": ("float32", "float16")}
    num_inputs = (3, 6)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.rule = _s(self.attr("update_rule", "gated_delta"))
        if self.rule not in _RULES:
            raise self.error(f"update_rule must be one of {', '.join(_RULES)}, got '{self.rule}'")
        self.mode = _RULES[self.rule]
        hq, hkv = self.attr("q_num_heads"), self.attr("kv_num_heads")
        if hq is None or hkv is None:
            raise self.error("q_num_heads and kv_num_heads are required")
        self.hq, self.hkv = int(hq), int(hkv)
        if self.hq <= 0 or self.hkv <= 0 or self.hq % self.hkv:
            raise self.error(f"q_num_heads ({self.hq}) must be a positive multiple of kv_num_heads ({self.hkv})")
        self.scale_attr = float(self.attr("scale", 0.0))
        n_out = len(node.outputs)
        if n_out > 2:
            raise self.error(f"has {n_out} outputs, at most 2")

    def _inp(self, ins, i):
        return ins[i] if len(ins) > i else None

    def infer(self, ins, consts):
        q, k, v = ins[0], ins[1], ins[2]
        past, decay, beta = (self._inp(ins, i) for i in (3, 4, 5))
        for what, t in (("query", q), ("key", k), ("value", v), ("past_state", past), ("decay", decay),
                        ("beta", beta)):
            if t is not None and _n(t) not in _FLOATS:
                raise self.unsupported(f"{what} has dtype {_n(t)}; supported: {', '.join(_FLOATS)}")
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise self.error("query, key and value must share a dtype")
        for what, t in (("query", q), ("key", k), ("value", v)):
            if len(t.shape) != 3:
                raise self.error(f"{what} must be 3-D (B, T, H*D), got shape {tuple(t.shape)}")
        nb, nt, hid_q = q.shape
        if tuple(k.shape[:2]) != (nb, nt) or tuple(v.shape[:2]) != (nb, nt):
            raise self.error(f"query {q.shape}, key {k.shape} and value {v.shape} must share (B, T)")
        if hid_q % self.hq or v.shape[2] % self.hkv:
            raise self.error(f"query's {hid_q} / value's {v.shape[2]} features are not a multiple of the heads")
        dk, dv = hid_q // self.hq, v.shape[2] // self.hkv
        if k.shape[2] != self.hkv * dk:
            raise self.error(f"key has {k.shape[2]} features, expected kv_num_heads * d_k = {self.hkv * dk}")
        gating, delta = self.mode in (1, 3), self.mode >= 2
        if gating != (decay is not None):
            raise self.error(f"update_rule '{self.rule}' {'requires' if gating else 'forbids'} the decay input")
        if delta != (beta is not None):
            raise self.error(f"update_rule '{self.rule}' {'requires' if delta else 'forbids'} the beta input")
        if decay is not None and (len(decay.shape) != 3 or tuple(decay.shape[:2]) != (nb, nt)
                                  or decay.shape[2] not in (self.hkv, self.hkv * dk)):
            raise self.error(f"decay must be ({nb}, {nt}, {self.hkv}) or ({nb}, {nt}, {self.hkv * dk}), got "
                             f"{tuple(decay.shape)}")
        if beta is not None and (len(beta.shape) != 3 or tuple(beta.shape[:2]) != (nb, nt)
                                 or beta.shape[2] not in (self.hkv, 1)):
            raise self.error(f"beta must be ({nb}, {nt}, {self.hkv}) or ({nb}, {nt}, 1), got {tuple(beta.shape)}")
        sdt = q.dtype
        if past is not None:
            if tuple(past.shape) != (nb, self.hkv, dk, dv):
                raise self.error(f"past_state must be ({nb}, {self.hkv}, {dk}, {dv}), got {tuple(past.shape)}")
            sdt = past.dtype
        self.dims = (nb, nt, dk, dv)
        return [TensorType((nb, nt, self.hq * dv), q.dtype), TensorType((nb, self.hkv, dk, dv), sdt)]

    def _scale(self, dk):
        return self.scale_attr if self.scale_attr != 0.0 else 1.0 / np.sqrt(dk)

    def ref(self, q, k, v, past=None, decay=None, beta=None):
        nb, nt, hid_q = q.shape
        hq, hkv = self.hq, self.hkv
        dk, dv = hid_q // hq, v.shape[2] // hkv
        f = np.float32
        q4 = q.reshape(nb, nt, hq, dk).transpose(0, 2, 1, 3).astype(f)
        k4 = k.reshape(nb, nt, hkv, dk).transpose(0, 2, 1, 3).astype(f)
        v4 = v.reshape(nb, nt, hkv, dv).transpose(0, 2, 1, 3).astype(f)
        if decay is not None:
            per = decay.shape[2] // hkv
            d4 = decay.reshape(nb, nt, hkv, per).transpose(0, 2, 1, 3).astype(f)
        if beta is not None:
            b4 = beta.reshape(nb, nt, beta.shape[2], 1).transpose(0, 2, 1, 3).astype(f)
        state = past.astype(f).copy() if past is not None else np.zeros((nb, hkv, dk, dv), f)
        scale = f(self._scale(dk))
        out = np.zeros((nb, hq, nt, dv), f)
        grp = hq // hkv
        for i in range(nt):
            kt, vt = k4[:, :, i], v4[:, :, i]
            if self.mode in (1, 3):
                state = state * np.exp(d4[:, :, i])[..., None]
            if self.mode >= 2:
                got = np.einsum("bhdm,bhd->bhm", state, kt)
                vt = b4[:, :, i] * (vt - got)
            state = state + kt[..., :, None] * vt[..., None, :]
            rd = np.repeat(state, grp, axis=1) if grp > 1 else state
            out[:, :, i] = scale * np.einsum("bhd,bhdm->bhm", q4[:, :, i], rd)
        y = out.transpose(0, 2, 1, 3).reshape(nb, nt, hq * dv).astype(q.dtype)
        return [y, state.astype(past.dtype if past is not None else q.dtype)]

    def build(self, ins, outs, consts):
        if _n(ins[0]) not in ("float32", "float16"):
            return ref_kernel(self)
        from ..kernels.cpu.attention import linear_attention_kernel

        nb, nt, dk, dv = self.dims
        hq, hkv, mode = self.hq, self.hkv, self.mode
        scale = np.float32(self._scale(dk))
        present = [bool(o) for o in self.node.outputs] + [False] * (2 - len(self.node.outputs))
        empty = np.zeros(0, np.float32)

        def f32(a):
            return np.ascontiguousarray(a, np.float32).reshape(-1) if a is not None else empty

        def run(inputs, outputs, scratch):
            inputs = list(inputs) + [None] * (6 - len(inputs))
            q, k, v, past, decay, beta = inputs[:6]
            state = (np.array(past, np.float32) if past is not None else np.zeros((nb, hkv, dk, dv), np.float32))
            y = np.empty((nb, nt, hq * dv), np.float32)
            linear_attention_kernel(f32(q), f32(k), f32(v), state.reshape(nb * hkv, dk, dv), f32(decay), f32(beta),
                                    y.reshape(-1), nb, hq, hkv, nt, dk, dv, mode,
                                    decay is not None and decay.shape[2] != hkv,
                                    beta is not None and beta.shape[2] == hkv, scale)
            it = iter(outputs)
            if present[0]:
                next(it)[...] = y
            if present[1]:
                next(it)[...] = state
        return Kernel(run)


@register
class CausalConvWithState(Op):
    op_type = "CausalConvWithState"
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 4)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.activation = _s(self.attr("activation", "none"))
        if self.activation not in ("none", "silu", "swish"):
            raise self.error(f"activation must be 'none', 'silu' or 'swish', got '{self.activation}'")
        if len(node.outputs) > 2:
            raise self.error(f"has {len(node.outputs)} outputs, at most 2")

    def infer(self, ins, consts):
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        past = ins[3] if len(ins) > 3 else None
        if _n(x) not in _FLOATS:
            raise self.unsupported(f"input has dtype {_n(x)}; supported: {', '.join(_FLOATS)}")
        for what, t in (("weight", w), ("bias", bias), ("past_state", past)):
            if t is not None and t.dtype != x.dtype:
                raise self.error(f"{what} must have the input's dtype {_n(x)}, got {_n(t)}")
        if len(x.shape) != 3:
            raise self.error(f"input must be (B, C, L), got shape {tuple(x.shape)}")
        nb, nc, n = x.shape
        if len(w.shape) != 3 or w.shape[0] != nc or w.shape[1] != 1 or w.shape[2] < 1:
            raise self.error(f"weight must be ({nc}, 1, k) with k >= 1, got {tuple(w.shape)}")
        kk = w.shape[2]
        if bias is not None and tuple(bias.shape) != (nc,):
            raise self.error(f"bias must be ({nc},), got {tuple(bias.shape)}")
        if past is not None and tuple(past.shape) != (nb, nc, kk - 1):
            raise self.error(f"past_state must be ({nb}, {nc}, {kk - 1}), got {tuple(past.shape)}")
        return [TensorType((nb, nc, n), x.dtype), TensorType((nb, nc, kk - 1), x.dtype)]

    def ref(self, x, w, bias=None, past=None):
        nb, nc, n = x.shape
        kk = w.shape[2]
        pad = past if past is not None else np.zeros((nb, nc, kk - 1), x.dtype)
        xp = np.concatenate([pad, x], axis=2)
        compute = np.float64 if x.dtype.itemsize >= 4 else np.float32
        acc = np.zeros((nb, nc, n), compute)
        for j in range(kk):
            acc += w[:, 0, j].astype(compute)[None, :, None] * xp[:, :, j:j + n].astype(compute)
        if bias is not None:
            acc += bias.astype(compute)[None, :, None]
        y = acc.astype(x.dtype)
        if self.activation != "none":
            y32 = y.astype(np.float32)
            with np.errstate(over="ignore"):
                y = (y32 / (np.float32(1.0) + np.exp(-y32))).astype(x.dtype)
        return [y, np.ascontiguousarray(xp[:, :, xp.shape[2] - (kk - 1):])]

    def build(self, ins, outs, consts):
        if _n(ins[0]) != "float32":
            return ref_kernel(self)
        from ..kernels.cpu.attention import causal_conv_kernel

        nb, nc, n = ins[0].shape
        kk = ins[1].shape[2]
        has_bias = len(ins) > 2 and ins[2] is not None
        has_past = len(ins) > 3 and ins[3] is not None
        present = [bool(o) for o in self.node.outputs] + [False] * (2 - len(self.node.outputs))
        silu = self.activation != "none"
        zeros = np.zeros((nb, nc, kk - 1), np.float32)
        empty = np.zeros(0, np.float32)

        def run(inputs, outputs, scratch):
            it = iter(outputs)
            y = next(it) if present[0] else np.empty((nb, nc, n), np.float32)
            st = next(it) if present[1] else np.empty((nb, nc, kk - 1), np.float32)
            causal_conv_kernel(inputs[0], inputs[1].reshape(nc, kk), inputs[2] if has_bias else empty,
                               inputs[3] if has_past else zeros, y, st, silu)
        return Kernel(run)
