"""Thread count and threading layer for Numba's parallel kernels (the count later comes from the target
profile)."""
from __future__ import annotations

import os

import numba

#: threading layers in the order edgedl asks Numba to try them (see :func:`prefer_spinning_pool`)
LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def prefer_spinning_pool() -> None:
    """Ask Numba for the OpenMP threading layer first, unless the user chose a layer.

    A model runs dozens of short parallel kernels back to back with serial ones in between. OpenMP's
    workers spin a while after each parallel region, so the next one starts in ~2 µs; TBB's go to sleep
    and a region that follows ~50 µs of serial work waits ~10 µs for them to wake (measured with
    Numba 0.62 on 2 cores), more than a small layer gains from the second thread. Numba reads the
    priority when it first launches its pool, so this must run before any parallel kernel does; it
    changes nothing if the pool is already up or if ``NUMBA_THREADING_LAYER`` /
    ``NUMBA_THREADING_LAYER_PRIORITY`` is set."""
    if "NUMBA_THREADING_LAYER" in os.environ or "NUMBA_THREADING_LAYER_PRIORITY" in os.environ:
        return
    if str(numba.config.THREADING_LAYER).lower() != "default":
        return
    numba.config.THREADING_LAYER_PRIORITY = list(LAYER_PRIORITY)


_default: int | None = None


def set_num_threads(n: int | None) -> None:
    """Set the default number of threads for parallel kernels (None: all cores Numba sees)."""
    global _default
    if n is not None and (not isinstance(n, int) or n < 1):
        from .errors import EdgeDLError

        raise EdgeDLError(f"thread count must be a positive integer, got {n!r}")
    _default = n
    configure_threads(None)


def configure_threads(n: int | None) -> None:
    """Apply a per-model thread count (or the default) before a run."""
    from .kernels.cpu.config import num_threads  # the cheap getter (no per-call pool launch check)

    want = n or _default or numba.config.NUMBA_NUM_THREADS
    want = min(want, numba.config.NUMBA_NUM_THREADS)
    if num_threads() != want:
        numba.set_num_threads(want)
