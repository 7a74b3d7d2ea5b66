"""Benchmark of the recurrent layers (LSTM, GRU, bidirectional LSTM) against onnxruntime.

Run:  python benchmarks/bench_recurrent.py [--threads 1 0] [--repeats 7] [--quick]

Speech-sized layers (input 40 / 80 features, hidden 128 / 256, 100 frames, batch 1) with the weights as
initializers, at 1 thread and at every thread (``0``: all cores), for both engines; then streaming use: a
seq_len 1 model (one frame, state in, state out) called ``--calls`` times with its state fed back, in
microseconds per call. Each number is the median over ``--repeats`` repeats (a repeat times a block of calls
of each engine back to back and takes their means), so a busy neighbour shifts single repeats, not the
median. Prints the median of the per-repeat edgedl / onnxruntime ratios (below 1: edgedl faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import onnx  # noqa: E402
import onnx.helper as oh  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402

import edgedl  # noqa: E402

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


def ort_session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def paired_times(fa, fb, calls: int, repeats: int) -> tuple[float, float, float]:
    """(median seconds per call of ``fa``, of ``fb``, median of the per-repeat ratios a / b). A repeat times
    ``calls`` calls of each, back to back, so both engines see the same load of a shared machine."""
    for _ in range(max(2, calls // 10)):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - t0) / calls)
    return statistics.median(ta), statistics.median(tb), statistics.median(a / b for a, b in zip(ta, tb))


def bench_layers(threads: int, repeats: int, seq: int, layers) -> list[tuple[str, float, float, float]]:
    rows = []
    cores = os.cpu_count() or 1
    n = threads or cores
    for name, op, isz, hsz, bidir in layers:
        model = layer_model(op, isz, hsz, bidir, seq, 1, False)
        x = np.random.default_rng(1).standard_normal((seq, 1, isz)).astype(np.float32)
        ed = edgedl.load(model.SerializeToString(), num_threads=n)
        sess = ort_session(model, n)
        want = sess.run(None, {"X": x})[0]
        got = ed.run({"X": x})["Y"]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        calls = 5 if hsz >= 256 else 10
        rows.append((name, *paired_times(lambda: ed.run({"X": x}), lambda: sess.run(None, {"X": x}), calls, repeats)))
    return rows


def bench_streaming(threads: int, repeats: int, calls: int, cases) -> list[tuple[str, float, float, float]]:
    rows = []
    n = threads or (os.cpu_count() or 1)
    for name, op, isz, hsz in cases:
        model = layer_model(op, isz, hsz, False, 1, 1, True)
        frames = np.random.default_rng(2).standard_normal((calls, 1, 1, isz)).astype(np.float32)
        ed = edgedl.load(model.SerializeToString(), num_threads=n)
        sess = ort_session(model, n)
        lstm = op == "LSTM"
        zero = np.zeros((1, 1, hsz), np.float32)

        def run_edgedl():
            state = {"h0": zero, "c0": zero} if lstm else {"h0": zero}
            for f in frames:
                out = ed.run({"X": f, **state})
                state = {"h0": out["hn"], "c0": out["cn"]} if lstm else {"h0": out["hn"]}
            return state["h0"]

        def run_ort():
            state = {"h0": zero, "c0": zero} if lstm else {"h0": zero}
            for f in frames:
                out = sess.run(None, {"X": f, **state})
                state = {"h0": out[1], "c0": out[2]} if lstm else {"h0": out[1]}
            return state["h0"]

        np.testing.assert_allclose(run_edgedl(), run_ort(), rtol=1e-3, atol=1e-4)
        te, to, ratio = paired_times(run_edgedl, run_ort, 1, repeats)
        rows.append((name, te / calls, to / calls, ratio))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="thread counts (0: every core)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--calls", type=int, default=1000, help="streaming calls per repeat")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, the smaller layers only")
    args = ap.parse_args()
    layers, streaming = LAYERS, STREAMING
    if args.quick:
        args.repeats = 3
        layers = [c for c in LAYERS if c[3] == 128]
        streaming = STREAMING[:2]
    for threads in args.threads:
        label = f"{threads} thread(s)" if threads else f"all threads ({os.cpu_count()})"
        print(f"\n== {label}: seq {args.seq}, batch 1; median of {args.repeats} repeats ==")
        print(f"{'layer':<18} {'edgedl ms':>10} {'ort ms':>8} {'ratio':>6}")
        for name, te, to, ratio in bench_layers(threads, args.repeats, args.seq, layers):
            print(f"{name:<18} {te * 1e3:>10.3f} {to * 1e3:>8.3f} {ratio:>6.2f}")
        print(f"-- streaming: seq_len 1, state fed back, {args.calls} calls per repeat --")
        print(f"{'layer':<18} {'edgedl us':>10} {'ort us':>8} {'ratio':>6}")
        for name, te, to, ratio in bench_streaming(threads, args.repeats, args.calls, streaming):
            print(f"{name:<18} {te * 1e6:>10.1f} {to * 1e6:>8.1f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
