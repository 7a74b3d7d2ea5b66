"""Fold BatchNormalization into the preceding Conv/Gemm, fuse activations into their epilogue, and the exported
exact GELU chain (Div/Mul, Erf, Add, Mul, Mul) into one Gelu (:func:`fuse_gelu`).

A fused activation is recorded on the producing node as ``attrs["_activation"] = (kind, alpha, beta)``;
ops that accept it list ``"_activation"`` support through ``FUSABLE_PRODUCERS``. A residual ``Add`` after
a Conv becomes the Conv's fourth input with ``attrs["_residual"] = True`` (:func:`fuse_residual_add`).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, contiguous

#: ops whose kernels apply an activation in their epilogue
FUSABLE_PRODUCERS = {"Conv", "ConvTranspose", "Gemm"}

#: activation op -> default (alpha, beta)
ACTIVATIONS = {
    "Relu": (0.0, 0.0),
    "LeakyRelu": (0.01, 0.0),
    "HardSwish": (0.0, 0.0),
    "Sigmoid": (0.0, 0.0),
    "HardSigmoid": (0.2, 0.5),
    "Tanh": (0.0, 0.0),
    "Elu": (1.0, 0.0),
    "Clip": (-np.inf, np.inf),
    "Swish": (1.0, 0.0),
}


def _sole_consumer(graph: Graph, tensor: str, outputs: set[str]) -> Node | None:
    if tensor in outputs:
        return None
    users = [n for n in graph.nodes if tensor in n.inputs]
    return users[0] if len(users) == 1 and users[0].inputs.count(tensor) == 1 else None


def _const(graph: Graph, name: str) -> np.ndarray | None:
    return graph.initializers.get(name) if name else None


def _new_name(graph: Graph, base: str) -> str:
    name, k = base, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}_{k}"
    return name


def fold_batchnorm(graph: Graph) -> int:
    """Conv/Gemm followed by an inference BatchNormalization with constant parameters: fold the affine
    transform into the weights and bias. Returns how many were folded."""
    outputs = {s.name for s in graph.outputs}
    producers = graph.producers()
    folded = 0
    for bn in list(graph.nodes):
        if bn.op_type != "BatchNormalization" or bn.domain or len(bn.outputs) > 1 and any(bn.outputs[1:]):
            continue
        if bn.attrs.get("training_mode", 0):
            continue
        params = [_const(graph, n) for n in bn.inputs[1:5]]
        if len(params) != 4 or any(p is None for p in params):
            continue
        prod = producers.get(bn.inputs[0])
        if prod is None or prod.domain or _sole_consumer(graph, bn.inputs[0], outputs) is not bn:
            continue
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        eps = float(bn.attrs.get("epsilon", 1e-5))
        s = scale / np.sqrt(var + eps)
        t = shift - mean * s
        if prod.op_type == "Conv" and "_activation" not in prod.attrs and "_residual" not in prod.attrs:
            w = _const(graph, prod.inputs[1]) if len(prod.inputs) > 1 else None
            if w is None or w.dtype != np.float32 or w.ndim < 3 or w.shape[0] != s.shape[0]:
                continue
            b = _const(graph, prod.inputs[2]) if len(prod.inputs) > 2 and prod.inputs[2] else None
            if len(prod.inputs) > 2 and prod.inputs[2] and b is None:
                continue
            new_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
            new_b = ((b.astype(np.float64) if b is not None else 0.0) * s + t).astype(np.float32)
        elif prod.op_type == "Gemm" and "_activation" not in prod.attrs:
            w = _const(graph, prod.inputs[1])
            if w is None or w.dtype != np.float32 or w.ndim != 2:
                continue
            trans_b = int(prod.attrs.get("transB", 0))
            n_out = w.shape[0] if trans_b else w.shape[1]
            if n_out != s.shape[0]:
                continue
            alpha = float(prod.attrs.get("alpha", 1.0))
            beta = float(prod.attrs.get("beta", 1.0))
            c = _const(graph, prod.inputs[2]) if len(prod.inputs) > 2 and prod.inputs[2] else None
            if len(prod.inputs) > 2 and prod.inputs[2] and (c is None or c.size not in (1, n_out) or c.ndim > 1
                                                            and c.shape[0] != 1):
                continue
            ws = w.astype(np.float64) * alpha
            ws = ws * (s[:, None] if trans_b else s[None, :])
            new_w = ws.astype(np.float32)
            c_vec = np.broadcast_to(c.reshape(-1).astype(np.float64) * beta, (n_out,)) if c is not None else 0.0
            new_b = (c_vec * s + t).astype(np.float32)
            prod.attrs["alpha"] = 1.0
            prod.attrs["beta"] = 1.0
        else:
            continue
        w_name = _new_name(graph, prod.inputs[1] + "_bnfolded")
        b_name = _new_name(graph, prod.name + "_bnfolded_bias")
        graph.initializers[w_name] = contiguous(new_w)
        graph.initializers[b_name] = contiguous(new_b)
        prod.inputs = [prod.inputs[0], w_name, b_name]
        prod.outputs = [bn.outputs[0]]
        graph.nodes.remove(bn)
        folded += 1
    _drop_unused_initializers(graph)
    return folded


def _activation_params(graph: Graph, node: Node) -> tuple[float, float] | None:
    alpha, beta = ACTIVATIONS[node.op_type]
    if node.op_type == "Clip":
        if "min" in node.attrs or "max" in node.attrs:
            return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
        lo = _const(graph, node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else np.array(-np.inf)
        hi = _const(graph, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.array(np.inf)
        if lo is None or hi is None or lo.size != 1 or hi.size != 1:
            return None
        return float(lo.reshape(())), float(hi.reshape(()))
    return float(node.attrs.get("alpha", alpha)), float(node.attrs.get("beta", beta))


def fuse_activations(graph: Graph) -> int:
    """Fuse a float activation that is the sole consumer of a Conv/ConvTranspose/Gemm output."""
    outputs = {s.name for s in graph.outputs}
    fused = 0
    for prod in list(graph.nodes):
        if prod.op_type not in FUSABLE_PRODUCERS or prod.domain or "_activation" in prod.attrs:
            continue
        act = _sole_consumer(graph, prod.outputs[0], outputs)
        if act is None or act.op_type not in ACTIVATIONS or act.domain or act.inputs[0] != prod.outputs[0]:
            continue
        params = _activation_params(graph, act)
        if params is None:
            continue
        prod.attrs["_activation"] = (act.op_type, params[0], params[1])
        prod.outputs = [act.outputs[0]]
        graph.nodes.remove(act)
        fused += 1
    return fused


def fuse_residual_add(graph: Graph) -> int:
    """Fuse ``Add(Conv(...), R)`` into the Conv as a residual input (``attrs["_residual"]``): the GEMM
    accumulates onto R, saving the Add's pass over memory and its step. Run before
    :func:`fuse_activations`, so a Relu after the Add becomes the Conv's epilogue. Depthwise convolutions
    are left alone (their direct kernel has no accumulating form). Returns how many were fused."""
    outputs = {s.name for s in graph.outputs}
    producers = graph.producers()
    fused = 0
    for add in list(graph.nodes):
        if add.op_type != "Add" or add.domain or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            continue
        # prefer the Conv computed last, so the other input is ready when it runs
        order = {id(n): k for k, n in enumerate(graph.nodes)}
        candidates = []
        for k in (0, 1):
            conv = producers.get(add.inputs[k])
            if (conv is None or conv.op_type != "Conv" or conv.domain or "_activation" in conv.attrs
                    or "_residual" in conv.attrs or _sole_consumer(graph, add.inputs[k], outputs) is not add):
                continue
            w = _const(graph, conv.inputs[1])
            if w is None or w.dtype != np.float32 or w.ndim not in (3, 4):
                continue
            if int(conv.attrs.get("group", 1)) > 1 and w.shape[1] == 1:
                continue  # depthwise
            candidates.append((order[id(conv)], k, conv))
        if not candidates:
            continue
        _, k, conv = max(candidates, key=lambda c: c[0])
        residual = add.inputs[1 - k]
        bias = conv.inputs[2] if len(conv.inputs) > 2 else ""
        conv.inputs = [conv.inputs[0], conv.inputs[1], bias, residual]
        conv.attrs["_residual"] = True
        conv.outputs = [add.outputs[0]]
        # the Conv moves to the Add's place: R may be computed after the Conv's old position
        graph.nodes.remove(conv)
        graph.nodes[graph.nodes.index(add)] = conv
        producers[add.outputs[0]] = conv
        fused += 1
    return fused


def fuse_matmul_bias(graph: Graph) -> int:
    """``Add(MatMul(A, W), c)`` with constant W (K, N) and a constant c of N values along the last axis
    becomes one MatMul with ``attrs["_bias"]`` and c as its third input: the bias enters the GEMM's
    accumulators (an exported Linear layer). Returns how many were fused."""
    outputs = {s.name for s in graph.outputs}
    producers = graph.producers()
    fused = 0
    for add in list(graph.nodes):
        if add.op_type != "Add" or add.domain or len(add.inputs) != 2:
            continue
        for k in (0, 1):
            mm = producers.get(add.inputs[k])
            c = _const(graph, add.inputs[1 - k])
            if (mm is None or mm.op_type != "MatMul" or mm.domain or mm.attrs.get("_bias") or c is None
                    or _sole_consumer(graph, add.inputs[k], outputs) is not add):
                continue
            w = _const(graph, mm.inputs[1])
            if (w is None or w.ndim != 2 or w.dtype != np.float32 or c.dtype != np.float32 or c.ndim > 2
                    or c.size != w.shape[1] or c.shape[-1] != w.shape[1]):
                continue
            mm.inputs = [mm.inputs[0], mm.inputs[1], add.inputs[1 - k]]
            mm.attrs["_bias"] = True
            mm.outputs = [add.outputs[0]]
            graph.nodes.remove(add)
            fused += 1
            break
    return fused


def _constant_expr(graph: Graph, name: str, producers: dict[str, Node]) -> bool:
    """Whether ``name`` is an initializer or a shape op of initializers only (a bias reshaped at run time)."""
    if not name:
        return False
    if name in graph.initializers:
        return True
    node = producers.get(name)
    return (node is not None and not node.domain and node.op_type in ("Reshape", "Unsqueeze", "Squeeze", "Identity")
            and all(not i or i in graph.initializers for i in node.inputs))


def fuse_integer_dequantize(graph: Graph) -> int:
    """onnxruntime's dynamic quantization after a ConvInteger / MatMulInteger: ``[Add(acc, bias_int32) ->]
    Cast(to float) -> Mul(., scale) [-> Add(., float_bias)]`` becomes one edgedl
    ``DequantizeAccumulator(acc, scale[, bias[, float_bias]])`` (one pass over the accumulator instead of up to
    four). Returns how many were fused."""
    outputs = {s.name for s in graph.outputs}
    producers = graph.producers()
    fused = 0
    for prod in list(graph.nodes):
        if prod.op_type not in ("ConvInteger", "MatMulInteger") or prod.domain or not prod.outputs:
            continue
        acc = prod.outputs[0]
        first = _sole_consumer(graph, acc, outputs)
        bias, add = "", None
        if first is not None and first.op_type == "Add" and not first.domain and len(first.inputs) == 2:
            add, bias = first, _other(first, acc)
            if not bias:
                continue
            first = _sole_consumer(graph, add.outputs[0], outputs)
        cast = first
        if (cast is None or cast.op_type != "Cast" or cast.domain or int(cast.attrs.get("to", 0)) != 1
                or cast.attrs.get("saturate") is not None and int(cast.attrs["saturate"]) != 1):
            continue
        mul = _sole_consumer(graph, cast.outputs[0], outputs)
        if mul is None or mul.op_type != "Mul" or mul.domain or len(mul.inputs) != 2:
            continue
        scale = _other(mul, cast.outputs[0])
        if not scale:
            continue
        last, fbias = mul, ""
        after = _sole_consumer(graph, mul.outputs[0], outputs)
        if after is not None and after.op_type == "Add" and not after.domain and len(after.inputs) == 2:
            other = _other(after, mul.outputs[0]) or ""
            if _constant_expr(graph, other, producers):  # a bias, not a residual branch
                fbias, last = other, after
        ins = [acc, scale] + ([bias] if bias or fbias else []) + ([fbias] if fbias else [])
        node = Node("DequantizeAccumulator", last.name or cast.name, ins, [last.outputs[0]], {}, "edgedl")
        graph.nodes[graph.nodes.index(last)] = node
        for gone in (add, cast, mul if last is not mul else None):
            if gone is not None:
                graph.nodes.remove(gone)
        fused += 1
    return fused


def _drop_unused_initializers(graph: Graph) -> None:
    used = {i for n in graph.nodes for i in n.inputs} | {s.name for s in graph.outputs}
    for name in list(graph.initializers):
        if name not in used:
            del graph.initializers[name]


# --- exact GELU as exported by PyTorch -----------------------------------------------------------------------
_SQRT2 = 1.4142135623730951


def _scalar(graph: Graph, name: str, x_rank1: bool) -> float | None:
    """The value of a constant float with one element (0-d; 1-d when the other operand is known to have rank
    >= 1, so that the broadcast cannot add an axis), or None."""
    c = _const(graph, name)
    if c is None or c.size != 1 or c.dtype.kind != "f" or c.ndim > 1 or (c.ndim == 1 and not x_rank1):
        return None
    return float(c.reshape(()))


def _close(v: float | None, target: float) -> bool:
    return v is not None and abs(v - target) <= 1e-5 * abs(target)


def _rank_at_least_1(graph: Graph, x: str, producers: dict[str, Node]) -> bool:
    """Whether tensor x has rank >= 1 for sure (a graph input declared so, or the output of an op that never
    produces a scalar)."""
    for spec in graph.inputs:
        if spec.name == x:
            shape = getattr(spec, "shape", None)
            return shape is not None and len(shape) >= 1
    prod = producers.get(x)
    if prod is None or prod.domain:
        return False
    if prod.op_type in ("Gemm", "Conv", "ConvTranspose"):
        return True
    if prod.op_type == "MatMul":
        b = _const(graph, prod.inputs[1]) if len(prod.inputs) > 1 else None
        return b is not None and b.ndim >= 2
    if prod.op_type in ("Add", "Mul", "Sub"):
        return any((c := _const(graph, i)) is not None and c.ndim >= 1 for i in prod.inputs)
    return False


def _other(node: Node, name: str) -> str | None:
    """The other input of a two-input node one of whose inputs is ``name``."""
    if len(node.inputs) != 2 or node.inputs[0] == node.inputs[1] or name not in node.inputs:
        return None
    return node.inputs[1 - node.inputs.index(name)]


def fuse_gelu(graph: Graph) -> int:
    """PyTorch's exact GELU as exported below opset 20, ``x * 0.5 * (1 + Erf(x / sqrt 2))`` (``Div(x, 1.4142)``
    or ``Mul(x, 0.7071)``, ``Erf``, ``Add 1``, then ``Mul x`` and ``Mul 0.5`` in either order, or ``x * 0.5``
    times the ``1 + erf`` term), becomes one ``Gelu(x)`` (default domain, approximate "none": the vectorized
    kernel, with a backward). Only when every intermediate tensor has that chain's node as its sole consumer
    and is not a graph output; the constants must be float scalars within 1e-5 of their values. Returns how
    many were fused."""
    outputs = {s.name for s in graph.outputs}
    producers = graph.producers()
    fused = 0
    for erf in list(graph.nodes):
        if erf.op_type != "Erf" or erf.domain or len(erf.inputs) != 1:
            continue
        scale = producers.get(erf.inputs[0])
        if (scale is None or scale.domain or scale.op_type not in ("Div", "Mul") or len(scale.inputs) != 2
                or _sole_consumer(graph, erf.inputs[0], outputs) is not erf):
            continue
        if scale.op_type == "Div":
            x = scale.inputs[0]
            ok = _close(_scalar(graph, scale.inputs[1], _rank_at_least_1(graph, x, producers)), _SQRT2)
        else:
            ok = False
            for k in (0, 1):
                x = scale.inputs[1 - k]
                if _const(graph, x) is None and _close(
                        _scalar(graph, scale.inputs[k], _rank_at_least_1(graph, x, producers)), 1.0 / _SQRT2):
                    ok = True
                    break
        if not ok or not x or _const(graph, x) is not None:
            continue
        r1 = _rank_at_least_1(graph, x, producers)
        add = _sole_consumer(graph, erf.outputs[0], outputs)
        if add is None or add.op_type != "Add" or add.domain or not _close(
                _scalar(graph, _other(add, erf.outputs[0]) or "", r1), 1.0):
            continue
        m1 = _sole_consumer(graph, add.outputs[0], outputs)
        if m1 is None or m1.op_type != "Mul" or m1.domain:
            continue
        operand = _other(m1, add.outputs[0])
        if operand is None:
            continue
        chain = [scale, erf, add, m1]
        if operand == x:  # (x * (1 + erf)) * 0.5
            m2 = _sole_consumer(graph, m1.outputs[0], outputs)
            if m2 is None or m2.op_type != "Mul" or m2.domain or not _close(
                    _scalar(graph, _other(m2, m1.outputs[0]) or "", r1), 0.5):
                continue
            chain.append(m2)
        elif _close(_scalar(graph, operand, r1), 0.5):  # ((1 + erf) * 0.5) * x
            m2 = _sole_consumer(graph, m1.outputs[0], outputs)
            if m2 is None or m2.op_type != "Mul" or m2.domain or _other(m2, m1.outputs[0]) != x:
                continue
            chain.append(m2)
        else:  # (x * 0.5) * (1 + erf)
            half = producers.get(operand)
            if (half is None or half.op_type != "Mul" or half.domain or _other(half, x) is None
                    or not _close(_scalar(graph, _other(half, x), r1), 0.5)
                    or _sole_consumer(graph, operand, outputs) is not m1):
                continue
            chain.insert(0, half)
        last = chain[-1]
        gelu = Node("Gelu", (last.name or erf.name) + "_gelu", [x], [last.outputs[0]], {"approximate": "none"})
        # the Gelu takes the last node's place: x is ready there, and every consumer of y comes after it
        graph.nodes[graph.nodes.index(last)] = gelu
        for node in chain[:-1]:
            graph.nodes.remove(node)
        producers = graph.producers()
        fused += 1
    return fused


# --- HardSwish written out, and scalar affine steps after a convolution --------------------------------------------
def _clip_bounds(graph: Graph, node: Node) -> tuple[float | None, float | None]:
    """A Clip's constant (min, max): its inputs from opset 11, its attributes before."""
    if len(node.inputs) > 1:
        lo = _scalar(graph, node.inputs[1], False) if node.inputs[1] else -np.inf
        hi = _scalar(graph, node.inputs[2], False) if len(node.inputs) > 2 and node.inputs[2] else np.inf
        return lo, hi
    return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))


def fuse_hard_swish(graph: Graph) -> int:
    """``x * Clip(x + 3, 0, 6) / 6`` (Paddle's and Keras' exports: Add, Clip, Mul by x, then Div by 6 or Mul by
    1/6) becomes one ``HardSwish(x)``: a fused activation of the convolution before it in float, one 8-bit table
    when quantized (instead of four full passes, four requantizations in int8). Only when every intermediate
    tensor has the chain's next node as its sole consumer and is not a graph output. Returns how many."""
    outputs = {s.name for s in graph.outputs}
    producers = graph.producers()
    fused = 0
    for clip in list(graph.nodes):
        if clip.op_type != "Clip" or clip.domain or not clip.inputs:
            continue
        lo, hi = _clip_bounds(graph, clip)
        if lo is None or hi is None or lo != 0.0 or not _close(hi, 6.0):
            continue
        add = producers.get(clip.inputs[0])
        if (add is None or add.op_type != "Add" or add.domain
                or _sole_consumer(graph, clip.inputs[0], outputs) is not clip):
            continue
        x = next((i for i in add.inputs if _close(_scalar(graph, _other(add, i) or "",
                                                           _rank_at_least_1(graph, i, producers)), 3.0)), None)
        if x is None or _const(graph, x) is not None:
            continue
        mul = _sole_consumer(graph, clip.outputs[0], outputs)
        if mul is None or mul.op_type != "Mul" or mul.domain or _other(mul, clip.outputs[0]) != x:
            continue
        last = _sole_consumer(graph, mul.outputs[0], outputs)
        if last is None or last.domain or not (
                (last.op_type == "Div" and last.inputs[0] == mul.outputs[0] and
                 _close(_scalar(graph, last.inputs[1], True), 6.0)) or
                (last.op_type == "Mul" and _close(_scalar(graph, _other(last, mul.outputs[0]) or "", True),
                                                  1.0 / 6.0))):
            continue
        node = Node("HardSwish", (last.name or clip.name) + "_hardswish", [x], [last.outputs[0]])
        graph.nodes[graph.nodes.index(last)] = node
        for n in (add, clip, mul):
            graph.nodes.remove(n)
        producers = graph.producers()
        fused += 1
    if fused:
        _drop_unused_initializers(graph)
    return fused


def fuse_swish(graph: Graph) -> int:
    """``x * Sigmoid(x)`` (SiLU: the activation of YOLOv5/v8/X, EfficientNet and many exported CNNs) becomes one
    ``Swish(x)``: one pass over memory instead of two in float, one 8-bit table instead of a table and a
    requantized product in int8. Only when the Sigmoid's output feeds nothing but that Mul and is not a graph
    output. Returns how many."""
    outputs = {s.name for s in graph.outputs}
    fused = 0
    for sig in list(graph.nodes):
        if sig.op_type != "Sigmoid" or sig.domain or len(sig.inputs) != 1 or len(sig.outputs) != 1:
            continue
        x = sig.inputs[0]
        mul = _sole_consumer(graph, sig.outputs[0], outputs)
        if mul is None or mul.op_type != "Mul" or mul.domain or _other(mul, sig.outputs[0]) != x:
            continue
        graph.nodes[graph.nodes.index(mul)] = Node("Swish", (mul.name or sig.name) + "_swish", [x],
                                                   [mul.outputs[0]])
        graph.nodes.remove(sig)
        fused += 1
    return fused


def fold_conv_scalar_affine(graph: Graph) -> int:
    """``Conv(x, W, B) * s + t`` with float scalars s, t (either step alone; PP-LCNet's learnable affine blocks)
    becomes ``Conv(x, W * s, B * s + t)``: exact up to float rounding, and one pass over the output fewer per
    step. Only when the Conv's weights (and bias) are constants and each intermediate tensor has the next step as
    its sole consumer and is not a graph output. Returns how many steps were folded."""
    outputs = {s.name for s in graph.outputs}
    folded = 0
    for conv in list(graph.nodes):
        if conv.op_type != "Conv" or conv.domain or len(conv.inputs) < 2 or any(k.startswith("_") for k in conv.attrs):
            continue
        w = _const(graph, conv.inputs[1])
        b = _const(graph, conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
        if w is None or w.dtype != np.float32 or (len(conv.inputs) > 2 and conv.inputs[2] and b is None):
            continue
        scale, shift, steps = np.float32(1), np.float32(0), []
        y = conv.outputs[0]
        while True:
            nxt = _sole_consumer(graph, y, outputs)
            if nxt is None or nxt.domain or nxt.op_type not in ("Mul", "Add") or len(nxt.inputs) != 2:
                break
            c = _scalar(graph, _other(nxt, y) or "", True)
            if c is None:
                break
            if nxt.op_type == "Mul":
                scale, shift = np.float32(scale * c), np.float32(shift * c)
            else:
                shift = np.float32(shift + c)
            steps.append(nxt)
            y = nxt.outputs[0]
        if not steps:
            continue
        m = w.shape[0]
        w_name = _new_name(graph, conv.inputs[1] + "_affine")
        graph.initializers[w_name] = contiguous((w * scale).astype(np.float32))
        bias = (b.astype(np.float32) if b is not None else np.zeros(m, np.float32)) * scale + shift
        b_name = _new_name(graph, (conv.inputs[2] if b is not None else conv.name + "_bias") + "_affine")
        graph.initializers[b_name] = contiguous(bias.astype(np.float32))
        new = Node("Conv", conv.name, [conv.inputs[0], w_name, b_name], [y], dict(conv.attrs), conv.domain)
        graph.nodes[graph.nodes.index(steps[-1])] = new
        graph.nodes.remove(conv)
        for n in steps[:-1]:
            graph.nodes.remove(n)
        folded += len(steps)
    if folded:
        _drop_unused_initializers(graph)
    return folded
