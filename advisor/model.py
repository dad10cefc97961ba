"""The one in-memory model of a profile that every analyzer reads.

Every loader (Kineto JSON, torch_npu text export, torch_npu DB export) produces a `Trace`; analyzers
never look at files. Tables are pandas DataFrames with a fixed set of columns (below), so analyses are
vectorized joins instead of searches.

Conventions, for every table:
- `ts`, `dur` are int64 **nanoseconds**; `ts` is absolute (as in the trace), `end = ts + dur`.
- `name` is a pandas Categorical (names repeat millions of times; codes keep memory bounded).
- `step` is the profiler step number (`ProfilerStep#N`) the event belongs to, -1 when outside any step.
- `loc` is an index into `Trace.locations` (innermost *user* source frame), -1 when unknown.
- Missing integers are -1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

# Column schemas. Loaders must produce exactly these columns (extra format-specific data goes into
# `Trace.extras`), so analyzers can rely on them.
OPS_COLUMNS = {  # host operators: Kineto `cpu_op`/`Operator`, torch_npu `cpu_op` in the Python process
    "ts": "int64", "dur": "int64", "name": "category", "pid": "int64", "tid": "int64",
    "ext_id": "int64",        # Kineto `External id` / NPU flow id: joins an op to the runtime calls it made
    "seq": "int64",           # autograd `Sequence number` (forward/backward pairing), -1 if absent
    "input_dims": "object",   # recorded input shapes as text (e.g. "[[32, 3, 224, 224], []]"), None if absent
    "depth": "int32",         # nesting depth among host ops on the same thread (0 = top level)
    "parent": "int64",        # row index of the innermost enclosing host op on the same thread, -1 at top level
    "step": "int64", "loc": "int64",
    "call": "int64",          # row in `calls` of the collector-recorded torch call that issued the op, -1 if none
}
PYTHON_COLUMNS = {  # python_function frames (with_stack=True); empty when the trace has none
    "ts": "int64", "dur": "int64", "tid": "int64", "py_id": "int64", "parent_id": "int64",
    "file": "object", "line": "int64", "function": "object", "is_user": "bool",
}
RUNTIME_COLUMNS = {  # host runtime/driver API calls: cudaLaunchKernel, hipMemcpy, AscendCL@..., Runtime@...
    "ts": "int64", "dur": "int64", "name": "category", "tid": "int64",
    "corr": "int64",          # correlation id shared with the device activity it launched
    "op": "int64",            # row index in `ops` of the innermost host op enclosing the call, -1 if none
    "step": "int64", "loc": "int64",
}
KERNEL_COLUMNS = {  # device activity: kernels, memcpy, memset, NPU tasks
    "ts": "int64", "dur": "int64", "name": "category",
    "kind": "category",       # kernel | memcpy | memset | sync | communication
    "device": "int64", "stream": "int64", "corr": "int64",
    "core": "category",       # NPU `Accelerator Core` (AI_CORE, AI_CPU, ...); "" on GPUs
    "launch": "int64",        # row index in `runtime` of the launching call, -1 if unknown
    "op": "int64",            # row index in `ops` of the host op that launched it, -1 if unknown
    "step": "int64", "loc": "int64",
}
ANNOTATION_COLUMNS = {  # user_annotation ranges other than steps (e.g. "Optimizer.step#AdamW.step")
    "ts": "int64", "dur": "int64", "name": "object", "tid": "int64", "step": "int64", "on_device": "bool",
}
STEP_COLUMNS = {"step": "int64", "ts": "int64", "dur": "int64"}  # ProfilerStep#N on the host
# Torch calls made from user code, recorded by npu-advise's collector (one per `npa.src:` range), with
# where their tensors would live on the target machine (`npu_advise.load.placement`). Empty for traces
# from other profilers, and without placement columns (-1) for collector traces made before it tracked it.
CALL_COLUMNS = {
    "ts": "int64", "dur": "int64", "tid": "int64", "step": "int64", "loc": "int64",
    "on_device": "int8",      # 1: touched device tensors (launches on the NPU), 0: host tensors only, -1: not recorded
    "sync": "int8",           # sync-prone call: 1 reads a device tensor (a sync on the NPU), 0 reads a host
                              # tensor (none), 2 writes through a mask (never a sync); -1 not sync-prone
    "api": "object",          # what a sync-prone call was (`item`, `x[mask]`, `cpu`), None otherwise
    "component": "object",    # torch component whose code made the call (optimizer, grad_scaler, ...), None
    "root": "int64",          # index into the recorded placement roots (why its tensor is a device tensor)
}
# `exact`: the line is the executing line (collector markers, torch_npu call stacks); False when only the
# enclosing function is known (Kineto python_function events carry the def line).
LOCATION_COLUMNS = {"file": "object", "line": "int64", "function": "object", "exact": "bool"}


_EMPTY_FRAMES: dict = {}


def empty_frame(schema: dict) -> pd.DataFrame:
    # Built once per schema and copied: constructing it took 1.5 ms, and every Trace starts with seven.
    key = tuple(schema.items())
    template = _EMPTY_FRAMES.get(key)
    if template is None:
        template = _EMPTY_FRAMES[key] = pd.DataFrame({c: pd.Series(dtype=t) for c, t in schema.items()})
    return template.copy()


def conform(df: pd.DataFrame, schema: dict) -> pd.DataFrame:
    """Return `df` with exactly the schema's columns, in order, filling missing ones with -1/None."""
    out = {}
    n = len(df)
    for col, dtype in schema.items():
        if col in df.columns:
            s = df[col]
            if dtype == "category" and not isinstance(s.dtype, pd.CategoricalDtype):
                s = s.astype("category")
            elif dtype not in ("category", "object") and s.dtype != dtype:
                s = s.astype(dtype)
            out[col] = s.to_numpy() if dtype not in ("category",) else s.values
        elif dtype == "object":
            out[col] = np.full(n, None, dtype=object)
        elif dtype == "category":
            out[col] = pd.Categorical([""] * n)
        elif dtype == "bool":
            out[col] = np.zeros(n, dtype=bool)
        else:
            out[col] = np.full(n, -1, dtype=dtype)
    return pd.DataFrame(out)


@dataclass
class Trace:
    """One rank's profile."""

    path: str                       # what was loaded (file or folder)
    fmt: str                        # "kineto" | "ascend_text" | "ascend_db"
    device_type: str                # "cpu" | "cuda" | "rocm" | "npu": the accelerator that produced the device timeline
    ops: pd.DataFrame = field(default_factory=lambda: empty_frame(OPS_COLUMNS))
    python: pd.DataFrame = field(default_factory=lambda: empty_frame(PYTHON_COLUMNS))
    runtime: pd.DataFrame = field(default_factory=lambda: empty_frame(RUNTIME_COLUMNS))
    kernels: pd.DataFrame = field(default_factory=lambda: empty_frame(KERNEL_COLUMNS))
    annotations: pd.DataFrame = field(default_factory=lambda: empty_frame(ANNOTATION_COLUMNS))
    steps: pd.DataFrame = field(default_factory=lambda: empty_frame(STEP_COLUMNS))
    locations: pd.DataFrame = field(default_factory=lambda: empty_frame(LOCATION_COLUMNS))
    calls: pd.DataFrame = field(default_factory=lambda: empty_frame(CALL_COLUMNS))
    rank: Optional[int] = None
    world_size: Optional[int] = None
    # Recorded context: device properties, torch/torch_npu versions, environment variables (`env`),
    # profiler configuration, distributed info. Keys are loader-defined but `env` (dict) is shared.
    metadata: dict = field(default_factory=dict)
    # Format-specific tables (e.g. torch_npu `step_trace_time`, `op_statistic`, `overlap`); analyzers
    # that use them must check for presence.
    extras: dict = field(default_factory=dict)
    # Plain-language statements of what this trace lacks and which analyses that prevents.
    limitations: list = field(default_factory=list)

    @property
    def has_device_timeline(self) -> bool:
        return len(self.kernels) > 0

    @property
    def env(self) -> dict:
        return self.metadata.get("env") or {}

    @property
    def placement_recorded(self) -> bool:
        """Whether the collector recorded where each call's tensors would live (see CALL_COLUMNS)."""
        return bool(len(self.calls)) and bool((self.calls["on_device"].to_numpy() >= 0).any())

    @property
    def placement_inferred(self) -> bool:
        """Placement was inferred by tracking (a CPU run), not read from real tensor devices."""
        return bool((self.metadata.get("placement") or {}).get("inferred", True))

    def placement_root(self, root: int) -> Optional[str]:
        """Why a tensor was taken to be a device tensor (a recorded root description), or None."""
        roots = (self.metadata.get("placement") or {}).get("roots") or []
        return str(roots[root]) if 0 <= root < len(roots) else None

    def step_ids(self) -> np.ndarray:
        return self.steps["step"].to_numpy()

    def analysis_steps(self) -> pd.DataFrame:
        """The steps that analyses average over: all recorded ProfilerStep ranges."""
        return self.steps

    def location(self, loc: int) -> Optional[dict]:
        if loc is None or loc < 0 or loc >= len(self.locations):
            return None
        row = self.locations.iloc[int(loc)]
        return {"file": row["file"], "line": int(row["line"]), "function": row["function"]}


def merge_intervals(start: np.ndarray, end: np.ndarray):
    """Union of intervals, vectorized (HTA's idiom): sorted by start, a running max of the ends; a new
    group begins where a start exceeds the running max so far. Returns (starts, ends, first_row): the
    disjoint sorted union and, per group, the input row of the interval that opens it."""
    if len(start) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    order = np.argsort(start, kind="stable")
    s = start[order]
    e = end[order]
    run_max = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > run_max[:-1]
    first = np.flatnonzero(new)
    return s[first], np.maximum.reduceat(e, first), order[first]


def covered_before(starts: np.ndarray, ends: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each instant in `x`: the total length of the (sorted, disjoint) intervals before it. The covered
    length inside [a, b) is covered_before(b) - covered_before(a), for many ranges at once."""
    x = np.asarray(x, dtype=np.int64)
    if len(starts) == 0:
        return np.zeros(len(x), dtype=np.int64)
    cum = np.concatenate(([0], np.cumsum(ends - starts)))
    j = np.searchsorted(starts, x, side="right") - 1
    jc = np.maximum(j, 0)
    inside = np.clip(x - starts[jc], 0, ends[jc] - starts[jc])
    return np.where(j >= 0, cum[jc] + inside, 0)


def assign_steps(ts: np.ndarray, steps: pd.DataFrame) -> np.ndarray:
    """Step number of each timestamp (ns) by the host step ranges; -1 outside every step."""
    if len(steps) == 0 or len(ts) == 0:
        return np.full(len(ts), -1, dtype=np.int64)
    order = np.argsort(steps["ts"].to_numpy(), kind="stable")
    starts = steps["ts"].to_numpy()[order]
    ends = starts + steps["dur"].to_numpy()[order]
    ids = steps["step"].to_numpy()[order]
    idx = np.searchsorted(starts, ts, side="right") - 1
    ok = idx >= 0
    idx_c = np.where(ok, idx, 0)
    ok &= ts < ends[idx_c]
    return np.where(ok, ids[idx_c], -1).astype(np.int64)


def nesting(ts: np.ndarray, end: np.ndarray, key: np.ndarray):
    """Depth and parent (row index, -1 for top level) of properly nested intervals grouped by `key`.

    Vectorized: sorted by (key, start, longer first), the depth of an interval is the number of
    same-key intervals started before it minus those already ended at its start; its parent is the
    last interval one level up that started before it.
    """
    n = len(ts)
    depth = np.zeros(n, dtype=np.int32)
    parent = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return depth, parent
    order = np.lexsort((-(end - ts), ts, key))
    k_sorted = key[order]
    cuts = np.flatnonzero(np.diff(k_sorted)) + 1
    for grp in np.split(order, cuts):
        s = ts[grp]
        e = end[grp]
        ends_sorted = np.sort(e)
        d = np.arange(len(grp)) - np.searchsorted(ends_sorted, s, side="right")
        d = np.maximum(d, 0)
        depth[grp] = d
        for level in range(1, int(d.max()) + 1 if len(d) else 0):
            up = np.flatnonzero(d == level - 1)
            here = np.flatnonzero(d == level)
            if len(up) == 0 or len(here) == 0:
                continue
            j = np.searchsorted(up, here, side="left") - 1
            ok = j >= 0
            parent[grp[here[ok]]] = grp[up[j[ok]]]
    return depth, parent


def thread_key(pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """One int64 per (pid, tid) pair, equal exactly for equal pairs: the grouping key of host-op nesting."""
    pid = np.asarray(pid, dtype=np.int64)
    tid = np.asarray(tid, dtype=np.int64)
    if len(pid) == 0 or pid.min() == pid.max():
        return tid
    # Few distinct pids: combine their dense codes with the tid offset (no string or MultiIndex work).
    pids, pid_code = np.unique(pid, return_inverse=True)
    lo, hi = int(tid.min()), int(tid.max())
    span = hi - lo + 1
    if span * len(pids) < (1 << 62):
        return pid_code.astype(np.int64) * span + (tid - lo)
    pairs = np.unique(np.stack([pid, tid], axis=1), axis=0, return_inverse=True)[1]
    return pairs.reshape(-1).astype(np.int64)


def op_tree(ops: pd.DataFrame):
    """(depth, parent) of the host ops: the loader's columns when present (computed once per trace),
    else by `nesting` per (pid, tid). `parent` holds row positions in the whole `trace.ops`: a row subset
    (its index no longer 0..n-1) gets its own tree computed."""
    idx = ops.index
    whole = isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
    if whole and "parent" in ops.columns and "depth" in ops.columns:
        return ops["depth"].to_numpy(), ops["parent"].to_numpy()
    ts = ops["ts"].to_numpy()
    return nesting(ts, ts + ops["dur"].to_numpy(), thread_key(ops["pid"].to_numpy(), ops["tid"].to_numpy()))


def innermost_enclosing(outer_ts: np.ndarray, outer_end: np.ndarray, outer_key: np.ndarray,
                        inner_ts: np.ndarray, inner_key: np.ndarray, outer_depth: np.ndarray = None) -> np.ndarray:
    """For each inner event, the row of the innermost outer interval (same key, e.g. thread) that
    contains its start; -1 if none. Outer intervals on one key must be properly nested.
    `outer_depth`: the outer intervals' depth from `nesting`, if the caller has it already.

    Per nesting level, the only candidate is the last interval of that level starting at or before
    the instant; nested intervals make containment monotone in depth, so the deepest level whose
    candidate still contains the instant wins.
    """
    result = np.full(len(inner_ts), -1, dtype=np.int64)
    if len(outer_ts) == 0 or len(inner_ts) == 0:
        return result
    depth = outer_depth if outer_depth is not None else nesting(outer_ts, outer_end, outer_key)[0]
    for key in np.unique(outer_key):
        i_idx = np.flatnonzero(inner_key == key)
        if len(i_idx) == 0:
            continue
        o_idx = np.flatnonzero(outer_key == key)
        t = inner_ts[i_idx]
        for level in range(int(depth[o_idx].max()) + 1):
            lv = o_idx[depth[o_idx] == level]
            lv = lv[np.argsort(outer_ts[lv], kind="stable")]
            j = np.searchsorted(outer_ts[lv], t, side="right") - 1
            ok = j >= 0
            cand = lv[np.where(ok, j, 0)]
            ok &= outer_end[cand] > t
            if not ok.any():
                break
            result[i_idx[ok]] = cand[ok]
    return result
