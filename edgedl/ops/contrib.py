"""onnxruntime's float contrib ops (domain ``com.microsoft``) that its graph optimizer and exporters write into
saved models (``SessionOptions.optimized_model_filepath`` at ORT_ENABLE_EXTENDED, the transformers optimizer).

* FusedConv: Conv (every attribute) with ``activation`` (Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid;
  ``activation_params``: LeakyRelu [alpha], Clip [min, max], HardSigmoid [alpha, beta]) and an optional
  fourth input Z: ``Y = act(conv(X, W) + B + Z)``. It is the Conv op with a fused epilogue activation and
  residual (the attributes the fuse pass sets), so it runs the same kernels.
* FusedGemm: Gemm with ``activation`` and ``activation_alpha`` / ``_beta`` / ``_gamma`` (onnxruntime's
  element-wise functors: Relu, Sigmoid, Tanh, LeakyRelu, Elu, HardSigmoid in the GEMM epilogue; Selu,
  Softplus, Softsign, ThresholdedRelu, ParametricSoftplus ``alpha * softplus(beta * x)``, ScaledTanh
  ``alpha * tanh(beta * x)`` applied after it). Parameters are required where onnxruntime requires them.
* FusedMatMul (and TransposeMatMul, its old name without the batch flags):
  ``Y = alpha * matmul(A', B')``. ``transBatchA`` moves A's first axis to the rows position
  (``[M, b..., K] -> [b..., M, K]``; both ranks equal and >= 3), then ``transA`` swaps the last two axes
  (ignored for 1-D operands); likewise for B. numpy broadcasting of the batch axes. A constant 2-D B runs
  on a packed weight, everything else on the batched GEMM.
* BiasAdd: ``Y = X + bias + skip`` with X, skip (N, S, C) and bias (C,).
* BiasSoftmax: ``Y = softmax(data + bias)`` over the flattened axes ``axis...`` (default 1); bias broadcasts
  to data (``is_inner_broadcast`` only says which leading axes it repeats over, which numpy broadcasting of
  its shape already determines).
* BiasDropout (inference): ``output = data + bias (+ residual)``, ``mask`` all true. ``training_mode`` true
  with a non-zero ratio (random dropping) is not supported.
* EmbedLayerNormalization: ``e[b, s] = word[input_ids] + position[position_ids or s] (+ segment[segment_ids])``,
  ``output = LayerNorm(e) * gamma + beta`` over the hidden axis (epsilon default 1e-12), ``mask_index[b]`` =
  number of entries equal to 1 in ``mask[b]`` (0 without a mask), ``embedding_sum = e``. Ids outside their
  tables are run-time errors.
* Inverse: the inverse of every matrix over the last two axes (computed in float64); a singular matrix is
  an error.
* Trilu, Range, GridSample: the com.microsoft spellings of the standard ops (Range's delta is optional and
  defaults to 1; GridSample has opset 16's semantics: 4-D, modes bilinear / nearest / bicubic).
* Rfft / Irfft (onnxruntime implements them on CUDA only): the real FFT over the last ``signal_ndim`` axes
  (1 to 3; ``onesided`` 1 and ``normalized`` 0 only). Rfft: (..., n) -> (..., n // 2 + 1, 2) (real, imag).
  Irfft: (..., m, 2) -> (..., 2m - 1), the length onnxruntime's kernel infers, scaled by 1 / (number of
  signal points) (numpy's "backward" normalization).
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import MAX_TENSOR_ELEMENTS, TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .common import broadcast_shapes, const_input, normalize_axis, require_dtype
from .conv import Conv
from .gemm import Gemm, matmul_shape
from .generators import Range, Trilu
from .sampling import GridSample

MS = "com.microsoft"
_FLOATS = ("float16", "float32", "float64")


def _present_outputs(op: Op) -> list[int]:
    """Indices of the node's outputs that are not omitted (kernels receive only those)."""
    return [k for k, o in enumerate(op.node.outputs) if o]


def _ref_present_kernel(op: Op) -> Kernel:
    """The numpy reference writing only the outputs the node has (``ref_kernel`` pairs them by position)."""
    present = _present_outputs(op)

    def run(inputs, outputs, scratch):
        results = op.ref(*inputs)
        for out, k in zip(outputs, present):
            out[...] = results[k]

    return Kernel(run, impl="numpy")


# ----------------------------------------------------------------------------------------------------------
# FusedConv

#: onnxruntime's FusedConv activations and how many activation_params each needs
_CONV_ACTS = {"Relu": 0, "Tanh": 0, "Sigmoid": 0, "LeakyRelu": 1, "Clip": 2, "HardSigmoid": 2}


@register
class FusedConv(Conv):
    """com.microsoft FusedConv: the Conv op with the node's ``activation`` as its fused epilogue and Z as its
    fused residual (see the module docstring)."""

    op_type = "FusedConv"
    domain = MS

    def __init__(self, node, opset):
        self.node = node  # error messages below need it before Op.__init__ runs
        self._fused = self._parse_activation()
        super().__init__(node, opset)

    def _parse_activation(self):
        kind = self.node.attrs.get("activation")
        if kind is None or kind in ("", "Identity"):
            return None
        if kind not in _CONV_ACTS:
            raise self.unsupported(f"activation '{kind}' is not supported (onnxruntime's FusedConv activations: "
                                   f"Identity, {', '.join(_CONV_ACTS)})")
        want = _CONV_ACTS[kind]
        params = [float(v) for v in self.node.attrs.get("activation_params", []) or []]
        if want == 0:
            return kind, 0.0, 0.0
        if len(params) != want:
            raise self.error(f"activation {kind} needs {want} activation_params, got {params}")
        return kind, params[0], params[1] if want > 1 else 0.0

    def attr(self, name, default=None):
        if name == "_activation":
            return self._fused
        if name == "_residual":
            return len(self.node.inputs) > 3 and bool(self.node.inputs[3])
        return super().attr(name, default)


# ----------------------------------------------------------------------------------------------------------
# FusedGemm

#: activation -> the activation_* attributes onnxruntime requires for it
_GEMM_ACTS = {
    "Relu": (), "Sigmoid": (), "Tanh": (), "Softplus": (), "Softsign": (),
    "LeakyRelu": ("alpha",), "Elu": ("alpha",), "ThresholdedRelu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"), "Selu": ("alpha", "gamma"),
    "ParametricSoftplus": ("alpha", "beta"), "ScaledTanh": ("alpha", "beta"),
}
#: the ones the GEMM epilogue computes (edgedl.kernels.cpu.act codes)
_EPILOGUE_ACTS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "HardSigmoid")


def _softplus(y):
    return np.logaddexp(np.zeros((), y.dtype), y)


def post_activation(y: np.ndarray, kind: str, p: dict) -> np.ndarray:
    """numpy value of the FusedGemm activations the epilogue does not compute (in y's dtype)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "Softplus":
            r = _softplus(y)
        elif kind == "Softsign":
            r = y / (1 + np.abs(y))
        elif kind == "ThresholdedRelu":
            r = np.where(y > y.dtype.type(p["alpha"]), y, 0)
        elif kind == "Selu":
            a, g = y.dtype.type(p["alpha"]), y.dtype.type(p["gamma"])
            r = g * (np.maximum(y, 0) + np.minimum(a * np.expm1(y), 0))
        elif kind == "ParametricSoftplus":
            r = y.dtype.type(p["alpha"]) * _softplus(y * y.dtype.type(p["beta"]))
        elif kind == "ScaledTanh":
            r = y.dtype.type(p["alpha"]) * np.tanh(y * y.dtype.type(p["beta"]))
        else:  # pragma: no cover - guarded by the attribute parsing
            raise ValueError(kind)
    return np.asarray(r, y.dtype)


@register
class FusedGemm(Gemm):
    """com.microsoft FusedGemm: Gemm followed by ``activation`` (see the module docstring)."""

    op_type = "FusedGemm"
    domain = MS

    def __init__(self, node, opset):
        super().__init__(node, opset)
        kind = self.attr("activation")
        self.post = None
        if kind is None or kind in ("", "Identity"):
            return
        if kind not in _GEMM_ACTS:
            raise self.unsupported(f"activation '{kind}' is not supported (onnxruntime's FusedGemm activations: "
                                   f"{', '.join(_GEMM_ACTS)})")
        params = {}
        for name in _GEMM_ACTS[kind]:
            value = self.attr(f"activation_{name}")
            if value is None:
                raise self.error(f"activation {kind} needs the activation_{name} attribute")
            params[name] = float(value)
        if kind in _EPILOGUE_ACTS:
            from .fused import ACT_CODES

            self.act = (ACT_CODES[kind], params.get("alpha", 0.0), params.get("beta", 0.0))
        else:
            self.post = (kind, params)

    def infer(self, ins, consts):
        outs = super().infer(ins, consts)
        if self.post is not None or self.act[0]:
            require_dtype(self, ins[0], _FLOATS, "A (with an activation)")
        return outs

    def ref(self, a, b, c=None):
        y = super().ref(a, b, c)[0]
        return [post_activation(y, *self.post) if self.post else y]

    def build(self, ins, outs, consts):
        kern = super().build(ins, outs, consts)
        if self.post is None:
            return kern
        kind, params = self.post

        def post(out):
            out[...] = post_activation(out, kind, params)

        return _with_post(kern, post)

    def backward(self, grads, ins, outs, needs):
        if self.post is not None:
            raise self.unsupported("has a fused activation: train the graph before fusion")
        return super().backward(grads, ins, outs, needs)  # Gemm's (it refuses an epilogue activation too)


def _with_post(kern: Kernel, post) -> Kernel:
    """``kern`` followed by ``post(output 0)`` in place."""
    fn = kern.fn

    def run(inputs, outputs, scratch):
        fn(inputs, outputs, scratch)
        post(outputs[0])

    bind = None
    if kern.bind is not None:
        def bind(inputs, outputs, scratch, threads):
            call = kern.bind(inputs, outputs, scratch, threads)
            if call is None:
                return None
            out = outputs[0]

            def go():
                call()
                post(out)

            return go

    return Kernel(run, scratch_bytes=kern.scratch_bytes, impl=kern.impl, bind=bind)


# ----------------------------------------------------------------------------------------------------------
# FusedMatMul / TransposeMatMul

def _effective_shape(shape, trans: bool, trans_batch: bool) -> tuple[int, ...]:
    s = list(shape)
    if trans_batch:
        s = s[1:-1] + [s[0], s[-1]]
    if trans and len(s) >= 2:
        s[-1], s[-2] = s[-2], s[-1]
    return tuple(s)


def _effective_view(a: np.ndarray, trans: bool, trans_batch: bool) -> np.ndarray:
    if trans_batch:
        a = np.moveaxis(a, 0, -2)
    if trans and a.ndim >= 2:
        a = np.swapaxes(a, -1, -2)
    return a


@register
class FusedMatMul(Op):
    """com.microsoft FusedMatMul: ``alpha * matmul(A', B')`` (see the module docstring)."""

    op_type = "FusedMatMul"
    domain = MS
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 2)
    has_batch_flags = True

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.alpha = float(self.attr("alpha", 1.0))
        self.trans_a = bool(int(self.attr("transA", 0)))
        self.trans_b = bool(int(self.attr("transB", 0)))
        self.trans_batch_a = bool(int(self.attr("transBatchA", 0))) if self.has_batch_flags else False
        self.trans_batch_b = bool(int(self.attr("transBatchB", 0))) if self.has_batch_flags else False

    def infer(self, ins, consts):
        a, b = ins
        if a.dtype != b.dtype:
            raise self.error(f"A and B must share a dtype, got {a.dtype} and {b.dtype}")
        require_dtype(self, a, _FLOATS, "A")
        if len(a.shape) == 0 or len(b.shape) == 0:
            raise self.error(f"A and B must have rank >= 1, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
        if (self.trans_batch_a or self.trans_batch_b) and not (len(a.shape) == len(b.shape) > 2):
            raise self.error(f"transBatchA / transBatchB need A and B of one rank >= 3, got shapes {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        ea = _effective_shape(a.shape, self.trans_a, self.trans_batch_a)
        eb = _effective_shape(b.shape, self.trans_b, self.trans_batch_b)
        return [TensorType(matmul_shape(self, ea, eb), a.dtype)]

    def ref(self, a, b):
        av = _effective_view(a, self.trans_a, self.trans_batch_a).astype(np.float64)
        bv = _effective_view(b, self.trans_b, self.trans_batch_b).astype(np.float64)
        return [(np.matmul(av, bv) * self.alpha).astype(a.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        a_shape, b_shape = tuple(ins[0].shape), tuple(ins[1].shape)
        b = consts[1]
        if (b is not None and len(b_shape) >= 2 and not self.trans_batch_b and not self.trans_batch_a
                and int(np.prod(b_shape[:-2], dtype=np.int64)) == 1 and len(a_shape) >= len(b_shape)):
            return self._packed_kernel(a_shape, b.reshape(b_shape[-2:]), outs[0])
        return self._general_kernel(outs[0])

    def _packed_kernel(self, a_shape, b2: np.ndarray, out_t: TensorType) -> Kernel:
        """A constant (K, N) B (or (N, K) with transB), alpha folded in, packed once; every row of A' is a
        GEMM row (A' copied into the workspace when transA)."""
        from ..kernels.cpu.gemm import PackedWeight

        w = b2.astype(np.float32) * np.float32(self.alpha) if self.alpha != 1.0 else b2
        packed = PackedWeight(w, None, trans_b=self.trans_b)
        k, n = packed.k, packed.n
        rows = int(np.prod(out_t.shape[:-1], dtype=np.int64)) if len(a_shape) > 1 else 1
        trans_a = self.trans_a and len(a_shape) >= 2
        a_eff = _effective_shape(a_shape, trans_a, False)
        a_bytes = -(-rows * k * 4 // 64) * 64 if trans_a else 0

        def run(inputs, outputs, scratch):
            a = inputs[0]
            rest = scratch
            if trans_a:
                a2 = scratch[:rows * k * 4].view(np.float32).reshape(a_eff)
                np.copyto(a2, np.swapaxes(a, -1, -2))
                a, rest = a2, scratch[a_bytes:]
            packed(a.reshape(rows, k), outputs[0].reshape(rows, n), rest)

        bind = None
        if not trans_a:
            def bind(inputs, outputs, scratch, threads):
                return packed.bind(inputs[0].reshape(rows, k), outputs[0].reshape(rows, n), scratch, threads)

        return Kernel(run, scratch_bytes=a_bytes + packed.scratch_bytes(rows), bind=bind)

    def _general_kernel(self, out_t: TensorType) -> Kernel:
        """Both operands at run time: the batched GEMM on the (strided) views A' and B', then alpha."""
        from ..kernels.cpu.gemm import matmul

        alpha = np.float32(self.alpha)
        views = (self.trans_a, self.trans_batch_a, self.trans_b, self.trans_batch_b)
        out_shape = tuple(out_t.shape)

        def run(inputs, outputs, scratch):
            out = outputs[0].reshape(out_shape)
            if out.size == 0:
                return
            a = _effective_view(inputs[0], views[0], views[1])
            b = _effective_view(inputs[1], views[2], views[3])
            matmul(a, b, out)
            if alpha != 1.0:
                np.multiply(out, alpha, out=out)

        return Kernel(run)


@register
class TransposeMatMul(FusedMatMul):
    """com.microsoft TransposeMatMul: FusedMatMul's old name (transA, transB, alpha; no batch flags)."""

    op_type = "TransposeMatMul"
    has_batch_flags = False


# ----------------------------------------------------------------------------------------------------------
# BiasAdd, BiasSoftmax, BiasDropout

@register
class BiasAdd(Op):
    """com.microsoft BiasAdd: Y = X + bias + skip; X, skip (N, S, C), bias (C,)."""

    op_type = "BiasAdd"
    domain = MS
    kernels = {"cpu": ("float32",)}
    num_inputs = (3, 3)

    def infer(self, ins, consts):
        x, bias, skip = ins
        require_dtype(self, x, _FLOATS, "X")
        if bias.dtype != x.dtype or skip.dtype != x.dtype:
            raise self.error(f"X, bias and skip must share a dtype, got {x.dtype}, {bias.dtype}, {skip.dtype}")
        if len(x.shape) != 3:
            raise self.error(f"X must be (N, S, C), got shape {tuple(x.shape)}")
        if tuple(bias.shape) != (x.shape[2],):
            raise self.error(f"bias must have shape ({x.shape[2]},), got {tuple(bias.shape)}")
        if tuple(skip.shape) != tuple(x.shape):
            raise self.error(f"skip must have X's shape {tuple(x.shape)}, got {tuple(skip.shape)}")
        return [TensorType(x.shape, x.dtype)]

    def ref(self, x, bias, skip):
        return [(x.astype(np.float64) + bias.astype(np.float64) + skip.astype(np.float64)).astype(x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        from ..kernels.cpu.contrib import bias_add

        c = int(ins[0].shape[2])
        rows = int(np.prod(ins[0].shape[:2], dtype=np.int64))

        def run(inputs, outputs, scratch):
            x, bias, skip = (np.ascontiguousarray(v) for v in inputs)
            bias_add(x.reshape(rows, c), bias, skip.reshape(rows, c), outputs[0].reshape(rows, c))

        return Kernel(run)


@register
class BiasSoftmax(Op):
    """com.microsoft BiasSoftmax: softmax(data + bias) over the flattened axes from ``axis`` on."""

    op_type = "BiasSoftmax"
    domain = MS
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.axis = int(self.attr("axis", 1))
        self.inner = int(self.attr("is_inner_broadcast", 0))

    def _layout(self, shape) -> tuple[int, int]:
        axis = normalize_axis(self, self.axis, len(shape))
        return int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))

    def infer(self, ins, consts):
        x, bias = ins
        require_dtype(self, x, _FLOATS, "data")
        if bias.dtype != x.dtype:
            raise self.error(f"data and bias must share a dtype, got {x.dtype} and {bias.dtype}")
        if len(x.shape) == 0:
            raise self.error("data must have rank >= 1")
        if len(bias.shape) > len(x.shape) or broadcast_shapes(self, x.shape, bias.shape) != tuple(x.shape):
            raise self.error(f"bias of shape {tuple(bias.shape)} does not broadcast to data's shape {tuple(x.shape)}")
        self._layout(x.shape)
        return [TensorType(x.shape, x.dtype)]

    def ref(self, x, bias):
        outer, n = self._layout(x.shape)
        if x.size == 0:
            return [x.copy()]
        v = (x.astype(np.float64) + bias.astype(np.float64)).reshape(outer, n)
        v = v - v.max(axis=1, keepdims=True)
        with np.errstate(all="ignore"):
            e = np.exp(v)
            y = e / e.sum(axis=1, keepdims=True)
        return [y.reshape(x.shape).astype(x.dtype)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        from ..kernels.cpu.softmax import SoftmaxKernel

        outer, n = self._layout(ins[0].shape)
        soft = SoftmaxKernel(outer, n, 1, log=False)

        def run(inputs, outputs, scratch):
            out = outputs[0]
            if out.size == 0:
                return
            np.add(inputs[0], inputs[1], out=out)
            flat = out.reshape(-1)
            soft(flat, flat, scratch)  # in place: each row is read before it is written

        return Kernel(run, scratch_bytes=soft.scratch_bytes)


@register
class BiasDropout(Op):
    """com.microsoft BiasDropout in inference: output = data + bias (+ residual); mask all true."""

    op_type = "BiasDropout"
    domain = MS
    num_inputs = (2, 5)

    def infer(self, ins, consts):
        ins = list(ins) + [None] * (5 - len(ins))
        consts = list(consts) + [None] * (5 - len(consts))
        x, bias, residual, ratio, training = ins
        require_dtype(self, x, _FLOATS, "data")
        if bias.dtype != x.dtype or residual is not None and residual.dtype != x.dtype:
            raise self.error("data, bias and residual must share a dtype")
        if tuple(bias.shape) != tuple(x.shape) and (len(bias.shape) != 1 or not x.shape
                                                     or bias.shape[0] != x.shape[-1]):
            raise self.error(f"bias must have data's shape {tuple(x.shape)} or be 1-D over its last axis, got "
                             f"{tuple(bias.shape)}")
        if residual is not None and tuple(residual.shape) != tuple(x.shape):
            raise self.error(f"residual must have data's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        if ratio is not None and (ratio.size != 1 or np.dtype(ratio.dtype).kind != "f"):
            raise self.error(f"ratio must be a float scalar, got {ratio.dtype}{tuple(ratio.shape)}")
        if training is not None:
            if np.dtype(training.dtype) != np.bool_ or training.size != 1:
                raise self.error(f"training_mode must be a bool scalar, got {training.dtype}{tuple(training.shape)}")
            if bool(const_input(self, consts, 4, "training_mode").reshape(-1)[0]):
                r = 0.5 if ratio is None else float(const_input(self, consts, 3, "ratio").reshape(-1)[0])
                if r != 0.0:
                    raise self.unsupported(f"training_mode is true with ratio {r}: random dropout is not supported "
                                           "(inference only)")
        return [TensorType(x.shape, x.dtype), TensorType(x.shape, np.dtype(np.bool_))]

    def ref(self, x, bias, residual=None, ratio=None, training=None):
        y = x.astype(np.float64) + bias.astype(np.float64)
        if residual is not None:
            y = y + residual.astype(np.float64)
        return [y.astype(x.dtype), np.ones(x.shape, np.bool_)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return _ref_present_kernel(self)
        present = _present_outputs(self)
        has_res = len(ins) > 2 and ins[2] is not None

        def run(inputs, outputs, scratch):
            k = 0
            if 0 in present:
                y = outputs[0]
                np.add(inputs[0], inputs[1], out=y)
                if has_res:
                    np.add(y, inputs[2], out=y)
                k = 1
            if 1 in present:
                outputs[k].fill(True)

        return Kernel(run, impl="numpy")


# ----------------------------------------------------------------------------------------------------------
# EmbedLayerNormalization

_IDS = ("int32", "int64")


@register
class EmbedLayerNormalization(Op):
    """com.microsoft EmbedLayerNormalization (see the module docstring). Inputs: input_ids, segment_ids,
    word_embedding, position_embedding, segment_embedding, gamma, beta, mask, position_ids."""

    op_type = "EmbedLayerNormalization"
    domain = MS
    kernels = {"cpu": ("float32",)}
    num_inputs = (6, 9)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.eps = float(self.attr("epsilon", 1e-12))
        if self.eps < 0:
            raise self.error(f"epsilon must be >= 0, got {self.eps}")

    def infer(self, ins, consts):
        ins = list(ins) + [None] * (9 - len(ins))
        ids, seg_ids, we, pe, se, gamma, beta, mask, pos_ids = ins
        for t, what in ((we, "word_embedding"), (pe, "position_embedding"), (gamma, "gamma")):
            if t is None:
                raise self.error(f"{what} is required")
        require_dtype(self, ids, _IDS, "input_ids")
        if len(ids.shape) != 2:
            raise self.error(f"input_ids must be (batch, sequence), got shape {tuple(ids.shape)}")
        b, s = ids.shape
        require_dtype(self, we, ("float16", "float32", "float64"), "word_embedding")
        if len(we.shape) != 2:
            raise self.error(f"word_embedding must be 2-D (vocabulary, hidden), got shape {tuple(we.shape)}")
        h = we.shape[1]
        for t, what in ((pe, "position_embedding"), (se, "segment_embedding")):
            if t is None:
                continue
            if t.dtype != we.dtype or len(t.shape) != 2 or t.shape[1] != h:
                raise self.error(f"{what} must be a {we.dtype} (rows, {h}) table, got {t.dtype}{tuple(t.shape)}")
        for t, what in ((gamma, "gamma"), (beta, "beta")):
            if t is not None and (t.dtype != we.dtype or tuple(t.shape) != (h,)):
                raise self.error(f"{what} must be {we.dtype} of shape ({h},), got {t.dtype}{tuple(t.shape)}")
        if (seg_ids is None) != (se is None):
            raise self.error("segment_ids and segment_embedding must be given together")
        for t, what in ((seg_ids, "segment_ids"), (mask, "mask")):
            if t is not None:
                require_dtype(self, t, _IDS, what)
                if tuple(t.shape) != (b, s):
                    raise self.error(f"{what} must have input_ids' shape {(b, s)}, got {tuple(t.shape)}")
        if pos_ids is not None:
            require_dtype(self, pos_ids, _IDS, "position_ids")
            if len(pos_ids.shape) != 2 or pos_ids.shape[1] != s or pos_ids.shape[0] not in (1, b):
                raise self.error(f"position_ids must be (1 or {b}, {s}), got {tuple(pos_ids.shape)}")
        elif pe.shape[0] < s:
            raise self.error(f"position_embedding has {pe.shape[0]} rows, fewer than the sequence length {s}")
        out = TensorType((b, s, h), we.dtype)
        return [out, TensorType((b,), np.dtype(np.int32)), out]

    def _indices(self, ids, seg_ids, pos_ids, vocab, npos, nseg):
        """Flat (ids, segments, positions) as int64, each checked against its table (EdgeDLError)."""
        b, s = ids.shape
        flat = [np.ascontiguousarray(ids, np.int64).reshape(-1)]
        flat.append(np.zeros(0, np.int64) if seg_ids is None else np.ascontiguousarray(seg_ids, np.int64).reshape(-1))
        if pos_ids is None:
            pos = np.tile(np.arange(s, dtype=np.int64), b)
        else:
            pos = np.ascontiguousarray(np.broadcast_to(pos_ids, (b, s)), np.int64).reshape(-1)
        flat.append(pos)
        for arr, n, what in zip(flat, (vocab, nseg, npos), ("input_ids", "segment_ids", "position_ids")):
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                bad = int(arr[(arr < 0) | (arr >= n)][0])
                raise self.error(f"{what} value {bad} is out of range for a table of {n} rows", EdgeDLError)
        return flat

    @staticmethod
    def _mask_index(mask, b):
        if mask is None:
            return np.zeros(b, np.int32)
        return (np.asarray(mask) == 1).sum(axis=1).astype(np.int32)

    def ref(self, ids, seg_ids, we, pe, se=None, gamma=None, beta=None, mask=None, pos_ids=None):
        b, s = ids.shape
        nseg = 0 if se is None else se.shape[0]
        i_w, i_s, i_p = self._indices(ids, seg_ids, pos_ids, we.shape[0], pe.shape[0], nseg)
        e = we[i_w] + pe[i_p]
        if se is not None:
            e = e + se[i_s]
        e64 = e.astype(np.float64)
        mean = e64.mean(axis=-1, keepdims=True)
        var = ((e64 - mean) ** 2).mean(axis=-1, keepdims=True)
        y = (e64 - mean) / np.sqrt(var + self.eps) * gamma.astype(np.float64)
        if beta is not None:
            y = y + beta.astype(np.float64)
        h = we.shape[1]
        return [y.astype(we.dtype).reshape(b, s, h), self._mask_index(mask, b), e.reshape(b, s, h)]

    def build(self, ins, outs, consts):
        ins = list(ins) + [None] * (9 - len(ins))
        if np.dtype(ins[2].dtype) != np.float32:
            return _ref_present_kernel(self)
        from ..kernels.cpu.contrib import embed_layer_norm

        present = _present_outputs(self)
        b, s = ins[0].shape
        h = ins[2].shape[1]
        eps = self.eps
        no_seg = np.zeros((0, h), np.float32)
        no_sum = np.zeros((0, h), np.float32)
        mask_index = self._mask_index

        def run(inputs, outputs, scratch):
            inputs = list(inputs) + [None] * (9 - len(inputs))
            ids, seg_ids, we, pe, se, gamma, beta, mask, pos_ids = inputs
            nseg = 0 if se is None else se.shape[0]
            i_w, i_s, i_p = self._indices(ids, seg_ids, pos_ids, we.shape[0], pe.shape[0], nseg)
            outs = dict(zip(present, outputs))
            y = outs[0].reshape(b * s, h) if 0 in outs else np.empty((b * s, h), np.float32)
            esum = outs[2].reshape(b * s, h) if 2 in outs else no_sum
            bt = np.zeros(h, np.float32) if beta is None else beta
            embed_layer_norm(i_w, i_s if se is not None else i_w, i_p, we, pe, no_seg if se is None else se,
                             gamma, bt, eps, y, esum)
            if 1 in outs:
                outs[1][...] = mask_index(mask, b)

        return Kernel(run)


# ----------------------------------------------------------------------------------------------------------
# Inverse

@register
class Inverse(Op):
    """com.microsoft Inverse: the inverse of each matrix over the last two axes."""

    op_type = "Inverse"
    domain = MS
    num_inputs = (1, 1)

    def infer(self, ins, consts):
        x = ins[0]
        require_dtype(self, x, _FLOATS, "X")
        if len(x.shape) < 2 or x.shape[-1] != x.shape[-2]:
            raise self.error(f"X must hold square matrices over its last two axes, got shape {tuple(x.shape)}")
        return [TensorType(x.shape, x.dtype)]

    def ref(self, x):
        if x.size == 0:
            return [x.copy()]
        try:
            y = np.linalg.inv(x.astype(np.float64))
        except np.linalg.LinAlgError:
            raise self.error("a matrix of X is singular: it has no inverse", EdgeDLError) from None
        return [y.astype(x.dtype)]


# ----------------------------------------------------------------------------------------------------------
# com.microsoft spellings of standard ops

@register
class TriluMicrosoft(Trilu):
    """com.microsoft Trilu: the standard Trilu."""

    domain = MS


@register
class RangeMicrosoft(Range):
    """com.microsoft Range: the standard Range with an optional delta (default 1)."""

    domain = MS
    num_inputs = (2, 3)
    DTYPES = ("float32", "float64", "int16", "int32", "int64")

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.stash = None

    @staticmethod
    def _with_delta(ins, consts):
        ins = list(ins) + [None] * (3 - len(ins))
        consts = list(consts) + [None] * (3 - len(consts))
        if ins[2] is None:
            ins[2] = ins[0]
            consts[2] = np.ones((), np.dtype(ins[0].dtype))
        return ins, consts

    def infer(self, ins, consts):
        return super().infer(*self._with_delta(ins, consts))

    def ref(self, start, limit, delta=None):
        if delta is None:
            delta = np.ones((), np.asarray(start).dtype)
        return super().ref(start, limit, delta)


@register
class GridSampleMicrosoft(GridSample):
    """com.microsoft GridSample: the standard GridSample with opset 16's semantics (4-D; bilinear, nearest,
    bicubic)."""

    domain = MS

    def __init__(self, node, opset):
        super().__init__(node, 16)


# ----------------------------------------------------------------------------------------------------------
# Rfft / Irfft

class _RealFFT(Op):
    num_inputs = (1, 1)
    inverse = False

    def __init__(self, node, opset):
        super().__init__(node, opset)
        nd = self.attr("signal_ndim", None if self.inverse else 1)
        if nd is None:
            raise self.error("the signal_ndim attribute is required")
        self.ndim = int(nd)
        if not 1 <= self.ndim <= 3:
            raise self.error(f"signal_ndim must be 1, 2 or 3, got {self.ndim}")
        if int(self.attr("onesided", 1)) != 1:
            raise self.unsupported("onesided must be 1 (only one-sided transforms are supported)")
        if int(self.attr("normalized", 0)) != 0:
            raise self.unsupported("normalized must be 0 (onnxruntime does not normalize either)")

    def infer(self, ins, consts):
        x = ins[0]
        require_dtype(self, x, _FLOATS, "X")
        extra = 1 if self.inverse else 0
        if len(x.shape) < self.ndim + extra:
            raise self.error(f"X of shape {tuple(x.shape)} has fewer than signal_ndim ({self.ndim})"
                             f"{' + 1' if extra else ''} axes")
        if self.inverse:
            if x.shape[-1] != 2:
                raise self.error(f"X's last axis must hold (real, imaginary), size 2; got shape {tuple(x.shape)}")
            m = x.shape[-2]
            if m < 1:
                raise self.error("the signal axis is empty")
            shape = tuple(x.shape[:-2]) + (2 * m - 1,)
        else:
            n = x.shape[-1]
            if n < 1:
                raise self.error("the signal axis is empty")
            shape = tuple(x.shape[:-1]) + (n // 2 + 1, 2)
        if int(np.prod(shape, dtype=np.int64)) > MAX_TENSOR_ELEMENTS:
            raise self.error(f"output shape {shape} is too large")
        return [TensorType(shape, x.dtype)]


@register
class Rfft(_RealFFT):
    """com.microsoft Rfft: one-sided FFT of a real signal over the last signal_ndim axes."""

    op_type = "Rfft"
    domain = MS

    def ref(self, x):
        axes = tuple(range(x.ndim - self.ndim, x.ndim))
        y = np.fft.rfftn(x.astype(np.float64), axes=axes)
        return [np.stack([y.real, y.imag], axis=-1).astype(x.dtype)]


@register
class Irfft(_RealFFT):
    """com.microsoft Irfft: the real inverse of a one-sided spectrum, 2m - 1 points on the last axis."""

    op_type = "Irfft"
    domain = MS
    inverse = True

    def ref(self, x):
        z = x[..., 0].astype(np.float64) + 1j * x[..., 1].astype(np.float64)
        axes = tuple(range(z.ndim - self.ndim, z.ndim))
        sizes = [z.shape[a] for a in axes[:-1]] + [2 * z.shape[-1] - 1]
        return [np.fft.irfftn(z, s=sizes, axes=axes).astype(x.dtype)]


__all__ = ["FusedConv", "FusedGemm", "FusedMatMul", "TransposeMatMul", "BiasAdd", "BiasSoftmax", "BiasDropout",
           "EmbedLayerNormalization", "Inverse", "TriluMicrosoft", "RangeMicrosoft", "GridSampleMicrosoft", "Rfft",
           "Irfft"]
