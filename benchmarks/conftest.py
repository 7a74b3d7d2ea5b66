"""Print edgedl / onnxruntime latency ratios (and their geometric mean) after a benchmark run."""
import math


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    by_case: dict[str, dict[str, float]] = {}
    for b in bs.benchmarks:
        engine = b.extra_info.get("engine")
        case = b.extra_info.get("case")
        if engine and case and b.stats is not None:
            by_case.setdefault(case, {})[engine] = (b.stats.median, b.stats.min)
    tr = terminalreporter
    _int8_summary(tr, by_case)
    rows = [(case, t["edgedl"], t["onnxruntime"]) for case, t in sorted(by_case.items())
            if "edgedl" in t and "onnxruntime" in t]
    if not rows:
        return
    tr.write_sep("=", "edgedl vs onnxruntime: latency in ms (median / min), ratio edgedl / onnxruntime")
    tr.write_line(f"{'case':<30} {'edgedl':>17} {'onnxruntime':>17} {'ratio med':>10} {'ratio min':>10}")
    for case, e, o in rows:
        tr.write_line(f"{case:<30} {e[0] * 1e3:>8.3f} /{e[1] * 1e3:>7.3f} {o[0] * 1e3:>8.3f} /{o[1] * 1e3:>7.3f} "
                      f"{e[0] / o[0]:>10.2f} {e[1] / o[1]:>10.2f}")
    for k, label in ((0, "median"), (1, "min")):
        gm = math.exp(sum(math.log(e[k] / o[k]) for _, e, o in rows) / len(rows))
        tr.write_line(f"geometric mean ratio ({label}): {gm:.2f}")


def _int8_summary(tr, by_case) -> None:
    """The int8 suite (test_bench_int8.py): edgedl int8 against the faster onnxruntime int8 model, and edgedl
    fp32 against edgedl int8 (median latencies)."""
    engines = ("edgedl-int8", "onnxruntime-int8", "onnxruntime-int8-u8s8", "edgedl-fp32")
    rows = [(case, *(t[e][0] for e in engines)) for case, t in sorted(by_case.items()) if all(e in t for e in engines)]
    if not rows:
        return
    tr.write_sep("=", "int8: median latency in ms; ratios edgedl int8 / best onnxruntime int8, edgedl fp32 / int8")
    tr.write_line(f"{'case':<30} {'int8':>8} {'ort int8':>9} {'ort u8s8':>9} {'fp32':>8} {'int8/ort':>9} "
                  f"{'fp32/int8':>10}")
    vs_ort, vs_fp32 = [], []
    for case, i8, o8, ou8, f32 in rows:
        vs_ort.append(i8 / min(o8, ou8))
        vs_fp32.append(f32 / i8)
        tr.write_line(f"{case:<30} {i8 * 1e3:>8.3f} {o8 * 1e3:>9.3f} {ou8 * 1e3:>9.3f} {f32 * 1e3:>8.3f} "
                      f"{vs_ort[-1]:>9.2f} {vs_fp32[-1]:>10.2f}")
    gm = (lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs)))
    tr.write_line(f"geometric means: int8 / best onnxruntime int8 {gm(vs_ort):.2f}; fp32 / int8 {gm(vs_fp32):.2f}")
