"""What `apply` keeps in `REPORT_DIR/applied/` so that `apply --revert` can undo it.

`applied/journal.json`:
    {"schema": 1, "project_root": "/abs/root",
     "files": {"rel/path.py": {"original_sha256": ..., "original": "originals/<sha256>.orig",
                               "patched_sha256": ..., "fixes": ["NPA601-...", ...]}}}
`applied/originals/<sha256>.orig` holds each file's content from before the first fix, byte for byte.
The file's current content is always the original with `fixes` applied, so any subset can be re-derived.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .safety import atomic_write, sha256_bytes

APPLIED_DIR = "applied"
JOURNAL_FILE = "journal.json"
SCHEMA = 1


@dataclass
class FileRecord:
    original_sha256: str
    original: str              # path relative to the applied/ folder
    patched_sha256: str
    fixes: list = field(default_factory=list)


@dataclass
class Journal:
    folder: Path               # REPORT_DIR/applied
    project_root: str = ""
    files: dict = field(default_factory=dict)    # rel path -> FileRecord

    @property
    def path(self) -> Path:
        return self.folder / JOURNAL_FILE

    def original_bytes(self, rec: FileRecord) -> bytes:
        p = self.folder / rec.original
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise UserError(f"{p}: backup of the original is missing ({exc.strerror})") from None
        if sha256_bytes(data) != rec.original_sha256:
            raise UserError(f"{p}: backup of the original is damaged (hash mismatch)")
        return data

    def keep_original(self, data: bytes) -> str:
        """Store an original's bytes (once per content) and return its journal reference."""
        name = f"originals/{sha256_bytes(data)}.orig"
        p = self.folder / name
        if not p.is_file() or sha256_bytes(p.read_bytes()) != sha256_bytes(data):
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(p, data)
        return name

    def to_bytes(self) -> bytes:
        doc = {"schema": SCHEMA, "project_root": self.project_root,
               "files": {rel: vars(rec) for rel, rec in sorted(self.files.items())}}
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    def save(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, self.to_bytes())

    def restore(self, previous: bytes | None):
        """Put back the journal as it was (`None`: there was none)."""
        if previous is None:
            self.path.unlink(missing_ok=True)
        else:
            atomic_write(self.path, previous)


def load_journal(report_dir: Path) -> Journal:
    folder = Path(report_dir) / APPLIED_DIR
    j = Journal(folder)
    if not j.path.exists():
        return j
    try:
        doc = json.loads(j.path.read_text(encoding="utf-8"))
        j.project_root = doc.get("project_root", "")
        j.files = {rel: FileRecord(**rec) for rel, rec in doc["files"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{j.path}: unreadable apply journal ({type(exc).__name__}); the originals are in "
                        f"{folder / 'originals'}") from None
    return j
