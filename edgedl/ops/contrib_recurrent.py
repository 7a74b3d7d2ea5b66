"""onnxruntime's quantized recurrent contrib op (domain ``com.microsoft``): DynamicQuantizeLSTM.

``onnxruntime.quantization.quantize_dynamic`` rewrites every LSTM with constant weights into it. Inputs
``X, W, R, B, sequence_lens, initial_h, initial_c, P, W_scale, W_zero_point, R_scale, R_zero_point``; outputs
``Y, Y_h, Y_c``; attributes those of LSTM (``activations``, ``activation_alpha`` / ``activation_beta``, ``clip``,
``direction``, ``hidden_size``, ``input_forget``; no ``layout``: the sequence is always (T, B, I)). Shapes:

* W (D, I, 4*H) and R (D, H, 4*H), int8 or uint8: the LSTM weights TRANSPOSED (gate order i, o, f, c along
  the last axis);
* W_scale / W_zero_point (D,) (per tensor of each direction) or (D, 4*H) (per output channel), float32 and
  W's dtype; R_scale / R_zero_point likewise for R;
* everything else as LSTM (:mod:`edgedl.ops.recurrent`): X (T, B, I) float32, B (D, 8*H), P (D, 3*H) ...

Semantics, onnxruntime's arithmetic for the recurrence: at every step, ``h_prev`` (per batch row) is quantized
to uint8 over its range extended to 0 (``scale = (max - min) / 255``, zero point rounded half to even, values
``clamp(rint(h / scale) + zp, 0, 255)``), multiplied by the integer R in exact int32 arithmetic, and
``(h_scale * R_scale[col]) * int32`` is added to the gates. The input projection ``X W^T + b`` runs in float on
the dequantized W ``((W[d] - W_zero_point[d]) * W_scale[d])^T`` (onnxruntime quantizes X too). Against
onnxruntime the outputs differ by X's quantization error (onnxruntime quantizes the whole batch's h per step,
edgedl each row: the same for batch 1); against the float LSTM on dequantized weights by h's quantization
error (max |diff| ~0.03 on random LSTMs, tests/models/test_contrib_recurrent.py). onnxruntime's kernel also
requires zero weight zero points; any zero point is accepted here.

Implementation: the float LSTM of :mod:`edgedl.ops.recurrent` (its packed-GEMM input projection and Numba time
loop, ``Kernel.bind`` included) with the recurrent product replaced by :func:`edgedl.kernels.cpu.recurrent.
_qgemv_acc` (R^T packed once for the byte dot products of :mod:`edgedl.kernels.cpu.gemv_i8`: ``vpdpbusd``,
``sdot``). The weights are prepared once at build time when they are constants (the usual case:
initializers), else on every call. ``ref`` is a float64 numpy transcription of the same arithmetic (h
quantized from its float32 value).
"""
from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from ..registry import Kernel, Op, register
from .recurrent import LSTM

MS = "com.microsoft"
_QTYPES = ("int8", "uint8")
#: the LSTM attributes onnxruntime's DynamicQuantizeLSTM defines
_LSTM_ATTRS = ("activations", "activation_alpha", "activation_beta", "clip", "direction", "hidden_size",
               "input_forget")


def dequantize_weight(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """(D, K, G) quantized weight with (D,) or (D, G) scale / zero point -> the float32 (D, G, K) LSTM weight."""
    q = np.asarray(q)
    scale = np.asarray(scale, np.float32)
    zp = np.asarray(zero_point)
    if scale.ndim == 1:
        scale = scale[:, None, None]
        zp = zp[:, None, None]
    else:
        scale = scale[:, None, :]
        zp = zp[:, None, :]
    w = (q.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale
    return np.ascontiguousarray(w.transpose(0, 2, 1))


def per_column(v, g: int, dtype) -> np.ndarray:
    """A (D,) per-direction or (D, G) per-column scale or zero point as (D, G) of ``dtype``."""
    v = np.asarray(v).astype(dtype)
    return np.repeat(v[:, None], g, axis=1) if v.ndim == 1 else v


def signed_weight(q: np.ndarray, zero_point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D, K, G) int8 / uint8 weight and its (D,) or (D, G) zero point -> the int8 weight and the (D, G) int32
    zero point with the same differences ``q - zp`` (uint8 shifted by -128)."""
    q = np.asarray(q)
    zp = per_column(zero_point, q.shape[2], np.int32)
    if q.dtype == np.uint8:
        return (q.astype(np.int16) - 128).astype(np.int8), zp - 128
    return q.astype(np.int8), zp


def pack_recurrence(r: np.ndarray, r_scale: np.ndarray, r_zero_point: np.ndarray) -> tuple:
    """The quantized R (D, H, 4H) as the recurrence kernel's ``qp`` tuple (see ``_qgemv_acc``)."""
    from ..kernels.cpu import gemv_i8

    rq, rz = signed_weight(r, r_zero_point)
    d, _, g = rq.shape
    packs = [gemv_i8.pack(rq[k]) for k in range(d)]
    kq, nblk = packs[0][2], packs[0][3]
    npad = packs[0][1].shape[0]
    wp = np.stack([p[0] for p in packs])
    cs = np.stack([p[1] for p in packs])
    rzp = np.zeros((d, npad), np.int32)
    rzp[:, :g] = rz
    rs = np.zeros((d, npad), np.float32)
    rs[:, :g] = per_column(r_scale, g, np.float32)
    return (wp, cs, rzp, rs, kq, nblk, gemv_i8.KIND)


def _padded(v: np.ndarray, n: int, dtype) -> np.ndarray:
    out = np.zeros(n, dtype)
    out[:v.size] = v.reshape(-1)
    return out


def pack_projection(w: np.ndarray, w_scale: np.ndarray, w_zero_point: np.ndarray, bias: np.ndarray) -> tuple:
    """The quantized W (D, I, 4H) of both directions as one (I, D*4H) weight, the input projection kernel's
    ``qw`` tuple (see ``project_quantized``); ``bias`` (D*4H,) the folded W and R biases."""
    from ..kernels.cpu import gemv_i8

    wq, wz = signed_weight(w, w_zero_point)
    d, isz, g = wq.shape
    stacked = np.ascontiguousarray(wq.transpose(1, 0, 2).reshape(isz, d * g))
    wp, cs, kq, nblk = gemv_i8.pack(stacked)
    npad = cs.shape[0]
    ws = per_column(w_scale, g, np.float32)
    return (wp, cs, _padded(wz, npad, np.int32), _padded(ws, npad, np.float32), _padded(bias, npad, np.float32),
            kq, nblk, gemv_i8.KIND)


def quantize_rows_ref(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, K) float -> (uint8 values as int64, float32 scales (B,), int64 zero points (B,)): onnxruntime's
    dynamic quantization of each row, from the row's float32 value."""
    h = np.asarray(h, np.float32)
    lo = np.minimum(h.min(axis=1), np.float32(0))
    hi = np.maximum(h.max(axis=1), np.float32(0))
    scale = np.where(hi == lo, np.float32(1), ((hi - lo) / np.float32(255)).astype(np.float32)).astype(np.float32)
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255)).astype(np.int64)
    q = np.clip(np.rint(h / scale[:, None]) + zp[:, None].astype(np.float32), 0, 255).astype(np.int64)
    return q, scale, zp


class QuantRecurrenceLSTM(LSTM):
    """The LSTM of DynamicQuantizeLSTM: inputs as LSTM's plus ``W_scale, W_zero_point, R_scale,
    R_zero_point`` (W and R quantized, transposed), the recurrent product on quantized h (module docstring)."""

    @property
    def _weight_idx(self) -> tuple[int, ...]:
        return (1, 2, 3, 7, 8, 9, 10, 11)

    def _weights_from(self, src: list) -> dict:
        d_n, hsz = self.num_dirs, self.dims[3]
        peep = np.zeros((d_n, 3, hsz), np.float32)
        if src[7] is not None:
            peep = np.ascontiguousarray(src[7], np.float32).reshape(d_n, 3, hsz)
        bias = np.zeros(d_n * 4 * hsz, np.float32)
        if src[3] is not None:
            bb = np.asarray(src[3], np.float32).reshape(d_n, 2, 4 * hsz)
            bias = (bb[:, 0] + bb[:, 1]).reshape(-1)
        return dict(packed=None, rt=np.zeros((d_n, 1, 1), np.float32), peep=peep,
                    qw=pack_projection(src[1], src[8], src[9], bias),
                    qp=pack_recurrence(src[2], src[10], src[11]))

    def ref_quantized(self, x, w, r, b, lens, h0, c0, p, ws, wz, rs, rz):
        """The spec: LSTM.ref on the quantized arithmetic. The input projection (X quantized as one tensor,
        exact integer products, scaled, plus the biases) is computed here and fed to LSTM.ref as its X, with a
        0/1 selection matrix per direction as W; the recurrent product is :meth:`_cell_ref`'s."""
        d_n, g = self.num_dirs, int(np.asarray(r).shape[2])
        x = np.asarray(x, np.float32)
        tlen, bsz, isz = x.shape
        wq, wzp = signed_weight(w, wz)
        wsc = per_column(ws, g, np.float32)
        q, xs, xzp = quantize_rows_ref(x.reshape(1, -1))
        xq = q.reshape(tlen * bsz, isz) - xzp[0]
        bias = np.zeros((d_n, 2, g)) if b is None else np.asarray(b, np.float64).reshape(d_n, 2, g)
        proj = np.zeros((tlen * bsz, d_n * g))
        for d in range(d_n):
            dots = xq @ (wq[d].astype(np.int64) - wzp[d][None, :].astype(np.int64))
            mult = (xs[0] * wsc[d]).astype(np.float32).astype(np.float64)
            proj[:, d * g:(d + 1) * g] = mult * dots + bias[d, 0] + bias[d, 1]
        select = np.zeros((d_n, g, d_n * g), np.float32)
        for d in range(d_n):
            select[d, :, d * g:(d + 1) * g] = np.eye(g, dtype=np.float32)
        rq, rzp = signed_weight(r, rz)
        self._ref_r = (rq.astype(np.int64) - rzp[:, None, :].astype(np.int64), per_column(rs, g, np.float32))
        try:
            rf = np.zeros((d_n, g, rq.shape[1]), np.float32)  # the recurrent product is _cell_ref's
            return self.ref(proj.reshape(tlen, bsz, d_n * g), select, rf, None, lens, h0, c0, p)
        finally:
            self._ref_r = None

    #: (R - zp as int64 (D, H, 4H), scales (D, 4H)) while ref_quantized runs; None: the plain LSTM
    _ref_r = None

    def _cell_ref(self, d, xt, h, c, w, r, wb, rb, p):
        if self._ref_r is None:
            return super()._cell_ref(d, xt, h, c, w, r, wb, rb, p)
        rdiff, rsc = self._ref_r
        q, hs, zp = quantize_rows_ref(h)
        dots = (q - zp[:, None]) @ rdiff[d]  # (B, 4H) exact
        rec = (hs[:, None] * rsc[d][None, :]).astype(np.float32).astype(np.float64) * dots
        return super()._cell_ref(d, xt, h, c, w, r, wb, rb + rec, p)  # r: zeros (ref_quantized)


@register
class DynamicQuantizeLSTM(Op):
    """com.microsoft DynamicQuantizeLSTM: LSTM with int8 / uint8 W and R (see the module docstring)."""

    op_type = "DynamicQuantizeLSTM"
    domain = MS
    num_inputs = (12, 12)
    kernels = {"cpu": ("float32",)}

    def __init__(self, node, opset):
        super().__init__(node, opset)
        attrs = {k: v for k, v in node.attrs.items() if k in _LSTM_ATTRS}
        # the LSTM over the 12 inputs; its errors name this node
        inner = Node(node.op_type, node.name, list(node.inputs[:8]) + [""] * (8 - len(node.inputs[:8])),
                     list(node.outputs), attrs, "")
        self.lstm = QuantRecurrenceLSTM(inner, max(int(opset), 7))
        self.lstm.layout = 0
    # --- shapes -------------------------------------------------------------------------------------------------
    def _check_quant(self, ins) -> None:
        x, w, r = ins[0], ins[1], ins[2]
        if np.dtype(x.dtype).name != "float32":
            raise self.unsupported(f"X has dtype {np.dtype(x.dtype).name}; DynamicQuantizeLSTM takes float32")
        for name, t in (("W", w), ("R", r)):
            if np.dtype(t.dtype).name not in _QTYPES:
                raise self.error(f"{name} must be int8 or uint8, got {np.dtype(t.dtype).name}")
            if len(t.shape) != 3:
                raise self.error(f"{name} must be 3-D, got shape {tuple(t.shape)}")
        d = self.lstm.num_dirs
        if r.shape[0] != d or r.shape[2] != 4 * r.shape[1]:
            raise self.error(f"R must have shape ({d}, hidden_size, 4*hidden_size), got {tuple(r.shape)}")
        g = int(r.shape[2])
        if len(x.shape) != 3:
            raise self.error(f"X must be 3-D, got shape {tuple(x.shape)}")
        if tuple(w.shape) != (d, x.shape[2], g):
            raise self.error(f"W must have shape {(d, x.shape[2], g)} (directions, input_size, 4*hidden_size), "
                             f"got {tuple(w.shape)}")
        for k, (sname, zname, q) in enumerate((("W_scale", "W_zero_point", w), ("R_scale", "R_zero_point", r))):
            s, z = ins[8 + 2 * k], ins[9 + 2 * k]
            if s is None or z is None:
                raise self.error(f"{sname} and {zname} are required")
            if np.dtype(s.dtype).name != "float32":
                raise self.error(f"{sname} must be float32, got {np.dtype(s.dtype).name}")
            if np.dtype(z.dtype) != np.dtype(q.dtype):
                raise self.error(f"{zname} must have the dtype of its weight ({np.dtype(q.dtype).name}), "
                                 f"got {np.dtype(z.dtype).name}")
            if tuple(s.shape) not in ((d,), (d, g)):
                raise self.error(f"{sname} must have shape ({d},) or ({d}, {g}), got {tuple(s.shape)}")
            if tuple(z.shape) != tuple(s.shape):
                raise self.error(f"{zname} must have the shape of {sname} {tuple(s.shape)}, got {tuple(z.shape)}")

    def _float_types(self, ins) -> list:
        """The inner LSTM's input types: W and R as the float32 (D, 4H, I) / (D, 4H, H) weights."""
        w, r = ins[1], ins[2]
        return [ins[0], TensorType((w.shape[0], w.shape[2], w.shape[1]), np.float32),
                TensorType((r.shape[0], r.shape[2], r.shape[1]), np.float32)] + list(ins[3:8])

    def infer(self, ins, consts):
        ins = list(ins) + [None] * (12 - len(ins))
        consts = list(consts) + [None] * (12 - len(consts))
        self._check_quant(ins)
        return self.lstm.infer(self._float_types(ins), [None] * 4 + [consts[4]] + [None] * 3)

    # --- the spec -----------------------------------------------------------------------------------------------
    def ref(self, x, w, r, b=None, lens=None, h0=None, c0=None, p=None, ws=None, wz=None, rs=None, rz=None):
        return self.lstm.ref_quantized(x, w, r, b, lens, h0, c0, p, ws, wz, rs, rz)

    # --- kernel -------------------------------------------------------------------------------------------------
    def build(self, ins, outs, consts):
        ins = list(ins) + [None] * (12 - len(ins))
        consts = list(consts) + [None] * (12 - len(consts))
        return self.lstm.build(self._float_types(ins) + list(ins[8:12]), outs, consts)
