"""The target a model runs with: resolved once per ``edgedl.load`` from what the user passed, the
``EDGEDL_TARGET`` variable, or detection (cached for the process), with its codegen applied to Numba.

Order: ``load(target=...)`` > ``EDGEDL_TARGET`` (a profile name or a ``.toml`` file: how a process is run
with a board's profile without code, e.g. under an emulator) > detection of this machine.
"""
from __future__ import annotations

import os

from .codegen import apply_codegen

_detected = None
#: what the last apply_codegen said, per target name (for ``edgedl targets --detect`` and ``edgedl info``)
codegen_status: dict[str, str] = {}


def detected_target():
    """This machine's detected :class:`~edgedl.targets.Target` (read once per process)."""
    global _detected
    if _detected is None:
        from .targets import detect

        _detected = detect()
    return _detected


def resolve(target=None):
    """The :class:`~edgedl.targets.Target` for ``target`` (None: ``EDGEDL_TARGET``, else detection), with its
    codegen applied to Numba when this process has compiled nothing yet."""
    from .targets import Target, resolve_target

    if target is None:
        env = os.environ.get("EDGEDL_TARGET", "").strip()
        target = resolve_target(env) if env else detected_target()
    elif not isinstance(target, Target):
        target = resolve_target(target)
    codegen_status[target.name] = apply_codegen(target)
    return target
