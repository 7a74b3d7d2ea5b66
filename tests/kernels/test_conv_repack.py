"""Conv2d.repack: new weights loaded into a prepared convolution (weights trained at run time) give the same
bits as a convolution built for them."""
import numpy as np
import pytest

from edgedl.kernels.cpu.conv import Conv2d


@pytest.mark.parametrize("cin,cout,group,k,stride,bias", [
    (3, 8, 1, 3, 1, True), (8, 16, 2, 3, 2, True), (16, 24, 1, 1, 1, False), (6, 6, 6, 3, 1, True),
    (1, 8, 1, 3, 1, True), (12, 12, 12, 3, 2, False)])
def test_repack_matches_a_fresh_convolution(cin, cout, group, k, stride, bias):
    rng = np.random.default_rng(cin * cout)
    x = rng.standard_normal((2, cin, 9, 10)).astype(np.float32)
    shape = (cout, cin // group, k, k)
    w1, w2 = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    b1, b2 = ((rng.standard_normal(cout).astype(np.float32) if bias else None) for _ in range(2))
    args = dict(strides=(stride, stride), pads=(1, 1, 1, 1), group=group)
    conv = Conv2d(w1, b1, x.shape, **args)
    fresh = Conv2d(w2, b2, x.shape, **args)
    want = np.empty(fresh.out_shape, np.float32)
    fresh(x, want)
    if not conv.repack(w2, b2):
        pytest.skip(f"{conv.strategy} / {getattr(conv, 'depthwise_kernel', '')} convolutions rebuild instead")
    got = np.empty(conv.out_shape, np.float32)
    conv(x, got)
    np.testing.assert_array_equal(got, want)
    other = None if bias else np.zeros(cout, np.float32)
    assert not conv.repack(w2, other)  # a bias that appears or disappears: rebuild
