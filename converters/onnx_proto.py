"""The ONNX protobuf messages and the decoding edgedl needs, without importing the ``onnx`` package.

``import onnx`` costs about a second on a small board (``onnx.helper`` pulls in ``ml_dtypes`` and more), yet
reading a model needs only the message classes protoc generated from ``onnx-ml.proto``, which depend on
``google.protobuf`` alone. :func:`schema` executes that generated module (``onnx/onnx_ml_pb2.py`` in the
installed onnx) on its own, so the ``onnx`` package's ``__init__`` never runs. Protobuf keys message classes
by their descriptor in the default pool: the classes built here are the very classes ``onnx.ModelProto``,
``onnx.TensorProto``... name, whether ``onnx`` is imported before or after (an identical file registered
twice is accepted).

:func:`tensor_to_array` and :func:`attribute_value` stand in for ``onnx.numpy_helper.to_array`` and
``onnx.helper.get_attribute_value`` for the element types edgedl runs (tests compare them on every type).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
from types import ModuleType

import numpy as np

#: ONNX TensorProto.DataType codes (fixed by the ONNX standard) -> numpy dtypes edgedl supports
FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, STRING, BOOL, FLOAT16, DOUBLE, UINT32, UINT64 = range(1, 14)
DTYPES: dict[int, np.dtype] = {
    FLOAT: np.dtype(np.float32),
    DOUBLE: np.dtype(np.float64),
    FLOAT16: np.dtype(np.float16),
    INT8: np.dtype(np.int8),
    UINT8: np.dtype(np.uint8),
    INT16: np.dtype(np.int16),
    UINT16: np.dtype(np.uint16),
    INT32: np.dtype(np.int32),
    UINT32: np.dtype(np.uint32),
    INT64: np.dtype(np.int64),
    UINT64: np.dtype(np.uint64),
    BOOL: np.dtype(np.bool_),
    STRING: np.dtype(object),  # a string tensor is an object array of Python str (UTF-8 decoded)
}
BFLOAT16 = 16
#: the low-precision element types (ONNX 1.14 to 1.23): 8-bit floats, 4-bit and 2-bit integers, 4-bit and
#: 6-bit floats
(FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, UINT4, INT4, FLOAT4E2M1, FLOAT8E8M0, UINT2, INT2,
 FLOAT6E2M3, FLOAT6E3M2) = range(17, 29)
#: low-precision element type code -> numpy dtype: ml_dtypes' types, one byte per element in memory (4-, 2- and
#: 6-bit values are packed in a tensor's raw_data / int32_data, see :func:`tensor_to_array`). Only casts and
#: the quantization ops compute on them. An older ml_dtypes may lack the newest ones.
LOW_PRECISION_DTYPES: dict[int, np.dtype] = {}
_ML_DTYPES = {
    FLOAT8E4M3FN: "float8_e4m3fn",
    FLOAT8E4M3FNUZ: "float8_e4m3fnuz",
    FLOAT8E5M2: "float8_e5m2",
    FLOAT8E5M2FNUZ: "float8_e5m2fnuz",
    UINT4: "uint4",
    INT4: "int4",
    FLOAT4E2M1: "float4_e2m1fn",
    FLOAT8E8M0: "float8_e8m0fnu",
    UINT2: "uint2",
    INT2: "int2",
    FLOAT6E2M3: "float6_e2m3fn",
    FLOAT6E3M2: "float6_e3m2fn",
}
#: every element type edgedl reads and runs: code -> numpy dtype. bfloat16 and the low-precision types join
#: DTYPES / LOW_PRECISION_DTYPES / ELEMENT_DTYPES when a model first needs them (:func:`load_ml_dtypes`):
#: importing ml_dtypes costs ~0.6 s, which a float32 or int8 model's start should not pay
ELEMENT_DTYPES: dict[int, np.dtype] = dict(DTYPES)
#: the codes whose numpy types come from ml_dtypes
ML_CODES = frozenset({BFLOAT16, *_ML_DTYPES})
#: the numpy names of the low-precision types (known without importing ml_dtypes)
LOW_PRECISION_NAMES = frozenset(_ML_DTYPES.values())
_ml_loaded = False


def load_ml_dtypes() -> None:
    """Add bfloat16 and the low-precision types (ml_dtypes' numpy types; ml_dtypes comes with onnx) to the
    tables, once."""
    global _ml_loaded
    if _ml_loaded:
        return
    _ml_loaded = True
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - onnx requires ml_dtypes
        return
    DTYPES[BFLOAT16] = np.dtype(ml_dtypes.bfloat16)
    for code, name in _ML_DTYPES.items():
        if hasattr(ml_dtypes, name):
            LOW_PRECISION_DTYPES[code] = np.dtype(getattr(ml_dtypes, name))
    ELEMENT_DTYPES.update(DTYPES)
    ELEMENT_DTYPES.update(LOW_PRECISION_DTYPES)


def element_dtype(code: int) -> np.dtype | None:
    """The numpy dtype of an element type code, or None when edgedl has none."""
    if code in ML_CODES:
        load_ml_dtypes()
    return ELEMENT_DTYPES.get(code)
#: bits per element of the sub-byte types: 4-bit values are packed two per byte (first in the low nibble),
#: 2-bit values four per byte (from the least significant bits up), 6-bit values four per three bytes (an
#: LSB-first bit stream); the last byte is padded when the element count does not fill it
PACKED_BITS = {UINT4: 4, INT4: 4, FLOAT4E2M1: 4, UINT2: 2, INT2: 2, FLOAT6E2M3: 6, FLOAT6E3M2: 6}

#: TensorProto.DataLocation
DEFAULT, EXTERNAL = 0, 1

#: AttributeProto.AttributeType codes
(A_UNDEFINED, A_FLOAT, A_INT, A_STRING, A_TENSOR, A_GRAPH, A_FLOATS, A_INTS, A_STRINGS, A_TENSORS, A_GRAPHS,
 A_SPARSE_TENSOR, A_SPARSE_TENSORS, A_TYPE_PROTO, A_TYPE_PROTOS) = range(15)

#: the repeated field holding each element type's values when a tensor has no raw_data, and the numpy type
#: those values are read as (as onnx.numpy_helper reads them)
_TYPED_FIELD = {
    FLOAT: ("float_data", np.float32),
    DOUBLE: ("double_data", np.float64),
    INT32: ("int32_data", np.int32),
    INT64: ("int64_data", np.int64),
    UINT32: ("uint64_data", np.uint32),
    UINT64: ("uint64_data", np.uint64),
    INT8: ("int32_data", np.int32),
    UINT8: ("int32_data", np.int32),
}
#: element types stored as the low 16 bits (bit pattern) of each int32_data entry
_INT32_AS_16BIT = {FLOAT16, INT16, UINT16, BFLOAT16}
#: element types stored as the low 8 bits (bit pattern) of each int32_data entry
_INT32_AS_8BIT = {BOOL, FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, FLOAT8E8M0}

#: attribute types whose value is a message, and those whose value is a list of messages: the field names
_MESSAGE_FIELD = {A_TENSOR: "t", A_SPARSE_TENSOR: "sparse_tensor", A_GRAPH: "g", A_TYPE_PROTO: "tp"}
_REPEATED_MESSAGE_FIELD = {A_TENSORS: "tensors", A_SPARSE_TENSORS: "sparse_tensors", A_GRAPHS: "graphs",
                           A_TYPE_PROTOS: "type_protos"}

_lock = threading.Lock()
_schema: ModuleType | None = None


def _load_generated(name: str) -> ModuleType | None:
    """Execute ``onnx/<name>.py`` (protoc output) as a private module; None when it is not there."""
    spec = importlib.util.find_spec("onnx")  # a top-level package: finding it does not import it
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, f"{name}.py")
        if os.path.isfile(path):
            file_spec = importlib.util.spec_from_file_location(f"edgedl.converters._{name}", path)
            if file_spec is None or file_spec.loader is None:
                return None
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            return module
    return None


def schema() -> ModuleType:
    """The module holding the ONNX message classes (``ModelProto``, ``TensorProto``, ...).

    ``onnx.onnx_ml_pb2`` when onnx is imported already; otherwise onnx's generated file executed privately
    (about 20 ms, no ``onnx/__init__``); ``import onnx`` as the last resort (an onnx laid out differently)."""
    global _schema
    if _schema is not None:
        return _schema
    with _lock:
        if _schema is None:
            module = sys.modules.get("onnx.onnx_ml_pb2")
            if module is None:
                try:
                    module = _load_generated("onnx_ml_pb2")
                except Exception:  # noqa: BLE001 - whatever went wrong, onnx's own import says it better
                    module = None
            if module is None or not hasattr(module, "ModelProto"):
                import onnx

                module = onnx.onnx_ml_pb2 if hasattr(onnx, "onnx_ml_pb2") else onnx
            _schema = module
    return _schema


def as_model_proto(obj):
    """``obj`` as a ModelProto of :func:`schema`'s class, or None when it is not an ONNX ModelProto message.

    An ``onnx.ModelProto`` is that class already and comes back as is; a ModelProto message of another
    generated class (same ``onnx.ModelProto`` descriptor name) is re-parsed from its serialized bytes."""
    cls = schema().ModelProto
    if isinstance(obj, cls):
        return obj
    descriptor = getattr(obj, "DESCRIPTOR", None)
    if getattr(descriptor, "full_name", None) == "onnx.ModelProto" and hasattr(obj, "SerializeToString"):
        return cls.FromString(obj.SerializeToString())
    return None


def data_type_name(code: int) -> str:
    """The ONNX name of an element type code (``"BFLOAT16"``); ValueError for a code ONNX does not define."""
    return schema().TensorProto.DataType.Name(code)


def _decode_raw(raw: bytes, dtype: np.dtype) -> np.ndarray:
    """Little-endian bytes as a 1-D array of ``dtype`` in native byte order (a read-only view on ``raw``)."""
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    return arr if sys.byteorder == "little" else arr.astype(dtype)


def data_nbytes(code: int, count: int) -> int:
    """Bytes that ``count`` elements of element type ``code`` take in raw_data (packed for sub-byte types)."""
    bits = PACKED_BITS.get(code)
    if bits is not None:
        return -(-count * bits // 8)
    return count * element_dtype(code).itemsize


def _unpack(data: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The first ``count`` ``bits``-bit codes of the packed bytes ``data`` (uint8, 1-D), one uint8 each.

    ValueError when ``data`` is not exactly the ``ceil(count * bits / 8)`` bytes that hold them."""
    need = -(-count * bits // 8)
    if data.size != need:
        raise ValueError(f"{count} {bits}-bit elements take {need} packed bytes, the tensor holds {data.size}")
    if bits == 4:
        out = np.empty(need * 2, np.uint8)
        out[0::2] = data & 0x0F
        out[1::2] = data >> 4
    elif bits == 2:
        out = np.empty(need * 4, np.uint8)
        for k in range(4):
            out[k::4] = (data >> (2 * k)) & 0x03
    elif bits == 6:  # 4 codes in 3 bytes: b0 = c0 | c1 << 6, b1 = c1 >> 2 | c2 << 4, b2 = c2 >> 4 | c3 << 2
        groups = -(-count // 4)
        padded = np.zeros(groups * 3, np.uint8)
        padded[:need] = data
        b0, b1, b2 = padded[0::3], padded[1::3], padded[2::3]
        out = np.empty((groups, 4), np.uint8)
        out[:, 0] = b0 & 0x3F
        out[:, 1] = (b0 >> 6) | ((b1 & 0x0F) << 2)
        out[:, 2] = (b1 >> 4) | ((b2 & 0x03) << 4)
        out[:, 3] = b2 >> 2
        out = out.reshape(-1)
    else:  # pragma: no cover - PACKED_BITS holds 2, 4 and 6 only
        raise ValueError(f"no {bits}-bit packing")
    return out[:count]


def tensor_to_array(t, raw: bytes | None = None) -> np.ndarray:
    """The values of TensorProto ``t`` as an array of its dims, like ``onnx.numpy_helper.to_array``.

    Data come from ``raw`` when given (external data the caller read), else ``t.raw_data`` when set, else the
    typed field of the element type (float_data, int32_data, int64_data, double_data, uint64_data). Element
    types outside :data:`ELEMENT_DTYPES` raise TypeError; a tensor with a segment, and values that do not fill
    the dims, raise ValueError (onnx's and numpy's messages). The result may be a read-only view on the bytes.

    4-bit and 2-bit values are packed two / four per byte in raw_data and in int32_data (one byte per entry),
    6-bit values four per three bytes in raw_data and one per int32_data entry (its low 6 bits); the dims
    give the element count, and the packed bytes must be exactly those that hold it (the last one padded).
    They are unpacked to one byte per element, the ml_dtypes layout."""
    if t.HasField("segment"):
        raise ValueError("Currently not supporting loading segments.")
    code = t.data_type
    dtype = element_dtype(code)
    if dtype is None:
        raise TypeError(f"element type {code} is not supported")
    dims = tuple(t.dims)
    if code == STRING:
        if raw is not None or t.HasField("raw_data"):
            raise ValueError("a string tensor cannot hold raw data")
        values = [v.decode("utf-8", errors="replace") for v in t.string_data]
        out = np.empty(len(values), object)
        out[:] = values
        return out.reshape(dims)
    if raw is None and t.HasField("raw_data"):
        raw = t.raw_data
    packed = PACKED_BITS.get(code)
    if packed is not None:  # codes packed in raw_data, or one packed byte per int32_data entry (float6: one code)
        if raw is not None:
            data = np.frombuffer(raw, np.uint8)
        else:
            data = np.array(t.int32_data, dtype=np.int32).view(np.uint32).astype(np.uint8)
            if packed == 6:
                data = data & 0x3F
        count = int(np.prod(dims, dtype=np.int64))
        if packed == 6 and raw is None:
            if data.size != count:
                raise ValueError(f"{count} elements, the tensor holds {data.size} int32_data entries")
            return data.view(dtype).reshape(dims)
        return _unpack(data, count, packed).view(dtype).reshape(dims)
    if raw is not None:
        return _decode_raw(raw, dtype).reshape(dims)
    if code in _INT32_AS_16BIT:
        bits = np.array(t.int32_data, dtype=np.int32).view(np.uint32).astype(np.uint16)
        return bits.reshape(dims).view(dtype)
    if code in _INT32_AS_8BIT:
        return np.array(t.int32_data, dtype=np.int32).view(np.uint32).astype(np.uint8).view(dtype).reshape(dims)
    field, storage = _TYPED_FIELD[code]
    return np.asarray(getattr(t, field), dtype=storage).astype(dtype).reshape(dims)


def attribute_value(a):
    """The value of AttributeProto ``a``, like ``onnx.helper.get_attribute_value``: a float, int, bytes,
    message, or a list of them; None for an undefined attribute. ValueError for a reference attribute
    (``ref_attr_name``, only meaningful inside functions) or an unknown type."""
    if a.ref_attr_name:
        raise ValueError(f"Cannot get value of reference attribute: {a}")
    kind = a.type
    if kind == A_FLOAT:
        return a.f
    if kind == A_INT:
        return a.i
    if kind == A_STRING:
        return a.s
    if kind == A_FLOATS:
        return list(a.floats)
    if kind == A_INTS:
        return list(a.ints)
    if kind == A_STRINGS:
        return list(a.strings)
    if kind in _MESSAGE_FIELD:
        return getattr(a, _MESSAGE_FIELD[kind])
    if kind in _REPEATED_MESSAGE_FIELD:
        return list(getattr(a, _REPEATED_MESSAGE_FIELD[kind]))
    if kind == A_UNDEFINED:
        return None
    raise ValueError(f"Unsupported ONNX attribute: {a}")


def tensor_dtype_to_np_dtype(code: int) -> np.dtype:
    """numpy dtype of an ONNX element type code, like ``onnx.helper.tensor_dtype_to_np_dtype``: the types in
    :data:`ELEMENT_DTYPES` directly, any other code through onnx itself (its types and errors)."""
    dtype = element_dtype(code)
    if dtype is not None:
        return dtype
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(code))
