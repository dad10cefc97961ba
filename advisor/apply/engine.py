"""`apply` and `apply --revert`: plan per file, then write everything or nothing.

Every fix's diff is made against the same original file (the report's `file_sha256`). Several fixes on
one file are therefore not chained diff after diff: each is placed on the *original* by exact context
match, reduced to its changed lines, and all changes are spliced into the original together (a change
that overlaps another is refused). The written file is thus always "original + a set of fixes", which
the journal records, so a later `apply` of more fixes, a second `apply` of the same ones, and
`--revert` of some or all of them are all exact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError
from . import patching, relocate
from .journal import FileRecord, Journal, load_journal
from .patching import PatchError
from .report import ReportFixes, load_report_fixes
from .safety import UnsafePathError, atomic_write, contained_path, decode, encode, sha256_bytes

APPLIED, ALREADY, WOULD, REFUSED, REVERTED, ALREADY_REVERTED, SKIPPED = (
    "applied", "already applied", "would apply", "refused", "reverted", "already reverted", "skipped")


@dataclass
class Outcome:
    fix_id: str
    file: str
    status: str               # one of the constants above
    message: str = ""
    diff: Optional[str] = None


@dataclass
class FilePlan:
    rel: str
    target: Path                      # real path inside the project root
    current: bytes                    # content now
    new: bytes                        # content to write
    original: bytes                   # content before any fix
    fixes: list = field(default_factory=list)   # fix ids the new content carries


def project_root_of(report: ReportFixes, override) -> Path:
    root = Path(override) if override else report.project_root
    if root is None:
        raise UserError(f"{report.report_dir}/findings.json records no project_root; pass --project-root")
    if not root.is_dir():
        raise UserError(f"project root {root} is not a folder")
    return root


def select(report: ReportFixes, ids, include_npu_fixes: bool = False, include_unverified: bool = False):
    """(fixes to apply, [(fix, why skipped)]): the named ones (each must exist and be auto-applicable),
    else all auto-applicable code edits in report order. Unless `include_unverified`, only fixes the
    verification stage verified on the user's run; unless `include_npu_fixes`, not those whose new code
    imports packages this environment lacks (torch_npu / mx_driving on a CPU or CUDA machine), which would
    leave the script unable to run here. A rejected fix is never auto-applicable."""
    by_id = report.by_id()
    if not ids:
        chosen, skipped = [], []
        for f in report.fixes:
            if not (f.auto_applicable and f.is_code_edit):
                continue
            if not (f.verified or include_unverified):
                skipped.append((f, f"{f.why_unverified()} (--include-unverified applies it anyway)"))
            elif f.missing_requirements() and not include_npu_fixes:
                skipped.append((f, f"needs {', '.join(f.missing_requirements())}, not importable here "
                                   f"(--include-npu-fixes applies it anyway)"))
            else:
                chosen.append(f)
        return chosen, skipped
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        known = ", ".join(f.fix_id for f in report.fixes) or "none"
        raise UserError(f"unknown fix id{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (fixes in this report: {known})")
    chosen = []
    for i in dict.fromkeys(ids):
        f = by_id[i]
        if not (f.auto_applicable and f.is_code_edit):
            raise UserError(f"fix {i} ({f.rule}: {f.title}) cannot be applied automatically: it is "
                            f"{f.why_not_applicable()}. What to do: {f.description}")
        if not (f.verified or include_unverified):
            raise UserError(f"fix {i} ({f.rule}: {f.title}) is {f.why_unverified()}; "
                            f"--include-unverified applies it anyway")
        chosen.append(f)
    order = {f.fix_id: k for k, f in enumerate(report.fixes)}
    return sorted(chosen, key=lambda f: order[f.fix_id]), []


def _edits(fix, original_lines: list, rel: str) -> list:
    fp = patching.file_patch_for(fix.diff, rel)
    return patching.locate(original_lines, fp.hunks, rel, origin=fix.fix_id)


def _base(fixes: list, current: bytes, record: Optional[FileRecord], journal: Journal, rel: str):
    """(original bytes, ids of fixes already in `current`) or raise UserError when `current` is
    neither the report's original nor something apply produced from it."""
    h = sha256_bytes(current)
    if record is not None and h == record.patched_sha256:
        return journal.original_bytes(record), list(record.fixes)
    originals = {f.file_sha256 for f in fixes if f.file_sha256}
    if h in originals or not originals:
        return current, []
    for f in fixes:                       # applied by other means (e.g. `git apply` of the shown diff)
        if f.patched_sha256 == h:
            fp = patching.file_patch_for(f.diff, rel)
            lines = patching.split_lines(decode(current))
            try:
                orig = encode(patching.splice(lines, patching.locate(lines, [x.reversed() for x in fp.hunks], rel), rel))
            except PatchError:
                continue
            if sha256_bytes(orig) == f.file_sha256:
                return orig, [f.fix_id]
    expected = sorted(originals)[0][:12]
    raise UserError(f"{rel} changed since the report (sha256 {h[:12]}, report expected {expected}); "
                    f"re-run `npu-advise analyze` to get fixes for the current code")


def plan_file(rel: str, fixes: list, all_fixes_of_file: list, root: Path, journal: Journal):
    """Outcomes for `fixes` on one file and the FilePlan to write (None when nothing changes)."""
    outcomes: list = []
    try:
        target = contained_path(root, rel)
    except UnsafePathError as exc:
        return [Outcome(f.fix_id, rel, REFUSED, str(exc)) for f in fixes], None
    try:
        current = target.read_bytes()
    except OSError as exc:
        return [Outcome(f.fix_id, rel, REFUSED, f"{rel}: cannot read ({exc.strerror})") for f in fixes], None
    record = journal.files.get(rel)
    try:
        original, applied = _base(all_fixes_of_file, current, record, journal, rel)
    except UserError as exc:
        return [Outcome(f.fix_id, rel, REFUSED, str(exc)) for f in fixes], None

    lines = patching.split_lines(decode(original))
    h_orig = sha256_bytes(original)
    by_id = {f.fix_id: f for f in all_fixes_of_file}
    edits = {}                               # fix id -> edits on the original, for every fix kept
    unknown = [fid for fid in applied if fid not in by_id]
    if unknown:
        msg = f"{rel} carries fix(es) {', '.join(unknown)} that this report does not know; revert them first"
        return [Outcome(f.fix_id, rel, REFUSED, msg) for f in fixes], None
    for fid in applied:
        edits[fid] = _edits(by_id[fid], lines, rel)
    for f in fixes:
        if f.fix_id in applied:
            outcomes.append(Outcome(f.fix_id, rel, ALREADY, "the file already carries it; nothing to do"))
            continue
        if f.file_sha256 and f.file_sha256 != h_orig:
            outcomes.append(Outcome(f.fix_id, rel, REFUSED, f"the fix was made for another version of {rel}"))
            continue
        try:
            own = _edits(f, lines, rel)
            alone = encode(patching.splice(lines, own, rel))
            if f.patched_sha256 and sha256_bytes(alone) != f.patched_sha256:
                raise PatchError(f"{rel}: the diff does not produce the content the report recorded "
                                 f"(patched_sha256 mismatch)")
            patching.splice(lines, [e for es in edits.values() for e in es] + own, rel)   # conflicts?
        except PatchError as exc:
            outcomes.append(Outcome(f.fix_id, rel, REFUSED, str(exc)))
            continue
        edits[f.fix_id] = own
        outcomes.append(Outcome(f.fix_id, rel, APPLIED, f.description, diff=f.diff))
    if not any(o.status == APPLIED for o in outcomes):
        return outcomes, None
    # report order, whatever order the fixes were applied in: the file is a function of the fix set
    kept = [f.fix_id for f in all_fixes_of_file if f.fix_id in edits]
    new = encode(patching.splice(lines, [e for fid in kept for e in edits[fid]], rel))
    return outcomes, FilePlan(rel, target, current, new, original, kept)


def apply_fixes(report_dir, ids=None, dry_run: bool = False, project_root=None,
                include_npu_fixes: bool = False, include_unverified: bool = False, notify=None) -> list:
    """`notify(line)`: told where the project was found when it is not at the recorded root (a report
    copied to another checkout), and which files do not have the content the report was made for."""
    report = load_report_fixes(report_dir)
    chosen, skipped = select(report, ids, include_npu_fixes, include_unverified)
    if project_root is None and chosen:
        located = relocate.locate_project(report.doc, report.report_dir, report.source_files())
        note = located.note(report.project_root)
        if note and notify is not None:
            notify(note)
        project_root = located.root
    root = project_root_of(report, project_root)
    journal = load_journal(report.report_dir)
    outcomes = [Outcome(f.fix_id, f.file, SKIPPED, why) for f, why in skipped]
    plans = []
    for rel in dict.fromkeys(f.file for f in chosen):
        mine = [f for f in chosen if f.file == rel]
        of_file = [f for f in report.fixes if f.file == rel and f.is_code_edit]
        out, plan = plan_file(rel, mine, of_file, root, journal)
        outcomes.extend(out)
        if plan is not None:
            plans.append(plan)
    if dry_run:
        for o in outcomes:
            if o.status == APPLIED:
                o.status = WOULD
        return outcomes
    if plans:
        journal.project_root = str(Path(os.path.realpath(root)))
        for p in plans:
            ref = journal.keep_original(p.original)
            journal.files[p.rel] = FileRecord(sha256_bytes(p.original), ref, sha256_bytes(p.new), p.fixes)
        _write_all(journal, [(p.target, p.current, p.new) for p in plans], journal_first=True)
    return outcomes


def revert_fixes(report_dir, ids=None, project_root=None) -> list:
    """Undo applied fixes (all, or the named ones) if their files still hold what apply wrote."""
    report = load_report_fixes(report_dir)
    journal = load_journal(report.report_dir)
    # undo where apply wrote (it may have been given --project-root), unless told otherwise
    root = project_root_of(report, project_root or journal.project_root or None)
    if not journal.files:
        raise UserError(f"nothing to revert: no fixes from {report.report_dir} are recorded as applied "
                        f"({journal.path} is missing or empty)")
    if ids:
        recorded = {fid for rec in journal.files.values() for fid in rec.fixes}
        missing = [i for i in ids if i not in recorded]
        if missing:
            raise UserError(f"fix {', '.join(missing)} is not recorded as applied (applied: {', '.join(sorted(recorded))})")
    by_id = report.by_id()
    outcomes, writes, forget, updates = [], [], [], {}
    for rel, rec in sorted(journal.files.items()):
        undo = [i for i in rec.fixes if not ids or i in ids]
        if not undo:
            continue
        try:
            target = contained_path(root, rel)
            current = target.read_bytes()
        except (UnsafePathError, OSError) as exc:
            msg = str(exc) if isinstance(exc, UnsafePathError) else f"{rel}: cannot read ({exc.strerror})"
            outcomes += [Outcome(i, rel, REFUSED, msg) for i in undo]
            continue
        h = sha256_bytes(current)
        if h == rec.original_sha256:
            outcomes += [Outcome(i, rel, ALREADY_REVERTED, "the file already has its original content") for i in undo]
            forget.append(rel)
            continue
        if h != rec.patched_sha256:
            outcomes += [Outcome(i, rel, REFUSED,
                                 f"{rel} was edited after apply (sha256 {h[:12]}, apply wrote {rec.patched_sha256[:12]}); "
                                 f"not reverting it. Its original is kept at {journal.folder / rec.original}")
                         for i in undo]
            continue
        original = journal.original_bytes(rec)
        keep = [i for i in rec.fixes if i not in undo]
        if keep:       # re-derive "original + the remaining fixes"
            lines = patching.split_lines(decode(original))
            try:
                new = encode(patching.splice(lines, [e for i in keep for e in _edits(by_id[i], lines, rel)], rel))
            except (KeyError, PatchError) as exc:
                outcomes += [Outcome(i, rel, REFUSED, f"cannot re-derive {rel} without it: {exc}") for i in undo]
                continue
            updates[rel] = FileRecord(rec.original_sha256, rec.original, sha256_bytes(new), keep)
        else:
            new = original
            forget.append(rel)
        writes.append((target, current, new))
        outcomes += [Outcome(i, rel, REVERTED, "restored" if not keep else f"removed; {len(keep)} other fix(es) kept")
                     for i in undo]
    for rel in forget:
        journal.files.pop(rel, None)
    journal.files.update(updates)
    _write_all(journal, writes, journal_first=False)
    return outcomes


def _write_all(journal: Journal, writes: list, journal_first: bool):
    """Write every (path, old bytes, new bytes) and the journal; on any failure put back every file
    already written and the previous journal, then raise UserError."""
    previous_journal = journal.path.read_bytes() if journal.path.exists() else None
    done = []
    try:
        if journal_first:
            journal.save()
        for path, old, new in writes:
            atomic_write(path, new)
            done.append((path, old))
        if not journal_first:
            journal.save()
    except BaseException as exc:
        for path, old in reversed(done):
            atomic_write(path, old)
        journal.restore(previous_journal)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise UserError(f"writing failed ({type(exc).__name__}: {exc}); restored {len(done)} file(s) already "
                        f"written, nothing changed") from None
