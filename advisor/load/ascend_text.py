"""Read a torch_npu `trace_view.json` (text export) into a RawProfile.

The file is a top-level JSON array of chrome-trace events whose `ts` is a *string* of µs with three
decimals; it is parsed to int ns from the string (float64 would lose the last digits at today's
epochs). Events are streamed piece by piece (jsonstream.ChunkedArray) into typed msgspec structs;
counters (`ph: C`) are dropped on the spot, so memory follows the kept events only.

Which process an event belongs to is known only from `process_name` metadata, which may come after
the events; events are therefore kept with their pid and classified at the end.
"""
from __future__ import annotations

import re
from typing import Optional, Union

import msgspec
import numpy as np
import pandas as pd

from ..errors import TraceFormatError
from . import ascend_raw as R
from .jsonstream import ChunkedArray

_Id = Union[int, str, None]


class TvArgs(msgspec.Struct):
    call_stack: Optional[str] = msgspec.field(name="Call stack", default=None)
    input_dims: msgspec.Raw = msgspec.field(name="Input Dims", default=msgspec.Raw(b""))
    seq: Optional[int] = msgspec.field(name="Sequence number", default=-1)
    connection_id: _Id = -1
    correlation_id: _Id = -1
    task_type: Optional[str] = msgspec.field(name="Task Type", default="")
    # HCCL plane tasks; kept raw (any JSON type) and decoded only for HCCL events
    hccl_task: msgspec.Raw = msgspec.field(name="task type", default=msgspec.Raw(b""))
    dst_rank: msgspec.Raw = msgspec.field(name="dst rank", default=msgspec.Raw(b""))
    name: Optional[str] = ""          # process_name / thread_name metadata


class TvEvent(msgspec.Struct):
    ph: str = ""
    name: str = ""
    cat: Optional[str] = None
    pid: Union[int, str] = 0
    tid: Union[int, str] = 0
    ts: Union[str, float, int, None] = None
    dur: Union[float, int, str, None] = 0.0
    id: _Id = None
    args: Optional[TvArgs] = None


_decoder = msgspec.json.Decoder(list[TvEvent])


def _decode_piece(data: bytes) -> list:
    return _decoder.decode(data)


_US_STRING = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")


def ts_ns(v) -> int:
    """µs (string "1736408883704643.212" or number) -> int ns, exact for strings."""
    if isinstance(v, str):
        s = v.strip()
        whole, _, frac = s.partition(".")
        neg = whole.startswith("-")
        if not _US_STRING.fullmatch(s):
            raise ValueError(f"timestamp {s[:40]!r} is not a number of microseconds")
        digits = (frac + "0000")[:4]
        val = int(whole.lstrip("-") or "0") * 1000 + (int(digits) + 5) // 10
        return -val if neg else val
    if v is None:
        return -1
    return int(round(float(v) * 1000.0))


def _dur_ns(v) -> int:
    if v is None:
        return 0
    if isinstance(v, str):
        return ts_ns(v)
    return int(round(v * 1000.0))


def _int(v) -> int:
    if v is None:
        return -1
    if isinstance(v, int):
        return v
    try:
        return int(v)
    except ValueError:
        return -1


def _raw_value(raw: msgspec.Raw):
    b = bytes(raw)
    try:
        return msgspec.json.decode(b) if b else None
    except msgspec.DecodeError:
        return None


def _peer(raw: msgspec.Raw) -> int:
    v = _raw_value(raw)
    return v if isinstance(v, int) and not isinstance(v, bool) else _int(v) if isinstance(v, str) else -1


def _dims_text(raw: msgspec.Raw):
    b = bytes(raw)
    if not b:
        return None
    if b[:1] == b'"':
        return msgspec.json.decode(b)
    return b.decode()


class _Collector:
    def __init__(self):
        self.x = {k: [] for k in ("pid", "tid", "name", "cat", "ts", "dur", "args")}
        self.flow_s = {}          # async_npu id -> (pid, tid, ts)
        self.flow_f = {}          # async_npu id -> (pid, tid, ts)
        self.process = {}         # pid -> name
        self.thread = {}          # (pid, tid) -> name

    def add(self, events: list):
        x = self.x
        for e in events:
            ph = e.ph
            if ph == "X":
                x["pid"].append(e.pid)
                x["tid"].append(e.tid)
                x["name"].append(e.name)
                x["cat"].append(e.cat)
                x["ts"].append(ts_ns(e.ts))
                x["dur"].append(_dur_ns(e.dur))
                x["args"].append(e.args)
            elif ph == "s" or ph == "f":
                if e.cat == "async_npu":
                    (self.flow_s if ph == "s" else self.flow_f)[e.id] = (e.pid, e.tid, ts_ns(e.ts))
            elif ph == "M" and e.args is not None:
                if e.name == "process_name":
                    self.process[e.pid] = e.args.name
                elif e.name == "thread_name":
                    self.thread[(e.pid, e.tid)] = e.args.name


def read_trace_view(path) -> R.RawProfile:
    col = _Collector()
    try:
        for events in ChunkedArray(str(path), _decode_piece):
            col.add(events)
    except (msgspec.ValidationError, ValueError) as exc:
        raise TraceFormatError(f"{path}: not a torch_npu trace_view.json ({exc})") from None
    if not col.x["ts"]:
        raise TraceFormatError(f"{path}: the trace holds no profiler events")
    return _classify(col, str(path))


def _classify(col: _Collector, path: str) -> R.RawProfile:
    x = col.x
    n = len(x["ts"])
    pid = np.asarray(x["pid"], dtype=object)
    proc = np.asarray([col.process.get(p, "") for p in x["pid"]], dtype=object)
    cat = np.asarray([c or "" for c in x["cat"]], dtype=object)
    try:
        ts = np.asarray(x["ts"], dtype=np.int64)
        dur = np.asarray(x["dur"], dtype=np.int64)
    except OverflowError:
        raise TraceFormatError(f"{path}: a timestamp or duration beyond the year 2262 (int64 ns): "
                               "not a profiler time") from None
    name = np.asarray(x["name"], dtype=object)
    args = x["args"]
    raw = R.RawProfile()
    if not col.process:
        raise TraceFormatError(f"{path}: no process_name metadata: not a torch_npu trace_view.json")
    python_pids = {p for p, nm in col.process.items() if nm == "Python"}
    # Older torch_npu traces name the host process by its pid only; host events are the ones with cats.
    is_py = np.isin(pid, list(python_pids)) if python_pids else np.isin(cat, ["cpu_op", "python_function"])

    def rows(mask):
        return np.flatnonzero(mask)

    def tids(idx):
        return np.asarray([_int(x["tid"][i]) for i in idx], dtype=np.int64)

    h = rows(is_py & (cat == "cpu_op"))
    raw.host = pd.DataFrame({
        "ts": ts[h], "dur": dur[h], "name": name[h], "tid": tids(h),
        "seq": np.asarray([(_int(args[i].seq) if args[i] is not None else -1) for i in h], dtype=np.int64),
        "input_dims": np.asarray([_dims_text(args[i].input_dims) if args[i] is not None else None for i in h], dtype=object),
        "call_stack": np.asarray([(args[i].call_stack or None) if args[i] is not None else None for i in h], dtype=object),
    })
    p = rows(is_py & (cat == "python_function"))
    raw.python = pd.DataFrame({"ts": ts[p], "dur": dur[p], "tid": tids(p), "name": name[p]})
    q = rows(is_py & np.isin(cat, ["enqueue", "dequeue"]))
    raw.queue = pd.DataFrame({"ts": ts[q], "dur": dur[q], "tid": tids(q), "kind": cat[q],
                              "corr": np.asarray([_int(args[i].correlation_id) if args[i] is not None else -1
                                                  for i in q], dtype=np.int64)})
    c = rows(proc == "CANN")
    raw.has_cann = "CANN" in col.process.values() and len(c) > 0
    raw.runtime = pd.DataFrame({"ts": ts[c], "dur": dur[c], "name": name[c], "tid": tids(c),
                                "corr": np.asarray([_int(args[i].connection_id) if args[i] is not None else -1
                                                    for i in c], dtype=np.int64)})

    # Device tasks: every Ascend Hardware range, plus the collectives of the HCCL process (its
    # "Group ... Communication" thread; the "Plane" threads repeat the tasks already on the streams).
    hw = proc == "Ascend Hardware"
    group_threads = {k for k, v in col.thread.items() if v and "Communication" in v and col.process.get(k[0]) == "HCCL"}
    is_coll = np.asarray([(x["pid"][i], x["tid"][i]) in group_threads for i in range(n)], dtype=bool) \
        if group_threads else (proc == "HCCL") & np.asarray([str(v).startswith("hcom_") for v in name], dtype=bool)
    k = rows(hw | is_coll)
    task_type = np.asarray([(args[i].task_type or "") if args[i] is not None else "" for i in k], dtype=object)
    kernels = pd.DataFrame({
        "ts": ts[k], "dur": dur[k], "name": name[k],
        # collectives live on the HCCL process's own thread ids, not on device streams
        "stream": np.where(is_coll[k], -1, tids(k)),
        "corr": np.asarray([_int(args[i].connection_id) if args[i] is not None else -1 for i in k], dtype=np.int64),
        "task_type": task_type, "op_type": np.full(len(k), None, dtype=object),
        "core": np.full(len(k), "", dtype=object),
        "kind": np.where(is_coll[k], "communication", "kernel").astype(object),
    })
    raw.kernels = kernels
    # Flows: async_npu start (host op, by thread and time) -> finish (device task, by pid/tid/ts).
    key_of_row = {(x["pid"][i], x["tid"][i], int(ts[i])): j for j, i in enumerate(k)}
    host_ts, host_tid, kern = [], [], []
    for fid, (spid, stid, sts) in col.flow_s.items():
        f = col.flow_f.get(fid)
        if f is None:
            continue
        j = key_of_row.get(f)
        if j is None:
            continue
        host_ts.append(sts)
        host_tid.append(_int(stid))
        kern.append(j)
    raw.flows = pd.DataFrame({"host_ts": np.asarray(host_ts, dtype=np.int64),
                              "host_tid": np.asarray(host_tid, dtype=np.int64),
                              "kernel": np.asarray(kern, dtype=np.int64)})
    # HCCL "Plane" threads: a Notify_Wait is this rank waiting for the peer rank of that link.
    w = rows((proc == "HCCL") & ~np.isin(np.arange(n), k))
    w = w[[args[i] is not None and _raw_value(args[i].hccl_task) == R.NOTIFY_WAIT for i in w]]
    raw.peer_waits = pd.DataFrame({"ts": ts[w], "dur": dur[w],
                                   "peer": np.asarray([_peer(args[i].dst_rank) for i in w], dtype=np.int64)})
    o = rows(proc == "Overlap Analysis")
    thread = [col.thread.get((x["pid"][i], x["tid"][i])) or x["name"][i] for i in o]
    raw.overlap = pd.DataFrame({"kind": np.asarray(thread, dtype=object), "ts": ts[o], "dur": dur[o]})
    raw.metadata["process_names"] = {str(k_): v for k_, v in col.process.items()}
    return raw
