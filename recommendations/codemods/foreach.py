"""Candidate generator `foreach_update`: a loop that updates a list of tensors in place one tensor at a time (an
EMA of the weights, a hand-written SGD step, a gradient rescale), rewritten to `torch._foreach_*` calls that
update all of them in one launch each.

    for k, v in ema.state_dict().items():          pairs = [(k, v) for k, v in ema.state_dict().items()
        if v.dtype.is_floating_point:       ->               if v.dtype.is_floating_point]
            v *= d                                  vs = [v for k, v in pairs]
            v += (1 - d) * msd[k].detach()          torch._foreach_mul_(vs, d)
                                                    torch._foreach_add_(vs, [msd[k].detach() for k, v in pairs], alpha=1 - d)

Recognized updates of the loop's tensor `v`: `v *= s` / `v.mul_(s)`, `v += X` / `v.add_(X)` / `v.add_(X, alpha=a)` /
`v += a * X`, `v -= X` / `v.sub_(X)`, `v.copy_(X)`, `v.lerp_(X, w)`, `v.zero_()`; an optional `if` on the
tensor's metadata (dtype, requires_grad, `is not None`) filters the list. Statically proven: the body is only
such updates of `v`, the scalars do not depend on the loop, the loop variables are not read after it.
Proven by verification: no tensor appears twice in the list (tied weights would be updated in another order)
and the scalars are Python numbers.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, code, enclosing_function, names_in
from .loop_syntax import first_rewrite, fresh, replace_loop, used_after

GENERATOR = "foreach_update"
_METADATA = ("dtype", "requires_grad", "is_floating_point", "grad", "is_leaf", "ndim", "shape")


def candidates(source: str, line: int) -> list:
    r = first_rewrite(source, line, _match)
    return [r] if r is not None else []


def _update(stmt, v: str) -> Optional[tuple]:
    """(foreach op, per-tensor operand or None, extra args) for one in-place update of `v`."""
    if isinstance(stmt, cst.AugAssign) and m.matches(stmt.target, m.Name(v)):
        op, value = stmt.operator, stmt.value
        if isinstance(op, cst.MultiplyAssign):
            return "mul", None, [value]
        if isinstance(op, (cst.AddAssign, cst.SubtractAssign)):
            sign = "" if isinstance(op, cst.AddAssign) else "-"
            if m.matches(value, m.BinaryOperation(operator=m.Multiply())):
                return "add", value.right, [f"alpha={sign}({code(value.left)})" if sign else f"alpha={code(value.left)}"]
            return ("add" if not sign else "sub"), value, []
        return None
    if not (isinstance(stmt, cst.Expr) and m.matches(stmt.value, m.Call(func=m.Attribute(value=m.Name(v))))):
        return None
    call = stmt.value
    name = call.func.attr.value
    args = call.args
    if name == "zero_" and not args:
        return "zero", None, []
    if name == "mul_" and len(args) == 1 and args[0].keyword is None:
        return "mul", None, [args[0].value]
    if name in ("add_", "sub_", "copy_") and args and args[0].keyword is None:
        extra = [f"alpha={code(a.value)}" for a in args[1:] if a.keyword is not None and a.keyword.value == "alpha"]
        if len(args) - 1 != len(extra):
            return None
        return name[:-1], args[0].value, extra
    if name == "lerp_" and len(args) == 2 and all(a.keyword is None for a in args):
        return "lerp", args[0].value, [args[1].value]
    return None


def _metadata_only(test, v: str) -> bool:
    """The filter reads only the tensor's metadata (no values): `v.dtype.is_floating_point`, `v.requires_grad`,
    `v.grad is not None`, combinations with and/or/not."""
    if isinstance(test, cst.BooleanOperation):
        return _metadata_only(test.left, v) and _metadata_only(test.right, v)
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        return _metadata_only(test.expression, v)
    if isinstance(test, cst.Comparison):
        return _metadata_only(test.left, v) and all(
            isinstance(c.operator, (cst.Is, cst.IsNot)) and m.matches(c.comparator, m.Name("None")) or
            isinstance(c.comparator, (cst.Attribute, cst.Name)) for c in test.comparisons)
    if isinstance(test, cst.Call) and not test.args:
        return _metadata_only(test.func, v)
    node = test
    while isinstance(node, cst.Attribute):
        if m.matches(node.value, m.Name(v)):
            return node.attr.value in _METADATA
        node = node.value
    return False


def _match(meta, module, loop: cst.For) -> Optional[Rewrite]:
    if loop.orelse is not None or not isinstance(loop.body, cst.IndentedBlock):
        return None
    target = loop.target
    names = [target] if isinstance(target, cst.Name) else [e.value for e in target.elements] \
        if isinstance(target, cst.Tuple) else []
    if not names or not all(isinstance(n, cst.Name) for n in names):
        return None
    body, condition = list(loop.body.body), None
    if len(body) == 1 and isinstance(body[0], cst.If) and body[0].orelse is None:
        condition, body = body[0].test, list(body[0].body.body)
    stmts = []
    for s in body:
        if not isinstance(s, cst.SimpleStatementLine) or len(s.body) != 1:
            return None
        stmts.append(s.body[0])
    loop_names = {n.value for n in names}
    # the updated tensor: the variable every statement updates in place
    for v in [n.value for n in reversed(names)]:
        updates = [_update(s, v) for s in stmts]
        if updates and None not in updates:
            break
    else:
        return None
    if condition is not None and not _metadata_only(condition, v):
        return None
    # scalars (factors, alphas, lerp weights) must not depend on the loop; operands may
    for k, (op, operand, extra) in enumerate(updates):
        for e in extra:
            if names_in(e if isinstance(e, cst.CSTNode) else cst.parse_expression(e.split("=", 1)[-1])) & loop_names:
                return None
        if k and operand is not None and v in names_in(operand):
            return None     # gathered before all updates: it would read `v` before this iteration's earlier ones
    function = enclosing_function(meta, loop)
    if used_after(meta, function, loop, loop_names):
        return None
    taken = names_in(function) if function is not None else names_in(module)
    tgt, it = code(target), code(loop.iter)
    filt = f" if {code(condition)}" if condition is not None else ""
    lines = []
    if len(names) == 1 and not filt:
        tensors = fresh(taken, f"{v}_list")
        lines.append(f"{tensors} = list({it})")
        pairs, each = tensors, v
    else:
        pairs = fresh(taken, "pairs")
        lines.append(f"{pairs} = [{tgt if len(names) == 1 else '(' + tgt + ')'} for {tgt} in {it}{filt}]")
        tensors = fresh(taken, f"{v}_list")
        lines.append(f"{tensors} = [{v} for {tgt} in {pairs}]")
        each = tgt
    calls = []
    for op, operand, extra in updates:
        args = [tensors]
        if operand is not None:
            args.append(f"[{code(operand)} for {each} in {pairs}]" if names_in(operand) & loop_names else
                        f"[{code(operand)}] * len({tensors})")
        args += [e if isinstance(e, str) else code(e) for e in extra]
        calls.append(f"    torch._foreach_{op}_({', '.join(args)})")
    # torch._foreach_* refuse an empty list, where the loop did nothing
    lines.append(f"if {tensors}:\n" + "\n".join(calls))
    new_source = replace_loop(meta, module, loop, [cst.parse_statement(x + "\n") for x in lines])
    return Rewrite(
        new_source=new_source,
        description=(f"Update all tensors of `{it}` at once with `torch._foreach_*` (one launch per update instead "
                     f"of one per tensor and update)."),
        auto_applicable=False, generator=GENERATOR,
        verified=[f"the loop body only updates `{v}` in place ({', '.join(op for op, _, _ in updates)})"
                  + (" behind a filter on its metadata" if condition is not None else ""),
                  "the scalars do not depend on the loop", "the loop variables are not read after the loop"],
        needs_verification=["no tensor appears twice in the list (tied weights would be updated in another order)",
                            "the factors and alphas are Python numbers or one-element tensors"],
        constraints=["per-tensor operands (e.g. `msd[k].detach()`) are still gathered in a Python list"])
