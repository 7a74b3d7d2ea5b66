"""Errors raised by edgedl. Every problem with a model or with run-time input is an EdgeDLError."""


class EdgeDLError(Exception):
    """Base class of every error edgedl raises for a bad model, a bad input or an unsupported feature."""


class ModelFormatError(EdgeDLError):
    """The model file or bytes are missing, empty, truncated, not ONNX, or structurally invalid."""


class UnsupportedOpError(EdgeDLError):
    """The model uses operators (or operator variants) that edgedl does not implement."""


class ShapeError(EdgeDLError):
    """Shapes, ranks or channel counts in the model do not fit together."""


class InputError(EdgeDLError):
    """The feeds given to ``Model.run`` have wrong names, shapes or dtypes."""


class ConstantRequired(UnsupportedOpError):
    """An op needs the value of a tensor (a Reshape shape, Slice starts, ...) when the plan is built.

    When that tensor is computed from graph inputs, the Model specializes its plan on those inputs' values
    (as it does on input shapes); otherwise this error reaches the user.
    """

    def __init__(self, message: str, tensor: str):
        super().__init__(message)
        self.tensor = tensor


class DataDependentShape(EdgeDLError):
    """An op's output shape depends on the values of its inputs (NonZero, Unique, Compress,
    NonMaxSuppression, a Loop's outputs), which are not known when the plan is built.

    Raised by an op's shape rule when the inputs it needs are not constants. The planner then runs that node
    as a run-time step (its ``ref`` allocates the outputs) and plans the nodes after it once their input shapes
    are known, one cached plan per binding; a model without such nodes keeps its fully static plan.
    """
