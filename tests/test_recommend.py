"""recommend() on the bundled example: fixes attached at the marked lines, fused-op and migration findings."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

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


def _sync(tag, function):
    line = marker_line(EXAMPLE, tag)
    return Finding("NPA302", "sync", f"sync at {line}", "low", details={"causes": [".item()"]},
                   locations=[Location("train.py", line, function)])


def test_sync_inside_a_mask_loop_gets_the_loop_fix(tmp_path):
    root, src, ctx, new = _run(tmp_path)
    mask_loop = ctx.findings[1]
    sync_in_loop, sync_outside = _sync("valid-len-mask", "lane_loss"), _sync("item-sync", "main")
    ctx2 = Context(project_root=root)
    ctx2.findings = [sync_in_loop, sync_outside]
    recommend(Trace(path=str(root), fmt="kineto", device_type="cpu"), ctx2)
    # the same change as the NPA501 finding on that loop (apply dedupes identical changes)
    assert sync_in_loop.fix is not None and sync_in_loop.fix.diff == mask_loop.fix.diff
    assert sync_in_loop.fix.catalog_ref == "loops.prefix_mask" and sync_in_loop.fix.fix_id == sync_in_loop.id
    assert "masked_fill_" in sync_in_loop.fix.diff and sync_in_loop.fix.auto_applicable
    # `loss.item()` once per step in the training loop is no per-element loop: no rewrite
    assert sync_outside.fix is None


def test_patcher_points_at_main_call_and_requirements_are_constraints(tmp_path):
    root, src, ctx, new = _run(tmp_path)
    patcher = next(f for f in new if f.rule == "NPA901")
    lines = src.split("\n")
    assert lines[patcher.locations[0].line - 1].strip() == "main()"
    assert lines[patcher.locations[0].line - 2].startswith("if __name__ ==")
    with_requires = [f for f in ctx.findings + new if f.details.get("fix_requires")]
    assert {f.rule for f in with_requires} >= {"NPA601", "NPA801", "NPA803", "NPA804", "NPA901", "NPA902"}
    for f in with_requires:
        for pkg in f.details["fix_requires"]:
            assert any(pkg in c and ("needs" in c or "requires" in c) for c in f.fix.constraints), (f.rule, f.fix.constraints)


# Run in a fresh interpreter: whether libcst was imported is only observable before anything else imports it.
_NO_SOURCE_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from npu_advise.cli import main
    from npu_advise.analyzers import Context
    from npu_advise.findings import Finding, Location
    from npu_advise.model import Trace
    from npu_advise.recommendations import recommend
    from npu_advise.rules import all_rules

    trace, out, example = sys.argv[1:4]
    def parser_loaded():
        return any(m == "libcst" or m.startswith("libcst.") for m in sys.modules)
    seen = {}
    main(["analyze", trace, "--out", out])
    seen["after_analyze"] = parser_loaded()
    seen["codes"] = sorted(c for c in all_rules() if c.startswith(("NPA8", "NPA9")))
    seen["after_rules"] = parser_loaded()
    # a CPU-fallback finding whose file is not on disk: advice from the catalog, no source to parse
    ctx = Context(project_root=None)
    ctx.findings = [Finding("NPA401", "cpu_fallback", "logdet", "medium", details={"op": "aten::_linalg_slogdet"},
                            locations=[Location("gone/model.py", 12, "f")])]
    recommend(Trace(path="x", fmt="kineto", device_type="cpu"), ctx)
    fix = ctx.findings[0].fix
    seen["advice"] = [fix.catalog_ref, fix.file, fix.auto_applicable, fix.diff]
    seen["after_advice"] = parser_loaded()
    # control: the same finding at a source line that exists is parsed
    ctx.findings = [Finding("NPA401", "cpu_fallback", "logdet", "medium", details={"op": "aten::_linalg_slogdet"},
                            locations=[Location(example, int(sys.argv[4]), "nll_with_covariances")])]
    recommend(Trace(path="x", fmt="kineto", device_type="cpu"), ctx)
    seen["control_diff"] = bool(ctx.findings[0].fix.diff)
    seen["after_source"] = parser_loaded()
    print(json.dumps(seen))
""")


def test_trace_without_source_locations_never_imports_libcst(tmp_path, shared_data):
    """The foreign trace carries no source locations and no project root is given: nothing is parsed, so
    the parser (libcst, ~0.4 s of imports) must not be loaded; rules and catalog advice are still there."""
    trace = shared_data / "kineto" / "hta_df_index_resolver_v100_rank1.json.gz"
    r = subprocess.run([sys.executable, "-c", _NO_SOURCE_SCRIPT, str(trace), str(tmp_path / "out"), str(EXAMPLE),
                        str(marker_line(EXAMPLE, "logdet"))], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert (tmp_path / "out" / "findings.json").is_file()
    assert seen["after_analyze"] is False and seen["after_rules"] is False and seen["after_advice"] is False
    assert seen["codes"] == [f"NPA8{i:02d}" for i in range(1, 22)] + [f"NPA90{i}" for i in range(1, 10)]
    assert seen["advice"] == ["cpu_fallbacks._linalg_slogdet", "gone/model.py", False, None]
    assert seen["control_diff"] is True and seen["after_source"] is True
