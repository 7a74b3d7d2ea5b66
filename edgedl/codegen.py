"""The machine code Numba compiles for: a target profile's LLVM CPU name and features.

Numba compiles every kernel for one CPU name and feature string per process (``numba.config.CPU_NAME`` /
``CPU_FEATURES``), fixed when its CPU target context is created at the first compilation or cache load. A
profile's codegen (a Pi 5 compiles for ``cortex-a76`` with ``+dotprod``, so its int8 GEMM uses ``sdot``)
must therefore be set before that, which :func:`apply_codegen` does when ``edgedl.load`` resolves the
target. Explicit choices come first: a ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` set by the user is kept.

The name and features are also the key of Numba's on-disk cache index, so caches prepared for a profile
(in an emulator, with ``EDGEDL_TARGET=rpi5``) are used by every process that runs with that profile.
"""
from __future__ import annotations

import os
import platform
import warnings

#: machine names of one architecture family (what platform.machine() says -> the profile's arch)
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "armv8l": "armv7l", "armv7": "armv7l", "armhf": "armv7l"}

_notified: set[tuple] = set()


def normalize_arch(arch: str | None) -> str:
    a = (arch or "").lower()
    return _ARCH_ALIASES.get(a, a)


def host_arch() -> str:
    """The architecture code runs as here: a 32-bit Python on a 64-bit Arm kernel (Raspberry Pi OS 32-bit
    boots an arm64 kernel on a Pi 4/5) runs 32-bit code."""
    arch = normalize_arch(platform.machine())
    if arch == "aarch64" and platform.architecture()[0] == "32bit":
        return "armv7l"
    return arch


def codegen_started() -> bool:
    """Whether Numba's CPU target context exists (after that the codegen cannot change in this process). It is
    created with the first ``@njit`` dispatcher, i.e. when the first module with kernels is imported."""
    from numba.core.registry import cpu_target

    return "_toplevel_target_context" in vars(cpu_target)


def codegen_in_force() -> tuple[str, str]:
    """(CPU name, feature string) Numba compiles for now (its config, else the host's)."""
    from numba.core import config

    cpu, feats = config.CPU_NAME, config.CPU_FEATURES
    if cpu is None or feats is None:
        import llvmlite.binding as ll
        from numba.core.codegen import get_host_cpu_features

        cpu = cpu if cpu is not None else ll.get_host_cpu_name()
        feats = feats if feats is not None else get_host_cpu_features()
    return cpu, feats


def apply_codegen(target) -> str:
    """Make Numba compile for ``target.codegen_cpu`` / ``target.codegen_features``.

    Returns what happened: ``"applied"``, ``"host"`` (the target leaves the codegen to Numba's host
    detection), ``"user"`` (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` set by the user win), ``"other-arch"``
    (the profile is for another architecture: its code could not run here), ``"same"`` (already in force) or
    ``"too-late"`` (kernels were already compiled or loaded for another codegen in this process: a notice
    says to start a fresh process, e.g. with ``EDGEDL_TARGET``)."""
    from numba.core import config

    cpu = getattr(target, "codegen_cpu", None)
    feats = getattr(target, "codegen_features", None)
    if cpu is None and feats is None:
        return "host"
    if normalize_arch(getattr(target, "arch", None)) != host_arch():
        return "other-arch"
    if os.environ.get("NUMBA_CPU_NAME", "").strip() or os.environ.get("NUMBA_CPU_FEATURES", "").strip():
        return "user"  # NOTE: an empty variable is unset (wrappers pass NUMBA_CPU_NAME="" through)
    want = (cpu if cpu is not None else config.CPU_NAME, feats if feats is not None else config.CPU_FEATURES)
    if (config.CPU_NAME, config.CPU_FEATURES) == want:
        return "same"
    if codegen_started():
        key = (target.name, want)
        if key not in _notified:
            _notified.add(key)
            warnings.warn(f"edgedl: kernels in this process are already compiled for {codegen_in_force()[0]}; "
                          f"target {target.name!r} ({want[0]}) applies its codegen in a new process "
                          f"(EDGEDL_TARGET={target.name})", stacklevel=3)
        return "too-late"
    config.CPU_NAME, config.CPU_FEATURES = want
    return "applied"
