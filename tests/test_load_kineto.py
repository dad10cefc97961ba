"""The Kineto loader on every real trace in ../shared/data/kineto, cross-checked against the json module.

Expected values come from the files themselves (an independent pass with `json`), except the facts the
data README states (1,890 item/_local_scalar_dense ops, cuda_sync events, hip* runtime names).
"""
from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA, run_cli
from npu_advise.errors import TraceFormatError
from npu_advise.load.kineto import load_kineto

KINETO = SHARED_DATA / "kineto"
TRACES = {
    # file: (device type, profiler steps, rank)
    "hta_amd_mi250_minitoy_train.json.gz": ("rocm", [1, 2], None),
    "hta_critical_path_alexnet_a100_cudasync.json.gz": ("cuda", [], 0),
    "hta_df_index_resolver_v100_rank1.json.gz": ("cuda", [2, 3, 4, 5, 6], 1),
    "hta_nccl_data_a100_ddp_rank0.json.gz": ("cuda", [4, 5, 6], 0),
    "hta_negative_queue_a100_80g_rank0.json.gz": ("cuda", [550, 551, 552, 553, 554], 0),
    "hta_ns_resolution_resnet_v100_rank0.pt.trace.json.gz": ("cuda", [101, 102, 103, 104, 105], 0),
}
OP_CATS = {"cpu_op", "Operator", "operator"}
RT_CATS = {"cuda_runtime", "cuda_driver", "Runtime", "runtime"}
KERNEL_CATS = {"kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset", "cuda_sync"}

_cache: dict = {}


def _raw(name: str) -> dict:
    """The trace as the json module reads it, numbers with fractions as exact Decimals."""
    if name not in _cache:
        with gzip.open(KINETO / name, "rt") as f:
            _cache[name] = json.load(f, parse_float=Decimal)
    return _cache[name]


def _ns(ts) -> int:
    return int(Decimal(ts) * 1000)


def _complete(events, cats):
    return [e for e in events if e.get("ph") == "X" and e.get("cat") in cats]


@pytest.fixture(scope="module")
def loaded():
    if not KINETO.is_dir():
        pytest.skip(f"shared Kineto traces not present at {KINETO}")
    return {name: load_kineto(str(KINETO / name)) for name in TRACES}


def test_the_data_folder_holds_exactly_the_traces_tested():
    assert sorted(p.name for p in KINETO.iterdir()) == sorted(TRACES)


@pytest.mark.parametrize("name", sorted(TRACES))
def test_every_trace_loads_with_counts_matching_the_json(loaded, name):
    trace = loaded[name]
    device_type, steps, rank = TRACES[name]
    events = _raw(name)["traceEvents"]
    assert trace.fmt == "kineto"
    assert trace.device_type == device_type
    assert trace.rank == rank
    assert trace.steps["step"].tolist() == steps
    step_names = {f"ProfilerStep#{s}" for s in steps}
    ops = [e for e in _complete(events, OP_CATS) if e["name"] not in step_names]
    assert len(trace.ops) == len(ops)
    assert len(trace.runtime) == len(_complete(events, RT_CATS))
    assert len(trace.kernels) == len(_complete(events, KERNEL_CATS))
    assert Counter(trace.ops["name"].astype(str)) == Counter(e["name"] for e in ops)
    assert sorted(trace.ops["dur"].tolist()) == sorted(_ns(e["dur"]) for e in ops)
    # Steps: the host ProfilerStep ranges, exactly.
    raw_steps = {int(e["name"].split("#")[1]): (_ns(e["ts"]), _ns(e["dur"]))
                 for e in _complete(events, OP_CATS | {"user_annotation"}) if e["name"] in step_names}
    for row in trace.steps.itertuples():
        assert (row.ts, row.dur) == raw_steps[row.step]
    # Every op inside a step is assigned to it.
    inside = trace.ops["step"].to_numpy() >= 0
    if steps:
        assert inside.any()
        s = trace.steps.set_index("step")
        op_step = trace.ops[inside]
        start = s.loc[op_step["step"], "ts"].to_numpy()
        assert (op_step["ts"].to_numpy() >= start).all()
        assert (op_step["ts"].to_numpy() < start + s.loc[op_step["step"], "dur"].to_numpy()).all()
    else:
        assert not inside.any()
    # Columns follow the model schema.
    from npu_advise import model
    for table, schema in ((trace.ops, model.OPS_COLUMNS), (trace.runtime, model.RUNTIME_COLUMNS),
                          (trace.kernels, model.KERNEL_COLUMNS), (trace.steps, model.STEP_COLUMNS)):
        assert list(table.columns) == list(schema)


def test_item_and_local_scalar_dense_count(loaded):
    ops = loaded["hta_negative_queue_a100_80g_rank0.json.gz"].ops
    assert int(ops["name"].isin(["aten::item", "aten::_local_scalar_dense"]).sum()) == 1890


def test_cuda_sync_events_are_kernels_of_kind_sync(loaded):
    name = "hta_critical_path_alexnet_a100_cudasync.json.gz"
    kernels = loaded[name].kernels
    raw_sync = _complete(_raw(name)["traceEvents"], {"cuda_sync"})
    assert len(raw_sync) == 41
    sync = kernels[kernels["kind"] == "sync"]
    assert len(sync) == len(raw_sync)
    assert sorted(sync["ts"].tolist()) == sorted(_ns(e["ts"]) for e in raw_sync)
    assert set(kernels["kind"].astype(str)) == {"kernel", "memcpy", "memset", "sync"}


def test_nanosecond_timestamps_keep_sub_microsecond_precision(loaded):
    name = "hta_ns_resolution_resnet_v100_rank0.pt.trace.json.gz"
    trace = loaded[name]
    raw = _complete(_raw(name)["traceEvents"], RT_CATS)
    expected = sorted(_ns(e["ts"]) for e in raw)
    assert any(ts % 1000 for ts in expected)        # the file really has sub-µs digits
    assert sorted(trace.runtime["ts"].tolist()) == expected
    kernels = _complete(_raw(name)["traceEvents"], KERNEL_CATS)
    assert sorted(trace.kernels["ts"].tolist()) == sorted(_ns(e["ts"]) for e in kernels)


def test_rocm_runtime_names(loaded):
    rt = loaded["hta_amd_mi250_minitoy_train.json.gz"].runtime
    names = set(rt["name"].astype(str))
    assert {"hipLaunchKernel", "hipDeviceSynchronize"} <= names
    assert all(n.startswith("hip") for n in names)


def test_every_v100_kernel_links_to_its_launching_runtime_call(loaded):
    name = "hta_df_index_resolver_v100_rank1.json.gz"
    trace = loaded[name]
    events = _raw(name)["traceEvents"]
    launches = {e["args"]["correlation"]: e for e in _complete(events, RT_CATS)}
    raw_kernels = _complete(events, KERNEL_CATS)
    assert all(e["args"]["correlation"] in launches for e in raw_kernels)
    k = trace.kernels
    assert len(k) == len(raw_kernels) == 22290
    assert (k["launch"] >= 0).all()
    rt = trace.runtime
    launch = k["launch"].to_numpy()
    got = set(zip(k["ts"].tolist(), rt["ts"].to_numpy()[launch].tolist(),
                  rt["name"].astype(str).to_numpy()[launch].tolist()))
    want = {(_ns(e["ts"]), _ns(launches[e["args"]["correlation"]]["ts"]),
             launches[e["args"]["correlation"]]["name"]) for e in raw_kernels}
    assert got == want
    # The launching host op contains the launch; kernels inherit its step.
    op = k["op"].to_numpy()
    assert (op >= 0).mean() > 0.99
    has = op >= 0
    ops = trace.ops
    rt_ts = rt["ts"].to_numpy()[launch[has]]
    assert (ops["ts"].to_numpy()[op[has]] <= rt_ts).all()
    assert (rt_ts < (ops["ts"] + ops["dur"]).to_numpy()[op[has]]).all()
    assert (k["step"].to_numpy() == rt["step"].to_numpy()[launch]).all()


def test_negative_queue_links_only_kernels_whose_launch_was_recorded(loaded):
    name = "hta_negative_queue_a100_80g_rank0.json.gz"
    events = _raw(name)["traceEvents"]
    corr = {e["args"].get("correlation") for e in _complete(events, RT_CATS)}
    linkable = sum(1 for e in _complete(events, KERNEL_CATS) if e["args"].get("correlation") in corr)
    assert int((loaded[name].kernels["launch"] >= 0).sum()) == linkable == 6875


# ---- format variants, written from real data -------------------------------------------------------

SMALL = "hta_critical_path_alexnet_a100_cudasync.json.gz"     # µs integer timestamps
FRACTIONAL = "hta_amd_mi250_minitoy_train.json.gz"             # µs with ns fractions


def _plain(name: str) -> dict:
    with gzip.open(KINETO / name, "rt") as f:
        return json.load(f)


def _same_tables(a, b, shift_ns: int = 0, header: bool = True):
    for table in ("ops", "runtime", "kernels", "annotations", "steps", "python"):
        x, y = getattr(a, table).copy(), getattr(b, table).copy()
        if shift_ns:
            x["ts"] += shift_ns
        pd.testing.assert_frame_equal(x, y, check_categorical=False, obj=table)
    assert a.device_type == b.device_type
    if header:      # a bare array has no header (no distributedInfo, so no rank)
        assert a.rank == b.rank


@pytest.mark.parametrize("name", [SMALL, FRACTIONAL])
def test_plain_json_and_bare_array(loaded, tmp_path, name):
    doc = _plain(name)
    plain = tmp_path / "trace.json"
    plain.write_text(json.dumps(doc))
    _same_tables(loaded[name], load_kineto(str(plain)))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(doc["traceEvents"], indent=1))
    t = load_kineto(str(bare))
    _same_tables(loaded[name], t, header=False)
    assert t.rank is None and t.metadata["device_properties"] == []


def test_integer_and_float_timestamps_give_the_same_ns(loaded, tmp_path):
    doc = _plain(SMALL)
    for e in doc["traceEvents"]:
        if isinstance(e.get("ts"), int):
            e["ts"] = float(e["ts"])
    p = tmp_path / "floats.json"
    p.write_text(json.dumps(doc))
    assert re.search(r'"ts": \d{16}\.0,', p.read_text())
    _same_tables(loaded[SMALL], load_kineto(str(p)))
    # Fractions are kept exactly, even where float64 cannot hold them (1.7e15 µs): shift every event by
    # 0.437 µs, written as the number text "<µs>.437".
    doc = _plain(SMALL)
    for e in doc["traceEvents"]:
        if isinstance(e.get("ts"), int):
            e["ts"] = f"{e['ts']}.437"
    p2 = tmp_path / "shifted.json"
    p2.write_text(re.sub(r'"ts": "(\d+\.437)"', r'"ts": \1', json.dumps(doc)))
    assert '"ts": "' not in p2.read_text()
    _same_tables(loaded[SMALL], load_kineto(str(p2)), shift_ns=437)


def test_header_key_after_trace_events_with_brackets_inside_strings(loaded, tmp_path):
    doc = _plain(SMALL)
    events = doc.pop("traceEvents")
    text = json.dumps(doc)[:-1] + ', "traceEvents": ' + json.dumps(events) + \
        ', "INFO": ["a ] b", "[x]]", "}, {"], "traceName": "t]"}'
    p = tmp_path / "tail.json.gz"
    with gzip.open(p, "wt") as f:
        f.write(text)
    t = load_kineto(str(p))
    _same_tables(loaded[SMALL], t)
    assert t.metadata["device_properties"] == doc["deviceProperties"]


def test_string_ids_fall_back_to_loose_decoding(loaded, tmp_path):
    doc = _plain(SMALL)
    for e in doc["traceEvents"]:
        if "External id" in e.get("args", {}):
            e["args"]["External id"] = str(e["args"]["External id"])
    p = tmp_path / "strings.json"
    p.write_text(json.dumps(doc))
    _same_tables(loaded[SMALL], load_kineto(str(p)))


# ---- bad input ---------------------------------------------------------------------------------------

def _bad_files(tmp_path: Path) -> dict:
    real = (KINETO / SMALL).read_bytes()
    text = gzip.decompress(real)
    files = {
        "empty.json": b"",
        "truncated.json.gz": real[: len(real) // 2],
        "cut_in_middle.json": text[: len(text) // 2],
        "random.json": bytes(random.Random(7).getrandbits(8) for _ in range(5000)),
        "no_events.json": json.dumps({"schemaVersion": 1, "deviceProperties": []}).encode(),
        "corrupt.json.gz": real[:200] + bytes(200) + real[400:],
    }
    out = {}
    for n, data in files.items():
        (tmp_path / n).write_bytes(data)
        out[n] = tmp_path / n
    return out


def test_bad_input_raises_trace_format_error(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(TraceFormatError) as exc:
            load_kineto(str(path))
        assert str(path) in str(exc.value), name
        assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["empty.json", "truncated.json.gz", "cut_in_middle.json", "random.json",
                                  "no_events.json"])
def test_cli_reports_bad_trace_in_one_line(tmp_path, name):
    path = _bad_files(tmp_path)[name]
    r = run_cli("analyze", path, "--out", tmp_path / "out", timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npu-advise: error:"), r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_exact_columns_are_identical_when_loaded_twice(loaded):
    # Interned names / shared strings must not leak state between loads.
    name = "hta_nccl_data_a100_ddp_rank0.json.gz"
    again = load_kineto(str(KINETO / name))
    _same_tables(loaded[name], again)
    assert np.array_equal(again.kernels["launch"].to_numpy(), loaded[name].kernels["launch"].to_numpy())
