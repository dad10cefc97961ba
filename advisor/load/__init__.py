"""Loaders: turn profiler output on disk into `Trace` objects (one per rank)."""
from __future__ import annotations

import os
from pathlib import Path

from .. import progress
from ..errors import TraceFormatError, UserError

KINETO_SUFFIXES = (".json", ".json.gz", ".pt.trace.json", ".pt.trace.json.gz")
# JSON files npu-advise itself writes next to traces (an output folder of `profile` / `analyze`).
OWN_OUTPUTS = ("findings.json", "collection.json", "journal.json", "compare.json")


def is_kineto_file(p: Path) -> bool:
    name = p.name
    return (p.is_file() and name.endswith(KINETO_SUFFIXES) and name != "trace_view.json"
            and name not in OWN_OUTPUTS and not name.startswith("collection.rank"))


def load_kineto_file(path) -> "Trace":
    from .kineto import load_kineto
    try:
        return load_kineto(str(path))
    except MemoryError:
        raise UserError(f"{path}: out of memory while loading the trace") from None


def find_profiles(path) -> list:
    """What `analyze PATH` will load: a list of (kind, path) with kind 'kineto' or 'ascend'."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file or directory")
    if p.is_file():
        if p.name.endswith(".gz"):
            return [("kineto", p)]    # torch_npu writes no compressed traces: no need to import its reader
        from . import ascend
        if p.name == "trace_view.json" or p.suffix == ".db" or ascend.is_ascend_trace_file(p):
            return [("ascend", p)]   # load_ascend_rank reads the rank folder when the file lies in one
        return [("kineto", p)]
    if (p / "trace").is_dir() and (p / "collection.json").is_file():
        p = p / "trace"     # an output folder of `npu-advise profile`: its traces are in trace/
    from . import ascend
    if ascend.is_ascend_dir(p):
        return [("ascend", d) for d in ascend.rank_dirs(p)]
    found = sorted(q for q in p.rglob("*") if is_kineto_file(q) and not q.name.startswith("."))
    if found:
        return [("kineto", q) for q in found]
    raise UserError(f"{path}: not a profile (no Kineto trace *.json[.gz] and no torch_npu *_ascend_pt folder inside)")


def load_profile(path) -> list:
    """Load every rank found at `path`; returns a list of Trace sorted by rank."""
    traces = []
    profiles = find_profiles(path)
    for kind, p in (progress.track(profiles, f"loading {len(profiles)} ranks", unit="ranks") if len(profiles) > 1
                    else profiles):
        if kind == "kineto":
            traces.append(load_kineto_file(p))
        else:
            from .ascend import load_ascend_rank
            traces.append(load_ascend_rank(p))
    for i, t in enumerate(traces):
        if t.rank is None:
            t.rank = i
    return sorted(traces, key=lambda t: t.rank)
