"""int8 RESIZE_BILINEAR (edgedl/kernels/cpu/resize_i8.py) against TFLite's reference kernel
(reference_ops::ResizeBilinearInteger, run by ai-edge-litert's BUILTIN_REF resolver): the numpy reference and the
Numba kernel give the interpreter's bits, NHWC results compared in NCHW."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from tflite_builder import Builder, interpret  # noqa: E402  (tests/tflite on sys.path)

from edgedl.kernels.cpu.resize_i8 import (
    resize_bilinear_int8,
    resize_bilinear_int8_reference,
    resize_bilinear_int8_tables,
    tflite_reads_out_of_bounds,
)

MODES = {"default": (False, False), "align_corners": (True, False), "half_pixel": (False, True)}


def _model(nhwc, oh, ow, align, half, q_in, q_out, dtype=np.int8) -> bytes:
    """One RESIZE_BILINEAR from an NHWC input to (N, oh, ow, C), size a constant."""
    b = Builder()
    x = b.tensor("input", nhwc, dtype, quant=q_in)
    y = b.tensor("y", (nhwc[0], oh, ow, nhwc[3]), dtype, quant=q_out)
    b.op("RESIZE_BILINEAR", [x, b.const("size", np.array([oh, ow], np.int32), np.int32)], [y],
         "ResizeBilinearOptions", alignCorners=align, halfPixelCenters=half)
    return b.build([x], [y])


def _tflite_nchw(x_nchw, oh, ow, align, half, q_in=(0.05, -3), q_out=None, dtype=np.int8):
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    data = _model(x_nhwc.shape, oh, ow, align, half, q_in, q_in if q_out is None else q_out, dtype)
    return interpret(data, [x_nhwc], reference=True)[0].transpose(0, 3, 1, 2)


def _cases():
    """(n, c, h, w, oh, ow, mode): fixed geometries (non-integer ratios, 1x1 inputs and outputs, exact 2x
    upsampling with its ties, identity, downsampling) in every corner mode, then random ones."""
    fixed = [(1, 3, 5, 7, 13, 4), (2, 2, 1, 1, 3, 5), (1, 4, 4, 4, 8, 8), (1, 3, 9, 11, 4, 3)]
    cases = [g + (m,) for g in fixed for m in MODES]
    cases += [(1, 2, 1, 1, 1, 1, "default"), (1, 2, 6, 5, 6, 5, "half_pixel"), (1, 1, 3, 8, 1, 1, "align_corners")]
    rng = np.random.default_rng(7)
    modes = list(MODES)
    for i in range(12):
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 6))
        h, w, oh, ow = (int(v) for v in rng.integers(1, 17, 4))
        cases.append((n, c, h, w, oh, ow, modes[i % 3]))
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: "{}x{}x{}x{}->{}x{}-{}".format(*c))
def test_int8_resize_bilinear_is_bit_exact(case):
    n, c, h, w, oh, ow, mode = case
    align, half = MODES[mode]
    assert not tflite_reads_out_of_bounds(h, w, oh, ow, align, half)
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.integers(-128, 128, (n, c, h, w)).astype(np.int8)
    q = (float(rng.random() * 0.1 + 0.005), int(rng.integers(-128, 128)))  # the same in and out
    want = _tflite_nchw(x, oh, ow, align, half, q)
    assert want.dtype == np.int8 and want.shape == (n, c, oh, ow)
    ref = resize_bilinear_int8_reference(x, oh, ow, align, half)
    np.testing.assert_array_equal(ref, want)
    out = np.full((n, c, oh, ow), 99, np.int8)
    assert resize_bilinear_int8(x, out, align, half) is out
    np.testing.assert_array_equal(out, want)


def test_ties_round_away_from_zero():
    """2x upsampling puts taps at exactly half: -1.5 -> -2 and 0.5 -> 1 (TFLite's default double rounding,
    ``(acc +- 2^19) / 2^20``); a TFLITE_SINGLE_ROUNDING build would round -1.5 up to -1."""
    x = np.array([-1, -2, 3, 4], np.int8).reshape(1, 1, 1, 4)
    want = _tflite_nchw(x, 1, 8, False, False)
    np.testing.assert_array_equal(want.ravel(), [-1, -2, -2, 1, 3, 4, 4, 4])
    np.testing.assert_array_equal(resize_bilinear_int8_reference(x, 1, 8, False, False), want)
    np.testing.assert_array_equal(resize_bilinear_int8(x, np.empty((1, 1, 1, 8), np.int8), False, False), want)
    single = [-1, -1, -2, 1, 3, 4, 4, 4]
    np.testing.assert_array_equal(resize_bilinear_int8_reference(x, 1, 8, False, False, single_rounding=True).ravel(),
                                  single)
    np.testing.assert_array_equal(
        resize_bilinear_int8(x, np.empty((1, 1, 1, 8), np.int8), False, False, single_rounding=True).ravel(), single)


def test_tflite_ignores_the_quantization():
    """TFLite's resize_bilinear.cc checks no scale or zero point: an output quantized differently still gets the
    input's codes interpolated, unchanged (so equal quantization is the importer's check, not TFLite's)."""
    x = np.random.default_rng(3).integers(-128, 128, (1, 3, 5, 7)).astype(np.int8)
    same = _tflite_nchw(x, 13, 4, False, True, (0.05, -3))
    other = _tflite_nchw(x, 13, 4, False, True, (0.05, -3), (0.4, 17))
    np.testing.assert_array_equal(same, other)


def test_large_plane_runs_parallel_and_matches_the_reference():
    x = np.random.default_rng(4).integers(-128, 128, (2, 8, 40, 50)).astype(np.int8)
    for align, half in MODES.values():
        ref = resize_bilinear_int8_reference(x, 97, 61, align, half)
        np.testing.assert_array_equal(resize_bilinear_int8(x, np.empty_like(ref), align, half), ref)


def test_uint8_runs_the_integer_arithmetic_which_is_not_tflites_uint8_path():
    """uint8 follows the same integer arithmetic here; TFLite's reference uint8 kernel is the float one and
    differs by one in places (an importer must not send uint8 RESIZE_BILINEAR here for bit-exactness)."""
    x = np.random.default_rng(5).integers(0, 256, (1, 3, 5, 7)).astype(np.uint8)
    ref = resize_bilinear_int8_reference(x, 13, 4, True, False)
    assert ref.dtype == np.uint8
    np.testing.assert_array_equal(resize_bilinear_int8(x, np.empty_like(ref), True, False), ref)
    tfl = _tflite_nchw(x, 13, 4, True, False, (0.05, 3), dtype=np.uint8)
    assert 0 < np.abs(tfl.astype(int) - ref).max() <= 1


def test_tflite_reads_past_the_input_on_some_large_upsamplings():
    """2 -> 110 columns: the rounded 10-bit scale overshoots, TFLite's unclamped low tap reads the next row's
    (or beyond the tensor's) first pixel for the last columns; edgedl gives the edge value there, the same bits
    everywhere else."""
    assert tflite_reads_out_of_bounds(2, 2, 2, 110, False, False)
    assert not tflite_reads_out_of_bounds(2, 2, 2, 110, True, False)
    x = np.array([[10, 20], [30, 40]], np.int8).reshape(1, 1, 2, 2)
    want = _tflite_nchw(x, 2, 110, False, False)
    got = resize_bilinear_int8(x, np.empty((1, 1, 2, 110), np.int8), False, False)
    s = (1024 * 2 + 55) // 110
    inside = np.arange(110) * s // 1024 <= 1  # columns whose low tap TFLite keeps inside the row
    assert not inside.all()
    np.testing.assert_array_equal(got[..., inside], want[..., inside])
    np.testing.assert_array_equal(got[0, 0, :, ~inside], np.array([[20, 40]] * (~inside).sum()))
    np.testing.assert_array_equal(got, resize_bilinear_int8_reference(x, 2, 110, False, False))


def test_tables():
    lo, hi, w0, w1 = resize_bilinear_int8_tables(5, 13, False, True)
    assert all(t.dtype == np.int64 and t.shape == (13,) for t in (lo, hi, w0, w1))
    assert (lo >= 0).all() and (hi <= 4).all() and (w0 + w1 == 1024).all()
    assert lo[0] == hi[0] == 0 and w1[0] < 0  # half-pixel centers start before the first pixel
    with pytest.raises(ValueError):
        lo[0] = 1  # cached: read-only


def test_rejects_bad_arguments():
    x = np.zeros((1, 2, 3, 4), np.int8)
    ok = np.zeros((1, 2, 5, 6), np.int8)
    resize_bilinear_int8(x, ok, False, False)
    bad = [
        (x.astype(np.float32), ok.astype(np.float32)),  # not 8-bit
        (x.astype(np.int16), ok.astype(np.int16)),
        (x, ok.astype(np.uint8)),  # dtypes differ
        (x, np.zeros((1, 3, 5, 6), np.int8)),  # channels differ
        (x, np.zeros((2, 2, 5, 6), np.int8)),  # batch differs
        (x[0], ok[0]),  # 3-D
        (x, np.zeros((1, 2, 5), np.int8)),
        (x, np.zeros((1, 2, 0, 6), np.int8)),  # empty output size
        (np.zeros((1, 2, 0, 4), np.int8), ok),  # empty input size
        (x, np.zeros((1, 2, 6, 10), np.int8)[:, :, :, ::2]),  # not contiguous
        (x.tolist(), ok),
    ]
    for xi, oi in bad:
        with pytest.raises(ValueError):
            resize_bilinear_int8(xi, oi, False, False)
    with pytest.raises(ValueError, match="align_corners"):
        resize_bilinear_int8(x, ok, True, True)
    with pytest.raises(ValueError):
        resize_bilinear_int8_reference(x, 5, 6, True, True)
    with pytest.raises(ValueError):
        resize_bilinear_int8_reference(x.astype(np.float32), 5, 6, False, False)
    with pytest.raises(ValueError):
        resize_bilinear_int8_reference(x, 0, 6, False, False)
    with pytest.raises(ValueError):
        resize_bilinear_int8_reference(x[0], 5, 6, False, False)
