"""Candidate generator `host_transfers`: one device->host copy per iteration (`x.cpu()`, `x.detach().cpu().numpy()`,
`T[i].cpu()` ...) feeding host code, hoisted into one copy of the whole tensor before the loop.

    for box in boxes:                               boxes_host = boxes.detach().cpu().numpy()
        arr = box.detach().cpu().numpy()     ->     for box_host in boxes_host:
        keep.append(host_nms(arr))                      arr = box_host
                                                        keep.append(host_nms(arr))

Element k of the hoisted copy holds the same values as the per-element copy (rows of a copy are copies of
the rows), and on a CPU both share memory with the source exactly as before. Proven from the syntax: every
use of the loop variable (or of `T[i]`) is such a transfer chain, T is not changed in the loop, and T is
visibly a tensor; when T may be a Python list of tensors the candidate stacks it first (`torch.stack(T)`),
which only verification can accept (equal shapes).
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, code, enclosing_function, expr, names_in, render, replace_nodes, start_line
from .loop_syntax import first_rewrite, fresh, is_tensor_expr, used_after
from .scalar_reads import _rebound, iteration, parents_of

GENERATOR = "host_transfers"
_TRANSFER = ("cpu", "numpy", "detach")
_CPU_TO = m.Call(func=m.Attribute(attr=m.Name("to")), args=[m.Arg(value=m.SimpleString('"cpu"') | m.SimpleString("'cpu'"), keyword=None)])


def candidates(source: str, line: int) -> list:
    r = first_rewrite(source, line, _match)
    return [r] if r is not None else []


def _chain(node, parents: dict) -> Optional[tuple]:
    """(outermost call, [method names]) of the transfer chain applied to `node` (`.detach().cpu().numpy()`),
    when it contains a `.cpu()` / `.to("cpu")` / `.numpy()`."""
    cur, methods = node, []
    while True:
        attr = parents.get(cur)
        call = parents.get(attr) if isinstance(attr, cst.Attribute) else None
        if not (isinstance(attr, cst.Attribute) and attr.value is cur and isinstance(call, cst.Call) and call.func is attr):
            break
        name = attr.attr.value
        if name in _TRANSFER and not call.args:
            methods.append(name)
        elif m.matches(call, _CPU_TO):
            methods.append('to("cpu")')
        else:
            break
        cur = call
    if not any(x in methods for x in ("cpu", "numpy", 'to("cpu")')):
        return None
    return cur, methods


def _match(meta, module, loop: cst.For) -> Optional[Rewrite]:
    if loop.orelse is not None:
        return None
    parts = iteration(loop.target, loop.iter)
    if not parts:
        return None
    parents = parents_of(loop.body)
    function = enclosing_function(meta, loop)
    taken = names_in(function) if function is not None else names_in(module)
    before = start_line(meta, loop)
    # iterated form: for x in T -- every use of x is one transfer chain (the same one)
    for tgt, it, kind in parts:
        if kind != "element" or not isinstance(tgt, cst.Name) or len(parts) != 1:
            continue
        uses = _uses(loop.body, tgt.value)
        chains = [_chain(u, parents) for u in uses]
        if not uses or None in chains or len({tuple(c[1]) for c in chains}) != 1 or _rebound(loop.body, {tgt.value}):
            continue
        if used_after(meta, function, loop, {tgt.value}):
            return None
        host = fresh(taken, f"{tgt.value}_host")
        base, stacked = _source(meta, it, function, before)
        hoisted = cst.parse_statement(f"{fresh(taken, _base_name(it) + '_host')} = {base}.{'.'.join(_call(x) for x in chains[0][1])}\n")
        hoisted_name = hoisted.body[0].targets[0].target.value
        new_body = loop.body.visit(_Swap({id(c[0]): cst.Name(host) for c in chains}))
        new_loop = loop.with_changes(target=cst.Name(host), iter=cst.Name(hoisted_name), body=new_body, leading_lines=[])
        return _finish(meta, module, loop, [hoisted.with_changes(leading_lines=loop.leading_lines), new_loop],
                       it, stacked, chains[0][1], function, before)
    # indexed form: T[i].cpu()... with i the loop index
    index = next((t for t, _, kind in parts if kind == "index" and isinstance(t, cst.Name)), None)
    if index is None:
        return None
    found = {}

    class _V(cst.CSTVisitor):
        def visit_Subscript(self, node) -> None:
            if (len(node.slice) == 1 and m.matches(node.slice[0].slice, m.Index(m.Name(index.value)))
                    and isinstance(node.value, (cst.Name, cst.Attribute))):
                c = _chain(node, parents)
                if c is not None:
                    found.setdefault(code(node.value), []).append((node, c))

    loop.body.visit(_V())
    for seq_c, hits in found.items():
        seq = hits[0][0].value
        if len({tuple(c[1]) for _, c in hits}) != 1 or _rebound(loop.body, names_in(seq)) or index.value in names_in(seq):
            continue
        base, stacked = _source(meta, seq, function, before)
        hoisted_name = fresh(taken, f"{seq_c.split('.')[-1]}_host")
        hoisted = cst.parse_statement(f"{hoisted_name} = {base}.{'.'.join(_call(x) for x in hits[0][1][1])}\n")
        new_body = loop.body.visit(_Swap({id(c[0]): expr(f"{hoisted_name}[{index.value}]") for _, c in hits}))
        new_loop = loop.with_changes(body=new_body, leading_lines=[])
        return _finish(meta, module, loop, [hoisted.with_changes(leading_lines=loop.leading_lines), new_loop],
                       seq, stacked, hits[0][1][1], function, before)
    return None


def _call(method: str) -> str:
    return method if method.endswith(")") else f"{method}()"


def _base_name(node) -> str:
    return code(node).split(".")[-1].split("(")[0] or "values"


def _source(meta, node, function, before: int) -> tuple:
    """(expression to copy, whether it stacks a list): the tensor itself, or `torch.stack(...)` of a list."""
    c = code(node)
    if is_tensor_expr(meta, node, function, before):
        return c, False
    return f"torch.stack({c})", True


def _uses(body, name: str) -> list:
    found = []

    class _V(cst.CSTVisitor):
        def visit_Name(self, n) -> None:
            if n.value == name:
                found.append(n)

    body.visit(_V())
    return found


class _Swap(cst.CSTTransformer):
    def __init__(self, mapping: dict):
        super().__init__()
        self.mapping = mapping

    def on_leave(self, original, updated):
        return self.mapping.get(id(original), updated)


def _finish(meta, module, loop, new_statements: list, tensor, stacked: bool, methods: list, function,
            before: int) -> Rewrite:
    from .base import add_imports

    new = replace_nodes(module, {loop: cst.FlattenSentinel(new_statements)}, meta)
    if stacked:
        new = add_imports(new, [("torch", None)])
    chain = ".".join(_call(x) for x in methods)
    why = is_tensor_expr(meta, tensor, function, before)
    needs = ([f"`{code(tensor)}` is a list of tensors of equal shapes (it is stacked into one before the copy)"]
             if stacked else [])
    verified = [f"every per-iteration copy is `.{chain}` of one element of `{code(tensor)}`, which the loop does "
                f"not change", "the loop variable is not read after the loop"]
    if why:
        verified.append(f"`{code(tensor)}` is a tensor: {why}")
    return Rewrite(new_source=render(new),
                   description=(f"Copy `{code(tensor)}` to the host once before the loop (`.{chain}`) and index the "
                                f"copy, instead of one device->host copy (a blocking sync on an NPU) per element."),
                   auto_applicable=not needs, generator=GENERATOR, verified=verified, needs_verification=needs,
                   constraints=["the whole tensor is copied even when the loop stops early"])
