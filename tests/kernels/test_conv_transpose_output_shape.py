"""ConvTranspose with an ``output_shape`` beyond the full output: the output is the full output placed with
zeros around it (the negative pads split as the spec's auto_pad rule says)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl


def _model(w, attrs, shape):
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER"])
@pytest.mark.parametrize("extra", [(1, 0), (3, 2), (0, 5)])
def test_output_shape_beyond_full_output(auto_pad, extra):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    full = edgedl.load(_model(w, {"strides": [2, 1]}, list(x.shape)))(x)
    fh, fw = full.shape[2:]
    out = [fh + extra[0], fw + extra[1]]
    attrs = {"strides": [2, 1], "output_shape": out}
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = auto_pad
    y = edgedl.load(_model(w, attrs, list(x.shape)))(x)
    assert y.shape == (2, 2, *out)
    # total padding -extra: the begin pad is total - total // 2 (NOTSET / SAME_LOWER) or total // 2 (SAME_UPPER)
    begin = [(-e) // 2 if auto_pad == "SAME_UPPER" else -e - (-e) // 2 for e in extra]
    expect = np.zeros_like(y)
    expect[:, :, -begin[0]:-begin[0] + fh, -begin[1]:-begin[1] + fw] = full
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
