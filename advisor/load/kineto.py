"""Load a torch.profiler (Kineto) chrome trace into the trace model.

Accepts `.json` / `.json.gz`, a `{"traceEvents": [...]}` object or a bare array, µs timestamps with
fractional (ns) parts, the 2021 category names (`Operator`, `Runtime`, `Kernel`, `Memcpy`, `Memset`),
CUDA and ROCm (`hip*`) runtimes.

Speed: events are decoded by msgspec into typed structs piece by piece (see jsonstream), turned into
columns with `astuple` + `zip` (C loops), names int-encoded per piece; all joins (steps, launches,
source locations) are vectorized.
"""
from __future__ import annotations

import re
from typing import Optional, Union

import msgspec
import numpy as np
import pandas as pd

from .. import model
from ..errors import TraceFormatError
from .columns import ColumnBuilder
from .jsonstream import ChunkedArray
from .locations import attach_locations

# Categories we keep, by role. Everything else (flows, instant/memory events, counters) is skipped.
OP_CATS = ("cpu_op", "Operator", "operator")
PY_CATS = ("python_function",)
RUNTIME_CATS = ("cuda_runtime", "cuda_driver", "Runtime", "runtime")
KERNEL_KIND = {"kernel": "kernel", "Kernel": "kernel", "gpu_memcpy": "memcpy", "Memcpy": "memcpy",
               "gpu_memset": "memset", "Memset": "memset", "cuda_sync": "sync"}
ANNOT_CATS = ("user_annotation", "gpu_user_annotation")
_KEEP = set(OP_CATS + PY_CATS + RUNTIME_CATS + ANNOT_CATS) | set(KERNEL_KIND)

STEP_NAME = re.compile(r"^ProfilerStep#(\d+)$")
SOURCE_MARKER = "npa.src:"   # ranges our collector wraps around each torch call: npa.src:FILE:LINE:FUNC


class Args(msgspec.Struct):
    external_id: int = msgspec.field(name="External id", default=-1)
    correlation: int = -1
    python_id: int = msgspec.field(name="Python id", default=-1)
    python_parent_id: Optional[int] = msgspec.field(name="Python parent id", default=-1)
    input_dims: msgspec.Raw = msgspec.field(name="Input Dims", default=msgspec.Raw(b""))
    stream: int = -1
    device: int = -1
    seq: int = msgspec.field(name="Sequence number", default=-1)
    call_stack: str = msgspec.field(name="Call stack", default="")
    name: str = ""            # metadata events: process/thread names


_NO_ARGS = Args()
_ARG_FIELDS = Args.__struct_fields__


class Event(msgspec.Struct):
    ph: str = ""
    cat: str = ""
    name: str = ""
    ts: float = -1.0
    dur: float = 0.0
    pid: Union[int, str] = 0
    tid: Union[int, str] = 0
    args: Optional[Args] = None


_typed = msgspec.json.Decoder(list[Event])
_untyped = msgspec.json.Decoder()


def _decode_piece(data: bytes) -> list:
    try:
        return _typed.decode(data)
    except msgspec.ValidationError:
        # A trace with unexpected field types (a string id, say): decode loosely and coerce.
        return [_coerce(e) for e in _untyped.decode(data) if isinstance(e, dict)]


def _coerce(e: dict) -> Event:
    def num(v, default):
        try:
            return float(v)
        except (TypeError, ValueError):
            return default

    def integer(v):
        try:
            return int(v)
        except (TypeError, ValueError):
            return -1

    a = e.get("args")
    args = None
    if isinstance(a, dict):
        dims = a.get("Input Dims")
        args = Args(
            external_id=integer(a.get("External id")), correlation=integer(a.get("correlation")),
            python_id=integer(a.get("Python id")), python_parent_id=integer(a.get("Python parent id")),
            input_dims=msgspec.Raw(msgspec.json.encode(dims)) if dims is not None else msgspec.Raw(b""),
            stream=integer(a.get("stream")), device=integer(a.get("device")),
            seq=integer(a.get("Sequence number")), call_stack=str(a.get("Call stack") or ""),
            name=str(a.get("name") or ""),
        )
    pid, tid = e.get("pid", 0), e.get("tid", 0)
    return Event(ph=str(e.get("ph", "")), cat=str(e.get("cat", "")), name=str(e.get("name", "")),
                 ts=num(e.get("ts"), -1.0), dur=num(e.get("dur"), 0.0),
                 pid=pid if isinstance(pid, (int, str)) else str(pid),
                 tid=tid if isinstance(tid, (int, str)) else str(tid), args=args)


def load_kineto(path: str) -> model.Trace:
    reader = ChunkedArray(path, _decode_piece)
    cols = ColumnBuilder()
    meta_names = []        # (ph M) process/thread names
    for events in reader:
        cols.add(events, _KEEP, meta_names)
    table = cols.finish()
    return _build_trace(path, table, reader.header, meta_names)


def _ids(values: np.ndarray) -> np.ndarray:
    """pid/tid columns hold ints or labels ("Spans"); labels get stable negative ids."""
    if values.dtype != object:
        return values.astype(np.int64)
    out = np.empty(len(values), dtype=np.int64)
    labels = {}
    for i, v in enumerate(values):
        if isinstance(v, (int, np.integer)):
            out[i] = v
        else:
            out[i] = labels.setdefault(v, -1000 - len(labels))
    return out


def _build_trace(path: str, t: dict, header: dict, meta_names: list) -> model.Trace:
    if t["n"] == 0:
        raise TraceFormatError(f"{path}: the trace holds no profiler events")
    cat = t["cat"]
    name = t["name"]
    cats = cat.categories
    is_x = t["ph"] == "X"

    def rows(cat_names):
        codes = [i for i, c in enumerate(cats) if c in cat_names]
        return np.flatnonzero(np.isin(cat.codes, codes) & is_x)

    ts = t["ts"]
    dur = t["dur"]
    pid = _ids(t["pid"])
    tid = _ids(t["tid"])

    # Steps: ProfilerStep#N may be a user_annotation (new) or a cpu_op (old traces).
    step_rows = rows(set(OP_CATS) | set(ANNOT_CATS[:1]))
    step_names = pd.Series(name[step_rows]).astype(str)
    step_num = step_names.str.extract(STEP_NAME, expand=False)
    is_step = step_num.notna().to_numpy()
    steps = pd.DataFrame({"step": step_num[is_step].astype(np.int64).to_numpy(),
                          "ts": ts[step_rows[is_step]], "dur": dur[step_rows[is_step]]})
    steps = steps.sort_values("ts").drop_duplicates("step").reset_index(drop=True)
    step_row_set = step_rows[is_step]

    # Host ops, minus steps and our source markers.
    op_rows = rows(OP_CATS)
    op_rows = op_rows[~np.isin(op_rows, step_row_set)]
    op_names = name[op_rows]
    marker_codes = [i for i, c in enumerate(op_names.categories) if c.startswith(SOURCE_MARKER)]
    is_marker = np.isin(op_names.codes, marker_codes)
    marker_rows = op_rows[is_marker]
    op_rows = op_rows[~is_marker]

    ops = pd.DataFrame({
        "ts": ts[op_rows], "dur": dur[op_rows], "name": name[op_rows].remove_unused_categories(),
        "pid": pid[op_rows], "tid": tid[op_rows], "ext_id": t["external_id"][op_rows], "seq": t["seq"][op_rows],
        "input_dims": t["input_dims"][op_rows],
    })
    ops["depth"], _ = model.nesting(ops["ts"].to_numpy(), (ops["ts"] + ops["dur"]).to_numpy(), ops["tid"].to_numpy())
    ops["step"] = model.assign_steps(ops["ts"].to_numpy(), steps)

    py_rows = rows(PY_CATS)
    python = _python_frames(ts[py_rows], dur[py_rows], tid[py_rows], name[py_rows],
                            t["python_id"][py_rows], t["python_parent_id"][py_rows])

    rt_rows = rows(RUNTIME_CATS)
    runtime = pd.DataFrame({"ts": ts[rt_rows], "dur": dur[rt_rows], "name": name[rt_rows].remove_unused_categories(),
                            "tid": tid[rt_rows], "corr": t["correlation"][rt_rows]})
    runtime["op"] = model.innermost_enclosing(ops["ts"].to_numpy(), (ops["ts"] + ops["dur"]).to_numpy(),
                                              ops["tid"].to_numpy(), runtime["ts"].to_numpy(), runtime["tid"].to_numpy())
    runtime["step"] = model.assign_steps(runtime["ts"].to_numpy(), steps)

    k_rows = rows(set(KERNEL_KIND))
    kind = pd.Categorical(np.asarray(cat[k_rows].astype(str).map(KERNEL_KIND)))
    kernels = pd.DataFrame({"ts": ts[k_rows], "dur": dur[k_rows], "name": name[k_rows].remove_unused_categories(),
                            "kind": kind, "device": t["device"][k_rows], "stream": t["stream"][k_rows],
                            "corr": t["correlation"][k_rows]})
    _link_kernels(kernels, runtime, ops, steps)

    an_rows = rows(ANNOT_CATS)
    an_rows = an_rows[~np.isin(an_rows, step_row_set)]
    annotations = pd.DataFrame({"ts": ts[an_rows], "dur": dur[an_rows], "name": np.asarray(name[an_rows].astype(str)),
                                "tid": tid[an_rows], "on_device": np.asarray(cat[an_rows] == "gpu_user_annotation")})
    annotations["step"] = model.assign_steps(annotations["ts"].to_numpy(), steps)

    trace = model.Trace(path=str(path), fmt="kineto", device_type=_device_type(header, runtime, kernels))
    trace.steps = model.conform(steps, model.STEP_COLUMNS)
    trace.ops = ops
    trace.python = python
    trace.runtime = runtime
    trace.kernels = kernels
    trace.annotations = model.conform(annotations, model.ANNOTATION_COLUMNS)
    markers = pd.DataFrame({"ts": ts[marker_rows], "dur": dur[marker_rows], "tid": tid[marker_rows],
                            "name": np.asarray(name[marker_rows].astype(str))})
    attach_locations(trace, markers=markers, call_stacks=t["call_stack"][op_rows])
    trace.ops = model.conform(trace.ops, model.OPS_COLUMNS)
    trace.runtime = model.conform(trace.runtime, model.RUNTIME_COLUMNS)
    trace.kernels = model.conform(trace.kernels, model.KERNEL_COLUMNS)
    trace.python = model.conform(trace.python, model.PYTHON_COLUMNS)
    _metadata(trace, header, meta_names)
    _limitations(trace)
    return trace


def _python_frames(ts, dur, tid, names, py_id, parent_id) -> pd.DataFrame:
    # Names look like "path/to/file.py(123): func"; parse each distinct name once.
    cats = pd.Series(names.categories.astype(str))
    parsed = cats.str.extract(r"^(?P<file>.*)\((?P<line>\d+)\): (?P<function>.*)$")
    codes = names.codes
    file_ = parsed["file"].to_numpy(dtype=object)[codes]
    line = pd.to_numeric(parsed["line"], errors="coerce").fillna(-1).astype(np.int64).to_numpy()[codes]
    func = parsed["function"].fillna(cats).to_numpy(dtype=object)[codes]
    from .locations import is_user_file
    user = np.array([is_user_file(f) for f in parsed["file"].fillna("").tolist()], dtype=bool)[codes] \
        if len(cats) else np.zeros(0, dtype=bool)
    return pd.DataFrame({"ts": ts, "dur": dur, "tid": tid, "py_id": py_id, "parent_id": parent_id,
                         "file": file_, "line": line, "function": func, "is_user": user})


def _link_kernels(kernels: pd.DataFrame, runtime: pd.DataFrame, ops: pd.DataFrame, steps: pd.DataFrame):
    """Join each device event to its launching runtime call by correlation id (vectorized)."""
    launch = np.full(len(kernels), -1, dtype=np.int64)
    if len(kernels) and len(runtime):
        rt_corr = runtime["corr"].to_numpy()
        valid = np.flatnonzero(rt_corr >= 0)
        order = valid[np.argsort(rt_corr[valid], kind="stable")]
        sorted_corr = rt_corr[order]
        k_corr = kernels["corr"].to_numpy()
        pos = np.searchsorted(sorted_corr, k_corr)
        pos_c = np.minimum(pos, max(len(sorted_corr) - 1, 0))
        hit = (pos < len(sorted_corr)) & (k_corr >= 0) & (sorted_corr[pos_c] == k_corr) if len(sorted_corr) else np.zeros(len(k_corr), bool)
        launch = np.where(hit, order[pos_c] if len(order) else -1, -1)
    kernels["launch"] = launch
    has = launch >= 0
    lc = np.where(has, launch, 0)
    kernels["op"] = np.where(has, runtime["op"].to_numpy()[lc] if len(runtime) else -1, -1)
    # A kernel belongs to the step whose host code launched it; unlinked ones by their own time.
    by_launch = runtime["step"].to_numpy()[lc] if len(runtime) else np.full(len(kernels), -1)
    by_time = model.assign_steps(kernels["ts"].to_numpy(), steps)
    kernels["step"] = np.where(has, by_launch, by_time)


def _device_type(header: dict, runtime: pd.DataFrame, kernels: pd.DataFrame) -> str:
    if len(kernels) == 0:
        return "cpu"
    rt_names = runtime["name"].cat.categories if len(runtime) else []
    if any(str(n).startswith("hip") for n in rt_names):
        return "rocm"
    props = header.get("deviceProperties") or []
    if any("gfx" in str(p.get("name", "")) or "AMD" in str(p.get("name", "")) for p in props if isinstance(p, dict)):
        return "rocm"
    return "cuda"


def _metadata(trace: model.Trace, header: dict, meta_names: list):
    md = trace.metadata
    md["device_properties"] = header.get("deviceProperties") or []
    dist = header.get("distributedInfo") or {}
    md["distributed"] = dist
    if isinstance(dist, dict):
        if isinstance(dist.get("rank"), int):
            trace.rank = dist["rank"]
        if isinstance(dist.get("world_size"), int):
            trace.world_size = dist["world_size"]
    # Our collector stores its record (versions, env, rank) under this key; foreign traces lack it.
    record = header.get("npu_advise")
    if isinstance(record, dict):
        md.update(record)
        if trace.rank is None and isinstance(record.get("rank"), int):
            trace.rank = record["rank"]
    md["process_names"] = {str(pid): n for kind, pid, n in meta_names if kind == "process_name"}
    md["schema_version"] = header.get("schemaVersion")


def _limitations(trace: model.Trace):
    lim = trace.limitations
    if not trace.has_device_timeline:
        lim.append("No device timeline (CPU-only trace): device busy/free time, kernel ranking and measured "
                   "sync wait cannot be computed; NPU costs are predicted from host-side evidence.")
    if len(trace.steps) == 0:
        lim.append("No ProfilerStep ranges: per-step averages are over the whole trace, counted as one step.")
    if (trace.ops["loc"] < 0).all() if "loc" in trace.ops else True:
        lim.append("No source locations (recorded without with_stack and without npu-advise's collector): "
                   "findings cannot point at source lines.")
