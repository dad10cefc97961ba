"""Host-device synchronizations, grouped by the source line that causes them.

Two kinds of evidence:
- measured: runtime calls that block the host until the device drains (`cudaStreamSynchronize`,
  `cudaDeviceSynchronize`, `cudaEventSynchronize`, synchronous `cudaMemcpy`, the `hip*` equivalents,
  `AscendCL@aclrtSynchronizeStream*`, `AscendCL@aclrtSynchronizeDevice`) and `cuda_sync` device events;
- predicted: host operators that need a device value on the host (`aten::item` /
  `_local_scalar_dense`, `aten::nonzero`, `aten::masked_select`, boolean-mask `aten::index`,
  `aten::is_nonzero`, device-to-host copies). On a CPU trace they cost nothing yet; on an NPU each one
  stops the launch pipeline.

A runtime sync call is attributed to the outermost sync-causing operator around it (so an
`aten::item` -> `_local_scalar_dense` -> `aclrtSynchronizeStream` chain counts once, at the `item`), or,
for copies, to the outermost of the `to` / `_to_copy` / `copy_` chain; then to that operator's source
line. One finding per source line (per operator when the trace has no source locations).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from npu_advise import model
from npu_advise.findings import Evidence, Finding, severity_for_share
from npu_advise.rules import Rule

from . import Analysis, dispatch_cost, placement, source
from .common import category_codes, category_mask, location, resolve_source, step_stats, us
from npu_advise.model import covered_before, merge_intervals

from .host_bound import busy_events
from .ranks import is_collective

SYNC_RUNTIME = re.compile(
    r"^(cuda(Stream|Device|Event)Synchronize|cudaMemcpy|cudaMemcpy2D|cudaMemcpy3D|"
    r"hip(Stream|Device|Event)Synchronize|hipMemcpy|hipMemcpy2D|"
    r"AscendCL@aclrtSynchronize(Stream\w*|Device|Event\w*)|AscendCL@aclrtMemcpy)$")
# Host operators that read a device value on the host, with what the user wrote.
SYNC_OPS = {
    "aten::item": ".item()",
    "aten::_local_scalar_dense": ".item()",
    "aten::is_nonzero": "bool(tensor) / `if tensor:`",
    "aten::nonzero": "nonzero() (output size depends on device data)",
    "aten::masked_select": "masked_select / x[mask] (output size depends on device data)",
}
INDEX_OP = "aten::index"       # with an aten::nonzero child: boolean-mask indexing x[mask]
# Unlinked device sync events that stand for a host wait ("Context Sync", "Stream Sync", "Event Sync");
# "Stream Wait Event" / EVENT_RECORD / EVENT_WAIT order streams on the device and block no host thread.
HOST_SYNC_EVENT = re.compile(r"^(Context|Stream|Event|Device) Sync", re.IGNORECASE)
COPY_OPS = ("aten::to", "aten::_to_copy", "aten::copy_")
D2H_KERNEL = re.compile(r"DtoH|Device -> (?:Pageable|Pinned)|D2H", re.IGNORECASE)

# Measured syncs: a finding per source line whose syncs happen at least this often per step ...
MIN_SYNCS_PER_STEP = 1
# ... findings beyond this many (ranked by blocked time / count) go to the details of the last one.
MAX_FINDINGS = 20
# Predicted syncs (CPU trace): severity "medium" from this many calls per step, else "low".
PREDICTED_MEDIUM_PER_STEP = 10
# ... and "info" below this many per step: a periodic read (logging every N steps) costs one sync per N steps.
PERIODIC_BELOW_PER_STEP = 0.5

RULE_MEASURED = Rule(
    "NPA301", "device-sync", "sync",
    detects="Host-device synchronizations measured in the trace (stream/device/event synchronize, synchronous "
            "copies, cuda_sync events, AscendCL aclrtSynchronizeStream/Device), attributed to the source line "
            "whose operator caused them, with count and blocked time per step.",
    why="A sync stops the host until the device has finished everything queued; the device then runs dry "
        "while the host launches the next operators. On an NPU with its asynchronous task queue this drains "
        "the pipeline every time.",
    fix="Keep values on the device: replace .item()/.cpu()/.tolist()/.numpy() in the step by tensor ops, "
        "accumulate metrics on the device and read them once per N steps, replace x[mask] by "
        "torch.where/masked_fill with a fixed-size output, and avoid `if tensor:` on device tensors.",
    thresholds={"MIN_SYNCS_PER_STEP": MIN_SYNCS_PER_STEP, "MAX_FINDINGS": MAX_FINDINGS},
)
RULE_PREDICTED = Rule(
    "NPA302", "predicted-sync", "sync",
    detects="Host operators that need a device value on the host (.item(), nonzero, boolean-mask indexing, "
            "masked_select, bool(tensor), device-to-host copies) where no device sync was measured: on a CPU "
            "trace, or on device traces where the tensor was still on the host.",
    why="They cost nothing while the tensors are on the CPU, but once the model runs on an NPU each call waits "
        "for the device to drain its queue and then restarts the launch pipeline.",
    fix="Same as NPA301: keep the value on the device (tensor ops, torch.where instead of x[mask], fixed-size "
        "outputs), or read it once every N steps instead of every step.",
    thresholds={"PREDICTED_MEDIUM_PER_STEP": PREDICTED_MEDIUM_PER_STEP, "PERIODIC_BELOW_PER_STEP": PERIODIC_BELOW_PER_STEP,
                "MAX_FINDINGS": MAX_FINDINGS},
)


def sync_causing_ops(trace, depth: np.ndarray, parent: np.ndarray):
    """(flagged mask, label per op, root per op): sync-causing ops, what they are, and for every op
    the outermost sync-causing op enclosing it (itself included), -1 if none."""
    ops = trace.ops
    n = len(ops)
    # Everything by name is decided once per distinct name (category), then spread by the codes.
    codes, cats = category_codes(ops["name"])
    names = cats[codes]
    cat_label = np.asarray([SYNC_OPS.get(c) for c in cats], dtype=object)
    label = cat_label[codes]
    flagged = np.asarray([c in SYNC_OPS for c in cats], dtype=bool)[codes]
    nz = np.flatnonzero(codes == _code_of(cats, "aten::nonzero"))
    par = parent[nz]
    idx_rows = par[(par >= 0)]
    idx_rows = idx_rows[codes[idx_rows] == _code_of(cats, INDEX_OP)]
    flagged[idx_rows] = True
    label[idx_rows] = "x[mask] boolean-mask indexing"
    # Device-to-host copies: copy ops whose device activity is a DtoH memcpy.
    k = trace.kernels
    is_copy = _copy_rows(codes, cats)
    if len(k):
        d2h = (category_mask(k["kind"], lambda c: c == "memcpy") & category_mask(k["name"], D2H_KERNEL.search)
               & (k["op"].to_numpy() >= 0))
        rows = np.unique(k["op"].to_numpy()[d2h])
        rows = _copy_chain_top(rows, is_copy, parent)
        flagged[rows] = True
        label[rows] = ".cpu() / .tolist() / .numpy() device-to-host copy"
    root = np.where(flagged, np.arange(n), -1)
    for d in range(1, int(depth.max()) + 1 if n else 0):
        rows = np.flatnonzero(depth == d)
        p = parent[rows]
        ok = p >= 0
        up = np.full(len(rows), -1, dtype=np.int64)
        up[ok] = root[p[ok]]
        # an enclosing sync-causing op wins over this one (count the chain once, at the outermost)
        root[rows] = np.where(up >= 0, up, root[rows])
    _join_zero_length_children(ops, names, root)
    return flagged, label, root


# Ops whose children the trace may not nest: with microsecond timestamps both are often 0 us long at
# the same instant, so interval nesting cannot see that the second runs inside the first.
_CHILD_OF = {"aten::_local_scalar_dense": "aten::item", "aten::item": "aten::is_nonzero"}
# Microsecond traces stored as float µs lose sub-µs precision: a child may appear to start just after
# its parent's end.
JOIN_TOLERANCE_NS = 1000
_LEVEL = {"aten::is_nonzero": 0, "aten::item": 1, "aten::_local_scalar_dense": 2}


def _join_zero_length_children(ops: pd.DataFrame, names: np.ndarray, root: np.ndarray):
    """Attach a root `_local_scalar_dense` to the `item` root that starts with it on the same thread."""
    roots = np.flatnonzero(root == np.arange(len(root)))
    if not len(roots):
        return
    ts = ops["ts"].to_numpy()[roots]
    end = ts + ops["dur"].to_numpy()[roots]
    thread = ops["tid"].to_numpy()[roots]
    # ties at one instant: the outer op first
    level = np.array([_LEVEL.get(n, 1) for n in names[roots]])
    order = np.lexsort((level, ts, thread))
    for _ in range(2):  # is_nonzero > item > _local_scalar_dense
        r = roots[order]
        prev = np.concatenate(([-1], np.arange(len(r) - 1)))
        cur_names = names[r]
        ok = prev >= 0
        p = np.where(ok, prev, 0)
        parent_name = np.array([_CHILD_OF.get(n) for n in cur_names], dtype=object)
        ok &= (parent_name == names[r[p]]) & (thread[order][p] == thread[order]) \
            & (ts[order] >= ts[order][p]) & (ts[order] <= end[order][p] + JOIN_TOLERANCE_NS)
        hit = np.flatnonzero(ok)
        if not len(hit):
            break
        moved = r[hit]
        target = root[r[p[hit]]]
        # everything rooted at the moved ops now belongs to their new root
        remap = dict(zip(moved.tolist(), target.tolist()))
        affected = np.isin(root, moved)
        root[affected] = [remap[x] for x in root[affected].tolist()]
        keep = ~np.isin(roots, moved)
        roots, ts, end, thread, level = roots[keep], ts[keep], end[keep], thread[keep], level[keep]
        order = np.lexsort((level, ts, thread))


def _code_of(cats: np.ndarray, name: str) -> int:
    """The category code of `name`, or -2 (matches no row) when the trace has no such op."""
    hit = np.flatnonzero(cats == name)
    return int(hit[0]) if len(hit) else -2


def _copy_rows(codes: np.ndarray, cats: np.ndarray) -> np.ndarray:
    """Per op: is it one of the copy ops (to / _to_copy / copy_)."""
    return np.asarray([c in COPY_OPS for c in cats], dtype=bool)[codes]


def _copy_chain_top(rows: np.ndarray, is_copy: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Walk each op up through enclosing to/_to_copy/copy_ ops (a .cpu() is aten::to > _to_copy > copy_)."""
    rows = rows.astype(np.int64)
    for _ in range(4):
        p = parent[rows]
        ok = p >= 0
        ok[ok] = is_copy[p[ok]]
        if not ok.any():
            break
        rows = np.where(ok, p, rows)
    return rows


def analyze(trace, ctx) -> Analysis:
    stats = step_stats(trace)
    ops = trace.ops
    out = Analysis()
    if not len(ops) and not len(trace.runtime):
        return out
    placement.note_if_not_recorded(trace)
    depth, parent = model.op_tree(ops) if len(ops) else (np.zeros(0, np.int32), np.zeros(0, np.int64))
    flagged, label, root = sync_causing_ops(trace, depth, parent) if len(ops) else \
        (np.zeros(0, bool), np.zeros(0, object), np.zeros(0, np.int64))
    codes, cats = category_codes(ops["name"])
    names = cats[codes]
    is_copy = _copy_rows(codes, cats)
    op_loc = ops["loc"].to_numpy()
    op_step = ops["step"].to_numpy()
    in_step_op = (op_step >= 0) if stats.from_ranges else np.ones(len(ops), bool)

    groups: dict = {}

    def group_for(op_row, fallback: str):
        if isinstance(op_row, tuple):        # a group key given directly
            key = op_row
        elif op_row >= 0 and op_loc[op_row] >= 0:
            key = ("loc", int(op_loc[op_row]))
        else:
            key = ("op", names[op_row] if op_row >= 0 else fallback)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"key": key, "calls": 0, "events": 0, "ops": {}, "causes": set(), "sync_calls": 0,
                               "runtime": {}, "blocked_ns": 0, "max_blocked_ns": 0, "device_sync_ns": 0,
                               "bubble_ns": 0, "explained_ns": 0, "waits_for": {}}
        return g

    # 1. Sync-causing host ops, counted once per chain (at the outermost).
    is_root = flagged & (root == np.arange(len(ops))) & in_step_op
    placed = placement.recorded(trace)
    if placed:
        is_root &= _reads_device(trace)
    nested = root[flagged & in_step_op]
    nested_events = np.bincount(nested[nested >= 0], minlength=len(ops))
    call_api = trace.calls["api"].to_numpy() if placed else None
    op_call = ops["call"].to_numpy() if placed else None
    for r in np.flatnonzero(is_root):
        g = group_for(int(r), names[r])
        g["calls"] += 1
        g["events"] += int(nested_events[r]) or 1
        g["ops"][names[r]] = g["ops"].get(names[r], 0) + 1
        # the collector recorded the call the user wrote (int(t) and t.item() issue the same op)
        api = call_api[op_call[r]] if placed and op_call[r] >= 0 else None
        g["causes"].add(_API_LABELS.get(api, label[r]))
        g.setdefault("roots", []).append(int(trace.calls["root"].iat[ops["call"].iat[r]]) if placed else -1)
        g.setdefault("steps", set()).add(int(op_step[r]))
    # 1b. Sync-prone calls that read a device tensor but issue no sync-named op on a CPU run (.cpu(),
    #     .tolist(), .numpy(), unique, equal, ...): the collector's record is the evidence.
    if placed:
        _add_device_reads(trace, stats, is_root, group_for)

    # 2. Runtime sync calls, attributed to the outermost sync-causing op (or copy chain) around them.
    rt_all = trace.runtime
    is_sync_rt = category_mask(rt_all["name"], SYNC_RUNTIME.match)
    if stats.from_ranges:
        is_sync_rt &= rt_all["step"].to_numpy() >= 0
    rt = rt_all[is_sync_rt]
    bubbles = _bubbles(trace, rt)
    explained, waited = _waits_for(trace, rt)
    if len(rt):
        inner = rt["op"].to_numpy()
        has = inner >= 0
        attrib = inner.copy()
        if len(ops):
            r = np.where(has, root[np.where(has, inner, 0)], -1)
            chain = _copy_chain_top(np.where(has, inner, 0), is_copy, parent)
            attrib = np.where(r >= 0, r, np.where(has, chain, -1))
        rt_names = rt["name"].to_numpy(dtype=object)
        for i, (a, dur, rname, bub) in enumerate(zip(attrib, rt["dur"].to_numpy(), rt_names, bubbles)):
            g = group_for(int(a), rname)
            g["sync_calls"] += 1
            g["runtime"][rname] = g["runtime"].get(rname, 0) + 1
            g["blocked_ns"] += int(dur)
            g["max_blocked_ns"] = max(g["max_blocked_ns"], int(dur))
            g["bubble_ns"] += int(bub)
            g["explained_ns"] += int(explained[i])
            for name, start, elapsed, overlap in waited[i]:
                w = g["waits_for"].setdefault(name, {"start_ns": start, "elapsed_ns": elapsed, "overlap_ns": 0})
                w["overlap_ns"] += overlap
            if a >= 0 and not flagged[a] and is_copy[a]:
                g["causes"].add("tensor copy (.to()/.cpu()) that waits for the device")
            elif a < 0 or not flagged[a]:
                g["causes"].add(f"explicit {rname}")

    # 3. cuda_sync device events: the device-side wait of a runtime sync (joined by correlation), or
    #    a sync of its own when unlinked.
    k_all = trace.kernels
    is_sync_k = category_mask(k_all["kind"], lambda c: c == "sync")
    if stats.from_ranges:
        is_sync_k &= k_all["step"].to_numpy() >= 0
    k = k_all[is_sync_k]
    if len(k):
        sync_rt = set(rt.index.tolist())
        for launch, dur, kname in zip(k["launch"].to_numpy(), k["dur"].to_numpy(), k["name"].to_numpy(dtype=object)):
            if launch >= 0 and launch in sync_rt:
                inner = int(rt_all["op"].iat[launch])
                a = -1
                if inner >= 0:
                    a = int(root[inner]) if root[inner] >= 0 else int(_copy_chain_top(np.array([inner]), is_copy, parent)[0])
                g = group_for(a, str(rt_all["name"].iat[launch]))
                g["device_sync_ns"] += int(dur)
            elif HOST_SYNC_EVENT.search(kname):
                g = group_for(-1, f"{kname} (cuda_sync event)")
                g["sync_calls"] += 1
                g["device_sync_ns"] += int(dur)
                g["causes"].add(f"{kname} device event without a linked runtime call")

    findings = [_finding(trace, g, stats, ctx) for g in groups.values()]
    findings = [f for f in findings if f is not None]
    findings.sort(key=lambda f: (-f.details["blocked_us_per_step"], -f.details["calls_per_step"]))
    if len(findings) > MAX_FINDINGS:
        rest = findings[MAX_FINDINGS:]
        findings = findings[:MAX_FINDINGS]
        findings[-1].details["more_sync_sites"] = [f.title for f in rest]
    no_loc = any(g["key"][0] == "op" and g["calls"] for g in groups.values())
    if no_loc and (ops["loc"] < 0).all():
        trace.limitations.append("Syncs are grouped by operator, not source line: the trace has no source "
                                 "locations (record with with_stack=True or `npu-advise profile`).")
    out.findings = findings
    out.tables["syncs.sites"] = pd.DataFrame([{
        "site": f.details["site"], "kind": "measured" if f.rule == "NPA301" else "predicted",
        "calls_per_step": f.details["calls_per_step"], "syncs_per_step": f.details["syncs_per_step"],
        "blocked_us_per_step": f.details["blocked_us_per_step"], "cause": "; ".join(f.details["causes"]),
    } for f in findings], columns=["site", "kind", "calls_per_step", "syncs_per_step", "blocked_us_per_step", "cause"])
    return out


def _waits_for(trace, rt: pd.DataFrame):
    """What each runtime sync call waited for: (device busy time inside the call (ns), per call the
    collectives it overlaps as [(name, start_ns, elapsed_ns, overlap_ns)]). A sync returns when the device
    has finished the work queued before it, so device activity during the call explains that much of the
    blocked time; the rest is the host blocked while the device had nothing to do."""
    waited = [[] for _ in range(len(rt))]
    if not len(rt) or not trace.has_device_timeline:
        return np.zeros(len(rt), dtype=np.int64), waited
    ev = busy_events(trace)
    start = ev["ts"].to_numpy()
    b_s, b_e, _ = merge_intervals(start, start + ev["dur"].to_numpy())
    t0 = rt["ts"].to_numpy()
    t1 = t0 + rt["dur"].to_numpy()
    k = trace.kernels
    coll = k[is_collective(k)]
    c_ts = coll["ts"].to_numpy()
    c_end = c_ts + coll["dur"].to_numpy()
    c_name = coll["name"].astype(str).to_numpy()
    explained = covered_before(b_s, b_e, t1) - covered_before(b_s, b_e, t0)
    for i in range(len(rt)):
        hit = np.flatnonzero((c_ts < t1[i]) & (c_end > t0[i]))
        waited[i] = [(c_name[j], int(c_ts[j]), int(c_end[j] - c_ts[j]),
                      int(min(c_end[j], t1[i]) - max(c_ts[j], t0[i]))) for j in hit[np.argsort(c_ts[hit])]]
    return explained, waited


# What the user wrote, for the collector's sync-prone call names.
_API_LABELS = {
    "item": ".item()", "tolist": ".tolist()", "__bool__": "bool(tensor) / `if tensor:`", "__int__": "int(tensor)",
    "__float__": "float(tensor)", "__index__": "tensor as an index", "slice bound (__index__)":
    "tensor as a slice bound (__index__)", "__format__": "formatting a tensor (f-string)", "__repr__": "printing a tensor",
    "__str__": "printing a tensor", "__array__": "np.asarray(tensor)", "numpy": ".numpy()",
    "cpu": ".cpu() device-to-host copy", "to(cpu)": ".to('cpu') device-to-host copy", "nonzero": "nonzero()",
    "argwhere": "argwhere()", "masked_select": "masked_select (output size depends on device data)",
    "unique": "unique() (output size depends on device data)", "unique_consecutive": "unique_consecutive()",
    "bincount": "bincount() (output size depends on device data)", "equal": "torch.equal (a host bool)",
    "allclose": "torch.allclose (a host bool)", "repeat_interleave": "repeat_interleave without output_size",
    "x[mask]": "x[mask] boolean-mask indexing", "where": "torch.where(cond) (nonzero)",
    "copy_ (device -> host)": "copy_ into a host tensor (device-to-host copy)",
}


def _reads_device(trace) -> np.ndarray:
    """Per op: its call is a sync-prone read of a device tensor, not made by a torch component (optimizer,
    grad scaler). A sync-named op inside another call (`one_hot`'s range check, `inverse`'s error check
    on the CPU) is that CPU kernel's implementation, not what the NPU kernel does."""
    return (placement.per_op(trace, "sync", -1) == 1) & ~placement.by_component(trace)


def _add_device_reads(trace, stats, counted_roots: np.ndarray, group_for) -> None:
    calls = trace.calls
    sync = calls["sync"].to_numpy()
    rows = np.flatnonzero((sync == 1) & calls["component"].isna().to_numpy() & (calls["loc"].to_numpy() >= 0))
    if stats.from_ranges:
        rows = rows[calls["step"].to_numpy()[rows] >= 0]
    if not len(rows):
        return
    ops_call = trace.ops["call"].to_numpy()
    already = set(np.unique(ops_call[counted_roots]).tolist())
    loc = calls["loc"].to_numpy()
    api = calls["api"].to_numpy()
    root = calls["root"].to_numpy()
    call_step = calls["step"].to_numpy()
    for c in rows:
        if int(c) in already:
            continue
        g = group_for(-1, "") if loc[c] < 0 else _group_at(group_for, int(loc[c]))
        g["calls"] += 1
        g["events"] += 1
        label = _API_LABELS.get(api[c], str(api[c]))
        g["ops"][label] = g["ops"].get(label, 0) + 1
        g["causes"].add(label)
        g.setdefault("roots", []).append(int(root[c]))
        g.setdefault("steps", set()).add(int(call_step[c]))


def _group_at(group_for, loc: int):
    return group_for(("loc", loc), "")


def _bubbles(trace, rt: pd.DataFrame) -> np.ndarray:
    """Per runtime sync call: the device idle time removing it would recover (ns), estimated as the idle
    gap the sync sits in (from when the device went idle, or the sync began if later, until the next
    device activity after the sync returned), capped at the sync's own blocked time; 0 when the device
    was still busy when the sync returned. Each idle gap is counted once, at its first sync."""
    out = np.zeros(len(rt), dtype=np.int64)
    if not len(rt) or not trace.has_device_timeline:
        return out
    ev = busy_events(trace)
    start = ev["ts"].to_numpy()
    b_s, b_e, _ = merge_intervals(start, start + ev["dur"].to_numpy())
    if not len(b_s):
        return out
    t0 = rt["ts"].to_numpy()
    t1 = t0 + rt["dur"].to_numpy()
    j = np.searchsorted(b_s, t1, side="right") - 1          # last busy group starting at/before the return
    busy_at_return = (j >= 0) & (b_e[np.maximum(j, 0)] > t1)
    nxt = j + 1
    has_next = nxt < len(b_s)
    idle_from = np.where(j >= 0, b_e[np.maximum(j, 0)], t0)
    idle_from = np.maximum(idle_from, t0)
    resume = b_s[np.minimum(nxt, len(b_s) - 1)]
    bub = np.where(~busy_at_return & has_next, resume - idle_from, 0)
    # Without the sync the host would have gone on at t0 instead of t1, so its later launches move
    # earlier by the blocked time: at most that much of the idle gap is recovered.
    bub = np.clip(bub, 0, t1 - t0)
    first_in_gap = ~pd.Series(np.where(bub > 0, nxt, -1 - np.arange(len(nxt)))).duplicated().to_numpy()
    return np.where(first_in_gap, bub, 0).astype(np.int64)


def _site(trace, g, ctx):
    kind, val = g["key"]
    if kind == "loc":
        loc = location(trace, val, ctx.project_root)
        exact = bool(trace.locations["exact"].iat[val]) if val < len(trace.locations) else True
        return loc, f"{loc.file}:{loc.line}" + ("" if exact else f" (in {loc.function})"), exact
    return None, val, False


def _waits_for_text(waits: dict, details: dict, n: int) -> str:
    """Name the collectives the syncs waited for (in start order) into `details`; a title suffix."""
    if not waits:
        return ""
    chain = sorted(waits.items(), key=lambda kv: kv[1]["start_ns"])
    details["waits_for"] = [{"collective": name, "elapsed_us": us(w["elapsed_ns"]),
                             "overlap_us_per_step": us(w["overlap_ns"] / n)} for name, w in chain]
    first, w = chain[0]
    names = first if len(chain) == 1 else f"the chain of {len(chain)} collectives {first} ... {chain[-1][0]}"
    return f", waiting for {names} ({w['elapsed_ns'] / 1e6:,.1f} ms in {first})"


_SCALAR_CONVERSION = re.compile(r"\b(int|float|bool)\(")


def _scalar_read_as_written(cause: str, loc, exact: bool, ctx) -> str:
    """`.item()`, `int(t)` and `float(t)` issue the same op: without the collector's record of the call,
    the source line tells which the user wrote."""
    if cause != SYNC_OPS["aten::item"] or loc is None or not exact:
        return cause
    path = resolve_source(loc.file, ctx.project_root)
    text = source.line_text(path, loc.line) if path is not None else ""
    if ".item(" in text or not _SCALAR_CONVERSION.search(text):
        return cause
    return "int() / float() of a tensor (reads it like .item())"


def _finding(trace, g, stats, ctx):
    n = stats.count
    measured = g["sync_calls"] > 0 or g["device_sync_ns"] > 0
    if not measured and g["calls"] == 0:
        return None
    loc, site, exact = _site(trace, g, ctx)
    calls_ps = g["calls"] / n
    syncs_ps = g["sync_calls"] / n
    blocked_ps = us(g["blocked_ns"] / n)
    causes = sorted(_scalar_read_as_written(c, loc, exact, ctx) for c in g["causes"] if c)
    ops_txt = ", ".join(f"{name} x{cnt}" for name, cnt in sorted(g["ops"].items(), key=lambda x: -x[1]))
    steps_how = (f"over {n} ProfilerStep(s)" if stats.from_ranges else "over the whole trace (no ProfilerStep ranges)")
    where_note = "" if loc is not None else " (no source location in the trace: grouped by operator)"
    if not exact and loc is not None:
        where_note = " (the trace has only python_function frames: the line is the enclosing function's def)"
    details = {"site": site, "causes": causes, "ops": g["ops"], "events": g["events"],
               "calls_per_step": round(calls_ps, 2), "syncs_per_step": round(syncs_ps, 2),
               "blocked_us_per_step": blocked_ps if measured else 0.0, "runtime_calls": g["runtime"],
               "grouped_by": "source line" if loc is not None else "operator"}
    if measured:
        bubble_ps = us(g["bubble_ns"] / n)
        ev = [Evidence("syncs per step", round(syncs_ps, 2), "calls",
                       f"runtime sync calls ({', '.join(f'{k} x{v}' for k, v in g['runtime'].items()) or 'cuda_sync events'}) {steps_how}")]
        if g["calls"]:
            ev.append(Evidence("sync-causing op calls per step", round(calls_ps, 2), "calls", f"{ops_txt} {steps_how}"))
        ev.append(Evidence("host blocked per step", blocked_ps, "us", "sum of the sync calls' durations / steps"))
        if g["max_blocked_ns"]:
            ev.append(Evidence("longest sync", us(g["max_blocked_ns"]), "us", "longest single sync call"))
        if g["device_sync_ns"]:
            ev.append(Evidence("device sync wait per step", us(g["device_sync_ns"] / n), "us",
                               "sum of cuda_sync device events / steps"))
        if trace.has_device_timeline:
            ev.append(Evidence("recoverable device idle per step", bubble_ps, "us",
                               "per sync: the device idle gap around the sync's return (from when the device drained, "
                               "or the sync began, to the next device activity), capped at the sync's blocked time; "
                               "each gap counted once"))
        step_us = stats.mean_ns / 1000.0
        share = (bubble_ps / step_us) if step_us > 0 else 0.0
        title = (f"{g['sync_calls']} device sync{'s' if g['sync_calls'] != 1 else ''} at {site}: "
                 f"{syncs_ps:.1f}/step, host blocked {blocked_ps / 1000:,.2f} ms/step")
        saving = None
        if trace.has_device_timeline:
            explained_ps = us(g["explained_ns"] / n)
            saving = round(max(blocked_ps - explained_ps, 0.0), 3)
            ev.append(Evidence("device work during the syncs per step", explained_ps, "us",
                               "union of device activity (kernels, copies, collectives) inside the sync calls: the "
                               "work the host waited for"))
            ev.append(Evidence("blocked time not explained by device work per step", saving, "us",
                               "host blocked per step minus the device work during the syncs"))
            title += _waits_for_text(g["waits_for"], details, n)
            details["saving_how"] = ("the blocked time not explained by the device work it waits for: removing the "
                                     "sync does not make that work faster, it only frees the host while it runs")
        return Finding(rule="NPA301", category="sync", title=title + where_note,
                       severity=severity_for_share(max(share, blocked_ps / step_us if step_us > 0 else 0.0)),
                       evidence=ev, locations=[loc] if loc else [],
                       estimated_saving_us=saving if saving else None,
                       subject=None if loc else site, details=details)
    # predicted
    on_cpu = not trace.has_device_timeline
    ev = [Evidence("sync-prone calls per step", round(calls_ps, 2), "calls", f"{ops_txt} {steps_how}"),
          Evidence("measured device syncs", 0, "calls",
                   "CPU-only trace: no device to sync with yet" if on_cpu else
                   "no sync runtime call inside these ops: the tensors were on the host in this run")]
    details["note"] = ("costs nothing on the CPU; on an NPU each call blocks until the device queue drains"
                       if on_cpu else "no sync was measured here; a sync if these tensors move to the device")
    saving = None
    if placement.recorded(trace):
        details["placement"] = placement.provenance(trace, g.get("roots", []))
        if on_cpu:
            saving, how = dispatch_cost.syncs(round(calls_ps, 2))
            saving = round(saving, 3)
            ev.append(Evidence("estimated saving per step", saving, "us", how))
        ev.append(Evidence("placement", "device tensor", "", "the read tensor would live on the NPU: "
                           + details["placement"]))
    else:
        details["placement"] = "not recorded: predicted from operator names alone"
        ev.append(Evidence("placement", "not recorded", "", "the trace has no placement records (made without "
                           "npu-advise's collector or before it tracked placement): predicted from operator names"))
    title = f"{calls_ps:.1f} sync-prone call{'s' if calls_ps != 1 else ''}/step at {site} ({', '.join(causes)})"
    severity = ("medium" if calls_ps >= PREDICTED_MEDIUM_PER_STEP else "low") if on_cpu else "info"
    steps_with = len(g.get("steps", ()))
    if stats.from_ranges and (calls_ps < PERIODIC_BELOW_PER_STEP
                              or (stats.count >= 2 and steps_with < PERIODIC_BELOW_PER_STEP * stats.count)):
        # in fewer than half of the recorded steps: periodic work (logging every N steps, an epoch-end
        # checkpoint or validation that fell inside the window), not a per-step cost
        severity = "info"
        details["note"] += (f"; it ran in {steps_with} of the {stats.count} recorded steps (periodic, e.g. logging "
                            "every N steps or epoch-end work)")
    return Finding(rule="NPA302", category="sync", title=title + where_note, severity=severity, evidence=ev,
                   locations=[loc] if loc else [], estimated_saving_us=saving, predicted=True,
                   subject=None if loc else site, details=details)
