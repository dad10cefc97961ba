"""Cross-rank analysis: per-rank step time split into computing / communication / free, the slow
rank, and time spent waiting in collectives. One code path for torch_npu clusters and multi-rank
Kineto folders; only how a rank's split is measured depends on what its trace holds:

1. torch_npu `step_trace_time` (CSV or analysis.db): the profiler's own per-step split, used as is
   (step = Computing + Communication(Not Overlapped) + Free, msprof-analyze's definition).
2. torch_npu `Overlap Analysis` ranges: the Computing / Communication(Not Overlapped) / Free threads,
   clipped to each host step; step = their sum (as in step_trace_time).
3. A device timeline (GPU / NPU kernels): communication = kernels named nccl/rccl/hccl/gloo or of kind
   "communication"; computing = the union of all other device activity; communication (not overlapped)
   = communication minus computing; free = step - union of everything.
4. CPU only: communication = host time inside collective ops (gloo:/nccl: annotations, c10d:: ops,
   record_param_comms, ...); computing = the rest of the host ops' union; free = step - host ops' union.

Communication wait per rank: from torch_npu's per-collective Wait Time (communication.json /
CommAnalyzerTime) when present; otherwise this rank's communication minus the least communication of
any rank (collectives finish together, so extra time in them is waiting for a late rank).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from npu_advise import progress
from npu_advise.findings import Evidence, Finding, severity_for_share
from npu_advise.model import merge_intervals
from npu_advise.rules import Rule

from . import Analysis
from .common import category_mask

# msprof-analyze's slow-rank cut-off: a spread (max - min) / mean above 5 % of the step or a component.
SLOW_RANK_SPREAD = 0.05
# A component's spread counts only when it is also at least this share of the mean step (a 50 % spread of
# a 0.1 ms component is noise).
MIN_COMPONENT_SHARE = 0.01
# Communication wait is reported when a rank waits at least this share of its step.
COMM_WAIT_SHARE = 0.05

COMM_KERNEL = re.compile(r"nccl|rccl|hccl|gloo|hcom_", re.IGNORECASE)
COMM_HOST = re.compile(r"^(nccl:|gloo:|c10d::|hccl|hcom)|record_param_comms|allreduce|all_reduce|all_gather|"
                       r"allgather|reduce_scatter|broadcast|alltoall|all_to_all", re.IGNORECASE)
COMPONENTS = ("computing_us", "communication_us", "free_us")
_LABEL = {"step_us": "step time", "computing_us": "computing", "communication_us": "communication (not overlapped)",
          "free_us": "free (device idle)"}

RULE_SLOW = Rule(
    "NPA211", "slow-rank", "host_bound",
    detects="Ranks of one run whose mean step time, or one of its parts (computing, communication not "
            "overlapped, free), differs between ranks by more than the threshold; names the slowest rank and "
            "the part that differs most.",
    why="Data-parallel ranks meet in every collective: the whole job runs at the pace of its slowest rank, "
        "and the other ranks spend the difference waiting inside communication.",
    fix="Look at the slowest rank's detailed findings (`--rank N`): uneven data (variable point counts, "
        "dynamic shapes), a slower host (CPU binding: CPU_AFFINITY_CONF=1), extra work on one rank (logging, "
        "checkpointing, evaluation on rank 0) or a slow link.",
    thresholds={"SLOW_RANK_SPREAD": SLOW_RANK_SPREAD, "MIN_COMPONENT_SHARE": MIN_COMPONENT_SHARE},
)
RULE_WAIT = Rule(
    "NPA212", "communication-wait", "host_bound",
    detects="Time a rank spends inside collectives waiting for another rank to arrive, per rank.",
    why="A collective cannot complete until every rank has joined; the early ranks idle in it, so their "
        "communication time hides the late rank's extra work.",
    fix="Balance the ranks (see NPA211 and the late rank's own findings); communication tuning does not help "
        "while the wait comes from a late rank.",
    thresholds={"COMM_WAIT_SHARE": COMM_WAIT_SHARE},
)


def is_collective(kernels: pd.DataFrame) -> np.ndarray:
    """Row mask of the collectives among device activity: torch_npu HCCL ops (kind "communication") and
    Kineto NCCL/RCCL/gloo kernels by name."""
    return (category_mask(kernels["kind"], lambda c: c == "communication")
            | category_mask(kernels["name"], COMM_KERNEL.search))


def _union(starts, ends):
    return merge_intervals(starts, ends)[:2]


def _length(s, e) -> int:
    return int((e - s).sum())


def _overlap(a, b) -> int:
    """Total length of the intersection of two merged interval sets."""
    (s1, e1), (s2, e2) = a, b
    if len(s1) == 0 or len(s2) == 0:
        return 0
    s = np.concatenate([s1, s2])
    e = np.concatenate([e1, e2])
    # intersection = |A| + |B| - |A ∪ B|
    us_, ue = _union(s, e)
    return _length(s1, e1) + _length(s2, e2) - _length(us_, ue)


def _clip(ts, end, lo, hi):
    keep = (end > lo) & (ts < hi)
    return np.maximum(ts[keep], lo), np.minimum(end[keep], hi)


def _windows(trace):
    """Step windows (start, end) in ns; the whole trace when there are no ProfilerStep ranges."""
    if len(trace.steps):
        s = trace.steps["ts"].to_numpy()
        return list(zip(s, s + trace.steps["dur"].to_numpy()))
    frames = [df for df in (trace.ops, trace.kernels) if len(df)]
    if not frames:
        return []
    lo = min(int(df["ts"].min()) for df in frames)
    hi = max(int((df["ts"] + df["dur"]).max()) for df in frames)
    return [(lo, hi)]


def _split_intervals(trace, comm_ts, comm_end, work_ts, work_end) -> dict:
    rows = []
    for lo, hi in _windows(trace):
        c = _union(*_clip(comm_ts, comm_end, lo, hi))
        w = _union(*_clip(work_ts, work_end, lo, hi))
        comm = _length(*c)
        both = _overlap(c, w)
        busy = comm + _length(*w) - both
        rows.append((hi - lo, _length(*w), comm - both, (hi - lo) - busy))
    if not rows:
        return {}
    a = np.asarray(rows, dtype=float).mean(axis=0) / 1000.0
    return {"step_us": a[0], "computing_us": a[1], "communication_us": a[2], "free_us": a[3]}


def rank_split(trace) -> dict:
    """Mean per-step {step_us, computing_us, communication_us, free_us, source} of one rank."""
    st = trace.extras.get("step_trace_time")
    if isinstance(st, pd.DataFrame) and len(st) and {"Computing", "Communication(Not Overlapped)", "Free"} <= set(st):
        c = st["Computing"].astype(float).mean()
        m = st["Communication(Not Overlapped)"].astype(float).mean()
        f = st["Free"].astype(float).mean()
        return {"step_us": c + m + f, "computing_us": c, "communication_us": m, "free_us": f,
                "source": "step_trace_time"}
    ov = trace.extras.get("overlap")
    if isinstance(ov, pd.DataFrame) and len(ov):
        ts = ov["ts"].to_numpy()
        end = ts + ov["dur"].to_numpy()
        kind = ov["kind"].astype(str).to_numpy()
        rows = []
        for lo, hi in _windows(trace):
            part = {}
            for label, col in (("Computing", "computing_us"), ("Communication(Not Overlapped)", "communication_us"),
                               ("Free", "free_us")):
                m = kind == label
                part[col] = _length(*_union(*_clip(ts[m], end[m], lo, hi))) / 1000.0
            rows.append(part)
        if rows:
            out = pd.DataFrame(rows).mean().to_dict()
            # the profiler's step: its three parts (the host step range also holds time before the first task)
            out["step_us"] = out["computing_us"] + out["communication_us"] + out["free_us"]
            return {**out, "source": "overlap analysis"}
    k = trace.kernels
    if len(k):
        ts = k["ts"].to_numpy()
        end = ts + k["dur"].to_numpy()
        comm = is_collective(k)
        busy = k["kind"].astype(str).to_numpy() != "sync"
        out = _split_intervals(trace, ts[comm], end[comm], ts[busy & ~comm], end[busy & ~comm])
        if out:
            return {**out, "source": "device kernels"}
    ops = trace.ops
    an = trace.annotations
    names = pd.concat([ops["name"].astype(str), an["name"].astype(str)], ignore_index=True)
    ts = np.concatenate([ops["ts"].to_numpy(), an["ts"].to_numpy()])
    end = ts + np.concatenate([ops["dur"].to_numpy(), an["dur"].to_numpy()])
    comm = names.str.contains(COMM_HOST).to_numpy()
    host = np.concatenate([np.ones(len(ops), bool), np.zeros(len(an), bool)])
    out = _split_intervals(trace, ts[comm], end[comm], ts[host & ~comm], end[host & ~comm])
    return {**out, "source": "host ops (CPU trace)"} if out else {}


def _wait_from_profiler(trace, n_steps: int):
    comm = trace.extras.get("communication")
    if not isinstance(comm, pd.DataFrame) or len(comm) == 0 or "wait_ms" not in comm:
        return None
    w = pd.to_numeric(comm["wait_ms"], errors="coerce")
    if w.notna().sum() == 0:
        return None
    steps = max(comm["step"].nunique(), 1) if "step" in comm else max(n_steps, 1)
    return float(w.sum()) * 1000.0 / steps


def compare_ranks(traces: list) -> Analysis:
    rows = []
    for i, t in enumerate(progress.track(traces, "comparing ranks", unit="ranks")):
        split = rank_split(t)
        if not split:
            continue
        rank = t.rank if t.rank is not None else i
        rows.append({"rank": int(rank), **split, "wait_profiler": _wait_from_profiler(t, len(t.steps))})
    if not rows:
        return Analysis()
    df = pd.DataFrame(rows).sort_values("rank").reset_index(drop=True)
    min_comm = df["communication_us"].min()
    derived = df["communication_us"] - min_comm
    df["comm_wait_us"] = df["wait_profiler"].where(df["wait_profiler"].notna(), derived).astype(float)
    wait_source = np.where(df["wait_profiler"].notna(), "profiler wait time", "communication minus the least of any rank")
    table = df[["rank", "step_us", "computing_us", "communication_us", "free_us", "comm_wait_us"]].copy()
    for c in table.columns[1:]:
        table[c] = table[c].astype(float).round(3)
    # In synchronous data-parallel training the collectives equalize step times: every rank waits for the
    # last one to arrive. The rank that holds the others back is the one with the most time of its own
    # per step (step minus waiting for others), not the one with the longest step.
    df["own_us"] = df["step_us"] - df["comm_wait_us"]
    slowest = int(df.loc[df["own_us"].idxmax(), "rank"])
    result = Analysis(tables={"ranks.table": table, "slowest_rank": slowest})
    if len(df) < 2:
        return result
    f = _slow_rank_finding(df, slowest)
    if f is not None:
        result.findings.append(f)
    f = _wait_finding(df, wait_source)
    if f is not None:
        result.findings.append(f)
    return result


def _slow_rank_finding(df: pd.DataFrame, slowest: int):
    mean_step = float(df["step_us"].mean())
    if mean_step <= 0:
        return None
    spreads = {}
    for col in ("step_us",) + COMPONENTS:
        v = df[col].astype(float)
        spread = float(v.max() - v.min())
        mean = float(v.mean())
        rel = spread / mean if mean > 0 else 0.0
        if col != "step_us" and spread < MIN_COMPONENT_SHARE * mean_step:
            rel = 0.0
        spreads[col] = (spread, rel)
    if max(rel for _, rel in spreads.values()) <= SLOW_RANK_SPREAD:
        return None
    comp = max(COMPONENTS, key=lambda c: spreads[c][0])
    comp_hi = df.loc[df[comp].idxmax()]
    comp_lo = df.loc[df[comp].idxmin()]
    step_spread, step_rel = spreads["step_us"]
    src = df["source"].iloc[0]
    srow = df[df["rank"] == slowest].iloc[0]
    quickest = df.loc[df["own_us"].idxmin()]
    title = (f"Rank {slowest} sets the pace: {srow['own_us'] / 1000:.1f} ms/step of its own time vs "
             f"{quickest['own_us'] / 1000:.1f} ms on rank {int(quickest['rank'])}, which waits for it; "
             f"{_LABEL[comp]} differs most: {comp_hi[comp] / 1000:.1f} ms on rank "
             f"{int(comp_hi['rank'])} vs {comp_lo[comp] / 1000:.1f} ms on rank {int(comp_lo['rank'])}")
    ev = [
        Evidence("step time spread between ranks", round(step_spread, 3), "µs",
                 f"max - min of the per-rank mean step time ({src}); {step_rel * 100:.1f} % of the mean"),
        Evidence(f"{_LABEL[comp]} spread between ranks", round(spreads[comp][0], 3), "µs",
                 f"max - min of the per-rank mean {_LABEL[comp]} per step ({src}); "
                 f"{spreads[comp][1] * 100:.1f} % of its mean"),
        Evidence(f"rank {slowest} own time per step", round(float(srow["own_us"]), 3), "µs",
                 "mean step time minus communication wait (time not spent waiting for other ranks)"),
        Evidence(f"rank {slowest} step time", round(float(srow["step_us"]), 3), "µs", f"mean per step ({src})"),
    ]
    if comp == "communication_us":
        note = (" A rank with more communication than the others usually waits in collectives for a later "
                f"rank: the rank with the least communication (rank {int(comp_lo['rank'])}) arrives last.")
    else:
        note = ""
    # With the work balanced, every rank would need the mean own time: the pace-setter's excess over
    # that mean is what each step loses.
    excess = float(srow["own_us"] - df["own_us"].mean())
    saving = round(excess, 3) if excess > SLOW_RANK_SPREAD * mean_step else None
    return Finding(rule="NPA211", category="host_bound", title=title + "." + note,
                   severity=severity_for_share(max(step_rel, spreads[comp][0] / mean_step)), evidence=ev,
                   estimated_saving_us=saving,
                   details={"slowest_rank": slowest, "component": comp.removesuffix("_us"),
                            "component_max_rank": int(comp_hi["rank"]), "component_min_rank": int(comp_lo["rank"]),
                            "source": src, "spreads": {k.removesuffix("_us"): round(v[1], 4) for k, v in spreads.items()}})


def _wait_finding(df: pd.DataFrame, wait_source):
    share = df["comm_wait_us"] / df["step_us"]
    i = int(share.idxmax())
    if not share.iloc[i] >= COMM_WAIT_SHARE:
        return None
    row = df.iloc[i]
    late = df.loc[df["comm_wait_us"].idxmin()]
    how = str(wait_source[i])
    ev = [Evidence(f"communication wait on rank {int(r['rank'])}", round(float(r["comm_wait_us"]), 3), "µs",
                   f"per step; {wait_source[j]}") for j, r in df.iterrows()]
    return Finding(rule="NPA212", category="host_bound",
                   title=(f"Rank {int(row['rank'])} waits {row['comm_wait_us'] / 1000:.1f} ms per step in collectives "
                          f"({share.iloc[i] * 100:.1f} % of its step) for other ranks; rank {int(late['rank'])} "
                          f"waits least"),
                   severity=severity_for_share(float(share.iloc[i])), evidence=ev, estimated_saving_us=None,
                   details={"wait_us": {int(r["rank"]): round(float(r["comm_wait_us"]), 3) for _, r in df.iterrows()},
                            "how": how})
