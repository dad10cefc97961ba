"""`npu-advise profile --nproc-per-node 2`: a real 2-process DDP run on CPU (gloo) through torchrun."""
from __future__ import annotations

import gzip
import json

import pytest

from conftest import SCRIPTS, read_json, run_cli

DDP_SCRIPT = SCRIPTS / "ddp_train.py"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    pytest.importorskip("torch.distributed")
    out = tmp_path_factory.mktemp("ddp") / "out"
    # rank 1 sleeps 40 ms per step before backward; rank 0 waits for it in the gradient all-reduce
    proc = run_cli("profile", "--out", out, "--nproc-per-node", "2",
                   DDP_SCRIPT, "--steps", "10", "--slow-ms", "40", timeout=300)
    return proc, out


def test_every_rank_writes_its_own_trace_and_stops_cleanly(ddp_run):
    proc, out = ddp_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    collection = read_json(out / "collection.json")
    assert collection["launcher"] == "torchrun" and collection["world_size"] == 2
    # single node, no rendezvous options: launched --standalone (a free port, no clash on 29500)
    assert collection["torchrun_args"] == ["--standalone", "--nproc-per-node", "2"]
    assert [r["rank"] for r in collection["ranks"]] == [0, 1]
    for r in collection["ranks"]:
        # both ranks stopped at the same step, after the same recorded window, without hanging
        assert r["outcome"] == "stopped" and r["steps_seen"] == 5 and r["steps_recorded"] == 3
    assert "finished 10 steps" not in proc.stdout
    for rank in (0, 1):
        with gzip.open(out / "trace" / f"rank{rank}.pt.trace.json.gz", "rt") as f:
            doc = json.load(f)
        assert doc["npu_advise"]["rank"] == rank and doc["npu_advise"]["world_size"] == 2
        assert doc["distributedInfo"]["rank"] == rank and doc["distributedInfo"]["backend"] == "gloo"
        steps = sorted(e["name"] for e in doc["traceEvents"] if e.get("name", "").startswith("ProfilerStep#"))
        assert steps == ["ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"]


def test_slowed_rank_is_the_one_reported(ddp_run):
    proc, out = ddp_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    findings = read_json(out / "findings.json")["findings"]
    by_rule = {f["rule"]: f for f in findings if f["rule"].startswith("NPA21")}
    assert "NPA211" in by_rule, [f["rule"] for f in findings]
    assert by_rule["NPA211"]["details"]["slowest_rank"] == 1
    # rank 0 waits in the all-reduce for rank 1's 40 ms sleep
    wait = {int(k): v for k, v in by_rule["NPA212"]["details"]["wait_us"].items()}
    assert wait[0] > 20_000 and wait[1] < wait[0] / 4
