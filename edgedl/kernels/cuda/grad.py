"""Backward kernels on CUDA (float32): what the training tape's device backward (``Op.backward_cuda``) launches.

* :func:`act_grad`: ``dx = f'(v) * g`` of the element-wise activations, by the op codes of
  :mod:`edgedl.kernels.cpu.act_grad` (the same conventions at kinks); :func:`act_grad_supported` says which.
* :class:`Unbroadcast`: the gradient of a broadcast operand, ``sum`` of ``g`` (times another operand read
  through its own strides: Mul's backward) over the axes the operand was broadcast along; one thread per
  result element for short sums, one block per element (a shared-memory tree) for long ones.
* :class:`ConvWeightGrad`: ``dw[m, c, ky, kx] = sum over (n, oy, ox) of dy * x`` at the tap (one block per
  weight element); the input gradient is the transposed convolution of ``dy`` (:class:`~.conv.ConvTranspose2d`
  with the forward's geometry), the bias gradient an :class:`Unbroadcast`.
* :class:`PoolGrad`: MaxPool (``dy`` to the first maximum of each window, recomputed from ``x``), AveragePool
  and GlobalAveragePool; one thread per input element gathering from the windows that cover it, so windows
  that overlap need no atomics.
* :class:`BatchNormTrain`: batch statistics (one block per channel), the normalization, the running statistics'
  update, and the backward of both training and frozen (running statistics) BatchNormalization.
* :class:`SoftmaxGrad`: ``dx = y * (g - sum(g * y))`` (LogSoftmax: ``g - exp(y) * sum(g)``) per row.
* :func:`add` (a gradient reaching a tensor along two paths), :func:`zeros` (a missing output gradient).

Block reductions add in float32 in a fixed order (each thread a strided partial sum, then a tree), so a run
gives the same bits every time; against the CPU's float64 sums they agree to ~1e-6 relative.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from . import ACT_GRAD_CODES
from .common import blocks, flat, plane_geometry, unravel_nchw, upload

#: the shared-memory size of the block reductions (threads per block at most this)
REDUCE_MAX = 128
#: sums at most this long run one thread per result element; longer ones one block per element
SHORT_SUM = 32



def reduce_threads() -> int:
    """Threads per block of the block reductions: REDUCE_MAX on a GPU; 8 in the simulator (every thread there is
    a Python thread meeting at each barrier)."""
    from . import simulated

    return 8 if simulated() else REDUCE_MAX


@cuda.jit(device=True)
def block_sum(sh, v):
    """The sum of ``v`` over the block's threads (x dimension, a power of two), in a fixed order."""
    t = cuda.threadIdx.x
    cuda.syncthreads()  # an earlier block_sum's result has been read by every thread
    sh[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2
    return sh[0]


# --- element-wise activations ------------------------------------------------------------------------------
@cuda.jit(device=True)
def _dact(code, v, g, alpha, beta):
    zero = float32(0)
    one = float32(1)
    if code == 0:  # Relu, from y (NaN passes g on)
        return zero if v <= zero else g
    if code == 1:  # LeakyRelu, from x
        return g if v > zero else alpha * g
    if code == 2:  # Elu, from x
        return g if v > zero else alpha * math.exp(v) * g
    if code == 3:  # Clip, from x
        return g if (v >= alpha and v <= beta) else zero
    if code == 4:  # Sigmoid, from y
        return g * v * (one - v)
    if code == 5:  # Tanh, from y
        return g * (one - v * v)
    if code == 6:  # HardSigmoid, from x
        t = alpha * v + beta
        return alpha * g if (t > zero and t < one) else zero
    if code == 7:  # HardSwish, from x
        if v < float32(-3.0):
            return zero
        return g * (v * float32(1.0 / 3.0) + float32(0.5)) if v <= float32(3.0) else g
    if code == 8:  # Elu, from y
        return g if v > zero else (v + alpha) * g
    if code == 9:  # Clip, from y
        return g if (v > alpha and v < beta) else zero
    if code == 10:  # Gelu (erf form), from x
        cdf = float32(0.5) * (one + math.erf(v * float32(0.7071067811865476)))
        return g * (cdf + v * math.exp(float32(-0.5) * v * v) * float32(0.3989422804014327))
    if code == 12:  # Swish / QuickGelu, from x
        z = alpha * v
        if z >= zero:
            s = one / (one + math.exp(-z))
        else:
            e = math.exp(z)
            s = e / (one + e)
        return g * (s + z * (s * (one - s)))
    if code == 13:  # Softplus, from y
        return g * -math.expm1(-v)
    d = one + abs(v)  # 18: Softsign, from x
    return g / (d * d)


@cuda.jit(cache=True)
def _act_grad(v, g, dx, n, code, alpha, beta):
    # v, g, dx: (n,)
    i = cuda.grid(1)
    if i < n:
        dx[i] = _dact(code, float32(v[i]), float32(g[i]), alpha, beta)


def act_grad_supported(code: int) -> bool:
    return int(code) in ACT_GRAD_CODES


def act_grad(code: int, v, g, dx, alpha=0.0, beta=0.0, stream=0) -> None:
    """dx = f'(v) * g for derivative ``code`` (all arrays of one size, C-contiguous)."""
    n = int(dx.size)
    if n:
        _act_grad[blocks(n), 128, stream](flat(v), flat(g), flat(dx), n, int(code), np.float32(alpha),
                                          np.float32(beta))


# --- sums over broadcast axes -----------------------------------------------------------------------------
@cuda.jit(device=True)
def _unbroadcast_term(j, k, g, other, small, rshape, bstride, ostride, rank, has_other):
    # result element j (over `small`), reduction index k (over `rshape`): g (times other) at that big position
    rem_j = j
    rem_k = k
    off = 0
    ooff = 0
    for d in range(rank - 1, -1, -1):
        a = rem_j % small[d]
        rem_j //= small[d]
        b = rem_k % rshape[d]
        rem_k //= rshape[d]
        off += (a + b) * bstride[d]
        ooff += (a + b) * ostride[d]
    v = float32(g[off])
    if has_other:
        v *= float32(other[ooff])
    return v


@cuda.jit(cache=True)
def _unbroadcast_short(g, other, out, n_out, count, small, rshape, bstride, ostride, rank, has_other, scale):
    j = cuda.grid(1)
    if j >= n_out:
        return
    acc = float32(0)
    for k in range(count):
        acc += _unbroadcast_term(j, k, g, other, small, rshape, bstride, ostride, rank, has_other)
    out[j] = acc * scale


@cuda.jit(cache=True)
def _unbroadcast_block(g, other, out, count, small, rshape, bstride, ostride, rank, has_other, scale):
    sh = cuda.shared.array(REDUCE_MAX, float32)
    j = cuda.blockIdx.x
    acc = float32(0)
    for k in range(cuda.threadIdx.x, count, cuda.blockDim.x):
        acc += _unbroadcast_term(j, k, g, other, small, rshape, bstride, ostride, rank, has_other)
    total = block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        out[j] = total * scale


class Unbroadcast:
    """``out = scale * sum of g (* other) over the axes where the result's shape ``small`` is 1 and ``big`` is
    not``; ``other`` (optional) has shape ``other_shape`` broadcasting to ``big``. ``small`` is right-aligned
    to ``big`` (NumPy broadcasting)."""

    def __init__(self, big, small, other_shape=None, scale=1.0):
        big = tuple(int(d) for d in big) or (1,)
        rank = len(big)
        small = (1,) * (rank - len(small)) + tuple(int(d) for d in small)
        if any(s not in (1, b) for s, b in zip(small, big)):
            raise ValueError(f"{small} does not broadcast to {big}")
        self.n_out = int(np.prod(small, dtype=np.int64))
        rshape = [b if s == 1 else 1 for s, b in zip(small, big)]
        self.count = int(np.prod(rshape, dtype=np.int64))
        bstride, step = [0] * rank, 1
        for d in range(rank - 1, -1, -1):
            bstride[d], step = step, step * big[d]
        ostride = [0] * rank
        self.has_other = other_shape is not None
        if self.has_other:
            o = (1,) * (rank - len(other_shape)) + tuple(int(d) for d in other_shape)
            step = 1
            for d in range(rank - 1, -1, -1):
                ostride[d] = 0 if o[d] == 1 else step
                step *= o[d]
        self.rank = rank
        self.args = (upload(small), upload(rshape), upload(bstride), upload(ostride))
        self.scale = np.float32(scale)

    def __call__(self, g, out, other=None, stream=0):
        if not self.n_out:
            return
        o = flat(other) if other is not None else flat(g)
        if self.count <= SHORT_SUM:
            _unbroadcast_short[blocks(self.n_out), 128, stream](flat(g), o, flat(out), self.n_out, self.count,
                                                                *self.args, self.rank, self.has_other, self.scale)
        else:
            _unbroadcast_block[self.n_out, reduce_threads(), stream](flat(g), o, flat(out), self.count, *self.args,
                                                                     self.rank, self.has_other, self.scale)


# --- convolution ------------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _conv2d_grad_weight(x, dy, dw, n_img, c, h, wd, co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw_, groups):
    # dw: [CO, C / groups, KH, KW] flat, one block per element; x: [N, C, H, W], dy: [N, CO, OH, OW]
    shm = cuda.shared.array(REDUCE_MAX, float32)
    e = cuda.blockIdx.x
    kx = e % kw
    t = e // kw
    ky = t % kh
    t //= kh
    cpg = c // groups
    ci = t % cpg
    m = t // cpg
    ch = (m // (co // groups)) * cpg + ci
    pixels = n_img * oh * ow
    acc = float32(0)
    for p in range(cuda.threadIdx.x, pixels, cuda.blockDim.x):
        nb, _, oy, ox = unravel_nchw(p, 1, oh, ow)
        iy = oy * sh - ph + ky * dh
        ix = ox * sw - pw + kx * dw_
        if iy >= 0 and iy < h and ix >= 0 and ix < wd:
            acc += float32(dy[((nb * co + m) * oh + oy) * ow + ox]) * float32(x[((nb * c + ch) * h + iy) * wd + ix])
    total = block_sum(shm, acc)
    if cuda.threadIdx.x == 0:
        dw[e] = total


class ConvWeightGrad:
    """dw of a 1-D / 2-D convolution of fixed geometry (the forward's x, w and y shapes, strides, begin pads,
    dilations and groups)."""

    def __init__(self, x_shape, w_shape, y_shape, strides, pads, dilations, groups):
        self.n, self.c, self.co = int(x_shape[0]), int(x_shape[1]), int(w_shape[0])
        self.geom = plane_geometry(x_shape, y_shape, w_shape[2:], strides, pads, dilations)
        self.groups = int(groups)
        self.size = int(np.prod(w_shape, dtype=np.int64))

    def __call__(self, x, dy, dw, stream=0):
        ((h, w), (oh, ow), (kh, kw), (sh, sw), (ph, pw), (dh, dwl)) = self.geom
        if self.size:
            _conv2d_grad_weight[self.size, reduce_threads(), stream](
                flat(x), flat(dy), flat(dw), self.n, self.c, h, w, self.co, oh, ow, kh, kw, sh, sw, ph, pw, dh, dwl,
                self.groups)


# --- pooling ----------------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _pool2d_grad(x, dy, dx, total, h, wd, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_pad):
    # dx, x: [N*C, H, W]; dy: [N*C, OH, OW]; one thread per input element, over the windows covering it
    i = cuda.grid(1)
    if i >= total:
        return
    nc, _, iy, ix = unravel_nchw(i, 1, h, wd)
    acc = float32(0)
    for ky in range(kh):
        ty = iy + ph - ky * dh
        if ty < 0 or ty % sh != 0 or ty // sh >= oh:
            continue
        oy = ty // sh
        for kx in range(kw):
            tx = ix + pw - kx * dw
            if tx < 0 or tx % sw != 0 or tx // sw >= ow:
                continue
            ox = tx // sw
            g = float32(dy[(nc * oh + oy) * ow + ox])
            if is_max:  # does (iy, ix) hold the window's first maximum?
                best = -math.inf
                arg = -1
                for qy in range(kh):
                    yy = oy * sh - ph + qy * dh
                    for qx in range(kw):
                        xx = ox * sw - pw + qx * dw
                        if yy >= 0 and yy < h and xx >= 0 and xx < wd:
                            v = float32(x[(nc * h + yy) * wd + xx])
                            if arg < 0 or v > best:
                                best = v
                                arg = yy * wd + xx
                if arg == iy * wd + ix:
                    acc += g
            else:
                if count_pad:
                    cnt = kh * kw
                else:
                    cnt = 0
                    for qy in range(kh):
                        yy = oy * sh - ph + qy * dh
                        for qx in range(kw):
                            xx = ox * sw - pw + qx * dw
                            if yy >= 0 and yy < h and xx >= 0 and xx < wd:
                                cnt += 1
                acc += g / float32(max(cnt, 1))
    dx[i] = acc


@cuda.jit(cache=True)
def _global_average_grad(dy, dx, total, size):
    # dy: [rows], dx: [rows, size]
    i = cuda.grid(1)
    if i < total:
        dx[i] = float32(dy[i // size]) / float32(size)


class PoolGrad:
    """dx of a 2-D (1-D as height 1) max or average pooling of fixed geometry; ``global_average``: of a
    GlobalAveragePool over an input of shape ``x_shape``."""

    def __init__(self, x_shape, y_shape=None, kernel=None, strides=None, pads=None, dilations=None,
                 is_max=False, count_include_pad=False, global_average=False):
        self.total = int(np.prod(x_shape, dtype=np.int64))
        self.global_average = bool(global_average)
        if global_average:
            self.size = max(1, int(np.prod(x_shape[2:], dtype=np.int64)))
            return
        self.geom = plane_geometry(x_shape, y_shape, kernel, strides, pads, dilations)
        self.is_max, self.count_pad = bool(is_max), bool(count_include_pad)

    def __call__(self, x, dy, dx, stream=0):
        if not self.total:
            return
        if self.global_average:
            _global_average_grad[blocks(self.total), 128, stream](flat(dy), flat(dx), self.total, self.size)
            return
        ((h, w), (oh, ow), (kh, kw), (sh, sw), (ph, pw), (dh, dw)) = self.geom
        xs = flat(x) if x is not None else flat(dy)
        _pool2d_grad[blocks(self.total), 128, stream](xs, flat(dy), flat(dx), self.total, h, w, oh, ow, kh, kw, sh,
                                                      sw, ph, pw, dh, dw, self.is_max, self.count_pad)


# --- batch normalization ------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _bn_stats(x, mean, var, n_img, c, s):
    # x: [N, C, S]; per channel (one block each): the batch mean and (biased) variance, two passes
    sh = cuda.shared.array(REDUCE_MAX, float32)
    ch = cuda.blockIdx.x
    count = n_img * s
    acc = float32(0)
    for p in range(cuda.threadIdx.x, count, cuda.blockDim.x):
        acc += float32(x[((p // s) * c + ch) * s + p % s])
    mu = block_sum(sh, acc) / float32(max(count, 1))
    acc = float32(0)
    for p in range(cuda.threadIdx.x, count, cuda.blockDim.x):
        d = float32(x[((p // s) * c + ch) * s + p % s]) - mu
        acc += d * d
    v = block_sum(sh, acc) / float32(max(count, 1))
    if cuda.threadIdx.x == 0:
        mean[ch] = mu
        var[ch] = v


@cuda.jit(cache=True)
def _bn_apply(x, y, scale, bias, mean, var, total, c, s, eps):
    # y = (x - mean) / sqrt(var + eps) * scale + bias, per channel; x, y: [N, C, S]
    i = cuda.grid(1)
    if i < total:
        ch = (i // s) % c
        inv = float32(1) / math.sqrt(float32(var[ch]) + eps)
        y[i] = (float32(x[i]) - float32(mean[ch])) * inv * float32(scale[ch]) + float32(bias[ch])


@cuda.jit(cache=True)
def _bn_running(run_mean, run_var, mean, var, new_mean, new_var, c, momentum):
    ch = cuda.grid(1)
    if ch < c:
        new_mean[ch] = float32(run_mean[ch]) * momentum + float32(mean[ch]) * (float32(1) - momentum)
        new_var[ch] = float32(run_var[ch]) * momentum + float32(var[ch]) * (float32(1) - momentum)


@cuda.jit(cache=True)
def _bn_grad_sums(x, dy, mean, var, dscale, dbias, n_img, c, s, eps):
    # per channel: dbias = sum(dy), dscale = sum(dy * xhat)
    sh = cuda.shared.array(REDUCE_MAX, float32)
    ch = cuda.blockIdx.x
    count = n_img * s
    mu = float32(mean[ch])
    inv = float32(1) / math.sqrt(float32(var[ch]) + eps)
    a = float32(0)
    b = float32(0)
    for p in range(cuda.threadIdx.x, count, cuda.blockDim.x):
        i = ((p // s) * c + ch) * s + p % s
        g = float32(dy[i])
        a += g
        b += g * (float32(x[i]) - mu) * inv
    sum_g = block_sum(sh, a)
    sum_gx = block_sum(sh, b)
    if cuda.threadIdx.x == 0:
        dbias[ch] = sum_g
        dscale[ch] = sum_gx


@cuda.jit(cache=True)
def _bn_grad_input(x, dy, scale, mean, var, sum_g, sum_gx, dx, total, c, s, count, eps, training):
    # training: dx = scale * inv / count * (count * dy - sum_g - xhat * sum_gx); frozen: dx = dy * scale * inv
    i = cuda.grid(1)
    if i >= total:
        return
    ch = (i // s) % c
    inv = float32(1) / math.sqrt(float32(var[ch]) + eps)
    sc = float32(scale[ch])
    if training:
        xhat = (float32(x[i]) - float32(mean[ch])) * inv
        dx[i] = sc * inv / float32(count) * (float32(count) * float32(dy[i]) - float32(sum_g[ch])
                                             - xhat * float32(sum_gx[ch]))
    else:
        dx[i] = float32(dy[i]) * sc * inv


class BatchNormTrain:
    """BatchNormalization over x [N, C, ...] (per-channel parameters) on the device: ``forward`` with batch
    statistics (training) or given statistics, ``running`` for the updated running statistics, ``backward``."""

    def __init__(self, x_shape, epsilon, momentum=0.9):
        self.n, self.c = int(x_shape[0]), int(x_shape[1])
        self.s = int(np.prod(x_shape[2:], dtype=np.int64))
        self.total = self.n * self.c * self.s
        self.eps, self.momentum = np.float32(epsilon), np.float32(momentum)

    def batch_stats(self, x, mean, var, stream=0):
        if self.c:
            _bn_stats[self.c, reduce_threads(), stream](flat(x), mean, var, self.n, self.c, self.s)

    def apply(self, x, scale, bias, mean, var, y, stream=0):
        if self.total:
            _bn_apply[blocks(self.total), 128, stream](flat(x), flat(y), flat(scale), flat(bias), flat(mean),
                                                       flat(var), self.total, self.c, self.s, self.eps)

    def running(self, run_mean, run_var, mean, var, new_mean, new_var, stream=0):
        if self.c:
            _bn_running[blocks(self.c), 128, stream](flat(run_mean), flat(run_var), mean, var, flat(new_mean),
                                                     flat(new_var), self.c, self.momentum)

    def backward(self, x, dy, scale, mean, var, dx, dscale, dbias, training, stream=0):
        """dscale, dbias (per channel; always computed, the caller's buffers) and dx (None: not wanted)."""
        if self.c:
            _bn_grad_sums[self.c, reduce_threads(), stream](flat(x), flat(dy), flat(mean), flat(var), dscale,
                                                            dbias, self.n, self.c, self.s, self.eps)
        if dx is not None and self.total:
            _bn_grad_input[blocks(self.total), 128, stream](flat(x), flat(dy), flat(scale), flat(mean), flat(var),
                                                            dbias, dscale, flat(dx), self.total, self.c, self.s,
                                                            self.n * self.s, self.eps, bool(training))


# --- softmax ----------------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _softmax_grad(y, g, dx, rows, n, inner, log):
    # rows = outer * inner row positions; each row: n elements at stride `inner`
    r = cuda.grid(1)
    if r >= rows:
        return
    base = (r // inner) * n * inner + r % inner
    acc = float32(0)
    for k in range(n):
        i = base + k * inner
        acc += float32(g[i]) if log else float32(g[i]) * float32(y[i])
    for k in range(n):
        i = base + k * inner
        if log:
            dx[i] = float32(g[i]) - math.exp(float32(y[i])) * acc
        else:
            dx[i] = float32(y[i]) * (float32(g[i]) - acc)


class SoftmaxGrad:
    """dx of Softmax / LogSoftmax (``log``) along one axis of an (outer, n, inner) view, from the output."""

    def __init__(self, outer, n, inner, log):
        self.rows, self.n, self.inner, self.log = int(outer) * int(inner), int(n), int(inner), bool(log)

    def __call__(self, y, g, dx, stream=0):
        if self.rows and self.n:
            _softmax_grad[blocks(self.rows), 128, stream](flat(y), flat(g), flat(dx), self.rows, self.n, self.inner,
                                                          self.log)


@cuda.jit(cache=True)
def _add(a, b, out, n):
    i = cuda.grid(1)
    if i < n:
        out[i] = a[i] + b[i]


def add(a, b, stream=0):
    """A new device array a + b (same shape, C-contiguous float32): gradients meeting from two paths (a new
    array, since either may be a view of another gradient)."""
    out = cuda.device_array(a.shape, np.float32, stream=stream)
    n = int(a.size)
    if n:
        _add[blocks(n), 128, stream](flat(a), flat(b), flat(out), n)
    return out


def empty(shape, stream=0, dtype=np.float32):
    return cuda.device_array(tuple(int(d) for d in shape), dtype, stream=stream)


def zeros(shape, stream=0):
    """A float32 device array of zeros (a missing output gradient)."""
    from .copy import Fill

    out = empty(shape, stream)
    Fill(out.size, 0.0)(out, stream)
    return out
