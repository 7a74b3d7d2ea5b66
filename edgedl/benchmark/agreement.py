"""Do two engines give the same answer? Output-by-output differences between a run and its reference run.

For every output both runs produced: the largest absolute difference, the largest difference relative to the
reference's largest magnitude (``max|a - b| / max|ref|``: an elementwise ratio explodes wherever the
reference is near zero), and, for classifier-shaped outputs (float, rank >= 2, more than one class on the
last axis), the fraction of rows whose arg-max agrees. A fast wrong answer shows up here.
"""
from __future__ import annotations

import numpy as np


def _is_classifier(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" and a.ndim >= 2 and a.shape[-1] > 1


def compare_output(ref: np.ndarray, other: np.ndarray) -> dict:
    """Differences of one output: ``max_abs``, ``max_rel``, ``top1`` (None unless classifier-shaped),
    ``shape``; ``mismatch`` says why nothing could be compared (shapes or kinds differ)."""
    ref, other = np.asarray(ref), np.asarray(other)
    out = {"shape": list(ref.shape), "max_abs": None, "max_rel": None, "top1": None}
    if ref.shape != other.shape:
        out["mismatch"] = f"shape {list(other.shape)} against the reference's {list(ref.shape)}"
        return out
    if ref.dtype.kind in "US" or other.dtype.kind in "US" or ref.dtype == object or other.dtype == object:
        out["max_abs"] = 0.0 if np.array_equal(ref, other) else None
        if out["max_abs"] is None:
            out["mismatch"] = "string values differ"
        return out
    if ref.size == 0:
        out["max_abs"] = out["max_rel"] = 0.0
        return out
    a, b = ref.astype(np.float64), other.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    if np.isnan(diff).any():
        out["mismatch"] = "NaN in one output where the other has a number"
        diff = np.where(np.isnan(diff), np.inf, diff)
    finite = np.isfinite(a)
    scale = float(np.abs(a[finite]).max()) if finite.any() else 0.0
    out["max_abs"] = float(diff.max())
    out["max_rel"] = float(out["max_abs"] / scale) if scale > 0 else (0.0 if out["max_abs"] == 0 else None)
    if _is_classifier(ref) and _is_classifier(other):
        out["top1"] = float(np.mean(ref.reshape(-1, ref.shape[-1]).argmax(-1)
                                    == other.reshape(-1, other.shape[-1]).argmax(-1)))
    return out


def compare(reference: dict, outputs: dict, reference_label: str) -> dict:
    """Agreement of ``outputs`` with ``reference`` (name -> array each): per output, and the worst over
    outputs (``max_abs``, ``max_rel``, ``top1``: the lowest top-1 agreement of the classifier outputs).
    Outputs only one side has are listed under ``missing``."""
    per: dict = {}
    for name, ref in reference.items():
        if name in outputs:
            per[name] = compare_output(ref, outputs[name])
    if not per and len(reference) == len(outputs):
        # engines may name outputs differently (a converted model); pair them in order
        for (name, ref), other in zip(reference.items(), outputs.values()):
            per[name] = compare_output(ref, other)
    missing = sorted((set(reference) ^ set(outputs)) - set(per))

    def worst(key, pick):
        values = [v[key] for v in per.values() if v.get(key) is not None]
        return pick(values) if values else None

    mismatched = [f"{n}: {v['mismatch']}" for n, v in per.items() if "mismatch" in v]
    result = {"reference": reference_label, "max_abs": worst("max_abs", max), "max_rel": worst("max_rel", max),
              "top1": worst("top1", min), "outputs": per}
    if missing:
        result["missing"] = missing
    if mismatched:
        result["mismatch"] = mismatched
    return result
