"""recommend() on the bundled example: fixes attached at the marked lines, fused-op and migration findings."""
from __future__ import annotations

import shutil
import subprocess

from conftest import EXAMPLE, marker_line
from npu_advise.analyzers import Context
from npu_advise.findings import Finding, Location
from npu_advise.model import Trace
from npu_advise.recommendations import recommend
from npu_advise.recommendations.codemods.diffs import sha256_text


def _run(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(EXAMPLE, root / "train.py")
    src = (root / "train.py").read_text()
    ctx = Context(project_root=root)
    # what the analyzers report for the example (rules NPA501 / NPA401 / NPA601) at the marked lines
    ctx.findings = [
        Finding("NPA501", "small_op_loop", "loop", "low",
                locations=[Location("train.py", marker_line(EXAMPLE, "interpolate-loop") - 2, "interpolate")]),
        Finding("NPA501", "small_op_loop", "mask loop", "low",
                locations=[Location("train.py", marker_line(EXAMPLE, "valid-len-mask"), "lane_loss")]),
        Finding("NPA401", "cpu_fallback", "logdet", "medium", details={"op": "aten::_linalg_slogdet"},
                locations=[Location("train.py", marker_line(EXAMPLE, "logdet"), "nll_with_covariances")]),
        Finding("NPA601", "optimizer", "AdamW", "medium", details={"optimizer": "AdamW"},
                locations=[Location("train.py", marker_line(EXAMPLE, "adamw"), "main")]),
    ]
    new = recommend(Trace(path=str(root), fmt="kineto", device_type="cpu"), ctx)
    return root, src, ctx, new


def test_fixes_attached_at_marker_lines(tmp_path):
    root, src, ctx, new = _run(tmp_path)
    for f in ctx.findings:
        fix = f.fix
        assert fix is not None and fix.diff, f.title
        assert fix.fix_id == f.id and fix.file == "train.py" and fix.file_sha256 == sha256_text(src)
        assert fix.catalog_ref
        r = subprocess.run(["git", "apply", "--check", "-"], input=fix.diff, text=True, cwd=root,
                           capture_output=True)
        assert r.returncode == 0, r.stderr
    loop, mask, logdet, adamw = ctx.findings
    assert loop.fix.auto_applicable and "torch.arange(1, num_len" in loop.fix.diff
    assert mask.fix.auto_applicable and "masked_fill_" in mask.fix.diff
    assert logdet.fix.auto_applicable and "svdvals(covariance_matrices)" in logdet.fix.diff
    assert "NpuFusedAdamW" in adamw.fix.diff and adamw.details["fix_requires"] == ["torch_npu"]


def test_fused_and_migration_findings_from_source(tmp_path):
    root, src, ctx, new = _run(tmp_path)
    by_rule = {f.rule: f for f in new}
    assert by_rule["NPA801"].locations[0].line == marker_line(EXAMPLE, "msda")
    assert "mx_driving.multi_scale_deformable_attn(" in by_rule["NPA801"].fix.diff
    assert by_rule["NPA803"].locations[0].line == marker_line(EXAMPLE, "add-relu")
    assert "npu_add_relu(out, identity)" in by_rule["NPA803"].fix.diff
    # no recorded shapes in this trace: the fused rewrites stay advice
    assert not by_rule["NPA801"].fix.auto_applicable and not by_rule["NPA803"].fix.auto_applicable
    maxpool = by_rule["NPA804"]
    assert maxpool.locations[0].line == marker_line(EXAMPLE, "maxpool")
    assert maxpool.fix.diff is None and not maxpool.fix.auto_applicable
    assert any("forward only" in c for c in maxpool.fix.constraints)
    assert "default_patcher_builder.build()" in by_rule["NPA901"].fix.diff
    assert "transfer_to_npu" in by_rule["NPA902"].fix.diff
    assert all(f.category in ("fused_op", "migration") for f in new)
