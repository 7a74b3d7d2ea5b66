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
if _os.environ.get("EDGEDL_TARGET", "").strip():
    # NOTE: a process run with a profile (EDGEDL_TARGET=rpi5, e.g. under an emulator, or the kernel tests)
    # compiles for it even when it calls kernels without edgedl.load: the codegen is set before any kernel
    # module is imported
    from .board import resolve as _resolve_target

    _resolve_target()

__version__ = "0.1.0"


def bench(models, **options):
    """Benchmark models on this board, each engine and setting in its own fresh process, side by side with
    onnxruntime / TFLite (``compare=["onnxruntime"]``); returns the report as a dict (a list of them for
    several models). The options are those of :func:`edgedl.benchmark.orchestrate.bench` (``threads``,
    ``runs``, ``precision``, ``op_profile``, ``train``, ``json_path``...); ``edgedl bench`` is the command
    line."""
    from .benchmark.orchestrate import bench as _bench

    return _bench(models, **options)


def load(src, target=None, *, optimize: bool = True, num_threads: int | None = None,
         device: str | None = None, precision: str | None = None, signature: str | None = None) -> Model:
    """Load an ONNX or TFLite model.

    Parameters
    ----------
    src : str, os.PathLike, bytes or onnx.ModelProto
        The model: a path to an ``.onnx`` file (external data is read from its folder only) or a ``.tflite``
        file (recognised by its content), the bytes of either, or a parsed ``onnx.ModelProto``.
    target : str, Target or None
        The board profile to run with: a name from :func:`edgedl.targets.profiles` (e.g. ``"rpi4"``),
        ``"host"``, a profile ``.toml`` file or a :class:`edgedl.targets.Target`. None: the ``EDGEDL_TARGET``
        variable if set, else the detected board (``edgedl targets --detect`` shows it). The target sets the
        default thread count, the parallel thresholds, the int8 kernel and, if this process has compiled no
        kernel yet, the CPU Numba compiles for; ``Model.target`` says what is in force.
    optimize : bool
        Run the load-time passes (Identity/Dropout removal, BatchNormalization folding, activation fusion).
    num_threads : int, optional
        Threads for parallel kernels for this model (default: ``edgedl.set_num_threads``, else the target's
        thread count). Beside other busy work edgedl runs fewer (see :func:`edgedl.set_num_threads`).
    device : "cpu", "cuda" or None
        Where the model runs. ``"cuda"``: numba.cuda kernels on the GPU (``pip install "edgedl[cuda]"``), one
        device arena, nodes without a CUDA kernel on the host between transfers (``Model.cuda_plan()``
        lists them); an ``EdgeDLError`` says why when no GPU can run. None: the target's preferred device
        when it is ``"cuda"`` and a GPU is usable (a Jetson), else ``"cpu"``. ``Model.device`` says which.
    precision : "fp32", "fp16" or None
        ``"fp16"`` (``device="cuda"`` only): float32 tensors are stored as float16 on the GPU (half the memory
        and memory traffic), computed in float32. None: the target's ``precision`` when it is ``"fp16"`` and
        the model runs on CUDA, else ``"fp32"``. ``Model.precision`` says which.
    signature : str, optional
        A TFLite model's signature (``Model.signatures`` lists them): its subgraph, with its input and output
        names. Default: the first subgraph under its tensors' names.

    Returns
    -------
    Model

    Raises
    ------
    EdgeDLError
        For a missing, empty, truncated or invalid file, unsupported operators, or shapes that do not fit.
    """
    from .board import resolve
    from .threads import check_thread_count

    check_thread_count(num_threads, "num_threads")
    if device not in (None, "cpu", "cuda"):
        raise EdgeDLError(f"device must be 'cpu' or 'cuda', got {device!r}")
    # NOTE: before any module with Numba kernels is imported: Numba fixes its codegen when the first
    # @njit dispatcher is created, so this is where the target's codegen can still apply to the process
    target = resolve(target)
    if num_threads is not None and num_threads > target.cores:
        raise EdgeDLError(f"num_threads={num_threads} but target {target.name!r} has {target.cores} cores")
    from .runtime.compile_ahead import maybe_compile_ahead

    device, why = _device(device, target)
    if precision not in (None, "fp32", "fp16"):
        raise EdgeDLError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    if precision == "fp16" and device != "cuda":
        raise EdgeDLError("precision='fp16' runs on the cuda device (on the CPU, float16 models compute in float32)")
    if precision is None:
        precision = "fp16" if device == "cuda" and getattr(target, "precision", "fp32") == "fp16" else "fp32"
    source = _import(src, signature)
    graph = _run_graph(source, optimize)
    # an empty kernel cache: compile the model's kernels in two processes before it plans (and compiles) here
    maybe_compile_ahead(source, target, num_threads, optimize, graph)
    model = Model(graph, target=target, num_threads=num_threads, source=source, device=device)
    model.device_note = why
    model.precision = precision
    return model


def _device(device: str | None, target) -> tuple[str, str | None]:
    """The device a model runs on (see :func:`load`) and, when the target prefers CUDA but gets the CPU, why.
    An explicit "cuda" must be able to run here."""
    from .kernels.cuda import simulated, unavailable_reason

    if device is None:
        if getattr(target, "preferred_device", "cpu") != "cuda":
            return "cpu", None
        if simulated():  # the simulator is for tests: never chosen by default
            return "cpu", "the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) is never chosen by default"
        reason = unavailable_reason()
        if reason is None:
            return "cuda", None
        return "cpu", f"target {target.name!r} prefers cuda, but {reason}: running on the CPU cores"
    if device == "cuda":
        reason = unavailable_reason()
        if reason is not None:
            raise EdgeDLError(f"device='cuda' cannot run here: {reason}")
    return device, None


def _import(src, signature: str | None = None):
    """The source graph of ``src``: a TFLite flatbuffer (by its content: the ``TFL3`` identifier) or ONNX."""
    from .converters.onnx_import import import_onnx
    from .converters.tflite_import import import_tflite, read_tflite_bytes

    data = read_tflite_bytes(src)
    if data is not None:
        return import_tflite(data, signature)
    if signature is not None:
        raise EdgeDLError("signature= applies to TFLite models; ONNX models have one graph")
    return import_onnx(src)


def _run_graph(source, optimize: bool = True):
    """The graph a model runs: a copy of the imported ``source`` after the load-time passes."""
    from .passes import optimize as run_passes
    from .quant.quantize_model import copy_graph

    graph = copy_graph(source)
    if optimize:
        run_passes(graph)
    else:  # 16-bit floats compute in float32 either way: it is how they run, not an optimization
        from .passes import compute_half_in_float32

        compute_half_in_float32(graph)
    return graph


def _model_from_source(source, target, num_threads: int | None, optimize: bool = True, device: str = "cpu") -> Model:
    """What :func:`load` makes of an imported graph (``source`` is kept; the model gets a copy)."""
    return Model(_run_graph(source, optimize), target=target, num_threads=num_threads, source=source, device=device)


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
