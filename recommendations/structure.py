"""Fused-op opportunities recognized by what a function computes -- the shape of its syntax tree -- rather
than by the names it calls, so a renamed or copied reference implementation is found too:

* a loop with one `grid_sample` per level over a value `split` by the levels' sizes, then a stack and a
  weighted sum: multi-scale deformable attention (mx_driving.multi_scale_deformable_attn);
* nested loops of `grid_sample` (cameras x levels), or one loop whose samples are weighted and
  accumulated: deformable aggregation (mx_driving.deformable_aggregation);
* a sort of the points' ranks followed by a cumulative sum or a scatter into a grid, or one accumulating
  scatter of point features by a linearized cell index (splat.py): hand-written voxel pooling
  (mx_driving.bev_pool_v3);
* a loop over `unique()` ids (or `range(n)`) that masks each group (`ids == g`) and reduces it:
  mx_driving.scatter_max / scatter_mean / scatter_add;
* a per-object loop that draws gaussians (`*gaussian*` helpers): mx_driving.npu_gaussian;
* a per-box loop testing which points lie inside it (`abs(local) <= size / 2`, reduced with `.all` or `&`):
  mx_driving.points_in_box;
* greedy NMS (`order = scores.argsort()`, a loop refiltering `order = order[1:][iou <= thr]`): mx_driving.nms3d;
* iterative furthest point sampling (a loop lowering a running distance with a minimum and taking its argmax as
  the next point): mx_driving.furthest_point_sampling;
* rotated BEV IoU: box corners rotated by the cos and sin of one yaw, a shoelace intersection area and
  `inter / (area_a + area_b - inter)` (the rotation and the area may be in helpers it calls):
  mx_driving.boxes_iou_bev;
* dynamic voxelization: coordinates quantized to cells, `torch.unique(cells, dim=0, return_inverse=True)` and
  the point features reduced by the inverse index: mx_driving.Voxelization (dynamic) + dynamic_scatter;
* RMSNorm (`x * rsqrt(mean(x ** 2) + eps)`), rotary embedding (`x * cos + rotate_half(x) * sin` with
  `rotate_half = cat(-x2, x1)`) and attention (`softmax(q @ k^T) @ v`): torch_npu.npu_rms_norm,
  npu_rotary_mul, npu_fusion_attention.

Each detector requires every part of its shape; a part alone (one grid_sample, one sort) is no match.
The trace then checks the op's constraints against the recorded shapes (generators/fused_ops.py).
"""
from __future__ import annotations

import ast
from typing import Optional

from .catalog import load
from .pyast import SourceFile, last_name

GROUP_REDUCTIONS = {"max": "scatter_max", "amax": "scatter_max", "mean": "scatter_mean", "sum": "scatter_add"}
GAUSSIAN_TARGET_WORDS = ("draw", "radius", "heatmap")
HOST_LIBRARIES = ("numpy", "math", "scipy", "cv2")
# Tensor methods reducing `src` into `self` by an index, and the mx_driving op of each reduction they take.
INDEX_REDUCE_METHODS = ("index_reduce", "index_reduce_", "scatter_reduce", "scatter_reduce_")
INDEX_REDUCTIONS = {"amax": "scatter_max", "mean": "scatter_mean"}
ELEMENTWISE_MAX = ("maximum", "max", "fmax")
GRID_CONSTRUCTORS = ("arange", "meshgrid", "linspace", "mgrid", "ogrid", "indices", "cartesian_prod")
SCATTER_METHODS = ("index_add_", "index_add", "scatter_add_", "scatter_add", "index_put_", "scatter_", "scatter_reduce_")


def _walk_local(node):
    """Nodes under `node`, not descending into nested defs, classes or lambdas."""
    todo = list(ast.iter_child_nodes(node))
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield n
        todo.extend(ast.iter_child_nodes(n))


def _is_grid_sample(sf: SourceFile, call) -> bool:
    return isinstance(call, ast.Call) and (sf.qualified(call.func) == "torch.nn.functional.grid_sample"
                                           or last_name(call) == "grid_sample")


def _calls(nodes, names) -> list:
    return [n for n in nodes if isinstance(n, ast.Call) and last_name(n) in names]


def _weighted_reduction(nodes) -> bool:
    """A product reduced by `.sum(...)` or accumulated (`acc = acc + a * w`, `acc += a * w`)."""
    for n in nodes:
        if isinstance(n, ast.Call) and last_name(n) == "sum":
            inner = n.func.value if isinstance(n.func, ast.Attribute) else (n.args[0] if n.args else None)
            if inner is not None and any(isinstance(b, ast.BinOp) and isinstance(b.op, ast.Mult) for b in ast.walk(inner)):
                return True
        if isinstance(n, ast.AugAssign) and isinstance(n.op, ast.Add) and _has_mult(n.value):
            return True
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.BinOp) and isinstance(n.value.op, ast.Add) \
                and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                and n.targets[0].id in {x.id for x in ast.walk(n.value) if isinstance(x, ast.Name)} and _has_mult(n.value):
            return True
    return False


def _has_mult(node) -> bool:
    return any(isinstance(b, ast.BinOp) and isinstance(b.op, ast.Mult) for b in ast.walk(node))


def _split_by_sizes(nodes) -> bool:
    """`value.split([h * w for h, w in shapes], dim=1)`: a tensor split by per-level sizes."""
    for n in _calls(nodes, {"split"}):
        sizes = n.args[0] if n.args else None
        if isinstance(sizes, (ast.ListComp, ast.GeneratorExp)) and _has_mult(sizes.elt):
            return True
    return False


def _sampling_loops(sf: SourceFile, fn) -> list:
    """(outer loop, nested) for the outermost loops of `fn` whose bodies call grid_sample; `nested` when
    another such loop is inside it."""
    loops = [n for n in _walk_local(fn) if isinstance(n, (ast.For, ast.While))
             and any(_is_grid_sample(sf, c) for c in _walk_local(n))]
    ids = {id(l) for l in loops}
    inside = {o: [n for n in _walk_local(o) if id(n) in ids] for o in loops}
    nested_ids = {id(n) for found in inside.values() for n in found}
    return [(o, bool(inside[o])) for o in loops if id(o) not in nested_ids]


def sampling_matches(sf: SourceFile, fn) -> list:
    out = []
    local = list(_walk_local(fn))
    for loop, nested in _sampling_loops(sf, fn):
        in_loop = list(_walk_local(loop))
        if nested and _weighted_reduction(in_loop + local):
            out.append(("deformable_aggregation", loop, "fused_ops.deformable_aggregation",
                        "nested loops with one grid_sample per camera and level, weighted and summed"))
        elif not nested and _split_by_sizes(local) and _calls(local, {"stack", "cat"}) and _weighted_reduction(local):
            out.append(("msda_structure", loop, "fused_ops.multi_scale_deformable_attn",
                        "a value split by the levels' sizes, one grid_sample per level, stacked and weighted-summed"))
        elif not nested and _weighted_reduction(in_loop):
            out.append(("deformable_aggregation", loop, "fused_ops.deformable_aggregation",
                        "one grid_sample per loop iteration, weighted and accumulated"))
    return out


def _scatters_into_grid(nodes) -> bool:
    """A scatter of features into a grid: `grid[b, z, y, x] = feats` with tensor indices, or index_add_ /
    scatter_add_."""
    if _calls(nodes, set(SCATTER_METHODS)):
        return True
    for n in nodes:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Subscript):
            index = n.targets[0].slice
            parts = index.elts if isinstance(index, ast.Tuple) else [index]
            tensors = [p for p in parts if isinstance(p, (ast.Subscript, ast.Name, ast.Attribute)) and not isinstance(p, ast.Slice)]
            if len(tensors) >= 3:
                return True
    return False


def voxel_pooling_match(sf: SourceFile, fn) -> Optional[tuple]:
    local = list(_walk_local(fn))
    sorts = _calls(local, {"argsort", "sort"})
    if not sorts or not _scatters_into_grid(local):
        return None
    cumsum = _calls(local, {"cumsum"})
    multi_index = any(isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Subscript)
                      and isinstance(n.targets[0].slice, ast.Tuple) and len(n.targets[0].slice.elts) >= 4 for n in local)
    if not cumsum and not multi_index:
        return None
    first = min(sorts, key=lambda c: (c.lineno, c.col_offset))
    return ("voxel_pooling", first, "fused_ops.bev_pool_v3",
            "points sorted by voxel rank, " + ("a cumulative sum over ranks, " if cumsum else "")
            + "features scattered into the BEV grid")


def _torch_unique(sf: SourceFile, node) -> bool:
    """`torch.unique(...)` or `t.unique()` -- not numpy's or pandas' (host arrays: no device ops to fuse)."""
    for c in _calls(list(ast.walk(node)), {"unique"}):
        q = sf.qualified(c.func) or ""
        if q == "torch.unique":
            return True
        if not q and isinstance(c.func, ast.Attribute) and "torch" in sf.imports.values() \
                and not {"numpy", "pandas"} & {v.split(".")[0] for v in sf.imports.values()}:
            return True
    return False


def group_loop_matches(sf: SourceFile, fn) -> list:
    """`for g in ids.unique(): ... x[ids == g].max(0)` (or `for i in range(n)` with `index == i`) -> scatter_max
    (mean, sum likewise): every group is one mask, one boolean read and one reduction."""
    local = list(_walk_local(fn))
    unique_names = {t.id for n in local if isinstance(n, ast.Assign) and _torch_unique(sf, n.value)
                    for t in n.targets if isinstance(t, ast.Name)}
    out = []
    for loop in (n for n in local if isinstance(n, ast.For) and isinstance(n.target, ast.Name)):
        it = loop.iter
        over_unique = _torch_unique(sf, it) or (isinstance(it, ast.Name) and it.id in unique_names)
        over_range = isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
        if not over_unique and not over_range:
            continue
        var = loop.target.id
        body = list(_walk_local(loop))
        # over range(n), only a scatter: each group's reduction written to `out[i]` (not, say, a per-class loss)
        if over_range and not any(
                isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Subscript)
                and isinstance(n.targets[0].slice, ast.Name) and n.targets[0].slice.id == var
                and _calls(list(ast.walk(n.value)), set(GROUP_REDUCTIONS)) for n in body):
            continue
        masks = any(isinstance(n, ast.Compare) and any(isinstance(o, ast.Eq) for o in n.ops)
                    and var in {x.id for x in ast.walk(n) if isinstance(x, ast.Name)} for n in body)
        reductions = [GROUP_REDUCTIONS[last_name(c)] for c in _calls(body, set(GROUP_REDUCTIONS))]
        if masks and reductions:
            out.append(("group_loop", loop, "fused_ops.scatter",
                        "a loop over unique ids masking each group and reducing it", f"mx_driving.{reductions[0]}"))
    return out


def _draws_gaussian(name: str) -> bool:
    """draw_heatmap_gaussian, draw_umich_gaussian, gaussian_radius -- not gaussian_blur and the like."""
    name = name.lower()
    return "gaussian" in name and any(w in name for w in GAUSSIAN_TARGET_WORDS)


def gaussian_loop_matches(sf: SourceFile, fn) -> list:
    loops = [n for n in _walk_local(fn) if isinstance(n, (ast.For, ast.While))]
    hits = [l for l in loops if any(_draws_gaussian(last_name(c) or "") for c in _walk_local(l) if isinstance(c, ast.Call))]
    inner = {id(i) for o in hits for i in _walk_local(o) if i in hits}
    return [("centerpoint_targets", l, "fused_ops.npu_gaussian",
             "a per-object loop drawing gaussian heatmap targets") for l in hits if id(l) not in inner]


def _host_library_call(sf: SourceFile, call) -> bool:
    """`np.exp(...)`, `math.exp(...)`: host arrays and scalars (a data pipeline's targets), no device ops."""
    return (sf.qualified(call.func) or "").split(".", 1)[0] in HOST_LIBRARIES


def _is_gaussian(sf: SourceFile, call, grid: set) -> bool:
    """`exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))` (torch): exp of a negated sum of squared
    differences, scaled by a division or product, with the pixel coordinates of a grid (`grid`: names bound to
    arange / meshgrid / linspace results) in them -- a gaussian drawn over a map, not a likelihood of points."""
    if not (isinstance(call, ast.Call) and last_name(call) == "exp") or _host_library_call(sf, call):
        return False
    arg = call.args[0] if call.args else (call.func.value if isinstance(call.func, ast.Attribute) else None)
    if arg is None:
        return False
    nodes = list(ast.walk(arg))
    negated = any(isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub) for n in nodes)
    differences = [b for b in map(_squared_base, nodes) if isinstance(b, ast.BinOp) and isinstance(b.op, ast.Sub)]
    scaled = any(isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Div, ast.Mult)) for n in nodes)
    on_grid = sum(1 for d in differences if _names(d) & grid)
    return negated and len(differences) >= 2 and on_grid >= 2 and scaled


def _grid_names(fn) -> set:
    """Names `fn` binds to coordinate grids (`ys = torch.arange(h).view(h, 1)`, `yy, xx = torch.meshgrid(...)`)
    or to values computed from them."""
    assigns = sorted((n for n in _walk_local(fn) if isinstance(n, ast.Assign)), key=lambda n: (n.lineno, n.col_offset))
    out = set()
    for n in assigns:
        if _calls(list(ast.walk(n.value)), set(GRID_CONSTRUCTORS)) or _names(n.value) & out:
            out |= {x.id for t in n.targets for x in ast.walk(t) if isinstance(x, ast.Name)}
    return out


def _squared_base(node):
    """`d` of `d ** 2`, `d.pow(2)`, `torch.square(d)`; else None."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and isinstance(node.right, ast.Constant) \
            and node.right.value == 2:
        return node.left
    if isinstance(node, ast.Call) and last_name(node) == "pow" and isinstance(node.func, ast.Attribute) \
            and any(isinstance(a, ast.Constant) and a.value == 2 for a in node.args):
        return node.func.value
    if isinstance(node, ast.Call) and last_name(node) == "square" and node.args:
        return node.args[0]
    return None


def _names(node) -> set:
    return {x.id for x in ast.walk(node) if isinstance(x, ast.Name)}


def _elementwise_max_of(sf: SourceFile, call, gaussians: list, derived: set) -> bool:
    """`torch.maximum(heat, g)`, `torch.max(region, g, out=region)`, `heat.maximum(g)`: an element-wise max of
    two tensors, one of them the gaussian (or computed from it) -- not a reduction such as `x.max(-1)`."""
    if last_name(call) not in ELEMENTWISE_MAX or _host_library_call(sf, call):
        return False
    function_form = (sf.qualified(call.func) or "").startswith("torch.")
    operands = [a for a in call.args if not isinstance(a, ast.Constant)]
    if len(operands) + (0 if function_form or not isinstance(call.func, ast.Attribute) else 1) < 2:
        return False
    return any(g in list(ast.walk(call)) for g in gaussians) or bool(_names(call) & derived)


def gaussian_heatmap_matches(sf: SourceFile, fn, skip=()) -> list:
    """A per-object loop that computes a gaussian on the device (`torch.exp(-(dx**2 + dy**2) / (2 * s**2))`)
    and merges it into a heatmap with an element-wise max (`heat = torch.maximum(heat, blob)`,
    `torch.max(region, g, out=region)`): gaussian heatmap targets written out, whatever the helpers are called.
    `skip`: loops matched already (by their helpers' names); loops inside a matched loop are not reported."""
    hits = []
    grid = _grid_names(fn)
    for loop in (n for n in _walk_local(fn) if isinstance(n, (ast.For, ast.While))) if grid else ():
        body = list(_walk_local(loop))
        gaussians = [c for c in body if _is_gaussian(sf, c, grid)]
        if not gaussians:
            continue
        derived = set()          # names holding the gaussian or values computed from it
        for n in sorted((n for n in body if isinstance(n, ast.Assign)), key=lambda n: (n.lineno, n.col_offset)):
            if any(g in list(ast.walk(n.value)) for g in gaussians) or _names(n.value) & derived:
                derived |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        if any(_elementwise_max_of(sf, c, gaussians, derived) for c in body if isinstance(c, ast.Call)):
            hits.append(loop)
    taken = hits + list(skip)
    inner = {id(i) for o in taken for i in _walk_local(o)}
    return [("gaussian_heatmap", l, "fused_ops.npu_draw_gaussian_to_heatmap",
             "a per-object loop computing a gaussian and merging it into a heatmap with an element-wise max")
            for l in hits if id(l) not in inner and l not in skip]


def reduce_call_matches(sf: SourceFile, fn) -> list:
    """`out.index_reduce(0, index, src, "amax")`, `out.scatter_reduce(0, index, src, reduce="mean")`: a
    per-group reduction by index -> mx_driving.scatter_max / scatter_mean (scatter_max: dim 0 only)."""
    out = []
    for call in _calls(list(_walk_local(fn)), set(INDEX_REDUCE_METHODS)):
        if not isinstance(call.func, ast.Attribute):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        reduce = call.args[3] if len(call.args) > 3 else kw.get("reduce")
        dim = call.args[0] if call.args else kw.get("dim")
        if not (isinstance(reduce, ast.Constant) and reduce.value in INDEX_REDUCTIONS):
            continue
        op = INDEX_REDUCTIONS[reduce.value]
        if op == "scatter_max" and not (isinstance(dim, ast.Constant) and dim.value == 0):
            continue
        out.append(("index_reduce", call, "fused_ops.scatter",
                    f"a reduction by index with reduce={reduce.value!r}", f"mx_driving.{op}"))
    return out


def greedy_nms_matches(sf: SourceFile, fn) -> list:
    """`order = scores.argsort(descending=True)`, then a loop that keeps `order[0]` and refilters
    `order = order[1:][ious <= thr]`: greedy non-maximum suppression, one IoU and one mask read per kept box."""
    local = list(_walk_local(fn))
    orders = {t.id for n in local if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
              and last_name(n.value) in ("argsort", "sort") for t in n.targets if isinstance(t, ast.Name)}
    out = []
    for loop in (n for n in local if isinstance(n, (ast.While, ast.For))):
        for n in _walk_local(loop):
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                    and n.targets[0].id in orders and isinstance(n.value, ast.Subscript) \
                    and n.targets[0].id in {x.id for x in ast.walk(n.value.value) if isinstance(x, ast.Name)} \
                    and any(isinstance(c, ast.Compare) and isinstance(c.ops[0], (ast.LtE, ast.Lt))
                            for c in ast.walk(n.value.slice)):
                out.append(("host_nms", loop, "fused_ops.nms",
                            "a loop keeping the best-scored box and dropping the boxes overlapping it"))
                break
    return out


def _name_args(call: ast.Call) -> set:
    """Names the call reads directly: its receiver (`d.min(...)`) and its plain-name arguments."""
    names = {a.id for a in call.args if isinstance(a, ast.Name)}
    if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
        names.add(call.func.value.id)
    return names


def _running_minima(body: list) -> set:
    """Names a loop body lowers to an elementwise minimum with a new value: `d = torch.minimum(d, x)` (min,
    fmin, `d.minimum(x)`), `d = torch.where(x < d, x, d)`, or `d[m] = x[m]` under `m = x < d`."""
    out = set()
    masks = {}          # mask name -> names its comparison reads
    for n in body:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                and isinstance(n.value, ast.Compare):
            masks[n.targets[0].id] = {x.id for x in ast.walk(n.value) if isinstance(x, ast.Name)}
    for n in body:
        if not (isinstance(n, ast.Assign) and len(n.targets) == 1):
            continue
        target, value = n.targets[0], n.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Call):
            d = target.id
            if last_name(value) in ("minimum", "min", "fmin") and d in _name_args(value) and \
                    len(value.args) + (isinstance(value.func, ast.Attribute) and
                                       isinstance(value.func.value, ast.Name)) >= 2:
                out.add(d)
            elif last_name(value) == "where" and len(value.args) == 3 and isinstance(value.args[0], ast.Compare) \
                    and d in {x.id for x in ast.walk(value.args[0]) if isinstance(x, ast.Name)} \
                    and isinstance(value.args[2], ast.Name) and value.args[2].id == d:
                out.add(d)
        elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
                and isinstance(target.slice, ast.Name) and target.value.id in masks.get(target.slice.id, set()):
            out.add(target.value.id)
    return out


def _argmax_of(value, names: set) -> bool:
    """`argmax(d)` / `d.argmax(-1)` / `torch.max(d, -1)[1]` / `d.max(-1).indices` with d in `names`."""
    if isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Constant) and value.slice.value == 1:
        value = value.value
    elif isinstance(value, ast.Attribute) and value.attr == "indices":
        value = value.value
    elif isinstance(value, ast.Call) and last_name(value) == "argmax":
        return bool(_name_args(value) & names)
    else:
        return False
    return isinstance(value, ast.Call) and last_name(value) == "max" and bool(_name_args(value) & names) \
        and len(value.args) + len(value.keywords) + isinstance(value.func, ast.Attribute) >= 2


def furthest_point_matches(sf: SourceFile, fn) -> list:
    """A loop that lowers a running distance to the chosen points (`d = min(d, dist to the new point)`) and
    picks the next point as its argmax, which the loop reads again: iterative furthest point sampling, one
    distance update, one argmax and one gather per sampled point."""
    out = []
    for loop in (n for n in _walk_local(fn) if isinstance(n, (ast.For, ast.While))):
        body = list(_walk_local(loop))
        minima = _running_minima(body)
        if not minima:
            continue
        picks = set()
        for n in body:
            if isinstance(n, ast.Assign) and len(n.targets) == 1:
                t = n.targets[0]
                if isinstance(t, ast.Name) and _argmax_of(n.value, minima):
                    picks.add(t.id)
                elif isinstance(t, ast.Tuple) and len(t.elts) == 2 and isinstance(t.elts[1], ast.Name) \
                        and isinstance(n.value, ast.Call) and last_name(n.value) == "max" \
                        and _name_args(n.value) & minima:
                    picks.add(t.elts[1].id)        # `_, far = torch.max(d, -1)`
        read = {x.id for x in body if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Load)}
        if picks & read:
            out.append(("furthest_point_sampling", loop, "fused_ops.mmcv_ops",
                        "a loop picking the point farthest from those chosen (argmax of a running minimum distance)",
                        "mx_driving.furthest_point_sampling"))
    return out


def _half(node) -> bool:
    """`x / 2`, `x * 0.5`, `0.5 * x`."""
    return any(isinstance(b, ast.BinOp) and (
        isinstance(b.op, ast.Div) and isinstance(b.right, ast.Constant) and b.right.value == 2
        or isinstance(b.op, ast.Mult) and any(isinstance(o, ast.Constant) and o.value == 0.5 for o in (b.left, b.right)))
        for b in ast.walk(node))


def _is_abs(node) -> bool:
    return any(isinstance(c, ast.Call) and last_name(c) == "abs" for c in ast.walk(node))


def points_in_box_matches(sf: SourceFile, fn) -> list:
    """`for box in boxes: inside = (abs(rotated - box[:3]) <= box[3:6] / 2).all(-1)` -> points_in_box."""
    out = []
    for loop in (n for n in _walk_local(fn) if isinstance(n, ast.For)):
        body = list(_walk_local(loop))
        tests = [n for n in body if isinstance(n, ast.Compare) and len(n.ops) == 1
                 and isinstance(n.ops[0], (ast.LtE, ast.Lt)) and _is_abs(n.left) and _half(n.comparators[0])]
        combined = _calls(body, {"all"}) or any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitAnd) for n in body)
        if tests and combined:
            out.append(("points_in_box", loop, "fused_ops.points_in_box",
                        "a per-box loop comparing the points' offsets with half the box size"))
    return out


def _same_file_callees(sf: SourceFile, fn, depth: int = 2) -> list:
    """Functions of this file that `fn` calls by name (`corners(b)`, `self.corners(b)`), and theirs, `depth`
    levels down: a reference split into helpers (corners, polygon area) is one computation."""
    defs = {d.name: d for d in sf.of(ast.FunctionDef)}
    found, todo = [], [fn]
    for _ in range(depth):
        nxt = []
        for f in todo:
            for c in (n for n in _walk_local(f) if isinstance(n, ast.Call)):
                g = c.func
                name = g.id if isinstance(g, ast.Name) else (g.attr if isinstance(g, ast.Attribute) and isinstance(
                    g.value, ast.Name) and g.value.id in ("self", "cls") else None)
                d = defs.get(name)
                if d is not None and d is not fn and d not in found:
                    found.append(d)
                    nxt.append(d)
        todo = nxt
    return found


def _trig_angles(sf: SourceFile, nodes: list, which: str) -> dict:
    """{dump of the angle: names bound to its cos (`which` = "cos") or sin, and the calls themselves} for
    device-side `torch.cos(yaw)` / `yaw.cos()` (not numpy's or math's: host code)."""
    out: dict = {}
    calls = [c for c in _calls(nodes, {which}) if not _host_library_call(sf, c)]
    for c in calls:
        angle = c.args[0] if c.args else (c.func.value if isinstance(c.func, ast.Attribute) else None)
        if angle is not None:
            out.setdefault(ast.dump(angle), set()).add(id(c))
    for n in nodes:      # `cos, sin = yaw.cos(), yaw.sin()`, `c = torch.cos(r)[..., None]`
        if not isinstance(n, ast.Assign) or len(n.targets) != 1:
            continue
        t, v = n.targets[0], n.value
        pairs = list(zip(t.elts, v.elts)) if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) \
            and len(t.elts) == len(v.elts) else [(t, v)]
        for target, value in pairs:
            if isinstance(target, ast.Name):
                for angle, ids in out.items():
                    if any(id(x) in ids for x in ast.walk(value)):
                        ids.add(target.id)
    return out


def _uses_term(node, terms: set) -> bool:
    return any(id(x) in terms or isinstance(x, ast.Name) and x.id in terms for x in ast.walk(node))


def _rotates_by_angle(sf: SourceFile, nodes: list) -> bool:
    """Box half-sizes or offsets multiplied by the cos and by the sin of the same angle (`dx * cos - dy * sin`),
    or a rotation matrix stacked from both (`stack([cos, -sin, sin, cos])`) multiplied with a matmul / einsum."""
    cos, sin = _trig_angles(sf, nodes, "cos"), _trig_angles(sf, nodes, "sin")
    products = [n for n in nodes if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult)]
    matmuls = [n for n in nodes if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult)] + \
        _calls(nodes, {"matmul", "einsum", "bmm"})
    for angle in cos.keys() & sin.keys():
        c, s = cos[angle], sin[angle]
        if any(_uses_term(p, c) for p in products) and any(_uses_term(p, s) for p in products):
            return True
        matrices = {t.id for n in nodes if isinstance(n, ast.Assign) and _calls(list(ast.walk(n.value)), {"stack", "tensor", "cat"})
                    and _uses_term(n.value, c) and _uses_term(n.value, s) for t in n.targets if isinstance(t, ast.Name)}
        if matrices and any(_uses_term(m, matrices) for m in matmuls):
            return True
    return False


def _is_cross_product(node) -> bool:
    """`x1 * y2 - x2 * y1`: the difference of two products."""
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and all(
        isinstance(t, ast.BinOp) and isinstance(t.op, ast.Mult) for t in (node.left, node.right))


def _shoelace_area(nodes: list) -> bool:
    """A polygon's area by the shoelace formula: cross products of consecutive vertices summed (`(x * yn - y *
    xn).sum(-1)`, `area += x1 * y2 - x2 * y1` in a vertex loop) -- a lone cross product (an edge-crossing
    parameter) is not an area."""
    for n in nodes:
        if isinstance(n, ast.Call) and last_name(n) == "sum":
            inner = [n.func.value] if isinstance(n.func, ast.Attribute) else n.args[:1]
            if any(_is_cross_product(x) for i in inner for x in ast.walk(i)):
                return True
        if isinstance(n, ast.AugAssign) and isinstance(n.op, (ast.Add, ast.Sub)) and \
                any(_is_cross_product(x) for x in ast.walk(n.value)):
            return True
    return False


def _union_of(denominator, inter: str) -> bool:
    """`area_a + area_b - inter` (inside a clamp / + eps allowed): the union of two areas minus `inter`."""
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and isinstance(n.left, ast.BinOp)
               and isinstance(n.left.op, ast.Add) and ast.dump(n.right) == inter for n in ast.walk(denominator))


def _iou_ratios(nodes: list) -> list:
    """Divisions `inter / (area_a + area_b - inter)`, also through a name (`union = a + b - inter`; `inter /
    union.clamp(min=eps)`)."""
    unions: dict = {}          # name -> dump of the intersection it subtracts
    for n in nodes:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            for b in ast.walk(n.value):
                if isinstance(b, ast.BinOp) and isinstance(b.op, ast.Sub) and isinstance(b.left, ast.BinOp) \
                        and isinstance(b.left.op, ast.Add):
                    unions[n.targets[0].id] = ast.dump(b.right)
    out = []
    for n in nodes:
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div):
            inter = ast.dump(n.left)
            if _union_of(n.right, inter) or any(isinstance(x, ast.Name) and unions.get(x.id) == inter
                                                for x in ast.walk(n.right)):
                out.append(n)
    return out


def rotated_iou_matches(sf: SourceFile, fn) -> list:
    """Rotated BEV IoU written out: box corners rotated by the cos and sin of a yaw, the intersection polygon's
    area by the shoelace formula, and `inter / (area_a + area_b - inter)` -- the ratio in `fn`, the rotation and
    the area in `fn` or the helpers of this file it calls. Every part is required: an axis-aligned IoU has no
    rotation, a box-corner or polygon-area helper no ratio."""
    local = list(_walk_local(fn))
    ratios = _iou_ratios(local)
    if not ratios:
        return []
    reach = local + [n for h in _same_file_callees(sf, fn) for n in _walk_local(h)]
    if not (_shoelace_area(reach) and _rotates_by_angle(sf, reach)):
        return []
    return [("rotated_iou", fn, "fused_ops.mmcv_ops",
             "box corners rotated by cos/sin of the yaw, a shoelace intersection area, intersection over union",
             "mx_driving.boxes_iou_bev")]


_QUANTIZERS = ("floor", "long", "int", "trunc", "to", "type")


def _quantizes(node) -> bool:
    """`((p - lo) / size).floor()`, `.long()` / `.int()` / `.to(torch.long)` of a division, `torch.floor(x / s)`,
    `torch.div(x, s, rounding_mode="floor")`, `x // s`: coordinates cut into cells (tensor methods and torch
    functions only: builtin `int(a / b)` is a scalar)."""
    for n in ast.walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.FloorDiv):
            return True
        if isinstance(n, ast.Call) and last_name(n) == "div" and any(
                k.arg == "rounding_mode" and isinstance(k.value, ast.Constant) and k.value.value in ("floor", "trunc")
                for k in n.keywords):
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _QUANTIZERS:
            if n.func.attr in ("to", "type") and not _integer_dtype(n):
                continue        # `.to(device)`, `.type_as(x)`: not a cast to cell indices
            inner = [n.func.value] + list(n.args[:1])
            if any(isinstance(x, ast.BinOp) and isinstance(x.op, ast.Div) for i in inner for x in ast.walk(i)):
                return True
    return False


def _integer_dtype(call) -> bool:
    """`.to(torch.long)`, `.to(dtype=torch.int32)`, `.type(torch.int64)`."""
    return any(isinstance(a, ast.Attribute) and a.attr in ("long", "int", "int32", "int64")
               for a in list(call.args) + [k.value for k in call.keywords])


def _quantized_names(nodes: list) -> set:
    """Names bound to quantized coordinates, or to values computed from them (a range filter `coords[keep]`, a
    linearized cell key `(c[:, 0] * ny + c[:, 1]) * nx + c[:, 2]`), in source order."""
    out: set = set()
    for n in sorted((n for n in nodes if isinstance(n, ast.Assign)), key=lambda n: (n.lineno, n.col_offset)):
        t, v = n.targets[0], n.value
        pairs = list(zip(t.elts, v.elts)) if len(n.targets) == 1 and isinstance(t, ast.Tuple) \
            and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts) else [(x, v) for x in n.targets]
        for target, value in pairs:
            mask = any(isinstance(x, ast.Compare) for x in ast.walk(value))     # `keep = (c >= 0).all(1)`: not cells
            if isinstance(target, ast.Name) and (_quantizes(value) or _names(value) & out and not mask):
                out.add(target.id)
    return out


def _inverse_of_unique(sf: SourceFile, n, quantized: set) -> Optional[str]:
    """The inverse-index name of `uniq, inverse = torch.unique(coords, dim=0, return_inverse=True)` over quantized
    coordinates (or a key made from them), else None."""
    if not (isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Tuple)
            and len(n.targets[0].elts) >= 2 and isinstance(n.targets[0].elts[1], ast.Name)
            and isinstance(n.value, ast.Call) and last_name(n.value) == "unique" and _torch_unique(sf, n.value)):
        return None
    call = n.value
    if not any(k.arg == "return_inverse" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords):
        return None
    data = call.args[0] if call.args else (call.func.value if isinstance(call.func, ast.Attribute) else None)
    if data is None or not (_names(data) & quantized or _quantizes(data)):
        return None
    return n.targets[0].elts[1].id


_POINT_REDUCTIONS = ("index_add_", "index_add", "scatter_add_", "scatter_add", "scatter_reduce", "scatter_reduce_",
                     "index_reduce", "index_reduce_", "index_put_", "scatter_mean", "scatter_max")


def _reduces_by(call, inverse: str) -> bool:
    """`call` reduces values by the index `inverse` (`index_put_` only with accumulate=True: else it overwrites)."""
    if last_name(call) == "index_put_" and not any(
            k.arg == "accumulate" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords):
        return False
    return any(inverse in _names(a) for a in list(call.args) + [k.value for k in call.keywords])


def _voxelizations(sf: SourceFile, fn) -> list:
    """(where to report, the reductions) of each dynamic voxelization written out in `fn`."""
    local = list(_walk_local(fn))
    quantized = _quantized_names(local)
    out = []
    for n in local if quantized else ():
        inverse = _inverse_of_unique(sf, n, quantized)
        if inverse is None:
            continue
        reductions = [c for c in _calls(local, set(_POINT_REDUCTIONS)) if _reduces_by(c, inverse)]
        if not reductions:
            continue
        loops = [l for l in local if isinstance(l, (ast.For, ast.While)) and n in list(_walk_local(l))
                 and any(r in list(_walk_local(l)) for r in reductions)]
        out.append((max(loops, key=lambda l: l.lineno) if loops else n.value, reductions))
    return out


def dynamic_voxelization_matches(voxels: list) -> list:
    """Dynamic voxelization written out: point coordinates quantized to cells, `torch.unique(cells, dim=0,
    return_inverse=True)`, and the point features reduced by the inverse index (index_add_ / scatter_add_ /
    scatter_reduce / index_reduce: sums and counts for a mean, or a max). Reported at the innermost loop holding
    all three (one voxelization per sample), else at the unique. A unique over ids that are not cells, cells that
    are never reduced, a unique that only counts are not it. `voxels`: _voxelizations(sf, fn)."""
    return [("dynamic_voxelization", at, "fused_ops.voxelization",
             "point coordinates quantized to cells, unique cells with their inverse index, features reduced by it",
             "mx_driving.Voxelization(max_num_points=-1) + mx_driving.dynamic_scatter")
            for at, _ in voxels]


def _squares(node) -> bool:
    """`x.pow(2)`, `x ** 2`, `torch.square(x)`, `x * x`."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and last_name(n) in ("pow", "square") and (
                last_name(n) == "square" or any(isinstance(a, ast.Constant) and a.value == 2 for a in n.args)):
            return True
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) and isinstance(n.right, ast.Constant) and n.right.value == 2:
            return True
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult) and ast.dump(n.left) == ast.dump(n.right) \
                and isinstance(n.left, (ast.Name, ast.Attribute)):
            return True
    return False


def rms_norm_matches(sf: SourceFile, fn) -> list:
    """`x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)` (or `/ sqrt(...)`): the mean of squares
    under a reciprocal square root, multiplying or dividing the input."""
    out = []
    for n in _walk_local(fn):
        if not (isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Mult, ast.Div))):
            continue
        root = n.right if isinstance(n.right, ast.Call) else (n.left if isinstance(n.left, ast.Call) else None)
        if root is None or last_name(root) not in (("rsqrt",) if isinstance(n.op, ast.Mult) else ("sqrt",)):
            continue
        means = _calls(list(ast.walk(root)), {"mean"})
        if means and any(_squares(m) for m in means) and any(
                isinstance(b, ast.BinOp) and isinstance(b.op, ast.Add) for b in ast.walk(root)):
            out.append(("rms_norm", n, "torch_npu_features.npu_rms_norm",
                        "the input scaled by the reciprocal square root of its mean square plus eps"))
    return out


def _rotate_half_functions(sf: SourceFile) -> set:
    """Functions returning `torch.cat((-x2, x1), dim=-1)`: rotate_half of rotary embeddings."""
    out = set()
    for fn in sf.of(ast.FunctionDef):
        for r in (n for n in _walk_local(fn) if isinstance(n, ast.Return) and isinstance(n.value, ast.Call)):
            c = r.value
            if last_name(c) == "cat" and c.args and isinstance(c.args[0], (ast.Tuple, ast.List)) and len(c.args[0].elts) == 2 \
                    and isinstance(c.args[0].elts[0], ast.UnaryOp) and isinstance(c.args[0].elts[0].op, ast.USub):
                out.add(fn.name)
    return out


def rotary_matches(sf: SourceFile, fn, rotate_half: set) -> list:
    """`x * cos + rotate_half(x) * sin`."""
    out = []
    for n in _walk_local(fn):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add) and all(
                isinstance(t, ast.BinOp) and isinstance(t.op, ast.Mult) for t in (n.left, n.right)):
            calls = [c for t in (n.left, n.right) for c in (t.left, t.right) if isinstance(c, ast.Call)]
            if any(last_name(c) in rotate_half for c in calls):
                out.append(("rotary_mul", n, "torch_npu_features.npu_rotary_mul",
                            "x * cos + rotate_half(x) * sin, rotate_half = cat(-x2, x1)"))
    return out


def _transposed_key(node) -> bool:
    """`k.transpose(-2, -1)`, `k.transpose(-1, -2)`, `k.mT`."""
    if isinstance(node, ast.Attribute) and node.attr == "mT":
        return True
    return isinstance(node, ast.Call) and last_name(node) == "transpose" and len(node.args) == 2 and all(
        isinstance(a, ast.UnaryOp) and isinstance(a.op, ast.USub) and isinstance(a.operand, ast.Constant) for a in node.args)


def attention_matches(sf: SourceFile, fn) -> list:
    """`scores = q @ k.transpose(-2, -1)`, `attn = scores.softmax(-1)`, `out = attn @ v` in one function: the
    softmax reads the first product and the second product reads the softmax (by name or inline)."""
    local = list(_walk_local(fn))
    products = [n for n in local if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult)]
    first = [p for p in products if _transposed_key(p.right)]
    if not first:
        return []
    scores = {n.targets[0].id for n in local if isinstance(n, ast.Assign) and len(n.targets) == 1
              and isinstance(n.targets[0], ast.Name) and any(p in list(ast.walk(n.value)) for p in first)}
    softmaxes = [c for c in _calls(local, {"softmax"}) if any(p in list(ast.walk(c)) for p in first) or (
        scores and {x.id for x in ast.walk(c) if isinstance(x, ast.Name)} & scores)]
    if not softmaxes:
        return []
    probs = {n.targets[0].id for n in local if isinstance(n, ast.Assign) and len(n.targets) == 1
             and isinstance(n.targets[0], ast.Name) and any(s in list(ast.walk(n.value)) for s in softmaxes)}
    for n in local:      # dropout and masks may sit between the softmax and the second product
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                and {x.id for x in ast.walk(n.value) if isinstance(x, ast.Name)} & probs:
            probs.add(n.targets[0].id)
    second = [p for p in products if p not in first and (any(s in list(ast.walk(p.left)) for s in softmaxes)
                                                        or {x.id for x in ast.walk(p.left) if isinstance(x, ast.Name)} & probs)]
    if not second:
        return []
    start = min(first, key=lambda p: (p.lineno, p.col_offset))
    return [("fusion_attention", start, "torch_npu_features.npu_fusion_attention",
             "q @ k^T, softmax, then @ v in one function")]


def _head(sf: SourceFile, node) -> str:
    """A loop's header (`for lvl, (h, w) in enumerate(shapes):`) or a call as written, without comments."""
    if isinstance(node, ast.For):
        return f"for {sf.segment(node.target)} in {sf.segment(node.iter)}:"
    if isinstance(node, ast.While):
        return f"while {sf.segment(node.test)}:"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"def {node.name}({ast.unparse(node.args)}):"
    return sf.segment(node)


def structural_matches(sf: SourceFile) -> list:
    """(kind, node, catalog ref, text, how, op, call sites of the function it is in) of every structural match in
    the file."""
    src = sf.source
    cat = load()
    rotate_half = _rotate_half_functions(sf) if "cat" in src else set()
    out = []
    for fn in sf.of(ast.FunctionDef, ast.AsyncFunctionDef):
        if cat.replacement_for_callee(fn.name) is not None:
            continue        # a reference the catalog knows by name: its call sites are matched (with a diff)
        found = []
        if "grid_sample" in src:
            found += sampling_matches(sf, fn)
        vp = voxel_pooling_match(sf, fn) if "sort" in src else None
        found += [vp] if vp else []
        if vp is None and ("index_put" in src or "index_add" in src or "scatter_add" in src):
            from .splat import bev_splat_matches

            found += bev_splat_matches(sf, fn, list(_walk_local(fn)))
        if "unique" in src or "range(" in src:
            found += group_loop_matches(sf, fn)
        named = gaussian_loop_matches(sf, fn) if "gaussian" in src.lower() else []
        found += named
        if "exp" in src and "max" in src:
            found += gaussian_heatmap_matches(sf, fn, [m[1] for m in named])
        if "_reduce" in src:
            found += reduce_call_matches(sf, fn)
        if "abs" in src:
            found += points_in_box_matches(sf, fn)
        if "max" in src:
            found += furthest_point_matches(sf, fn)
        if "cos" in src and "sin" in src and "/" in src:
            found += rotated_iou_matches(sf, fn)
        if "return_inverse" in src:
            voxels = _voxelizations(sf, fn)
            # their reductions are the voxelization's (dynamic_scatter), not a scatter_max of their own
            reduced = {id(r) for _, rs in voxels for r in rs}
            found = [m for m in found if not (m[0] == "index_reduce" and id(m[1]) in reduced)]
            found += dynamic_voxelization_matches(voxels)
        if "sort" in src:
            found += greedy_nms_matches(sf, fn)
        if "rsqrt" in src or "sqrt" in src:
            found += rms_norm_matches(sf, fn)
        if rotate_half:
            found += rotary_matches(sf, fn, rotate_half)
        if "softmax" in src and "@" in src:
            found += attention_matches(sf, fn)
        calls = _call_sites(sf, fn) if found else ()
        for kind, node, ref, how, *op in found:      # op: the replacing op, when not the catalog entry's own
            out.append((kind, node, ref, f"{_head(sf, node)} ... ({how})", how, op[0] if op else "", calls))
    return out


def _call_sites(sf: SourceFile, fn) -> tuple:
    """Lines in the file that call `fn` by its name (`fn(...)`, `self.fn(...)`), outside `fn` itself: where the
    replaced code runs from (a dispatch's pure-PyTorch arm, a model's forward); at most three."""
    lines = []
    for call in sf.calls():
        f = call.func
        name = f.id if isinstance(f, ast.Name) else (f.attr if isinstance(f, ast.Attribute)
                                                       and isinstance(f.value, ast.Name) and f.value.id in ("self", "cls") else None)
        if name == fn.name and not (fn.lineno <= call.lineno <= fn.end_lineno) and call.lineno not in lines:
            lines.append(call.lineno)
    return tuple(lines[:3])

