"""Latency statistics of a benchmark: min / mean / percentiles / max / std in milliseconds, and the spread check.

Percentiles are numpy's default (linear interpolation between order statistics), so p50 <= p90 <= p99 <= max
always holds. Standard deviation is the population one (``ddof=0``), as TFLite's benchmark_model reports it.
"""
from __future__ import annotations

import numpy as np

#: the keys of a latency summary, in the order tables print them
KEYS = ("min", "mean", "p50", "p90", "p99", "max", "std")

#: a run whose p90 exceeds this multiple of its p50 gets a spread warning
HIGH_P90 = 1.2
#: ... or whose p99 exceeds this multiple of its p50 (percentiles, not the standard deviation: on a board
#: without a real-time kernel a few preempted runs among thousands inflate the std of a steady run)
HIGH_TAIL = 2.0


def latency_stats(seconds) -> dict[str, float] | None:
    """Summary of per-run latencies given in seconds, in milliseconds (None for no runs)."""
    ms = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if ms.size == 0:
        return None
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"min": float(ms.min()), "mean": float(ms.mean()), "p50": float(p50), "p90": float(p90),
            "p99": float(p99), "max": float(ms.max()), "std": float(ms.std())}


def spread_warning(stats: dict | None, what: str) -> str | None:
    """A warning when run-to-run variation is high (as trtexec warns), else None."""
    if not stats or stats["p50"] <= 0:
        return None
    p90, p99 = stats["p90"] / stats["p50"], stats["p99"] / stats["p50"]
    if p90 > HIGH_P90 or p99 > HIGH_TAIL:
        return (f"{what}: high run-to-run spread (p90 {p90:.2f}x and p99 {p99:.1f}x the p50): other work, "
                "frequency scaling or throttling may be disturbing the timings")
    return None
