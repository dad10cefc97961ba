"""`npu-advise analyze PATH`: the report from an existing profile (Kineto trace, *_ascend_pt, cluster)."""
from __future__ import annotations

import time
from pathlib import Path

import click

from ..progress import info, quiet_option
from . import echo_top_findings


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: npu_advise_out/<name>-<timestamp>/).")
@click.option("--project-root", type=click.Path(path_type=Path), default=None,
              help="Root of the training code, to show source and make paths relative.")
@click.option("--rank", type=int, default=None, help="Analyze this rank in detail (default: the slowest).")
@quiet_option
def analyze(path, out_dir, project_root, rank):
    """Analyze an existing profile and write report.html, findings.json and findings.sarif."""
    from ..pipeline import analyze_profile, write_outputs

    started = time.perf_counter()
    collection = _collection_of(path)
    if project_root is None:
        project_root = script_root(collection)
    report = analyze_profile(path, project_root=project_root, rank=rank, collection=collection)
    if out_dir is None:
        stem = Path(path).name.split(".")[0] or "profile"
        out_dir = Path("npu_advise_out") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_outputs(report, out_dir)
    n = len(report.findings)
    info(f"npu-advise: {n} finding{'s' if n != 1 else ''} from {path} "
         f"(rank {report.trace.rank}, {report.trace.device_type}) in {time.perf_counter() - started:.2f} s", err=False)
    echo_top_findings(report, paths)


def script_root(collection: dict):
    """The folder of the profiled script (the project root `profile` itself analyzed with), or None."""
    if not collection.get("script"):
        return None
    script = Path(collection["script"])
    if not script.is_absolute():          # recorded as given on the command line of `profile`
        script = Path(collection.get("cwd") or ".") / script
    return script.parent


def _collection_of(path) -> dict:
    """The collector's record when PATH is (or is the trace folder of) a `profile` output folder."""
    import json

    p = Path(path)
    for folder in (p, p.parent):
        record = folder / "collection.json"
        if p.is_dir() and record.is_file():
            try:
                data = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}
