"""Recurrent layer kernels (LSTM, GRU, RNN), float32: the fused time loop and backprop through time.

The op (:mod:`edgedl.ops.recurrent`) computes the input projection of the whole sequence first, as one GEMM
over every time step, batch row and direction: ``xw (rows, D * G * H) = X (rows, I) @ Wstack^T + bias``,
rows in X's memory order (``t * B + b`` with layout 0, ``b * T + t`` with layout 1), G gates per direction
(RNN 1, GRU 3, LSTM 4), the biases that can be folded added there. The kernels here run the recurrence: per
direction and batch row, per time step, one fused pass

* ``a = xw[row] + h_prev @ R^T`` (R^T stored (H, G * H), rows of R^T streamed four at a time),
* the gates' activations, clip (``min(max(a, -clip), clip)`` on every activation input), the state update,
* the stores of Y / Y_h / Y_c.

Gate formulas (ONNX, ``(.)`` elementwise; ``f, g, h`` the activations, default Sigmoid, Tanh, Tanh):

* RNN:  ``H = f(Xt W^T + H_prev R^T + Wb + Rb)``
* GRU:  ``z = f(Xt Wz^T + H_prev Rz^T + Wbz + Rbz)``, ``r`` likewise,
  ``h~ = g(Xt Wh^T + (r (.) H_prev) Rh^T + Rbh + Wbh)`` (``linear_before_reset`` 0) or
  ``h~ = g(Xt Wh^T + r (.) (H_prev Rh^T + Rbh) + Wbh)`` (1), ``H = (1 - z) (.) h~ + z (.) H_prev``
* LSTM: ``i = f(Xt Wi^T + H_prev Ri^T + Pi (.) C_prev + Wbi + Rbi)``, ``f`` likewise with Pf (``1 - i``
  with ``input_forget``), ``c~ = g(Xt Wc^T + H_prev Rc^T + Wbc + Rbc)``, ``C = f (.) C_prev + i (.) c~``,
  ``o = f(Xt Wo^T + H_prev Ro^T + Po (.) C + Wbo + Rbo)``, ``H = o (.) h(C)``

Sequence lengths: batch row b runs ``L = lens[b]`` steps: forward over t = 0 .. L-1, reverse over
t = L-1 .. 0; Y rows at t >= L are zero; Y_h / Y_c hold the state after the row's last step (zero when
L = 0, as onnxruntime). The default activations take a fast path (branch-free polynomial sigmoid / tanh
that vectorize over the hidden units); others go through the scalar :func:`act`.

Parallelism: batch rows and directions are independent over the whole sequence, so the parallel kernels
split (direction, batch chunk) units with ``prange`` (no barrier per step); a single row of one direction
runs serially.

Quantized recurrence (onnxruntime's DynamicQuantizeLSTM, :mod:`edgedl.ops.contrib_recurrent`): with a ``qp``
tuple the LSTM kernels replace ``h_prev @ R^T`` by onnxruntime's arithmetic: h_prev quantized to uint8 per row
and step (:func:`~.quantize.quantize_row`), an exact int32 product with the int8 R^T on byte dot products
(:mod:`.gemv_i8`), scaled by ``h_scale * R_scale[col]``; :func:`project_quantized` is the input projection the
same way (X quantized as one tensor).

Recording (training): with ``rec = 1`` the kernels keep every step's gate pre-activations ``acc`` (D, T, B, G*H)
(before clip; LSTM without the peephole terms; GRU's third block is the full ``h~`` input with
``linear_before_reset`` 0 and ``H_prev Rh^T + Rbh`` with 1) and the states ``hb`` / ``cb`` (D, T + 1, B, H)
indexed by processing step (slot s holds the state before step s). With ``rec = 0`` (inference) ``acc`` has
one slot, which the default-activation fast path overwrites with the gates, and the states two slots used in
turn (step s reads slot s & 1 and writes the other: distinct input and output rows keep LLVM's runtime alias
checks few, so the gate loops vectorize). The backward kernels (:func:`lstm_backward`, :func:`gru_backward`,
:func:`rnn_backward`) walk the steps of each row in reverse from those records and write the gate gradients
twice: by time row ``gx`` (rows, D * G * H), for dX = gx @ Wstack, dW = gx^T @ X, dWb = column sums, and by
step ``gr`` (D, T, B, G*H), for dR = gr^T @ H_prev (GRU ``linear_before_reset`` 0: the h block against
``r (.) H_prev``, kept in ``rh``), dRb = column sums. They run serially (row by row): the same bits for any
thread count.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import config as _config
from .config import NJIT, NJIT_PARALLEL
from .elementwise import expm1_f32, sigmoid_f32, tanh_f32
from .gemv_i8 import gemm_block_u8s8, gemv_u8s8
from .quantize import quantize_row, quantize_rows
from .vec_i8dot import K_SDOT

# error_model="numpy": no ZeroDivisionError checks in the loops (they stop vectorization)
_NJIT = dict(NJIT, error_model="numpy")
_NJIT_PAR = dict(NJIT_PARALLEL, error_model="numpy")
_INLINE = dict(_NJIT, inline="always")

# --- activation codes -------------------------------------------------------------------------------------
A_SIGMOID = 0
A_TANH = 1
A_RELU = 2
A_HARD_SIGMOID = 3
A_LEAKY_RELU = 4
A_THRESHOLDED_RELU = 5
A_SCALED_TANH = 6
A_AFFINE = 7
A_ELU = 8
A_SOFTSIGN = 9
A_SOFTPLUS = 10

#: lower-case ONNX name -> (code, uses alpha, uses beta, default alpha, default beta)
ACTIVATIONS = {
    "sigmoid": (A_SIGMOID, False, False, 0.0, 0.0),
    "tanh": (A_TANH, False, False, 0.0, 0.0),
    "relu": (A_RELU, False, False, 0.0, 0.0),
    "hardsigmoid": (A_HARD_SIGMOID, True, True, 0.2, 0.5),
    "leakyrelu": (A_LEAKY_RELU, True, False, 0.01, 0.0),
    "thresholdedrelu": (A_THRESHOLDED_RELU, True, False, 1.0, 0.0),
    "scaledtanh": (A_SCALED_TANH, True, True, 1.0, 1.0),
    "affine": (A_AFFINE, True, True, 1.0, 0.0),
    "elu": (A_ELU, True, False, 1.0, 0.0),
    "softsign": (A_SOFTSIGN, False, False, 0.0, 0.0),
    "softplus": (A_SOFTPLUS, False, False, 0.0, 0.0),
}

# --- the int64 parameter vector ``ip`` and the float32 one ``fp`` ---------------------------------------------
IP_T = 0          # seq_length
IP_B = 1          # batch
IP_H = 2          # hidden size
IP_D = 3          # directions
IP_LAYOUT = 4     # 1: batch-major X / Y / states
IP_REC = 5        # 1: record every step (training), 0: update the states in place
IP_HAS_LENS = 6
IP_HAS_H0 = 7
IP_HAS_C0 = 8
IP_HAS_Y = 9
IP_HAS_YH = 10
IP_HAS_YC = 11
IP_FLAG = 12      # LSTM input_forget / GRU linear_before_reset
IP_REV = 13       # 2 entries: direction d runs reversed
IP_FAST = 15      # 2 entries: direction d has the default activations
IP_ACT = 17       # 6 entries: activation codes, 3 per direction
IP_SIZE = 23
FP_CLIP = 0
FP_ALPHA = 1      # 6 entries
FP_BETA = 7       # 6 entries
FP_SIZE = 13


def make_params(t: int, b: int, h: int, d: int, layout: int, rec: int, has: dict, flag: int, reverse: list,
                fast: list, acts: list, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """(ip, fp) for the kernels. ``has``: which of lens, h0, c0, y, yh, yc are present; ``acts``: per
    direction a list of (code, alpha, beta); ``clip``: inf for none."""
    ip = np.zeros(IP_SIZE, np.int64)
    fp = np.zeros(FP_SIZE, np.float32)
    ip[IP_T], ip[IP_B], ip[IP_H], ip[IP_D], ip[IP_LAYOUT], ip[IP_REC] = t, b, h, d, layout, rec
    for key, idx in (("lens", IP_HAS_LENS), ("h0", IP_HAS_H0), ("c0", IP_HAS_C0), ("y", IP_HAS_Y),
                     ("yh", IP_HAS_YH), ("yc", IP_HAS_YC)):
        ip[idx] = int(bool(has.get(key)))
    ip[IP_FLAG] = flag
    fp[FP_CLIP] = clip
    for k in range(d):
        ip[IP_REV + k] = int(reverse[k])
        ip[IP_FAST + k] = int(fast[k])
        for j, (code, alpha, beta) in enumerate(acts[k]):
            ip[IP_ACT + 3 * k + j] = code
            fp[FP_ALPHA + 3 * k + j] = alpha
            fp[FP_BETA + 3 * k + j] = beta
    return ip, fp


# --- scalar activations and derivatives -----------------------------------------------------------------------
@numba.njit(**_INLINE)
def act(code, x, alpha, beta):
    """Activation ``code`` of x (float32). NaN propagates (compare-and-select forms)."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    if code == A_SIGMOID:
        return sigmoid_f32(x)
    if code == A_TANH:
        return tanh_f32(x)
    if code == A_RELU:
        return zero if x < zero else x
    if code == A_HARD_SIGMOID:
        v = alpha * x + beta
        v = zero if v < zero else v
        return one if v > one else v
    if code == A_LEAKY_RELU:
        return alpha * x if x < zero else x
    if code == A_THRESHOLDED_RELU:
        return zero if x <= alpha else x
    if code == A_SCALED_TANH:
        return alpha * tanh_f32(beta * x)
    if code == A_AFFINE:
        return alpha * x + beta
    if code == A_ELU:
        return alpha * expm1_f32(x) if x < zero else x
    if code == A_SOFTSIGN:
        return x / (one + np.abs(x))
    # A_SOFTPLUS: log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))
    return (x if x > zero else zero) + np.float32(math.log1p(math.exp(-abs(x))))


@numba.njit(**_INLINE)
def dact(code, x, y, alpha, beta):
    """Derivative of activation ``code`` at x (y = act(x)). At a kink: the right-hand value for Relu-like
    functions at 0 is taken from the left (0 for Relu, alpha for LeakyRelu / Elu), as PyTorch."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    if code == A_SIGMOID:
        return y * (one - y)
    if code == A_TANH:
        return one - y * y
    if code == A_RELU:
        return one if x > zero else zero
    if code == A_HARD_SIGMOID:
        v = alpha * x + beta
        return alpha if (v > zero and v < one) else zero
    if code == A_LEAKY_RELU:
        return one if x > zero else alpha
    if code == A_THRESHOLDED_RELU:
        return one if x > alpha else zero
    if code == A_SCALED_TANH:
        t = tanh_f32(beta * x)
        return alpha * beta * (one - t * t)
    if code == A_AFFINE:
        return alpha
    if code == A_ELU:
        return one if x > zero else y + alpha
    if code == A_SOFTSIGN:
        q = one + np.abs(x)
        return one / (q * q)
    return sigmoid_f32(x)  # A_SOFTPLUS


@numba.njit(**_INLINE)
def _clamp(v, clip):
    v = clip if v > clip else v
    return -clip if v < -clip else v


@numba.njit(**_INLINE)
def _inside(v, clip):
    """d clamp(v) / dv: 1 inside [-clip, clip], 0 where clamped."""
    return np.float32(1.0) if (v <= clip and v >= -clip) else np.float32(0.0)


# --- building blocks ----------------------------------------------------------------------------------------
@numba.njit(**_INLINE)
def _gemv_acc(a, h, rt, c0, n):
    # a (n,) += h (K,) @ rt[:, c0:c0+n]; rt (K, N) C-contiguous: four rows of rt per pass over a
    kk = h.shape[0]
    k = 0
    while k + 4 <= kk:
        h0 = h[k]
        h1 = h[k + 1]
        h2 = h[k + 2]
        h3 = h[k + 3]
        r0 = rt[k, c0:c0 + n]
        r1 = rt[k + 1, c0:c0 + n]
        r2 = rt[k + 2, c0:c0 + n]
        r3 = rt[k + 3, c0:c0 + n]
        for j in range(n):
            a[j] += h0 * r0[j] + h1 * r1[j] + h2 * r2[j] + h3 * r3[j]
        k += 4
    while k < kk:
        hk = h[k]
        r0 = rt[k, c0:c0 + n]
        for j in range(n):
            a[j] += hk * r0[j]
        k += 1


@numba.njit(**_INLINE)
def _vecmat_acc(out, v, m, r0, n):
    # out (K,) += v (n,) @ m[r0:r0+n, :]; m (N, K) C-contiguous: four rows of m per pass over out
    kk = out.shape[0]
    j = 0
    while j + 4 <= n:
        v0 = v[j]
        v1 = v[j + 1]
        v2 = v[j + 2]
        v3 = v[j + 3]
        m0 = m[r0 + j]
        m1 = m[r0 + j + 1]
        m2 = m[r0 + j + 2]
        m3 = m[r0 + j + 3]
        for k in range(kk):
            out[k] += v0 * m0[k] + v1 * m1[k] + v2 * m2[k] + v3 * m3[k]
        j += 4
    while j < n:
        v0 = v[j]
        m0 = m[r0 + j]
        for k in range(kk):
            out[k] += v0 * m0[k]
        j += 1


@numba.njit(**_INLINE)
def _qgemv_acc(a, h, qp, d, ub, raw):
    # a (n,) += dequantized (quantize_row(h) @ Rq[d]): qp = (wp (D, L) packed int8 R^T, cs (D, NP) column sums,
    # rz (D, NP) weight zero points (int32), rs (D, NP) weight scales, kq, nblk, kind); ub (4kq,) and raw (NP,)
    # are scratch
    wp, cs, rz, rs, kq, nblk, kind = qp
    kk = h.shape[0]
    flip = kind == K_SDOT
    scale, zp, total = quantize_row(h, ub, flip)
    gemv_u8s8(ub, wp[d], kq, nblk, kind, raw)
    base = np.int64(128) if flip else np.int64(0)
    hcorr = total - kk * zp
    csd = cs[d]
    rzd = rz[d]
    rsd = rs[d]
    for j in range(a.shape[0]):
        v = np.int64(raw[j]) + (base - zp) * np.int64(csd[j]) - np.int64(rzd[j]) * hcorr
        a[j] += (scale * rsd[j]) * np.float32(v)


@numba.njit(**_INLINE)
def _project_block(blk, x, xw, qw, xq, sums, scale, zp):
    # xw[:, block blk] = (scale * ws[c]) * int32 dot of the quantized x with block blk of W, + bias[c]
    wp, cs, wz, ws, bias, kq, nblk, kind = qw
    rows, kk = x.shape
    n = xw.shape[1]
    nbw = cs.shape[0] // nblk
    tmp = np.empty((rows, nbw), np.int32)
    gemm_block_u8s8(xq, wp, kq, blk, kind, tmp)
    base = np.int64(128) if kind == K_SDOT else np.int64(0)
    c0 = blk * nbw
    c1 = min(n, c0 + nbw)
    for r in range(rows):
        hc = sums[r] - kk * zp
        for c in range(c0, c1):
            v = np.int64(tmp[r, c - c0]) + (base - zp) * np.int64(cs[c]) - np.int64(wz[c]) * hc
            xw[r, c] = (scale * ws[c]) * np.float32(v) + bias[c]


@numba.njit(**_NJIT)
def project_quantized(x, xw, qw):
    """The input projection of a dynamically quantized LSTM, onnxruntime's arithmetic: x (rows, I) float32
    quantized to uint8 as one tensor, times the int8 W^T of both directions (qw = (wp, cs, wz, ws, bias, kq,
    nblk, kind): :mod:`.gemv_i8` packing of the (I, D*4H) weight, its column sums, zero points (int32), scales
    and the folded biases, each padded to whole blocks) in exact int32, scaled, plus the bias -> xw (rows, D*4H)."""
    flip = qw[7] == K_SDOT
    xq = np.zeros((x.shape[0], 4 * qw[5]), np.uint8)
    sums = np.empty(x.shape[0], np.int64)
    scale, zp = quantize_rows(x, xq, flip, sums)
    for blk in range(qw[6]):
        _project_block(blk, x, xw, qw, xq, sums, scale, zp)


@numba.njit(**_NJIT_PAR)
def project_quantized_parallel(x, xw, qw):
    # project_quantized with the weight's blocks split across threads
    flip = qw[7] == K_SDOT
    xq = np.zeros((x.shape[0], 4 * qw[5]), np.uint8)
    sums = np.empty(x.shape[0], np.int64)
    scale, zp = quantize_rows(x, xq, flip, sums)
    for blk in prange(qw[6]):
        _project_block(blk, x, xw, qw, xq, sums, scale, zp)


@numba.njit(**_INLINE)
def _copy(dst, src):
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@numba.njit(**_INLINE)
def _zero(dst):
    for j in range(dst.shape[0]):
        dst[j] = np.float32(0.0)


@numba.njit(**_INLINE)
def _row_len(lens, b, ip):
    return lens[b] if ip[IP_HAS_LENS] != 0 else ip[IP_T]


@numba.njit(**_INLINE)
def _xw_row(t, b, ip):
    return b * ip[IP_T] + t if ip[IP_LAYOUT] != 0 else t * ip[IP_B] + b


@numba.njit(**_NJIT)
def check_lens(lens, ip):
    """0 when every length is within [0, T] (or no lengths), else 1 + the first bad batch row."""
    if ip[IP_HAS_LENS] == 0:
        return 0
    t = ip[IP_T]
    for b in range(lens.shape[0]):
        v = lens[b]
        if v < 0 or v > t:
            return b + 1
    return 0


@numba.njit(**_INLINE)
def _init_rows(d, b0, b1, lens, h0, c0, y, hb, cb, ip, with_c):
    """Initial states into slot 0 of hb / cb, Y rows past each length zeroed; returns the longest length."""
    t_len = ip[IP_T]
    layout = ip[IP_LAYOUT] != 0
    maxlen = 0
    for b in range(b0, b1):
        n = _row_len(lens, b, ip)
        if n > maxlen:
            maxlen = n
        if ip[IP_HAS_H0] != 0:
            _copy(hb[d, 0, b], h0[b, d] if layout else h0[d, b])
        else:
            _zero(hb[d, 0, b])
        if with_c:
            if ip[IP_HAS_C0] != 0:
                _copy(cb[d, 0, b], c0[b, d] if layout else c0[d, b])
            else:
                _zero(cb[d, 0, b])
        if ip[IP_HAS_Y] != 0:
            for t in range(n, t_len):
                _zero(y[b, t, d] if layout else y[t, d, b])
    return maxlen


@numba.njit(**_INLINE)
def _final_rows(d, b0, b1, lens, yh, yc, hb, cb, ip, with_c):
    """Y_h / Y_c from each row's last state (zero for an empty row)."""
    layout = ip[IP_LAYOUT] != 0
    rec = ip[IP_REC]
    for b in range(b0, b1):
        n = _row_len(lens, b, ip)
        slot = n if rec else n & 1
        if ip[IP_HAS_YH] != 0:
            dst = yh[b, d] if layout else yh[d, b]
            if n > 0:
                _copy(dst, hb[d, slot, b])
            else:
                _zero(dst)
        if with_c and ip[IP_HAS_YC] != 0:
            dst = yc[b, d] if layout else yc[d, b]
            if n > 0:
                _copy(dst, cb[d, slot, b])
            else:
                _zero(dst)


@numba.njit(**_INLINE)
def _store_y(y, t, d, b, hn, ip):
    if ip[IP_HAS_Y] != 0:
        _copy(y[b, t, d] if ip[IP_LAYOUT] != 0 else y[t, d, b], hn)


# --- LSTM ---------------------------------------------------------------------------------------------------
@numba.njit(**_INLINE)
def _lstm_cell_fast(a, cp, hn, cn, pi, po, pf, hsz, clip, input_forget):
    # a (4H,) = [i | o | f | c] pre-activations without peepholes, overwritten with the gates; cp (H,) ->
    # cn (H,), hn (H,), distinct arrays. One short loop per gate: few arrays per loop, so LLVM's runtime alias
    # checks stay under its limit and every loop vectorizes.
    ai = a[0:hsz]
    ao = a[hsz:2 * hsz]
    af = a[2 * hsz:3 * hsz]
    ac = a[3 * hsz:4 * hsz]
    one = np.float32(1.0)
    for j in range(hsz):
        ai[j] = sigmoid_f32(_clamp(ai[j] + pi[j] * cp[j], clip))
    if input_forget:
        for j in range(hsz):
            af[j] = one - ai[j]
    else:
        for j in range(hsz):
            af[j] = sigmoid_f32(_clamp(af[j] + pf[j] * cp[j], clip))
    for j in range(hsz):
        ac[j] = tanh_f32(_clamp(ac[j], clip))
    for j in range(hsz):
        cn[j] = af[j] * cp[j] + ai[j] * ac[j]
    for j in range(hsz):
        ao[j] = sigmoid_f32(_clamp(ao[j] + po[j] * cn[j], clip))
    for j in range(hsz):
        hn[j] = ao[j] * tanh_f32(cn[j])


@numba.njit(**_INLINE)
def _lstm_cell_general(a, cp, hn, cn, pi, po, pf, hsz, clip, input_forget, fa, ga, ha, fal, fbe, gal, gbe, hal,
                       hbe):
    ai = a[0:hsz]
    ao = a[hsz:2 * hsz]
    af = a[2 * hsz:3 * hsz]
    ac = a[3 * hsz:4 * hsz]
    one = np.float32(1.0)
    for j in range(hsz):
        c_prev = cp[j]
        i = act(fa, _clamp(ai[j] + pi[j] * c_prev, clip), fal, fbe)
        if input_forget:
            f = one - i
        else:
            f = act(fa, _clamp(af[j] + pf[j] * c_prev, clip), fal, fbe)
        g = act(ga, _clamp(ac[j], clip), gal, gbe)
        c = f * c_prev + i * g
        o = act(fa, _clamp(ao[j] + po[j] * c, clip), fal, fbe)
        cn[j] = c
        hn[j] = o * act(ha, c, hal, hbe)


@numba.njit(**_NJIT)
def _lstm_dir(d, b0, b1, xw, rt, peep, lens, h0, c0, y, yh, yc, acc, hb, cb, ip, fp, qp):
    """Direction d, batch rows [b0, b1): the whole time loop. ``qp`` None: float R^T ``rt``; else the
    quantized R of :func:`_qgemv_acc` (``rt`` unused)."""
    hsz = ip[IP_H]
    rec = ip[IP_REC]
    rev = ip[IP_REV + d] != 0
    fast = ip[IP_FAST + d] != 0 and rec == 0
    input_forget = ip[IP_FLAG] != 0
    n = 4 * hsz
    col = d * n
    clip = fp[FP_CLIP]
    k = IP_ACT + 3 * d
    fa, ga, ha = ip[k], ip[k + 1], ip[k + 2]
    k = 3 * d
    fal, gal, hal = fp[FP_ALPHA + k], fp[FP_ALPHA + k + 1], fp[FP_ALPHA + k + 2]
    fbe, gbe, hbe = fp[FP_BETA + k], fp[FP_BETA + k + 1], fp[FP_BETA + k + 2]
    pi = peep[d, 0]
    po = peep[d, 1]
    pf = peep[d, 2]
    rtd = rt[d]
    if qp is not None:
        ub = np.zeros(4 * qp[4], np.uint8)
        raw = np.empty(qp[1].shape[1], np.int32)
    maxlen = _init_rows(d, b0, b1, lens, h0, c0, y, hb, cb, ip, True)
    for s in range(maxlen):
        si = s if rec else s & 1
        so = s + 1 if rec else (s + 1) & 1
        for b in range(b0, b1):
            length = _row_len(lens, b, ip)
            if s >= length:
                continue
            t = length - 1 - s if rev else s
            a = acc[d, s * rec, b]
            hp = hb[d, si, b]
            _copy(a, xw[_xw_row(t, b, ip), col:col + n])
            if qp is None:
                _gemv_acc(a, hp, rtd, 0, n)
            else:
                _qgemv_acc(a, hp, qp, d, ub, raw)
            hn = hb[d, so, b]
            if fast:
                _lstm_cell_fast(a, cb[d, si, b], hn, cb[d, so, b], pi, po, pf, hsz, clip, input_forget)
            else:
                _lstm_cell_general(a, cb[d, si, b], hn, cb[d, so, b], pi, po, pf, hsz, clip, input_forget, fa, ga,
                                   ha, fal, fbe, gal, gbe, hal, hbe)
            _store_y(y, t, d, b, hn, ip)
    _final_rows(d, b0, b1, lens, yh, yc, hb, cb, ip, True)


@numba.njit(**_NJIT)
def lstm_serial(xw, rt, peep, lens, h0, c0, y, yh, yc, acc, hb, cb, ip, fp, qp=None):
    # xw (rows, D*4H), rt (D, H, 4H), peep (D, 3, H), lens (B,), h0 / c0 (D, B, H) or (B, D, H),
    # y (T, D, B, H) or (B, T, D, H), yh / yc like h0; acc (D, 1, B, 4H) and hb / cb (D, 2, B, H), or with
    # rec = 1 acc (D, T, B, 4H) and hb / cb (D, T + 1, B, H); qp: the quantized R (see _qgemv_acc) or None;
    # returns 0, or 1 + a batch row whose length is bad
    err = check_lens(lens, ip)
    if err:
        return err
    for d in range(ip[IP_D]):
        _lstm_dir(d, 0, ip[IP_B], xw, rt, peep, lens, h0, c0, y, yh, yc, acc, hb, cb, ip, fp, qp)
    return 0


@numba.njit(**_NJIT_PAR)
def lstm_parallel(xw, rt, peep, lens, h0, c0, y, yh, yc, acc, hb, cb, ip, fp, nchunks, qp=None):
    # lstm_serial split into (direction, batch chunk) units
    err = check_lens(lens, ip)
    if err:
        return err
    nb = ip[IP_B]
    for u in prange(ip[IP_D] * nchunks):
        d = u // nchunks
        c = u % nchunks
        _lstm_dir(d, c * nb // nchunks, (c + 1) * nb // nchunks, xw, rt, peep, lens, h0, c0, y, yh, yc, acc, hb,
                  cb, ip, fp, qp)
    return 0


# --- GRU ----------------------------------------------------------------------------------------------------
@numba.njit(**_NJIT)
def _gru_dir(d, b0, b1, xw, rt, rbh, lens, h0, y, yh, acc, hb, tmp, ip, fp):
    hsz = ip[IP_H]
    rec = ip[IP_REC]
    rev = ip[IP_REV + d] != 0
    fast = ip[IP_FAST + d] != 0 and rec == 0
    lbr = ip[IP_FLAG] != 0
    n = 3 * hsz
    col = d * n
    clip = fp[FP_CLIP]
    fa, ga = ip[IP_ACT + 3 * d], ip[IP_ACT + 3 * d + 1]
    fal, gal = fp[FP_ALPHA + 3 * d], fp[FP_ALPHA + 3 * d + 1]
    fbe, gbe = fp[FP_BETA + 3 * d], fp[FP_BETA + 3 * d + 1]
    rtd = rt[d]
    rb = rbh[d]
    one = np.float32(1.0)
    maxlen = _init_rows(d, b0, b1, lens, h0, h0, y, hb, hb, ip, False)
    for s in range(maxlen):
        si = s if rec else s & 1
        so = s + 1 if rec else (s + 1) & 1
        for b in range(b0, b1):
            length = _row_len(lens, b, ip)
            if s >= length:
                continue
            t = length - 1 - s if rev else s
            a = acc[d, s * rec, b]
            x = xw[_xw_row(t, b, ip), col:col + n]
            hp = hb[d, si, b]
            hn = hb[d, so, b]
            az = a[0:hsz]
            ar = a[hsz:2 * hsz]
            ah = a[2 * hsz:n]
            xh = x[2 * hsz:n]
            if lbr:
                # a = [x_z, x_r, Rbh] + h_prev @ R^T: one pass over R^T; h~ = g(x_h + r * a_h)
                _copy(a[0:2 * hsz], x[0:2 * hsz])
                _copy(ah, rb)
                _gemv_acc(a, hp, rtd, 0, n)
                if fast:  # gates in place, one short loop each (see _lstm_cell_fast)
                    for j in range(2 * hsz):
                        a[j] = sigmoid_f32(_clamp(a[j], clip))
                    for j in range(hsz):
                        ah[j] = tanh_f32(_clamp(xh[j] + ar[j] * ah[j], clip))
                    for j in range(hsz):
                        hn[j] = ah[j] + az[j] * (hp[j] - ah[j])
                else:
                    for j in range(hsz):
                        z = act(fa, _clamp(az[j], clip), fal, fbe)
                        r = act(fa, _clamp(ar[j], clip), fal, fbe)
                        hh = act(ga, _clamp(xh[j] + r * ah[j], clip), gal, gbe)
                        hn[j] = (one - z) * hh + z * hp[j]
            else:
                # z, r from the first 2H columns; then a_h = x_h + (r * h_prev) @ Rh^T
                zt = tmp[d, b, 0]
                rh = tmp[d, b, 1]
                _copy(a[0:2 * hsz], x[0:2 * hsz])
                _gemv_acc(a, hp, rtd, 0, 2 * hsz)
                _copy(ah, xh)
                if fast:
                    for j in range(2 * hsz):
                        a[j] = sigmoid_f32(_clamp(a[j], clip))
                    for j in range(hsz):
                        rh[j] = ar[j] * hp[j]
                    _gemv_acc(ah, rh, rtd, 2 * hsz, hsz)
                    for j in range(hsz):
                        ah[j] = tanh_f32(_clamp(ah[j], clip))
                    for j in range(hsz):
                        hn[j] = ah[j] + az[j] * (hp[j] - ah[j])
                else:
                    for j in range(hsz):
                        zt[j] = act(fa, _clamp(az[j], clip), fal, fbe)
                        rh[j] = act(fa, _clamp(ar[j], clip), fal, fbe) * hp[j]
                    _gemv_acc(ah, rh, rtd, 2 * hsz, hsz)
                    for j in range(hsz):
                        z = zt[j]
                        hn[j] = (one - z) * act(ga, _clamp(ah[j], clip), gal, gbe) + z * hp[j]
            _store_y(y, t, d, b, hn, ip)
    _final_rows(d, b0, b1, lens, yh, yh, hb, hb, ip, False)


@numba.njit(**_NJIT)
def gru_serial(xw, rt, rbh, lens, h0, y, yh, acc, hb, tmp, ip, fp):
    # xw (rows, D*3H), rt (D, H, 3H), rbh (D, H) (used with linear_before_reset), tmp (D, B, 2, H)
    err = check_lens(lens, ip)
    if err:
        return err
    for d in range(ip[IP_D]):
        _gru_dir(d, 0, ip[IP_B], xw, rt, rbh, lens, h0, y, yh, acc, hb, tmp, ip, fp)
    return 0


@numba.njit(**_NJIT_PAR)
def gru_parallel(xw, rt, rbh, lens, h0, y, yh, acc, hb, tmp, ip, fp, nchunks):
    err = check_lens(lens, ip)
    if err:
        return err
    nb = ip[IP_B]
    for u in prange(ip[IP_D] * nchunks):
        d = u // nchunks
        c = u % nchunks
        _gru_dir(d, c * nb // nchunks, (c + 1) * nb // nchunks, xw, rt, rbh, lens, h0, y, yh, acc, hb, tmp, ip, fp)
    return 0


# --- RNN ----------------------------------------------------------------------------------------------------
@numba.njit(**_NJIT)
def _rnn_dir(d, b0, b1, xw, rt, lens, h0, y, yh, acc, hb, ip, fp):
    hsz = ip[IP_H]
    rec = ip[IP_REC]
    rev = ip[IP_REV + d] != 0
    fast = ip[IP_FAST + d] != 0 and rec == 0
    col = d * hsz
    clip = fp[FP_CLIP]
    fa = ip[IP_ACT + 3 * d]
    fal = fp[FP_ALPHA + 3 * d]
    fbe = fp[FP_BETA + 3 * d]
    rtd = rt[d]
    maxlen = _init_rows(d, b0, b1, lens, h0, h0, y, hb, hb, ip, False)
    for s in range(maxlen):
        si = s if rec else s & 1
        so = s + 1 if rec else (s + 1) & 1
        for b in range(b0, b1):
            length = _row_len(lens, b, ip)
            if s >= length:
                continue
            t = length - 1 - s if rev else s
            a = acc[d, s * rec, b]
            hp = hb[d, si, b]
            hn = hb[d, so, b]
            _copy(a, xw[_xw_row(t, b, ip), col:col + hsz])
            _gemv_acc(a, hp, rtd, 0, hsz)
            if fast:
                for j in range(hsz):
                    hn[j] = tanh_f32(_clamp(a[j], clip))
            else:
                for j in range(hsz):
                    hn[j] = act(fa, _clamp(a[j], clip), fal, fbe)
            _store_y(y, t, d, b, hn, ip)
    _final_rows(d, b0, b1, lens, yh, yh, hb, hb, ip, False)


@numba.njit(**_NJIT)
def rnn_serial(xw, rt, lens, h0, y, yh, acc, hb, ip, fp):
    # xw (rows, D*H), rt (D, H, H)
    err = check_lens(lens, ip)
    if err:
        return err
    for d in range(ip[IP_D]):
        _rnn_dir(d, 0, ip[IP_B], xw, rt, lens, h0, y, yh, acc, hb, ip, fp)
    return 0


@numba.njit(**_NJIT_PAR)
def rnn_parallel(xw, rt, lens, h0, y, yh, acc, hb, ip, fp, nchunks):
    err = check_lens(lens, ip)
    if err:
        return err
    nb = ip[IP_B]
    for u in prange(ip[IP_D] * nchunks):
        d = u // nchunks
        c = u % nchunks
        _rnn_dir(d, c * nb // nchunks, (c + 1) * nb // nchunks, xw, rt, lens, h0, y, yh, acc, hb, ip, fp)
    return 0


def chunks(ip: np.ndarray, gates: int, threads: int) -> int:
    """Batch chunks per direction for the parallel kernels; 0: run the serial kernel."""
    t, b, h, d = (int(ip[k]) for k in (IP_T, IP_B, IP_H, IP_D))
    work = t * b * d * gates * h * h
    if threads < 2 or work < _config.PARALLEL_MIN_WORK:
        return 0
    nch = min(b, max(1, -(-threads // d)))
    return nch if d * nch >= 2 else 0


# --- backward -----------------------------------------------------------------------------------------------
@numba.njit(**_INLINE)
def _grad_start(d, b, dyh, dyc, dh, dc, ip, with_c):
    layout = ip[IP_LAYOUT] != 0
    if ip[IP_HAS_YH] != 0:
        _copy(dh, dyh[b, d] if layout else dyh[d, b])
    else:
        _zero(dh)
    if with_c:
        if ip[IP_HAS_YC] != 0:
            _copy(dc, dyc[b, d] if layout else dyc[d, b])
        else:
            _zero(dc)


@numba.njit(**_INLINE)
def _add_dy(dh, dy, t, d, b, ip):
    if ip[IP_HAS_Y] != 0:
        src = dy[b, t, d] if ip[IP_LAYOUT] != 0 else dy[t, d, b]
        for j in range(dh.shape[0]):
            dh[j] += src[j]


@numba.njit(**_NJIT)
def lstm_backward(xw, r, peep, lens, acc, hb, cb, dy, dyh, dyc, gx, gr, dh0, dc0, dpeep, work, ip, fp):
    # r (D, 4H, H); acc / hb / cb: the records of lstm_serial with rec = 1; dy like Y, dyh / dyc like Y_h
    # (IP_HAS_Y / _YH / _YC: which gradients are given); gx (rows, D*4H) and gr (D, T, B, 4H) zeroed;
    # dh0 / dc0 (D, B, H) out; dpeep (D, 3, H) float64 accumulated; work (2, H)
    hsz = ip[IP_H]
    input_forget = ip[IP_FLAG] != 0
    clip = fp[FP_CLIP]
    n = 4 * hsz
    one = np.float32(1.0)
    zero = np.float32(0.0)
    dh = work[0]
    dc = work[1]
    for d in range(ip[IP_D]):
        rev = ip[IP_REV + d] != 0
        k = IP_ACT + 3 * d
        fa, ga, ha = ip[k], ip[k + 1], ip[k + 2]
        k = 3 * d
        fal, gal, hal = fp[FP_ALPHA + k], fp[FP_ALPHA + k + 1], fp[FP_ALPHA + k + 2]
        fbe, gbe, hbe = fp[FP_BETA + k], fp[FP_BETA + k + 1], fp[FP_BETA + k + 2]
        pi = peep[d, 0]
        po = peep[d, 1]
        pf = peep[d, 2]
        for b in range(ip[IP_B]):
            length = _row_len(lens, b, ip)
            if length == 0:
                _zero(dh0[d, b])
                _zero(dc0[d, b])
                continue
            _grad_start(d, b, dyh, dyc, dh, dc, ip, True)
            for s in range(length - 1, -1, -1):
                t = length - 1 - s if rev else s
                _add_dy(dh, dy, t, d, b, ip)
                a = acc[d, s, b]
                cp = cb[d, s, b]
                cn = cb[d, s + 1, b]
                g = gx[_xw_row(t, b, ip), d * n:(d + 1) * n]
                for j in range(hsz):
                    c_prev = cp[j]
                    c = cn[j]
                    zi = a[j] + pi[j] * c_prev
                    vi = _clamp(zi, clip)
                    i = act(fa, vi, fal, fbe)
                    zf = a[2 * hsz + j] + pf[j] * c_prev
                    vf = _clamp(zf, clip)
                    f = one - i if input_forget else act(fa, vf, fal, fbe)
                    zc = a[3 * hsz + j]
                    vc = _clamp(zc, clip)
                    gg = act(ga, vc, gal, gbe)
                    zo = a[hsz + j] + po[j] * c
                    vo = _clamp(zo, clip)
                    o = act(fa, vo, fal, fbe)
                    hc = act(ha, c, hal, hbe)
                    dhj = dh[j]
                    dzo = dhj * hc * dact(fa, vo, o, fal, fbe) * _inside(zo, clip)
                    dcj = dc[j] + dhj * o * dact(ha, c, hc, hal, hbe) + dzo * po[j]
                    di = dcj * gg
                    dfg = dcj * c_prev
                    dzc = dcj * i * dact(ga, vc, gg, gal, gbe) * _inside(zc, clip)
                    if input_forget:
                        di -= dfg
                        dzf = zero
                    else:
                        dzf = dfg * dact(fa, vf, f, fal, fbe) * _inside(zf, clip)
                    dzi = di * dact(fa, vi, i, fal, fbe) * _inside(zi, clip)
                    dc[j] = dcj * f + dzi * pi[j] + dzf * pf[j]
                    dpeep[d, 0, j] += dzi * c_prev
                    dpeep[d, 1, j] += dzo * c
                    dpeep[d, 2, j] += dzf * c_prev
                    g[j] = dzi
                    g[hsz + j] = dzo
                    g[2 * hsz + j] = dzf
                    g[3 * hsz + j] = dzc
                _copy(gr[d, s, b], g)
                _zero(dh)
                _vecmat_acc(dh, g, r[d], 0, n)
            _copy(dh0[d, b], dh)
            _copy(dc0[d, b], dc)


@numba.njit(**_NJIT)
def gru_backward(xw, r, lens, acc, hb, dy, dyh, gx, gr, rh, dh0, work, ip, fp):
    # r (D, 3H, H); records of gru_serial with rec = 1; gx (rows, D*3H), gr (D, T, B, 3H) zeroed;
    # rh (D, T, B, H) out: r (.) H_prev per step (linear_before_reset 0); dh0 (D, B, H) out; work (4, H)
    hsz = ip[IP_H]
    lbr = ip[IP_FLAG] != 0
    clip = fp[FP_CLIP]
    n = 3 * hsz
    one = np.float32(1.0)
    dh = work[0]
    dhp = work[1]
    drh = work[2]
    rv = work[3]
    for d in range(ip[IP_D]):
        rev = ip[IP_REV + d] != 0
        fa, ga = ip[IP_ACT + 3 * d], ip[IP_ACT + 3 * d + 1]
        fal, gal = fp[FP_ALPHA + 3 * d], fp[FP_ALPHA + 3 * d + 1]
        fbe, gbe = fp[FP_BETA + 3 * d], fp[FP_BETA + 3 * d + 1]
        rd = r[d]
        for b in range(ip[IP_B]):
            length = _row_len(lens, b, ip)
            if length == 0:
                _zero(dh0[d, b])
                continue
            _grad_start(d, b, dyh, dyh, dh, dh, ip, False)
            for s in range(length - 1, -1, -1):
                t = length - 1 - s if rev else s
                _add_dy(dh, dy, t, d, b, ip)
                row = _xw_row(t, b, ip)
                a = acc[d, s, b]
                hp = hb[d, s, b]
                g = gx[row, d * n:(d + 1) * n]
                q = gr[d, s, b]
                for j in range(hsz):
                    zz = a[j]
                    vz = _clamp(zz, clip)
                    z = act(fa, vz, fal, fbe)
                    zr = a[hsz + j]
                    vr = _clamp(zr, clip)
                    rr = act(fa, vr, fal, fbe)
                    if lbr:
                        zh = xw[row, d * n + 2 * hsz + j] + rr * a[2 * hsz + j]
                    else:
                        zh = a[2 * hsz + j]
                    vh = _clamp(zh, clip)
                    hh = act(ga, vh, gal, gbe)
                    dhj = dh[j]
                    dzh = dhj * (one - z) * dact(ga, vh, hh, gal, gbe) * _inside(zh, clip)
                    g[j] = dhj * (hp[j] - hh) * dact(fa, vz, z, fal, fbe) * _inside(zz, clip)
                    g[2 * hsz + j] = dzh
                    dhp[j] = dhj * z
                    rv[j] = rr
                    if lbr:
                        q[2 * hsz + j] = dzh * rr
                        g[hsz + j] = dzh * a[2 * hsz + j] * dact(fa, vr, rr, fal, fbe) * _inside(zr, clip)
                    else:
                        rh[d, s, b, j] = rr * hp[j]
                        q[2 * hsz + j] = dzh
                if not lbr:
                    # d(r (.) h_prev) = dzh @ Rh
                    _zero(drh)
                    _vecmat_acc(drh, g[2 * hsz:n], rd, 2 * hsz, hsz)
                    for j in range(hsz):
                        zr = a[hsz + j]
                        rr = rv[j]
                        dhp[j] += drh[j] * rr
                        g[hsz + j] = drh[j] * hp[j] * dact(fa, _clamp(zr, clip), rr, fal, fbe) * _inside(zr, clip)
                for j in range(2 * hsz):
                    q[j] = g[j]
                _vecmat_acc(dhp, q, rd, 0, 2 * hsz if not lbr else n)
                _copy(dh, dhp)
            _copy(dh0[d, b], dh)


@numba.njit(**_NJIT)
def rnn_backward(r, lens, acc, hb, dy, dyh, gx, gr, dh0, work, ip, fp):
    # r (D, H, H); records of rnn_serial with rec = 1; gx (rows, D*H), gr (D, T, B, H) zeroed; work (1, H)
    hsz = ip[IP_H]
    clip = fp[FP_CLIP]
    dh = work[0]
    for d in range(ip[IP_D]):
        rev = ip[IP_REV + d] != 0
        fa = ip[IP_ACT + 3 * d]
        fal = fp[FP_ALPHA + 3 * d]
        fbe = fp[FP_BETA + 3 * d]
        for b in range(ip[IP_B]):
            length = _row_len(lens, b, ip)
            if length == 0:
                _zero(dh0[d, b])
                continue
            _grad_start(d, b, dyh, dyh, dh, dh, ip, False)
            for s in range(length - 1, -1, -1):
                t = length - 1 - s if rev else s
                _add_dy(dh, dy, t, d, b, ip)
                a = acc[d, s, b]
                hn = hb[d, s + 1, b]
                g = gx[_xw_row(t, b, ip), d * hsz:(d + 1) * hsz]
                for j in range(hsz):
                    v = _clamp(a[j], clip)
                    g[j] = dh[j] * dact(fa, v, hn[j], fal, fbe) * _inside(a[j], clip)
                _copy(gr[d, s, b], g)
                _zero(dh)
                _vecmat_acc(dh, g, r[d], 0, hsz)
            _copy(dh0[d, b], dh)
