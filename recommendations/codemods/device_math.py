"""Candidate generator `device_math`: a scalar read whose value only feeds tensor arithmetic, kept on the device.

    num_pos = max(pos.sum().item(), 1.0)          ->  num_pos = pos.sum().clamp(min=1.0)
    loss = F.l1_loss(a, b, reduction="sum") / num_pos

`max(<read>, c)` / `max(c, <read>)` (and `min`), where the read is `T.item()`, `float(T)` or `int(T)` and c a
number literal, becomes `T.clamp(min=c)` (`max=c` for `min`) when every later use of the name in the function
is an operand of `+ - * /` with a tensor (at least one proven in the syntax tree, the others proven by the
verification stage on the user's run): the arithmetic then takes a 0-d tensor instead of a Python number,
which gives the same values (up to float rounding of the count in the tensor's dtype) without the host
reading the device. Refused: any other use of the name (a format, a comparison, `int()`, a call argument),
the name rebound later, the read inside a loop that rebinds T.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, code, enclosing_function, expr, render, replace_nodes, rewrites_at, start_line
from .loop_syntax import is_tensor_expr, prove_tensor

GENERATOR = "device_math"
_ARITH = (cst.Add, cst.Subtract, cst.Multiply, cst.Divide)


def candidates(source: str, line: int) -> list:
    return rewrites_at(source, line, cst.Assign, _clamp)


def _read(node) -> Optional[cst.BaseExpression]:
    """T of `T.item()`, `float(T)`, `int(T)`."""
    if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("item")), args=[])):
        return node.func.value
    if m.matches(node, m.Call(func=m.Name("float") | m.Name("int"), args=[m.Arg(keyword=None, star="")])):
        return node.args[0].value
    return None


def _number(node) -> bool:
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus):
        node = node.expression
    return isinstance(node, (cst.Integer, cst.Float))


def _clamp(meta, module, node: cst.Assign) -> Optional[Rewrite]:
    if len(node.targets) != 1 or not isinstance(node.targets[0].target, cst.Name):
        return None
    name = node.targets[0].target.value
    call = node.value
    if not (m.matches(call, m.Call(func=m.Name("max") | m.Name("min"))) and len(call.args) == 2
            and all(a.keyword is None and not a.star for a in call.args)):
        return None
    a, b = (x.value for x in call.args)
    tensor, bound = (_read(a), b) if _read(a) is not None else (_read(b), a)
    if tensor is None or not _number(bound):
        return None
    function = enclosing_function(meta, node)
    if function is None:
        return None
    uses = _uses(meta, function, name, node)
    if uses is None or not uses:
        return None
    proven, unproven = [], []
    for use, other in uses:
        if _number(other):
            return None         # `num_pos / 2` is a Python number: it would become a tensor
        why = _tensor(meta, other, function, start_line(meta, use))
        (proven.append(why) if why else unproven.append(code(other)))
    if not proven:
        return None             # arithmetic with host numbers only would turn them into tensors
    side = "min" if call.func.value == "max" else "max"
    new_value = expr(f"{code(tensor) if isinstance(tensor, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) else '(' + code(tensor) + ')'}"
                     f".clamp({side}={code(bound)})")
    new_source = render(replace_nodes(module, {call: new_value}, meta))
    verified = [f"every use of `{name}` after it is an operand of + - * /" + (
                    f" with a tensor ({'; '.join(dict.fromkeys(proven))})" if not unproven else
                    f"; with a tensor in {len(proven)} of them ({'; '.join(dict.fromkeys(proven))})"),
                f"`{name}` is not rebound later in the function"]
    # an operand not proven a tensor here (a local function's result): the run shows whether the values are equal
    needs = [f"`{o}` is a tensor (the other operand of `{name}`)" for o in dict.fromkeys(unproven)]
    prove_tensor(meta, tensor, function, start_line(meta, node), verified, needs)
    return Rewrite(new_source=new_source,
                   description=(f"Keep `{name}` on the device: `{code(tensor)}.clamp({side}={code(bound)})` instead of "
                                f"reading it to the host with {code(call)} (a blocking sync), since it only feeds tensor "
                                f"arithmetic."),
                   auto_applicable=not needs, verified=verified, needs_verification=needs, generator=GENERATOR,
                   constraints=[f"`{name}` is now a 0-d tensor: the arithmetic rounds the count in the tensor's dtype"])


def _tensor(meta, node, function, line: int) -> Optional[str]:
    """Why `node` is a tensor: a tensor expression, or arithmetic with one."""
    if isinstance(node, cst.BinaryOperation):
        return _tensor(meta, node.left, function, line) or _tensor(meta, node.right, function, line)
    return is_tensor_expr(meta, node, function, line)


def _uses(meta, function, name: str, assign) -> Optional[list]:
    """[(use, the other operand)] of `name` anywhere in `function` but `assign`; None when one is not arithmetic with
    another operand or the name is bound again."""
    found, bad = [], []

    class _V(cst.CSTVisitor):
        def __init__(self):
            super().__init__()
            self.stack = []

        def on_visit(self, node) -> bool:
            self.stack.append(node)
            # every use in the function counts, before the assignment too (a loop reads it on the next pass)
            if isinstance(node, cst.Name) and node.value == name and node is not assign.targets[0].target:
                parent = self.stack[-2] if len(self.stack) > 1 else None
                if isinstance(parent, cst.BinaryOperation) and isinstance(parent.operator, _ARITH):
                    found.append((node, parent.right if parent.left is node else parent.left))
                else:
                    bad.append(node)
            return True

        def on_leave(self, original_node) -> None:
            self.stack.pop()

    function.body.visit(_V())
    return None if bad else found
