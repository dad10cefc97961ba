"""Quality of npu-advise on the corpus in tests/corpus: the real CLI profiles every script, and recall and
precision of its located findings against the scripts' ground-truth comments must stay above the floors
in tests/corpus/floors.json."""
from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

CORPUS = Path(__file__).resolve().parent / "corpus"


def _load_scorer():
    spec = importlib.util.spec_from_file_location("corpus_score", CORPUS / "score.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


score = _load_scorer()


@pytest.fixture(scope="session")
def corpus_out(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="session")
def corpus_scores(corpus_out):
    scores, summary = score.run(keep=corpus_out, jobs=2)
    text = io.StringIO()
    score.report(scores, summary, text)
    print(text.getvalue())
    return scores, summary, text.getvalue()


def test_corpus_ground_truth_is_well_formed():
    dirs = score.corpus_scripts()
    assert len(dirs) >= 12
    truths = [score.load_truth(d) for d in dirs]
    for truth in truths:
        assert truth.traps, f"{truth.script} has no trap"
    # scripts without a problem (all traps) measure precision only; most scripts have real problems
    assert sum(any(it.severity in ("high", "medium") for it in t.items) for t in truths) >= 12


def test_scorer_matching_rules():
    truth = score.Truth("t", [score.Item("a", "high", [score.Spot("train.py", 10, "sync")]),
                              score.Item("b", "medium", [score.Spot("train.py", 20, "small_op_loop"),
                                                         score.Spot("train.py", 30, "fused_op")])],
                        [score.Trap("train.py", 12, "sync", "optimizer step")])

    def finding(cat, line, sev="medium"):
        return {"rule": "NPA000", "category": cat, "severity": sev, "title": "t",
                "locations": [{"file": "train.py", "line": line, "function": "f"}]}

    doc = {"findings": [finding("sync", 9), finding("sync", 11), finding("sync", 12), finding("fused_op", 31),
                        finding("small_op_loop", 10), finding("op_hotspot", 10), finding("sync", 40, "info")]}
    sc = score.score_script(truth, doc, Path("."))
    assert [(f["category"], f["_locs"][0][1]) for f, _ in sc.hits] == [("sync", 9), ("fused_op", 31)]
    fps = [(f["category"], f["_locs"][0][1], t.why if t else None) for f, t in sc.false_positives]
    # 11 is as near to the trap as to the truth, 12 is the trap itself: the trap wins both;
    # small_op_loop at 10 is the wrong category; op_hotspot and info findings are not scored
    assert fps == [("sync", 11, "optimizer step"), ("sync", 12, "optimizer step"), ("small_op_loop", 10, None)]
    assert {it.key for it, _ in sc.recalled} == {"a", "b"} and not sc.misses
    summary = score.summarize([sc])
    assert summary["precision"] == 0.4 and summary["recall"] == 1.0
    assert summary["categories"]["small_op_loop"]["recall"] == 0.0     # b was found as a fused op only


def test_corpus_precision_and_recall_above_floors(corpus_scores):
    scores, summary, text = corpus_scores
    assert not summary["errors"], summary["errors"]
    floors = json.loads((CORPUS / "floors.json").read_text())
    failed = score.check_floors(summary, floors)
    assert not failed, "\n".join(failed) + "\n" + text


def test_npu_arm_that_never_ran_is_not_verifiable(corpus_scores, corpus_out):
    """bevformer_tsa's `is_cuda` dispatch gets an NPU arm calling mx_driving.multi_scale_deformable_attn; off an
    NPU the verification run never takes it (the reference is called 0 times), so the arm is not verified."""
    doc = json.loads((corpus_out / "bevformer_tsa" / "findings.json").read_text())
    (dispatch,) = [f for f in doc["findings"] if f["rule"] == "NPA907"]
    assert '+        if value.device.type == "npu":' in dispatch["fix"]["diff"]
    v = dispatch["fix"]["verification"]
    assert v["status"] == "not_verifiable" and v["on_this_machine"] and v["reference_calls"] == 0 and v["calls"] >= 1, v
    assert "never called mx_driving.multi_scale_deformable_attn (its pure-PyTorch reference ran 0 times)" in v["reason"]
    assert v["summary"].startswith("not verifiable on this machine: the rewritten ")


def test_fused_loop_takes_the_predicted_cost_of_the_loop_it_replaces(corpus_scores, corpus_out):
    """centerpoint_bev's per-object target loop costs little CPU time at its own lines (its helpers run
    elsewhere) but ~900 launches per step on an NPU: the NPA807 finding takes the NPA501 loop's severity."""
    doc = json.loads((corpus_out / "centerpoint_bev" / "findings.json").read_text())
    (loop,) = [f for f in doc["findings"] if f["rule"] == "NPA501" and f["locations"][0]["line"] == 57]
    (fused,) = [f for f in doc["findings"] if f["rule"] == "NPA807"]
    # the loop's severity is its NPU saving over the measured CPU step time: high on a quiet machine,
    # medium when load stretches the step; either way the fused finding takes it (its own lines: low)
    assert fused["locations"][0]["line"] == 57 and fused["severity"] == loop["severity"] in ("high", "medium")
    if "severity_from" not in fused["details"]:
        return      # the host time at the match alone already rated it as the loop (a loaded run): nothing raised
    assert fused["details"]["severity_from"] == f"NPA501 at targets.py:57 ({loop['severity']})"
    (ev,) = [e for e in fused["evidence"] if e["label"] == "the loop's estimated saving per step (NPA501)"]
    assert ev["value"] == loop["estimated_saving_us"] and "the fused op replaces the whole loop" in ev["how"]


def test_conv_tower_per_feature_level_is_no_small_op_loop(corpus_scores, corpus_out):
    """fcos3d_mono's shared head runs once per FPN level, each level of another size: no small-op loop (nothing
    batches convolutions over different sizes), where petr_pe's loop over six same-sized cameras is one."""
    def loops(name):
        doc = json.loads((corpus_out / name / "findings.json").read_text())
        return {(f["locations"][0]["file"], f["locations"][0]["line"]) for f in doc["findings"] if f["rule"] == "NPA501"}
    head = next(i for i, l in enumerate((CORPUS / "fcos3d_mono" / "train.py").read_text().splitlines(), 1)
                if "for lvl, feat in enumerate(feats):" in l)
    assert ("train.py", head) not in loops("fcos3d_mono")
    cams = next(i for i, l in enumerate((CORPUS / "petr_pe" / "position.py").read_text().splitlines(), 1)
                if "for cam in range(num_cams):" in l)
    assert ("position.py", cams) in loops("petr_pe")
