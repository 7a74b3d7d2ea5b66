"""String ops: StringConcat, RegexFullMatch, StringSplit and StringNormalizer.

A string tensor is a numpy object array of Python ``str``. Nodes with a string output never live in the arena:
the planner runs their ``ref`` at run time (see :mod:`edgedl.runtime.plan`), so these ops are ``infer`` + ``ref``
only, numpy's vectorized object loops (``np.add``) or one comprehension over the flattened array.

* StringConcat (opset 20): ``Z = X + Y`` element by element, numpy (multidirectional) broadcasting.
* RegexFullMatch (opset 20): ``Y[i] = pattern fully matches X[i]`` (bool). The pattern is RE2 syntax; it is
  translated once per node into an equivalent Python ``re`` pattern (:func:`re2_to_python`): RE2's ASCII
  ``\\d \\w \\s \\b`` and POSIX ``[[:alpha:]]`` classes become explicit ASCII sets, ``\\z`` becomes ``\\Z``, ``$``
  (outside multi-line mode) matches only at the very end, ``\\Q...\\E`` quotes, ``(?<name>`` names a group.
  Constructs RE2 does not have (backreferences, lookaround, atomic groups, possessive quantifiers,
  conditionals, comments, ``\\Z``) and RE2 features Python's ``re`` lacks (``\\p{...}`` Unicode classes,
  ``\\C``, the ``U`` flag, flag groups in mid-pattern) raise UnsupportedOpError when the model is loaded.
* StringSplit (opset 20): each element split on ``delimiter`` (``str.split``; absent or "" splits on runs of
  whitespace, Python's definition, and drops leading/trailing whitespace, also from an unsplit rest) into at
  most ``maxsplit + 1`` parts; an empty string has no parts (as onnxruntime, whose whitespace is only ' ').
  Y has one more axis, padded with "" to the longest split; Z (int64, X's shape) holds each element's number of
  parts. Y's last dimension depends on the data: with X computed at run time the shape rule raises
  DataDependentShape.
* StringNormalizer (opset 10): X is [C] or [1, C]; elements equal to a stop word (compared after lower-casing
  both when ``is_case_sensitive`` is 0) are dropped, the rest are lower-/upper-cased (``case_change_action``)
  with Python's locale-independent ``str.lower`` / ``str.upper`` (``locale`` is accepted and ignored). If every
  element is dropped the output is [""] ([C] input) or [[""]] ([1, C] input). With stop words the output
  length depends on the data (DataDependentShape unless X is a constant).

String Equal is handled by the comparison ops (:mod:`edgedl.ops.logic`).
"""
from __future__ import annotations

import re
import warnings

import numpy as np

from ..errors import DataDependentShape
from ..ir import MAX_TENSOR_ELEMENTS, TensorType
from ..registry import Op, register
from .common import broadcast_shapes

_OBJ = np.dtype(object)
_I64 = np.dtype(np.int64)


def require_string(op: Op, t: TensorType, what: str = "input") -> None:
    if np.dtype(t.dtype) != _OBJ:
        raise op.error(f"{what} must be a string tensor, got {np.dtype(t.dtype).name}")


def as_strings(x: np.ndarray) -> np.ndarray:
    """An object array of str (numpy 'U' arrays fed directly are converted)."""
    x = np.asarray(x)
    return x if x.dtype == _OBJ else x.astype(object)


def _map_strings(fn, x: np.ndarray, dtype) -> np.ndarray:
    """``fn`` applied to every element of the object array ``x``, as an array of ``dtype`` and x's shape."""
    flat = x.reshape(-1)
    if dtype == _OBJ:
        out = np.empty(flat.shape, object)
        out[:] = [fn(s) for s in flat]
    else:
        out = np.fromiter((fn(s) for s in flat), dtype=dtype, count=flat.size)
    return out.reshape(x.shape)


# --------------------------------------------------------------------------------------------------------
@register
class StringConcat(Op):
    op_type = "StringConcat"
    num_inputs = (2, 2)

    def infer(self, ins, consts):
        a, b = ins
        require_string(self, a, "X")
        require_string(self, b, "Y")
        return [TensorType(broadcast_shapes(self, a.shape, b.shape), _OBJ)]

    def ref(self, a, b):
        a, b = as_strings(a), as_strings(b)
        out = np.empty(np.broadcast_shapes(a.shape, b.shape), object)
        np.add(a, b, out=out, casting="unsafe")  # str.__add__ element by element
        return [out]


# --------------------------------------------------------------------------------------------------------
class _RegexUnsupported(Exception):
    pass


class _RegexInvalid(Exception):
    pass


_MAX_CP = 0x10FFFF
_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]  # RE2's \s: [\t\n\f\r ]
_POSIX = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)], "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)], "blank": [(0x09, 0x09), (0x20, 0x20)], "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": _DIGIT, "graph": [(0x21, 0x7E)], "lower": [(0x61, 0x7A)], "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)], "upper": [(0x41, 0x5A)], "word": _WORD,
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
_SHORTHAND = {"d": (_DIGIT, False), "D": (_DIGIT, True), "w": (_WORD, False), "W": (_WORD, True),
              "s": (_SPACE, False), "S": (_SPACE, True)}
_W = "[0-9A-Za-z_]"
_WORD_BOUNDARY = f"(?:(?<={_W})(?!{_W})|(?<!{_W})(?={_W}))"
_NOT_WORD_BOUNDARY = f"(?:(?<={_W})(?={_W})|(?<!{_W})(?!{_W}))"
#: RE2 refuses counted repetitions above this
_RE2_MAX_REPEAT = 1000


def _cp(c: int) -> str:
    return f"\\U{c:08x}"


def _class_body(ranges, negate: bool) -> str:
    """The inside of a character class (no brackets) matching ``ranges`` or, negated, every other code point."""
    if negate:
        comp, lo = [], 0
        for a, b in sorted(ranges):
            if a > lo:
                comp.append((lo, a - 1))
            lo = max(lo, b + 1)
        if lo <= _MAX_CP:
            comp.append((lo, _MAX_CP))
        ranges = comp
    return "".join(_cp(a) if a == b else f"{_cp(a)}-{_cp(b)}" for a, b in ranges)


def _literal(ch: str) -> str:
    return _cp(ord(ch))


def re2_to_python(pattern: str) -> str:
    """A Python ``re`` pattern matching what the RE2 ``pattern`` matches (see the module docstring).

    Raises _RegexUnsupported for RE2 constructs Python cannot express and for non-RE2 constructs, and
    _RegexInvalid for malformed patterns that the scan itself notices."""
    out: list[str] = []
    n = len(pattern)
    i = 0
    in_class = False
    class_start = False  # just after '[' or '[^': a ']' here is a literal
    multiline = "m" in "".join(re.findall(r"\(\?([a-zA-Z-]*)[:)]", pattern))
    only_flags = True  # everything emitted so far is global flag groups (where Python accepts them)
    quant = 0  # 1: the previous item was a repetition operator, 2: a lazy one ('?' after it)

    def escape_seq(j: int) -> tuple[str, int]:
        """Translate the escape at pattern[j] == '\\'; returns (text, next index)."""
        if j + 1 >= n:
            raise _RegexInvalid("trailing backslash")
        c = pattern[j + 1]
        if c in "123456789":
            raise _RegexUnsupported("backreferences (\\1 ...) are not RE2 syntax")
        if c in _SHORTHAND:
            ranges, neg = _SHORTHAND[c]
            body = _class_body(ranges, neg)
            return (body if in_class else f"[{body}]"), j + 2
        if c in "pP":
            raise _RegexUnsupported("Unicode character classes (\\p{...}, \\P{...}) are not supported")
        if c == "C":
            raise _RegexUnsupported("\\C (any byte) is not supported")
        if c == "Z":
            raise _RegexUnsupported("\\Z is not RE2 syntax (RE2 writes the end of text as \\z)")
        if c in "NGgkKRXhHoe":
            raise _RegexUnsupported(f"\\{c} is not RE2 syntax")
        if c in "bB":
            if in_class:
                raise _RegexUnsupported(f"\\{c} inside a character class is not RE2 syntax")
            return (_WORD_BOUNDARY if c == "b" else _NOT_WORD_BOUNDARY), j + 2
        if c == "z":
            if in_class:
                raise _RegexInvalid("\\z inside a character class")
            return "\\Z", j + 2
        if c == "A":
            if in_class:
                raise _RegexInvalid("\\A inside a character class")
            return "\\A", j + 2
        if c == "x" and j + 2 < n and pattern[j + 2] == "{":
            end = pattern.find("}", j + 3)
            digits = pattern[j + 3:end] if end >= 0 else ""
            if end < 0 or not digits or any(d not in "0123456789abcdefABCDEF" for d in digits) \
                    or int(digits, 16) > _MAX_CP:
                raise _RegexInvalid("bad \\x{...} escape")
            return _cp(int(digits, 16)), end + 1
        if c == "Q":
            end = pattern.find("\\E", j + 2)
            text = pattern[j + 2:] if end < 0 else pattern[j + 2:end]
            # literal characters, unwrapped: a quantifier after \E applies to the last one, as in RE2
            return "".join(_literal(ch) for ch in text), (n if end < 0 else end + 2)
        return "\\" + c, j + 2

    while i < n:
        ch = pattern[i]
        if in_class:
            if ch == "]" and not class_start:
                out.append("]")
                in_class = False
                i += 1
                continue
            class_start = False
            if ch == "\\":
                text, i = escape_seq(i)
                out.append(text)
                continue
            if ch == "[":
                if pattern.startswith("[:", i):
                    end = pattern.find(":]", i + 2)
                    name = pattern[i + 2:end] if end >= 0 else ""
                    if name.startswith("^"):
                        raise _RegexUnsupported("negated POSIX classes [[:^name:]] are not supported")
                    if name not in _POSIX:
                        raise _RegexInvalid(f"unknown POSIX class [:{name}:]")
                    out.append(_class_body(_POSIX[name], False))
                    i = end + 2
                    continue
                out.append("\\[")
                i += 1
                continue
            if ch in "&~|":
                out.append("\\" + ch)  # literal (Python warns that these may become set operators)
            else:
                out.append(ch)
            i += 1
            continue

        # --- outside a character class ---
        is_quant = ch in "*+?" or (ch == "{" and re.match(r"\{(\d+)(,(\d*))?\}", pattern[i:]) is not None)
        if is_quant:
            if quant == 1 and ch == "?":
                quant = 2
                out.append("?")
                i += 1
                continue
            if quant:
                raise _RegexUnsupported("a repetition of a repetition (possessive a*+, a**) is not RE2 syntax")
            if ch == "{":
                m = re.match(r"\{(\d+)(,(\d*))?\}", pattern[i:])
                nums = [int(v) for v in (m.group(1), m.group(3)) if v]
                if any(v > _RE2_MAX_REPEAT for v in nums):
                    raise _RegexUnsupported(f"repetition counts above {_RE2_MAX_REPEAT} are not RE2 syntax")
                if len(nums) == 2 and nums[1] < nums[0]:
                    raise _RegexInvalid(f"bad repetition {m.group(0)}")
                out.append(m.group(0))
                i += len(m.group(0))
            else:
                out.append(ch)
                i += 1
            quant = 1
            only_flags = False
            continue
        quant = 0
        if ch == "{":
            out.append("\\{")  # not a repetition: RE2 reads '{' literally
            i += 1
            only_flags = False
            continue
        if ch == "\\":
            text, i = escape_seq(i)
            out.append(text)
            only_flags = False
            continue
        if ch == "[":
            in_class = True
            class_start = True
            out.append("[")
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            only_flags = False
            continue
        if ch == "$" and not multiline:
            out.append("\\Z")  # RE2's $ (no m flag) is the end of the text, never before a final newline
            i += 1
            only_flags = False
            continue
        if ch == "(" and pattern.startswith("(?", i):
            rest = pattern[i + 2:]
            if rest.startswith(("=", "!", "<=", "<!")):
                raise _RegexUnsupported("lookahead / lookbehind assertions are not RE2 syntax")
            if rest.startswith(">"):
                raise _RegexUnsupported("atomic groups (?>...) are not RE2 syntax")
            if rest.startswith("#"):
                raise _RegexUnsupported("comments (?#...) are not RE2 syntax")
            if rest.startswith("("):
                raise _RegexUnsupported("conditionals (?(...)...) are not RE2 syntax")
            if rest.startswith("P="):
                raise _RegexUnsupported("named backreferences (?P=name) are not RE2 syntax")
            if rest.startswith("P<"):
                out.append("(?P<")
                i += 4
                only_flags = False
                continue
            if rest.startswith("<"):
                out.append("(?P<")
                i += 3
                only_flags = False
                continue
            if rest.startswith(":"):
                out.append("(?:")
                i += 3
                only_flags = False
                continue
            m = re.match(r"([A-Za-z-]*)([:)])", rest)
            if m is None:
                raise _RegexInvalid("bad group syntax after '(?'")
            flags, kind = m.group(1), m.group(2)
            if any(f not in "ims-" for f in flags):
                bad = sorted({f for f in flags if f not in "ims-"})
                raise _RegexUnsupported(f"flag(s) {''.join(bad)} are not supported (RE2 flags: i, m, s, U; "
                                        "U is not supported)")
            if not flags.replace("-", ""):
                raise _RegexInvalid("empty flag group")
            if kind == ")":
                if not only_flags:
                    raise _RegexUnsupported("flag groups such as (?i) are only supported at the start of the "
                                            "pattern (write (?i:...) to scope them)")
                if "-" in flags:
                    raise _RegexUnsupported("clearing flags at the start of the pattern is not supported")
                out.append(f"(?{flags})")
                i += 2 + len(m.group(0))
                continue
            out.append(f"(?{flags}:")
            i += 2 + len(m.group(0))
            only_flags = False
            continue
        out.append(ch)
        i += 1
        only_flags = False
    if in_class:
        raise _RegexInvalid("missing ']'")
    return "".join(out)


@register
class RegexFullMatch(Op):
    op_type = "RegexFullMatch"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        pattern = self.attr("pattern")
        if pattern is None:
            raise self.error("needs a 'pattern' attribute")
        if not isinstance(pattern, str):
            raise self.error(f"pattern must be a string, got {type(pattern).__name__}")
        try:
            translated = re2_to_python(pattern)
        except _RegexUnsupported as e:
            raise self.unsupported(f"pattern {pattern!r}: {e}") from None
        except _RegexInvalid as e:
            raise self.error(f"pattern {pattern!r} is not a valid RE2 pattern: {e}") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.regex = re.compile(translated)
        except re.error as e:
            raise self.error(f"pattern {pattern!r} is not a valid RE2 pattern: {e}") from None

    def infer(self, ins, consts):
        require_string(self, ins[0], "X")
        return [TensorType(ins[0].shape, np.dtype(np.bool_))]

    def ref(self, x):
        full = self.regex.fullmatch
        return [_map_strings(lambda s: full(s) is not None, as_strings(x), np.dtype(np.bool_))]


# --------------------------------------------------------------------------------------------------------
@register
class StringSplit(Op):
    op_type = "StringSplit"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        delim = self.attr("delimiter")
        self.delimiter = delim if delim else None  # None: split on whitespace runs
        maxsplit = self.attr("maxsplit")
        self.maxsplit = -1 if maxsplit is None else int(maxsplit)
        if self.maxsplit < 0 and maxsplit is not None:
            raise self.error(f"maxsplit must be non-negative, got {maxsplit}")

    def _split_one(self, s: str) -> list[str]:
        if not s:
            return []  # an empty string has no substrings (as onnxruntime)
        parts = s.split(self.delimiter, self.maxsplit)
        if self.delimiter is None and self.maxsplit >= 0 and len(parts) > self.maxsplit:
            parts[-1] = parts[-1].rstrip()  # whitespace mode drops trailing whitespace of the unsplit rest too
        return parts

    def _split(self, x: np.ndarray):
        flat = as_strings(x).reshape(-1)
        parts = [self._split_one(s) for s in flat]
        counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        width = int(counts.max()) if counts.size else 0
        if flat.size * width > MAX_TENSOR_ELEMENTS:
            raise self.error(f"splitting gives {flat.size} x {width} substrings: absurdly large")
        return parts, counts, width

    def infer(self, ins, consts):
        require_string(self, ins[0], "X")
        shape = tuple(ins[0].shape)
        if consts[0] is None:
            if int(np.prod(shape, dtype=np.int64)) != 0:
                raise DataDependentShape(f"{self.node.describe()}: the number of substrings depends on the "
                                         "values of X, which are computed at run time")
            width = 0
        else:
            width = self._split(consts[0])[2]
        return [TensorType(shape + (width,), _OBJ), TensorType(shape, _I64)]

    def ref(self, x):
        parts, counts, width = self._split(x)
        y = np.full((len(parts), width), "", dtype=object)
        for k, p in enumerate(parts):
            y[k, :len(p)] = p
        return [y.reshape(tuple(x.shape) + (width,)), counts.reshape(x.shape)]


# --------------------------------------------------------------------------------------------------------
@register
class StringNormalizer(Op):
    op_type = "StringNormalizer"

    def __init__(self, node, opset):
        super().__init__(node, opset)
        action = self.attr("case_change_action", "NONE")
        if action not in ("NONE", "LOWER", "UPPER"):
            raise self.error(f"case_change_action must be NONE, LOWER or UPPER, got {action!r}")
        self.action = action
        self.case_sensitive = bool(int(self.attr("is_case_sensitive", 0)))
        stops = self.attr("stopwords") or []
        self.stopwords = frozenset(stops if self.case_sensitive else (w.lower() for w in stops))

    def _check(self, x: TensorType) -> None:
        require_string(self, x, "X")
        shape = tuple(x.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)):
            raise self.error(f"X must have shape [C] or [1, C], got {shape}")

    def infer(self, ins, consts):
        x = ins[0]
        self._check(x)
        if not self.stopwords:
            return [TensorType(tuple(x.shape), _OBJ)]
        if consts[0] is None:
            raise DataDependentShape(f"{self.node.describe()}: the number of words left after removing stop words "
                                     "depends on the values of X, which are computed at run time")
        return [TensorType(self.ref(consts[0])[0].shape, _OBJ)]

    def ref(self, x):
        x = as_strings(x)
        words = list(x.reshape(-1))
        if self.stopwords:
            if self.case_sensitive:
                words = [w for w in words if w not in self.stopwords]
            else:
                words = [w for w in words if w.lower() not in self.stopwords]
        if self.action == "LOWER":
            words = [w.lower() for w in words]
        elif self.action == "UPPER":
            words = [w.upper() for w in words]
        if not words and self.stopwords:
            words = [""]  # everything was a stop word
        out = np.empty(len(words), object)
        out[:] = words
        return [out.reshape((1, -1)) if x.ndim == 2 else out]
