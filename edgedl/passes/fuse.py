"""Fold BatchNormalization into the preceding Conv/Gemm, and fuse activations into their epilogue.

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


def _drop_unused_initializers(graph: Graph) -> None:
    used = {i for n in graph.nodes for i in n.inputs} | {s.name for s in graph.outputs}
    for name in list(graph.initializers):
        if name not in used:
            del graph.initializers[name]
