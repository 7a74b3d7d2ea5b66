"""The target a model runs with: resolved once per ``edgedl.load`` from what the user passed, the
``EDGEDL_TARGET`` variable, or detection (cached for the process), with the board's tuned profile (written by
``edgedl tune``) applied and its codegen given to Numba.

Order: ``load(target=...)`` > ``EDGEDL_TARGET`` (a profile name or a ``.toml`` file: how a process is run
with a board's profile without code, e.g. under an emulator) > detection of this machine. A tuned file
(``~/.config/edgedl/tuned/<board>.toml``, or one passed as the target) is applied only on the board, CPU and
edgedl version it was tuned with; otherwise it is ignored with a notice. ``EDGEDL_TUNED=0`` ignores it.
"""
from __future__ import annotations

import os
import warnings

from .codegen import apply_codegen
from .threads import env_flag

_detected = None
#: what the last apply_codegen said, per target name (for ``edgedl targets --detect`` and ``edgedl info``)
codegen_status: dict[str, str] = {}
#: tuned choices copied onto the detected facts
TUNED_CHOICES = ("threads", "core_set", "parallel_min_work", "gemm_parallel_min_work", "int8_kernel", "conv_flat",
                 "conv_pixels")


def detected_target():
    """This machine's detected :class:`~edgedl.targets.Target` (read once per process)."""
    global _detected
    if _detected is None:
        from .targets import detect

        _detected = detect()
    return _detected


def tuned_mismatch(tuned_target, here) -> str | None:
    """Why a tuned profile does not belong to this machine and edgedl (None if it does)."""
    from . import __version__

    info = tuned_target.tuned or {}
    if info.get("board") != here.name:
        return f"tuned on board {info.get('board')!r}, this is {here.name!r}"
    if info.get("cpu") != here.cpu:
        return f"tuned on CPU {info.get('cpu')!r}, this is {here.cpu!r}"
    if info.get("edgedl_version") != __version__:
        return f"tuned with edgedl {info.get('edgedl_version')}, this is {__version__}"
    return None


def apply_tuned(tuned_target, here, source: str):
    """``here`` with the tuned choices of ``tuned_target``, or ``here`` unchanged (with a notice) when the
    file was tuned elsewhere."""
    why = tuned_mismatch(tuned_target, here)
    if why:
        warnings.warn(f"edgedl: ignoring tuned profile {source}: {why}", stacklevel=3)
        return here
    changes = {k: getattr(tuned_target, k) for k in TUNED_CHOICES}
    changes["threads"] = min(changes["threads"], here.cores)
    return here.replace(**changes, tuned=tuned_target.tuned, source=source)


def _with_tuned_file(here):
    if not env_flag("EDGEDL_TUNED", True):
        return here
    from .targets import load_profile_file
    from .tune import tuned_path

    path = tuned_path(here.name)
    if not path.is_file():
        return here
    return apply_tuned(load_profile_file(path), here, str(path))


def resolve(target=None, *, tuned: bool = True):
    """The :class:`~edgedl.targets.Target` for ``target`` (None: ``EDGEDL_TARGET``, else detection, with this
    board's tuned file when ``tuned``), with its codegen applied to Numba when this process has compiled
    nothing yet."""
    from .targets import Target, resolve_target

    if target is None:
        target = os.environ.get("EDGEDL_TARGET", "").strip() or None
    if target is None:
        here = detected_target()
        target = _with_tuned_file(here) if tuned else here
    elif not isinstance(target, Target):
        target = resolve_target(target)
        if target.tuned is not None:  # a tuned file passed explicitly: only on its own board
            target = apply_tuned(target, detected_target(), target.source) if tuned else detected_target()
        elif tuned and target.name == detected_target().name:
            target = _with_tuned_file(target)
    codegen_status[target.name] = apply_codegen(target)
    return target
