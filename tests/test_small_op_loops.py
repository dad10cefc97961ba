"""NPA501: loops of small ops, tied to the loop in the source by the syntax tree."""
from __future__ import annotations

from pathlib import Path

import pytest

from npu_advise.analyzers import Context, small_op_loops, source
from npu_advise.load.kineto import load_kineto

from _tracing import demo_line, demo_trace, profile_script

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def demo():
    script, trace_path = demo_trace()
    trace = load_kineto(str(trace_path))
    findings = small_op_loops.analyze(trace, Context(project_root=script.parent)).findings
    return script, trace, {f.details["loop_line"]: f for f in findings}


def test_interpolate_loop(demo):
    script, trace, by_loop = demo
    f = by_loop[demo_line("interpolate-for")]
    d = f.details
    assert d["iterations_per_step"] == 90.0          # interpolate(..., 90) once per step
    assert d["idiom"] == "affine_interpolation" and d["idiom_line"] == demo_line("interpolate-loop")
    assert d["function"] == "interpolate" and d["loop_kind"] == "for" and d["targets"] == ["i"]
    assert d["body_lines"] == [demo_line("interpolate-for") + 1, demo_line("interpolate-loop")]
    assert [(l.file, l.line) for l in f.locations] == [("demo_train.py", demo_line("interpolate-for")),
                                                       ("demo_train.py", demo_line("interpolate-loop"))]
    # mul, mul, add (the expression) + select, copy_ (the indexed assignment) per iteration
    assert d["ops_per_iteration"] == 5.0 and d["ops_per_step"] == 450.0
    ev = {e.label: e.value for e in f.evidence}
    # a CPU trace: the saving is the NPU dispatch-cost model's, the CPU time stays separate evidence
    from npu_advise.analyzers import dispatch_cost
    npu_us, _ = dispatch_cost.launches(["aten::mul", "aten::mul", "aten::add", "aten::select", "aten::copy_"] * 90)
    assert ev["NPU dispatch time per step"] == pytest.approx(npu_us, abs=0.01)
    assert f.estimated_saving_us == pytest.approx(npu_us * (1 - 1 / 90), abs=0.01)
    assert "on an NPU: ~450 launches/step" in next(e.how for e in f.evidence if e.label == "NPU dispatch time per step")
    assert "not what an NPU pays" in next(e.how for e in f.evidence if e.label == "host time per step")


def test_valid_len_mask_loop(demo):
    script, trace, by_loop = demo
    f = by_loop[demo_line("mask-for")]
    assert f.details["iterations_per_step"] == 12.0   # 12 lengths
    assert f.details["idiom"] == "prefix_mask" and f.details["targets"] == ["i", "ll"]
    assert f.details["item_calls_per_step"] == 12.0   # `[:ll]` reads each length with .item()
    assert ("demo_train.py", demo_line("valid-len-mask")) in [(l.file, l.line) for l in f.locations]


def test_only_the_two_loops_are_reported(demo):
    # short_loop runs 3 iterations (< MIN_ITERATIONS_PER_STEP); the optimizer's loops are library code
    script, trace, by_loop = demo
    assert set(by_loop) == {demo_line("interpolate-for"), demo_line("mask-for")}


def test_idioms_from_source(tmp_path):
    p = tmp_path / "idioms.py"
    p.write_text("def f(x, lens, a, b):\n"
                 "    for i in range(9):\n"
                 "        r = i / 10\n"
                 "        x[i] = r * b + a * (1 - r)\n"
                 "    for i, n in enumerate(lens):\n"
                 "        x[i, :n] = 0\n"
                 "    for v in lens:\n"
                 "        a += v.item()\n"
                 "    for v in lens:\n"
                 "        a = a + v\n")
    source.clear_cache()
    idiom = lambda line: small_op_loops.detect_idiom(source.enclosing_loops(p, line)[0])
    assert idiom(4) == ("affine_interpolation", 4)
    assert idiom(6) == ("prefix_mask", 6)
    assert idiom(8) == ("item_loop", 8)
    assert idiom(10) == (None, None)


def test_a_line_issuing_one_op_twice_does_not_double_the_iterations(tmp_path):
    # `p, t = probs[:, c], onehot[:, c]` issues two selects per iteration: by op counts alone it runs
    # 20 times per step, the other lines 10
    script = tmp_path / "dice.py"
    script.write_text("import torch\n"
                      "probs, onehot = torch.rand(2, 10, 8, 8), (torch.rand(2, 10, 8, 8) > 0.5).float()\n"
                      "def step():\n"
                      "    total = 0.0\n"
                      "    for c in range(probs.shape[1]):\n"
                      "        p, t = probs[:, c], onehot[:, c]\n"
                      "        inter = (p * t).sum()\n"
                      "        total = total + 1 - (2 * inter + 1) / (p.sum() + t.sum() + 1)\n"
                      "    return total\n")
    trace = load_kineto(str(profile_script(script, "step", tmp_path / "t.json")))
    source.clear_cache()
    f, = small_op_loops.analyze(trace, Context(project_root=tmp_path)).findings
    assert f.details["loop_line"] == 5 and f.details["iterations_per_step"] == 10.0
    per_line = {d["line"]: d["executions_per_step"] for d in f.details["lines"]}
    assert per_line[6] == 20.0 and per_line[7] == per_line[8] == 10.0    # the recorded counts stay as they are


def test_a_comprehension_outside_any_loop_statement_is_a_loop(tmp_path):
    script = tmp_path / "shifts.py"
    script.write_text("import torch\n"
                      "v = torch.rand(4, 40, 2)\n"
                      "def step():\n"
                      "    shifts = [torch.roll(v, s, dims=1) for s in range(40)]\n"
                      "    rows = []\n"
                      "    for i in range(10):\n"
                      "        rows.append(torch.stack([v[i % 4, j] * 2 for j in range(3)]))\n"
                      "    return torch.stack(shifts), rows\n")
    trace = load_kineto(str(profile_script(script, "step", tmp_path / "t.json")))
    source.clear_cache()
    by_loop = {f.details["loop_line"]: f for f in small_op_loops.analyze(trace, Context(project_root=tmp_path)).findings}
    comp = by_loop[4]
    assert comp.details["loop_kind"] == "comprehension" and comp.details["targets"] == ["s"]
    assert comp.details["iterations_per_step"] == 40.0 and comp.title.startswith("A comprehension at shifts.py:4")
    # inside a for statement the comprehension's ops belong to the statement's loop, whose iterations are
    # the statement's (10), not the comprehension's (30)
    assert set(by_loop) == {4, 6}
    assert by_loop[6].details["loop_kind"] == "for" and by_loop[6].details["iterations_per_step"] == 10.0


def test_ops_of_a_helper_called_in_a_loop_count_for_the_loop(tmp_path):
    # The ops run inside `seg_dist` (lines 4-6, outside any loop) belong to the loop and the comprehension
    # that call it. Silent: a loop over 3 levels (small-op bound only with its helper's ops), and a loop
    # whose helper is called from two lines of its function (the trace cannot tell which call ran where).
    script = tmp_path / "helpers.py"
    script.write_text("import torch\n"
                      "pts, segs = torch.rand(12, 2), torch.rand(5, 2)\n"
                      "def seg_dist(p, s):\n"
                      "    d = (p[None] - s).abs()\n"
                      "    d = d * 0.5 + 0.1\n"
                      "    return d.sum(-1).amin()\n"
                      "def loop():\n"
                      "    total = 0.0\n"
                      "    for t in range(12):\n"
                      "        total = total + seg_dist(pts[t], segs)\n"
                      "    return total\n"
                      "def comprehension():\n"
                      "    return [seg_dist(pts[t], segs) for t in range(10)]\n"
                      "def levels():\n"
                      "    return sum(seg_dist(pts[lvl], segs) for lvl in range(3))\n"
                      "def twice():\n"
                      "    first = seg_dist(pts[0], segs)\n"
                      "    for t in range(12):\n"
                      "        first = first + seg_dist(pts[t], segs)\n"
                      "    return first\n"
                      "def step():\n"
                      "    return loop(), comprehension(), levels(), twice()\n")
    trace = load_kineto(str(profile_script(script, "step", tmp_path / "t.json")))
    source.clear_cache()
    by_loop = {f.details["loop_line"]: f for f in small_op_loops.analyze(trace, Context(project_root=tmp_path)).findings}
    assert set(by_loop) == {9, 13}
    loop, comp = by_loop[9], by_loop[13]
    assert loop.details["iterations_per_step"] == 12.0 and comp.details["iterations_per_step"] == 10.0
    # the same helper ops per call, wherever it is called from
    assert loop.details["helper_ops_per_step"] / 12 == comp.details["helper_ops_per_step"] / 10 >= 5
    assert any(e.label == "ops of called functions per step" for e in loop.evidence)
    assert [l.line for l in loop.locations] == [9, 10]


@pytest.mark.parametrize("name", sorted(p.name for p in (SHARED / "kineto").glob("*.json.gz")))
def test_real_gpu_traces_have_no_exact_loop_findings(name):
    # Foreign traces have no exact lines and their sources are not here: no loop can be pinpointed.
    trace = load_kineto(str(SHARED / "kineto" / name))
    findings = small_op_loops.analyze(trace, Context()).findings
    assert all(f.details.get("pinpointed") is False for f in findings)


def test_bundled_example_loops_via_cli():
    from _tracing import example_findings, example_marker_line
    from npu_advise.analyzers import source as src
    doc, out = example_findings()
    loops = {f["details"]["loop_line"]: f for f in doc["findings"] if f["rule"] == "NPA501"}
    example = Path(__file__).resolve().parents[1] / "examples" / "bev_train" / "train.py"
    for tag, idiom in (("interpolate-loop", "affine_interpolation"), ("valid-len-mask", "prefix_mask")):
        line = example_marker_line(tag)
        loop_line = src.enclosing_loops(example, line)[0].line
        f = loops[loop_line]
        assert {"file": "train.py", "line": line, "function": f["details"]["function"]} in f["locations"]
        assert f["locations"][0]["line"] == loop_line
        assert f["details"]["idiom"] == idiom and f["details"]["idiom_line"] == line
    # interpolate: 2 samples x 6 lanes x 3 segments, 5 points each -> 180 iterations of 5 ops per step
    interp = loops[src.enclosing_loops(example, example_marker_line("interpolate-loop"))[0].line]["details"]
    assert interp["iterations_per_step"] == 180.0 and interp["ops_per_iteration"] == 5.0
    mask = loops[src.enclosing_loops(example, example_marker_line("valid-len-mask"))[0].line]["details"]
    assert mask["iterations_per_step"] == 12.0 and mask["item_calls_per_step"] == 12.0
    # The training loop runs once per step: the per-parameter ops of its one optimizer.step() call are the
    # optimizer's (NPA601), not iterations of a loop of small ops.
    training_loop = src.enclosing_loops(example, example_marker_line("item-sync"))[0].line
    assert training_loop not in loops, loops[training_loop]["title"]


def test_npu_trace_without_sources_says_so():
    # Real torch_npu trace: exact call-stack lines in /home/.../main.py, a file that is not here.
    from npu_advise.load import load_profile
    trace = load_profile(SHARED / "npu" / "alexnet_2rank_text" / "level1")[0]
    assert trace.locations["exact"].all() and len(trace.locations)
    assert small_op_loops.analyze(trace, Context()).findings == []
    assert any("not readable here" in l and "main.py" in l for l in trace.limitations)


def test_function_level_locations_cannot_pinpoint_the_loop():
    # A plain torch.profiler trace (with_stack, no collector markers): only def lines are known.
    from _tracing import demo_trace_without_markers
    script, trace_path = demo_trace_without_markers()
    trace = load_kineto(str(trace_path))
    assert not trace.locations["exact"].any()
    findings = small_op_loops.analyze(trace, Context(project_root=script.parent)).findings
    by_function = {f.details["function"]: f for f in findings}
    f = by_function["interpolate"]
    assert f.details["pinpointed"] is False and f.details["loop_line"] is None
    assert f.details["candidate_loop_lines"] == [demo_line("interpolate-for")]
    assert f.locations[0].line == demo_line("interpolate-for") - 3          # the def line
    assert f.estimated_saving_us is None
    assert "cannot be pinpointed" in f.title
    # valid_mask issues 60 ops per step (< MIN_FUNCTION_OPS_PER_STEP); step() has no loop
    assert set(by_function) == {"interpolate"}
    assert any("function-level only" in l for l in trace.limitations)
