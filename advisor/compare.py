"""Compare two profiles of the same script (before / after a change): what the change bought.

Pure functions: `side_from_trace` / `side_from_report` reduce one profile to a `Side` (per-step table,
per-op table, findings as dicts), `compare(before, after)` computes a `Comparison` of plain data. Loading
folders and printing live in `npu_advise.commands.compare`.

Numbers come from the trace: step time is the duration of each `ProfilerStep#N` range (the whole traced
span as one step when the trace has none); device busy time is the union of device activity inside each
step; host ops per step counts top-level host operators. When both profiles carry the analyzers'
tables (`host_bound.steps`, `op_ranking.host`), those are used so the comparison matches the reports.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from .model import merge_intervals

# How many operators with the largest change in time per step the comparison lists (plus half as
# many with the largest change in count per step).
TOP_CHANGED_OPS = 10

GONE, PRESENT, MOVED, NEW = "gone", "still present", "still present (moved)", "new"


@dataclass
class Side:
    label: str
    steps: pd.DataFrame        # step, duration_us, host_ops, [device_kernels, busy_us, free_us]
    ops: pd.DataFrame          # name, count, total_us: every host op in the recorded steps (from the trace)
    findings: list             # finding dicts (findings.json form: id, rule, title, locations, ...)
    has_device: bool = False
    source: str = "trace"      # where device busy/free came from: "trace" or "tables"
    ranked_ops: Optional[pd.DataFrame] = None   # op_ranking.host (name, count, total_us) when the analyzers ran

    @property
    def n_steps(self) -> int:
        return max(len(self.steps), 1)


@dataclass
class Comparison:
    before: str
    after: str
    summary: list = field(default_factory=list)     # rows: metric, unit, before, after, delta, pct
    steps: list = field(default_factory=list)       # rows: index, before_step, before_us, after_step, after_us, delta_us
    ops: list = field(default_factory=list)         # rows: name, count/time per step before/after/delta
    findings: list = field(default_factory=list)    # rows: id, rule, title, status, after_id, where
    new_findings: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"before": self.before, "after": self.after, "summary": self.summary, "steps": self.steps,
                "ops": self.ops, "findings": self.findings, "new_findings": self.new_findings, "notes": self.notes}

    def metric(self, name: str) -> Optional[dict]:
        return next((r for r in self.summary if r["metric"] == name), None)


# --- one profile -> Side ----------------------------------------------------------------------------

def _windows(trace) -> pd.DataFrame:
    """Step windows [step, ts, dur] in ns; the traced span as one window when there are no steps."""
    if len(trace.steps):
        return trace.steps[["step", "ts", "dur"]].sort_values("ts").reset_index(drop=True)
    frames = [df for df in (trace.ops, trace.kernels) if len(df)]
    if not frames:
        return pd.DataFrame({"step": [0], "ts": [0], "dur": [0]})
    start = min(int(df["ts"].min()) for df in frames)
    end = max(int((df["ts"] + df["dur"]).max()) for df in frames)
    return pd.DataFrame({"step": [0], "ts": [start], "dur": [end - start]})


def steps_from_trace(trace) -> pd.DataFrame:
    win = _windows(trace)
    has_steps = len(trace.steps) > 0
    ops = trace.ops
    top = ops[ops["depth"] == 0]
    rows = []
    if trace.has_device_timeline:
        b_s, b_e, _ = merge_intervals(trace.kernels["ts"].to_numpy(), (trace.kernels["ts"] + trace.kernels["dur"]).to_numpy())
    for step, ts, dur in win[["step", "ts", "dur"]].itertuples(index=False):
        in_step = top["step"] == step if has_steps else np.ones(len(top), dtype=bool)
        row = {"step": int(step), "duration_us": dur / 1000.0, "host_ops": int(np.count_nonzero(in_step))}
        if trace.has_device_timeline:
            k_in = trace.kernels["step"] == step if has_steps else np.ones(len(trace.kernels), dtype=bool)
            busy = np.clip(np.minimum(b_e, ts + dur) - np.maximum(b_s, ts), 0, None).sum()
            row.update(device_kernels=int(np.count_nonzero(k_in)), busy_us=busy / 1000.0,
                       free_us=(dur - busy) / 1000.0)
        rows.append(row)
    return pd.DataFrame(rows)


def ops_from_trace(trace) -> pd.DataFrame:
    """Host operators (all nesting depths) inside the recorded steps: name, count, total_us."""
    ops = trace.ops
    if len(trace.steps):
        ops = ops[ops["step"] >= 0]
    if not len(ops):
        return pd.DataFrame({"name": pd.Series(dtype=object), "count": pd.Series(dtype="int64"),
                             "total_us": pd.Series(dtype=float)})
    g = ops.assign(name=ops["name"].astype(str)).groupby("name", observed=True)["dur"].agg(["size", "sum"])
    return pd.DataFrame({"name": g.index.astype(str), "count": g["size"].to_numpy().astype("int64"),
                         "total_us": g["sum"].to_numpy() / 1000.0})


def side_from_trace(trace, findings: list, label: str, tables: Optional[dict] = None) -> Side:
    """A Side from a loaded Trace, using the analyzers' tables when they are given and well-formed."""
    tables = tables or {}
    steps = steps_from_trace(trace)
    source = "trace"
    hb = tables.get("host_bound.steps")
    if isinstance(hb, pd.DataFrame) and {"step", "busy_us", "free_us"} <= set(hb.columns) and len(hb):
        steps = steps.drop(columns=[c for c in ("busy_us", "free_us") if c in steps.columns]) \
            .merge(hb[["step", "busy_us", "free_us"]], on="step", how="left")
        source = "tables"
    ranked = tables.get("op_ranking.host")
    if isinstance(ranked, pd.DataFrame) and {"name", "count", "total_us"} <= set(ranked.columns):
        ranked = ranked[["name", "count", "total_us"]].assign(name=lambda d: d["name"].astype(str))
    else:
        ranked = None
    return Side(label=label, steps=steps, ops=ops_from_trace(trace), findings=list(findings),
                has_device=bool(trace.has_device_timeline), source=source, ranked_ops=ranked)


def side_from_report(report, label: str, findings: Optional[list] = None) -> Side:
    """A Side from a pipeline Report; `findings` (dicts from findings.json) override the report's."""
    fds = findings if findings is not None else [f.to_dict() for f in report.findings]
    return side_from_trace(report.trace, fds, label, report.tables)


# --- two Sides -> Comparison ------------------------------------------------------------------------

def _row(metric: str, unit: str, b: float, a: float) -> dict:
    b, a = float(b), float(a)
    return {"metric": metric, "unit": unit, "before": round(b, 3), "after": round(a, 3),
            "delta": round(a - b, 3), "pct": round(100.0 * (a - b) / b, 2) if b else None}


def _summary(before: Side, after: Side) -> list:
    rows = [_row("steps recorded", "", len(before.steps), len(after.steps)),
            _row("step time (mean)", "us", before.steps["duration_us"].mean(), after.steps["duration_us"].mean()),
            _row("step time (median)", "us", before.steps["duration_us"].median(),
                 after.steps["duration_us"].median()),
            # the least-disturbed step: on a shared machine, other load only ever adds time
            _row("step time (min)", "us", before.steps["duration_us"].min(), after.steps["duration_us"].min())]
    if before.has_device and after.has_device:
        for col, name in (("busy_us", "device busy per step"), ("free_us", "device free per step")):
            if col in before.steps and col in after.steps:
                rows.append(_row(name, "us", before.steps[col].mean(), after.steps[col].mean()))
        rows.append(_row("device kernels per step", "", before.steps["device_kernels"].mean(),
                         after.steps["device_kernels"].mean()))
    rows.append(_row("top-level host ops per step", "", before.steps["host_ops"].mean(),
                     after.steps["host_ops"].mean()))
    rows.append(_row("host ops per step (all levels)", "", before.ops["count"].sum() / before.n_steps,
                     after.ops["count"].sum() / after.n_steps))
    return rows


def _steps(before: Side, after: Side) -> list:
    """Steps side by side by recording order (step numbers may differ between runs)."""
    rows = []
    for k in range(max(len(before.steps), len(after.steps))):
        b = before.steps.iloc[k] if k < len(before.steps) else None
        a = after.steps.iloc[k] if k < len(after.steps) else None
        rows.append({
            "index": k + 1,
            "before_step": int(b["step"]) if b is not None else None,
            "before_us": round(float(b["duration_us"]), 3) if b is not None else None,
            "after_step": int(a["step"]) if a is not None else None,
            "after_us": round(float(a["duration_us"]), 3) if a is not None else None,
            "delta_us": round(float(a["duration_us"] - b["duration_us"]), 3) if a is not None and b is not None else None,
        })
    return rows


def _ops(before: Side, after: Side, top: int) -> list:
    """Operators whose time per step changed most. With the analyzers' ranking on both sides (self time,
    not counted twice for nested ops) that ranking is used, else every host op with its inclusive time."""
    both_ranked = before.ranked_ops is not None and after.ranked_ops is not None
    b_ops, a_ops = (before.ranked_ops, after.ranked_ops) if both_ranked else (before.ops, after.ops)
    b = b_ops.assign(count=b_ops["count"] / before.n_steps, us=b_ops["total_us"] / before.n_steps)
    a = a_ops.assign(count=a_ops["count"] / after.n_steps, us=a_ops["total_us"] / after.n_steps)
    m = b[["name", "count", "us"]].merge(a[["name", "count", "us"]], on="name", how="outer",
                                         suffixes=("_before", "_after")).fillna(0.0)
    m["count_delta"] = m["count_after"] - m["count_before"]
    m["us_delta"] = m["us_after"] - m["us_before"]
    m = m[(m["count_delta"] != 0) | (m["us_delta"].abs() > 0)]
    by_time = m.assign(key=m["us_delta"].abs()).sort_values(["key", "name"], ascending=[False, True])
    by_count = m.assign(key=m["count_delta"].abs()).sort_values(["key", "name"], ascending=[False, True])
    # the largest time changes, plus the largest count changes (many cheap ops gone is what a
    # vectorizing fix buys on an NPU even where the CPU timing barely moves)
    names = list(dict.fromkeys(list(by_time["name"].head(top)) +
                               list(by_count[by_count["count_delta"] != 0]["name"].head(max(top // 2, 1)))))
    m = by_time.set_index("name").loc[names].reset_index()
    return [{"name": r.name, "count_per_step_before": round(r.count_before, 2),
             "count_per_step_after": round(r.count_after, 2), "count_delta": round(r.count_delta, 2),
             "us_per_step_before": round(r.us_before, 3), "us_per_step_after": round(r.us_after, 3),
             "us_delta": round(r.us_delta, 3)}
            for r in m.itertuples(index=False)]


def _anchor(fd: dict) -> tuple:
    """Where a finding points, robust to line shifts: rule + file + function of its first location."""
    locs = fd.get("locations") or []
    if locs:
        return fd.get("rule"), locs[0].get("file"), locs[0].get("function")
    return fd.get("rule"), None, None


def _subject(fd: dict) -> str:
    """The title without its numbers (which change between runs): tells apart findings that share a
    rule and a location, e.g. two hot operators called from the same line."""
    return re.sub(r"[-+]?\d[\d,.]*\s*%?", "#", fd.get("title") or "")


def _where(fd: dict) -> str:
    locs = fd.get("locations") or []
    return f"{locs[0].get('file')}:{locs[0].get('line')}" if locs else ""


def match_findings(before: list, after: list):
    """Each BEFORE finding's fate in AFTER, and AFTER's new ones.

    Matched in passes, most specific first, each AFTER finding used once: same id and subject; same
    rule+file+function and subject (the patch moved it); same id; same rule+file+function. Ids alone
    are not unique (findings of one rule at one location share an id)."""
    passes = (
        (lambda fd: (fd.get("id"), _subject(fd)), PRESENT),
        (lambda fd: (_anchor(fd), _subject(fd)), MOVED),
        (lambda fd: fd.get("id"), PRESENT),
        (lambda fd: _anchor(fd), MOVED),
    )
    fate = [None] * len(before)            # (after index, status)
    used = set()
    for key, status in passes:
        index: dict = {}
        for j, fd in enumerate(after):
            if j not in used:
                index.setdefault(key(fd), []).append(j)
        for i, fd in enumerate(before):
            if fate[i] is not None:
                continue
            free = [j for j in index.get(key(fd), []) if j not in used]
            if free:
                moved = status == MOVED and _where(after[free[0]]) != _where(fd)
                fate[i] = (free[0], MOVED if moved else PRESENT)
                used.add(free[0])
    rows = []
    for fd, f in zip(before, fate):
        match = after[f[0]] if f else None
        rows.append({"id": fd.get("id"), "rule": fd.get("rule"), "title": fd.get("title"), "where": _where(fd),
                     "status": f[1] if f else GONE, "after_id": match.get("id") if match else None,
                     "after_where": _where(match) if match else None})
    new = [{"id": fd.get("id"), "rule": fd.get("rule"), "title": fd.get("title"), "where": _where(fd),
            "status": NEW} for j, fd in enumerate(after) if j not in used]
    return rows, new


def compare(before: Side, after: Side, top_ops: int = TOP_CHANGED_OPS) -> Comparison:
    c = Comparison(before.label, after.label)
    c.summary = _summary(before, after)
    c.steps = _steps(before, after)
    c.ops = _ops(before, after, top_ops)
    c.findings, c.new_findings = match_findings(before.findings, after.findings)
    if before.has_device != after.has_device:
        c.notes.append("only one of the two profiles has a device timeline; device busy/free time is not compared")
    elif not before.has_device:
        c.notes.append("no device timeline in either profile (CPU trace): device busy/free time cannot be compared")
    if before.source != after.source:
        c.notes.append("device busy/free time came from the analyzer table for one profile and from the raw "
                       "trace for the other")
    both_ranked = before.ranked_ops is not None and after.ranked_ops is not None
    c.notes.append("operator times are self times from the op ranking" if both_ranked else
                   "operator times are inclusive (a nested op's time also counts in its parent's)")
    return c
