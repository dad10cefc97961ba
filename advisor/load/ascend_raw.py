"""What both torch_npu exports (text `trace_view.json`, DB `ascend_pytorch_profiler*.db`) are reduced to
before they become a `Trace`: plain tables with ns times, so one builder (ascend_build) serves both.

Tables (all times int64 ns, absolute):
- host:     cpu_op ranges of the Python process [ts, dur, name, tid, seq, input_dims, call_stack]
            (steps, optimizer annotations and operators together; the builder sorts them out)
- python:   python_function frames [ts, dur, tid, name]
- queue:    torch_npu task-queue ranges [ts, dur, tid, kind ("enqueue"|"dequeue"), corr]: an op enqueued on
            the Python thread is launched later from the dequeue thread; `corr` pairs the two
- runtime:  CANN calls [ts, dur, name, tid, corr]  (`corr` = connection id shared with device tasks)
- kernels:  device tasks and collectives [ts, dur, name, stream, corr, task_type, op_type, core, kind]
- flows:    host op -> device task links [host_ts, host_tid, kernel] (`kernel` = row in `kernels`)
- overlap:  Overlap Analysis ranges [kind, ts, dur]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

HOST_COLUMNS = ("ts", "dur", "name", "tid", "seq", "input_dims", "call_stack")
QUEUE_COLUMNS = ("ts", "dur", "tid", "kind", "corr")
RUNTIME_COLUMNS = ("ts", "dur", "name", "tid", "corr")
KERNEL_COLUMNS = ("ts", "dur", "name", "stream", "corr", "task_type", "op_type", "core", "kind")
FLOW_COLUMNS = ("host_ts", "host_tid", "kernel")
OVERLAP_COLUMNS = ("kind", "ts", "dur")
PEER_WAIT_COLUMNS = ("ts", "dur", "peer")     # HCCL Notify_Wait tasks: this rank waiting for rank `peer`
NOTIFY_WAIT = "Notify_Wait"
PYTHON_COLUMNS = ("ts", "dur", "tid", "name")

# Task types of the HCCL communication tasks on the device streams (notify/record handshakes and the
# copies of a collective). They are represented by their collective (`hcom_*`) instead.
COMM_TASK_TYPES = {"Notify Wait", "Notify Record", "Write Value", "Notify_Wait", "Notify_Record",
                   "EVENT_WAIT_SQE_NOTIFY"}


def empty(columns) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("name", "input_dims", "call_stack", "kind",
                                                           "task_type", "op_type", "core") else np.int64)
                         for c in columns})


@dataclass
class RawProfile:
    host: pd.DataFrame = field(default_factory=lambda: empty(HOST_COLUMNS))
    python: pd.DataFrame = field(default_factory=lambda: empty(PYTHON_COLUMNS))
    queue: pd.DataFrame = field(default_factory=lambda: empty(QUEUE_COLUMNS))
    runtime: pd.DataFrame = field(default_factory=lambda: empty(RUNTIME_COLUMNS))
    kernels: pd.DataFrame = field(default_factory=lambda: empty(KERNEL_COLUMNS))
    flows: pd.DataFrame = field(default_factory=lambda: empty(FLOW_COLUMNS))
    overlap: pd.DataFrame = field(default_factory=lambda: empty(OVERLAP_COLUMNS))
    peer_waits: pd.DataFrame = field(default_factory=lambda: empty(PEER_WAIT_COLUMNS))
    has_cann: bool = False          # the CANN layer (Level1+) was recorded
    metadata: dict = field(default_factory=dict)


def comm_task_mask(kernels: pd.DataFrame) -> np.ndarray:
    """Rows to drop: the per-task pieces of collectives from the device tasks: tasks on a stream that carries
    HCCL handshake tasks and that lie inside a collective's range. The collective itself (kind
    "communication") stays, so busy/communication time is not counted twice."""
    comm = kernels["kind"].to_numpy() == "communication"
    if not comm.any():
        return np.zeros(len(kernels), dtype=bool)
    comm_streams = set(kernels.loc[kernels["task_type"].isin(COMM_TASK_TYPES), "stream"].tolist())
    c_ts = kernels["ts"].to_numpy()[comm]
    c_end = c_ts + kernels["dur"].to_numpy()[comm]
    order = np.argsort(c_ts)
    c_ts, c_end = c_ts[order], np.maximum.accumulate(c_end[order])
    ts = kernels["ts"].to_numpy()
    j = np.searchsorted(c_ts, ts, side="right") - 1
    inside = (j >= 0) & (ts < c_end[np.maximum(j, 0)])
    on_comm_stream = kernels["stream"].isin(comm_streams).to_numpy() | kernels["task_type"].isin(COMM_TASK_TYPES).to_numpy()
    return inside & on_comm_stream & ~comm
