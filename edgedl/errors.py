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
