"""Findings: plain data, the one thing analyzers produce and renderers / `apply` consume.

`findings.json` is `{"schema_version": SCHEMA_VERSION, "tool": ..., "trace": ..., "findings": [...]}`;
each finding serializes with `Finding.to_dict()`. Bump SCHEMA_VERSION on any incompatible change.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Optional

SCHEMA_VERSION = "1.1"   # 1.1: Fix.function, Fix.function_lines, Fix.verification

CATEGORIES = (
    "op_hotspot", "host_bound", "communication", "sync", "cpu_fallback", "small_op_loop",
    "fused_op", "optimizer", "env", "migration",
)
SEVERITIES = ("high", "medium", "low", "info")


@dataclass
class Evidence:
    """One measured number: what it is, its value and unit, and how it was derived from the trace."""

    label: str
    value: float | int | str
    unit: str
    how: str


@dataclass
class Location:
    file: str          # relative to the project root where possible
    line: int
    function: str


@dataclass
class Fix:
    """A recommended change. `diff` is a unified diff (git-apply-able) when the change is a code edit."""

    description: str
    auto_applicable: bool
    diff: Optional[str] = None
    fix_id: Optional[str] = None              # what `npu-advise apply --fix` takes
    constraints: list = field(default_factory=list)   # catalog constraints the user must check
    catalog_ref: Optional[str] = None          # key into the recommendations catalog
    # For code edits: the file the diff applies to (relative to the project root) and the SHA-256 of
    # its content before and after, so `apply` refuses a changed file and recognizes an applied one.
    file: Optional[str] = None
    file_sha256: Optional[str] = None
    patched_sha256: Optional[str] = None
    # The function the rewrite replaces (qualified name, "<module>" for module-level code) and its
    # (first, last) line before the change; what the verification stage swaps in.
    function: Optional[str] = None
    function_lines: Optional[list] = None
    # What the verification stage found on the user's own run (npu_advise.verify): status "verified",
    # "rejected" (then auto_applicable is False) or "not_verifiable", the reason, the numbers and a
    # one-sentence "summary". None when the stage did not run.
    verification: Optional[dict] = None


@dataclass
class Finding:
    rule: str                                  # stable code, e.g. "NPA101"
    category: str                              # one of CATEGORIES
    title: str
    severity: str                              # one of SEVERITIES
    evidence: list = field(default_factory=list)        # list[Evidence]
    locations: list = field(default_factory=list)       # list[Location]
    estimated_saving_us: Optional[float] = None          # per step; None when the trace cannot support a number
    fix: Optional[Fix] = None
    # Free-form structured detail for the report (tables, per-step series). Must be JSON-serializable.
    details: dict = field(default_factory=dict)
    predicted: bool = False                    # True when inferred for the NPU from a CPU/GPU trace
    # What the finding is about when one rule can fire several times at one place (an op name, an
    # environment variable). Part of the id; must not contain measured numbers, so ids stay stable.
    subject: Optional[str] = None
    # A context row: it describes the trace (an operator ranking) or notes a setting without measured
    # evidence of its cost, so it names no problem to fix by itself. Ranked after every actionable
    # finding (see `rank`). Set by the analyzer that knows; the one notion every ranking uses.
    context: bool = False

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown finding category {self.category!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def id(self) -> str:
        """Stable across runs of the same code: the rule plus where it points."""
        where = ";".join(f"{l.file}:{l.line}" for l in self.locations)
        key = f"{where}|{self.subject or ''}" if (where or self.subject) else self.title
        return f"{self.rule}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["id"] = self.id
        return d


def rank(findings: list) -> list:
    """The one order of findings: the report, findings.json, SARIF and the console top-5 all use it.

    1. Actionable findings before context rows (`Finding.context`).
    2. Then by severity band, high > medium > low > info: a high finding is never listed below a low one.
    3. Within a band, the larger estimated saving per step first; findings without an estimate (the
       trace cannot support a number) follow the estimated ones of their band.
    4. Ties: rule code, then title, so the order is stable across runs.
    Severities are set from the share of the step a finding costs (`severity_for_share`) where it is
    measured, so within the estimated findings the band order and the saving order agree.
    """
    sev = {s: i for i, s in enumerate(SEVERITIES)}

    def key(f):
        saving = f.estimated_saving_us
        known = saving is not None and saving == saving   # NaN counts as unknown
        return (bool(f.context), sev[f.severity], not known, -(saving if known else 0.0), f.rule, f.title)

    return sorted(findings, key=key)


def severity_for_share(share: float) -> str:
    """Severity from the fraction of the average step a finding costs (msprof-analyze's cut-offs:
    high >= 5 %, medium >= 3 %)."""
    if share >= 0.05:
        return "high"
    if share >= 0.03:
        return "medium"
    return "low"
