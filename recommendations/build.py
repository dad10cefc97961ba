"""Findings from source matches, shared by `recommend` (with the trace's evidence) and `check` (static).

Each builder takes what a detector found (matchers.SourceMatch, dispatch.Dispatch / Extension) and the
file's text, and returns a Finding with its fix: a libcst rewrite as a diff where the catalog maps the
arguments, else advice with the catalog's constraints. libcst is imported only here, per match.
`attach(finding, rewrite, catalog_ref)` turns a rewrite into the finding's fix: `recommend` passes one
that registers a verification Candidate (sources.Sources.attach); `check` writes the diff directly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from npu_advise.findings import SEVERITIES, Evidence, Finding, Fix, Location

from .candidates import Candidate
from .catalog import load
from .rule_docs import FUSED_OP_RULES, SOURCE_RULES as DISPATCH_RULES


def diff_attacher(rel: str, text: str):
    """The `attach` of a static scan: the rewrite becomes the finding's Fix with its diff."""
    def attach(finding: Finding, rewrite, catalog_ref: str) -> None:
        finding.fix = Candidate.from_rewrite(rel, Path(rel), text, rewrite, catalog_ref).to_fix(finding.id)
    return attach


def _attach(finding: Finding, rel: str, text: str, rewrite, catalog_ref: str, advice: str, constraints,
            attach=None) -> Finding:
    if rewrite is not None:
        (attach or diff_attacher(rel, text))(finding, rewrite, catalog_ref)
        finding.details["fix_requires"] = list(rewrite.requires)
    else:
        finding.fix = Fix(description=advice, auto_applicable=False, fix_id=finding.id,
                          constraints=list(constraints), catalog_ref=catalog_ref, file=rel)
    return finding


def fused_rewrite(match, text: str, msda_checks: Optional[dict] = None, add_shapes_equal: Optional[str] = None):
    """The libcst rewrite of a fused-op match, or None (advice only)."""
    from .codemods import fused_ops

    if match.kind == "msda":
        return fused_ops.rewrite_fused_call(text, match.line, {"multi_scale_deformable_attn"}, msda_checks)
    if match.kind == "bev_pool_v2":
        return fused_ops.rewrite_fused_call(text, match.line, {"bev_pool_v3"})
    if match.kind == "add_relu":
        return fused_ops.rewrite_add_relu(text, match.line, add_shapes_equal)
    return None


def fused_finding(match, rel: str, text: str, severity: str, evidence=(), details=None, rewrite=None,
                  attach=None, checks: Optional[dict] = None, dispatch=None) -> Finding:
    """`checks`: the op's constraints checked against recorded shapes ({"verified", "violations", "covered"});
    a failed one is said in the title with the value seen. `dispatch`: the CUDA-only dispatch the match is in,
    whose NPA907 finding carries the diff (the NPU arm)."""
    rule = FUSED_OP_RULES[match.kind]
    entry = load().ref(match.catalog_ref)
    op = match.op or f"{entry['import']}.{entry['name']}"
    checks = checks or {}
    violations = list(checks.get("violations", []))
    title = f"{rule.name}: `{match.text}` can use {op}" + (
        f" -- but a constraint fails: {'; '.join(violations)}" if violations else "")
    finding = Finding(
        rule=rule.code, category="fused_op", title=title,
        severity=severity, evidence=list(evidence),
        locations=[Location(rel, match.line, match.function)]
                  + [Location(rel, l, match.function) for l in match.related if l != match.line],
        details={"kind": match.kind, "catalog_ref": match.catalog_ref, "matched": match.text, "col": match.col,
                 "replacement": op, **({"recognized_by": match.how} if match.how else {}), **(details or {})})
    if violations:
        finding.details["constraint_violations"] = violations
    if dispatch is not None:
        finding.details["dispatch_line"] = dispatch.line
        finding.title += (f" (the CUDA-only branch at line {dispatch.line}, NPA907, adds it as an NPU arm)" if dispatch.fused_key
                          else f" (inside the CUDA-only branch at line {dispatch.line}, NPA907)")
    constraints = violations + [f"verified: {v}" for v in checks.get("verified", [])] + [
        c for c in entry.get("constraints", []) if c not in checks.get("covered", ())]
    _attach(finding, rel, text, rewrite, match.catalog_ref, rule.fix, constraints, attach)
    if rewrite is None:
        finding.details["fix_requires"] = [entry["import"]]
    return finding


def dispatch_finding(d, rel: str, text: str, severity: Optional[str] = None, evidence=(), details=None,
                     shape_checks: Optional[dict] = None, with_fix: bool = True, attach=None) -> Finding:
    """NPA907 for a CUDA-only dispatch, with the NPU arm as a diff where the catalog maps the arm's call."""
    rule = DISPATCH_RULES["cuda_dispatch"]
    cat = load()
    op = cat.fused_ops.get(d.fused_key) if d.fused_key else None
    other = f"raises (`{d.other}`)" if d.other_raises else f"runs `{d.other}` (line {d.other_line}) instead"
    # without a mapped call, the op the extension is named for (catalog cuda_migration.extension_ops)
    named = ", ".join(d.replacements) if op is None else ""
    title = (f"{rule.name}: `if {d.test}` takes the CUDA extension `{d.cuda_call}` only on CUDA; on an NPU the "
             f"branch {other}" + (f"; {op.qualified} replaces it" if op else "")
             + (f"; {named} replaces the extension (by its name; map the arguments by hand)" if named else ""))
    finding = Finding(
        rule=rule.code, category="migration", title=title,
        severity=severity or ("high" if op is not None and not d.other_raises else "medium"),
        evidence=list(evidence), locations=[Location(rel, d.line, d.function)],
        details={"kind": "cuda_dispatch", "test": d.test, "cuda_call": d.cuda_call, "cuda_line": d.cuda_line,
                 "other_arm": d.other, "other_line": d.other_line, "other_raises": d.other_raises,
                 "fused_op": op.qualified if op else None, "col": d.col,
                 **({"extension_replaced_by": named} if named else {}), **(details or {})})
    rewrite = None
    if with_fix and op is not None and d.device_object and d.mapped_line:
        from .codemods import dispatch as dispatch_codemod

        rewrite = dispatch_codemod.add_npu_arm(text, d.line, d.mapped_line, op.key, d.device_object, shape_checks)
    advice = ("Add an NPU arm before the CUDA test that calls " + (op.qualified if op else named or "the NPU kernel of this op")
              + "." if op or named or not d.other_raises else rule.fix)
    constraints = list(op.constraints) if op else [
        f"{named} is named from the extension op `{d.cuda_call.split('(', 1)[0]}`; its arguments and layout are not "
        f"mapped: check them against its documentation"] if named else [
        "no mx_driving op is known for this extension: the NPU keeps the other arm (profile it to see what it costs)"]
    return _attach(finding, rel, text, rewrite, f"fused_ops.{op.key}" if op else "cuda_migration", advice, constraints,
                   attach)


def extension_finding(e, rel: str) -> Finding:
    rule = DISPATCH_RULES["cuda_extension"]
    ops = [o for o in e.ops if not o.startswith("_") or len(e.ops) == 1]
    repl = ", ".join(e.replacements)
    title = (f"{rule.name}: {e.what} loads compiled ops {', '.join(ops) or '(unnamed)'}"
             + (f"; on an NPU {repl} replaces {'it' if len(ops) < 2 else 'them'}" if repl else
                "; no mx_driving op is known for it")
             + ("" if e.used else " (the loaded module is not used in this file; the import still needs it)"))
    f = Finding(rule=rule.code, category="migration", title=title, severity="low",
                locations=[Location(rel, e.line, e.function)],
                details={"kind": "cuda_extension", "ops": e.ops, "replacements": e.replacements, "used": e.used,
                         "col": e.col})
    f.fix = Fix(description=(f"Use {repl}." if repl else rule.fix), auto_applicable=False, fix_id=f.id,
                catalog_ref="cuda_migration.extension_ops", file=rel)
    return f


def cuda_calls_finding(rel: str, calls: list) -> Finding:
    rule = DISPATCH_RULES["cuda_calls"]
    line, col, first = calls[0]
    n = len(calls)
    f = Finding(rule=rule.code, category="migration",
                title=(f"{rule.name}: {n} CUDA call{'s' if n > 1 else ''} in this file (first `{first}`) and no checked "
                       f"file imports torch_npu's transfer_to_npu"),
                severity="low", locations=[Location(rel, line, "")],
                details={"kind": "cuda_calls", "calls": [{"line": l, "col": c, "code": t} for l, c, t in calls],
                         "col": col})
    f.fix = Fix(description=rule.fix, auto_applicable=False, fix_id=f.id,
                constraints=list(load().migration["transfer_to_npu"]["constraints"]),
                catalog_ref="migration.transfer_to_npu", file=rel)
    return f


def loop_fused_severity(fused: list, findings: list, resolve) -> None:
    """A fused op found as a loop (a structural match at the loop's line) replaces the whole loop: when the
    small-op loop finding of that loop (NPA501) predicts a larger cost on the NPU (its dispatches, from a CPU
    trace) than the host time at the match, the fused-op finding takes its severity, citing it.
    `resolve(file)`: a finding location's file on disk."""
    loops = {}
    for f in findings:
        if f.rule == "NPA501" and f.locations and f.details.get("loop_line") is not None:
            loops[(resolve(f.locations[0].file), f.details["loop_line"])] = f
    for f in fused:
        if f.category != "fused_op" or "recognized_by" not in f.details or not f.locations:
            continue
        loop = loops.get((resolve(f.locations[0].file), f.locations[0].line))
        if loop is None or SEVERITIES.index(loop.severity) >= SEVERITIES.index(f.severity):
            continue
        saving = loop.estimated_saving_us
        f.evidence.append(Evidence(
            "the loop's estimated saving per step (NPA501)", saving if saving is not None else "n/a", "us",
            f"the small-op loop finding at {loop.locations[0].file}:{loop.locations[0].line}: "
            f"{loop.details.get('ops_per_step')} ops per step over {loop.details.get('iterations_per_step')} iterations"
            f"{' (predicted for the NPU: its dispatch cost)' if loop.predicted else ''}; the fused op replaces the "
            f"whole loop"))
        f.details["severity_from"] = f"{loop.rule} at {loop.locations[0].file}:{loop.locations[0].line} ({loop.severity})"
        f.severity = loop.severity
