"""Host-bound analysis: how much of each step the device sits idle ("free"), and why.

With a device timeline: per step, device busy time is the union of all device activity (kernels,
copies, memsets, collectives; every stream merged), clipped to the host step range; free = step -
busy. Each idle gap is *host wait* when the launching runtime call of the kernel that ends the gap
started after the gap began (the device had drained and waited for the host to launch), HTA's rule;
every other gap is counted as *other*. On torch_npu data with the `Overlap Analysis` Free thread or
`step_trace_time.csv` (`trace.extras["step_trace_time"]`), the profiler's own per-step Free time is
reported next to ours.

On a CPU-only trace there is no device timeline: free time cannot be measured, so the analysis
reports operator-launch density (top-level ops per step, their mean duration) as a predicted risk.

This analyzer runs last: its finding cites the host-side causes (syncs, CPU fallbacks, small-op loops,
unfused optimizers) the other analyzers found in the same trace.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from npu_advise.findings import Evidence, Finding, severity_for_share
from npu_advise.model import merge_intervals
from npu_advise.rules import Rule

from . import Analysis
from . import idle_causes
from .common import category_mask, us

# A finding when the device is idle for at least this share of the average step.
FREE_SHARE_THRESHOLD = 0.10
# CPU-only traces: a host-bound risk when the host issues at least this many top-level ops per step...
LAUNCH_DENSITY_MIN_OPS = 200
# ...with a median top-level op duration at or below this (µs): an NPU launch costs the host roughly
# 10-50 µs per op (dispatch + task queue), so ops this short leave the device waiting for the host.
# The median, not the mean: a few long CPU convolutions would hide thousands of tiny ops in a mean.
SMALL_OP_MEDIAN_US = 500.0
# Device activity that occupies the device (cuda_sync events are waits, not work).
BUSY_KINDS = ("kernel", "memcpy", "memset", "communication")
TIMELINE_MAX_ROWS = 5000
# A cause is named in the title / text when it explains at least this much host wait per step (µs).
NAMED_CAUSE_MIN_US = 500.0
CAUSE_CATEGORIES = ("sync", "cpu_fallback", "small_op_loop", "optimizer")
LEVERS = [
    "TASK_QUEUE_ENABLE=2 (level-2 task-queue pipeline: the host enqueues while the device runs)",
    "CPU_AFFINITY_CONF=1 (bind the training process to cores: less dispatch jitter)",
    "tcmalloc via LD_PRELOAD=/usr/lib/<arch>/libtcmalloc.so (faster host allocations)",
]

RULE_FREE = Rule(
    "NPA201", "device-free-time", "host_bound",
    detects="Steps in which the device is idle (no kernel, copy or collective on any stream) for a large "
            "share of the step, split into host wait (the device waited for the host to launch the next "
            "kernel) and other gaps.",
    why="An NPU executes what the host enqueues; when the Python/host side cannot launch operators as fast "
        "as the device runs them (syncs, CPU fallbacks, Python loops of small operators, unfused optimizers), "
        "the device idles and the step takes the host's time instead of the device's.",
    fix="Remove the host-side causes cited in the finding first (syncs, loops, fallbacks, unfused optimizer), "
        "then use the environment levers: TASK_QUEUE_ENABLE=2, CPU_AFFINITY_CONF=1, tcmalloc via LD_PRELOAD.",
    thresholds={"FREE_SHARE_THRESHOLD": FREE_SHARE_THRESHOLD, "NAMED_CAUSE_MIN_US": NAMED_CAUSE_MIN_US},
)
RULE_DENSITY = Rule(
    "NPA202", "launch-density-risk", "host_bound",
    detects="On a CPU-only trace (no device timeline): many short top-level operators per step, i.e. a high "
            "operator-launch rate that is likely to make the run host-bound on an NPU.",
    why="Every operator costs the host a dispatch and launch on an NPU (tens of microseconds); when the "
        "operators are many and short, the device finishes each one before the host has launched the next.",
    fix="Reduce the number of operators per step: vectorize Python loops, use fused operators and a fused "
        "optimizer; on the NPU set TASK_QUEUE_ENABLE=2 and CPU_AFFINITY_CONF=1. Profile on the NPU to measure "
        "free time.",
    thresholds={"LAUNCH_DENSITY_MIN_OPS": LAUNCH_DENSITY_MIN_OPS, "SMALL_OP_MEDIAN_US": SMALL_OP_MEDIAN_US},
)


# ---------------------------------------------------------------------------------------------------
# Device timeline helpers (also used by the sync and environment analyzers)

def busy_events(trace) -> pd.DataFrame:
    k = trace.kernels
    return k[category_mask(k["kind"], lambda c: c in BUSY_KINDS) & (k["dur"].to_numpy() >= 0)]


def clipped_total(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> int:
    """Total length of (disjoint) intervals inside [lo, hi)."""
    if len(starts) == 0:
        return 0
    return int(np.clip(np.minimum(ends, hi) - np.maximum(starts, lo), 0, None).sum())


def _overlapping(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int):
    """The slice of sorted, disjoint intervals that can overlap [lo, hi) (the rest clip to 0)."""
    i = int(np.searchsorted(ends, lo, side="right"))
    j = int(np.searchsorted(starts, hi, side="left"))
    return starts[i:j], ends[i:j]


def device_gaps(trace, window_lo: int, window_hi: int):
    """Merged busy intervals and the idle gaps between them within [window_lo, window_hi).

    Returns (busy_start, busy_end, gap_start, gap_end, gap_host_wait). A gap is host wait when the
    runtime call that launched the event ending the gap started after the gap began.
    """
    ev = busy_events(trace)
    start = ev["ts"].to_numpy()
    end = start + ev["dur"].to_numpy()
    b_s, b_e, first = merge_intervals(start, end)
    launch = ev["launch"].to_numpy()
    rt_ts = trace.runtime["ts"].to_numpy()
    # The gap before each busy group ends at the group's start; it began at the previous group's end
    # (or at the window start for the first group).
    g_start = np.concatenate(([window_lo], b_e)) if len(b_e) else np.array([window_lo])
    g_end = np.concatenate((b_s, [window_hi])) if len(b_s) else np.array([window_hi])
    next_launch = np.full(len(g_end), -1, dtype=np.int64)
    if len(first):
        li = launch[first]
        has = li >= 0
        next_launch[:-1] = np.where(has, rt_ts[np.where(has, li, 0)] if len(rt_ts) else -1, -1)
    # The first gap of the trace starts at window_lo, which is later than any earlier (unseen) kernel:
    # it is host wait by the same rule if the launch came after the window opened.
    host_wait = (next_launch >= 0) & (next_launch > g_start)
    keep = g_end > g_start
    return b_s, b_e, g_start[keep], g_end[keep], host_wait[keep]


def step_breakdown(trace) -> pd.DataFrame:
    """Per step: [step, duration_us, busy_us, free_us, host_wait_us, other_gap_us] (device timeline),
    else [step, duration_us, host_ops, mean_op_us]. Without step ranges the trace span is one step (-1)."""
    steps = _windows(trace)
    if trace.has_device_timeline:
        lo = int(steps["ts"].min())
        hi = int((steps["ts"] + steps["dur"]).max())
        b_s, b_e, g_s, g_e, hw = device_gaps(trace, lo, hi)
        rows = []
        w_s, w_e = g_s[hw], g_e[hw]
        for step, ts, dur in steps[["step", "ts", "dur"]].itertuples(index=False):  # a handful of steps
            s_lo, s_hi = int(ts), int(ts + dur)
            busy = clipped_total(*_overlapping(b_s, b_e, s_lo, s_hi), s_lo, s_hi)
            wait = clipped_total(*_overlapping(w_s, w_e, s_lo, s_hi), s_lo, s_hi)
            free = int(dur) - busy
            rows.append((int(step), us(dur), us(busy), us(free), us(wait), us(free - wait)))
        return pd.DataFrame(rows, columns=["step", "duration_us", "busy_us", "free_us", "host_wait_us",
                                           "other_gap_us"])
    top = _top_level_ops(trace)
    rows = []
    for step, ts, dur in steps[["step", "ts", "dur"]].itertuples(index=False):
        sel = top[top["step"] == step] if step >= 0 else top
        rows.append((int(step), us(dur), int(len(sel)), us(sel["dur"].mean()) if len(sel) else 0.0))
    return pd.DataFrame(rows, columns=["step", "duration_us", "host_ops", "mean_op_us"])


def host_wait_spans(trace):
    """The host-wait idle gaps inside the step windows, merged (starts, ends) in ns."""
    steps = _windows(trace)
    lo = int(steps["ts"].min())
    hi = int((steps["ts"] + steps["dur"]).max())
    _, _, g_s, g_e, hw = device_gaps(trace, lo, hi)
    parts = [(np.maximum(g_s[hw], s), np.minimum(g_e[hw], s + d))
             for s, d in steps[["ts", "dur"]].itertuples(index=False)]
    s_ = np.concatenate([p[0] for p in parts])
    e_ = np.concatenate([p[1] for p in parts])
    keep = e_ > s_
    return merge_intervals(s_[keep], e_[keep])[:2]


def _windows(trace) -> pd.DataFrame:
    if len(trace.steps):
        return trace.steps[["step", "ts", "dur"]]
    # No step ranges: with a device timeline the window is the span of device activity (time before the
    # first and after the last kernel is set-up/tear-down, not training); else the span of host ops.
    frames = [busy_events(trace)] if trace.has_device_timeline else [df for df in (trace.ops, trace.runtime) if len(df)]
    frames = [df for df in frames if len(df)]
    if not frames:
        return pd.DataFrame({"step": [-1], "ts": [0], "dur": [0]})
    lo = min(int(df["ts"].min()) for df in frames)
    hi = max(int((df["ts"] + df["dur"]).max()) for df in frames)
    return pd.DataFrame({"step": [-1], "ts": [lo], "dur": [hi - lo]})


def _top_level_ops(trace) -> pd.DataFrame:
    ops = trace.ops
    return ops[ops["depth"] == 0]


def free_share(trace, table: pd.DataFrame = None):
    """Mean free time / mean step time, or None without a device timeline (used by environment)."""
    if not trace.has_device_timeline:
        return None
    t = table if table is not None else step_breakdown(trace)
    if not len(t) or t["duration_us"].sum() <= 0:
        return None
    return float(t["free_us"].sum() / t["duration_us"].sum())


def launch_density(trace, table: pd.DataFrame = None):
    """(top-level ops per step, mean, median top-level op µs) on a CPU-only trace, else None."""
    if trace.has_device_timeline:
        return None
    t = table if table is not None else step_breakdown(trace)
    if not len(t):
        return None
    n = float(t["host_ops"].mean())
    top = _top_level_ops(trace)
    if len(trace.steps):
        top = top[top["step"] >= 0]
    mean_us = us(top["dur"].mean()) if len(top) else 0.0
    median_us = us(top["dur"].median()) if len(top) else 0.0
    return n, mean_us, median_us


def timeline_table(trace, max_rows: int = TIMELINE_MAX_ROWS):
    """Merged device-busy intervals relative to the first step start (µs), at most `max_rows` rows:
    beyond that, the smallest gaps are closed (their neighbours merged) until the limit holds."""
    steps = _windows(trace)
    origin = int(steps["ts"].min())
    ev = busy_events(trace)
    start = ev["ts"].to_numpy()
    b_s, b_e, _ = merge_intervals(start, start + ev["dur"].to_numpy())
    if len(b_s) > max_rows:
        gaps = b_s[1:] - b_e[:-1]
        # keep the (max_rows - 1) largest gaps as boundaries
        cut = np.sort(np.argsort(gaps, kind="stable")[len(gaps) - (max_rows - 1):])
        b_s = np.concatenate(([b_s[0]], b_s[cut + 1]))
        b_e = np.concatenate((b_e[cut], [b_e[-1]]))
    return pd.DataFrame({"start_us": (b_s - origin) / 1000.0, "end_us": (b_e - origin) / 1000.0,
                         "stream": "all"})


# ---------------------------------------------------------------------------------------------------

def analyze(trace, ctx) -> Analysis:
    table = step_breakdown(trace)
    out = Analysis(tables={"host_bound.steps": table})
    if trace.has_device_timeline:
        out.tables["host_bound.timeline"] = timeline_table(trace)
        finding = _free_time_finding(trace, ctx, table)
    else:
        trace.limitations.append(
            "Device free time needs a device timeline; this trace has none, so the host-bound analysis reports "
            "operator-launch density (top-level ops per step) as a predicted risk instead.")
        finding = _density_finding(trace, ctx, table)
    if finding is not None:
        out.findings.append(finding)
    return out


def _causes(ctx) -> list:
    causes = []
    for f in ctx.findings:
        if f.category in CAUSE_CATEGORIES:
            causes.append({"rule": f.rule, "category": f.category, "title": f.title, "finding": f.id,
                           "estimated_saving_us": f.estimated_saving_us,
                           "locations": [f"{l.file}:{l.line}" for l in f.locations]})
    return causes


def _cause_text(causes: list) -> str:
    if not causes:
        return "No host-side cause (sync, CPU fallback, small-op loop, unfused optimizer) was found in this trace."
    parts = []
    for c in causes[:8]:
        where = f" at {', '.join(c['locations'][:2])}" if c["locations"] else ""
        parts.append(f"{c['rule']} {c['title']}{where}")
    more = f" and {len(causes) - 8} more" if len(causes) > 8 else ""
    return "Host-side causes found in this trace: " + "; ".join(parts) + more + "."


def _npu_free(trace):
    """Mean per-step Free time (µs) from torch_npu's own step_trace_time / Overlap Analysis, if present."""
    stt = trace.extras.get("step_trace_time")
    if isinstance(stt, pd.DataFrame) and len(stt):
        col = next((c for c in stt.columns if str(c).strip().lower() in ("free", "free_us", "free(us)")), None)
        if col is not None:
            vals = pd.to_numeric(stt[col], errors="coerce").dropna()
            if len(vals):
                how = "step_trace_time.csv Free column, mean over its steps"
                prep = next((c for c in stt.columns if str(c).strip().lower() == "preparing"), None)
                if prep is not None:
                    p = pd.to_numeric(stt[prep], errors="coerce").dropna()
                    if len(p):
                        how += (f"; it leaves out 'Preparing' ({p.mean():,.1f} us: host time before the step's first "
                                f"device task), which the free time above includes")
                return float(vals.mean()), how
    ov = trace.extras.get("overlap")
    col = next((c for c in ("kind", "name") if isinstance(ov, pd.DataFrame) and c in ov.columns), None)
    if col is not None and len(ov) and "dur" in ov.columns:
        free = ov[ov[col].astype(str) == "Free"]
        if len(free):
            n = max(len(trace.steps), 1)
            return float(free["dur"].sum()) / 1000.0 / n, "Overlap Analysis Free thread, summed per step"
    return None


def _free_time_finding(trace, ctx, table: pd.DataFrame):
    n = len(table)
    step_us = float(table["duration_us"].mean())
    free_us = float(table["free_us"].mean())
    wait_us = float(table["host_wait_us"].mean())
    other_us = float(table["other_gap_us"].mean())
    busy_us = float(table["busy_us"].mean())
    if step_us <= 0:
        return None
    share = free_us / step_us
    npu_free = _npu_free(trace)
    if share < FREE_SHARE_THRESHOLD and not (npu_free and npu_free[0] / step_us >= FREE_SHARE_THRESHOLD):
        return None
    causes = _causes(ctx)
    evidence = [
        Evidence("average step", round(step_us, 1), "us",
                 f"mean host ProfilerStep duration over {n} step(s)" if len(trace.steps)
                 else "no ProfilerStep ranges: the span from the first to the last device activity"),
        Evidence("device busy per step", round(busy_us, 1), "us",
                 "union of kernel/memcpy/memset/collective intervals on all streams, clipped to each step"),
        Evidence("device free per step", round(free_us, 1), "us", "step duration minus device busy time"),
        Evidence("free share of step", round(100 * share, 1), "%", "device free / step duration"),
        Evidence("host wait per step", round(wait_us, 1), "us",
                 "idle gaps whose next kernel's launching runtime call started after the gap began"),
        Evidence("other gaps per step", round(other_us, 1), "us", "free time that is not host wait"),
    ]
    if npu_free:
        evidence.append(Evidence("profiler Free per step", round(npu_free[0], 1), "us", npu_free[1]))
    why = idle_causes.explain(trace, host_wait_spans(trace),
                              [f for f in ctx.findings if f.category in CAUSE_CATEGORIES], ctx.project_root)
    for c in causes:
        c["host_wait_explained_us"] = us(why["per_finding"].get(c["finding"], 0) / n)
    by_findings, by_loader = us(why["findings_ns"] / n), us(why["dataloader_ns"] / n)
    evidence += [
        Evidence("host wait explained by the cited causes per step", by_findings, "us",
                 "host-wait gaps overlapped by host ops at the source lines of the sync / fallback / loop / optimizer "
                 "findings of this trace (their union); saved by fixing those findings, not counted here"),
        Evidence("host wait during data loading per step", by_loader, "us",
                 "the rest of the host-wait gaps overlapped by enumerate(DataLoader) ranges"),
        Evidence("host wait not explained by a named cause per step", us(why["unexplained_ns"] / n), "us",
                 "host wait minus the two above: launch overhead of the remaining ops"),
    ]
    named = [f"{c['rule']} at {Path(c['locations'][0]).name}: {c['host_wait_explained_us'] / 1000:,.1f} ms"
             for c in sorted(causes, key=lambda c: -c["host_wait_explained_us"])
             if c["locations"] and c["host_wait_explained_us"] >= NAMED_CAUSE_MIN_US]
    if by_loader >= NAMED_CAUSE_MIN_US:
        named.append(f"data loading: {by_loader / 1000:,.1f} ms")
    text = (f"The device is idle {100 * share:.0f}% of the average step ({free_us:,.0f} of {step_us:,.0f} us); "
            f"{wait_us:,.0f} us of it is host wait (the device waited for the next launch)"
            + (f", of which {'; '.join(named)}. " if named else ". ")
            + _cause_text(causes) + " Levers once the causes are handled: " + "; ".join(LEVERS) + ".")
    saving = wait_us - by_findings
    return Finding(
        rule="NPA201", category="host_bound",
        title=f"Device idle {100 * share:.0f}% of each step ({free_us / 1000:,.1f} ms free, "
              f"{wait_us / 1000:,.1f} ms waiting for the host" + (f"; {', '.join(named[:2])}" if named else "") + ")",
        severity=severity_for_share(wait_us / step_us if wait_us > 0 else share / 2),
        evidence=evidence,
        estimated_saving_us=round(saving, 1) if saving > 0 else None,
        details={"text": text, "causes": causes, "levers": LEVERS,
                 "saving_how": "the host-wait part of the device idle time per step, less the part the cited "
                               "findings explain (their own savings count it): the most that keeping the launch "
                               "queue ahead of the device can recover; other gaps are not counted",
                 "steps": table.to_dict("records")},
    )


def _density_finding(trace, ctx, table: pd.DataFrame):
    dens = launch_density(trace, table)
    if dens is None:
        return None
    ops_per_step, mean_us, median_us = dens
    if ops_per_step < LAUNCH_DENSITY_MIN_OPS or median_us > SMALL_OP_MEDIAN_US:
        return None
    causes = _causes(ctx)
    step_us = float(table["duration_us"].mean())
    text = (f"The host issues {ops_per_step:,.0f} top-level operators per step, {mean_us:,.1f} us each on "
            f"average (median {median_us:,.1f} us) on this CPU run. This trace has no device timeline, so the device free time cannot be "
            f"measured; on an NPU every operator is a launch, and this many short launches tends to make the run "
            f"host-bound. " + _cause_text(causes) + " Levers on the NPU: " + "; ".join(LEVERS) + ".")
    return Finding(
        rule="NPA202", category="host_bound",
        title=f"{ops_per_step:,.0f} operator launches per step: host-bound risk on an NPU",
        severity="medium" if ops_per_step >= 5 * LAUNCH_DENSITY_MIN_OPS else "low",
        evidence=[
            Evidence("top-level ops per step", round(ops_per_step, 1), "ops",
                     f"host ops at nesting depth 0, averaged over {len(table)} step(s)"),
            Evidence("mean top-level op duration", mean_us, "us", "mean host duration of those ops (CPU run)"),
            Evidence("median top-level op duration", median_us, "us", "median host duration of those ops (CPU run)"),
            Evidence("average step", round(step_us, 1), "us", "mean host ProfilerStep duration"),
        ],
        estimated_saving_us=None,
        predicted=True,
        details={"text": text, "causes": causes, "levers": LEVERS, "steps": table.to_dict("records"),
                 "limitation": "free time needs a device timeline; this is a CPU-only trace"},
    )
