"""What an op would cost the host on an Ascend NPU: the dispatch-cost model in `npu_dispatch_cost.json`.

The CPU time of an op under the profiler is not what it costs on an NPU (there the host only dispatches
it, and the device computes). `npu_dispatch_cost.json` holds, per op family, the median host duration of
top-level aten ops in real torch_npu profiles, derived by `benchmarks/derive_dispatch_cost.py` (see its
`how`, `sources` and sample counts). Analyzers use it for the per-step saving of predicted findings on
CPU and GPU runs, and state it in their evidence.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).with_name("npu_dispatch_cost.json")
SYNC = "sync"


@lru_cache(maxsize=1)
def model() -> dict:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    data["_compiled"] = [(d["family"], re.compile(d["pattern"])) for d in data["families_definition"]]
    return data


@lru_cache(maxsize=4096)
def family_of(op_name: str) -> str:
    short = str(op_name).split("::", 1)[-1]
    for fam, pattern in model()["_compiled"]:
        if pattern.match(short):
            return fam
    return "other"


def cost_us(family: str) -> float:
    fams = model()["families"]
    entry = fams.get(family) or model()["all_ops"]
    return float(entry["median_us"])


def _source_text() -> str:
    srcs = model()["sources"]
    folders = sorted({s["source"].split("/rank")[0] for s in srcs})
    return f"{len(srcs)} torch_npu profiles under ../shared/data ({', '.join(folders)})"


def describe(family: str) -> str:
    """`median of K samples of family F` with the spread, for evidence."""
    fams = model()["families"]
    e = fams.get(family)
    if e is None:
        e, family = model()["all_ops"], "all ops"
    return (f"{e['median_us']:g} us = median of {e['samples']} top-level aten ops of family {family} "
            f"(p25 {e['p25_us']:g}, p75 {e['p75_us']:g} us)")


def launches(op_names, per_step: float = 1.0) -> tuple:
    """(host us per step on an NPU, evidence text) for ops that would be dispatched there; `op_names`
    are the ops of all profiled steps, `per_step` divides them down to one step."""
    counts: dict = {}
    for name in op_names:
        fam = family_of(name)
        counts[fam] = counts.get(fam, 0) + 1
    total = sum(c * cost_us(f) for f, c in counts.items()) / per_step
    n = sum(counts.values()) / per_step
    parts = [f"{c / per_step:.0f} x {cost_us(f):g} us ({f})" for f, c in sorted(counts.items(), key=lambda kv: -kv[1])]
    how = (f"on an NPU: ~{n:.0f} launches/step: {' + '.join(parts)} = {total:,.0f} us; per-family cost = "
           f"{'; '.join(describe(f) for f in sorted(counts, key=lambda f: -counts[f])[:3])}; from "
           f"{_source_text()} by benchmarks/derive_dispatch_cost.py")
    return total, how


def syncs(calls_per_step: float) -> tuple:
    """(host us per step on an NPU, evidence text) for sync-prone calls that read device tensors."""
    c = cost_us(SYNC)
    total = calls_per_step * c
    how = (f"on an NPU: {calls_per_step:g} sync(s)/step x {describe(SYNC)}, a round trip that includes the wait "
           f"for the device queue in those runs; from {_source_text()} by benchmarks/derive_dispatch_cost.py")
    return total, how
