"""Tensor work on host tensors inside the training step, per user function (predicted runs).

With placement records (`npu_advise.collect.placement`), the small-op-loop rule counts only the ops that
would launch on the NPU. What is left inside the step is work on tensors that never reach the device:
targets drawn from a host generator, calibration matrices built from numpy, per-sample bookkeeping.
It pays no NPU dispatch cost and never syncs the stream, so it is no small-op-loop finding; it still
runs on the host between two launches in every step, where a fast device waits for it. This analyzer
reports it once per function with its host time, and only when it is a visible share of the step.
"""
from __future__ import annotations

import pandas as pd

from npu_advise.findings import Evidence, Finding, Location
from npu_advise.load.locations import is_user_file
from npu_advise.rules import Rule

from . import Analysis, placement, source
from .common import relative_path, resolve_source, step_stats, us
from .small_op_loops import top_level_ops

# A function is reported when its host-tensor ops take at least this share of the mean step ...
MIN_STEP_SHARE = 0.02
# ... and at least this much host time per step (µs).
MIN_HOST_US_PER_STEP = 1000.0
# It is "low" (not "info") from this share of the step on.
LOW_STEP_SHARE = 0.10
# Lines listed per finding, busiest first.
MAX_LINES = 5

RULE = Rule(
    code="NPA503", name="host-tensor-work", category="host_bound",
    detects="Inside the profiled steps, a user function whose tensor ops touch only host tensors (placement "
            "tracking: nothing they read would be on the NPU) for at least MIN_STEP_SHARE of the step and "
            "MIN_HOST_US_PER_STEP: its host time per step and its busiest lines. Only on runs with placement "
            "records; the ops of torch components (optimizer, DataLoader) are not counted.",
    why="Work on host tensors stays on the host after the port: it launches nothing on the NPU and costs no "
        "dispatch, but it runs in the training process between two launches every step. On an NPU that "
        "finishes the step's kernels faster than this machine's CPU, the device waits for it (free time). "
        "It is an observation, not an NPU problem: its cost does not grow on the NPU.",
    fix="Move the work out of the step: into the Dataset / collate function so DataLoader workers "
        "(num_workers > 0) overlap it with training, or precompute what does not change between steps.",
    thresholds={"MIN_STEP_SHARE": MIN_STEP_SHARE, "MIN_HOST_US_PER_STEP": MIN_HOST_US_PER_STEP,
                "LOW_STEP_SHARE": LOW_STEP_SHARE},
)


def analyze(trace, ctx) -> Analysis:
    if not placement.recorded(trace) or not len(trace.ops) or not len(trace.locations):
        return Analysis()
    stats = step_stats(trace)
    if not stats.from_ranges or not stats.mean_ns:
        return Analysis()
    top = top_level_ops(trace, stats, on_device=False)
    if not len(top):
        return Analysis()
    locs = trace.locations
    top = top[locs["exact"].to_numpy()[top["loc"].to_numpy()]]
    functions = {}   # (file, def line) -> {"info", "path", "lines": {line: host ns}, "ops"}
    for where, group in top.groupby("loc", sort=False):
        file, line = str(locs.at[int(where), "file"]), int(locs.at[int(where), "line"])
        if not is_user_file(file):
            continue
        path = resolve_source(file, ctx.project_root)
        info = source.enclosing_function(path, line) if path is not None else None
        if info is None:
            continue
        entry = functions.setdefault((file, info.line), {"info": info, "lines": {}, "ops": 0})
        entry["lines"][line] = entry["lines"].get(line, 0.0) + float(group["dur"].sum())
        entry["ops"] += len(group)
    findings = [f for (file, _), entry in functions.items()
                if (f := _finding(trace, ctx, stats, file, entry)) is not None]
    return Analysis(findings=findings)


def _finding(trace, ctx, stats, file: str, entry: dict):
    n = stats.count
    host_ns = sum(entry["lines"].values())
    share = host_ns / n / stats.mean_ns
    host_us = host_ns / n / 1000.0
    if share < MIN_STEP_SHARE or host_us < MIN_HOST_US_PER_STEP:
        return None
    info = entry["info"]
    rel = relative_path(file, ctx.project_root)
    busiest = sorted(entry["lines"].items(), key=lambda kv: -kv[1])[:MAX_LINES]
    lines_text = ", ".join(f"{line} ({us(ns / n):,.0f} us)" for line, ns in busiest)
    evidence = [
        Evidence("host tensor time per step", round(host_us, 3), "us",
                 f"sum of the host durations of the function's top-level ops on host tensors / {n} steps "
                 "(CPU time under the profiler on this run)"),
        Evidence("share of the step", round(100.0 * share, 2), "%", "host tensor time per step / mean step time"),
        Evidence("ops per step", round(entry["ops"] / n, 3), "ops", "top-level ops on host tensors / steps"),
        Evidence("busiest lines", lines_text, "", "host time per step of each line, largest first"),
        Evidence("placement", "host tensors", "",
                 f"no op counted here read a device tensor: {placement.how_placed(trace)}"),
    ]
    details = {"function": info.name, "def_line": info.line, "end_line": info.end_line,
               "host_us_per_step": round(host_us, 3), "step_share": round(share, 4),
               "lines": [{"line": line, "host_us_per_step": us(ns / n)} for line, ns in busiest]}
    # Located at the function's def line: the observation is about the function, and its lines are
    # not problems on the NPU (the small-op-loop and sync rules rightly stay silent on them).
    return Finding(
        rule=RULE.code, category="host_bound",
        title=f"{info.name} ({rel}:{info.line}) spends {host_us:,.0f} us per step ({100 * share:.1f} % of the step) "
              f"on host-tensor work that stays on the host after the port",
        severity="low" if share >= LOW_STEP_SHARE else "info", evidence=evidence,
        locations=[Location(rel, info.line, info.name)], estimated_saving_us=None, details=details,
        predicted=not trace.has_device_timeline, subject="host-tensor-work")
