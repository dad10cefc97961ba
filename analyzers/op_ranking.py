"""Operator time ranking: where the host and the device spend each step.

Host: operators ranked by *self* time (duration minus their direct children's durations; nesting per
thread), so `aten::linear` is not counted again inside `aten::addmm`. Device: kernels (and copies,
memsets, collectives) ranked by device time. Both are averaged over the recorded steps and carry the
user source lines that issue them (top locations by time).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from npu_advise import model
from npu_advise.findings import Evidence, Finding, severity_for_share
from npu_advise.rules import Rule

from . import Analysis, placement
from .common import category_codes, category_mask, location, step_stats, us

# A hotspot finding for each operator / kernel that takes at least this share of the average step.
HOTSPOT_SHARE = 0.05
# At most this many hotspot findings per side (host, device); the tables hold the full ranking.
MAX_HOTSPOT_FINDINGS = 5
TABLE_ROWS = 50
TOP_LOCATIONS = 3
# Annotation-like ranges that wrap other ops; they are containers, not operators.
WRAPPER_NAME = re.compile(r"^(ProfilerStep#|Optimizer\.(step|zero_grad)#|## .* ##$|\[param\||npa\.src:)")
DEVICE_KINDS = ("kernel", "memcpy", "memset", "communication")
TABLE_COLUMNS = ["name", "count", "total_us", "mean_us", "per_step_us", "share_of_step", "locations"]

RULE_HOST = Rule(
    "NPA101", "host-op-hotspot", "op_hotspot",
    detects="A host operator whose self time (its duration minus that of the operators it calls) is a large "
            "share of the average step, with the source lines that call it.",
    why="Host self time is time the Python/ATen side spends before the device gets work. On an NPU the host "
        "also has to dispatch every operator, so host-heavy operators delay every launch behind them.",
    fix="Look at the cited source lines: replace the operator by a fused or vectorized equivalent, move it out "
        "of the training step, or run it less often. The other findings (loops, fallbacks, syncs) often name "
        "the concrete cause.",
    thresholds={"HOTSPOT_SHARE": HOTSPOT_SHARE, "MAX_HOTSPOT_FINDINGS": MAX_HOTSPOT_FINDINGS},
)
RULE_DEVICE = Rule(
    "NPA102", "device-kernel-hotspot", "op_hotspot",
    detects="A device kernel (or copy / collective) whose total device time is a large share of the average "
            "step, with the source lines whose operators launch it.",
    why="The step cannot be shorter than the device time of its kernels; the largest kernels are where a "
        "fused NPU operator (mx_driving, torch_npu) or a better data layout pays off most.",
    fix="Check whether the cited operator has a fused NPU replacement (see the fused_op findings), whether its "
        "inputs are in the NPU's preferred format and dtype, and whether it runs more often than needed.",
    thresholds={"HOTSPOT_SHARE": HOTSPOT_SHARE, "MAX_HOTSPOT_FINDINGS": MAX_HOTSPOT_FINDINGS},
)


def host_self_time(ops: pd.DataFrame) -> np.ndarray:
    """Self time (ns) of each host op: its duration minus the durations of its direct children."""
    if len(ops) == 0:
        return np.zeros(0, dtype=np.int64)
    _, parent = model.op_tree(ops)
    dur = ops["dur"].to_numpy()
    has = parent >= 0
    # float64 sums of integer ns are exact below 2**53 ns (104 days of children under one op)
    child_sum = np.bincount(parent[has], weights=dur[has], minlength=len(ops)).astype(np.int64)
    return np.maximum(dur - child_sum, 0)


def _locations_text(trace, codes: np.ndarray, cats: np.ndarray, locs: np.ndarray, times: np.ndarray,
                    project_root) -> dict:
    """name -> [(Location, time_ns), ...] top locations by time."""
    located = locs >= 0
    if not located.any():
        return {}
    # Grouped on the integer name codes; names are looked up per group, not per row.
    df = pd.DataFrame({"code": codes[located], "loc": locs[located], "t": times[located]})
    g = df.groupby(["code", "loc"])["t"].sum().reset_index()
    g = pd.DataFrame({"name": cats[g["code"].to_numpy()], "loc": g["loc"].to_numpy(), "t": g["t"].to_numpy()})
    g = g.sort_values(["name", "t"], ascending=[True, False])
    out = {}
    for name, loc, t in g.itertuples(index=False):
        lst = out.setdefault(name, [])
        if len(lst) < TOP_LOCATIONS:
            where = location(trace, int(loc), project_root)
            if where is not None:
                lst.append((where, int(t)))
    return out


def _rank(trace, codes, cats, times, locs, stats, project_root) -> tuple:
    """(table, {name: top locations}) ranked by total time. `codes` index `cats` (the name of each row)."""
    counts = np.bincount(codes, minlength=len(cats))
    # float64 sums of integer ns are exact below 2**53 ns
    totals = np.bincount(codes, weights=times, minlength=len(cats)).astype(np.int64)
    present = np.flatnonzero(counts)
    # Same order as a groupby on the names (sorted names), then the same sort by total.
    g = pd.DataFrame({"count": counts[present].astype(np.int64), "sum": totals[present]},
                     index=pd.Index(cats[present], dtype=object, name="name")).sort_index()
    g = g.sort_values("sum", ascending=False)
    mean_step = stats.mean_ns
    top = g.head(TABLE_ROWS)
    locmap = _locations_text(trace, codes, cats, locs, times, project_root)
    rows = []
    for name, (count, total) in top.iterrows():
        per_step = total / stats.count
        where = locmap.get(name, [])
        rows.append({
            "name": str(name), "count": int(count), "total_us": us(total), "mean_us": us(total / count),
            "per_step_us": us(per_step), "share_of_step": round(per_step / mean_step, 4) if mean_step > 0 else 0.0,
            "locations": "; ".join(f"{l.file}:{l.line}" for l, _ in where),
        })
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table, locmap


def analyze(trace, ctx) -> Analysis:
    stats = step_stats(trace)
    out = Analysis()
    ops = trace.ops
    self_ns = host_self_time(ops)
    codes, cats = category_codes(ops["name"])
    keep = ~category_mask(ops["name"], WRAPPER_NAME.match)
    if stats.from_ranges:
        keep &= ops["step"].to_numpy() >= 0
    if placement.recorded(trace) and not trace.has_device_timeline:
        # Predicting for the NPU: ops on host-only tensors (data preparation) will not run there, and
        # what torch components (optimizer, grad scaler) do is their rules' (NPA601), not a user line's.
        keep &= (placement.per_op(trace, "on_device", -1) != 0) & ~placement.by_component(trace)
    host_table, host_locs = _rank(trace, codes[keep], cats, self_ns[keep], ops["loc"].to_numpy()[keep], stats,
                                  ctx.project_root)
    out.tables["op_ranking.host"] = host_table
    out.findings += _hotspots(host_table, host_locs, stats, "NPA101", "host",
                              predicted=not trace.has_device_timeline)

    if trace.has_device_timeline:
        k = trace.kernels
        keep_k = category_mask(k["kind"], lambda c: c in DEVICE_KINDS)
        if stats.from_ranges:
            keep_k &= k["step"].to_numpy() >= 0
        k_codes, k_cats = category_codes(k["name"])
        dev_table, dev_locs = _rank(trace, k_codes[keep_k], k_cats, k["dur"].to_numpy()[keep_k],
                                    k["loc"].to_numpy()[keep_k], stats, ctx.project_root)
        out.tables["op_ranking.device"] = dev_table
        out.findings += _hotspots(dev_table, dev_locs, stats, "NPA102", "device")
    return out


def _hotspots(table: pd.DataFrame, locmap: dict, stats, rule: str, side: str, predicted: bool = False) -> list:
    """Hotspot findings; on a CPU trace (`predicted`) at most "low": CPU time of an op is context for
    the NPU, not a problem to fix there."""
    findings = []
    steps_how = (f"averaged over {stats.count} ProfilerStep(s)" if stats.from_ranges
                 else "the whole trace counted as one step (no ProfilerStep ranges)")
    measure = "self time (duration minus direct children)" if side == "host" else "device time"
    for row in table.itertuples(index=False):
        if row.share_of_step < HOTSPOT_SHARE or len(findings) >= MAX_HOTSPOT_FINDINGS:
            break
        where = locmap.get(row.name, [])
        short = row.name if len(row.name) <= 80 else row.name[:77] + "..."
        findings.append(Finding(
            rule=rule, category="op_hotspot",
            title=f"{'Host op' if side == 'host' else 'Device kernel'} {short} takes "
                  f"{100 * row.share_of_step:.1f}% of the step",
            severity="low" if predicted else severity_for_share(row.share_of_step),
            evidence=[
                Evidence("calls per step", round(row.count / stats.count, 2), "calls", f"count {steps_how}"),
                Evidence(f"{measure} per step", row.per_step_us, "us", f"sum of {measure} {steps_how}"),
                Evidence("mean per call", row.mean_us, "us", f"{measure} / calls"),
                Evidence("share of step", round(100 * row.share_of_step, 2), "%",
                         f"per-step {measure} / mean step duration ({us(stats.mean_ns)} us)"),
            ],
            locations=[l for l, _ in where],
            estimated_saving_us=None,
            context=True,       # a ranking of where time goes, not a problem by itself
            subject=row.name,
            details={"name": row.name, "side": side,
                     "location_time_us": [{"file": l.file, "line": l.line, "time_us": us(t)} for l, t in where],
                     "saving_how": "a ranking shows where time goes, not how much a change would save"},
        ))
    return findings
