"""`npu-advise verify REPORT_DIR`: re-verify a profile report's rewrites on a re-run of its script."""
from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import UserError
from ..progress import info, quiet_option
from . import echo_top_findings


def verify_options(f):
    """The options `profile` and `verify` share."""
    f = click.option("--verify-timeout", type=float, default=None, metavar="S",
                     help="Time limit of each verification run (default: 3x the profiled run, at least 120 s).")(f)
    f = click.option("--verify-calls", type=click.IntRange(1, 10_000), default=None, metavar="N",
                     help="Calls compared per rewrite (default: 24).")(f)
    return f


def run_verification(report, collection: dict, calls, timeout, out_dir: Path) -> None:
    """Run the stage on the report's candidates, record its cost in the report, say what it found."""
    from ..verify.stage import MAX_CALLS, verify_report

    stats = verify_report(report, report.candidates, collection, max_calls=calls or MAX_CALLS, timeout_s=timeout,
                          log=Path(out_dir) / "verify.log", echo=info)
    statuses = [f.fix.verification["status"] for f in report.findings if f.fix is not None and f.fix.verification]
    counts = {s: statuses.count(s) for s in ("verified", "rejected", "not_verifiable")}
    report.collection["verification"] = {"runs": stats.runs, "wall_seconds": round(stats.wall_seconds, 3),
                                         "steps": stats.steps, "outcomes": stats.outcomes, **counts}
    ended = [o for o in stats.outcomes if o not in ("stopped", "completed")]
    if ended:
        report.limitations.append(f"The verification run ended early ({'; '.join(ended)}) after {stats.steps} "
                                  f"optimizer steps; each fix's verification covers the calls made before.")
    if statuses:
        info(f"npu-advise: verification: {counts['verified']} verified, {counts['rejected']} rejected, "
             f"{counts['not_verifiable']} not verifiable ({stats.runs} extra run{'s' if stats.runs != 1 else ''}, "
             f"{stats.wall_seconds:.1f} s)")


@click.command()
@click.argument("report_dir", type=click.Path(path_type=Path))
@verify_options
@quiet_option
def verify(report_dir, verify_calls, verify_timeout):
    """Re-verify the rewrites of REPORT_DIR (a `profile` output folder) on a re-run of its script.

    The trace in REPORT_DIR/trace is analyzed again against the code as it is now, each rewrite is run
    beside the function it replaces, and findings.json, findings.sarif and report.html are rewritten.
    """
    from ..pipeline import analyze_profile, write_outputs
    from .analyze import _collection_of, script_root

    report_dir = Path(report_dir)
    if not (report_dir / "trace").is_dir():
        raise UserError(f"{report_dir}: not a `npu-advise profile` output folder (no trace/ in it)")
    collection = _collection_of(report_dir)
    if not collection.get("script"):
        raise UserError(f"{report_dir}: collection.json does not record the profiled script")
    started = time.perf_counter()
    report = analyze_profile(report_dir / "trace", project_root=script_root(collection), collection=collection)
    run_verification(report, collection, verify_calls, verify_timeout, report_dir)
    paths = write_outputs(report, report_dir)
    info(f"npu-advise: {report_dir} re-verified in {time.perf_counter() - started:.2f} s", err=False)
    echo_top_findings(report, paths)
