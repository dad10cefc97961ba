"""Sync analysis on real GPU/NPU traces and on a CPU trace profiled here."""
import gzip
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from npu_advise.analyzers import Context, syncs  # noqa: E402
from npu_advise.load import load_profile  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KINETO = DATA / "kineto"


def _raw(path):
    with gzip.open(path, "rt") as fh:
        return [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]


def test_item_calls_grouped_by_op_without_locations():
    path = KINETO / "hta_negative_queue_a100_80g_rank0.json.gz"
    raw = Counter(e["name"] for e in _raw(path) if e.get("cat") == "cpu_op")
    assert raw["aten::item"] + raw["aten::_local_scalar_dense"] == 1890
    t = load_profile(path)[0]
    res = syncs.analyze(t, Context())
    by_site = {f.details["site"]: f for f in res.findings}
    item = by_site["aten::item"]
    # every item with its _local_scalar_dense counted once, at the item; 5 more sit under aten::is_nonzero
    nonzero = by_site["aten::is_nonzero"]
    assert item.details["ops"] == {"aten::item": 940}
    assert item.details["events"] + nonzero.details["events"] - nonzero.details["ops"]["aten::is_nonzero"] == 1890
    assert item.details["calls_per_step"] == 188.0
    assert item.details["grouped_by"] == "operator" and "grouped by operator" in item.title
    # no sync runtime call ran inside these items (scalar tensors on the host): predicted, not measured
    assert item.rule == "NPA302" and item.predicted and item.estimated_saving_us is None
    assert any("grouped by operator" in l for l in t.limitations)
    # the 75 cudaStreamSynchronize calls are measured syncs, attributed to the copies that made them
    measured = [f for f in res.findings if f.rule == "NPA301"]
    events = _raw(path)
    steps = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["name"].startswith("ProfilerStep#")]
    raw_syncs = sum(1 for e in events if e["name"] == "cudaStreamSynchronize"
                    and any(a <= e["ts"] < b for a, b in steps))
    assert sum(f.details["runtime_calls"].get("cudaStreamSynchronize", 0) for f in measured) == raw_syncs == 75
    assert by_site["aten::to"].rule == "NPA301"


def test_cuda_sync_events_on_alexnet():
    path = KINETO / "hta_critical_path_alexnet_a100_cudasync.json.gz"
    raw = [e for e in _raw(path) if e.get("cat") == "cuda_sync"]
    kinds = Counter(e["name"] for e in raw)
    assert kinds == {"Stream Wait Event": 20, "Stream Sync": 16, "Context Sync": 5}
    t = load_profile(path)[0]
    res = syncs.analyze(t, Context())
    measured = [f for f in res.findings if f.rule == "NPA301"]
    # the 16 stream syncs and 5 context syncs are the device side of the host's sync calls
    rt = Counter()
    for f in measured:
        rt.update(f.details["runtime_calls"])
    assert rt == {"cudaStreamSynchronize": 16, "cudaDeviceSynchronize": 5}
    device_wait_us = sum(next((e.value for e in f.evidence if e.label == "device sync wait per step"), 0)
                         for f in measured)
    expected = sum(e["dur"] for e in raw if e["name"] in ("Stream Sync", "Context Sync"))
    assert device_wait_us == pytest.approx(expected, abs=1.0)
    # cross-stream waits block no host thread: not reported as syncs
    assert not any("Wait Event" in f.title for f in res.findings)
    for f in measured:
        if f.estimated_saving_us is not None:   # capped at the blocked time (see syncs._bubbles)
            blocked = next(e.value for e in f.evidence if e.label == "host blocked per step")
            assert 0 < f.estimated_saving_us <= blocked + 1e-6


def test_npu_long_stream_sync_attributed_to_source_line():
    t = load_profile(DATA / "npu" / "alexnet_2rank_text" / "level1")[0]
    res = syncs.analyze(t, Context())
    longest = max((f for f in res.findings if f.rule == "NPA301"),
                  key=lambda f: next((e.value for e in f.evidence if e.label == "longest sync"), 0))
    ev = {e.label: e.value for e in longest.evidence}
    assert ev["longest sync"] > 85000            # the 91.7 ms aclrtSynchronizeStreamWithTimeout
    assert longest.locations[0].file.endswith("imagenet_script/main.py")
    assert longest.locations[0].line == 485
    assert "AscendCL@aclrtSynchronizeStreamWithTimeout" in longest.details["runtime_calls"]
    assert longest.severity == "high"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from _profile_cpu import TRAIN_SCRIPT, def_line, profile_tiny_training

    path, script = profile_tiny_training(tmp_path_factory.mktemp("cpu"))
    return load_profile(path)[0], TRAIN_SCRIPT


def test_predicted_item_syncs_on_a_cpu_trace_profiled_here(tiny):
    from _profile_cpu import def_line

    t, source = tiny
    res = syncs.analyze(t, Context())
    assert res.findings and all(f.rule == "NPA302" and f.predicted for f in res.findings)
    item = next(f for f in res.findings if ".item()" in f.details["causes"])
    loc = item.locations[0]
    # with_stack gives python_function frames: the enclosing function's def line
    assert loc.file.endswith("tiny_train.py") and loc.function == "read_loss"
    assert loc.line == def_line(source, "read_loss")
    assert item.details["calls_per_step"] == 3.0        # 3 loss.item() per step
    assert item.estimated_saving_us is None
    mask = next(f for f in res.findings if f.locations and f.locations[0].function == "keep_positive")
    assert mask.details["causes"] == ["x[mask] boolean-mask indexing"]


def test_bundled_example_syncs_at_marked_lines(tmp_path):
    """`npu-advise profile` on the bundled example: predicted syncs at the exact marked lines."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    example = repo / "examples" / "bev_train" / "train.py"
    lines = example.read_text(encoding="utf-8").splitlines()

    def marked(tag):
        (n,) = [i + 1 for i, l in enumerate(lines) if l.rstrip().endswith(f"# npa-example: {tag}")]
        return n

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "npu_advise.cli", "profile", "--out", str(out), str(example),
                          "--epochs", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads((out / "findings.json").read_text())
    sync_lines = {(Path(l["file"]).name, l["line"]) for f in doc["findings"] if f["rule"] == "NPA302"
                  for l in f["locations"]}
    assert ("train.py", marked("item-sync")) in sync_lines
    assert ("train.py", marked("valid-len-mask")) in sync_lines
    mask = next(f for f in doc["findings"] if f["rule"] == "NPA302"
                and f["locations"][0]["line"] == marked("valid-len-mask"))
    assert mask["predicted"] and mask["details"]["calls_per_step"] >= 1


def test_int_of_a_tensor_is_named_as_written(tmp_path):
    # int(t) and t.item() issue the same aten::item; without the collector's call record the line says which
    from _tracing import profile_script

    script = tmp_path / "reads.py"
    script.write_text("import torch\n"
                      "x = torch.rand(64)\n"
                      "def step():\n"
                      "    n = int((x > 0.5).sum())\n"
                      "    m = (x > 0.2).sum().item()\n"
                      "    return n + m\n")
    trace, = load_profile(str(profile_script(script, "step", tmp_path / "t.json")))
    causes = {f.locations[0].line: f.details["causes"] for f in syncs.analyze(trace, Context(project_root=tmp_path)).findings}
    assert causes[4] == ["int() / float() of a tensor (reads it like .item())"]
    assert causes[5] == [".item()"]
