"""Subcommands of the CLI, imported lazily by npu_advise.cli."""
from __future__ import annotations

import click

from ..progress import is_quiet


def echo_top_findings(report, paths: dict, shown: int = 5):
    """The first findings, one line each, then where the report is: the tail of `profile` and `analyze`
    (under --quiet only where the report is)."""
    for f in report.findings[:0 if is_quiet() else shown]:
        saving = f" ~{f.estimated_saving_us:,.0f} us/step" if f.estimated_saving_us else ""
        click.echo(f"  {f.rule} [{f.severity}] {f.title}{saving}")
    click.echo(f"report: {paths['html']}")
