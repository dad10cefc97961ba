"""Candidate generator `stacked_reads`: a comprehension that reads one number per tensor (the mmdet log-vars
idiom) -> one stacked read.

    {k: v.item() for k, v in log_vars.items()}
        -> (dict(zip(log_vars.keys(), torch.stack([v.reshape(()) for v in log_vars.values()]).tolist()))
            if len(log_vars) else {})
    [t.item() for t in terms]  ->  (torch.stack([t.reshape(()) for t in terms]).tolist() if len(terms) else [])

One device->host copy instead of one blocking sync per entry. `.item()` needs one element, so `reshape(())`
accepts exactly what it accepted. The values come back as the same Python numbers when they share one dtype
kind (floating dtypes are promoted among themselves exactly); a dict mixing integer or bool values with
floating ones would come back as floats, so whether they do is left to the verification stage (it compares
the Python values with their types). Refused: filters (`if`), several `for`s, an iterable that is not a name
(or `name.items()` for a dict), keys other than the loop's key, values other than `<loop value>.item()`
(`float(v)` too).
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, add_imports, analyzed, code, end_line, expr, node_index, replace_nodes, start_line

GENERATOR = "stacked_reads"


def candidates(source: str, line: int) -> list:
    wrapper, meta = analyzed(source)
    module = wrapper.module
    for node in node_index(module).of(cst.DictComp, cst.ListComp):
        if start_line(meta, node) <= line <= end_line(meta, node):
            r = _rewrite(meta, module, node)
            if r is not None:
                return [r]
    return []


def _read_of(node, name: str) -> bool:
    """`node` is `name.item()` or `float(name)`."""
    return (m.matches(node, m.Call(func=m.Attribute(value=m.Name(name), attr=m.Name("item")), args=[]))
            or m.matches(node, m.Call(func=m.Name("float"), args=[m.Arg(value=m.Name(name), keyword=None, star="")])))


def _container(node) -> bool:
    """A name, attribute or constant-key subscript chain (evaluating it again reads the same object)."""
    if isinstance(node, cst.Subscript):
        return (len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index)
                and isinstance(node.slice[0].slice.value, (cst.SimpleString, cst.Integer)) and _container(node.value))
    return isinstance(node, cst.Name) or (isinstance(node, cst.Attribute) and _container(node.value))


def _rewrite(meta, module, node) -> Optional[Rewrite]:
    loop = node.for_in
    if loop.ifs or loop.inner_for_in is not None or loop.asynchronous is not None:
        return None
    if isinstance(node, cst.DictComp):
        if not (m.matches(loop.iter, m.Call(func=m.Attribute(attr=m.Name("items")), args=[]))
                and _container(loop.iter.func.value)
                and m.matches(loop.target, m.Tuple([m.Element(m.Name()), m.Element(m.Name())]))):
            return None
        key, value = (e.value.value for e in loop.target.elements)
        if not (m.matches(node.key, m.Name(key)) and _read_of(node.value, value)) or key == value:
            return None
        d = code(loop.iter.func.value)
        new = expr(f"dict(zip({d}.keys(), torch.stack([{value}.reshape(()) for {value} in {d}.values()]).tolist())) "
                   f"if len({d}) else {{}}")
        what = f"the values of `{d}`"
    else:
        if not (_container(loop.iter) and isinstance(loop.target, cst.Name) and _read_of(node.elt, loop.target.value)):
            return None
        t, seq = loop.target.value, code(loop.iter)
        new = expr(f"torch.stack([{t}.reshape(()) for {t} in {seq}]).tolist() if len({seq}) else []")
        what = f"the tensors of `{seq}`"
    new_source = add_imports(replace_nodes(module, {node: _paren(new)}, meta), [("torch", None)]).code
    return Rewrite(new_source=new_source,
                   description=(f"Read {what} to the host with one `torch.stack(...).tolist()` instead of one `.item()` "
                                f"per entry (one blocking device sync each on an NPU)."),
                   auto_applicable=True, generator=GENERATOR,
                   verified=["each entry is read with `.item()`/`float()` of the loop's value, which needs one element "
                             "(as `reshape(())` does)", "an empty container gives an empty result, as before",
                             "keys and their order are those of the loop"],
                   needs_verification=[f"{what} are tensors of one dtype kind on one device (a mix of integer and "
                                       f"floating values would come back as floats)"],
                   constraints=["one device->host copy of the stacked values replaces one sync per entry"])


def _paren(node: cst.BaseExpression) -> cst.BaseExpression:
    """The conditional expression in parentheses (it replaces a comprehension, which binds tighter)."""
    return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
