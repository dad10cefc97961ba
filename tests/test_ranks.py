"""Cross-rank analysis on the 2-rank torch_npu samples and on a real Kineto trace loaded as two ranks."""
import copy
import csv
from pathlib import Path

import pytest

from npu_advise.analyzers.ranks import SLOW_RANK_SPREAD, compare_ranks, rank_split
from npu_advise.load import load_profile

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEXT1 = DATA / "npu" / "alexnet_2rank_text" / "level1"
TEXT0 = DATA / "npu" / "alexnet_2rank_text" / "level0"
DB1 = DATA / "npu" / "alexnet_2rank_db" / "level1"


def _step_trace(rank_dir):
    with open(rank_dir / "ASCEND_PROFILER_OUTPUT" / "step_trace_time.csv", newline="") as f:
        return {k.strip(): float(v) for k, v in next(csv.DictReader(f)).items()}


@pytest.mark.parametrize("run", [TEXT1, TEXT0], ids=["level1", "level0"])
def test_rank_table_equals_step_trace_time(run):
    result = compare_ranks(load_profile(run))
    table = result.tables["ranks.table"]
    assert list(table["rank"]) == [0, 1]
    for rank in (0, 1):
        st = _step_trace(run / f"rank{rank}_ascend_pt")
        row = table[table["rank"] == rank].iloc[0]
        assert row["computing_us"] == pytest.approx(st["Computing"], abs=0.01)
        assert row["communication_us"] == pytest.approx(st["Communication(Not Overlapped)"], abs=0.01)
        assert row["free_us"] == pytest.approx(st["Free"], abs=0.01)
        parts = st["Computing"] + st["Communication(Not Overlapped)"] + st["Free"]
        assert row["step_us"] == pytest.approx(parts, abs=0.01)
        assert row["step_us"] == pytest.approx(st["Stage"], abs=0.5)   # Stage is rounded in the file
    # rank 0 waits in collectives for rank 1 (communication.json wait times): rank 1 sets the pace
    own = table["step_us"] - table["comm_wait_us"]
    assert result.tables["slowest_rank"] == int(table.loc[own.idxmax(), "rank"]) == 1


def test_level1_slow_rank_names_communication():
    result = compare_ranks(load_profile(TEXT1))
    (f,) = [f for f in result.findings if f.rule == "NPA211"]
    # rank 0: 101963.203 µs of not-overlapped communication vs 96359.047 on rank 1 = 5.65 % spread (> 5 %)
    assert f.details["slowest_rank"] == 1 and f.details["component"] == "communication"
    assert f.details["component_max_rank"] == 0
    assert f.details["spreads"]["communication"] > SLOW_RANK_SPREAD
    assert f.details["spreads"]["step"] < SLOW_RANK_SPREAD
    assert f.estimated_saving_us is None      # the step time spread itself is only 3.5 %
    wait = result.tables["ranks.table"].set_index("rank")["comm_wait_us"]
    assert wait[0] > wait[1]                  # communication.json wait time: rank 0 waits for rank 1


def test_overlap_analysis_gives_the_same_split_without_step_trace_time():
    for t in load_profile(DB1):
        st = t.extras.pop("step_trace_time")
        if "overlap" not in t.extras:
            continue
        split = rank_split(t)
        assert split["source"] == "overlap analysis"
        assert split["free_us"] == pytest.approx(float(st["Free"].iloc[0]), abs=0.01)
        assert split["computing_us"] == pytest.approx(float(st["Computing"].iloc[0]), abs=0.01)


def test_kineto_ranks_stretched_step_is_reported():
    base = load_profile(DATA / "kineto" / "hta_nccl_data_a100_ddp_rank0.json.gz")[0]
    fast = copy.deepcopy(base)
    slow = copy.deepcopy(base)
    fast.rank, slow.rank = 0, 1
    # rank 1 runs 20 % longer steps: the extra time is device-idle (the host is late)
    slow.steps["dur"] = (slow.steps["dur"] * 1.2).astype("int64")
    a = rank_split(fast)
    assert a["source"] == "device kernels" and a["communication_us"] > 0 and a["computing_us"] > 0
    assert a["step_us"] == pytest.approx(a["computing_us"] + a["communication_us"] + a["free_us"], rel=1e-9)
    result = compare_ranks([fast, slow])
    assert result.tables["slowest_rank"] == 1
    (f,) = [f for f in result.findings if f.rule == "NPA211"]
    assert f.details["slowest_rank"] == 1 and f.details["component"] == "free"
    # balanced work would give every rank the mean own time: the pace-setter's excess over it is lost per step
    tab = result.tables["ranks.table"]
    own = tab["step_us"] - tab["comm_wait_us"]
    assert f.estimated_saving_us == pytest.approx(own.max() - own.mean(), abs=0.01)


def test_equal_ranks_give_no_slow_rank_finding():
    base = load_profile(DATA / "kineto" / "hta_nccl_data_a100_ddp_rank0.json.gz")[0]
    other = copy.deepcopy(base)
    other.rank = 1
    result = compare_ranks([base, other])
    assert not [f for f in result.findings if f.rule in ("NPA211", "NPA212")]
