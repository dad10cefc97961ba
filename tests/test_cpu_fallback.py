"""NPA401: ops without an NPU kernel, on a real profiled script and on real GPU traces."""
from __future__ import annotations

from pathlib import Path

import pytest

from npu_advise.analyzers import Context, cpu_fallback
from npu_advise.load.kineto import load_kineto

from _tracing import demo_line, demo_trace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def demo():
    script, trace_path = demo_trace()
    trace = load_kineto(str(trace_path))
    return script, trace, cpu_fallback.analyze(trace, Context(project_root=script.parent)).findings


def test_shipped_list_matches_reference():
    names = cpu_fallback.ops_without_npu_kernel()
    reference = SHARED.parent / "docs" / "data" / "aten_ops_without_npu_kernel.txt"
    if reference.is_file():   # the shipped copy is the shared reference list, verbatim
        assert names == {l.strip() for l in reference.read_text().splitlines() if l.strip()}
    assert len(names) == 235
    assert {"_linalg_slogdet", "linalg_inv_ex", "hypot", "_linalg_eigh"} <= names
    assert "inverse" not in names and "_linalg_svd" not in names
    assert cpu_fallback.bare_name("aten::_linalg_slogdet.sign") == "_linalg_slogdet"
    assert not cpu_fallback.is_fallback_op("_cudnn_rnn")   # backend-specific, not an NPU question


def test_logdet_is_one_call_per_step_at_its_line(demo):
    script, trace, findings = demo
    assert [f.rule for f in findings] == ["NPA401"]
    f = findings[0]
    assert [(l.file, l.line) for l in f.locations] == [("demo_train.py", demo_line("logdet"))]
    assert f.predicted is True and f.estimated_saving_us is None
    assert f.details["public_api"] == "torch.logdet"
    assert f.details["op"] == "aten::_linalg_slogdet"
    assert f.details["replacement"] == "logdet_svdvals"
    assert "svdvals(x).log().sum(-1)" in f.details["composition"]
    ev = {e.label: e for e in f.evidence}
    # aten::logdet > linalg_slogdet > _linalg_slogdet > linalg_lu_factor_ex: one call, not two
    assert ev["calls per step"].value == 1.0
    assert ev["input shapes"].value == "[[8, 2, 2]]"
    # backward: LinalgSlogdetBackward0 runs linalg_lu_solve (also without NPU kernel), same line
    phases = {(o["op"], o["phase"]): o for o in f.details["ops"]}
    assert phases[("aten::_linalg_slogdet", "forward")]["calls_per_step"] == 1.0
    assert phases[("aten::linalg_lu_solve", "backward")]["autograd_node"] == "LinalgSlogdetBackward0"
    # the host time is the sum of the recorded op durations
    # (linalg_lu_solve also runs inside torch.inverse's forward: only the one under the backward node counts)
    ops = trace.ops[trace.ops["step"] >= 0]
    slogdet = ops[ops["name"] == "aten::_linalg_slogdet"]["dur"].sum()
    nodes = ops[ops["name"] == "LinalgSlogdetBackward0"]
    solve = ops[ops["name"] == "aten::linalg_lu_solve"]
    in_node = sum(solve[(solve["ts"] >= n.ts) & (solve["ts"] + solve["dur"] <= n.ts + n.dur) & (solve["tid"] == n.tid)]["dur"].sum()
                  for n in nodes.itertuples())
    assert len(nodes) == 2
    assert ev["host time per step"].value == pytest.approx((slogdet + in_node) / 2 / 1000, abs=0.01)


def test_inverse_is_not_reported(demo):
    # torch.inverse has an NPU kernel although CPU runs it as linalg_inv_ex + LU ops
    script, trace, findings = demo
    assert "aten::linalg_inv_ex" in set(trace.ops["name"].astype(str))
    assert all(l.line != demo_line("inverse") for f in findings for l in f.locations)


@pytest.mark.parametrize("name", sorted(p.name for p in (SHARED / "kineto").glob("*.json.gz")))
def test_real_gpu_traces_have_no_fallbacks(name):
    # None of these traces calls an op from the list (checked by name below), so nothing may be reported.
    trace = load_kineto(str(SHARED / "kineto" / name))
    listed = [n for n in trace.ops["name"].astype(str).unique()
              if cpu_fallback.is_fallback_op(cpu_fallback.bare_name(n))]
    findings = cpu_fallback.analyze(trace, Context()).findings
    assert [f for f in findings if f.rule == "NPA401"] == [] if not listed else findings


def test_npu_aicpu_kernels_fragment():
    # The real NPU slice runs two Cast kernels on AI_CPU cores (msprof-analyze test data).
    from npu_advise.load import load_profile
    trace = load_profile(SHARED / "npu" / "fragments" / "trace_view_optimizer_slice.json")[0]
    findings = cpu_fallback.analyze(trace, Context()).findings
    aicpu = trace.kernels[trace.kernels["core"].astype(str) == "AI_CPU"]
    assert {f.details["kernel"] for f in findings if f.rule == "NPA410"} == set(aicpu["name"].astype(str))
    for f in findings:
        ev = {e.label: e.value for e in f.evidence}
        dur = aicpu[aicpu["name"].astype(str) == f.details["kernel"]]["dur"].sum() / 1000
        assert ev["device time per step"] == pytest.approx(dur, abs=0.01)
    assert not [f for f in findings if f.rule == "NPA401"]   # no listed op in this slice


@pytest.mark.parametrize("folder", ["alexnet_2rank_text/level1", "alexnet_2rank_db/level1", "alexnet_2rank_text/level0"])
def test_npu_alexnet_has_no_fallbacks(folder):
    from npu_advise.load import load_profile
    for trace in load_profile(SHARED / "npu" / folder):
        assert not [n for n in trace.ops["name"].astype(str).unique()
                    if cpu_fallback.is_fallback_op(cpu_fallback.bare_name(n))]
        assert [f for f in cpu_fallback.analyze(trace, Context()).findings if f.rule == "NPA401"] == []


def test_bundled_example_logdet_via_cli():
    from _tracing import example_findings, example_marker_line
    doc, out = example_findings()
    found = [f for f in doc["findings"] if f["rule"] == "NPA401"]
    assert [f["locations"] for f in found] == [[{"file": "train.py", "line": example_marker_line("logdet"),
                                                 "function": "nll_with_covariances"}]]
    assert found[0]["details"]["replacement"] == "logdet_svdvals" and found[0]["predicted"] is True
