"""TFLite's int8 LOG_SOFTMAX (edgedl/quant/tflite_log_softmax.py) against the interpreter's reference kernels
(ai-edge-litert, BUILTIN_REF), bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from tflite_builder import Builder, interpret  # noqa: E402  (tests/tflite on sys.path)

from edgedl.quant.tflite_log_softmax import (
    MAX_SAFE_DEPTH,
    OUTPUT_SCALE,
    OUTPUT_ZERO_POINT,
    log_softmax_int8,
    log_softmax_params,
)

DEPTHS = (1, 2, 7, 10, 64, 1000)


def _model(shape, scale: float, zero_point: int) -> bytes:
    """input (int8, scale, zero point) -> LOG_SOFTMAX -> y (int8, the fixed 16/256 and 127 TFLite requires)."""
    b = Builder()
    x = b.tensor("input", shape, np.int8, quant=(scale, zero_point))
    y = b.tensor("y", shape, np.int8, quant=(OUTPUT_SCALE, OUTPUT_ZERO_POINT))
    b.op("LOG_SOFTMAX", [x], [y], "LogSoftmaxOptions")
    return b.build([x], [y])


def _same_bits(x: np.ndarray, scale: float, zero_point: int, msg: str = "") -> None:
    want = interpret(_model(x.shape, scale, zero_point), [x], reference=True)[0]
    got = log_softmax_int8(x, scale, zero_point)
    assert got.dtype == np.int8 and got.shape == x.shape
    np.testing.assert_array_equal(got, want, err_msg=f"scale {scale}, zero point {zero_point} {msg}")


def _random_case(seed: int):
    """Scale in [0.005, 0.5], zero point in [-30, 30], one of DEPTHS, rank 2 or 4; the codes drawn either over
    the whole int8 range or clustered (many elements near the row maximum: a large sum of exponentials)."""
    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(0.005, 0.5))
    zero_point = int(rng.integers(-30, 31))
    depth = DEPTHS[seed % len(DEPTHS)]
    shape = (3, depth) if (seed // len(DEPTHS)) % 2 == 0 else (1, 2, 3, depth)
    if seed % 3 == 0:
        x = rng.integers(-128, 128, shape)
    else:
        x = np.round(rng.normal(rng.integers(-100, 100), rng.uniform(0.5, 40), shape))
    return np.clip(x, -128, 127).astype(np.int8), scale, zero_point


@pytest.mark.parametrize("seed", range(42))
def test_random_inputs_are_bit_exact(seed):
    x, scale, zero_point = _random_case(seed)
    _same_bits(x, scale, zero_point, f"seed {seed}, shape {x.shape}")


@pytest.mark.parametrize("depth", DEPTHS + (MAX_SAFE_DEPTH,))
def test_rows_of_equal_codes(depth):
    """Every element at the maximum: log(depth) from the fixed-point log (up to 4095 elements, the most whose
    Q12.19 sum fits int32)."""
    codes = np.array([-128, -1, 0, 5, 127], np.int64)
    x = np.repeat(codes[:, None], depth, axis=1).astype(np.int8)  # (5, depth)
    for scale, zero_point in ((0.005, 0), (0.1, -7), (0.5, 30)):
        _same_bits(x, scale, zero_point, f"depth {depth}")


@pytest.mark.parametrize("depth", (2, 7, 10, 64, 1000))
def test_rows_with_a_single_maximum(depth):
    """One element above the rest, by one code and by the whole range, at the start, middle and end."""
    rows = []
    for position in (0, depth // 2, depth - 1):
        for low, high in ((-128, 127), (126, 127), (-1, 0), (-128, -127), (40, 90)):
            row = np.full(depth, low, np.int64)
            row[position] = high
            rows.append(row)
    x = np.array(rows, np.int8).reshape(3, 5, 1, depth)  # rank 4
    for scale, zero_point in ((0.005, 3), (0.03, -30), (0.2, 11), (0.5, -1)):
        _same_bits(x, scale, zero_point, f"depth {depth}")


def test_extreme_codes():
    """Rows of only -128 and 127 codes in several mixes, and every int8 code in one row."""
    rng = np.random.default_rng(7)
    mixes = [rng.random(64) < p for p in (0.02, 0.3, 0.5, 0.9, 1.0, 0.0)]
    x = np.where(np.array(mixes), 127, -128).astype(np.int8)  # (6, 64)
    every = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
    for scale, zero_point in ((0.005, -30), (0.05, 0), (0.5, 30)):
        _same_bits(x, scale, zero_point, "-128/127 rows")
        _same_bits(every, scale, zero_point, "every code")
        _same_bits(every[:, ::-1].copy(), scale, zero_point, "every code, reversed")


@pytest.mark.parametrize("scale", (1e-4, 1.0, 4.0, 40.0))
def test_scales_outside_the_usual_range(scale):
    """A tiny scale (a large input radius) and large ones (most codes beyond the radius; from 32 on the real
    multiplier is capped at 2^31 - 1), ranks 1 and 3."""
    rng = np.random.default_rng(int(scale * 1000))
    _same_bits(rng.integers(-128, 128, (64,)).astype(np.int8), scale, 2, "rank 1")
    x = np.clip(np.round(rng.normal(0, 3, (2, 4, 100))), -128, 127).astype(np.int8)
    _same_bits(x, scale, -5, "rank 3")


def test_prepare_parameters_and_limits():
    """The reverse multiplier undoes the input multiplier; a scale whose multiplier is not above one (TFLite's
    Prepare aborts there) and a row whose sum of exponentials overflows int32 are errors, not guesses."""
    m0, shift, rev_m0, rev_shift, diff_min = log_softmax_params(0.1)
    assert rev_shift <= 0 < shift and diff_min < 0
    assert abs(m0 * 2.0 ** (shift - 31) * rev_m0 * 2.0 ** (rev_shift - 31) - 1.0) < 2.0 ** -29
    with pytest.raises(ValueError):
        log_softmax_int8(np.zeros((1, 4), np.int8), 1e-9, 0)
    with pytest.raises(ValueError):
        log_softmax_int8(np.zeros((1, MAX_SAFE_DEPTH + 1), np.int8), 0.1, 0)
    ok = np.zeros((1, MAX_SAFE_DEPTH + 1), np.int8)
    ok[0, 0] = 1  # one element above the rest: the sum stays below 2^31
    assert log_softmax_int8(ok, 0.1, 0).shape == ok.shape
    assert log_softmax_int8(np.zeros((0, 5), np.int8), 0.1, 0).shape == (0, 5)
