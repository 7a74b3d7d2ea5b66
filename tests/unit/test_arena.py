"""The arena planner: live buffers never overlap, memory is reused, and the lower bound is respected."""
import numpy as np
import pytest

from edgedl.runtime.arena import ALIGNMENT, Buffer, lower_bound, plan_arena


def _overlaps(a: Buffer, b: Buffer) -> bool:
    live = a.first <= b.last and b.first <= a.last
    mem = a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes
    return live and mem and a.nbytes > 0 and b.nbytes > 0


@pytest.mark.parametrize("seed", range(20))
def test_random_lifetimes_never_collide(seed):
    rng = np.random.default_rng(seed)
    bufs = []
    for k in range(int(rng.integers(1, 40))):
        first = int(rng.integers(0, 30))
        bufs.append(Buffer(k, int(rng.integers(0, 5000)), first, first + int(rng.integers(0, 6))))
    total = plan_arena(bufs)
    for i, a in enumerate(bufs):
        assert a.offset % ALIGNMENT == 0
        assert a.offset + a.nbytes <= total
        for b in bufs[i + 1:]:
            assert not _overlaps(a, b), (a, b)
    assert total >= lower_bound(bufs)
    assert total <= sum((b.nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT for b in bufs)


def test_chain_reuses_memory():
    # a -> b -> c -> d: each buffer lives for two steps, so two slots suffice.
    bufs = [Buffer(i, 1024, i, i + 1) for i in range(4)]
    assert plan_arena(bufs) == 2048
    assert lower_bound(bufs) == 2048


def test_disjoint_lifetimes_share_one_slot():
    bufs = [Buffer(i, 4096, i, i) for i in range(5)]
    assert plan_arena(bufs) == 4096
