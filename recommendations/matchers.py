"""Source matchers: find the code the catalog has a fused replacement for (rules NPA801-NPA809).

One libcst pass per file with qualified names, so `import spconv.pytorch as spconv`, `from mmcv.ops
import DeformConv2d` and `mmcv.ops.DeformConv2d` are recognized alike. Matchers only find; codemods
(recommendations/codemods) change code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import libcst as cst
import libcst.matchers as m

from .codemods.base import analyzed, code, enclosing_function, names_in, node_index, qualified_names, start_line
from .codemods.fused_ops import _add_relu_pairs, replacement_for, replacement_tokens

DCN_NAMES = {"DeformConv2d": "deform_conv2d", "DeformConv2dPack": "deform_conv2d", "deform_conv2d": "deform_conv2d",
             "DeformConv2dFunction": "deform_conv2d", "ModulatedDeformConv2d": "modulated_deform_conv2d",
             "ModulatedDeformConv2dPack": "modulated_deform_conv2d", "modulated_deform_conv2d": "modulated_deform_conv2d",
             "ModulatedDeformConv2dFunction": "modulated_deform_conv2d"}
SPARSE_NAMES = ("SparseConv3d", "SubMConv3d", "SparseInverseConv3d", "SparseConvTensor", "SparseSequential")
CENTERPOINT_LOOP_CALLS = ("draw_heatmap_gaussian", "gaussian_radius", "draw_gaussian")
HOST_COPY_METHODS = ("cpu", "numpy", "detach", "tolist")
# Names the qualified-name checks in `scan` compare with (the first or last part of each).
QUALIFIED_TOKENS = ("MaxPool2d", "mmcv", "spconv", "torch_scatter", "linear_sum_assignment")
# The last parts of the qualified names compared with (spconv / torch_scatter accept any callee).
QUALIFIED_LAST_NAMES = {"MaxPool2d", "linear_sum_assignment"} | set(DCN_NAMES) | set(SPARSE_NAMES)


# Every match needs one of these written in the file: the callee names the catalog maps (MSDA, bev_pool_v2),
# the names of the qualified-name checks, the CenterPoint target function.
SCAN_TOKENS = tuple(replacement_tokens({"multi_scale_deformable_attn", "bev_pool_v3"})) + QUALIFIED_TOKENS + (
    "get_targets_single",)


@dataclass
class SourceMatch:
    kind: str          # msda | bev_pool_v2 | add_relu | maxpool | deform_conv | sparse_conv | centerpoint_targets | torch_scatter | hungarian_host
    line: int
    function: str      # enclosing function ("<module>" at top level)
    text: str          # the matched code, one line
    catalog_ref: str


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_maxpool_3_2_1(call: cst.Call) -> bool:
    want = {"kernel_size": "3", "stride": "2", "padding": "1"}
    order = ("kernel_size", "stride", "padding")
    got = {}
    for i, a in enumerate(call.args):
        key = a.keyword.value if a.keyword is not None else (order[i] if i < 3 else None)
        if key in want and isinstance(a.value, cst.Integer):
            got[key] = a.value.value
    return got == want


def _host_copied(meta, function, arg) -> bool:
    """True when `arg` is (or was assigned from) an expression that copies a tensor to the host."""
    def copies(node) -> bool:
        found = []

        class _V(cst.CSTVisitor):
            def visit_Call(self, c: cst.Call) -> None:
                if isinstance(c.func, cst.Attribute) and c.func.attr.value in HOST_COPY_METHODS:
                    found.append(c)

        node.visit(_V())
        return bool(found)

    if copies(arg):
        return True
    if isinstance(arg, cst.Name) and function is not None:
        assigned = []

        class _A(cst.CSTVisitor):
            def visit_Assign(self, node: cst.Assign) -> None:
                if any(m.matches(t.target, m.Name(arg.value)) for t in node.targets):
                    assigned.append(node.value)

        function.visit(_A())
        return any(copies(v) for v in assigned)
    return False


def _import_aliases(module: cst.Module) -> dict:
    """`as` name -> imported name (last part) of every `import ... as` / `from ... import ... as` in the file."""
    out = {}
    for alias in node_index(module).of(cst.ImportAlias):
        if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
            out.setdefault(alias.asname.name.value, set()).add(code(alias.name).rsplit(".", 1)[-1])
    return out


def _called_names(call: cst.Call, aliases: dict) -> set:
    """The names the last part of the callee's qualified name can be: the name as written, or what an
    `as` import bound it to."""
    f = call.func
    written = f.attr.value if isinstance(f, cst.Attribute) else (f.value if isinstance(f, cst.Name) else None)
    if written is None:
        return set()
    return {written} | aliases.get(written, set())


def may_match(source: str) -> bool:
    """False when `source` cannot contain anything `scan` finds (no parse needed): every match needs one
    of these names written in the file."""
    return any(token in source for token in SCAN_TOKENS) or ("+=" in source and "relu" in source.lower())


def scan(source: str) -> list:
    """Every fused-op opportunity in one file's source; [] when it does not parse."""
    if not may_match(source):
        return []
    try:
        wrapper, meta = analyzed(source)
    except cst.ParserSyntaxError:
        return []
    module = wrapper.module
    out = []

    def func_name(node) -> str:
        f = enclosing_function(meta, node)
        return f.name.value if f is not None else "<module>"

    def add(kind, node, ref, text=None):
        out.append(SourceMatch(kind, start_line(meta, node), func_name(node), _one_line(text or code(node)), ref))

    # Qualified names are resolved (scope analysis: the expensive step) only when the source mentions one of
    # the names they are compared with; a qualified name's parts are always written in the file.
    needs_names = any(token in source for token in QUALIFIED_TOKENS)
    any_callee = "spconv" in source or "torch_scatter" in source     # every callee of those modules matches
    aliases = _import_aliases(module) if needs_names else {}
    for node in node_index(module).of(cst.Call, cst.FunctionDef):
        if isinstance(node, cst.Call):
            q = qualified_names(meta, node.func) if needs_names and (
                any_callee or _called_names(node, aliases) & QUALIFIED_LAST_NAMES) else set()
            if replacement_for(node, {"multi_scale_deformable_attn"}):
                add("msda", node, "fused_ops.multi_scale_deformable_attn")
            elif replacement_for(node, {"bev_pool_v3"}):
                add("bev_pool_v2", node, "fused_ops.bev_pool_v3")
            elif q & {"torch.nn.MaxPool2d", "torch.nn.modules.pooling.MaxPool2d"} and _is_maxpool_3_2_1(node):
                add("maxpool", node, "fused_ops.npu_max_pool2d")
            elif any(x.startswith("mmcv.ops.") and x.rsplit(".", 1)[-1] in DCN_NAMES for x in q):
                name = next(x for x in q if x.startswith("mmcv.ops.")).rsplit(".", 1)[-1]
                add("deform_conv", node, f"fused_ops.{DCN_NAMES[name]}")
            elif any(x.startswith("spconv.") or (x.startswith("mmcv.ops.") and x.rsplit(".", 1)[-1] in SPARSE_NAMES)
                     for x in q):
                add("sparse_conv", node, "fused_ops.sparse_conv3d")
            elif any(x.startswith("torch_scatter.") for x in q):
                add("torch_scatter", node, "fused_ops.scatter")
            elif q & {"scipy.optimize.linear_sum_assignment", "scipy.optimize._lsap.linear_sum_assignment"} \
                    and node.args and _host_copied(meta, enclosing_function(meta, node), node.args[0].value):
                add("hungarian_host", node, "fused_ops.hungarian_match")
        elif node.name.value == "get_targets_single":
            loops = m.findall(node, m.For())
            if loops and names_in(node) & set(CENTERPOINT_LOOP_CALLS):
                add("centerpoint_targets", node, "fused_ops.npu_gaussian",
                    text=f"def get_targets_single(...): per-object loop with "
                         f"{', '.join(sorted(names_in(node) & set(CENTERPOINT_LOOP_CALLS)))}")

    for block, k, var, other in _add_relu_pairs(meta, module):
        s1, s2 = block.body[k], block.body[k + 1]
        out.append(SourceMatch("add_relu", start_line(meta, s1), func_name(s1),
                               _one_line(f"{code(s1.body[0])}; {code(s2.body[0])}"), "fused_ops.npu_add_relu"))
    return sorted(out, key=lambda s: s.line)


def find_matmul_calls(source: str) -> list:
    """Lines of torch.matmul / `.matmul(` / `@` uses (for the > 6-D matmul check against recorded shapes)."""
    try:
        wrapper, meta = analyzed(source)
    except cst.ParserSyntaxError:
        return []
    lines = set()

    class _V(cst.CSTVisitor):
        def visit_Call(self, node: cst.Call) -> None:
            if isinstance(node.func, cst.Attribute) and node.func.attr.value == "matmul":
                lines.add(start_line(meta, node))

        def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
            if isinstance(node.operator, cst.MatrixMultiply):
                lines.add(start_line(meta, node))

    wrapper.module.visit(_V())
    return sorted(lines)


def optional_line(source: str, line: int) -> Optional[str]:
    lines = source.split("\n")
    return lines[line - 1].strip() if 0 < line <= len(lines) else None
