"""Attention (ONNX opset 23, 24 and 25): scaled dot-product attention with multi-head, grouped-query and
multi-query heads, 3-D or 4-D inputs, masks, a KV cache and the debug output of the QK product.

Shapes: 4-D Q (B, Hq, Sq, D), K (B, Hkv, Skv, D), V (B, Hkv, Skv, Dv), Y (B, Hq, Sq, Dv); 3-D Q (B, Sq, Hq*D),
K (B, Skv, Hkv*D), V (B, Skv, Hkv*Dv), Y (B, Sq, Hq*Dv) with ``q_num_heads`` / ``kv_num_heads``. Query head h
reads key/value head ``h // (Hq / Hkv)``. past_key / past_value (B, Hkv, P, D / Dv) are prepended to K / V:
``present_* = concat(past_*, K / V)`` along the sequence (T = P + Skv keys).

For query row i, key j::

    s = (Q sqrt(scale)) . (K sqrt(scale))               scale defaults to 1/sqrt(D)
    s = softcap * tanh(s / softcap)                      when softcap > 0
    t = s + bias                                         bias = attn_mask + causal + window + padding
    P = softmax(t) over j, a zero row when the whole bias row is -inf; Y = P V

* attn_mask: bool (False -> -inf) or added as it is; broadcast (right-aligned) to (B, Hq, Sq, T), its last dim
  may be shorter than T (the missing keys are -inf);
* is_causal: ``j <= i + offset`` with offset = P (past), or ``nonpad_kv_seqlen[b] - Sq`` (opset 24+, external
  cache), else 0; opset 25's ``left_window_size`` / ``right_window_size``: ``p - left <= j <= p + right``
  with ``p = offset + i``; nonpad_kv_seqlen (opset 24+): keys ``j >= nonpad_kv_seqlen[b]`` are -inf;
* qk_matmul_output (output 3): mode 0 the scaled product (softcapped when softcap > 0, as the reference
  does), 1 after the softcap, 2 plus the bias, 3 the probabilities; softmax_precision: the softmax runs in
  that float type.

float32 runs the fused Numba kernel (:mod:`edgedl.kernels.cpu.attention`, GEMM microkernels for both products,
parallel over batch x heads x query blocks); other dtypes (and softmax in float16 / bfloat16) the numpy
reference, which follows the ONNX reference step by step (in float64 for float32 inputs).
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, register

_FLOATS = ("float16", "float32", "float64", "bfloat16")
_MASK_DTYPES = ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16",
                "float32", "float64", "bfloat16")
#: TensorProto element types softmax_precision may name
_PRECISION = {1: np.float32, 10: np.float16, 11: np.float64, 16: None}


def _name(t) -> str:
    return np.dtype(t.dtype).name


def _bf16():
    try:
        import ml_dtypes

        return ml_dtypes.bfloat16
    except ImportError:  # pragma: no cover
        return None


def attention_shapes(op: Op, q, k, v, q_heads, kv_heads):
    """(B, Hq, Hkv, Sq, Skv, D, Dv) of 3-D or 4-D Q, K, V (shape tuples); ShapeError when they do not fit."""
    rank = len(q)
    if rank not in (3, 4) or len(k) != rank or len(v) != rank:
        raise op.error(f"Q, K and V must all be 3-D or all 4-D, got shapes {tuple(q)}, {tuple(k)}, {tuple(v)}")
    if rank == 4:
        nb, hq, sq, d = q
        nbk, hkv, skv, dk = k
        nbv, hv, sv, dv = v
        if hv != hkv:
            raise op.error(f"K has {hkv} heads, V has {hv}")
    else:
        if not q_heads or not kv_heads:
            raise op.error("3-D inputs need the q_num_heads and kv_num_heads attributes")
        nb, sq, hid_q = q
        nbk, skv, hid_k = k
        nbv, sv, hid_v = v
        hq, hkv = q_heads, kv_heads
        for what, hid, heads in (("Q", hid_q, hq), ("K", hid_k, hkv), ("V", hid_v, hkv)):
            if hid % heads:
                raise op.error(f"{what}'s hidden size {hid} is not a multiple of its {heads} heads")
        d, dk, dv = hid_q // hq, hid_k // hkv, hid_v // hkv
    if nbk != nb or nbv != nb:
        raise op.error(f"Q, K and V must share the batch size, got {nb}, {nbk}, {nbv}")
    if sv != skv:
        raise op.error(f"K and V must share the sequence length, got {skv} and {sv}")
    if dk != d:
        raise op.error(f"Q's head size {d} differs from K's {dk}")
    if hkv <= 0 or hq <= 0 or hq % hkv:
        raise op.error(f"the {hq} query heads are not a multiple of the {hkv} key/value heads")
    return nb, hq, hkv, sq, skv, d, dv


def mask_strides(op: Op, shape: tuple, nb: int, hq: int, sq: int, t: int) -> tuple[tuple[int, ...], int]:
    """Element strides (batch, head, query, key; 0 = broadcast) of a C-contiguous mask of ``shape`` broadcast to
    (B, Hq, Sq, T), and its number of keys (<= T)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0 or len(shape) > 4:
        raise op.error(f"attn_mask must have rank 1 to 4, got shape {shape}")
    full = (1,) * (4 - len(shape)) + shape
    if full[3] > t:
        raise op.error(f"attn_mask has {full[3]} keys, more than the {t} keys of K")
    for dim, want, what in zip(full[:3], (nb, hq, sq), ("batch", "head", "query")):
        if dim not in (1, want):
            raise op.error(f"attn_mask of shape {shape} does not broadcast to (B={nb}, Hq={hq}, Sq={sq}, T={t}) "
                           f"(its {what} dim is {dim})")
    strides = [0, 0, 0, 0]
    acc = 1
    for ax in range(3, -1, -1):
        strides[ax] = acc if full[ax] != 1 else 0
        acc *= full[ax]
    if full[3] == 1 and t > 1:
        strides[3] = 0
    return tuple(strides), full[3]


def attention_reference(q4, k4, v4, bias, scale, softcap, qk_mode, softmax_dtype, compute):
    """Y (B, Hq, Sq, Dv), qk output of 4-D q, k, v (kv heads already repeated) and an additive bias broadcast to
    (B, Hq, Sq, T), in the ``compute`` dtype, as the ONNX reference orders the steps."""
    sc = compute(np.sqrt(scale))
    with np.errstate(all="ignore"):
        s = np.matmul(q4.astype(compute) * sc, np.swapaxes(k4.astype(compute) * sc, -1, -2))
        if softcap > 0:
            s = (np.tanh(s / compute(softcap)) * compute(softcap)).astype(compute)
        qk = s
        t = s + bias
        if qk_mode == 2:
            qk = t
        if softmax_dtype is not None:
            t = t.astype(softmax_dtype)
        mx = np.max(t, axis=-1, keepdims=True)
        masked_max = np.isneginf(mx)
        e = np.exp(t - np.where(masked_max, np.zeros((), t.dtype), mx))
        tot = np.sum(e, axis=-1, keepdims=True)
        tot = np.where(tot == 0, np.ones((), t.dtype), tot)
        p = e / tot
        rows_masked = np.isneginf(np.max(np.broadcast_to(bias, t.shape), axis=-1, keepdims=True))
        p = np.where(rows_masked, np.zeros((), p.dtype), p)
        if qk_mode == 3:
            qk = p
        p = p.astype(compute)
        y = np.matmul(p, v4.astype(compute))
    return y, qk


@register
class Attention(Op):
    op_type = "Attention"
    kernels = {"cpu": ("float32",)}
    num_inputs = (3, 7)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.is_causal = bool(int(self.attr("is_causal", 0)))
        self.q_heads = self.attr("q_num_heads")
        self.kv_heads = self.attr("kv_num_heads")
        self.q_heads = None if self.q_heads is None else int(self.q_heads)
        self.kv_heads = None if self.kv_heads is None else int(self.kv_heads)
        self.qk_mode = int(self.attr("qk_matmul_output_mode", 0))
        self.scale = self.attr("scale")
        self.softcap = float(self.attr("softcap", 0.0))
        sp = self.attr("softmax_precision")
        self.softmax_precision = None if sp is None else int(sp)
        self.left = int(self.attr("left_window_size", -1)) if opset >= 25 else -1
        self.right = int(self.attr("right_window_size", -1)) if opset >= 25 else -1
        if self.qk_mode not in (0, 1, 2, 3):
            raise self.error(f"qk_matmul_output_mode must be 0, 1, 2 or 3, got {self.qk_mode}")
        if self.softmax_precision is not None and self.softmax_precision not in _PRECISION:
            raise self.error(f"softmax_precision must be 1, 10, 11 or 16 (a float type), got {self.softmax_precision}")
        if self.left < -1 or self.right < -1:
            raise self.error(f"window sizes must be -1 or non-negative, got ({self.left}, {self.right})")
        if len([i for i in node.inputs[6:7] if i]) and opset < 24:
            raise self.error("nonpad_kv_seqlen (input 6) needs opset 24")
        if len(node.outputs) > 4:
            raise self.error(f"has {len(node.outputs)} outputs, at most 4")
        self.n_out = len(node.outputs)

    def _inp(self, ins, i):
        return ins[i] if len(ins) > i else None

    # --- shapes ---------------------------------------------------------------------------------------------
    def infer(self, ins, consts):
        q, k, v = ins[0], ins[1], ins[2]
        mask, pk, pv, nonpad = (self._inp(ins, i) for i in (3, 4, 5, 6))
        for what, t in (("Q", q), ("K", k), ("V", v), ("past_key", pk), ("past_value", pv)):
            if t is not None and _name(t) not in _FLOATS:
                raise self.unsupported(f"{what} has dtype {_name(t)}; supported: {', '.join(_FLOATS)}")
        if k.dtype != q.dtype:
            raise self.error(f"Q and K must share a dtype, got {_name(q)} and {_name(k)}")
        if len(q.shape) == 4 and self.opset >= 25 and (self.q_heads is not None or self.kv_heads is not None):
            nbh = (q.shape[1], k.shape[1] if len(k.shape) == 4 else None)
            if (self.q_heads not in (None, nbh[0])) or (self.kv_heads not in (None, nbh[1])):
                raise self.error("q_num_heads / kv_num_heads disagree with the 4-D inputs' head counts")
        nb, hq, hkv, sq, skv, d, dv = attention_shapes(self, q.shape, k.shape, v.shape, self.q_heads, self.kv_heads)
        past = 0
        if (pk is None) != (pv is None):
            raise self.error("past_key and past_value must be given together")
        if pk is not None:
            if pk.dtype != q.dtype or pv.dtype != v.dtype:
                raise self.error("past_key must have Q's dtype and past_value V's dtype")
            if len(pk.shape) != 4 or len(pv.shape) != 4:
                raise self.error(f"past_key and past_value must be 4-D, got {pk.shape} and {pv.shape}")
            past = pk.shape[2]
            if tuple(pk.shape) != (nb, hkv, past, d) or tuple(pv.shape) != (nb, hkv, past, dv):
                raise self.error(f"past_key {pk.shape} / past_value {pv.shape} do not fit (B={nb}, Hkv={hkv}, P, "
                                 f"D={d} / Dv={dv})")
            if nonpad is not None:
                raise self.error("nonpad_kv_seqlen cannot be combined with past_key / past_value")
        t = past + skv
        if nonpad is not None:
            if _name(nonpad) != "int64" or tuple(nonpad.shape) != (nb,):
                raise self.error(f"nonpad_kv_seqlen must be int64 of shape ({nb},), got "
                                 f"{_name(nonpad)}{tuple(nonpad.shape)}")
        if mask is not None:
            if _name(mask) not in _MASK_DTYPES:
                raise self.unsupported(f"attn_mask has dtype {_name(mask)}")
            mask_strides(self, mask.shape, nb, hq, sq, t)
        if self.softmax_precision == 16 and _bf16() is None:
            raise self.unsupported("softmax_precision bfloat16 needs the ml_dtypes package")
        self.dims = (nb, hq, hkv, sq, skv, d, dv, past)
        rank3 = len(q.shape) == 3
        y_shape = (nb, sq, hq * dv) if rank3 else (nb, hq, sq, dv)
        return [TensorType(y_shape, q.dtype), TensorType((nb, hkv, t, d), q.dtype),
                TensorType((nb, hkv, t, dv), v.dtype), TensorType((nb, hq, sq, t), q.dtype)][:max(self.n_out, 1)]

    # --- the spec --------------------------------------------------------------------------------------------
    def _scale(self, d: int) -> float:
        return float(self.scale) if self.scale is not None else 1.0 / np.sqrt(d)

    def _to4(self, x, heads):
        """(B, S, H*D) -> (B, H, S, D) view (4-D returned as is)."""
        if x.ndim == 4:
            return x
        nb, s, hid = x.shape
        return x.reshape(nb, s, heads, hid // heads).transpose(0, 2, 1, 3)

    def _bias(self, mask, nonpad, nb, hq, sq, t, past, has_past, compute):
        """The additive bias broadcast to (B, Hq, Sq, T) (a broadcastable array) in ``compute``."""
        neg = compute(-np.inf)
        bias = np.zeros((1, 1, sq, t), compute)
        if mask is not None:
            m = mask
            if m.shape[-1] < t:
                pad = [(0, 0)] * (m.ndim - 1) + [(0, t - m.shape[-1])]
                m = np.pad(m, pad, constant_values=False if m.dtype == np.bool_ else -np.inf)
            m = np.where(m, compute(0), neg) if m.dtype == np.bool_ else m.astype(compute)
            bias = bias + m.reshape((1,) * (4 - m.ndim) + m.shape)
        i = np.arange(sq).reshape(sq, 1)
        j = np.arange(t).reshape(1, t)
        if has_past:
            off = np.full((1, 1, 1), past)
        elif nonpad is not None:
            off = (nonpad.astype(np.int64) - sq).reshape(-1, 1, 1)
        else:
            off = np.zeros((1, 1, 1), np.int64)
        pos = i + off  # (b or 1, sq, 1)
        allowed = np.ones(np.broadcast_shapes(pos.shape, j.shape), bool)
        if self.is_causal:
            allowed &= j <= pos
        if self.left >= 0:
            allowed &= pos - j <= self.left
        if self.right >= 0:
            allowed &= j - pos <= self.right
        if nonpad is not None:
            allowed &= j < nonpad.astype(np.int64).reshape(-1, 1, 1)
        if not allowed.all():
            bias = bias + np.where(allowed, compute(0), neg)[:, None]
        return bias

    def ref(self, *arrays):
        arrays = list(arrays) + [None] * (7 - len(arrays))
        q, k, v, mask, pk, pv, nonpad = arrays[:7]
        nb, hq, hkv, sq, skv, d, dv = attention_shapes(self, q.shape, k.shape, v.shape, self.q_heads, self.kv_heads)
        q4, k4, v4 = self._to4(q, hq), self._to4(k, hkv), self._to4(v, hkv)
        present_k = np.concatenate([pk, k4], axis=2) if pk is not None else np.ascontiguousarray(k4)
        present_v = np.concatenate([pv, v4], axis=2) if pv is not None else np.ascontiguousarray(v4)
        past = pk.shape[2] if pk is not None else 0
        t = past + skv
        dt = q.dtype
        compute = np.float64 if dt in (np.float32, np.float64) else dt.type
        bias = self._bias(mask, nonpad, nb, hq, sq, t, past, pk is not None, compute)
        grp = hq // hkv
        kr = np.repeat(present_k, grp, axis=1) if grp > 1 else present_k
        vr = np.repeat(present_v, grp, axis=1) if grp > 1 else present_v
        sm = None
        if self.softmax_precision is not None:
            sm = np.dtype(_PRECISION[self.softmax_precision] or _bf16())
            if compute is np.float64 and sm.itemsize >= 4:
                sm = None  # float32 / float64 softmax of float32 inputs: kept in float64
        y, qk = attention_reference(q4, kr, vr, bias, self._scale(d), self.softcap, self.qk_mode, sm, compute)
        y = y.astype(dt)
        if q.ndim == 3:
            y = y.transpose(0, 2, 1, 3).reshape(nb, sq, hq * dv)
        outs = [np.ascontiguousarray(y), present_k.astype(dt), present_v.astype(v.dtype),
                np.broadcast_to(qk, (nb, hq, sq, t)).astype(dt)]
        return outs[:max(self.n_out, 1)]

    # --- training -------------------------------------------------------------------------------------------
    def backward(self, grads, ins, outs, needs):
        """Recomputes the forward in float64 and backpropagates through it: with P = softmax(t), Y = P V,
        t = c + bias, c = softcap(s), s = scale Q K^T::

            dV = P^T dY,  dP = dY V^T,  dt = P (dP - rowsum(dP P)),  ds = dt (1 - tanh^2(s / softcap)),
            dQ = scale ds K,  dK = scale ds^T Q

        summed over the query heads of each kv head (GQA), split between past_* and K / V, plus the gradients of
        present_key / present_value and of qk_matmul_output (into s, c, t or P as its mode says); a float mask
        gets dt summed over its broadcast dims. Bool masks and nonpad_kv_seqlen take no gradient."""
        arrays = list(ins) + [None] * (7 - len(ins))
        q, k, v, mask, pk, pv, nonpad = arrays[:7]
        nb, hq, hkv, sq, skv, d, dv = attention_shapes(self, q.shape, k.shape, v.shape, self.q_heads, self.kv_heads)
        f = np.float64
        q4, k4, v4 = (self._to4(a.astype(f), h) for a, h in ((q, hq), (k, hkv), (v, hkv)))
        past = pk.shape[2] if pk is not None else 0
        kc = np.concatenate([pk.astype(f), k4], axis=2) if pk is not None else k4
        vc = np.concatenate([pv.astype(f), v4], axis=2) if pv is not None else v4
        t = past + skv
        grp = hq // hkv
        kr = np.repeat(kc, grp, axis=1) if grp > 1 else kc
        vr = np.repeat(vc, grp, axis=1) if grp > 1 else vc
        bias = self._bias(mask, nonpad, nb, hq, sq, t, past, pk is not None, f)
        scale = self._scale(d)
        with np.errstate(all="ignore"):
            s = np.matmul(q4, np.swapaxes(kr, -1, -2)) * scale
            c = self.softcap * np.tanh(s / self.softcap) if self.softcap > 0 else s
            tt = c + bias
            mx = np.max(tt, axis=-1, keepdims=True)
            e = np.exp(tt - np.where(np.isneginf(mx), 0.0, mx))
            tot = e.sum(axis=-1, keepdims=True)
            p = e / np.where(tot == 0, 1.0, tot)
            masked = np.isneginf(np.max(np.broadcast_to(bias, tt.shape), axis=-1, keepdims=True))
            p = np.where(masked, 0.0, p)
        g = [None if x is None else np.asarray(x, f) for x in list(grads) + [None] * (4 - len(grads))]
        if g[0] is not None:
            gy = g[0] if g[0].ndim == 4 else g[0].reshape(nb, sq, hq, dv).transpose(0, 2, 1, 3)
        else:
            gy = np.zeros((nb, hq, sq, dv))
        dvr = np.matmul(np.swapaxes(p, -1, -2), gy)
        dp = np.matmul(gy, np.swapaxes(vr, -1, -2))
        mode = self.qk_mode
        if g[3] is not None and mode == 3:
            dp = dp + g[3]
        dt = np.where(masked, 0.0, p * (dp - np.sum(dp * p, axis=-1, keepdims=True)))
        if g[3] is not None and mode == 2:
            dt = dt + g[3]
        dc = dt + (g[3] if g[3] is not None and mode in (0, 1) else 0.0)
        ds = dc * (1.0 - np.tanh(s / self.softcap) ** 2) if self.softcap > 0 else dc
        ds = np.where(np.isfinite(ds), ds, 0.0)
        dq4 = np.matmul(ds, kr) * scale
        dkr = np.matmul(np.swapaxes(ds, -1, -2), q4) * scale
        dkc = dkr.reshape(nb, hkv, grp, t, d).sum(axis=2)
        dvc = dvr.reshape(nb, hkv, grp, t, dv).sum(axis=2)
        if g[1] is not None:
            dkc = dkc + g[1]
        if g[2] is not None:
            dvc = dvc + g[2]

        def back3(x4, like):  # (B, H, S, D) -> the input's layout
            if like.ndim == 4:
                return np.ascontiguousarray(x4, np.float32)
            return np.ascontiguousarray(x4.transpose(0, 2, 1, 3).reshape(like.shape), np.float32)

        res = [None] * len(ins)
        if needs[0]:
            res[0] = back3(dq4, q)
        if needs[1]:
            res[1] = back3(dkc[:, :, past:], k)
        if needs[2]:
            res[2] = back3(dvc[:, :, past:], v)
        if len(ins) > 3 and mask is not None and needs[3] and mask.dtype != np.bool_:
            full = (1,) * (4 - mask.ndim) + tuple(mask.shape)
            dm = dt[..., :full[3]]
            axes = tuple(ax for ax in range(4) if full[ax] == 1 and dm.shape[ax] != 1)
            res[3] = dm.sum(axis=axes, keepdims=True).reshape(mask.shape).astype(np.float32)
        if len(ins) > 4 and pk is not None and needs[4]:
            res[4] = np.ascontiguousarray(dkc[:, :, :past], np.float32)
        if len(ins) > 5 and pv is not None and needs[5]:
            res[5] = np.ascontiguousarray(dvc[:, :, :past], np.float32)
        return res

    # --- kernels ---------------------------------------------------------------------------------------------
    def _fast(self, ins) -> bool:
        present = [t for t in ins[:3] + list(ins[4:6]) if t is not None]
        return (all(np.dtype(t.dtype) == np.float32 for t in present)
                and self.softmax_precision in (None, 1, 11)
                and all(d > 0 for d in self.dims[:4] + self.dims[5:7]) and self.dims[4] + self.dims[7] > 0)

    def build(self, ins, outs, consts):
        ins = list(ins) + [None] * (7 - len(ins))
        present = [bool(o) for o in self.node.outputs] + [False] * (4 - len(self.node.outputs))
        if not self._fast(ins):
            def run_ref(inputs, outputs, scratch):
                res = self.ref(*inputs)
                it = iter(outputs)
                for r, p in zip(res, present):
                    if p:
                        next(it)[...] = r
            return Kernel(run_ref, impl="numpy")
        return self._build_fast(ins, present, consts)

    def _build_fast(self, ins, present, consts):
        from ..kernels.cpu import attention as K

        nb, hq, hkv, sq, skv, d, dv, past = self.dims
        t = past + skv
        rank3 = len(ins[0].shape) == 3
        has_past = ins[4] is not None
        mask_t, nonpad_t = ins[3], ins[6]
        ms, mlen = ((0, 0, 0, 0), 0)
        if mask_t is not None:
            ms, mlen = mask_strides(self, mask_t.shape, nb, hq, sq, t)
        const_mask = None
        if mask_t is not None and consts[3] is not None:
            const_mask = self._mask_f32(consts[3])
        scale = self._scale(d)
        softcap = self.softcap
        qk_mode = self.qk_mode if present[3] else -1
        # output slots: Y, then the present outputs in order
        slots = {}
        n = 0
        for j, p in enumerate(present):
            if p:
                slots[j] = n
                n += 1
        threads_max = max(1, int(__import__("numba").config.NUMBA_NUM_THREADS))
        ntasks = nb * hq * -(-sq // K.QB)
        nslot = threads_max if K.use_decode(sq) else min(threads_max, ntasks)
        work_floats = K.attention_scratch_floats(nb, hkv, t, d, dv, nslot, sq)
        cat_floats = nb * hkv * t * (d + dv) if (has_past and not (present[1] and present[2])) else 0
        mask_floats = 0
        if mask_t is not None and const_mask is None and np.dtype(mask_t.dtype) != np.float32:
            mask_floats = int(np.prod(mask_t.shape, dtype=np.int64))
        scratch_bytes = 4 * (work_floats + cat_floats + mask_floats)
        if rank3:
            qs = (sq * hq * d, d, hq * d)
            kin = (skv * hkv * d, d, hkv * d)
            vin = (skv * hkv * dv, dv, hkv * dv)
            ys = (sq * hq * dv, dv, hq * dv)
        else:
            qs = (hq * sq * d, sq * d, d)
            kin = (hkv * skv * d, skv * d, d)
            vin = (hkv * skv * dv, skv * dv, dv)
            ys = (hq * sq * dv, sq * dv, dv)
        kcat = (hkv * t * d, t * d, d)
        vcat = (hkv * t * dv, t * dv, dv)
        causal, left, right = self.is_causal, self.left, self.right

        def run(inputs, outputs, scratch):
            inputs = list(inputs) + [None] * (7 - len(inputs))
            q, k, v = inputs[0], inputs[1], inputs[2]
            f = scratch[:scratch_bytes].view(np.float32) if scratch_bytes else np.empty(0, np.float32)
            work = f[:work_floats]
            rest = f[work_floats:]
            y = outputs[slots[0]]
            if has_past:
                pk, pv = inputs[4], inputs[5]
                if present[1] and present[2]:
                    kc, vc = outputs[slots[1]], outputs[slots[2]]
                else:
                    kc = rest[:nb * hkv * t * d].reshape(nb, hkv, t, d)
                    vc = rest[nb * hkv * t * d:cat_floats].reshape(nb, hkv, t, dv)
                    if present[1]:
                        kc = outputs[slots[1]]
                    if present[2]:
                        vc = outputs[slots[2]]
                kc[:, :, :past] = pk
                kc[:, :, past:] = self._to4(k, hkv)
                vc[:, :, :past] = pv
                vc[:, :, past:] = self._to4(v, hkv)
                ksrc, ks, vsrc, vs = kc.reshape(-1), kcat, vc.reshape(-1), vcat
            else:
                if present[1]:
                    outputs[slots[1]][...] = self._to4(k, hkv)
                if present[2]:
                    outputs[slots[2]][...] = self._to4(v, hkv)
                ksrc, ks, vsrc, vs = k.reshape(-1), kin, v.reshape(-1), vin
            mask = None
            if mask_t is not None:
                if const_mask is not None:
                    mask = const_mask
                elif inputs[3].dtype == np.float32:
                    mask = inputs[3].reshape(-1)
                else:
                    mask = rest[cat_floats:cat_floats + mask_floats]
                    self._mask_f32(inputs[3], mask)
            nonpad = inputs[6].reshape(-1) if nonpad_t is not None else None
            qk = outputs[slots[3]].reshape(-1) if present[3] else None
            K.attention_forward(q.reshape(-1), qs, ksrc, ks, vsrc, vs, y.reshape(-1), ys, nb, hq, hkv, sq, t, d, dv,
                                scale=scale, softcap=softcap, causal=causal, past=past if has_past else -1,
                                left=left, right=right, mask=mask, ms=ms, mlen=mlen, nonpad=nonpad, qk=qk,
                                qk_mode=qk_mode, work=work)

        return Kernel(run, scratch_bytes=scratch_bytes)

    @staticmethod
    def _mask_f32(m: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The additive float32 form of a mask (bool: True -> 0, False -> -inf), flat."""
        if out is None:
            out = np.empty(m.size, np.float32)
        if m.dtype == np.bool_:
            np.copyto(out, np.where(m.reshape(-1), np.float32(0.0), np.float32(-np.inf)))
        else:
            with np.errstate(all="ignore"):
                out[...] = m.reshape(-1).astype(np.float32)
        return out


# ------------------------------------------------------------------------------------------------------------
# onnxruntime contrib ops (domain com.microsoft): Attention (packed QKV weights) and MultiHeadAttention
# ------------------------------------------------------------------------------------------------------------
_MS = "com.microsoft"


def _mask_index_shape_ok(shape, nb, sq, t) -> bool:
    return tuple(shape) in ((nb,), (2 * nb,), (nb, t), (nb, sq, t))


def contrib_bias(mask, causal, nb, sq, t, past, filt, attn_bias):
    """The additive float32 bias (B, 1 or H, S, T) of the contrib ops, or None: onnxruntime's rules — a 1-D mask
    index (B,) holds each key sequence's length (keys past it get ``filt``), (2B,) the end then the start
    positions; a raw (B, T) or (B, S, T) mask gives ``filt`` where it is 0; ``unidirectional`` sets ``filt`` for
    keys ``j > past + i``; attention_bias is added on top. The masked scores are finite (``filt``, -10000 by
    default), so a fully masked row averages V, as onnxruntime does."""
    if mask is None and not causal and attn_bias is None:
        return None
    bias = np.zeros((nb, 1, sq, t), np.float32)
    f = np.float32(filt)
    if mask is not None:
        m = np.asarray(mask).astype(np.int64)
        j = np.arange(t)
        if m.ndim == 1:
            end = m[:nb].reshape(nb, 1)
            allowed = j[None, :] < end
            if m.shape[0] == 2 * nb:
                allowed &= j[None, :] >= m[nb:].reshape(nb, 1)
            bias[:] = np.where(allowed, np.float32(0), f)[:, None, None, :]
        elif m.ndim == 2:
            bias[:] = np.where(m > 0, np.float32(0), f)[:, None, None, :]
        else:
            bias[:] = np.where(m > 0, np.float32(0), f)[:, None, :, :]
    if causal:
        i = np.arange(sq).reshape(sq, 1)
        j = np.arange(t).reshape(1, t)
        bias[:, :, (j > past + i)] = f  # set, not added (onnxruntime's PrepareMask)
    if attn_bias is not None:
        bias = bias + attn_bias.astype(np.float32)
    return np.ascontiguousarray(bias, np.float32)


def _contrib_reference(q4, k4, v4, bias, scale):
    """Y (B, H, S, Dv) of 4-D q, k, v (float64) and an additive bias (or None), plain softmax."""
    s = np.matmul(q4, np.swapaxes(k4, -1, -2)) * scale
    if bias is not None:
        s = s + bias
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return np.matmul(e / e.sum(axis=-1, keepdims=True), v4)


def _check_attn_bias(op, t, nb, nh, sq, total):
    if t is None:
        return
    if len(t.shape) != 4 or t.shape[0] not in (1, nb) or t.shape[1] not in (1, nh) or tuple(t.shape[2:]) != (sq, total):
        raise op.error(f"attention_bias must be (B or 1, num_heads or 1, {sq}, {total}), got {tuple(t.shape)}")


def _fused(q, qs, k, ks, v, vs, y, ys, nb, nh, sq, t, d, dv, scale, bias):
    from ..kernels.cpu.attention import attention_forward

    ms, mlen = (0, 0, 0, 0), 0
    if bias is not None:
        b0, b1 = bias.shape[0], bias.shape[1]
        ms = (b1 * sq * t if b0 > 1 else 0, sq * t if b1 > 1 else 0, t, 1)
        mlen = t
    attention_forward(q, qs, k, ks, v, vs, y, ys, nb, nh, nh, sq, t, d, dv, scale=scale,
                      mask=None if bias is None else bias.reshape(-1), ms=ms, mlen=mlen)


class _ContribBase(Op):
    domain = _MS
    kernels = {"cpu": ("float32",)}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        nh = self.attr("num_heads")
        if nh is None or int(nh) <= 0:
            raise self.error("needs a positive num_heads attribute")
        self.nh = int(nh)
        self.scale_attr = self.attr("scale")
        self.filt = float(self.attr("mask_filter_value", -10000.0))
        self.causal = bool(int(self.attr("unidirectional", 0)))
        self.present = [bool(o) for o in node.outputs]

    def _inp(self, ins, i):
        return ins[i] if len(ins) > i else None

    def _scale(self, d):
        return float(self.scale_attr) if self.scale_attr else 1.0 / np.sqrt(d)

    def _check_mask(self, mask, nb, sq, t):
        if mask is None:
            return
        if np.dtype(mask.dtype) != np.int32:
            raise self.error(f"the mask must be int32, got {np.dtype(mask.dtype).name}")
        if not _mask_index_shape_ok(mask.shape, nb, sq, t):
            raise self.unsupported(f"a mask of shape {tuple(mask.shape)} (supported: ({nb},), ({2 * nb},), "
                                   f"({nb}, {t}), ({nb}, {sq}, {t}))")

    def _write(self, outputs, results):
        it = iter(outputs)
        for r, p in zip(results, self.present):
            if p:
                next(it)[...] = r


@register
class MsAttention(_ContribBase):
    """com.microsoft Attention: Q, K, V = input @ weights (+ bias), split by ``qkv_hidden_sizes`` (default: three
    equal parts) into ``num_heads`` heads; past (2, B, H, P, D) prepended to K and V (present: the result);
    masks as :func:`contrib_bias`; Y (B, S, Hv) with the heads concatenated. float32: the QKV projection on the
    GEMM kernels, then the fused attention kernel."""

    op_type = "Attention"
    num_inputs = (2, 7)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        sizes = self.attr("qkv_hidden_sizes")
        self.sizes = None if sizes is None else [int(s) for s in sizes]
        if int(self.attr("do_rotary", 0)):
            raise self.unsupported("do_rotary=1 is not supported")
        if int(self.attr("past_present_share_buffer", 0)):
            raise self.unsupported("past_present_share_buffer=1 is not supported")
        if len([i for i in node.inputs[6:7] if i]):
            raise self.unsupported("the past_sequence_length input (shared buffers) is not supported")

    def _dims(self, x_shape, w_shape):
        if len(x_shape) != 3 or len(w_shape) != 2 or w_shape[0] != x_shape[2]:
            raise self.error(f"input must be (B, S, D) and weights (D, Hq + Hk + Hv), got {tuple(x_shape)} and "
                             f"{tuple(w_shape)}")
        tot = w_shape[1]
        if self.sizes is None:
            if tot % 3:
                raise self.error(f"the weights' {tot} columns are not three equal parts (give qkv_hidden_sizes)")
            hq = hk = hv = tot // 3
        else:
            if len(self.sizes) != 3 or sum(self.sizes) != tot:
                raise self.error(f"qkv_hidden_sizes {self.sizes} must be three sizes summing to {tot}")
            hq, hk, hv = self.sizes
        if hq != hk or min(hq, hv) <= 0 or hq % self.nh or hv % self.nh:
            raise self.error(f"Q/K/V hidden sizes {hq}/{hk}/{hv} must be positive multiples of the {self.nh} heads "
                             "(Q and K equal)")
        return x_shape[0], x_shape[1], hq, hv

    def infer(self, ins, consts):
        x, w = ins[0], ins[1]
        bias, mask, past, ab = (self._inp(ins, i) for i in (2, 3, 4, 5))
        if np.dtype(x.dtype).name not in _FLOATS or w.dtype != x.dtype:
            raise self.unsupported(f"input / weights of dtype {_name(x)} / {_name(w)}")
        nb, sq, hq, hv = self._dims(x.shape, w.shape)
        d, dv = hq // self.nh, hv // self.nh
        if bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (hq * 2 + hv,)):
            raise self.error(f"bias must be ({2 * hq + hv},), got {tuple(bias.shape)}")
        p = 0
        if past is not None:
            if d != dv or tuple(past.shape[:3]) != (2, nb, self.nh) or len(past.shape) != 5 or past.shape[4] != d:
                raise self.error(f"past must be (2, {nb}, {self.nh}, P, {d}) (and Q, K, V of one hidden size), "
                                 f"got {tuple(past.shape)}")
            p = past.shape[3]
        t = p + sq
        self._check_mask(mask, nb, sq, t)
        _check_attn_bias(self, ab, nb, self.nh, sq, t)
        self.dims = (nb, sq, hq, hv, d, dv, p)
        outs = [TensorType((nb, sq, hv), x.dtype)]
        if len(self.node.outputs) > 1:
            if d != dv:
                raise self.error("the present output needs Q, K and V of one hidden size")
            outs.append(TensorType((2, nb, self.nh, t, d), x.dtype))
        return outs

    def ref(self, x, w, bias=None, mask=None, past=None, ab=None, *_):
        nb, sq, hq, hv, d, dv, p = self.dims
        f = np.float64
        qkv = x.astype(f).reshape(nb * sq, -1) @ w.astype(f)
        if bias is not None:
            qkv = qkv + bias.astype(f)
        nh = self.nh
        q4 = qkv[:, :hq].reshape(nb, sq, nh, d).transpose(0, 2, 1, 3)
        k4 = qkv[:, hq:2 * hq].reshape(nb, sq, nh, d).transpose(0, 2, 1, 3)
        v4 = qkv[:, 2 * hq:].reshape(nb, sq, nh, dv).transpose(0, 2, 1, 3)
        if past is not None:
            k4 = np.concatenate([past[0].astype(f), k4], axis=2)
            v4 = np.concatenate([past[1].astype(f), v4], axis=2)
        t = p + sq
        b = contrib_bias(mask, self.causal, nb, sq, t, p, self.filt, ab)
        y = _contrib_reference(q4, k4, v4, b, self._scale(d)).transpose(0, 2, 1, 3).reshape(nb, sq, hv)
        outs = [y.astype(x.dtype)]
        if len(self.node.outputs) > 1:
            outs.append(np.stack([k4, v4]).astype(x.dtype))
        return outs

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32 or any(t is not None and np.dtype(t.dtype) != np.float32
                                                        for t in (self._inp(ins, 2), self._inp(ins, 4),
                                                                  self._inp(ins, 5))):
            def run_ref(inputs, outputs, scratch):
                self._write(outputs, self.ref(*inputs))
            return Kernel(run_ref, impl="numpy")
        from ..kernels.cpu.gemm import PackedWeight, gemm

        nb, sq, hq, hv, d, dv, p = self.dims
        nh, tot = self.nh, 2 * hq + hv
        t = p + sq
        scale, causal, filt = self._scale(d), self.causal, self.filt
        packed = None
        if consts[1] is not None and (self._inp(ins, 2) is None or consts[2] is not None):
            b = consts[2] if self._inp(ins, 2) is not None else None
            packed = PackedWeight(consts[1], b, trans_b=False)
        has_past = self._inp(ins, 4) is not None
        want_present = len(self.present) > 1 and self.present[1]

        def run(inputs, outputs, scratch):
            inputs = list(inputs) + [None] * (7 - len(inputs))
            x, w, bias, mask, past, ab = inputs[:6]
            x2 = x.reshape(nb * sq, -1)
            qkv = np.empty((nb * sq, tot), np.float32)
            if packed is not None:
                packed(x2, qkv)
            else:
                gemm(x2, w, qkv)
                if bias is not None:
                    qkv += bias
            flat = qkv.reshape(-1)
            y = outputs[0]
            qs = (sq * tot, d, tot)
            if has_past or want_present:
                pres = outputs[1] if want_present else np.empty((2, nb, nh, t, d), np.float32)
                if has_past:
                    pres[:, :, :, :p] = past
                pres[0, :, :, p:] = qkv[:, hq:2 * hq].reshape(nb, sq, nh, d).transpose(0, 2, 1, 3)
                pres[1, :, :, p:] = qkv[:, 2 * hq:].reshape(nb, sq, nh, dv).transpose(0, 2, 1, 3)
                kf, vf = pres[0].reshape(-1), pres[1].reshape(-1)
                ks = vs = (nh * t * d, t * d, d)
            else:
                kf, vf = flat[hq:], flat[2 * hq:]
                ks, vs = (sq * tot, d, tot), (sq * tot, dv, tot)
            bias_arr = contrib_bias(mask, causal, nb, sq, t, p, filt, ab)
            _fused(flat, qs, kf, ks, vf, vs, y.reshape(-1), (sq * hv, dv, hv), nb, nh, sq, t, d, dv, scale, bias_arr)

        return Kernel(run)


@register
class MultiHeadAttention(_ContribBase):
    """com.microsoft MultiHeadAttention: query (B, S, Hq) with key / value (B, L, Hk / Hv) (plus ``bias``, the
    input projection's (Hq + Hk + Hv)), or packed QKV (B, S, H, 3, D), or packed KV (B, L, H, 2, D), or key / value
    already split into heads (B, H, L, D); past_key / past_value (B, H, P, D) prepended (present_*: the result);
    masks as :func:`contrib_bias`; output (B, S, Hv). float32: the fused attention kernel, every layout read in
    place through strides."""

    op_type = "MultiHeadAttention"
    num_inputs = (1, 10)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if len([i for i in node.inputs[8:10] if i]):
            raise self.unsupported("past_sequence_length / cache_indirection (beam search buffers) are not supported")
        if len(node.outputs) > 3 and node.outputs[3]:
            raise self.unsupported("the qk output is not supported")

    def _layout(self, q, k, v):
        """(kind, B, S, L, D, Dv): kind 'qkv' (packed QKV), 'kv' (packed KV), 'bnsh' (4-D key/value), '3d'."""
        nh = self.nh
        if len(q.shape) == 5:
            nb, sq, h, three, d = q.shape
            if h != nh or three != 3 or k is not None or v is not None:
                raise self.error(f"packed QKV must be (B, S, {nh}, 3, D) with no key / value, got {tuple(q.shape)}")
            return "qkv", nb, sq, sq, d, d
        if len(q.shape) != 3 or q.shape[2] % nh:
            raise self.error(f"query must be (B, S, num_heads * D), got {tuple(q.shape)}")
        nb, sq, hq = q.shape
        d = hq // nh
        if k is None:
            raise self.error("key is required unless the query is packed QKV")
        if len(k.shape) == 5:
            if v is not None or tuple(k.shape[:1]) != (nb,) or k.shape[2] != nh or k.shape[3] != 2 or k.shape[4] != d:
                raise self.error(f"packed KV must be ({nb}, L, {nh}, 2, {d}) with no value, got {tuple(k.shape)}")
            return "kv", nb, sq, k.shape[1], d, d
        if v is None:
            raise self.error("value is required")
        if len(k.shape) == 4:
            if len(v.shape) != 4 or k.shape[0] != nb or k.shape[1] != nh or k.shape[3] != d or \
                    tuple(v.shape[:3]) != tuple(k.shape[:3]):
                raise self.error(f"4-D key / value must be ({nb}, {nh}, L, {d}) / ({nb}, {nh}, L, Dv), got "
                                 f"{tuple(k.shape)} / {tuple(v.shape)}")
            return "bnsh", nb, sq, k.shape[2], d, v.shape[3]
        if len(k.shape) != 3 or len(v.shape) != 3 or k.shape[0] != nb or v.shape[0] != nb or k.shape[1] != v.shape[1] \
                or k.shape[2] != hq or v.shape[2] % nh:
            raise self.error(f"key / value must be ({nb}, L, {hq}) / ({nb}, L, num_heads * Dv), got {tuple(k.shape)} "
                             f"/ {tuple(v.shape)}")
        return "3d", nb, sq, k.shape[1], d, v.shape[2] // nh

    def infer(self, ins, consts):
        q, k, v, bias, mask, ab, pk, pv = (self._inp(ins, i) for i in range(8))
        if np.dtype(q.dtype).name not in _FLOATS:
            raise self.unsupported(f"query of dtype {_name(q)}")
        for t in (k, v, bias, ab, pk, pv):
            if t is not None and t.dtype != q.dtype:
                raise self.error("query, key, value, bias, attention_bias and the past must share a dtype")
        kind, nb, sq, lk, d, dv = self._layout(q, k, v)
        nh = self.nh
        if bias is not None:
            if kind != "3d":
                raise self.unsupported("bias with packed or 4-D key / value")
            if tuple(bias.shape) != (2 * nh * d + nh * dv,):
                raise self.error(f"bias must be ({2 * nh * d + nh * dv},), got {tuple(bias.shape)}")
        p = 0
        if (pk is None) != (pv is None):
            raise self.error("past_key and past_value must be given together")
        if pk is not None:
            if kind not in ("3d", "qkv", "kv"):
                raise self.unsupported("past_key / past_value with 4-D key / value")
            if len(pk.shape) != 4 or tuple(pk.shape[:2]) != (nb, nh) or pk.shape[3] != d or \
                    tuple(pv.shape) != (nb, nh, pk.shape[2], dv):
                raise self.error(f"past_key / past_value must be ({nb}, {nh}, P, {d}) / ({nb}, {nh}, P, {dv}), got "
                                 f"{tuple(pk.shape)} / {tuple(pv.shape)}")
            p = pk.shape[2]
        t = p + lk
        self._check_mask(mask, nb, sq, t)
        _check_attn_bias(self, ab, nb, nh, sq, t)
        self.dims = (kind, nb, sq, lk, d, dv, p)
        return [TensorType((nb, sq, nh * dv), q.dtype), TensorType((nb, nh, t, d), q.dtype),
                TensorType((nb, nh, t, dv), q.dtype)][:max(1, min(3, len(self.node.outputs)))]

    def _views(self, q, k, v, bias):
        """4-D (B, H, S|L, D) views of q, k, v (bias added)."""
        kind, nb, sq, lk, d, dv, p = self.dims
        nh = self.nh
        if kind == "qkv":
            return q[:, :, :, 0].transpose(0, 2, 1, 3), q[:, :, :, 1].transpose(0, 2, 1, 3), \
                q[:, :, :, 2].transpose(0, 2, 1, 3)
        q4 = q.reshape(nb, sq, nh, d).transpose(0, 2, 1, 3)
        if kind == "kv":
            return q4, k[:, :, :, 0].transpose(0, 2, 1, 3), k[:, :, :, 1].transpose(0, 2, 1, 3)
        if kind == "bnsh":
            return q4, k, v
        if bias is not None:
            q = q + bias[:nh * d]
            k = k + bias[nh * d:2 * nh * d]
            v = v + bias[2 * nh * d:]
            q4 = q.reshape(nb, sq, nh, d).transpose(0, 2, 1, 3)
        return q4, k.reshape(nb, lk, nh, d).transpose(0, 2, 1, 3), v.reshape(nb, lk, nh, dv).transpose(0, 2, 1, 3)

    def ref(self, q, k=None, v=None, bias=None, mask=None, ab=None, pk=None, pv=None, *_):
        kind, nb, sq, lk, d, dv, p = self.dims
        f = np.float64
        q4, k4, v4 = self._views(q.astype(f), None if k is None else k.astype(f), None if v is None else v.astype(f),
                                 None if bias is None else bias.astype(f))
        if pk is not None:
            k4 = np.concatenate([pk.astype(f), k4], axis=2)
            v4 = np.concatenate([pv.astype(f), v4], axis=2)
        t = p + lk
        b = contrib_bias(mask, self.causal, nb, sq, t, p, self.filt, ab)
        y = _contrib_reference(q4, k4, v4, b, self._scale(d)).transpose(0, 2, 1, 3).reshape(nb, sq, self.nh * dv)
        return [y.astype(q.dtype), np.ascontiguousarray(k4).astype(q.dtype), np.ascontiguousarray(v4).astype(q.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            def run_ref(inputs, outputs, scratch):
                self._write(outputs, self.ref(*inputs))
            return Kernel(run_ref, impl="numpy")
        kind, nb, sq, lk, d, dv, p = self.dims
        nh = self.nh
        t = p + lk
        scale, causal, filt = self._scale(d), self.causal, self.filt
        present = self.present + [False] * (3 - len(self.present))
        cache = p > 0 or present[1] or present[2]

        def run(inputs, outputs, scratch):
            inputs = list(inputs) + [None] * (8 - len(inputs))
            q, k, v, bias, mask, ab, pk, pv = inputs[:8]
            y = outputs[0]
            if kind == "3d" and bias is not None:
                q = q + bias[:nh * d]
                k = k + bias[nh * d:2 * nh * d]
                v = v + bias[2 * nh * d:]
            # strides (batch, head, seq) in floats, and the flat arrays, of every layout
            if kind == "qkv":
                st = (sq * nh * 3 * d, 3 * d, nh * 3 * d)
                qf, kf, vf = q.reshape(-1), q.reshape(-1)[d:], q.reshape(-1)[2 * d:]
                qs, ks, vs = st, st, st
            else:
                qf, qs = q.reshape(-1), (sq * nh * d, d, nh * d)
                if kind == "kv":
                    st = (lk * nh * 2 * d, 2 * d, nh * 2 * d)
                    kf, vf, ks, vs = k.reshape(-1), k.reshape(-1)[d:], st, st
                elif kind == "bnsh":
                    kf, vf = k.reshape(-1), v.reshape(-1)
                    ks, vs = (nh * lk * d, lk * d, d), (nh * lk * dv, lk * dv, dv)
                else:
                    kf, vf = k.reshape(-1), v.reshape(-1)
                    ks, vs = (lk * nh * d, d, nh * d), (lk * nh * dv, dv, nh * dv)
            if cache:
                it = iter(outputs[1:])
                pkey = next(it) if present[1] else np.empty((nb, nh, t, d), np.float32)
                pval = next(it) if present[2] else np.empty((nb, nh, t, dv), np.float32)
                if pk is not None:
                    pkey[:, :, :p] = pk
                    pval[:, :, :p] = pv
                pkey[:, :, p:] = np.lib.stride_tricks.as_strided(kf, (nb, nh, lk, d), tuple(4 * s for s in ks) + (4,),
                                                                 writeable=False)
                pval[:, :, p:] = np.lib.stride_tricks.as_strided(vf, (nb, nh, lk, dv), tuple(4 * s for s in vs) + (4,),
                                                                 writeable=False)
                kf, vf = pkey.reshape(-1), pval.reshape(-1)
                ks, vs = (nh * t * d, t * d, d), (nh * t * dv, t * dv, dv)
            bias_arr = contrib_bias(mask, causal, nb, sq, t, p, filt, ab)
            _fused(qf, qs, kf, ks, vf, vs, y.reshape(-1), (sq * nh * dv, dv, nh * dv), nb, nh, sq, t, d, dv, scale,
                   bias_arr)

        return Kernel(run)
