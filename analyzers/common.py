"""Helpers shared by analyzers: step statistics and source locations."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from npu_advise.findings import Location


@dataclass
class StepStats:
    count: int            # number of steps averaged over (1 when the trace has no step ranges)
    mean_ns: float        # mean step duration
    ids: list             # step ids (empty without step ranges)
    from_ranges: bool     # False: no ProfilerStep ranges, the whole trace span counts as one step


def step_stats(trace) -> StepStats:
    steps = trace.steps
    if len(steps):
        return StepStats(len(steps), float(steps["dur"].mean()), [int(s) for s in steps["step"]], True)
    frames = [df for df in (trace.ops, trace.kernels, trace.runtime) if len(df)]
    if not frames:
        return StepStats(1, 0.0, [], False)
    start = min(int(df["ts"].min()) for df in frames)
    end = max(int((df["ts"] + df["dur"]).max()) for df in frames)
    return StepStats(1, float(end - start), [], False)


def in_steps(df, stats: StepStats):
    """Rows of an event table that fall in the averaged steps (all rows when there are no steps)."""
    return df[df["step"] >= 0] if stats.from_ranges else df


def relative_path(file: str, project_root: Optional[Path]) -> str:
    if project_root is None or not file:
        return file
    return _relative_path(file, str(project_root))


@lru_cache(maxsize=4096)
def _relative_path(file: str, project_root: str) -> str:
    # cached: reports locate hundreds of findings and ops in the same few files (Path.resolve is a syscall each)
    try:
        return os.path.relpath(Path(file).resolve(), Path(project_root).resolve()) \
            if os.path.isabs(file) and Path(file).resolve().is_relative_to(Path(project_root).resolve()) else file
    except (OSError, ValueError):
        return file


def location(trace, loc: int, project_root: Optional[Path] = None) -> Optional[Location]:
    d = trace.location(loc)
    if d is None:
        return None
    return Location(file=relative_path(d["file"], project_root), line=d["line"], function=d["function"])


def resolve_source(file: str, project_root: Optional[Path]) -> Optional[Path]:
    """The file on disk for a location (absolute, or relative to the project root / cwd), or None."""
    candidates = [Path(file)]
    if project_root is not None:
        candidates.insert(0, Path(project_root) / file)
    for c in candidates:
        if c.is_file():
            return c
    return None


def us(ns) -> float:
    return float(np.round(float(ns) / 1000.0, 3))


def category_codes(col):
    """(codes, categories as an object array) of a categorical column; a plain column is encoded first.
    Code -1 (missing) indexes the extra None appended to the categories."""
    import pandas as pd

    if not isinstance(col.dtype, pd.CategoricalDtype):
        col = col.astype("category")
    cats = np.empty(len(col.cat.categories) + 1, dtype=object)
    cats[:-1] = col.cat.categories.to_numpy(dtype=object)
    codes = col.cat.codes.to_numpy()
    if len(codes) and codes.min() < 0:
        codes = np.where(codes < 0, len(cats) - 1, codes)
    return codes, cats


def category_mask(col, predicate) -> np.ndarray:
    """Row mask of a categorical column with `predicate` evaluated once per category, not per row
    (a regex over a million repeated names costs as many calls as there are distinct names)."""
    codes, cats = category_codes(col)
    hit = np.fromiter((c is not None and bool(predicate(c)) for c in cats), dtype=bool, count=len(cats))
    return hit[codes]


def row_names(col) -> np.ndarray:
    """The values of a categorical column as an object array of str, by indexing the categories (no
    per-row string conversion)."""
    codes, cats = category_codes(col)
    return cats[codes]
