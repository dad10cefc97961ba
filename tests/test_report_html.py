"""report.html: content, escaping, self-containment, charts, snippets and fix rendering.

Reports are built by the real pipeline (`analyze_profile`, `write_outputs`) from real traces: the shared
Kineto traces and a CPU trace recorded here by the real torch profiler. Findings named "TEST FIXTURE" are constructed
in this file to exercise rendering paths (fixes, diffs, predicted markers, hostile strings); they are
not presented as measurements of anything.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from markupsafe import escape

from npu_advise import findings as F
from npu_advise.pipeline import Report, analyze_profile, write_outputs
from npu_advise.render import charts, html
from npu_advise.render.snippets import SnippetReader

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESNET = DATA / "kineto" / "hta_ns_resolution_resnet_v100_rank0.pt.trace.json.gz"
NPU_2RANK = DATA / "npu" / "alexnet_2rank_text" / "level1"
EXAMPLE = REPO / "examples" / "bev_train" / "train.py"
# The user's project as `profile` would record it: the bundled example's folder (not the whole repo,
# whose every .py file the recommender would parse).
PROJECT = EXAMPLE.parent
HOSTILE_OP = "<script>alert(1)</script>"
HOSTILE_DIR = "we&ird<dir>\"'"
# torch's Kineto exporter writes event names and `traceName` into the JSON without escaping `"`, so a
# source folder with a quote yields an unreadable trace; recorded source paths use this one instead.
HOSTILE_SRC_DIR = "src&<dir>'"


def marker_line(path: Path, tag: str) -> int:
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if f"# npa-example: {tag}" in text:
            return n
    raise AssertionError(f"no npa-example marker {tag!r} in {path}")


def build_report(trace_path, project_root=None, extra_findings=(), collection=None) -> Report:
    """The real pipeline's Report (loader, analyzers, recommender) plus fixture findings."""
    report = analyze_profile(trace_path, project_root=project_root, collection=collection)
    report.findings = F.rank(list(report.findings) + list(extra_findings))
    return report


def fixture_findings(example_line: int) -> list:
    auto = F.Finding(
        rule="NPA302", category="sync", severity="medium", predicted=True,
        title=f"TEST FIXTURE: predicted sync from .item() {HOSTILE_OP}",
        evidence=[F.Evidence("calls per step", 12, "count", "TEST FIXTURE value"),
                  F.Evidence("host time blocked", 12345.678, "us", "TEST FIXTURE value"),
                  F.Evidence("share", 0.25, "fraction", "TEST FIXTURE value")],
        locations=[F.Location("train.py", example_line, "main"),
                   F.Location("no/such/file.py", 7, "gone"),
                   F.Location("/etc/passwd", 1, "not_python")],
        estimated_saving_us=4321.0,
        fix=F.Fix(description="TEST FIXTURE: keep the loss on the device",
                  auto_applicable=True, fix_id="NPA302-fixture", constraints=["only outside the log interval"],
                  diff="--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n ctx = 1\n"
                       f"-x = loss.item()  # {HOSTILE_OP}\n+x = loss.detach()\n"))
    advice = F.Finding(
        rule="NPA401", category="cpu_fallback", severity="low", predicted=True,
        title="TEST FIXTURE: advice-only fix without a saving",
        evidence=[F.Evidence("calls per step", 3, "count", "TEST FIXTURE value")],
        estimated_saving_us=None,
        fix=F.Fix(description="TEST FIXTURE: rewrite by hand", auto_applicable=False,
                  constraints=["float32 inputs"]))
    return [auto, advice]


@functools.lru_cache(maxsize=1)
def resnet_report() -> Report:
    """The ResNet trace's report with the fixture findings; built once per test session (the browser
    test renders it too). Treat as read-only."""
    line = marker_line(EXAMPLE, "item-sync")
    return build_report(RESNET, project_root=PROJECT, extra_findings=fixture_findings(line),
                        collection={"how": "TEST FIXTURE collection record", "env": {"TASK_QUEUE_ENABLE": "1"}})


@functools.lru_cache(maxsize=1)
def npu_report() -> Report:
    """The 2-rank torch_npu AlexNet profile's report with the fixture findings (built once; read-only)."""
    return build_report(NPU_2RANK, project_root=PROJECT,
                        extra_findings=fixture_findings(marker_line(EXAMPLE, "item-sync")))


@pytest.fixture(scope="module")
def gpu_report():
    return resnet_report()


@pytest.fixture(scope="module")
def gpu_html(gpu_report, tmp_path_factory):
    paths = write_outputs(gpu_report, tmp_path_factory.mktemp("gpu") / HOSTILE_DIR)
    out = paths["html"]
    return out, out.read_text(encoding="utf-8")


def without_plotly(text: str) -> str:
    """The document with the embedded plotly.js bundle cut out."""
    start = text.index("* plotly.js v")
    end = text.index("</script>", start)
    return text[:start] + text[end:]


def test_findings_rules_and_anchors(gpu_report, gpu_html):
    _, text = gpu_html
    assert gpu_report.findings, "the analyzers found nothing on the ResNet trace"
    for f in gpu_report.findings:
        assert str(escape(f.title)) in text
        assert f'href="#rule-{f.rule}"' in text
        assert f'id="finding-{f.id}"' in text
    # Every linked rule has a target in the appendix (its doc, or a "no documentation" stub).
    for code in {f.rule for f in gpu_report.findings}:
        assert f'id="rule-{code}"' in text
    # Groups with a table of contents entry, in ranked order: the fixture sync finding has the largest
    # saving, so its category comes first.
    toc = re.findall(r'<a href="#cat-([a-z_]+)">', text)
    assert toc[0] == "sync"
    assert set(toc) == {f.category for f in gpu_report.findings}


def test_rule_docs_from_registry(gpu_report, gpu_html):
    _, text = gpu_html
    rules, _ = html._rules()
    real = [f.rule for f in gpu_report.findings if f.rule in rules]
    assert real, "no finding from a registered rule"
    rule = rules[real[0]]
    block = text[text.index(f'id="rule-{rule.code}"'):]
    block = block[: block.index("</div>")]
    assert str(escape(rule.detects)) in block and str(escape(rule.why)) in block


def test_hostile_strings_escaped(gpu_html):
    out, text = gpu_html
    assert HOSTILE_OP not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text          # finding title and diff line
    assert HOSTILE_DIR not in text
    # The report's own directory appears in the apply command, escaped (shell-quoted first).
    assert "we&amp;ird&lt;dir&gt;" in text


def test_self_contained_and_plotly_once(gpu_html):
    _, text = gpu_html
    assert text.count("* plotly.js v") == 1
    assert charts.plotly_js_path().read_text(encoding="utf-8")[:2000] in text
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link\b", text, re.I)
    rest = without_plotly(text)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", rest, re.I)
    assert "@import" not in rest and "url(" not in rest


def test_chart_data_block(gpu_report, gpu_html):
    _, text = gpu_html
    m = re.search(r'<script type="application/json" id="npa-chart-data">(.*?)</script>', text, re.S)
    specs = json.loads(m.group(1))
    ids = [s["id"] for s in specs]
    assert ids == ["chart-steps", "chart-timeline", "chart-top-host", "chart-top-device"]
    for cid in ids:
        assert f'id="{cid}"' in text
    steps = gpu_report.tables["host_bound.steps"]
    stacked = specs[0]
    assert [t["name"] for t in stacked["data"]] == ["device busy", "idle: waiting for host launch", "idle: other gaps"]
    assert stacked["layout"]["barmode"] == "stack"
    # ms axis (the ResNet steps are tens of ms): values are the table's µs / 1000.
    assert "(ms)" in stacked["layout"]["yaxis"]["title"]["text"]
    assert stacked["data"][0]["y"] == pytest.approx((steps["busy_us"] / 1000).tolist())
    tables = re.findall(r'<details class="op-table">.*?</details>', text, re.S)
    assert len(tables) == 2
    first_op = gpu_report.tables["op_ranking.host"]["name"].iloc[0]
    assert f"<code>{escape(first_op)}</code>" in tables[0]
    host = specs[2]
    top_name = gpu_report.tables["op_ranking.host"]["name"].iloc[0]
    assert host["data"][0]["hovertext"][-1].startswith(f"<b>{top_name}</b>")   # largest drawn on top


def test_units_saving_and_fix(gpu_html):
    out, text = gpu_html
    assert "12.35 ms" in text                              # 12,345.678 µs evidence shown in ms
    assert "25.0 %" in text                                # fraction shown as a percentage
    assert "4.32 ms per step" in text                      # estimated saving
    assert "not computable from this trace" in text        # the finding without a saving
    quoted = html.shlex.quote(str(out.parent))
    assert str(escape(f"npu-advise apply {quoted} --fix NPA302-fixture")) in text
    assert "Advice only" in text and "advice only" in text
    assert '<span class="d-del">-x = loss.item()  # &lt;script&gt;' in text
    assert '<span class="d-add">+x = loss.detach()</span>' in text
    assert "only outside the log interval" in text and "float32 inputs" in text
    assert "predicted for NPU" in text and ">measured<" in text


def test_snippets(gpu_html):
    _, text = gpu_html
    line = marker_line(EXAMPLE, "item-sync")
    source = EXAMPLE.read_text().splitlines()[line - 1]
    hit = re.search(r'<span class="ln hit"><span class="no">(\d+)</span>(.*?)</span>', text)
    assert int(hit.group(1)) == line
    assert hit.group(2) == str(escape(source))
    assert "source file not found under the project root" in text
    assert "not a Python source file" in text
    assert "root:x:0:0" not in text                         # /etc/passwd was not read


def test_snippet_reader_edges(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("a = 1\nb = 2\nc = 3\n")
    reader = SnippetReader(str(tmp_path), context=1)
    s = reader.snippet("m.py", 2)
    assert s.lines == [(1, "a = 1", False), (2, "b = 2", True), (3, "c = 3", False)]
    assert "outside the file" in reader.snippet("m.py", 9).missing
    assert "not found" in reader.snippet("gone.py", 1).missing
    assert "no source file" in reader.snippet("", 1).missing


def test_summary_cards_and_header(gpu_report, gpu_html):
    _, text = gpu_html
    steps = gpu_report.tables["host_bound.steps"]
    assert html.fmt_time(float(steps["duration_us"].mean())) in text
    assert html.fmt_time(float(steps["free_us"].mean())) in text
    assert "CUDA GPU" in text and "5 (#101–#105)" in text
    # findings counted by category, linking to their groups
    n_sync = sum(1 for f in gpu_report.findings if f.category == "sync")
    assert f'<a class="chip" href="#cat-sync">Synchronizations <span class="count">{n_sync}</span></a>' in text
    assert "TEST FIXTURE collection record" in text and "TASK_QUEUE_ENABLE" in text
    for item in gpu_report.limitations:
        assert str(escape(item)) in text


def test_script_json_cannot_close_its_block():
    text = html._script_json({"name": "</script><script>alert(1)</script>", "v": float("nan")})
    assert "</" not in text and "<" not in text
    assert json.loads(text) == {"name": "</script><script>alert(1)</script>", "v": None}


def test_chart_specs_escape_and_units():
    table = pd.DataFrame({"name": [HOSTILE_OP, "aten::mm"], "count": [3, 5], "total_us": [900.0, 300.0],
                          "mean_us": [300.0, 60.0], "per_step_us": [450.0, 150.0],
                          "share_of_step": [0.3, 0.1], "locations": ["a.py:1", ""]})
    spec = charts.top_ops(table, "host")
    assert spec["data"][0]["x"] == [150.0, 450.0]           # µs below the ms threshold, largest last
    assert "(µs)" in spec["layout"]["xaxis"]["title"]["text"]
    assert HOSTILE_OP not in json.dumps(spec)
    assert "&lt;script&gt;" in spec["layout"]["yaxis"]["ticktext"][1]


def test_timeline_and_rank_chart_specs():
    tl = pd.DataFrame({"start_us": [0.0, 50.0, 10.0], "end_us": [20.0, 80.0, 30.0], "stream": [7, 7, 9]})
    spec = charts.timeline(tl, [0.0, 100.0])
    assert [d["name"] for d in spec["data"]] == ["stream 7", "stream 9"]
    assert spec["data"][0]["x"] == [0.0, 20.0, None, 50.0, 80.0, None]
    assert len(spec["layout"]["shapes"]) == 2
    ranks = pd.DataFrame({"rank": [0, 1], "step_us": [100.0, 160.0], "computing_us": [80.0, 80.0],
                          "communication_us": [10.0, 10.0], "free_us": [10.0, 70.0], "comm_wait_us": [5.0, 1.0]})
    spec = charts.ranks(ranks, 1)
    assert spec["data"][0]["x"] == ["rank 0", "rank 1 (slowest)"]
    [arrow] = spec["layout"]["annotations"]
    assert arrow["x"] == "rank 1 (slowest)" and arrow["y"] == 160.0 and arrow["text"] == "slowest"
    assert [d["name"] for d in spec["data"]] == ["computing", "communication", "free", "communication wait"]


# ---- a CPU trace recorded here, with a hostile op name and a hostile source directory ----------

HOSTILE_SCRIPT = '''
import time
import torch

x = torch.ones(64, 64)


def step():
    with torch._C._profiler._RecordFunctionFast(%r):
        time.sleep(0.002)
    for _ in range(20):
        y = x + 1
    return y
''' % HOSTILE_OP


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    import _tracing  # tests/_tracing.py: records a real torch.profiler trace
    root = tmp_path_factory.mktemp("cpu") / HOSTILE_SRC_DIR
    root.mkdir()
    script = root / "hostile.py"
    script.write_text(HOSTILE_SCRIPT)
    trace = _tracing.profile_script(script, "step", root / "trace.json", iterations=4)
    return build_report(trace, project_root=root)


def test_cpu_trace_report(cpu_report, tmp_path):
    assert cpu_report.trace.device_type == "cpu"
    host = cpu_report.tables["op_ranking.host"]
    assert HOSTILE_OP in set(host["name"])                 # the real profiler recorded the hostile name
    out = tmp_path / "r" / "report.html"
    html.write_report(cpu_report, out)
    text = out.read_text(encoding="utf-8")
    assert HOSTILE_OP not in text and HOSTILE_SRC_DIR not in text
    assert "src&amp;&lt;dir&gt;&#39;" in text                 # trace path in the header, escaped
    specs = json.loads(re.search(r'id="npa-chart-data">(.*?)</script>', text, re.S).group(1))
    ids = [s["id"] for s in specs]
    assert "chart-timeline" not in ids and "chart-top-device" not in ids
    steps = specs[0]
    assert steps["id"] == "chart-steps" and steps["data"][1]["yaxis"] == "y2"    # ops per step
    assert steps["data"][1]["y"] == [int(v) for v in cpu_report.tables["host_bound.steps"]["host_ops"]]
    assert "CPU only (no device timeline)" in text
    top = next(s for s in specs if s["id"] == "chart-top-host")
    assert top["wide"] is True                             # alone in its row without a device ranking
    # the ranking's table under the chart names the operator (escaped) and the source line issuing it
    row = re.search(r'<td class="opname"><code>&lt;script&gt;alert\(1\)&lt;/script&gt;</code></td>(.*?)</tr>', text)
    assert row and "hostile.py:" in row.group(1)
    assert text.count("* plotly.js v") == 1


def test_render_without_tables_or_findings(gpu_report, tmp_path):
    """An empty analysis still renders: no charts, the no-findings note, the header."""
    report = dataclasses.replace(gpu_report, findings=[], tables={})
    out = tmp_path / "report.html"
    html.write_report(report, out)
    text = out.read_text(encoding="utf-8")
    assert "No findings" in text
    assert json.loads(re.search(r'id="npa-chart-data">(.*?)</script>', text, re.S).group(1)) == []


def test_copy_of_trace_under_hostile_path(tmp_path):
    """The trace path itself (from the command line) is escaped wherever it appears."""
    target = tmp_path / HOSTILE_DIR / "amd.json.gz"
    target.parent.mkdir()
    shutil.copy(DATA / "kineto" / "hta_amd_mi250_minitoy_train.json.gz", target)
    report = build_report(target)
    out = tmp_path / "out" / "report.html"
    html.write_report(report, out)
    text = out.read_text(encoding="utf-8")
    assert HOSTILE_DIR not in text
    assert str(escape(str(target))) in text
    assert "ROCm GPU" in text


def test_multi_rank_report(tmp_path):
    report = npu_report()
    table, slowest = report.tables["ranks.table"], report.tables["slowest_rank"]
    assert len(table) == 2 and report.trace.rank == slowest
    out = write_outputs(report, tmp_path / "out")["html"]
    text = out.read_text(encoding="utf-8")
    specs = json.loads(re.search(r'id="npa-chart-data">(.*?)</script>', text, re.S).group(1))
    assert [s["id"] for s in specs] == ["chart-ranks", "chart-steps", "chart-timeline", "chart-top-host",
                                        "chart-top-device"]
    ranks = specs[0]
    assert ranks["data"][0]["name"] == "computing"
    assert ranks["data"][0]["y"] == pytest.approx((table["computing_us"] / 1000).tolist())   # ms axis
    [arrow] = ranks["layout"]["annotations"]
    assert arrow["x"] == f"rank {slowest} (slowest)"
    assert f"{slowest}; the slowest of 2 ranks analyzed, detailed below" in text
    assert "Ascend NPU" in text


def test_time_units_and_collection_line():
    assert [html.fmt_time(v) for v in (3.21, 999.4, 12345.678, 5_070_610.0)] == \
        ["3.210 µs", "999.4 µs", "12.35 ms", "5.07 s"]
    # keys as the collector writes them to collection.json
    record = {"script": "/p/train.py", "args": ["--epochs", "1", "a b"], "profiler": "torch.profiler",
              "device": "cpu", "steps_seen": 5, "steps_recorded": 3, "world_size": 2, "launcher": "torchrun",
              "outcome": "stopped"}
    assert html._collected(record) == ("npu-advise profile /p/train.py --epochs 1 'a b'; torch.profiler on cpu; "
                                       "3 steps recorded of 5 seen; 2 ranks via torchrun; outcome: stopped")
    assert html._collected({}) == "existing trace (not collected by npu-advise profile)"


def test_cli_analyze_writes_the_report(tmp_path):
    """`npu-advise analyze` (the real entry point, another process) writes this renderer's page."""
    trace = DATA / "kineto" / "hta_amd_mi250_minitoy_train.json.gz"
    proc = subprocess.run([sys.executable, "-m", "npu_advise.cli", "analyze", str(trace), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"report: {tmp_path / 'report.html'}" in proc.stdout
    assert "ROCm GPU" in text and text.count("* plotly.js v") == 1
    findings = json.loads((tmp_path / "findings.json").read_text())["findings"]
    for f in findings:                                    # the same findings as findings.json
        assert f'id="finding-{f["id"]}"' in text


def test_evidence_formatting():
    import numpy as np
    view = html._evidence_view
    assert view(F.Evidence("calls", np.int64(12345), "calls", "h")) == \
        {"label": "calls", "value": "12,345", "unit": "calls", "how": "h"}
    assert view(F.Evidence("t", np.float64(23456.7), "us", "h"))["value"] == "23.46 ms"
    assert view(F.Evidence("t", 2_500_000, "ns", "h"))["value"] == "2.50 ms"
    assert view(F.Evidence("t", 1.5, "s", "h"))["value"] == "1.50 s"
    assert view(F.Evidence("n", 7, "count", "h"))["unit"] == ""
    assert view(F.Evidence("f", "AdamW", "name", "h"))["value"] == "AdamW"
