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
    rows = [(case, t["edgedl"], t["onnxruntime"]) for case, t in sorted(by_case.items())
            if "edgedl" in t and "onnxruntime" in t]
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "edgedl vs onnxruntime: latency in ms (median / min), ratio edgedl / onnxruntime")
    tr.write_line(f"{'case':<30} {'edgedl':>17} {'onnxruntime':>17} {'ratio med':>10} {'ratio min':>10}")
    for case, e, o in rows:
        tr.write_line(f"{case:<30} {e[0] * 1e3:>8.3f} /{e[1] * 1e3:>7.3f} {o[0] * 1e3:>8.3f} /{o[1] * 1e3:>7.3f} "
                      f"{e[0] / o[0]:>10.2f} {e[1] / o[1]:>10.2f}")
    for k, label in ((0, "median"), (1, "min")):
        gm = math.exp(sum(math.log(e[k] / o[k]) for _, e, o in rows) / len(rows))
        tr.write_line(f"geometric mean ratio ({label}): {gm:.2f}")
