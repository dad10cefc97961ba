"""mx_driving fused ops found in the project's source (NPA8xx): matchers.py finds the code, codemods/fused_ops.py
rewrites it where the call can be mapped."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from npu_advise.findings import Finding, Fix, Location, severity_for_share

from ..catalog import load
from ..registry import source_scanner
from ..rule_docs import FUSED_OP_RULES


@source_scanner("fused_ops", order=10)
def fused_op_findings(src, files: list) -> list:
    out = []
    for path in files:
        text = src.text(path)
        if text is None:
            continue
        from .. import matchers

        for match in matchers.scan(text):
            out.append(_fused_finding(match, path, text, src))
    return out


def _fused_finding(match, path: Path, text: str, src) -> Finding:
    from ..codemods import fused_ops

    index = src.index
    rule = FUSED_OP_RULES[match.kind]
    rel = src.rel(path)
    cat = load()
    entry_ = cat.ref(match.catalog_ref)
    lines = {match.line}
    loc_ids = index.loc_ids(path, lines)
    # The replaced function's own body, when it is defined in the project (the pytorch MSDA reference).
    callee_ids = index.function_loc_ids(path, "multi_scale_deformable_attn_pytorch") if match.kind == "msda" else []
    all_ids = sorted(set(loc_ids.tolist()) | set(getattr(callee_ids, "tolist", lambda: callee_ids)()))
    evidence, per_step = index.host_evidence(all_ids, f"{rel}:{match.line}" + (" and the replaced function" if len(callee_ids) else ""))
    share = index.step_share(per_step)
    severity = severity_for_share(share) if share is not None else ("low" if index.files() else "info")
    finding = Finding(
        rule=rule.code, category="fused_op",
        title=f"{rule.name}: `{match.text}` can use {entry_['import']}.{entry_['name']}",
        severity=severity, evidence=evidence,
        locations=[Location(rel, match.line, match.function)],
        estimated_saving_us=None,
        details={"kind": match.kind, "catalog_ref": match.catalog_ref, "matched": match.text,
                 "saving": ("not estimated: the fused kernel's time is not in this trace; the host time above is "
                            "what the replaced code costs now (an upper bound of the saving)") if evidence else
                           "no ops recorded at this line in the profiled steps"})
    if share is not None:
        finding.details["share_of_step"] = round(share, 4)
    rewrite = None
    if match.kind == "msda":
        rewrite = fused_ops.rewrite_fused_call(text, match.line, {"multi_scale_deformable_attn"},
                                               _msda_shape_checks(index, all_ids))
    elif match.kind == "bev_pool_v2":
        rewrite = fused_ops.rewrite_fused_call(text, match.line, {"bev_pool_v3"})
    elif match.kind == "add_relu":
        rewrite = fused_ops.rewrite_add_relu(text, match.line, _add_shapes_equal(index, loc_ids))
    if rewrite is not None:
        src.attach(finding, src.candidate(path, text, rewrite, match.catalog_ref))
    else:
        constraints = list(entry_.get("constraints", []))
        finding.fix = Fix(description=f"{rule.fix}", auto_applicable=False, fix_id=finding.id,
                          constraints=constraints, catalog_ref=match.catalog_ref, file=rel)
        finding.details["fix_requires"] = [entry_["import"]]
    return finding


def _msda_shape_checks(index, loc_ids) -> dict:
    """Check MSDA's head/dim/point limits against recorded shapes: sampling_locations is the 6-D input
    (bs, queries, heads, levels, points, 2); value is the 4-D input (bs, keys, heads, dims)."""
    limits = load().fused_ops["multi_scale_deformable_attn"].limits
    shapes = [s for _, dims in index.shapes(loc_ids) for s in dims]
    sampling = next((s for s in shapes if len(s) == 6 and s[-1] == 2), None)
    if sampling is None:
        return {}
    heads, levels, points = sampling[2], sampling[3], sampling[4]
    value = next((s for s in shapes if len(s) == 4 and s[2] == heads), None)
    verified, violations, covered = [], [], ["num_heads <= 8", "num_levels * num_points <= 64"]
    how = f"recorded shapes: sampling_locations {sampling}" + (f", value {value}" if value else "")
    (verified if heads <= limits["max_heads"] else violations).append(f"num_heads = {heads} (limit 8; {how})")
    lp = levels * points
    (verified if lp <= limits["max_levels_times_points"] else violations).append(
        f"num_levels * num_points = {lp} (limit 64; {how})")
    complete = False
    if value is not None:
        dims = value[3]
        ok = dims <= limits["max_dims"] and dims % limits["dims_multiple_of"] == 0
        (verified if ok else violations).append(f"embed dims per head = {dims} (<= 256 and % 8 == 0; {how})")
        covered.append("embed dims per head <= 256 and a multiple of 8")
        complete = True
    return {"verified": verified, "violations": violations, "covered": covered, "complete": complete}


def _add_shapes_equal(index, loc_ids) -> Optional[str]:
    adds = [(n, d) for n, d in index.shapes(loc_ids) if n in ("aten::add_", "aten::add") and len(d) >= 2]
    if not adds:
        return None
    if all(d[0] == d[1] and d[0] for _, d in adds):
        return f"recorded shapes of both operands are equal ({', '.join(str(d[0]) for _, d in adds[:3])})"
    return None
