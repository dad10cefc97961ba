"""One-time migration setup at the training entry point (rules NPA9xx), as in the seed (chapters 1, 3.2.3):

* wrap `main()` under `if __name__ == "__main__":` in mx_driving's patcher context;
* `import torch_npu` + `from torch_npu.contrib import transfer_to_npu`;
* mmcv `MMDataParallel` / `MMDistributedDataParallel` -> `NPUDataParallel` / `NPUDistributedDataParallel`;
* `--local-rank` beside `--local_rank` (torch >= 2.0 launchers pass the dashed form).
Each is idempotent: it returns None when the change is already there.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m
from libcst.metadata import PositionProvider

from ..catalog import load
from .base import Rewrite, add_imports, analyzed, code, node_index, parsed, qualified_names, render, replace_nodes

_MAIN_GUARD = m.If(test=m.Comparison(left=m.Name("__name__"), comparisons=[
    m.ComparisonTarget(operator=m.Equal(), comparator=m.SimpleString())]))


def main_guard(module: cst.Module) -> Optional[cst.If]:
    for stmt in module.body:
        if m.matches(stmt, _MAIN_GUARD) and stmt.test.comparisons[0].comparator.evaluated_value == "__main__":
            return stmt
    return None


def has_main_guard(source: str) -> bool:
    try:
        return main_guard(parsed(source)) is not None
    except cst.ParserSyntaxError:
        return False


def rewrite_patcher(source: str) -> Optional[Rewrite]:
    wrapper, meta = analyzed(source)
    module = wrapper.module
    guard = main_guard(module)
    if guard is None or not isinstance(guard.body, cst.IndentedBlock):
        return None
    if "default_patcher" in code(guard):
        return None
    body = list(guard.body.body)
    for k, stmt in enumerate(body):
        if m.matches(stmt, m.SimpleStatementLine(body=[m.Expr(value=m.Call(func=m.Name("main")))])):
            with_stmt = cst.parse_statement(
                f"with default_patcher_builder.build() as patcher:\n    {code(stmt.body[0])}\n"
            ).with_changes(leading_lines=stmt.leading_lines)
            body[k] = with_stmt
            new_module = replace_nodes(module, {guard.body: guard.body.with_changes(body=body)}, meta)
            new_source = render(add_imports(new_module, [("mx_driving.patcher", "default_patcher_builder")]))
            return Rewrite(
                new_source=new_source,
                description=("Run `main()` inside mx_driving's one-click patcher (`default_patcher_builder.build()`), "
                             "which swaps mmcv/mmdet ops (MSDA, DCN, sparse conv, ResNet add+relu/maxpool, DDP, "
                             "bool-mask indexing, small batched matmul) for NPU fused versions at run time."),
                auto_applicable=True, constraints=list(load().migration["patcher"]["constraints"]),
                verified=["`main()` is called directly under `if __name__ == \"__main__\":`"],
                requires=["mx_driving"], line=meta[PositionProvider][stmt].start.line)
    return None


def rewrite_transfer_to_npu(source: str) -> Optional[Rewrite]:
    module = parsed(source)
    new_source = render(add_imports(module, [("torch_npu", None), ("torch_npu.contrib", "transfer_to_npu")]))
    if new_source == source:
        return None
    return Rewrite(
        new_source=new_source,
        description=("Import `torch_npu` and `torch_npu.contrib.transfer_to_npu` once at the entry point, so "
                     "`.cuda()` and `torch.cuda` calls run on the NPU without further edits."),
        auto_applicable=True, constraints=list(load().migration["transfer_to_npu"]["constraints"]),
        verified=["the script is the training entry point (it has an `if __name__ == \"__main__\":` block)"],
        requires=["torch_npu"])


def rewrite_npu_ddp(source: str) -> Optional[Rewrite]:
    mapping = load().migration["npu_ddp"]["map"]
    wrapper, meta = analyzed(source)
    module = wrapper.module
    calls, imports = [], []
    for node in node_index(module).of(cst.Call, cst.ImportFrom):
        if isinstance(node, cst.Call):
            for q in qualified_names(meta, node.func):
                name = q.rsplit(".", 1)[-1]
                if q.startswith("mmcv.") and name in mapping and isinstance(node.func, cst.Name):
                    calls.append((node, mapping[name]))
        elif node.module is not None and code(node.module) == "mmcv.parallel" and not isinstance(node.names, cst.ImportStar):
            imports.append(node)
    if not calls and not any(a.name.value in mapping for imp in imports for a in imp.names):
        return None
    replacements = {c: c.with_changes(func=cst.Name(new)) for c, new in calls}
    needed = set()
    for imp in imports:
        keep = [a for a in imp.names if a.name.value not in mapping]
        needed |= {mapping[a.name.value] for a in imp.names if a.name.value in mapping}
        stmt_line = next((s for s in module.body if isinstance(s, cst.SimpleStatementLine) and imp in s.body), None)
        if keep:
            keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            replacements[imp] = imp.with_changes(names=keep)
        elif stmt_line is not None:
            replacements[stmt_line] = cst.RemoveFromParent()
    new_module = replace_nodes(module, replacements, meta)
    needed |= {new for _, new in calls}
    new_module = add_imports(new_module, [("mmcv.device.npu", n) for n in sorted(needed)])
    return Rewrite(
        new_source=render(new_module),
        description=("Use mmcv's NPU wrappers: " + ", ".join(f"{k} -> {v}" for k, v in mapping.items())
                     + " (imported from mmcv.device.npu)."),
        auto_applicable=True, constraints=list(load().migration["npu_ddp"]["constraints"]),
        verified=["the wrapped names resolve to mmcv.parallel"], requires=["torch_npu"])


def rewrite_local_rank(source: str) -> Optional[Rewrite]:
    if "--local_rank" not in source:    # nothing to add (and no need to look at the tree)
        return None
    wrapper, meta = analyzed(source)
    module = wrapper.module
    found, present = [], []
    for node in node_index(module).of(cst.SimpleStatementLine):
        if len(node.body) == 1 and m.matches(node.body[0], m.Expr(value=m.Call(func=m.Attribute(attr=m.Name("add_argument"))))):
            strings = [a.value.evaluated_value for a in node.body[0].value.args
                       if a.keyword is None and isinstance(a.value, cst.SimpleString)]
            if "--local-rank" in strings:
                present.append(node)
            elif "--local_rank" in strings:
                found.append(node)
    if not found or present:
        return None
    stmt = found[0]
    call = stmt.body[0].value
    new_args = [a.with_changes(value=cst.SimpleString(repr("--local-rank")))
                if a.keyword is None and isinstance(a.value, cst.SimpleString) and a.value.evaluated_value == "--local_rank"
                else a for a in call.args]
    dashed = stmt.with_changes(body=[stmt.body[0].with_changes(value=call.with_changes(args=new_args))],
                               trailing_whitespace=cst.TrailingWhitespace())
    new_module = replace_nodes(module, {stmt: cst.FlattenSentinel([dashed, stmt.with_changes(leading_lines=())])}, meta)
    return Rewrite(
        new_source=render(new_module),
        description=("Accept `--local-rank` as well as `--local_rank`: torch >= 2.0 distributed launchers pass the "
                     "dashed form, and the script would exit with 'unrecognized arguments'."),
        auto_applicable=True, constraints=list(load().migration["local_rank"]["constraints"]),
        verified=["`--local_rank` is declared and `--local-rank` is not"])
