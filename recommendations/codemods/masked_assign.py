"""Candidate generator `masked_assign`: a boolean-masked write of values read through the same mask, as one
`torch.where` (no selection whose size the host must learn from the device).

    assigned[pos] = argmax[pos] + 1       ->  assigned.copy_(torch.where(pos, argmax + 1, assigned))

`X[m] = E` where every tensor the right side reads is `Y[m]` with the same mask name m and E combines them with
`+ - *`, unary `-`, comparisons, `& | ^ ~` and dtype casts (`.float()`, `.long()`, `.int()`, `.bool()`,
`.half()`, `.double()`) and number literals or names (a loop-invariant Python number such as `i + 1`): E on the
whole tensors, taken where m holds, is E on the selection, put where m holds. `copy_` keeps X the same tensor
(other references see the write, as before); the indexed write requires the right side in X's dtype (it raises
otherwise), so `copy_` writes the same values. The right side
never raises on the whole tensors where it did not on the selection (no division, no call but the casts).
Refused: any other right side (a scalar alone is a masked fill, which needs no sync), a mask that is not a
name, a mask or X rebound on the line, X subscripted further (`X[m, 0]`). That the mask is a bool tensor with
X's shape and each `Y` has it too (so that `Y[m]` lines up with `X[m]`) is proven by the verification stage on
the user's run.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, add_imports, code, enclosing_function, expr, render, replace_nodes, rewrites_at, start_line
from .loop_syntax import prove_tensor

GENERATOR = "masked_assign"
_CASTS = ("float", "long", "int", "bool", "half", "double", "bfloat16", "short")
_OPERATORS = (cst.Add, cst.Subtract, cst.Multiply, cst.BitAnd, cst.BitOr, cst.BitXor)
_UNARY = (cst.Minus, cst.Plus, cst.BitInvert)


def candidates(source: str, line: int) -> list:
    return rewrites_at(source, line, cst.Assign, _rewrite)


def _masked(node, mask: str) -> bool:
    """`node` is `Y[mask]` with Y a name or attribute chain."""
    return (isinstance(node, cst.Subscript) and len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index)
            and node.slice[0].slice.star is None and m.matches(node.slice[0].slice.value, m.Name(mask))
            and _stable(node.value))


def _stable(node) -> bool:
    return isinstance(node, cst.Name) or (isinstance(node, cst.Attribute) and _stable(node.value))


def _whole(node, mask: str, reads: list) -> Optional[cst.BaseExpression]:
    """E with every `Y[mask]` replaced by Y, when E is made only of what the rewrite allows; `reads` gets the Ys."""
    if _masked(node, mask):
        reads.append(node.value)
        return node.value.with_changes(lpar=node.lpar, rpar=node.rpar)
    if isinstance(node, (cst.Integer, cst.Float)):
        return node
    if isinstance(node, cst.Name) and node.value not in (mask, "True", "False", "None"):
        return node
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, _OPERATORS):
        left, right = _whole(node.left, mask, reads), _whole(node.right, mask, reads)
        return None if left is None or right is None else node.with_changes(left=left, right=right)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, _UNARY):
        inner = _whole(node.expression, mask, reads)
        return None if inner is None else node.with_changes(expression=inner)
    if isinstance(node, cst.Comparison) and all(
            isinstance(t.operator, (cst.LessThan, cst.LessThanEqual, cst.GreaterThan, cst.GreaterThanEqual, cst.Equal,
                                    cst.NotEqual)) for t in node.comparisons) and len(node.comparisons) == 1:
        left, right = _whole(node.left, mask, reads), _whole(node.comparisons[0].comparator, mask, reads)
        if left is None or right is None:
            return None
        return node.with_changes(left=left, comparisons=[node.comparisons[0].with_changes(comparator=right)])
    if (isinstance(node, cst.Call) and not node.args and isinstance(node.func, cst.Attribute)
            and node.func.attr.value in _CASTS):
        inner = _whole(node.func.value, mask, reads)
        return None if inner is None else node.with_changes(func=node.func.with_changes(value=inner))
    return None


def _rewrite(meta, module, node: cst.Assign) -> Optional[Rewrite]:
    if len(node.targets) != 1:
        return None
    target = node.targets[0].target
    if not (isinstance(target, cst.Subscript) and len(target.slice) == 1
            and isinstance(target.slice[0].slice, cst.Index) and isinstance(target.slice[0].slice.value, cst.Name)):
        return None
    mask = target.slice[0].slice.value.value
    if not _masked(target, mask):
        return None
    reads: list = []
    whole = _whole(node.value, mask, reads)
    if whole is None or not reads:
        return None
    x = code(target.value)
    new = cst.Expr(expr(f"{x}.copy_(torch.where({mask}, {code(whole)}, {x}))"))
    new_source = render(add_imports(replace_nodes(module, {node: new}, meta), [("torch", None)]))
    function = enclosing_function(meta, node)
    line = start_line(meta, node)
    verified = [f"the right side reads only `Y[{mask}]` values, combined elementwise (+ - * comparisons, bit ops, "
                f"casts) with numbers: on the whole tensors, where `{mask}` holds, it is the same values",
                "nothing on the right side can raise on the whole tensors (no division, no call but dtype casts)",
                f"`copy_` writes into `{x}` itself, as the indexed write did"]
    needs = [f"`{mask}` is a bool mask with the shape of `{x}` and of every value read through it, and the names "
             f"on the right side are numbers (or broadcast like them)"]
    prove_tensor(meta, target.value, function, line, verified, needs)
    return Rewrite(new_source=new_source,
                   description=(f"Write `{x}` where `{mask}` holds with one `torch.where` over the whole tensors "
                                f"instead of selecting `[{mask}]` (its size depends on the data: the host waits for "
                                f"the device to count it, then indexes with it)."),
                   auto_applicable=True, generator=GENERATOR, verified=verified, needs_verification=needs,
                   constraints=["the right side is computed on every element, not only the selected ones "
                                "(elementwise: the same work on a device, without the count)",
                                "gradients where the mask is off are zero, as before, unless a value there is inf "
                                "or nan (0 * inf); the verification run compares them"])
