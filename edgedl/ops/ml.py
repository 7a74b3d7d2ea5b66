"""Classic-ML ops of the ``ai.onnx.ml`` domain (trees are in :mod:`edgedl.ops.ml_trees`).

Semantics follow the ONNX-ML spec and, where the spec is silent, onnxruntime (what exported models are checked
against). Numeric work is numpy's vectorized C (BLAS for the linear models); string lookups are one dict
comprehension over the flattened array.

* LabelEncoder (ai.onnx.ml 1-4): maps each element through ``keys_*`` -> ``values_*`` (strings, int64s,
  floats or, from version 4, 1-D ``keys_tensor`` / ``values_tensor`` of any supported type); elements not
  found get the default (``default_tensor`` / ``default_string`` "_Unused" / ``default_int64`` -1 /
  ``default_float`` -0.0, by the values' type). A repeated key maps to its last value; a NaN key matches every
  NaN. Version 1 (``classes_strings``): strings -> their index in the list (``default_int64`` if absent) or
  int64 -> ``classes_strings[x]`` (``default_string`` if out of range), the direction given by X's type.
* ArrayFeatureExtractor: ``Z[..., k] = X[..., Y.flat[k]]``; a 1-D X gives [1, K]. Indices outside
  [0, last dim) raise EdgeDLError at run time.
* Binarizer: ``Y = (X > threshold) ? 1 : 0`` in X's type (NaN -> 0).
* Normalizer: per row of an [N, C] (or [C]) input, float32 out: MAX ``x / max(x)``, L1 ``x / sum|x|``,
  L2 ``x / sqrt(sum x^2)``; a zero divisor leaves the row unchanged.
* Scaler: ``Y = (X - offset) * scale`` (float32 out), each attribute of length 1 or the last dimension.
* OneHotEncoder: Y = X.shape + [categories] float32, one 1 at the category's position; numbers are truncated to
  int64 and looked up in ``cats_int64s``, strings in ``cats_strings``; an unknown value gives a zero row
  (``zeros=1``) or EdgeDLError at run time (``zeros=0``).
* Imputer: elements equal to ``replaced_value_float`` / ``replaced_value_int64`` (NaN: every NaN) become the
  imputed value of their feature (last dimension) or the single imputed value.
* LinearRegressor: ``Y = X W^T + b`` ([N, targets] float32, W = ``coefficients`` as [targets, F]).
* LinearClassifier: scores ``X W^T + b`` ([N, T]); the label is the class of the largest raw score (T >= 2) or,
  with one score, ``score > 0 ? classlabels[1] : classlabels[0]``. With one score and two class labels the
  scores output has two columns ``[1 - p, p]`` with ``p = logistic(s)`` for LOGISTIC, else ``p = s`` (as
  onnxruntime; PROBIT is refused there); otherwise ``post_transform`` is applied to the scores.

Post transforms (shared with the tree ensembles; float32 arithmetic, as onnxruntime computes them): LOGISTIC
``1 / (1 + e^-x)``,
SOFTMAX per row, SOFTMAX_ZERO (a softmax over the non-zero entries of a row; zeros stay ~0), PROBIT
``sqrt(2) * erfinv(2x - 1)`` with onnxruntime's closed-form erfinv approximation (Winitzki, a = 0.147). With
a single score column only PROBIT applies.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType
from ..registry import Op, register
from .common import require_dtype

ML = "ai.onnx.ml"
_OBJ = np.dtype(object)
_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)
_NUMERIC_IN = ("float32", "float64", "int64", "int32")
TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")


# --- post transforms: onnxruntime's formulas, computed in float32 as onnxruntime does -----------------------
_ONE = np.float32(1.0)


def logistic(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore"):
        v = _ONE / (_ONE + np.exp(-np.abs(x)))
    return np.where(x < 0, _ONE - v, v)


def erfinv_approx(x: np.ndarray) -> np.ndarray:
    """Winitzki's closed-form erfinv (a = 0.147), the approximation onnxruntime's PROBIT uses (float32)."""
    x = np.asarray(x, np.float32)
    sgn = np.where(x < 0, -_ONE, _ONE)
    a = np.float32(0.147)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.log((_ONE - x) * (_ONE + x))
        v = np.float32(2.0) / (np.float32(math.pi) * a) + np.float32(0.5) * w
        return sgn * np.sqrt(-v + np.sqrt(v * v - _ONE / a * w))


def probit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.float32(math.sqrt(2.0)) * erfinv_approx(np.float32(2.0) * x - _ONE)


def softmax_rows(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, np.float32)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_zero_rows(s: np.ndarray) -> np.ndarray:
    """Softmax over each row's entries with |v| > 1e-7; the others become v * exp(-max) (onnxruntime)."""
    s = np.asarray(s, np.float32)
    vmax = s.max(axis=1, keepdims=True)
    nz = np.abs(s) > np.float32(1e-7)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = np.where(nz, np.exp(s - vmax), s * np.exp(-vmax))
        return e / np.where(nz, e, np.float32(0)).sum(axis=1, keepdims=True)


def post_transform(scores: np.ndarray, transform: str) -> np.ndarray:
    """``transform`` applied to [N, K] scores (float32 results, except NONE, which returns the scores as they
    are); with K == 1 only PROBIT changes them."""
    if transform == "PROBIT":
        return probit(scores)
    if transform == "NONE" or scores.shape[1] < 2:
        return scores
    if transform == "LOGISTIC":
        return logistic(scores)
    if transform == "SOFTMAX":
        return softmax_rows(scores)
    return softmax_zero_rows(scores)


def transform_attr(op: Op, value) -> str:
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(TRANSFORMS):
        return TRANSFORMS[int(value)]
    if value not in TRANSFORMS:
        raise op.error(f"post_transform must be one of {', '.join(TRANSFORMS)}, got {value!r}")
    return value


def rows_features(op: Op, x: TensorType, what: str = "X") -> tuple[int, int]:
    """(N, F) of a [N, F] or [F] input."""
    if len(x.shape) == 1:
        return 1, int(x.shape[0])
    if len(x.shape) == 2:
        return int(x.shape[0]), int(x.shape[1])
    raise op.error(f"{what} must be [N, F] or [F], got shape {tuple(x.shape)}")


def float_attr_array(op: Op, name: str) -> np.ndarray | None:
    v = op.attr(name)
    if v is None:
        return None
    return np.asarray(v, dtype=np.float64).reshape(-1)


# --------------------------------------------------------------------------------------------------------
def _attr_array(name: str, value) -> np.ndarray:
    """keys_* / values_* as a 1-D array: strings -> object, int64s -> int64, floats -> float32, tensor as is."""
    if name.endswith("_tensor"):
        return np.asarray(value).reshape(-1)
    if name.endswith("_strings"):
        out = np.empty(len(value), object)
        out[:] = list(value)
        return out
    if name.endswith("_int64s"):
        return np.asarray(value, dtype=np.int64).reshape(-1)
    return np.asarray(value, dtype=np.float32).reshape(-1)


class _Lookup:
    """A key -> value map applied to whole arrays: a dict for strings, a sorted key array for numbers."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, default, out_dtype: np.dtype):
        self.out_dtype = np.dtype(out_dtype)
        self.default = default
        self.strings = keys.dtype == _OBJ
        table = dict(zip(keys.tolist(), values.tolist()))  # a repeated key keeps its last value
        if self.strings:
            self.table = table
            return
        self.nan_value = None
        if keys.dtype.kind == "f":
            for k, v in zip(keys.tolist(), values.tolist()):
                if k != k:
                    self.nan_value = v
            table = {k: v for k, v in table.items() if k == k}
        ks = sorted(table)
        self.keys = np.asarray(ks, dtype=keys.dtype)
        vals = [table[k] for k in ks]
        if self.out_dtype == _OBJ:
            self.values = np.empty(len(vals), object)
            self.values[:] = vals
        else:
            self.values = np.asarray(vals, dtype=self.out_dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.strings:
            flat = x.reshape(-1)
            get, d = self.table.get, self.default
            if self.out_dtype == _OBJ:
                out = np.empty(flat.shape, object)
                out[:] = [get(s, d) for s in flat]
            else:
                out = np.fromiter((get(s, d) for s in flat), dtype=self.out_dtype, count=flat.size)
            return out.reshape(x.shape)
        flat = x.reshape(-1)
        keys = self.keys
        if keys.dtype.kind != flat.dtype.kind or keys.dtype.itemsize < flat.dtype.itemsize:
            common = np.result_type(keys.dtype, flat.dtype)
            keys, flat = keys.astype(common), flat.astype(common)
        if keys.size:
            pos = np.minimum(np.searchsorted(keys, flat), keys.size - 1)
            found = keys[pos] == flat
            picked = self.values[pos]
        else:
            found = np.zeros(flat.shape, bool)
            picked = np.empty(flat.shape, self.out_dtype)
        out = np.empty(flat.shape, self.out_dtype)
        out[...] = self.default
        out[found] = picked[found]
        if flat.dtype.kind == "f" and self.nan_value is not None:
            out[np.isnan(flat)] = self.nan_value
        return out.reshape(x.shape)


@register
class LabelEncoder(Op):
    op_type = "LabelEncoder"
    domain = ML

    def __init__(self, node, opset):
        super().__init__(node, opset)
        a = node.attrs
        keys = [k for k in ("keys_strings", "keys_int64s", "keys_floats", "keys_tensor") if k in a]
        values = [k for k in ("values_strings", "values_int64s", "values_floats", "values_tensor") if k in a]
        self.v1 = not keys and not values
        if self.v1:
            classes = list(self.attr("classes_strings") or [])
            self.classes = np.empty(len(classes), object)
            self.classes[:] = classes
            first = {}
            for k, s in enumerate(classes):
                first.setdefault(s, k)
            self.index_of = first
            self.default_int64 = int(self.attr("default_int64", -1))
            self.default_string = self.attr("default_string", "_Unused")
            return
        if len(keys) != 1 or len(values) != 1:
            raise self.error(f"needs exactly one keys_* and one values_* attribute, got {keys + values}")
        k = _attr_array(keys[0], a[keys[0]])
        v = _attr_array(values[0], a[values[0]])
        if k.size != v.size:
            raise self.error(f"{keys[0]} has {k.size} entries but {values[0]} has {v.size}")
        if k.dtype != _OBJ and k.dtype.kind not in "iuf":
            raise self.unsupported(f"keys of type {k.dtype.name} are not supported")
        out_dtype = v.dtype
        if values[0] == "values_tensor":
            dt = a.get("default_tensor")
            if dt is not None:
                dt = np.asarray(dt).reshape(-1)
                if dt.size != 1:
                    raise self.error(f"default_tensor must hold one value, got {dt.size}")
                default = dt[0] if out_dtype == _OBJ else out_dtype.type(dt[0])
            else:
                default = "_Unused" if out_dtype == _OBJ else out_dtype.type(-1 if out_dtype.kind in "iu" else -0.0)
        elif out_dtype == _OBJ:
            default = self.attr("default_string", "_Unused")
        elif out_dtype == _I64:
            default = int(self.attr("default_int64", -1))
        else:
            default = np.float32(self.attr("default_float", -0.0))
        self.key_kind = "O" if k.dtype == _OBJ else k.dtype.kind
        self.lookup = _Lookup(k, v, default, out_dtype)

    def infer(self, ins, consts):
        x = ins[0]
        dt = np.dtype(x.dtype)
        if self.v1:
            if dt == _OBJ:
                return [TensorType(x.shape, _I64)]
            if dt.kind in "iu":
                return [TensorType(x.shape, _OBJ)]
            raise self.error(f"X must be strings or int64 (version 1), got {dt.name}")
        want = {"O": "strings", "i": "integers", "u": "integers", "f": "floats"}[self.key_kind]
        kind = "O" if dt == _OBJ else dt.kind
        if {"O": "strings", "i": "integers", "u": "integers", "f": "floats", "b": "bool"}.get(kind) != want:
            raise self.error(f"X has type {dt.name} but the keys are {want}")
        return [TensorType(x.shape, self.lookup.out_dtype)]

    def ref(self, x):
        x = np.asarray(x)
        if x.dtype.kind == "U":
            x = x.astype(object)
        if not self.v1:
            return [self.lookup(x)]
        flat = x.reshape(-1)
        if x.dtype == _OBJ:
            get, d = self.index_of.get, self.default_int64
            return [np.fromiter((get(s, d) for s in flat), np.int64, count=flat.size).reshape(x.shape)]
        idx = flat.astype(np.int64)
        ok = (idx >= 0) & (idx < self.classes.size)
        out = np.full(flat.shape, self.default_string, dtype=object)
        out[ok] = self.classes[idx[ok]]
        return [out.reshape(x.shape)]


# --------------------------------------------------------------------------------------------------------
@register
class ArrayFeatureExtractor(Op):
    op_type = "ArrayFeatureExtractor"
    domain = ML
    num_inputs = (2, 2)

    def infer(self, ins, consts):
        x, y = ins
        if len(x.shape) == 0:
            raise self.error("X must have rank >= 1")
        if np.dtype(y.dtype) != _I64:
            raise self.error(f"Y must be int64, got {np.dtype(y.dtype).name}")
        k = int(np.prod(y.shape, dtype=np.int64))
        if consts[1] is not None:
            self._check(consts[1], int(x.shape[-1]))
        shape = (1, k) if len(x.shape) == 1 else tuple(x.shape[:-1]) + (k,)
        return [TensorType(shape, x.dtype)]

    def _check(self, idx, dim):
        flat = np.asarray(idx).reshape(-1)
        bad = np.flatnonzero((flat < 0) | (flat >= dim))
        if bad.size:
            raise self.error(f"index {int(flat[bad[0]])} at position {int(bad[0])} is out of range for a last "
                             f"dimension of size {dim}", EdgeDLError)

    def ref(self, x, y):
        flat = np.asarray(y).reshape(-1)
        self._check(flat, x.shape[-1])
        z = np.take(x, flat, axis=-1)
        return [z.reshape(1, -1) if x.ndim == 1 else z]


@register
class Binarizer(Op):
    op_type = "Binarizer"
    domain = ML

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.threshold = float(self.attr("threshold", 0.0))

    def infer(self, ins, consts):
        require_dtype(self, ins[0], _NUMERIC_IN, "X")
        return [ins[0]]

    def ref(self, x):
        t = np.float32(self.threshold) if x.dtype == _F32 else self.threshold
        return [(x > t).astype(x.dtype)]


@register
class Normalizer(Op):
    op_type = "Normalizer"
    domain = ML

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.norm = self.attr("norm", "MAX")
        if self.norm not in ("MAX", "L1", "L2"):
            raise self.error(f"norm must be MAX, L1 or L2, got {self.norm!r}")

    def infer(self, ins, consts):
        require_dtype(self, ins[0], _NUMERIC_IN, "X")
        rows_features(self, ins[0])
        return [TensorType(ins[0].shape, _F32)]

    def ref(self, x):
        x2 = np.asarray(x, np.float64).reshape(-1, x.shape[-1]) if x.ndim else np.asarray(x, np.float64)
        if self.norm == "MAX":
            div = x2.max(axis=1, keepdims=True) if x2.shape[1] else np.zeros((x2.shape[0], 1))
        elif self.norm == "L1":
            div = np.abs(x2).sum(axis=1, keepdims=True)
        else:
            div = np.sqrt(np.square(x2).sum(axis=1, keepdims=True))
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(div != 0, x2 / np.where(div != 0, div, 1.0), x2)
        return [y.reshape(x.shape).astype(np.float32)]


@register
class Scaler(Op):
    op_type = "Scaler"
    domain = ML

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.scale = float_attr_array(self, "scale")
        self.offset = float_attr_array(self, "offset")
        if self.scale is None or self.offset is None or not self.scale.size or not self.offset.size:
            raise self.error("needs non-empty 'scale' and 'offset' attributes")

    def infer(self, ins, consts):
        x = ins[0]
        require_dtype(self, x, _NUMERIC_IN, "X")
        f = int(x.shape[-1]) if x.shape else 1
        for name, v in (("scale", self.scale), ("offset", self.offset)):
            if v.size not in (1, f):
                raise self.error(f"{name} has {v.size} values; expected 1 or the last dimension {f}")
        return [TensorType(x.shape, _F32)]

    def ref(self, x):
        if x.dtype == np.float64:
            return [((x - self.offset) * self.scale).astype(np.float32)]
        xf = np.asarray(x, np.float32)
        return [(xf - self.offset.astype(np.float32)) * self.scale.astype(np.float32)]


@register
class OneHotEncoder(Op):
    op_type = "OneHotEncoder"
    domain = ML

    def __init__(self, node, opset):
        super().__init__(node, opset)
        ints, strs = self.attr("cats_int64s"), self.attr("cats_strings")
        if bool(ints) == bool(strs):
            raise self.error("needs exactly one non-empty cats_int64s or cats_strings attribute")
        cats = list(ints or strs)
        self.strings = bool(strs)
        self.n = len(cats)
        keys = _attr_array("cats_strings" if strs else "cats_int64s", cats)
        pos = np.arange(self.n, dtype=np.int64)
        # a repeated category: onnxruntime's map keeps the last position
        self.lookup = _Lookup(keys, pos, -1, _I64)
        self.zeros = bool(int(self.attr("zeros", 1)))

    def infer(self, ins, consts):
        x = ins[0]
        dt = np.dtype(x.dtype)
        if self.strings != (dt == _OBJ):
            raise self.error(f"X has type {dt.name} but the categories are {'strings' if self.strings else 'ints'}")
        if not self.strings:
            require_dtype(self, x, _NUMERIC_IN, "X")
        return [TensorType(tuple(x.shape) + (self.n,), _F32)]

    def ref(self, x):
        x = np.asarray(x)
        if x.dtype.kind == "U":
            x = x.astype(object)
        if not self.strings:
            with np.errstate(invalid="ignore"):
                x = x.astype(np.int64)
        pos = self.lookup(x).reshape(-1)
        if not self.zeros and (pos < 0).any():
            k = int(np.flatnonzero(pos < 0)[0])
            raise self.error(f"value {x.reshape(-1)[k]!r} is not a category and zeros=0", EdgeDLError)
        y = np.zeros((pos.size, self.n), np.float32)
        hit = np.flatnonzero(pos >= 0)
        y[hit, pos[hit]] = 1.0
        return [y.reshape(tuple(x.shape) + (self.n,))]


@register
class Imputer(Op):
    op_type = "Imputer"
    domain = ML

    def __init__(self, node, opset):
        super().__init__(node, opset)
        floats, ints = self.attr("imputed_value_floats"), self.attr("imputed_value_int64s")
        if bool(floats) == bool(ints):
            raise self.error("needs exactly one non-empty imputed_value_floats or imputed_value_int64s attribute")
        self.is_float = bool(floats)
        if self.is_float:
            self.values = np.asarray(floats, np.float64)
            self.replaced = float(self.attr("replaced_value_float", 0.0))
        else:
            self.values = np.asarray(ints, np.int64)
            self.replaced = int(self.attr("replaced_value_int64", 0))

    def infer(self, ins, consts):
        x = ins[0]
        dt = np.dtype(x.dtype)
        if self.is_float and dt.kind != "f" or not self.is_float and dt.kind not in "iu":
            raise self.error(f"X has type {dt.name} but the imputed values are "
                             f"{'floats' if self.is_float else 'int64s'}")
        require_dtype(self, x, _NUMERIC_IN, "X")
        if not x.shape:
            raise self.error("X must have rank >= 1")
        if self.values.size not in (1, int(x.shape[-1])):
            raise self.error(f"{self.values.size} imputed values; expected 1 or the last dimension {x.shape[-1]}")
        return [x]

    def ref(self, x):
        vals = self.values.astype(x.dtype)
        if self.is_float and math.isnan(self.replaced):
            mask = np.isnan(x)
        else:
            rep = np.float32(self.replaced) if x.dtype == _F32 else self.replaced
            mask = x == rep
        return [np.where(mask, np.broadcast_to(vals, x.shape) if x.shape else vals[0], x).astype(x.dtype)]


# --------------------------------------------------------------------------------------------------------
def _linear_scores(x: np.ndarray, coef: np.ndarray, intercepts: np.ndarray | None) -> np.ndarray:
    """float32 [N, T] = X W^T + b, X cast to float32 (as onnxruntime)."""
    x2 = np.asarray(x, np.float32).reshape(-1, coef.shape[1])
    s = x2 @ coef.T
    if intercepts is not None:
        s += intercepts
    return s


class _Linear(Op):
    domain = ML

    def _coefficients(self, n_features: int, n_targets: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        coef = np.asarray(self.attr("coefficients") or [], np.float32)
        if n_features <= 0 or coef.size == 0 or coef.size % n_features:
            raise self.error(f"{coef.size} coefficients do not fit {n_features} features")
        t = coef.size // n_features
        if n_targets is not None and t != n_targets:
            raise self.error(f"{coef.size} coefficients for {n_targets} targets of {n_features} features")
        inter = self.attr("intercepts")
        inter = None if not inter else np.asarray(inter, np.float32)
        if inter is not None and inter.size != t:
            raise self.error(f"{inter.size} intercepts for {t} targets")
        return coef.reshape(t, n_features), inter


@register
class LinearRegressor(_Linear):
    op_type = "LinearRegressor"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.targets = int(self.attr("targets", 1))
        if self.targets < 1:
            raise self.error(f"targets must be >= 1, got {self.targets}")
        self.transform = transform_attr(self, self.attr("post_transform", "NONE"))

    def infer(self, ins, consts):
        require_dtype(self, ins[0], _NUMERIC_IN, "X")
        n, f = rows_features(self, ins[0])
        self.coef, self.inter = self._coefficients(f, self.targets)
        return [TensorType((n, self.targets), _F32)]

    def ref(self, x):
        if not hasattr(self, "coef"):
            self.infer([TensorType(x.shape, x.dtype)], [None])
        s = _linear_scores(x, self.coef, self.inter)
        if self.transform != "NONE":
            s = post_transform(s, self.transform).astype(np.float32)
        return [s]


@register
class LinearClassifier(_Linear):
    op_type = "LinearClassifier"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        ints, strs = self.attr("classlabels_ints"), self.attr("classlabels_strings")
        if bool(ints) == bool(strs):
            raise self.error("needs exactly one non-empty classlabels_ints or classlabels_strings attribute")
        self.strings = bool(strs)
        self.labels = _attr_array("classlabels_strings" if strs else "classlabels_ints", strs or ints)
        self.transform = transform_attr(self, self.attr("post_transform", "NONE"))

    def infer(self, ins, consts):
        require_dtype(self, ins[0], _NUMERIC_IN, "X")
        n, f = rows_features(self, ins[0])
        self.coef, self.inter = self._coefficients(f, None)
        t = self.coef.shape[0]
        if t > 1 and self.labels.size < t:
            raise self.error(f"{t} score columns but only {self.labels.size} class labels")
        self.two_columns = t == 1 and self.labels.size == 2
        if self.two_columns and self.transform == "PROBIT":
            raise self.unsupported("PROBIT with a single score column and two class labels is not supported "
                                   "(onnxruntime's output for it is ill-defined)")
        cols = 2 if self.two_columns else t
        return [TensorType((n,), _OBJ if self.strings else _I64), TensorType((n, cols), _F32)]

    def ref(self, x):
        if not hasattr(self, "coef"):
            self.infer([TensorType(x.shape, x.dtype)], [None])
        s = _linear_scores(x, self.coef, self.inter)
        if s.shape[1] == 1:
            if self.labels.size == 2:
                pos, neg = self.labels[1], self.labels[0]
            else:
                pos, neg = ("1", "0") if self.strings else (1, 0)
            labels = np.where(s[:, 0] > 0, pos, neg)
        else:
            labels = self.labels[np.argmax(s, axis=1)]
        labels = labels.astype(object) if self.strings else labels.astype(np.int64)
        if s.shape[1] == 1:
            if self.two_columns:
                p = logistic(s) if self.transform == "LOGISTIC" else s
                p = np.concatenate([np.float32(1.0) - p, p], axis=1)
            else:
                p = probit(s) if self.transform == "PROBIT" else s
        else:
            p = post_transform(s, self.transform)
        return [labels, p.astype(np.float32)]
