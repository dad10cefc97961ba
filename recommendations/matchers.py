"""Source matchers: find the code the catalog has a fused replacement for (rules NPA801-NPA809, NPA816, NPA818).

One `ast` pass per file (pyast.py): qualified names come from the file's imports, so `import
spconv.pytorch as spconv`, `from mmcv.ops import DeformConv2d` and `mmcv.ops.DeformConv2d` are
recognized alike. Matchers only find; codemods (recommendations/codemods, libcst) change code, and are
loaded only for a file with a match.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Optional

from .catalog import load
from .pyast import SourceFile, callee_text, last_name, one_line
from .structure import structural_matches

DCN_NAMES = {"DeformConv2d": "deform_conv2d", "DeformConv2dPack": "deform_conv2d", "deform_conv2d": "deform_conv2d",
             "DeformConv2dFunction": "deform_conv2d", "ModulatedDeformConv2d": "modulated_deform_conv2d",
             "ModulatedDeformConv2dPack": "modulated_deform_conv2d", "modulated_deform_conv2d": "modulated_deform_conv2d",
             "ModulatedDeformConv2dFunction": "modulated_deform_conv2d"}
SPARSE_NAMES = ("SparseConv3d", "SubMConv3d", "SparseInverseConv3d", "SparseConvTensor", "SparseSequential")
HOST_COPY_METHODS = ("cpu", "numpy", "detach", "tolist")
MAXPOOL_QUALIFIED = {"torch.nn.MaxPool2d", "torch.nn.modules.pooling.MaxPool2d"}
HUNGARIAN_QUALIFIED = {"scipy.optimize.linear_sum_assignment", "scipy.optimize._lsap.linear_sum_assignment"}
RELU_QUALIFIED = ("torch.relu", "torch.nn.functional.relu", "torch.relu_", "torch.nn.functional.relu_")
# A callee whose name says it solves an assignment (a host matcher when it reads a host copy of a cost matrix).
ASSIGNMENT_WORDS = ("assignment", "hungarian", "bipartite_match")
# Names the qualified-name checks in `scan` compare with (the first or last part of each).
QUALIFIED_TOKENS = ("MaxPool2d", "mmcv", "spconv", "torch_scatter", "linear_sum_assignment", "oxeliz")
# mmcv / mmdetection3d voxelization (a CUDA extension); the project's own class of that name is not it.
VOXELIZATION_PACKAGES = ("mmcv.ops.", "mmdet3d.ops.")
VOXELIZATION_NAMES = ("Voxelization", "voxelization")
# Statement lists that are indented blocks (the add+relu pair sits in a function or loop body).
_BLOCK_FIELDS = ("body", "orelse", "finalbody")


def scan_tokens() -> tuple:
    """Every match needs one of these written in the file: the callee names the catalog maps (MSDA,
    bev_pool_v2), the names of the qualified-name checks, the names the structural detectors look for."""
    return tuple(load().replacement_tokens({"multi_scale_deformable_attn", "bev_pool_v3"})) + QUALIFIED_TOKENS + (
        "grid_sample", "argsort", "sort(", "unique", "gaussian", "assign", "match", "abs", "sqrt", "softmax", "exp",
        "_reduce", "max", "index_put", "index_add", "scatter_add", "sin(", "return_inverse")


@dataclass
class SourceMatch:
    kind: str          # a key of rule_docs.FUSED_OP_RULES: msda | msda_structure | deformable_aggregation | points_in_box | bev_pool_v2 | voxel_pooling | add_relu | maxpool | deform_conv | sparse_conv | centerpoint_targets | torch_scatter | group_loop | hungarian_host | voxelization | mmcv_op | rotated_iou | dynamic_voxelization
    line: int
    function: str      # enclosing function ("<module>" at top level)
    text: str          # the matched code, one line
    catalog_ref: str
    col: int = 1       # 1-based column of the matched node
    related: tuple = ()  # other lines of the same computation (a host copy the call reads, ...)
    how: str = ""      # what in the syntax tree it was recognized by (structural matches)
    op: str = ""       # the replacing op when not the catalog entry's own name (scatter_mean of `scatter`)


def _is_maxpool_3_2_1(call: ast.Call) -> bool:
    want = {"kernel_size": 3, "stride": 2, "padding": 1}
    order = ("kernel_size", "stride", "padding")
    got = {}
    for i, a in enumerate(call.args[:3]):
        if isinstance(a, ast.Constant) and type(a.value) is int:
            got[order[i]] = a.value
    for k in call.keywords:
        if k.arg in want and isinstance(k.value, ast.Constant) and type(k.value.value) is int:
            got[k.arg] = k.value.value
    return got == want


def _copies_to_host(node) -> bool:
    return any(isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr in HOST_COPY_METHODS
               for c in ast.walk(node))


def _root_name(node) -> Optional[str]:
    while isinstance(node, (ast.Subscript, ast.Attribute, ast.Call)):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return node.id if isinstance(node, ast.Name) else None


def _host_copy_line(sf: SourceFile, function, arg, depth: int = 0) -> Optional[int]:
    """The line where `arg` -- or the tensor it was assigned or iterated from in `function` -- is copied to
    the host (`.cpu()`, `.numpy()`, `.tolist()`, `.detach()`); None when it is not."""
    if _copies_to_host(arg):
        return arg.lineno
    name = _root_name(arg)
    if name is None or function is None or depth > 3:
        return None
    for n in ast.walk(function):
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in n.targets):
            found = _host_copy_line(sf, function, n.value, depth + 1)
            if found is not None:
                return found
        elif isinstance(n, (ast.For, ast.comprehension)) and name in {x.id for x in ast.walk(n.target) if isinstance(x, ast.Name)}:
            found = _host_copy_line(sf, function, n.iter, depth + 1)
            if found is not None:
                return found
    return None


def _is_assignment_call(call: ast.Call) -> bool:
    """A call of the project's own assignment solver (`greedy_assignment(...)`, `hungarian_match(...)`)."""
    name = (last_name(call) or "").lower()
    return any(w in name for w in ASSIGNMENT_WORDS) and not name.startswith(("np.", "torch."))


def may_match(source: str) -> bool:
    """False when `source` cannot contain anything `scan` finds: every match needs one of these names
    written in the file."""
    return any(token in source for token in scan_tokens()) or ("+=" in source and "relu" in source.lower())


def scan(source: str, sf: Optional[SourceFile] = None) -> list:
    """Every fused-op opportunity in one file's source; [] when it does not parse."""
    if not may_match(source):
        return []
    sf = sf or SourceFile.parse(source)
    if sf is None:
        return []
    cat = load()
    mmcv_ops = cat.ref("fused_ops.mmcv_ops")["by_mmcv_name"]
    out = []

    def add(kind, node, ref, text=None, related=(), how="", op=""):
        # a match on a whole function (rotated_iou) is in that function, not in the one around it
        function = node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else sf.function_name(node)
        out.append(SourceMatch(kind, node.lineno, function, one_line(text or sf.segment(node)), ref,
                               node.col_offset + 1, tuple(related), how, op))

    for node in sf.of(ast.Call):
        if isinstance(node, ast.Call):
            q = sf.qualified(node.func) or ""
            last = q.rsplit(".", 1)[-1]
            text = callee_text(node)
            if cat.replacement_for_callee(text, {"multi_scale_deformable_attn"}):
                add("msda", node, "fused_ops.multi_scale_deformable_attn")
            elif cat.replacement_for_callee(text, {"bev_pool_v3"}):
                add("bev_pool_v2", node, "fused_ops.bev_pool_v3")
            elif q in MAXPOOL_QUALIFIED and _is_maxpool_3_2_1(node):
                add("maxpool", node, "fused_ops.npu_max_pool2d")
            elif q.startswith("mmcv.ops.") and last in DCN_NAMES:
                add("deform_conv", node, f"fused_ops.{DCN_NAMES[last]}")
            elif q.startswith("spconv.") or (q.startswith("mmcv.ops.") and last in SPARSE_NAMES):
                add("sparse_conv", node, "fused_ops.sparse_conv3d")
            elif q.startswith(VOXELIZATION_PACKAGES) and last in VOXELIZATION_NAMES:
                add("voxelization", node, "fused_ops.voxelization")
            elif q.startswith("mmcv.ops.") and last in mmcv_ops:
                add("mmcv_op", node, "fused_ops.mmcv_ops", op=f"mx_driving.{mmcv_ops[last]}")
            elif q.startswith("torch_scatter.") or q == "torch_scatter":
                add("torch_scatter", node, "fused_ops.scatter")
            elif node.args and (q in HUNGARIAN_QUALIFIED or _is_assignment_call(node)):
                copy = _host_copy_line(sf, sf.enclosing_function(node), node.args[0])
                if copy is not None:
                    add("hungarian_host", node, "fused_ops.hungarian_match",
                        related=(copy,) if copy != node.lineno else ())
    for kind, node, ref, text, how, op, calls in structural_matches(sf):
        add(kind, node, ref, text=text, how=how, op=op, related=calls)

    for first, second, var, other in add_relu_pairs(sf):
        out.append(SourceMatch("add_relu", first.lineno, sf.function_name(first),
                               one_line(f"{sf.segment(first)}; {sf.segment(second)}"), "fused_ops.npu_add_relu",
                               first.col_offset + 1))
    return sorted(out, key=lambda s: (s.line, s.col))


def _is_relu_of(sf: SourceFile, value, var: str) -> bool:
    if not (isinstance(value, ast.Call) and len(value.args) == 1 and isinstance(value.args[0], ast.Name)
            and value.args[0].id == var and all(k.arg == "inplace" for k in value.keywords)):
        return False
    f = value.func
    # self.relu(out) / self.act_relu(out): a module attribute named as a ReLU
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self" and "relu" in f.attr.lower():
        return True
    return sf.qualified(f) in RELU_QUALIFIED


def add_relu_pairs(sf: SourceFile) -> list:
    """(statement `out += identity`, statement `out = relu(out)`, out, identity) in indented blocks."""
    out = []
    if "+=" not in sf.source:
        return out
    for node in sf.nodes:
        if isinstance(node, ast.Module):
            continue
        for name in _BLOCK_FIELDS:
            body = getattr(node, name, None)
            if not isinstance(body, list):
                continue
            for s1, s2 in zip(body, body[1:]):
                if not (isinstance(s1, ast.AugAssign) and isinstance(s1.op, ast.Add)
                        and isinstance(s1.target, ast.Name) and isinstance(s1.value, ast.Name)):
                    continue
                var = s1.target.id
                if (isinstance(s2, ast.Assign) and len(s2.targets) == 1 and isinstance(s2.targets[0], ast.Name)
                        and s2.targets[0].id == var and _is_relu_of(sf, s2.value, var)
                        and s1.lineno != s2.lineno):     # one statement per line, as the codemod rewrites
                    out.append((s1, s2, var, s1.value.id))
    return out


# Imports that are libraries, not the project's own modules: their calls cannot call a project function.
_LIBRARY_HEADS = ("torch", "numpy", "np", "math", "os", "sys", "typing", "collections", "functools", "itertools",
                  "mmcv", "mmdet", "mmdet3d", "mmengine", "scipy", "cv2", "PIL", "einops")


def imported_calls(sf: SourceFile) -> list:
    """[module, name, line, enclosing function] of the calls of a function imported by name from another module
    (`from rotated_iou import rotated_iou_bev` ... `rotated_iou_bev(a, b)`; aliases resolved); library imports
    left out. What another file's structural match needs to list its call sites in this file."""
    out = []
    for call in sf.calls():
        if not isinstance(call.func, ast.Name):
            continue
        q = sf.imports.get(call.func.id, "")
        module, _, name = q.rpartition(".")
        if module and module.lstrip(".").split(".", 1)[0] not in _LIBRARY_HEADS:
            out.append([module, name, call.lineno, sf.function_name(call)])
    return out


def module_files(module: str, rels) -> list:
    """The files among `rels` (paths relative to the project root) that the import of `module` can name: its
    dotted name is a suffix of the file's module path (`pkg.ops.iou` -> pkg/ops/iou.py or pkg/ops/iou/__init__.py)."""
    parts = module.lstrip(".").split(".")
    out = []
    for rel in rels:
        path = rel[:-3].split("/") if rel.endswith(".py") else rel.split("/")
        if path[-1] == "__init__":
            path = path[:-1]
        if path[-len(parts):] == parts:
            out.append(rel)
    return out


def cross_file_call_sites(rel: str, function: str, calls_by_file: dict) -> list:
    """(file, line, enclosing function) of the calls of `function` defined in `rel` from the other files of
    `calls_by_file` ({rel: imported_calls(...)}) that import it by name from `rel`'s module. An import that can
    name several scanned files counts only when `rel` is the one beside the caller; at most three sites."""
    out = []
    for caller, calls in calls_by_file.items():
        if caller == rel:
            continue
        for module, name, line, fn in calls:
            if name != function:
                continue
            candidates = module_files(module, calls_by_file)
            beside = [c for c in candidates if c.rpartition("/")[0] == caller.rpartition("/")[0]]
            if candidates == [rel] or (len(candidates) > 1 and beside == [rel]):
                out.append((caller, line, fn))
    return sorted(set(out))[:3]
