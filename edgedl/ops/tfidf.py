"""TfIdfVectorizer (opset 9): n-gram counts of each row of a [C] or [B, C] int32 / int64 / string tensor.

The pool (``pool_int64s`` or ``pool_strings``) lists the 1-grams, then the 2-grams, ... (``ngram_counts[i]``: where
the (i+1)-grams start); the k-th n-gram of the pool is counted into output column ``ngram_indexes[k]``. Only
n-gram sizes in [min_gram_length, max_gram_length] are looked for. In a row of C items, an n-gram with skip
distance d (1 .. max_skip_count + 1) takes the items s, s + d, ..., s + (n - 1) d for every start s that fits;
unigrams are counted once (they have no skip). Then, per output column j:

* TF: ``y[j] = count``;
* IDF: ``y[j] = (count > 0) * w[k]``;
* TFIDF: ``y[j] = count * w[k]``;

for the k-th pool n-gram and its column ``j = ngram_indexes[k]``, ``w`` the ``weights`` attribute (all ones
without it).
Y is float32 [max(ngram_indexes) + 1] for a [C] (or scalar) input, [B, max(ngram_indexes) + 1] for [B, C].

Counting is vectorized with numpy: items are mapped to their id among the pool's items (-1: not in the pool),
each window of ids is packed into one int64 key (base = number of pool items + 1; Python tuples when the key
would overflow), the keys are matched against the pool's sorted keys, and the matches are summed into the
output with one bincount.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelFormatError
from ..ir import MAX_TENSOR_ELEMENTS, TensorType
from ..registry import Op, register

_OBJ = np.dtype(object)
_F32 = np.dtype(np.float32)


@register
class TfIdfVectorizer(Op):
    op_type = "TfIdfVectorizer"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mode = self.attr("mode")
        if self.mode not in ("TF", "IDF", "TFIDF"):
            raise self.error(f"mode must be TF, IDF or TFIDF, got {self.mode!r}")
        for name in ("min_gram_length", "max_gram_length", "max_skip_count"):
            if self.attr(name) is None:
                raise self.error(f"needs the '{name}' attribute")
        self.min_n = int(self.attr("min_gram_length"))
        self.max_n = int(self.attr("max_gram_length"))
        self.max_skip = int(self.attr("max_skip_count"))
        if self.min_n < 1 or self.max_n < self.min_n or self.max_skip < 0:
            raise self.error(f"needs 1 <= min_gram_length ({self.min_n}) <= max_gram_length ({self.max_n}) and "
                             f"max_skip_count ({self.max_skip}) >= 0")
        counts = [int(v) for v in (self.attr("ngram_counts") or [])]
        indexes = np.asarray(self.attr("ngram_indexes") or [], np.int64)
        if not counts or indexes.size == 0:
            raise self.error("needs non-empty ngram_counts and ngram_indexes")
        if self.max_n > len(counts):
            raise self.error(f"max_gram_length {self.max_n} exceeds the {len(counts)} n-gram sizes in ngram_counts")
        if indexes.min() < 0:
            raise self.error("ngram_indexes must be >= 0")
        self.out_size = int(indexes.max()) + 1
        if self.out_size > MAX_TENSOR_ELEMENTS:
            raise ModelFormatError(f"{node.describe()}: {self.out_size} output columns: absurdly large")
        weights = self.attr("weights")
        self.weights = None
        if weights:
            w = np.asarray(weights, np.float32)
            if w.size != indexes.size:
                raise self.error(f"weights has {w.size} entries but ngram_indexes has {indexes.size}")
            self.weights = w
        strs, ints = self.attr("pool_strings"), self.attr("pool_int64s")
        if bool(strs) == bool(ints):
            raise self.error("needs exactly one non-empty pool_strings or pool_int64s attribute")
        self.strings = bool(strs)
        pool = list(strs) if strs else [int(v) for v in ints]
        # the pool's items -> ids 0..V-1 (only items of the n-gram sizes that are looked for)
        grams: dict[int, list[tuple]] = {}
        ids_of: dict[int, list[int]] = {}
        ngram_id = 0
        for i, start in enumerate(counts):
            size = i + 1
            end = counts[i + 1] if i + 1 < len(counts) else len(pool)
            if not 0 <= start <= end <= len(pool):
                raise self.error(f"ngram_counts {counts} does not fit a pool of {len(pool)} items")
            if (end - start) % size:
                raise self.error(f"the {end - start} pool items of the {size}-grams are not whole {size}-grams")
            k = (end - start) // size
            if self.min_n <= size <= self.max_n and k:
                if ngram_id + k > indexes.size:
                    raise self.error(f"the pool has more n-grams than ngram_indexes has entries ({indexes.size})")
                items = [tuple(pool[start + j * size:start + (j + 1) * size]) for j in range(k)]
                if len(set(items)) != k:
                    raise self.error(f"pool has duplicate {size}-grams")
                grams[size] = items
                ids_of[size] = list(range(ngram_id, ngram_id + k))
            ngram_id += k
        vocab = sorted({it for items in grams.values() for g in items for it in g})
        self.vocab_size = len(vocab)
        if self.strings:
            self.vocab = {s: j for j, s in enumerate(vocab)}
        else:
            self.vocab = np.asarray(vocab, np.int64)
        base = self.vocab_size + 1
        self.tables = {}
        for size, items in grams.items():
            ids = [[(self.vocab[it] if self.strings else int(np.searchsorted(self.vocab, it))) + 1 for it in g]
                   for g in items]
            if self._packs(size):
                keys = np.array([sum(v * base ** k for k, v in enumerate(g)) for g in ids], np.int64)
                order = np.argsort(keys)
                self.tables[size] = (keys[order], np.asarray(ids_of[size], np.int64)[order])
            else:
                self.tables[size] = {tuple(g): c for g, c in zip(ids, ids_of[size])}
        #: output column and weight of each n-gram of the pool
        self.col_of = indexes
        self.weight_of = self.weights if self.weights is not None else np.ones(indexes.size, np.float32)

    def _packs(self, size: int) -> bool:
        """Whether an n-gram of ``size`` ids fits an int64 key."""
        return (self.vocab_size + 1) ** size < (1 << 62)

    def infer(self, ins, consts):
        x = ins[0]
        dt = np.dtype(x.dtype)
        if self.strings and dt != _OBJ:
            raise self.error(f"X must be strings (the pool is pool_strings), got {dt.name}")
        if not self.strings and dt.name not in ("int32", "int64"):
            raise self.error(f"X must be int32 or int64 (the pool is pool_int64s), got {dt.name}")
        if len(x.shape) > 2:
            raise self.error(f"X must be [C] or [B, C], got shape {tuple(x.shape)}")
        shape = (int(x.shape[0]), self.out_size) if len(x.shape) == 2 else (self.out_size,)
        if int(np.prod(shape, dtype=np.int64)) > MAX_TENSOR_ELEMENTS:
            raise self.error(f"output {shape} is absurdly large")
        return [TensorType(shape, _F32)]

    def _ids(self, x2: np.ndarray) -> np.ndarray:
        """Each item's id + 1 among the pool's items (0: not in the pool), int64 of x2's shape."""
        if self.strings:
            get = self.vocab.get
            flat = np.fromiter((get(s, -1) for s in x2.reshape(-1)), np.int64, count=x2.size)
            return (flat + 1).reshape(x2.shape)
        xv = x2.astype(np.int64)
        if self.vocab.size == 0:
            return np.zeros(x2.shape, np.int64)
        pos = np.minimum(np.searchsorted(self.vocab, xv), self.vocab.size - 1)
        return np.where(self.vocab[pos] == xv, pos + 1, 0)

    def ref(self, x):
        x = np.asarray(x)
        if x.dtype.kind == "U":
            x = x.astype(object)
        x2 = x.reshape(1, -1) if x.ndim < 2 else x
        rows, c = x2.shape
        hit_rows, hit_grams = [], []  # one entry per n-gram occurrence found: its row and its pool n-gram
        if x2.size and self.tables:
            ids = self._ids(x2)
            base = self.vocab_size + 1
            row_of = np.arange(rows, dtype=np.int64)[:, None]
            for size, table in self.tables.items():
                for d in ([1] if size == 1 else range(1, self.max_skip + 2)):
                    span = (size - 1) * d
                    if span >= c:
                        break
                    win = [ids[:, k * d:c - span + k * d] for k in range(size)]  # each (rows, c - span)
                    valid = np.logical_and.reduce([w > 0 for w in win])
                    r = np.broadcast_to(row_of, valid.shape)[valid]
                    if isinstance(table, tuple):
                        key = np.zeros(valid.shape, np.int64)
                        for k in range(size):
                            key += win[k] * base ** k
                        keys, gram = table
                        key = key[valid]
                        pos = np.minimum(np.searchsorted(keys, key), keys.size - 1)
                        hit = keys[pos] == key
                        hit_rows.append(r[hit])
                        hit_grams.append(gram[pos[hit]])
                    else:
                        found = [table.get(g, -1) for g in zip(*[w[valid].tolist() for w in win])]
                        g = np.asarray(found, np.int64)
                        hit_rows.append(r[g >= 0])
                        hit_grams.append(g[g >= 0])
        y = np.zeros(rows * self.out_size, np.float32)
        if hit_rows:
            r = np.concatenate(hit_rows)
            g = np.concatenate(hit_grams)
            cell = r * self.out_size + self.col_of[g]
            if self.mode == "IDF":  # presence: the n-gram's weight (1 without weights)
                y[cell] = self.weight_of[g]
            elif self.mode == "TFIDF" and self.weights is not None:
                y += np.bincount(cell, weights=self.weight_of[g], minlength=y.size).astype(np.float32)
            else:
                y += np.bincount(cell, minlength=y.size).astype(np.float32)
        y = y.reshape(rows, self.out_size)
        return [y if x.ndim == 2 else y.reshape(-1)]
