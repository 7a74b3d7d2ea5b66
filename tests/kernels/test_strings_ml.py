"""String ops (StringConcat, RegexFullMatch, StringSplit, StringNormalizer, string Equal), TfIdfVectorizer and the
ai.onnx.ml ops (LabelEncoder, ArrayFeatureExtractor, Binarizer, Normalizer, Scaler, OneHotEncoder, Imputer,
LinearClassifier / LinearRegressor, TreeEnsemble / TreeEnsembleClassifier / TreeEnsembleRegressor).

Each op against independent formulas of the spec (Python loops, a recursive tree walk), hostile attributes and
inputs (EdgeDLError at load / plan / run time), the tree kernel serial against parallel, and end to end against
onnxruntime on small models built with onnx.helper (hand-made random forests for the tree ensembles).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl import testing
from edgedl.errors import DataDependentShape, EdgeDLError, ShapeError, UnsupportedOpError
from edgedl.ir import Node, TensorType
from edgedl.kernels.cpu import config as kconfig
from edgedl.registry import lookup

ort = pytest.importorskip("onnxruntime")

ML = "ai.onnx.ml"
S, F32, F64, I64, I32, B = (TensorProto.STRING, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64,
                            TensorProto.INT32, TensorProto.BOOL)


def strs(*values, shape=None):
    a = np.empty(len(values), object)
    a[:] = list(values)
    return a.reshape(shape) if shape is not None else a


def make_op(op_type, attrs=None, n_in=1, n_out=1, opset=20, domain=""):
    node = Node(op_type, "n", [f"i{k}" for k in range(n_in)], [f"o{k}" for k in range(n_out)], dict(attrs or {}),
                domain)
    return lookup(op_type, domain)(node, opset)


def run(op, inputs, const=()):
    consts = [a if k in const else None for k, a in enumerate(inputs)]
    outs, kern = testing.run_kernel(op, inputs, consts)
    return outs, kern


def types(*arrays):
    return [TensorType(a.shape, a.dtype) for a in arrays]


def model(nodes, inputs, outputs, opset=20, ml=None, initializers=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs], list(initializers))
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(ML, ml)] if ml else [])
    return helper.make_model(g, opset_imports=imports)


def run_ort(m, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_edl(m, feeds):
    mod = edgedl.load(m.SerializeToString())
    res = mod.run(feeds)
    return [res[o.name] for o in m.graph.output]


def assert_same(got, want, rtol=1e-5, atol=1e-6):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if w.dtype == object or g.dtype == object:
            assert g.dtype == object
            assert g.tolist() == w.tolist()
        else:
            assert g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def assert_matches_ort(m, feeds, rtol=1e-5, atol=1e-6):
    assert_same(run_edl(m, feeds), run_ort(m, feeds), rtol, atol)


@pytest.fixture
def parallel(monkeypatch):
    monkeypatch.setattr(kconfig, "PARALLEL_MIN_WORK", 1)


# === strings ===============================================================================================
def test_string_concat_broadcasts():
    a = strs("a", "é", "", "xyz", shape=(2, 2))
    b = strs("1", "ü")
    (z,), kern = run(make_op("StringConcat", n_in=2), [a, b])
    assert kern.impl == "numpy" and z.dtype == object
    assert z.tolist() == [["a1", "éü"], ["1", "xyzü"]]
    with pytest.raises(ShapeError):
        make_op("StringConcat", n_in=2).infer(types(a, np.zeros(2, np.float32)), [None, None])
    with pytest.raises(ShapeError):
        make_op("StringConcat", n_in=2).infer(types(a, strs("a", "b", "c")), [None, None])


REGEX_CASES = [
    (r"\d+", ["123", "12a", "", "١٢"], [True, False, False, False]),  # RE2's \d is ASCII
    (r"\w+", ["abc_1", "héllo", "a b"], [True, False, False]),
    (r"a\s+b", ["a \t\nb", "a\u00a0b", "ab"], [True, False, False]),
    (r"(?i)hello.*", ["HeLLo world", "hell"], [True, False]),
    (r"^abc$", ["abc", "abc\n"], [True, False]),  # $ is the very end of the text
    (r"x\z", ["x", "x\n"], [True, False]),
    (r"\bfoo\b.*", ["foo bar", "foobar"], [True, False]),
    (r"[[:digit:]]{2,3}", ["12", "1234", "1"], [True, False, False]),
    (r"[^\D]+", ["42", "4a"], [True, False]),
    (r"\Qa.b\E", ["a.b", "axb"], [True, False]),
    (r"a{,2}", ["a{,2}", "aa"], [True, False]),  # RE2 reads {,2} literally
    (r"(?<year>\d{4})-\d\d", ["2024-01", "24-01"], [True, False]),
    (r"\x{e9}+", ["éé", "e"], [True, False]),
    (r"(?s)a.b", ["a\nb"], [True]),
    (r"a.b", ["a\nb"], [False]),
    (r"a|b|", ["", "a", "ab"], [True, True, False]),
    (r"www\.[\w.-]+\.\bcom\b", ["www.google.com", "www.bbc.co.uk"], [True, False]),
]


@pytest.mark.parametrize("pattern,texts,want", REGEX_CASES)
def test_regex_full_match(pattern, texts, want):
    op = make_op("RegexFullMatch", dict(pattern=pattern))
    x = strs(*texts)
    (y,), _ = run(op, [x])
    assert y.dtype == np.bool_ and y.tolist() == want


def test_regex_compiled_once_and_shapes():
    op = make_op("RegexFullMatch", dict(pattern="[ab]+"))
    compiled = op.regex
    x = strs("ab", "c", "", "ba", shape=(2, 2))
    for _ in range(2):
        (y,), _ = run(op, [x])
    assert op.regex is compiled and y.tolist() == [[True, False], [False, True]]
    (y,), _ = run(op, [np.empty((0, 3), object)])
    assert y.shape == (0, 3)
    with pytest.raises(ShapeError):
        op.infer(types(np.zeros(3, np.int64)), [None])


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)a", r"(?<!a)b", r"(?>a)", r"a*+", r"a++", r"\pL+", r"\p{Greek}",
                                     r"a(?i)b", r"(?x)a b", r"(?U)a*", r"a\Z", r"(?P=n)", r"(?#c)a", r"a{1001}",
                                     r"\C", r"[[:^alpha:]]"])
def test_regex_rejects_non_re2(pattern):
    with pytest.raises(UnsupportedOpError):
        make_op("RegexFullMatch", dict(pattern=pattern))


@pytest.mark.parametrize("pattern", [r"(a", r"[a", r"a{3,2}", "\\", r"*a", r"[[:nope:]]"])
def test_regex_invalid_pattern(pattern):
    with pytest.raises(EdgeDLError):
        make_op("RegexFullMatch", dict(pattern=pattern))


def test_regex_needs_pattern():
    with pytest.raises(EdgeDLError):
        make_op("RegexFullMatch", {})


def split_spec(s, delim, maxsplit):
    """StringSplit by hand: runs of whitespace (or the delimiter) separate parts; no parts for ''."""
    if s == "":
        return []
    if delim:
        parts, rest = [], s
        while (maxsplit is None or len(parts) < maxsplit) and delim in rest:
            k = rest.index(delim)
            parts.append(rest[:k])
            rest = rest[k + len(delim):]
        return parts + [rest]
    words, starts, k = [], [], 0  # maximal runs of non-whitespace characters and where they start
    while k < len(s):
        if s[k].isspace():
            k += 1
            continue
        j = k
        while j < len(s) and not s[j].isspace():
            j += 1
        words.append(s[k:j])
        starts.append(k)
        k = j
    if maxsplit is None or len(words) <= maxsplit + 1:
        return words
    return words[:maxsplit] + [s[starts[maxsplit]:].strip()]


@pytest.mark.parametrize("delim,maxsplit", [(None, None), ("", 1), (",", None), (",", 0), (",", 2), (",,", None),
                                            (" ", 1), ("ab", None)])
def test_string_split(delim, maxsplit):
    texts = ["", " ", "a b", "  a\tb\n c  ", "a,,b,", ",", "héllo wörld", "a,b,c,d,e", "xabyabz"]
    attrs = {}
    if delim is not None:
        attrs["delimiter"] = delim
    if maxsplit is not None:
        attrs["maxsplit"] = maxsplit
    op = make_op("StringSplit", attrs, n_out=2)
    x = strs(*texts, "q", shape=(2, 5))
    (y, z), _ = run(op, [x], const=(0,))
    want = [split_spec(s, delim, maxsplit) for s in x.reshape(-1)]
    width = max(len(p) for p in want)
    assert y.shape == (2, 5, width) and z.shape == (2, 5) and z.dtype == np.int64
    assert z.reshape(-1).tolist() == [len(p) for p in want]
    for got, w in zip(y.reshape(-1, width).tolist(), want):
        assert got == w + [""] * (width - len(w))


def test_string_split_shape_depends_on_data():
    op = make_op("StringSplit", dict(delimiter=","), n_out=2)
    x = strs("a,b", "c")
    with pytest.raises(DataDependentShape):
        op.infer(types(x), [None])
    assert op.infer(types(x), [x])[0].shape == (2, 2)
    assert op.infer(types(np.empty((0,), object)), [None])[0].shape == (0, 0)
    y, z = op.ref(x)
    assert y.tolist() == [["a", "b"], ["c", ""]] and z.tolist() == [2, 1]
    with pytest.raises(EdgeDLError):
        make_op("StringSplit", dict(maxsplit=-2), n_out=2)


def test_string_split_through_planner():
    m = model([helper.make_node("StringSplit", ["x"], ["y", "z"], delimiter="-"),
               helper.make_node("StringConcat", ["y", "y"], ["w"])],
              [("x", S, [None])], [("w", S, None), ("z", I64, [None])])
    w, z = run_edl(m, {"x": strs("a-b", "c", "")})
    assert w.tolist() == [["aa", "bb"], ["cc", ""], ["", ""]] and z.tolist() == [2, 1, 0]
    w, z = run_edl(m, {"x": np.array(["p-q-r"])})  # a numpy 'U' array fed by the user
    assert w.tolist() == [["pp", "qq", "rr"]] and z.tolist() == [3]


@pytest.mark.parametrize("shape", [(5,), (1, 5)])
def test_string_normalizer(shape):
    x = strs("Monday", "tuesday", "Wed", "monday", "ÉTÉ", shape=shape)
    cases = [
        (dict(), ["Monday", "tuesday", "Wed", "monday", "ÉTÉ"]),
        (dict(case_change_action="LOWER"), ["monday", "tuesday", "wed", "monday", "été"]),
        (dict(case_change_action="UPPER", stopwords=["monday"]), ["TUESDAY", "WED", "ÉTÉ"]),
        (dict(is_case_sensitive=1, stopwords=["monday"]), ["Monday", "tuesday", "Wed", "ÉTÉ"]),
        (dict(stopwords=["MONDAY", "Tuesday", "wed", "été"], case_change_action="LOWER"), [""]),
        (dict(is_case_sensitive=1, stopwords=["x"], locale="fr_FR"), ["Monday", "tuesday", "Wed", "monday", "ÉTÉ"]),
    ]
    for attrs, want in cases:
        op = make_op("StringNormalizer", attrs)
        (y,) = op.ref(x)
        assert y.dtype == object
        assert y.tolist() == (want if len(shape) == 1 else [want])
        if attrs.get("stopwords"):
            with pytest.raises(DataDependentShape):
                op.infer(types(x), [None])
            assert op.infer(types(x), [x])[0].shape == y.shape
        else:
            assert op.infer(types(x), [None])[0].shape == shape


def test_string_normalizer_rejects():
    with pytest.raises(ShapeError):
        make_op("StringNormalizer").infer(types(strs("a", "b", shape=(2, 1))), [None])
    with pytest.raises(ShapeError):
        make_op("StringNormalizer").infer(types(np.zeros(3, np.int64)), [None])
    with pytest.raises(EdgeDLError):
        make_op("StringNormalizer", dict(case_change_action="TITLE"))


def test_string_ops_match_onnxruntime():
    texts = strs("abc", "abc def", "123", "", "héllo", "foo bar", "a.b", shape=(7,))
    m = model([helper.make_node("StringConcat", ["x", "s"], ["c"]),
               helper.make_node("RegexFullMatch", ["c"], ["r"], pattern=r"[a-z]+\s?\w*!"),
               helper.make_node("Equal", ["x", "x2"], ["e"]),
               helper.make_node("StringSplit", ["x"], ["p", "n"], delimiter="b")],
              [("x", S, [7]), ("s", S, [1]), ("x2", S, [7])],
              [("c", S, [7]), ("r", B, [7]), ("e", B, [7]), ("p", S, None), ("n", I64, [7])])
    feeds = {"x": texts, "s": strs("!"), "x2": texts[::-1].copy()}
    assert_matches_ort(m, feeds)
    m = model([helper.make_node("StringNormalizer", ["x"], ["y"], is_case_sensitive=1, stopwords=["abc", "123"])],
              [("x", S, [1, 7])], [("y", S, None)], opset=10)
    assert_matches_ort(m, {"x": texts.reshape(1, 7)})


# === TfIdfVectorizer =========================================================================================
def tfidf_spec(x, pool, counts, indexes, mode, min_n, max_n, skip, weights):
    """Brute force: every (start, skip distance, size) window of every row, looked up in the pool."""
    grams = {}
    for i, start in enumerate(counts):
        size = i + 1
        end = counts[i + 1] if i + 1 < len(counts) else len(pool)
        for j, p in enumerate(range(start, end, size)):
            grams[tuple(pool[p:p + size])] = sum((e - s) // (k + 1) for k, (s, e) in
                                                 enumerate(zip(counts[:i], counts[1:i + 1]))) + j
    out = max(indexes) + 1
    rows = x.reshape(1, -1) if x.ndim < 2 else x
    y = np.zeros((rows.shape[0], out), np.float64)
    for r, row in enumerate(rows.tolist()):
        cnt = {}
        for size in range(min_n, max_n + 1):
            for d in ([1] if size == 1 else range(1, skip + 2)):
                for s in range(len(row) - (size - 1) * d):
                    g = tuple(row[s + k * d] for k in range(size))
                    if g in grams:
                        cnt[grams[g]] = cnt.get(grams[g], 0) + 1
        for k, c in cnt.items():
            w = weights[k] if weights else 1.0
            col = indexes[k]
            if mode == "TF":
                y[r, col] += c
            elif mode == "IDF":
                y[r, col] = w
            else:
                y[r, col] += c * w
    return y.reshape(-1) if x.ndim < 2 else y


TFIDF_POOL = dict(counts=[0, 4, 8], pool=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 5])  # 4 unigrams, 2 bigrams, 1 trigram


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
@pytest.mark.parametrize("min_n,max_n,skip", [(1, 1, 0), (2, 2, 0), (1, 2, 5), (2, 3, 1), (1, 3, 3)])
@pytest.mark.parametrize("strings", [False, True])
def test_tfidf_against_brute_force(mode, min_n, max_n, skip, strings):
    rng = np.random.default_rng(min_n * 10 + max_n + skip)
    counts, pool = TFIDF_POOL["counts"], TFIDF_POOL["pool"]
    indexes = [5, 0, 2, 6, 1, 4, 3]
    weights = [0.5, 1.5, 2.0, 0.25, 3.0, 1.0, 0.75] if mode != "TF" else None
    x = rng.choice([2, 3, 4, 5, 6, 7, 8, 9], (3, 12))
    attrs = dict(mode=mode, min_gram_length=min_n, max_gram_length=max_n, max_skip_count=skip,
                 ngram_counts=counts, ngram_indexes=indexes)
    if weights:
        attrs["weights"] = weights
    if strings:
        attrs["pool_strings"] = [f"w{v}" for v in pool]
        xin = np.vectorize(lambda v: f"w{v}", otypes=[object])(x)
        spec_pool = [f"w{v}" for v in pool]
    else:
        attrs["pool_int64s"] = pool
        xin = x.astype(np.int32)
        spec_pool = pool
    op = make_op("TfIdfVectorizer", attrs, opset=9)
    for xi in (xin, xin[1]):
        (y,), _ = run(op, [xi])
        want = tfidf_spec(xi, spec_pool, counts, indexes, mode, min_n, max_n, skip, weights)
        assert y.dtype == np.float32 and y.shape == want.shape
        np.testing.assert_allclose(y, want, rtol=1e-6)


@pytest.mark.parametrize("strings", [False, True])
def test_tfidf_tuple_keys_path(monkeypatch, strings):
    """n-grams whose packed key would overflow int64 are matched as tuples: same counts."""
    from edgedl.ops.tfidf import TfIdfVectorizer

    counts, pool = TFIDF_POOL["counts"], TFIDF_POOL["pool"]
    attrs = dict(mode="TFIDF", min_gram_length=1, max_gram_length=3, max_skip_count=2, ngram_counts=counts,
                 ngram_indexes=[5, 0, 2, 6, 1, 4, 3], weights=[0.5, 1.5, 2.0, 0.25, 3.0, 1.0, 0.75])
    attrs["pool_strings" if strings else "pool_int64s"] = [f"w{v}" for v in pool] if strings else pool
    x = np.random.default_rng(4).choice(np.arange(2, 10), (3, 15))
    x = np.vectorize(lambda v: f"w{v}", otypes=[object])(x) if strings else x
    packed = make_op("TfIdfVectorizer", attrs, opset=9)
    monkeypatch.setattr(TfIdfVectorizer, "_packs", lambda self, size: False)
    tuples = make_op("TfIdfVectorizer", attrs, opset=9)
    assert all(isinstance(t, dict) for t in tuples.tables.values())
    np.testing.assert_array_equal(tuples.ref(x)[0], packed.ref(x)[0])
    assert packed.ref(x)[0].any()


@pytest.mark.parametrize("attrs", [
    dict(mode="XX"), dict(min_gram_length=0), dict(max_gram_length=4), dict(ngram_indexes=[0, -1, 2, 3, 4, 5, 6]),
    dict(ngram_counts=[0, 9]), dict(weights=[1.0]), dict(pool_strings=["a"]), dict(pool_int64s=None),
    dict(ngram_counts=[0, 3]), dict(pool_int64s=[1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]),
])
def test_tfidf_rejects_bad_attributes(attrs):
    base = dict(mode="TF", min_gram_length=1, max_gram_length=3, max_skip_count=0, ngram_counts=TFIDF_POOL["counts"],
                ngram_indexes=list(range(7)), pool_int64s=TFIDF_POOL["pool"])
    base.update(attrs)
    base = {k: v for k, v in base.items() if v is not None}
    with pytest.raises(EdgeDLError):
        make_op("TfIdfVectorizer", base, opset=9)


def test_tfidf_input_checks_and_empty():
    op = make_op("TfIdfVectorizer", dict(mode="TF", min_gram_length=1, max_gram_length=1, max_skip_count=0,
                                         ngram_counts=[0], ngram_indexes=[0, 1], pool_int64s=[4, 5]), opset=9)
    with pytest.raises(ShapeError):
        op.infer(types(strs("a")), [None])
    with pytest.raises(ShapeError):
        op.infer(types(np.zeros((1, 2, 3), np.int64)), [None])
    (y,), _ = run(op, [np.zeros((2, 0), np.int64)])
    assert y.shape == (2, 2) and not y.any()


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_matches_onnxruntime(mode):
    counts, pool = TFIDF_POOL["counts"], TFIDF_POOL["pool"]
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], mode=mode, min_gram_length=1, max_gram_length=3,
                            max_skip_count=2, ngram_counts=counts, ngram_indexes=[5, 0, 2, 6, 1, 4, 3],
                            weights=[0.5, 1.5, 2.0, 0.25, 3.0, 1.0, 0.75], pool_strings=[f"w{v}" for v in pool])
    m = model([node], [("x", S, [2, 10])], [("y", F32, [2, 7])], opset=9)
    x = np.vectorize(lambda v: f"w{v}", otypes=[object])(np.random.default_rng(3).choice(np.arange(2, 9), (2, 10)))
    assert_matches_ort(m, {"x": x})


# === ai.onnx.ml: encoders, scalers ===========================================================================
def ml_op(op_type, attrs=None, n_in=1, n_out=1):
    return make_op(op_type, attrs, n_in, n_out, opset=17, domain=ML)


def test_label_encoder_versions():
    x = strs("a", "b", "zz", "c")
    # version 2+: keys / values lists, defaults, a repeated key keeps its last value (the spec)
    (y,), k = run(ml_op("LabelEncoder", dict(keys_strings=["a", "b", "c", "a"], values_int64s=[1, 2, 3, 4])), [x])
    assert y.dtype == np.int64 and y.tolist() == [4, 2, -1, 3]
    (y,) = ml_op("LabelEncoder", dict(keys_int64s=[3, 1], values_strings=["x", "y"], default_string="D")).ref(
        np.array([[3, 1], [7, 3]], np.int64))
    assert y.dtype == object and y.tolist() == [["x", "y"], ["D", "x"]]
    (y,), _ = run(ml_op("LabelEncoder", dict(keys_floats=[1.5, float("nan"), 2.0], values_floats=[10, 20, 30])),
                  [np.array([2.0, np.nan, 1.5, 7.0], np.float32)])
    assert y.tolist() == [30.0, 20.0, 10.0, 0.0] and np.signbit(y[3])  # default_float is -0.0
    # version 4: tensors of any type, default_tensor
    enc = ml_op("LabelEncoder", dict(keys_tensor=np.array([1, 2], np.int16), values_tensor=np.array([5, 6], np.int32),
                                     default_tensor=np.array([-9], np.int32)))
    (y,), _ = run(enc, [np.array([2, 3, 1], np.int16)])
    assert y.dtype == np.int32 and y.tolist() == [6, -9, 5]
    enc = ml_op("LabelEncoder", dict(keys_tensor=np.array([1.0, np.nan]), values_tensor=strs("one", "nan")))
    (y,) = enc.ref(np.array([np.nan, 1.0, 3.0]))
    assert y.tolist() == ["nan", "one", "_Unused"]
    # version 1: classes_strings, direction from X's type
    (y,), _ = run(ml_op("LabelEncoder", dict(classes_strings=["a", "b", "a", "c"], default_int64=-5)), [x])
    assert y.tolist() == [0, 1, -5, 3]
    enc = ml_op("LabelEncoder", dict(classes_strings=["a", "b", "c"], default_string="?"))
    assert enc.infer(types(np.zeros(2, np.int64)), [None])[0].dtype == object
    assert enc.ref(np.array([0, 2, 5, -1], np.int64))[0].tolist() == ["a", "c", "?", "?"]


def test_label_encoder_rejects():
    with pytest.raises(EdgeDLError):
        ml_op("LabelEncoder", dict(keys_strings=["a"], values_int64s=[1, 2]))
    with pytest.raises(EdgeDLError):
        ml_op("LabelEncoder", dict(keys_strings=["a"], keys_int64s=[1], values_int64s=[1]))
    with pytest.raises(ShapeError):
        ml_op("LabelEncoder", dict(keys_strings=["a"], values_int64s=[1])).infer(types(np.zeros(2, np.int64)), [None])
    with pytest.raises(ShapeError):
        ml_op("LabelEncoder", dict(keys_int64s=[1], values_int64s=[1])).infer(types(np.zeros(2, np.float32)), [None])


def test_array_feature_extractor():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    op = ml_op("ArrayFeatureExtractor", n_in=2)
    (z,), _ = run(op, [x, np.array([[3, 0]], np.int64)])
    np.testing.assert_array_equal(z, x[..., [3, 0]])
    (z,), _ = run(op, [x[0, 0], np.array([1, 1, 2], np.int64)])
    np.testing.assert_array_equal(z, x[0, 0][[1, 1, 2]].reshape(1, 3))
    (z,) = op.ref(strs("a", "b", "c", "d", shape=(2, 2)), np.array([1], np.int64))
    assert z.tolist() == [["b"], ["d"]]
    for bad in ([4], [-1]):
        with pytest.raises(EdgeDLError, match="out of range"):
            run(op, [x, np.array(bad, np.int64)])
        with pytest.raises(EdgeDLError, match="out of range"):
            op.infer(types(x, np.array(bad, np.int64)), [None, np.array(bad, np.int64)])
    with pytest.raises(ShapeError):
        op.infer(types(x, np.array([1], np.int32)), [None, None])


def test_binarizer_normalizer_scaler_imputer():
    x = np.array([[1, -2, 3], [0, 0, 0], [-1, -2, -0.5], [4, np.nan, 0]], np.float32)
    (y,), _ = run(ml_op("Binarizer", dict(threshold=0.5)), [x])
    np.testing.assert_array_equal(y, (x > 0.5).astype(np.float32))
    (y,), _ = run(ml_op("Binarizer"), [np.array([-1, 0, 3], np.int64)])
    assert y.dtype == np.int64 and y.tolist() == [0, 0, 1]
    xf = np.nan_to_num(x).astype(np.float64)
    for norm in ("MAX", "L1", "L2"):
        (y,), _ = run(ml_op("Normalizer", dict(norm=norm)), [xf.astype(np.float32)])
        for r in range(4):
            row = xf[r]
            div = row.max() if norm == "MAX" else np.abs(row).sum() if norm == "L1" else math.sqrt((row ** 2).sum())
            want = row / div if div != 0 else row
            np.testing.assert_allclose(y[r], want, rtol=1e-6)
    with pytest.raises(ShapeError):
        ml_op("Normalizer").infer(types(np.zeros((2, 2, 2), np.float32)), [None])
    (y,), _ = run(ml_op("Scaler", dict(scale=[2.0, 0.5, -1.0], offset=[0.5, 0, 1])), [x])
    np.testing.assert_allclose(y, (x - [0.5, 0, 1]) * [2.0, 0.5, -1.0], rtol=1e-6)
    (y,), _ = run(ml_op("Scaler", dict(scale=[3.0], offset=[1.0])), [np.array([1, 2], np.int64)])
    assert y.dtype == np.float32 and y.tolist() == [0.0, 3.0]
    with pytest.raises(ShapeError):
        ml_op("Scaler", dict(scale=[1.0, 2.0], offset=[0.0, 0.0])).infer(types(x), [None])
    (y,), _ = run(ml_op("Imputer", dict(imputed_value_floats=[7, 8, 9], replaced_value_float=float("nan"))), [x])
    assert y[3, 1] == 8 and np.array_equal(np.delete(y.reshape(-1), 10), np.delete(x.reshape(-1), 10))
    (y,), _ = run(ml_op("Imputer", dict(imputed_value_int64s=[5], replaced_value_int64=0)),
                  [np.array([[0, 1], [2, 0]], np.int64)])
    assert y.tolist() == [[5, 1], [2, 5]]
    with pytest.raises(ShapeError):
        ml_op("Imputer", dict(imputed_value_int64s=[5])).infer(types(x), [None])
    with pytest.raises(ShapeError):
        ml_op("Imputer", dict(imputed_value_floats=[5, 6])).infer(types(x), [None])


def test_one_hot_encoder():
    x = np.array([[1, 0, 3], [0, 9, 5]], np.int64)
    op = ml_op("OneHotEncoder", dict(cats_int64s=[0, 3, 5, 1]))
    (y,), _ = run(op, [x])
    want = np.zeros((2, 3, 4), np.float32)
    for p in np.ndindex(x.shape):
        if x[p] in (0, 3, 5, 1):
            want[p][[0, 3, 5, 1].index(x[p])] = 1
    np.testing.assert_array_equal(y, want)
    (y,), _ = run(op, [x.astype(np.float32) + 0.7])  # truncated to int64
    np.testing.assert_array_equal(y, want)
    (y,) = ml_op("OneHotEncoder", dict(cats_strings=["a", "b"])).ref(strs("b", "z"))
    assert y.tolist() == [[0, 1], [0, 0]]
    with pytest.raises(EdgeDLError, match="not a category"):
        run(ml_op("OneHotEncoder", dict(cats_int64s=[0, 1], zeros=0)), [x])
    with pytest.raises(EdgeDLError):
        ml_op("OneHotEncoder", {})


def test_ml_transforms_match_onnxruntime():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    nodes = [helper.make_node("Normalizer", ["x"], ["n"], domain=ML, norm="L2"),
             helper.make_node("Scaler", ["x"], ["s"], domain=ML, scale=[2.0, 0.5, -1.0], offset=[0.1, 0.2, 0.3]),
             helper.make_node("Binarizer", ["x"], ["b"], domain=ML, threshold=0.2),
             helper.make_node("OneHotEncoder", ["k"], ["o"], domain=ML, cats_int64s=[0, 3, 5]),
             helper.make_node("LabelEncoder", ["t"], ["l"], domain=ML, keys_strings=["a", "b"], values_int64s=[4, 5]),
             helper.make_node("ArrayFeatureExtractor", ["x", "i"], ["a"], domain=ML),
             helper.make_node("Imputer", ["x"], ["m"], domain=ML, imputed_value_floats=[9.0],
                              replaced_value_float=float("nan"))]
    m = model(nodes, [("x", F32, [6, 3]), ("k", I64, [2]), ("t", S, [3]), ("i", I64, [2])],
              [("n", F32, None), ("s", F32, None), ("b", F32, None), ("o", F32, None), ("l", I64, None),
               ("a", F32, None), ("m", F32, None)], opset=17, ml=2)
    x[2, 1] = np.nan
    feeds = {"x": x, "k": np.array([3, 4], np.int64), "t": strs("b", "q", "a"), "i": np.array([2, 0], np.int64)}
    xn = dict(feeds, x=np.nan_to_num(x))
    assert_matches_ort(m, xn)
    assert run_edl(m, feeds)[6][2, 1] == 9.0


# === linear models ============================================================================================
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"])
@pytest.mark.parametrize("targets", [1, 3])
def test_linear_regressor_matches_onnxruntime(post, targets):
    rng = np.random.default_rng(targets)
    x = rng.standard_normal((5, 4)).astype(np.float32) * (0.1 if post == "PROBIT" else 1)
    coef = [float(v) for v in rng.standard_normal(4 * targets) * (0.2 if post == "PROBIT" else 1)]
    node = helper.make_node("LinearRegressor", ["x"], ["y"], domain=ML, coefficients=coef,
                            intercepts=[0.3] * targets, targets=targets, post_transform=post)
    m = model([node], [("x", F32, [None, 4])], [("y", F32, [None, targets])], opset=17, ml=1)
    assert_matches_ort(m, {"x": x}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"])
@pytest.mark.parametrize("n_scores,labels", [(1, [3, 8]), (3, [3, 5, 9]), (3, ["u", "v", "w"]), (1, ["no", "yes"])])
def test_linear_classifier_matches_onnxruntime(post, n_scores, labels):
    if n_scores == 1 and post == "PROBIT":
        with pytest.raises(UnsupportedOpError):
            ml_op("LinearClassifier", dict(coefficients=[1.0], classlabels_ints=[0, 1], post_transform=post)).infer(
                types(np.zeros((2, 1), np.float32)), [None])
        return
    rng = np.random.default_rng(n_scores)
    x = rng.standard_normal((6, 4)).astype(np.float32) * (0.1 if post == "PROBIT" else 1)
    coef = [float(v) for v in rng.standard_normal(4 * n_scores) * (0.2 if post == "PROBIT" else 1)]
    key = "classlabels_strings" if isinstance(labels[0], str) else "classlabels_ints"
    node = helper.make_node("LinearClassifier", ["x"], ["y", "z"], domain=ML, coefficients=coef,
                            intercepts=[0.05] * n_scores, post_transform=post, **{key: labels})
    m = model([node], [("x", F32, [None, 4])], [("y", S if key.endswith("strings") else I64, [None]),
                                                ("z", F32, [None, max(n_scores, 2)])], opset=17, ml=1)
    assert_matches_ort(m, {"x": x}, rtol=1e-5, atol=1e-5)
    assert_matches_ort(m, {"x": x[:1]}, rtol=1e-5, atol=1e-5)


def test_linear_rejects():
    op = ml_op("LinearRegressor", dict(coefficients=[1.0, 2.0, 3.0], targets=2))
    with pytest.raises(ShapeError):
        op.infer(types(np.zeros((2, 2), np.float32)), [None])
    op = ml_op("LinearClassifier", dict(coefficients=[1.0] * 6, intercepts=[0.0] * 3, classlabels_ints=[0, 1]))
    with pytest.raises(ShapeError):
        op.infer(types(np.zeros((2, 2), np.float32)), [None])
    with pytest.raises(EdgeDLError):
        ml_op("LinearClassifier", dict(coefficients=[1.0]))


# === tree ensembles ===========================================================================================
MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]
CMP = [lambda v, t: v <= t, lambda v, t: v < t, lambda v, t: v >= t, lambda v, t: v > t, lambda v, t: v == t,
       lambda v, t: v != t]


def random_forest(rng, n_trees, n_feat, n_out, depth=3, votes=(1, 2), positive=False, single_class=None,
                  missing=True, modes=MODES):
    """A hand-made forest in the TreeEnsembleRegressor / Classifier attribute layout (votes in w_*)."""
    a = {k: [] for k in ("treeids", "nodeids", "featureids", "modes", "values", "true", "false", "mtt",
                         "w_tree", "w_node", "w_id", "w_val")}
    for t in range(n_trees):
        counter = itertools.count()

        def build(d):
            me = next(counter)
            k = len(a["treeids"])
            a["treeids"].append(t)
            a["nodeids"].append(me)
            for key in ("featureids", "modes", "values", "true", "false", "mtt"):
                a[key].append(0)
            if d == 0 or (d < depth and rng.random() < 0.25):
                a["modes"][k] = "LEAF"
                for _ in range(int(rng.choice(votes))):
                    a["w_tree"].append(t)
                    a["w_node"].append(me)
                    a["w_id"].append(int(rng.integers(n_out)) if single_class is None else single_class)
                    w = float(rng.random()) if positive else float(rng.standard_normal())
                    a["w_val"].append(w)
                return me
            a["featureids"][k] = int(rng.integers(n_feat))
            a["modes"][k] = str(rng.choice(modes))
            a["values"][k] = float(np.float32(np.round(rng.standard_normal(), 1)))
            a["mtt"][k] = int(missing and rng.random() < 0.5)
            a["true"][k] = build(d - 1)
            a["false"][k] = build(d - 1)
            return me

        build(depth)
    return a


def legacy_attrs(a, kind):
    out = dict(nodes_treeids=a["treeids"], nodes_nodeids=a["nodeids"], nodes_featureids=a["featureids"],
               nodes_modes=a["modes"], nodes_values=a["values"], nodes_truenodeids=a["true"],
               nodes_falsenodeids=a["false"], nodes_missing_value_tracks_true=a["mtt"])
    out.update({f"{kind}_treeids": a["w_tree"], f"{kind}_nodeids": a["w_node"], f"{kind}_ids": a["w_id"],
                f"{kind}_weights": a["w_val"]})
    return out


def walk_forest(a, x, n_out):
    """Per row: (sum, min, max, voted) of the votes each target gets, by a recursive walk of the trees."""
    pos = {(t, n): k for k, (t, n) in enumerate(zip(a["treeids"], a["nodeids"]))}
    votes = {}
    for t, n, i, w in zip(a["w_tree"], a["w_node"], a["w_id"], a["w_val"]):
        votes.setdefault((t, n), []).append((i, np.float32(w)))
    res = []
    for row in x:
        s = np.zeros(n_out)
        lo = np.full(n_out, np.inf)
        hi = np.full(n_out, -np.inf)
        voted = np.zeros(n_out, bool)
        for t in sorted(set(a["treeids"])):
            k = pos[(t, 0)]
            while a["modes"][k] != "LEAF":
                v = float(row[a["featureids"][k]])
                go = CMP[MODES.index(a["modes"][k])](v, a["values"][k]) or (a["mtt"][k] == 1 and math.isnan(v))
                k = pos[(t, a["true"][k] if go else a["false"][k])]
            for i, w in votes.get((t, a["nodeids"][k]), []):
                s[i] += w
                lo[i] = min(lo[i], w)
                hi[i] = max(hi[i], w)
                voted[i] = True
        res.append((s, lo, hi, voted))
    return res


def rows(rng, n, f=4):
    x = np.round(rng.standard_normal((n, f)), 1).astype(np.float32)  # rounded: some values hit thresholds
    x[::5, 1] = np.nan
    return x


@pytest.mark.parametrize("agg", ["SUM", "AVERAGE", "MIN", "MAX"])
@pytest.mark.parametrize("n_targets", [1, 3])
@pytest.mark.parametrize("modes", [MODES, ["BRANCH_LEQ"], ["BRANCH_GT"], ["BRANCH_NEQ"]], ids=["mixed", "leq", "gt",
                                                                                             "neq"])
def test_tree_regressor_against_walk(agg, n_targets, modes):
    rng = np.random.default_rng(n_targets * 7 + len(agg) + len(modes[0]))
    a = random_forest(rng, 4, 4, n_targets, depth=4, votes=(1,), modes=modes)
    base = [0.5, -1.0, 2.0][:n_targets]
    op = ml_op("TreeEnsembleRegressor", dict(legacy_attrs(a, "target"), n_targets=n_targets, aggregate_function=agg,
                                             base_values=base))
    x = rows(rng, 40)
    (y,), kern = run(op, [x])
    assert op.forest.same_mode == (-1 if len(modes) > 1 else MODES.index(modes[0]))
    assert kern.impl == "numba" and y.dtype == np.float32 and y.shape == (40, n_targets)
    for r, (s, lo, hi, voted) in enumerate(walk_forest(a, x, n_targets)):
        val = {"SUM": s, "AVERAGE": s / 4, "MIN": np.where(voted, lo, 0), "MAX": np.where(voted, hi, 0)}[agg] + base
        if n_targets > 1:
            val = np.where(voted, val, 0.0)  # several targets: a target no leaf voted for is 0
        np.testing.assert_allclose(y[r], val, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("modes,missing", [(MODES, True), (["BRANCH_LEQ"], False), (["BRANCH_LT"], True)])
@pytest.mark.parametrize("agg", [1, 3])
def test_tree_kernel_serial_equals_parallel(parallel, modes, missing, agg):
    from edgedl.kernels.cpu.trees import forest_scores

    rng = np.random.default_rng(5)
    a = random_forest(rng, 30, 6, 3, depth=6, modes=modes, missing=missing)
    op = ml_op("TreeEnsembleRegressor", dict(legacy_attrs(a, "target"), n_targets=3))
    assert op.forest.has_missing == missing
    x = rows(rng, 301, 6)
    par = forest_scores(x, op.forest, agg, 3)
    kconfig.PARALLEL_MIN_WORK = 1 << 60
    ser = forest_scores(x, op.forest, agg, 3)
    np.testing.assert_array_equal(par[0], ser[0])
    np.testing.assert_array_equal(par[1], ser[1])
    for few in (1, 5):  # fewer rows than lanes: trees walk in lockstep instead
        small = forest_scores(x[:few], op.forest, agg, 3)
        np.testing.assert_array_equal(small[0], ser[0][:few])
        np.testing.assert_array_equal(small[1], ser[1][:few])
    want = walk_forest(a, x, 3)
    np.testing.assert_array_equal(ser[1] != 0, np.array([w[3] for w in want]))
    k = 0 if agg == 1 else 2
    got = np.where(ser[1] != 0, ser[0], 0)
    np.testing.assert_allclose(got, np.array([np.where(w[3], w[k], 0) for w in want]), rtol=1e-5, atol=1e-5)


def test_tree_single_target_reads_first_vote_only():
    # onnxruntime's one-target path reads each leaf's first vote
    attrs = dict(nodes_treeids=[0], nodes_nodeids=[0], nodes_featureids=[0], nodes_modes=["LEAF"],
                 nodes_values=[0.0], nodes_truenodeids=[0], nodes_falsenodeids=[0], target_treeids=[0, 0],
                 target_nodeids=[0, 0], target_ids=[0, 0], target_weights=[2.0, 5.0], n_targets=1)
    (y,), _ = run(ml_op("TreeEnsembleRegressor", attrs), [np.zeros((2, 1), np.float32)])
    assert y.tolist() == [[2.0], [2.0]]


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"])
@pytest.mark.parametrize("agg", ["SUM", "AVERAGE", "MIN", "MAX"])
def test_tree_regressor_matches_onnxruntime(post, agg):
    rng = np.random.default_rng(len(post) * 3 + len(agg))
    for n_targets in (1, 3):
        a = random_forest(rng, 5, 4, n_targets, depth=3)
        if post == "PROBIT":
            a["w_val"] = [abs(w) / 20 for w in a["w_val"]]
        base = [float(v) for v in rng.standard_normal(n_targets) * (0.01 if post == "PROBIT" else 1)]
        node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain=ML, n_targets=n_targets,
                                aggregate_function=agg, post_transform=post, base_values=base,
                                **legacy_attrs(a, "target"))
        m = model([node], [("x", F32, [None, 4])], [("y", F32, [None, n_targets])], opset=17, ml=3)
        assert_matches_ort(m, {"x": rows(rng, 30)}, rtol=1e-5, atol=1e-5)


CLASSIFIER_CASES = [
    # (classes, labels, post, base, single class, all-positive weights, votes per leaf)
    (3, [0, 1, 2], "SOFTMAX", None, None, True, (1, 2)),
    (4, [7, 3, 9, 1], "NONE", [0.1, 0.2, -0.3, 0.0], None, False, (1, 3)),
    (3, ["a", "b", "c"], "LOGISTIC", [0.5, -0.5, 0.0], None, False, (2,)),
    (3, [0, 1, 2], "SOFTMAX_ZERO", None, None, False, (1,)),
    (3, [0, 1, 2], "PROBIT", None, None, True, (1,)),
    (2, [0, 1], "NONE", None, None, True, (2,)),  # sklearn-style: both classes vote
    (2, [4, 8], "SOFTMAX", [0.2, 0.3], None, True, (2,)),
    (2, [0, 1], "LOGISTIC", None, 0, True, (1,)),  # binary case, all positive
    (2, [0, 1], "LOGISTIC", None, 1, False, (1, 2)),  # binary case, mixed signs (LightGBM-like)
    (2, ["no", "yes"], "NONE", None, 1, False, (1,)),
    (2, [5, 6], "NONE", [0.1, -0.2], 1, False, (1,)),
    (2, [0, 1], "SOFTMAX", None, 0, True, (1,)),
    (2, [0, 1], "PROBIT", [0.1, 0.2], None, True, (1,)),
]


@pytest.mark.parametrize("case", CLASSIFIER_CASES, ids=[str(i) for i in range(len(CLASSIFIER_CASES))])
def test_tree_classifier_matches_onnxruntime(case):
    n_cls, labels, post, base, single, positive, votes = case
    rng = np.random.default_rng(len(CLASSIFIER_CASES) + CLASSIFIER_CASES.index(case))
    a = random_forest(rng, 4, 4, n_cls, depth=3, votes=votes, positive=positive, single_class=single)
    if post == "PROBIT":
        a["w_val"] = [abs(w) / 10 for w in a["w_val"]]
    strings = isinstance(labels[0], str)
    attrs = legacy_attrs(a, "class")
    attrs.update({"classlabels_strings" if strings else "classlabels_int64s": labels, "post_transform": post})
    if base is not None:
        attrs["base_values"] = base
    node = helper.make_node("TreeEnsembleClassifier", ["x"], ["y", "z"], domain=ML, **attrs)
    m = model([node], [("x", F32, [None, 4])], [("y", S if strings else I64, [None]), ("z", F32, [None, n_cls])],
              opset=17, ml=3)
    x = rows(rng, 40)
    assert_matches_ort(m, {"x": x}, rtol=1e-5, atol=1e-5)
    assert_matches_ort(m, {"x": x[3:4]}, rtol=1e-5, atol=1e-5)  # one row
    if not strings:  # string labels make the step eager (its outputs are not in the arena)
        assert edgedl.load(m.SerializeToString()).plan({"x": x.shape}).kernel_impls() == {"numba": 1}


@pytest.mark.parametrize("mode", ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE"])
def test_tree_same_mode_forests_match_onnxruntime(mode):
    """Exporters write one comparison for every node (sklearn BRANCH_LEQ, XGBoost BRANCH_LT with missing
    values): the lockstep kernel, many rows so that it runs in parallel too."""
    rng = np.random.default_rng(len(mode))
    a = random_forest(rng, 40, 8, 3, depth=6, modes=[mode], votes=(1, 3), positive=True)
    attrs = legacy_attrs(a, "class")
    node = helper.make_node("TreeEnsembleClassifier", ["x"], ["y", "z"], domain=ML, classlabels_int64s=[0, 1, 2],
                            post_transform="SOFTMAX", **attrs)
    m = model([node], [("x", F32, [None, 8])], [("y", I64, [None]), ("z", F32, [None, 3])], opset=17, ml=3)
    assert ml_op("TreeEnsembleClassifier", dict(attrs, classlabels_int64s=[0, 1, 2]), n_out=2).forest.same_mode \
        == MODES.index(mode)
    assert_matches_ort(m, {"x": rows(rng, 1500, 8)}, rtol=1e-5, atol=1e-5)


def test_tree_classifier_integer_and_double_inputs():
    rng = np.random.default_rng(11)
    a = random_forest(rng, 3, 4, 3, depth=3)
    a["values"] = [float(round(v)) + 0.5 for v in a["values"]]
    op = ml_op("TreeEnsembleClassifier", dict(legacy_attrs(a, "class"), classlabels_int64s=[0, 1, 2]), n_out=2)
    xi = rng.integers(-3, 3, (20, 4))
    want = op.ref(xi.astype(np.float32))
    for dt in (np.int64, np.int32, np.float64):
        got = op.ref(xi.astype(dt))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def to_v5(a, n_targets, dtype=np.float32, member_every=0):
    """The forest (first vote of each leaf) as TreeEnsemble (ai.onnx.ml 5) attributes; every member_every-th
    interior node becomes a BRANCH_MEMBER node testing {threshold, threshold + 1, -2}."""
    pos = {(t, n): k for k, (t, n) in enumerate(zip(a["treeids"], a["nodeids"]))}
    interior = [k for k, m in enumerate(a["modes"]) if m != "LEAF"]
    leaves = [k for k, m in enumerate(a["modes"]) if m == "LEAF"]
    iidx = {k: j for j, k in enumerate(interior)}
    lidx = {k: j for j, k in enumerate(leaves)}
    first = {}
    for t, n, i, w in zip(a["w_tree"], a["w_node"], a["w_id"], a["w_val"]):
        first.setdefault(pos[(t, n)], (i, w))
    v = dict(modes=[], splits=[], feats=[], t=[], tl=[], f=[], fl=[], mtt=[], members=[])
    for j, k in enumerate(interior):
        mode = MODES.index(a["modes"][k])
        if member_every and j % member_every == 0:
            mode = 6
            thr = float(np.round(a["values"][k]))
            v["members"] += [thr, thr + 1, -2.0, float("nan")]
        v["modes"].append(mode)
        v["splits"].append(a["values"][k])
        v["feats"].append(a["featureids"][k])
        v["mtt"].append(a["mtt"][k])
        for cid, ids, lf in ((a["true"][k], v["t"], v["tl"]), (a["false"][k], v["f"], v["fl"])):
            c = pos[(a["treeids"][k], cid)]
            ids.append(lidx[c] if c in lidx else iidx[c])
            lf.append(int(c in lidx))
    roots = [iidx[pos[(t, 0)]] for t in sorted(set(a["treeids"]))]
    attrs = dict(n_targets=n_targets, tree_roots=roots, nodes_modes=np.array(v["modes"], np.uint8),
                 nodes_featureids=v["feats"], nodes_splits=np.array(v["splits"], dtype), nodes_truenodeids=v["t"],
                 nodes_trueleafs=v["tl"], nodes_falsenodeids=v["f"], nodes_falseleafs=v["fl"],
                 nodes_missing_value_tracks_true=v["mtt"],
                 leaf_targetids=[first.get(k, (0, 0.0))[0] for k in leaves],
                 leaf_weights=np.array([first.get(k, (0, 0.0))[1] for k in leaves], dtype))
    if v["members"]:
        attrs["membership_values"] = np.array(v["members"], dtype)
    return attrs


def onnx_attrs(attrs):
    return {k: numpy_helper.from_array(v, k) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}


@pytest.mark.parametrize("agg", [0, 1, 2, 3])
@pytest.mark.parametrize("post", [0, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tree_ensemble_v5_matches_onnxruntime(agg, post, dtype):
    rng = np.random.default_rng(agg * 10 + post)
    for n_targets, member_every in ((1, 0), (3, 0), (2, 3)):
        a = random_forest(rng, 4, 4, n_targets, depth=3, votes=(1,))
        if post == 4:
            a["w_val"] = [abs(w) / 20 for w in a["w_val"]]
        attrs = to_v5(a, n_targets, dtype, member_every)
        attrs.update(aggregate_function=agg, post_transform=post)
        node = helper.make_node("TreeEnsemble", ["x"], ["y"], domain=ML, **onnx_attrs(attrs))
        t = F32 if dtype == np.float32 else F64
        m = model([node], [("x", t, [None, 4])], [("y", t, [None, n_targets])], opset=21, ml=5)
        x = rows(rng, 30).astype(dtype)
        if member_every:
            x = np.round(x)  # onnxruntime's BRANCH_MEMBER truncates non-integer features its own way
        assert_matches_ort(m, {"x": x}, rtol=1e-5, atol=1e-5)


def test_tree_ensemble_v5_transforms_follow_the_spec():
    # post_transform 1 is SOFTMAX and 2 is LOGISTIC in the spec (onnxruntime swaps them)
    rng = np.random.default_rng(2)
    a = random_forest(rng, 3, 4, 3, depth=2, votes=(1,))
    x = rows(rng, 10)
    attrs = to_v5(a, 3)
    base = ml_op("TreeEnsemble", dict(attrs, post_transform=0)).ref(x)[0]
    soft = ml_op("TreeEnsemble", dict(attrs, post_transform=1)).ref(x)[0]
    e = np.exp(base - base.max(axis=1, keepdims=True))
    np.testing.assert_allclose(soft, e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    logi = ml_op("TreeEnsemble", dict(attrs, post_transform=2)).ref(x)[0]
    np.testing.assert_allclose(logi, 1 / (1 + np.exp(-base)), rtol=1e-5)


def test_tree_ensemble_v5_membership_and_single_leaf_tree():
    attrs = dict(n_targets=2, tree_roots=[0, 2], nodes_modes=np.array([6, 0, 0], np.uint8),
                 nodes_featureids=[0, 1, 99], nodes_splits=np.array([0, 0.5, 0], np.float32),
                 nodes_truenodeids=[0, 1, 3], nodes_trueleafs=[1, 1, 1], nodes_falsenodeids=[1, 2, 3],
                 nodes_falseleafs=[0, 1, 1], nodes_missing_value_tracks_true=[1, 0, 0],
                 leaf_targetids=[0, 1, 0, 1], leaf_weights=np.array([1.0, 10.0, 100.0, 1000.0], np.float32),
                 membership_values=np.array([1.0, 3.5, np.nan], np.float32))
    op = ml_op("TreeEnsemble", attrs)
    x = np.array([[1.0, 0.0], [3.5, 9.0], [2.0, 0.0], [2.0, 1.0], [np.nan, 1.0]], np.float32)
    (y,), _ = run(op, [x])  # tree 2 is a single leaf (feature 99 is never read)
    assert y.tolist() == [[1, 1000], [1, 1000], [0, 1010], [100, 1000], [1, 1000]]


def tree_attrs(**over):
    attrs = dict(nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[1, 0, 0],
                 nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_values=[0.0, 0, 0], nodes_truenodeids=[1, 0, 0],
                 nodes_falsenodeids=[2, 0, 0], target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0],
                 target_weights=[1.0, 2.0], n_targets=1)
    attrs.update(over)
    return attrs


@pytest.mark.parametrize("over", [
    dict(nodes_truenodeids=[5, 0, 0]),  # child that does not exist
    dict(nodes_truenodeids=[0, 0, 0]),  # its own child
    dict(nodes_modes=["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"], nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 2, 0]),
    dict(nodes_modes=["BRANCH_XX", "LEAF", "LEAF"]),
    dict(nodes_nodeids=[0, 1, 1]),
    dict(target_ids=[0, 1]),  # target out of range
    dict(target_nodeids=[1, 7]),
    dict(nodes_values=[0.0, 0.0]),
    dict(base_values=[1.0, 2.0]),
    dict(aggregate_function="MEDIAN"),
    dict(post_transform="RELU"),
])
def test_tree_regressor_rejects_bad_structure(over):
    with pytest.raises(EdgeDLError):
        ml_op("TreeEnsembleRegressor", tree_attrs(**over))


def test_tree_cycle_is_rejected():
    # 0 -> 1 -> 2 -> 1: a cycle through interior nodes
    attrs = tree_attrs(nodes_treeids=[0, 0, 0, 0], nodes_nodeids=[0, 1, 2, 3], nodes_featureids=[0, 0, 0, 0],
                       nodes_modes=["BRANCH_LEQ", "BRANCH_LEQ", "BRANCH_LEQ", "LEAF"], nodes_values=[0.0] * 4,
                       nodes_truenodeids=[1, 2, 1, 0], nodes_falsenodeids=[3, 3, 3, 0], target_nodeids=[3, 3])
    with pytest.raises(EdgeDLError, match="cycle"):
        ml_op("TreeEnsembleRegressor", attrs)


def test_tree_feature_out_of_range_and_bad_inputs():
    op = ml_op("TreeEnsembleRegressor", tree_attrs())
    with pytest.raises(ShapeError, match="feature 1"):
        op.infer(types(np.zeros((3, 1), np.float32)), [None])
    with pytest.raises(EdgeDLError, match="feature 1"):
        op.ref(np.zeros((3, 1), np.float32))
    with pytest.raises(ShapeError):
        op.infer(types(np.zeros((3, 2, 2), np.float32)), [None])
    with pytest.raises(UnsupportedOpError):
        op.infer(types(np.zeros((3, 2), np.float16)), [None])
    assert op.infer(types(np.zeros(2, np.float32)), [None])[0].shape == (1, 1)


@pytest.mark.parametrize("over", [
    dict(tree_roots=[5]), dict(nodes_truenodeids=[9]), dict(nodes_falseleafs=[1], nodes_falsenodeids=[4]),
    dict(nodes_modes=np.array([7], np.uint8)), dict(leaf_targetids=[0, 2]), dict(nodes_modes=np.array([6], np.uint8)),
    dict(nodes_modes=np.array([6], np.uint8), membership_values=np.array([1.0, np.nan, 2.0, np.nan], np.float32)),
    dict(aggregate_function=4), dict(post_transform=5), dict(leaf_weights=np.array([1.0], np.float32)),
])
def test_tree_ensemble_v5_rejects(over):
    attrs = dict(n_targets=2, tree_roots=[0], nodes_modes=np.array([0], np.uint8), nodes_featureids=[0],
                 nodes_splits=np.array([0.0], np.float32), nodes_truenodeids=[0], nodes_trueleafs=[1],
                 nodes_falsenodeids=[1], nodes_falseleafs=[1], leaf_targetids=[0, 1],
                 leaf_weights=np.array([1.0, 2.0], np.float32))
    attrs.update(over)
    with pytest.raises(EdgeDLError):
        ml_op("TreeEnsemble", attrs)


def test_tree_classifier_rejects():
    a = random_forest(np.random.default_rng(0), 1, 2, 2, depth=1)
    with pytest.raises(EdgeDLError):
        ml_op("TreeEnsembleClassifier", dict(legacy_attrs(a, "class")))
    with pytest.raises(UnsupportedOpError):
        ml_op("TreeEnsembleClassifier", dict(legacy_attrs(a, "class"), classlabels_int64s=[1]))
    with pytest.raises(EdgeDLError):
        ml_op("TreeEnsembleClassifier", dict(legacy_attrs(a, "class"), classlabels_int64s=[0, 1], base_values=[1.0]))


def test_tree_forest_end_to_end_pipeline():
    """Scaler -> TreeEnsembleClassifier -> LabelEncoder on labels, against onnxruntime (a sklearn-like pipeline)."""
    rng = np.random.default_rng(21)
    a = random_forest(rng, 10, 4, 3, depth=5, votes=(3,), positive=True)
    attrs = legacy_attrs(a, "class")
    nodes = [helper.make_node("Scaler", ["x"], ["s"], domain=ML, scale=[1.0, 2.0, 0.5, 1.0], offset=[0.1, 0, 0, -0.2]),
             helper.make_node("TreeEnsembleClassifier", ["s"], ["y", "p"], domain=ML, classlabels_int64s=[0, 1, 2],
                              post_transform="SOFTMAX", **attrs),
             helper.make_node("LabelEncoder", ["y"], ["name"], domain=ML, keys_int64s=[0, 1, 2],
                              values_strings=["cat", "dog", "eel"])]
    m = model(nodes, [("x", F32, [None, 4])], [("name", S, [None]), ("p", F32, [None, 3])], opset=17, ml=2)
    x = rows(rng, 200)
    assert_matches_ort(m, {"x": x}, rtol=1e-5, atol=1e-5)
