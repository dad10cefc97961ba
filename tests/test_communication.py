"""Communication analysis, sync -> collective causal chains and the one ranking, on the real 2-rank
torch_npu Level1 cluster (text and DB export) and the real A100 DDP Kineto trace with NCCL kernels."""
import csv
import gzip
import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, read_json, run_cli
from npu_advise.analyzers import Context, communication
from npu_advise.findings import SEVERITIES, Finding, rank
from npu_advise.load import load_profile

TEXT1 = SHARED_DATA / "npu" / "alexnet_2rank_text" / "level1"
DB1 = SHARED_DATA / "npu" / "alexnet_2rank_db" / "level1"
NCCL = SHARED_DATA / "kineto" / "hta_nccl_data_a100_ddp_rank0.json.gz"


def _step_trace(rank: int) -> dict:
    path = TEXT1 / f"rank{rank}_ascend_pt" / "ASCEND_PROFILER_OUTPUT" / "step_trace_time.csv"
    with open(path, newline="") as f:
        return {k.strip(): float(v) for k, v in next(csv.DictReader(f)).items()}


def _comm_json(rank: int) -> dict:
    path = TEXT1 / f"rank{rank}_ascend_pt" / "ASCEND_PROFILER_OUTPUT" / "communication.json"
    return json.loads(path.read_text())["step50"]["collective"]


def _ev(f) -> dict:
    return {e["label"]: e["value"] for e in f["evidence"]}


@pytest.fixture(scope="module")
def level1_rank0(tmp_path_factory):
    out = tmp_path_factory.mktemp("l1r0")
    proc = run_cli("analyze", TEXT1, "--rank", "0", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return read_json(out / "findings.json"), proc.stdout


def test_first_finding_is_communication_bound_with_the_profilers_split(level1_rank0):
    doc, stdout = level1_rank0
    first = doc["findings"][0]
    assert first["rule"] == "NPA213" and first["category"] == "communication" and first["severity"] == "high"
    assert first["title"].startswith("Communication-bound")
    st = _step_trace(0)
    ev = _ev(first)
    assert ev["computing"] == pytest.approx(st["Computing"], abs=0.01)                 # 8873.756 us
    assert ev["communication (total)"] == pytest.approx(st["Communication"], abs=0.01)  # 105991.878 us
    assert ev["communication overlapped with compute"] == pytest.approx(st["Overlapped"], abs=0.01)
    assert ev["communication not overlapped"] == pytest.approx(st["Communication(Not Overlapped)"], abs=0.01)
    assert ev["free (device idle)"] == pytest.approx(st["Free"], abs=0.01)
    assert ev["step"] == pytest.approx(st["Computing"] + st["Communication(Not Overlapped)"] + st["Free"], abs=0.01)
    # per collective: elapsed / transit / wait / other straight from communication.json
    coll = {c["name"]: c for c in first["details"]["collectives"]}
    for key, info in _comm_json(0).items():
        name = key.partition("@")[0]
        if name == "Total Op Info":
            assert name not in coll
            continue
        t = info["Communication Time Info"]
        c = coll[name]
        assert c["elapsed_us"] == pytest.approx(t["Elapse Time(ms)"] * 1000, abs=0.01)
        assert c["transit_us"] == pytest.approx(t["Transit Time(ms)"] * 1000, abs=0.01)
        assert c["wait_us"] == pytest.approx(t["Wait Time(ms)"] * 1000, abs=0.01)
        assert c["other_us"] == pytest.approx((t["Elapse Time(ms)"] - t["Transit Time(ms)"] - t["Wait Time(ms)"]) * 1000,
                                              abs=0.01)
    assert coll["hcom_allReduce__586_0_1"]["elapsed_us"] == pytest.approx(79089.52, abs=0.01)
    # the collectives mostly wait: transit 3.68 ms of 105.99 ms; the saving keeps the transfer
    transit = ev["transit (moving data) per step"]
    assert transit == pytest.approx(sum(c["transit_us"] for c in coll.values()), abs=0.01)
    assert first["estimated_saving_us"] == pytest.approx(ev["communication not overlapped"] - transit, abs=0.01)
    whats = " ".join(r["what"] for r in first["details"]["recommendations"])
    assert "mostly wait" in whats and "no_sync()" in whats and "backward" in whats
    assert "bucket_cap_mb" not in whats        # 4 collectives per step: not "many small ones"
    # bandwidth per link: HCCS from communication.json, SDMA next to its documented reference
    links = {l["link"]: l for l in first["details"]["links"]}
    size = sum(i["Communication Bandwidth Info"]["HCCS"]["Transit Size(MB)"] for k, i in _comm_json(0).items()
               if not k.startswith("Total Op Info"))
    assert links["HCCS"]["size_mb"] == pytest.approx(size, abs=0.001) and links["HCCS"]["reference_gbps"] is None
    sdma = links["SDMA (intra-node total)"]
    assert sdma["reference_gbps"] == 18 and "msprof-analyze" in sdma["reference_source"]
    assert stdout.splitlines()[1].lstrip().startswith("NPA213")


def test_long_sync_names_the_collectives_it_waits_for_and_ranks_in_the_top_3(level1_rank0):
    doc, stdout = level1_rank0
    top = doc["findings"][:3]
    (sync,) = [f for f in top if f["rule"] == "NPA301"]
    assert sync["locations"][0]["line"] == 485 and sync["severity"] == "high"
    ev = _ev(sync)
    assert ev["longest sync"] == pytest.approx(91682.16, abs=0.01)     # the 91.7 ms aclrtSynchronizeStreamWithTimeout
    chain = sync["details"]["waits_for"]
    assert [w["collective"] for w in chain] == [f"hcom_allReduce__586_{i}_1" for i in range(4)]
    assert chain[0]["elapsed_us"] == pytest.approx(79089.52, abs=0.01)
    assert "hcom_allReduce__586_0_1" in sync["title"] and "79.1 ms" in sync["title"]
    # the saving is the blocked time the device work does not explain: a small part of the 91.9 ms
    blocked = ev["host blocked per step"]
    assert sync["estimated_saving_us"] == pytest.approx(blocked - ev["device work during the syncs per step"], abs=0.01)
    assert 0 < sync["estimated_saving_us"] < 0.05 * blocked
    console = [l.split()[0] for l in stdout.splitlines()[1:6]]
    assert console == [f["rule"] for f in doc["findings"][:5]]      # the console top-5 is the same order


def test_db_export_gets_the_same_analysis():
    t = load_profile(DB1)[0]
    res = communication.analyze(t, Context())
    (f,) = res.findings
    ev = {e.label: e.value for e in f.evidence}
    st = t.extras["step_trace_time"].iloc[0]
    assert ev["communication not overlapped"] == pytest.approx(st["Communication(Not Overlapped)"], abs=0.01)
    coll = res.tables["communication.collectives"].set_index("name")
    assert coll.loc["hcom_allReduce__210_0_1", "elapsed_us"] == pytest.approx(88750.993, abs=0.01)  # CommAnalyzerTime
    links = res.tables["communication.links"].set_index("link")
    assert links.loc["HCCS", "size_mb"] == pytest.approx(28.647232 + 117.440512 + 264.241152 + 17.2672, abs=0.001)


def test_a100_ddp_trace_from_nccl_kernels():
    raw = json.load(gzip.open(NCCL))["traceEvents"]
    nccl = [e for e in raw if e.get("cat") == "kernel" and e["name"].startswith("ncclKernel")]
    t = load_profile(NCCL)[0]
    res = communication.analyze(t, Context())
    coll = res.tables["communication.collectives"]
    assert len(coll) == len(nccl) == 21 and coll["transit_us"].isna().all()   # Kineto: no transit/wait split
    assert coll["elapsed_us"].sum() == pytest.approx(sum(e["dur"] for e in nccl), abs=0.1)
    split = res.tables["communication.steps"]
    assert (split["overlapped_us"] + split["not_overlapped_us"] - split["communication_us"]).abs().max() < 0.01
    assert (coll["overlapped_us"] <= coll["elapsed_us"] + 1e-3).all()
    (f,) = res.findings
    ev = {e.label: e.value for e in f.evidence}
    assert ev["communication not overlapped"] == pytest.approx(split["not_overlapped_us"].mean(), abs=0.01)
    assert not f.title.startswith("Communication-bound")     # the device is idle most of this step
    assert f.estimated_saving_us == pytest.approx(ev["communication not overlapped"], abs=0.01)
    assert "collective kernel time per step" in ev


def _f(rule, severity, saving=None, context=False):
    return Finding(rule=rule, category="env", title=rule, severity=severity, estimated_saving_us=saving,
                   context=context)


def test_ranking_rule():
    found = rank([_f("NPA1", "low", 900.0), _f("NPA2", "high"), _f("NPA3", "high", 5.0),
                  _f("NPA4", "high", 50.0, context=True), _f("NPA5", "medium", 10.0), _f("NPA6", "info"),
                  _f("NPA7", "low", float("nan"))])
    assert [f.rule for f in found] == ["NPA3", "NPA2", "NPA5", "NPA1", "NPA7", "NPA6", "NPA4"]
    actionable = [f for f in found if not f.context]
    bands = [SEVERITIES.index(f.severity) for f in actionable]
    assert bands == sorted(bands)                      # a high finding is never below a low one


def test_report_order_is_the_ranking(level1_rank0, tmp_path):
    doc, _ = level1_rank0
    found = doc["findings"]
    context = [f["context"] for f in found]
    assert context == sorted(context)                  # context rows (NPA101/102, unrecorded env) last
    assert {f["rule"] for f in found if f["context"]} >= {"NPA101", "NPA102"}
    actionable = [SEVERITIES.index(f["severity"]) for f in found if not f["context"]]
    assert actionable == sorted(actionable)


def test_host_wait_idle_time_is_split_by_its_named_causes(level1_rank0):
    doc, _ = level1_rank0
    (f,) = [f for f in doc["findings"] if f["rule"] == "NPA201"]
    ev = _ev(f)
    raw = json.loads((TEXT1 / "rank0_ascend_pt" / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").read_text())
    loader = [e for e in raw if e.get("ph") == "X" and e["name"].startswith("enumerate(DataLoader)")]
    # the batch fetch at the step start lies wholly in a host-wait gap, before any sync
    assert ev["host wait during data loading per step"] == pytest.approx(sum(float(e["dur"]) for e in loader), abs=0.01)
    (sync350,) = [c for c in f["details"]["causes"] if c["locations"] and c["locations"][0].endswith("main.py:350")]
    blocked = next(_ev(g)["host blocked per step"] for g in doc["findings"]
                   if g["rule"] == "NPA301" and g["locations"][0]["line"] == 350)
    assert 0.5 * blocked < sync350["host_wait_explained_us"] <= blocked      # 5.2 of the 6.09 ms sync
    assert "main.py:350" in f["title"]
    # the explained part is saved by the cause findings: not counted again here
    parts = (ev["host wait explained by the cited causes per step"] + ev["host wait during data loading per step"]
             + ev["host wait not explained by a named cause per step"])
    assert parts == pytest.approx(ev["host wait per step"], abs=0.1)
    assert f["estimated_saving_us"] == pytest.approx(
        ev["host wait per step"] - ev["host wait explained by the cited causes per step"], abs=0.1)
    # predicted syncs (no sync measured) explain nothing
    assert all(c["host_wait_explained_us"] == 0 for c in f["details"]["causes"] if c["rule"] == "NPA302")


def test_the_late_peer_rank_is_named_from_hccl_notify_waits(level1_rank0):
    doc, _ = level1_rank0
    raw = json.loads((TEXT1 / "rank0_ascend_pt" / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").read_text())
    hccl = {e["pid"] for e in raw if e.get("ph") == "M" and e.get("name") == "process_name"
            and e["args"]["name"] == "HCCL"}
    waits = [e for e in raw if e.get("ph") == "X" and e["pid"] in hccl
             and (e.get("args") or {}).get("task type") == "Notify_Wait"]
    first = next(e for e in raw if e.get("ph") == "X" and e["name"] == "hcom_allReduce__586_0_1")
    lo, hi = float(first["ts"]), float(first["ts"]) + float(first["dur"])
    longest = max((e for e in waits if lo <= float(e["ts"]) < hi), key=lambda e: float(e["dur"]))
    (f,) = [f for f in doc["findings"] if f["rule"] == "NPA213"]
    coll = {c["name"]: c for c in f["details"]["collectives"]}["hcom_allReduce__586_0_1"]
    assert coll["late_peer"] == longest["args"]["dst rank"] == 5
    assert coll["longest_peer_wait_us"] == pytest.approx(float(longest["dur"]), abs=0.01)   # 78.76 ms
    assert "wait" in f["title"] and "rank 5" in f["title"]
    assert "Rank 5 arrives last: it is not among the profiled ranks (0, 1)" in f["fix"]["description"]
    # the DB export has the same HCCL tasks (COMMUNICATION_TASK_INFO): its run waits for rank 6
    t = load_profile(DB1)[0]
    db = communication.collectives(t).set_index("name").loc["hcom_allReduce__210_0_1"]
    assert db["late_peer"] == 6 and db["longest_peer_wait_us"] == pytest.approx(88423.507, abs=0.01)


def test_kineto_trace_says_what_it_cannot_tell_about_collectives():
    t = load_profile(NCCL)[0]
    communication.analyze(t, Context())
    assert any("no transit/wait split" in l for l in t.limitations)
