"""Thread count for Numba's parallel kernels (later set from the target profile)."""
from __future__ import annotations

import numba

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
    want = n or _default or numba.config.NUMBA_NUM_THREADS
    want = min(want, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
