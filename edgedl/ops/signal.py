"""Signal processing: DFT (opset 17 and 20), STFT, HannWindow, HammingWindow, BlackmanWindow, MelWeightMatrix.

DFT of a tensor ``[d0, ..., dN, c]`` (c = 1: real, 2: real and imaginary) along ``axis`` with ``n =
dft_length`` (the input zero-padded or cropped to n; default the axis size, or ``2 (m - 1)`` for an IRFFT of
m bins)::

    forward  y[k] = sum_j x[j] exp(-2 pi i j k / n)              k < n, or k <= n // 2 with onesided (RFFT)
    inverse  x[j] = 1/n sum_k y[k] exp(+2 pi i j k / n)          onesided: y is one-sided, x real (IRFFT)

Opset 17 has ``axis`` as an attribute (default 1), opset 20 as an optional input (default -2); both accept
``[-r, -2]`` and ``[0, r - 2]``. An RFFT needs a real input. STFT (signal ``[batch, length, 1 or 2]``, or
``[batch, length]`` read as real, as onnxruntime accepts): frames ``x[b, f * step + j]``
(``frames = (L - frame_length) // step + 1``) times the window, each transformed as above (onesided by
default, for a real signal). The dft_length, axis, frame_step and frame_length values must be constants when
the plan is built (they set shapes).

Kernels (float32 and float64): the complex128 mixed-radix FFT of :mod:`edgedl.kernels.cpu.signal` (a real
input of even length as a half-length complex FFT), or, for float32 lines along the innermost signal axis
whose FFT length has a prime factor above 7, a GEMM with a precomputed DFT matrix (window folded in).
float16, and lengths with a prime factor above 64 that the GEMM does not take, run the numpy reference
(numpy.fft in float64).

Windows (size N, ``M = N`` when periodic (the default), ``N - 1`` when symmetric; a symmetric window of
size 1 is [1])::

    hann      0.5 - 0.5 cos(2 pi n / M)
    hamming   25/46 - 21/46 cos(2 pi n / M)
    blackman  0.42 - 0.5 cos(2 pi n / M) + 0.08 cos(4 pi n / M)

MelWeightMatrix: ``(dft_length // 2 + 1, num_mel_bins)`` triangular filters on the mel scale
``mel(f) = 2595 log10(1 + f / 700)``, with the band edges computed exactly as onnx's reference computes them
(``num_mel_bins + 2`` edge points spaced ``(mel(upper) - mel(lower)) / (num_mel_bins + 2)`` apart, mapped to
bins ``floor((dft_length + 1) f / sample_rate)``); an edge outside the spectrum is an error.
"""
from __future__ import annotations

import numpy as np

from ..errors import EdgeDLError
from ..ir import MAX_TENSOR_ELEMENTS, TensorType
from ..registry import Kernel, Op, ref_kernel, register
from .common import const_ints
from .gather import onnx_elem_dtype

_FLOATS = ("float16", "float32", "float64")
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: the largest DFT matrix (elements) the GEMM path precomputes
_MAX_DFT_MATRIX = 1 << 22
#: FFT lengths whose largest prime factor is above this run as a GEMM (float32, innermost axis) when they can
_GEMM_PRIME = 7
#: the largest prime factor the Numba FFT handles (its generic radix-p pass costs O(n p))
_FFT_PRIME = 64


def _dtname(t) -> str:
    return np.dtype(t.dtype).name


def _flag(op: Op, name: str, default: int) -> int:
    v = int(op.attr(name, default))
    if v not in (0, 1):
        raise op.error(f"attribute {name} must be 0 or 1, got {v}")
    return v


def _scalar_int(op: Op, consts, ins, index: int, what: str) -> int:
    t = ins[index]
    if np.dtype(t.dtype).kind not in "iu":
        raise op.error(f"{what} must be int32 or int64, got {_dtname(t)}")
    if len(t.shape) > 1 or (len(t.shape) == 1 and t.shape[0] != 1):
        raise op.error(f"{what} must be a scalar, got shape {t.shape}")
    return const_ints(op, consts, index, what)[0]


def _check_size(op: Op, shape, what: str = "output"):
    total = int(np.prod(shape, dtype=np.float64))
    if total > MAX_TENSOR_ELEMENTS:
        raise op.error(f"the {what} would have shape {tuple(shape)} ({total} elements), more than edgedl accepts "
                       f"({MAX_TENSOR_ELEMENTS})")


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


def _use_gemm(n: int, mode: int, rows: int, cols: int, dtype) -> bool:
    """Whether a transform runs as a GEMM with a DFT matrix (float32, a prime factor above 7, matrix small)."""
    from ..kernels.cpu.signal import IRFFT, RFWD, largest_prime_factor

    if np.dtype(dtype) != np.float32 or rows * cols > _MAX_DFT_MATRIX or rows == 0 or cols == 0:
        return False
    nfft = n // 2 if mode in (RFWD, IRFFT) else n
    return largest_prime_factor(nfft) > _GEMM_PRIME


def _fft_ok(n: int, mode: int) -> bool:
    """Whether the Numba FFT takes this length: its generic radix costs O(n p) for a prime factor p, so a
    length with a prime factor above 64 runs numpy's FFT (Bluestein's algorithm) instead."""
    from ..kernels.cpu.signal import IRFFT, RFWD, largest_prime_factor

    return largest_prime_factor(n // 2 if mode in (RFWD, IRFFT) else n) <= _FFT_PRIME


def _fft_mode(n: int, inverse: bool, onesided: bool, c_in: int) -> int:
    from ..kernels.cpu import signal as S

    if inverse:
        if onesided:
            return S.IRFFT if n % 2 == 0 else S.IRFFT_ODD
        return S.INV
    return S.RFWD if c_in == 1 and n % 2 == 0 else S.FWD


# ----------------------------------------------------------------------------------------------------------
@register
class DFT(Op):
    op_type = "DFT"
    kernels = {"cpu": ("float32", "float64")}
    num_inputs = (1, 3)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 17:
            raise self.unsupported(f"DFT needs opset 17 or later, the model has opset {opset}")
        self.inverse = bool(_flag(self, "inverse", 0))
        self.onesided = bool(_flag(self, "onesided", 0))
        if opset < 20:
            if len([i for i in node.inputs if i]) > 2 or len(node.inputs) > 2:
                raise self.error(f"takes 1 or 2 inputs at opset {opset} (axis is an attribute before opset 20)")
            self.axis_attr = int(self.attr("axis", 1))
        else:
            if "axis" in node.attrs:
                raise self.error("axis is an input since opset 20, not an attribute")
            self.axis_attr = None

    def _params(self, shape, consts, ins):
        """(axis, n, n_take, n_out, c_in, c_out) from the input shape and the constant inputs."""
        r = len(shape)
        if r < (3 if self.opset < 20 else 2):
            raise self.error(f"input must be [{'batch, ' if self.opset < 20 else ''}signal dims..., 1 or 2], "
                             f"got shape {tuple(shape)}")
        c_in = shape[-1]
        if c_in not in (1, 2):
            raise self.error(f"the last dimension must be 1 (real) or 2 (complex), got {c_in}")
        if self.axis_attr is not None:
            axis = self.axis_attr
        elif len(ins) > 2 and ins[2] is not None:
            axis = _scalar_int(self, consts, ins, 2, "axis")
        else:
            axis = -2
        if not (-r <= axis <= -2 or 0 <= axis <= r - 2):
            raise self.error(f"axis {axis} is out of range for rank {r} (valid: [{-r}, -2] and [0, {r - 2}])")
        axis = axis + r if axis < 0 else axis
        dim = shape[axis]
        irfft = self.inverse and self.onesided
        if len(ins) > 1 and ins[1] is not None:
            n = _scalar_int(self, consts, ins, 1, "dft_length")
            if n < 1:
                raise self.error(f"dft_length must be positive, got {n}")
        else:
            n = 2 * (dim - 1) if irfft else dim
            if n < 1:
                raise self.error(f"the signal axis {axis} has size {dim}: no DFT length to infer"
                                 + (" (an IRFFT needs at least 2 bins)" if irfft else ""))
        if self.onesided and not self.inverse and c_in == 2:
            raise self.error("onesided=1 (RFFT) needs a real input (last dimension 1), got a complex one")
        if irfft:
            n_take, n_out, c_out = min(dim, n // 2 + 1), n, 1
        else:
            n_take, c_out = min(dim, n), 2
            n_out = n // 2 + 1 if self.onesided else n
        return axis, n, n_take, n_out, c_in, c_out

    def infer(self, ins, consts):
        x = ins[0]
        if _dtname(x) not in _FLOATS:
            raise self.unsupported(f"input dtype {_dtname(x)} is not supported ({', '.join(_FLOATS)})")
        axis, n, n_take, n_out, c_in, c_out = self._params(tuple(x.shape), consts, ins)
        shape = list(x.shape)
        shape[axis] = n_out
        shape[-1] = c_out
        _check_size(self, shape)
        self.geometry = (axis, n, n_take, n_out, c_in, c_out)
        return [TensorType(tuple(shape), x.dtype)]

    def ref(self, x, dft_length=None, axis=None):
        ins = [TensorType(x.shape, x.dtype)] + [None if a is None else TensorType(np.shape(a), np.asarray(a).dtype)
                                                for a in (dft_length, axis)]
        consts = [None, dft_length, axis]
        ax, n, n_take, n_out, c_in, c_out = self._params(tuple(x.shape), consts, ins)
        sig = x[..., 0].astype(np.float64)
        if c_in == 2:
            sig = sig + 1j * x[..., 1].astype(np.float64)
        if self.inverse and self.onesided:
            return [np.fft.irfft(sig, n=n, axis=ax)[..., None].astype(x.dtype)]
        y = np.fft.ifft(sig, n=n, axis=ax) if self.inverse else np.fft.fft(sig, n=n, axis=ax)
        y = np.take(y, np.arange(n_out), axis=ax)
        return [np.stack([y.real, y.imag], axis=-1).astype(x.dtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.signal import FFTPlan, dft_matrix, fft_lines

        x = ins[0]
        if np.dtype(x.dtype) not in _KERNEL_DTYPES:
            return ref_kernel(self)
        axis, n, n_take, n_out, c_in, c_out = self.geometry
        shape = tuple(x.shape)
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        dim = shape[axis]
        inner = int(np.prod(shape[axis + 1:-1], dtype=np.int64))
        mode = _fft_mode(n, self.inverse, self.onesided, c_in)
        if inner == 1 and _use_gemm(n, mode, n_take * c_in, n_out * c_out, x.dtype):
            return _gemm_kernel(dft_matrix(n, mode, n_take, c_in, n_out), outer, dim * c_in, n_take * c_in)
        if not _fft_ok(n, mode):
            return ref_kernel(self)
        plan = FFTPlan(n, mode)

        def run(inputs, outputs, scratch):
            fft_lines(plan, _flat(inputs[0]), outputs[0].reshape(-1), outer * inner, inner, dim * inner, 1, inner,
                      c_in, n_take, n_out * inner, 1, inner, n_out)
        return Kernel(run)


def _gemm_kernel(mat: np.ndarray, rows: int, row_len: int, take: int) -> Kernel:
    """y (rows, cols) = x (rows, row_len)[:, :take] @ mat, the DFT as one GEMM on a packed constant matrix."""
    from ..kernels.cpu.gemm import PackedWeight

    pw = PackedWeight(mat.astype(np.float32), trans_b=False)

    def run(inputs, outputs, scratch):
        x2 = np.ascontiguousarray(inputs[0], np.float32).reshape(rows, row_len)[:, :take]
        pw(x2, outputs[0].reshape(rows, -1), scratch)
    return Kernel(run, scratch_bytes=pw.scratch_bytes(rows))


# ----------------------------------------------------------------------------------------------------------
@register
class STFT(Op):
    op_type = "STFT"
    kernels = {"cpu": ("float32", "float64")}
    num_inputs = (2, 4)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 17:
            raise self.unsupported(f"STFT needs opset 17 or later, the model has opset {opset}")
        self.onesided = bool(_flag(self, "onesided", 1))

    def _params(self, ins, consts):
        x = ins[0]
        if len(x.shape) == 2:  # [batch, length]: a real signal (onnxruntime accepts it; the spec says 3-D)
            b, length, c = (*x.shape, 1)
        elif len(x.shape) != 3 or x.shape[2] not in (1, 2):
            raise self.error(f"signal must be [batch, length, 1 or 2] or [batch, length] (real), "
                             f"got shape {tuple(x.shape)}")
        else:
            b, length, c = x.shape
        step = _scalar_int(self, consts, ins, 1, "frame_step")
        if step < 1:
            raise self.error(f"frame_step must be positive, got {step}")
        win = ins[2] if len(ins) > 2 else None
        if win is not None:
            if len(win.shape) != 1:
                raise self.error(f"window must be 1-D, got shape {tuple(win.shape)}")
            if _dtname(win) not in _FLOATS:
                raise self.unsupported(f"window dtype {_dtname(win)} is not supported ({', '.join(_FLOATS)})")
        if len(ins) > 3 and ins[3] is not None:
            fl = _scalar_int(self, consts, ins, 3, "frame_length")
            if win is not None and win.shape[0] != fl:
                raise self.error(f"window has length {win.shape[0]} but frame_length is {fl}")
        else:
            fl = win.shape[0] if win is not None else length
        if fl < 1:
            raise self.error(f"frame_length must be positive, got {fl}")
        if fl > length:
            raise self.error(f"frame_length {fl} is longer than the signal ({length} samples)")
        if self.onesided and c == 2:
            raise self.error("onesided=1 needs a real signal (last dimension 1); set onesided=0 for a complex one")
        frames = (length - fl) // step + 1
        bins = fl // 2 + 1 if self.onesided else fl
        return b, length, c, step, fl, frames, bins

    def infer(self, ins, consts):
        x = ins[0]
        if _dtname(x) not in _FLOATS:
            raise self.unsupported(f"signal dtype {_dtname(x)} is not supported ({', '.join(_FLOATS)})")
        b, length, c, step, fl, frames, bins = self._params(ins, consts)
        _check_size(self, (b, frames, bins, 2))
        self.geometry = (b, length, c, step, fl, frames, bins)
        return [TensorType((b, frames, bins, 2), x.dtype)]

    def ref(self, x, frame_step, window=None, frame_length=None):
        ins = [None if a is None else TensorType(np.shape(a), np.asarray(a).dtype)
               for a in (x, frame_step, window, frame_length)]
        b, length, c, step, fl, frames, bins = self._params(ins, [None, frame_step, None, frame_length])
        x = x.reshape(b, length, c)
        sig = x[..., 0].astype(np.float64)
        if c == 2:
            sig = sig + 1j * x[..., 1].astype(np.float64)
        idx = np.arange(frames)[:, None] * step + np.arange(fl)[None, :]
        fr = sig[:, idx]  # (b, frames, fl)
        if window is not None:
            fr = fr * window.astype(np.float64)
        y = np.fft.fft(fr, n=fl, axis=-1)[..., :bins]
        return [np.stack([y.real, y.imag], axis=-1).astype(x.dtype)]

    def build(self, ins, outs, consts):
        from ..kernels.cpu.signal import FFTPlan, dft_matrix, fft_lines

        x = ins[0]
        if np.dtype(x.dtype) not in _KERNEL_DTYPES:
            return ref_kernel(self)
        b, length, c, step, fl, frames, bins = self.geometry
        has_win = len(ins) > 2 and ins[2] is not None
        win_const = consts[2] if has_win and len(consts) > 2 else None
        mode = _fft_mode(fl, False, self.onesided, c)
        if (not has_win or win_const is not None) and _use_gemm(fl, mode, fl * c, bins * 2, x.dtype):
            return _stft_gemm(dft_matrix(fl, mode, fl, c, bins, win_const), b, length, c, step, fl, frames)
        if not _fft_ok(fl, mode):
            return ref_kernel(self)
        plan = FFTPlan(fl, mode)

        def run(inputs, outputs, scratch):
            win = None
            if has_win:
                win = inputs[2] if inputs[2].dtype in _KERNEL_DTYPES else inputs[2].astype(np.float64)
                win = np.ascontiguousarray(win)
            fft_lines(plan, _flat(inputs[0]), outputs[0].reshape(-1), b * frames, frames, length, step, 1, c, fl,
                      frames * bins, bins, 1, bins, win)
        return Kernel(run)


def _stft_gemm(mat: np.ndarray, b: int, length: int, c: int, step: int, fl: int, frames: int) -> Kernel:
    """STFT as one GEMM per batch row: the frames are a strided view (frames, fl * c) of the signal."""
    from ..kernels.cpu.gemm import PackedWeight

    pw = PackedWeight(mat.astype(np.float32), trans_b=False)

    def run(inputs, outputs, scratch):
        x = np.ascontiguousarray(inputs[0], np.float32).reshape(b, length * c)
        y = outputs[0].reshape(b, frames, -1)
        for i in range(b):
            fr = np.lib.stride_tricks.as_strided(x[i], shape=(frames, fl * c), strides=(step * c * 4, 4),
                                                 writeable=False)
            pw(fr, y[i], scratch)
    return Kernel(run, scratch_bytes=pw.scratch_bytes(frames))


# ----------------------------------------------------------------------------------------------------------
class _Window(Op):
    num_inputs = (1, 1)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 17:
            raise self.unsupported(f"{self.op_type} needs opset 17 or later, the model has opset {opset}")
        self.periodic = bool(_flag(self, "periodic", 1))
        self.dtype = onnx_elem_dtype(self, self.attr("output_datatype", 1), "output_datatype")

    def _size(self, ins, consts) -> int:
        size = _scalar_int(self, consts, ins, 0, "size")
        if size < 0:
            raise self.error(f"size must not be negative, got {size}")
        _check_size(self, (size,))
        return size

    def infer(self, ins, consts):
        return [TensorType((self._size(ins, consts),), self.dtype)]

    def window(self, size: int) -> np.ndarray:
        """The window in float64."""
        m = size if self.periodic else size - 1
        if m <= 0:
            return np.ones(size)
        ang = 2.0 * np.pi * np.arange(size, dtype=np.float64) / m
        return self.formula(ang)

    def ref(self, size):
        n = self._size([TensorType(np.shape(size), np.asarray(size).dtype)], [size])
        return [self.window(n).astype(self.dtype)]

    def build(self, ins, outs, consts):
        if consts[0] is None:
            return ref_kernel(self)
        table = self.window(self._size(ins, consts)).astype(self.dtype)

        def run(inputs, outputs, scratch):
            outputs[0][...] = table
        return Kernel(run, impl="numpy")


@register
class HannWindow(_Window):
    op_type = "HannWindow"

    @staticmethod
    def formula(ang):
        return 0.5 - 0.5 * np.cos(ang)


@register
class HammingWindow(_Window):
    op_type = "HammingWindow"

    @staticmethod
    def formula(ang):
        return 25.0 / 46.0 - 21.0 / 46.0 * np.cos(ang)


@register
class BlackmanWindow(_Window):
    op_type = "BlackmanWindow"

    @staticmethod
    def formula(ang):
        return 0.42 - 0.5 * np.cos(ang) + 0.08 * np.cos(2.0 * ang)


# ----------------------------------------------------------------------------------------------------------
@register
class MelWeightMatrix(Op):
    op_type = "MelWeightMatrix"
    num_inputs = (5, 5)

    def __init__(self, node, opset):
        super().__init__(node, opset)
        if opset < 17:
            raise self.unsupported(f"MelWeightMatrix needs opset 17 or later, the model has opset {opset}")
        self.dtype = onnx_elem_dtype(self, self.attr("output_datatype", 1), "output_datatype")

    def _shape(self, ins, consts):
        for i, what in enumerate(("num_mel_bins", "dft_length", "sample_rate")):
            if np.dtype(ins[i].dtype).kind not in "iu" or ins[i].size != 1:
                raise self.error(f"{what} must be an int32 or int64 scalar, got {_dtname(ins[i])}{tuple(ins[i].shape)}")
        if len({np.dtype(t.dtype) for t in ins[:3]}) > 1 or ins[3].dtype != ins[4].dtype:
            raise self.error("num_mel_bins, dft_length and sample_rate must share one int type, the two edges one "
                             "float type")
        for i, what in ((3, "lower_edge_hertz"), (4, "upper_edge_hertz")):
            if _dtname(ins[i]) not in _FLOATS or ins[i].size != 1:
                raise self.error(f"{what} must be a float scalar, got {_dtname(ins[i])}{tuple(ins[i].shape)}")
        mels = const_ints(self, consts, 0, "num_mel_bins")[0]
        dft = const_ints(self, consts, 1, "dft_length")[0]
        if mels < 1 or dft < 1:
            raise self.error(f"num_mel_bins ({mels}) and dft_length ({dft}) must be positive")
        shape = (dft // 2 + 1, mels)
        _check_size(self, shape)
        return shape

    def infer(self, ins, consts):
        return [TensorType(self._shape(ins, consts), self.dtype)]

    def ref(self, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
        arrays = (num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz)
        ins = [TensorType(np.shape(a), np.asarray(a).dtype) for a in arrays]
        nbins, mels = self._shape(ins, [np.asarray(a) for a in arrays])
        # the scalars keep their dtypes: the edges are computed with the very operations of onnx's reference
        dft, rate = np.asarray(dft_length).reshape(()), np.asarray(sample_rate).reshape(())
        low, high = np.asarray(lower_edge_hertz).reshape(()), np.asarray(upper_edge_hertz).reshape(())
        if int(rate) <= 0:
            raise self.error(f"sample_rate must be positive, got {int(rate)}", EdgeDLError)
        points = np.arange(0, mels + 2)
        low_mel = 2595 * np.log1p(low / 700) / np.log(10)
        high_mel = 2595 * np.log1p(high / 700) / np.log(10)
        step = (high_mel - low_mel) / points.shape[0]
        hz = 700 * np.expm1((points * step + low_mel) / 2595 * np.log(10))
        with np.errstate(invalid="ignore"):
            edges = (dft + 1) * hz // rate
        if not np.all(np.isfinite(edges)) or edges.min() < 0 or edges.max() > nbins - 1:
            raise self.error(f"the mel band edges ({float(low)} to {float(high)} Hz at {int(rate)} Hz) fall outside "
                             f"the {nbins} spectrum bins of a {int(dft)}-point DFT", EdgeDLError)
        e = edges.astype(np.int64)
        lo, ce, hi = e[:-2][None, :], e[1:-1][None, :], e[2:][None, :]
        j = np.arange(nbins)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(ce == lo, 1.0, (j - lo) / (ce - lo))
            down = (hi - j) / (hi - ce)
        out = np.where((ce <= j) & (j < hi), down, np.where((lo <= j) & (j <= ce), up, 0.0))
        return [out.astype(self.dtype)]
