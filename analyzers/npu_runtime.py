"""NPU runtime findings from torch_npu traces: AI_CPU kernels, online op compilation, format-cast
(TransData) kernels and non-contiguous copy kernels. Each is detected from the device tasks / CANN calls
of the trace and attributed to the host op (and its Python source line) that launched it.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from npu_advise.findings import Evidence, Finding, severity_for_share
from npu_advise.rules import Rule

from . import Analysis
from .common import location, step_stats, us

# How many distinct launching source lines a finding lists.
MAX_LOCATIONS = 5
# A finding needs at least this many matching events in the averaged steps.
MIN_EVENTS = 1
ONLINE_COMPILE_API = "AscendCL@aclopCompileAndExecute"
OP_COMPILE_API = "AscendCL@opCompile"   # the compilation itself, nested in aclopCompileAndExecute
TRANSDATA = re.compile(r"TransData|TransPose.*Format|npu_format_cast", re.IGNORECASE)
NONCONTIGUOUS = re.compile(r"AsStrided|ViewCopy", re.IGNORECASE)

RULE_AICPU = Rule(
    "NPA411", "aicpu-kernel", "cpu_fallback",
    detects="Device tasks that ran on the NPU's AI_CPU (Accelerator Core = AI_CPU), with the host op and the "
            "Python line that launched them.",
    why="AI_CPU kernels run on the NPU's small control CPUs, often 10-100x slower than AI Core and serialized "
        "with the stream; they appear for ops or dtypes without an AI Core kernel (int64 indexing, some "
        "sorts/uniques, dynamic shapes).",
    fix="Change the dtype/shape that forces AI_CPU (e.g. int32 instead of int64 indices), or replace the op "
        "with an equivalent that has an AI Core kernel (mx_driving fused ops where one exists).",
    thresholds={"MIN_EVENTS": MIN_EVENTS},
)
RULE_COMPILE = Rule(
    "NPA721", "online-op-compile", "env",
    detects="CANN calls `aclopCompileAndExecute` in the profiled steps: operators compiled online (JIT) while "
            "training runs.",
    why="Online compilation costs host time on the launch path (opCompile) and stalls the device queue; the "
        "prebuilt binary kernels avoid it.",
    fix="torch.npu.set_compile_mode(jit_compile=False) (and torch.npu.config.allow_internal_format=False) at "
        "the start of the script.",
    thresholds={"MIN_EVENTS": MIN_EVENTS},
)
RULE_TRANSDATA = Rule(
    "NPA722", "format-cast-kernels", "env",
    detects="TransData / format-cast device tasks: tensors converted between the user format (NCHW/ND) and "
            "internal NPU formats (NC1HWC0, FRACTAL_Z).",
    why="Each conversion is a full read and write of the tensor on the device, on the critical path of the "
        "op that needs it.",
    fix="torch.npu.config.allow_internal_format = False (keeps tensors in their base format); re-measure, as "
        "some convolutions are faster in internal formats.",
    thresholds={"MIN_EVENTS": MIN_EVENTS},
)
RULE_NONCONTIG = Rule(
    "NPA723", "noncontiguous-copy-kernels", "env",
    detects="AsStrided / ViewCopy device tasks: copies made to turn non-contiguous views (transpose, slicing, "
            "permute) into contiguous tensors.",
    why="Each is an extra device copy; with COMBINED_ENABLE=1 torch_npu fuses chains of view ops into one "
        "copy, and contiguous layouts avoid them altogether.",
    fix="Set COMBINED_ENABLE=1; call .contiguous() once where a view is reused, or avoid the permute/slice.",
    thresholds={"MIN_EVENTS": MIN_EVENTS},
)


def _locations(trace, rows_op: np.ndarray, ctx) -> tuple:
    """Source locations (most frequent first) and the op names/stacks of the launching host ops."""
    ops = trace.ops
    op = rows_op[rows_op >= 0]
    if len(op) == 0:
        return [], [], []
    locs = ops["loc"].to_numpy()[op]
    counts = pd.Series(locs[locs >= 0]).value_counts()
    out = []
    for loc in counts.index[:MAX_LOCATIONS]:
        l_ = location(trace, int(loc), ctx.project_root)
        if l_ is not None:
            out.append(l_)
    names = pd.Series(ops["name"].astype(str).to_numpy()[op]).value_counts().head(MAX_LOCATIONS)
    stacks = trace.extras.get("call_stacks")
    top_stacks = []
    if stacks is not None and len(stacks) == len(ops):
        s = pd.Series(stacks[op]).dropna()
        if len(s):
            top_stacks = [str(v).split(";\r\n") for v in s.value_counts().index[:2]]
    return out, [f"{n} ({c}x)" for n, c in names.items()], top_stacks


def _kernel_finding(trace, ctx, stats, mask, rule, title, how, saving_fn, extra=None):
    k = trace.kernels
    sel = k[mask & ((k["step"] >= 0).to_numpy() if stats.from_ranges else True)]
    if len(sel) < MIN_EVENTS:
        return None
    total = float(sel["dur"].sum())
    per_step = total / stats.count
    names = sel.groupby(sel["name"].astype(str))["dur"].agg(["count", "sum"]).sort_values("sum", ascending=False)
    locs, op_names, stacks = _locations(trace, sel["op"].to_numpy(), ctx)
    share = per_step / stats.mean_ns if stats.mean_ns > 0 else 0.0
    ev = [Evidence("device tasks", int(len(sel)), "count", how),
          Evidence("device time per step", us(per_step), "µs",
                   f"sum of their durations / {stats.count} step(s)"),
          Evidence("share of the step", round(share * 100, 2), "%", "device time per step / mean step time")]
    details = {"kernels": [{"name": n, "count": int(r["count"]), "total_us": us(r["sum"])}
                           for n, r in names.head(10).iterrows()],
               "launching_ops": op_names}
    if stacks:
        details["python_stack"] = stacks[0]
    if extra:
        details.update(extra)
    return Finding(rule=rule, category=RULES[rule].category, title=title.format(n=len(sel), ms=per_step / 1e6),
                   severity=severity_for_share(share), evidence=ev, locations=locs,
                   estimated_saving_us=saving_fn(per_step), details=details)


RULES = {r.code: r for r in (RULE_AICPU, RULE_COMPILE, RULE_TRANSDATA, RULE_NONCONTIG)}


def analyze(trace, ctx) -> Analysis:
    result = Analysis()
    if trace.device_type != "npu" or len(trace.kernels) == 0:
        return result
    stats = step_stats(trace)
    k = trace.kernels
    names = k["name"].astype(str)
    types = trace.extras.get("kernel_types")
    type_text = pd.Series(types.to_numpy() if isinstance(types, pd.Series) and len(types) == len(k) else
                          np.full(len(k), None), dtype=object).fillna("").astype(str)
    label = names.str.cat(type_text, sep=" ")

    f = _kernel_finding(trace, ctx, stats, (k["core"].astype(str) == "AI_CPU").to_numpy(), "NPA411",
                        "{n} AI_CPU kernel(s) on the device ({ms:.3f} ms per step)",
                        "device tasks whose Accelerator Core is AI_CPU", lambda t: None)
    if f:
        result.findings.append(f)
    f = _kernel_finding(trace, ctx, stats, label.str.contains(TRANSDATA).to_numpy(), "NPA722",
                        "{n} TransData / format-cast kernel(s) ({ms:.3f} ms per step)",
                        "device tasks named or typed TransData / format cast",
                        # not all of them disappear with base formats (some convs need them): no estimate
                        lambda t: None)
    if f:
        result.findings.append(f)
    f = _kernel_finding(trace, ctx, stats, label.str.contains(NONCONTIGUOUS).to_numpy(), "NPA723",
                        "{n} non-contiguous copy kernel(s) AsStrided/ViewCopy ({ms:.3f} ms per step)",
                        "device tasks named or typed AsStrided / ViewCopy", lambda t: None)
    if f:
        result.findings.append(f)
    f = _online_compile(trace, ctx, stats)
    if f:
        result.findings.append(f)
    return result


def _online_compile(trace, ctx, stats):
    rt = trace.runtime
    if len(rt) == 0:
        return None
    in_steps = (rt["step"] >= 0).to_numpy() if stats.from_ranges else np.ones(len(rt), bool)
    names = rt["name"].astype(str).to_numpy()
    calls = rt[(names == ONLINE_COMPILE_API) & in_steps]
    if len(calls) < MIN_EVENTS:
        return None
    compile_ns = float(rt.loc[(names == OP_COMPILE_API) & in_steps, "dur"].sum())
    call_ns = float(calls["dur"].sum())
    locs, op_names, stacks = _locations(trace, calls["op"].to_numpy(), ctx)
    per_step_compile = compile_ns / stats.count
    ev = [Evidence("aclopCompileAndExecute calls", int(len(calls)), "count",
                   f"CANN {ONLINE_COMPILE_API} events in the profiled steps"),
          Evidence("host time in aclopCompileAndExecute per step", us(call_ns / stats.count), "µs",
                   f"sum of their durations / {stats.count} step(s)"),
          Evidence("host time compiling (opCompile) per step", us(per_step_compile), "µs",
                   f"sum of nested {OP_COMPILE_API} durations / {stats.count} step(s)")]
    details = {"launching_ops": op_names}
    if stacks:
        details["python_stack"] = stacks[0]
    share = per_step_compile / stats.mean_ns if stats.mean_ns > 0 else 0.0
    return Finding(rule="NPA721", category="env",
                   title=f"{len(calls)} operator(s) compiled online (aclopCompileAndExecute), "
                         f"{per_step_compile / 1e6:.3f} ms of compilation per step",
                   severity=severity_for_share(share), evidence=ev, locations=locs,
                   # the compile time itself is what binary kernels remove from the launch path
                   estimated_saving_us=us(per_step_compile) if compile_ns > 0 else None, details=details)
