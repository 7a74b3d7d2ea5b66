"""An ONNX backend (``onnx.backend.base``) over edgedl, so onnx's own backend test runner can drive it.

    import edgedl.backend as backend
    rep = backend.prepare(model_proto)
    outputs = rep.run([x])
"""
from __future__ import annotations

import keyword
from collections import namedtuple

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from .converters.onnx_import import numpy_to_onnx_dtype


def _namedtuple(names):
    fields = [n if n.isidentifier() and not n.startswith("_") and not keyword.iskeyword(n) else f"output_{i}"
              for i, n in enumerate(names)]
    if len(set(fields)) != len(fields):
        fields = [f"output_{i}" for i in range(len(names))]
    return namedtuple("Outputs", fields)


class EdgeDLRep(BackendRep):
    """A prepared model: ``run(inputs)`` with a list (in graph-input order) or a dict of arrays."""

    def __init__(self, model):
        self.model = model

    def run(self, inputs, **kwargs):
        specs = self.model.graph.inputs
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            # sequences (lists) and empty optionals (None) are fed as they are
            feeds = {s.name: a if a is None or isinstance(a, list) else np.asarray(a) for s, a in zip(specs, inputs)}
        result = self.model.run(feeds)
        names = [s.name for s in self.model.graph.outputs]
        return _namedtuple(names)(*[result[n] for n in names])


class EdgeDLBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device="CPU", **kwargs):
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        from . import load

        if not cls.supports_device(device):
            from .errors import EdgeDLError

            raise EdgeDLError(f"device {device!r} is not supported by edgedl (CPU only in this release)")
        return EdgeDLRep(load(model, **kwargs))

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        """Run one NodeProto on the given inputs (a list in node-input order)."""
        arrays = [np.asarray(a) for a in inputs]
        names = [n for n in node.input if n]
        graph_inputs = [helper.make_tensor_value_info(n, numpy_to_onnx_dtype(a.dtype), a.shape)
                        for n, a in zip(names, arrays)]
        graph_outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(node.domain or "", opset)])
        rep = cls.prepare(model, device, **kwargs)
        return rep.run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU


prepare = EdgeDLBackend.prepare
run_model = EdgeDLBackend.run_model
run_node = EdgeDLBackend.run_node
supports_device = EdgeDLBackend.supports_device
is_compatible = EdgeDLBackend.is_compatible
