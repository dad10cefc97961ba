"""Unified diffs and content hashes for code fixes.

Lines are split on "\\n" only (as git does), so "\\r\\n" endings and other exotic characters survive
byte for byte. Paths are written `a/<rel>` / `b/<rel>` relative to the project root, so `git apply`
run at the root accepts the diff.
"""
from __future__ import annotations

import difflib
import hashlib

_NO_NEWLINE = "\\ No newline at end of file\n"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _lines(text: str) -> list:
    if not text:
        return []
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def unified_diff(rel: str, old: str, new: str, context: int = 3) -> str:
    """A git-apply-able unified diff turning `old` into `new` for the file `rel`; "" if equal."""
    if old == new:
        return ""
    rel = rel.replace("\\", "/")
    out = []
    for line in difflib.unified_diff(_lines(old), _lines(new), f"a/{rel}", f"b/{rel}", n=context):
        if line.startswith(("---", "+++")):
            out.append(line.rstrip("\n") + "\n")
        elif line.endswith("\n"):
            out.append(line)
        else:  # the last line of a file without a trailing newline
            out.append(line + "\n" + _NO_NEWLINE)
    return "".join(out)


def to_fix(rel: str, old: str, rewrite, fix_id: str, catalog_ref: str):
    """The `Fix` for a rewrite of the file `rel` (relative to the project root) whose content was `old`."""
    from npu_advise.findings import Fix

    constraints = list(rewrite.constraints)
    if rewrite.verified:
        constraints = constraints + [f"verified: {v}" for v in rewrite.verified]
    return Fix(description=rewrite.description, auto_applicable=bool(rewrite.auto_applicable),
               diff=unified_diff(rel, old, rewrite.new_source), fix_id=fix_id, constraints=constraints,
               catalog_ref=catalog_ref, file=rel.replace("\\", "/"), file_sha256=sha256_text(old),
               patched_sha256=sha256_text(rewrite.new_source))
