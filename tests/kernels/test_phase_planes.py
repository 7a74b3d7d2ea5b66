"""The flat convolution's padding pass (zero-padded, phase-split planes) and the vector split of a row into its
even and odd columns, against numpy slicing."""
import numpy as np
import pytest

from edgedl.kernels.cpu.conv_flat import _pad_parallel, _pad_serial


def _reference(x, nb, c, h, w, pt, pl, sh, sw, hq, wq, img, fill):
    padded = np.zeros((nb, c, hq * sh + sh, wq * sw + sw), np.float32)
    padded[:, :, pt:pt + h, pl:pl + w] = x.reshape(nb, c, h, w)
    ref = np.full(nb * img + 5, fill, np.float32)
    ref[:nb * img] = 0.0
    for b in range(nb):
        for ci in range(c):
            for a in range(sh):
                for bb in range(sw):
                    off = b * img + ((ci * sh + a) * sw + bb) * hq * wq
                    ref[off:off + hq * wq] = padded[b, ci, a::sh, bb::sw][:hq, :wq].reshape(-1)
    return ref


@pytest.mark.parametrize("parallel", [False, True])
def test_phase_planes_against_numpy(parallel):
    """Random sizes, pads and strides (odd widths, pads wider than a vector's tail, one-pixel planes): every
    float of every phase plane, the zero tail, and nothing written past the images."""
    rng = np.random.default_rng(11 + parallel)
    for _ in range(150):
        nb, c = int(rng.integers(1, 3)), int(rng.integers(1, 5))
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 40))
        sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        pt, pl, pb, pr = (int(v) for v in rng.integers(0, 5, 4))
        hq, wq = -(-(h + pt + pb) // sh), -(-(w + pl + pr) // sw)
        img = c * sh * sw * hq * wq + int(rng.integers(0, 20))
        x = rng.standard_normal(nb * c * h * w).astype(np.float32)
        xpad = np.full(nb * img + 5, 7.0, np.float32)
        zeros = np.zeros(wq, np.float32)
        if parallel:
            _pad_parallel(2, x, xpad, nb, c, h, w, pt, pl, sh, sw, hq, wq, img, zeros)
        else:
            _pad_serial(x, xpad, nb, c, h, w, pt, pl, sh, sw, hq, wq, img, zeros)
        want = _reference(x, nb, c, h, w, pt, pl, sh, sw, hq, wq, img, 7.0)
        np.testing.assert_array_equal(xpad, want, err_msg=f"{nb}x{c}x{h}x{w} s{sh}{sw} pads {pt, pl, pb, pr}")


def test_split_pairs_reads_and_writes_only_its_ranges():
    import numba

    from edgedl.kernels.cpu.vec import split_pairs

    @numba.njit
    def split(n, even, eoff, odd, ooff, src, soff):
        split_pairs(n, even, eoff, odd, ooff, src, soff)

    rng = np.random.default_rng(3)
    for n in range(0, 40):
        src = rng.standard_normal(2 * n + 9).astype(np.float32)
        soff = int(rng.integers(0, 9))  # src has 9 floats beyond the 2n read
        even = np.full(n + 12, 5.0, np.float32)
        odd = np.full(n + 12, 6.0, np.float32)
        eoff, ooff = int(rng.integers(0, 12)), int(rng.integers(0, 12))
        split(n, even, eoff, odd, ooff, src, soff)
        want_e = np.full_like(even, 5.0)
        want_o = np.full_like(odd, 6.0)
        want_e[eoff:eoff + n] = src[soff:soff + 2 * n:2]
        want_o[ooff:ooff + n] = src[soff + 1:soff + 2 * n:2]
        np.testing.assert_array_equal(even, want_e, err_msg=f"n {n}")
        np.testing.assert_array_equal(odd, want_o, err_msg=f"n {n}")


def test_copy_floats_copies_exactly_its_range_at_every_length_and_offset():
    """copy_floats runs whole vectors, the last one overlapping the one before, and a scalar loop below one
    vector: every length from 0 to past three vectors at several offsets, nothing outside written."""
    import numba

    from edgedl.kernels.cpu.vec import copy_floats

    @numba.njit
    def copy(dst, doff, src, soff, n):
        copy_floats(dst, doff, src, soff, n)

    rng = np.random.default_rng(4)
    for n in range(0, 30):
        for doff, soff in ((0, 0), (1, 3), (7, 0), (5, 9)):
            src = rng.standard_normal(n + 10).astype(np.float32)
            dst = np.full(n + 20, 7.0, np.float32)
            copy(dst, doff, src, soff, n)
            want = np.full_like(dst, 7.0)
            want[doff:doff + n] = src[soff:soff + n]
            np.testing.assert_array_equal(dst, want, err_msg=f"n {n} offsets {doff, soff}")
