"""Unfused optimizer steps: `Optimizer.step#AdamW.step` ranges that issue many small ops per step.

PyTorch's default (single-tensor) optimizers issue several ops per parameter tensor per step; a fused
optimizer (`torch_npu.optim.NpuFused*` on an NPU, `fused=True` / `foreach=True` on CUDA) does the same
math in a handful of kernels. The step range is a `user_annotation` in Kineto traces and a `cpu_op` in
torch_npu traces; the ops inside it on the same thread are the step's ops.

The optimizer's construction (`torch.optim.AdamW(...)`, also via `from torch.optim import AdamW` or
`optim.AdamW`, and mmcv/mmengine config dicts `dict(type='AdamW', ...)`) is looked up in the
project's Python files by resolving each call's name through the file's imports (the `ast` module:
libcst's qualified-name metadata resolves the same cases but costs seconds per file), so the fix can
point at the line to change.
"""
from __future__ import annotations

import ast
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from npu_advise import model
from npu_advise.findings import Evidence, Finding, Location, severity_for_share
from npu_advise.load.locations import is_user_file
from npu_advise.rules import Rule

from . import Analysis, source
from .common import category_codes, category_mask, relative_path, step_stats

# An optimizer step is "unfused" when it issues at least this many top-level ops per step.
MIN_OPS_PER_STEP = 20
# Source scan bound: at most this many .py files under the project root (source.SKIP_DIRS are skipped).
MAX_SCAN_FILES = 3000
FUSED_NPU = {"AdamW": "NpuFusedAdamW", "Adam": "NpuFusedAdam", "SGD": "NpuFusedSGD", "Adadelta": "NpuFusedAdadelta",
             "Lamb": "NpuFusedLamb", "RMSprop": "NpuFusedRMSprop", "AdamP": "NpuFusedAdamP"}
# torch optimizers that take fused=True on CUDA (torch >= 2.0/2.4); the others take foreach=True.
CUDA_FUSED_FLAG = {"AdamW", "Adam", "SGD", "Adagrad"}
_STEP_NAME = re.compile(r"^Optimizer\.step#(?P<cls>[A-Za-z_][\w]*)\.step$")

RULE = Rule(
    code="NPA601", name="unfused-optimizer", category="optimizer",
    detects="An optimizer step (`Optimizer.step#<Class>.step` range) that issues at least MIN_OPS_PER_STEP "
            "small ops per training step (the single-tensor implementation), with its op count and time per "
            "step, and the source line that constructs the optimizer.",
    why="The default optimizer runs several ops per parameter tensor (mul_, add_, lerp_, addcmul_, sqrt, "
        "div, addcdiv_ ...): thousands of tiny kernels per step for a detection model, each paying the "
        "host launch cost while the device idles.",
    fix="On an NPU use the fused optimizer: torch_npu.optim.NpuFusedAdamW (NpuFusedAdam, NpuFusedSGD, ...) "
        "with the same arguments, or `optimizer = dict(type='NpuFusedAdamW', ...)` in mmcv configs. On CUDA pass "
        "fused=True (Adam/AdamW/SGD) or foreach=True.",
    thresholds={"MIN_OPS_PER_STEP": MIN_OPS_PER_STEP},
)
# Not reported: classes named *Fused* (apex/DeepSpeed FusedAdam, torch_npu NpuFused*), steps that run
# aten::_fused_* kernels (fused=True), and foreach steps below MIN_OPS_PER_STEP top-level ops (their
# per-parameter work is inside a handful of _foreach_* ops).


_FUSED_KERNEL = re.compile(r"_fused_(?:adam|adamw|sgd|adagrad)")
_FUSED_NPU = re.compile("npu_apply_adam|NpuFused")


def analyze(trace, ctx) -> Analysis:
    ranges = step_ranges(trace)
    if not len(ranges):
        return Analysis()
    stats = step_stats(trace)
    if stats.from_ranges:
        ranges = ranges[ranges["step"] >= 0]
    findings = []
    for cls, group in ranges.groupby("cls", sort=False):
        f = _finding(trace, ctx, stats, cls, group)
        if f is not None:
            findings.append(f)
    return Analysis(findings=findings)


def step_ranges(trace) -> pd.DataFrame:
    """Optimizer.step ranges from host annotations (Kineto) and host ops (torch_npu, old Kineto)."""
    parts = []
    an = trace.annotations
    if len(an):
        a = an[~an["on_device"].astype(bool)]
        parts.append(pd.DataFrame({"ts": a["ts"], "dur": a["dur"], "tid": a["tid"], "step": a["step"],
                                   "name": a["name"].astype(str)}))
    ops = trace.ops
    if len(ops):
        names = ops["name"]
        codes = [i for i, c in enumerate(names.cat.categories) if str(c).startswith("Optimizer.step#")]
        if codes:
            o = ops[np.isin(names.cat.codes.to_numpy(), codes)]
            parts.append(pd.DataFrame({"ts": o["ts"], "dur": o["dur"], "tid": o["tid"], "step": o["step"],
                                       "name": o["name"].astype(str)}))
    if not parts:
        return pd.DataFrame(columns=["ts", "dur", "tid", "step", "name", "cls"])
    df = pd.concat(parts, ignore_index=True)
    m = df["name"].str.extract(_STEP_NAME)
    df["cls"] = m["cls"]
    return df[df["cls"].notna()].drop_duplicates(["ts", "tid"]).reset_index(drop=True)


def ops_inside(trace, ranges: pd.DataFrame) -> np.ndarray:
    """Row indices of host ops inside any of the ranges (same thread), excluding the range op itself."""
    ops = trace.ops
    ts = ops["ts"].to_numpy()
    end = ts + ops["dur"].to_numpy()
    tid = ops["tid"].to_numpy()
    inside = np.zeros(len(ops), dtype=bool)
    # Ops sorted by start: each range only looks at the ops starting within it, not at every op.
    order = np.argsort(ts, kind="stable")
    ts_sorted = ts[order]
    no_negative = not (end < ts).any()
    for r in ranges.itertuples(index=False):
        lo, hi = int(r.ts), int(r.ts) + int(r.dur)
        # (an op with a negative duration could end inside a range it starts after: no upper cut then)
        cand = order[np.searchsorted(ts_sorted, lo, side="left"):
                     np.searchsorted(ts_sorted, hi, side="right") if no_negative else len(order)]
        c_ts, c_end = ts[cand], end[cand]
        inside[cand[(tid[cand] == r.tid) & (c_end <= hi) & ~((c_ts == lo) & (c_end == hi))]] = True
    rows = np.flatnonzero(inside)
    wrapper = category_mask(ops["name"], lambda n: str(n).startswith("Optimizer."))
    return rows[~wrapper[rows]] if len(rows) else rows


def _finding(trace, ctx, stats, cls: str, ranges: pd.DataFrame) -> Optional[Finding]:
    if "fused" in cls.lower():
        return None   # apex / DeepSpeed FusedAdam, torch_npu NpuFused*: already multi-tensor kernels
    n = stats.count
    ops = trace.ops
    rows = ops_inside(trace, ranges)
    if not len(rows):
        return None
    ts = ops["ts"].to_numpy()[rows]
    end = ts + ops["dur"].to_numpy()[rows]
    depth, _ = model.nesting(ts, end, ops["tid"].to_numpy()[rows])
    top = rows[depth == 0]
    codes, cats = category_codes(ops["name"])
    inner_names = [cats[c] for c in np.unique(codes[rows])]     # each distinct name once
    if any(_FUSED_KERNEL.search(n) or _FUSED_NPU.search(n) for n in inner_names):
        return None   # already fused
    foreach = any(n.startswith("aten::_foreach_") for n in inner_names)
    top_per_step = len(top) / n
    if top_per_step < MIN_OPS_PER_STEP:
        return None
    step_ns = float(ranges["dur"].sum())
    step_us_per_step = step_ns / n / 1000.0
    how_steps = f"over {n} profiled step(s)" if stats.from_ranges else "whole trace counted as one step"
    evidence = [
        Evidence("optimizer steps per training step", round(len(ranges) / n, 3), "calls",
                 f"Optimizer.step#{cls}.step ranges / steps, {how_steps}"),
        Evidence("ops per step", round(top_per_step, 3), "ops",
                 "top-level host ops inside the optimizer step range on its thread / steps"),
        Evidence("aten ops per step incl. nested", round(len(rows) / n, 3), "ops", "all host ops inside the range / steps"),
        Evidence("optimizer time per step", round(step_us_per_step, 3), "us", "sum of the step ranges' durations / steps"),
    ]
    top_names = pd.Series(cats[codes[top]]).value_counts().head(8)
    saving, saving_note = None, None
    kernels_ns = _kernel_time(trace, ranges, rows)
    kernels_us = kernels_ns / 1000.0 if kernels_ns is not None else None
    if kernels_us is not None:
        evidence.append(Evidence("device kernel time per step", round(kernels_us / n, 3), "us",
                                 "sum of durations of the kernels launched from inside the step ranges / steps"))
        saving = max(step_us_per_step - kernels_us / n, 0.0)
        evidence.append(Evidence("estimated saving per step", round(saving, 3), "us",
                                 "optimizer time - its device kernel time: a fused step keeps the math, not the "
                                 "per-op launches"))
    elif not trace.has_device_timeline:
        saving_note = ("No saving is estimated: a CPU-only trace cannot tell how long the fused device kernel "
                       "would take.")
    else:
        saving_note = ("No saving is estimated: the trace links no device kernels to the optimizer's ops, so "
                       "the device cost of its math is unknown.")
    share = (saving or 0.0) * 1000.0 / stats.mean_ns if stats.mean_ns else 0.0
    constructions = find_constructions(_scan_root(trace, ctx), cls)
    root = _scan_root(trace, ctx)
    locations = [Location(relative_path(str(c["file"]), ctx.project_root or root), c["line"], c["function"])
                 for c in constructions]
    fused_npu = FUSED_NPU.get(cls)
    cuda_flag = "fused=True" if cls in CUDA_FUSED_FLAG else "foreach=True"
    details = {
        "optimizer": cls, "mode": "foreach" if foreach else "single_tensor",
        "construct_line": constructions[0]["line"] if constructions else None,
        "construct_file": locations[0].file if locations else None,
        "construct_kind": constructions[0]["kind"] if constructions else None,
        "constructions": [{"file": l.file, "line": c["line"], "kind": c["kind"], "text": c["text"]}
                          for l, c in zip(locations, constructions)],
        "npu_replacement": f"torch_npu.optim.{fused_npu}" if fused_npu else None,
        "cuda_flag": cuda_flag,
        "ops_per_step": round(top_per_step, 3), "time_us_per_step": round(step_us_per_step, 3),
        "top_ops": {k: round(v / n, 3) for k, v in top_names.items()},
    }
    if saving_note:
        details["note"] = saving_note
    if not constructions:
        details["construct_note"] = ("The optimizer's construction was not found in the project's Python files"
                                     + (f" under {root}" if root else " (no project root known)") + ".")
    where = f" (constructed at {locations[0].file}:{locations[0].line})" if locations else ""
    fix_txt = f"torch_npu.optim.{fused_npu}" if fused_npu else f"a torch_npu fused optimizer or {cuda_flag}"
    return Finding(
        rule=RULE.code, category="optimizer",
        title=f"{'Foreach' if foreach else 'Unfused'} {cls} step issues {top_per_step:.0f} ops per step "
              f"({step_us_per_step:.0f} us){where}; use {fix_txt}",
        # A foreach step is already multi-tensor: its op count does not grow with the parameters, so on a
        # prediction it is a note, not a problem.
        severity="info" if foreach and trace.device_type != "npu" else
                 severity_for_share(share) if saving is not None else "medium",
        evidence=evidence, locations=locations, estimated_saving_us=round(saving, 3) if saving is not None else None,
        details=details, predicted=trace.device_type != "npu")


def _kernel_time(trace, ranges: pd.DataFrame, rows: np.ndarray) -> Optional[float]:
    """ns of device kernels launched from inside the ranges: kernels whose launching host op is one of
    `rows`, or whose launching runtime call lies in a range. None when the trace has no device timeline
    or links no kernel to these ops (then the math's device cost is unknown)."""
    if not trace.has_device_timeline:
        return None
    k = trace.kernels
    hit = np.isin(k["op"].to_numpy(), rows)
    rt = trace.runtime
    if len(rt):
        r_ts = rt["ts"].to_numpy()
        r_tid = rt["tid"].to_numpy()
        inside = np.zeros(len(rt), dtype=bool)
        for r in ranges.itertuples(index=False):
            inside |= (r_tid == r.tid) & (r_ts >= r.ts) & (r_ts < r.ts + r.dur)
        launch = k["launch"].to_numpy()
        hit |= (launch >= 0) & inside[np.maximum(launch, 0)]
    if not hit.any():
        return None
    return float(k["dur"].to_numpy()[hit].sum())


# ---------------------------------------------------------------------------------------------------
# Where the optimizer is constructed
# ---------------------------------------------------------------------------------------------------
def _scan_root(trace, ctx) -> Optional[Path]:
    if ctx.project_root is not None:
        return Path(ctx.project_root)
    files = [str(f) for f in trace.locations["file"].unique() if is_user_file(str(f)) and os.path.isabs(str(f))]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        return None
    return Path(os.path.commonpath([os.path.dirname(f) for f in files]))


def find_constructions(root: Optional[Path], cls: str) -> list:
    """Calls constructing torch.optim.<cls> and config dicts `dict(type='<cls>')` under `root`:
    list of {"file", "line", "function", "kind": "call" | "config", "text"}."""
    if root is None or not Path(root).is_dir():
        return []
    # Cheap text test first: only files that call `<cls>(` or name it as a config `type` get parsed
    name = re.escape(cls)
    candidate = re.compile(rf"\b{name}\s*\(|type['\"]?\s*[=:]\s*['\"](?:torch\.optim\.)?{name}['\"]")
    found = []
    for path in source.python_files(Path(root), MAX_SCAN_FILES):
        text = source.read_source(path)
        if not text or cls not in text or not candidate.search(text):
            continue
        found += _constructions_in_file(str(path), cls)
    return found


@lru_cache(maxsize=256)
def _constructions_in_file(path: str, cls: str) -> list:
    tree = source.parse(path)
    if tree is None:
        return []
    qualified = {f"torch.optim.{cls}", f"torch.optim.{cls.lower()}.{cls}"}
    aliases = _import_aliases(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _qualified_name(node.func, aliases)
            if name in qualified:
                hits.append((node.lineno, "call"))
            elif name == "dict" and any(k.arg == "type" and _is_cls(k.value, cls) for k in node.keywords):
                hits.append((node.lineno, "config"))
        elif isinstance(node, ast.Dict):
            if any(isinstance(k, ast.Constant) and k.value == "type" and _is_cls(v, cls)
                   for k, v in zip(node.keys, node.values)):
                hits.append((node.lineno, "config"))
    out = []
    for line, kind in sorted(set(hits)):
        fn = source.enclosing_function(path, line)
        out.append({"file": path, "line": line, "function": fn.name if fn else "<module>", "kind": kind,
                    "text": source.line_text(path, line).strip()})
    return out


def _import_aliases(tree) -> dict:
    """Local name -> qualified name for every import in the file (`import torch.optim as optim`,
    `from torch.optim import AdamW as A`, `import torch`). Scopes are merged: a rebinding of an
    imported name elsewhere in the file is rare enough to ignore."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    top = a.name.split(".", 1)[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _qualified_name(func, aliases: dict) -> Optional[str]:
    """`optim.AdamW` with `import torch.optim as optim` -> `torch.optim.AdamW`; builtin `dict` -> `dict`;
    names defined in the file rather than imported -> None."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    base = aliases.get(func.id)
    if base is None:
        return "dict" if func.id == "dict" and not parts else None
    return ".".join([base] + parts[::-1])


def _is_cls(value, cls: str) -> bool:
    return isinstance(value, ast.Constant) and value.value in (cls, f"torch.optim.{cls}")
