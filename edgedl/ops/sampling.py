"""Sampling operators: GridSample (opset 16 and 20+), AffineGrid (opset 20) and DeformConv (opset 19).

GridSample: ``Y[n, c, o...] = sample(X[n, c], grid[n, o...])`` with the grid's last axis holding normalized
coordinates ``(x, y, ...)`` (innermost axis first) in [-1, 1]; the coordinate mapping, the padding modes and
the interpolation taps are those documented in :mod:`edgedl.kernels.cpu.sampling`. Opset 16 takes 4-D inputs
and the modes bilinear / nearest / bicubic; opset 20 any rank (N, C, D1, ..., Dr) and the names linear /
nearest / cubic (either spelling is accepted at every opset). float32 2-D inputs run the Numba kernel; other
ranks and dtypes the numpy reference (vectorized over every output point, float arithmetic in the grid's
dtype; nearest sampling of any X dtype copies values).

AffineGrid: the base grid of ``size`` = (N, C, H, W) or (N, C, D, H, W), evenly spaced in [-1, 1] per axis
(align_corners=1: ``-1 + 2 i / (d - 1)``; align_corners=0: ``-1 + (2 i + 1) / d``; 0 for a size-1 axis), in
homogeneous form ``(x, y[, z], 1)``, times theta (N, 2, 3) or (N, 3, 4): ``grid[n, ..., :] = theta[n] @ (x, y,
[z,] 1)``. float64 arithmetic, output in theta's dtype; ``size`` must be a constant when the plan is built.

DeformConv (2-D): ``Y[n, m, o] = B[m] + sum_{c in group(m), k} W[m, c, k] * mask[n, g k, o] *
bilinear(X[n, c], p(o, k) + offset[n, g k, o])`` with p the regular convolution sampling point (strides,
pads, dilations), g the offset group of channel c, zeros outside the image. float32 runs the sampled im2col
kernel and the project GEMM (packed weights when W is a constant); other dtypes the numpy reference.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernels.cpu.sampling import BIG, BORDER, CUBIC, LINEAR, NEAREST, REFLECTION, ZEROS
from ..registry import Kernel, Op, ref_kernel, register
from .common import const_ints

_FLOATS = ("float16", "float32", "float64")
_MODES = {"bilinear": LINEAR, "linear": LINEAR, "nearest": NEAREST, "bicubic": CUBIC, "cubic": CUBIC}
_PADS = {"zeros": ZEROS, "border": BORDER, "reflection": REFLECTION}


def _str_attr(op: Op, name: str, default: str) -> str:
    v = op.attr(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _dtname(t) -> str:
    return np.dtype(t.dtype).name


# ----------------------------------------------------------------------------------------------------------
def _axis_taps_ref(g: np.ndarray, d: int, mode: int, pad: int, align: bool):
    """(idx int64, weight, valid bool), each (P, taps), of normalized coordinates g (P,) on an axis of size d;
    the arithmetic of :func:`edgedl.kernels.cpu.sampling._axis_taps`, vectorized, in g's float dtype."""
    ft = g.dtype.type
    one, df = ft(1), ft(d)
    with np.errstate(invalid="ignore", over="ignore"):
        if align:
            v = (g + one) / ft(2) * (df - one)
            lo, hi = ft(0), df - one
        else:
            v = ((g + one) * df - one) / ft(2)
            lo, hi = ft(-0.5), df - ft(0.5)
    v = np.where(v >= -BIG, v, ft(-BIG))
    v = np.minimum(v, ft(BIG))
    if mode == NEAREST:
        v = np.rint(v)
    out = (v < lo) | (v > hi)
    if pad == BORDER and mode != CUBIC:
        v = np.where(out, np.clip(v, ft(0), df - one), v)
    elif pad == REFLECTION:
        v = np.where(out, _reflect_ref(v, lo, hi), v)
    if mode == NEAREST:
        first = np.trunc(v).astype(np.int64)[:, None]
        w = np.ones((v.shape[0], 1), v.dtype)
    else:
        f = np.floor(v)
        t = (v - f)[:, None]
        if mode == LINEAR:
            w = np.concatenate([one - t, t], axis=1)
            first = f.astype(np.int64)[:, None]
        else:
            a = ft(-0.75)
            x1, y, z = t + one, one - t, ft(2) - t
            w = np.concatenate([((a * x1 - ft(5) * a) * x1 + ft(8) * a) * x1 - ft(4) * a,
                                ((a + ft(2)) * t - (a + ft(3))) * t * t + one,
                                ((a + ft(2)) * y - (a + ft(3))) * y * y + one,
                                ((a * z - ft(5) * a) * z + ft(8) * a) * z - ft(4) * a], axis=1)
            first = f.astype(np.int64)[:, None] - 1
    idx = first + np.arange(w.shape[1])[None, :]
    valid = (idx >= 0) & (idx < d)
    if pad == ZEROS:
        idx = np.where(valid, idx, 0)
    elif pad == BORDER:
        idx, valid = np.clip(idx, 0, d - 1), np.ones_like(valid)
    else:
        refl = np.trunc(_reflect_ref(idx.astype(v.dtype), lo, hi)).astype(np.int64)
        idx, valid = np.clip(np.where(valid, idx, refl), 0, d - 1), np.ones_like(valid)
    return idx, w, valid


def _reflect_ref(v: np.ndarray, lo, hi) -> np.ndarray:
    """v reflected at lo and hi until inside [lo, hi] (lo for an empty range)."""
    rng = hi - lo
    if rng <= 0:
        return np.full_like(v, lo)
    below = lo - v
    above = v - hi
    k_lo = np.trunc(np.maximum(below, 0) / rng)
    k_hi = np.trunc(np.maximum(above, 0) / rng)
    r_lo = below - k_lo * rng
    r_hi = above - k_hi * rng
    res = np.where(v < lo, np.where(k_lo % 2 == 0, lo + r_lo, hi - r_lo), v)
    return np.where(v > hi, np.where(k_hi % 2 == 0, hi - r_hi, lo + r_hi), res).astype(v.dtype)


def grid_sample_ref(x: np.ndarray, grid: np.ndarray, mode: int, pad: int, align: bool) -> np.ndarray:
    """GridSample of x (N, C, D1..Dr) at grid (N, O1..Or, r): per axis taps, their tensor product gathered."""
    n, c = x.shape[:2]
    dims = x.shape[2:]
    r = len(dims)
    out_sp = grid.shape[1:-1]
    npix = int(np.prod(out_sp, dtype=np.int64))
    y = np.zeros((n, c, npix), x.dtype)
    if y.size == 0:
        return y.reshape((n, c) + tuple(out_sp))
    if min(dims) == 0:
        return y.reshape((n, c) + tuple(out_sp))
    gdt = grid.dtype if grid.dtype != np.float16 else np.dtype(np.float32)
    g = grid.reshape(n * npix, r).astype(gdt, copy=False)
    strides = [int(np.prod(dims[a + 1:], dtype=np.int64)) for a in range(r)]
    flat = 0
    weight = 1
    valid = True
    for a in range(r):  # axis a of X reads grid coordinate r - 1 - a
        idx, w, ok = _axis_taps_ref(g[:, r - 1 - a], dims[a], mode, pad, align)
        shape = [n * npix] + [1] * r
        shape[1 + a] = idx.shape[1]
        flat = flat + (idx * strides[a]).reshape(shape)
        weight = weight * w.reshape(shape)
        valid = valid & ok.reshape(shape)
    taps = int(np.prod(np.shape(flat)[1:]))
    flat = np.broadcast_to(flat, (n * npix,) + np.shape(flat)[1:]).reshape(n, npix * taps)
    valid = np.broadcast_to(valid, (n * npix,) + np.shape(valid)[1:]).reshape(n, npix, taps)
    xs = x.reshape(n, c, -1)
    vals = np.take_along_axis(xs, flat[:, None, :], axis=2).reshape(n, c, npix, taps)
    if mode == NEAREST:
        y = np.where(valid[:, None, :, 0], vals[..., 0], np.zeros((), x.dtype))
    else:  # a tap outside the image (zeros padding) reads nothing, not even a NaN times 0
        wts = np.broadcast_to(weight, (n * npix,) + np.shape(weight)[1:]).reshape(n, npix, taps)
        with np.errstate(invalid="ignore"):
            prod = np.where(valid[:, None], vals.astype(np.float64) * wts[:, None].astype(np.float64), 0.0)
        y = prod.sum(axis=-1).astype(x.dtype)
    return y.reshape((n, c) + tuple(out_sp))


@register
class GridSample(Op):
    op_type = "GridSample"
    kernels = {"cpu": ("float32",)}
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 16:
            raise self.unsupported(f"GridSample needs opset 16 or later, the model has opset {opset}")
        mode = _str_attr(self, "mode", "bilinear" if opset < 20 else "linear")
        pad = _str_attr(self, "padding_mode", "zeros")
        if mode not in _MODES:
            raise self.error(f"unknown mode '{mode}' (linear, nearest, cubic; bilinear and bicubic before opset 20)")
        if pad not in _PADS:
            raise self.error(f"unknown padding_mode '{pad}' (zeros, border, reflection)")
        self.mode, self.pad = _MODES[mode], _PADS[pad]
        align = int(self.attr("align_corners", 0))
        if align not in (0, 1):
            raise self.error(f"align_corners must be 0 or 1, got {align}")
        self.align = bool(align)

    def infer(self, ins, consts):
        x, grid = ins
        if len(x.shape) < 3:
            raise self.error(f"X must be (N, C, D1, ...), got shape {tuple(x.shape)}")
        if self.opset < 20 and len(x.shape) != 4:
            raise self.error(f"X must be 4-D (N, C, H, W) before opset 20, got shape {tuple(x.shape)}")
        r = len(x.shape) - 2
        if len(grid.shape) != r + 2 or grid.shape[0] != x.shape[0] or grid.shape[-1] != r:
            raise self.error(f"grid has shape {tuple(grid.shape)}, expected ({x.shape[0]}, {', '.join(['O'] * r)}, "
                             f"{r}) for X of shape {tuple(x.shape)}")
        if _dtname(grid) not in _FLOATS:
            raise self.unsupported(f"grid dtype {_dtname(grid)} is not supported ({', '.join(_FLOATS)})")
        kind = np.dtype(x.dtype).kind
        if kind not in "fiub" or (kind != "f" and self.mode != NEAREST):
            raise self.unsupported(f"X dtype {_dtname(x)} is not supported with this mode (floats; any number "
                                   "type or bool with mode nearest)")
        return [TensorType((x.shape[0], x.shape[1]) + tuple(grid.shape[1:-1]), x.dtype)]

    def ref(self, x, grid):
        return [grid_sample_ref(x, grid, self.mode, self.pad, self.align)]

    def build(self, ins, outs, consts):
        x, grid = ins
        if np.dtype(x.dtype) != np.float32 or np.dtype(grid.dtype) != np.float32 or len(x.shape) != 4 \
                or x.shape[2] * x.shape[3] >= 1 << 31:  # the kernel indexes a plane with int32
            return ref_kernel(self)
        from ..kernels.cpu.sampling import grid_sample_2d

        mode, pad, align = self.mode, self.pad, self.align

        def run(inputs, outputs, scratch):
            grid_sample_2d(np.ascontiguousarray(inputs[0]), np.ascontiguousarray(inputs[1]), outputs[0], mode, pad,
                           align)
        return Kernel(run)


# ----------------------------------------------------------------------------------------------------------
@register
class AffineGrid(Op):
    op_type = "AffineGrid"
    num_inputs = (2, 2)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 20:
            raise self.unsupported(f"AffineGrid needs opset 20 or later, the model has opset {opset}")
        align = int(self.attr("align_corners", 0))
        if align not in (0, 1):
            raise self.error(f"align_corners must be 0 or 1, got {align}")
        self.align = bool(align)

    def _size(self, ins, consts) -> list[int]:
        theta, size = ins
        if _dtname(theta) not in _FLOATS:
            raise self.unsupported(f"theta dtype {_dtname(theta)} is not supported ({', '.join(_FLOATS)})")
        if len(size.shape) != 1 or size.shape[0] not in (4, 5):
            raise self.error(f"size must hold 4 values (N, C, H, W) or 5 (N, C, D, H, W), got shape "
                             f"{tuple(size.shape)}")
        dims = const_ints(self, consts, 1, "size")
        r = len(dims) - 2
        if tuple(theta.shape) != (theta.shape[0], r, r + 1) or len(theta.shape) != 3:
            raise self.error(f"theta must have shape (N, {r}, {r + 1}) for a {r}-D size, got {tuple(theta.shape)}")
        if any(d < 0 for d in dims):
            raise self.error(f"size {dims} has a negative dimension")
        if dims[0] != theta.shape[0]:
            raise self.error(f"size has batch {dims[0]} but theta has {theta.shape[0]} matrices")
        return dims

    def infer(self, ins, consts):
        dims = self._size(ins, consts)
        from ..ir import check_shape

        shape = check_shape((dims[0],) + tuple(dims[2:]) + (len(dims) - 2,), f"{self.node.describe()}: grid")
        return [TensorType(shape, ins[0].dtype)]

    def base_grid(self, spatial) -> np.ndarray:
        """(prod(spatial), r + 1) float64: the homogeneous points (x, y[, z], 1), innermost axis first."""
        axes = []
        for d in spatial:
            if d <= 1:
                axes.append(np.zeros(d))
            elif self.align:
                axes.append(-1.0 + 2.0 * np.arange(d) / (d - 1))
            else:
                axes.append(-1.0 + (2.0 * np.arange(d) + 1.0) / d)
        mesh = np.meshgrid(*axes, indexing="ij")
        pts = [m.reshape(-1) for m in reversed(mesh)]
        return np.stack(pts + [np.ones(int(np.prod(spatial, dtype=np.int64)))], axis=1)

    def build(self, ins, outs, consts):
        dims = self._size(ins, consts)
        spatial = tuple(dims[2:])
        base = self.base_grid(spatial)  # computed once

        def run(inputs, outputs, scratch):
            grid = np.einsum("pk,nrk->npr", base, inputs[0].astype(np.float64))
            outputs[0][...] = grid.reshape(outputs[0].shape)
        return Kernel(run, impl="numpy")

    def ref(self, theta, size):
        dims = self._size([TensorType(theta.shape, theta.dtype), TensorType(np.shape(size), np.asarray(size).dtype)],
                          [None, size])
        spatial = tuple(dims[2:])
        base = self.base_grid(spatial)
        grid = np.einsum("pk,nrk->npr", base, theta.astype(np.float64))
        return [grid.reshape((dims[0],) + spatial + (len(spatial),)).astype(theta.dtype)]


# ----------------------------------------------------------------------------------------------------------
def _ints(op: Op, name: str, default: list[int], n: int) -> list[int]:
    v = op.attr(name)
    if v is None:
        return list(default)
    v = [int(a) for a in v]
    if len(v) != n:
        raise op.error(f"attribute {name} has {len(v)} values, expected {n}")
    return v


def deform_conv_ref(x, w, off, b, mask, strides, pads, dilations, group, offset_group):
    """DeformConv 2-D in float64, vectorized (see the module docstring)."""
    n, c, h, wd = x.shape
    oc, cpg, kh, kw = w.shape
    oh, ow = off.shape[2:]
    kk = kh * kw
    og = offset_group
    off = off.astype(np.float64).reshape(n, og, kh, kw, 2, oh, ow)
    base_y = (np.arange(oh) * strides[0] - pads[0])[:, None] + np.zeros((1, ow))
    base_x = (np.arange(ow) * strides[1] - pads[1])[None, :] + np.zeros((oh, 1))
    ky = (np.arange(kh) * dilations[0])[:, None, None, None]
    kx = (np.arange(kw) * dilations[1])[None, :, None, None]
    sy = (base_y + ky + off[:, :, :, :, 0]).reshape(n, og, kk * oh * ow)
    sx = (base_x + kx + off[:, :, :, :, 1]).reshape(n, og, kk * oh * ow)
    m = np.ones((n, og, kk * oh * ow)) if mask is None else mask.astype(np.float64).reshape(n, og, kk * oh * ow)
    ok = (sy > -1) & (sy < h) & (sx > -1) & (sx < wd)
    sy, sx = np.where(ok, sy, -2.0), np.where(ok, sx, -2.0)
    y0, x0 = np.floor(sy), np.floor(sx)
    xs = x.astype(np.float64).reshape(n, og, c // og, h * wd)
    cols = 0
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = (y0 + dy).astype(np.int64), (x0 + dx).astype(np.int64)
            valid = ok & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
            wy = sy - y0 if dy else 1 - (sy - y0)
            wx = sx - x0 if dx else 1 - (sx - x0)
            idx = np.where(valid, yy * wd + xx, 0)
            vals = np.take_along_axis(xs, idx[:, :, None, :], axis=3)
            with np.errstate(invalid="ignore"):
                cols = cols + np.where(valid[:, :, None, :], vals * (wy * wx * m)[:, :, None, :], 0.0)
    cols = cols.reshape(n, group, c // group, kk, oh * ow)
    wg = w.astype(np.float64).reshape(group, oc // group, cpg, kk)
    y = np.einsum("gmck,ngckp->ngmp", wg, cols).reshape(n, oc, oh, ow)
    if b is not None:
        y = y + b.astype(np.float64)[None, :, None, None]
    return y.astype(x.dtype)


@register
class DeformConv(Op):
    op_type = "DeformConv"
    kernels = {"cpu": ("float32",)}
    num_inputs = (3, 5)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 19:
            raise self.unsupported(f"DeformConv needs opset 19 or later, the model has opset {opset}")
        self.group = int(self.attr("group", 1))
        self.offset_group = int(self.attr("offset_group", 1))
        if self.group < 1 or self.offset_group < 1:
            raise self.error(f"group ({self.group}) and offset_group ({self.offset_group}) must be positive")

    def infer(self, ins, consts):
        x, w, off = ins[:3]
        b = ins[3] if len(ins) > 3 else None
        mask = ins[4] if len(ins) > 4 else None
        if _dtname(x) not in _FLOATS:
            raise self.unsupported(f"dtype {_dtname(x)} is not supported ({', '.join(_FLOATS)})")
        for name, t in (("W", w), ("offset", off), ("B", b), ("mask", mask)):
            if t is not None and np.dtype(t.dtype) != np.dtype(x.dtype):
                raise self.error(f"{name} has dtype {_dtname(t)}, X has {_dtname(x)}")
        if len(x.shape) != 4:
            raise self.unsupported(f"only 2-D deformable convolution (X of shape (N, C, H, W)) is supported, got "
                                   f"shape {tuple(x.shape)}")
        if len(w.shape) != 4:
            raise self.error(f"W must be (oC, C / group, kH, kW), got shape {tuple(w.shape)}")
        n, c, h, wd = x.shape
        oc, cpg, kh, kw = w.shape
        ks = self.attr("kernel_shape")
        if ks is not None and [int(k) for k in ks] != [kh, kw]:
            raise self.error(f"kernel_shape {list(ks)} does not match W's spatial shape {[kh, kw]}")
        strides = _ints(self, "strides", [1, 1], 2)
        dilations = _ints(self, "dilations", [1, 1], 2)
        pads = _ints(self, "pads", [0, 0, 0, 0], 4)
        if min(strides + dilations) < 1 or min(pads) < 0 or kh < 1 or kw < 1:
            raise self.error(f"strides {strides}, dilations {dilations} and the kernel must be positive, pads {pads} "
                             "not negative")
        g, og = self.group, self.offset_group
        if c != cpg * g or oc % g:
            raise self.error(f"X has {c} channels and W {oc} x {cpg}: with group {g} C must be {cpg * g} and oC "
                             f"divisible by {g}")
        if c % og:
            raise self.error(f"{c} input channels are not divisible by offset_group {og}")
        oh = (h + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
        ow = (wd + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
        if oh < 1 or ow < 1:
            raise self.error(f"the dilated kernel {kh}x{kw} does not fit the padded input {h}x{wd}")
        kk = kh * kw
        if tuple(off.shape) != (n, og * kk * 2, oh, ow):
            raise self.error(f"offset has shape {tuple(off.shape)}, expected {(n, og * kk * 2, oh, ow)}")
        if b is not None and tuple(b.shape) != (oc,):
            raise self.error(f"B has shape {tuple(b.shape)}, expected ({oc},)")
        if mask is not None and tuple(mask.shape) != (n, og * kk, oh, ow):
            raise self.error(f"mask has shape {tuple(mask.shape)}, expected {(n, og * kk, oh, ow)}")
        self.geometry = (strides, pads, dilations, oh, ow)
        return [TensorType((n, oc, oh, ow), x.dtype)]

    def ref(self, x, w, off, b=None, mask=None):
        strides, pads, dilations, _, _ = self.geometry
        return [deform_conv_ref(x, w, off, b, mask, strides, pads, dilations, self.group, self.offset_group)]

    def build(self, ins, outs, consts):
        if np.dtype(ins[0].dtype) != np.float32:
            return ref_kernel(self)
        from ..kernels.cpu.gemm import PackedA, gemm
        from ..kernels.cpu.sampling import deform_columns, deform_sample

        n, c, h, wd = ins[0].shape
        oc, cpg, kh, kw = ins[1].shape
        strides, pads, dilations, oh, ow = self.geometry
        g, og = self.group, self.offset_group
        kk, npix, ocg = kh * kw, oh * ow, oc // g
        has_b = len(ins) > 3 and ins[3] is not None
        has_mask = len(ins) > 4 and ins[4] is not None
        wconst = consts[1]
        packed = None
        if wconst is not None:
            wmat = np.asarray(wconst, np.float32).reshape(g, ocg, cpg * kk)
            packed = [PackedA(wmat[i]) for i in range(g)]
        bconst = None if not has_b or consts[3] is None else np.ascontiguousarray(consts[3], np.float32)
        sizes = [og * kk * npix * 4 * 8, og * kk * npix * 4 * 4, c * kk * npix * 4]
        offs = np.cumsum([0] + [-(-s // 64) * 64 for s in sizes])

        def run(inputs, outputs, scratch):
            x = np.ascontiguousarray(inputs[0], np.float32).reshape(n, c, h * wd)
            off = np.ascontiguousarray(inputs[2], np.float32).reshape(n, og * kk * 2, npix)
            mask = np.ascontiguousarray(inputs[4], np.float32).reshape(n, og * kk, npix) if has_mask else None
            bias = bconst if bconst is not None or not has_b else np.ascontiguousarray(inputs[3], np.float32)
            idx = scratch[offs[0]:offs[0] + sizes[0]].view(np.int64).reshape(og * kk, npix, 4)
            wts = scratch[offs[1]:offs[1] + sizes[1]].view(np.float32).reshape(og * kk, npix, 4)
            cols = scratch[offs[2]:offs[2] + sizes[2]].view(np.float32).reshape(c * kk, npix)
            y = outputs[0].reshape(n, g, ocg, npix)
            wmat = None if packed is not None else np.ascontiguousarray(inputs[1], np.float32).reshape(g, ocg, cpg * kk)
            for i in range(n):
                deform_sample(off[i], None if mask is None else mask[i], h, wd, (kh, kw), strides, pads, dilations, ow,
                              idx, wts)
                deform_columns(x[i], idx, wts, cols, c // og, kk)
                for j in range(g):
                    colsj = cols[j * cpg * kk:(j + 1) * cpg * kk]
                    if packed is not None:
                        packed[j](colsj, y[i, j])
                    else:
                        gemm(wmat[j], colsj, y[i, j])
            if bias is not None:
                outputs[0].reshape(n, oc, npix)[...] += bias[None, :, None]
        return Kernel(run, scratch_bytes=int(offs[-1]))
