"""A graph of int8 operators (QOperator form: QLinearConv, com.microsoft QGemm / QLinearAdd / QLinearMul /
QLinearAveragePool / QLinearSoftmax / QLinearSigmoid, edgedl's QLinearLookup and QLinearBinary, as an imported
full-integer TFLite model has them) rewritten in QDQ form: each one becomes
DequantizeLinear on its inputs, the float operator (with its fused activation as a Relu / Clip node), and
QuantizeLinear on its output. Weights stay int8 constants behind a per-channel DequantizeLinear; int32 biases
dequantize with scale ``x_scale * w_scale``.

The QDQ graph is what quantization-aware training starts from (:mod:`edgedl.train.qat`) and what
:meth:`edgedl.Model.save` writes: standard ONNX, which onnxruntime and edgedl run with ONNX's rounding (ties to
even, float requantization), so its results may differ from the TFLite kernels' by one step of the output's
scale. edgedl's internal attributes (``_requant``, ``_clamp``, ``_round``) are dropped.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import Graph, Node, attr_text

_MS = "com.microsoft"
#: QOperator op -> (float op, input slots (data, scale, zero point) of its operands, output scale, zero point)
_BINARY = {"QLinearAdd": "Add", "QLinearMul": "Mul"}
_INTERNAL = ("_requant", "_clamp", "_round", "_mean", "_beta", "_tflite", "_log")


def has_qoperator_nodes(graph: Graph) -> bool:
    return any(_kind(n) is not None for n in graph.nodes)


def _kind(n: Node) -> str | None:
    if n.op_type == "QLinearConv" and n.domain in ("", "ai.onnx"):
        return "conv"
    if n.op_type == "QLinearMatMul" and n.domain in ("", "ai.onnx"):
        return "QLinearMatMul"
    if n.domain == _MS and n.op_type in ("QGemm", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax",
                                         "QLinearSigmoid", *_BINARY):
        return n.op_type
    if n.domain == "edgedl" and n.op_type in ("QLinearLookup", "QLinearBinary", "QLinearReduce"):
        return n.op_type
    return None


def qoperator_to_qdq(graph: Graph) -> Graph:
    """A copy of ``graph`` in QDQ form (see the module docstring)."""
    from .quantize_model import copy_graph

    g = copy_graph(graph)
    inits = g.initializers
    count = [0]

    def name(base: str) -> str:
        count[0] += 1
        return f"{base}__qdq{count[0]}"

    def const(base: str, value) -> str:
        n = name(base)
        inits[n] = np.asarray(value)
        return n

    def scalar(tensor: str) -> float:
        if tensor not in inits:
            raise EdgeDLError(f"the quantization parameter {tensor!r} must be a constant to convert to QDQ")
        return inits[tensor]

    nodes: list[Node] = []

    def dq(x: str, scale: str, zp: str, axis: int | None = None) -> str:
        out = name(f"{x}_dq")
        nodes.append(Node("DequantizeLinear", name("DequantizeLinear"), [x, scale, zp], [out],
                          {} if axis is None else {"axis": axis}))
        return out

    def finish(n: Node, yf: str, y: str, ys: str, yz: str) -> None:
        clamp = n.attrs.get("_clamp")
        if clamp is not None:
            lo, hi = float(clamp[0]), float(clamp[1])
            act = name("activation")
            if lo == 0.0 and np.isinf(hi):
                nodes.append(Node("Relu", name("Relu"), [yf], [act]))
            else:
                nodes.append(Node("Clip", name("Clip"), [yf, const("min", np.float32(lo)),
                                                         const("max", np.float32(hi))], [act]))
            yf = act
        nodes.append(Node("QuantizeLinear", name("QuantizeLinear"), [yf, ys, yz], [y]))

    def bias(b: str, x_scale: str, w_scale: str) -> str:
        scale = (np.float32(scalar(x_scale)).reshape(()) * np.asarray(scalar(w_scale), np.float32)).astype(
            np.float32).reshape(-1)
        return dq(b, const(f"{b}_scale", scale), const(f"{b}_zp", np.zeros(scale.size, np.int32)), axis=0)

    for n in g.nodes:
        kind = _kind(n)
        attrs = {k: v for k, v in n.attrs.items() if k not in _INTERNAL}
        if kind is None:
            if n.op_type == "QuantizeLinear" and "_round" in n.attrs:  # ONNX rounds ties to even
                n = Node(n.op_type, n.name, n.inputs, n.outputs, attrs, n.domain)
            nodes.append(n)
            continue
        ins = list(n.inputs) + [""] * 9
        y = n.outputs[0]
        yf = name(f"{y}_float")
        if kind == "conv":  # x, xs, xz, w, ws, wz, ys, yz, [b]
            args = [dq(ins[0], ins[1], ins[2]), dq(ins[3], ins[4], ins[5], axis=0)]
            if ins[8]:
                args.append(bias(ins[8], ins[1], ins[4]))
            nodes.append(Node("Conv", name("Conv"), args, [yf], attrs))
            finish(n, yf, y, ins[6], ins[7])
        elif kind == "QGemm":  # a, as, az, b, bs, bz, [c, ys, yz]
            if not ins[7]:
                raise EdgeDLError(f"{n.describe()}: a QGemm with a float output has no QDQ form here")
            axis = 0 if int(attrs.get("transB", 0)) else 1
            args = [dq(ins[0], ins[1], ins[2]), dq(ins[3], ins[4], ins[5], axis=axis)]
            if ins[6]:
                args.append(bias(ins[6], ins[1], ins[4]))
            nodes.append(Node("Gemm", name("Gemm"), args, [yf], {k: v for k, v in attrs.items()
                                                                   if k in ("transA", "transB", "alpha")}))
            finish(n, yf, y, ins[7], ins[8])
        elif kind == "QLinearSoftmax":  # x, xs, xz, ys, yz (TFLite's beta scales the input)
            xf = dq(ins[0], ins[1], ins[2])
            beta = float(n.attrs.get("_beta", 1.0))
            if beta != 1.0:
                scaled = name("scaled")
                nodes.append(Node("Mul", name("Mul"), [xf, const("beta", np.float32(beta))], [scaled]))
                xf = scaled
            nodes.append(Node("LogSoftmax" if n.attrs.get("_log") else "Softmax", name("Softmax"), [xf], [yf],
                              {"axis": int(attrs.get("axis", -1))}))
            finish(n, yf, y, ins[3], ins[4])
        elif kind == "QLinearSigmoid":  # x, xs, xz, ys, yz
            nodes.append(Node("Sigmoid", name("Sigmoid"), [dq(ins[0], ins[1], ins[2])], [yf]))
            finish(n, yf, y, ins[3], ins[4])
        elif kind == "QLinearGlobalAveragePool":  # x, xs, xz, ys, yz
            nodes.append(Node("GlobalAveragePool", name("GlobalAveragePool"), [dq(ins[0], ins[1], ins[2])], [yf]))
            finish(n, yf, y, ins[3], ins[4])
        elif kind == "QLinearAveragePool":  # x, xs, xz, ys, yz
            nodes.append(Node("AveragePool", name("AveragePool"), [dq(ins[0], ins[1], ins[2])], [yf],
                              {k: v for k, v in attrs.items() if k != "channels_last"}))
            finish(n, yf, y, ins[3], ins[4])
        elif kind == "QLinearMatMul":  # a, as, az, b, bs, bz, ys, yz
            axis = None if np.asarray(scalar(ins[4])).size == 1 else -1
            nodes.append(Node("MatMul", name("MatMul"), [dq(ins[0], ins[1], ins[2]), dq(ins[3], ins[4], ins[5], axis)],
                              [yf]))
            finish(n, yf, y, ins[6], ins[7])
        elif kind == "QLinearReduce":  # x, xs, xz, ys, yz; function, axes, keepdims
            fn = attr_text(attrs.pop("function"))
            axes = [int(a) for a in attrs.pop("axes")]
            if fn == "ReduceSum":  # axes are an input from opset 13, an attribute of the others up to opset 17
                nodes.append(Node(fn, name(fn), [dq(ins[0], ins[1], ins[2]), const("axes", np.array(axes, np.int64))],
                                  [yf], attrs))
            else:
                nodes.append(Node(fn, name(fn), [dq(ins[0], ins[1], ins[2])], [yf], {**attrs, "axes": axes}))
            finish(n, yf, y, ins[3], ins[4])
        elif kind == "QLinearLookup":  # x, xs, xz, ys, yz, the float function's constant inputs
            fn = attr_text(attrs.pop("function"))
            nodes.append(Node(fn, name(fn), [dq(ins[0], ins[1], ins[2]), *n.inputs[5:]], [yf], attrs))
            finish(n, yf, y, ins[3], ins[4])
        elif kind == "QLinearBinary":  # a, as, az, b, bs, bz, ys, yz; function Sub, Max, Min, PRelu, SquaredDifference
            fn = attr_text(attrs.pop("function"))
            a, b = dq(ins[0], ins[1], ins[2]), dq(ins[3], ins[4], ins[5])
            if fn == "SquaredDifference":
                d = name("difference")
                nodes.append(Node("Sub", name("Sub"), [a, b], [d]))
                nodes.append(Node("Mul", name("Mul"), [d, d], [yf]))
            else:
                nodes.append(Node(fn, name(fn), [a, b], [yf]))
            finish(n, yf, y, ins[6], ins[7])
        else:  # QLinearAdd / QLinearMul: a, as, az, b, bs, bz, ys, yz
            nodes.append(Node(_BINARY[kind], name(_BINARY[kind]), [dq(ins[0], ins[1], ins[2]),
                                                                    dq(ins[3], ins[4], ins[5])], [yf]))
            finish(n, yf, y, ins[6], ins[7])
    g.nodes = nodes
    _float_data_movement(g, name)
    g.metadata.pop("edgedl.requant", None)
    return g


def _float_data_movement(g: Graph, name) -> None:
    """Data movement on int8 codes between a QuantizeLinear and its DequantizeLinear (MaxPool, Transpose,
    Reshape, Pad, Concat...: the same on codes and on values, as the tensors share one quantization) moves to
    float: DequantizeLinear before it, QuantizeLinear with the same parameters after it. Every QuantizeLinear then
    feeds DequantizeLinear nodes only, the QDQ form quantization-aware training reads."""
    qparams: dict[str, tuple[str, str]] = {}  # int8 tensor -> (scale, zero point) of the codes it holds
    nodes: list[Node] = []
    for n in g.nodes:
        if n.op_type == "QuantizeLinear" and not n.domain:
            qparams[n.outputs[0]] = (n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else "")
            nodes.append(n)
            continue
        coded = [i for i in n.inputs if i in qparams]
        if n.op_type == "DequantizeLinear" or not coded:
            nodes.append(n)
            continue
        scale, zp = qparams[coded[0]]
        inputs = []
        for k, i in enumerate(n.inputs):
            if i in qparams:
                f = name(f"{i}_float")
                nodes.append(Node("DequantizeLinear", name("DequantizeLinear"), [i, *qparams[i]], [f]))
                inputs.append(f)
            elif n.op_type == "Pad" and k == 2 and i:  # the pad value was the zero point: a real 0
                inputs.append("")
            else:
                inputs.append(i)
        outputs = [name(f"{o}_float") if o else "" for o in n.outputs]
        nodes.append(Node(n.op_type, n.name, inputs, outputs, dict(n.attrs), n.domain))
        for o, f in zip(n.outputs, outputs):
            if o:
                nodes.append(Node("QuantizeLinear", name("QuantizeLinear"), [f, scale, zp], [o]))
                qparams[o] = (scale, zp)
    g.nodes = nodes
