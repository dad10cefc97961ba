"""report.html: one self-contained page (plotly.js, CSS and JS inline) that works offline.

`write_report` turns a `Report` into a view model (formatted strings, chart specs, snippets) and
renders `templates/report.html.j2` with autoescaping on. Nothing here computes from the trace beyond
its summary (path, device, steps): every number comes from findings and analyzer tables.

Escaping: every string from a trace or a path reaches the page through Jinja2 autoescaping; only
our own assets (plotly.js, CSS, JS) and the chart JSON (with `<` escaped) are marked safe.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import numbers
import secrets
import shlex
from pathlib import Path
from typing import Optional

from markupsafe import Markup

from .. import __version__
from ..findings import SEVERITIES
from . import charts
from .json_out import json_default
from .snippets import SnippetReader

CATEGORY_LABELS = {
    "op_hotspot": "Operator hotspots",
    "host_bound": "Host-bound: device idle time",
    "communication": "Communication",
    "sync": "Synchronizations",
    "cpu_fallback": "CPU fallbacks",
    "small_op_loop": "Loops of small operators",
    "fused_op": "Fused operators",
    "optimizer": "Optimizer",
    "env": "Environment",
    "migration": "Migration",
}
# Each finding shows source for at most this many of its locations (the rest are listed).
SNIPPETS_PER_FINDING = 3
# The "device free" card is drawn as a warning from this share of the step (display only; the
# host-bound rule has its own threshold).
FREE_WARN_SHARE = 0.10


def write_report(report, path) -> Path:
    """Write report.html atomically. The 4.6 MB plotly.js bundle is streamed into the file as bytes
    at a placeholder, not pushed through the template engine (which would copy it several times)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    placeholder = f"/*npu-advise:plotly.js:{secrets.token_hex(16)}*/"
    before, after = render_report(report, report_dir=path.parent, plotly_placeholder=placeholder).split(placeholder)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(before.encode("utf-8"))
        out.write(_plotly_bytes())
        out.write(after.encode("utf-8"))
    tmp.replace(path)
    return path


def render_report(report, report_dir: Optional[Path] = None, plotly_placeholder: Optional[str] = None) -> str:
    """The page; with `plotly_placeholder`, that text stands where plotly.js goes (see `write_report`;
    a random token, so no string from the trace can collide with it)."""
    view = build_view(report, report_dir)
    assets = _assets()
    return _template().render(
        view=view,
        css=Markup(assets["css"]),
        report_js=Markup(assets["js"]),
        plotly_js=Markup(plotly_placeholder if plotly_placeholder is not None else charts.plotly_js()),
        chart_json=Markup(_script_json(view["charts"])),
        plotly_config=Markup(_script_json(charts.PLOTLY_CONFIG)),
    )


def _plotly_bytes() -> bytes:
    # `</script` cannot occur in the bundle's code, only in its strings or regexes, where `<\/` means
    # the same; escaping it keeps the inline <script> from being closed early.
    return charts.plotly_js_path().read_bytes().replace(b"</script", b"<\\/script")


# ---------------------------------------------------------------------------------------------
# View model


def build_view(report, report_dir: Optional[Path] = None) -> dict:
    trace = report.trace
    tables = report.tables or {}
    step_avg_us = _average_step_us(trace, tables)
    rules, rules_note = _rules()
    snippets = SnippetReader(report.project_root)
    report_dir = Path(report_dir) if report_dir is not None else None

    findings = [_finding_view(f, i, rules, snippets, report_dir, step_avg_us)
                for i, f in enumerate(report.findings)]
    groups = _groups(findings)
    cited = []
    for f in findings:
        if f["rule"] not in cited:
            cited.append(f["rule"])
    return {
        "title": f"npu-advise report: {Path(str(trace.path)).name}",
        "header": _header(report),
        "collection": _collection(report.collection or {}),
        "limitations": [str(x) for x in (report.limitations or [])],
        "cards": _cards(report, findings, step_avg_us),
        "charts": _charts(trace, tables, report.ranks),
        "chart_tables": {f"chart-top-{side}": _op_rows(tables.get(f"op_ranking.{side}"))
                         for side in ("host", "device") if tables.get(f"op_ranking.{side}") is not None},
        "groups": groups,
        "ranked": findings,
        "rules_cited": [_rule_view(rules[c]) for c in cited if c in rules],
        "rules_missing": [c for c in cited if c not in rules],
        "rules_other": [_rule_view(r) for c, r in rules.items() if c not in cited],
        "rules_note": rules_note,
        "version": __version__,
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def _average_step_us(trace, tables) -> Optional[float]:
    steps = tables.get("host_bound.steps")
    if steps is not None and len(steps) and "duration_us" in getattr(steps, "columns", []):
        return float(steps["duration_us"].mean())
    if len(trace.steps):
        return float(trace.steps["dur"].mean()) / 1000.0
    return None


def _header(report) -> list:
    t = report.trace
    rank = "—" if t.rank is None else str(t.rank)
    world = f" of {t.world_size}" if t.world_size else ""
    step_ids = [int(s) for s in t.steps["step"].tolist()] if len(t.steps) else []
    if step_ids:
        span = f"#{step_ids[0]}" if len(step_ids) == 1 else f"#{step_ids[0]}–#{step_ids[-1]}"
        steps = f"{len(step_ids)} ({span})"
    else:
        steps = "none recorded: the whole trace counts as one step"
    rank_table, slowest = _rank_table(report.tables or {}, report.ranks)
    if rank_table is not None and len(rank_table):
        n = len(rank_table)
        role = "the slowest" if slowest is not None and t.rank == slowest else "chosen"
        world = f"{world}; {role} of {n} ranks analyzed, detailed below"
    rows = [
        ("Trace", str(t.path)),
        ("Format", str(t.fmt)),
        ("Device", _device_label(t.device_type)),
        ("Rank", f"{rank}{world}"),
        ("Steps analyzed", steps),
        ("Events", f"{len(t.ops):,} host operators, {len(t.kernels):,} device activities"),
    ]
    if report.project_root:
        rows.append(("Project root", str(report.project_root)))
    rows.append(("Collected", _collected(report.collection or {})))
    return rows


def _collected(c: dict) -> str:
    """One line on how the profile was collected, from the collector's record (collection.json)."""
    if not c:
        return "existing trace (not collected by npu-advise profile)"
    if c.get("how"):
        return str(c["how"])
    parts = []
    if c.get("script"):
        args = [str(a) for a in c.get("args") or []]
        parts.append("npu-advise profile " + shlex.join([str(c["script"]), *args]))
    if c.get("profiler") or c.get("device"):
        parts.append(" on ".join(str(x) for x in (c.get("profiler"), c.get("device")) if x))
    if c.get("steps_recorded") is not None:
        seen = f" of {c['steps_seen']} seen" if c.get("steps_seen") is not None else ""
        parts.append(f"{c['steps_recorded']} steps recorded{seen}")
    if c.get("world_size") and int(c["world_size"]) > 1:
        parts.append(f"{c['world_size']} ranks via {c.get('launcher') or 'a launcher'}")
    if c.get("outcome"):
        parts.append(f"outcome: {c['outcome']}")
    return "; ".join(parts) or "by npu-advise profile (details below)"


def _device_label(device_type: str) -> str:
    return {"cpu": "CPU only (no device timeline)", "cuda": "CUDA GPU", "rocm": "ROCm GPU",
            "npu": "Ascend NPU"}.get(str(device_type), str(device_type))


def _collection(collection: dict) -> list:
    """Key/value rows of how the profile was collected; nested values as pretty JSON."""
    rows = []
    for key, value in collection.items():
        if isinstance(value, (dict, list, tuple)):
            if not value:
                continue
            rows.append({"key": str(key), "value": None,
                         "block": json.dumps(value, indent=1, sort_keys=True, default=str)})
        else:
            rows.append({"key": str(key), "value": str(value), "block": None})
    return rows


def _cards(report, findings, step_avg_us) -> list:
    cards = []
    if step_avg_us is not None:
        cards.append(_card("Average step", fmt_time(step_avg_us), _steps_note(report)))
    steps = report.tables.get("host_bound.steps") if report.tables else None
    if steps is not None and len(steps) and "busy_us" in steps.columns:
        busy = float(steps["busy_us"].mean())
        free = float(steps["free_us"].mean()) if "free_us" in steps.columns else None
        total = float(steps["duration_us"].mean())
        cards.append(_card("Device busy", fmt_time(busy), f"{_pct(busy, total)} of the step"))
        if free is not None:
            note = f"{_pct(free, total)} of the step"
            if "host_wait_us" in steps.columns:
                note += f"; {fmt_time(float(steps['host_wait_us'].mean()))} waiting for the host"
            cards.append(_card("Device free", fmt_time(free), note, warn=total > 0 and free / total >= FREE_WARN_SHARE))
    by_sev = {s: sum(1 for f in findings if f["severity"] == s) for s in SEVERITIES}
    found = _card("Findings", f"{len(findings)}",
                  ", ".join(f"{n} {s}" for s, n in by_sev.items() if n) or "nothing to report")
    by_cat: dict = {}
    for f in findings:
        by_cat[f["category"]] = by_cat.get(f["category"], 0) + 1
    found["chips"] = [{"anchor": f"cat-{c}", "label": CATEGORY_LABELS.get(c, c), "count": n}
                      for c, n in by_cat.items()]
    cards.append(found)
    savings = [f["saving_us"] for f in findings if f["saving_us"] is not None]
    if savings:
        total_saving = sum(savings)
        note = f"sum of {len(savings)} estimates; they can overlap"
        if step_avg_us:
            note = f"≈ {_pct(total_saving, step_avg_us)} of the step; " + note
        cards.append(_card("Estimated saving per step", fmt_time(total_saving), note, good=True))
    return cards


def _card(label: str, value: str, note: str, warn: bool = False, good: bool = False) -> dict:
    return {"label": label, "value": value, "note": note, "warn": warn, "good": good, "chips": []}


def _steps_note(report) -> str:
    n = len(report.trace.steps)
    return f"mean of {n} profiler step{'s' if n != 1 else ''}" if n else "whole trace, no step ranges"


def _rank_table(tables, ranks):
    """(`ranks.table`, slowest rank) from the report's tables or its cross-rank analysis."""
    if tables.get("ranks.table") is not None:
        return tables["ranks.table"], tables.get("slowest_rank")
    if ranks is not None:
        rt = getattr(ranks, "tables", {}) or {}
        return rt.get("ranks.table"), rt.get("slowest_rank")
    return None, None


def _charts(trace, tables, ranks) -> list:
    # The cross-rank comparison comes first: it says which rank the rest of the page describes.
    rank_table, slowest = _rank_table(tables, ranks)
    specs = [charts.ranks(rank_table, slowest), charts.step_breakdown(tables.get("host_bound.steps"))]
    bounds = None
    if len(trace.steps):
        start = int(trace.steps["ts"].min())
        bounds = sorted({(int(t) - start) / 1000.0 for t in trace.steps["ts"].tolist()}
                        | {(int(t) + int(d) - start) / 1000.0
                           for t, d in zip(trace.steps["ts"].tolist(), trace.steps["dur"].tolist())})
    specs.append(charts.timeline(tables.get("host_bound.timeline"), bounds))
    tops = [charts.top_ops(tables.get("op_ranking.host"), "host"),
            charts.top_ops(tables.get("op_ranking.device"), "device")]
    tops = [s for s in tops if s is not None]
    specs = [s for s in specs if s is not None]
    for s in specs:
        s["wide"] = True
    for s in tops:
        s["wide"] = len(tops) == 1      # the two rankings sit side by side; one alone takes the row
    return specs + tops


def _op_rows(table) -> list:
    """The operator ranking's top rows as text, for the table under its chart."""
    rows = []
    if table is None:
        return rows
    for rec in table.head(charts.TOP_OPS_SHOWN).to_dict("records"):
        share = rec.get("share_of_step")
        rows.append({
            "name": str(rec.get("name", "")),
            "count": fmt_number(rec["count"]) if rec.get("count") is not None else "—",
            "per_step": fmt_time(float(rec["per_step_us"])) if rec.get("per_step_us") is not None else "—",
            "mean": fmt_time(float(rec["mean_us"])) if rec.get("mean_us") is not None else "—",
            "share": f"{100.0 * float(share):.1f} %" if share is not None and share == share else "—",
            "locations": str(rec.get("locations") or ""),
        })
    return rows


def _groups(findings: list) -> list:
    """Findings grouped by category; groups ordered by their best-ranked finding (the list is ranked)."""
    groups: dict = {}
    for f in findings:
        groups.setdefault(f["category"], []).append(f)
    out = []
    for cat, items in groups.items():
        savings = [f["saving_us"] for f in items if f["saving_us"] is not None]
        out.append({"category": cat, "label": CATEGORY_LABELS.get(cat, cat), "anchor": f"cat-{cat}",
                    "findings": items, "saving": fmt_time(sum(savings)) if savings else None})
    return out


def _finding_view(f, index: int, rules: dict, snippets: SnippetReader, report_dir, step_avg_us) -> dict:
    saving = f.estimated_saving_us
    saving_ok = saving is not None and not (isinstance(saving, float) and math.isnan(saving))
    locs = []
    for i, loc in enumerate(f.locations):
        snip = snippets.snippet(loc.file, loc.line) if i < SNIPPETS_PER_FINDING else None
        locs.append({"file": str(loc.file), "line": int(loc.line), "function": str(loc.function),
                     "snippet": snip})
    return {
        "index": index + 1,
        "id": f.id,
        "anchor": f"finding-{f.id}",
        "rule": f.rule,
        "rule_known": f.rule in rules,
        "category": f.category,
        "category_label": CATEGORY_LABELS.get(f.category, f.category),
        "title": f.title,
        "severity": f.severity,
        "predicted": bool(f.predicted),
        "evidence": [_evidence_view(e) for e in f.evidence],
        "locations": locs,
        "saving_us": float(saving) if saving_ok else None,
        "saving": fmt_time(float(saving)) if saving_ok else None,
        "saving_share": _pct(float(saving), step_avg_us) if saving_ok and step_avg_us else None,
        "fix": _fix_view(f, report_dir),
        "details": _details_view(f.details or {}),
    }


def _evidence_view(e) -> dict:
    value, unit = e.value, str(e.unit or "")
    if unit in _TO_US and isinstance(value, numbers.Real) and not isinstance(value, bool):
        text = fmt_time(float(value) * _TO_US[unit])    # every duration in the page reads µs / ms / s
        unit = ""
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        text = fmt_number(value)
        if unit in ("fraction", "ratio") and 0 <= float(value) <= 1:
            text, unit = f"{100.0 * float(value):.1f}", "%"
    else:
        text = str(value)
    if unit == "count":     # a bare number already reads as a count
        unit = ""
    return {"label": str(e.label), "value": text, "unit": unit, "how": str(e.how)}


_TO_US = {"ns": 1e-3, "us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}


def _fix_view(f, report_dir) -> Optional[dict]:
    fix = f.fix
    if fix is None:
        return None
    command = None
    verification = fix.verification or None
    if fix.auto_applicable and fix.fix_id:
        where = shlex.quote(str(report_dir)) if report_dir is not None else "<report dir>"
        command = f"npu-advise apply {where} --fix {shlex.quote(str(fix.fix_id))}"
        if (verification or {}).get("status") != "verified":
            command += " --include-unverified"      # apply takes verified fixes only without it
    return {
        "description": str(fix.description),
        "auto": bool(fix.auto_applicable),
        "fix_id": fix.fix_id,
        "constraints": [str(c) for c in (fix.constraints or [])],
        "catalog_ref": fix.catalog_ref,
        "file": fix.file,
        "diff": _diff_lines(fix.diff) if fix.diff else None,
        "command": command,
        "verification": {"status": verification.get("status"), "summary": verification.get("summary")}
        if verification else None,
    }


def _diff_lines(diff: str) -> list:
    """(css class, text) per line of a unified diff."""
    out = []
    for line in str(diff).splitlines():
        if line.startswith(("+++", "---")):
            cls = "d-file"
        elif line.startswith("@@"):
            cls = "d-hunk"
        elif line.startswith("+"):
            cls = "d-add"
        elif line.startswith("-"):
            cls = "d-del"
        else:
            cls = "d-ctx"
        out.append((cls, line))
    return out


def _details_view(details: dict) -> list:
    rows = []
    for key, value in details.items():
        if isinstance(value, (dict, list, tuple)):
            text = json.dumps(value, default=str)
            if len(text) > 400:
                text = text[:399] + "…"
        elif isinstance(value, float):
            text = fmt_number(value)
        else:
            text = str(value)
        rows.append((str(key), text))
    return rows


def _rules():
    """The rule registry, or what has registered so far with a note when an analyzer fails to import."""
    from .. import rules as rules_mod
    try:
        return rules_mod.all_rules(), None
    except ImportError as e:
        # A broken analyzer module should not cost the user the whole report.
        return dict(sorted(rules_mod._RULES.items())), f"some rule docs are missing: {e}"


def _rule_view(rule) -> dict:
    return {"code": rule.code, "name": rule.name, "category": rule.category,
            "category_label": CATEGORY_LABELS.get(rule.category, rule.category),
            "detects": rule.detects, "why": rule.why, "fix": rule.fix,
            "thresholds": [(str(k), str(v)) for k, v in (rule.thresholds or {}).items()]}


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_time(us: float) -> str:
    """A duration given in µs, with its unit: µs below 1 ms, ms below 1 s, else s."""
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return "—"
    a = abs(us)
    if a >= 1_000_000:
        return f"{us / 1_000_000:,.2f} s"
    if a >= 1000:
        return f"{us / 1000:,.2f} ms"
    if a >= 10:
        return f"{us:,.1f} µs"
    return f"{us:,.3f} µs"


def fmt_number(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, numbers.Integral):
        return f"{int(v):,}"
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return "—"
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.1f}"
    return f"{v:,.3g}" if abs(v) >= 1 else f"{v:.3g}"


def _pct(part: float, whole: Optional[float]) -> str:
    if not whole:
        return "—"
    return f"{100.0 * part / whole:.1f} %"


def _script_json(obj) -> str:
    """JSON for an inline <script> block: `<` escaped so no `</script>` or `<!--` can end it early."""
    dump = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"), default=json_default,
                             allow_nan=False)
    try:
        text = dump(obj)
    except ValueError:          # NaN / infinity somewhere: the (slower) cleaning walk only then
        text = dump(_finite(obj))
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _finite(obj):
    """NaN / infinity (not valid JSON) become null, which plotly draws as a gap."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Templates and assets (package data, so an installed wheel works from any directory)


@functools.lru_cache(maxsize=1)
def _env():
    import jinja2
    # Templates are read through importlib.resources from the `npu_advise.templates` package (the
    # repository's templates/ folder), which works for editable and wheel installs alike.
    # The bytecode cache (a per-user folder in the temp dir, keyed by the template's checksum) spares
    # each run the ~0.1 s compile of the template.
    env = jinja2.Environment(loader=jinja2.FunctionLoader(_template_source),
                             bytecode_cache=jinja2.FileSystemBytecodeCache(),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["time"] = fmt_time
    return env


def _template_source(name: str):
    from importlib import resources
    try:
        source = resources.files("npu_advise.templates").joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return source, None, lambda: True


def _template():
    return _env().get_template("report.html.j2")


@functools.lru_cache(maxsize=1)
def _assets() -> dict:
    from importlib import resources
    base = resources.files("npu_advise.templates")
    return {"css": base.joinpath("report.css").read_text(encoding="utf-8"),
            "js": base.joinpath("report.js").read_text(encoding="utf-8").replace("</script", "<\\/script")}
