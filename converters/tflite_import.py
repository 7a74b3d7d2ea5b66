"""Import a TFLite model (a ``TFL3`` flatbuffer) into an edgedl :class:`~edgedl.ir.Graph` (IR only: no binding,
no optimization; :func:`edgedl.load` takes ``.tflite`` files and bytes by their content).

The flatbuffer is read with the ``tflite`` package (the TFLite schema compiled for Python on ``flatbuffers``);
every index, offset and size it yields is checked against the file before use, and anything malformed (a
truncated file, a buffer or tensor index out of range, a shape that does not match its data, an absurd size)
is an :class:`~edgedl.errors.ModelFormatError`. Operators edgedl cannot import are listed together, with their
tensors, in one :class:`~edgedl.errors.UnsupportedOpError`.

Layout. TFLite is NHWC; edgedl's kernels follow ONNX (NCHW). Each 4-D activation is kept in whichever layout
its producer gave it and converted only where a consumer needs the other one (a Transpose node, made once per
tensor and layout; constants are transposed here, at import): convolutions and pooling produce NCHW, which
element-wise ops, activations, concatenations, pads and reductions keep (their axes and broadcast operands
remapped), and a reshape, a fully connected layer or a graph output turns it back to NHWC. A chain of
convolutions therefore runs in NCHW with transposes only at the model's edges.

Operators so far. Float32 (float16 weights through DEQUANTIZE): CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV,
FULLY_CONNECTED, BATCH_MATMUL, ADD, SUB, MUL, DIV, SQUARED_DIFFERENCE, MAXIMUM, MINIMUM, AVERAGE_POOL_2D,
MAX_POOL_2D, L2_POOL_2D, MEAN, SUM, REDUCE_MAX, REDUCE_MIN, REDUCE_PROD, RESHAPE, SQUEEZE, EXPAND_DIMS, TRANSPOSE,
CONCATENATION, PACK, UNPACK, SPLIT, SPLIT_V, SLICE, STRIDED_SLICE (every mask), PAD, PADV2,
MIRROR_PAD, GATHER, GATHER_ND, TILE, BROADCAST_TO, RESIZE_BILINEAR, RESIZE_NEAREST_NEIGHBOR,
DEPTH_TO_SPACE, SPACE_TO_DEPTH, SOFTMAX, LOG_SOFTMAX, LOGISTIC, TANH, RELU, RELU6, RELU_N1_TO_1, LEAKY_RELU,
PRELU, HARD_SWISH, ELU, GELU, EXP, LOG, SQRT, RSQRT, ABS, NEG, ARG_MAX, ARG_MIN, CAST,
UNIDIRECTIONAL_SEQUENCE_LSTM (an ONNX LSTM; its state tensors carry over between runs), DENSIFY (sparse
weights made dense at import, :mod:`.tflite_sparse`); fused activations
(RELU, RELU6, RELU_N1_TO_1, TANH) become the node after. Full-integer int8: QUANTIZE (ties away from zero),
DEQUANTIZE, CONV_2D and DEPTHWISE_CONV_2D (QLinearConv), FULLY_CONNECTED (com.microsoft QGemm), ADD and MUL
(QLinearAdd / QLinearMul), AVERAGE_POOL_2D (QLinearAveragePool), MEAN over H, W (QLinearGlobalAveragePool,
``_mean="reference"``), SOFTMAX and LOGISTIC (QLinearSoftmax / QLinearSigmoid in TFLite's fixed point), with
TFLite's double-rounding requantization (``_requant="double"``) and fused activations as output ranges
(``_clamp``); data movement on the codes when input and output share their quantization. Any other int8 form
is an error (never float arithmetic on codes).

Streaming state: resource variables (VAR_HANDLE, READ_VARIABLE, ASSIGN_VARIABLE) become ``Graph.state``: a graph
input with the value a run reads, a graph output with the value it leaves, and the initial value that CALL_ONCE's
subgraph assigns (run here; it may only assign constants). :class:`edgedl.Model` feeds and keeps them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgedl.errors import EdgeDLError, ModelFormatError, UnsupportedOpError
from edgedl.ir import Graph, Node, TensorSpec

IDENTIFIER = b"TFL3"
#: the opset of the graphs this importer writes
OPSET = 17
#: at most this many elements in one tensor (a corrupt shape must not become a huge allocation)
MAX_ELEMENTS = 1 << 31

#: TFLite TensorType -> numpy
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
           9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16}
#: element-wise operators that map to one ONNX op of the same layout: TFLite name -> (ONNX op, attributes)
_UNARY = {"RELU": ("Relu", {}), "RELU6": ("Clip", {"bounds": (0.0, 6.0)}),
          "RELU_N1_TO_1": ("Clip", {"bounds": (-1.0, 1.0)}), "TANH": ("Tanh", {}),
          "HARD_SWISH": ("HardSwish", {}), "EXP": ("Exp", {}), "LOG": ("Log", {}), "SQRT": ("Sqrt", {}),
          "ABS": ("Abs", {}), "NEG": ("Neg", {}), "ELU": ("Elu", {"alpha": 1.0})}
#: custom operators edgedl imports: custom code -> handler method
_CUSTOM_OPS = {"Convolution2DTransposeBias": "custom_transpose_conv_bias"}
#: TFLite's RESOURCE tensor type (resource variables)
_RESOURCE = 13
#: numpy -> ONNX TensorProto element type (Cast's "to")
_ONNX_TYPES = {np.dtype(k): v for k, v in ((np.float32, 1), (np.uint8, 2), (np.int8, 3), (np.uint16, 4),
                                           (np.int16, 5), (np.int32, 6), (np.int64, 7), (np.bool_, 9),
                                           (np.float16, 10), (np.float64, 11), (np.uint32, 12), (np.uint64, 13))}
#: NHWC axis -> NCHW axis, and the permutations between the layouts
_NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)
_PADDING = {0: "SAME_UPPER", 1: "VALID"}


def is_tflite(data: bytes) -> bool:
    """Whether ``data`` starts like a TFLite flatbuffer (the ``TFL3`` file identifier at bytes 4..8)."""
    return len(data) >= 8 and bytes(data[4:8]) == IDENTIFIER


def read_tflite_bytes(src) -> bytes | None:
    """The bytes of ``src`` (a path or bytes) when they are a TFLite model, else None."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            head = f.read(8)
            if not is_tflite(head):
                return None
            data = head + f.read()
    else:
        return None
    return data if is_tflite(data) else None


def import_tflite(data: bytes, signature: str | None = None) -> Graph:
    """The edgedl Graph of a TFLite model (see the module docstring): its first subgraph with the tensors' own
    names, or with ``signature`` the subgraph of that SignatureDef, its inputs and outputs under the signature's
    names and in its order. The graph's metadata lists every signature (``Model.signatures``)."""
    try:
        import tflite
    except ImportError as e:  # a dependency of edgedl: a broken install
        raise EdgeDLError(f"reading .tflite files needs the 'tflite' package ({e}): pip install tflite") from None
    try:
        return _Importer(tflite, data, signature).run()
    except EdgeDLError:
        raise
    except (IndexError, ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError,
            MemoryError, __import__("struct").error) as e:
        raise ModelFormatError(f"the .tflite file is malformed or truncated ({type(e).__name__}: {e})") from None


class _Importer:
    def __init__(self, tfl, data: bytes, signature: str | None = None):
        self.tfl, self.data = tfl, data
        if len(data) < 16:
            raise ModelFormatError(f"the .tflite file is truncated ({len(data)} bytes)")
        self.model = tfl.Model.GetRootAs(data, 0)
        n_graphs = self.count(self.model.SubgraphsLength(), "subgraphs")
        if n_graphs < 1:
            raise ModelFormatError("the .tflite file has no subgraph")
        self.signatures = self._signatures(n_graphs)
        self.signature = None
        if signature is not None:
            found = [sig for sig in self.signatures if sig["key"] == signature]
            if not found:
                raise EdgeDLError(f"the model has no signature {signature!r} (it has "
                                  f"{[sig['key'] for sig in self.signatures]})")
            self.signature = found[0]
        self.graph = self.model.Subgraphs(self.signature["subgraph"] if self.signature else 0)
        self.nodes: list[Node] = []
        self.initializers: dict[str, np.ndarray] = {}
        #: tensor index -> (IR name, layout) of its value as produced: layout "nchw" (a 4-D NHWC tensor held
        #: as NCHW) or "plain" (TFLite's own layout)
        self.values: dict[int, tuple[str, str]] = {}
        self._converted: dict[tuple[int, str], str] = {}
        self._count = 0
        #: resource variables: handle tensor -> variable key; key -> initial value (CALL_ONCE), IR name of the
        #: value a run reads, and of the value it leaves (ASSIGN_VARIABLE)
        self.handles: dict[int, str] = {}
        self.initial: dict[str, np.ndarray] = {}
        self.read: dict[str, str] = {}
        self.assigned: dict[str, str] = {}
        self.var_types: dict[str, tuple] = {}
        self._state_inputs: list[tuple[str, str]] = []

    # -- the file's tables ---------------------------------------------------------------------------------
    def _tensors(self):
        g, n_buffers = self.graph, self.count(self.model.BuffersLength(), "buffers")
        self.tensors = []
        #: per tensor: (scales float32, zero points int64, axis) or None
        self.quant: list = []
        seen: set[str] = set()
        for i in range(self.count(g.TensorsLength(), "tensors")):
            t = g.Tensors(i)
            name = (t.Name() or b"").decode("utf-8", "replace") or f"tensor_{i}"
            if name in seen:  # names are not unique in every file: the IR needs them to be
                name = f"{name}__t{i}"
            seen.add(name)
            code = t.Type()
            if code == _RESOURCE:  # a resource variable's handle (VAR_HANDLE's output): no data of its own
                self.tensors.append((name, (), np.dtype(object), None))
                self.quant.append(None)
                continue
            if code not in _DTYPES:
                raise UnsupportedOpError(f"tensor {i} ({name!r}) has TFLite type {code}, which edgedl does not read")
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if self.count(t.ShapeLength(), "dimensions") else ()
            if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
                raise ModelFormatError(f"tensor {i} ({name!r}) has an invalid shape {shape}")
            dtype = np.dtype(_DTYPES[code])
            b = t.Buffer()
            if not 0 <= b < max(n_buffers, 1):
                raise ModelFormatError(f"tensor {i} ({name!r}) names buffer {b}, the file has {n_buffers}")
            sparsity = t.Sparsity()
            data = self._buffer(b, name, shape, dtype, sparse=sparsity is not None) if n_buffers else None
            if sparsity is not None and data is not None:
                from .tflite_sparse import densify

                data = densify(self.tfl, sparsity, data, shape, name)
            self.tensors.append((name, shape, dtype, data))
            self.quant.append(self._quantization(t, name, shape))

    def _quantization(self, t, name: str, shape):
        q = t.Quantization()
        if q is None or not self.count(q.ScaleLength(), "scales"):
            return None
        scale = q.ScaleAsNumpy().astype(np.float32).reshape(-1)
        zp = (q.ZeroPointAsNumpy().astype(np.int64).reshape(-1) if self.count(q.ZeroPointLength(), "zero points")
              else np.zeros(scale.size, np.int64))
        axis = int(q.QuantizedDimension())
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ModelFormatError(f"tensor {name!r} has invalid quantization scales {scale[:4]}")
        if zp.size not in (1, scale.size):
            raise ModelFormatError(f"tensor {name!r} has {scale.size} scales but {zp.size} zero points")
        if scale.size > 1 and not (0 <= axis < len(shape) and shape[axis] == scale.size):
            raise ModelFormatError(f"tensor {name!r} of shape {shape} has {scale.size} scales along axis {axis}")
        return scale, np.broadcast_to(zp, scale.shape).copy(), axis

    def _buffer(self, index: int, name: str, shape, dtype, sparse: bool = False) -> np.ndarray | None:
        """The tensor's data from its buffer (``sparse``: the stored values, 1-D, any count up to the shape's)."""
        buf = self.model.Buffers(index)
        offset, size = int(buf.Offset()), int(buf.Size())
        if offset > 1:  # stored after the flatbuffer (models over 2 GB)
            if offset + size > len(self.data):
                raise ModelFormatError(f"buffer {index} of tensor {name!r} lies outside the file")
            raw = np.frombuffer(self.data, np.uint8, size, offset)
        elif buf.DataLength():
            raw = buf.DataAsNumpy()
        else:
            return None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if sparse:
            if raw.size % dtype.itemsize or raw.size > nbytes:
                raise ModelFormatError(f"sparse tensor {name!r} of shape {shape} stores {raw.size} bytes of "
                                       f"{dtype.name}")
            return np.frombuffer(raw.tobytes(), dtype).copy()
        if raw.size != nbytes:
            raise ModelFormatError(f"tensor {name!r} of shape {shape} and type {dtype.name} needs {nbytes} bytes, "
                                   f"its buffer {index} holds {raw.size}")
        return np.frombuffer(raw.tobytes(), dtype).reshape(shape).copy()

    def _dynamic_batch(self, inputs) -> int | None:
        """The file's batch size when every input declares a dynamic first dimension (``shape_signature`` -1)
        over the same stored size: the graph then takes any batch ("N"), and the shapes this importer writes
        (reshape targets, resize sizes) follow the input's; None: the stored shapes as they are."""
        sizes = set()
        for i in inputs:
            t = self.graph.Tensors(i)
            sig = t.ShapeSignatureAsNumpy() if self.count(t.ShapeSignatureLength(), "dimensions") else None
            shape = self.tensors[i][1]
            if sig is None or len(sig) != len(shape) or not len(shape) or int(sig[0]) != -1 or \
                    any(int(d) < 0 for d in sig[1:]):
                return None
            sizes.add(shape[0])
        return sizes.pop() if len(sizes) == 1 else None

    def batched(self, i: int) -> bool:
        """Whether tensor ``i`` carries the dynamic batch as its first dimension: its ``shape_signature`` says -1
        there (or, in files without signatures on inner tensors, its first dimension is the batch size)."""
        shape = self.tensors[i][1]
        if self.batch is None or not len(shape):
            return False
        t = self.graph.Tensors(i)
        sig = t.ShapeSignatureAsNumpy() if self.count(t.ShapeSignatureLength(), "dimensions") else None
        if sig is not None and len(sig) == len(shape):
            return int(sig[0]) == -1
        return shape[0] == self.batch

    def shape_const(self, shape, source: int) -> str:
        """A reshape target for tensor ``source``'s data: with a dynamic batch that ``source`` carries, a leading
        batch-sized dimension copies the input's (0)."""
        target = np.array(shape, np.int64)
        if target.size and target[0] == self.batch and self.batched(source):
            target[0] = 0
        return self.constant("shape", target)

    def _operator_names(self) -> list[str]:
        """The name of each operator code of the file: a builtin's (CONV_2D), "CUSTOM <code>" for a custom one."""
        builtins = {v: k for k, v in vars(self.tfl.BuiltinOperator).items() if not k.startswith("_")}
        names = []
        for k in range(self.count(self.model.OperatorCodesLength(), "operator codes")):
            c = self.model.OperatorCodes(k)
            code = max(int(c.BuiltinCode()), int(c.DeprecatedBuiltinCode()))
            if code == self.tfl.BuiltinOperator.CUSTOM:
                custom = c.CustomCode()
                names.append(f"CUSTOM {custom.decode('utf-8', 'replace') if custom else '?'}")
            else:
                names.append(builtins.get(code, f"builtin code {code}"))
        return names

    def _operators(self):
        """(index, operator, name, input tensors, output tensors) of each operator of this subgraph, its indices
        checked against the operator codes and the tensors (-1: an omitted optional input)."""
        names, n = self._operator_names(), len(self.tensors)
        g = self.graph
        for k in range(self.count(g.OperatorsLength(), "operators")):
            op = g.Operators(k)
            idx = int(op.OpcodeIndex())
            if not 0 <= idx < len(names):
                raise ModelFormatError(f"operator {k} names operator code {idx}, the file has {len(names)}")
            ins = [int(v) for v in op.InputsAsNumpy()] if self.count(op.InputsLength(), "operator inputs") else []
            outs = [int(v) for v in op.OutputsAsNumpy()] if self.count(op.OutputsLength(), "operator outputs") else []
            for t in ins + outs:
                if not -1 <= t < n:
                    raise ModelFormatError(f"operator {k} names tensor {t}, the subgraph has {n}")
            yield k, op, names[idx], ins, outs

    def _signatures(self, n_graphs: int) -> list[dict]:
        """Every SignatureDef: key, subgraph, and (name, tensor index) of its inputs and outputs."""
        sigs = []
        for k in range(self.count(self.model.SignatureDefsLength(), "signatures")):
            sd = self.model.SignatureDefs(k)
            index = int(sd.SubgraphIndex())
            if not 0 <= index < n_graphs:
                raise ModelFormatError(f"signature {k} names subgraph {index}, the file has {n_graphs}")

            def maps(length, get):
                return [((get(j).Name() or b"").decode("utf-8", "replace"), int(get(j).TensorIndex()))
                        for j in range(self.count(length, "signature tensors"))]
            sigs.append({"key": (sd.SignatureKey() or b"").decode("utf-8", "replace") or f"signature_{k}",
                         "subgraph": index, "inputs": maps(sd.InputsLength(), sd.Inputs),
                         "outputs": maps(sd.OutputsLength(), sd.Outputs)})
        return sigs

    def count(self, n: int, what: str) -> int:
        """A vector's length from the file, checked against the file's size (each entry takes >= 4 bytes): a
        corrupt length must not become a long loop."""
        n = int(n)
        if n < 0 or 4 * n > len(self.data):
            raise ModelFormatError(f"the .tflite file claims {n} {what} in {len(self.data)} bytes")
        return n

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}__{self._count}"

    # -- values and layouts -----------------------------------------------------------------------------
    def const(self, i: int) -> np.ndarray | None:
        return self.tensors[i][3]

    def shape(self, i: int) -> tuple:
        return self.tensors[i][1]

    def get(self, i: int, layout: str) -> str:
        """The IR name of tensor ``i`` in ``layout`` ("nchw": a 4-D tensor as NCHW; "plain": TFLite's layout)."""
        key = (i, layout)
        if key in self._converted:
            return self._converted[key]
        name, shape, dtype, data = self.tensors[i]
        if data is not None:
            value = data.transpose(_TO_NCHW) if layout == "nchw" else data
            ir = name if layout == "plain" else self._name(f"{name}_nchw")
            self.initializers[ir] = np.ascontiguousarray(value)
        else:
            if i not in self.values:
                raise ModelFormatError(f"tensor {i} ({name!r}) is read before anything writes it")
            src, have = self.values[i]
            if have == layout:
                ir = src
            else:
                ir = self._name(f"{name}_{layout}")
                self.emit("Transpose", [src], [ir], perm=list(_TO_NCHW if layout == "nchw" else _TO_NHWC))
        self._converted[key] = ir
        return ir

    def layout_of(self, i: int) -> str:
        if self.const(i) is not None:
            return "plain"
        return self.values[i][1] if i in self.values else "plain"

    def set_output(self, i: int, ir: str, layout: str) -> None:
        self.values[i] = (ir, layout)

    def emit(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.nodes.append(Node(op, self._name(op), list(inputs), list(outputs), attrs))

    def constant(self, base: str, value) -> str:
        name = self._name(base)
        self.initializers[name] = np.asarray(value)
        return name

    def broadcast_nchw(self, i: int, rank: int = 4) -> str:
        """Tensor ``i`` as an operand broadcasting against a 4-D NCHW tensor: right-aligned to rank 4 in NHWC,
        then transposed."""
        shape = self.shape(i)
        if len(shape) == 4:
            return self.get(i, "nchw")
        data = self.const(i)
        full = (1,) * (rank - len(shape)) + tuple(shape)
        if data is not None:
            name = self._name(f"{self.tensors[i][0]}_nchw")
            self.initializers[name] = np.ascontiguousarray(data.reshape(full).transpose(_TO_NCHW))
            return name
        reshaped = self._name(f"{self.tensors[i][0]}_4d")
        self.emit("Reshape", [self.get(i, "plain"), self.constant("shape", np.array(full, np.int64))], [reshaped])
        out = self._name(f"{self.tensors[i][0]}_nchw")
        self.emit("Transpose", [reshaped], [out], perm=list(_TO_NCHW))
        return out

    def quantized(self, i: int) -> bool:
        return self.tensors[i][2] in (np.dtype(np.int8), np.dtype(np.uint8)) and self.quant[i] is not None

    def qparams(self, i: int, per_tensor: bool = True) -> tuple[str, str]:
        """IR constants (scale float32, zero point of the tensor's type) of tensor ``i``'s quantization;
        ``per_tensor``: a single scale is required."""
        q = self.quant[i]
        name, _, dtype, _ = self.tensors[i]
        if q is None:
            raise UnsupportedOpError(f"tensor {name!r} is {dtype.name} without quantization parameters")
        scale, zp, _ = q
        if per_tensor and scale.size != 1:
            raise UnsupportedOpError(f"tensor {name!r} is quantized per channel where one scale is expected")
        if per_tensor:
            return self.constant(f"{name}_scale", scale[0]), self.constant(f"{name}_zp", np.array(zp[0], dtype))
        return self.constant(f"{name}_scale", scale), self.constant(f"{name}_zp", zp.astype(dtype))

    def dequantized_weights(self, i: int) -> np.ndarray:
        """The float32 values of constant int8 weights (a dynamic-range model's): scale * (q - zero point), per
        channel along the quantized dimension. TFLite's hybrid kernels quantize the input on the fly instead; the
        float layer differs from them by that rounding of the input (and is closer to the float model)."""
        data, q = self.const(i), self.quant[i]
        name = self.tensors[i][0]
        if data is None or q is None or data.dtype.kind not in "iu":
            raise UnsupportedOpError(f"weights {name!r} are {self.tensors[i][2].name} without quantization "
                                     "parameters")
        scale, zp, axis = q
        shape = [1] * data.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        return ((data.astype(np.float32) - zp.astype(np.float32).reshape(shape)) * scale.reshape(shape)).astype(
            np.float32)

    def float_only(self, i: int) -> None:
        """An operator whose int8 form is not imported yet: an error rather than float arithmetic on codes."""
        if self.tensors[i][2].kind != "f":
            raise UnsupportedOpError(f"the {self.tensors[i][2].name} form (tensor {self.tensors[i][0]!r}) is not "
                                     "supported yet")

    def same_quantization(self, tensors) -> None:
        """int8 data movement: every tensor must share one scale and zero point (nothing is requantized)."""
        qs = [self.quant[i] for i in tensors]
        if any(q is not None for q in qs) and not all(
                q is not None and np.array_equal(q[0], qs[0][0]) and np.array_equal(q[1], qs[0][1]) for q in qs):
            raise UnsupportedOpError("int8 tensors with different quantization parameters (requantizing data "
                                     "movement is not supported yet)")

    @staticmethod
    def clamp(code: int):
        """The real-valued output range of a fused activation on an int8 op (``_clamp``), or None."""
        if code == 0:
            return None
        bounds = {1: (0.0, float("inf")), 2: (-1.0, 1.0), 3: (0.0, 6.0)}
        if code not in bounds:
            raise UnsupportedOpError(f"fused activation {code} on an int8 operator")
        return bounds[code]

    def q_attrs(self, fused: int) -> dict:
        """TFLite's requantization (double rounding) and the fused activation's range."""
        attrs = {"_requant": "double"}
        c = self.clamp(fused)
        if c is not None:
            attrs["_clamp"] = list(c)
        return attrs

    def activation(self, code: int, x: str, out: str) -> None:
        """The fused activation ``code`` from ``x`` to ``out`` (an Identity when none)."""
        if code == 0:
            self.emit("Identity", [x], [out])
        elif code == 1:
            self.emit("Relu", [x], [out])
        elif code in (2, 3):
            lo, hi = (-1.0, 1.0) if code == 2 else (0.0, 6.0)
            self.emit("Clip", [x, self.constant("min", np.float32(lo)), self.constant("max", np.float32(hi))], [out])
        elif code == 4:
            self.emit("Tanh", [x], [out])
        else:
            raise UnsupportedOpError(f"fused activation {code} (SIGN_BIT) is not supported")

    def finish(self, out_tensor: int, x: str, layout: str, fused: int = 0) -> None:
        """Name the result ``x`` (in ``layout``) as tensor ``out_tensor``, through the fused activation."""
        if fused:
            out = self._name(self.tensors[out_tensor][0])
            self.activation(fused, x, out)
            x = out
        self.set_output(out_tensor, x, layout)

    # -- the graph --------------------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.graph
        self._tensors()
        n = len(self.tensors)
        inputs = [int(v) for v in g.InputsAsNumpy()] if self.count(g.InputsLength(), "inputs") else []
        outputs = [int(v) for v in g.OutputsAsNumpy()] if self.count(g.OutputsLength(), "outputs") else []
        for i in inputs + outputs:
            if not 0 <= i < n:
                raise ModelFormatError(f"the subgraph's inputs / outputs name tensor {i}, it has {n}")
        specs = []
        self._input_tensors = list(inputs)
        self.batch = self._dynamic_batch(inputs)
        for i in inputs:
            name, shape, dtype, _ = self.tensors[i]
            specs.append(TensorSpec(name, ("N", *shape[1:]) if self.batch is not None else shape, dtype))
            self.set_output(i, name, "plain")
        ops, unsupported = [], []
        for k, op, op_name, ins, outs in self._operators():
            if op_name.startswith("CUSTOM "):
                handler = getattr(self, _CUSTOM_OPS.get(op_name[len("CUSTOM "):], ""), None)
            elif op_name in _UNARY:
                onnx_op, attrs = _UNARY[op_name]
                handler = (lambda op, ins, outs, onnx_op=onnx_op, attrs=attrs, op_name=op_name:
                           self._unary(ins, outs, onnx_op, tflite=op_name, **dict(attrs)))
            else:
                handler = getattr(self, f"op_{op_name}", None)
            if handler is None:
                unsupported.append(f"{op_name} (operator {k}: inputs {[self.tensors[t][0] for t in ins if t >= 0]}, "
                                   f"outputs {[self.tensors[t][0] for t in outs]})")
            ops.append((k, op, op_name, handler, ins, outs))
        if unsupported:
            raise UnsupportedOpError("unsupported TFLite operators: " + "; ".join(unsupported))
        for k, op, op_name, handler, ins, outs in ops:
            try:
                handler(op, ins, outs)
            except EdgeDLError as e:
                raise type(e)(f"TFLite {op_name} (operator {k}): {e}") from None
        state_specs: list = []
        state = self._state(specs, state_specs)  # before outputs are renamed: the rename reaches these nodes too
        out_specs = []
        input_names = {s.name for s in specs}
        for i in outputs:
            name, shape, dtype, data = self.tensors[i]
            ir = self.get(i, "plain")
            if ir != name:
                if ir in input_names or ir in self.initializers or any(name in n.outputs for n in self.nodes):
                    self.emit("Identity", [ir], [name])
                else:  # the node making it writes the output's own name
                    self._rename(ir, name)
            out_specs.append(TensorSpec(name, shape, dtype))
        if self.signature is not None:
            specs, out_specs = self._signature_names(specs, out_specs)
        out_specs += state_specs
        name = (g.Name() or b"").decode("utf-8", "replace") or "tflite"
        import json

        metadata = {"edgedl.source": "tflite",
                    "edgedl.tflite.signatures": json.dumps([{"key": sig["key"], "inputs": [n for n, _ in sig["inputs"]],
                                                             "outputs": [n for n, _ in sig["outputs"]]}
                                                            for sig in self.signatures])}
        if any(n.attrs.get("_requant") for n in self.nodes):  # what `edgedl info` reports for int8 models
            metadata["edgedl.requant"] = "double"
        return Graph(self.nodes, specs, out_specs, self.initializers, opset=OPSET, name=name, metadata=metadata,
                     domains={"com.microsoft": 1}, state=state)

    def _state(self, specs: list, out_specs: list) -> list:
        """Resource variables as state: a graph input holding the value a run reads, a graph output holding the
        value the next run reads (the last ASSIGN_VARIABLE's, else unchanged), the CALL_ONCE value to start
        from (zeros for a variable no initializer assigns)."""
        state = []
        for key in sorted(set(self.read) | set(self.assigned)):
            shape, dtype = self.var_types[key]
            inp = self.read.get(key) or self._state_input(key, shape, dtype)
            out = f"{inp}:next"
            src = self.assigned.get(key, inp)
            self.emit("Identity", [src], [out])
            out_specs.append(TensorSpec(out, shape, dtype))
            init = self.initial.get(key)
            if init is None:
                init = np.zeros(shape, dtype)
            elif tuple(init.shape) != tuple(shape):
                raise ModelFormatError(f"variable {key!r} starts with shape {init.shape} but is used as {shape}")
            state.append((inp, out, np.asarray(init, dtype)))
        specs.extend(TensorSpec(inp, self.var_types[k][0], self.var_types[k][1]) for k, inp in self._state_inputs)
        return state

    def _state_input(self, key: str, shape, dtype) -> str:
        name = f"variable:{key}"
        self._state_inputs.append((key, name))
        self.read[key] = name
        return name

    def _signature_names(self, specs: list, out_specs: list) -> tuple[list, list]:
        """The graph's inputs and outputs under the signature's names, in its order."""
        by_tensor_in = {self.tensors[i][0]: spec for i, spec in zip(self._input_tensors, specs)}
        by_tensor_out = {spec.name: spec for spec in out_specs}
        taken = {n for node in self.nodes for n in node.inputs + node.outputs} | set(self.initializers)
        new_in, new_out = [], []
        for sig_name, t in self.signature["inputs"]:
            spec = by_tensor_in.get(self.tensors[t][0]) if 0 <= t < len(self.tensors) else None
            if spec is None:
                raise ModelFormatError(f"signature input {sig_name!r} names tensor {t}, not an input of its subgraph")
            new_in.append(self._renamed(spec, sig_name, taken))
        for sig_name, t in self.signature["outputs"]:
            spec = by_tensor_out.get(self.tensors[t][0]) if 0 <= t < len(self.tensors) else None
            if spec is None:
                raise ModelFormatError(f"signature output {sig_name!r} names tensor {t}, not an output of its "
                                       "subgraph")
            new_out.append(self._renamed(spec, sig_name, taken))
        return new_in + specs[len(self._input_tensors):], new_out

    def _renamed(self, spec: TensorSpec, name: str, taken: set) -> TensorSpec:
        if name != spec.name:
            if name in taken:
                raise ModelFormatError(f"signature name {name!r} is also the name of another tensor")
            self._rename(spec.name, name)
            taken.add(name)
        return TensorSpec(name, spec.shape, spec.dtype)

    def _rename(self, old: str, new: str) -> None:
        for n in self.nodes:
            n.inputs = [new if v == old else v for v in n.inputs]
            n.outputs = [new if v == old else v for v in n.outputs]

    def options(self, op, cls_name: str):
        table = op.BuiltinOptions()
        opts = getattr(self.tfl, cls_name)()
        if table is None:
            return None
        opts.Init(table.Bytes, table.Pos)
        return opts

    # -- operators --------------------------------------------------------------------------------------
    def _conv(self, op, ins, outs, depthwise: bool) -> None:
        x_i, w_i = ins[0], ins[1]
        w = self.const(w_i)
        if w is None or len(self.shape(x_i)) != 4 or w.ndim != 4:
            raise UnsupportedOpError("needs a 4-D input and constant 4-D weights")
        o = self.options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
        c = self.shape(x_i)[3]
        if depthwise:  # [1, KH, KW, C * M] -> [C * M, 1, KH, KW], one group per input channel
            weight = np.ascontiguousarray(w[0].transpose(2, 0, 1)[:, None])
            group = c
        else:  # [O, KH, KW, I] -> [O, I, KH, KW]
            weight = np.ascontiguousarray(w.transpose(0, 3, 1, 2))
            group = c // w.shape[3] if w.shape[3] and c % w.shape[3] == 0 else 1
        if not self.quantized(x_i) and weight.dtype.kind != "f":  # a dynamic-range (hybrid) layer
            w = self.dequantized_weights(w_i)
            weight = np.ascontiguousarray(w[0].transpose(2, 0, 1)[:, None] if depthwise else w.transpose(0, 3, 1, 2))
        w_name = self.constant(f"{self.tensors[w_i][0]}_oihw", weight)
        bias = self.get(ins[2], "plain") if len(ins) > 2 and ins[2] >= 0 else ""
        y = self._name(self.tensors[outs[0]][0])
        attrs = dict(kernel_shape=list(weight.shape[2:]), strides=[o.StrideH(), o.StrideW()],
                     dilations=[o.DilationHFactor(), o.DilationWFactor()], group=int(group),
                     auto_pad=_padding(o.Padding()))
        if self.quantized(x_i):  # full-integer: QLinearConv with TFLite's requantization
            w_scale, w_zp = self.qparams(w_i, per_tensor=False)
            if np.any(self.quant[w_i][1]):
                raise UnsupportedOpError("int8 weights with a non-zero zero point")
            self.initializers[w_zp] = np.zeros(weight.shape[0], weight.dtype)
            self.initializers[w_scale] = np.broadcast_to(self.initializers[w_scale], (weight.shape[0],)).copy()
            args = [self.get(x_i, "nchw"), *self.qparams(x_i), w_name, w_scale, w_zp, *self.qparams(outs[0])]
            self.emit("QLinearConv", args + ([bias] if bias else []), [y], **attrs,
                      **self.q_attrs(o.FusedActivationFunction()))
            self.set_output(outs[0], y, "nchw")
            return
        self.emit("Conv", [self.get(x_i, "nchw"), w_name] + ([bias] if bias else []), [y], **attrs)
        self.finish(outs[0], y, "nchw", o.FusedActivationFunction())

    def op_CONV_2D(self, op, ins, outs):
        self._conv(op, ins, outs, False)

    def op_DEPTHWISE_CONV_2D(self, op, ins, outs):
        self._conv(op, ins, outs, True)

    def _pool(self, op, ins, outs, kind: str) -> None:
        o = self.options(op, "Pool2DOptions")
        y = self._name(self.tensors[outs[0]][0])
        attrs = dict(kernel_shape=[o.FilterHeight(), o.FilterWidth()], strides=[o.StrideH(), o.StrideW()],
                     auto_pad=_padding(o.Padding()))
        if self.quantized(ins[0]) and kind == "AveragePool":  # TFLite's int8 average (rounding half away)
            args = [self.get(ins[0], "nchw"), *self.qparams(ins[0]), *self.qparams(outs[0])]
            self.nodes.append(Node("QLinearAveragePool", self._name("QLinearAveragePool"), args, [y],
                                   dict(attrs, **self.q_attrs(o.FusedActivationFunction())), domain="com.microsoft"))
            self.set_output(outs[0], y, "nchw")
            return
        if self.quantized(ins[0]) and (o.FusedActivationFunction()
                                       or not np.array_equal(self.quant[ins[0]][:2], self.quant[outs[0]][:2])):
            raise UnsupportedOpError("int8 MAX_POOL_2D needs equal input and output quantization and no fused "
                                     "activation")
        self.emit(kind, [self.get(ins[0], "nchw")], [y], **attrs)
        self.finish(outs[0], y, "nchw", o.FusedActivationFunction())

    def op_AVERAGE_POOL_2D(self, op, ins, outs):
        self._pool(op, ins, outs, "AveragePool")

    def op_MAX_POOL_2D(self, op, ins, outs):
        self._pool(op, ins, outs, "MaxPool")

    def op_FULLY_CONNECTED(self, op, ins, outs):
        o = self.options(op, "FullyConnectedOptions")
        w_shape = self.shape(ins[1])
        if len(w_shape) != 2:
            raise UnsupportedOpError(f"weights of shape {w_shape} (2-D expected)")
        units, depth = w_shape
        x = self.get(ins[0], "plain")
        rows = self._name("rows")
        self.emit("Reshape", [x, self.constant("shape", np.array([-1, depth], np.int64))], [rows])
        bias = self.get(ins[2], "plain") if len(ins) > 2 and ins[2] >= 0 else ""
        y = self._name(self.tensors[outs[0]][0])
        fused = o.FusedActivationFunction() if o is not None else 0
        if self.quantized(ins[0]):  # full-integer: com.microsoft QGemm with TFLite's requantization
            if self.const(ins[1]) is None or np.any(self.quant[ins[1]][1]):
                raise UnsupportedOpError("int8 weights must be constant with a zero zero point")
            w_scale, w_zp = self.qparams(ins[1], per_tensor=False)
            self.initializers[w_zp] = np.zeros(units, self.tensors[ins[1]][2])
            self.initializers[w_scale] = np.broadcast_to(self.initializers[w_scale], (units,)).copy()
            args = [rows, *self.qparams(ins[0]), self.get(ins[1], "plain"), w_scale, w_zp, bias,
                    *self.qparams(outs[0])]
            # TFLite's reference FULLY_CONNECTED rounds once (x * M0 + 2^(30 - shift)) >> (31 - shift), unlike its
            # convolutions (measured against ai-edge-litert 2.3's BUILTIN_REF: double rounding was one step off
            # on ties)
            attrs = dict(transB=1, **self.q_attrs(fused))
            attrs["_requant"] = "single"
            self.nodes.append(Node("QGemm", self._name("QGemm"), args, [y], attrs, domain="com.microsoft"))
            fused = 0
        else:
            w = self.get(ins[1], "plain")
            if self.tensors[ins[1]][2].kind != "f":  # a dynamic-range (hybrid) layer
                w = self.constant(f"{self.tensors[ins[1]][0]}_float", self.dequantized_weights(ins[1]))
            self.emit("Gemm", [rows, w] + ([bias] if bias else []), [y], transB=1)
        out_shape = self.shape(outs[0])
        if o is not None and o.KeepNumDims() and len(out_shape) != 2:
            shaped = self._name(self.tensors[outs[0]][0])
            self.emit("Reshape", [y, self.shape_const(out_shape, ins[0])], [shaped])
            y = shaped
        self.finish(outs[0], y, "plain", fused)

    def _binary(self, op, ins, outs, onnx_op: str, options: str | None) -> None:
        nchw = any(self.layout_of(i) == "nchw" for i in ins) and all(len(self.shape(i)) <= 4 for i in ins)
        args = [self.broadcast_nchw(i) if nchw else self.get(i, "plain") for i in ins]
        y = self._name(self.tensors[outs[0]][0])
        if any(self.quantized(i) for i in list(ins) + list(outs)):
            self._int8_binary(op, ins, outs, onnx_op, options, args, y, "nchw" if nchw else "plain")
            return
        if onnx_op == "SquaredDifference":
            d = self._name("difference")
            self.emit("Sub", args, [d])
            self.emit("Mul", [d, d], [y])
        else:
            self.emit(onnx_op, args, [y])
        fused = 0
        if options:
            o = self.options(op, options)
            fused = o.FusedActivationFunction() if o is not None else 0
        self.finish(outs[0], y, "nchw" if nchw else "plain", fused)

    def _int8_binary(self, op, ins, outs, onnx_op: str, options: str | None, args, y: str, layout: str) -> None:
        """int8 ADD / MUL as com.microsoft QLinearAdd / QLinearMul in TFLite's mode; SUB, SQUARED_DIFFERENCE,
        DIV, MAXIMUM, MINIMUM and PRELU as edgedl.QLinearBinary (a table of every input pair in TFLite's
        arithmetic)."""
        from edgedl.ops.qlinear_elementwise import TFLITE_PAIRS

        if onnx_op not in ("Add", "Mul", *TFLITE_PAIRS) or not all(self.quantized(i) for i in list(ins) + list(outs)):
            raise UnsupportedOpError(f"int8 {onnx_op} is not supported (int8 ADD, SUB, MUL, DIV, SQUARED_DIFFERENCE, "
                                     "MAXIMUM, MINIMUM and PRELU with every tensor quantized are)")
        o = self.options(op, options) if options else None
        fused = o.FusedActivationFunction() if o is not None else 0
        q_args = [args[0], *self.qparams(ins[0]), args[1], *self.qparams(ins[1]), *self.qparams(outs[0])]
        if onnx_op in ("Add", "Mul"):
            self.nodes.append(Node(f"QLinear{onnx_op}", self._name(f"QLinear{onnx_op}"), q_args, [y],
                                   self.q_attrs(fused), domain="com.microsoft"))
        else:
            if any(self.tensors[i][2] != np.int8 for i in list(ins) + list(outs)):
                raise UnsupportedOpError(f"{onnx_op} on 8-bit tensors needs int8 inputs and output")
            self.nodes.append(Node("QLinearBinary", self._name("QLinearBinary"), q_args, [y],
                                   {"function": onnx_op, **self.q_attrs(fused)}, domain="edgedl"))
        self.set_output(outs[0], y, layout)

    def op_ADD(self, op, ins, outs):
        self._binary(op, ins, outs, "Add", "AddOptions")

    def op_SUB(self, op, ins, outs):
        self._binary(op, ins, outs, "Sub", "SubOptions")

    def op_MUL(self, op, ins, outs):
        self._binary(op, ins, outs, "Mul", "MulOptions")

    def op_DIV(self, op, ins, outs):
        self._binary(op, ins, outs, "Div", "DivOptions")

    def op_MAXIMUM(self, op, ins, outs):
        self._binary(op, ins, outs, "Max", None)

    def op_MINIMUM(self, op, ins, outs):
        self._binary(op, ins, outs, "Min", None)

    def op_SQUARED_DIFFERENCE(self, op, ins, outs):
        self._binary(op, ins, outs, "SquaredDifference", None)

    def _unary(self, ins, outs, onnx_op: str, tflite: str | None = None, extra=(), **attrs) -> None:
        """An element-wise operator as the ONNX op ``onnx_op`` (constant ``extra`` inputs after the data); its
        int8 form (the TFLite operator ``tflite``) as an edgedl.QLinearLookup whose table follows TFLite's
        arithmetic (:mod:`edgedl.quant.tflite_tables`), the float op kept for export and training."""
        layout = self.layout_of(ins[0])
        y = self._name(self.tensors[outs[0]][0])
        extra = [self.constant("operand", v) for v in extra]
        if onnx_op == "Clip":
            lo, hi = attrs.pop("bounds")
            extra = [self.constant("min", np.float32(lo)), self.constant("max", np.float32(hi))]
        x = self.get(ins[0], layout)
        if self.quantized(ins[0]) and tflite is not None:
            if not self.quantized(outs[0]) or self.tensors[ins[0]][2] != np.int8 or \
                    self.tensors[outs[0]][2] != np.int8:
                raise UnsupportedOpError(f"int8 {tflite} needs int8 input and output with quantization parameters")
            args = [x, *self.qparams(ins[0]), *self.qparams(outs[0]), *extra]
            self.nodes.append(Node("QLinearLookup", self._name("QLinearLookup"), args, [y],
                                   {"function": onnx_op, **attrs, "_tflite": tflite, "_requant": "double"},
                                   domain="edgedl"))
        else:
            self.float_only(ins[0])
            self.emit(onnx_op, [x] + extra, [y], **attrs)
        self.set_output(outs[0], y, layout)

    def op_LEAKY_RELU(self, op, ins, outs):
        o = self.options(op, "LeakyReluOptions")
        self._unary(ins, outs, "LeakyRelu", "LEAKY_RELU", alpha=float(o.Alpha()) if o is not None else 0.2)

    def op_LOGISTIC(self, op, ins, outs):
        if not self.quantized(ins[0]):
            self._unary(ins, outs, "Sigmoid")
            return
        layout = self.layout_of(ins[0])  # TFLite's fixed-point logistic (QLinearSigmoid in TFLite's mode)
        y = self._name(self.tensors[outs[0]][0])
        args = [self.get(ins[0], layout), *self.qparams(ins[0]), *self.qparams(outs[0])]
        self.nodes.append(Node("QLinearSigmoid", self._name("QLinearSigmoid"), args, [y], {"_requant": "double"},
                               domain="com.microsoft"))
        self.set_output(outs[0], y, layout)

    def op_SOFTMAX(self, op, ins, outs):
        o = self.options(op, "SoftmaxOptions")
        beta = float(o.Beta()) if o is not None else 1.0
        if self.quantized(ins[0]):  # TFLite's fixed-point softmax (QLinearSoftmax in TFLite's mode)
            y = self._name(self.tensors[outs[0]][0])
            args = [self.get(ins[0], "plain"), *self.qparams(ins[0]), *self.qparams(outs[0])]
            self.nodes.append(Node("QLinearSoftmax", self._name("QLinearSoftmax"), args, [y],
                                   {"axis": -1, "opset": 13, "_requant": "double", "_beta": beta},
                                   domain="com.microsoft"))
            self.set_output(outs[0], y, "plain")
            return
        self.float_only(ins[0])
        layout = self.layout_of(ins[0])
        x = self.get(ins[0], layout)
        if beta != 1.0:
            scaled = self._name("scaled")
            self.emit("Mul", [x, self.constant("beta", np.float32(beta))], [scaled])
            x = scaled
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Softmax", [x], [y], axis=1 if layout == "nchw" else -1)
        self.set_output(outs[0], y, layout)

    def _reshape_to_output(self, ins, outs):
        self.same_quantization([ins[0], outs[0]])
        y = self._name(self.tensors[outs[0]][0])
        shape = self.shape_const(self.shape(outs[0]), ins[0])
        self.emit("Reshape", [self.get(ins[0], "plain"), shape], [y])
        self.set_output(outs[0], y, "plain")

    def op_RESHAPE(self, op, ins, outs):
        self._reshape_to_output(ins, outs)

    def op_SQUEEZE(self, op, ins, outs):
        self._reshape_to_output(ins, outs)

    def op_CONCATENATION(self, op, ins, outs):
        o = self.options(op, "ConcatenationOptions")
        if o.FusedActivationFunction():  # TFLite's reference kernel refuses it too (XNNPACK ignores it)
            raise ModelFormatError("a fused activation on CONCATENATION is not defined (TFLite's kernels refuse it)")
        self.same_quantization(list(ins) + list(outs))
        rank = len(self.shape(outs[0]))
        axis = int(o.Axis()) % rank if rank else 0
        nchw = rank == 4 and any(self.layout_of(i) == "nchw" for i in ins)
        args = [self.get(i, "nchw" if nchw else "plain") for i in ins]
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Concat", args, [y], axis=_NHWC_TO_NCHW_AXIS[axis] if nchw else axis)
        self.set_output(outs[0], y, "nchw" if nchw else "plain")

    def _pad(self, ins, outs):
        pads = self.const(ins[1])
        if pads is None:
            raise UnsupportedOpError("needs constant paddings")
        rank = len(self.shape(ins[0]))
        pads = pads.reshape(rank, 2).astype(np.int64)
        nchw = rank == 4 and self.layout_of(ins[0]) == "nchw"
        if nchw:
            pads = pads[list(_TO_NCHW)]
        args = [self.get(ins[0], "nchw" if nchw else "plain"),
                self.constant("pads", np.concatenate([pads[:, 0], pads[:, 1]]))]
        if len(ins) > 2 and ins[2] >= 0:
            args.append(self.get(ins[2], "plain"))
        elif self.quantized(ins[0]):  # int8 pads with the zero point (a real 0)
            self.same_quantization([ins[0], outs[0]])
            args.append(self.constant("pad_value", np.array(self.quant[ins[0]][1][0], self.tensors[ins[0]][2])))
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Pad", args, [y], mode="constant")
        self.set_output(outs[0], y, "nchw" if nchw else "plain")

    def op_PAD(self, op, ins, outs):
        self._pad(ins, outs)

    def op_PADV2(self, op, ins, outs):
        self._pad(ins, outs)

    def op_TRANSPOSE(self, op, ins, outs):
        self.same_quantization([ins[0], outs[0]])
        perm = self.const(ins[1])
        if perm is None:
            raise UnsupportedOpError("needs a constant permutation")
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Transpose", [self.get(ins[0], "plain")], [y], perm=[int(p) for p in perm.reshape(-1)])
        self.set_output(outs[0], y, "plain")

    # -- element-wise math, casts ------------------------------------------------------------------------
    def op_RSQRT(self, op, ins, outs):
        if self.quantized(ins[0]):  # the int8 form's float function: x ** -0.5
            self._unary(ins, outs, "Pow", "RSQRT", extra=[np.float32(-0.5)])
            return
        self.float_only(ins[0])
        layout = self.layout_of(ins[0])
        root = self._name("sqrt")
        self.emit("Sqrt", [self.get(ins[0], layout)], [root])
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Reciprocal", [root], [y])
        self.set_output(outs[0], y, layout)

    def op_GELU(self, op, ins, outs):
        o = self.options(op, "GeluOptions")
        self._unary(ins, outs, "Gelu", "GELU", approximate="tanh" if o is not None and o.Approximate() else "none")

    def op_LOG_SOFTMAX(self, op, ins, outs):
        if self.quantized(ins[0]):  # TFLite's fixed-point log-softmax (QLinearSoftmax in TFLite's mode, _log)
            y = self._name(self.tensors[outs[0]][0])
            args = [self.get(ins[0], "plain"), *self.qparams(ins[0]), *self.qparams(outs[0])]
            self.nodes.append(Node("QLinearSoftmax", self._name("QLinearSoftmax"), args, [y],
                                   {"axis": -1, "opset": 13, "_requant": "double", "_log": 1},
                                   domain="com.microsoft"))
            self.set_output(outs[0], y, "plain")
            return
        self.float_only(ins[0])
        layout = self.layout_of(ins[0])
        y = self._name(self.tensors[outs[0]][0])
        self.emit("LogSoftmax", [self.get(ins[0], layout)], [y], axis=1 if layout == "nchw" else -1)
        self.set_output(outs[0], y, layout)

    def op_SHAPE(self, op, ins, outs):
        """The input's shape (TFLite's, NHWC) as int32 / int64: a constant, or read at run time with a dynamic
        batch."""
        dtype = self.tensors[outs[0]][2]
        if dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise UnsupportedOpError(f"SHAPE to {dtype.name} (int32 and int64 are supported)")
        y = self._name(self.tensors[outs[0]][0])
        if self.batch is None:
            self.emit("Identity", [self.constant("shape", np.array(self.shape(ins[0]), dtype))], [y])
        else:
            full = self._name("shape")
            self.emit("Shape", [self.get(ins[0], "plain")], [full])
            self.emit("Cast", [full], [y], to=_ONNX_TYPES[dtype])
        self.set_output(outs[0], y, "plain")

    def op_CAST(self, op, ins, outs):
        layout = self.layout_of(ins[0])
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Cast", [self.get(ins[0], layout)], [y], to=_ONNX_TYPES[self.tensors[outs[0]][2]])
        self.set_output(outs[0], y, layout)

    def op_PRELU(self, op, ins, outs):
        nchw = self.layout_of(ins[0]) == "nchw" and len(self.shape(ins[1])) <= 4
        args = [self.get(ins[0], "nchw" if nchw else "plain"),
                self.broadcast_nchw(ins[1]) if nchw else self.get(ins[1], "plain")]
        y = self._name(self.tensors[outs[0]][0])
        if self.quantized(ins[0]):
            self._int8_binary(op, ins, outs, "PRelu", None, args, y, "nchw" if nchw else "plain")
            return
        self.float_only(ins[0])
        self.emit("PRelu", args, [y])
        self.set_output(outs[0], y, "nchw" if nchw else "plain")

    # -- reductions and selection -----------------------------------------------------------------------
    def _reduce(self, op, ins, outs, onnx_op: str) -> None:
        axes = self.const(ins[1])
        if axes is None:
            raise UnsupportedOpError("needs constant axes")
        o = self.options(op, "ReducerOptions")
        keep = bool(o.KeepDims()) if o is not None else False
        rank = len(self.shape(ins[0]))
        axes = sorted({int(a) % rank for a in axes.reshape(-1)}) if rank else []
        if self.quantized(ins[0]) and onnx_op in ("ReduceMean", "ReduceSum", "ReduceProd"):
            if not self.quantized(outs[0]) or {self.tensors[i][2] for i in (ins[0], outs[0])} != {np.dtype(np.int8)}:
                raise UnsupportedOpError(f"8-bit {onnx_op} needs an int8 input and output")
            if onnx_op == "ReduceMean" and rank == 4 and axes == [1, 2]:
                self._int8_spatial_mean(ins, outs, keep)
                return
            y = self._name(self.tensors[outs[0]][0])  # TFLite's integer arithmetic in TFLite's element order
            args = [self.get(ins[0], "plain"), *self.qparams(ins[0]), *self.qparams(outs[0])]
            self.nodes.append(Node("QLinearReduce", self._name("QLinearReduce"), args, [y],
                                   {"function": onnx_op, "axes": axes, "keepdims": int(keep), "_requant": "double"},
                                   domain="edgedl"))
            self.set_output(outs[0], y, "plain")
            return
        if self.quantized(ins[0]):  # REDUCE_MAX / REDUCE_MIN pick codes
            self.same_quantization([ins[0], outs[0]])
        else:
            self.float_only(ins[0])
        source, layout = "plain", "plain"
        if self.layout_of(ins[0]) == "nchw":
            kept = [_NHWC_TO_NCHW_AXIS[a] for a in range(4) if a not in axes]
            if keep or kept == sorted(kept):  # the NCHW result holds the elements in TFLite's order
                source, layout = "nchw", "nchw" if keep else "plain"
                axes = sorted(_NHWC_TO_NCHW_AXIS[a] for a in axes)
        x = self.get(ins[0], source)
        y = self._name(self.tensors[outs[0]][0])
        if onnx_op == "ReduceSum":  # axes as an input from opset 13
            self.emit(onnx_op, [x, self.constant("axes", np.array(axes, np.int64))], [y], keepdims=int(keep))
        else:
            self.emit(onnx_op, [x], [y], axes=list(axes), keepdims=int(keep))
        self.set_output(outs[0], y, layout)

    def _int8_spatial_mean(self, ins, outs, keep: bool) -> None:
        """int8 MEAN over H and W (a converted GlobalAveragePooling2D): TFLite's reference arithmetic
        (QLinearGlobalAveragePool with ``_mean="reference"``), then the [N, C] view without keep_dims."""
        pooled = self._name("mean")
        args = [self.get(ins[0], "nchw"), *self.qparams(ins[0]), *self.qparams(outs[0])]
        self.nodes.append(Node("QLinearGlobalAveragePool", self._name("QLinearGlobalAveragePool"), args, [pooled],
                               {"_requant": "double", "_mean": "reference"}, domain="com.microsoft"))
        if keep:  # (N, C, 1, 1): TFLite's (N, 1, 1, C) in NCHW
            self.set_output(outs[0], pooled, "nchw")
            return
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Reshape", [pooled, self.shape_const(self.shape(outs[0]), ins[0])], [y])
        self.set_output(outs[0], y, "plain")

    def op_MEAN(self, op, ins, outs):
        self._reduce(op, ins, outs, "ReduceMean")

    def op_SUM(self, op, ins, outs):
        self._reduce(op, ins, outs, "ReduceSum")

    def op_REDUCE_MAX(self, op, ins, outs):
        self._reduce(op, ins, outs, "ReduceMax")

    def op_REDUCE_MIN(self, op, ins, outs):
        self._reduce(op, ins, outs, "ReduceMin")

    def op_REDUCE_PROD(self, op, ins, outs):
        self._reduce(op, ins, outs, "ReduceProd")

    def _arg(self, op, ins, outs, onnx_op: str) -> None:
        axis = self.const(ins[1])
        if axis is None:
            raise UnsupportedOpError("needs a constant axis")
        rank = len(self.shape(ins[0]))
        a = int(axis.reshape(-1)[0]) % rank
        idx = self._name("indices")
        self.emit(onnx_op, [self.get(ins[0], "plain")], [idx], axis=a, keepdims=0)
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Cast", [idx], [y], to=7 if self.tensors[outs[0]][2] == np.int64 else 6)
        self.set_output(outs[0], y, "plain")

    def op_ARG_MAX(self, op, ins, outs):
        self._arg(op, ins, outs, "ArgMax")

    def op_ARG_MIN(self, op, ins, outs):
        self._arg(op, ins, outs, "ArgMin")

    # -- shapes and data movement (in TFLite's layout) ---------------------------------------------------
    def op_EXPAND_DIMS(self, op, ins, outs):
        self._reshape_to_output(ins[:1], outs)

    def op_SLICE(self, op, ins, outs):
        begin, size = self.const(ins[1]), self.const(ins[2])
        if begin is None or size is None:
            raise UnsupportedOpError("needs constant begin and size")
        begin = begin.reshape(-1).astype(np.int64)
        big = np.iinfo(np.int64).max
        end = np.array([(big if s < 0 else b + s) for b, s in zip(begin, size.reshape(-1))], np.int64)
        self._slice(ins, outs, begin, end, np.ones(len(begin), np.int64))

    def _slice(self, ins, outs, begin, end, steps) -> None:
        self.same_quantization([ins[0], outs[0]])
        cut = self._name("slice")
        axes = np.arange(len(begin), dtype=np.int64)
        self.emit("Slice", [self.get(ins[0], "plain"), self.constant("starts", begin), self.constant("ends", end),
                            self.constant("axes", axes), self.constant("steps", steps)], [cut])
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Reshape", [cut, self.shape_const(self.shape(outs[0]), outs[0])], [y])
        self.set_output(outs[0], y, "plain")

    def op_STRIDED_SLICE(self, op, ins, outs):
        """A Slice over every input axis (begin / end masks, shrink axes as one element, an ellipsis as full
        ranges, new axes consuming none), then a reshape to the output's shape (which drops shrunk axes and
        inserts new ones)."""
        begin, end, strides = (self.const(i) for i in ins[1:4])
        if begin is None or end is None or strides is None:
            raise UnsupportedOpError("needs constant begin, end and strides")
        o = self.options(op, "StridedSliceOptions")
        shape = self.shape(ins[0])
        rank = len(shape)
        begin, end, strides = (v.reshape(-1).astype(np.int64) for v in (begin, end, strides))
        if not len(begin) == len(end) == len(strides) or np.any(strides == 0):
            raise ModelFormatError(f"begin / end / strides of lengths {len(begin)}, {len(end)}, {len(strides)} "
                                   f"(strides {strides.tolist()})")
        b_mask, e_mask, shrink = o.BeginMask(), o.EndMask(), o.ShrinkAxisMask()
        ellipsis, new_axis = o.EllipsisMask(), o.NewAxisMask()
        big = np.iinfo(np.int64).max
        specs = len(begin)
        consumed = sum(1 for k in range(specs) if not (new_axis >> k & 1) and not (ellipsis >> k & 1))
        starts, ends, steps = [], [], []
        for k in range(specs):
            if ellipsis >> k & 1:  # as many full ranges as the other entries leave
                for _ in range(rank - consumed - len(starts)):
                    starts.append(0)
                    ends.append(big)
                    steps.append(1)
                ellipsis = 0  # one ellipsis only
                continue
            if new_axis >> k & 1:
                continue
            d = len(starts)
            if d >= rank:
                raise ModelFormatError(f"STRIDED_SLICE indexes {d + 1} axes of a rank-{rank} input")
            if shrink >> k & 1:  # one element, the axis removed (the final reshape drops it)
                b = begin[k] + shape[d] if begin[k] < 0 else begin[k]
                starts.append(b)
                ends.append(b + 1)
                steps.append(1)
                continue
            starts.append((0 if strides[k] > 0 else big) if b_mask >> k & 1 else begin[k])
            ends.append((big if strides[k] > 0 else -big) if e_mask >> k & 1 else end[k])
            steps.append(strides[k])
        while len(starts) < rank:  # axes after the last entry: whole
            starts.append(0)
            ends.append(big)
            steps.append(1)
        self._slice(ins, outs, np.array(starts, np.int64), np.array(ends, np.int64), np.array(steps, np.int64))

    def op_GATHER(self, op, ins, outs):
        o = self.options(op, "GatherOptions")
        if o is not None and o.BatchDims():
            raise UnsupportedOpError("batch_dims is not supported yet")
        self.same_quantization([ins[0], outs[0]])
        axis = int(o.Axis()) if o is not None else 0
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Gather", [self.get(ins[0], "plain"), self.get(ins[1], "plain")], [y], axis=axis)
        self.set_output(outs[0], y, "plain")

    def op_GATHER_ND(self, op, ins, outs):
        self.same_quantization([ins[0], outs[0]])
        idx = self._name("indices")
        self.emit("Cast", [self.get(ins[1], "plain")], [idx], to=7)
        y = self._name(self.tensors[outs[0]][0])
        self.emit("GatherND", [self.get(ins[0], "plain"), idx], [y])
        self.set_output(outs[0], y, "plain")

    def _split(self, data: int, outs, axis: int, sizes) -> None:
        self.same_quantization([data] + list(outs))
        rank = len(self.shape(data))
        axis %= rank
        names = [self._name(self.tensors[o][0]) for o in outs]
        self.emit("Split", [self.get(data, "plain"), self.constant("split", np.array(sizes, np.int64))], names,
                  axis=axis)
        for o, n in zip(outs, names):
            self.set_output(o, n, "plain")

    def op_SPLIT(self, op, ins, outs):
        axis = self.const(ins[0])
        if axis is None:
            raise UnsupportedOpError("needs a constant axis")
        a = int(axis.reshape(-1)[0]) % len(self.shape(ins[1]))
        self._split(ins[1], outs, a, [self.shape(o)[a] for o in outs])

    def op_SPLIT_V(self, op, ins, outs):
        axis = self.const(ins[2])
        if axis is None:
            raise UnsupportedOpError("needs a constant axis")
        a = int(axis.reshape(-1)[0]) % len(self.shape(ins[0]))
        self._split(ins[0], outs, a, [self.shape(o)[a] for o in outs])

    def op_PACK(self, op, ins, outs):
        self.same_quantization(list(ins) + list(outs))
        o = self.options(op, "PackOptions")
        rank = len(self.shape(outs[0]))
        axis = int(o.Axis()) % rank
        parts = []
        for i in ins:
            part = self._name("unsqueezed")
            shape = list(self.shape(i))
            shape.insert(axis, 1)
            self.emit("Reshape", [self.get(i, "plain"), self.shape_const(shape, i)], [part])
            parts.append(part)
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Concat", parts, [y], axis=axis)
        self.set_output(outs[0], y, "plain")

    def op_UNPACK(self, op, ins, outs):
        o = self.options(op, "UnpackOptions")
        rank = len(self.shape(ins[0]))
        axis = int(o.Axis()) % rank
        self.same_quantization(list(ins) + list(outs))
        pieces = [self._name("piece") for _ in outs]
        self.emit("Split", [self.get(ins[0], "plain"), self.constant("split", np.ones(len(outs), np.int64))], pieces,
                  axis=axis)
        for out, piece in zip(outs, pieces):
            y = self._name(self.tensors[out][0])
            self.emit("Reshape", [piece, self.constant("shape", np.array(self.shape(out), np.int64))], [y])
            self.set_output(out, y, "plain")

    def op_TILE(self, op, ins, outs):
        reps = self.const(ins[1])
        if reps is None:
            raise UnsupportedOpError("needs constant multiples")
        y = self._name(self.tensors[outs[0]][0])
        self.emit("Tile", [self.get(ins[0], "plain"), self.constant("repeats", reps.astype(np.int64))], [y])
        self.set_output(outs[0], y, "plain")

    def op_BROADCAST_TO(self, op, ins, outs):
        y = self._name(self.tensors[outs[0]][0])
        target = np.array(self.shape(outs[0]), np.int64)
        if self.batch is not None and target.size and target[0] == self.batch:
            target[0] = 1  # Expand broadcasts 1 to whatever batch the input has
        self.emit("Expand", [self.get(ins[0], "plain"), self.constant("shape", target)], [y])
        self.set_output(outs[0], y, "plain")

    def op_BATCH_MATMUL(self, op, ins, outs):
        quantized = self.quantized(ins[0])
        if quantized and not (all(self.quantized(i) and self.tensors[i][2] == np.int8 for i in (*ins[:2], outs[0]))):
            raise UnsupportedOpError("8-bit BATCH_MATMUL needs int8 inputs and an int8 output (int32 / int16 "
                                     "outputs are not supported)")
        if not quantized:
            self.float_only(ins[0])
        o = self.options(op, "BatchMatMulOptions")
        args = []
        for i, adj in zip(ins[:2], (o.AdjX(), o.AdjY()) if o is not None else (False, False)):
            x = self.get(i, "plain")
            if adj:
                rank = len(self.shape(i))
                t = self._name("adjoint")
                self.emit("Transpose", [x], [t], perm=list(range(rank - 2)) + [rank - 1, rank - 2])
                x = t
            args.append(x)
        y = self._name(self.tensors[outs[0]][0])
        if quantized:  # int32 sums of the offset codes, TFLite's requantization (QLinearMatMul in its mode)
            q_args = [args[0], *self.qparams(ins[0]), args[1], *self.qparams(ins[1]), *self.qparams(outs[0])]
            self.emit("QLinearMatMul", q_args, [y], _requant="double")
        else:
            self.emit("MatMul", args, [y])
        self.set_output(outs[0], y, "plain")

    def op_MIRROR_PAD(self, op, ins, outs):
        """REFLECT as Pad(mode="reflect"); SYMMETRIC (the edge repeated) as, per padded axis, the mirrored
        slices of the edges concatenated around the tensor."""
        o = self.options(op, "MirrorPadOptions")
        pads = self.const(ins[1])
        if pads is None:
            raise UnsupportedOpError("needs constant paddings")
        shape = self.shape(ins[0])
        rank = len(shape)
        pads = pads.reshape(rank, 2).astype(np.int64)
        symmetric = o is not None and o.Mode() == 1
        limit = 0 if symmetric else 1  # REFLECT cannot mirror more than size - 1, SYMMETRIC than size
        if np.any(pads < 0) or any(p > shape[d] - limit for d in range(rank) for p in pads[d]):
            raise ModelFormatError(f"mirror paddings {pads.tolist()} do not fit the input shape {shape}")
        x = self.get(ins[0], "plain")
        y = self._name(self.tensors[outs[0]][0])
        if not symmetric:
            self.emit("Pad", [x, self.constant("pads", np.concatenate([pads[:, 0], pads[:, 1]]))], [y],
                      mode="reflect")
            self.set_output(outs[0], y, "plain")
            return
        for d in range(rank):
            before, after = int(pads[d, 0]), int(pads[d, 1])
            if not before and not after:
                continue
            parts = []
            if before:  # x[before - 1 :: -1] along d: the first `before` elements, mirrored
                head = self._name("mirror_head")
                self.emit("Slice", [x, self.constant("starts", np.array([before - 1], np.int64)),
                                    self.constant("ends", np.array([-shape[d] - 1], np.int64)),
                                    self.constant("axes", np.array([d], np.int64)),
                                    self.constant("steps", np.array([-1], np.int64))], [head])
                parts.append(head)
            parts.append(x)
            if after:  # the last `after` elements, mirrored
                tail = self._name("mirror_tail")
                self.emit("Slice", [x, self.constant("starts", np.array([-1], np.int64)),
                                    self.constant("ends", np.array([-after - 1], np.int64)),
                                    self.constant("axes", np.array([d], np.int64)),
                                    self.constant("steps", np.array([-1], np.int64))], [tail])
                parts.append(tail)
            padded = self._name("mirror_padded")
            self.emit("Concat", parts, [padded], axis=d)
            x = padded
        self.emit("Identity", [x], [y])
        self.set_output(outs[0], y, "plain")

    # -- spatial ops in NCHW ------------------------------------------------------------------------------
    def _resize(self, op, ins, outs, mode: str, options: str) -> None:
        self.same_quantization([ins[0], outs[0]])
        o = self.options(op, options)
        align, half = (bool(o.AlignCorners()), bool(o.HalfPixelCenters())) if o is not None else (False, False)
        if mode == "linear":
            ctm = "align_corners" if align else "half_pixel" if half else "asymmetric"
            extra = {}
            if self.quantized(ins[0]):  # TFLite's integer arithmetic (edgedl/kernels/cpu/resize_i8.py)
                if self.tensors[ins[0]][2] != np.int8:
                    raise UnsupportedOpError("8-bit RESIZE_BILINEAR is supported on int8 (TFLite's uint8 kernel "
                                             "interpolates in float)")
                extra = {"_tflite_int8": 1}
        else:
            # TFLite: floor((x + 0.5) * in / out) with half-pixel centers, which is half_pixel's
            # (x + 0.5) * in / out - 0.5 rounded half up; round(x * (in - 1) / (out - 1)) with aligned corners
            ctm = "align_corners" if align else "half_pixel" if half else "asymmetric"
            extra = {"nearest_mode": "round_prefer_ceil" if (align or half) else "floor"}
        n, _, _, c = self.shape(ins[0])
        _, oh, ow, _ = self.shape(outs[0])
        y = self._name(self.tensors[outs[0]][0])
        x = self.get(ins[0], "nchw")
        sizes = self.constant("sizes", np.array([n, c, oh, ow], np.int64))
        if self.batch is not None:  # N and C from the input, the stored output height and width
            shape, lead = self._name("shape"), self._name("batch_channels")
            self.emit("Shape", [x], [shape], start=0, end=2)
            self.emit("Concat", [shape, self.constant("hw", np.array([oh, ow], np.int64))], [lead], axis=0)
            sizes = lead
        self.emit("Resize", [x, "", "", sizes], [y], mode=mode, coordinate_transformation_mode=ctm, **extra)
        self.set_output(outs[0], y, "nchw")

    def op_RESIZE_BILINEAR(self, op, ins, outs):
        self._resize(op, ins, outs, "linear", "ResizeBilinearOptions")

    def op_RESIZE_NEAREST_NEIGHBOR(self, op, ins, outs):
        self._resize(op, ins, outs, "nearest", "ResizeNearestNeighborOptions")

    def op_DEPTH_TO_SPACE(self, op, ins, outs):
        self.same_quantization([ins[0], outs[0]])
        o = self.options(op, "DepthToSpaceOptions")
        y = self._name(self.tensors[outs[0]][0])
        self.emit("DepthToSpace", [self.get(ins[0], "nchw")], [y], blocksize=int(o.BlockSize()), mode="DCR")
        self.set_output(outs[0], y, "nchw")

    def op_SPACE_TO_DEPTH(self, op, ins, outs):
        self.same_quantization([ins[0], outs[0]])
        o = self.options(op, "SpaceToDepthOptions")
        y = self._name(self.tensors[outs[0]][0])
        self.emit("SpaceToDepth", [self.get(ins[0], "nchw")], [y], blocksize=int(o.BlockSize()))
        self.set_output(outs[0], y, "nchw")

    def op_L2_POOL_2D(self, op, ins, outs):
        self.float_only(ins[0])
        o = self.options(op, "Pool2DOptions")
        x = self.get(ins[0], "nchw")
        sq, mean, y = self._name("squares"), self._name("mean"), self._name(self.tensors[outs[0]][0])
        self.emit("Mul", [x, x], [sq])
        self.emit("AveragePool", [sq], [mean], kernel_shape=[o.FilterHeight(), o.FilterWidth()],
                  strides=[o.StrideH(), o.StrideW()], auto_pad=_padding(o.Padding()))
        self.emit("Sqrt", [mean], [y])
        self.finish(outs[0], y, "nchw", o.FusedActivationFunction())

    def op_TRANSPOSE_CONV(self, op, ins, outs):
        """TRANSPOSE_CONV(output_shape, weights [O, KH, KW, I], input[, bias])."""
        o = self.options(op, "TransposeConvOptions")
        self._transpose_conv(ins[2], ins[1], ins[3] if len(ins) > 3 else -1, outs[0], o.Padding() == 0,
                             [o.StrideH(), o.StrideW()], o.FusedActivationFunction())

    def custom_transpose_conv_bias(self, op, ins, outs):
        """MediaPipe's Convolution2DTransposeBias (input, weights [O, KH, KW, I], bias): its custom options are
        TFLite's C struct of padding (1 SAME, 2 VALID), stride width and stride height, as int32s."""
        raw = op.CustomOptionsAsNumpy() if op.CustomOptionsLength() >= 12 else None
        if raw is None:
            raise ModelFormatError("Convolution2DTransposeBias without its 12 bytes of options")
        padding, stride_w, stride_h = (int(v) for v in np.frombuffer(raw.tobytes()[:12], "<i4"))
        if padding not in (1, 2) or stride_w < 1 or stride_h < 1:
            raise ModelFormatError(f"Convolution2DTransposeBias options {padding, stride_w, stride_h}")
        self._transpose_conv(ins[0], ins[1], ins[2] if len(ins) > 2 else -1, outs[0], padding == 1,
                             [stride_h, stride_w], 0)

    def _transpose_conv(self, x_i: int, w_i: int, b_i: int, out: int, same: bool, strides, fused: int) -> None:
        """A transposed convolution as ConvTranspose with the pads TFLite derives from the output shape."""
        w = self.const(w_i)
        if not self.quantized(x_i):
            self.float_only(x_i)
        if w is None or w.ndim != 4 or len(self.shape(x_i)) != 4:
            raise UnsupportedOpError("needs a 4-D input and constant 4-D weights")
        kernel = list(w.shape[1:3])
        in_sp, out_sp = self.shape(x_i)[1:3], self.shape(out)[1:3]
        pads_b, pads_e, out_pad = [], [], []
        for d in range(2):
            full = strides[d] * (in_sp[d] - 1) + kernel[d]
            total = full - out_sp[d]
            if not same or total < 0:  # VALID (or an output past the full extent): the tail is padding
                pads_b.append(0)
                pads_e.append(max(total, 0))
                out_pad.append(max(-total, 0))
            else:
                pads_b.append(total // 2)
                pads_e.append(total - total // 2)
                out_pad.append(0)
        if self.quantized(x_i):
            self._int8_transpose_conv(x_i, w_i, b_i, out, strides, pads_b, fused)
            return
        weight = np.ascontiguousarray(w.transpose(3, 0, 1, 2))  # [I, O, KH, KW]
        args = [self.get(x_i, "nchw"), self.constant(f"{self.tensors[w_i][0]}_iohw", weight)]
        if b_i >= 0:
            args.append(self.get(b_i, "plain"))
        y = self._name(self.tensors[out][0])
        self.emit("ConvTranspose", args, [y], kernel_shape=kernel, strides=list(strides), pads=pads_b + pads_e,
                  output_padding=out_pad)
        self.finish(out, y, "nchw", fused)

    def _int8_transpose_conv(self, x_i: int, w_i: int, b_i: int, out: int, strides, pads_b, fused: int) -> None:
        """int8 TRANSPOSE_CONV as TFLite's reference computes it (int32 sums of (x - x_zp) * w, the bias, per-channel
        double-rounding requantization) in the form of a stride-1 QLinearConv: the input's codes spread ``stride``
        apart with the zero point between them (a real 0), padded (or cropped) with the zero point so that the
        spatially flipped kernel meets exactly the products TFLite scatters. Integer sums do not depend on their
        order, so the bits are TFLite's."""
        w = self.const(w_i)  # [O, KH, KW, I] int8
        if not all(self.quantized(i) and self.tensors[i][2] == np.int8 for i in (x_i, w_i, out)):
            raise UnsupportedOpError("8-bit TRANSPOSE_CONV needs int8 input, weights and output")
        if np.any(self.quant[w_i][1]):
            raise UnsupportedOpError("int8 weights with a non-zero zero point")
        n, h, wd, c = self.shape(x_i)
        if w.shape[3] != c:
            raise UnsupportedOpError(f"weights for {w.shape[3]} input channels on a {c}-channel input")
        out_sp, kernel = self.shape(out)[1:3], w.shape[1:3]
        zp_dtype = self.tensors[x_i][2]
        zp = self.constant("pad_value", np.array(self.quant[x_i][1][0], zp_dtype))
        x = self.get(x_i, "nchw")
        if strides[0] > 1 or strides[1] > 1:  # (N, C, H, W) -> (N, C, H, 1, W, 1) -> zp-padded -> (N, C, H*s, W*s)
            grid, spread, spaced = self._name("grid"), self._name("spread"), self._name("spaced")
            self.emit("Reshape", [x, self.shape_const([n, c, h, 1, wd, 1], x_i)], [grid])
            pads = [0] * 6 + [0, 0, 0, strides[0] - 1, 0, strides[1] - 1]
            self.emit("Pad", [grid, self.constant("pads", np.array(pads, np.int64)), zp], [spread], mode="constant")
            self.emit("Reshape", [spread, self.shape_const([n, c, h * strides[0], wd * strides[1]], x_i)],
                      [spaced])
            x = spaced
        # spaced length s * in (its last s - 1 codes are zero points); the flipped kernel reads positions
        # o + pad_b - (K - 1) + g of it for output o and tap g: pad K - 1 - pad_b before, out + pad_b - s * in after
        before = [kernel[d] - 1 - pads_b[d] for d in range(2)]
        after = [out_sp[d] + pads_b[d] - strides[d] * (h, wd)[d] for d in range(2)]
        if min(before + after) < 0:  # crop first (Slice), then pad what is left to pad
            start = [max(-v, 0) for v in before]
            end = [(h, wd)[d] * strides[d] - max(-after[d], 0) for d in range(2)]
            cropped = self._name("cropped")
            self.emit("Slice", [x, self.constant("starts", np.array(start, np.int64)),
                                self.constant("ends", np.array(end, np.int64)),
                                self.constant("axes", np.array([2, 3], np.int64))], [cropped])
            x = cropped
        if max(before + after) > 0:
            padded = self._name("padded")
            pads = [0, 0, max(before[0], 0), max(before[1], 0), 0, 0, max(after[0], 0), max(after[1], 0)]
            self.emit("Pad", [x, self.constant("pads", np.array(pads, np.int64)), zp], [padded], mode="constant")
            x = padded
        weight = np.ascontiguousarray(w[:, ::-1, ::-1, :].transpose(0, 3, 1, 2))  # flipped, [O, I, KH, KW]
        w_name = self.constant(f"{self.tensors[w_i][0]}_flipped_oihw", weight)
        w_scale, w_zp = self.qparams(w_i, per_tensor=False)
        self.initializers[w_zp] = np.zeros(weight.shape[0], weight.dtype)
        self.initializers[w_scale] = np.broadcast_to(self.initializers[w_scale], (weight.shape[0],)).copy()
        args = [x, *self.qparams(x_i), w_name, w_scale, w_zp, *self.qparams(out)]
        if b_i >= 0:
            args.append(self.get(b_i, "plain"))
        y = self._name(self.tensors[out][0])
        self.emit("QLinearConv", args, [y], kernel_shape=list(kernel), strides=[1, 1], **self.q_attrs(fused))
        self.set_output(out, y, "nchw")

    def op_DEQUANTIZE(self, op, ins, outs):
        data = self.const(ins[0])
        name, shape, _, _ = self.tensors[outs[0]]
        if data is not None and data.dtype == np.float16:  # float16 weights: float32 constants
            self.tensors[outs[0]] = (name, shape, np.dtype(np.float32), data.astype(np.float32))
            return
        if not self.quantized(ins[0]):
            raise UnsupportedOpError(f"DEQUANTIZE of {self.tensors[ins[0]][2].name} without quantization parameters")
        layout = self.layout_of(ins[0])
        scale, zp = self.qparams(ins[0])
        y = self._name(name)
        self.emit("DequantizeLinear", [self.get(ins[0], layout), scale, zp], [y])
        self.set_output(outs[0], y, layout)

    # -- resource variables (streaming state) -------------------------------------------------------------
    def _var_key(self, op) -> str:
        o = self.options(op, "VarHandleOptions")
        container = (o.Container() or b"").decode("utf-8", "replace") if o is not None else ""
        shared = (o.SharedName() or b"").decode("utf-8", "replace") if o is not None else ""
        return f"{container}/{shared}" if container else shared

    def op_VAR_HANDLE(self, op, ins, outs):
        self.handles[outs[0]] = self._var_key(op) or f"var{outs[0]}"

    def _handle(self, i: int) -> str:
        if i not in self.handles:
            raise ModelFormatError(f"tensor {self.tensors[i][0]!r} is not a variable handle (VAR_HANDLE's output)")
        return self.handles[i]

    def _var_type(self, key: str, shape, dtype) -> None:
        known = self.var_types.setdefault(key, (tuple(shape), np.dtype(dtype)))
        if known != (tuple(shape), np.dtype(dtype)):
            raise ModelFormatError(f"variable {key!r} is used as {known} and as {(tuple(shape), np.dtype(dtype))}")

    def op_READ_VARIABLE(self, op, ins, outs):
        key = self._handle(ins[0])
        _, shape, dtype, _ = self.tensors[outs[0]]
        self._var_type(key, shape, dtype)
        if key in self.assigned:  # read after an assignment in the same run: the assigned value
            self.set_output(outs[0], self.assigned[key], "plain")
            return
        self.set_output(outs[0], self.read.get(key) or self._state_input(key, shape, dtype), "plain")

    def op_ASSIGN_VARIABLE(self, op, ins, outs):
        key = self._handle(ins[0])
        _, shape, dtype, _ = self.tensors[ins[1]]
        self._var_type(key, shape, dtype)
        self.assigned[key] = self.get(ins[1], "plain")

    def op_CALL_ONCE(self, op, ins, outs):
        """The initialization subgraph, run here: it may only assign constants to variables."""
        o = self.options(op, "CallOnceOptions")
        index = int(o.InitSubgraphIndex())
        if not 0 < index < self.count(self.model.SubgraphsLength(), "subgraphs"):
            raise ModelFormatError(f"CALL_ONCE names subgraph {index}")
        init = _Importer(self.tfl, self.data)
        init.graph = self.model.Subgraphs(index)
        init._tensors()
        for k, sub, kind, sub_ins, sub_outs in init._operators():
            if kind == "VAR_HANDLE":
                init.handles[sub_outs[0]] = init._var_key(sub) or f"var{sub_outs[0]}"
            elif kind == "ASSIGN_VARIABLE" and init.const(sub_ins[1]) is not None:
                self.initial[init._handle(sub_ins[0])] = init.const(sub_ins[1])
            else:
                raise UnsupportedOpError(f"the initialization subgraph (CALL_ONCE) may only assign constants to "
                                         f"variables; its operator {k} is {kind}")

    def op_UNIDIRECTIONAL_SEQUENCE_LSTM(self, op, ins, outs):
        """An ONNX LSTM (gates i, o, f, c; peepholes i, o, f). Its output and cell states (inputs 18, 19) are
        TFLite variable tensors, which keep their last value from one invoke to the next: they become state
        (:meth:`_state`), so a model run frame by frame continues where the last run stopped, as in the
        interpreter, and ``Model.reset_state()`` zeroes them (``reset_all_variables``)."""
        o = self.options(op, "UnidirectionalSequenceLSTMOptions")
        ins = list(ins) + [-1] * (24 - len(ins))
        x_i = ins[0]
        self.float_only(x_i)
        cifg = ins[1] < 0 and ins[5] < 0  # no input gate: i = 1 - f
        if (ins[1] < 0) != (ins[5] < 0):
            raise ModelFormatError("the input gate's weights are given for only one of input and recurrence")
        if ins[16] >= 0 or any(ins[k] >= 0 for k in range(20, 24)):
            raise UnsupportedOpError("projection and layer-normalized LSTMs are not supported yet")
        if o is not None and (o.CellClip() or o.ProjClip()):
            raise UnsupportedOpError("cell and projection clipping are not supported yet")
        if ins[18] < 0 or ins[19] < 0:
            raise ModelFormatError("the output and cell state tensors (inputs 18, 19) are required")
        weights = [self.const(ins[k]) if ins[k] >= 0 else None for k in (1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 14, 15)]
        if any(w is None for k, w in enumerate(weights) if not (cifg and k in (0, 4, 8))):
            raise UnsupportedOpError("needs constant weights and biases")
        if cifg:
            # ONNX's input_forget couples f = 1 - i; TFLite's CIFG i = 1 - f. An input gate computing
            # sigmoid(-z_f) = 1 - f gives both: its weights, bias and peephole are the forget gate's, negated
            weights[0], weights[4], weights[8] = -weights[1], -weights[5], -weights[9]
        wi, wf, wc, wo, ri, rf, rc, ro, bi, bf, bc, bo = (np.asarray(w, np.float32) for w in weights)
        hidden = wi.shape[0]
        act = o.FusedActivationFunction() if o is not None else 4
        names = {1: "Relu", 4: "Tanh", 6: "Sigmoid"}
        if act not in names:
            raise UnsupportedOpError(f"fused activation {act} in an LSTM")
        time_major = bool(o.TimeMajor()) if o is not None else False
        x_shape = self.shape(x_i)
        batch = x_shape[1] if time_major else x_shape[0]
        W = self.constant("lstm_W", np.concatenate([wi, wo, wf, wc])[None])
        R = self.constant("lstm_R", np.concatenate([ri, ro, rf, rc])[None])
        B = self.constant("lstm_B", np.concatenate([bi, bo, bf, bc, np.zeros(4 * hidden, np.float32)])[None])
        peep = [self.const(ins[k]) if ins[k] >= 0 else None for k in (9, 11, 10)]  # i, o, f
        if cifg and peep[2] is not None:
            peep[0] = -np.asarray(peep[2], np.float32)
        if any(p is not None for p in peep) and not all(p is not None for p in peep):
            raise UnsupportedOpError("peepholes on only some gates")
        P = self.constant("lstm_P", np.concatenate(peep)[None].astype(np.float32)) if peep[0] is not None else ""
        layout = 0 if time_major else 1
        state_shape = [1, batch, hidden] if time_major else [batch, 1, hidden]
        initial = []
        for k in (18, 19):
            name, shape, dtype, data = self.tensors[ins[k]]
            key = f"lstm:{name}"
            self._var_type(key, shape, dtype)
            self.initial.setdefault(key, np.zeros(shape, dtype) if data is None else data)
            src = self.read.get(key) or self._state_input(key, shape, dtype)
            shaped = self._name(f"{name}_3d")
            self.emit("Reshape", [src, self.constant("shape", np.array(state_shape, np.int64))], [shaped])
            initial.append((key, shaped, shape))
        y, y_h, y_c = self._name("lstm_Y"), self._name("lstm_Y_h"), self._name("lstm_Y_c")
        act_name = names[act]
        self.emit("LSTM", [self.get(x_i, "plain"), W, R, B, "", initial[0][1], initial[1][1], P], [y, y_h, y_c],
                  hidden_size=int(hidden), layout=layout, activations=["Sigmoid", act_name, act_name],
                  input_forget=int(cifg))
        for (key, _, shape), final in zip(initial, (y_h, y_c)):
            flat = self._name("lstm_state")
            self.emit("Reshape", [final, self.constant("shape", np.array(shape, np.int64))], [flat])
            self.assigned[key] = flat
        out = self._name(self.tensors[outs[0]][0])
        self.emit("Reshape", [y, self.constant("shape", np.array(self.shape(outs[0]), np.int64))], [out])
        self.set_output(outs[0], out, "plain")

    def op_DENSIFY(self, op, ins, outs):
        data = self.const(ins[0])
        if data is None:
            raise UnsupportedOpError("DENSIFY of a tensor that is not a constant")
        name, shape, dtype, _ = self.tensors[outs[0]]
        if tuple(data.shape) != tuple(shape):
            raise ModelFormatError(f"DENSIFY output {name!r} has shape {shape}, its input {data.shape}")
        self.tensors[outs[0]] = (name, shape, dtype, data)  # made dense at import (converters/tflite_sparse.py)
        self.quant[outs[0]] = self.quant[outs[0]] or self.quant[ins[0]]

    def op_QUANTIZE(self, op, ins, outs):
        if self.quantized(ins[0]) and self.quantized(outs[0]):  # requantization: TFLite's Requantize
            self._unary(ins, outs, "Identity", "QUANTIZE")
            return
        if self.tensors[ins[0]][2] != np.float32 or not self.quantized(outs[0]):
            raise UnsupportedOpError("QUANTIZE from float32 to int8 / uint8 is supported (not requantization)")
        layout = self.layout_of(ins[0])
        scale, zp = self.qparams(outs[0])
        y = self._name(self.tensors[outs[0]][0])
        self.emit("QuantizeLinear", [self.get(ins[0], layout), scale, zp], [y], _round="away")
        self.set_output(outs[0], y, layout)


def _padding(code: int) -> str:
    if code not in _PADDING:
        raise ModelFormatError(f"unknown padding {code}")
    return _PADDING[code]
