"""A report made in one checkout applies in another: a second git clone, or a copy of the whole folder.

The report is written by the real findings.json writer inside a git repository; the original checkout is
then removed (as on a laptop, where the NPU server's absolute paths do not exist) and `apply` runs on a
copy of the report folder.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from test_apply import LOSS_LOG, LOSS_LOG_FIXED, MASK_FIXED, ORIGINAL, VERIFIED, _code_fix

from npu_advise import model
from npu_advise.pipeline import Report
from npu_advise.render.json_out import write_findings

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(cwd)})


@pytest.fixture()
def server(tmp_path):
    """The 'NPU server': a repository with the project in a subfolder, and a report made there."""
    repo = tmp_path / "server" / "lanes"
    proj = repo / "models" / "lane"
    (proj / "utils").mkdir(parents=True)
    (proj / "train.py").write_text(ORIGINAL)
    (proj / "utils" / "log.py").write_text(LOSS_LOG)
    _git("init", "-q", ".", cwd=repo)
    _git("add", ".", cwd=repo)
    _git("commit", "-q", "-m", "project", cwd=repo)
    findings = [_code_fix("NPA501", "train.py", ORIGINAL, MASK_FIXED, 9, "build_mask", "small_op_loop"),
                _code_fix("NPA302", "utils/log.py", LOSS_LOG, LOSS_LOG_FIXED, 5, "log", "sync")]
    for f in findings:                          # as the verification stage leaves them
        f.fix.verification = dict(VERIFIED)
    report_dir = proj / "npu_advise_out" / "train-1"
    report_dir.mkdir(parents=True)
    report = Report(trace=model.Trace(path="trace.json", fmt="kineto", device_type="cpu"), findings=findings,
                    tables={}, limitations=[], project_root=str(proj))
    write_findings(report, report_dir / "findings.json")
    return repo, proj, report_dir


def test_findings_json_records_where_the_files_are_in_the_repository(server):
    repo, proj, report_dir = server
    source = json.loads((report_dir / "findings.json").read_text())["source"]
    assert source["project_root_from_report"] == "../.."
    assert source["git_top_level"] == str(repo.resolve())
    assert source["project_root_in_repo"] == "models/lane"
    assert source["files"]["utils/log.py"]["repo_path"] == "models/lane/utils/log.py"
    assert len(source["files"]["train.py"]["sha256"]) == 64


def test_copied_report_applies_in_a_second_clone(server, tmp_path):
    repo, _proj, report_dir = server
    laptop = tmp_path / "laptop" / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(laptop)], check=True, capture_output=True)
    copied = tmp_path / "downloads" / "train-1"
    shutil.copytree(report_dir, copied)
    shutil.rmtree(tmp_path / "server")          # the recorded absolute root no longer exists
    # One file differs in the clone: it is named, the other one is applied.
    edited = (laptop / "models" / "lane" / "utils" / "log.py")
    edited.write_text(LOSS_LOG + "# local change\n")

    r = run_cli("apply", copied, cwd=laptop / "models")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"using {laptop.resolve() / 'models' / 'lane'}" in r.stderr
    assert "1 of 2 file(s) have the content the report was made for" in r.stderr
    assert "not matched: utils/log.py (changed since the report)" in r.stderr
    assert (laptop / "models" / "lane" / "train.py").read_text() == MASK_FIXED
    assert edited.read_text() == LOSS_LOG + "# local change\n"       # left alone
    assert "1 applied, 1 refused" in r.stdout

    # --revert finds the same checkout (the journal recorded where apply wrote)
    r = run_cli("apply", copied, "--revert", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (laptop / "models" / "lane" / "train.py").read_text() == ORIGINAL


def test_report_inside_a_copied_checkout_finds_its_project(server, tmp_path):
    repo, _proj, _report_dir = server
    moved = tmp_path / "elsewhere" / "lanes"
    shutil.copytree(repo, moved)
    shutil.rmtree(tmp_path / "server")
    r = run_cli("apply", moved / "models" / "lane" / "npu_advise_out" / "train-1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 of 2 file(s) have the content" in r.stderr
    assert (moved / "models" / "lane" / "train.py").read_text() == MASK_FIXED
    assert (moved / "models" / "lane" / "utils" / "log.py").read_text() == LOSS_LOG_FIXED


def test_nowhere_to_apply_says_so_in_one_line(server, tmp_path):
    _repo, _proj, report_dir = server
    copied = tmp_path / "downloads" / "train-1"
    shutil.copytree(report_dir, copied)
    shutil.rmtree(tmp_path / "server")
    r = run_cli("apply", copied, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no checkout with its files was found" in lines[0], r.stderr
