"""Backward of ConvTranspose against float64 finite differences (tests/train/gradcheck.py) and 1 vs N threads
bitwise: groups (one input channel per group included), strides, dilations, pads / auto_pad,
output_padding, output_shape, 1-D and 2-D, with and without bias, subsets of the gradients; and a small model
with a ConvTranspose layer trained by edgedl.Trainer."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from gradcheck import check_backward, make_op
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl import EdgeDLError


def _r(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# (x shape, w shape (C, M/group, k...), attributes)
CASES = [
    ((2, 3, 4, 5), (3, 2, 3, 3), {}),
    ((1, 4, 3, 4), (4, 3, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 2, 1]}),
    ((2, 3, 4, 4), (3, 2, 3, 3), {"dilations": [2, 1], "strides": [1, 2], "pads": [2, 1, 1, 0]}),
    ((1, 6, 3, 3), (6, 2, 2, 2), {"group": 3, "strides": [2, 2]}),                                  # 2 in / group
    ((1, 4, 4, 4), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),            # depthwise
    ((2, 3, 3, 4), (3, 2, 3, 3), {"group": 3, "strides": [2, 2], "output_padding": [1, 0],
                                  "dilations": [1, 2]}),                                            # multiplier 2
    ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [3, 2], "output_padding": [2, 1], "pads": [0, 1, 1, 0]}),
    ((1, 2, 3, 3), (2, 2, 2, 2), {"dilations": [3, 2], "output_padding": [2, 1]}),           # out_pad >= stride
    ((1, 2, 3, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [6, 8]}),
    ((1, 2, 3, 3), (2, 2, 2, 2), {"strides": [2, 2], "output_shape": [5, 5], "auto_pad": "SAME_UPPER"}),
    ((2, 2, 3, 3), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 3, 2), (2, 2, 3, 2), {"strides": [2, 3], "auto_pad": "VALID"}),
    ((2, 3, 5), (3, 2, 3), {"strides": [2], "pads": [1, 2], "output_padding": [1]}),                # 1-D
    ((1, 4, 6), (4, 1, 3), {"group": 4, "dilations": [2], "pads": [1, 0]}),                         # 1-D depthwise
    ((1, 4, 4), (4, 2, 3), {"group": 2, "strides": [2], "output_shape": [8]}),                      # 1-D
]


def _inputs(x_shape, w_shape, attrs, bias, seed=0):
    rng = np.random.default_rng(seed + len(x_shape) * 7 + w_shape[0] * 3 + w_shape[1])
    ins = [_r(rng, *x_shape), _r(rng, *w_shape)]
    if bias:
        ins.append(_r(rng, w_shape[1] * attrs.get("group", 1)))
    return ins


@pytest.fixture(params=["serial", "parallel"])
def kernels(request, monkeypatch):
    """Serial kernels at these small sizes; "parallel" forces the prange variants (and the split GEMM), so
    check_backward's 1 vs N threads comparison covers them."""
    if request.param == "parallel":
        from edgedl.kernels.cpu import config

        monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(config, "GEMM_PARALLEL_MIN_WORK", 0)
    return request.param


@pytest.mark.parametrize("x_shape,w_shape,attrs", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_backward(x_shape, w_shape, attrs, bias, kernels):
    check_backward("ConvTranspose", _inputs(x_shape, w_shape, attrs, bias), attrs)


@pytest.mark.parametrize("x_shape,w_shape,attrs", [CASES[1], CASES[4], CASES[8], CASES[12]])
@pytest.mark.parametrize("wrt", [[0], [1], [2], [1, 2]], ids=["x", "w", "b", "w+b"])
def test_conv_transpose_backward_subsets(x_shape, w_shape, attrs, wrt):
    ins = _inputs(x_shape, w_shape, attrs, True, seed=1)
    got = check_backward("ConvTranspose", ins, attrs, wrt=wrt)
    for i in range(3):
        if i not in wrt:
            assert got[i] is None, f"input {i} was not asked for"


def test_conv_transpose_backward_without_output_gradient_is_zero():
    ins = _inputs((1, 2, 3, 3), (2, 3, 3, 3), {}, True)
    op, _, _ = make_op("ConvTranspose", ins, {"strides": [2, 2]})
    got = op.backward([None], ins, [None], [True, True, True])
    for g, x in zip(got, ins):
        assert g.shape == x.shape and not g.any()


def test_conv_transpose_backward_rejects_what_it_cannot_do():
    ins = _inputs((1, 2, 3, 3), (2, 3, 3, 3), {}, False)
    op, _, outs = make_op("ConvTranspose", ins, {"strides": [2, 2]})
    with pytest.raises(EdgeDLError, match="output gradient"):
        op.backward([np.zeros((1, 3, 6, 6), np.float32)], ins, [None], [True, True])
    op, _, _ = make_op("ConvTranspose", ins, {"strides": [2, 2], "_activation": ("Relu", 0.0, 0.0)})
    assert op.act[0]
    with pytest.raises(EdgeDLError, match="fused activation"):
        op.backward([np.zeros(outs[0].shape, np.float32)], ins, [None], [True, True])
    # an output_shape past the full output gives negative pads
    op, _, outs = make_op("ConvTranspose", ins, {"strides": [2, 2], "output_shape": [8, 9]})
    with pytest.raises(EdgeDLError, match="output_shape"):
        op.backward([np.zeros(outs[0].shape, np.float32)], ins, [None], [True, True])
    x3 = np.zeros((1, 2, 2, 2, 2), np.float32)
    op, _, outs = make_op("ConvTranspose", [x3, np.zeros((2, 1, 2, 2, 2), np.float32)], {})
    with pytest.raises(EdgeDLError, match="1-D and 2-D"):
        op.backward([np.zeros(outs[0].shape, np.float32)], [x3, None], [None], [True, False])


def _decoder_model(seed: int = 0) -> onnx.ModelProto:
    """(N, 1, 6, 6) -> Conv 4 3x3 stride 2 -> Relu -> ConvTranspose 3 (group 1) 3x3 stride 2, output_padding 1
    -> Relu -> ConvTranspose depthwise 2x2 -> Flatten -> Gemm 3."""
    rng = np.random.default_rng(seed)
    shapes = {"w1": (4, 1, 3, 3), "w2": (4, 3, 3, 3), "w3": (3, 1, 2, 2), "w4": (3, 3 * 7 * 7)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.4).astype(np.float32), k) for k, s in shapes.items()]
    inits += [numpy_helper.from_array(np.zeros(n, np.float32), b) for b, n in (("b1", 4), ("b2", 3), ("b4", 3))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "w2", "b2"], ["t1"], strides=[2, 2], pads=[1, 1, 1, 1],
                         output_padding=[1, 1]),
        helper.make_node("Relu", ["t1"], ["r2"]),
        helper.make_node("ConvTranspose", ["r2", "w3"], ["t2"], group=3),
        helper.make_node("Flatten", ["t2"], ["f"]),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["logits"], transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph(nodes, "decoder", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_trainer_trains_a_model_with_conv_transpose_layers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 48).astype(np.int64)
    proto = _decoder_model()
    before = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    model = edgedl.load(proto)
    trainer = edgedl.Trainer(model, loss="cross_entropy", optimizer="adam", lr=1e-2, seed=0)
    assert {"w2", "b2", "w3"} <= set(trainer.trainable)
    hist = trainer.fit(x, y, epochs=5, batch_size=16)
    assert hist.loss[-1] < hist.loss[0], hist.loss
    for name in ("w2", "b2", "w3"):  # the ConvTranspose parameters moved
        assert not np.array_equal(trainer.params[name], before[name]), name
