"""Load a torch.profiler (Kineto) chrome trace into the trace model.

Accepts `.json` / `.json.gz`, a `{"traceEvents": [...]}` object or a bare array, µs timestamps with
fractional (ns) parts, the 2021 category names (`Operator`, `Runtime`, `Kernel`, `Memcpy`, `Memset`),
CUDA and ROCm (`hip*`) runtimes.

Speed: the file is inflated in a background thread and cut into pieces (jsonstream); msgspec decodes
each piece into small typed structs that skip every field the model does not use; the structs are
sorted into per-role columns with C-level loops (columns); all joins (steps, launches, source
locations) are vectorized numpy. Memory stays bounded by the piece size plus the final columns.
"""
from __future__ import annotations

import gc
import re
from typing import Any, Optional, Union

import msgspec
import numpy as np
import pandas as pd

from .. import model
from ..errors import TraceFormatError
from .columns import (META_CAT, ROLE_ANNOT, ROLE_KERNEL, ROLE_OP, ROLE_PY, ROLE_RT, ColumnBuilder, counts,
                      fix_mmap_threshold, has_labels, json_number, merge_role, piece_rows)
from .jsonstream import ChunkedArray
from .locations import attach_locations
from .placement import placement_roots

# Categories we keep, by role. Everything else (flows, instant/memory events, counters) is skipped.
OP_CATS = ("cpu_op", "Operator", "operator")
PY_CATS = ("python_function",)
RUNTIME_CATS = ("cuda_runtime", "cuda_driver", "Runtime", "runtime")
KERNEL_KIND = {"kernel": "kernel", "Kernel": "kernel", "gpu_memcpy": "memcpy", "Memcpy": "memcpy",
               "gpu_memset": "memset", "Memset": "memset", "cuda_sync": "sync"}
ANNOT_CATS = ("user_annotation", "gpu_user_annotation")

STEP_NAME = re.compile(r"^ProfilerStep#(\d+)$")
SOURCE_MARKER = "npa.src:"   # ranges our collector wraps around each torch call: npa.src:FILE:LINE:FUNC
PLACEMENT_ROOT = "npa.root:"  # empty ranges naming each placement root: npa.root:N:DESCRIPTION
_COLLECTOR_RANGES = (SOURCE_MARKER, PLACEMENT_ROOT)


class Args(msgspec.Struct, frozen=True, gc=False):
    # Only the args the model uses; msgspec skips every other key without building it.
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


class Complete(msgspec.Struct, tag_field="ph", tag="X", gc=False):
    """A complete event (`"ph": "X"`): every op, kernel, runtime call and annotation.

    gc=False: events hold no reference cycles, so the collector need not track a million of them.
    """
    cat: str = ""
    name: str = ""
    ts: Any = -1.0            # int µs, or the text of a fractional number (float_hook=str): see columns.ts_ns
    dur: float = 0.0
    pid: Union[int, str] = 0
    tid: Union[int, str] = 0
    args: Args = _NO_ARGS


class Metadata(msgspec.Struct, tag_field="ph", tag="M", gc=False):
    """`"ph": "M"`: process/thread names."""
    cat = META_CAT            # a class attribute, not decoded: sorts these events into the meta role
    name: str = ""
    pid: Union[int, str] = 0
    args: Args = _NO_ARGS


# Every other event phase of the chrome trace format (flows, instants, counters, async, ...) decodes to
# a field-less struct: msgspec skips its content without building a single object. An unknown phase
# fails validation and takes the slow, loose path below.
_SKIPPED = tuple(msgspec.defstruct(f"Skipped_{ord(ph):02x}", [], namespace={"cat": ""}, tag_field="ph",
                                   tag=ph, gc=False) for ph in "BEIiCbneSTpFstfPNODVvRc()")
_OTHER = _SKIPPED[0]()
Event = Union[(Complete, Metadata) + _SKIPPED]

_typed = msgspec.json.Decoder(list[Event], float_hook=str)
# Loose decoding keeps fractional numbers as their text too: the timestamps stay exact (and the same as in
# a piece decoded typed), whichever piece an odd event happens to fall in.
_untyped = msgspec.json.Decoder(float_hook=str)


def _decode_piece(data: bytes) -> list:
    try:
        return _typed.decode(data)
    except msgspec.ValidationError:
        # A trace with unexpected field types (a string id, an unknown phase): decode loosely and coerce.
        return [_coerce(e) for e in _untyped.decode(data) if isinstance(e, dict)]


def _coerce(e: dict):
    def integer(v):
        try:
            return int(v)
        except (TypeError, ValueError, OverflowError):
            try:
                return int(float(v))        # "3.0": a fractional number's text
            except (TypeError, ValueError, OverflowError):
                return -1

    ph = e.get("ph")
    if ph not in ("X", "M"):
        return _OTHER
    a = e.get("args")
    args = _NO_ARGS
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
    pid = pid if isinstance(pid, (int, str)) else str(pid)
    if ph == "M":
        return Metadata(name=str(e.get("name", "")), pid=pid, args=args)
    dur = json_number(e.get("dur"), 0.0)
    try:
        dur = float(dur)
    except ValueError:
        dur = 0.0
    return Complete(cat=str(e.get("cat", "")), name=str(e.get("name", "")), ts=json_number(e.get("ts"), -1.0), dur=dur,
                    pid=pid, tid=tid if isinstance(tid, (int, str)) else str(tid), args=args)


# Which table each category feeds, and the fields each table reads (event fields, args fields).
_ROLE_OF_CAT = {**{c: ROLE_OP for c in OP_CATS}, **{c: ROLE_PY for c in PY_CATS},
                **{c: ROLE_RT for c in RUNTIME_CATS}, **{c: ROLE_KERNEL for c in KERNEL_KIND},
                **{c: ROLE_ANNOT for c in ANNOT_CATS}}
_ROLE_FIELDS = {
    ROLE_OP: (("pid", "tid"), ("external_id", "seq", "input_dims", "call_stack")),
    ROLE_PY: (("tid",), ("python_id", "python_parent_id")),
    ROLE_RT: (("tid",), ("correlation",)),
    ROLE_KERNEL: (("cat",), ("device", "stream", "correlation")),
    ROLE_ANNOT: (("tid", "cat"), ()),
}


def load_kineto(path: str, parallel: Optional[bool] = None) -> model.Trace:
    """`parallel`: decode every other piece in a forked worker process (None: when the trace is big
    enough and a second CPU exists; see `_worth_a_worker`). Both ways give the same trace."""
    # The decoded structs are cycle-free; pausing the cyclic collector while millions of objects are
    # created and dropped halves the load time.
    fix_mmap_threshold()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            if parallel or (parallel is None and _worth_a_worker(path)):
                try:
                    tables, header, meta = _read_with_worker(path)
                except _Sequential:
                    tables, header, meta = _read(path)
            else:
                tables, header, meta = _read(path)
            return _build_trace(path, tables, header, meta)
        except (ValueError, TypeError, OverflowError) as exc:
            # Values the typed decoder let through but the columns cannot hold (a ts of "abc", ...).
            raise TraceFormatError(f"{path}: unexpected event values ({type(exc).__name__}: {exc})") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _read(path: str) -> tuple:
    """(tables, header, metadata events) of the whole trace, decoded here."""
    reader = ChunkedArray(path, _decode_piece)
    cols = ColumnBuilder(_ROLE_OF_CAT, _ROLE_FIELDS)
    for events in reader:
        cols.add(events)
        del events
    return cols.finish(), reader.header, cols.meta


# ---- decoding in two processes ---------------------------------------------------------------------------
# Decoding (msgspec) and sorting events into columns hold the GIL and take ~80 % of a big trace's load;
# the inflating thread leaves most of a second core idle. A worker process forked before any thread
# starts decodes 3 of every 5 pieces into columns of its own; the main process cuts the pieces, checks
# that each piece it hands over is complete JSON (so the reader's cut protocol is unchanged), decodes the
# rest, and finally merges both builders' columns into file order, re-numbering the interned names in
# order of first appearance: the result is the very table a single process builds.

# Below this many bytes of JSON (estimated from the file size) the fork and the merge cost more than
# they save.
WORKER_MIN_JSON_BYTES = 96 << 20
_GZIP_RATIO = 10                  # typical Kineto JSON : gzip size
_HANDOFF_QUEUE = 4                # pieces (2 MB each) waiting to be written to the worker
_REMOTE = object()                # what the reader yields for a piece the worker decodes
# The worker decodes pieces i with i % _SHARE[1] < _SHARE[0]: the main thread also cuts every piece and
# checks the worker's pieces, so the worker takes a bit more than half.
_SHARE = (3, 5)
_Empty = msgspec.defstruct("_Empty", [], gc=False)
_check_json = msgspec.json.Decoder(list[_Empty])     # parses every byte, builds no event


class _Sequential(Exception):
    """The two-process result cannot be merged (text pid/tid labels): read in one process."""


def _worth_a_worker(path: str) -> bool:
    import os
    import sys
    import threading
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return False              # fork is only safe to rely on there, and with no other thread running
    try:
        cpus = len(os.sched_getaffinity(0))
        size = os.path.getsize(path)
    except (OSError, AttributeError):
        return False
    return cpus >= 2 and size * (_GZIP_RATIO if str(path).endswith(".gz") else 1) >= WORKER_MIN_JSON_BYTES


def _worker(pieces, results, *parent_ends):
    """Forked child: decode the pieces it is sent into its own columns, then send them back."""
    for end in parent_ends:       # the parent's ends, inherited: closed, so a dead parent means EOF here
        end.close()
    try:
        cols = ColumnBuilder(_ROLE_OF_CAT, _ROLE_FIELDS)
        spans = []
        while True:
            piece = pieces.recv_bytes()
            if not piece:
                break
            events = _decode_piece(piece)
            del piece
            before = counts(cols)
            cols.add(events)
            del events
            spans.append((before, counts(cols)))
        labels = has_labels(cols)
        tables = cols.finish()
        results.send(("ok", spans, cols.meta, labels,
                      {r: {k: v for k, v in t.items() if not isinstance(v, np.ndarray)} for r, t in tables.items()}))
        for r, t in tables.items():        # one column at a time: the parent merges as they come
            for f in [f for f, v in t.items() if isinstance(v, np.ndarray)]:
                results.send((r, f, t.pop(f)))
        results.send(None)
    except BaseException as exc:  # handed to the parent, which raises it
        try:
            results.send(("error", type(exc).__name__, str(exc)))
        except BaseException:
            pass


def _read_with_worker(path: str) -> tuple:
    import multiprocessing
    import queue
    import threading

    mp = multiprocessing.get_context("fork")
    piece_in, piece_out = mp.Pipe(duplex=False)
    result_in, result_out = mp.Pipe(duplex=False)
    proc = mp.Process(target=_worker, args=(piece_in, result_out, piece_out, result_in), name="npa-decode",
                      daemon=True)
    try:
        proc.start()              # before the reader starts its inflating thread: fork no threads
    except (AssertionError, OSError):   # inside a daemonic process (no children allowed), or no fork
        for end in (piece_in, piece_out, result_in, result_out):
            end.close()
        raise _Sequential() from None
    piece_in.close()
    result_out.close()
    # Writing a piece blocks until the worker reads it; a thread does the writing (the write releases
    # the GIL) so the main thread goes on decoding.
    handoff: queue.Queue = queue.Queue(_HANDOFF_QUEUE)
    failed: list = []

    def send():
        try:
            while True:
                piece = handoff.get()
                piece_out.send_bytes(piece)
                if not piece:
                    return
        except OSError as exc:    # the worker died: its error (if any) arrives on the result pipe
            failed.append(exc)

    sender = threading.Thread(target=send, name="npa-handoff", daemon=True)
    sender.start()
    position = [0]

    def hand_over(piece: bytes):
        while True:
            if not sender.is_alive():    # the worker stopped reading: it failed or died
                raise TraceFormatError(_worker_failure(path, result_in))
            try:
                handoff.put(piece, timeout=0.2)
                return
            except queue.Full:
                continue

    def decode(piece: bytes):
        if position[0] % _SHARE[1] >= _SHARE[0]:
            return _decode_piece(piece)
        try:
            _check_json.decode(piece)   # a DecodeError here makes the reader grow the piece, as usual
        except msgspec.ValidationError:
            return _decode_piece(piece)  # not a list of objects: the loose path, here
        hand_over(piece)
        return _REMOTE

    try:
        reader = ChunkedArray(path, decode)
        cols = ColumnBuilder(_ROLE_OF_CAT, _ROLE_FIELDS)
        order = []
        for events in reader:
            if events is _REMOTE:
                order.append(None)
            else:
                before = counts(cols)
                cols.add(events)
                order.append((before, counts(cols)))
            del events
            position[0] += 1
        hand_over(b"")
        sender.join()
        tables, meta = _merge_worker(path, cols, order, result_in)
        return tables, reader.header, meta
    finally:
        if sender.is_alive():
            try:
                handoff.put_nowait(b"")
            except queue.Full:
                pass
        if proc.is_alive():
            proc.kill()
        proc.join()
        piece_out.close()
        result_in.close()


def _worker_failure(path: str, results, head=None) -> str:
    """What went wrong in the worker, from its error message if it sent one."""
    if head is None:
        try:
            head = results.recv() if results.poll(1.0) else None
        except (EOFError, OSError):
            head = None
    if not head or head[0] != "error":
        return f"{path}: the decoding worker process died"
    _, kind, message = head
    if kind in ("ValueError", "TypeError", "OverflowError"):
        return f"{path}: unexpected event values ({kind}: {message})"
    return f"{path}: {message}"


def _merge_worker(path: str, cols, order: list, results) -> tuple:
    try:
        head = results.recv()
    except EOFError:
        raise TraceFormatError(_worker_failure(path, results, ("died",))) from None
    if head[0] == "error":
        raise TraceFormatError(_worker_failure(path, results, head))
    _, spans, other_meta, other_labels, other = head
    if other_labels or has_labels(cols):
        raise _Sequential()
    roles = list(cols.tables)
    n_main = counts(cols)
    mine = cols.finish()
    while True:
        msg = results.recv()
        if msg is None:
            break
        r, f, arr = msg
        other[r][f] = arr
    tables = {r: merge_role(mine.pop(r), other.pop(r), piece_rows(order, spans, n_main[k], k))
              for k, r in enumerate(roles)}
    k = len(roles)
    both_meta = cols.meta + other_meta
    meta = [both_meta[i] for i in piece_rows(order, spans, n_main[k], k)]
    return tables, meta


def _categorical(codes: np.ndarray, values: list) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(pd.Index(values, dtype=object)))


def _frame(columns: dict, schema: dict) -> pd.DataFrame:
    """A table in the schema's column order, built without copying or consolidating the arrays; the
    trailing `loc` and `call` columns (if the schema has them) are added later by attach_locations."""
    n = len(next(iter(columns.values())))
    out = {}
    for col, dtype in schema.items():
        if col in columns:
            out[col] = columns[col]
        elif col in ("loc", "call"):
            continue
        elif dtype == "category":
            out[col] = _categorical(np.zeros(n, dtype=np.int8), [""])
        elif dtype == "object":
            out[col] = np.full(n, None, dtype=object)
        else:
            out[col] = np.full(n, -1, dtype=dtype)
    return pd.DataFrame(out, copy=False)


def _select(codes: np.ndarray, values: list, keep_value) -> tuple:
    """Row mask keeping rows whose value passes `keep_value`, and the codes/values re-encoded to the
    kept values only (what remove_unused_categories would give, without pandas)."""
    keep_code = np.fromiter(map(keep_value, values), dtype=bool, count=len(values))
    rows = keep_code[codes] if len(values) else np.zeros(len(codes), dtype=bool)
    remap = np.cumsum(keep_code, dtype=np.int32) - 1
    return rows, remap[codes[rows]] if len(values) else codes[rows], [v for v, k in zip(values, keep_code) if k]


def _per_value(table: dict, key: str, fn, dtype) -> np.ndarray:
    """fn applied once per distinct value of an interned column, spread to the rows."""
    values = table[key + "_values"]
    if not table["n"]:
        return np.zeros(0, dtype=dtype)
    return np.fromiter(map(fn, values), dtype=dtype, count=len(values))[table[key]]


def _step_number(name: str) -> int:
    m = STEP_NAME.match(name)
    return int(m.group(1)) if m else -1


def _build_trace(path: str, t: dict, header: dict, meta_names: list) -> model.Trace:
    if sum(tab["n"] for tab in t.values()) == 0:
        raise TraceFormatError(f"{path}: the trace holds no profiler events")
    op, py, rt, kn, an = t[ROLE_OP], t[ROLE_PY], t[ROLE_RT], t[ROLE_KERNEL], t[ROLE_ANNOT]

    # Steps: ProfilerStep#N may be a user_annotation (new) or a cpu_op (old traces); the step number
    # is read once per distinct name. gpu_user_annotation copies stay device annotations.
    op_step = _per_value(op, "name", _step_number, np.int64)
    an_step = np.where(_per_value(an, "cat", lambda c: c == "user_annotation", bool),
                       _per_value(an, "name", _step_number, np.int64), -1)
    op_is_step = op_step >= 0
    an_is_step = an_step >= 0
    step_no = np.concatenate([op_step[op_is_step], an_step[an_is_step]])
    step_ts = np.concatenate([op["ts"][op_is_step], an["ts"][an_is_step]])
    step_dur = np.concatenate([op["dur"][op_is_step], an["dur"][an_is_step]])
    order = np.argsort(step_ts, kind="stable")
    _, first = np.unique(step_no[order], return_index=True)     # the earliest range of each step number
    pick = order[np.sort(first)]
    steps = pd.DataFrame({"step": step_no[pick], "ts": step_ts[pick], "dur": step_dur[pick]})

    # Host ops, minus steps and our source markers.
    marker = ~op_is_step & _per_value(op, "name", lambda n: n.startswith(SOURCE_MARKER), bool)
    keep_op, op_codes, op_names = _select(op["name"], op["name_values"],
                                          lambda n: not n.startswith(_COLLECTOR_RANGES) and _step_number(n) < 0)
    roots = [n for n in op["name_values"] if n.startswith(PLACEMENT_ROOT)]
    if keep_op.all():       # steps as user_annotations, no markers: the columns as they are, no copy
        keep_op = slice(None)
    op_ts = op["ts"][keep_op]
    op_end = op_ts + op["dur"][keep_op]
    op_tid = op["tid"][keep_op]
    op_pid = op["pid"][keep_op]
    # The op tree, once per trace: analyzers and attach_locations read `depth` / `parent`.
    op_key = model.thread_key(op_pid, op_tid)
    op_depth, op_parent = model.nesting(op_ts, op_end, op_key)
    ops = _frame({
        "ts": op_ts, "dur": op["dur"][keep_op], "name": _categorical(op_codes, op_names),
        "pid": op_pid, "tid": op_tid, "ext_id": op["external_id"][keep_op],
        "seq": op["seq"][keep_op], "input_dims": op["input_dims"][keep_op],
        "depth": op_depth, "parent": op_parent, "step": model.assign_steps(op_ts, steps),
    }, model.OPS_COLUMNS)

    python = _python_frames(py)

    # Runtime calls carry no pid: they are matched by thread (the depth is reusable when tid alone is the key).
    rt_op = model.innermost_enclosing(op_ts, op_end, op_tid, rt["ts"], rt["tid"],
                                      outer_depth=op_depth if op_key is op_tid else None)
    del op_end
    rt_step = model.assign_steps(rt["ts"], steps)
    runtime = _frame({"ts": rt["ts"], "dur": rt["dur"], "name": _categorical(rt["name"], rt["name_values"]),
                      "tid": rt["tid"], "corr": rt["correlation"], "op": rt_op, "step": rt_step},
                     model.RUNTIME_COLUMNS)

    kind_values = [KERNEL_KIND[c] for c in kn["cat_values"]]
    kind_index = {k: i for i, k in enumerate(dict.fromkeys(kind_values))}
    kind_codes = np.asarray([kind_index[k] for k in kind_values], dtype=np.int32)[kn["cat"]] \
        if kn["n"] else np.zeros(0, dtype=np.int32)
    launch, k_op, k_step = _link_kernels(kn["ts"], kn["correlation"], rt["correlation"], rt_op, rt_step, steps)
    kernels = _frame({"ts": kn["ts"], "dur": kn["dur"], "name": _categorical(kn["name"], kn["name_values"]),
                      "kind": _categorical(kind_codes, list(kind_index)), "device": kn["device"],
                      "stream": kn["stream"], "corr": kn["correlation"], "launch": launch, "op": k_op,
                      "step": k_step}, model.KERNEL_COLUMNS)

    keep_an = ~an_is_step
    an_names = np.asarray(an["name_values"], dtype=object)[an["name"][keep_an]] if an["n"] else np.zeros(0, object)
    on_device = _per_value(an, "cat", lambda c: c == "gpu_user_annotation", bool)[keep_an]
    an_ts = an["ts"][keep_an]
    annotations = _frame({"ts": an_ts, "dur": an["dur"][keep_an], "name": an_names, "tid": an["tid"][keep_an],
                          "step": model.assign_steps(an_ts, steps), "on_device": on_device},
                         model.ANNOTATION_COLUMNS)

    trace = model.Trace(path=str(path), fmt="kineto", device_type=_device_type(header, runtime, kernels))
    trace.steps = model.conform(steps, model.STEP_COLUMNS)
    trace.ops = ops
    trace.python = python
    trace.runtime = runtime
    trace.kernels = kernels
    trace.annotations = annotations
    marker_names = np.asarray(op["name_values"], dtype=object)[op["name"][marker]] if marker.any() \
        else np.zeros(0, dtype=object)
    markers = pd.DataFrame({"ts": op["ts"][marker], "dur": op["dur"][marker], "tid": op["tid"][marker],
                            "name": marker_names})
    attach_locations(trace, markers=markers, call_stacks=op["call_stack"][keep_op])
    _metadata(trace, header, meta_names)
    if roots:
        placement_roots(trace, roots)
    _limitations(trace)
    return trace


_FRAME_NAME = re.compile(r"^(?P<file>.*)\((?P<line>\d+)\): (?P<function>.*)$")


def _python_frames(py: dict) -> pd.DataFrame:
    # Names look like "path/to/file.py(123): func"; parse each distinct name once.
    from .locations import is_user_file
    parsed = []
    for name in py["name_values"]:
        m = _FRAME_NAME.match(name)
        parsed.append((m["file"], int(m["line"]), m["function"]) if m else (None, -1, name))
    codes = py["name"]
    file_ = np.asarray([p[0] for p in parsed] or [None], dtype=object)
    line = np.asarray([p[1] for p in parsed] or [-1], dtype=np.int64)
    func = np.asarray([p[2] for p in parsed] or [None], dtype=object)
    user = np.asarray([is_user_file(p[0] or "") for p in parsed] or [False], dtype=bool)
    return _frame({"ts": py["ts"], "dur": py["dur"], "tid": py["tid"], "py_id": py["python_id"],
                   "parent_id": py["python_parent_id"], "file": file_[codes], "line": line[codes],
                   "function": func[codes], "is_user": user[codes]}, model.PYTHON_COLUMNS)


def _link_kernels(k_ts, k_corr, rt_corr, rt_op, rt_step, steps) -> tuple:
    """Join each device event to its launching runtime call by correlation id (sorted search).

    Returns (launch row in runtime, launching host op, step): a kernel belongs to the step whose host
    code launched it; unlinked ones by their own time."""
    launch = np.full(len(k_ts), -1, dtype=np.int64)
    valid = np.flatnonzero(rt_corr >= 0)
    if len(k_ts) and len(valid):
        order = valid[np.argsort(rt_corr[valid], kind="stable")]
        sorted_corr = rt_corr[order]
        pos = np.minimum(np.searchsorted(sorted_corr, k_corr), len(sorted_corr) - 1)
        hit = (k_corr >= 0) & (sorted_corr[pos] == k_corr)
        launch[hit] = order[pos[hit]]
    has = launch >= 0
    k_op = np.full(len(k_ts), -1, dtype=np.int64)
    k_op[has] = rt_op[launch[has]]
    k_step = model.assign_steps(k_ts, steps)
    k_step[has] = rt_step[launch[has]]
    return launch, k_op, k_step


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
