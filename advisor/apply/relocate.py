"""Reports that survive a move: where the project is now, for a report profiled elsewhere.

`findings.json` records, besides the absolute project root, where the root lies relative to the report
folder and inside its git repository, and for every file a fix edits its repository-relative path and
content hash (`source`, written by `source_record`). A report copied from an NPU server to a laptop clone
of the same repository is applied there by looking for the project in the places it may be now (the
same path relative to the report, the current checkout, the checkout holding the report) and keeping the
one where the most files have the recorded content. Files that cannot be matched are named.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .safety import sha256_bytes


def git_top_level(folder) -> Optional[Path]:
    """The top folder of the git work tree holding `folder`, or None (no git, or not in a repository)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    top = out.stdout.strip()
    return Path(top) if out.returncode == 0 and top else None


def source_record(project_root, report_dir, fixes: list) -> dict:
    """What `apply` needs to find the project again after the report or the checkout moved.

    `fixes`: (file relative to the project root, sha256 of its content) of every code edit."""
    root = Path(os.path.realpath(project_root))
    record = {"project_root_from_report": os.path.relpath(root, os.path.realpath(report_dir))}
    top = git_top_level(root)
    if top is not None:
        top = Path(os.path.realpath(top))
        record["git_top_level"] = str(top)
        record["project_root_in_repo"] = root.relative_to(top).as_posix() if root != top else "."
    files = {}
    for rel, sha in fixes:
        if rel and sha and rel not in files:
            entry = {"sha256": sha}
            if top is not None:
                try:
                    entry["repo_path"] = (root / rel).resolve().relative_to(top).as_posix()
                except ValueError:      # outside the repository: apply refuses such a path anyway
                    pass
            files[rel] = entry
    record["files"] = files
    return record


@dataclass
class Located:
    root: Path
    moved: bool                         # not the recorded absolute root
    matched: list = field(default_factory=list)     # files whose content is the report's
    unmatched: list = field(default_factory=list)   # (file, why) of the others

    def note(self, recorded) -> Optional[str]:
        """One line for the user when the project was found somewhere else, naming the files that differ."""
        if not self.moved:
            return None     # the recorded root: apply's own per-file lines say what does not match
        n = len(self.matched) + len(self.unmatched)
        text = (f"project root {recorded} (recorded in findings.json) is not here; using {self.root}, where "
                f"{len(self.matched)} of {n} file(s) have the content the report was made for")
        if self.unmatched:
            text += "; not matched: " + ", ".join(f"{f} ({why})" for f, why in self.unmatched)
        return text


def _match(root: Path, files: dict) -> tuple:
    matched, unmatched = [], []
    for rel, entry in files.items():
        try:
            data = (root / rel).read_bytes()
        except FileNotFoundError:
            unmatched.append((rel, "missing"))
            continue
        except OSError as exc:
            unmatched.append((rel, f"unreadable: {exc.strerror}"))
            continue
        if sha256_bytes(data) == entry.get("sha256"):
            matched.append(rel)
        else:
            unmatched.append((rel, "changed since the report"))
    return matched, unmatched


def candidates(doc: dict, report_dir: Path) -> list:
    """Folders the project root may be now, most specific first, each once."""
    source = doc.get("source") if isinstance(doc.get("source"), dict) else {}
    found = []
    recorded = doc.get("project_root")
    if recorded:
        found.append(Path(recorded))
    rel = source.get("project_root_from_report")
    if isinstance(rel, str):
        found.append(Path(report_dir) / rel)
    in_repo = source.get("project_root_in_repo")
    if isinstance(in_repo, str):
        for where in (Path.cwd(), Path(report_dir)):
            top = git_top_level(where)
            if top is not None:
                found.append(top / in_repo)
    unique, seen = [], set()
    for c in found:
        key = os.path.realpath(c)
        if key not in seen and Path(key).is_dir():
            seen.add(key)
            unique.append(Path(key))
    return unique


def locate_project(doc: dict, report_dir: Path, files: dict) -> Located:
    """The folder to apply in: the recorded root when it still holds the files as the report saw them,
    else the candidate where most files match. `files`: {path relative to the root: {"sha256": ...}}."""
    recorded = doc.get("project_root")
    recorded_real = os.path.realpath(recorded) if recorded else None
    best = None
    for root in candidates(doc, report_dir):
        matched, unmatched = _match(root, files)
        here = Located(root, moved=str(root) != recorded_real, matched=matched, unmatched=unmatched)
        if not here.moved and not unmatched:
            return here
        # The recorded root stays the choice (its files may carry fixes already: apply tells per file)
        # unless a checkout elsewhere has more files with the recorded content.
        if (not here.moved or matched) and (best is None or len(matched) > len(best.matched)):
            best = here
    if best is None:
        raise UserError(f"{report_dir}/findings.json: the project root {recorded or '(none recorded)'} is not "
                        f"here and no checkout with its files was found (run apply inside a clone of the "
                        f"repository, or pass --project-root)")
    return best
