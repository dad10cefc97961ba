"""`npu-advise apply`: real fixes on a real project folder, checked byte for byte (and against git apply)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

from npu_advise.apply import engine, patching, safety
from npu_advise.cli import main
from npu_advise.findings import SCHEMA_VERSION, Finding, Fix, Location

ORIGINAL = '''"""Lane head training (synthetic)."""
import torch
import torch.nn as nn


def build_mask(valid_len, max_len):
    mask = torch.zeros(len(valid_len), max_len)
    for i, ll in enumerate(valid_len):
        mask[i][:ll] = 1
    return mask


class LaneHead(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.proj = nn.Linear(dim, 2)

    def forward(self, x, valid_len):
        mask = build_mask(valid_len, x.shape[1])
        return self.proj(x) * mask[..., None]


def train(steps=3):
    model = LaneHead()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        x = torch.randn(4, 10, 16)
        loss = model(x, torch.tensor([3, 10, 7, 1])).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
'''

MASK_FIXED = ORIGINAL.replace(
    "    mask = torch.zeros(len(valid_len), max_len)\n"
    "    for i, ll in enumerate(valid_len):\n"
    "        mask[i][:ll] = 1\n"
    "    return mask\n",
    "    # one comparison instead of one slice assignment (and one host sync) per row\n"
    "    return (torch.arange(max_len)[None, :] < valid_len[:, None]).to(torch.float32)\n")
# The optimizer fix also adds an import near the top: its hunk context overlaps the mask fix's hunk.
ADAMW_FIXED = ORIGINAL.replace("import torch\nimport torch.nn as nn\n", "import torch\nimport torch.nn as nn\nimport torch_npu\n") \
    .replace("torch.optim.AdamW(", "torch_npu.optim.NpuFusedAdamW(")
BOTH_FIXED = MASK_FIXED.replace("import torch\nimport torch.nn as nn\n", "import torch\nimport torch.nn as nn\nimport torch_npu\n") \
    .replace("torch.optim.AdamW(", "torch_npu.optim.NpuFusedAdamW(")

LOSS_LOG = "import torch\n\n\ndef log(loss):\n    print(loss.item())\n"
LOSS_LOG_FIXED = "import torch\n\n\ndef log(loss):\n    print(loss.detach())\n"


def _finding(rule, category, rel, line, function, fix):
    return Finding(rule=rule, category=category, title=f"{rule} at {rel}:{line}", severity="high",
                   locations=[Location(rel, line, function)], fix=fix)


def _code_fix(finding_rule, rel, old, new, line, function, category):
    fix = Fix(description=f"rewrite for {finding_rule}", auto_applicable=True,
              diff=patching.unified_diff(rel, old, new), file=rel,
              file_sha256=safety.sha256_text(old), patched_sha256=safety.sha256_text(new))
    f = _finding(finding_rule, category, rel, line, function, fix)
    fix.fix_id = f.id
    return f


@pytest.fixture()
def project(tmp_path):
    """A project folder with two files, a report folder with three code fixes and one advice-only fix."""
    root = tmp_path / "proj"
    (root / "utils").mkdir(parents=True)
    (root / "train.py").write_text(ORIGINAL)
    os.chmod(root / "train.py", 0o754)
    (root / "utils" / "log.py").write_text(LOSS_LOG)
    findings = [
        _code_fix("NPA501", "train.py", ORIGINAL, MASK_FIXED, 9, "build_mask", "small_op_loop"),
        _code_fix("NPA601", "train.py", ORIGINAL, ADAMW_FIXED, 25, "train", "optimizer"),
        _code_fix("NPA302", "utils/log.py", LOSS_LOG, LOSS_LOG_FIXED, 5, "log", "sync"),
    ]
    advice = _finding("NPA301", "sync", "train.py", 27, "train",
                      Fix(description="log the loss every N steps instead of every step", auto_applicable=False))
    advice.fix.fix_id = advice.id
    findings.append(advice)
    report = tmp_path / "out"
    _write_report(report, root, findings)
    return root, report, {f.rule: f.id for f in findings}


VERIFIED = {"status": "verified", "summary": "verified on 1 call in this run (test fixture)"}


def _write_report(report, root, findings):
    """findings.json of `findings`; code fixes without a verification record count as verified (these
    tests are about patching; test_unverified_and_rejected_fixes covers the verification gate)."""
    report.mkdir(exist_ok=True)
    for f in findings:
        if f.fix is not None and f.fix.diff and f.fix.verification is None:
            f.fix.verification = dict(VERIFIED)
    doc = {"schema_version": SCHEMA_VERSION, "tool": {"name": "npu-advise"}, "project_root": str(root),
           "limitations": [], "findings": [f.to_dict() for f in findings]}
    (report / "findings.json").write_text(json.dumps(doc, indent=2))


def run(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apply_all_composes_fixes_on_one_file_and_keeps_permissions(project, capsys):
    root, report, ids = project
    code, out, err = run(["apply", report], capsys)
    assert code == 0, err
    assert (root / "train.py").read_text() == BOTH_FIXED
    assert (root / "utils" / "log.py").read_text() == LOSS_LOG_FIXED
    assert stat.S_IMODE((root / "train.py").stat().st_mode) == 0o754
    for rule in ("NPA501", "NPA601", "NPA302"):
        assert f"{ids[rule]} " in out and "applied" in out
    assert ids["NPA301"] not in out             # advice-only fixes are not touched by "apply all"
    assert "3 applied" in out and "--revert" in out
    journal = json.loads((report / "applied" / "journal.json").read_text())
    assert journal["files"]["train.py"]["fixes"] == [ids["NPA501"], ids["NPA601"]]
    assert not list(root.rglob("*.npa-tmp"))    # no temp files left behind


def test_chaining_the_diffs_would_fail_but_apply_composes_them(project):
    """Why fixes are spliced into the original: the second diff's context no longer matches after the
    first (git apply fails the same way), yet both changes are independent."""
    root, report, ids = project
    data = json.loads((report / "findings.json").read_text())
    adamw_diff = next(f["fix"]["diff"] for f in data["findings"] if f["rule"] == "NPA601")
    with pytest.raises(patching.PatchError):
        patching.apply_diff(MASK_FIXED.replace("import torch\n", "import torch  # edited\n"), adamw_diff)
    assert patching.apply_diff(ORIGINAL, adamw_diff) == ADAMW_FIXED


def test_fix_one_then_another(project, capsys):
    root, report, ids = project
    code, out, _ = run(["apply", report, "--fix", ids["NPA601"]], capsys)
    assert code == 0
    assert (root / "train.py").read_text() == ADAMW_FIXED
    assert (root / "utils" / "log.py").read_text() == LOSS_LOG
    code, out, _ = run(["apply", report, "--fix", ids["NPA501"], "--fix", ids["NPA601"]], capsys)
    assert code == 0
    assert f"{ids['NPA601']} train.py: already applied" in out
    assert f"{ids['NPA501']} train.py: applied" in out
    assert (root / "train.py").read_text() == BOTH_FIXED


def test_dry_run_touches_nothing(project, capsys):
    root, report, ids = project
    before = {p: p.read_bytes() for p in root.rglob("*.py")}
    mtimes = {p: p.stat().st_mtime_ns for p in before}
    code, out, _ = run(["apply", report, "--dry-run"], capsys)
    assert code == 0
    assert "+    return (torch.arange(max_len)[None, :] < valid_len[:, None]).to(torch.float32)" in out
    assert "+import torch_npu" in out and "3 would apply" in out and "dry run" in out
    assert {p: p.read_bytes() for p in before} == before
    assert {p: p.stat().st_mtime_ns for p in before} == mtimes
    assert not (report / "applied").exists()


def test_second_apply_changes_nothing(project, capsys):
    root, report, ids = project
    assert run(["apply", report], capsys)[0] == 0
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*.py")}
    journal = (report / "applied" / "journal.json").read_bytes()
    code, out, _ = run(["apply", report], capsys)
    assert code == 0
    assert out.count(": already applied") == 3 and "3 already applied" in out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*.py")} == snapshot
    assert (report / "applied" / "journal.json").read_bytes() == journal


def test_fix_applied_by_git_apply_counts_as_applied(project, capsys):
    root, report, ids = project
    data = json.loads((report / "findings.json").read_text())
    diff = next(f["fix"]["diff"] for f in data["findings"] if f["rule"] == "NPA302")
    subprocess.run(["git", "apply", "-"], input=diff.encode(), cwd=root, check=True)
    code, out, _ = run(["apply", report, "--fix", ids["NPA302"]], capsys)
    assert code == 0 and "already applied" in out
    assert (root / "utils" / "log.py").read_text() == LOSS_LOG_FIXED


def test_refuses_file_changed_since_report(project, capsys):
    root, report, ids = project
    edited = ORIGINAL.replace("lr=1e-3", "lr=2e-3")
    (root / "train.py").write_text(edited)
    code, out, err = run(["apply", report], capsys)
    assert code == 2
    assert f"{ids['NPA501']} train.py: refused: train.py changed since the report" in err
    assert "error: 2 fix(es) refused" in err
    assert (root / "train.py").read_text() == edited          # left alone
    assert (root / "utils" / "log.py").read_text() == LOSS_LOG_FIXED   # the unaffected file is fixed


def test_refuses_paths_outside_the_project_root(tmp_path, capsys):
    root = tmp_path / "proj"
    root.mkdir()
    outside = tmp_path / "evil.py"
    outside.write_text(LOSS_LOG)
    (root / "link.py").symlink_to(outside)
    findings = [_code_fix("NPA302", "../evil.py", LOSS_LOG, LOSS_LOG_FIXED, 5, "log", "sync"),
                _code_fix("NPA302", "link.py", LOSS_LOG, LOSS_LOG_FIXED, 5, "log", "sync"),
                _code_fix("NPA302", str(outside), LOSS_LOG, LOSS_LOG_FIXED, 5, "log", "sync")]
    _write_report(tmp_path / "out", root, findings)
    code, out, err = run(["apply", tmp_path / "out"], capsys)
    assert code == 2
    assert "../evil.py: refused: ../evil.py: resolves to" in err and "outside the project root" in err
    assert "link.py: refused: link.py: resolves to" in err
    assert "absolute path" in err
    assert outside.read_text() == LOSS_LOG
    assert (root / "link.py").is_symlink()


def test_revert_restores_byte_identical_originals(project, capsys):
    root, report, ids = project
    crlf = LOSS_LOG.replace("\n", "\r\n").encode()
    (root / "utils" / "log.py").write_bytes(crlf)
    data = json.loads((report / "findings.json").read_text())
    for f in data["findings"]:           # the report was made from the CRLF file
        if f["rule"] == "NPA302":
            new = LOSS_LOG_FIXED.replace("\n", "\r\n")
            f["fix"].update(diff=patching.unified_diff("utils/log.py", crlf.decode(), new),
                            file_sha256=safety.sha256_bytes(crlf), patched_sha256=safety.sha256_text(new))
    (report / "findings.json").write_text(json.dumps(data))
    originals = {p: p.read_bytes() for p in root.rglob("*.py")}
    assert run(["apply", report], capsys)[0] == 0
    assert (root / "utils" / "log.py").read_bytes() == LOSS_LOG_FIXED.replace("\n", "\r\n").encode()
    code, out, _ = run(["apply", report, "--revert"], capsys)
    assert code == 0 and "3 reverted" in out
    assert {p: p.read_bytes() for p in originals} == originals
    assert stat.S_IMODE((root / "train.py").stat().st_mode) == 0o754
    assert json.loads((report / "applied" / "journal.json").read_text())["files"] == {}
    code, _, err = run(["apply", report, "--revert"], capsys)
    assert code == 2 and "nothing to revert" in err


def test_revert_one_fix_keeps_the_other(project, capsys):
    root, report, ids = project
    assert run(["apply", report], capsys)[0] == 0
    code, out, _ = run(["apply", report, "--revert", "--fix", ids["NPA501"]], capsys)
    assert code == 0 and "1 other fix(es) kept" in out
    assert (root / "train.py").read_text() == ADAMW_FIXED
    assert (root / "utils" / "log.py").read_text() == LOSS_LOG_FIXED
    assert run(["apply", report], capsys)[0] == 0          # and it can be applied again
    assert (root / "train.py").read_text() == BOTH_FIXED


def test_revert_refuses_a_file_edited_after_apply(project, capsys):
    root, report, ids = project
    assert run(["apply", report], capsys)[0] == 0
    edited = BOTH_FIXED + "# my own change\n"
    (root / "train.py").write_text(edited)
    code, out, err = run(["apply", report, "--revert"], capsys)
    assert code == 2
    assert "train.py was edited after apply" in err and "originals" in err
    assert (root / "train.py").read_text() == edited
    assert (root / "utils" / "log.py").read_text() == LOSS_LOG      # the other file was reverted
    originals = list((report / "applied" / "originals").iterdir())
    assert ORIGINAL.encode() in [p.read_bytes() for p in originals]


def test_failure_midway_restores_what_was_written(project, capsys, monkeypatch):
    root, report, ids = project
    real = safety.atomic_write
    calls = []

    def flaky(path, data):
        calls.append(path)
        if str(path).endswith("log.py"):
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(engine, "atomic_write", flaky)
    code, _, err = run(["apply", report], capsys)
    assert code == 2 and "No space left on device" in err and "nothing changed" in err
    assert any(str(p).endswith("train.py") for p in calls)      # train.py had been written, then restored
    assert (root / "train.py").read_text() == ORIGINAL
    assert (root / "utils" / "log.py").read_text() == LOSS_LOG
    assert not (report / "applied" / "journal.json").exists()


@pytest.mark.parametrize("case", ["missing dir", "no findings", "corrupt", "not findings", "unknown id",
                                  "advice-only"])
def test_bad_input_is_one_line_error(project, capsys, case, tmp_path):
    root, report, ids = project
    args = ["apply", report]
    if case == "missing dir":
        args = ["apply", tmp_path / "nope"]
    elif case == "no findings":
        (report / "findings.json").unlink()
    elif case == "corrupt":
        (report / "findings.json").write_text('{"findings": [{"rule": "NPA5')
    elif case == "not findings":
        (report / "findings.json").write_text("[1, 2]")
    elif case == "unknown id":
        args += ["--fix", "NPA999-deadbeef"]
    elif case == "advice-only":
        args += ["--fix", ids["NPA301"]]
    before = (root / "train.py").read_bytes()
    code, out, err = run(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("npu-advise: error: ")
    expected = {"missing dir": "no such report folder", "no findings": "no findings.json",
                "corrupt": "unreadable findings.json", "not findings": "not a findings.json",
                "unknown id": "unknown fix id NPA999-deadbeef", "advice-only": "advice-only"}[case]
    assert expected in err
    if case == "unknown id":
        assert ids["NPA501"] in err          # lists what exists
    if case == "advice-only":
        assert "log the loss every N steps" in err
    assert (root / "train.py").read_bytes() == before


# --- the patcher against git apply, the reference implementation -------------------------------------

def _git_apply(tmp_path, text: bytes, diff: str):
    work = tmp_path / "git"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    (work / "m.py").write_bytes(text)
    check = subprocess.run(["git", "apply", "--check", "-"], input=diff.encode(), cwd=work, capture_output=True)
    if check.returncode != 0:
        return None
    subprocess.run(["git", "apply", "-"], input=diff.encode(), cwd=work, check=True, capture_output=True)
    return (work / "m.py").read_bytes()


def _ours(text: bytes, diff: str):
    try:
        return patching.apply_diff(text.decode(), diff).encode()
    except patching.PatchError:
        return None


DIFF_CASES = [
    (ORIGINAL, MASK_FIXED),
    (ORIGINAL, BOTH_FIXED),
    ("a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n"),                 # CRLF endings
    ("x = 1\ny = 2", "x = 1\ny = 3\n"),                        # no newline at end of file
    ("".join(f"l{i}\n" for i in range(40)), "".join(f"l{i}\n" for i in range(40) if i not in (3, 30)) + "end\n"),
    ("form\x0cfeed\nz\n", "form\x0cfeed\nzz\n"),               # a \x0c inside a line is not a line break
    ("".join(f"l{i}\n" for i in range(40)), "".join(f"l{i}\n" if i != 20 else "twenty\n" for i in range(40))),
]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("k", range(len(DIFF_CASES)))
def test_patcher_agrees_with_git_apply(tmp_path, k):
    old, new = DIFF_CASES[k]
    diff = patching.unified_diff("m.py", old, new)
    assert _git_apply(tmp_path, old.encode(), diff) == new.encode()
    assert _ours(old.encode(), diff) == new.encode()
    # shifted by unrelated lines above: both apply at the offset, or both refuse (a hunk at line 1 must
    # match at the file's start, one without trailing context at its end)
    shifted = ("# header\n" * 5 + old).encode()
    assert _ours(shifted, diff) == _git_apply(tmp_path, shifted, diff)
    if k == len(DIFF_CASES) - 1:          # a mid-file hunk does move with the offset
        assert _ours(shifted, diff) == ("# header\n" * 5 + new).encode()
    # a context line changed: both refuse
    lines = old.split("\n")
    broken_at = next(i for i, line in enumerate(lines) if line and new.find(line) >= 0)
    lines[broken_at] = lines[broken_at] + "  # edited"
    broken = "\n".join(lines).encode()
    assert _git_apply(tmp_path, broken, diff) == _ours(broken, diff)


def test_malformed_diffs_are_rejected():
    for bad in ["", "--- a/m.py\n", "--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n-a\n",
                "--- a/m.py\n+++ b/m.py\n@@ bogus @@\n", "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n?a\n"]:
        with pytest.raises(patching.PatchError):
            patching.apply_diff("a\nb\n", bad)
    with pytest.raises(patching.PatchError, match="creates or deletes"):
        patching.file_patch_for("--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+x\n", "new.py")
    with pytest.raises(patching.PatchError, match="but the fix names"):
        patching.file_patch_for(patching.unified_diff("a.py", "x\n", "y\n"), "b.py")


def test_recommender_codemod_fixes_compose_like_sequential_rewrites(tmp_path, capsys):
    """Real fixes from the recommender's libcst codemods (prefix-mask loop, fused AdamW) on one file:
    `apply` of both equals running the second codemod on the first one's output; the mask rewrite
    computes the same mask as the loop."""
    import torch

    from npu_advise.recommendations.codemods.diffs import to_fix
    from npu_advise.recommendations.codemods.loops import rewrite_prefix_mask
    from npu_advise.recommendations.codemods.optimizer import rewrite_optimizer

    loop_line = ORIGINAL.splitlines().index("    for i, ll in enumerate(valid_len):") + 1
    opt_line = next(k for k, line in enumerate(ORIGINAL.splitlines(), 1) if "AdamW(" in line)
    mask_rw = rewrite_prefix_mask(ORIGINAL, loop_line)
    opt_rw = rewrite_optimizer(ORIGINAL, line=opt_line)
    assert mask_rw is not None and opt_rw is not None and mask_rw.auto_applicable and opt_rw.auto_applicable
    findings = []
    for rule, cat, line, fn, rw in (("NPA501", "small_op_loop", loop_line, "build_mask", mask_rw),
                                    ("NPA601", "optimizer", opt_line, "train", opt_rw)):
        f = _finding(rule, cat, "train.py", line, fn, None)
        f.fix = to_fix("train.py", ORIGINAL, rw, f.id, rule)
        findings.append(f)
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text(ORIGINAL)
    _write_report(tmp_path / "out", root, findings)
    code, out, err = run(["apply", tmp_path / "out"], capsys)
    assert code == 0, err
    assert (root / "train.py").read_text() == rewrite_optimizer(mask_rw.new_source).new_source
    # the rewritten build_mask is numerically the loop's
    ns_old, ns_new = {}, {}
    exec(compile(ORIGINAL.replace("import torch_npu\n", ""), "old", "exec"), ns_old)
    exec(compile(mask_rw.new_source, "new", "exec"), ns_new)
    valid = torch.tensor([3, 10, 0, 7, 1])
    assert torch.equal(ns_old["build_mask"](valid, 10), ns_new["build_mask"](valid, 10))
    assert run(["apply", tmp_path / "out", "--revert"], capsys)[0] == 0
    assert (root / "train.py").read_text() == ORIGINAL


def test_fixes_sharing_a_finding_id_stay_addressable(tmp_path, capsys):
    """Two findings of one rule at one line share an id; their fixes get `#2` and remain separate."""
    root = tmp_path / "proj"
    root.mkdir()
    old = "import torch\n\n\ndef f(x):\n    return x.sum().item(), x.max().item()\n" + "\n" * 6 + "def g(x):\n    return x.min().item()\n"
    first = old.replace("x.sum().item(), x.max().item()", "x.sum(), x.max()")
    second = old.replace("x.min().item()", "x.min()")
    a = _code_fix("NPA302", "m.py", old, first, 5, "f", "sync")
    b = _code_fix("NPA302", "m.py", old, second, 5, "f", "sync")
    assert a.id == b.id
    (root / "m.py").write_text(old)
    _write_report(tmp_path / "out", root, [a, b])
    code, out, err = run(["apply", tmp_path / "out", "--fix", f"{a.id}#2"], capsys)
    assert code == 0, err
    assert (root / "m.py").read_text() == second
    code, out, err = run(["apply", tmp_path / "out"], capsys)
    assert code == 0 and f"{a.id} m.py: applied" in out and f"{a.id}#2 m.py: already applied" in out
    assert (root / "m.py").read_text() == old.replace("x.sum().item(), x.max().item()", "x.sum(), x.max()") \
        .replace("x.min().item()", "x.min()")


def test_fixes_inserting_imports_at_one_point_combine(tmp_path, capsys):
    """The bundled example's NPU fixes each add their import after the last import: such insertions
    combine in report order, an import two fixes add appears once, and a real overlap still conflicts."""
    old = "import torch\nimport torch.nn as nn\n\nX = 1\n\n\ndef f(a, b):\n    a += b\n    return torch.relu(a)\n"
    fixes = [
        _code_fix("NPA803", "m.py", old, old.replace("import torch.nn as nn\n", "import torch.nn as nn\nimport mx_driving\n")
                  .replace("    a += b\n    return torch.relu(a)\n", "    return mx_driving.npu_add_relu(a, b)\n"), 8, "f", "fused_op"),
        _code_fix("NPA902", "m.py", old, old.replace("import torch.nn as nn\n", "import torch.nn as nn\nimport torch_npu\n"
                                                     "from torch_npu.contrib import transfer_to_npu\n"), 1, "<module>", "migration"),
        _code_fix("NPA801", "m.py", old, old.replace("import torch.nn as nn\n", "import torch.nn as nn\nimport mx_driving\n")
                  .replace("X = 1", "X = 2"), 4, "<module>", "fused_op"),
        _code_fix("NPA999", "m.py", old, old.replace("    return torch.relu(a)\n", "    return torch.nn.functional.relu(a)\n"),
                  9, "f", "fused_op"),
    ]
    root = tmp_path / "proj"
    root.mkdir()
    (root / "m.py").write_text(old)
    _write_report(tmp_path / "out", root, fixes)
    code, out, err = run(["apply", tmp_path / "out"], capsys)
    assert code == 2 and "3 applied, 1 refused" in out
    assert f"{fixes[3].id} m.py: refused: m.py: two changes touch line 9 ({fixes[0].id} and {fixes[3].id})" in err
    assert (root / "m.py").read_text() == (
        "import torch\nimport torch.nn as nn\nimport mx_driving\nimport torch_npu\n"
        "from torch_npu.contrib import transfer_to_npu\n\nX = 2\n\n\ndef f(a, b):\n"
        "    return mx_driving.npu_add_relu(a, b)\n")


def test_revert_uses_the_root_apply_wrote_to(project, capsys, tmp_path):
    root, report, ids = project
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    assert run(["apply", report, "--project-root", moved], capsys)[0] == 0
    assert (moved / "train.py").read_text() == BOTH_FIXED
    code, out, _ = run(["apply", report, "--revert"], capsys)
    assert code == 0 and "3 reverted" in out
    assert (moved / "train.py").read_text() == ORIGINAL


def test_file_content_does_not_depend_on_the_order_fixes_were_applied(tmp_path, capsys):
    old = "import torch\n\n\ndef f(x):\n    return x\n"
    a = _code_fix("NPA801", "m.py", old, old.replace("import torch\n", "import torch\nimport mx_driving\n"), 5, "f", "fused_op")
    b = _code_fix("NPA902", "m.py", old, old.replace("import torch\n", "import torch\nimport torch_npu\n"), 1, "<module>", "migration")
    contents = []
    for order in ([b.id, a.id], [a.id, b.id]):
        root = tmp_path / f"proj{len(contents)}"
        root.mkdir()
        (root / "m.py").write_text(old)
        _write_report(tmp_path / f"out{len(contents)}", root, [a, b])
        for fid in order:
            assert run(["apply", tmp_path / f"out{len(contents)}", "--fix", fid], capsys)[0] == 0
        contents.append((root / "m.py").read_text())
    assert contents[0] == contents[1] == "import torch\nimport mx_driving\nimport torch_npu\n\n\ndef f(x):\n    return x\n"


def test_fixes_needing_missing_npu_packages_are_skipped_unless_asked(tmp_path, capsys):
    """A fix whose new code imports torch_npu would leave the script unable to run on this machine
    (no torch_npu here): `apply` skips it, says why, and applies it only with --include-npu-fixes."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text(ORIGINAL)
    npu_fix = _code_fix("NPA601", "train.py", ORIGINAL, ADAMW_FIXED, 25, "train", "optimizer")
    npu_fix.details["fix_requires"] = ["torch_npu"]
    mask_fix = _code_fix("NPA501", "train.py", ORIGINAL, MASK_FIXED, 9, "build_mask", "small_op_loop")
    report = tmp_path / "out"
    _write_report(report, root, [mask_fix, npu_fix])

    code, out, err = run(["apply", report], capsys)
    assert code == 0, err
    assert (root / "train.py").read_text() == MASK_FIXED
    assert f"{npu_fix.id} train.py: skipped: needs torch_npu, not importable here" in out
    assert "1 applied, 1 skipped" in out or "1 skipped, 1 applied" in out

    code, out, err = run(["apply", report, "--include-npu-fixes"], capsys)
    assert code == 0, err
    assert (root / "train.py").read_text() == BOTH_FIXED


def test_unverified_and_rejected_fixes(tmp_path, capsys):
    """apply takes verified fixes only: an unverified one is skipped (applied with --include-unverified,
    also by --fix), a rejected one is never applied."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text(ORIGINAL)
    mask = _code_fix("NPA501", "train.py", ORIGINAL, MASK_FIXED, 9, "build_mask", "small_op_loop")
    mask.fix.verification = {"status": "not_verifiable", "summary": "not verifiable: build_mask was not called"}
    rejected = _code_fix("NPA302", "train.py", ORIGINAL, ORIGINAL.replace("torch.zeros(", "torch.ones("), 8,
                         "build_mask", "sync")
    rejected.fix.verification = {"status": "rejected", "summary": "rejected: call 1: output[0] differs by 1"}
    rejected.fix.auto_applicable = False            # as the verification stage leaves a rejected fix
    report = tmp_path / "out"
    _write_report(report, root, [mask, rejected])
    code, out, err = run(["apply", report], capsys)
    assert code == 0, err
    assert f"{mask.id} train.py: skipped: not verifiable: build_mask was not called (--include-unverified" in out
    assert rejected.id not in out and (root / "train.py").read_text() == ORIGINAL
    code, out, err = run(["apply", report, "--fix", mask.id], capsys)
    assert code == 2 and "--include-unverified applies it anyway" in err
    code, out, err = run(["apply", report, "--fix", rejected.id, "--include-unverified"], capsys)
    assert code == 2 and "rejected: call 1: output[0] differs by 1" in err
    code, out, err = run(["apply", report, "--include-unverified"], capsys)
    assert code == 0 and f"{mask.id} train.py: applied" in out
    assert (root / "train.py").read_text() == MASK_FIXED
