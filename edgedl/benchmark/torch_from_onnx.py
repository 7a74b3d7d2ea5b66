"""Build a PyTorch module from a float32 ONNX graph, with the graph's weights: the reference network of
``bench_train.py``, so that edgedl and PyTorch train exactly the same model.

Supported: Conv (1-D/2-D, groups, strides, dilations, symmetric or asymmetric pads), BatchNormalization
(inference form with the running statistics or, for the layers whose scale / bias train, training form with
batch statistics, as edgedl's trainer runs them by default), Relu, Clip (constant bounds), HardSwish,
HardSigmoid, Sigmoid, LeakyRelu, Add, Sub, Mul, GlobalAveragePool, MaxPool / AveragePool (2-D), Flatten,
Reshape (constant shape), Gemm, MatMul, Softmax, Identity, Dropout (as in inference). Anything else raises
``NotImplementedError``.

The module interprets the node list in order and drops every intermediate value after its last use, as a
hand-written ``nn.Sequential`` would, so autograd keeps only what the backward needs.

Every float initializer of a layer (Conv/Gemm/MatMul weights and biases, BatchNormalization scale and bias)
is an ``nn.Parameter``; the rest (running statistics, Clip bounds, shapes) are buffers or constants.
:func:`trainable_names` picks the parameters of a policy ("all", "last:K") the way
``edgedl.train.select_trainable`` does (layers in graph order), and :func:`set_trainable` sets
``requires_grad`` and the BatchNormalization modes accordingly. (Running variances update with PyTorch's
unbiased batch variance; this does not change a step's outputs or gradients.)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnx import numpy_helper

__all__ = ["OnnxModule", "trainable_names", "set_trainable", "strip_softmax"]

#: inputs of each op that are layer parameters (trained by "all")
PARAM_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2)}


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def strip_softmax(proto, name: str = "logits"):
    """A copy of ``proto`` without its trailing Softmax: the output becomes the logits (what a
    cross-entropy loss takes)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    last = g.node[-1]
    if last.op_type != "Softmax" or last.output[0] != g.output[0].name:
        return m
    src = last.input[0]
    del g.node[-1]
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == src:
                n.output[i] = name
        for i, o in enumerate(n.input):
            if o == src:
                n.input[i] = name
    g.output[0].name = name
    onnx.checker.check_model(m)
    return m


def _safe(name: str) -> str:
    return "p_" + "".join(ch if ch.isalnum() else "_" for ch in name)


class OnnxModule(torch.nn.Module):
    """The ONNX graph ``proto`` (one input, one output) as a PyTorch module."""

    def __init__(self, proto):
        super().__init__()
        g = proto.graph
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.input_name = g.input[0].name
        self.output_name = g.output[0].name
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in g.node]
        param_names = set()
        for op, ins, _, _ in self.nodes:
            for k in PARAM_INPUTS.get(op, ()):
                if k < len(ins) and ins[k] in inits and inits[ins[k]].dtype == np.float32:
                    param_names.add(ins[k])
        self.key: dict[str, str] = {}
        self.consts: dict[str, object] = {}
        for name, arr in inits.items():
            if name in param_names:
                self.key[name] = _safe(name)
                self.register_parameter(_safe(name), torch.nn.Parameter(torch.from_numpy(arr.copy())))
            elif arr.dtype.kind == "f" and arr.ndim > 0:
                self.key[name] = _safe(name)
                self.register_buffer(_safe(name), torch.from_numpy(arr.copy()))
            else:  # scalars (Clip bounds) and integer shapes: Python constants
                self.consts[name] = arr.tolist()
        self.param_order = [ins[k] for op, ins, _, _ in self.nodes for k in PARAM_INPUTS.get(op, ())
                            if k < len(ins) and ins[k] in param_names]
        # the index of the last node reading each value: the interpreter drops it afterwards
        self.last_use: dict[str, int] = {}
        for idx, (_, ins, _, _) in enumerate(self.nodes):
            for i in ins:
                if i:
                    self.last_use[i] = idx
        for op, _, _, _ in self.nodes:
            if not hasattr(self, "_op_" + op):
                raise NotImplementedError(f"torch_from_onnx: operator {op} is not supported")

    def tensor(self, name: str):
        return getattr(self, self.key[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, object] = {self.input_name: x}
        for idx, (op, ins, outs, attrs) in enumerate(self.nodes):
            args = []
            for i in ins:
                if not i:
                    args.append(None)
                elif i in values:
                    args.append(values[i])
                elif i in self.key:
                    args.append(self.tensor(i))
                else:
                    args.append(self.consts[i])
            res = getattr(self, "_op_" + op)(attrs, *args)
            values[outs[0]] = res
            for i in ins:
                if i and self.last_use[i] == idx and i != self.output_name:
                    values.pop(i, None)
        return values[self.output_name]

    # -- ops -----------------------------------------------------------------------------------------
    @staticmethod
    def _pad(x, pads, nsp, value=0.0):
        begin, end = pads[:nsp], pads[nsp:]
        if list(begin) == list(end):
            return x, tuple(begin)
        flat = []
        for i in reversed(range(nsp)):
            flat += [begin[i], end[i]]
        return F.pad(x, flat, value=value), (0,) * nsp

    def _op_Conv(self, a, x, w, b=None):
        nsp = x.dim() - 2
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise NotImplementedError("Conv auto_pad")
        x, pad = self._pad(x, a.get("pads", [0] * 2 * nsp), nsp)
        conv = F.conv2d if nsp == 2 else F.conv1d
        return conv(x, w, b, stride=tuple(a.get("strides", [1] * nsp)), padding=pad,
                    dilation=tuple(a.get("dilations", [1] * nsp)), groups=a.get("group", 1))

    def _op_BatchNormalization(self, a, x, scale, bias, mean, var):
        # training mode (set_trainable): batch statistics, running statistics updated in place (ONNX's
        # momentum m weighs the old value: PyTorch's momentum is 1 - m)
        train = bool(a.get("_train", a.get("training_mode", 0)))
        return F.batch_norm(x, mean, var, scale, bias, training=train, momentum=1.0 - a.get("momentum", 0.9),
                            eps=a.get("epsilon", 1e-5))

    def _op_Relu(self, a, x):
        return F.relu(x)

    def _op_Clip(self, a, x, lo=None, hi=None):
        if (lo, hi) == (0.0, 6.0):
            return F.relu6(x)
        return torch.clamp(x, lo, hi)

    def _op_HardSwish(self, a, x):
        return F.hardswish(x)

    def _op_HardSigmoid(self, a, x):
        alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        return torch.clamp(alpha * x + beta, 0.0, 1.0)

    def _op_Sigmoid(self, a, x):
        return torch.sigmoid(x)

    def _op_LeakyRelu(self, a, x):
        return F.leaky_relu(x, a.get("alpha", 0.01))

    def _op_Add(self, a, x, y):
        return x + y

    def _op_Sub(self, a, x, y):
        return x - y

    def _op_Mul(self, a, x, y):
        return x * y

    def _op_Identity(self, a, x):
        return x

    def _op_Dropout(self, a, x, *rest):
        return x

    def _op_GlobalAveragePool(self, a, x):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)

    def _op_MaxPool(self, a, x):
        if a.get("dilations", [1, 1]) != [1, 1] or a.get("ceil_mode", 0) or x.dim() != 4:
            raise NotImplementedError("MaxPool with dilations, ceil_mode or not 2-D")
        x, pad = self._pad(x, a.get("pads", [0] * 4), 2, value=float("-inf"))
        k = tuple(a["kernel_shape"])
        return F.max_pool2d(x, k, stride=tuple(a.get("strides", k)), padding=pad)

    def _op_AveragePool(self, a, x):
        if a.get("ceil_mode", 0) or x.dim() != 4:
            raise NotImplementedError("AveragePool with ceil_mode or not 2-D")
        pads = a.get("pads", [0] * 4)
        if pads[:2] != pads[2:]:
            raise NotImplementedError("AveragePool with asymmetric pads")
        k = tuple(a["kernel_shape"])
        return F.avg_pool2d(x, k, stride=tuple(a.get("strides", k)), padding=tuple(pads[:2]),
                            count_include_pad=bool(a.get("count_include_pad", 0)))

    def _op_Flatten(self, a, x):
        axis = a.get("axis", 1)
        axis = axis % x.dim() if x.dim() else 0
        lead = int(np.prod(x.shape[:axis])) if axis else 1
        return x.reshape(lead, -1)

    def _op_Reshape(self, a, x, shape):
        shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
        return x.reshape(shape)

    def _op_Gemm(self, a, x, w, b=None):
        alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
        if a.get("transA", 0):
            x = x.t()
        if a.get("transB", 0) and alpha == 1.0 and beta == 1.0:
            return F.linear(x, w, b)
        y = alpha * (x @ (w.t() if a.get("transB", 0) else w))
        return y if b is None else y + beta * b

    def _op_MatMul(self, a, x, w):
        return x @ w

    def _op_Softmax(self, a, x):
        return torch.softmax(x, dim=a.get("axis", -1))


def trainable_names(module: OnnxModule, policy: str) -> list[str]:
    """The ONNX initializer names a policy ("all" or "last:K") trains: the parameters of every layer, or of
    the last K layers that have parameters (graph order, as ``edgedl.train.select_trainable``)."""
    layers: list[list[str]] = []
    for op, ins, _, _ in module.nodes:
        names = [ins[k] for k in PARAM_INPUTS.get(op, ()) if k < len(ins) and ins[k] in module.param_order]
        if names:
            layers.append(names)
    if policy == "all":
        chosen = layers
    elif policy.startswith("last:"):
        chosen = layers[-int(policy[5:]):]
    else:
        raise ValueError(f"unknown policy {policy!r}")
    return list(dict.fromkeys(n for names in chosen for n in names))


def set_trainable(module: OnnxModule, names: list[str], batchnorm: str = "auto") -> list[torch.nn.Parameter]:
    """requires_grad True on the parameters of ``names`` (ONNX names), False on every other; returns them.

    ``batchnorm="auto"`` (edgedl's Trainer default): a BatchNormalization whose scale or bias trains runs in
    training mode (batch statistics, running statistics updated), every other one in inference mode;
    ``"frozen"``: all in inference mode."""
    want = set(names)
    for op, ins, _, attrs in module.nodes:
        if op == "BatchNormalization":
            attrs["_train"] = batchnorm == "auto" and bool(set(ins[1:3]) & want)
    out = []
    for onnx_name in module.param_order:
        p = module.tensor(onnx_name)
        p.requires_grad_(onnx_name in want)
        if onnx_name in want:
            out.append(p)
    return out
