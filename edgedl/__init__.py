"""edgedl: run and fine-tune neural networks on single-board computers with Numba-compiled kernels.

The public surface is small::

    import edgedl
    model = edgedl.load("model.onnx")
    outputs = model.run({"input": x})     # dict name -> array
    y = model(x)                          # positional inputs, one array or a tuple
"""
from __future__ import annotations

import os as _os

# NOTE: an installed edgedl has edgedl.converters and edgedl.targets (setuptools package-dir maps the
# top-level converters/ and targets/ folders onto them). Imported straight from a source checkout (python
# run from the repository root), those folders sit beside edgedl/: let the package find them there too.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
        _os.path.join(_root, "converters", "__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]

from .errors import EdgeDLError, InputError, ModelFormatError, ShapeError, UnsupportedOpError  # noqa: E402
from .model import Model, TensorInfo  # noqa: E402
from .threads import prefer_spinning_pool, set_num_threads  # noqa: E402

prefer_spinning_pool()

__version__ = "0.1.0"


def load(src, target=None, *, optimize: bool = True, num_threads: int | None = None) -> Model:
    """Load an ONNX model.

    Parameters
    ----------
    src : str, os.PathLike, bytes or onnx.ModelProto
        The model: a path to an ``.onnx`` file (external data is read from its folder only), the bytes of
        one, or a parsed ``onnx.ModelProto``.
    target : str, optional
        A target profile name (e.g. ``"rpi4"``); profiles arrive with the targets work. ``None`` runs with
        the host's defaults.
    optimize : bool
        Run the load-time passes (Identity/Dropout removal, BatchNormalization folding, activation fusion).
    num_threads : int, optional
        Threads for parallel kernels for this model (default: ``edgedl.set_num_threads`` or all cores).

    Returns
    -------
    Model

    Raises
    ------
    EdgeDLError
        For a missing, empty, truncated or invalid file, unsupported operators, or shapes that do not fit.
    """
    from .converters.onnx_import import import_onnx
    from .passes import optimize as run_passes
    from .quant.quantize_model import copy_graph

    graph = import_onnx(src)
    source = copy_graph(graph)
    if optimize:
        run_passes(graph)
    if target is not None:
        from .targets import resolve_target

        target = resolve_target(target)
        if num_threads is None:
            num_threads = target.num_threads
    return Model(graph, target=target, num_threads=num_threads, source=source)


def quantize(model, calibration=None, **options) -> Model:
    """Post-training int8 quantization; see :func:`edgedl.quant.quantize_model.quantize` for the options
    (method="minmax" | "percentile" | "entropy" | "mse", per_channel, dynamic, exclude, ...)."""
    from .quant.quantize_model import quantize as _quantize

    return _quantize(model, calibration, **options)


def __getattr__(name: str):
    """``edgedl.Trainer`` (and the training package) load on first use: inference never imports them."""
    if name == "Trainer":
        from .train import Trainer

        return Trainer
    if name == "train":
        import importlib

        return importlib.import_module(".train", __name__)
    raise AttributeError(f"module 'edgedl' has no attribute {name!r}")


__all__ = [
    "quantize", "Trainer",
    "load", "Model", "TensorInfo", "set_num_threads", "EdgeDLError", "ModelFormatError",
    "UnsupportedOpError", "ShapeError", "InputError", "__version__",
]
