"""Property-based fuzzing of every loader: whatever bytes are on disk, `load_profile` returns a `Trace`
or raises a `TraceFormatError` with a one-line message; never another exception, never a hang.

Generated inputs: Kineto JSON (object and bare array, gzip and multi-member gzip, µs and ns-looking
numbers, odd types in every field, truncation at every kind of position, inserted non-UTF-8 bytes,
deep nesting), torch_npu text exports (trace_view.json, CSVs with varying column sets, trailing tabs,
`N/A`, missing files, broken JSON side files) and DB exports (missing tables and columns, wrong types,
empty tables, files that are not SQLite). Besides "no crash", well-formed Kineto traces must load into
the same tables whatever the streaming piece size and with the decoding worker process.

Seeded and deterministic (the same inputs whatever ran before). CI runs about 10,900 inputs; NPA_FUZZ_SCALE=N multiplies every budget (a
nightly-style run: NPA_FUZZ_SCALE=20), NPA_FUZZ_SEED=S explores other inputs.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import sqlite3
import tempfile
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, example, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from npu_advise import model  # noqa: E402
from npu_advise.errors import TraceFormatError  # noqa: E402
from npu_advise.load import jsonstream, load_profile  # noqa: E402
from npu_advise.load.kineto import load_kineto  # noqa: E402

SCALE = float(os.environ.get("NPA_FUZZ_SCALE", "1"))
SEED = int(os.environ.get("NPA_FUZZ_SEED", "0"))
# Shrinking a failure to its smallest form can take minutes: on request only (the failing input is
# printed either way).
FUZZ_PHASES = [Phase.explicit, Phase.generate] + ([Phase.shrink] if os.environ.get("NPA_FUZZ_SHRINK") else [])
HANG_SECONDS = 30       # one tiny input taking this long is a hang (tiny inputs load in milliseconds)


def budget(examples: int) -> int:
    return max(1, int(examples * SCALE))


def fuzz(examples: int):
    """Deterministic hypothesis settings for `examples` inputs (times NPA_FUZZ_SCALE)."""
    def wrap(fn):
        return seed(SEED)(settings(max_examples=budget(examples), deadline=None, database=None, phases=FUZZ_PHASES,
                                   suppress_health_check=list(HealthCheck), print_blob=False)(fn))
    return wrap


@pytest.fixture(autouse=True, scope="module")
def draws_independent_of_loaded_modules():
    """Hypothesis mixes in literals from every local module already imported, so the same seed drew other
    inputs depending on which tests ran before (the CI run found a bug a run of this file alone did not).
    Without them the draws depend on the seed alone."""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:         # a Hypothesis without local constants
        yield
        return
    if not hasattr(providers, "_get_local_constants"):
        yield
        return
    with mock.patch.object(providers, "_get_local_constants", Constants):
        yield


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def loads_or_rejects(load, path):
    """The property: a Trace whose tables have the model's columns, or a one-line TraceFormatError."""
    with time_limit(HANG_SECONDS):
        try:
            traces = load(path)
        except TraceFormatError as exc:
            message = str(exc)
            assert message and "\n" not in message and "\r" not in message, repr(message)
            return None
    traces = traces if isinstance(traces, list) else [traces]
    assert traces
    for trace in traces:
        assert isinstance(trace, model.Trace)
        for table, schema in ((trace.ops, model.OPS_COLUMNS), (trace.kernels, model.KERNEL_COLUMNS),
                              (trace.runtime, model.RUNTIME_COLUMNS), (trace.steps, model.STEP_COLUMNS),
                              (trace.python, model.PYTHON_COLUMNS)):
            assert set(schema) <= set(table.columns), (sorted(schema), list(table.columns))
    return traces


@contextlib.contextmanager
def piece_sizes(chunk):
    """Stream in pieces of `chunk` bytes (None: the production sizes), so small inputs cross many cuts."""
    if chunk is None:
        yield
        return
    with mock.patch.object(jsonstream, "CHUNK_BYTES", chunk), \
            mock.patch.object(jsonstream, "READ_BYTES", 4096), \
            mock.patch.object(jsonstream, "BLOCK_BYTES", 4096):
        yield


# Thousands of small files: in memory where the machine has a tmpfs (a temporary folder on disk cost
# ~10 ms of file-system time per input here, more than the loading).
_SCRATCH_BASE = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextlib.contextmanager
def fresh_folder():
    """An empty folder for one input, removed afterwards."""
    path = tempfile.mkdtemp(prefix="npa-fuzz-", dir=_SCRATCH_BASE)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def counted(n_expected: int):
    """Count the inputs a property loads, and check it really saw its budget of them."""
    calls = []

    def record():
        calls.append(1)

    def check():
        assert len(calls) >= n_expected, f"{len(calls)} inputs, expected {n_expected}"
    return record, check


# ---- values ------------------------------------------------------------------------------------------------
odd = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=3),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
big_int = st.one_of(st.integers(-2 ** 63, 2 ** 64), st.sampled_from([2 ** 63 - 1, -2 ** 63, 2 ** 64, 10 ** 30]))
us = st.one_of(st.integers(0, 10 ** 6), st.integers(1_700_000_000_000_000, 1_800_000_000_000_000))
ns = st.integers(1_700_000_000_000_000_000, 1_800_000_000_000_000_000)
frac_us = st.floats(0, 2e15, allow_nan=False)
num_text = st.builds(lambda a, b: f"{a}.{b:03d}", st.integers(-10, 1_800_000_000_000_000), st.integers(0, 999))
ts_value = st.one_of(us, us, ns, frac_us, num_text, big_int, odd)
dur_value = st.one_of(st.integers(0, 10 ** 5), st.floats(0, 1e5), st.integers(-10 ** 6, -1), num_text, big_int, odd)
small_id = st.one_of(st.integers(-1, 5), st.integers(-1, 5), big_int, st.text(max_size=4), odd)

KINETO_CATS = ["cpu_op", "Operator", "operator", "python_function", "cuda_runtime", "cuda_driver", "Runtime",
               "runtime", "kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset", "cuda_sync",
               "user_annotation", "gpu_user_annotation", "ac2g", "Trace", "fwdbwd"]
NAMES = ["ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#x", "aten::add", "aten::item",
         "aten::_local_scalar_dense", "cudaLaunchKernel", "hipLaunchKernel", "cudaStreamSynchronize",
         "npa.src:train.py:12:forward", "npa.src:", "train.py(12): forward", "(1): f", "Optimizer.step#AdamW.step",
         "process_name", "thread_name", "", "void gemm<float>(...)", "Memcpy HtoD"]
PHASES = ["X", "X", "X", "M", "i", "s", "f", "C", "B", "E", "b", "e", "P", "Z", "", "XX"]


def _widened(strategy):
    return st.one_of(strategy, odd)


def _as_is(strategy):
    return strategy


def kineto_strategies(chaos: bool):
    """(event, header) strategies; a chaotic document may hold a value of any type in any field."""
    maybe = _widened if chaos else _as_is
    clean = not chaos
    ts = st.one_of(us, us, ns, frac_us) if clean else ts_value
    dur = st.one_of(st.integers(0, 10 ** 5), st.floats(0, 1e5)) if clean else dur_value
    ident = st.integers(-1, 5) if clean else small_id
    args = st.fixed_dictionaries({}, optional={
        "External id": maybe(ident), "correlation": maybe(ident), "Python id": maybe(ident),
        "Python parent id": maybe(ident), "stream": maybe(ident), "device": maybe(ident),
        "Sequence number": maybe(ident), "name": maybe(st.sampled_from(["python", "thread 1", ""])),
        "Input Dims": maybe(st.lists(st.lists(st.integers(0, 64), max_size=3), max_size=3)),
        "Call stack": maybe(st.sampled_from(["train.py(3): main;\ntorch/nn.py(9): f", "", "x.py(1): g"])),
    })
    required = {"ph": maybe(st.sampled_from(PHASES)), "ts": ts}
    optional = {"cat": maybe(st.sampled_from(KINETO_CATS)), "name": maybe(st.sampled_from(NAMES)), "dur": dur,
                "pid": maybe(ident), "tid": maybe(ident), "args": maybe(args), "id": maybe(st.integers(0, 9))}
    if clean:       # complete events of the kept categories, as profilers write most of them
        required.update(ph=st.sampled_from(["X"] * 6 + PHASES), cat=optional.pop("cat"), name=optional.pop("name"),
                        dur=optional.pop("dur"))
    event = st.fixed_dictionaries(required, optional=optional)
    header = st.fixed_dictionaries({}, optional={
        "schemaVersion": maybe(st.integers(0, 2)),
        "deviceProperties": maybe(st.lists(st.fixed_dictionaries({}, optional={"name": maybe(st.sampled_from(
            ["NVIDIA A100", "AMD Instinct MI250X gfx90a", ""]))}), max_size=2)),
        "distributedInfo": maybe(st.fixed_dictionaries({}, optional={"rank": maybe(st.integers(-1, 8)),
                                                                      "world_size": maybe(st.integers(-1, 8))})),
        "npu_advise": maybe(st.fixed_dictionaries({}, optional={"rank": maybe(st.integers(-1, 3)), "env": odd})),
        "displayTimeUnit": maybe(st.sampled_from(["ns", "ms", "us"])),
        "traceName": st.text(max_size=5),
    })
    return event, header


# Two documents in three are plausible (only the profilers' own value types); the third has odd types in
# any field. Without plausible ones nearly every input would fail the first type check.
KINETO = {False: kineto_strategies(False), True: kineto_strategies(True)}


@st.composite
def kineto_document(draw) -> tuple:
    """(JSON bytes of a Kineto trace, its events) in one of the forms profilers write."""
    kineto_event, kineto_header = KINETO[draw(st.integers(0, 2)) == 0]
    events = draw(st.lists(kineto_event, max_size=15))
    form = draw(st.sampled_from(["object", "object", "array", "object-events-first", "object-log-tail"]))
    if form == "array":
        doc = events
    else:
        header = draw(kineto_header)
        if form == "object":
            doc = {**header, "traceEvents": events}
        else:
            doc = {"traceEvents": events, **header}
            if form == "object-log-tail":      # Kineto's trailing arrays of log lines
                doc["INFO"] = draw(st.lists(st.text(max_size=8), max_size=3))
    indent = draw(st.sampled_from([None, None, 0, 1]))
    separators = draw(st.sampled_from([None, (",", ":"), (" , ", " : ")]))
    text = json.dumps(doc, indent=indent, separators=separators, ensure_ascii=draw(st.booleans()),
                      allow_nan=True)
    return text.encode("utf-8"), events


POSITION_CLASSES = {"quote": b'"', "comma": b",", "colon": b":", "open": b"{[", "close": b"}]",
                    "digit": b"0123456789", "space": b" \n"}


HUGE_NUMBERS = [b"1e400", b"-1e400", b"1e308", b"-1.7e308", b"123456789012345678901234567890", b"-0", b"1E-400",
                b"9223372036854775807", b"-9223372036854775808", b"18446744073709551616", b"0.0000001"]


@st.composite
def mutated(draw, data: bytes, keep: bool = True) -> tuple:
    """(bytes, mutation name): the document cut, corrupted, re-encoded or deeply nested (or, with
    `keep`, sometimes left as it is)."""
    how = draw(st.sampled_from(["none", "none"] * keep + ["truncate", "truncate", "insert", "replace", "non-utf8",
                                                          "nest", "duplicate", "number"]))
    if how == "none" or not data:
        return data, "none"
    if how == "number":     # a number no profiler writes: overflowing floats, 30 digits, exponents
        spots = [m.start() for m in re.finditer(rb"(?<=: )-?\d+(\.\d+)?", data)] or [0]
        at = draw(st.sampled_from(spots))
        m = re.compile(rb"-?\d+(\.\d+)?").match(data, at)
        end = m.end() if m else at
        return data[:at] + draw(st.sampled_from(HUGE_NUMBERS)) + data[end:], how
    if how == "truncate":
        klass = draw(st.sampled_from(sorted(POSITION_CLASSES) + ["any"]))
        chars = POSITION_CLASSES.get(klass)
        spots = [i for i, c in enumerate(data) if chars is None or c in chars] or [len(data) // 2]
        cut = draw(st.sampled_from(spots)) + draw(st.integers(0, 1))
        return data[:cut], f"truncate-{klass}"
    pos = draw(st.integers(0, len(data)))
    if how == "insert":
        return data[:pos] + draw(st.binary(min_size=1, max_size=4)) + data[pos:], how
    if how == "replace":
        return data[:pos] + draw(st.binary(min_size=1, max_size=2)) + data[pos + 2:], how
    if how == "non-utf8":
        quote = data.find(b'"', pos)
        at = quote + 1 if quote >= 0 else pos
        return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:], how
    if how == "nest":
        depth = draw(st.sampled_from([64, 1000, 5000, 100_000]))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        value = opener * depth + b"1" + closer * depth
        spot = data.find(b'"ts"')
        if spot >= 0 and draw(st.booleans()):           # as an event's field value
            colon = data.index(b":", spot) + 1
            end = colon
            while end < len(data) and data[end:end + 1] not in b",}":
                end += 1
            return data[:colon] + value + data[end:], how
        return value if draw(st.booleans()) else data[:pos] + value + data[pos:], how
    a, b = sorted((pos, draw(st.integers(0, len(data)))))
    return data[:b] + data[a:b] + data[b:], how


@st.composite
def packed(draw, data: bytes) -> tuple:
    """(file name, bytes): plain, gzip, several gzip members, or gzip cut or corrupted."""
    packing = draw(st.sampled_from(["plain", "plain", "gzip", "gzip-members", "gzip-cut", "gzip-bytes"]))
    name = "rank0.pt.trace.json"
    if packing == "plain":
        return name, data
    if packing == "gzip-members":       # several gzip members, as concatenated writers produce
        cut = draw(st.integers(0, len(data)))
        return name + ".gz", gzip.compress(data[:cut]) + gzip.compress(data[cut:])
    data = gzip.compress(data, compresslevel=1)
    if packing == "gzip-cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif packing == "gzip-bytes":
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.binary(min_size=1, max_size=3)) + data[pos + 3:]
    return name + ".gz", data


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tables(trace) -> dict:
    return {name: getattr(trace, name) for name in ("ops", "kernels", "runtime", "python", "annotations",
                                                    "steps", "locations")}


def _dims(text):
    return text if not isinstance(text, str) else json.loads(text)


def _assert_same_trace(a, b):
    for name, table in _tables(a).items():
        other = _tables(b)[name]
        if "input_dims" in table:
            # A piece holding an event of odd types is decoded loosely, which re-encodes the shapes' JSON
            # text (without the file's spaces): the same shapes, in other text.
            table, other = table.copy(), other.copy()
            table["input_dims"] = table["input_dims"].map(_dims)
            other["input_dims"] = other["input_dims"].map(_dims)
        pd.testing.assert_frame_equal(table, other, check_categorical=False, obj=name)


# ---- Kineto -----------------------------------------------------------------------------------------------
# Each generated document is loaded as is and as VARIANTS-1 mutations of it (generating a document costs
# more than loading a broken one).
KINETO_DOCUMENTS, VARIANTS = 1200, 7


def test_fuzz_kineto_any_bytes_load_or_fail_in_one_line():
    record, check = counted(budget(KINETO_DOCUMENTS) * VARIANTS)

    @fuzz(KINETO_DOCUMENTS)
    @given(kineto_document(), st.sampled_from([None, None, 48, 200, 1000]), st.data())
    def run(doc, chunk, data):
        raw, _events = doc
        with fresh_folder() as tmp, piece_sizes(chunk):
            for k in range(VARIANTS):
                body = raw if k == 0 else data.draw(mutated(raw, keep=False))[0]
                name, body = data.draw(packed(body))
                record()
                loads_or_rejects(load_profile, _write(tmp / str(k), name, body))
    run()
    check()


CHUNKING_INPUTS = 400


def test_fuzz_kineto_piece_size_never_changes_the_trace():
    """The streaming reader cuts the event array at `},{` candidates; a cut inside a string or a nested
    object must be grown, never change what is decoded."""
    record, check = counted(budget(CHUNKING_INPUTS))
    tricky_name = st.sampled_from(['a},{"b', '}, {', "x}\n,\n{y", "]}", '"ts": 1}, {'])

    # Found by this property: a list as a ts passed the typed decoder in a piece of its own (then broke
    # the column), while whole it shared a piece with an invalid event and was read loosely.
    array_ts = [{"ph": "X", "cat": "cpu_op", "name": "a", "ts": 1, "pid": {}},
                {"ph": "X", "cat": "kernel", "name": "k", "ts": [1, -2, -1]}]

    @fuzz(CHUNKING_INPUTS)
    @given(kineto_document(), st.sampled_from([32, 64, 200, 1000]), tricky_name, st.booleans())
    @example((json.dumps(array_ts, indent=1).encode(), array_ts), 32, "]}", False)
    def run(doc, chunk, name, gz):
        record()
        data, _events = doc
        data = data.replace(b'"aten::add"', json.dumps(name).encode())
        with fresh_folder() as tmp:
            path = _write(tmp, "t.json.gz" if gz else "t.json", gzip.compress(data) if gz else data)
            with time_limit(HANG_SECONDS):
                try:
                    whole = load_kineto(str(path), parallel=False)
                except TraceFormatError as exc:
                    with piece_sizes(chunk), pytest.raises(TraceFormatError):
                        load_kineto(str(path), parallel=False)
                    assert "\n" not in str(exc)
                    return
                with piece_sizes(chunk):
                    pieces = load_kineto(str(path), parallel=False)
        _assert_same_trace(whole, pieces)
    run()
    check()


WORKER_INPUTS = 40


def test_fuzz_kineto_decoding_worker_gives_the_same_trace():
    record, check = counted(budget(WORKER_INPUTS))

    @fuzz(WORKER_INPUTS)
    @given(kineto_document(), st.sampled_from([64, 300]))
    def run(doc, chunk):
        record()
        data, _events = doc
        with fresh_folder() as tmp, piece_sizes(chunk):
            path = str(_write(tmp, "t.json", data))
            with time_limit(HANG_SECONDS):
                try:
                    alone = load_kineto(path, parallel=False)
                except TraceFormatError:
                    with pytest.raises(TraceFormatError):
                        load_kineto(path, parallel=True)
                    return
                both = load_kineto(path, parallel=True)
        _assert_same_trace(alone, both)
    run()
    check()


# ---- torch_npu text export ----------------------------------------------------------------------------------
PROCESS_NAMES = ["Python", "CANN", "Ascend Hardware", "HCCL", "Overlap Analysis", "Python3", ""]
THREAD_NAMES = ["Group 1 Communication", "Plane 0", "Stream 2", "Computing", "Free", "Communication"]
TV_CATS = ["cpu_op", "python_function", "enqueue", "dequeue", "async_npu", "HostToDevice", None]
TV_NAMES = NAMES + ["hcom_allReduce__586_0_1", "AscendCL@aclrtSynchronizeStream", "Enqueue@add", "Dequeue@add",
                    "Notify Wait", "MatMul", "Computing", "Free"]
def trace_view_event(chaos: bool):
    maybe = _widened if chaos else _as_is
    ts = st.one_of(num_text, num_text, st.builds(str, st.integers(0, 10 ** 18)), frac_us,
                   *([st.none(), odd] if chaos else []))
    ident = small_id if chaos else st.integers(-1, 5)
    args = st.fixed_dictionaries({}, optional={
        "Call stack": maybe(st.sampled_from(["train.py(3): main;\r\ntorch/nn.py(9): f", ""])),
        "Input Dims": maybe(st.sampled_from(["1,2;\r\n3", ";\r\n", ""])), "Sequence number": maybe(ident),
        "connection_id": maybe(ident), "correlation_id": maybe(ident),
        "Task Type": maybe(st.sampled_from(["AI_CORE", "AI_CPU", "Notify Wait", "MEMCPY_ASYNC", "EVENT_RECORD"])),
        "name": maybe(st.sampled_from(PROCESS_NAMES + THREAD_NAMES)),
    })
    pid = maybe(st.one_of(st.integers(1, 4), st.sampled_from(["1", "2"])))
    tid = maybe(st.integers(0, 3))
    dur = st.one_of(st.floats(0, 1e4), num_text, *([dur_value] if chaos else []))
    return st.one_of(
        st.fixed_dictionaries({"ph": st.just("X"), "ts": ts, "pid": pid, "tid": tid},
                              optional={"name": maybe(st.sampled_from(TV_NAMES)),
                                        "cat": maybe(st.sampled_from(TV_CATS)), "dur": dur, "args": maybe(args)}),
        st.fixed_dictionaries({"ph": st.sampled_from(["M", "M", "s", "f", "C", "i"]), "pid": pid, "tid": tid,
                               "name": st.sampled_from(["process_name", "process_name", "thread_name", "x"])},
                              optional={"ts": ts, "cat": maybe(st.sampled_from(["async_npu", "HostToDevice"])),
                                        "id": ident, "args": maybe(args)}),
    )


TRACE_VIEW = {False: trace_view_event(False), True: trace_view_event(True)}

CSV_COLUMNS = {
    "step_trace_time.csv": ["Step", "Computing", "Communication(Not Overlapped)", "Overlapped", "Communication",
                            "Free", "Stage", "Bubble", "Communication(Not Overlapped and Exclude Receive)",
                            "Preparing"],
    "kernel_details.csv": ["Device_id", "Step Id", "Model ID", "Task ID", "Stream ID", "Name", "Type", "OP State",
                           "Accelerator Core", "Start Time(us)", "Duration(us)", "Wait Time(us)", "Block Dim",
                           "Block Num", "Mix Block Dim", "Mix Block Num", "HF32 Eligible", "Input Shapes"],
    "op_statistic.csv": ["OP Type", "Core Type", "Count", "Total Time(us)", "Min Time(us)", "Avg Time(us)",
                         "Max Time(us)", "Ratio(%)"],
    "api_statistic.csv": ["Level", "API Name", "Time(us)", "Count", "Avg(us)", "Min(us)", "Max(us)", "Variance"],
    "operator_details.csv": ["Name", "Input Shapes", "Call Stack", "Host Self Duration(us)",
                             "Host Total Duration(us)", "Device Self Duration(us)", "Device Total Duration(us)"],
}
csv_cell = st.one_of(st.sampled_from(["N/A", "", "0", "12.5", "-3", "1736408883704643.212", "AI_CORE", "MatMul",
                                      "1e400", "nan", "inf", "step1", '"a,b"', "x\ty"]),
                     st.builds(str, st.integers(-10 ** 20, 10 ** 20)), st.builds(str, st.floats()),
                     st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=5))


@st.composite
def csv_bytes(draw, fname: str) -> bytes:
    cols = draw(st.lists(st.sampled_from(CSV_COLUMNS[fname] + ["New Column", "Unnamed: 3", " "]),
                         unique=True, max_size=12))
    if draw(st.booleans()):
        cols = [c for c in CSV_COLUMNS[fname] if c not in ("Block Num", "Mix Block Num", "Device_id")]
    tab = "\t" if draw(st.booleans()) else ""
    lines = [",".join(c + tab for c in cols)]
    for _ in range(draw(st.integers(0, 6))):
        n = len(cols) + draw(st.sampled_from([0] * 12 + [-1, 1]))
        lines.append(",".join(draw(csv_cell) + tab for _ in range(max(0, n))))
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        data = data[:draw(st.integers(0, len(data)))] + b"\xff\xfe"
    return data


maybe = _widened
side_json = st.one_of(
    *[st.builds(lambda d: json.dumps(d).encode(), st.fixed_dictionaries({}, optional={
        "config": maybe(st.fixed_dictionaries({}, optional={"experimental_config": maybe(st.fixed_dictionaries(
            {}, optional={"_profiler_level": maybe(st.sampled_from(["Level0", "Level1"]))}))})),
        "rank_id": maybe(st.integers(-1, 3)), "torch_npu_version": odd,
        "ENV_VARIABLES": maybe(st.dictionaries(st.sampled_from(["TASK_QUEUE_ENABLE", "X"]), odd, max_size=2)),
        "distributed_args": maybe(st.fixed_dictionaries({}, optional={"world_size": maybe(st.integers(-1, 8))})),
    }))] * 4,
    st.builds(lambda d: json.dumps(d).encode(), odd),
    st.sampled_from([b"", b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000]),
)
communication_json = st.one_of(
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["step1", "step2", "x"]),
        maybe(st.dictionaries(st.sampled_from(["collective", "p2p"]), maybe(st.dictionaries(
            st.sampled_from(["hcom_allReduce__1_0_1@123", "hcom_broadcast@", "plain"]),
            maybe(st.fixed_dictionaries({}, optional={"Communication Time Info": maybe(st.dictionaries(
                st.sampled_from(["Start Timestamp(us)", "Elapse Time(ms)", "Wait Time(ms)", "Transit Time(ms)"]),
                maybe(st.floats(0, 1e6)), max_size=4))})), max_size=2)), max_size=2)), max_size=2)),
    side_json,
)


@st.composite
def ascend_text_folder(draw) -> dict:
    """{relative path: bytes} of one rank folder of a torch_npu text export, files missing at random."""
    files = {}
    out = "rank0_ascend_pt/ASCEND_PROFILER_OUTPUT/"
    events = draw(st.lists(TRACE_VIEW[draw(st.integers(0, 2)) == 0], min_size=1, max_size=15))
    if draw(st.integers(0, 3)):     # the process names torch_npu writes, for the pids the events use
        names = draw(st.permutations(PROCESS_NAMES))
        events = [{"ph": "M", "name": "process_name", "pid": p, "tid": 0, "args": {"name": names[p]}}
                  for p in range(1, 5)] + events
    files[out + "trace_view.json"] = json.dumps(events).encode()
    for fname in CSV_COLUMNS:
        if draw(st.booleans()):
            files[out + fname] = draw(csv_bytes(fname))
    if draw(st.booleans()):
        files[out + "communication.json"] = draw(communication_json)
    if draw(st.booleans()):
        files["rank0_ascend_pt/profiler_info_0.json"] = draw(side_json)
    if draw(st.booleans()):
        files["rank0_ascend_pt/profiler_metadata.json"] = draw(side_json)
    return files


ASCEND_TEXT_FOLDERS = 400         # each loaded as is, with trace_view.json broken, and with a side file broken


def test_fuzz_torch_npu_text_export_loads_or_fails_in_one_line():
    record, check = counted(budget(ASCEND_TEXT_FOLDERS) * 3)

    @fuzz(ASCEND_TEXT_FOLDERS)
    @given(ascend_text_folder(), st.sampled_from(["rank", "output", "trace_view", "cluster"]), st.data())
    def run(files, entry, data):
        for variant in ("as is", "trace_view", "side file"):
            files = dict(files)
            if variant == "trace_view":
                key = next(k for k in files if k.endswith("trace_view.json"))
                files[key] = data.draw(mutated(files[key], keep=False))[0]
            elif variant == "side file":
                key = data.draw(st.sampled_from(sorted(files)))
                files[key] = data.draw(mutated(files[key], keep=False))[0] if files[key] else b"\xff"
            record()
            with fresh_folder() as tmp:
                root = tmp
                for rel, content in files.items():
                    _write(root, rel, content)
                rank = root / "rank0_ascend_pt"
                target = {"rank": rank, "output": rank / "ASCEND_PROFILER_OUTPUT", "cluster": root,
                          "trace_view": rank / "ASCEND_PROFILER_OUTPUT" / "trace_view.json"}[entry]
                loads_or_rejects(load_profile, target)
    run()
    check()


# ---- torch_npu DB export -------------------------------------------------------------------------------------
# The tables and columns the loader reads, as torch_npu writes them (declared types included).
DB_TABLES = {
    "STRING_IDS": [("id", "INTEGER PRIMARY KEY"), ("value", "TEXT")],
    "PYTORCH_API": [("startNs", "TEXT"), ("endNs", "TEXT"), ("globalTid", "INTEGER"), ("connectionId", "INTEGER"),
                    ("name", "INTEGER"), ("sequenceNumber", "INTEGER"), ("inputShapes", "INTEGER"),
                    ("callchainId", "INTEGER"), ("type", "INTEGER")],
    "CONNECTION_IDS": [("id", "INTEGER"), ("connectionId", "INTEGER")],
    "PYTORCH_CALLCHAINS": [("id", "INTEGER"), ("stack", "INTEGER"), ("stackDepth", "INTEGER")],
    "CANN_API": [("startNs", "INTEGER"), ("endNs", "INTEGER"), ("type", "INTEGER"), ("globalTid", "INTEGER"),
                 ("connectionId", "INTEGER"), ("name", "INTEGER")],
    "TASK": [("startNs", "INTEGER"), ("endNs", "INTEGER"), ("connectionId", "INTEGER"),
             ("globalTaskId", "INTEGER"), ("streamId", "INTEGER"), ("taskType", "INTEGER")],
    "COMPUTE_TASK_INFO": [("name", "INTEGER"), ("globalTaskId", "INTEGER"), ("taskType", "INTEGER"),
                          ("opType", "INTEGER")],
    "COMMUNICATION_OP": [("opName", "INTEGER"), ("startNs", "INTEGER"), ("endNs", "INTEGER"),
                         ("connectionId", "INTEGER")],
    "OVERLAP_ANALYSIS": [("startNs", "INTEGER"), ("endNs", "INTEGER"), ("type", "INTEGER")],
    "META_DATA": [("name", "TEXT"), ("value", "TEXT")],
    "RANK_DEVICE_MAP": [("rankId", "INTEGER"), ("deviceId", "INTEGER")],
    "NPU_INFO": [("id", "INTEGER"), ("name", "TEXT")],
}
ANALYSIS_TABLES = {
    "StepTraceTime": [("step", "TEXT"), ("computing", "NUMERIC"), ("communication_not_overlapped", "NUMERIC"),
                      ("free", "NUMERIC"), ("stage", "NUMERIC")],
    "CommAnalyzerTime": [("hccl_op_name", "TEXT"), ("group_name", "TEXT"), ("start_timestamp", "NUMERIC"),
                         ("elapse_time", "NUMERIC"), ("transit_time", "NUMERIC"), ("wait_time", "NUMERIC"),
                         ("synchronization_time", "NUMERIC"), ("idle_time", "NUMERIC"), ("step", "TEXT"),
                         ("type", "TEXT")],
}
db_value = st.one_of(st.integers(0, 6), st.integers(0, 6), st.sampled_from([50001, 50002, 50003, 20000, 0, 1, 2, 3]),
                     st.integers(1_700_000_000_000_000_000, 1_700_000_000_100_000_000), st.none(),
                     st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(allow_nan=False),
                     st.sampled_from(["abc", "12", "1.5", "", "step1", '{"TASK_QUEUE_ENABLE": "1"}', "[[[["]),
                     st.binary(max_size=3))


@st.composite
def db_tables(draw, spec: dict) -> dict:
    """{table: (columns with types, rows)}: tables dropped, columns dropped or untyped, odd values."""
    out = {}
    for table, columns in spec.items():
        if draw(st.integers(0, 5)) == 0:
            continue
        cols = [c for c in columns if draw(st.integers(0, 11)) > 0]
        if draw(st.integers(0, 5)) == 0:
            cols = [(name, "") for name, _ in cols]
        rows = draw(st.lists(st.tuples(*[db_value for _ in cols]), max_size=6)) if cols else []
        out[table] = (cols, rows)
    return out


def _write_db(path: Path, tables: dict):
    con = sqlite3.connect(path)
    try:
        for table, (cols, rows) in tables.items():
            if not cols:
                continue
            con.execute(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in cols)})")
            for row in rows:
                try:
                    con.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})", row)
                except sqlite3.IntegrityError:      # a duplicate or non-integer primary key: SQLite refuses it
                    pass
        con.commit()
    finally:
        con.close()


ASCEND_DB_EXPORTS = 450           # each loaded as written and once more cut short, garbled or emptied


def test_fuzz_torch_npu_db_export_loads_or_fails_in_one_line():
    record, check = counted(budget(ASCEND_DB_EXPORTS) * 2)

    @fuzz(ASCEND_DB_EXPORTS)
    @given(db_tables(DB_TABLES), st.one_of(st.none(), db_tables(ANALYSIS_TABLES)),
           st.sampled_from(["garbage", "cut", "cut", "empty"]), st.binary(max_size=64), st.sampled_from(["rank", "db"]))
    def run(tables, analysis, damage, garbage, entry):
        with fresh_folder() as tmp:
            out = tmp / "rank1_ascend_pt" / "ASCEND_PROFILER_OUTPUT"
            out.mkdir(parents=True)
            db = out / "ascend_pytorch_profiler_1.db"
            _write_db(db, tables)
            if analysis is not None:
                _write_db(out / "analysis.db", analysis)
            for variant in ("as written", damage):
                if variant == "garbage":
                    db.write_bytes(garbage)
                elif variant == "cut":
                    written = db.read_bytes()
                    db.write_bytes(written[:len(written) * len(garbage) // 65])
                elif variant == "empty":
                    db.write_bytes(b"")
                record()
                loads_or_rejects(load_profile, db if entry == "db" else out.parent)
    run()
    check()


def test_deep_nesting_is_a_clear_error(tmp_path):
    """The input found by hand: 100,000 nested brackets ended in 'internal error: RecursionError'."""
    for name, data in (("brackets.json", b"[" * 100_000 + b"]" * 100_000),
                       ("in_event.json", b'{"traceEvents": [{"ph": "X", "args": ' + b'{"a":' * 100_000 + b"1"
                        + b"}" * 100_000 + b"}]}")):
        path = _write(tmp_path, name, data)
        with pytest.raises(TraceFormatError, match="nested too deeply"):
            load_profile(path)
