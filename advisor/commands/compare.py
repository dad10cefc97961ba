"""`npu-advise compare BEFORE AFTER`: what a change bought, from two profiles of the same script."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ..errors import UserError
from ..render.json_out import read_findings


def _trace_of_output(folder: Path, doc: dict) -> Path:
    """The trace an output folder was made from: its trace/ folder, else the recorded path."""
    if (folder / "trace").exists():
        return folder / "trace"
    recorded = [(doc.get("trace") or {}).get("path"), (doc.get("collection") or {}).get("trace")]
    for r in recorded:
        if r and Path(r).exists():
            return Path(r)
    raise UserError(f"{folder}: has findings.json but no trace/ folder, and the recorded trace "
                    f"({next((r for r in recorded if r), 'none')}) does not exist")


def load_side(path: Path, label: str, project_root: Optional[Path] = None, rank: Optional[int] = None):
    """A comparison Side from an output folder of profile/analyze (its findings.json and trace) or from a
    trace/profile path (analyzed now)."""
    from ..compare import side_from_report, side_from_trace
    from ..load import load_profile
    from ..pipeline import analyze_profile

    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file or directory")
    if p.is_dir() and (p / "findings.json").is_file():
        doc = read_findings(p / "findings.json")
        traces = load_profile(_trace_of_output(p, doc))
        want = rank if rank is not None else (doc.get("trace") or {}).get("rank")
        trace = next((t for t in traces if t.rank == want), traces[0])
        return side_from_trace(trace, doc["findings"], label)
    report = analyze_profile(p, project_root=project_root, rank=rank)
    return side_from_report(report, label)


def _project_root_of(path: Path) -> Optional[Path]:
    f = Path(path) / "findings.json"
    if f.is_file():
        try:
            root = json.loads(f.read_text(encoding="utf-8")).get("project_root")
        except (OSError, ValueError, AttributeError):
            return None
        return Path(root) if root else None
    return None


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer() or unit == "us":
        return f"{v:,.1f}"
    return f"{int(v):,}" if isinstance(v, (int, float)) else str(v)


def _table(headers: list, rows: list) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_text(c) -> str:
    out = [f"before: {c.before}", f"after:  {c.after}", ""]
    out.append(_table(["metric", "before", "after", "delta", "%"],
                      [[f"{r['metric']}{' (' + r['unit'] + ')' if r['unit'] else ''}", _fmt(r["before"], r["unit"]),
                        _fmt(r["after"], r["unit"]), _fmt(r["delta"], r["unit"]),
                        "-" if r["pct"] is None else f"{r['pct']:+.1f}%"] for r in c.summary]))
    out += ["", "per step (us), in recording order:"]
    out.append(_table(["#", "before step", "before", "after step", "after", "delta"],
                      [[r["index"], _fmt(r["before_step"]), _fmt(r["before_us"], "us"), _fmt(r["after_step"]),
                        _fmt(r["after_us"], "us"), _fmt(r["delta_us"], "us")] for r in c.steps]))
    if c.ops:
        out += ["", "operators that changed most (per step):"]
        out.append(_table(["op", "count before", "after", "delta", "us before", "after", "delta"],
                          [[r["name"][:60], _fmt(r["count_per_step_before"]), _fmt(r["count_per_step_after"]),
                            _fmt(r["count_delta"]), _fmt(r["us_per_step_before"], "us"),
                            _fmt(r["us_per_step_after"], "us"), _fmt(r["us_delta"], "us")] for r in c.ops]))
    out += ["", "findings of BEFORE:"]
    if c.findings:
        out.append(_table(["id", "status", "where", "title"],
                          [[r["id"], r["status"] + (f" -> {r['after_where']}" if r["status"].endswith("(moved)") else ""),
                            r["where"], (r["title"] or "")[:70]] for r in c.findings]))
    else:
        out.append("  (none)")
    if c.new_findings:
        out += ["", "new in AFTER:"]
        out.append(_table(["id", "where", "title"], [[r["id"], r["where"], (r["title"] or "")[:70]]
                                                     for r in c.new_findings]))
    gone = sum(r["status"] == "gone" for r in c.findings)
    out += ["", f"{gone} of {len(c.findings)} finding(s) gone, {len(c.new_findings)} new"]
    out += [f"note: {n}" for n in c.notes]
    return "\n".join(out)


@click.command()
@click.argument("before", type=click.Path(path_type=Path))
@click.argument("after", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the comparison as JSON to this file.")
@click.option("--project-root", type=click.Path(path_type=Path), default=None,
              help="Root of the training code for traces analyzed now (default: BEFORE's, if recorded).")
@click.option("--rank", type=int, default=None, help="Compare this rank of multi-rank profiles.")
@click.option("--top", type=int, default=None, help="How many changed operators to list (default 10).")
def compare(before, after, json_path, project_root, rank, top):
    """Compare BEFORE and AFTER: output folders of profile/analyze, or traces of the same script.

    Shows step time, device busy/free time and op counts side by side, the operators that changed most,
    and for each finding of BEFORE whether it is gone in AFTER.
    """
    from .. import compare as cmp

    root = project_root or _project_root_of(before) or _project_root_of(after)
    b = load_side(before, str(before), root, rank)
    a = load_side(after, str(after), root, rank)
    result = cmp.compare(b, a, top if top is not None else cmp.TOP_CHANGED_OPS)
    click.echo(render_text(result))
    if json_path is not None:
        try:
            Path(json_path).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{json_path}: cannot write ({exc.strerror})") from None
        click.echo(f"json: {json_path}")
