"""What a rewrite generator works from: the project's source files, the trace's evidence at their lines,
and where its candidates go (`Sources.attach`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from npu_advise.analyzers.source import python_files

from .candidates import Candidate

# At most this many .py files of the project are scanned (folders in analyzers.source.SKIP_DIRS are skipped).
MAX_SCANNED_FILES = 2000
MAX_FILE_BYTES = 2_000_000
CONFIG_DIR_NAMES = ("configs", "config", "projects")


class Sources:
    """Source files of the project (text as on disk, path relative to the project root), the trace's
    source index, and the candidates made so far (finding id -> Candidate)."""

    def __init__(self, root: Optional[Path], trace=None, index=None):
        self.root = root.resolve() if root is not None else None
        self.trace = trace
        self.index = index                 # evidence.SourceIndex of the trace
        self.candidates = {}
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

    def config_files(self) -> list:
        """Project files in config folders (mmcv / mmengine configs)."""
        if self.root is None:
            return []
        return [p for p in self.project_files()
                if any(part in CONFIG_DIR_NAMES for part in p.relative_to(self.root).parts[:-1])]

    def located(self, finding):
        """(path, text, location) of a finding's first location; path and text None when not on disk."""
        loc = finding.locations[0]
        path = self.resolve(loc.file)
        if path is None:
            return None, None, loc
        return path, self.text(path), loc

    def candidate(self, path: Path, text: str, rewrite, catalog_ref: str) -> Candidate:
        return Candidate.from_rewrite(self.rel(path), path, text, rewrite, catalog_ref)

    def attach(self, finding, candidate: Candidate) -> None:
        """Make `candidate` the finding's fix and keep it for the verification stage."""
        finding.fix = candidate.to_fix(finding.id)
        if candidate.requires:
            finding.details["fix_requires"] = list(candidate.requires)
        self.candidates[finding.id] = candidate


def project_root(trace, ctx) -> Optional[Path]:
    if ctx.project_root is not None:
        return Path(ctx.project_root)
    files = [Path(f) for f in (trace.locations["file"].tolist() if len(trace.locations) else [])
             if f and Path(f).is_file()]
    if not files:
        return None
    return Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
