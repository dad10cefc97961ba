"""Host-bound analysis on real traces; idle-time numbers cross-checked by an independent computation."""
import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from npu_advise.analyzers import Context, host_bound
from npu_advise.load import load_profile

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
V100 = DATA / "kineto" / "hta_df_index_resolver_v100_rank1.json.gz"


def _independent_idle(path):
    """Per step (ts order): (duration, busy, host_wait) in µs, from the raw JSON with plain Python."""
    with gzip.open(path, "rt") as fh:
        events = json.load(fh)["traceEvents"]
    steps, device, launch_ts = [], [], {}
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, name = e.get("cat"), e.get("name", "")
        if name.startswith("ProfilerStep#") and cat in ("user_annotation", "cpu_op"):
            steps.append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            device.append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["args"].get("correlation")))
        elif cat in ("cuda_runtime", "cuda_driver"):
            launch_ts[e["args"].get("correlation")] = float(e["ts"])
    device.sort(key=lambda d: d[0])
    groups = []  # [start, end, correlation of the opening event]
    for s, e, corr in device:
        if groups and s <= groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], e)
        else:
            groups.append([s, e, corr])
    lo, hi = min(s for s, _ in steps), max(e for _, e in steps)
    gaps = []  # (start, end, is host wait)
    prev_end = lo
    for s, e, corr in groups:
        if s > prev_end:
            launched = launch_ts.get(corr)
            gaps.append((prev_end, s, launched is not None and launched > prev_end))
        prev_end = max(prev_end, e)
    if hi > prev_end:
        gaps.append((prev_end, hi, False))

    def clipped(intervals, a, b):
        return sum(max(0.0, min(e, b) - max(s, a)) for s, e in intervals)

    out = []
    for a, b in sorted(steps):
        busy = clipped([(g[0], g[1]) for g in groups], a, b)
        wait = clipped([(s, e) for s, e, w in gaps if w], a, b)
        out.append((b - a, busy, wait))
    return out


@pytest.fixture(scope="module")
def v100():
    return load_profile(V100)[0]


def test_idle_time_matches_independent_computation(v100):
    table = host_bound.step_breakdown(v100)
    expected = _independent_idle(V100)
    assert len(table) == len(expected) == 5
    for row, (dur, busy, wait) in zip(table.itertuples(), expected):
        assert row.duration_us == pytest.approx(dur, abs=1.0)
        assert row.busy_us == pytest.approx(busy, abs=5.0)
        assert row.free_us == pytest.approx(dur - busy, abs=5.0)
        assert row.host_wait_us == pytest.approx(wait, abs=5.0)
        assert row.free_us == pytest.approx(row.host_wait_us + row.other_gap_us, abs=0.01)
    # this DDP run idles ~40 % of its steps, mostly waiting for the host
    assert 0.3 < table["free_us"].sum() / table["duration_us"].sum() < 0.6


def test_free_time_finding_cites_causes_and_levers(v100):
    from npu_advise.findings import Finding, Location

    ctx = Context()
    cause = Finding(rule="NPA301", category="sync", title="3 device syncs at train.py:12", severity="high",
                    locations=[Location("train.py", 12, "step")])
    ctx.findings.append(cause)
    res = host_bound.analyze(v100, ctx)
    (f,) = [f for f in res.findings if f.rule == "NPA201"]
    table = res.tables["host_bound.steps"]
    assert f.estimated_saving_us == pytest.approx(table["host_wait_us"].mean(), abs=0.1)
    assert f.details["causes"][0]["locations"] == ["train.py:12"]
    assert "train.py:12" in f.details["text"] and "TASK_QUEUE_ENABLE=2" in f.details["text"]
    assert any("CPU_AFFINITY_CONF=1" in l for l in f.details["levers"])
    assert any("tcmalloc" in l for l in f.details["levers"])
    tl = res.tables["host_bound.timeline"]
    assert list(tl.columns) == ["start_us", "end_us", "stream"] and 0 < len(tl) <= host_bound.TIMELINE_MAX_ROWS
    assert (tl["end_us"] >= tl["start_us"]).all() and (tl["start_us"].diff().dropna() > 0).all()


def test_timeline_downsampling_keeps_span_and_limit(v100):
    full = host_bound.timeline_table(v100, max_rows=10**9)
    small = host_bound.timeline_table(v100, max_rows=100)
    assert len(full) > 100 and len(small) == 100
    assert small["start_us"].iloc[0] == full["start_us"].iloc[0]
    assert small["end_us"].iloc[-1] == full["end_us"].iloc[-1]
    # merging only closes gaps: busy time can only grow
    assert (small["end_us"] - small["start_us"]).sum() >= (full["end_us"] - full["start_us"]).sum()


def test_npu_trace_reports_profiler_free_next_to_ours():
    t = load_profile(DATA / "npu" / "alexnet_2rank_text" / "level1")[0]
    res = host_bound.analyze(t, Context())
    (f,) = [f for f in res.findings if f.rule == "NPA201"]
    ev = {e.label: e for e in f.evidence}
    free_csv = float(t.extras["step_trace_time"]["Free"].iloc[0])
    assert ev["profiler Free per step"].value == pytest.approx(free_csv, abs=0.1)
    # ours counts the host 'Preparing' time before the first device task too
    prep = float(t.extras["step_trace_time"]["Preparing"].iloc[0])
    assert ev["device free per step"].value == pytest.approx(free_csv + prep, rel=0.05)


def test_cpu_trace_reports_launch_density_not_free_time(cpu_trace):
    res = host_bound.analyze(cpu_trace, Context())
    table = res.tables["host_bound.steps"]
    assert list(table.columns) == ["step", "duration_us", "host_ops", "mean_op_us"]
    assert "host_bound.timeline" not in res.tables
    assert any("needs a device timeline" in l for l in cpu_trace.limitations)
    (f,) = res.findings
    assert f.rule == "NPA202" and f.predicted and f.estimated_saving_us is None
    ops_ev = next(e for e in f.evidence if e.label == "top-level ops per step")
    assert ops_ev.value == pytest.approx(table["host_ops"].mean(), abs=0.1)
    assert ops_ev.value >= host_bound.LAUNCH_DENSITY_MIN_OPS


@pytest.fixture(scope="module")
def cpu_trace(tmp_path_factory):
    from _profile_cpu import profile_tiny_training

    path, _ = profile_tiny_training(tmp_path_factory.mktemp("cpu"))
    return load_profile(path)[0]
