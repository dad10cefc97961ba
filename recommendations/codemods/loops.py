"""Vectorized rewrites of the Python loops that launch one small op per element (rule NPA501).

Three idioms, each matched on the exact syntax shape so the rewrite is provably the same computation:

* affine interpolation (the seed's PivotNet `interpolate`, chapter 2.3.1)::

      for i in range(1, num_len):
          ratio = i / num_len
          res[i - 1] = (1 - ratio) * start_pt + ratio * end_pt

  -> one `torch.arange` column of ratios and one slice assignment (same `res`, same rows);
* prefix masks (the seed's valid-length mask, chapter 2.3.3)::

      for i, ll in enumerate(valid_len):
          mask[i][:ll] = 1          # or mask[i, :ll] = 1

  -> `mask[:len].masked_fill_(arange(L) < stop[:, None], 1)`: writes exactly the cells the loop writes
  (Python slice semantics for negative and too-large lengths included) and leaves every other cell as
  it was; no boolean indexing, so no nonzero/sync on the NPU;
* per-element `.item()` loops: `for x in t: ... x.item() ...` -> `for x in t.reshape(-1).tolist(): ... x ...`
  (one device->host copy instead of one sync per element).
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, code, enclosing_function, expr, names_in, render, replace_nodes, start_line
from .loop_syntax import (assigned_from, body_statements, first_rewrite, fresh, is_tensor_expr, replace_loop,
                          used_after)

IDIOMS = ("affine_interpolation", "prefix_mask", "item_loop")

# Factory calls whose shape argument tells the rank of the tensor they create.
_FACTORIES = ("zeros", "ones", "empty", "full", "zeros_like", "new_zeros", "new_ones", "new_empty", "new_full")


def _creates_2d(value: Optional[cst.BaseExpression]) -> Optional[str]:
    """If `value` is a factory call that visibly creates a 2-D tensor, say how; else None."""
    if not isinstance(value, cst.Call) or not isinstance(value.func, (cst.Attribute, cst.Name)):
        return None
    fname = value.func.attr.value if isinstance(value.func, cst.Attribute) else value.func.value
    if fname not in _FACTORIES:
        return None
    positional = [a for a in value.args if a.keyword is None and a.star == ""]
    if fname.endswith("_like"):
        return None
    shape_kw = [a for a in value.args if a.keyword is not None and a.keyword.value == "size"]
    first = positional[0].value if positional else (shape_kw[0].value if shape_kw else None)
    if first is None:
        return None
    if isinstance(first, (cst.Tuple, cst.List)) and len(first.elements) == 2:
        return f"created 2-D by `{code(value)}`"
    # x.shape[:2] / x.size()[:2]
    if (isinstance(first, cst.Subscript) and len(first.slice) == 1 and isinstance(first.slice[0].slice, cst.Slice)
            and first.slice[0].slice.lower is None and m.matches(first.slice[0].slice.upper, m.Integer("2"))
            and first.slice[0].slice.step is None):
        return f"created 2-D by `{code(value)}`"
    # torch.zeros(a, b, ...): exactly two positional size arguments (fill value comes first only for full)
    sizes = positional[1:] if fname in ("full", "new_full") else positional
    if fname.startswith("new_") or fname == "full":
        return None
    if len(sizes) == 2 and all(not isinstance(a.value, (cst.Tuple, cst.List)) for a in sizes):
        return f"created 2-D by `{code(value)}`"
    return None


# ---------------------------------------------------------------------------------------------
# Affine interpolation
# ---------------------------------------------------------------------------------------------
def _one_minus(node, ratio: str) -> bool:
    return m.matches(node, m.BinaryOperation(left=m.Integer("1") | m.Float("1.0"), operator=m.Subtract(),
                                             right=m.Name(ratio)))


def _affine_terms(value, ratio: str):
    """(A, B) when `value` is `(1 - r) * A + r * B` (either operand order in each product), else None."""
    if not m.matches(value, m.BinaryOperation(operator=m.Add(), left=m.BinaryOperation(operator=m.Multiply()),
                                              right=m.BinaryOperation(operator=m.Multiply()))):
        return None
    left, right = value.left, value.right
    if _one_minus(left.left, ratio):
        a = left.right
    elif _one_minus(left.right, ratio):
        a = left.left
    else:
        return None
    if m.matches(right.left, m.Name(ratio)):
        b = right.right
    elif m.matches(right.right, m.Name(ratio)):
        b = right.left
    else:
        return None
    return a, b


def _index_offset(node, var: str) -> Optional[int]:
    """c when `node` is `var`, `var + c` or `var - c` with an integer literal c."""
    if m.matches(node, m.Name(var)):
        return 0
    if m.matches(node, m.BinaryOperation(left=m.Name(var), operator=m.Add() | m.Subtract(), right=m.Integer())):
        c = int(node.right.value)
        return c if isinstance(node.operator, cst.Add) else -c
    return None


def rewrite_affine_interpolation(source: str, line: int) -> Optional[Rewrite]:
    return first_rewrite(source, line, _match_affine)


def _match_affine(meta, module, loop: cst.For) -> Optional[Rewrite]:
    body = body_statements(loop)
    if body is None or len(body) != 2 or not m.matches(loop.target, m.Name()):
        return None
    i = loop.target.value
    if not m.matches(loop.iter, m.Call(func=m.Name("range"))) or not 1 <= len(loop.iter.args) <= 2 \
            or any(a.keyword is not None or a.star for a in loop.iter.args):
        return None
    if len(loop.iter.args) == 2:
        start, stop = loop.iter.args[0].value, loop.iter.args[1].value
    else:
        start, stop = cst.Integer("0"), loop.iter.args[0].value
    s1, s2 = body
    if not (m.matches(s1, m.Assign(targets=[m.AssignTarget(target=m.Name())],
                                   value=m.BinaryOperation(left=m.Name(i), operator=m.Divide())))):
        return None
    ratio = s1.targets[0].target.value
    denominator = s1.value.right
    if not m.matches(s2, m.Assign(targets=[m.AssignTarget(target=m.Subscript(value=m.Name()))])):
        return None
    target = s2.targets[0].target
    res = target.value.value
    if len(target.slice) != 1 or not isinstance(target.slice[0].slice, cst.Index):
        return None
    offset = _index_offset(target.slice[0].slice.value, i)
    terms = _affine_terms(s2.value, ratio)
    if offset is None or terms is None:
        return None
    loop_names = {i, ratio, res}
    if (names_in(denominator) & loop_names) or any(names_in(t) & loop_names for t in terms) \
            or (names_in(start) | names_in(stop)) & {ratio, res}:
        return None

    function = enclosing_function(meta, loop)
    leftover = used_after(meta, function, loop, {i, ratio})
    if leftover:
        return None  # the loop leaves `i`/`ratio` bound for later code: not the idiom
    created = _creates_2d(assigned_from(meta, function, res, start_line(meta, loop)))

    start_c = code(start)
    if isinstance(start, cst.Integer):
        lo = int(start.value) + offset
        lower = "" if lo == 0 else str(lo)
    else:
        lower = f"{start_c} + {offset}" if offset > 0 else (f"{start_c} - {-offset}" if offset < 0 else start_c)
    stop_c = code(stop)
    upper = f"{stop_c} + {offset}" if offset > 0 else (f"{stop_c} - {-offset}" if offset < 0 else stop_c)
    ratio_stmt = cst.parse_statement(
        f"{ratio} = (torch.arange({start_c}, {stop_c}, dtype={res}.dtype, device={res}.device)"
        f" / {code(denominator)}).unsqueeze(-1)\n")
    assign_stmt = cst.parse_statement(f"{res}[{lower}:{upper}] = {code(s2.value)}\n")
    new_source = replace_loop(meta, module, loop, [ratio_stmt, assign_stmt])

    verified = [f"loop `for {i} in range({start_c}, {stop_c})` writes row `{res}[{code(target.slice[0].slice.value)}]`"
                f" with `(1 - {ratio}) * A + {ratio} * B`, A and B loop-invariant",
                f"`{i}` and `{ratio}` are not read after the loop"]
    constraints = [f"`{stop_c}` >= `{start_c}` (torch.arange rejects a reversed range where the loop would do nothing)",
                   "ratios are computed in the dtype of the result tensor instead of Python floats (rounding differs in the last bit)"]
    needs = []
    if created:
        verified.append(f"`{res}` rows are 1-D: {created}")
    else:
        needs.append(f"`{res}` must be 2-D (each row a vector): its creation is not visible in the function")
    return Rewrite(
        new_source=new_source,
        description=(f"Vectorize the per-index interpolation loop: one `torch.arange` of ratios and one slice "
                     f"assignment to `{res}` replace {2} small ops per iteration."),
        auto_applicable=isinstance(start, cst.Integer), applicable_when_verified=isinstance(start, cst.Integer),
        constraints=constraints, verified=verified, needs_verification=needs)


# ---------------------------------------------------------------------------------------------
# Prefix masks
# ---------------------------------------------------------------------------------------------
def rewrite_prefix_mask(source: str, line: int) -> Optional[Rewrite]:
    return first_rewrite(source, line, _match_prefix_mask)


def _mask_target(target, i: str, n: str):
    """The mask expression when `target` is `M[i][:n]` or `M[i, :n]`, else None."""
    def prefix(sl) -> bool:
        return (isinstance(sl, cst.Slice) and sl.lower is None and sl.step is None
                and m.matches(sl.upper, m.Name(n)))

    if not isinstance(target, cst.Subscript):
        return None
    if (len(target.slice) == 1 and prefix(target.slice[0].slice) and isinstance(target.value, cst.Subscript)
            and len(target.value.slice) == 1 and isinstance(target.value.slice[0].slice, cst.Index)
            and m.matches(target.value.slice[0].slice.value, m.Name(i))):
        return target.value.value
    if (len(target.slice) == 2 and isinstance(target.slice[0].slice, cst.Index)
            and m.matches(target.slice[0].slice.value, m.Name(i)) and prefix(target.slice[1].slice)):
        return target.value
    return None


def _match_prefix_mask(meta, module, loop: cst.For) -> Optional[Rewrite]:
    body = body_statements(loop)
    if body is None or len(body) != 1:
        return None
    if not m.matches(loop.target, m.Tuple(elements=[m.Element(m.Name()), m.Element(m.Name())])):
        return None
    i, n = loop.target.elements[0].value.value, loop.target.elements[1].value.value
    if not m.matches(loop.iter, m.Call(func=m.Name("enumerate"), args=[m.Arg(keyword=None, star="")])):
        return None
    lens = loop.iter.args[0].value
    stmt = body[0]
    if not m.matches(stmt, m.Assign(targets=[m.AssignTarget()])):
        return None
    mask = _mask_target(stmt.targets[0].target, i, n)
    if mask is None or not isinstance(mask, (cst.Name, cst.Attribute)):
        return None
    value = stmt.value
    if names_in(value) & {i, n} or names_in(mask) & {i, n} or names_in(lens) & {i, n}:
        return None
    function = enclosing_function(meta, loop)
    if used_after(meta, function, loop, {i, n}):
        return None
    mask_c, lens_c, value_c = code(mask), code(lens), code(value)
    taken = names_in(function) if function is not None else names_in(module)
    base = lens.value if isinstance(lens, cst.Name) else "lens"
    lens_t = fresh(taken, f"{base}_t")
    cols = fresh(taken, "cols")
    stmts = [
        cst.parse_statement(f"{lens_t} = torch.as_tensor({lens_c}, device={mask_c}.device)\n"),
        cst.parse_statement(f"{cols} = torch.arange({mask_c}.shape[1], device={mask_c}.device)\n"),
        cst.parse_statement(
            f"{mask_c}[:{lens_t}.shape[0]].masked_fill_({cols} < torch.where({lens_t} < 0, {lens_t} + {mask_c}.shape[1], "
            f"{lens_t}).unsqueeze(1), {value_c})\n"),
    ]
    new_source = replace_loop(meta, module, loop, stmts)
    created = _creates_2d(assigned_from(meta, function, code(mask), start_line(meta, loop))) \
        if isinstance(mask, cst.Name) else None
    verified = [f"loop `for {i}, {n} in enumerate({lens_c})` only sets the prefix `{mask_c}[{i}][:{n}]` to a "
                f"loop-invariant value", f"`{i}` and `{n}` are not read after the loop",
                "rows beyond the lengths and cells past each length keep their values (masked_fill_ writes only "
                "where the comparison holds); negative lengths follow Python slice rules"]
    constraints = [f"`{lens_c}` is a 1-D sequence of integers (list or tensor)"]
    needs = []
    if created:
        verified.append(f"`{mask_c}` is 2-D: {created}")
    else:
        needs.append(f"`{mask_c}` must be 2-D: its creation is not visible in the function")
    return Rewrite(
        new_source=new_source,
        description=(f"Build `{mask_c}` with one comparison against `torch.arange` instead of a Python loop that "
                     f"reads every length back to the host (an implicit `.item()` and stream sync per row)."),
        auto_applicable=True, constraints=constraints, verified=verified, needs_verification=needs)


# ---------------------------------------------------------------------------------------------
# Per-element .item() loops
# ---------------------------------------------------------------------------------------------
def _item_call(node, var: str) -> bool:
    return m.matches(node, m.Call(func=m.Attribute(value=m.Name(var), attr=m.Name("item")), args=[]))


class _ItemUses(cst.CSTVisitor):
    def __init__(self, var: str):
        self.var, self.items, self.other, self.assigned = var, 0, 0, False
        self._inside = 0

    def visit_Call(self, node: cst.Call) -> None:
        if _item_call(node, self.var):
            self.items += 1
            self._inside += 1

    def leave_Call(self, node: cst.Call) -> None:
        if _item_call(node, self.var):
            self._inside -= 1

    def visit_Name(self, node: cst.Name) -> None:
        if node.value == self.var and not self._inside:
            self.other += 1

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        if self.var in names_in(node):
            self.assigned = True


class _DropItem(cst.CSTTransformer):
    def __init__(self, var: str):
        self.var = var

    def leave_Call(self, original: cst.Call, updated: cst.Call):
        if _item_call(original, self.var):
            return cst.Name(self.var)
        return updated


def rewrite_item_loop(source: str, line: int) -> Optional[Rewrite]:
    return first_rewrite(source, line, _match_item_loop)


def _match_item_loop(meta, module, loop) -> Optional[Rewrite]:
    if not isinstance(loop.target, cst.Name) or loop.orelse is not None:
        return None
    if m.matches(loop.iter, m.Call(func=m.Name("range") | m.Name("enumerate") | m.Name("zip"))):
        return _indexed_item_loop(meta, module, loop)
    var = loop.target.value
    uses = _ItemUses(var)
    loop.body.visit(uses)
    if uses.items == 0 or uses.other or uses.assigned:
        return None
    function = enclosing_function(meta, loop)
    if used_after(meta, function, loop, {var}):
        return None
    new_body = loop.body.visit(_DropItem(var))
    new_iter = expr(f"({code(loop.iter)}).reshape(-1).tolist()" if not isinstance(
        loop.iter, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) else f"{code(loop.iter)}.reshape(-1).tolist()")
    new_loop = loop.with_changes(iter=new_iter, body=new_body)
    new_source = render(replace_nodes(module, {loop: new_loop}, meta))
    return _tolist_rewrite(
        meta, loop, function, loop.iter, "iterated", new_source,
        description=(f"Copy `{code(loop.iter)}` to the host once with `.tolist()` instead of calling "
                     f"`.item()` (a blocking device sync) for every element."),
        verified=[f"every use of `{var}` in the loop is `{var}.item()`", f"`{var}` is not read after the loop"],
        constraints=[])


def _tolist_rewrite(meta, loop: cst.For, function, tensor: cst.BaseExpression, role: str, new_source: str,
                    description: str, verified: list, constraints: list) -> Rewrite:
    """The Rewrite of an `.item()` loop turned into one `.tolist()`: auto-applicable when `tensor` is shown to
    be a tensor; otherwise once the verification stage shows it on the user's run."""
    why = is_tensor_expr(meta, tensor, function, start_line(meta, loop))
    constraints = ["one device->host copy of the whole tensor replaces one sync per element"] + constraints
    needs = []
    if why:
        verified = verified + [f"the {role} value is a tensor: {why}"]
    else:
        needs.append(f"`{code(tensor)}` must be a tensor (not a list of tensors): its creation is not visible here")
    return Rewrite(new_source=new_source, description=description, auto_applicable=True,
                   constraints=constraints, verified=verified, needs_verification=needs)


def _indexed_item(node, seq: cst.BaseExpression, var: str) -> bool:
    """`seq[var].item()`"""
    return (m.matches(node, m.Call(func=m.Attribute(value=m.Subscript(), attr=m.Name("item")), args=[]))
            and len(node.func.value.slice) == 1 and isinstance(node.func.value.slice[0].slice, cst.Index)
            and m.matches(node.func.value.slice[0].slice.value, m.Name(var))
            and node.func.value.value.deep_equals(seq))


class _IndexedItemUses(cst.CSTVisitor):
    """Counts `seq[i].item()` and every other read of `seq` / `i` in a loop body."""

    def __init__(self, seq, var: str, seq_names: set):
        self.seq, self.var, self.seq_names = seq, var, seq_names
        self.items, self.other_seq, self.other_var, self.assigned = 0, 0, 0, False

    def visit_Call(self, node: cst.Call) -> bool:
        if _indexed_item(node, self.seq, self.var):
            self.items += 1
            return False        # its names are this use, not others
        return True

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in self.seq_names:
            self.other_seq += 1
        if node.value == self.var:
            self.other_var += 1

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self._rebinds(node.target)

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self._rebinds(node.target)

    def visit_For(self, node: cst.For) -> None:
        self._rebinds(node.target)

    def _rebinds(self, target) -> None:
        """`i = ...` / `i, x = ...` (not `out[i] = ...`) rebinds the index; so does assigning to `T` itself."""
        targets = [e.value for e in target.elements] if isinstance(target, (cst.Tuple, cst.List)) else [target]
        if any(isinstance(t, cst.Name) and (t.value == self.var or t.value in self.seq_names) for t in targets):
            self.assigned = True


class _ReplaceIndexedItem(cst.CSTTransformer):
    def __init__(self, seq, var: str, value: str):
        self.seq, self.var, self.value = seq, var, value

    def leave_Call(self, original: cst.Call, updated: cst.Call):
        return cst.Name(self.value) if _indexed_item(original, self.seq, self.var) else updated


def _indexed_item_loop(meta, module, loop: cst.For) -> Optional[Rewrite]:
    """`for i in range(len(T)): ... T[i].item() ...` -> `for v in T.reshape(-1).tolist(): ... v ...`
    (or `for i, v in enumerate(...)` when `i` is read for something else too)."""
    if not m.matches(loop.target, m.Name()) or not m.matches(
            loop.iter, m.Call(func=m.Name("range"), args=[m.Arg(value=m.Call(func=m.Name("len"), args=[m.Arg(keyword=None, star="")]), keyword=None, star="")])):
        return None
    seq = loop.iter.args[0].value.args[0].value
    if not isinstance(seq, (cst.Name, cst.Attribute)):
        return None             # only plain names / attributes: evaluating them once or per iteration is the same
    i = loop.target.value
    seq_names = names_in(seq)
    uses = _IndexedItemUses(seq, i, seq_names)
    loop.body.visit(uses)
    if uses.items == 0 or uses.other_seq or uses.assigned:
        return None             # `T` read or changed otherwise in the body: its values may change mid-loop
    function = enclosing_function(meta, loop)
    if used_after(meta, function, loop, {i}):
        return None
    taken = names_in(function) if function is not None else names_in(module)
    value = fresh(taken, f"{i}_value" if len(i) > 1 else f"{code(seq).split('.')[-1]}_{i}")
    new_body = loop.body.visit(_ReplaceIndexedItem(seq, i, value))
    listed = f"{code(seq)}.reshape(-1).tolist()"
    if uses.other_var:
        new_loop = loop.with_changes(target=expr(f"({i}, {value})").with_changes(lpar=[], rpar=[]),
                                     iter=expr(f"enumerate({listed})"), body=new_body)
    else:
        new_loop = loop.with_changes(target=cst.Name(value), iter=expr(listed), body=new_body)
    new_source = render(replace_nodes(module, {loop: new_loop}, meta))
    return _tolist_rewrite(
        meta, loop, function, seq, "indexed", new_source,
        description=(f"Copy `{code(seq)}` to the host once with `.tolist()` instead of calling `{code(seq)}[{i}].item()` "
                     f"(a blocking device sync) for every index."),
        verified=[f"`{code(seq)}` is read in the loop only as `{code(seq)}[{i}].item()`, and not assigned",
                  f"`{i}` is not read after the loop"],
        constraints=[f"each `{code(seq)}[{i}]` holds one element (as `.item()` requires), so `{code(seq)}` flattens "
                     f"to `len({code(seq)})` values"])


REWRITERS = {
    "affine_interpolation": rewrite_affine_interpolation,
    "prefix_mask": rewrite_prefix_mask,
    "item_loop": rewrite_item_loop,
}


def rewrite_loop(source: str, line: int, idiom: Optional[str] = None, only: bool = False) -> Optional[tuple]:
    """(idiom, Rewrite) for the first idiom that matches the loop at `line` (the given one first; with
    `only`, just that one)."""
    order = ([idiom] if idiom in REWRITERS else []) + ([] if only else [k for k in IDIOMS if k != idiom])
    for name in order:
        r = REWRITERS[name](source, line)
        if r is not None:
            return name, r
    return None
