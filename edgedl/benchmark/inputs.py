"""The inputs of a benchmark: the model's input specs, their shapes once ``--shape`` / ``--batch`` bind the
symbolic dimensions, random feeds drawn from those specs (or the user's ``--input`` file), and the one ``.npz``
every engine's process reads, so all engines see the same bytes.

Random feeds are seeded: float inputs standard normal, 8-bit inputs uniform over their range, bool False and
other integers zero (an integer input is usually an index, a length or a token id, where a random value could
be out of range; pass ``--input`` for real data).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class InputSpec:
    """A model input: its name, dims (int, a symbolic name, or None for unknown) and numpy dtype."""

    name: str
    dims: tuple | None
    dtype: np.dtype


def onnx_input_specs(path: str) -> list[InputSpec]:
    """The inputs of an ONNX file (graph inputs that are not initializers), read without running anything."""
    from ..converters.onnx_import import _value_spec, read_model_proto

    proto, _ = read_model_proto(path)
    initializers = {t.name for t in proto.graph.initializer}
    specs = []
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        spec = _value_spec(vi, "graph input")
        if spec.kind != "tensor":
            raise InputError(f"input '{vi.name}' is a {spec.kind.replace('_', ' of ')}: edgedl bench feeds "
                             "tensors only")
        specs.append(InputSpec(spec.name, spec.shape, np.dtype(spec.dtype)))
    return specs


def parse_shape_args(items) -> dict[str, tuple[int, ...]]:
    """``["x=1,3,224,224", "mask=1x128"]`` -> {name: dims}. Commas or ``x`` separate dimensions."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or ():
        name, sep, dims = str(item).rpartition("=")
        parts = [p for p in re.split(r"[,x]", dims.strip()) if p.strip()] if sep else []
        if not sep or not name or not parts or not all(p.strip().isdigit() for p in parts):
            raise InputError(f"--shape must look like NAME=1,3,224,224 (or NAME=1x3x224x224), got {item!r}")
        shape = tuple(int(p) for p in parts)
        if any(d < 1 for d in shape):
            raise InputError(f"--shape {item!r}: every dimension must be at least 1")
        shapes[name] = shape
    return shapes


def resolve_shapes(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]] | None = None,
                   batch: int | None = None, *, default_batch: int | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every input: ``shapes`` (from ``--shape``) win; else ``batch`` sets the first
    dimension (a fixed one must equal it); without ``batch``, ``default_batch`` fills a symbolic or unknown
    first dimension. Any other symbolic dimension left is an error listing them all."""
    shapes = dict(shapes or {})
    names = [s.name for s in specs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise InputError(f"--shape names {unknown}, which are not inputs of the model (its inputs: {names})")
    if batch is not None and batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    out: dict[str, tuple[int, ...]] = {}
    unbound: list[str] = []
    example = None
    for spec in specs:
        if spec.name in shapes:
            shape = shapes[spec.name]
            if spec.dims is not None:
                if len(shape) != len(spec.dims):
                    raise InputError(f"--shape {spec.name}: the input has rank {len(spec.dims)} "
                                     f"({_fmt(spec.dims)}), got {len(shape)} dimensions")
                for axis, (d, v) in enumerate(zip(spec.dims, shape)):
                    if isinstance(d, int) and d != v:
                        raise InputError(f"--shape {spec.name}: dimension {axis} is fixed to {d} in the model, "
                                         f"got {v}")
            out[spec.name] = shape
            continue
        if spec.dims is None:
            unbound.append(f"{spec.name} (rank unknown)")
            continue
        dims = list(spec.dims)
        if dims and batch is not None:
            if isinstance(dims[0], int) and dims[0] != batch:
                raise InputError(f"--batch {batch}: input '{spec.name}' has a fixed first dimension {dims[0]} "
                                 f"({_fmt(spec.dims)})")
            dims[0] = batch
        elif dims and default_batch is not None and not isinstance(dims[0], int):
            dims[0] = default_batch
        missing = [f"dim {i} ({'?' if d is None else d})" for i, d in enumerate(dims) if not isinstance(d, int)]
        if missing:
            unbound.append(f"{spec.name} {_fmt(spec.dims)}: {', '.join(missing)}")
            example = example or f"{spec.name}=" + ",".join(str(d) if isinstance(d, int) else "1" for d in dims)
            continue
        out[spec.name] = tuple(dims)
    if unbound:
        raise InputError("symbolic dimensions need sizes: " + "; ".join(unbound)
                         + ". Give them with --shape NAME=D1,D2,..."
                         + (f" (e.g. --shape {example} with your sizes)" if example else "")
                         + "; --batch N sets a symbolic first dimension")
    return out


def random_feeds(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict:
    """Seeded feeds for ``specs`` at ``shapes`` (see the module docstring for the value ranges)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape, dtype = shapes[spec.name], np.dtype(spec.dtype)
        if dtype.kind == "f" or dtype.name == "bfloat16":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu" and dtype.itemsize == 1:
            info = np.iinfo(dtype)
            value = rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
        elif dtype.kind in "iub":
            value = np.zeros(shape, dtype)
        elif dtype.kind == "O":
            value = np.full(shape, "", dtype=object)
        else:
            raise InputError(f"input '{spec.name}': cannot make random data of type {dtype.name}; pass --input")
        feeds[spec.name] = value
    return feeds


def file_feeds(path: str, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Feeds from ``--input``: an ``.npy`` for a one-input model, else an ``.npz`` with one array per input
    name (a one-input model also takes an ``.npz`` holding a single array under any name)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--input file '{path}' does not exist")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise InputError(f"cannot read --input '{path}' as .npy/.npz: {e}") from None
    names = [s.name for s in specs]
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise InputError(f"the model has {len(names)} inputs ({names}): pass an .npz with one array per input")
        feeds = {names[0]: data}
    else:
        with data:
            feeds = {k: data[k] for k in data.files}
        if len(names) == 1 and len(feeds) == 1 and names[0] not in feeds:
            feeds = {names[0]: next(iter(feeds.values()))}
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"--input '{path}' lacks input(s) {missing} (it holds {sorted(feeds)})")
    for spec in specs:
        arr = feeds[spec.name]
        if arr.dtype != spec.dtype:
            raise InputError(f"--input '{path}': input '{spec.name}' must have dtype {spec.dtype.name}, got "
                             f"{arr.dtype.name}")
        if spec.dims is not None:
            ok = len(arr.shape) == len(spec.dims) and all(
                not isinstance(d, int) or d == v for d, v in zip(spec.dims, arr.shape))
            if not ok:
                raise InputError(f"--input '{path}': input '{spec.name}' has shape {list(arr.shape)}, the model "
                                 f"takes {_fmt(spec.dims)}")
    return {n: feeds[n] for n in names}


def save_feeds(feeds: dict[str, np.ndarray], path: str) -> None:
    """Write feeds to the ``.npz`` every engine process loads (see :func:`edgedl.benchmark.worker.save_arrays`)."""
    from .worker import save_arrays

    save_arrays(path, feeds)


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def calibration_batches(path: str, specs: list[InputSpec], batch: int) -> list[dict[str, np.ndarray]]:
    """int8 calibration feeds from ``--calibration``: an ``.npz``/``.npy`` whose arrays have a leading sample
    axis (split into batches of ``batch``; one array per input name, or one array for a one-input model)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--calibration file '{path}' does not exist")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read --calibration '{path}' as .npy/.npz: {e}") from None
    names = [s.name for s in specs]
    if isinstance(data, np.ndarray):
        arrays = {names[0]: data} if len(names) == 1 else {}
    else:
        with data:
            arrays = {k: data[k] for k in data.files}
        if len(names) == 1 and names[0] not in arrays:  # one input: its one array, or the one called "x"
            key = next(iter(arrays)) if len(arrays) == 1 else "x" if "x" in arrays else None
            arrays = {names[0]: arrays[key]} if key is not None else {}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"--calibration '{path}' lacks input(s) {missing}")
    sizes = {n: arrays[n].shape[0] if arrays[n].ndim else 0 for n in names}
    count = min(sizes.values()) if sizes else 0
    if count == 0 or len(set(sizes.values())) != 1:
        raise InputError(f"--calibration arrays need one common leading sample axis, got shapes "
                         f"{ {n: list(arrays[n].shape) for n in names} }")
    for spec in specs:
        if arrays[spec.name].dtype != spec.dtype:
            raise InputError(f"--calibration: input '{spec.name}' must have dtype {spec.dtype.name}, got "
                             f"{arrays[spec.name].dtype.name}")
    step = max(1, int(batch))
    return [{n: arrays[n][i:i + step] for n in names} for i in range(0, count, step)]
