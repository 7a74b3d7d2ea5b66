"""Calibration: observe float activations over a calibration set and choose each tensor's int8 range.

:func:`observe` runs the float model once per calibration feed with every tensor of interest as an extra
output, keeping per tensor its running min / max and a histogram. Histograms use a fixed range per tensor
taken from a first pass (min / max), so the second pass bins exactly: the feeds are iterated twice.

Range methods (:func:`choose_range`), all on the observed distribution of one tensor:

* ``"minmax"``: the observed [min, max].
* ``"percentile"``: [q(1 - p), q(p)] with p = ``percentile`` / 100 (99.99 by default), each tail clipped
  separately (ReLU outputs keep 0 as their lower bound).
* ``"entropy"``: TensorRT's KL-divergence calibration on the histogram of |x| (threshold t minimizing
  KL(P || Q) with Q the distribution quantized to 128 levels, 256 for one-sided tensors such as ReLU
  outputs, whose exact zeros are left out: 0 is exact in any range), the range [max(min, -t), min(max, t)].
* ``"mse"``: the clipped range [a*min, a*max] (a from 0.2 to 1) minimizing the expected squared error of
  quantizing the histogram to 256 levels (clipping plus rounding error).

The range is then widened to contain 0 and turned into asymmetric int8 parameters (:func:`int8_params`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

METHODS = ("minmax", "percentile", "entropy", "mse")
BINS = 2048


@dataclass
class TensorStats:
    """What calibration saw of one tensor: min, max, and a histogram of BINS bins over [min, max]."""

    lo: float = np.inf
    hi: float = -np.inf
    hist: np.ndarray | None = None
    count: int = 0
    abs_hist: np.ndarray | None = None
    #: how many values were exactly 0 (ReLU outputs): zero is exact in any range, so entropy ignores them
    zeros: int = 0

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, BINS + 1)


@dataclass
class Calibration:
    """The result of :func:`observe`: per-tensor stats and the number of feeds seen."""

    stats: dict[str, TensorStats] = field(default_factory=dict)
    feeds: int = 0


def observe(graph, tensors: list[str], feeds: list[dict], *, histograms: bool, progress: bool = True) -> Calibration:
    """Run ``graph`` (float) on every feed, observing ``tensors``. Two passes when ``histograms``."""
    from ..ir import Graph, TensorSpec
    from ..model import Model

    outputs = list(graph.outputs) + [TensorSpec(t, None, None) for t in tensors
                                     if t not in {s.name for s in graph.outputs}]
    probe = Graph(list(graph.nodes), list(graph.inputs), outputs, dict(graph.initializers), graph.opset,
                  graph.name, dict(graph.metadata), dict(graph.domains))
    model = Model(probe)
    cal = Calibration({t: TensorStats() for t in tensors}, len(feeds))

    def batches(desc):
        if progress:
            from tqdm import tqdm

            return tqdm(feeds, desc=desc, unit="batch", leave=False)
        return feeds

    for feed in batches("calibration: ranges"):
        out = model.run(feed)
        for t in tensors:
            v = out[t]
            if v.size == 0:
                continue
            if not np.all(np.isfinite(v)):
                raise InputError(f"calibration: tensor '{t}' holds NaN or Inf for one of the calibration feeds")
            s = cal.stats[t]
            s.lo = min(s.lo, float(v.min()))
            s.hi = max(s.hi, float(v.max()))
            s.count += v.size
    if not histograms:
        return cal
    for s in cal.stats.values():
        if s.count:
            s.hist = np.zeros(BINS, np.int64)
            s.abs_hist = np.zeros(BINS, np.int64)
    for feed in batches("calibration: histograms"):
        out = model.run(feed)
        for t in tensors:
            s = cal.stats[t]
            v = out[t].reshape(-1)
            if not s.count or v.size == 0:
                continue
            if s.hi > s.lo:
                s.hist += np.histogram(v, BINS, (s.lo, s.hi))[0]
            else:
                s.hist[0] += v.size
            s.zeros += int(np.count_nonzero(v == 0))
            amax = max(abs(s.lo), abs(s.hi))
            if amax > 0:
                s.abs_hist += np.histogram(np.abs(v), BINS, (0.0, amax))[0]
            else:
                s.abs_hist[0] += v.size
    return cal


def choose_range(s: TensorStats, method: str, percentile: float = 99.99) -> tuple[float, float]:
    """The float range [lo, hi] of one tensor for a method (see the module docstring)."""
    if s.count == 0:
        return 0.0, 0.0
    if method == "minmax" or s.hi <= s.lo or s.hist is None:
        return s.lo, s.hi
    if method == "percentile":
        cdf = np.cumsum(s.hist) / s.hist.sum()
        edges = s.edges()
        p = percentile / 100.0
        lo_bin = int(np.searchsorted(cdf, 1.0 - p, side="left"))
        hi_bin = int(np.searchsorted(cdf, p, side="left"))
        lo = s.lo if lo_bin == 0 else float(edges[lo_bin])
        hi = s.hi if hi_bin >= BINS - 1 else float(edges[hi_bin + 1])
        return lo, hi
    if method == "entropy":
        # asymmetric int8 gives a one-sided (e.g. post-ReLU) tensor all 256 levels, a two-sided one ~128 per side
        hist = s.abs_hist.copy()
        hist[0] -= min(hist[0], s.zeros)  # exact zeros (ReLU) quantize exactly in any range: not evidence
        t = _kl_threshold(hist, max(abs(s.lo), abs(s.hi)), 256 if s.lo >= 0 or s.hi <= 0 else 128)
        return max(s.lo, -t), min(s.hi, t)
    if method == "mse":
        return _mse_range(s)
    raise ValueError(f"unknown calibration method {method!r}")


def _kl_threshold(hist: np.ndarray, amax: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the |x| threshold whose clipped, 128-level quantized distribution
    has the least KL divergence from the observed one."""
    hist = hist.astype(np.float64)
    if hist.sum() == 0 or amax == 0:
        return amax
    width = amax / len(hist)
    best_i, best_kl = len(hist), np.inf
    step = max(1, (len(hist) - levels) // 256)
    for i in range(levels, len(hist) + 1, step):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # the clipped tail goes to the last bin
        nz = p > 0
        if not nz.any():
            continue
        # Q: merge the i bins into `levels` groups, spread each group's mass over its non-empty bins
        src = hist[:i]  # Q quantizes the unclipped distribution; P carries the clipped tail (TensorRT)
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=src, minlength=levels)
        filled = np.bincount(group, weights=(src > 0).astype(np.float64), minlength=levels)
        q = np.where(src > 0, mass[group] / np.maximum(filled[group], 1), 0.0)
        pn = p / p.sum()
        qs = q.sum()
        if qs == 0:
            continue
        qn = q / qs
        valid = nz & (qn > 0)
        kl = float(np.sum(pn[valid] * np.log(pn[valid] / qn[valid]))) + (np.inf if np.any(nz & (qn == 0)) else 0.0)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * width if best_i < len(hist) else amax


def _mse_range(s: TensorStats) -> tuple[float, float]:
    edges = s.edges()
    centers = (edges[:-1] + edges[1:]) / 2
    counts = s.hist.astype(np.float64)
    best, best_err = (s.lo, s.hi), np.inf
    for a in np.linspace(0.2, 1.0, 81):
        lo, hi = min(0.0, s.lo * a), max(0.0, s.hi * a)
        scale, zp = int8_params(lo, hi)
        q = np.clip(np.rint(centers / scale) + zp, -128, 127)
        err = float(np.sum(counts * (centers - (q - zp) * scale) ** 2))
        if err < best_err - 1e-12 * max(best_err, 1e-30):
            best, best_err = (s.lo * a, s.hi * a), err
    return best


def int8_params(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero point) for a float range widened to contain 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    if not np.isfinite(scale) or scale <= 0:
        return 1.0, 0
    scale = float(np.float32(scale))
    zp = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    return scale, zp


def as_feeds(calibration: Iterable, input_names: list[str]) -> list[dict]:
    """Calibration data as a list of feeds: dicts name -> array, or arrays (single-input models)."""
    if calibration is None:
        raise InputError("calibration data is required for static quantization (or pass dynamic=True)")
    if isinstance(calibration, dict):
        raise InputError("calibration must be an iterable of feeds (dicts name -> array, or arrays), not one dict: "
                         "wrap it in a list")
    feeds = []
    for i, item in enumerate(calibration):
        if isinstance(item, dict):
            feeds.append(item)
        elif isinstance(item, np.ndarray) and len(input_names) == 1:
            feeds.append({input_names[0]: item})
        else:
            raise InputError(f"calibration item {i} is a {type(item).__name__}: give dicts name -> array"
                             + (" or arrays" if len(input_names) == 1 else f" for the inputs {input_names}"))
    if not feeds:
        raise InputError("the calibration set is empty")
    return feeds


__all__ = ["METHODS", "observe", "choose_range", "int8_params", "as_feeds", "Calibration", "TensorStats"]
