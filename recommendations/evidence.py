"""Profile evidence at source lines: which recorded ops ran at a file's lines, for how long, with which shapes.

Joins `Trace.locations` (innermost user frames) with the files on disk, so a source match found by a
matcher can cite what the trace measured there. Host time is the union of the ops' intervals per
thread (nested ops are not double counted), averaged over the profiled steps.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from npu_advise.analyzers.common import in_steps, resolve_source, step_stats, us
from npu_advise.findings import Evidence


def parse_dims(text) -> list:
    """Recorded input shapes ("[[2, 3], []]" Kineto, "2,3;4" torch_npu) as a list of int lists."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return []
    s = str(text).strip()
    if not s:
        return []
    if s.startswith("["):
        try:
            v = json.loads(s)
        except ValueError:
            try:
                v = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                return []
        return [[int(d) for d in x] if isinstance(x, list) and all(isinstance(d, (int, float)) for d in x) else []
                for x in v] if isinstance(v, list) else []
    out = []
    for part in s.replace('"', "").split(";"):
        try:
            out.append([int(d) for d in part.split(",") if d.strip() != ""])
        except ValueError:
            out.append([])
    return out


def covered_ns(df: pd.DataFrame) -> int:
    """Total time covered by the intervals of `df` (ts, dur, tid), overlaps merged per thread."""
    total = 0
    for _, g in df.groupby("tid", sort=False):
        order = np.argsort(g["ts"].to_numpy(), kind="stable")
        s = g["ts"].to_numpy()[order]
        e = s + g["dur"].to_numpy()[order]
        run = np.maximum.accumulate(e)
        new = np.r_[True, s[1:] > run[:-1]]
        group = np.cumsum(new) - 1
        ends = pd.Series(run).groupby(group).max().to_numpy()
        total += int((ends - s[new]).sum())
    return total


class SourceIndex:
    """User files seen in a trace, and the ops recorded at their lines."""

    def __init__(self, trace, project_root: Optional[Path]):
        self.trace = trace
        self.root = project_root
        self.stats = step_stats(trace)
        self._paths = {}                   # loc id -> resolved absolute Path (or None)
        locs = trace.locations
        for i, f in enumerate(locs["file"].tolist() if len(locs) else []):
            p = resolve_source(f, project_root) if f else None
            self._paths[i] = p.resolve() if p is not None else None
        self.ops = in_steps(trace.ops, self.stats) if len(trace.ops) else trace.ops

    def files(self) -> list:
        return sorted({p for p in self._paths.values() if p is not None})

    def loc_ids(self, path: Path, lines) -> np.ndarray:
        path = Path(path).resolve()
        lines = set(lines)
        locs = self.trace.locations
        ids = [i for i, p in self._paths.items() if p == path and int(locs["line"].iloc[i]) in lines]
        return np.asarray(ids, dtype=np.int64)

    def function_loc_ids(self, path: Path, function: str) -> np.ndarray:
        """Locations in `path` attributed to `function` (exact=False frames carry only the function)."""
        path = Path(path).resolve()
        locs = self.trace.locations
        return np.asarray([i for i, p in self._paths.items()
                           if p == path and locs["function"].iloc[i] == function], dtype=np.int64)

    def ops_at(self, loc_ids: np.ndarray) -> pd.DataFrame:
        if len(self.ops) == 0 or len(loc_ids) == 0:
            return self.ops.iloc[0:0]
        return self.ops[self.ops["loc"].isin(loc_ids)]

    def host_evidence(self, loc_ids: np.ndarray, what: str) -> tuple:
        """([Evidence], host µs per step or None) for the ops recorded at `loc_ids`."""
        ops = self.ops_at(loc_ids)
        if len(ops) == 0:
            return [], None
        per_step_us = us(covered_ns(ops) / max(self.stats.count, 1))
        top = ops.groupby("name", observed=True)["dur"].agg(["count", "sum"]).sort_values("sum", ascending=False)
        names = ", ".join(f"{n} x{int(r['count'])}" for n, r in top.head(4).iterrows())
        steps = f"{self.stats.count} profiled step(s)" if self.stats.from_ranges else "the whole trace (no step ranges)"
        ev = [Evidence(f"host time of the ops at {what}", per_step_us, "us/step",
                       f"union of the recorded op intervals attributed to these lines, per thread, averaged over {steps}"),
              Evidence(f"ops recorded at {what}", int(len(ops) / max(self.stats.count, 1)), "ops/step",
                       f"count of host ops whose innermost user frame is these lines ({names})")]
        kernels = self.trace.kernels
        if len(kernels):
            k = kernels[kernels["loc"].isin(loc_ids)]
            if len(k):
                ev.append(Evidence(f"device time of the kernels launched at {what}",
                                   us(k["dur"].sum() / max(self.stats.count, 1)), "us/step",
                                   "sum of the durations of the device kernels whose launching op is at these lines"))
        return ev, per_step_us

    def shapes(self, loc_ids: np.ndarray, name_contains: Optional[str] = None) -> list:
        """[(op name, [shapes])] recorded at `loc_ids` (distinct, first 50)."""
        ops = self.ops_at(loc_ids)
        if len(ops) == 0:
            return []
        if name_contains:
            ops = ops[ops["name"].astype(str).str.contains(name_contains, regex=False)]
        seen, out = set(), []
        for name, dims in zip(ops["name"].astype(str), ops["input_dims"]):
            key = (name, str(dims))
            if key in seen or dims is None:
                continue
            seen.add(key)
            out.append((name, parse_dims(dims)))
            if len(out) >= 50:
                break
        return out

    def step_share(self, per_step_us: Optional[float]) -> Optional[float]:
        if per_step_us is None or not self.stats.mean_ns:
            return None
        return per_step_us * 1000.0 / self.stats.mean_ns
