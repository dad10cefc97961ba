"""The candidate generators on a whole script through the real CLI: `npu-advise profile` gives every loop and
sync finding of tests/scripts/rewrite_train.py its rewrite; each rewrite's diff, applied alone to a copy, leaves
the loss sequence of the script equal; `npu-advise apply` applies exactly the statically proven ones."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import SCRIPTS, run_cli

SCRIPT = SCRIPTS / "rewrite_train.py"
LOOP_SYNC = ("NPA501", "NPA301", "NPA302")


def _losses(folder) -> list:
    proc = subprocess.run([sys.executable, SCRIPT.name], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [float(x) for x in re.findall(r"loss ([-\d.e+naninf]+)", proc.stdout)]


def _equal(a: list, b: list) -> bool:
    return len(a) == len(b) > 0 and all(abs(x - y) <= 1e-4 * max(abs(x), abs(y), 1e-12) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    work = tmp_path_factory.mktemp("rewrite_script")
    shutil.copy(SCRIPT, work / SCRIPT.name)
    proc = run_cli("profile", "--out", work / "out", SCRIPT.name, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    findings = json.loads((work / "out" / "findings.json").read_text())["findings"]
    return work, findings, _losses(work)


def test_each_generators_candidate_keeps_the_loss_sequence(profiled, tmp_path):
    work, findings, losses = profiled
    rewritten = [f for f in findings if f["rule"] in LOOP_SYNC and ((f.get("fix") or {}).get("catalog_ref") or "")
                 .startswith("rewrites.")]
    generators = {f["fix"]["catalog_ref"].split(".", 1)[1] for f in rewritten}
    assert {"map_vmap", "scalar_reads", "segment_reduce", "device_checks"} <= generators, generators
    for f in rewritten:
        # what only verification can prove keeps a candidate from being auto-applicable until it is verified
        needs = [c for c in f["fix"]["constraints"] if c.startswith("proven only by verification")]
        verified = (f["fix"].get("verification") or {}).get("status") == "verified"
        assert f["fix"]["auto_applicable"] == (not needs or verified), f["fix"]
    # every distinct diff applied to a copy: together where they touch different lines, else in a copy of its own
    diffs = list(dict.fromkeys(f["fix"]["diff"] for f in rewritten))
    copies = []
    for diff in diffs:
        for copy in copies + [None]:
            if copy is None:
                copy = tmp_path / f"copy{len(copies)}"
                copy.mkdir()
                shutil.copy(work / SCRIPT.name, copy / SCRIPT.name)
                copies.append(copy)
            if subprocess.run(["git", "apply", "--check", "-"], input=diff.encode(), cwd=copy,
                              capture_output=True).returncode == 0:
                subprocess.run(["git", "apply", "-"], input=diff.encode(), cwd=copy, check=True)
                break
    assert len(copies) < len(diffs)
    for copy in copies:
        assert _equal(_losses(copy), losses), (copy / SCRIPT.name).read_text()


def test_apply_takes_the_proven_rewrites_and_the_script_still_trains_the_same(profiled, tmp_path):
    work, findings, losses = profiled
    copy = tmp_path / "applied"
    shutil.copytree(work, copy)
    proc = run_cli("apply", copy / "out", "--project-root", copy, cwd=copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (copy / SCRIPT.name).read_text()
    assert "enumerate(lengths.reshape(-1).tolist())" in text                   # scalar_reads, proven
    assert 'torch._assert_async(torch.isfinite(loss).all(), "loss is not finite")' in text   # device_checks, proven
    # what needs verification is applied once verified on the run, never otherwise
    vmapped = [f for f in findings if "torch.vmap" in ((f.get("fix") or {}).get("diff") or "")]
    verified = any((f["fix"].get("verification") or {}).get("status") == "verified" for f in vmapped)
    assert ("torch.vmap" in text) == verified
    assert _equal(_losses(copy), losses)
