"""The analysis pipeline: load -> analyze -> recommend (-> verify, npu_advise.verify) -> render. Shared by
`profile`, `analyze` and `verify`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import findings as F
from .errors import UserError


@dataclass
class Report:
    """Everything a renderer needs; renderers compute nothing from traces."""

    trace: object                         # the analyzed Trace (one rank)
    findings: list                        # ranked list[Finding]
    tables: dict                          # analyzer result tables
    limitations: list                     # what the trace lacks and what that prevents
    ranks: Optional[object] = None        # cross-rank Analysis (multi-rank profiles), else None
    collection: dict = field(default_factory=dict)   # how the profile was collected (profile command)
    project_root: Optional[str] = None
    candidates: dict = field(default_factory=dict)   # finding id -> Candidate, for the verification stage


def analyze_profile(path, project_root: Optional[Path] = None, rank: Optional[int] = None,
                    collection: Optional[dict] = None) -> Report:
    from .analyzers import Context, run_all
    from .load import load_profile

    traces = load_profile(path)
    ranks = None
    if len(traces) > 1:
        from .analyzers.ranks import compare_ranks
        ranks = compare_ranks(traces)
    trace = _pick_rank(traces, rank, ranks)
    ctx = Context(project_root=Path(project_root) if project_root else None)
    if ranks is not None:
        ctx.findings.extend(ranks.findings)
        ctx.tables.update(ranks.tables)
    run_all(trace, ctx)
    from .recommendations import cache, recommend
    ctx.findings.extend(recommend(trace, ctx, cache_dir=cache.default_dir()))
    return Report(trace=trace, findings=F.rank(ctx.findings), tables=ctx.tables,
                  limitations=list(trace.limitations), ranks=ranks, collection=collection or {},
                  project_root=str(project_root) if project_root else None, candidates=ctx.candidates)


def _pick_rank(traces: list, rank: Optional[int], ranks) -> object:
    if rank is not None:
        for t in traces:
            if t.rank == rank:
                return t
        raise UserError(f"rank {rank} not found (ranks present: {', '.join(str(t.rank) for t in traces)})")
    if ranks is not None and ranks.tables.get("slowest_rank") is not None:
        slowest = ranks.tables["slowest_rank"]
        for t in traces:
            if t.rank == slowest:
                return t
    return traces[0]


def write_outputs(report: Report, out_dir: Path) -> dict:
    """Write findings.json, findings.sarif and report.html; returns their paths."""
    from .render import html, json_out, sarif

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "findings": out_dir / "findings.json",
        "sarif": out_dir / "findings.sarif",
        "html": out_dir / "report.html",
    }
    json_out.write_findings(report, paths["findings"])
    sarif.write_sarif(report, paths["sarif"])
    html.write_report(report, paths["html"])
    return paths
