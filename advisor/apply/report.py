"""Read the fixes of a report folder (`findings.json`) for `apply`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..render.json_out import read_findings

FINDINGS_FILE = "findings.json"


@dataclass
class FixEntry:
    """A finding's fix as findings.json carries it."""

    fix_id: str
    rule: str
    title: str
    description: str
    auto_applicable: bool
    diff: Optional[str]
    file: Optional[str]
    file_sha256: Optional[str]
    patched_sha256: Optional[str]
    requires: tuple = ()      # packages the new code imports (torch_npu, mx_driving, ...)
    verification: Optional[dict] = None   # what the verification stage found (None: it did not run)

    def missing_requirements(self) -> list:
        import importlib.util
        return [m for m in self.requires if importlib.util.find_spec(m.split(".")[0]) is None]

    @property
    def is_code_edit(self) -> bool:
        return bool(self.diff and self.file)

    @property
    def verified(self) -> bool:
        return (self.verification or {}).get("status") == "verified"

    def why_unverified(self) -> str:
        if not self.verification:
            return "not verified (the report was made without the verification stage)"
        return self.verification.get("summary") or f"not verified ({self.verification.get('status')})"

    def why_not_applicable(self) -> str:
        if (self.verification or {}).get("status") == "rejected":
            return self.why_unverified()
        if not self.auto_applicable:
            return "advice-only (its validity cannot be checked from the source and the recorded shapes)"
        return "it carries no diff/file to apply"


@dataclass
class ReportFixes:
    report_dir: Path
    project_root: Optional[Path]
    fixes: list               # list[FixEntry], in report order
    doc: dict = None          # the whole findings.json (its `source` record finds a moved project)

    def source_files(self) -> dict:
        """{file relative to the project root: {"sha256", "repo_path"}} of every code edit."""
        source = self.doc.get("source") if isinstance(self.doc, dict) else None
        files = source.get("files") if isinstance(source, dict) else None
        if isinstance(files, dict):
            return {k: v for k, v in files.items() if isinstance(v, dict)}
        return {f.file: {"sha256": f.file_sha256} for f in self.fixes if f.is_code_edit}   # older reports

    def by_id(self) -> dict:
        return {f.fix_id: f for f in self.fixes}


def load_report_fixes(report_dir) -> ReportFixes:
    d = Path(report_dir)
    if d.is_file() and d.name == FINDINGS_FILE:
        d = d.parent
    if not d.exists():
        raise UserError(f"{report_dir}: no such report folder")
    if not d.is_dir():
        raise UserError(f"{report_dir}: not a report folder (expected the output folder of profile/analyze)")
    path = d / FINDINGS_FILE
    if not path.is_file():
        raise UserError(f"{d}: no {FINDINGS_FILE} (is this the output folder of `npu-advise profile`/`analyze`?)")
    data = read_findings(path)
    fixes = []
    seen: dict = {}
    for k, fd in enumerate(data["findings"]):
        if not isinstance(fd, dict):
            raise UserError(f"{path}: finding #{k + 1} is not an object")
        fx = fd.get("fix")
        if not fx:
            continue
        if not isinstance(fx, dict) or not isinstance(fx.get("description", ""), str):
            raise UserError(f"{path}: finding #{k + 1} has a malformed fix")
        fix_id = fx.get("fix_id") or fd.get("id")
        if not fix_id:
            raise UserError(f"{path}: finding #{k + 1} has a fix without an id")
        fix_id = str(fix_id)
        # Ids are rule + location; two findings of one rule at one line share it. Number the repeats
        # so that each fix stays addressable with --fix (and the journal stays unambiguous).
        seen[fix_id] = seen.get(fix_id, 0) + 1
        if seen[fix_id] > 1:
            fix_id = f"{fix_id}#{seen[fix_id]}"
        fixes.append(FixEntry(
            fix_id=fix_id, rule=str(fd.get("rule", "")), title=str(fd.get("title", "")),
            description=fx.get("description", ""), auto_applicable=bool(fx.get("auto_applicable")),
            diff=fx.get("diff"), file=fx.get("file"), file_sha256=fx.get("file_sha256"),
            patched_sha256=fx.get("patched_sha256"),
            requires=tuple(str(m) for m in ((fd.get("details") or {}).get("fix_requires") or [])),
            verification=fx.get("verification") if isinstance(fx.get("verification"), dict) else None,
        ))
    root = data.get("project_root")
    return ReportFixes(d, Path(root) if root else None, fixes, data)
