"""Targets: what edgedl knows about the machine it runs on, and the choices it makes for it.

* :func:`detect` reads the machine (``/proc``, ``/sys``, ``/etc/nv_tegra_release``) and returns a
  :class:`Target`: a recognised board's profile with the detected facts, or ``"host"``.
* :func:`profiles` lists the shipped board profiles (``targets/profiles/NAME.toml``);
  :func:`load_profile` gives one with its nominal facts (to prepare a board from another machine);
  :func:`load_profile_file` reads any profile file (tuned files included).
* :func:`resolve_target` turns what a user passes (None, a name, a profile path, a Target) into a Target.

``"host"`` is not a file: it is this machine's detected facts with no board profile (Numba's code generation
defaults). ``None`` (auto) is :func:`detect`: the board profile when the board is recognised.
"""
from __future__ import annotations

import os

from edgedl.errors import EdgeDLError

from .detect import detect, host_target, probe
from .profile import load_profile_file, profile_names, profile_path
from .target import Target

__all__ = ["Target", "detect", "profiles", "load_profile", "load_profile_file", "resolve_target", "HOST"]

#: the name of the profile-less target built from detection
HOST = "host"


def profiles() -> list[str]:
    """Names of the shipped board profiles, sorted (``"host"`` is not listed: it is always accepted too)."""
    return profile_names()


def _unknown(name) -> EdgeDLError:
    return EdgeDLError(f"unknown target {name!r}; valid targets: {', '.join([HOST, *profiles()])} "
                       "(or a profile .toml file, or None to detect the board)")


def load_profile(name: str) -> Target:
    """A shipped profile's :class:`Target` with its nominal facts (``detected=False``). ``"host"`` gives this
    machine's detected facts without a board profile."""
    if name == HOST:
        return host_target(probe("/"))
    if not isinstance(name, str) or name not in profiles():
        raise _unknown(name)
    return load_profile_file(profile_path(name))


def resolve_target(target=None) -> Target:
    """A :class:`Target` from None (detect this machine), ``"host"``, a profile name, a path to a profile
    ``.toml`` file, or a Target (returned as is). A profile name gives the nominal profile, or the detected
    target when this machine is that board. Unknown names raise :class:`~edgedl.errors.EdgeDLError` listing
    the valid ones."""
    if target is None:
        return detect()
    if isinstance(target, Target):
        return target
    if isinstance(target, os.PathLike) or (isinstance(target, str) and target.endswith(".toml")):
        return load_profile_file(target)
    if isinstance(target, str):
        if target != HOST and target in profiles():
            here = detect()
            if here.name == target:  # this board: its detected facts, not the nominal ones
                return here
        return load_profile(target)
    raise _unknown(target)
