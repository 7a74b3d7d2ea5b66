"""The benchmark report as text, JSON, CSV and PNG (edgedl.benchmark.report / plot), on synthetic reports."""
from __future__ import annotations

import builtins
import json
import math

import numpy as np
import pytest

from edgedl.benchmark import report as rep
from edgedl.benchmark.stats import KEYS, latency_stats
from edgedl.errors import EdgeDLError, InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OPS = [("conv0", "Conv", "numba float32", 4.0), ("relu0", "Relu", "numba float32", 0.5),
       ("conv1", "Conv", "numba float32", 3.0), ("pool", "GlobalAveragePool", "numpy", 0.25),
       ("fc", "Gemm", "numba float32", 2.25)]


def _run(rng, engine, threads, base_ms, *, ops=False, precision="fp32") -> dict:
    lat_s = (base_ms / threads) * (1 + 0.05 * rng.standard_normal(40).clip(-3, 3)) / 1e3
    lat_s[7] *= 3  # an outlier
    stats = latency_stats(lat_s)
    run = {
        "engine": engine, "precision": precision, "threads": threads, "batch": 1, "status": "ok", "error": None,
        "import_ms": 120.0, "init_ms": 45.25, "compile_ms": 1234.5 if engine == "edgedl" else None,
        "first_ms": 80.0, "warmup_ms": 12.5, "warmup_runs": 5, "runs": len(lat_s), "latency_ms": stats,
        "latencies_ms": [float(x) * 1e3 for x in lat_s], "throughput_per_s": 1e3 / stats["mean"],
        "peak_rss_bytes": 150 * 2**20 + 12345, "arena_bytes": 3 * 2**20 if engine == "edgedl" else None,
        "ops": None, "ops_profile": None, "power_w": 4.5, "energy_mj": 4.5 * stats["mean"],
        "temp_c_before": 45.0, "temp_c_after": 51.5, "freq_mhz_min": 1500.0, "throttled": False,
        "agreement": None if engine == "edgedl" else {
            "reference": "edgedl fp32", "max_abs": 2.1e-6, "max_rel": 3.3e-5, "top1": 1.0,
            "outputs": {"y": {"max_abs": 2.1e-6, "max_rel": 3.3e-5, "top1": 1.0, "shape": [1, 10]}}},
        "cache_hits": 3, "cache_misses": 0, "versions": {}, "notes": [],
    }
    if ops:
        run["ops"] = [{"node": n, "op_type": t, "kernel": k, "ms": ms, "percent": 100 * ms / 10.0}
                      for n, t, k, ms in OPS]
        run["ops_profile"] = {"runs": 10, "sum_ms": 10.0, "mean_latency_ms": 11.0, "overhead_percent": 4.0,
                              "coverage_percent": 100 * 10.0 / stats["mean"]}
    return run


def make_report(model="models/tiny_cnn.onnx") -> dict:
    """A full report: edgedl and onnxruntime at 1 and 2 threads (ops on one run), a failed tflite run, training."""
    rng = np.random.default_rng(0)
    runs = [_run(rng, "edgedl", 1, 12.0, ops=True), _run(rng, "onnxruntime", 1, 9.0),
            _run(rng, "edgedl", 2, 12.0), _run(rng, "onnxruntime", 2, 9.0)]
    runs.append({"engine": "tflite", "precision": "fp32", "threads": 1, "batch": 1, "status": "error",
                 "error": "ValueError: tflite_runtime could not load the converted model\n(traceback follows)",
                 "init_ms": None, "latency_ms": None, "latencies_ms": [], "throughput_per_s": None})
    step = latency_stats(rng.uniform(0.05, 0.06, 20))
    return {
        "model": model, "edgedl_version": "0.1.0", "created": "2026-12-06T21:30:00Z",
        "settings": {"runs": 40, "warmup": 5, "max_secs": 20.0, "threads": [1, 2], "precisions": ["fp32"],
                     "batch": 1, "shapes": {"x": [1, 3, 32, 32]}, "compare": ["onnxruntime", "tflite"],
                     "op_profile": True, "train": {"trainable": "last:1", "batch": 32, "steps": 20},
                     "cooldown_s": 0.0, "busy": 0, "input": "random (seed 0)"},
        "inputs": {"x": {"shape": [1, 3, 32, 32], "dtype": "float32"}},
        "target": {"name": "rpi4", "description": "Raspberry Pi 4", "arch": "aarch64", "cpu": "Cortex-A72",
                   "cores": 4, "big_cores": [], "little_cores": [], "features": ["asimd", "crc32", "fp", "neon"],
                   "memory_bytes": 4 * 2**30, "gpu": None, "threads": 4, "source": "profile", "detected": True},
        "environment": {"board_model": "Raspberry Pi 4 Model B Rev 1.4", "governor": "ondemand", "freq_mhz": 1500.0,
                        "freq_max_mhz": 1800.0, "temp_c_before": 45.0, "temp_c_after": 52.5, "temp_c_max": 53.0,
                        "throttled": False, "throttled_flags": {"before": "0x0", "after": "0x0", "during": []},
                        "power_rail": None, "idle_power_w": None, "other_load_cores": 0.05,
                        "versions": {"python": "3.11.2", "numpy": "2.4.6"},
                        "warnings": ["governor is ondemand, not performance: timings vary with frequency"]},
        "notes": ["tflite: converted from ONNX with onnx2tf"],
        "runs": runs,
        "training": [
            {"engine": "edgedl", "trainable": "last:1", "batch": 32, "threads": 1, "status": "ok", "error": None,
             "steps": 20, "step_ms": step, "samples_per_s": 32e3 / step["mean"],
             "training_peak_bytes": 80 * 2**20, "trained_values": 650},
            {"engine": "pytorch", "trainable": "last:1", "batch": 32, "threads": 1, "status": "error",
             "error": "torch is not installed", "steps": 0, "step_ms": None, "samples_per_s": None,
             "training_peak_bytes": None, "trained_values": None}],
    }


# ------------------------------------------------------------------------------------------------ format_report

def test_format_report_sections():
    report = make_report()
    lines = rep.format_report(report)
    text = "\n".join(lines)
    assert all(isinstance(line, str) for line in lines)
    for word in ("edgedl", "onnxruntime", "tflite", "models/tiny_cnn.onnx", "rpi4", "Raspberry Pi 4 Model B",
                 "ondemand", "1500 MHz"):
        assert word in text
    assert "tflite_runtime could not load the converted model" in text
    assert "(traceback follows)" not in text  # the error is cut to its first line
    # the ratio column: onnxruntime's p50 over edgedl's at the same threads
    ratios = rep.p50_ratios(report["runs"])
    assert ratios[0] == 1.0 and ratios[2] == 1.0 and ratios[4] is None
    want = report["runs"][1]["latency_ms"]["p50"] / report["runs"][0]["latency_ms"]["p50"]
    assert math.isclose(ratios[1], want)
    assert "ratio" in text and f"{want:.2f}x" in text
    assert "max|d| 2.1e-06, top-1 100%" in text
    # the op tables and the profile line
    for title in ("Operators in run order", "Top 5 operators by time", "Summary by op type"):
        assert title in text
    assert "GlobalAveragePool" in text
    assert "per-op times sum to 10.0 ms" in text and "profiling overhead 4.0%" in text
    # training, notes, warnings
    assert "Training steps" in text and "torch is not installed" in text
    assert "tflite: converted from ONNX with onnx2tf" in text
    assert any(line.startswith("WARNING: governor is ondemand") for line in lines)


def test_format_report_top_limits_the_top_table():
    text = "\n".join(rep.format_report(make_report(), top=2))
    assert "Top 2 operators by time" in text


def test_ratio_needs_two_engines_at_one_setting():
    report = make_report()
    report["runs"] = [r for r in report["runs"] if r["engine"] == "edgedl"]
    assert rep.p50_ratios(report["runs"]) == [None, None]
    assert "ratio" not in "\n".join(rep.format_report(report))


@pytest.mark.parametrize("partial", [
    {},
    {"model": "m.onnx", "runs": []},
    {"model": "m.onnx", "runs": [{"engine": "edgedl", "status": "error", "error": None}]},
    {"model": "m.onnx", "runs": [{"engine": "edgedl", "status": "interrupted", "error": "KeyboardInterrupt",
                                  "latency_ms": {"p50": 1.0}, "ops": [{"node": "a"}], "ops_profile": {}}],
     "target": {"features": None}, "environment": {"warnings": None}, "training": [{"status": "error"}]},
    {"model": None, "runs": [{"latency_ms": {k: float("nan") for k in KEYS}, "agreement": {"top1": None}}],
     "settings": {"threads": None}, "inputs": {"x": {}}},
])
def test_format_report_partial(partial):
    lines = rep.format_report(partial)
    assert lines and all(isinstance(line, str) for line in lines)


def test_format_report_list_and_bad_input():
    lines = rep.format_report([make_report("a.onnx"), make_report("b.onnx")])
    text = "\n".join(lines)
    assert "a.onnx" in text and "b.onnx" in text
    with pytest.raises(InputError):
        rep.format_report("not a report")


def test_number_formatting():
    assert [rep.fmt_ms(x) for x in (0.0931, 1.2149, 24.63, 1234.4, 9.996, 0)] == \
        ["0.0931", "1.21", "24.6", "1234", "10.0", "0"]
    assert rep.fmt_ms(None) == "-" and rep.fmt_ms(float("nan")) == "-"
    assert rep.fmt_bytes(3 * 2**20) == "3.00 MiB" and rep.fmt_bytes(512) == "512 B" and rep.fmt_bytes(None) == "-"


# --------------------------------------------------------------------------------------------------- op_tables

def test_op_tables_sums():
    ops = make_report()["runs"][0]["ops"]
    t = rep.op_tables(ops, top=3)
    assert [r["node"] for r in t["run_order"]] == [o["node"] for o in ops]
    for table in ("run_order", "by_type"):
        rows = t[table]
        assert math.isclose(sum(r["percent"] for r in rows), 100.0)
        cdf = [r["cdf_percent"] for r in rows]
        assert cdf == sorted(cdf) and math.isclose(cdf[-1], 100.0)
    assert [r["node"] for r in t["top"]] == ["conv0", "conv1", "fc"]
    assert math.isclose(t["top"][-1]["cdf_percent"], 100 * 9.25 / 10.0)
    by_type = {r["op_type"]: r for r in t["by_type"]}
    assert by_type["Conv"]["count"] == 2 and math.isclose(by_type["Conv"]["ms"], 7.0)
    assert t["by_type"][0]["op_type"] == "Conv"
    assert math.isclose(by_type["Conv"]["percent"], 70.0)


def test_op_tables_degenerate():
    assert rep.op_tables(None) == {"run_order": [], "top": [], "by_type": []}
    t = rep.op_tables([{"node": "a", "ms": 0.0}, {"node": "b", "ms": None}, "junk"])
    assert [r["percent"] for r in t["run_order"]] == [0.0, 0.0]


# -------------------------------------------------------------------------------------------------------- JSON

def test_json_round_trip(tmp_path):
    report = make_report()
    report["runs"][0]["power_w"] = float("nan")
    report["runs"][1]["energy_mj"] = float("inf")
    report["runs"][2]["latencies_ms"] = np.array([1.0, 2.0], dtype=np.float32)
    report["runs"][2]["runs"] = np.int64(2)
    path = tmp_path / "bench.json"
    assert rep.write_json(report, path) == str(path)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    back = rep.read_json(path)
    assert back["runs"][0]["power_w"] is None and back["runs"][1]["energy_mj"] is None
    assert back["runs"][2]["latencies_ms"] == [1.0, 2.0] and back["runs"][2]["runs"] == 2
    assert back == rep.to_jsonable(report)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary file left


def test_json_list_of_reports(tmp_path):
    reports = [make_report("a.onnx"), make_report("b.onnx")]
    path = tmp_path / "all.json"
    rep.write_json(reports, path)
    back = rep.read_json(path)
    assert isinstance(back, list) and [r["model"] for r in back] == ["a.onnx", "b.onnx"]
    assert back == rep.to_jsonable(reports)


def test_json_bad_files(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        rep.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        rep.read_json(tmp_path / "bad.json")
    (tmp_path / "num.json").write_text("3")
    with pytest.raises(InputError, match="not a benchmark report"):
        rep.read_json(tmp_path / "num.json")
    with pytest.raises(InputError):
        rep.write_json(make_report(), tmp_path / "no" / "such" / "folder.json")
    with pytest.raises(InputError):
        rep.write_json("text", tmp_path / "x.json")


# --------------------------------------------------------------------------------------------------------- CSV

def test_csv_round_trip(tmp_path):
    report = make_report()
    report["runs"][3]["temp_c_after"] = float("nan")
    report["runs"][3]["throttled"] = True
    path = tmp_path / "bench.csv"
    paths = rep.write_csv(report, path)
    assert paths == [str(path), str(tmp_path / "bench_ops.csv")]
    rows = rep.csv_rows(report)
    assert len(rows) == len(report["runs"]) and all(tuple(r) == rep.CSV_COLUMNS for r in rows)
    back = rep.read_csv(path)
    assert back == rows
    assert back[3]["temp_c_after"] is None and back[3]["throttled"] is True and back[0]["throttled"] is False
    assert back[0]["threads"] == 1 and back[0]["lat_p50_ms"] == report["runs"][0]["latency_ms"]["p50"]
    assert back[1]["agreement_reference"] == "edgedl fp32" and back[1]["agreement_top1"] == 1.0
    assert back[4]["status"] == "error" and "tflite_runtime" in back[4]["error"] and back[4]["lat_p50_ms"] is None
    ops = rep.read_csv(paths[1])
    assert ops == rep.csv_op_rows(report)
    assert [r["node"] for r in ops] == [o[0] for o in OPS]
    assert tuple(ops[0]) == rep.OPS_CSV_COLUMNS and ops[0]["engine"] == "edgedl" and ops[0]["ms"] == 4.0
    assert math.isclose(sum(r["percent"] for r in ops), 100.0)


def test_csv_several_reports_without_ops(tmp_path):
    reports = [make_report("a.onnx"), make_report("1")]  # a model named like a number stays text
    for r in reports:
        for run in r["runs"]:
            run["ops"] = None
    path = tmp_path / "sweep.csv"
    assert rep.write_csv(reports, path) == [str(path)]
    back = rep.read_csv(path)
    assert back == rep.csv_rows(reports)
    assert {r["model"] for r in back} == {"a.onnx", "1"}
    assert not (tmp_path / "sweep_ops.csv").exists()


def test_csv_partial_and_bad(tmp_path):
    path = tmp_path / "p.csv"
    rep.write_csv({"model": "m.onnx", "runs": [{"engine": "edgedl", "status": "error", "error": ""}]}, path)
    back = rep.read_csv(path)
    assert back == rep.csv_rows({"model": "m.onnx", "runs": [{"engine": "edgedl", "status": "error", "error": ""}]})
    assert back[0]["error"] is None and back[0]["lat_p50_ms"] is None
    assert rep.csv_rows({}) == []
    with pytest.raises(InputError, match="cannot read"):
        rep.read_csv(tmp_path / "missing.csv")


# -------------------------------------------------------------------------------------------------------- plot

def _assert_png(path):
    data = open(path, "rb").read()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE


def test_plot_sweep_report(tmp_path):
    pytest.importorskip("matplotlib")
    from edgedl.benchmark.plot import plot_report

    path = tmp_path / "bench.png"
    assert plot_report(make_report(), path) == str(path)
    _assert_png(path)


def test_plot_single_run_and_lists(tmp_path):
    pytest.importorskip("matplotlib")
    from edgedl.benchmark.plot import plot_report

    single = make_report()
    single["runs"] = single["runs"][1:2]
    _assert_png(plot_report(single, tmp_path / "one.png"))
    _assert_png(plot_report([make_report("a.onnx"), make_report("b.onnx")], tmp_path / "two.png"))
    failed = make_report()
    failed["runs"] = failed["runs"][4:]  # only the failed run: no latencies at all
    _assert_png(plot_report(failed, tmp_path / "none.png"))


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    from edgedl.benchmark.plot import plot_report

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(EdgeDLError, match=r'--plot needs matplotlib: pip install "edgedl\[plot\]"'):
        plot_report(make_report(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
