"""Syntax facts every loop rewrite needs: the loop at a line, the names it binds and leaves bound, where a
name was last assigned, whether an expression is certainly a tensor, fresh names, and replacing a loop
by new statements. Shared by loops.py (the guide's idioms) and the candidate generators."""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import add_imports, analyzed, code, end_line, node_index, qualified_names, render, replace_nodes, start_line

# Calls/methods whose result is certainly a tensor (for the `.item()` loop precondition).
TENSOR_METHODS = ("cpu", "detach", "flatten", "view", "reshape", "to", "float", "long", "int", "clone",
                   "contiguous", "squeeze", "unsqueeze", "sum", "argmax", "argmin", "max", "min", "nonzero",
                   "sigmoid", "softmax", "abs", "round", "floor", "ceil", "cumsum", "sort", "topk")


def loops_at(meta, module: cst.Module, line: int) -> list:
    """For-loops containing `line`, innermost first; if none, the loops of the function defined at `line`
    (Kineto python_function frames carry the def line only)."""
    index = node_index(module)
    loops, functions = index.of(cst.For), index.of(cst.FunctionDef)
    containing = [n for n in loops if start_line(meta, n) <= line <= end_line(meta, n)]
    if containing:
        return sorted(containing, key=lambda n: -start_line(meta, n))
    for f in functions:
        if start_line(meta, f) <= line <= start_line(meta, f.body) or any(
                start_line(meta, d) == line for d in f.decorators):
            inside = [n for n in loops if start_line(meta, f) <= start_line(meta, n) <= end_line(meta, f)]
            return sorted(inside, key=lambda n: start_line(meta, n))
    return []


def body_statements(loop: cst.For) -> Optional[list]:
    """The small statements of a loop body made only of simple one-statement lines, else None."""
    if loop.orelse is not None or not isinstance(loop.body, cst.IndentedBlock):
        return None
    out = []
    for stmt in loop.body.body:
        if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
            return None
        out.append(stmt.body[0])
    return out


def used_after(meta, function, loop, names: set) -> list:
    """Names among `names` that `function` may read after `loop` ends with the value the loop left bound: the
    first occurrence after the loop is a read (a name rebound first, or bound by a later comprehension or
    for-loop of its own, does not count)."""
    if function is None:
        return []
    after = end_line(meta, loop)
    first = {}              # name -> "read" | "bind", the first occurrence after the loop

    class _V(cst.CSTVisitor):
        def __init__(self):
            super().__init__()
            self.comp_bound = []

        def _comp(self, node) -> None:
            bound, f = set(), node.for_in
            while f is not None:
                bound |= _bound_names(f.target)
                f = f.inner_for_in
            self.comp_bound.append(bound)

        def _leave_comp(self, node) -> None:
            self.comp_bound.pop()

        visit_ListComp = visit_GeneratorExp = visit_SetComp = visit_DictComp = _comp
        leave_ListComp = leave_GeneratorExp = leave_SetComp = leave_DictComp = _leave_comp

        def visit_Assign(self, node) -> bool:
            node.value.visit(self)          # evaluated before its targets are bound
            for t in node.targets:
                self._bind(t.target)
            return False

        def visit_For(self, node) -> bool:
            node.iter.visit(self)
            self._bind(node.target)
            node.body.visit(self)
            if node.orelse is not None:
                node.orelse.visit(self)
            return False

        def _bind(self, target) -> None:
            if isinstance(target, cst.Name):
                if target.value in names and start_line(meta, target) > after:
                    first.setdefault(target.value, "bind")
            else:
                target.visit(self)

        def visit_Name(self, n: cst.Name) -> None:
            if n.value in names and start_line(meta, n) > after and not any(n.value in b for b in self.comp_bound):
                first.setdefault(n.value, "read")

    function.visit(_V())
    return sorted(k for k, v in first.items() if v == "read")


def _bound_names(target) -> set:
    if isinstance(target, cst.Name):
        return {target.value}
    if isinstance(target, (cst.Tuple, cst.List)):
        return set().union(*[_bound_names(e.value) for e in target.elements]) if target.elements else set()
    if isinstance(target, cst.StarredElement):
        return _bound_names(target.value)
    return set()


def assigned_from(meta, function, name: str, before_line: int) -> Optional[cst.BaseExpression]:
    """The value of the last `name = value` in `function` before `before_line`, else None."""
    if function is None:
        return None
    best = []

    class _V(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            if (len(node.targets) == 1 and m.matches(node.targets[0].target, m.Name(name))
                    and start_line(meta, node) < before_line):
                best.append(node)

    function.visit(_V())
    return best[-1].value if best else None


def fresh(taken: set, base: str) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}"
    taken.add(name)
    return name


def replace_loop(meta, module: cst.Module, loop: cst.For, new_statements: list, imports=(("torch", None),)) -> str:
    first = new_statements[0].with_changes(leading_lines=loop.leading_lines)
    new_module = replace_nodes(module, {loop: cst.FlattenSentinel([first] + list(new_statements[1:]))}, meta)
    return render(add_imports(new_module, list(imports)))


def is_tensor_expr(meta, node, function, before_line: int) -> Optional[str]:
    """Why `node` is certainly a tensor (a torch call or a tensor method result), else None."""
    if isinstance(node, cst.Name):
        value = assigned_from(meta, function, node.value, before_line)
        return is_tensor_expr(meta, value, function, before_line) if value is not None else None
    if isinstance(node, cst.Call):
        if any(q.startswith("torch.") for q in qualified_names(meta, node.func)) and not any(
                q.startswith("torch.Tensor.") for q in qualified_names(meta, node.func)):
            return f"`{code(node)}` is a torch call"
        if isinstance(node.func, cst.Attribute) and node.func.attr.value in TENSOR_METHODS:
            return f"`{code(node)}` is a tensor method"
    return None


def prove_tensor(meta, node, function, line: int, verified: list, needs: list) -> None:
    """Record in `verified` why `node` is certainly a tensor, else in `needs` that the verification stage must show
    it (the rewrite is not auto-applicable before)."""
    why = is_tensor_expr(meta, node, function, line) if function is not None else None
    if why:
        verified.append(f"`{code(node)}` is a tensor: {why}")
    else:
        needs.append(f"`{code(node)}` is a tensor")


def first_rewrite(source: str, line: int, match):
    """The rewrite `match(meta, module, loop)` gives for the innermost loop at `line` that it matches."""
    wrapper, meta = analyzed(source)
    module = wrapper.module
    for loop in loops_at(meta, module, line):
        r = match(meta, module, loop)
        if r is not None:
            return r
    return None
