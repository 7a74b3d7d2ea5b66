"""Kernel compilation on the device itself, and statistics about Numba's on-disk cache.

Numba caches compiled kernels per CPU model (``cache=True``), so the first process on a board compiles and
every later process loads machine code from the cache. ``warmup`` runs a model once on zeros so that this
happens at install or deploy time rather than on the first real request.
"""
from __future__ import annotations

import sys

import numpy as np


def _dispatchers():
    from numba.core.registry import CPUDispatcher

    for name, mod in list(sys.modules.items()):
        if not name.startswith("edgedl.") or mod is None:
            continue
        for obj in vars(mod).values():
            if isinstance(obj, CPUDispatcher):
                yield obj


def kernel_cache_stats() -> dict[str, int]:
    """Across every Numba kernel loaded so far: signatures compiled in this process (``compiled``), loaded
    from the on-disk cache (``cache_hits``), and compiled because the cache had nothing (``cache_misses``)."""
    seen = set()
    hits = misses = compiled = 0
    for d in _dispatchers():
        if id(d) in seen:
            continue
        seen.add(id(d))
        hits += sum(d.stats.cache_hits.values())
        misses += sum(d.stats.cache_misses.values())
        compiled += len(d.signatures)
    return {"compiled": compiled, "cache_hits": hits, "cache_misses": misses}


def warmup(model, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Run ``model`` once on zeros (symbolic dims bound to 1 unless ``shapes`` says otherwise) so every kernel
    it needs is compiled and cached on this machine."""
    plan = model.plan(shapes)
    feeds = {name: np.zeros(t.shape, t.dtype) for name, t in plan.input_types.items()}
    model.run(feeds)
