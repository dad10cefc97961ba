"""Candidate generator `scalar_reads`: device values read to the host one element per iteration, hoisted into
one `.tolist()` before the loop.

Two shapes, in a `for` loop or a comprehension:

* the loop iterates a tensor and reads each element as a Python scalar::

      for ll in lens:                        ->  for ll in lens.reshape(-1).tolist():
          mask[k, :ll] = 1                           mask[k, :ll] = 1
      [int(h) * int(w) for h, w in shapes]   ->  [int(h) * int(w) for h, w in shapes.tolist()]

* the loop indexes a loop-invariant tensor by its index and reads the element as a Python scalar::

      for i in range(n):                     ->  counts_host = counts.reshape(-1).tolist()
          k = int(counts[i])                     for i in range(n):
                                                     k = int(counts_host[i])

A "scalar read" is a context that turns the element into a Python number whatever its type: `.item()`
(dropped: the listed element already is that number), `int()`, `float()`, `bool()`, `range()`, a slice
bound or an index. There the listed value and the 0-d tensor give the same Python number, so the rewrite is
exact; it is proven from the syntax when the iterated/indexed value is visibly a tensor. Arithmetic or a
comparison on the element before it becomes a Python number (`int(n * 0.5)`, `if score > 0.3:`) would be
evaluated in double precision instead of the tensor's dtype: such candidates are offered only when the
verification stage accepts them on the user's run.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import (Rewrite, analyzed, code, end_line, enclosing_function, expr, names_in,
                   node_index, render, replace_nodes, start_line)
from .loop_syntax import assigned_from, fresh, is_tensor_expr, loops_at, used_after

GENERATOR = "scalar_reads"
_SCALAR_BUILTINS = ("int", "float", "bool", "range")
_EXACT, _INEXACT = "exact", "inexact"


# ---------------------------------------------------------------------------------------------
# How a use of a value is consumed
# ---------------------------------------------------------------------------------------------
def scalar_context(node: cst.CSTNode, parents: dict) -> Optional[str]:
    """`_EXACT` when `node`'s value is read directly as a Python scalar (`node.item()`, `int(node)`, a slice
    bound, an index ...), `_INEXACT` when arithmetic or a comparison on it comes first, None when the value
    is used as a tensor."""
    cur, inexact, compared = node, False, False
    while True:
        p = parents.get(cur)
        if compared:
            # a comparison's result is a Python bool only where a test consumes it
            if isinstance(p, (cst.BooleanOperation, cst.UnaryOperation)):
                cur = p
                continue
            if isinstance(p, (cst.If, cst.While, cst.IfExp)) and getattr(p, "test", None) is cur:
                return _INEXACT
            return None
        if isinstance(p, (cst.BinaryOperation, cst.UnaryOperation)) and not (
                isinstance(p, cst.UnaryOperation) and isinstance(p.operator, cst.Not)):
            inexact, cur = True, p
            continue
        if isinstance(p, cst.Attribute) and p.value is cur:
            call = parents.get(p)
            if p.attr.value == "item" and isinstance(call, cst.Call) and call.func is p and not call.args:
                return _INEXACT if inexact else _EXACT
            return None
        if isinstance(p, cst.Arg) and p.keyword is None and not p.star:
            call = parents.get(p)
            if (isinstance(call, cst.Call) and isinstance(call.func, cst.Name) and call.func.value in _SCALAR_BUILTINS
                    and len(call.args) >= 1 and (call.func.value == "range" or len(call.args) == 1)):
                return _INEXACT if inexact else _EXACT
            return None
        if isinstance(p, cst.Slice) and cur in (p.lower, p.upper, p.step):
            return _INEXACT if inexact else _EXACT
        if isinstance(p, cst.Index) and p.value is cur:
            return _INEXACT if inexact else _EXACT
        if isinstance(p, cst.ComparisonTarget):
            p = parents.get(p)
        if isinstance(p, cst.Comparison):
            compared, cur = True, p
            continue
        return None


def _is_item_call(node, parents: dict) -> Optional[cst.Call]:
    """The `node.item()` call when `node` is directly its receiver."""
    p = parents.get(node)
    call = parents.get(p) if isinstance(p, cst.Attribute) else None
    if isinstance(p, cst.Attribute) and p.attr.value == "item" and isinstance(call, cst.Call) and call.func is p:
        return call
    return None


class _Parents(cst.CSTVisitor):
    def __init__(self):
        super().__init__()
        self.parents, self.stack = {}, []

    def on_visit(self, node) -> bool:
        if self.stack:
            self.parents[node] = self.stack[-1]
        self.stack.append(node)
        return True

    def on_leave(self, original_node) -> None:
        self.stack.pop()


def parents_of(node: cst.CSTNode) -> dict:
    v = _Parents()
    node.visit(v)
    return v.parents


def _rebound(body: cst.CSTNode, names: set) -> bool:
    """True when the body assigns (or deletes, or binds in a nested for/with/comprehension) any of `names`,
    or changes one in place through its own name (`x[...] = `, `x += `, `x.add_(...)`)."""
    found = []

    class _V(cst.CSTVisitor):
        def _target(self, t) -> None:
            if isinstance(t, (cst.Tuple, cst.List)):
                for e in t.elements:
                    self._target(e.value)
            elif isinstance(t, cst.StarredElement):
                self._target(t.value)
            elif isinstance(t, (cst.Subscript, cst.Attribute)):
                if names_in(t.value) & names:
                    found.append(t)
            elif isinstance(t, cst.Name) and t.value in names:
                found.append(t)

        def visit_AssignTarget(self, node) -> None:
            self._target(node.target)

        def visit_AugAssign(self, node) -> None:
            self._target(node.target)

        def visit_AnnAssign(self, node) -> None:
            self._target(node.target)

        def visit_For(self, node) -> None:
            self._target(node.target)

        def visit_CompFor(self, node) -> None:
            self._target(node.target)

        def visit_Del(self, node) -> None:
            self._target(node.target)

        def visit_NamedExpr(self, node) -> None:
            self._target(node.target)

        def visit_WithItem(self, node) -> None:
            if node.asname is not None:
                self._target(node.asname.name)

        def visit_Call(self, node) -> None:
            f = node.func
            if (isinstance(f, cst.Attribute) and f.attr.value.endswith("_") and not f.attr.value.endswith("__")
                    and names_in(f.value) & names):
                found.append(node)
            if any(a.keyword is not None and a.keyword.value == "out" and names_in(a.value) & names for a in node.args):
                found.append(node)

    body.visit(_V())
    return bool(found)


# ---------------------------------------------------------------------------------------------
# The loop's iteration: which target names come from which iterable
# ---------------------------------------------------------------------------------------------
def iteration(target: cst.BaseExpression, iterable: cst.BaseExpression) -> Optional[list]:
    """[(target, iterable, kind)] for `for T in E`, `enumerate(E)` ("index" for its counter) and `zip(E1, E2 ...)`:
    which loop target is bound to the elements of which iterable. `range(...)` gives one ("index") entry."""
    def plain_call(name: str):
        return (m.matches(iterable, m.Call(func=m.Name(name))) and iterable.args
                and all(a.keyword is None and not a.star for a in iterable.args))

    if plain_call("range"):
        return [(target, iterable, "index")] if isinstance(target, cst.Name) else None
    if plain_call("enumerate") and len(iterable.args) == 1:
        if not (isinstance(target, (cst.Tuple, cst.List)) and len(target.elements) == 2):
            return None
        first, second = target.elements[0].value, target.elements[1].value
        return [(first, None, "index"), (second, iterable.args[0].value, "element")]
    if plain_call("zip"):
        if not (isinstance(target, (cst.Tuple, cst.List)) and len(target.elements) == len(iterable.args)):
            return None
        return [(e.value, a.value, "element") for e, a in zip(target.elements, iterable.args)]
    if isinstance(iterable, (cst.List, cst.Tuple, cst.ListComp, cst.GeneratorExp, cst.Dict, cst.Set)):
        return None
    return [(target, iterable, "element")]


def _listed(iterable: cst.BaseExpression, target: cst.BaseExpression) -> cst.BaseExpression:
    """`E.reshape(-1).tolist()` for a name target (each element one value), `E.tolist()` for a tuple target
    (rows unpacked into their values)."""
    base = code(iterable)
    if not isinstance(iterable, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)):
        base = f"({base})"
    return expr(f"{base}.tolist()" if isinstance(target, (cst.Tuple, cst.List)) else f"{base}.reshape(-1).tolist()")


def _target_names(target) -> list:
    if isinstance(target, cst.Name):
        return [target]
    if isinstance(target, (cst.Tuple, cst.List)):
        return [n for e in target.elements for n in _target_names(e.value)]
    return []


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------
def candidates(source: str, line: int) -> list:
    """Hoisted-read rewrites of the innermost loop or comprehension at `line` (several when the loop offers
    both shapes: iterated and indexed reads), most local first."""
    wrapper, meta = analyzed(source)
    module = wrapper.module
    out = []
    for comp in _comprehensions_at(meta, module, line):
        r = _rewrite_iterated(meta, module, comp, comp.for_in.target, comp.for_in.iter, _comp_scope(comp))
        if r is not None:
            out.append(r)
    for loop in loops_at(meta, module, line):
        if loop.orelse is not None:
            continue
        for r in (_rewrite_iterated(meta, module, loop, loop.target, loop.iter, loop.body),
                  _rewrite_indexed(meta, module, loop)):
            if r is not None:
                out.append(r)
        if out:
            break
    return out


def _comprehensions_at(meta, module, line: int) -> list:
    comps = [n for n in node_index(module).of(cst.ListComp, cst.GeneratorExp, cst.SetComp)
             if start_line(meta, n) <= line <= end_line(meta, n) and n.for_in.inner_for_in is None]
    return sorted(comps, key=lambda n: -start_line(meta, n))


def _comp_scope(comp) -> cst.CSTNode:
    """What a comprehension evaluates per element: its element expression and its conditions."""
    return cst.Tuple(elements=[cst.Element(comp.elt)] + [cst.Element(c.test) for c in comp.for_in.ifs])


def _uses(scope: cst.CSTNode, name: str) -> list:
    found = []

    class _V(cst.CSTVisitor):
        def visit_Name(self, n: cst.Name) -> None:
            if n.value == name:
                found.append(n)

    scope.visit(_V())
    return found


def _rewrite_iterated(meta, module, node, target, iterable, scope) -> Optional[Rewrite]:
    """`for x in E` (or enumerate/zip) where every use of x is a scalar read -> iterate `E.tolist()`."""
    parts = iteration(target, iterable)
    if not parts:
        return None
    parents = parents_of(scope)
    new_iters, drops, kinds, listed, bound = {}, [], set(), [], set()
    for tgt, it, kind in parts:
        if kind != "element":
            continue
        names = _target_names(tgt)
        if not names or not all(isinstance(n, cst.Name) for n in names) or isinstance(it, cst.Call) and m.matches(
                it, m.Call(func=m.Attribute(attr=m.Name("tolist")))):
            continue
        uses = [u for n in names for u in _uses(scope, n.value)]
        contexts = [scalar_context(u, parents) for u in uses]
        if not uses or None in contexts or _rebound(scope, {n.value for n in names}):
            continue
        kinds.update(contexts)
        new_iters[it] = _listed(it, tgt)
        listed.append((it, tgt))
        bound |= {n.value for n in names}
        drops += [c for u in uses if (c := _is_item_call(u, parents)) is not None]
    if not new_iters:
        return None
    function = enclosing_function(meta, node)
    # only the variables bound to listed elements change type (0-d tensor -> Python number)
    if isinstance(node, cst.For) and used_after(meta, function, node, bound):
        return None
    new_scope_parts = _DropItems({id(c) for c in drops})
    if isinstance(node, cst.For):
        new_iter = iterable
        if len(parts) == 1:
            new_iter = new_iters[iterable]
        else:
            new_iter = iterable.with_changes(args=[a.with_changes(value=new_iters.get(a.value, a.value))
                                                   for a in iterable.args])
        new_node = node.with_changes(iter=new_iter, body=node.body.visit(new_scope_parts))
    else:
        it = node.for_in.iter
        new_iter = new_iters[it] if len(parts) == 1 else it.with_changes(
            args=[a.with_changes(value=new_iters.get(a.value, a.value)) for a in it.args])
        new_node = node.visit(new_scope_parts).with_changes(for_in=node.for_in.with_changes(iter=new_iter))
    new_source = render(replace_nodes(module, {node: new_node}, meta))
    what = ", ".join(f"`{code(it)}`" for it, _ in listed)
    return _finish(meta, node, function, [it for it, _ in listed], kinds, new_source,
                   description=(f"Copy {what} to the host once with `.tolist()` before the loop instead of reading one "
                                f"element per iteration as a Python number (one blocking device sync each on an NPU)."),
                   verified=[f"every use of the loop variable{'s' if len(bound) > 1 else ''} "
                             f"{', '.join(sorted('`' + b + '`' for b in bound))} taken from {what} is a scalar read "
                             f"(`.item()`, int/float/bool/range, a slice bound or an index)"]
                   + (["no loop variable is read after the loop"] if isinstance(node, cst.For) else []))


class _DropItems(cst.CSTTransformer):
    """`x.item()` -> `x` for the calls in `ids` (the listed element already is the Python number)."""

    def __init__(self, ids: set):
        super().__init__()
        self.ids = ids

    def leave_Call(self, original, updated):
        return updated.func.value if id(original) in self.ids else updated


def _rewrite_indexed(meta, module, loop: cst.For) -> Optional[Rewrite]:
    """`for i in range(...)` / enumerate: `T[i]` read as a scalar, T loop-invariant -> `T_host = T.tolist()`
    before the loop and `T_host[i]` inside."""
    parts = iteration(loop.target, loop.iter)
    if not parts:
        return None
    index = next((t for t, _, kind in parts if kind == "index" and isinstance(t, cst.Name)), None)
    if index is None:
        return None
    i = index.value
    parents = parents_of(loop.body)
    reads = {}          # code(T) -> [(subscript node, context)]
    function = enclosing_function(meta, loop)
    for sub in _subscripts_by(loop.body, i):
        ctx = scalar_context(sub, parents) or _alias_context(meta, function, loop, sub, parents)
        if ctx is not None:
            reads.setdefault(code(sub.value), []).append((sub, ctx))
    chosen = {}
    for seq_c, hits in reads.items():
        seq = hits[0][0].value
        names = names_in(seq)
        if i in names or _rebound(loop.body, names) or _is_listed(meta, function, seq, loop):
            continue
        chosen[seq_c] = (seq, hits)
    if not chosen:
        return None
    taken = names_in(function) if function is not None else names_in(module)
    mapping, hoists, kinds, drops = {}, [], set(), {}
    for seq_c, (seq, hits) in chosen.items():
        host = fresh(taken, f"{seq_c.split('.')[-1]}_host")
        hoists.append(cst.parse_statement(f"{host} = {seq_c if isinstance(seq, (cst.Name, cst.Attribute)) else '(' + seq_c + ')'}"
                                          f".reshape(-1).tolist()\n"))
        for sub, ctx in hits:
            kinds.add(ctx)
            item = _is_item_call(sub, parents)
            replacement = expr(f"{host}[{i}]")
            if item is not None:
                drops[id(item)] = replacement
            else:
                mapping[id(sub)] = replacement
    new_body = loop.body.visit(_ReplaceById(mapping, drops))
    new_loop = loop.with_changes(body=new_body)
    first = hoists[0].with_changes(leading_lines=loop.leading_lines)
    new_loop = new_loop.with_changes(leading_lines=[])
    new_source = render(replace_nodes(module, {loop: cst.FlattenSentinel([first] + hoists[1:] + [new_loop])}, meta))
    seqs = [seq for seq, _ in chosen.values()]
    what = ", ".join(f"`{c}`" for c in chosen)
    return _finish(meta, loop, function, seqs, kinds, new_source,
                   description=(f"Copy {what} to the host once with `.tolist()` before the loop instead of reading "
                                f"`{list(chosen)[0]}[{i}]` as a Python number every iteration (one blocking device "
                                f"sync each on an NPU)."),
                   verified=[f"{what} {'is' if len(chosen) == 1 else 'are'} not assigned or changed in place in the loop "
                             f"and read there as `[{i}]` element(s) in scalar contexts (each such element is one value, "
                             f"so the flattened list holds them at the same index)"])


def _alias_context(meta, function, loop, sub, parents: dict) -> Optional[str]:
    """The scalar context of `name` in `name = T[i]` when every later use of `name` in the body is a scalar
    read and `name` is bound only there and not read after the loop (`cls = labels[k]; heat[cls]`)."""
    assign = parents.get(sub)
    if not (isinstance(assign, cst.Assign) and assign.value is sub and len(assign.targets) == 1
            and isinstance(assign.targets[0].target, cst.Name)):
        return None
    name = assign.targets[0].target.value
    uses = [u for u in _uses(loop.body, name) if u is not assign.targets[0].target]
    contexts = [scalar_context(u, parents) for u in uses]
    if not uses or None in contexts or bindings(loop.body, name) != 1 or used_after(meta, function, loop, {name}):
        return None
    return _INEXACT if _INEXACT in contexts else _EXACT


def bindings(body, name: str) -> int:
    """How many statements or clauses of `body` bind `name` (assignments, loops, comprehensions, `:=`, `as`)."""
    found = []

    def binds(target) -> bool:
        return any(n.value == name for n in _target_names(target))

    class _V(cst.CSTVisitor):
        def visit_AssignTarget(self, node) -> None:
            if binds(node.target):
                found.append(node)

        def visit_AugAssign(self, node) -> None:
            if binds(node.target):
                found.append(node)

        def visit_AnnAssign(self, node) -> None:
            if binds(node.target):
                found.append(node)

        def visit_For(self, node) -> None:
            if binds(node.target):
                found.append(node)

        def visit_CompFor(self, node) -> None:
            if binds(node.target):
                found.append(node)

        def visit_NamedExpr(self, node) -> None:
            if binds(node.target):
                found.append(node)

        def visit_AsName(self, node) -> None:
            if binds(node.name):
                found.append(node)

    body.visit(_V())
    return len(found)


def _is_listed(meta, function, seq, loop) -> bool:
    """`seq` was assigned from a `.tolist()` (it is already a host list: a rewrite made it, or the user)."""
    value = assigned_from(meta, function, seq.value, start_line(meta, loop)) if isinstance(seq, cst.Name) else None
    return m.matches(value, m.Call(func=m.Attribute(attr=m.Name("tolist"))))


def _subscripts_by(body, i: str) -> list:
    found = []

    class _V(cst.CSTVisitor):
        def visit_Subscript(self, node: cst.Subscript) -> None:
            if (len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index)
                    and m.matches(node.slice[0].slice.value, m.Name(i))
                    and isinstance(node.value, (cst.Name, cst.Attribute))):
                found.append(node)

    body.visit(_V())
    return found


class _ReplaceById(cst.CSTTransformer):
    def __init__(self, subs: dict, item_calls: dict):
        super().__init__()
        self.subs, self.item_calls = subs, item_calls

    def leave_Subscript(self, original, updated):
        return self.subs.get(id(original), updated)

    def leave_Call(self, original, updated):
        return self.item_calls.get(id(original), updated)


def _finish(meta, node, function, tensors: list, kinds: set, new_source: str, description: str,
            verified: list) -> Rewrite:
    """The Rewrite, with what is proven and what only the verification stage can show."""
    needs, constraints = [], ["one device->host copy of the whole tensor replaces one sync per element"]
    for t in tensors:
        why = is_tensor_expr(meta, t, function, start_line(meta, node))
        if why:
            verified.append(f"`{code(t)}` is a tensor: {why}")
        else:
            needs.append(f"`{code(t)}` is a tensor (not a list or tuple of tensors): its creation is not visible here")
    if _INEXACT in kinds:
        needs.append("arithmetic or comparisons on the read values give the same result in Python double "
                     "precision as in the tensor's dtype")
    return Rewrite(new_source=new_source, description=description, auto_applicable=not needs,
                   constraints=constraints, verified=verified, needs_verification=needs,
                   generator=GENERATOR)
