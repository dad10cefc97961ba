"""findings.json: the machine-readable report (versioned schema, see npu_advise.findings)."""
from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..findings import SCHEMA_VERSION


def trace_summary(trace) -> dict:
    return {
        "path": trace.path, "format": trace.fmt, "device_type": trace.device_type, "rank": trace.rank,
        "world_size": trace.world_size, "steps": [int(s) for s in trace.steps["step"]],
        "host_ops": int(len(trace.ops)), "device_events": int(len(trace.kernels)),
    }


def to_json(report) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "npu-advise", "version": __version__},
        "trace": trace_summary(report.trace),
        "collection": report.collection,
        "project_root": report.project_root,
        "limitations": report.limitations,
        "findings": [f.to_dict() for f in report.findings],
    }


def read_findings(path: Path) -> dict:
    """A findings.json as written by `write_findings`; a one-line UserError when unreadable."""
    from ..errors import UserError

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable findings.json ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("findings"), list):
        raise UserError(f"{path}: not a findings.json (no 'findings' list)")
    return doc


def write_findings(report, path: Path):
    doc = to_json(report)
    if report.project_root:
        from ..apply.relocate import source_record
        edits = [(f.fix.file, f.fix.file_sha256) for f in report.findings if f.fix is not None and f.fix.file]
        doc["source"] = source_record(report.project_root, Path(path).parent, edits)
    Path(path).write_text(json.dumps(doc, indent=2, default=json_default), encoding="utf-8")


def json_default(o):
    """numpy scalars and arrays that slipped into details become plain JSON values."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
