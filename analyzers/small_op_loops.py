"""Python loops that issue many small operators every step, found by joining the trace to the source.

Each host op carries the user source line that issued it (exact lines come from npu-advise's collector
markers or torch_npu call stacks). A line that sits inside a `for`/`while` loop of a user file (checked
in the file's syntax tree, `analyzers/source.py`) belongs to the innermost such loop; a loop whose lines
issue many short ops per step is a host-bound risk on an NPU: every op pays the host dispatch cost
(tens of µs) while the device waits, and the loop serializes them. The seed's reference cases are
PivotNet's per-point `interpolate` loop (90 calls per step) and the `valid_len` mask loop.

Counting, per step and per source line, over the ops a Python call issues directly (its top-level
ops; the ops nested inside them are their implementation and are reported separately):
- executions of a line = the most common count among its top-level op names (every execution of
  the line issues the same ops, most of them once);
- iterations per step of a loop = the executions of its most executed line (a line that issues one
  op name only, k times per execution, cannot be told from k executions: where it would be a whole
  multiple of another line's count, the other line's count is taken);
- ops per iteration = the loop's top-level ops per step / iterations.
Backward ops (run by autograd, not by the loop) are excluded.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from npu_advise import model
from npu_advise.findings import Evidence, Finding, Location, severity_for_share
from npu_advise.load.locations import is_user_file
from npu_advise.rules import Rule

from . import Analysis, callers, dispatch_cost, placement, source
from .callers import COMPREHENSION_FRAMES
from .common import relative_path, resolve_source, step_stats, us
from .optimizer import ops_inside, step_ranges

# A loop is reported when it runs at least this many iterations per step ...
MIN_ITERATIONS_PER_STEP = 8
# ... its lines issue at least this many top-level ops per step ...
MIN_OPS_PER_STEP = 32
# ... and its ops are "small": mean host duration per op at most this (µs).
MAX_MEAN_OP_US = 100.0
# On a CPU trace with placement records (only ops that would launch on the NPU counted): from this many
# iterations. On any CPU trace, mean CPU op time at most MAX_MEAN_OP_US_PREDICTED (excludes loops of big
# ops, such as recurrent cells, whose device time would dominate their dispatch).
MIN_ITERATIONS_PREDICTED = 2
MAX_MEAN_OP_US_PREDICTED = 500.0
# A comprehension, always from MIN_ITERATIONS_PER_STEP: over a handful of classes, levels or cameras it is
# the usual way to write a fixed structural step, which costs little and rarely vectorizes.
# Function-level (non-exact) locations: a function is reported when it issues at least this many
# small top-level ops per step and its source contains a loop.
MIN_FUNCTION_OPS_PER_STEP = 200
_ITEM_OPS = ("aten::item", "aten::_local_scalar_dense")
_BACKWARD_PREFIX = "autograd::engine::evaluate_function"

RULE = Rule(
    code="NPA501", name="small-op-loop", category="small_op_loop",
    detects="A Python for/while loop, comprehension or map(f, *lists) of a user function, in user code, whose "
            "body issues many small operators every step "
            "(at least MIN_ITERATIONS_PER_STEP iterations, MIN_OPS_PER_STEP ops, mean op time at most "
            "MAX_MEAN_OP_US, or MAX_MEAN_OP_US_PREDICTED of CPU time on a CPU trace; from "
            "MIN_ITERATIONS_PREDICTED iterations when placement records say the ops would launch on the NPU): "
            "the loop's lines, iterations and ops per step, host time per step.",
    why="Every operator pays a fixed host-side dispatch cost on an NPU (tens of µs through torch_npu's "
        "task queue) while the device finishes each tiny kernel almost at once: the device idles "
        "(free time) waiting for the next launch. A loop multiplies that by its iteration count; loops "
        "over tensors also call .item() and synchronize the stream every iteration.",
    fix="Vectorize the loop: compute all iterations in one expression (e.g. interpolation with an "
        "arange of ratios, masks with arange(n) < lengths[:, None]); batch per-element work along a new "
        "dimension (a map / mmdet multi_apply over images: pad the per-image lists, stack them and run the "
        "function's body once on the batch); use an mx_driving fused operator where one exists.",
    thresholds={"MIN_ITERATIONS_PER_STEP": MIN_ITERATIONS_PER_STEP, "MIN_OPS_PER_STEP": MIN_OPS_PER_STEP,
                "MAX_MEAN_OP_US": MAX_MEAN_OP_US, "MIN_FUNCTION_OPS_PER_STEP": MIN_FUNCTION_OPS_PER_STEP,
                "MIN_ITERATIONS_PREDICTED": MIN_ITERATIONS_PREDICTED,
                "MAX_MEAN_OP_US_PREDICTED": MAX_MEAN_OP_US_PREDICTED},
)


def analyze(trace, ctx) -> Analysis:
    ops = trace.ops
    if not len(ops) or not len(trace.locations):
        return Analysis()
    stats = step_stats(trace)
    top = top_level_ops(trace, stats)
    if not len(top):
        return Analysis()
    locs = trace.locations
    exact = locs["exact"].to_numpy()[top["loc"].to_numpy()]
    _note_limitations(trace, ctx, top, exact)
    findings = _loop_findings(trace, ctx, stats, top[exact])
    findings += _function_findings(trace, ctx, stats, top[~exact])
    table = pd.DataFrame([{"file": f.locations[0].file, "loop_line": f.details.get("loop_line"),
                           "iterations_per_step": f.details.get("iterations_per_step"),
                           "ops_per_step": f.details.get("ops_per_step"),
                           "host_us_per_step": f.details.get("host_us_per_step")} for f in findings if f.locations])
    return Analysis(findings=findings, tables={"small_op_loops.loops": table} if len(table) else {})


def _note_limitations(trace, ctx, top: pd.DataFrame, exact: np.ndarray) -> None:
    """Say in the trace's limitations when loops cannot be checked (no exact lines, or no sources)."""
    locs = trace.locations
    files = locs["file"].to_numpy()[top["loc"].to_numpy()]
    user = np.array([is_user_file(str(f)) for f in files], dtype=bool) if len(files) else np.zeros(0, bool)
    notes = []
    if user.any() and not (user & exact).any():
        notes.append("Source locations are function-level only (python_function def lines): loops of small ops "
                     "cannot be pinpointed to a loop; profile with `npu-advise profile` for exact lines.")
    exact_files = sorted({str(f) for f in files[user & exact]})
    missing = [f for f in exact_files if resolve_source(f, ctx.project_root) is None]
    if missing:
        notes.append(f"{len(missing)} of {len(exact_files)} user source files in the trace are not readable here "
                     f"(e.g. {missing[0]}): their lines cannot be checked for enclosing loops.")
    for note in notes:
        if note not in trace.limitations:
            trace.limitations.append(note)


def _in_optimizer_steps(trace) -> np.ndarray:
    """Ops run inside an optimizer step range. One `optimizer.step()` call issues the same ops once per
    parameter, which would read as many executions of that line (the training loop would look like a
    loop of small ops); they are the optimizer's, reported by NPA601."""
    inside = np.zeros(len(trace.ops), dtype=bool)
    ranges = step_ranges(trace)
    if len(ranges):
        inside[ops_inside(trace, ranges)] = True
    return inside


def top_level_ops(trace, stats, on_device: bool = True) -> pd.DataFrame:
    """Forward ops that a user source line issued directly: located, in a step, not nested in an op of
    the same line, not run by autograd. With placement records, only the ops whose call touched device
    tensors (`on_device`), or only those that touched none (host tensor work, `analyzers/host_work.py`)."""
    ops = trace.ops
    ts = ops["ts"].to_numpy()
    end = ts + ops["dur"].to_numpy()
    tid = ops["tid"].to_numpy()
    loc = ops["loc"].to_numpy()
    _, parent = model.op_tree(ops)      # the loader's tree, computed once per trace
    names = ops["name"]
    cats = [str(c) for c in names.cat.categories]
    codes = names.cat.codes.to_numpy()
    bwd_codes = [i for i, c in enumerate(cats) if c.startswith(_BACKWARD_PREFIX)]
    in_bwd = np.zeros(len(ops), dtype=bool)
    bwd = np.flatnonzero(np.isin(codes, bwd_codes))
    if len(bwd):
        hit = model.innermost_enclosing(ts[bwd], end[bwd], tid[bwd], ts, tid)
        in_bwd = hit >= 0
    parent_loc = np.where(parent >= 0, loc[np.maximum(parent, 0)], -2)
    keep = (loc >= 0) & (parent_loc != loc) & ~in_bwd & ~_in_optimizer_steps(trace)
    if stats.from_ranges:
        keep &= ops["step"].to_numpy() >= 0
    if placement.recorded(trace):
        # Only ops that would launch on the NPU pay its dispatch cost; work that torch components
        # (optimizer, grad scaler, clip_grad) do for one user call is theirs (NPA601), not a loop's.
        keep &= (placement.per_op(trace, "on_device", -1) == (1 if on_device else 0)) & ~placement.by_component(trace)
    rows = np.flatnonzero(keep)
    # Ops nested under each top-level op (its implementation), for the "aten ops incl. nested" count:
    # climb each nested op to its top-level ancestor at the same line.
    nested = np.zeros(len(ops), dtype=np.int64)
    inner = np.flatnonzero((loc >= 0) & (parent_loc == loc) & ~in_bwd)
    if len(inner):
        anc = parent[inner]
        while True:
            up = parent[anc]
            climb = (up >= 0) & (loc[np.maximum(up, 0)] == loc[anc])
            if not climb.any():
                break
            anc = np.where(climb, up, anc)
        np.add.at(nested, anc, 1)
    root = placement.per_op(trace, "root", -1)[rows] if placement.recorded(trace) else np.full(len(rows), -1)
    return pd.DataFrame({"row": rows, "loc": loc[rows], "name": np.asarray(cats, dtype=object)[codes[rows]],
                         "dur": ops["dur"].to_numpy()[rows], "nested": nested[rows], "root": root})


def _line_stats(group: pd.DataFrame) -> dict:
    counts = group["name"].value_counts()
    # Each execution issues the same ops, so most op names occur once per execution (a name issued
    # twice per execution, or skipped by a no-op slice, is the exception): the most common per-name
    # count, the smaller on ties.
    per_count = counts.value_counts()
    executions = int(min(per_count[per_count == per_count.max()].index))
    return {"executions": executions, "names": int(len(counts)), "ops": int(len(group)),
            "host_ns": float(group["dur"].sum()),
            "nested": int(group["nested"].sum()),
            "items": int(group["name"].isin(_ITEM_OPS).sum())}


def _loop_findings(trace, ctx, stats, top: pd.DataFrame) -> list:
    if not len(top):
        return []
    locs = trace.locations
    loops = {}   # (path, loop line) -> {"loop": LoopInfo, "path": Path, "file": str, "lines": {line: stats}, ...}
    outside = []     # rows of user lines outside any loop: a helper function's, perhaps called in a loop
    for where, group in top.groupby("loc", sort=False):
        file, line = str(locs.at[int(where), "file"]), int(locs.at[int(where), "line"])
        if not is_user_file(file):
            continue
        path = resolve_source(file, ctx.project_root)
        if path is None:
            continue
        function = str(locs.at[int(where), "function"])
        if not _add_line(loops, file, path, line, function, group):
            outside.append(group)
    if outside:
        _add_helper_ops(trace, ctx, loops, pd.concat(outside))
    findings = []
    for entry in loops.values():
        f = _loop_finding(trace, ctx, stats, entry["file"], entry)
        if f is not None:
            findings.append(f)
    return findings


def _add_line(loops: dict, file: str, path, line: int, function: str, group: pd.DataFrame,
              helper: bool = False) -> bool:
    """Count `group`'s ops (issued at `line`, in `function`'s frame) for the innermost loop around the line;
    False when no loop holds it."""
    enclosing = source.enclosing_loops(path, line)
    if not enclosing:
        return False
    loop = enclosing[0]
    # keyed by the file on disk: Kineto's frames and the collector's marks spell its path differently
    entry = loops.setdefault((str(Path(path).resolve()), loop.line), {
        "loop": loop, "path": path, "file": file, "lines": {}, "function": function, "helper_ops": 0})
    entry.setdefault("rows", []).extend(group["row"].tolist())
    entry.setdefault("roots", []).extend(group["root"].tolist())
    entry.setdefault("names", []).extend(group["name"].tolist())
    if helper:
        entry["helper_ops"] += len(group)
    st = _line_stats(group)
    # A comprehension's ops run once per ITS iteration: inside a loop statement they say nothing of how
    # often the statement's loop ran (Python <= 3.11 records them under the comprehension's own frame).
    if function in COMPREHENSION_FRAMES and loop.kind != "comprehension":
        st["comprehension_executions"], st["executions"] = st["executions"], 0
    # One source line can appear under several function names (a comprehension), or issue its own ops and
    # a helper's: merge.
    prev = entry["lines"].get(line)
    if prev:
        st = {"executions": max(prev["executions"], st["executions"]), "names": max(prev["names"], st["names"]),
              "comprehension_executions": max(prev.get("comprehension_executions", 0),
                                              st.get("comprehension_executions", 0)),
              "ops": prev["ops"] + st["ops"],
              "host_ns": prev["host_ns"] + st["host_ns"], "nested": prev["nested"] + st["nested"],
              "items": prev["items"] + st["items"]}
    entry["lines"][line] = st
    return True


def _add_helper_ops(trace, ctx, loops: dict, group: pd.DataFrame) -> None:
    """Count the ops of helper functions for the loop of the call that issued them (analyzers/callers.py),
    at the call's line; ops of a function mapped over elements (`map(f, *lists)`) for that map."""
    locs = trace.locations
    functions = locs["function"].to_numpy()[group["loc"].to_numpy()]
    sites, calls = callers.loop_call_sites(trace, group["row"].to_numpy(), functions, ctx.project_root,
                                           with_calls=True)
    by_site = {}
    for i, site in enumerate(sites):
        if site is not None:
            by_site.setdefault(site, []).append(i)
    for site, at in by_site.items():
        ops = group.iloc[at]
        path = resolve_source(site[0], ctx.project_root)
        if path is None:
            continue
        if isinstance(site, callers.MapSite):
            map_path = (resolve_source(site.map_file, ctx.project_root) if site.map_file else None) or path
            _add_map(loops, site, path, map_path, ops, len(set(calls[at].tolist())))
        else:
            _add_line(loops, site[0], path, site[1], site[2], ops, helper=True)


def _add_map(loops: dict, site, path, map_path, group: pd.DataFrame, calls: int) -> None:
    """Count a mapped function's ops for the `map` (or the wrapper call holding it) as a loop whose
    iterations are the mapped function's calls: its op counts per name cannot tell one call from the
    several uses of an op inside one."""
    call = _map_node(map_path, site.map_line) if site.map_line else None
    body = site.map_line or site.line
    loop = source.LoopInfo(kind="map", line=site.line, end_line=site.line, body_first=body,
                           body_last=body, iter_text=site.iter_text, targets=(), node=call)
    entry = loops.setdefault((str(Path(path).resolve()), site.line), {
        "loop": loop, "path": path, "file": site.file, "lines": {}, "function": site.function, "helper_ops": 0,
        "map": {"file": site.map_file, "line": site.map_line, "library": site.library}, "map_path": map_path})
    entry.setdefault("rows", []).extend(group["row"].tolist())
    entry.setdefault("roots", []).extend(group["root"].tolist())
    entry.setdefault("names", []).extend(group["name"].tolist())
    entry["helper_ops"] += len(group)
    st = _line_stats(group)
    st["executions"] = calls
    prev = entry["lines"].get(site.line)
    if prev:
        st = {k: prev[k] + st[k] for k in ("executions", "ops", "host_ns", "nested", "items")} | \
             {"names": max(prev["names"], st["names"])}
    entry["lines"][site.line] = st


def _map_node(path, line: int):
    tree = source.parse(path)
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "map" \
                and node.lineno == line:
            return node
    return None


def _executions_per_loop(lines: dict) -> int:
    """The loop's iterations over the recorded steps: its most executed line's executions, except that a
    line of one op name (`p, t = a[:, c], b[:, c]`: two selects) counts its repeats as executions; when
    such a count is a whole multiple of another line's, the smaller count is the line's."""
    if not any(s["executions"] for s in lines.values()):
        # every line's ops are a comprehension's inside the statement: the best count there is
        return max(s.get("comprehension_executions", 0) for s in lines.values())
    counts = sorted({s["executions"] for s in lines.values()}, reverse=True)
    for count in counts:
        lines_here = [s for s in lines.values() if s["executions"] == count]
        ambiguous = all(s["names"] == 1 for s in lines_here)
        if not ambiguous or not any(c > 0 and count % c == 0 and count // c >= 2 for c in counts):
            return count
    return counts[-1]


_CONV_OPS = frozenset(f"aten::{n}" for n in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution",
                                               "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"))


def _conv_input_sizes(trace, rows: list) -> set:
    """The spatial sizes (dims after batch and channels) of the first input of the convolutions among `rows`,
    from the recorded shapes."""
    ops = trace.ops
    rows = np.asarray(rows, dtype=np.int64)
    names = ops["name"].to_numpy()[rows]
    dims = ops["input_dims"].to_numpy()[rows]
    sizes = set()
    for name, d in zip(names, dims):
        if str(name) in _CONV_OPS and isinstance(d, str):
            m = _FIRST_SHAPE.match(d)
            if m:
                sizes.add(tuple(int(x) for x in m["dims"].split(",")[2:]))
    return sizes


_FIRST_SHAPE = re.compile(r"^\s*\[\s*\[(?P<dims>[\d,\s]*)\]")


def _loop_finding(trace, ctx, stats, file: str, entry: dict) -> Optional[Finding]:
    n = stats.count
    loop = entry["loop"]
    lines = entry["lines"]
    executions = _executions_per_loop(lines)
    busiest = max(lines, key=lambda l: (lines[l]["executions"] == executions, lines[l]["ops"]))
    iterations = executions / n
    ops_total = sum(s["ops"] for s in lines.values())
    host_ns = sum(s["host_ns"] for s in lines.values())
    nested_total = sum(s["nested"] for s in lines.values())
    items = sum(s["items"] for s in lines.values())
    ops_per_step = ops_total / n
    mean_op_us = host_ns / ops_total / 1000.0
    # On a CPU trace "small" is judged loosely: CPU time under the profiler is not an NPU kernel's time and
    # swings with the machine's load. With placement records only ops that launch on the NPU were counted:
    # each pays its dispatch cost there, so a loop is worth vectorizing from fewer iterations.
    max_mean_us = MAX_MEAN_OP_US if trace.has_device_timeline else MAX_MEAN_OP_US_PREDICTED
    predicted_launches = placement.recorded(trace) and not trace.has_device_timeline
    # A loop that is small-op bound only with the ops of the helpers it calls is held to the full iteration
    # floor: over a handful of levels or classes, a call per iteration is the usual structure.
    helper_bound = (ops_total - entry["helper_ops"]) / n < MIN_OPS_PER_STEP
    min_iterations = MIN_ITERATIONS_PREDICTED if predicted_launches and loop.kind != "comprehension" \
        and not helper_bound else MIN_ITERATIONS_PER_STEP
    if iterations < min_iterations or ops_per_step < MIN_OPS_PER_STEP or mean_op_us > max_mean_us:
        return None
    if iterations < MIN_ITERATIONS_PER_STEP and len(_conv_input_sizes(trace, entry["rows"])) > 1:
        return None     # one conv tower per feature level (FPN): the levels' sizes differ, nothing batches them
    ops_per_iteration = ops_per_step / iterations
    host_us = host_ns / n / 1000.0
    vectorized_us = ops_per_iteration * mean_op_us
    saving = max(host_us - vectorized_us, 0.0)
    function = source.enclosing_function(entry["path"], loop.line)
    function_name = function.name if function else entry["function"]
    rel = relative_path(file, ctx.project_root)
    idiom, idiom_line = detect_idiom(loop, items > 0)
    how_steps = f"over {n} profiled step(s)" if stats.from_ranges else "whole trace counted as one step"
    is_map = loop.kind == "map"
    map_rel = relative_path(entry["map"]["file"], ctx.project_root) if is_map and entry["map"]["file"] else None
    if is_map:
        mapped_by = f"map(...) at {map_rel}:{entry['map']['line']}" if map_rel else \
            f"the library function {entry['map']['library']} called at line {loop.line}"
    evidence = [
        Evidence("iterations per step", round(iterations, 3), "iterations",
                 f"calls per step of the function mapped by {mapped_by}, "
                 f"counted on the recorded Python call chain, {how_steps}" if is_map else
                 f"executions per step of the loop's most executed line ({busiest}); executions of a line = "
                 f"the most common count among its top-level op names, {how_steps}"),
        Evidence("ops per iteration", round(ops_per_iteration, 3), "ops", "top-level ops per step / iterations per step"),
        Evidence("ops per step", round(ops_per_step, 3), "ops",
                 "top-level ops issued by the loop's lines (forward only) / steps"),
        *([Evidence("ops of called functions per step", round(entry["helper_ops"] / n, 3), "ops",
                    "of the ops per step, those issued inside functions the loop's lines call, tied to the call "
                    "by the recorded Python call chain (a callee called from one line of its caller)")]
          if entry["helper_ops"] else []),
        Evidence("aten ops per step incl. nested", round((ops_total + nested_total) / n, 3), "ops",
                 "top-level ops plus the ops nested inside them / steps"),
        Evidence("host time per step", round(host_us, 3), "us", "sum of top-level op host durations / steps"
                 + (" (CPU time under the profiler on this run: not what an NPU pays)"
                    if not trace.has_device_timeline else "")),
        Evidence("mean op time", round(mean_op_us, 3), "us", "host time / top-level ops"),
        Evidence("vectorized cost estimate", round(vectorized_us, 3), "us",
                 "ops per iteration x mean op time: one pass of the body over all iterations at once"),
    ]
    if items:
        evidence.append(Evidence("item() calls per step", round(items / n, 3), "calls",
                                 "aten::item / _local_scalar_dense among the loop's ops: one stream sync each on an NPU"))
    predicted = not trace.has_device_timeline
    if trace.device_type != "npu":
        # Neither the CPU time under the profiler nor a GPU's launch cost is what the NPU pays: cost the
        # launches with the NPU dispatch-cost model; one vectorized pass of the body (ops per iteration) stays.
        npu_us, npu_how = dispatch_cost.launches(entry["names"], n)
        saving = npu_us * (1.0 - 1.0 / iterations)
        evidence.append(Evidence("NPU dispatch time per step", round(npu_us, 3), "us", npu_how))
        evidence.append(Evidence("estimated saving per step", round(saving, 3), "us",
                                 "NPU dispatch time per step x (1 - 1 / iterations): a vectorized body dispatches "
                                 "its ops once, not once per iteration"))
    else:
        evidence.append(Evidence("estimated saving per step", round(saving, 3), "us",
                                 "host time per step - vectorized cost estimate"))
    share = saving * 1000.0 / stats.mean_ns if stats.mean_ns else 0.0
    if predicted:
        placed = placement.provenance(trace, entry.get("roots", [])) if placement.recorded(trace) else None
        evidence.append(Evidence("placement", "device tensors" if placed else "not recorded", "",
                                 f"the counted ops would launch on the NPU: {placed}" if placed else
                                 "no placement records: every op of the loop's lines is counted"))
    locations = [Location(rel, loop.line, function_name)]
    for line in sorted(lines, key=lambda l: -lines[l]["ops"]):
        if line != loop.line:
            locations.append(Location(rel, line, function_name))
    if is_map and map_rel and (map_rel, entry["map"]["line"]) != (rel, loop.line):
        # the map inside a wrapper (mmdet's multi_apply): evidence; the wrapper's call is where to batch
        map_function = source.enclosing_function(entry["map_path"], entry["map"]["line"])
        locations.append(Location(map_rel, entry["map"]["line"], map_function.name if map_function else ""))
    per_line = [{"line": l, "executions_per_step": round(s["executions"] / n, 3), "ops_per_step": round(s["ops"] / n, 3),
                 "host_us_per_step": us(s["host_ns"] / n)} for l, s in sorted(lines.items())]
    details = {
        "loop_line": loop.line, "loop_end_line": loop.end_line, "loop_kind": loop.kind,
        "body_lines": list(loop.body_lines), "iter_text": loop.iter_text, "targets": list(loop.targets),
        "iterations_per_step": round(iterations, 3), "ops_per_iteration": round(ops_per_iteration, 3),
        "ops_per_step": round(ops_per_step, 3), "host_us_per_step": round(host_us, 3),
        "function": function_name, "idiom": idiom, "idiom_line": idiom_line, "busiest_line": busiest,
        "item_calls_per_step": round(items / n, 3), "lines": per_line,
        "helper_ops_per_step": round(entry["helper_ops"] / n, 3),
    }
    if is_map:
        details["map_file"], details["map_line"] = map_rel, entry["map"]["line"]
        details["mapped_by_library"] = entry["map"]["library"]
    if predicted:
        details["placement"] = placed or "not recorded: every op of the loop's lines counted"
    what = {"affine_interpolation": "A per-point interpolation loop", "prefix_mask": "A per-row mask loop",
            "item_loop": "A loop that reads tensor values with .item()"}.get(idiom, _LOOP_KIND_TEXT.get(loop.kind, f"A Python {loop.kind} loop"))
    return Finding(
        rule=RULE.code, category="small_op_loop",
        title=f"{what} at {rel}:{loop.line} ({function_name}) issues {ops_per_step:.0f} small ops per step "
              f"({iterations:.0f} iterations x {ops_per_iteration:.1f} ops)",
        severity=severity_for_share(share), evidence=evidence, locations=locations,
        estimated_saving_us=round(saving, 3), details=details, predicted=predicted)


_LOOP_KIND_TEXT = {"comprehension": "A comprehension",
                   "map": "A map(...) of a function over per-element lists (one call per element)"}


# ---------------------------------------------------------------------------------------------------
# Idioms the recommender knows a vectorized rewrite for, recognized in the loop's syntax tree.
# ---------------------------------------------------------------------------------------------------
def detect_idiom(loop, has_item_ops: bool = False) -> tuple:
    """(idiom, line of the statement it was recognized on) for a loop: "affine_interpolation",
    "prefix_mask", "item_loop" or (None, None). The idioms are statement loops."""
    if loop.kind in ("comprehension", "map"):
        return None, None
    for stmt in _body_statements(loop.node):
        if _is_affine_interpolation(stmt):
            return "affine_interpolation", stmt.lineno
    for stmt in _body_statements(loop.node):
        if _is_prefix_mask(stmt, set(loop.targets)):
            return "prefix_mask", stmt.lineno
    for stmt in _body_statements(loop.node):
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("item", "tolist"):
                return "item_loop", stmt.lineno
    if has_item_ops:
        return "item_loop", loop.line
    return None, None


def _body_statements(node) -> list:
    out = []
    for stmt in node.body:
        for sub in ast.walk(stmt):
            if isinstance(sub, (ast.Assign, ast.AugAssign, ast.Expr)):
                out.append(sub)
    return out


def _is_affine_interpolation(stmt) -> bool:
    """`res[k] = (1 - r) * a + r * b` (either operand order, either product order)."""
    if not isinstance(stmt, ast.Assign) or not any(isinstance(t, ast.Subscript) for t in stmt.targets):
        return False
    v = stmt.value
    if not (isinstance(v, ast.BinOp) and isinstance(v.op, ast.Add)):
        return False
    products = [v.left, v.right]
    if not all(isinstance(p, ast.BinOp) and isinstance(p.op, ast.Mult) for p in products):
        return False

    def one_minus(e):
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Sub) and isinstance(e.left, ast.Constant) \
                and e.left.value == 1:
            return ast.dump(e.right)
        return None

    for i in (0, 1):
        p, q = products[i], products[1 - i]
        for factor in (p.left, p.right):
            r = one_minus(factor)
            if r is not None and r in (ast.dump(q.left), ast.dump(q.right)):
                return True
    return False


def _is_prefix_mask(stmt, targets: set) -> bool:
    """`mask[i][:n] = c` / `mask[i, :n] = c` with `n` bound by the loop and `c` a constant."""
    if not isinstance(stmt, ast.Assign) or not isinstance(stmt.value, ast.Constant):
        return False
    for t in stmt.targets:
        for node in ast.walk(t):
            if isinstance(node, ast.Slice) and node.lower is None and isinstance(node.upper, ast.Name) \
                    and node.upper.id in targets:
                return True
    return False


# ---------------------------------------------------------------------------------------------------
# Function-level locations (Kineto python_function frames): the loop cannot be pinpointed.
# ---------------------------------------------------------------------------------------------------
def _function_findings(trace, ctx, stats, top: pd.DataFrame) -> list:
    if not len(top):
        return []
    locs = trace.locations
    n = stats.count
    findings = []
    for where, group in top.groupby("loc", sort=False):
        file, line = str(locs.at[int(where), "file"]), int(locs.at[int(where), "line"])
        func = str(locs.at[int(where), "function"])
        ops_per_step = len(group) / n
        mean_op_us = float(group["dur"].mean()) / 1000.0
        if not is_user_file(file) or ops_per_step < MIN_FUNCTION_OPS_PER_STEP or mean_op_us > MAX_MEAN_OP_US:
            continue
        path = resolve_source(file, ctx.project_root)
        tree = source.parse(path) if path is not None else None
        if tree is None:
            continue   # without the source we cannot tell whether the function loops at all
        loop_lines = _loops_in_function(tree, line)
        if not loop_lines:
            continue   # the function's source has no loop: not this rule's business
        rel = relative_path(file, ctx.project_root)
        where_loops = f"its loops start at lines {', '.join(map(str, loop_lines))}"
        findings.append(Finding(
            rule=RULE.code, category="small_op_loop",
            title=f"{func} ({rel}:{line}) issues {ops_per_step:.0f} small ops per step; the trace has only "
                  f"function-level locations, so the loop cannot be pinpointed",
            severity="low",
            evidence=[Evidence("ops per step", round(ops_per_step, 3), "ops",
                               "ops whose innermost user Python frame is this function / steps"),
                      Evidence("mean op time", round(mean_op_us, 3), "us", "mean host duration of those ops"),
                      Evidence("host time per step", us(group["dur"].sum() / n), "us", "sum of durations / steps")],
            locations=[Location(rel, line, func)], estimated_saving_us=None,
            details={"loop_line": None, "function": func, "function_line": line, "candidate_loop_lines": loop_lines,
                     "idiom": None, "pinpointed": False,
                     "note": f"Locations come from python_function frames (def lines only); {where_loops}. "
                             "Profile with `npu-advise profile` for exact lines."},
            predicted=not trace.has_device_timeline))
    return findings


def _loops_in_function(tree, def_line: int) -> list:
    node = source.function_at(tree, def_line)
    return [] if node is None else sorted(sub.lineno for sub in ast.walk(node)
                                          if isinstance(sub, (ast.For, ast.While, ast.AsyncFor)))
