"""Backward kernels of windowed pooling (MaxPool, AveragePool), float32, any spatial rank.

They reuse the forward's window geometry (:func:`edgedl.kernels.cpu.pool.window_tables`): every (n, c)
plane is a "rows x columns" view, the last spatial axis the columns, the others flattened into rows::

    x, dx: (P, R_in, W)     P = N * C planes
    dy:    (P, R_out, OW)

and the window of output (r, ow) covers the input rows ``row_src[row_ptr[r]:row_ptr[r+1]]`` (row-major tap
order, padding rows absent) times the columns ``ow * sw + j * dw - pw`` for ``col_k0[ow] <= j < col_k1[ow]``.
Turned around, column tap j is inside the input for the outputs ``tap_lo[j] <= ow < tap_hi[j]``, so the
kernels walk one output row at a time and, per tap in row-major window order, one loop over those outputs.

* MaxPool: the argmax of every window is recomputed from the saved input and dy is scattered onto it. On ties
  the gradient goes to the FIRST maximum in row-major window order (the element the Indices output names);
  NaN never wins, and a window where nothing beats -inf routes to its first element inside the input.
* AveragePool: dy times the reciprocal element count (the forward's ``inv`` table, so count_include_pad and
  ceil_mode clipping match the forward) is added to every window element inside the input.

Overlapping windows add into the same dx element, so the loops run plane by plane: the parallel variants
hand each (n, c) plane to one prange iteration, which alone writes its slice of dx (no races, and the same
additions in the same order whatever the thread count: bitwise identical results).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL, num_threads
from .pool import G_DW, G_KW, G_PL, G_SW, WindowTables

_NINF = np.float32(-np.inf)
#: MaxPool output rows narrower than this take an output-by-output kernel (_maxpool2x2_bwd for disjoint 2 x 2
#: windows, else _maxpool_bwd_narrow; measured on 2 x 2 windows of (32, 16, 4, 4) planes: kernel 65 -> 8 us);
#: wider rows the tap-by-tap one, whose loops over the outputs vectorize
NARROW_OW = 16


@numba.njit(**NJIT)
def _maxpool_bwd_plane(x, dy, dx, row_ptr, row_src, tap_lo, tap_hi, sw, dw, pl, mbuf, ibuf):
    # x and dx are (R_in, W), dy is (R_out, OW); mbuf (OW,) float32 and ibuf (OW,) int64 workspaces.
    # dx += dy routed to the first max of every window. One output row at a time, the taps in row-major
    # window order each run as one loop over the outputs they reach (tap_lo[j] <= ow < tap_hi[j]), keeping
    # the running max (mbuf) and the flat position in the plane of the first element reaching it (ibuf)
    n_r = dy.shape[0]
    ow_n = dy.shape[1]
    n_w = x.shape[1]
    kw = tap_lo.shape[0]
    dflat = dx.reshape(dx.shape[0] * n_w)
    for r in range(n_r):
        e0 = row_ptr[r]
        e1 = row_ptr[r + 1]
        if e1 <= e0:
            continue  # the window has no element inside the input
        for ow in range(ow_n):
            mbuf[ow] = _NINF
            ibuf[ow] = -1
        for e in range(e0, e1):
            src = row_src[e]
            xr = x[src]
            rbase = src * n_w
            for j in range(kw):
                off = j * dw - pl
                for ow in range(tap_lo[j], tap_hi[j]):
                    w = ow * sw + off
                    v = xr[w]
                    m = mbuf[ow]
                    # strict: ties keep the first; NaN never wins, but the first element is taken even if
                    # nothing beats -inf (the forward's Indices rule)
                    take = (ibuf[ow] < 0) | (v > m)
                    ibuf[ow] = rbase + w if take else ibuf[ow]
                    mbuf[ow] = v if v > m else m
        yr = dy[r]
        for ow in range(ow_n):
            k = ibuf[ow]
            if k >= 0:
                dflat[k] += yr[ow]


@numba.njit(**NJIT)
def _maxpool_bwd(x, dy, dx, row_ptr, row_src, tap_lo, tap_hi, sw, dw, pl):
    # x and dx are (P, R_in, W), dy is (P, R_out, OW); serial over the planes
    mbuf = np.empty(dy.shape[2], np.float32)
    ibuf = np.empty(dy.shape[2], np.int64)
    for p in range(x.shape[0]):
        _maxpool_bwd_plane(x[p], dy[p], dx[p], row_ptr, row_src, tap_lo, tap_hi, sw, dw, pl, mbuf, ibuf)


@numba.njit(**NJIT_PARALLEL)
def _maxpool_bwd_par(x, dy, dx, row_ptr, row_src, tap_lo, tap_hi, sw, dw, pl):
    # one plane per iteration: plane p alone writes dx[p] (and its own small workspaces)
    for p in prange(x.shape[0]):
        mbuf = np.empty(dy.shape[2], np.float32)
        ibuf = np.empty(dy.shape[2], np.int64)
        _maxpool_bwd_plane(x[p], dy[p], dx[p], row_ptr, row_src, tap_lo, tap_hi, sw, dw, pl, mbuf, ibuf)


@numba.njit(inline="always", **NJIT)
def _maxpool_bwd_plane_narrow(x, dy, dx, row_ptr, row_src, col_k0, col_k1, sw, dw, pl):
    # x and dx are (R_in, W), dy is (R_out, OW): output by output, its window scanned in row-major order
    # (the same first-max rule and the same order of additions into dx as _maxpool_bwd_plane); for narrow
    # output rows, where one loop per tap and row would run a handful of iterations
    n_w = x.shape[1]
    for r in range(dy.shape[0]):
        e0 = row_ptr[r]
        e1 = row_ptr[r + 1]
        for ow in range(dy.shape[1]):
            best = _NINF
            k = -1
            j0 = col_k0[ow]
            j1 = col_k1[ow]
            for e in range(e0, e1):
                src = row_src[e]
                xr = x[src]
                for j in range(j0, j1):
                    w = ow * sw + j * dw - pl
                    v = xr[w]
                    # branch-free (random data mispredicts): ties keep the first, NaN never wins, the first
                    # element is taken even if nothing beats -inf
                    take = (k < 0) | (v > best)
                    k = src * n_w + w if take else k
                    best = v if v > best else best
            if k >= 0:
                q = k // n_w
                dx[q, k - q * n_w] += dy[r, ow]


@numba.njit(**NJIT)
def _maxpool_bwd_narrow(x, dy, dx, row_ptr, row_src, col_k0, col_k1, sw, dw, pl):
    # x and dx are (P, R_in, W), dy is (P, R_out, OW); serial over the planes
    for p in range(x.shape[0]):
        _maxpool_bwd_plane_narrow(x[p], dy[p], dx[p], row_ptr, row_src, col_k0, col_k1, sw, dw, pl)


@numba.njit(**NJIT_PARALLEL)
def _maxpool_bwd_narrow_par(x, dy, dx, row_ptr, row_src, col_k0, col_k1, sw, dw, pl):
    # one plane per iteration: plane p alone writes dx[p]
    for p in prange(x.shape[0]):
        _maxpool_bwd_plane_narrow(x[p], dy[p], dx[p], row_ptr, row_src, col_k0, col_k1, sw, dw, pl)


@numba.njit(inline="always", **NJIT)
def _maxpool2x2_bwd_plane(x, dy, dx):
    # disjoint 2 x 2 windows tiling the plane: x and dx are (2*R_out, 2*OW), dy is (R_out, OW); every dx
    # element is written once (dy at its window's first max, 0 elsewhere), so dx needs no zeroing
    zero = np.float32(0.0)
    for r in range(dy.shape[0]):
        xa = x[2 * r]
        xb = x[2 * r + 1]
        da = dx[2 * r]
        db = dx[2 * r + 1]
        g = dy[r]
        for ow in range(dy.shape[1]):
            # row-major window order, strict >: ties keep the first, NaN never wins (the first element
            # is taken when nothing beats it; a NaN there leaves the running max at -inf)
            m = xa[2 * ow]
            m = m if m > _NINF else _NINF
            k = 0
            v = xa[2 * ow + 1]
            k = 1 if v > m else k
            m = v if v > m else m
            v = xb[2 * ow]
            k = 2 if v > m else k
            m = v if v > m else m
            v = xb[2 * ow + 1]
            k = 3 if v > m else k
            gv = g[ow]
            da[2 * ow] = gv if k == 0 else zero
            da[2 * ow + 1] = gv if k == 1 else zero
            db[2 * ow] = gv if k == 2 else zero
            db[2 * ow + 1] = gv if k == 3 else zero


@numba.njit(**NJIT)
def _maxpool2x2_bwd(x, dy, dx):
    # x, dx (P, 2*R_out, 2*OW), dy (P, R_out, OW)
    for p in range(x.shape[0]):
        _maxpool2x2_bwd_plane(x[p], dy[p], dx[p])


@numba.njit(**NJIT_PARALLEL)
def _maxpool2x2_bwd_par(x, dy, dx):
    for p in prange(x.shape[0]):
        _maxpool2x2_bwd_plane(x[p], dy[p], dx[p])


@numba.njit(**NJIT)
def _avgpool_bwd_plane(dy, dx, row_ptr, row_src, tap_lo, tap_hi, inv, sw, dw, pl, gbuf):
    # dy is (R_out, OW), dx is (R_in, W), inv is (R_out * OW,), gbuf is (OW,) float32 workspace:
    # dx += dy * inv over every window element. Tap j of the window row lands inside the input for the
    # outputs tap_lo[j] <= ow < tap_hi[j] (a contiguous range), so each tap is one loop over ow
    n_r = dy.shape[0]
    ow_n = dy.shape[1]
    kw = tap_lo.shape[0]
    for r in range(n_r):
        e0 = row_ptr[r]
        e1 = row_ptr[r + 1]
        if e1 <= e0:
            continue  # no element inside the input (its count may be 0: inv NaN)
        yr = dy[r]
        ir = inv[r * ow_n:(r + 1) * ow_n]
        for ow in range(ow_n):
            gbuf[ow] = yr[ow] * ir[ow]
        for e in range(e0, e1):
            dr = dx[row_src[e]]
            for j in range(kw):
                off = j * dw - pl
                for ow in range(tap_lo[j], tap_hi[j]):
                    dr[ow * sw + off] += gbuf[ow]


@numba.njit(**NJIT)
def _avgpool_bwd(dy, dx, row_ptr, row_src, tap_lo, tap_hi, inv, sw, dw, pl):
    # dy is (P, R_out, OW), dx is (P, R_in, W); serial over the planes
    gbuf = np.empty(dy.shape[2], np.float32)
    for p in range(dy.shape[0]):
        _avgpool_bwd_plane(dy[p], dx[p], row_ptr, row_src, tap_lo, tap_hi, inv, sw, dw, pl, gbuf)


@numba.njit(**NJIT_PARALLEL)
def _avgpool_bwd_par(dy, dx, row_ptr, row_src, tap_lo, tap_hi, inv, sw, dw, pl):
    # one plane per iteration: plane p alone writes dx[p] (and its own small gbuf)
    for p in prange(dy.shape[0]):
        gbuf = np.empty(dy.shape[2], np.float32)
        _avgpool_bwd_plane(dy[p], dx[p], row_ptr, row_src, tap_lo, tap_hi, inv, sw, dw, pl, gbuf)


class PoolBackward:
    """The backward of one windowed pooling geometry: ``max_grad(x, dy)`` / ``avg_grad(dy)`` return dx.

    The tables are checked once here (Numba does no bounds checks): every source row lies in [0, R_in) and
    every column tap in [0, W). Each call checks the arrays' sizes and hands C-contiguous float32 views to
    the kernels; the work (window elements visited) decides between the serial and the parallel variant."""

    def __init__(self, tab: WindowTables):
        planes, r_in, w_in = tab.x3
        p2, r_out, ow = tab.y3
        sw, dw, pl, kw = (int(tab.geo[i]) for i in (G_SW, G_DW, G_PL, G_KW))
        ptr, src, k0, k1 = tab.row_ptr, tab.row_src, tab.col_k0, tab.col_k1
        ok = (p2 == planes and ptr.shape == (r_out + 1,) and k0.shape == (ow,) and k1.shape == (ow,)
              and tab.inv.shape == (r_out * ow,) and int(ptr[0]) == 0 and int(ptr[-1]) == src.shape[0]
              and bool(np.all(np.diff(ptr) >= 0)) and bool(np.all((src >= 0) & (src < r_in)))
              and bool(np.all((k0 >= 0) & (k1 >= k0) & (k1 <= kw))))
        if ok:
            cols = np.arange(ow, dtype=np.int64) * sw - pl
            has = k1 > k0
            ok = bool(np.all(cols[has] + k0[has] * dw >= 0)) and bool(np.all(cols[has] + (k1[has] - 1) * dw < w_in))
        if not ok:
            raise ValueError(f"inconsistent pooling tables for input {tab.x3} and output {tab.y3}")
        # per column tap j: the outputs whose tap j is inside the input, [tap_lo[j], tap_hi[j]) (contiguous:
        # its column ow * sw + j * dw - pw grows with ow), inside [0, W) by the checks above
        taps = np.arange(kw, dtype=np.int64)
        inside = (k0[None, :] <= taps[:, None]) & (taps[:, None] < k1[None, :])  # (kw, OW)
        self.tap_lo = np.zeros(kw, np.int64)
        self.tap_hi = np.zeros(kw, np.int64)
        for j in range(kw):
            idx = np.nonzero(inside[j])[0]
            if len(idx):
                if idx[-1] - idx[0] + 1 != len(idx):
                    raise ValueError(f"pooling tables: column tap {j} is valid for non-contiguous outputs")
                self.tap_lo[j], self.tap_hi[j] = idx[0], idx[-1] + 1
        self.tab = tab
        self.scalars = (sw, dw, pl)
        self.x_size = planes * r_in * w_in
        self.y_size = planes * r_out * ow
        # disjoint 2 x 2 windows tiling the input exactly (MaxPool 2, stride 2, no padding, even sizes):
        # output (r, ow) reads input rows 2r, 2r + 1 and columns 2ow, 2ow + 1
        self.tiles2x2 = bool(r_in == 2 * r_out and w_in == 2 * ow and kw == 2 and sw == 2 and dw == 1 and pl == 0
                             and np.array_equal(ptr, 2 * np.arange(r_out + 1))
                             and np.array_equal(src, np.arange(r_in)) and bool(np.all(k0 == 0))
                             and bool(np.all(k1 == 2)))
        self.work = planes * r_out * ow * int(tab.kernel_volume)

    def _parallel(self, threads: int | None) -> bool:
        nt = num_threads() if threads is None else threads
        return self.work >= _config.PARALLEL_MIN_WORK and self.tab.x3[0] > 1 and nt > 1

    def _dy(self, dy: np.ndarray) -> np.ndarray:
        dy = np.ascontiguousarray(dy, np.float32)
        if dy.size != self.y_size:
            raise ValueError(f"output gradient of {dy.size} elements, expected {self.tab.y3}")
        return dy.reshape(self.tab.y3)

    def max_grad(self, x: np.ndarray, dy: np.ndarray, threads: int | None = None) -> np.ndarray:
        """dx (float32, shape ``(P, R_in, W)``) of MaxPool from its input ``x`` and output gradient ``dy``."""
        t = self.tab
        x = np.ascontiguousarray(x, np.float32)
        if x.size != self.x_size:
            raise ValueError(f"input of {x.size} elements, expected {t.x3}")
        x3, dy3 = x.reshape(t.x3), self._dy(dy)
        par = self._parallel(threads)
        if self.tiles2x2 and t.y3[2] < NARROW_OW:
            dx = np.empty(t.x3, np.float32)
            (_maxpool2x2_bwd_par if par else _maxpool2x2_bwd)(x3, dy3, dx)
            return dx
        dx = np.zeros(t.x3, np.float32)
        if t.y3[2] < NARROW_OW:
            fn = _maxpool_bwd_narrow_par if par else _maxpool_bwd_narrow
            fn(x3, dy3, dx, t.row_ptr, t.row_src, t.col_k0, t.col_k1, *self.scalars)
            return dx
        fn = _maxpool_bwd_par if par else _maxpool_bwd
        fn(x3, dy3, dx, t.row_ptr, t.row_src, self.tap_lo, self.tap_hi, *self.scalars)
        return dx

    def avg_grad(self, dy: np.ndarray, threads: int | None = None) -> np.ndarray:
        """dx (float32, shape ``(P, R_in, W)``) of AveragePool from its output gradient ``dy``."""
        t = self.tab
        dy3 = self._dy(dy)
        dx = np.zeros(t.x3, np.float32)
        fn = _avgpool_bwd_par if self._parallel(threads) else _avgpool_bwd
        fn(dy3, dx, t.row_ptr, t.row_src, self.tap_lo, self.tap_hi, t.inv, *self.scalars)
        return dx


__all__ = ["PoolBackward"]
