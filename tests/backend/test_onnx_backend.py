"""onnx's own backend node tests, driven through ``edgedl.backend``.

Every node test of every op in the foundation op set runs here. Exclusions are listed below, each with the
reason; nothing else is skipped.
"""
import re

import onnx.backend.test

import edgedl.backend

OPS = [
    # conv / dense
    "conv", "convtranspose", "basic_conv", "gemm", "matmul",
    # pooling / normalization
    "maxpool", "averagepool", "globalaveragepool", "globalmaxpool", "lrn", "batchnorm",
    # activations
    "relu", "leakyrelu", "prelu", "elu", "clip", "sigmoid", "tanh", "hardsigmoid", "hardswish",
    "softmax", "logsoftmax",
    # elementwise
    "add", "sub", "mul", "div", "sum", "max", "min", "neg", "abs", "sqrt", "exp", "log", "reciprocal",
    # shape and data movement
    "reshape", "flatten", "transpose", "squeeze", "unsqueeze", "concat", "split", "slice", "pad",
    "constant_pad", "edge_pad", "reflect_pad", "wrap_pad", "identity", "dropout", "constant",
    "constantofshape", "shape", "size", "gather", "cast", "reduce_mean", "reduce_max", "reduce_sum",
    "resize", "upsample",
    # comparisons, logic, Where, CastLike, Pow, Erf (used by function-expanded tests and exported masks)
    "equal", "less", "less_equal", "greater", "greater_equal", "and", "or", "xor", "not", "where",
    "castlike", "pow", "erf",
    # quantization at the edges of int8 graphs (int8 work)
    "quantizelinear", "dequantizelinear",
    # int8 ops (QOperator form)
    "qlinearconv", "qlinearmatmul", "convinteger", "matmulinteger", "dynamicquantizelinear", "round", "floor",
    "ceil",
]

# Each exclusion: a regex on the test name, and why it cannot pass.
EXCLUDE = {
    # Types edgedl does not have.
    r"(?i)bfloat16": "bfloat16 tensors are not supported (no numpy dtype)",
    r"(?i)float8|e4m3|e5m2|e8m0": "float8 types are not supported (no numpy dtype)",
    r"(?i)int4|int2|float4": "4-bit and 2-bit integer/float types are not supported",
    r"(?i)string": "string tensors are not supported",
    r"no_saturate": "saturate=0 only matters for float8 casts, which are not supported",
    # Graph features outside the foundation op set.
    r"_sequence|identity_opt": "sequence and optional types are not supported",
    r"_to_sequence": "SplitToSequence is not part of this op set",
    # Model tests (pytorch-converted, pytorch-operator, simple) that need ops outside this op set.
    r"test_shrink|test_sign_model|test_SELU|test_operator_selu|test_Softplus": (
        "Shrink, Sign, Selu and Softplus are not part of this op set"),
    r"expand_shape_model|test_operator_repeat": "Expand and Tile are not part of this op set",
    r"test_gradient_of": "the Gradient op belongs to the training work",
    r"test_operator_symbolic_override": "InstanceNormalization is not part of this op set",
    r"gather_elements": "GatherElements is not part of this op set (the include pattern 'gather' matches it)",
    r"dropout.*training": "training-mode Dropout (random masks) belongs to the training work",
}

_pattern = "|".join(sorted(OPS, key=len, reverse=True))
INCLUDE = [
    rf"^test_({_pattern})(_[A-Za-z0-9_]*)?_cpu$",
    # Model tests shipped with onnx: PyTorch-exported layers and operators, and the 'simple' models.
    r"^test_[A-Z][A-Za-z0-9_]*_cpu$|^test_operator_.*_cpu$",
    r"^test_(log_softmax|softmax_|single_relu|expand_shape|shrink|sign_model|gradient).*_cpu$",
]

backend_test = onnx.backend.test.BackendTest(edgedl.backend, __name__)
for _regex in INCLUDE:
    backend_test.include(_regex)
for _regex in EXCLUDE:
    backend_test.exclude(_regex)

# The runner makes a test for every ONNX case and skips those not included; keep only the included ones
# (exclusions stay, reported as skipped with their reason).
_included = [re.compile(r) for r in INCLUDE]
for _name, _case in backend_test.test_cases.items():
    for _test in [t for t in vars(_case) if t.startswith("test_")]:
        if not any(r.search(_test) for r in _included):
            delattr(_case, _test)
    globals()[_name] = _case
