"""int8 quantization: fixed-point requantization arithmetic (:mod:`.fixed_point`) and the numpy
transcription of TFLite's reference integer arithmetic that int8 kernels are tested against
(:mod:`.reference`)."""
from .fixed_point import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_single,
    quantize_multiplier,
    quantize_multipliers,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

__all__ = ["INT32_MAX", "INT32_MIN", "quantize_multiplier", "quantize_multipliers",
           "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot", "multiply_by_quantized_multiplier",
           "multiply_by_quantized_multiplier_single"]
