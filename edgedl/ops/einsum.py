"""Einsum (opset 12+): any equation numpy accepts (explicit or implicit output, ellipsis with broadcasting,
repeated indices = diagonals, indices summed away), planned at build time and run as batched GEMMs.

``output[out] = sum over the other indices of prod_i input_i[term_i]``. Implicit mode (no ``->``): the output
indices are the ellipsis dims, then the letters that appear exactly once, sorted by ASCII (upper case first).
Size-1 dims broadcast against the other operands (as numpy does), ellipsis dims align from the right.

Plan (:class:`EinsumPlan`, every step a numpy view or one kernel call, no per-element Python):

1. per operand: repeated letters -> the diagonal (a strided view), size-1 dims that broadcast dropped, letters
   found in no other operand and not in the output summed away;
2. operands contracted left to right, each pair as one batched GEMM ``(G, M, K) @ (G, K, N)``: G = letters in
   both that are still needed (output or later operands), K = letters in both that are not, M / N = letters of
   one side only (:class:`edgedl.kernels.cpu.einsum.BatchedGemm` for float32, numpy matmul in float64 for the
   reference path); the last contraction orders its letters as the output wants (operands swapped when that
   helps), so it writes the output in place;
3. a final transpose into the output (and size-1 dims re-inserted).

Backward: the gradient of operand i is itself an einsum: ``dX_i[term_i] = einsum(dY[out], X_j[term_j] (j != i)
-> letters of term_i)``, then written onto the diagonal for repeated letters and summed over broadcast dims.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .common import require_dtype

_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32",
           "float64", "bfloat16")


class EinsumError(ValueError):
    """A malformed equation or operands that do not fit it (the op turns it into a ShapeError)."""


# ----------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------
def _split_term(term: str) -> tuple[list[str], bool, int]:
    """(letters, has_ellipsis, position of the ellipsis among the letters)."""
    if term.count("...") > 1 or (term.replace("...", "").count(".")):
        raise EinsumError(f"term '{term}' has a malformed ellipsis")
    has = "..." in term
    pos = term.index("...") if has else -1
    letters = list(term.replace("...", ""))
    for c in letters:
        if not ("a" <= c <= "z" or "A" <= c <= "Z"):
            raise EinsumError(f"term '{term}' has the character '{c}'; only letters and '...' are allowed")
    return letters, has, (len(term[:pos].replace("...", "")) if has else -1)


def parse_equation(equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str], int]:
    """(labels per operand, output labels, ellipsis rank). Labels are letters, and '.0', '.1', ... for the
    ellipsis dims (aligned right: an operand with e ellipsis dims out of E has '.{E-e}' ... '.{E-1}')."""
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise EinsumError(f"equation '{equation}' has more than one '->'")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise EinsumError(f"equation '{equation}' has {len(terms)} operand terms, the node has {len(ranks)} inputs")
    parsed = [_split_term(t) for t in terms]
    ell = []
    for (letters, has, _), rank, term in zip(parsed, ranks, terms):
        e = rank - len(letters)
        if (not has and e != 0) or e < 0:
            raise EinsumError(f"term '{term}' has {len(letters)} letters for an operand of rank {rank}")
        ell.append(e if has else 0)
    n_ell = max(ell) if ell else 0
    labels = []
    for (letters, has, pos), e in zip(parsed, ell):
        ed = [f".{n_ell - e + j}" for j in range(e)]
        labels.append(letters[:pos] + ed + letters[pos:] if has else letters)
    if arrow:
        out_letters, out_has, out_pos = _split_term(rhs)
        if len(set(out_letters)) != len(out_letters):
            raise EinsumError(f"output term '{rhs}' repeats a letter")
        seen = {c for t in parsed for c in t[0]}
        for c in out_letters:
            if c not in seen:
                raise EinsumError(f"output letter '{c}' appears in no operand term")
        if not out_has and n_ell > 0:
            raise EinsumError("the operands have ellipsis dimensions but the output term has no '...'")
        ed = [f".{j}" for j in range(n_ell)]
        out = out_letters[:out_pos] + ed + out_letters[out_pos:] if out_has else out_letters
    else:
        counts: dict[str, int] = {}
        for t in parsed:
            for c in t[0]:
                counts[c] = counts.get(c, 0) + 1
        out = [f".{j}" for j in range(n_ell)] + sorted(c for c, k in counts.items() if k == 1)
    return labels, out, n_ell


def label_sizes(labels: list[list[str]], shapes: list[tuple[int, ...]]) -> dict[str, int]:
    """Size of every label: equal within an operand, equal or 1 (broadcast) across operands."""
    sizes: dict[str, int] = {}
    for i, (lab, shape) in enumerate(zip(labels, shapes)):
        own: dict[str, int] = {}
        for lb, d in zip(lab, shape):
            d = int(d)
            if lb in own and own[lb] != d:
                raise EinsumError(f"operand {i}: the repeated index '{lb}' has dims {own[lb]} and {d}")
            own[lb] = d
        for lb, d in own.items():
            cur = sizes.get(lb)
            if cur is None or cur == 1:
                sizes[lb] = d
            elif d != 1 and d != cur:
                name = "an ellipsis dim" if lb.startswith(".") else f"index '{lb}'"
                raise EinsumError(f"{name} has size {cur} in one operand and {d} in operand {i}")
    return sizes


def canonical_equation(labels: list[list[str]], out: list[str]) -> str:
    """An explicit numpy equation of the labels (ellipsis labels renamed to free letters)."""
    used = {lb for t in labels for lb in t if not lb.startswith(".")}
    free = iter(c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used)
    names: dict[str, str] = {}

    def nm(lb):
        if not lb.startswith("."):
            return lb
        if lb not in names:
            names[lb] = next(free)
        return names[lb]

    return ",".join("".join(nm(lb) for lb in t) for t in labels) + "->" + "".join(nm(lb) for lb in out)


# ----------------------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------------------
def _diagonal(x: np.ndarray, lab: list[str]) -> tuple[np.ndarray, list[str]]:
    """x with repeated labels merged into their diagonal (a strided view) and the unique labels."""
    uniq: list[str] = []
    shape: list[int] = []
    strides: list[int] = []
    for lb, d, s in zip(lab, x.shape, x.strides):
        if lb in uniq:
            strides[uniq.index(lb)] += s
        else:
            uniq.append(lb)
            shape.append(d)
            strides.append(s)
    if len(uniq) == len(lab):
        return x, list(lab)
    return np.lib.stride_tricks.as_strided(x, shape=tuple(shape), strides=tuple(strides), writeable=False), uniq


class _Step:
    """One contraction: operand ``left`` labels x ``right`` labels -> ``out`` labels (batch + m + n)."""

    def __init__(self, la, lb, keep, sizes, order_hint):
        self.sum_a = [x for x in la if x not in lb and x not in keep]
        self.sum_b = [x for x in lb if x not in la and x not in keep]
        la = [x for x in la if x not in self.sum_a]
        lb = [x for x in lb if x not in self.sum_b]
        pos = {lbl: i for i, lbl in enumerate(order_hint)}
        key = lambda x: pos.get(x, len(pos))  # noqa: E731
        self.batch = sorted([x for x in la if x in lb and x in keep], key=key)
        self.k = [x for x in la if x in lb and x not in keep]
        self.m = sorted([x for x in la if x not in lb], key=key)
        self.n = sorted([x for x in lb if x not in la], key=key)
        self.swap = False
        # the output order batch + m + n; swapped operands give batch + n + m: take what the hint prefers
        if order_hint and self.m and self.n:
            want = [x for x in order_hint if x in set(self.batch + self.m + self.n)]
            if want == self.batch + self.n + self.m:
                self.swap = True
        if self.swap:
            self.m, self.n = self.n, self.m
            self.sum_a, self.sum_b = self.sum_b, self.sum_a
        size = lambda ls: int(np.prod([sizes[x] for x in ls], dtype=np.int64))  # noqa: E731
        self.G, self.M, self.K, self.N = size(self.batch), size(self.m), size(self.k), size(self.n)
        self.out = self.batch + self.m + self.n
        self.gemm = None


class EinsumPlan:
    """Everything about an einsum decided from the equation and the operand shapes (see the module docstring).

    ``run(arrays, out, fp32)``: fp32 uses the GEMM kernels (float32 operands), else numpy in the dtype of
    ``compute`` (float64 for the reference)."""

    def __init__(self, labels: list[list[str]], out: list[str], shapes: list[tuple[int, ...]]):
        self.labels = [list(t) for t in labels]
        self.out = list(out)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.sizes = label_sizes(self.labels, self.shapes)
        for lb in self.out:
            self.sizes.setdefault(lb, 1)
        self.out_shape = tuple(self.sizes[lb] for lb in self.out)
        self.zero = any(d == 0 for d in self.sizes.values())
        # per operand: labels after the diagonal, the broadcast dims dropped, and the private letters summed
        self.prep = []
        n = len(self.labels)
        for i, lab in enumerate(self.labels):
            uniq = list(dict.fromkeys(lab))
            own_dims = {lb: d for lb, d in zip(lab, self.shapes[i])}
            squeeze = [lb for lb in uniq if own_dims[lb] == 1 and self.sizes[lb] != 1]
            kept = [lb for lb in uniq if lb not in squeeze]
            others = {x for j in range(n) if j != i for x in self.labels[j]} | set(self.out)
            summed = [lb for lb in kept if lb not in others]
            after = [lb for lb in kept if lb not in summed]
            self.prep.append((squeeze, summed, after))
        # contractions, left to right
        self.steps: list[_Step] = []
        cur = self.prep[0][2] if n else []
        for j in range(1, n):
            keep = set(self.out) | {x for t in self.prep[j + 1:] for x in t[2]}
            hint = self.out if j == n - 1 else []
            step = _Step(cur, self.prep[j][2], keep, self.sizes, hint)
            self.steps.append(step)
            cur = step.out
        # the final transpose: labels still present, then the output labels missing (size 1)
        final_keep = [x for x in cur if x in self.out]
        self.final_sum = [x for x in cur if x not in self.out]
        self.final = final_keep
        self.direct = not self.final_sum and final_keep == [x for x in self.out if x in final_keep]

    # --- execution -------------------------------------------------------------------------------------------
    def _operand(self, i: int, x: np.ndarray, dtype) -> tuple[np.ndarray, list[str]]:
        squeeze, summed, after = self.prep[i]
        v, lab = _diagonal(x, self.labels[i])
        if squeeze:
            idx = tuple(0 if lb in squeeze else slice(None) for lb in lab)
            v = v[idx]
            lab = [lb for lb in lab if lb not in squeeze]
        if summed:
            v = np.add.reduce(v, axis=tuple(lab.index(lb) for lb in summed), dtype=dtype)
            lab = [lb for lb in lab if lb not in summed]
        return v, lab

    @staticmethod
    def _arrange(v: np.ndarray, lab: list[str], order: list[str], sizes, shape3) -> np.ndarray:
        perm = [lab.index(x) for x in order]
        return np.transpose(v, perm).reshape(shape3) if perm else v.reshape(shape3)

    def _contract(self, step: _Step, a, la, b, lb, dtype, fp32, out3=None):
        if step.swap:
            a, la, b, lb = b, lb, a, la
        if step.sum_a:
            a = np.add.reduce(a, axis=tuple(la.index(x) for x in step.sum_a), dtype=dtype)
            la = [x for x in la if x not in step.sum_a]
        if step.sum_b:
            b = np.add.reduce(b, axis=tuple(lb.index(x) for x in step.sum_b), dtype=dtype)
            lb = [x for x in lb if x not in step.sum_b]
        a3 = self._arrange(a, la, step.batch + step.m + step.k, self.sizes, (step.G, step.M, step.K))
        b3 = self._arrange(b, lb, step.batch + step.k + step.n, self.sizes, (step.G, step.K, step.N))
        if out3 is None:
            out3 = np.empty((step.G, step.M, step.N), dtype)
        if fp32:
            if step.gemm is None:
                from ..kernels.cpu.einsum import BatchedGemm

                step.gemm = BatchedGemm(step.G, step.M, step.K, step.N)
            step.gemm.run(a3.astype(np.float32, copy=False), b3.astype(np.float32, copy=False), out3)
        else:
            np.matmul(a3, b3, out=out3)
        return out3.reshape([self.sizes[x] for x in step.out]), step.out

    def run(self, arrays: list[np.ndarray], out: np.ndarray, dtype, fp32: bool) -> np.ndarray:
        """Write the einsum of ``arrays`` (already in ``dtype``) into ``out`` (the output shape, C-contiguous
        when fp32)."""
        if self.zero:
            out[...] = 0
            return out
        v, lab = self._operand(0, arrays[0], dtype)
        for j, step in enumerate(self.steps):
            b, lb = self._operand(j + 1, arrays[j + 1], dtype)
            out3 = None
            if j == len(self.steps) - 1 and self.direct and out.dtype == dtype and out.flags.c_contiguous:
                out3 = out.reshape(step.G, step.M, step.N)
            v, lab = self._contract(step, v, lab, b, lb, dtype, fp32, out3)
        if self.final_sum:
            v = np.add.reduce(v, axis=tuple(lab.index(x) for x in self.final_sum), dtype=dtype)
            lab = [x for x in lab if x not in self.final_sum]
        present = [x for x in self.out if x in lab]
        res = np.transpose(v, [lab.index(x) for x in present]) if present else v
        res = res.reshape(self.out_shape)
        if not np.shares_memory(res, out):
            out[...] = res
        return out


def einsum_fp32(plan: EinsumPlan, arrays: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """The einsum of float32 ``arrays`` on the GEMM kernels (out: float32, C-contiguous)."""
    if out is None:
        out = np.empty(plan.out_shape, np.float32)
    return plan.run([np.asarray(a, np.float32) for a in arrays], out, np.float32, True)


# ----------------------------------------------------------------------------------------------------------
# the op
# ----------------------------------------------------------------------------------------------------------
@register
class Einsum(Op):
    op_type = "Einsum"
    kernels = {"cpu": ("float32",)}
    num_inputs = (1, 1 << 30)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        eq = self.attr("equation")
        if eq is None:
            raise self.error("has no 'equation' attribute")
        self.equation = eq.decode() if isinstance(eq, bytes) else str(eq)
        self.plan: EinsumPlan | None = None

    def _plan(self, shapes) -> EinsumPlan:
        shapes = [tuple(int(d) for d in s) for s in shapes]
        if self.plan is not None and self.plan.shapes == shapes:
            return self.plan
        try:
            labels, out, _ = parse_equation(self.equation, [len(s) for s in shapes])
            self.plan = EinsumPlan(labels, out, shapes)
        except EinsumError as e:
            raise self.error(f"equation '{self.equation}': {e}") from None
        return self.plan

    def infer(self, ins, consts):
        if any(t is None for t in ins):
            raise self.error("every input is required")
        for t in ins:
            require_dtype(self, t, _DTYPES)
        if len({np.dtype(t.dtype) for t in ins}) != 1:
            raise self.error(f"inputs must share one dtype, got {[np.dtype(t.dtype).name for t in ins]}")
        plan = self._plan([t.shape for t in ins])
        return [TensorType(plan.out_shape, ins[0].dtype)]

    def ref(self, *arrays):
        plan = self._plan([a.shape for a in arrays])
        dt = arrays[0].dtype
        if dt.kind == "f":
            compute = np.float64 if dt.itemsize >= 4 else np.float32
            xs = [a.astype(compute) for a in arrays]
            res = np.einsum(canonical_equation(plan.labels, plan.out), *xs) if not plan.zero else \
                np.zeros(plan.out_shape, compute)
            return [np.asarray(res).reshape(plan.out_shape).astype(dt)]
        if plan.zero:
            return [np.zeros(plan.out_shape, dt)]
        res = np.einsum(canonical_equation(plan.labels, plan.out), *arrays)
        return [np.asarray(res, dt).reshape(plan.out_shape)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        plan = self._plan([t.shape for t in ins])

        def run(inputs, outputs, scratch):
            plan.run(inputs, outputs[0], np.float32, True)

        return Kernel(run)

    # --- training -----------------------------------------------------------------------------------------
    def backward(self, grads, ins, outs, needs):
        """dX_i = einsum(dY, X_j (j != i) -> the unique letters of X_i) on the fp32 GEMM path, broadcast over
        the letters only X_i has, written onto the diagonal for repeated letters and summed over the dims X_i
        broadcast (size 1 against a larger size)."""
        plan = self._plan([t.shape for t in self.in_types])
        g = grads[0] if grads[0] is not None else np.zeros(plan.out_shape, np.float32)
        g = np.ascontiguousarray(g, np.float32)
        res: list[np.ndarray | None] = [None] * len(ins)
        for i, x_t in enumerate(self.in_types):
            if not needs[i]:
                continue
            lab = plan.labels[i]
            uniq = list(dict.fromkeys(lab))
            avail = set(plan.out) | {x for j, t in enumerate(plan.labels) if j != i for x in t}
            target = [x for x in uniq if x in avail]
            terms = [plan.out] + [t for j, t in enumerate(plan.labels) if j != i]
            arrays = [g] + [np.asarray(ins[j], np.float32) for j in range(len(ins)) if j != i]
            shapes = [a.shape for a in arrays]
            sub = EinsumPlan(terms, target, shapes)
            part = einsum_fp32(sub, arrays)  # over `target`, in the sizes the other operands give them
            full_shape = [plan.sizes[x] for x in uniq]
            expand = part.reshape([sub.sizes[x] if x in target else 1 for x in uniq])
            dense = np.broadcast_to(expand, full_shape)
            # sum over the dims X_i broadcast (its size 1 against a larger size)
            own = {lb: d for lb, d in zip(lab, x_t.shape)}
            bcast = tuple(k for k, x in enumerate(uniq) if own[x] == 1 and plan.sizes[x] != 1)
            if bcast:
                dense = dense.sum(axis=bcast, keepdims=True, dtype=np.float64).astype(np.float32)
            gx = np.zeros(x_t.shape, np.float32)
            diag, _ = _diagonal(gx, lab)
            if diag is gx:
                gx[...] = dense
            else:
                w = np.lib.stride_tricks.as_strided(gx, shape=diag.shape, strides=diag.strides, writeable=True)
                w[...] = dense
            res[i] = gx
        return res
