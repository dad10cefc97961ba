"""Communication: how much of each step the collectives take, how much of it compute hides, and what
the collectives spend their time on.

Per step:
1. torch_npu `step_trace_time` (CSV or analysis.db StepTraceTime): the profiler's own numbers, used as
   is: Computing, Communication, Overlapped, Communication(Not Overlapped), Free; the step is Computing +
   Communication(Not Overlapped) + Free (msprof-analyze's definition; `Stage` in the file).
2. Otherwise a device timeline: collectives are the device activity of kind "communication" (torch_npu
   HCCL ops) or named nccl/rccl/hccl/gloo (Kineto NCCL kernels); compute is the union of every other
   kernel, copy and memset; overlapped = their intersection, not overlapped = collectives minus compute,
   free = step minus the union of both, each clipped to the host step range.

Per collective: its elapsed time; on torch_npu, from communication.json / analysis.db CommAnalyzerTime,
split into transit (moving data), wait (Wait Time: for the peer ranks to arrive) and the rest (elapsed -
transit - wait: neither moving nor waiting for a peer, "Idle Time" in the file). Kineto has no such split
(CUPTI records the kernel only); there each NCCL kernel's overlap with compute kernels on other streams is
given instead. Bandwidth per link type (transferred MB / transit ms) comes from the same torch_npu files,
next to a reference bandwidth where `link_bandwidth.json` documents one (with its source).
"""
from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd

from npu_advise.findings import Evidence, Finding, Fix, severity_for_share
from npu_advise.model import covered_before
from npu_advise.rules import Rule

from . import Analysis
from .common import category_mask, step_stats, us
from .ranks import _clip, _length, _overlap, _union, _windows, is_collective

# A finding when communication not overlapped with compute is at least this share of the step.
COMM_SHARE_THRESHOLD = 0.05
# Recommendation thresholds, each tied to what the trace shows:
# collectives moving data less than this share of their elapsed time are mostly waiting ...
LOW_TRANSIT_SHARE = 0.5
# ... less than this share of the communication overlapped with compute: overlap with backward is missing ...
LOW_OVERLAP_SHARE = 0.5
# ... communication (not overlapped) at least this share of the step: accumulate gradients with no_sync() ...
ACCUMULATE_SHARE = 0.25
# ... at least this many collectives per step: fewer, larger buckets.
MANY_COLLECTIVES = 16
TOTAL_ROW = "Total Op Info"     # communication.json's per-step sum over collectives
# SDMA is the sum of the intra-node links (HCCS, PCIe, SIO) in torch_npu's bandwidth info.
AGGREGATE_LINKS = {"SDMA"}

RULE = Rule(
    "NPA213", "communication-bound", "communication",
    detects="Steps in which collective communication (HCCL / NCCL) that compute does not hide is a large share "
            "of the step; per collective, the time spent moving data (transit), waiting for the peer ranks, "
            "and the rest; the bandwidth achieved per link type next to a documented reference.",
    why="While a collective runs with no compute beside it, the device does no useful work; in data-parallel "
        "training the gradient all-reduce should run during the backward pass. Time inside a collective that "
        "moves no data is waiting for other ranks or for the collective's own handshakes.",
    fix="Follow the finding's recommendations, each backed by the trace: balance the ranks when the collectives "
        "mostly wait (NPA211/NPA212); let DDP overlap the all-reduce with backward (no host sync or manual "
        "all-reduce after backward); accumulate gradients over micro-batches with `model.no_sync()` when "
        "communication dominates; fewer, larger collectives (DDP `bucket_cap_mb`) when there are many small ones.",
    thresholds={"COMM_SHARE_THRESHOLD": COMM_SHARE_THRESHOLD, "LOW_TRANSIT_SHARE": LOW_TRANSIT_SHARE,
                "LOW_OVERLAP_SHARE": LOW_OVERLAP_SHARE, "ACCUMULATE_SHARE": ACCUMULATE_SHARE,
                "MANY_COLLECTIVES": MANY_COLLECTIVES},
)

_STT = {"computing_us": "Computing", "communication_us": "Communication", "overlapped_us": "Overlapped",
        "not_overlapped_us": "Communication(Not Overlapped)", "free_us": "Free"}


def _compute_mask(kernels: pd.DataFrame, coll: np.ndarray) -> np.ndarray:
    return category_mask(kernels["kind"], lambda c: c in ("kernel", "memcpy", "memset")) & ~coll


def step_split(trace):
    """(per-step DataFrame [step, step_us, computing_us, communication_us, overlapped_us,
    not_overlapped_us, free_us], source) or (None, None) when the trace holds no collectives."""
    st = trace.extras.get("step_trace_time")
    if isinstance(st, pd.DataFrame) and len(st) and set(_STT.values()) <= set(st.columns):
        out = pd.DataFrame({"step": pd.to_numeric(st.get("Step"), errors="coerce").fillna(-1).astype(np.int64)})
        for col, src in _STT.items():
            out[col] = pd.to_numeric(st[src], errors="coerce").astype(float)
        out.insert(1, "step_us", out["computing_us"] + out["not_overlapped_us"] + out["free_us"])
        if out["communication_us"].sum() > 0:
            return out, "step_trace_time (torch_npu)"
    k = trace.kernels
    if not len(k):
        return None, None
    coll = is_collective(k)
    if not coll.any():
        return None, None
    ts = k["ts"].to_numpy()
    end = ts + k["dur"].to_numpy()
    comp = _compute_mask(k, coll)
    steps = trace.steps["step"].tolist() if len(trace.steps) else [-1]
    rows = []
    for step, (lo, hi) in zip(steps, _windows(trace)):
        c = _union(*_clip(ts[coll], end[coll], lo, hi))
        w = _union(*_clip(ts[comp], end[comp], lo, hi))
        comm, work, both = _length(*c), _length(*w), _overlap(c, w)
        rows.append((int(step), hi - lo, work, comm, both, comm - both, (hi - lo) - (comm + work - both)))
    out = pd.DataFrame(rows, columns=["step", "step_us", "computing_us", "communication_us", "overlapped_us",
                                      "not_overlapped_us", "free_us"])
    for c in out.columns[1:]:
        out[c] = out[c] / 1000.0
    return out, "device timeline (collective kernels vs the other device activity)"


def _profiler_collectives(trace) -> pd.DataFrame:
    """communication.json / CommAnalyzerTime rows, one per collective, with `other_ms`; empty if absent."""
    comm = trace.extras.get("communication")
    if not isinstance(comm, pd.DataFrame) or not len(comm) or "elapse_ms" not in comm:
        return pd.DataFrame()
    c = comm[comm["op"].astype(str) != TOTAL_ROW].copy()
    for col in ("start_us", "elapse_ms", "transit_ms", "wait_ms", "sync_ms", "idle_ms"):
        c[col] = pd.to_numeric(c[col], errors="coerce")
    c = c[c["elapse_ms"].notna()]
    c["other_ms"] = (c["elapse_ms"] - c["transit_ms"].fillna(0) - c["wait_ms"].fillna(0)).clip(lower=0)
    return c.sort_values("start_us").reset_index(drop=True)


def collectives(trace) -> pd.DataFrame:
    """One row per collective in the profiled steps: [step, name, start_us (relative to the first step),
    elapsed_us, transit_us, wait_us, other_us, overlapped_us]; transit/wait/other are NaN where the trace
    has no per-collective split (Kineto), overlapped_us is NaN where the timeline lacks the collective."""
    k = trace.kernels
    coll = is_collective(k) if len(k) else np.zeros(0, bool)
    if len(trace.steps):
        coll &= k["step"].to_numpy() >= 0
    origin = int(trace.steps["ts"].min()) if len(trace.steps) else (int(k["ts"].min()) if len(k) else 0)
    ts = k["ts"].to_numpy()
    end = ts + k["dur"].to_numpy()
    comp = _compute_mask(k, coll) if len(k) else np.zeros(0, bool)
    w_s, w_e = _union(ts[comp], end[comp]) if len(k) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    timeline = pd.DataFrame({
        "name": k["name"].astype(str).to_numpy()[coll], "ts": ts[coll], "dur": k["dur"].to_numpy()[coll],
        "step": k["step"].to_numpy()[coll],
        "overlapped_us": (covered_before(w_s, w_e, end[coll]) - covered_before(w_s, w_e, ts[coll])) / 1000.0,
    }).sort_values("ts").reset_index(drop=True)
    timeline["longest_peer_wait_us"], timeline["late_peer"] = _late_peers(trace, timeline)
    prof = _profiler_collectives(trace)
    if len(prof):
        by_name = timeline.drop_duplicates("name").set_index("name")
        rows = []
        for r in prof.itertuples(index=False):
            t = by_name.loc[r.op] if r.op in by_name.index else None
            start_ns = int(round(float(r.start_us) * 1000)) if pd.notna(r.start_us) else (int(t["ts"]) if t is not None else origin)
            rows.append({"step": r.step, "name": r.op, "start_us": (start_ns - origin) / 1000.0,
                         "elapsed_us": r.elapse_ms * 1000.0, "transit_us": r.transit_ms * 1000.0,
                         "wait_us": r.wait_ms * 1000.0, "other_us": r.other_ms * 1000.0,
                         "overlapped_us": float(t["overlapped_us"]) if t is not None else np.nan,
                         "longest_peer_wait_us": float(t["longest_peer_wait_us"]) if t is not None else np.nan,
                         "late_peer": int(t["late_peer"]) if t is not None else -1})
        out = pd.DataFrame(rows)
    else:
        out = pd.DataFrame({"step": timeline["step"], "name": timeline["name"],
                            "start_us": (timeline["ts"] - origin) / 1000.0, "elapsed_us": timeline["dur"] / 1000.0,
                            "transit_us": np.nan, "wait_us": np.nan, "other_us": np.nan,
                            "overlapped_us": timeline["overlapped_us"],
                            "longest_peer_wait_us": timeline["longest_peer_wait_us"], "late_peer": timeline["late_peer"]})
    for c in out.columns[2:-1]:
        out[c] = out[c].astype(float).round(3)
    out["late_peer"] = out["late_peer"].astype(np.int64)
    return out


def _late_peers(trace, timeline: pd.DataFrame):
    """Per collective: the longest HCCL Notify_Wait inside it (µs; NaN without HCCL task data) and the peer
    rank it waited for (-1 if none). In a collective every rank waits for the last one to arrive: the
    longest wait names that rank."""
    w = trace.extras.get("peer_waits")
    if not isinstance(w, pd.DataFrame) or not len(w):
        return np.full(len(timeline), np.nan), np.full(len(timeline), -1, dtype=np.int64)
    w_ts, w_dur, w_peer = w["ts"].to_numpy(), w["dur"].to_numpy(), w["peer"].to_numpy()
    longest = np.zeros(len(timeline))
    peer = np.full(len(timeline), -1, dtype=np.int64)
    for i, (ts, dur) in enumerate(zip(timeline["ts"].to_numpy(), timeline["dur"].to_numpy())):
        lo, hi = np.searchsorted(w_ts, [ts, ts + dur])
        if hi > lo:
            j = lo + int(np.argmax(w_dur[lo:hi]))
            longest[i], peer[i] = w_dur[j] / 1000.0, w_peer[j]
    return longest, peer


def link_reference() -> dict:
    text = resources.files(__package__).joinpath("link_bandwidth.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def links(trace, n_steps: int) -> list:
    """Per link type with traffic, per step: {link, size_mb, transit_ms, bandwidth_gbps, reference_gbps,
    reference, reference_source} from torch_npu's bandwidth info (reference_* None where no source
    documents one); empty when the trace has none."""
    bw = trace.extras.get("communication_bandwidth")
    if not isinstance(bw, pd.DataFrame) or not len(bw):
        return []
    bw = bw[(bw["op"].astype(str) != TOTAL_ROW) & (pd.to_numeric(bw["size_mb"], errors="coerce") > 0)]
    g = bw.groupby("link")[["size_mb", "time_ms"]].sum()
    ref = link_reference()
    rows = []
    for link, r in g.iterrows():
        doc = ref.get(str(link)) or {}
        rows.append({"link": str(link) + (" (intra-node total)" if link in AGGREGATE_LINKS else ""),
                     "size_mb": round(r["size_mb"] / n_steps, 3), "transit_ms": round(r["time_ms"] / n_steps, 3),
                     "bandwidth_gbps": round(r["size_mb"] / r["time_ms"], 3) if r["time_ms"] > 0 else None,
                     "reference_gbps": doc.get("gbps"), "reference": doc.get("what"),
                     "reference_source": doc.get("source")})
    return rows


def analyze(trace, ctx) -> Analysis:
    out = Analysis()
    split, source = step_split(trace)
    if split is None:
        return out
    stats = step_stats(trace)
    coll = collectives(trace)
    n_steps = max(int(coll["step"].nunique()), 1) if len(coll) else max(stats.count, 1)
    link_table = links(trace, n_steps)
    if len(coll) and coll["transit_us"].isna().all():
        trace.limitations.append(
            "The collectives' kernels carry no transit/wait split, transferred bytes or link type (Kineto records the "
            "kernel only): per-collective waiting for peer ranks and bandwidth per link are not computed; the "
            "collective kernel time includes the wait for the slowest rank.")
    out.tables["communication.steps"] = split.round(3)
    out.tables["communication.collectives"] = coll
    if link_table:
        out.tables["communication.links"] = pd.DataFrame(link_table)
    f = _finding(trace, ctx, split, source, coll, link_table, n_steps)
    if f is not None:
        out.findings.append(f)
    return out


def _finding(trace, ctx, split, source, coll, link_table, n_steps):
    m = split.drop(columns="step").mean()
    step, no = float(m["step_us"]), float(m["not_overlapped_us"])
    if step <= 0 or no / step < COMM_SHARE_THRESHOLD:
        return None
    share = no / step
    total = float(m["communication_us"])
    over = float(m["overlapped_us"])
    comp, free = float(m["computing_us"]), float(m["free_us"])
    n = len(split)
    how = f"mean over {n} step(s); {source}"
    ev = [Evidence("step", round(step, 3), "us", f"computing + communication not overlapped + free, {how}"),
          Evidence("computing", round(comp, 3), "us", how),
          Evidence("communication (total)", round(total, 3), "us", how),
          Evidence("communication overlapped with compute", round(over, 3), "us", how),
          Evidence("communication not overlapped", round(no, 3), "us", how),
          Evidence("free (device idle)", round(free, 3), "us", how),
          Evidence("not overlapped share of the step", round(100 * share, 2), "%", "communication not overlapped / step")]
    if source.startswith("step_trace_time"):
        st = trace.extras["step_trace_time"]
        if "Preparing" in st.columns:
            prep = pd.to_numeric(st["Preparing"], errors="coerce").mean()
            if prep == prep:
                ev.append(Evidence("preparing (before the step's first device task)", round(float(prep), 3), "us",
                                   "step_trace_time Preparing, not part of the step above"))
    per_step = len(coll) / n_steps if len(coll) else 0.0
    ev.append(Evidence("collectives per step", round(per_step, 2), "count",
                       f"{len(coll)} collective(s) in {n_steps} step(s)"))
    split_known = len(coll) and coll["transit_us"].notna().any()
    elapsed = float(coll["elapsed_us"].sum()) / n_steps if len(coll) else 0.0
    transit = float(coll["transit_us"].sum()) / n_steps if split_known else None
    wait = float(coll["wait_us"].sum()) / n_steps if split_known else None
    other = float(coll["other_us"].sum()) / n_steps if split_known else None
    if split_known:
        src = "communication.json" if trace.fmt == "ascend_text" else "analysis.db CommAnalyzerTime"
        ev += [Evidence("collective elapsed per step", round(elapsed, 3), "us", f"sum of Elapse Time ({src})"),
               Evidence("transit (moving data) per step", round(transit, 3), "us", f"sum of Transit Time ({src})"),
               Evidence("wait for peer ranks per step", round(wait, 3), "us", f"sum of Wait Time ({src})"),
               Evidence("other time in collectives per step", round(other, 3), "us",
                        "elapsed - transit - wait, per collective (the file's Idle Time)")]
    else:
        ev.append(Evidence("collective kernel time per step", round(elapsed, 3), "us",
                           "sum of the collective kernels' durations; the trace has no transit/wait split "
                           "(CUPTI records the kernel only: its time includes waiting for the peer ranks)"))
    for r in link_table:
        ref = (f"; reference {r['reference_gbps']} GB/s: {r['reference']} ({r['reference_source']})"
               if r["reference_gbps"] else "; no documented reference bandwidth for this link type")
        ev.append(Evidence(f"{r['link']} bandwidth", r["bandwidth_gbps"], "GB/s",
                           f"{r['size_mb']:,.3f} MB per step over links of this type in {r['transit_ms']:,.3f} ms of link "
                           f"transit time (summed over the links); torch_npu's bandwidth info{ref}"))
    recs = _recommendations(ctx, share, total, over, per_step, elapsed, transit, wait, other, coll)
    bound = no >= comp and no >= free
    title = (f"Communication-bound: {no / 1000:,.2f} ms of the {step / 1000:,.2f} ms step is communication not "
             f"overlapped with compute ({100 * share:.0f} %), against {comp / 1000:,.2f} ms of computing"
             if bound else
             f"{no / 1000:,.2f} ms per step of communication not overlapped with compute "
             f"({100 * share:.1f} % of the {step / 1000:,.2f} ms step)")
    if split_known and elapsed > 0:
        title += f"; the collectives move data {transit / 1000:,.2f} ms of their {elapsed / 1000:,.2f} ms"
        late = _late_peer(coll, ctx)
        if late and late[1] >= 0.5 * (elapsed - transit):
            title += f" and wait {late[1] / 1000:,.2f} ms for rank {late[0]}"
    if split_known:
        saving = max(no - transit, 0.0)
        saving_how = ("communication not overlapped minus the collectives' transit time: the not-overlapped time "
                      "in which no data moves (waiting for peer ranks, idle in the collective), the most that "
                      "balancing ranks and overlapping with compute can recover; the transfer itself is kept")
    else:
        saving = no
        saving_how = ("communication not overlapped with compute: what overlapping it with compute could hide at "
                      "most (an upper bound; the trace cannot tell waiting from transfer)")
    details = {"source": source, "saving_how": saving_how, "recommendations": recs,
               "steps": split.round(3).to_dict("records"),
               "collectives": coll.astype(object).where(coll.notna(), None).to_dict("records"),
               "links": link_table}
    fix = Fix(description="\n".join(f"{i}. {r['what']} (trace: {r['evidence']})." for i, r in enumerate(recs, 1)),
              auto_applicable=False) if recs else None
    return Finding(rule="NPA213", category="communication", title=title, severity=severity_for_share(share),
                   evidence=ev, estimated_saving_us=round(saving, 3) if saving > 0 else None, fix=fix,
                   details=details)


def _late_peer(coll: pd.DataFrame, ctx):
    """(peer, its waits per step (µs), advice, evidence) for the peer rank the collectives waited for
    longest, or None without HCCL task data."""
    c = coll[(coll["late_peer"] >= 0) & (coll["longest_peer_wait_us"] > 0)]
    if not len(c):
        return None
    by_peer = c.groupby("late_peer")["longest_peer_wait_us"].sum().sort_values(ascending=False)
    peer, total = int(by_peer.index[0]), float(by_peer.iloc[0])
    worst = c[c["late_peer"] == peer].sort_values("longest_peer_wait_us", ascending=False).iloc[0]
    table = ctx.tables.get("ranks.table")
    profiled = sorted(int(r) for r in table["rank"]) if isinstance(table, pd.DataFrame) else []
    missing = profiled and peer not in profiled
    advice = (f"Rank {peer} arrives last: " + (f"it is not among the profiled ranks ({', '.join(map(str, profiled))}); "
                                               f"profile it and look at its own step" if missing else
                                               f"look at its own step (--rank {peer})")
              + " (data loading, syncs, uneven work)")
    evidence = (f"the longest Notify_Wait of each collective is on the link to rank {peer} for "
                f"{len(c[c['late_peer'] == peer])} of {len(c)} collectives, "
                f"{total / max(c['step'].nunique(), 1) / 1000:,.2f} ms per step; "
                f"{worst['longest_peer_wait_us'] / 1000:,.2f} ms in {worst['name']}")
    return peer, total / max(c["step"].nunique(), 1), advice, evidence


def _recommendations(ctx, share, total, over, per_step, elapsed, transit, wait, other, coll) -> list:
    """What typically helps in DDP training, each only where the trace shows its precondition."""
    recs = []
    if transit is not None and elapsed > 0 and transit / elapsed < LOW_TRANSIT_SHARE:
        slow = [f for f in ctx.findings if f.rule in ("NPA211", "NPA212")]
        first = coll.loc[coll["elapsed_us"].idxmax()]
        late = _late_peer(coll, ctx)
        recs.append({
            "what": "The collectives mostly wait instead of moving data: faster links or bigger buckets do not "
                    "shorten waiting. " + (late[2] if late else
                                           "Find why the peer ranks arrive late (their own step: data loading, "
                                           "syncs, uneven work); profile every rank of the group")
                    + (f"; see also {', '.join(sorted({f.rule for f in slow}))}" if slow else ""),
            "evidence": f"transit {transit / 1000:,.2f} ms of {elapsed / 1000:,.2f} ms elapsed per step; wait for peers "
                        f"{wait / 1000:,.2f} ms, other {other / 1000:,.2f} ms; the longest, {first['name']}, "
                        f"takes {first['elapsed_us'] / 1000:,.2f} ms with {first['transit_us'] / 1000:,.2f} ms of transit"
                        + (f"; {late[3]}" if late else "")})
    if total > 0 and over / total < LOW_OVERLAP_SHARE:
        recs.append({
            "what": "Overlap the gradient all-reduce with backward: DDP reduces each bucket while backward still "
                    "runs, unless a host sync or a manual all-reduce after backward serializes them",
            "evidence": f"{over / 1000:,.2f} ms of {total / 1000:,.2f} ms of communication per step "
                        f"({100 * over / total:.0f} %) runs beside compute"})
    if share >= ACCUMULATE_SHARE:
        recs.append({
            "what": "Accumulate gradients over several micro-batches and skip the all-reduce on all but the last "
                    "with `with model.no_sync():`: the collectives run once per accumulation window",
            "evidence": f"communication not overlapped is {100 * share:.0f} % of the step"})
    if per_step >= MANY_COLLECTIVES:
        recs.append({
            "what": "Fewer, larger collectives: raise DDP `bucket_cap_mb` (default 25) so each all-reduce carries more",
            "evidence": f"{per_step:,.1f} collectives per step"})
    return recs
