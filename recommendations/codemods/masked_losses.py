"""Candidate generator `masked_losses`: a mean/sum-reduced loss of boolean-mask selections, computed on the whole
tensors with the mask as a weight (a selection `x[m]` has a data-dependent size: the host waits for the device to
size it).

    F.smooth_l1_loss(pred[m], tgt[m])            ->  rows = F.smooth_l1_loss(where(m, pred, 0), where(m, tgt, 0),
                                                                              reduction="none")
                                                     where(m, rows, 0).sum() / (m.sum() * rows per mask element)
    ((a[m] - b[m]).abs() * 2).mean()             ->  the same with the expression on the whole tensors
    L(x[m], ...) if m.sum() > 0 else x.sum() * 0 ->  the same with the count clamped to 1 (0 when m is empty)

`m` is reshaped with trailing ones to each operand's rank, so a mask of shape (N,) selecting rows of (N, D) weights
whole rows, as the selection does (a boolean index always has the leading shape of what it indexes). Masked-off
inputs are replaced by 0 before the loss: every op accepted is finite at finite inputs (+, -, *, abs, clamp,
relu, sigmoid, integer powers, division by a number literal, smooth-L1 / L1 / MSE / Huber / BCE(-with-logits)
losses), so the masked-off rows compute finite values whatever they held (inf, nan) and give zero gradients to
every operand, as the selection did. An empty mask gives 0 / 0 = nan for the mean, as the mean of an empty
selection does, and 0 for the sum. Refused: any other op (log, sqrt, division by a tensor: a masked-off value
could make the gradient nan), reductions with a dim or dtype, loss keywords other than reduction / beta / delta,
several masks, a mask that is not a name, a guard that is not an emptiness test or whose other branch is not a
zero, and a reduction evaluated only sometimes (inside a lambda, comprehension, `and`/`or`, another `if`-expression).
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m
from libcst.metadata import ParentNodeProvider

from .base import (Rewrite, add_imports, analyzed, code, enclosing_function, expr, names_in, node_index,
                   qualified_names, render, replace_nodes, start_line)
from .loop_syntax import fresh

GENERATOR = "masked_losses"
LOSSES = {f"torch.nn.functional.{n}" for n in (
    "smooth_l1_loss", "l1_loss", "mse_loss", "huber_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits")}
LOSS_KEYWORDS = ("beta", "delta")
# Unary ops finite at every finite input (methods `x.abs()` or `torch.abs(x)` / `F.relu(x)`).
SAFE_UNARY = frozenset("abs neg negative square relu sigmoid tanh float double half clamp clamp_min clamp_max clip".split())
_CLAMPS = ("clamp", "clamp_min", "clamp_max", "clip")


def candidates(source: str, line: int) -> list:
    wrapper, meta = analyzed(source)
    module = wrapper.module
    for node in node_index(module).of(cst.Call):
        if start_line(meta, node) == line:
            r = _rewrite(meta, module, node)
            if r is not None:
                return [r]
    return []


def _number(node) -> bool:
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus):
        node = node.expression
    return isinstance(node, (cst.Integer, cst.Float))


def _pure(node) -> bool:
    """A name, attribute chain or subscript of those with constant/name indices: safe to evaluate twice."""
    if isinstance(node, cst.Name):
        return True
    if isinstance(node, cst.Attribute):
        return _pure(node.value)
    if isinstance(node, cst.Subscript):
        for el in node.slice:
            s = el.slice
            parts = [s.value] if isinstance(s, cst.Index) else [p for p in (s.lower, s.upper, s.step) if p is not None]
            if not all(_number(p) or isinstance(p, cst.Name) for p in parts):
                return False
        return _pure(node.value)
    return False


class _Masked:
    """The selections of one mask in an expression of elementwise, finite ops."""

    def __init__(self, meta, bound_from_mask):
        self.meta, self.mask, self.selections, self.invariants = meta, None, [], []
        self.bound_from_mask = bound_from_mask        # names the function binds from values reading a mask

    def selection(self, node) -> bool:
        if not (isinstance(node, cst.Subscript) and len(node.slice) == 1
                and isinstance(node.slice[0].slice, cst.Index) and isinstance(node.slice[0].slice.value, cst.Name)):
            return False
        mask = node.slice[0].slice.value.value
        if self.mask not in (None, mask) or mask in names_in(node.value) or not _pure(node.value):
            return False
        self.mask = mask
        self.selections.append(node)
        return True

    def ok(self, node) -> bool:
        """`node` is elementwise in the selections, finite at finite inputs."""
        if _number(node):
            return True
        if isinstance(node, cst.Subscript):
            if self.selection(node):
                return True
        if isinstance(node, (cst.Name, cst.Attribute, cst.Subscript)):
            # a loop-invariant operand (a number, per-column weights)
            self.invariants.append(node)
            return _pure(node) and not self._reads_mask(node)
        if isinstance(node, cst.UnaryOperation):
            return isinstance(node.operator, (cst.Minus, cst.Plus)) and self.ok(node.expression)
        if isinstance(node, cst.BinaryOperation):
            op = node.operator
            if isinstance(op, (cst.Add, cst.Subtract, cst.Multiply)):
                return self.ok(node.left) and self.ok(node.right)
            if isinstance(op, cst.Divide):
                return self.ok(node.left) and _number(node.right) and not _zero(node.right)
            if isinstance(op, cst.Power):
                return (self.ok(node.left) and isinstance(node.right, cst.Integer)
                        and int(node.right.value, 0) >= 0)
            return False
        if isinstance(node, cst.Call):
            f = node.func
            if isinstance(f, cst.Attribute) and f.attr.value in SAFE_UNARY and not qualified_names(self.meta, f):
                return self._args_ok(f.attr.value, node.args, 0) and self.ok(f.value)    # x.abs()
            q = qualified_names(self.meta, f)
            names = {n.rsplit(".", 1)[-1] for n in q if n.startswith(("torch.", "torch.nn.functional."))}
            if len(names) == 1 and next(iter(names)) in SAFE_UNARY and node.args and node.args[0].keyword is None:
                return self._args_ok(next(iter(names)), node.args, 1) and self.ok(node.args[0].value)
        return False

    def _args_ok(self, name: str, args, skip: int) -> bool:
        rest = list(args)[skip:]
        if name in _CLAMPS:
            return all(not a.star and (a.keyword is None or a.keyword.value in ("min", "max")) and _number(a.value)
                       for a in rest)
        return not rest

    def _reads_mask(self, node) -> bool:
        used = names_in(node)
        return bool(used & self.bound_from_mask) or (self.mask is not None and self.mask in used)


def _zero(node) -> bool:
    return _number(node) and float(code(node).lstrip("-")) == 0.0


def _bound_from(function, names: set) -> set:
    """Names the function binds from values that read any of `names` (transitively): per-selection values."""
    if function is None:
        return set()
    assigns = [n for n in _walk(function) if isinstance(n, (cst.Assign, cst.AugAssign, cst.AnnAssign))]
    out, grew = set(), True
    while grew:
        grew = False
        for a in assigns:
            if a.value is None or not (names_in(a.value) & (names | out)):
                continue
            targets = [t.target for t in a.targets] if isinstance(a, cst.Assign) else [a.target]
            for t in targets:
                new = names_in(t) - out
                if new:
                    out |= new
                    grew = True
    return out


def _walk(node) -> list:
    found = []

    class _V(cst.CSTVisitor):
        def on_visit(self, n) -> bool:
            found.append(n)
            return True

    node.visit(_V())
    return found


def _reduction(meta, node: cst.Call) -> Optional[tuple]:
    """("loss", name, [inputs], keywords, reduction) or ("method", expression, reduction) for the reduced call."""
    q = qualified_names(meta, node.func) & LOSSES
    if q:
        inputs, keywords, reduction = [], [], "mean"
        for a in node.args:
            if a.star:
                return None
            if a.keyword is None:
                inputs.append(a.value)
            elif a.keyword.value == "reduction":
                if not (isinstance(a.value, cst.SimpleString) and a.value.evaluated_value in ("mean", "sum")):
                    return None
                reduction = a.value.evaluated_value
            elif a.keyword.value in LOSS_KEYWORDS and _number(a.value):
                keywords.append(a)
            elif a.keyword.value in ("input", "target") and len(inputs) < 2:
                inputs.append(a.value)
            else:
                return None
        if len(inputs) != 2:
            return None
        return "loss", next(iter(q)), inputs, keywords, reduction
    if m.matches(node.func, m.Attribute(attr=m.Name("mean") | m.Name("sum"))) and not node.args:
        return "method", node.func.value, node.func.attr.value
    q = qualified_names(meta, node.func) & {"torch.mean", "torch.sum"}
    if q and len(node.args) == 1 and node.args[0].keyword is None and not node.args[0].star:
        return "method", node.args[0].value, next(iter(q)).rsplit(".", 1)[-1]
    return None


def _guard(node, mask: str) -> bool:
    """`node` is `mask.sum() > 0` / `!= 0` / `>= 1`, `mask.any()`, `torch.any(mask)`."""
    if m.matches(node, m.Call(func=m.Attribute(value=m.Name(mask), attr=m.Name("any")), args=[])):
        return True
    if not (isinstance(node, cst.Comparison) and len(node.comparisons) == 1):
        return False
    left, (cmp,) = node.left, node.comparisons
    if not m.matches(left, m.Call(func=m.Attribute(value=m.Name(mask), attr=m.Name("sum")), args=[])):
        return False
    right = code(cmp.comparator)
    return ((isinstance(cmp.operator, (cst.GreaterThan, cst.NotEqual)) and right in ("0", "0.0"))
            or (isinstance(cmp.operator, cst.GreaterThanEqual) and right in ("1", "1.0")))


def _zero_branch(node) -> bool:
    """`X.sum() * 0` / `0 * X.sum()`: a zero tensor with X's dtype and a zero gradient."""
    if not (isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply)):
        return False
    for a, b in ((node.left, node.right), (node.right, node.left)):
        if _zero(a) and m.matches(b, m.Call(func=m.Attribute(attr=m.Name("sum")), args=[])) and _pure(b.func.value):
            return True
    return False


def _conditional(meta, node, stop) -> bool:
    """Some ancestor of `node` below `stop` evaluates it only sometimes (or later, or several times)."""
    parents = meta[ParentNodeProvider]
    cur = parents.get(node)
    while cur is not None and cur is not stop:
        if isinstance(cur, (cst.Lambda, cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp,
                            cst.BooleanOperation, cst.IfExp)):
            return True
        if isinstance(cur, cst.BaseStatement):
            return False
        cur = parents.get(cur)
    return False


def _statement(meta, node):
    parents = meta[ParentNodeProvider]
    cur = node
    while cur is not None and not isinstance(cur, cst.SimpleStatementLine):
        if isinstance(cur, cst.BaseCompoundStatement):
            return None
        cur = parents.get(cur)
    if cur is None or not isinstance(parents.get(cur), (cst.IndentedBlock, cst.Module)) or len(cur.body) != 1:
        return None
    return cur


def _rows(mask: str, t: str) -> str:
    """The mask with trailing ones up to the rank of `t` (a boolean index has the leading shape of what it indexes)."""
    return f"{mask}.reshape({mask}.shape + (1,) * ({t}.dim() - {mask}.dim()))"


def _rewrite(meta, module, node: cst.Call) -> Optional[Rewrite]:
    red = _reduction(meta, node)
    if red is None:
        return None
    function = enclosing_function(meta, node)
    checker = _Masked(meta, set())
    operands = red[2] if red[0] == "loss" else [red[1]]
    if not all(checker.ok(o) for o in operands) or checker.mask is None:
        return None
    mask = checker.mask
    checker = _Masked(meta, _bound_from(function, {mask}))          # again, now refusing per-selection names
    if not all(checker.ok(o) for o in operands):
        return None
    parents = meta[ParentNodeProvider]
    replaced, guarded = node, False
    parent = parents.get(node)
    if isinstance(parent, cst.IfExp) and parent.body is node and _guard(parent.test, mask) and _zero_branch(parent.orelse):
        replaced, guarded = parent, True
    stmt = _statement(meta, replaced)
    if stmt is None or _conditional(meta, replaced, stmt):
        return None
    taken = names_in(function) if function is not None else names_in(module)
    target = stmt.body[0]
    base = (target.targets[0].target.value if isinstance(target, cst.Assign) and len(target.targets) == 1
            and isinstance(target.targets[0].target, cst.Name) else "masked")
    rows_name = fresh(set(taken), f"{base}_rows")

    class _Fill(cst.CSTTransformer):
        def leave_Subscript(self, original, updated):
            if any(original is s for s in checker.selections):
                x = code(original.value)
                return expr(f"torch.where({_rows(mask, x)}, {x}, 0)")
            return updated

    filled = [o.visit(_Fill()) for o in operands]
    if red[0] == "loss":
        kws = "".join(f", {code(k.keyword)}={code(k.value)}" for k in red[3])
        full = f"{code(node.func)}({code(filled[0])}, {code(filled[1])}{kws}, reduction=\"none\")"
        reduction = red[4]
        what = f"`{code(node.func)}` with reduction=\"none\""
    else:
        full = code(filled[0])
        reduction = red[2]
        what = "the expression"
    total = f"torch.where({_rows(mask, rows_name)}, {rows_name}, 0).sum()"
    count = f"({mask}.sum() * ({rows_name}.numel() // max({mask}.numel(), 1)))"
    if reduction == "sum":
        new = total
    else:
        new = f"({total} / {count}{'.clamp(min=1)' if guarded else ''})"
    pre = cst.parse_statement(f"{rows_name} = {full}\n")
    pre = pre.with_changes(leading_lines=stmt.leading_lines)
    new_stmt = replace_nodes(stmt, {replaced: expr(new)}).with_changes(leading_lines=())
    new_source = render(add_imports(replace_nodes(module, {stmt: cst.FlattenSentinel([pre, new_stmt])}, meta),
                                    [("torch", None)]))
    verified = [f"`{mask}` has the leading shape of every tensor it indexes (else the selection raises), so "
                f"`{_rows(mask, 'x')}` weights exactly the selected rows",
                "every op is elementwise and finite at finite inputs: masked-off rows (filled with 0) add zero to the "
                "sum and give zero gradients to every operand",
                "the count is the number of selected elements of the per-element result; an empty mask gives nan for "
                "a mean (0 / 0) and 0 for a sum, as before"]
    if guarded:
        verified[-1] = ("an empty mask gives 0 with a zero gradient (the count is clamped to 1), as the `else` "
                        "branch did; the emptiness test (a host read) is gone")
    needs = [f"`{mask}` is a bool tensor (an integer index raises in torch.where)"]
    if checker.invariants:
        needs.append("the other operands broadcast against one selected row as they do against the whole tensors "
                     "(no more dimensions than one row)")
    return Rewrite(new_source=new_source,
                   description=(f"Compute {what} on the whole tensors and weight it with the mask `{mask}` instead of "
                                f"selecting `[{mask}]` first (a data-dependent size: the host waits for the device "
                                f"to size each selection)."),
                   auto_applicable=True, generator=GENERATOR, needs_verification=needs, verified=verified,
                   constraints=["float rounding of the sum may differ in the last bits (it also adds the zeros)",
                                "the loss is computed on every row, not only the selected ones"])

