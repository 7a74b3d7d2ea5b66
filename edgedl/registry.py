"""The op registry: each operator is registered once, with everything it needs side by side.

An op class (a subclass of :class:`Op`) is constructed once per node and plan (so state that ``infer``
stores on ``self`` belongs to one binding of shapes). It parses the node's attributes in
``__init__`` and provides:

* ``infer(ins, consts)``: the shape rule. ``ins`` holds a :class:`~edgedl.ir.TensorType` per input (None for
  an omitted optional input) and ``consts`` the value of each input that is a known constant (else None).
  It returns one TensorType per output and raises :class:`~edgedl.errors.EdgeDLError` for inputs that do
  not fit. It runs before any kernel, so kernels may trust the shapes they get.
* ``ref(*arrays)``: the numpy reference, the spec that tests check kernels against. It also folds
  constants at plan time.
* ``build(ins, outs, consts)``: the prepare step. It computes constant parameters once (packed weights,
  broadcast strides) and returns a :class:`Kernel` that runs on preallocated outputs. The default runs
  ``ref`` and copies the result; ops with Numba kernels override it.

* ``backward(grads, ins, outs, needs)`` (training, :mod:`edgedl.train`): the gradients of the loss with
  respect to the inputs, from those with respect to the outputs. ``grad_inputs`` / ``grad_outputs`` name the
  forward values it reads, so the training tape keeps only those alive; ``self.in_types`` /
  ``self.out_types`` (set by the tape after ``infer``) give every shape.

Class attributes describe coverage for ``edgedl ops``: ``kernels`` maps a device to the dtypes that have a
compiled kernel there.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .errors import EdgeDLError, ShapeError, UnsupportedOpError
from .ir import Node, TensorType

KernelFn = Callable[[list, list, np.ndarray], None]


@dataclass
class Kernel:
    """A prepared kernel: ``fn(inputs, outputs, scratch)`` writes into preallocated ``outputs``.

    ``scratch_bytes`` of workspace are handed in as a uint8 array that lives only during this step.
    ``impl`` says what runs: "numba" (a compiled kernel) or "numpy" (the reference path).
    ``bind`` (optional): ``bind(inputs, outputs, scratch, threads)`` returns a no-argument callable doing
    the same work on those very arrays, with every argument prepared once. The planner binds steps whose
    arrays stay the same from run to run (arena tensors, constants), which removes the per-call Python
    work that dominates small layers.
    """

    fn: KernelFn
    scratch_bytes: int = 0
    impl: str = "numba"
    bind: Callable[[list, list, np.ndarray, int], Callable[[], None]] | None = None


class Op:
    """Base class of every operator. See the module docstring for the contract."""

    op_type: ClassVar[str] = ""
    domain: ClassVar[str] = ""
    #: device -> dtypes with a compiled kernel, e.g. {"cpu": ("float32",)}
    kernels: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: output 0 is a view of input 0 with another shape (Reshape, Flatten, Squeeze, ...): no copy
    alias: ClassVar[bool] = False
    #: outputs depend only on input shapes (Shape, Size): always folded at plan time
    shape_only: ClassVar[bool] = False
    #: minimum and maximum number of inputs
    num_inputs: ClassVar[tuple[int, int]] = (1, 1)
    #: outputs are computed by ``ref`` at run time and allocated there (control flow, sequences, optionals):
    #: their types are known when the plan is built, but they do not live in the arena
    eager: ClassVar[bool] = False
    #: outputs differ from run to run (random ops): never folded into constants when a plan is built
    nondeterministic: ClassVar[bool] = False

    def __init__(self, node: Node, opset: int):
        self.node = node
        self.opset = opset
        lo, hi = self.num_inputs
        n = len(node.inputs)
        while n > 0 and not node.inputs[n - 1]:
            n -= 1
        if n < lo or n > hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.error(f"takes {want} inputs, got {n}")

    # --- helpers for subclasses -------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    def error(self, msg: str, cls: type[EdgeDLError] = ShapeError) -> EdgeDLError:
        return cls(f"{self.node.describe()}: {msg}")

    def unsupported(self, msg: str) -> EdgeDLError:
        return self.error(msg, UnsupportedOpError)

    # --- the contract ---------------------------------------------------------------------------------
    def infer(self, ins: list[TensorType | None], consts: list[np.ndarray | None]) -> list[TensorType]:
        raise NotImplementedError

    def ref(self, *inputs: np.ndarray | None) -> list[np.ndarray]:
        raise NotImplementedError

    def build(self, ins: list[TensorType | None], outs: list[TensorType],
              consts: list[np.ndarray | None]) -> Kernel:
        return ref_kernel(self)

    def build_cuda(self, ins: list[TensorType | None], outs: list[TensorType],
                   consts: list[np.ndarray | None]) -> Kernel | None:
        """A CUDA kernel for these types (``impl="cuda"``, ``fn(inputs, outputs, stream)`` on device arrays,
        launched on ``stream``), or None: the CUDA plan then runs the node on the host between transfers. Ops
        list the dtypes they cover under ``kernels["cuda"]``."""
        return None

    # --- training -----------------------------------------------------------------------------------
    #: indices of the inputs whose values ``backward`` reads (None: all of them)
    grad_inputs: ClassVar[tuple[int, ...] | None] = None
    #: indices of the outputs whose values ``backward`` reads
    grad_outputs: ClassVar[tuple[int, ...]] = ()
    #: shapes and dtypes of the inputs / outputs, set by the training tape after ``infer``
    in_types: list[TensorType | None] = []
    out_types: list[TensorType] = []

    def has_backward(self) -> bool:
        return type(self).backward is not Op.backward

    def backward(self, grads: list[np.ndarray | None], ins: list[np.ndarray | None],
                 outs: list[np.ndarray | None], needs: list[bool]) -> list[np.ndarray | None]:
        """Gradients of the loss with respect to each input.

        ``grads[j]``: the gradient with respect to output j (float32, the output's shape; None: zero).
        ``ins`` / ``outs``: the forward values listed in ``grad_inputs`` / ``grad_outputs`` (others None).
        ``needs[i]``: whether input i's gradient is wanted; unwanted entries may be None. Returns a list with
        one entry per input: a float32 array of the input's shape, or None."""
        raise self.unsupported("has no backward: training cannot go through it")

    @classmethod
    def has_backward_cuda(cls) -> bool:
        """Whether ``backward_cuda`` can run on the device (for some types; what ``edgedl ops`` shows)."""
        return cls.backward_cuda is not Op.backward_cuda

    def backward_cuda(self, grads: list, ins: list, outs: list, needs: list[bool], stream) -> list | None:
        """``backward`` on a CUDA device (:class:`edgedl.train.cuda_tape.CudaTape`): the same arguments and result
        as numba device arrays, kernels launched on ``stream``; None when this op (or these types) has no device
        backward, and the tape then runs ``backward`` on the host between transfers."""
        return None


def ref_kernel(op: Op) -> Kernel:
    """A kernel that runs the numpy reference and copies into the preallocated outputs (one per output that
    the node names: an omitted optional output in the middle has no buffer)."""
    present = [bool(o) for o in op.node.outputs]

    def run(inputs, outputs, scratch):
        buffers = iter(outputs)
        for res, named in zip(op.ref(*inputs), present):
            if named:
                next(buffers)[...] = res

    return Kernel(run, impl="numpy")


_REGISTRY: dict[tuple[str, str], type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op class to the registry under (domain, op_type)."""
    key = (cls.domain, cls.op_type)
    if not cls.op_type:
        raise TypeError(f"{cls.__name__} has no op_type")
    if key in _REGISTRY:
        raise TypeError(f"op {key} registered twice")
    _REGISTRY[key] = cls
    return cls


def lookup(op_type: str, domain: str = "") -> type[Op] | None:
    _load_ops()
    if domain == "ai.onnx":
        domain = ""
    return _REGISTRY.get((domain, op_type))


def registered_ops() -> dict[tuple[str, str], type[Op]]:
    _load_ops()
    return dict(sorted(_REGISTRY.items()))


def _load_ops() -> None:
    from . import ops  # noqa: F401  (importing the package registers every op family)
