"""Build .tflite files in tests with the TFLite schema's object API (``ai_edge_litert.schema_py_generated``) and
run them on the TFLite interpreter (the reference)."""
from __future__ import annotations

import numpy as np
import pytest

schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
flatbuffers = pytest.importorskip("flatbuffers")

_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 2, np.dtype(np.uint8): 3,
          np.dtype(np.int64): 4, np.dtype(np.bool_): 6, np.dtype(np.int16): 7, np.dtype(np.int8): 9}


class Builder:
    """Tensors, buffers and operators of one subgraph; :meth:`build` gives the file's bytes."""

    def __init__(self):
        self.tensors: list = []
        self.buffers = [schema.BufferT()]  # buffer 0: the empty buffer of activations
        self.ops: list = []
        self.codes: dict[int, int] = {}
        self.subgraphs: list = []
        #: operator versions other than 1 (builtin code -> version): some kernels register only later versions
        self.versions: dict[int, int] = {}

    def tensor(self, name: str, shape, dtype=np.float32, data=None, quant=None) -> int:
        """A tensor (a constant with ``data``); ``quant``: (scales, zero points, quantized dimension)."""
        t = schema.TensorT()
        t.name, t.shape = name, list(shape)
        resource = isinstance(dtype, str) and dtype == "resource"
        t.type = schema.TensorType.RESOURCE if resource else _TYPES[np.dtype(dtype)]
        if quant is not None:
            q = schema.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(quant[0])]
            q.zeroPoint = [int(v) for v in np.atleast_1d(quant[1])]
            q.quantizedDimension = int(quant[2]) if len(quant) > 2 else 0
            t.quantization = q
        t.buffer = 0
        if data is not None:
            b = schema.BufferT()
            b.data = list(np.ascontiguousarray(data, dtype).tobytes())
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, value, dtype=np.float32, quant=None) -> int:
        value = np.asarray(value, dtype)
        return self.tensor(name, value.shape, dtype, value, quant)

    def op(self, code: str, inputs, outputs, options: str | None = None, **fields) -> None:
        builtin = getattr(schema.BuiltinOperator, code)
        if builtin not in self.codes:
            self.codes[builtin] = len(self.codes)
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[builtin], list(inputs), list(outputs)
        if options:
            o.builtinOptionsType = getattr(schema.BuiltinOptions, options)
            opts = getattr(schema, f"{options}T")()
            for k, v in fields.items():
                setattr(opts, k, v)
            o.builtinOptions = opts
        self.ops.append(o)

    def custom(self, code: str, inputs, outputs, options: bytes = b"") -> None:
        """A custom operator (``code``) with raw custom options."""
        key = ("custom", code)
        if key not in self.codes:
            self.codes[key] = len(self.codes)
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[key], list(inputs), list(outputs)
        o.customOptions = list(options)
        self.ops.append(o)

    def subgraph(self, inputs, outputs) -> int:
        """Close the subgraph built so far (with these inputs and outputs) and start the next one; returns the
        closed one's index (:meth:`build` closes the last)."""
        g = schema.SubGraphT()
        g.tensors, g.inputs, g.outputs, g.operators = self.tensors, list(inputs), list(outputs), self.ops
        g.name = f"subgraph{len(self.subgraphs)}"
        self.subgraphs.append(g)
        self.tensors, self.ops = [], []
        return len(self.subgraphs)  # its index in the file: the main subgraph comes first

    def build(self, inputs, outputs) -> bytes:
        codes = []
        for builtin, _ in sorted(self.codes.items(), key=lambda kv: kv[1]):
            c = schema.OperatorCodeT()
            if isinstance(builtin, tuple):  # a custom operator
                builtin, c.customCode = schema.BuiltinOperator.CUSTOM, builtin[1]
            c.builtinCode = builtin
            c.deprecatedBuiltinCode = min(builtin, 127)
            c.version = self.versions.get(builtin, 1)
            codes.append(c)
        g = schema.SubGraphT()
        g.tensors, g.inputs, g.outputs, g.operators = self.tensors, list(inputs), list(outputs), self.ops
        g.name = "main"
        m = schema.ModelT()
        # the last subgraph built is the main one (subgraph 0); the ones closed by subgraph() follow it
        m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, codes, [g] + self.subgraphs, self.buffers
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


#: quantization of the int8 convolution output in :func:`int8_conv_model` (what data movement after it keeps)
CONV_OUT_Q = (0.06, -5)


def int8_conv_model(tail, in_shape=(1, 6, 6, 3), channels: int = 4, seed: int = 9) -> bytes:
    """input (float32) -> QUANTIZE (0.05, 3) -> CONV_2D 3x3 SAME int8 (per-channel weights, int32 bias; edgedl runs
    it in NCHW), output quantized :data:`CONV_OUT_Q` -> ``tail(builder, conv_out)``, which returns (tensor, shape):
    that tensor DEQUANTIZEd to a float32 output "y" of ``shape``, or, with shape None, the tensor itself as the
    model's output."""
    b = Builder()
    rng = np.random.default_rng(seed)
    n, h, w, c_in = in_shape
    x = b.tensor("input", in_shape)
    q = b.tensor("q", in_shape, np.int8, quant=(0.05, 3))
    b.op("QUANTIZE", [x], [q])
    ws = (rng.random(channels) * 0.02 + 0.01).astype(np.float32)
    zeros = np.zeros(channels, np.int64)
    weights = b.const("w", rng.integers(-127, 128, (channels, 3, 3, c_in)), np.int8, quant=(ws, zeros, 0))
    bias = b.const("bias", rng.integers(-200, 200, channels), np.int32, quant=(0.05 * ws, zeros, 0))
    c = b.tensor("c", (n, h, w, channels), np.int8, quant=CONV_OUT_Q)
    b.op("CONV_2D", [q, weights, bias], [c], "Conv2DOptions", padding=schema.Padding.SAME, strideW=1, strideH=1,
         dilationWFactor=1, dilationHFactor=1)
    r, shape = tail(b, c)
    if shape is None:
        return b.build([x], [r])
    y = b.tensor("y", shape)
    b.op("DEQUANTIZE", [r], [y])
    return b.build([x], [y])


def interpret(data: bytes, feeds: list[np.ndarray], reference: bool = False) -> list[np.ndarray]:
    """The TFLite interpreter's outputs for ``feeds`` (in input order); ``reference``: its reference kernels
    (``BUILTIN_REF``, what int8 results are compared with bit for bit), else the default resolver."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    it = Interpreter(model_content=data, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]
