"""Post-training quantization of a float model: :func:`quantize`.

Static quantization writes the standard QDQ form (QuantizeLinear / DequantizeLinear pairs around float ops,
int8 weights and int32 biases behind DequantizeLinear), which is what :meth:`edgedl.Model.save` exports and
what onnxruntime loads; edgedl then runs it through the QDQ lowering pass (:mod:`edgedl.passes.qdq`) on int8
kernels with TFLite's fixed-point requantization (the ``edgedl.requant`` metadata).

Scheme: weights int8 symmetric ([-127, 127], zero point 0) per output channel (or per tensor), activations
int8 asymmetric per tensor, biases int32 with scale ``s_x * s_w[c]``. Conv / Gemm / MatMul outputs that only
feed a Relu or Clip are not quantized themselves: the activation becomes the output clamp. Layout ops
(Reshape, Transpose, MaxPool, ...) share their input's parameters so they run on int8 directly.

Dynamic quantization (``dynamic=True``) rewrites MatMul / Gemm with constant weights to the standard
``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` form: int8 weights ahead of time, activations
quantized per call from their own range (uint8).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgeDLError, InputError
from ..ir import Graph, Node, contiguous
from ..passes.qdq import LAYOUT_OPS, LUT_OPS, MS_LUT_OPS, is_quantized
from .calibrate import METHODS, as_feeds, choose_range, int8_params, observe

#: layout ops edgedl runs on int8 (a subset of what the lowering pass accepts: those with int8 paths)
_INT8_LAYOUT = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Pad", "Slice", "Resize",
                "Split", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Gather", "GatherElements", "GatherND",
                "ReverseSequence"}
#: (Trilu and CenterCropPad are left out: their zeros are exact on int8 only with a zero point of 0)
_FUSABLE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}


@dataclass
class QuantizationReport:
    """What :func:`quantize` did: the method, per-tensor float ranges and int8 parameters (scale, zero
    point), the nodes it quantized, and ``float_nodes``: the steps that still run in float between a
    DequantizeLinear and a QuantizeLinear (in the plan for default input shapes)."""

    method: str
    per_channel: bool
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    params: dict[str, tuple[float, int]] = field(default_factory=dict)
    quantized_nodes: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    calibration_feeds: int = 0


def copy_graph(g: Graph) -> Graph:
    """A copy whose node list, nodes and initializer dict can be changed without touching ``g`` (arrays are
    shared: passes replace them, never write into them)."""
    nodes = [Node(n.op_type, n.name, list(n.inputs), list(n.outputs), dict(n.attrs), n.domain) for n in g.nodes]
    return Graph(nodes, list(g.inputs), list(g.outputs), dict(g.initializers), g.opset, g.name, dict(g.metadata),
                 dict(g.domains), list(g.outer), list(g.overridable), list(g.state))


def source_graph(model) -> Graph:
    """The unoptimized graph of a Model, a path, bytes or an onnx.ModelProto."""
    from ..model import Model

    if isinstance(model, Model):
        return model.source if model.source is not None else model.graph
    from ..converters.onnx_import import import_onnx

    return import_onnx(model)


def _upgraded_to_13(g: Graph) -> Graph:
    """``g`` converted to opset 13 (quantization writes per-channel DequantizeLinear, an opset-13 form) with
    onnx's version converter, as onnxruntime's quantizer does for older models (PP-OCR ships opset 11 / 12)."""
    import onnx
    from onnx import version_converter

    from ..converters.onnx_export import export_graph
    from ..converters.onnx_import import import_onnx

    try:
        proto = version_converter.convert_version(export_graph(g), 13)
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - the converter fails in many ways on unusual graphs
        raise EdgeDLError(f"quantization needs opset >= 13 (per-channel DequantizeLinear); the model has opset "
                          f"{g.opset} and onnx's version converter could not upgrade it ({e}): convert it "
                          "yourself") from e
    return import_onnx(proto)


class _Builder:
    def __init__(self, g: Graph):
        self.g = g
        self.names = {t for n in g.nodes for t in (*n.inputs, *n.outputs) if t} | set(g.initializers) | {
            s.name for s in g.inputs}

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, base: str, value) -> str:
        name = self.fresh(base)
        self.g.initializers[name] = contiguous(value)  # (np.ascontiguousarray makes 0-d arrays 1-d)
        return name


def _dynamic_tensors(g: Graph) -> set[str]:
    dyn = {s.name for s in g.inputs}
    for n in g.nodes:
        if any(i in dyn for i in n.inputs if i):
            dyn.update(o for o in n.outputs if o)
    return dyn


def _is_const_f32(g: Graph, name: str, ndim: tuple[int, ...] | None = None) -> bool:
    v = g.initializers.get(name) if name else None
    return v is not None and v.dtype == np.float32 and (ndim is None or v.ndim in ndim)


def _is_int(types: dict, name: str) -> bool:
    return name in types and np.dtype(types[name].dtype).kind in "iu"


def _plan(g: Graph, types: dict, exclude: set[str]):
    """(quantized nodes, fused activation nodes, tensors to quantize in topological order, layout sharing
    map output -> input)."""
    dyn = _dynamic_tensors(g)

    def f32(t):
        return t in dyn and t in types and np.dtype(types[t].dtype) == np.float32

    consumers = g.consumers()
    outputs = {s.name for s in g.outputs}
    qnodes: list[Node] = []
    for n in g.nodes:
        ms_lut = n.domain == "com.microsoft" and n.op_type in MS_LUT_OPS and (
            n.op_type != "FastGelu" or len(n.inputs) < 2 or not n.inputs[1])  # FastGelu without its bias
        if (n.domain and not ms_lut) or n.name in exclude or not n.outputs or not f32(n.outputs[0]):
            continue
        op, ins = n.op_type, n.inputs
        ok = False
        if ms_lut:
            if f32(ins[0]):
                qnodes.append(n)
            continue
        if op in ("Conv", "ConvTranspose"):
            ok = f32(ins[0]) and _is_const_f32(g, ins[1], (3, 4)) and (len(ins) < 3 or not ins[2]
                                                                        or _is_const_f32(g, ins[2], (1,)))
        elif op == "Gemm":
            c_ok = len(ins) < 3 or not ins[2] or (_is_const_f32(g, ins[2]) and g.initializers[ins[2]].ndim <= 1)
            ok = f32(ins[0]) and _is_const_f32(g, ins[1], (2,)) and not n.attrs.get("transA", 0) and c_ok
        elif op == "MatMul":
            ok = f32(ins[0]) and _is_const_f32(g, ins[1], (2,))
        elif op in ("Add", "Mul"):
            ok = len(ins) == 2 and all(f32(i) or _is_const_f32(g, i) for i in ins) and any(f32(i) for i in ins)
        elif op == "Concat":
            ok = all(f32(i) for i in ins)
        elif op in ("GlobalAveragePool", "AveragePool"):
            ok = f32(ins[0])
        elif op in LUT_OPS:
            ok = f32(ins[0]) and all(not i or i in g.initializers for i in ins[1:])
        elif op in _INT8_LAYOUT and op in LAYOUT_OPS:
            # NOTE: integer operands (a Reshape's shape, Slice starts) may be computed (Shape -> Gather ->
            # Concat): they do not touch the data; a float operand (Pad's value, Resize's scales) must be constant
            ok = f32(ins[0]) and all(not i or i not in dyn or _is_int(types, i) for i in ins[1:]) and (
                len(n.outputs) == 1 or not any(n.outputs[1:]) or (op == "Split" and all(n.outputs)))
            if op == "Resize" and n.attrs.get("mode", "nearest") not in ("nearest", b"nearest"):
                ok = False
        if ok:
            qnodes.append(n)
    qset = {id(n) for n in qnodes}
    producers = g.producers()
    fused: set[int] = set()
    for n in qnodes:
        if n.op_type in ("Relu", "Clip"):
            p = producers.get(n.inputs[0])
            users = consumers.get(n.inputs[0], [])
            if p is not None and id(p) in qset and p.op_type in _FUSABLE and len(users) == 1 and \
                    n.inputs[0] not in outputs:
                fused.add(id(n))
    tensors: list[str] = []
    shared: dict[str, str] = {}
    seen: set[str] = set()

    def want(t):
        if t and t not in seen:
            seen.add(t)
            tensors.append(t)

    fused_inputs = {n.inputs[0] for n in qnodes if id(n) in fused}
    for n in qnodes:
        if n.op_type in _INT8_LAYOUT and n.op_type not in LUT_OPS:
            want(n.inputs[0])
            for o in (n.outputs if n.op_type == "Split" else n.outputs[:1]):
                shared[o] = n.inputs[0]
                want(o)
            continue
        if id(n) not in fused:
            for i in (n.inputs if n.op_type in ("Add", "Mul", "Concat") else n.inputs[:1]):
                if f32(i):
                    want(i)
        if n.outputs[0] not in fused_inputs:
            want(n.outputs[0])
    return qnodes, fused, tensors, shared


def symmetric_int8(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 symmetric weights in [-127, 127]: (q, scale) per channel along ``axis`` (or per tensor)."""
    w64 = w.astype(np.float64)
    if axis is None:
        amax = np.array(np.abs(w64).max() if w64.size else 0.0)
    else:
        amax = np.abs(np.moveaxis(w64, axis, 0)).reshape(w64.shape[axis], -1).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(w64 / scale.astype(np.float64).reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def _insert_qdq(g: Graph, qnodes, tensors, params, per_channel: bool) -> None:
    b = _Builder(g)
    producers = g.producers()
    graph_inputs = {s.name for s in g.inputs}
    x_of = {id(n): n.inputs[0] for n in qnodes}  # before graph inputs are renamed to their DQ outputs
    new_nodes: dict[int, list[Node]] = {}  # index of producer (-1: before everything) -> nodes after it
    index = {id(n): i for i, n in enumerate(g.nodes)}
    rename_consumers: dict[str, str] = {}
    for t in tensors:
        scale, zp = params[t]
        s_name = b.const(f"{t}_scale", np.array(scale, np.float32))
        z_name = b.const(f"{t}_zero_point", np.array(zp, np.int8))
        q_name = b.fresh(f"{t}_quantized")
        if t in graph_inputs:
            dq_out = b.fresh(f"{t}_dequantized")
            src, at = t, -1
            rename_consumers[t] = dq_out
        else:
            p = producers[t]
            src = b.fresh(f"{t}_float")
            p.outputs = [src if o == t else o for o in p.outputs]
            dq_out, at = t, index[id(p)]
        new_nodes.setdefault(at, []).extend([
            Node("QuantizeLinear", b.fresh(f"{t}_QuantizeLinear"), [src, s_name, z_name], [q_name]),
            Node("DequantizeLinear", b.fresh(f"{t}_DequantizeLinear"), [q_name, s_name, z_name], [dq_out])])
    for n in g.nodes:
        n.inputs = [rename_consumers.get(i, i) for i in n.inputs]
    # weights, biases and constant operands
    for n in qnodes:
        op = n.op_type
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            w = g.initializers[n.inputs[1]]
            axis = 0 if op == "Conv" or (op == "Gemm" and n.attrs.get("transB", 0)) else 1
            group = int(n.attrs.get("group", 1)) if op == "ConvTranspose" else 1
            channel_wise = per_channel and group == 1  # a grouped ConvTranspose's axis 1 is one group's outputs
            wq, ws = symmetric_int8(w, axis if channel_wise else None)
            n.inputs[1] = _dequantized(b, n.inputs[1], wq, ws, np.zeros(ws.shape, np.int8),
                                       axis if channel_wise else None, new_nodes, index[id(n)] - 1)
            if op in ("Conv", "ConvTranspose", "Gemm") and len(n.inputs) > 2 and n.inputs[2]:
                x_scale = params[x_of[id(n)]][0]
                bias = g.initializers[n.inputs[2]].astype(np.float64).reshape(-1)
                channels = w.shape[axis] * group
                # the bias in the accumulator's scale alpha * s_x * s_w[c]; a Gemm's beta is folded into it
                bias = np.broadcast_to(bias, (channels,)) * (float(n.attrs.get("beta", 1.0)) if op == "Gemm" else 1.0)
                alpha = float(n.attrs.get("alpha", 1.0)) if op == "Gemm" else 1.0
                bs = (np.float32(x_scale) * np.broadcast_to(ws.reshape(-1), (channels,)) * np.float32(alpha)).astype(
                    np.float32)
                bq = np.clip(np.rint(bias / bs.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
                if op == "Gemm":
                    n.attrs["beta"] = 1.0
                n.inputs[2] = _dequantized(b, n.inputs[2], bq, bs, np.zeros(bs.shape, np.int32), 0, new_nodes,
                                           index[id(n)] - 1)
        elif op in ("Add", "Mul"):
            for k, i in enumerate(n.inputs):
                if i in g.initializers:
                    c = g.initializers[i]
                    scale, zp = int8_params(float(c.min()), float(c.max()))
                    cq = np.clip(np.rint(c.astype(np.float64) / scale) + zp, -128, 127).astype(np.int8)
                    n.inputs[k] = _dequantized(b, i, cq, np.array(scale, np.float32), np.array(zp, np.int8), None,
                                               new_nodes, index[id(n)] - 1)
    ordered: list[Node] = list(new_nodes.get(-1, []))
    for i, n in enumerate(g.nodes):
        ordered.append(n)
        ordered.extend(new_nodes.get(i, []))
    g.nodes = ordered
    used = {i for n in g.nodes for i in n.inputs if i}
    for name in [k for k in g.initializers if k not in used]:
        del g.initializers[name]  # the float weights the int8 ones replaced
    g.validate_and_sort()


def _dequantized(b: _Builder, base: str, q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis, new_nodes,
                 at: int) -> str:
    q_name = b.const(f"{base}_quantized", q)
    s_name = b.const(f"{base}_scale", np.asarray(scale, np.float32))
    z_name = b.const(f"{base}_zero_point", np.asarray(zp))
    out = b.fresh(f"{base}_dequantized")
    attrs = {} if axis is None else {"axis": int(axis)}
    new_nodes.setdefault(at, []).append(Node("DequantizeLinear", b.fresh(f"{base}_DequantizeLinear"),
                                             [q_name, s_name, z_name], [out], attrs))
    return out


def _insert_dynamic(g: Graph, exclude: set[str], per_channel: bool) -> list[str]:
    """MatMul / Gemm with a constant float weight -> DynamicQuantizeLinear + MatMulInteger + scaling."""
    b = _Builder(g)
    done: list[str] = []
    dql: dict[str, tuple[str, str, str]] = {}
    out_nodes: list[Node] = []
    for n in g.nodes:
        if (n.domain or n.name in exclude or n.op_type not in ("MatMul", "Gemm")
                or not _is_const_f32(g, n.inputs[1], (2,))):
            out_nodes.append(n)
            continue
        if n.op_type == "Gemm" and (n.attrs.get("transA", 0) or (len(n.inputs) > 2 and n.inputs[2] and (
                not _is_const_f32(g, n.inputs[2]) or g.initializers[n.inputs[2]].ndim > 1))):
            out_nodes.append(n)
            continue
        w = g.initializers[n.inputs[1]]
        if n.op_type == "Gemm" and n.attrs.get("transB", 0):
            w = w.T
        if n.op_type == "Gemm" and float(n.attrs.get("alpha", 1.0)) != 1.0:
            w = w * np.float32(n.attrs["alpha"])
        wq, ws = symmetric_int8(np.ascontiguousarray(w), 1 if per_channel else None)
        x = n.inputs[0]
        if x not in dql:
            names = (b.fresh(f"{x}_quantized"), b.fresh(f"{x}_scale"), b.fresh(f"{x}_zero_point"))
            out_nodes.append(Node("DynamicQuantizeLinear", b.fresh(f"{x}_DynamicQuantizeLinear"), [x], list(names)))
            dql[x] = names
        xq, xs, xz = dql[x]
        wq_name = b.const(f"{n.inputs[1]}_quantized", wq)
        acc = b.fresh(f"{n.name}_int32")
        out_nodes.append(Node("MatMulInteger", b.fresh(f"{n.name}_MatMulInteger"),
                              [xq, wq_name, xz, b.const(f"{n.inputs[1]}_zero_point", np.zeros(ws.shape, np.int8))],
                              [acc]))
        acc_f = b.fresh(f"{n.name}_int32_float")
        out_nodes.append(Node("Cast", b.fresh(f"{n.name}_Cast"), [acc], [acc_f], {"to": 1}))
        scale = b.fresh(f"{n.name}_scale")
        w_scale = b.const(f"{n.inputs[1]}_scale", ws)
        out_nodes.append(Node("Mul", b.fresh(f"{n.name}_scale_Mul"), [xs, w_scale], [scale]))
        has_bias = n.op_type == "Gemm" and len(n.inputs) > 2 and n.inputs[2]
        y = n.outputs[0]
        scaled = b.fresh(f"{y}_unbiased") if has_bias else y
        out_nodes.append(Node("Mul", b.fresh(f"{n.name}_Mul"), [acc_f, scale], [scaled]))
        if has_bias:
            c = g.initializers[n.inputs[2]] * np.float32(n.attrs.get("beta", 1.0))
            out_nodes.append(Node("Add", b.fresh(f"{n.name}_Add"), [scaled, b.const(f"{n.inputs[2]}_scaled", c)], [y]))
        done.append(n.name)
    g.nodes = out_nodes
    g.validate_and_sort()
    return done


def quantize(model, calibration=None, *, method: str = "minmax", per_channel: bool = True, percentile: float = 99.99,
             rounding: str = "double", dynamic: bool = False, exclude=(), progress: bool = True,
             num_threads: int | None = None):
    """Quantize a float model to int8 and return the quantized :class:`edgedl.Model`.

    Parameters
    ----------
    model : Model, str, bytes or onnx.ModelProto
        The float model (a loaded Model or anything :func:`edgedl.load` accepts).
    calibration : iterable of feeds
        Representative inputs: dicts input name -> array, or arrays for single-input models. Iterated twice
        for the histogram methods (it is read into a list). Not needed with ``dynamic=True``.
    method : "minmax", "percentile", "entropy" or "mse"
        How each activation's range is chosen from what calibration saw (see :mod:`edgedl.quant.calibrate`).
    per_channel : bool
        Per-output-channel weight scales (default) or one scale per weight tensor.
    percentile : float
        The percentile of the "percentile" method.
    rounding : "double" or "single"
        TFLite's requantization rounding for the int8 kernels.
    dynamic : bool
        Dynamic quantization of MatMul / Gemm (no calibration).
    exclude : iterable of str
        Node names to keep in float.
    progress : bool
        Show a progress bar over the calibration batches.

    Returns
    -------
    Model
        The int8 model; ``model.quantization`` is a :class:`QuantizationReport` (per-tensor ranges and
        parameters), and ``model.save(path)`` writes it as standard QDQ ONNX.
    """
    from ..model import Model
    from ..passes import (
        fold_batchnorm,
        fold_conv_scalar_affine,
        fuse_hard_swish,
        fuse_swish,
        optimize,
        remove_identities,
    )

    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if rounding not in ("double", "single"):
        raise InputError(f"rounding must be 'double' or 'single', got {rounding!r}")
    g = copy_graph(source_graph(model))
    if is_quantized(g):
        raise EdgeDLError("the model is already quantized (it has QuantizeLinear/DequantizeLinear nodes)")
    if g.opset < 13:
        g = _upgraded_to_13(g)
    remove_identities(g)
    fold_batchnorm(g)
    fuse_hard_swish(g)  # one table in int8 rather than four requantized passes
    fuse_swish(g)  # ... and rather than a table and a requantized product
    fold_conv_scalar_affine(g)
    exclude = set(exclude)
    report = QuantizationReport("dynamic" if dynamic else method, per_channel)
    if dynamic:
        report.quantized_nodes = _insert_dynamic(g, exclude, per_channel)
    else:
        feeds = as_feeds(calibration, [s.name for s in g.inputs])
        float_model = Model(copy_graph(g))
        types = float_model.plan({k: np.asarray(v).shape for k, v in feeds[0].items()}, feeds[0]).types
        qnodes, _fused, tensors, shared = _plan(g, types, exclude)
        if not qnodes:
            raise EdgeDLError("nothing to quantize: the model has no Conv, Gemm, MatMul or other int8-capable op "
                              "on float32 activations")
        calibrated = [t for t in tensors if t not in shared]
        cal = observe(g, calibrated, feeds, histograms=method != "minmax", progress=progress)
        edges = {s.name for s in g.inputs} | {s.name for s in g.outputs}
        for t in calibrated:
            # the model's own inputs and outputs keep their full observed range: clipping a logit or an input
            # pixel changes the answer, not just its noise
            report.ranges[t] = choose_range(cal.stats[t], "minmax" if t in edges else method, percentile)
            report.params[t] = int8_params(*report.ranges[t])
        for t in tensors:  # layout outputs share their input's parameters (in topological order)
            if t in shared:
                report.params[t] = report.params[shared[t]]
                report.ranges[t] = report.ranges[shared[t]]
        _insert_qdq(g, qnodes, tensors, report.params, per_channel)
        report.quantized_nodes = [n.name for n in qnodes]
        report.calibration_feeds = cal.feeds
    g.metadata["edgedl.requant"] = rounding
    threads = num_threads if num_threads is not None else getattr(model, "num_threads", None)
    result = Model(optimize(copy_graph(g)), num_threads=threads, source=g)
    from .inspect import precision_summary

    try:
        report.float_nodes = [name for _op, name in precision_summary(result).float_islands]
    except EdgeDLError:  # a plan that needs input values: the summary waits for `edgedl info` on real feeds
        report.float_nodes = []
    result.quantization = report
    return result


__all__ = ["quantize", "QuantizationReport", "copy_graph", "source_graph"]
