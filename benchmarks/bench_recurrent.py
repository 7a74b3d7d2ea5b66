"""Benchmark of the recurrent layers (LSTM, GRU, bidirectional LSTM) against onnxruntime.

Run:  python benchmarks/bench_recurrent.py [--threads 1 0] [--repeat 3] [--max-secs 1.0] [--quick]

Speech-sized layers (input 40 / 80 features, hidden 128 / 256, 100 frames, batch 1) with the weights as
initializers, at 1 thread and at every thread (``0``: all cores), for both engines; then streaming use: the
seq_len 1 model (one frame, state in, state out) that a streaming caller runs once per frame with its state
fed back. Here it is a plain latency benchmark of that model with the state as random inputs (a state's
value does not change the timing), in microseconds per call.

Every case runs through :func:`edgedl.bench` (``bench_models.bench_files``): each engine and thread count in
its own fresh process, repetitions outermost; a cell is the median over ``--repeat`` repetitions of each
process's p50 latency, the ratio edgedl / onnxruntime (below 1: edgedl faster). "max abs diff" is the largest
difference between the engines' outputs (the report's agreement).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import onnx  # noqa: E402
import onnx.helper as oh  # noqa: E402
from bench_models import bench_files, print_other_load, print_ratio_table, worst_agreement, write_protos  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
#: (name, op, input size, hidden, bidirectional)
LAYERS = [
    ("lstm i40 h128", "LSTM", 40, 128, False),
    ("lstm i80 h256", "LSTM", 80, 256, False),
    ("gru i40 h128", "GRU", 40, 128, False),
    ("gru i80 h256", "GRU", 80, 256, False),
    ("bilstm i40 h128", "LSTM", 40, 128, True),
    ("bilstm i80 h256", "LSTM", 80, 256, True),
]
STREAMING = [("lstm i40 h128", "LSTM", 40, 128), ("gru i40 h128", "GRU", 40, 128),
             ("lstm i80 h256", "LSTM", 80, 256)]


def layer_model(op: str, isz: int, hsz: int, bidir: bool, seq: int, batch: int, state_io: bool,
                seed: int = 0) -> onnx.ModelProto:
    """One recurrent layer, weights as initializers. ``state_io``: initial_h (and initial_c) are inputs and
    Y_h (and Y_c) outputs, for streaming."""
    rng = np.random.default_rng(seed)
    d = 2 if bidir else 1
    g = GATES[op]
    inits = [numpy_helper.from_array((rng.standard_normal((d, g * hsz, isz)) * 0.1).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((d, g * hsz, hsz)) * 0.1).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((d, 2 * g * hsz)) * 0.1).astype(np.float32), "B")]
    inputs = [oh.make_tensor_value_info("X", TensorProto.FLOAT, [seq, batch, isz])]
    node_in = ["X", "W", "R", "B"]
    outputs = [oh.make_tensor_value_info("Y", TensorProto.FLOAT, [seq, d, batch, hsz])]
    node_out = ["Y"]
    if state_io:
        state = [d, batch, hsz]
        node_in += ["", "h0"] + (["c0"] if op == "LSTM" else [])
        inputs.append(oh.make_tensor_value_info("h0", TensorProto.FLOAT, state))
        node_out.append("hn")
        outputs.append(oh.make_tensor_value_info("hn", TensorProto.FLOAT, state))
        if op == "LSTM":
            inputs.append(oh.make_tensor_value_info("c0", TensorProto.FLOAT, state))
            node_out.append("cn")
            outputs.append(oh.make_tensor_value_info("cn", TensorProto.FLOAT, state))
    node = oh.make_node(op, node_in, node_out, hidden_size=hsz, direction="bidirectional" if bidir else "forward")
    graph = oh.make_graph([node], "rnn", inputs, outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="thread counts (0: every core)")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--max-secs", type=float, default=1.0, help="timed seconds per process (default 1)")
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="one repetition, the smaller layers only")
    args = ap.parse_args()
    layers, streaming = LAYERS, STREAMING
    if args.quick:
        layers = [c for c in LAYERS if c[3] == 128]
        streaming = STREAMING[:2]
    repeat = args.repeat or (1 if args.quick else 3)
    cores = os.cpu_count() or 1
    threads = list(dict.fromkeys(t or cores for t in args.threads))
    protos = [(name, layer_model(op, isz, hsz, bidir, args.seq, 1, False)) for name, op, isz, hsz, bidir in layers]
    protos += [(f"{name} step", layer_model(op, isz, hsz, False, 1, 1, True)) for name, op, isz, hsz in streaming]
    reports: list = []
    with tempfile.TemporaryDirectory() as tmp:
        cells = bench_files(write_protos(tmp, protos), threads, repeat, args.max_secs, reports=reports)
    agreement = worst_agreement(reports)
    for t in threads:
        print(f"\nseq {args.seq}, batch 1; median over {repeat} repetition(s) of each process's p50")
        print_ratio_table(cells, [c[0] for c in layers], t, agreement=agreement, title="layer")
        print("\nstreaming: the seq_len 1 model, the state as inputs")
        print_ratio_table(cells, [f"{c[0]} step" for c in streaming], t, unit="us", agreement=agreement,
                          title="layer")
    print_other_load(reports)


if __name__ == "__main__":
    main()
