"""torch_npu loader on every sample under ../shared/data/npu, asserting values read from the files."""
import csv
import shutil
import sqlite3
from pathlib import Path

import pytest

from npu_advise.errors import TraceFormatError, UserError
from npu_advise.load import load_profile
from npu_advise.load.ascend import is_ascend_dir, rank_dirs

NPU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "npu"
TEXT1 = NPU / "alexnet_2rank_text" / "level1"
TEXT0 = NPU / "alexnet_2rank_text" / "level0"
DB1 = NPU / "alexnet_2rank_db" / "level1"
ALL_RANK_DIRS = [TEXT1 / "rank0_ascend_pt", TEXT1 / "rank1_ascend_pt", TEXT0 / "rank0_ascend_pt",
                 TEXT0 / "rank1_ascend_pt", DB1 / "rank0_ascend_pt", DB1 / "rank1_ascend_pt"]


def _csv(path):
    with open(path, newline="") as f:
        return [{k.strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]


def _step_trace(rank_dir):
    p = rank_dir / "ASCEND_PROFILER_OUTPUT" / "step_trace_time.csv"
    if p.is_file():
        return _csv(p)[0]
    con = sqlite3.connect(rank_dir / "ASCEND_PROFILER_OUTPUT" / "analysis.db")
    step, comp, comm, free = con.execute(
        "SELECT step, computing, communication_not_overlapped, free FROM StepTraceTime").fetchone()
    return {"Step": step, "Computing": comp, "Communication(Not Overlapped)": comm, "Free": free}


@pytest.mark.parametrize("rank_dir", ALL_RANK_DIRS, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_every_rank_loads_with_rank_steps_and_step_trace(rank_dir):
    (t,) = load_profile(rank_dir)
    assert t.device_type == "npu"
    assert t.rank == int(rank_dir.name[4])
    st = _step_trace(rank_dir)
    assert list(t.steps["step"]) == [int(st["Step"])]
    got = t.extras["step_trace_time"].iloc[0]
    assert got["Free"] == pytest.approx(float(st["Free"]), abs=1e-3)
    assert got["Computing"] == pytest.approx(float(st["Computing"]), abs=1e-3)
    # the host ProfilerStep#50 range encloses the device step (Computing + Comm + Free)
    device_step = float(st["Computing"]) + float(st["Communication(Not Overlapped)"]) + float(st["Free"])
    assert t.steps["dur"].iloc[0] / 1000 > device_step
    assert t.metadata["env"]["ASCEND_LAUNCH_BLOCKING"] == ""
    assert (t.kernels["kind"] == "communication").sum() == 4       # the four hcom_allReduce of DDP
    assert len(t.ops) == 857 and (t.ops["loc"] >= 0).any()


def test_cluster_folder_and_output_dir_are_accepted():
    assert is_ascend_dir(TEXT1) and len(rank_dirs(TEXT1)) == 2
    assert rank_dirs(TEXT1 / "rank1_ascend_pt" / "ASCEND_PROFILER_OUTPUT") == [TEXT1 / "rank1_ascend_pt"]
    traces = load_profile(TEXT1)
    assert [t.rank for t in traces] == [0, 1]
    (t,) = load_profile(TEXT1 / "rank1_ascend_pt" / "ASCEND_PROFILER_OUTPUT")
    assert t.rank == 1


def test_level1_sync_events_attributed_to_source_lines():
    (t,) = load_profile(TEXT1 / "rank0_ascend_pt")
    import json
    events = json.loads((TEXT1 / "rank0_ascend_pt" / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").read_text())
    n_sync = sum(1 for e in events if e.get("ph") == "X" and "Synchronize" in e.get("name", ""))
    rt = t.runtime
    syncs = rt[rt["name"].astype(str).str.contains("Synchronize")]
    assert len(syncs) == n_sync == 8
    longest = syncs.loc[syncs["dur"].idxmax()]
    assert str(longest["name"]) == "AscendCL@aclrtSynchronizeStreamWithTimeout"
    assert longest["dur"] == 91682160                   # 91682.16 µs in the file
    assert str(t.ops["name"].iloc[longest["op"]]) == "aten::_local_scalar_dense"
    loc = t.location(longest["loc"])
    assert loc["file"].endswith("imagenet_script/main.py") and loc["line"] == 485
    # stream syncs made from the Python thread all have their host op
    stream_syncs = syncs[syncs["name"].astype(str) == "AscendCL@aclrtSynchronizeStreamWithTimeout"]
    assert (stream_syncs["op"] >= 0).all()


def test_level0_says_no_cann_layer():
    (t,) = load_profile(TEXT0 / "rank0_ascend_pt")
    assert len(t.runtime) == 0
    assert any("No CANN layer (profiler_level=Level0)" in s for s in t.limitations)
    # device tasks still reach their host ops through the async_npu flows
    assert (t.kernels["op"] >= 0).mean() > 0.8


def test_top_kernels_equal_op_statistic():
    rank = TEXT1 / "rank0_ascend_pt"
    (t,) = load_profile(rank)
    stat = _csv(rank / "ASCEND_PROFILER_OUTPUT" / "op_statistic.csv")
    top = sorted(stat, key=lambda r: -float(r["Total Time(us)"]))[:5]
    k = t.kernels.assign(type=t.extras["kernel_types"].to_numpy())
    by_type = k.groupby("type")["dur"].agg(["count", "sum"])
    for r in top:
        assert by_type.loc[r["OP Type"], "count"] == int(r["Count"])
        assert by_type.loc[r["OP Type"], "sum"] / 1000 == pytest.approx(float(r["Total Time(us)"]), abs=0.01 * int(r["Count"]))
    cores = dict(zip(k["type"], k["core"].astype(str)))
    assert cores["TransData"] == "AI_VECTOR_CORE" and cores["MatMulV2"] == "AI_CORE"


def test_text_and_db_give_the_same_model_shape():
    (a,) = load_profile(TEXT1 / "rank0_ascend_pt")
    (b,) = load_profile(DB1 / "rank0_ascend_pt")
    assert a.fmt == "ascend_text" and b.fmt == "ascend_db"
    assert len(a.ops) == len(b.ops)
    assert a.kernels["kind"].value_counts().to_dict() == b.kernels["kind"].value_counts().to_dict()
    na = a.runtime["name"].astype(str).value_counts()
    nb = b.runtime["name"].astype(str).value_counts()
    for name in ("AscendCL@aclrtSynchronizeStreamWithTimeout", "AscendCL@aclopCompileAndExecute", "Node@launch"):
        assert na[name] == nb[name]
    assert b.locations["file"].str.endswith("main.py").any()
    assert set(a.extras["overlap"]["kind"]) == {"Computing", "Communication", "Communication(Not Overlapped)", "Free"}


def test_fragment_file_path_loads():
    (t,) = load_profile(NPU / "fragments" / "trace_view_optimizer_slice.json")
    assert t.fmt == "ascend_text"
    assert (t.ops["name"].astype(str) == "aten::item").sum() == 45
    assert (t.kernels["core"].astype(str) == "AI_CPU").sum() == 2


def test_large_kernel_details_csv_parses():
    from npu_advise.load.ascend_csv import read_csv
    df = read_csv(NPU / "fragments" / "kernel_details_large_model.csv")
    assert len(df) == 591
    assert (df["Accelerator Core"] == "AI_CPU").sum() == 7
    assert df["Wait Time(us)"].dtype.kind == "f"
    hcom = df[df["Name"] == "hcom_broadcast__445_0"].iloc[0]
    assert hcom["start_ns"] == 1699529622793969500 and hcom["Duration(us)"] == pytest.approx(308926.68)
    assert df["Task ID"].isna().sum() > 0          # N/A -> missing


def test_corrupt_inputs_raise_one_line_errors(tmp_path):
    src = TEXT1 / "rank0_ascend_pt"
    bad = tmp_path / "rank0_ascend_pt"
    shutil.copytree(src, bad)
    tv = bad / "ASCEND_PROFILER_OUTPUT" / "trace_view.json"
    data = tv.read_bytes()
    tv.chmod(0o644)
    tv.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFormatError) as e:
        load_profile(bad)
    assert "\n" not in str(e.value)

    not_profile = tmp_path / "empty"
    not_profile.mkdir()
    with pytest.raises(UserError):
        load_profile(not_profile)

    dbdir = tmp_path / "rank0db_ascend_pt" / "ASCEND_PROFILER_OUTPUT"
    dbdir.mkdir(parents=True)
    (dbdir / "ascend_pytorch_profiler_0.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TraceFormatError) as e:
        load_profile(dbdir.parent)
    assert "\n" not in str(e.value)
