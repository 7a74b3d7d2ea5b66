"""Tree ensembles of the ``ai.onnx.ml`` domain: TreeEnsemble (version 5), TreeEnsembleRegressor and
TreeEnsembleClassifier (versions 1-3, the ops sklearn-onnx and onnxmltools export).

Every form is flattened once per node into the arrays of :mod:`edgedl.kernels.cpu.trees` (interior nodes,
children, leaves with their (target, weight) votes, one root per tree); the structure is checked when the model
is loaded (children exist and stay in their tree, no cycles, targets / classes in range) and feature ids against
X's width when the plan is built, so the Numba walk never reads out of bounds. X is [N, F] (or [F], one row);
float32 and float64 rows are walked as they are, integer rows are first converted to float32 (float64 when the
thresholds are doubles), as onnxruntime compares them.

A branch goes to its true child when ``x <op> threshold`` (BRANCH_LEQ / LT / GTE / GT / EQ / NEQ, or
BRANCH_MEMBER: x is one of the node's ``membership_values`` set) or when x is NaN and the node's
``nodes_missing_value_tracks_true`` is 1. Leaf weights are aggregated per target (float64).

Regressor and TreeEnsemble (``n_targets`` T, ``base_values`` b of length 0 or T): SUM ``s = sum + b``,
AVERAGE ``s = sum / n_trees + b``, MIN / MAX ``s = b + (min / max of the weights that reached the target,
0 if none)``; then ``post_transform`` (NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT; with T == 1 only PROBIT
applies, as in onnxruntime). TreeEnsemble's output has X's type; the others are float32.

Classifier (C = number of class labels, votes summed per class): onnxruntime's rules. C > 2: base values are
added, the label is the class with the largest score among those that received a vote, the scores are
post-transformed. C == 2 has onnxruntime's binary cases: when every vote goes to one class id ("binary case")
the single score s decides (``s > 0.5`` with all weights positive, else ``s > 0``), and the two score columns
are ``[1 - s, s]``, ``[-s, s]`` or ``[logistic(-s), logistic(s)]`` depending on the weights' signs and the
transform; see :func:`edgedl.kernels.cpu.trees.classifier_finalize`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, register
from .common import require_dtype
from .ml import ML, TRANSFORMS, post_transform, probit, rows_features, transform_attr

_F32 = np.dtype(np.float32)
_OBJ = np.dtype(object)
_I64 = np.dtype(np.int64)
_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5}
_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")


@dataclass
class Forest:
    """A flattened forest (see :mod:`edgedl.kernels.cpu.trees` for the encoding)."""

    feat: np.ndarray
    thr: np.ndarray
    mode: np.ndarray
    mtrue: np.ndarray
    tchild: np.ndarray
    fchild: np.ndarray
    mstart: np.ndarray
    mvals: np.ndarray
    roots: np.ndarray
    lstart: np.ndarray
    ltarget: np.ndarray
    lweight: np.ndarray
    #: float32 when the model's thresholds are float32 (exact either way), else float64
    thr_dtype: type = np.float64

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    def max_feature(self) -> int:
        """The largest feature index a walk reads (-1: none); computed by :meth:`pack`."""
        return self.max_feat

    def pack(self, op: Op) -> None:
        """The kernels' packed layout: reachable interior nodes tree by tree in depth-first order (true child
        next), ``nodes`` [n, 4] int32 = (feature, true child, false child, mode | 8 * mtrue), ``thr_packed``,
        ``mstart_packed`` / ``mvals`` re-ordered alike, ``roots_packed``, and ``walk_cost`` (an estimate of the
        nodes one row visits, for the parallel threshold)."""
        n = int(self.feat.size)
        if n >= 2 ** 31 - 1 or (n and int(self.feat.max()) >= 2 ** 31):
            raise op.error("the forest is too large")
        tch, fch = self.tchild.tolist(), self.fchild.tolist()
        seen = bytearray(n)
        order: list[int] = []
        for r in self.roots.tolist():
            stack = [r] if r >= 0 else []
            while stack:
                k = stack.pop()
                if seen[k]:
                    continue
                seen[k] = 1
                order.append(k)
                if fch[k] >= 0:
                    stack.append(fch[k])
                if tch[k] >= 0:
                    stack.append(tch[k])
        old = np.asarray(order, np.int64)
        new_of = np.full(n + 1, -1, np.int64)
        new_of[old] = np.arange(old.size)

        def remap(c):
            return np.where(c >= 0, new_of[np.maximum(c, 0)], c)

        nodes = np.empty((old.size, 4), np.int32)
        nodes[:, 0] = self.feat[old]
        self.max_feat = int(nodes[:, 0].max()) if old.size else -1
        nodes[:, 1] = remap(self.tchild[old])
        nodes[:, 2] = remap(self.fchild[old])
        nodes[:, 3] = self.mode[old].astype(np.int32) + 8 * (self.mtrue[old] != 0)
        self.nodes = nodes
        self.thr_packed = np.ascontiguousarray(self.thr[old].astype(self.thr_dtype))
        counts = (self.mstart[1:] - self.mstart[:-1])[old] if n else np.zeros(0, np.int64)
        self.mstart_packed = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.mvals.size:
            self.mvals = np.concatenate([self.mvals[self.mstart[k]:self.mstart[k + 1]] for k in old]
                                        + [np.zeros(0)]).astype(np.float64)
        self.roots_packed = remap(self.roots).astype(np.int64)
        per_tree = old.size / max(1, self.n_trees)
        self.walk_cost = max(1, self.n_trees) * max(1, int(np.log2(per_tree + 1)) + 1)
        modes = np.unique(self.mode[old])
        #: the comparison every interior node uses (0..5), or -1 (mixed, set membership): picks the kernel
        self.same_mode = int(modes[0]) if modes.size == 1 and modes[0] < 6 else (0 if modes.size == 0 else -1)
        self.has_missing = bool((self.mtrue[old] != 0).any())


def _check_acyclic(op: Op, tchild: np.ndarray, fchild: np.ndarray) -> None:
    """ShapeError if the interior nodes' child links form a cycle (Kahn's algorithm)."""
    n = tchild.shape[0]
    if n == 0:
        return
    src = np.concatenate([np.arange(n), np.arange(n)])
    dst = np.concatenate([tchild, fchild])
    keep = dst >= 0
    src, dst = src[keep], dst[keep]
    indeg = np.bincount(dst, minlength=n)
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    start = np.searchsorted(src, np.arange(n + 1))
    stack = list(np.flatnonzero(indeg == 0))
    seen = 0
    while stack:
        k = stack.pop()
        seen += 1
        for d in dst[start[k]:start[k + 1]]:
            indeg[d] -= 1
            if indeg[d] == 0:
                stack.append(d)
    if seen != n:
        raise op.error("the trees' child links form a cycle")


def _ints(op: Op, name: str, required: bool = True) -> np.ndarray:
    v = op.attr(name)
    if v is None:
        if required:
            raise op.error(f"needs the '{name}' attribute")
        return np.zeros(0, np.int64)
    return np.asarray(v, dtype=np.int64).reshape(-1)


def _floats(op: Op, name: str) -> tuple[np.ndarray | None, bool]:
    """The values of ``name`` or ``name_as_tensor`` (float64) and whether they were doubles."""
    t = op.attr(name + "_as_tensor")
    if t is not None:
        arr = np.asarray(t).reshape(-1)
        return arr.astype(np.float64), arr.dtype == np.float64
    v = op.attr(name)
    if v is None:
        return None, False
    return np.asarray(v, dtype=np.float32).astype(np.float64).reshape(-1), False


def legacy_forest(op: Op, votes: str, n_outputs: int) -> tuple[Forest, bool]:
    """The Forest of a TreeEnsembleRegressor (``votes`` = "target") or TreeEnsembleClassifier ("class"), and
    whether its thresholds are doubles."""
    treeids = _ints(op, "nodes_treeids")
    nodeids = _ints(op, "nodes_nodeids")
    featids = _ints(op, "nodes_featureids")
    trueids = _ints(op, "nodes_truenodeids")
    falseids = _ints(op, "nodes_falsenodeids")
    modes = op.attr("nodes_modes")
    if modes is None:
        raise op.error("needs the 'nodes_modes' attribute")
    modes = list(modes)
    values, doubles = _floats(op, "nodes_values")
    n = treeids.size
    if values is None:
        values = np.zeros(n, np.float64)
    mtt = _ints(op, "nodes_missing_value_tracks_true", required=False)
    for name, arr in (("nodes_nodeids", nodeids), ("nodes_featureids", featids), ("nodes_truenodeids", trueids),
                      ("nodes_falsenodeids", falseids), ("nodes_modes", modes), ("nodes_values", values)):
        if len(arr) != n:
            raise op.error(f"{name} has {len(arr)} entries but nodes_treeids has {n}")
    if mtt.size not in (0, n):
        raise op.error(f"nodes_missing_value_tracks_true has {mtt.size} entries for {n} nodes")
    if n == 0:
        raise op.error("has no nodes")
    pos = {}
    for k, key in enumerate(zip(treeids.tolist(), nodeids.tolist())):
        if key in pos:
            raise op.error(f"node {key[1]} of tree {key[0]} is defined twice")
        pos[key] = k
    is_leaf = np.zeros(n, bool)
    code = np.zeros(n, np.int8)
    for k, m in enumerate(modes):
        if m == "LEAF":
            is_leaf[k] = True
        elif m in _MODES:
            code[k] = _MODES[m]
        else:
            raise op.error(f"node mode {m!r} is not one of {', '.join(list(_MODES) + ['LEAF'])}")
    interior = np.flatnonzero(~is_leaf)
    leaves = np.flatnonzero(is_leaf)
    enc = np.empty(n, np.int64)  # position -> encoded reference (interior index or -(leaf + 1))
    enc[interior] = np.arange(interior.size)
    enc[leaves] = -(np.arange(leaves.size) + 1)

    def child(k: int, cid: int, which: str) -> int:
        p = pos.get((int(treeids[k]), int(cid)))
        if p is None:
            raise op.error(f"node {nodeids[k]} of tree {treeids[k]}: its {which} node {cid} does not exist")
        if p == k:
            raise op.error(f"node {nodeids[k]} of tree {treeids[k]} is its own {which} node")
        return int(enc[p])

    tchild = np.array([child(k, trueids[k], "true") for k in interior], np.int64)
    fchild = np.array([child(k, falseids[k], "false") for k in interior], np.int64)
    _, first = np.unique(treeids, return_index=True)
    roots = enc[np.sort(first)]
    # votes, grouped by leaf
    w_tree = _ints(op, f"{votes}_treeids")
    w_node = _ints(op, f"{votes}_nodeids")
    w_id = _ints(op, f"{votes}_ids")
    w_val, w_doubles = _floats(op, f"{votes}_weights")
    if w_val is None:
        raise op.error(f"needs the '{votes}_weights' attribute")
    for name, arr in ((f"{votes}_nodeids", w_node), (f"{votes}_ids", w_id), (f"{votes}_weights", w_val)):
        if arr.size != w_tree.size:
            raise op.error(f"{name} has {arr.size} entries but {votes}_treeids has {w_tree.size}")
    if w_id.size and (w_id.min() < 0 or w_id.max() >= n_outputs):
        bad = w_id[(w_id < 0) | (w_id >= n_outputs)][0]
        raise op.error(f"{votes}_ids holds {bad}, outside [0, {n_outputs})")
    w_leaf = np.empty(w_tree.size, np.int64)
    for j, key in enumerate(zip(w_tree.tolist(), w_node.tolist())):
        p = pos.get(key)
        if p is None:
            raise op.error(f"a weight refers to node {key[1]} of tree {key[0]}, which does not exist")
        w_leaf[j] = -enc[p] - 1 if is_leaf[p] else -1  # votes on interior nodes are never reached
    keep = w_leaf >= 0
    order = np.argsort(w_leaf[keep], kind="stable")
    lstart = np.searchsorted(w_leaf[keep][order], np.arange(leaves.size + 1)).astype(np.int64)
    mt = mtt[interior] if mtt.size else np.zeros(interior.size, np.int64)
    score_dtype = np.float64 if doubles or w_doubles else np.float32
    forest = Forest(featids[interior].astype(np.int64), values[interior].astype(np.float64), code[interior],
                    (mt == 1).astype(np.uint8), tchild, fchild, np.zeros(interior.size + 1, np.int64),
                    np.zeros(0, np.float64), roots.astype(np.int64), lstart,
                    w_id[keep][order].astype(np.int64), w_val[keep][order].astype(score_dtype),
                    np.float64 if doubles else np.float32)
    _check_acyclic(op, tchild, fchild)
    forest.pack(op)
    return forest, doubles


def first_votes_only(forest: Forest) -> None:
    """Keep each leaf's first vote only: what onnxruntime's single-target path reads."""
    counts = np.diff(forest.lstart)
    first = forest.lstart[:-1][counts > 0]
    forest.ltarget = forest.ltarget[first]
    forest.lweight = forest.lweight[first]
    forest.lstart = np.concatenate([[0], np.cumsum(np.minimum(counts, 1))]).astype(np.int64)


def _finish_regression(score, has, agg: str, n_trees: int, base: np.ndarray | None, transform: str) -> np.ndarray:
    """Final [N, T] regression values from the aggregated scores, onnxruntime's rules: with one target the
    base value is added even when no leaf voted (MIN / MAX: then the value is the base); with several, a target
    no leaf voted for is 0 (base values are only added to targets that got votes)."""
    t = score.shape[1]
    b = None if base is None else base.astype(score.dtype)
    if agg == "AVERAGE":
        score = score / score.dtype.type(n_trees)
    if t == 1:
        if agg in ("MIN", "MAX"):
            score = np.where(has != 0, score, score.dtype.type(0))
        s = score if b is None else score + b
        return probit(s) if transform == "PROBIT" else s
    s = score if b is None else score + b
    s = np.where(has != 0, s, s.dtype.type(0))
    return post_transform(s, transform)


class _TreeOp(Op):
    domain = ML
    kernels = {"cpu": ("float32", "float64")}
    forest: Forest
    x_cast = _F32

    def _check_x(self, x: TensorType, allowed) -> tuple[int, int]:
        require_dtype(self, x, allowed, "X")
        n, f = rows_features(self, x)
        mf = self.forest.max_feature()
        if mf >= f:
            raise self.error(f"a node reads feature {mf} but X has {f} features")
        return n, f

    def _rows(self, x: np.ndarray) -> np.ndarray:
        x2 = x.reshape(1, -1) if x.ndim == 1 else x
        if x2.dtype not in (np.float32, np.float64):
            x2 = x2.astype(self.x_cast)
        return np.ascontiguousarray(x2)

    def _scores(self, x: np.ndarray, agg: int, n_out: int):
        from ..kernels.cpu.trees import forest_scores

        mf = self.forest.max_feature()
        if x.shape[-1] <= mf:
            raise self.error(f"a node reads feature {mf} but X has {x.shape[-1]} features")
        return forest_scores(self._rows(x), self.forest, agg, n_out)

    def _check_base(self, base: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
        if base is not None and base.size not in (0, n):
            raise self.error(f"base_values has {base.size} entries; expected 0 or {n} ({what})")
        return base if base is not None and base.size else None

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            for o, r in zip(outputs, self.ref(*inputs)):
                o[...] = r
        return Kernel(run)


@register
class TreeEnsembleRegressor(_TreeOp):
    op_type = "TreeEnsembleRegressor"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.n_targets = int(self.attr("n_targets", 1))
        if self.n_targets < 1:
            raise self.error(f"n_targets must be >= 1, got {self.n_targets}")
        self.agg = self.attr("aggregate_function", "SUM")
        if self.agg not in _AGGREGATES:
            raise self.error(f"aggregate_function must be one of {', '.join(_AGGREGATES)}, got {self.agg!r}")
        self.transform = transform_attr(self, self.attr("post_transform", "NONE"))
        self.forest, doubles = legacy_forest(self, "target", self.n_targets)
        if self.n_targets == 1:
            first_votes_only(self.forest)
        self.x_cast = np.dtype(np.float64) if doubles else _F32
        base, _ = _floats(self, "base_values")
        self.base = self._check_base(base, self.n_targets, "one per target")

    def infer(self, ins, consts):
        n, _ = self._check_x(ins[0], ("float32", "float64", "int64", "int32"))
        return [TensorType((n, self.n_targets), _F32)]

    def ref(self, x):
        score, has = self._scores(x, _AGGREGATES.index(self.agg), self.n_targets)
        out = _finish_regression(score, has, self.agg, self.forest.n_trees, self.base, self.transform)
        return [out.astype(np.float32)]


@register
class TreeEnsembleClassifier(_TreeOp):
    op_type = "TreeEnsembleClassifier"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        ints, strs = self.attr("classlabels_int64s"), self.attr("classlabels_strings")
        if bool(ints) == bool(strs):
            raise self.error("needs exactly one non-empty classlabels_int64s or classlabels_strings attribute")
        self.strings = bool(strs)
        if self.strings:
            self.label_names = np.empty(len(strs), object)
            self.label_names[:] = list(strs)
            self.labels = np.arange(len(strs), dtype=np.int64)
        else:
            self.labels = np.asarray(ints, np.int64)
        self.n_classes = int(self.labels.size)
        if self.n_classes < 2:
            raise self.unsupported("a classifier with a single class label is not supported")
        self.transform = transform_attr(self, self.attr("post_transform", "NONE"))
        self.forest, doubles = legacy_forest(self, "class", self.n_classes)
        self.x_cast = np.dtype(np.float64) if doubles else _F32
        base, _ = _floats(self, "base_values")
        self.base = self._check_base(base, self.n_classes, "one per class")
        ids = _ints(self, "class_ids", required=False)
        w, _ = _floats(self, "class_weights")
        self.binary_case = self.n_classes == 2 and np.unique(ids).size == 1
        self.all_positive = bool(w is None or not (w < 0).any())

    def infer(self, ins, consts):
        n, _ = self._check_x(ins[0], ("float32", "float64", "int64", "int32"))
        return [TensorType((n,), _OBJ if self.strings else _I64), TensorType((n, self.n_classes), _F32)]

    def ref(self, x):
        from ..kernels.cpu.trees import classifier_finalize

        score, has = self._scores(x, 1, self.n_classes)
        n = score.shape[0]
        z = np.empty((n, self.n_classes), np.float32)
        y = np.empty(n, np.int64)
        base = self.base if self.base is not None else np.zeros(0, np.float64)
        classifier_finalize(score, has, base.astype(score.dtype), TRANSFORMS.index(self.transform),
                            self.binary_case, self.all_positive, self.labels, z, y)
        if self.strings:
            return [self.label_names[y], z]
        return [y, z]


@register
class TreeEnsemble(_TreeOp):
    """TreeEnsemble (ai.onnx.ml 5): interior nodes ``nodes_*`` and leaves ``leaf_*`` in separate arrays."""

    op_type = "TreeEnsemble"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        agg = int(self.attr("aggregate_function", 1))
        if not 0 <= agg < 4:
            raise self.error(f"aggregate_function must be 0 (AVERAGE) .. 3 (MAX), got {agg}")
        self.agg = _AGGREGATES[agg]
        pt = int(self.attr("post_transform", 0))
        if not 0 <= pt < len(TRANSFORMS):
            raise self.error(f"post_transform must be 0 .. {len(TRANSFORMS) - 1}, got {pt}")
        self.transform = TRANSFORMS[pt]
        self.forest = self._forest()
        n_targets = self.attr("n_targets")
        lt = self.forest.ltarget
        self.n_targets = int(n_targets) if n_targets is not None else (int(lt.max()) + 1 if lt.size else 1)
        if self.n_targets < 1:
            raise self.error(f"n_targets must be >= 1, got {self.n_targets}")
        if lt.size and (lt.min() < 0 or lt.max() >= self.n_targets):
            raise self.error(f"leaf_targetids must lie in [0, {self.n_targets}), got {int(lt.min())}..{int(lt.max())}")

    def _forest(self) -> Forest:
        feat = _ints(self, "nodes_featureids")
        tids, fids = _ints(self, "nodes_truenodeids"), _ints(self, "nodes_falsenodeids")
        tleaf, fleaf = _ints(self, "nodes_trueleafs"), _ints(self, "nodes_falseleafs")
        modes = self.attr("nodes_modes")
        splits = self.attr("nodes_splits")
        if modes is None or splits is None:
            raise self.error("needs the 'nodes_modes' and 'nodes_splits' attributes")
        modes = np.asarray(modes).reshape(-1).astype(np.int64)
        splits = np.asarray(splits).reshape(-1)
        thr_dtype = np.float64 if splits.dtype == np.float64 else np.float32
        splits = splits.astype(np.float64)
        n = feat.size
        for name, arr in (("nodes_modes", modes), ("nodes_splits", splits), ("nodes_truenodeids", tids),
                          ("nodes_falsenodeids", fids), ("nodes_trueleafs", tleaf), ("nodes_falseleafs", fleaf)):
            if arr.size != n:
                raise self.error(f"{name} has {arr.size} entries but nodes_featureids has {n}")
        if n and (modes.min() < 0 or modes.max() > 6):
            raise self.error("nodes_modes must lie in 0 (BRANCH_LEQ) .. 6 (BRANCH_MEMBER)")
        if n and feat.min() < 0:
            raise self.error("nodes_featureids must be >= 0")
        mtt = _ints(self, "nodes_missing_value_tracks_true", required=False)
        if mtt.size not in (0, n):
            raise self.error(f"nodes_missing_value_tracks_true has {mtt.size} entries for {n} nodes")
        targets = _ints(self, "leaf_targetids")
        weights = self.attr("leaf_weights")
        if weights is None:
            raise self.error("needs the 'leaf_weights' attribute")
        weights = np.asarray(weights).reshape(-1)
        weights = weights.astype(np.float64 if weights.dtype == np.float64 else np.float32)
        n_leaves = targets.size
        if weights.size != n_leaves:
            raise self.error(f"leaf_weights has {weights.size} entries but leaf_targetids has {n_leaves}")

        def encode(ids, leafs, which):
            is_leaf = leafs != 0
            lim = np.where(is_leaf, n_leaves, n)
            bad = np.flatnonzero((ids < 0) | (ids >= lim))
            if bad.size:
                k = int(bad[0])
                raise self.error(f"node {k}: {which} {'leaf' if is_leaf[k] else 'node'} {int(ids[k])} is out of range")
            return np.where(is_leaf, -ids - 1, ids).astype(np.int64)

        tchild, fchild = encode(tids, tleaf, "true"), encode(fids, fleaf, "false")
        if n and ((tchild == np.arange(n)) | (fchild == np.arange(n))).any():
            raise self.error("a node is its own child")
        roots = _ints(self, "tree_roots")
        if roots.size == 0:
            raise self.error("tree_roots is empty")
        if roots.min() < 0 or roots.max() >= n:
            raise self.error(f"tree_roots must index nodes_* entries [0, {n})")
        # a tree that is a single leaf: a root whose two branches are the same leaf
        single = (tleaf[roots] != 0) & (fleaf[roots] != 0) & (tids[roots] == fids[roots])
        roots_enc = np.where(single, -tids[roots] - 1, roots).astype(np.int64)
        # set membership
        member = np.flatnonzero(modes == 6)
        mstart = np.zeros(n + 1, np.int64)
        mvals = np.zeros(0, np.float64)
        if member.size:
            mv = self.attr("membership_values")
            if mv is None:
                raise self.error("BRANCH_MEMBER nodes need the 'membership_values' attribute")
            mv = np.asarray(mv).reshape(-1).astype(np.float64)
            cuts = np.flatnonzero(np.isnan(mv))
            if cuts.size != member.size:
                raise self.error(f"membership_values holds {cuts.size} NaN-terminated sets for {member.size} "
                                 "BRANCH_MEMBER nodes")
            counts = np.zeros(n, np.int64)
            counts[member] = np.diff(np.concatenate([[-1], cuts])) - 1
            mstart[1:] = np.cumsum(counts)
            mvals = mv[~np.isnan(mv)]
        mt = (mtt == 1).astype(np.uint8) if mtt.size else np.zeros(n, np.uint8)
        forest = Forest(feat, splits, modes.astype(np.int8), mt, tchild, fchild, mstart, mvals, roots_enc,
                        np.arange(n_leaves + 1, dtype=np.int64), targets, weights, thr_dtype)
        if single.any():  # both branches of such a node reach the same leaf: its feature id does not matter
            forest.feat = feat.copy()
            forest.feat[roots[single]] = 0
        _check_acyclic(self, tchild, fchild)
        forest.pack(self)
        return forest

    def infer(self, ins, consts):
        x = ins[0]
        n, _ = self._check_x(x, ("float32", "float64", "float16"))
        return [TensorType((n, self.n_targets), x.dtype)]

    def ref(self, x):
        xs = x.astype(np.float32) if x.dtype == np.float16 else x
        score, has = self._scores(xs, _AGGREGATES.index(self.agg), self.n_targets)
        out = _finish_regression(score, has, self.agg, self.forest.n_trees, None, self.transform)
        return [out.astype(x.dtype)]
