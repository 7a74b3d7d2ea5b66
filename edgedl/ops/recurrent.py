"""Recurrent layers: RNN, GRU and LSTM (every opset: 1, GRU 3, 7, 14 with ``layout``, 22).

Inputs ``X, W, R, B, sequence_lens, initial_h`` (LSTM also ``initial_c, P``); outputs ``Y, Y_h`` (LSTM also
``Y_c``), every output optional. Shapes (layout 0 / layout 1, opset 14+):

* X (T, B, I) / (B, T, I); W (D, G*H, I); R (D, G*H, H); B (D, 2*G*H) = [Wb | Rb]; P (D, 3*H) = [Pi|Po|Pf];
  sequence_lens (B,) int32; initial_h / initial_c / Y_h / Y_c (D, B, H) / (B, D, H);
  Y (T, D, B, H) / (B, T, D, H). G = 1 (RNN), 3 (GRU, gates z r h), 4 (LSTM, gates i o f c); D = 2 for
  ``direction="bidirectional"`` (the second direction runs reversed), else 1.

Formulas, clip and the sequence-length rules are in :mod:`edgedl.kernels.cpu.recurrent`. Attributes:
``activations`` (1 / 2 / 3 names per direction, case-insensitive: Sigmoid, Tanh, Relu, HardSigmoid, LeakyRelu,
ThresholdedRelu, ScaledTanh, Affine, Elu, Softsign, Softplus), ``activation_alpha`` / ``activation_beta``
consumed in order by the activations that take them (as onnxruntime), defaults those of the ONNX ops
(LeakyRelu 0.01, HardSigmoid 0.2 / 0.5, Elu 1, ThresholdedRelu 1, Affine 1 / 0, ScaledTanh 1 / 1; note that
onnxruntime uses 0 for the last three); ``clip`` (> 0; bounds every activation input but LSTM's h(C), as
onnxruntime); GRU ``linear_before_reset`` (opset 3+); LSTM ``input_forget`` (f = 1 - i); ``layout``
(opset 14+; onnxruntime rejects 1, implemented here); ``output_sequence`` (opset 1) only says whether Y is
wanted, which the node's outputs already say. A row with length 0 gives zero Y_h / Y_c (onnxruntime).

float32 runs Numba: the input projection of the whole sequence (both directions) is one GEMM on the weights
packed at build time (:class:`~edgedl.kernels.cpu.gemm.PackedWeight`, biases folded in), then one fused
kernel runs the time loop. ``Kernel.bind`` prepares both calls once, so a streaming model (seq_len 1, state
fed back) costs two compiled calls per frame. Other dtypes run the numpy reference (float64 inside).

Backward (training, float32): the forward is recomputed recording every step, then backprop through time
(:func:`~edgedl.kernels.cpu.recurrent.lstm_backward` ...) gives the gate gradients, and GEMMs give
dX, dW, dR; dB, dP, d initial_h and d initial_c come from the same pass.
"""
from __future__ import annotations

import functools
import math
from typing import ClassVar

import numpy as np

from ..errors import EdgeDLError
from ..ir import MAX_TENSOR_ELEMENTS, TensorType
from ..kernels.cpu import recurrent as K
from ..registry import Kernel, Op, ref_kernel, register

_FLOATS = ("float16", "float32", "float64", "bfloat16")
_DIRECTIONS = ("forward", "reverse", "bidirectional")
_E1 = np.zeros(0, np.int32)
_E3 = np.zeros((0, 0, 0), np.float32)
_E4 = np.zeros((0, 0, 0, 0), np.float32)


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


# --- numpy reference activations (float64) ---------------------------------------------------------------------
def _act_ref(code: int, x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        if code == K.A_SIGMOID:
            return 0.5 * (1.0 + np.tanh(0.5 * x))
        if code == K.A_TANH:
            return np.tanh(x)
        if code == K.A_RELU:
            return np.where(x < 0, 0.0, x)
        if code == K.A_HARD_SIGMOID:
            return np.clip(alpha * x + beta, 0.0, 1.0)
        if code == K.A_LEAKY_RELU:
            return np.where(x < 0, alpha * x, x)
        if code == K.A_THRESHOLDED_RELU:
            return np.where(x > alpha, x, 0.0)
        if code == K.A_SCALED_TANH:
            return alpha * np.tanh(beta * x)
        if code == K.A_AFFINE:
            return alpha * x + beta
        if code == K.A_ELU:
            return np.where(x < 0, alpha * np.expm1(np.minimum(x, 0.0)), x)
        if code == K.A_SOFTSIGN:
            return x / (1.0 + np.abs(x))
        if code == K.A_SOFTPLUS:
            return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))
    raise ValueError(f"unknown activation code {code}")


class _Recurrent(Op):
    """What RNN, GRU and LSTM share: attributes, shape rule, reference driver, kernels, backward."""

    kernels = {"cpu": ("float32",)}
    #: gates per direction, activations per direction, their defaults, outputs
    gates: ClassVar[int] = 1
    default_acts: ClassVar[tuple[str, ...]] = ("Tanh",)
    max_outputs: ClassVar[int] = 2

    def __init__(self, node, opset):
        super().__init__(node, opset)
        n_out = len(node.outputs)
        if n_out > self.max_outputs:
            raise self.error(f"has {n_out} outputs; {self.op_type} defines at most {self.max_outputs}")
        self.present = [bool(o) for o in node.outputs]
        direction = self.attr("direction", "forward")
        if direction not in _DIRECTIONS:
            raise self.error(f"direction must be one of {', '.join(_DIRECTIONS)}, got {direction!r}")
        self.direction = direction
        self.num_dirs = 2 if direction == "bidirectional" else 1
        hidden = self.attr("hidden_size")
        self.hidden = None if hidden is None else int(hidden)
        if self.hidden is not None and self.hidden < 1:
            raise self.error(f"hidden_size must be positive, got {self.hidden}")
        clip = self.attr("clip")
        self.clip = None if clip is None else float(clip)
        if self.clip is not None and not self.clip > 0:
            raise self.error(f"clip must be positive, got {self.clip}")
        self.layout = int(self.attr("layout", 0)) if opset >= 14 else 0
        if self.layout not in (0, 1):
            raise self.error(f"layout must be 0 or 1, got {self.layout}")
        self.acts = self._parse_activations()
        self.flag = 0
        self._view_cache = None
        self._param_cache: dict = {}

    def _parse_activations(self) -> list[list[tuple[int, float, float]]]:
        """Per direction, (code, alpha, beta) of each activation; alphas / betas consumed in order by the
        activations that take them, the ONNX defaults once they run out."""
        per = len(self.default_acts)
        names = self.attr("activations")
        if names is None:
            names = list(self.default_acts) * self.num_dirs
        names = [str(n) for n in names]
        if self.op_type == "RNN" and self.num_dirs == 1 and len(names) == 2:
            names = names[:1]  # opset 7's default list holds two entries for any direction (onnxruntime)
        if len(names) != per * self.num_dirs:
            raise self.error(f"activations must list {per * self.num_dirs} functions for direction "
                             f"{self.direction!r}, got {len(names)}: {names}")
        alphas = [float(v) for v in (self.attr("activation_alpha") or [])]
        betas = [float(v) for v in (self.attr("activation_beta") or [])]
        out = []
        for name in names:
            entry = K.ACTIVATIONS.get(name.lower())
            if entry is None:
                raise self.unsupported(f"activation {name!r} is not one of {', '.join(sorted(K.ACTIVATIONS))}")
            code, use_a, use_b, da, db = entry
            alpha = alphas.pop(0) if use_a and alphas else da
            beta = betas.pop(0) if use_b and betas else db
            out.append((code, alpha, beta))
        return [out[k * per:(k + 1) * per] for k in range(self.num_dirs)]

    def reverse(self, d: int) -> bool:
        return self.direction == "reverse" or d == 1

    def fast(self, d: int) -> bool:
        return [c for c, _, _ in self.acts[d]] == [K.ACTIVATIONS[n.lower()][0] for n in self.default_acts]

    # --- shapes -------------------------------------------------------------------------------------------------
    @property
    def _in_names(self) -> tuple[str, ...]:
        return ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")[:self.num_inputs[1]]

    def infer(self, ins, consts):
        ins = list(ins) + [None] * (self.num_inputs[1] - len(ins))
        consts = list(consts) + [None] * (self.num_inputs[1] - len(consts))
        x, r = ins[0], ins[2]
        for name, t in zip(self._in_names, ins):
            if t is not None and name != "sequence_lens" and np.dtype(t.dtype).name not in _FLOATS:
                raise self.unsupported(f"{name} has dtype {np.dtype(t.dtype).name}; supported: {', '.join(_FLOATS)}")
        floats = [t for n, t in zip(self._in_names, ins) if t is not None and n != "sequence_lens"]
        if len({np.dtype(t.dtype) for t in floats}) > 1:
            raise self.error("X, W, R, B, initial states and P must share one dtype, got "
                             + ", ".join(f"{n}: {np.dtype(t.dtype).name}" for n, t in zip(self._in_names, ins)
                                         if t is not None and n != "sequence_lens"))
        if len(x.shape) != 3:
            raise self.error(f"X must be 3-D, got shape {tuple(x.shape)}")
        if self.layout:
            bsz, tlen, isz = x.shape
        else:
            tlen, bsz, isz = x.shape
        d, g = self.num_dirs, self.gates
        if len(r.shape) != 3 or r.shape[0] != d or r.shape[1] != g * r.shape[2]:
            raise self.error(f"R must have shape ({d}, {g}*hidden_size, hidden_size), got {tuple(r.shape)}")
        hsz = int(r.shape[2])
        if self.hidden is not None and hsz != self.hidden:
            raise self.error(f"hidden_size is {self.hidden} but R has shape {tuple(r.shape)}")
        if hsz < 1:
            raise self.error("hidden_size must be positive (R is empty)")
        want = {"W": (d, g * hsz, isz), "B": (d, 2 * g * hsz), "sequence_lens": (bsz,),
                "initial_h": (bsz, d, hsz) if self.layout else (d, bsz, hsz), "P": (d, 3 * hsz)}
        want["initial_c"] = want["initial_h"]
        for name, t in zip(self._in_names, ins):
            if t is None or name not in want:
                continue
            if tuple(t.shape) != want[name]:
                raise self.error(f"{name} must have shape {want[name]}, got {tuple(t.shape)} (X {tuple(x.shape)}, "
                                 f"layout {self.layout}, hidden_size {hsz}, {d} direction(s))")
        lens = ins[4]
        if lens is not None and np.dtype(lens.dtype).name not in ("int32", "int64"):
            raise self.error(f"sequence_lens must be int32, got {np.dtype(lens.dtype).name}")
        if lens is not None and consts[4] is not None:
            self._check_lens(np.asarray(consts[4]), tlen)
        self.dims = (int(tlen), int(bsz), int(isz), hsz)
        self._view_cache, self._param_cache = None, {}
        dtype = x.dtype
        y = (bsz, tlen, d, hsz) if self.layout else (tlen, d, bsz, hsz)
        state = (bsz, d, hsz) if self.layout else (d, bsz, hsz)
        outs = [TensorType(y, dtype)] + [TensorType(state, dtype)] * (self.max_outputs - 1)
        return outs[:max(len(self.node.outputs), 1)]

    def _check_lens(self, lens: np.ndarray, tlen: int) -> None:
        bad = np.flatnonzero((lens < 0) | (lens > tlen))
        if bad.size:
            b = int(bad[0])
            raise self.error(f"sequence_lens[{b}] = {int(lens[b])} is outside [0, {tlen}] (seq_length)",
                             cls=EdgeDLError)

    # --- the spec -----------------------------------------------------------------------------------------------
    def _cell_ref(self, d, xt, h, c, w, r, wb, rb, p):
        """One step for every batch row in float64: (new h, new c). Overridden per op."""
        raise NotImplementedError

    def _clip(self, v: np.ndarray) -> np.ndarray:
        return v if self.clip is None else np.clip(v, -self.clip, self.clip)

    def ref(self, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
        floats = [a for a in (x, w, r, b, h0, c0, p) if a is not None]
        out_dtype = np.result_type(*[a.dtype for a in floats])
        f64 = np.float64
        xs = x.astype(f64)
        if self.layout:
            xs = xs.swapaxes(0, 1)
            h0 = None if h0 is None else h0.swapaxes(0, 1)
            c0 = None if c0 is None else c0.swapaxes(0, 1)
        tlen, bsz, _ = xs.shape
        d_n, g, hsz = self.num_dirs, self.gates, r.shape[2]
        if lens is None:
            lens = np.full(bsz, tlen, np.int64)
        else:
            lens = np.asarray(lens).astype(np.int64).reshape(-1)
            self._check_lens(lens, tlen)
        y = np.zeros((tlen, d_n, bsz, hsz), f64)
        yh = np.zeros((d_n, bsz, hsz), f64)
        yc = np.zeros((d_n, bsz, hsz), f64)
        rows = np.arange(bsz)
        for d in range(d_n):
            wd, rd = w[d].astype(f64), r[d].astype(f64)
            if b is None:
                wb = rb = np.zeros(g * hsz, f64)
            else:
                wb, rb = b[d, :g * hsz].astype(f64), b[d, g * hsz:].astype(f64)
            pd = np.zeros(3 * hsz, f64) if p is None else p[d].astype(f64)
            h = np.zeros((bsz, hsz), f64) if h0 is None else h0[d].astype(f64)
            c = np.zeros((bsz, hsz), f64) if c0 is None else c0[d].astype(f64)
            for s in range(int(lens.max()) if bsz else 0):
                active = s < lens
                t = np.where(active, (lens - 1 - s) if self.reverse(d) else s, 0)
                hn, cn = self._cell_ref(d, xs[t, rows], h, c, wd, rd, wb, rb, pd)
                h = np.where(active[:, None], hn, h)
                c = np.where(active[:, None], cn, c)
                y[t[active], d, rows[active]] = hn[active]
            yh[d] = np.where(lens[:, None] > 0, h, 0.0)
            yc[d] = np.where(lens[:, None] > 0, c, 0.0)
        if self.layout:
            y, yh, yc = y.transpose(2, 0, 1, 3), yh.swapaxes(0, 1), yc.swapaxes(0, 1)
        outs = [np.ascontiguousarray(v, out_dtype) for v in (y, yh, yc)[:self.max_outputs]]
        return outs[:max(len(self.node.outputs), 1)]

    # --- kernels ------------------------------------------------------------------------------------------------
    def _prepare(self, w, r, b, p) -> dict:
        """The weights as the kernels want them: W of both directions stacked and packed with the foldable
        biases, R^T per direction, GRU's Rbh (linear_before_reset), LSTM's peepholes (D, 3, H)."""
        from ..kernels.cpu.gemm import PackedWeight

        d_n, g = self.num_dirs, self.gates
        hsz = self.dims[3] if r is None else r.shape[2]
        gh = g * hsz
        wst = np.ascontiguousarray(w, np.float32).reshape(d_n * gh, w.shape[2])
        rbh = np.zeros((d_n, hsz), np.float32)
        if b is None:
            bias = None
        else:
            bb = np.asarray(b, np.float32).reshape(d_n, 2, gh)
            if self.op_type == "GRU" and self.flag:
                bias = bb[:, 0].copy()
                bias[:, :2 * hsz] += bb[:, 1, :2 * hsz]
                rbh = np.ascontiguousarray(bb[:, 1, 2 * hsz:])
            else:
                bias = bb[:, 0] + bb[:, 1]
            bias = bias.reshape(-1)
        peep = np.zeros((d_n, 3, hsz), np.float32)
        if p is not None:
            peep = np.ascontiguousarray(p, np.float32).reshape(d_n, 3, hsz)
        if r is None:  # the recurrent weights come in another form (DynamicQuantizeLSTM's quantized R)
            return dict(packed=PackedWeight(wst, bias, trans_b=True), w=wst, r=None,
                        rt=np.zeros((d_n, 1, 1), np.float32), rbh=rbh, peep=peep)
        r32 = np.ascontiguousarray(r, np.float32)
        return dict(packed=PackedWeight(wst, bias, trans_b=True), w=wst, r=r32,
                    rt=np.ascontiguousarray(r32.transpose(0, 2, 1)), rbh=rbh, peep=peep)

    #: the inputs that must be constants for the weights to be prepared once at build time
    @property
    def _weight_idx(self) -> tuple[int, ...]:
        return (1, 2, 3, 7) if self.op_type == "LSTM" else (1, 2, 3)

    def _weights_from(self, src: list) -> dict:
        """:meth:`_prepare` on the weight inputs of ``src`` (the node's inputs or constants, in node order)."""
        return self._prepare(src[1], src[2], src[3], src[7] if self.op_type == "LSTM" else None)

    def _params(self, rec: int, has: dict) -> tuple[np.ndarray, np.ndarray]:
        tlen, bsz, _, hsz = self.dims
        clip = np.inf if self.clip is None else self.clip
        return K.make_params(tlen, bsz, hsz, self.num_dirs, self.layout, rec, has, self.flag,
                             [self.reverse(d) for d in range(self.num_dirs)],
                             [self.fast(d) for d in range(self.num_dirs)], self.acts, clip)

    def _scratch(self) -> tuple[int, list]:
        """Workspace bytes and the (name, shape) of each float32 buffer in it (after the GEMM's own)."""
        tlen, bsz, _, hsz = self.dims
        d_n, gh = self.num_dirs, self.gates * hsz
        bufs = [("xw", (tlen * bsz, d_n * gh)), ("acc", (d_n, 1, bsz, gh)), ("hb", (d_n, 2, bsz, hsz))]
        if self.op_type == "LSTM":
            bufs.append(("cb", (d_n, 2, bsz, hsz)))
        if self.op_type == "GRU":
            bufs.append(("tmp", (d_n, bsz, 2, hsz)))
        out, off = [], 0
        for name, shape in bufs:
            n = 4 * math.prod(shape)
            out.append((name, off, n, shape))
            off += _align(n)
        return off, out

    def _views(self, scratch: np.ndarray, bufs: list) -> dict:
        """The float32 buffers in ``scratch`` (kept for the last scratch array seen: the plan's is fixed)."""
        cached = self._view_cache
        if cached is not None and cached[0] is scratch:
            return cached[1]
        views = {name: scratch[off:off + n].view(np.float32).reshape(shape) for name, off, n, shape in bufs}
        self._view_cache = (scratch, views)
        return views

    def _outputs(self, outputs: list) -> list:
        """(Y, Y_h, Y_c) with None for the absent ones: the planner hands in the present outputs only, the
        training tape one array per position."""
        if len(outputs) == len(self.present):
            return [o if p else None for o, p in zip(outputs, self.present)] + [None] * 3
        it = iter(outputs)
        return [next(it) if p else None for p in self.present] + [None] * 3

    def build(self, ins, outs, consts):
        ins = list(ins) + [None] * (self.num_inputs[1] - len(ins))
        consts = list(consts) + [None] * (self.num_inputs[1] - len(consts))
        if any(t is not None and n != "sequence_lens" and t.dtype != np.float32 for n, t in zip(self._in_names, ins)):
            return ref_kernel(self)
        tlen, bsz, isz, hsz = self.dims
        if tlen * bsz * self.num_dirs * self.gates * hsz > MAX_TENSOR_ELEMENTS:
            raise self.error("the input projection would exceed the largest tensor edgedl accepts")
        weights = None
        if all(ins[i] is None or consts[i] is not None for i in self._weight_idx):
            weights = self._weights_from(consts)
        own, bufs = self._scratch()
        gemm_bytes = 0
        if weights is not None and weights["packed"] is not None:
            gemm_bytes = _align(max(weights["packed"].scratch_bytes(tlen * bsz), 0))
        if weights is None:
            from ..kernels.cpu.gemm import PackedWeight

            probe = PackedWeight(np.zeros((self.num_dirs * self.gates * hsz, isz), np.float32))
            gemm_bytes = _align(probe.scratch_bytes(tlen * bsz))
        scratch_bytes = own + gemm_bytes

        def make_call(inputs, outputs, scratch, threads):
            inputs = list(inputs) + [None] * (self.num_inputs[1] - len(inputs))
            wts = weights
            if wts is None:
                wts = self._weights_from(inputs)
            return self._call(inputs, outputs, scratch, wts, threads, bufs, own)

        def run(inputs, outputs, scratch):
            from ..kernels.cpu.config import num_threads

            make_call(inputs, outputs, scratch, num_threads())()

        def bind(inputs, outputs, scratch, threads):
            if weights is None:
                return None
            arrays = [a for a in inputs if a is not None] + list(outputs)
            if any(not a.flags.c_contiguous for a in arrays):
                return None
            return make_call(inputs, outputs, scratch, threads)

        return Kernel(run, scratch_bytes=scratch_bytes, bind=bind)

    def _call(self, inputs, outputs, scratch, wts, threads, bufs, own):
        """A no-argument callable running the GEMM and the time-loop kernel on these very arrays."""
        tlen, bsz, isz, hsz = self.dims
        views = self._views(scratch, bufs)
        gscratch = scratch[own:]
        x2 = np.ascontiguousarray(inputs[0], np.float32).reshape(tlen * bsz, isz)
        xw = views["xw"]
        y, yh, yc = self._outputs(outputs)[:3]
        lens = inputs[4]
        h0 = inputs[5]
        c0 = inputs[6] if self.op_type == "LSTM" else None
        key = (lens is not None, h0 is not None, c0 is not None, y is not None, yh is not None, yc is not None)
        ip, fp = self._param_cache.get(key) or self._param_cache.setdefault(
            key, self._params(0, dict(zip(("lens", "h0", "c0", "y", "yh", "yc"), key))))
        lens_a = _E1 if lens is None else np.ascontiguousarray(lens).reshape(-1)
        h0a = _E3 if h0 is None else np.ascontiguousarray(h0, np.float32)
        ya = _E4 if y is None else y
        yha = _E3 if yh is None else yh
        packed = wts["packed"]
        gemm = None
        if tlen * bsz > 0 and wts.get("qw") is not None:  # quantized W (DynamicQuantizeLSTM)
            project = K.project_quantized_parallel if threads > 1 else K.project_quantized
            gemm = functools.partial(project, x2, xw, wts["qw"])
        elif tlen * bsz > 0:
            gemm = packed.bind(x2, xw, gscratch, threads)
            if gemm is None:
                gemm = functools.partial(packed, x2, xw, gscratch, threads)
        nch = K.chunks(ip, self.gates, threads)
        if self.op_type == "LSTM":
            c0a = _E3 if c0 is None else np.ascontiguousarray(c0, np.float32)
            yca = _E3 if yc is None else yc
            args = (xw, wts["rt"], wts["peep"], lens_a, h0a, c0a, ya, yha, yca, views["acc"], views["hb"],
                    views["cb"], ip, fp)
            fn = K.lstm_parallel if nch else K.lstm_serial
        elif self.op_type == "GRU":
            args = (xw, wts["rt"], wts["rbh"], lens_a, h0a, ya, yha, views["acc"], views["hb"], views["tmp"], ip, fp)
            fn = K.gru_parallel if nch else K.gru_serial
        else:
            args = (xw, wts["rt"], lens_a, h0a, ya, yha, views["acc"], views["hb"], ip, fp)
            fn = K.rnn_parallel if nch else K.rnn_serial
        tail = (nch,) if nch else ()
        if wts.get("qp") is not None:  # LSTM with quantized R (DynamicQuantizeLSTM)
            tail += (wts["qp"],)
        step = functools.partial(fn, *args, *tail)

        def error(code):
            b = int(code) - 1
            return self.error(f"sequence_lens[{b}] = {int(lens_a[b])} is outside [0, {tlen}] (seq_length)",
                              cls=EdgeDLError)

        if gemm is None:
            def call_empty():
                code = step()
                if code:
                    raise error(code)
            return call_empty

        def call():
            gemm()
            code = step()
            if code:
                raise error(code)
        return call

    # --- training -----------------------------------------------------------------------------------------------
    grad_inputs = None
    grad_outputs = ()

    def backward(self, grads, ins, outs, needs):
        """Backprop through time (float32): the forward re-run recording every step, the BPTT kernel, then
        dX = gx @ W, dW = gx^T @ X, dR = gr^T @ H_prev, bias sums in float64."""
        from ..kernels.cpu.gemm import gemm

        n_in = self.num_inputs[1]
        ins = list(ins) + [None] * (n_in - len(ins))
        grads = list(grads) + [None] * (3 - len(grads))
        tlen, bsz, isz, hsz = self.dims
        d_n, g = self.num_dirs, self.gates
        gh = g * hsz
        f32 = np.float32
        x, w, r, b, lens, h0 = ins[:6]
        c0 = ins[6] if self.op_type == "LSTM" else None
        p = ins[7] if self.op_type == "LSTM" else None
        wts = self._prepare(w, r, b, p)
        rows = tlen * bsz
        x2 = np.ascontiguousarray(x, f32).reshape(rows, isz)
        xw = np.empty((rows, d_n * gh), f32)
        if rows:
            wts["packed"](x2, xw)
        lens_a = _E1 if lens is None else np.ascontiguousarray(lens).reshape(-1)
        h0a = _E3 if h0 is None else np.ascontiguousarray(h0, f32)
        c0a = _E3 if c0 is None else np.ascontiguousarray(c0, f32)
        acc = np.zeros((d_n, tlen, bsz, gh), f32)
        hb = np.zeros((d_n, tlen + 1, bsz, hsz), f32)
        ip, fp = self._params(1, dict(lens=lens is not None, h0=h0 is not None, c0=c0 is not None))
        if self.op_type == "LSTM":
            cb = np.zeros_like(hb)
            code = K.lstm_serial(xw, wts["rt"], wts["peep"], lens_a, h0a, c0a, _E4, _E3, _E3, acc, hb, cb, ip, fp)
        elif self.op_type == "GRU":
            code = K.gru_serial(xw, wts["rt"], wts["rbh"], lens_a, h0a, _E4, _E3, acc, hb,
                                np.zeros((d_n, bsz, 2, hsz), f32), ip, fp)
        else:
            code = K.rnn_serial(xw, wts["rt"], lens_a, h0a, _E4, _E3, acc, hb, ip, fp)
        if code:
            self._check_lens(lens_a, tlen)

        present = self._outputs(list(grads[:len(self.present)]))
        gy, gyh, gyc = [None if v is None else np.ascontiguousarray(v, f32) for v in present[:3]]
        bip, bfp = self._params(1, dict(lens=lens is not None, y=gy is not None, yh=gyh is not None,
                                        yc=gyc is not None))
        gx = np.zeros((rows, d_n * gh), f32)
        gr = np.zeros((d_n, tlen, bsz, gh), f32)
        dh0 = np.zeros((d_n, bsz, hsz), f32)
        gya = _E4 if gy is None else gy
        gyha = _E3 if gyh is None else gyh
        rh = None
        dpeep = None
        if self.op_type == "LSTM":
            dc0 = np.zeros_like(dh0)
            dpeep = np.zeros((d_n, 3, hsz), np.float64)
            K.lstm_backward(xw, wts["r"], wts["peep"], lens_a, acc, hb, cb, gya, gyha, _E3 if gyc is None else gyc,
                            gx, gr, dh0, dc0, dpeep, np.zeros((2, hsz), f32), bip, bfp)
        elif self.op_type == "GRU":
            rh = np.zeros((d_n, tlen, bsz, hsz), f32)
            K.gru_backward(xw, wts["r"], lens_a, acc, hb, gya, gyha, gx, gr, rh, dh0, np.zeros((4, hsz), f32),
                           bip, bfp)
        else:
            K.rnn_backward(wts["r"], lens_a, acc, hb, gya, gyha, gx, gr, dh0, np.zeros((1, hsz), f32), bip, bfp)

        res = [None] * len(self.in_types)
        if needs[0]:
            dx = gemm(gx, wts["w"]) if rows else np.zeros((rows, isz), f32)
            res[0] = dx.reshape(self.in_types[0].shape)
        if needs[1]:
            dw = gemm(gx.T, x2) if rows else np.zeros((d_n * gh, isz), f32)
            res[1] = dw.reshape(d_n, gh, isz)
        if needs[2]:
            dr = np.zeros((d_n, gh, hsz), f32)
            for d in range(d_n):
                grd = gr[d].reshape(rows, gh)
                hp = hb[d, :tlen].reshape(rows, hsz)
                if rows == 0:
                    continue
                if self.op_type == "GRU" and not self.flag:
                    dr[d, :2 * hsz] = gemm(grd[:, :2 * hsz].T, hp)
                    dr[d, 2 * hsz:] = gemm(grd[:, 2 * hsz:].T, rh[d].reshape(rows, hsz))
                else:
                    dr[d] = gemm(grd.T, hp)
            res[2] = dr
        if len(res) > 3 and self.in_types[3] is not None and needs[3]:
            dwb = gx.sum(axis=0, dtype=np.float64).reshape(d_n, gh)
            drb = gr.reshape(d_n, rows, gh).sum(axis=1, dtype=np.float64)
            res[3] = np.concatenate([dwb, drb], axis=1).astype(f32)
        if len(res) > 5 and self.in_types[5] is not None and needs[5]:
            res[5] = np.ascontiguousarray(dh0.swapaxes(0, 1) if self.layout else dh0)
        if self.op_type == "LSTM":
            if len(res) > 6 and self.in_types[6] is not None and needs[6]:
                res[6] = np.ascontiguousarray(dc0.swapaxes(0, 1) if self.layout else dc0)
            if len(res) > 7 and self.in_types[7] is not None and needs[7]:
                res[7] = dpeep.reshape(d_n, 3 * hsz).astype(f32)
        return res


@register
class RNN(_Recurrent):
    """Ht = f(Xt W^T + Ht-1 R^T + Wb + Rb), f default Tanh."""

    op_type = "RNN"
    num_inputs = (3, 6)
    gates = 1
    default_acts = ("Tanh",)
    max_outputs = 2

    def _cell_ref(self, d, xt, h, c, w, r, wb, rb, p):
        (fa, fal, fbe), = self.acts[d]
        return _act_ref(fa, self._clip(xt @ w.T + h @ r.T + wb + rb), fal, fbe), c


@register
class GRU(_Recurrent):
    """Gates z, r, h; ``linear_before_reset`` (opset 3+) moves Rh before the reset gate."""

    op_type = "GRU"
    num_inputs = (3, 6)
    gates = 3
    default_acts = ("Sigmoid", "Tanh")
    max_outputs = 2

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.flag = int(self.attr("linear_before_reset", 0)) if opset >= 3 else 0
        self.flag = 1 if self.flag else 0

    def _cell_ref(self, d, xt, h, c, w, r, wb, rb, p):
        (fa, fal, fbe), (ga, gal, gbe) = self.acts[d]
        hsz = h.shape[1]
        xg = xt @ w.T + wb
        hr = h @ r[:2 * hsz].T + rb[:2 * hsz]
        z = _act_ref(fa, self._clip(xg[:, :hsz] + hr[:, :hsz]), fal, fbe)
        rr = _act_ref(fa, self._clip(xg[:, hsz:2 * hsz] + hr[:, hsz:]), fal, fbe)
        rh, rbh = r[2 * hsz:], rb[2 * hsz:]
        if self.flag:
            pre = xg[:, 2 * hsz:] + rr * (h @ rh.T + rbh)
        else:
            pre = xg[:, 2 * hsz:] + (rr * h) @ rh.T + rbh
        hh = _act_ref(ga, self._clip(pre), gal, gbe)
        return (1.0 - z) * hh + z * h, c


@register
class LSTM(_Recurrent):
    """Gates i, o, f, c; peepholes P; ``input_forget`` couples f = 1 - i."""

    op_type = "LSTM"
    num_inputs = (3, 8)
    gates = 4
    default_acts = ("Sigmoid", "Tanh", "Tanh")
    max_outputs = 3

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.flag = 1 if int(self.attr("input_forget", 0)) else 0

    def _cell_ref(self, d, xt, h, c, w, r, wb, rb, p):
        (fa, fal, fbe), (ga, gal, gbe), (ha, hal, hbe) = self.acts[d]
        hsz = h.shape[1]
        gates = xt @ w.T + h @ r.T + wb + rb
        gi, go, gf, gc = (gates[:, k * hsz:(k + 1) * hsz] for k in range(4))
        pi, po, pf = p[:hsz], p[hsz:2 * hsz], p[2 * hsz:]
        i = _act_ref(fa, self._clip(gi + pi * c), fal, fbe)
        f = 1.0 - i if self.flag else _act_ref(fa, self._clip(gf + pf * c), fal, fbe)
        cc = _act_ref(ga, self._clip(gc), gal, gbe)
        cn = f * c + i * cc
        o = _act_ref(fa, self._clip(go + po * cn), fal, fbe)
        return o * _act_ref(ha, cn, hal, hbe), cn
