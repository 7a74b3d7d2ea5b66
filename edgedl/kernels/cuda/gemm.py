"""Tiled float32 GEMM on CUDA: C[z] = act(alpha * op(A[z]) @ op(B[z]) + beta * bias), one 16x16 output tile per
block, K in 16-wide steps through shared memory.

Operands are flat arrays addressed through (row, column) element strides, so transposed operands (Gemm's
transA / transB) cost nothing, and through a per-batch offset (0 for an operand shared by the whole batch:
MatMul of [B, M, K] by [K, N]). The bias is read through its own (row, column) strides (0 where it
broadcasts: a [N] bias, a [M, 1] one, a scalar).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32

from .common import activate, flat

TILE = 16


@cuda.jit(cache=True)
def _gemm(a, b, c, bias, m, n, k, sam, sak, sbk, sbn, a_batch, b_batch, alpha, beta, bias_m, bias_n, has_bias,
          code, act_a, act_b):
    # a: [batch * M * K] (strided), b: [batch * K * N] (strided), c: [batch, M, N] contiguous
    sa = cuda.shared.array((TILE, TILE), float32)
    sb = cuda.shared.array((TILE, TILE), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    z = cuda.blockIdx.z
    acc = float32(0)
    for t in range((k + TILE - 1) // TILE):
        ka = t * TILE + tx
        if row < m and ka < k:
            sa[ty, tx] = a[z * a_batch + row * sam + ka * sak]
        else:
            sa[ty, tx] = float32(0)
        kb = t * TILE + ty
        if kb < k and col < n:
            sb[ty, tx] = b[z * b_batch + kb * sbk + col * sbn]
        else:
            sb[ty, tx] = float32(0)
        cuda.syncthreads()
        for j in range(TILE):
            acc += sa[ty, j] * sb[j, tx]
        cuda.syncthreads()
    if row < m and col < n:
        v = alpha * acc
        if has_bias:
            v += beta * float32(bias[row * bias_m + col * bias_n])
        c[(z * m + row) * n + col] = activate(v, code, act_a, act_b)


class Gemm:
    """A batched GEMM of fixed geometry (strides in elements; see the module docstring)."""

    def __init__(self, m, n, k, a_strides, b_strides, batch=1, a_batch=0, b_batch=0, alpha=1.0, beta=1.0,
                 bias_strides=None, act=(0, 0.0, 0.0)):
        self.m, self.n, self.k, self.batch = int(m), int(n), int(k), int(batch)
        self.sa, self.sb = (int(v) for v in a_strides), (int(v) for v in b_strides)
        self.sa, self.sb = tuple(self.sa), tuple(self.sb)
        self.a_batch, self.b_batch = int(a_batch), int(b_batch)
        self.alpha, self.beta = np.float32(alpha), np.float32(beta)
        self.bias_strides = tuple(int(v) for v in bias_strides) if bias_strides is not None else (0, 0)
        self.has_bias = bias_strides is not None
        self.act = (act[0], np.float32(act[1]), np.float32(act[2]))
        self.grid = ((self.n + TILE - 1) // TILE, (self.m + TILE - 1) // TILE, self.batch)

    def __call__(self, a, b, c, bias=None, stream=0):
        bias = flat(bias) if bias is not None else flat(c)  # never read without a bias
        _gemm[self.grid, (TILE, TILE), stream](flat(a), flat(b), flat(c), bias, self.m, self.n, self.k,
                                               *self.sa, *self.sb, self.a_batch, self.b_batch, self.alpha,
                                               self.beta, *self.bias_strides, self.has_bias, *self.act)
