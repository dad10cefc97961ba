"""findings.sarif: SARIF 2.1.0 for code-scanning tools (GitHub code scanning, VS Code SARIF viewer).

One result per finding that points at source code (findings without a location, such as whole-run
host-bound figures, stay in findings.json and the HTML report). Rule metadata comes from the Rule
registry, so a rule's doc is written once.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..rules import all_rules

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
LEVEL = {"high": "error", "medium": "warning", "low": "note", "info": "note"}


def _rule_descriptor(rule) -> dict:
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.detects},
        "fullDescription": {"text": f"{rule.detects} {rule.why}"},
        "help": {"text": rule.text()},
        "properties": {"category": rule.category, "thresholds": {k: v for k, v in rule.thresholds.items()}},
    }


def _message(finding) -> str:
    ev = "; ".join(f"{e.label}: {e.value}{(' ' + e.unit) if e.unit else ''}" for e in finding.evidence)
    text = finding.title + (f" ({ev})" if ev else "")
    if finding.estimated_saving_us is not None:
        text += f". Estimated saving: {finding.estimated_saving_us:,.1f} us per step"
    if finding.predicted:
        text += ". Predicted for the NPU from a trace of another device"
    return text


def _uri(file: str) -> str:
    return Path(file).as_posix()


def to_sarif(report) -> dict:
    rules = all_rules()
    used = sorted({f.rule for f in report.findings if f.locations})
    descriptors = [_rule_descriptor(rules[c]) for c in used if c in rules]
    index = {d["id"]: i for i, d in enumerate(descriptors)}
    results = []
    for f in report.findings:
        if not f.locations:
            continue
        locs = [{"physicalLocation": {"artifactLocation": {"uri": _uri(l.file), "uriBaseId": "PROJECTROOT"},
                                      "region": {"startLine": max(int(l.line), 1)}},
                 "logicalLocations": [{"name": l.function, "kind": "function"}] if l.function else []}
                for l in f.locations]
        result = {"ruleId": f.rule, "level": LEVEL.get(f.severity, "note"),
                  "message": {"text": _message(f)}, "locations": locs[:1],
                  "partialFingerprints": {"npuAdviseFindingId": f.id},
                  "properties": {"category": f.category, "severity": f.severity, "predicted": f.predicted,
                                 "estimated_saving_us": f.estimated_saving_us}}
        if f.fix is not None and f.fix.verification:
            v = f.fix.verification
            result["properties"]["verification"] = {"status": v.get("status"), "summary": v.get("summary")}
        if len(locs) > 1:
            result["relatedLocations"] = [dict(l, id=i) for i, l in enumerate(locs[1:], start=1)]
        if f.rule in index:
            result["ruleIndex"] = index[f.rule]
        results.append(result)
    run = {"tool": {"driver": {"name": "npu-advise", "version": __version__, "rules": descriptors}},
           "results": results, "columnKind": "unicodeCodePoints"}
    if report.project_root:
        run["originalUriBaseIds"] = {"PROJECTROOT": {"uri": Path(report.project_root).resolve().as_uri() + "/"}}
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def write_sarif(report, path):
    Path(path).write_text(json.dumps(to_sarif(report), indent=2, default=str), encoding="utf-8")
