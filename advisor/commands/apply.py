"""`npu-advise apply REPORT_DIR`: apply a report's auto-applicable fixes (or undo them with --revert)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..progress import info, quiet_option


@click.command()
@click.argument("report_dir", type=click.Path(path_type=Path))
@click.option("--fix", "fix_ids", multiple=True, metavar="ID",
              help="Apply (or revert) only this fix; repeatable. Default: every auto-applicable fix.")
@click.option("--dry-run", is_flag=True, help="Show the diffs that would be applied; change nothing.")
@click.option("--revert", is_flag=True, help="Undo fixes applied from this report (files edited since are left alone).")
@click.option("--include-npu-fixes", is_flag=True,
              help="Also apply fixes whose new code needs packages missing here (torch_npu, mx_driving); "
                   "by default they are skipped so the script keeps running on this machine.")
@click.option("--include-unverified", is_flag=True,
              help="Also apply fixes the verification stage did not verify on your run (not verifiable "
                   "here, or the stage did not run); rejected fixes are never applied.")
@quiet_option
@click.option("--project-root", type=click.Path(path_type=Path), default=None,
              help="Root of the training code (default: the one recorded in findings.json; when that is not "
                   "here, the same project in the current git checkout, found by the files' content hashes).")
def apply(report_dir, fix_ids, dry_run, revert, include_npu_fixes, include_unverified, project_root):
    """Apply the verified fixes of a report folder written by `profile`, `analyze` or `verify`.

    Refuses files changed since the report and paths outside the project root; writes atomically and
    keeps the originals in REPORT_DIR/applied/ for --revert. Applying twice changes nothing.
    """
    from ..apply import engine

    if revert and dry_run:
        raise click.UsageError("--revert and --dry-run cannot be combined")
    if revert:
        outcomes = engine.revert_fixes(report_dir, fix_ids, project_root)
    else:
        outcomes = engine.apply_fixes(report_dir, fix_ids, dry_run=dry_run, project_root=project_root,
                                       include_npu_fixes=include_npu_fixes, include_unverified=include_unverified,
                                       notify=lambda line: info(f"npu-advise: {line}"))
    if not outcomes:
        click.echo("npu-advise: no auto-applicable fixes in this report "
                   "(advice-only fixes are described in report.html)")
        return
    for o in outcomes:
        if o.status == engine.WOULD and o.diff:
            click.echo(o.diff if o.diff.endswith("\n") else o.diff + "\n", nl=False)
        msg = f": {o.message}" if o.message else ""
        click.echo(f"{o.fix_id} {o.file}: {o.status}{msg}", err=o.status == engine.REFUSED)
    counts = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    info("npu-advise: " + ", ".join(f"{n} {s}" for s, n in counts.items())
         + (" (dry run: nothing written)" if dry_run else ""), err=False)
    if not revert and not dry_run and counts.get(engine.APPLIED):
        info(f"undo with: npu-advise apply {report_dir} --revert", err=False)
    if counts.get(engine.REFUSED):
        raise FixesRefused(f"{counts[engine.REFUSED]} fix(es) refused (reasons above); nothing else was affected")


class FixesRefused(UserError):
    """Some fixes were refused (a file changed since the report, a path outside the project, ...)."""
