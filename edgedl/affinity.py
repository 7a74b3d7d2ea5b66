"""The cores edgedl's kernels run on: a target's core set (``"big"`` / ``"little"`` / ``"all"``).

On a big.LITTLE CPU (a Rock 5's four Cortex-A76 and four A55, a Jetson TX2's Denver and A57 cores) a parallel
kernel split evenly across fast and slow cores waits at its end for the slow ones; running on the big cores
only is often faster, and ``edgedl tune`` measures which set wins for a model. Linux lets a thread choose its
cores (``sched_setaffinity`` with pid 0 means the calling thread), so :func:`running_on`:

* pins Numba's worker threads once per change of set, from inside a parallel loop in which each worker
  sets its own affinity (edgedl never touches threads it did not start: the user's threads and BLAS's keep
  theirs);
* pins the calling thread for the duration of the run (it does a share of every parallel loop) and gives it
  its own affinity back afterwards.

Elsewhere (no ``sched_setaffinity``) core sets are ignored. The set is intersected with the CPUs this process
may use; an empty result means every allowed core.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

_HAVE_AFFINITY = hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")
#: the CPUs the process could use when edgedl was imported ("all")
_ORIGINAL = frozenset(os.sched_getaffinity(0)) if _HAVE_AFFINITY else frozenset()
#: the set Numba's workers are pinned to now (None: never pinned, i.e. the original mask)
_workers_on: frozenset | None = None
_pin_kernel = None


def core_ids(target) -> frozenset | None:
    """The CPUs ``target``'s core set names, within what this process may use (None: all of them)."""
    if target is None or not _HAVE_AFFINITY:
        return None
    choice = getattr(target, "core_set", "all")
    if choice == "all":
        return None
    cores = frozenset(target.big_cores if choice == "big" else target.little_cores) & _ORIGINAL
    if not cores or cores == _ORIGINAL:
        return None
    return cores


def _mask(cores) -> object:
    import numpy as np

    words = np.zeros(max(1, (max(cores) // 64) + 1), dtype=np.uint64)
    for c in cores:
        words[c // 64] |= np.uint64(1) << np.uint64(c % 64)
    return words


def _kernel():
    """A parallel loop whose every iteration pins the thread running it (compiled once per process, not
    cached: it holds the address of libc's sched_setaffinity)."""
    global _pin_kernel
    if _pin_kernel is None:
        import numba
        from numba import prange

        libc = ctypes.CDLL(None, use_errno=True)
        setaffinity = libc.sched_setaffinity
        setaffinity.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
        setaffinity.restype = ctypes.c_int

        @numba.njit(parallel=True, nogil=True)
        def pin_each(mask, n, status):
            # mask: uint64 CPU bitmask words; status: (n,) int32, 0 where the thread was pinned
            for i in prange(n):
                status[i] = setaffinity(0, mask.size * 8, mask.ctypes.data)

        _pin_kernel = pin_each
    return _pin_kernel


def pin_workers(cores: frozenset | None) -> bool:
    """Pin every Numba worker thread to ``cores`` (None: the process's original CPUs). Returns whether each
    worker took it. The calling thread runs one share of the loop too; its affinity is restored."""
    global _workers_on
    if not _HAVE_AFFINITY:
        return False
    import numba
    import numpy as np

    want = cores or _ORIGINAL
    caller = os.sched_getaffinity(0)
    before = numba.get_num_threads()
    total = numba.config.NUMBA_NUM_THREADS
    status = np.ones(total, dtype=np.int32)
    try:
        numba.set_num_threads(total)  # every worker of the pool, not only those in use now
        # NOTE: Numba splits prange(n) into one chunk per thread, so each thread runs one iteration
        _kernel()(_mask(want), total, status)
    finally:
        numba.set_num_threads(before)
        os.sched_setaffinity(0, caller)
    ok = bool((status == 0).all())
    _workers_on = cores if ok else None
    return ok


def pinned() -> bool:
    """Whether Numba's workers are pinned to a core set now (a run on all cores must unpin them)."""
    return _workers_on is not None


@contextlib.contextmanager
def running_on(cores: frozenset | None):
    """Run the body with edgedl's kernel threads on ``cores`` (see the module docstring)."""
    if not _HAVE_AFFINITY or (cores is None and _workers_on is None):
        yield
        return
    if cores != _workers_on:
        pin_workers(cores)
    caller = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores or _ORIGINAL)
    try:
        yield
    finally:
        os.sched_setaffinity(0, caller)
