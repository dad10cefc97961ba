"""Environment analysis: only what the trace's evidence supports."""
from pathlib import Path

import pytest

from npu_advise.analyzers import Context, environment
from npu_advise.load import load_profile

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NPU_L1 = DATA / "npu" / "alexnet_2rank_text" / "level1"


@pytest.fixture
def npu():
    return load_profile(NPU_L1)[0]


def test_recorded_environment_and_host_bound_levers(npu):
    # profiler_metadata.json lists ASCEND_LAUNCH_BLOCKING etc. (empty) but not TASK_QUEUE_ENABLE
    assert "ASCEND_LAUNCH_BLOCKING" in npu.env and "TASK_QUEUE_ENABLE" not in npu.env
    res = environment.analyze(npu, Context())
    table = dict(zip(res.tables["environment"]["variable"], res.tables["environment"]["value"]))
    assert table["ASCEND_LAUNCH_BLOCKING"] == "(unset)"
    assert table["TASK_QUEUE_ENABLE"] == "(not recorded)"
    rules = {f.rule: f for f in res.findings}
    # the step is ~28 % device-free: TASK_QUEUE / affinity levers are supported by the trace
    assert set(rules) == {"NPA702", "NPA703"}
    tq = rules["NPA702"]
    assert "not recorded" in tq.title and tq.details["change"] == "export TASK_QUEUE_ENABLE=2"
    share = next(e.value for e in tq.evidence if e.label == "device free share of step")
    assert 20 < share < 40
    assert all(f.estimated_saving_us is None for f in res.findings)


def test_launch_blocking_always_flagged_and_levers_need_evidence(npu):
    npu.metadata["env"] = dict(npu.env, ASCEND_LAUNCH_BLOCKING="1", TASK_QUEUE_ENABLE="2", CPU_AFFINITY_CONF="1")
    res = environment.analyze(npu, Context())
    assert [f.rule for f in res.findings] == ["NPA701"]
    assert res.findings[0].severity == "high"


def test_no_host_bound_evidence_no_lever(npu):
    # pretend the host-bound analysis measured a fully busy device: no lever may be recommended
    import pandas as pd

    busy = pd.DataFrame({"step": [50], "duration_us": [1000.0], "busy_us": [1000.0], "free_us": [0.0],
                         "host_wait_us": [0.0], "other_gap_us": [0.0]})
    res = environment.analyze(npu, Context(tables={"host_bound.steps": busy}))
    assert res.findings == []


def test_combined_enable_needs_hot_copy_kernels(npu):
    res = environment.analyze(npu, Context())
    assert "NPA704" not in {f.rule for f in res.findings}   # AlexNet has no AsStrided/ViewCopy kernels
    k = npu.kernels
    k["name"] = k["name"].cat.add_categories(["AsStrided"])
    biggest = k["dur"].idxmax()
    k.loc[biggest, "name"] = "AsStrided"
    res = environment.analyze(npu, Context())
    f = next(f for f in res.findings if f.rule == "NPA704")
    assert next(e.value for e in f.evidence if e.label == "share of step") >= 100 * environment.COPY_KERNEL_SHARE


def test_no_environment_is_a_limitation_not_a_guess():
    t = load_profile(DATA / "kineto" / "hta_amd_mi250_minitoy_train.json.gz")[0]
    res = environment.analyze(t, Context())
    assert res.findings == [] and "environment" not in res.tables
    assert any("No environment variables were recorded" in l for l in t.limitations)
