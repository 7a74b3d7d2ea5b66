"""Resize/Upsample: tap tables against onnx's reference, kernels against the op's numpy reference."""
import numba
import numpy as np
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_resize import (
    _cubic_coeffs,
    _cubic_coeffs_antialias,
    _interpolate_1d_along_axis,
    _linear_coeffs,
    _linear_coeffs_antialias,
    _nearest_coeffs,
)

import edgedl
from edgedl import testing
from edgedl.errors import ShapeError, UnsupportedOpError
from edgedl.ir import Node
from edgedl.ops.resize import axis_table
from edgedl.registry import lookup

rng = np.random.default_rng(7)


def run_resize(x, attrs=None, scales=None, sizes=None, roi=None, opset=19, op_type="Resize"):
    """Build a Resize op with constant roi/scales/sizes, run its kernel; returns (output, ref, kernel)."""
    if op_type == "Resize" and opset >= 11:
        inputs = [x, None if roi is None else np.asarray(roi, np.float32),
                  None if scales is None else np.asarray(scales, np.float32),
                  None if sizes is None else np.asarray(sizes, np.int64)]
        while inputs[-1] is None:
            inputs.pop()
    else:
        inputs = [x] if scales is None else [x, np.asarray(scales, np.float32)]
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    op = lookup(op_type)(Node(op_type, "r", names, ["y"], dict(attrs or {})), opset)
    (out,), kernel = testing.run_kernel(op, inputs, [None] + inputs[1:])
    return out, op.ref(*inputs)[0], kernel


def onnx_reference(x, attrs, scales=None, sizes=None, roi=None, opset=19):
    inits, names = [], ["x", "", "", ""]
    for k, (name, value, dt) in enumerate([("roi", roi, np.float32), ("scales", scales, np.float32),
                                           ("sizes", sizes, np.int64)]):
        if value is not None:
            inits.append(numpy_helper.from_array(np.asarray(value, dt), name))
            names[k + 1] = name
    while names[-1] == "":
        names.pop()
    node = helper.make_node("Resize", names, ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, x.shape)],
                          [helper.make_empty_tensor_value_info("y")], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(m).run(None, {"x": x})[0]


# --- tables ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,extra", [("nearest", "round_prefer_floor"), ("nearest", "round_prefer_ceil"),
                                        ("nearest", "floor"), ("nearest", "ceil"), ("linear", False),
                                        ("linear", True), ("cubic", False), ("cubic", True)])
@pytest.mark.parametrize("ctm", ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                                 "asymmetric"])
def test_axis_table_matches_onnx_reference(mode, extra, ctm):
    """A table applied to a 1-D signal equals onnx's reference 1-D interpolation."""
    for in_len, scale in [(7, 2.0), (7, 0.5), (5, 1.7), (9, 0.6), (4, 3.0), (1, 2.0)]:
        out_len = int(np.floor(scale * in_len))
        data = rng.standard_normal(in_len)
        if mode == "nearest":
            def coeffs(r, s):
                return _nearest_coeffs(r, mode=extra)
            idx, w, _ = axis_table(mode, ctm, extra, in_len, out_len, scale)
        else:
            base = {"linear": (_linear_coeffs, _linear_coeffs_antialias),
                    "cubic": (_cubic_coeffs, _cubic_coeffs_antialias)}[mode][int(extra)]

            def coeffs(r, s, base=base):
                return base(r, s) if mode == "linear" else base(r, s, A=-0.75)
            idx, w, _ = axis_table(mode, ctm, "round_prefer_floor", in_len, out_len, scale, antialias=extra)
        want = _interpolate_1d_along_axis(data, 0, scale, out_len, coeffs, coordinate_transformation_mode=ctm)
        got = (data[idx] * w).sum(axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert idx.min() >= 0 and idx.max() < in_len


# --- kernels vs reference --------------------------------------------------------------------------------
CASES = [
    # (shape, attrs, scales, sizes, kernel path)
    ((2, 3, 5, 7), {"mode": "nearest"}, [1, 1, 2, 2], None, "2d"),
    ((2, 3, 5, 7), {"mode": "nearest", "nearest_mode": "ceil", "coordinate_transformation_mode": "align_corners"},
     None, [2, 3, 9, 4], "2d"),
    ((1, 4, 6, 6), {"mode": "linear"}, [1, 1, 1.5, 0.5], None, "2d"),
    ((1, 4, 6, 6), {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, None,
     [1, 4, 1, 13], "2d"),
    ((1, 2, 5, 6), {"mode": "linear"}, [1, 1, 1, 2.5], None, "2d"),
    ((1, 2, 7, 5), {"mode": "cubic"}, [1, 1, 2, 0.7], None, "separable"),
    ((1, 2, 9, 9), {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, [1, 1, 0.6, 1.4], None,
     "separable"),
    ((1, 2, 16, 12), {"mode": "linear", "antialias": 1}, [1, 1, 0.4, 0.6], None, "separable"),
    ((3, 5, 7), {"mode": "linear"}, [1, 2, 0.5], None, "separable"),
    ((1, 2, 3, 5, 4), {"mode": "nearest"}, [1, 1, 2, 1.5, 0.5], None, "separable"),
    ((9,), {"mode": "cubic"}, None, [13], "separable"),
    ((1, 6, 5, 3), {"mode": "linear", "axes": [1, 2]}, [2, 0.5], None, "separable"),   # NHWC
    ((1, 2, 6, 9), {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, None, [7, 7],
     "2d"),
]


@pytest.mark.parametrize("shape,attrs,scales,sizes,path", CASES)
def test_kernels_against_reference(shape, attrs, scales, sizes, path):
    x = rng.standard_normal(shape).astype(np.float32)
    y, ref, kernel = run_resize(x, attrs, scales, sizes)
    assert kernel.impl == "numba"
    uses_2d = {"resize_nearest_2d", "resize_linear_2d"} & set(kernel.fn.__code__.co_names)
    assert bool(uses_2d) == (path == "2d")
    if path == "2d":
        assert kernel.scratch_bytes == 0  # one pass, no intermediate
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    want = onnx_reference(x, attrs, scales, sizes)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_tf_crop_and_resize_extrapolation():
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    roi = [0, 0, -0.2, 0.3, 1, 1, 0.8, 1.4]
    for mode in ("nearest", "linear", "cubic"):
        attrs = {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 3.0}
        y, ref, _ = run_resize(x, attrs, sizes=[1, 2, 5, 5], roi=roi)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, onnx_reference(x, attrs, sizes=[1, 2, 5, 5], roi=roi), rtol=1e-4, atol=1e-5)
        assert (y == 3.0).any()


def test_other_dtypes_use_reference():
    x = rng.integers(0, 255, (1, 3, 5, 5)).astype(np.uint8)
    y, ref, kernel = run_resize(x, {"mode": "linear"}, [1, 1, 2, 2])
    assert kernel.impl == "numpy" and y.dtype == np.uint8
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(y, onnx_reference_uint8(x))


def onnx_reference_uint8(x):
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 2, x.shape)],
                          [helper.make_empty_tensor_value_info("y")],
                          [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(m).run(None, {"x": x})[0]


def test_identity_and_large_parallel():
    x = rng.standard_normal((1, 8, 64, 64)).astype(np.float32)
    y, _, _ = run_resize(x, {"mode": "linear"}, [1, 1, 1, 1])
    np.testing.assert_array_equal(y, x)
    saved = numba.get_num_threads()
    try:
        for attrs, scales in [({"mode": "nearest"}, [1, 1, 2, 2]), ({"mode": "linear"}, [1, 1, 2, 2]),
                              ({"mode": "cubic"}, [1, 1, 2, 2]), ({"mode": "linear", "axes": [1, 2]}, [2, 0.5])]:
            outs = []
            for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                numba.set_num_threads(nt)
                y, ref, _ = run_resize(x, attrs, scales)
                outs.append(y)
            np.testing.assert_array_equal(outs[0], outs[1])
            np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5)
    finally:
        numba.set_num_threads(saved)


# --- opset 10 Resize and Upsample ------------------------------------------------------------------------
def test_resize10_and_upsample():
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    y, _, _ = run_resize(x, {"mode": "nearest"}, [1, 1, 2, 3], opset=10)
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(3, axis=3))
    y, _, _ = run_resize(x, {"mode": "nearest"}, [1, 1, 2, 3], opset=9, op_type="Upsample")
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(3, axis=3))
    y, _, _ = run_resize(x, {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 2.0]}, opset=7, op_type="Upsample")
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))
    y, ref, _ = run_resize(x, {"mode": "linear"}, [1, 1, 2, 2], opset=9, op_type="Upsample")
    # asymmetric bilinear: even output pixels are the input pixels
    np.testing.assert_allclose(y[:, :, ::2, ::2], x, rtol=1e-6)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


# --- errors ----------------------------------------------------------------------------------------------
def test_errors():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ShapeError, match="exactly one of scales and sizes"):
        run_resize(x, {}, scales=[1, 1, 2, 2], sizes=[1, 1, 8, 8])
    with pytest.raises(ShapeError, match="scales has 2 values for 4 axes"):
        run_resize(x, {}, scales=[2, 2])
    with pytest.raises(ShapeError, match="positive"):
        run_resize(x, {}, scales=[1, 1, 0, 2])
    with pytest.raises(UnsupportedOpError, match="mode 'area'"):
        run_resize(x, {"mode": "area"}, scales=[1, 1, 2, 2])
    with pytest.raises(UnsupportedOpError, match="coordinate_transformation_mode"):
        run_resize(x, {"coordinate_transformation_mode": "bogus"}, scales=[1, 1, 2, 2])
    with pytest.raises(ShapeError, match="roi"):
        run_resize(x, {"coordinate_transformation_mode": "tf_crop_and_resize"}, scales=[1, 1, 2, 2])
    # scales fed as a graph input: the model specializes its plan on their value (like on shapes)
    node = helper.make_node("Resize", ["x", "", "s"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, (1, 1, 4, 4)),
                                        helper.make_tensor_value_info("s", 1, (4,))],
                          [helper.make_tensor_value_info("y", 1, None)])
    model = edgedl.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]))
    x4 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = model.run({"x": x4, "s": np.array([1, 1, 2, 2], np.float32)})["y"]
    np.testing.assert_array_equal(y, x4.repeat(2, axis=2).repeat(2, axis=3))
    assert model.run({"x": x4, "s": np.array([1, 1, 1, 0.5], np.float32)})["y"].shape == (1, 1, 4, 2)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 2.5], [1, 1, 0.5, 1]])
def test_nearest_resize_of_8bit_tensors_runs_the_gather_kernel(dtype, scales):
    """int8 models resize their 8-bit activations (nearest mode) with the float kernel's gather."""
    from onnx import TensorProto

    tp = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    g = helper.make_graph([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                          "g", [helper.make_tensor_value_info("x", tp, [2, 3, 6, 7])],
                          [helper.make_tensor_value_info("y", tp, None)],
                          [numpy_helper.from_array(np.array(scales, np.float32), "s")])
    m = edgedl.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    info = np.iinfo(dtype)
    x = np.random.default_rng(0).integers(info.min, info.max + 1, (2, 3, 6, 7)).astype(dtype)
    step = m.plan().steps[0]
    assert step.kernel.impl == "numba"
    np.testing.assert_array_equal(m(x), step.op.ref(x, None, np.array(scales, np.float32))[0])
