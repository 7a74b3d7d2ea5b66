"""The public Model: a loaded graph, its ops, and plans cached per binding of input shapes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .affinity import core_ids, running_on
from .affinity import pinned as affinity_pinned
from .errors import ConstantRequired, EdgeDLError, InputError
from .ir import Graph, TensorType, contiguous
from .kernels.cpu.config import apply_target
from .registry import lookup
from .runtime.plan import Plan
from .runtime.runner import SPECIALIZE_MAX_ELEMENTS, GraphRunner, LastPlan, spec_type
from .threads import configure_threads


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or str for symbolic dims, or None for unknown) and dtype of a model input/output."""

    name: str
    shape: tuple | None
    dtype: np.dtype


class Model:
    """A model ready to run. Create it with :func:`edgedl.load`.

    Symbolic input dimensions (ONNX ``dim_param`` such as a batch size ``N``) bind to the shapes given at
    ``run``; every new binding gets its own plan (shapes, folded constants, kernels and arena), cached.
    """

    def __init__(self, graph: Graph, target=None, num_threads: int | None = None, source: Graph | None = None,
                 device: str = "cpu"):
        self.graph = graph
        #: where the model runs: "cpu" (Numba CPU kernels) or "cuda" (numba.cuda kernels, see
        #: edgedl.runtime.cuda_plan); set by edgedl.load(device=...)
        self.device = device
        #: the CUDA plan of each host plan (by id; the host plan is kept alive beside it)
        self._cuda_plans: dict[int, tuple] = {}
        #: why the model runs on the CPU although its target prefers CUDA (a Jetson without a usable GPU), or None
        self.device_note: str | None = None
        #: "fp32", or "fp16": float32 tensors stored as float16 on the GPU (edgedl.load(precision=...))
        self.precision = "fp32"
        #: the :class:`edgedl.targets.Target` in force (its thread count, thresholds, int8 kernel), or None
        #: for the runtime's defaults
        self.target = target
        self.num_threads = num_threads
        #: the graph before load-time passes (standard ONNX): what save() writes and quantize() starts from
        self.source = source
        #: set by edgedl.quantize: a QuantizationReport (ranges and parameters per tensor)
        self.quantization = None
        #: a streaming model's state (graph.state): the value of each state input the next run starts from
        self._state: dict[str, np.ndarray] = {}
        self._state_outputs = {out: inp for inp, out, _ in graph.state}
        self.reset_state()
        for node in graph.nodes:
            if lookup(node.op_type, node.domain) is None:  # importers check this; keep it clear for hand-built graphs
                raise EdgeDLError(f"{node.describe()}: operator {node.op_type} is not supported")
        self._runner = GraphRunner(graph, specialize_limit=SPECIALIZE_MAX_ELEMENTS,
                                   before_plan=lambda: apply_target(self.target))
        #: the last run's plan, reused for feeds of the same names, shapes and dtypes
        self._last = LastPlan()
        for node in graph.nodes:
            self._runner.op_classes[node.name](node, graph.opset)  # attributes are validated at load time
        if all(s.is_static for s in graph.inputs):
            try:
                self.plan()  # static models are fully validated at load time
            except ConstantRequired as e:
                sources = self._runner.inputs_feeding(e.tensor)
                if not sources:
                    raise
                self._value_inputs |= sources  # validated at the first run, once the values are known

    @property
    def _plans(self) -> dict:
        return self._runner.plans

    @property
    def _value_inputs(self) -> set[str]:
        """Graph inputs whose values the plans are specialized on (e.g. a Reshape shape fed as an input)."""
        return self._runner.value_inputs

    @_value_inputs.setter
    def _value_inputs(self, names: set[str]) -> None:
        self._runner.value_inputs = names

    # --- description --------------------------------------------------------------------------------
    @property
    def _user_inputs(self) -> list:
        """The graph inputs a caller feeds (a streaming model's state inputs are fed by the model)."""
        state = {inp for inp, _, _ in self.graph.state}
        return [s for s in self.graph.inputs if s.name not in state]

    @property
    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(s.name, s.shape, np.dtype(s.dtype)) for s in self._user_inputs]

    @property
    def signatures(self) -> dict[str, dict[str, list[str]]]:
        """A TFLite model's signatures: key -> {"inputs": names, "outputs": names} (``edgedl.load(path,
        signature=key)`` loads one); empty for other models."""
        import json

        raw = self.graph.metadata.get("edgedl.tflite.signatures")
        if not raw:
            return {}
        return {s["key"]: {"inputs": list(s["inputs"]), "outputs": list(s["outputs"])} for s in json.loads(raw)}

    def reset_state(self) -> None:
        """Start a streaming model over: its state (TFLite resource variables) goes back to the initial values.
        Nothing to do for a model without state."""
        self._state = {inp: np.array(init, copy=True) for inp, _, init in self.graph.state}

    @property
    def outputs(self) -> list[TensorInfo]:
        infos = []
        for s in self.graph.outputs:
            if s.name in self._state_outputs:
                continue
            shape, dtype = s.shape, s.dtype
            if dtype is None and all(i.is_static for i in self.graph.inputs):
                t = self.plan().types.get(s.name)  # absent when computed after a data-dependent node
                if isinstance(t, TensorType):
                    shape, dtype = t.shape, t.dtype
            infos.append(TensorInfo(s.name, shape, None if dtype is None else np.dtype(dtype)))
        return infos

    def __repr__(self) -> str:
        ins = ", ".join(repr(s) for s in self.graph.inputs)
        outs = ", ".join(repr(s) for s in self.graph.outputs)
        return f"<edgedl.Model {self.graph.name!r} ({ins}) -> ({outs}), {len(self.graph.nodes)} nodes>"

    # --- planning -----------------------------------------------------------------------------------
    def _bind(self, shapes: dict[str, tuple[int, ...]], values: dict | None = None) -> dict[str, TensorType]:
        bound: dict[str, TensorType] = {}
        for spec in self.graph.inputs:
            if spec.kind != "tensor":
                if values is None or spec.name not in values:
                    raise ConstantRequired(f"input '{spec.name}' is a {spec.kind.replace('_', ' of ')}: its plan "
                                           "is built from the value fed to run()", spec.name)
                bound[spec.name] = spec_type(spec, values[spec.name])
                continue
            shape = tuple(int(d) for d in shapes[spec.name])
            if spec.shape is not None:
                if len(shape) != len(spec.shape):
                    raise InputError(f"input '{spec.name}' must have rank {len(spec.shape)} (shape "
                                     f"{_fmt(spec.shape)}), got shape {shape}")
                for axis, (d, v) in enumerate(zip(spec.shape, shape)):
                    if isinstance(d, int) and d != v:
                        raise InputError(f"input '{spec.name}' must have shape {_fmt(spec.shape)}, got {shape} "
                                         f"(axis {axis} is {v}, expected {d})")
                    # NOTE: a named dimension (dim_param) is a name, not a promise: exporters write "?" for
                    # every unknown one (PaddlePaddle: height and width), and onnxruntime binds each from the
                    # data; the nodes' shape rules still reject shapes they cannot take
            bound[spec.name] = TensorType(shape, np.dtype(spec.dtype))
        return bound

    def plan(self, shapes: dict[str, tuple[int, ...]] | None = None,
             values: dict[str, np.ndarray] | None = None) -> Plan:
        """The plan for a binding of input shapes (symbolic and unknown dims default to 1).

        ``values`` holds the feeds of inputs the plan must be specialized on (see ``run``); feeds of sequence
        or optional inputs give their types."""
        if shapes is None:
            shapes = {s.name: tuple(d if isinstance(d, int) else 1 for d in (s.shape or ()))
                      for s in self.graph.inputs}
        return self._runner.plan(self._bind(shapes, values), values)

    def _inputs_feeding(self, tensor: str) -> set[str]:
        """Graph inputs that ``tensor`` is computed from."""
        return self._runner.inputs_feeding(tensor)

    @property
    def arena_bytes(self) -> int:
        """Arena size of the default plan (symbolic dims bound to 1)."""
        return self.plan().arena_bytes

    @property
    def arena_lower_bound(self) -> int:
        """Most activation bytes live at any one step of the default plan."""
        return self.plan().arena_lower_bound

    # --- running ------------------------------------------------------------------------------------
    def _check_feeds(self, feeds: dict) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise InputError(f"run() takes a dict of input name -> array, got {type(feeds).__name__}")
        names = {s.name for s in self.graph.inputs}
        unknown = sorted(set(feeds) - names - self._overridable)
        if unknown:
            raise InputError(f"unknown input name(s) {unknown}; the model's inputs are {sorted(names)}")
        missing = [s.name for s in self.graph.inputs if s.name not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}")
        out = {}
        for spec in self.graph.inputs:
            arr = feeds[spec.name]
            if spec.kind != "tensor":
                out[spec.name] = _check_value(spec, arr)
                continue
            if self.device == "cuda" and is_device_array(arr):
                dtype = np.dtype(arr.dtype) if hasattr(arr, "copy_to_host") else \
                    np.dtype(arr.__cuda_array_interface__["typestr"])
                if dtype != spec.dtype:
                    raise InputError(f"input '{spec.name}' must have dtype {np.dtype(spec.dtype).name}, got "
                                     f"{dtype.name}")
                out[spec.name] = arr  # a device array: used in place by the CUDA plan
                continue
            if not isinstance(arr, np.ndarray):
                if np.isscalar(arr) or isinstance(arr, (list, tuple)):
                    arr = np.asarray(arr)
                else:
                    raise InputError(f"input '{spec.name}' must be a numpy array, got {type(arr).__name__}")
            if spec.dtype == object and arr.dtype.kind in "US":  # numpy strings -> the object arrays edgedl uses
                arr = arr.astype(object)
            if spec.dtype == object and arr.dtype == object and not all(isinstance(v, str) for v in arr.flat):
                raise InputError(f"input '{spec.name}' is a string tensor: every element must be a str")
            if arr.dtype != spec.dtype:
                raise InputError(f"input '{spec.name}' must have dtype {np.dtype(spec.dtype).name}, got "
                                 f"{arr.dtype.name}")
            out[spec.name] = contiguous(arr)
        return out

    @property
    def _overridable(self) -> set[str]:
        source = self.source if self.source is not None else self.graph
        return set(source.overridable)

    def _with_inputs(self, names: frozenset) -> Model:
        """This model with the overridable initializers ``names`` turned into graph inputs (built once)."""
        variants = self.__dict__.setdefault("_variants", {})
        if names not in variants:
            from . import _model_from_source
            from .ir import TensorSpec
            from .quant.quantize_model import copy_graph

            source = copy_graph(self.source if self.source is not None else self.graph)
            for name in sorted(names):
                value = source.initializers.pop(name)
                source.inputs.append(TensorSpec(name, value.shape, value.dtype))
            source.overridable = []
            variants[names] = _model_from_source(source, self.target, self.num_threads, device=self.device)
            variants[names].precision = self.precision
        return variants[names]

    def run(self, feeds: dict[str, np.ndarray], *, profile: list | None = None,
            outputs: str = "host") -> dict[str, np.ndarray]:
        """Run the model. ``feeds`` maps every input name to an array; returns output name -> array.

        Initializers that the file also lists as graph inputs are defaults: a feed may override them.

        ``profile``: a list to which the run appends one :class:`edgedl.runtime.plan.StepTime` (``node``,
        ``kernel``, ``seconds``) per executed step, in run order (``edgedl bench --op-profile`` uses it).
        Reading the clock around every step costs about a microsecond per step; runs without it are not
        slowed. On the ``cuda`` device the stream is synchronized after every step (each step's own cost, host
        steps with their transfers).

        On the ``cuda`` device, feeds may also be device arrays (anything with ``__cuda_array_interface__``:
        numba device arrays, CuPy, PyTorch CUDA tensors), and ``outputs="device"`` returns numba device arrays
        instead of numpy arrays, so a pipeline on the GPU need not copy."""
        if outputs not in ("host", "device"):
            raise InputError(f"outputs must be 'host' or 'device', got {outputs!r}")
        if self._state_outputs:
            return self._run_with_state(feeds, profile, outputs)
        return self._run_stateless(feeds, profile, outputs)

    def _run_stateless(self, feeds, profile, outputs):
        if self.device == "cuda":
            return self._run_cuda(feeds, profile, outputs)
        if outputs == "device":
            raise InputError("outputs='device' needs a model loaded with device='cuda'")
        plan = self._last.recall(feeds)
        if plan is None:
            if isinstance(feeds, dict) and self._overridable and not set(feeds).isdisjoint(self._overridable):
                return self._with_inputs(frozenset(set(feeds) & self._overridable)).run(feeds, profile=profile)
            feeds = self._check_feeds(feeds)
            shapes = {n: getattr(a, "shape", None) for n, a in feeds.items()}
            # A value the plan needs (a Reshape shape, Slice starts...) that comes from small graph inputs makes
            # the runner specialize its plans on those inputs' values, as on shapes (see edgedl.runtime.runner).
            plan = self._runner.resolve(self._bind(shapes, feeds), feeds)
            self._last.remember(feeds, plan, self._value_inputs)
        apply_target(self.target)
        cores = core_ids(self.target)
        configure_threads(self.num_threads, self._target_threads, None if cores is None else len(cores))
        if cores is None and not affinity_pinned():  # the usual case, without a context manager per run
            return plan.run(feeds, profile)
        with running_on(cores):
            return plan.run(feeds, profile)

    def _run_with_state(self, feeds, profile, outputs):
        """One run of a streaming model: the state fed in, the next state kept, the other outputs returned."""
        if not isinstance(feeds, dict):
            raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        clash = sorted(set(feeds) & set(self._state))
        if clash:
            raise InputError(f"{clash} are the model's state, which it feeds itself (reset_state() starts over)")
        result = self._run_stateless({**feeds, **self._state}, profile, outputs)
        for out, inp in self._state_outputs.items():
            value = result.pop(out)
            self._state[inp] = value.copy_to_host() if hasattr(value, "copy_to_host") else np.array(value, copy=True)
        return result

    def _run_cuda(self, feeds, profile, outputs):
        from .runtime.cuda_plan import CudaPlan

        if isinstance(feeds, dict) and self._overridable and not set(feeds).isdisjoint(self._overridable):
            return self._with_inputs(frozenset(set(feeds) & self._overridable)).run(feeds, outputs=outputs,
                                                                                    profile=profile)
        feeds = self._check_feeds(feeds)
        shapes = {n: tuple(getattr(a, "shape", ())) for n, a in feeds.items()}
        host_values = {n: a for n, a in feeds.items() if isinstance(a, np.ndarray)}
        plan = self._runner.resolve(self._bind(shapes, host_values), host_values)
        entry = self._cuda_plans.get(id(plan))
        if entry is None or entry[0] is not plan:
            apply_target(self.target)
            entry = self._cuda_plans[id(plan)] = (plan, CudaPlan(plan, self._runner.op_classes,
                                                                  half=self.precision == "fp16"))
        apply_target(self.target)
        cores = core_ids(self.target)
        configure_threads(self.num_threads, self._target_threads, None if cores is None else len(cores))
        return entry[1].run(feeds, outputs, profile)

    def cuda_plan(self, shapes: dict[str, tuple[int, ...]] | None = None):
        """The :class:`~edgedl.runtime.cuda_plan.CudaPlan` for a binding of input shapes (a model loaded with
        ``device="cuda"``): its ``host_steps()`` are the nodes that run on the host between transfers."""
        from .runtime.cuda_plan import CudaPlan

        if self.device != "cuda":
            raise InputError("cuda_plan() needs a model loaded with device='cuda'")
        plan = self.plan(shapes)
        entry = self._cuda_plans.get(id(plan))
        if entry is None or entry[0] is not plan:
            entry = self._cuda_plans[id(plan)] = (plan, CudaPlan(plan, self._runner.op_classes,
                                                                  half=self.precision == "fp16"))
        return entry[1]

    @property
    def _target_threads(self) -> int | None:
        return None if self.target is None else self.target.threads

    def __call__(self, *arrays: np.ndarray):
        """Run with positional inputs; returns one array or a tuple of arrays (in output order)."""
        inputs = self._user_inputs
        if len(arrays) != len(inputs):
            raise InputError(f"the model takes {len(inputs)} input(s) ({[s.name for s in inputs]}), got {len(arrays)}")
        result = self.run({s.name: a for s, a in zip(inputs, arrays)})
        outs = tuple(result[s.name] for s in self.graph.outputs if s.name not in self._state_outputs)
        return outs[0] if len(outs) == 1 else outs

    # --- saving -------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the model as standard ONNX (a quantized model in QDQ form) that other runtimes load.

        The file is written atomically (a temporary file renamed into place). What is saved is the graph
        before edgedl's load-time rewrites (fusions, QDQ lowering), which stay internal."""
        from .converters.onnx_export import save_graph
        from .quant.qoperator_to_qdq import has_qoperator_nodes, qoperator_to_qdq

        graph = self.source if self.source is not None else self.graph
        if has_qoperator_nodes(graph) and any(k in n.attrs for n in graph.nodes for k in ("_requant", "_clamp")):
            graph = qoperator_to_qdq(graph)  # an imported TFLite int8 model: standard QDQ (ONNX rounding)
        save_graph(graph, path, metadata=dict(graph.metadata) or None)

    # --- weights ----------------------------------------------------------------------------------------
    def set_weights(self, values: dict[str, np.ndarray]) -> None:
        """Replace initializers (trained weights) by name: the source graph takes the new values, the
        load-time passes run again on it, and every cached plan is dropped."""
        from .quant.quantize_model import copy_graph

        source = copy_graph(self.source if self.source is not None else self.graph)
        for name, value in values.items():
            old = source.initializers.get(name)
            if old is None:
                raise EdgeDLError(f"{name!r} is not an initializer of the model")
            value = np.asarray(value)
            if value.shape != old.shape or value.dtype != old.dtype:
                raise EdgeDLError(f"{name!r} must stay {old.dtype}{old.shape}, got {value.dtype}{value.shape}")
            source.initializers[name] = value.copy()
        self.set_source(source)

    def set_source(self, source: Graph) -> None:
        """Replace the model's graph by ``source`` (standard ONNX form, e.g. a fine-tuned QDQ graph): the
        load-time passes run on it again and every cached plan is dropped."""
        from .passes import optimize as run_passes
        from .quant.quantize_model import copy_graph

        source.validate_and_sort()
        graph = run_passes(copy_graph(source))
        fresh = Model(graph, target=self.target, num_threads=self.num_threads, source=source)
        fresh.quantization = self.quantization
        self.__dict__.pop("_variants", None)  # the input variants belong to the old graph
        self.__dict__.update(fresh.__dict__)

    # --- inspection ---------------------------------------------------------------------------------
    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.graph.nodes:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def num_parameters(self) -> int:
        return int(sum(a.size for a in self.graph.initializers.values()))


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_value(spec, value):
    """A feed of a sequence or optional input: a list of arrays (or None for an empty optional)."""
    kind = spec.kind
    if kind.startswith("optional"):
        if value is None:
            return None
        kind = kind[len("optional_"):] if kind != "optional" else "tensor"
    if kind == "sequence":
        if not isinstance(value, (list, tuple)):
            raise InputError(f"input '{spec.name}' is a sequence: feed a list of arrays, got {type(value).__name__}")
        items = [contiguous(np.asarray(v)) for v in value]
        for v in items:
            if spec.dtype is not None and v.dtype != spec.dtype:
                raise InputError(f"input '{spec.name}' holds {np.dtype(spec.dtype).name} tensors, got {v.dtype.name}")
        return items
    arr = contiguous(np.asarray(value))
    if spec.dtype is not None and arr.dtype != spec.dtype:
        raise InputError(f"input '{spec.name}' must have dtype {np.dtype(spec.dtype).name}, got {arr.dtype.name}")
    return arr


def is_device_array(value) -> bool:
    """A GPU array: anything with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, numba device
    arrays) or a numba device array (the CUDA simulator's have no interface)."""
    return hasattr(value, "__cuda_array_interface__") or (hasattr(value, "copy_to_host") and hasattr(value, "shape"))
