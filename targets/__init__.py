"""Target profiles (Raspberry Pi 3/4/5, Jetson boards). This release knows only the host itself; the
per-board profiles that tune execution arrive with the targets work."""
from __future__ import annotations

import os
from dataclasses import dataclass

from edgedl.errors import EdgeDLError


@dataclass(frozen=True)
class Target:
    """Execution settings for one kind of device."""

    name: str
    num_threads: int | None = None
    device: str = "cpu"


KNOWN = {"host": Target("host", None, "cpu")}


def resolve_target(target) -> Target:
    """A Target from a Target or a profile name."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str) and target in KNOWN:
        return KNOWN[target]
    raise EdgeDLError(f"unknown target {target!r}; known targets: {sorted(KNOWN)} (host cores: {os.cpu_count()})")
