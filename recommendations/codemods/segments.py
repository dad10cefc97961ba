"""Candidate generator `segment_reduce`: a loop over groups that reduces the rows of each group, rewritten to one
segment op over all rows.

    for g in range(G):                              OUT[:G] = <segment op over all rows>[:G]
        OUT[g] = X[LABELS == g].sum(0)      ->      (index_add_; mean = sum / count; amax/amin: scatter_reduce)
        OUT[g] = (LABELS == g).sum()                (bincount)
    for g in LABELS.unique():                       groups, inverse = torch.unique(LABELS, return_inverse=True)
        OUT[g] = X[LABELS == g].mean(0)     ->      OUT[groups] = <segment op by inverse>

The mask may be named first (`sel = LABELS == g`) and the write guarded by an emptiness test (`if sel.any():`,
`if sel.sum() == 0: continue`): then only the groups with a row are written (one `torch.where` against their
presence), as the loop leaves the others. For max/min a second candidate gathers, per group and column, the
first row holding the extreme, so the gradient goes where `.max(0)` sends it when rows tie.

Labels outside `range(G)` are gathered in one extra bin that is dropped, as the loop never visits them. An
empty group gets what the loop gives it: 0 for sums and counts, NaN for means (0 / 0); a max/min of an empty
group raises in the loop and gives 0 in the rewrite. The body's shape is proven from the syntax; that LABELS
is 1-D with one entry per row of X (what makes `X[LABELS == g]` the rows of group g) and that summing in
another order stays within tolerance are proven by the verification stage.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, code, enclosing_function, names_in, qualified_names, start_line
from .loop_syntax import assigned_from, first_rewrite, fresh, replace_loop, used_after
from .map_loops import collect_sink, replace_collected

GENERATOR = "segment_reduce"
_REDUCTIONS = {"sum": "sum", "mean": "mean", "amax": "amax", "amin": "amin"}


def candidates(source: str, line: int) -> list:
    """The segment rewrite of the group loop at `line`; for a max/min, first the one whose gradient is shared
    among tied rows (scatter_reduce), then the one that, like `.max(0)`, gives it to the first of them."""
    r = first_rewrite(source, line, _match)
    if r is None:
        return []
    tied = first_rewrite(source, line, lambda meta, module, loop: _match(meta, module, loop, first_of_ties=True))
    return [r] + ([tied] if tied is not None else [])


def _group_mask(node, g: str) -> Optional[cst.BaseExpression]:
    """LABELS when `node` is `LABELS == g` (or `g == LABELS`)."""
    if not (isinstance(node, cst.Comparison) and len(node.comparisons) == 1
            and isinstance(node.comparisons[0].operator, cst.Equal)):
        return None
    left, right = node.left, node.comparisons[0].comparator
    if m.matches(right, m.Name(g)) and g not in names_in(left):
        return left
    if m.matches(left, m.Name(g)) and g not in names_in(right):
        return right
    return None


def _groups(meta, function, loop, labels) -> tuple:
    """("range", G) for `range(G)`; ("unique", None) for `labels.unique()` / `torch.unique(labels)` in the loop
    header; ("unique", U) when the loop iterates a name U assigned from one of those before it."""
    it = loop.iter
    if m.matches(it, m.Call(func=m.Name("range"), args=[m.Arg(keyword=None, star="")])):
        return "range", it.args[0].value
    if _unique_of(meta, it, labels):
        return "unique", None
    if isinstance(it, cst.Name) and _unique_of(meta, assigned_from(meta, function, it.value, start_line(meta, loop)), labels):
        return "unique", it
    return None, None


def _unique_of(meta, node, labels) -> bool:
    """`labels.unique()` or `torch.unique(labels)`, sorted (the default) and returning one tensor."""
    if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("unique")), args=[])):
        return node.func.value.deep_equals(labels)
    return (isinstance(node, cst.Call) and bool(qualified_names(meta, node.func) & {"torch.unique"})
            and len(node.args) == 1 and node.args[0].keyword is None and node.args[0].value.deep_equals(labels))


def _reduction(value, g: str) -> Optional[tuple]:
    """(kind, X or None, LABELS) for `X[LABELS == g].sum(0)` / `.mean(0)` / `.amax(0)` / `.amin(0)`
    (also dim=0, and `.max(0).values` / `.max(0)[0]`), or `(LABELS == g).sum()` (kind "count")."""
    # (LABELS == g).sum()
    if m.matches(value, m.Call(func=m.Attribute(attr=m.Name("sum")), args=[])):
        labels = _group_mask(value.func.value, g)
        if labels is not None:
            return "count", None, labels
    method, call = None, value
    if isinstance(value, cst.Attribute) and value.attr.value == "values":
        call = value.value
    elif (isinstance(value, cst.Subscript) and len(value.slice) == 1
          and m.matches(value.slice[0].slice, m.Index(m.Integer("0")))):
        call = value.value
    if not isinstance(call, cst.Call) or not isinstance(call.func, cst.Attribute):
        return None
    method = call.func.attr.value
    is_pair = call is not value
    if is_pair and method in ("max", "min"):
        kind = "amax" if method == "max" else "amin"
    elif not is_pair and method in _REDUCTIONS:
        kind = _REDUCTIONS[method]
    else:
        return None
    if len(call.args) != 1 or not (m.matches(call.args[0], m.Arg(value=m.Integer("0"), keyword=None))
                                   or m.matches(call.args[0], m.Arg(value=m.Integer("0"), keyword=m.Name("dim")))):
        return None
    sub = call.func.value
    if not (isinstance(sub, cst.Subscript) and len(sub.slice) == 1 and isinstance(sub.slice[0].slice, cst.Index)):
        return None
    labels = _group_mask(sub.slice[0].slice.value, g)
    if labels is None or g in names_in(sub.value):
        return None
    return kind, sub.value, labels


def _group_body(loop: cst.For, g: str) -> Optional[tuple]:
    """(the one statement that writes the group's result, mask aliases, guarded) of a loop body

        [M = LABELS == g ...]                           [M = LABELS == g ...]
        STMT                 or  if <M not empty>:   or  if <M empty>: continue
                                     STMT                STMT

    with every alias M replaced by its mask in STMT; `guarded` when the body skips empty groups. None for
    any other body."""
    if loop.orelse is not None or not isinstance(loop.body, cst.IndentedBlock):
        return None
    body, aliases, guarded = list(loop.body.body), {}, False
    while body and _alias(body[0], g, aliases) is not None:
        name, mask = _alias(body[0], g, aliases)
        aliases[name] = mask
        body = body[1:]
    if len(body) == 2 and isinstance(body[0], cst.If) and body[0].orelse is None and _continue_only(body[0].body):
        if _emptiness(_substitute(body[0].test, aliases), g) != "empty":
            return None
        body, guarded = body[1:], True
    elif len(body) == 1 and isinstance(body[0], cst.If) and body[0].orelse is None:
        if _emptiness(_substitute(body[0].test, aliases), g) != "not_empty":
            return None
        suite, guarded = body[0].body, True
        body = [suite] if isinstance(suite, cst.SimpleStatementSuite) else list(suite.body)
    if len(body) != 1 or not isinstance(body[0], (cst.SimpleStatementLine, cst.SimpleStatementSuite)) \
            or len(body[0].body) != 1:
        return None
    return _substitute(body[0].body[0], aliases), aliases, guarded


def _alias(stmt, g: str, aliases: dict) -> Optional[tuple]:
    """(name, mask) for `name = LABELS == g` (or a chain through an earlier alias)."""
    if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and m.matches(stmt.body[0], m.Assign(targets=[m.AssignTarget(target=m.Name())]))):
        return None
    value = _substitute(stmt.body[0].value, aliases)
    name = stmt.body[0].targets[0].target.value
    if _group_mask(value, g) is None or name == g or name in names_in(value):
        return None
    return name, value


def _continue_only(suite) -> bool:
    if isinstance(suite, cst.SimpleStatementSuite):
        stmts = suite.body
    elif isinstance(suite, cst.IndentedBlock) and len(suite.body) == 1 and isinstance(suite.body[0], cst.SimpleStatementLine):
        stmts = suite.body[0].body
    else:
        return False
    return len(stmts) == 1 and isinstance(stmts[0], cst.Continue)


def _substitute(node, aliases: dict):
    if not aliases:
        return node

    class _T(cst.CSTTransformer):
        def leave_Name(self, original, updated):
            mask = aliases.get(original.value)
            return mask.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()]) if mask is not None else updated

    return node.visit(_T())


def _strip(node):
    return node.with_changes(lpar=[], rpar=[]) if getattr(node, "lpar", None) else node


def _emptiness(test, g: str) -> Optional[str]:
    """"not_empty" / "empty" when `test` only asks whether the group `LABELS == g` has a row:
    `M.any()`, `M.sum() > 0` (also != 0, >= 1), `X[M].numel() > 0`, `len(X[M]) > 0`, `X[M].shape[0] > 0`,
    `bool(...)` / `.item()` of those, `not` of them; None for anything else."""
    test = _strip(test)
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        inner = _emptiness(test.expression, g)
        return {"empty": "not_empty", "not_empty": "empty"}.get(inner)
    if m.matches(test, m.Call(func=m.Name("bool"), args=[m.Arg(keyword=None, star="")])):
        return _emptiness(test.args[0].value, g)
    if m.matches(test, m.Call(func=m.Attribute(attr=m.Name("item")), args=[])):
        return _emptiness(test.func.value, g)
    if m.matches(test, m.Call(func=m.Attribute(attr=m.Name("any")), args=[])):
        return "not_empty" if _group_mask(_strip(test.func.value), g) is not None else None
    if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
        op, right = test.comparisons[0].operator, _strip(test.comparisons[0].comparator)
        if not _is_count(_strip(test.left), g):
            return None
        if m.matches(right, m.Integer("0")) and isinstance(op, (cst.GreaterThan, cst.NotEqual)):
            return "not_empty"
        if m.matches(right, m.Integer("1")) and isinstance(op, cst.GreaterThanEqual):
            return "not_empty"
        if m.matches(right, m.Integer("0")) and isinstance(op, (cst.Equal, cst.LessThanEqual)):
            return "empty"
        if m.matches(right, m.Integer("1")) and isinstance(op, cst.LessThan):
            return "empty"
    return None


def _is_count(node, g: str) -> bool:
    """The number of rows of group g: `M.sum()`, `X[M].numel()`, `len(X[M])`, `X[M].shape[0]`, `M.sum().item()`."""
    node = _strip(node)
    if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("item")), args=[])):
        node = _strip(node.func.value)
    if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("sum")), args=[])):
        return _group_mask(_strip(node.func.value), g) is not None

    def selected(sub) -> bool:
        sub = _strip(sub)
        return (isinstance(sub, cst.Subscript) and len(sub.slice) == 1 and isinstance(sub.slice[0].slice, cst.Index)
                and _group_mask(_strip(sub.slice[0].slice.value), g) is not None and g not in names_in(sub.value))

    if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("numel")), args=[])):
        return selected(node.func.value)
    if m.matches(node, m.Call(func=m.Name("len"), args=[m.Arg(keyword=None, star="")])):
        return selected(node.args[0].value)
    if (isinstance(node, cst.Subscript) and len(node.slice) == 1
            and m.matches(node.slice[0].slice, m.Index(m.Integer("0")))
            and m.matches(node.value, m.Attribute(attr=m.Name("shape")))):
        return selected(node.value.value)
    return False


def _match(meta, module, loop: cst.For, first_of_ties: bool = False) -> Optional[Rewrite]:
    if not isinstance(loop.target, cst.Name):
        return None
    found = _group_body(loop, loop.target.value)
    if found is None:
        return None
    stmt, aliases, guarded = found
    g = loop.target.value
    function = enclosing_function(meta, loop)
    if m.matches(stmt, m.Assign(targets=[m.AssignTarget(target=m.Subscript())])):
        target = stmt.targets[0].target
        if not (len(target.slice) == 1 and m.matches(target.slice[0].slice, m.Index(m.Name(g)))
                and isinstance(target.value, (cst.Name, cst.Attribute))):
            return None
        out, value, sink = target.value, stmt.value, None
    elif m.matches(stmt, m.Expr(value=m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("append")),
                                             args=[m.Arg(keyword=None, star="")]))):
        out, value = stmt.value.func.value, stmt.value.args[0].value
        sink = collect_sink(meta, function, loop, out.value)
        if sink[2] == "cat" or sink[3] not in (None, "0"):
            return None
    else:
        return None
    red = _reduction(value, g)
    if red is None:
        return None
    kind, x, labels = red
    if first_of_ties and kind not in ("amax", "amin"):
        return None
    if names_in(out) & (names_in(labels) | (names_in(x) if x is not None else set())):
        return None
    form, groups = _groups(meta, function, loop, labels)
    if form is None:
        return None
    if used_after(meta, function, loop, {g} | set(aliases)):
        return None
    taken = names_in(function) if function is not None else names_in(module)
    out_c, labels_c, x_c = code(out), code(labels), code(x) if x is not None else None
    stmts = []
    if form == "range":
        n = code(groups)
        bins = fresh(taken, "bins")
        size = f"{n} + 1"
        stmts.append(f"{bins} = torch.where(({labels_c} >= 0) & ({labels_c} < {n}), {labels_c}, {n}).reshape(-1)")
        index, keep = bins, f"[:{n}]"
        dest = f"{out_c}[:{n}]"
    elif groups is not None:
        # the loop iterates the sorted unique labels computed before it: each label's group is its position
        inv = fresh(taken, "inverse")
        stmts.append(f"{inv} = torch.searchsorted({code(groups)}, {labels_c}).reshape(-1)")
        index, keep, size, dest = inv, "", f"{code(groups)}.shape[0]", f"{out_c}[{code(groups)}]"
    else:
        grp, inv = fresh(taken, "groups"), fresh(taken, "inverse")
        stmts.append(f"{grp}, {inv} = torch.unique({labels_c}, return_inverse=True)")
        index, keep, size = f"{inv}.reshape(-1)", "", f"{grp}.shape[0]"
        dest = f"{out_c}[{grp}]"
    if kind == "count":
        value = f"torch.bincount({index}, minlength={size}){keep}" if form == "range" else \
            f"torch.bincount({index}, minlength={size})"
    else:
        zeros = f"{x_c}.new_zeros(({size},) + tuple({x_c}.shape[1:]))"
        if kind in ("sum", "mean"):
            total = f"{zeros}.index_add_(0, {index}, {x_c})"
            if kind == "mean":
                counts = fresh(taken, "counts")
                stmts.append(f"{counts} = torch.bincount({index}, minlength={size}).to({x_c}.dtype)")
                total = f"({total} / {counts}.view((-1,) + (1,) * ({x_c}.dim() - 1)))"
            value = f"{total}{keep}"
        else:
            spread = f"{index}.view((-1,) + (1,) * ({x_c}.dim() - 1)).expand_as({x_c})"
            value = f"{zeros}.scatter_reduce_(0, {spread}, {x_c}, \"{kind}\", include_self=False){keep}"
            if first_of_ties:
                # the group's extreme from detached values, then the first row holding it per column, gathered
                # (so the gradient goes where `.max(0)` sends it)
                best, rows, first = fresh(taken, "best"), fresh(taken, "rows"), fresh(taken, "first")
                spread_name = fresh(taken, "spread")
                stmts.append(f"{spread_name} = {spread}")
                spread = spread_name
                stmts.append(f"{best} = {zeros}.scatter_reduce_(0, {spread}, {x_c}.detach(), \"{kind}\", "
                             f"include_self=False)")
                stmts.append(f"{rows} = torch.arange({x_c}.shape[0], device={x_c}.device).view((-1,) + (1,) * "
                             f"({x_c}.dim() - 1)).expand_as({x_c})")
                stmts.append(f"{first} = torch.full_like({best}, {x_c}.shape[0], dtype=torch.long).scatter_reduce_("
                             f"0, {spread}, torch.where({x_c}.detach() == {best}.gather(0, {spread}), {rows}, "
                             f"{x_c}.shape[0]), \"amin\")")
                value = (f"({x_c}.gather(0, {first}.clamp(max={x_c}.shape[0] - 1)) if {x_c}.shape[0] else {best})"
                         f"{keep}")
    guarded = guarded and form == "range"      # every group of unique() has a row
    if guarded:
        # the loop skips empty groups: only groups with a row are written (or collected)
        values, present = fresh(taken, "values"), fresh(taken, "present")
        stmts.append(f"{values} = {value}")
        stmts.append(f"{present} = torch.bincount({index}, minlength={size})[:{n}] > 0")
        value = f"{values}[{present}]" if sink is not None else \
            f"torch.where({present}.view((-1,) + (1,) * ({values}.dim() - 1)), {values}, {dest})"
    if sink is None:
        stmts.append(f"{dest} = {value}")
        new_source = replace_loop(meta, module, loop, [cst.parse_statement(s + "\n") for s in stmts])
    else:
        _, name, how, _, prev, call = sink
        stmts.append(f"{name} = {value}" if how == "stack" else f"{name}.extend(({value}).unbind(0))")
        new_source = replace_collected(meta, module, loop, [cst.parse_statement(s + "\n") for s in stmts],
                                       prev if how == "stack" else None,
                                       (call, cst.Name(name)) if how == "stack" else None)
    op = {"count": "torch.bincount", "sum": "index_add_", "mean": "index_add_ and bincount"}.get(kind, "scatter_reduce_")
    if first_of_ties:
        op += " and a gather of the first row holding each group's extreme (gradients as the loop's)"
    return Rewrite(
        new_source=new_source,
        description=(f"Reduce every group at once with {op} instead of one boolean-mask selection per group (each "
                     f"`{labels_c} == {g}` selection is a nonzero and a device sync on an NPU)."),
        auto_applicable=False, generator=GENERATOR,
        verified=[f"the loop body is only `{out_c}[{g}] = <{kind} of the rows where {labels_c} == {g}>`"
                  + (" for the groups that have a row" if guarded else ""),
                  f"`{g}` is not read after the loop",
                  "labels outside the visited groups are dropped (the loop never visits them)"],
        needs_verification=[f"`{labels_c}` is 1-D with one entry per row of `{x_c}`" if x_c else
                            f"`{labels_c}` holds integer labels",
                            "sums in another order stay within the tolerance"],
        constraints=["an empty group keeps its value, as in the loop" if guarded else
                     "an empty group gets 0 (sum, count), NaN (mean) or 0 (max/min, where the loop raises)"])
