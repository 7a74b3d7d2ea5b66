"""A PNG of a benchmark report (``edgedl bench --plot``), drawn with matplotlib's Agg backend.

Panels: the latency distribution of each run (box plot with p50 / p90 / p99 marked); when an engine ran at several
thread counts, p50 latency against threads (p90 as the upper error bar); when op times were measured, the ten
slowest ops of the first profiled run. matplotlib is optional (``pip install "edgedl[plot]"``) and imported only here.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import EdgeDLError, InputError
from .report import op_tables

__all__ = ["plot_report"]

_MARKERS = (("p50", "o", "tab:blue"), ("p90", "^", "tab:orange"), ("p99", "s", "tab:red"))
_LOG_RATIO = 20.0
_TOP_OPS = 10


def _as_list(reports) -> list[dict]:
    if isinstance(reports, dict):
        return [reports]
    if isinstance(reports, list) and all(isinstance(r, dict) for r in reports):
        return reports
    raise InputError(f"a benchmark report is a dict or a list of them, not {type(reports).__name__}")


def _finite(values) -> list[float]:
    out = []
    for v in values if isinstance(values, list) else []:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if f == f and f not in (float("inf"), float("-inf")):
            out.append(f)
    return out


def _percentiles(run: dict, lat: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 from the run's summary, else computed from its latencies."""
    import numpy as np

    summary = run.get("latency_ms") if isinstance(run.get("latency_ms"), dict) else {}
    computed = dict(zip(("p50", "p90", "p99"), np.percentile(lat, [50, 90, 99]).tolist()))
    out = {}
    for k in ("p50", "p90", "p99"):
        v = _finite([summary.get(k)])
        out[k] = v[0] if v else computed[k]
    return out


def _runs(reports: list[dict]) -> list[tuple[str, str, dict, list[float]]]:
    """``(series, label, run, latencies)`` for each run with latencies; series is engine + precision (+ model)."""
    several = len({r.get("model") for r in reports}) > 1
    out = []
    for rep in reports:
        model = Path(str(rep.get("model") or "?")).stem
        for run in rep.get("runs") or []:
            if not isinstance(run, dict):
                continue
            lat = _finite(run.get("latencies_ms"))
            if not lat:
                continue
            series = f"{run.get('engine') or '?'} {run.get('precision') or '?'}" + (f" ({model})" if several else "")
            label = f"{run.get('engine') or '?'} {run.get('precision') or '?'}\n{run.get('threads', '?')} thr" + (
                f"\n{model}" if several else "")
            out.append((series, label, run, lat))
    return out


def _title(reports: list[dict]) -> str:
    models = ", ".join(dict.fromkeys(Path(str(r.get("model") or "?")).name for r in reports))
    targets = []
    for r in reports:
        t = r.get("target") if isinstance(r.get("target"), dict) else {}
        env = r.get("environment") if isinstance(r.get("environment"), dict) else {}
        name = t.get("name") or "?"
        board = env.get("board_model")
        targets.append(f"{name} ({board})" if board else str(name))
    return f"{models} on {', '.join(dict.fromkeys(targets))}"


def _latency_panel(ax, runs) -> None:
    if not runs:
        ax.text(0.5, 0.5, "no run produced latencies", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    data = [lat for _, _, _, lat in runs]
    positions = list(range(1, len(runs) + 1))
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=True, medianprops={"color": "black"},
               flierprops={"markersize": 3, "alpha": 0.5})
    for key, marker, color in _MARKERS:
        ys = [_percentiles(run, lat)[key] for _, _, run, lat in runs]
        ax.scatter(positions, ys, marker=marker, color=color, zorder=3, s=30, label=key)
    ax.set_xticks(positions)
    ax.set_xticklabels([label for _, label, _, _ in runs], fontsize=8)
    lo = min(min(d) for d in data)
    hi = max(max(d) for d in data)
    if lo > 0 and hi / lo > _LOG_RATIO:
        ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency per run")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _thread_series(runs) -> dict[str, list[tuple[int, float, float]]]:
    """``series -> [(threads, p50, p90), ...]`` for series run at more than one thread count (else empty)."""
    series: dict[str, dict] = {}
    for name, _, run, lat in runs:
        threads = run.get("threads")
        if not isinstance(threads, (int, float)) or isinstance(threads, bool):
            continue
        p = _percentiles(run, lat)
        series.setdefault(name, {})[threads] = (threads, p["p50"], p["p90"])
    return {k: sorted(v.values()) for k, v in series.items() if len(v) > 1}


def _threads_panel(ax, series) -> None:
    for name, points in series.items():
        xs = [p[0] for p in points]
        p50 = [p[1] for p in points]
        up = [max(0.0, p[2] - p[1]) for p in points]
        ax.errorbar(xs, p50, yerr=[[0.0] * len(points), up], marker="o", capsize=4, label=name)
    all_threads = sorted({p[0] for pts in series.values() for p in pts})
    ax.set_xticks(all_threads)
    ax.set_xlabel("threads")
    ax.set_ylabel("p50 latency (ms); bar up to p90")
    ax.set_title("latency against threads")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _ops_panel(ax, run: dict) -> None:
    top = op_tables(run.get("ops"), top=_TOP_OPS)["top"]
    labels = [f"{r['node']} ({r['op_type']})" for r in top]
    ys = list(range(len(top)))
    ax.barh(ys, [r["ms"] for r in top], color="tab:green")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per run")
    ax.set_title(f"slowest {len(top)} ops: {run.get('engine')} {run.get('precision')} {run.get('threads')} thr")
    ax.grid(axis="x", alpha=0.3)


def plot_report(reports: dict | list, path) -> str:
    """Draw a report (or a list of reports) into a PNG at ``path`` and return the path.

    Runs without latencies (failed ones) are left out. Raises ``EdgeDLError`` when matplotlib is not installed.
    """
    reports = _as_list(reports)
    try:
        import matplotlib
    except ImportError:
        raise EdgeDLError('--plot needs matplotlib: pip install "edgedl[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _runs(reports)
    series = _thread_series(runs)
    profiled = next((run for rep in reports for run in (rep.get("runs") or [])
                     if isinstance(run, dict) and op_tables(run.get("ops"))["run_order"]), None)
    panels = 1 + bool(series) + (profiled is not None)
    fig, axes = plt.subplots(panels, 1, figsize=(max(8.0, 1.3 * len(runs) + 2), 4.5 * panels), squeeze=False)
    try:
        axes = [a[0] for a in axes]
        _latency_panel(axes[0], runs)
        i = 1
        if series:
            _threads_panel(axes[i], series)
            i += 1
        if profiled is not None:
            _ops_panel(axes[i], profiled)
        fig.suptitle(_title(reports))
        fig.tight_layout()
        path = str(path)
        try:
            fig.savefig(path, format="png", dpi=100)
        except OSError as e:
            raise EdgeDLError(f"cannot write plot {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return path
