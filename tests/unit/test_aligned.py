"""Buffers start on 64-byte boundaries in every process (edgedl.kernels.aligned): the arena, the kernels'
scratch inside it and the packed weights."""
from __future__ import annotations

import numpy as np
import pytest

import edgedl
from edgedl import zoo
from edgedl.kernels.aligned import ALIGNMENT, aligned_empty, aligned_zeros
from edgedl.kernels.cpu.conv import Conv2d


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int64, np.int8])
@pytest.mark.parametrize("count", [0, 1, 3, 17, 4096, 100_003])
def test_aligned_arrays(count, dtype):
    for _ in range(8):  # different malloc results
        a = aligned_empty(count, dtype)
        z = aligned_zeros(count, dtype)
        for arr in (a, z):
            assert arr.shape == (count,) and arr.dtype == np.dtype(dtype)
            assert count == 0 or arr.ctypes.data % ALIGNMENT == 0  # (an empty array has no data to align)
            assert arr.flags.c_contiguous and arr.flags.writeable
        assert not z.any()


def test_plan_arena_scratch_and_packed_weights_are_aligned():
    model = edgedl.load(zoo.mobilenet_v2_like(resolution=32, width=0.5, classes=10))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    model.run({model.graph.inputs[0].name: x})
    plan = model.plan()
    assert plan.arena.ctypes.data % ALIGNMENT == 0
    scratches = [s.scratch for s in plan.steps if s.scratch is not None]
    assert scratches and all(s.ctypes.data % ALIGNMENT == 0 for s in scratches)
    rng = np.random.default_rng(1)
    for strategy in ("gemm", "flat", "pixels"):
        conv = Conv2d(rng.standard_normal((64, 8, 3, 3)).astype(np.float32), None, (1, 8, 8, 8), pads=(1,) * 4,
                      strategy=strategy)
        packed = conv._pixels.bp if strategy == "pixels" else conv.ap
        assert packed.ctypes.data % ALIGNMENT == 0
