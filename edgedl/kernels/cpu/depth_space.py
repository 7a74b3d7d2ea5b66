"""DepthToSpace / SpaceToDepth kernels (pixel shuffle and its inverse).

With block size ``bs`` and C the channels of the space-side tensor, the depth-side tensor (N, C*bs*bs, H, W)
and the space-side tensor (N, C, H*bs, W*bs) correspond through

    space[n, c, h*bs + i, w*bs + j] = depth[n, ch(c, i, j), h, w]
    ch(c, i, j) = c * cblock + (i * bs + j) * cstep

DCR mode (depth, column, row): cstep = C, cblock = 1; CRD mode: cstep = 1, cblock = bs*bs. DepthToSpace
writes the space side, SpaceToDepth the depth side. A work row is one (n, c, h, i): bs depth rows of W
elements interleave into (or out of) one space row of W*bs; block size 2 has a loop LLVM vectorizes as an
interleaved group. Kernels move raw bits (flat unsigned-integer views of any dtype, see
:func:`edgedl.kernels.cpu.layout.bits_view`); large tensors run in parallel over the work rows.
"""
from __future__ import annotations

from numba import njit, prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads


@njit(**NJIT)
def _rows(depth, space, c_sp, h, w, bs, cstep, cblock, to_space, r0, r1):
    # depth: flat (N, c_sp*bs*bs, h, w); space: flat (N, c_sp, h*bs, w*bs); rows r = ((n*c_sp + c)*h + y)*bs + i
    c_dp = c_sp * bs * bs
    ws = w * bs
    for r in range(r0, r1):
        i = r % bs
        q = r // bs
        y = q % h
        q //= h
        c = q % c_sp
        n = q // c_sp
        srow = space[r * ws:(r + 1) * ws]  # space row (n, c, y*bs + i) starts at r * ws
        ch0 = c * cblock + i * bs * cstep
        if bs == 2:
            o0 = ((n * c_dp + ch0) * h + y) * w
            o1 = ((n * c_dp + ch0 + cstep) * h + y) * w
            d0 = depth[o0:o0 + w]
            d1 = depth[o1:o1 + w]
            if to_space:
                for x in range(w):
                    srow[2 * x] = d0[x]
                    srow[2 * x + 1] = d1[x]
            else:
                for x in range(w):
                    d0[x] = srow[2 * x]
                    d1[x] = srow[2 * x + 1]
            continue
        for j in range(bs):
            o = ((n * c_dp + ch0 + j * cstep) * h + y) * w
            drow = depth[o:o + w]
            if to_space:
                for x in range(w):
                    srow[x * bs + j] = drow[x]
            else:
                for x in range(w):
                    drow[x] = srow[x * bs + j]


@njit(**NJIT_PARALLEL)
def _rows_par(depth, space, c_sp, h, w, bs, cstep, cblock, to_space, nrows, nchunks):
    for k in prange(nchunks):
        _rows(depth, space, c_sp, h, w, bs, cstep, cblock, to_space, k * nrows // nchunks,
              (k + 1) * nrows // nchunks)


def depth_space(depth, space, n: int, c_sp: int, h: int, w: int, bs: int, crd: bool, to_space: bool) -> None:
    """DepthToSpace (``to_space``: ``depth`` -> ``space``) or SpaceToDepth (``space`` -> ``depth``) on flat arrays
    of the same dtype; ``c_sp``, ``h``, ``w``: channels of the space side and spatial size of the depth side."""
    nrows = n * c_sp * h * bs
    if nrows == 0 or w == 0:
        return
    cstep, cblock = (1, bs * bs) if crd else (c_sp, 1)
    if depth.shape[0] >= _config.PARALLEL_MIN_WORK and nrows > 1 and num_threads() > 1:
        _rows_par(depth, space, c_sp, h, w, bs, cstep, cblock, to_space, nrows, min(nrows, 4 * num_threads()))
    else:
        _rows(depth, space, c_sp, h, w, bs, cstep, cblock, to_space, 0, nrows)


__all__ = ["depth_space"]
