"""Which host-side causes explain the device's host-wait idle time (the causal chain behind NPA201).

A host-wait gap is device idle time while the host had not launched the next kernel yet. What the host
was doing meanwhile explains it: a cause finding's host time at the source lines it points at (the sync
calls of a measured sync; every host op of a loop of small ops, a CPU fallback, an unfused optimizer
step), or the DataLoader fetching the next batch (`enumerate(DataLoader)#...` ranges). Each part of a gap is explained
once: by the cause findings first (their union), then by data loading.
"""
from __future__ import annotations

import numpy as np

from npu_advise.model import merge_intervals

from .common import category_mask, relative_path
from .ranks import _length, _overlap

DATALOADER_PREFIX = "enumerate(DataLoader)"


def minus(a, b):
    """Merged interval set a minus merged interval set b (both (starts, ends), sorted and disjoint)."""
    (a_s, a_e), (b_s, b_e) = a, b
    if len(a_s) == 0 or len(b_s) == 0:
        return a_s, a_e
    cuts = np.unique(np.concatenate([a_s, a_e, b_s, b_e]))
    lo, hi = cuts[:-1], cuts[1:]
    mid = lo + (hi - lo) / 2.0

    def inside(s, e):
        j = np.searchsorted(s, mid, side="right") - 1
        return (j >= 0) & (mid < e[np.maximum(j, 0)])

    keep = inside(a_s, a_e) & ~inside(b_s, b_e)
    return merge_intervals(lo[keep], hi[keep])[:2]


def _spans(ts, end):
    return merge_intervals(np.asarray(ts, dtype=np.int64), np.asarray(end, dtype=np.int64))[:2]


def cause_spans(trace, finding, project_root=None):
    """The host time a cause finding accounts for, merged; None when it points at no line of the trace.
    A measured sync (NPA301) accounts for its sync calls only (the rest of its line's ops are ordinary
    launches), a predicted sync (NPA302) for nothing: no sync happened in this trace. Loops, fallbacks and
    optimizer steps account for every host op at their lines."""
    keys = {(l.file, int(l.line)) for l in finding.locations}
    if finding.rule == "NPA302" or not keys or not len(trace.locations):
        return None
    locs = trace.locations
    hit = np.fromiter(((relative_path(f, project_root), int(n)) in keys
                       for f, n in zip(locs["file"].to_numpy(), locs["line"].to_numpy())), dtype=bool, count=len(locs))
    if not hit.any():
        return None
    if finding.rule == "NPA301":
        from .syncs import SYNC_RUNTIME   # syncs imports host_bound, which imports this module

        table = trace.runtime
        rows = np.isin(table["loc"].to_numpy(), np.flatnonzero(hit)) & category_mask(table["name"], SYNC_RUNTIME.match)
    else:
        table = trace.ops
        rows = np.isin(table["loc"].to_numpy(), np.flatnonzero(hit))
    ts = table["ts"].to_numpy()[rows]
    return _spans(ts, ts + table["dur"].to_numpy()[rows])


def dataloader_spans(trace):
    """Merged time ranges of the DataLoader fetching batches (host ops and annotations)."""
    starts, ends = [], []
    for df in (trace.ops, trace.annotations):
        if len(df):
            m = category_mask(df["name"], lambda c: str(c).startswith(DATALOADER_PREFIX))
            starts.append(df["ts"].to_numpy()[m])
            ends.append((df["ts"] + df["dur"]).to_numpy()[m])
    return _spans(np.concatenate(starts), np.concatenate(ends)) if starts else _spans([], [])


def explain(trace, gaps, causes: list, project_root=None) -> dict:
    """Split the host-wait gaps (merged (starts, ends), ns) by what the host did meanwhile.

    `causes`: cause findings. Returns {"per_finding": {finding id: ns}, "findings_ns": the union's share,
    "dataloader_ns", "unexplained_ns"}."""
    total = _length(*gaps)
    per_finding = {}
    union_s, union_e = [], []
    for f in causes:
        spans = cause_spans(trace, f, project_root)
        if spans is None:
            continue
        ns = _overlap(gaps, spans)
        if ns > 0:
            per_finding[f.id] = ns
            union_s.append(spans[0])
            union_e.append(spans[1])
    by_findings = _spans(np.concatenate(union_s), np.concatenate(union_e)) if union_s else _spans([], [])
    findings_ns = _overlap(gaps, by_findings)
    rest = minus(gaps, by_findings)
    loader_ns = _overlap(rest, dataloader_spans(trace))
    return {"per_finding": per_finding, "findings_ns": findings_ns, "dataloader_ns": loader_ns,
            "unexplained_ns": total - findings_ns - loader_ns}
