"""mx_driving fused ops found in the project's source (NPA8xx) and CUDA-only dispatches (NPA907): matchers.py and
dispatch.py find the code (stdlib ast), codemods/fused_ops.py and codemods/dispatch.py rewrite it where the call
can be mapped; build.py makes the findings, shared with the static `check`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from npu_advise import progress
from npu_advise.findings import Finding, Location, severity_for_share

from ..catalog import load
from ..registry import source_scanner


@source_scanner("fused_ops", order=10)
def fused_op_findings(src, files: list) -> list:
    """NPA8xx fused-op matches, NPA907 CUDA-only dispatches and NPA908 compiled extensions; inside a dispatch
    one match is kept, without a diff of its own (the dispatch's NPU arm is that replacement)."""
    from .. import build, dispatch, matchers
    from ..pyast import SourceFile

    out, structural, calls_by_file = [], [], {}
    for path in progress.track(files, f"scanning {len(files)} source files", unit="files"):
        text = src.text(path)
        if text is None:
            continue
        sf = SourceFile.parse(text)
        if sf is None:
            continue
        calls_by_file[src.rel(path)] = matchers.imported_calls(sf)
        dispatches = dispatch.find_dispatches(sf)
        out += [_dispatch_finding(d, path, text, src) for d in dispatches]
        for match, d in dispatch.with_dispatches(dispatches, matchers.scan(text, sf)):
            out.append(_fused_finding(match, path, text, src, d))
            if match.how:
                structural.append((out[-1], match.function))
        out += [build.extension_finding(e, src.rel(path)) for e in dispatch.find_extensions(sf)]
    for finding, function in structural:      # where the matched function runs from, in the files importing it
        rel = finding.locations[0].file
        finding.locations += [Location(f, line, fn) for f, line, fn in
                              matchers.cross_file_call_sites(rel, function, calls_by_file)]
    return out


def _attacher(src, path: Path, text: str):
    return lambda finding, rewrite, ref: src.attach(finding, src.candidate(path, text, rewrite, ref))


def _replaced_code_evidence(src, path: Path, line: int, function: Optional[str], rel: str) -> tuple:
    """(loc ids at `line`, those plus the body of `function` when the project defines it -- the pytorch
    reference a call runs, or the function a structural match is in --, evidence, share of the step) of
    the ops the trace recorded there."""
    index = src.index
    loc_ids = index.loc_ids(path, {line})
    callee_ids = index.function_loc_ids(path, function) if function else []
    all_ids = sorted(set(loc_ids.tolist()) | set(getattr(callee_ids, "tolist", lambda: callee_ids)()))
    where = f"{rel}:{line}" + ((" and the replaced function" if function != "<module>" else "") if len(callee_ids) else "")
    evidence, per_step = index.host_evidence(all_ids, where)
    return loc_ids, all_ids, evidence, index.step_share(per_step)


def _saving_details(evidence, share) -> dict:
    d = {"saving": ("not estimated: the fused kernel's time is not in this trace; the host time above is what "
                    "the replaced code costs now (an upper bound of the saving)") if evidence else
                   "no ops recorded at this line in the profiled steps"}
    if share is not None:
        d["share_of_step"] = round(share, 4)
    return d


def _fused_finding(match, path: Path, text: str, src, in_dispatch=None) -> Finding:
    from .. import build

    rel = src.rel(path)
    msda = match.kind in ("msda", "msda_structure")
    # a structural match (match.how) is the whole function it is in; a call of the pytorch MSDA runs its body
    function = match.function if match.how else ("multi_scale_deformable_attn_pytorch" if match.kind == "msda" else None)
    loc_ids, all_ids, evidence, share = _replaced_code_evidence(src, path, match.line, function, rel)
    # With a trace, code that recorded no op in the profiled steps (numpy in a Dataset, a branch not taken)
    # costs the step nothing measurable: an observation, not a fix to rank -- except the CUDA arm of a
    # dispatch, which never runs here and whose NPU replacement is the point of the dispatch finding.
    if share is not None:
        severity = severity_for_share(share)
    else:
        severity = "low" if in_dispatch is not None and src.index.files() else "info"
    checks = _msda_shape_checks(src.index, all_ids) if msda else (
        _aggregation_shape_checks(src.index, all_ids) if match.kind == "deformable_aggregation" else None)
    rewrite = None if in_dispatch is not None else build.fused_rewrite(
        match, text, checks if msda else None, _add_shapes_equal(src.index, loc_ids) if match.kind == "add_relu" else None)
    return build.fused_finding(match, rel, text, severity, evidence, _saving_details(evidence, share), rewrite,
                               _attacher(src, path, text), checks, in_dispatch)


def _dispatch_finding(d, path: Path, text: str, src) -> Finding:
    """NPA907 with what the other arm (the one a CPU or NPU run takes) cost in the trace."""
    from .. import build

    rel = src.rel(path)
    msda = d.fused_key == "multi_scale_deformable_attn"
    # the arm's cost is its line plus the body of the function it calls when the file defines it (a copied
    # reference under another name: `out = sample_pyramid(...)`)
    callee = "multi_scale_deformable_attn_pytorch" if msda else d.other_callee
    _, all_ids, evidence, share = _replaced_code_evidence(src, path, d.other_line, callee, rel)
    checks = _msda_shape_checks(src.index, all_ids) if msda else None
    severity = severity_for_share(share) if share is not None else ("low" if src.index.files() else None)
    return build.dispatch_finding(d, rel, text, severity, evidence, _saving_details(evidence, share), checks,
                                  attach=_attacher(src, path, text))


def _msda_shape_checks(index, loc_ids) -> dict:
    """Check MSDA's head/dim/point limits against recorded shapes: sampling_locations is the 6-D input
    (bs, queries, heads, levels, points, 2); value is the 4-D input (bs, keys, heads, dims)."""
    limits = load().fused_ops["multi_scale_deformable_attn"].limits
    shapes = [s for _, dims in index.shapes(loc_ids) for s in dims]
    sampling = next((s for s in shapes if len(s) == 6 and s[-1] == 2), None)
    if sampling is None:
        return {}
    heads, levels, points = sampling[2], sampling[3], sampling[4]
    value = next((s for s in shapes if len(s) == 4 and s[2] == heads), None)
    verified, violations, covered = [], [], ["num_heads <= 8", "num_levels * num_points <= 64"]
    how = f"recorded shapes: sampling_locations {sampling}" + (f", value {value}" if value else "")
    (verified if heads <= limits["max_heads"] else violations).append(f"num_heads = {heads} (limit 8; {how})")
    lp = levels * points
    (verified if lp <= limits["max_levels_times_points"] else violations).append(
        f"num_levels * num_points = {lp} (limit 64; {how})")
    complete = False
    if value is not None:
        dims = value[3]
        ok = dims <= limits["max_dims"] and dims % limits["dims_multiple_of"] == 0
        (verified if ok else violations).append(f"embed dims per head = {dims} (<= 256 and % 8 == 0; {how})")
        covered.append("embed dims per head <= 256 and a multiple of 8")
        complete = True
    return {"verified": verified, "violations": violations, "covered": covered, "complete": complete}


def _aggregation_shape_checks(index, loc_ids) -> dict:
    """Deformable aggregation's scale limit against the recorded grid_sampler inputs (N, C, H, W): the
    distinct (H, W) are the scales sampled. Cameras and groups are not in these shapes: left to check."""
    limits = load().fused_ops["deformable_aggregation"].limits
    inputs = [dims[0] for name, dims in index.shapes(loc_ids) if "grid_sampler" in name and dims and len(dims[0]) == 4]
    if not inputs:
        return {}
    sizes = sorted({tuple(s[2:]) for s in inputs})
    how = f"recorded grid_sampler inputs: {len(inputs)} calls, feature sizes {', '.join(f'{h}x{w}' for h, w in sizes)}"
    ok = len(sizes) <= limits["max_scales"]
    return {"verified": [f"scales = {len(sizes)} (limit {limits['max_scales']}; {how})"] if ok else [],
            "violations": [] if ok else [f"scales = {len(sizes)} exceeds the kernel's limit {limits['max_scales']} ({how})"],
            "covered": ["scales <= 4"], "complete": False}


def _add_shapes_equal(index, loc_ids) -> Optional[str]:
    adds = [(n, d) for n, d in index.shapes(loc_ids) if n in ("aten::add_", "aten::add") and len(d) >= 2]
    if not adds:
        return None
    if all(d[0] == d[1] and d[0] for _, d in adds):
        return f"recorded shapes of both operands are equal ({', '.join(str(d[0]) for _, d in adds[:3])})"
    return None


@source_scanner("shape_fused_ops", order=30)
def shape_fused_op_findings(src, files: list) -> list:
    """Fused ops found from what the profile recorded, whatever the code says: matmuls of tiny point-projection
    shapes (NPA817, mx_driving.npu_batch_matmul). One finding per source line."""
    from .. import build
    from ..matchers import SourceMatch

    out = []
    index = src.index
    if index is None or len(index.ops) == 0:
        return out
    for loc, shapes, count in small_batch_matmuls(index.ops):
        d = src.trace.location(loc)
        path = src.resolve(d["file"]) if d else None
        text = src.text(path) if path is not None else None
        if text is None:
            continue
        rel = src.rel(path)
        lines = text.splitlines()
        code = lines[d["line"] - 1].strip() if 0 < d["line"] <= len(lines) else ""
        match = SourceMatch("batch_matmul", d["line"], d["function"], code, "fused_ops.npu_batch_matmul")
        _, _, evidence, share = _replaced_code_evidence(src, path, d["line"], None, rel)
        steps = max(index.stats.count, 1)
        how = f"recorded aten::matmul input shapes {', '.join(' @ '.join(map(str, s)) for s in shapes[:3])}"
        checks = {"verified": [f"operands 4-6-D, a 4x4 / 3x3 matrix times a 4x1 / 3x1 vector, broadcastable ({how}; "
                               f"{count / steps:g} per step)"],
                  "covered": list(load().fused_ops["npu_batch_matmul"].constraints[:2])}
        severity = severity_for_share(share) if share is not None else "low"
        out.append(build.fused_finding(match, rel, text, severity, evidence,
                                       {**_saving_details(evidence, share), "shapes": shapes[:3]}, None, None, checks))
    return out


def small_batch_matmuls(ops) -> list:
    """(loc, distinct [a, b] shapes, count) of the recorded aten::matmul ops whose operands fit
    npu_batch_matmul: 4-6 dims each, a 4x4 / 3x3 matrix times a 4x1 / 3x1 vector, broadcastable batch dims."""
    from ..evidence import parse_dims

    limits = load().fused_ops["npu_batch_matmul"].limits
    pairs = {(tuple(m), tuple(v)) for m, v in zip(limits["matrix"], limits["vector"])}
    sel = ops[ops["name"].astype(str) == "aten::matmul"]
    found: dict = {}
    for loc, dims in zip(sel["loc"].to_numpy(), sel["input_dims"]):
        shapes = parse_dims(dims)
        if int(loc) < 0 or len(shapes) < 2:
            continue
        a, b = shapes[0], shapes[1]
        if not (limits["min_dims"] <= len(a) <= limits["max_dims"] and limits["min_dims"] <= len(b) <= limits["max_dims"]):
            continue
        if (tuple(a[-2:]), tuple(b[-2:])) not in pairs or not _broadcastable(a[:-2], b[:-2]):
            continue
        entry = found.setdefault(int(loc), [[], 0])
        if [a, b] not in entry[0]:
            entry[0].append([a, b])
        entry[1] += 1
    return [(loc, shapes, count) for loc, (shapes, count) in found.items()]


def _broadcastable(x: list, y: list) -> bool:
    return all(p == q or p == 1 or q == 1 for p, q in zip(reversed(x), reversed(y)))
