"""NPU runtime findings on the real torch_npu samples; text and DB exports give the same findings."""
import csv
from pathlib import Path

import pytest

from npu_advise.analyzers import Context, npu_runtime
from npu_advise.load import load_profile

NPU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "npu"
TEXT1 = NPU / "alexnet_2rank_text" / "level1"
DB1 = NPU / "alexnet_2rank_db" / "level1"


def _findings(path):
    (t,) = load_profile(path)
    return t, {f.rule: f for f in npu_runtime.analyze(t, Context()).findings}


def test_transdata_and_online_compile_on_level1():
    rank = TEXT1 / "rank0_ascend_pt"
    t, f = _findings(rank)
    with open(rank / "ASCEND_PROFILER_OUTPUT" / "op_statistic.csv", newline="") as fh:
        stat = {r["OP Type"]: r for r in csv.DictReader(fh)}
    trans = f["NPA722"]
    assert trans.evidence[0].value == int(stat["TransData"]["Count"]) == 57
    assert trans.evidence[1].value == pytest.approx(float(stat["TransData"]["Total Time(us)"]), abs=0.5)
    assert trans.estimated_saving_us is None
    comp = f["NPA721"]
    assert comp.evidence[0].value == 19      # AscendCL@aclopCompileAndExecute events in trace_view.json
    op_compile = t.runtime[t.runtime["name"].astype(str) == "AscendCL@opCompile"]["dur"].sum() / 1000
    assert comp.estimated_saving_us == pytest.approx(op_compile, abs=0.01)
    assert any(l.file.endswith("main.py") for l in comp.locations)
    assert "NPA411" not in f and "NPA723" not in f      # no AI_CPU / AsStrided tasks in this run


def test_aicpu_kernels_with_python_stack():
    t, f = _findings(NPU / "fragments" / "trace_view_optimizer_slice.json")
    aicpu = f["NPA411"]
    assert aicpu.evidence[0].value == 2
    assert sorted(aicpu.details["launching_ops"]) == ["aclnnCast (1x)", "aclnnReduceSum (1x)"]
    k = t.kernels[t.kernels["core"].astype(str) == "AI_CPU"]
    assert aicpu.evidence[1].value == pytest.approx(k["dur"].sum() / 1000 / len(t.steps), abs=0.01)


def test_text_and_db_exports_give_the_same_findings():
    _, ft = _findings(TEXT1 / "rank0_ascend_pt")
    _, fd = _findings(DB1 / "rank0_ascend_pt")
    assert set(ft) == set(fd) == {"NPA721", "NPA722"}
    for code in ft:
        assert ft[code].evidence[0].value == fd[code].evidence[0].value            # same counts
        assert [(l.file, l.line) for l in ft[code].locations] == [(l.file, l.line) for l in fd[code].locations]


def test_all_analyzers_on_text_and_db_clusters():
    from npu_advise.analyzers import run_all
    from npu_advise.analyzers.ranks import compare_ranks

    codes = {}
    for run in (TEXT1, DB1):
        traces = load_profile(run)
        ranks = compare_ranks(traces)
        (slowest,) = [t for t in traces if t.rank == ranks.tables["slowest_rank"]]
        ctx = run_all(slowest, Context())
        codes[run] = {f.rule for f in ctx.findings}
    assert codes[TEXT1] == codes[DB1]
    assert {"NPA721", "NPA722"} <= codes[TEXT1]
