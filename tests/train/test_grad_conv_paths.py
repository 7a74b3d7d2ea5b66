"""The code paths of the convolution backward (edgedl.kernels.cpu.conv_grad / depthwise_grad): float64 finite
differences on small shapes (tests/train/gradcheck.py, 1 vs N threads bitwise), and a float64 numpy reference
at the sizes that switch paths (whole-image K blocks read in place, partial chunks of the depthwise phase
planes, narrow and strided im2col rows, the batched input-gradient GEMM), serial and forced parallel."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from gradcheck import check_backward

from edgedl.kernels.cpu import config, conv_grad, depthwise_grad


def _r(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.fixture(params=["serial", "parallel"])
def kernels(request, monkeypatch):
    """"parallel" forces the prange variants and the split GEMM at any size (so 1 vs N threads compares
    them); "serial" keeps the default thresholds (small shapes run serially)."""
    if request.param == "parallel":
        monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(config, "GEMM_PARALLEL_MIN_WORK", 0)
    return request.param


# --- finite differences ----------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    # 1x1 stride 1: dx by GEMMs on the NCHW planes (per image; images side by side for small planes with
    # more output than input channels), dW by the dot-product kernel
    ((2, 3, 5, 4), (4, 3, 1, 1), {}),
    ((3, 2, 2, 3), (7, 2, 1, 1), {}),
    ((2, 4, 3, 3), (6, 2, 1, 1), {"group": 2}),
    ((2, 3, 6), (5, 3, 1), {}),                                                                    # 1-D
    # 1x1 with a stride or padding: the general path
    ((1, 3, 5, 5), (2, 3, 1, 1), {"strides": [2, 2]}),
    ((1, 2, 3, 4), (3, 2, 1, 1), {"pads": [1, 0, 0, 1]}),
    # depthwise: multiplier, stride, dilation, asymmetric padding, kernels wider than the stride
    ((2, 3, 7, 6), (6, 1, 3, 3), {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 8, 7), (6, 1, 3, 3), {"group": 2, "dilations": [2, 2], "pads": [2, 1, 1, 2]}),
    ((2, 2, 9, 9), (2, 1, 5, 5), {"group": 2, "strides": [3, 2], "pads": [2, 2, 2, 2]}),
    ((1, 3, 6, 7), (3, 1, 1, 1), {"group": 3, "strides": [2, 3]}),                    # phases no tap reads
    ((2, 1, 5, 5), (4, 1, 3, 3), {"pads": [1, 1, 1, 1]}),                             # one input channel
    ((2, 2, 9), (4, 1, 3), {"group": 2, "strides": [2], "pads": [1, 1]}),                          # 1-D
    # general convolutions: narrow rows (im2col through a tap table), stride 3, dilation
    ((2, 2, 5, 5), (3, 2, 3, 3), {"strides": [3, 3], "pads": [1, 1, 1, 1]}),
    ((1, 4, 6, 7), (4, 2, 2, 3), {"group": 2, "dilations": [2, 1], "pads": [0, 1, 1, 0]}),
])
def test_conv_backward_paths(x_shape, w_shape, attrs, kernels):
    rng = np.random.default_rng(sum(x_shape) * 13 + sum(w_shape))
    check_backward("Conv", [_r(rng, *x_shape), _r(rng, *w_shape), _r(rng, w_shape[0])], attrs)


@pytest.mark.parametrize("wrt", [[0], [1]], ids=["x", "w"])
def test_depthwise_one_gradient_only(wrt):
    rng = np.random.default_rng(3)
    got = check_backward("Conv", [_r(rng, 2, 3, 6, 6), _r(rng, 6, 1, 3, 3)], {"group": 3, "pads": [1, 1, 1, 1]},
                         wrt=wrt)
    assert got[1 - wrt[0]] is None


# --- larger shapes against a float64 reference -----------------------------------------------------------
def _reference(x, w, dy, strides, pads, dilations, group):
    """(dx, dW) in float64: per group and tap, the strided window of the zero-padded input."""
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    oh, ow = dy.shape[2:]
    (sh, sw), (dh, dwl) = strides, dilations
    pt, pl = pads
    xp = np.zeros((n, c, pt + h + kh * dh + oh * sh, pl + wd + kw * dwl + ow * sw))
    xp[:, :, pt:pt + h, pl:pl + wd] = x64
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    mg = m // group
    for g in range(group):
        cs, ms = slice(g * cg, (g + 1) * cg), slice(g * mg, (g + 1) * mg)
        for i in range(kh):
            for j in range(kw):
                win = (slice(None), cs, slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
                       slice(j * dwl, j * dwl + sw * (ow - 1) + 1, sw))
                dw[ms, :, i, j] = np.einsum("ncyx,nmyx->mc", xp[win], dy64[:, ms])
                dxp[win] += np.einsum("nmyx,mc->ncyx", dy64[:, ms], w64[ms, :, i, j])
    return dxp[:, :, pt:pt + h, pl:pl + wd], dw


def _check_large(x_shape, w_shape, strides, pads, dilations, group, seed=0):
    rng = np.random.default_rng(seed)
    n, c, h, wd = x_shape
    m, cg, kh, kw = w_shape
    oh = (h + 2 * pads[0] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + 2 * pads[1] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    x, w, dy = _r(rng, *x_shape), _r(rng, *w_shape), _r(rng, n, m, oh, ow)
    want_dx, want_dw = _reference(x, w, dy, strides, pads, dilations, group)
    got = conv_grad.conv2d_grads(x, dy, w, x_shape, w_shape, strides, pads, dilations, group, True, True)
    # long reductions (dW sums over N*OH*OW products) in float32
    np.testing.assert_allclose(got[0], want_dx, rtol=1e-4, atol=1e-4 * np.abs(want_dx).max())
    np.testing.assert_allclose(got[1], want_dw, rtol=1e-4, atol=1e-4 * np.abs(want_dw).max())
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = conv_grad.conv2d_grads(x, dy, w, x_shape, w_shape, strides, pads, dilations, group, True, True)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(got[0], one[0], err_msg="dx: 1 thread and N threads differ")
    np.testing.assert_array_equal(got[1], one[1], err_msg="dW: 1 thread and N threads differ")


@pytest.mark.parametrize("x_shape,w_shape,strides,pads,dilations,group", [
    ((3, 5, 40, 36), (9, 5, 1, 1), (1, 1), (0, 0), (1, 1), 1),      # whole images read in place (x and dy)
    ((5, 6, 12, 12), (10, 6, 1, 1), (1, 1), (0, 0), (1, 1), 1),     # image blocks copied, per-image dx GEMM
    ((6, 13, 3, 3), (70, 13, 1, 1), (1, 1), (0, 0), (1, 1), 1),     # images side by side in the dx GEMM
    ((4, 8, 5, 5), (12, 4, 1, 1), (1, 1), (0, 0), (1, 1), 2),       # grouped 1x1
    ((2, 3, 70, 66), (5, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1),      # stride-2 im2col rows (vector copies)
    ((3, 4, 20, 19), (6, 4, 3, 3), (1, 1), (1, 1), (2, 1), 1),      # dilated, stride 1
    ((2, 6, 9, 30), (6, 2, 3, 5), (3, 3), (2, 1), (1, 1), 3),       # stride 3, grouped
    ((5, 4, 60, 60), (4, 1, 3, 3), (1, 1), (1, 1), (1, 1), 4),      # depthwise: partial chunks
    ((3, 3, 48, 50), (6, 1, 3, 3), (2, 2), (1, 1), (1, 1), 3),      # depthwise: stride 2, multiplier 2
    ((4, 2, 31, 29), (2, 1, 5, 5), (2, 2), (2, 2), (1, 1), 2),      # depthwise: odd widths, stride 2
    ((3, 2, 20, 20), (4, 1, 3, 3), (3, 3), (2, 2), (2, 2), 2),      # depthwise: stride 3, dilation 2
])
def test_conv_grads_large(x_shape, w_shape, strides, pads, dilations, group, kernels):
    _check_large(x_shape, w_shape, strides, pads, dilations, group)


def test_depthwise_chunks_are_partial():
    """The depthwise case above really splits the batch into chunks with a partial last one."""
    geom = depthwise_grad.DepthwiseGradGeometry((5, 4, 60, 60), (4, 1, 3, 3), (60, 60), (1, 1), (1, 1), (1, 1))
    nb = int(geom.geo[6])
    assert 1 < nb < 5 and 5 % nb


def test_depthwise_nan_and_inf_propagate():
    rng = np.random.default_rng(5)
    x, w, dy = _r(rng, 2, 2, 6, 6), _r(rng, 2, 1, 3, 3), _r(rng, 2, 2, 6, 6)
    x[1, 0, 2, 3] = np.nan
    dy[0, 1, 4, 4] = np.inf
    dx, dw = conv_grad.conv2d_grads(x, dy, w, x.shape, w.shape, (1, 1), (1, 1), (1, 1), 2, True, True)
    assert np.isnan(dw[0]).all() and np.isfinite(dw[1]).sum() == 0   # every tap of channel 0 meets the NaN
    assert not np.isfinite(dx[0, 1]).all() and np.isfinite(dx[0, 0]).all() and np.isfinite(dx[1]).all()
