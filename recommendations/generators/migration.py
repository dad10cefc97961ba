"""Migration steps (NPA9xx): entry-point set-up, NPU DataParallel, >6-D matmuls, launch-script environment."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from npu_advise.findings import Evidence, Finding, Fix, Location

from .. import entry
from ..catalog import load
from ..registry import source_scanner


def _entry_script(trace, files: list, src) -> Optional[Path]:
    script = (trace.metadata or {}).get("script")
    if script:
        p = src.resolve(str(script))
        if p is not None:
            return p
    for p in files:
        t = src.text(p)
        if t is None or "__main__" not in t:
            continue
        from ..codemods import migration

        if migration.has_main_guard(t):
            return p
    return None


@source_scanner("migration", order=20)
def migration_findings(src, files: list) -> list:
    trace, index, root = src.trace, src.index, src.root
    out = []
    script = _entry_script(trace, files, src)
    if script is not None:
        text = src.text(script)
        rel = src.rel(script)
        # an unreadable entry point (not UTF-8, too large) has no text to rewrite or diff against
        for kind, rewrite in entry.entry_rewrites(text) if text is not None else []:
            rule = entry.RULES[kind]
            line = rewrite.line or _first_changed_line(text, rewrite.new_source)
            f = Finding(rule=rule.code, category="migration", title=f"{rule.name}: {rule.detects}",
                        severity="info", locations=[Location(rel, line, "<module>")],
                        details={"kind": kind, "entry_point": rel,
                                 "entry_point_how": "trace metadata 'script'" if (trace.metadata or {}).get("script")
                                 else "the traced user file with an `if __name__ == \"__main__\":` block"})
            src.attach(f, src.candidate(script, text, rewrite, f"migration.{kind}"))
            out.append(f)
    for path in files:
        text = src.text(path)
        if text is None or "MMDataParallel" not in text and "MMDistributedDataParallel" not in text:
            continue
        from ..codemods import migration

        rewrite = migration.rewrite_npu_ddp(text)
        if rewrite is not None:
            rule = entry.RULES["npu_ddp"]
            rel = src.rel(path)
            f = Finding(rule=rule.code, category="migration", title=f"{rule.name}: {rule.detects}", severity="info",
                        locations=[Location(rel, _first_changed_line(text, rewrite.new_source), "<module>")],
                        details={"kind": "npu_ddp"})
            src.attach(f, src.candidate(path, text, rewrite, "migration.npu_ddp"))
            out.append(f)
    for loc, rank, shapes in entry.wide_matmuls(index.ops):
        d = trace.location(loc)
        if d is None:
            continue
        rule = entry.RULES["matmul_rank"]
        path = src.resolve(d["file"])
        rel = src.rel(path) if path is not None else d["file"]
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
        rel = src.rel(script_path)
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
