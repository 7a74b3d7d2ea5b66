"""float32 product of a few rows by a matrix computed at run time: ``out (M, N) = a (M, K) @ b (K, N)`` for
M <= 3 (MatMul of one token / a small batch against a non-constant B: tf2onnx's LSTM-as-Loop passes its weights
as loop-carried values, decoders multiply by cached keys and values).

No packing (each element of B is used M times only): B is streamed row by row in place, four rows of B at a time
into per-row accumulators of ``_CH`` columns that stay in L1 (``acc[j] += a[i, q] b[q, j] + ... + a[i, q+3]
b[q+3, j]``, one load and one store of the accumulator per four multiply-adds), over 1-D contiguous views so the
loops vectorize; then the accumulators are copied out.
"""
from __future__ import annotations

import numba
import numpy as np

from .config import NJIT

__all__ = ["few_rows_matmul", "FEW_ROWS_MAX"]

#: the most rows of A this path takes
FEW_ROWS_MAX = 3
_CH = 512


@numba.njit(inline="always", **NJIT)
def _row_block(acc, ai, b, q, j0, w):
    # acc: (w,) accumulator of one output row; ai: (K,) that row of A; b: (K, N); adds sum over 4 rows q..q+3
    s0 = ai[q]
    s1 = ai[q + 1]
    s2 = ai[q + 2]
    s3 = ai[q + 3]
    b0 = b[q, j0:j0 + w]
    b1 = b[q + 1, j0:j0 + w]
    b2 = b[q + 2, j0:j0 + w]
    b3 = b[q + 3, j0:j0 + w]
    for j in range(w):
        acc[j] += s0 * b0[j] + s1 * b1[j] + s2 * b2[j] + s3 * b3[j]


@numba.njit(**NJIT)
def _few_rows(a, b, out):
    # a: (M, K) float32 C-contiguous, M <= 3; b: (K, N) float32 C-contiguous; out: (M, N) float32 C-contiguous
    m, kk = a.shape
    n = b.shape[1]
    acc = np.empty((m, _CH), np.float32)
    k4 = kk - kk % 4
    for j0 in range(0, n, _CH):
        w = min(_CH, n - j0)
        for i in range(m):
            ac = acc[i, :w]
            ac[:] = 0.0
            ai = a[i]
            for q in range(0, k4, 4):
                _row_block(ac, ai, b, q, j0, w)
            for q in range(k4, kk):
                s = ai[q]
                bq = b[q, j0:j0 + w]
                for j in range(w):
                    ac[j] += s * bq[j]
            o = out[i, j0:j0 + w]
            for j in range(w):
                o[j] = ac[j]


def few_rows_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (M, N) = a (M, K) @ b (K, N) for float32, M <= FEW_ROWS_MAX (copies a or b only when they are not
    C-contiguous; out must be C-contiguous)."""
    if a.shape[0] > FEW_ROWS_MAX:
        raise ValueError(f"few_rows_matmul handles at most {FEW_ROWS_MAX} rows")
    _few_rows(np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32), out)
    return out
