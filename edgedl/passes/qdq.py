"""Lower QDQ models to int8 ops: ``DequantizeLinear -> float op -> QuantizeLinear`` becomes one op that runs
on the 8-bit tensors (the QOperator form), the way onnxruntime's QDQ transformers do.

Patterns (every scale and zero point a constant; activations per tensor, weights per tensor or per
output channel):

* Conv / ConvTranspose / MatMul / Gemm with DequantizeLinear'd constant weights (and a bias that is
  DQ(int32) or float) -> QLinearConv / edgedl.QLinearConvTranspose / QLinearMatMul / com.microsoft QGemm;
  a Relu or Clip between the op and its QuantizeLinear becomes a clamp of the output range (``_clamp``:
  exact, quantization is monotonic).
* Add, Mul -> com.microsoft QLinearAdd / QLinearMul (a fused Relu as above); Concat -> QLinearConcat;
  GlobalAveragePool / AveragePool -> QLinearGlobalAveragePool / QLinearAveragePool.
* Element-wise activations (Sigmoid, Tanh, HardSwish, HardSigmoid, LeakyRelu, Elu, Relu, Clip, ...)
  -> ``edgedl.QLinearLookup``: a 256-entry table built from the float op at prepare time.
  com.microsoft Gelu, FastGelu (no bias) and QuickGelu take the table of their default-domain twin
  (Gelu, Gelu approximate="tanh", Swish with QuickGelu's alpha).
* Layout ops (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, Split, Pad, MaxPool, nearest
  Resize, DepthToSpace, Expand, Tile, GatherElements, GatherND, ReverseSequence, ...) whose input and output
  quantization parameters are equal run directly on the 8-bit tensor: they move bytes, and
  ``Q(DQ(q)) == q``. Ops that also write zeros (Trilu, CenterCropPad: ``ZERO_FILL_OPS``) are exact only
  when the zero point is 0 (the real 0 is then the byte 0); with another zero point they stay float.
  MaxUnpool stays float (not a pure move of its input).

Whatever matches no pattern keeps its DequantizeLinear / QuantizeLinear nodes: it runs in float between
them, explicitly (``edgedl info`` lists those islands). The requantization mode of the new ops is the
``mode`` argument: ``"float"`` (ONNX / onnxruntime semantics) for imported models, ``"double"`` for models
edgedl quantized (marked by the ``edgedl.requant`` metadata).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, contiguous
from ..registry import lookup

#: ops that move 8-bit values without arithmetic: run on int8 when input and output share parameters
LAYOUT_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Pad", "MaxPool", "Resize",
              "Identity", "SpaceToDepth", "DepthToSpace", "Tile", "Expand", "GlobalMaxPool", "Gather",
              "GatherElements", "GatherND", "ReverseSequence", "Trilu", "CenterCropPad"}
#: layout ops that write the real value 0 where no input byte lands: 8-bit only with a zero point of 0
ZERO_FILL_OPS = {"Trilu", "CenterCropPad"}
#: element-wise float functions computed through a lookup table
LUT_OPS = {"Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Relu", "Clip", "Softplus",
           "Softsign", "Selu", "Celu", "Gelu", "Abs", "Neg", "Exp", "Log", "Sqrt", "Erf", "Mish", "ThresholdedRelu",
           "Swish", "Shrink", "Sin", "Cos", "Sign", "Tan", "Atan", "Sinh", "Cosh", "Asinh", "Floor", "Ceil",
           "Round"}
#: com.microsoft element-wise activations -> (the default-domain function of their table, its attributes)
MS_LUT_OPS = {"Gelu": ("Gelu", lambda a: {}),
              "FastGelu": ("Gelu", lambda a: {"approximate": "tanh"}),  # without its bias input only
              "QuickGelu": ("Swish", lambda a: {"alpha": float(a.get("alpha", 1.702))})}
#: activations that a preceding Conv/MatMul/Gemm/Add takes as an output clamp
CLAMPS = {"Relu", "Clip"}


@dataclass
class _QParams:
    """A DequantizeLinear's (or QuantizeLinear's) data tensor and constant parameters."""

    node: Node
    data: str
    scale: np.ndarray
    zp: np.ndarray
    scale_name: str
    zp_name: str
    axis: int

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    def same_as(self, other: _QParams) -> bool:
        return (self.per_tensor and other.per_tensor and float(self.scale.reshape(())) == float(other.scale.reshape(()))
                and int(self.zp.reshape(())) == int(other.zp.reshape(())) and self.zp.dtype == other.zp.dtype)


class _Lowering:
    def __init__(self, graph: Graph, mode: str):
        self.g = graph
        self.mode = mode
        self.outputs = {s.name for s in graph.outputs}
        self.count = 0
        #: id -> node of every node replaced (kept alive so that ids stay unique)
        self.removed: dict[int, Node] = {}
        self.refresh()

    # --- graph queries --------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.producers = self.g.producers()
        self.consumers = self.g.consumers()

    def const(self, name: str) -> np.ndarray | None:
        return self.g.initializers.get(name) if name else None

    def _params(self, node: Node, q_type: np.dtype | None) -> _QParams | None:
        if node.domain or len(node.inputs) < 2 or "block_size" in node.attrs and node.attrs["block_size"]:
            return None
        scale = self.const(node.inputs[1])
        zp_name = node.inputs[2] if len(node.inputs) > 2 else ""
        zp = self.const(zp_name) if zp_name else None
        if scale is None or (zp_name and zp is None) or scale.dtype != np.float32:
            return None
        if zp is None:
            zp = np.zeros(scale.shape, q_type or np.uint8)
            zp_name = ""
        if zp.size == 1 and scale.size == 1:
            zp, scale = zp.reshape(()), scale.reshape(())
        if zp.dtype not in (np.int8, np.uint8, np.int32) or zp.shape != scale.shape:
            return None
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            return None
        return _QParams(node, node.inputs[0], scale, zp, node.inputs[1], zp_name, int(node.attrs.get("axis", 1)))

    def dq(self, tensor: str) -> _QParams | None:
        """The DequantizeLinear producing ``tensor`` (its parameters constant), or None."""
        node = self.producers.get(tensor)
        if node is None or node.op_type != "DequantizeLinear" or id(node) in self.removed:
            return None
        p = self._params(node, None)
        if p is None:
            return None
        data = self.const(p.data)
        if data is not None and data.dtype != p.zp.dtype:
            return None
        return p

    def sole_q(self, tensor: str) -> _QParams | None:
        """The QuantizeLinear that is ``tensor``'s only consumer (per tensor, 8-bit), or None."""
        if tensor in self.outputs:
            return None
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or id(users[0]) in self.removed:
            return None
        q = users[0]
        out_dtype = None
        if "output_dtype" in q.attrs and q.attrs["output_dtype"]:
            from onnx import helper

            out_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(int(q.attrs["output_dtype"])))
        p = self._params(q, out_dtype)
        if p is None or not p.per_tensor or p.zp.dtype not in (np.int8, np.uint8):
            return None
        return p

    def sole_user(self, tensor: str) -> Node | None:
        if tensor in self.outputs:
            return None
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].inputs.count(tensor) == 1 else None

    def clamp_then_q(self, tensor: str) -> tuple[tuple[float, float] | None, Node | None, _QParams | None]:
        """An optional Relu/Clip (constant bounds) then a QuantizeLinear after ``tensor``."""
        q = self.sole_q(tensor)
        if q is not None:
            return None, None, q
        act = self.sole_user(tensor)
        if act is None or act.domain or act.op_type not in CLAMPS:
            return None, None, None
        bounds = self.clamp_bounds(act)
        if bounds is None:
            return None, None, None
        q = self.sole_q(act.outputs[0])
        return (bounds, act, q) if q is not None else (None, None, None)

    def clamp_bounds(self, act: Node) -> tuple[float, float] | None:
        if act.op_type == "Relu":
            return 0.0, float("inf")
        lo, hi = -float("inf"), float("inf")
        if "min" in act.attrs or "max" in act.attrs:  # Clip-6
            return float(act.attrs.get("min", lo)), float(act.attrs.get("max", hi))
        for i in (1, 2):
            name = act.inputs[i] if len(act.inputs) > i else ""
            if name:
                v = self.const(name)
                if v is None or v.size != 1:
                    return None
                if i == 1:
                    lo = float(v.reshape(()))
                else:
                    hi = float(v.reshape(()))
        return lo, hi

    # --- rewriting ------------------------------------------------------------------------------------
    def new_const(self, base: str, value: np.ndarray) -> str:
        name, k = base, 0
        while name in self.g.initializers or name in self.producers:
            k += 1
            name = f"{base}_{k}"
        self.g.initializers[name] = contiguous(value)  # (np.ascontiguousarray makes 0-d arrays 1-d)
        return name

    def zp_input(self, p: _QParams) -> str:
        return p.zp_name or self.new_const(f"{p.data}_zero_point", p.zp.copy())

    def replace(self, old: list[Node], new: Node) -> None:
        """Put ``new`` where the first of ``old`` was; drop the others."""
        first = min(i for i, n in enumerate(self.g.nodes) if any(n is o for o in old))
        self.g.nodes[first] = new
        for n in old:
            self.removed[id(n)] = n
        self.g.nodes = [n for i, n in enumerate(self.g.nodes) if i == first or id(n) not in self.removed]
        self.count += 1
        self.refresh()

    def attrs(self, extra: dict | None = None, clamp=None) -> dict:
        a = {"_requant": self.mode}
        if clamp is not None:
            a["_clamp"] = clamp
        if extra:
            a.update(extra)
        return a

    # --- patterns -------------------------------------------------------------------------------------
    def lower_linear(self, node: Node) -> bool:
        """Conv / MatMul / Gemm with quantized input and constant quantized weight."""
        if len(node.inputs) < 2:
            return False
        x = self.dq(node.inputs[0])
        w = self.dq(node.inputs[1])
        if x is None or w is None or not x.per_tensor or self.const(w.data) is None:
            return False
        if x.zp.dtype not in (np.int8, np.uint8) or w.zp.dtype not in (np.int8, np.uint8):
            return False
        wdata = self.const(w.data)
        out_axis = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1,
                    "Gemm": 0 if node.attrs.get("transB", 0) else 1}[node.op_type]
        group = int(node.attrs.get("group", 1))
        if node.op_type == "ConvTranspose" and (group > 1 and not w.per_tensor or
                                                lookup("QLinearConvTranspose", "edgedl") is None):
            return False  # per-channel scales of a grouped ConvTranspose cover one group only
        if node.op_type == "Gemm" and (node.attrs.get("transA", 0) or wdata.ndim != 2):
            return False
        if node.op_type == "MatMul" and wdata.ndim != 2:
            return False
        if not w.per_tensor and (w.axis % wdata.ndim) != out_axis:
            return False
        clamp, act, q = self.clamp_then_q(node.outputs[0])
        if q is None:
            return False
        channels = wdata.shape[out_axis] * (group if node.op_type == "ConvTranspose" else 1)
        bias_name = ""
        has_bias = node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 and node.inputs[2]
        alpha = float(node.attrs.get("alpha", 1.0)) if node.op_type == "Gemm" else 1.0
        beta = float(node.attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
        if has_bias:
            real = self.real_value(node.inputs[2])
            if real is None or real.size not in (1, channels) or (real.ndim == 2 and real.shape[0] != 1):
                return False
            acc_scale = (np.float64(alpha) * np.float64(x.scale.reshape(()))
                         * np.broadcast_to(w.scale.astype(np.float64).reshape(-1), (channels,)))
            bias = np.rint(beta * np.broadcast_to(real.reshape(-1).astype(np.float64), (channels,)) / acc_scale)
            bias_name = self.new_const(f"{node.name}_bias_int32",
                                       np.clip(bias, -2**31, 2**31 - 1).astype(np.int32))
        ins = [x.data, x.scale_name, self.zp_input(x), w.data, w.scale_name, self.zp_input(w), q.scale_name,
               self.zp_input(q)]
        keep = {k: v for k, v in node.attrs.items() if not k.startswith("_")}
        if node.op_type == "Conv":
            new = Node("QLinearConv", node.name, ins + ([bias_name] if bias_name else []), [q.node.outputs[0]],
                       self.attrs(keep, clamp))
        elif node.op_type == "ConvTranspose":
            new = Node("QLinearConvTranspose", node.name, ins + ([bias_name] if bias_name else []),
                       [q.node.outputs[0]], self.attrs(keep, clamp), domain="edgedl")
        elif node.op_type == "MatMul":
            new = Node("QLinearMatMul", node.name, ins, [q.node.outputs[0]], self.attrs(None, clamp))
        else:
            gemm_attrs = {"alpha": alpha, "transA": 0, "transB": int(node.attrs.get("transB", 0))}
            new = Node("QGemm", node.name, ins[:6] + [bias_name] + ins[6:], [q.node.outputs[0]],
                       self.attrs(gemm_attrs, clamp), domain="com.microsoft")
        self.replace([node] + ([act] if act is not None else []) + [q.node], new)
        return True

    def real_value(self, tensor: str) -> np.ndarray | None:
        """A constant float tensor, or the dequantized value of DQ(constant)."""
        v = self.const(tensor)
        if v is not None:
            return v.astype(np.float64) if v.dtype.kind == "f" else None
        p = self.dq(tensor)
        if p is None or self.const(p.data) is None:
            return None
        data = self.const(p.data).astype(np.float64)
        shape = [1] * data.ndim
        if not p.per_tensor and data.ndim:
            shape[p.axis % data.ndim] = -1
        return (data - p.zp.astype(np.float64).reshape(shape)) * p.scale.astype(np.float64).reshape(shape)

    def lower_binary(self, node: Node) -> bool:
        a, b = self.dq(node.inputs[0]), self.dq(node.inputs[1]) if len(node.inputs) > 1 else None
        if a is None or b is None or not (a.per_tensor and b.per_tensor):
            return False
        if a.zp.dtype not in (np.int8, np.uint8) or b.zp.dtype != a.zp.dtype:
            return False
        clamp, act, q = self.clamp_then_q(node.outputs[0]) if node.op_type == "Add" else (None, None,
                                                                                           self.sole_q(node.outputs[0]))
        if q is None or q.zp.dtype != a.zp.dtype:
            return False
        op = "QLinearAdd" if node.op_type == "Add" else "QLinearMul"
        if lookup(op, "com.microsoft") is None:
            return False
        ins = [a.data, a.scale_name, self.zp_input(a), b.data, b.scale_name, self.zp_input(b), q.scale_name,
               self.zp_input(q)]
        new = Node(op, node.name, ins, [q.node.outputs[0]], self.attrs(None, clamp), domain="com.microsoft")
        self.replace([node] + ([act] if act is not None else []) + [q.node], new)
        return True

    def lower_concat(self, node: Node) -> bool:
        parts = [self.dq(i) for i in node.inputs]
        q = self.sole_q(node.outputs[0])
        if q is None or any(p is None or not p.per_tensor or p.zp.dtype != q.zp.dtype for p in parts):
            return False
        if lookup("QLinearConcat", "com.microsoft") is None:
            return False
        ins = [q.scale_name, self.zp_input(q)]
        for p in parts:
            ins += [p.data, p.scale_name, self.zp_input(p)]
        new = Node("QLinearConcat", node.name, ins, [q.node.outputs[0]],
                   self.attrs({"axis": node.attrs.get("axis", 0)}), domain="com.microsoft")
        self.replace([node, q.node], new)
        return True

    def lower_unary(self, node: Node, op: str, extra_attrs: dict, replaces: Node | None = None) -> bool:
        """x -> f -> y with per-tensor parameters: a com.microsoft or edgedl op on (x, xs, xz, ys, yz, ...).
        ``replaces``: the graph's node when ``node`` is a stand-in for it (a com.microsoft activation)."""
        x = self.dq(node.inputs[0])
        q = self.sole_q(node.outputs[0]) if len(node.outputs) == 1 or not any(node.outputs[1:]) else None
        if x is None or q is None or not x.per_tensor or x.zp.dtype != q.zp.dtype or x.zp.dtype == np.int32:
            return False
        domain = "edgedl" if op == "QLinearLookup" else "com.microsoft"
        if lookup(op, domain) is None:
            return False
        rest = list(node.inputs[1:]) if op == "QLinearLookup" else []
        if any(r and self.const(r) is None for r in rest):
            return False
        ins = [x.data, x.scale_name, self.zp_input(x), q.scale_name, self.zp_input(q)] + rest
        new = Node(op, node.name, ins, [q.node.outputs[0]], self.attrs(extra_attrs), domain=domain)
        if op == "QLinearLookup" and not self.table_ok(new, x, q):
            return False
        self.replace([replaces or node, q.node], new)
        return True

    def table_ok(self, new: Node, x: _QParams, q: _QParams) -> bool:
        """Whether ``new`` (a QLinearLookup) builds its table: a function that gives NaN on some input byte
        (Log or Sqrt of a negative value, ...) or that the float op refuses stays float, as onnxruntime runs it."""
        from ..errors import EdgeDLError
        from ..ir import TensorType

        cls = lookup("QLinearLookup", "edgedl")
        consts = [None, x.scale, x.zp, q.scale, q.zp] + [self.const(i) if i else None for i in new.inputs[5:]]
        ins = [TensorType((256,), x.zp.dtype)] + [None if v is None else TensorType(v.shape, v.dtype)
                                                   for v in consts[1:]]
        try:
            cls(new, self.g.opset).table(consts, ins, q.zp.dtype)
        except (EdgeDLError, ValueError, TypeError, ArithmeticError):
            return False
        return True

    def lower_layout(self, node: Node) -> bool:
        x = self.dq(node.inputs[0])
        if x is None or not x.per_tensor or x.zp.dtype == np.int32:
            return False
        # NOTE: a shape/index input computed at run time (Shape -> Gather -> Concat -> Reshape) is fine: the
        # op reads it the same for 8-bit data; only Pad's fill value must be a constant (checked below)
        if node.op_type == "Split":  # every output quantized with the input's parameters
            qs = [self.sole_q(o) for o in node.outputs]
            if not all(o for o in node.outputs) or any(q is None or not x.same_as(q) for q in qs):
                return False
            new = Node("Split", node.name, [x.data] + list(node.inputs[1:]), [q.node.outputs[0] for q in qs],
                       dict(node.attrs))
            self.replace([node] + [q.node for q in qs], new)
            return True
        if len(node.outputs) > 1 and any(node.outputs[1:]):
            return False
        if node.op_type == "Resize" and node.attrs.get("mode", "nearest") not in ("nearest", b"nearest"):
            return False
        q = self.sole_q(node.outputs[0])
        if q is None or not x.same_as(q):
            return False
        if node.op_type in ZERO_FILL_OPS and int(x.zp.reshape(())) != 0:
            return False  # its zeros would be the byte 0, not the real 0 (the byte zero_point)
        ins = [x.data] + list(node.inputs[1:])
        if node.op_type == "Pad" and node.attrs.get("mode", "constant") in ("constant", b"constant"):
            value = self.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.float32(0)
            if value is None:
                return False
            qv = np.clip(np.rint(np.float32(value) / x.scale.reshape(())) + int(x.zp.reshape(())),
                         np.iinfo(x.zp.dtype).min, np.iinfo(x.zp.dtype).max).astype(x.zp.dtype)
            ins = ins[:2] + [self.new_const(f"{node.name}_pad_value", np.asarray(qv).reshape(()))] + ins[3:]
        new = Node(node.op_type, node.name, ins, [q.node.outputs[0]], dict(node.attrs), node.domain)
        self.replace([node, q.node], new)
        return True

    def lower_node(self, node: Node) -> bool:
        if id(node) in self.removed:
            return False
        if node.domain == "com.microsoft" and node.op_type in MS_LUT_OPS:
            if node.op_type == "FastGelu" and len(node.inputs) > 1 and node.inputs[1]:
                return False  # Gelu(x + bias): not a function of x alone
            fn, attrs = MS_LUT_OPS[node.op_type]
            twin = Node(node.op_type, node.name, node.inputs[:1], node.outputs, {**attrs(node.attrs),
                                                                                 "function": fn})
            return self.lower_unary(twin, "QLinearLookup", twin.attrs, replaces=node)
        if node.domain:
            return False
        op = node.op_type
        if op in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            return self.lower_linear(node)
        if op in ("Add", "Mul") and len(node.inputs) == 2:
            return self.lower_binary(node)
        if op == "Concat":
            return self.lower_concat(node)
        if op == "GlobalAveragePool":
            return self.lower_unary(node, "QLinearGlobalAveragePool", {"channels_last": 0})
        if op == "AveragePool":
            return self.lower_unary(node, "QLinearAveragePool", {k: v for k, v in node.attrs.items()})
        if op in LAYOUT_OPS:
            return self.lower_layout(node)
        if op in LUT_OPS:
            attrs = {k: v for k, v in node.attrs.items()}
            attrs["function"] = op
            return self.lower_unary(node, "QLinearLookup", attrs)
        return False

    def remove_dead_dequantize(self) -> None:
        """DequantizeLinear nodes (of weights, mostly) nobody reads any more."""
        while True:
            used = {i for n in self.g.nodes for i in n.inputs if i} | self.outputs
            dead = [n for n in self.g.nodes if n.op_type == "DequantizeLinear" and not n.domain
                    and not any(o in used for o in n.outputs if o)]
            if not dead:
                break
            ids = {id(n) for n in dead}
            self.g.nodes = [n for n in self.g.nodes if id(n) not in ids]
        used = {i for n in self.g.nodes for i in n.inputs if i} | self.outputs
        for name in [k for k in self.g.initializers if k not in used]:
            del self.g.initializers[name]


def is_quantized(graph: Graph) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and not n.domain for n in graph.nodes)


def lower_qdq(graph: Graph, mode: str | None = None) -> int:
    """Rewrite the QDQ patterns of ``graph`` into int8 ops, in place; returns how many were rewritten.

    ``mode`` is the requantization mode of the new ops; by default ``graph.metadata["edgedl.requant"]``
    (set on models edgedl quantized) or ``"float"`` (onnxruntime's semantics) for imported models."""
    if not is_quantized(graph):
        return 0
    mode = mode or graph.metadata.get("edgedl.requant", "float")
    low = _Lowering(graph, mode)
    progress = True
    while progress:
        progress = False
        for node in list(graph.nodes):
            if id(node) in low.removed:
                continue
            if low.lower_node(node):
                progress = True
    low.remove_dead_dequantize()
    return low.count


__all__ = ["lower_qdq", "is_quantized", "LAYOUT_OPS", "LUT_OPS", "MS_LUT_OPS", "ZERO_FILL_OPS"]
