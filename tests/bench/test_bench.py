"""edgedl bench end to end: each engine in its own process, the report's fields and their consistency,
agreement, op profiles, failures of one engine, Ctrl-C, and the command line. No timing assertions."""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgedl
from edgedl.benchmark import orchestrate
from edgedl.benchmark.agreement import compare, compare_output
from edgedl.benchmark.inputs import (
    InputSpec,
    calibration_batches,
    file_feeds,
    onnx_input_specs,
    parse_shape_args,
    random_feeds,
    resolve_shapes,
)
from edgedl.benchmark.report import read_csv, read_json
from edgedl.benchmark.worker import load_arrays, save_arrays
from edgedl.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KWS = os.path.join(ROOT, "examples", "kws_tc_resnet.onnx")
DIGITS = os.path.join(ROOT, "examples", "digits_cnn.onnx")
FAST = {"runs": 5, "warmup": 1, "max_secs": 2.0, "threads": [1]}


def _conv_model(path, channels=32, size=48, symbolic=False, opset=17):
    """Three 3x3 convolutions with ReLU, a global pool and a Gemm: milliseconds per run, kernels dominate."""
    rng = np.random.default_rng(0)
    inits, nodes, prev, cin = [], [], "x", 3
    for i in range(3):
        w = (rng.standard_normal((channels, cin, 3, 3)) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["g"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flatten"))
    inits.append(numpy_helper.from_array(rng.standard_normal((channels, 10)).astype(np.float32), "fc"))
    nodes.append(helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc"))
    batch = "N" if symbolic else 1
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [batch, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


# ---------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------
def test_parse_shape_args_accepts_commas_and_x():
    assert parse_shape_args(["x=1,3,224,224", "m=1x128"]) == {"x": (1, 3, 224, 224), "m": (1, 128)}
    for bad in ["x", "x=", "=1,2", "x=1,a", "x=0,3"]:
        with pytest.raises(InputError):
            parse_shape_args([bad])


def test_resolve_shapes_lists_every_symbolic_dimension():
    specs = [InputSpec("audio", ("N", "T", 40), np.dtype(np.float32)),
             InputSpec("mask", ("N", None), np.dtype(np.bool_))]
    with pytest.raises(InputError) as e:
        resolve_shapes(specs, {}, 1)
    msg = str(e.value)
    assert "audio" in msg and "dim 1 (T)" in msg and "mask" in msg and "dim 1 (?)" in msg and "--shape" in msg
    assert "--shape audio=1,1,40" in msg
    shapes = resolve_shapes(specs, {"audio": (2, 100, 40), "mask": (2, 100)}, 3)
    assert shapes == {"audio": (2, 100, 40), "mask": (2, 100)}
    with pytest.raises(InputError, match="audio"):
        resolve_shapes(specs[:1], {}, 3)  # T is still unknown
    assert resolve_shapes([InputSpec("a", ("N", 40), np.dtype(np.float32))], {}, 3) == {"a": (3, 40)}


def test_resolve_shapes_checks_fixed_dims_rank_and_names():
    specs = [InputSpec("x", (1, 3, 8, 8), np.dtype(np.float32))]
    assert resolve_shapes(specs, None, None) == {"x": (1, 3, 8, 8)}
    fixed4 = [InputSpec("x", (4, 3), np.dtype(np.float32)), InputSpec("y", ("N", 3), np.dtype(np.float32))]
    assert resolve_shapes(fixed4, None, default_batch=1) == {"x": (4, 3), "y": (1, 3)}  # only symbolic ones
    with pytest.raises(InputError, match="fixed first dimension"):
        resolve_shapes(specs, None, 4)
    with pytest.raises(InputError, match="fixed to 3"):
        resolve_shapes(specs, {"x": (1, 4, 8, 8)})
    with pytest.raises(InputError, match="rank 4"):
        resolve_shapes(specs, {"x": (1, 3, 8)})
    with pytest.raises(InputError, match="not inputs of the model"):
        resolve_shapes(specs, {"y": (1,)})


def test_random_feeds_are_seeded_and_typed():
    specs = [InputSpec("f", (2, 3), np.dtype(np.float32)), InputSpec("q", (4,), np.dtype(np.uint8)),
             InputSpec("i", (2,), np.dtype(np.int64)), InputSpec("b", (1,), np.dtype(np.bool_))]
    shapes = {s.name: s.dims for s in specs}
    a, b = random_feeds(specs, shapes, seed=3), random_feeds(specs, shapes, seed=3)
    for name in a:
        assert a[name].dtype == next(s.dtype for s in specs if s.name == name)
        np.testing.assert_array_equal(a[name], b[name])
    assert not a["i"].any() and not a["b"].any()


def test_file_feeds_and_calibration_check_names_dtypes_shapes(tmp_path):
    specs = [InputSpec("x", ("N", 4), np.dtype(np.float32))]
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    assert file_feeds(str(tmp_path / "x.npy"), specs)["x"].shape == (2, 4)
    np.save(tmp_path / "bad.npy", np.ones((2, 4), np.float64))
    with pytest.raises(InputError, match="dtype float32"):
        file_feeds(str(tmp_path / "bad.npy"), specs)
    np.save(tmp_path / "shape.npy", np.ones((2, 5), np.float32))
    with pytest.raises(InputError, match="shape"):
        file_feeds(str(tmp_path / "shape.npy"), specs)
    with pytest.raises(InputError, match="does not exist"):
        file_feeds(str(tmp_path / "missing.npz"), specs)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        file_feeds(str(tmp_path / "junk.npz"), specs)
    np.savez(tmp_path / "cal.npz", x=np.ones((10, 4), np.float32))
    batches = calibration_batches(str(tmp_path / "cal.npz"), specs, 4)
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]


def test_arrays_round_trip_any_names(tmp_path):
    arrays = {"file": np.arange(3), "a b/c": np.ones((2, 2), np.float32), "s": np.array(["x", "yz"], object)}
    save_arrays(str(tmp_path / "a.npz"), arrays)
    back = load_arrays(str(tmp_path / "a.npz"))
    assert list(back) == list(arrays)
    np.testing.assert_array_equal(back["a b/c"], arrays["a b/c"])
    assert back["s"].tolist() == ["x", "yz"]


def test_onnx_input_specs_skip_initializers(tmp_path):
    path = _conv_model(tmp_path / "m.onnx", symbolic=True)
    proto = onnx.load(path)
    proto.graph.input.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [32, 3, 3, 3]))
    onnx.save(proto, path)
    specs = onnx_input_specs(path)
    assert [(s.name, s.dims) for s in specs] == [("x", ("N", 3, 48, 48))]


# ---------------------------------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------------------------------
def test_agreement_identical_and_perturbed():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((10, 5)).astype(np.float32)
    same = compare_output(ref, ref.copy())
    assert same["max_abs"] == 0 and same["max_rel"] == 0 and same["top1"] == 1.0
    other = ref.copy()
    rows = [1, 4, 7]
    for r in rows:  # move the arg-max of three rows elsewhere
        other[r, (ref[r].argmax() + 1) % 5] = ref[r].max() + 1
    d = compare_output(ref, other)
    assert d["top1"] == pytest.approx(1 - len(rows) / 10)
    assert d["max_abs"] == pytest.approx(float(np.abs(ref - other).max()))
    assert d["max_rel"] == pytest.approx(d["max_abs"] / float(np.abs(ref).max()))
    assert compare_output(ref[:, 0], ref[:, 0])["top1"] is None  # rank 1: not classifier-shaped


def test_agreement_mismatches_and_pairing():
    a = np.zeros((2, 3), np.float32)
    assert "mismatch" in compare_output(a, np.zeros((3, 2), np.float32))
    b = a.copy()
    b[0, 0] = np.nan
    assert "mismatch" in compare_output(a, b)
    both = np.full((2,), np.nan)
    assert compare_output(both, both.copy())["max_abs"] == 0
    res = compare({"out": a}, {"renamed": a + 1e-3}, "edgedl fp32")
    assert res["max_abs"] == pytest.approx(1e-3) and res["reference"] == "edgedl fp32"


# ---------------------------------------------------------------------------------------------------
# end to end (worker processes)
# ---------------------------------------------------------------------------------------------------
def _check_run(run):
    assert run["status"] == "ok", run["error"]
    s = run["latency_ms"]
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0
    assert run["runs"] == len(run["latencies_ms"]) >= 1
    assert run["throughput_per_s"] == pytest.approx(run["batch"] * 1e3 / s["mean"])
    assert run["init_ms"] > 0 and run["first_ms"] > 0 and run["import_ms"] > 0
    assert run["peak_rss_bytes"] is None or run["peak_rss_bytes"] > 10 * 2**20


def test_bench_against_onnxruntime_with_op_profile(tmp_path):
    path = _conv_model(tmp_path / "convs.onnx")
    report = edgedl.bench(path, **FAST, compare=["onnxruntime"], op_profile=True,
                          json_path=str(tmp_path / "r.json"), csv_path=str(tmp_path / "r.csv"))
    assert report["model"] == path and report["edgedl_version"] == edgedl.__version__
    assert {"name", "cpu", "cores", "features", "gpu"} <= set(report["target"])
    env = report["environment"]
    for key in ("governor", "freq_mhz", "temp_c_before", "temp_c_after", "throttled", "warnings", "versions"):
        assert key in env
    assert [r["engine"] for r in report["runs"]] == ["edgedl", "onnxruntime"]
    for run in report["runs"]:
        _check_run(run)
    ed, ort = report["runs"]
    assert ed["arena_bytes"] > 0 and ed["compile_ms"] is not None and ort["compile_ms"] is None
    agree = ort["agreement"]
    assert agree["reference"].startswith("edgedl fp32") and agree["top1"] == 1.0
    assert agree["max_rel"] < 1e-4 and set(agree["outputs"]) == {"logits"}
    assert ed["agreement"] is None
    # the per-op profile: every step of the plan, percentages and sums consistent with the profiled runs
    ops = ed["ops"]
    assert [o["node"] for o in ops] == ["conv0", "relu0", "conv1", "relu1", "conv2", "relu2", "pool", "fc"] or \
        {o["op_type"] for o in ops} >= {"Conv", "MatMul"}
    assert all(o["kernel"].endswith("float32") for o in ops)
    assert sum(o["percent"] for o in ops) == pytest.approx(100.0)
    prof = ed["ops_profile"]
    assert prof["sum_ms"] == pytest.approx(sum(o["ms"] for o in ops))
    # the steps' own times cover the profiled runs' wall time (kernels dominate this model): within 20%
    assert 0.8 * prof["mean_latency_ms"] <= prof["sum_ms"] <= prof["mean_latency_ms"] * 1.0001
    assert ort["ops"] and {o["op_type"] for o in ort["ops"]} >= {"Conv"}
    # JSON and CSV hold the same report
    back = read_json(str(tmp_path / "r.json"))
    assert back["runs"][0]["latency_ms"] == pytest.approx(ed["latency_ms"])
    rows = read_csv(str(tmp_path / "r.csv"))
    assert [r["engine"] for r in rows] == ["edgedl", "onnxruntime"]
    assert rows[1]["lat_p50_ms"] == pytest.approx(ort["latency_ms"]["p50"])
    assert os.path.isfile(tmp_path / "r_ops.csv")


def test_bench_thread_sweep_int8_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    calibration = os.path.join(ROOT, "examples", "digits_calibration.npz")
    with np.load(calibration) as data:  # real digits (random inputs would say little about int8 accuracy)
        np.save(tmp_path / "x.npy", data["input"][-8:])
    report = edgedl.bench(DIGITS, runs=3, warmup=1, max_secs=1.0, threads=[1, 2] if os.cpu_count() > 1 else [1],
                          precision="fp32,int8", calibration=calibration, input=str(tmp_path / "x.npy"),
                          plot_path=str(tmp_path / "p.png"))
    runs = report["runs"]
    assert {(r["precision"], r["threads"]) for r in runs} == {(p, t) for p in ("fp32", "int8")
                                                                for t in report["settings"]["threads"]}
    for run in runs:
        _check_run(run)
        assert run["batch"] == 8
    int8 = [r for r in runs if r["precision"] == "int8"]
    assert all(r["agreement"]["reference"].startswith("edgedl fp32") and r["agreement"]["top1"] >= 0.75
               for r in int8)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_engine_is_a_note_and_unloadable_model_a_failed_run(tmp_path, monkeypatch):
    path = _conv_model(tmp_path / "m.onnx", channels=4, size=8)
    real = orchestrate._engine_available
    monkeypatch.setattr(orchestrate, "_engine_available", lambda e: False if e == "onnxruntime" else real(e))
    report = edgedl.bench(path, **FAST, compare="onnxruntime,tflite")
    assert [r["engine"] for r in report["runs"]] == ["edgedl"]
    assert any("onnxruntime is not installed" in n for n in report["notes"])
    assert any("tflite" in n and ".tflite models only" in n for n in report["notes"])
    monkeypatch.setattr(orchestrate, "_engine_available", real)
    # a model onnxruntime cannot load (an opset it does not know yet): reported, edgedl's run stands
    proto = onnx.load(path)
    proto.opset_import[0].version = 99
    onnx.save(proto, tmp_path / "future.onnx")
    report = edgedl.bench(str(tmp_path / "future.onnx"), **FAST, compare=["onnxruntime"])
    by = {r["engine"]: r for r in report["runs"]}
    if by["edgedl"]["status"] == "ok":
        assert by["onnxruntime"]["status"] == "error" and by["onnxruntime"]["error"]
        assert by["onnxruntime"]["latency_ms"] is None


def test_symbolic_dims_without_shape_are_a_clear_error(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 40])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 40])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "sym.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(InputError, match=r"x \[N, T, 40\]: dim 1 \(T\)"):
        edgedl.bench(str(path), **FAST)
    report = edgedl.bench(str(path), **FAST, shapes={"x": (2, 7, 40)})
    assert report["inputs"]["x"]["shape"] == [2, 7, 40] and report["runs"][0]["status"] == "ok"


FAKE_WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    spec = json.load(open(sys.argv[1]))
    behaviour = os.environ["FAKE_BENCH_WORKER"]
    if behaviour == "segfault" and spec["engine"] == "edgedl":
        os.kill(os.getpid(), signal.SIGSEGV)
    result = {"status": "ok", "error": None, "import_ms": 1.0, "init_ms": 1.0, "first_ms": 1.0,
              "latencies_s": [0.001, 0.002, 0.003], "timed_start": time.monotonic(), "timed_end": time.monotonic()}
    if behaviour == "sleep":
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            result["status"] = "interrupted"
            result["error"] = "interrupted (Ctrl-C)"
    json.dump(result, open(sys.argv[2], "w"))
""")


def test_a_crashing_engine_is_reported_and_the_others_run(tmp_path, monkeypatch):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(orchestrate, "WORKER", str(script))
    monkeypatch.setenv("FAKE_BENCH_WORKER", "segfault")
    path = _conv_model(tmp_path / "m.onnx", channels=4, size=8)
    report = edgedl.bench(path, **FAST, compare=["onnxruntime"])
    ed, ort = report["runs"]
    assert ed["status"] == "error" and "SIGSEGV" in ed["error"] and ed["latency_ms"] is None
    assert ort["status"] == "ok" and ort["latency_ms"]["p50"] == pytest.approx(2.0)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_writes_the_report_gathered_so_far(tmp_path, monkeypatch):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(orchestrate, "WORKER", str(script))
    monkeypatch.setenv("FAKE_BENCH_WORKER", "sleep")
    path = _conv_model(tmp_path / "m.onnx", channels=4, size=8)
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        report = edgedl.bench(path, **FAST, compare=["onnxruntime"], json_path=str(tmp_path / "r.json"))
    finally:
        timer.cancel()
    assert report["interrupted"] is True
    assert len(report["runs"]) == 1 and report["runs"][0]["status"] == "interrupted"
    assert report["runs"][0]["runs"] == 3  # what the process timed before the interruption
    assert json.load(open(tmp_path / "r.json"))["interrupted"] is True


def test_command_line(tmp_path, capsys):
    from edgedl.cli import main

    path = _conv_model(tmp_path / "m.onnx", channels=4, size=8, symbolic=True)
    code = main(["bench", path, "--runs", "3", "--warmup", "1", "--max-secs", "1", "--threads", "1",
                 "--train", "--train-steps", "2", "--batch", "4", "--json", str(tmp_path / "r.json"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "edgedl" in out and "p50" in out and "Training steps" in out
    report = read_json(str(tmp_path / "r.json"))
    assert report["runs"][0]["engine"] == "edgedl" and report["runs"][0]["batch"] == 4
    train = report["training"][0]
    assert train["engine"] == "edgedl" and train["status"] == "ok" and train["steps"] == 2
    assert train["trainable"] == "last:1" and train["batch"] == 4 and train["trained_values"] == 4 * 10
    assert main(["bench", str(tmp_path / "missing.onnx")]) == 2
    assert main(["bench", path, "--threads", "x"]) == 2
    assert main(["bench", path, "--precision", "fp16"]) == 2
    assert main(["bench", path, "--compare", "tensorrt"]) == 2
    assert "error" in capsys.readouterr().err


def _tflite_dense_model(path, weights: np.ndarray) -> str:
    """A one-layer .tflite (FULLY_CONNECTED, y = x @ weights.T) built with the TFLite schema's object API."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    flatbuffers = pytest.importorskip("flatbuffers")
    out_features, in_features = weights.shape

    def tensor(name, shape, buffer):
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), schema.TensorType.FLOAT32, buffer
        return t

    empty, data = schema.BufferT(), schema.BufferT()
    data.data = list(np.ascontiguousarray(weights, np.float32).tobytes())
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, -1], [2]
    op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = schema.FullyConnectedOptionsT()
    graph = schema.SubGraphT()
    graph.tensors = [tensor("x", (1, in_features), 0), tensor("w", weights.shape, 1),
                     tensor("y", (1, out_features), 0)]
    graph.inputs, graph.outputs, graph.operators, graph.name = [0], [2], [op], "main"
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [empty, data]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with open(path, "wb") as f:
        f.write(builder.Output())
    return str(path)


def test_tflite_engine_runs_a_tflite_model(tmp_path):
    pytest.importorskip("ai_edge_litert.interpreter")
    weights = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    path = _tflite_dense_model(tmp_path / "dense.tflite", weights)
    x = np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    report = edgedl.bench(path, **FAST, compare=["tflite", "onnxruntime"], input=str(tmp_path / "x.npy"))
    assert report["inputs"] == {"x": {"shape": [1, 8], "dtype": "float32"}}
    assert any("onnxruntime" in n and "ONNX models only" in n for n in report["notes"])
    by = {r["engine"]: r for r in report["runs"]}
    _check_run(by["tflite"])
    assert by["tflite"]["versions"].get("ai_edge_litert")
    _check_run(by["edgedl"])  # edgedl reads the .tflite file itself (converters/tflite_import.py)
    assert by["tflite"]["agreement"]["max_rel"] < 1e-5


def test_board_state_power_and_energy_on_a_fake_jetson(tmp_path, monkeypatch):
    """The report's board fields from a Jetson's sysfs (JetPack 5 INA3221 hwmon, cpufreq, thermal zones)."""
    root = tmp_path / "root"

    def write(rel, text):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)

    write("proc/device-tree/model", b"NVIDIA Jetson Orin Nano Developer Kit\0")
    for c in range(2):
        base = f"sys/devices/system/cpu/cpu{c}/cpufreq"
        write(f"{base}/scaling_governor", "schedutil\n")
        write(f"{base}/scaling_cur_freq", "1510400\n")
        write(f"{base}/cpuinfo_max_freq", "1510400\n")
    write("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write("sys/class/thermal/thermal_zone0/temp", "51500\n")
    hw = "sys/bus/i2c/devices/1-0040/hwmon/hwmon2"
    write("sys/bus/i2c/devices/1-0040/name", "ina3221\n")
    for n, label, mv, ma in ((1, "VDD_IN", 5000, 1400), (2, "VDD_CPU_GPU_CV", 5000, 300)):
        write(f"{hw}/in{n}_label", label + "\n")
        write(f"{hw}/in{n}_input", f"{mv}\n")
        write(f"{hw}/curr{n}_input", f"{ma}\n")
    monkeypatch.setattr(orchestrate, "BOARD_ROOT", str(root))
    path = _conv_model(tmp_path / "m.onnx", channels=4, size=8)
    report = edgedl.bench(path, **FAST)
    env, run = report["environment"], report["runs"][0]
    assert env["board_model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert env["governor"] == "schedutil" and env["freq_mhz"] == pytest.approx(1510.4)
    assert env["temp_c_before"] == pytest.approx(51.5) and env["temp_c_after"] == pytest.approx(51.5)
    assert env["power_rail"] == "VDD_IN" and env["idle_power_w"] == pytest.approx(7.0)
    assert any("performance" in w for w in env["warnings"])
    assert run["power_w"] == pytest.approx(7.0)  # VDD_IN: 5 V x 1.4 A, the board total
    assert run["energy_mj"] == pytest.approx(7.0 * run["latency_ms"]["mean"])
    assert run["temp_c_before"] == pytest.approx(51.5) and run["freq_mhz_min"] == pytest.approx(1510.4)


def test_model_run_profile_lists_steps_and_subgraph_steps():
    """Model.run(profile=[]): one entry per executed step, the same outputs; the steps of an If's branch are
    listed under the If's scope, and the If's own entry excludes them, so entries add up once."""
    import time

    model = edgedl.load(_if_model(large_condition=True))
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    feeds = {"x": x, "c": np.ones(128, np.float32)}
    plain = model.run(feeds)["y"]
    steps: list = []
    t0 = time.perf_counter()
    out = model.run(feeds, profile=steps)["y"]
    wall = time.perf_counter() - t0
    np.testing.assert_array_equal(out, plain)
    names = [(s.scope + s.node.name, s.kernel) for s in steps]
    assert [n for n, _ in names] == ["pre", "sum", "positive", "choose/then_op", "choose/then_mul", "choose", "post"]
    assert dict(names)["choose"].startswith("eager") and dict(names)["pre"].endswith("float32")
    assert all(s.seconds >= 0 for s in steps) and sum(s.seconds for s in steps) <= wall
    steps.clear()
    feeds["c"] = -feeds["c"]
    model.run(feeds, profile=steps)
    assert [s.scope + s.node.name for s in steps][3:5] == ["choose/else_op", "choose/else_mul"]


def _if_model(large_condition: bool):
    """x (2, 64) -> Sigmoid -> If(cond: Relu then Mul | Tanh then Mul) -> + x. The condition is a graph input
    ``cond`` (one element), or ``sum(c) > 0`` of a 128-element input ``c``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])

    def branch(name, op):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2, 64])
        nodes = [helper.make_node(op, ["h"], [f"{name}_a"], name=f"{name}_op"),
                 helper.make_node("Mul", [f"{name}_a", "h"], [f"{name}_out"], name=f"{name}_mul")]
        return helper.make_graph(nodes, name, [], [out])

    nodes = [helper.make_node("Sigmoid", ["x"], ["h"], name="pre")]
    if large_condition:
        cond_in = helper.make_tensor_value_info("c", TensorProto.FLOAT, [128])
        nodes += [helper.make_node("ReduceSum", ["c"], ["total"], name="sum", keepdims=0),
                  helper.make_node("Greater", ["total", "zero"], ["cond"], name="positive")]
        inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    else:
        cond_in = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
        inits = []
    nodes += [helper.make_node("If", ["cond"], ["z"], name="choose", then_branch=branch("then", "Relu"),
                               else_branch=branch("else", "Tanh")),
              helper.make_node("Add", ["z", "x"], ["y"], name="post")]
    return helper.make_model(helper.make_graph(nodes, "g", [x, cond_in], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_an_if_on_a_small_input_is_inlined_into_the_plan():
    """An If whose condition comes from a small input (a flag, a sample rate): the plans specialize on its value
    and the taken branch's nodes join the plan (bound kernels, no eager step; silero VAD went from 0.76 to
    0.14 ms a call); one plan per value, the remembered plan checked against the value."""
    model = edgedl.load(_if_model(large_condition=False))
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    h = 1 / (1 + np.exp(-x))
    for cond, fn in ((True, lambda v: np.maximum(v, 0)), (False, np.tanh), (True, lambda v: np.maximum(v, 0))):
        steps: list = []
        out = model.run({"x": x, "cond": np.array(cond)}, profile=steps)["y"]
        np.testing.assert_allclose(out, fn(h) * h + x, rtol=1e-5, atol=1e-6)
        branch = "then" if cond else "else"
        assert [s.scope + s.node.name for s in steps][1:3] == [f"choose/{branch}_branch/{branch}_op",
                                                               f"choose/{branch}_branch/{branch}_mul"]
        assert not any(s.kernel.startswith("eager") for s in steps)
    # the plan load made (validation, before any value was known), then one per value
    assert len(model._runner.plans) == 3 and model._runner.value_inputs == {"cond"}


def test_several_processes_per_setting_take_turns_and_report_the_median_p50(tmp_path):
    """processes=3: each setting runs in 3 fresh processes, engines alternating; one merged run per setting whose
    p50 is the median of the processes' p50s and whose latencies are all of theirs."""
    pytest.importorskip("ai_edge_litert.interpreter")
    weights = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    path = _tflite_dense_model(tmp_path / "dense.tflite", weights)
    lines = []
    report = edgedl.bench(path, **FAST, compare=["tflite"], processes=3, progress=lines.append)
    assert [ln.split("]")[1].split("...")[0].strip() for ln in lines if ln.startswith("[")] == \
        ["edgedl fp32 1 thread(s)", "tflite fp32 1 thread(s)"] * 3
    assert len(report["runs"]) == 2
    for run in report["runs"]:
        _check_run(run)
        assert run["processes"] == 3 and len(run["process_p50_ms"]) == 3
        assert run["latency_ms"]["p50"] == pytest.approx(float(np.median(run["process_p50_ms"])))
        assert run["runs"] == len(run["latencies_ms"]) >= 3 * 5 - 3
    assert "3 processes per setting" in "\n".join(edgedl.benchmark.report.format_report(report))
    with pytest.raises(edgedl.EdgeDLError, match="processes"):
        edgedl.bench(path, **FAST, processes=0)
