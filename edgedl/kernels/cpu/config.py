"""Numba compilation flags shared by every CPU kernel: change them here, nowhere else.

``FASTMATH`` turns on the LLVM fast-math flags that let loops vectorize and fuse (contraction into FMA,
reassociation of reductions, reciprocal approximations, no signed zeros) but deliberately leaves out
``nnan`` and ``ninf``: NaN and Inf must propagate through the kernels as they do in onnxruntime.
"""
from __future__ import annotations

import platform

#: LLVM fast-math flags (a set, as ``numba.njit(fastmath=...)`` accepts); no nnan / ninf
FASTMATH = {"contract", "arcp", "nsz", "reassoc"}

#: a kernel runs its parallel (prange) variant only when it has at least this many multiply-adds
#: (or element operations) to do; below it the thread fork/join costs more than it saves
PARALLEL_MIN_WORK = 1 << 17

#: numba.njit keyword arguments used by every kernel (lazy compilation, on-disk cache)
NJIT = dict(cache=True, fastmath=FASTMATH, nogil=True)
#: the same, for kernels with a prange loop
NJIT_PARALLEL = dict(NJIT, parallel=True)

MACHINE = platform.machine().lower()
IS_ARM = MACHINE.startswith(("arm", "aarch64"))
