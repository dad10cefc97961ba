"""Placement tracking: the collector records where each call's tensors would live, and the sync and
loop analyzers judge by it (real CLI on tests/scripts/placement_traps.py, real Kineto traces)."""
from __future__ import annotations

import gzip
import json
import re

import pytest

from conftest import SCRIPTS, read_json, run_cli

TRAPS = SCRIPTS / "placement_traps.py"


def _tagged(kind: str) -> dict:
    """line -> text after `# real:` / `# trap:`."""
    out = {}
    for i, line in enumerate(TRAPS.read_text(encoding="utf-8").splitlines(), 1):
        m = re.search(rf"# {kind}: (.*)$", line)
        if m:
            out[i] = m.group(1)
    return out


@pytest.fixture(scope="module")
def traps_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("placement") / "out"
    proc = run_cli("profile", "--out", out, TRAPS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, read_json(out / "findings.json")


def _located(findings: dict) -> dict:
    """line -> rules of the findings that point at a line of the traps script."""
    out = {}
    for f in findings["findings"]:
        for loc in f["locations"]:
            if loc["file"].endswith("placement_traps.py"):
                out.setdefault(loc["line"], set()).add(f["rule"])
    return out


def test_every_real_sync_and_device_loop_is_found(traps_run):
    _, findings = traps_run
    located = _located(findings)
    missing = {line: what for line, what in _tagged("real").items() if line not in located}
    assert not missing, missing
    # the loop over device tensors is a small-op loop; the syncs are predicted syncs
    decode = min(_tagged("real"))
    assert "NPA501" in located[decode]
    assert all("NPA302" in located[line] for line, what in _tagged("real").items() if "loop" not in what)


def test_no_finding_on_a_trap_line(traps_run):
    _, findings = traps_run
    located = _located(findings)
    hits = {line: (what, sorted(located[line])) for line, what in _tagged("trap").items() if line in located}
    # the optimizer line is NPA601's (unfused AdamW), never a sync; it may also rank among the measured
    # host-op hotspots (NPA101: a CPU-time ranking, not a prediction, whose share swings with the load)
    step_line = next(line for line, what in _tagged("trap").items() if "AdamW" in what)
    if step_line in hits:
        assert set(hits.pop(step_line)[1]) - {"NPA101"} == {"NPA601"}
    assert not hits, hits


def test_predicted_findings_say_placement_was_inferred_and_from_what(traps_run):
    _, findings = traps_run
    predicted = [f for f in findings["findings"] if f["rule"] in ("NPA302", "NPA501")]
    assert predicted
    for f in predicted:
        text = f["details"].get("placement") or ""
        assert "inferred by npu-advise's placement tracking" in text, f["title"]
        assert any(e["label"] == "placement" for e in f["evidence"]), f["title"]
    item = next(f for f in predicted if f["locations"][0]["line"] == max(_tagged("real")))
    assert "`.to(device)` at placement_traps.py" in item["details"]["placement"] \
        or "parameters and buffers of `Head`" in item["details"]["placement"]


def test_host_tensor_work_is_a_low_observation_at_the_function(traps_run):
    """The host-side target loop is no small-op loop (it launches nothing on the NPU) but its host time
    inside the step is stated once, at the function's def line, as a host_bound observation."""
    _, findings = traps_run
    host = [f for f in findings["findings"] if f["rule"] == "NPA503"]
    assert [f["details"]["function"] for f in host] == ["make_targets"], [f["title"] for f in host]
    f = host[0]
    def_line = next(i for i, line in enumerate(TRAPS.read_text(encoding="utf-8").splitlines(), 1)
                    if line.startswith("def make_targets"))
    assert [(l["file"], l["line"]) for l in f["locations"]] == [("placement_traps.py", def_line)]
    assert f["category"] == "host_bound" and f["severity"] in ("info", "low") and f["estimated_saving_us"] is None
    evidence = {e["label"]: e for e in f["evidence"]}
    assert evidence["host tensor time per step"]["value"] >= 1000 and evidence["host tensor time per step"]["unit"] == "us"
    trap_lines = {line for line, what in _tagged("trap").items() if "target generation" in what}
    assert {l["line"] for l in f["details"]["lines"]} & trap_lines
    assert "NPU launch" not in f["title"] and "dispatch" not in f["title"]


def test_trace_records_flags_and_roots(traps_run):
    out, _ = traps_run
    trace = json.loads(gzip.open(out / "trace" / "rank0.pt.trace.json.gz").read())
    names = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("npa.")}
    assert any(n.endswith("|p=d;s=2;api=x[mask] = v;r=" + n.rsplit("=", 1)[-1]) for n in names)
    assert any(n.startswith("npa.root:") and "`Head`" in n for n in names)
    from npu_advise.load import load_kineto_file
    t = load_kineto_file(out / "trace" / "rank0.pt.trace.json.gz")
    assert t.placement_recorded and t.placement_inferred
    calls = t.calls
    lines = t.locations["line"].to_numpy()[calls["loc"].to_numpy()]
    real, trap = _tagged("real"), _tagged("trap")
    # a mask write is never a sync; a bool on the loss reads a device tensor; items on host tensors read the host
    write = next(l for l, w in trap.items() if w == "mask write")
    assert set(calls["sync"][lines == write]) >= {2} and 1 not in set(calls["sync"][lines == write])
    for line, what in trap.items():
        if what.startswith("item on"):
            assert (calls["sync"][(lines == line) & (calls["api"] == "item")] == 0).all(), what
    bool_line = next(l for l, w in real.items() if w.startswith("bool"))
    assert (calls["sync"][lines == bool_line] == 1).any()
    # the host-side target loop touched host tensors only
    host_loop = [l for l, w in trap.items() if "host-side target" in w]
    assert (calls["on_device"][calls["step"].to_numpy() >= 0][
        __import__("numpy").isin(lines[calls["step"].to_numpy() >= 0], host_loop)] == 0).all()


def test_no_placement_flag_falls_back_to_names_and_says_so(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("profile", "--no-placement", "--out", out, TRAPS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    findings = read_json(out / "findings.json")
    assert any("Placement was not recorded" in lim for lim in findings["limitations"])
    trap_item = next(l for l, w in _tagged("trap").items() if w == "item on a numpy-born tensor")
    assert trap_item in _located(findings)      # judged by op names alone, as before placement tracking


def test_older_traces_load_without_placement(shared_data):
    from npu_advise.load import load_kineto_file
    from npu_advise.load.placement import split_marker
    assert split_marker("npa.src:/a/b.py:12:f") == ("/a/b.py", 12, "f", {})
    assert split_marker("npa.src:/a|b.py:12:f|p=d;s=1;api=item;r=3") == \
        ("/a|b.py", 12, "f", {"p": "d", "s": "1", "api": "item", "r": "3"})
    for name in ("hta_amd_mi250_minitoy_train.json.gz", "hta_critical_path_alexnet_a100_cudasync.json.gz"):
        path = shared_data / "kineto" / name
        t = load_kineto_file(path)
        assert not t.placement_recorded
        assert len(t.calls) == 0 and (t.ops["call"] == -1).all()
