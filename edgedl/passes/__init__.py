"""Graph rewrites that run once at load time (shape-independent). Constant folding that needs shapes runs
at plan time (see ``edgedl.runtime.plan``)."""
from __future__ import annotations

from ..ir import Graph, Node
from .fuse import (
    fold_batchnorm,
    fold_conv_scalar_affine,
    fuse_activations,
    fuse_gelu,
    fuse_hard_swish,
    fuse_integer_dequantize,
    fuse_matmul_bias,
    fuse_residual_add,
    fuse_swish,
)
from .half_precision import compute_half_in_float32
from .qdq import lower_qdq
from .simplify import fold_output_identities, remove_identities, remove_noop_casts


def _subgraphs(node: Node) -> list[Graph]:
    return [g for value in node.attrs.values() for g in (value if isinstance(value, list) else [value])
            if isinstance(g, Graph)]


def _float_patterns(graph: Graph) -> None:
    """Exported chains that are one op (GELU, HardSwish, swish)."""
    fuse_gelu(graph)
    fuse_hard_swish(graph)
    fuse_swish(graph)


def _epilogue_fusions(graph: Graph) -> None:
    """Work moved into the producing Conv/Gemm/MatMul: BatchNorm and scalar affines folded into its weights, a
    residual Add, a bias Add and an activation into its epilogue."""
    fold_batchnorm(graph)
    fold_conv_scalar_affine(graph)
    fuse_residual_add(graph)
    fuse_matmul_bias(graph)
    fuse_activations(graph)


def optimize_subgraph(graph: Graph) -> Graph:
    """The rewrites of :func:`optimize` that keep a subgraph's interface (the body of If/Loop/Scan: its inputs,
    outputs and the outer names it reads stay as they are), in place, nested subgraphs first. Exported models
    put whole networks in an If branch (silero-vad: the 8 kHz and 16 kHz encoders), whose Conv + Relu pairs
    were two steps each. Constants of the enclosing graph reach a subgraph as inputs, so the rewrites that need
    constant weights (BatchNorm folding, bias and residual fusion) find nothing to do there; the activation and
    GELU/swish fusions and the removal of Identity/no-op Cast steps need none. The half-precision and QDQ
    lowerings change dtypes at the graph's edges and stay at the top level."""
    for node in graph.nodes:
        for sub in _subgraphs(node):
            optimize_subgraph(sub)
    remove_identities(graph)
    fold_output_identities(graph)
    remove_noop_casts(graph)
    _float_patterns(graph)
    _epilogue_fusions(graph)
    return graph


def optimize(graph: Graph) -> Graph:
    """Run the default load-time pipeline in place and return the graph (subgraphs get
    :func:`optimize_subgraph`)."""
    for node in graph.nodes:
        for sub in _subgraphs(node):
            optimize_subgraph(sub)
    compute_half_in_float32(graph)
    remove_identities(graph)
    remove_noop_casts(graph)
    _float_patterns(graph)  # before lower_qdq: a Gelu between DequantizeLinear and QuantizeLinear becomes a table
    lower_qdq(graph)
    fuse_integer_dequantize(graph)
    _epilogue_fusions(graph)
    return graph


__all__ = ["optimize", "optimize_subgraph", "fold_output_identities", "compute_half_in_float32", "remove_identities",
           "lower_qdq", "fold_batchnorm",
           "fuse_residual_add", "fuse_matmul_bias", "fuse_activations", "fuse_gelu", "fuse_hard_swish", "fuse_swish",
           "fold_conv_scalar_affine", "fuse_integer_dequantize",
           "remove_noop_casts"]
