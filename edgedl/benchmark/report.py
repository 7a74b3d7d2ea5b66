"""The benchmark report as text, JSON and CSV.

``format_report`` gives the terminal text (header, runs tables, op profile tables as TFLite's ``benchmark_model``
prints them, training, notes and warnings); ``op_tables`` computes those op tables; ``write_json`` / ``read_json``
and ``write_csv`` / ``read_csv`` save and load reports. A JSON file holds one report (a dict) or several (a list);
a CSV file holds one row per run, and ``<stem>_ops.csv`` beside it the per-op times.

Every reader of a report here uses ``.get``: a partial report (a failed run, no runs, missing optional keys) formats
and saves without error.
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path

from ..errors import InputError
from .stats import KEYS

__all__ = ["format_report", "op_tables", "p50_ratios", "write_json", "read_json", "to_jsonable", "CSV_COLUMNS",
           "OPS_CSV_COLUMNS", "csv_rows", "csv_op_rows", "write_csv", "read_csv", "fmt_ms", "fmt_bytes"]

#: one CSV row per run, these columns in this order
CSV_COLUMNS = (
    "model", "engine", "precision", "threads", "batch", "status", "error",
    "init_ms", "compile_ms", "first_ms", "warmup_ms", "runs",
    "lat_min_ms", "lat_mean_ms", "lat_p50_ms", "lat_p90_ms", "lat_p99_ms", "lat_max_ms", "lat_std_ms",
    "throughput_per_s", "peak_rss_bytes", "arena_bytes", "power_w", "energy_mj",
    "temp_c_before", "temp_c_after", "throttled",
    "agreement_reference", "agreement_max_abs", "agreement_max_rel", "agreement_top1",
)
#: the per-op CSV (``<stem>_ops.csv``): one row per op of each profiled run
OPS_CSV_COLUMNS = ("model", "engine", "precision", "threads", "node", "op_type", "kernel", "ms", "percent")
#: CSV columns that hold text: read back as strings even when they look like numbers
_TEXT_COLUMNS = frozenset({"model", "engine", "precision", "status", "error", "agreement_reference", "node",
                           "op_type", "kernel"})
#: features worth naming in the header (the rest are counted)
_KEY_FEATURES = ("neon", "asimd", "asimddp", "dotprod", "fp16", "asimdhp", "i8mm", "bf16", "sve", "sve2", "sse4_2",
                 "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vnni", "avxvnni", "avx512vbmi")
_ERROR_WIDTH = 90


# ----------------------------------------------------------------------------------------------- number formatting

def _num(x) -> float | None:
    """``x`` as a finite float, or None (None, NaN, inf, booleans and non-numbers)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_ms(x) -> str:
    """A time (or any magnitude) with about three significant digits: 0.0931, 1.21, 24.6, 123, 1234; None -> "-"."""
    v = _num(x)
    if v is None:
        return "-" if x is None or isinstance(x, float) else str(x)
    if v == 0:
        return "0"
    a = abs(v)
    if a < 1e-9:
        return f"{v:.2e}"
    if a < 1000:  # round to three significant digits first, so 9.996 prints 10.0, not 10.00
        a = abs(float(f"{v:.3g}"))
    decimals = min(9, max(0, 2 - math.floor(math.log10(a))))
    return f"{v:.{decimals}f}"


def fmt_bytes(n) -> str:
    """A size with its unit (B, KiB, MiB, GiB); None -> "-"."""
    v = _num(n)
    if v is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(v) >= scale:
            return f"{fmt_ms(v / scale)} {unit}"
    return f"{v:.0f} B"


def _mib(n) -> str:
    v = _num(n)
    return "-" if v is None else f"{v / (1 << 20):.1f}"


def _pct(x, digits: int = 1) -> str:
    v = _num(x)
    return "-" if v is None else f"{v:.{digits}f}"


def _text(x) -> str:
    return "-" if x is None or x == "" else str(x)


def _shorten(text, width: int = _ERROR_WIDTH) -> str:
    """The first line of ``text``, cut to ``width`` characters."""
    s = " ".join(str(text).strip().splitlines()[:1]) if text else ""
    return s if len(s) <= width else s[: width - 3] + "..."


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x) -> list:
    return x if isinstance(x, list) else []


def _label(run: dict) -> str:
    """``edgedl fp32 t2``: a run's engine, precision and thread count."""
    threads = run.get("threads")
    return f"{run.get('engine') or '?'} {run.get('precision') or '?'} t{threads if threads is not None else '?'}"


# ------------------------------------------------------------------------------------------------------- tables

def _table(headers: list[str], rows: list, right: set[int] | None = None, indent: str = "  ") -> list[str]:
    """Aligned text table. A row is a list of cells, or ``(cells, text)``: leading cells then free text (an error)
    in place of the remaining columns. Columns in ``right`` (default: all but the first) are right-aligned."""
    right = set(range(1, len(headers))) if right is None else right
    widths = [len(h) for h in headers]
    for row in rows:
        cells = row[0] if isinstance(row, tuple) else row
        for i, c in enumerate(cells):
            widths[i] = max(widths[i], len(c))

    def line(cells):
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return indent + "  ".join(parts)

    out = [line(headers).rstrip(), indent + "  ".join("-" * w for w in widths)]
    for row in rows:
        if isinstance(row, tuple):
            cells, text = row
            out.append((line(cells) + "  " + text).rstrip())
        else:
            out.append(line(row).rstrip())
    return out


# --------------------------------------------------------------------------------------------------- op tables

def op_tables(ops: list[dict] | None, top: int = 15) -> dict:
    """The three op profile tables of TFLite's ``benchmark_model``, computed from a run's ``ops``.

    Returns ``{"run_order": [...], "top": [...], "by_type": [...]}``. Run-order and top rows are
    ``{"node", "op_type", "kernel", "ms", "percent", "cdf_percent"}`` (top: the ``top`` slowest ops, slowest first,
    the cdf accumulating in that order); by-type rows are ``{"op_type", "count", "ms", "percent", "cdf_percent"}``,
    slowest type first. Percentages are of the sum of all op times, so each table's percent sums to 100 (the
    by-type and full run-order tables) and its cdf rises to 100.
    """
    clean = []
    for op in _list(ops):
        if not isinstance(op, dict):
            continue
        ms = _num(op.get("ms"))
        clean.append({"node": _text(op.get("node")), "op_type": _text(op.get("op_type")),
                      "kernel": _text(op.get("kernel")), "ms": max(ms, 0.0) if ms is not None else 0.0})
    total = sum(r["ms"] for r in clean)

    def with_cdf(rows):
        cdf = 0.0
        for r in rows:
            r["percent"] = 100.0 * r["ms"] / total if total > 0 else 0.0
            cdf += r["percent"]
            r["cdf_percent"] = cdf
        return rows

    run_order = with_cdf([dict(r) for r in clean])
    top_rows = with_cdf([dict(r) for r in sorted(clean, key=lambda r: -r["ms"])[: max(0, int(top))]])
    groups: dict[str, dict] = {}
    for r in clean:
        g = groups.setdefault(r["op_type"], {"op_type": r["op_type"], "count": 0, "ms": 0.0})
        g["count"] += 1
        g["ms"] += r["ms"]
    by_type = with_cdf(sorted(groups.values(), key=lambda g: -g["ms"]))
    return {"run_order": run_order, "top": top_rows, "by_type": by_type}


#: node names longer than this are cut from the left in the text tables (nested subgraph scopes get long);
#: JSON and CSV keep them whole
_NODE_WIDTH = 60


def _node(name) -> str:
    name = _text(name)
    return name if len(name) <= _NODE_WIDTH else "..." + name[-(_NODE_WIDTH - 3):]


def _op_rows(rows: list[dict]) -> list[list[str]]:
    return [[_node(r["node"]), r["op_type"], r["kernel"], fmt_ms(r["ms"]), _pct(r["percent"], 2),
             _pct(r["cdf_percent"], 2)] for r in rows]


def _format_ops(run: dict, top: int) -> list[str]:
    tables = op_tables(run.get("ops"), top)
    if not tables["run_order"]:
        return []
    head = ["node", "op type", "kernel", "avg ms", "%", "cdf %"]
    right = {3, 4, 5}
    out = ["", f"Op profile: {_label(run)}" + (f" (batch {run['batch']})" if run.get("batch") is not None else "")]
    prof = _dict(run.get("ops_profile"))
    if prof:
        lat_mean = _dict(run.get("latency_ms")).get("mean")  # the timed (unprofiled) runs' mean
        runs = f" over {prof['runs']} profiled runs" if prof.get("runs") is not None else ""
        out.append(f"  per-op times sum to {fmt_ms(prof.get('sum_ms'))} ms = {_pct(prof.get('coverage_percent'))}% "
                   f"of the mean latency (unprofiled {fmt_ms(lat_mean)} ms); profiling overhead "
                   f"{_pct(prof.get('overhead_percent'))}%{runs}")
    out += ["", "  Operators in run order"] + _table(head, _op_rows(tables["run_order"]), right, "    ")
    out += ["", f"  Top {len(tables['top'])} operators by time"] + _table(head, _op_rows(tables["top"]), right, "    ")
    by_type = [[r["op_type"], str(r["count"]), fmt_ms(r["ms"]), _pct(r["percent"], 2), _pct(r["cdf_percent"], 2)]
               for r in tables["by_type"]]
    out += ["", "  Summary by op type"] + _table(["op type", "count", "avg ms", "%", "cdf %"], by_type, None, "    ")
    return out


# ------------------------------------------------------------------------------------------------ text report

def p50_ratios(runs: list[dict]) -> list[float | None]:
    """For each run, its p50 latency divided by edgedl's p50 at the same precision, threads and batch.

    None where no other engine ran at that setting, where edgedl did not run (or failed) there, or where the run has
    no p50. The edgedl run itself gets 1.0 when another engine shares its setting.
    """
    runs = [r for r in _list(runs)]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        if isinstance(r, dict):
            groups.setdefault((r.get("precision"), r.get("threads"), r.get("batch")), []).append(i)
    out: list[float | None] = [None] * len(runs)
    for members in groups.values():
        if len({runs[i].get("engine") for i in members}) < 2:
            continue
        base = [_num(_dict(runs[i].get("latency_ms")).get("p50")) for i in members
                if runs[i].get("engine") == "edgedl" and runs[i].get("status", "ok") == "ok"]
        base = [b for b in base if b]
        if not base:
            continue
        for i in members:
            p50 = _num(_dict(runs[i].get("latency_ms")).get("p50"))
            out[i] = p50 / base[0] if p50 is not None else None
    return out


def _agreement(agr) -> str:
    agr = _dict(agr)
    if not agr:
        return "-"
    parts = []
    if _num(agr.get("max_abs")) is not None:
        parts.append(f"max|d| {_num(agr['max_abs']):.1e}")
    top1 = _num(agr.get("top1"))
    if top1 is not None:
        parts.append(f"top-1 {100 * top1:.0f}%" if top1 <= 1 else f"top-1 {top1:.0f}%")
    return ", ".join(parts) or "-"


def _header(report: dict) -> list[str]:
    out = [f"edgedl bench: {_text(report.get('model'))}  (edgedl {_text(report.get('edgedl_version'))}"
           + (f", {report['created']}" if report.get("created") else "") + ")"]
    t = _dict(report.get("target"))
    if t:
        cores = f"{t['cores']} cores" if t.get("cores") is not None else "? cores"
        big, little = _list(t.get("big_cores")), _list(t.get("little_cores"))
        if big and little:
            cores += f" ({len(big)} big + {len(little)} little)"
        feats = [str(f) for f in _list(t.get("features"))]
        key = [f for f in _KEY_FEATURES if f in feats]
        shown = key or feats[:6]
        more = len(feats) - len(shown)
        fs = " ".join(shown) + (f" (+{more} more)" if more > 0 else "") if feats else "-"
        out.append(f"target:   {_text(t.get('name'))} - {_text(t.get('cpu'))} ({_text(t.get('arch'))}), {cores}; "
                   f"features: {fs}")
    env = _dict(report.get("environment"))
    out.append(f"board:    {_text(env.get('board_model'))}")
    freq = f"{fmt_ms(env.get('freq_mhz'))} MHz" if _num(env.get("freq_mhz")) is not None else "freq -"
    if _num(env.get("freq_max_mhz")) is not None:
        freq += f" (max {fmt_ms(env.get('freq_max_mhz'))} MHz)"
    out.append(f"cpu:      governor {_text(env.get('governor'))}, {freq}")
    thr = env.get("throttled")
    thr_s = "-" if thr is None else ("YES" if thr else "no")
    flags = _dict(env.get("throttled_flags"))
    if flags.get("during"):
        thr_s += f" ({', '.join(str(f) for f in _list(flags.get('during')))})"
    temps = [(_num(env.get(k)), what) for k, what in (("temp_c_before", "before"), ("temp_c_after", "after"),
                                                       ("temp_c_max", "max"))]
    temp_s = ", ".join(f"{v:.1f} C {what}" for v, what in temps if v is not None) or "-"
    out.append(f"temp:     {temp_s}; throttled {thr_s}")
    idle = _num(env.get("idle_power_w"))
    out.append(f"power:    rail {_text(env.get('power_rail'))}" + (f", idle {idle:.2f} W" if idle is not None else ""))
    if _num(env.get("other_load_cores")) is not None:
        out.append(f"load:     other processes used {env['other_load_cores']:.2f} cores during the runs")
    s = _dict(report.get("settings"))
    if s:
        threads = ",".join(str(x) for x in _list(s.get("threads"))) or _text(s.get("threads"))
        precs = ",".join(str(x) for x in _list(s.get("precisions"))) or _text(s.get("precisions"))
        max_s = f" (max {fmt_ms(s['max_secs'])} s)" if _num(s.get("max_secs")) is not None else ""
        out.append(f"settings: {_text(s.get('runs'))} runs{max_s}, {_text(s.get('warmup'))} warmup, batch "
                   f"{_text(s.get('batch'))}, threads {threads}, {precs}, input {_text(s.get('input'))}"
                   + (f", edgedl on {s['device']}" if s.get("device") not in (None, "cpu") else "")
                   + (f", {s['processes']} processes per setting (p50: their median)"
                      if (_num(s.get("processes")) or 1) > 1 else ""))
    inputs = _dict(report.get("inputs"))
    if inputs:
        parts = []
        for name, spec in inputs.items():
            spec = _dict(spec)
            shape = "x".join(str(d) for d in _list(spec.get("shape")))
            parts.append(f"{name} {_text(spec.get('dtype'))}[{shape}]")
        out.append("inputs:   " + ", ".join(parts))
    vers = _dict(env.get("versions"))
    if vers:
        out.append("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v is not None and k != "platform"))
    return out


def _runs_tables(runs: list[dict]) -> list[str]:
    ratios = p50_ratios(runs)
    show_ratio = any(r is not None for r in ratios)
    head = ["engine", "prec", "thr", "status", "init", "compile", "first", "p50", "p90", "p99", "mean", "std",
            "min", "max"] + (["ratio"] if show_ratio else [])
    rows, rows2 = [], []
    for run, ratio in zip(runs, ratios):
        key = [_text(run.get("engine")), _text(run.get("precision")), _text(run.get("threads")),
               _text(run.get("status"))]
        lat = _dict(run.get("latency_ms"))
        if not lat and run.get("status") not in (None, "ok"):
            err = _shorten(run.get("error") or f"no timings ({run.get('status')})")
            rows.append((key, err))
            rows2.append((key[:3], "-"))
            continue
        rows.append(key + [fmt_ms(run.get(k)) for k in ("init_ms", "compile_ms", "first_ms")]
                    + [fmt_ms(lat.get(k)) for k in ("p50", "p90", "p99", "mean", "std", "min", "max")]
                    + ([f"{ratio:.2f}x" if ratio is not None else "-"] if show_ratio else []))
        rows2.append(key[:3] + [fmt_ms(run.get("throughput_per_s")), _mib(run.get("peak_rss_bytes")),
                                fmt_bytes(run.get("arena_bytes")), fmt_ms(run.get("power_w")),
                                fmt_ms(run.get("energy_mj")), _agreement(run.get("agreement"))])
    out = ["", "Latency (ms)"] + _table(head, rows, {2} | set(range(4, len(head))))
    if show_ratio:
        out.append("  ratio = p50 / edgedl's p50 at the same precision and threads (below 1: faster than edgedl)")
    head2 = ["engine", "prec", "thr", "per s", "peak RSS MiB", "arena", "power W", "energy mJ", "agreement"]
    out += ["", "Throughput, memory, energy, agreement"] + _table(head2, rows2, {2, 3, 4, 5, 6, 7})
    return out


def _training(rows: list[dict]) -> list[str]:
    head = ["engine", "trainable", "batch", "thr", "status", "step p50", "p90", "mean ms", "samples/s", "peak mem"]
    table = []
    for t in rows:
        if not isinstance(t, dict):
            continue
        key = [_text(t.get("engine")), _text(t.get("trainable")), _text(t.get("batch")), _text(t.get("threads")),
               _text(t.get("status"))]
        step = _dict(t.get("step_ms"))
        if not step and t.get("status") not in (None, "ok"):
            table.append((key, _shorten(t.get("error") or f"no timings ({t.get('status')})")))
            continue
        table.append(key + [fmt_ms(step.get("p50")), fmt_ms(step.get("p90")), fmt_ms(step.get("mean")),
                            fmt_ms(t.get("samples_per_s")), fmt_bytes(t.get("training_peak_bytes"))])
    return ["", "Training steps"] + _table(head, table, {2, 3, 5, 6, 7, 8, 9}) if table else []


def format_report(report: dict | list, *, top: int = 15) -> list[str]:
    """The report as terminal text, one string per line.

    Sections: header (model, version, target, board state, settings), latency table (one row per run; failed runs
    show their error; a ``ratio`` column of p50 / edgedl's p50 when several engines ran at one setting), a
    throughput / memory / energy / agreement table, op profile tables of runs that have ``ops``, training steps,
    notes, then warnings (each line starting ``WARNING:``). Missing values print as ``-``. A list of reports gives
    their texts one after another.
    """
    if isinstance(report, list):
        out: list[str] = []
        for i, r in enumerate(report):
            out += ([""] if i else []) + format_report(r, top=top)
        return out
    if not isinstance(report, dict):
        raise InputError(f"a benchmark report is a dict, not {type(report).__name__}")
    out = _header(report)
    runs = [r for r in _list(report.get("runs")) if isinstance(r, dict)]
    if runs:
        out += _runs_tables(runs)
    else:
        out += ["", "No runs."]
    for run in runs:
        if run.get("ops"):
            out += _format_ops(run, top)
    out += _training(_list(report.get("training")))
    notes = [str(n) for n in _list(report.get("notes"))]
    for run in runs:
        notes += [f"{_label(run)}: {n}" for n in _list(run.get("notes"))]
        if run.get("error") and _dict(run.get("latency_ms")):
            notes.append(f"{_label(run)}: {run.get('status')}: {_shorten(run['error'], 200)}")
    if notes:
        out += ["", "Notes"] + [f"  {n}" for n in notes]
    warnings = [str(w) for w in _list(_dict(report.get("environment")).get("warnings")) + _list(report.get("warnings"))]
    if warnings:
        out += [""] + [f"WARNING: {w}" for w in warnings]
    return out


# -------------------------------------------------------------------------------------------------------- JSON

def to_jsonable(obj):
    """``obj`` with NaN / inf turned into None, numpy scalars and arrays into Python values, tuples into lists."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in (sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return to_jsonable(obj.tolist())
    return str(obj)


def _atomic_write(path, write) -> str:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it onto ``path``."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return str(path)


def write_json(report: dict | list, path) -> str:
    """Write a report (dict) or several (list) as indented JSON, atomically; NaN / inf become null. Returns path."""
    if not isinstance(report, (dict, list)):
        raise InputError(f"a benchmark report is a dict or a list of them, not {type(report).__name__}")
    data = to_jsonable(report)
    return _atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, allow_nan=False) + "\n"))


def read_json(path) -> dict | list:
    """A report (dict) or several (list) from a JSON file written by ``write_json``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read benchmark report {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a benchmark report (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not a benchmark report: invalid JSON ({e.msg}, line {e.lineno})") from None
    if not (isinstance(data, dict) or (isinstance(data, list) and all(isinstance(r, dict) for r in data))):
        raise InputError(f"{path} is not a benchmark report: expected an object or a list of objects")
    return data


# --------------------------------------------------------------------------------------------------------- CSV

def _reports(report_or_list) -> list[dict]:
    if isinstance(report_or_list, dict):
        return [report_or_list]
    if isinstance(report_or_list, list) and all(isinstance(r, dict) for r in report_or_list):
        return report_or_list
    raise InputError(f"a benchmark report is a dict or a list of them, not {type(report_or_list).__name__}")


def _cell(v):
    v = to_jsonable(v)
    return None if v == "" else v


def csv_rows(report_or_list) -> list[dict]:
    """One dict per run (keys ``CSV_COLUMNS``) of a report or a list of reports; NaN and "" become None."""
    rows = []
    for rep in _reports(report_or_list):
        for run in _list(rep.get("runs")):
            if not isinstance(run, dict):
                continue
            lat = _dict(run.get("latency_ms"))
            agr = _dict(run.get("agreement"))
            row = {"model": rep.get("model")}
            for k in ("engine", "precision", "threads", "batch", "status", "error", "init_ms", "compile_ms",
                      "first_ms", "warmup_ms", "runs"):
                row[k] = run.get(k)
            for k in KEYS:
                row[f"lat_{k}_ms"] = lat.get(k)
            for k in ("throughput_per_s", "peak_rss_bytes", "arena_bytes", "power_w", "energy_mj", "temp_c_before",
                      "temp_c_after", "throttled"):
                row[k] = run.get(k)
            row["agreement_reference"] = agr.get("reference")
            row["agreement_max_abs"] = agr.get("max_abs")
            row["agreement_max_rel"] = agr.get("max_rel")
            row["agreement_top1"] = agr.get("top1")
            rows.append({c: _cell(row.get(c)) for c in CSV_COLUMNS})
    return rows


def csv_op_rows(report_or_list) -> list[dict]:
    """One dict per op of every profiled run (keys ``OPS_CSV_COLUMNS``); ``percent`` is of the run's op-time sum."""
    rows = []
    for rep in _reports(report_or_list):
        for run in _list(rep.get("runs")):
            if not isinstance(run, dict) or not run.get("ops"):
                continue
            for op in op_tables(run["ops"], top=0)["run_order"]:
                row = {"model": rep.get("model"), "engine": run.get("engine"), "precision": run.get("precision"),
                       "threads": run.get("threads"), "node": op["node"], "op_type": op["op_type"],
                       "kernel": op["kernel"], "ms": op["ms"], "percent": op["percent"]}
                rows.append({c: _cell(row.get(c)) for c in OPS_CSV_COLUMNS})
    return rows


def _write_rows(path, columns, rows) -> str:
    def write(f):
        w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return _atomic_write(path, write)


def write_csv(reports, path) -> list[str]:
    """Write one CSV row per run of a report or list of reports; when a run has op times, also ``<stem>_ops.csv``
    beside it. Returns the paths written."""
    path = Path(path)
    written = [_write_rows(path, CSV_COLUMNS, csv_rows(reports))]
    ops = csv_op_rows(reports)
    if ops:
        written.append(_write_rows(path.with_name(f"{path.stem}_ops.csv"), OPS_CSV_COLUMNS, ops))
    return written


def _parse(column: str, s: str):
    if s == "":
        return None
    if column in _TEXT_COLUMNS:
        return s
    if s in ("True", "False"):
        return s == "True"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def read_csv(path) -> list[dict]:
    """The rows of a CSV written by ``write_csv`` with numbers, booleans and empty cells (None) parsed back."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return [{k: _parse(k, v or "") for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path} is not a CSV file: {e}") from None
