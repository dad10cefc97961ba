"""`npu-advise check [PATH...]`: a static scan for NPU migration blockers and fused-op opportunities, like a
linter: `path:line:col: NPA9xx message` lines, JSON or SARIF on request, exit 1 for CI."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from ..errors import UserError
from ..progress import info, is_quiet, quiet_option

FAIL_ON = ("high", "medium", "low", "info", "none")


def _codes(values) -> list:
    return [c for v in values for c in v.split(",") if c.strip()]


def _shown_path(root: Path, rel: str) -> str:
    """The path as ruff prints it: relative to the working folder when inside it."""
    full = root / rel
    try:
        return os.path.relpath(full)
    except ValueError:        # another drive (Windows)
        return str(full)


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif"]), default="text", show_default=True,
              help="text: one `path:line:col: CODE message` line per finding; json / sarif: a document.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the json/sarif document (or the text) to this file instead of stdout.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="low", show_default=True,
              help="Exit 1 when a finding of this severity or higher is reported (`none`: never).")
@click.option("--select", multiple=True, help="Only these rule codes or prefixes (NPA907, NPA9), comma-separated.")
@click.option("--ignore", multiple=True, help="Leave out these rule codes or prefixes, comma-separated.")
@click.option("--diff", "show_diff", is_flag=True, help="Print each finding's diff under it (text format).")
@click.option("--jobs", "-j", type=int, default=None, help="Worker processes (default: the CPU count, at most 8).")
@click.option("--no-cache", is_flag=True, help="Scan every file, do not read or write the result cache.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Result cache folder (default: $XDG_CACHE_HOME/npu-advise/check or ~/.cache/npu-advise/check).")
@quiet_option
def check(paths, fmt, output, fail_on, select, ignore, show_diff, jobs, no_cache, cache_dir):
    """Scan PATH... (files or folders, default `.`) for CUDA-only code and fused-op opportunities; no run needed.

    Exit status: 0 no finding at or above --fail-on, 1 such findings, 2 bad input, 3 internal error."""
    from ..recommendations import check as engine

    started = time.perf_counter()
    paths = list(paths) or [Path(".")]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"no such file or folder: {', '.join(missing)}")
    jobs = jobs if jobs is not None else min(os.cpu_count() or 1, 8)
    if jobs < 1:
        raise UserError("--jobs must be at least 1")
    cache = None if no_cache else (cache_dir or engine.default_cache_dir())
    result = engine.check_paths(paths, jobs=jobs, cache_dir=cache, fixes=fmt != "text" or show_diff)
    if result.files == 0:
        raise UserError(f"no Python files under {', '.join(map(str, paths))}")
    findings = engine.select(result.findings, _codes(select), _codes(ignore))
    root = engine.project_root(paths)
    text = _render(fmt, findings, root, show_diff)
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {output}: {e.strerror}") from None
    else:
        click.echo(text, nl=False)
    failing = engine.at_or_above(findings, fail_on)
    summary = (f"npu-advise check: {len(findings)} finding{'s' if len(findings) != 1 else ''} in {result.files} files "
               f"({result.cached} from cache) in {time.perf_counter() - started:.2f} s")
    if result.unparsable:       # a warning: said under --quiet too
        warning = f"{len(result.unparsable)} not valid Python: {', '.join(result.unparsable[:5])}"
        summary = f"npu-advise check: {warning}" if is_quiet() else f"{summary}; {warning}"
        click.echo(summary, err=True)
    else:
        info(summary)
    sys.exit(1 if failing else 0)


def _render(fmt: str, findings: list, root: Path, show_diff: bool) -> str:
    if fmt == "json":
        from .. import __version__
        from ..findings import SCHEMA_VERSION

        doc = {"schema_version": SCHEMA_VERSION, "tool": {"name": "npu-advise", "version": __version__},
               "command": "check", "project_root": str(root), "findings": [f.to_dict() for f in findings]}
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "sarif":
        from types import SimpleNamespace

        from ..render.sarif import to_sarif

        return json.dumps(to_sarif(SimpleNamespace(findings=findings, project_root=str(root))), indent=2) + "\n"
    lines = []
    for f in findings:
        loc = f.locations[0]
        lines.append(f"{_shown_path(root, loc.file)}:{loc.line}:{f.details.get('col', 1)}: {f.rule} "
                     f"[{f.severity}] {f.title}")
        if show_diff and f.fix is not None and f.fix.diff:
            lines.append(f.fix.diff.rstrip("\n"))
    return "\n".join(lines) + ("\n" if lines else "")
