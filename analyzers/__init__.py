"""Analyzers: one module per analysis, each a pure function of the trace model.

Each module defines its rules (`npu_advise.rules.Rule`) at import time and a function
`analyze(trace, ctx) -> Analysis`. They run in the order of ANALYZERS; later analyzers may read the
findings of earlier ones from `ctx.findings` (the host-bound analysis cites the syncs, fallbacks and
loops found in the same trace).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# Order matters: causes first, then the analyses that cite them.
ANALYZERS = (
    "op_ranking",
    "communication",
    "syncs",
    "environment",
    "cpu_fallback",
    "npu_runtime",
    "small_op_loops",
    "host_work",
    "optimizer",
    "host_bound",
)


@dataclass
class Context:
    project_root: Optional[Path] = None     # where user source files are resolved and made relative
    findings: list = field(default_factory=list)   # findings of the analyzers that ran before
    tables: dict = field(default_factory=dict)     # tables of the analyzers that ran before
    candidates: dict = field(default_factory=dict) # finding id -> recommendations.Candidate (the recommender's)


@dataclass
class Analysis:
    findings: list = field(default_factory=list)
    # Named result tables for the report, e.g. {"top_host_ops": DataFrame}. Values are DataFrames or
    # JSON-serializable dicts/lists.
    tables: dict = field(default_factory=dict)


def load_all() -> list:
    return [importlib.import_module(f"{__name__}.{name}") for name in ANALYZERS]


def run_all(trace, ctx: Context) -> Context:
    for module in load_all():
        result = module.analyze(trace, ctx)
        ctx.findings.extend(result.findings)
        ctx.tables.update(result.tables)
    return ctx
