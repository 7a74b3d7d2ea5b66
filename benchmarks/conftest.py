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
            by_case.setdefault(case, {})[engine] = b.stats.stats.median
    rows = [(case, t["edgedl"], t["onnxruntime"]) for case, t in sorted(by_case.items())
            if "edgedl" in t and "onnxruntime" in t]
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "edgedl vs onnxruntime (median latency)")
    tr.write_line(f"{'case':<40} {'edgedl ms':>10} {'ort ms':>10} {'ratio':>7}")
    for case, e, o in rows:
        tr.write_line(f"{case:<40} {e * 1e3:>10.3f} {o * 1e3:>10.3f} {e / o:>7.2f}")
    gm = math.exp(sum(math.log(e / o) for _, e, o in rows) / len(rows))
    tr.write_line(f"{'geometric mean ratio (edgedl / onnxruntime)':<62} {gm:>7.2f}")
