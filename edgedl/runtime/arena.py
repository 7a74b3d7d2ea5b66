"""Liveness-based arena memory planner (greedy by size, first fit among overlapping lifetimes).

Every buffer is live over an inclusive step interval [first, last]. Buffers are placed largest first; each
goes at the lowest aligned offset that does not collide with an already placed buffer whose interval
overlaps. This is the strategy of TensorFlow Lite Micro's greedy planner.
"""
from __future__ import annotations

from dataclasses import dataclass

ALIGNMENT = 64


@dataclass
class Buffer:
    key: object
    nbytes: int
    first: int
    last: int
    offset: int = -1


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def plan_arena(buffers: list[Buffer]) -> int:
    """Assign ``offset`` to every buffer; returns the arena size in bytes."""
    placed: list[Buffer] = []
    order = sorted(buffers, key=lambda b: (-_align(b.nbytes), b.first, str(b.key)))
    total = 0
    for buf in order:
        size = _align(buf.nbytes)
        if size == 0:
            buf.offset = 0
            continue
        clashes = sorted((p for p in placed if p.first <= buf.last and buf.first <= p.last),
                         key=lambda p: p.offset)
        offset = 0
        for p in clashes:
            if offset + size <= p.offset:
                break
            offset = max(offset, p.offset + _align(p.nbytes))
        buf.offset = offset
        placed.append(buf)
        total = max(total, offset + size)
    return total


def lower_bound(buffers: list[Buffer]) -> int:
    """The most bytes live at any one step: no arena can be smaller."""
    if not buffers:
        return 0
    steps = max(b.last for b in buffers) + 1
    live = [0] * (steps + 1)
    for b in buffers:
        live[b.first] += _align(b.nbytes)
        live[b.last + 1] -= _align(b.nbytes)
    best = run = 0
    for s in range(steps):
        run += live[s]
        best = max(best, run)
    return best
