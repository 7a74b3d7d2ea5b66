"""Small reference architectures built with ``onnx.helper`` and seeded random weights.

They exercise the op set the way real edge models do (depthwise convolutions with HardSwish, residual
adds, 1-D temporal convolutions over spectrogram features, NHWC inputs with layout transposes and shape
subgraphs) and serve as examples, test models and benchmark models. Every model has a symbolic batch
dimension ``N``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str] | str:
        outs = [self.name(op.lower() + "_") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k, stride=1, group=1, pad=None, bias=False, bn=True,
             dims: int = 2) -> str:
        ks = (k,) * dims if isinstance(k, int) else tuple(k)
        fan_in = cin // group * int(np.prod(ks))
        w = (self.rng.standard_normal((cout, cin // group, *ks)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        pads = [kk // 2 for kk in ks] * 2 if pad is None else pad
        inputs = [x, self.const(w)]
        if bias:
            inputs.append(self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "b"))
        y = self.node("Conv", inputs, kernel_shape=list(ks), strides=[stride] * dims, pads=pads, group=group)
        return self.bn(y, cout) if bn else y

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        scale = (1.0 + 0.1 * r.standard_normal(c)).astype(np.float32)
        shift = (0.1 * r.standard_normal(c)).astype(np.float32)
        mean = (0.1 * r.standard_normal(c)).astype(np.float32)
        var = (1.0 + 0.1 * np.abs(r.standard_normal(c))).astype(np.float32)
        return self.node("BatchNormalization", [x, self.const(scale, "s"), self.const(shift, "t"),
                                                self.const(mean, "m"), self.const(var, "v")], epsilon=1e-5)

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.const(np.array(0, np.float32), "lo"),
                                  self.const(np.array(6, np.float32), "hi")])

    def dense(self, x: str, cin: int, cout: int) -> str:
        w = (self.rng.standard_normal((cout, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
        return self.node("Gemm", [x, self.const(w), self.const(b, "b")], transB=1)

    def model(self, name: str, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgedl.zoo")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def mobilenet_v2_like(resolution: int = 224, width: float = 1.0, classes: int = 1000,
                      seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2/V3-style: inverted residuals with depthwise 3x3 convs, HardSwish and ReLU6, residual adds."""
    b = _Builder(seed)

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    x = b.conv("input", 3, ch(32), 3, stride=2)
    x = b.node("HardSwish", [x])
    cin = ch(32)
    # (expansion, out channels, repeats, first stride) as in MobileNetV2
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        cout = ch(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = b.relu6(b.conv(y, cin, hidden, 1))
            y = b.node("HardSwish", [b.conv(y, hidden, hidden, 3, stride=stride, group=hidden)])
            y = b.conv(y, hidden, cout, 1)
            x = b.node("Add", [x, y]) if stride == 1 and cin == cout else y
            cin = cout
    x = b.relu6(b.conv(x, cin, 1280, 1))
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.dense(x, 1280, classes)
    b.node("Softmax", [x], axis=-1)
    b.nodes[-1].output[0] = "probabilities"
    return b.model("mobilenet_v2_like",
                   [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, resolution, resolution])],
                   [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])])


def resnet_like(resolution: int = 224, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), classes: int = 1000,
                seed: int = 0) -> onnx.ModelProto:
    """ResNet-18-style: 7x7 stem, max pooling, basic blocks with residual adds and 1x1 projections."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv("input", 3, widths[0], 7, stride=2)])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = widths[0]
    for stage, (cout, n) in enumerate(zip(widths, blocks)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            y = b.node("Relu", [b.conv(x, cin, cout, 3, stride=stride)])
            y = b.conv(y, cout, cout, 3)
            short = x if stride == 1 and cin == cout else b.conv(x, cin, cout, 1, stride=stride, pad=[0] * 4)
            x = b.node("Relu", [b.node("Add", [y, short])])
            cin = cout
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.dense(x, cin, classes)
    b.nodes[-1].output[0] = "logits"
    return b.model("resnet_like",
                   [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, resolution, resolution])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])])


def kws_tc_resnet(frames: int = 98, mfcc: int = 40, classes: int = 12, seed: int = 0) -> onnx.ModelProto:
    """Keyword spotting on a spectrogram (TC-ResNet style): 1-D temporal convolutions with the MFCC
    coefficients as channels, residual blocks with strided 1x1 shortcuts, average pooling, softmax."""
    b = _Builder(seed)
    x = b.conv("spectrogram", mfcc, 16, 3, bn=False, dims=1, pad=[1, 1])
    cin = 16
    for cout in (24, 32, 48):
        y = b.node("Relu", [b.conv(x, cin, cout, 9, stride=2, dims=1, pad=[4, 4])])
        y = b.conv(y, cout, cout, 9, dims=1, pad=[4, 4])
        short = b.node("Relu", [b.conv(x, cin, cout, 1, stride=2, dims=1, pad=[0, 0])])
        x = b.node("Relu", [b.node("Add", [y, short])])
        cin = cout
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.dense(x, cin, classes)
    b.node("Softmax", [x], axis=-1)
    b.nodes[-1].output[0] = "scores"
    return b.model("kws_tc_resnet",
                   [helper.make_tensor_value_info("spectrogram", TensorProto.FLOAT, ["N", mfcc, frames])],
                   [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])])


def nhwc_cnn(height: int = 64, width: int = 64, channels: int = 3, classes: int = 10,
             seed: int = 0) -> onnx.ModelProto:
    """A model exported from an NHWC framework: Transpose to NCHW, convs, pooling, a nearest-neighbour
    upsample, Transpose back, and a Shape->Gather->Concat->Reshape subgraph before the classifier."""
    b = _Builder(seed)
    x = b.node("Transpose", ["image"], perm=[0, 3, 1, 2])
    x = b.node("Relu", [b.conv(x, channels, 16, 3, bias=True, bn=False)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("LeakyRelu", [b.conv(x, 16, 32, 3, stride=2, bias=True, bn=False)], alpha=0.1)
    x = b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=0)
    scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
    x = b.node("Resize", [x, "", scales], mode="nearest")
    x = b.node("Transpose", [x], perm=[0, 2, 3, 1])
    shape = b.node("Shape", [x])
    batch = b.node("Gather", [shape, b.const(np.array([0], np.int64), "i")], axis=0)
    new_shape = b.node("Concat", [batch, b.const(np.array([-1], np.int64), "m1")], axis=0)
    x = b.node("Reshape", [x, new_shape])
    feat = 32 * (((height // 2 + 1) // 2 + 1) // 2 * 2) * (((width // 2 + 1) // 2 + 1) // 2 * 2)
    w = (b.rng.standard_normal((feat, classes)) * np.sqrt(1.0 / feat)).astype(np.float32)
    x = b.node("Add", [b.node("MatMul", [x, b.const(w)]), b.const(np.zeros(classes, np.float32), "b")])
    b.node("Softmax", [x], axis=1)
    b.nodes[-1].output[0] = "probabilities"
    return b.model("nhwc_cnn",
                   [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", height, width, channels])],
                   [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])])


MODELS = {
    "mobilenet_v2_like": mobilenet_v2_like,
    "resnet_like": resnet_like,
    "kws_tc_resnet": kws_tc_resnet,
    "nhwc_cnn": nhwc_cnn,
}


def digits_cnn(channels=(16, 32), classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """An untrained CNN for 8x8 images (scikit-learn's digits), the training example:
    (N, 1, 8, 8) -> Conv c1 3x3 -> Relu -> MaxPool 2 -> Conv c2 3x3 -> Relu -> MaxPool 2 -> Flatten -> Gemm.
    Weights are He-normal (:func:`edgedl.train.init.he_normal`, seeded), biases 0; tensors are named
    w1, b1, w2, b2, w3, b3."""
    from .train.init import he_normal

    c1, c2 = channels
    rng = np.random.default_rng(seed)
    shapes = {"w1": (c1, 1, 3, 3), "w2": (c2, c1, 3, 3), "w3": (classes, c2 * 4)}
    fans = {"w1": 9, "w2": c1 * 9, "w3": c2 * 4}
    inits = []
    for i, w in enumerate(("w1", "w2", "w3"), 1):
        inits.append(numpy_helper.from_array(he_normal(rng, shapes[w], fans[w], 1).astype(np.float32), w))
        inits.append(numpy_helper.from_array(np.zeros(shapes[w][0], np.float32), f"b{i}"))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])
    graph = helper.make_graph(nodes, "digits_cnn", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def transformer_block(tokens: int = 16, dim: int = 32, heads: int = 2, classes: int = 10,
                      seed: int = 0) -> onnx.ModelProto:
    """One pre-norm attention block the way exporters write it (the kind of graph text recognizers such as
    PP-OCR's SVTR neck carry): LayerNorm spelled out (ReduceMean, Sub, Pow, Sqrt, Div), MatMul projections,
    Reshape/Transpose into heads, batched MatMul for scores, Softmax, a Swish MLP (Sigmoid, Mul), a Slice and
    Concat of the class token, Cast of a shape, then mean pooling and a classifier."""
    b = _Builder(seed)
    hd = dim // heads

    def matmul(x, cin, cout):
        w = (b.rng.standard_normal((cin, cout)) * np.sqrt(1.0 / cin)).astype(np.float32)
        return b.node("Add", [b.node("MatMul", [x, b.const(w)]), b.const(np.zeros(cout, np.float32), "b")])

    def layer_norm(x):
        mean = b.node("ReduceMean", [x], axes=[-1], keepdims=1)
        d = b.node("Sub", [x, mean])
        var = b.node("ReduceMean", [b.node("Pow", [d, b.const(np.array(2.0, np.float32), "two")])], axes=[-1],
                     keepdims=1)
        y = b.node("Div", [d, b.node("Sqrt", [b.node("Add", [var, b.const(np.array(1e-5, np.float32), "eps")])])])
        return b.node("Add", [b.node("Mul", [y, b.const(np.ones(dim, np.float32), "g")]),
                              b.const(np.zeros(dim, np.float32), "beta")])

    x = "tokens"
    h = layer_norm(x)
    q, k, v = (matmul(h, dim, dim) for _ in range(3))
    split = b.const(np.array([0, tokens, heads, hd], np.int64), "shape")

    def to_heads(t, perm):
        return b.node("Transpose", [b.node("Reshape", [t, split])], perm=perm)

    scores = b.node("MatMul", [to_heads(q, [0, 2, 1, 3]), to_heads(k, [0, 2, 3, 1])])
    scores = b.node("Div", [scores, b.const(np.array(np.sqrt(hd), np.float32), "scale")])
    att = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), to_heads(v, [0, 2, 1, 3])])
    att = b.node("Reshape", [b.node("Transpose", [att], perm=[0, 2, 1, 3]),
                             b.const(np.array([0, tokens, dim], np.int64), "shape")])
    x = b.node("Add", [x, matmul(att, dim, dim)])
    h = matmul(layer_norm(x), dim, 2 * dim)
    h = b.node("Mul", [h, b.node("Sigmoid", [h])])
    x = b.node("Add", [x, matmul(h, 2 * dim, dim)])
    first = b.node("Slice", [x, b.const(np.array([0], np.int64), "st"), b.const(np.array([1], np.int64), "en"),
                             b.const(np.array([1], np.int64), "ax")])
    rest = b.node("Slice", [x, b.const(np.array([1], np.int64), "st"),
                            b.const(np.array([tokens], np.int64), "en"), b.const(np.array([1], np.int64), "ax")])
    x = b.node("Concat", [rest, first], axis=1)
    count = b.node("Cast", [b.node("Gather", [b.node("Shape", [x]), b.const(np.array(1, np.int64), "i")], axis=0)],
                   to=TensorProto.FLOAT)
    pooled = b.node("Div", [b.node("ReduceSum", [x, b.const(np.array([1], np.int64), "ax")], keepdims=0), count])
    b.node("Gemm", [pooled, b.const((b.rng.standard_normal((classes, dim)) * 0.1).astype(np.float32)),
                    b.const(np.zeros(classes, np.float32), "b")], transB=1)
    b.nodes[-1].output[0] = "logits"
    return b.model("transformer_block",
                   [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", tokens, dim])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])])


def seg_decoder(resolution: int = 32, channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A small encoder-decoder for dense prediction (the shape of text detectors such as PP-OCR's DB head):
    strided convolutions, MaxPool and AveragePool, nearest and bilinear Resize up, Concat skips, a
    ConvTranspose with BatchNormalization, ReLU and a Sigmoid probability map."""
    b = _Builder(seed)
    c = channels
    e1 = b.node("Relu", [b.conv("image", 3, c, 3)])
    e2 = b.node("Relu", [b.conv(b.node("MaxPool", [e1], kernel_shape=[2, 2], strides=[2, 2]), c, 2 * c, 3)])
    e3 = b.node("Relu", [b.conv(b.node("AveragePool", [e2], kernel_shape=[2, 2], strides=[2, 2]), 2 * c, 2 * c, 3)])
    empty = b.const(np.zeros(0, np.float32), "roi")
    up = b.node("Resize", [e3, empty, b.const(np.array([1, 1, 2, 2], np.float32), "sc")], mode="nearest")
    d2 = b.node("Relu", [b.conv(b.node("Concat", [up, e2], axis=1), 4 * c, c, 3)])
    up = b.node("Resize", [d2, empty, b.const(np.array([1, 1, 2, 2], np.float32), "sc")], mode="linear",
                coordinate_transformation_mode="half_pixel")
    d1 = b.node("Concat", [up, e1], axis=1)
    w = (b.rng.standard_normal((2 * c, c, 2, 2)) * 0.2).astype(np.float32)
    t = b.node("ConvTranspose", [d1, b.const(w)], strides=[2, 2], kernel_shape=[2, 2])
    t = b.node("Relu", [b.bn(t, c)])
    b.node("Sigmoid", [b.conv(t, c, 1, 1, bias=True, bn=False)])
    b.nodes[-1].output[0] = "probability"
    r = resolution
    return b.model("seg_decoder",
                   [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, r, r])],
                   [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1, 2 * r, 2 * r])])
