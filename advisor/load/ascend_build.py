"""Turn a RawProfile (from either torch_npu export) into the shared trace model.

Joins, all vectorized:
- host ops: `cpu_op` ranges minus `ProfilerStep#N` (-> steps) and `Name#Method` annotations such as
  `Optimizer.step#SGD.step` (-> annotations); depth and step by nesting.
- runtime (CANN calls): `op` = innermost host op on the same thread. Calls made from torch_npu's
  task-queue thread have no enclosing op there: they lie inside a `Dequeue` range whose correlation id
  names the `Enqueue` range on the Python thread, and the op enclosing that `Enqueue` is the launcher.
- kernels (device tasks, collectives): `launch` = the CANN call with the same connection id; `op` = the
  host op at the start of the task's `async_npu` flow (else the launching call's op); step = the step of
  that host code, else by the task's own time.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .. import model
from . import ascend_raw as R
from .locations import attach_locations, is_user_file

STEP_NAME = re.compile(r"^ProfilerStep#(\d+)$")
# record_function ranges torch names "Class.method#Impl.method" (Optimizer.step#SGD.step, ...)
ANNOTATION_NAME = re.compile(r"^[A-Za-z_][\w.]*#[A-Za-z_][\w.]*$")
_PLACEHOLDER_TASKS = {"PROFILING_ENABLE", "PROFILING_DISABLE"}
_MEMCPY_TASKS = {"MEMCPY_ASYNC", "PCIE_DMA_SQE", "MEMCPY"}
_SYNC_TASKS = {"EVENT_RECORD", "EVENT_WAIT", "EVENT_RECORD_SQE", "EVENT_WAIT_SQE"}
_CORE_TASK_TYPES = {"AI_CORE", "AI_CPU", "AI_VECTOR_CORE", "MIX_AIC", "MIX_AIV"}
# DB task-type names of the same cores
_CORE_OF_TASK = {**{c: c for c in _CORE_TASK_TYPES}, "KERNEL_AICORE": "AI_CORE", "KERNEL_AIVEC": "AI_VECTOR_CORE",
                 "KERNEL_AICPU": "AI_CPU"}


def build_trace(raw: R.RawProfile, path: str, fmt: str, kernel_details: pd.DataFrame | None = None) -> model.Trace:
    host = raw.host.sort_values("ts", kind="stable").reset_index(drop=True)
    names = host["name"].astype(str)
    step_num = names.str.extract(STEP_NAME, expand=False)
    is_step = step_num.notna().to_numpy()
    is_annot = names.str.match(ANNOTATION_NAME).to_numpy() & ~is_step
    steps = pd.DataFrame({"step": step_num[is_step].astype(np.int64).to_numpy(),
                          "ts": host["ts"].to_numpy()[is_step], "dur": host["dur"].to_numpy()[is_step]})
    steps = model.conform(steps.sort_values("ts").drop_duplicates("step").reset_index(drop=True), model.STEP_COLUMNS)

    ann = host[is_annot]
    annotations = pd.DataFrame({"ts": ann["ts"].to_numpy(), "dur": ann["dur"].to_numpy(),
                                "name": ann["name"].astype(str).to_numpy(dtype=object), "tid": ann["tid"].to_numpy()})
    annotations["step"] = model.assign_steps(annotations["ts"].to_numpy(), steps)

    o = host[~is_step & ~is_annot].reset_index(drop=True)
    ops = pd.DataFrame({"ts": o["ts"].to_numpy(np.int64), "dur": o["dur"].to_numpy(np.int64),
                        "name": pd.Categorical(o["name"].astype(str)), "pid": np.zeros(len(o), np.int64),
                        "tid": o["tid"].to_numpy(np.int64), "ext_id": np.full(len(o), -1, np.int64),
                        "seq": o["seq"].to_numpy(np.int64), "input_dims": o["input_dims"].to_numpy(dtype=object)})
    o_ts = ops["ts"].to_numpy()
    o_end = o_ts + ops["dur"].to_numpy()
    o_tid = ops["tid"].to_numpy()
    ops["depth"], ops["parent"] = model.nesting(o_ts, o_end, o_tid)   # pid is 0 for every op: tid is the thread
    ops["step"] = model.assign_steps(o_ts, steps)

    def op_at(ts, tid):
        return model.innermost_enclosing(o_ts, o_end, o_tid, np.asarray(ts, np.int64), np.asarray(tid, np.int64))

    runtime = raw.runtime.sort_values("ts", kind="stable").reset_index(drop=True)
    rt = pd.DataFrame({"ts": runtime["ts"].to_numpy(np.int64), "dur": runtime["dur"].to_numpy(np.int64),
                       "name": pd.Categorical(runtime["name"].astype(str)), "tid": runtime["tid"].to_numpy(np.int64),
                       "corr": runtime["corr"].to_numpy(np.int64)})
    rt_op = op_at(rt["ts"], rt["tid"])
    rt_host_ts = rt["ts"].to_numpy().copy()      # when the host code that caused the call ran
    _through_queue(raw.queue, rt, rt_op, rt_host_ts, op_at)
    rt["op"] = rt_op
    rt["step"] = model.assign_steps(rt_host_ts, steps)

    kernels = _kernels(raw, rt, rt_host_ts, op_at, steps, kernel_details)

    trace = model.Trace(path=str(path), fmt=fmt, device_type="npu")
    trace.steps = steps
    trace.ops = ops
    trace.python = _python_frames(raw.python)
    trace.runtime = rt
    trace.kernels = kernels
    trace.annotations = model.conform(annotations, model.ANNOTATION_COLUMNS)
    attach_locations(trace, call_stacks=o["call_stack"].to_numpy(dtype=object))
    trace.ops = model.conform(trace.ops, model.OPS_COLUMNS)
    trace.runtime = model.conform(trace.runtime, model.RUNTIME_COLUMNS)
    kinds_extra = kernels.attrs.get("op_type")
    trace.kernels = model.conform(trace.kernels, model.KERNEL_COLUMNS)
    trace.python = model.conform(trace.python, model.PYTHON_COLUMNS)
    # Full Python call stacks of the host ops (row-aligned with `ops`), for findings that show them.
    trace.extras["call_stacks"] = o["call_stack"].to_numpy(dtype=object)
    # The operator type of each device task (TransData, Conv2D, ...; row-aligned with `kernels`).
    trace.extras["kernel_types"] = pd.Series(kinds_extra, dtype=object)
    if len(raw.peer_waits):
        trace.extras["peer_waits"] = raw.peer_waits.sort_values("ts").reset_index(drop=True)
    if len(raw.overlap):
        trace.extras["overlap"] = raw.overlap[["kind", "ts", "dur"]].sort_values("ts").reset_index(drop=True)
    return trace


def _through_queue(queue: pd.DataFrame, rt: pd.DataFrame, rt_op: np.ndarray, rt_host_ts: np.ndarray, op_at):
    """Calls on the task-queue thread: Dequeue range -> correlation id -> Enqueue range -> its host op."""
    if len(queue) == 0 or len(rt) == 0:
        return
    deq = queue[queue["kind"] == "dequeue"].reset_index(drop=True)
    enq = queue[queue["kind"] == "enqueue"].drop_duplicates("corr").set_index("corr")
    if len(deq) == 0 or len(enq) == 0:
        return
    need = np.flatnonzero(rt_op < 0)
    d_ts = deq["ts"].to_numpy()
    hit = model.innermost_enclosing(d_ts, d_ts + deq["dur"].to_numpy(), deq["tid"].to_numpy(),
                                    rt["ts"].to_numpy()[need], rt["tid"].to_numpy()[need])
    ok = hit >= 0
    corr = deq["corr"].to_numpy()[hit[ok]]
    e = enq.reindex(corr)
    found = e["ts"].notna().to_numpy()
    rows = need[ok][found]
    e_ts = e["ts"].to_numpy()[found].astype(np.int64)
    rt_op[rows] = op_at(e_ts, e["tid"].to_numpy()[found].astype(np.int64))
    rt_host_ts[rows] = e_ts


def _kernels(raw, rt, rt_host_ts, op_at, steps, kernel_details) -> pd.DataFrame:
    k = raw.kernels.reset_index(drop=True)
    keep = ~R.comm_task_mask(k) & ~k["name"].isin(_PLACEHOLDER_TASKS).to_numpy()
    new_row = np.cumsum(keep) - 1
    flows = raw.flows[keep[raw.flows["kernel"].to_numpy()]] if len(raw.flows) else raw.flows
    k = k[keep].reset_index(drop=True)
    n = len(k)
    core = k["core"].fillna("").astype(str).to_numpy(dtype=object)
    op_type = k["op_type"].to_numpy(dtype=object).copy()
    if kernel_details is not None and len(kernel_details) and "start_ns" in kernel_details:
        core, op_type = _join_kernel_details(k, kernel_details, core, op_type)
    task_type = k["task_type"].fillna("").astype(str).to_numpy(dtype=object)
    fallback = (core == "") & np.isin(task_type, list(_CORE_OF_TASK))
    core[fallback] = [_CORE_OF_TASK[t] for t in task_type[fallback]]
    name = k["name"].astype(str).to_numpy(dtype=object)
    kind = k["kind"].to_numpy(dtype=object).copy()
    is_kernel = kind == "kernel"
    kind[is_kernel & (np.isin(name, list(_MEMCPY_TASKS)) | np.isin(task_type, list(_MEMCPY_TASKS)))] = "memcpy"
    kind[is_kernel & (np.isin(name, list(_SYNC_TASKS)) | np.isin(task_type, list(_SYNC_TASKS)))] = "sync"
    core[kind == "communication"] = "HCCL"

    # Launching CANN call by connection id.
    launch = np.full(n, -1, np.int64)
    if len(rt):
        idx = pd.Series(np.arange(len(rt)), index=rt["corr"].to_numpy())
        idx = idx[(idx.index >= 0) & ~idx.index.duplicated()]
        hit = idx.reindex(k["corr"].to_numpy())
        ok = hit.notna().to_numpy() & (k["corr"].to_numpy() >= 0)
        launch[ok] = hit.to_numpy()[ok].astype(np.int64)
    has = launch >= 0
    lc = np.where(has, launch, 0)
    op = np.where(has, rt["op"].to_numpy()[lc] if len(rt) else -1, -1).astype(np.int64)
    host_ts = np.where(has, rt_host_ts[lc] if len(rt) else -1, -1).astype(np.int64)
    # async_npu flows name the host op directly (they exist at Level0 too, without CANN calls).
    if len(flows):
        f_row = new_row[flows["kernel"].to_numpy()]
        f_op = op_at(flows["host_ts"].to_numpy(), flows["host_tid"].to_numpy())
        good = f_op >= 0
        op[f_row[good]] = f_op[good]
        host_ts[f_row] = flows["host_ts"].to_numpy()
    step = np.where(host_ts >= 0, model.assign_steps(host_ts, steps), model.assign_steps(k["ts"].to_numpy(), steps))
    streams = k["stream"].to_numpy(np.int64)
    out = pd.DataFrame({"ts": k["ts"].to_numpy(np.int64), "dur": k["dur"].to_numpy(np.int64),
                        "name": pd.Categorical(name), "kind": pd.Categorical(kind.astype(str)),
                        "device": np.zeros(n, np.int64), "stream": streams, "corr": k["corr"].to_numpy(np.int64),
                        "core": pd.Categorical(core.astype(str)), "launch": launch, "op": op, "step": step})
    out.attrs["op_type"] = op_type
    return out


def has_kernel_keys(details) -> bool:
    """kernel_details.csv is there with the columns it is joined on."""
    return details is not None and {"start_ns", "Name"} <= set(details.columns)


def _join_kernel_details(k, details: pd.DataFrame, core, op_type):
    """Accelerator Core and Type from kernel_details.csv, joined on (start ns, name)."""
    if not has_kernel_keys(details):
        return core, op_type
    d = details[["start_ns", "Name"] + [c for c in ("Accelerator Core", "Type") if c in details]]
    d = d.drop_duplicates(["start_ns", "Name"])
    key = pd.MultiIndex.from_arrays([k["ts"].to_numpy(np.int64), k["name"].astype(str).to_numpy()])
    dk = d.set_index(["start_ns", "Name"])
    hit = dk.reindex(key)
    if "Accelerator Core" in hit:
        c = hit["Accelerator Core"].to_numpy(dtype=object)
        ok = pd.notna(c)
        core = core.copy()
        core[ok] = c[ok]
    if "Type" in hit:
        t = hit["Type"].to_numpy(dtype=object)
        ok = pd.notna(t)
        op_type[ok] = t[ok]
    return core, op_type


def _python_frames(py: pd.DataFrame) -> pd.DataFrame:
    names = pd.Series(py["name"].astype(str).to_numpy())
    parsed = names.str.extract(r"^(?P<file>.*)\((?P<line>\d+)\): (?P<function>.*)$")
    files = parsed["file"].fillna("")
    user_of = {f: is_user_file(f) for f in files.unique()}
    return pd.DataFrame({
        "ts": py["ts"].to_numpy(np.int64), "dur": py["dur"].to_numpy(np.int64), "tid": py["tid"].to_numpy(np.int64),
        "py_id": np.full(len(py), -1, np.int64), "parent_id": np.full(len(py), -1, np.int64),
        "file": parsed["file"].to_numpy(dtype=object),
        "line": pd.to_numeric(parsed["line"], errors="coerce").fillna(-1).astype(np.int64).to_numpy(),
        "function": parsed["function"].fillna(names).to_numpy(dtype=object),
        "is_user": files.map(user_of).to_numpy(dtype=bool),
    })
