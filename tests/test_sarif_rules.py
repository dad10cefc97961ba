"""SARIF 2.1.0 output and the `rules` command."""
import json
import subprocess
import sys
from pathlib import Path

from npu_advise import findings as F
from npu_advise.analyzers import Context, run_all
from npu_advise.findings import Finding, Location
from npu_advise.load import load_profile
from npu_advise.pipeline import Report
from npu_advise.render.sarif import write_sarif
from npu_advise.rules import all_rules

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "npu_advise.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_sarif_structure_one_result_per_located_finding(tmp_path):
    t = load_profile(DATA / "npu" / "alexnet_2rank_text" / "level1")[0]
    ctx = Context()
    run_all(t, ctx)
    findings = F.rank(ctx.findings)
    # a finding with a path under the project root must come out relative to it
    root = tmp_path / "proj"
    findings.append(Finding(rule="NPA301", category="sync", title="1 device sync at train.py:7", severity="low",
                            locations=[Location("train.py", 7, "step")]))
    report = Report(trace=t, findings=findings, tables=ctx.tables, limitations=t.limitations,
                    project_root=str(root))
    out = tmp_path / "findings.sarif"
    write_sarif(report, out)
    doc = json.loads(out.read_text())
    assert doc["version"] == "2.1.0" and "sarif-2.1.0" in doc["$schema"]
    (run,) = doc["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "npu-advise"
    located = [f for f in findings if f.locations]
    assert len(located) >= 5
    assert len(run["results"]) == len(located)
    registry = all_rules()
    rule_ids = [r["id"] for r in driver["rules"]]
    assert sorted(rule_ids) == sorted({f.rule for f in located})
    for r in driver["rules"]:
        assert r["help"]["text"] == registry[r["id"]].text()
        assert r["shortDescription"]["text"] == registry[r["id"]].detects
    levels = {"high": "error", "medium": "warning", "low": "note", "info": "note"}
    for f, res in zip(located, run["results"]):
        assert res["ruleId"] == f.rule and driver["rules"][res["ruleIndex"]]["id"] == f.rule
        assert res["level"] == levels[f.severity]
        assert res["message"]["text"].startswith(f.title)
        if f.evidence:
            assert f"{f.evidence[0].label}: {f.evidence[0].value}" in res["message"]["text"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"] == f.locations[0].file
        assert loc["region"]["startLine"] == f.locations[0].line >= 1
    assert any(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "train.py" for r in run["results"])
    assert run["originalUriBaseIds"]["PROJECTROOT"]["uri"].endswith("/proj/")
    # the 91.7 ms sync on main.py:485 is among them
    assert any(r["ruleId"] == "NPA301" and r["locations"][0]["physicalLocation"]["region"]["startLine"] == 485
               for r in run["results"])


def test_rules_command_lists_and_explains():
    listing = _cli("rules")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    for code in ("NPA101", "NPA102", "NPA201", "NPA202", "NPA301", "NPA302", "NPA701", "NPA702"):
        line = next(l for l in lines if l.startswith(code))
        rule = all_rules()[code]
        assert rule.name in line and line.rstrip().endswith(rule.category)
    one = _cli("rules", "npa201")
    assert one.returncode == 0
    assert one.stdout.strip() == all_rules()["NPA201"].text().strip()
    assert "FREE_SHARE_THRESHOLD = 0.1" in one.stdout


def test_rules_command_unknown_code_is_a_one_line_error():
    bad = _cli("rules", "NPA999")
    assert bad.returncode != 0
    assert "unknown rule 'NPA999'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
