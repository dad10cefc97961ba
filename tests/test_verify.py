"""The verification stage through the real CLI on real scripts: every rewrite is run beside the function it
replaces on a re-run of the profiled script; `apply` takes the verified ones only."""
from __future__ import annotations

import os
import shutil
import subprocess
import re
import sys
from markupsafe import escape

import pytest

from conftest import EXAMPLE, SCRIPTS, read_json, run_cli

pytest.importorskip("torch")

CASES_ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH")) if p),
             "NPU_ADVISE_GENERATORS": "verify_generators", "OMP_NUM_THREADS": "1"}


def _ids(stdout: str, status: str) -> set:
    """Fix ids of the `apply` lines `ID FILE: STATUS[: ...]`."""
    return {m.group(1) for m in re.finditer(rf"^(\S+) \S+: {status}(?::|$)", stdout, re.M)}


def _fixes(out) -> list:
    return [f for f in read_json(out / "findings.json")["findings"] if f.get("fix") and f["fix"].get("diff")]


def _by_function(out) -> dict:
    return {(f["fix"]["function"], f["rule"], f.get("subject")): f["fix"] for f in _fixes(out)}


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify_example")
    proj = tmp / "proj"
    proj.mkdir()
    shutil.copy(EXAMPLE, proj / "train.py")
    out = tmp / "out"
    r = run_cli("profile", "--out", out, proj / "train.py", "--epochs", "1", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return proj, out, r


def test_every_offered_fix_on_the_example_is_verified_on_real_calls(example_run):
    proj, out, r = example_run
    doc = read_json(out / "findings.json")
    assert doc["schema_version"] == "1.1"
    fixes = _fixes(out)
    assert fixes and all(f["fix"]["verification"] for f in fixes)
    by_fn = {}
    for f in fixes:
        by_fn.setdefault(f["fix"]["function"], []).append(f["fix"])
    # the CPU-runnable rewrites: compared on real calls, with numbers
    for fn in ("interpolate", "lane_loss", "nll_with_covariances"):
        for fix in by_fn[fn]:
            v = fix["verification"]
            assert v["status"] == "verified" and v["calls"] >= 1, v
            assert v["ops_per_call"]["original"] > 0 and "float32" in v["max_abs_diff"], v
            assert v["summary"].startswith(f"verified on {v['calls']} call")
            assert "ops per call" in v["summary"] and "max |diff|" in v["summary"]
            assert fix["auto_applicable"]
    assert by_fn["interpolate"][0]["verification"]["calls"] == 24           # bounded (180 calls per step)
    assert by_fn["interpolate"][0]["verification"]["gradients"] == "equal"
    assert by_fn["nll_with_covariances"][0]["verification"]["gradients"] == "equal"
    # NPU-only fused ops: against the pure-PyTorch reference of the op's documented semantics
    for fn, api in (("MSDeformableAttention.forward", "mx_driving.multi_scale_deformable_attn"),
                    ("BasicBlock.forward", "mx_driving.npu_add_relu")):
        v = by_fn[fn][0]["verification"]
        assert v["status"] == "verified" and v["reference"] == [api] and v["gradients"] == "equal", v
        assert f"against the pure-PyTorch reference of {api}" in v["summary"]
    # the fused optimizer: the reference optimizer built from the rewritten call steps beside the original
    v = by_fn["main"][0]["verification"]
    assert v["status"] == "verified" and v["unit"] == "optimizer steps" and v["calls"] == 3, v
    assert v["reference"] == ["torch_npu.optim.NpuFusedAdamW"] and "parameters after each step max |diff|" in v["summary"]
    # module-level migration set-up: shown, not verifiable here
    for fix in by_fn["<module>"]:
        assert fix["verification"]["status"] == "not_verifiable" and fix["verification"]["on_this_machine"]
    html = (out / "report.html").read_text(encoding="utf-8")
    for f in fixes:
        assert str(escape(f["fix"]["verification"]["summary"])) in html
    sarif = read_json(out / "findings.sarif")["runs"][0]["results"]
    assert {res["properties"]["verification"]["status"] for res in sarif if "verification" in res["properties"]} \
        >= {"verified", "not_verifiable"}
    cost = doc["collection"]["verification"]
    assert cost["verified"] >= 7          # other generators may add candidates (and rejections) of their own
    assert cost["steps"] <= 5                        # wait + warmup + active of the profile
    assert f"verification: {cost['verified']} verified, {cost['rejected']} rejected" in r.stderr


def test_apply_applies_exactly_the_verified_fixes(example_run):
    proj, out, _ = example_run
    fixes = _fixes(out)
    verified = {f["fix"]["fix_id"] for f in fixes if f["fix"]["verification"]["status"] == "verified"}
    runnable_here = {f["fix"]["fix_id"] for f in fixes if f["fix"]["verification"]["status"] == "verified"
                     and not f["details"].get("fix_requires")}
    r = run_cli("apply", out, "--dry-run", "--include-npu-fixes")
    assert r.returncode == 0, r.stderr
    core = {f["fix"]["fix_id"] for f in fixes if f["fix"]["verification"]["status"] == "verified" and f["fix"]["function"]
            in ("interpolate", "lane_loss", "nll_with_covariances", "MSDeformableAttention.forward", "BasicBlock.forward", "main")}
    # unverified fixes never; the example's verified ones all (fixes of other generators may overlap them)
    assert core <= _ids(r.stdout, "would apply") <= verified
    r = run_cli("apply", out)
    assert r.returncode == 0, r.stderr
    applied = _ids(r.stdout, "applied")
    assert applied <= runnable_here and len(applied) >= 4
    for f in fixes:
        status = f["fix"]["verification"]["status"]
        if status == "not_verifiable":
            assert f"{f['fix']['fix_id']} train.py: skipped: not verifiable" in r.stdout
        elif status == "rejected":           # never offered
            assert f["fix"]["fix_id"] not in r.stdout and not f["fix"]["auto_applicable"]
    text = (proj / "train.py").read_text(encoding="utf-8")
    assert "torch.linalg.svdvals" in text and "masked_fill_" in text and "torch.arange(1, num_len" in text
    # the patched script still trains
    run = subprocess.run([sys.executable, str(proj / "train.py"), "--epochs", "1", "--steps-per-epoch", "2"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0 and "epoch 0 done" in run.stdout, run.stderr[-2000:]


@pytest.fixture(scope="module")
def cases_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify_cases") / "out"
    env = dict(CASES_ENV, VERIFY_TEST_CASES="wrong,raises,exits,decorated,closure,method,static,"
                                                  "memo,nograd,needs,fallback")
    r = run_cli("profile", "--out", out, SCRIPTS / "verify_train.py", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _case(out, subject) -> dict:
    return next(f["fix"] for f in _fixes(out) if f.get("subject") == subject)


def test_wrong_raising_and_unswappable_rewrites_are_reported(cases_run):
    out = cases_run
    wrong = _case(out, "wrong")
    assert wrong["verification"]["status"] == "rejected" and not wrong["auto_applicable"]
    assert wrong["verification"]["reason"].startswith("call 1: output: differs by ")
    assert "float32 tolerance rtol 1e-05" in wrong["verification"]["reason"]
    raises = _case(out, "raises")["verification"]
    assert raises["status"] == "rejected" and raises["reason"].startswith("raised IndexError: index 1000000 is out of bounds")
    exits = _case(out, "exits")["verification"]
    assert exits["status"] == "rejected" and exits["reason"] == "raised SystemExit(5) (sys.exit) on call 1"
    memo = _case(out, "memo")
    assert memo["verification"]["status"] == "not_verifiable" and memo["auto_applicable"]
    assert memo["verification"]["reason"] == (
        "cannot be swapped: decorated with @Memo, which made a Memo that does not call the function through a "
        "closure cell of a wrapper (as functools.wraps-style decorators do), so the rewrite cannot be run in its place")
    # closures, methods using super(), staticmethods, functools.wraps-style decorators (torch.no_grad() too, whose
    # outputs need no gradients): swapped and verified, gradients where outputs need them
    for subject, grads in (("closure", "equal"), ("method", "equal"), ("static", None), ("decorated", "equal"),
                           ("nograd", None)):
        v = _case(out, subject)["verification"]
        assert v["status"] == "verified" and v["calls"] == 3 and v["gradients"] == grads, (subject, v)
    # what only the run proves (needs_verification): not auto-applicable until verified, then it is
    needs = _case(out, "needs")
    assert needs["verification"]["status"] == "verified" and needs["auto_applicable"], needs
    assert any(c.startswith("proven only by verification on your run: `x` is a tensor") for c in needs["constraints"])
    # the first candidate is rejected on call 1; its alternative takes over from call 2 in the same run
    fallback = _case(out, "fallback")
    v = fallback["verification"]
    assert v["status"] == "verified" and v["calls"] == 3 and fallback["auto_applicable"], v
    assert "x + x + x" in fallback["diff"] and fallback["catalog_ref"] == "tests.fallback1"
    assert v["instead_of"][0]["rewrite"] == "tests.fallback0" and v["instead_of"][0]["status"] == "rejected"
    assert "chosen after tests.fallback0 was rejected (call 1: output: differs by" in v["summary"]
    # the recommender's own rewrite of the prefix-mask loop, on every call of 3 steps (enough: the run stops there)
    mask = [f["fix"] for f in _fixes(out) if f["fix"]["function"] == "build_mask"]
    assert mask and all(m["verification"]["status"] == "verified" and m["verification"]["calls"] == 3 for m in mask)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "rejected: raised IndexError" in html and "not verifiable: cannot be swapped" in html
    # the rejected ones are never applied, the unswappable one only when asked
    r = run_cli("apply", out, "--dry-run", "--include-unverified")
    would = _ids(r.stdout, "would apply")
    assert _case(out, "memo")["fix_id"] in would
    assert not would & {_case(out, s)["fix_id"] for s in ("wrong", "raises", "exits")}


def test_hang_and_crash_inside_a_rewrite_are_contained(cases_run):
    env = dict(CASES_ENV, VERIFY_TEST_CASES="hangs,crashes")
    r = run_cli("verify", cases_run, "--verify-timeout", "20", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    hangs = _case(cases_run, "hangs")["verification"]
    assert hangs["status"] == "rejected" and hangs["reason"] == "did not return within 5 s on call 1"
    crashes = _case(cases_run, "crashes")["verification"]
    assert crashes["status"] == "rejected"
    assert crashes["reason"] == "call 1: the verification run crashed (signal 11, SIGSEGV) while the rewrite ran"
    # what was verified before the crash is kept
    mask = [f["fix"] for f in _fixes(cases_run) if f["fix"]["function"] == "build_mask"]
    assert mask and all(m["verification"]["status"] == "verified" for m in mask)


def test_sys_exit_of_the_script_during_verification_keeps_the_results(cases_run):
    env = dict(CASES_ENV, VERIFY_TEST_CASES="closure", VERIFY_TRAIN_EXIT="3")
    r = run_cli("verify", cases_run, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    v = _case(cases_run, "closure")["verification"]
    assert v["status"] == "verified" and v["calls"] == 2 and "exited with status 3" in v["run_outcome"]
    doc = read_json(cases_run / "findings.json")
    assert any("verification run ended early (the script exited with status 3 (sys.exit)) after 2" in x
               for x in doc["limitations"])


def test_compare_is_structural_and_dtype_aware():
    import torch

    from npu_advise.verify.compare import compare

    x = torch.linspace(0, 1, 10)
    assert compare((x, {"a": [1, None]}), (x + 1e-7, {"a": [1, None]})).equal
    assert "differs by" in compare(x, x + 1e-3).why
    assert compare((x + 1).half(), (x + 1 + 1e-4).half()).equal          # within float16 tolerance
    assert "dtype float64 instead of float32" in compare(x, x.double()).why
    assert "shape (5,) instead of (10,)" in compare(x, x[:5]).why
    assert compare(torch.tensor([1, 2]), torch.tensor([1, 3])).why == "3 instead of 2 at flat index 1"
    assert "length 2 became 1" in compare([1, 2], [1]).why
    assert compare(torch.tensor([float("nan")]), torch.tensor([float("nan")])).equal
