"""Graph rewrites that run once at load time (shape-independent). Constant folding that needs shapes runs
at plan time (see ``edgedl.runtime.plan``)."""
from __future__ import annotations

from ..ir import Graph
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
from .simplify import remove_identities, remove_noop_casts


def optimize(graph: Graph) -> Graph:
    """Run the default load-time pipeline in place and return the graph."""
    compute_half_in_float32(graph)
    remove_identities(graph)
    remove_noop_casts(graph)
    fuse_gelu(graph)  # before lower_qdq: a Gelu between DequantizeLinear and QuantizeLinear becomes an int8 table
    fuse_hard_swish(graph)
    fuse_swish(graph)
    lower_qdq(graph)
    fuse_integer_dequantize(graph)
    fold_batchnorm(graph)
    fold_conv_scalar_affine(graph)
    fuse_residual_add(graph)
    fuse_matmul_bias(graph)
    fuse_activations(graph)
    return graph


__all__ = ["optimize", "compute_half_in_float32", "remove_identities", "lower_qdq", "fold_batchnorm",
           "fuse_residual_add", "fuse_matmul_bias", "fuse_activations", "fuse_gelu", "fuse_hard_swish", "fuse_swish",
           "fold_conv_scalar_affine", "fuse_integer_dequantize",
           "remove_noop_casts"]
