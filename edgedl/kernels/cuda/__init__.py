"""CUDA kernels (numba.cuda, from the ``numba-cuda`` package) and the checks that say whether they can run.

Nothing here imports numba.cuda at module import: :func:`unavailable_reason` does, when a model asks for the
``cuda`` device. The kernel modules (``elementwise``, ``gemm``, ``conv``, ``pool``, ``softmax``) import it at
their top and are imported only while a CUDA plan is built. ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is
imported) runs every kernel in numba's CUDA simulator: Python threads, tiny shapes only; the tests use it.
"""
from __future__ import annotations

_reason: list = []

#: the derivative op codes of :mod:`edgedl.kernels.cpu.act_grad` that :mod:`.grad` computes on the device (here, so
#: that ``edgedl ops`` can tell without importing numba.cuda)
ACT_GRAD_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 18})


def unavailable_reason() -> str | None:
    """Why the ``cuda`` device cannot run here (None when it can: a GPU, or the simulator)."""
    if _reason:
        return _reason[0]
    try:
        from numba import cuda
    except ImportError as e:  # numba without its CUDA target (numba-cuda not installed)
        reason = f"numba.cuda cannot be imported ({e}): pip install \"edgedl[cuda]\""
    else:
        if simulated():
            reason = None
        else:
            try:
                ok = cuda.is_available()
            except Exception as e:  # noqa: BLE001 - a broken driver or toolkit raises all sorts
                ok, detail = False, f"{type(e).__name__}: {e}"
            else:
                detail = "no CUDA driver or GPU found"
            reason = None if ok else f"numba.cuda finds no usable GPU ({detail})"
    _reason.append(reason)
    return reason


def simulated() -> bool:
    """Whether numba.cuda runs in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    try:
        from numba import config
    except ImportError:
        return False
    return bool(getattr(config, "ENABLE_CUDASIM", False))


def device_info() -> dict:
    """Name, compute capability, whether the GPU shares the host's memory (Jetson), and simulation."""
    from numba import cuda

    if simulated():
        return {"name": "CUDA simulator", "compute_capability": None, "integrated": False, "simulated": True}
    dev = cuda.get_current_device()
    integrated = bool(getattr(dev, "INTEGRATED", False))
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return {"name": name, "compute_capability": list(dev.compute_capability), "integrated": integrated,
            "simulated": False}
