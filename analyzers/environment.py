"""Environment variables recorded with the trace, judged against the trace's own evidence.

The environment comes from `trace.metadata["env"]` (torch_npu `profiler_metadata.json` ENV_VARIABLES,
or npu-advise's collector record). Only what the trace supports is recommended: a lever for a
host-bound run only when the run is measurably host-bound (device free time, or launch density on a
CPU-only trace), COMBINED_ENABLE only when non-contiguous copy kernels are hot. These are Ascend
variables: on traces from other devices only ASCEND_LAUNCH_BLOCKING is judged.
"""
from __future__ import annotations

import re

import pandas as pd

from npu_advise.findings import Evidence, Finding
from npu_advise.rules import Rule

from . import Analysis
from .common import in_steps, step_stats, us
from .host_bound import (FREE_SHARE_THRESHOLD, LAUNCH_DENSITY_MIN_OPS, SMALL_OP_MEDIAN_US, free_share,
                         launch_density, step_breakdown)

# Non-contiguous copy kernels (AsStrided / ViewCopy ...) are "hot" from this share of the step.
COPY_KERNEL_SHARE = 0.03
COPY_KERNEL = re.compile(r"AsStrided|ViewCopy|asstrided|view_copy", re.IGNORECASE)
# torch_npu's default aclnn cache size; more distinct (op, shape) signatures per run than this thrash it.
ACLNN_CACHE_DEFAULT = 10000
# Device-memory allocation calls (aclMallocMemInner ...) worth flagging, per step (msprof-analyze: 10 ms).
MALLOC_US_PER_STEP = 10000.0
MALLOC_CALL = re.compile(r"MallocMem|aclrtMalloc", re.IGNORECASE)
VARS = ("TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "PYTORCH_NPU_ALLOC_CONF", "COMBINED_ENABLE",
        "ASCEND_LAUNCH_BLOCKING", "ACLNN_CACHE_LIMIT")

RULE_BLOCKING = Rule(
    "NPA701", "ascend-launch-blocking", "env",
    detects="ASCEND_LAUNCH_BLOCKING=1 in the recorded environment.",
    why="It makes every operator launch synchronous: the host waits for each kernel, so host and device never "
        "overlap. It is a debugging switch.",
    fix="Unset ASCEND_LAUNCH_BLOCKING (or set it to 0) for training runs.",
)
RULE_TASK_QUEUE = Rule(
    "NPA702", "task-queue-level", "env",
    detects="TASK_QUEUE_ENABLE is not 2 while the trace shows a host-bound run (device free time at or above "
            "the host-bound threshold, or a high launch density on a CPU-only trace).",
    why="Level 2 of the task queue moves more of each launch off the Python thread, so the host enqueues "
        "faster and the device waits less.",
    fix="export TASK_QUEUE_ENABLE=2",
    thresholds={"FREE_SHARE_THRESHOLD": FREE_SHARE_THRESHOLD, "LAUNCH_DENSITY_MIN_OPS": LAUNCH_DENSITY_MIN_OPS},
)
RULE_AFFINITY = Rule(
    "NPA703", "cpu-affinity", "env",
    detects="CPU_AFFINITY_CONF unset or 0 while the trace shows a host-bound run.",
    why="Without core binding the launching thread migrates between cores and NUMA nodes, adding jitter to "
        "every launch of a host-bound run.",
    fix="export CPU_AFFINITY_CONF=1 (coarse binding; 2 for fine-grained).",
    thresholds={"FREE_SHARE_THRESHOLD": FREE_SHARE_THRESHOLD, "LAUNCH_DENSITY_MIN_OPS": LAUNCH_DENSITY_MIN_OPS},
)
RULE_COMBINED = Rule(
    "NPA704", "combined-enable", "env",
    detects="COMBINED_ENABLE not 1 while non-contiguous copy kernels (AsStrided, ViewCopy) take a large share "
            "of the step.",
    why="Each non-contiguous tensor made contiguous costs a copy kernel; COMBINED_ENABLE=1 lets torch_npu "
        "combine chains of views into one copy.",
    fix="export COMBINED_ENABLE=1",
    thresholds={"COPY_KERNEL_SHARE": COPY_KERNEL_SHARE},
)
RULE_ALLOC = Rule(
    "NPA705", "npu-alloc-conf", "env",
    detects="Device memory allocation calls taking a noticeable time per step while PYTORCH_NPU_ALLOC_CONF "
            "does not enable expandable segments.",
    why="Fragmented caching-allocator pools force fresh device allocations, which are slow and synchronous.",
    fix="export PYTORCH_NPU_ALLOC_CONF=expandable_segments:True",
    thresholds={"MALLOC_US_PER_STEP": MALLOC_US_PER_STEP},
)
RULE_ACLNN = Rule(
    "NPA706", "aclnn-cache-limit", "env",
    detects="More distinct operator/shape signatures in the profiled steps than ACLNN_CACHE_LIMIT (default "
            f"{ACLNN_CACHE_DEFAULT}) holds: dynamic shapes.",
    why="Every cache miss re-creates the aclnn executor for that shape on the host.",
    fix="export ACLNN_CACHE_LIMIT=100000 (up to 1000000 for strongly dynamic shapes)",
    thresholds={"ACLNN_CACHE_DEFAULT": ACLNN_CACHE_DEFAULT},
)


def analyze(trace, ctx) -> Analysis:
    out = Analysis()
    env = trace.env
    if not env:
        trace.limitations.append(
            "No environment variables were recorded with this trace (torch_npu profiler_metadata.json or "
            "`npu-advise profile`): TASK_QUEUE_ENABLE, CPU_AFFINITY_CONF, COMBINED_ENABLE, "
            "ASCEND_LAUNCH_BLOCKING and ACLNN_CACHE_LIMIT were not checked.")
        return out
    recorded = {k: env.get(k) for k in VARS}
    out.tables["environment"] = pd.DataFrame({"variable": list(recorded),
                                              "value": [_shown(env, k) for k in recorded]})
    if str(env.get("ASCEND_LAUNCH_BLOCKING", "")).strip() == "1":
        out.findings.append(_env_finding(
            "NPA701", "high", "ASCEND_LAUNCH_BLOCKING=1 makes every launch synchronous",
            [Evidence("ASCEND_LAUNCH_BLOCKING", "1", "", "recorded environment")],
            "unset ASCEND_LAUNCH_BLOCKING"))
    if trace.device_type not in ("npu", "cpu"):
        trace.limitations.append(f"Ascend environment levers were not judged: this trace is from a "
                                 f"{trace.device_type} device.")
        return out
    predicted = trace.device_type == "cpu"
    bound = _host_bound_evidence(trace, ctx)
    if bound is not None:
        tq = str(env.get("TASK_QUEUE_ENABLE", "")).strip()
        if tq != "2":
            out.findings.append(_lever_finding(env, "NPA702", "TASK_QUEUE_ENABLE", "2", "medium", bound, predicted))
        aff = str(env.get("CPU_AFFINITY_CONF", "")).strip()
        if aff in ("", "0"):
            out.findings.append(_lever_finding(env, "NPA703", "CPU_AFFINITY_CONF", "1", "low", bound, predicted))
    copies = _copy_kernel_evidence(trace)
    if copies is not None and str(env.get("COMBINED_ENABLE", "")).strip() != "1":
        out.findings.append(_env_finding(
            "NPA704", "medium", "Non-contiguous copy kernels are hot and COMBINED_ENABLE is not 1",
            [Evidence("COMBINED_ENABLE", _shown(env, "COMBINED_ENABLE"), "", "recorded environment")]
            + copies, "export COMBINED_ENABLE=1"))
    malloc = _malloc_evidence(trace)
    alloc_conf = str(env.get("PYTORCH_NPU_ALLOC_CONF", ""))
    if malloc is not None and "expandable_segments:true" not in alloc_conf.replace(" ", "").lower():
        out.findings.append(_env_finding(
            "NPA705", "medium", "Slow device allocations and no expandable segments",
            [Evidence("PYTORCH_NPU_ALLOC_CONF", _shown(env, "PYTORCH_NPU_ALLOC_CONF"), "", "recorded environment")]
            + malloc,
            "export PYTORCH_NPU_ALLOC_CONF=expandable_segments:True"))
    shapes = _shape_signatures(trace)
    limit = _int(env.get("ACLNN_CACHE_LIMIT"), ACLNN_CACHE_DEFAULT)
    if shapes > limit:
        out.findings.append(_env_finding(
            "NPA706", "low", f"{shapes:,} operator/shape signatures exceed ACLNN_CACHE_LIMIT={limit:,}",
            [Evidence("distinct op/shape signatures", shapes, "signatures",
                      "distinct (operator, input shapes) pairs among host ops in the profiled steps"),
             Evidence("ACLNN_CACHE_LIMIT", limit, "entries", "recorded environment (default 10000 when unset)")],
            "export ACLNN_CACHE_LIMIT=100000", predicted))
    return out


def _shown(env: dict, key: str) -> str:
    """A variable's recorded value; '(unset)' when recorded empty, '(not recorded)' when the record
    does not list it at all (torch_npu records only some variables)."""
    if key not in env:
        return "(not recorded)"
    v = env.get(key)
    return "(unset)" if v is None or str(v).strip() == "" else str(v)


def _lever_finding(env, rule, key, want, severity, bound, predicted) -> Finding:
    shown = _shown(env, key)
    context = shown == "(not recorded)"    # no evidence the lever is off: a reminder, not a problem
    if context:
        title = f"Host-bound run and {key} was not recorded: make sure {key}={want}"
        severity = "low"
        how = "not among the environment variables recorded with this trace"
    else:
        title = f"{key}={shown} on a host-bound run: set it to {want}"
        how = "recorded environment"
    f = _env_finding(rule, severity, title, [Evidence(key, shown, "", how)] + bound,
                     f"export {key}={want}", predicted)
    f.context = context
    return f


def _int(v, default: int) -> int:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return default


def _env_finding(rule, severity, title, evidence, change, predicted=False) -> Finding:
    return Finding(rule=rule, category="env", title=title, severity=severity, evidence=evidence,
                   estimated_saving_us=None, predicted=predicted,
                   details={"change": change,
                            "saving_how": "an environment lever's effect cannot be measured from one trace"})


def _host_bound_evidence(trace, ctx):
    """Evidence that the run is host-bound, or None."""
    table = ctx.tables.get("host_bound.steps")
    if table is None:
        table = step_breakdown(trace)
    if trace.has_device_timeline:
        share = free_share(trace, table)
        if share is None or share < FREE_SHARE_THRESHOLD:
            return None
        return [Evidence("device free share of step", round(100 * share, 1), "%",
                         "step time not covered by any device activity, summed over the steps / total step time")]
    dens = launch_density(trace, table)
    if dens is None or dens[0] < LAUNCH_DENSITY_MIN_OPS or dens[2] > SMALL_OP_MEDIAN_US:
        return None
    return [Evidence("top-level ops per step", round(dens[0], 1), "ops", "host ops at nesting depth 0, per step"),
            Evidence("median top-level op duration", dens[2], "us", "CPU run")]


def _copy_kernel_evidence(trace):
    if not trace.has_device_timeline:
        return None
    stats = step_stats(trace)
    k = in_steps(trace.kernels, stats)
    hot = k[k["name"].astype(str).str.contains(COPY_KERNEL)]
    if not len(hot) or stats.mean_ns <= 0:
        return None
    per_step = hot["dur"].sum() / stats.count
    share = per_step / stats.mean_ns
    if share < COPY_KERNEL_SHARE:
        return None
    return [Evidence("non-contiguous copy kernels per step", us(per_step), "us",
                     f"device time of kernels named AsStrided/ViewCopy ({len(hot)} kernels) / steps"),
            Evidence("share of step", round(100 * share, 1), "%", "per-step copy kernel time / mean step")]


def _malloc_evidence(trace):
    stats = step_stats(trace)
    rt = in_steps(trace.runtime, stats)
    m = rt[rt["name"].astype(str).str.contains(MALLOC_CALL)]
    if not len(m):
        return None
    per_step = m["dur"].sum() / stats.count / 1000.0
    if per_step < MALLOC_US_PER_STEP:
        return None
    return [Evidence("device allocation time per step", round(per_step, 1), "us",
                     f"sum of {len(m)} allocation runtime calls / steps")]


def _shape_signatures(trace) -> int:
    stats = step_stats(trace)
    ops = in_steps(trace.ops, stats)
    if not len(ops) or ops["input_dims"].isna().all():
        return 0
    return int(len(ops[["name", "input_dims"]].astype(str).drop_duplicates()))
