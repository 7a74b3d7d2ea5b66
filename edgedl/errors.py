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
