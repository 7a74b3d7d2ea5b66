"""Random generators: RandomUniform, RandomNormal, RandomUniformLike, RandomNormalLike (opsets 1, 22), Bernoulli
(opsets 15, 22) and Multinomial (opsets 7, 22).

* RandomUniform / RandomNormal: a tensor of the ``shape`` attribute in ``dtype`` (default float), drawn from
  U[low, high) (defaults 0, 1) or N(mean, scale ** 2) (defaults 0, 1).
* RandomUniformLike / RandomNormalLike: the same with the input's shape; ``dtype`` defaults to the input's
  (which must then be a float type).
* Bernoulli: ``y = 1 if u < p else 0`` per element of the probabilities ``p`` (every value must be in [0, 1];
  anything else, NaN included, is an EdgeDLError at run time), in ``dtype`` (default: the input's; any numeric
  type or bool).
* Multinomial: ``input`` (batch, classes) holds unnormalized log-probabilities; each of the ``sample_size``
  samples per row is a class index drawn from softmax(row), in ``dtype`` int32 (default) or int64. A row with
  no finite, positive probability mass is an EdgeDLError at run time.

Randomness: each op instance (one per node and plan) owns a ``numpy.random.Generator`` (PCG64). With the
``seed`` attribute it is seeded from it (an integral seed s >= 0 as ``default_rng(s)``, any other float by its
IEEE bits), so a freshly loaded model repeats the same draws run after run of the program; without it, fresh OS
entropy. Later runs of one model continue the stream (each run draws new values). Values cannot match
onnxruntime's or onnx's reference generators (different algorithms): only shapes, dtypes and distributions do.

Draws are float32 for float32 / float16 / bfloat16 outputs (written straight into the output for float32) and
float64 for double. Uniform values are kept below ``high`` for float32 / float64 (the scaled draw can round up
to it); the half types round after scaling. RandomUniform / RandomNormal have no inputs, so they run eagerly
(``Op.eager``) to stay out of plan-time constant folding: every run draws anew; every random op is
``nondeterministic``, which keeps the planner and the training tape from folding one whose input is a constant.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import EdgeDLError
from ..ir import TensorType, check_shape
from ..registry import Kernel, Op, register
from .gather import onnx_elem_dtype

_FLOATS = ("float16", "float32", "float64", "bfloat16")
_BERNOULLI_OUT = _FLOATS + ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")


def make_rng(seed) -> np.random.Generator:
    """The Generator of one op instance: seeded from the ``seed`` attribute (None / NaN: OS entropy)."""
    if seed is None:
        return np.random.default_rng()
    s = float(seed)
    if math.isnan(s):
        return np.random.default_rng()
    if s.is_integer() and 0 <= s < 2.0 ** 63:
        return np.random.default_rng(int(s))
    return np.random.default_rng(int(np.array(s, np.float64).view(np.uint64)))


class _Random(Op):
    """Shared by the random ops: the per-instance Generator and the float draws."""

    #: the outputs differ from run to run: never fold (see the module docstring; honoured where the planner
    #: reads it)
    nondeterministic = True

    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.seed = self.attr("seed")
        self.rng = make_rng(self.seed)

    def out_dtype(self, default):
        code = self.attr("dtype")
        if code is None:
            return default
        return onnx_elem_dtype(self, code, "dtype")

    # draws ------------------------------------------------------------------------------------------------
    def fill(self, out: np.ndarray) -> None:
        """Write a draw into the preallocated ``out`` (any float dtype, any layout)."""
        if out.dtype in (np.float32, np.float64) and out.flags.c_contiguous and out.flags.writeable:
            self.fill_into(out)
        else:
            out[...] = self.draw(out.shape, out.dtype)

    def draw(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        work = np.empty(shape, np.float64 if dtype == np.float64 else np.float32)
        self.fill_into(work)
        return work.astype(dtype, copy=False)

    def fill_into(self, out: np.ndarray) -> None:
        raise NotImplementedError


class _UniformDraw(_Random):
    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.low = float(self.attr("low", 0.0))
        self.high = float(self.attr("high", 1.0))
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise self.error(f"low and high must be finite, got {self.low}, {self.high}")
        if self.high < self.low:
            raise self.error(f"high ({self.high}) must not be below low ({self.low})")

    def fill_into(self, out):
        ft = out.dtype.type
        self.rng.random(dtype=out.dtype, out=out)
        out *= ft(self.high - self.low)
        out += ft(self.low)
        if self.high > self.low:
            np.minimum(out, np.nextafter(ft(self.high), ft(self.low)), out=out)


class _NormalDraw(_Random):
    def __init__(self, node, opset):
        super().__init__(node, opset)
        self.mean = float(self.attr("mean", 0.0))
        self.scale = float(self.attr("scale", 1.0))
        if not (math.isfinite(self.mean) and math.isfinite(self.scale)):
            raise self.error(f"mean and scale must be finite, got {self.mean}, {self.scale}")

    def fill_into(self, out):
        ft = out.dtype.type
        self.rng.standard_normal(dtype=out.dtype, out=out)
        out *= ft(self.scale)
        out += ft(self.mean)


class _Generator:
    """RandomUniform / RandomNormal: no inputs, the ``shape`` attribute; run eagerly (never folded)."""

    num_inputs = (0, 0)
    eager = True

    def infer(self, ins, consts):
        shape = self.attr("shape")
        if shape is None:
            raise self.error("the shape attribute is required")
        shape = tuple(int(d) for d in shape)
        check_shape(shape, f"{self.node.describe()}: shape")
        dtype = self.out_dtype(np.dtype(np.float32))
        if dtype.name not in _FLOATS:
            raise self.unsupported(f"dtype {dtype.name} is not supported ({', '.join(_FLOATS)})")
        self.shape, self.dtype = shape, dtype
        return [TensorType(shape, dtype)]

    def ref(self):
        return [self.draw(self.shape, self.dtype)]


class _Like:
    """RandomUniformLike / RandomNormalLike: the input's shape; dtype from the attribute or the input."""

    num_inputs = (1, 1)

    def infer(self, ins, consts):
        x = ins[0]
        dtype = self.out_dtype(None)
        if dtype is None:
            dtype = np.dtype(x.dtype)
            if dtype.name not in _FLOATS:
                raise self.error(f"the input has dtype {dtype.name}: give a float dtype attribute for the output")
        if dtype.name not in _FLOATS:
            raise self.unsupported(f"dtype {dtype.name} is not supported ({', '.join(_FLOATS)})")
        self.shape, self.dtype = tuple(x.shape), dtype
        return [TensorType(self.shape, dtype)]

    def ref(self, x):
        return [self.draw(x.shape, self.dtype)]

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            self.fill(outputs[0])
        return Kernel(run, impl="numpy")


@register
class RandomUniform(_Generator, _UniformDraw):
    op_type = "RandomUniform"


@register
class RandomNormal(_Generator, _NormalDraw):
    op_type = "RandomNormal"


@register
class RandomUniformLike(_Like, _UniformDraw):
    op_type = "RandomUniformLike"


@register
class RandomNormalLike(_Like, _NormalDraw):
    op_type = "RandomNormalLike"


# --- Bernoulli ---------------------------------------------------------------------------------------------
@register
class Bernoulli(_Random):
    op_type = "Bernoulli"
    num_inputs = (1, 1)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 15:
            raise self.unsupported(f"Bernoulli is defined from opset 15 (the model has {opset})")

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype).name not in _FLOATS:
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported ({', '.join(_FLOATS)})")
        dtype = self.out_dtype(np.dtype(x.dtype))
        if dtype.name not in _BERNOULLI_OUT:
            raise self.unsupported(f"dtype {dtype.name} is not supported ({', '.join(_BERNOULLI_OUT)})")
        self.dtype = dtype
        return [TensorType(tuple(x.shape), dtype)]

    def _sample(self, p: np.ndarray, out: np.ndarray) -> None:
        p = np.asarray(p)
        pf = p if p.dtype in (np.float32, np.float64) else p.astype(np.float32)
        ok = (pf >= 0) & (pf <= 1)  # NaN fails both
        if not ok.all():
            bad = tuple(int(i) for i in np.argwhere(~ok)[0])
            raise self.error(f"probability {pf[bad]} at index {bad} is outside [0, 1]", cls=EdgeDLError)
        u = self.rng.random(p.shape, dtype=pf.dtype)
        np.less(u, pf, out=out, casting="unsafe")

    def ref(self, p):
        out = np.empty(p.shape, self.dtype)
        self._sample(p, out)
        return [out]

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            self._sample(inputs[0], outputs[0])
        return Kernel(run, impl="numpy")


# --- Multinomial -------------------------------------------------------------------------------------------
@register
class Multinomial(_Random):
    op_type = "Multinomial"
    num_inputs = (1, 1)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 7:
            raise self.unsupported(f"Multinomial is defined from opset 7 (the model has {opset})")
        self.sample_size = int(self.attr("sample_size", 1))
        if self.sample_size < 1:
            raise self.error(f"sample_size must be positive, got {self.sample_size}")

    def infer(self, ins, consts):
        x = ins[0]
        if np.dtype(x.dtype).name not in _FLOATS:
            raise self.unsupported(f"input dtype {np.dtype(x.dtype).name} is not supported ({', '.join(_FLOATS)})")
        if len(x.shape) != 2:
            raise self.error(f"input must be (batch_size, class_size), got shape {tuple(x.shape)}")
        dtype = self.out_dtype(np.dtype(np.int32))
        if dtype.name not in ("int32", "int64"):
            raise self.error(f"dtype must be int32 or int64, got {dtype.name}")
        self.dtype = dtype
        shape = (int(x.shape[0]), self.sample_size)
        check_shape(shape, f"{self.node.describe()}: output")
        if x.shape[1] == 0 and x.shape[0] > 0:
            raise self.error("cannot sample from 0 classes")
        return [TensorType(shape, dtype)]

    def _sample(self, x: np.ndarray, out: np.ndarray) -> None:
        b, k = x.shape
        if b == 0:
            return
        x64 = x.astype(np.float64)
        with np.errstate(all="ignore"):
            top = x64.max(axis=1, keepdims=True)
            cdf = np.cumsum(np.exp(x64 - top), axis=1)
        total = cdf[:, -1]
        ok = np.isfinite(total) & (total > 0) & np.isfinite(cdf).all(axis=1)
        if not ok.all():
            r = int(np.argmin(ok))
            raise self.error(f"row {r} of the log-probabilities gives no finite probability distribution "
                             f"(values {x[r][:8].tolist()}{' ...' if k > 8 else ''})", cls=EdgeDLError)
        # rows become consecutive unit intervals [r, r + 1): one searchsorted over the flattened cdf
        rows = np.arange(b, dtype=np.float64)[:, None]
        flat = (cdf / total[:, None] + rows).reshape(-1)
        u = self.rng.random((b, self.sample_size)) + rows
        idx = np.searchsorted(flat, u.reshape(-1), side="right").reshape(b, self.sample_size)
        idx -= np.arange(b)[:, None] * k
        np.clip(idx, 0, k - 1, out=idx)
        out[...] = idx

    def ref(self, x):
        out = np.empty((x.shape[0], self.sample_size), self.dtype)
        self._sample(x, out)
        return [out]

    def build(self, ins, outs, consts):
        def run(inputs, outputs, scratch):
            self._sample(inputs[0], outputs[0])
        return Kernel(run, impl="numpy")
