"""The recommender: turns findings into changes a user can accept, and finds fused-op and migration
opportunities in the source the profile points at.

`recommend(trace, ctx)` runs after every analyzer. It
* attaches a `Fix` to existing findings (mutating `finding.fix`): vectorized loop rewrites (NPA501),
  CPU-fallback replacements (NPA401), fused optimizers (NPA601);
* returns new findings found by scanning the user's source: mx_driving fused ops (NPA8xx, matchers.py)
  and migration steps at the entry point (NPA9xx, entry.py).

Every code change is a libcst transform (recommendations/codemods) shown as a unified diff against the
file as it is on disk, with the SHA-256 of the content before and after (so `apply` refuses a changed
file and recognizes an applied fix). A fix is auto-applicable only when its preconditions were verified
from the source and the recorded shapes; `Finding.details["fix_requires"]` lists the packages the new
code imports (torch_npu, mx_driving), which exist only on an NPU machine.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from npu_advise.analyzers.source import python_files
from npu_advise.findings import Evidence, Finding, Fix, Location, severity_for_share

# No libcst here: the matchers and codemods (recommendations/codemods, matchers.py) are imported where a
# source text is about to be parsed, so a trace without source locations is analyzed without the parser
# (~0.4 s of imports). entry.py and rule_docs.py document the NPA8xx/NPA9xx rules without it.
from . import entry
from .catalog import load
from .codemods.diffs import to_fix
from .codemods.scope import analysis_scope
from .evidence import SourceIndex
from .rule_docs import FUSED_OP_RULES

# At most this many .py files of the project are scanned (folders in analyzers.source.SKIP_DIRS are skipped).
MAX_SCANNED_FILES = 2000
MAX_FILE_BYTES = 2_000_000
CONFIG_DIR_NAMES = ("configs", "config", "projects")
SYNC_RULES = ("NPA301", "NPA302")
# Loop rewrites that remove per-element device->host reads (the affine interpolation loop has none).
SYNC_LOOP_IDIOMS = ("prefix_mask", "item_loop")


class _Sources:
    """Source files of the project: text as on disk, path relative to the project root."""

    def __init__(self, root: Optional[Path]):
        self.root = root.resolve() if root is not None else None
        self._text = {}

    def text(self, path: Path) -> Optional[str]:
        path = Path(path).resolve()
        if path not in self._text:
            try:
                raw = path.read_bytes()
                self._text[path] = raw.decode("utf-8") if len(raw) <= MAX_FILE_BYTES else None
            except (OSError, UnicodeDecodeError):
                self._text[path] = None
        return self._text[path]

    def rel(self, path: Path) -> str:
        path = Path(path).resolve()
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return path.as_posix()

    def resolve(self, file: str) -> Optional[Path]:
        for c in ([self.root / file] if self.root is not None else []) + [Path(file)]:
            if c.is_file():
                return c.resolve()
        return None

    def project_files(self) -> list:
        if self.root is None:
            return []
        return python_files(self.root, MAX_SCANNED_FILES)


def _project_root(trace, ctx) -> Optional[Path]:
    if ctx.project_root is not None:
        return Path(ctx.project_root)
    files = [Path(f) for f in (trace.locations["file"].tolist() if len(trace.locations) else [])
             if f and Path(f).is_file()]
    if not files:
        return None
    return Path(os.path.commonpath([str(f.resolve().parent) for f in files]))


def recommend(trace, ctx) -> list:
    # Every file is parsed and its metadata resolved at most once per call, whatever number of matchers and
    # codemods look at it.
    with analysis_scope():
        return _recommend(trace, ctx)


def _recommend(trace, ctx) -> list:
    root = _project_root(trace, ctx)
    sources = _Sources(root)
    index = SourceIndex(trace, root)
    for finding in ctx.findings:
        try:
            _attach_fix(finding, sources, index)
        except Exception as e:  # one unparsable file must not lose the whole report
            finding.details.setdefault("fix_error", f"{type(e).__name__}: {e}")
    scanned = index.files() or [p for p in sources.project_files()]
    new = _fused_op_findings(scanned, sources, index)
    new += _migration_findings(trace, scanned, sources, index, root)
    for finding in list(ctx.findings) + new:
        _state_requirements(finding)
    return new


def _state_requirements(finding: Finding) -> None:
    """Say in the fix's constraints (which the report shows) which NPU-only packages its new code imports."""
    needs = [p for p in finding.details.get("fix_requires") or [] if p]
    fix = finding.fix
    if not needs or fix is None:
        return
    missing = [p for p in needs if not any(f"needs {p} " in c or c.startswith(f"requires {p}") for c in fix.constraints)]
    if missing:
        fix.constraints = list(fix.constraints) + [
            f"requires {', '.join(missing)}: the new code imports {'them' if len(missing) > 1 else 'it'}, and "
            f"{'they exist' if len(missing) > 1 else 'it exists'} only on an Ascend NPU machine"]


# ---------------------------------------------------------------------------------------------
# Fixes for the analyzers' findings
# ---------------------------------------------------------------------------------------------
def _attach_fix(finding: Finding, sources: _Sources, index: SourceIndex) -> None:
    if finding.fix is not None or not finding.locations:
        return
    if finding.rule.startswith("NPA5"):
        _fix_loop(finding, sources)
    elif finding.rule in SYNC_RULES:
        _fix_sync_in_loop(finding, sources)
    elif finding.rule.startswith("NPA40"):
        _fix_fallback(finding, sources)
    elif finding.rule.startswith("NPA6"):
        _fix_optimizer(finding, sources, index)


def _located(finding: Finding, sources: _Sources):
    loc = finding.locations[0]
    path = sources.resolve(loc.file)
    if path is None:
        return None, None, loc
    return path, sources.text(path), loc


def _set_fix(finding: Finding, sources: _Sources, path: Path, text: str, rewrite, catalog_ref: str) -> None:
    finding.fix = to_fix(sources.rel(path), text, rewrite, finding.id, catalog_ref)
    if rewrite.requires:
        finding.details["fix_requires"] = list(rewrite.requires)


def _fix_loop(finding: Finding, sources: _Sources) -> None:
    path, text, loc = _located(finding, sources)
    if text is None:
        return
    from .codemods import loops

    d = finding.details
    line = int(d.get("loop_line") or loc.line)
    found = loops.rewrite_loop(text, line, d.get("idiom"))
    if found is None and line != loc.line:
        found = loops.rewrite_loop(text, loc.line, d.get("idiom"))
    if found is None:
        finding.fix = Fix(
            description=("Vectorize the loop: replace the per-element ops with whole-tensor ops (masks from "
                         "`torch.arange(L) < lengths[:, None]`, one `.tolist()` instead of `.item()` per element, "
                         "index tensors instead of per-index slicing). The loop does not have one of the shapes "
                         "npu-advise rewrites automatically."),
            auto_applicable=False, fix_id=finding.id, catalog_ref=None, file=sources.rel(path))
        return
    idiom, rewrite = found
    d["idiom_matched"] = idiom
    _set_fix(finding, sources, path, text, rewrite, f"loops.{idiom}")


def _fix_sync_in_loop(finding: Finding, sources: _Sources) -> None:
    """A sync (NPA301/302) at a line inside a loop that reads device values one element at a time (a
    prefix-mask or `.item()` loop) gets that loop's vectorized rewrite -- the same diff an NPA501 finding
    on the loop gets, so `apply` makes the change once."""
    path, text, loc = _located(finding, sources)
    if text is None or "for" not in text:
        return
    from .codemods import loops

    for idiom in SYNC_LOOP_IDIOMS:
        found = loops.rewrite_loop(text, loc.line, idiom, only=True)
        if found is not None:
            finding.details["idiom_matched"] = idiom
            _set_fix(finding, sources, path, text, found[1], f"loops.{idiom}")
            finding.fix.description = (f"This sync repeats for every element of the loop around line {loc.line}. "
                                       + found[1].description)
            return


def _fix_fallback(finding: Finding, sources: _Sources) -> None:
    d = finding.details
    cat = load()
    fb = cat.fallback_for(str(d.get("op") or d.get("public_api") or ""))
    path, text, loc = _located(finding, sources)
    if fb is None:
        return
    if text is not None:
        from .codemods import fallbacks

        make = fallbacks.REWRITES.get(fb.rewrite)
        rewrite = make(text, int(d.get("line") or loc.line)) if make is not None else None
        if rewrite is not None:
            rewrite.constraints += [c for c in fb.constraints if c not in rewrite.constraints]
            _set_fix(finding, sources, path, text, rewrite, f"cpu_fallbacks.{fb.op}")
            return
    # advice only: no source to rewrite, or no codemod for this op
    finding.fix = Fix(
        description=f"Replace {' / '.join(fb.public_api)} with {fb.replacement}.",
        auto_applicable=False, fix_id=finding.id, constraints=list(fb.constraints),
        catalog_ref=f"cpu_fallbacks.{fb.op}", file=sources.rel(path) if path is not None else loc.file)


def _fix_optimizer(finding: Finding, sources: _Sources, index: SourceIndex) -> None:
    d = finding.details
    name = d.get("optimizer")
    name = name if name in load().optimizers else None
    path, text, loc = _located(finding, sources)
    candidates = ([(path, text)] if text is not None else []) + [(p, sources.text(p)) for p in index.files() if p != path]
    # an optimizer's qualified name ends with its class name, which the file then spells somewhere (call or
    # import): files without any of them are not parsed
    names = tuple(o.torch.rsplit(".", 1)[-1] for o in load().optimizers.values())
    for p, t in candidates:
        if t is None or not any(n in t for n in names):
            continue
        from .codemods import optimizer

        try:
            calls = optimizer.find_optimizer_calls(t)
        except Exception:
            continue
        if calls:
            line = loc.line if p == path and any(l == loc.line for l, _ in calls) else None
            rewrite = optimizer.rewrite_optimizer(t, line=line, name=name)
            if rewrite is not None:
                _set_fix(finding, sources, p, t, rewrite, f"optimizers.{name or calls[0][1]}")
                return
    # mmcv / mmengine configs: optimizer = dict(type='AdamW', ...)
    for p in _config_files(sources):
        t = sources.text(p)
        if t is None or "optimizer" not in t:
            continue
        from .codemods import optimizer

        try:
            rewrite = optimizer.rewrite_config_optimizer(t)
        except Exception:
            continue
        if rewrite is not None:
            _set_fix(finding, sources, p, t, rewrite, f"optimizers.{name or 'AdamW'}")
            return


def _config_files(sources: _Sources) -> list:
    if sources.root is None:
        return []
    return [p for p in sources.project_files()
            if any(part in CONFIG_DIR_NAMES for part in p.relative_to(sources.root).parts[:-1])]


# ---------------------------------------------------------------------------------------------
# Fused ops found in the source (NPA8xx)
# ---------------------------------------------------------------------------------------------
def _fused_op_findings(files: list, sources: _Sources, index: SourceIndex) -> list:
    out = []
    for path in files:
        text = sources.text(path)
        if text is None:
            continue
        from . import matchers

        for match in matchers.scan(text):
            out.append(_fused_finding(match, path, text, sources, index))
    return out


def _fused_finding(match, path: Path, text: str, sources: _Sources, index: SourceIndex) -> Finding:
    from .codemods import fused_ops

    rule = FUSED_OP_RULES[match.kind]
    rel = sources.rel(path)
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
        finding.fix = to_fix(rel, text, rewrite, finding.id, match.catalog_ref)
        finding.details["fix_requires"] = list(rewrite.requires)
    else:
        constraints = list(entry_.get("constraints", []))
        finding.fix = Fix(description=f"{rule.fix}", auto_applicable=False, fix_id=finding.id,
                          constraints=constraints, catalog_ref=match.catalog_ref, file=rel)
        finding.details["fix_requires"] = [entry_["import"]]
    return finding


def _msda_shape_checks(index: SourceIndex, loc_ids) -> dict:
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


def _add_shapes_equal(index: SourceIndex, loc_ids) -> Optional[str]:
    adds = [(n, d) for n, d in index.shapes(loc_ids) if n in ("aten::add_", "aten::add") and len(d) >= 2]
    if not adds:
        return None
    if all(d[0] == d[1] and d[0] for _, d in adds):
        return f"recorded shapes of both operands are equal ({', '.join(str(d[0]) for _, d in adds[:3])})"
    return None


# ---------------------------------------------------------------------------------------------
# Migration (NPA9xx)
# ---------------------------------------------------------------------------------------------
def _entry_script(trace, files: list, sources: _Sources) -> Optional[Path]:
    script = (trace.metadata or {}).get("script")
    if script:
        p = sources.resolve(str(script))
        if p is not None:
            return p
    for p in files:
        t = sources.text(p)
        if t is None or "__main__" not in t:
            continue
        from .codemods import migration

        if migration.has_main_guard(t):
            return p
    return None


def _migration_findings(trace, files: list, sources: _Sources, index: SourceIndex, root) -> list:
    out = []
    script = _entry_script(trace, files, sources)
    if script is not None:
        text = sources.text(script)
        rel = sources.rel(script)
        # an unreadable entry point (not UTF-8, too large) has no text to rewrite or diff against
        for kind, rewrite in entry.entry_rewrites(text) if text is not None else []:
            rule = entry.RULES[kind]
            line = rewrite.line or _first_changed_line(text, rewrite.new_source)
            f = Finding(rule=rule.code, category="migration", title=f"{rule.name}: {rule.detects}",
                        severity="info", locations=[Location(rel, line, "<module>")],
                        details={"kind": kind, "entry_point": rel,
                                 "entry_point_how": "trace metadata 'script'" if (trace.metadata or {}).get("script")
                                 else "the traced user file with an `if __name__ == \"__main__\":` block"})
            f.fix = to_fix(rel, text, rewrite, f.id, f"migration.{kind}")
            if rewrite.requires:
                f.details["fix_requires"] = list(rewrite.requires)
            out.append(f)
    for path in files:
        text = sources.text(path)
        if text is None or "MMDataParallel" not in text and "MMDistributedDataParallel" not in text:
            continue
        from .codemods import migration

        rewrite = migration.rewrite_npu_ddp(text)
        if rewrite is not None:
            rule = entry.RULES["npu_ddp"]
            rel = sources.rel(path)
            f = Finding(rule=rule.code, category="migration", title=f"{rule.name}: {rule.detects}", severity="info",
                        locations=[Location(rel, _first_changed_line(text, rewrite.new_source), "<module>")],
                        details={"kind": "npu_ddp", "fix_requires": list(rewrite.requires)})
            f.fix = to_fix(rel, text, rewrite, f.id, "migration.npu_ddp")
            out.append(f)
    for loc, rank, shapes in entry.wide_matmuls(index.ops):
        d = trace.location(loc)
        if d is None:
            continue
        rule = entry.RULES["matmul_rank"]
        path = sources.resolve(d["file"])
        rel = sources.rel(path) if path is not None else d["file"]
        out.append(Finding(
            rule=rule.code, category="migration", title=f"{rule.name}: a {rank}-D matmul at {rel}:{d['line']}",
            severity="medium", locations=[Location(rel, d["line"], d["function"])],
            evidence=[Evidence("matmul input rank", rank, "dims", f"recorded input shapes {shapes}")],
            fix=Fix(description=rule.fix, auto_applicable=False, fix_id=None,
                    constraints=list(load().migration["matmul_rank"]["constraints"]),
                    catalog_ref="migration.matmul_rank", file=rel),
            details={"kind": "matmul_rank", "shapes": shapes}))
        out[-1].fix.fix_id = out[-1].id
    for script_path, line, missing in entry.launch_scripts_missing_env(root):
        rule = entry.RULES["launch_env"]
        rel = sources.rel(script_path)
        env = load().env_vars
        lines = [f"export {v}={env[v]['recommended']}" for v in missing]
        f = Finding(rule=rule.code, category="migration",
                    title=f"{rule.name}: {rel} launches training without {', '.join(missing)}",
                    severity="info", locations=[Location(rel, line, "<script>")],
                    details={"kind": "launch_env", "missing": missing, "suggested": lines})
        f.fix = Fix(description="Add before the launch command:\n" + "\n".join(lines), auto_applicable=False,
                    fix_id=f.id, constraints=[f"{v}: {env[v]['when']}" for v in missing],
                    catalog_ref="env_vars", file=rel)
        out.append(f)
    return out


def _first_changed_line(old: str, new: str) -> int:
    a, b = old.split("\n"), new.split("\n")
    for i, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return i
    return min(len(a), len(b)) + 1 if len(a) != len(b) else 1
