"""Source snippets for the report: a few lines around a finding's location, the line highlighted.

Only Python source files are read. A trace names file paths, and a report built from someone
else's trace must not copy arbitrary local files (keys, configs) into a shareable HTML page.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

CONTEXT_LINES = 3                 # lines shown above and below the location
MAX_SOURCE_BYTES = 5_000_000      # larger files are not read (generated code, not worth embedding)
SOURCE_SUFFIXES = (".py", ".pyi")


@dataclass
class Snippet:
    file: str                       # as the finding names it
    line: int
    resolved: Optional[str] = None  # the file that was read
    lines: list = field(default_factory=list)   # [(line number, text, is the location)]
    missing: Optional[str] = None   # why no source is shown


class SnippetReader:
    """Reads each source file once per report."""

    def __init__(self, project_root: Optional[str] = None, context: int = CONTEXT_LINES):
        self.project_root = Path(project_root) if project_root else None
        self.context = context
        self._cache: dict = {}

    def resolve(self, file: str) -> Optional[Path]:
        candidates = []
        if self.project_root is not None and not Path(file).is_absolute():
            candidates.append(self.project_root / file)
        candidates.append(Path(file))
        for c in candidates:
            try:
                if c.is_file():
                    return c
            except OSError:
                continue
        return None

    def _lines(self, path: Path):
        key = str(path)
        if key not in self._cache:
            try:
                if path.stat().st_size > MAX_SOURCE_BYTES:
                    self._cache[key] = f"{path} is larger than {MAX_SOURCE_BYTES:,} bytes; not embedded"
                else:
                    self._cache[key] = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as e:
                self._cache[key] = f"cannot read {path}: {e.strerror or e}"
        return self._cache[key]

    def snippet(self, file: str, line: int) -> Snippet:
        snip = Snippet(file=file, line=int(line))
        if not file:
            snip.missing = "no source file recorded for this location"
            return snip
        if not str(file).endswith(SOURCE_SUFFIXES):
            snip.missing = "not a Python source file; not shown"
            return snip
        path = self.resolve(file)
        if path is None:
            where = f" under the project root {self.project_root}" if self.project_root else \
                " (pass --project-root to show source)"
            snip.missing = f"source file not found{where}"
            return snip
        snip.resolved = str(path)
        lines = self._lines(path)
        if isinstance(lines, str):
            snip.missing = lines
            return snip
        if not 1 <= snip.line <= len(lines):
            snip.missing = (f"line {snip.line} is outside the file ({len(lines)} lines): "
                            "the file changed since it was profiled")
            return snip
        lo = max(1, snip.line - self.context)
        hi = min(len(lines), snip.line + self.context)
        snip.lines = [(n, lines[n - 1], n == snip.line) for n in range(lo, hi + 1)]
        return snip
