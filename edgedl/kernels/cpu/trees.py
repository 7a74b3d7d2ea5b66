"""Tree-ensemble kernels (TreeEnsemble, TreeEnsembleClassifier, TreeEnsembleRegressor), float32 / float64 X.

A forest is flattened into arrays (built once per node by :mod:`edgedl.ops.ml_trees`, see its ``Forest``); the
kernels read a packed form of the interior nodes, laid out tree by tree in depth-first order (a node's true
child follows it), so that a walk touches few cache lines:

* ``nodes`` [n, 4] int32: feature index, true child, false child, and ``mode | 8 * mtrue`` where mode is
  0 ``x <= t``, 1 ``x < t``, 2 ``x >= t``, 3 ``x > t``, 4 ``x == t``, 5 ``x != t``, 6 ``x`` in the set
  ``mvals[mstart[k]:mstart[k + 1]]``, and ``mtrue``: a NaN feature takes the true branch; a child ``>= 0`` is
  an interior node, ``< 0`` the leaf ``-c - 1``;
* ``thr`` [n]: the thresholds, float32 when the model's are (compared exactly with float32 or float64 X);
* ``roots[r]``: each tree's first node, encoded like a child;
* leaf ``l`` adds ``lweight[j]`` to target ``ltarget[j]`` for ``j`` in ``[lstart[l], lstart[l + 1])``.

The branch test is ``cmp(x, t) or (mtrue and isnan(x))`` (onnxruntime's). :func:`forest_scores` walks every tree
for every row and aggregates the leaf weights per target into ``score`` [N, T] (in the weights' float type,
trees in order for each row, as onnxruntime sums) with ``has`` [N, T] (whether any leaf reached the target):
``agg`` 0 AVERAGE / 1 SUM (a sum; AVERAGE divides later), 2 MIN, 3 MAX. Rows go by blocks of
``ROW_BLOCK``, and within a block tree by tree, so each tree's nodes stay in cache across the rows; when every
interior node uses one comparison (what exporters write), ``LANES`` rows walk a tree in lockstep with
branch-free child selection (their loads overlap: 1.5-2x faster than one row at a time, measured on x86-64),
or, with fewer rows than lanes, ``LANES`` trees of one row. Row ranges are split over the threads when the
work is large. :func:`classifier_finalize` applies onnxruntime's classifier rules (base values, binary cases,
post transform, winning label) row by row; post transforms are computed in float32, as onnxruntime does.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_EXACT, NJIT_PARALLEL, num_threads

#: rows walked together, tree by tree
ROW_BLOCK = 64
#: rows walking one tree in lockstep (same-mode forests)
LANES = 8


@numba.njit(**NJIT)
def _walk(x, i, node, nodes, thr, mstart, mvals):
    # x (N, F), row i; returns the leaf reached from ``node``, encoded as a child (-leaf - 1)
    while node >= 0:
        v = x[i, nodes[node, 0]]
        t = thr[node]
        code = nodes[node, 3]
        m = code & 7
        if m == 0:
            c = v <= t
        elif m == 1:
            c = v < t
        elif m == 2:
            c = v >= t
        elif m == 3:
            c = v > t
        elif m == 4:
            c = v == t
        elif m == 5:
            c = v != t
        else:
            c = False
            for j in range(mstart[node], mstart[node + 1]):
                if v == mvals[j]:
                    c = True
                    break
        if not c and code >= 8 and v != v:
            c = True
        node = nodes[node, 1] if c else nodes[node, 2]
    return node


@numba.njit(**NJIT)
def _add_votes(score, has, g, step, cnt, cur, lstart, ltarget, lweight, agg):
    # the votes of the leaves -cur[k] - 1 (k < cnt, in order) into rows g + k * step of score / has (N, T);
    # the aggregate branch sits outside the vote loops
    if agg <= 1:
        for k in range(cnt):
            leaf = -cur[k] - 1
            for j in range(lstart[leaf], lstart[leaf + 1]):
                score[g + k * step, ltarget[j]] += lweight[j]
                has[g + k * step, ltarget[j]] = 1
    elif agg == 2:
        for k in range(cnt):
            leaf = -cur[k] - 1
            for j in range(lstart[leaf], lstart[leaf + 1]):
                t = ltarget[j]
                if has[g + k * step, t] == 0 or lweight[j] < score[g + k * step, t]:
                    score[g + k * step, t] = lweight[j]
                has[g + k * step, t] = 1
    else:
        for k in range(cnt):
            leaf = -cur[k] - 1
            for j in range(lstart[leaf], lstart[leaf + 1]):
                t = ltarget[j]
                if has[g + k * step, t] == 0 or lweight[j] > score[g + k * step, t]:
                    score[g + k * step, t] = lweight[j]
                has[g + k * step, t] = 1


@numba.njit(**NJIT)
def _clear_rows(score, has, r0, r1):
    # score, has (N, T): rows [r0, r1) to 0
    for i in range(r0, r1):
        for t in range(score.shape[1]):
            score[i, t] = 0
            has[i, t] = 0


@numba.njit(**NJIT)
def _scores_rows(x, r0, r1, nodes, thr, mstart, mvals, roots, lstart, ltarget, lweight, agg, score, has):
    # any forest (per-node modes, set membership). x (N, F); score, has (N, T) written for rows [r0, r1)
    _clear_rows(score, has, r0, r1)
    cur = np.empty(ROW_BLOCK, np.int64)
    for b0 in range(r0, r1, ROW_BLOCK):
        b1 = min(b0 + ROW_BLOCK, r1)
        for r in range(roots.shape[0]):
            root = roots[r]
            for i in range(b0, b1):
                cur[i - b0] = _walk(x, i, root, nodes, thr, mstart, mvals)
            _add_votes(score, has, b0, 1, b1 - b0, cur, lstart, ltarget, lweight, agg)


@numba.njit(**NJIT)
def _test(v, t, mode):
    # mode 0..5 (a loop invariant in the caller: the compiler hoists the switch out of the walk)
    if mode == 0:
        return v <= t
    if mode == 1:
        return v < t
    if mode == 2:
        return v >= t
    if mode == 3:
        return v > t
    if mode == 4:
        return v == t
    return v != t


@numba.njit(**NJIT)
def _scores_same_mode(x, r0, r1, nodes, thr, roots, lstart, ltarget, lweight, agg, score, has, mode, missing):
    # every interior node has comparison ``mode`` (0..5); ``missing``: some node sends NaN to its true branch.
    # x (N, F); score, has (N, T) written for rows [r0, r1). LANES rows walk a tree in lockstep (independent
    # loads overlap), their next nodes picked without a branch (true child at column 1, false at 2); votes are
    # added tree by tree, in order, for each row
    _clear_rows(score, has, r0, r1)
    cur = np.empty(LANES, np.int64)
    n_roots = roots.shape[0]
    if r1 - r0 < LANES:  # few rows: LANES trees of one row walk in lockstep instead
        for i in range(r0, r1):
            for t0 in range(0, n_roots, LANES):
                cnt = min(LANES, n_roots - t0)
                active = False
                for k in range(cnt):
                    cur[k] = roots[t0 + k]
                    active |= cur[k] >= 0
                while active:
                    active = False
                    for k in range(cnt):
                        node = cur[k]
                        if node >= 0:
                            v = x[i, nodes[node, 0]]
                            c = _test(v, thr[node], mode)
                            if missing:
                                c |= (nodes[node, 3] >= 8) & (v != v)
                            nxt = nodes[node, 2 - np.int64(c)]
                            cur[k] = nxt
                            active |= nxt >= 0
                _add_votes(score, has, i, 0, cnt, cur, lstart, ltarget, lweight, agg)
        return
    for b0 in range(r0, r1, ROW_BLOCK):
        b1 = min(b0 + ROW_BLOCK, r1)
        for r in range(n_roots):
            root = roots[r]
            for g in range(b0, b1, LANES):
                cnt = min(LANES, b1 - g)
                for k in range(cnt):
                    cur[k] = root
                active = root >= 0
                while active:
                    active = False
                    for k in range(cnt):
                        node = cur[k]
                        if node >= 0:
                            v = x[g + k, nodes[node, 0]]
                            c = _test(v, thr[node], mode)
                            if missing:
                                c |= (nodes[node, 3] >= 8) & (v != v)
                            nxt = nodes[node, 2 - np.int64(c)]
                            cur[k] = nxt
                            active |= nxt >= 0
                _add_votes(score, has, g, 1, cnt, cur, lstart, ltarget, lweight, agg)


@numba.njit(**NJIT_PARALLEL)
def _scores_rows_par(x, nchunks, nodes, thr, mstart, mvals, roots, lstart, ltarget, lweight, agg, score, has):
    n = x.shape[0]
    for k in prange(nchunks):
        _scores_rows(x, k * n // nchunks, (k + 1) * n // nchunks, nodes, thr, mstart, mvals, roots, lstart, ltarget,
                     lweight, agg, score, has)


@numba.njit(**NJIT_PARALLEL)
def _scores_same_mode_par(x, nchunks, nodes, thr, roots, lstart, ltarget, lweight, agg, score, has, mode, missing):
    n = x.shape[0]
    for k in prange(nchunks):
        _scores_same_mode(x, k * n // nchunks, (k + 1) * n // nchunks, nodes, thr, roots, lstart, ltarget, lweight,
                          agg, score, has, mode, missing)


def forest_scores(x: np.ndarray, forest, agg: int, n_targets: int) -> tuple[np.ndarray, np.ndarray]:
    """(score [N, T], has uint8 [N, T]) of the C-contiguous float32/float64 rows ``x`` [N, F]; the scores have
    the leaf weights' dtype (float32 models accumulate in float32, in tree order, as onnxruntime does).
    Forests whose interior nodes all use one comparison (what exporters write) take the lockstep walk."""
    n = x.shape[0]
    score = np.empty((n, n_targets), forest.lweight.dtype)
    has = np.empty((n, n_targets), np.uint8)
    nt = num_threads()
    chunks = min(-(-n // 16), 4 * nt) if n * forest.walk_cost >= _config.PARALLEL_MIN_WORK and nt > 1 else 0
    leaves = (forest.lstart, forest.ltarget, forest.lweight, agg, score, has)
    if forest.same_mode >= 0:
        tail = (forest.same_mode, forest.has_missing)
        if chunks > 1:
            _scores_same_mode_par(x, chunks, forest.nodes, forest.thr_packed, forest.roots_packed, *leaves, *tail)
        else:
            _scores_same_mode(x, 0, n, forest.nodes, forest.thr_packed, forest.roots_packed, *leaves, *tail)
    else:
        args = (forest.nodes, forest.thr_packed, forest.mstart_packed, forest.mvals, forest.roots_packed, *leaves)
        if chunks > 1:
            _scores_rows_par(x, chunks, *args)
        else:
            _scores_rows(x, 0, n, *args)
    return score, has


# --- post transforms: onnxruntime's formulas, in float32 as onnxruntime computes them ------------------------
_F1 = np.float32(1.0)
_F0 = np.float32(0.0)
_PI_A = np.float32(2.0) / (np.float32(math.pi) * np.float32(0.147))
_INV_A = np.float32(1.0) / np.float32(0.147)
_SQRT2 = np.float32(math.sqrt(2.0))
_EPS_ZERO = np.float32(1e-7)


@numba.njit(**NJIT_EXACT)
def _logistic(v):
    # float32 -> float32
    e = _F1 / (_F1 + np.exp(-np.abs(np.float32(v))))
    return _F1 - e if v < 0 else e


@numba.njit(**NJIT_EXACT)
def _probit(v):
    # sqrt(2) * erfinv(2v - 1) in float32, erfinv by Winitzki's approximation (a = 0.147)
    x = np.float32(2.0) * np.float32(v) - _F1
    sgn = -_F1 if x < 0 else _F1
    w = np.log((_F1 - x) * (_F1 + x))
    a = _PI_A + np.float32(0.5) * w
    return _SQRT2 * (sgn * np.sqrt(-a + np.sqrt(a * a - _INV_A * w)))


@numba.njit(**NJIT_EXACT)
def _transform_row(z, transform):
    # z (K,) float32, K >= 2, in place. transform: 0 NONE, 1 SOFTMAX, 2 LOGISTIC, 3 SOFTMAX_ZERO, 4 PROBIT
    k = z.shape[0]
    if transform == 4:
        for j in range(k):
            z[j] = _probit(z[j])
    elif transform == 2:
        for j in range(k):
            z[j] = _logistic(z[j])
    elif transform == 1 or transform == 3:
        vmax = z[0]
        for j in range(1, k):
            if z[j] > vmax:
                vmax = z[j]
        s = _F0
        for j in range(k):
            if transform == 1 or z[j] > _EPS_ZERO or z[j] < -_EPS_ZERO:
                z[j] = np.exp(z[j] - vmax)
                s += z[j]
            else:
                z[j] = z[j] * np.exp(-vmax)
        for j in range(k):
            z[j] = z[j] / s


@numba.njit(**NJIT_EXACT)
def classifier_finalize(score, has, base, transform, binary_case, all_positive, labels, z, y):
    # score (N, C) class sums, has (N, C) uint8, base (0 or C,) -> z (N, C) float32 scores, y (N,) int64 labels
    n, c = score.shape
    nb = base.shape[0]
    vals = np.empty(c, np.float32)
    for i in range(n):
        s = score[i]
        h = has[i]
        if c > 2:
            for k in range(nb):
                if h[k] == 0:
                    h[k] = 1
                    s[k] = base[k]
                else:
                    s[k] += base[k]
            best = -1
            bw = s[0]
            for k in range(c):
                if h[k] != 0 and (best == -1 or s[k] > bw):
                    best = k
                    bw = s[k]
            y[i] = labels[best if best >= 0 else 0]
            for k in range(c):
                vals[k] = np.float32(s[k]) if h[k] != 0 else _F0
            _transform_row(vals, transform)
            for k in range(c):
                z[i, k] = vals[k]
            continue
        # two classes
        wa = -1
        size = 2
        if nb == 2:
            if h[1] != 0:
                s[1] = base[1] + s[0]
                s[0] = -s[1]
            else:
                s[1] += base[1]
                s[0] += base[0]
        elif nb == 1:
            s[0] += base[0]
            if h[1] == 0:
                size = 1
        else:
            wa = 3
            if h[1] == 0:
                size = 1
        pos = s[1] if (size == 2 and h[1] != 0) else (s[0] if h[0] != 0 else s[0] * 0)
        if binary_case:
            if all_positive:
                if pos > 0.5:
                    wa = 0
                    y[i] = labels[1]
                else:
                    wa = 1
                    y[i] = labels[0]
            elif pos > 0:
                wa = 2
                y[i] = labels[1]
            else:
                wa = 3
                y[i] = labels[0]
        else:
            y[i] = 1 if pos > 0 else 0
        v0 = np.float32(s[0]) if h[0] != 0 else _F0
        if size == 2:
            vals[0] = v0
            vals[1] = np.float32(s[1]) if h[1] != 0 else _F0
            _transform_row(vals, transform)
            z[i, 0] = vals[0]
            z[i, 1] = vals[1]
        elif transform == 4:
            z[i, 0] = _probit(v0)
            z[i, 1] = _F0  # onnxruntime leaves this column unwritten
        elif transform == 2 and wa >= 0:
            z[i, 0] = _logistic(-v0)
            z[i, 1] = _logistic(v0)
        elif wa == 0 or wa == 1:
            z[i, 0] = _F1 - v0
            z[i, 1] = v0
        elif wa == 2 or wa == 3:
            z[i, 0] = -v0
            z[i, 1] = v0
        else:
            z[i, 0] = v0
            z[i, 1] = _F0  # onnxruntime leaves this column unwritten
