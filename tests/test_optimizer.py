"""NPA601: unfused optimizer steps and the line that constructs the optimizer."""
from __future__ import annotations

from pathlib import Path

import pytest

from npu_advise.analyzers import Context, optimizer
from npu_advise.load.kineto import load_kineto

from _tracing import demo_line, demo_trace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def demo():
    script, trace_path = demo_trace()
    trace = load_kineto(str(trace_path))
    return script, trace, optimizer.analyze(trace, Context(project_root=script.parent)).findings


def test_unfused_adamw(demo):
    script, trace, findings = demo
    assert [f.rule for f in findings] == ["NPA601"]
    f = findings[0]
    d = f.details
    assert d["optimizer"] == "AdamW" and d["mode"] == "single_tensor"
    assert d["construct_line"] == demo_line("adamw") and d["construct_kind"] == "call"
    assert [(l.file, l.line) for l in f.locations] == [("demo_train.py", demo_line("adamw"))]
    assert d["npu_replacement"] == "torch_npu.optim.NpuFusedAdamW" and d["cuda_flag"] == "fused=True"
    # 6 parameter tensors; single-tensor AdamW issues 10 top-level ops per tensor (step count item,
    # mul_, lerp_, mul_, addcmul_, sqrt, div, add_, addcdiv_, add_ on the step counter...)
    an = trace.annotations[trace.annotations["name"] == "Optimizer.step#AdamW.step"]
    assert len(an) == 2
    ev = {e.label: e.value for e in f.evidence}
    assert ev["optimizer steps per training step"] == 1.0
    assert ev["optimizer time per step"] == pytest.approx(an["dur"].sum() / 2 / 1000, abs=0.01)
    assert ev["ops per step"] % 6 == 0 and ev["ops per step"] >= 6 * 8
    assert f.estimated_saving_us is None and "CPU-only" in d["note"]


def test_constructions_in_all_spellings(tmp_path):
    (tmp_path / "a.py").write_text("from torch.optim import AdamW\n\nopt = AdamW(params, lr=1)\n")
    (tmp_path / "b.py").write_text("import torch.optim as optim\n\n\ndef build(m):\n    return optim.AdamW(m.parameters())\n")
    (tmp_path / "c.py").write_text("optimizer = dict(type='AdamW', lr=2e-4, weight_decay=1e-07)\n"
                                   "other = dict(type='SGD')\n")
    (tmp_path / "d.py").write_text("class AdamW:\n    pass\n\nx = AdamW()\n")          # not torch's
    (tmp_path / "e.py").write_text("from torch import optim\ncfg = {'type': 'AdamW'}\no = optim.Adam(p)\n")
    found = {(Path(c["file"]).name, c["line"], c["kind"]) for c in optimizer.find_constructions(tmp_path, "AdamW")}
    assert found == {("a.py", 3, "call"), ("b.py", 5, "call"), ("c.py", 1, "config"), ("e.py", 2, "config")}
    b = [c for c in optimizer.find_constructions(tmp_path, "AdamW") if c["file"].endswith("b.py")][0]
    assert b["function"] == "build"


@pytest.mark.parametrize("name", sorted(p.name for p in (SHARED / "kineto").glob("*.json.gz")))
def test_real_gpu_traces(name):
    trace = load_kineto(str(SHARED / "kineto" / name))
    findings = optimizer.analyze(trace, Context()).findings
    steps = trace.annotations["name"].astype(str).str.startswith("Optimizer.step#").sum() \
        + trace.ops["name"].astype(str).str.startswith("Optimizer.step#").sum()
    if steps == 0:
        assert findings == []
    if name.startswith("hta_negative_queue"):   # apex FusedAdam: already fused
        assert findings == []
    if name.startswith(("hta_nccl_data", "hta_ns_resolution", "hta_amd")):   # foreach SGD: 2-3 ops per step
        assert findings == []
    if name.startswith("hta_df_index_resolver"):   # single-tensor SGD over 404 parameter updates per step
        assert [f.details["optimizer"] for f in findings] == ["SGD"]
        assert findings[0].details["npu_replacement"] == "torch_npu.optim.NpuFusedSGD"
    for f in findings:
        ev = {e.label: e.value for e in f.evidence}
        assert ev["ops per step"] >= optimizer.MIN_OPS_PER_STEP
        # on a GPU trace the saving is optimizer time minus its kernels' time, never negative
        assert f.estimated_saving_us is not None and 0 <= f.estimated_saving_us <= ev["optimizer time per step"]


def test_npu_adam_step_fragment():
    # A real torch_npu trace_view.json slice around an Adam step (msprof-analyze test data).
    path = SHARED / "npu" / "fragments" / "trace_view_optimizer_slice.json"
    from npu_advise.load import load_profile
    trace = load_profile(path)[0]
    findings = optimizer.analyze(trace, Context()).findings
    assert [f.rule for f in findings] == ["NPA601"]
    f = findings[0]
    assert f.details["optimizer"] == "Adam" and f.details["npu_replacement"] == "torch_npu.optim.NpuFusedAdam"
    assert f.predicted is False and f.locations == []     # no call stacks, no project: no construction line

    # Independent count from the raw JSON: cpu_op events inside the step range on its thread.
    import json
    events = json.loads(path.read_text())
    step = [e for e in events if e.get("name") == "Optimizer.step#Adam.step"][0]
    lo, hi = float(step["ts"]), float(step["ts"]) + float(step["dur"])
    inside = [e for e in events if e.get("cat") == "cpu_op" and e.get("ph") == "X" and e["tid"] == step["tid"]
              and e is not step and lo <= float(e["ts"]) and float(e["ts"]) + float(e["dur"]) <= hi + 1e-3]
    top = [e for e in inside if not any(o is not e and float(o["ts"]) <= float(e["ts"]) and
                                        float(e["ts"]) + float(e["dur"]) <= float(o["ts"]) + float(o["dur"])
                                        for o in inside)]
    ev = {e.label: e.value for e in f.evidence}
    assert ev["aten ops per step incl. nested"] == len(inside)
    assert ev["ops per step"] == len(top)
    assert ev["optimizer time per step"] == pytest.approx(float(step["dur"]), abs=0.01)
    assert f.estimated_saving_us == pytest.approx(ev["optimizer time per step"] - ev["device kernel time per step"], abs=0.01)


def test_bundled_example_adamw_via_cli():
    from _tracing import example_findings, example_marker_line
    doc, out = example_findings()
    found = [f for f in doc["findings"] if f["rule"] == "NPA601"]
    assert len(found) == 1
    assert found[0]["details"]["construct_line"] == example_marker_line("adamw")
    assert found[0]["locations"] == [{"file": "train.py", "line": example_marker_line("adamw"), "function": "main"}]
