"""Candidate generator `index_reads`: a scalar read whose value only indexes tensors, kept on the device.

    best = ade[b].argmin().item()                     ->  best = ade[b].argmin()
    reg = reg + F.smooth_l1_loss(xy[b, best], fut[b])     (unchanged: xy[b, best] indexes with the 0-d tensor)

`NAME = T.item()` or `NAME = int(T)` (a statement of a function, or every such statement inside the loop at
the line), when every other use of NAME in the function is a whole element of a subscript being read
(`X[..., NAME, ...]`): an integer 0-d tensor selects what the Python integer selected, with the same shape and
values, so the host never waits for the device to learn the index. T becomes `T.reshape(())` (a one-element
tensor of any shape, as `.item()` accepts; a full reduction is already 0-d) and, for `int(T)`, `.long()`
(truncation toward zero, as `int()`).

Refused: any other use of NAME (arithmetic, a format, a slice bound, a call argument, a return), NAME bound
anywhere else in the function (or declared global / nonlocal), a subscript that is assigned to, deleted,
aliased whole (`y = x[NAME]`: a tensor index gives a copy, an integer a view, and a later in-place change of y
would no longer reach x) or changed in place (`x[NAME].add_(1)`). That T is a tensor is proven by the verification stage on the user's run when
the syntax does not show it. Not provable on a CPU run, and so stated in the fix's constraints: the indexed
tensors live on T's device (a host tensor indexed by a device tensor raises).
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m
from libcst.metadata import ParentNodeProvider

from .base import (Rewrite, analyzed, code, end_line, enclosing_function, expr, node_index, render, replace_nodes,
                   start_line)
from .loop_syntax import prove_tensor
from .scalar_reads import bindings

GENERATOR = "index_reads"
# reductions without arguments whose result is already 0-d
_FULL_REDUCTIONS = ("argmin", "argmax", "sum", "max", "min", "amax", "amin", "prod", "count_nonzero")
# what gives a view of the indexed result: writing through it would reach the indexed tensor with an integer
# index, not with a tensor index (a copy)
_VIEW_METHODS = ("view", "view_as", "reshape", "reshape_as", "squeeze", "unsqueeze", "t", "transpose", "permute",
                 "expand", "expand_as", "narrow", "select", "flatten", "unflatten", "detach", "as_strided", "movedim",
                 "diagonal", "unbind", "split", "chunk", "unfold", "swapaxes", "contiguous")
_VIEW_ATTRIBUTES = ("T", "mT", "H", "mH", "real", "imag", "data")


def candidates(source: str, line: int) -> list:
    wrapper, meta = analyzed(source)
    module = wrapper.module
    assigns = [a for a in node_index(module).of(cst.Assign) if start_line(meta, a) == line]
    if not assigns:          # a loop at the line: every index read inside it
        loops = [n for n in node_index(module).of(cst.For, cst.While) if start_line(meta, n) == line]
        assigns = [a for loop in loops[:1] for a in node_index(module).of(cst.Assign)
                   if start_line(meta, loop) < start_line(meta, a) <= end_line(meta, loop)]
    rewrites = [r for r in (_plan(meta, a) for a in assigns) if r is not None]
    if not rewrites:
        return []
    mapping = {call: new for _, call, new, _ in rewrites}
    names = ", ".join(f"`{name}`" for name, _, _, _ in rewrites)
    verified, needs = [], []
    for name, _, _, (v, n) in rewrites:
        verified += v
        needs += n
    return [Rewrite(new_source=render(replace_nodes(module, mapping, meta)),
                    description=(f"Keep {names} on the device as a 0-d integer tensor instead of reading it to the "
                                 f"host (a blocking sync on an NPU, here once per "
                                 f"{'iteration' if len(assigns) > 1 or _in_loop(meta, rewrites[0][1]) else 'call'}): "
                                 f"it only indexes tensors, which a 0-d tensor does with the same result."),
                    auto_applicable=True, generator=GENERATOR, verified=list(dict.fromkeys(verified)),
                    needs_verification=list(dict.fromkeys(needs)),
                    constraints=["the indexed results are copies instead of views (nothing here changes them in place)",
                                 "the indexed tensors live on the device of the index, as tensors of one training step "
                                 "do (a host tensor indexed by a device tensor raises)",
                                 "a list or array indexed by the tensor still reads it, as before (no saving there)"])]


def _read(node) -> Optional[tuple]:
    """(T, kind) of `T.item()` / `int(T)`."""
    if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("item")), args=[])):
        return node.func.value, "item"
    if m.matches(node, m.Call(func=m.Name("int"), args=[m.Arg(keyword=None, star="")])):
        return node.args[0].value, "int"
    return None


def _in_loop(meta, node) -> bool:
    parents = meta[ParentNodeProvider]
    cur = node
    while cur in parents:
        cur = parents[cur]
        if isinstance(cur, (cst.For, cst.While, cst.ListComp, cst.DictComp, cst.SetComp, cst.GeneratorExp)):
            return True
        if isinstance(cur, cst.FunctionDef):
            return False
    return False


def _device_value(tensor, kind: str) -> cst.BaseExpression:
    text = code(tensor)
    if not isinstance(tensor, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)):
        text = f"({text})"
    zero_d = (m.matches(tensor, m.Call(func=m.Attribute(attr=m.OneOf(*[m.Name(r) for r in _FULL_REDUCTIONS])),
                                       args=[])))
    text = text if zero_d else f"{text}.reshape(())"
    return expr(f"{text}.long()" if kind == "int" else text)


def _plan(meta, assign: cst.Assign):
    """(name, read call, its replacement, (verified, needs_verification)) for one index read, else None."""
    if len(assign.targets) != 1 or not isinstance(assign.targets[0].target, cst.Name):
        return None
    read = _read(assign.value)
    if read is None:
        return None
    tensor, kind = read
    name = assign.targets[0].target.value
    function = enclosing_function(meta, assign)
    if function is None or name in {p.name.value for p in function.params.params}:
        return None
    subscripts = _index_uses(meta, function, name, assign.targets[0].target)
    if not subscripts:
        return None
    line = start_line(meta, assign)
    verified = [f"every use of `{name}` is a whole index of a subscript that is read, not assigned, aliased or "
                f"changed in place", f"`{name}` is bound only here in `{function.name.value}`"]
    needs = []
    prove_tensor(meta, tensor, function, line, verified, needs)
    return name, assign.value, _device_value(tensor, kind), (verified, needs)


def _index_uses(meta, function, name: str, target) -> Optional[list]:
    """The subscripts `name` indexes; None when a use of it is anything else or it is bound again."""
    parents = meta[ParentNodeProvider]
    found, bad = [], []

    class _V(cst.CSTVisitor):
        def visit_Name(self, node: cst.Name) -> None:
            if node.value != name or node is target:
                return
            p = parents.get(node)
            if isinstance(p, (cst.Attribute,)) and p.attr is node:
                return                                          # `x.name`: another name
            if isinstance(p, cst.Arg) and p.keyword is node:
                return                                          # `f(name=...)`
            idx, elem = p, parents.get(p)
            sub = parents.get(elem)
            if (isinstance(idx, cst.Index) and idx.star is None and isinstance(elem, cst.SubscriptElement)
                    and isinstance(sub, cst.Subscript) and _read_only(sub)):
                found.append(sub)
            else:
                bad.append(node)

        def visit_Global(self, node) -> None:
            if any(n.name.value == name for n in node.names):
                bad.append(node)

        def visit_Nonlocal(self, node) -> None:
            self.visit_Global(node)

    def _read_only(sub) -> bool:
        """The subscript's value (or a view of it) is read, never written, aliased by a name or changed in place."""
        cur = sub
        while True:
            p = parents.get(cur)
            if isinstance(p, cst.Subscript) and p.value is cur:
                cur = p                                         # `x[name][0]`
            elif isinstance(p, cst.Attribute) and p.value is cur:
                attr = p.attr.value
                if attr.endswith("_") and not attr.endswith("__"):
                    return False                                # `x[name].add_(1)`
                call = parents.get(p)
                if attr in _VIEW_ATTRIBUTES:
                    cur = p
                elif attr in _VIEW_METHODS and isinstance(call, cst.Call) and call.func is p:
                    cur = call                                  # `x[name].view(-1)` is still x's memory
                else:
                    return True
            elif isinstance(p, (cst.Element, cst.Tuple, cst.List)):
                cur = p                                         # `a, b = x[name], y[name]`
            else:
                break
        p = parents.get(cur)
        if isinstance(p, (cst.AssignTarget, cst.Del)) or (
                isinstance(p, (cst.AugAssign, cst.AnnAssign, cst.NamedExpr)) and p.target is cur):
            return False
        if isinstance(p, (cst.Assign, cst.AnnAssign, cst.NamedExpr)) and p.value is cur:
            return False                                        # aliased whole by a name
        if isinstance(p, (cst.For, cst.CompFor)) and (p.iter is cur or p.target is cur):
            return False
        return True

    v = _V()
    function.visit(v)
    if bad or not found or bindings(function.body, name) != 1:
        return None
    return found
