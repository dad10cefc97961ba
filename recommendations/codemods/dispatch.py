"""The NPU arm for a CUDA-only dispatch (rule NPA907):

    if torch.cuda.is_available() and value.is_cuda:           if value.device.type == "npu":
        output = MSDAFunction.apply(value, ..., im2col)   ->       output = mx_driving.multi_scale_deformable_attn(value, ...)
    else:                                                      elif torch.cuda.is_available() and value.is_cuda:
        output = msda_pytorch(value, ...)                          ...   (both arms unchanged)

The NPU arm is tested first: with transfer_to_npu, CUDA tests can be true on an NPU while the CUDA
extension does not exist there. Its call is the arm's own call with the arguments mapped by the
catalog (fused_ops.remap_call: `im2col_step` dropped, `level_start_index` derived when absent).
"""
from __future__ import annotations

from typing import Optional

import libcst as cst

from ..catalog import load
from .base import Rewrite, add_imports, analyzed, code, expr, node_index, render, replace_nodes, start_line
from .fused_ops import bind_arguments, remap_call, replacement_for


def _statement_of(meta, arm_statements, call_line: int, key: str):
    """(statement, Call, (FusedOp, Replaces)) for the arm statement `target = call(...)` / `return call(...)`
    on `call_line` whose call the catalog maps onto fused op `key`."""
    for stmt in arm_statements:
        if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1 or start_line(meta, stmt) != call_line:
            continue
        small = stmt.body[0]
        value = small.value if isinstance(small, (cst.Assign, cst.Return)) else None
        if isinstance(small, cst.Assign) and len(small.targets) != 1:
            value = None
        if isinstance(value, cst.Call):
            found = replacement_for(value, {key})
            if found is not None:
                return stmt, value, found
    return None


def _arms(node: cst.If) -> list:
    out = list(node.body.body)
    if isinstance(node.orelse, cst.Else):
        out += list(node.orelse.body.body)
    return out


def add_npu_arm(source: str, if_line: int, call_line: int, key: str, device_object: str,
                shape_checks: Optional[dict] = None) -> Optional[Rewrite]:
    """Add the NPU arm to the `if` on `if_line`, calling fused op `key` with the arguments of the call on
    `call_line` (an arm of that `if`, or the statement after it). None when the shape is not the one above."""
    wrapper, meta = analyzed(source)
    module = wrapper.module
    target_if = next((n for n in node_index(module).of(cst.If) if start_line(meta, n) == if_line), None)
    if target_if is None or not isinstance(target_if.body, cst.IndentedBlock):
        return None
    found = _statement_of(meta, _arms(target_if), call_line, key)
    if found is None:
        return None
    stmt, call, (op, rep) = found
    remapped = remap_call(call, op, rep)
    if remapped is None:
        return None
    new_call, mapping, derived = remapped
    small = stmt.body[0]
    npu_stmt = stmt.with_changes(body=[small.with_changes(value=new_call)], leading_lines=())
    cfg = load().data["cuda_migration"]
    test = expr(cfg["npu_device_test"].format(tensor=device_object))
    npu_if = cst.If(test=test, body=cst.IndentedBlock(body=[npu_stmt]),
                    orelse=target_if.with_changes(leading_lines=()), leading_lines=target_if.leading_lines)
    new_module = replace_nodes(module, {target_if: npu_if}, meta)
    new_source = render(add_imports(new_module, [(op.module, None)] + ([("torch", None)] if derived else [])))
    dropped = [p for p in rep.drop if p in (bind_arguments(call, rep.signature) or {})]
    verified = [f"the NPU arm calls {op.qualified} with the arguments of `{code(call.func)}(...)` mapped by the catalog: "
                + ", ".join(f"{k}={v}" for k, v in mapping.items())]
    if dropped:
        verified.append("dropped: " + ", ".join(dropped))
    if derived:
        verified.append("derived from spatial_shapes: " + ", ".join(derived))
    checks = shape_checks or {}
    verified += checks.get("verified", [])
    constraints = [f"needs {op.module} installed (import {op.module})"] + list(cfg["constraints"])
    constraints += checks.get("violations", [])
    constraints += [c for c in op.constraints if c not in checks.get("covered", ())]
    return Rewrite(
        new_source=new_source,
        description=(f"Add an NPU arm before the CUDA test: `if {code(test)}:` calls the fused `{op.qualified}` "
                     f"instead of falling through to the pure-PyTorch arm."),
        auto_applicable=bool(checks.get("complete")) and not checks.get("violations"),
        constraints=constraints, verified=verified, requires=[op.module], line=if_line)
