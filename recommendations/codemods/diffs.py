"""Unified diffs and content hashes for code fixes.

Lines are split on "\\n" only (as git does), so "\\r\\n" endings and other exotic characters survive
byte for byte. Paths are written `a/<rel>` / `b/<rel>` relative to the project root, so `git apply`
run at the root accepts the diff.
"""
from __future__ import annotations

# One diff writer and one content hash for the whole tool: `apply` parses what is written here and
# checks files against these hashes.
from npu_advise.apply.patching import unified_diff
from npu_advise.apply.safety import sha256_text

__all__ = ["sha256_text", "to_fix", "unified_diff"]


def to_fix(rel: str, old: str, rewrite, fix_id: str, catalog_ref: str):
    """The `Fix` for a rewrite of the file `rel` (relative to the project root) whose content was `old`."""
    from npu_advise.findings import Fix

    rel = rel.replace("\\", "/")
    constraints = list(rewrite.constraints) + [f"verified: {v}" for v in rewrite.verified]
    return Fix(description=rewrite.description, auto_applicable=bool(rewrite.auto_applicable),
               diff=unified_diff(rel, old, rewrite.new_source), fix_id=fix_id, constraints=constraints,
               catalog_ref=catalog_ref, file=rel, file_sha256=sha256_text(old),
               patched_sha256=sha256_text(rewrite.new_source))
