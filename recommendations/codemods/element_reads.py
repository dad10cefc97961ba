"""Candidate generator `element_reads`: several elements of one tensor read as Python numbers in one statement ->
one read of all of them.

    x, y = int(center[0]), int(center[1])      ->  center_host = center[[0, 1]].reshape(2).tolist()
                                                   x, y = int(center_host[0]), int(center_host[1])

The reads are `int(T[c])`, `float(T[c])` and `T[c].item()` with c an integer literal (negative too) and T a
name or attribute (evaluating it again gives the same tensor): one device->host copy instead of one blocking
sync per element. `.tolist()` gives each element as the Python number `.item()` gives (the same dtype, no
promotion: the elements come from one tensor), so `int()` / `float()` of it is the number they gave;
`reshape(n)` accepts exactly what the reads accepted (each indexed element one value). Refused: fewer than two
reads of one tensor, a statement that is not a simple one (the new line goes before it: a loop test or a
comprehension would evaluate it once instead of every time), T assigned in the statement or a `.tolist()` (a host list), a statement with parts
evaluated only sometimes (`a if c else b`, `and`/`or`, a comprehension, a lambda: reading ahead could read an
element that the original never touched). That T is a tensor
(not a list or an array) is proven by the verification stage on the user's run when the syntax does not show it.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, code, enclosing_function, expr, names_in, render, replace_nodes, rewrites_at, start_line
from .loop_syntax import assigned_from, fresh, prove_tensor

GENERATOR = "element_reads"


def candidates(source: str, line: int) -> list:
    return rewrites_at(source, line, cst.SimpleStatementLine, _rewrite, lambda stmt: len(stmt.body) == 1)


def _element(node) -> Optional[tuple]:
    """(T, c) of `T[c]` with c an integer literal and T a name or attribute chain."""
    if not (isinstance(node, cst.Subscript) and len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index)):
        return None
    index = node.slice[0].slice.value
    sign = 1
    if isinstance(index, cst.UnaryOperation) and isinstance(index.operator, cst.Minus):
        index, sign = index.expression, -1
    if not isinstance(index, cst.Integer) or not _stable(node.value):
        return None
    return node.value, sign * int(index.value, 0)


def _stable(node) -> bool:
    return isinstance(node, cst.Name) or (isinstance(node, cst.Attribute) and _stable(node.value))


def _read(node) -> Optional[tuple]:
    """(element subscript, wrapper) of `int(T[c])` / `float(T[c])` (wrapper `int`/`float`) or `T[c].item()` (None)."""
    if m.matches(node, m.Call(func=m.Name("int") | m.Name("float"), args=[m.Arg(keyword=None, star="")])):
        return node.args[0].value, node.func.value
    if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("item")), args=[])):
        return node.func.value, None
    return None


def _host_list(meta, function, tensor, line: int) -> bool:
    """`tensor` is a name last assigned a `.tolist()` (a host list, as this rewrite leaves)."""
    value = assigned_from(meta, function, tensor.value, line) if isinstance(tensor, cst.Name) else None
    return m.matches(value, m.Call(func=m.Attribute(attr=m.Name("tolist")), args=[]))


class _Reads(cst.CSTVisitor):
    def __init__(self):
        super().__init__()
        self.found = []                     # (call, T, c, wrapper)
        self.bound = set()                  # code of names/attributes the statement binds
        self.conditional = False            # parts evaluated only sometimes (read ahead, an element could not exist)

    def visit_Call(self, node) -> None:
        r = _read(node)
        if r is not None:
            e = _element(r[0])
            if e is not None:
                self.found.append((node, e[0], e[1], r[1]))

    def _sometimes(self, node) -> bool:
        self.conditional = True
        return False

    visit_Lambda = visit_IfExp = visit_BooleanOperation = _sometimes
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _sometimes

    def visit_AssignTarget(self, node) -> None:
        self._bind(node.target)

    def visit_NamedExpr(self, node) -> None:
        self._bind(node.target)

    def _bind(self, t) -> None:
        if isinstance(t, (cst.Tuple, cst.List)):
            for e in t.elements:
                self._bind(e.value)
        elif isinstance(t, (cst.Name, cst.Attribute)):
            self.bound.add(code(t))


def _rewrite(meta, module, stmt: cst.SimpleStatementLine) -> Optional[Rewrite]:
    small = stmt.body[0]
    if not isinstance(small, (cst.Assign, cst.Expr, cst.Return, cst.AugAssign, cst.AnnAssign)):
        return None
    reads = _Reads()
    stmt.visit(reads)
    if reads.conditional:
        return None
    groups: dict = {}
    for call, tensor, c, wrapper in reads.found:
        groups.setdefault(code(tensor), []).append((call, tensor, c, wrapper))
    function = enclosing_function(meta, stmt)
    line = start_line(meta, stmt)
    groups = {t: g for t, g in groups.items() if len({c for _, _, c, _ in g}) >= 2 and t not in reads.bound
              and not any(t == b or t.startswith(b + ".") for b in reads.bound)
              and not _host_list(meta, function, g[0][1], line)}
    if not groups:
        return None
    taken = names_in(module)
    mapping, before, verified, needs = {}, [], [], []
    for t, group in groups.items():
        tensor = group[0][1]
        host = fresh(taken, f"{t.rsplit('.', 1)[-1]}_host")
        indices = list(dict.fromkeys(c for _, _, c, _ in group))
        before.append(cst.parse_statement(
            f"{host} = {t}[[{', '.join(map(str, indices))}]].reshape({len(indices)}).tolist()\n"))
        for call, _, c, wrapper in group:
            value = f"{host}[{indices.index(c)}]"
            mapping[call] = expr(f"{wrapper}({value})" if wrapper else value)
        prove_tensor(meta, tensor, function, line, verified, needs)
    new_stmt = replace_nodes(stmt, mapping)
    before[0] = before[0].with_changes(leading_lines=stmt.leading_lines)
    new_module = replace_nodes(module, {stmt: cst.FlattenSentinel(before + [new_stmt.with_changes(leading_lines=[])])},
                               meta)
    names = ", ".join(f"`{t}`" for t in groups)
    return Rewrite(new_source=render(new_module),
                   description=(f"Read the elements of {names} this line needs with one `.tolist()` instead of one "
                                f"blocking device sync per element."),
                   auto_applicable=True, generator=GENERATOR,
                   verified=verified + ["`.tolist()` gives each element as the Python number `.item()` gives (one "
                                        "tensor: one dtype), `int()`/`float()` of it as before",
                                        "`reshape(n)` accepts exactly the one-value elements the reads accepted",
                                        "the tensor is a name or attribute not bound on the line: read once before "
                                        "it, it is the same tensor"],
                   needs_verification=needs,
                   constraints=["one device->host copy of the indexed elements replaces one sync per element"])
