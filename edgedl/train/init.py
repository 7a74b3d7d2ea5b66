"""Weight initializers for models built with ``onnx.helper`` (or re-initialized for training from scratch).

Fans follow PyTorch: a Conv weight (M, C/g, k...) has fan_in = C/g * prod(k) and fan_out = M * prod(k); a
Gemm/MatMul weight is read in its use (transB: (N, K), else (K, N)). He (Kaiming) for ReLU networks, Xavier
(Glorot) otherwise; biases start at 0.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import Graph

__all__ = ["he_normal", "he_uniform", "xavier_normal", "xavier_uniform", "initialize", "SCHEMES"]


def he_normal(rng, shape, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)


def he_uniform(rng, shape, fan_in, fan_out):
    bound = np.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, shape)


def xavier_normal(rng, shape, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)


def xavier_uniform(rng, shape, fan_in, fan_out):
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, shape)


SCHEMES = {"he_normal": he_normal, "he_uniform": he_uniform, "xavier_normal": xavier_normal,
           "xavier_uniform": xavier_uniform}


def _weights(graph: Graph):
    """(weight name, fan_in, fan_out, bias name or None) of every Conv / ConvTranspose / Gemm / MatMul with a
    constant weight."""
    for n in graph.nodes:
        ins = n.inputs
        if n.op_type in ("Conv", "ConvTranspose") and len(ins) > 1 and ins[1] in graph.initializers:
            w = graph.initializers[ins[1]]
            k = int(np.prod(w.shape[2:], dtype=np.int64))
            fan_in, fan_out = w.shape[1] * k, w.shape[0] * k
            if n.op_type == "ConvTranspose":
                fan_in, fan_out = fan_out, fan_in
            yield ins[1], fan_in, fan_out, ins[2] if len(ins) > 2 and ins[2] in graph.initializers else None
        elif n.op_type in ("Gemm", "MatMul") and len(ins) > 1 and ins[1] in graph.initializers:
            w = graph.initializers[ins[1]]
            if w.ndim != 2:
                continue
            k, m = (w.shape[1], w.shape[0]) if n.attrs.get("transB", 0) else w.shape
            yield ins[1], k, m, ins[2] if len(ins) > 2 and ins[2] in graph.initializers else None


def initialize(graph: Graph, scheme: str = "he_normal", seed: int = 0) -> list[str]:
    """Re-draw every Conv/Gemm/MatMul weight of ``graph`` in place (float32) and zero their biases; returns
    the names of the tensors set. Deterministic for a seed."""
    if scheme not in SCHEMES:
        raise EdgeDLError(f"unknown initializer {scheme!r} (choose from {sorted(SCHEMES)})")
    rng = np.random.default_rng(seed)
    done = []
    for w, fan_in, fan_out, b in _weights(graph):
        arr = graph.initializers[w]
        graph.initializers[w] = SCHEMES[scheme](rng, arr.shape, max(fan_in, 1), max(fan_out, 1)).astype(np.float32)
        done.append(w)
        if b is not None:
            graph.initializers[b] = np.zeros_like(graph.initializers[b], dtype=np.float32)
            done.append(b)
    return done
