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
    from ..candidates import Candidate

    return Candidate.from_rewrite(rel, rel, old, rewrite, catalog_ref).to_fix(fix_id)
