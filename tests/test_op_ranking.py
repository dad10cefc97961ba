"""Operator ranking on real traces, checked against the raw events."""
import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from npu_advise.analyzers import Context, op_ranking
from npu_advise.load import load_profile

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESNET = DATA / "kineto" / "hta_ns_resolution_resnet_v100_rank0.pt.trace.json.gz"


@pytest.fixture(scope="module")
def resnet():
    with gzip.open(RESNET, "rt") as fh:
        raw = [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]
    return load_profile(RESNET)[0], raw


def test_device_ranking_matches_raw_kernel_sums(resnet):
    trace, raw = resnet
    res = op_ranking.analyze(trace, Context())
    dev = res.tables["op_ranking.device"]
    assert list(dev.columns) == op_ranking.TABLE_COLUMNS
    steps = [(e["ts"], e["ts"] + e["dur"]) for e in raw if e["name"].startswith("ProfilerStep#")]
    assert len(steps) == 5
    launch_ts = {e["args"]["correlation"]: e["ts"] for e in raw if e.get("cat") == "cuda_runtime"}
    # a kernel belongs to the step whose host code launched it
    totals, counts = defaultdict(float), defaultdict(int)
    for e in raw:
        if e.get("cat") == "kernel":
            t = launch_ts.get(e["args"].get("correlation"), e["ts"])
            if any(a <= t < b for a, b in steps):
                totals[e["name"]] += e["dur"]
                counts[e["name"]] += 1
    top = max(totals, key=totals.get)
    row = dev.iloc[0]
    assert row["name"] == top and row["count"] == counts[top]
    assert row["total_us"] == pytest.approx(totals[top], abs=0.01)
    mean_step = sum(b - a for a, b in steps) / 5
    assert row["per_step_us"] == pytest.approx(totals[top] / 5, abs=0.01)
    assert row["share_of_step"] == pytest.approx(totals[top] / 5 / mean_step, abs=1e-4)
    hot = [f for f in res.findings if f.rule == "NPA102"]
    assert hot and hot[0].details["name"] == top
    assert all(f.estimated_saving_us is None for f in res.findings)
    assert len(hot) <= op_ranking.MAX_HOTSPOT_FINDINGS
    assert all(float(next(e.value for e in f.evidence if e.label == "share of step")) >= 100 * op_ranking.HOTSPOT_SHARE
               for f in hot)


def test_host_self_time_subtracts_direct_children(resnet):
    trace, raw = resnet
    res = op_ranking.analyze(trace, Context())
    host = res.tables["op_ranking.host"]
    # self time of every op in the ranking sums to at most the step time spent in ops on any thread
    assert (host["total_us"] >= 0).all() and host["total_us"].is_monotonic_decreasing
    # independent check for one op: aten::convolution_backward self = dur - its direct children
    ops = sorted((e for e in raw if e.get("cat") == "cpu_op"), key=lambda e: (e["tid"], e["ts"], -e["dur"]))
    steps = [(e["ts"], e["ts"] + e["dur"]) for e in raw if e["name"].startswith("ProfilerStep#")]
    self_total, stack = 0.0, []
    selfs = {}
    for e in ops:
        while stack and (stack[-1]["tid"] != e["tid"] or stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]):
            stack.pop()
        if stack:
            selfs[id(stack[-1])] = selfs.get(id(stack[-1]), stack[-1]["dur"]) - e["dur"]
        selfs.setdefault(id(e), e["dur"])
        stack.append(e)
    for e in ops:
        if e["name"] == "aten::convolution_backward" and any(a <= e["ts"] < b for a, b in steps):
            self_total += max(selfs[id(e)], 0)
    row = host[host["name"] == "aten::convolution_backward"].iloc[0]
    assert row["total_us"] == pytest.approx(self_total, rel=1e-3)
    assert not host["name"].str.startswith("ProfilerStep#").any()
    assert not host["name"].str.startswith("Optimizer.step#").any()


def test_locations_on_a_trace_with_call_stacks():
    t = load_profile(DATA / "npu" / "alexnet_2rank_text" / "level1")[0]
    res = op_ranking.analyze(t, Context())
    host = res.tables["op_ranking.host"]
    row = host.iloc[0]
    assert row["name"] == "aten::_local_scalar_dense"
    assert row["locations"].split("; ")[0].endswith("main.py:485")
    f = next(f for f in res.findings if f.rule == "NPA101")
    assert f.locations[0].line == 485 and len(f.locations) <= op_ranking.TOP_LOCATIONS


def test_every_kineto_trace_ranks_without_crashing():
    for path in sorted((DATA / "kineto").iterdir()):
        t = load_profile(path)[0]
        res = op_ranking.analyze(t, Context())
        host = res.tables["op_ranking.host"]
        assert len(host) > 0, path.name
        assert (host["share_of_step"] >= 0).all()
        assert ("op_ranking.device" in res.tables) == t.has_device_timeline
