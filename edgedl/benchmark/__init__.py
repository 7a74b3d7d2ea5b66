"""On-device benchmarking: ``edgedl bench`` and :func:`edgedl.bench`.

Modules, one job each: :mod:`.orchestrate` (runs every engine and setting in its own process and builds the
report), :mod:`.worker` (one engine in one process), :mod:`.inputs` (input specs, shapes, feeds),
:mod:`.stats` (latency summaries), :mod:`.agreement` (do engines give the same answer),
:mod:`.board_state` (governor, clocks, temperatures, throttling, power), :mod:`.report` (terminal tables,
JSON, CSV), :mod:`.plot` (PNG), :mod:`.training` (training-step timing, with :mod:`.torch_from_onnx` for the
PyTorch side).
"""
from __future__ import annotations
