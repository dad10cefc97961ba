"""Unified diffs in pure Python: parse them and apply their hunks to text by exact context matching.

Only what a code fix needs: one or more files changed in place (no creation, deletion or rename),
hunks applied in order with every context and removed line matching exactly (no fuzz), so a hunk never
lands on text it was not written for. Lines are split on "\\n" only, as git does, so a file's "\\r\\n"
endings, form feeds or other exotic line breaks survive byte for byte.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UserError

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_NO_NEWLINE = "\\ No newline at end of file"
# How far (in lines) from its stated position a hunk's context is searched for. Line numbers drift when
# an earlier fix on the same file added or removed lines; the context itself must still match exactly.
SEARCH_WINDOW_LINES = 2000


class PatchError(UserError):
    """A diff that is malformed or does not fit the file it is meant for."""


@dataclass
class Hunk:
    old_start: int            # 1-based first line of the old range (for an empty range: the line before it)
    old_len: int
    new_start: int
    new_len: int
    lines: list = field(default_factory=list)   # (tag, text with line ending), tag in " ", "-", "+"

    @property
    def old_index(self) -> int:
        """0-based index of the first old line (an empty old range inserts after line `old_start`)."""
        return self.old_start if self.old_len == 0 else self.old_start - 1

    @property
    def old_lines(self) -> list:
        return [t for tag, t in self.lines if tag != "+"]

    @property
    def new_lines(self) -> list:
        return [t for tag, t in self.lines if tag != "-"]

    def reversed(self) -> "Hunk":
        flip = {"+": "-", "-": "+", " ": " "}
        return Hunk(self.new_start, self.new_len, self.old_start, self.old_len,
                    [(flip[tag], t) for tag, t in self.lines])


@dataclass
class Edit:
    """One contiguous change in original-file coordinates: lines [start, end) become `new_lines`."""

    start: int
    end: int
    new_lines: list
    origin: str = ""          # which fix it comes from, for messages


@dataclass
class FilePatch:
    old_path: str             # without the "a/" prefix
    new_path: str
    hunks: list = field(default_factory=list)


def split_lines(text: str) -> list:
    """Lines with their "\\n" kept; only "\\n" ends a line (like git and patch)."""
    if not text:
        return []
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _strip_prefix(path: str) -> str:
    path = path.split("\t", 1)[0].strip()
    if path.startswith('"') and path.endswith('"'):
        raise PatchError(f"quoted path {path} in diff is not supported")
    if path == "/dev/null":
        return path
    if path.startswith(("a/", "b/")):
        return path[2:]
    return path


def parse_unified_diff(diff: str) -> list:
    """Parse a unified diff (as `git diff` or `difflib.unified_diff` write it) into FilePatch objects."""
    lines = diff.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    patches: list = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("--- "):
            i += 1      # "diff --git", "index ..." and other headers carry nothing we need
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise PatchError(f"malformed diff: '---' header at line {i + 1} is not followed by '+++'")
        fp = FilePatch(_strip_prefix(line[4:]), _strip_prefix(lines[i + 1][4:]))
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            hunk, i = _parse_hunk(lines, i)
            fp.hunks.append(hunk)
        if not fp.hunks:
            raise PatchError(f"malformed diff: no hunks for {fp.new_path}")
        patches.append(fp)
    if not patches:
        raise PatchError("malformed diff: no '---'/'+++' file header")
    return patches


def _parse_hunk(lines: list, i: int):
    m = _HUNK_HEADER.match(lines[i])
    if not m:
        raise PatchError(f"malformed hunk header: {lines[i]!r}")
    old_start, new_start = int(m.group(1)), int(m.group(3))
    old_len = int(m.group(2)) if m.group(2) is not None else 1
    new_len = int(m.group(4)) if m.group(4) is not None else 1
    hunk = Hunk(old_start, old_len, new_start, new_len)
    i += 1
    seen_old = seen_new = 0
    while i < len(lines) and (seen_old < old_len or seen_new < new_len or lines[i].startswith("\\")):
        line = lines[i]
        tag, text = (line[:1], line[1:]) if line else (" ", "")   # some tools drop the space of empty context
        if tag in (" ", "-", "+"):
            hunk.lines.append((tag, text + "\n"))
            seen_old += tag != "+"
            seen_new += tag != "-"
        elif tag == "\\":
            _drop_last_newline(hunk)
        else:
            raise PatchError(f"malformed hunk line {i + 1}: {line[:60]!r}")
        i += 1
    if seen_old != old_len or seen_new != new_len:
        raise PatchError(f"truncated hunk at diff line {i}: expected -{old_len}/+{new_len} lines, "
                         f"got -{seen_old}/+{seen_new}")
    return hunk, i


def _drop_last_newline(hunk: Hunk):
    """A "\\ No newline at end of file" marker: the preceding line has no trailing "\\n"."""
    if not hunk.lines:
        raise PatchError("malformed diff: 'No newline' marker before any hunk line")
    tag, text = hunk.lines[-1]
    if text.endswith("\n"):
        hunk.lines[-1] = (tag, text[:-1])


def _find(lines: list, needle: list, expected: int, lo: int, at_start: bool = False, at_end: bool = False) -> int:
    """Index >= lo where `needle` matches `lines` exactly, nearest to `expected`; -1 if none.
    `at_start` / `at_end`: the match must begin at the file's first line / end at its last (as git)."""
    n = len(needle)
    last = len(lines) - n
    if at_start or at_end:
        candidates = {0} if at_start else {last}
        if at_start and at_end:
            candidates = {0} if last == 0 else set()
        ok = [p for p in candidates if lo <= p <= last and lines[p:p + n] == needle]
        return ok[0] if ok else -1
    if n == 0:
        return expected if lo <= expected <= len(lines) else -1
    for dist in range(0, SEARCH_WINDOW_LINES + 1):
        for pos in ((expected - dist, expected + dist) if dist else (expected,)):
            if lo <= pos <= last and lines[pos:pos + n] == needle:
                return pos
        if expected - dist < lo and expected + dist > last:
            break
    return -1


def locate(lines: list, hunks: list, path: str = "file", origin: str = "") -> list:
    """Place `hunks` (in file order, each after the previous) on `lines` by exact match of their context
    and removed lines; returns the minimal edits (context stripped) in `lines` coordinates.
    Raises PatchError when a hunk does not match."""
    edits: list = []
    cursor = 0
    drift = 0           # offset at which the previous hunk was found, carried to the next (like git)
    for k, h in enumerate(hunks):
        # git's rules: a hunk starting at line 1 must match at the file's start, one without trailing
        # context at its end; otherwise a fix meant for the top or bottom could land mid-file.
        trailing = len(h.lines) - max((k for k, (tag, _) in enumerate(h.lines) if tag != " "), default=-1) - 1
        pos = _find(lines, h.old_lines, h.old_index + drift, cursor,
                    at_start=h.old_start <= 1, at_end=trailing == 0)
        if pos < 0:
            raise PatchError(f"{path}: hunk {k + 1} (@@ -{h.old_start},{h.old_len} @@) does not match the file's "
                             f"content")
        drift = pos - h.old_index
        at = pos
        current = None
        for tag, text in h.lines:
            if tag == " ":
                current = None
                at += 1
                continue
            if current is None:
                current = Edit(at, at, [], origin)
                edits.append(current)
            if tag == "-":
                at += 1
                current.end = at
            else:
                current.new_lines.append(text)
        cursor = pos + len(h.old_lines)
    return edits


def splice(lines: list, edits: list, path: str = "file") -> str:
    """Apply edits (from one or several diffs against the same `lines`) to `lines`.

    Several fixes on one file often insert at the same point (each adds its import after the last one
    there): such insertions are combined in the order given, a non-blank line that an earlier one already
    inserted is not repeated (as an import-adding codemod run on the other's output would do), and the
    same change made by two fixes is made once. Any other overlap is a conflict."""
    # stable sort: at one position insertions come before a replacement starting there, in given order
    ordered = sorted(edits, key=lambda e: (e.start, e.end != e.start, e.end))
    merged: list = []
    for e in ordered:
        prev = merged[-1] if merged else None
        if prev is not None and prev.start == prev.end == e.start == e.end:
            prev.new_lines += [x for x in e.new_lines if not x.strip() or x not in prev.new_lines]
            continue
        if prev is not None and (prev.start, prev.end, prev.new_lines) == (e.start, e.end, e.new_lines):
            continue
        if prev is not None and (e.start < prev.end or (e.start == prev.start and prev.start != prev.end)):
            who = f" ({prev.origin} and {e.origin})" if prev.origin != e.origin else ""
            raise PatchError(f"{path}: two changes touch line {e.start + 1}{who}; apply one, re-profile, then the other")
        merged.append(Edit(e.start, e.end, list(e.new_lines), e.origin))
    out: list = []
    cursor = 0
    for e in merged:
        out.extend(lines[cursor:e.start])
        out.extend(e.new_lines)
        cursor = e.end
    out.extend(lines[cursor:])
    return "".join(out)


def file_patch_for(diff: str, path: str) -> FilePatch:
    """The single in-place FilePatch of a fix's diff, which must change exactly `path`."""
    patches = parse_unified_diff(diff)
    if len(patches) != 1:
        raise PatchError(f"the diff changes {len(patches)} files; a fix must change exactly one ({path})")
    fp = patches[0]
    if "/dev/null" in (fp.old_path, fp.new_path):
        raise PatchError(f"the diff creates or deletes {fp.new_path if fp.old_path == '/dev/null' else fp.old_path}; "
                         f"only in-place edits are applied")
    if fp.old_path != fp.new_path:
        raise PatchError(f"the diff renames {fp.old_path} to {fp.new_path}; only in-place edits are applied")
    if fp.new_path != path:
        raise PatchError(f"the diff changes {fp.new_path} but the fix names {path}")
    return fp


def apply_diff(text: str, diff: str) -> str:
    """`text` with a one-file unified diff applied (what `git apply` does to that file)."""
    patches = parse_unified_diff(diff)
    if len(patches) != 1:
        raise PatchError(f"expected a diff of one file, got {len(patches)}")
    lines = split_lines(text)
    return splice(lines, locate(lines, patches[0].hunks, patches[0].new_path), patches[0].new_path)


def unified_diff(path: str, old: str, new: str, context: int = 3) -> str:
    """A `git apply`-able diff of one file (`--- a/PATH` / `+++ b/PATH`) from its old and new text.

    Unlike a bare `difflib.unified_diff` over `str.splitlines(True)`, lines split on "\\n" only and a
    last line without newline gets git's "\\ No newline at end of file" marker.
    """
    import difflib

    a, b = split_lines(old), split_lines(new)
    out = []
    for line in difflib.unified_diff(a, b, f"a/{path}", f"b/{path}", n=context, lineterm="\n"):
        if line.startswith(("---", "+++")) and not line.endswith("\n"):
            line += "\n"
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n" + _NO_NEWLINE + "\n")
    return "".join(out)
