"""Replacements of ops that have no NPU kernel and fall back to the CPU (NPA401)."""
from __future__ import annotations

from npu_advise.findings import Fix

from ..catalog import load
from ..registry import fix_generator


@fix_generator("cpu_fallbacks", rules=("NPA40",))
def replace_fallback(finding, src):
    d = finding.details
    fb = load().fallback_for(str(d.get("op") or d.get("public_api") or ""))
    path, text, loc = src.located(finding)
    if fb is None:
        return None
    if text is not None:
        from ..codemods import fallbacks

        make = fallbacks.REWRITES.get(fb.rewrite)
        rewrite = make(text, int(d.get("line") or loc.line)) if make is not None else None
        if rewrite is not None:
            rewrite.constraints += [c for c in fb.constraints if c not in rewrite.constraints]
            return src.candidate(path, text, rewrite, f"cpu_fallbacks.{fb.op}")
    # advice only: no source to rewrite, or no codemod for this op
    return Fix(description=f"Replace {' / '.join(fb.public_api)} with {fb.replacement}.",
               auto_applicable=False, fix_id=finding.id, constraints=list(fb.constraints),
               catalog_ref=f"cpu_fallbacks.{fb.op}", file=src.rel(path) if path is not None else loc.file)
