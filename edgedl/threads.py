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


def env_flag(name: str, default: bool) -> bool:
    """An on/off environment variable: "0", "false", "no", "off" (any case) are off, any other value on,
    unset or empty the default."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


def check_thread_count(n, what: str = "thread count") -> None:
    """EdgeDLError unless ``n`` is None or a positive integer."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        from .errors import EdgeDLError

        raise EdgeDLError(f"{what} must be a positive integer, got {n!r}")


_default: int | None = None
#: follow the load (see :mod:`edgedl.load_monitor`): run no more threads than the cores other work leaves free
_follow_load = env_flag("EDGEDL_FOLLOW_LOAD", True)
_monitor = None


def set_num_threads(n: int | None, follow_load: bool | None = None) -> None:
    """Set the default number of threads for parallel kernels (None: all cores Numba sees).

    ``follow_load`` (default on; ``EDGEDL_FOLLOW_LOAD=0`` turns it off for the process): treat the count as a
    ceiling and run no more threads than the cores other processes leave free, measured every 0.1 s. A
    fork-join kernel whose threads share cores with other busy work waits for the scheduler at every
    region; fewer threads then finish sooner."""
    global _default, _follow_load
    check_thread_count(n)
    _default = n
    if follow_load is not None:
        _follow_load = bool(follow_load)
    configure_threads(None)


def follows_load() -> bool:
    """Whether thread counts follow the load (see :func:`set_num_threads`)."""
    return _follow_load


def load_monitor():
    """The process's :class:`~edgedl.load_monitor.LoadMonitor` (created on first use)."""
    global _monitor
    if _monitor is None:
        from .load_monitor import LoadMonitor

        _monitor = LoadMonitor()
    return _monitor


def wanted_threads(n: int | None, target_threads: int | None = None) -> int:
    """The thread ceiling for a run: a model's own count, else :func:`set_num_threads`'s default, else the
    target's, else every core Numba has."""
    return min(n or _default or target_threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)


def configure_threads(n: int | None, target_threads: int | None = None, max_threads: int | None = None) -> int:
    """Apply a per-model thread count (or the defaults, see :func:`wanted_threads`) before a run, at most
    ``max_threads`` (the size of the target's core set), lowered to what the load leaves free when thread
    counts follow the load. Returns the count in force."""
    from .kernels.cpu.config import num_threads  # the cheap getter (no per-call pool launch check)

    want = wanted_threads(n, target_threads)
    if max_threads is not None:
        want = max(1, min(want, max_threads))
    if _follow_load and want > 1:
        want = load_monitor().threads(want)
    if num_threads() != want:
        numba.set_num_threads(want)
    return want
